//! Layout views: what a chain of reshapes and transposes does to a tensor,
//! as strided factors over its base.
//!
//! Attention and bridge matchers must recognise "the head-split queries" or
//! "the flattened feature map, per head, transposed" whatever sequence of
//! reshape / transpose / squeeze / flatten an exporter wrote. Rather than
//! enumerate spellings, a class's [`View`]s describe it as a base class plus,
//! for every output axis, a list of `(size, stride)` factors into the base's
//! row-major data. Two spellings that index the same elements in the same
//! order have equal normalised views, so a matcher builds the view it
//! expects from the base (with [`View::reshape`] / [`View::transpose`]) and
//! compares.

use std::collections::HashMap;

use egg::Id;
use kiln_ir::op::Op;
use kiln_ir::types::strides_of;

use crate::lang::KGraph;

/// A strided view of a base class (see the module docs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct View {
    /// the class whose data is indexed
    pub base: Id,
    /// per output axis: `(size, stride)` factors, outermost first
    pub dims: Vec<Vec<(usize, usize)>>,
}

impl View {
    /// The identity view of a base of shape `shape`.
    pub fn contiguous(base: Id, shape: &[usize]) -> View {
        let strides = strides_of(shape);
        View {
            base,
            dims: shape
                .iter()
                .zip(strides)
                .map(|(&n, s)| vec![(n, s)])
                .collect(),
        }
        .normalised()
    }

    /// The view's shape.
    pub fn shape(&self) -> Vec<usize> {
        self.dims
            .iter()
            .map(|f| f.iter().map(|p| p.0).product())
            .collect()
    }

    /// The view after `transpose {perm}`, or `None` if `perm` is not a
    /// permutation of the axes.
    pub fn transpose(&self, perm: &[usize]) -> Option<View> {
        if perm.len() != self.dims.len() {
            return None;
        }
        let dims = perm
            .iter()
            .map(|&p| self.dims.get(p).cloned())
            .collect::<Option<Vec<_>>>()?;
        Some(View {
            base: self.base,
            dims,
        })
    }

    /// The view after `reshape {shape}`, or `None` when the new axes cut a
    /// factor in a way no strided view can express.
    pub fn reshape(&self, shape: &[usize]) -> Option<View> {
        // Flatten to one factor list, merging factors that are contiguous
        // with each other (a plain reshape of contiguous data is one factor).
        let mut factors: std::collections::VecDeque<(usize, usize)> =
            std::collections::VecDeque::new();
        for &(n, s) in self.dims.iter().flatten().filter(|f| f.0 != 1) {
            match factors.back_mut() {
                Some(last) if last.1 == n * s => *last = (last.0 * n, s),
                _ => factors.push_back((n, s)),
            }
        }
        let mut dims = Vec::with_capacity(shape.len());
        for &want in shape {
            let mut need = want;
            let mut dim = Vec::new();
            while need > 1 {
                let (n, s) = factors.pop_front()?;
                if need.is_multiple_of(n) {
                    dim.push((n, s));
                    need /= n;
                } else if n.is_multiple_of(need) {
                    // split (n, s) into an outer (need, s·n/need) for this
                    // axis and an inner (n/need, s) left for the next
                    dim.push((need, s * (n / need)));
                    factors.push_front((n / need, s));
                    need = 1;
                } else {
                    return None;
                }
            }
            dims.push(dim);
        }
        if !factors.is_empty() {
            return None;
        }
        Some(
            View {
                base: self.base,
                dims,
            }
            .normalised(),
        )
    }

    /// The view after a movement op, if it is one this module understands.
    pub fn apply(&self, op: &Op, out_shape: &[usize]) -> Option<View> {
        match op {
            Op::Transpose { perm } => self.transpose(perm),
            Op::Reshape { .. } | Op::Squeeze { .. } | Op::Unsqueeze { .. } | Op::Flatten { .. } => {
                self.reshape(out_shape)
            }
            _ => None,
        }
    }

    /// Drops size-1 factors and merges adjacent factors that are contiguous
    /// with each other, so equal indexings compare equal.
    fn normalised(mut self) -> View {
        for dim in &mut self.dims {
            dim.retain(|f| f.0 != 1);
            let mut merged: Vec<(usize, usize)> = Vec::with_capacity(dim.len());
            for &(n, s) in dim.iter() {
                match merged.last_mut() {
                    Some(last) if last.1 == n * s => *last = (last.0 * n, s),
                    _ => merged.push((n, s)),
                }
            }
            *dim = merged;
        }
        self
    }
}

