//! The portable GEMM tile: the contract of `ukernels/tile.rs` — `C[mr × nt]
//! = alpha · (init + A[mr × K] · B[K × nt]) + beta · Cin`, then the
//! activation and an optional residual — as Cranelift f32x4 IR (`nv`
//! vectors and `ns` scalar columns of accumulators a row, A broadcast
//! element by element, K unrolled by four). Built where nothing is
//! assembled: targets without x86 tiles, `--tiles f32x4`, and the variants
//! the assembled tiles do not cover. The GEMM driver (`kernels/gemm.rs`)
//! calls [`Tile::emit`] where it would call an assembled variant.
//!
//! Activations with polynomials or several constants are applied in a sweep
//! over the tile just stored (still in L1), the others to the accumulators.

use cranelift_codegen::ir::{InstBuilder, MemFlagsData, Value};
use cranelift_frontend::Variable;

use crate::codegen::{Buf, Emitter, F32, I64, V4};
use crate::kernels::epilogue::Epilogue;
use kiln_ir::fused::Act;

/// The accumulators' starting values.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Init {
    /// zero
    Zero,
    /// `bias[off + i]` for row `i` (convolution bias)
    Row(Buf),
    /// `bias[j]` for column `j` (a linear layer's bias)
    Col(Buf),
}

/// `beta · Cin[i·rs + j·cs]` added to the result (gemm's `c`; `cs` is 0 or 1).
#[derive(Clone, Copy, Debug)]
pub(crate) struct CIn {
    /// scale
    pub beta: f32,
    /// the tensor
    pub buf: Buf,
    /// row stride (0 when broadcast)
    pub rs: i64,
    /// column stride, 0 or 1
    pub cs: i64,
}

/// How a tile reads A: element `(i, k)` at `a + 4·(i·rs + k·ks)`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct AView {
    /// elements between rows (1 in a packed panel)
    pub rs: i64,
    /// elements between k steps (the panel height when packed)
    pub ks: i64,
    /// memory flags of the loads
    pub flags: MemFlagsData,
}

/// How a tile reads B: row stride in elements, whether rows are padded to
/// whole vectors (packed panels), and the memory flags.
#[derive(Clone, Copy, Debug)]
pub(crate) struct BView {
    /// elements between k steps
    pub ks: i64,
    /// whether rows are padded to whole vectors (a packed panel)
    pub padded: bool,
    /// memory flags of the loads
    pub flags: MemFlagsData,
}

/// Pointers of one tile: A at its first row, B at its first column, C at
/// its corner, bias at its first row/column, Cin at its corner.
#[derive(Clone, Copy)]
pub(crate) struct Ptrs {
    /// A at the tile's first row
    pub a: Value,
    /// B at the tile's first column
    pub b: Value,
    /// C at the tile's corner
    pub c: Value,
    /// the bias at the tile's first row or column
    pub bias: Option<Value>,
    /// Cin at the tile's corner
    pub cin: Option<Value>,
    /// the residual at the tile's corner
    pub res: Option<Value>,
    /// the dynamic ReLU's slopes at the tile's first row
    pub slopes: Option<(Value, Value)>,
}

/// One GEMM's portable tile: everything but the tile's pointers and size.
#[derive(Clone, Copy)]
pub(crate) struct Tile<'a> {
    /// reduction length
    pub k: usize,
    /// how A is read
    pub a: AView,
    /// how B is read
    pub b: BView,
    /// what seeds the accumulators
    pub init: Init,
    /// scale of the product (and init)
    pub alpha: f32,
    /// optional `beta · Cin`
    pub cin: Option<CIn>,
    /// row stride of C (elements); columns are contiguous
    pub c_rs: i64,
    /// activation and residual after the bias
    pub epi: &'a Epilogue,
}

