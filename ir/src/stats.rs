//! Model statistics: parameter and multiply-accumulate (MAC) counts.
//!
//! Counting convention (documented for `kiln info` in docs/cli.md): a MAC is
//! one multiply-add of a conv2d, matmul or gemm, i.e. of the layers whose
//! arithmetic dominates these models; attention products are matmuls and so
//! are counted. Element-wise ops, norms, softmax and pooling count 0. This
//! is the "pure conv/linear MAC" convention the model specs compare with.

use crate::error::IrError;
use crate::fused::Emitter;
use crate::graph::{Graph, NodeId, Value};
use crate::op::Op;
use crate::types::TensorType;

/// Multiply-accumulates performed by one node. A fused op performs those
/// of the primitive ops it stands for (its expansion).
pub fn node_macs(g: &Graph, id: NodeId) -> u64 {
    let node = g.node(id);
    let Some(out) = node.outputs.first().map(|o| &o.ty) else {
        return 0;
    };
    let ins: Vec<TensorType> = g
        .operands(id)
        .iter()
        .map(|v| g.value_type(*v).clone())
        .collect();
    op_macs(&node.op, &ins, out)
}

/// MACs of `op` on operands of types `ins` producing `out`.
fn op_macs(op: &Op, ins: &[TensorType], out: &TensorType) -> u64 {
    match op {
        Op::Conv2d { .. } => {
            // every output element takes (C/groups)·kh·kw MACs
            let w = &ins[1].shape;
            (out.numel() as u64) * (w[1] * w[2] * w[3]) as u64
        }
        Op::MatMul => {
            // output elements × K
            let a = &ins[0].shape;
            (out.numel() as u64) * (*a.last().unwrap_or(&1) as u64)
        }
        Op::Gemm { trans_a, .. } => {
            let a = &ins[0].shape;
            let k = if *trans_a { a[0] } else { a[1] };
            (out.numel() as u64) * k as u64
        }
        Op::Fused(f) => {
            let mut e = MacEmitter(0);
            // A verified node's expansion type-checks; count 0 otherwise.
            f.expand(&mut e, ins).map_or(0, |_| e.0)
        }
        _ => 0,
    }
}

/// Sums the MACs of a fused op's expansion, on types.
struct MacEmitter(u64);

impl Emitter for MacEmitter {
    type V = TensorType;
    fn op(&mut self, op: Op, args: &[TensorType]) -> Result<TensorType, IrError> {
        let out = crate::shape::infer(&op, args)
            .map_err(IrError::Graph)?
            .remove(0);
        self.0 += op_macs(&op, args, &out);
        Ok(out)
    }
    fn scalar(&mut self, _x: f32) -> Result<TensorType, IrError> {
        Ok(TensorType::f32(Vec::new()))
    }
    fn ty(&self, v: &TensorType) -> TensorType {
        v.clone()
    }
}

/// Total MACs of the graph.
pub fn graph_macs(g: &Graph) -> u64 {
    g.node_ids().map(|id| node_macs(g, id)).sum()
}

/// Whether weight `w` is a model *parameter* in the papers' sense: an f32
/// weight that is neither a scalar constant (rank 0: the literals a
/// frontend materialises, like `2.0` in a gate) nor a batch-norm running
/// statistic (operands 3 and 4 of `batch_norm`, buffers rather than
/// parameters). With this convention the zoo reproduces every published
/// parameter figure (docs/zoo.md).
pub fn is_parameter(g: &Graph, w: Value) -> bool {
    let ty = g.value_type(w);
    if ty.dtype != crate::types::DType::F32 || ty.rank() == 0 {
        return false;
    }
    let users = g.users(w);
    users.is_empty()
        || users
            .iter()
            .any(|&(n, operand)| !(matches!(g.node(n).op, Op::BatchNorm { .. }) && operand >= 3))
}

/// Number of parameters: the elements of every weight [`is_parameter`] accepts.
pub fn param_count(g: &Graph) -> u64 {
    g.weights()
        .iter()
        .map(|&id| Value::of(id))
        .filter(|&w| is_parameter(g, w))
        .map(|w| g.value_type(w).numel() as u64)
        .sum()
}

/// Number of weight elements that are not parameters: batch-norm running
/// statistics and scalar constants.
pub fn buffer_count(g: &Graph) -> u64 {
    g.weights()
        .iter()
        .map(|&id| Value::of(id))
        .filter(|&w| !is_parameter(g, w))
        .map(|w| g.value_type(w).numel() as u64)
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
        assert_eq!(buffer_count(&g), 0);
    }

    #[test]
    fn running_stats_and_scalars_are_not_parameters() {
        let mut g = Graph::new("t");
        let x = g.add_input("x", TensorType::f32([1, 4, 2, 2])).unwrap();
        let p: Vec<Value> = ["g", "b", "m", "v"]
            .iter()
            .map(|n| g.add_weight(*n, TensorType::f32([4])).unwrap())
            .collect();
        let bn = g
            .add(
                Op::BatchNorm {
                    eps: crate::op::Float(1e-5),
                },
                &[x, p[0], p[1], p[2], p[3]],
            )
            .unwrap();
        let two = g.add_weight("two", TensorType::f32(Vec::new())).unwrap();
        let y = g
            .add(Op::Binary(crate::op::BinaryOp::Mul), &[bn, two])
            .unwrap();
        g.set_outputs(vec![y]);
        assert!(is_parameter(&g, p[0]) && is_parameter(&g, p[1]));
        assert!(!is_parameter(&g, p[2]) && !is_parameter(&g, p[3]) && !is_parameter(&g, two));
        assert_eq!(param_count(&g), 8);
        assert_eq!(buffer_count(&g), 9);
    }
}
