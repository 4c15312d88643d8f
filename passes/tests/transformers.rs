//! MobileViTv2 separable self-attention and XFormer-R cross-feature
//! attention, positive and negative cases.

mod common;

use common::mf::split_heads;
use common::{B, assert_same_function, histogram};
use kiln_ir::op::{BinaryOp, Float, Op, ReduceKind, UnaryOp};
use kiln_ir::{Model, Value};
use kiln_passes::{OptOptions, optimize};

fn count(m: &Model, op: &str) -> usize {
    histogram(m).get(op).copied().unwrap_or(0)
}

fn optimise(m: &Model) -> Model {
    let (o, _) = optimize(m, &OptOptions::default()).unwrap();
    assert_same_function(m, &o);
    o
}

fn conv1x1(b: &mut B, x: Value, cout: usize) -> Value {
    b.conv(x, cout, 1, 1, 1, true)
}

/// One pre-norm separable-attention sub-layer of MobileViTv2 (§2.2–2.4) on
/// an unfolded `[N, d, P, Np]` tensor: `u + OutProj(SepAttn(GN(u)))`.
fn sep_attn_layer(use_split: bool, softmax_axis: usize) -> Model {
    let (d, p, np) = (8, 4, 9);
    let mut b = B::new("sep_attn");
    let u = b.input("u", &[1, d, p, np]);
    let g = b.positive("gn.g", &[d], 0.0);
    let be = b.weight("gn.b", &[d], 0.1);
    let n = b.op(
        Op::GroupNorm {
            groups: 1,
            eps: Float(1e-5),
        },
        &[u, g, be],
    );
    let qkv = conv1x1(&mut b, n, 1 + 2 * d);
    let (q, k, v) = if use_split {
        let parts =
            b.g.add_multi(
                Op::Split {
                    axis: 1,
                    sizes: vec![1, d, d],
                },
                &[qkv],
            )
            .unwrap();
        (parts[0], parts[1], parts[2])
    } else {
        let mut sl = |from: i64, to: i64| {
            b.op(
                Op::Slice {
                    axes: vec![1],
                    starts: vec![from],
                    ends: vec![to],
                    steps: vec![1],
                },
                &[qkv],
            )
        };
        (
            sl(0, 1),
            sl(1, 1 + d as i64),
            sl(1 + d as i64, 1 + 2 * d as i64),
        )
    };
    let s = b.op(Op::Softmax { axis: softmax_axis }, &[q]);
    let sk = b.bin(BinaryOp::Mul, k, s);
    let cv = b.op(
        Op::Reduce {
            kind: ReduceKind::Sum,
            axes: vec![3],
            keepdims: true,
        },
        &[sk],
    );
    let rv = b.un(UnaryOp::Relu, v);
    let y = b.bin(BinaryOp::Mul, rv, cv);
    let out = conv1x1(&mut b, y, d);
    let r = b.bin(BinaryOp::Add, u, out);
    b.finish(&[r])
}

#[test]
fn separable_attention_with_split_or_slices() {
    for split in [true, false] {
        let o = optimise(&sep_attn_layer(split, 3));
        assert_eq!(count(&o, "fused_sep_attn"), 1, "split={split}");
        assert_eq!(count(&o, "softmax"), 0);
        assert_eq!(count(&o, "group_norm"), 1);
    }
}

#[test]
fn separable_attention_over_the_pixel_slots_is_not_fused() {
    // softmax over axis 2 (the 4 pixels of a patch) is a different function
    let o = optimise(&sep_attn_layer(true, 2));
    assert_eq!(count(&o, "fused_sep_attn"), 0);
    assert_eq!(count(&o, "softmax"), 1);
}

/// `x / max(sqrt(sum(x², -1)), eps)`
fn l2_normalize(b: &mut B, x: Value, pow: bool) -> Value {
    let sq = if pow {
        let two = b.scalar(2.0);
        b.bin(BinaryOp::Pow, x, two)
    } else {
        b.bin(BinaryOp::Mul, x, x)
    };
    let ss = b.op(
        Op::Reduce {
            kind: ReduceKind::Sum,
            axes: vec![3],
            keepdims: true,
        },
        &[sq],
    );
    let n = b.un(UnaryOp::Sqrt, ss);
    let eps = b.scalar(1e-12);
    let n = b.bin(BinaryOp::Max, n, eps);
    b.bin(BinaryOp::Div, x, n)
}

/// XFA-R (models/xformer.md §2) in XCiT's spelling, before `Wo`.
fn xca(heads_of_tau: usize, softmax_axis: usize) -> Model {
    let (t, d, h) = (9, 16, 4);
    let mut b = B::new("xca");
    let x = b.input("x", &[1, t, d]);
    let rows = |b: &mut B, v: Value| {
        let hs = split_heads(b, v, h);
        b.transpose(hs, &[0, 1, 3, 2])
    };
    let q = b.linear(x, d);
    let q = rows(&mut b, q);
    let k = b.linear(x, d);
    let k = rows(&mut b, k);
    let v = b.linear(x, d);
    let v = rows(&mut b, v);
    let q = l2_normalize(&mut b, q, false);
    let k = l2_normalize(&mut b, k, true);
    let kt = b.transpose(k, &[0, 1, 3, 2]);
    let a = b.op(Op::MatMul, &[q, kt]);
    let tau = b.positive("tau", &[heads_of_tau, 1, 1], 0.5);
    let a = b.bin(BinaryOp::Mul, a, tau);
    let a = b.op(Op::Softmax { axis: softmax_axis }, &[a]);
    let o = b.op(Op::MatMul, &[a, v]);
    let o = b.transpose(o, &[0, 3, 1, 2]);
    let o = b.reshape(o, &[1, t, d]);
    b.finish(&[o])
}

#[test]
fn cross_feature_attention_is_recognised() {
    let o = optimise(&xca(4, 3));
    assert_eq!(count(&o, "fused_xca"), 1);
    assert_eq!(o.graph.op_count(), 1);
}

#[test]
fn cross_feature_attention_with_the_wrong_softmax_axis_is_not() {
    let o = optimise(&xca(4, 2));
    assert_eq!(count(&o, "fused_xca"), 0);
}

#[test]
fn cross_feature_attention_with_a_shared_temperature_is_not_per_head() {
    // one temperature for all heads broadcasts too, but it is not the
    // per-head τ the fused op takes; a [1,1,1] τ must not be taken for [h]
    let o = optimise(&xca(1, 3));
    assert_eq!(count(&o, "fused_xca"), 0);
}

/// unfold -> op -> fold around a 3x3 (pad 0) conv: not spatially uniform,
/// so the unfold must not be moved across it (and the result must match).
#[test]
fn a_3x3_conv_does_not_commute_with_unfold() {
    let mut b = B::new("no_commute");
    let x = b.input("x", &[1, 4, 6, 6]);
    let r = b.reshape(x, &[1, 4, 3, 2, 3, 2]);
    let t = b.transpose(r, &[0, 1, 3, 5, 2, 4]);
    let u = b.reshape(t, &[1, 4, 4, 9]);
    let w = b.weight("w", &[4, 4, 3, 3], 0.2);
    let y = b.op(
        Op::Conv2d {
            stride: [1, 1],
            pad: [1, 1, 1, 1],
            dilation: [1, 1],
            groups: 1,
        },
        &[u, w],
    );
    let m = b.finish(&[y]);
    let o = optimise(&m);
    assert_eq!(count(&o, "transpose"), 1);
}
