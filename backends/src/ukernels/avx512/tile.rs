//! AVX-512 GEMM tiles assembled at compile time with iced-x86, the
//! `ukernels/tile.rs` contract's widest emitter. Cranelift lowers only
//! 128-bit vectors on x86-64, a quarter of what an AVX-512 core can do.
//!
//! A tile computes `C[mr × nt] = init + A[mr × K] · B[K × nt]` with
//! `nt ≤ nr` columns, `nr` one of 16, 32, 48, 64, and as many rows as fit
//! 28 zmm accumulators ([`max_rows`]: 14 at the default 32 columns); the
//! GEMM driver picks the shape per product (`kernels/gemm.rs`, `asm_tile_for`).
//! A (a packed panel, or activations with baked strides) is broadcast one
//! element at a time;
//! B rows are loaded as one to four zmm vectors (column tails are masked,
//! so an unpadded B is never read past its end; a last vector of ≤ 8 lanes
//! is a ymm in the K loop). `init` is zero, one bias
//! value per row, or a bias row. Every parameter — K, strides, the row and column counts —
//! is baked in, so the driver assembles one function per variant it needs.
//!
//! Fused conv/linear kernels finish the accumulators before the store
//! ([`Act`], then an optional residual laid out like C): relu, relu6,
//! hard-swish, hard-sigmoid and the dynamic ReLU are a few vector
//! instructions each; silu is `x / (1 + 2^(-x·log2 e))` with a degree-6
//! polynomial for `2^f`, `|f| ≤ 1/2` (relative error ~1e-7), and
//! `vscalefps` for the power of two; GELU (exact, through erf) is
//! `x/2 · (1 + erf(x/√2))` with erf as a degree-5/5 rational
//! (`ukernels/tile.rs`, `GELU_P`), in registers like the others.
//!
//! B read in place with a large row stride (activations: whole feature maps,
//! often a power of two apart, so the K rows of a tile share one L1 set) is
//! first copied into a contiguous `[K][NR]` panel that the other row tiles
//! of the same columns read. A `b_pack` variant does that copy itself: it
//! reads B strided, as the tile needs it anyway, and stores every row it
//! loads to the panel (two zmm stores per k, hidden under the FMAs), so the
//! copy costs no separate pass over B.
//!
//! Calling convention: System V (`a`, `b`, `c`, `bias`, `residual`, `a1` in
//! rdi, rsi, rdx, rcx, r8, r9; `a2`, the dynamic ReLU's second slope row, and
//! `panel`, where a `b_pack` variant copies B, on the stack); all vector registers are caller-saved there, and the tile
//! ends with `vzeroupper` so the surrounding 128-bit code pays no
//! transition penalty. The epilogue's scalar constants are written to the
//! red zone below rsp (the tile is a leaf function) and used as broadcast
//! memory operands, which leaves the four vector registers the K loop frees
//! for temporaries. The bytes need no relocations.

use iced_x86::code_asm::*;

use crate::ukernels::tile::{
    Act, Bias, EXP2_POLY, GELU_HI, GELU_LO, GELU_SCALE, HALF, LANES_TAIL_COLS, NEG_LOG2E, ONE, SIX,
    SIXTH, THREE, Variant, check_variant, disp, gelu_slot, k_loop, prefetch_step, write_act_consts,
};
use crate::ukernels::vector::zmm;

/// Rows of the default full tile (AVX-512; `asm_tile_avx2` has its own).
pub(crate) const MR: usize = 14;
/// Columns of the default full tile (two zmm vectors).
pub(crate) const NR: usize = 32;

/// The most rows a tile `nr` columns wide can have: its accumulators
/// (`rows · nr/16` zmm) must leave the four registers the epilogue uses
/// (zmm28..31) and, during the K loop, the B row and the broadcast A value
/// (`nr/16 + 1` registers). `None` for widths the emitter does not build.
pub(crate) fn max_rows(nr: usize) -> Option<usize> {
    match nr {
        16 => Some(28),
        32 => Some(14),
        48 => Some(9),
        64 => Some(6),
        _ => None,
    }
}

