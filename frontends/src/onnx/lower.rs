//! Per-operator translation of ONNX nodes into kiln's primitive ops.
//!
//! Each ONNX operator becomes one or a few kiln ops through
//! [`Importer::apply`], which evaluates the op at once when its operands
//! are constant — so the same code both lowers and folds. Operators that
//! exist only to compute shapes and masks (`Shape`, `Equal`, `Where`,
//! `Range`, ...) have no kiln op: they are evaluated here and must fold.
//! Opset differences (attributes that became inputs, changed defaults) are
//! resolved per operator, from the model's default-domain opset.

use std::rc::Rc;

use kiln_ir::{BinaryOp, DType, Float, Op, PadMode, PoolKind, ReduceKind, UnaryOp};

use super::Unsupported;
use super::consts::{Const, Data, Kind};
use super::fold;
use super::import::{E, Importer, NodeCtx, R, Val};
use super::proto::tensor_proto::DataType;

/// Operators the importer translates (some only when they fold; see
/// [`CONST_ONLY`]).
const SUPPORTED: &[&str] = &[
    "Abs",
    "Add",
    "And",
    "AveragePool",
    "BatchNormalization",
    "Cast",
    "CastLike",
    "Ceil",
    "Celu",
    "Clip",
    "Concat",
    "Constant",
    "ConstantOfShape",
    "Conv",
    "Cos",
    "CumSum",
    "DepthToSpace",
    "Div",
    "Einsum",
    "Dropout",
    "Elu",
    "Equal",
    "Erf",
    "Exp",
    "Expand",
    "Flatten",
    "Floor",
    "Gather",
    "GatherND",
    "Gelu",
    "Gemm",
    "GlobalAveragePool",
    "GlobalMaxPool",
    "Greater",
    "GreaterOrEqual",
    "GroupNormalization",
    "HardSigmoid",
    "HardSwish",
    "Identity",
    "InstanceNormalization",
    "LayerNormalization",
    "LeakyRelu",
    "Less",
    "LessOrEqual",
    "Log",
    "LogSoftmax",
    "MatMul",
    "Max",
    "MaxPool",
    "Mean",
    "Min",
    "Mod",
    "Mish",
    "Mul",
    "Neg",
    "Not",
    "Or",
    "Pad",
    "Pow",
    "PRelu",
    "Range",
    "Reciprocal",
    "ReduceL1",
    "ReduceL2",
    "ReduceLogSum",
    "ReduceLogSumExp",
    "ReduceMax",
    "ReduceMean",
    "ReduceMin",
    "ReduceProd",
    "ReduceSum",
    "ReduceSumSquare",
    "Relu",
    "Reshape",
    "Resize",
    "Round",
    "Selu",
    "Shape",
    "Sigmoid",
    "Sign",
    "Sin",
    "Size",
    "Slice",
    "Softmax",
    "Softplus",
    "Softsign",
    "SpaceToDepth",
    "Split",
    "Sqrt",
    "Squeeze",
    "Sub",
    "Sum",
    "Tanh",
    "Tile",
    "Transpose",
    "Unsqueeze",
    "Where",
    "Xor",
];

/// Operators with no kiln counterpart that the importer evaluates when
/// their operands are constant; on runtime data they are unsupported.
const CONST_ONLY: &[&str] = &[
    "And",
    "Ceil",
    "ConstantOfShape",
    "Equal",
    "Floor",
    "Greater",
    "GreaterOrEqual",
    "Less",
    "LessOrEqual",
    "Not",
    "Or",
    "Range",
    "ReduceProd",
    "Round",
    "Sign",
    "Xor",
];

/// Whether `op` (default domain) can be imported at all.
pub(crate) fn is_supported(op: &str, opset: i64) -> bool {
    let version_ok = match op {
        "Gelu" => opset >= 20,
        "LayerNormalization" => opset >= 17,
        "GroupNormalization" => opset >= 18,
        "HardSwish" => opset >= 14,
        "CastLike" => opset >= 15,
        "Mish" => opset >= 18,
        _ => true,
    };
    version_ok && SUPPORTED.contains(&op)
}

/// An "unsupported" error for this node's op with a note on what use of
/// it kiln cannot express.
pub(crate) fn unsupported(n: &NodeCtx, note: impl Into<String>) -> E {
    E::Unsupported(Unsupported::Op {
        op_type: n.op_type().to_string(),
        node: String::new(),
        note: Some(note.into()),
    })
}

fn cval(c: Const) -> Val {
    Val::Const(Rc::new(c))
}

fn scalar(v: f32) -> Val {
    cval(Const::f32(vec![], vec![v]))
}

/// A possibly negative axis, normalised against `rank`.
pub(crate) fn norm_axis(a: i64, rank: usize) -> R<usize> {
    let r = rank as i64;
    let v = if a < 0 { a + r } else { a };
    if (0..r).contains(&v) {
        Ok(v as usize)
    } else {
        Err(E::Msg(format!("axis {a} is out of range for rank {rank}")))
    }
}

/// Normalised, sorted axes; duplicates are an error.
fn norm_axes(axes: &[i64], rank: usize) -> R<Vec<usize>> {
    let mut v = axes
        .iter()
        .map(|&a| norm_axis(a, rank))
        .collect::<R<Vec<_>>>()?;
    v.sort_unstable();
    if v.windows(2).any(|w| w[0] == w[1]) {
        return Err(E::Msg(format!("axes {axes:?} repeat an axis")));
    }
    Ok(v)
}

fn to_usizes(v: &[i64], what: &str) -> R<Vec<usize>> {
    v.iter()
        .map(|&x| {
            usize::try_from(x).map_err(|_| E::Msg(format!("{what} {v:?} has a negative entry")))
        })
        .collect()
}

/// The operand/name pairs `apply` takes, for the node's first inputs.
struct Args {
    vals: Vec<Val>,
    names: Vec<String>,
}

impl Args {
    fn pairs(&self) -> Vec<(&Val, &str)> {
        self.vals
            .iter()
            .zip(&self.names)
            .map(|(v, n)| (v, n.as_str()))
            .collect()
    }
}

/// The present inputs among the first `k` (required ones must be there).
fn args(n: &NodeCtx, required: usize, k: usize) -> R<Args> {
    let mut vals = Vec::new();
    let mut names = Vec::new();
    for i in 0..k {
        match n.input(i) {
            Some(v) => {
                vals.push(v.clone());
                names.push(n.in_name(i));
            }
            None if i < required => return Err(E::Msg(format!("required input {i} is missing"))),
            None => break,
        }
    }
    Ok(Args { vals, names })
}

