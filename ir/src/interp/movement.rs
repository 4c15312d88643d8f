//! Data movement: transpose, concat, slice, split, pad, expand and gather,
//! generic over the element type because the ONNX importer folds i64 shape
//! arithmetic with them. (Reshape, squeeze, unsqueeze and flatten move no
//! data and are handled in `mod.rs` by re-labelling the shape.)
//!
//! Affine ops (transpose, slice, expand) are one strided copy of the
//! input with the strides the op implies; the rest copy contiguous runs.

use crate::op::PadMode;
use crate::shape::slice_bounds;

use super::view::{Elem, broadcast_strides, copy_view, signed_strides, to_isize};

/// Output axis `i` is input axis `perm[i]`: read the input with its strides
/// permuted.
pub(super) fn transpose<T: Elem>(x: &[T], shape: &[usize], perm: &[usize]) -> Vec<T> {
    let own = signed_strides(shape);
    let out_shape: Vec<usize> = perm.iter().map(|&p| shape[p]).collect();
    let strides: Vec<isize> = perm.iter().map(|&p| own[p]).collect();
    copy_view(x, &out_shape, &strides, 0)
}

/// Concatenation: for each index of the axes before `axis`, each operand
/// contributes one contiguous run of `shape[axis]·inner` elements.
pub(super) fn concat<T: Elem>(parts: &[(&[T], &[usize])], axis: usize) -> Vec<T> {
    let first = parts[0].1;
    let outer: usize = first[..axis].iter().product();
    let inner: usize = first[axis + 1..].iter().product();
    let total: usize = parts.iter().map(|(d, _)| d.len()).sum();
    let mut out = Vec::with_capacity(total);
    for o in 0..outer {
        for (data, shape) in parts {
            let run = shape[axis] * inner;
            out.extend_from_slice(&data[o * run..][..run]);
        }
    }
    out
}

/// Strided slice: the listed axes start at their clamped start and step by
/// `step` (possibly backwards); see [`crate::Op::Slice`] for the clamping.
pub(super) fn slice<T: Elem>(
    x: &[T],
    shape: &[usize],
    axes: &[usize],
    starts: &[i64],
    ends: &[i64],
    steps: &[i64],
) -> Vec<T> {
    let own = signed_strides(shape);
    let mut out_shape = shape.to_vec();
    let mut strides = own.clone();
    let mut base = 0isize;
    for (i, &a) in axes.iter().enumerate() {
        let (start, _, len) = slice_bounds(shape[a], starts[i], ends[i], steps[i]);
        out_shape[a] = len;
        if len > 0 {
            // A non-empty slice starts inside the axis, so `start` fits.
            let start = isize::try_from(start).expect("clamped slice start fits the axis");
            let step = isize::try_from(steps[i]).unwrap_or(if steps[i] > 0 {
                isize::MAX
            } else {
                isize::MIN
            });
            base += start * own[a];
            // With a single element the step is never taken, and a huge
            // step must not overflow the stride.
            strides[a] = if len == 1 { 0 } else { step * own[a] };
        }
    }
    copy_view(x, &out_shape, &strides, base)
}

/// Split into consecutive pieces along `axis`.
pub(super) fn split<T: Elem>(
    x: &[T],
    shape: &[usize],
    axis: usize,
    sizes: &[usize],
) -> Vec<(Vec<usize>, Vec<T>)> {
    let outer: usize = shape[..axis].iter().product();
    let inner: usize = shape[axis + 1..].iter().product();
    let row = shape[axis] * inner;
    let mut first = 0;
    sizes
        .iter()
        .map(|&s| {
            let mut piece = Vec::with_capacity(outer * s * inner);
            for o in 0..outer {
                piece.extend_from_slice(&x[o * row + first * inner..][..s * inner]);
            }
            first += s;
            let mut ps = shape.to_vec();
            ps[axis] = s;
            (ps, piece)
        })
        .collect()
}

