//! kiln-ir: the dataflow graph IR every part of kiln speaks.
//!
//! - [`types`]: static tensor types; [`tensor`]: values and the weight store;
//! - [`op`]: the op set; [`shape`]: shape inference per op;
//! - [`graph`]: the petgraph-based graph; [`verify`]: its checker;
//! - [`text`]: the `.kir` text format (printer and parser);
//! - [`interp`]: the reference interpreter, the oracle for every backend;
//! - [`stats`]: parameter and MAC counts.
//!
//! Nothing here knows about egg or Cranelift (see docs/ARCHITECTURE.md).

pub mod error;
pub mod graph;
pub mod op;
pub mod shape;
pub mod stats;
pub mod tensor;
pub mod types;
pub mod verify;

pub use error::IrError;
pub use graph::{Edge, Graph, Node, NodeId, Value, ValueInfo};
pub use op::{Attr, BinaryOp, Float, Op, PadMode, PoolKind, ReduceKind, UnaryOp};
pub use tensor::{Tensor, TensorData, WeightStore};
pub use types::{DType, TensorType};
pub use verify::{verify, verify_weights};
