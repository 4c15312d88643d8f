//! `fused_sep_attn`: MobileViTv2 separable self-attention with its output
//! projection, on the unfolded tensor or (with `patch`) the folded map
//! (see [`FusedOp::SepAttn`]).

use super::{Emitter, FusedOp, bin, channel_slice, fold, unfold, want};
use crate::error::IrError;
use crate::op::{Attr, AttrReader, BinaryOp, Op, ReduceKind, UnaryOp};

/// The text-format name.
pub const NAME: &str = "fused_sep_attn";

/// Where the operands are: `u, wqkv, bqkv, wo, bo`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Operands {
    /// the input (unfolded `[N,d,P,Np]`, or the folded map `[N,d,H,W]`)
    pub u: usize,
    /// the qkv projection `[1+2d,d,1,1]` and its bias
    pub wqkv: usize,
    /// see `wqkv`
    pub bqkv: usize,
    /// the output projection `[d,d,1,1]` and its bias
    pub wo: usize,
    /// see `wo`
    pub bo: usize,
    /// how many operands in all
    pub count: usize,
}

/// The operand layout (fixed).
pub const OPERANDS: Operands = Operands {
    u: 0,
    wqkv: 1,
    bqkv: 2,
    wo: 3,
    bo: 4,
    count: 5,
};

fn patch(op: &FusedOp) -> Option<[usize; 2]> {
    let FusedOp::SepAttn { patch } = *op else {
        unreachable!("sep_attn:: of {}", op.name())
    };
    patch
}

/// The attributes, in canonical order.
pub(super) fn attrs(op: &FusedOp) -> Vec<(&'static str, Attr)> {
    match patch(op) {
        Some(p) => vec![("patch", super::ints(&p))],
        None => vec![],
    }
}

/// Reads the attributes.
pub(super) fn read(a: &mut AttrReader<'_>) -> Result<FusedOp, String> {
    Ok(FusedOp::SepAttn {
        patch: a.opt("patch", |a, k| a.array(k))?,
    })
}

/// The primitive composition.
pub(super) fn expand<E: Emitter>(op: &FusedOp, e: &mut E, args: &[E::V]) -> Result<E::V, IrError> {
    let patch = patch(op);
    let l = OPERANDS;
    let u = args[l.u].clone();
    let ut = e.ty(&u);
    want(ut.rank() == 4, || format!("u must be rank 4, got {ut}"))?;
    let unfolded = match patch {
        None => u,
        Some([ph, pw]) => unfold(e, u, ph, pw)?,
    };
    let d = ut.shape[1];
    let pointwise = Op::Conv2d {
        stride: [1, 1],
        pad: [0; 4],
        dilation: [1, 1],
        groups: 1,
    };
    let qkv = e.op(
        pointwise.clone(),
        &[unfolded, args[l.wqkv].clone(), args[l.bqkv].clone()],
    )?;
    want(e.ty(&qkv).shape[1] == 1 + 2 * d, || {
        format!("wqkv must produce 1+2·{d} channels")
    })?;
    let q = channel_slice(e, qkv.clone(), 0, 1)?;
    let k = channel_slice(e, qkv.clone(), 1, 1 + d)?;
    let v = channel_slice(e, qkv, 1 + d, 1 + 2 * d)?;
    let s = e.op(Op::Softmax { axis: 3 }, &[q])?;
    let sk = bin(e, BinaryOp::Mul, s, k)?;
    let cv = e.op(
        Op::Reduce {
            kind: ReduceKind::Sum,
            axes: vec![3],
            keepdims: true,
        },
        &[sk],
    )?;
    let v = e.op(Op::Unary(UnaryOp::Relu), &[v])?;
    let y = bin(e, BinaryOp::Mul, v, cv)?;
    let out = e.op(pointwise, &[y, args[l.wo].clone(), args[l.bo].clone()])?;
    match patch {
        None => Ok(out),
        Some([ph, pw]) => fold(e, out, &ut.shape, ph, pw),
    }
}
