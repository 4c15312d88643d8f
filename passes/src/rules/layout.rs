//! Layout: ops that treat every spatial position alike commute with views
//! that only permute spatial positions — MobileViT's unfold and fold.
//!
//! MobileViTv2 unfolds the feature map `[N,d,H,W]` into `[N,d,P,Np]`, runs
//! its transformer layers (GroupNorm over everything, 1×1 convs, adds,
//! separable attention over the patch axis) and folds back. Moving the
//! unfold past every op of the stack (`f(unfold(x)) = unfold(f(x))`) lets
//! `fold(unfold(·))` cancel and the separable attention take its folded
//! form (`fused_sep_attn {patch}`), so the two copies per block disappear —
//! "unfold/fold absorbed into its indexing".
//!
//! An op qualifies when every operand that carries spatial data is a view
//! of the same kind (same factors) of a rank-4 base whose batch and channel
//! axes the view leaves alone, and every other operand is per-channel or a
//! weight: element-wise ops, group norm (statistics over all positions of
//! a group), 1×1 stride-1 convs and their epilogues.

use egg::Id;
use kiln_ir::op::Op;
use kiln_ir::{Act, FusedOp};

use super::view::{DEPTH, View, views};
use super::{Found, R, Recipe, Rw, rule, ty};
use crate::lang::{KGraph, KNode};

/// The layout rules.
pub fn rules() -> Vec<Rw> {
    vec![rule("layout-spatial-commute", spatially_uniform, commute)]
}

fn is_pointwise_conv(op: &Op) -> bool {
    matches!(
        op,
        Op::Conv2d {
            stride: [1, 1],
            pad: [0, 0, 0, 0],
            dilation: [1, 1],
            ..
        } | Op::Fused(FusedOp::Conv {
            stride: [1, 1],
            pad: [0, 0, 0, 0],
            dilation: [1, 1],
            ..
        })
    )
}

fn spatially_uniform(op: &Op) -> bool {
    matches!(
        op,
        Op::Unary(_)
            | Op::Binary(_)
            | Op::Clip { .. }
            | Op::HardSigmoid { .. }
            | Op::GroupNorm { .. }
            | Op::Fused(FusedOp::SepAttn { patch: None })
    ) || is_pointwise_conv(op)
}

/// A view that keeps axes 0 and 1 of its rank-4 base and only rearranges
/// the spatial positions (and is not the identity).
fn spatial_views(eg: &KGraph, id: Id) -> Vec<View> {
    let shape = &ty(eg, id).shape;
    if shape.len() != 4 {
        return vec![];
    }
    views(eg, id, DEPTH)
        .into_iter()
        .filter(|v| {
            let bs = &ty(eg, v.base).shape;
            let base = View::contiguous(v.base, bs);
            bs.len() == 4
                && v.base != eg.find(id)
                && bs[..2] == shape[..2]
                && v.dims.len() == 4
                && v.dims[0] == base.dims[0]
                && v.dims[1] == base.dims[1]
                && *v != base
        })
        .collect()
}

/// Which operands carry spatial data (must share the view) for `op` with
/// operand types; `None` if the op does not qualify with these operands.
fn spatial_operands(eg: &KGraph, op: &Op, args: &[Id], out: &[usize]) -> Option<Vec<bool>> {
    let full = |a: Id| ty(eg, a).shape == out;
    let per_channel = |a: Id| {
        let s = &ty(eg, a).shape;
        s.iter().product::<usize>() <= out[1]
            && (s.len() < 3 || s[s.len() - 2..] == [1, 1])
            && !(s.len() == 4 && s[0] != 1 && s[0] != out[0])
    };
    // a convolution mixes neighbours unless its kernel is 1x1
    if is_pointwise_conv(op) && ty(eg, args[1]).shape[2..] != [1, 1] {
        return None;
    }
    match op {
        Op::Binary(_) => args
            .iter()
            .map(|&a| {
                if full(a) {
                    Some(true)
                } else if per_channel(a) && ty(eg, a).rank() == 4 {
                    Some(false)
                } else {
                    None
                }
            })
            .collect(),
        Op::Fused(FusedOp::Conv {
            act,
            residual,
            bias,
            ..
        }) => {
            let mut v = vec![false; args.len()];
            v[0] = true;
            if *residual {
                *v.last_mut()? = true;
            }
            if *act == Act::DyRelu {
                let at = 2 + usize::from(*bias);
                for &a in &args[at..at + 2] {
                    if !per_channel(a) {
                        return None;
                    }
                }
            }
            Some(v)
        }
        _ => {
            let mut v = vec![false; args.len()];
            v[0] = true;
            Some(v)
        }
    }
}

