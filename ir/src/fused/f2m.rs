//! `fused_f2m`: Mobile-Former's Former→Mobile bridge (see
//! [`FusedOp::F2m`]).

use super::{Emitter, FusedOp, bin, heads_first, linear, reshape, transpose, want};
use crate::error::IrError;
use crate::op::{Attr, AttrReader, BinaryOp, Float, Op};

/// The text-format name.
pub const NAME: &str = "fused_f2m";

/// Where the operands are: `y, z, wk, bk, wv, bv`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Operands {
    /// the feature map `[N,C,H,W]`
    pub y: usize,
    /// the tokens `[N,M,d]`
    pub z: usize,
    /// the key projection
    pub wk: usize,
    /// see `wk`
    pub bk: usize,
    /// the value projection
    pub wv: usize,
    /// see `wv`
    pub bv: usize,
    /// how many operands in all
    pub count: usize,
}

/// The operand layout (fixed).
pub const OPERANDS: Operands = Operands {
    y: 0,
    z: 1,
    wk: 2,
    bk: 3,
    wv: 4,
    bv: 5,
    count: 6,
};

fn fields(op: &FusedOp) -> (usize, f32) {
    let FusedOp::F2m { heads, scale } = *op else {
        unreachable!("f2m:: of {}", op.name())
    };
    (heads, scale.0)
}

/// The attributes, in canonical order.
pub(super) fn attrs(op: &FusedOp) -> Vec<(&'static str, Attr)> {
    let (heads, scale) = fields(op);
    vec![
        ("heads", Attr::Int(heads as i64)),
        ("scale", Attr::Float(scale)),
    ]
}

/// Reads the attributes.
pub(super) fn read(a: &mut AttrReader<'_>) -> Result<FusedOp, String> {
    Ok(FusedOp::F2m {
        heads: a.usize("heads")?,
        scale: Float(a.float("scale")?),
    })
}

/// The primitive composition.
pub(super) fn expand<E: Emitter>(op: &FusedOp, e: &mut E, args: &[E::V]) -> Result<E::V, IrError> {
    let (heads, scale) = fields(op);
    let l = OPERANDS;
    let (y, z) = (args[l.y].clone(), &args[l.z]);
    let yt = e.ty(&y);
    want(yt.rank() == 4 && yt.shape[1] % heads == 0, || {
        format!("y must be [N,C,H,W] with C divisible by {heads} heads, got {yt}")
    })?;
    let (n, c, hw) = (yt.shape[0], yt.shape[1], yt.shape[2] * yt.shape[3]);
    let yf = reshape(e, y.clone(), &[n, heads, c / heads, hw])?;
    let q = transpose(e, yf, &[0, 1, 3, 2])?;
    let k = linear(e, z, &args[l.wk], Some(&args[l.bk]))?;
    let k = heads_first(e, k, heads)?;
    let kt = transpose(e, k, &[0, 1, 3, 2])?;
    let v = linear(e, z, &args[l.wv], Some(&args[l.bv]))?;
    let v = heads_first(e, v, heads)?;
    let s = e.op(Op::MatMul, &[q, kt])?;
    let cs = e.scalar(scale)?;
    let s = bin(e, BinaryOp::Mul, s, cs)?;
    let a = e.op(Op::Softmax { axis: 3 }, &[s])?;
    let o = e.op(Op::MatMul, &[a, v])?;
    let o = transpose(e, o, &[0, 1, 3, 2])?;
    let o = reshape(e, o, &yt.shape)?;
    bin(e, BinaryOp::Add, y, o)
}
