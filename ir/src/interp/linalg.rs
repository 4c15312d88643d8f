//! The multiply-accumulate kernels: conv2d, matmul and gemm.
//!
//! Each output element is a sum of f32 products accumulated in f64 and
//! rounded to f32 once. Loop orders keep the innermost loop contiguous in
//! memory (a row of the output and of one operand), which is what makes
//! whole-model runs affordable without any cleverness beyond that.

use std::ops::Range;

use crate::types::{broadcast_shapes, strides_of};

use super::view::{Strided, broadcast_strides, to_isize};

/// Attributes of a conv2d, as in [`crate::Op::Conv2d`].
pub(super) struct ConvParams {
    pub stride: [usize; 2],
    pub pad: [usize; 4],
    pub dilation: [usize; 2],
    pub groups: usize,
}

/// The output positions `o` in `0..out_len` whose input coordinate
/// `o·stride + offset` lies inside `0..in_len`. The range is contiguous, so
/// the kernel loops over it without a bounds test per element.
fn valid_range(out_len: usize, in_len: usize, stride: usize, offset: isize) -> Range<usize> {
    let s = to_isize(stride);
    let n = to_isize(in_len);
    // first o with o·s + offset >= 0
    let lo = if offset >= 0 {
        0
    } else {
        (-offset + s - 1) / s
    };
    // first o with o·s + offset >= n
    let hi = if n - offset <= 0 {
        0
    } else {
        (n - offset + s - 1) / s
    };
    let lo = lo.unsigned_abs().min(out_len);
    let hi = hi.unsigned_abs().min(out_len);
    lo..hi.max(lo)
}

/// conv2d on NCHW data. `x` is `[n,c,h,w]`, `w` is `[o, c/groups, kh, kw]`,
/// `out_hw` the output spatial size from shape inference. Output channel
/// `oc` belongs to group `oc / (o/groups)` and reads that group's input
/// channels, which also covers depthwise convs with a channel multiplier
/// (`groups = c`, `o = k·c`).
pub(super) fn conv2d(
    x: &[f32],
    x_shape: &[usize],
    w: &[f32],
    w_shape: &[usize],
    bias: Option<&[f32]>,
    p: &ConvParams,
    out_hw: [usize; 2],
) -> Vec<f32> {
    let (n, c, h, wd) = (x_shape[0], x_shape[1], x_shape[2], x_shape[3]);
    let (o, cg, kh, kw) = (w_shape[0], w_shape[1], w_shape[2], w_shape[3]);
    let [ho, wo] = out_hw;
    let og = o / p.groups;
    let plane = ho * wo;
    let mut out = vec![0f32; n * o * plane];
    let mut acc = vec![0f64; plane];
    // Input column / row ranges per kernel tap depend only on the tap.
    let cols: Vec<Range<usize>> = (0..kw)
        .map(|kx| {
            let off = to_isize(kx * p.dilation[1]) - to_isize(p.pad[1]);
            valid_range(wo, wd, p.stride[1], off)
        })
        .collect();
    let rows: Vec<Range<usize>> = (0..kh)
        .map(|ky| {
            let off = to_isize(ky * p.dilation[0]) - to_isize(p.pad[0]);
            valid_range(ho, h, p.stride[0], off)
        })
        .collect();
    for b in 0..n {
        for oc in 0..o {
            acc.fill(bias.map_or(0.0, |bs| f64::from(bs[oc])));
            let group = oc / og;
            for ci in 0..cg {
                let ic = group * cg + ci;
                let xp = &x[(b * c + ic) * h * wd..][..h * wd];
                let wp = &w[(oc * cg + ci) * kh * kw..][..kh * kw];
                for ky in 0..kh {
                    for kx in 0..kw {
                        let wv = f64::from(wp[ky * kw + kx]);
                        let cr = cols[kx].clone();
                        if cr.is_empty() {
                            continue;
                        }
                        // ix = ox·sw + kx·dw - pl, non-negative on `cr`.
                        let ix0 = cr.start * p.stride[1] + kx * p.dilation[1] - p.pad[1];
                        for oy in rows[ky].clone() {
                            let iy = oy * p.stride[0] + ky * p.dilation[0] - p.pad[0];
                            let xrow = &xp[iy * wd..][..wd];
                            let arow = &mut acc[oy * wo..][..wo];
                            if p.stride[1] == 1 {
                                let xs = &xrow[ix0..][..cr.len()];
                                for (a, &xv) in arow[cr.clone()].iter_mut().zip(xs) {
                                    *a += wv * f64::from(xv);
                                }
                            } else {
                                let s = p.stride[1];
                                let xs = &xrow[ix0..][..(cr.len() - 1) * s + 1];
                                for (k, a) in arow[cr.clone()].iter_mut().enumerate() {
                                    *a += wv * f64::from(xs[k * s]);
                                }
                            }
                        }
                    }
                }
            }
            let dst = &mut out[(b * o + oc) * plane..][..plane];
            for (d, &a) in dst.iter_mut().zip(&acc) {
                *d = a as f32;
            }
        }
    }
    out
}

/// Multiplies `a [m,k]` by `b [k,n]` (both row-major), handing each output
/// row, accumulated in f64, to `row`. Loop order i-p-j keeps the inner loop
/// on contiguous rows of `b` and of the accumulator.
fn matmul_rows(
    a: &[f32],
    b: &[f32],
    (m, k, n): (usize, usize, usize),
    acc: &mut [f64],
    mut row: impl FnMut(usize, &[f64]),
) {
    for i in 0..m {
        let acc = &mut acc[..n];
        acc.fill(0.0);
        for p in 0..k {
            let av = f64::from(a[i * k + p]);
            let brow = &b[p * n..][..n];
            for (s, &bv) in acc.iter_mut().zip(brow) {
                *s += av * f64::from(bv);
            }
        }
        row(i, acc);
    }
}

