//! Interpreter tests for conv2d, matmul and gemm: hand-worked cases, plus
//! comparisons with second, independent formulations (im2col + matmul for
//! conv, per-group convs for grouped conv, explicit loops for batched
//! matmul).

mod interp_util;

use interp_util::*;
use kiln_ir::{Float, Op, Tensor};
use proptest::prelude::*;

fn conv(stride: [usize; 2], pad: [usize; 4], dilation: [usize; 2], groups: usize) -> Op {
    Op::Conv2d {
        stride,
        pad,
        dilation,
        groups,
    }
}

fn nine() -> Tensor {
    // 1 2 3
    // 4 5 6
    // 7 8 9
    t(&[1, 1, 3, 3], &[1., 2., 3., 4., 5., 6., 7., 8., 9.])
}

#[test]
fn conv_valid_window_sums() {
    // kernel [[1,0],[0,1]] sums the main diagonal of each 2x2 window
    let w = t(&[1, 1, 2, 2], &[1., 0., 0., 1.]);
    let out = ev1(&conv([1, 1], [0; 4], [1, 1], 1), &[&nine(), &w]);
    assert_eq!(out.shape(), [1, 1, 2, 2]);
    assert_eq!(f(&out), [1. + 5., 2. + 6., 4. + 8., 5. + 9.]);
}

#[test]
fn conv_pad_stride_bias() {
    // 3x3 ones, pad 1, stride 2: windows centred on (0,0), (0,2), (2,0), (2,2)
    let w = t(&[1, 1, 3, 3], &[1.0; 9]);
    let b = t(&[1], &[0.5]);
    let out = ev1(&conv([2, 2], [1, 1, 1, 1], [1, 1], 1), &[&nine(), &w, &b]);
    assert_eq!(out.shape(), [1, 1, 2, 2]);
    let want = [
        1. + 2. + 4. + 5.,
        2. + 3. + 5. + 6.,
        4. + 5. + 7. + 8.,
        5. + 6. + 8. + 9.,
    ];
    assert_eq!(f(&out), want.map(|v| v + 0.5));
}

#[test]
fn conv_asymmetric_pad() {
    // pad only bottom and right: [top, left, bottom, right] = [0,0,1,1]
    let x = t(&[1, 1, 2, 2], &[1., 2., 3., 4.]);
    let w = t(&[1, 1, 2, 2], &[1.0; 4]);
    let out = ev1(&conv([1, 1], [0, 0, 1, 1], [1, 1], 1), &[&x, &w]);
    assert_eq!(f(&out), [10., 6., 7., 4.]);
    // pad only top and left
    let out = ev1(&conv([1, 1], [1, 1, 0, 0], [1, 1], 1), &[&x, &w]);
    assert_eq!(f(&out), [1., 3., 4., 10.]);
}

#[test]
fn conv_dilation() {
    // a 1x2 kernel of ones with column dilation 2: out[j] = x[j] + x[j+2]
    let x = t(&[1, 1, 1, 5], &[1., 2., 3., 4., 5.]);
    let w = t(&[1, 1, 1, 2], &[1., 1.]);
    let out = ev1(&conv([1, 1], [0; 4], [1, 2], 1), &[&x, &w]);
    assert_eq!(out.shape(), [1, 1, 1, 3]);
    assert_eq!(f(&out), [4., 6., 8.]);
}

#[test]
fn conv_multi_channel_sums_over_channels() {
    // two input channels, 1x1 kernel [2, -1]: out = 2·x0 - x1
    let x = t(&[1, 2, 1, 2], &[1., 2., 10., 20.]);
    let w = t(&[1, 2, 1, 1], &[2., -1.]);
    let out = ev1(&conv([1, 1], [0; 4], [1, 1], 1), &[&x, &w]);
    assert_eq!(f(&out), [2. - 10., 4. - 20.]);
}

#[test]
fn depthwise_and_expanding_depthwise() {
    // two channels, each with its own 1x2 kernel
    let x = t(&[1, 2, 1, 3], &[1., 2., 3., 10., 20., 30.]);
    let w = t(&[2, 1, 1, 2], &[1., 1., 1., -1.]);
    let out = ev1(&conv([1, 1], [0; 4], [1, 1], 2), &[&x, &w]);
    assert_eq!(f(&out), [3., 5., -10., -10.]);
    // channel multiplier 2 (groups = C = 2, O = 4): output channels 0,1 read
    // input channel 0; 2,3 read input channel 1
    let w = t(&[4, 1, 1, 1], &[1., 2., 3., 4.]);
    let out = ev1(&conv([1, 1], [0; 4], [1, 1], 2), &[&x, &w]);
    assert_eq!(out.shape(), [1, 4, 1, 3]);
    assert_eq!(
        f(&out),
        [1., 2., 3., 2., 4., 6., 30., 60., 90., 40., 80., 120.]
    );
}

