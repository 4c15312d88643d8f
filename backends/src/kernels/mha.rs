//! Kernel of `fused_mha`, multi-head token attention with the Q/K/V
//! projections it absorbed: the projected sides go to scratch
//! (`attn_parts::project`, on the GEMM driver), then one unit per batch
//! element computes per query and head the scores over the keys, their
//! softmax and the weighted sum of the values ([`MhaKernel`]), instead of
//! the reshapes, transposes, matmuls and softmax of its expansion
//! (`FusedOp::expand`, the definition it is tested against).

use cranelift_codegen::ir::{InstBuilder, Type, Value};
use kiln_ir::TensorType;
use kiln_ir::fused::FusedOp;

use super::attn_parts::{Ptr, Scratch, base, checked_types, exp_row, operand, part, project};
use super::epilogue::Epilogue;
use super::{Kernel, Kernels, NodeCx};
use crate::codegen::{Buf, Emitter, F32, V4};
use crate::error::BackendError;

/// The dimensions of a `fused_mha`.
#[derive(Clone, Copy, Debug)]
struct Mha {
    b: usize,
    tq: usize,
    tk: usize,
    /// query/key width after projection
    d: usize,
    /// value width after projection
    dvo: usize,
    heads: usize,
}

fn mha_of(f: &FusedOp, ops: &[TensorType]) -> Option<Mha> {
    let FusedOp::Mha {
        heads,
        proj_q,
        proj_k,
        proj_v,
        ..
    } = *f
    else {
        return None;
    };
    let l = kiln_ir::fused::mha::operands(proj_q, proj_k, proj_v);
    let (xq, xk, xv) = (ops.get(l.xq)?, ops.get(l.xk)?, ops.get(l.xv)?);
    if [xq, xk, xv].iter().any(|t| t.rank() != 3) || heads == 0 {
        return None;
    }
    let (b, tq, tk) = (xq.shape[0], xq.shape[1], xk.shape[1]);
    if xk.shape[0] != b || xv.shape[0] != b || xv.shape[1] != tk {
        return None;
    }
    let (dq, dk, dv) = (xq.shape[2], xk.shape[2], xv.shape[2]);
    let width = |proj: Option<(usize, usize)>, din: usize| -> Option<usize> {
        let Some((w, bias)) = proj else {
            return Some(din);
        };
        let (w, bias) = (ops.get(w)?, ops.get(bias)?);
        let dout = *w.shape.get(1)?;
        (w.shape == [din, dout] && bias.shape == [dout]).then_some(dout)
    };
    let d = width(l.q, dq)?;
    let dkk = width(l.k, dk)?;
    let dvo = width(l.v, dv)?;
    (d == dkk && d % heads == 0 && dvo % heads == 0).then_some(Mha {
        b,
        tq,
        tk,
        d,
        dvo,
        heads,
    })
}

/// Scratch arrays of `fused_mha`: per batch element the projected Q, K, V
/// (where projected) and one row of scores.
fn mha_scratch(a: &Mha) -> Scratch {
    Scratch::new(&[
        a.b * a.tq * a.d,
        a.b * a.tk * a.d,
        a.b * a.tk * a.dvo,
        a.b * a.tk,
    ])
}

/// Whether this module has a kernel for the `fused_mha` `f` with operand
/// types `ops` (the caller checked the op is well typed: it has an output).
pub(crate) fn has_kernel(f: &FusedOp, ops: &[TensorType]) -> bool {
    matches!(f, FusedOp::Mha { .. }) && mha_of(f, ops).is_some() && ops.len() == f.num_operands()
}

/// Bytes of scratch the kernels of `f` need.
pub(crate) fn scratch_bytes(f: &FusedOp, ops: &[TensorType]) -> usize {
    if !has_kernel(f, ops) {
        return 0;
    }
    mha_of(f, ops).map_or(0, |a| mha_scratch(&a).total)
}

/// `Σ_i a[i]·b[i]` over a contiguous run of `len` (f32x4 lanes, then
/// scalars), in a fixed order.
fn dot(e: &mut Emitter, a: Ptr, b: Ptr, len: usize) -> Value {
    let zero = e.kc(V4, 0.0);
    let acc = e.var(V4, zero);
    e.for_static(0, 16 * (len / 4) as i64, 16, |e, o| {
        let x = a.at(e, o, 1).load(e, V4, 0);
        let y = b.at(e, o, 1).load(e, V4, 0);
        let s = e.b.use_var(acc);
        let r = e.mul_add(x, y, s);
        e.b.def_var(acc, r);
    });
    let v = e.b.use_var(acc);
    let mut s = e.hsum(v);
    for i in 4 * (len / 4)..len {
        let x = a.load(e, F32, 4 * i as i64);
        let y = b.load(e, F32, 4 * i as i64);
        s = e.mul_add(x, y, s);
    }
    s
}

/// `fused_mha`: one unit per batch element; see the module docs.
struct MhaKernel {
    a: Mha,
    scale: f32,
    /// Q `[B, Tq, D]`, K `[B, Tk, D]`, V `[B, Tk, Dv']`: the inputs, or
    /// their projections in scratch
    qkv: [Buf; 3],
    /// scratch: one row of scores per batch element
    srow: Buf,
    out: Buf,
}