/// Translates one node; returns its outputs in order (outputs kiln does
/// not compute are left off the end).
pub(crate) fn lower(im: &mut Importer, n: &NodeCtx) -> R<Vec<Val>> {
    let op = n.op_type();
    if CONST_ONLY.contains(&op) {
        let all_const = n.ins.iter().flatten().all(|v| matches!(v, Val::Const(_)));
        if !all_const {
            return Err(unsupported(
                n,
                "on runtime data (kiln evaluates it only when it folds to a constant)",
            ));
        }
    }
    let out = n.out_name(0);
    let unary = |im: &mut Importer, u: UnaryOp| -> R<Vec<Val>> {
        let a = args(n, 1, 1)?;
        Ok(vec![im.apply(Op::Unary(u), &a.pairs(), &out)?])
    };
    let binary = |im: &mut Importer, b: BinaryOp| -> R<Vec<Val>> {
        let x = n.req(0)?.clone();
        let y = n.req(1)?.clone();
        Ok(vec![binary_vals(
            im,
            b,
            &x,
            &n.in_name(0),
            &y,
            &n.in_name(1),
            &out,
        )?])
    };
    match op {
        "Relu" => unary(im, UnaryOp::Relu),
        "Sigmoid" => unary(im, UnaryOp::Sigmoid),
        "Tanh" => unary(im, UnaryOp::Tanh),
        "Exp" => unary(im, UnaryOp::Exp),
        "Log" => unary(im, UnaryOp::Log),
        "Sqrt" => unary(im, UnaryOp::Sqrt),
        "Neg" => unary(im, UnaryOp::Neg),
        "Reciprocal" => unary(im, UnaryOp::Reciprocal),
        "Erf" => unary(im, UnaryOp::Erf),
        "Abs" => unary(im, UnaryOp::Abs),
        "HardSwish" => unary(im, UnaryOp::HardSwish),
        "Sin" => unary(im, UnaryOp::Sin),
        "Cos" => unary(im, UnaryOp::Cos),
        "Gelu" => match n.attr_s("approximate", "none")?.as_str() {
            "none" => unary(im, UnaryOp::Gelu),
            "tanh" => unary(im, UnaryOp::GeluTanh),
            other => Err(E::Msg(format!("unknown approximate=\"{other}\""))),
        },
        "Identity" | "Dropout" => {
            if op == "Dropout" {
                let training = match n.opt_const(2, "training_mode")? {
                    Some(c) => c.scalar_i64().map_err(E::Msg)? != 0,
                    None => false,
                };
                if training {
                    return Err(unsupported(n, "in training mode"));
                }
            }
            let x = n.req(0)?.clone();
            if n.has_output(1) {
                // In inference every element is kept: the mask is all true.
                let shape = im.shape(&x);
                let count = shape.iter().product();
                let mask = cval(Const::bool(shape, vec![true; count]));
                return Ok(vec![x, mask]);
            }
            Ok(vec![x])
        }
        "Add" => binary(im, BinaryOp::Add),
        "Sub" => binary(im, BinaryOp::Sub),
        "Mul" => binary(im, BinaryOp::Mul),
        "Div" => binary(im, BinaryOp::Div),
        "Pow" => binary(im, BinaryOp::Pow),
        "Mod" => {
            // fmod=0 on floats is outside the spec; numpy's floored
            // remainder (what onnx's reference computes) is kept for it.
            let fmod = n.attr_i("fmod", 0)? != 0;
            binary(im, if fmod { BinaryOp::Fmod } else { BinaryOp::Mod })
        }
        "Max" | "Min" | "Sum" | "Mean" => variadic(im, n, op),
        "MatMul" => {
            let a = args(n, 2, 2)?;
            Ok(vec![im.apply(Op::MatMul, &a.pairs(), &out)?])
        }
        "Gemm" => {
            let a = args(n, 2, 3)?;
            let gemm = Op::Gemm {
                alpha: Float(n.attr_f("alpha", 1.0)?),
                beta: Float(n.attr_f("beta", 1.0)?),
                trans_a: n.attr_i("transA", 0)? != 0,
                trans_b: n.attr_i("transB", 0)? != 0,
            };
            Ok(vec![im.apply(gemm, &a.pairs(), &out)?])
        }
        "Clip" => {
            let runtime_bound = [1, 2]
                .iter()
                .any(|&i| matches!(n.input(i), Some(Val::Dyn(_))));
            if runtime_bound {
                // Bounds computed at run time: min(max(x, lo), hi), the
                // definition itself.
                let mut cur = n.req(0)?.clone();
                let mut cur_name = n.in_name(0);
                for (i, b) in [(1, BinaryOp::Max), (2, BinaryOp::Min)] {
                    if let Some(bound) = n.input(i) {
                        let name = if i == 2 || n.input(2).is_none() {
                            out.clone()
                        } else {
                            format!("{out}.lo")
                        };
                        cur = binary_vals(im, b, &cur, &cur_name, bound, &n.in_name(i), &name)?;
                        cur_name = name;
                    }
                }
                return Ok(vec![cur]);
            }
            let lo = match n.opt_const(1, "min")? {
                Some(c) => c.scalar_f32().map_err(E::Msg)?,
                None => n.attr_f("min", f32::NEG_INFINITY)?,
            };
            let hi = match n.opt_const(2, "max")? {
                Some(c) => c.scalar_f32().map_err(E::Msg)?,
                None => n.attr_f("max", f32::INFINITY)?,
            };
            let a = args(n, 1, 1)?;
            let clip = Op::Clip {
                min: Float(lo),
                max: Float(hi),
            };
            Ok(vec![im.apply(clip, &a.pairs(), &out)?])
        }
        "HardSigmoid" => {
            let a = args(n, 1, 1)?;
            let hs = Op::HardSigmoid {
                alpha: Float(n.attr_f("alpha", 0.2)?),
                beta: Float(n.attr_f("beta", 0.5)?),
            };
            Ok(vec![im.apply(hs, &a.pairs(), &out)?])
        }
        "LeakyRelu" | "PRelu" | "Elu" | "Selu" | "Celu" | "Softplus" | "Softsign" | "Mish" => {
            activation(im, n, op)
        }
        "Softmax" | "LogSoftmax" => softmax(im, n, op == "LogSoftmax"),
        "Conv" => conv(im, n),
        "MaxPool" | "AveragePool" => pool(im, n, op == "MaxPool"),
        "GlobalAveragePool" => {
            let a = args(n, 1, 1)?;
            Ok(vec![im.apply(Op::GlobalAvgPool, &a.pairs(), &out)?])
        }
        "GlobalMaxPool" => {
            let x = n.req(0)?;
            let rank = im.shape(x).len();
            let a = args(n, 1, 1)?;
            let r = Op::Reduce {
                kind: ReduceKind::Max,
                axes: (2..rank).collect(),
                keepdims: true,
            };
            Ok(vec![im.apply(r, &a.pairs(), &out)?])
        }
        "BatchNormalization" => {
            if n.attr_i("training_mode", 0)? != 0 {
                return Err(unsupported(n, "in training mode"));
            }
            let a = args(n, 5, 5)?;
            let bn = Op::BatchNorm {
                eps: Float(n.attr_f("epsilon", 1e-5)?),
            };
            Ok(vec![im.apply(bn, &a.pairs(), &out)?])
        }
        "LayerNormalization" => layer_norm(im, n),
        "GroupNormalization" | "InstanceNormalization" => group_norm(im, n),
        "ReduceMean" | "ReduceSum" | "ReduceMax" | "ReduceMin" | "ReduceProd" | "ReduceL1"
        | "ReduceL2" | "ReduceSumSquare" | "ReduceLogSum" | "ReduceLogSumExp" => reduce(im, n, op),
        "Reshape" => reshape(im, n),
        "Flatten" => {
            let x = n.req(0)?;
            let rank = im.shape(x).len();
            let a = n.attr_i("axis", 1)?;
            let axis = if a < 0 { a + rank as i64 } else { a };
            if !(0..=rank as i64).contains(&axis) {
                return Err(E::Msg(format!("axis {a} is out of range for rank {rank}")));
            }
            let args = args(n, 1, 1)?;
            let f = Op::Flatten {
                axis: axis as usize,
            };
            Ok(vec![im.apply(f, &args.pairs(), &out)?])
        }
        "Transpose" => {
            let x = n.req(0)?;
            let rank = im.shape(x).len();
            let perm = match n.attr_ints("perm") {
                Some(p) => to_usizes(&p, "perm")?,
                None => (0..rank).rev().collect(),
            };
            let a = args(n, 1, 1)?;
            Ok(vec![im.apply(Op::Transpose { perm }, &a.pairs(), &out)?])
        }
        "Concat" => {
            let mut vals = Vec::new();
            let mut names = Vec::new();
            for i in 0..n.ins.len() {
                if let Some(v) = n.input(i) {
                    vals.push(v.clone());
                    names.push(n.in_name(i));
                }
            }
            let first = vals.first().ok_or("Concat has no inputs")?;
            let rank = im.shape(first).len();
            let axis = norm_axis(
                n.attr_i("axis", i64::MIN).and_then(|a| {
                    if a == i64::MIN {
                        Err("missing attribute `axis`".into())
                    } else {
                        Ok(a)
                    }
                })?,
                rank,
            )?;
            // Mixed constant kinds (an i64 shape piece next to a bool) cannot
            // be concatenated; kiln's type check reports it.
            let pairs: Vec<(&Val, &str)> = vals
                .iter()
                .zip(&names)
                .map(|(v, s)| (v, s.as_str()))
                .collect();
            Ok(vec![im.apply(Op::Concat { axis }, &pairs, &out)?])
        }
        "Split" => split(im, n),
        "Slice" => slice(im, n),
        "Squeeze" | "Unsqueeze" => squeeze(im, n, op == "Unsqueeze"),
        "Gather" => {
            let x = n.req(0)?;
            let rank = im.shape(x).len();
            let axis = norm_axis(n.attr_i("axis", 0)?, rank)?;
            let idx = n.req_const(1, "indices")?;
            let g = Op::Gather {
                axis,
                indices: idx.ints().map_err(E::Msg)?,
                indices_shape: idx.shape.clone(),
            };
            let a = args(n, 1, 1)?;
            Ok(vec![im.apply(g, &a.pairs(), &out)?])
        }
        "Expand" => {
            let shape = n.req_const(1, "shape")?;
            let shape = to_usizes(&shape.ints().map_err(E::Msg)?, "shape")?;
            let a = args(n, 1, 1)?;
            Ok(vec![im.apply(Op::Expand { shape }, &a.pairs(), &out)?])
        }
        "Tile" => tile(im, n),
        "DepthToSpace" | "SpaceToDepth" => depth_space(im, n, op == "DepthToSpace"),
        "Pad" => pad(im, n),
        "Cast" | "CastLike" => cast(im, n),
        "Shape" => {
            let x = n.req(0)?;
            let shape: Vec<i64> = im.shape(x).iter().map(|&d| d as i64).collect();
            let r = shape.len() as i64;
            let clampi = |v: i64| (if v < 0 { v + r } else { v }).clamp(0, r) as usize;
            let s = clampi(n.attr_i("start", 0)?);
            let e = clampi(n.attr_i("end", r)?);
            let v = if s < e { shape[s..e].to_vec() } else { vec![] };
            Ok(vec![cval(Const::i64(vec![v.len()], v))])
        }
        "Size" => {
            let x = n.req(0)?;
            let numel: usize = im.shape(x).iter().product();
            Ok(vec![cval(Const::i64(vec![], vec![numel as i64]))])
        }
        "Constant" => constant(n).map(|c| vec![cval(c)]),
        "ConstantOfShape" => {
            let shape = n.req_const(0, "shape")?;
            let shape = to_usizes(&shape.ints().map_err(E::Msg)?, "shape")?;
            let value = n
                .attr_t("value")?
                .unwrap_or_else(|| Const::f32(vec![1], vec![0.0]));
            if value.numel() != 1 {
                return Err(E::Msg("attribute `value` must hold one element".into()));
            }
            super::consts::check_size(&shape)?;
            let count: usize = shape.iter().product();
            let idx = vec![0; count];
            Ok(vec![cval(value.take(&idx, shape))])
        }
        "Range" => {
            let s = n.req_const(0, "start")?;
            let l = n.req_const(1, "limit")?;
            let d = n.req_const(2, "delta")?;
            let (s0, l0, d0) = (
                s.scalar_f32().map_err(E::Msg)? as f64,
                l.scalar_f32().map_err(E::Msg)? as f64,
                d.scalar_f32().map_err(E::Msg)? as f64,
            );
            if s.kind() == Kind::I64 {
                let (s, l, d) = (
                    s.scalar_i64().map_err(E::Msg)?,
                    l.scalar_i64().map_err(E::Msg)?,
                    d.scalar_i64().map_err(E::Msg)?,
                );
                if d == 0 {
                    return Err(E::Msg("delta must not be 0".into()));
                }
                let count = ((l as f64 - s as f64) / d as f64).ceil().max(0.0) as usize;
                super::consts::check_size(&[count])?;
                let v: Vec<i64> = (0..count as i64).map(|i| s + i * d).collect();
                Ok(vec![cval(Const::i64(vec![count], v))])
            } else {
                if d0 == 0.0 {
                    return Err(E::Msg("delta must not be 0".into()));
                }
                let count = ((l0 - s0) / d0).ceil().max(0.0) as usize;
                super::consts::check_size(&[count])?;
                let v: Vec<f32> = (0..count).map(|i| (s0 + i as f64 * d0) as f32).collect();
                Ok(vec![cval(Const::f32(vec![count], v))])
            }
        }
        "Equal" | "Less" | "Greater" | "LessOrEqual" | "GreaterOrEqual" | "And" | "Or" | "Xor" => {
            let a = n.req_const(0, "A")?;
            let b = n.req_const(1, "B")?;
            let f: fn(f64, f64) -> bool = match op {
                "Equal" => |a, b| a == b,
                "Less" => |a, b| a < b,
                "Greater" => |a, b| a > b,
                "LessOrEqual" => |a, b| a <= b,
                "GreaterOrEqual" => |a, b| a >= b,
                "And" => |a, b| a != 0.0 && b != 0.0,
                "Or" => |a, b| a != 0.0 || b != 0.0,
                _ => |a, b| (a != 0.0) != (b != 0.0),
            };
            Ok(vec![cval(fold::compare(&a, &b, f).map_err(E::Msg)?)])
        }
        "Not" => {
            let a = n.req_const(0, "X")?;
            let v = a.bools().into_iter().map(|b| !b).collect();
            Ok(vec![cval(Const::bool(a.shape.clone(), v))])
        }
        "Floor" | "Ceil" | "Round" | "Sign" => {
            let a = n.req_const(0, "X")?;
            let c = match &a.data {
                Data::F32(v) => {
                    let f: fn(f32) -> f32 = match op {
                        "Floor" => f32::floor,
                        "Ceil" => f32::ceil,
                        "Round" => f32::round_ties_even,
                        _ => |x: f32| {
                            if x == 0.0 || x.is_nan() {
                                x * 0.0
                            } else {
                                x.signum()
                            }
                        },
                    };
                    Const::f32(a.shape.clone(), v.iter().map(|&x| f(x)).collect())
                }
                Data::I64(v) if op == "Sign" => {
                    Const::i64(a.shape.clone(), v.iter().map(|x| x.signum()).collect())
                }
                _ => (*a).clone(),
            };
            Ok(vec![cval(c)])
        }
        "Where" => where_(im, n),
        "CumSum" => super::spelled::cumsum(im, n),
        "GatherND" => super::spelled::gather_nd(im, n),
        "Einsum" => super::spelled::einsum(im, n),
        "Resize" => super::spelled::resize(im, n),
        _ => Err(E::Unsupported(Unsupported::Op {
            op_type: op.to_string(),
            node: String::new(),
            note: None,
        })),
    }
}

