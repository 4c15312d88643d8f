//! The frontends' error type, one variant group per input kind.

use std::path::PathBuf;

use kiln_ir::IrError;

/// Errors from reading models, weights and tensors. Each names the file,
/// tensor or node concerned.
#[derive(Debug, thiserror::Error)]
pub enum FrontendError {
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// the file
        path: PathBuf,
        /// the OS error
        source: std::io::Error,
    },
    /// A malformed or unsupported `.npy` file.
    #[error("npy: {0}")]
    Npy(String),
    /// A malformed safetensors file or an unsupported tensor in it.
    #[error("safetensors: {0}")]
    Safetensors(String),
    /// A problem in an ONNX model (names the node where there is one).
    #[error("onnx: {0}")]
    Onnx(String),
    /// An unknown zoo model or bad zoo option.
    #[error("zoo: {0}")]
    Zoo(String),
    /// The IR rejected what the frontend built.
    #[error(transparent)]
    Ir(#[from] IrError),
    /// An ONNX model that uses what kiln cannot import: every unsupported
    /// operator in the file at once (each with its node), an element type
    /// kiln has no room for, or an opset outside the supported range.
    #[error("onnx: {}", crate::onnx::describe_unsupported(.0))]
    OnnxUnsupported(Vec<crate::onnx::Unsupported>),
}

impl FrontendError {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> FrontendError {
        FrontendError::Io {
            path: path.into(),
            source,
        }
    }
}
