//! Batch-norm folding, conv/linear epilogues and conv-chain fusion.

mod common;

use common::{B, assert_same_function, histogram};
use kiln_ir::Model;
use kiln_ir::op::{BinaryOp, Float, Op, UnaryOp};
use kiln_passes::{OptOptions, optimize};

fn count(m: &Model, op: &str) -> usize {
    histogram(m).get(op).copied().unwrap_or(0)
}

fn run(m: &Model) -> Model {
    let (o, _) = optimize(m, &OptOptions::default()).unwrap();
    assert_same_function(m, &o);
    o
}

#[test]
fn bn_folds_into_dense_grouped_depthwise_and_expanding_convs() {
    let mut b = B::new("bn");
    let x = b.input("x", &[1, 4, 6, 6]);
    let dense = b.conv(x, 8, 3, 1, 1, false);
    let dense = b.bn(dense);
    let grouped = b.conv(dense, 8, 1, 1, 2, true);
    let grouped = b.bn(grouped);
    let dw = b.conv(grouped, 8, 3, 2, 8, false);
    let dw = b.bn(dw);
    // depthwise-expanding: 8 channels -> 16, groups = 8 (two per channel)
    let exp = b.conv(dw, 16, 3, 1, 8, false);
    let exp = b.bn(exp);
    let m = b.finish(&[exp]);
    let o = run(&m);
    assert_eq!(count(&o, "batch_norm"), 0);
    assert_eq!(count(&o, "conv2d") + count(&o, "fused_conv"), 4);
    // folded weights are plain weights: nothing weight-only is left
    assert_eq!(count(&o, "mul"), 0);
    assert_eq!(count(&o, "sqrt"), 0);
}

#[test]
fn bn1d_folds_into_a_linear_layer() {
    // Mobile-Former's head: Linear -> BatchNorm1d -> h-swish
    let mut b = B::new("bn1d");
    let x = b.input("x", &[2, 12]);
    let y = b.linear(x, 10);
    let y = b.bn(y);
    let y = b.un(UnaryOp::HardSwish, y);
    let m = b.finish(&[y]);
    let o = run(&m);
    assert_eq!(count(&o, "batch_norm"), 0);
    assert_eq!(count(&o, "fused_linear"), 1);
    assert_eq!(o.graph.op_count(), 1);
}

#[test]
fn bn1d_over_flattened_tokens_folds_into_the_linear_layer() {
    // LeViT's LinearNorm: bn(linear(x).flatten(0, 1)).reshape_as(...)
    let mut b = B::new("levit_bn");
    let x = b.input("x", &[2, 7, 12]);
    let y = b.linear(x, 10);
    let y = b.op(
        Op::Reshape {
            shape: vec![14, 10],
        },
        &[y],
    );
    let y = b.bn(y);
    let y = b.op(
        Op::Reshape {
            shape: vec![2, 7, 10],
        },
        &[y],
    );
    let y = b.un(UnaryOp::HardSwish, y);
    let m = b.finish(&[y]);
    let o = run(&m);
    assert_eq!(count(&o, "batch_norm"), 0);
    assert_eq!(count(&o, "fused_linear"), 1);
    // a reshape whose last axis is not the channel does not fold
    let mut b = B::new("levit_bn_no");
    let x = b.input("x", &[2, 7, 12]);
    let y = b.linear(x, 10);
    let y = b.op(Op::Reshape { shape: vec![28, 5] }, &[y]);
    let y = b.bn(y);
    let m = b.finish(&[y]);
    let o = run(&m);
    assert_eq!(count(&o, "batch_norm"), 1);
}

#[test]
fn bn_with_computed_statistics_does_not_fold() {
    let mut b = B::new("bn_dynamic");
    let x = b.input("x", &[1, 4, 5, 5]);
    let g = b.input("gamma", &[4]);
    let y = b.conv(x, 4, 1, 1, 1, false);
    let bb = b.weight("b", &[4], 0.1);
    let mm = b.weight("m", &[4], 0.1);
    let v = b.positive("v", &[4], 0.5);
    let y = b.op(Op::BatchNorm { eps: Float(1e-5) }, &[y, g, bb, mm, v]);
    let m = b.finish(&[y]);
    let o = run(&m);
    assert_eq!(count(&o, "batch_norm"), 1);
}