/// A binary op on two values; a constant operand of another element kind
/// than the runtime one is converted (ONNX `Pow` mixes float and int).
fn binary_vals(
    im: &mut Importer,
    b: BinaryOp,
    x: &Val,
    xn: &str,
    y: &Val,
    yn: &str,
    out: &str,
) -> R<Val> {
    let (kx, ky) = (im.kind(x), im.kind(y));
    let (mut x, mut y) = (x.clone(), y.clone());
    let (mut xn, mut yn) = (xn.to_string(), yn.to_string());
    if kx != ky {
        match (&x, &y) {
            (Val::Const(c), _) if ky != Kind::Bool => {
                x = cval(c.cast(ky));
                xn = format!("{xn}.cast");
            }
            (_, Val::Const(c)) if kx != Kind::Bool => {
                y = cval(c.cast(kx));
                yn = format!("{yn}.cast");
            }
            _ => {}
        }
    }
    im.apply(Op::Binary(b), &[(&x, &xn), (&y, &yn)], out)
}

/// Max/Min/Sum/Mean of any number of inputs: a chain of binary ops.
fn variadic(im: &mut Importer, n: &NodeCtx, op: &str) -> R<Vec<Val>> {
    let b = match op {
        "Max" => BinaryOp::Max,
        "Min" => BinaryOp::Min,
        _ => BinaryOp::Add,
    };
    let out = n.out_name(0);
    let count = n.ins.len();
    let mut acc = n.req(0)?.clone();
    let mut acc_name = n.in_name(0);
    for i in 1..count {
        let y = n.req(i)?.clone();
        let name = if i + 1 == count && op != "Mean" {
            out.clone()
        } else {
            format!("{out}.{i}")
        };
        acc = binary_vals(im, b, &acc, &acc_name, &y, &n.in_name(i), &name)?;
        acc_name = name;
    }
    if op == "Mean" && count > 1 {
        let c = scalar(count as f32);
        acc = binary_vals(
            im,
            BinaryOp::Div,
            &acc,
            &acc_name,
            &c,
            &format!("{out}.count"),
            &out,
        )?;
    }
    Ok(vec![acc])
}

