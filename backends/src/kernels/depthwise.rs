//! Depthwise convolution (`groups == C`, one input channel per group, any
//! channel multiplier `O/C`): channels outside, SIMD along the output width.
//! Max and average pooling are the same sliding window with another
//! combining step, so they share this kernel ([`Mode`]).
//!
//! A unit is one output plane. Its rows and columns are split statically
//! into an interior, where every kernel tap reads inside the input (f32x4
//! accumulators over 8 output columns at a time, no bounds checks), and a
//! border, where each row and column is emitted with exactly the taps that
//! fall inside (the padding contributes nothing, so nothing is loaded for
//! it). Stride-2 columns are gathered with two loads and a shuffle where
//! the second load stays inside the row, element by element at the edge.
//! With AVX-512 or AVX2, 3×3 interiors (and their one-column left and right
//! edges) are assembled (`dw_plane`), one call per plane; the border rows stay
//! here.
//!
//! Every output element sums `bias + Σ_i Σ_j x·w` in the same order on every
//! path, so results do not depend on which path or thread computed them.
//!
//! A `fused_conv` applies its [`Epilogue`] (activation with this channel's
//! slopes, then the residual at the same index) to each f32x4 or scalar
//! result before the store.

use cranelift_codegen::ir::{InstBuilder, MemFlagsData, Value};

use cranelift_codegen::ir::types::I64;
use cranelift_codegen::ir::{AbiParam, Signature};
use cranelift_codegen::isa::CallConv;
use kiln_ir::fused::Act;

use super::conv::Geom;
use super::epilogue::{Epilogue, Slopes};
use super::{Kernel, Kernels, NodeCx};
use crate::codegen::{Buf, Emitter, F32, V4};
use crate::error::BackendError;
use crate::ukernels::Spec;
use crate::ukernels::vector;
use crate::ukernels::{dw_plane, dw_window};

/// What the window computes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Mode {
    /// `bias + Σ x·w` (depthwise convolution)
    Conv,
    /// maximum over the taps inside the input (padding never wins)
    Max,
    /// mean over the window: divided by `kh·kw` when padding counts, else
    /// by the number of taps inside the input
    Avg {
        /// ONNX `count_include_pad`
        include_pad: bool,
    },
}

/// See the module docs.
struct Depthwise {
    x: Buf,
    /// weights (conv mode only)
    w: Option<Buf>,
    bias: Option<Buf>,
    out: Buf,
    g: Geom,
    mode: Mode,
    /// activation and residual (conv mode only)
    epi: Epilogue,
    /// what a fused kernel computes, for descriptions
    title: Option<String>,
    /// the assembled interior (`dw_plane`, AVX-512 or AVX2) by its number in
    /// the `Registry`, and its geometry
    asm: Option<(usize, dw_plane::Spec)>,
    /// the assembled whole plane (`dw_window`, AVX-512) for the windows
    /// `dw_plane` does not take, by its number in the `Registry`
    window: Option<(usize, dw_window::Spec)>,
    /// the assembled silu or GELU row (`vector`) the sweep calls, by its number
    asm_act: Option<usize>,
    /// channel-shuffle groups of the output (1 = none): output channel `oc`
    /// is stored, and takes its slopes and residual, at
    /// `conv::shuffled(oc, O, shuffle)`
    shuffle: usize,
}

/// One output row's epilogue operands: the residual row (like `dst`) and
/// the channel's dynamic-ReLU slopes as scalars; whether the row computes
/// its interior columns (not when the assembled interior does); and the
/// columns `[lo, hi)` the assembled code computes (edge columns included,
/// see [`asm_edges`]), which the row skips (empty: none).
#[derive(Clone, Copy)]
struct RowEpi {
    res: Option<Value>,
    slopes: Option<(Value, Value)>,
    vector_cols: bool,
    skip: (usize, usize),
}

/// Whether the activation is applied in a sweep over the finished plane
/// (see [`Epilogue::swept`]) rather than to each result; with the assembled
/// interior the hard-sigmoid family is cheap enough inline (a few zmm
/// constants next to the weights), so the borders apply it inline too.
fn swept(epi: &Epilogue, asm: bool) -> bool {
    epi.swept() && !(asm && matches!(epi.act, Act::HardSwish | Act::HardSigmoid))
}

impl Depthwise {
    /// See [`swept`].
    fn swept(&self) -> bool {
        swept(&self.epi, self.asm.is_some() || self.window.is_some())
    }

