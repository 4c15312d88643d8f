//! Inverted-residual conv chains (`fused_conv_chain` pointwise → depthwise
//! → pointwise, MobileNetV2 / MobileViTv2 / Mobile-Former blocks) computed
//! band by band, so the expanded tensor never exists in memory.
//!
//! Split into three convolutions, such a block writes its expanded tensor
//! (E channels, often 2–4 MB) and reads it back from L3 twice: once in the
//! depthwise conv, once more as the depthwise output in the projection. Here
//! a unit is a slab of output rows of one image, computed in bands of `R`
//! rows: the expansion GEMM writes the band's window of expanded rows into
//! the unit's own scratch slot (a few hundred KB, L2-resident), the
//! depthwise kernel reads the window and writes the band's `E × R` rows
//! beside it, and the projection GEMM reads those and writes the band's
//! columns of the output (bias, activation, residual in its epilogue).
//! Consecutive bands share `kh − sh` window rows (the halo): they are moved
//! to the window's top instead of recomputed, so only each slab's first
//! band recomputes them (two slabs per image: about 1.5 % more expansion
//! work on a 128-row map, for two units a thread pool can share).
//!
//! The stages are the ordinary kernels ([`Gemm`] with a batch table per
//! band, the depthwise plane kernel on a window whose rows are all inside
//! it), planned on slot 0 and emitted rebased to the unit's slot
//! ([`Emitter::rebased`]). Rows of the window that fall outside the image
//! (the depthwise conv's vertical padding) are zero-filled; the depthwise
//! kernel then only pads horizontally. Each output element is computed by
//! the same instruction sequence as in the split convolutions, so results
//! are identical for every thread count.
//!
//! Opt-in (`CompileOptions::banded_chains`): on the machine it was
//! measured on, the split stages are compute-bound and keep their
//! intermediates in L3, so this saves memory, not time.

use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{InstBuilder, Value};
use kiln_ir::fused::{ConvStage, FusedOp};
use kiln_ir::{Graph, NodeId, Op, TensorType};

use super::conv::Geom;
use super::copy::{emit_copy_run, emit_fill_run};
use super::epilogue::{Epilogue, Slopes};
use super::gemm::{self, ASrc, BSrc, Gemm, Init, Tile};
use super::{Kernel, Kernels, NodeCx, Opt, depthwise, fused, is_const, matmul};
use crate::codegen::{Buf, Emitter, Loc};
use crate::error::BackendError;

/// A chain whose expanded tensor is smaller than this stays split: its
/// three kernels find it in cache anyway, and the split GEMMs have more
/// columns per call.
const MIN_EXPANDED_BYTES: usize = 1024 * 1024;

/// Most bytes of one unit's scratch slot (window + depthwise band): it
/// stays in L2 (1 MB per core here) with the stages' weights and inputs.
/// Taller bands pay: the depthwise kernel keeps six output rows in flight
/// and is called once per plane and band (measured on mobilevitv2_050:
/// 320 KB slots, bands of 2–4 rows, made the chains 3–6 % slower than
/// split; 640 KB, bands of 8, 1–3 % slower; larger slots gained nothing).
const SLOT_BYTES: usize = 640 * 1024;

/// Slabs per image: two, so that a batch-1 model has a unit per core.
const SLABS: usize = 2;

/// The shapes of a chain and how it is cut: see the module docs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Plan {
    /// batch
    n: usize,
    /// input channels
    c: usize,
    /// input height and width (the expanded tensor's too)
    h: usize,
    w: usize,
    /// expanded channels
    e: usize,
    /// output channels
    o: usize,
    /// output height and width
    ho: usize,
    wo: usize,
    /// depthwise kernel
    kh: usize,
    kw: usize,
    /// depthwise `[sh, sw]`
    stride: [usize; 2],
    /// depthwise `[top, left, bottom, right]`
    pad: [usize; 4],
    /// output rows per band (dividing `ho`)
    rows: usize,
}

