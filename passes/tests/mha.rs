//! Multi-head attention recognition (`rules/mha.rs`): positive and
//! negative cases, each checked against the evaluator.

mod common;

use common::{B, assert_same_function, histogram};
use kiln_ir::op::{BinaryOp, Op};
use kiln_ir::{Model, Value};
use kiln_passes::{OptOptions, optimize};

/// `[B,T,D]` -> `[B,h,T,dh]`
fn split_heads(b: &mut B, x: Value, h: usize) -> Value {
    let s = b.shape(x);
    let r = b.reshape(x, &[s[0], s[1], h, s[2] / h]);
    b.transpose(r, &[0, 2, 1, 3])
}

/// `[B,h,T,dh]` -> `[B,T,h·dh]`
fn merge_heads(b: &mut B, o: Value) -> Value {
    let s = b.shape(o);
    let t = b.transpose(o, &[0, 2, 1, 3]);
    b.reshape(t, &[s[0], s[2], s[1] * s[3]])
}

struct AttnSpec {
    heads: usize,
    softmax_axis: usize,
    scale_on_q: bool,
    project_kv: bool,
}

const FORMER: AttnSpec = AttnSpec {
    heads: 4,
    softmax_axis: 3,
    scale_on_q: false,
    project_kv: false,
};

/// The Former's attention (models/mobile-former.md §2.4) or a variant.
fn attention(spec: &AttnSpec) -> Model {
    let (m, d) = (6, 16);
    let mut b = B::new("attn");
    let z = b.input("z", &[1, m, d]);
    let q = b.linear(z, d);
    let (k, v) = if spec.project_kv {
        (b.linear(z, d), b.linear(z, d))
    } else {
        (z, z)
    };
    let dh = d / spec.heads;
    let scale = b.scalar(1.0 / (dh as f32).sqrt());
    let q = if spec.scale_on_q {
        b.bin(BinaryOp::Mul, q, scale)
    } else {
        q
    };
    let qh = split_heads(&mut b, q, spec.heads);
    let kh = split_heads(&mut b, k, spec.heads);
    let kt = b.transpose(kh, &[0, 1, 3, 2]);
    let s = b.op(Op::MatMul, &[qh, kt]);
    let s = if spec.scale_on_q {
        s
    } else {
        b.bin(BinaryOp::Mul, s, scale)
    };
    let a = b.op(
        Op::Softmax {
            axis: spec.softmax_axis,
        },
        &[s],
    );
    let vh = split_heads(&mut b, v, spec.heads);
    let o = b.op(Op::MatMul, &[a, vh]);
    let o = merge_heads(&mut b, o);
    b.finish(&[o])
}

fn count(m: &Model, op: &str) -> usize {
    histogram(m).get(op).copied().unwrap_or(0)
}

#[test]
fn former_attention_is_recognised() {
    let m = attention(&FORMER);
    let (o, r) = optimize(&m, &OptOptions::default()).unwrap();
    assert_same_function(&m, &o);
    assert_eq!(count(&o, "fused_mha"), 1, "{}", r.explain());
    assert_eq!(count(&o, "softmax"), 0);
    assert_eq!(count(&o, "matmul"), 0);
}

#[test]
fn standard_qkv_attention_with_scale_on_q() {
    let m = attention(&AttnSpec {
        project_kv: true,
        scale_on_q: true,
        ..FORMER
    });
    let (o, r) = optimize(&m, &OptOptions::default()).unwrap();
    assert_same_function(&m, &o);
    assert_eq!(count(&o, "fused_mha"), 1, "{}", r.explain());
    assert_eq!(count(&o, "fused_linear"), 0, "projections absorbed");
}

#[test]
fn softmax_over_the_wrong_axis_is_not_attention() {
    let m = attention(&AttnSpec {
        softmax_axis: 2,
        ..FORMER
    });
    let (o, _) = optimize(&m, &OptOptions::default()).unwrap();
    assert_same_function(&m, &o);
    assert_eq!(count(&o, "fused_mha"), 0);
    assert_eq!(count(&o, "softmax"), 1);
}

#[test]
fn mismatched_heads_are_not_attention() {
    // Q split in 4 heads; K split with the head index innermost: the same
    // shapes, but head j of Q meets a different channel set of K.
    let (mm, d) = (6, 16);
    let mut b = B::new("mismatch");
    let z = b.input("z", &[1, mm, d]);
    let q = b.linear(z, d);
    let qh = split_heads(&mut b, q, 4);
    // K split as [B,T,dh,h] (the head index innermost): same shape, other heads
    let r = b.reshape(z, &[1, mm, 4, 4]);
    let kh = b.transpose(r, &[0, 3, 1, 2]);
    let kt = b.transpose(kh, &[0, 1, 3, 2]);
    let s = b.op(Op::MatMul, &[qh, kt]);
    let a = b.op(Op::Softmax { axis: 3 }, &[s]);
    let vh = split_heads(&mut b, z, 4);
    let o = b.op(Op::MatMul, &[a, vh]);
    let o = merge_heads(&mut b, o);
    let m = b.finish(&[o]);
    let (o, _) = optimize(&m, &OptOptions::default()).unwrap();
    assert_same_function(&m, &o);
    assert_eq!(count(&o, "fused_mha"), 0);
}

