//! safetensors weight files: load into a [`kiln_ir::WeightStore`], save one.
//!
//! SKELETON: the tensor-I/O work replaces this file.

use std::path::Path;

use kiln_ir::WeightStore;

use crate::FrontendError;

/// Loads every tensor of a safetensors file (f32; i64 kept as i64).
pub fn load(_path: &Path) -> Result<WeightStore, FrontendError> {
    Err(FrontendError::Safetensors("not written yet".into()))
}

/// Saves a weight store as a safetensors file.
pub fn save(_path: &Path, _weights: &WeightStore) -> Result<(), FrontendError> {
    Err(FrontendError::Safetensors("not written yet".into()))
}