#[test]
fn identity_pointwise_conv_is_identity() {
    let c = 5;
    let x = Seeded::new(7).tensor(&[2, c, 4, 3]);
    let mut eye = vec![0.0; c * c];
    for k in 0..c {
        eye[k * c + k] = 1.0;
    }
    let w = t(&[c, c, 1, 1], &eye);
    let out = ev1(&conv([1, 1], [0; 4], [1, 1], 1), &[&x, &w]);
    assert_eq!(out, x);
}

/// Conv computed as im2col + matmul, in f64: the patch matrix
/// `[(C/g)·kh·kw, Ho·Wo]` per sample and group, multiplied by the weight
/// rows of that group. Shares nothing with the interpreter's loop nest.
#[allow(clippy::too_many_arguments)]
fn conv_im2col(
    x: &[f32],
    [n, c, h, w]: [usize; 4],
    wt: &[f32],
    [o, cg, kh, kw]: [usize; 4],
    bias: &[f32],
    stride: [usize; 2],
    pad: [usize; 4],
    dil: [usize; 2],
    groups: usize,
) -> (Vec<usize>, Vec<f64>) {
    let ho = (h + pad[0] + pad[2] - dil[0] * (kh - 1) - 1) / stride[0] + 1;
    let wo = (w + pad[1] + pad[3] - dil[1] * (kw - 1) - 1) / stride[1] + 1;
    let og = o / groups;
    let rows = cg * kh * kw;
    let mut out = vec![0f64; n * o * ho * wo];
    for b in 0..n {
        for g in 0..groups {
            let mut cols = vec![0f64; rows * ho * wo];
            for ci in 0..cg {
                for ky in 0..kh {
                    for kx in 0..kw {
                        let r = (ci * kh + ky) * kw + kx;
                        for oy in 0..ho {
                            for ox in 0..wo {
                                let iy = (oy * stride[0] + ky * dil[0]) as isize - pad[0] as isize;
                                let ix = (ox * stride[1] + kx * dil[1]) as isize - pad[1] as isize;
                                let v = if iy >= 0
                                    && ix >= 0
                                    && (iy as usize) < h
                                    && (ix as usize) < w
                                {
                                    let ch = g * cg + ci;
                                    f64::from(x[((b * c + ch) * h + iy as usize) * w + ix as usize])
                                } else {
                                    0.0
                                };
                                cols[r * ho * wo + oy * wo + ox] = v;
                            }
                        }
                    }
                }
            }
            for oc in g * og..(g + 1) * og {
                for p in 0..ho * wo {
                    let mut s = f64::from(bias[oc]);
                    for r in 0..rows {
                        s += f64::from(wt[oc * rows + r]) * cols[r * ho * wo + p];
                    }
                    out[(b * o + oc) * ho * wo + p] = s;
                }
            }
        }
    }
    (vec![n, o, ho, wo], out)
}

/// Random conv configurations that shape inference accepts.
/// One conv configuration: input shape, weight shape, stride, pad,
/// dilation, groups, whether to pass a bias.
type ConvCase = (
    [usize; 4],
    [usize; 4],
    [usize; 2],
    [usize; 4],
    [usize; 2],
    usize,
    bool,
);

fn conv_case() -> impl Strategy<Value = ConvCase> {
    (
        1usize..3, // n
        1usize..4, // groups
        1usize..3, // in channels per group
        1usize..3, // out channels per group
        (1usize..4, 1usize..4),
        (1usize..3, 1usize..3),
        (0usize..3, 0usize..3, 0usize..3, 0usize..3),
        (1usize..3, 1usize..3),
        (1usize..8, 1usize..8),
        any::<bool>(),
    )
        .prop_filter_map(
            "padded input smaller than the kernel span",
            |(n, g, cg, og, (kh, kw), (sh, sw), (pt, pl, pb, pr), (dh, dw), (h, w), bias)| {
                let fits = h + pt + pb > dh * (kh - 1) && w + pl + pr > dw * (kw - 1);
                fits.then_some((
                    [n, g * cg, h, w],
                    [g * og, cg, kh, kw],
                    [sh, sw],
                    [pt, pl, pb, pr],
                    [dh, dw],
                    g,
                    bias,
                ))
            },
        )
}

