//! Whole depthwise convolution planes of any window (kh × kw, any padding,
//! vertical stride and dilation; horizontal stride 1, or 2 undilated),
//! assembled at compile time with iced-x86 for AVX-512.
//!
//! The 5×5, 7×7, 9×9 and 11×11 depthwise convs of ConvNeXt, FastViT,
//! StarNet, MixNet and EfficientNet ran in the f32x4 Cranelift kernel at
//! 7–27 GFLOP/s: four lanes, and on small planes (7×7, 14×14 with a
//! padding of 3) almost every output is a border output, computed row by
//! row and column by column with its own list of taps. Here one call
//! computes a whole plane, borders included, sixteen columns per vector
//! and [`ROWS`] output rows per band (independent accumulator chains that
//! share each loaded input row):
//!
//! - **Rows.** The geometry is baked in, so for every band the code knows
//!   which (output row, tap row) pairs read inside the input; a tap row in
//!   the padding is never emitted. Bands whose every tap is inside (the
//!   interior) are one loop.
//! - **Columns.** For each chunk of sixteen output columns and each tap
//!   column, the lanes whose tap reads inside the input form a mask: the
//!   load is zero-masked by it (masked lanes are never read, so nothing
//!   outside the plane is touched) and the FMA merge-masked (so a lane's
//!   sum holds exactly its taps inside the input). Chunks without masks
//!   (the interior) are one loop; masks are set with `kmovw` from rbx and
//!   kept in k1..k7 while they are reused ([`Masks`]).
//! - **Weights** are FMA memory operands with an embedded broadcast
//!   (`{1to16}`): up to 121 of them do not fit in registers, and the load
//!   ports have room for one per FMA.
//! - **Stride 2** loads 32 consecutive inputs once per pair of tap columns
//!   and compacts the even lanes (tap `j`) and the odd lanes (tap `j + 1`)
//!   with `vpermi2ps`/`vpermt2ps`.
//!
//! Each output is `bias`, then `fma(x, w, acc)` over its taps inside the
//! input, row by row, column by column: the order of the f32x4 path, so
//! both compute bit-identical values. The epilogue is `dw_plane`'s (the
//! activations it assembles, then the residual); SiLU and GELU are left to
//! the driver's sweep.
//!
//! With [`Spec::max`] the same planes are max pooling: each tap folds in
//! with `vrangeps` (max, a NaN kept from either side) instead of an FMA,
//! from `bias` = -∞, and no weights are read (ResNet's 3×3 stride-2 stem
//! pool ran at 7 GB/s in the f32x4 path).
//!
//! Calling convention: System V, `fn(x, dst, w, res, bias, s1, s2)`: the
//! input plane (rdi), the output and residual planes (rsi, rcx), the
//! channel's `kh·kw` weights (rdx), `bias` and the dynamic ReLU's slopes
//! in xmm0..xmm2. rbx is saved and restored; ends with `vzeroupper`.

use iced_x86::code_asm::*;

use super::dw_plane::{ActRegs, act_consts_zmm, act_zmm, mem_k, with_k, with_kz};
use super::vector::zmm;

pub(crate) use kiln_ir::fused::Act;

/// Output rows per band: independent accumulator chains (enough to cover
/// the FMA latency at two FMAs per cycle) that share each input row.
pub(crate) const ROWS: usize = 8;

/// Lanes of a vector.
pub(super) const LANES: usize = 16;

/// The largest window assembled (taps): the code of one chunk grows with
/// it, and past 11×11 a plane's code would no longer fit the L1 cache.
pub(crate) const MAX_TAPS: usize = 121;

