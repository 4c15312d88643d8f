//! 2-D convolution, NCHW, lowered by shape:
//!
//! - depthwise (`groups == C`, one input channel per group, any channel
//!   multiplier): its own kernel, see [`super::depthwise`];
//! - pointwise (1×1, stride 1, no padding): a GEMM per image and group,
//!   `out[O_g × HW] = W_g[O_g × C_g] · x[C_g × HW]`, reading x in place;
//! - everything else: im2col into arena scratch (one row per input channel
//!   and kernel tap, zeros where the window hangs over the padding), then
//!   the same GEMM with K = C_g·kh·kw; for stems (one group, small constant
//!   weights) band by band in one kernel ([`BandedConv`]), so the matrix
//!   stays in L1.
//!
//! Weights known at compile time are packed as A panels; the bias seeds the
//! accumulators. A `fused_conv` takes the same paths with an [`Epilogue`]
//! (activation, residual) applied before the store, and with a channel
//! shuffle ([`shuffled`]) that only changes where each output row is stored:
//! a GEMM batch covers rows that stay consecutive `G` rows apart after the
//! shuffle, so the shuffle is a C row stride. Layout stays NCHW: blocked layouts (NCHWc) would let the
//! depthwise and pointwise kernels share a vector-friendly channel blocking
//! and are the next optimisation, not done yet.

use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{InstBuilder, Value};
use kiln_ir::fused::{Act, FusedOp};
use kiln_ir::{Graph, NodeId, Op};

use super::copy::{emit_copy_run, emit_fill_run};
use super::epilogue::{Epilogue, Slopes};
use super::gemm::{self, ASrc, BSrc, Gemm, Init, Tile};
use super::{Kernel, Kernels, NodeCx, Opt, depthwise, fused};
use crate::codegen::{Buf, Emitter, F32, Loc};
use crate::error::BackendError;
use crate::ukernels::{Spec, transpose};

/// Geometry of one convolution.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Geom {
    /// batch
    pub n: usize,
    /// input channels
    pub c: usize,
    /// input height
    pub h: usize,
    /// input width
    pub w: usize,
    /// output channels
    pub o: usize,
    /// input channels per group
    pub cg: usize,
    /// kernel height
    pub kh: usize,
    /// kernel width
    pub kw: usize,
    /// output height
    pub ho: usize,
    /// output width
    pub wo: usize,
    /// `[sh, sw]`
    pub stride: [usize; 2],
    /// `[top, left, bottom, right]`
    pub pad: [usize; 4],
    /// `[dh, dw]`
    pub dil: [usize; 2],
    /// groups
    pub groups: usize,
}

impl Geom {
    /// The geometry of a conv2d (or the convolution of a `fused_conv`) with
    /// these operand and output shapes.
    pub fn of(op: &Op, x: &[usize], w: &[usize], out: &[usize]) -> Option<Geom> {
        let (Op::Conv2d {
            stride,
            pad,
            dilation,
            groups,
        }
        | Op::Fused(FusedOp::Conv {
            stride,
            pad,
            dilation,
            groups,
            ..
        })) = op
        else {
            return None;
        };
        if x.len() != 4 || w.len() != 4 || out.len() != 4 {
            return None;
        }
        Some(Geom {
            n: x[0],
            c: x[1],
            h: x[2],
            w: x[3],
            o: w[0],
            cg: w[1],
            kh: w[2],
            kw: w[3],
            ho: out[2],
            wo: out[3],
            stride: *stride,
            pad: *pad,
            dil: *dilation,
            groups: *groups,
        })
    }

    /// One input channel per group, every channel its own group.
    pub fn is_depthwise(&self) -> bool {
        self.groups == self.c && self.cg == 1 && self.groups > 1
    }

    /// 1×1, stride 1, no padding: the input is already the GEMM's B.
    pub fn is_pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.stride == [1, 1] && self.pad == [0; 4]
    }

    fn im2col_len(&self) -> usize {
        self.n * self.c * self.kh * self.kw * self.ho * self.wo
    }

    /// The output rows `[lo, hi)` whose tap `k` (of `n` taps, stride `s`,
    /// dilation `d`, leading pad `p`) reads inside an input of length `len`.
    fn valid(out: usize, len: usize, k: usize, s: usize, d: usize, p: usize) -> (usize, usize) {
        // input index = o·s + k·d - p must lie in [0, len)
        let off = (k * d) as i64 - p as i64;
        let lo = if off >= 0 {
            0
        } else {
            ((-off) as usize).div_ceil(s)
        };
        let hi_excl = len as i64 - off; // o·s < hi_excl
        let hi = if hi_excl <= 0 {
            0
        } else {
            ((hi_excl as usize - 1) / s + 1).min(out)
        };
        (lo.min(hi), hi)
    }
}

/// Scratch for im2col, when the convolution needs it.
pub(crate) fn scratch_bytes(g: &Graph, id: NodeId) -> usize {
    let ops = g.operands(id);
    let node = g.node(id);
    let geom = match (ops.first(), ops.get(1), node.outputs.first()) {
        (Some(&x), Some(&w), Some(out)) => Geom::of(
            &node.op,
            &g.value_type(x).shape,
            &g.value_type(w).shape,
            &out.ty.shape,
        ),
        _ => None,
    };
    let Some(gm) = geom else {
        return 0;
    };
    let (shuffle, act, residual) = match node.op {
        Op::Fused(FusedOp::Conv {
            shuffle,
            act,
            residual,
            ..
        }) => (shuffle, act, residual),
        _ => (1, Act::None, false),
    };
    let dyrelu = act == Act::DyRelu;
    let slopes = if dyrelu && shuffle > 1 && !gm.is_depthwise() {
        8 * gm.o
    } else {
        0
    };
    // planned from the shape alone: at levels without AVX-512 (or with
    // run-time weights) the lowering computes in place and leaves it unused
    let transposed = if transposed_shape(&gm, shuffle, dyrelu) {
        4 * gm.n * gm.ho * gm.wo * gm.o
    } else {
        0
    };
    // one or the other path uses the scratch, never both
    let wino = if super::winograd::shape(&gm, shuffle, act, residual) {
        super::winograd::scratch_bytes(&gm)
    } else {
        0
    };
    (im2col_bytes(&gm) + slopes + transposed).max(wino)
}