/// Emits `view` applied to the contiguous class `x` (same shape as the
/// view's base): reshape into the view's factors in memory order,
/// transpose into the view's order, reshape to the view's shape.
pub(super) fn realize(r: &mut Recipe, x: R, base_shape: &[usize], view: &View) -> Option<R> {
    let mut factors: Vec<(usize, usize)> = view.dims.iter().flatten().copied().collect();
    let order: Vec<(usize, usize)> = factors.clone();
    factors.sort_by_key(|f| std::cmp::Reverse(f.1));
    // the factors must tile the base exactly (a permutation, no broadcast)
    let mut stride = 1;
    for f in factors.iter().rev() {
        if f.1 != stride {
            return None;
        }
        stride *= f.0;
    }
    if stride != base_shape.iter().product::<usize>() {
        return None;
    }
    let sizes: Vec<usize> = factors.iter().map(|f| f.0).collect();
    let perm: Vec<usize> = order
        .iter()
        .map(|f| factors.iter().position(|g| g == f))
        .collect::<Option<_>>()?;
    let t = r.reshape(x, &sizes);
    let t = r.transpose(t, &perm);
    Some(r.reshape(t, &view.shape()))
}

/// The `(ph, pw)` for which `view` is MobileViT's unfold of its base.
fn unfold_patch(view: &View, base_shape: &[usize]) -> Option<[usize; 2]> {
    let (h, w) = (base_shape[2], base_shape[3]);
    for ph in 1..=h {
        for pw in 1..=w {
            if h % ph != 0 || w % pw != 0 {
                continue;
            }
            let want = View::contiguous(view.base, base_shape)
                .reshape(&[base_shape[0], base_shape[1], h / ph, ph, w / pw, pw])
                .and_then(|v| v.transpose(&[0, 1, 3, 5, 2, 4]))
                .and_then(|v| {
                    v.reshape(&[base_shape[0], base_shape[1], ph * pw, (h / ph) * (w / pw)])
                });
            if want.as_ref() == Some(view) {
                return Some([ph, pw]);
            }
        }
    }
    None
}

fn commute(eg: &KGraph, c: Id, n: &KNode) -> Found {
    let Some(op) = n.as_op() else { return vec![] };
    let out = ty(eg, c).shape.clone();
    if out.len() != 4 {
        return vec![];
    }
    let Some(spatial) = spatial_operands(eg, op, &n.args, &out) else {
        return vec![];
    };
    let first = n.args[0];
    let mut found = Vec::new();
    for v in spatial_views(eg, first) {
        let base_shape = ty(eg, v.base).shape.clone();
        // every spatial operand: the same view of a base of the same shape
        let mut bases = Vec::new();
        for (i, &a) in n.args.iter().enumerate() {
            if !spatial[i] {
                bases.push(R::Old(a));
                continue;
            }
            let same = spatial_views(eg, a).into_iter().find(|w| {
                ty(eg, w.base).shape == base_shape
                    && View {
                        base: v.base,
                        dims: w.dims.clone(),
                    } == v
            });
            match same {
                Some(w) => bases.push(R::Old(w.base)),
                None => break,
            }
        }
        if bases.len() != n.args.len() {
            continue;
        }
        let new_op = match op {
            Op::Fused(FusedOp::SepAttn { patch: None }) => {
                let Some(p) = unfold_patch(&v, &base_shape) else {
                    continue;
                };
                Op::Fused(FusedOp::SepAttn { patch: Some(p) })
            }
            other => other.clone(),
        };
        // The result's base has the output's batch and channel axes and the
        // input base's spatial axes; the view keeps its spatial factors.
        let y_shape = [out[0], out[1], base_shape[2], base_shape[3]];
        let y_base = View::contiguous(v.base, &y_shape);
        let y_view = View {
            base: v.base,
            dims: vec![
                y_base.dims[0].clone(),
                y_base.dims[1].clone(),
                v.dims[2].clone(),
                v.dims[3].clone(),
            ],
        };
        let mut r = Recipe::new();
        let y = r.op(new_op, &bases);
        if let Some(root) = realize(&mut r, y, &y_shape, &y_view) {
            found.push((r, root));
        }
    }
    found
}
