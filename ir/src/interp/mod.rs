//! The reference interpreter: the oracle every backend and rewrite is
//! checked against.
//!
//! Naive and obviously correct, accumulating in f64 and rounding each f32
//! result once. It is not fast, but it is not wasteful either: kernels
//! allocate per op, never per element, and loop with contiguous inner loops,
//! so whole models run in tests.
//!
//! - [`run`] evaluates a graph, freeing each intermediate after its last use;
//! - [`run_all`] keeps every value, for debugging and per-node comparisons;
//! - [`eval`] applies one op to concrete tensors (constant folding, static
//!   shape computation in the ONNX importer, fused ops as compositions).
//!
//! Numeric conventions (see the kernel modules for details): float ops follow
//! IEEE in f64, `max`/`min`-like ops propagate NaN; i64 division truncates
//! toward zero; i64 overflow, division by zero and casting NaN/inf to i64
//! are errors. One module per op family: `elementwise`, `linalg`, `norm`,
//! `reduce`, `movement`; `view` holds the shared strided walk.

mod elementwise;
mod linalg;
mod movement;
mod norm;
mod reduce;
mod resize;
mod view;

use std::collections::{HashMap, HashSet};

use crate::error::IrError;
use crate::graph::{Graph, NodeId, Value};
use crate::op::{Op, PadMode};
use crate::shape;
use crate::tensor::{Tensor, WeightStore};
use crate::types::{DType, TensorType};
use crate::verify::{verify, verify_weights};

use view::{Elem, elems};

pub use resize::{Tap, resize_taps};

/// Runs `g` on `inputs` (one per graph input, in order) with weight values
/// from `weights`; returns one tensor per graph output, in order.
///
/// Verifies the graph and the weights first, and checks each input's dtype
/// and shape against its declaration ([`IrError::Input`] names the input).
/// Only nodes that some output depends on are evaluated, and every
/// intermediate is dropped after its last use, so peak memory is the live
/// set of the schedule (topological order), not the sum of all values.
pub fn run(g: &Graph, weights: &WeightStore, inputs: &[Tensor]) -> Result<Vec<Tensor>, IrError> {
    let values = execute(g, weights, inputs, Keep::Outputs)?.values;
    Ok(g.outputs()
        .iter()
        .map(|v| {
            values
                .get(v)
                .cloned()
                .expect("interpreter invariant: graph outputs are never freed")
        })
        .collect())
}

/// Like [`run`], but evaluates every node (live or not) and returns every
/// value of the graph, inputs and weights included.
pub fn run_all(
    g: &Graph,
    weights: &WeightStore,
    inputs: &[Tensor],
) -> Result<HashMap<Value, Tensor>, IrError> {
    Ok(execute(g, weights, inputs, Keep::All)?.values)
}

/// Which values the executor keeps to the end.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Keep {
    /// Only graph outputs; only nodes they depend on are evaluated.
    Outputs,
    /// Everything.
    All,
}

/// What [`execute`] produced.
struct Execution {
    values: HashMap<Value, Tensor>,
    /// Largest total size, in bytes, of the values held at once (shared
    /// buffers counted once per value): lets tests check that freeing works.
    #[cfg_attr(
        not(test),
        expect(dead_code, reason = "only the freeing test reads it")
    )]
    peak_bytes: usize,
}

fn check_inputs(g: &Graph, inputs: &[Tensor]) -> Result<(), IrError> {
    let declared = g.inputs();
    if declared.len() != inputs.len() {
        let names: Vec<String> = declared
            .iter()
            .map(|&id| g.display_value(Value::of(id)))
            .collect();
        return Err(IrError::Input(format!(
            "expected {} input(s) ({}), got {}",
            declared.len(),
            names.join(", "),
            inputs.len()
        )));
    }
    for (&id, t) in declared.iter().zip(inputs) {
        let want = g.value_type(Value::of(id));
        let got = t.ty();
        if *want != got {
            return Err(IrError::Input(format!(
                "input {}: expected {want}, got {got}",
                g.display_value(Value::of(id))
            )));
        }
    }
    Ok(())
}

/// Nodes that some graph output depends on.
fn live_nodes(g: &Graph) -> HashSet<NodeId> {
    let mut live = HashSet::new();
    let mut stack: Vec<NodeId> = g.outputs().iter().map(|v| v.node).collect();
    while let Some(n) = stack.pop() {
        if live.insert(n) {
            stack.extend(g.operands(n).into_iter().map(|v| v.node));
        }
    }
    live
}

