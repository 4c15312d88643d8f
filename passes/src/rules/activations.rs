//! Recognition of primitives that ONNX exports decompose: SiLU from
//! `x·sigmoid(x)`, hard-sigmoid from `relu6(x+3)/6`, hard-swish from
//! `x·hard_sigmoid(x)` or `x·relu6(x+3)/6`, exact GELU from its erf formula,
//! ReLU/ReLU6 from max/min, layer-norm from
//! ReduceMean/Sub/Pow/Sqrt/Div(+Mul/Add), and PyTorch's GroupNorm(1)
//! export (InstanceNormalization over `[N, 1, rest]`, then the per-channel
//! affine as Mul/Add).
//!
//! Every matcher accepts both operand orders of products and sums and a
//! scale written as `·c` or `/(1/c)`, through the helpers in `rules`.

use egg::Id;
use kiln_ir::op::{BinaryOp, Float, Op, ReduceKind, UnaryOp};

use super::{
    Found, R, Recipe, Rw, binary, hard_sigmoids, is_scalar, konst, ops, rule, scalar, scaled_by,
    ty, unary,
};
use crate::lang::{KGraph, KNode};

/// The activation-recognition rules.
pub fn rules() -> Vec<Rw> {
    vec![
        rule("act-silu", |op| *op == Op::Binary(BinaryOp::Mul), silu),
        rule("act-relu-from-max", is_min_max, relu_from_max),
        rule(
            "act-hard-sigmoid",
            |op| matches!(op, Op::Binary(BinaryOp::Mul | BinaryOp::Div)),
            hard_sigmoid,
        ),
        rule(
            "act-hard-swish",
            |op| matches!(op, Op::Binary(BinaryOp::Mul | BinaryOp::Div)),
            hard_swish,
        ),
        rule("act-gelu-erf", |op| *op == Op::Binary(BinaryOp::Mul), gelu),
        rule(
            "act-layer-norm",
            |op| matches!(op, Op::Binary(BinaryOp::Mul | BinaryOp::Add)),
            layer_norm,
        ),
        rule(
            "act-group-norm-affine",
            |op| *op == Op::Binary(BinaryOp::Add),
            group_norm_affine,
        ),
    ]
}

/// The `C` of a constant shaped one value per channel of an `[N, C, ...]`
/// tensor of rank `rank` (`[C, 1, ..]` or `[1, C, 1, ..]`).
fn per_channel(eg: &KGraph, k: Id, c: usize, rank: usize) -> bool {
    let s = &ty(eg, k).shape;
    konst(eg, k)
        && s.iter().product::<usize>() == c
        && ((s.len() == rank - 1 && s.first() == Some(&c))
            || (s.len() == rank && s.get(1) == Some(&c)))
}

/// PyTorch exports `GroupNorm(1, C)` as `InstanceNormalization` of
/// `reshape(x, [N, 1, rest])` with unit scale and zero shift, reshaped back,
/// then `· γ + β` per channel: that is `group_norm(x, γ, β) {groups=1}`
/// (statistics over everything but the batch axis either way).
fn group_norm_affine(eg: &KGraph, c: Id, _n: &KNode) -> Found {
    let shape = ty(eg, c).shape.clone();
    if shape.len() < 3 {
        return vec![];
    }
    let (n, ch) = (shape[0], shape[1]);
    let rest: usize = shape[1..].iter().product();
    let mut out = Vec::new();
    for (m, beta) in binary(eg, c, BinaryOp::Add) {
        if !per_channel(eg, beta, ch, shape.len()) || ty(eg, m).shape != shape {
            continue;
        }
        for (r, gamma) in binary(eg, m, BinaryOp::Mul) {
            if !per_channel(eg, gamma, ch, shape.len()) || ty(eg, r).shape != shape {
                continue;
            }
            for (_, g) in ops(eg, r, |op| matches!(op, Op::Reshape { .. })) {
                for (op, a) in ops(eg, g[0], |op| matches!(op, Op::GroupNorm { groups: 1, .. })) {
                    let Op::GroupNorm { eps, .. } = op else {
                        continue;
                    };
                    if ty(eg, a[0]).shape[..] != [n, 1, rest]
                        || !is_scalar(eg, a[1], 1.0)
                        || scalar(eg, a[2]) != Some(0.0)
                    {
                        continue;
                    }
                    for (_, x) in ops(eg, a[0], |op| matches!(op, Op::Reshape { .. })) {
                        if ty(eg, x[0]).shape != shape {
                            continue;
                        }
                        let mut rc = Recipe::new();
                        let gm = rc.reshape(R::Old(gamma), &[ch]);
                        let bt = rc.reshape(R::Old(beta), &[ch]);
                        let y = rc.op(
                            Op::GroupNorm {
                                groups: 1,
                                eps: *eps,
                            },
                            &[R::Old(x[0]), gm, bt],
                        );
                        out.push((rc, y));
                    }
                }
            }
        }
    }
    out
}