impl Plan {
    /// The plan for a chain with these stages on an input `x` with weights
    /// `w0 [E,C,1,1]`, `w1 [E,1,kh,kw]`, `w2 [O,E,1,1]` and output `out`,
    /// or `None` when the chain is not a pointwise → depthwise → pointwise
    /// block this kernel computes, or too small to gain from it.
    fn new(stages: &[ConvStage], x: &[usize], ws: [&[usize]; 3], out: &[usize]) -> Option<Plan> {
        let [s0, s1, s2] = stages else {
            return None;
        };
        let ([n, c, h, w], [e, c0, 1, 1], [e1, 1, kh, kw], [o, e2, 1, 1], [n2, o2, ho, wo]) = (
            <[usize; 4]>::try_from(x).ok()?,
            <[usize; 4]>::try_from(ws[0]).ok()?,
            <[usize; 4]>::try_from(ws[1]).ok()?,
            <[usize; 4]>::try_from(ws[2]).ok()?,
            <[usize; 4]>::try_from(out).ok()?,
        ) else {
            return None;
        };
        let pointwise = |s: &ConvStage| s.stride == [1, 1] && s.pad == [0; 4] && s.groups == 1;
        if !pointwise(s0)
            || !pointwise(s2)
            || [s0.shuffle, s1.shuffle, s2.shuffle] != [1, 1, 1]
            || s1.groups != e
            || (c0, e1, e2, n2, o2) != (c, e, e, n, o)
            || n == 0
            || e < 2
        {
            return None;
        }
        let [sh, sw] = s1.stride;
        let pad = s1.pad;
        let out_len = |len: usize, k: usize, s: usize, p: usize| {
            (len + p)
                .checked_sub(k)
                .filter(|_| s > 0)
                .map(|v| v / s + 1)
        };
        if out_len(h, kh, sh, pad[0] + pad[2]) != Some(ho)
            || out_len(w, kw, sw, pad[1] + pad[3]) != Some(wo)
            || 4 * e * h * w < MIN_EXPANDED_BYTES
        {
            return None;
        }
        let mut plan = Plan {
            n,
            c,
            h,
            w,
            e,
            o,
            ho,
            wo,
            kh,
            kw,
            stride: [sh, sw],
            pad,
            rows: 0,
        };
        // the tallest band whose slot fits, with at least two bands
        (1..=ho / 2).rev().find_map(|rows| {
            plan.rows = rows;
            (ho.is_multiple_of(rows) && plan.slot_bytes() <= SLOT_BYTES && plan.cuts_cleanly())
                .then_some(plan)
        })
    }

    /// Bands per image.
    fn bands(&self) -> usize {
        self.ho / self.rows
    }

    /// Slabs (units) per image.
    fn slabs(&self) -> usize {
        SLABS.min(self.bands())
    }

    /// Window rows shared by consecutive bands.
    fn halo(&self) -> usize {
        self.kh - self.stride[0]
    }

    /// Window rows computed per band.
    fn fresh(&self) -> usize {
        self.rows * self.stride[0]
    }

    /// Rows of the expanded tensor one band's depthwise conv reads.
    fn window(&self) -> usize {
        self.halo() + self.fresh()
    }

    /// Image row of band `b`'s first window row (negative in the padding).
    fn top(&self, b: usize) -> i64 {
        (b * self.fresh()) as i64 - self.pad[0] as i64
    }

    /// The first band of slab `j`.
    fn slab_start(&self, j: usize) -> usize {
        j * self.bands() / self.slabs()
    }

    /// Fresh rows of band `b` inside the image.
    fn valid(&self, b: usize) -> usize {
        let first = self.top(b) + self.halo() as i64;
        (self.h as i64 - first).clamp(0, self.fresh() as i64) as usize
    }

    /// Whether the window arithmetic of [`ChainConv`] holds: the halo
    /// covers the top padding (so fresh rows are never above the image),
    /// the halo moves without overlap, slab prologues after the first lie
    /// inside the image, and only the last band reaches past its bottom.
    fn cuts_cleanly(&self) -> bool {
        self.kh >= self.stride[0]
            && self.halo() >= self.pad[0]
            && self.fresh() >= self.halo()
            && (1..self.slabs()).all(|j| {
                let t = self.top(self.slab_start(j));
                t >= 0 && t as usize + self.halo() <= self.h
            })
            && (0..self.bands() - 1).all(|b| self.valid(b) == self.fresh())
    }

