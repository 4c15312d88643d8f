//! Mobile-Former's Mobile→Former bridge (models/mobile-former.md §2.3):
//! tokens attend over the flattened feature map with no key or value
//! projection on the map side, the result is gated by `2·hsig(z Wa + ba)`,
//! projected, added to the tokens and layer-normed — about 25 primitive ops
//! become one `fused_m2f`.
//!
//! It matches through layout views, so the flattening and head split may be
//! spelled with any reshapes and transposes. The attention must be the
//! bridge's own: the queries, gate and residual must all read the same
//! tokens (`z`).

use egg::Id;
use kiln_ir::op::{BinaryOp, Float, Op};
use kiln_ir::{Act, FusedOp};

use super::mha::{head_split, map_bases, merged_from, scaled_products, softmax_times};
use super::{
    Found, R, Recipe, Rw, bias_arg, binary, hard_sigmoids, linear_maps, ops, rule, scaled_by, ty,
};
use crate::lang::{KGraph, KNode};

/// The Mobile→Former rules.
pub fn rules() -> Vec<Rw> {
    vec![rule(
        "m2f-bridge",
        |op| matches!(op, Op::LayerNorm { .. }),
        m2f,
    )]
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
                                    let f = FusedOp::M2f {
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