fn is_min_max(op: &Op) -> bool {
    matches!(op, Op::Binary(BinaryOp::Max | BinaryOp::Min))
}

fn unary_node(op: Op, x: Id) -> (Recipe, R) {
    let mut r = Recipe::new();
    let y = r.op(op, &[R::Old(x)]);
    (r, y)
}

/// `x·sigmoid(x)` → `silu(x)`.
fn silu(eg: &KGraph, c: Id, _n: &KNode) -> Found {
    binary(eg, c, BinaryOp::Mul)
        .into_iter()
        .filter(|&(x, s)| unary(eg, s, UnaryOp::Sigmoid).contains(&x))
        .map(|(x, _)| unary_node(Op::Unary(UnaryOp::Silu), x))
        .collect()
}

/// `max(x, 0)` → `relu(x)`; `min(relu(x), 6)` / `min(max(x,0),6)` → `relu6(x)`.
fn relu_from_max(eg: &KGraph, c: Id, _n: &KNode) -> Found {
    let same = |x: Id| ty(eg, x) == ty(eg, c);
    let mut out: Found = binary(eg, c, BinaryOp::Max)
        .into_iter()
        .filter(|&(x, z)| is_scalar(eg, z, 0.0) && same(x))
        .map(|(x, _)| unary_node(Op::Unary(UnaryOp::Relu), x))
        .collect();
    for (m, six) in binary(eg, c, BinaryOp::Min) {
        if !is_scalar(eg, six, 6.0) {
            continue;
        }
        let mut xs = unary(eg, m, UnaryOp::Relu);
        xs.extend(
            binary(eg, m, BinaryOp::Max)
                .into_iter()
                .filter(|&(_, z)| is_scalar(eg, z, 0.0))
                .map(|(x, _)| x),
        );
        out.extend(
            xs.into_iter()
                .filter(|&x| same(x))
                .map(|x| unary_node(Op::Unary(UnaryOp::Relu6), x)),
        );
    }
    out
}

/// The `x` of every `relu6(x + 3)` spelling of the class.
fn relu6_plus_3(eg: &KGraph, id: Id) -> Vec<Id> {
    unary(eg, id, UnaryOp::Relu6)
        .into_iter()
        .flat_map(|a| binary(eg, a, BinaryOp::Add))
        .filter(|&(_, k)| is_scalar(eg, k, 3.0))
        .map(|(x, _)| x)
        .collect()
}

fn std_hard_sigmoid() -> Op {
    Op::HardSigmoid {
        alpha: Float(1.0 / 6.0),
        beta: Float(0.5),
    }
}

/// `relu6(x+3)/6` (or `·(1/6)`) → `hard_sigmoid {alpha=1/6, beta=0.5}(x)`.
fn hard_sigmoid(eg: &KGraph, c: Id, _n: &KNode) -> Found {
    scaled_by(eg, c, 1.0 / 6.0)
        .into_iter()
        .flat_map(|y| relu6_plus_3(eg, y))
        .filter(|&x| ty(eg, x) == ty(eg, c))
        .map(|x| unary_node(std_hard_sigmoid(), x))
        .collect()
}

/// `x·hard_sigmoid(x)` or `x·relu6(x+3)/6` → `hard_swish(x)`.
fn hard_swish(eg: &KGraph, c: Id, _n: &KNode) -> Found {
    let mut xs: Vec<Id> = binary(eg, c, BinaryOp::Mul)
        .into_iter()
        .filter(|&(x, h)| hard_sigmoids(eg, h).contains(&x))
        .map(|(x, _)| x)
        .collect();
    for y in scaled_by(eg, c, 1.0 / 6.0) {
        for (x, a) in binary(eg, y, BinaryOp::Mul) {
            if relu6_plus_3(eg, a).contains(&x) {
                xs.push(x);
            }
        }
    }
    xs.sort();
    xs.dedup();
    xs.into_iter()
        .map(|x| unary_node(Op::Unary(UnaryOp::HardSwish), x))
        .collect()
}

/// The `x` of `1 + erf(x/√2)` (any order of the sum, `/√2` or `·(1/√2)`).
fn erf_part(eg: &KGraph, e: Id) -> Vec<Id> {
    binary(eg, e, BinaryOp::Add)
        .into_iter()
        .filter(|&(_, one)| is_scalar(eg, one, 1.0))
        .flat_map(|(f, _)| unary(eg, f, UnaryOp::Erf))
        .flat_map(|s| scaled_by(eg, s, std::f32::consts::FRAC_1_SQRT_2))
        .collect()
}