/// One plane: geometry in elements, and the epilogue.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Spec {
    /// window height and width
    pub kh: usize,
    pub kw: usize,
    /// strides: any vertical, horizontal 1 or 2
    pub sh: usize,
    pub sw: usize,
    /// dilations (horizontal 1 at stride 2)
    pub dh: usize,
    pub dw: usize,
    /// top and left padding
    pub pt: usize,
    pub pl: usize,
    /// input plane
    pub h: usize,
    pub w: usize,
    /// output plane (also the residual's)
    pub ho: usize,
    pub wo: usize,
    /// activation (one `dw_plane::assembles`)
    pub act: Act,
    /// whether a residual is added after the activation
    pub residual: bool,
    /// max pooling: the maximum over the taps inside the input (starting
    /// from `bias`, -∞ for a pool), no weights, activation or residual
    pub max: bool,
}

// Register use: zmm0..zmm(ROWS-1) the accumulators, zmm16 the bias,
// zmm17/18 the slopes, zmm19..24 the epilogue constants, zmm25/26 the
// stride-2 permutations, zmm27..29 loads, zmm30 the epilogue's temporary.
const BIAS: usize = 16;
const CONSTS: ActRegs = ActRegs {
    s1: 17,
    s2: 18,
    zero: 19,
    six: 20,
    three: 21,
    half: 22,
    sixth: 23,
    one: 24,
};
const P_EVEN: usize = 25;
const P_ODD: usize = 26;
const T: usize = 27;
const REGS: TapRegs = TapRegs {
    t: T,
    p_even: P_EVEN,
    p_odd: P_ODD,
};
const TMP: usize = 30;

impl Spec {
    /// Whether this plane is assembled: the strides, dilations and
    /// activation the code handles, a window of at most [`MAX_TAPS`], a
    /// non-empty plane, and offsets that fit the instructions' 32-bit
    /// displacements.
    pub fn fits(&self) -> bool {
        let ok = self.kh * self.kw <= MAX_TAPS
            && [
                self.kh, self.kw, self.sh, self.dh, self.dw, self.h, self.w, self.ho, self.wo,
            ]
            .iter()
            .all(|&d| d > 0)
            && (self.sw == 1 || (self.sw == 2 && self.dw == 1))
            && super::dw_plane::assembles(self.act)
            && !(self.max && (self.act != Act::None || self.residual));
        // the largest byte offset the code forms: a band's input rows (and
        // the step to the next band), a row of taps, 32 inputs past the
        // last column, the origin's padding
        let span = |x: usize, y: usize| x.checked_mul(y);
        let rows = (ROWS * self.sh).checked_add(self.kh.saturating_mul(self.dh));
        let far = rows
            .and_then(|r| span(r, self.w))
            .and_then(|x| x.checked_add(self.kw.saturating_mul(self.dw) + 2 * LANES * self.sw))
            .and_then(|x| x.checked_add(self.pt.saturating_mul(self.w) + self.pl))
            .and_then(|x| x.checked_add(span(ROWS, self.wo)?))
            .and_then(|x| x.checked_mul(4));
        ok && far.is_some_and(|b| b < i32::MAX as usize / 2)
    }

    /// Whether output row `ro`'s tap row `i` reads inside the input.
    pub(super) fn row_ok(&self, ro: usize, i: usize) -> bool {
        let r = ro * self.sh + i * self.dh;
        r >= self.pt && r - self.pt < self.h
    }

    /// The lanes (bit `l`: output column `c0 + l`, `l < m`) whose tap
    /// column `j` reads inside the input.
    pub(super) fn col_mask(&self, c0: usize, m: usize, j: usize) -> u32 {
        (0..m)
            .filter(|l| {
                let c = (c0 + l) * self.sw + j * self.dw;
                c >= self.pl && c - self.pl < self.w
            })
            .fold(0, |b, l| b | 1 << l)
    }

    /// The window, strides, dilations, padding, planes and epilogue, for
    /// labels.
    pub(super) fn geometry(&self) -> String {
        format!(
            "{}x{} s{}x{} d{}x{} p{}x{} {}x{}→{}x{}{}{}",
            self.kh,
            self.kw,
            self.sh,
            self.sw,
            self.dh,
            self.dw,
            self.pt,
            self.pl,
            self.h,
            self.w,
            self.ho,
            self.wo,
            match self.act {
                Act::None => String::new(),
                a => format!(" {}", a.name()),
            },
            if self.residual { " +res" } else { "" },
        )
    }
}

