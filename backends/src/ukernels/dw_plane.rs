//! The interior of a 3×3 depthwise convolution plane, assembled at compile
//! time with iced-x86 for AVX-512 (16 lanes) or AVX2 + FMA (8 lanes, VEX
//! only; [`Spec::width`]).
//!
//! The f32x4 Cranelift kernel runs depthwise convolutions at ~25 GFLOP/s
//! (stride 1) and ~14 GFLOP/s (stride 2, where every vector of inputs is
//! gathered with two loads and a shuffle). Sixteen lanes, the weights in
//! nine registers for the whole plane, and six output rows in flight (six
//! independent accumulator chains to cover the FMA latency, since each
//! output's nine taps must stay one chain to keep the summation order) make
//! it several times faster. The six rows share their input rows: each
//! input row's three shifted vectors are loaded once per 16 columns and
//! feed every output row whose window covers it (at stride 1, 24 loads for
//! 54 FMAs instead of 54 misaligned memory operands).
//!
//! One call computes the plane's interior rectangle, where every tap reads
//! inside the input: `rows × cols` outputs, the geometry baked into the code
//! as immediates (one function per shape and epilogue, cached by its
//! `Spec` in the registry). With a padding of one column, the plane's left
//! and right edge columns are computed here too ([`Spec::left`], [`Spec::right`]):
//! their lane skips the tap column that falls in the padding (a zero-masked
//! load, so it is never read, and a merge-masked FMA, so the sum holds
//! exactly the taps inside the input, in order). When it then computes
//! whole rows, the top and bottom edge rows are computed here too
//! ([`Spec::top`], [`Spec::bottom`]): their padding tap row is simply not
//! emitted (never loaded). The Cranelift driver computes the other border
//! rows and columns. Each output is `bias`, then `fma(x, w, acc)` over the taps row
//! by row, column by column: the order of the f32x4 path, so both compute
//! bit-identical values. Stride 2 loads 32 consecutive inputs and compacts
//! the even (tap 0), odd (tap 1) and shifted even (tap 2) lanes with
//! `vpermi2ps`/`vpermt2ps` (AVX2: 16 inputs, `vshufps` + `vpermpd`).
//! Columns past the last whole vector use masked loads and stores (opmasks;
//! AVX2 `vmaskmovps`), which suppress faults on masked lanes, so nothing
//! outside the taps' inputs and the outputs is touched. AVX2 has no
//! merge-masked FMA: an edge lane's skipped tap is an FMA into a copy and
//! a `vblendvps`, so the lane keeps exactly its sum; with only 16 ymm
//! registers the weights and constants are read from a stack frame as FMA
//! memory operands (see `chunk_ymm`).
//!
//! The epilogue applied in registers is the one the Cranelift row applies
//! inline (none, relu, relu6, the dynamic ReLU, and with this kernel also
//! hard-swish and hard-sigmoid; then the residual), with the element-wise
//! kernels' formulas; silu and GELU are left to the driver's sweep over
//! the plane, silu by the assembled `vector.rs` function.
//!
//! Calling convention: System V, `fn(x, dst, w, res, bias, s1, s2)`: `x`
//! points at the top-left tap of the first interior output (rdi), `dst` and
//! `res` at that output in the output and residual planes (rsi, rcx), `w` at
//! the channel's nine weights (rdx), `bias` and the dynamic ReLU's slopes in
//! xmm0..xmm2. The AVX-512 function uses the red zone for the stride-2
//! permutation tables, the AVX2 one a stack frame; both end with
//! `vzeroupper`.

use iced_x86::code_asm::*;

use super::vector::{self, Width, ymm};

/// The activations: the IR's own vocabulary. The interiors apply those the
/// Cranelift row applies inline ([`assembles`]); the driver sweeps the
/// others over the plane.
pub(crate) use kiln_ir::fused::Act;

/// Whether the assembled interiors apply `act` in registers: not SiLU and
/// GELU, whose polynomials the driver applies in a sweep.
pub(crate) fn assembles(act: Act) -> bool {
    !matches!(act, Act::Silu | Act::Gelu)
}

/// One interior: geometry in elements, and the epilogue.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Spec {
    /// vertical stride
    pub sh: usize,
    /// horizontal stride: 1 or 2
    pub sw: usize,
    /// input row length
    pub w: usize,
    /// output row length (also the residual's)
    pub wo: usize,
    /// interior output rows (at least 1)
    pub rows: usize,
    /// output columns computed (at least 1): the interior, plus the edge
    /// columns below
    pub cols: usize,
    /// whether the first row computed is the plane's top edge row, whose
    /// tap row 0 falls in the padding (never read)
    pub top: bool,
    /// whether the last row computed is the plane's bottom edge row, whose
    /// tap row 2 falls in the padding (never read)
    pub bottom: bool,
    /// whether the first column computed is the plane's left edge column,
    /// whose tap column 0 falls in the padding (skipped for that lane)
    pub left: bool,
    /// whether the last column computed is the plane's right edge column,
    /// whose tap column 2 falls in the padding (skipped for that lane)
    pub right: bool,
    /// activation
    pub act: Act,
    /// whether a residual is added after the activation
    pub residual: bool,
    /// the vector width (AVX-512 or AVX2)
    pub width: Width,
}