/// Output planes of at most this many pixels may be computed transposed
/// ([`transposed`]).
const TRANSPOSED_MAX_PIXELS: usize = 64;

/// Whether a conv of this shape is computed transposed when the target
/// assembles AVX-512 and the weights are constant ([`transposed`]): one
/// group, no shuffle or dynamic ReLU, small planes whose pixel count fills
/// the tile's 16-lane vectors badly (7×7 = 49: 3 vectors and 1 lane), and
/// output channels that fill them exactly.
fn transposed_shape(g: &Geom, shuffle: usize, dyrelu: bool) -> bool {
    let p = g.ho * g.wo;
    g.groups == 1
        && shuffle == 1
        && !dyrelu
        && !g.is_depthwise()
        && p > 16
        && p < TRANSPOSED_MAX_PIXELS
        && !p.is_multiple_of(16)
        && g.o >= 64
        && g.o.is_multiple_of(16)
}

/// Scratch bytes of the im2col matrix (none for the depthwise and pointwise
/// paths, which read the input in place).
fn im2col_bytes(g: &Geom) -> usize {
    if g.is_depthwise() || g.is_pointwise() {
        0
    } else {
        4 * g.im2col_len()
    }
}

/// Bytes of im2col matrix per band that stay in L1 while the GEMM reads
/// them back.
const BAND_BYTES: usize = 32 * 1024;

/// Weights (the GEMM's A, re-read by every band) small enough for banding.
const BAND_MAX_WEIGHTS: usize = 64 * 1024;

/// Output rows per band when an im2col conv runs band by band
/// ([`BandedConv`]): one group, no shuffle, constant weights small enough
/// to re-read per band (stems: 3 input channels, a few KB of weights). The
/// rows divide the output height and make a band of at most
/// [`BAND_BYTES`] of matrix.
fn band_rows(g: &Geom, shuffle: usize, const_weights: bool) -> Option<usize> {
    let k = g.c * g.kh * g.kw;
    if g.groups != 1
        || shuffle != 1
        || !const_weights
        || g.is_pointwise()
        || g.is_depthwise()
        || g.ho == 0
        || g.wo == 0
        || 4 * g.o * k > BAND_MAX_WEIGHTS
    {
        return None;
    }
    let most = (BAND_BYTES / (4 * k * g.wo)).max(1);
    (1..=most.min(g.ho)).rev().find(|&r| g.ho.is_multiple_of(r))
}

/// An im2col conv computed band by band: each unit writes the im2col
/// matrix of `rows` output rows of one image (all channels and taps) and
/// runs the GEMM on it at once, while it is still in L1. The whole-tensor
/// path writes the full matrix first (1.35 MB for Mobile-Former's stem,
/// 27 rows of 112² pixels), which the GEMM then reads back from L3, and it
/// has only `N·C` units (3 for an RGB stem) to share between threads.
struct BandedConv {
    im2col: Im2col,
    rows: usize,
    /// one batch per (image, band), one unit per batch
    gemm: Gemm,
}

impl Kernel for BandedConv {
    fn describe(&self) -> String {
        format!(
            "{}, im2col in bands of {} rows",
            self.gemm.describe(),
            self.rows
        )
    }

    fn units(&self) -> usize {
        self.gemm.units()
    }

    fn cost(&self) -> f64 {
        self.gemm.cost() + self.im2col.cost()
    }

    fn opt(&self) -> Opt {
        self.gemm.opt()
    }

    fn emit(&self, e: &mut Emitter, begin: Value, end: Value) {
        e.for_range(begin, end, 1, |e, u| {
            self.im2col.emit_band(e, u, self.rows);
            let next = e.b.ins().iadd_imm_s(u, 1);
            self.gemm.emit(e, u, next);
        });
    }
}

/// Writes the im2col matrix: for input plane `(n, c)` and tap `(i, j)`, row
/// `((n·C + c)·kh + i)·kw + j` holds the tap's input for every output pixel.
struct Im2col {
    x: Buf,
    col: Buf,
    g: Geom,
    /// for a strided conv ([`panel_cols`]): the transposed panel that
    /// writes one input row's `kw` taps of the interior output columns at
    /// once (`ukernels/transpose.rs`)
    panel: Option<Panel>,
}

/// The transposed panel of a strided im2col ([`panel_cols`]).
#[derive(Clone, Copy)]
struct Panel {
    /// the assembled panel
    id: usize,
    /// the output columns `[lo, hi)` whose taps all lie inside the row
    lo: usize,
    hi: usize,
    /// elements from one tap's matrix row to the next
    da: usize,
}

/// The output columns `[lo, hi)` whose `kw` horizontal taps all lie inside
/// the input row, for a stem-like stride of 4 or more and a window of 4 to
/// 16 columns: then output `ow`'s taps are the `kw` input columns from
/// `s·ow - pl` on, and the `kw` matrix rows of the interior are the
/// `[hi - lo][kw]` transpose of source rows `s` apart (overlapping when
/// `s < kw`), one panel call instead of `kw` strided copies moving one
/// element at a time. Whole-tensor im2col, 1 thread, strided copy →
/// panel: DeiT's 16×16 patches 0.10 → 0.03 ms, PVT's 7×7 stride-4 stem
/// 0.097 → 0.059, a 4×4 stride-4 stem 0.033 either way (and the panel
/// prefetches the next band, below); but a panel transposes 16 source
/// rows whatever their width, so narrow or overlapping windows lose: 3×3
/// stride 2 (64 channels on 56²) 0.079 → 0.148, 5×5 stride 2 0.102 →
/// 0.134, 2×2 stride 2 0.023 → 0.038, 1×1 stride 2 0.009 → 0.028. `None`
/// without dilation 1, or with fewer than 8 interior columns.
fn panel_cols(g: &Geom) -> Option<(usize, usize)> {
    let (s, kw, pl) = (g.stride[1], g.kw, g.pad[1]);
    if s < 4 || g.dil[1] != 1 || !(4..=16).contains(&kw) || g.w + pl < kw {
        return None;
    }
    let lo = pl.div_ceil(s);
    let hi = ((g.w + pl - kw) / s + 1).min(g.wo);
    (hi >= lo + 8).then_some((lo, hi))
}

