//! Canonicalisation: transpose/reshape cancellation and merging, identity
//! removal, shape-only ops as reshapes, moving scalar scales and softmaxes
//! to where the fusion matchers look for them, and the spellings PyTorch
//! exports write around linear layers: one index selected out of a joint
//! QKV projection (`qkv.reshape(...).permute(...)[0]`), an explicit
//! `expand_as` before a broadcasting op, a constant per-channel scale after
//! a linear layer.
//!
//! The TorchScript and dynamo exporters also spell a few ops differently;
//! each pair is made one class here, so every spelling of a model extracts
//! to the same graph: `split` outputs and the `slice`s that tile an axis
//! (`chunk`/`unbind` are either), a global average pool and a mean over
//! the spatial axes (`AdaptiveAvgPool2d(1)`), and a scalar constant per use
//! or one shared (a scalar weight and the literal of its value), and
//! `GroupNorm` — TorchScript writes `reshape [N, G, -1] → instance norm →
//! reshape back → · γ + β`, dynamo one `GroupNormalization` with per-channel
//! `γ, β`.
//!
//! These rules add equal spellings to a class; they never delete one, so a
//! matcher may rely on "some e-node of the class has this form". Each is
//! bounded: merging two movement ops gives one, a scale moves only across
//! a movement op or a matmul (never back), so the e-graph does not grow
//! without bound.

use egg::Id;
use kiln_ir::DType;
use kiln_ir::op::{BinaryOp, Float, Op, PadMode, ReduceKind, UnaryOp};

use super::{
    Found, R, Recipe, Rw, binary, is_scalar, konst, linears, node_rule, ops, rule, scalar, ty,
};
use crate::lang::{Head, KGraph, KNode};

/// The canonicalisation rules.
pub fn rules() -> Vec<Rw> {
    vec![
        rule(
            "canon-transpose-transpose",
            |op| matches!(op, Op::Transpose { .. }),
            transpose_transpose,
        ),
        rule(
            "canon-reshape-reshape",
            |op| matches!(op, Op::Reshape { .. }),
            reshape_reshape,
        ),
        rule(
            "canon-shape-op-as-reshape",
            |op| {
                matches!(
                    op,
                    Op::Squeeze { .. } | Op::Unsqueeze { .. } | Op::Flatten { .. }
                )
            },
            shape_op_as_reshape,
        ),
        rule("canon-identity", is_identity_candidate, identity),
        rule(
            "canon-clip-as-relu",
            |op| matches!(op, Op::Clip { .. }),
            clip_as_relu,
        ),
        rule(
            "canon-gemm-as-matmul",
            |op| matches!(op, Op::Gemm { .. }),
            gemm_as_matmul,
        ),
        rule(
            "canon-scale-out-of-matmul",
            |op| *op == Op::MatMul,
            scale_out_of_matmul,
        ),
        rule(
            "canon-scale-out-of-view",
            |op| matches!(op, Op::Transpose { .. } | Op::Reshape { .. }),
            scale_out_of_view,
        ),
        rule(
            "canon-view-identity",
            |op| matches!(op, Op::Reshape { .. } | Op::Transpose { .. }),
            view_identity,
        ),
        rule(
            "canon-softmax-through-transpose",
            |op| matches!(op, Op::Softmax { .. }),
            softmax_through_transpose,
        ),
        rule(
            "canon-gather-through-transpose",
            is_scalar_gather,
            gather_through_transpose,
        ),
        rule("canon-gather-as-slice", is_scalar_gather, gather_as_slice),
        rule(
            "canon-slice-of-linear",
            |op| matches!(op, Op::Slice { .. }),
            slice_of_linear,
        ),
        rule(
            "canon-expand-into-broadcast",
            is_broadcasting,
            expand_into_broadcast,
        ),
        rule(
            "canon-scale-into-linear",
            |op| *op == Op::Binary(BinaryOp::Mul),
            scale_into_linear,
        ),
        rule(
            "canon-scale-into-conv",
            |op| *op == Op::Binary(BinaryOp::Mul),
            scale_into_conv,
        ),
        rule(
            "canon-unary-through-concat",
            |op| matches!(op, Op::Unary(_) | Op::Clip { .. } | Op::HardSigmoid { .. }),
            unary_through_concat,
        ),
        node_rule(
            "canon-split-output-as-slice",
            |n| matches!(n.head, Head::Proj(_)),
            split_output_as_slice,
        ),
        rule(
            "canon-slices-as-split",
            |op| matches!(op, Op::Slice { axes, steps, .. } if axes.len() == 1 && steps == &[1]),
            slices_as_split,
        ),
        rule(
            "canon-spatial-mean-as-global-pool",
            |op| {
                matches!(
                    op,
                    Op::Reduce {
                        kind: ReduceKind::Mean,
                        ..
                    }
                )
            },
            spatial_mean_as_global_pool,
        ),
        rule(
            "canon-global-pool-as-spatial-mean",
            |op| *op == Op::GlobalAvgPool,
            global_pool_as_spatial_mean,
        ),
        rule(
            "canon-transpose-of-unit-reshape",
            |op| matches!(op, Op::Transpose { .. }),
            transpose_of_unit_reshape,
        ),
        rule(
            "canon-zero-pad-into-conv",
            |op| matches!(op, Op::Conv2d { .. }),
            zero_pad_into_conv,
        ),
        rule(
            "canon-gather-in-order-as-reshape",
            |op| matches!(op, Op::Gather { .. }),
            gather_in_order_as_reshape,
        ),
        rule(
            "canon-group-norm-of-grouped-view",
            |op| matches!(op, Op::Reshape { .. }),
            group_norm_of_grouped_view,
        ),
        rule(
            "canon-affine-into-group-norm",
            |op| matches!(op, Op::Binary(BinaryOp::Mul | BinaryOp::Add)),
            affine_into_group_norm,
        ),
        node_rule(
            "canon-scalar-weight-as-literal",
            |n| matches!(&n.head, Head::Weight(_, t) if t.dtype == DType::F32 && t.shape.is_empty()),
            scalar_weight_as_literal,
        ),
    ]
}