/// Where output coordinate `o` of a padded axis reads from, or `None` for
/// the constant fill. Reflect mirrors about the edge without repeating it
/// (`dcb|abcd|cba`); edge repeats it (`aaa|abcd|ddd`). Shape inference
/// guarantees reflect pads are smaller than the axis and edge pads a
/// non-empty axis.
fn pad_source(o: usize, begin: usize, dim: usize, mode: PadMode) -> Option<usize> {
    let i = to_isize(o) - to_isize(begin);
    let n = to_isize(dim);
    let j = match mode {
        PadMode::Constant => i,
        PadMode::Reflect if i < 0 => -i,
        PadMode::Reflect if i >= n => 2 * (n - 1) - i,
        PadMode::Reflect => i,
        PadMode::Edge => i.clamp(0, n - 1),
    };
    usize::try_from(j).ok().filter(|&j| j < dim)
}

/// Pads every axis (`pads`: all begins, then all ends) with `fill` or by
/// reflecting / repeating the edge. Each axis gets a lookup table from
/// output to input coordinate, computed once.
pub(super) fn pad<T: Elem>(
    x: &[T],
    shape: &[usize],
    pads: &[usize],
    mode: PadMode,
    fill: T,
) -> Vec<T> {
    let r = shape.len();
    let out_shape: Vec<usize> = (0..r).map(|i| pads[i] + shape[i] + pads[r + i]).collect();
    let own = crate::types::strides_of(shape);
    let tables: Vec<Vec<Option<usize>>> = (0..r)
        .map(|i| {
            (0..out_shape[i])
                .map(|o| pad_source(o, pads[i], shape[i], mode).map(|j| j * own[i]))
                .collect()
        })
        .collect();
    let n: usize = out_shape.iter().product();
    let mut out = Vec::with_capacity(n);
    let mut index = vec![0usize; r];
    for _ in 0..n {
        let src = (0..r).try_fold(0usize, |acc, d| tables[d][index[d]].map(|o| acc + o));
        out.push(src.map_or(fill, |s| x[s]));
        for d in (0..r).rev() {
            index[d] += 1;
            if index[d] < out_shape[d] {
                break;
            }
            index[d] = 0;
        }
    }
    out
}

/// Broadcast to `out_shape` (reading size-1 axes with stride 0).
pub(super) fn expand<T: Elem>(x: &[T], shape: &[usize], out_shape: &[usize]) -> Vec<T> {
    let strides = broadcast_strides(shape, out_shape);
    copy_view(x, out_shape, &strides, 0)
}

/// ONNX Gather with constant indices along `axis`: for each index of the
/// axes before `axis`, each index selects one contiguous run of `inner`
/// elements. Negative indices count from the end; shape inference has
/// checked every index is in `[-dim, dim)`.
pub(super) fn gather<T: Elem>(x: &[T], shape: &[usize], axis: usize, indices: &[i64]) -> Vec<T> {
    let dim = shape[axis];
    let outer: usize = shape[..axis].iter().product();
    let inner: usize = shape[axis + 1..].iter().product();
    let rows: Vec<usize> = indices
        .iter()
        .map(|&i| {
            let j = if i < 0 { i + dim as i64 } else { i };
            usize::try_from(j).expect("interpreter invariant: shape inference checked the index")
        })
        .collect();
    let mut out = Vec::with_capacity(outer * rows.len() * inner);
    for o in 0..outer {
        for &j in &rows {
            out.extend_from_slice(&x[(o * dim + j) * inner..][..inner]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pad_sources() {
        // abcd padded by 3 on each side
        let src =
            |mode| -> Vec<Option<usize>> { (0..10).map(|o| pad_source(o, 3, 4, mode)).collect() };
        let s = |v: &[usize]| v.iter().map(|&i| Some(i)).collect::<Vec<_>>();
        assert_eq!(src(PadMode::Reflect), s(&[3, 2, 1, 0, 1, 2, 3, 2, 1, 0]));
        assert_eq!(src(PadMode::Edge), s(&[0, 0, 0, 0, 1, 2, 3, 3, 3, 3]));
        let c = src(PadMode::Constant);
        assert_eq!(&c[3..7], &s(&[0, 1, 2, 3])[..]);
        assert!(c[..3].iter().chain(&c[7..]).all(Option::is_none));
    }
}
