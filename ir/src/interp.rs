//! The reference interpreter: naive, obviously correct, f64 accumulation.
//!
//! SKELETON: the interpreter work replaces this file.

use crate::error::IrError;
use crate::graph::Graph;
use crate::tensor::{Tensor, WeightStore};

/// Runs `g` on `inputs` (one per graph input, in order) with weight values
/// from `weights`; returns one tensor per graph output.
pub fn run(_g: &Graph, _weights: &WeightStore, _inputs: &[Tensor]) -> Result<Vec<Tensor>, IrError> {
    Err(IrError::Graph("the interpreter is not written yet".into()))
}