/// Output `i` of `split(x)` on axis `a` = `slice(x, a, [o, o + size_i))`.
fn split_output_as_slice(eg: &KGraph, _c: Id, n: &KNode) -> Found {
    let Head::Proj(i) = n.head else {
        return vec![];
    };
    let mut out = Vec::new();
    for (op, args) in ops(eg, n.args[0], |op| matches!(op, Op::Split { .. })) {
        let Op::Split { axis, sizes } = op else {
            continue;
        };
        let Some(&size) = sizes.get(i) else {
            continue;
        };
        let start: usize = sizes[..i].iter().sum();
        let mut r = Recipe::new();
        let y = r.op(
            Op::Slice {
                axes: vec![*axis],
                starts: vec![start as i64],
                ends: vec![(start + size) as i64],
                steps: vec![1],
            },
            &[R::Old(args[0])],
        );
        out.push((r, y));
    }
    out
}

/// `slice(x, a, [s, e))`, when the step-1 slices of `x` on axis `a` tile
/// it exactly (`[0, e1), [e1, e2), ..., [ek, n)`, at least two), = output
/// `j` of `split(x, a, sizes)`: what `chunk`/`unbind` export as slices.
fn slices_as_split(eg: &KGraph, _c: Id, n: &KNode) -> Found {
    let Some(Op::Slice {
        axes, starts, ends, ..
    }) = n.as_op()
    else {
        return vec![];
    };
    let (a, x) = (axes[0], eg.find(n.args[0]));
    let dim = ty(eg, x).shape[a] as i64;
    let me = (starts[0], ends[0]);
    let mut ranges: Vec<(i64, i64)> = Vec::new();
    for p in eg[x].parents() {
        for m in &eg[p].nodes {
            if let Some(Op::Slice {
                axes,
                starts,
                ends,
                steps,
            }) = m.as_op()
                && axes == &[a]
                && steps == &[1]
                && eg.find(m.args[0]) == x
            {
                ranges.push((starts[0], ends[0]));
            }
        }
    }
    ranges.sort_unstable();
    ranges.dedup();
    let tiles = ranges.len() >= 2
        && ranges[0].0 == 0
        && ranges.windows(2).all(|w| w[0].1 == w[1].0)
        && ranges.last().is_some_and(|r| r.1 == dim)
        && ranges.iter().all(|r| r.0 < r.1);
    let Some(j) = ranges.iter().position(|r| *r == me).filter(|_| tiles) else {
        return vec![];
    };
    let sizes = ranges.iter().map(|r| (r.1 - r.0) as usize).collect();
    let mut r = Recipe::new();
    let sp = r.op(Op::Split { axis: a, sizes }, &[R::Old(x)]);
    let y = r.proj(sp, j);
    vec![(r, y)]
}

/// The spatial axes `2..rank` of a rank-`rank` (≥ 3) tensor.
fn spatial_axes(rank: usize) -> Vec<usize> {
    (2..rank).collect()
}

/// `reduce_mean(x, axes 2.., keepdims)` = `global_avg_pool(x)` (reshaped
/// when the axes are dropped).
fn spatial_mean_as_global_pool(eg: &KGraph, c: Id, n: &KNode) -> Found {
    let Some(Op::Reduce { axes, keepdims, .. }) = n.as_op() else {
        return vec![];
    };
    let rank = ty(eg, n.args[0]).shape.len();
    if rank < 3 || *axes != spatial_axes(rank) {
        return vec![];
    }
    let mut r = Recipe::new();
    let mut y = r.op(Op::GlobalAvgPool, &[R::Old(n.args[0])]);
    if !keepdims {
        y = r.reshape(y, &ty(eg, c).shape);
    }
    vec![(r, y)]
}

