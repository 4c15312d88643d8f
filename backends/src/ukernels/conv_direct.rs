//! Direct convolutions with few output channels per group (stems, the
//! 8- to 32-channel 3×3 convs of RegNet, HGNetV2, MobileNetV4, StarNet),
//! assembled at compile time with iced-x86 for AVX-512.
//!
//! Through im2col such a conv is a GEMM with 8–32 rows: the matrix is
//! written and read back for a product that reuses each of its columns
//! only a few times, and the 14-row tiles leave most of their rows empty
//! (K = 27 stems ran at 47–96 GFLOP/s, 16-channel 3×3 convs at 54–66).
//! Here a call computes `cout` (≤ 16) output planes over a block of output
//! rows directly from the input planes: the accumulators are `rows ×
//! cout` vectors of 16 output columns; for each input channel (a run-time
//! loop) and each tap, one input vector is loaded and feeds every output
//! channel and row it reaches, the weights being broadcast memory
//! operands. The plane geometry, the borders (opmasks on the columns, tap
//! rows in the padding never emitted) and stride 2 (pairs of tap columns
//! compacted from 32 inputs) are `dw_window`'s; so is its mask cache.
//! Each output sums `bias`, then over input channels, tap rows and tap
//! columns in that order.
//!
//! Activations: those `dw_plane` applies in registers but the dynamic
//! ReLU (whose slopes are per channel); SiLU and GELU are applied by the
//! driver afterwards. Then the residual.
//!
//! Calling convention: System V, `fn(x, dst, w, res, bias)`: the group's
//! first input plane (rdi), the tile's first output and residual planes
//! (rsi, rcx; planes contiguous), the tile's weights `[cout][cin][kh][kw]`
//! (rdx) and its `cout` biases (r8; read only with [`Spec::bias`]). rbx and r12–r15 are saved and
//! restored; ends with `vzeroupper`.

use iced_x86::code_asm::*;

use super::dw_plane::{ActRegs, act_consts_zmm, act_zmm, mem_k, with_k};
use super::dw_window::{self, Band, Cut, Masks, TapRegs, bands, columns, pair_perms, taps};
use super::vector::zmm;
use kiln_ir::fused::Act;

/// Accumulators available: `rows × cout` of them per band.
const ACC: usize = 20;

/// One call: the plane geometry and epilogue (`win`), the channels, and
/// the output rows it computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Spec {
    /// the plane geometry, activation and residual
    pub win: dw_window::Spec,
    /// input channels summed (per group)
    pub cin: usize,
    /// output channels computed (1..=16)
    pub cout: usize,
    /// whether the call adds biases (else the sums start at 0)
    pub bias: bool,
    /// first output row computed
    pub r0: usize,
    /// output rows computed
    pub rows: usize,
}

// zmm0..19 accumulators, 20..22 loads, 23/24 the stride-2 permutations,
// 25..30 the epilogue constants, 31 the epilogue's temporary
const T: usize = 20;
const P_EVEN: usize = 23;
const P_ODD: usize = 24;
const REGS: TapRegs = TapRegs {
    t: T,
    p_even: P_EVEN,
    p_odd: P_ODD,
};
const TMP: usize = 31;
const CONSTS: ActRegs = ActRegs {
    zero: 25,
    six: 26,
    three: 27,
    half: 28,
    sixth: 29,
    one: 30,
    // no dynamic ReLU here
    s1: 25,
    s2: 25,
};

/// Whether the code applies `act` (else the driver must, or refuse).
pub(crate) fn assembles(act: Act) -> bool {
    !matches!(act, Act::DyRelu | Act::Silu | Act::Gelu)
}

impl Spec {
    /// Output rows per band: as many as the accumulators allow.
    pub fn band_rows(cout: usize) -> usize {
        (ACC / cout.max(1)).max(1)
    }

    /// The output rows of each band of this call.
    fn rows_per_band(&self) -> usize {
        Spec::band_rows(self.cout).min(self.rows)
    }

    /// Whether this call is assembled.
    pub fn fits(&self) -> bool {
        let w = &self.win;
        let small = |x: Option<usize>| x.is_some_and(|b| b < i32::MAX as usize / 2);
        w.fits()
            && assembles(w.act)
            && self.cin > 0
            && (1..=16).contains(&self.cout)
            && self.rows > 0
            && self.r0 + self.rows <= w.ho
            && small((self.cout * self.cin).checked_mul(4 * w.kh * w.kw))
            && small((self.cout * w.ho).checked_mul(4 * w.wo))
            && small(w.h.checked_mul(4 * w.w))
            && small((self.r0 * w.sh).checked_mul(4 * w.w))
    }

    /// A short name for kernel plans.
    pub fn label(&self) -> String {
        format!(
            "direct conv {}→{} rows {}..{} of {}",
            self.cin,
            self.cout,
            self.r0,
            self.r0 + self.rows,
            self.win.geometry()
        )
    }
}

