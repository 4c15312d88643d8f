//! The import driver: decodes a model, checks it (opset, operators, inputs,
//! order), walks its nodes in topological order handing each to
//! [`super::lower`], and assembles the kiln graph and its weights.
//!
//! Every ONNX value becomes a [`Val`]: either a constant (initialisers,
//! `Constant` nodes and anything computed only from them and from static
//! shapes) or a runtime kiln value. Because every kiln shape is static,
//! `Shape` of anything is a constant, so the whole shape-arithmetic
//! scaffolding of an export folds away while it is imported.

use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;

use kiln_ir::{DType, Graph, IrError, Model, Op, TensorType, Value, WeightStore};
use prost::Message;

use super::consts::{self, Const, Kind, TensorError};
use super::external::ExternalData;
use super::lower;
use super::proto::{self, GraphProto, ModelProto, NodeProto, type_proto};
use super::{ImportOptions, ImportReport, Unsupported};
use crate::FrontendError;

/// The opsets of the default domain the importer understands.
pub const OPSETS: std::ops::RangeInclusive<i64> = 11..=21;

/// An ONNX value during import.
#[derive(Clone, Debug)]
pub(crate) enum Val {
    /// known now
    Const(Rc<Const>),
    /// computed at run time by the kiln graph
    Dyn(Value),
}

/// What can go wrong while lowering one node; the driver adds the node.
#[derive(Debug)]
pub(crate) enum E {
    /// the model is wrong (or kiln cannot express this use of a known op)
    Msg(String),
    /// a feature kiln does not support
    Unsupported(Unsupported),
}

impl From<String> for E {
    fn from(s: String) -> E {
        E::Msg(s)
    }
}

impl From<&str> for E {
    fn from(s: &str) -> E {
        E::Msg(s.to_string())
    }
}

/// Result of lowering code.
pub(crate) type R<T> = Result<T, E>;

/// The importer's state while it walks one graph.
pub(crate) struct Importer {
    /// version of the default-domain opset
    pub opset: i64,
    pub g: Graph,
    pub weights: WeightStore,
    /// weight nodes already made for constants, by weight name
    materialised: HashMap<String, Value>,
}

/// One node being lowered: its proto, its operands and how to name it.
pub(crate) struct NodeCtx<'a> {
    pub node: &'a NodeProto,
    pub ins: Vec<Option<Val>>,
}