/// A short name for kernel plans.
pub(crate) fn label(s: &Spec) -> String {
    if s.max {
        format!("max window {}", s.geometry())
    } else {
        format!("depthwise {}", s.geometry())
    }
}

/// Assembles `s`; the bytes are position-independent.
pub(crate) fn assemble(s: &Spec) -> Result<Vec<u8>, String> {
    if !s.fits() {
        return Err(format!("depthwise window not assembled: {s:?}"));
    }
    emit(s).map_err(|e| e.to_string())
}

/// The opmasks k1..k7 as a cache of lane masks while the code is emitted
/// (straight-line code between labels: what a register holds is known).
pub(super) struct Masks {
    /// the bits in k1..k7, and when each was last used
    held: [Option<u32>; 7],
    used: [u64; 7],
    clock: u64,
}

impl Masks {
    pub(super) fn new() -> Masks {
        Masks {
            held: [None; 7],
            used: [0; 7],
            clock: 0,
        }
    }

    /// Forgets every register: before a label that a jump reaches.
    pub(super) fn reset(&mut self) {
        self.held = [None; 7];
    }

    /// The opmask holding `bits` (0: all sixteen lanes, no mask), setting
    /// the least recently used one when none does. A step uses at most
    /// four masks at once, which stay the most recently used.
    pub(super) fn get(&mut self, a: &mut CodeAssembler, bits: u32) -> Result<u8, IcedError> {
        if bits == 0xffff {
            return Ok(0);
        }
        self.clock += 1;
        let i = match self.held.iter().position(|&h| h == Some(bits)) {
            Some(i) => i,
            None => {
                let i = (0..7)
                    .min_by_key(|&i| (self.held[i].is_some(), self.used[i]))
                    .unwrap_or(0);
                a.mov(ebx, bits)?;
                let k = [k1, k2, k3, k4, k5, k6, k7][i];
                a.kmovw(k, ebx)?;
                self.held[i] = Some(bits);
                i
            }
        };
        self.used[i] = self.clock;
        Ok(i as u8 + 1)
    }
}

/// A band of output rows: the first, and how many.
#[derive(Clone, Copy)]
pub(super) struct Band {
    pub r0: usize,
    pub rows: usize,
}

/// A chunk of output columns: the first, and how many (1..=16).
#[derive(Clone, Copy)]
pub(super) struct Cut {
    pub c0: usize,
    pub m: usize,
}

impl Spec {
    /// Whether every tap of every row of `b` reads inside the input (and
    /// `b` is a whole band): the code of one such band serves them all.
    fn plain_band(&self, b: Band, rows: usize) -> bool {
        b.rows == rows && (0..b.rows).all(|r| (0..self.kh).all(|i| self.row_ok(b.r0 + r, i)))
    }

    /// Whether `c` is sixteen columns whose every tap reads inside.
    pub(super) fn plain_cut(&self, c: Cut) -> bool {
        c.m == LANES && (0..self.kw).all(|j| self.col_mask(c.c0, c.m, j) == 0xffff)
    }
}

fn emit(s: &Spec) -> Result<Vec<u8>, IcedError> {
    let mut a = CodeAssembler::new(64)?;
    let mut masks = Masks::new();
    a.push(rbx)?;
    // the float arguments first: the accumulators overwrite xmm0..xmm2
    a.vbroadcastss(zmm(BIAS), xmm0)?;
    a.vbroadcastss(zmm(CONSTS.s1), xmm1)?;
    a.vbroadcastss(zmm(CONSTS.s2), xmm2)?;
    act_consts_zmm(&mut a, &CONSTS)?;
    if s.sw == 2 {
        pair_perms(&mut a, &REGS)?;
    }
    // rdi: where tap (0, 0) of output (0, 0) would read (in the padding
    // when there is some: only offsets inside the input are dereferenced)
    let origin = 4 * (s.pt * s.w + s.pl) as i64;
    if origin != 0 {
        a.sub(rdi, origin as i32)?;
    }
    bands(
        &mut a,
        &mut masks,
        s,
        (0, s.ho),
        ROWS.min(s.ho),
        r8,
        |a, masks, b| group(a, s, b, masks),
    )?;
    a.vzeroupper()?;
    a.pop(rbx)?;
    a.ret()?;
    a.assemble(0)
}