proptest! {
    #[test]
    fn conv_equals_im2col_matmul(
        (xs, ws, stride, pad, dil, groups, has_bias) in conv_case(),
        seed in any::<u64>(),
    ) {
        let mut rng = Seeded::new(seed);
        let x = rng.tensor(&xs);
        let w = rng.tensor(&ws);
        let b = rng.tensor(&[ws[0]]);
        let op = conv(stride, pad, dil, groups);
        let out = if has_bias { ev1(&op, &[&x, &w, &b]) } else { ev1(&op, &[&x, &w]) };
        let zero = vec![0.0; ws[0]];
        let bias = if has_bias { f(&b) } else { zero };
        let (shape, want) = conv_im2col(&f(&x), xs, &f(&w), ws, &bias, stride, pad, dil, groups);
        prop_assert_eq!(out.shape(), &shape[..]);
        // both accumulate in f64; only the summation order differs
        assert_close(&f(&out), &want, 1e-6);
    }

    /// A grouped conv equals slicing input and weight per group, running
    /// ordinary convs, and concatenating along channels.
    #[test]
    fn grouped_conv_is_concat_of_group_convs(
        groups in 1usize..4, cg in 1usize..3, og in 1usize..3,
        seed in any::<u64>(),
    ) {
        let mut rng = Seeded::new(seed);
        let x = rng.tensor(&[1, groups * cg, 5, 4]);
        let w = rng.tensor(&[groups * og, cg, 3, 3]);
        let whole = ev1(&conv([1, 2], [1, 1, 1, 0], [1, 1], groups), &[&x, &w]);
        let slice = |t: &Tensor, axis: usize, from: usize, len: usize| {
            ev1(&Op::Slice {
                axes: vec![axis],
                starts: vec![from as i64],
                ends: vec![(from + len) as i64],
                steps: vec![1],
            }, &[t])
        };
        let parts: Vec<Tensor> = (0..groups)
            .map(|g| {
                let xg = slice(&x, 1, g * cg, cg);
                let wg = slice(&w, 0, g * og, og);
                ev1(&conv([1, 2], [1, 1, 1, 0], [1, 1], 1), &[&xg, &wg])
            })
            .collect();
        let refs: Vec<&Tensor> = parts.iter().collect();
        let joined = ev1(&Op::Concat { axis: 1 }, &refs);
        prop_assert_eq!(whole, joined);
    }
}

#[test]
fn matmul_hand_cases() {
    // [[1,2],[3,4]] @ [[5,6],[7,8]] = [[19,22],[43,50]]
    let a = t(&[2, 2], &[1., 2., 3., 4.]);
    let b = t(&[2, 2], &[5., 6., 7., 8.]);
    assert_eq!(f(&ev1(&Op::MatMul, &[&a, &b])), [19., 22., 43., 50.]);
    // rank-1 on either side drops the inserted axis
    let v = t(&[2], &[1., -1.]);
    let vm = ev1(&Op::MatMul, &[&v, &b]);
    assert_eq!((vm.shape(), f(&vm)), (&[2][..], vec![-2., -2.]));
    let mv = ev1(&Op::MatMul, &[&a, &v]);
    assert_eq!((mv.shape(), f(&mv)), (&[2][..], vec![-1., -1.]));
    let vv = ev1(&Op::MatMul, &[&v, &v]);
    assert_eq!((vv.shape(), f(&vv)), (&[][..], vec![2.]));
    // batched @ shared: [2,1,2] @ [2,2]
    let ab = t(&[2, 1, 2], &[1., 0., 0., 1.]);
    let out = ev1(&Op::MatMul, &[&ab, &b]);
    assert_eq!(out.shape(), [2, 1, 2]);
    assert_eq!(f(&out), [5., 6., 7., 8.]);
}

#[test]
fn matmul_empty_batch_broadcasts_to_empty() {
    // numpy: a batch dim of 0 against 1 broadcasts to 0
    let a = t(&[0, 2, 3], &[]);
    let b = t(&[1, 3, 4], &[0.0; 12]);
    let y = ev1(&Op::MatMul, &[&a, &b]);
    assert_eq!(y.shape(), [0, 2, 4]);
    // k = 0: every output element is an empty sum
    let a = t(&[2, 0], &[]);
    let b = t(&[0, 3], &[]);
    assert_eq!(f(&ev1(&Op::MatMul, &[&a, &b])), [0.0; 6]);
}

#[test]
fn matmul_accumulates_in_f64() {
    // In f32, 1e8 + 1 rounds back to 1e8 and the sum comes out 0; the exact
    // (and f64) result is 1.
    let a = t(&[1, 3], &[1e8, 1.0, -1e8]);
    let b = t(&[3, 1], &[1.0, 1.0, 1.0]);
    assert_eq!(f(&ev1(&Op::MatMul, &[&a, &b])), [1.0]);
}

