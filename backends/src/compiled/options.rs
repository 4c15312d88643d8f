//! What a compilation can be asked for: [`CompileOptions`] and its parts.

use crate::kernels::gemm::{DEFAULT_TILE, Tile};
use crate::target::TileLevel;

/// Cranelift optimisation level.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OptLevel {
    /// `opt_level=none`: no mid-end optimisation; register allocation only.
    None,
    /// `opt_level=speed`.
    Speed,
}

impl OptLevel {
    pub(super) fn name(self) -> &'static str {
        match self {
            OptLevel::None => "none",
            OptLevel::Speed => "speed",
        }
    }
}

/// How to compile a model.
#[derive(Clone, Debug)]
pub struct CompileOptions {
    /// Threads to run on, the caller's included; `None` = every available core.
    pub threads: Option<usize>,
    /// Optimisation level of the memory-bound kernels. `none` by default:
    /// the kernels already place their loop-invariant values themselves,
    /// and at `speed` Cranelift rematerialises vector constants inside
    /// loops (measured 10–15 % slower on `exp`-heavy kernels, and slower
    /// compiles).
    pub opt_level: OptLevel,
    /// Optimisation level of register-tiled GEMM kernels. `none` by default:
    /// measured faster, because `speed` spills the tile's accumulators (see
    /// docs/kernels.md and `benches/pointwise_conv.rs`).
    pub tile_opt_level: OptLevel,
    /// Run Cranelift's IR verifier on every kernel (slower compiles; tests
    /// turn it on so a lowering bug is an error, not a miscompile).
    pub verify_ir: bool,
    /// The GEMM register tile (for measuring alternatives; the default is
    /// the fastest measured here).
    pub gemm_tile: GemmTile,
    /// Compute convolutions with constant weights and linear layers with
    /// GEMM tiles assembled for the host (AVX-512: 14×32, zmm; AVX2 + FMA:
    /// 6×16, ymm), up to [`CompileOptions::max_tiles`]; the Cranelift f32x4
    /// tile otherwise. `false` is `max_tiles: TileLevel::F32x4`.
    pub asm_tiles: bool,
    /// The widest tile level to use even when the target has more (for
    /// comparing levels on one host; `kiln run/bench --tiles`). The other
    /// assembled functions (transcendental rows, depthwise interiors) follow
    /// it at `Avx2` and `Avx512`; the bridges' loops exist only at `Avx512`.
    pub max_tiles: TileLevel,
    /// Rewrite every kernel's vectors into scalars (`scalarize.rs`) even
    /// when the ISA has 128-bit SIMD: the code path of targets without it
    /// (riscv64 without V), forced so that the differential tests run it on
    /// the host. Slower; for tests only.
    #[doc(hidden)]
    pub scalarize: bool,
    /// Run inverted-residual conv chains (pointwise → depthwise →
    /// pointwise with a large expanded tensor) band by band in one kernel,
    /// the expanded tensor never in memory (`kernels/conv_chain.rs`), instead of
    /// as three convolutions. `false` by default: it shrinks the arena
    /// (mobilevitv2_050: 6.0 → 4.1 MiB) but measured 1–3 % slower here,
    /// where the split kernels are compute-bound and their intermediates
    /// stay in L3; for memory-constrained devices (`kiln compile
    /// --banded-chains`).
    pub banded_chains: bool,
    /// Resource limits: the model's sizes, compile-time folding, the
    /// constant blob and the arena are checked against them.
    pub limits: kiln_ir::Limits,
}

/// Shape of the GEMM register tile: `mr` rows by `nr` columns (`nr` a
/// multiple of 4: f32x4 vectors).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GemmTile {
    /// rows
    pub mr: usize,
    /// columns
    pub nr: usize,
}

impl Default for GemmTile {
    fn default() -> Self {
        GemmTile {
            mr: DEFAULT_TILE.mr,
            nr: 4 * DEFAULT_TILE.nv,
        }
    }
}

impl From<GemmTile> for Tile {
    fn from(t: GemmTile) -> Tile {
        Tile {
            mr: t.mr.max(1),
            nv: (t.nr / 4).max(1),
        }
    }
}

impl Default for CompileOptions {
    fn default() -> Self {
        CompileOptions {
            threads: None,
            opt_level: OptLevel::None,
            tile_opt_level: OptLevel::None,
            verify_ir: false,
            gemm_tile: GemmTile::default(),
            asm_tiles: true,
            max_tiles: TileLevel::Avx512,
            scalarize: false,
            banded_chains: false,
            limits: kiln_ir::Limits::default(),
        }
    }
}
