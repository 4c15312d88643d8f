//! Mobile-Former's Former→Mobile bridge (models/mobile-former.md §2.8):
//! every pixel's per-head feature slice attends over the projected tokens
//! and the result is added back to the map — `fused_f2m`.
//!
//! F2M with one head is also written without a head axis at all
//! (`softmax(yᵀ kᵀ) v` on rank-3 tensors, as a PyTorch block does); that
//! spelling is matched too.
//!
//! Both spellings match through layout views, so the flattening and head
//! split may be spelled with any reshapes and transposes. The attention
//! must be the bridge's own: the queries and the residual must read the
//! same map.

use egg::Id;
use kiln_ir::FusedOp;
use kiln_ir::op::{BinaryOp, Float, Op};

use super::mha::{head_split, map_bases, merged_from, scaled_products, softmax_times};
use super::view::{View, is_view};
use super::{Found, R, Recipe, Rw, bias_arg, binary, linear_maps, rule, ty};
use crate::lang::{KGraph, KNode};

/// The Former→Mobile rules.
pub fn rules() -> Vec<Rw> {
    vec![rule(
        "f2m-bridge",
        |op| *op == Op::Binary(BinaryOp::Add),
        f2m,
    )]
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

/// A bridge from `y` for every pair of linear maps of one token tensor `z`
/// that give the keys `k` and the values `v` (`z Wk + bk`, `z Wv + bv`).
fn push_bridges(eg: &KGraph, y: Id, k: Id, v: Id, heads: usize, scale: f32, out: &mut Found) {
    for (z, wk, bk) in linear_maps(eg, k) {
        for (z2, wv, bv) in linear_maps(eg, v) {
            if z2 != z {
                continue;
            }
            let f = FusedOp::F2m {
                heads,
                scale: Float(scale),
            };
            let mut r = Recipe::new();
            let parts = [
                A::V(y),
                A::V(z),
                A::V(wk),
                A::B(wk, bk),
                A::V(wv),
                A::B(wv, bv),
            ];
            let args = operands(&mut r, eg, &parts);
            let yy = r.fused(f, &args);
            out.push((r, yy));
        }
    }
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
                            push_bridges(eg, y, k, v, h, scale, &mut out);
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
                    push_bridges(eg, y, kv.base, v, 1, scale, out);
                }
            }
        }
    }
}
