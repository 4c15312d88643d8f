//! Kernel of `fused_linear`: `x @ w` on the GEMM driver
//! (`matmul::lower_linear`, weights packed at compile time) with the bias
//! seeding the accumulators and the activation and residual applied in the
//! tile ([`Epilogue`]) before the store.

use kiln_ir::fused::{Act, FusedOp};
use kiln_ir::{Graph, NodeId};

use super::epilogue::Epilogue;
use super::{Kernels, NodeCx, fused, matmul};
use crate::error::BackendError;

/// A `fused_linear` runs as the GEMM when its weight is a matrix and its
/// bias a vector.
pub(crate) fn supports(g: &Graph, id: NodeId) -> bool {
    let Some(FusedOp::Linear {
        bias,
        act,
        residual,
        ..
    }) = fused::fused_of(g, id)
    else {
        return false;
    };
    let ops = fused::types(g, id);
    let l = fused::layout(*bias, *act, *residual);
    ops.len() == l.count
        && ops[l.w].rank() == 2
        && !ops[l.x].shape.is_empty()
        && l.bias.is_none_or(|b| ops[b].rank() == 1)
}

/// A `fused_linear`: the GEMM with the epilogue in its tile.
pub(crate) fn lower(cx: &mut NodeCx, f: &FusedOp) -> Result<Kernels, BackendError> {
    let FusedOp::Linear {
        bias,
        act,
        residual,
    } = *f
    else {
        return Err(cx.unsupported(format!("{} is not fused_linear", f.name())));
    };
    if act == Act::DyRelu {
        return Err(cx.unsupported("fused_linear takes no dynamic ReLU"));
    }
    let l = fused::layout(bias, act, residual);
    let epi = Epilogue {
        act,
        slopes: None,
        residual: l.residual.map(|i| cx.ins[i].buf),
    };
    let bias = l.bias.map(|i| cx.ins[i].buf);
    matmul::lower_linear(cx, bias, epi)
}