/// The transposed panel for [`panel_cols`] when the target assembles
/// AVX-512: `kw` columns of the interior's source rows into `kw` matrix
/// rows `da` apart, prefetching `ahead` bytes further.
fn im2col_panel(
    cx: &mut NodeCx,
    g: &Geom,
    da: usize,
    ahead: usize,
) -> Result<Option<Panel>, BackendError> {
    let Some((lo, hi)) = panel_cols(g) else {
        return Ok(None);
    };
    let Some(store) = cx.asm512() else {
        return Ok(None);
    };
    let spec = transpose::Spec {
        a: g.kw,
        b: hi - lo,
        sb: g.stride[1],
        da,
        res: false,
        ahead,
    };
    if !spec.fits() {
        return Ok(None);
    }
    let id = store
        .request(Spec::Transpose(spec))
        .map_err(BackendError::Jit)?;
    Ok(Some(Panel { id, lo, hi, da }))
}

impl Im2col {
    /// Writes the `kw` matrix rows of input row `ih` (inside the plane at
    /// `plane`) at `d`, one output row each: the interior columns by the
    /// panel (`fn(src, dst, res)`, no residual), the few edge columns one
    /// element at a time (zero where a tap falls in the padding).
    fn emit_panel_row(&self, e: &mut Emitter, p: Panel, d: Value, plane: Value, ih: Value) {
        let g = self.g;
        let (s, pl) = (g.stride[1] as i64, g.pad[1] as i64);
        let row = e.index(plane, ih, 4 * g.w as i64);
        let src = e.off(row, 4 * (s * p.lo as i64 - pl));
        let dst = e.off(d, 4 * p.lo as i64);
        let sig = e.b.import_signature(transpose::signature());
        let f = e.asm_fn(p.id);
        let null = e.ic(0);
        e.b.ins().call_indirect(sig, f, &[src, dst, null]);
        let rf = Emitter::rflags(self.x);
        let wf = Emitter::wflags();
        for ow in (0..p.lo).chain(p.hi..g.wo) {
            for j in 0..g.kw {
                let x = s * ow as i64 + j as i64 - pl;
                let v = if (0..g.w as i64).contains(&x) {
                    e.load(F32, rf, row, 4 * x)
                } else {
                    e.fc(0.0)
                };
                e.store(wf, v, d, 4 * (j * p.da + ow) as i64);
            }
        }
    }

    /// Writes one output row of the matrix row of horizontal tap `j` at `d`:
    /// input row `ih` (inside the plane at `plane`) from column
    /// `ow_lo·sw + j·dw - pl` on, zeros where the window hangs over the
    /// left or right padding (the caller handles rows outside the input).
    fn emit_tap_row(&self, e: &mut Emitter, d: Value, plane: Value, ih: Value, j: usize) {
        let g = self.g;
        let (ow_lo, ow_hi) = Geom::valid(g.wo, g.w, j, g.stride[1], g.dil[1], g.pad[1]);
        if ow_lo >= ow_hi {
            emit_fill_run(e, d, g.wo, 0.0);
            return;
        }
        let s = e.index(plane, ih, 4 * g.w as i64);
        let s = e.off(
            s,
            4 * ((ow_lo * g.stride[1] + j * g.dil[1]) as i64 - g.pad[1] as i64),
        );
        emit_fill_run(e, d, ow_lo, 0.0);
        let dm = e.off(d, 4 * ow_lo as i64);
        emit_copy_run(e, dm, s, ow_hi - ow_lo, g.stride[1] as i64, self.x);
        let dt = e.off(d, 4 * ow_hi as i64);
        emit_fill_run(e, dt, g.wo - ow_hi, 0.0);
    }

    /// The input row of tap row `i` for output row `oh`: `oh·sh + i·dh - pt`
    /// (outside the input when it is negative or past the last row).
    fn input_row(&self, e: &mut Emitter, oh: Value, i: usize) -> Value {
        let g = self.g;
        let ih = e.b.ins().imul_imm_s(oh, g.stride[0] as i64);
        e.b.ins()
            .iadd_imm_s(ih, (i * g.dil[0]) as i64 - g.pad[0] as i64)
    }

    /// For each of a band's `r` output rows `t` (from output row `oh0`),
    /// with `d` the row `t` of the matrix rows at `base` and `ih` the input
    /// row of tap row `i`: `inside(e, d, ih)` when that input row exists,
    /// `outside(e, d)` when it falls in the padding.
    fn for_band_rows(
        &self,
        e: &mut Emitter,
        (oh0, r, i, base): (Value, usize, usize, Value),
        inside: &dyn Fn(&mut Emitter, Value, Value),
        outside: &dyn Fn(&mut Emitter, Value),
    ) {
        let g = self.g;
        e.for_static(0, r as i64, 1, |e, t| {
            let d = e.index(base, t, 4 * g.wo as i64);
            // input row oh·sh + i·dh - pt: inside when unsigned < h
            let oh = e.b.ins().iadd(oh0, t);
            let ih = self.input_row(e, oh, i);
            let is_in =
                e.b.ins()
                    .icmp_imm_u(IntCC::UnsignedLessThan, ih, g.h as i64);
            let is_out =
                e.b.ins()
                    .icmp_imm_u(IntCC::UnsignedGreaterThanOrEqual, ih, g.h as i64);
            e.if_then(is_out, |e| outside(e, d));
            e.if_then(is_in, |e| inside(e, d, ih));
        });
    }