    /// Folds one input value into an accumulator.
    fn combine(&self, e: &mut Emitter, acc: Value, x: Value, w: Option<Value>) -> Value {
        match (self.mode, w) {
            (Mode::Conv, Some(w)) => e.mul_add(x, w, acc),
            (Mode::Max, _) => e.b.ins().fmax(acc, x),
            _ => e.b.ins().fadd(acc, x),
        }
    }

    /// Turns an accumulator over `count` valid taps into the result.
    fn finish(&self, e: &mut Emitter, acc: Value, count: usize, vector: bool) -> Value {
        match self.mode {
            Mode::Avg { include_pad } => {
                let n = if include_pad {
                    self.g.kh * self.g.kw
                } else {
                    count
                };
                let ty = if vector { V4 } else { F32 };
                let d = e.kc(ty, n.max(1) as f32);
                e.b.ins().fdiv(acc, d)
            }
            _ => acc,
        }
    }
}

/// Kernels with at most this many taps keep their weights in registers.
const MAX_REG_TAPS: usize = 9;

/// The output range `[lo, hi)` where every tap of a kernel of `taps` reads
/// inside an input of length `len`, and the per-output valid taps.
fn interior(out: usize, len: usize, taps: usize, s: usize, d: usize, p: usize) -> (usize, usize) {
    let mut lo = 0;
    let mut hi = out;
    for t in 0..taps {
        let off = (t * d) as i64 - p as i64;
        // need o·s + off in [0, len)
        let l = if off >= 0 {
            0
        } else {
            ((-off) as usize).div_ceil(s)
        };
        let h = if len as i64 - off <= 0 {
            0
        } else {
            ((len as i64 - off - 1) as usize / s + 1).min(out)
        };
        lo = lo.max(l);
        hi = hi.min(h);
    }
    // A window larger than the padded input has no interior, and its first
    // interior index can lie past the last output (h = 1, 5 taps, pad 2:
    // lo = 2 > out = 1); clamped, the edge rows or columns [0, lo) stay
    // inside the output. Unclamped they wrote one row past the plane.
    let lo = lo.min(out);
    (lo, hi.max(lo))
}

/// The taps `t` whose input index `o·s + t·d - p` lies in `[0, len)`.
fn valid_taps(o: usize, len: usize, taps: usize, s: usize, d: usize, p: usize) -> Vec<usize> {
    (0..taps)
        .filter(|&t| {
            let i = (o * s + t * d) as i64 - p as i64;
            i >= 0 && i < len as i64
        })
        .collect()
}

