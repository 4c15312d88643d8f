//! Reductions and pooling: reduce mean/sum/max, global average pool, and
//! 2-D max/average pooling.
//!
//! Sums are accumulated in f64. Max reductions propagate NaN; the maximum
//! of an empty set is -inf and the mean of an empty set is NaN (0/0), the
//! values the definitions give.

use crate::op::{PoolKind, ReduceKind};

use super::elementwise::max_nan;
use super::view::{Strided, broadcast_strides};

/// Reduces `x` over `axes`. The output keeps the order of the remaining
/// elements, so its data is the same whether or not reduced axes are kept
/// as size 1.
pub(super) fn reduce(x: &[f32], shape: &[usize], axes: &[usize], kind: ReduceKind) -> Vec<f32> {
    // The output viewed with the input's rank (reduced axes of size 1);
    // reading it with broadcast strides maps each input element to the
    // output element it contributes to.
    let kept: Vec<usize> = shape
        .iter()
        .enumerate()
        .map(|(i, &d)| if axes.contains(&i) { 1 } else { d })
        .collect();
    let count: usize = axes.iter().map(|&a| shape[a]).product();
    let init = match kind {
        ReduceKind::Max => f64::NEG_INFINITY,
        ReduceKind::Mean | ReduceKind::Sum => 0.0,
    };
    let mut acc = vec![init; kept.iter().product()];
    let strides = broadcast_strides(&kept, shape);
    for (&v, o) in x.iter().zip(Strided::new(shape, &strides, 0)) {
        let v = f64::from(v);
        acc[o] = match kind {
            ReduceKind::Max => max_nan(acc[o], v),
            ReduceKind::Mean | ReduceKind::Sum => acc[o] + v,
        };
    }
    let div = match kind {
        ReduceKind::Mean => count as f64,
        ReduceKind::Sum | ReduceKind::Max => 1.0,
    };
    acc.into_iter().map(|a| (a / div) as f32).collect()
}

/// Mean of each contiguous run of `spatial` elements (one per `n, c`).
pub(super) fn global_avg_pool(x: &[f32], planes: usize, spatial: usize) -> Vec<f32> {
    (0..planes)
        .map(|p| {
            let s: f64 = x[p * spatial..][..spatial]
                .iter()
                .map(|&v| f64::from(v))
                .sum();
            (s / spatial as f64) as f32
        })
        .collect()
}

/// Attributes of a 2-D pool, as in [`crate::Op::Pool2d`].
pub(super) struct PoolParams {
    pub kind: PoolKind,
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    pub pad: [usize; 4],
    pub count_include_pad: bool,
}

/// 2-D pooling on NCHW data; `planes = n·c`. Padding never takes part in a
/// max (it is not an element of the input); an average divides by the
/// window's in-bounds element count, or with `count_include_pad` by
/// `kh·kw`. A window lying wholly in the padding (only possible on an
/// empty input) is an error: it has no value under either rule.
pub(super) fn pool2d(
    x: &[f32],
    (planes, h, w): (usize, usize, usize),
    p: &PoolParams,
    [ho, wo]: [usize; 2],
) -> Result<Vec<f32>, String> {
    let mut out = Vec::with_capacity(planes * ho * wo);
    let [kh, kw] = p.kernel;
    let (pt, pl) = (p.pad[0], p.pad[1]);
    for plane in 0..planes {
        let xp = &x[plane * h * w..][..h * w];
        for oy in 0..ho {
            // window rows [y0, y1) in padded coordinates, clipped to the input
            let y0 = oy * p.stride[0];
            let rows = y0.max(pt) - pt..(y0 + kh).min(pt + h) - pt;
            for ox in 0..wo {
                let x0 = ox * p.stride[1];
                let cols = x0.max(pl) - pl..(x0 + kw).min(pl + w) - pl;
                if rows.is_empty() || cols.is_empty() {
                    return Err(format!(
                        "{}: window ({oy},{ox}) covers only padding",
                        match p.kind {
                            PoolKind::Max => "max_pool2d",
                            PoolKind::Avg => "avg_pool2d",
                        }
                    ));
                }
                let window = rows
                    .clone()
                    .flat_map(|y| xp[y * w..][cols.clone()].iter().map(|&v| f64::from(v)));
                let v = match p.kind {
                    PoolKind::Max => window.fold(f64::NEG_INFINITY, max_nan),
                    PoolKind::Avg => {
                        let count = if p.count_include_pad {
                            kh * kw
                        } else {
                            rows.len() * cols.len()
                        };
                        window.sum::<f64>() / count as f64
                    }
                };
                out.push(v as f32);
            }
        }
    }
    Ok(out)
}