/// The output rows `[r0, r0 + total)` in bands of `rows` from rdi (input),
/// rsi (output), rcx (residual), which advance band by band: `group`
/// emits one band, and the interior bands (every tap row inside) are one
/// loop counted in `counter`.
#[allow(clippy::too_many_arguments)]
pub(super) fn bands(
    a: &mut CodeAssembler,
    masks: &mut Masks,
    s: &Spec,
    (r0, total): (usize, usize),
    rows: usize,
    counter: AsmRegister64,
    mut group: impl FnMut(&mut CodeAssembler, &mut Masks, Band) -> Result<(), IcedError>,
) -> Result<(), IcedError> {
    let band = |k: usize| Band {
        r0: r0 + k * rows,
        rows: (total - k * rows).min(rows),
    };
    let in_step = (4 * rows * s.sh * s.w) as i32;
    let out_step = (4 * rows * s.wo) as i32;
    runs(
        a,
        masks,
        total.div_ceil(rows),
        counter,
        |k| s.plain_band(band(k), rows),
        |a, masks, k| {
            group(a, masks, band(k))?;
            a.add(rdi, in_step)?;
            a.add(rsi, out_step)?;
            a.add(rcx, out_step)
        },
    )
}

/// The rows of band `b` from rdi (input), rsi (output), rcx (residual).
fn group(a: &mut CodeAssembler, s: &Spec, b: Band, masks: &mut Masks) -> Result<(), IcedError> {
    columns(a, s, masks, |a, masks, c| chunk(a, s, b, c, masks))
}

/// Emits `step` for items `0..n`: each run of plain items (`plain(k)`:
/// the same code for all) as one loop counted in `counter`, the others one
/// by one. The mask cache is forgotten at the loop's label.
pub(super) fn runs(
    a: &mut CodeAssembler,
    masks: &mut Masks,
    n: usize,
    counter: AsmRegister64,
    plain: impl Fn(usize) -> bool,
    mut step: impl FnMut(&mut CodeAssembler, &mut Masks, usize) -> Result<(), IcedError>,
) -> Result<(), IcedError> {
    let mut k = 0;
    while k < n {
        if plain(k) {
            let count = (k..n).take_while(|&k| plain(k)).count();
            let mut next = a.create_label();
            a.mov(counter, count as u64)?;
            masks.reset();
            a.set_label(&mut next)?;
            step(a, masks, k)?;
            a.dec(counter)?;
            a.jnz(next)?;
            k += count;
        } else {
            step(a, masks, k)?;
            k += 1;
        }
    }
    Ok(())
}

/// The 16-column chunks of the output rows at rdi (input), rsi (output),
/// rcx (residual): r9..r11 walk the columns, rax counts the interior
/// chunks' loop, `chunk` emits one chunk at r9..r11.
pub(super) fn columns(
    a: &mut CodeAssembler,
    s: &Spec,
    masks: &mut Masks,
    mut chunk: impl FnMut(&mut CodeAssembler, &mut Masks, Cut) -> Result<(), IcedError>,
) -> Result<(), IcedError> {
    a.mov(r9, rdi)?;
    a.mov(r10, rsi)?;
    a.mov(r11, rcx)?;
    let cut = |k: usize| Cut {
        c0: k * LANES,
        m: (s.wo - k * LANES).min(LANES),
    };
    runs(
        a,
        masks,
        s.wo.div_ceil(LANES),
        rax,
        |k| s.plain_cut(cut(k)),
        |a, masks, k| {
            chunk(a, masks, cut(k))?;
            a.add(r9, (4 * LANES * s.sw) as i32)?;
            a.add(r10, 4 * LANES as i32)?;
            a.add(r11, 4 * LANES as i32)
        },
    )
}

