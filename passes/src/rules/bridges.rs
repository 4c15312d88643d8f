//! Mobile-Former's two bridges (models/mobile-former.md §2.3, §2.8).
//!
//! Mobile→Former: tokens attend over the flattened feature map with no key
//! or value projection on the map side, the result is gated by
//! `2·hsig(z Wa + ba)`, projected, added to the tokens and layer-normed —
//! about 25 primitive ops become one `fused_m2f`.
//!
//! Former→Mobile: every pixel's per-head feature slice attends over the
//! projected tokens and the result is added back to the map — `fused_f2m`.
//!
//! F2M with one head is also written without a head axis at all
//! (`softmax(yᵀ kᵀ) v` on rank-3 tensors, as a PyTorch block does); that
//! spelling is matched too.
//!
//! Both match through layout views, so the flattening and head split may be
//! spelled with any reshapes and transposes. The attention must be the
//! bridge's own: the queries, gate and residual must all read the same
//! tokens (`z`), and for F2M the queries and the residual the same map.

use egg::Id;
use kiln_ir::op::{BinaryOp, Float, Op};
use kiln_ir::{Act, FusedOp};

use super::attention::{head_split, merged_from, scaled_products, softmax_times};
use super::view::{View, is_view};
use super::{
    Found, R, Recipe, Rw, bias_arg, binary, hard_sigmoids, linear_maps, ops, rule, scaled_by, ty,
};
use crate::lang::{KGraph, KNode};

/// The bridge rules.
pub fn rules() -> Vec<Rw> {
    vec![
        rule(
            "bridge-mobile-to-former",
            |op| matches!(op, Op::LayerNorm { .. }),
            m2f,
        ),
        rule(
            "bridge-former-to-mobile",
            |op| *op == Op::Binary(BinaryOp::Add),
            f2m,
        ),
    ]
}

