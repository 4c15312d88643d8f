//! Data movement: transpose, slice, concat, split, pad, gather, and the copies
//! that fill graph outputs which no kernel computes.
//!
//! Everything affine is a list of strided regions (one [`Nest`] each, output
//! first), copied with f32x4 moves when both sides are contiguous in the
//! innermost dimension. Constant padding is a fill followed by a copy of the
//! interior (two kernels, so threads never race on the same bytes); reflect
//! and edge padding, and gathers of many indices, use an index table built at
//! compile time (`out[i] = src[table[i]]`, `-1` = fill).

use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{InstBuilder, Value};
use kiln_ir::shape::slice_bounds;
use kiln_ir::{Op, PadMode};

use super::nest::{CHUNK, Nest, contiguous};
use super::{Kernel, Kernels, NodeCx};
use crate::codegen::{Buf, Emitter, F32, I64, Loc, V4};
use crate::error::BackendError;
use crate::ukernels::{Spec, transpose};

/// One strided region: `dst[...] = src[...]`, or `dst[...] = fill` without a source.
pub(crate) struct Region {
    nest: Nest,
    dst: Buf,
    src: Option<Buf>,
    fill: f32,
    /// `(k, chunk)`: a unit copies a block of the trailing `k` dims (see
    /// [`Nest::emit_blocked`]); `None`: a unit is a run of the innermost dim
    block: Option<(usize, usize)>,
}

/// Elements a blocked unit aims at: enough to amortise a unit's index
/// arithmetic (a division per outer dim), small enough to balance threads.
const BLOCK_MIN: usize = 256;
const BLOCK_MAX: usize = 2048;

impl Region {
    /// A copy region; `nest` has the destination as operand 0.
    pub fn copy(nest: Nest, dst: Buf, src: Buf) -> Region {
        let block = blocking(&nest);
        Region {
            nest,
            dst,
            src: Some(src),
            fill: 0.0,
            block,
        }
    }

    /// A fill of `dims` (contiguous) with `value`.
    pub fn fill(dims: &[usize], dst: Buf, value: f32) -> Region {
        Region {
            nest: Nest::new(dims, vec![contiguous(dims)], vec![0]),
            dst,
            src: None,
            fill: value,
            block: None,
        }
    }

    fn units(&self) -> usize {
        match self.block {
            Some((k, c)) => self.nest.units_blocked(k, c),
            None => self.nest.units(),
        }
    }
}

/// Contiguous runs (on both sides) shorter than this are blocked too
/// ([`blocking`]); the blocks move them in f32x4 vectors ([`emit_block`]).
/// MobileViT v1's 2×2 unfold moves contiguous pairs (2.4 GB/s as runs of
/// 2), its attention splits heads in runs of 16 (12.7 GB/s): its
/// transposes took 0.61 ms with runs of 4 and more unblocked, 0.20 with
/// runs under 32 blocked (under 64 and 256: no better); CoaT-Lite-tiny
/// 18.4 → 17.8 ms, no change on PVT v2, LeViT, TinyViT, GhostNet, MixNet,
/// EfficientViT-M0, GCViT (1 thread).
const BLOCK_RUN: usize = 32;

/// The blocking of a strided copy whose innermost dim is short (a transpose
/// moving a dim of 2 or 6 innermost: one unit per handful of elements
/// spent more time on index arithmetic than on copying — 1.4 GB/s on
/// MobileViTv2's unfold). Contiguous copies keep their f32x4 runs, unless
/// a run is shorter than [`BLOCK_RUN`].
fn blocking(nest: &Nest) -> Option<(usize, usize)> {
    let r = nest.dims.len();
    let contiguous = nest.inner_stride(0) == 1 && nest.inner_stride(1) == 1;
    if (contiguous && nest.inner() >= BLOCK_RUN)
        || r < 2
        || nest.inner() >= BLOCK_MIN
        || nest.numel() == 0
    {
        return None;
    }
    // trailing dims until the block holds BLOCK_MIN elements
    let mut k = 1;
    let mut inner = nest.inner();
    while k < r && inner < BLOCK_MIN {
        k += 1;
        inner *= nest.dims[r - k];
    }
    // the outermost block dim, cut so that a unit stays under BLOCK_MAX
    let rest = inner / nest.dims[r - k];
    let chunk = (BLOCK_MAX / rest).clamp(1, nest.dims[r - k]);
    Some((k, chunk))
}

