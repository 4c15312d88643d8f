//! ONNX import and export.
//!
//! Import turns an `.onnx` file (default-domain opsets 11–21) into a graph
//! of kiln's primitive ops with static shapes. Everything that depends only
//! on constants and static shapes — the `Shape → Gather → Unsqueeze →
//! Concat → Reshape` scaffolding of a PyTorch export, `Constant` nodes,
//! casts and masks on constants — is evaluated during import, so the graph
//! holds only the computation the model means; [`ImportReport`] says how
//! many nodes that removed. Export writes a kiln model back as a
//! self-contained ONNX model (opset [`EXPORT_OPSET`]) that other runtimes
//! run with the same weights.
//!
//! Module map: [`proto`] (generated protobuf types), `import` (the driver:
//! checks, order, assembly), `lower` (one translation per operator),
//! `spelled` (CumSum, Einsum and a mixed constant Where spelled with
//! primitive ops),
//! `fold` and `consts` (import-time evaluation), `external` (tensors kept
//! in side files, memory-mapped), `export`.

mod consts;
mod export;
mod external;
mod fold;
mod import;
mod lower;
pub mod proto;
mod spelled;

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use kiln_ir::{Model, Tensor};

use crate::FrontendError;

pub use export::{EXPORT_OPSET, export, export_bytes};
pub use import::OPSETS;

/// Options for importing an ONNX file.
#[derive(Clone, Debug, Default)]
pub struct ImportOptions {
    /// concrete shapes for inputs with symbolic dims, by input name (the
    /// CLI's `--input-shape NAME=D0,D1,...`); every static dim given must
    /// equal the declared one
    pub input_shapes: Vec<(String, Vec<usize>)>,
}

/// Something in an ONNX model that kiln cannot import. An unsupported
/// model is reported with every such thing at once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Unsupported {
    /// An operator kiln has no translation for — or not for this use of it
    /// (`note` says which use, e.g. "on runtime data").
    Op {
        /// the ONNX op type (`domain::Op` outside the default domain)
        op_type: String,
        /// the node, as `node 'name' (Op)`
        node: String,
        /// why this use is unsupported, when the op itself is known
        note: Option<String>,
    },
    /// An element type kiln has no room for where it is needed (kiln's
    /// runtime values are `f32` or `i64`).
    DType {
        /// the ONNX type name, e.g. `DOUBLE`
        dtype: String,
        /// the value or input concerned
        value: String,
    },
    /// A default-domain opset outside [`OPSETS`].
    Opset {
        /// the model's opset version
        version: i64,
    },
}

impl fmt::Display for Unsupported {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unsupported::Op {
                op_type,
                node,
                note,
            } => {
                write!(f, "operator {op_type} at {node}")?;
                if let Some(n) = note {
                    write!(f, " ({n})")?;
                }
                Ok(())
            }
            Unsupported::DType { dtype, value } => {
                write!(f, "element type {dtype} of {value}")
            }
            Unsupported::Opset { version } => write!(
                f,
                "opset {version} (kiln imports opsets {}–{})",
                OPSETS.start(),
                OPSETS.end()
            ),
        }
    }
}

/// The text of [`FrontendError::OnnxUnsupported`], on one line: each
/// unsupported operator once (same op type and reason), with how many nodes
/// use it and the first of them, then the other items, `; `-separated.
pub fn describe_unsupported(items: &[Unsupported]) -> String {
    // (item, node count) in order of first appearance.
    let mut groups: Vec<(&Unsupported, usize)> = Vec::new();
    for it in items {
        let same = |g: &&mut (&Unsupported, usize)| match (g.0, it) {
            (
                Unsupported::Op {
                    op_type: a,
                    note: na,
                    ..
                },
                Unsupported::Op {
                    op_type: b,
                    note: nb,
                    ..
                },
            ) => a == b && na == nb,
            (a, b) => a == b,
        };
        match groups.iter_mut().find(same) {
            Some(g) => g.1 += 1,
            None => groups.push((it, 1)),
        }
    }
    let parts: Vec<String> = groups
        .iter()
        .map(|&(it, n)| match it {
            Unsupported::Op {
                op_type,
                node,
                note,
            } if n > 1 => {
                let why = note.as_ref().map(|n| format!(", {n}")).unwrap_or_default();
                format!("operator {op_type} ({n} nodes, first {node}{why})")
            }
            _ => it.to_string(),
        })
        .collect();
    format!("kiln cannot import: {}", parts.join("; "))
}

