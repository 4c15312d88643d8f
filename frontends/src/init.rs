//! Deterministic seeded weight initialisation for any graph.
//!
//! SKELETON: the model-zoo work replaces this file.

use kiln_ir::{Graph, WeightStore};

/// Realistic random values for every weight `g` declares, chosen from the
/// weight's name and shape, deterministic in `seed`.
pub fn seeded_weights(_g: &Graph, _seed: u64) -> WeightStore {
    WeightStore::new()
}