/// Output rows computed together (independent accumulator chains, and the
/// rows that share each loaded input row).
const GROUP: usize = ACC.len();

// Register use: zmm0..zmm8 the weights, zmm9 the bias, zmm10/11 the slopes,
// zmm12 zero, zmm13 six, zmm14..16 the stride-2 permutations (even, odd,
// shifted even), zmm17..19 and zmm29 the hard-sigmoid constants, zmm20..23,
// zmm30 and zmm31 the accumulators, zmm24..28 loads.
const W0: usize = 0;
const BIAS: usize = 9;
const S1: usize = 10;
const S2: usize = 11;
const ZERO: usize = 12;
const SIX: usize = 13;
const P_EVEN: usize = 14;
const P_ODD: usize = 15;
const P_SHIFT: usize = 16;
const THREE: usize = 17;
const HALF: usize = 18;
const SIXTH: usize = 19;
const ONE: usize = 29;
/// The accumulators, one per output row of a group.
const ACC: [usize; 6] = [20, 21, 22, 23, 30, 31];
const T: usize = 24;

/// Where an AVX-512 epilogue finds its constants and the dynamic ReLU's
/// slopes (zmm numbers): shared by this file and `dw_window.rs`.
pub(super) struct ActRegs {
    pub zero: usize,
    pub six: usize,
    pub three: usize,
    pub half: usize,
    pub sixth: usize,
    pub one: usize,
    pub s1: usize,
    pub s2: usize,
}

const ZMM_CONSTS: ActRegs = ActRegs {
    zero: ZERO,
    six: SIX,
    three: THREE,
    half: HALF,
    sixth: SIXTH,
    one: ONE,
    s1: S1,
    s2: S2,
};

/// Loads the epilogue constants of `r` (not the slopes); uses eax.
pub(super) fn act_consts_zmm(a: &mut CodeAssembler, r: &ActRegs) -> Result<(), IcedError> {
    a.vxorps(zmm(r.zero), zmm(r.zero), zmm(r.zero))?;
    for (reg, x) in [
        (r.six, 6.0f32),
        (r.three, 3.0),
        (r.half, 0.5),
        (r.sixth, 1.0 / 6.0),
        (r.one, 1.0),
    ] {
        a.mov(eax, x.to_bits())?;
        a.vpbroadcastd(zmm(reg), eax)?;
    }
    Ok(())
}

/// Applies `act` to `acc` in place (AVX-512; `t` a temporary): the
/// element-wise kernels' formulas, operation for operation, so the
/// assembled planes and the Cranelift rows agree bit for bit.
pub(super) fn act_zmm(
    a: &mut CodeAssembler,
    act: Act,
    acc: AsmRegisterZmm,
    t: AsmRegisterZmm,
    r: &ActRegs,
) -> Result<(), IcedError> {
    match act {
        Act::None => {}
        Act::Silu | Act::Gelu => unreachable!("assemble rejects swept activations"),
        // NaN-preserving like the Cranelift forms: vmaxps/vminps
        // return the second source (the value) when either is NaN
        Act::Relu => a.vmaxps(acc, zmm(r.zero), acc)?,
        Act::Relu6 => {
            a.vmaxps(acc, zmm(r.zero), acc)?;
            a.vminps(acc, zmm(r.six), acc)?;
        }
        Act::DyRelu => {
            a.vmulps(t, acc, zmm(r.s1))?;
            a.vmulps(acc, acc, zmm(r.s2))?;
            a.vmaxps(acc, t, acc)?;
        }
        Act::HardSwish => {
            a.vaddps(t, acc, zmm(r.three))?;
            a.vmaxps(t, zmm(r.zero), t)?;
            a.vminps(t, zmm(r.six), t)?;
            a.vmulps(acc, acc, t)?;
            a.vdivps(acc, acc, zmm(r.six))?;
        }
        Act::HardSigmoid => {
            a.vfmadd213ps(acc, zmm(r.sixth), zmm(r.half))?;
            a.vmaxps(acc, zmm(r.zero), acc)?;
            a.vminps(acc, zmm(r.one), acc)?;
        }
    }
    Ok(())
}

fn zmm(i: usize) -> AsmRegisterZmm {
    vector::zmm(i)
}

/// The accumulator of output row `r` of a group.
fn acc(r: usize) -> AsmRegisterZmm {
    zmm(ACC[r])
}

/// `z` with opmask `k` (0: unmasked).
pub(super) fn with_k(z: AsmRegisterZmm, k: u8) -> AsmRegisterZmm {
    match k {
        0 => z,
        1 => z.k1(),
        2 => z.k2(),
        3 => z.k3(),
        4 => z.k4(),
        5 => z.k5(),
        6 => z.k6(),
        _ => z.k7(),
    }
}

/// Zero-masked `z` with opmask `k` (0: unmasked).
pub(super) fn with_kz(z: AsmRegisterZmm, k: u8) -> AsmRegisterZmm {
    if k == 0 { z } else { with_k(z, k).z() }
}

