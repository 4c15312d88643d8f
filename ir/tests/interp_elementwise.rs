//! Interpreter tests for the element-wise ops: unary, binary with
//! broadcasting, clip, hard-sigmoid and cast, in f32 and i64. Expected values
//! come from the op definitions, worked by hand or taken from reference
//! tables (erf, the normal CDF).

mod interp_util;

use interp_util::*;
use kiln_ir::{BinaryOp, DType, Float, Op, UnaryOp};
use proptest::prelude::*;

fn un(u: UnaryOp, data: &[f32]) -> Vec<f32> {
    f(&ev1(&Op::Unary(u), &[&t(&[data.len()], data)]))
}

fn bin(b: BinaryOp, x: &[f32], y: &[f32]) -> Vec<f32> {
    f(&ev1(
        &Op::Binary(b),
        &[&t(&[x.len()], x), &t(&[y.len()], y)],
    ))
}

#[test]
fn piecewise_linear_unaries() {
    assert_eq!(un(UnaryOp::Relu, &[-1.5, 0.0, 2.5]), [0.0, 0.0, 2.5]);
    assert_eq!(un(UnaryOp::Relu6, &[-1.0, 3.0, 7.0]), [0.0, 3.0, 6.0]);
    assert_eq!(un(UnaryOp::Neg, &[-1.0, 2.0]), [1.0, -2.0]);
    assert_eq!(un(UnaryOp::Abs, &[-1.5, 2.0]), [1.5, 2.0]);
    assert_eq!(un(UnaryOp::Identity, &[-1.5, 2.0]), [-1.5, 2.0]);
    assert_eq!(un(UnaryOp::Reciprocal, &[4.0, -0.5]), [0.25, -2.0]);
    // hard_swish = x·relu6(x+3)/6: 0 below -3, x above 3, 1·4/6 at 1
    assert_close(
        &un(UnaryOp::HardSwish, &[-4.0, -3.0, 1.0, 3.0, 5.0]),
        &[0.0, 0.0, 4.0 / 6.0, 3.0, 5.0],
        1e-7,
    );
}

#[test]
fn transcendental_unaries() {
    let ln3 = 3f32.ln();
    // sigmoid(ln 3) = 1 / (1 + 1/3) = 3/4
    assert_close(&un(UnaryOp::Sigmoid, &[0.0, ln3]), &[0.5, 0.75], 1e-7);
    // tanh(ln 2) = (2 - 1/2) / (2 + 1/2) = 0.6
    assert_close(&un(UnaryOp::Tanh, &[0.0, 2f32.ln()]), &[0.0, 0.6], 1e-7);
    assert_close(
        &un(UnaryOp::Exp, &[0.0, 1.0]),
        &[1.0, std::f64::consts::E],
        1e-7,
    );
    assert_close(
        &un(UnaryOp::Log, &[1.0, 8.0]),
        &[0.0, 3.0 * 2f64.ln()],
        1e-7,
    );
    assert_close(
        &un(UnaryOp::Sqrt, &[4.0, 2.0]),
        &[2.0, std::f64::consts::SQRT_2],
        1e-7,
    );
    // silu(1) = 1/(1+e^-1), silu(2) = 2/(1+e^-2)
    assert_close(
        &un(UnaryOp::Silu, &[0.0, 1.0, 2.0]),
        &[0.0, 0.7310585786300049, 1.7615941559557646],
        1e-7,
    );
}