    /// Bytes of one slot: the window, then the depthwise band, each plane
    /// after plane; rounded to a cache line.
    fn slot_bytes(&self) -> usize {
        let floats = self.e * (self.window() * self.w + self.rows * self.wo);
        (4 * floats).next_multiple_of(64)
    }

    /// Bytes of arena scratch: one slot per unit.
    fn scratch_bytes(&self) -> usize {
        self.n * self.slabs() * self.slot_bytes()
    }
}

/// The stages and residual flag of a chain node, if it is one.
fn chain_op(op: &Op) -> Option<(&[ConvStage], bool)> {
    match op {
        Op::Fused(FusedOp::ConvChain { stages, residual }) => Some((stages, *residual)),
        _ => None,
    }
}

/// Operand indices of each stage's weight, bias and slopes, and of the
/// residual: the IR's layout.
struct Layout {
    w: Vec<usize>,
    bias: Vec<Option<usize>>,
    slopes: Vec<Option<(usize, usize)>>,
    residual: Option<usize>,
}

fn layout(stages: &[ConvStage], residual: bool) -> Layout {
    let l = kiln_ir::fused::conv_chain::operands(stages, residual);
    Layout {
        w: l.stages.iter().map(|s| s.w).collect(),
        bias: l.stages.iter().map(|s| s.bias).collect(),
        slopes: l.stages.iter().map(|s| s.slopes).collect(),
        residual: l.residual,
    }
}

/// The plan of a chain with these operand types and output shape, when its
/// dynamic-ReLU slopes are one set for the whole batch (the kernels index
/// them by channel only).
fn plan_of(op: &Op, ops: &[TensorType], out: &[usize]) -> Option<Plan> {
    let (stages, residual) = chain_op(op)?;
    if stages.len() != 3 {
        return None;
    }
    let l = layout(stages, residual);
    let want = FusedOp::ConvChain {
        stages: stages.to_vec(),
        residual,
    }
    .num_operands();
    if ops.len() != want {
        return None;
    }
    let shape = |i: usize| ops[i].shape.as_slice();
    let plan = Plan::new(
        stages,
        shape(0),
        [shape(l.w[0]), shape(l.w[1]), shape(l.w[2])],
        out,
    )?;
    // the kernels index the slopes by channel only: one set for the batch
    let per_channel = l
        .slopes
        .iter()
        .zip([plan.e, plan.e, plan.o])
        .all(|(s, ch)| {
            s.is_none_or(|(a1, a2)| {
                [a1, a2]
                    .iter()
                    .all(|&i| fused::slope_batch_stride(&ops[i], &[plan.n, ch, 1, 1]) == Some(0))
            })
        });
    let bias_ok = l
        .bias
        .iter()
        .zip([plan.e, plan.e, plan.o])
        .all(|(b, len)| b.is_none_or(|i| ops[i].shape == [len]));
    let residual_ok = l.residual.is_none_or(|i| ops[i].shape == out);
    (per_channel && bias_ok && residual_ok).then_some(plan)
}

/// Whether chain node `id` can run as [`ChainConv`] (with
/// `CompileOptions::banded_chains`; else it is split into one `fused_conv`
/// per stage): a pointwise → depthwise → pointwise block
/// with constant pointwise weights (packed at compile time) and a large
/// enough expanded tensor.
pub(crate) fn has_kernel(g: &Graph, id: NodeId) -> bool {
    let node = g.node(id);
    let Some((stages, residual)) = chain_op(&node.op) else {
        return false;
    };
    let operands = g.operands(id);
    let ops: Vec<TensorType> = operands.iter().map(|&v| g.value_type(v).clone()).collect();
    let Some(out) = node.outputs.first() else {
        return false;
    };
    let l = layout(stages, residual);
    plan_of(&node.op, &ops, &out.ty.shape).is_some()
        && [l.w[0], l.w[2]]
            .iter()
            .all(|&i| operands.get(i).is_some_and(|&v| is_const(g, v)))
}

/// Arena scratch of a chain node with a kernel: one slot per unit.
pub(crate) fn scratch_bytes(g: &Graph, id: NodeId) -> usize {
    let node = g.node(id);
    let ops: Vec<TensorType> = g
        .operands(id)
        .iter()
        .map(|&v| g.value_type(v).clone())
        .collect();
    node.outputs
        .first()
        .and_then(|o| plan_of(&node.op, &ops, &o.ty.shape))
        .map_or(0, |p| p.scratch_bytes())
}

