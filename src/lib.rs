//! kiln: a compiler for hybrid CNN–transformer vision models — the library
//! facade over the workspace crates, and the code behind the `kiln` CLI.
//!
//! - [`ir`] (`kiln-ir`): graph, types, text format, verifier, interpreter;
//! - [`frontends`] (`kiln-frontends`): model zoo, ONNX, safetensors, `.npy`;
//! - [`load_model`]: one entry point for `.kir` files, `.onnx` files and zoo
//!   names, as every CLI command's `MODEL` argument;
//! - [`info`]: the `kiln info` report (parameters, MACs, per-node table);
//! - [`compile()`]: optimise and compile a model into a native inference
//!   function ([`Compiled`]);
//! - [`run_model`] with a [`Backend`]: execute a model (the optimised JIT by
//!   default);
//! - [`bench`](mod@bench): the `kiln bench` measurement (compile time, latency, GFLOP/s);
//! - [`passes`] (`kiln-passes`): the optimiser behind `kiln opt`, and
//!   [`opt`]: its text, JSON and Graphviz renderings;
//! - [`cli`]: the command line itself (docs/cli.md is its user guide).
//!
//! ```
//! use kiln::{Backend, LoadOptions, load_model, random_input, run_model};
//!
//! let model = load_model("examples/conv_norm_attention.kir", &LoadOptions {
//!     weights: Some("examples/conv_norm_attention.safetensors".into()),
//!     seed: 0,
//!     ..LoadOptions::default()
//! })?;
//! let input = kiln::ir::Value::of(model.graph.inputs()[0]);
//! let x = random_input(model.graph.value_type(input), 0);
//! let y = run_model(&model, &[x], Backend::Interp)?;
//! assert_eq!(y[0].shape(), &[1, 64, 16]);
//! # Ok::<(), kiln::KilnError>(())
//! ```

pub use kiln_backends as backends;
pub use kiln_frontends as frontends;
pub use kiln_ir as ir;
pub use kiln_passes as passes;

pub mod bench;
pub mod cli;
pub mod compile;
pub mod error;
pub mod info;
pub mod load;
pub mod opt;
pub mod run;

pub use compile::{CompileOptions, Compiled, compile};
pub use error::KilnError;
pub use load::{LoadOptions, ModelSpec, load_model, load_onnx_bytes};
pub use run::{Backend, random_input, run_model, run_model_with};