impl Depthwise {
    /// Emits one output row: `rows[i]` points at input row `oh·sh + i·dh -
    /// pt` for every valid tap row `i` (others are `None`). Without
    /// `re.vector_cols`, only the border columns (the assembled interior
    /// computes the others).
    fn row(
        &self,
        e: &mut Emitter,
        rows: &[Option<Value>],
        dst: Value,
        wts: &dyn Fn(&mut Emitter, usize, bool) -> Option<Value>,
        bias: Value,
        re: RowEpi,
    ) {
        let g = self.g;
        let (sw, dw, pl) = (g.stride[1], g.dil[1], g.pad[1]);
        let rf = Emitter::rflags(self.x);
        let wf = Emitter::wflags();
        let (ow_lo, ow_hi) = interior(g.wo, g.w, g.kw, sw, dw, pl);
        // scalar columns: the border, and the interior's tail
        let rows_valid = rows.iter().filter(|r| r.is_some()).count();
        // expensive activations (and then the residual) run in a sweep over
        // the finished plane, see `Epilogue::swept`
        let inline = !self.swept();
        let resf = self.epi.residual.map(Emitter::rflags).filter(|_| inline);
        let slv = re
            .slopes
            .map(|(s1, s2)| (e.b.ins().splat(V4, s1), e.b.ins().splat(V4, s2)));
        let scalar_col = |e: &mut Emitter, ow: usize| {
            let mut acc = bias;
            let cols = valid_taps(ow, g.w, g.kw, sw, dw, pl);
            for (i, r) in rows.iter().enumerate() {
                let Some(r) = *r else { continue };
                for &j in &cols {
                    let iw = ow * sw + j * dw - pl;
                    let x = e.load(F32, rf, r, 4 * iw as i64);
                    let w = wts(e, i * g.kw + j, false);
                    acc = self.combine(e, acc, x, w);
                }
            }
            let y = self.finish(e, acc, rows_valid * cols.len(), false);
            let mut y = if inline {
                self.epi.activate(e, F32, y, re.slopes)
            } else {
                y
            };
            if let (Some(r), Some(f)) = (re.res, resf) {
                let z = e.load(F32, f, r, 4 * ow as i64);
                y = e.b.ins().fadd(y, z);
            }
            e.store(wf, y, dst, 4 * ow as i64);
        };
        for ow in (0..ow_lo).chain(ow_hi..g.wo) {
            if !(re.skip.0..re.skip.1).contains(&ow) {
                scalar_col(e, ow);
            }
        }
        // the assembled interior computes the rest
        if !re.vector_cols {
            return;
        }
        let n = ow_hi - ow_lo;
        let chunks = n / 4;
        // a chunk starting at output c reads input up to c·sw + j·dw - pl + 3·sw;
        // the two-load gather for sw = 2 reads one element further
        let safe = |c: usize| -> bool { sw == 1 || (c + 3) * sw + (g.kw - 1) * dw + 1 < g.w + pl };
        let vbias = e.b.ins().splat(V4, bias);
        let gather = |e: &mut Emitter, r: Value, off: i64, fast: bool| -> Value {
            if sw == 1 {
                return e.load(V4, rf, r, off);
            }
            if sw == 2 && fast {
                return e.load_even(rf, r, off);
            }
            let mut v = e.load(F32, rf, r, off);
            v = e.b.ins().scalar_to_vector(V4, v);
            for l in 1..4u8 {
                let s = e.load(F32, rf, r, off + 4 * (i64::from(l) * sw as i64));
                v = e.b.ins().insertlane(v, s, l);
            }
            v
        };
        let chunk =
            |e: &mut Emitter, c_base: Value, static_c: Option<usize>, nvec: usize, fast: bool| {
                // c_base: byte offset of the chunk's first output column
                let mut acc = vec![vbias; nvec];
                for (i, r) in rows.iter().enumerate() {
                    let Some(r) = *r else { continue };
                    for j in 0..g.kw {
                        let w = wts(e, i * g.kw + j, true);
                        for (v, a) in acc.iter_mut().enumerate() {
                            // input byte offset: (c + 4v)·sw·4 + (j·dw - pl)·4
                            let off = 4 * ((4 * v * sw + j * dw) as i64 - pl as i64);
                            let src = match static_c {
                                Some(_) => r,
                                None => {
                                    let scaled = e.b.ins().imul_imm_s(c_base, sw as i64);
                                    e.b.ins().iadd(r, scaled)
                                }
                            };
                            let off = off + static_c.map_or(0, |c| 4 * (c * sw) as i64);
                            let x = gather(e, src, off, fast);
                            *a = self.combine(e, *a, x, w);
                        }
                    }
                }
                for (v, a) in acc.into_iter().enumerate() {
                    let a = self.finish(e, a, rows_valid * g.kw, true);
                    let mut a = if inline {
                        self.epi.activate(e, V4, a, slv)
                    } else {
                        a
                    };
                    let off = 16 * v as i64 + static_c.map_or(0, |c| 4 * c as i64);
                    if let (Some(r), Some(f)) = (re.res, resf) {
                        let r = match static_c {
                            Some(_) => r,
                            None => e.b.ins().iadd(r, c_base),
                        };
                        let z = e.load(V4, f, r, off);
                        a = e.b.ins().fadd(a, z);
                    }
                    let d = match static_c {
                        Some(_) => dst,
                        None => e.b.ins().iadd(dst, c_base),
                    };
                    e.store(wf, a, d, off);
                }
            };
        // fast chunks (pairs of vectors in a loop), then the rest one by one
        let fast_chunks = (0..chunks).take_while(|&k| safe(ow_lo + 4 * k)).count();
        let pairs = fast_chunks / 2;
        if pairs > 0 {
            e.for_static(
                4 * ow_lo as i64,
                4 * (ow_lo + 8 * pairs) as i64,
                32,
                |e, c| chunk(e, c, None, 2, true),
            );
        }
        for k in 2 * pairs..chunks {
            let c = ow_lo + 4 * k;
            let z = e.ic(0);
            chunk(e, z, Some(c), 1, k < fast_chunks);
        }
        for ow in (ow_lo + 4 * chunks)..ow_hi {
            scalar_col(e, ow);
        }
    }

