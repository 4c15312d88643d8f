//! Reductions (sum, mean, max over any set of axes) and global average
//! pooling.
//!
//! Axes of size 1 are dropped and neighbouring axes of the same kind
//! (reduced or kept) merged. If the innermost axis is reduced, a unit is one
//! output element, reduced with a vectorised sweep of each contiguous run;
//! if it is kept, a unit is one row of outputs along it, and f32x4 lanes
//! compute four neighbouring outputs at once.

use cranelift_codegen::ir::{InstBuilder, Type, Value};
use kiln_ir::{Op, ReduceKind};

use super::nest::contiguous;
use super::rows::{Fold, reduce_run};
use super::{Kernel, Kernels, NodeCx};
use crate::codegen::{Buf, Emitter, F32, V4};
use crate::error::BackendError;

struct Reduce {
    x: Buf,
    out: Buf,
    kind: ReduceKind,
    /// kept dims, outermost first: (size, input stride)
    kept: Vec<(usize, i64)>,
    /// reduced dims, outermost first: (size, input stride)
    red: Vec<(usize, i64)>,
    /// number of reduced elements per output
    count: usize,
}

fn fold_of(k: ReduceKind) -> Fold {
    match k {
        ReduceKind::Max => Fold::Max,
        _ => Fold::Add,
    }
}

/// Nested static loops over `dims` (size, stride in elements) calling
/// `body` with the address of each combination.
fn loops(
    e: &mut Emitter,
    dims: &[(usize, i64)],
    base: Value,
    body: &mut dyn FnMut(&mut Emitter, Value),
) {
    match dims.split_first() {
        None => body(e, base),
        Some((&(n, s), rest)) => e.for_static(0, n as i64, 1, |e, i| {
            let p = e.index(base, i, 4 * s);
            loops(e, rest, p, body);
        }),
    }
}

impl Reduce {
    fn inner_reduced(&self) -> bool {
        self.red.last().is_some_and(|&(_, s)| s == 1)
            && self.kept.last().is_none_or(|&(_, s)| s != 1)
    }

    fn out_numel(&self) -> usize {
        self.kept.iter().map(|d| d.0).product()
    }

    /// Scales a finished accumulator for the mean.
    fn finish(&self, e: &mut Emitter, ty: Type, acc: Value) -> Value {
        if self.kind == ReduceKind::Mean {
            let n = e.kc(ty, self.count.max(1) as f32);
            e.b.ins().fdiv(acc, n)
        } else {
            acc
        }
    }

    fn fold(&self, e: &mut Emitter, a: Value, b: Value) -> Value {
        match self.kind {
            ReduceKind::Max => e.b.ins().fmax(a, b),
            _ => e.b.ins().fadd(a, b),
        }
    }

    fn identity(&self) -> f32 {
        match self.kind {
            ReduceKind::Max => f32::NEG_INFINITY,
            _ => 0.0,
        }
    }
}

impl Kernel for Reduce {
    fn describe(&self) -> String {
        format!(
            "reduce {:?}: kept {:?}, reduced {:?}",
            self.kind, self.kept, self.red
        )
    }

    fn units(&self) -> usize {
        let outs = self.out_numel();
        if outs == 0 {
            0
        } else if self.inner_reduced() {
            outs
        } else {
            outs / self.kept.last().map_or(1, |d| d.0.max(1))
        }
    }

    fn cost(&self) -> f64 {
        (self.out_numel() * self.count.max(1)) as f64
    }

