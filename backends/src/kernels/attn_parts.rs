//! What the kernels of the attention-type fused ops (`mha.rs`, `m2f.rs`,
//! `f2m.rs`) share: the bridges' dimensions, the byte layout of a node's
//! scratch arrays, run-time pointers with their read flags, the
//! unnormalised row softmax, and the token-side projections.
//!
//! The projections (`M` = 3–6 rows for the bridges) run on the GEMM driver
//! through `matmul::lower_linear` on sub-nodes ([`project`]): packed
//! weights, assembled tiles, bias seeds and epilogues (the gate's hard
//! sigmoid, `Wo`'s `+z` residual).

use cranelift_codegen::ir::{InstBuilder, MemFlagsData, Type, Value};
use kiln_ir::TensorType;
use kiln_ir::fused::FusedOp;

use super::epilogue::Epilogue;
use super::rows::{Fold, map_run, reduce_run};
use super::{Kernels, NodeCx, Operand, matmul};
use crate::codegen::math::exp;
use crate::codegen::{Buf, Emitter, Loc, V4};
use crate::error::BackendError;

/// The most tokens a bridge kernel takes: one f32x4 accumulator per token
/// is live in its inner loops (Mobile-Former has 3–6 tokens).
pub(crate) const MAX_TOKENS: usize = 12;

pub(super) fn shape_is(t: Option<&TensorType>, s: &[usize]) -> bool {
    t.is_some_and(|t| t.shape == s)
}

/// The dimensions of a bridge, from its operand types.
#[derive(Clone, Copy, Debug)]
pub(super) struct Bridge {
    pub n: usize,
    pub c: usize,
    /// pixels per channel (`H·W`)
    pub l: usize,
    /// tokens
    pub m: usize,
    /// token width
    pub d: usize,
    pub heads: usize,
}

impl Bridge {
    pub(super) fn of(ops: &[TensorType], heads: usize) -> Option<Bridge> {
        let (x, z) = (ops.first()?, ops.get(1)?);
        if x.rank() != 4 || z.rank() != 3 || heads == 0 || x.shape[1] % heads != 0 {
            return None;
        }
        let b = Bridge {
            n: x.shape[0],
            c: x.shape[1],
            l: x.shape[2] * x.shape[3],
            m: z.shape[1],
            d: z.shape[2],
            heads,
        };
        (z.shape[0] == b.n && (1..=MAX_TOKENS).contains(&b.m)).then_some(b)
    }

    /// channels per head
    pub(super) fn dh(&self) -> usize {
        self.c / self.heads
    }
}

/// Byte offsets of the scratch arrays of a bridge, and the total.
pub(super) struct Scratch {
    pub parts: Vec<usize>,
    pub total: usize,
}

impl Scratch {
    pub(super) fn new(sizes: &[usize]) -> Scratch {
        let mut parts = Vec::new();
        let mut total = 0;
        for &s in sizes {
            parts.push(total);
            // keep every array 64-byte aligned
            total += (4 * s).div_ceil(64) * 64;
        }
        Scratch { parts, total }
    }
}

/// A pointer into a tensor and its read flags, at run time.
#[derive(Clone, Copy)]
pub(super) struct Ptr {
    pub p: Value,
    pub f: MemFlagsData,
}

impl Ptr {
    pub(super) fn at(self, e: &mut Emitter, idx: Value, scale: i64) -> Ptr {
        Ptr {
            p: e.index(self.p, idx, scale),
            f: self.f,
        }
    }
    pub(super) fn off(self, e: &mut Emitter, bytes: i64) -> Ptr {
        Ptr {
            p: e.off(self.p, bytes),
            f: self.f,
        }
    }
    pub(super) fn load(self, e: &mut Emitter, ty: Type, bytes: i64) -> Value {
        e.load(ty, self.f, self.p, bytes)
    }
}

/// The base of `buf` with its read flags.
pub(super) fn base(e: &mut Emitter, buf: Buf) -> Ptr {
    Ptr {
        p: e.base(buf),
        f: Emitter::rflags(buf),
    }
}

/// Softmax of a contiguous row in place, unnormalised: `row = exp(row -
/// max)`; returns `1 / Σ row`.
pub(super) fn exp_row(e: &mut Emitter, row: Ptr, len: usize) -> Value {
    let m = reduce_run(e, Fold::Max, row.p, len, 1, row.f, None);
    let mv = e.b.ins().splat(V4, m);
    let sub_exp = |e: &mut Emitter, ty: Type, v: Value| {
        let d = e.b.ins().fsub(v, if ty == V4 { mv } else { m });
        exp(e, ty, d)
    };
    let s = map_run(e, row.p, row.p, len, row.f, &sub_exp, true).unwrap_or(m);
    let one = e.fc(1.0);
    e.b.ins().fdiv(one, s)
}
/// The `k`-th scratch array of a node.
pub(super) fn part(cx: &NodeCx, s: &Scratch, k: usize) -> Result<Buf, BackendError> {
    match cx.scratch {
        Some(Buf {
            loc: Loc::Arena(off),
            ..
        }) => Ok(Buf::output(Loc::Arena(off + s.parts[k]))),
        _ => Err(cx.unsupported("attention kernel without its arena scratch")),
    }
}

/// `dst = x·w + bias` (`x [.., K]`, `w [K, N]`) with `epi`, on the GEMM
/// driver: `matmul::lower_linear` on a node of its own made of these
/// operands (weights are packed at compile time as for `fused_linear`).
pub(super) fn project<'a>(
    cx: &mut NodeCx<'a>,
    x: Operand<'a>,
    w: usize,
    bias: usize,
    dst: (Buf, Vec<usize>),
    epi: Epilogue,
) -> Result<Kernels, BackendError> {
    let wo = &cx.ins[w];
    let ins = vec![
        x,
        Operand {
            buf: wo.buf,
            ty: wo.ty.clone(),
            data: wo.data,
        },
    ];
    let bias = cx.ins[bias].buf;
    let mut sub = NodeCx {
        name: cx.name.clone(),
        op: cx.op,
        ins,
        outs: vec![(dst.0, TensorType::f32(dst.1))],
        scratch: None,
        threads: cx.threads,
        tile: cx.tile,
        consts: &mut *cx.consts,
        asm: cx.asm.as_deref_mut(),
    };
    matmul::lower_linear(&mut sub, Some(bias), epi)
}

/// Operand `i` of the node, as a sub-node's operand.
pub(super) fn operand<'a>(cx: &NodeCx<'a>, i: usize) -> Operand<'a> {
    let o = &cx.ins[i];
    Operand {
        buf: o.buf,
        ty: o.ty.clone(),
        data: o.data,
    }
}

/// A scratch array as a sub-node's (run-time) operand.
pub(super) fn scratch_operand<'a>(buf: Buf, shape: Vec<usize>) -> Operand<'a> {
    Operand {
        buf,
        ty: TensorType::f32(shape),
        data: None,
    }
}

/// The operand types of the node `f` being lowered, checked with the
/// kernel's `has_kernel`.
pub(super) fn checked_types(
    cx: &NodeCx,
    f: &FusedOp,
    has_kernel: fn(&FusedOp, &[TensorType]) -> bool,
) -> Result<Vec<TensorType>, BackendError> {
    let types: Vec<TensorType> = cx.ins.iter().map(|o| o.ty.clone()).collect();
    if !has_kernel(f, &types) {
        return Err(cx.unsupported(format!("{} operands this kernel does not take", f.name())));
    }
    Ok(types)
}