/// See the module docs.
struct ChainConv {
    plan: Plan,
    /// arena offset of slot 0 (slot `u` follows at `u · slot_bytes`)
    scratch: usize,
    /// expansion of a slab's first band's halo: at the image's top (after
    /// the zero rows of the padding; `None` when the halo is all padding),
    /// and further down
    prologue_top: Option<Gemm>,
    prologue: Option<Gemm>,
    /// expansion of a band's fresh rows, and of the last band's when the
    /// image ends inside its window (`last_valid` of them, `None` if none)
    fresh: Gemm,
    last: Option<Gemm>,
    last_valid: usize,
    depthwise: Box<dyn Kernel>,
    project: Gemm,
    title: String,
}

impl ChainConv {
    /// Zeros window rows `[lo, hi)` of every plane of the slot.
    fn zero_rows(&self, e: &mut Emitter, window: Value, lo: usize, hi: usize) {
        let p = self.plan;
        if lo >= hi {
            return;
        }
        e.for_static(0, p.e as i64, 1, |e, ch| {
            let plane = e.index(window, ch, 4 * (p.window() * p.w) as i64);
            let d = e.off(plane, 4 * (lo * p.w) as i64);
            emit_fill_run(e, d, (hi - lo) * p.w, 0.0);
        });
    }

    /// Moves the halo (the last `kh − sh` window rows) to the window's top.
    fn shift_halo(&self, e: &mut Emitter, window: Value) {
        let p = self.plan;
        if p.halo() == 0 {
            return;
        }
        let buf = Buf::input(Loc::Arena(self.scratch));
        e.for_static(0, p.e as i64, 1, |e, ch| {
            let plane = e.index(window, ch, 4 * (p.window() * p.w) as i64);
            let src = e.off(plane, 4 * (p.fresh() * p.w) as i64);
            emit_copy_run(e, plane, src, p.halo() * p.w, 1, buf);
        });
    }

    fn gemms(&self) -> impl Iterator<Item = &Gemm> {
        [&self.prologue_top, &self.prologue, &self.last]
            .into_iter()
            .flatten()
            .chain([&self.fresh, &self.project])
    }
}

/// Runs batch `b` of `g` (one unit per batch).
fn run_batch(e: &mut Emitter, g: &Gemm, b: Value) {
    let next = e.b.ins().iadd_imm_s(b, 1);
    g.emit(e, b, next);
}

impl Kernel for ChainConv {
    fn describe(&self) -> String {
        let p = self.plan;
        format!(
            "{}: bands of {} rows, {} slabs per image, slot {} KB; expand [{}]; depthwise [{}]; project [{}]",
            self.title,
            p.rows,
            p.slabs(),
            p.slot_bytes() / 1024,
            self.fresh.describe(),
            self.depthwise.describe(),
            self.project.describe()
        )
    }

    fn units(&self) -> usize {
        self.plan.n * self.plan.slabs()
    }

    fn cost(&self) -> f64 {
        let p = self.plan;
        let expand = 2.0 * (p.n * p.e * p.c * p.h * p.w) as f64;
        expand + self.depthwise.cost() * (p.n * p.bands()) as f64 + self.project.cost()
    }

    fn opt(&self) -> Opt {
        // the Cranelift register tile needs `none` (see `Opt::None`); with
        // assembled tiles the GEMMs are loops and calls, and the depthwise
        // borders want `speed`
        if self.gemms().all(|g| g.asm.is_some()) {
            Opt::Speed
        } else {
            Opt::None
        }
    }

