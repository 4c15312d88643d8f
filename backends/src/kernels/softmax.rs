//! Softmax along one axis: `exp(x - max) / Σ exp(x - max)`.
//!
//! A unit is one index of the axes before the softmax axis (a row), except
//! for short contiguous rows, where it is a block of [`BLOCK`] rows.
//!
//! - **Short contiguous rows** (length ≤ [`SHORT`]; Mobile-Former's pixels
//!   attending over 3–6 tokens, thousands of rows): one row per lane.
//!   Element `j` of a block of rows is gathered into a vector, the row
//!   length is unrolled, and max, `exp`, sum and the reciprocal are each
//!   one vector operation per element column; the results are scattered
//!   back. A per-row loop spent its time in scalar `exp` and loop overhead.
//!   On AVX-512 (AVX2) hosts a block is 16 (8) rows, and one call per chunk of units
//!   runs an assembled loop over them (`vector::assemble_softmax_lanes`:
//!   a register transpose by masked `vpermps`); otherwise 4 rows in f32x4
//!   (scalar loads and lane inserts), a loop over units. A final partial
//!   block computes its missing lanes on zeros without touching memory, so
//!   every row goes through the same code whatever the thread split.
//! - **Longer contiguous rows**: on AVX-512 or AVX2 hosts one call per row
//!   to the assembled row softmax (`ukernels/vector.rs, `assemble_softmax_row``: 16
//!   or 8 lanes);
//!   otherwise a vector max, a vector pass computing and summing the
//!   exponentials, and a vector scale.
//! - **Strided rows** (axis not innermost): the same three passes along the
//!   axis with f32x4 lanes across the trailing (contiguous) axes.

use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{InstBuilder, MemFlagsData, Type, Value};
use kiln_ir::Op;

use super::rows::{Fold, map_run, reduce_run};
use super::{Kernel, Kernels, NodeCx};
use crate::codegen::math::exp;
use crate::codegen::{Buf, Emitter, F32, V4};
use crate::error::BackendError;
use crate::ukernels::Spec;
use crate::ukernels::vector;

/// Rows per unit of the Cranelift short-row form: one per f32x4 lane.
const BLOCK: usize = 4;

/// The longest contiguous row that takes the short-row form.
const SHORT: usize = vector::LANES_MAX_LEN;

struct Softmax {
    x: Buf,
    out: Buf,
    outer: usize,
    len: usize,
    inner: usize,
    /// the assembled row softmax (long rows) or short-row softmax, by its
    /// number in the `Registry`, and its width (a short-row block is one
    /// row per lane)
    asm: Option<(usize, vector::Width)>,
}

impl Softmax {
    /// Whether rows are contiguous and short enough for lanes across rows.
    fn short(&self) -> bool {
        self.inner == 1 && self.len <= SHORT
    }

    /// Rows per unit.
    fn rows_per_unit(&self) -> usize {
        match (self.short(), self.asm) {
            (false, _) => 1,
            (true, None) => BLOCK,
            (true, Some((_, w))) => w.lanes(),
        }
    }

    /// Softmax of rows `0..rows` (`rows ≤ BLOCK`) of the block at `xb`,
    /// writing at `ob`: lane `r` holds row `r`, missing rows are zeros.
    fn block(&self, e: &mut Emitter, xb: Value, ob: Value, rows: usize, rf: MemFlagsData) {
        let len = self.len;
        let zero = e.kc(V4, 0.0);
        let cols: Vec<Value> = (0..len)
            .map(|j| {
                let mut v = zero;
                for r in 0..rows {
                    let s = e.load(F32, rf, xb, 4 * (r * len + j) as i64);
                    v = e.b.ins().insertlane(v, s, r as u8);
                }
                v
            })
            .collect();
        let m = cols[1..].iter().fold(cols[0], |a, &c| e.b.ins().fmax(a, c));
        let ys: Vec<Value> = cols
            .iter()
            .map(|&c| {
                let d = e.b.ins().fsub(c, m);
                exp(e, V4, d)
            })
            .collect();
        let s = ys[1..].iter().fold(ys[0], |a, &y| e.b.ins().fadd(a, y));
        let one = e.kc(V4, 1.0);
        let inv = e.b.ins().fdiv(one, s);
        let wf = Emitter::wflags();
        for (j, &y) in ys.iter().enumerate() {
            let z = e.b.ins().fmul(y, inv);
            for r in 0..rows {
                let l = e.b.ins().extractlane(z, r as u8);
                e.store(wf, l, ob, 4 * (r * len + j) as i64);
            }
        }
    }
}