impl NodeCtx<'_> {
    pub fn op_type(&self) -> &str {
        self.node.op_type.as_deref().unwrap_or("")
    }

    /// The name of output `i` (for naming kiln values).
    pub fn out_name(&self, i: usize) -> String {
        self.node
            .output
            .get(i)
            .filter(|s| !s.is_empty())
            .cloned()
            .unwrap_or_else(|| format!("{}_out{i}", self.node.name.as_deref().unwrap_or("node")))
    }

    /// The ONNX name of input `i` (for naming weights).
    pub fn in_name(&self, i: usize) -> String {
        self.node
            .input
            .get(i)
            .cloned()
            .unwrap_or_else(|| format!("{}_in{i}", self.out_name(0)))
    }

    /// Number of outputs the node declares.
    pub fn num_outputs(&self) -> usize {
        self.node.output.len()
    }

    /// Whether output `i` is declared (and so may be used).
    pub fn has_output(&self, i: usize) -> bool {
        self.node.output.get(i).is_some_and(|s| !s.is_empty())
    }

    /// Operand `i`, if given.
    pub fn input(&self, i: usize) -> Option<&Val> {
        self.ins.get(i).and_then(|v| v.as_ref())
    }

    /// Operand `i`, which the op requires.
    pub fn req(&self, i: usize) -> R<&Val> {
        self.input(i)
            .ok_or_else(|| E::Msg(format!("required input {i} is missing")))
    }

    /// Operand `i` when it must be a constant (shape vectors, axes, indices).
    pub fn req_const(&self, i: usize, what: &str) -> R<Rc<Const>> {
        match self.req(i)? {
            Val::Const(c) => Ok(c.clone()),
            // kiln's shapes and attributes are static: a value computed at
            // run time cannot feed them.
            Val::Dyn(_) => Err(E::Unsupported(Unsupported::Op {
                op_type: self.op_type().to_string(),
                node: String::new(),
                note: Some(format!(
                    "input {i} ({what}) is computed at run time; kiln needs it constant"
                )),
            })),
        }
    }

    /// Optional operand `i` when it must be constant.
    pub fn opt_const(&self, i: usize, what: &str) -> R<Option<Rc<Const>>> {
        match self.input(i) {
            None => Ok(None),
            Some(_) => self.req_const(i, what).map(Some),
        }
    }

    fn attr(&self, name: &str) -> Option<&proto::AttributeProto> {
        self.node
            .attribute
            .iter()
            .find(|a| a.name.as_deref() == Some(name))
    }

    pub fn has_attr(&self, name: &str) -> bool {
        self.attr(name).is_some()
    }

    pub fn attr_i(&self, name: &str, default: i64) -> R<i64> {
        match self.attr(name) {
            None => Ok(default),
            Some(a) => {
                a.i.ok_or_else(|| E::Msg(format!("attribute `{name}` must be an integer")))
            }
        }
    }

    pub fn attr_f(&self, name: &str, default: f32) -> R<f32> {
        match self.attr(name) {
            None => Ok(default),
            Some(a) => {
                a.f.or(a.i.map(|i| i as f32))
                    .ok_or_else(|| E::Msg(format!("attribute `{name}` must be a float")))
            }
        }
    }

    pub fn attr_ints(&self, name: &str) -> Option<Vec<i64>> {
        self.attr(name).map(|a| a.ints.clone())
    }

    pub fn attr_floats(&self, name: &str) -> Option<Vec<f32>> {
        self.attr(name).map(|a| a.floats.clone())
    }

    pub fn attr_s(&self, name: &str, default: &str) -> R<String> {
        match self.attr(name) {
            None => Ok(default.to_string()),
            Some(a) => {
                let s =
                    a.s.as_ref()
                        .ok_or_else(|| E::Msg(format!("attribute `{name}` must be a string")))?;
                Ok(String::from_utf8_lossy(s).into_owned())
            }
        }
    }

    pub fn attr_t(&self, name: &str) -> R<Option<Const>> {
        match self.attr(name).and_then(|a| a.t.as_ref()) {
            None => Ok(None),
            Some(t) => match consts::from_proto(t) {
                Ok(c) => Ok(Some(c)),
                Err(TensorError::Bad(m)) => Err(E::Msg(m)),
                Err(TensorError::DType(d)) => Err(E::Unsupported(Unsupported::DType {
                    dtype: d,
                    value: format!("attribute `{name}`"),
                })),
            },
        }
    }
}

/// Renders an IR error from graph building as a plain message (the node
/// context is added by the driver).
fn ir_msg(e: IrError) -> E {
    match e {
        IrError::Node { msg, .. } => E::Msg(msg),
        other => E::Msg(other.to_string()),
    }
}

impl Importer {
    /// The shape of a value.
    pub fn shape(&self, v: &Val) -> Vec<usize> {
        match v {
            Val::Const(c) => c.shape.clone(),
            Val::Dyn(x) => self.g.value_type(*x).shape.clone(),
        }
    }

    /// The element kind of a value.
    pub fn kind(&self, v: &Val) -> Kind {
        match v {
            Val::Const(c) => c.kind(),
            Val::Dyn(x) => match self.g.value_type(*x).dtype {
                DType::F32 => Kind::F32,
                DType::I64 => Kind::I64,
            },
        }
    }

    /// A fresh kiln value name derived from `base` (ONNX names are kept
    /// where they are free; the text format quotes odd ones).
    fn fresh(&mut self, base: &str) -> String {
        if self.g.value_by_name(base).is_none() {
            return base.to_string();
        }
        let mut k = 1;
        loop {
            let name = format!("{base}#{k}");
            if self.g.value_by_name(&name).is_none() {
                return name;
            }
            k += 1;
        }
    }

