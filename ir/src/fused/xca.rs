//! `fused_xca`: XFormer-R's cross-feature attention before its output
//! projection (see [`FusedOp::Xca`]).

use super::{Emitter, FusedOp, bin, l2_normalize, linear, reshape, transpose, want};
use crate::error::IrError;
use crate::op::{Attr, AttrReader, BinaryOp, Float, Op};

/// The text-format name.
pub const NAME: &str = "fused_xca";

/// Where the operands are: `x, wq, bq, wk, bk, wv, bv, tau`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Operands {
    /// the tokens `[N,T,D]`
    pub x: usize,
    /// `(w, b)` of the q, k and v projections
    pub q: (usize, usize),
    /// see `q`
    pub k: (usize, usize),
    /// see `q`
    pub v: (usize, usize),
    /// the per-head temperature `[h]`
    pub tau: usize,
    /// how many operands in all
    pub count: usize,
}

/// The operand layout (fixed).
pub const OPERANDS: Operands = Operands {
    x: 0,
    q: (1, 2),
    k: (3, 4),
    v: (5, 6),
    tau: 7,
    count: 8,
};

fn fields(op: &FusedOp) -> (usize, f32) {
    let FusedOp::Xca { heads, eps } = *op else {
        unreachable!("xca:: of {}", op.name())
    };
    (heads, eps.0)
}

/// The attributes, in canonical order.
pub(super) fn attrs(op: &FusedOp) -> Vec<(&'static str, Attr)> {
    let (heads, eps) = fields(op);
    vec![
        ("heads", Attr::Int(heads as i64)),
        ("eps", Attr::Float(eps)),
    ]
}

/// Reads the attributes.
pub(super) fn read(a: &mut AttrReader<'_>) -> Result<FusedOp, String> {
    Ok(FusedOp::Xca {
        heads: a.usize("heads")?,
        eps: Float(a.float("eps")?),
    })
}

/// The primitive composition.
pub(super) fn expand<E: Emitter>(op: &FusedOp, e: &mut E, args: &[E::V]) -> Result<E::V, IrError> {
    let (h, eps) = fields(op);
    let l = OPERANDS;
    let x = &args[l.x];
    let xt = e.ty(x);
    want(xt.rank() == 3 && xt.shape[2] % h == 0, || {
        format!("x must be [N,T,D] with D divisible by {h} heads, got {xt}")
    })?;
    let (n, t, d) = (xt.shape[0], xt.shape[1], xt.shape[2]);
    let tau = args[l.tau].clone();
    let tt = e.ty(&tau);
    want(tt.shape == [h], || {
        format!("tau must be f32[{h}], got {tt}")
    })?;
    // [N,T,D] -> [N,h,dh,T]: one row per feature, tokens along the row
    let feature_rows = |e: &mut E, (w, b): (usize, usize)| {
        let y = linear(e, x, &args[w], Some(&args[b]))?;
        let y = reshape(e, y, &[n, t, h, d / h])?;
        transpose(e, y, &[0, 2, 3, 1])
    };
    let q = feature_rows(e, l.q)?;
    let k = feature_rows(e, l.k)?;
    let v = feature_rows(e, l.v)?;
    let q = l2_normalize(e, q, eps)?;
    let k = l2_normalize(e, k, eps)?;
    let kt = transpose(e, k, &[0, 1, 3, 2])?;
    let a = e.op(Op::MatMul, &[q, kt])?;
    let tau = reshape(e, tau, &[1, h, 1, 1])?;
    let a = bin(e, BinaryOp::Mul, a, tau)?;
    let a = e.op(Op::Softmax { axis: 3 }, &[a])?;
    let o = e.op(Op::MatMul, &[a, v])?;
    let o = transpose(e, o, &[0, 3, 1, 2])?;
    reshape(e, o, &[n, t, d])
}