/// numpy matmul: `a [..., m, k] @ b [..., k, n]` with broadcast batch
/// dims; a rank-1 `a` is a row vector `[1,k]`, a rank-1 `b` a column `[k,1]`.
/// The output is laid out `batch × m × n`, which is also the layout of the
/// inferred output shape (dropping the inserted size-1 axis moves no data).
pub(super) fn matmul(a: &[f32], a_shape: &[usize], b: &[f32], b_shape: &[usize]) -> Vec<f32> {
    let a2: Vec<usize> = if a_shape.len() == 1 {
        vec![1, a_shape[0]]
    } else {
        a_shape.to_vec()
    };
    let b2: Vec<usize> = if b_shape.len() == 1 {
        vec![b_shape[0], 1]
    } else {
        b_shape.to_vec()
    };
    let (ra, rb) = (a2.len(), b2.len());
    let (m, k, n) = (a2[ra - 2], a2[ra - 1], b2[rb - 1]);
    let (batch_a, batch_b) = (&a2[..ra - 2], &b2[..rb - 2]);
    let batch = broadcast_shapes(batch_a, batch_b)
        .expect("interpreter invariant: shape inference checked the batch dims broadcast");
    // Strides in units of whole matrices, 0 along broadcast axes.
    let scale = |s: Vec<isize>, by: usize| -> Vec<isize> {
        s.into_iter().map(|v| v * to_isize(by)).collect()
    };
    let sa = scale(broadcast_strides(batch_a, &batch), m * k);
    let sb = scale(broadcast_strides(batch_b, &batch), k * n);
    let nb: usize = batch.iter().product();
    let mut out = vec![0f32; nb * m * n];
    let mut acc = vec![0f64; n];
    let views = Strided::new(&batch, &sa, 0).zip(Strided::new(&batch, &sb, 0));
    for (bi, (oa, ob)) in views.enumerate() {
        let dst = &mut out[bi * m * n..][..m * n];
        matmul_rows(&a[oa..], &b[ob..], (m, k, n), &mut acc, |i, r| {
            for (d, &v) in dst[i * n..][..n].iter_mut().zip(r) {
                *d = v as f32;
            }
        });
    }
    out
}

/// A row-major `[rows, cols]` matrix transposed into a new buffer.
fn transposed(x: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0f32; x.len()];
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = x[r * cols + c];
        }
    }
    t
}

/// Attributes of a gemm, as in [`crate::Op::Gemm`].
pub(super) struct GemmParams {
    pub alpha: f32,
    pub beta: f32,
    pub trans_a: bool,
    pub trans_b: bool,
}

/// `alpha·op(a)·op(b) + beta·c` with `c` broadcast to `[m, n]`. The
/// transposed operands are materialised first so that one contiguous
/// kernel serves all four cases (gemm here is classifier heads: small).
pub(super) fn gemm(
    a: &[f32],
    a_shape: &[usize],
    b: &[f32],
    b_shape: &[usize],
    c: Option<(&[f32], &[usize])>,
    p: &GemmParams,
) -> Vec<f32> {
    let (m, k) = if p.trans_a {
        (a_shape[1], a_shape[0])
    } else {
        (a_shape[0], a_shape[1])
    };
    let n = if p.trans_b { b_shape[0] } else { b_shape[1] };
    let a_t;
    let a = if p.trans_a {
        a_t = transposed(a, k, m);
        &a_t[..]
    } else {
        a
    };
    let b_t;
    let b = if p.trans_b {
        b_t = transposed(b, n, k);
        &b_t[..]
    } else {
        b
    };
    let (alpha, beta) = (f64::from(p.alpha), f64::from(p.beta));
    let out_shape = [m, n];
    let c_strides = c.map(|(_, cs)| broadcast_strides(cs, &out_shape));
    let ostr = strides_of(&out_shape);
    let mut out = vec![0f32; m * n];
    let mut acc = vec![0f64; n];
    matmul_rows(a, b, (m, k, n), &mut acc, |i, r| {
        for (j, &v) in r.iter().enumerate() {
            let mut y = alpha * v;
            if let (Some((cd, _)), Some(cs)) = (c, &c_strides) {
                let off = to_isize(i) * cs[0] + to_isize(j) * cs[1];
                y += beta * f64::from(cd[off.unsigned_abs()]);
            }
            out[i * ostr[0] + j] = y as f32;
        }
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_range_clips_to_input() {
        // 5 outputs, input 5, stride 1, offset -1 (pad 1): o=0 reads -1.
        assert_eq!(valid_range(5, 5, 1, -1), 1..5);
        // offset +1 (tap 2 of a 3-wide kernel with pad 1): o=4 reads 5.
        assert_eq!(valid_range(5, 5, 1, 1), 0..4);
        // stride 2, offset -1: o=0 reads -1, o=1 reads 1, o=3 reads 5 (out).
        assert_eq!(valid_range(4, 5, 2, -1), 1..3);
        // a tap entirely in the padding
        assert_eq!(valid_range(3, 1, 1, 5), 0..0);
        assert_eq!(valid_range(3, 4, 1, -9), 3..3);
    }
}
