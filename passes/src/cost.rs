//! The cost model: estimated time of one kernel from its arithmetic, the
//! bytes it moves and a fixed per-kernel overhead (docs/passes.md).
//!
//! `time = gemm_flops / gemm_rate + other_flops / vector_rate
//!        + bytes / bandwidth + overhead`, in microseconds, where GEMM-like
//! FLOPs are those of dense/grouped convs and matrix products (the JIT's
//! register-tiled kernels), the others those of element-wise ops,
//! depthwise convs, norms, softmax and reductions, and `bytes` counts every
//! operand read once and every result written once. A fused op is one
//! kernel: its FLOPs are those of the primitive expansion it stands for,
//! but its bytes are only its operands and result — the intermediates it
//! never writes or reads back are the saving that makes fusion win (a
//! fused conv's epilogue runs on the GEMM tile's registers and costs only
//! its arithmetic). Nodes that depend only on weights cost nothing:
//! constant folding computes them at compile time.
//!
//! The constants are fitted to the JIT's measured kernels (one thread) by
//! `examples/calibrate.rs`; only their ratios matter to extraction.

use kiln_ir::fused::Emitter;
use kiln_ir::op::{Op, UnaryOp};
use kiln_ir::{Graph, IrError, TensorType, Value, shape};

/// Machine parameters of the cost model.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CostModel {
    /// sustained rate of GEMM-like arithmetic (dense and grouped conv,
    /// matmul, gemm), FLOP per second
    pub gemm_rate: f64,
    /// sustained rate of every other op's arithmetic (element-wise incl.
    /// transcendentals, depthwise conv, norms, softmax, reductions), FLOP
    /// per second
    pub vector_rate: f64,
    /// sustained memory bandwidth, bytes per second
    pub bandwidth: f64,
    /// fixed cost of launching one kernel: loop setup, dispatch
    pub overhead_s: f64,
    /// cost of a view (reshape, squeeze, ...), which moves no data: a tiny
    /// positive number so that extraction prefers fewer of them
    pub view_s: f64,
}

impl Default for CostModel {
    /// Fitted to the JIT's kernels at one thread on the development machine
    /// (2-core AMD EPYC, Zen 4, quiet) by `cargo run --release --example
    /// calibrate -- --runs 9` (session 3, 2026-11-21): 3,568 nodes of
    /// mobile_former_26m/151m, mobilevitv2_050 and xformer, each model as
    /// built and optimised (the fused kernels), minimising the sum of
    /// relative errors. Median relative error per node 27 % (the session-2
    /// constants, fitted before the assembled depthwise interiors: 25 % per
    /// node but 340 % on depthwise convs and 16.4 ms predicted for
    /// mobilevitv2_050's 12.2). The data and the fit are in docs/passes.md
    /// ("Cost model").
    fn default() -> Self {
        CostModel {
            gemm_rate: 118.6e9,
            vector_rate: 69.6e9,
            bandwidth: 64.8e9,
            overhead_s: 0.05e-6,
            view_s: 1e-9,
        }
    }
}

/// Whether a primitive op runs as a GEMM (register-tiled, compute-bound):
/// matmul, gemm, and every conv whose groups are fewer than its input
/// channels (dense, grouped; not depthwise, which is a vector kernel).
pub fn is_gemm_like(op: &Op, ins: &[TensorType]) -> bool {
    match op {
        Op::MatMul | Op::Gemm { .. } => true,
        Op::Conv2d { groups, .. } => ins.first().is_some_and(|x| x.shape.get(1) != Some(groups)),
        _ => false,
    }
}

/// FLOPs of one op split as `(gemm-like, other)`; a fused op's are those of
/// its primitive expansion, each primitive classed by [`is_gemm_like`].
pub fn split_flops(op: &Op, ins: &[TensorType], out: &TensorType) -> (f64, f64) {
    if let Op::Fused(f) = op {
        let mut e = FlopEmitter {
            gemm: 0.0,
            other: 0.0,
        };
        return match f.expand(&mut e, ins) {
            Ok(_) => (e.gemm, e.other),
            // Ill-typed fused ops never reach the cost model (rules type
            // check first); make them unattractive rather than panic.
            Err(_) => (f64::INFINITY, 0.0),
        };
    }
    let f = primitive_flops(op, ins, out);
    if is_gemm_like(op, ins) {
        (f, 0.0)
    } else {
        (0.0, f)
    }
}