    /// Applies the activation, then the residual, to the output plane at
    /// `dst` that the unit has just written (still in L1), with constants
    /// local to the sweep: once per plane rather than per row, whose
    /// constants cost ~10 % of a silu sweep over a 32-wide row.
    fn sweep_plane(&self, e: &mut Emitter, dst: Value, res: Option<Value>) {
        let wo = self.g.ho * self.g.wo;
        let rf = MemFlagsData::new().with_notrap();
        let wf = Emitter::wflags();
        let resf = self.epi.residual.map(Emitter::rflags);
        if let Some(id) = self.asm_act {
            // fn(src, dst, n) in place, then only the residual below
            let sig = e.b.import_signature(vector::row_signature());
            let f = e.asm_fn(id);
            let n = e.ic(wo as i64);
            e.b.ins().call_indirect(sig, f, &[dst, dst, n]);
            if res.is_none() {
                return;
            }
        }
        let act = |e: &mut Emitter, ty, x| {
            if self.asm_act.is_some() {
                x
            } else {
                self.epi.activate(e, ty, x, None)
            }
        };
        e.local_consts(|e| {
            if wo >= 4 {
                e.for_static(0, (wo / 4) as i64, 1, |e, v| {
                    let d = e.index(dst, v, 16);
                    let x = e.load(V4, rf, d, 0);
                    let mut x = act(e, V4, x);
                    if let (Some(r), Some(f)) = (res, resf) {
                        let r = e.index(r, v, 16);
                        let y = e.load(V4, f, r, 0);
                        x = e.b.ins().fadd(x, y);
                    }
                    e.store(wf, x, d, 0);
                });
            }
            for col in 4 * (wo / 4)..wo {
                let x = e.load(F32, rf, dst, 4 * col as i64);
                let mut x = act(e, F32, x);
                if let (Some(r), Some(f)) = (res, resf) {
                    let y = e.load(F32, f, r, 4 * col as i64);
                    x = e.b.ins().fadd(x, y);
                }
                e.store(wf, x, dst, 4 * col as i64);
            }
        });
    }
}

impl Depthwise {
    /// Where output channel `oc` of image `n` (unit `u`) is stored: its
    /// plane's slot and its stored channel (the shuffle permutes whole
    /// planes).
    fn stored_at(&self, e: &mut Emitter, u: Value, n: Value, oc: Value) -> (Value, Value) {
        if self.shuffle == 1 {
            return (u, oc);
        }
        let o = self.g.o;
        let per = (o / self.shuffle) as i64;
        let j = e.b.ins().urem_imm_u(oc, per);
        let gi = e.b.ins().udiv_imm_u(oc, per);
        let pos = e.b.ins().imul_imm_s(j, self.shuffle as i64);
        let pos = e.b.ins().iadd(pos, gi);
        let slot = e.b.ins().imul_imm_s(n, o as i64);
        (e.b.ins().iadd(slot, pos), pos)
    }

    /// The accumulators' start: channel `oc`'s bias (at `bias`, the base
    /// of `self.bias`), else the pooling identity.
    fn start_value(&self, e: &mut Emitter, bias: Option<Value>, oc: Value) -> Value {
        match (bias, self.bias, self.mode) {
            (Some(bp), Some(bb), _) => {
                let p = e.index(bp, oc, 4);
                e.load(F32, Emitter::rflags(bb), p, 0)
            }
            (_, _, Mode::Max) => e.fc(f32::NEG_INFINITY),
            _ => e.fc(0.0),
        }
    }
}

/// The dynamic ReLU's slopes of image `n`, stored channel `pos`
/// (`n·batch_stride + pos`), from the bases of `a1` and `a2`.
fn slopes_of(
    e: &mut Emitter,
    (p1, p2, s, f): (Value, Value, Slopes, MemFlagsData),
    n: Value,
    pos: Value,
) -> (Value, Value) {
    let i = if s.batch_stride == 0 {
        pos
    } else {
        let nb = e.b.ins().imul_imm_s(n, s.batch_stride as i64);
        e.b.ins().iadd(nb, pos)
    };
    let q1 = e.index(p1, i, 4);
    let q2 = e.index(p2, i, 4);
    let f2 = Emitter::rflags(s.a2);
    (e.load(F32, f, q1, 0), e.load(F32, f2, q2, 0))
}

