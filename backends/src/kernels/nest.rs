//! Strided loop nests: the iteration scheme shared by element-wise ops,
//! broadcasting, copies and fills.
//!
//! A nest walks an output of shape `dims` (row-major) and, for each operand,
//! an affine view `offset + Σ idx_d · stride_d` (strides may be 0 for
//! broadcast or negative for reversed slices). Dimensions that are contiguous
//! for every operand are merged first, so most element-wise ops become one
//! flat loop. The innermost dimension is cut into chunks; a unit of the
//! parallel range is one (outer index, chunk) pair. The op-specific body
//! gets the operand pointers at the start of a chunk and its static length.

use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{InstBuilder, Value};

use crate::codegen::Emitter;

/// Innermost elements per unit: large enough to amortise the per-unit index
/// arithmetic, small enough to balance two threads on mid-sized tensors.
pub(crate) const CHUNK: usize = 4096;

/// An affine loop nest over several operands. Operand 0 is conventionally
/// the output.
#[derive(Clone, Debug)]
pub(crate) struct Nest {
    /// loop extents, innermost last (never empty)
    pub dims: Vec<usize>,
    /// per operand: stride of each dim, in elements
    pub strides: Vec<Vec<i64>>,
    /// per operand: offset of element 0, in elements
    pub offsets: Vec<i64>,
    /// innermost elements per unit
    pub chunk: usize,
}

/// Row-major strides of `shape`, in elements.
pub(crate) fn contiguous(shape: &[usize]) -> Vec<i64> {
    kiln_ir::types::strides_of(shape)
        .into_iter()
        .map(|s| s as i64)
        .collect()
}

/// Strides that read `shape` (right-aligned) as broadcast to `out`.
pub(crate) fn broadcast_strides(shape: &[usize], out: &[usize]) -> Vec<i64> {
    let own = contiguous(shape);
    let lead = out.len() - shape.len();
    (0..out.len())
        .map(|d| {
            if d < lead || shape[d - lead] == 1 {
                0
            } else {
                own[d - lead]
            }
        })
        .collect()
}

impl Nest {
    /// A nest over `dims` with the given per-operand strides, merged.
    pub fn new(dims: &[usize], strides: Vec<Vec<i64>>, offsets: Vec<i64>) -> Nest {
        let mut n = Nest {
            dims: dims.to_vec(),
            strides,
            offsets,
            chunk: CHUNK,
        };
        n.simplify();
        n
    }

    /// Drops size-1 dims and merges dims that are contiguous for every operand.
    fn simplify(&mut self) {
        let keep: Vec<usize> = (0..self.dims.len())
            .filter(|&d| self.dims[d] != 1)
            .collect();
        let mut dims: Vec<usize> = keep.iter().map(|&d| self.dims[d]).collect();
        let mut strides: Vec<Vec<i64>> = self
            .strides
            .iter()
            .map(|s| keep.iter().map(|&d| s[d]).collect())
            .collect();
        let mut d = dims.len();
        while d >= 2 {
            let (a, b) = (d - 2, d - 1);
            if strides.iter().all(|s| s[a] == s[b] * dims[b] as i64) {
                dims[b] *= dims[a];
                dims.remove(a);
                for s in &mut strides {
                    s.remove(a);
                }
            }
            d -= 1;
        }
        if dims.is_empty() {
            dims.push(1);
            for s in &mut strides {
                s.push(0);
            }
        }
        self.dims = dims;
        self.strides = strides;
    }

    /// Total elements.
    pub fn numel(&self) -> usize {
        self.dims.iter().product()
    }

    /// Innermost extent.
    pub fn inner(&self) -> usize {
        *self.dims.last().unwrap_or(&1)
    }

    /// Innermost stride of operand `k`.
    pub fn inner_stride(&self, k: usize) -> i64 {
        *self.strides[k].last().unwrap_or(&0)
    }

    /// Units of the parallel range (0 for an empty tensor).
    pub fn units(&self) -> usize {
        self.units_blocked(1, self.chunk)
    }

    /// Units when each unit covers a block of the trailing `k` dims with
    /// the outermost of them cut into chunks of `chunk` (see
    /// [`Nest::emit_blocked`]).
    pub fn units_blocked(&self, k: usize, chunk: usize) -> usize {
        if self.numel() == 0 {
            return 0;
        }
        let r = self.dims.len();
        self.dims[..r - k].iter().product::<usize>() * self.dims[r - k].div_ceil(chunk).max(1)
    }

