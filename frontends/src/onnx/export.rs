//! Export of a kiln model as a self-contained ONNX model.
//!
//! Every primitive op has a direct ONNX spelling at opset 21 (the first
//! with per-channel GroupNormalization and with Gelu), so the exported
//! graph computes what kiln's does, op for op; attributes that ONNX takes
//! as inputs become initialisers named after the node. Weights are written
//! as initialisers under their own names.

use std::collections::HashSet;
use std::path::Path;

use kiln_ir::shape::slice_bounds;
use kiln_ir::{
    BinaryOp, DType, Model, Op, PadMode, PoolKind, ReduceKind, Tensor, TensorData, TensorType,
    UnaryOp, Value,
};
use prost::Message;

use super::proto::{
    AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto,
    TensorShapeProto, TypeProto, ValueInfoProto, attribute_proto::AttributeType,
    tensor_proto::DataType, tensor_shape_proto, type_proto,
};
use crate::FrontendError;

/// The default-domain opset of exported models.
pub const EXPORT_OPSET: i64 = 21;

/// The ONNX IR version that goes with [`EXPORT_OPSET`].
const IR_VERSION: i64 = 10;

/// Writes `model` as an `.onnx` file.
pub fn export(model: &Model, path: &Path) -> Result<(), FrontendError> {
    let bytes = export_bytes(model)?;
    std::fs::write(path, bytes).map_err(|e| FrontendError::io(path, e))
}

/// Serialises `model` as ONNX protobuf bytes. Fused ops (an optimised
/// model) are written as the primitive ops they stand for.
pub fn export_bytes(model: &Model) -> Result<Vec<u8>, FrontendError> {
    let has_fused = model
        .graph
        .node_ids()
        .any(|id| matches!(model.graph.node(id).op, Op::Fused(_)));
    if has_fused {
        let mut lowered = model.clone();
        kiln_ir::fused::lower_fused(&mut lowered.graph, &mut lowered.weights)?;
        return Ok(to_proto(&lowered)?.encode_to_vec());
    }
    Ok(to_proto(model)?.encode_to_vec())
}

fn onnx_dtype(d: DType) -> i32 {
    match d {
        DType::F32 => DataType::Float as i32,
        DType::I64 => DataType::Int64 as i32,
    }
}

pub(crate) fn tensor_proto(name: &str, t: &Tensor) -> TensorProto {
    let raw: Vec<u8> = match t.data() {
        TensorData::F32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        TensorData::I64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
    };
    TensorProto {
        name: Some(name.to_string()),
        dims: t.shape().iter().map(|&d| d as i64).collect(),
        data_type: Some(onnx_dtype(t.dtype())),
        raw_data: Some(raw),
        ..Default::default()
    }
}

fn value_info(name: &str, ty: &TensorType) -> ValueInfoProto {
    ValueInfoProto {
        name: Some(name.to_string()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(onnx_dtype(ty.dtype)),
                shape: Some(TensorShapeProto {
                    dim: ty
                        .shape
                        .iter()
                        .map(|&d| tensor_shape_proto::Dimension {
                            value: Some(tensor_shape_proto::dimension::Value::DimValue(d as i64)),
                            ..Default::default()
                        })
                        .collect(),
                }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn ints(name: &str, v: impl IntoIterator<Item = i64>) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Ints as i32),
        ints: v.into_iter().collect(),
        ..Default::default()
    }
}

fn int(name: &str, v: i64) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Int as i32),
        i: Some(v),
        ..Default::default()
    }
}

fn float(name: &str, v: f32) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Float as i32),
        f: Some(v),
        ..Default::default()
    }
}

fn string(name: &str, v: &str) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::String as i32),
        s: Some(v.as_bytes().to_vec()),
        ..Default::default()
    }
}

fn us(v: &[usize]) -> Vec<i64> {
    v.iter().map(|&x| x as i64).collect()
}

/// Builds the graph: one namespace for values and weights (ONNX has one),
/// initialisers for weights and for attributes ONNX takes as inputs.
struct Exporter {
    nodes: Vec<NodeProto>,
    inits: Vec<TensorProto>,
    used: HashSet<String>,
}

