//! A whole stride-1 Mobile-Former block (models/mobile-former.md §2.10),
//! built as the spec spells it: both bridges, the Former's attention and
//! layer-norms, BN folding, the dynamic-ReLU inverted residual.

mod common;

use common::mf::{block_s1, f2m, hsig, layer_norm, m2f, merge_heads, split_heads};
use common::{B, assert_same_function, histogram};
use kiln_ir::Model;
use kiln_ir::op::{BinaryOp, Op};
use kiln_passes::{OptOptions, optimize};

fn count(m: &Model, op: &str) -> usize {
    histogram(m).get(op).copied().unwrap_or(0)
}

fn block() -> Model {
    let mut b = B::new("mf_block");
    let x = b.input("x", &[1, 8, 4, 4]);
    let z = b.input("z", &[1, 3, 16]);
    let (x2, z2) = block_s1(&mut b, x, z, 2);
    b.finish(&[x2, z2])
}

#[test]
fn every_part_of_a_block_fuses() {
    let m = block();
    let (o, r) = optimize(&m, &OptOptions::default()).unwrap();
    assert_same_function(&m, &o);
    // Expected from the block's structure (§2.10): one bridge each way, one
    // Former attention, the Former's two layer-norms (the bridge's is inside
    // fused_m2f), three BNs all folded, one pw-dw-pw chain with residual.
    assert_eq!(count(&o, "fused_m2f"), 1);
    assert_eq!(count(&o, "fused_f2m"), 1);
    assert_eq!(count(&o, "fused_mha"), 1);
    assert_eq!(count(&o, "layer_norm"), 2);
    assert_eq!(count(&o, "batch_norm"), 0);
    assert_eq!(count(&o, "fused_conv_chain"), 1);
    assert_eq!(count(&o, "softmax"), 0);
    assert!(r.cost_after < r.cost_before);
}

