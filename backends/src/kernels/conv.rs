//! conv kernels.

use super::{Kernels, NodeCx};
use crate::error::BackendError;

/// Lowers a conv node.
pub(crate) fn lower(cx: &mut NodeCx) -> Result<Kernels, BackendError> {
    Err(cx.unsupported("not yet"))
}

/// Scratch bytes.
pub(crate) fn scratch_bytes(_g: &kiln_ir::Graph, _id: kiln_ir::NodeId) -> usize {
    0
}