/// Activations that kiln spells with a few element-wise ops. Each form
/// keeps the exact value of ONNX's definition on both sides of zero (e.g.
/// `relu(x) + a·min(x, 0)` is `x` for `x ≥ 0` and `a·x` below).
fn activation(im: &mut Importer, n: &NodeCtx, op: &str) -> R<Vec<Val>> {
    let out = n.out_name(0);
    let x = n.req(0)?.clone();
    let xn = n.in_name(0);
    let t = |s: &str| format!("{out}.{s}");
    let u = |im: &mut Importer, u: UnaryOp, v: &Val, vn: &str, name: &str| {
        im.apply(Op::Unary(u), &[(v, vn)], name)
    };
    let b = |im: &mut Importer, b: BinaryOp, v: &Val, vn: &str, w: &Val, wn: &str, name: &str| {
        binary_vals(im, b, v, vn, w, wn, name)
    };
    let zero = scalar(0.0);
    let one = scalar(1.0);
    let r = match op {
        "LeakyRelu" | "PRelu" => {
            let (slope, sn) = if op == "PRelu" {
                (n.req(1)?.clone(), n.in_name(1))
            } else {
                (scalar(n.attr_f("alpha", 0.01)?), t("alpha"))
            };
            let pos = u(im, UnaryOp::Relu, &x, &xn, &t("pos"))?;
            let neg = b(im, BinaryOp::Min, &x, &xn, &zero, &t("zero"), &t("neg"))?;
            let sneg = b(im, BinaryOp::Mul, &neg, &t("neg"), &slope, &sn, &t("sneg"))?;
            b(im, BinaryOp::Add, &pos, &t("pos"), &sneg, &t("sneg"), &out)?
        }
        "Elu" | "Selu" | "Celu" => {
            let alpha = n.attr_f(
                "alpha",
                match op {
                    "Selu" => 1.673_263_2,
                    _ => 1.0,
                },
            )?;
            let pos = u(im, UnaryOp::Relu, &x, &xn, &t("pos"))?;
            let mut neg = b(im, BinaryOp::Min, &x, &xn, &zero, &t("zero"), &t("neg"))?;
            if op == "Celu" {
                neg = b(
                    im,
                    BinaryOp::Div,
                    &neg,
                    &t("neg"),
                    &scalar(alpha),
                    &t("alpha"),
                    &t("negs"),
                )?;
            }
            let e = u(im, UnaryOp::Exp, &neg, &t("neg"), &t("exp"))?;
            let em1 = b(
                im,
                BinaryOp::Sub,
                &e,
                &t("exp"),
                &one,
                &t("one"),
                &t("expm1"),
            )?;
            let sc = b(
                im,
                BinaryOp::Mul,
                &em1,
                &t("expm1"),
                &scalar(alpha),
                &t("alpha"),
                &t("sneg"),
            )?;
            if op == "Selu" {
                let gamma = n.attr_f("gamma", 1.050_701)?;
                let s = b(
                    im,
                    BinaryOp::Add,
                    &pos,
                    &t("pos"),
                    &sc,
                    &t("sneg"),
                    &t("sum"),
                )?;
                b(
                    im,
                    BinaryOp::Mul,
                    &s,
                    &t("sum"),
                    &scalar(gamma),
                    &t("gamma"),
                    &out,
                )?
            } else {
                b(im, BinaryOp::Add, &pos, &t("pos"), &sc, &t("sneg"), &out)?
            }
        }
        "Softplus" | "Mish" => {
            let e = u(im, UnaryOp::Exp, &x, &xn, &t("exp"))?;
            let e1 = b(
                im,
                BinaryOp::Add,
                &e,
                &t("exp"),
                &one,
                &t("one"),
                &t("exp1"),
            )?;
            if op == "Softplus" {
                u(im, UnaryOp::Log, &e1, &t("exp1"), &out)?
            } else {
                let sp = u(im, UnaryOp::Log, &e1, &t("exp1"), &t("softplus"))?;
                let th = u(im, UnaryOp::Tanh, &sp, &t("softplus"), &t("tanh"))?;
                b(im, BinaryOp::Mul, &x, &xn, &th, &t("tanh"), &out)?
            }
        }
        _ => {
            // Softsign: x / (1 + |x|)
            let a = u(im, UnaryOp::Abs, &x, &xn, &t("abs"))?;
            let a1 = b(
                im,
                BinaryOp::Add,
                &a,
                &t("abs"),
                &one,
                &t("one"),
                &t("abs1"),
            )?;
            b(im, BinaryOp::Div, &x, &xn, &a1, &t("abs1"), &out)?
        }
    };
    Ok(vec![r])
}

/// Softmax and LogSoftmax. Before opset 13 the input is coerced to 2-D at
/// `axis` (default 1) and normalised over everything from `axis` on; from
/// 13 it is normalised along `axis` alone (default -1).
fn softmax(im: &mut Importer, n: &NodeCtx, log: bool) -> R<Vec<Val>> {
    let out = n.out_name(0);
    let x = n.req(0)?.clone();
    let xn = n.in_name(0);
    let shape = im.shape(&x);
    let rank = shape.len();
    let legacy = im.opset < 13;
    let axis = norm_axis(n.attr_i("axis", if legacy { 1 } else { -1 })?, rank)?;
    let sm_name = if log {
        format!("{out}.softmax")
    } else {
        out.clone()
    };
    let sm = if !legacy || axis + 1 == rank {
        im.apply(Op::Softmax { axis }, &[(&x, &xn)], &sm_name)?
    } else {
        let outer: usize = shape[..axis].iter().product();
        let inner: usize = shape[axis..].iter().product();
        let flat = im.apply(
            Op::Reshape {
                shape: vec![outer, inner],
            },
            &[(&x, &xn)],
            &format!("{out}.2d"),
        )?;
        let s = im.apply(
            Op::Softmax { axis: 1 },
            &[(&flat, "")],
            &format!("{out}.2d_softmax"),
        )?;
        im.apply(Op::Reshape { shape }, &[(&s, "")], &sm_name)?
    };
    if log {
        Ok(vec![im.apply(
            Op::Unary(UnaryOp::Log),
            &[(&sm, "")],
            &out,
        )?])
    } else {
        Ok(vec![sm])
    }
}

/// Spatial padding `[begins.., ends..]` from `pads` / `auto_pad`.
fn spatial_pads(
    n: &NodeCtx,
    input: &[usize],
    kernel: &[usize],
    strides: &[usize],
    dilations: &[usize],
) -> R<Vec<usize>> {
    let k = input.len();
    let auto = n.attr_s("auto_pad", "NOTSET")?;
    match auto.as_str() {
        "NOTSET" | "" => {
            let pads = n.attr_ints("pads").unwrap_or_else(|| vec![0; 2 * k]);
            if pads.len() != 2 * k {
                return Err(E::Msg(format!("pads {pads:?} must have {} entries", 2 * k)));
            }
            to_usizes(&pads, "pads")
        }
        "VALID" => Ok(vec![0; 2 * k]),
        "SAME_UPPER" | "SAME_LOWER" => {
            let mut pads = vec![0; 2 * k];
            for i in 0..k {
                let out = input[i].div_ceil(strides[i]);
                let span = kernel[i].saturating_sub(1) * dilations[i] + 1;
                let total = ((out.saturating_sub(1)) * strides[i] + span).saturating_sub(input[i]);
                let small = total / 2;
                let (b, e) = if auto == "SAME_UPPER" {
                    (small, total - small)
                } else {
                    (total - small, small)
                };
                pads[i] = b;
                pads[k + i] = e;
            }
            Ok(pads)
        }
        other => Err(E::Msg(format!("unknown auto_pad \"{other}\""))),
    }
}

/// `attr` or `default` repeated, checked to have `k` positive entries.
fn positive_ints(n: &NodeCtx, name: &str, k: usize) -> R<Vec<usize>> {
    let v = n.attr_ints(name).unwrap_or_else(|| vec![1; k]);
    if v.len() != k || v.iter().any(|&x| x < 1) {
        return Err(E::Msg(format!(
            "attribute `{name}` {v:?} must have {k} positive entries"
        )));
    }
    Ok(v.into_iter().map(|x| x as usize).collect())
}

