//! Constant folding of weights: every node whose operands are all weights
//! is computed now and replaced by a new weight — this is where batch-norm
//! folding, transposed linear weights and the scales rules introduced
//! become plain tensors in the [`WeightStore`].
//!
//! The evaluation of one op is a parameter (`eval`): the pipeline uses
//! [`eval_weight_op`], which covers the ops weight-only expressions are
//! made of (element-wise arithmetic with broadcasting, reshapes,
//! transposes). A node it cannot evaluate is left as it is — still correct,
//! just not folded.

use kiln_ir::op::{BinaryOp, Op, UnaryOp};
use kiln_ir::types::{broadcast_shapes, strides_of};
use kiln_ir::{IrError, Model, Tensor, Value};

/// Evaluates one op on tensors.
pub type EvalFn<'a> = &'a dyn Fn(&Op, &[&Tensor]) -> Result<Tensor, IrError>;

/// Folds every weight-only node into a new weight named `fold.{value}`;
/// returns how many nodes were folded.
pub fn const_fold(model: &mut Model, eval: EvalFn<'_>) -> Result<usize, IrError> {
    let g = &mut model.graph;
    let mut folded = 0;
    for id in g.topo_order()? {
        let node = g.node(id);
        if node.op.is_leaf() || node.outputs.len() != 1 {
            continue;
        }
        let operands = g.operands(id);
        if operands.is_empty() || !operands.iter().all(|v| g.is_weight(*v)) {
            continue;
        }
        let mut ins = Vec::with_capacity(operands.len());
        for v in &operands {
            let name = &g.value_info(*v).name;
            ins.push(model.weights.get(name).ok_or_else(|| {
                IrError::Weights(vec![format!("@{name}: missing during constant folding")])
            })?);
        }
        let Ok(t) = eval(&node.op, &ins) else {
            continue;
        };
        let info = node.outputs[0].clone();
        if t.ty() != info.ty {
            return Err(IrError::Node {
                node: g.display_node(id),
                msg: format!("folding produced {}, expected {}", t.ty(), info.ty),
            });
        }
        let mut name = format!("fold.{}", info.name);
        while g.weight_by_name(&name).is_some() || model.weights.contains(&name) {
            name.push('_');
        }
        model.weights.insert(name.clone(), t);
        let w = g.add_weight(name, info.ty)?;
        g.replace_all_uses(Value::of(id), w);
        g.remove_node(id);
        folded += 1;
    }
    Ok(folded)
}

fn f32s(t: &Tensor) -> Result<&[f32], IrError> {
    t.as_f32()
        .ok_or_else(|| IrError::Tensor("constant folding handles f32 only".into()))
}

/// Evaluates the ops that weight-only expressions consist of; errors on
/// anything else (the caller then leaves the node unfolded).
pub fn eval_weight_op(op: &Op, ins: &[&Tensor]) -> Result<Tensor, IrError> {
    let unsupported = || IrError::Tensor(format!("{} is not folded here", op.name()));
    match op {
        Op::Binary(b) => {
            let (x, y) = (ins[0], ins[1]);
            let shape = broadcast_shapes(x.shape(), y.shape()).ok_or_else(unsupported)?;
            let (xd, yd) = (f32s(x)?, f32s(y)?);
            let xi = broadcast_index(x.shape(), &shape);
            let yi = broadcast_index(y.shape(), &shape);
            let data: Vec<f32> = xi
                .iter()
                .zip(&yi)
                .map(|(&i, &j)| {
                    let (a, c) = (xd[i] as f64, yd[j] as f64);
                    (match b {
                        BinaryOp::Add => a + c,
                        BinaryOp::Sub => a - c,
                        BinaryOp::Mul => a * c,
                        BinaryOp::Div => a / c,
                        BinaryOp::Pow => a.powf(c),
                        BinaryOp::Max => a.max(c),
                        BinaryOp::Min => a.min(c),
                    }) as f32
                })
                .collect();
            Tensor::from_f32(shape, data)
        }
        Op::Unary(u) => {
            let f: fn(f64) -> f64 = match u {
                UnaryOp::Sqrt => f64::sqrt,
                UnaryOp::Neg => |x| -x,
                UnaryOp::Reciprocal => |x| 1.0 / x,
                UnaryOp::Exp => f64::exp,
                UnaryOp::Log => f64::ln,
                UnaryOp::Abs => f64::abs,
                UnaryOp::Identity => |x| x,
                _ => return Err(unsupported()),
            };
            let data: Vec<f32> = f32s(ins[0])?.iter().map(|&x| f(x as f64) as f32).collect();
            Tensor::from_f32(ins[0].shape().to_vec(), data)
        }
        Op::Reshape { .. } | Op::Squeeze { .. } | Op::Unsqueeze { .. } | Op::Flatten { .. } => {
            let ty = kiln_ir::shape::infer(op, &[ins[0].ty()]).map_err(IrError::Tensor)?;
            ins[0].reshaped(ty[0].shape.clone())
        }
        Op::Transpose { perm } => {
            let x = ins[0];
            let xs = strides_of(x.shape());
            let shape: Vec<usize> = perm.iter().map(|&p| x.shape()[p]).collect();
            let d = f32s(x)?;
            let n = x.numel();
            let mut data = Vec::with_capacity(n);
            let mut idx = vec![0usize; shape.len()];
            for _ in 0..n {
                let off: usize = idx.iter().zip(perm).map(|(&i, &p)| i * xs[p]).sum();
                data.push(d[off]);
                for a in (0..shape.len()).rev() {
                    idx[a] += 1;
                    if idx[a] < shape[a] {
                        break;
                    }
                    idx[a] = 0;
                }
            }
            Tensor::from_f32(shape, data)
        }
        _ => Err(unsupported()),
    }
}

/// For every element of `out` (row-major), the index into a tensor of shape
/// `shape` broadcast to it.
fn broadcast_index(shape: &[usize], out: &[usize]) -> Vec<usize> {
    let r = out.len();
    let lead = r - shape.len();
    let st = strides_of(shape);
    let n: usize = out.iter().product();
    let mut res = Vec::with_capacity(n);
    let mut idx = vec![0usize; r];
    for _ in 0..n {
        let mut off = 0;
        for a in lead..r {
            if shape[a - lead] != 1 {
                off += idx[a] * st[a - lead];
            }
        }
        res.push(off);
        for a in (0..r).rev() {
            idx[a] += 1;
            if idx[a] < out[a] {
                break;
            }
            idx[a] = 0;
        }
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcast_and_transpose() {
        let a = Tensor::from_f32([2, 1], vec![1.0, 2.0]).unwrap();
        let b = Tensor::from_f32([3], vec![10.0, 20.0, 30.0]).unwrap();
        let c = eval_weight_op(&Op::Binary(BinaryOp::Add), &[&a, &b]).unwrap();
        assert_eq!(c.shape(), [2, 3]);
        assert_eq!(c.as_f32().unwrap(), [11.0, 21.0, 31.0, 12.0, 22.0, 32.0]);
        let t = Tensor::from_f32([2, 3], vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0]).unwrap();
        let tt = eval_weight_op(&Op::Transpose { perm: vec![1, 0] }, &[&t]).unwrap();
        assert_eq!(tt.shape(), [3, 2]);
        assert_eq!(tt.as_f32().unwrap(), [0.0, 3.0, 1.0, 4.0, 2.0, 5.0]);
    }
}
