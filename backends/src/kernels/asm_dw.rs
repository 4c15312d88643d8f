//! AVX-512 interior of a 3×3 depthwise convolution plane, assembled at
//! compile time with iced-x86.
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
//! as immediates (one function per shape and epilogue, cached by
//! [`Spec::key`]). With a padding of one column, the plane's left and right
//! edge columns are computed here too ([`Spec::left`], [`Spec::right`]):
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
//! `vpermi2ps`/`vpermt2ps`. Columns past the last multiple of 16 use masked
//! loads and stores, which suppress faults on masked lanes, so nothing
//! outside the taps' inputs and the outputs is touched.
//!
//! The epilogue applied in registers is the one the Cranelift row applies
//! inline (none, relu, relu6, the dynamic ReLU, and with this kernel also
//! hard-swish and hard-sigmoid; then the residual), with the element-wise
//! kernels' formulas; silu and GELU are left to the driver's sweep over
//! the plane, silu by the assembled `asm_unary` function.
//!
//! Calling convention: System V, `fn(x, dst, w, res, bias, s1, s2)`: `x`
//! points at the top-left tap of the first interior output (rdi), `dst` and
//! `res` at that output in the output and residual planes (rsi, rcx), `w` at
//! the channel's nine weights (rdx), `bias` and the dynamic ReLU's slopes in
//! xmm0..xmm2. The function uses the red zone for the stride-2 permutation
//! tables and ends with `vzeroupper`.

use iced_x86::code_asm::*;

use super::asm_unary;

/// The activation applied in registers (those the Cranelift row applies
/// inline; the others are swept by the driver).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Act {
    /// nothing
    None,
    /// `x < 0 ? 0 : x`
    Relu,
    /// `clamp(x, 0, 6)`
    Relu6,
    /// `max(x·s1, x·s2)`
    DyRelu,
    /// `x·clamp(x + 3, 0, 6) / 6`
    HardSwish,
    /// `clamp(x/6 + 1/2, 0, 1)` (one FMA)
    HardSigmoid,
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
}

