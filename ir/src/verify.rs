//! The verifier: checks that a graph is a well-formed, well-typed DAG.
//!
//! Run after parsing, after every pass in tests and debug builds, and before
//! code generation. It trusts nothing the raw graph API allowed.

use crate::error::IrError;
use crate::graph::{Graph, Value};
use crate::op::{Op, ReduceKind};
use crate::shape;
use crate::tensor::WeightStore;
use crate::types::TensorType;

/// Checks, in order: the graph is acyclic; every node's operand slots are
/// `0..n` exactly once and refer to existing outputs; the operand count fits
/// the op's arity; the attributes are valid and the declared output types
/// equal the inferred ones; leaves are registered as inputs/weights; the
/// graph has outputs and they exist. The first problem found is returned,
/// naming the node.
pub fn verify(g: &Graph) -> Result<(), IrError> {
    let order = g.topo_order()?;
    for id in order {
        let node = g.node(id);
        let here = || g.display_node(id);
        let bad = |msg: String| IrError::Node { node: here(), msg };
        let edges = g.operand_edges(id);
        for (i, (slot, v)) in edges.iter().enumerate() {
            if *slot != i {
                return Err(bad(if *slot < i {
                    format!("operand {slot} is given twice")
                } else {
                    format!("operand {i} is missing")
                }));
            }
            if g.try_node(v.node)
                .is_none_or(|n| v.output >= n.outputs.len())
            {
                return Err(bad(format!(
                    "operand {i} refers to a value that does not exist"
                )));
            }
        }
        if node.op.is_leaf() {
            let registered = match node.op {
                Op::Input => g.inputs().contains(&id),
                _ => g.weights().contains(&id),
            };
            if !edges.is_empty() || node.outputs.len() != 1 || !registered {
                return Err(bad(
                    "a graph input or weight must be a registered leaf with one value".into(),
                ));
            }
            node.outputs[0].ty.check_size().map_err(bad)?;
            continue;
        }
        let types: Vec<TensorType> = edges
            .iter()
            .map(|(_, v)| g.value_type(*v).clone())
            .collect();
        let inferred = shape::infer(&node.op, &types).map_err(bad)?;
        check_empty(&node.op, &types, &inferred).map_err(bad)?;
        let declared: Vec<&TensorType> = node.outputs.iter().map(|o| &o.ty).collect();
        if inferred.len() != declared.len() {
            return Err(bad(format!(
                "declares {} result(s), the op produces {}",
                declared.len(),
                inferred.len()
            )));
        }
        for (o, (want, got)) in inferred.iter().zip(declared).enumerate() {
            if want != got {
                let which = if inferred.len() > 1 {
                    format!(" {o}")
                } else {
                    String::new()
                };
                return Err(bad(format!(
                    "result{which} is declared {got} but the op produces {want}"
                )));
            }
        }
    }
    if g.outputs().is_empty() {
        return Err(IrError::Graph("the graph has no outputs".into()));
    }
    for v in g.outputs() {
        g.try_value_info(*v)?;
    }
    Ok(())
}

/// Empty tensors (a dimension of size 0): an op whose results are all empty
/// computes nothing, so any op may produce them (backends emit no kernel,
/// the interpreter returns the empty value). A non-empty result from an
/// empty operand is computed by the ops whose kernels are tested on it
/// (`backends/tests/api.rs`, `zero_sized_dimensions`, and the ONNX node
/// tests `reduce_{max,min}_empty_set`): a matmul with K = 0 (zeros), a sum
/// (zeros) or max (-inf) over an empty axis, and a concat with an empty
/// part. Any other op with a non-empty result may not read an empty operand
/// — a convolution over 0 input channels, a mean over nothing: it is
/// refused here, naming the operand and the dimension, so no other kernel
/// ever sees an empty operand.
pub(crate) fn check_empty(
    op: &Op,
    operands: &[TensorType],
    results: &[TensorType],
) -> Result<(), String> {
    let computes_empty = matches!(
        op,
        Op::MatMul
            | Op::Concat { .. }
            | Op::Reduce {
                kind: ReduceKind::Sum | ReduceKind::Max,
                ..
            }
    );
    if computes_empty || results.iter().all(|t| t.numel() == 0) {
        return Ok(());
    }
    for (i, t) in operands.iter().enumerate() {
        if let Some(d) = t.shape.iter().position(|&d| d == 0) {
            return Err(format!(
                "operand {i} ({t}) is empty (dimension {d} is 0) but the result is not: \
                 kiln does not compute ops over empty tensors with non-empty results"
            ));
        }
    }
    Ok(())
}