/// `global_avg_pool(x)` = `reduce_mean(x, axes 2.., keepdims)`: with the
/// rule above, both spellings are in one class whichever a file used.
fn global_pool_as_spatial_mean(eg: &KGraph, _c: Id, n: &KNode) -> Found {
    let rank = ty(eg, n.args[0]).shape.len();
    let mut r = Recipe::new();
    let y = r.op(
        Op::Reduce {
            kind: ReduceKind::Mean,
            axes: spatial_axes(rank),
            keepdims: true,
        },
        &[R::Old(n.args[0])],
    );
    vec![(r, y)]
}

/// A scalar `f32` weight = the literal of its value, so that exports that
/// write one `Constant` per use (TorchScript) and those that share one
/// (dynamo) give the same classes, and equal computations on equal
/// constants merge.
fn scalar_weight_as_literal(eg: &KGraph, c: Id, _n: &KNode) -> Found {
    let Some(v) = scalar(eg, c) else {
        return vec![];
    };
    let mut r = Recipe::new();
    let y = r.konst(v);
    vec![(r, y)]
}

/// `gather` of one scalar index (the axis is dropped): `x[.., i, ..]`.
fn is_scalar_gather(op: &Op) -> bool {
    matches!(op, Op::Gather { indices, indices_shape, .. } if indices.len() == 1 && indices_shape.is_empty())
}

/// `(axis, index ≥ 0)` of a scalar gather over an operand of shape `shape`.
fn scalar_gather(op: &Op, shape: &[usize]) -> Option<(usize, usize)> {
    let Op::Gather { axis, indices, .. } = op else {
        return None;
    };
    let n = *shape.get(*axis)? as i64;
    let i = if indices[0] < 0 {
        indices[0] + n
    } else {
        indices[0]
    };
    (0..n).contains(&i).then_some((*axis, i as usize))
}

/// `gather(transpose(x, p), a, i)` = `transpose(gather(x, p[a], i), p')`,
/// `p'` being `p` without position `a`, renumbered: the selection moves
/// towards the tensor it selects from.
fn gather_through_transpose(eg: &KGraph, _c: Id, n: &KNode) -> Found {
    let Some(op) = n.as_op() else {
        return vec![];
    };
    let Some((a, i)) = scalar_gather(op, &ty(eg, n.args[0]).shape) else {
        return vec![];
    };
    let mut out = Vec::new();
    for (t, args) in ops(eg, n.args[0], |op| matches!(op, Op::Transpose { .. })) {
        let Op::Transpose { perm } = t else { continue };
        let src = perm[a];
        let rest: Vec<usize> = perm
            .iter()
            .enumerate()
            .filter(|&(k, _)| k != a)
            .map(|(_, &p)| if p > src { p - 1 } else { p })
            .collect();
        let mut r = Recipe::new();
        let g = r.op(
            Op::Gather {
                axis: src,
                indices: vec![i as i64],
                indices_shape: vec![],
            },
            &[R::Old(args[0])],
        );
        let y = r.transpose(g, &rest);
        out.push((r, y));
    }
    out
}

/// `gather(reshape(x, s), a, i)` where axis `a` of `s` is the outer factor
/// of an axis `k` of `x` (`prod(s[..a]) = prod(x[..k])`, `s[a]` divides
/// `x[k]`): index `i` selects the contiguous run `[i·m, (i+1)·m)` of axis
/// `k`, `m = x[k]/s[a]`, so it is `reshape(slice(x, k, i·m, (i+1)·m))`.
/// This is how `qkv.reshape(B,T,3,h,dh)[..., 0, ...]` becomes a slice of
/// the QKV projection's columns.
fn gather_as_slice(eg: &KGraph, c: Id, n: &KNode) -> Found {
    let Some(op) = n.as_op() else {
        return vec![];
    };
    let s = ty(eg, n.args[0]).shape.clone();
    let Some((a, i)) = scalar_gather(op, &s) else {
        return vec![];
    };
    let pre: usize = s[..a].iter().product();
    let out_shape = ty(eg, c).shape.clone();
    let mut out = Vec::new();
    for (_, args) in ops(eg, n.args[0], |op| matches!(op, Op::Reshape { .. })) {
        let xs = &ty(eg, args[0]).shape;
        let mut acc = 1usize;
        for (k, &d) in xs.iter().enumerate() {
            if acc == pre && d >= s[a] && d.is_multiple_of(s[a]) {
                let m = d / s[a];
                let mut r = Recipe::new();
                let sl = r.op(
                    Op::Slice {
                        axes: vec![k],
                        starts: vec![(i * m) as i64],
                        ends: vec![((i + 1) * m) as i64],
                        steps: vec![1],
                    },
                    &[R::Old(args[0])],
                );
                let y = r.reshape(sl, &out_shape);
                out.push((r, y));
                break;
            }
            acc *= d;
            if acc > pre {
                break;
            }
        }
    }
    out
}