    fn emit(&self, e: &mut Emitter, begin: Value, end: Value) {
        let p = self.plan;
        let slot_bytes = p.slot_bytes();
        let slots = e.base(Buf::output(Loc::Arena(self.scratch)));
        e.for_range(begin, end, 1, |e, u| {
            let slot = e.index(slots, u, slot_bytes as i64);
            let img = e.b.ins().udiv_imm_u(u, p.slabs() as i64);
            let j = e.b.ins().urem_imm_u(u, p.slabs() as i64);
            // bands [j·B/S, (j+1)·B/S) of image img
            let b0 = e.b.ins().imul_imm_s(j, p.bands() as i64);
            let b0 = e.b.ins().udiv_imm_u(b0, p.slabs() as i64);
            let j1 = e.b.ins().iadd_imm_s(j, 1);
            let b1 = e.b.ins().imul_imm_s(j1, p.bands() as i64);
            let b1 = e.b.ins().udiv_imm_u(b1, p.slabs() as i64);
            let gb_img = e.b.ins().imul_imm_s(img, p.bands() as i64);
            e.rebased(self.scratch, slot_bytes, slot, |e| {
                let window = e.base(Buf::output(Loc::Arena(self.scratch)));
                // the slab's first window rows: the halo
                let top = e.b.ins().icmp_imm_u(IntCC::Equal, j, 0);
                let below = e.b.ins().icmp_imm_u(IntCC::NotEqual, j, 0);
                e.if_then(top, |e| {
                    self.zero_rows(e, window, 0, p.pad[0]);
                    if let Some(g) = &self.prologue_top {
                        run_batch(e, g, img);
                    }
                });
                if let Some(g) = &self.prologue {
                    e.if_then(below, |e| {
                        let gb = e.b.ins().iadd(gb_img, b0);
                        run_batch(e, g, gb);
                    });
                }
                e.for_range(b0, b1, 1, |e, b| {
                    let gb = e.b.ins().iadd(gb_img, b);
                    match p.valid(p.bands() - 1) < p.fresh() {
                        true => {
                            let is_last =
                                e.b.ins()
                                    .icmp_imm_u(IntCC::Equal, b, (p.bands() - 1) as i64);
                            let not_last =
                                e.b.ins()
                                    .icmp_imm_u(IntCC::NotEqual, b, (p.bands() - 1) as i64);
                            e.if_then(not_last, |e| run_batch(e, &self.fresh, gb));
                            e.if_then(is_last, |e| {
                                if let Some(last) = &self.last {
                                    run_batch(e, last, gb);
                                }
                                let v = p.halo() + self.last_valid;
                                self.zero_rows(e, window, v, p.window());
                            });
                        }
                        false => run_batch(e, &self.fresh, gb),
                    }
                    let zero = e.ic(0);
                    let planes = e.ic(p.e as i64);
                    self.depthwise.emit(e, zero, planes);
                    run_batch(e, &self.project, gb);
                    self.shift_halo(e, window);
                });
            });
        });
    }
}

/// A pointwise stage as a GEMM with one unit per batch: `m × k` constant
/// weights (packed here), B read in place with row stride `ks`, C with row
/// stride `c_rs`, batch offsets `offs` (`[a, b, c, bias]` in elements).
#[allow(clippy::too_many_arguments)]
fn stage_gemm(
    cx: &mut NodeCx,
    what: &'static str,
    [m, n, k]: [usize; 3],
    weights: &[f32],
    bias: Option<Buf>,
    (b, ks): (Buf, usize),
    (c, c_rs): (Buf, usize),
    offs: &[[i64; 4]],
    epi: Epilogue,
) -> Result<Gemm, BackendError> {
    let tile = match cx.asm.as_deref() {
        Some(store) => {
            let (mr, nr) = gemm::asm_shape_for(store.level(), m, n, k);
            Tile { mr, nv: nr / 4 }
        }
        None => cx.tile,
    };
    let packed = gemm::pack_a(weights, m, k, k, 1, tile.mr);
    let addr = cx.consts.add(&packed);
    let gm = Gemm {
        batch: offs.len(),
        offsets: gemm::offset_table(cx.consts, offs),
        init: bias.map_or(Init::Zero, Init::Row),
        epi,
        ..Gemm::new(
            what,
            [m, n, k],
            ASrc::Packed { addr },
            BSrc::Strided {
                buf: b,
                ks: ks as i64,
            },
            (c, c_rs as i64),
            tile,
        )
    };
    let mut gm = matmul::finish(cx, gm)?;
    gm.one_unit_per_batch();
    Ok(gm)
}

