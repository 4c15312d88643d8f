//! Kernel lowering: one module per op family, each turning a graph node into
//! one or more [`Kernel`]s — descriptions that can emit a Cranelift function
//! `fn(arena, begin, end)` computing units `[begin, end)` of the kernel's
//! outer (parallel) loop.
//!
//! Adding a primitive op is one new module with a `lower(&mut NodeCx) ->
//! Result<Vec<Box<dyn Kernel>>, BackendError>` and one line in [`lower`];
//! the planner asks [`inplace_operand`] and [`scratch_bytes`] about it,
//! both of which default to "no". A fused op's kernel is one entry of the
//! table in `fused.rs` (`fused::kernel`: supports, scratch, lower), which
//! `lower`, `scratch_bytes` and the driver's unfusing read; it reads its
//! operands through the IR's layout (`kiln_ir::fused::<op>::operands`).
//!
//! Contract of every kernel: the units partition the work, each unit's
//! results do not depend on which other units run on the same thread or in
//! which order (so results are identical for every thread count), and units
//! never write the same bytes.

pub(crate) mod attn_parts;
pub(crate) mod conv;
pub(crate) mod conv_chain;
pub(crate) mod conv_direct;
pub(crate) mod copy;
pub(crate) mod depthwise;
pub(crate) mod elementwise;
pub(crate) mod epilogue;
pub(crate) mod f2m;
pub(crate) mod fused;
pub(crate) mod gemm;
pub(crate) mod linear;
pub(crate) mod m2f;
pub(crate) mod matmul;
pub(crate) mod mha;
pub(crate) mod nest;
pub(crate) mod norm;
pub(crate) mod pool;
pub(crate) mod reduce;
pub(crate) mod resize;
pub(crate) mod rows;
pub(crate) mod sep_attn;
pub(crate) mod softmax;
pub(crate) mod winograd;

use cranelift_codegen::ir::Value as ClValue;
use kiln_ir::{DType, Graph, NodeId, Op, TensorType, UnaryOp};

use crate::codegen::{Buf, Emitter};
use crate::error::BackendError;
use crate::runtime::ConstStore;
use crate::ukernels::Registry;
use crate::ukernels::vector::Width;

/// Which Cranelift optimisation level a kernel wants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Opt {
    /// `opt_level=none`: register-tiled GEMM code, which `speed` spills.
    None,
    /// `opt_level=speed`.
    Speed,
}

/// One compiled function of a node: see the module docs.
pub(crate) trait Kernel {
    /// A short description for `--emit clif` and reports.
    fn describe(&self) -> String;
    /// Number of units of the outer loop (may be 0: nothing to do).
    fn units(&self) -> usize;
    /// Rough amount of work (flops or elements touched), to decide whether
    /// splitting over threads pays for the synchronisation.
    fn cost(&self) -> f64;
    /// The optimisation level to compile with.
    fn opt(&self) -> Opt {
        Opt::Speed
    }
    /// Emits the body handling units `[begin, end)`. The emitter is in the
    /// entry block; the caller adds the return.
    fn emit(&self, e: &mut Emitter, begin: ClValue, end: ClValue);
}

/// A tensor operand as lowering sees it.
pub(crate) struct Operand<'a> {
    /// where it lives
    pub buf: Buf,
    /// its static type
    pub ty: TensorType,
    /// its value, when it is a weight (known at compile time)
    pub data: Option<&'a [f32]>,
}

/// Everything lowering needs to know about one node.
pub(crate) struct NodeCx<'a> {
    /// the node's printed name, for errors (`%12 (conv2d)`)
    pub name: String,
    /// the op
    pub op: &'a Op,
    /// operands, in order
    pub ins: Vec<Operand<'a>>,
    /// results: location and type
    pub outs: Vec<(Buf, TensorType)>,
    /// the scratch space requested through [`scratch_bytes`]
    pub scratch: Option<Buf>,
    /// worker count the model is compiled for (for choosing unit sizes only;
    /// results never depend on it)
    pub threads: usize,
    /// the GEMM register tile
    pub tile: gemm::Tile,
    /// owner of packed weights and tables the kernels point into
    pub consts: &'a mut ConstStore,
    /// assembled functions (GEMM tiles at the store's level, AVX2 or
    /// AVX-512), when the target has them and the options allow them
    pub asm: Option<&'a mut Registry>,
}

impl NodeCx<'_> {
    /// The store, if its level is AVX-512 (for assembled functions that
    /// exist only at that width).
    pub fn asm512(&mut self) -> Option<&mut Registry> {
        self.asm
            .as_deref_mut()
            .filter(|s| s.level() == crate::target::TileLevel::Avx512)
    }

    /// The store and the vector width of its level, for the assembled
    /// functions that exist at both AVX2 and AVX-512 (`ukernels/vector.rs`,
    /// `ukernels/dw_plane.rs`): each op gets the widest correct code for the target.
    pub fn asm_width(&mut self) -> Option<(&mut Registry, Width)> {
        let store = self.asm.as_deref_mut()?;
        let w = Width::of(store.level())?;
        Some((store, w))
    }

    /// An [`BackendError::Unsupported`] naming this node.
    pub fn unsupported(&self, msg: impl Into<String>) -> BackendError {
        BackendError::unsupported(self.name.clone(), msg)
    }
}

