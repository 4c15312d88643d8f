//! Interpreter tests for softmax, the normalisations, reductions and
//! pooling: hand-worked values and the statistical properties the ops are
//! defined by (rows sum to 1, mean 0 / variance 1).

mod interp_util;

use interp_util::*;
use kiln_ir::{Float, Op, PoolKind, ReduceKind, Tensor};
use proptest::prelude::*;

#[test]
fn softmax_hand_cases() {
    // softmax([0, ln 3]) = [1/4, 3/4]
    let x = t(&[1, 2], &[0.0, 3f32.ln()]);
    assert_close(
        &f(&ev1(&Op::Softmax { axis: 1 }, &[&x])),
        &[0.25, 0.75],
        1e-7,
    );
    // huge logits would overflow exp without subtracting the max
    let x = t(&[2], &[1000.0, 1000.0]);
    assert_close(&f(&ev1(&Op::Softmax { axis: 0 }, &[&x])), &[0.5, 0.5], 1e-7);
    // along axis 0 of a [2,2]: columns are normalised
    let x = t(&[2, 2], &[0.0, 5.0, 0.0, 5.0]);
    assert_close(
        &f(&ev1(&Op::Softmax { axis: 0 }, &[&x])),
        &[0.5, 0.5, 0.5, 0.5],
        1e-7,
    );
}

fn shape_and_axis() -> impl Strategy<Value = (Vec<usize>, usize)> {
    prop::collection::vec(1usize..5, 1..5).prop_flat_map(|s| {
        let r = s.len();
        (Just(s), 0..r)
    })
}

/// Sums of `x` over `axis`, one per position of the other axes.
fn sums_along(x: &[f32], shape: &[usize], axis: usize) -> Vec<f64> {
    let outer: usize = shape[..axis].iter().product();
    let inner: usize = shape[axis + 1..].iter().product();
    let mut out = Vec::new();
    for o in 0..outer {
        for i in 0..inner {
            out.push(
                (0..shape[axis])
                    .map(|j| f64::from(x[(o * shape[axis] + j) * inner + i]))
                    .sum(),
            );
        }
    }
    out
}

proptest! {
    #[test]
    fn softmax_rows_sum_to_one((shape, axis) in shape_and_axis(), seed in any::<u64>(), scale in 0.1f32..50.0) {
        let mut rng = Seeded::new(seed);
        let x = rng.tensor(&shape);
        let x = t(&shape, &f(&x).iter().map(|v| v * scale).collect::<Vec<_>>());
        let y = f(&ev1(&Op::Softmax { axis }, &[&x]));
        prop_assert!(y.iter().all(|&v| (0.0..=1.0).contains(&v)));
        for s in sums_along(&y, &shape, axis) {
            prop_assert!((s - 1.0).abs() < 1e-6, "row sums to {}", s);
        }
    }

    #[test]
    fn layer_norm_rows_have_mean_0_var_1(
        (shape, axis) in shape_and_axis(), seed in any::<u64>(),
    ) {
        let len: usize = shape[axis..].iter().product();
        prop_assume!(len >= 2);
        let mut rng = Seeded::new(seed);
        let x = rng.tensor(&shape);
        let gamma = t(&shape[axis..], &vec![1.0; len]);
        let beta = t(&shape[axis..], &vec![0.0; len]);
        let op = Op::LayerNorm { axis, eps: Float(0.0) };
        // beta is optional: with and without it the result is the same here
        let y = f(&ev1(&op, &[&x, &gamma, &beta]));
        prop_assert_eq!(&y, &f(&ev1(&op, &[&x, &gamma])));
        for row in y.chunks(len) {
            let mean = row.iter().map(|&v| f64::from(v)).sum::<f64>() / len as f64;
            let var = row.iter().map(|&v| (f64::from(v) - mean).powi(2)).sum::<f64>() / len as f64;
            prop_assert!(mean.abs() < 1e-5, "mean {}", mean);
            prop_assert!((var - 1.0).abs() < 1e-4, "var {}", var);
        }
    }

    #[test]
    fn group_norm_groups_have_mean_0_var_1(
        n in 1usize..3, groups in 1usize..4, cg in 1usize..4, spatial in prop::collection::vec(1usize..4, 0..3),
        seed in any::<u64>(),
    ) {
        let c = groups * cg;
        let run = cg * spatial.iter().product::<usize>();
        prop_assume!(run >= 2);
        let shape: Vec<usize> = [n, c].into_iter().chain(spatial.iter().copied()).collect();
        let mut rng = Seeded::new(seed);
        let x = rng.tensor(&shape);
        let op = Op::GroupNorm { groups, eps: Float(0.0) };
        let y = f(&ev1(&op, &[&x, &t(&[c], &vec![1.0; c]), &t(&[c], &vec![0.0; c])]));
        // each (sample, group) is one contiguous run of cg channels
        for g in y.chunks(run) {
            let mean = g.iter().map(|&v| f64::from(v)).sum::<f64>() / run as f64;
            let var = g.iter().map(|&v| (f64::from(v) - mean).powi(2)).sum::<f64>() / run as f64;
            prop_assert!(mean.abs() < 1e-5, "mean {}", mean);
            prop_assert!((var - 1.0).abs() < 1e-4, "var {}", var);
        }
    }
}