/// `slice(x@w + b, last axis, [s, e))` = `x@w[:, s..e] + b[s..e]` for a
/// constant `w`: the sliced weight is folded at compile time, so each of
/// Q, K, V cut from a joint projection is a linear map of its own.
fn slice_of_linear(eg: &KGraph, c: Id, n: &KNode) -> Found {
    let Some(Op::Slice {
        axes,
        starts,
        ends,
        steps,
    }) = n.as_op()
    else {
        return vec![];
    };
    let rank = ty(eg, c).rank();
    if axes[..] != [rank.wrapping_sub(1)] || steps[..] != [1] {
        return vec![];
    }
    let cut = |axis: usize| Op::Slice {
        axes: vec![axis],
        starts: starts.clone(),
        ends: ends.clone(),
        steps: vec![1],
    };
    linears(eg, n.args[0])
        .into_iter()
        .map(|l| {
            let mut r = Recipe::new();
            let w = r.op(cut(1), &[R::Old(l.w)]);
            let mut y = r.op(Op::MatMul, &[R::Old(l.x), w]);
            if let Some(b) = l.b {
                let b = r.op(cut(0), &[R::Old(b)]);
                y = r.bin(BinaryOp::Add, y, b);
            }
            (r, y)
        })
        .collect()
}

fn is_broadcasting(op: &Op) -> bool {
    matches!(
        op,
        Op::Binary(
            BinaryOp::Add
                | BinaryOp::Sub
                | BinaryOp::Mul
                | BinaryOp::Div
                | BinaryOp::Max
                | BinaryOp::Min
        )
    )
}

/// `x ⊕ expand(y)` = `x ⊕ y` when broadcasting already gives the same
/// result (PyTorch's `v * context.expand_as(v)`); the applier keeps it only
/// if the type is unchanged. Only for a `y` of the result's rank (size-1
/// axes stretched): dropping an expand that adds axes (Mobile-Former's
/// learned tokens `[M,d]` → `[N,M,d]`) would hand fused ops rank-deficient
/// operands.
fn expand_into_broadcast(eg: &KGraph, _c: Id, n: &KNode) -> Found {
    let Some(op) = n.as_op() else {
        return vec![];
    };
    let mut out = Vec::new();
    for j in 0..2 {
        for (_, e) in ops(eg, n.args[j], |op| matches!(op, Op::Expand { .. })) {
            if ty(eg, e[0]).rank() != ty(eg, n.args[j]).rank() {
                continue;
            }
            let mut args = [R::Old(n.args[0]), R::Old(n.args[1])];
            args[j] = R::Old(e[0]);
            let mut r = Recipe::new();
            let y = r.op(op.clone(), &args);
            out.push((r, y));
        }
    }
    out
}

/// `(x@w + b) · s` with a constant `s` of one value per output column
/// (`[N]`, `[1, …, 1, N]`, not a scalar) = `x@(w·s) + b·s`: the scale
/// folds into the weights (a learned constant gate after a projection).
fn scale_into_linear(eg: &KGraph, c: Id, _n: &KNode) -> Found {
    let mut out = Vec::new();
    for (y, s) in binary(eg, c, BinaryOp::Mul) {
        let st = &ty(eg, s).shape;
        let Some(&cols) = ty(eg, c).shape.last() else {
            continue;
        };
        let per_column = st.last() == Some(&cols)
            && cols > 1
            && st[..st.len() - 1].iter().all(|&d| d == 1)
            && st.len() <= ty(eg, c).rank();
        if !konst(eg, s) || !per_column || ty(eg, y) != ty(eg, c) {
            continue;
        }
        for l in linears(eg, y) {
            let mut r = Recipe::new();
            let s_row = r.reshape(R::Old(s), &[1, cols]);
            let w = r.bin(BinaryOp::Mul, R::Old(l.w), s_row);
            let mut y = r.op(Op::MatMul, &[R::Old(l.x), w]);
            if let Some(b) = l.b {
                let s_vec = r.reshape(R::Old(s), &[cols]);
                let b = r.bin(BinaryOp::Mul, R::Old(b), s_vec);
                y = r.bin(BinaryOp::Add, y, b);
            }
            out.push((r, y));
        }
    }
    out
}

/// `conv(x, w, b) · s` with constant weights and a constant `s` that is
/// one value per output channel (`[O,1,1]`, `[1,O,1,1]`) or one for all:
/// `conv(x, w·s, b·s)`. Layer scale (EfficientFormer, PoolFormer, ConvNeXt
/// in its conv form) multiplies a conv's output by a learnt per-channel
/// vector before the residual add; folded, the add becomes the conv's
/// residual epilogue instead of two element-wise passes.
fn scale_into_conv(eg: &KGraph, c: Id, _n: &KNode) -> Found {
    let mut out = Vec::new();
    for (y, s) in binary(eg, c, BinaryOp::Mul) {
        if !konst(eg, s) || ty(eg, y) != ty(eg, c) || ty(eg, c).rank() != 4 {
            continue;
        }
        let o = ty(eg, c).shape[1];
        let st = &ty(eg, s).shape;
        // the scale's shape aligned to the output's trailing axes
        let per_channel = st.len() >= 3
            && st.len() <= 4
            && st[st.len() - 3] == o
            && st[st.len() - 2..] == [1, 1]
            && st[..st.len() - 3].iter().all(|&d| d == 1);
        let uniform = st.iter().all(|&d| d == 1);
        if !per_channel && !uniform {
            continue;
        }
        let k = if per_channel { o } else { 1 };
        for (op, a) in ops(eg, y, |op| matches!(op, Op::Conv2d { .. })) {
            if !a[1..].iter().all(|&p| konst(eg, p)) || ty(eg, a[1]).shape[0] != o {
                continue;
            }
            let mut r = Recipe::new();
            let s4 = r.reshape(R::Old(s), &[k, 1, 1, 1]);
            let w = r.bin(BinaryOp::Mul, R::Old(a[1]), s4);
            let mut args = vec![R::Old(a[0]), w];
            if let Some(&b) = a.get(2) {
                let s1 = r.reshape(R::Old(s), &[k]);
                args.push(r.bin(BinaryOp::Mul, R::Old(b), s1));
            }
            let z = r.op(op.clone(), &args);
            out.push((r, z));
        }
    }
    out
}