    /// Writes band `u` (image `u / bands`, output rows `[r·b, r·b + r)` for
    /// band `b = u mod bands`) of the matrix at `col + u·K·r·wo`, rows of
    /// `r·wo`: the same rows as the whole-tensor kernel, cut into bands. A
    /// tap row outside the input (padding) is zeros.
    fn emit_band(&self, e: &mut Emitter, u: Value, r: usize) {
        let g = self.g;
        let bands = (g.ho / r) as i64;
        let k = g.c * g.kh * g.kw;
        let x = e.base(self.x);
        let col = e.base(self.col);
        let img = e.b.ins().udiv_imm_u(u, bands);
        let band = e.b.ins().urem_imm_u(u, bands);
        let oh0 = e.b.ins().imul_imm_s(band, r as i64);
        let dst = e.index(col, u, 4 * (k * r * g.wo) as i64);
        let src = e.index(x, img, 4 * (g.c * g.h * g.w) as i64);
        for c in 0..g.c {
            let plane = e.off(src, 4 * (c * g.h * g.w) as i64);
            for i in 0..g.kh {
                if let Some(pn) = self.panel {
                    let row0 = e.off(dst, 4 * ((c * g.kh + i) * g.kw * r * g.wo) as i64);
                    self.for_band_rows(
                        e,
                        (oh0, r, i, row0),
                        &|e, d, ih| self.emit_panel_row(e, pn, d, plane, ih),
                        &|e, d| {
                            for j in 0..g.kw {
                                let dj = e.off(d, 4 * (j * r * g.wo) as i64);
                                emit_fill_run(e, dj, g.wo, 0.0);
                            }
                        },
                    );
                    continue;
                }
                for j in 0..g.kw {
                    let row = e.off(dst, 4 * (((c * g.kh + i) * g.kw + j) * r * g.wo) as i64);
                    self.for_band_rows(
                        e,
                        (oh0, r, i, row),
                        &|e, d, ih| self.emit_tap_row(e, d, plane, ih, j),
                        &|e, d| emit_fill_run(e, d, g.wo, 0.0),
                    );
                }
            }
        }
    }
}

impl Kernel for Im2col {
    fn describe(&self) -> String {
        format!("im2col {:?}", self.g)
    }

    fn units(&self) -> usize {
        self.g.n * self.g.c
    }

    fn cost(&self) -> f64 {
        self.g.im2col_len() as f64
    }

    fn emit(&self, e: &mut Emitter, begin: Value, end: Value) {
        let g = self.g;
        let p = g.ho * g.wo;
        let x = e.base(self.x);
        let col = e.base(self.col);
        e.for_range(begin, end, 1, |e, u| {
            let src = e.index(x, u, 4 * (g.h * g.w) as i64);
            let dst = e.index(col, u, 4 * (g.kh * g.kw * p) as i64);
            for i in 0..g.kh {
                let (oh_lo, oh_hi) = Geom::valid(g.ho, g.h, i, g.stride[0], g.dil[0], g.pad[0]);
                if let Some(pn) = self.panel {
                    let row0 = e.off(dst, 4 * (i * g.kw * p) as i64);
                    for j in 0..g.kw {
                        let row = e.off(row0, 4 * (j * p) as i64);
                        emit_fill_run(e, row, oh_lo * g.wo, 0.0);
                        let tail = e.off(row, 4 * (oh_hi * g.wo) as i64);
                        emit_fill_run(e, tail, (g.ho - oh_hi) * g.wo, 0.0);
                    }
                    e.for_static(oh_lo as i64, oh_hi as i64, 1, |e, oh| {
                        let d = e.index(row0, oh, 4 * g.wo as i64);
                        let ih = self.input_row(e, oh, i);
                        self.emit_panel_row(e, pn, d, src, ih);
                    });
                    continue;
                }
                for j in 0..g.kw {
                    let (ow_lo, ow_hi) = Geom::valid(g.wo, g.w, j, g.stride[1], g.dil[1], g.pad[1]);
                    let row = e.off(dst, 4 * ((i * g.kw + j) * p) as i64);
                    emit_fill_run(e, row, oh_lo * g.wo, 0.0);
                    let tail = e.off(row, 4 * (oh_hi * g.wo) as i64);
                    emit_fill_run(e, tail, (g.ho - oh_hi) * g.wo, 0.0);
                    if ow_lo >= ow_hi {
                        let mid = e.off(row, 4 * (oh_lo * g.wo) as i64);
                        emit_fill_run(e, mid, (oh_hi - oh_lo) * g.wo, 0.0);
                        continue;
                    }
                    e.for_static(oh_lo as i64, oh_hi as i64, 1, |e, oh| {
                        let d = e.index(row, oh, 4 * g.wo as i64);
                        // input row oh·sh + i·dh - pt, column ow_lo·sw + j·dw - pl
                        let ih = self.input_row(e, oh, i);
                        self.emit_tap_row(e, d, src, ih, j);
                    });
                }
            }
        });
    }
}

/// Lowers a conv2d node.
pub(crate) fn lower(cx: &mut NodeCx) -> Result<Kernels, BackendError> {
    let bias = cx.ins.get(2).map(|b| b.buf);
    lower_with(cx, bias, Epilogue::NONE, 1)
}

/// Where output channel `o` of `channels` is stored after a channel shuffle
/// in `groups` groups (ShuffleNet's `reshape [G, O/G] → transpose →
/// reshape`): `(o mod O/G)·G + o div O/G`.
pub(crate) fn shuffled(o: usize, channels: usize, groups: usize) -> usize {
    let per = channels / groups;
    (o % per) * groups + o / per
}

/// Rows per GEMM batch of a conv with `og` output channels per group whose
/// `o` outputs are shuffled in `shuffle` groups: rows that stay `shuffle`
/// apart after the shuffle, i.e. that never cross one of its blocks of
/// `o / shuffle` channels. `None` when the conv groups and the shuffle
/// blocks do not nest (no fixed C row stride covers a group).
pub(crate) fn shuffle_rows(og: usize, o: usize, shuffle: usize) -> Option<usize> {
    if shuffle <= 1 {
        return Some(og);
    }
    let block = o / shuffle;
    if !o.is_multiple_of(shuffle) || block == 0 || og == 0 {
        None
    } else if block.is_multiple_of(og) {
        Some(og)
    } else if og.is_multiple_of(block) {
        Some(block)
    } else {
        None
    }
}

