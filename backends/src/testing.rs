//! Hooks for the crate's own tests and benchmarks (not a stable API): each
//! inlined math function compiled alone, so its accuracy can be measured
//! against `f64`.

pub use crate::codegen::math::{
    ERF_MAX_REL, EXP_MAX_REL, GELU_MAX_REL, LOG_MAX_REL, SIGMOID_MAX_REL, TANH_MAX_REL,
};
