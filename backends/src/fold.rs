//! Compile-time evaluation of nodes whose operands are all constant.
//!
//! Frontends spell some weight preparation as ops — a classifier weight
//! transposed before its matmul, a reshaped or sliced parameter — and
//! running them on every call would cost more than the layers that use
//! them (a 1000×1024 transpose is most of a small model's run time). Each
//! such node is evaluated once with the reference interpreter's `eval` and
//! replaced by a new weight, which the matmul or convolution lowering then
//! packs like any other.
//!
//! This is the backend's own minimal constant folding; the passes crate's
//! const-fold pass will make it a no-op, and it stays as a safety net.

use std::collections::HashMap;

use kiln_ir::{Graph, Limits, Model, NodeId, Op, Tensor, Value};

use crate::error::BackendError;

/// Prefix of the weights that hold folded values.
const PREFIX: &str = "__kiln_folded";

/// Returns `model` with every constant computation replaced by a weight, or
/// `None` when there is nothing to fold.
/// Folded values count against `limits.folded_bytes` (checked before each
/// is computed).
pub(crate) fn fold_constants(
    model: &Model,
    limits: &Limits,
) -> Result<Option<Model>, BackendError> {
    let g = &model.graph;
    let mut used = 0usize;
    let order = g.topo_order()?;
    let mut known: HashMap<Value, Tensor> = HashMap::new();
    let mut folded: Vec<NodeId> = Vec::new();
    for &id in &order {
        let node = g.node(id);
        match node.op {
            Op::Input => continue,
            Op::Weight => {
                if let Some(t) = model.weights.get(&node.outputs[0].name) {
                    known.insert(Value::of(id), t.clone());
                }
                continue;
            }
            _ => {}
        }
        let operands = g.operands(id);
        let Some(args) = operands
            .iter()
            .map(|v| known.get(v))
            .collect::<Option<Vec<&Tensor>>>()
        else {
            continue;
        };
        for (o, info) in node.outputs.iter().enumerate() {
            let what = g.display_value(Value {
                node: id,
                output: o,
            });
            limits.charge(&mut used, info.ty.size_bytes(), "folded", &what)?;
        }
        let results = kiln_ir::interp::eval(&node.op, &args).map_err(|msg| {
            BackendError::unsupported(
                g.display_node(id),
                format!("evaluating a constant node at compile time: {msg}"),
            )
        })?;
        for (o, t) in results.into_iter().enumerate() {
            known.insert(
                Value {
                    node: id,
                    output: o,
                },
                t,
            );
        }
        folded.push(id);
    }
    // Only nodes that do real work are worth a new weight: a reshape of a
    // weight is already free (an alias of the weight's bytes).
    let worth: Vec<NodeId> = folded
        .into_iter()
        .filter(|&id| !crate::kernels::is_alias(g, id))
        .collect();
    if worth.is_empty() {
        return Ok(None);
    }
    let mut g2: Graph = g.clone();
    let mut weights = model.weights.clone();
    for (i, &id) in worth.iter().enumerate() {
        let outs = g.node(id).outputs.len();
        for o in 0..outs {
            let v = Value {
                node: id,
                output: o,
            };
            let t = known.remove(&v).ok_or_else(|| {
                BackendError::Jit(format!("{}: folded value missing", g.display_node(id)))
            })?;
            let name = format!("{PREFIX}.{i}.{o}");
            let w = g2.add_weight(&name, t.ty())?;
            weights.insert(name, t);
            g2.replace_all_uses(v, w);
        }
    }
    g2.remove_dead();
    Ok(Some(Model { graph: g2, weights }))
}
