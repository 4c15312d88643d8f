//! Model statistics: parameter and multiply-accumulate (MAC) counts.
//!
//! Counting convention (documented for `kiln info` in docs/cli.md): a MAC is
//! one multiply-add of a conv2d, matmul or gemm, i.e. of the layers whose
//! arithmetic dominates these models; attention products are matmuls and so
//! are counted. Element-wise ops, norms, softmax and pooling count 0. This
//! is the "pure conv/linear MAC" convention the model specs compare with.

use crate::graph::{Graph, NodeId, Value};
use crate::op::Op;

/// Multiply-accumulates performed by one node.
pub fn node_macs(g: &Graph, id: NodeId) -> u64 {
    let node = g.node(id);
    let operands = g.operands(id);
    let ty = |i: usize| g.value_type(operands[i]);
    let out = &node.outputs.first().map(|o| o.ty.clone());
    let Some(out) = out else { return 0 };
    match &node.op {
        Op::Conv2d { .. } => {
            // every output element takes (C/groups)·kh·kw MACs
            let w = &ty(1).shape;
            (out.numel() as u64) * (w[1] * w[2] * w[3]) as u64
        }
        Op::MatMul => {
            // output elements × K
            let a = &ty(0).shape;
            (out.numel() as u64) * (*a.last().unwrap_or(&1) as u64)
        }
        Op::Gemm { trans_a, .. } => {
            let a = &ty(0).shape;
            let k = if *trans_a { a[0] } else { a[1] };
            (out.numel() as u64) * k as u64
        }
        _ => 0,
    }
}

/// Total MACs of the graph.
pub fn graph_macs(g: &Graph) -> u64 {
    g.node_ids().map(|id| node_macs(g, id)).sum()
}

/// Number of f32 parameters: the elements of every declared f32 weight.
pub fn param_count(g: &Graph) -> u64 {
    g.weights()
        .iter()
        .map(|&id| g.value_type(Value::of(id)))
        .filter(|t| t.dtype == crate::types::DType::F32)
        .map(|t| t.numel() as u64)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::TensorType;

    #[test]
    fn conv_and_matmul_macs() {
        let mut g = Graph::new("t");
        let x = g.add_input("x", TensorType::f32([1, 4, 8, 8])).unwrap();
        let w = g.add_weight("w", TensorType::f32([8, 2, 3, 3])).unwrap();
        let c = g
            .add(
                Op::Conv2d {
                    stride: [1, 1],
                    pad: [1, 1, 1, 1],
                    dilation: [1, 1],
                    groups: 2,
                },
                &[x, w],
            )
            .unwrap();
        let r = g.add(Op::Reshape { shape: vec![8, 64] }, &[c]).unwrap();
        let m = g.add(Op::MatMul, &[r, r]).unwrap_err();
        assert!(m.to_string().contains("inner dimensions"));
        let t = g.add(Op::Transpose { perm: vec![1, 0] }, &[r]).unwrap();
        let m = g.add(Op::MatMul, &[r, t]).unwrap();
        g.set_outputs(vec![m]);
        assert_eq!(node_macs(&g, c.node), 8 * 64 * (2 * 9));
        assert_eq!(node_macs(&g, m.node), 8 * 8 * 64);
        assert_eq!(graph_macs(&g), 8 * 64 * 18 + 8 * 8 * 64);
        assert_eq!(param_count(&g), 8 * 2 * 9);
    }
}
