//! kiln-passes: the optimiser. Equality saturation (egg) discovers fusions
//! in a primitive-op graph; DAG-aware, cost-based extraction picks the
//! cheapest equivalent graph of fused kernel-level ops; classic passes
//! (dead-code elimination, CSE, constant folding) clean up around it.
//!
//! - [`lang`]: the e-graph language and analysis;
//! - [`convert`]: graph → e-graph → graph;
//! - [`rules`]: the rewrite rule families, one file each;
//! - [`saturate`]: the bounded saturation run and its report;
//! - [`cost`], [`extract`]: the cost model and the extractor;
//! - [`dce`], [`cse`], [`const_fold`]: classic passes;
//! - [`pipeline`]: [`optimize`], the ordered pass list.
//!
//! docs/passes.md is the pass catalogue: every rule, the cost model, the
//! extraction choice and the limits.

pub mod const_fold;
pub mod convert;
pub mod cost;
pub mod cse;
pub mod dce;
pub mod error;
pub mod extract;
pub mod lang;
pub mod pipeline;
pub mod rules;
pub mod saturate;

pub use error::PassError;
pub use pipeline::{Family, OptOptions, OptReport, optimize};
pub use saturate::{SaturationLimits, Stop};