fn execute(
    g: &Graph,
    weights: &WeightStore,
    inputs: &[Tensor],
    keep: Keep,
) -> Result<Execution, IrError> {
    verify(g)?;
    verify_weights(g, weights)?;
    check_inputs(g, inputs)?;
    let order = g.topo_order()?;
    let live = match keep {
        Keep::Outputs => Some(live_nodes(g)),
        Keep::All => None,
    };
    let is_live = |id: &NodeId| live.as_ref().is_none_or(|l| l.contains(id));
    // Remaining uses of each value by live nodes; a value is dropped when
    // its count reaches zero, unless it is kept.
    let mut uses: HashMap<Value, usize> = HashMap::new();
    for id in order.iter().filter(|id| is_live(id)) {
        for v in g.operands(*id) {
            *uses.entry(v).or_default() += 1;
        }
    }
    let pinned: HashSet<Value> = g.outputs().iter().copied().collect();
    let input_pos: HashMap<NodeId, usize> = g
        .inputs()
        .iter()
        .enumerate()
        .map(|(i, &id)| (id, i))
        .collect();

    let mut values: HashMap<Value, Tensor> = HashMap::new();
    let mut held = 0usize;
    let mut peak = 0usize;
    let bytes = |t: &Tensor| t.ty().size_bytes();
    for id in order.into_iter().filter(|id| is_live(id)) {
        let node = g.node(id);
        let operand_values = g.operands(id);
        let results: Vec<Tensor> = match node.op {
            Op::Input => vec![inputs[input_pos[&id]].clone()],
            Op::Weight => {
                let name = &node.outputs[0].name;
                let t = weights
                    .get(name)
                    .cloned()
                    .ok_or_else(|| IrError::Weights(vec![format!("@{name}: missing")]))?;
                vec![t]
            }
            _ => {
                let operands: Vec<&Tensor> = operand_values
                    .iter()
                    .map(|v| {
                        values.get(v).expect(
                            "interpreter invariant: operands are evaluated and not yet freed",
                        )
                    })
                    .collect();
                eval(&node.op, &operands).map_err(|msg| IrError::Node {
                    node: g.display_node(id),
                    msg,
                })?
            }
        };
        for (output, t) in results.into_iter().enumerate() {
            let v = Value { node: id, output };
            let used = uses.get(&v).copied().unwrap_or(0) > 0;
            if keep == Keep::All || used || pinned.contains(&v) {
                held += bytes(&t);
                values.insert(v, t);
            }
        }
        peak = peak.max(held);
        if keep == Keep::Outputs {
            for v in operand_values {
                let n = uses
                    .get_mut(&v)
                    .expect("interpreter invariant: every operand use was counted");
                *n -= 1;
                if *n == 0
                    && !pinned.contains(&v)
                    && let Some(t) = values.remove(&v)
                {
                    held -= bytes(&t);
                }
            }
        }
    }
    Ok(Execution {
        values,
        peak_bytes: peak,
    })
}

/// The f32 elements of an operand that shape inference admitted only as f32.
fn f32s(t: &Tensor) -> &[f32] {
    elems::<f32>(t)
}

/// Applies one op to concrete operands and returns its results (one per
/// output; several only for `split`).
///
/// Operand types are checked with [`shape::infer`] first, so a type error
/// is reported exactly as the verifier would; the remaining errors are
/// value errors (i64 overflow or division by zero, a cast of NaN/inf to
/// i64). `input` and `weight` are not computations and are rejected.
pub fn eval(op: &Op, operands: &[&Tensor]) -> Result<Vec<Tensor>, String> {
    let types: Vec<TensorType> = operands.iter().map(|t| t.ty()).collect();
    let out_types = shape::infer(op, &types)?;
    crate::verify::check_empty(op, &types, &out_types)?;
    if out_types.iter().all(|t| t.numel() == 0) {
        // nothing to compute (see `verify::check_empty`); the op's own code
        // may divide by a dimension
        return Ok(out_types.iter().map(Tensor::zeros).collect());
    }
    let results = match operands.first().map(|t| t.dtype()) {
        Some(DType::I64) => eval_typed::<i64>(op, operands, &out_types)?,
        _ => eval_typed::<f32>(op, operands, &out_types)?,
    };
    let got: Vec<TensorType> = results.iter().map(Tensor::ty).collect();
    assert_eq!(
        got,
        out_types,
        "interpreter invariant: {} produced the types shape inference promised",
        op.name()
    );
    Ok(results)
}