/// Calls assembled function `id` (a `dw_plane` interior or a `dw_window`
/// plane) on `[x, dst, w]`, the residual (none: a null pointer it never
/// reads), the start value and the dynamic ReLU's slopes (none: zeros).
fn call_interior(
    e: &mut Emitter,
    id: usize,
    [x, dst, w]: [Value; 3],
    res: Option<Value>,
    b: Value,
    slopes: Option<(Value, Value)>,
) {
    let sig = e.b.import_signature(interior_signature());
    let r = res.unwrap_or_else(|| e.ic(0));
    let (s1, s2) = slopes.unwrap_or_else(|| {
        let z = e.fc(0.0);
        (z, z)
    });
    let f = e.asm_fn(id);
    e.b.ins().call_indirect(sig, f, &[x, dst, w, r, b, s1, s2]);
}

/// The assembled interior's signature: `fn(x, dst, w, res, bias, s1, s2)`
/// (`ukernels/dw_plane.rs`).
fn interior_signature() -> Signature {
    let mut sig = Signature::new(CallConv::SystemV);
    for _ in 0..4 {
        sig.params.push(AbiParam::new(I64));
    }
    for _ in 0..3 {
        sig.params.push(AbiParam::new(F32));
    }
    sig
}

impl Kernel for Depthwise {
    fn describe(&self) -> String {
        let avx = match (self.asm, self.window) {
            (Some((_, spec)), _) => format!(" {}", spec.width.name()),
            (None, Some(_)) => format!(" {}", vector::Width::Zmm.name()),
            (None, None) => String::new(),
        };
        match &self.title {
            Some(t) => format!("{t}: depthwise window {:?}{avx}", self.g),
            None => format!("depthwise window ({:?}) {:?}{avx}", self.mode, self.g),
        }
    }

    fn units(&self) -> usize {
        self.g.n * self.g.o
    }

    fn cost(&self) -> f64 {
        2.0 * (self.g.n * self.g.o * self.g.ho * self.g.wo * self.g.kh * self.g.kw) as f64
    }

