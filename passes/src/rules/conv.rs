//! Convolution epilogues: a convolution becomes `fused_conv` and absorbs
//! its bias add, a channel shuffle of its output (Mobile-Former-26M), the
//! activation after it (including Mobile-Former's dynamic ReLU
//! `max(a1·y, a2·y)`) and a residual add, so the result is written once
//! instead of three or four times. `linear.rs` does the same for linear
//! layers with the helpers at the end of this file.

use egg::Id;
use kiln_ir::op::{BinaryOp, Op};
use kiln_ir::{Act, FusedOp};

use super::view::{DEPTH, View, views};
use super::{Found, R, Recipe, Rw, binary, konst, ops, rule, ty};
use crate::lang::{KGraph, KNode};

/// The convolution rules.
pub fn rules() -> Vec<Rw> {
    vec![
        rule(
            "conv-from-conv2d",
            |op| matches!(op, Op::Conv2d { .. }),
            conv_as_fused,
        ),
        rule(
            "conv-bias-add",
            |op| *op == Op::Binary(BinaryOp::Add),
            conv_bias_add,
        ),
        rule(
            "conv-shuffle",
            |op| matches!(op, Op::Reshape { .. }),
            conv_shuffle,
        ),
        rule("conv-act", |op| Act::from_primitive(op).is_some(), conv_act),
        rule(
            "conv-dyrelu",
            |op| *op == Op::Binary(BinaryOp::Max),
            conv_dyrelu,
        ),
        rule(
            "conv-residual",
            |op| *op == Op::Binary(BinaryOp::Add),
            conv_residual,
        ),
    ]
}

fn conv_as_fused(_eg: &KGraph, _c: Id, n: &KNode) -> Found {
    let Some(&Op::Conv2d {
        stride,
        pad,
        dilation,
        groups,
    }) = n.as_op()
    else {
        return vec![];
    };
    let f = FusedOp::Conv {
        stride,
        pad,
        dilation,
        groups,
        bias: n.args.len() == 3,
        shuffle: 1,
        act: Act::None,
        residual: false,
    };
    let mut r = Recipe::new();
    let args: Vec<R> = n.args.iter().map(|&a| R::Old(a)).collect();
    let y = r.fused(f, &args);
    vec![(r, y)]
}

/// `conv(x, w) + c` with a constant per-channel `c` (`[1,O,1,1]`, `[O,1,1]`)
/// → `conv(x, w, reshape(c, [O]))`: exporters that drop the conv's bias
/// operand write it this way.
fn conv_bias_add(eg: &KGraph, c: Id, _n: &KNode) -> Found {
    let mut out = Vec::new();
    for (y, b) in binary(eg, c, BinaryOp::Add) {
        if !konst(eg, b) || ty(eg, y) != ty(eg, c) {
            continue;
        }
        let bs = &ty(eg, b).shape;
        for (op, a) in ops(eg, y, |op| matches!(op, Op::Conv2d { .. })) {
            let o = ty(eg, a[1]).shape[0];
            let per_channel = bs.iter().product::<usize>() == o
                && (bs[..] == [1, o, 1, 1] || bs[..] == [o, 1, 1]);
            if a.len() == 2 && per_channel {
                let mut r = Recipe::new();
                let b1 = r.reshape(R::Old(b), &[o]);
                let y = r.op(op.clone(), &[R::Old(a[0]), R::Old(a[1]), b1]);
                out.push((r, y));
            }
        }
    }
    out
}

/// `g` for every way class `c [N,C,H,W]` is the channel shuffle of a
/// same-shaped base `y` with `1 < g < C` groups (`reshape [N,g,C/g,H,W]`,
/// `transpose(0,2,1,3,4)`, `reshape`, in any spelling that indexes the
/// same elements), as `(y, g)`.
fn shuffles_of(eg: &KGraph, c: Id) -> Vec<(Id, usize)> {
    let shape = ty(eg, c).shape.clone();
    let [n, ch, h, w] = shape[..] else {
        return vec![];
    };
    let mut out = Vec::new();
    for v in views(eg, c, DEPTH) {
        if v.base == eg.find(c) || ty(eg, v.base).shape != shape {
            continue;
        }
        for g in (2..ch).filter(|g| ch.is_multiple_of(*g)) {
            let want = View::contiguous(v.base, &shape)
                .reshape(&[n, g, ch / g, h, w])
                .and_then(|x| x.transpose(&[0, 2, 1, 3, 4]))
                .and_then(|x| x.reshape(&shape));
            if want.as_ref() == Some(&v) && !out.contains(&(v.base, g)) {
                out.push((v.base, g));
            }
        }
    }
    out
}