/// The first `valid` (< 4) f32 lanes at `base + off`, the others those of
/// `zero`: a vector never read past the end of a row.
fn load_lanes(
    e: &mut Emitter,
    f: MemFlagsData,
    base: Value,
    off: i64,
    valid: usize,
    zero: Value,
) -> Value {
    let mut y = zero;
    for l in 0..valid {
        let s = e.load(F32, f, base, off + 4 * l as i64);
        y = e.b.ins().insertlane(y, s, l as u8);
    }
    y
}

impl Tile<'_> {
    /// Emits the tile of `mr` rows and `nt` valid columns at `p`.
    pub fn emit(&self, e: &mut Emitter, p: Ptrs, mr: usize, nt: usize) {
        // vectors computed; scalar columns computed (only from unpacked B)
        let (nv, ns) = if self.b.padded {
            (nt.div_ceil(4), 0)
        } else {
            (nt / 4, nt % 4)
        };
        // accumulators
        let zero_v = e.kc(V4, 0.0);
        let (acc, accs) = self.seed(e, p.bias, mr, nt, (nv, ns));
        self.accumulate(e, p, mr, (nv, ns), (&acc, &accs));
        self.store(e, p, mr, (nt, nv), zero_v, (&acc, &accs));
    }

    /// The accumulators of an `mr × nt` tile (`nv` vectors and `ns` scalar
    /// columns a row), seeded with the bias at `bias` or zero.
    fn seed(
        &self,
        e: &mut Emitter,
        bias: Option<Value>,
        mr: usize,
        nt: usize,
        (nv, ns): (usize, usize),
    ) -> (Vec<Vec<Variable>>, Vec<Vec<Variable>>) {
        let zero_v = e.kc(V4, 0.0);
        let zero_s = e.fc(0.0);
        let mut acc: Vec<Vec<Variable>> = Vec::with_capacity(mr);
        let mut accs: Vec<Vec<Variable>> = Vec::with_capacity(mr);
        for i in 0..mr {
            let (iv, is): (Vec<Value>, Vec<Value>) = match (self.init, bias) {
                (Init::Row(buf), Some(bp)) => {
                    let s = e.load(F32, Emitter::rflags(buf), bp, 4 * i as i64);
                    let v = e.b.ins().splat(V4, s);
                    (vec![v; nv], vec![s; ns])
                }
                (Init::Col(buf), Some(bp)) => {
                    let f = Emitter::rflags(buf);
                    // vectors only where the bias has 4 valid columns
                    let vs = (0..nv)
                        .map(|v| {
                            if 4 * v + 4 <= nt {
                                e.load(V4, f, bp, 16 * v as i64)
                            } else {
                                load_lanes(e, f, bp, 16 * v as i64, nt - 4 * v, zero_v)
                            }
                        })
                        .collect();
                    let ss = (0..ns)
                        .map(|s| e.load(F32, f, bp, 4 * (4 * nv + s) as i64))
                        .collect();
                    (vs, ss)
                }
                _ => (vec![zero_v; nv], vec![zero_s; ns]),
            };
            acc.push(iv.iter().map(|&x| e.var(V4, x)).collect());
            accs.push(is.iter().map(|&x| e.var(F32, x)).collect());
        }
        (acc, accs)
    }

    /// Adds `A · B` over the whole K loop to the accumulators `acc`
    /// (vectors) and `accs` (scalar columns), K unrolled by four.
    fn accumulate(
        &self,
        e: &mut Emitter,
        p: Ptrs,
        mr: usize,
        (nv, ns): (usize, usize),
        (acc, accs): (&[Vec<Variable>], &[Vec<Variable>]),
    ) {
        let AView {
            rs: a_rs,
            ks: a_ks,
            flags: af,
        } = self.a;
        let (b_ks, bf) = (self.b.ks, self.b.flags);
        // K loop, unrolled by U
        const U: usize = 4;
        let pa = e.var(I64, p.a);
        let pb = e.var(I64, p.b);
        let step = |e: &mut Emitter, u: usize| {
            let a = e.b.use_var(pa);
            let b = e.b.use_var(pb);
            let ao = 4 * (u as i64) * a_ks;
            let bo = 4 * (u as i64) * b_ks;
            let bv: Vec<Value> = (0..nv)
                .map(|v| e.load(V4, bf, b, bo + 16 * v as i64))
                .collect();
            let bs: Vec<Value> = (0..ns)
                .map(|s| e.load(F32, bf, b, bo + 4 * (4 * nv + s) as i64))
                .collect();
            for i in 0..mr {
                let x = e.load(F32, af, a, ao + 4 * i as i64 * a_rs);
                if nv > 0 {
                    let xv = e.b.ins().splat(V4, x);
                    for (v, &bvv) in bv.iter().enumerate() {
                        let c = e.b.use_var(acc[i][v]);
                        let r = e.mul_add(xv, bvv, c);
                        e.b.def_var(acc[i][v], r);
                    }
                }
                for (s, &bss) in bs.iter().enumerate() {
                    let c = e.b.use_var(accs[i][s]);
                    let r = e.mul_add(x, bss, c);
                    e.b.def_var(accs[i][s], r);
                }
            }
        };
        let main = self.k / U;
        e.for_static(0, main as i64, 1, |e, _| {
            for u in 0..U {
                step(e, u);
            }
            let a = e.b.use_var(pa);
            let a = e.off(a, 4 * (U as i64) * a_ks);
            e.b.def_var(pa, a);
            let b = e.b.use_var(pb);
            let b = e.off(b, 4 * (U as i64) * b_ks);
            e.b.def_var(pb, b);
        });
        for u in 0..self.k % U {
            step(e, u);
        }
    }

    /// Scales the accumulators, adds `beta · Cin`, applies the inline
    /// activation and residual and stores the tile; then the sweep of the
    /// others.
    fn store(
        &self,
        e: &mut Emitter,
        p: Ptrs,
        mr: usize,
        (nt, nv): (usize, usize),
        zero_v: Value,
        (acc, accs): (&[Vec<Variable>], &[Vec<Variable>]),
    ) {
        // Epilogue. Activations with polynomials or several constants run
        // in a sweep after the store (see `sweep`); the others inline, with
        // their constants local to the epilogue (`Emitter::local_consts`).
        let inline = !self.epi.swept();
        let epilogue = |e: &mut Emitter| {
            let wf = Emitter::wflags();
            let alpha = (self.alpha != 1.0).then(|| (e.kc(V4, self.alpha), e.fc(self.alpha)));
            let cin = self.cin.map(|c| (c, e.kc(V4, c.beta), e.fc(c.beta)));
            let res = self
                .epi
                .residual
                .map(Emitter::rflags)
                .zip(p.res)
                .filter(|_| inline);
            for i in 0..mr {
                let row_off = 4 * i as i64 * self.c_rs;
                // this row's dynamic-ReLU slopes, scalar and splat
                let sl = self
                    .epi
                    .slopes
                    .zip(p.slopes)
                    .filter(|_| inline)
                    .map(|(s, (p1, p2))| {
                        let s1 = e.load(F32, Emitter::rflags(s.a1), p1, 4 * i as i64);
                        let s2 = e.load(F32, Emitter::rflags(s.a2), p2, 4 * i as i64);
                        (s1, s2)
                    });
                let slv = sl.map(|(s1, s2)| (e.b.ins().splat(V4, s1), e.b.ins().splat(V4, s2)));
                for (v, &var) in acc[i].iter().enumerate() {
                    let mut x = e.b.use_var(var);
                    if let Some((av, _)) = alpha {
                        x = e.b.ins().fmul(x, av);
                    }
                    let valid = (nt - 4 * v).min(4);
                    if let (Some((c, bv, _)), Some(cp)) = (cin, p.cin) {
                        let off = 4 * (i as i64 * c.rs) + 16 * c.cs * v as i64;
                        let f = Emitter::rflags(c.buf);
                        let y = if c.cs == 0 {
                            let s = e.load(F32, f, cp, off);
                            e.b.ins().splat(V4, s)
                        } else if valid == 4 {
                            e.load(V4, f, cp, off)
                        } else {
                            load_lanes(e, f, cp, off, valid, zero_v)
                        };
                        x = e.mul_add(y, bv, x);
                    }
                    if inline {
                        x = self.epi.activate(e, V4, x, slv);
                    }
                    if let Some((f, rp)) = res {
                        let off = row_off + 16 * v as i64;
                        let y = if valid == 4 {
                            e.load(V4, f, rp, off)
                        } else {
                            load_lanes(e, f, rp, off, valid, zero_v)
                        };
                        x = e.b.ins().fadd(x, y);
                    }
                    if valid == 4 {
                        e.store(wf, x, p.c, row_off + 16 * v as i64);
                    } else {
                        for l in 0..valid {
                            let s = e.b.ins().extractlane(x, l as u8);
                            e.store(wf, s, p.c, row_off + 4 * (4 * v + l) as i64);
                        }
                    }
                }
                for (s, &var) in accs[i].iter().enumerate() {
                    let mut x = e.b.use_var(var);
                    if let Some((_, a)) = alpha {
                        x = e.b.ins().fmul(x, a);
                    }
                    let col = 4 * nv + s;
                    if let (Some((c, _, bs)), Some(cp)) = (cin, p.cin) {
                        let off = 4 * (i as i64 * c.rs + c.cs * col as i64);
                        let y = e.load(F32, Emitter::rflags(c.buf), cp, off);
                        x = e.mul_add(y, bs, x);
                    }
                    if inline {
                        x = self.epi.activate(e, F32, x, sl);
                    }
                    if let Some((f, rp)) = res {
                        let y = e.load(F32, f, rp, row_off + 4 * col as i64);
                        x = e.b.ins().fadd(x, y);
                    }
                    e.store(wf, x, p.c, row_off + 4 * col as i64);
                }
            }
        };
        if inline && self.epi.act != Act::None {
            e.local_consts(epilogue);
        } else {
            epilogue(e);
        }
        if !inline {
            self.sweep(e, p, mr, nt);
        }
    }

    /// Applies the activation (never the dynamic ReLU, which is always
    /// inline) and the residual to the `mr × nt` block at `p.c`,
    /// which the tile has just written: one row per loop iteration, f32x4
    /// vectors and a scalar column tail, constants local to the sweep.
    fn sweep(&self, e: &mut Emitter, p: Ptrs, mr: usize, nt: usize) {
        let wf = Emitter::wflags();
        let rf = MemFlagsData::new().with_notrap();
        let res = self.epi.residual.map(Emitter::rflags);
        e.local_consts(|e| {
            e.for_static(0, mr as i64, 1, |e, i| {
                let c = e.index(p.c, i, 4 * self.c_rs);
                let r = p.res.map(|r| e.index(r, i, 4 * self.c_rs));
                for v in 0..nt / 4 {
                    let x = e.load(V4, rf, c, 16 * v as i64);
                    let mut x = self.epi.activate(e, V4, x, None);
                    if let (Some(r), Some(f)) = (r, res) {
                        let y = e.load(V4, f, r, 16 * v as i64);
                        x = e.b.ins().fadd(x, y);
                    }
                    e.store(wf, x, c, 16 * v as i64);
                }
                for col in 4 * (nt / 4)..nt {
                    let x = e.load(F32, rf, c, 4 * col as i64);
                    let mut x = self.epi.activate(e, F32, x, None);
                    if let (Some(r), Some(f)) = (r, res) {
                        let y = e.load(F32, f, r, 4 * col as i64);
                        x = e.b.ins().fadd(x, y);
                    }
                    e.store(wf, x, c, 4 * col as i64);
                }
            });
        });
    }
}
