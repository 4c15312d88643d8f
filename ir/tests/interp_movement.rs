//! Interpreter tests for the data-movement ops, in f32 and in i64 (the ONNX
//! importer folds shape arithmetic with them): hand cases and round trips
//! (transpose and its inverse, reshape, split then concat).

mod interp_util;

use interp_util::*;
use kiln_ir::{Float, Op, PadMode, Tensor};
use proptest::prelude::*;

fn transpose(perm: &[usize]) -> Op {
    Op::Transpose {
        perm: perm.to_vec(),
    }
}

fn slice(axes: &[usize], starts: &[i64], ends: &[i64], steps: &[i64]) -> Op {
    Op::Slice {
        axes: axes.to_vec(),
        starts: starts.to_vec(),
        ends: ends.to_vec(),
        steps: steps.to_vec(),
    }
}

#[test]
fn transpose_hand_case() {
    // [[1,2,3],[4,5,6]]^T = [[1,4],[2,5],[3,6]]
    let x = t(&[2, 3], &[1., 2., 3., 4., 5., 6.]);
    let y = ev1(&transpose(&[1, 0]), &[&x]);
    assert_eq!(
        (y.shape(), f(&y)),
        (&[3, 2][..], vec![1., 4., 2., 5., 3., 6.])
    );
    // rank 3: out[i][j][k] = x[k][i][j] for perm [2,0,1]
    let x = ti(&[2, 1, 2], &[1, 2, 3, 4]);
    let y = ev1(&transpose(&[2, 0, 1]), &[&x]);
    assert_eq!((y.shape(), i(&y)), (&[2, 2, 1][..], vec![1, 3, 2, 4]));
}

fn shape_and_perm() -> impl Strategy<Value = (Vec<usize>, Vec<usize>)> {
    prop::collection::vec(1usize..4, 0..5).prop_flat_map(|s| {
        let r = s.len();
        (Just(s), Just((0..r).collect::<Vec<_>>()).prop_shuffle())
    })
}

proptest! {
    #[test]
    fn transpose_then_inverse_is_identity((shape, perm) in shape_and_perm(), seed in any::<u64>()) {
        let x = Seeded::new(seed).tensor(&shape);
        let mut inv = vec![0; perm.len()];
        for (i, &p) in perm.iter().enumerate() {
            inv[p] = i;
        }
        let y = ev1(&transpose(&perm), &[&x]);
        let expect: Vec<usize> = perm.iter().map(|&p| shape[p]).collect();
        prop_assert_eq!(y.shape(), &expect[..]);
        prop_assert_eq!(ev1(&transpose(&inv), &[&y]), x);
    }

    #[test]
    fn reshape_round_trip(shape in prop::collection::vec(1usize..4, 0..5), seed in any::<u64>()) {
        let x = Seeded::new(seed).tensor(&shape);
        let n = x.numel();
        let flat = ev1(&Op::Reshape { shape: vec![n] }, &[&x]);
        prop_assert_eq!(f(&flat), f(&x));
        let back = ev1(&Op::Reshape { shape: shape.clone() }, &[&flat]);
        prop_assert_eq!(back, x);
    }

    #[test]
    fn split_then_concat_is_identity(
        (shape, axis) in prop::collection::vec(1usize..5, 1..4).prop_flat_map(|s| { let r = s.len(); (Just(s), 0..r) }),
        cut in 0usize..5,
        seed in any::<u64>(),
    ) {
        let x = Seeded::new(seed).tensor(&shape);
        let d = shape[axis];
        let first = cut.min(d);
        let sizes = vec![first, d - first];
        let parts = ev(&Op::Split { axis, sizes }, &[&x]);
        prop_assert_eq!(parts.len(), 2);
        prop_assert_eq!(parts[0].shape()[axis], first);
        let refs: Vec<&Tensor> = parts.iter().collect();
        prop_assert_eq!(ev1(&Op::Concat { axis }, &refs), x);
    }
}

#[test]
fn split_and_concat_hand_cases() {
    // [[1,2,3],[4,5,6]] split on axis 1 into [1,2]
    let x = t(&[2, 3], &[1., 2., 3., 4., 5., 6.]);
    let p = ev(
        &Op::Split {
            axis: 1,
            sizes: vec![1, 2],
        },
        &[&x],
    );
    assert_eq!((p[0].shape(), f(&p[0])), (&[2, 1][..], vec![1., 4.]));
    assert_eq!(
        (p[1].shape(), f(&p[1])),
        (&[2, 2][..], vec![2., 3., 5., 6.])
    );
    // concat on axis 0 appends rows; on axis 1 interleaves
    let a = t(&[1, 2], &[1., 2.]);
    let b = t(&[1, 2], &[3., 4.]);
    assert_eq!(
        f(&ev1(&Op::Concat { axis: 0 }, &[&a, &b])),
        [1., 2., 3., 4.]
    );
    let y = ev1(&Op::Concat { axis: 1 }, &[&a, &b, &a]);
    assert_eq!(
        (y.shape(), f(&y)),
        (&[1, 6][..], vec![1., 2., 3., 4., 1., 2.])
    );
}

