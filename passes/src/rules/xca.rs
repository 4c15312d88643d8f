//! XFormer-R cross-feature attention (XCA form, models/xformer.md §2 — a
//! reconstruction): per head, Q and K feature columns L2-normalised over the
//! tokens, `A = softmax(τ · Q̂ᵀK̂)` over key features, output `V Aᵀ` —
//! one `fused_xca` with the Q/K/V projections and the temperature.
//!
//! The normalisation is recognised as `x / max(sqrt(Σ x²), eps)` (square as
//! `x·x` or `x^2`, either order of the max); the temperature as a constant
//! of `h` elements broadcast per head.

use egg::Id;
use kiln_ir::FusedOp;
use kiln_ir::op::{BinaryOp, Float, Op, ReduceKind, UnaryOp};

use super::mha::{merged_from, softmax_times};
use super::view::{DEPTH, View, views};
use super::{
    Found, R, Recipe, Rw, bias_arg, binary, is_scalar, konst, linear_maps, ops, rule, scalar, ty,
    unary,
};
use crate::lang::{KGraph, KNode};

/// The cross-feature-attention rules.
pub fn rules() -> Vec<Rw> {
    vec![rule(
        "xca-xformer",
        |op| matches!(op, Op::Reshape { .. } | Op::Transpose { .. }),
        xca,
    )]
}

/// `(x, eps)` for class `id` = `x / max(sqrt(sum(x², axis 3)), eps)`.
fn l2_normalized(eg: &KGraph, id: Id) -> Vec<(Id, f32)> {
    let mut out = Vec::new();
    for (x, den) in binary(eg, id, BinaryOp::Div) {
        for (nrm, e) in binary(eg, den, BinaryOp::Max) {
            let Some(eps) = scalar(eg, e) else { continue };
            for ss in unary(eg, nrm, UnaryOp::Sqrt) {
                let sums = ops(eg, ss, |op| {
                    *op == Op::Reduce {
                        kind: ReduceKind::Sum,
                        axes: vec![3],
                        keepdims: true,
                    }
                });
                for (_, sq) in sums {
                    let squares = binary(eg, sq[0], BinaryOp::Mul)
                        .into_iter()
                        .any(|(a, b)| a == x && b == x)
                        || binary(eg, sq[0], BinaryOp::Pow)
                            .into_iter()
                            .any(|(a, p)| a == x && is_scalar(eg, p, 2.0));
                    if squares {
                        out.push((x, eps));
                    }
                }
            }
        }
    }
    out
}

/// `(tokens [N,T,D], heads)` for class `id` = tokens in feature-row layout
/// `[N,h,dh,T]` (reshape `[N,T,h,dh]`, transpose `[0,2,3,1]`).
fn feature_rows(eg: &KGraph, id: Id) -> Vec<(Id, usize)> {
    let s = &ty(eg, id).shape;
    if s.len() != 4 {
        return vec![];
    }
    let h = s[1];
    if h == 0 {
        return vec![];
    }
    let mut out = Vec::new();
    for v in views(eg, id, DEPTH) {
        let bs = &ty(eg, v.base).shape;
        if bs.len() != 3 || !bs[2].is_multiple_of(h) {
            continue;
        }
        let want = View::contiguous(v.base, bs)
            .reshape(&[bs[0], bs[1], h, bs[2] / h])
            .and_then(|w| w.transpose(&[0, 2, 3, 1]));
        if want.as_ref() == Some(&v) && !out.contains(&(v.base, h)) {
            out.push((v.base, h));
        }
    }
    out
}

/// `(a, b)` for class `id` = `a @ transpose(b, [0,1,3,2])`.
fn times_transposed(eg: &KGraph, id: Id) -> Vec<(Id, Id)> {
    let mut out = Vec::new();
    for (_, m) in ops(eg, id, |op| *op == Op::MatMul) {
        for v in views(eg, m[1], DEPTH) {
            let bs = &ty(eg, v.base).shape;
            if bs.len() == 4
                && View::contiguous(v.base, bs)
                    .transpose(&[0, 1, 3, 2])
                    .as_ref()
                    == Some(&v)
            {
                out.push((m[0], v.base));
            }
        }
    }
    out
}

fn xca(eg: &KGraph, c: Id, _n: &KNode) -> Found {
    if ty(eg, c).rank() != 3 {
        return vec![];
    }
    let mut out = Vec::new();
    for o in merged_from(eg, c, &[0, 3, 1, 2]) {
        for (st, vf) in softmax_times(eg, o, 3) {
            for (s, tau_b) in binary(eg, st, BinaryOp::Mul) {
                let h = ty(eg, o).shape[1];
                if !konst(eg, tau_b) || ty(eg, tau_b).numel() != h {
                    continue;
                }
                let tbs = &ty(eg, tau_b).shape;
                let per_head = tbs.len() == 4 && tbs[1] == h || tbs.len() == 3 && tbs[0] == h;
                if !per_head && h != 1 {
                    continue;
                }
                for (qn, kn) in times_transposed(eg, s) {
                    for (qf, eps) in l2_normalized(eg, qn) {
                        for (kf, eps_k) in l2_normalized(eg, kn) {
                            if eps_k != eps {
                                continue;
                            }
                            let sides = [qf, kf, vf].map(|f| feature_rows(eg, f));
                            for &(q, hq) in &sides[0] {
                                for &(k, hk) in &sides[1] {
                                    for &(v, hv) in &sides[2] {
                                        if (hq, hk, hv) != (h, h, h) {
                                            continue;
                                        }
                                        out.extend(emit(eg, h, eps, q, k, v, tau_b));
                                    }
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

fn emit(eg: &KGraph, h: usize, eps: f32, q: Id, k: Id, v: Id, tau_b: Id) -> Found {
    let mut out = Vec::new();
    for (x, wq, bq) in linear_maps(eg, q) {
        for (xk, wk, bk) in linear_maps(eg, k) {
            for (xv, wv, bv) in linear_maps(eg, v) {
                if xk != x || xv != x {
                    continue;
                }
                let mut r = Recipe::new();
                let tau = r.reshape(R::Old(tau_b), &[h]);
                let f = FusedOp::Xca {
                    heads: h,
                    eps: Float(eps),
                };
                let mut args = vec![R::Old(x)];
                for (w, b) in [(wq, bq), (wk, bk), (wv, bv)] {
                    args.push(R::Old(w));
                    let b = bias_arg(&mut r, eg, w, b);
                    args.push(b);
                }
                args.push(tau);
                let y = r.fused(f, &args);
                out.push((r, y));
            }
        }
    }
    out
}