#[test]
fn conv_epilogue_takes_bias_activation_and_residual() {
    for act in [
        UnaryOp::Relu,
        UnaryOp::Relu6,
        UnaryOp::HardSwish,
        UnaryOp::Silu,
        UnaryOp::Gelu,
    ] {
        let mut b = B::new("epi");
        let x = b.input("x", &[1, 4, 5, 5]);
        let y = b.conv(x, 4, 3, 1, 1, true);
        let y = b.un(act, y);
        let y = b.bin(BinaryOp::Add, x, y);
        let m = b.finish(&[y]);
        let o = run(&m);
        assert_eq!(o.graph.op_count(), 1, "{act:?}");
        assert_eq!(count(&o, "fused_conv"), 1);
    }
}

/// PVT v2's MLP: tokens → NCHW → depthwise conv → tokens → GELU. The
/// activation is element-wise, so it moves before the views into the
/// conv's epilogue; the views stay (the tokens layout is the output's).
#[test]
fn an_activation_after_a_view_of_a_conv_is_its_epilogue() {
    for act in [UnaryOp::Gelu, UnaryOp::Silu, UnaryOp::Relu] {
        let mut b = B::new("pvt_mlp");
        let x = b.input("x", &[1, 16, 24]);
        let t = b.transpose(x, &[0, 2, 1]);
        let t = b.reshape(t, &[1, 24, 4, 4]);
        let y = b.conv(t, 24, 3, 1, 24, true);
        let y = b.reshape(y, &[1, 24, 16]);
        let y = b.transpose(y, &[0, 2, 1]);
        let y = b.un(act, y);
        let m = b.finish(&[y]);
        let o = run(&m);
        assert_eq!(count(&o, "fused_conv"), 1, "{act:?}");
        let name = format!("{act:?}").to_lowercase();
        assert_eq!(count(&o, &name), 0, "{act:?}: {:?}", histogram(&o));
    }
}

#[test]
fn clip_relu6_and_onnx_bias_add_are_epilogues() {
    let mut b = B::new("onnx_conv");
    let x = b.input("x", &[1, 4, 5, 5]);
    let y = b.conv(x, 6, 1, 1, 1, false);
    let c = b.weight("bias", &[1, 6, 1, 1], 0.1);
    let y = b.bin(BinaryOp::Add, y, c);
    let y = b.op(
        Op::Clip {
            min: Float(0.0),
            max: Float(6.0),
        },
        &[y],
    );
    let m = b.finish(&[y]);
    let o = run(&m);
    assert_eq!(o.graph.op_count(), 1);
    assert_eq!(count(&o, "fused_conv"), 1);
}

#[test]
fn a_broadcast_add_is_not_a_residual() {
    let mut b = B::new("not_residual");
    let x = b.input("x", &[1, 4, 5, 5]);
    let r = b.input("r", &[1, 4, 1, 1]);
    let y = b.conv(x, 4, 3, 1, 1, false);
    let y = b.bin(BinaryOp::Add, y, r);
    let m = b.finish(&[y]);
    let o = run(&m);
    assert_eq!(count(&o, "add"), 1);
}

/// MobileNetV2 / MobileViTv2 inverted residual: pw-SiLU, dw-SiLU, pw, + x.
fn inverted_residual(groups_dw: usize) -> Model {
    let mut b = B::new("ir");
    let x = b.input("x", &[1, 8, 6, 6]);
    let y = b.conv(x, 16, 1, 1, 1, false);
    let y = b.bn(y);
    let y = b.un(UnaryOp::Silu, y);
    let y = b.conv(y, 16, 3, 1, groups_dw, false);
    let y = b.bn(y);
    let y = b.un(UnaryOp::Silu, y);
    let y = b.conv(y, 8, 1, 1, 1, false);
    let y = b.bn(y);
    let y = b.bin(BinaryOp::Add, y, x);
    b.finish(&[y])
}