/// Copies one block: `dims` (outermost first; the first of them `len`
/// long, the chunk) with per-operand strides, from `src` to `dst`. Short
/// innermost dims are unrolled, so the whole block is straight-line code
/// plus at most a few loops; an innermost run contiguous on both sides
/// moves in f32x4 vectors.
#[allow(clippy::too_many_arguments)]
fn emit_block(
    e: &mut Emitter,
    dims: &[usize],
    sd: &[i64],
    ss: &[i64],
    dst: Value,
    src: Value,
    rf: cranelift_codegen::ir::MemFlagsData,
) {
    let wf = Emitter::wflags();
    let (n, rest) = (dims[0], &dims[1..]);
    if rest.is_empty() && sd[0] == 1 && ss[0] == 1 && n >= 4 {
        // a contiguous run: f32x4 moves, then the tail
        for j in (0..n / 4).map(|j| 16 * j as i64) {
            let v = e.load(V4, rf, src, j);
            e.store(wf, v, dst, j);
        }
        for j in 4 * (n / 4)..n {
            let v = e.load(F32, rf, src, 4 * j as i64);
            e.store(wf, v, dst, 4 * j as i64);
        }
        return;
    }
    let body_len: usize = rest.iter().product();
    // unroll while the straight-line code stays small
    if n * body_len <= 64 {
        for j in 0..n as i64 {
            if rest.is_empty() {
                let v = e.load(F32, rf, src, 4 * ss[0] * j);
                e.store(wf, v, dst, 4 * sd[0] * j);
            } else {
                let d = e.off(dst, 4 * sd[0] * j);
                let s = e.off(src, 4 * ss[0] * j);
                emit_block(e, rest, &sd[1..], &ss[1..], d, s, rf);
            }
        }
    } else {
        e.for_static(0, n as i64, 1, |e, i| {
            let d = e.index(dst, i, 4 * sd[0]);
            let s = e.index(src, i, 4 * ss[0]);
            if rest.is_empty() {
                let v = e.load(F32, rf, s, 0);
                e.store(wf, v, d, 0);
            } else {
                emit_block(e, rest, &sd[1..], &ss[1..], d, s, rf);
            }
        });
    }
}

/// A kernel made of disjoint regions; units are the regions' units in order.
pub(crate) struct Copy {
    what: &'static str,
    regions: Vec<Region>,
}

impl Copy {
    /// A kernel copying (or filling) `regions`, which must not overlap.
    pub fn new(what: &'static str, regions: Vec<Region>) -> Copy {
        Copy { what, regions }
    }

    /// A flat copy of `numel` 32-bit words (any dtype: i64 values are two).
    pub fn flat(dst: Buf, src: Buf, numel: usize) -> Copy {
        let dims = [numel];
        let nest = Nest::new(
            &dims,
            vec![contiguous(&dims), contiguous(&dims)],
            vec![0, 0],
        );
        Copy::new("output copy", vec![Region::copy(nest, dst, src)])
    }
}

impl Kernel for Copy {
    fn describe(&self) -> String {
        let shapes: Vec<_> = self.regions.iter().map(|r| r.nest.dims.clone()).collect();
        format!("{} regions {:?}", self.what, shapes)
    }

    fn units(&self) -> usize {
        self.regions.iter().map(Region::units).sum()
    }

    fn cost(&self) -> f64 {
        self.regions.iter().map(|r| r.nest.numel() as f64).sum()
    }

