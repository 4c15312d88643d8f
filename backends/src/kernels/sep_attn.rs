//! Kernel of `fused_sep_attn`, MobileViTv2's separable self-attention with
//! its output projection (`FusedOp::expand`, the definition it is tested
//! against): four kernels instead of the expansion's unfold, 129-row
//! convolution, slices, softmax, `mul`, `reduce_sum`, `relu`, `mul`,
//! out-projection convolution and fold.
//!
//! Both projections are pointwise, so each pixel's `q`, `k`, `v` and
//! output depend only on that pixel and on its slot's context vector: the
//! folded form (`patch = [ph, pw]`, `u [N,d,H,W]`) never unfolds. A pixel
//! `(y, x)` belongs to slot `(y mod ph, x mod pw)`; the unfolded form
//! (`u [N,d,P,Np]`, slot = row) is the same computation on a `P × Np`
//! plane with patch `P × 1`. So:
//!
//! 1. `[q; k; v] = Wqkv·u + bqkv` per image, one GEMM on the driver
//!    (packed weights, assembled tiles, bias seeding, `u` read in place)
//!    into scratch `[N, 1+2d, L]`;
//! 2. [`SlotSoftmax`], one unit per (image, slot row `y mod ph`): the
//!    softmax of `q` over each slot's pixels, in place;
//! 3. [`SepCore`], one unit per (image, channel): `c[s] = Σ k·softmax(q)`
//!    over each slot's pixels, then `relu(v)·c[slot]` written over `v` in
//!    the same unit (the channel's `v` row is read and written once; doing
//!    it in the out-projection's B packing would need a new assembled
//!    `b_pack` variant);
//! 4. `out = Wo·y + bo` per image, the same GEMM driver, B read from the
//!    scratch rows written in 3 (an image stride of `(1+2d)·L`).
//!
//! Steps 2 and 3 run along image rows in f32x4 lanes: a vector starting at a
//! column that is a multiple of 4 has its lane `l` in slot column
//! `l mod pw` when `pw` divides 4 (1, 2, 4: MobileViTv2's 2×2 and the
//! unfolded form), so per-slot sums and maxima are lanes folded by slot
//! column and per-slot values are vectors of that pattern. Other patch
//! widths, and the columns of a row past its last multiple of 4, are
//! scalar. Empty tensors and operands of other shapes keep the expansion
//! ([`has_kernel`]).

use cranelift_codegen::ir::{InstBuilder, Value};
use cranelift_frontend::Variable;
use kiln_ir::TensorType;
use kiln_ir::fused::FusedOp;
use kiln_ir::fused::sep_attn::OPERANDS;

use super::gemm::{self, ASrc, BSrc, Gemm, Init};
use super::{Kernel, Kernels, NodeCx, matmul};
use crate::codegen::math::{exp, relu};
use crate::codegen::{Buf, Emitter, F32, Loc, V4};
use crate::error::BackendError;

/// The geometry of a separable attention, on the plane it runs on: the
/// folded map, or the unfolded `P × Np` tensor with patch `P × 1`.
#[derive(Clone, Copy, Debug)]
struct Sep {
    n: usize,
    d: usize,
    h: usize,
    w: usize,
    ph: usize,
    pw: usize,
}

impl Sep {
    fn of(f: &FusedOp, ops: &[TensorType]) -> Option<Sep> {
        let FusedOp::SepAttn { patch } = *f else {
            return None;
        };
        let l = OPERANDS;
        let u = ops.get(l.u)?;
        if u.rank() != 4 || ops.len() != l.count {
            return None;
        }
        let (n, d, h, w) = (u.shape[0], u.shape[1], u.shape[2], u.shape[3]);
        let (ph, pw) = match patch {
            None => (h, 1),
            Some([ph, pw]) => (ph, pw),
        };
        let r = 1 + 2 * d;
        let shapes_ok = ops[l.wqkv].shape == [r, d, 1, 1]
            && ops[l.bqkv].shape == [r]
            && ops[l.wo].shape == [d, d, 1, 1]
            && ops[l.bo].shape == [d];
        let fits = ph > 0 && pw > 0 && h % ph == 0 && w % pw == 0;
        (shapes_ok && fits && n * d * h * w > 0).then_some(Sep { n, d, h, w, ph, pw })
    }

    /// pixels per image
    fn l(&self) -> usize {
        self.h * self.w
    }

    /// rows of the scratch `[q; k; v]` per image
    fn rows(&self) -> usize {
        1 + 2 * self.d
    }