/// The memory operand `m` with opmask `k` (0: unmasked).
pub(super) fn mem_k(m: AsmMemoryOperand, k: u8) -> AsmMemoryOperand {
    match k {
        0 => m,
        1 => m.k1(),
        2 => m.k2(),
        3 => m.k3(),
        4 => m.k4(),
        5 => m.k5(),
        6 => m.k6(),
        _ => m.k7(),
    }
}

/// `(1 << n) - 1` for `n` clamped to [0, 16], into opmask `k` (1..7).
fn set_mask(a: &mut CodeAssembler, k: u8, n: i64) -> Result<(), IcedError> {
    set_bits(a, k, lanes(n))
}

/// The low `n` lanes, `n` clamped to [0, 16].
fn lanes(n: i64) -> u32 {
    ((1u64 << n.clamp(0, 16)) - 1) as u32
}

/// `bits` into opmask `k` (1..7), through edx (the weight pointer is dead
/// once the weights are in registers).
fn set_bits(a: &mut CodeAssembler, k: u8, bits: u32) -> Result<(), IcedError> {
    a.mov(edx, bits)?;
    let kr = match k {
        1 => k1,
        2 => k2,
        3 => k3,
        4 => k4,
        5 => k5,
        6 => k6,
        _ => k7,
    };
    a.kmovw(kr, edx)
}

/// A group of output rows: how many (1..=[`GROUP`]), whether the first is
/// the top edge row (skips tap row 0) and whether the last is the bottom
/// edge row (skips tap row 2).
#[derive(Clone, Copy)]
struct Band {
    rows: usize,
    top: bool,
    bottom: bool,
}

/// The (output row, tap row) pairs of band `b` that read input row `ir`
/// of the group (both widths walk input rows outer).
fn targets(s: &Spec, b: Band, ir: usize) -> Vec<(usize, usize)> {
    (0..b.rows)
        .filter_map(|r| ir.checked_sub(r * s.sh).filter(|&i| i < 3).map(|i| (r, i)))
        .filter(|&(r, i)| b.takes(r, i))
        .collect()
}

impl Band {
    /// A whole interior group: the same code for every one (a loop).
    fn plain(self) -> bool {
        self.rows == GROUP && !self.top && !self.bottom
    }

    /// Whether output row `r` of the band takes tap row `i` (the edge rows'
    /// padding rows are never loaded).
    fn takes(self, r: usize, i: usize) -> bool {
        !((self.top && r == 0 && i == 0) || (self.bottom && r == self.rows - 1 && i == 2))
    }
}

/// Where a chunk of a vector's lanes (or fewer) of columns sits: its
/// column count, whether it starts at the left edge column and whether it
/// ends at the right one.
#[derive(Clone, Copy)]
struct Cut {
    /// columns (1..=lanes)
    m: usize,
    left: bool,
    right: bool,
    /// lanes of a vector (16 or 8)
    lanes: usize,
    /// `Ymm`: which of the two non-plain chunks of a row (the first, the
    /// last) this is, to find its masks in the frame
    last: bool,
}

impl Cut {
    /// A whole interior chunk: no masks.
    fn plain(self) -> bool {
        self.m == self.lanes && !self.left && !self.right
    }
}

/// The opmasks of a chunk that is not [`Cut::plain`]: k1 the output lanes
/// (stride 1: also every tap's input lanes); stride 2: k1..k4 the loads at
/// input offsets 0, 16, 2 and 17 (only the inputs a lane's taps read: up to
/// 2m, or 2m - 1 when the last lane skips tap 2) and k5 the output lanes.
/// k6: the lanes that take tap column 0 (not lane 0 at the left edge); k7:
/// those that take tap column 2 (not the last lane at the right edge).
fn set_chunk_masks(a: &mut CodeAssembler, s: &Spec, c: Cut) -> Result<(), IcedError> {
    let m = c.m as i64;
    let r = i64::from(c.right);
    let not_first = if c.left { !1u32 } else { !0 };
    let out = lanes(m);
    if s.sw == 1 {
        set_bits(a, 1, out)?;
    } else {
        // the left edge's lane 0 is input -1: only tap 0 of that lane reads it
        set_bits(a, 1, lanes(2 * m + 1 - r) & not_first)?;
        set_mask(a, 2, 2 * m + 1 - 16 - r)?;
        set_mask(a, 3, 2 * m - 1 - r)?;
        set_mask(a, 4, 2 * m + 1 - 17 - r)?;
        set_bits(a, 5, out)?;
    }
    set_bits(a, 6, out & not_first)?;
    set_bits(a, 7, if c.right { lanes(m - 1) } else { out })
}

/// Assembles `s`; the bytes are position-independent.
pub(crate) fn assemble(s: &Spec) -> Result<Vec<u8>, String> {
    if !assembles(s.act) {
        return Err(format!(
            "depthwise interiors do not apply {}: {s:?}",
            s.act.name()
        ));
    }
    emit(s).map_err(|e| e.to_string())
}

/// Loads the 16-entry permutation `idx` into `zmm(r)` through the red zone.
fn table(a: &mut CodeAssembler, r: usize, idx: impl Fn(u32) -> u32) -> Result<(), IcedError> {
    for l in 0..16u32 {
        a.mov(dword_ptr(rsp - 64 + 4 * l as i32), idx(l))?;
    }
    a.vmovups(zmm(r), zmmword_ptr(rsp - 64))
}

