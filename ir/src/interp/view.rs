//! Strided views: the one piece of index arithmetic every data-movement and
//! broadcasting kernel shares, so that each kernel only has to say which
//! strides it reads with.

use crate::tensor::Tensor;
use crate::types::strides_of;

/// An element type the data-movement ops handle generically (`f32` and
/// `i64`): they move elements without looking at them.
pub(super) trait Elem: Copy + 'static {
    /// The elements of `t`, or `None` when it holds another dtype.
    fn slice(t: &Tensor) -> Option<&[Self]>;
    /// Wraps elements into a tensor.
    fn tensor(shape: Vec<usize>, data: Vec<Self>) -> Tensor;
    /// An f32 attribute (a pad fill value) as this type, if it is exactly
    /// representable.
    fn from_f32_exact(v: f32) -> Option<Self>;
}

impl Elem for f32 {
    fn slice(t: &Tensor) -> Option<&[f32]> {
        t.as_f32()
    }
    fn tensor(shape: Vec<usize>, data: Vec<f32>) -> Tensor {
        Tensor::from_f32(shape, data)
            .expect("interpreter invariant: a kernel produced as many elements as its shape")
    }
    fn from_f32_exact(v: f32) -> Option<f32> {
        Some(v)
    }
}

impl Elem for i64 {
    fn slice(t: &Tensor) -> Option<&[i64]> {
        t.as_i64()
    }
    fn tensor(shape: Vec<usize>, data: Vec<i64>) -> Tensor {
        Tensor::from_i64(shape, data)
            .expect("interpreter invariant: a kernel produced as many elements as its shape")
    }
    fn from_f32_exact(v: f32) -> Option<i64> {
        // Every integral f32 in [-2^63, 2^63) converts exactly.
        const LIMIT: f32 = 9_223_372_036_854_775_808.0;
        (v.fract() == 0.0 && (-LIMIT..LIMIT).contains(&v)).then_some(v as i64)
    }
}

/// The elements of an operand whose dtype shape inference has already
/// checked.
pub(super) fn elems<T: Elem>(t: &Tensor) -> &[T] {
    T::slice(t).expect("interpreter invariant: shape inference checked the operand dtype")
}

/// Row-major strides as signed numbers, for views that step backwards.
pub(super) fn signed_strides(shape: &[usize]) -> Vec<isize> {
    strides_of(shape).into_iter().map(to_isize).collect()
}

/// Strides with which a tensor of shape `from` is read when broadcast to
/// `to` (numpy alignment from the right): broadcast dimensions get stride 0.
/// `from` must broadcast to `to`; shape inference has checked that.
pub(super) fn broadcast_strides(from: &[usize], to: &[usize]) -> Vec<isize> {
    let own = signed_strides(from);
    let lead = to.len() - from.len();
    (0..to.len())
        .map(|i| {
            if i < lead || from[i - lead] == 1 {
                0
            } else {
                own[i - lead]
            }
        })
        .collect()
}

/// A `usize` that indexes memory fits in `isize` (allocations are at most
/// `isize::MAX` bytes).
pub(super) fn to_isize(x: usize) -> isize {
    isize::try_from(x).expect("interpreter invariant: tensor sizes fit in isize")
}

/// The element offsets of a strided view, visited in row-major order of
/// `shape`: the offset of index `i` is `base + Σ i[d]·strides[d]`.
///
/// Holds one counter per axis and allocates nothing per element; the common
/// step (innermost axis not wrapping) is one add.
pub(super) struct Strided<'a> {
    shape: &'a [usize],
    strides: &'a [isize],
    index: Vec<usize>,
    offset: isize,
    remaining: usize,
}

impl<'a> Strided<'a> {
    /// The view of `shape` with the given strides starting at `base`. Every
    /// offset it yields must lie inside the viewed tensor; the callers build
    /// strides from shapes that shape inference checked.
    pub(super) fn new(shape: &'a [usize], strides: &'a [isize], base: isize) -> Strided<'a> {
        debug_assert_eq!(shape.len(), strides.len());
        Strided {
            shape,
            strides,
            index: vec![0; shape.len()],
            offset: base,
            remaining: shape.iter().product(),
        }
    }
}

impl Iterator for Strided<'_> {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        if self.remaining == 0 {
            return None;
        }
        self.remaining -= 1;
        let current = self.offset;
        for d in (0..self.shape.len()).rev() {
            self.index[d] += 1;
            self.offset += self.strides[d];
            if self.index[d] < self.shape[d] {
                break;
            }
            self.offset -= self.strides[d] * to_isize(self.shape[d]);
            self.index[d] = 0;
        }
        Some(
            usize::try_from(current)
                .expect("interpreter invariant: a strided view stays inside its tensor"),
        )
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.remaining, Some(self.remaining))
    }
}

impl ExactSizeIterator for Strided<'_> {}

/// The elements of the strided view `(shape, strides, base)` of `x`, in
/// row-major order: the generic kernel of transpose, slice and expand. The
/// odometer runs over the outer axes only; the innermost axis is a plain
/// loop (a slice copy when it is contiguous).
pub(super) fn copy_view<T: Copy>(
    x: &[T],
    shape: &[usize],
    strides: &[isize],
    base: isize,
) -> Vec<T> {
    let n: usize = shape.iter().product();
    let mut out = Vec::with_capacity(n);
    let Some((&len, outer_shape)) = shape.split_last() else {
        // a scalar view: one element at `base`
        out.push(x[base.unsigned_abs()]);
        return out;
    };
    if n == 0 {
        return out;
    }
    let step = strides[strides.len() - 1];
    for o in Strided::new(outer_shape, &strides[..strides.len() - 1], base) {
        if step == 1 {
            out.extend_from_slice(&x[o..o + len]);
        } else {
            let o = to_isize(o);
            out.extend((0..len).map(|j| {
                let at = usize::try_from(o + to_isize(j) * step)
                    .expect("interpreter invariant: a strided view stays inside its tensor");
                x[at]
            }));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strided_walks_row_major() {
        // A transposed 2x3 matrix: shape [3,2], strides [1,3].
        let offsets: Vec<usize> = Strided::new(&[3, 2], &[1, 3], 0).collect();
        assert_eq!(offsets, vec![0, 3, 1, 4, 2, 5]);
        // Reversed axis of length 4 starting at 3.
        let offsets: Vec<usize> = Strided::new(&[4], &[-1], 3).collect();
        assert_eq!(offsets, vec![3, 2, 1, 0]);
        // Empty view and scalar view.
        assert_eq!(Strided::new(&[2, 0], &[0, 1], 0).count(), 0);
        assert_eq!(Strided::new(&[], &[], 7).collect::<Vec<_>>(), vec![7]);
    }

    #[test]
    fn copy_view_reads_rows_and_columns() {
        let x = [0, 1, 2, 3, 4, 5];
        // the transpose of a 2x3 matrix
        assert_eq!(copy_view(&x, &[3, 2], &[1, 3], 0), [0, 3, 1, 4, 2, 5]);
        // row 1 reversed
        assert_eq!(copy_view(&x, &[1, 3], &[3, -1], 5), [5, 4, 3]);
        assert_eq!(copy_view(&x, &[], &[], 4), [4]);
        assert_eq!(copy_view(&x, &[0, 3], &[3, 1], 0), Vec::<i32>::new());
    }

    #[test]
    fn broadcast_strides_zero_the_broadcast_axes() {
        assert_eq!(broadcast_strides(&[3, 1], &[2, 3, 4]), vec![0, 1, 0]);
        assert_eq!(broadcast_strides(&[2, 3], &[2, 3]), vec![3, 1]);
    }
}
