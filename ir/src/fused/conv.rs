//! `fused_conv`: conv2d → `+ bias` → channel shuffle → activation →
//! `+ residual` (see [`FusedOp::Conv`]); its operand layout is shared with
//! `fused_linear`, whose kernel reads it the same way.

use super::{Act, Emitter, FusedOp, act_epilogue, channel_shuffle};
use crate::error::IrError;
use crate::op::{Attr, AttrReader, Op};

/// The text-format name.
pub const NAME: &str = "fused_conv";

/// Where the operands of a `fused_conv` (or `fused_linear`) are: indices
/// into the node's operand list, present exactly when the attributes say.
/// Kernels read operands through this, so the IR and the backend cannot
/// disagree on the order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Operands {
    /// the input
    pub x: usize,
    /// the weight
    pub w: usize,
    /// the bias, when `bias`
    pub bias: Option<usize>,
    /// the dynamic ReLU's slopes `(a1, a2)`, when `act = dyrelu`
    pub slopes: Option<(usize, usize)>,
    /// the residual, when `residual`
    pub residual: Option<usize>,
    /// how many operands in all
    pub count: usize,
}

/// The operand layout of a fused conv or linear op with these attributes:
/// `x, w`, then `bias`, `a1, a2`, `residual` as present.
pub fn operands(bias: bool, act: Act, residual: bool) -> Operands {
    let mut i = 2;
    let mut take = |present: bool| {
        present.then(|| {
            i += 1;
            i - 1
        })
    };
    let bias = take(bias);
    let dy = act == Act::DyRelu;
    let slopes = take(dy).zip(take(dy));
    let residual = take(residual);
    Operands {
        x: 0,
        w: 1,
        bias,
        slopes,
        residual,
        count: i,
    }
}

/// The attributes, in canonical order.
pub(super) fn attrs(op: &FusedOp) -> Vec<(&'static str, Attr)> {
    let FusedOp::Conv {
        stride,
        pad,
        dilation,
        groups,
        bias,
        shuffle,
        act,
        residual,
    } = op
    else {
        unreachable!("conv::attrs of {}", op.name())
    };
    let mut a = vec![("stride", super::ints(stride)), ("pad", super::ints(pad))];
    if *dilation != [1, 1] {
        a.push(("dilation", super::ints(dilation)));
    }
    a.extend([
        ("groups", Attr::Int(*groups as i64)),
        ("bias", Attr::Bool(*bias)),
    ]);
    // printed only when present, so texts without shuffles read as before
    if *shuffle != 1 {
        a.push(("shuffle", Attr::Int(*shuffle as i64)));
    }
    a.extend([
        ("act", Attr::Word(act.name().into())),
        ("residual", Attr::Bool(*residual)),
    ]);
    a
}

/// Reads the attributes.
pub(super) fn read(a: &mut AttrReader<'_>) -> Result<FusedOp, String> {
    Ok(FusedOp::Conv {
        stride: a.array("stride")?,
        pad: a.array("pad")?,
        dilation: a.opt("dilation", |a, k| a.array(k))?.unwrap_or([1, 1]),
        groups: a.usize("groups")?,
        bias: a.bool("bias")?,
        shuffle: a.opt("shuffle", |a, k| a.usize(k))?.unwrap_or(1),
        act: super::read_act(a, NAME, "act")?,
        residual: a.bool("residual")?,
    })
}

/// The primitive composition.
pub(super) fn expand<E: Emitter>(op: &FusedOp, e: &mut E, args: &[E::V]) -> Result<E::V, IrError> {
    let FusedOp::Conv {
        stride,
        pad,
        dilation,
        groups,
        bias,
        shuffle,
        act,
        residual,
    } = op
    else {
        unreachable!("conv::expand of {}", op.name())
    };
    let l = operands(*bias, *act, *residual);
    let mut ops = vec![args[l.x].clone(), args[l.w].clone()];
    if let Some(b) = l.bias {
        ops.push(args[b].clone());
    }
    let conv = Op::Conv2d {
        stride: *stride,
        pad: *pad,
        dilation: *dilation,
        groups: *groups,
    };
    let y = e.op(conv, &ops)?;
    let y = channel_shuffle(e, y, *shuffle)?;
    act_epilogue(e, y, *act, l.slopes, l.residual, args)
}