/// `u(concat(x₁ … xₙ)) = concat(u(x₁) … u(xₙ))` for an element-wise
/// unary op: each part's activation can then be its producer's epilogue
/// (MixNet's SiLU after the concatenation of its mixed-kernel convs ran as
/// 19 standalone passes, 6 % of the model).
fn unary_through_concat(eg: &KGraph, _c: Id, n: &KNode) -> Found {
    let Some(op) = n.as_op() else {
        return vec![];
    };
    let mut out = Vec::new();
    for (cat, parts) in ops(eg, n.args[0], |op| matches!(op, Op::Concat { .. })) {
        if parts.len() < 2 {
            continue;
        }
        let mut r = Recipe::new();
        let pieces: Vec<R> = parts
            .iter()
            .map(|&x| r.op(op.clone(), &[R::Old(x)]))
            .collect();
        let y = r.op(cat.clone(), &pieces);
        out.push((r, y));
    }
    out
}

fn transpose_transpose(eg: &KGraph, _c: Id, n: &KNode) -> Found {
    let Some(Op::Transpose { perm: p2 }) = n.as_op() else {
        return vec![];
    };
    let mut out = Vec::new();
    for (op, a) in ops(eg, n.args[0], |op| matches!(op, Op::Transpose { .. })) {
        let Op::Transpose { perm: p1 } = op else {
            continue;
        };
        let perm: Vec<usize> = p2.iter().map(|&i| p1[i]).collect();
        let mut r = Recipe::new();
        if perm.iter().enumerate().all(|(i, &p)| i == p) {
            out.push((r, R::Old(a[0])));
        } else {
            let t = r.transpose(R::Old(a[0]), &perm);
            out.push((r, t));
        }
    }
    if p2.iter().enumerate().all(|(i, &p)| i == p) {
        out.push((Recipe::new(), R::Old(n.args[0])));
    }
    out
}

fn reshape_reshape(eg: &KGraph, c: Id, n: &KNode) -> Found {
    let shape = &ty(eg, c).shape;
    let mut out = Vec::new();
    if ty(eg, n.args[0]).shape == *shape {
        out.push((Recipe::new(), R::Old(n.args[0])));
    }
    for (_, a) in ops(eg, n.args[0], |op| matches!(op, Op::Reshape { .. })) {
        let mut r = Recipe::new();
        if ty(eg, a[0]).shape == *shape {
            out.push((r, R::Old(a[0])));
        } else {
            let t = r.reshape(R::Old(a[0]), shape);
            out.push((r, t));
        }
    }
    out
}

fn shape_op_as_reshape(eg: &KGraph, c: Id, n: &KNode) -> Found {
    let mut r = Recipe::new();
    let t = r.reshape(R::Old(n.args[0]), &ty(eg, c).shape);
    vec![(r, t)]
}

fn is_identity_candidate(op: &Op) -> bool {
    matches!(
        op,
        Op::Unary(UnaryOp::Identity)
            | Op::Binary(BinaryOp::Mul | BinaryOp::Div | BinaryOp::Add | BinaryOp::Sub)
            | Op::Cast { .. }
            | Op::Slice { .. }
    )
}

/// `identity(x)`, `x·1`, `x/1`, `x+0`, `x-0`, a cast to the same type, a
/// slice with unit steps that keeps the shape (GhostNet's
/// `cat(...)[:, :oup]` when `oup` is every channel): `x` (only when the
/// result has `x`'s type — a broadcast is not an identity).
fn identity(eg: &KGraph, c: Id, n: &KNode) -> Found {
    let keep = |x: Id| {
        if ty(eg, x) == ty(eg, c) {
            vec![(Recipe::new(), R::Old(x))]
        } else {
            vec![]
        }
    };
    match n.as_op() {
        Some(Op::Unary(UnaryOp::Identity) | Op::Cast { .. }) => keep(n.args[0]),
        Some(Op::Slice { steps, .. }) if steps.iter().all(|&st| st == 1) => keep(n.args[0]),
        Some(Op::Binary(b)) => {
            let (unit, commutes) = match b {
                BinaryOp::Mul => (1.0, true),
                BinaryOp::Div => (1.0, false),
                BinaryOp::Add => (0.0, true),
                BinaryOp::Sub => (0.0, false),
                _ => return vec![],
            };
            let mut out = Vec::new();
            if is_scalar(eg, n.args[1], unit) {
                out.extend(keep(n.args[0]));
            }
            if commutes && is_scalar(eg, n.args[0], unit) {
                out.extend(keep(n.args[1]));
            }
            out
        }
        _ => vec![],
    }
}