#[test]
fn inverted_residual_is_one_chain() {
    let o = run(&inverted_residual(16));
    assert_eq!(count(&o, "fused_conv_chain"), 1);
    assert_eq!(o.graph.op_count(), 1);
}

#[test]
fn grouped_middle_conv_is_not_depthwise() {
    // groups = 4 != 16 channels: not a depthwise stage, no chain
    let o = run(&inverted_residual(4));
    assert_eq!(count(&o, "fused_conv_chain"), 0);
    assert_eq!(count(&o, "fused_conv"), 3);
}

#[test]
fn depthwise_then_pointwise_is_a_chain() {
    // Mobile-Former's bneck-lite: dw-expanding 3x3 + ReLU6 -> pw, + x
    let mut b = B::new("lite");
    let x = b.input("x", &[1, 4, 6, 6]);
    let y = b.conv(x, 8, 3, 1, 4, false);
    let y = b.bn(y);
    let y = b.un(UnaryOp::Relu6, y);
    let y = b.conv(y, 4, 1, 1, 1, false);
    let y = b.bn(y);
    let y = b.bin(BinaryOp::Add, y, x);
    let m = b.finish(&[y]);
    let o = run(&m);
    assert_eq!(count(&o, "fused_conv_chain"), 1);
    assert_eq!(o.graph.op_count(), 1);
}

#[test]
fn an_intermediate_needed_elsewhere_is_not_recomputed_when_it_does_not_pay() {
    // The depthwise output is also a graph output, so a chain would have to
    // compute it anyway: the chain would be one kernel for the pointwise
    // conv that also redoes the depthwise arithmetic, reading x instead of
    // an equally large d — never cheaper, whatever the cost constants. The
    // DAG-aware extraction (all roots at once) sees that.
    let mut b = B::new("shared");
    let x = b.input("x", &[1, 4, 6, 6]);
    let d = b.conv(x, 4, 3, 1, 4, false);
    let d = b.un(UnaryOp::Relu6, d);
    let y = b.conv(d, 4, 1, 1, 1, false);
    let m = b.finish(&[y, d]);
    let o = run(&m);
    assert_eq!(count(&o, "fused_conv_chain"), 0);
    assert_eq!(o.graph.op_count(), 2);
}

#[test]
fn pointwise_mlp_is_a_chain() {
    // MobileViTv2's FFN on a map: 1x1 expand + SiLU, 1x1 project, residual
    let mut b = B::new("ffn");
    let x = b.input("x", &[1, 8, 4, 4]);
    let y = b.conv(x, 16, 1, 1, 1, true);
    let y = b.un(UnaryOp::Silu, y);
    let y = b.conv(y, 8, 1, 1, 1, true);
    let y = b.bin(BinaryOp::Add, x, y);
    let m = b.finish(&[y]);
    let o = run(&m);
    assert_eq!(count(&o, "fused_conv_chain"), 1);
    assert_eq!(o.graph.op_count(), 1);
}

/// ShuffleNet's channel shuffle as Mobile-Former-26M's builder writes it.
fn shuffle(b: &mut B, x: kiln_ir::Value, g: usize) -> kiln_ir::Value {
    let s = b.shape(x);
    let (n, c, h, w) = (s[0], s[1], s[2], s[3]);
    let v = b.reshape(x, &[n, g, c / g, h, w]);
    let t = b.transpose(v, &[0, 2, 1, 3, 4]);
    b.reshape(t, &[n, c, h, w])
}