    fn emit(&self, e: &mut Emitter, begin: Value, end: Value) {
        let mut first = 0;
        for r in &self.regions {
            let mut bases = vec![e.base(r.dst)];
            if let Some(s) = r.src {
                bases.push(e.base(s));
            }
            if let (Some((k, chunk)), Some(src)) = (r.block, r.src) {
                let n = &r.nest;
                let d0 = n.dims.len() - k;
                let rf = Emitter::rflags(src);
                let mut body = |e: &mut Emitter, ptrs: &[Value], len: usize| {
                    let mut dims = n.dims[d0..].to_vec();
                    dims[0] = len;
                    emit_block(
                        e,
                        &dims,
                        &n.strides[0][d0..],
                        &n.strides[1][d0..],
                        ptrs[0],
                        ptrs[1],
                        rf,
                    );
                };
                n.emit_blocked(e, &bases, begin, end, first, k, chunk, &mut body);
                first += r.units();
                continue;
            }
            let sd = r.nest.inner_stride(0);
            let ss = if r.src.is_some() {
                r.nest.inner_stride(1)
            } else {
                0
            };
            let rf = r.src.map(Emitter::rflags);
            let wf = Emitter::wflags();
            let fill = r.fill;
            let has_src = r.src.is_some();
            let mut body = |e: &mut Emitter, ptrs: &[Value], len: usize| {
                if sd == 1 && (!has_src || ss == 1) {
                    let n4 = (len / 4) as i64;
                    let splat = e.kc(V4, fill);
                    e.for_static(0, n4 * 16, 16, |e, i| {
                        let v = match rf {
                            Some(f) => {
                                let p = e.b.ins().iadd(ptrs[1], i);
                                e.load(V4, f, p, 0)
                            }
                            None => splat,
                        };
                        let p = e.b.ins().iadd(ptrs[0], i);
                        e.store(wf, v, p, 0);
                    });
                    for j in (n4 as usize * 4)..len {
                        let v = match rf {
                            Some(f) => e.load(F32, f, ptrs[1], 4 * j as i64),
                            None => e.fc(fill),
                        };
                        e.store(wf, v, ptrs[0], 4 * j as i64);
                    }
                } else {
                    let fv = e.fc(fill);
                    e.for_static(0, len as i64, 1, |e, i| {
                        let v = match rf {
                            Some(f) => {
                                let p = e.index(ptrs[1], i, 4 * ss);
                                e.load(F32, f, p, 0)
                            }
                            None => fv,
                        };
                        let p = e.index(ptrs[0], i, 4 * sd);
                        e.store(wf, v, p, 0);
                    });
                }
            };
            r.nest.emit(e, &bases, begin, end, first, &mut body);
            first += r.nest.units();
        }
    }
}

/// `dst[i] = table[i] < 0 ? fill : src[table[i]]` for `i < n`, the table
/// being compile-time constant data.
pub(crate) struct TableCopy {
    dst: Buf,
    src: Buf,
    table: usize,
    n: usize,
    src_len: usize,
    fill: f32,
}

impl Kernel for TableCopy {
    fn describe(&self) -> String {
        format!("table copy of {} elements", self.n)
    }

    fn units(&self) -> usize {
        self.n.div_ceil(CHUNK)
    }

    fn cost(&self) -> f64 {
        2.0 * self.n as f64
    }

    fn emit(&self, e: &mut Emitter, begin: Value, end: Value) {
        let dst = e.base(self.dst);
        let src = e.base(self.src);
        let table = e.base(Buf::input(Loc::Const(self.table)));
        let rf = Emitter::rflags(self.src);
        let tf = Emitter::rflags(Buf::input(Loc::Const(self.table)));
        let wf = Emitter::wflags();
        let lo = e.b.ins().imul_imm_s(begin, CHUNK as i64);
        let hi = e.b.ins().imul_imm_s(end, CHUNK as i64);
        let n = e.ic(self.n as i64);
        let hi = e.imin(hi, n);
        let fill = self.fill;
        let src_len = self.src_len;
        e.for_range(lo, hi, 1, |e, i| {
            let tp = e.index(table, i, 8);
            let idx = e.load(I64, tf, tp, 0);
            let f = e.fc(fill);
            let v = if src_len == 0 {
                f
            } else {
                let zero = e.ic(0);
                let ok =
                    e.b.ins()
                        .icmp_imm_s(IntCC::SignedGreaterThanOrEqual, idx, 0);
                let safe = e.b.ins().select(ok, idx, zero);
                let sp = e.index(src, safe, 4);
                let x = e.load(F32, rf, sp, 0);
                e.b.ins().select(ok, x, f)
            };
            let dp = e.index(dst, i, 4);
            e.store(wf, v, dp, 0);
        });
    }
}

