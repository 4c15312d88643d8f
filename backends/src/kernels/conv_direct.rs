//! Convolutions with few output channels per group computed directly from
//! the input planes (`ukernels/conv_direct.rs`, AVX-512), without an
//! im2col matrix: stems and the narrow 3×3 convs of small CNNs.
//!
//! A unit is one tile of at most 16 output channels of one group of one
//! image over one block of output rows; the blocks exist so that a conv
//! with a single tile (a stem) still spreads over threads. Each (tile
//! width, row block) pair is one assembled function. SiLU and GELU, which
//! the assembled code does not apply, are swept over the tile's rows
//! afterwards with `vector.rs`'s row functions (GELU the epilogue form, as
//! the GEMM tiles compute it: with the relatively accurate standalone form,
//! ~3.5 cycles an element, a stem with GELU ran at 68 GFLOP/s, slower than
//! through im2col; with it, 123–127 against im2col's 96–104).

use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::types::I64;
use cranelift_codegen::ir::{AbiParam, InstBuilder, Signature, Value};
use cranelift_codegen::isa::CallConv;
use kiln_ir::fused::Act;

use super::conv::Geom;
use super::epilogue::Epilogue;
use super::{Kernel, NodeCx};
use crate::codegen::{Buf, Emitter};
use crate::error::BackendError;
use crate::ukernels::{Spec, conv_direct, vector};

/// Output channels per group up to which a conv runs directly: above, the
/// im2col GEMM's 14-row tiles are full and reuse each column enough.
/// Measured at 1 thread, 3×3 stride 1, GFLOP/s direct vs im2col: 40→40 on
/// 14×14 (FasterNet's partial conv) 213 vs 110, 48→48 on 28×28 213 vs 197,
/// on 56×56 208 vs 197; 64→64 on 56×56 203 vs 213.
const MAX_GROUP_CHANNELS: usize = 48;

/// RGB stems (at most [`STEM_INPUTS`] input channels per group) run
/// directly up to this many output channels: with so few products per
/// output the im2col matrix is mostly overhead. Measured at 1 thread,
/// GFLOP/s direct vs im2col (banded): ResNet's 3→64 7×7 stride 2 224 vs
/// 160, 3→64 3×3 stride 2 201 vs 176 (ResNet-18 18.1 → 17.5 ms).
const MAX_STEM_CHANNELS: usize = 64;

/// Input channels per group of a stem ([`MAX_STEM_CHANNELS`]).
const STEM_INPUTS: usize = 4;

/// Output columns below which im2col stays: a 7-column plane fills 7 of
/// 16 lanes (RegNetX-200MF's 8-channel groups on 7×7: 0.044 ms through
/// im2col, 0.050 direct; on 14×14 and larger planes direct took 0.5× the
/// time).
const MIN_COLUMNS: usize = 8;

/// Units a conv should offer at least (row blocks are cut to reach it).
const MIN_UNITS: usize = 4;

/// See the module docs.
struct Direct {
    x: Buf,
    w: Buf,
    bias: Option<Buf>,
    out: Buf,
    res: Option<Buf>,
    g: Geom,
    /// output channels per tile (the last tile: `last`), tiles per group
    ct: usize,
    nt: usize,
    last: usize,
    /// the row blocks: first row, rows
    parts: Vec<(usize, usize)>,
    /// function numbers: `ids[kind][part]`, kind 0 a whole tile, 1 the last
    ids: [Vec<usize>; 2],
    /// the swept SiLU or GELU row function
    sweep: Option<usize>,
    /// what a fused kernel computes, for descriptions
    title: Option<String>,
}