/// [`eval`] after type checking; `T` is the dtype of the first operand,
/// which the generic data-movement ops work in.
fn eval_typed<T: Elem>(op: &Op, x: &[&Tensor], out: &[TensorType]) -> Result<Vec<Tensor>, String> {
    let out_shape = || out[0].shape.clone();
    let one = |data: Vec<T>| Ok(vec![T::tensor(out_shape(), data)]);
    let one_f32 = |data: Vec<f32>| Ok(vec![f32::tensor(out_shape(), data)]);
    let x0 = x[0];
    let sh = x0.shape();
    match op {
        Op::Input | Op::Weight => Err(format!("{} is not a computation", op.name())),
        Op::Conv2d {
            stride,
            pad,
            dilation,
            groups,
        } => {
            let p = linalg::ConvParams {
                stride: *stride,
                pad: *pad,
                dilation: *dilation,
                groups: *groups,
            };
            let o = &out[0].shape;
            one_f32(linalg::conv2d(
                f32s(x0),
                sh,
                f32s(x[1]),
                x[1].shape(),
                x.get(2).map(|b| f32s(b)),
                &p,
                [o[2], o[3]],
            ))
        }
        Op::MatMul => one_f32(linalg::matmul(f32s(x0), sh, f32s(x[1]), x[1].shape())),
        Op::Gemm {
            alpha,
            beta,
            trans_a,
            trans_b,
        } => {
            let p = linalg::GemmParams {
                alpha: alpha.0,
                beta: beta.0,
                trans_a: *trans_a,
                trans_b: *trans_b,
            };
            let c = x.get(2).map(|c| (f32s(c), c.shape()));
            one_f32(linalg::gemm(f32s(x0), sh, f32s(x[1]), x[1].shape(), c, &p))
        }
        Op::Unary(u) => Ok(vec![elementwise::unary(*u, x0)?]),
        Op::Binary(b) => Ok(vec![elementwise::binary(*b, x0, x[1], &out[0].shape)?]),
        Op::Clip { min, max } => one_f32(elementwise::clip(f32s(x0), min.0, max.0)),
        Op::HardSigmoid { alpha, beta } => {
            one_f32(elementwise::hard_sigmoid(f32s(x0), alpha.0, beta.0))
        }
        Op::Softmax { axis } => {
            let outer = sh[..*axis].iter().product();
            let inner = sh[axis + 1..].iter().product();
            one_f32(norm::softmax(f32s(x0), outer, sh[*axis], inner))
        }
        Op::LayerNorm { axis, eps } => {
            let len = sh[*axis..].iter().product();
            let beta = x.get(2).map(|b| f32s(b));
            one_f32(norm::layer_norm(f32s(x0), len, f32s(x[1]), beta, eps.0))
        }
        Op::GroupNorm { groups, eps } => {
            let spatial = sh[2..].iter().product();
            one_f32(norm::group_norm(
                f32s(x0),
                (sh[1], spatial),
                *groups,
                f32s(x[1]),
                f32s(x[2]),
                eps.0,
            ))
        }
        Op::BatchNorm { eps } => {
            let spatial = sh[2..].iter().product();
            let params = [f32s(x[1]), f32s(x[2]), f32s(x[3]), f32s(x[4])];
            one_f32(norm::batch_norm(f32s(x0), (sh[1], spatial), params, eps.0))
        }
        Op::Reduce { kind, axes, .. } => one_f32(reduce::reduce(f32s(x0), sh, axes, *kind)),
        Op::GlobalAvgPool => {
            let spatial = sh[2..].iter().product();
            one_f32(reduce::global_avg_pool(f32s(x0), sh[0] * sh[1], spatial))
        }
        Op::Pool2d {
            kind,
            kernel,
            stride,
            pad,
            count_include_pad,
        } => {
            let p = reduce::PoolParams {
                kind: *kind,
                kernel: *kernel,
                stride: *stride,
                pad: *pad,
                count_include_pad: *count_include_pad,
            };
            let o = &out[0].shape;
            one_f32(reduce::pool2d(
                f32s(x0),
                (sh[0] * sh[1], sh[2], sh[3]),
                &p,
                [o[2], o[3]],
            )?)
        }
        // Row-major data is unchanged by these: share the buffer.
        Op::Reshape { .. } | Op::Squeeze { .. } | Op::Unsqueeze { .. } | Op::Flatten { .. } => {
            Ok(vec![x0.reshaped(out_shape()).map_err(|e| e.to_string())?])
        }
        Op::Transpose { perm } => one(movement::transpose(elems::<T>(x0), sh, perm)),
        Op::Concat { axis } => {
            let parts: Vec<(&[T], &[usize])> =
                x.iter().map(|t| (elems::<T>(t), t.shape())).collect();
            one(movement::concat(&parts, *axis))
        }
        Op::Slice {
            axes,
            starts,
            ends,
            steps,
        } => one(movement::slice(
            elems::<T>(x0),
            sh,
            axes,
            starts,
            ends,
            steps,
        )),
        Op::Split { axis, sizes } => Ok(movement::split(elems::<T>(x0), sh, *axis, sizes)
            .into_iter()
            .map(|(s, d)| T::tensor(s, d))
            .collect()),
        Op::Pad { pads, mode, value } => {
            // The fill is used in constant mode only (elsewhere the
            // attribute is 0.0 and ignored).
            let fill = match mode {
                PadMode::Constant => T::from_f32_exact(value.0),
                PadMode::Reflect | PadMode::Edge => T::from_f32_exact(0.0),
            }
            .ok_or_else(|| {
                format!(
                    "pad: fill value {} is not an integer, but the tensor is i64",
                    value.0
                )
            })?;
            one(movement::pad(elems::<T>(x0), sh, pads, *mode, fill))
        }
        Op::Expand { .. } => one(movement::expand(elems::<T>(x0), sh, &out[0].shape)),
        Op::Gather { axis, indices, .. } => {
            one(movement::gather(elems::<T>(x0), sh, *axis, indices))
        }
        Op::Cast { to } => Ok(vec![elementwise::cast(x0, *to)?]),
        Op::Resize {
            mode,
            nearest,
            coord,
            size,
            scale,
        } => one_f32(resize::resize(
            f32s(x0),
            sh,
            *mode,
            *nearest,
            *coord,
            *size,
            *scale,
        )),
        // A fused op is evaluated as the composition of primitive ops it
        // stands for (crate::fused): the oracle stays obviously correct.
        Op::Fused(f) => {
            let args: Vec<Tensor> = x.iter().map(|t| (*t).clone()).collect();
            let y = f
                .expand(&mut EvalEmitter, &args)
                .map_err(|e| e.to_string())?;
            Ok(vec![y])
        }
    }
}