fn emit(s: &Spec) -> Result<Vec<u8>, IcedError> {
    assert!(s.sw == 1 || s.sw == 2, "stride {}", s.sw);
    let mut a = CodeAssembler::new(64)?;
    match s.width {
        Width::Zmm => zmm_prologue(&mut a, s)?,
        Width::Ymm => ymm_prologue(&mut a, s)?,
    }
    let in_row = (4 * s.sh * s.w) as i64;
    let out_row = (4 * s.wo) as i64;
    // row groups: the first (if it holds the top edge), a loop over the
    // plain ones, the last (if it holds the bottom edge or is short)
    let n = s.rows.div_ceil(GROUP);
    let band = |k: usize| Band {
        rows: (s.rows - GROUP * k).min(GROUP),
        top: s.top && k == 0,
        bottom: s.bottom && k == n - 1,
    };
    let step = |a: &mut CodeAssembler, b: Band| -> Result<(), IcedError> {
        group(a, s, b)?;
        a.add(rdi, (GROUP as i64 * in_row) as i32)?;
        a.add(rsi, (GROUP as i64 * out_row) as i32)?;
        a.add(rcx, (GROUP as i64 * out_row) as i32)
    };
    let mut k = 0;
    if !band(0).plain() {
        step(&mut a, band(0))?;
        k = 1;
    }
    let plain = (k..n).take_while(|&k| band(k).plain()).count();
    if plain > 0 {
        let mut next = a.create_label();
        a.mov(r8, plain as u64)?;
        a.set_label(&mut next)?;
        step(&mut a, band(k))?;
        a.dec(r8)?;
        a.jnz(next)?;
        k += plain;
    }
    for k in k..n {
        step(&mut a, band(k))?;
    }
    if s.width == Width::Ymm {
        a.add(rsp, Y_FRAME)?;
    }
    a.vzeroupper()?;
    a.ret()?;
    a.assemble(0)
}

/// The AVX-512 prologue: weights, bias, slopes and epilogue constants into
/// their zmm registers, the stride-2 permutations through the red zone.
fn zmm_prologue(a: &mut CodeAssembler, s: &Spec) -> Result<(), IcedError> {
    // the float arguments first: the weights overwrite xmm0..xmm2
    a.vbroadcastss(zmm(BIAS), xmm0)?;
    a.vbroadcastss(zmm(S1), xmm1)?;
    a.vbroadcastss(zmm(S2), xmm2)?;
    for t in 0..9 {
        a.vbroadcastss(zmm(W0 + t), dword_ptr(rdx + 4 * t as i32))?;
    }
    act_consts_zmm(a, &ZMM_CONSTS)?;
    if s.sw == 2 {
        table(a, P_EVEN, |l| 2 * l)?;
        table(a, P_ODD, |l| 2 * l + 1)?;
        // inputs 2, 4, .., 32 from the loads at offsets 2 and 17: lanes
        // 0, 2, .., 14 of the first, then 1, 3, .., 15 of the second
        table(a, P_SHIFT, |l| if l < 8 { 2 * l } else { 2 * l + 1 })?;
    }
    Ok(())
}

/// `rows` output rows from rdi (input), rsi (output), rcx (residual); uses
/// r9..r11 as the column pointers and rax as the chunk counter.
fn group(a: &mut CodeAssembler, s: &Spec, b: Band) -> Result<(), IcedError> {
    a.mov(r9, rdi)?;
    a.mov(r10, rsi)?;
    a.mov(r11, rcx)?;
    // chunks: the first (if it holds the left edge), a loop over the plain
    // ones, the last (if it holds the right edge or is short)
    let lanes = s.width.lanes();
    let n = s.cols.div_ceil(lanes);
    let cut = |k: usize| Cut {
        m: (s.cols - lanes * k).min(lanes),
        left: s.left && k == 0,
        right: s.right && k == n - 1,
        lanes,
        last: k > 0,
    };
    let mut k = 0;
    let step = |a: &mut CodeAssembler, c: Cut| -> Result<(), IcedError> {
        let bytes = s.width.bytes();
        match s.width {
            Width::Zmm => {
                if !c.plain() {
                    set_chunk_masks(a, s, c)?;
                }
                chunk(a, s, b, c)?;
            }
            Width::Ymm => chunk_ymm(a, s, b, c)?,
        }
        a.add(r9, bytes * s.sw as i32)?;
        a.add(r10, bytes)?;
        a.add(r11, bytes)
    };
    if !cut(0).plain() {
        step(a, cut(0))?;
        k = 1;
    }
    let plain = (k..n).take_while(|&k| cut(k).plain()).count();
    if plain > 0 {
        let mut next = a.create_label();
        a.mov(rax, plain as u64)?;
        a.set_label(&mut next)?;
        step(a, cut(k))?;
        a.dec(rax)?;
        a.jnz(next)?;
        k += plain;
    }
    for k in k..n {
        step(a, cut(k))?;
    }
    Ok(())
}

