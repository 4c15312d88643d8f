//! Normalisations: softmax, layer norm, group norm and inference batch norm.
//!
//! Statistics are computed in f64 with two passes (mean, then the mean of
//! squared deviations), so the variance is the biased one PyTorch and ONNX
//! use and never goes negative through cancellation.

/// Softmax along the middle axis of a tensor viewed as `[outer, len, inner]`.
/// The row maximum is subtracted before exponentiating so that large logits
/// do not overflow; a row holding +inf or only -inf gives NaN, as the
/// definition does.
pub(super) fn softmax(x: &[f32], outer: usize, len: usize, inner: usize) -> Vec<f32> {
    let mut out = vec![0f32; x.len()];
    let mut e = vec![0f64; len];
    for o in 0..outer {
        for i in 0..inner {
            let at = |j: usize| (o * len + j) * inner + i;
            let max = (0..len)
                .map(|j| f64::from(x[at(j)]))
                .fold(f64::NEG_INFINITY, super::elementwise::max_nan);
            let mut sum = 0f64;
            for (j, ej) in e.iter_mut().enumerate() {
                *ej = (f64::from(x[at(j)]) - max).exp();
                sum += *ej;
            }
            for (j, &ej) in e.iter().enumerate() {
                out[at(j)] = (ej / sum) as f32;
            }
        }
    }
    out
}

/// Mean and biased variance of a run of values.
fn moments(xs: impl Iterator<Item = f32> + Clone) -> (f64, f64) {
    let (mut n, mut sum) = (0usize, 0f64);
    for v in xs.clone() {
        n += 1;
        sum += f64::from(v);
    }
    let mean = sum / n as f64;
    let var = xs.map(|v| (f64::from(v) - mean).powi(2)).sum::<f64>() / n as f64;
    (mean, var)
}

/// Layer norm over rows of length `len` (the trailing axes):
/// `(x - mean) / sqrt(var + eps) · gamma + beta`, gamma and beta of length
/// `len`.
pub(super) fn layer_norm(
    x: &[f32],
    len: usize,
    gamma: &[f32],
    beta: Option<&[f32]>,
    eps: f32,
) -> Vec<f32> {
    let mut out = vec![0f32; x.len()];
    if len == 0 {
        return out;
    }
    let eps = f64::from(eps);
    for (row, dst) in x.chunks_exact(len).zip(out.chunks_exact_mut(len)) {
        let (mean, var) = moments(row.iter().copied());
        let inv = 1.0 / (var + eps).sqrt();
        for (j, (d, &v)) in dst.iter_mut().zip(row).enumerate() {
            let b = beta.map_or(0.0, |b| f64::from(b[j]));
            *d = ((f64::from(v) - mean) * inv * f64::from(gamma[j]) + b) as f32;
        }
    }
    out
}

/// Group norm of `x` viewed as `[n, c, spatial]`: statistics per sample
/// and per group of `c/groups` consecutive channels (a contiguous run of
/// memory), then a per-channel affine.
pub(super) fn group_norm(
    x: &[f32],
    (c, spatial): (usize, usize),
    groups: usize,
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
) -> Vec<f32> {
    let mut out = vec![0f32; x.len()];
    let cg = c / groups;
    let run = cg * spatial;
    if run == 0 {
        return out;
    }
    let eps = f64::from(eps);
    for (gi, (src, dst)) in x
        .chunks_exact(run)
        .zip(out.chunks_exact_mut(run))
        .enumerate()
    {
        let (mean, var) = moments(src.iter().copied());
        let inv = 1.0 / (var + eps).sqrt();
        let first_channel = (gi % groups) * cg;
        for (k, (d, &v)) in dst.iter_mut().zip(src).enumerate() {
            let ch = first_channel + k / spatial;
            *d = ((f64::from(v) - mean) * inv * f64::from(gamma[ch]) + f64::from(beta[ch])) as f32;
        }
    }
    out
}

/// Inference batch norm of `x` viewed as `[n, c, spatial]` with per-channel
/// statistics: `(x - mean) / sqrt(var + eps) · gamma + beta`.
pub(super) fn batch_norm(
    x: &[f32],
    (c, spatial): (usize, usize),
    [gamma, beta, mean, var]: [&[f32]; 4],
    eps: f32,
) -> Vec<f32> {
    let eps = f64::from(eps);
    let mut out = vec![0f32; x.len()];
    if spatial == 0 {
        return out;
    }
    for (pi, (src, dst)) in x
        .chunks_exact(spatial)
        .zip(out.chunks_exact_mut(spatial))
        .enumerate()
    {
        let ch = pi % c;
        let scale = f64::from(gamma[ch]) / (f64::from(var[ch]) + eps).sqrt();
        let (m, b) = (f64::from(mean[ch]), f64::from(beta[ch]));
        for (d, &v) in dst.iter_mut().zip(src) {
            *d = ((f64::from(v) - m) * scale + b) as f32;
        }
    }
    out
}
