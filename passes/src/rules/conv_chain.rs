//! Depthwise-separable (dw → pw), inverted-residual (pw → dw → pw) and
//! pointwise-MLP (pw → pw) fusion: consecutive convolutions with their
//! epilogues become one
//! `fused_conv_chain`, computable tile by tile so the expanded
//! intermediates (the widest tensors of these networks) never reach memory.
//!
//! A stage is *depthwise* when its groups equal its input channels (the
//! expanding form with `e` outputs per channel included) and *pointwise*
//! when its kernel is 1×1 with stride 1 and no padding (grouped pointwise
//! convs included). Only the last conv of a chain may carry the residual.
//! A stage's channel shuffle (Mobile-Former-26M) goes with it: it only
//! changes where the stage's rows are stored.

use egg::Id;
use kiln_ir::op::Op;
use kiln_ir::{ConvStage, FusedOp};

use super::{Found, R, Recipe, Rw, ops, rule, ty};
use crate::lang::{KGraph, KNode};

/// The conv-chain rules.
pub fn rules() -> Vec<Rw> {
    vec![
        rule("conv-chain-dw-pw", is_fused_conv, dw_pw),
        rule("conv-chain-pw-dw-pw", is_fused_conv, pw_dw_pw),
        rule("conv-chain-pw-pw", is_fused_conv, pw_pw),
    ]
}

fn is_fused_conv(op: &Op) -> bool {
    matches!(op, Op::Fused(FusedOp::Conv { .. }))
}

/// A fused conv e-node seen as a chain stage.
struct Stage {
    stage: ConvStage,
    input: Id,
    /// the stage's operands after the input (weight, bias, coefficients)
    params: Vec<Id>,
    residual: Option<Id>,
    depthwise: bool,
    pointwise: bool,
}

fn stage_of(eg: &KGraph, op: &Op, args: &[Id]) -> Option<Stage> {
    let Op::Fused(FusedOp::Conv {
        stride,
        pad,
        dilation: [1, 1],
        groups,
        bias,
        shuffle,
        act,
        residual,
    }) = op
    else {
        return None;
    };
    let n_params = 1 + usize::from(*bias) + act.extra_operands();
    let params = args.get(1..1 + n_params)?.to_vec();
    let residual = residual.then(|| args.last().copied()).flatten();
    let cin = ty(eg, args[0]).shape[1];
    let k = &ty(eg, args[1]).shape;
    Some(Stage {
        stage: ConvStage {
            stride: *stride,
            pad: *pad,
            groups: *groups,
            bias: *bias,
            shuffle: *shuffle,
            act: *act,
        },
        input: args[0],
        params,
        residual,
        depthwise: *groups == cin,
        pointwise: k[2..] == [1, 1] && *stride == [1, 1] && *pad == [0; 4],
    })
}

/// Stages producing class `id` (no residual: they are not last).
fn inner_stages(eg: &KGraph, id: Id) -> Vec<Stage> {
    ops(eg, id, is_fused_conv)
        .filter_map(|(op, a)| stage_of(eg, op, a))
        .filter(|s| s.residual.is_none())
        .collect()
}

fn chain(stages: &[&Stage], last: &Stage) -> (Recipe, R) {
    let mut args = vec![R::Old(stages[0].input)];
    let mut list = Vec::new();
    for s in stages.iter().copied().chain(std::iter::once(last)) {
        args.extend(s.params.iter().map(|&p| R::Old(p)));
        list.push(s.stage.clone());
    }
    if let Some(res) = last.residual {
        args.push(R::Old(res));
    }
    let f = FusedOp::ConvChain {
        stages: list,
        residual: last.residual.is_some(),
    };
    let mut r = Recipe::new();
    let y = r.fused(f, &args);
    (r, y)
}

fn dw_pw(eg: &KGraph, _c: Id, n: &KNode) -> Found {
    let Some(last) = n.as_op().and_then(|op| stage_of(eg, op, &n.args)) else {
        return vec![];
    };
    if !last.pointwise {
        return vec![];
    }
    inner_stages(eg, last.input)
        .iter()
        .filter(|s| s.depthwise && !s.pointwise)
        .map(|s| chain(&[s], &last))
        .collect()
}

/// A pointwise MLP (1×1 expand → 1×1 project), MobileViTv2's FFN: the
/// expanded hidden tensor never reaches memory either.
fn pw_pw(eg: &KGraph, _c: Id, n: &KNode) -> Found {
    let Some(last) = n.as_op().and_then(|op| stage_of(eg, op, &n.args)) else {
        return vec![];
    };
    if !last.pointwise {
        return vec![];
    }
    inner_stages(eg, last.input)
        .iter()
        .filter(|s| s.pointwise)
        .map(|s| chain(&[s], &last))
        .collect()
}

fn pw_dw_pw(eg: &KGraph, _c: Id, n: &KNode) -> Found {
    let Some(last) = n.as_op().and_then(|op| stage_of(eg, op, &n.args)) else {
        return vec![];
    };
    if !last.pointwise {
        return vec![];
    }
    let mut out = Vec::new();
    for dw in inner_stages(eg, last.input) {
        if !dw.depthwise || dw.pointwise {
            continue;
        }
        for pw in inner_stages(eg, dw.input) {
            if pw.pointwise {
                out.push(chain(&[&pw, &dw], &last));
            }
        }
    }
    out
}