#[test]
fn shuffled_grouped_convs_chain_and_take_the_dynamic_relu() {
    // Mobile-Former-26M's stride-1 sub-block (spec 2.6, 2.9): grouped pw
    // -> BN -> shuffle(4) -> DyReLU -> dw -> BN -> DyReLU -> grouped pw ->
    // BN -> shuffle(4) -> + x.
    let mut b = B::new("shuffled");
    let x = b.input("x", &[1, 8, 5, 5]);
    let a1 = b.input("a1", &[1, 16, 1, 1]);
    let a2 = b.input("a2", &[1, 16, 1, 1]);
    let y = b.conv(x, 16, 1, 1, 4, false);
    let y = b.bn(y);
    let y = shuffle(&mut b, y, 4);
    let p = b.bin(BinaryOp::Mul, y, a1);
    let q = b.bin(BinaryOp::Mul, y, a2);
    let y = b.bin(BinaryOp::Max, p, q);
    let y = b.conv(y, 16, 3, 1, 16, false);
    let y = b.bn(y);
    let p = b.bin(BinaryOp::Mul, y, a1);
    let q = b.bin(BinaryOp::Mul, y, a2);
    let y = b.bin(BinaryOp::Max, p, q);
    let y = b.conv(y, 8, 1, 1, 4, false);
    let y = b.bn(y);
    let y = shuffle(&mut b, y, 4);
    let y = b.bin(BinaryOp::Add, y, x);
    let m = b.finish(&[y]);
    let o = run(&m);
    assert_eq!(
        count(&o, "fused_conv_chain"),
        1,
        "{}",
        common::dump(&o.graph)
    );
    assert_eq!(o.graph.op_count(), 1, "{}", common::dump(&o.graph));
    let text = common::dump(&o.graph);
    assert!(
        text.contains("s0_shuffle=4") && text.contains("s2_shuffle=4"),
        "{text}"
    );
}

#[test]
fn a_relu6_then_shuffle_is_the_convs_shuffle() {
    // the 26M bneck-lite order: dw-expanding conv -> BN -> ReLU6 ->
    // shuffle(Cin) -> grouped pw -> BN
    let mut b = B::new("lite");
    let x = b.input("x", &[1, 4, 6, 6]);
    let y = b.conv(x, 12, 3, 2, 4, false);
    let y = b.bn(y);
    let y = b.un(UnaryOp::Relu6, y);
    let y = shuffle(&mut b, y, 4);
    let y = b.conv(y, 8, 1, 1, 4, false);
    let y = b.bn(y);
    let m = b.finish(&[y]);
    let o = run(&m);
    assert_eq!(
        count(&o, "fused_conv_chain"),
        1,
        "{}",
        common::dump(&o.graph)
    );
    assert_eq!(count(&o, "transpose"), 0);
}

#[test]
fn permutations_that_are_not_shuffles_stay() {
    // a transpose of the spatial axes, and a shuffle before a conv (the
    // head's): neither is an output shuffle of a conv
    let mut b = B::new("not_shuffle");
    let x = b.input("x", &[1, 8, 4, 4]);
    let y = b.conv(x, 8, 1, 1, 2, true);
    let t = b.transpose(y, &[0, 1, 3, 2]);
    let s = shuffle(&mut b, x, 2);
    let z = b.conv(s, 8, 1, 1, 2, true);
    let m = b.finish(&[t, z]);
    let o = run(&m);
    assert_eq!(count(&o, "transpose"), 2, "{}", common::dump(&o.graph));
}

/// PyTorch's two spellings of `GroupNorm(G, C)` give one node: TorchScript
/// writes `reshape [N, G, -1] → group norm of G rows → reshape back → · γ
/// + β`, dynamo one group norm with per-channel γ, β.
#[test]
fn group_norm_spellings_become_one_group_norm() {
    for groups in [1, 2] {
        let mut b = B::new("gn_ts");
        let x = b.input("x", &[1, 8, 4, 4]);
        let v = b.reshape(x, &[1, groups, 128 / groups]);
        let g0 = b.positive("g0", &[groups], 0.5);
        let b0 = b.weight("b0", &[groups], 0.3);
        let n = b.op(
            Op::GroupNorm {
                groups,
                eps: Float(1e-5),
            },
            &[v, g0, b0],
        );
        let y = b.reshape(n, &[1, 8, 4, 4]);
        let g = b.positive("g", &[8, 1, 1], 0.5);
        let y = b.bin(BinaryOp::Mul, y, g);
        let be = b.weight("be", &[8, 1, 1], 0.3);
        let y = b.bin(BinaryOp::Add, y, be);
        let y = b.un(UnaryOp::Gelu, y);
        let m = b.finish(&[y]);
        let o = run(&m);
        assert_eq!(count(&o, "group_norm"), 1, "groups {groups}");
        assert_eq!(
            count(&o, "reshape") + count(&o, "mul") + count(&o, "add"),
            0
        );
        assert_eq!(o.graph.op_count(), 2, "group_norm and gelu");
    }
}