    /// columns of a row swept in f32x4 lanes (the rest are scalar)
    fn x0(&self) -> usize {
        if 4 % self.pw == 0 {
            4 * (self.w / 4)
        } else {
            0
        }
    }

    /// slots
    fn slots(&self) -> usize {
        self.ph * self.pw
    }

    /// Calls `vec(e, off, u)` for the f32x4 at byte offset `off + 16·u` and
    /// `scalar(e, off, j)` for the element at `off + 4·j` (slot column
    /// `j`), over the rows `y ≡ r (mod ph)` of a plane, offsets relative to
    /// row `r`. Vectors come four at a time (`u` = 0..3, so a caller can
    /// keep four independent accumulators), then the rest one by one.
    fn sweep(
        &self,
        e: &mut Emitter,
        vec: &mut dyn FnMut(&mut Emitter, Value, usize),
        scalar: &mut dyn FnMut(&mut Emitter, Value, usize),
    ) {
        let (w, pw, x0) = (self.w, self.pw, self.x0());
        let x16 = 16 * (x0 / 16);
        let row_bytes = 4 * (self.ph * w) as i64;
        e.for_static(0, (self.h / self.ph) as i64, 1, |e, ty| {
            let ro = e.b.ins().imul_imm_s(ty, row_bytes);
            e.for_static(0, 4 * x16 as i64, 64, |e, xo| {
                let off = e.b.ins().iadd(ro, xo);
                for u in 0..4 {
                    vec(e, off, u);
                }
            });
            if x0 > x16 {
                let off = e.b.ins().iadd_imm_s(ro, 4 * x16 as i64);
                for u in 0..(x0 - x16) / 4 {
                    vec(e, off, u);
                }
            }
            e.for_static((x0 / pw) as i64, (w / pw) as i64, 1, |e, tx| {
                let xo = e.b.ins().imul_imm_s(tx, 4 * pw as i64);
                let off = e.b.ins().iadd(ro, xo);
                for j in 0..pw {
                    scalar(e, off, j);
                }
            });
        });
    }

    /// `s[j]` (`j < pw`) as an f32x4 whose lane `l` holds `s[l mod pw]`.
    fn pattern(&self, e: &mut Emitter, s: &[Value]) -> Value {
        let mut v = e.b.ins().splat(V4, s[0]);
        for l in 1..4u8 {
            let j = usize::from(l) % self.pw;
            if j != 0 {
                v = e.b.ins().insertlane(v, s[j], l);
            }
        }
        v
    }

    /// Folds the lanes of `v` into `s[l mod pw]` with `op`, lane by lane
    /// (a fixed order).
    fn fold_lanes(
        &self,
        e: &mut Emitter,
        v: Value,
        s: &mut [Value],
        op: fn(&mut Emitter, Value, Value) -> Value,
    ) {
        if self.x0() == 0 {
            return;
        }
        for l in 0..4u8 {
            let x = e.b.ins().extractlane(v, l);
            let j = usize::from(l) % self.pw;
            s[j] = op(e, s[j], x);
        }
    }
}

fn fmax(e: &mut Emitter, a: Value, b: Value) -> Value {
    e.b.ins().fmax(a, b)
}

fn fadd(e: &mut Emitter, a: Value, b: Value) -> Value {
    e.b.ins().fadd(a, b)
}

/// Whether `fused_sep_attn` with operand types `ops` has this kernel: `u`
/// of rank 4 and not empty, the weights `[1+2d,d,1,1]`, `[1+2d]`,
/// `[d,d,1,1]`, `[d]` (no broadcast biases), the patch dividing the map.
pub(crate) fn has_kernel(f: &FusedOp, ops: &[TensorType]) -> bool {
    Sep::of(f, ops).is_some()
}

/// Bytes of scratch: `[q; k; v]` of every image.
pub(crate) fn scratch_bytes(f: &FusedOp, ops: &[TensorType]) -> usize {
    Sep::of(f, ops).map_or(0, |s| 4 * s.n * s.rows() * s.l())
}

/// The softmax of `q` over each slot, in place: one unit per (image, slot
/// row), three sweeps (maximum, `exp` and sum, scale) of the unit's rows.
struct SlotSoftmax {
    s: Sep,
    qkv: Buf,
}

impl Kernel for SlotSoftmax {
    fn describe(&self) -> String {
        let s = &self.s;
        format!(
            "fused_sep_attn slot softmax: {} slots of {} pixels, batch {}",
            s.slots(),
            s.l() / s.slots(),
            s.n
        )
    }

    fn units(&self) -> usize {
        self.s.n * self.s.ph
    }

    fn cost(&self) -> f64 {
        (20 * self.s.n * self.s.l()) as f64
    }