/// Sixteen columns (or the masked tail) of `rows` output rows at r9, r10,
/// r11 (AVX-512).
fn chunk(a: &mut CodeAssembler, s: &Spec, b: Band, c: Cut) -> Result<(), IcedError> {
    let rows = b.rows;
    let w_row = (4 * s.w) as i32;
    let out_row = (4 * s.wo) as i32;
    let tail = !c.plain();
    // the output mask: stride 2 keeps k1..k4 for the loads
    let ko: u8 = match (tail, s.sw) {
        (false, _) => 0,
        (true, 1) => 1,
        _ => 5,
    };
    // the FMA mask of tap column j: the edge lanes skip their padding tap
    // (merge-masked, so the sum keeps exactly the taps inside the input,
    // in order, like the Cranelift edge columns)
    let kt = |j: usize| -> u8 {
        match j {
            0 if c.left => 6,
            2 if c.right => 7,
            _ => 0,
        }
    };
    for r in 0..rows {
        a.vmovaps(acc(r), zmm(BIAS))?;
    }
    // Input rows outer: each row's vectors are loaded (and, at stride 2,
    // compacted) once and feed every output row of the group whose window
    // covers it, instead of once per output row (a third of the loads at
    // stride 1 with six rows: the misaligned, line-crossing loads, not the
    // FMAs, bounded the old form). Output row r still receives its taps
    // in the order row i, then column j.
    let (ta, tb, tc, td, te) = (zmm(T), zmm(T + 1), zmm(T + 2), zmm(T + 3), zmm(T + 4));
    for ir in 0..(rows - 1) * s.sh + 3 {
        let targets = targets(s, b, ir);
        if targets.is_empty() {
            continue;
        }
        let row = ir as i32 * w_row;
        if s.sw == 1 {
            for j in 0..3 {
                // (masked-off lanes of a load do not fault: the edge lanes'
                // padding taps are never read)
                let kl = if kt(j) != 0 { kt(j) } else { ko };
                a.vmovups(with_kz(ta, kl), zmmword_ptr(r9 + row + 4 * j as i32))?;
                for &(r, i) in &targets {
                    // acc += w·x (the product commutes: same bits as x·w)
                    a.vfmadd231ps(with_k(acc(r), kt(j)), zmm(W0 + 3 * i + j), ta)?;
                }
            }
        } else {
            let (ka, kb, kc, kd) = if tail { (1, 2, 3, 4) } else { (0, 0, 0, 0) };
            a.vmovups(with_kz(ta, ka), zmmword_ptr(r9 + row))?;
            a.vmovups(with_kz(tb, kb), zmmword_ptr(r9 + row + 64))?;
            a.vmovups(with_kz(tc, kc), zmmword_ptr(r9 + row + 8))?;
            a.vmovups(with_kz(td, kd), zmmword_ptr(r9 + row + 68))?;
            // te = even lanes (tap 0), ta = odd lanes (tap 1), tc =
            // inputs 2, 4, .., 32 (tap 2)
            a.vmovaps(te, zmm(P_EVEN))?;
            a.vpermi2ps(te, ta, tb)?;
            a.vpermt2ps(ta, zmm(P_ODD), tb)?;
            a.vpermt2ps(tc, zmm(P_SHIFT), td)?;
            for &(r, i) in &targets {
                a.vfmadd231ps(with_k(acc(r), kt(0)), zmm(W0 + 3 * i), te)?;
                a.vfmadd231ps(acc(r), zmm(W0 + 3 * i + 1), ta)?;
                a.vfmadd231ps(with_k(acc(r), kt(2)), zmm(W0 + 3 * i + 2), tc)?;
            }
        }
    }
    for r in 0..rows {
        let acc = acc(r);
        let off = r as i32 * out_row;
        act_zmm(a, s.act, acc, zmm(T), &ZMM_CONSTS)?;
        if s.residual {
            a.vaddps(with_k(acc, ko), acc, zmmword_ptr(r11 + off))?;
        }
        a.vmovups(mem_k(zmmword_ptr(r10 + off), ko), acc)?;
    }
    Ok(())
}

// The AVX2 form. Only 16 ymm registers: the accumulators are ymm0..5, the
// loads ymm6..11, masks ymm12/13, temporaries ymm14/15; the weights, bias,
// slopes and epilogue constants are broadcast once per call into a stack
// frame (one 32-byte vector each) and read as FMA memory operands (no
// embedded broadcast in VEX). The chunks' lane masks are computed when
// assembling and written to the frame too: at most two chunks of a row are
// not plain (the first, the last), so two sets.

/// `Ymm` frame slots (32 bytes each, from rsp): the nine weights first.
const Y_W0: i32 = 0;
const Y_BIAS: i32 = 9;
const Y_S1: i32 = 10;
const Y_S2: i32 = 11;
const Y_SIX: i32 = 12;
const Y_THREE: i32 = 13;
const Y_HALF: i32 = 14;
const Y_SIXTH: i32 = 15;
const Y_ONE: i32 = 16;
/// The masks of the first (then the last) non-plain chunk, [`YMask`] order.
const Y_MASKS: i32 = 17;
/// Frame bytes.
const Y_FRAME: i32 = 32 * (Y_MASKS + 2 * YMask::COUNT);

