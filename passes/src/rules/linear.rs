//! Linear-layer epilogues: `x @ w + b` with a constant `w` becomes
//! `fused_linear` and absorbs the activation after it and a residual add,
//! so the result is written once.

use egg::Id;
use kiln_ir::op::{BinaryOp, Op};
use kiln_ir::{Act, FusedOp};

use super::conv::{fused_with, with_act, with_residual};
use super::{Found, Rw, binary, linears, ops, rule, ty};
use crate::lang::{KGraph, KNode};

/// The linear-layer rules.
pub fn rules() -> Vec<Rw> {
    vec![
        rule(
            "linear-from-matmul",
            |op| matches!(op, Op::MatMul | Op::Binary(BinaryOp::Add)),
            linear_as_fused,
        ),
        rule(
            "linear-act",
            |op| Act::from_primitive(op).is_some(),
            linear_act,
        ),
        rule(
            "linear-residual",
            |op| *op == Op::Binary(BinaryOp::Add),
            linear_residual,
        ),
    ]
}

fn linear_as_fused(eg: &KGraph, c: Id, _n: &KNode) -> Found {
    linears(eg, c)
        .into_iter()
        .map(|l| {
            let f = FusedOp::Linear {
                bias: l.b.is_some(),
                act: Act::None,
                residual: false,
            };
            let args: Vec<Id> = [l.x, l.w].into_iter().chain(l.b).collect();
            fused_with(f, &args, &[])
        })
        .collect()
}

fn bare_linears(eg: &KGraph, y: Id, need_no_act: bool) -> Vec<(FusedOp, Vec<Id>)> {
    ops(eg, y, |op| {
        matches!(
            op,
            Op::Fused(FusedOp::Linear {
                residual: false,
                ..
            })
        )
    })
    .filter_map(|(op, a)| match op {
        Op::Fused(f @ FusedOp::Linear { act, .. }) if !need_no_act || *act == Act::None => {
            Some((f.clone(), a.to_vec()))
        }
        _ => None,
    })
    .collect()
}

fn linear_act(eg: &KGraph, _c: Id, n: &KNode) -> Found {
    let Some(act) = n.as_op().and_then(Act::from_primitive) else {
        return vec![];
    };
    bare_linears(eg, n.args[0], true)
        .into_iter()
        .map(|(f, a)| fused_with(with_act(&f, act), &a, &[]))
        .collect()
}

fn linear_residual(eg: &KGraph, c: Id, _n: &KNode) -> Found {
    let mut out = Vec::new();
    for (y, res) in binary(eg, c, BinaryOp::Add) {
        if ty(eg, res) != ty(eg, c) || ty(eg, y) != ty(eg, c) {
            continue;
        }
        for (f, a) in bare_linears(eg, y, false) {
            out.push(fused_with(with_residual(&f), &a, &[res]));
        }
    }
    out
}
