//! kiln-backends: Cranelift code generation for kiln graphs, and its runtime.
//!
//! [`compile`] turns a [`kiln_ir::Model`] into a [`CompiledModel`]: one
//! Cranelift function per kernel, specialised on the graph's static shapes
//! (constant loop bounds and strides, weight addresses baked in), run in
//! order over one arena whose layout a liveness-based memory plan chose.
//!
//! - `codegen`: the emitter and the inlined math
//!   (polynomial `exp`, `log`, `tanh`, `erf`, `sigmoid`);
//! - `kernels`: lowering, one module per op family, around a register-tiled
//!   GEMM micro-kernel for convolutions and matrix products (Cranelift
//!   f32x4 4×8 on every target; 14×32 zmm tiles assembled with iced-x86 on
//!   hosts with AVX-512);
//! - `fold`: compile-time evaluation of nodes whose operands are constant;
//! - `plan`: the memory plan; `runtime`: arenas, constants, worker pool;
//! - `compiled`: the driver, [`CompiledModel`], and [`emit_clif`];
//! - `scalarize`: vectors rewritten into scalars for ISAs without 128-bit
//!   SIMD (riscv64 without V).
//!
//! docs/backend.md describes the design, its invariants (results never
//! depend on the thread count) and what was measured to choose it.
//!
//! Scope: every primitive op of `kiln_ir::Op` on `f32` tensors in NCHW
//! layout. `i64` computations (shape arithmetic, which the ONNX importer
//! folds into constants) are a compile error naming the node. Blocked
//! layouts and fused ops come later.
//!
//! [`aot`] compiles the same kernels into a relocatable object file with a
//! C entry point and header (docs/aot.md).
//!
//! ```
//! use kiln_backends::{CompileOptions, compile};
//! use kiln_ir::{Graph, Model, Op, Tensor, TensorType, UnaryOp, WeightStore};
//!
//! let mut g = Graph::new("tiny");
//! let x = g.add_input("x", TensorType::f32([2, 3])).unwrap();
//! let y = g.add(Op::Unary(UnaryOp::Relu), &[x]).unwrap();
//! g.set_outputs(vec![y]);
//! let model = Model { graph: g, weights: WeightStore::new() };
//! let jit = compile(&model, &CompileOptions::default()).unwrap();
//! let x = Tensor::from_f32([2, 3], vec![-1.0, 2.0, -3.0, 4.0, -5.0, 6.0]).unwrap();
//! let out = jit.run(&[x]).unwrap();
//! assert_eq!(out[0].as_f32().unwrap(), &[0.0, 2.0, 0.0, 4.0, 0.0, 6.0]);
//! ```

pub mod aot;
mod codegen;
mod compiled;
mod error;
mod fold;
mod header;
mod kernels;
mod plan;
mod runtime;
mod scalarize;
mod target;
mod ukernels;

pub use compiled::{
    CompileOptions, CompileStats, CompiledModel, Elems, ElemsMut, GemmTile, KernelTime, NodeWork,
    OptLevel, TensorMut, TensorRef, compile, emit_clif, kernel_graph, kernel_plan,
};
pub use error::BackendError;
pub use target::TileLevel;
pub use target::supported_list as aot_supported_targets;

#[doc(hidden)]
pub mod testing;
