//! Spatial resize (ONNX `Resize` on H and W): the per-axis taps every
//! implementation shares, and the f64 reference that applies them.
//!
//! Written from the ONNX operator spec (opsets 11–21): an output coordinate
//! `x` maps to an input coordinate by the [`CoordMode`]; nearest mode rounds
//! it by the [`NearestMode`], linear mode takes `floor` and `floor + 1` with
//! weights `1 - f` and `f` (`f` the fraction); indices outside the axis are
//! clamped to its edge (ONNX's reference pads with edge values, which is the
//! same). 2-D linear is separable: `Σ_h wh · Σ_w ww · x[h][w]`.

use crate::op::{CoordMode, Float, NearestMode, ResizeMode};

/// One output position along an axis: two input indices and the weight of
/// the second (`0` in nearest mode, where `i1 == i0`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Tap {
    /// first input index (clamped)
    pub i0: usize,
    /// second input index (clamped)
    pub i1: usize,
    /// weight of `i1`; `i0` has `1 - w1`
    pub w1: f64,
}

/// The taps of every output position of one axis of length `len_in`
/// resized to `len_out`; `scale` is the model's scale if it gave one, else
/// `len_out / len_in`. `len_in` must be non-zero when `len_out` is.
pub fn resize_taps(
    mode: ResizeMode,
    nearest: NearestMode,
    coord: CoordMode,
    len_in: usize,
    len_out: usize,
    scale: Option<Float>,
) -> Vec<Tap> {
    let s = scale.map_or(len_out as f64 / len_in as f64, |f| f64::from(f.0));
    // The spec's "length of the resized axis" is `len_in · scale` — not
    // floored — when the model gave scales (align_corners and
    // pytorch_half_pixel use it).
    let len_r = scale.map_or(len_out as f64, |_| len_in as f64 * s);
    let last = len_in.saturating_sub(1) as i64;
    let clamp = |i: i64| i.clamp(0, last) as usize;
    (0..len_out)
        .map(|o| {
            let x = o as f64;
            let src = match coord {
                CoordMode::HalfPixel => (x + 0.5) / s - 0.5,
                CoordMode::PytorchHalfPixel if len_r > 1.0 => (x + 0.5) / s - 0.5,
                CoordMode::PytorchHalfPixel => 0.0,
                CoordMode::AlignCorners if len_r > 1.0 => x * (len_in as f64 - 1.0) / (len_r - 1.0),
                CoordMode::AlignCorners => 0.0,
                CoordMode::Asymmetric => x / s,
            };
            match mode {
                ResizeMode::Nearest => {
                    let r = match nearest {
                        NearestMode::Floor => src.floor(),
                        NearestMode::Ceil => src.ceil(),
                        NearestMode::RoundPreferFloor if src == src.floor() + 0.5 => src.floor(),
                        NearestMode::RoundPreferCeil if src == src.floor() + 0.5 => src.ceil(),
                        _ => src.round(),
                    };
                    let i = clamp(r as i64);
                    Tap {
                        i0: i,
                        i1: i,
                        w1: 0.0,
                    }
                }
                ResizeMode::Linear => {
                    let f = src.floor();
                    Tap {
                        i0: clamp(f as i64),
                        i1: clamp(f as i64 + 1),
                        w1: src - f,
                    }
                }
            }
        })
        .collect()
}

/// The reference resize of `x [N,C,H,W]` to `[N,C,size]`, in f64 with one
/// rounding per output element.
pub(super) fn resize(
    x: &[f32],
    shape: &[usize],
    mode: ResizeMode,
    nearest: NearestMode,
    coord: CoordMode,
    size: [usize; 2],
    scale: Option<[Float; 2]>,
) -> Vec<f32> {
    let (planes, h, w) = (shape[0] * shape[1], shape[2], shape[3]);
    let th = resize_taps(mode, nearest, coord, h, size[0], scale.map(|s| s[0]));
    let tw = resize_taps(mode, nearest, coord, w, size[1], scale.map(|s| s[1]));
    let mut out = Vec::with_capacity(planes * size[0] * size[1]);
    for p in 0..planes {
        let plane = &x[p * h * w..(p + 1) * h * w];
        for a in &th {
            for b in &tw {
                let at = |i: usize, j: usize| f64::from(plane[i * w + j]);
                let row = |i: usize| (1.0 - b.w1) * at(i, b.i0) + b.w1 * at(i, b.i1);
                let v = if a.w1 == 0.0 {
                    row(a.i0)
                } else {
                    (1.0 - a.w1) * row(a.i0) + a.w1 * row(a.i1)
                };
                out.push(v as f32);
            }
        }
    }
    out
}