/// Lowers transpose, slice, concat, split, pad and gather.
pub(crate) fn lower(cx: &mut NodeCx) -> Result<Kernels, BackendError> {
    let x = &cx.ins[0];
    let xs = contiguous(&x.ty.shape);
    let (out_buf, out_ty) = cx.outs[0].clone();
    let out = out_ty.shape.clone();
    let kernel: Box<dyn Kernel> = match cx.op {
        Op::Transpose { perm } => {
            let src: Vec<i64> = perm.iter().map(|&p| xs[p]).collect();
            let r = region(&out, contiguous(&out), 0, src, 0, out_buf, x.buf);
            let p = if x.ty.dtype == kiln_ir::DType::F32 {
                panels(cx, &r.nest, out_buf, x.buf)?
            } else {
                None
            };
            match p {
                Some(k) => Box::new(k),
                None => Box::new(Copy::new("transpose", vec![r])),
            }
        }
        Op::Slice {
            axes,
            starts,
            ends,
            steps,
        } => {
            let mut src = xs.clone();
            let mut off = 0i64;
            for (i, &a) in axes.iter().enumerate() {
                let (s, _, _) = slice_bounds(x.ty.shape[a], starts[i], ends[i], steps[i]);
                off += s * xs[a];
                src[a] *= steps[i];
            }
            Box::new(Copy::new(
                "slice",
                vec![region(&out, contiguous(&out), 0, src, off, out_buf, x.buf)],
            ))
        }
        Op::Concat { axis } => {
            let os = contiguous(&out);
            let mut at = 0i64;
            let mut regions = Vec::new();
            for op in &cx.ins {
                let dims = &op.ty.shape;
                regions.push(region(
                    dims,
                    os.clone(),
                    at * os[*axis],
                    contiguous(dims),
                    0,
                    out_buf,
                    op.buf,
                ));
                at += dims[*axis] as i64;
            }
            Box::new(Copy::new("concat", regions))
        }
        Op::Split { axis, .. } => {
            let mut at = 0i64;
            let mut regions = Vec::new();
            for (buf, ty) in &cx.outs {
                let dims = &ty.shape;
                regions.push(region(
                    dims,
                    contiguous(dims),
                    0,
                    xs.clone(),
                    at * xs[*axis],
                    *buf,
                    x.buf,
                ));
                at += dims[*axis] as i64;
            }
            Box::new(Copy::new("split", regions))
        }
        Op::Pad {
            pads,
            mode: PadMode::Constant,
            value,
        } => {
            let os = contiguous(&out);
            let r = out.len();
            let off: i64 = (0..r).map(|d| pads[d] as i64 * os[d]).sum();
            return Ok(vec![
                Box::new(Copy::new(
                    "pad fill",
                    vec![Region::fill(&out, out_buf, value.0)],
                )),
                Box::new(Copy::new(
                    "pad interior",
                    vec![region(&x.ty.shape, os, off, xs, 0, out_buf, x.buf)],
                )),
            ]);
        }
        Op::Pad { pads, mode, .. } => {
            let maps = pad_maps(&x.ty.shape, &xs, &out, pads, *mode);
            let table = table_of(cx, &out, &maps)?;
            return Ok(vec![table_copy(cx, table, 0.0)]);
        }
        Op::Gather { axis, indices, .. } => return gather(cx, *axis, indices),
        other => return Err(cx.unsupported(format!("{} is not a copy", other.name()))),
    };
    Ok(vec![kernel])
}