/// `x [N,C,H,W]` reshaped per head: `[N,h,C/h,H·W]` (then `perm`).
fn map_heads(eg: &KGraph, x: Id, h: usize, perm: Option<&[usize]>) -> Option<View> {
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
fn map_bases(eg: &KGraph, id: Id, h: usize, perm: Option<&[usize]>) -> Vec<Id> {
    super::view::views(eg, id, super::view::DEPTH)
        .into_iter()
        .map(|v| v.base)
        .filter(|&b| map_heads(eg, b, h, perm).is_some_and(|w| is_view(eg, id, &w)))
        .collect()
}

/// `(og, wo, bo, z)` for `z + (og @ wo + bo)` in both spellings: a plain
/// add, or a residual linear epilogue.
fn projected_residuals(eg: &KGraph, r: Id) -> Vec<(Id, Id, Option<Id>, Id)> {
    let mut out = Vec::new();
    for (z, p) in binary(eg, r, BinaryOp::Add) {
        for (og, wo, bo) in linear_maps(eg, p) {
            out.push((og, wo, bo, z));
        }
    }
    for (op, a) in ops(eg, r, |op| {
        matches!(
            op,
            Op::Fused(FusedOp::Linear {
                act: Act::None,
                residual: true,
                ..
            })
        )
    }) {
        if let Op::Fused(FusedOp::Linear { bias, .. }) = op {
            let b = bias.then(|| a[2]);
            out.push((a[0], a[1], b, *a.last().expect("residual operand")));
        }
    }
    out
}

/// An operand of a bridge: an existing class, or the bias of weight `w`
/// (zeros when the layer had none).
enum A {
    V(Id),
    B(Id, Option<Id>),
}

/// The operands in order, biases filled in by [`bias_arg`].
fn operands(r: &mut Recipe, eg: &KGraph, parts: &[A]) -> Vec<R> {
    parts
        .iter()
        .map(|p| match p {
            A::V(id) => R::Old(*id),
            A::B(w, b) => bias_arg(r, eg, *w, *b),
        })
        .collect()
}

/// Where a bridge's queries or gate come from.
#[derive(Clone, Copy)]
enum Src {
    /// a linear map of the tokens: weight and bias
    Proj(Id, Option<Id>),
    /// given as a class of the final shape
    Given(Id),
    /// given in head-split layout `[N,h,M,Ch]` (merged by the recipe)
    GivenHeads(Id),
}

/// `(source, heads)` of the queries behind the head-split class `qh`.
fn query_sources(eg: &KGraph, qh: Id, z: Id) -> Vec<(Src, usize)> {
    let mut out = Vec::new();
    for (q, h) in head_split(eg, qh, &[0, 2, 1, 3]) {
        match linear_maps(eg, q).into_iter().find(|l| l.0 == z) {
            Some((_, w, b)) => out.push((Src::Proj(w, b), h)),
            None => out.push((Src::Given(q), h)),
        }
    }
    let s = &ty(eg, qh).shape;
    if out.is_empty() && s.len() == 4 {
        // e.g. queries of constant tokens, folded by an importer into a
        // weight already split into heads
        out.push((Src::GivenHeads(qh), s[1]));
    }
    out
}

/// Gate sources for `o ⊙ g`: `2·hsig(z Wa + ba)`, or `g` itself.
fn gate_sources(eg: &KGraph, g: Id, z: Id) -> Vec<Src> {
    let mut out: Vec<Src> = scaled_by(eg, g, 2.0)
        .into_iter()
        .flat_map(|h| hard_sigmoids(eg, h))
        .flat_map(|a| linear_maps(eg, a))
        .filter(|&(x, _, _)| x == z)
        .map(|(_, w, b)| Src::Proj(w, b))
        .collect();
    if out.is_empty() {
        out.push(Src::Given(g));
    }
    out
}

/// Pushes a source's operands; `true` if it was a projection.
fn push_src(r: &mut Recipe, eg: &KGraph, args: &mut Vec<R>, src: Src) -> bool {
    match src {
        Src::Proj(w, b) => {
            args.push(R::Old(w));
            args.push(bias_arg(r, eg, w, b));
            true
        }
        Src::Given(q) => {
            args.push(R::Old(q));
            false
        }
        Src::GivenHeads(qh) => {
            let s = ty(eg, qh).shape.clone();
            let t = r.transpose(R::Old(qh), &[0, 2, 1, 3]);
            args.push(r.reshape(t, &[s[0], s[2], s[1] * s[3]]));
            false
        }
    }
}

fn m2f(eg: &KGraph, c: Id, n: &KNode) -> Found {
    let Some(&Op::LayerNorm { axis, eps }) = n.as_op() else {
        return vec![];
    };
    if ty(eg, c).rank() != 3 || axis != 2 || n.args.len() != 3 {
        return vec![];
    }
    let (gamma, beta) = (n.args[1], n.args[2]);
    let mut out = Vec::new();
    for (og, wo, bo, z) in projected_residuals(eg, n.args[0]) {
        for (o, g) in binary(eg, og, BinaryOp::Mul) {
            if ty(eg, o) != ty(eg, g) {
                continue;
            }
            let gates = gate_sources(eg, g, z);
            for oh in merged_from(eg, o, &[0, 2, 1, 3]) {
                for (s, xv) in softmax_times(eg, oh, 3) {
                    for (qh, xk, scale) in scaled_products(eg, s) {
                        for (q, h) in query_sources(eg, qh, z) {
                            for x in map_bases(eg, xk, h, None) {
                                if !map_bases(eg, xv, h, Some(&[0, 1, 3, 2])).contains(&x) {
                                    continue;
                                }
                                for &gate in &gates {
                                    let mut r = Recipe::new();
                                    let mut args = vec![R::Old(x), R::Old(z)];
                                    let proj_q = push_src(&mut r, eg, &mut args, q);
                                    let gate = push_src(&mut r, eg, &mut args, gate);
                                    args.push(R::Old(wo));
                                    args.push(bias_arg(&mut r, eg, wo, bo));
                                    args.push(R::Old(gamma));
                                    args.push(R::Old(beta));
                                    let f = FusedOp::M2fBridge {
                                        heads: h,
                                        scale: Float(scale),
                                        eps,
                                        proj_q,
                                        gate,
                                    };
                                    let y = r.fused(f, &args);
                                    out.push((r, y));
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    out
}

fn f2m(eg: &KGraph, c: Id, _n: &KNode) -> Found {
    if ty(eg, c).rank() != 4 {
        return vec![];
    }
    let mut out = Vec::new();
    for (y, o) in binary(eg, c, BinaryOp::Add) {
        if ty(eg, y) != ty(eg, c) || ty(eg, o) != ty(eg, c) {
            continue;
        }
        f2m_single_head(eg, y, o, &mut out);
        for oh in merged_from(eg, o, &[0, 1, 3, 2]) {
            for (s, vh) in softmax_times(eg, oh, 3) {
                for (yq, kt, scale) in scaled_products(eg, s) {
                    for (k, h) in head_split(eg, kt, &[0, 2, 3, 1]) {
                        if !map_bases(eg, yq, h, Some(&[0, 1, 3, 2])).contains(&eg.find(y)) {
                            continue;
                        }
                        for (v, hv) in head_split(eg, vh, &[0, 2, 1, 3]) {
                            if hv != h {
                                continue;
                            }
                            for (z, wk, bk) in linear_maps(eg, k) {
                                for (z2, wv, bv) in linear_maps(eg, v) {
                                    if z2 != z {
                                        continue;
                                    }
                                    let f = FusedOp::F2mBridge {
                                        heads: h,
                                        scale: Float(scale),
                                    };
                                    let mut r = Recipe::new();
                                    let args = operands(
                                        &mut r,
                                        eg,
                                        &[
                                            A::V(y),
                                            A::V(z),
                                            A::V(wk),
                                            A::B(wk, bk),
                                            A::V(wv),
                                            A::B(wv, bv),
                                        ],
                                    );
                                    let yy = r.fused(f, &args);
                                    out.push((r, yy));
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    out
}

/// The rank-3 (one head, no head axis) spelling of F2M: `y + reshape(
/// transpose(softmax(s · Yᵀ Kᵀ, 2) V))` with `Yᵀ = transpose(reshape(y,
/// [N,C,L]))`, `K = z Wk + bk`, `V = z Wv + bv`.
fn f2m_single_head(eg: &KGraph, y: Id, o: Id, out: &mut Found) {
    let ys = ty(eg, y).shape.clone();
    let [n, ch, h, w] = ys[..] else {
        return;
    };
    let l = h * w;
    let Some(yq_want) = View::contiguous(eg.find(y), &ys)
        .reshape(&[n, ch, l])
        .and_then(|v| v.transpose(&[0, 2, 1]))
    else {
        return;
    };
    for ov in super::view::views(eg, o, super::view::DEPTH) {
        if ty(eg, ov.base).shape[..] != [n, l, ch] {
            continue;
        }
        let want = View::contiguous(ov.base, &[n, l, ch])
            .transpose(&[0, 2, 1])
            .and_then(|v| v.reshape(&ys));
        if want.as_ref() != Some(&ov) {
            continue;
        }
        for (s, v) in softmax_times(eg, ov.base, 2) {
            for (yq, kt, scale) in scaled_products(eg, s) {
                if !is_view(eg, yq, &yq_want) {
                    continue;
                }
                for kv in super::view::views(eg, kt, super::view::DEPTH) {
                    let ks = ty(eg, kv.base).shape.clone();
                    let kwant = View::contiguous(kv.base, &ks).transpose(&[0, 2, 1]);
                    if ks.len() != 3 || ks[2] != ch || kwant.as_ref() != Some(&kv) {
                        continue;
                    }
                    for (z, wk, bk) in linear_maps(eg, kv.base) {
                        for (z2, wv, bv) in linear_maps(eg, v) {
                            if z2 != z {
                                continue;
                            }
                            let f = FusedOp::F2mBridge {
                                heads: 1,
                                scale: Float(scale),
                            };
                            let mut r = Recipe::new();
                            let args = operands(
                                &mut r,
                                eg,
                                &[
                                    A::V(y),
                                    A::V(z),
                                    A::V(wk),
                                    A::B(wk, bk),
                                    A::V(wv),
                                    A::B(wv, bv),
                                ],
                            );
                            let yy = r.fused(f, &args);
                            out.push((r, yy));
                        }
                    }
                }
            }
        }
    }
}
