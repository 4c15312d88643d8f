//! depthwise kernels.

use super::{Kernels, NodeCx};
use crate::error::BackendError;

/// Lowers a depthwise node.
pub(crate) fn lower(cx: &mut NodeCx) -> Result<Kernels, BackendError> {
    Err(cx.unsupported("not yet"))
}