impl Exporter {
    fn unique(&mut self, base: &str) -> String {
        let base = if base.is_empty() { "v" } else { base };
        let mut name = base.to_string();
        let mut k = 0;
        while self.used.contains(&name) {
            k += 1;
            name = format!("{base}__{k}");
        }
        self.used.insert(name.clone());
        name
    }

    fn init(&mut self, base: &str, t: &Tensor) -> String {
        let name = self.unique(base);
        self.inits.push(tensor_proto(&name, t));
        name
    }

    fn init_i64(&mut self, base: &str, v: &[i64]) -> String {
        let t = Tensor::from_i64([v.len()], v.to_vec()).expect("length matches");
        self.init(base, &t)
    }

    fn init_scalar(&mut self, base: &str, dtype: DType, v: f32) -> String {
        let t = match dtype {
            DType::F32 => Tensor::from_f32(Vec::new(), vec![v]),
            DType::I64 => Tensor::from_i64(Vec::new(), vec![v as i64]),
        }
        .expect("one element");
        self.init(base, &t)
    }

    fn node(&mut self, op: &str, ins: Vec<String>, outs: Vec<String>, attrs: Vec<AttributeProto>) {
        let name = format!("{op}_{}", self.nodes.len());
        self.nodes.push(NodeProto {
            input: ins,
            output: outs,
            name: Some(name),
            op_type: Some(op.into()),
            attribute: attrs,
            ..Default::default()
        });
    }
}

