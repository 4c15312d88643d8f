//! softmax kernels.

use super::{Kernels, NodeCx};
use crate::error::BackendError;

/// Lowers a softmax node.
pub(crate) fn lower(cx: &mut NodeCx) -> Result<Kernels, BackendError> {
    Err(cx.unsupported("not yet"))
}
