//! Softmax along one axis: `exp(x - max) / Σ exp(x - max)`.
//!
//! A unit is one index of the axes before the softmax axis. When the axis
//! is innermost a row is contiguous: a vector max, a vector pass computing
//! and summing the exponentials, and a vector scale. Otherwise the same
//! three passes run along the axis with f32x4 lanes across the trailing
//! (contiguous) axes.

use cranelift_codegen::ir::{InstBuilder, Type, Value};
use kiln_ir::Op;

use super::rows::{Fold, map_run, reduce_run};
use super::{Kernel, Kernels, NodeCx};
use crate::codegen::math::exp;
use crate::codegen::{Buf, Emitter, F32, V4};
use crate::error::BackendError;

struct Softmax {
    x: Buf,
    out: Buf,
    outer: usize,
    len: usize,
    inner: usize,
}

impl Kernel for Softmax {
    fn describe(&self) -> String {
        format!(
            "softmax over {} (outer {}, inner {})",
            self.len, self.outer, self.inner
        )
    }

    fn units(&self) -> usize {
        if self.len == 0 || self.inner == 0 {
            0
        } else {
            self.outer
        }
    }

    fn cost(&self) -> f64 {
        25.0 * (self.outer * self.len * self.inner) as f64
    }

    fn emit(&self, e: &mut Emitter, begin: Value, end: Value) {
        let x = e.base(self.x);
        let out = e.base(self.out);
        let rf = Emitter::rflags(self.x);
        let of = Emitter::rflags(self.out);
        let wf = Emitter::wflags();
        let (len, inner) = (self.len, self.inner);
        let row = 4 * (len * inner) as i64;
        e.for_range(begin, end, 1, |e, u| {
            let xb = e.index(x, u, row);
            let ob = e.index(out, u, row);
            if inner == 1 {
                let m = reduce_run(e, Fold::Max, xb, len, 1, rf, None);
                let mv = e.b.ins().splat(V4, m);
                let sub_exp = |e: &mut Emitter, ty: Type, v: Value| {
                    let d = e.b.ins().fsub(v, if ty == V4 { mv } else { m });
                    exp(e, ty, d)
                };
                let s = map_run(e, ob, xb, len, rf, &sub_exp, true).unwrap_or(m);
                let one = e.fc(1.0);
                let inv = e.b.ins().fdiv(one, s);
                let iv = e.b.ins().splat(V4, inv);
                let scale = |e: &mut Emitter, ty: Type, v: Value| {
                    e.b.ins().fmul(v, if ty == V4 { iv } else { inv })
                };
                map_run(e, ob, ob, len, of, &scale, false);
                return;
            }
            // lanes across the trailing axes: a loop over groups of 4, then
            // the remaining single lanes
            let step = 4 * inner as i64;
            let group = |e: &mut Emitter, xc: Value, oc: Value, ty: Type| {
                let ninf = e.kc(ty, f32::NEG_INFINITY);
                let m = e.var(ty, ninf);
                e.for_static(0, len as i64, 1, |e, t| {
                    let p = e.index(xc, t, step);
                    let v = e.load(ty, rf, p, 0);
                    let a = e.b.use_var(m);
                    let r = e.b.ins().fmax(a, v);
                    e.b.def_var(m, r);
                });
                let mval = e.b.use_var(m);
                let zero = e.kc(ty, 0.0);
                let s = e.var(ty, zero);
                e.for_static(0, len as i64, 1, |e, t| {
                    let p = e.index(xc, t, step);
                    let v = e.load(ty, rf, p, 0);
                    let d = e.b.ins().fsub(v, mval);
                    let y = exp(e, ty, d);
                    let q = e.index(oc, t, step);
                    e.store(wf, y, q, 0);
                    let a = e.b.use_var(s);
                    let r = e.b.ins().fadd(a, y);
                    e.b.def_var(s, r);
                });
                let sval = e.b.use_var(s);
                let one = e.kc(ty, 1.0);
                let inv = e.b.ins().fdiv(one, sval);
                e.for_static(0, len as i64, 1, |e, t| {
                    let q = e.index(oc, t, step);
                    let v = e.load(ty, of, q, 0);
                    let y = e.b.ins().fmul(v, inv);
                    e.store(wf, y, q, 0);
                });
            };
            e.for_static(0, 16 * (inner / 4) as i64, 16, |e, c| {
                let xc = e.b.ins().iadd(xb, c);
                let oc = e.b.ins().iadd(ob, c);
                group(e, xc, oc, V4);
            });
            for c in 4 * (inner / 4)..inner {
                let xc = e.off(xb, 4 * c as i64);
                let oc = e.off(ob, 4 * c as i64);
                group(e, xc, oc, F32);
            }
        });
    }
}

/// Lowers a softmax node.
pub(crate) fn lower(cx: &mut NodeCx) -> Result<Kernels, BackendError> {
    let Op::Softmax { axis } = *cx.op else {
        return Err(cx.unsupported("not a softmax"));
    };
    let shape = &cx.ins[0].ty.shape;
    Ok(vec![Box::new(Softmax {
        x: cx.ins[0].buf,
        out: cx.outs[0].0,
        outer: shape[..axis].iter().product(),
        len: shape[axis],
        inner: shape[axis + 1..].iter().product(),
    })])
}