#[test]
fn erf_and_gelu_match_tables() {
    // erf(1) = 0.8427007929..., erf(0.5) = 0.5204998778..., odd function
    assert_close(
        &un(UnaryOp::Erf, &[0.0, 0.5, 1.0, -1.0, -2.0]),
        &[
            0.0,
            0.5204998778130465,
            0.8427007929497149,
            -0.8427007929497149,
            -0.9953222650189527,
        ],
        1e-7,
    );
    // exact gelu(x) = x·Φ(x): Φ(1) = 0.8413447460..., Φ(-1) = 0.1586552539...
    assert_close(
        &un(UnaryOp::Gelu, &[0.0, 1.0, -1.0]),
        &[0.0, 0.8413447460685429, -0.15865525393145707],
        1e-7,
    );
    // tanh form: 0.5·x·(1 + tanh(sqrt(2/pi)·(x + 0.044715x^3)))
    assert_close(
        &un(UnaryOp::GeluTanh, &[0.0, 1.0, -0.5]),
        &[0.0, 0.8411919906082768, -0.15428599017485606],
        1e-7,
    );
}

#[test]
fn nan_propagates_through_max_like_ops() {
    for u in [UnaryOp::Relu, UnaryOp::Relu6] {
        assert!(un(u, &[f32::NAN])[0].is_nan(), "{}", u.name());
    }
    assert!(bin(BinaryOp::Max, &[f32::NAN], &[1.0])[0].is_nan());
    assert!(bin(BinaryOp::Min, &[1.0], &[f32::NAN])[0].is_nan());
    let clip = Op::Clip {
        min: Float(0.0),
        max: Float(1.0),
    };
    assert!(f(&ev1(&clip, &[&t(&[1], &[f32::NAN])]))[0].is_nan());
}

#[test]
fn binary_ops_on_equal_shapes() {
    let (x, y) = ([6.0, -3.0, 2.0], [4.0, 2.0, 0.5]);
    assert_eq!(bin(BinaryOp::Add, &x, &y), [10.0, -1.0, 2.5]);
    assert_eq!(bin(BinaryOp::Sub, &x, &y), [2.0, -5.0, 1.5]);
    assert_eq!(bin(BinaryOp::Mul, &x, &y), [24.0, -6.0, 1.0]);
    assert_eq!(bin(BinaryOp::Div, &x, &y), [1.5, -1.5, 4.0]);
    assert_eq!(bin(BinaryOp::Max, &x, &y), [6.0, 2.0, 2.0]);
    assert_eq!(bin(BinaryOp::Min, &x, &y), [4.0, -3.0, 0.5]);
    assert_eq!(
        bin(BinaryOp::Pow, &[2.0, 4.0, 9.0], &[3.0, 0.5, -0.5]),
        [8.0, 2.0, 1.0 / 3.0]
    );
    // IEEE: x/0 is infinite
    assert_eq!(bin(BinaryOp::Div, &[1.0], &[0.0]), [f32::INFINITY]);
}

#[test]
fn binary_broadcasts_hand_case() {
    // [2,1] + [3] -> [2,3]: out[i][j] = a[i] + b[j]
    let a = t(&[2, 1], &[10.0, 20.0]);
    let b = t(&[3], &[1.0, 2.0, 3.0]);
    let out = ev1(&Op::Binary(BinaryOp::Add), &[&a, &b]);
    assert_eq!(out.shape(), [2, 3]);
    assert_eq!(f(&out), [11.0, 12.0, 13.0, 21.0, 22.0, 23.0]);
    // scalar on the left: 1 - b
    let one = t(&[], &[1.0]);
    let out = ev1(&Op::Binary(BinaryOp::Sub), &[&one, &b]);
    assert_eq!(f(&out), [0.0, -1.0, -2.0]);
}

/// Strategy: two shapes that broadcast with each other, built from a common
/// output shape by setting some dims to 1 and dropping leading dims.
fn broadcast_pair() -> impl Strategy<Value = (Vec<usize>, Vec<usize>)> {
    prop::collection::vec(1usize..4, 0..5).prop_flat_map(|out| {
        let r = out.len();
        (
            Just(out),
            prop::collection::vec(any::<bool>(), r),
            prop::collection::vec(any::<bool>(), r),
            0..=r,
            0..=r,
        )
            .prop_map(|(out, ones_a, ones_b, drop_a, drop_b)| {
                let mk = |ones: &[bool], drop: usize| -> Vec<usize> {
                    out.iter()
                        .zip(ones)
                        .map(|(&d, &o)| if o { 1 } else { d })
                        .skip(drop)
                        .collect()
                };
                (mk(&ones_a, drop_a), mk(&ones_b, drop_b))
            })
    })
}