/// A transpose as transposed panels (`ukernels/transpose.rs`, AVX-512): the
/// copy's innermost dim B is contiguous in the destination and strided in
/// the source, and another dim A is contiguous in the source. A unit is one
/// panel: up to 16 consecutive elements along A (after the other dims,
/// walked by `nest`) for every element along B, transposed in registers.
pub(crate) struct Panels {
    dst: Buf,
    src: Buf,
    /// the dims but B, A innermost in chunks of 16 (operand 0 the
    /// destination)
    nest: Nest,
    /// the functions for a whole chunk of 16 and for the last, shorter one
    full: Option<usize>,
    tail: Option<usize>,
    /// elements along B
    b: usize,
}

/// Dims shorter than this along A stay element copies: a panel of a
/// few lanes moves too little per call.
const PANEL_MIN: usize = 4;

/// Source rows (B) below which a transpose stays a (blocked) element copy:
/// a call per 16 × B elements is mostly call. MobileViT v1's
/// `[256, 64] x 4` ran at 4.1 GB/s as panels; its transposes took 0.71 ms
/// with B ≥ 4 panels, 0.61 with B ≥ 8 (and ≥ 16: no such shapes).
const PANEL_MIN_ROWS: usize = 8;

/// The panels of the copy `nest` (destination operand 0), when the target
/// assembles AVX-512 and the copy is a transpose of f32 panels; `None`
/// leaves it to [`Copy`].
fn panels(
    cx: &mut NodeCx,
    nest: &Nest,
    dst: Buf,
    src: Buf,
) -> Result<Option<Panels>, BackendError> {
    let r = nest.dims.len();
    let Some(store) = cx.asm512() else {
        return Ok(None);
    };
    if r < 2 || nest.strides[0][r - 1] != 1 || nest.strides[1][r - 1] <= 1 {
        return Ok(None);
    }
    let Some(ad) = (0..r - 1).find(|&d| nest.strides[1][d] == 1) else {
        return Ok(None);
    };
    let (b, sb, da) = (
        nest.dims[r - 1],
        nest.strides[1][r - 1],
        nest.strides[0][ad],
    );
    if b < PANEL_MIN_ROWS || nest.dims[ad] < PANEL_MIN || da <= 0 {
        return Ok(None);
    }
    let order: Vec<usize> = (0..r - 1).filter(|&d| d != ad).chain([ad]).collect();
    let strides = (0..2)
        .map(|k| order.iter().map(|&d| nest.strides[k][d]).collect())
        .collect();
    let dims: Vec<usize> = order.iter().map(|&d| nest.dims[d]).collect();
    let mut sub = Nest::new(&dims, strides, nest.offsets.clone());
    sub.chunk = 16;
    // merging keeps A innermost, contiguous in the source
    if sub.inner_stride(1) != 1 {
        return Ok(None);
    }
    let spec = |a: usize| transpose::Spec {
        a,
        b,
        sb: sb as usize,
        da: da as usize,
        res: false,
        ahead: 0,
    };
    let a = sub.inner();
    let (full, tail) = (spec(16), spec(a % 16));
    if !full.fits() || (!a.is_multiple_of(16) && !tail.fits()) {
        return Ok(None);
    }
    let mut id = |s: transpose::Spec| store.request(Spec::Transpose(s)).map_err(BackendError::Jit);
    Ok(Some(Panels {
        dst,
        src,
        full: if a >= 16 { Some(id(full)?) } else { None },
        tail: if !a.is_multiple_of(16) {
            Some(id(tail)?)
        } else {
            None
        },
        nest: sub,
        b,
    }))
}

impl Kernel for Panels {
    fn describe(&self) -> String {
        format!(
            "transpose panels {:?} x {} (16x16 blocks) avx512",
            self.nest.dims, self.b
        )
    }

