//! The backend's error type: everything that can stop a model from compiling
//! or a compiled model from running.

use kiln_ir::IrError;

/// Errors from [`crate::compile`] and [`crate::CompiledModel::run`]. Each
/// variant about a particular node names it the way the IR does
/// (`%12 (conv2d)`), so a message points at the line of the `.kir` text.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The model is not a valid graph, or its weights do not match it: the
    /// verifier's error, unchanged.
    #[error("invalid model: {0}")]
    Invalid(#[from] IrError),
    /// A node the JIT cannot compile, e.g. an `i64` computation (the ONNX
    /// importer folds shape arithmetic away, so these should not reach the
    /// backend). The message says what is unsupported.
    #[error("{node}: unsupported in the JIT: {msg}")]
    Unsupported {
        /// the node, as printed by the IR (`%12 (cast)`)
        node: String,
        /// what is unsupported
        msg: String,
    },
    /// Cranelift rejected the code generated for a node: a bug in kiln's
    /// lowering, reported rather than panicking.
    #[error("{node}: code generation failed: {msg}")]
    Codegen {
        /// the node the kernel came from
        node: String,
        /// Cranelift's message
        msg: String,
    },
    /// The host CPU or the JIT module could not be set up.
    #[error("JIT setup: {0}")]
    Jit(String),
    /// An ahead-of-time target triple or CPU level kiln does not support,
    /// or a model the object-file entry point cannot express; the message
    /// lists what is supported.
    #[error("target: {0}")]
    Target(String),
    /// Writing the object file failed.
    #[error("object file: {0}")]
    Object(String),
    /// Inputs given to `run` do not match the graph: wrong count, dtype or shape.
    #[error("input: {0}")]
    Input(String),
    /// Output buffers given to `run_into` do not match the graph's outputs.
    #[error("output: {0}")]
    Output(String),
}

impl BackendError {
    /// An [`BackendError::Unsupported`] for `node`.
    pub(crate) fn unsupported(node: impl Into<String>, msg: impl Into<String>) -> BackendError {
        BackendError::Unsupported {
            node: node.into(),
            msg: msg.into(),
        }
    }
}