/// A gather of every index of its axis in order (dynamo's `as_strided`) is
/// a reshape; one out of order is not.
#[test]
fn in_order_gather_is_a_reshape() {
    for (indices, gathers) in [
        ((0..8).collect::<Vec<i64>>(), 0),
        (vec![1, 0, 2, 3, 4, 5, 6, 7], 1),
    ] {
        let mut b = B::new("as_strided");
        let x = b.input("x", &[1, 8, 1, 1]);
        let f = b.reshape(x, &[8]);
        let y = b.op(
            Op::Gather {
                axis: 0,
                indices,
                indices_shape: vec![1, 8, 1, 1],
            },
            &[f],
        );
        let y = b.un(UnaryOp::Relu, y);
        let m = b.finish(&[y]);
        let o = run(&m);
        assert_eq!(count(&o, "gather"), gathers);
    }
}

/// TensorFlow "same" padding: TorchScript exports a zero `Pad` on H and W
/// before an unpadded conv, dynamo the conv's own padding; both give one
/// conv. A pad with another value, or on the channels, stays.
#[test]
fn zero_spatial_pad_folds_into_the_conv() {
    for (value, pads, pads_left) in [
        (0.0, vec![0, 0, 0, 0, 0, 0, 1, 1], 0),
        (0.5, vec![0, 0, 0, 0, 0, 0, 1, 1], 1),
        (0.0, vec![0, 1, 0, 0, 0, 0, 1, 1], 1),
    ] {
        let mut b = B::new("tf_same");
        let x = b.input("x", &[1, 4, 8, 8]);
        let p = b.op(
            Op::Pad {
                pads,
                mode: kiln_ir::op::PadMode::Constant,
                value: Float(value),
            },
            &[x],
        );
        let y = b.conv(p, 8, 3, 2, 1, true);
        let y = b.un(UnaryOp::Relu, y);
        let m = b.finish(&[y]);
        let o = run(&m);
        assert_eq!(count(&o, "pad"), pads_left, "value {value}");
    }
}

/// GhostNet's `cat([a, b], 1)[:, :oup]` when `oup` is every channel: the
/// slice is the identity.
#[test]
fn a_slice_that_keeps_everything_is_the_identity() {
    let mut b = B::new("ghost");
    let x = b.input("x", &[1, 4, 5, 5]);
    let y = b.un(UnaryOp::Relu, x);
    let z = b.un(UnaryOp::Sigmoid, x);
    let c = b.op(Op::Concat { axis: 1 }, &[y, z]);
    let s = b.op(
        Op::Slice {
            axes: vec![1],
            starts: vec![0],
            ends: vec![8],
            steps: vec![1],
        },
        &[c],
    );
    let s = b.un(UnaryOp::Tanh, s);
    let m = b.finish(&[s]);
    let o = run(&m);
    assert_eq!(count(&o, "slice"), 0);
}

/// TorchScript's multi-query attention key, `k.transpose(1, 2)
/// .unsqueeze(1).transpose(-1, -2)`, is a reshape (as dynamo writes it):
/// the transposes cancel through the unit-axis reshape between them. A
/// reshape that regroups axes keeps its transposes.
#[test]
fn transposes_cancel_through_a_unit_axis_reshape() {
    for (mid, transposes) in [(vec![1, 1, 6, 5], 0), (vec![1, 3, 2, 5], 2)] {
        let mut b = B::new("mqa_k");
        let x = b.input("x", &[1, 5, 6]);
        let t = b.op(
            Op::Transpose {
                perm: vec![0, 2, 1],
            },
            &[x],
        );
        let u = b.reshape(t, &mid);
        let y = b.op(
            Op::Transpose {
                perm: vec![0, 1, 3, 2],
            },
            &[u],
        );
        let y = b.un(UnaryOp::Relu, y);
        let m = b.finish(&[y]);
        let o = run(&m);
        assert_eq!(count(&o, "transpose"), transposes, "{mid:?}");
    }
}