/// Movement ops a view can see through.
pub fn is_movement(op: &Op) -> bool {
    matches!(
        op,
        Op::Transpose { .. }
            | Op::Reshape { .. }
            | Op::Squeeze { .. }
            | Op::Unsqueeze { .. }
            | Op::Flatten { .. }
    )
}

/// Every view of class `id` through chains of movement e-nodes (at most
/// `depth` deep), including the identity view of the class itself and of
/// every class passed on the way. Bounded so that a class with many
/// equivalent spellings cannot make matching expensive.
///
/// The views of each (class, depth) are computed once per call: a class
/// whose movement e-nodes lead back to itself (two transposes of a
/// `[1,1,1,1]` tensor are both the identity, so the class holds a dozen
/// spellings of itself) made the walk exponential in the depth — 15 s of
/// saturation for a two-node graph, found by the `jit_vs_interp` fuzz
/// target. The memo returns exactly what the walk would.
pub fn views(eg: &KGraph, id: Id, depth: usize) -> Vec<View> {
    views_memo(eg, id, depth, &mut HashMap::new())
}

fn views_memo(
    eg: &KGraph,
    id: Id,
    depth: usize,
    memo: &mut HashMap<(Id, usize), Vec<View>>,
) -> Vec<View> {
    let id = eg.find(id);
    if let Some(v) = memo.get(&(id, depth)) {
        return v.clone();
    }
    let mut out = vec![View::contiguous(id, &eg[id].data.ty().shape)];
    if depth > 0 {
        let shape = eg[id].data.ty().shape.clone();
        'nodes: for n in &eg[id].nodes {
            let Some(op) = n.as_op().filter(|op| is_movement(op)) else {
                continue;
            };
            for v in views_memo(eg, n.args[0], depth - 1, memo) {
                if let Some(w) = v.apply(op, &shape)
                    && !out.contains(&w)
                {
                    out.push(w);
                }
                if out.len() >= 32 {
                    break 'nodes;
                }
            }
        }
    }
    memo.insert((id, depth), out.clone());
    out
}

/// The depth of movement chains matchers look through.
pub const DEPTH: usize = 6;

/// Whether class `id` is the view `want` (same base, same indexing).
pub fn is_view(eg: &KGraph, id: Id, want: &View) -> bool {
    views(eg, id, DEPTH).contains(want)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Id {
        Id::from(0)
    }

    #[test]
    fn head_split_spellings_agree() {
        // [N=1, T=6, D=8] -> [1,6,2,4] -> transpose [0,2,1,3]
        let v = View::contiguous(base(), &[1, 6, 8]);
        let a = v
            .reshape(&[1, 6, 2, 4])
            .unwrap()
            .transpose(&[0, 2, 1, 3])
            .unwrap();
        // the same through a 2-D reshape first
        let b = v
            .reshape(&[6, 8])
            .unwrap()
            .reshape(&[6, 2, 4])
            .unwrap()
            .transpose(&[1, 0, 2])
            .unwrap()
            .reshape(&[1, 2, 6, 4])
            .unwrap();
        assert_eq!(a, b);
        assert_eq!(a.shape(), [1, 2, 6, 4]);
        // a different split is different
        let c = v
            .reshape(&[1, 6, 4, 2])
            .unwrap()
            .transpose(&[0, 2, 1, 3])
            .unwrap();
        assert_ne!(a.dims, c.dims);
    }

    #[test]
    fn transposes_cancel_and_bad_reshapes_fail() {
        let v = View::contiguous(base(), &[2, 3, 4]);
        let t = v
            .transpose(&[2, 0, 1])
            .unwrap()
            .transpose(&[1, 2, 0])
            .unwrap();
        assert_eq!(t, v);
        // merging transposed axes keeps both factors in one axis
        let t = v.transpose(&[0, 2, 1]).unwrap();
        let m = t.reshape(&[2, 12]).unwrap();
        assert_eq!(m.shape(), [2, 12]);
        assert_eq!(m.dims[1], vec![(4, 1), (3, 4)]);
        // contiguous data reshapes freely
        assert_eq!(v.reshape(&[3, 8]).unwrap().shape(), [3, 8]);
        // an axis that straddles two factors unevenly is not a strided view
        assert!(t.reshape(&[2, 3, 4]).is_none());
    }
}