    /// The value as a kiln value: a constant becomes a weight named `name`.
    pub fn materialise(&mut self, v: &Val, name: &str) -> R<Value> {
        match v {
            Val::Dyn(x) => Ok(*x),
            Val::Const(c) => {
                // The same constant used twice shares one weight.
                if let Some(&w) = self.materialised.get(name)
                    && self.weights.get(name).map(Const::from_tensor).as_ref() == Some(&**c)
                {
                    return Ok(w);
                }
                let t = c.to_tensor().ok_or_else(|| {
                    E::Unsupported(Unsupported::DType {
                        dtype: "BOOL".into(),
                        value: name.to_string(),
                    })
                })?;
                let mut wname = name.to_string();
                let mut k = 0;
                while self.g.weight_by_name(&wname).is_some() {
                    k += 1;
                    wname = format!("{name}#{k}");
                }
                let w = self.g.add_weight(wname.clone(), t.ty()).map_err(ir_msg)?;
                self.weights.insert(wname.clone(), t);
                self.materialised.insert(wname, w);
                Ok(w)
            }
        }
    }

    /// Applies a kiln op. When every operand is constant the op is
    /// evaluated now; otherwise constants become weights and the op is
    /// added to the graph. `name` names the result (and weights derive
    /// their names from the operands' `names`).
    pub fn apply(&mut self, op: Op, ins: &[(&Val, &str)], name: &str) -> R<Val> {
        let mut out = self.apply_multi(op, ins, &[name.to_string()])?;
        out.pop()
            .ok_or_else(|| E::Msg("op produced no value".into()))
    }

    /// [`Importer::apply`] for ops with several results.
    pub fn apply_multi(&mut self, op: Op, ins: &[(&Val, &str)], names: &[String]) -> R<Vec<Val>> {
        let consts: Option<Vec<Rc<Const>>> = ins
            .iter()
            .map(|(v, _)| match v {
                Val::Const(c) => Some(c.clone()),
                Val::Dyn(_) => None,
            })
            .collect();
        if let Some(cs) = consts {
            let refs: Vec<&Const> = cs.iter().map(|c| &**c).collect();
            if let Some(r) = super::fold::eval_kiln(&op, &refs) {
                return Ok(r?.into_iter().map(|c| Val::Const(Rc::new(c))).collect());
            }
        }
        let mut operands = Vec::with_capacity(ins.len());
        for (v, n) in ins {
            operands.push(self.materialise(v, n)?);
        }
        let k = op.num_outputs();
        let names: Vec<String> = (0..k)
            .map(|i| {
                let base = names
                    .get(i)
                    .cloned()
                    .unwrap_or_else(|| format!("{}.{i}", names.first().map_or("v", |s| s)));
                self.fresh(&base)
            })
            .collect();
        let vals = self.g.add_named(op, &operands, names).map_err(ir_msg)?;
        Ok(vals.into_iter().map(Val::Dyn).collect())
    }
}

/// The label of a node in messages: `node 'name' (OpType)`.
fn node_label(i: usize, n: &NodeProto) -> String {
    let op = n.op_type.as_deref().unwrap_or("?");
    match n.name.as_deref() {
        Some(name) if !name.is_empty() => format!("node '{name}' ({op})"),
        _ => match n.output.first() {
            Some(o) if !o.is_empty() => format!("node #{i} ({op}) -> '{o}'"),
            _ => format!("node #{i} ({op})"),
        },
    }
}

fn onnx_err(msg: impl Into<String>) -> FrontendError {
    FrontendError::Onnx(msg.into())
}

/// Decodes and imports a model held in memory.
pub(crate) fn import_bytes(
    bytes: &[u8],
    opts: &ImportOptions,
) -> Result<(Model, ImportReport), FrontendError> {
    import_model(&decode(bytes)?, opts, None)
}

/// Decodes a serialised model.
pub(crate) fn decode(bytes: &[u8]) -> Result<ModelProto, FrontendError> {
    ModelProto::decode(bytes).map_err(|e| {
        onnx_err(format!(
            "not a valid ONNX model (protobuf decoding failed: {e})"
        ))
    })
}