/// Conv: 2-D directly; 1-D as a 2-D conv over a unit height.
fn conv(im: &mut Importer, n: &NodeCtx) -> R<Vec<Val>> {
    let out = n.out_name(0);
    let a = args(n, 2, 3)?;
    let xs = im.shape(&a.vals[0]);
    let ws = im.shape(&a.vals[1]);
    let rank = xs.len();
    if rank != 3 && rank != 4 {
        return Err(unsupported(
            n,
            format!("with rank-{rank} input (kiln has 1-D and 2-D convolutions)"),
        ));
    }
    if ws.len() != rank {
        return Err(E::Msg(format!(
            "weight {ws:?} must have rank {rank} like the input"
        )));
    }
    let k = rank - 2;
    let kernel = ws[2..].to_vec();
    if let Some(ks) = n.attr_ints("kernel_shape")
        && ks.iter().map(|&x| x as usize).collect::<Vec<_>>() != kernel
    {
        return Err(E::Msg(format!(
            "kernel_shape {ks:?} differs from the weight's {kernel:?}"
        )));
    }
    let strides = positive_ints(n, "strides", k)?;
    let dilations = positive_ints(n, "dilations", k)?;
    let groups = n.attr_i("group", 1)?;
    let groups =
        usize::try_from(groups).map_err(|_| E::Msg(format!("group {groups} must be positive")))?;
    let pads = spatial_pads(n, &xs[2..], &kernel, &strides, &dilations)?;
    if k == 2 {
        let op = Op::Conv2d {
            stride: [strides[0], strides[1]],
            pad: [pads[0], pads[1], pads[2], pads[3]],
            dilation: [dilations[0], dilations[1]],
            groups,
        };
        return Ok(vec![im.apply(op, &a.pairs(), &out)?]);
    }
    let unsq = Op::Unsqueeze { axes: vec![2] };
    let x2 = im.apply(
        unsq.clone(),
        &[(&a.vals[0], &a.names[0])],
        &format!("{out}.x2d"),
    )?;
    let w2 = im.apply(
        unsq,
        &[(&a.vals[1], &a.names[1])],
        &format!("{}.2d", a.names[1]),
    )?;
    let mut ins = vec![(&x2, ""), (&w2, "")];
    let wname = format!("{}.2d", a.names[1]);
    ins[1].1 = &wname;
    if a.vals.len() > 2 {
        ins.push((&a.vals[2], &a.names[2]));
    }
    let op = Op::Conv2d {
        stride: [1, strides[0]],
        pad: [0, pads[0], 0, pads[1]],
        dilation: [1, dilations[0]],
        groups,
    };
    let y = im.apply(op, &ins, &format!("{out}.2d"))?;
    Ok(vec![im.apply(
        Op::Squeeze { axes: vec![2] },
        &[(&y, "")],
        &out,
    )?])
}

/// MaxPool / AveragePool, 1-D or 2-D. `ceil_mode` becomes extra end padding
/// (which never counts: max ignores padding, and average pooling with it
/// is only accepted when padding is not counted).
fn pool(im: &mut Importer, n: &NodeCtx, max: bool) -> R<Vec<Val>> {
    let out = n.out_name(0);
    if max && n.has_output(1) {
        return Err(unsupported(n, "with its Indices output"));
    }
    let x = n.req(0)?.clone();
    let xn = n.in_name(0);
    let xs = im.shape(&x);
    let rank = xs.len();
    if rank != 3 && rank != 4 {
        return Err(unsupported(
            n,
            format!("with rank-{rank} input (kiln has 1-D and 2-D pooling)"),
        ));
    }
    let k = rank - 2;
    let kernel = n
        .attr_ints("kernel_shape")
        .ok_or("missing attribute `kernel_shape`")?;
    if kernel.len() != k || kernel.iter().any(|&x| x < 1) {
        return Err(E::Msg(format!(
            "kernel_shape {kernel:?} must have {k} positive entries"
        )));
    }
    let kernel: Vec<usize> = kernel.into_iter().map(|x| x as usize).collect();
    let strides = positive_ints(n, "strides", k)?;
    let dilations = positive_ints(n, "dilations", k)?;
    if dilations.iter().any(|&d| d != 1) {
        return Err(unsupported(
            n,
            "with dilations (kiln pools with dense windows)",
        ));
    }
    let count_include_pad = !max && n.attr_i("count_include_pad", 0)? != 0;
    let mut pads = spatial_pads(n, &xs[2..], &kernel, &strides, &dilations)?;
    if n.attr_i("ceil_mode", 0)? != 0 {
        for i in 0..k {
            let padded = xs[2 + i] + pads[i] + pads[k + i];
            if padded < kernel[i] {
                continue;
            }
            let floor_out = (padded - kernel[i]) / strides[i] + 1;
            let mut ceil_out = (padded - kernel[i]).div_ceil(strides[i]) + 1;
            // The last window must start inside the input or its begin padding.
            if (ceil_out - 1) * strides[i] >= xs[2 + i] + pads[i] {
                ceil_out -= 1;
            }
            if ceil_out > floor_out {
                if count_include_pad {
                    return Err(unsupported(
                        n,
                        "with ceil_mode and count_include_pad together",
                    ));
                }
                pads[k + i] += (ceil_out - 1) * strides[i] + kernel[i] - padded;
            }
        }
    }
    let (kernel2, stride2, pad2, x2) = if k == 2 {
        (
            [kernel[0], kernel[1]],
            [strides[0], strides[1]],
            [pads[0], pads[1], pads[2], pads[3]],
            x.clone(),
        )
    } else {
        let x2 = im.apply(
            Op::Unsqueeze { axes: vec![2] },
            &[(&x, &xn)],
            &format!("{out}.x2d"),
        )?;
        (
            [1, kernel[0]],
            [1, strides[0]],
            [0, pads[0], 0, pads[1]],
            x2,
        )
    };
    let op = Op::Pool2d {
        kind: if max { PoolKind::Max } else { PoolKind::Avg },
        kernel: kernel2,
        stride: stride2,
        pad: pad2,
        count_include_pad,
    };
    if k == 2 {
        return Ok(vec![im.apply(op, &[(&x2, &xn)], &out)?]);
    }
    let y = im.apply(op, &[(&x2, "")], &format!("{out}.2d"))?;
    Ok(vec![im.apply(
        Op::Squeeze { axes: vec![2] },
        &[(&y, "")],
        &out,
    )?])
}

/// LayerNormalization; a scale or bias that only broadcasts to the
/// normalised shape is expanded to it (kiln wants it exactly).
fn layer_norm(im: &mut Importer, n: &NodeCtx) -> R<Vec<Val>> {
    let out = n.out_name(0);
    let a = args(n, 2, 3)?;
    let xs = im.shape(&a.vals[0]);
    let axis = norm_axis(n.attr_i("axis", -1)?, xs.len())?;
    let want = xs[axis..].to_vec();
    let mut vals = vec![a.vals[0].clone()];
    let mut names = vec![a.names[0].clone()];
    for i in 1..a.vals.len() {
        let v = &a.vals[i];
        if im.shape(v) == want {
            vals.push(v.clone());
            names.push(a.names[i].clone());
        } else {
            let name = format!("{}.expanded", a.names[i]);
            let e = im.apply(
                Op::Expand {
                    shape: want.clone(),
                },
                &[(v, &a.names[i])],
                &name,
            )?;
            if im.shape(&e) != want {
                return Err(E::Msg(format!(
                    "input {i} {:?} does not broadcast to the normalised shape {want:?}",
                    im.shape(v)
                )));
            }
            vals.push(e);
            names.push(name);
        }
    }
    let op = Op::LayerNorm {
        axis,
        eps: Float(n.attr_f("epsilon", 1e-5)?),
    };
    let eps = n.attr_f("epsilon", 1e-5)?;
    let pairs: Vec<(&Val, &str)> = vals
        .iter()
        .zip(&names)
        .map(|(v, s)| (v, s.as_str()))
        .collect();
    let y = im.apply(op, &pairs, &out)?;
    if !n.has_output(1) && !n.has_output(2) {
        return Ok(vec![y]);
    }
    // The optional statistics outputs, from their definition: the mean and
    // 1/sqrt(var + eps) over the normalised axes, kept as size-1 dims.
    let x = &vals[0];
    let xn = &names[0];
    let t = |s: &str| format!("{out}.{s}");
    let red = Op::Reduce {
        kind: ReduceKind::Mean,
        axes: (axis..xs.len()).collect(),
        keepdims: true,
    };
    let mean_name = n.out_name(1);
    let mean = im.apply(red.clone(), &[(x, xn)], &mean_name)?;
    let d = binary_vals(im, BinaryOp::Sub, x, xn, &mean, &mean_name, &t("centred"))?;
    let sq = binary_vals(
        im,
        BinaryOp::Mul,
        &d,
        &t("centred"),
        &d,
        &t("centred"),
        &t("sq"),
    )?;
    let var = im.apply(red, &[(&sq, "")], &t("var"))?;
    let ve = binary_vals(
        im,
        BinaryOp::Add,
        &var,
        &t("var"),
        &scalar(eps),
        &t("eps"),
        &t("var_eps"),
    )?;
    let sd = im.apply(Op::Unary(UnaryOp::Sqrt), &[(&ve, "")], &t("std"))?;
    let inv = im.apply(Op::Unary(UnaryOp::Reciprocal), &[(&sd, "")], &n.out_name(2))?;
    Ok(vec![y, mean, inv])
}