/// Copies the dynamic-ReLU slopes of a shuffled conv into its scratch in
/// pre-shuffle row order (`dst[o] = a[shuffled(o)]`, `a1` then `a2`), so
/// the GEMM epilogue reads them one per row like the bias.
struct UnshuffleSlopes {
    a1: Buf,
    a2: Buf,
    dst: Buf,
    channels: usize,
    shuffle: usize,
}

impl Kernel for UnshuffleSlopes {
    fn describe(&self) -> String {
        format!(
            "dynamic-ReLU slopes of {} channels into pre-shuffle order ({} groups)",
            self.channels, self.shuffle
        )
    }

    fn units(&self) -> usize {
        1
    }

    fn cost(&self) -> f64 {
        2.0 * self.channels as f64
    }

    fn emit(&self, e: &mut Emitter, _begin: Value, _end: Value) {
        let dst = e.base(self.dst);
        let wf = Emitter::wflags();
        let per = self.channels / self.shuffle;
        for (k, src) in [self.a1, self.a2].into_iter().enumerate() {
            let base = e.base(src);
            let rf = Emitter::rflags(src);
            let out = e.off(dst, 4 * (k * self.channels) as i64);
            // o = gi·per + j  <-  a[j·shuffle + gi]
            e.for_static(0, self.shuffle as i64, 1, |e, gi| {
                let s = e.index(base, gi, 4);
                let d = e.index(out, gi, 4 * per as i64);
                e.for_static(0, per as i64, 1, |e, j| {
                    let p = e.index(s, j, 4 * self.shuffle as i64);
                    let x = e.load(F32, rf, p, 0);
                    let q = e.index(d, j, 4);
                    e.store(wf, x, q, 0);
                });
            });
        }
    }
}

/// A conv over small planes computed transposed: `outᵀ[p][o] = colᵀ[p][K]
/// · Wᵀ[K][o]`, the pixels as the GEMM's rows (broadcast) and the output
/// channels across its vectors, then a transpose of 16-channel panels
/// into NCHW that adds the residual ([`TransposeOut`]). As an NCHW GEMM a
/// 7×7 plane is 49 columns, 3 vectors and 1 lane a row (77 % of the lanes
/// busy); here every vector is full. Measured at 1 thread (a linear layer
/// over 49 tokens against the conv on 7×7): 260–267 GFLOP/s against
/// 187–203 for K = 384–960, o = 128–768. The activations are read in place
/// (pointwise) or from the im2col matrix; the product goes to the
/// scratch behind the matrix.
fn transposed(
    cx: &mut NodeCx,
    g: Geom,
    w: &[f32],
    bias: Option<Buf>,
    mut epi: Epilogue,
    title: Option<String>,
) -> Result<Kernels, BackendError> {
    let (p, k) = (g.ho * g.wo, g.cg * g.kh * g.kw);
    let mut kernels: Kernels = Vec::new();
    let BSide { b: src, b_off, .. } = conv_b(cx, g, None, k, &mut kernels)?;
    let BSrc::Strided { buf: x, ks } = src else {
        return Err(cx.unsupported("a transposed conv's activations are packed"));
    };
    let at = match cx.scratch.map(|b| b.loc) {
        Some(Loc::Arena(off)) => off + im2col_bytes(&g),
        _ => return Err(cx.unsupported("transposed conv scratch was not planned")),
    };
    let tile = super::matmul::tile_for_shape(cx, true, p, g.o, k);
    let b = BSrc::Packed {
        addr: cx.consts.add(&gemm::pack_b(w, k, g.o, 1, k, 4 * tile.nv)),
    };
    let a = ASrc::Strided { buf: x, rs: 1, ks };
    let offs: Vec<[i64; 4]> = (0..g.n)
        .map(|n| [b_off(n, 0), 0, (n * p * g.o) as i64, 0])
        .collect();
    let residual = epi.residual.take();
    let title = title.map(|t| format!("{t} (transposed)"));
    let gm = Gemm {
        batch: g.n,
        offsets: gemm::offset_table(cx.consts, &offs),
        init: bias.map_or(Init::Zero, Init::Col),
        epi,
        title,
        ..Gemm::new(
            if g.is_pointwise() {
                "pointwise conv (transposed)"
            } else {
                "conv (im2col, transposed)"
            },
            [p, g.o, k],
            a,
            b,
            (Buf::output(Loc::Arena(at)), g.o as i64),
            tile,
        )
    };
    kernels.push(Box::new(super::matmul::finish(cx, gm)?));
    let unsupported = cx.unsupported("a transposed conv without AVX-512");
    let store = cx.asm512().ok_or(unsupported)?;
    let mut id = |a: usize| {
        store
            .request(Spec::Transpose(transpose::Spec {
                a,
                b: p,
                sb: g.o,
                da: p,
                res: residual.is_some(),
                ahead: 0,
            }))
            .map_err(BackendError::Jit)
    };
    // `transposed_shape`: whole 16-channel panels
    let panel = id(16)?;
    kernels.push(Box::new(TransposeOut {
        src: Buf::input(Loc::Arena(at)),
        dst: cx.outs[0].0,
        res: residual,
        n: g.n,
        p,
        o: g.o,
        panel,
    }));
    Ok(kernels)
}

/// The end of a [`transposed`] conv: `out[n][c][i] = prod[n][i][c] +
/// res[n][c][i]`, one assembled 16-channel panel (`ukernels/transpose.rs`)
/// per unit.
struct TransposeOut {
    src: Buf,
    dst: Buf,
    res: Option<Buf>,
    n: usize,
    /// pixels
    p: usize,
    /// channels (a multiple of 16)
    o: usize,
    /// the panel function
    panel: usize,
}

impl Kernel for TransposeOut {
    fn describe(&self) -> String {
        format!(
            "transpose {}x{} into channel planes{} avx512",
            self.p,
            self.o,
            if self.res.is_some() { " +res" } else { "" }
        )
    }