#[test]
fn layer_norm_hand_case() {
    // row [1,2,3]: mean 2, biased var 2/3; (x-2)/sqrt(2/3) = ∓sqrt(3/2), 0
    let x = t(&[1, 3], &[1.0, 2.0, 3.0]);
    let gamma = t(&[3], &[1.0, 2.0, 1.0]);
    let beta = t(&[3], &[0.0, 0.0, 10.0]);
    let op = Op::LayerNorm {
        axis: 1,
        eps: Float(0.0),
    };
    let r = 1.5f64.sqrt();
    assert_close(
        &f(&ev1(&op, &[&x, &gamma, &beta])),
        &[-r, 0.0, r + 10.0],
        1e-7,
    );
    // eps is added to the variance: a constant row becomes 0, not NaN
    let op = Op::LayerNorm {
        axis: 1,
        eps: Float(1e-5),
    };
    let c = t(&[1, 3], &[4.0; 3]);
    assert_eq!(f(&ev1(&op, &[&c, &gamma])), [0.0; 3]);
    // normalising over two trailing axes: [1,2,2] rows of 4
    let op = Op::LayerNorm {
        axis: 1,
        eps: Float(0.0),
    };
    let x = t(&[1, 2, 2], &[0.0, 0.0, 2.0, 2.0]);
    let g = t(&[2, 2], &[1.0; 4]);
    assert_close(&f(&ev1(&op, &[&x, &g])), &[-1.0, -1.0, 1.0, 1.0], 1e-7);
}

#[test]
fn group_norm_hand_case() {
    // [1,4,1] in 2 groups: {1,3} and {10,10}; per-channel affine afterwards
    let x = t(&[1, 4, 1], &[1.0, 3.0, 10.0, 10.0]);
    let gamma = t(&[4], &[1.0, 2.0, 1.0, 1.0]);
    let beta = t(&[4], &[0.0, 0.0, 5.0, -5.0]);
    let op = Op::GroupNorm {
        groups: 2,
        eps: Float(0.0),
    };
    // group 0: mean 2, var 1 -> [-1, 1]; group 1 constant -> NaN with eps 0
    let y = f(&ev1(&op, &[&x, &gamma, &beta]));
    assert_close(&y[..2], &[-1.0, 2.0], 1e-7);
    assert!(y[2].is_nan() && y[3].is_nan());
    let op = Op::GroupNorm {
        groups: 2,
        eps: Float(1e-5),
    };
    let y = f(&ev1(&op, &[&x, &gamma, &beta]));
    assert_close(&y[2..], &[5.0, -5.0], 1e-7);
    // one group over everything (MobileViTv2's GroupNorm(1, C) layer norm)
    let op = Op::GroupNorm {
        groups: 1,
        eps: Float(0.0),
    };
    let y = f(&ev1(&op, &[&x, &t(&[4], &[1.0; 4]), &t(&[4], &[0.0; 4])]));
    // mean 6, var (25 + 9 + 16 + 16)/4 = 16.5
    let s = 16.5f64.sqrt();
    assert_close(&y, &[-5.0 / s, -3.0 / s, 4.0 / s, 4.0 / s], 1e-6);
}