    fn emit(&self, e: &mut Emitter, begin: Value, end: Value) {
        let x = e.base(self.x);
        let out = e.base(self.out);
        let rf = Emitter::rflags(self.x);
        let wf = Emitter::wflags();
        let inner_reduced = self.inner_reduced();
        // the dims a unit index runs over
        let unit_dims: Vec<(usize, i64)> = if inner_reduced || self.kept.is_empty() {
            self.kept.clone()
        } else {
            self.kept[..self.kept.len() - 1].to_vec()
        };
        let row = if inner_reduced {
            1
        } else {
            self.kept.last().map_or(1, |d| d.0)
        };
        e.for_range(begin, end, 1, |e, u| {
            // input offset of the unit: decompose u over unit_dims
            let mut base = x;
            let mut rem = u;
            for (d, &(n, s)) in unit_dims.iter().enumerate().rev() {
                let idx = if d == 0 {
                    rem
                } else {
                    let i = e.b.ins().urem_imm_u(rem, n as i64);
                    rem = e.b.ins().udiv_imm_u(rem, n as i64);
                    i
                };
                base = e.index(base, idx, 4 * s);
            }
            let ob = e.index(out, u, 4 * row as i64);
            if inner_reduced {
                let (&(len, _), outer) = match self.red.split_last() {
                    Some(x) => x,
                    None => return,
                };
                let id = e.fc(self.identity());
                let acc = e.var(F32, id);
                let kind = self.kind;
                loops(e, outer, base, &mut |e, p| {
                    let r = reduce_run(e, fold_of(kind), p, len, 1, rf, None);
                    let a = e.b.use_var(acc);
                    let y = self.fold(e, a, r);
                    e.b.def_var(acc, y);
                });
                let a = e.b.use_var(acc);
                let y = self.finish(e, F32, a);
                e.store(wf, y, ob, 0);
            } else {
                let lane = |e: &mut Emitter, ty: Type, off: Value| {
                    let id = e.kc(ty, self.identity());
                    let acc = e.var(ty, id);
                    let start = e.b.ins().iadd(base, off);
                    loops(e, &self.red, start, &mut |e, p| {
                        let v = e.load(ty, rf, p, 0);
                        let a = e.b.use_var(acc);
                        let y = self.fold(e, a, v);
                        e.b.def_var(acc, y);
                    });
                    let a = e.b.use_var(acc);
                    let y = self.finish(e, ty, a);
                    let q = e.b.ins().iadd(ob, off);
                    e.store(wf, y, q, 0);
                };
                e.for_static(0, 16 * (row / 4) as i64, 16, |e, off| lane(e, V4, off));
                for c in 4 * (row / 4)..row {
                    let off = e.ic(4 * c as i64);
                    lane(e, F32, off);
                }
            }
        });
    }
}

/// Lowers reduce and global_avg_pool nodes.
pub(crate) fn lower(cx: &mut NodeCx) -> Result<Kernels, BackendError> {
    let shape = cx.ins[0].ty.shape.clone();
    let (kind, axes): (ReduceKind, Vec<usize>) = match cx.op {
        Op::Reduce { kind, axes, .. } => (*kind, axes.clone()),
        Op::GlobalAvgPool => (ReduceKind::Mean, (2..shape.len()).collect()),
        _ => return Err(cx.unsupported("not a reduction")),
    };
    let strides = contiguous(&shape);
    let count: usize = axes.iter().map(|&a| shape[a]).product();
    // (size, stride, reduced), size-1 dims dropped, same-kind neighbours merged
    let mut dims: Vec<(usize, i64, bool)> = Vec::new();
    for (d, &n) in shape.iter().enumerate() {
        if n == 1 {
            continue;
        }
        let r = axes.contains(&d);
        match dims.last_mut() {
            Some(last) if last.2 == r && last.1 == strides[d] * n as i64 => {
                last.0 *= n;
                last.1 = strides[d];
            }
            _ => dims.push((n, strides[d], r)),
        }
    }
    let kept = dims.iter().filter(|d| !d.2).map(|d| (d.0, d.1)).collect();
    let red = dims.iter().filter(|d| d.2).map(|d| (d.0, d.1)).collect();
    Ok(vec![Box::new(Reduce {
        x: cx.ins[0].buf,
        out: cx.outs[0].0,
        kind,
        kept,
        red,
        count,
    })])
}