fn to_proto(model: &Model) -> Result<ModelProto, FrontendError> {
    let g = &model.graph;
    kiln_ir::verify(g)?;
    kiln_ir::verify_weights(g, &model.weights)?;
    let mut ex = Exporter {
        nodes: Vec::new(),
        inits: Vec::new(),
        used: HashSet::new(),
    };
    // ONNX name of each kiln value.
    let mut names: std::collections::HashMap<Value, String> = std::collections::HashMap::new();
    for &w in g.weights() {
        let info = g.value_info(Value::of(w));
        let t = model
            .weights
            .get(&info.name)
            .ok_or_else(|| FrontendError::Onnx(format!("weight @{} has no value", info.name)))?;
        let name = ex.init(&info.name, t);
        names.insert(Value::of(w), name);
    }
    let mut inputs = Vec::new();
    for &i in g.inputs() {
        let info = g.value_info(Value::of(i));
        let name = ex.unique(&info.name);
        inputs.push(value_info(&name, &info.ty));
        names.insert(Value::of(i), name);
    }
    for id in g.topo_order()? {
        let node = g.node(id);
        if node.op.is_leaf() {
            continue;
        }
        let ins: Vec<String> = g.operands(id).iter().map(|v| names[v].clone()).collect();
        let in_ty: Vec<TensorType> = g
            .operands(id)
            .iter()
            .map(|v| g.value_type(*v).clone())
            .collect();
        let outs: Vec<String> = node.outputs.iter().map(|o| ex.unique(&o.name)).collect();
        for (k, o) in outs.iter().enumerate() {
            names.insert(
                Value {
                    node: id,
                    output: k,
                },
                o.clone(),
            );
        }
        let base = outs[0].clone();
        emit(&mut ex, &node.op, ins, &in_ty, outs, &base)?;
    }
    let mut outputs = Vec::new();
    let mut taken: HashSet<String> = HashSet::new();
    for v in g.outputs() {
        let mut name = names[v].clone();
        let is_leaf = g.node(v.node).op.is_leaf();
        if is_leaf || !taken.insert(name.clone()) {
            // A graph output must be produced by a node and named once.
            let out = ex.unique(&format!("{name}_output"));
            ex.node("Identity", vec![name], vec![out.clone()], vec![]);
            taken.insert(out.clone());
            name = out;
        }
        outputs.push(value_info(&name, g.value_type(*v)));
    }
    Ok(ModelProto {
        ir_version: Some(IR_VERSION),
        opset_import: vec![OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(EXPORT_OPSET),
        }],
        producer_name: Some("kiln".into()),
        producer_version: Some(env!("CARGO_PKG_VERSION").into()),
        graph: Some(GraphProto {
            node: ex.nodes,
            name: Some(if g.name.is_empty() {
                "kiln".into()
            } else {
                g.name.clone()
            }),
            initializer: ex.inits,
            input: inputs,
            output: outputs,
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// Appends the ONNX node(s) for one kiln op.
fn emit(
    ex: &mut Exporter,
    op: &Op,
    mut ins: Vec<String>,
    in_ty: &[TensorType],
    outs: Vec<String>,
    base: &str,
) -> Result<(), FrontendError> {
    let one = |ex: &mut Exporter, t: &str, ins, attrs| {
        ex.node(t, ins, outs.clone(), attrs);
    };
    match op {
        Op::Input | Op::Weight => {}
        Op::Conv2d {
            stride,
            pad,
            dilation,
            groups,
        } => {
            let k = &in_ty[1].shape[2..];
            one(
                ex,
                "Conv",
                ins,
                vec![
                    ints("kernel_shape", us(k)),
                    ints("strides", us(stride)),
                    ints("pads", us(pad)),
                    ints("dilations", us(dilation)),
                    int("group", *groups as i64),
                ],
            );
        }
        Op::MatMul => one(ex, "MatMul", ins, vec![]),
        Op::Gemm {
            alpha,
            beta,
            trans_a,
            trans_b,
        } => one(
            ex,
            "Gemm",
            ins,
            vec![
                float("alpha", alpha.0),
                float("beta", beta.0),
                int("transA", *trans_a as i64),
                int("transB", *trans_b as i64),
            ],
        ),
        Op::Unary(u) => {
            let t = match u {
                UnaryOp::Relu => "Relu",
                UnaryOp::Sigmoid => "Sigmoid",
                UnaryOp::Tanh => "Tanh",
                UnaryOp::Exp => "Exp",
                UnaryOp::Log => "Log",
                UnaryOp::Sqrt => "Sqrt",
                UnaryOp::Neg => "Neg",
                UnaryOp::Reciprocal => "Reciprocal",
                UnaryOp::Erf => "Erf",
                UnaryOp::Abs => "Abs",
                UnaryOp::HardSwish => "HardSwish",
                UnaryOp::Identity => "Identity",
                UnaryOp::Sin => "Sin",
                UnaryOp::Cos => "Cos",
                UnaryOp::Gelu | UnaryOp::GeluTanh => {
                    let approx = if *u == UnaryOp::Gelu { "none" } else { "tanh" };
                    one(ex, "Gelu", ins, vec![string("approximate", approx)]);
                    return Ok(());
                }
                UnaryOp::Relu6 => {
                    let lo = ex.init_scalar(&format!("{base}__min"), DType::F32, 0.0);
                    let hi = ex.init_scalar(&format!("{base}__max"), DType::F32, 6.0);
                    ins.push(lo);
                    ins.push(hi);
                    one(ex, "Clip", ins, vec![]);
                    return Ok(());
                }
                UnaryOp::Silu => {
                    // x · sigmoid(x): opset 21 has no Swish.
                    let s = ex.unique(&format!("{base}__sigmoid"));
                    ex.node("Sigmoid", ins.clone(), vec![s.clone()], vec![]);
                    one(ex, "Mul", vec![ins[0].clone(), s], vec![]);
                    return Ok(());
                }
            };
            one(ex, t, ins, vec![]);
        }
        Op::Binary(b) => {
            let t = match b {
                BinaryOp::Add => "Add",
                BinaryOp::Sub => "Sub",
                BinaryOp::Mul => "Mul",
                BinaryOp::Div => "Div",
                BinaryOp::Pow => "Pow",
                BinaryOp::Max => "Max",
                BinaryOp::Min => "Min",
                BinaryOp::Fmod => {
                    one(ex, "Mod", ins, vec![int("fmod", 1)]);
                    return Ok(());
                }
                BinaryOp::Mod if in_ty[0].dtype == DType::I64 => {
                    one(ex, "Mod", ins, vec![int("fmod", 0)]);
                    return Ok(());
                }
                BinaryOp::Mod => {
                    // ONNX allows only fmod=1 on floats: the truncated
                    // remainder, moved by one `b` where it is non-zero and
                    // its sign differs from b's (exact, as the interpreter).
                    let u = |ex: &mut Exporter, s: &str| ex.unique(&format!("{base}__{s}"));
                    let r = u(ex, "fmod");
                    ex.node("Mod", ins.clone(), vec![r.clone()], vec![int("fmod", 1)]);
                    let zero = ex.init_scalar(&format!("{base}__zero"), DType::F32, 0.0);
                    let (rneg, bneg, diff, rz, nz, fix, moved) = (
                        u(ex, "rneg"),
                        u(ex, "bneg"),
                        u(ex, "diff"),
                        u(ex, "rzero"),
                        u(ex, "nonzero"),
                        u(ex, "fix"),
                        u(ex, "moved"),
                    );
                    ex.node(
                        "Less",
                        vec![r.clone(), zero.clone()],
                        vec![rneg.clone()],
                        vec![],
                    );
                    ex.node(
                        "Less",
                        vec![ins[1].clone(), zero.clone()],
                        vec![bneg.clone()],
                        vec![],
                    );
                    ex.node("Xor", vec![rneg, bneg], vec![diff.clone()], vec![]);
                    ex.node("Equal", vec![r.clone(), zero], vec![rz.clone()], vec![]);
                    ex.node("Not", vec![rz], vec![nz.clone()], vec![]);
                    ex.node("And", vec![nz, diff], vec![fix.clone()], vec![]);
                    ex.node(
                        "Add",
                        vec![r.clone(), ins[1].clone()],
                        vec![moved.clone()],
                        vec![],
                    );
                    one(ex, "Where", vec![fix, moved, r], vec![]);
                    return Ok(());
                }
            };
            one(ex, t, ins, vec![]);
        }
        Op::Clip { min, max } => {
            let lo = ex.init_scalar(&format!("{base}__min"), DType::F32, min.0);
            let hi = ex.init_scalar(&format!("{base}__max"), DType::F32, max.0);
            ins.push(lo);
            ins.push(hi);
            one(ex, "Clip", ins, vec![]);
        }
        Op::HardSigmoid { alpha, beta } => one(
            ex,
            "HardSigmoid",
            ins,
            vec![float("alpha", alpha.0), float("beta", beta.0)],
        ),
        Op::Softmax { axis } => one(ex, "Softmax", ins, vec![int("axis", *axis as i64)]),
        Op::LayerNorm { axis, eps } => one(
            ex,
            "LayerNormalization",
            ins,
            vec![int("axis", *axis as i64), float("epsilon", eps.0)],
        ),
        Op::GroupNorm { groups, eps } => one(
            ex,
            "GroupNormalization",
            ins,
            vec![int("num_groups", *groups as i64), float("epsilon", eps.0)],
        ),
        Op::BatchNorm { eps } => one(ex, "BatchNormalization", ins, vec![float("epsilon", eps.0)]),
        Op::Reduce {
            kind,
            axes,
            keepdims,
        } => {
            let t = match kind {
                ReduceKind::Mean => "ReduceMean",
                ReduceKind::Sum => "ReduceSum",
                ReduceKind::Max => "ReduceMax",
            };
            let a = ex.init_i64(&format!("{base}__axes"), &us(axes));
            ins.push(a);
            one(ex, t, ins, vec![int("keepdims", *keepdims as i64)]);
        }
        Op::GlobalAvgPool => one(ex, "GlobalAveragePool", ins, vec![]),
        Op::Pool2d {
            kind,
            kernel,
            stride,
            pad,
            count_include_pad,
        } => {
            let mut attrs = vec![
                ints("kernel_shape", us(kernel)),
                ints("strides", us(stride)),
                ints("pads", us(pad)),
            ];
            let t = match kind {
                PoolKind::Max => "MaxPool",
                PoolKind::Avg => {
                    attrs.push(int("count_include_pad", *count_include_pad as i64));
                    "AveragePool"
                }
            };
            one(ex, t, ins, attrs);
        }
        Op::Reshape { shape } => {
            let s = ex.init_i64(&format!("{base}__shape"), &us(shape));
            ins.push(s);
            // kiln shapes are explicit: a 0 is a real empty dim, not "copy".
            one(ex, "Reshape", ins, vec![int("allowzero", 1)]);
        }
        Op::Transpose { perm } => one(ex, "Transpose", ins, vec![ints("perm", us(perm))]),
        Op::Concat { axis } => one(ex, "Concat", ins, vec![int("axis", *axis as i64)]),
        Op::Slice {
            axes,
            starts,
            ends,
            steps,
        } => {
            // kiln's indices are absolute; ONNX reads negatives from the
            // end, so write the clamped bounds, with kiln's "-1 = through
            // index 0" as ONNX's "before the start".
            let x = &in_ty[0].shape;
            let (mut s, mut e) = (Vec::new(), Vec::new());
            for i in 0..axes.len() {
                let (b, en, _) = slice_bounds(x[axes[i]], starts[i], ends[i], steps[i]);
                s.push(b);
                e.push(if en < 0 { i64::MIN } else { en });
            }
            let si = ex.init_i64(&format!("{base}__starts"), &s);
            let ei = ex.init_i64(&format!("{base}__ends"), &e);
            let ai = ex.init_i64(&format!("{base}__axes"), &us(axes));
            let st = ex.init_i64(&format!("{base}__steps"), steps);
            ins.extend([si, ei, ai, st]);
            one(ex, "Slice", ins, vec![]);
        }
        Op::Split { axis, sizes } => {
            let s = ex.init_i64(&format!("{base}__split"), &us(sizes));
            ins.push(s);
            one(ex, "Split", ins, vec![int("axis", *axis as i64)]);
        }
        Op::Squeeze { axes } | Op::Unsqueeze { axes } => {
            let a = ex.init_i64(&format!("{base}__axes"), &us(axes));
            ins.push(a);
            let t = if matches!(op, Op::Squeeze { .. }) {
                "Squeeze"
            } else {
                "Unsqueeze"
            };
            one(ex, t, ins, vec![]);
        }
        Op::Flatten { axis } => one(ex, "Flatten", ins, vec![int("axis", *axis as i64)]),
        Op::Pad { pads, mode, value } => {
            let p = ex.init_i64(&format!("{base}__pads"), &us(pads));
            ins.push(p);
            let m = match mode {
                PadMode::Constant => {
                    let v = ex.init_scalar(&format!("{base}__value"), in_ty[0].dtype, value.0);
                    ins.push(v);
                    "constant"
                }
                PadMode::Reflect => "reflect",
                PadMode::Edge => "edge",
            };
            one(ex, "Pad", ins, vec![string("mode", m)]);
        }
        Op::Expand { shape } => {
            let s = ex.init_i64(&format!("{base}__shape"), &us(shape));
            ins.push(s);
            one(ex, "Expand", ins, vec![]);
        }
        Op::Gather {
            axis,
            indices,
            indices_shape,
        } => {
            let t = Tensor::from_i64(indices_shape.clone(), indices.clone())?;
            let i = ex.init(&format!("{base}__indices"), &t);
            ins.push(i);
            one(ex, "Gather", ins, vec![int("axis", *axis as i64)]);
        }
        Op::Cast { to } => one(ex, "Cast", ins, vec![int("to", onnx_dtype(*to) as i64)]),
        Op::Resize {
            mode,
            nearest,
            coord,
            size,
            scale,
        } => {
            // Resize-19 over axes 2 and 3: the given scales, or the sizes.
            ins.push(String::new());
            match scale {
                Some([h, w]) => {
                    let t = Tensor::from_f32([2], vec![h.0, w.0]).expect("two scales");
                    let s = ex.init(&format!("{base}__scales"), &t);
                    ins.push(s);
                }
                None => {
                    ins.push(String::new());
                    let s = ex.init_i64(&format!("{base}__sizes"), &us(size));
                    ins.push(s);
                }
            }
            let mut attrs = vec![
                ints("axes", [2, 3]),
                string("mode", mode.name()),
                string("coordinate_transformation_mode", coord.name()),
            ];
            if *mode == kiln_ir::ResizeMode::Nearest {
                attrs.push(string("nearest_mode", nearest.name()));
            }
            one(ex, "Resize", ins, attrs);
        }
        // export_bytes lowers fused ops first; reaching one is a caller bug
        Op::Fused(f) => {
            return Err(FrontendError::Onnx(format!(
                "{} is a fused op: lower it (kiln_ir::fused::lower_fused) before export",
                f.name()
            )));
        }
    }
    Ok(())
}