    fn emit(&self, e: &mut Emitter, begin: Value, end: Value) {
        let g = self.g;
        let mult = g.o / g.c;
        let taps = g.kh * g.kw;
        let x = e.base(self.x);
        let w = self.w.map(|w| (e.base(w), Emitter::rflags(w)));
        let out = e.base(self.out);
        let bias = self.bias.map(|b| e.base(b));
        let res = self.epi.residual.map(|r| e.base(r));
        let slopes = self
            .epi
            .slopes
            .map(|s| (e.base(s.a1), e.base(s.a2), s, Emitter::rflags(s.a1)));
        let (sh, dh, pt) = (g.stride[0], g.dil[0], g.pad[0]);
        let (oh_lo, oh_hi) = interior(g.ho, g.h, g.kh, sh, dh, pt);
        e.for_range(begin, end, 1, |e, u| {
            let n = e.b.ins().udiv_imm_u(u, g.o as i64);
            let oc = e.b.ins().urem_imm_u(u, g.o as i64);
            let ic = if mult == 1 {
                oc
            } else {
                e.b.ins().udiv_imm_u(oc, mult as i64)
            };
            let plane = e.b.ins().imul_imm_s(n, g.c as i64);
            let plane = e.b.ins().iadd(plane, ic);
            let src = e.index(x, plane, 4 * (g.h * g.w) as i64);
            let (slot, pos) = self.stored_at(e, u, n, oc);
            let dst = e.index(out, slot, 4 * (g.ho * g.wo) as i64);
            // the residual plane has the output's layout
            let res_plane = res.map(|r| e.index(r, slot, 4 * (g.ho * g.wo) as i64));
            let slope_vals = slopes.map(|sl| slopes_of(e, sl, n, pos));
            let wp = w.map(|(w, f)| (e.index(w, oc, 4 * taps as i64), f));
            let b = self.start_value(e, bias, oc);
            if let Some((id, spec)) = self.window {
                // the whole plane in one call (a max pool reads no weights)
                let wp = match wp {
                    Some((wp, _)) => wp,
                    None => e.ic(0),
                };
                let res = res_plane.filter(|_| spec.residual);
                call_interior(e, id, [src, dst, wp], res, b, slope_vals);
                if self.swept() {
                    self.sweep_plane(e, dst, res_plane);
                }
                return;
            }
            let pre: Vec<(Value, Value)> = match wp {
                Some((wp, f)) if taps <= MAX_REG_TAPS => (0..taps)
                    .map(|t| {
                        let s = e.load(F32, f, wp, 4 * t as i64);
                        (s, e.b.ins().splat(V4, s))
                    })
                    .collect(),
                _ => vec![],
            };
            let wts = |e: &mut Emitter, t: usize, vector: bool| -> Option<Value> {
                let (wp, f) = wp?;
                Some(match pre.get(t) {
                    Some(&(s, v)) => {
                        if vector {
                            v
                        } else {
                            s
                        }
                    }
                    None => {
                        let s = e.load(F32, f, wp, 4 * t as i64);
                        if vector { e.b.ins().splat(V4, s) } else { s }
                    }
                })
            };
            let row_ptrs = |e: &mut Emitter, oh: Value, taps_i: &[usize]| -> Vec<Option<Value>> {
                let ih0 = e.b.ins().imul_imm_s(oh, sh as i64);
                let base = e.index(src, ih0, 4 * g.w as i64);
                (0..g.kh)
                    .map(|i| {
                        taps_i
                            .contains(&i)
                            .then(|| e.off(base, 4 * ((i * dh) as i64 - pt as i64) * g.w as i64))
                    })
                    .collect()
            };
            // border rows, each with its own valid taps
            // rows the assembled code computes (edge rows included)
            let asm_rows = match self.asm {
                Some(_) => asm_rows(g),
                None => (0, 0),
            };
            for oh in (0..oh_lo).chain(oh_hi..g.ho) {
                if (asm_rows.0..asm_rows.1).contains(&oh) {
                    continue;
                }
                let taps_i = valid_taps(oh, g.h, g.kh, sh, dh, pt);
                let ohv = e.ic(oh as i64);
                let rows = row_ptrs(e, ohv, &taps_i);
                let d = e.off(dst, 4 * (oh * g.wo) as i64);
                let re = RowEpi {
                    res: res_plane.map(|r| e.off(r, 4 * (oh * g.wo) as i64)),
                    slopes: slope_vals,
                    vector_cols: true,
                    skip: (0, 0),
                };
                self.row(e, &rows, d, &wts, b, re);
            }
            let all: Vec<usize> = (0..g.kh).collect();
            // with the assembled interior, only the border columns it does
            // not compute here
            let (ow_lo, ow_hi) = match self.asm {
                Some(_) => asm_cols(g),
                None => (0, 0),
            };
            let cols = self.asm.is_none() || ow_lo > 0 || ow_hi < g.wo;
            if cols {
                e.for_static(oh_lo as i64, oh_hi as i64, 1, |e, oh| {
                    let rows = row_ptrs(e, oh, &all);
                    let d = e.index(dst, oh, 4 * g.wo as i64);
                    let re = RowEpi {
                        res: res_plane.map(|r| e.index(r, oh, 4 * g.wo as i64)),
                        slopes: slope_vals,
                        vector_cols: self.asm.is_none(),
                        skip: (ow_lo, ow_hi),
                    };
                    self.row(e, &rows, d, &wts, b, re);
                });
            }
            if let (Some((id, spec)), Some((wp, _))) = (self.asm, wp) {
                let first = (asm_rows.0 * sh) as i64 - pt as i64;
                let x0 = e.off(
                    src,
                    4 * (first * g.w as i64 + (ow_lo * g.stride[1]) as i64 - g.pad[1] as i64),
                );
                let o0 = 4 * (asm_rows.0 * g.wo + ow_lo) as i64;
                let d0 = e.off(dst, o0);
                let res = match res_plane {
                    Some(r) if spec.residual => Some(e.off(r, o0)),
                    _ => None,
                };
                call_interior(e, id, [x0, d0, wp], res, b, slope_vals);
            }
            if self.swept() {
                self.sweep_plane(e, dst, res_plane);
            }
        });
    }
}

/// Lowers a depthwise conv2d or `fused_conv` (see [`Geom::is_depthwise`]).
pub(crate) fn lower(
    cx: &mut NodeCx,
    g: Geom,
    bias: Option<Buf>,
    epi: Epilogue,
    title: Option<String>,
    shuffle: usize,
) -> Result<Kernels, BackendError> {
    let (x, w, out) = (cx.ins[0].buf, cx.ins[1].buf, cx.outs[0].0);
    let k = kernel(cx, [x, w, out], g, bias, epi, title, shuffle)?;
    Ok(vec![Box::new(k)])
}

