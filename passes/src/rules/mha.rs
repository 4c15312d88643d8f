//! Multi-head attention recognition: `concat_j softmax(s·Q_j K_jᵀ) V_j`
//! spelled with reshapes, transposes, matmuls and a softmax becomes
//! `fused_mha`, absorbing the Q/K/V projections that exist (Mobile-Former's
//! Former projects only Q; a standard layer projects all three).
//!
//! Head split and merge are recognised through layout views
//! ([`super::view`]), so any arrangement of reshapes and transposes that
//! indexes the same elements matches; the scale may sit on Q, on Kᵀ or on
//! the logits (canonicalisation moves it to the logits), and a softmax
//! written over a transposed tensor is seen on the original layout.
//!
//! Not fused: a softmax over any axis but the keys', heads that differ
//! between Q, K and V, or a merge that does not invert the split.
//!
//! The attention-pattern matchers here (head split and merge, softmax
//! times values, scaled products, a map split per head) are shared with the
//! bridge rules (`m2f.rs`, `f2m.rs`) and cross-feature attention's
//! (`xca.rs`).

use egg::Id;
use kiln_ir::FusedOp;
use kiln_ir::op::{Float, Op};

use super::view::{DEPTH, View, is_view, views};
use super::{Found, R, Recipe, Rw, bias_arg, linear_maps, ops, rule, ty, with_scale};
use crate::lang::{KGraph, KNode};

/// The multi-head attention rules.
pub fn rules() -> Vec<Rw> {
    vec![
        rule(
            "mha-multi-head",
            |op| matches!(op, Op::Reshape { .. } | Op::Transpose { .. }),
            mha,
        ),
        rule("mha-single-head", |op| *op == Op::MatMul, single_head),
    ]
}

/// `(base, heads)` for every way class `id` is the head split of a token
/// tensor `base [B,T,D]`: `reshape [B,T,h,D/h]` then `transpose perm`.
pub fn head_split(eg: &KGraph, id: Id, perm: &[usize]) -> Vec<(Id, usize)> {
    let shape = &ty(eg, id).shape;
    if shape.len() != 4 {
        return vec![];
    }
    // the heads axis of the result is where axis 2 of the split went
    let Some(h_axis) = perm.iter().position(|&p| p == 2) else {
        return vec![];
    };
    let h = shape[h_axis];
    let mut out = Vec::new();
    for v in views(eg, id, DEPTH) {
        let bs = &ty(eg, v.base).shape;
        if bs.len() != 3 || h == 0 || !bs[2].is_multiple_of(h) {
            continue;
        }
        let want = View::contiguous(v.base, bs)
            .reshape(&[bs[0], bs[1], h, bs[2] / h])
            .and_then(|w| w.transpose(perm));
        if want.as_ref() == Some(&v) && !out.contains(&(v.base, h)) {
            out.push((v.base, h));
        }
    }
    out
}

/// Every `O` such that class `id` is `reshape(transpose(O, perm), shape)`
/// (in any spelling), `O` of rank 4.
pub fn merged_from(eg: &KGraph, id: Id, perm: &[usize]) -> Vec<Id> {
    let shape = ty(eg, id).shape.clone();
    let mut out = Vec::new();
    for v in views(eg, id, DEPTH) {
        let bs = &ty(eg, v.base).shape;
        if bs.len() != 4 || v.base == eg.find(id) {
            continue;
        }
        let want = View::contiguous(v.base, bs)
            .transpose(perm)
            .and_then(|w| w.reshape(&shape));
        if want.as_ref() == Some(&v) && !out.contains(&v.base) {
            out.push(v.base);
        }
    }
    out
}

/// `(A's logits S, V)` for every `softmax(S, axis) @ V` e-node of the class.
pub fn softmax_times(eg: &KGraph, o: Id, axis: usize) -> Vec<(Id, Id)> {
    let mut out = Vec::new();
    for (_, m) in ops(eg, o, |op| *op == Op::MatMul) {
        for (_, s) in ops(eg, m[0], move |op| *op == Op::Softmax { axis }) {
            out.push((s[0], m[1]));
        }
    }
    out
}

/// `(a, b, scale)` for every way the logits are `scale · (a @ b)`.
pub fn scaled_products(eg: &KGraph, s: Id) -> Vec<(Id, Id, f32)> {
    let mut out = Vec::new();
    for (m, scale) in with_scale(eg, s) {
        for (_, a) in ops(eg, m, |op| *op == Op::MatMul) {
            out.push((a[0], a[1], scale));
        }
    }
    out
}

/// One side of an attention: the token tensor and, if it comes from a
/// biased linear map, its input and parameters.
#[derive(Clone, Copy)]
struct Side {
    raw: Id,
    proj: Option<(Id, Id, Option<Id>)>,
}

fn side(eg: &KGraph, raw: Id) -> Side {
    Side {
        raw,
        proj: linear_maps(eg, raw).into_iter().next(),
    }
}

fn emit(
    eg: &KGraph,
    heads: usize,
    scale: f32,
    q: Side,
    k: Side,
    v: Side,
    project: bool,
) -> (Recipe, R) {
    emit_with(eg, heads, scale, [q, k, v], !project, false)
}

