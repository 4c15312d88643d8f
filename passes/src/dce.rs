//! Dead-code elimination: drops every node no graph output needs, and the
//! weight values nothing declares any more.

use std::collections::BTreeSet;

use kiln_ir::{Model, Value};

/// Removes dead nodes (graph inputs stay: they are the signature) and the
/// store's tensors that no remaining weight node names. Returns how many
/// nodes were removed.
pub fn dce(model: &mut Model) -> usize {
    let removed = model.graph.remove_dead();
    let used: BTreeSet<String> = model
        .graph
        .weights()
        .iter()
        .map(|&id| model.graph.value_info(Value::of(id)).name.clone())
        .collect();
    let stale: Vec<String> = model
        .weights
        .iter()
        .map(|(n, _)| n.to_string())
        .filter(|n| !used.contains(n))
        .collect();
    for n in stale {
        model.weights.remove(&n);
    }
    removed
}
