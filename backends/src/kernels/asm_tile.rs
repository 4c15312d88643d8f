//! AVX-512 GEMM tiles assembled at compile time with iced-x86: the first
//! row of DESIGN.md's micro-kernel seam table. Cranelift lowers only
//! 128-bit vectors on x86-64, a quarter of what an AVX-512 core can do.
//!
//! A tile computes `C[mr × nt] = init + A[mr × K] · B[K × nt]` with
//! `mr ≤ 14` rows and `nt ≤ 32` columns held in up to 28 zmm accumulators.
//! A (a packed panel, or activations with baked strides) is broadcast one
//! element at a time;
//! B rows are loaded as one or two zmm vectors (column tails are masked, so
//! an unpadded B is never read past its end). `init` is zero, one bias
//! value per row, or a bias row. Every parameter — K, strides, the row and column counts —
//! is baked in, so the driver assembles one function per variant it needs.
//!
//! Calling convention: System V (`a`, `b`, `c`, `bias` in rdi, rsi, rdx,
//! rcx); all vector registers are caller-saved there, and the tile ends with
//! `vzeroupper` so the surrounding 128-bit code pays no transition penalty.
//! The bytes need no relocations.

use iced_x86::code_asm::*;

/// Rows of a full tile.
pub(crate) const MR: usize = 14;
/// Columns of a full tile (two zmm vectors).
pub(crate) const NR: usize = 32;

/// One assembled tile variant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Variant {
    /// reduction length
    pub k: usize,
    /// rows computed (≤ [`MR`])
    pub mr: usize,
    /// columns computed (≤ [`NR`])
    pub nt: usize,
    /// elements between consecutive rows of A (1 in a packed panel)
    pub a_rs: usize,
    /// elements between consecutive k of one row of A (the panel height
    /// when packed)
    pub a_ks: usize,
    /// B row stride in elements
    pub b_ks: usize,
    /// whether B rows are padded to whole vectors (a packed panel)
    pub b_padded: bool,
    /// C row stride in elements
    pub c_rs: usize,
    /// what seeds the accumulators
    pub bias: Bias,
}

/// The accumulators' starting values (pointer in rcx).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Bias {
    /// zero
    None,
    /// `bias[i]` for row `i` (convolution bias)
    Row,
    /// `bias[j]` for column `j` (a linear layer's bias)
    Col,
}

fn zmm(i: usize) -> AsmRegisterZmm {
    const Z: [AsmRegisterZmm; 32] = [
        zmm0, zmm1, zmm2, zmm3, zmm4, zmm5, zmm6, zmm7, zmm8, zmm9, zmm10, zmm11, zmm12, zmm13,
        zmm14, zmm15, zmm16, zmm17, zmm18, zmm19, zmm20, zmm21, zmm22, zmm23, zmm24, zmm25, zmm26,
        zmm27, zmm28, zmm29, zmm30, zmm31,
    ];
    Z[i]
}

/// Assembles `v`; the bytes are position-independent.
pub(crate) fn assemble(v: &Variant) -> Result<Vec<u8>, String> {
    if v.mr == 0 || v.mr > MR || v.nt == 0 || v.nt > NR {
        return Err(format!("tile variant out of range: {v:?}"));
    }
    // every displacement below is at most one of these
    let largest = [
        4 * (v.mr * v.c_rs + NR),
        8 * v.a_ks + 4 * MR * v.a_rs + 64,
        8 * v.b_ks + 128,
    ];
    if largest.iter().any(|&x| i32::try_from(x).is_err()) {
        return Err(format!("strides too large for 32-bit displacements: {v:?}"));
    }
    emit(v).map_err(|e| e.to_string())
}

/// A displacement `assemble` has range-checked.
fn disp(x: usize) -> i32 {
    x as i32
}