/// `clip {0, 6}` is `relu6`; `clip {0, +inf}` is `relu` (ONNX spells both
/// as Clip).
fn clip_as_relu(_eg: &KGraph, _c: Id, n: &KNode) -> Found {
    let Some(Op::Clip { min, max }) = n.as_op() else {
        return vec![];
    };
    let u = match (min.0, max.0) {
        (0.0, 6.0) => UnaryOp::Relu6,
        (0.0, m) if m == f32::INFINITY || m >= f32::MAX => UnaryOp::Relu,
        _ => return vec![],
    };
    let mut r = Recipe::new();
    let t = r.op(Op::Unary(u), &[R::Old(n.args[0])]);
    vec![(r, t)]
}

/// `gemm {alpha=1, beta=1, trans_a=false}` (ONNX's Linear) as
/// `matmul(a, b or transpose(b)) + c`.
fn gemm_as_matmul(_eg: &KGraph, _c: Id, n: &KNode) -> Found {
    let Some(Op::Gemm {
        alpha,
        beta,
        trans_a: false,
        trans_b,
    }) = n.as_op()
    else {
        return vec![];
    };
    if *alpha != Float(1.0) || (n.args.len() == 3 && *beta != Float(1.0)) {
        return vec![];
    }
    let mut r = Recipe::new();
    let b = if *trans_b {
        r.transpose(R::Old(n.args[1]), &[1, 0])
    } else {
        R::Old(n.args[1])
    };
    let mut y = r.op(Op::MatMul, &[R::Old(n.args[0]), b]);
    if let Some(&c) = n.args.get(2) {
        y = r.bin(BinaryOp::Add, y, R::Old(c));
    }
    vec![(r, y)]
}

/// The scalar factors of a class: `(x, c)` for `x·c`, `c·x`.
fn scalar_factors(eg: &KGraph, id: Id) -> Vec<(Id, Id)> {
    binary(eg, id, BinaryOp::Mul)
        .into_iter()
        .filter(|&(x, k)| scalar(eg, k).is_some() && scalar(eg, x).is_none())
        .collect()
}

/// `(a·c) @ b` and `a @ (b·c)` are `(a @ b)·c` for a scalar `c` — so the
/// attention matchers find the scale on the logits whether an exporter put
/// it on Q, on Kᵀ or on the product.
fn scale_out_of_matmul(eg: &KGraph, _c: Id, n: &KNode) -> Found {
    let (a, b) = (n.args[0], n.args[1]);
    let mut out = Vec::new();
    for (x, k) in scalar_factors(eg, a) {
        let mut r = Recipe::new();
        let m = r.op(Op::MatMul, &[R::Old(x), R::Old(b)]);
        let y = r.bin(BinaryOp::Mul, m, R::Old(k));
        out.push((r, y));
    }
    for (x, k) in scalar_factors(eg, b) {
        let mut r = Recipe::new();
        let m = r.op(Op::MatMul, &[R::Old(a), R::Old(x)]);
        let y = r.bin(BinaryOp::Mul, m, R::Old(k));
        out.push((r, y));
    }
    out
}

/// `view(x·c)` is `view(x)·c` for a scalar `c`.
fn scale_out_of_view(eg: &KGraph, _c: Id, n: &KNode) -> Found {
    let Some(op) = n.as_op() else { return vec![] };
    scalar_factors(eg, n.args[0])
        .into_iter()
        .map(|(x, k)| {
            let mut r = Recipe::new();
            let v = r.op(op.clone(), &[R::Old(x)]);
            let y = r.bin(BinaryOp::Mul, v, R::Old(k));
            (r, y)
        })
        .collect()
}

/// A chain of movement ops that indexes its base unchanged (MobileViT's
/// fold after unfold, transposes around a reshape that undo each other)
/// is the base itself.
fn view_identity(eg: &KGraph, c: Id, _n: &KNode) -> Found {
    let shape = &ty(eg, c).shape;
    let c = eg.find(c);
    super::view::views(eg, c, super::view::DEPTH)
        .into_iter()
        .filter(|v| {
            v.base != c
                && ty(eg, v.base).shape == *shape
                && *v == super::view::View::contiguous(v.base, shape)
        })
        .map(|v| (Recipe::new(), R::Old(v.base)))
        .collect()
}

