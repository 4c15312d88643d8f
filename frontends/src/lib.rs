//! kiln-frontends: everything that turns outside material into kiln graphs
//! and tensors — the model zoo, ONNX files, safetensors weights, `.npy` arrays.
//!
//! Frontends emit primitive ops only; fusions are the optimiser's job.

pub mod builder;
pub mod error;
pub mod init;
pub mod npy;
pub mod onnx;
pub mod safetensors;
pub mod zoo;

pub use error::FrontendError;