fn emit(v: &Variant) -> Result<Vec<u8>, IcedError> {
    let nz = v.nt.div_ceil(16);
    // lanes of the last vector
    let tail = v.nt - 16 * (nz - 1);
    let mut a = CodeAssembler::new(64)?;
    let acc = |i: usize, z: usize| zmm(i * 2 + z);
    if tail < 16 {
        a.mov(eax, (1u32 << tail) - 1)?;
        a.kmovw(k1, eax)?;
    }
    for i in 0..v.mr {
        for z in 0..nz {
            match v.bias {
                Bias::Row => a.vbroadcastss(acc(i, z), dword_ptr(rcx + disp(4 * i)))?,
                Bias::Col => {
                    let src = zmmword_ptr(rcx + disp(64 * z));
                    if z == nz - 1 && tail < 16 {
                        a.vmovups(acc(i, z).k1().z(), src)?;
                    } else {
                        a.vmovups(acc(i, z), src)?;
                    }
                }
                Bias::None => a.vxorps(acc(i, z), acc(i, z), acc(i, z))?,
            }
        }
    }
    // One k step: B row(s) into zmm28.., then every row's broadcast FMAs.
    // `a_off`/`b_off` are byte offsets from rdi/rsi.
    let step = |a: &mut CodeAssembler, a_off: usize, b_off: usize| -> Result<(), IcedError> {
        for z in 0..nz {
            let src = zmmword_ptr(rsi + disp(b_off + 64 * z));
            if z == nz - 1 && tail < 16 && !v.b_padded {
                a.vmovups(zmm(28 + z).k1().z(), src)?;
            } else {
                a.vmovups(zmm(28 + z), src)?;
            }
        }
        for i in 0..v.mr {
            let ap = rdi + disp(a_off + 4 * i * v.a_rs);
            if nz == 1 {
                a.vfmadd231ps(acc(i, 0), zmm28, dword_bcst(ap))?;
            } else {
                a.vbroadcastss(zmm30, dword_ptr(ap))?;
                for z in 0..nz {
                    a.vfmadd231ps(acc(i, z), zmm(28 + z), zmm30)?;
                }
            }
        }
        Ok(())
    };
    // The K loop, unrolled by two (loop overhead is a tenth of a step).
    let (a_step, b_step) = (4 * v.a_ks, 4 * v.b_ks);
    if v.k >= 2 {
        a.mov(r8, (v.k / 2) as u64)?;
        let mut top = a.create_label();
        a.set_label(&mut top)?;
        step(&mut a, 0, 0)?;
        step(&mut a, a_step, b_step)?;
        a.add(rdi, disp(2 * a_step))?;
        a.add(rsi, disp(2 * b_step))?;
        a.dec(r8)?;
        a.jnz(top)?;
    }
    if v.k % 2 == 1 {
        step(&mut a, 0, 0)?;
    }
    for i in 0..v.mr {
        for z in 0..nz {
            let dst = zmmword_ptr(rdx + disp(4 * (i * v.c_rs + 16 * z)));
            if z == nz - 1 && tail < 16 {
                a.vmovups(dst.k1(), acc(i, z))?;
            } else {
                a.vmovups(dst, acc(i, z))?;
            }
        }
    }
    a.vzeroupper()?;
    a.ret()?;
    a.assemble(0)
}

/// What an assembled function is cached under.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Key {
    /// a GEMM tile
    Tile(Variant),
    /// another assembled function, by a descriptive key
    Named(String),
}

/// Assembled functions (GEMM tile variants and the element-wise functions
/// of `asm_unary`), numbered in request order; the JIT places them and
/// hands the addresses to the kernels that call them.
#[derive(Default)]
pub(crate) struct AsmStore {
    keys: Vec<Key>,
    code: Vec<Vec<u8>>,
}

impl AsmStore {
    /// The number of `v`, assembling it if it is new.
    pub fn request(&mut self, v: Variant) -> Result<usize, String> {
        self.get_or_assemble(Key::Tile(v), || assemble(&v))
    }

    /// The number of the function cached under `key`, assembling it with
    /// `make` if it is new.
    pub fn request_named(
        &mut self,
        key: String,
        make: impl FnOnce() -> Result<Vec<u8>, String>,
    ) -> Result<usize, String> {
        self.get_or_assemble(Key::Named(key), make)
    }

    fn get_or_assemble(
        &mut self,
        key: Key,
        make: impl FnOnce() -> Result<Vec<u8>, String>,
    ) -> Result<usize, String> {
        if let Some(i) = self.keys.iter().position(|x| *x == key) {
            return Ok(i);
        }
        self.code.push(make()?);
        self.keys.push(key);
        Ok(self.keys.len() - 1)
    }

    /// Machine code of every function, in number order.
    pub fn code(&self) -> &[Vec<u8>] {
        &self.code
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variants_assemble_and_are_cached() {
        let v = Variant {
            k: 7,
            mr: 14,
            nt: 32,
            a_rs: 1,
            a_ks: 14,
            b_ks: 32,
            b_padded: true,
            c_rs: 100,
            bias: Bias::Row,
        };
        let mut store = AsmStore::default();
        assert_eq!(store.request(v).unwrap(), 0);
        assert_eq!(
            store
                .request(Variant {
                    nt: 5,
                    b_padded: false,
                    ..v
                })
                .unwrap(),
            1
        );
        assert_eq!(store.request(v).unwrap(), 0);
        assert_eq!(store.code().len(), 2);
        // ends with vzeroupper; ret
        let code = &store.code()[0];
        assert_eq!(&code[code.len() - 4..], &[0xC5, 0xF8, 0x77, 0xC3]);
        assert!(assemble(&Variant { mr: 15, ..v }).is_err());
    }
}