proptest! {
    /// Broadcast `sub` equals an explicit loop over output indices that
    /// maps each to its operand elements by numpy's rule.
    #[test]
    fn broadcast_matches_explicit_loop((sa, sb) in broadcast_pair(), seed in any::<u64>()) {
        let mut rng = Seeded::new(seed);
        let (a, b) = (rng.tensor(&sa), rng.tensor(&sb));
        let out = ev1(&Op::Binary(BinaryOp::Sub), &[&a, &b]);
        let rank = sa.len().max(sb.len());
        let pad = |s: &[usize]| -> Vec<usize> {
            let mut v = vec![1; rank - s.len()];
            v.extend_from_slice(s);
            v
        };
        let (pa, pb) = (pad(&sa), pad(&sb));
        let os: Vec<usize> = (0..rank).map(|i| pa[i].max(pb[i])).collect();
        prop_assert_eq!(out.shape(), &os[..]);
        let (da, db, dout) = (f(&a), f(&b), f(&out));
        for (flat, &got) in dout.iter().enumerate() {
            // unravel the output index, then ravel into each operand
            let mut rem = flat;
            let mut idx = vec![0; rank];
            for d in (0..rank).rev() {
                idx[d] = rem % os[d];
                rem /= os[d];
            }
            let ravel = |shape: &[usize]| {
                idx.iter().zip(shape).fold(0, |acc, (&k, &dim)| acc * dim + if dim == 1 { 0 } else { k })
            };
            let want = f64::from(da[ravel(&pa)]) - f64::from(db[ravel(&pb)]);
            prop_assert_eq!(got, want as f32);
        }
    }
}

#[test]
fn clip_and_hard_sigmoid() {
    let clip = Op::Clip {
        min: Float(-1.0),
        max: Float(2.0),
    };
    let x = t(&[4], &[-3.0, -0.5, 1.5, 9.0]);
    assert_eq!(f(&ev1(&clip, &[&x])), [-1.0, -0.5, 1.5, 2.0]);
    // PyTorch hardsigmoid: clamp(x/6 + 1/2, 0, 1)
    let hs = Op::HardSigmoid {
        alpha: Float(1.0 / 6.0),
        beta: Float(0.5),
    };
    let x = t(&[5], &[-4.0, -3.0, 0.0, 1.5, 4.0]);
    assert_close(&f(&ev1(&hs, &[&x])), &[0.0, 0.0, 0.5, 0.75, 1.0], 1e-7);
}

fn ibin(b: BinaryOp, x: &[i64], y: &[i64]) -> Result<Vec<i64>, String> {
    kiln_ir::interp::eval(&Op::Binary(b), &[&ti(&[x.len()], x), &ti(&[y.len()], y)])
        .map(|v| i(&v[0]))
}

