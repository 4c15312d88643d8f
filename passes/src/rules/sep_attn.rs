//! MobileViTv2 separable self-attention (models/mobilevitv2.md §2.3):
//! `qkv = Wqkv·u + b` split into `q [1]`, `k [d]`, `v [d]` channels;
//! `s = softmax over the patches of q`; context `cv = Σ s·k`;
//! `out = Wo·(relu(v) ⊙ cv) + bo` — one `fused_sep_attn`.
//!
//! The projections are 1×1 convolutions (primitive or already an
//! epilogue-free `fused_conv`); the channel split may be a `split` or three
//! `slice`s. The softmax must run over the patch axis (3) and the context
//! sum over the same axis.

use egg::Id;
use kiln_ir::FusedOp;
use kiln_ir::op::{BinaryOp, Op, ReduceKind, UnaryOp};

use super::{Found, R, Recipe, Rw, binary, ops, rule, ty, unary};
use crate::lang::{Head, KGraph, KNode};

/// The separable-attention rules.
pub fn rules() -> Vec<Rw> {
    vec![rule(
        "sep-attn-mobilevitv2",
        |op| matches!(op, Op::Conv2d { .. } | Op::Fused(FusedOp::Conv { .. })),
        sep_attn,
    )]
}

/// `(x, w, b)` for a biased, stride-1, unpadded 1×1 conv e-node with no
/// epilogue.
fn pointwise(eg: &KGraph, op: &Op, a: &[Id]) -> Option<(Id, Id, Id)> {
    let plain = match op {
        Op::Conv2d {
            stride: [1, 1],
            pad: [0, 0, 0, 0],
            dilation: [1, 1],
            groups: 1,
        } => a.len() == 3,
        Op::Fused(FusedOp::Conv {
            stride: [1, 1],
            pad: [0, 0, 0, 0],
            dilation: [1, 1],
            groups: 1,
            bias: true,
            shuffle: 1,
            act: kiln_ir::Act::None,
            residual: false,
        }) => true,
        _ => false,
    };
    (plain && ty(eg, a[1]).shape[2..] == [1, 1]).then(|| (a[0], a[1], a[2]))
}

fn pointwise_convs(eg: &KGraph, id: Id) -> Vec<(Id, Id, Id)> {
    ops(eg, id, |op| {
        matches!(op, Op::Conv2d { .. } | Op::Fused(FusedOp::Conv { .. }))
    })
    .filter_map(|(op, a)| pointwise(eg, op, a))
    .collect()
}

/// `(source, start, end)` for every way class `id` is channels
/// `[start, end)` of another class (a `slice` on axis 1 or a `split`
/// output).
fn channel_parts(eg: &KGraph, id: Id) -> Vec<(Id, usize, usize)> {
    let mut out = Vec::new();
    for n in &eg[id].nodes {
        match &n.head {
            Head::Op(Op::Slice {
                axes,
                starts,
                ends,
                steps,
            }) if axes[..] == [1] && steps[..] == [1] => {
                let dim = ty(eg, n.args[0]).shape[1] as i64;
                let (s, e) = (starts[0].clamp(0, dim), ends[0].clamp(0, dim));
                if s < e {
                    out.push((eg.find(n.args[0]), s as usize, e as usize));
                }
            }
            Head::Proj(i) => {
                for t in &eg[n.args[0]].nodes {
                    if let Head::Op(Op::Split { axis: 1, sizes }) = &t.head {
                        let start: usize = sizes[..*i].iter().sum();
                        out.push((eg.find(t.args[0]), start, start + sizes[*i]));
                    }
                }
            }
            _ => {}
        }
    }
    out
}

fn sep_attn(eg: &KGraph, c: Id, n: &KNode) -> Found {
    let Some((y, wo, bo)) = n.as_op().and_then(|op| pointwise(eg, op, &n.args)) else {
        return vec![];
    };
    let yt = ty(eg, y);
    if yt.rank() != 4 || ty(eg, c).shape[1] != yt.shape[1] {
        return vec![];
    }
    let d = yt.shape[1];
    let mut out = Vec::new();
    for (rv, cv) in binary(eg, y, BinaryOp::Mul) {
        for v in unary(eg, rv, UnaryOp::Relu) {
            for (qkv, vs, ve) in channel_parts(eg, v) {
                if (vs, ve) != (1 + d, 1 + 2 * d) {
                    continue;
                }
                let sums = ops(eg, cv, |op| {
                    *op == Op::Reduce {
                        kind: ReduceKind::Sum,
                        axes: vec![3],
                        keepdims: true,
                    }
                });
                for (_, sk) in sums {
                    for (s, k) in binary(eg, sk[0], BinaryOp::Mul) {
                        let k_ok = channel_parts(eg, k).contains(&(qkv, 1, 1 + d));
                        let qs: Vec<Id> = ops(eg, s, |op| *op == Op::Softmax { axis: 3 })
                            .map(|(_, a)| a[0])
                            .collect();
                        let q_ok = qs
                            .iter()
                            .any(|&q| channel_parts(eg, q).contains(&(qkv, 0, 1)));
                        if !(k_ok && q_ok) {
                            continue;
                        }
                        for (u, wqkv, bqkv) in pointwise_convs(eg, qkv) {
                            let mut r = Recipe::new();
                            let f = FusedOp::SepAttn { patch: None };
                            let yy = r.fused(f, &[u, wqkv, bqkv, wo, bo].map(R::Old));
                            out.push((r, yy));
                        }
                    }
                }
            }
        }
    }
    out
}