/// The depthwise conv of one band: window → band, its rows all inside (the
/// window holds the halo; only the columns are padded).
fn band_geom(p: &Plan) -> Geom {
    Geom {
        n: 1,
        c: p.e,
        h: p.window(),
        w: p.w,
        o: p.e,
        cg: 1,
        kh: p.kh,
        kw: p.kw,
        ho: p.rows,
        wo: p.wo,
        stride: p.stride,
        pad: [0, p.pad[1], 0, p.pad[3]],
        dil: [1, 1],
        groups: p.e,
    }
}

/// Lowers a `fused_conv_chain` that [`has_kernel`].
pub(crate) fn lower(cx: &mut NodeCx) -> Result<Kernels, BackendError> {
    let (stages, residual) = chain_op(cx.op).ok_or_else(|| cx.unsupported("not a conv chain"))?;
    let (stages, residual) = (stages.to_vec(), residual);
    let ops: Vec<TensorType> = cx.ins.iter().map(|o| o.ty.clone()).collect();
    let (out_buf, out_ty) = cx.outs[0].clone();
    let p = plan_of(cx.op, &ops, &out_ty.shape)
        .ok_or_else(|| cx.unsupported("not a pointwise → depthwise → pointwise chain"))?;
    let scratch = match cx.scratch.map(|b| b.loc) {
        Some(Loc::Arena(off)) => off,
        _ => return Err(cx.unsupported("chain scratch was not planned")),
    };
    let l = layout(&stages, residual);
    let weights = |cx: &NodeCx, s: usize| -> Result<Vec<f32>, BackendError> {
        cx.ins[l.w[s]]
            .data
            .map(<[f32]>::to_vec)
            .ok_or_else(|| cx.unsupported("the chain's pointwise weights are not constant"))
    };
    let (w0, w2) = (weights(cx, 0)?, weights(cx, 2)?);
    let bias = |s: usize| l.bias[s].map(|i| cx.ins[i].buf);
    let epi = |s: usize| Epilogue {
        act: stages[s].act,
        slopes: l.slopes[s].map(|(a1, a2)| Slopes {
            a1: cx.ins[a1].buf,
            a2: cx.ins[a2].buf,
            batch_stride: 0,
        }),
        residual: None,
    };
    let (e0, e1, mut e2) = (epi(0), epi(1), epi(2));
    e2.residual = l.residual.map(|i| cx.ins[i].buf);
    let (b0, b1, b2) = (bias(0), bias(1), bias(2));
    let x = cx.ins[0].buf;
    let window = Buf::output(Loc::Arena(scratch));
    let band_at = scratch + 4 * p.e * p.window() * p.w;
    let band = Buf::output(Loc::Arena(band_at));
    let chw = (p.c * p.h * p.w) as i64;
    let w = p.w as i64;
    let gbs: Vec<(usize, usize)> = (0..p.n)
        .flat_map(|i| (0..p.bands()).map(move |b| (i, b)))
        .collect();
    // the expansion: x rows → window rows, per (image, band)
    let expand = |cx: &mut NodeCx, rows: usize, offs: &[[i64; 4]]| {
        stage_gemm(
            cx,
            "chain expansion",
            [p.e, rows * p.w, p.c],
            &w0,
            b0,
            (x, p.h * p.w),
            (window, p.window() * p.w),
            offs,
            e0,
        )
    };
    let top_rows = p.halo() - p.pad[0];
    let prologue_top = if top_rows > 0 {
        let offs: Vec<[i64; 4]> = (0..p.n)
            .map(|i| [0, i as i64 * chw, p.pad[0] as i64 * w, 0])
            .collect();
        Some(expand(cx, top_rows, &offs)?)
    } else {
        None
    };
    let prologue = if p.slabs() > 1 && p.halo() > 0 {
        let offs: Vec<[i64; 4]> = gbs
            .iter()
            .map(|&(i, b)| [0, i as i64 * chw + p.top(b).max(0) * w, 0, 0])
            .collect();
        Some(expand(cx, p.halo(), &offs)?)
    } else {
        None
    };
    let fresh_offs: Vec<[i64; 4]> = gbs
        .iter()
        .map(|&(i, b)| {
            let row = (p.top(b) + p.halo() as i64).min(p.h as i64);
            [0, i as i64 * chw + row * w, p.halo() as i64 * w, 0]
        })
        .collect();
    let fresh = expand(cx, p.fresh(), &fresh_offs)?;
    let last_valid = p.valid(p.bands() - 1);
    let last = if (1..p.fresh()).contains(&last_valid) {
        Some(expand(cx, last_valid, &fresh_offs)?)
    } else {
        None
    };
    let g = band_geom(&p);
    let w1 = cx.ins[l.w[1]].buf;
    let depthwise = Box::new(depthwise::kernel(
        cx,
        [Buf::input(window.loc), w1, band],
        g,
        b1,
        e1,
        None,
        1,
    )?);
    let project_offs: Vec<[i64; 4]> = gbs
        .iter()
        .map(|&(i, b)| [0, 0, (i * p.o * p.ho * p.wo + b * p.rows * p.wo) as i64, 0])
        .collect();
    let project = stage_gemm(
        cx,
        "chain projection",
        [p.o, p.rows * p.wo, p.e],
        &w2,
        b2,
        (Buf::input(band.loc), p.rows * p.wo),
        (out_buf, p.ho * p.wo),
        &project_offs,
        e2,
    )?;
    let title = format!(
        "fused conv chain {}→{}→{} {}x{}/{} {}",
        p.c,
        p.e,
        p.o,
        p.kh,
        p.kw,
        p.stride[0],
        [
            e0.suffix(b0.is_some()),
            e1.suffix(b1.is_some()),
            e2.suffix(b2.is_some())
        ]
        .join(" |")
    );
    Ok(vec![Box::new(ChainConv {
        plan: p,
        scratch,
        prologue_top,
        prologue,
        fresh,
        last,
        last_valid,
        depthwise,
        project,
        title,
    })])
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_ir::fused::Act;
    use kiln_ir::fused::ConvStage;

    fn stage(stride: usize, pad: usize, groups: usize) -> ConvStage {
        ConvStage {
            stride: [stride, stride],
            pad: [pad; 4],
            groups,
            bias: true,
            shuffle: 1,
            act: Act::Silu,
        }
    }

    #[test]
    fn bands_tile_the_output_and_windows_cover_their_rows() {
        // MobileViTv2-0.5's first blocks: stride 1 and stride 2
        for (s, h, e) in [
            (1, 128, 32),
            (2, 128, 64),
            (1, 64, 128),
            (2, 65, 64),
            (1, 56, 96),
        ] {
            let ho = (h + 2 - 3) / s + 1;
            let st = [stage(1, 0, 1), stage(s, 1, e), stage(1, 0, 1)];
            let p = Plan::new(
                &st,
                &[1, 16, h, h],
                [&[e, 16, 1, 1], &[e, 1, 3, 3], &[24, e, 1, 1]],
                &[1, 24, ho, ho],
            )
            .unwrap_or_else(|| panic!("no plan for stride {s}, {h}x{h}, {e} channels"));
            assert_eq!(p.rows * p.bands(), ho);
            assert!(p.slot_bytes() <= SLOT_BYTES && p.bands() >= 2);
            // band b's window starts where its first output row reads
            for b in 0..p.bands() {
                assert_eq!(p.top(b), (b * p.rows * s) as i64 - 1);
                // the window reaches the last row its last output reads
                let last_read = p.top(b) + ((p.rows - 1) * s + 2) as i64;
                assert_eq!(p.top(b) + p.window() as i64 - 1, last_read);
            }
        }
    }

    #[test]
    fn small_or_other_chains_stay_split() {
        let st = [stage(1, 0, 1), stage(1, 1, 8), stage(1, 0, 1)];
        // 8 channels of 16x16: 8 KB expanded
        assert!(
            Plan::new(
                &st,
                &[1, 4, 16, 16],
                [&[8, 4, 1, 1], &[8, 1, 3, 3], &[4, 8, 1, 1]],
                &[1, 4, 16, 16]
            )
            .is_none()
        );
        // a grouped expansion
        let st = [stage(1, 0, 2), stage(1, 1, 64), stage(1, 0, 1)];
        assert!(
            Plan::new(
                &st,
                &[1, 16, 128, 128],
                [&[64, 8, 1, 1], &[64, 1, 3, 3], &[16, 64, 1, 1]],
                &[1, 16, 128, 128]
            )
            .is_none()
        );
    }
}
