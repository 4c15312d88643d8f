//! Normalisations: layer norm (over trailing axes), group norm (per sample
//! and channel group) and inference batch norm (per channel).
//!
//! Statistics are two-pass (mean, then the mean of squared deviations):
//! stabler than `E[x²] - E[x]²` in f32, and each pass is one vectorised
//! sweep over a contiguous run. The output is `(x - mean)·(rstd·gamma) + beta`.

use cranelift_codegen::ir::{InstBuilder, MemFlagsData, Type, Value};
use kiln_ir::Op;

use super::rows::{Fold, map_run, reduce_run};
use super::{Kernel, Kernels, NodeCx};
use crate::codegen::{Buf, Emitter, F32, V4};
use crate::error::BackendError;

#[derive(Clone, Copy, Debug)]
enum Kind {
    /// rows of `len` elements, per-element gamma/beta
    Layer,
    /// `groups` groups of `len / spatial` channels, per-channel gamma/beta
    Group { channels: usize, groups: usize },
    /// per (sample, channel) plane; gamma, beta, mean, var per channel
    Batch { channels: usize },
}

struct Norm {
    kind: Kind,
    x: Buf,
    params: Vec<Buf>,
    out: Buf,
    /// elements per unit
    len: usize,
    units: usize,
    /// elements per channel (group and batch norm)
    spatial: usize,
    eps: f32,
}

/// Mean and `1/sqrt(var + eps)` of a contiguous run.
fn stats(e: &mut Emitter, p: Value, len: usize, rf: MemFlagsData, eps: f32) -> (Value, Value) {
    let n = e.fc(len.max(1) as f32);
    let s = reduce_run(e, Fold::Add, p, len, 1, rf, None);
    let mean = e.b.ins().fdiv(s, n);
    let mv = e.b.ins().splat(V4, mean);
    let sq = |e: &mut Emitter, ty: Type, x: Value| {
        let d = e.b.ins().fsub(x, if ty == V4 { mv } else { mean });
        e.b.ins().fmul(d, d)
    };
    let v = reduce_run(e, Fold::Add, p, len, 1, rf, Some(&sq));
    let var = e.b.ins().fdiv(v, n);
    let epsv = e.fc(eps);
    let ve = e.b.ins().fadd(var, epsv);
    let sd = e.b.ins().sqrt(ve);
    let one = e.fc(1.0);
    (mean, e.b.ins().fdiv(one, sd))
}

/// Scalar parameters of [`affine`]: `(x - mean)·scale + shift`.
#[derive(Clone, Copy)]
struct Affine {
    mean: Value,
    scale: Value,
    shift: Value,
}

/// `dst = (src - mean)·scale + shift` over a run.
fn affine(e: &mut Emitter, dst: Value, src: Value, len: usize, rf: MemFlagsData, a: Affine) {
    let scalars = [a.mean, a.scale, a.shift];
    let vs = scalars.map(|s| e.b.ins().splat(V4, s));
    let f = |e: &mut Emitter, ty: Type, x: Value| {
        let [m, s, t] = if ty == V4 { vs } else { scalars };
        let d = e.b.ins().fsub(x, m);
        e.mul_add(d, s, t)
    };
    map_run(e, dst, src, len, rf, &f, false);
}

impl Kernel for Norm {
    fn describe(&self) -> String {
        format!(
            "{:?} norm over {} elements x {} units",
            self.kind, self.len, self.units
        )
    }

    fn units(&self) -> usize {
        if self.len == 0 { 0 } else { self.units }
    }

    fn cost(&self) -> f64 {
        4.0 * (self.len * self.units) as f64
    }