/// The lane masks of a non-plain `Ymm` chunk.
#[derive(Clone, Copy)]
enum YMask {
    /// stride 2: the loads at input offsets 0, 8, 2 and 9 (only the
    /// inputs some lane's taps read)
    LoadA,
    LoadB,
    LoadC,
    LoadD,
    /// the output lanes (stride 1: also the loads of tap column 1)
    Out,
    /// the lanes that take tap column 0 (not lane 0 at the left edge)
    Tap0,
    /// the lanes that take tap column 2 (not the last at the right edge)
    Tap2,
}

impl YMask {
    const COUNT: i32 = 7;
    const ALL: [YMask; 7] = [
        YMask::LoadA,
        YMask::LoadB,
        YMask::LoadC,
        YMask::LoadD,
        YMask::Out,
        YMask::Tap0,
        YMask::Tap2,
    ];

    /// The lanes of `self` for chunk `c` of `s` (bit `l`: lane `l`).
    fn bits(self, c: Cut) -> u32 {
        let m = c.m as i64;
        let r = i64::from(c.right);
        let out = lanes(m);
        let not_first = if c.left { !1u32 } else { !0 };
        // stride 2, the load at input offset `o`: lane i reads input o + i,
        // read by some tap when o + i ≤ 2m - r (the last lane's tap 2 is
        // input 2m, skipped at the right edge), except input 0 at the left
        // edge (lane 0's tap 0: the padding)
        let load = |o: i64| -> u32 {
            (0..8i64)
                .filter(|i| o + i <= 2 * m - r && !(c.left && o + i == 0))
                .fold(0, |b, i| b | 1 << i)
        };
        match self {
            YMask::LoadA => load(0),
            YMask::LoadB => load(8),
            YMask::LoadC => load(2),
            YMask::LoadD => load(9),
            YMask::Out => out,
            YMask::Tap0 => out & not_first,
            YMask::Tap2 => {
                if c.right {
                    lanes(m - 1)
                } else {
                    out
                }
            }
        }
    }

    /// The mask's frame slot number for chunk `c`.
    fn index(self, c: Cut) -> i32 {
        let set = if c.last { YMask::COUNT } else { 0 };
        Y_MASKS + set + self as i32
    }

    /// The mask's frame slot for chunk `c`.
    fn at(self, c: Cut) -> AsmMemoryOperand {
        slot(self.index(c))
    }
}

/// Frame slot `i`.
fn slot(i: i32) -> AsmMemoryOperand {
    ymmword_ptr(rsp + 32 * i)
}

/// The AVX2 prologue: the frame (see above).
fn ymm_prologue(a: &mut CodeAssembler, s: &Spec) -> Result<(), IcedError> {
    // VEX encodings only: this runs on CPUs without AVX-512
    a.set_prefer_vex(true);
    a.sub(rsp, Y_FRAME)?;
    // the float arguments first (xmm0..xmm2)
    for (x, at) in [(xmm0, Y_BIAS), (xmm1, Y_S1), (xmm2, Y_S2)] {
        a.vbroadcastss(ymm15, x)?;
        a.vmovups(slot(at), ymm15)?;
    }
    for t in 0..9 {
        a.vbroadcastss(ymm15, dword_ptr(rdx + 4 * t))?;
        a.vmovups(slot(Y_W0 + t), ymm15)?;
    }
    for (at, x) in [
        (Y_SIX, 6.0f32),
        (Y_THREE, 3.0),
        (Y_HALF, 0.5),
        (Y_SIXTH, 1.0 / 6.0),
        (Y_ONE, 1.0),
    ] {
        a.mov(eax, x.to_bits())?;
        a.vmovd(xmm15, eax)?;
        a.vbroadcastss(ymm15, xmm15)?;
        a.vmovups(slot(at), ymm15)?;
    }
    // the two non-plain chunks' masks (see `group`'s cuts)
    let n = s.cols.div_ceil(8);
    for k in [0, n - 1].into_iter().take(n.min(2)) {
        let c = Cut {
            m: (s.cols - 8 * k).min(8),
            left: s.left && k == 0,
            right: s.right && k == n - 1,
            lanes: 8,
            last: k > 0,
        };
        if c.plain() {
            continue;
        }
        let loads = [YMask::LoadA, YMask::LoadB, YMask::LoadC, YMask::LoadD];
        for mask in YMask::ALL {
            if s.sw == 1 && loads.iter().any(|&l| l as i32 == mask as i32) {
                continue;
            }
            let bits = mask.bits(c);
            for l in 0..8 {
                let v: u32 = if bits >> l & 1 == 1 { u32::MAX } else { 0 };
                a.mov(dword_ptr(rsp + 32 * mask.index(c) + 4 * l), v)?;
            }
        }
    }
    Ok(())
}

/// Eight columns (or the masked tail) of `rows` output rows at r9, r10,
/// r11 (AVX2): the same taps in the same order as [`chunk`], with
/// `vmaskmovps` for masked loads and stores and a blend for the edge lanes'
/// skipped taps.
/// The ymm epilogue's constants: ymm13 zero, ymm14/15 as `act` needs.
fn act_consts_ymm(a: &mut CodeAssembler, act: Act) -> Result<(), IcedError> {
    match act {
        Act::None | Act::DyRelu => {}
        Act::Silu | Act::Gelu => unreachable!("assemble rejects swept activations"),
        Act::Relu => a.vxorps(ymm13, ymm13, ymm13)?,
        Act::Relu6 | Act::HardSwish => {
            a.vxorps(ymm13, ymm13, ymm13)?;
            a.vmovups(ymm14, slot(Y_SIX))?;
        }
        Act::HardSigmoid => {
            a.vxorps(ymm13, ymm13, ymm13)?;
            a.vmovups(ymm14, slot(Y_SIXTH))?;
            a.vmovups(ymm15, slot(Y_ONE))?;
        }
    }
    Ok(())
}

