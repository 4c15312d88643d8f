//! The compile driver and the compiled model: verify, plan memory, lower
//! every kernel node, generate one Cranelift function per kernel, and run
//! them in order over a per-call arena.
//!
//! ## Sharing a compiled model between threads
//!
//! `CompiledModel` is `Send + Sync`. Each call to `run`/`run_into` takes an
//! arena from a small pool (a mutex-guarded `Vec`, refilled when the call
//! ends; a new arena is allocated only when every existing one is in use),
//! so concurrent calls never share intermediates. The worker pool is guarded
//! by a mutex that a call only *tries* to take: a call that finds it busy
//! runs its kernels on its own thread instead of queueing. This is sound for
//! results because every kernel computes each output element the same way
//! whatever slice of units a thread gets, so a model gives bitwise identical
//! results on 1 thread, on N threads, and when run concurrently.
//!
//! ## Files
//!
//! - `options.rs`: [`CompileOptions`] and its parts;
//! - `front.rs`: what the JIT and object files share — verify, unfuse,
//!   plan, lower ([`front`]), build each kernel's Cranelift function, the
//!   one kernel-definition loop over any `cranelift_module::Module`
//!   ([`define_kernels`]), which kernels split over threads ([`splits`]),
//!   and the `--emit plan` / `--emit clif` texts;
//! - `jit.rs`: [`compile`] for the host (tiles placed, kernels defined,
//!   the model assembled);
//! - `model.rs`: [`CompiledModel`] at run time (tensor checks, the arena
//!   pool, running on the worker pool, profiling).

// Calling JIT code and releasing its memory are unsafe; each block says why
// it is sound.
#![allow(unsafe_code)]

mod front;
mod jit;
mod model;
mod options;

pub(crate) use front::*;
pub use front::{emit_clif, kernel_graph, kernel_plan};
pub use jit::compile;
#[cfg(test)]
pub(crate) use jit::place_asm;
pub use model::{
    CompileStats, CompiledModel, Elems, ElemsMut, KernelTime, NodeWork, TensorMut, TensorRef,
};
pub use options::{CompileOptions, GemmTile, OptLevel};