/// The direct kernel for a conv of geometry `g` with this bias and
/// epilogue, when the target assembles AVX-512 and the conv is narrow
/// enough (see [`MAX_GROUP_CHANNELS`]); `None` leaves it to im2col.
pub(crate) fn kernel(
    cx: &mut NodeCx,
    g: Geom,
    bias: Option<Buf>,
    epi: &Epilogue,
    title: &Option<String>,
    shuffle: usize,
) -> Result<Option<Box<dyn Kernel>>, BackendError> {
    let og = g.o / g.groups.max(1);
    let swept = matches!(epi.act, Act::Silu | Act::Gelu);
    if shuffle != 1
        || og == 0
        || g.wo < MIN_COLUMNS
        || og > MAX_GROUP_CHANNELS && !(g.cg <= STEM_INPUTS && og <= MAX_STEM_CHANNELS)
        || g.kh * g.kw == 1
        || epi.slopes.is_some()
        || (swept && epi.residual.is_some())
        || !(conv_direct::assembles(epi.act) || swept)
    {
        return Ok(None);
    }
    let Some(store) = cx.asm512() else {
        return Ok(None);
    };
    let act = if swept { Act::None } else { epi.act };
    let win = super::depthwise::window_of(g, act, epi.residual.is_some());
    let nt = og.div_ceil(16);
    let ct = og.div_ceil(nt);
    let last = og - (nt - 1) * ct;
    // row blocks: whole bands, enough units for the threads
    let band = conv_direct::Spec::band_rows(ct).min(g.ho);
    let bands = g.ho.div_ceil(band);
    let want = MIN_UNITS.div_ceil(g.n * g.groups * nt).clamp(1, bands);
    let per = bands.div_ceil(want) * band;
    let parts: Vec<(usize, usize)> = (0..g.ho)
        .step_by(per)
        .map(|r0| (r0, per.min(g.ho - r0)))
        .collect();
    let spec = |cout: usize, (r0, rows): (usize, usize)| conv_direct::Spec {
        win,
        cin: g.cg,
        cout,
        bias: bias.is_some(),
        r0,
        rows,
    };
    if !parts
        .iter()
        .all(|&p| spec(ct, p).fits() && spec(last, p).fits())
    {
        return Ok(None);
    }
    let mut ids: [Vec<usize>; 2] = [Vec::new(), Vec::new()];
    for (kind, cout) in [ct, last].into_iter().enumerate() {
        for &p in &parts {
            ids[kind].push(
                store
                    .request(Spec::ConvDirect(spec(cout, p)))
                    .map_err(BackendError::Jit)?,
            );
        }
    }
    let sweep = match epi.act {
        Act::Silu => Some(vector::Func::Silu),
        Act::Gelu => Some(vector::Func::GeluEpilogue),
        _ => None,
    };
    let sweep = match sweep {
        Some(f) => Some(
            store
                .request(Spec::Unary(f, vector::Width::Zmm))
                .map_err(BackendError::Jit)?,
        ),
        None => None,
    };
    Ok(Some(Box::new(Direct {
        x: cx.ins[0].buf,
        w: cx.ins[1].buf,
        bias,
        out: cx.outs[0].0,
        res: epi.residual,
        g,
        ct,
        nt,
        last,
        parts,
        ids,
        sweep,
        title: title.clone(),
    })))
}

/// `values[i]` for the run-time index `i` (a chain of selects).
fn pick(e: &mut Emitter, i: Value, values: &[Value]) -> Value {
    let mut v = values[0];
    for (k, &x) in values.iter().enumerate().skip(1) {
        let is = e.b.ins().icmp_imm_s(IntCC::Equal, i, k as i64);
        v = e.b.ins().select(is, x, v);
    }
    v
}

impl Kernel for Direct {
    fn describe(&self) -> String {
        format!(
            "{}direct conv {}→{} in tiles of {} output channels, {} row blocks avx512",
            self.title
                .as_ref()
                .map_or(String::new(), |t| format!("{t}: ")),
            self.g.cg,
            self.g.o / self.g.groups,
            self.ct,
            self.parts.len()
        )
    }

    fn units(&self) -> usize {
        self.g.n * self.g.groups * self.nt * self.parts.len()
    }

    fn cost(&self) -> f64 {
        let g = &self.g;
        2.0 * (g.n * g.o * g.ho * g.wo * g.cg * g.kh * g.kw) as f64
    }