fn ymm(i: usize) -> AsmRegisterYmm {
    const Y: [AsmRegisterYmm; 32] = [
        ymm0, ymm1, ymm2, ymm3, ymm4, ymm5, ymm6, ymm7, ymm8, ymm9, ymm10, ymm11, ymm12, ymm13,
        ymm14, ymm15, ymm16, ymm17, ymm18, ymm19, ymm20, ymm21, ymm22, ymm23, ymm24, ymm25, ymm26,
        ymm27, ymm28, ymm29, ymm30, ymm31,
    ];
    Y[i]
}

/// Assembles `v`; the bytes are position-independent.
pub(crate) fn assemble(v: &Variant) -> Result<Vec<u8>, String> {
    let rows = max_rows(v.nr).ok_or_else(|| format!("AVX-512 tile width out of range: {v:?}"))?;
    check_variant(v, rows, v.nr, 64, "AVX-512")?;
    if v.cols_in_lanes {
        if !lanes_tail_fits(v) {
            return Err(format!("AVX-512 lanes tail out of range: {v:?}"));
        }
        return emit_cols_in_lanes(v).map_err(|e| e.to_string());
    }
    emit(v).map_err(|e| e.to_string())
}

/// Whether `v` can be computed with its rows across the lanes: a narrow
/// column tail, at most 16 rows contiguous in A at each k (a packed panel
/// or rows one element apart), B read as it is, and no per-row slopes.
pub(crate) fn lanes_tail_fits(v: &Variant) -> bool {
    v.nt <= LANES_TAIL_COLS && v.mr <= 16 && v.a_rs == 1 && !v.b_pack && v.act != Act::DyRelu
}

/// A column tail of `nt ≤ 4` columns with the rows across the lanes. As a
/// row-major tile it costs a full vector FMA per row and k for `nt` useful
/// lanes (N = 196 = 6·32 + 4: the 4-column tail took 14 of the 182 FMA
/// slots of each k step); here it takes `nt`: A's column `k` (the `mr`
/// rows, contiguous) is one masked load, each B element a broadcast, and
/// each column one accumulator of `mr` lanes. Every element is the same
/// chain of FMAs in the same order as in the row-major tile, so both give
/// the same bits (which tile computes a tail depends on how the GEMM was
/// split over threads: a split's first row block packs B with a row-major
/// variant); `nt` chains leave FMA latency exposed (4 cycles a k step at
/// `nt` = 4 against the row-major tail's 7). The epilogue is the row-major
/// tile's on those accumulators; the residual is gathered and the result
/// scattered, `c_rs` apart per lane.
fn emit_cols_in_lanes(v: &Variant) -> Result<Vec<u8>, IcedError> {
    let mut a = CodeAssembler::new(64)?;
    a.set_prefer_vex(false);
    let mut iota = a.create_label();
    let nt = v.nt;
    a.mov(eax, ((1u64 << v.mr) - 1) as u32)?;
    a.kmovw(k1, eax)?;
    for j in 0..nt {
        match v.bias {
            Bias::Row => a.vmovups(zmm(j).k1().z(), zmmword_ptr(rcx))?,
            Bias::Col => a.vbroadcastss(zmm(j), dword_ptr(rcx + disp(4 * j)))?,
            Bias::None => a.vxorps(zmm(j), zmm(j), zmm(j))?,
        }
    }
    let col = zmm(2 * LANES_TAIL_COLS);
    let step = |a: &mut CodeAssembler, a_off: usize, b_off: usize, _p: usize| {
        prefetch_step(a, v, a_off, b_off)?;
        a.vmovups(col.k1().z(), zmmword_ptr(rdi + disp(a_off)))?;
        for j in 0..nt {
            a.vfmadd231ps(zmm(j), col, dword_bcst(rsi + disp(b_off + 4 * j)))?;
        }
        Ok(())
    };
    k_loop(&mut a, v, v.nr, step)?;
    // the activation on accumulators 0..nt, as a one-vector-per-row tile's
    epilogue(
        &mut a,
        &Variant {
            mr: nt,
            residual: false,
            ..*v
        },
        1,
        16,
    )?;
    // lane i is row i: C and the residual `c_rs` elements apart
    let idx = zmm(2 * LANES_TAIL_COLS + 1);
    a.mov(eax, v.c_rs as u32)?;
    a.vpbroadcastd(idx, eax)?;
    a.vpmulld(idx, idx, zmmword_ptr(iota))?;
    let tmp = zmm(2 * LANES_TAIL_COLS + 2);
    for j in 0..nt {
        if v.residual {
            a.kmovw(k2, k1)?;
            a.vxorps(tmp, tmp, tmp)?;
            a.vgatherdps(tmp.k2(), zmmword_ptr(r8 + idx * 4 + disp(4 * j)))?;
            a.vaddps(zmm(j), zmm(j), tmp)?;
        }
        a.kmovw(k2, k1)?;
        a.vscatterdps(zmmword_ptr(rdx + idx * 4 + disp(4 * j)).k2(), zmm(j))?;
    }
    a.vzeroupper()?;
    a.ret()?;
    a.set_label(&mut iota)?;
    a.dd(&(0..16).collect::<Vec<u32>>())?;
    a.assemble(0)
}