#[test]
fn i64_arithmetic() {
    let (x, y) = ([7, -7, 7, -7, 0], [2, 2, -2, -2, 5]);
    assert_eq!(ibin(BinaryOp::Add, &x, &y).unwrap(), [9, -5, 5, -9, 5]);
    assert_eq!(ibin(BinaryOp::Sub, &x, &y).unwrap(), [5, -9, 9, -5, -5]);
    assert_eq!(ibin(BinaryOp::Mul, &x, &y).unwrap(), [14, -14, -14, 14, 0]);
    // truncation toward zero, not floor: -7/2 = -3
    assert_eq!(ibin(BinaryOp::Div, &x, &y).unwrap(), [3, -3, -3, 3, 0]);
    assert_eq!(ibin(BinaryOp::Max, &x, &y).unwrap(), [7, 2, 7, -2, 5]);
    assert_eq!(ibin(BinaryOp::Min, &x, &y).unwrap(), [2, -7, -2, -7, 0]);
    // broadcasting a scalar shape value: [1,3,224,224] / 2 (a typical
    // ONNX shape computation)
    let shape = ti(&[4], &[1, 3, 224, 224]);
    let two = ti(&[], &[2]);
    let out = ev1(&Op::Binary(BinaryOp::Div), &[&shape, &two]);
    assert_eq!(i(&out), [0, 1, 112, 112]);
    let un = |u, d: &[i64]| i(&ev1(&Op::Unary(u), &[&ti(&[d.len()], d)]));
    assert_eq!(un(UnaryOp::Neg, &[3, -4]), [-3, 4]);
    assert_eq!(un(UnaryOp::Abs, &[3, -4]), [3, 4]);
    assert_eq!(un(UnaryOp::Identity, &[3, -4]), [3, -4]);
}

#[test]
fn i64_errors_are_errors_not_panics() {
    let e = ibin(BinaryOp::Div, &[1, 2], &[1, 0]).unwrap_err();
    assert!(e.contains("division by zero"), "{e}");
    let e = ibin(BinaryOp::Div, &[i64::MIN], &[-1]).unwrap_err();
    assert!(e.contains("overflow"), "{e}");
    let e = ibin(BinaryOp::Add, &[i64::MAX], &[1]).unwrap_err();
    assert!(e.contains("overflow"), "{e}");
    let e = ibin(BinaryOp::Mul, &[i64::MAX], &[2]).unwrap_err();
    assert!(e.contains("overflow"), "{e}");
    let e = ev_err(&Op::Unary(UnaryOp::Neg), &[&ti(&[1], &[i64::MIN])]);
    assert!(e.contains("overflow"), "{e}");
    // ops defined on f32 only reject i64 through type checking
    let e = ev_err(&Op::Unary(UnaryOp::Exp), &[&ti(&[1], &[1])]);
    assert!(e.contains("f32"), "{e}");
    let e = ibin(BinaryOp::Pow, &[2], &[2]).unwrap_err();
    assert!(e.contains("f32"), "{e}");
    // mixed dtypes
    let e = ev_err(
        &Op::Binary(BinaryOp::Add),
        &[&ti(&[1], &[1]), &t(&[1], &[1.0])],
    );
    assert!(e.contains("dtypes differ"), "{e}");
}

#[test]
fn cast_truncates_toward_zero() {
    let to_i = Op::Cast { to: DType::I64 };
    let x = t(&[6], &[1.9, -1.9, 0.5, -0.5, 3.0, -1e9]);
    assert_eq!(i(&ev1(&to_i, &[&x])), [1, -1, 0, 0, 3, -1_000_000_000]);
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 1e19, -1e19] {
        let e = ev_err(&to_i, &[&t(&[2], &[0.0, bad])]);
        assert!(e.contains("element 1"), "{bad}: {e}");
    }
    let to_f = Op::Cast { to: DType::F32 };
    // 2^24 + 1 is the first integer f32 cannot hold; ties go to even (2^24)
    let x = ti(&[3], &[3, -2, (1 << 24) + 1]);
    assert_eq!(f(&ev1(&to_f, &[&x])), [3.0, -2.0, 16_777_216.0]);
    // same-type casts are the identity
    assert_eq!(i(&ev1(&to_i, &[&ti(&[1], &[5])])), [5]);
    assert_eq!(f(&ev1(&to_f, &[&t(&[1], &[0.25])])), [0.25]);
}

#[test]
fn every_unary_op_keeps_the_shape() {
    let x = t(&[2, 1, 3], &[0.5, 1.0, 1.5, 2.0, 2.5, 3.0]);
    for u in UnaryOp::ALL {
        let out = ev1(&Op::Unary(u), &[&x]);
        assert_eq!(out.shape(), [2, 1, 3], "{}", u.name());
    }
}