/// Imports a decoded model; `ext` resolves tensors kept in side files
/// (`None`: the model has no folder, external data is an error).
pub(crate) fn import_model(
    model: &ModelProto,
    opts: &ImportOptions,
    ext: Option<&ExternalData>,
) -> Result<(Model, ImportReport), FrontendError> {
    let graph = model
        .graph
        .as_ref()
        .ok_or_else(|| onnx_err("the model has no graph"))?;
    let opset = match default_opset(model)? {
        Some(v) => v,
        None => {
            // Only other domains: every node is unsupported, say which.
            check_operators(graph, 0)?;
            return Err(onnx_err(
                "the model imports no opset of the default ONNX domain",
            ));
        }
    };
    check_operators(graph, opset)?;

    let mut im = Importer {
        opset,
        g: Graph::new(
            graph
                .name
                .clone()
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "onnx".into()),
        ),
        weights: WeightStore::new(),
        materialised: HashMap::new(),
    };
    let mut vals: HashMap<String, Val> = HashMap::new();
    // Outputs that exist in ONNX but that kiln does not compute (training
    // statistics, dropout masks): using one is an error naming its producer.
    let mut unavailable: HashMap<String, String> = HashMap::new();
    // What the import chose for the user (a pinned batch), for stderr.
    let mut notes = Vec::new();

    for t in &graph.initializer {
        let name = t.name.clone().unwrap_or_default();
        let c = consts::from_proto_in(t, ext).map_err(|e| match e {
            TensorError::Bad(m) => onnx_err(format!("initialiser {m}")),
            TensorError::DType(d) => FrontendError::OnnxUnsupported(vec![Unsupported::DType {
                dtype: d,
                value: format!("initialiser '{name}'"),
            }]),
        })?;
        vals.insert(name, Val::Const(Rc::new(c)));
    }
    if !graph.sparse_initializer.is_empty() {
        return Err(onnx_err("sparse initialisers are not supported"));
    }
    let known: Vec<&str> = graph
        .input
        .iter()
        .filter_map(|i| i.name.as_deref())
        .collect();
    for (name, _) in &opts.input_shapes {
        if !known.contains(&name.as_str()) {
            return Err(onnx_err(format!(
                "a shape is given for '{name}' (--input-shape / ImportOptions::input_shapes), which is not a graph input (inputs: {})",
                known.join(", ")
            )));
        }
    }
    for input in &graph.input {
        let name = input.name.clone().unwrap_or_default();
        if vals.contains_key(&name) {
            // An input with an initialiser is a constant with a default
            // (IR < 4 style); kiln imports it as the constant.
            continue;
        }
        let ty = input_type(input, opts, &mut notes)?;
        let v = im.g.add_input(name.clone(), ty)?;
        vals.insert(name, Val::Dyn(v));
    }

    let order = topo_order(graph, &vals)?;
    let mut folded = 0;
    for &i in &order {
        let node = &graph.node[i];
        let label = node_label(i, node);
        let mut ins = Vec::with_capacity(node.input.len());
        for name in &node.input {
            if name.is_empty() {
                ins.push(None);
            } else if let Some(v) = vals.get(name) {
                ins.push(Some(v.clone()));
            } else if let Some(why) = unavailable.get(name) {
                return Err(onnx_err(format!("{label}: input '{name}' {why}")));
            } else {
                return Err(onnx_err(format!("{label}: input '{name}' is undefined")));
            }
        }
        let ctx = NodeCtx { node, ins };
        let outs = lower::lower(&mut im, &ctx).map_err(|e| match e {
            E::Msg(m) => onnx_err(format!("{label}: {m}")),
            E::Unsupported(Unsupported::Op { op_type, note, .. }) => {
                FrontendError::OnnxUnsupported(vec![Unsupported::Op {
                    op_type,
                    node: label.clone(),
                    note,
                }])
            }
            E::Unsupported(u) => FrontendError::OnnxUnsupported(vec![u]),
        })?;
        if !outs.is_empty() && outs.iter().all(|v| matches!(v, Val::Const(_))) {
            folded += 1;
        }
        for (k, name) in node.output.iter().enumerate() {
            if name.is_empty() {
                continue;
            }
            match outs.get(k) {
                Some(v) => {
                    vals.insert(name.clone(), v.clone());
                }
                None => {
                    unavailable.insert(
                        name.clone(),
                        format!(
                            "is output {k} of {label}, which kiln does not compute (inference only)"
                        ),
                    );
                }
            }
        }
    }

    // Declared shapes must agree with what kiln computed.
    let mut declared: Vec<&proto::ValueInfoProto> = graph.value_info.iter().collect();
    declared.extend(graph.output.iter());
    let producer: HashMap<&str, String> = order
        .iter()
        .flat_map(|&i| {
            let n = &graph.node[i];
            n.output.iter().map(move |o| (o.as_str(), node_label(i, n)))
        })
        .collect();
    for vi in declared {
        let name = vi.name.as_deref().unwrap_or("");
        let (Some(v), Some(dims)) = (vals.get(name), declared_dims(vi)) else {
            continue;
        };
        let got = im.shape(v);
        let clash = dims.len() != got.len()
            || dims
                .iter()
                .zip(&got)
                .any(|(d, g)| d.is_some_and(|d| d != *g));
        if clash {
            let at = producer
                .get(name)
                .map(|p| format!(" (produced by {p})"))
                .unwrap_or_default();
            let want: Vec<String> = dims
                .iter()
                .map(|d| d.map_or("?".to_string(), |d| d.to_string()))
                .collect();
            return Err(onnx_err(format!(
                "value '{name}'{at} is declared with shape [{}] but computes to {got:?}",
                want.join(",")
            )));
        }
    }

    let mut outputs = Vec::new();
    for o in &graph.output {
        let name = o.name.clone().unwrap_or_default();
        let v = match vals.get(&name) {
            Some(v) => v.clone(),
            None => {
                let why = unavailable
                    .get(&name)
                    .cloned()
                    .unwrap_or_else(|| "is not computed by any node".into());
                return Err(onnx_err(format!("graph output '{name}' {why}")));
            }
        };
        let x = im.materialise(&v, &name).map_err(|e| match e {
            E::Msg(m) => onnx_err(format!("graph output '{name}': {m}")),
            E::Unsupported(u) => FrontendError::OnnxUnsupported(vec![u]),
        })?;
        outputs.push(x);
    }
    if outputs.is_empty() {
        return Err(onnx_err("the graph has no outputs"));
    }
    im.g.set_outputs(outputs);
    im.g.remove_dead();
    let mut weights = WeightStore::new();
    for &w in im.g.weights() {
        let name = &im.g.value_info(Value::of(w)).name;
        if let Some(t) = im.weights.get(name) {
            weights.insert(name.clone(), t.clone());
        }
    }
    kiln_ir::verify(&im.g)?;
    kiln_ir::verify_weights(&im.g, &weights)?;

    let mut ops_before = BTreeMap::new();
    for n in &graph.node {
        *ops_before
            .entry(n.op_type.clone().unwrap_or_default())
            .or_insert(0) += 1;
    }
    let mut ops_after = BTreeMap::new();
    for id in im.g.node_ids() {
        let op = &im.g.node(id).op;
        if !op.is_leaf() {
            *ops_after.entry(op.name().to_string()).or_insert(0) += 1;
        }
    }
    let report = ImportReport {
        opset,
        producer: format!(
            "{} {}",
            model.producer_name.as_deref().unwrap_or(""),
            model.producer_version.as_deref().unwrap_or("")
        )
        .trim()
        .to_string(),
        nodes_before: graph.node.len(),
        nodes_after: im.g.op_count(),
        folded,
        weights: weights.len(),
        ops_before,
        ops_after,
        notes,
    };
    Ok((
        Model {
            graph: im.g,
            weights,
        },
        report,
    ))
}