/// The registers [`taps`] uses: three loads from zmm `t`, and the stride-2
/// permutations.
pub(super) struct TapRegs {
    pub t: usize,
    pub p_even: usize,
    pub p_odd: usize,
}

/// Loads the stride-2 permutations of `regs` (even lanes, odd lanes of 32
/// inputs) through the red zone.
pub(super) fn pair_perms(a: &mut CodeAssembler, regs: &TapRegs) -> Result<(), IcedError> {
    for (r, odd) in [(regs.p_even, 0u32), (regs.p_odd, 1)] {
        for l in 0..16u32 {
            a.mov(dword_ptr(rsp - 64 + 4 * l as i32), 2 * l + odd)?;
        }
        a.vmovups(zmm(r), zmmword_ptr(rsp - 64))?;
    }
    Ok(())
}

/// The taps of band `b`, chunk `c`, the input at `base`: for each input
/// row, each tap column (at stride 2, each pair of them) is loaded once
/// under its lanes' mask, then `fma(a, r, i, j, x, k)` runs for every
/// (output row `r`, tap row `i`) of the band it feeds, with the input
/// vector `x` and the opmask `k` of the lanes whose tap is inside. Input
/// rows go outer, so output row `r` still receives its taps in the order
/// row `i`, then column `j`. With `ahead`, each input row first prefetches
/// the lines its loads read that many bytes further on.
#[allow(clippy::too_many_arguments)]
pub(super) fn taps(
    a: &mut CodeAssembler,
    s: &Spec,
    b: Band,
    c: Cut,
    masks: &mut Masks,
    base: AsmRegister64,
    regs: &TapRegs,
    ahead: Option<i32>,
    mut fma: impl FnMut(
        &mut CodeAssembler,
        usize,
        usize,
        usize,
        AsmRegisterZmm,
        u8,
    ) -> Result<(), IcedError>,
) -> Result<(), IcedError> {
    let w_row = (4 * s.w) as i32;
    let (ta, tb, te) = (zmm(regs.t), zmm(regs.t + 1), zmm(regs.t + 2));
    for q in 0..=(b.rows - 1) * s.sh + (s.kh - 1) * s.dh {
        let targets: Vec<(usize, usize)> = (0..b.rows)
            .filter_map(|r| {
                let d = q.checked_sub(r * s.sh)?;
                (d % s.dh == 0 && d / s.dh < s.kh).then_some((r, d / s.dh))
            })
            .filter(|&(r, i)| s.row_ok(b.r0 + r, i))
            .collect();
        if targets.is_empty() {
            continue;
        }
        let row = q as i32 * w_row;
        if let Some(ahead) = ahead {
            // the lines this input row's loads read, `ahead` bytes on
            let span = if s.sw == 1 {
                4 * (s.kw - 1) * s.dw + 64
            } else {
                4 * (s.kw - 1) + 128
            };
            for off in (0..span).step_by(64).chain([span - 4]) {
                a.prefetcht0(byte_ptr(base + row + ahead + off as i32))?;
            }
        }
        if s.sw == 1 {
            for j in 0..s.kw {
                let mj = s.col_mask(c.c0, c.m, j);
                if mj == 0 {
                    continue;
                }
                let k = masks.get(a, mj)?;
                a.vmovups(
                    with_kz(ta, k),
                    zmmword_ptr(base + row + (4 * j * s.dw) as i32),
                )?;
                for &(r, i) in &targets {
                    fma(a, r, i, j, ta, k)?;
                }
            }
        } else {
            for j in (0..s.kw).step_by(2) {
                let m0 = s.col_mask(c.c0, c.m, j);
                let m1 = if j + 1 < s.kw {
                    s.col_mask(c.c0, c.m, j + 1)
                } else {
                    0
                };
                if m0 == 0 && m1 == 0 {
                    continue;
                }
                let (la, lb) = pair_loads(m0, m1);
                let at = base + row + (4 * j) as i32;
                let ka = masks.get(a, la)?;
                a.vmovups(with_kz(ta, ka), zmmword_ptr(at))?;
                let kb = masks.get(a, lb)?;
                a.vmovups(with_kz(tb, kb), zmmword_ptr(at + 64))?;
                // te = the even inputs (tap j), ta = the odd ones (tap j + 1)
                if m0 != 0 {
                    a.vmovaps(te, zmm(regs.p_even))?;
                    a.vpermi2ps(te, ta, tb)?;
                }
                if m1 != 0 {
                    a.vpermt2ps(ta, zmm(regs.p_odd), tb)?;
                }
                let km0 = if m0 != 0 { masks.get(a, m0)? } else { 0 };
                let km1 = if m1 != 0 { masks.get(a, m1)? } else { 0 };
                for &(r, i) in &targets {
                    if m0 != 0 {
                        fma(a, r, i, j, te, km0)?;
                    }
                    if m1 != 0 {
                        fma(a, r, i, j + 1, ta, km1)?;
                    }
                }
            }
        }
    }
    Ok(())
}