impl Spec {
    /// The key the assembled code is cached under.
    pub fn key(&self) -> String {
        format!("depthwise3x3 {self:?}")
    }
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

fn zmm(i: usize) -> AsmRegisterZmm {
    asm_unary::zmm(i)
}

/// The accumulator of output row `r` of a group.
fn acc(r: usize) -> AsmRegisterZmm {
    zmm(ACC[r])
}

/// `z` with opmask `k` (0: unmasked).
fn with_k(z: AsmRegisterZmm, k: u8) -> AsmRegisterZmm {
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
fn with_kz(z: AsmRegisterZmm, k: u8) -> AsmRegisterZmm {
    if k == 0 { z } else { with_k(z, k).z() }
}

/// The memory operand `m` with opmask `k` (0: unmasked).
fn mem_k(m: AsmMemoryOperand, k: u8) -> AsmMemoryOperand {
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

/// Where a chunk of 16 (or fewer) columns sits: its column count, whether
/// it starts at the left edge column and whether it ends at the right one.
#[derive(Clone, Copy)]
struct Cut {
    /// columns (1..=16)
    m: usize,
    left: bool,
    right: bool,
}

impl Cut {
    /// A whole interior chunk: no masks.
    fn plain(self) -> bool {
        self.m == 16 && !self.left && !self.right
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
    // the float arguments first: the weights overwrite xmm0..xmm2
    a.vbroadcastss(zmm(BIAS), xmm0)?;
    a.vbroadcastss(zmm(S1), xmm1)?;
    a.vbroadcastss(zmm(S2), xmm2)?;
    for t in 0..9 {
        a.vbroadcastss(zmm(W0 + t), dword_ptr(rdx + 4 * t as i32))?;
    }
    a.vxorps(zmm(ZERO), zmm(ZERO), zmm(ZERO))?;
    a.mov(eax, 6.0f32.to_bits())?;
    a.vpbroadcastd(zmm(SIX), eax)?;
    for (r, x) in [(THREE, 3.0f32), (HALF, 0.5), (SIXTH, 1.0 / 6.0), (ONE, 1.0)] {
        a.mov(eax, x.to_bits())?;
        a.vpbroadcastd(zmm(r), eax)?;
    }
    if s.sw == 2 {
        table(&mut a, P_EVEN, |l| 2 * l)?;
        table(&mut a, P_ODD, |l| 2 * l + 1)?;
        // inputs 2, 4, .., 32 from the loads at offsets 2 and 17: lanes
        // 0, 2, .., 14 of the first, then 1, 3, .., 15 of the second
        table(&mut a, P_SHIFT, |l| if l < 8 { 2 * l } else { 2 * l + 1 })?;
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
    a.vzeroupper()?;
    a.ret()?;
    a.assemble(0)
}

/// `rows` output rows from rdi (input), rsi (output), rcx (residual); uses
/// r9..r11 as the column pointers and rax as the chunk counter.
fn group(a: &mut CodeAssembler, s: &Spec, b: Band) -> Result<(), IcedError> {
    a.mov(r9, rdi)?;
    a.mov(r10, rsi)?;
    a.mov(r11, rcx)?;
    // chunks: the first (if it holds the left edge), a loop over the plain
    // ones, the last (if it holds the right edge or is short)
    let n = s.cols.div_ceil(16);
    let cut = |k: usize| Cut {
        m: (s.cols - 16 * k).min(16),
        left: s.left && k == 0,
        right: s.right && k == n - 1,
    };
    let mut k = 0;
    let step = |a: &mut CodeAssembler, c: Cut| -> Result<(), IcedError> {
        if !c.plain() {
            set_chunk_masks(a, s, c)?;
        }
        chunk(a, s, b, c)?;
        a.add(r9, (64 * s.sw) as i32)?;
        a.add(r10, 64)?;
        a.add(r11, 64)
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
/// r11.
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
        // (output row, tap row) pairs that read input row ir
        let targets: Vec<(usize, usize)> = (0..rows)
            .filter_map(|r| ir.checked_sub(r * s.sh).filter(|&i| i < 3).map(|i| (r, i)))
            .filter(|&(r, i)| b.takes(r, i))
            .collect();
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
        match s.act {
            Act::None => {}
            // NaN-preserving like the Cranelift forms: vmaxps/vminps
            // return the second source (the value) when either is NaN
            Act::Relu => a.vmaxps(acc, zmm(ZERO), acc)?,
            Act::Relu6 => {
                a.vmaxps(acc, zmm(ZERO), acc)?;
                a.vminps(acc, zmm(SIX), acc)?;
            }
            Act::DyRelu => {
                a.vmulps(zmm(T), acc, zmm(S1))?;
                a.vmulps(acc, acc, zmm(S2))?;
                a.vmaxps(acc, zmm(T), acc)?;
            }
            // the element-wise kernels' formulas, operation for operation
            Act::HardSwish => {
                a.vaddps(zmm(T), acc, zmm(THREE))?;
                a.vmaxps(zmm(T), zmm(ZERO), zmm(T))?;
                a.vminps(zmm(T), zmm(SIX), zmm(T))?;
                a.vmulps(acc, acc, zmm(T))?;
                a.vdivps(acc, acc, zmm(SIX))?;
            }
            Act::HardSigmoid => {
                a.vfmadd213ps(acc, zmm(SIXTH), zmm(HALF))?;
                a.vmaxps(acc, zmm(ZERO), acc)?;
                a.vminps(acc, zmm(ONE), acc)?;
            }
        }
        if s.residual {
            a.vaddps(with_k(acc, ko), acc, zmmword_ptr(r11 + off))?;
        }
        a.vmovups(mem_k(zmmword_ptr(r10 + off), ko), acc)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_variant_assembles_and_ends_with_vzeroupper_ret() {
        for sw in [1, 2] {
            for act in [
                Act::None,
                Act::Relu,
                Act::Relu6,
                Act::DyRelu,
                Act::HardSwish,
                Act::HardSigmoid,
            ] {
                for (rows, cols) in [(1, 1), (5, 16), (8, 37), (3, 15)] {
                    let s = Spec {
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
                    };
                    let code = assemble(&s).unwrap();
                    assert_eq!(&code[code.len() - 4..], &[0xC5, 0xF8, 0x77, 0xC3], "{s:?}");
                }
            }
        }
    }
}