/// The default-domain opset, which must be in [`OPSETS`]; `None` when the
/// model imports none.
fn default_opset(model: &ModelProto) -> Result<Option<i64>, FrontendError> {
    let Some(v) = model
        .opset_import
        .iter()
        .find(|o| matches!(o.domain.as_deref(), None | Some("") | Some("ai.onnx")))
        .map(|o| o.version.unwrap_or(0))
    else {
        return Ok(None);
    };
    if !OPSETS.contains(&v) {
        return Err(FrontendError::OnnxUnsupported(vec![Unsupported::Opset {
            version: v,
        }]));
    }
    Ok(Some(v))
}

/// Lists every operator of the graph that kiln cannot import, at once.
fn check_operators(graph: &GraphProto, opset: i64) -> Result<(), FrontendError> {
    let mut bad = Vec::new();
    for (i, n) in graph.node.iter().enumerate() {
        let op = n.op_type.as_deref().unwrap_or("");
        let domain = n.domain.as_deref().unwrap_or("");
        let known = matches!(domain, "" | "ai.onnx") && lower::is_supported(op, opset);
        if !known {
            let op_type = if matches!(domain, "" | "ai.onnx") {
                op.to_string()
            } else {
                format!("{domain}::{op}")
            };
            bad.push(Unsupported::Op {
                op_type,
                node: node_label(i, n),
                note: None,
            });
        }
    }
    if bad.is_empty() {
        Ok(())
    } else {
        Err(FrontendError::OnnxUnsupported(bad))
    }
}