/// The boxed kernels a node lowers to, run in order.
pub(crate) type Kernels = Vec<Box<dyn Kernel>>;

/// Whether a node needs no code: its value is its operand's bytes viewed
/// with another shape.
pub(crate) fn is_alias(g: &Graph, id: NodeId) -> bool {
    match &g.node(id).op {
        Op::Reshape { .. }
        | Op::Squeeze { .. }
        | Op::Unsqueeze { .. }
        | Op::Flatten { .. }
        | Op::Unary(UnaryOp::Identity) => true,
        Op::Cast { to } => g
            .operands(id)
            .first()
            .is_some_and(|&v| g.value_type(v).dtype == *to),
        _ => false,
    }
}

/// The operand whose buffer a node may overwrite with its result, if any:
/// element-wise ops whose result has that operand's exact type (each output
/// element depends only on the input element at the same index, which is
/// read before it is written). Fused ops have none: a `fused_conv` or
/// `fused_linear` reads its residual tile by tile while other tiles are
/// already stored, and its output must never overwrite a residual element
/// some tile has yet to read.
pub(crate) fn inplace_operand(g: &Graph, id: NodeId) -> Option<usize> {
    let node = g.node(id);
    let out = &node.outputs.first()?.ty;
    let operands = g.operands(id);
    let same = |i: usize| operands.get(i).is_some_and(|&v| g.value_type(v) == out);
    match node.op {
        Op::Unary(_) | Op::Clip { .. } | Op::HardSigmoid { .. } if same(0) => Some(0),
        Op::Binary(_) if same(0) => Some(0),
        Op::Binary(_) if same(1) => Some(1),
        _ => None,
    }
}

/// Whether `v` is known at compile time: a weight, or an alias of one.
pub(crate) fn is_const(g: &Graph, mut v: kiln_ir::Value) -> bool {
    loop {
        match g.node(v.node).op {
            Op::Weight => return true,
            _ if is_alias(g, v.node) => v = g.operands(v.node)[0],
            _ => return false,
        }
    }
}

/// Bytes of arena scratch a node's kernels need (live only during the node).
pub(crate) fn scratch_bytes(g: &Graph, id: NodeId) -> usize {
    match &g.node(id).op {
        Op::Conv2d { .. } => conv::scratch_bytes(g, id),
        Op::Gemm { .. } => matmul::scratch_bytes(g, id),
        Op::Fused(f) => fused::kernel(f).map_or(0, |k| (k.scratch)(g, id)),
        _ => 0,
    }
}

/// Lowers one node. Aliases never get here (see [`is_alias`]).
pub(crate) fn lower(cx: &mut NodeCx) -> Result<Kernels, BackendError> {
    for t in cx
        .ins
        .iter()
        .map(|o| &o.ty)
        .chain(cx.outs.iter().map(|o| &o.1))
    {
        if t.dtype != DType::F32 {
            return Err(cx.unsupported(format!(
                "{t}: the JIT computes in f32 only; i64 values are shape \
                 arithmetic that the ONNX importer folds into constants"
            )));
        }
    }
    match cx.op {
        Op::Input | Op::Weight => Ok(vec![]),
        Op::Conv2d { .. } => conv::lower(cx),
        Op::MatMul | Op::Gemm { .. } => matmul::lower(cx),
        Op::Unary(_) | Op::Binary(_) | Op::Clip { .. } | Op::HardSigmoid { .. } => {
            elementwise::lower(cx)
        }
        Op::Expand { .. } => elementwise::lower_expand(cx),
        Op::Softmax { .. } => softmax::lower(cx),
        Op::LayerNorm { .. } | Op::GroupNorm { .. } | Op::BatchNorm { .. } => norm::lower(cx),
        Op::Reduce { .. } | Op::GlobalAvgPool => reduce::lower(cx),
        Op::Pool2d { .. } => pool::lower(cx),
        Op::Resize { .. } => resize::lower(cx),
        Op::Transpose { .. }
        | Op::Concat { .. }
        | Op::Slice { .. }
        | Op::Split { .. }
        | Op::Pad { .. }
        | Op::Gather { .. } => copy::lower(cx),
        // Same-dtype casts and the shape-only ops are aliases; an f32 node
        // cannot reach here with them, but say so rather than panic.
        Op::Cast { .. }
        | Op::Reshape { .. }
        | Op::Squeeze { .. }
        | Op::Unsqueeze { .. }
        | Op::Flatten { .. } => Ok(vec![]),
        // `compile` expands the fused ops without a kernel first
        Op::Fused(f) => fused::lower(cx, f),
    }
}