fn batch_shapes() -> impl Strategy<Value = (Vec<usize>, Vec<usize>)> {
    (
        prop::collection::vec(1usize..4, 0..3),
        prop::collection::vec(any::<bool>(), 3),
        prop::collection::vec(any::<bool>(), 3),
        0usize..3,
    )
        .prop_map(|(batch, oa, ob, drop)| {
            let a: Vec<usize> = batch
                .iter()
                .zip(&oa)
                .map(|(&d, &o)| if o { 1 } else { d })
                .collect();
            let b: Vec<usize> = batch
                .iter()
                .zip(&ob)
                .map(|(&d, &o)| if o { 1 } else { d })
                .skip(drop.min(batch.len()))
                .collect();
            (a, b)
        })
}

proptest! {
    /// Batched matmul with broadcast batch dims equals an explicit loop over
    /// output batch indices.
    #[test]
    fn matmul_broadcast_matches_loop(
        (ba, bb) in batch_shapes(), m in 1usize..4, k in 1usize..5, n in 1usize..4,
        seed in any::<u64>(),
    ) {
        let mut rng = Seeded::new(seed);
        let sa: Vec<usize> = ba.iter().copied().chain([m, k]).collect();
        let sb: Vec<usize> = bb.iter().copied().chain([k, n]).collect();
        let (a, b) = (rng.tensor(&sa), rng.tensor(&sb));
        let out = ev1(&Op::MatMul, &[&a, &b]);
        let rank = ba.len().max(bb.len());
        let pad = |s: &[usize]| [vec![1; rank - s.len()], s.to_vec()].concat();
        let (pa, pb) = (pad(&ba), pad(&bb));
        let batch: Vec<usize> = (0..rank).map(|i| pa[i].max(pb[i])).collect();
        let expect_shape: Vec<usize> = batch.iter().copied().chain([m, n]).collect();
        prop_assert_eq!(out.shape(), &expect_shape[..]);
        let (da, db, dout) = (f(&a), f(&b), f(&out));
        let nb: usize = batch.iter().product();
        for bi in 0..nb {
            let mut rem = bi;
            let mut idx = vec![0; rank];
            for d in (0..rank).rev() {
                idx[d] = rem % batch[d];
                rem /= batch[d];
            }
            let ravel = |shape: &[usize]| idx.iter().zip(shape).fold(0, |acc, (&i, &d)| acc * d + if d == 1 { 0 } else { i });
            let (oa, ob) = (ravel(&pa) * m * k, ravel(&pb) * k * n);
            for i in 0..m {
                for j in 0..n {
                    let s: f64 = (0..k).map(|p| f64::from(da[oa + i * k + p]) * f64::from(db[ob + p * n + j])).sum();
                    let got = f64::from(dout[(bi * m + i) * n + j]);
                    prop_assert!((got - s).abs() <= 1e-6 * s.abs().max(1.0), "{} vs {}", got, s);
                }
            }
        }
    }
}

#[test]
fn gemm_alpha_beta_transposes() {
    let gemm = |alpha: f32, beta: f32, ta: bool, tb: bool| Op::Gemm {
        alpha: Float(alpha),
        beta: Float(beta),
        trans_a: ta,
        trans_b: tb,
    };
    let a = t(&[2, 2], &[1., 2., 3., 4.]);
    let b = t(&[2, 2], &[5., 6., 7., 8.]);
    let at = t(&[2, 2], &[1., 3., 2., 4.]);
    let bt = t(&[2, 2], &[5., 7., 6., 8.]);
    let ab = [19., 22., 43., 50.];
    for (x, y, ta, tb) in [
        (&a, &b, false, false),
        (&at, &b, true, false),
        (&a, &bt, false, true),
        (&at, &bt, true, true),
    ] {
        assert_eq!(
            f(&ev1(&gemm(1.0, 1.0, ta, tb), &[x, y])),
            ab,
            "trans {ta} {tb}"
        );
    }
    // alpha·ab + beta·c with c a row vector [n] broadcast over rows
    let c = t(&[2], &[100., 200.]);
    let out = ev1(&gemm(2.0, 0.5, false, false), &[&a, &b, &c]);
    assert_eq!(f(&out), [38. + 50., 44. + 100., 86. + 50., 100. + 100.]);
    // c as a column [m,1]
    let c = t(&[2, 1], &[1., 2.]);
    let out = ev1(&gemm(1.0, 1.0, false, false), &[&a, &b, &c]);
    assert_eq!(f(&out), [20., 23., 45., 52.]);
    // non-square with trans_b, the Linear layer layout: x [1,3] · w[2,3]^T
    let x = t(&[1, 3], &[1., 2., 3.]);
    let w = t(&[2, 3], &[1., 0., 0., 0., 1., 1.]);
    let out = ev1(&gemm(1.0, 1.0, false, true), &[&x, &w]);
    assert_eq!((out.shape(), f(&out)), (&[1, 2][..], vec![1., 5.]));
}