fn emit(v: &Variant) -> Result<Vec<u8>, IcedError> {
    let nz = v.nt.div_ceil(16);
    // lanes of the last vector
    let tail = v.nt - 16 * (nz - 1);
    // A last vector of at most 8 lanes runs as ymm in the K loop: Zen 4
    // executes a zmm instruction as two 256-bit halves whatever its mask,
    // so a masked zmm FMA on a short tail costs a full one (N = 49 = 32 + 17
    // had 15 of its 64 lanes idle). Its upper half stays zero (an EVEX ymm
    // write clears it), so the zmm epilogue and the masked zmm store are
    // unchanged.
    let half = tail <= 8;
    let mut a = CodeAssembler::new(64)?;
    // EVEX wherever an instruction has it: the ymm forms name registers
    // past ymm15, which VEX cannot encode
    a.set_prefer_vex(false);
    // registers: accumulators first, then the B row, then the broadcast A
    // value (`max_rows` keeps them within zmm0..31 and the accumulators
    // below zmm28, which the epilogue uses)
    let acc = |i: usize, z: usize| zmm(i * nz + z);
    let breg = |z: usize| v.mr * nz + z;
    let bcast = zmm(v.mr * nz + nz);
    if v.act == Act::DyRelu {
        // the seventh argument: above the return address
        a.mov(r11, qword_ptr(rsp + 8))?;
    }
    if tail < 16 {
        a.mov(eax, (1u32 << tail) - 1)?;
        a.kmovw(k1, eax)?;
    }
    if v.b_pack {
        // the eighth argument, after the mask: rax is the panel pointer
        a.mov(rax, qword_ptr(rsp + 16))?;
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
    // One k step: B row(s) into the B registers (and to the panel when
    // packing), then every row's broadcast FMAs. `a_off`/`b_off`/`p_off` are
    // byte offsets from rdi/rsi/rax.
    let step = |a: &mut CodeAssembler,
                a_off: usize,
                b_off: usize,
                p_off: usize|
     -> Result<(), IcedError> {
        prefetch_step(a, v, a_off, b_off)?;
        for z in 0..nz {
            let masked = z == nz - 1 && tail < 16 && !v.b_padded;
            if z == nz - 1 && half {
                let (dst, src) = (ymm(breg(z)), ymmword_ptr(rsi + disp(b_off + 64 * z)));
                if masked {
                    a.vmovups(dst.k1().z(), src)?;
                } else {
                    a.vmovups(dst, src)?;
                }
            } else {
                let (dst, src) = (zmm(breg(z)), zmmword_ptr(rsi + disp(b_off + 64 * z)));
                if masked {
                    a.vmovups(dst.k1().z(), src)?;
                } else {
                    a.vmovups(dst, src)?;
                }
            }
            if v.b_pack {
                // the zero-masked (or ymm) load wrote zeros past the tail:
                // padding
                a.vmovups(zmmword_ptr(rax + disp(p_off + 64 * z)), zmm(breg(z)))?;
            }
        }
        if v.b_pack && (v.act != Act::None || v.residual) {
            // B is read in place a feature map per row apart: the hardware
            // prefetchers do not cross the page every row lands in, so each
            // row misses once per column panel. Fetch the next panel's lines
            // of this row now, a panel of FMAs ahead. Measured (mobilevitv2_050,
            // 1 thread, loaded machine): +8–18 % on the silu and residual
            // convs of 4096–16384 pixels, but −15 % on its plain `32→32 +bias`
            // one, whose short tile is bound by loads and stores already;
            // hence only where an epilogue leaves the load ports idle.
            for line in 0..(4 * v.nr).div_ceil(64) {
                a.prefetcht0(byte_ptr(rsi + disp(b_off + 4 * v.nr + 64 * line)))?;
            }
        }
        for i in 0..v.mr {
            let ap = rdi + disp(a_off + 4 * i * v.a_rs);
            if nz == 1 {
                if half {
                    a.vfmadd231ps(ymm(i), ymm(breg(0)), dword_bcst(ap))?;
                } else {
                    a.vfmadd231ps(acc(i, 0), zmm(breg(0)), dword_bcst(ap))?;
                }
                continue;
            }
            a.vbroadcastss(bcast, dword_ptr(ap))?;
            for z in 0..nz {
                if z == nz - 1 && half {
                    a.vfmadd231ps(ymm(i * nz + z), ymm(breg(z)), ymm(v.mr * nz + nz))?;
                } else {
                    a.vfmadd231ps(acc(i, z), zmm(breg(z)), bcast)?;
                }
            }
        }
        Ok(())
    };
    k_loop(&mut a, v, v.nr, step)?;
    epilogue(&mut a, v, nz, tail)?;
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

/// Activation and residual on the accumulators (zmm0..27); zmm28..31 are
/// free once the K loop is done: zmm31 holds zero, zmm30 1/6, zmm29 is a
/// temporary. `max(0, x)` is written `vmaxps x, zero, x` so that a NaN
/// accumulator stays NaN (the instruction returns its second source when
/// either is NaN), as the interpreter's relu does.
fn epilogue(a: &mut CodeAssembler, v: &Variant, nz: usize, tail: usize) -> Result<(), IcedError> {
    if v.act == Act::None && !v.residual {
        return Ok(());
    }
    let acc = |i: usize, z: usize| zmm(i * nz + z);
    if v.act != Act::None {
        write_act_consts(a, v.act)?;
        a.vxorps(zmm31, zmm31, zmm31)?;
        if !matches!(v.act, Act::Silu | Act::Gelu) {
            // silu uses zmm30 as its polynomial's accumulator
            a.vbroadcastss(zmm30, dword_ptr(rsp - SIXTH))?;
        }
    }
    for i in 0..v.mr {
        for z in 0..nz {
            let x = acc(i, z);
            match v.act {
                Act::None => {}
                Act::Relu => a.vmaxps(x, zmm31, x)?,
                Act::Relu6 => {
                    a.vmaxps(x, zmm31, x)?;
                    a.vminps(x, x, dword_bcst(rsp - SIX))?;
                }
                Act::HardSigmoid => {
                    a.vfmadd213ps(x, zmm30, dword_bcst(rsp - HALF))?;
                    a.vmaxps(x, zmm31, x)?;
                    a.vminps(x, x, dword_bcst(rsp - ONE))?;
                }
                Act::HardSwish => {
                    a.vaddps(zmm29, x, dword_bcst(rsp - THREE))?;
                    a.vmaxps(zmm29, zmm31, zmm29)?;
                    a.vminps(zmm29, zmm29, dword_bcst(rsp - SIX))?;
                    a.vmulps(x, x, zmm29)?;
                    a.vmulps(x, x, zmm30)?;
                }
                Act::Silu => {
                    // t = -x·log2 e = n + f; 2^t = 2^f · 2^n
                    a.vmulps(zmm29, x, dword_bcst(rsp - NEG_LOG2E))?;
                    a.vrndscaleps(zmm28, zmm29, 0)?;
                    a.vsubps(zmm29, zmm29, zmm28)?;
                    let (first, rest) = EXP2_POLY.split_first().expect("non-empty polynomial");
                    let rest = rest.iter().map(|&(slot, _)| slot).chain([ONE]);
                    horner(a, zmm30, zmm29, first.0, rest)?;
                    a.vscalefps(zmm30, zmm30, zmm28)?;
                    a.vaddps(zmm30, zmm30, dword_bcst(rsp - ONE))?;
                    // exact division: 1 + 2^t = inf gives -0 like the reference.
                    // Not vrcp14ps + a Newton step: the divider runs beside
                    // the FMA pipes, and the four extra FMA-pipe ops made a
                    // 28-accumulator silu ~30 % slower on Zen 4 (3.77 vs
                    // 2.88 ns per vector) and mvit050's silu convs ~6 %
                    a.vdivps(x, x, zmm30)?;
                }
                Act::DyRelu => {
                    a.vmulps(zmm29, x, dword_bcst(r9 + disp(4 * i)))?;
                    a.vmulps(x, x, dword_bcst(r11 + disp(4 * i)))?;
                    a.vmaxps(x, zmm29, x)?;
                }
                Act::Gelu => gelu(a, x)?,
            }
            if v.residual {
                let src = zmmword_ptr(r8 + disp(4 * (i * v.c_rs + 16 * z)));
                if z == nz - 1 && tail < 16 {
                    // masked: the residual is not padded past its row
                    a.vmovups(zmm29.k1().z(), src)?;
                    a.vaddps(x, x, zmm29)?;
                } else {
                    a.vaddps(x, x, src)?;
                }
            }
        }
    }
    Ok(())
}

/// `acc = Σ c_k · var^k` by Horner's rule: `acc` starts at the constant in
/// red-zone slot `top`, then `acc = acc·var + c` for each slot of `rest`
/// (broadcast memory operands).
fn horner(
    a: &mut CodeAssembler,
    acc: AsmRegisterZmm,
    var: AsmRegisterZmm,
    top: i32,
    rest: impl IntoIterator<Item = i32>,
) -> Result<(), IcedError> {
    a.vbroadcastss(acc, dword_ptr(rsp - top))?;
    for slot in rest {
        a.vfmadd213ps(acc, var, dword_bcst(rsp - slot))?;
    }
    Ok(())
}

/// `x = gelu(x)` with zmm28..31 as temporaries and the constants in the
/// red zone ([`write_act_consts`]): `z = clamp(x/√2)`,
/// `erf = z·P(z²)/Q(z²)`, `x = x/2 + x/2 · erf`. A NaN `x` stays NaN (the
/// clamp may turn `z` into a bound, but the last step multiplies by `x`).
fn gelu(a: &mut CodeAssembler, x: AsmRegisterZmm) -> Result<(), IcedError> {
    let (z, u, p, q) = (zmm28, zmm29, zmm30, zmm31);
    a.vmulps(z, x, dword_bcst(rsp - GELU_SCALE))?;
    a.vminps(z, z, dword_bcst(rsp - GELU_HI))?;
    a.vmaxps(z, z, dword_bcst(rsp - GELU_LO))?;
    a.vmulps(u, z, z)?;
    for (numerator, acc) in [(true, p), (false, q)] {
        let rest = (0..5).rev().map(|k| gelu_slot(numerator, k));
        horner(a, acc, u, gelu_slot(numerator, 5), rest)?;
    }
    a.vmulps(p, p, z)?;
    a.vdivps(p, p, q)?;
    a.vmulps(x, x, dword_bcst(rsp - HALF))?;
    a.vfmadd213ps(x, p, x)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::TileLevel;
    use crate::ukernels::{Registry, Spec};

    #[test]
    fn variants_assemble_and_are_cached() {
        let v = Variant {
            k: 7,
            mr: 14,
            nt: 32,
            nr: 32,
            a_rs: 1,
            a_ks: 14,
            b_ks: 32,
            b_padded: true,
            b_pack: false,
            c_rs: 100,
            bias: Bias::Row,
            act: Act::None,
            residual: false,
            cols_in_lanes: false,
        };
        let mut store = Registry::new(TileLevel::Avx512);
        assert_eq!(store.request(Spec::Tile(v)).unwrap(), 0);
        assert_eq!(
            store
                .request(Spec::Tile(Variant {
                    nt: 5,
                    b_padded: false,
                    ..v
                }))
                .unwrap(),
            1
        );
        assert_eq!(store.request(Spec::Tile(v)).unwrap(), 0);
        assert_eq!(store.code().len(), 2);
        for act in [
            Act::Relu,
            Act::Relu6,
            Act::HardSwish,
            Act::HardSigmoid,
            Act::Silu,
            Act::Gelu,
            Act::DyRelu,
        ] {
            let fused = Variant {
                act,
                residual: true,
                nt: 21,
                b_padded: false,
                ..v
            };
            assert!(store.request(Spec::Tile(fused)).is_ok(), "{act:?}");
        }
        // ends with vzeroupper; ret
        let code = &store.code()[0];
        assert_eq!(&code[code.len() - 4..], &[0xC5, 0xF8, 0x77, 0xC3]);
        assert!(assemble(&Variant { mr: 15, ..v }).is_err());
        // packing reads B unpadded
        assert!(assemble(&Variant { b_pack: true, ..v }).is_err());
        let pack = Variant {
            b_pack: true,
            b_padded: false,
            b_ks: 4096,
            ..v
        };
        assert!(store.request(Spec::Tile(pack)).is_ok());
    }

    /// Every tile width at its largest row count and below, with full
    /// columns, zmm tails (9..15 lanes) and ymm tails (≤ 8 lanes), packing
    /// or not, with every epilogue: each assembles, decodes as valid
    /// instructions and keeps the accumulators below zmm28; a short tail's FMAs are ymm,
    /// a long tail's zmm; one more row than `max_rows` is refused.
    #[test]
    fn every_width_decodes() {
        use iced_x86::{Decoder, DecoderOptions, Mnemonic, OpKind};
        let acts: Vec<Act> = Act::ALL.to_vec();
        let mut checked = 0;
        for nr in [16, 32, 48, 64] {
            let rows = max_rows(nr).unwrap();
            for mr in [1, rows / 2, rows] {
                for nt in [nr, nr - 3, nr - 12, nr - 15] {
                    for (i, act) in acts.iter().enumerate() {
                        let b_pack = i % 2 == 0;
                        let v = Variant {
                            k: 3 + i,
                            mr,
                            nt,
                            nr,
                            a_rs: 1,
                            a_ks: mr,
                            b_ks: if b_pack { 4096 } else { nr },
                            b_padded: !b_pack,
                            b_pack,
                            c_rs: 100,
                            bias: [Bias::None, Bias::Row, Bias::Col][i % 3],
                            act: *act,
                            residual: i % 3 != 1,
                            cols_in_lanes: false,
                        };
                        let code = assemble(&v).unwrap_or_else(|e| panic!("{v:?}: {e}"));
                        let tail = nt - 16 * (nt.div_ceil(16) - 1);
                        let (mut ymm_fma, mut zmm_fma) = (0, 0);
                        for ins in Decoder::new(64, &code, DecoderOptions::NONE) {
                            assert!(!ins.is_invalid(), "{v:?}");
                            if ins.mnemonic() == Mnemonic::Vfmadd231ps
                                && ins.op0_kind() == OpKind::Register
                            {
                                let r = ins.op0_register();
                                if r.is_ymm() {
                                    ymm_fma += 1;
                                } else {
                                    zmm_fma += 1;
                                }
                                // accumulators only (the epilogue's FMAs
                                // use zmm28..31)
                                if r.number() < 28 {
                                    assert!(r.number() < mr * nt.div_ceil(16), "{v:?}: {r:?}");
                                }
                            }
                            checked += 1;
                        }
                        // each row's last vector: one FMA per row and k step
                        // emitted (the loop body holds two, an odd K one
                        // more), ymm iff it has ≤ 8 lanes
                        let steps = 2 * usize::from(v.k >= 2) + v.k % 2;
                        if tail <= 8 {
                            assert_eq!(ymm_fma, mr * steps, "{v:?}");
                        } else {
                            assert_eq!(ymm_fma, 0, "{v:?}");
                        }
                        assert_eq!(
                            zmm_fma,
                            mr * steps * (nt.div_ceil(16) - usize::from(tail <= 8)),
                            "{v:?}"
                        );
                    }
                }
            }
            let v = Variant {
                k: 4,
                mr: rows + 1,
                nt: nr,
                nr,
                a_rs: 1,
                a_ks: rows + 1,
                b_ks: nr,
                b_padded: true,
                b_pack: false,
                c_rs: 100,
                bias: Bias::None,
                act: Act::None,
                residual: false,
                cols_in_lanes: false,
            };
            assert!(assemble(&v).is_err(), "{v:?}");
            assert!(
                assemble(&Variant {
                    nt: nr + 1,
                    mr: rows,
                    ..v
                })
                .is_err()
            );
        }
        assert!(max_rows(24).is_none());
        assert!(checked > 10_000, "{checked}");
    }
}
