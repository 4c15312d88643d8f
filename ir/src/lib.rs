//! kiln-ir: the dataflow graph IR every part of kiln speaks.
//!
//! - [`types`]: static tensor types; [`tensor`]: values and the weight store;
//! - [`op`]: the op set; [`fused`]: the fused kernel-level ops the optimiser creates;
//!   [`shape`]: shape inference per op;
//! - [`graph`]: the petgraph-based graph; [`verify`](mod@verify): its checker;
//! - [`text`]: the `.kir` text format (printer and parser);
//! - [`interp`]: the reference interpreter, the oracle for every backend;
//! - [`batch`]: whether a graph computes its images independently, and
//!   the same graph for fewer images;
//! - [`stats`]: parameter and MAC counts; [`limits`]: resource limits;
//! - [`skip`](mod@skip): how tests that cannot run on this host report it.
//!
//! Nothing here knows about egg or Cranelift (see docs/ARCHITECTURE.md).

pub mod batch;
pub mod error;
pub mod fused;
pub mod graph;
pub mod interp;
pub mod limits;
pub mod op;
pub mod shape;
pub mod skip;
pub mod stats;
pub mod tensor;
pub mod text;
pub mod types;
pub mod verify;

pub use error::IrError;
pub use fused::{Act, ConvStage, FusedOp};
pub use graph::{Edge, Graph, Node, NodeId, Value, ValueInfo};
pub use limits::Limits;
pub use op::{
    Attr, BinaryOp, CoordMode, Float, NearestMode, Op, PadMode, PoolKind, ReduceKind, ResizeMode,
    UnaryOp,
};
pub use tensor::{Tensor, TensorData, WeightStore};
pub use types::{DType, TensorType};
pub use verify::{verify, verify_weights};

/// A graph together with the values of its weights: what frontends produce
/// and what the interpreter and backends consume.
#[derive(Clone, Debug)]
pub struct Model {
    /// the dataflow graph
    pub graph: Graph,
    /// values for the graph's declared weights
    pub weights: WeightStore,
}