/// Nodes in dependency order (stable: among ready nodes the earliest in the
/// file first). Errors on an undefined input, a value produced twice, or a
/// cycle.
fn topo_order(
    graph: &GraphProto,
    vals: &HashMap<String, Val>,
) -> Result<Vec<usize>, FrontendError> {
    let mut producer: HashMap<&str, usize> = HashMap::new();
    for (i, n) in graph.node.iter().enumerate() {
        for o in n.output.iter().filter(|o| !o.is_empty()) {
            if vals.contains_key(o.as_str()) {
                return Err(onnx_err(format!(
                    "{}: output '{o}' redefines a graph input or initialiser",
                    node_label(i, n)
                )));
            }
            if let Some(&j) = producer.get(o.as_str()) {
                return Err(onnx_err(format!(
                    "{}: output '{o}' is also produced by {}",
                    node_label(i, n),
                    node_label(j, &graph.node[j])
                )));
            }
            producer.insert(o, i);
        }
    }
    let n = graph.node.len();
    let mut deps: Vec<Vec<usize>> = vec![Vec::new(); n];
    let mut users: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (i, node) in graph.node.iter().enumerate() {
        for name in node.input.iter().filter(|s| !s.is_empty()) {
            match producer.get(name.as_str()) {
                Some(&j) => {
                    deps[i].push(j);
                    users[j].push(i);
                }
                None if vals.contains_key(name) => {}
                None => {
                    return Err(onnx_err(format!(
                        "{}: input '{name}' is not a graph input, an initialiser or the output of any node",
                        node_label(i, node)
                    )));
                }
            }
        }
    }
    let mut indeg: Vec<usize> = deps.iter().map(Vec::len).collect();
    let mut ready: std::collections::BinaryHeap<std::cmp::Reverse<usize>> = (0..n)
        .filter(|&i| indeg[i] == 0)
        .map(std::cmp::Reverse)
        .collect();
    let mut order = Vec::with_capacity(n);
    while let Some(std::cmp::Reverse(i)) = ready.pop() {
        order.push(i);
        for &u in &users[i] {
            indeg[u] -= 1;
            if indeg[u] == 0 {
                ready.push(std::cmp::Reverse(u));
            }
        }
    }
    if order.len() < n {
        let stuck = (0..n).find(|&i| indeg[i] > 0).unwrap_or(0);
        return Err(onnx_err(format!(
            "the graph has a cycle through {}",
            node_label(stuck, &graph.node[stuck])
        )));
    }
    Ok(order)
}

/// Declared dims of a value (`None` for a symbolic one), if it declares a shape.
fn declared_dims(vi: &proto::ValueInfoProto) -> Option<Vec<Option<usize>>> {
    let Some(type_proto::Value::TensorType(t)) = vi.r#type.as_ref()?.value.as_ref() else {
        return None;
    };
    let shape = t.shape.as_ref()?;
    Some(
        shape
            .dim
            .iter()
            .map(|d| match d.value {
                Some(proto::tensor_shape_proto::dimension::Value::DimValue(v)) => {
                    usize::try_from(v).ok()
                }
                _ => None,
            })
            .collect(),
    )
}

