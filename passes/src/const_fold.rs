//! Constant folding of weights: every node whose operands are all weights
//! is computed now and replaced by a new weight — this is where batch-norm
//! folding, transposed linear weights and the scales rules introduced
//! become plain tensors in the [`kiln_ir::WeightStore`].
//!
//! Each node is evaluated with the reference interpreter's single-op
//! [`kiln_ir::interp::eval`], so folding computes exactly what the
//! interpreter would have computed at run time. A node it refuses (a value
//! error such as an i64 overflow) is left as it is — still correct, just not
//! folded.

use kiln_ir::interp::eval;
use kiln_ir::{IrError, Limits, Model, Value};

/// Folds every weight-only node into a new weight named `fold.{value}`;
/// returns how many nodes were folded.
///
/// New weights count against `limits.folded_bytes`: a node whose value would
/// exceed it is an error, checked before the value is computed.
pub fn const_fold(model: &mut Model, limits: &Limits) -> Result<usize, IrError> {
    let g = &mut model.graph;
    let mut folded = 0;
    let mut used = 0usize;
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
        let bytes = node.outputs[0].ty.size_bytes();
        limits.charge(&mut used, bytes, "folded", &g.display_node(id))?;
        let Ok(mut t) = eval(&node.op, &ins) else {
            continue;
        };
        let t = t.remove(0);
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