/// The fused attention over sides `[q, k, v]`, absorbing their projections
/// unless `raw`; with `transpose_k`, `k.raw` holds `kᵀ` and the recipe
/// transposes it back.
fn emit_with(
    eg: &KGraph,
    heads: usize,
    scale: f32,
    sides: [Side; 3],
    raw: bool,
    transpose_k: bool,
) -> (Recipe, R) {
    let pick = |s: Side| if raw { None } else { s.proj };
    let mut r = Recipe::new();
    let mut args = Vec::new();
    for (i, s) in sides.into_iter().enumerate() {
        let x = R::Old(pick(s).map_or(s.raw, |p| p.0));
        args.push(if i == 1 && transpose_k {
            r.transpose(x, &[0, 2, 1])
        } else {
            x
        });
    }
    for s in sides {
        if let Some((_, w, b)) = pick(s) {
            args.push(R::Old(w));
            let b = bias_arg(&mut r, eg, w, b);
            args.push(b);
        }
    }
    let [q, k, v] = sides;
    let f = FusedOp::Mha {
        heads,
        scale: Float(scale),
        proj_q: pick(q).is_some(),
        proj_k: pick(k).is_some(),
        proj_v: pick(v).is_some(),
    };
    let y = r.fused(f, &args);
    (r, y)
}

fn variants(eg: &KGraph, heads: usize, scale: f32, q: Id, k: Id, v: Id) -> Found {
    let (q, k, v) = (side(eg, q), side(eg, k), side(eg, v));
    let mut out = vec![emit(eg, heads, scale, q, k, v, false)];
    if q.proj.is_some() || k.proj.is_some() || v.proj.is_some() {
        out.push(emit(eg, heads, scale, q, k, v, true));
    }
    out
}

fn mha(eg: &KGraph, c: Id, _n: &KNode) -> Found {
    if ty(eg, c).rank() != 3 {
        return vec![];
    }
    let mut out = Vec::new();
    for o in merged_from(eg, c, &[0, 2, 1, 3]) {
        for (s, vh) in softmax_times(eg, o, 3) {
            for (qh, kt, scale) in scaled_products(eg, s) {
                for (q, h) in head_split(eg, qh, &[0, 2, 1, 3]) {
                    for (k, hk) in head_split(eg, kt, &[0, 2, 3, 1]) {
                        for (v, hv) in head_split(eg, vh, &[0, 2, 1, 3]) {
                            if h == hk && h == hv {
                                out.extend(variants(eg, h, scale, q, k, v));
                            }
                        }
                    }
                }
            }
        }
    }
    out
}

/// Rank-3 attention without a head split: `softmax(s·q kᵀ, 2) @ v`. When
/// no class holds `k` itself (PyTorch's `q @ pixels` with `pixels [N,C,L]`
/// used as `kᵀ` directly), the recipe adds `k = transpose(kᵀ)`, which the
/// e-graph shares with an existing `pixels.transpose(1, 2)` if there is one.
fn single_head(eg: &KGraph, c: Id, _n: &KNode) -> Found {
    if ty(eg, c).rank() != 3 {
        return vec![];
    }
    let mut out = Vec::new();
    for (s, v) in softmax_times(eg, c, 2) {
        for (q, kt, scale) in scaled_products(eg, s) {
            let kts = ty(eg, kt).shape.clone();
            let mut found = false;
            for w in views(eg, kt, DEPTH) {
                let bs = &ty(eg, w.base).shape;
                if bs.len() != 3 {
                    continue;
                }
                let want = View::contiguous(w.base, bs).transpose(&[0, 2, 1]);
                if want.as_ref() == Some(&w) && bs[..] == [kts[0], kts[2], kts[1]] {
                    out.extend(variants(eg, 1, scale, q, w.base, v));
                    found = true;
                }
            }
            if !found && kts.len() == 3 {
                let (qs, vs) = (side(eg, q), side(eg, v));
                let k = Side {
                    raw: kt,
                    proj: None,
                };
                out.push(emit_with(eg, 1, scale, [qs, k, vs], true, true));
                if qs.proj.is_some() || vs.proj.is_some() {
                    out.push(emit_with(eg, 1, scale, [qs, k, vs], false, true));
                }
            }
        }
    }
    out
}

/// Whether class `id` is `base` reshaped to `shape` (any spelling).
pub fn is_reshape_of(eg: &KGraph, id: Id, base: Id, shape: &[usize]) -> bool {
    View::contiguous(base, &ty(eg, base).shape)
        .reshape(shape)
        .is_some_and(|w| is_view(eg, id, &w))
}

/// `x [N,C,H,W]` reshaped per head: `[N,h,C/h,H·W]` (then `perm`).
pub fn map_heads(eg: &KGraph, x: Id, h: usize, perm: Option<&[usize]>) -> Option<View> {
    let s = &ty(eg, x).shape;
    if s.len() != 4 || h == 0 || !s[1].is_multiple_of(h) {
        return None;
    }
    let v = View::contiguous(x, s).reshape(&[s[0], h, s[1] / h, s[2] * s[3]])?;
    match perm {
        Some(p) => v.transpose(p),
        None => Some(v),
    }
}

/// The 4-D map classes `x` (with head count) of which class `id` is the
/// per-head reshape (then `perm`).
pub fn map_bases(eg: &KGraph, id: Id, h: usize, perm: Option<&[usize]>) -> Vec<Id> {
    views(eg, id, DEPTH)
        .into_iter()
        .map(|v| v.base)
        .filter(|&b| map_heads(eg, b, h, perm).is_some_and(|w| is_view(eg, id, &w)))
        .collect()
}
