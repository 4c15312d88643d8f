//! The registry of assembled micro-kernels: drivers ask it for a typed
//! [`Spec`] (what the function computes, with every parameter baked in) and
//! get the function's number; it assembles each spec once, for its level's
//! ISA, and caches by spec. The JIT (or an object file) places the code
//! and hands the addresses to the kernels that call them (`compiled/`,
//! `aot.rs`). At `F32x4` there is no registry: drivers take their portable
//! Cranelift path.

use super::tile::{Act, Bias, Variant};
use super::vector::{self, Func, Width};
use super::{avx2, avx512, conv_direct, dw_plane, dw_window, transpose, winograd};
use crate::target::TileLevel;

/// What an assembled function computes: the cache key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Spec {
    /// a GEMM tile variant (`tile.rs`), at the registry's ISA
    Tile(Variant),
    /// an element-wise transcendental over a row (`vector.rs`)
    Unary(Func, Width),
    /// a whole softmax over one long row
    SoftmaxRow(Width),
    /// softmax over blocks of short rows, one row per lane
    SoftmaxLanes {
        /// row length (at most `vector::LANES_MAX_LEN`)
        len: usize,
        /// vector width
        width: Width,
    },
    /// a 3×3 depthwise plane interior (`dw_plane.rs`)
    DwPlane(dw_plane::Spec),
    /// a whole depthwise plane of any window (`dw_window.rs`, AVX-512)
    DwWindow(dw_window::Spec),
    /// a direct convolution of a few output channels (`conv_direct.rs`,
    /// AVX-512)
    ConvDirect(conv_direct::Spec),
    /// a transposed panel (`transpose.rs`, AVX-512)
    Transpose(transpose::Spec),
    /// a Winograd F(4,3) input transform of one tile row (`winograd.rs`,
    /// AVX-512)
    WinoIn(winograd::InSpec),
    /// a Winograd F(4,3) output transform of one tile row with its
    /// epilogue (`winograd.rs`, AVX-512)
    WinoOut(winograd::OutSpec),
    /// the Mobile→Former bridge's `P·X` pass (AVX-512)
    M2fPx {
        /// tokens
        m: usize,
        /// pixels
        l: usize,
        /// channels
        c: usize,
        /// channels per call
        cb: usize,
        /// whether the gate is doubled
        twice: bool,
    },
    /// the Former→Mobile bridge's per-pixel attention (AVX-512)
    F2mRun {
        /// tokens
        m: usize,
        /// channels per head
        hc: usize,
        /// pixels
        l: usize,
        /// channels
        c: usize,
        /// the score scale's bits (an `f32`)
        scale: u32,
    },
}

impl Spec {
    /// A short name, one word per fact, for kernel plans.
    pub fn label(&self) -> String {
        match *self {
            Spec::Tile(v) => format!(
                "tile {}x{}/{} k{}{}{}{}{}{}",
                v.mr,
                v.nt,
                v.nr,
                v.k,
                if v.cols_in_lanes {
                    " rows-in-lanes"
                } else {
                    ""
                },
                match v.bias {
                    Bias::None => "",
                    Bias::Row => " +row-bias",
                    Bias::Col => " +col-bias",
                },
                match v.act {
                    Act::None => String::new(),
                    a => format!(" {a:?}").to_lowercase(),
                },
                if v.residual { " +res" } else { "" },
                if v.b_pack { " b-pack" } else { "" },
            ),
            Spec::Unary(f, w) => format!("unary {f:?} {w:?}"),
            Spec::SoftmaxRow(Width::Zmm) => "softmax row".into(),
            Spec::SoftmaxRow(w) => format!("softmax row {w:?}"),
            Spec::SoftmaxLanes { len, width } => format!("softmax lanes {len} {width:?}"),
            Spec::DwPlane(s) => format!("depthwise3x3 {s:?}"),
            Spec::DwWindow(s) => dw_window::label(&s),
            Spec::Transpose(s) => s.label(),
            Spec::WinoIn(s) => s.label(),
            Spec::WinoOut(s) => s.label(),
            Spec::ConvDirect(s) => s.label(),
            Spec::M2fPx { m, l, c, cb, twice } => {
                format!("m2f px m={m} l={l} c={c} cb={cb} twice={twice}")
            }
            Spec::F2mRun { m, hc, l, c, scale } => {
                format!("f2m run m={m} hc={hc} l={l} c={c} scale={scale:#x}")
            }
        }
    }