/// `act` on the accumulator `x`, with [`act_consts_ymm`]'s constants in
/// place (ymm15 is also the temporary where `act` needs no constant
/// there): the formulas of `chunk`, operation for operation.
fn activate_ymm(a: &mut CodeAssembler, act: Act, x: AsmRegisterYmm) -> Result<(), IcedError> {
    match act {
        Act::None => {}
        Act::Silu | Act::Gelu => unreachable!("assemble rejects swept activations"),
        Act::Relu => a.vmaxps(x, ymm13, x)?,
        Act::Relu6 => {
            a.vmaxps(x, ymm13, x)?;
            a.vminps(x, ymm14, x)?;
        }
        Act::DyRelu => {
            a.vmulps(ymm15, x, slot(Y_S1))?;
            a.vmulps(x, x, slot(Y_S2))?;
            a.vmaxps(x, ymm15, x)?;
        }
        Act::HardSwish => {
            a.vaddps(ymm15, x, slot(Y_THREE))?;
            a.vmaxps(ymm15, ymm13, ymm15)?;
            a.vminps(ymm15, ymm14, ymm15)?;
            a.vmulps(x, x, ymm15)?;
            a.vdivps(x, x, slot(Y_SIX))?;
        }
        Act::HardSigmoid => {
            a.vfmadd213ps(x, ymm14, slot(Y_HALF))?;
            a.vmaxps(x, ymm13, x)?;
            a.vminps(x, ymm15, x)?;
        }
    }
    Ok(())
}

fn chunk_ymm(a: &mut CodeAssembler, s: &Spec, b: Band, c: Cut) -> Result<(), IcedError> {
    let rows = b.rows;
    let w_row = (4 * s.w) as i32;
    let out_row = (4 * s.wo) as i32;
    let tail = !c.plain();
    let acc = |r: usize| ymm(r);
    let w = |t: usize| slot(Y_W0 + t as i32);
    // the edge mask of tap column j, if its FMA skips a lane
    let edge = |j: usize| -> Option<YMask> {
        match j {
            0 if c.left => Some(YMask::Tap0),
            2 if c.right => Some(YMask::Tap2),
            _ => None,
        }
    };
    // acc(r) += x·w(t), for the lanes of `mask` only (in ymm12 when set):
    // the FMA into a copy, blended in, so the other lanes keep exactly
    // their sum, as a merge-masked FMA does
    // A plain stride-1 chunk holds the weights in ymm6..14 and loads into
    // ymm15 (all 16 registers): as memory operands, the weights were two
    // loads in three of the chunk's, and the loads bounded it. (The
    // epilogue reuses those registers, so each such chunk reloads them.)
    let wreg = !tail && s.sw == 1;
    let fma = |a: &mut CodeAssembler,
               r: usize,
               x: AsmRegisterYmm,
               t: usize,
               masked: bool|
     -> Result<(), IcedError> {
        if masked {
            a.vmovaps(ymm14, acc(r))?;
            a.vfmadd231ps(ymm14, x, w(t))?;
            a.vblendvps(acc(r), acc(r), ymm14, ymm12)
        } else if wreg {
            a.vfmadd231ps(acc(r), x, ymm(6 + t))
        } else {
            a.vfmadd231ps(acc(r), x, w(t))
        }
    };
    if wreg {
        for t in 0..9 {
            a.vmovups(ymm(6 + t), w(t))?;
        }
    }
    for r in 0..rows {
        a.vmovups(acc(r), slot(Y_BIAS))?;
    }
    // input rows outer, as in `chunk`
    for ir in 0..(rows - 1) * s.sh + 3 {
        let targets = targets(s, b, ir);
        if targets.is_empty() {
            continue;
        }
        let row = ir as i32 * w_row;
        if s.sw == 1 {
            let x = if wreg { ymm15 } else { ymm6 };
            for j in 0..3 {
                let src = ymmword_ptr(r9 + row + 4 * j as i32);
                if tail {
                    // (masked-off lanes are never read: the edge lanes'
                    // padding taps, the columns past the tail)
                    a.vmovups(ymm12, edge(j).unwrap_or(YMask::Out).at(c))?;
                    a.vmaskmovps(x, ymm12, src)?;
                } else {
                    a.vmovups(x, src)?;
                }
                for &(r, i) in &targets {
                    fma(a, r, x, 3 * i + j, edge(j).is_some())?;
                }
            }
        } else {
            // inputs [0, 8), [8, 16), [2, 10), [9, 17) of the chunk (not
            // [10, 18): input 17 is no tap's, and may lie past the plane)
            for (reg, off, mask) in [
                (ymm6, 0, YMask::LoadA),
                (ymm7, 32, YMask::LoadB),
                (ymm8, 8, YMask::LoadC),
                (ymm9, 36, YMask::LoadD),
            ] {
                let src = ymmword_ptr(r9 + row + off);
                if tail {
                    a.vmovups(ymm12, mask.at(c))?;
                    a.vmaskmovps(reg, ymm12, src)?;
                } else {
                    a.vmovups(reg, src)?;
                }
            }
            // even inputs (tap 0) into ymm10, odd (tap 1) into ymm6,
            // inputs 2, 4, .., 16 (tap 2: even lanes of the third load, odd
            // lanes of the fourth) into ymm8: `vshufps` picks per 128-bit
            // half, `vpermpd` puts the 64-bit pairs in order
            a.vshufps(ymm10, ymm6, ymm7, 0x88)?;
            a.vshufps(ymm6, ymm6, ymm7, 0xDD)?;
            a.vshufps(ymm8, ymm8, ymm9, 0xD8)?;
            for reg in [ymm10, ymm6, ymm8] {
                a.vpermpd(reg, reg, 0xD8)?;
            }
            for (j, x) in [(0, ymm10), (1, ymm6), (2, ymm8)] {
                if let Some(m) = edge(j) {
                    a.vmovups(ymm12, m.at(c))?;
                }
                for &(r, i) in &targets {
                    fma(a, r, x, 3 * i + j, edge(j).is_some())?;
                }
            }
        }
    }
    act_consts_ymm(a, s.act)?;
    // a chunk at an edge may still have all 8 output lanes: then its
    // residual and output need no mask
    let short = c.m < 8;
    if short && s.residual {
        a.vmovups(ymm12, YMask::Out.at(c))?;
    }
    for r in 0..rows {
        let x = acc(r);
        let off = r as i32 * out_row;
        activate_ymm(a, s.act, x)?;
        let res = ymmword_ptr(r11 + off);
        let dst = ymmword_ptr(r10 + off);
        if short {
            if s.residual {
                // masked: the residual is not read past the row
                a.vmaskmovps(ymm6, ymm12, res)?;
                a.vaddps(x, x, ymm6)?;
            }
            store_lanes(a, r, c.m, off)?;
        } else {
            if s.residual {
                a.vaddps(x, x, res)?;
            }
            a.vmovups(dst, x)?;
        }
    }
    Ok(())
}