/// GroupNormalization and InstanceNormalization (= one group per channel).
/// GroupNormalization-18 has per-group scale and bias, -21 per-channel
/// ones; per-group ones are spread to their channels.
fn group_norm(im: &mut Importer, n: &NodeCtx) -> R<Vec<Val>> {
    let out = n.out_name(0);
    let a = args(n, 3, 3)?;
    let xs = im.shape(&a.vals[0]);
    if xs.len() < 2 {
        return Err(E::Msg(format!("input {xs:?} must have rank >= 2")));
    }
    let c = xs[1];
    let instance = n.op_type() == "InstanceNormalization";
    let groups = if instance {
        c
    } else {
        usize::try_from(n.attr_i("num_groups", 0)?)
            .ok()
            .filter(|&g| g > 0)
            .ok_or("attribute `num_groups` must be positive")?
    };
    if !c.is_multiple_of(groups) {
        return Err(E::Msg(format!(
            "{c} channels are not divisible into {groups} groups"
        )));
    }
    let mut vals = vec![a.vals[0].clone()];
    let mut names = vec![a.names[0].clone()];
    for i in 1..3 {
        let v = &a.vals[i];
        let s = im.shape(v);
        if !instance && s == [groups] && groups != c {
            let per = c / groups;
            let name = format!("{}.per_channel", a.names[i]);
            let g = Op::Gather {
                axis: 0,
                indices: (0..c).map(|k| (k / per) as i64).collect(),
                indices_shape: vec![c],
            };
            vals.push(im.apply(g, &[(v, &a.names[i])], &name)?);
            names.push(name);
        } else {
            vals.push(v.clone());
            names.push(a.names[i].clone());
        }
    }
    let op = Op::GroupNorm {
        groups,
        eps: Float(n.attr_f("epsilon", 1e-5)?),
    };
    let pairs: Vec<(&Val, &str)> = vals
        .iter()
        .zip(&names)
        .map(|(v, s)| (v, s.as_str()))
        .collect();
    Ok(vec![im.apply(op, &pairs, &out)?])
}

/// The Reduce* family. Axes come from an attribute before opset 18
/// (ReduceSum: 13) and from an optional input after; empty axes mean
/// "all" unless `noop_with_empty_axes`.
fn reduce(im: &mut Importer, n: &NodeCtx, op: &str) -> R<Vec<Val>> {
    let out = n.out_name(0);
    let x = n.req(0)?.clone();
    let xn = n.in_name(0);
    let xs = im.shape(&x);
    let rank = xs.len();
    let axes_from_input = im.opset >= 18 || (op == "ReduceSum" && im.opset >= 13);
    let axes = if axes_from_input {
        match n.opt_const(1, "axes")? {
            Some(c) => c.ints().map_err(E::Msg)?,
            None => vec![],
        }
    } else {
        n.attr_ints("axes").unwrap_or_default()
    };
    let keepdims = n.attr_i("keepdims", 1)? != 0;
    let mut axes = norm_axes(&axes, rank)?;
    if axes.is_empty() {
        if n.attr_i("noop_with_empty_axes", 0)? != 0 {
            return Ok(vec![x]);
        }
        axes = (0..rank).collect();
    }
    if axes.is_empty() {
        // A scalar reduced over no axes is itself (the squared and
        // exponentiated forms still apply their element-wise step).
        return match op {
            "ReduceL1" => Ok(vec![im.apply(
                Op::Unary(UnaryOp::Abs),
                &[(&x, &xn)],
                &out,
            )?]),
            "ReduceL2" => Ok(vec![im.apply(
                Op::Unary(UnaryOp::Abs),
                &[(&x, &xn)],
                &out,
            )?]),
            "ReduceSumSquare" => Ok(vec![binary_vals(
                im,
                BinaryOp::Mul,
                &x,
                &xn,
                &x,
                &xn,
                &out,
            )?]),
            "ReduceLogSum" => Ok(vec![im.apply(
                Op::Unary(UnaryOp::Log),
                &[(&x, &xn)],
                &out,
            )?]),
            _ => Ok(vec![x]),
        };
    }
    // Integer reductions only happen in shape arithmetic: evaluate them.
    if let Val::Const(c) = &x
        && c.kind() != Kind::F32
    {
        let is_bool = c.kind() == Kind::Bool;
        let r = match op {
            "ReduceSum" => fold::reduce_ints(c, &axes, keepdims, 0, i64::wrapping_add),
            "ReduceProd" => fold::reduce_ints(c, &axes, keepdims, 1, i64::wrapping_mul),
            // bool max is "any" (empty: false), min is "all" (empty: true)
            "ReduceMax" if is_bool => fold::reduce_ints(c, &axes, keepdims, 0, i64::max),
            "ReduceMin" if is_bool => fold::reduce_ints(c, &axes, keepdims, 1, i64::min),
            "ReduceMax" => fold::reduce_ints(c, &axes, keepdims, i64::MIN, i64::max),
            "ReduceMin" => fold::reduce_ints(c, &axes, keepdims, i64::MAX, i64::min),
            _ => return Err(unsupported(n, "on integer data")),
        };
        let r = r.map_err(E::Msg)?;
        return Ok(vec![cval(if is_bool { r.cast(Kind::Bool) } else { r })]);
    }
    if op == "ReduceProd" {
        return Err(unsupported(
            n,
            "on float data (kiln has no product reduction)",
        ));
    }
    let red = |kind| Op::Reduce {
        kind,
        axes: axes.clone(),
        keepdims,
    };
    let t = |s: &str| format!("{out}.{s}");
    let r = match op {
        "ReduceMean" => im.apply(red(ReduceKind::Mean), &[(&x, &xn)], &out)?,
        "ReduceSum" => im.apply(red(ReduceKind::Sum), &[(&x, &xn)], &out)?,
        "ReduceMax" => im.apply(red(ReduceKind::Max), &[(&x, &xn)], &out)?,
        "ReduceMin" => {
            // min(x) = -max(-x), exactly
            let neg = im.apply(Op::Unary(UnaryOp::Neg), &[(&x, &xn)], &t("neg"))?;
            let m = im.apply(red(ReduceKind::Max), &[(&neg, "")], &t("max"))?;
            im.apply(Op::Unary(UnaryOp::Neg), &[(&m, "")], &out)?
        }
        "ReduceL1" => {
            let a = im.apply(Op::Unary(UnaryOp::Abs), &[(&x, &xn)], &t("abs"))?;
            im.apply(red(ReduceKind::Sum), &[(&a, "")], &out)?
        }
        "ReduceL2" | "ReduceSumSquare" => {
            let sq = binary_vals(im, BinaryOp::Mul, &x, &xn, &x, &xn, &t("sq"))?;
            if op == "ReduceL2" {
                let s = im.apply(red(ReduceKind::Sum), &[(&sq, "")], &t("sum"))?;
                im.apply(Op::Unary(UnaryOp::Sqrt), &[(&s, "")], &out)?
            } else {
                im.apply(red(ReduceKind::Sum), &[(&sq, "")], &out)?
            }
        }
        "ReduceLogSum" => {
            let s = im.apply(red(ReduceKind::Sum), &[(&x, &xn)], &t("sum"))?;
            im.apply(Op::Unary(UnaryOp::Log), &[(&s, "")], &out)?
        }
        _ => {
            let e = im.apply(Op::Unary(UnaryOp::Exp), &[(&x, &xn)], &t("exp"))?;
            let s = im.apply(red(ReduceKind::Sum), &[(&e, "")], &t("sum"))?;
            im.apply(Op::Unary(UnaryOp::Log), &[(&s, "")], &out)?
        }
    };
    Ok(vec![r])
}

/// Reshape with ONNX's `0` (copy the input dim, unless `allowzero`) and
/// `-1` (whatever is left).
fn reshape(im: &mut Importer, n: &NodeCtx) -> R<Vec<Val>> {
    let out = n.out_name(0);
    let a = args(n, 1, 1)?;
    let xs = im.shape(&a.vals[0]);
    let target = n.req_const(1, "shape")?.ints().map_err(E::Msg)?;
    let allowzero = n.attr_i("allowzero", 0)? != 0;
    let mut shape = Vec::with_capacity(target.len());
    let mut infer = None;
    for (i, &t) in target.iter().enumerate() {
        match t {
            0 if !allowzero => shape.push(*xs.get(i).ok_or_else(|| {
                E::Msg(format!(
                    "shape {target:?} copies dim {i}, which the input {xs:?} lacks"
                ))
            })?),
            -1 if infer.is_none() => {
                infer = Some(i);
                shape.push(1);
            }
            t if t >= 0 => shape.push(t as usize),
            _ => {
                return Err(E::Msg(format!(
                    "shape {target:?} is not a valid reshape target"
                )));
            }
        }
    }
    // Checked: a target such as [2^40, 2^40, -1] must be an error, not an
    // overflow (the fuzzer's onnx_import target found it).
    let too_many = || E::Msg(format!("reshape target {target:?} has too many elements"));
    let product = |dims: &[usize]| dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    if let Some(i) = infer {
        let known = product(&shape).ok_or_else(too_many)?;
        let numel = product(&xs).ok_or_else(too_many)?;
        if known == 0 || !numel.is_multiple_of(known) {
            return Err(E::Msg(format!(
                "cannot reshape {xs:?} ({numel} elements) to {target:?}"
            )));
        }
        shape[i] = numel / known;
    }
    Ok(vec![im.apply(Op::Reshape { shape }, &a.pairs(), &out)?])
}

