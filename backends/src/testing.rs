//! Hooks for the crate's own tests, benchmarks and fuzz targets (not a
//! stable API): each inlined math function compiled alone, so its accuracy
//! can be measured against `f64`; seeded random tensors and graphs
//! ([`random`]).

pub mod random;

pub use crate::codegen::math::{
    ERF_MAX_REL, EXP_MAX_REL, GELU_MAX_REL, LOG_MAX_REL, SIGMOID_MAX_REL, SIN_COS_MAX_ABS,
    SIN_COS_MAX_REL, TANH_MAX_REL,
};