impl Kernel for Softmax {
    fn describe(&self) -> String {
        format!(
            "softmax over {} (outer {}, inner {}){}",
            self.len,
            self.outer,
            self.inner,
            match (self.short(), self.asm) {
                (true, Some((_, w))) => format!(" rows in lanes, {}", w.name()),
                (true, None) => " rows in lanes".into(),
                (false, Some((_, w))) => format!(" {}", w.name()),
                (false, None) => String::new(),
            }
        )
    }

    fn units(&self) -> usize {
        if self.len == 0 || self.inner == 0 {
            0
        } else {
            self.outer.div_ceil(self.rows_per_unit())
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
        // fn(src, dst, n) of the assembled forms (vector)
        let asm = self.asm.map(|(id, _)| {
            let sig = e.b.import_signature(vector::row_signature());
            (sig, id)
        });
        if self.short() {
            let per = self.rows_per_unit();
            let blk = row * per as i64;
            if let Some((sig, id)) = asm {
                // one call per chunk: rows [per·begin, min(per·end, outer))
                let first = e.b.ins().imul_imm_s(begin, per as i64);
                let last = e.b.ins().imul_imm_s(end, per as i64);
                let outer = e.ic(self.outer as i64);
                let last = e.imin(last, outer);
                let n = e.b.ins().isub(last, first);
                let some = e.b.ins().icmp_imm_s(IntCC::SignedGreaterThan, n, 0);
                e.if_then(some, |e| {
                    let xb = e.index(x, begin, blk);
                    let ob = e.index(out, begin, blk);
                    let f = e.asm_fn(id);
                    e.b.ins().call_indirect(sig, f, &[xb, ob, n]);
                });
                return;
            }
            let rows = |e: &mut Emitter, u: Value, n: usize| {
                let xb = e.index(x, u, blk);
                let ob = e.index(out, u, blk);
                self.block(e, xb, ob, n, rf);
            };
            let full = self.outer / per;
            let full_v = e.ic(full as i64);
            let hi = e.imin(end, full_v);
            e.for_range(begin, hi, 1, |e, u| rows(e, u, per));
            let rest = self.outer % per;
            if rest > 0 {
                // the last unit, when it is in [begin, end): a zero- or
                // one-trip loop
                e.sub_range(begin, end, full, full + 1, |e, u| rows(e, u, rest));
            }
            return;
        }
        if let Some((sig, id)) = asm {
            // one call per row
            e.for_range(begin, end, 1, |e, u| {
                let xb = e.index(x, u, row);
                let ob = e.index(out, u, row);
                let f = e.asm_fn(id);
                let n = e.ic(len as i64);
                e.b.ins().call_indirect(sig, f, &[xb, ob, n]);
            });
            return;
        }
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
    let mut k = Softmax {
        x: cx.ins[0].buf,
        out: cx.outs[0].0,
        outer: shape[..axis].iter().product(),
        len: shape[axis],
        inner: shape[axis + 1..].iter().product(),
        asm: None,
    };
    if let Some((store, w)) = cx.asm_width()
        && k.inner == 1
        && k.len > 0
    {
        let id = if k.short() {
            let len = k.len;
            store.request(Spec::SoftmaxLanes { len, width: w })
        } else {
            store.request(Spec::SoftmaxRow(w))
        };
        k.asm = Some((id.map_err(BackendError::Jit)?, w));
    }
    Ok(vec![Box::new(k)])
}