    /// Assembles the function for `level` (tiles follow the level; the
    /// other specs name their width); the bytes are position-independent.
    fn assemble(&self, level: TileLevel) -> Result<Vec<u8>, String> {
        match *self {
            Spec::Tile(v) => match level {
                TileLevel::Avx512 => avx512::tile::assemble(&v),
                TileLevel::Avx2 => avx2::tile::assemble(&v),
                TileLevel::F32x4 => Err("no assembled tiles at the f32x4 level".into()),
            },
            Spec::Unary(f, w) => vector::assemble(f, w),
            Spec::SoftmaxRow(w) => vector::assemble_softmax_row(w),
            Spec::SoftmaxLanes { len, width } => vector::assemble_softmax_lanes(len, width),
            Spec::DwPlane(s) => dw_plane::assemble(&s),
            Spec::DwWindow(s) => dw_window::assemble(&s),
            Spec::Transpose(s) => transpose::assemble(&s),
            Spec::WinoIn(s) => winograd::assemble_in(&s),
            Spec::WinoOut(s) => winograd::assemble_out(&s),
            Spec::ConvDirect(s) => conv_direct::assemble(&s),
            Spec::M2fPx { m, l, c, cb, twice } => vector::assemble_m2f_px(m, l, c, cb, twice),
            Spec::F2mRun { m, hc, l, c, scale } => {
                vector::assemble_f2m_run(m, hc, l, c, f32::from_bits(scale))
            }
        }
    }
}

/// Assembled functions, numbered in request order.
pub(crate) struct Registry {
    /// the instruction set every function here is assembled for: the GEMM
    /// tiles' emitter and shape follow it, and so does the width drivers
    /// ask for (`NodeCx::asm_width`; the bridges' loops exist only for
    /// AVX-512)
    level: TileLevel,
    specs: Vec<Spec>,
    code: Vec<Vec<u8>>,
    /// the number of every request, in order, cached or not: which
    /// functions each node's kernels call (`kernel_plan`)
    requests: Vec<usize>,
}

impl Registry {
    /// An empty registry for `level` (`Avx2` or `Avx512`).
    pub fn new(level: TileLevel) -> Registry {
        Registry {
            level,
            specs: Vec::new(),
            code: Vec::new(),
            requests: Vec::new(),
        }
    }

    /// The instruction set of the functions assembled here.
    pub fn level(&self) -> TileLevel {
        self.level
    }

    /// Rows and columns of a full GEMM tile at this level.
    pub fn tile_shape(&self) -> (usize, usize) {
        match self.level {
            TileLevel::Avx2 => (avx2::tile::MR, avx2::tile::NR),
            TileLevel::Avx512 | TileLevel::F32x4 => (avx512::tile::MR, avx512::tile::NR),
        }
    }

    /// The number of `spec`, assembling it if it is new.
    pub fn request(&mut self, spec: Spec) -> Result<usize, String> {
        let i = match self.specs.iter().position(|x| *x == spec) {
            Some(i) => i,
            None => {
                self.code.push(spec.assemble(self.level)?);
                self.specs.push(spec);
                self.specs.len() - 1
            }
        };
        self.requests.push(i);
        Ok(i)
    }

    /// How many requests were made so far (a mark for [`Registry::labels_since`]).
    pub fn request_count(&self) -> usize {
        self.requests.len()
    }

    /// The label of every distinct function requested since the mark
    /// `since`, sorted: what a kernel plan lists after a node.
    pub fn labels_since(&self, since: usize) -> Vec<String> {
        let mut ids: Vec<usize> = self.requests[since..].to_vec();
        ids.sort_unstable();
        ids.dedup();
        let mut labels: Vec<String> = ids.iter().map(|&i| self.specs[i].label()).collect();
        labels.sort();
        labels
    }

    /// Machine code of every function, in number order.
    pub fn code(&self) -> &[Vec<u8>] {
        &self.code
    }
}