/// The depthwise convolution kernel of geometry `g` reading `x` and the
/// weights `w` and writing `out` (`[x, w, out]`), one unit per output
/// plane; [`lower`] gives it the node's operands, `conv_chain::ChainConv` its
/// band buffers.
pub(crate) fn kernel(
    cx: &mut NodeCx,
    [x, w, out]: [Buf; 3],
    g: Geom,
    bias: Option<Buf>,
    epi: Epilogue,
    title: Option<String>,
    shuffle: usize,
) -> Result<impl Kernel + use<>, BackendError> {
    let asm = match cx.asm_width() {
        Some((store, w)) => match asm_spec(g, &epi, w) {
            Some(spec) => Some((
                store
                    .request(Spec::DwPlane(spec))
                    .map_err(BackendError::Jit)?,
                spec,
            )),
            None => None,
        },
        None => None,
    };
    let window = match (&asm, cx.asm512()) {
        (None, Some(store)) => match window_spec(g, &epi) {
            Some(spec) => Some((
                store
                    .request(Spec::DwWindow(spec))
                    .map_err(BackendError::Jit)?,
                spec,
            )),
            None => None,
        },
        _ => None,
    };
    // the sweep's silu or GELU, assembled: the f32x4 exp made a
    // silu-fused depthwise conv (MobileViTv2) run at a third of its plain
    // speed
    let row_func = match epi.act {
        Act::Silu => Some(vector::Func::Silu),
        Act::Gelu => Some(vector::Func::GeluEpilogue),
        _ => None,
    };
    let asm_act = match (cx.asm_width(), row_func) {
        (Some((store, w)), Some(f)) => Some(
            store
                .request(Spec::Unary(f, w))
                .map_err(BackendError::Jit)?,
        ),
        _ => None,
    };
    Ok(Depthwise {
        x,
        w: Some(w),
        bias,
        out,
        g,
        mode: Mode::Conv,
        epi,
        title,
        asm,
        window,
        asm_act,
        shuffle,
    })
}

/// The assembled interior for a conv of geometry `g` with epilogue `epi` at
/// width `width`: 3×3, undilated, horizontal stride 1 or 2, a non-empty
/// interior (at AVX2, at least 8 output columns).
fn asm_spec(g: Geom, epi: &Epilogue, width: vector::Width) -> Option<dw_plane::Spec> {
    if g.kh != 3 || g.kw != 3 || g.dil != [1, 1] || !matches!(g.stride[1], 1 | 2) {
        return None;
    }
    // AVX2 planes narrower than one ymm are all masked chunk, where the
    // f32x4 code was faster (`depthwise_conv` bench, 576×7×7: 9.5 against
    // 11.1 GFLOP/s)
    if width == vector::Width::Ymm && g.wo < 8 {
        return None;
    }
    let (oh_lo, oh_hi) = interior(g.ho, g.h, g.kh, g.stride[0], g.dil[0], g.pad[0]);
    let (ow_lo, ow_hi) = interior(g.wo, g.w, g.kw, g.stride[1], g.dil[1], g.pad[1]);
    if oh_hi == oh_lo || ow_hi == ow_lo {
        return None;
    }
    let (left, right) = asm_edges(g);
    let (top, bottom) = asm_edge_rows(g);
    // what the Cranelift row applies inline; swept activations (and then
    // the residual) stay in the sweep over the plane
    let act = if dw_plane::assembles(epi.act) {
        epi.act
    } else {
        Act::None
    };
    Some(dw_plane::Spec {
        sh: g.stride[0],
        sw: g.stride[1],
        w: g.w,
        wo: g.wo,
        rows: oh_hi - oh_lo + usize::from(top) + usize::from(bottom),
        cols: ow_hi - ow_lo + usize::from(left) + usize::from(right),
        top,
        bottom,
        left,
        right,
        act,
        residual: epi.residual.is_some() && !swept(epi, true),
        width,
    })
}

/// The assembled whole plane for a conv of geometry `g` with epilogue
/// `epi` (AVX-512), when `dw_window` takes it.
fn window_spec(g: Geom, epi: &Epilogue) -> Option<dw_window::Spec> {
    let act = if dw_plane::assembles(epi.act) {
        epi.act
    } else {
        Act::None
    };
    let spec = window_of(g, act, epi.residual.is_some() && !swept(epi, true));
    spec.fits().then_some(spec)
}