/// Checks that `weights` holds a value of the declared type for every weight
/// of `g`. Lists every missing or mis-typed tensor in one error. Extra
/// tensors in the store are allowed (a store may serve several graphs).
pub fn verify_weights(g: &Graph, weights: &WeightStore) -> Result<(), IrError> {
    let mut problems = Vec::new();
    for &id in g.weights() {
        let info = g.value_info(Value::of(id));
        match weights.get(&info.name) {
            None => problems.push(format!("@{}: missing (declared {})", info.name, info.ty)),
            Some(t) if t.ty() != info.ty => {
                problems.push(format!(
                    "@{}: declared {}, value is {}",
                    info.name,
                    info.ty,
                    t.ty()
                ));
            }
            Some(_) => {}
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(IrError::Weights(problems))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::ValueInfo;
    use crate::op::{BinaryOp, UnaryOp};
    use crate::tensor::Tensor;

    fn info(name: &str, shape: &[usize]) -> Vec<ValueInfo> {
        vec![ValueInfo {
            name: name.into(),
            ty: TensorType::f32(shape),
        }]
    }

    #[test]
    fn accepts_built_graph() {
        let mut g = Graph::new("t");
        let x = g.add_input("x", TensorType::f32([2, 3])).unwrap();
        let y = g.add(Op::Unary(UnaryOp::Relu), &[x]).unwrap();
        g.set_outputs(vec![y]);
        verify(&g).unwrap();
    }

    #[test]
    fn rejects_wrong_declared_type() {
        let mut g = Graph::new("t");
        let x = g.add_input("x", TensorType::f32([2, 3])).unwrap();
        let r = g
            .add_raw(Op::Unary(UnaryOp::Relu), info("r", &[3, 2]))
            .unwrap();
        g.connect(x, r, 0);
        g.set_outputs(vec![Value::of(r)]);
        let e = verify(&g).unwrap_err().to_string();
        assert_eq!(
            e,
            "%r (relu): result is declared f32[3,2] but the op produces f32[2,3]"
        );
    }

    #[test]
    fn rejects_missing_operand_and_arity() {
        let mut g = Graph::new("t");
        let x = g.add_input("x", TensorType::f32([2])).unwrap();
        let a = g
            .add_raw(Op::Binary(BinaryOp::Add), info("a", &[2]))
            .unwrap();
        g.connect(x, a, 1);
        g.set_outputs(vec![Value::of(a)]);
        assert!(
            verify(&g)
                .unwrap_err()
                .to_string()
                .contains("operand 0 is missing")
        );
        g.connect(x, a, 0);
        verify(&g).unwrap();
        g.connect(x, a, 2);
        let e = verify(&g).unwrap_err().to_string();
        assert!(e.contains("takes 2 operand(s), got 3"), "{e}");
    }

    #[test]
    fn rejects_no_outputs() {
        let mut g = Graph::new("t");
        g.add_input("x", TensorType::f32([2])).unwrap();
        assert!(verify(&g).is_err());
    }

    #[test]
    fn weights_are_checked_together() {
        let mut g = Graph::new("t");
        g.add_weight("a", TensorType::f32([2])).unwrap();
        g.add_weight("b", TensorType::f32([2])).unwrap();
        let mut w = WeightStore::new();
        w.insert("a", Tensor::from_f32([3], vec![0.0; 3]).unwrap());
        let e = verify_weights(&g, &w).unwrap_err().to_string();
        assert!(
            e.contains("@a: declared f32[2], value is f32[3]") && e.contains("@b: missing"),
            "{e}"
        );
    }
}