/// Applies primitive ops to tensors through [`eval`], for fused ops.
struct EvalEmitter;

impl crate::fused::Emitter for EvalEmitter {
    type V = Tensor;
    fn op(&mut self, op: Op, args: &[Tensor]) -> Result<Tensor, IrError> {
        let refs: Vec<&Tensor> = args.iter().collect();
        let name = op.name();
        let mut out = eval(&op, &refs).map_err(|msg| IrError::Node {
            node: format!("{name} inside a fused op"),
            msg,
        })?;
        Ok(out.remove(0))
    }
    fn scalar(&mut self, x: f32) -> Result<Tensor, IrError> {
        Tensor::from_f32(Vec::new(), vec![x])
    }
    fn ty(&self, v: &Tensor) -> TensorType {
        v.ty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::op::UnaryOp;

    /// A chain of unary ops holds at most its current operand and result,
    /// whatever its length; `run_all` holds everything.
    #[test]
    fn intermediates_are_freed_after_last_use() {
        let mut g = Graph::new("chain");
        let ty = TensorType::f32([1000]);
        let mut v = g.add_input("x", ty.clone()).unwrap();
        for _ in 0..50 {
            v = g.add(Op::Unary(UnaryOp::Neg), &[v]).unwrap();
        }
        g.set_outputs(vec![v]);
        let x = Tensor::zeros(&ty);
        let w = WeightStore::new();
        let one = ty.size_bytes();
        let lean = execute(&g, &w, std::slice::from_ref(&x), Keep::Outputs).unwrap();
        assert_eq!(lean.peak_bytes, 2 * one);
        assert_eq!(lean.values.len(), 1);
        let all = execute(&g, &w, &[x], Keep::All).unwrap();
        assert_eq!(all.peak_bytes, 51 * one);
        assert_eq!(all.values.len(), 51);
    }

    /// Nodes no output depends on are not evaluated by `run` (their errors
    /// do not surface), but are by `run_all`.
    #[test]
    fn dead_nodes_are_skipped_by_run() {
        let mut g = Graph::new("dead");
        let x = g.add_input("x", TensorType::i64([1])).unwrap();
        let z = g.add_weight("zero", TensorType::i64([1])).unwrap();
        let _dead = g
            .add(Op::Binary(crate::op::BinaryOp::Div), &[x, z])
            .unwrap();
        let y = g.add(Op::Unary(UnaryOp::Neg), &[x]).unwrap();
        g.set_outputs(vec![y]);
        let mut w = WeightStore::new();
        w.insert("zero", Tensor::from_i64([1], vec![0]).unwrap());
        let x = Tensor::from_i64([1], vec![7]).unwrap();
        let out = run(&g, &w, std::slice::from_ref(&x)).unwrap();
        assert_eq!(out[0].as_i64(), Some(&[-7][..]));
        let e = run_all(&g, &w, &[x]).unwrap_err().to_string();
        assert!(e.contains("division by zero"), "{e}");
    }
}
