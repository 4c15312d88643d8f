//! `fused_mha`: multi-head scaled dot-product attention with optional
//! q/k/v projections (see [`FusedOp::Mha`]).

use super::{Emitter, FusedOp, bin, heads_first, heads_merge, linear, transpose};
use crate::error::IrError;
use crate::op::{Attr, AttrReader, BinaryOp, Float, Op};

/// The text-format name.
pub const NAME: &str = "fused_mha";

/// Where the operands are (indices into the node's operand list).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Operands {
    /// the query, key and value inputs
    pub xq: usize,
    /// see `xq`
    pub xk: usize,
    /// see `xq`
    pub xv: usize,
    /// `(w, b)` of the query projection, when `proj_q`
    pub q: Option<(usize, usize)>,
    /// `(w, b)` of the key projection, when `proj_k`
    pub k: Option<(usize, usize)>,
    /// `(w, b)` of the value projection, when `proj_v`
    pub v: Option<(usize, usize)>,
    /// how many operands in all
    pub count: usize,
}

/// The operand layout: `xq, xk, xv`, then `(w, b)` per projected side in
/// the order q, k, v.
pub fn operands(proj_q: bool, proj_k: bool, proj_v: bool) -> Operands {
    let mut i = 3;
    let mut pair = |present: bool| {
        present.then(|| {
            i += 2;
            (i - 2, i - 1)
        })
    };
    let (q, k, v) = (pair(proj_q), pair(proj_k), pair(proj_v));
    Operands {
        xq: 0,
        xk: 1,
        xv: 2,
        q,
        k,
        v,
        count: i,
    }
}

fn fields(op: &FusedOp) -> (usize, f32, bool, bool, bool) {
    let FusedOp::Mha {
        heads,
        scale,
        proj_q,
        proj_k,
        proj_v,
    } = *op
    else {
        unreachable!("mha:: of {}", op.name())
    };
    (heads, scale.0, proj_q, proj_k, proj_v)
}

/// The attributes, in canonical order.
pub(super) fn attrs(op: &FusedOp) -> Vec<(&'static str, Attr)> {
    let (heads, scale, proj_q, proj_k, proj_v) = fields(op);
    vec![
        ("heads", Attr::Int(heads as i64)),
        ("scale", Attr::Float(scale)),
        ("proj_q", Attr::Bool(proj_q)),
        ("proj_k", Attr::Bool(proj_k)),
        ("proj_v", Attr::Bool(proj_v)),
    ]
}

/// Reads the attributes.
pub(super) fn read(a: &mut AttrReader<'_>) -> Result<FusedOp, String> {
    Ok(FusedOp::Mha {
        heads: a.usize("heads")?,
        scale: Float(a.float("scale")?),
        proj_q: a.bool("proj_q")?,
        proj_k: a.bool("proj_k")?,
        proj_v: a.bool("proj_v")?,
    })
}

/// The primitive composition.
pub(super) fn expand<E: Emitter>(op: &FusedOp, e: &mut E, args: &[E::V]) -> Result<E::V, IrError> {
    let (heads, scale, proj_q, proj_k, proj_v) = fields(op);
    let l = operands(proj_q, proj_k, proj_v);
    let project = |e: &mut E, x: usize, p: Option<(usize, usize)>| match p {
        Some((w, b)) => linear(e, &args[x], &args[w], Some(&args[b])),
        None => Ok(args[x].clone()),
    };
    let q = project(e, l.xq, l.q)?;
    let k = project(e, l.xk, l.k)?;
    let v = project(e, l.xv, l.v)?;
    let q = heads_first(e, q, heads)?;
    let k = heads_first(e, k, heads)?;
    let v = heads_first(e, v, heads)?;
    let kt = transpose(e, k, &[0, 1, 3, 2])?;
    let s = e.op(Op::MatMul, &[q, kt])?;
    let c = e.scalar(scale)?;
    let s = bin(e, BinaryOp::Mul, s, c)?;
    let a = e.op(Op::Softmax { axis: 3 }, &[s])?;
    let o = e.op(Op::MatMul, &[a, v])?;
    heads_merge(e, o)
}