    fn emit(&self, e: &mut Emitter, begin: Value, end: Value) {
        let s = self.s;
        let pw = s.pw;
        let base = e.base(self.qkv);
        let f = Emitter::rflags(self.qkv);
        let wf = Emitter::wflags();
        e.for_range(begin, end, 1, |e, unit| {
            let n = e.b.ins().udiv_imm_u(unit, s.ph as i64);
            let r = e.b.ins().urem_imm_u(unit, s.ph as i64);
            let qn = e.index(base, n, 4 * (s.rows() * s.l()) as i64);
            let q = e.index(qn, r, 4 * s.w as i64);
            // the maximum of each slot
            let ninf = e.kc(V4, f32::NEG_INFINITY);
            let vmax = e.var(V4, ninf);
            let ninf_s = e.fc(f32::NEG_INFINITY);
            let smax: Vec<Variable> = (0..pw).map(|_| e.var(F32, ninf_s)).collect();
            s.sweep(
                e,
                &mut |e, off, u| {
                    let p = e.b.ins().iadd(q, off);
                    let x = e.load(V4, f, p, 16 * u as i64);
                    let a = e.b.use_var(vmax);
                    let m = e.b.ins().fmax(a, x);
                    e.b.def_var(vmax, m);
                },
                &mut |e, off, j| {
                    let p = e.b.ins().iadd(q, off);
                    let x = e.load(F32, f, p, 4 * j as i64);
                    let a = e.b.use_var(smax[j]);
                    let m = e.b.ins().fmax(a, x);
                    e.b.def_var(smax[j], m);
                },
            );
            let mut m: Vec<Value> = smax.iter().map(|&v| e.b.use_var(v)).collect();
            let v = e.b.use_var(vmax);
            s.fold_lanes(e, v, &mut m, fmax);
            // exp(q - max) in place, summed per slot
            let mv = s.pattern(e, &m);
            let zero = e.kc(V4, 0.0);
            let vsum = e.var(V4, zero);
            let zero_s = e.fc(0.0);
            let ssum: Vec<Variable> = (0..pw).map(|_| e.var(F32, zero_s)).collect();
            s.sweep(
                e,
                &mut |e, off, u| {
                    let p = e.b.ins().iadd(q, off);
                    let x = e.load(V4, f, p, 16 * u as i64);
                    let dx = e.b.ins().fsub(x, mv);
                    let y = exp(e, V4, dx);
                    e.store(wf, y, p, 16 * u as i64);
                    let a = e.b.use_var(vsum);
                    let t = e.b.ins().fadd(a, y);
                    e.b.def_var(vsum, t);
                },
                &mut |e, off, j| {
                    let p = e.b.ins().iadd(q, off);
                    let x = e.load(F32, f, p, 4 * j as i64);
                    let dx = e.b.ins().fsub(x, m[j]);
                    let y = exp(e, F32, dx);
                    e.store(wf, y, p, 4 * j as i64);
                    let a = e.b.use_var(ssum[j]);
                    let t = e.b.ins().fadd(a, y);
                    e.b.def_var(ssum[j], t);
                },
            );
            let mut sum: Vec<Value> = ssum.iter().map(|&v| e.b.use_var(v)).collect();
            let v = e.b.use_var(vsum);
            s.fold_lanes(e, v, &mut sum, fadd);
            let one = e.fc(1.0);
            let inv: Vec<Value> = sum.iter().map(|&t| e.b.ins().fdiv(one, t)).collect();
            let iv = s.pattern(e, &inv);
            s.sweep(
                e,
                &mut |e, off, u| {
                    let p = e.b.ins().iadd(q, off);
                    let x = e.load(V4, f, p, 16 * u as i64);
                    let y = e.b.ins().fmul(x, iv);
                    e.store(wf, y, p, 16 * u as i64);
                },
                &mut |e, off, j| {
                    let p = e.b.ins().iadd(q, off);
                    let x = e.load(F32, f, p, 4 * j as i64);
                    let y = e.b.ins().fmul(x, inv[j]);
                    e.store(wf, y, p, 4 * j as i64);
                },
            );
        });
    }
}

/// The context vector and `relu(v)·c`: one unit per (image, channel); per
/// slot row, `c[s] = Σ k·a` over the slot's pixels (`a` the softmax from
/// [`SlotSoftmax`]), then the channel's `v` of those rows becomes
/// `relu(v)·c[slot]` in place.
struct SepCore {
    s: Sep,
    qkv: Buf,
}