#[test]
fn softmax_written_over_a_transpose_is_recognised() {
    let (mm, d, h) = (5, 8, 2);
    let mut b = B::new("t_softmax");
    let z = b.input("z", &[1, mm, d]);
    let q = b.linear(z, d);
    let qh = split_heads(&mut b, q, h);
    let kh = split_heads(&mut b, z, h);
    let kt = b.transpose(kh, &[0, 1, 3, 2]);
    let s = b.op(Op::MatMul, &[qh, kt]);
    // an exporter that softmaxes over axis 2 of the transposed logits
    let st = b.transpose(s, &[0, 1, 3, 2]);
    let a = b.op(Op::Softmax { axis: 2 }, &[st]);
    let a = b.transpose(a, &[0, 1, 3, 2]);
    let vh = split_heads(&mut b, z, h);
    let o = b.op(Op::MatMul, &[a, vh]);
    let o = merge_heads(&mut b, o);
    let m = b.finish(&[o]);
    let (o, r) = optimize(&m, &OptOptions::default()).unwrap();
    assert_same_function(&m, &o);
    assert_eq!(count(&o, "fused_mha"), 1, "{}", r.explain());
}

#[test]
fn bias_free_projections_are_absorbed_too() {
    // a standard ViT layer with qkv_bias=False
    let (t, d, h) = (5, 8, 2);
    let mut b = B::new("nobias");
    let x = b.input("x", &[1, t, d]);
    let q = b.linear_nobias(x, d);
    let k = b.linear_nobias(x, d);
    let v = b.linear_nobias(x, d);
    let qh = split_heads(&mut b, q, h);
    let kh = split_heads(&mut b, k, h);
    let kt = b.transpose(kh, &[0, 1, 3, 2]);
    let s = b.op(Op::MatMul, &[qh, kt]);
    let c = b.scalar(0.5);
    let s = b.bin(BinaryOp::Mul, s, c);
    let a = b.op(Op::Softmax { axis: 3 }, &[s]);
    let vh = split_heads(&mut b, v, h);
    let o = b.op(Op::MatMul, &[a, vh]);
    let o = merge_heads(&mut b, o);
    let m = b.finish(&[o]);
    let (o, r) = optimize(&m, &OptOptions::default()).unwrap();
    assert_same_function(&m, &o);
    assert_eq!(count(&o, "fused_mha"), 1, "{}", r.explain());
    assert_eq!(o.graph.op_count(), 1, "{}", kiln_ir::text::print(&o.graph));
}

/// timm-style joint QKV: `qkv(x).reshape(B,T,3,h,dh).permute(2,0,3,1,4)`,
/// then `q, k, v = qkv[0], qkv[1], qkv[2]` (ONNX Gather). With
/// `heads_outer`, the reshape is `(B,T,h,3,dh)` instead: then index `i`
/// selects an inner factor of the projection's columns, no column slice,
/// and the Q/K/V projections must not be taken as slices.
fn joint_qkv(heads_outer: bool) -> Model {
    let (t, d, h) = (5, 16, 2);
    let mut b = B::new("joint_qkv");
    let x = b.input("x", &[1, t, d]);
    let qkv = b.linear(x, 3 * d);
    let (shape, perm) = if heads_outer {
        ([1, t, h, 3, d / h], [3, 0, 2, 1, 4])
    } else {
        ([1, t, 3, h, d / h], [2, 0, 3, 1, 4])
    };
    let r = b.reshape(qkv, &shape);
    let p = b.transpose(r, &perm);
    let pick = |b: &mut B, i: i64| {
        b.op(
            Op::Gather {
                axis: 0,
                indices: vec![i],
                indices_shape: vec![],
            },
            &[p],
        )
    };
    let (q, k, v) = (pick(&mut b, 0), pick(&mut b, 1), pick(&mut b, 2));
    let kt = b.transpose(k, &[0, 1, 3, 2]);
    let s = b.op(Op::MatMul, &[q, kt]);
    let c = b.scalar(0.25);
    let s = b.bin(BinaryOp::Mul, s, c);
    let a = b.op(Op::Softmax { axis: 3 }, &[s]);
    let o = b.op(Op::MatMul, &[a, v]);
    let o = merge_heads(&mut b, o);
    b.finish(&[o])
}

#[test]
fn a_joint_qkv_projection_selected_by_gather_is_three_projections() {
    let m = joint_qkv(false);
    let (o, r) = optimize(&m, &OptOptions::default()).unwrap();
    assert_same_function(&m, &o);
    let h = histogram(&o);
    assert_eq!(h.get("fused_mha"), Some(&1), "{}", r.explain());
    assert_eq!(o.graph.op_count(), 1, "{}", common::dump(&o.graph));
}

#[test]
fn a_gather_of_an_inner_factor_is_not_a_column_slice() {
    // (B,T,h,3,dh): each head's q, k, v are interleaved in the columns;
    // the rewrite must not claim a contiguous slice (the result is checked
    // against the interpreter either way)
    let m = joint_qkv(true);
    let (o, _) = optimize(&m, &OptOptions::default()).unwrap();
    assert_same_function(&m, &o);
    assert_eq!(histogram(&o).get("slice"), None);
}