/// Split into the node's outputs: sizes from the `split` attribute (before
/// 13) or input (13+), or equal pieces (`num_outputs` from 18: the last
/// piece may be smaller).
fn split(im: &mut Importer, n: &NodeCtx) -> R<Vec<Val>> {
    let a = args(n, 1, 1)?;
    let xs = im.shape(&a.vals[0]);
    let axis = norm_axis(n.attr_i("axis", 0)?, xs.len())?;
    let dim = xs[axis];
    let given = if im.opset >= 13 {
        n.opt_const(1, "split")?
            .map(|c| c.ints())
            .transpose()
            .map_err(E::Msg)?
    } else {
        n.attr_ints("split")
    };
    let sizes = match given {
        Some(s) => to_usizes(&s, "split")?,
        None => {
            let k = if n.has_attr("num_outputs") {
                n.attr_i("num_outputs", 1)?
            } else {
                n.num_outputs() as i64
            };
            let k = usize::try_from(k)
                .ok()
                .filter(|&k| k > 0)
                .ok_or("the number of outputs must be positive")?;
            let chunk = dim.div_ceil(k);
            let mut v = Vec::with_capacity(k);
            let mut left = dim;
            for _ in 0..k {
                let s = chunk.min(left);
                v.push(s);
                left -= s;
            }
            if left != 0 || v.contains(&0) && dim >= k {
                return Err(E::Msg(format!("cannot split {dim} into {k} pieces")));
            }
            v
        }
    };
    if sizes.len() != n.num_outputs() {
        return Err(E::Msg(format!(
            "split sizes {sizes:?} do not match the {} outputs",
            n.num_outputs()
        )));
    }
    let names: Vec<String> = (0..sizes.len()).map(|i| n.out_name(i)).collect();
    im.apply_multi(Op::Split { axis, sizes }, &a.pairs(), &names)
}

/// Slice (opset 10+ form: starts, ends, axes, steps as inputs). Indices
/// counted from the end are made absolute; kiln clamps like ONNX.
fn slice(im: &mut Importer, n: &NodeCtx) -> R<Vec<Val>> {
    let out = n.out_name(0);
    let a = args(n, 1, 1)?;
    let xs = im.shape(&a.vals[0]);
    let rank = xs.len();
    let starts = n.req_const(1, "starts")?.ints().map_err(E::Msg)?;
    let ends = n.req_const(2, "ends")?.ints().map_err(E::Msg)?;
    let axes = match n.opt_const(3, "axes")? {
        Some(c) => c.ints().map_err(E::Msg)?,
        None => (0..starts.len() as i64).collect(),
    };
    let steps = match n.opt_const(4, "steps")? {
        Some(c) => c.ints().map_err(E::Msg)?,
        None => vec![1; starts.len()],
    };
    if ends.len() != starts.len() || axes.len() != starts.len() || steps.len() != starts.len() {
        return Err(E::Msg(
            "starts, ends, axes and steps differ in length".into(),
        ));
    }
    let mut k_axes = Vec::new();
    let (mut k_starts, mut k_ends) = (Vec::new(), Vec::new());
    for i in 0..axes.len() {
        let ax = norm_axis(axes[i], rank)?;
        if k_axes.contains(&ax) {
            return Err(E::Msg(format!("axis {} is sliced twice", axes[i])));
        }
        if steps[i] == 0 {
            return Err(E::Msg("a step of 0".into()));
        }
        let d = xs[ax] as i64;
        let abs = |v: i64| if v < 0 { v.saturating_add(d) } else { v };
        k_axes.push(ax);
        k_starts.push(abs(starts[i]));
        k_ends.push(abs(ends[i]));
    }
    let op = Op::Slice {
        axes: k_axes,
        starts: k_starts,
        ends: k_ends,
        steps,
    };
    Ok(vec![im.apply(op, &a.pairs(), &out)?])
}

/// Squeeze / Unsqueeze: axes from the attribute before opset 13, from the
/// input after. Squeeze without axes drops every size-1 dim.
fn squeeze(im: &mut Importer, n: &NodeCtx, unsq: bool) -> R<Vec<Val>> {
    let out = n.out_name(0);
    let a = args(n, 1, 1)?;
    let xs = im.shape(&a.vals[0]);
    let axes = if im.opset >= 13 {
        n.opt_const(1, "axes")?
            .map(|c| c.ints())
            .transpose()
            .map_err(E::Msg)?
    } else {
        n.attr_ints("axes")
    };
    let op = if unsq {
        let axes = axes.ok_or("Unsqueeze needs axes")?;
        Op::Unsqueeze {
            axes: norm_axes(&axes, xs.len() + axes.len())?,
        }
    } else {
        let axes = match axes {
            Some(v) => norm_axes(&v, xs.len())?,
            None => (0..xs.len()).filter(|&i| xs[i] == 1).collect(),
        };
        Op::Squeeze { axes }
    };
    Ok(vec![im.apply(op, &a.pairs(), &out)?])
}

/// Tile as reshape → expand → reshape: `[d0,d1]` becomes `[1,d0,1,d1]`,
/// broadcast to `[r0,d0,r1,d1]`, and folded to `[r0·d0, r1·d1]`.
fn tile(im: &mut Importer, n: &NodeCtx) -> R<Vec<Val>> {
    let out = n.out_name(0);
    let a = args(n, 1, 1)?;
    let xs = im.shape(&a.vals[0]);
    let reps = to_usizes(
        &n.req_const(1, "repeats")?.ints().map_err(E::Msg)?,
        "repeats",
    )?;
    if reps.len() != xs.len() {
        return Err(E::Msg(format!(
            "repeats {reps:?} must have one entry per axis of {xs:?}"
        )));
    }
    let inter: Vec<usize> = xs.iter().flat_map(|&d| [1, d]).collect();
    let big: Vec<usize> = xs.iter().zip(&reps).flat_map(|(&d, &r)| [r, d]).collect();
    let fin: Vec<usize> = xs.iter().zip(&reps).map(|(&d, &r)| d * r).collect();
    let r1 = im.apply(
        Op::Reshape { shape: inter },
        &a.pairs(),
        &format!("{out}.interleaved"),
    )?;
    let e = im.apply(
        Op::Expand { shape: big },
        &[(&r1, "")],
        &format!("{out}.expanded"),
    )?;
    Ok(vec![im.apply(
        Op::Reshape { shape: fin },
        &[(&e, "")],
        &out,
    )?])
}

/// DepthToSpace (DCR or CRD) and SpaceToDepth as reshape → transpose → reshape.
fn depth_space(im: &mut Importer, n: &NodeCtx, to_space: bool) -> R<Vec<Val>> {
    let out = n.out_name(0);
    let a = args(n, 1, 1)?;
    let xs = im.shape(&a.vals[0]);
    let b = usize::try_from(n.attr_i("blocksize", 0)?)
        .ok()
        .filter(|&b| b > 0)
        .ok_or("attribute `blocksize` must be positive")?;
    let [nn, c, h, w] = xs[..] else {
        return Err(E::Msg(format!("input {xs:?} must be rank 4")));
    };
    let (s1, perm, s2) = if to_space {
        if !c.is_multiple_of(b * b) {
            return Err(E::Msg(format!(
                "{c} channels are not divisible by blocksize² = {}",
                b * b
            )));
        }
        let cc = c / (b * b);
        if n.attr_s("mode", "DCR")? == "CRD" {
            (
                vec![nn, cc, b, b, h, w],
                vec![0, 1, 4, 2, 5, 3],
                vec![nn, cc, h * b, w * b],
            )
        } else {
            (
                vec![nn, b, b, cc, h, w],
                vec![0, 3, 4, 1, 5, 2],
                vec![nn, cc, h * b, w * b],
            )
        }
    } else {
        if !h.is_multiple_of(b) || !w.is_multiple_of(b) {
            return Err(E::Msg(format!("{h}×{w} is not divisible by blocksize {b}")));
        }
        (
            vec![nn, c, h / b, b, w / b, b],
            vec![0, 3, 5, 1, 2, 4],
            vec![nn, c * b * b, h / b, w / b],
        )
    };
    let r1 = im.apply(
        Op::Reshape { shape: s1 },
        &a.pairs(),
        &format!("{out}.split"),
    )?;
    let t = im.apply(
        Op::Transpose { perm },
        &[(&r1, "")],
        &format!("{out}.moved"),
    )?;
    Ok(vec![im.apply(
        Op::Reshape { shape: s2 },
        &[(&t, "")],
        &out,
    )?])
}