impl Kernel for MhaKernel {
    fn describe(&self) -> String {
        let a = &self.a;
        format!(
            "fused_mha {} queries over {} keys, {} heads, width {}",
            a.tq, a.tk, a.heads, a.d
        )
    }

    fn units(&self) -> usize {
        self.a.b
    }

    fn cost(&self) -> f64 {
        let a = &self.a;
        (2 * a.b * a.tq * a.tk * (a.d + a.dvo)) as f64
    }

    fn emit(&self, e: &mut Emitter, begin: Value, end: Value) {
        let a = self.a;
        let side: Vec<Ptr> = self.qkv.iter().map(|&x| base(e, x)).collect();
        let srow = base(e, self.srow);
        let out = e.base(self.out);
        let wf = Emitter::wflags();
        let (dh, dvh) = (a.d / a.heads, a.dvo / a.heads);
        e.for_range(begin, end, 1, |e, bi| {
            let q = side[0].at(e, bi, 4 * (a.tq * a.d) as i64);
            let k = side[1].at(e, bi, 4 * (a.tk * a.d) as i64);
            let v = side[2].at(e, bi, 4 * (a.tk * a.dvo) as i64);
            let srow = srow.at(e, bi, 4 * a.tk as i64);
            let ob = e.index(out, bi, 4 * (a.tq * a.dvo) as i64);
            e.for_static(0, a.tq as i64, 1, |e, i| {
                let qi = q.at(e, i, 4 * a.d as i64);
                let oi = e.index(ob, i, 4 * a.dvo as i64);
                for h in 0..a.heads {
                    let qh = qi.off(e, 4 * (h * dh) as i64);
                    let kh = k.off(e, 4 * (h * dh) as i64);
                    e.for_static(0, a.tk as i64, 1, |e, t| {
                        let kt = kh.at(e, t, 4 * a.d as i64);
                        let s = dot(e, qh, kt, dh);
                        let sk = e.fc(self.scale);
                        let s = e.b.ins().fmul(s, sk);
                        let p = e.index(srow.p, t, 4);
                        e.store(wf, s, p, 0);
                    });
                    let inv = exp_row(e, srow, a.tk);
                    let vh = v.off(e, 4 * (h * dvh) as i64);
                    let oh = e.off(oi, 4 * (h * dvh) as i64);
                    // the weighted sum of the values, f32x4 lanes over columns
                    let cols = |e: &mut Emitter, jo: i64, ty: Type| {
                        let zero = e.kc(ty, 0.0);
                        let acc = e.var(ty, zero);
                        e.for_static(0, a.tk as i64, 1, |e, t| {
                            let pt = srow.at(e, t, 4).load(e, F32, 0);
                            let pv = e.widen(ty, pt);
                            let vt = vh.at(e, t, 4 * a.dvo as i64).load(e, ty, jo);
                            let s = e.b.use_var(acc);
                            let r = e.mul_add(pv, vt, s);
                            e.b.def_var(acc, r);
                        });
                        let s = e.b.use_var(acc);
                        let iv = e.widen(ty, inv);
                        let r = e.b.ins().fmul(s, iv);
                        e.store(wf, r, oh, jo);
                    };
                    for j in (0..4 * (dvh / 4)).step_by(4) {
                        cols(e, 4 * j as i64, V4);
                    }
                    for j in 4 * (dvh / 4)..dvh {
                        cols(e, 4 * j as i64, F32);
                    }
                }
            });
        });
    }
}

/// Lowers a `fused_mha` that [`has_kernel`].
pub(crate) fn lower(cx: &mut NodeCx, f: &FusedOp) -> Result<Kernels, BackendError> {
    let types = checked_types(cx, f, has_kernel)?;
    lower_mha(cx, f, &types)
}

/// Multi-head attention: the optional Q/K/V projections, then the core.
fn lower_mha(cx: &mut NodeCx, f: &FusedOp, types: &[TensorType]) -> Result<Kernels, BackendError> {
    let FusedOp::Mha {
        scale,
        proj_q,
        proj_k,
        proj_v,
        ..
    } = *f
    else {
        return Err(cx.unsupported(format!("{} is not fused_mha", f.name())));
    };
    let out = cx.outs[0].0;
    let mut ks: Kernels = Vec::new();
    let a = mha_of(f, types).ok_or_else(|| cx.unsupported("attention shape"))?;
    let s = mha_scratch(&a);
    let rows = [a.tq, a.tk, a.tk];
    let dout = [a.d, a.d, a.dvo];
    let l = kiln_ir::fused::mha::operands(proj_q, proj_k, proj_v);
    let inputs = [l.xq, l.xk, l.xv];
    let mut qkv = inputs.map(|i| cx.ins[i].buf);
    for (side, proj) in [l.q, l.k, l.v].into_iter().enumerate() {
        if let Some((w, bias)) = proj {
            let dst = part(cx, &s, side)?;
            let x = operand(cx, inputs[side]);
            let shape = vec![a.b, rows[side], dout[side]];
            ks.extend(project(cx, x, w, bias, (dst, shape), Epilogue::NONE)?);
            qkv[side] = dst;
        }
    }
    ks.push(Box::new(MhaKernel {
        a,
        scale: scale.0,
        qkv,
        srow: part(cx, &s, 3)?,
        out,
    }));
    Ok(ks)
}
