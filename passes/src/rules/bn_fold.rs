//! Batch-norm folding into the preceding convolution (dense, grouped,
//! depthwise, depthwise-expanding — all alike, since the conv weight's first
//! axis is always the output channel) or linear layer (also through the
//! reshape that flattens its tokens into rows, as LeViT normalises them).
//!
//! With `s = γ / sqrt(σ² + eps)`, `BN(conv(x, w) + b) = conv(x, w·s) +
//! (β + (b − μ)·s)`, the scale broadcast over the output-channel axis of
//! `w`. The new weight and bias are expressions over weights only, which
//! the cost model prices at zero and constant folding turns into new
//! weights after extraction.

use egg::Id;
use kiln_ir::op::{BinaryOp, Op, UnaryOp};

use super::{Found, R, Recipe, Rw, konst, linears, ops, rule, ty};
use crate::lang::{KGraph, KNode};

/// The batch-norm folding rules.
pub fn rules() -> Vec<Rw> {
    vec![
        rule(
            "bn-fold-conv",
            |op| matches!(op, Op::BatchNorm { .. }),
            fold_conv,
        ),
        rule(
            "bn-fold-linear",
            |op| matches!(op, Op::BatchNorm { .. }),
            fold_linear,
        ),
        rule(
            "bn-through-concat",
            |op| matches!(op, Op::BatchNorm { .. }),
            through_concat,
        ),
    ]
}

/// `BN(concat(x₁ … xₙ, axis 1))` with constant parameters =
/// `concat(BN₁(x₁) … BNₙ(xₙ))`, each with its channels' slice of the
/// parameters: MixNet normalises the concatenation of its mixed-kernel
/// depthwise convs (and of its grouped pointwise ones), where no conv can
/// take the whole BN; per part, each folds into its conv (`bn-fold-conv`)
/// and the activation after it can follow (`act-through-concat`).
fn through_concat(eg: &KGraph, _c: Id, n: &KNode) -> Found {
    let Some(Op::BatchNorm { eps }) = n.as_op() else {
        return vec![];
    };
    if !params_const(eg, n) || ty(eg, n.args[0]).rank() < 2 {
        return vec![];
    }
    let mut out = Vec::new();
    for (_, parts) in ops(eg, n.args[0], |op| matches!(op, Op::Concat { axis: 1 })) {
        if parts.len() < 2 {
            continue;
        }
        let mut r = Recipe::new();
        let mut pieces = Vec::with_capacity(parts.len());
        let mut start = 0i64;
        for &x in parts {
            let width = ty(eg, x).shape[1] as i64;
            let mut args = vec![R::Old(x)];
            for &p in &n.args[1..] {
                args.push(r.op(
                    Op::Slice {
                        axes: vec![0],
                        starts: vec![start],
                        ends: vec![start + width],
                        steps: vec![1],
                    },
                    &[R::Old(p)],
                ));
            }
            pieces.push(r.op(Op::BatchNorm { eps: *eps }, &args));
            start += width;
        }
        let y = r.op(Op::Concat { axis: 1 }, &pieces);
        out.push((r, y));
    }
    out
}

/// `(s, shift)` recipe nodes: `s = γ/sqrt(σ²+eps)`, `shift = β − μ·s`
/// (plus `b·s` when the layer had a bias).
fn scale_shift(r: &mut Recipe, n: &KNode, eps: f32, bias: Option<Id>) -> (R, R) {
    let [_, g, b, m, v] = [n.args[0], n.args[1], n.args[2], n.args[3], n.args[4]];
    let e = r.konst(eps);
    let ve = r.bin(BinaryOp::Add, R::Old(v), e);
    let sd = r.op(Op::Unary(UnaryOp::Sqrt), &[ve]);
    let s = r.bin(BinaryOp::Div, R::Old(g), sd);
    let centred = match bias {
        Some(bias) => r.bin(BinaryOp::Sub, R::Old(bias), R::Old(m)),
        None => r.op(Op::Unary(UnaryOp::Neg), &[R::Old(m)]),
    };
    let cs = r.bin(BinaryOp::Mul, centred, s);
    let shift = r.bin(BinaryOp::Add, R::Old(b), cs);
    (s, shift)
}

fn params_const(eg: &KGraph, n: &KNode) -> bool {
    n.args[1..].iter().all(|&p| konst(eg, p))
}

fn fold_conv(eg: &KGraph, _c: Id, n: &KNode) -> Found {
    let Some(Op::BatchNorm { eps }) = n.as_op() else {
        return vec![];
    };
    if !params_const(eg, n) {
        return vec![];
    }
    let mut out = Vec::new();
    for (op, a) in ops(eg, n.args[0], |op| matches!(op, Op::Conv2d { .. })) {
        if !a[1..].iter().all(|&p| konst(eg, p)) {
            continue;
        }
        let o = ty(eg, a[1]).shape[0];
        let mut r = Recipe::new();
        let (s, shift) = scale_shift(&mut r, n, eps.0, a.get(2).copied());
        let s4 = r.reshape(s, &[o, 1, 1, 1]);
        let w = r.bin(BinaryOp::Mul, R::Old(a[1]), s4);
        let y = r.op(op.clone(), &[R::Old(a[0]), w, shift]);
        out.push((r, y));
    }
    out
}

fn fold_linear(eg: &KGraph, _c: Id, n: &KNode) -> Found {
    let Some(Op::BatchNorm { eps }) = n.as_op() else {
        return vec![];
    };
    // BatchNorm1d on [N, F]: the channel axis is the linear layer's output.
    let bn_in = ty(eg, n.args[0]);
    if bn_in.rank() != 2 || !params_const(eg, n) {
        return vec![];
    }
    let f = bn_in.shape[1];
    // The linear's output, or — as timm's LeViT spells `LinearNorm`,
    // `bn(x.flatten(0, 1)).reshape_as(x)` — its tokens flattened into rows:
    // a row-major reshape to [N, F] from a shape whose last axis is F keeps
    // every element's channel, so the fold is the same, then the reshape.
    let mut sources = vec![(n.args[0], None)];
    for (_, a) in ops(eg, n.args[0], |op| {
        matches!(op, Op::Reshape { .. } | Op::Flatten { .. })
    }) {
        if ty(eg, a[0]).shape.last() == Some(&f) {
            sources.push((a[0], Some(bn_in.shape.clone())));
        }
    }
    let mut out = Vec::new();
    for (src, reshape) in sources {
        for l in linears(eg, src) {
            if ty(eg, l.w).shape[1] != f {
                continue;
            }
            let mut r = Recipe::new();
            let (s, shift) = scale_shift(&mut r, n, eps.0, l.b);
            let s2 = r.reshape(s, &[1, f]);
            let w = r.bin(BinaryOp::Mul, R::Old(l.w), s2);
            let m = r.op(Op::MatMul, &[R::Old(l.x), w]);
            let y = r.bin(BinaryOp::Add, m, shift);
            let y = match &reshape {
                Some(shape) => r.reshape(y, shape),
                None => y,
            };
            out.push((r, y));
        }
    }
    out
}
