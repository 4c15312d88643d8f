//! `.npy` tensor files (NumPy format 1.0–3.0): read and write f32, C order.
//!
//! SKELETON: the tensor-I/O work replaces this file.

use std::path::Path;

use kiln_ir::Tensor;

use crate::FrontendError;

/// Decodes a `.npy` byte buffer.
pub fn decode(_bytes: &[u8]) -> Result<Tensor, FrontendError> {
    Err(FrontendError::Npy("not written yet".into()))
}

/// Encodes an f32 tensor as `.npy` (format 1.0, little-endian, C order).
pub fn encode(_t: &Tensor) -> Result<Vec<u8>, FrontendError> {
    Err(FrontendError::Npy("not written yet".into()))
}

/// Reads a `.npy` file.
pub fn read(path: &Path) -> Result<Tensor, FrontendError> {
    let bytes = std::fs::read(path).map_err(|e| FrontendError::io(path, e))?;
    decode(&bytes)
}

/// Writes a `.npy` file.
pub fn write(path: &Path, t: &Tensor) -> Result<(), FrontendError> {
    std::fs::write(path, encode(t)?).map_err(|e| FrontendError::io(path, e))
}