#[test]
fn slice_steps_and_clamping() {
    let x = ti(&[5], &[0, 1, 2, 3, 4]);
    let s = |st, en, sp| i(&ev1(&slice(&[0], &[st], &[en], &[sp]), &[&x]));
    // negative step from the end through index 0 reverses
    assert_eq!(s(4, -1, -1), [4, 3, 2, 1, 0]);
    // out-of-range start clamps to the last index for negative steps
    assert_eq!(s(100, -100, -2), [4, 2, 0]);
    assert_eq!(s(3, 0, -1), [3, 2, 1]);
    // positive steps clamp end to the length
    assert_eq!(s(1, i64::MAX, 2), [1, 3]);
    assert_eq!(s(3, 1, 1), Vec::<i64>::new());
    // a huge step takes only the first element
    assert_eq!(s(2, 5, i64::MAX), [2]);
    // 2-D: rows reversed, every other column
    let x = t(&[2, 4], &[1., 2., 3., 4., 5., 6., 7., 8.]);
    let y = ev1(&slice(&[0, 1], &[1, 0], &[-1, 4], &[-1, 2]), &[&x]);
    assert_eq!((y.shape(), f(&y)), (&[2, 2][..], vec![5., 7., 1., 3.]));
}

proptest! {
    #[test]
    fn negative_step_slice_reverses(shape in prop::collection::vec(1usize..5, 1..4), axis_pick in 0usize..4, seed in any::<u64>()) {
        let axis = axis_pick % shape.len();
        let x = Seeded::new(seed).tensor(&shape);
        let d = shape[axis] as i64;
        let rev = slice(&[axis], &[d - 1], &[-1], &[-1]);
        let y = ev1(&rev, &[&x]);
        prop_assert_eq!(y.shape(), x.shape());
        // element j along the axis is element d-1-j of the input
        let outer: usize = shape[..axis].iter().product();
        let inner: usize = shape[axis + 1..].iter().product();
        let (dx, dy) = (f(&x), f(&y));
        let n = shape[axis];
        for o in 0..outer {
            for j in 0..n {
                for k in 0..inner {
                    prop_assert_eq!(dy[(o * n + j) * inner + k], dx[(o * n + n - 1 - j) * inner + k]);
                }
            }
        }
        prop_assert_eq!(ev1(&rev, &[&y]), x);
    }
}

fn pad(pads: &[usize], mode: PadMode, value: f32) -> Op {
    Op::Pad {
        pads: pads.to_vec(),
        mode,
        value: Float(value),
    }
}

#[test]
fn pad_modes_one_dimensional() {
    let x = t(&[4], &[1., 2., 3., 4.]);
    let p = |mode, v| f(&ev1(&pad(&[2, 3], mode, v), &[&x]));
    assert_eq!(
        p(PadMode::Constant, -1.),
        [-1., -1., 1., 2., 3., 4., -1., -1., -1.]
    );
    // reflect: dcb|abcd|cba without repeating the edge
    assert_eq!(
        p(PadMode::Reflect, 0.),
        [3., 2., 1., 2., 3., 4., 3., 2., 1.]
    );
    // edge: aaa|abcd|ddd
    assert_eq!(p(PadMode::Edge, 0.), [1., 1., 1., 2., 3., 4., 4., 4., 4.]);
}

#[test]
fn pad_modes_two_dimensional() {
    // [[1,2],[3,4]] padded one row on top and one column on the right
    let x = t(&[2, 2], &[1., 2., 3., 4.]);
    let pads = [1, 0, 0, 1];
    let y = ev1(&pad(&pads, PadMode::Constant, 0.), &[&x]);
    assert_eq!(y.shape(), [3, 3]);
    assert_eq!(f(&y), [0., 0., 0., 1., 2., 0., 3., 4., 0.]);
    let y = ev1(&pad(&pads, PadMode::Reflect, 0.), &[&x]);
    assert_eq!(f(&y), [3., 4., 3., 1., 2., 1., 3., 4., 3.]);
    let y = ev1(&pad(&pads, PadMode::Edge, 0.), &[&x]);
    assert_eq!(f(&y), [1., 2., 2., 1., 2., 2., 3., 4., 4.]);
    // i64 constant pad with an integral fill; a fractional one is an error
    let xi = ti(&[2], &[5, 6]);
    assert_eq!(
        i(&ev1(&pad(&[1, 1], PadMode::Constant, -1.), &[&xi])),
        [-1, 5, 6, -1]
    );
    let e = ev_err(&pad(&[1, 1], PadMode::Constant, 0.5), &[&xi]);
    assert!(e.contains("not an integer"), "{e}");
}