/// Assembles `s`; the bytes are position-independent.
pub(crate) fn assemble(s: &Spec) -> Result<Vec<u8>, String> {
    if !s.fits() {
        return Err(format!("direct conv not assembled: {s:?}"));
    }
    emit(s).map_err(|e| e.to_string())
}

fn emit(s: &Spec) -> Result<Vec<u8>, IcedError> {
    let w = &s.win;
    let mut a = CodeAssembler::new(64)?;
    let mut masks = Masks::new();
    for r in [rbx, r12, r13, r14, r15] {
        a.push(r)?;
    }
    act_consts_zmm(&mut a, &CONSTS)?;
    if w.sw == 2 {
        pair_perms(&mut a, &REGS)?;
    }
    // rdi: where tap (0, 0) of output (r0, 0) would read
    let origin = 4 * (s.r0 * w.sh * w.w) as i64 - 4 * (w.pt * w.w + w.pl) as i64;
    if origin != 0 {
        a.add(rdi, origin as i32)?;
    }
    let out0 = (4 * s.r0 * w.wo) as i32;
    if out0 != 0 {
        a.add(rsi, out0)?;
        a.add(rcx, out0)?;
    }
    let rows = s.rows_per_band();
    bands(
        &mut a,
        &mut masks,
        w,
        (s.r0, s.rows),
        rows,
        r12,
        |a, masks, b| group(a, s, b, masks),
    )?;
    a.vzeroupper()?;
    for r in [r15, r14, r13, r12, rbx] {
        a.pop(r)?;
    }
    a.ret()?;
    a.assemble(0)
}

/// The rows of band `b` at rdi, rsi, rcx.
fn group(a: &mut CodeAssembler, s: &Spec, b: Band, masks: &mut Masks) -> Result<(), IcedError> {
    columns(a, &s.win, masks, |a, masks, c| chunk(a, s, b, c, masks))
}

/// Columns `c` of the rows of band `b` of every output channel: the input
/// channels in a loop (r13 counting, r14 the channel's plane, r15 its
/// weights).
fn chunk(
    a: &mut CodeAssembler,
    s: &Spec,
    b: Band,
    c: Cut,
    masks: &mut Masks,
) -> Result<(), IcedError> {
    let w = &s.win;
    let acc = |r: usize, o: usize| zmm(r * s.cout + o);
    for r in 0..b.rows {
        for o in 0..s.cout {
            if s.bias {
                a.vbroadcastss(acc(r, o), dword_ptr(r8 + 4 * o as i32))?;
            } else {
                a.vxorps(acc(r, o), acc(r, o), acc(r, o))?;
            }
        }
    }
    a.mov(r14, r9)?;
    a.mov(r15, rdx)?;
    a.mov(r13, s.cin as u64)?;
    let mut next = a.create_label();
    masks.reset();
    a.set_label(&mut next)?;
    let per_oc = (s.cin * w.kh * w.kw) as i32;
    let wt = |o: usize, i: usize, j: usize| {
        dword_bcst(r15 + 4 * (o as i32 * per_oc + (i * w.kw + j) as i32))
    };
    // each input row's lines one band down, for the next band: the input
    // planes come from L3 or memory (a stem's 3×224×224 image, the maps of
    // the first stages), a stream of rows per plane the hardware
    // prefetchers did not keep ahead of. In-model, 1 thread: StarNet-S1's
    // three direct convs 0.87 → 0.47 ms, EfficientNet-B0's stem 0.40 →
    // 0.19, GhostNet's 0.22 → 0.07, FastViT-T8's 0.67 → 0.38, RepViT's
    // 0.79 → 0.51 (two and four bands ahead: no better)
    let ahead = Some((4 * s.rows_per_band() * w.sh * w.w) as i32);
    taps(a, w, b, c, masks, r14, &REGS, ahead, |a, r, i, j, x, k| {
        for o in 0..s.cout {
            a.vfmadd231ps(with_k(acc(r, o), k), x, wt(o, i, j))?;
        }
        Ok(())
    })?;
    a.add(r14, (4 * w.h * w.w) as i32)?;
    a.add(r15, (4 * w.kh * w.kw) as i32)?;
    a.dec(r13)?;
    a.jnz(next)?;
    let ko = masks.get(a, ((1u64 << c.m) - 1) as u32)?;
    let plane = (4 * w.ho * w.wo) as i32;
    let out_row = (4 * w.wo) as i32;
    for r in 0..b.rows {
        for o in 0..s.cout {
            let off = o as i32 * plane + r as i32 * out_row;
            act_zmm(a, w.act, acc(r, o), zmm(TMP), &CONSTS)?;
            if w.residual {
                a.vaddps(with_k(acc(r, o), ko), acc(r, o), zmmword_ptr(r11 + off))?;
            }
            a.vmovups(mem_k(zmmword_ptr(r10 + off), ko), acc(r, o))?;
        }
    }
    Ok(())
}