/// The `fused_m2f` nodes of a graph.
fn m2f_ops(m: &Model) -> Vec<kiln_ir::FusedOp> {
    m.graph
        .node_ids()
        .filter_map(|id| match &m.graph.node(id).op {
            Op::Fused(f @ kiln_ir::FusedOp::M2f { .. }) => Some(f.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn m2f_with_a_gate_from_other_tokens_does_not_absorb_it() {
    // The spec's bridge (common::mf::m2f) with one change: the gate's
    // linear reads other tokens than the queries and the residual. The
    // bridge may still fuse with the gate as a given operand, but must not
    // take the gate's weights as if they applied to its own tokens.
    let mut b = B::new("m2f_bad_gate");
    let x = b.input("x", &[1, 8, 4, 4]);
    let z = b.input("z", &[1, 3, 16]);
    let other = b.input("other", &[1, 3, 16]);
    let q = b.linear(z, 8);
    let qh = split_heads(&mut b, q, 2);
    let xh = b.reshape(x, &[1, 2, 4, 16]);
    let s = b.op(Op::MatMul, &[qh, xh]);
    let a = b.op(Op::Softmax { axis: 3 }, &[s]);
    let xv = b.transpose(xh, &[0, 1, 3, 2]);
    let o = b.op(Op::MatMul, &[a, xv]);
    let o = merge_heads(&mut b, o);
    let g = b.linear(other, 8);
    let g = hsig(&mut b, g);
    let two = b.scalar(2.0);
    let g = b.bin(BinaryOp::Mul, g, two);
    let og = b.bin(BinaryOp::Mul, o, g);
    let p = b.linear(og, 16);
    let r = b.bin(BinaryOp::Add, z, p);
    let y = layer_norm(&mut b, r);
    let m = b.finish(&[y]);
    let (o, _) = optimize(&m, &OptOptions::default()).unwrap();
    assert_same_function(&m, &o);
    for f in m2f_ops(&o) {
        assert!(
            matches!(f, kiln_ir::FusedOp::M2f { gate: false, .. }),
            "{f:?}"
        );
    }
    // the same graph with the gate reading `z` absorbs the gate
    let mut b = B::new("m2f_good");
    let x = b.input("x", &[1, 8, 4, 4]);
    let z = b.input("z", &[1, 3, 16]);
    let y = m2f(&mut b, x, z);
    let m = b.finish(&[y]);
    let (o, _) = optimize(&m, &OptOptions::default()).unwrap();
    assert_same_function(&m, &o);
    assert_eq!(count(&o, "fused_m2f"), 1);
    assert!(matches!(
        m2f_ops(&o)[..],
        [kiln_ir::FusedOp::M2f {
            gate: true,
            proj_q: true,
            ..
        }]
    ));
    assert_eq!(o.graph.op_count(), 1);
}

#[test]
fn f2m_whose_queries_read_another_map_does_not_fuse() {
    let mut b = B::new("f2m_bad");
    let y = b.input("y", &[1, 8, 4, 4]);
    let y2 = b.input("y2", &[1, 8, 4, 4]);
    let z = b.input("z", &[1, 3, 16]);
    // the spec's bridge reads y for both queries and residual...
    let good = f2m(&mut b, y, z);
    // ...this one adds the attention result of y to another map y2
    let out = {
        let ops = b.g.operands(good.node);
        b.bin(BinaryOp::Add, y2, ops[1])
    };
    let m = b.finish(&[out]);
    let (o, _) = optimize(&m, &OptOptions::default()).unwrap();
    assert_same_function(&m, &o);
    assert_eq!(count(&o, "fused_f2m"), 0);
}

/// A linear as ONNX stores it: `MatMul(x, W_t)` with a `[in, out]`
/// initializer, then `Add`.
fn onnx_linear(b: &mut B, x: kiln_ir::Value, out: usize) -> kiln_ir::Value {
    let inn = *b.shape(x).last().unwrap();
    let w = b.weight("onnx.w", &[inn, out], 1.0 / (inn as f32).sqrt());
    let bias = b.weight("onnx.b", &[out], 0.1);
    let m = b.op(Op::MatMul, &[x, w]);
    b.bin(BinaryOp::Add, bias, m)
}

/// Both bridges as another exporter might write them: the map flattened to
/// `[N,C,L]` and then split, the queries scaled before the head split,
/// `HardSigmoid` for the gate and `2·g` on the left, ONNX-layout linears,
/// the F2M queries built through token layout `[N,L,C]` and the result
/// merged back through it, the residual adds with swapped operands.
#[test]
fn bridges_in_another_spelling_fuse() {
    let (n, c, hw, m_tok, d, h) = (1, 8, 4, 3, 16, 2);
    let l = hw * hw;
    let mut b = B::new("bridges_onnx");
    let x = b.input("x", &[n, c, hw, hw]);
    let z = b.input("z", &[n, m_tok, d]);
    // M2F
    let xf = b.reshape(x, &[n, c, l]);
    let xh = b.reshape(xf, &[n, h, c / h, l]);
    let q = onnx_linear(&mut b, z, c);
    let scale = b.scalar(1.0 / ((c / h) as f32).sqrt());
    let q = b.bin(BinaryOp::Mul, scale, q);
    let qh = split_heads(&mut b, q, h);
    let s = b.op(Op::MatMul, &[qh, xh]);
    let a = b.op(Op::Softmax { axis: 3 }, &[s]);
    let xv = b.transpose(xh, &[0, 1, 3, 2]);
    let o = b.op(Op::MatMul, &[a, xv]);
    let o = merge_heads(&mut b, o);
    let g = onnx_linear(&mut b, z, c);
    let g = b.op(
        Op::HardSigmoid {
            alpha: kiln_ir::Float(1.0 / 6.0),
            beta: kiln_ir::Float(0.5),
        },
        &[g],
    );
    let two = b.scalar(2.0);
    let g = b.bin(BinaryOp::Mul, two, g);
    let og = b.bin(BinaryOp::Mul, g, o);
    let p = onnx_linear(&mut b, og, d);
    let r = b.bin(BinaryOp::Add, p, z);
    let z1 = layer_norm(&mut b, r);
    // F2M on the same map
    let yt = b.reshape(x, &[n, c, l]);
    let yt = b.transpose(yt, &[0, 2, 1]);
    let yq = split_heads(&mut b, yt, h);
    let k = onnx_linear(&mut b, z1, c);
    let kh = split_heads(&mut b, k, h);
    let kt = b.transpose(kh, &[0, 1, 3, 2]);
    let v = onnx_linear(&mut b, z1, c);
    let vh = split_heads(&mut b, v, h);
    let s = b.op(Op::MatMul, &[yq, kt]);
    let s = b.bin(BinaryOp::Mul, s, scale);
    let a = b.op(Op::Softmax { axis: 3 }, &[s]);
    let o = b.op(Op::MatMul, &[a, vh]);
    let o = merge_heads(&mut b, o);
    let o = b.transpose(o, &[0, 2, 1]);
    let o = b.reshape(o, &[n, c, hw, hw]);
    let x2 = b.bin(BinaryOp::Add, o, x);
    let m = b.finish(&[x2, z1]);
    let (o, r) = optimize(&m, &OptOptions::default()).unwrap();
    assert_same_function(&m, &o);
    assert_eq!(count(&o, "fused_m2f"), 1, "{}", r.explain());
    assert_eq!(count(&o, "fused_f2m"), 1, "{}", r.explain());
    assert_eq!(o.graph.op_count(), 2);
}

/// The Former→Mobile bridge whose attention map is also a graph output
/// (say, for visualisation). Fusing the bridge then means computing the
/// attention twice: the fused op does not write it. Whether that pays is the
/// cost model's call (at these sizes kernel overheads dominate and it does);
/// the extractor must never pick something costlier than leaving the bridge
/// alone, and must keep the map for its other use.
#[test]
fn f2m_whose_attention_map_is_needed_elsewhere_is_chosen_by_cost() {
    let (n, c, hw, m_tok, d, h) = (1, 8, 4, 3, 16, 2);
    let l = hw * hw;
    let mut b = B::new("f2m_shared");
    let y = b.input("y", &[n, c, hw, hw]);
    let z = b.input("z", &[n, m_tok, d]);
    let yh = b.reshape(y, &[n, h, c / h, l]);
    let yq = b.transpose(yh, &[0, 1, 3, 2]);
    let k = b.linear(z, c);
    let kh = split_heads(&mut b, k, h);
    let kt = b.transpose(kh, &[0, 1, 3, 2]);
    let v = b.linear(z, c);
    let vh = split_heads(&mut b, v, h);
    let s = b.op(Op::MatMul, &[yq, kt]);
    let a = b.op(Op::Softmax { axis: 3 }, &[s]);
    let o = b.op(Op::MatMul, &[a, vh]);
    let o = b.transpose(o, &[0, 1, 3, 2]);
    let o = b.reshape(o, &[n, c, hw, hw]);
    let x2 = b.bin(BinaryOp::Add, y, o);
    let m = b.finish(&[x2, a]);
    let (o, r) = optimize(&m, &OptOptions::default()).unwrap();
    assert_same_function(&m, &o);
    assert_eq!(count(&o, "softmax"), 1, "the map is still computed");
    let no_bridges = OptOptions {
        families: kiln_passes::Family::ALL
            .into_iter()
            .filter(|f| ![kiln_passes::Family::M2f, kiln_passes::Family::F2m].contains(f))
            .collect(),
        ..OptOptions::default()
    };
    let (unfused, ru) = optimize(&m, &no_bridges).unwrap();
    assert_eq!(count(&unfused, "fused_f2m"), 0);
    assert!(
        r.cost_after <= ru.cost_after,
        "{} > {}",
        r.cost_after,
        ru.cost_after
    );
}