/// `0.5·x·(1 + erf(x/√2))` in its three groupings → `gelu(x)`.
fn gelu(eg: &KGraph, c: Id, _n: &KNode) -> Found {
    let mut xs = Vec::new();
    for (p, q) in binary(eg, c, BinaryOp::Mul) {
        // (x·e)·0.5
        if is_scalar(eg, q, 0.5) {
            for (x, e) in binary(eg, p, BinaryOp::Mul) {
                if erf_part(eg, e).contains(&x) {
                    xs.push(x);
                }
            }
        }
        // (0.5·x)·e
        for x in scaled_by(eg, p, 0.5) {
            if erf_part(eg, q).contains(&x) {
                xs.push(x);
            }
        }
        // x·(0.5·e)
        for e in scaled_by(eg, q, 0.5) {
            if erf_part(eg, e).contains(&p) {
                xs.push(p);
            }
        }
    }
    xs.sort();
    xs.dedup();
    xs.into_iter()
        .filter(|&x| ty(eg, x) == ty(eg, c))
        .map(|x| unary_node(Op::Unary(UnaryOp::Gelu), x))
        .collect()
}

/// `(x, axis)` for `reduce_mean(x, axes=[axis..rank), keepdims)`.
fn tail_means(eg: &KGraph, m: Id) -> Vec<(Id, usize)> {
    ops(eg, m, |op| {
        matches!(
            op,
            Op::Reduce {
                kind: ReduceKind::Mean,
                keepdims: true,
                ..
            }
        )
    })
    .filter_map(|(op, a)| {
        let Op::Reduce { axes, .. } = op else {
            return None;
        };
        let rank = ty(eg, a[0]).rank();
        let axis = *axes.first()?;
        (axes.iter().copied().eq(axis..rank)).then_some((a[0], axis))
    })
    .collect()
}

/// `(x, axis, eps)` for a class that is `(x - mean(x)) / sqrt(var(x) + eps)`
/// over the trailing axes `axis..`.
fn normalized(eg: &KGraph, n: Id) -> Vec<(Id, usize, f32)> {
    let mut out = Vec::new();
    for (d, s) in binary(eg, n, BinaryOp::Div) {
        for (x, m) in binary(eg, d, BinaryOp::Sub) {
            for (x2, axis) in tail_means(eg, m) {
                if x2 != x {
                    continue;
                }
                for v in unary(eg, s, UnaryOp::Sqrt) {
                    for (var, e) in binary(eg, v, BinaryOp::Add) {
                        let Some(eps) = scalar(eg, e) else { continue };
                        for (sq, axis2) in tail_means(eg, var) {
                            let squares_d = binary(eg, sq, BinaryOp::Pow)
                                .into_iter()
                                .any(|(b, p)| b == d && is_scalar(eg, p, 2.0))
                                || binary(eg, sq, BinaryOp::Mul)
                                    .into_iter()
                                    .any(|(a, b)| a == d && b == d);
                            if axis2 == axis && squares_d {
                                out.push((x, axis, eps));
                            }
                        }
                    }
                }
            }
        }
    }
    out
}

/// `normalized(x)·γ + β` (or without `β`) → `layer_norm {axis, eps}(x, γ, β)`.
fn layer_norm(eg: &KGraph, c: Id, _n: &KNode) -> Found {
    let mut cands: Vec<(Id, Id, Option<Id>)> = Vec::new();
    let scaled = |m: Id| -> Vec<(Id, Id)> {
        binary(eg, m, BinaryOp::Mul)
            .into_iter()
            .filter(|&(_, g)| konst(eg, g))
            .collect()
    };
    for (nrm, g) in scaled(c) {
        cands.push((nrm, g, None));
    }
    for (m, b) in binary(eg, c, BinaryOp::Add) {
        if konst(eg, b) {
            for (nrm, g) in scaled(m) {
                cands.push((nrm, g, Some(b)));
            }
        }
    }
    let mut out = Vec::new();
    for (nrm, g, b) in cands {
        for (x, axis, eps) in normalized(eg, nrm) {
            let tail = ty(eg, x).shape[axis..].to_vec();
            let n: usize = tail.iter().product();
            let fits = |p: Id| ty(eg, p).numel() == n;
            if !fits(g) || b.is_some_and(|b| !fits(b)) {
                continue;
            }
            let mut r = Recipe::new();
            let shaped = |r: &mut Recipe, p: Id| {
                if ty(eg, p).shape == tail {
                    R::Old(p)
                } else {
                    r.reshape(R::Old(p), &tail)
                }
            };
            let mut args = vec![R::Old(x), shaped(&mut r, g)];
            if let Some(b) = b {
                args.push(shaped(&mut r, b));
            }
            let y = r.op(
                Op::LayerNorm {
                    axis,
                    eps: Float(eps),
                },
                &args,
            );
            out.push((r, y));
        }
    }
    out
}
