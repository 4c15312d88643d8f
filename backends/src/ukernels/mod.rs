//! Micro-kernels assembled at compile time with iced-x86 (docs/kernels.md,
//! "Tile levels" and "Assembled tiles"): typed specs of what each computes,
//! one registry that assembles and caches them, and the emitters; and the
//! portable Cranelift f32x4 GEMM tile, the peer of the assembled ones.
//!
//! - `tile.rs`: the GEMM tile contract shared by every ISA (variant,
//!   calling convention, the K loop and activation constants both x86
//!   emitters use); `avx512/tile.rs` and `avx2/tile.rs` its emitters, and
//!   `f32x4/tile.rs` the portable Cranelift f32x4 tile computing the same
//!   contract where nothing is assembled.
//! - `vector.rs`: the width-generic vector assembler (`Gen`, zmm or ymm)
//!   and what is built on it: transcendental rows, softmax rows, and the
//!   Mobile-Former bridges' loops (AVX-512 only).
//! - `dw_plane.rs`: 3×3 depthwise plane interiors (zmm or ymm).
//! - `dw_window.rs`: whole depthwise planes of any other window (zmm).
//! - `transpose.rs`: transposed panels of 16×16 blocks (zmm).
//! - `conv_direct.rs`: direct convolutions of a few output channels (zmm).
//! - `winograd.rs`: Winograd F(4×4, 3×3) input and output transforms (zmm).
//! - `registry.rs`: [`Registry`], asked by drivers for a [`Spec`].
//! - `contract.rs` (tests): one test per contract and ISA (`contract_tests!`:
//!   GEMM tiles, rows, 3×3 depthwise planes, depthwise windows, transpose
//!   panels, direct convs, Winograd transforms), the assembled code (and the
//!   portable GEMM tile) run on the host against the contract in f64.
//!
//! Activations are the IR's `fused::Act` everywhere. The GEMM tiles apply
//! every one; the other emitters state which they apply
//! (`dw_plane::assembles`, `conv_direct::assembles`) and refuse the others,
//! which the driver sweeps.

#[cfg(test)]
mod contract;
pub(crate) mod conv_direct;
pub(crate) mod dw_plane;
pub(crate) mod dw_window;
pub(crate) mod registry;
pub(crate) mod tile;
pub(crate) mod transpose;
pub(crate) mod vector;
pub(crate) mod winograd;

/// Emitters for AVX-512F (zmm, opmask tails).
pub(crate) mod avx512 {
    pub(crate) mod tile;
}

/// Emitters for AVX2 + FMA (ymm, VEX encodings only).
pub(crate) mod avx2 {
    pub(crate) mod tile;
}

/// The portable path: Cranelift f32x4 IR, for every target.
pub(crate) mod f32x4 {
    pub(crate) mod tile;
}

pub(crate) use registry::{Registry, Spec};