    fn units(&self) -> usize {
        self.nest.units()
    }

    fn cost(&self) -> f64 {
        (self.nest.numel() * self.b) as f64
    }

    fn emit(&self, e: &mut Emitter, begin: Value, end: Value) {
        let bases = [e.base(self.dst), e.base(self.src)];
        let mut body = |e: &mut Emitter, ptrs: &[Value], len: usize| {
            let id = if len == 16 { self.full } else { self.tail };
            // `panels` requested a function for every chunk length
            let Some(id) = id else {
                unreachable!("no transpose panel of {len} columns")
            };
            let sig = e.b.import_signature(transpose::signature());
            let f = e.asm_fn(id);
            let none = e.ic(0);
            e.b.ins().call_indirect(sig, f, &[ptrs[1], ptrs[0], none]);
        };
        self.nest.emit(e, &bases, begin, end, 0, &mut body);
    }
}

/// A copy region: `dims` walked with the destination's and the source's
/// strides and offsets.
fn region(
    dims: &[usize],
    dst_strides: Vec<i64>,
    dst_off: i64,
    src_strides: Vec<i64>,
    src_off: i64,
    dst: Buf,
    src: Buf,
) -> Region {
    Region::copy(
        Nest::new(dims, vec![dst_strides, src_strides], vec![dst_off, src_off]),
        dst,
        src,
    )
}

/// Per output dim, the source offset of every output index of an edge or
/// reflect pad of `shape` (strides `xs`) to `out`.
fn pad_maps(
    shape: &[usize],
    xs: &[i64],
    out: &[usize],
    pads: &[usize],
    mode: PadMode,
) -> Vec<Vec<i64>> {
    let r = out.len();
    (0..r)
        .map(|d| {
            let n = shape[d] as i64;
            (0..out[d] as i64)
                .map(|o| {
                    let i = o - pads[d] as i64;
                    let j = if mode == PadMode::Reflect {
                        // mirror without repeating the edge
                        let period = 2 * (n - 1).max(1);
                        let m = i.rem_euclid(period);
                        if m < n { m } else { period - m }
                    } else {
                        i.clamp(0, n - 1)
                    };
                    j * xs[d]
                })
                .collect()
        })
        .collect()
}

/// A gather along `axis`: one strided region per index when there are a
/// few, an index table otherwise.
fn gather(cx: &mut NodeCx, axis: usize, indices: &[i64]) -> Result<Kernels, BackendError> {
    let x = &cx.ins[0];
    let out_buf = cx.outs[0].0;
    let d = x.ty.shape[axis] as i64;
    let outer: usize = x.ty.shape[..axis].iter().product();
    let inner: usize = x.ty.shape[axis + 1..].iter().product();
    let idx: Vec<i64> = indices
        .iter()
        .map(|&i| if i < 0 { i + d } else { i })
        .collect();
    if idx.len() <= 16 {
        // one strided region per index: vector copies, no table
        let n = idx.len();
        let dims = [outer, inner];
        let regions = idx
            .iter()
            .enumerate()
            .map(|(j, &i)| {
                region(
                    &dims,
                    vec![(n * inner) as i64, 1],
                    (j * inner) as i64,
                    vec![d * inner as i64, 1],
                    i * inner as i64,
                    out_buf,
                    x.buf,
                )
            })
            .collect();
        Ok(vec![Box::new(Copy::new("gather", regions))])
    } else {
        let dims = [outer, idx.len(), inner];
        let maps = vec![
            (0..outer as i64).map(|o| o * d * inner as i64).collect(),
            idx.iter().map(|&i| i * inner as i64).collect(),
            (0..inner as i64).collect(),
        ];
        let table = table_of(cx, &dims, &maps)?;
        Ok(vec![table_copy(cx, table, 0.0)])
    }
}