impl Kernel for SepCore {
    fn describe(&self) -> String {
        let s = &self.s;
        format!(
            "fused_sep_attn context: {}x{} channels over {}x{} pixels, patch {}x{}",
            s.n, s.d, s.h, s.w, s.ph, s.pw
        )
    }

    fn units(&self) -> usize {
        self.s.n * self.s.d
    }

    fn cost(&self) -> f64 {
        (4 * self.s.n * self.s.d * self.s.l()) as f64
    }

    fn emit(&self, e: &mut Emitter, begin: Value, end: Value) {
        let s = self.s;
        let (pw, l, d) = (s.pw, s.l(), s.d);
        let base = e.base(self.qkv);
        let f = Emitter::rflags(self.qkv);
        let wf = Emitter::wflags();
        e.for_range(begin, end, 1, |e, unit| {
            let n = e.b.ins().udiv_imm_u(unit, d as i64);
            let ch = e.b.ins().urem_imm_u(unit, d as i64);
            let qn = e.index(base, n, 4 * (s.rows() * l) as i64);
            // k of this channel is row 1 + ch, v row 1 + d + ch
            let kn = e.index(qn, ch, 4 * l as i64);
            let kn = e.off(kn, 4 * l as i64);
            let vn = e.off(kn, 4 * (d * l) as i64);
            e.for_static(0, s.ph as i64, 1, |e, r| {
                let ro = e.b.ins().imul_imm_s(r, 4 * s.w as i64);
                let q = e.b.ins().iadd(qn, ro);
                let k = e.b.ins().iadd(kn, ro);
                let v = e.b.ins().iadd(vn, ro);
                let zero = e.kc(V4, 0.0);
                let accs: [Variable; 4] = std::array::from_fn(|_| e.var(V4, zero));
                let zero_s = e.fc(0.0);
                let sacc: Vec<Variable> = (0..pw).map(|_| e.var(F32, zero_s)).collect();
                s.sweep(
                    e,
                    &mut |e, off, u| {
                        let pk = e.b.ins().iadd(k, off);
                        let pq = e.b.ins().iadd(q, off);
                        let kv = e.load(V4, f, pk, 16 * u as i64);
                        let qv = e.load(V4, f, pq, 16 * u as i64);
                        let a = e.b.use_var(accs[u]);
                        let t = e.mul_add(kv, qv, a);
                        e.b.def_var(accs[u], t);
                    },
                    &mut |e, off, j| {
                        let pk = e.b.ins().iadd(k, off);
                        let pq = e.b.ins().iadd(q, off);
                        let kv = e.load(F32, f, pk, 4 * j as i64);
                        let qv = e.load(F32, f, pq, 4 * j as i64);
                        let a = e.b.use_var(sacc[j]);
                        let t = e.mul_add(kv, qv, a);
                        e.b.def_var(sacc[j], t);
                    },
                );
                let [a0, a1, a2, a3] = accs.map(|a| e.b.use_var(a));
                let a01 = e.b.ins().fadd(a0, a1);
                let a23 = e.b.ins().fadd(a2, a3);
                let acc = e.b.ins().fadd(a01, a23);
                let mut c: Vec<Value> = sacc.iter().map(|&v| e.b.use_var(v)).collect();
                s.fold_lanes(e, acc, &mut c, fadd);
                let cv = s.pattern(e, &c);
                s.sweep(
                    e,
                    &mut |e, off, u| {
                        let p = e.b.ins().iadd(v, off);
                        let x = e.load(V4, f, p, 16 * u as i64);
                        let x = relu(e, V4, x);
                        let y = e.b.ins().fmul(x, cv);
                        e.store(wf, y, p, 16 * u as i64);
                    },
                    &mut |e, off, j| {
                        let p = e.b.ins().iadd(v, off);
                        let x = e.load(F32, f, p, 4 * j as i64);
                        let x = relu(e, F32, x);
                        let y = e.b.ins().fmul(x, c[j]);
                        e.store(wf, y, p, 4 * j as i64);
                    },
                );
            });
        });
    }
}

/// One pointwise projection of every image on the GEMM driver:
/// `C_n = W·B_n + bias` with `W` operand `w` (`[m, k, 1, 1]`, packed at
/// compile time when constant), bias operand `bias` seeding the rows, `B_n`
/// the `k × l` rows at `b + n·b_img`, `C_n` the `m × l` rows at
/// `c + n·c_img` (element strides).
struct Proj {
    w: usize,
    bias: usize,
    b: Buf,
    b_img: usize,
    c: Buf,
    c_img: usize,
    m: usize,
    k: usize,
    title: String,
}