/// The plane geometry of `g` as the assembled window kernels take it
/// (`dw_window`, and `conv_direct` per input channel), with this epilogue.
pub(crate) fn window_of(g: Geom, act: Act, residual: bool) -> dw_window::Spec {
    dw_window::Spec {
        kh: g.kh,
        kw: g.kw,
        sh: g.stride[0],
        sw: g.stride[1],
        dh: g.dil[0],
        dw: g.dil[1],
        pt: g.pad[0],
        pl: g.pad[1],
        h: g.h,
        w: g.w,
        ho: g.ho,
        wo: g.wo,
        act,
        residual,
        max: false,
    }
}

/// Whether the assembled interior of a 3×3 conv of geometry `g` also
/// computes the left and the right edge column of its rows: when the only
/// column left of the interior is column 0 and lacks just tap column 0 (a
/// padding of 1), and likewise on the right with tap column 2. Per-row
/// Cranelift calls for two scalar columns cost as much as the assembled
/// interior of a small plane.
fn asm_edges(g: Geom) -> (bool, bool) {
    edge_pair(g.wo, g.w, g.kw, g.stride[1], g.dil[1], g.pad[1])
}

/// Along one axis (`out` outputs over an input of `len`, `k` taps, stride
/// `s`, dilation `d`, leading pad `p`): whether the first and the last
/// output are one step outside the interior and lack exactly the one
/// padding tap (tap 0 first, tap 2 last) that the assembled code can skip.
fn edge_pair(out: usize, len: usize, k: usize, s: usize, d: usize, p: usize) -> (bool, bool) {
    let (lo, hi) = interior(out, len, k, s, d, p);
    let first = lo == 1 && valid_taps(0, len, k, s, d, p) == [1, 2];
    let last = hi + 1 == out && hi > lo && valid_taps(out - 1, len, k, s, d, p) == [0, 1];
    (first, last)
}

/// Whether the assembled interior of `g` also computes the top and the
/// bottom edge row (as [`asm_edges`] for rows, and only when it computes
/// whole rows, edge columns included, so no Cranelift code is left for
/// those rows): on small planes (7×7, 14×14) the two border rows in f32x4
/// cost as much as the rest.
fn asm_edge_rows(g: Geom) -> (bool, bool) {
    if asm_cols(g) != (0, g.wo) {
        return (false, false);
    }
    edge_pair(g.ho, g.h, g.kh, g.stride[0], g.dil[0], g.pad[0])
}

/// The output rows `[lo, hi)` the assembled interior computes for `g`.
fn asm_rows(g: Geom) -> (usize, usize) {
    let (oh_lo, oh_hi) = interior(g.ho, g.h, g.kh, g.stride[0], g.dil[0], g.pad[0]);
    let (top, bottom) = asm_edge_rows(g);
    (oh_lo - usize::from(top), oh_hi + usize::from(bottom))
}

/// The output columns `[lo, hi)` the assembled interior computes for `g`.
fn asm_cols(g: Geom) -> (usize, usize) {
    let (ow_lo, ow_hi) = interior(g.wo, g.w, g.kw, g.stride[1], g.dil[1], g.pad[1]);
    let (left, right) = asm_edges(g);
    (ow_lo - usize::from(left), ow_hi + usize::from(right))
}

/// Lowers a pooling window of geometry `g` (as a depthwise conv with one
/// tap-free "channel multiplier" of 1).
pub(crate) fn lower_pool(cx: &mut NodeCx, g: Geom, mode: Mode) -> Result<Kernels, BackendError> {
    // max pooling: whole planes assembled (`dw_window`, AVX-512)
    let spec = dw_window::Spec {
        max: true,
        ..window_of(g, Act::None, false)
    };
    let window = match (mode, cx.asm512()) {
        (Mode::Max, Some(store)) if spec.fits() => Some((
            store
                .request(Spec::DwWindow(spec))
                .map_err(BackendError::Jit)?,
            spec,
        )),
        _ => None,
    };
    Ok(vec![Box::new(Depthwise {
        x: cx.ins[0].buf,
        w: None,
        bias: None,
        out: cx.outs[0].0,
        g,
        mode,
        epi: Epilogue::NONE,
        title: None,
        asm: None,
        window,
        asm_act: None,
        shuffle: 1,
    })])
}
