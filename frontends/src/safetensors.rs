//! safetensors weight files: load into a [`kiln_ir::WeightStore`], save one.
//!
//! Parsing and validation (header JSON, offsets, sizes) is the `safetensors`
//! crate's; this module converts between its byte views and our tensors and
//! turns its errors into messages that name the file and the tensor.

use std::path::Path;

use ::safetensors::tensor::{Dtype, SafeTensorError, SafeTensors, TensorView};
use kiln_ir::{Tensor, TensorData, WeightStore};

use crate::FrontendError;

fn err(path: &Path, msg: impl std::fmt::Display) -> FrontendError {
    FrontendError::Safetensors(format!("{}: {msg}", path.display()))
}

/// Loads every tensor of a safetensors file: `F32` as `f32`, `I64` as `i64`.
/// Any other dtype is an error naming the tensor and its dtype; so is a
/// corrupt or truncated file.
pub fn load(path: &Path) -> Result<WeightStore, FrontendError> {
    let bytes = std::fs::read(path).map_err(|e| FrontendError::io(path, e))?;
    decode(&bytes).map_err(|msg| err(path, msg))
}

/// [`load`] from bytes already in memory (errors name no file).
pub fn load_bytes(bytes: &[u8]) -> Result<WeightStore, FrontendError> {
    decode(bytes).map_err(FrontendError::Safetensors)
}

/// [`save`] into bytes in memory.
pub fn save_bytes(weights: &WeightStore) -> Result<Vec<u8>, FrontendError> {
    encode(weights).map_err(FrontendError::Safetensors)
}

/// Parses a safetensors byte buffer; the error is a message without the path.
fn decode(bytes: &[u8]) -> Result<WeightStore, String> {
    let st = SafeTensors::deserialize(bytes).map_err(describe)?;
    let mut store = WeightStore::new();
    // Sorted so that, of several bad tensors, the first by name is reported
    // every time.
    let mut views = st.tensors();
    views.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, view) in views {
        let shape = view.shape().to_vec();
        let data = view.data();
        let tensor = match view.dtype() {
            Dtype::F32 => Tensor::from_f32(
                shape,
                data.chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect::<Vec<_>>(),
            ),
            Dtype::I64 => Tensor::from_i64(
                shape,
                data.chunks_exact(8)
                    .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                    .collect::<Vec<_>>(),
            ),
            other => {
                return Err(format!(
                    "tensor `{name}` has dtype {other:?}; kiln reads F32 and I64 \
                     (convert it before saving, e.g. tensor.to(torch.float32))"
                ));
            }
        }
        .map_err(|e| format!("tensor `{name}`: {e}"))?;
        store.insert(name, tensor);
    }
    Ok(store)
}

/// The crate's error, phrased for someone holding a file that failed to load.
fn describe(e: SafeTensorError) -> String {
    let what = match &e {
        SafeTensorError::HeaderTooSmall
        | SafeTensorError::InvalidHeaderLength
        | SafeTensorError::MetadataIncompleteBuffer => {
            "the file is truncated or not a safetensors file"
        }
        _ => "not a valid safetensors file",
    };
    format!("{what} ({e})")
}

/// Saves a weight store as a safetensors file (tensors in name order, data
/// little-endian), readable by [`load`] and by the Python `safetensors` package.
pub fn save(path: &Path, weights: &WeightStore) -> Result<(), FrontendError> {
    let bytes = encode(weights).map_err(|msg| err(path, msg))?;
    std::fs::write(path, bytes).map_err(|e| FrontendError::io(path, e))
}

fn encode(weights: &WeightStore) -> Result<Vec<u8>, String> {
    let raw: Vec<(&str, Dtype, &[usize], Vec<u8>)> = weights
        .iter()
        .map(|(name, t)| {
            let (dtype, bytes) = match t.data() {
                TensorData::F32(v) => {
                    (Dtype::F32, v.iter().flat_map(|x| x.to_le_bytes()).collect())
                }
                TensorData::I64(v) => {
                    (Dtype::I64, v.iter().flat_map(|x| x.to_le_bytes()).collect())
                }
            };
            (name, dtype, t.shape(), bytes)
        })
        .collect();
    let views = raw
        .iter()
        .map(|(name, dtype, shape, bytes)| {
            TensorView::new(*dtype, shape.to_vec(), bytes)
                .map(|v| (*name, v))
                .map_err(|e| format!("tensor `{name}`: {e}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    ::safetensors::serialize(views, None).map_err(|e| e.to_string())
}