#[test]
fn expand_broadcasts() {
    let x = t(&[2, 1], &[1., 2.]);
    let y = ev1(
        &Op::Expand {
            shape: vec![2, 1, 3],
        },
        &[&x],
    );
    assert_eq!(y.shape(), [2, 2, 3]);
    assert_eq!(f(&y), [1., 1., 1., 2., 2., 2., 1., 1., 1., 2., 2., 2.]);
    let s = ti(&[], &[7]);
    assert_eq!(i(&ev1(&Op::Expand { shape: vec![3] }, &[&s])), [7, 7, 7]);
}

fn gather(axis: usize, indices: &[i64], ishape: &[usize]) -> Op {
    Op::Gather {
        axis,
        indices: indices.to_vec(),
        indices_shape: ishape.to_vec(),
    }
}

#[test]
fn gather_with_negative_and_scalar_indices() {
    let x = t(&[3, 2], &[1., 2., 3., 4., 5., 6.]);
    // rows -1 and 0
    let y = ev1(&gather(0, &[-1, 0], &[2]), &[&x]);
    assert_eq!((y.shape(), f(&y)), (&[2, 2][..], vec![5., 6., 1., 2.]));
    // a scalar index drops the axis: column 1
    let y = ev1(&gather(1, &[1], &[]), &[&x]);
    assert_eq!((y.shape(), f(&y)), (&[3][..], vec![2., 4., 6.]));
    // a 2-D index tensor inserts its shape
    let y = ev1(
        &gather(1, &[0, 1, 1, 0], &[2, 2]),
        &[&t(&[1, 2], &[7., 8.])],
    );
    assert_eq!((y.shape(), f(&y)), (&[1, 2, 2][..], vec![7., 8., 8., 7.]));
    // out-of-range indices are a type error, not a panic
    let e = ev_err(&gather(0, &[3], &[]), &[&x]);
    assert!(e.contains("out of range"), "{e}");
}

/// The shape arithmetic an ONNX export of `x.view(B, -1)` performs, folded
/// op by op on i64 tensors: Shape -> Gather(0) -> Unsqueeze -> Concat.
#[test]
fn i64_shape_tensor_folding() {
    let shape = ti(&[4], &[1, 64, 16, 16]);
    let batch = ev1(&gather(0, &[0], &[]), &[&shape]);
    assert_eq!((batch.shape(), i(&batch)), (&[][..], vec![1]));
    let b1 = ev1(&Op::Unsqueeze { axes: vec![0] }, &[&batch]);
    assert_eq!((b1.shape(), i(&b1)), (&[1][..], vec![1]));
    let rest = ev1(&slice(&[0], &[1], &[i64::MAX], &[1]), &[&shape]);
    assert_eq!(i(&rest), [64, 16, 16]);
    let minus1 = ti(&[1], &[-1]);
    let target = ev1(&Op::Concat { axis: 0 }, &[&b1, &minus1]);
    assert_eq!(i(&target), [1, -1]);
    // reverse, squeeze, reshape, transpose, split, expand, flatten on i64
    let rev = ev1(&slice(&[0], &[i64::MAX], &[i64::MIN], &[-1]), &[&shape]);
    assert_eq!(i(&rev), [16, 16, 64, 1]);
    let sq = ev1(&Op::Squeeze { axes: vec![0] }, &[&b1]);
    assert_eq!((sq.shape(), i(&sq)), (&[][..], vec![1]));
    let m = ev1(&Op::Reshape { shape: vec![2, 2] }, &[&shape]);
    assert_eq!(i(&ev1(&transpose(&[1, 0]), &[&m])), [1, 16, 64, 16]);
    let parts = ev(
        &Op::Split {
            axis: 0,
            sizes: vec![1, 3],
        },
        &[&shape],
    );
    assert_eq!((i(&parts[0]), i(&parts[1])), (vec![1], vec![64, 16, 16]));
    let e = ev1(&Op::Expand { shape: vec![2, 1] }, &[&minus1]);
    assert_eq!(i(&e), [-1, -1]);
    let fl = ev1(&Op::Flatten { axis: 0 }, &[&m]);
    assert_eq!((fl.shape(), i(&fl)), (&[1, 4][..], vec![1, 64, 16, 16]));
}

#[test]
fn flatten_squeeze_unsqueeze_relabel_the_shape() {
    let x = t(&[2, 1, 3], &[1., 2., 3., 4., 5., 6.]);
    let y = ev1(&Op::Flatten { axis: 2 }, &[&x]);
    assert_eq!((y.shape(), f(&y)), (&[2, 3][..], f(&x)));
    let y = ev1(&Op::Flatten { axis: 0 }, &[&x]);
    assert_eq!(y.shape(), [1, 6]);
    let y = ev1(&Op::Squeeze { axes: vec![1] }, &[&x]);
    assert_eq!(y.shape(), [2, 3]);
    let y = ev1(&Op::Unsqueeze { axes: vec![0, 4] }, &[&x]);
    assert_eq!((y.shape(), f(&y)), (&[1, 2, 1, 3, 1][..], f(&x)));
}