/// `softmax(transpose(x, p), a)` is `transpose(softmax(x, p[a]), p)`: an
/// exporter that transposes to put the normalised axis last is seen as a
/// softmax on the original layout.
fn softmax_through_transpose(eg: &KGraph, _c: Id, n: &KNode) -> Found {
    let Some(Op::Softmax { axis }) = n.as_op() else {
        return vec![];
    };
    let mut out = Vec::new();
    for (op, a) in ops(eg, n.args[0], |op| matches!(op, Op::Transpose { .. })) {
        let Op::Transpose { perm } = op else { continue };
        let mut r = Recipe::new();
        let s = r.op(Op::Softmax { axis: perm[*axis] }, &[R::Old(a[0])]);
        let t = r.transpose(s, perm);
        out.push((r, t));
    }
    out
}

/// TorchScript's group norm: `reshape(group_norm(reshape(x, [N, G, L]),
/// γ₀, β₀) {groups = G}, shape(x))` for `x [N, C, ...]`, `L = C/G·…`, is
/// `group_norm(x, γ, β) {groups = G}` with each channel taking its group's
/// `γ₀, β₀` (`[G] → [G, C/G] → [C]`): the statistics are the same
/// `C/G·…` values either way.
fn group_norm_of_grouped_view(eg: &KGraph, c: Id, n: &KNode) -> Found {
    let xt = ty(eg, c).clone();
    if xt.rank() < 3 {
        return vec![];
    }
    let (batch, ch) = (xt.shape[0], xt.shape[1]);
    let mut out = Vec::new();
    for (op, a) in ops(eg, n.args[0], |op| matches!(op, Op::GroupNorm { .. })) {
        let Op::GroupNorm { groups, eps } = op else {
            continue;
        };
        let [gv, g0, b0] = [a[0], a[1], a[2]];
        let vt = ty(eg, gv);
        // the inner norm: one group per row of the [N, G, L] view
        if vt.rank() != 3 || vt.shape[0] != batch || vt.shape[1] != *groups {
            continue;
        }
        let g = *groups;
        if g == 0 || !ch.is_multiple_of(g) || !konst(eg, g0) || !konst(eg, b0) {
            continue;
        }
        for (_, v) in ops(eg, gv, |op| matches!(op, Op::Reshape { .. })) {
            if ty(eg, v[0]) != &xt {
                continue;
            }
            let mut r = Recipe::new();
            let per_channel = |r: &mut Recipe, p: Id| {
                let col = r.reshape(R::Old(p), &[g, 1]);
                let full = r.op(
                    Op::Expand {
                        shape: vec![g, ch / g],
                    },
                    &[col],
                );
                r.reshape(full, &[ch])
            };
            let gamma = per_channel(&mut r, g0);
            let beta = per_channel(&mut r, b0);
            let y = r.op(
                Op::GroupNorm {
                    groups: g,
                    eps: *eps,
                },
                &[R::Old(v[0]), gamma, beta],
            );
            out.push((r, y));
        }
    }
    out
}

/// `group_norm(x, γ, β) · s` and `group_norm(x, γ, β) + d` with constant
/// `s`, `d` of one value per channel (varying along axis 1 only) are
/// `group_norm(x, γ·s, β·s)` and `group_norm(x, γ, β + d)`: the affine
/// after the norm folds into its own (dynamo writes it inside).
fn affine_into_group_norm(eg: &KGraph, c: Id, n: &KNode) -> Found {
    let Some(Op::Binary(b)) = n.as_op() else {
        return vec![];
    };
    let b = *b;
    let yt = ty(eg, c).clone();
    if yt.rank() < 3 {
        return vec![];
    }
    let ch = yt.shape[1];
    let mut out = Vec::new();
    for (y, p) in binary(eg, c, b) {
        if ty(eg, y) != &yt || !konst(eg, p) {
            continue;
        }
        // one value per channel: [C, 1, …] or [1, C, 1, …] (rank ≤ y's)
        let pt = &ty(eg, p).shape;
        let mut full = vec![1; yt.rank().saturating_sub(pt.len())];
        full.extend(pt);
        let per_channel = full.len() == yt.rank()
            && full[1] == ch
            && full.iter().enumerate().all(|(i, &d)| i == 1 || d == 1);
        if !per_channel {
            continue;
        }
        for (op, a) in ops(eg, y, |op| matches!(op, Op::GroupNorm { .. })) {
            if !konst(eg, a[1]) || !konst(eg, a[2]) {
                continue;
            }
            let mut r = Recipe::new();
            let pv = r.reshape(R::Old(p), &[ch]);
            let (gamma, beta) = match b {
                BinaryOp::Mul => (
                    r.bin(BinaryOp::Mul, R::Old(a[1]), pv),
                    r.bin(BinaryOp::Mul, R::Old(a[2]), pv),
                ),
                _ => (R::Old(a[1]), r.bin(BinaryOp::Add, R::Old(a[2]), pv)),
            };
            let y = r.op(op.clone(), &[R::Old(a[0]), gamma, beta]);
            out.push((r, y));
        }
    }
    out
}