#[test]
fn batch_norm_is_the_formula() {
    // [1,2,2]: channel 0 = [1,3], channel 1 = [0,4]
    let x = t(&[1, 2, 2], &[1.0, 3.0, 0.0, 4.0]);
    let gamma = t(&[2], &[2.0, 1.0]);
    let beta = t(&[2], &[1.0, -1.0]);
    let mean = t(&[2], &[1.0, 2.0]);
    let var = t(&[2], &[4.0, 0.25]);
    let op = Op::BatchNorm { eps: Float(0.0) };
    let y = f(&ev1(&op, &[&x, &gamma, &beta, &mean, &var]));
    // c0: (x-1)/2·2 + 1 -> [1, 3]; c1: (x-2)/0.5·1 - 1 -> [-5, 3]
    assert_eq!(y, [1.0, 3.0, -5.0, 3.0]);
    // rank 2 input [N,C], and eps inside the square root
    let x = t(&[2, 1], &[3.0, 5.0]);
    let one = t(&[1], &[1.0]);
    let zero = t(&[1], &[0.0]);
    let var = t(&[1], &[3.0]);
    let op = Op::BatchNorm { eps: Float(1.0) };
    assert_close(
        &f(&ev1(&op, &[&x, &one, &zero, &zero, &var])),
        &[1.5, 2.5],
        1e-7,
    );
}

fn reduce(kind: ReduceKind, axes: &[usize], keepdims: bool, x: &Tensor) -> Tensor {
    ev1(
        &Op::Reduce {
            kind,
            axes: axes.to_vec(),
            keepdims,
        },
        &[x],
    )
}

#[test]
fn reductions() {
    // [[1,2,3],[4,5,6]]
    let x = t(&[2, 3], &[1., 2., 3., 4., 5., 6.]);
    let r = reduce(ReduceKind::Sum, &[0], false, &x);
    assert_eq!((r.shape(), f(&r)), (&[3][..], vec![5., 7., 9.]));
    let r = reduce(ReduceKind::Mean, &[1], true, &x);
    assert_eq!((r.shape(), f(&r)), (&[2, 1][..], vec![2., 5.]));
    let r = reduce(ReduceKind::Max, &[0, 1], false, &x);
    assert_eq!((r.shape(), f(&r)), (&[][..], vec![6.]));
    // the middle axis of [2,2,2]
    let x = t(&[2, 2, 2], &[1., 2., 3., 4., 5., 6., 7., 8.]);
    let r = reduce(ReduceKind::Sum, &[1], false, &x);
    assert_eq!(f(&r), [4., 6., 12., 14.]);
    let r = reduce(ReduceKind::Max, &[0, 2], true, &x);
    assert_eq!((r.shape(), f(&r)), (&[1, 2, 1][..], vec![6., 8.]));
    // max of negatives is not clamped to an initial 0
    let r = reduce(ReduceKind::Max, &[0], false, &t(&[2], &[-3., -2.]));
    assert_eq!(f(&r), [-2.]);
    // f64 accumulation: 1e8 + 1 - 1e8 = 1
    let r = reduce(ReduceKind::Sum, &[0], false, &t(&[3], &[1e8, 1., -1e8]));
    assert_eq!(f(&r), [1.]);
}

fn shape_and_axes() -> impl Strategy<Value = (Vec<usize>, Vec<usize>)> {
    prop::collection::vec(1usize..4, 1..5).prop_flat_map(|s| {
        let r = s.len();
        (Just(s), prop::collection::vec(any::<bool>(), r)).prop_map(|(s, pick)| {
            let mut axes: Vec<usize> = (0..s.len()).filter(|&i| pick[i]).collect();
            if axes.is_empty() {
                axes.push(0);
            }
            (s, axes)
        })
    })
}