/// `shuffle(conv(x), g)` → `fused_conv {shuffle=g}`. Only over a conv with
/// no shuffle yet, no residual, and an activation without operands (which
/// commutes with a permutation of channels, so `shuffle(relu6(conv))` —
/// the 26M bneck-lite's order — is the same op).
fn conv_shuffle(eg: &KGraph, c: Id, _n: &KNode) -> Found {
    let mut out = Vec::new();
    for (y, g) in shuffles_of(eg, c) {
        for (op, a) in ops(eg, y, |op| {
            matches!(
                op,
                Op::Fused(FusedOp::Conv {
                    shuffle: 1,
                    residual: false,
                    ..
                })
            )
        }) {
            if let Op::Fused(f @ FusedOp::Conv { act, .. }) = op
                && *act != Act::DyRelu
            {
                let mut f = f.clone();
                if let FusedOp::Conv { shuffle, .. } = &mut f {
                    *shuffle = g;
                }
                out.push(fused_with(f, a, &[]));
            }
        }
    }
    out
}

/// Conv epilogues of `y` that can still take an activation.
fn bare_convs(eg: &KGraph, y: Id) -> Vec<(FusedOp, Vec<Id>)> {
    ops(eg, y, |op| {
        matches!(
            op,
            Op::Fused(FusedOp::Conv {
                act: Act::None,
                residual: false,
                ..
            })
        )
    })
    .filter_map(|(op, a)| match op {
        Op::Fused(f) => Some((f.clone(), a.to_vec())),
        _ => None,
    })
    .collect()
}

fn conv_act(eg: &KGraph, _c: Id, n: &KNode) -> Found {
    let Some(act) = n.as_op().and_then(Act::from_primitive) else {
        return vec![];
    };
    let mut out: Found = bare_convs(eg, n.args[0])
        .into_iter()
        .map(|(f, a)| fused_with(with_act(&f, act), &a, &[]))
        .collect();
    // An activation after a view of a conv — PVT v2's MLP flattens its
    // depthwise conv back to tokens (`conv → reshape → transpose → GELU`)
    // — is element-wise, so it is the view of the conv with that
    // activation: `act(view(conv(x))) = view(conv_act(x))`. The views are
    // pure rearrangements (`realize` refuses a broadcast).
    let x = eg.find(n.args[0]);
    for v in views(eg, x, DEPTH) {
        if v.base == x {
            continue;
        }
        let base_shape = ty(eg, v.base).shape.clone();
        for (f, a) in bare_convs(eg, v.base) {
            let mut r = Recipe::new();
            let all: Vec<R> = a.iter().map(|&a| R::Old(a)).collect();
            let y = r.fused(with_act(&f, act), &all);
            if let Some(root) = super::layout::realize(&mut r, y, &base_shape, &v) {
                out.push((r, root));
            }
        }
    }
    out
}

/// `max(y·a1, y·a2)` over a bare conv `y` → conv with the dynamic ReLU.
fn conv_dyrelu(eg: &KGraph, c: Id, _n: &KNode) -> Found {
    let mut out = Vec::new();
    for (p, q) in binary(eg, c, BinaryOp::Max) {
        for (y, a1) in binary(eg, p, BinaryOp::Mul) {
            for (y2, a2) in binary(eg, q, BinaryOp::Mul) {
                if y2 != y || ty(eg, y) != ty(eg, c) {
                    continue;
                }
                for (f, a) in bare_convs(eg, y) {
                    out.push(fused_with(with_act(&f, Act::DyRelu), &a, &[a1, a2]));
                }
            }
        }
    }
    out
}

fn conv_residual(eg: &KGraph, c: Id, _n: &KNode) -> Found {
    let mut out = Vec::new();
    for (y, res) in binary(eg, c, BinaryOp::Add) {
        if ty(eg, res) != ty(eg, c) || ty(eg, y) != ty(eg, c) {
            continue;
        }
        for (op, a) in ops(eg, y, |op| {
            matches!(
                op,
                Op::Fused(FusedOp::Conv {
                    residual: false,
                    ..
                })
            )
        }) {
            if let Op::Fused(f) = op {
                out.push(fused_with(with_residual(f), a, &[res]));
            }
        }
    }
    out
}

/// `f` (a `fused_conv` or `fused_linear`) with activation `act`.
pub fn with_act(f: &FusedOp, act: Act) -> FusedOp {
    let mut f = f.clone();
    if let FusedOp::Conv { act: a, .. } | FusedOp::Linear { act: a, .. } = &mut f {
        *a = act;
    }
    f
}

/// `f` (a `fused_conv` or `fused_linear`) with a residual operand.
pub fn with_residual(f: &FusedOp) -> FusedOp {
    let mut f = f.clone();
    if let FusedOp::Conv { residual, .. } | FusedOp::Linear { residual, .. } = &mut f {
        *residual = true;
    }
    f
}

/// A recipe of `f` over `args` then `extra`.
pub fn fused_with(f: FusedOp, args: &[Id], extra: &[Id]) -> (Recipe, R) {
    let mut r = Recipe::new();
    let all: Vec<R> = args.iter().chain(extra).map(|&a| R::Old(a)).collect();
    let y = r.fused(f, &all);
    (r, y)
}