/// The flat index table of a nest whose per-dim source offsets are `maps`;
/// an error when it would not fit under the constant blob's limit.
fn table_of(cx: &NodeCx, dims: &[usize], maps: &[Vec<i64>]) -> Result<Vec<i64>, BackendError> {
    let n: usize = dims.iter().product();
    let what = format!("{}: an index table of {n} entries", cx.name);
    cx.consts.room(n.saturating_mul(8), &what)?;
    let mut t = Vec::with_capacity(n);
    let mut idx = vec![0usize; dims.len()];
    for _ in 0..n {
        t.push(idx.iter().zip(maps).map(|(&i, m)| m[i]).sum());
        for d in (0..dims.len()).rev() {
            idx[d] += 1;
            if idx[d] < dims[d] {
                break;
            }
            idx[d] = 0;
        }
    }
    Ok(t)
}

fn table_copy(cx: &mut NodeCx, table: Vec<i64>, fill: f32) -> Box<dyn Kernel> {
    let addr = cx.consts.add_i64(&table);
    Box::new(TableCopy {
        dst: cx.outs[0].0,
        src: cx.ins[0].buf,
        table: addr,
        n: table.len(),
        src_len: cx.ins[0].ty.numel(),
        fill,
    })
}

/// Emits `dst[0..len] = src[0..len·ss : ss]` (static length; f32x4 moves
/// when the source is contiguous).
pub(crate) fn emit_copy_run(
    e: &mut Emitter,
    dst: Value,
    src: Value,
    len: usize,
    ss: i64,
    src_buf: Buf,
) {
    let rf = Emitter::rflags(src_buf);
    let wf = Emitter::wflags();
    if ss == 1 {
        let n4 = (len / 4) as i64;
        e.for_static(0, n4 * 16, 16, |e, i| {
            let s = e.b.ins().iadd(src, i);
            let v = e.load(V4, rf, s, 0);
            let d = e.b.ins().iadd(dst, i);
            e.store(wf, v, d, 0);
        });
        for j in (n4 as usize * 4)..len {
            let v = e.load(F32, rf, src, 4 * j as i64);
            e.store(wf, v, dst, 4 * j as i64);
        }
    } else {
        // strided source: gather four elements into a vector per store;
        // stride 2 (im2col of stride-2 convs) loads 8 and keeps the even
        // ones, except in the last vector, whose odd 8th element may lie
        // past the end of the source
        let n4 = (len / 4) as i64;
        let fast = if ss == 2 { (n4 - 1).max(0) } else { 0 };
        e.for_static(0, fast * 16, 16, |e, i| {
            let s = e.index(src, i, 2);
            let v = e.load_even(rf, s, 0);
            let d = e.b.ins().iadd(dst, i);
            e.store(wf, v, d, 0);
        });
        e.for_static(fast * 16, n4 * 16, 16, |e, i| {
            let s = e.index(src, i, ss);
            let x0 = e.load(F32, rf, s, 0);
            let mut v = e.b.ins().scalar_to_vector(V4, x0);
            for l in 1..4u8 {
                let x = e.load(F32, rf, s, 4 * ss * i64::from(l));
                v = e.b.ins().insertlane(v, x, l);
            }
            let d = e.b.ins().iadd(dst, i);
            e.store(wf, v, d, 0);
        });
        for j in (n4 as usize * 4)..len {
            let v = e.load(F32, rf, src, 4 * ss * j as i64);
            e.store(wf, v, dst, 4 * j as i64);
        }
    }
}

/// Emits `dst[0..len] = value` (static length).
pub(crate) fn emit_fill_run(e: &mut Emitter, dst: Value, len: usize, value: f32) {
    let wf = Emitter::wflags();
    let n4 = (len / 4) as i64;
    let v = e.kc(V4, value);
    e.for_static(0, n4 * 16, 16, |e, i| {
        let d = e.b.ins().iadd(dst, i);
        e.store(wf, v, d, 0);
    });
    let s = e.fc(value);
    for j in (n4 as usize * 4)..len {
        e.store(wf, s, dst, 4 * j as i64);
    }
}