/// The lanes of the two 16-input loads at stride 2 for the pair of tap
/// columns `j` (even lanes) and `j + 1` (odd lanes; `m1` 0 when absent):
/// input `q` of the 32 is read when its lane's tap reads inside.
fn pair_loads(m0: u32, m1: u32) -> (u32, u32) {
    let wide = |m: u32, odd: u32| -> u64 {
        (0..16u32)
            .filter(|l| m >> l & 1 == 1)
            .fold(0u64, |b, l| b | 1 << (2 * l + odd))
    };
    let all = wide(m0, 0) | wide(m1, 1);
    ((all & 0xffff) as u32, (all >> 16) as u32)
}

/// The sixteen columns (or fewer) `c` of the rows of band `b` at r9, r10,
/// r11.
fn chunk(
    a: &mut CodeAssembler,
    s: &Spec,
    b: Band,
    c: Cut,
    masks: &mut Masks,
) -> Result<(), IcedError> {
    let acc = zmm;
    for r in 0..b.rows {
        a.vmovaps(acc(r), zmm(BIAS))?;
    }
    let wt = |i: usize, j: usize| dword_bcst(rdx + (4 * (i * s.kw + j)) as i32);
    // no prefetch: one plane per call, which the hardware prefetchers
    // follow (one band ahead measured no faster on StarNet, ConvNeXt,
    // MixNet, FastViT)
    taps(a, s, b, c, masks, r9, &REGS, None, |a, r, i, j, x, k| {
        if s.max {
            // acc = max(acc, x), NaN from either (vrangeps returns a NaN
            // source; vmaxps would let a later input replace a NaN);
            // imm 0b01_01: the larger value with its own sign
            // (0b00_01 would take acc's sign)
            a.vrangeps(with_k(acc(r), k), acc(r), x, 0x05)
        } else {
            // acc += w·x (the product commutes: same bits as x·w)
            a.vfmadd231ps(with_k(acc(r), k), x, wt(i, j))
        }
    })?;
    let ko = masks.get(a, ((1u64 << c.m) - 1) as u32)?;
    let out_row = (4 * s.wo) as i32;
    for r in 0..b.rows {
        let off = r as i32 * out_row;
        act_zmm(a, s.act, acc(r), zmm(TMP), &CONSTS)?;
        if s.residual {
            a.vaddps(with_k(acc(r), ko), acc(r), zmmword_ptr(r11 + off))?;
        }
        a.vmovups(mem_k(zmmword_ptr(r10 + off), ko), acc(r))?;
    }
    Ok(())
}