    fn units(&self) -> usize {
        self.n * self.o / 16
    }

    fn cost(&self) -> f64 {
        (3 * self.n * self.p * self.o) as f64
    }

    fn emit(&self, e: &mut Emitter, begin: Value, end: Value) {
        let src = e.base(self.src);
        let dst = e.base(self.dst);
        let res = self.res.map(|r| e.base(r));
        let sig = e.b.import_signature(transpose::signature());
        let panels = (self.o / 16) as i64;
        e.for_range(begin, end, 1, |e, u| {
            // image u / panels, channels 16·(u mod panels)..
            let img = e.b.ins().udiv_imm_u(u, panels);
            let q = e.b.ins().urem_imm_u(u, panels);
            let s = e.index(src, img, 4 * (self.p * self.o) as i64);
            let s = e.index(s, q, 64);
            let plane = e.b.ins().imul_imm_s(u, 16);
            let d = e.index(dst, plane, 4 * self.p as i64);
            let r = match res {
                Some(r) => e.index(r, plane, 4 * self.p as i64),
                None => e.ic(0),
            };
            let f = e.asm_fn(self.panel);
            e.b.ins().call_indirect(sig, f, &[s, d, r]);
        });
    }
}

/// A pointwise conv over 1×1 planes (a classifier head's `conv_head`) is a
/// linear layer: `[N, C] @ Wᵀ`, one GEMM row per image and the output
/// channels across the tile's columns, the weights packed transposed. As
/// a conv it was a GEMM with one column: every tile used one lane of each
/// vector (MobileNetV3's 576→1024 at 9 GFLOP/s).
fn pointwise_as_linear(
    cx: &mut NodeCx,
    g: Geom,
    w: &[f32],
    bias: Option<Buf>,
    epi: Epilogue,
    title: Option<String>,
) -> Result<Kernels, BackendError> {
    let (m, n, k) = (g.n, g.o, g.c);
    let tile = super::matmul::tile_for_shape(cx, true, m, n, k);
    let b = BSrc::Packed {
        addr: cx.consts.add(&gemm::pack_b(w, k, n, 1, k, 4 * tile.nv)),
    };
    let a = ASrc::Strided {
        buf: cx.ins[0].buf,
        rs: k as i64,
        ks: 1,
    };
    let out = cx.outs[0].0;
    let gm = Gemm {
        init: bias.map_or(Init::Zero, Init::Col),
        epi,
        title,
        ..Gemm::new("pointwise conv", [m, n, k], a, b, (out, n as i64), tile)
    };
    Ok(vec![Box::new(super::matmul::finish(cx, gm)?)])
}

/// Lowers the convolution of a conv2d or `fused_conv` node (`cx.op`) with
/// this bias, epilogue and output channel shuffle (1 = none). Operands 0
/// and 1 are `x` and `w`.
pub(crate) fn lower_with(
    cx: &mut NodeCx,
    bias: Option<Buf>,
    mut epi: Epilogue,
    shuffle: usize,
) -> Result<Kernels, BackendError> {
    let (out_buf, out_ty) = cx.outs[0].clone();
    let g = Geom::of(
        cx.op,
        &cx.ins[0].ty.shape,
        &cx.ins[1].ty.shape,
        &out_ty.shape,
    )
    .ok_or_else(|| cx.unsupported("not a conv2d"))?;
    let title = conv_title(cx.op, &g, &epi, bias.is_some(), shuffle);
    if shuffle == 0 || !g.o.is_multiple_of(shuffle) {
        return Err(cx.unsupported(format!("a shuffle in {shuffle} groups of {} channels", g.o)));
    }
    if g.is_depthwise() {
        return depthwise::lower(cx, g, bias, epi, title, shuffle);
    }
    // before the direct convs: at 16–64 channels Winograd took HGNetV2's
    // 3×3 convs from 0.07 to 0.035 ms (16→16 on 56×56, 32→32 on 28×28)
    if super::winograd::shape(&g, shuffle, epi.act, epi.residual.is_some())
        && cx.asm512().is_some()
        && let Some(w) = cx.ins[1].data
    {
        return super::winograd::lower(cx, g, w, bias, epi, title);
    }
    let direct = conv_title(cx.op, &g, &epi, bias.is_some(), shuffle)
        .map(|t| t.replacen("fused im2col conv", "fused direct conv", 1));
    if let Some(k) = super::conv_direct::kernel(cx, g, bias, &epi, &direct, shuffle)? {
        return Ok(vec![k]);
    }
    if g.is_pointwise()
        && g.groups == 1
        && g.ho * g.wo == 1
        && shuffle == 1
        && epi.slopes.is_none()
        && let Some(w) = cx.ins[1].data
    {
        return pointwise_as_linear(cx, g, w, bias, epi, title);
    }
    if transposed_shape(&g, shuffle, epi.slopes.is_some())
        && cx.asm512().is_some()
        && let Some(w) = cx.ins[1].data
    {
        return transposed(cx, g, w, bias, epi, title);
    }
    let groups = g.groups;
    let og = g.o / groups;
    // rows per GEMM batch, `subs` batches per group
    let rows = shuffle_rows(og, g.o, shuffle).ok_or_else(|| {
        cx.unsupported(format!(
            "groups of {og} channels and a shuffle in blocks of {}",
            g.o / shuffle
        ))
    })?;
    let subs = og / rows;
    let k = g.cg * g.kh * g.kw;
    let p = g.ho * g.wo;
    // The assembled tile needs packed weights (constant) and sets the
    // panel shapes; otherwise the Cranelift tile of the options.
    let tile = match cx.asm.as_deref() {
        Some(store) if cx.ins[1].data.is_some() => {
            let (mr, nr) = gemm::asm_shape_for(store.level(), rows, p, k);
            Tile { mr, nv: nr / 4 }
        }
        _ => cx.tile,
    };
    let mut kernels: Kernels = Vec::new();
    // im2col band by band inside the GEMM kernel (see `BandedConv`)
    let band = band_rows(&g, shuffle, cx.ins[1].data.is_some());
    let BSide { b, b_off, banded } = conv_b(cx, g, band, k, &mut kernels)?;
    if shuffle > 1 {
        unshuffle_slopes(cx, &g, &mut epi, shuffle, &mut kernels)?;
    }
    // A, one block of `rows` rows per GEMM batch
    let blocks = groups * subs;
    let (a, a_per_block) = conv_a(cx, rows, k, blocks, tile.mr);
    let mut offs = Vec::with_capacity(g.n * blocks);
    if let Some(r) = band {
        // one group, one block: batch (image, band) writes the band's
        // columns of every output row
        for n in 0..g.n {
            for bi in 0..g.ho / r {
                offs.push([0, b_off(n, bi), (n * g.o * p + bi * r * g.wo) as i64, 0]);
            }
        }
    } else {
        for n in 0..g.n {
            for blk in 0..blocks {
                // the block's first row, before and after the shuffle
                let o0 = blk * rows;
                let stored = if shuffle > 1 {
                    shuffled(o0, g.o, shuffle)
                } else {
                    o0
                };
                offs.push([
                    (blk * a_per_block) as i64,
                    b_off(n, blk / subs),
                    ((n * g.o + stored) * p) as i64,
                    o0 as i64,
                ]);
            }
        }
    }
    let init = match bias {
        Some(b) => Init::Row(b),
        None => Init::Zero,
    };
    let mut gm = Gemm {
        batch: offs.len(),
        offsets: gemm::offset_table(cx.consts, &offs),
        init,
        epi,
        title,
        ..Gemm::new(
            if g.is_pointwise() {
                "pointwise conv"
            } else {
                "conv (im2col)"
            },
            [rows, band.map_or(p, |r| r * g.wo), k],
            a,
            b,
            // consecutive rows of a block are `shuffle` rows apart once stored
            (out_buf, (shuffle * p) as i64),
            tile,
        )
    };
    gm.partition(cx.threads);
    if banded.is_some() {
        gm.one_unit_per_batch();
    }
    if let Some(store) = cx.asm.as_deref_mut() {
        gm.request_asm(store).map_err(|e| cx_err(&cx.name, &e))?;
    }
    match banded {
        Some((im2col, rows)) => kernels.push(Box::new(BandedConv {
            im2col,
            rows,
            gemm: gm,
        })),
        None => kernels.push(Box::new(gm)),
    }
    Ok(kernels)
}