/// A gather that takes every index of its axis once, in order (dynamo's
/// `as_strided` of a contiguous tensor: `Gather(reshape(x, [-1]),
/// arange(n).reshape(shape))`) only reshapes: the indices' shape replaces
/// the axis.
fn gather_in_order_as_reshape(eg: &KGraph, c: Id, n: &KNode) -> Found {
    let Some(Op::Gather { axis, indices, .. }) = n.as_op() else {
        return vec![];
    };
    let xt = ty(eg, n.args[0]);
    let Some(&dim) = xt.shape.get(*axis) else {
        return vec![];
    };
    let in_order = indices.len() == dim
        && indices.iter().enumerate().all(|(i, &k)| {
            let k = if k < 0 { k + dim as i64 } else { k };
            k == i as i64
        });
    if !in_order {
        return vec![];
    }
    let mut r = Recipe::new();
    let y = r.reshape(R::Old(n.args[0]), &ty(eg, c).shape);
    vec![(r, y)]
}

/// `conv2d(pad(x, 0 on H and W only))` is a conv with that padding added
/// to its own: TensorFlow-style "same" padding, which TorchScript exports
/// as a `Pad` and dynamo folds into the conv.
fn zero_pad_into_conv(eg: &KGraph, _c: Id, n: &KNode) -> Found {
    let Some(Op::Conv2d {
        stride,
        pad,
        dilation,
        groups,
    }) = n.as_op()
    else {
        return vec![];
    };
    let mut out = Vec::new();
    for (op, a) in ops(eg, n.args[0], |op| matches!(op, Op::Pad { .. })) {
        let Op::Pad {
            pads,
            mode: PadMode::Constant,
            value,
        } = op
        else {
            continue;
        };
        // [N, C, H, W] begins then ends: only H and W padded, with zeros
        if value.0 != 0.0 || pads.len() != 8 || pads[0] + pads[1] + pads[4] + pads[5] != 0 {
            continue;
        }
        let merged = [
            pad[0] + pads[2],
            pad[1] + pads[3],
            pad[2] + pads[6],
            pad[3] + pads[7],
        ];
        let mut r = Recipe::new();
        let mut args = vec![R::Old(a[0])];
        args.extend(n.args[1..].iter().map(|&w| R::Old(w)));
        let y = r.op(
            Op::Conv2d {
                stride: *stride,
                pad: merged,
                dilation: *dilation,
                groups: *groups,
            },
            &args,
        );
        out.push((r, y));
    }
    out
}

/// `transpose_P(reshape(x))` where the reshape only inserts or removes
/// size-1 axes is `reshape(transpose_P'(x))`, `P'` moving `x`'s other
/// axes as `P` moves them (its size-1 axes stay put): the reshape moves out
/// of the way, so the transpose meets the one before it (TorchScript's
/// multi-query attention: `k.transpose(1, 2).unsqueeze(1).transpose(-1,
/// -2)`, which dynamo writes as one reshape). Bounded: the reshape only
/// ever moves outward, where reshapes merge.
fn transpose_of_unit_reshape(eg: &KGraph, c: Id, n: &KNode) -> Found {
    let Some(Op::Transpose { perm }) = n.as_op() else {
        return vec![];
    };
    let t = ty(eg, n.args[0]).shape.clone();
    let out_shape = ty(eg, c).shape.clone();
    let non_unit = |s: &[usize]| -> Vec<usize> { s.iter().copied().filter(|&d| d != 1).collect() };
    let mut out = Vec::new();
    // A transpose that keeps its non-unit axes in order moves only size-1
    // axes: a reshape (a pooled [N, C, 1, 1] map permuted to channels-last
    // for a layer norm, as timm's heads do).
    let kept: Vec<usize> = perm.iter().copied().filter(|&p| t[p] != 1).collect();
    if kept.windows(2).all(|w| w[0] < w[1]) {
        let mut r = Recipe::new();
        let y = r.reshape(R::Old(n.args[0]), &out_shape);
        out.push((r, y));
    }
    for (_, a) in ops(eg, n.args[0], |op| matches!(op, Op::Reshape { .. })) {
        let s = ty(eg, a[0]).shape.clone();
        if s.len() == t.len() || non_unit(&s) != non_unit(&t) {
            continue;
        }
        // the rank among t's non-unit axes of each non-unit axis, in the
        // order the transpose puts them
        let t_axes: Vec<usize> = (0..t.len()).filter(|&i| t[i] != 1).collect();
        let order: Vec<usize> = perm
            .iter()
            .filter(|&&p| t[p] != 1)
            .map(|&p| {
                t_axes
                    .iter()
                    .position(|&q| q == p)
                    .expect("a non-unit axis")
            })
            .collect();
        // the same moves on x's non-unit axes, its unit axes fixed
        let s_axes: Vec<usize> = (0..s.len()).filter(|&i| s[i] != 1).collect();
        let mut p2: Vec<usize> = (0..s.len()).collect();
        for (slot, &k) in s_axes.iter().zip(&order) {
            p2[*slot] = s_axes[k];
        }
        let mut r = Recipe::new();
        let moved = if p2.iter().enumerate().all(|(i, &p)| i == p) {
            R::Old(a[0])
        } else {
            r.transpose(R::Old(a[0]), &p2)
        };
        let y = r.reshape(moved, &out_shape);
        out.push((r, y));
    }
    out
}