/// Stores the low `m < 8` lanes of ymm`r` at `[r10 + off]` with plain
/// 16-, 8- and 4-byte stores (`m` is known here; a `vmaskmovps` store is
/// microcoded on AMD CPUs and made masked chunks slower than f32x4 code).
/// Clobbers xmm6 (free after the residual: the epilogue's constants are
/// in ymm13..15).
fn store_lanes(a: &mut CodeAssembler, r: usize, m: usize, off: i32) -> Result<(), IcedError> {
    let mut x = vector::xmm(r);
    let (mut at, mut m) = (off, m);
    if m >= 4 {
        a.vmovups(xmmword_ptr(r10 + at), x)?;
        a.vextractf128(xmm6, ymm(r), 1)?;
        x = xmm6;
        at += 16;
        m -= 4;
    }
    if m >= 2 {
        a.vmovlps(qword_ptr(r10 + at), x)?;
        if m == 3 {
            // lanes 2, 3 down
            a.vpermilps(xmm6, x, 0x4E)?;
            x = xmm6;
        }
        at += 8;
        m -= 2;
    }
    if m == 1 {
        a.vmovss(dword_ptr(r10 + at), x)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ukernels::vector::assert_vex_only;

    /// Specs covering both strides, every epilogue, masked tails, whole and
    /// partial row groups and every edge combination, at width `width`.
    fn specs(width: Width) -> Vec<Spec> {
        let mut out = Vec::new();
        for sw in [1, 2] {
            for act in Act::ALL.into_iter().filter(|&a| assembles(a)) {
                for (rows, cols) in [(1, 1), (5, 16), (8, 37), (3, 15), (7, 8), (13, 9)] {
                    out.push(Spec {
                        sh: sw,
                        sw,
                        w: 80,
                        wo: 40,
                        rows,
                        cols,
                        top: rows % 2 == 0,
                        bottom: cols % 2 == 1,
                        left: cols % 3 == 1,
                        right: rows % 3 != 1,
                        act,
                        residual: rows % 2 == 1,
                        width,
                    });
                }
            }
        }
        out
    }

    #[test]
    fn every_variant_assembles_and_ends_with_vzeroupper_ret() {
        for width in [Width::Zmm, Width::Ymm] {
            for s in specs(width) {
                let code = assemble(&s).unwrap();
                assert_eq!(&code[code.len() - 4..], &[0xC5, 0xF8, 0x77, 0xC3], "{s:?}");
            }
        }
    }

    /// No instruction of any AVX2 variant is EVEX-encoded or names a
    /// vector register above 15 (either would fault on the AVX2 CPUs these
    /// are for): every variant is decoded and each instruction checked.
    #[test]
    fn avx2_variants_have_no_avx512_encodings() {
        let checked: usize = specs(Width::Ymm)
            .iter()
            .map(|s| assert_vex_only(&format!("{s:?}"), &assemble(s).unwrap()))
            .sum();
        assert!(checked > 10_000, "{checked}");
    }
}