/// Pad (opset 11+: pads, constant_value and, from 18, axes as inputs).
/// Negative pads crop: pad by the positive parts, then slice.
fn pad(im: &mut Importer, n: &NodeCtx) -> R<Vec<Val>> {
    let out = n.out_name(0);
    let a = args(n, 1, 1)?;
    let xs = im.shape(&a.vals[0]);
    let rank = xs.len();
    let mode = match n.attr_s("mode", "constant")?.as_str() {
        "constant" => PadMode::Constant,
        "reflect" => PadMode::Reflect,
        "edge" => PadMode::Edge,
        other => return Err(unsupported(n, format!("with mode \"{other}\""))),
    };
    let given = match n.attr_ints("pads") {
        Some(p) if im.opset < 11 => p,
        _ => n.req_const(1, "pads")?.ints().map_err(E::Msg)?,
    };
    let value = match n.opt_const(2, "constant_value")? {
        Some(c) if c.numel() > 0 => c.scalar_f32().map_err(E::Msg)?,
        _ => 0.0,
    };
    let axes = match n.opt_const(3, "axes")? {
        Some(c) => c
            .ints()
            .map_err(E::Msg)?
            .iter()
            .map(|&x| norm_axis(x, rank))
            .collect::<R<Vec<_>>>()?,
        None => (0..rank).collect(),
    };
    if given.len() != 2 * axes.len() {
        return Err(E::Msg(format!(
            "pads {given:?} must have {} entries",
            2 * axes.len()
        )));
    }
    let mut full = vec![0i64; 2 * rank];
    for (i, &ax) in axes.iter().enumerate() {
        full[ax] = given[i];
        full[rank + ax] = given[axes.len() + i];
    }
    let pos: Vec<usize> = full.iter().map(|&p| p.max(0) as usize).collect();
    let mut cur = a.vals[0].clone();
    let mut cur_name = a.names[0].clone();
    let crop = full.iter().any(|&p| p < 0);
    if pos.iter().any(|&p| p > 0) {
        let name = if crop {
            format!("{out}.padded")
        } else {
            out.clone()
        };
        cur = im.apply(
            Op::Pad {
                pads: pos.clone(),
                mode,
                value: Float(value),
            },
            &[(&cur, &cur_name)],
            &name,
        )?;
        cur_name = name;
    }
    if crop {
        let padded = im.shape(&cur);
        let axes: Vec<usize> = (0..rank).collect();
        let starts: Vec<i64> = (0..rank).map(|i| (-full[i]).max(0)).collect();
        let ends: Vec<i64> = (0..rank)
            .map(|i| padded[i] as i64 - (-full[rank + i]).max(0))
            .collect();
        if starts.iter().zip(&ends).any(|(s, e)| s > e) {
            return Err(E::Msg(format!(
                "pads {given:?} crop more than the input {xs:?} holds"
            )));
        }
        let sl = Op::Slice {
            axes,
            starts,
            ends,
            steps: vec![1; rank],
        };
        cur = im.apply(sl, &[(&cur, &cur_name)], &out)?;
    }
    Ok(vec![cur])
}

/// Cast / CastLike. Constants convert to any kind; runtime values only
/// between kiln's f32 and i64.
fn cast(im: &mut Importer, n: &NodeCtx) -> R<Vec<Val>> {
    let out = n.out_name(0);
    let x = n.req(0)?.clone();
    let (to, to_name) = if n.op_type() == "CastLike" {
        let k = im.kind(n.req(1)?);
        (k, format!("{k:?}"))
    } else {
        let code = n.attr_i("to", 0)?;
        let dt = i32::try_from(code)
            .ok()
            .and_then(|c| DataType::try_from(c).ok())
            .ok_or_else(|| E::Msg(format!("unknown target type {code}")))?;
        let kind = match dt {
            DataType::Float | DataType::Double | DataType::Float16 | DataType::Bfloat16 => {
                Kind::F32
            }
            DataType::Int64
            | DataType::Int32
            | DataType::Int16
            | DataType::Int8
            | DataType::Uint8
            | DataType::Uint16
            | DataType::Uint32
            | DataType::Uint64 => Kind::I64,
            DataType::Bool => Kind::Bool,
            other => {
                return Err(E::Unsupported(Unsupported::DType {
                    dtype: other.as_str_name().into(),
                    value: format!("Cast target of '{out}'"),
                }));
            }
        };
        // At run time only exact kiln types are possible.
        if let Val::Dyn(_) = x
            && !matches!(dt, DataType::Float | DataType::Int64)
        {
            return Err(E::Unsupported(Unsupported::DType {
                dtype: dt.as_str_name().into(),
                value: format!("Cast of runtime value to '{out}'"),
            }));
        }
        (kind, dt.as_str_name().to_string())
    };
    match &x {
        Val::Const(c) => Ok(vec![cval(c.cast(to))]),
        Val::Dyn(_) if im.kind(&x) == to => Ok(vec![x]),
        Val::Dyn(_) => {
            let dtype = match to {
                Kind::F32 => DType::F32,
                Kind::I64 => DType::I64,
                Kind::Bool => {
                    return Err(E::Unsupported(Unsupported::DType {
                        dtype: to_name,
                        value: format!("Cast of runtime value to '{out}'"),
                    }));
                }
            };
            Ok(vec![im.apply(
                Op::Cast { to: dtype },
                &[(&x, &n.in_name(0))],
                &out,
            )?])
        }
    }
}

/// `Constant`: the value in whichever attribute carries it.
fn constant(n: &NodeCtx) -> R<Const> {
    if let Some(t) = n.attr_t("value")? {
        return Ok(t);
    }
    if n.has_attr("value_float") {
        return Ok(Const::f32(vec![], vec![n.attr_f("value_float", 0.0)?]));
    }
    if let Some(v) = n.attr_floats("value_floats") {
        return Ok(Const::f32(vec![v.len()], v));
    }
    if n.has_attr("value_int") {
        return Ok(Const::i64(vec![], vec![n.attr_i("value_int", 0)?]));
    }
    if let Some(v) = n.attr_ints("value_ints") {
        return Ok(Const::i64(vec![v.len()], v));
    }
    if n.has_attr("value_string") || n.has_attr("value_strings") {
        return Err(E::Unsupported(Unsupported::DType {
            dtype: "STRING".into(),
            value: format!("Constant '{}'", n.out_name(0)),
        }));
    }
    Err(E::Msg("Constant has no value attribute kiln reads".into()))
}

/// Where: evaluated on constants; with a constant condition that picks one
/// side everywhere it is that side broadcast; other runtime uses need a
/// select op kiln does not have.
fn where_(im: &mut Importer, n: &NodeCtx) -> R<Vec<Val>> {
    let out = n.out_name(0);
    let c = n.req(0)?.clone();
    let x = n.req(1)?.clone();
    let y = n.req(2)?.clone();
    let Val::Const(cc) = &c else {
        return Err(unsupported(
            n,
            "with a runtime condition (kiln has no boolean tensors)",
        ));
    };
    if let (Val::Const(xc), Val::Const(yc)) = (&x, &y) {
        return Ok(vec![cval(fold::select(cc, xc, yc).map_err(E::Msg)?)]);
    }
    let shape = kiln_ir::types::broadcast_shapes(&cc.shape, &im.shape(&x))
        .and_then(|s| kiln_ir::types::broadcast_shapes(&s, &im.shape(&y)))
        .ok_or("condition and branches do not broadcast")?;
    let b = cc.bools();
    let (pick, name) = if b.iter().all(|&t| t) {
        (&x, n.in_name(1))
    } else if !b.iter().any(|&t| t) {
        (&y, n.in_name(2))
    } else {
        return super::spelled::select_const(im, n, cc, shape);
    };
    Ok(vec![im.apply(
        Op::Expand { shape },
        &[(pick, &name)],
        &out,
    )?])
}