    fn emit(&self, e: &mut Emitter, begin: Value, end: Value) {
        let g = self.g;
        let og = g.o / g.groups;
        let np = self.parts.len() as i64;
        let x = e.base(self.x);
        let w = e.base(self.w);
        let out = e.base(self.out);
        let bias = self.bias.map(|b| e.base(b));
        let res = self.res.map(|r| e.base(r));
        let mut sig = Signature::new(CallConv::SystemV);
        for _ in 0..5 {
            sig.params.push(AbiParam::new(I64));
        }
        let sig = e.b.import_signature(sig);
        let row_sig = self
            .sweep
            .map(|_| e.b.import_signature(vector::row_signature()));
        e.for_range(begin, end, 1, |e, u| {
            let p = e.b.ins().urem_imm_u(u, np);
            let rest = e.b.ins().udiv_imm_u(u, np);
            let t = e.b.ins().urem_imm_u(rest, self.nt as i64);
            let rest = e.b.ins().udiv_imm_u(rest, self.nt as i64);
            let gi = e.b.ins().urem_imm_u(rest, g.groups as i64);
            let n = e.b.ins().udiv_imm_u(rest, g.groups as i64);
            // input plane n·C + gi·cg; output channel gi·og + t·ct
            let ip = e.b.ins().imul_imm_s(n, g.c as i64);
            let gc = e.b.ins().imul_imm_s(gi, g.cg as i64);
            let ip = e.b.ins().iadd(ip, gc);
            let xp = e.index(x, ip, 4 * (g.h * g.w) as i64);
            let oc = e.b.ins().imul_imm_s(gi, og as i64);
            let tc = e.b.ins().imul_imm_s(t, self.ct as i64);
            let oc = e.b.ins().iadd(oc, tc);
            let op = e.b.ins().imul_imm_s(n, g.o as i64);
            let op = e.b.ins().iadd(op, oc);
            let plane = 4 * (g.ho * g.wo) as i64;
            let dst = e.index(out, op, plane);
            let r = match res {
                Some(r) => e.index(r, op, plane),
                None => e.ic(0),
            };
            let wp = e.index(w, oc, 4 * (g.cg * g.kh * g.kw) as i64);
            let bp = match bias {
                Some(b) => e.index(b, oc, 4),
                None => e.ic(0),
            };
            let fs: Vec<Value> = (0..2)
                .flat_map(|k| self.ids[k].clone())
                .map(|id| e.asm_fn(id))
                .collect();
            let (whole, last) = fs.split_at(self.parts.len());
            let f_whole = pick(e, p, whole);
            let f = if self.last == self.ct {
                f_whole
            } else {
                let f_last = pick(e, p, last);
                let is_last = e.b.ins().icmp_imm_s(IntCC::Equal, t, self.nt as i64 - 1);
                e.b.ins().select(is_last, f_last, f_whole)
            };
            e.b.ins().call_indirect(sig, f, &[xp, dst, wp, r, bp]);
            if let (Some(id), Some(rs)) = (self.sweep, row_sig) {
                // the block's rows of each of the tile's planes
                let r0s: Vec<Value> = self
                    .parts
                    .iter()
                    .map(|&(r0, _)| e.ic(4 * (r0 * g.wo) as i64))
                    .collect();
                let lens: Vec<Value> = self
                    .parts
                    .iter()
                    .map(|&(_, rows)| e.ic((rows * g.wo) as i64))
                    .collect();
                let off = pick(e, p, &r0s);
                let len = pick(e, p, &lens);
                let is_last = e.b.ins().icmp_imm_s(IntCC::Equal, t, self.nt as i64 - 1);
                let (cl, cw) = (e.ic(self.last as i64), e.ic(self.ct as i64));
                let count = e.b.ins().select(is_last, cl, cw);
                let zero = e.ic(0);
                let f = e.asm_fn(id);
                let start = e.b.ins().iadd(dst, off);
                e.for_range(zero, count, 1, |e, o| {
                    let at = e.index(start, o, plane);
                    e.b.ins().call_indirect(rs, f, &[at, at, len]);
                });
            }
        });
    }
}
