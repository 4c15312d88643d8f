//! Max and average pooling: the depthwise sliding-window kernel without
//! weights (see [`super::depthwise::Mode`]).

use kiln_ir::{Op, PoolKind};

use super::conv::Geom;
use super::depthwise::{self, Mode};
use super::{Kernels, NodeCx};
use crate::error::BackendError;

/// Lowers a pool2d node.
pub(crate) fn lower(cx: &mut NodeCx) -> Result<Kernels, BackendError> {
    let Op::Pool2d {
        kind,
        kernel,
        stride,
        pad,
        count_include_pad,
    } = *cx.op
    else {
        return Err(cx.unsupported("not a pooling op"));
    };
    let x = &cx.ins[0].ty.shape;
    let out = &cx.outs[0].1.shape;
    let g = Geom {
        n: x[0],
        c: x[1],
        h: x[2],
        w: x[3],
        o: x[1],
        cg: 1,
        kh: kernel[0],
        kw: kernel[1],
        ho: out[2],
        wo: out[3],
        stride,
        pad,
        dil: [1, 1],
        groups: x[1],
    };
    let mode = match kind {
        PoolKind::Max => Mode::Max,
        PoolKind::Avg => Mode::Avg {
            include_pad: count_include_pad,
        },
    };
    depthwise::lower_pool(cx, g, mode)
}