/// Element offset of batch `(image, group or band)` into the GEMM's B.
type BOffset = Box<dyn Fn(usize, usize) -> i64>;

/// A conv's GEMM operand B, from [`conv_b`].
struct BSide {
    b: BSrc,
    b_off: BOffset,
    /// the im2col and band height of a banded conv (`BandedConv`)
    banded: Option<(Im2col, usize)>,
}

/// The GEMM's B: the activations in place (pointwise), the whole im2col
/// matrix (filled by a kernel pushed to `kernels` first), or the bands the
/// GEMM kernel fills itself (`band`: the im2col and its band height are
/// returned for `BandedConv`); and batch `(image, group or band)`'s offset
/// into it.
fn conv_b(
    cx: &mut NodeCx,
    g: Geom,
    band: Option<usize>,
    k: usize,
    kernels: &mut Kernels,
) -> Result<BSide, BackendError> {
    let p = g.ho * g.wo;
    let groups = g.groups;
    let mut banded = None;
    let (b, b_off): (BSrc, BOffset) = if g.is_pointwise() {
        let chw = g.c * g.h * g.w;
        let cghw = g.cg * g.h * g.w;
        (
            BSrc::Strided {
                buf: cx.ins[0].buf,
                ks: p as i64,
            },
            Box::new(move |n, gi| (n * chw + gi * cghw) as i64),
        )
    } else {
        // An empty im2col matrix (a zero-sized dimension) is never read:
        // the plan gives it no bytes, and any location will do.
        let col = match cx.scratch {
            Some(b) => b,
            None if g.im2col_len() == 0 => Buf::output(Loc::Arena(0)),
            None => return Err(cx.unsupported("im2col scratch was not planned")),
        };
        // a band prefetches the next band's input rows as it reads its own
        // (a stem reads the image cold: FasterNet's 4×4 stride-4 stem
        // 0.072 ms alone, 0.18 in the model)
        let ahead = band.map_or(0, |r| 4 * r * g.stride[0] * g.w);
        let panel = im2col_panel(cx, &g, band.unwrap_or(g.ho) * g.wo, ahead)?;
        let im2col = Im2col {
            x: cx.ins[0].buf,
            col,
            g,
            panel,
        };
        match band {
            Some(r) => {
                // batch (image, band) reads its own band of the matrix
                let per = k * r * g.wo;
                let bands = g.ho / r;
                banded = Some((im2col, r));
                (
                    BSrc::Strided {
                        buf: Buf::input(col.loc),
                        ks: (r * g.wo) as i64,
                    },
                    Box::new(move |n, bi| ((n * bands + bi) * per) as i64),
                )
            }
            None => {
                kernels.push(Box::new(im2col));
                let per = k * p;
                (
                    BSrc::Strided {
                        buf: Buf::input(col.loc),
                        ks: p as i64,
                    },
                    Box::new(move |n, gi| ((n * groups + gi) * per) as i64),
                )
            }
        }
    };
    Ok(BSide { b, b_off, banded })
}

/// The description of a fused conv's kernel (`None` for a plain conv2d).
fn conv_title(op: &Op, g: &Geom, epi: &Epilogue, bias: bool, shuffle: usize) -> Option<String> {
    matches!(op, Op::Fused(_)).then(|| {
        let kind = if g.is_depthwise() {
            "depthwise"
        } else if g.is_pointwise() {
            "pointwise"
        } else {
            "im2col"
        };
        format!(
            "fused {kind} conv {}→{} {}x{}{}{}",
            g.c,
            g.o,
            g.kh,
            g.kw,
            epi.suffix(bias),
            if shuffle > 1 {
                format!(" shuffle {shuffle}")
            } else {
                String::new()
            }
        )
    })
}