/// What an import did: the ONNX graph's size before and the kiln graph's
/// after static shape resolution and constant folding. `kiln info` prints it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImportReport {
    /// the default-domain opset of the model
    pub opset: i64,
    /// producer name and version, as the file records them
    pub producer: String,
    /// nodes in the ONNX graph
    pub nodes_before: usize,
    /// computing nodes in the kiln graph (inputs and weights excluded)
    pub nodes_after: usize,
    /// ONNX nodes evaluated at import time (all their outputs constant)
    pub folded: usize,
    /// weights in the imported model
    pub weights: usize,
    /// ONNX op type → count, before
    pub ops_before: BTreeMap<String, usize>,
    /// kiln op name → count, after
    pub ops_after: BTreeMap<String, usize>,
    /// what the import chose where the file left it open (a symbolic batch
    /// dimension pinned to 1), one sentence each; the CLI prints them on
    /// stderr as notes
    pub notes: Vec<String>,
}

impl fmt::Display for ImportReport {
    /// `onnx opset 17 (pytorch 2.5): 2013 nodes -> 312 kiln ops (1650 folded), 96 weights`
    /// followed by the kiln op histogram.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "onnx opset {}", self.opset)?;
        if !self.producer.is_empty() {
            write!(f, " ({})", self.producer)?;
        }
        write!(
            f,
            ": {} nodes -> {} kiln ops ({} folded), {} weights",
            self.nodes_before, self.nodes_after, self.folded, self.weights
        )?;
        for (op, n) in &self.ops_after {
            write!(f, "\n  {op:<16} {n}")?;
        }
        Ok(())
    }
}

/// Imports an `.onnx` file into a primitive-op model.
pub fn import(path: &Path, opts: &ImportOptions) -> Result<Model, FrontendError> {
    import_with_report(path, opts).map(|(m, _)| m)
}

/// Imports an `.onnx` file and reports what the import folded.
pub fn import_with_report(
    path: &Path,
    opts: &ImportOptions,
) -> Result<(Model, ImportReport), FrontendError> {
    let bytes = std::fs::read(path).map_err(|e| FrontendError::io(path, e))?;
    let model = import::decode(&bytes)?;
    import::import_model(&model, opts, Some(&external::ExternalData::beside(path)))
}

/// Imports a serialised ONNX model held in memory. Tensors stored as
/// external data are an error here: their locations are relative to a
/// model file ([`import`] reads them).
pub fn import_bytes(
    bytes: &[u8],
    opts: &ImportOptions,
) -> Result<(Model, ImportReport), FrontendError> {
    import::import_bytes(bytes, opts)
}

/// Imports an already decoded model (tests and tools build these by hand).
pub fn import_proto(
    model: &proto::ModelProto,
    opts: &ImportOptions,
) -> Result<(Model, ImportReport), FrontendError> {
    import::import_model(model, opts, None)
}

/// A tensor proto as a kiln tensor: every float type becomes `f32`, every
/// integer type and `bool` become `i64` (0/1). For reading test data and
/// tool inputs; the importer itself keeps `bool` apart.
pub fn tensor_from_proto(t: &proto::TensorProto) -> Result<Tensor, FrontendError> {
    let c = consts::from_proto(t).map_err(|e| match e {
        consts::TensorError::Bad(m) => FrontendError::Onnx(m),
        consts::TensorError::DType(d) => FrontendError::OnnxUnsupported(vec![Unsupported::DType {
            dtype: d,
            value: format!("tensor '{}'", t.name.as_deref().unwrap_or("")),
        }]),
    })?;
    let c = if c.kind() == consts::Kind::Bool {
        c.cast(consts::Kind::I64)
    } else {
        c
    };
    c.to_tensor()
        .ok_or_else(|| FrontendError::Onnx("tensor has no kiln type".into()))
}

/// A kiln tensor as a tensor proto named `name` (raw little-endian data).
pub fn tensor_to_proto(name: &str, t: &Tensor) -> proto::TensorProto {
    export::tensor_proto(name, t)
}
