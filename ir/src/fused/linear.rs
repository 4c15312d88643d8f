//! `fused_linear`: `x @ w` → `+ bias` → activation → `+ residual` (see
//! [`FusedOp::Linear`]); operands laid out as `fused_conv`'s
//! ([`super::conv::operands`]), without the dynamic ReLU.

use super::{Act, Emitter, FusedOp, act_epilogue, linear, want};
use crate::error::IrError;
use crate::op::{Attr, AttrReader};

/// The text-format name.
pub const NAME: &str = "fused_linear";

pub use super::conv::Operands;

/// The operand layout: `x, w`, then `bias`, `residual` as present.
pub fn operands(bias: bool, act: Act, residual: bool) -> Operands {
    super::conv::operands(bias, act, residual)
}

/// The fields of a [`FusedOp::Linear`].
fn fields(op: &FusedOp) -> (bool, Act, bool) {
    let FusedOp::Linear {
        bias,
        act,
        residual,
    } = *op
    else {
        unreachable!("linear:: of {}", op.name())
    };
    (bias, act, residual)
}

/// The attributes, in canonical order.
pub(super) fn attrs(op: &FusedOp) -> Vec<(&'static str, Attr)> {
    let (bias, act, residual) = fields(op);
    vec![
        ("bias", Attr::Bool(bias)),
        ("act", Attr::Word(act.name().into())),
        ("residual", Attr::Bool(residual)),
    ]
}

/// Reads the attributes.
pub(super) fn read(a: &mut AttrReader<'_>) -> Result<FusedOp, String> {
    Ok(FusedOp::Linear {
        bias: a.bool("bias")?,
        act: super::read_act(a, NAME, "act")?,
        residual: a.bool("residual")?,
    })
}

/// The primitive composition.
pub(super) fn expand<E: Emitter>(op: &FusedOp, e: &mut E, args: &[E::V]) -> Result<E::V, IrError> {
    let (bias, act, residual) = fields(op);
    let l = operands(bias, act, residual);
    let (x, w) = (&args[l.x], &args[l.w]);
    let b = l.bias.map(|i| &args[i]);
    if let Some(b) = b {
        let (bt, wt) = (e.ty(b), e.ty(w));
        want(bt.rank() == 1 && wt.shape.last() == bt.shape.last(), || {
            format!("bias {bt} must be one value per output column of {wt}")
        })?;
    }
    let y = linear(e, x, w, b)?;
    act_epilogue(e, y, act, l.slopes, l.residual, args)
}