/// The static type of a graph input: its element type must be float or
/// int64; symbolic dims come from `opts` or, for the batch axis, default 1
/// (which adds a note saying so).
fn input_type(
    vi: &proto::ValueInfoProto,
    opts: &ImportOptions,
    notes: &mut Vec<String>,
) -> Result<TensorType, FrontendError> {
    let name = vi.name.as_deref().unwrap_or("");
    let Some(type_proto::Value::TensorType(t)) = vi.r#type.as_ref().and_then(|t| t.value.as_ref())
    else {
        return Err(FrontendError::OnnxUnsupported(vec![Unsupported::DType {
            dtype: "non-tensor (sequence, map or optional)".into(),
            value: format!("graph input '{name}'"),
        }]));
    };
    let elem = t.elem_type.unwrap_or(0);
    let dtype = match proto::tensor_proto::DataType::try_from(elem) {
        Ok(proto::tensor_proto::DataType::Float) => DType::F32,
        Ok(proto::tensor_proto::DataType::Int64) => DType::I64,
        other => {
            return Err(FrontendError::OnnxUnsupported(vec![Unsupported::DType {
                dtype: other.map_or_else(|_| format!("#{elem}"), |d| d.as_str_name().to_string()),
                value: format!("graph input '{name}'"),
            }]));
        }
    };
    let given = opts
        .input_shapes
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, s)| s.clone());
    let dims = t.shape.as_ref().map(|s| {
        s.dim
            .iter()
            .map(|d| match &d.value {
                Some(proto::tensor_shape_proto::dimension::Value::DimValue(v)) => Ok(*v),
                Some(proto::tensor_shape_proto::dimension::Value::DimParam(p)) => Err(p.clone()),
                None => Err("?".to_string()),
            })
            .collect::<Vec<_>>()
    });
    if let Some(shape) = given {
        if let Some(dims) = &dims {
            let fits = dims.len() == shape.len()
                && dims
                    .iter()
                    .zip(&shape)
                    .all(|(d, &s)| d.as_ref().map_or(true, |&d| d == s as i64));
            if !fits {
                return Err(onnx_err(format!(
                    "the shape {} given for input '{name}' (--input-shape / ImportOptions::input_shapes) does not fit its declared shape {}",
                    show_dims(&shape.iter().map(|&d| Ok(d as i64)).collect::<Vec<_>>()),
                    show_dims(dims)
                )));
            }
        }
        return Ok(TensorType::new(dtype, shape));
    }
    let Some(dims) = dims else {
        return Err(onnx_err(format!(
            "graph input '{name}' declares no shape; give one with --input-shape {name}=D0,D1,... \
             (ImportOptions::input_shapes in the library)"
        )));
    };
    let mut shape = Vec::with_capacity(dims.len());
    for (axis, d) in dims.iter().enumerate() {
        match d {
            Ok(v) if *v >= 0 => shape.push(*v as usize),
            Ok(v) => {
                return Err(onnx_err(format!(
                    "graph input '{name}' has a negative dimension {v}"
                )));
            }
            // The batch axis of a vision model: one image unless told otherwise.
            Err(p) if axis == 0 => {
                shape.push(1);
                notes.push(format!(
                    "input '{name}' has a symbolic batch dimension '{p}': compiled for batch 1 \
                     (another size: --input-shape {name}={})",
                    suggest(&dims, "N")
                ));
            }
            Err(p) => {
                return Err(onnx_err(format!(
                    "graph input '{name}' has a symbolic dimension '{p}' at axis {axis} ({}); \
                     kiln needs static shapes: give its size with --input-shape {name}={} \
                     (ImportOptions::input_shapes in the library)",
                    show_dims(&dims),
                    suggest(&dims, "1")
                )));
            }
        }
    }
    Ok(TensorType::new(dtype, shape))
}

/// A `--input-shape` value for `dims`: the static dims as they are, a
/// symbolic batch axis as `batch`, every other symbolic dim as its name in
/// capitals (`1,3,H,W`), for the user to replace.
fn suggest(dims: &[Result<i64, String>], batch: &str) -> String {
    let parts: Vec<String> = dims
        .iter()
        .enumerate()
        .map(|(axis, d)| match d {
            Ok(v) => v.to_string(),
            Err(_) if axis == 0 => batch.to_string(),
            Err(p) if p.is_empty() || p == "?" => format!("D{axis}"),
            Err(p) => p.to_uppercase(),
        })
        .collect();
    parts.join(",")
}

fn show_dims(dims: &[Result<i64, String>]) -> String {
    let parts: Vec<String> = dims
        .iter()
        .map(|d| match d {
            Ok(v) => v.to_string(),
            Err(p) => p.clone(),
        })
        .collect();
    format!("[{}]", parts.join(","))
}