/// Floating-point operations of one primitive op (multiply-add = 2).
/// Data movement ops count 0; transcendental element-wise ops count a
/// handful per element.
pub fn primitive_flops(op: &Op, ins: &[TensorType], out: &TensorType) -> f64 {
    let n = out.numel() as f64;
    let in0 = ins.first().map_or(0.0, |t| t.numel() as f64);
    match op {
        Op::Conv2d { .. } => {
            let w = &ins[1].shape;
            2.0 * n * (w[1] * w[2] * w[3]) as f64 + if ins.len() > 2 { n } else { 0.0 }
        }
        Op::MatMul => 2.0 * n * ins[0].shape.last().copied().unwrap_or(1) as f64,
        Op::Gemm { trans_a, .. } => {
            let a = &ins[0].shape;
            2.0 * n * if *trans_a { a[0] } else { a[1] } as f64 + n
        }
        Op::Unary(u) => {
            n * match u {
                UnaryOp::Identity => 0.0,
                UnaryOp::Relu | UnaryOp::Relu6 | UnaryOp::Neg | UnaryOp::Abs => 1.0,
                UnaryOp::HardSwish => 4.0,
                UnaryOp::Sqrt | UnaryOp::Reciprocal => 4.0,
                _ => 10.0,
            }
        }
        Op::Binary(_) | Op::Clip { .. } => n,
        Op::HardSigmoid { .. } => 3.0 * n,
        Op::Softmax { .. } => 12.0 * n,
        Op::LayerNorm { .. } | Op::GroupNorm { .. } => 8.0 * n,
        Op::BatchNorm { .. } => 2.0 * n,
        Op::Reduce { .. } | Op::GlobalAvgPool => in0,
        Op::Pool2d { kernel, .. } => n * (kernel[0] * kernel[1]) as f64,
        Op::Fused(_) => {
            let (g, o) = split_flops(op, ins, out);
            g + o
        }
        _ => 0.0,
    }
}

/// Counts FLOPs of a fused op's expansion on types.
struct FlopEmitter {
    gemm: f64,
    other: f64,
}

impl Emitter for FlopEmitter {
    type V = TensorType;
    fn op(&mut self, op: Op, args: &[TensorType]) -> Result<TensorType, IrError> {
        let mut out = shape::infer(&op, args).map_err(IrError::Graph)?;
        let t = out.remove(0);
        let (g, o) = split_flops(&op, args, &t);
        self.gemm += g;
        self.other += o;
        Ok(t)
    }
    fn scalar(&mut self, _x: f32) -> Result<TensorType, IrError> {
        Ok(TensorType::f32(Vec::new()))
    }
    fn ty(&self, v: &TensorType) -> TensorType {
        v.clone()
    }
}

/// Whether the op only re-labels its operand's data (no kernel needed).
pub fn is_view(op: &Op) -> bool {
    matches!(
        op,
        Op::Reshape { .. }
            | Op::Squeeze { .. }
            | Op::Unsqueeze { .. }
            | Op::Flatten { .. }
            | Op::Unary(UnaryOp::Identity)
    )
}

impl CostModel {
    /// Estimated microseconds of one kernel computing `op` from operands of
    /// types `ins` into results `outs`. `konst`: every operand is a
    /// compile-time constant, so the node will be folded and costs 0.
    pub fn op_cost(&self, op: &Op, ins: &[TensorType], outs: &[TensorType], konst: bool) -> f64 {
        if konst || op.is_leaf() {
            return 0.0;
        }
        if is_view(op) {
            return self.view_s * 1e6;
        }
        let (gemm, other) = outs.first().map_or((0.0, 0.0), |o| split_flops(op, ins, o));
        let bytes: usize = ins.iter().chain(outs).map(TensorType::size_bytes).sum();
        1e6 * (gemm / self.gemm_rate
            + other / self.vector_rate
            + bytes as f64 / self.bandwidth
            + self.overhead_s)
    }

    /// Estimated microseconds of a whole graph: the sum over its kernels.
    pub fn graph_cost(&self, g: &Graph) -> f64 {
        let Ok(order) = g.topo_order() else {
            return f64::INFINITY;
        };
        let mut konst = std::collections::HashMap::new();
        let mut total = 0.0;
        for id in order {
            let node = g.node(id);
            let operands = g.operands(id);
            let k = match node.op {
                Op::Weight => true,
                Op::Input => false,
                _ => !operands.is_empty() && operands.iter().all(|v| konst[&v.node]),
            };
            konst.insert(id, k);
            if node.op.is_leaf() {
                continue;
            }
            let ins: Vec<TensorType> = operands
                .iter()
                .map(|v: &Value| g.value_type(*v).clone())
                .collect();
            let outs: Vec<TensorType> = node.outputs.iter().map(|o| o.ty.clone()).collect();
            total += self.op_cost(&node.op, &ins, &outs, k);
        }
        total
    }
}
