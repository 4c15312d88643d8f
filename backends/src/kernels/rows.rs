//! Vectorised passes over one contiguous run of `f32`s of static length,
//! shared by softmax, the normalisations and reductions: a sum or maximum
//! of `f(x)`, and a map `dst = f(src)` that can also return `Σ dst`.
//!
//! Sums use two f32x4 accumulators (8 elements per iteration, for
//! instruction-level parallelism and a little less rounding error), combined
//! in a fixed order, so a run's result never depends on where it started.

use cranelift_codegen::ir::{InstBuilder, MemFlagsData, Type, Value};
use cranelift_frontend::Variable;

use crate::codegen::{Emitter, F32, V4};

/// A per-element function emitted for a lane type.
pub(crate) type Map<'a> = &'a dyn Fn(&mut Emitter, Type, Value) -> Value;

/// How to combine: `+` or `max`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Fold {
    /// sum
    Add,
    /// maximum (NaN-propagating)
    Max,
}

fn fold(e: &mut Emitter, k: Fold, a: Value, b: Value) -> Value {
    match k {
        Fold::Add => e.b.ins().fadd(a, b),
        Fold::Max => e.b.ins().fmax(a, b),
    }
}

fn identity(k: Fold) -> f32 {
    match k {
        Fold::Add => 0.0,
        Fold::Max => f32::NEG_INFINITY,
    }
}

/// `fold over i < len of f(src[i·4 bytes])`; `stride` in elements (1 =
/// contiguous, vectorised; otherwise scalar).
pub(crate) fn reduce_run(
    e: &mut Emitter,
    k: Fold,
    src: Value,
    len: usize,
    stride: i64,
    rf: MemFlagsData,
    f: Option<Map>,
) -> Value {
    let apply = |e: &mut Emitter, ty: Type, x: Value| match f {
        Some(f) => f(e, ty, x),
        None => x,
    };
    let id_s = e.fc(identity(k));
    if stride != 1 {
        let acc = e.var(F32, id_s);
        e.for_static(0, len as i64, 1, |e, i| {
            let p = e.index(src, i, 4 * stride);
            let x = e.load(F32, rf, p, 0);
            let y = apply(e, F32, x);
            let a = e.b.use_var(acc);
            let r = fold(e, k, a, y);
            e.b.def_var(acc, r);
        });
        return e.b.use_var(acc);
    }
    // four independent chains: one f32x4 add per 3-4 cycles of latency
    // would otherwise bound a long run well below cache bandwidth
    let id_v = e.kc(V4, identity(k));
    let accs: [Variable; 4] = std::array::from_fn(|_| e.var(V4, id_v));
    let n16 = len / 16;
    e.for_static(0, 64 * n16 as i64, 64, |e, i| {
        let p = e.b.ins().iadd(src, i);
        for (o, &acc) in accs.iter().enumerate() {
            let x = e.load(V4, rf, p, 16 * o as i64);
            let y = apply(e, V4, x);
            let a = e.b.use_var(acc);
            let r = fold(e, k, a, y);
            e.b.def_var(acc, r);
        }
    });
    let mut done = 16 * n16;
    for &acc in &accs[..(len - done) / 4] {
        let x = e.load(V4, rf, src, 4 * done as i64);
        let y = apply(e, V4, x);
        let a = e.b.use_var(acc);
        let r = fold(e, k, a, y);
        e.b.def_var(acc, r);
        done += 4;
    }
    let [v0, v1, v2, v3] = accs.map(|a| e.b.use_var(a));
    let v01 = fold(e, k, v0, v1);
    let v23 = fold(e, k, v2, v3);
    let v = fold(e, k, v01, v23);
    let mut s = match k {
        Fold::Add => e.hsum(v),
        Fold::Max => e.hmax(v),
    };
    for j in done..len {
        let x = e.load(F32, rf, src, 4 * j as i64);
        let y = apply(e, F32, x);
        s = fold(e, k, s, y);
    }
    s
}

/// `dst[i] = f(src[i])` over a contiguous run; returns `Σ dst[i]` when `sum`.
pub(crate) fn map_run(
    e: &mut Emitter,
    dst: Value,
    src: Value,
    len: usize,
    rf: MemFlagsData,
    f: Map,
    sum: bool,
) -> Option<Value> {
    let wf = Emitter::wflags();
    let zero = e.kc(V4, 0.0);
    let acc = e.var(V4, zero);
    let n4 = len / 4;
    e.for_static(0, 16 * n4 as i64, 16, |e, i| {
        let p = e.b.ins().iadd(src, i);
        let x = e.load(V4, rf, p, 0);
        let y = f(e, V4, x);
        let q = e.b.ins().iadd(dst, i);
        e.store(wf, y, q, 0);
        if sum {
            let a = e.b.use_var(acc);
            let r = e.b.ins().fadd(a, y);
            e.b.def_var(acc, r);
        }
    });
    let v = e.b.use_var(acc);
    let mut s = sum.then(|| e.hsum(v));
    for j in 4 * n4..len {
        let x = e.load(F32, rf, src, 4 * j as i64);
        let y = f(e, F32, x);
        e.store(wf, y, dst, 4 * j as i64);
        if let Some(t) = s {
            s = Some(e.b.ins().fadd(t, y));
        }
    }
    s
}