    /// Emits units `[begin, end)` ∩ `[first, first + units)` of this nest;
    /// `bases` are the operands' base addresses. `body(e, ptrs, len)` handles
    /// one chunk of `len` innermost elements starting at `ptrs`.
    pub fn emit(
        &self,
        e: &mut Emitter,
        bases: &[Value],
        begin: Value,
        end: Value,
        first: usize,
        body: &mut dyn FnMut(&mut Emitter, &[Value], usize),
    ) {
        self.emit_blocked(e, bases, begin, end, first, 1, self.chunk, body);
    }

    /// Like [`Nest::emit`], but a unit is a block of the trailing `k` dims
    /// (`1 ≤ k ≤ dims.len()`), with dim `dims.len() - k` cut into chunks of
    /// `chunk`: `body(e, ptrs, len)` gets the operands' addresses at the
    /// block's start and the chunk's length `len` along that dim, and walks
    /// the block itself. Copies whose innermost dim is tiny use it so that
    /// the per-unit index arithmetic is paid per block, not per few elements.
    #[allow(clippy::too_many_arguments)]
    pub fn emit_blocked(
        &self,
        e: &mut Emitter,
        bases: &[Value],
        begin: Value,
        end: Value,
        first: usize,
        k: usize,
        chunk: usize,
        body: &mut dyn FnMut(&mut Emitter, &[Value], usize),
    ) {
        let units = self.units_blocked(k, chunk);
        if units == 0 {
            return;
        }
        let r = self.dims.len();
        // the chunked dim
        let cd = r - k;
        let nch = self.dims[cd].div_ceil(chunk).max(1);
        let last_len = self.dims[cd] - (nch - 1) * chunk;
        e.sub_range(begin, end, first, first + units, |e, u| {
            let u = e.b.ins().iadd_imm_s(u, -(first as i64));
            let (mut o, c) = if nch > 1 {
                let n = e.ic(nch as i64);
                (e.b.ins().udiv(u, n), Some(e.b.ins().urem(u, n)))
            } else {
                (u, None)
            };
            let mut off: Vec<Value> = self
                .offsets
                .iter()
                .zip(bases)
                .map(|(&k, &b)| e.off(b, 4 * k))
                .collect();
            for d in (0..cd).rev() {
                let idx = if d == 0 {
                    o
                } else {
                    let n = e.ic(self.dims[d] as i64);
                    let i = e.b.ins().urem(o, n);
                    o = e.b.ins().udiv(o, n);
                    i
                };
                for (k, p) in off.iter_mut().enumerate() {
                    *p = e.index(*p, idx, 4 * self.strides[k][d]);
                }
            }
            if let Some(c) = c {
                let start = e.b.ins().imul_imm_s(c, chunk as i64);
                for (k, p) in off.iter_mut().enumerate() {
                    *p = e.index(*p, start, 4 * self.strides[k][cd]);
                }
                let is_last = e.b.ins().icmp_imm_s(IntCC::Equal, c, (nch - 1) as i64);
                // Two static bodies: the last chunk is shorter.
                let last = e.b.create_block();
                let full = e.b.create_block();
                let join = e.b.create_block();
                e.b.ins().brif(is_last, last, &[], full, &[]);
                e.b.switch_to_block(last);
                e.b.seal_block(last);
                body(e, &off, last_len);
                e.b.ins().jump(join, &[]);
                e.b.switch_to_block(full);
                e.b.seal_block(full);
                body(e, &off, chunk);
                e.b.ins().jump(join, &[]);
                e.b.switch_to_block(join);
                e.b.seal_block(join);
            } else {
                body(e, &off, last_len);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_contiguous_dims() {
        let n = Nest::new(
            &[2, 3, 4],
            vec![contiguous(&[2, 3, 4]), contiguous(&[2, 3, 4])],
            vec![0, 0],
        );
        assert_eq!(n.dims, vec![24]);
        // channel broadcast [1,C,1,1] against [1,C,H,W]: two dims remain
        let out = [1, 8, 5, 5];
        let n = Nest::new(
            &out,
            vec![contiguous(&out), broadcast_strides(&[1, 8, 1, 1], &out)],
            vec![0, 0],
        );
        assert_eq!(n.dims, vec![8, 25]);
        assert_eq!(n.strides[1], vec![1, 0]);
    }

    #[test]
    fn units_cover_chunks() {
        let mut n = Nest::new(&[3, 10], vec![contiguous(&[3, 10])], vec![0]);
        n.chunk = 4;
        // merged to one dim of 30: 8 chunks of 4, the last of 2
        assert_eq!(n.units(), 8);
        let empty = Nest::new(&[0, 3], vec![contiguous(&[0, 3])], vec![0]);
        assert_eq!(empty.units(), 0);
    }
}