    fn emit(&self, e: &mut Emitter, begin: Value, end: Value) {
        let x = e.base(self.x);
        let out = e.base(self.out);
        let params: Vec<(Value, MemFlagsData)> = self
            .params
            .iter()
            .map(|&b| (e.base(b), Emitter::rflags(b)))
            .collect();
        let rf = Emitter::rflags(self.x);
        let wf = Emitter::wflags();
        let (len, eps, spatial) = (self.len, self.eps, self.spatial);
        e.for_range(begin, end, 1, |e, u| {
            let xb = e.index(x, u, 4 * len as i64);
            let ob = e.index(out, u, 4 * len as i64);
            match self.kind {
                Kind::Layer => {
                    let (mean, rstd) = stats(e, xb, len, rf, eps);
                    let mv = e.b.ins().splat(V4, mean);
                    let rv = e.b.ins().splat(V4, rstd);
                    let zero = e.fc(0.0);
                    let (gp, gf) = params[0];
                    let beta = params.get(1).copied();
                    let one = |e: &mut Emitter, ty: Type, off: Value| {
                        let (m, r) = if ty == V4 { (mv, rv) } else { (mean, rstd) };
                        let p = e.b.ins().iadd(xb, off);
                        let v = e.load(ty, rf, p, 0);
                        let d = e.b.ins().fsub(v, m);
                        let d = e.b.ins().fmul(d, r);
                        let p = e.b.ins().iadd(gp, off);
                        let g = e.load(ty, gf, p, 0);
                        let b = match beta {
                            Some((bp, bf)) => {
                                let p = e.b.ins().iadd(bp, off);
                                e.load(ty, bf, p, 0)
                            }
                            None => e.widen(ty, zero),
                        };
                        let y = e.mul_add(d, g, b);
                        let p = e.b.ins().iadd(ob, off);
                        e.store(wf, y, p, 0);
                    };
                    let n4 = len / 4;
                    e.for_static(0, 16 * n4 as i64, 16, |e, off| one(e, V4, off));
                    for j in 4 * n4..len {
                        let off = e.ic(4 * j as i64);
                        one(e, F32, off);
                    }
                }
                Kind::Group { channels, groups } => {
                    let cpg = channels / groups;
                    let (mean, rstd) = stats(e, xb, len, rf, eps);
                    // channel index of the group's first channel
                    let g = e.b.ins().urem_imm_u(u, groups as i64);
                    let c0 = e.b.ins().imul_imm_s(g, cpg as i64);
                    let (gp, gf) = params[0];
                    let (bp, bf) = params[1];
                    let gp = e.index(gp, c0, 4);
                    let bp = e.index(bp, c0, 4);
                    e.for_static(0, cpg as i64, 1, |e, c| {
                        let gpc = e.index(gp, c, 4);
                        let gamma = e.load(F32, gf, gpc, 0);
                        let bpc = e.index(bp, c, 4);
                        let beta = e.load(F32, bf, bpc, 0);
                        let scale = e.b.ins().fmul(rstd, gamma);
                        let src = e.index(xb, c, 4 * spatial as i64);
                        let dst = e.index(ob, c, 4 * spatial as i64);
                        affine(
                            e,
                            dst,
                            src,
                            spatial,
                            rf,
                            Affine {
                                mean,
                                scale,
                                shift: beta,
                            },
                        );
                    });
                }
                Kind::Batch { channels } => {
                    let c = e.b.ins().urem_imm_u(u, channels as i64);
                    let p: Vec<Value> = params
                        .iter()
                        .map(|&(b, f)| {
                            let q = e.index(b, c, 4);
                            e.load(F32, f, q, 0)
                        })
                        .collect();
                    let (gamma, beta, mean, var) = (p[0], p[1], p[2], p[3]);
                    let epsv = e.fc(eps);
                    let ve = e.b.ins().fadd(var, epsv);
                    let sd = e.b.ins().sqrt(ve);
                    let scale = e.b.ins().fdiv(gamma, sd);
                    affine(
                        e,
                        ob,
                        xb,
                        len,
                        rf,
                        Affine {
                            mean,
                            scale,
                            shift: beta,
                        },
                    );
                }
            }
        });
    }
}

/// A layer norm of `units` rows of `len` elements of `x` into `out`, with
/// per-element `gamma` and `beta` (`params`). `out` may be `x` (pass it as
/// an output buffer then): each element is read before it is written.
pub(crate) fn layer_norm(
    x: Buf,
    params: [Buf; 2],
    out: Buf,
    len: usize,
    units: usize,
    eps: f32,
) -> Box<dyn Kernel> {
    Box::new(Norm {
        kind: Kind::Layer,
        x,
        params: params.to_vec(),
        out,
        len,
        units,
        spatial: len,
        eps,
    })
}

/// Lowers layer, group and batch norm nodes.
pub(crate) fn lower(cx: &mut NodeCx) -> Result<Kernels, BackendError> {
    let shape = cx.ins[0].ty.shape.clone();
    let numel: usize = shape.iter().product();
    let params: Vec<Buf> = cx.ins[1..].iter().map(|o| o.buf).collect();
    let (kind, len, eps) = match *cx.op {
        Op::LayerNorm { axis, eps } => (Kind::Layer, shape[axis..].iter().product(), eps.0),
        Op::GroupNorm { groups, eps } => (
            Kind::Group {
                channels: shape[1],
                groups,
            },
            shape[1..].iter().product::<usize>() / groups.max(1),
            eps.0,
        ),
        Op::BatchNorm { eps } => (
            Kind::Batch { channels: shape[1] },
            shape[2..].iter().product(),
            eps.0,
        ),
        _ => return Err(cx.unsupported("not a normalisation")),
    };
    let spatial = shape[2.min(shape.len())..].iter().product();
    Ok(vec![Box::new(Norm {
        kind,
        x: cx.ins[0].buf,
        params,
        out: cx.outs[0].0,
        len,
        units: numel.checked_div(len).unwrap_or(0),
        spatial,
        eps,
    })])
}