/// A shuffled conv's dynamic-ReLU slopes are indexed by stored channel:
/// a kernel copies them into row order behind the im2col matrix, and the
/// epilogue reads that copy.
fn unshuffle_slopes(
    cx: &NodeCx,
    g: &Geom,
    epi: &mut Epilogue,
    shuffle: usize,
    kernels: &mut Kernels,
) -> Result<(), BackendError> {
    let Some(s) = epi.slopes else {
        return Ok(());
    };
    let at = match cx.scratch.map(|b| b.loc) {
        Some(Loc::Arena(off)) => off + im2col_bytes(g),
        _ => return Err(cx.unsupported("slope scratch was not planned")),
    };
    kernels.push(Box::new(UnshuffleSlopes {
        a1: s.a1,
        a2: s.a2,
        dst: Buf::output(Loc::Arena(at)),
        channels: g.o,
        shuffle,
    }));
    epi.slopes = Some(Slopes {
        a1: Buf::input(Loc::Arena(at)),
        a2: Buf::input(Loc::Arena(at + 4 * g.o)),
        batch_stride: 0,
    });
    Ok(())
}

/// The weights as the GEMM's A, one block of `rows` rows per batch: packed
/// when constant, read in place otherwise; and the elements between
/// consecutive blocks.
fn conv_a(cx: &mut NodeCx, rows: usize, k: usize, blocks: usize, mr: usize) -> (ASrc, usize) {
    match cx.ins[1].data {
        Some(w) => {
            let mut packed = Vec::with_capacity(blocks * gemm::packed_a_len(rows, k, mr));
            for blk in 0..blocks {
                packed.extend(gemm::pack_a(&w[blk * rows * k..], rows, k, k, 1, mr));
            }
            let addr = cx.consts.add(&packed);
            (ASrc::Packed { addr }, gemm::packed_a_len(rows, k, mr))
        }
        None => (
            ASrc::Strided {
                buf: cx.ins[1].buf,
                rs: k as i64,
                ks: 1,
            },
            rows * k,
        ),
    }
}

fn cx_err(node: &str, msg: &str) -> BackendError {
    BackendError::Codegen {
        node: node.to_string(),
        msg: format!("assembling the GEMM tile: {msg}"),
    }
}

/// A `fused_conv` runs as the convolution kernel when its geometry is one
/// the kernel takes, its shuffle maps to row strides, and its dynamic-ReLU
/// slopes are per channel.
pub(crate) fn fused_supports(g: &Graph, id: NodeId) -> bool {
    let node = g.node(id);
    let Op::Fused(FusedOp::Conv {
        bias,
        act,
        residual,
        shuffle,
        ..
    }) = node.op
    else {
        return false;
    };
    let ops = fused::types(g, id);
    let Some(out) = node.outputs.first().map(|o| &o.ty) else {
        return false;
    };
    let l = fused::layout(bias, act, residual);
    let Some(geom) = ops
        .get(l.w)
        .and_then(|w| Geom::of(&node.op, &ops[l.x].shape, &w.shape, &out.shape))
    else {
        return false;
    };
    // A channel shuffle (Mobile-Former-26M) is where each output row is
    // stored: any shuffle for the depthwise kernel (one plane per unit),
    // for a GEMM one whose blocks nest with the conv groups (a fixed C row
    // stride per batch).
    if shuffle != 1
        && !geom.is_depthwise()
        && shuffle_rows(geom.o / geom.groups, geom.o, shuffle).is_none()
    {
        return false;
    }
    match l.slopes {
        None => true,
        Some((i1, i2)) => {
            let s1 = fused::slope_batch_stride(&ops[i1], &out.shape);
            let s2 = fused::slope_batch_stride(&ops[i2], &out.shape);
            // The GEMM's slope rows are offset per group, not per image:
            // per-image slopes of a batch run as the expansion.
            s1.is_some() && s1 == s2 && (geom.is_depthwise() || s1 == Some(0))
        }
    }
}

/// A `fused_conv`: the convolution kernel with the epilogue in its tile.
pub(crate) fn lower_fused(cx: &mut NodeCx, f: &FusedOp) -> Result<Kernels, BackendError> {
    let FusedOp::Conv {
        bias,
        act,
        residual,
        shuffle,
        ..
    } = *f
    else {
        return Err(cx.unsupported(format!("{} is not fused_conv", f.name())));
    };
    let l = fused::layout(bias, act, residual);
    let out = cx.outs[0].1.shape.clone();
    let slopes = match l.slopes {
        None => None,
        Some((i1, i2)) => {
            let stride = fused::slope_batch_stride(&cx.ins[i1].ty, &out)
                .ok_or_else(|| cx.unsupported("dynamic-ReLU slopes are not per channel"))?;
            Some(Slopes {
                a1: cx.ins[i1].buf,
                a2: cx.ins[i2].buf,
                batch_stride: stride,
            })
        }
    };
    let epi = Epilogue {
        act,
        slopes,
        residual: l.residual.map(|i| cx.ins[i].buf),
    };
    let bias = l.bias.map(|i| cx.ins[i].buf);
    lower_with(cx, bias, epi, shuffle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shuffle_positions_and_blocks() {
        // 6 channels in 2 groups: [a0 a1 a2 | b0 b1 b2] -> [a0 b0 a1 b1 a2 b2]
        let pos: Vec<usize> = (0..6).map(|o| shuffled(o, 6, 2)).collect();
        assert_eq!(pos, [0, 2, 4, 1, 3, 5]);
        // conv groups inside a shuffle block, equal, and spanning blocks
        assert_eq!(shuffle_rows(3, 24, 2), Some(3));
        assert_eq!(shuffle_rows(3, 12, 4), Some(3));
        assert_eq!(shuffle_rows(12, 24, 4), Some(6));
        assert_eq!(shuffle_rows(5, 20, 1), Some(5));
        // blocks of 6 and groups of 4 do not nest
        assert_eq!(shuffle_rows(4, 12, 2), None);
        assert_eq!(shuffle_rows(4, 12, 5), None);
    }
}