fn project(cx: &mut NodeCx, s: &Sep, p: Proj) -> Result<Gemm, BackendError> {
    let tile = matmul::tile_for(cx, true);
    let a = match cx.ins[p.w].data {
        Some(w) => {
            let packed = gemm::pack_a(w, p.m, p.k, p.k, 1, tile.mr);
            ASrc::Packed {
                addr: cx.consts.add(&packed),
            }
        }
        None => ASrc::Strided {
            buf: cx.ins[p.w].buf,
            rs: p.k as i64,
            ks: 1,
        },
    };
    let offs: Vec<[i64; 4]> = (0..s.n)
        .map(|n| [0, (n * p.b_img) as i64, (n * p.c_img) as i64, 0])
        .collect();
    let gm = Gemm {
        batch: s.n,
        offsets: gemm::offset_table(cx.consts, &offs),
        init: Init::Row(cx.ins[p.bias].buf),
        title: Some(p.title),
        ..Gemm::new(
            "pointwise conv",
            [p.m, s.l(), p.k],
            a,
            BSrc::Strided {
                buf: p.b,
                ks: s.l() as i64,
            },
            (p.c, s.l() as i64),
            tile,
        )
    };
    matmul::finish(cx, gm)
}

/// Lowers a `fused_sep_attn` that [`has_kernel`]: see the module docs.
pub(crate) fn lower(cx: &mut NodeCx, f: &FusedOp) -> Result<Kernels, BackendError> {
    let types: Vec<TensorType> = cx.ins.iter().map(|o| o.ty.clone()).collect();
    let s = Sep::of(f, &types)
        .ok_or_else(|| cx.unsupported("fused_sep_attn operands this kernel does not take"))?;
    let at = match cx.scratch.map(|b| b.loc) {
        Some(Loc::Arena(off)) => off,
        _ => return Err(cx.unsupported("fused_sep_attn without its arena scratch")),
    };
    let (d, l, img) = (s.d, s.l(), s.rows() * s.l());
    let qkv = Buf::output(Loc::Arena(at));
    let qkv_gemm = project(
        cx,
        &s,
        Proj {
            w: OPERANDS.wqkv,
            bias: OPERANDS.bqkv,
            b: cx.ins[OPERANDS.u].buf,
            b_img: d * l,
            c: qkv,
            c_img: img,
            m: s.rows(),
            k: d,
            title: format!("fused_sep_attn qkv projection {d}→{}", s.rows()),
        },
    )?;
    // y = relu(v)·c sits where v was: rows 1 + d .. 1 + 2d of each image
    let y = Buf::input(Loc::Arena(at + 4 * (1 + d) * l));
    let out_gemm = project(
        cx,
        &s,
        Proj {
            w: OPERANDS.wo,
            bias: OPERANDS.bo,
            b: y,
            b_img: img,
            c: cx.outs[0].0,
            c_img: d * l,
            m: d,
            k: d,
            title: format!("fused_sep_attn out projection {d}→{d}"),
        },
    )?;
    Ok(vec![
        Box::new(qkv_gemm),
        Box::new(SlotSoftmax { s, qkv }),
        Box::new(SepCore { s, qkv }),
        Box::new(out_gemm),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ops(u: &[usize], d: usize) -> Vec<TensorType> {
        let r = 1 + 2 * d;
        [
            u.to_vec(),
            vec![r, d, 1, 1],
            vec![r],
            vec![d, d, 1, 1],
            vec![d],
        ]
        .into_iter()
        .map(TensorType::f32)
        .collect()
    }

    #[test]
    fn shapes_with_a_kernel() {
        let folded = FusedOp::SepAttn {
            patch: Some([2, 2]),
        };
        let unfolded = FusedOp::SepAttn { patch: None };
        assert!(has_kernel(&folded, &ops(&[1, 8, 4, 6], 8)));
        assert!(has_kernel(&unfolded, &ops(&[2, 3, 4, 5], 3)));
        // empty, a patch that does not divide the map, a wrong weight
        assert!(!has_kernel(&folded, &ops(&[0, 8, 4, 6], 8)));
        assert!(!has_kernel(&folded, &ops(&[1, 8, 4, 5], 8)));
        assert!(!has_kernel(&folded, &ops(&[1, 8, 4, 6], 7)));
        // the unfolded form is the folded one with patch P × 1
        let s = Sep::of(&unfolded, &ops(&[2, 3, 4, 5], 3)).unwrap();
        assert_eq!((s.h, s.w, s.ph, s.pw, s.slots()), (4, 5, 4, 1, 4));
        assert_eq!(
            scratch_bytes(&unfolded, &ops(&[2, 3, 4, 5], 3)),
            4 * 2 * 7 * 20
        );
    }
}