#[test]
fn layer_scale_folds_into_the_conv_and_its_add_becomes_the_residual() {
    // EfficientFormer's `x + ls · proj(mixer(x))`, the scale one value per
    // channel: one fused conv, its residual x
    let mut b = B::new("layer_scale");
    let x = b.input("x", &[1, 8, 5, 5]);
    let y = b.conv(x, 8, 1, 1, 1, true);
    let s = b.weight("ls", &[8, 1, 1], 1.0);
    let y = b.bin(BinaryOp::Mul, y, s);
    let y = b.bin(BinaryOp::Add, x, y);
    let m = b.finish(&[y]);
    let o = run(&m);
    assert_eq!(count(&o, "mul"), 0);
    assert_eq!(count(&o, "add"), 0);
    assert_eq!(count(&o, "fused_conv"), 1);
    assert_eq!(o.graph.op_count(), 1);
}

#[test]
fn a_scaled_conv_whose_plain_output_is_needed_is_not_computed_twice() {
    // PoolFormerV2's residual scale on the downsample conv whose output also
    // feeds the block's mixer (`x·s + pool(gn(x)) - gn(x)`): folding the
    // scale into a second conv (then a residual epilogue) would redo the
    // whole conv to save a mul and an add. Greedy extraction took that
    // fold (the folded class's own best node is the second conv); the
    // DAG-wide revisit must switch the add and that class back together.
    let mut b = B::new("res_scale");
    let x = b.input("x", &[1, 128, 28, 28]);
    let d = b.conv(x, 320, 3, 2, 1, true);
    let s = b.weight("res_scale", &[320, 1, 1], 1.0);
    let t = b.bin(BinaryOp::Mul, d, s);
    let gamma = b.weight("gn.g", &[320], 1.0);
    let beta = b.weight("gn.b", &[320], 1.0);
    let n = b.op(
        Op::GroupNorm {
            groups: 1,
            eps: Float(1e-6),
        },
        &[d, gamma, beta],
    );
    let p = b.op(
        Op::Pool2d {
            kind: kiln_ir::op::PoolKind::Avg,
            kernel: [3, 3],
            stride: [1, 1],
            pad: [1, 1, 1, 1],
            count_include_pad: false,
        },
        &[n],
    );
    let mixer = b.bin(BinaryOp::Sub, p, n);
    let y = b.bin(BinaryOp::Add, t, mixer);
    let m = b.finish(&[y]);
    let o = run(&m);
    let convs = count(&o, "conv2d") + count(&o, "fused_conv");
    assert_eq!(convs, 1, "{:?}", histogram(&o));
}

#[test]
fn batch_norm_and_activation_after_a_concat_fold_into_its_convs() {
    // MixNet's mixed conv: per-group convs of different windows,
    // concatenated, then one BN and an activation over the whole
    let mut b = B::new("mixed");
    let x = b.input("x", &[1, 8, 10, 10]);
    let y3 = b.conv(x, 6, 3, 1, 1, false);
    let y5 = b.conv(x, 10, 5, 1, 1, false);
    let cat = b.op(Op::Concat { axis: 1 }, &[y3, y5]);
    let y = b.bn(cat);
    let y = b.un(UnaryOp::Relu, y);
    let m = b.finish(&[y]);
    let o = run(&m);
    assert_eq!(count(&o, "batch_norm"), 0, "{:?}", histogram(&o));
    assert_eq!(count(&o, "relu"), 0, "{:?}", histogram(&o));
    assert_eq!(count(&o, "fused_conv"), 2, "{:?}", histogram(&o));
    assert_eq!(o.graph.op_count(), 3);
}
