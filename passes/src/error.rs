//! The optimiser's error type.

use kiln_ir::IrError;

/// Why an optimisation could not be carried out. A graph the verifier
/// accepts never makes the optimiser fail except through
/// [`PassError::Internal`], which is a bug report.
#[derive(Debug, thiserror::Error)]
pub enum PassError {
    /// The input or an intermediate graph is invalid (the verifier's or the
    /// interpreter's error, with the node it names).
    #[error(transparent)]
    Ir(#[from] IrError),
    /// A broken internal invariant of the optimiser: which one, and where.
    #[error("optimiser invariant broken: {0}")]
    Internal(String),
}