proptest! {
    /// Each reduction equals scattering every input element into the output
    /// element whose index is the input's with the reduced axes zeroed.
    #[test]
    fn reduce_matches_scatter((shape, axes) in shape_and_axes(), keepdims in any::<bool>(), seed in any::<u64>()) {
        let x = Seeded::new(seed).tensor(&shape);
        let kept: Vec<usize> = shape.iter().enumerate().map(|(i, &d)| if axes.contains(&i) { 1 } else { d }).collect();
        let m: usize = kept.iter().product();
        let count: usize = axes.iter().map(|&a| shape[a]).product();
        let (mut sum, mut max) = (vec![0f64; m], vec![f64::NEG_INFINITY; m]);
        for (flat, &v) in f(&x).iter().enumerate() {
            let mut rem = flat;
            let mut idx = vec![0; shape.len()];
            for d in (0..shape.len()).rev() {
                idx[d] = rem % shape[d];
                rem /= shape[d];
            }
            let o = idx.iter().zip(&kept).fold(0, |acc, (&i, &k)| acc * k + if k == 1 { 0 } else { i });
            sum[o] += f64::from(v);
            max[o] = max[o].max(f64::from(v));
        }
        let want_shape: Vec<usize> = if keepdims {
            kept.clone()
        } else {
            shape.iter().enumerate().filter(|(i, _)| !axes.contains(i)).map(|(_, &d)| d).collect()
        };
        let mean: Vec<f64> = sum.iter().map(|s| s / count as f64).collect();
        for (kind, want) in [(ReduceKind::Sum, &sum), (ReduceKind::Mean, &mean), (ReduceKind::Max, &max)] {
            let y = reduce(kind, &axes, keepdims, &x);
            prop_assert_eq!(y.shape(), &want_shape[..]);
            assert_close(&f(&y), want, 1e-6);
        }
    }
}

#[test]
fn global_avg_pool_means_each_plane() {
    let x = t(&[1, 2, 2, 2], &[1., 2., 3., 4., 10., 10., 10., 30.]);
    let y = ev1(&Op::GlobalAvgPool, &[&x]);
    assert_eq!((y.shape(), f(&y)), (&[1, 2, 1, 1][..], vec![2.5, 15.]));
}

fn pool(kind: PoolKind, k: usize, s: usize, pad: [usize; 4], cip: bool) -> Op {
    Op::Pool2d {
        kind,
        kernel: [k, k],
        stride: [s, s],
        pad,
        count_include_pad: cip,
    }
}

#[test]
fn max_pool_ignores_padding() {
    // all negative: a padded zero must never win
    let x = t(&[1, 1, 2, 2], &[-1., -2., -3., -4.]);
    let y = ev1(&pool(PoolKind::Max, 2, 1, [1, 1, 0, 0], false), &[&x]);
    assert_eq!(y.shape(), [1, 1, 2, 2]);
    assert_eq!(f(&y), [-1., -1., -1., -1.]);
    // 3x3 stride 2 pad 1 on 1..9 (the ResNet stem pool shape)
    let x = t(&[1, 1, 3, 3], &[1., 2., 3., 4., 5., 6., 7., 8., 9.]);
    let y = ev1(&pool(PoolKind::Max, 3, 2, [1; 4], false), &[&x]);
    assert_eq!(f(&y), [5., 6., 8., 9.]);
}

#[test]
fn avg_pool_with_and_without_padding_count() {
    let x = t(&[1, 1, 2, 2], &[1., 2., 3., 4.]);
    // 2x2 windows with one row/col of padding at top-left
    let op = pool(PoolKind::Avg, 2, 1, [1, 1, 0, 0], false);
    // windows: {1}, {1,2}, {1,3}, {1,2,3,4}
    assert_eq!(f(&ev1(&op, &[&x])), [1., 1.5, 2., 2.5]);
    let op = pool(PoolKind::Avg, 2, 1, [1, 1, 0, 0], true);
    assert_eq!(f(&ev1(&op, &[&x])), [0.25, 0.75, 1., 2.5]);
    // no padding, stride 2 over a 4x4 of 0..16
    let data: Vec<f32> = (0..16).map(|v| v as f32).collect();
    let x = t(&[1, 1, 4, 4], &data);
    let op = pool(PoolKind::Avg, 2, 2, [0; 4], false);
    assert_eq!(f(&ev1(&op, &[&x])), [2.5, 4.5, 10.5, 12.5]);
}
