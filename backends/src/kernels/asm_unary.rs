//! AVX-512 element-wise transcendentals (`exp`, `sigmoid`, `silu`), and
//! the softmax routines built on the same `exp` (a long row; blocks of 16
//! short rows), the Mobile→Former bridge's `P·X` pass and the
//! Former→Mobile bridge's per-pixel attention, assembled at compile time
//! with iced-x86.
//!
//! Cranelift lowers only 128-bit vectors on x86-64, and an `exp`-based
//! activation in f32x4 runs at about 6.6 GB/s here — compute-bound: SiLU
//! alone was a third of mobilevitv2_050's time. Sixteen lanes per
//! instruction, and AVX-512's `vscalefps` (which applies `2^n` with correct
//! overflow to infinity and underflow through the subnormals in one
//! instruction), make the same algorithm several times faster.
//!
//! The algorithm is `codegen::math::exp`'s: Cody–Waite reduction
//! `x = n·ln2 + r` with `n = round(x·log2 e)`, `|r| ≤ ln2/2`, the Cephes
//! `expf` polynomial for `e^r`, then `2^n` (here by `vscalefps`). Arguments
//! are clamped to [-104, 89] first (beyond them the result is 0 or ∞ anyway),
//! NaN-preserving: `vmaxps`/`vminps` return their second source when either
//! is NaN, and the argument is always that source. `sigmoid(x) = 1/(1 +
//! exp(-x))`, `silu(x) = x/(1 + exp(-x))` with a true division, as the
//! Cranelift forms do. Errors are measured against f64 by
//! `backends/tests/math.rs` with the same documented bounds as the f32x4
//! versions.
//!
//! Calling convention: System V, `fn(src: *const f32, dst: *mut f32, n:
//! usize)` in rdi, rsi, rdx; `src == dst` is allowed (each vector is loaded
//! before it is stored). The last `n mod 16` elements are handled with a
//! masked load and store, so nothing outside `[0, n)` is read or written.
//! Constants are materialised from immediates (no data, no relocations);
//! the function ends with `vzeroupper`.

// The Cephes coefficients as published, rounded to f32 by the compiler.
#![allow(clippy::excessive_precision)]

use iced_x86::code_asm::*;

/// The functions there is an assembled form of.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Func {
    /// `exp(x)`
    Exp,
    /// `1 / (1 + exp(-x))`
    Sigmoid,
    /// `x / (1 + exp(-x))`
    Silu,
}

impl Func {
    /// The assembled form of `op`, if there is one.
    pub fn of(op: kiln_ir::UnaryOp) -> Option<Func> {
        match op {
            kiln_ir::UnaryOp::Exp => Some(Func::Exp),
            kiln_ir::UnaryOp::Sigmoid => Some(Func::Sigmoid),
            kiln_ir::UnaryOp::Silu => Some(Func::Silu),
            _ => None,
        }
    }

    /// The key the assembled code is cached under.
    pub fn key(self) -> String {
        format!("unary {self:?}")
    }
}

/// Cephes `expf` polynomial, highest degree first.
const EXP_POLY: [f32; 6] = [
    1.987_569_150_0e-4,
    1.398_199_950_7e-3,
    8.333_451_907_3e-3,
    4.166_579_589_4e-2,
    1.666_666_545_9e-1,
    5.000_000_120_1e-1,
];
/// `ln 2` split so that `n·LN2_HI` is exact for the `n` that occur.
const LN2_HI: f32 = 0.693_359_375;
const LN2_LO: f32 = -2.121_944_400_5e-4;

// Register use: zmm0 the argument, zmm1..zmm3 temporaries, zmm16.. the
// constants below (broadcast once per call).
const K_LO: usize = 16; // -104
const K_HI: usize = 17; // 89
const K_LOG2E: usize = 18;
const K_LN2_HI: usize = 19;
const K_LN2_LO: usize = 20;
const K_ONE: usize = 21;
const K_POLY: usize = 22; // .. 27
const K_SIGN: usize = 28; // the sign bit
const K_NINF: usize = 29; // -inf (softmax row)

/// `zmm{i}`.
pub(crate) fn zmm(i: usize) -> AsmRegisterZmm {
    const Z: [AsmRegisterZmm; 32] = [
        zmm0, zmm1, zmm2, zmm3, zmm4, zmm5, zmm6, zmm7, zmm8, zmm9, zmm10, zmm11, zmm12, zmm13,
        zmm14, zmm15, zmm16, zmm17, zmm18, zmm19, zmm20, zmm21, zmm22, zmm23, zmm24, zmm25, zmm26,
        zmm27, zmm28, zmm29, zmm30, zmm31,
    ];
    Z[i]
}

/// Broadcasts the f32 `x` into `zmm(r)` through eax.
fn constant(a: &mut CodeAssembler, r: usize, x: f32) -> Result<(), IcedError> {
    a.mov(eax, x.to_bits())?;
    a.vpbroadcastd(zmm(r), eax)
}

/// Broadcasts the constants [`exp`] reads into their registers (once per
/// call of an assembled function).
fn exp_constants(a: &mut CodeAssembler) -> Result<(), IcedError> {
    constant(a, K_LO, -104.0)?;
    constant(a, K_HI, 89.0)?;
    constant(a, K_LOG2E, std::f32::consts::LOG2_E)?;
    constant(a, K_LN2_HI, LN2_HI)?;
    constant(a, K_LN2_LO, LN2_LO)?;
    constant(a, K_ONE, 1.0)?;
    for (i, &c) in EXP_POLY.iter().enumerate() {
        constant(a, K_POLY + i, c)?;
    }
    Ok(())
}

/// `zmm1 = exp(zmm1)`; clobbers zmm2, zmm3.
fn exp(a: &mut CodeAssembler) -> Result<(), IcedError> {
    // clamp, NaN-preserving (the argument is the second source)
    a.vmaxps(zmm1, zmm(K_LO), zmm1)?;
    a.vminps(zmm1, zmm(K_HI), zmm1)?;
    // n = round(x · log2 e)  (imm 0: to nearest even)
    a.vmulps(zmm2, zmm1, zmm(K_LOG2E))?;
    a.vrndscaleps(zmm2, zmm2, 0)?;
    // r = x - n·ln2_hi - n·ln2_lo
    a.vfnmadd231ps(zmm1, zmm2, zmm(K_LN2_HI))?;
    a.vfnmadd231ps(zmm1, zmm2, zmm(K_LN2_LO))?;
    // p(r) by Horner, then e^r = p·r² + r + 1
    a.vmovaps(zmm3, zmm(K_POLY))?;
    for c in 1..EXP_POLY.len() {
        a.vfmadd213ps(zmm3, zmm1, zmm(K_POLY + c))?;
    }
    a.vmulps(zmm3, zmm3, zmm1)?; // p·r
    a.vfmadd213ps(zmm3, zmm1, zmm1)?; // p·r² + r
    a.vaddps(zmm3, zmm3, zmm(K_ONE))?;
    // · 2^n
    a.vscalefps(zmm1, zmm3, zmm2)
}

/// Assembles `f`; the bytes are position-independent.
pub(crate) fn assemble(f: Func) -> Result<Vec<u8>, String> {
    emit(f).map_err(|e| e.to_string())
}

fn emit(f: Func) -> Result<Vec<u8>, IcedError> {
    let mut a = CodeAssembler::new(64)?;
    exp_constants(&mut a)?;
    // sign mask for negation
    a.mov(eax, 0x8000_0000u32)?;
    a.vpbroadcastd(zmm(K_SIGN), eax)?;

    a.mov(r8, rdx)?;
    for_vectors(&mut a, &[rdi, rsi], |a, masked| {
        if masked {
            a.vmovups(zmm0.k1().z(), zmmword_ptr(rdi))?;
        } else {
            a.vmovups(zmm0, zmmword_ptr(rdi))?;
        }
        apply(a, f)?;
        if masked {
            a.vmovups(zmmword_ptr(rsi).k1(), zmm0)
        } else {
            a.vmovups(zmmword_ptr(rsi), zmm0)
        }
    })?;
    a.vzeroupper()?;
    a.ret()?;
    a.assemble(0)
}

/// The key the assembled softmax row is cached under.
pub(crate) const SOFTMAX_ROW_KEY: &str = "softmax row";

/// Assembles a whole softmax over one contiguous row, `fn(src: *const f32,
/// dst: *mut f32, n: usize)` with `n ≥ 1` (System V, as above; `src ==
/// dst` is allowed): the maximum, `dst[i] = exp(src[i] - max)` with their
/// sum, then `dst[i] *= 1/sum`, each pass 16 lanes wide with a masked tail.
///
/// Long rows (Mobile-Former's tokens attending over 56×56 pixels) spent
/// their time in the f32x4 `exp`; this is the same `exp` as
/// [`assemble`]'s, one call per row, so the three passes stay in L1.
/// Lanes past the end are `-inf` for the maximum (merge-masked load) and
/// excluded from the sum (masked add). The sum's order depends only on `n`,
/// so a row's result does not depend on which thread computes it.
pub(crate) fn assemble_softmax_row() -> Result<Vec<u8>, String> {
    emit_softmax_row().map_err(|e| e.to_string())
}

/// The longest row [`assemble_softmax_lanes`] takes (its element columns
/// live in zmm4..zmm10).
pub(crate) const LANES_MAX_LEN: usize = 7;

/// The key the assembled short-row softmax of row length `len` is cached
/// under.
pub(crate) fn softmax_lanes_key(len: usize) -> String {
    format!("softmax lanes {len}")
}

/// Assembles a softmax over `rows ≥ 1` contiguous rows of `len ≤`
/// [`LANES_MAX_LEN`] elements, `fn(src: *const f32, dst: *mut f32, rows:
/// usize)` (System V; `src == dst` allowed), in blocks of 16 rows, one row
/// per lane.
///
/// A block is `len` contiguous vectors; element `j` of its 16 rows is
/// gathered into one zmm by `len` merge-masked `vpermps` reading those
/// vectors from memory, so the maximum, `exp`, sum and reciprocal are one
/// vector operation per element column however short the rows are
/// (Mobile-Former's pixels attend over 3–6 tokens: 16-lane `exp` along a
/// 3-element row would waste 13 lanes). The inverse permutes build the
/// output vectors, stored whole. (`vgatherdps`/`vscatterdps` were no faster
/// than f32x4 lane inserts here.) Permute indices live on the stack, built
/// from immediates on entry. The last `rows mod 16` rows go through a
/// zero-filled stack copy and are copied back with masked stores, so
/// nothing outside the rows is read or written. Each row's arithmetic is
/// the same whatever its lane or block, so results do not depend on how the
/// caller splits the rows.
pub(crate) fn assemble_softmax_lanes(len: usize) -> Result<Vec<u8>, String> {
    if len == 0 || len > LANES_MAX_LEN {
        return Err(format!(
            "softmax lanes: row length {len} not in 1..={LANES_MAX_LEN}"
        ));
    }
    emit_softmax_lanes(len).map_err(|e| e.to_string())
}

/// Lanes `r` of element column `j` that come from block vector `k`.
fn gather_mask(len: usize, j: usize, k: usize) -> u32 {
    (0..16)
        .filter(|r| (r * len + j) / 16 == k)
        .fold(0, |m, r| m | 1 << r)
}

/// Lanes `p` of output vector `k` that come from element column `j`.
fn scatter_mask(len: usize, k: usize, j: usize) -> u32 {
    (0..16)
        .filter(|p| (16 * k + p) % len == j)
        .fold(0, |m, p| m | 1 << p)
}

/// `zmm(dst){mask} = permute(zmm13 indices, src)`, skipping empty masks.
fn permute_masked(
    a: &mut CodeAssembler,
    dst: AsmRegisterZmm,
    mask: u32,
    src: AsmMemoryOperand,
) -> Result<(), IcedError> {
    match mask {
        0 => Ok(()),
        0xFFFF => a.vpermps(dst, zmm13, src),
        m => {
            a.mov(eax, m)?;
            a.kmovw(k1, eax)?;
            a.vpermps(dst.k1(), zmm13, src)
        }
    }
}

/// One block of 16 rows from `src` to `dst` (`len` vectors each). Gather
/// indices at `[rsp + 64·j]`, scatter indices at `[rsp + 64·(len + k)]`;
/// element columns in zmm4.., max in zmm11, sum in zmm12.
fn lanes_block(
    a: &mut CodeAssembler,
    len: usize,
    src: AsmRegister64,
    dst: AsmRegister64,
) -> Result<(), IcedError> {
    let col = |j: usize| zmm(4 + j);
    for j in 0..len {
        a.vmovups(zmm13, zmmword_ptr(rsp + 64 * j as i32))?;
        for k in 0..len {
            let m = gather_mask(len, j, k);
            permute_masked(a, col(j), m, zmmword_ptr(src + 64 * k as i32))?;
        }
    }
    a.vmovaps(zmm11, col(0))?;
    for j in 1..len {
        a.vmaxps(zmm11, zmm11, col(j))?;
    }
    for j in 0..len {
        a.vsubps(zmm1, col(j), zmm11)?;
        exp(a)?;
        a.vmovaps(col(j), zmm1)?;
    }
    a.vmovaps(zmm12, col(0))?;
    for j in 1..len {
        a.vaddps(zmm12, zmm12, col(j))?;
    }
    a.vdivps(zmm12, zmm(K_ONE), zmm12)?;
    for j in 0..len {
        a.vmulps(col(j), col(j), zmm12)?;
    }
    for k in 0..len {
        a.vmovups(zmm13, zmmword_ptr(rsp + 64 * (len + k) as i32))?;
        for j in 0..len {
            let m = scatter_mask(len, k, j);
            match m {
                0 => {}
                0xFFFF => a.vpermps(zmm14, zmm13, col(j))?,
                m => {
                    a.mov(eax, m)?;
                    a.kmovw(k1, eax)?;
                    a.vpermps(zmm14.k1(), zmm13, col(j))?;
                }
            }
        }
        a.vmovups(zmmword_ptr(dst + 64 * k as i32), zmm14)?;
    }
    Ok(())
}

/// `k1` = the lanes of vector `k` among the first `eax` elements (`r11d`
/// is 0); clobbers ecx, r8d.
fn count_mask(a: &mut CodeAssembler, k: usize) -> Result<(), IcedError> {
    a.mov(ecx, eax)?;
    a.sub(ecx, 16 * k as i32)?;
    a.cmovl(ecx, r11d)?;
    a.mov(r8d, 0xFFFFu32)?;
    a.bzhi(r8d, r8d, ecx)?;
    a.kmovw(k1, r8d)
}

fn emit_softmax_lanes(len: usize) -> Result<Vec<u8>, IcedError> {
    let mut a = CodeAssembler::new(64)?;
    exp_constants(&mut a)?;
    // stack frame (a leaf: no alignment needed): gather indices, scatter
    // indices, tail input copy, tail output copy, `len` vectors each
    let v = 64 * len as i32;
    a.sub(rsp, 4 * v)?;
    for j in 0..len {
        for r in 0..16 {
            let at = 64 * j as i32 + 4 * r as i32;
            a.mov(dword_ptr(rsp + at), ((r * len + j) % 16) as u32)?;
        }
    }
    for k in 0..len {
        for p in 0..16 {
            let at = v + 64 * k as i32 + 4 * p as i32;
            a.mov(dword_ptr(rsp + at), ((16 * k + p) / len) as u32)?;
        }
    }

    let mut full = a.create_label();
    let mut tail = a.create_label();
    let mut done = a.create_label();
    a.set_label(&mut full)?;
    a.cmp(rdx, 16)?;
    a.jb(tail)?;
    lanes_block(&mut a, len, rdi, rsi)?;
    a.add(rdi, v)?;
    a.add(rsi, v)?;
    a.sub(rdx, 16)?;
    a.jmp(full)?;
    a.set_label(&mut tail)?;
    a.test(rdx, rdx)?;
    a.jz(done)?;
    // the last rows·len elements, through zero-filled copies on the stack
    a.imul_3(eax, edx, len as i32)?;
    a.xor(r11d, r11d)?;
    for k in 0..len {
        count_mask(&mut a, k)?;
        a.vmovups(zmm13.k1().z(), zmmword_ptr(rdi + 64 * k as i32))?;
        a.vmovups(zmmword_ptr(rsp + 2 * v + 64 * k as i32), zmm13)?;
    }
    a.lea(r9, ptr(rsp + 2 * v))?;
    a.lea(r10, ptr(rsp + 3 * v))?;
    lanes_block(&mut a, len, r9, r10)?;
    a.imul_3(eax, edx, len as i32)?;
    for k in 0..len {
        count_mask(&mut a, k)?;
        a.vmovups(zmm13, zmmword_ptr(rsp + 3 * v + 64 * k as i32))?;
        a.vmovups(zmmword_ptr(rsi + 64 * k as i32).k1(), zmm13)?;
    }
    a.set_label(&mut done)?;
    a.add(rsp, 4 * v)?;
    a.vzeroupper()?;
    a.ret()?;
    a.assemble(0)
}

/// Walks `r8` elements 16 at a time, stepping every register of `ptrs` by
/// one vector (64 bytes): `body(a, false)` per whole vector, then, if
/// `r8 mod 16` elements remain, `body(a, true)` once with `k1` holding
/// those lanes (masked loads and stores keep everything inside `[0, r8)`).
/// Clobbers r8, eax and k1.
fn for_vectors(
    a: &mut CodeAssembler,
    ptrs: &[AsmRegister64],
    mut body: impl FnMut(&mut CodeAssembler, bool) -> Result<(), IcedError>,
) -> Result<(), IcedError> {
    let mut full = a.create_label();
    let mut tail = a.create_label();
    let mut done = a.create_label();
    a.set_label(&mut full)?;
    a.cmp(r8, 16)?;
    a.jb(tail)?;
    body(a, false)?;
    for &p in ptrs {
        a.add(p, 64)?;
    }
    a.sub(r8, 16)?;
    a.jmp(full)?;
    a.set_label(&mut tail)?;
    a.test(r8, r8)?;
    a.jz(done)?;
    tail_mask(a)?;
    body(a, true)?;
    a.set_label(&mut done)
}

/// `k1` = the low `r8` lanes (`r8 < 16`).
fn tail_mask(a: &mut CodeAssembler) -> Result<(), IcedError> {
    a.mov(eax, 1u32)?;
    a.shlx(eax, eax, r8d)?;
    a.dec(eax)?;
    a.kmovw(k1, eax)
}

/// Reduces `zmm4` to its lane 0 with `op` (`vmaxps` or `vaddps`) in a fixed
/// order, then broadcasts the result to every lane of `zmm4`.
fn horizontal(
    a: &mut CodeAssembler,
    op: fn(
        &mut CodeAssembler,
        AsmRegisterXmm,
        AsmRegisterXmm,
        AsmRegisterXmm,
    ) -> Result<(), IcedError>,
    op_y: fn(
        &mut CodeAssembler,
        AsmRegisterYmm,
        AsmRegisterYmm,
        AsmRegisterYmm,
    ) -> Result<(), IcedError>,
) -> Result<(), IcedError> {
    a.vextractf64x4(ymm1, zmm4, 1)?;
    op_y(a, ymm4, ymm4, ymm1)?;
    a.vextractf128(xmm1, ymm4, 1)?;
    op(a, xmm4, xmm4, xmm1)?;
    a.vpermilps(xmm1, xmm4, 0x4E)?;
    op(a, xmm4, xmm4, xmm1)?;
    a.vpermilps(xmm1, xmm4, 0xB1)?;
    op(a, xmm4, xmm4, xmm1)?;
    a.vbroadcastss(zmm4, xmm4)
}

fn emit_softmax_row() -> Result<Vec<u8>, IcedError> {
    let mut a = CodeAssembler::new(64)?;
    exp_constants(&mut a)?;
    constant(&mut a, K_NINF, f32::NEG_INFINITY)?;

    // pass 1: zmm4 = max over the row, in every lane
    a.mov(rcx, rdi)?;
    a.mov(r8, rdx)?;
    a.vmovaps(zmm4, zmm(K_NINF))?;
    for_vectors(&mut a, &[rcx], |a, masked| {
        if masked {
            // lanes past the row stay -inf
            a.vmovaps(zmm1, zmm(K_NINF))?;
            a.vmovups(zmm1.k1(), zmmword_ptr(rcx))?;
            a.vmaxps(zmm4, zmm4, zmm1)
        } else {
            a.vmaxps(zmm4, zmm4, zmmword_ptr(rcx))
        }
    })?;
    horizontal(&mut a, CodeAssembler::vmaxps, CodeAssembler::vmaxps)?;
    a.vmovaps(zmm5, zmm4)?;

    // pass 2: dst = exp(src - max), zmm4 = Σ dst
    a.mov(rcx, rdi)?;
    a.mov(r9, rsi)?;
    a.mov(r8, rdx)?;
    a.vxorps(zmm4, zmm4, zmm4)?;
    for_vectors(&mut a, &[rcx, r9], |a, masked| {
        if masked {
            a.vmovups(zmm1.k1().z(), zmmword_ptr(rcx))?;
        } else {
            a.vmovups(zmm1, zmmword_ptr(rcx))?;
        }
        a.vsubps(zmm1, zmm1, zmm5)?;
        exp(a)?;
        if masked {
            a.vmovups(zmmword_ptr(r9).k1(), zmm1)?;
            a.vaddps(zmm4.k1(), zmm4, zmm1)
        } else {
            a.vmovups(zmmword_ptr(r9), zmm1)?;
            a.vaddps(zmm4, zmm4, zmm1)
        }
    })?;
    horizontal(&mut a, CodeAssembler::vaddps, CodeAssembler::vaddps)?;
    // one division, then multiplies (as the Cranelift form)
    a.vdivps(zmm4, zmm(K_ONE), zmm4)?;

    // pass 3: dst *= 1/sum
    a.mov(r9, rsi)?;
    a.mov(r8, rdx)?;
    for_vectors(&mut a, &[r9], |a, masked| {
        if masked {
            a.vmovups(zmm1.k1().z(), zmmword_ptr(r9))?;
            a.vmulps(zmm1, zmm1, zmm4)?;
            a.vmovups(zmmword_ptr(r9).k1(), zmm1)
        } else {
            a.vmulps(zmm1, zmm4, zmmword_ptr(r9))?;
            a.vmovups(zmmword_ptr(r9), zmm1)
        }
    })?;
    a.vzeroupper()?;
    a.ret()?;
    a.assemble(0)
}

/// The most tokens [`assemble_m2f_px`] takes: one zmm accumulator per
/// token and channel of a block, zmm4..zmm27.
pub(crate) const M2F_PX_MAX_TOKENS: usize = 12;

/// Channels per call of [`assemble_m2f_px`] for `m` tokens: up to four,
/// `cb·m` accumulators at most 24.
pub(crate) fn m2f_px_block(m: usize) -> usize {
    (24 / m.max(1)).clamp(1, 4)
}

/// Whether [`assemble_m2f_px`] takes these dimensions: 1 to
/// [`M2F_PX_MAX_TOKENS`] tokens, at least one pixel, every row and gate
/// offset an `i32` displacement.
pub(crate) fn m2f_px_fits(m: usize, l: usize, c: usize) -> bool {
    let disp = |x: usize| {
        x.checked_mul(4 * (m + 4))
            .is_some_and(|b| i32::try_from(b).is_ok())
    };
    (1..=M2F_PX_MAX_TOKENS).contains(&m) && l > 0 && disp(l) && disp(c)
}

/// The key the assembled Mobile→Former `P·X` pass with these baked-in
/// dimensions is cached under.
pub(crate) fn m2f_px_key(m: usize, l: usize, c: usize, cb: usize, twice: bool) -> String {
    format!("m2f px m={m} l={l} c={c} cb={cb} twice={twice}")
}

/// Assembles the Mobile→Former bridge's `P·X` pass for `cb` consecutive
/// channels, `fn(x: *const f32, p: *const f32, g: *const f32, o: *mut
/// f32)` (System V: rdi, rsi, rdx, rcx): for every channel `i < cb` and
/// token `t < m`, `o[t·c + i] = (Σ_{j<l} p[t·l + j]·x[i·l + j]) · g[t·c +
/// i]`, the gate doubled first when `twice` (exact). `x` is the first
/// channel's row of `l` pixels, `p` the `m` rows of softmax weights.
///
/// 16 pixels per step, one accumulator per (channel, token); the last `l
/// mod 16` pixels by zero-masked loads (nothing past a row is read). The
/// `m` weight rows are read from L2 once per block of channels: one
/// channel per pass left it L2-bound (the f32x4 form in `attention.rs`,
/// one channel per pass, is bound by its instruction count). Each sum is
/// reduced in a fixed order, so results do not depend on the thread.
pub(crate) fn assemble_m2f_px(
    m: usize,
    l: usize,
    c: usize,
    cb: usize,
    twice: bool,
) -> Result<Vec<u8>, String> {
    if !m2f_px_fits(m, l, c) || cb == 0 || cb > m2f_px_block(m) {
        return Err(format!(
            "no assembled m2f P·X pass for {m} tokens, {l} pixels, {c} channels, blocks of {cb}"
        ));
    }
    emit_m2f_px(m, l, c, cb, twice).map_err(|e| e.to_string())
}

fn emit_m2f_px(m: usize, l: usize, c: usize, cb: usize, twice: bool) -> Result<Vec<u8>, IcedError> {
    // accumulator of (channel i, token t); x rows in zmm28..zmm31
    let acc = |i: usize, t: usize| zmm(4 + i * m + t);
    let xr = |i: usize| zmm(28 + i);
    let mut a = CodeAssembler::new(64)?;
    for i in 0..cb {
        for t in 0..m {
            a.vxorps(acc(i, t), acc(i, t), acc(i, t))?;
        }
    }
    // row t of p and row i of x are 4·t·l and 4·i·l bytes past the
    // walking pointers
    let row = |t: usize| (4 * t * l) as i32;
    a.mov(r8, l as u64)?;
    for_vectors(&mut a, &[rdi, rsi], |a, masked| {
        for i in 0..cb {
            if masked {
                a.vmovups(xr(i).k1().z(), zmmword_ptr(rdi + row(i)))?;
            } else {
                a.vmovups(xr(i), zmmword_ptr(rdi + row(i)))?;
            }
        }
        for t in 0..m {
            if masked {
                a.vmovups(zmm1.k1().z(), zmmword_ptr(rsi + row(t)))?;
                for i in 0..cb {
                    a.vfmadd231ps(acc(i, t), xr(i), zmm1)?;
                }
            } else {
                for i in 0..cb {
                    a.vfmadd231ps(acc(i, t), xr(i), zmmword_ptr(rsi + row(t)))?;
                }
            }
        }
        Ok(())
    })?;
    for i in 0..cb {
        for t in 0..m {
            // halves, quarters, then pairs: a fixed order (the upper half
            // of zmm1 after the first add is never read)
            a.vextractf64x4(ymm1, acc(i, t), 1)?;
            a.vaddps(zmm1, zmm1, acc(i, t))?;
            a.vextractf128(xmm2, ymm1, 1)?;
            a.vaddps(xmm1, xmm1, xmm2)?;
            a.vpermilps(xmm2, xmm1, 0x4E)?;
            a.vaddps(xmm1, xmm1, xmm2)?;
            a.vpermilps(xmm2, xmm1, 0xB1)?;
            a.vaddss(xmm1, xmm1, xmm2)?;
            let at = (4 * (t * c + i)) as i32;
            a.vmovss(xmm2, dword_ptr(rdx + at))?;
            if twice {
                a.vaddss(xmm2, xmm2, xmm2)?;
            }
            a.vmulss(xmm1, xmm1, xmm2)?;
            a.vmovss(dword_ptr(rcx + at), xmm1)?;
        }
    }
    a.vzeroupper()?;
    a.ret()?;
    a.assemble(0)
}

/// The most tokens [`assemble_f2m_run`] takes: one zmm score per token,
/// zmm4..zmm15.
pub(crate) const F2M_MAX_TOKENS: usize = 12;

/// Whether [`assemble_f2m_run`] takes these dimensions: 1 to
/// [`F2M_MAX_TOKENS`] tokens, at least one channel per head, channel and
/// token strides that fit an `i32` displacement.
pub(crate) fn f2m_fits(m: usize, hc: usize, l: usize, c: usize) -> bool {
    let disp = |x: usize| {
        x.checked_mul(4 * m)
            .is_some_and(|b| i32::try_from(b).is_ok())
    };
    (1..=F2M_MAX_TOKENS).contains(&m) && hc > 0 && disp(l) && disp(c)
}

/// The key the assembled Former→Mobile run with these baked-in dimensions
/// is cached under.
pub(crate) fn f2m_run_key(m: usize, hc: usize, l: usize, c: usize, scale: f32) -> String {
    format!(
        "f2m run m={m} hc={hc} l={l} c={c} scale={:#x}",
        scale.to_bits()
    )
}

/// Assembles the Former→Mobile bridge's per-pixel attention over a run of
/// pixels of one (image, head): `fn(y: *const f32, o: *mut f32, k: *const
/// f32, v: *const f32, n: usize)` (System V: rdi, rsi, rdx, rcx, r8). For
/// each of the `n` pixels `p` (channel `ch`'s pixel at `y[ch·l + p]`, the
/// head's `hc` channels): scores `s_t = scale · Σ_ch k[t·c + ch]·y[ch·l +
/// p]` for the `m` tokens, `a = softmax(s)`, and `o[ch·l + p] = y[ch·l +
/// p] + Σ_t a_t·v[t·c + ch]`. `k` and `v` point at the head's first channel
/// of the projected `[M, C]` tokens (read by embedded broadcast, so no
/// splatted copies).
///
/// 16 pixels per step, the last `n mod 16` masked: the `m` scores are
/// zmm registers, their softmax runs across them (the same `exp` as
/// [`assemble`], one division), then the values pass. This replaces f32x4
/// code bound by its instruction count (4 pixels per `exp` and FMA).
pub(crate) fn assemble_f2m_run(
    m: usize,
    hc: usize,
    l: usize,
    c: usize,
    scale: f32,
) -> Result<Vec<u8>, String> {
    if !f2m_fits(m, hc, l, c) {
        return Err(format!(
            "no assembled f2m run for {m} tokens, {hc} channels per head, {l} pixels, {c} channels"
        ));
    }
    emit_f2m_run(m, hc, l, c, scale).map_err(|e| e.to_string())
}

fn emit_f2m_run(m: usize, hc: usize, l: usize, c: usize, scale: f32) -> Result<Vec<u8>, IcedError> {
    const K_SCALE: usize = 28;
    const MAX: usize = 30;
    const SUM: usize = 31;
    let s = |t: usize| zmm(4 + t);
    let tok = |t: usize| (4 * t * c) as i32;
    let mut a = CodeAssembler::new(64)?;
    exp_constants(&mut a)?;
    constant(&mut a, K_SCALE, scale)?;
    for_vectors(&mut a, &[rdi, rsi], |a, masked| {
        let load_y = |a: &mut CodeAssembler, src: AsmRegister64| {
            if masked {
                a.vmovups(zmm0.k1().z(), zmmword_ptr(src))
            } else {
                a.vmovups(zmm0, zmmword_ptr(src))
            }
        };
        // scores over the head's channels
        for t in 0..m {
            a.vxorps(s(t), s(t), s(t))?;
        }
        a.mov(r9, rdi)?;
        a.mov(r10, rdx)?;
        a.mov(r11, hc as u64)?;
        let mut scores = a.create_label();
        a.set_label(&mut scores)?;
        load_y(a, r9)?;
        for t in 0..m {
            a.vfmadd231ps(s(t), zmm0, dword_bcst(r10 + tok(t)))?;
        }
        a.add(r9, (4 * l) as i32)?;
        a.add(r10, 4)?;
        a.dec(r11)?;
        a.jnz(scores)?;
        // softmax across the score registers
        for t in 0..m {
            a.vmulps(s(t), s(t), zmm(K_SCALE))?;
        }
        a.vmovaps(zmm(MAX), s(0))?;
        for t in 1..m {
            a.vmaxps(zmm(MAX), zmm(MAX), s(t))?;
        }
        a.vxorps(zmm(SUM), zmm(SUM), zmm(SUM))?;
        for t in 0..m {
            a.vsubps(zmm1, s(t), zmm(MAX))?;
            exp(a)?;
            a.vmovaps(s(t), zmm1)?;
            a.vaddps(zmm(SUM), zmm(SUM), zmm1)?;
        }
        a.vdivps(zmm(SUM), zmm(K_ONE), zmm(SUM))?;
        for t in 0..m {
            a.vmulps(s(t), s(t), zmm(SUM))?;
        }
        // y + Σ_t a_t·v_t, channel by channel
        a.mov(r9, rdi)?;
        a.mov(rax, rsi)?;
        a.mov(r10, rcx)?;
        a.mov(r11, hc as u64)?;
        let mut values = a.create_label();
        a.set_label(&mut values)?;
        load_y(a, r9)?;
        for t in 0..m {
            a.vfmadd231ps(zmm0, s(t), dword_bcst(r10 + tok(t)))?;
        }
        if masked {
            a.vmovups(zmmword_ptr(rax).k1(), zmm0)?;
        } else {
            a.vmovups(zmmword_ptr(rax), zmm0)?;
        }
        a.add(r9, (4 * l) as i32)?;
        a.add(rax, (4 * l) as i32)?;
        a.add(r10, 4)?;
        a.dec(r11)?;
        a.jnz(values)
    })?;
    a.vzeroupper()?;
    a.ret()?;
    a.assemble(0)
}

/// `zmm0 = f(zmm0)`; clobbers zmm1..zmm3.
fn apply(a: &mut CodeAssembler, f: Func) -> Result<(), IcedError> {
    match f {
        Func::Exp => {
            a.vmovaps(zmm1, zmm0)?;
            exp(a)?;
            a.vmovaps(zmm0, zmm1)
        }
        Func::Sigmoid | Func::Silu => {
            // exp(-x): negation by the sign bit is exact and keeps NaN
            a.vxorps(zmm1, zmm0, zmm(K_SIGN))?;
            exp(a)?;
            a.vaddps(zmm1, zmm1, zmm(K_ONE))?;
            if f == Func::Silu {
                a.vdivps(zmm0, zmm0, zmm1)
            } else {
                a.vdivps(zmm0, zmm(K_ONE), zmm1)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_function_assembles_and_ends_with_vzeroupper_ret() {
        for f in [Func::Exp, Func::Sigmoid, Func::Silu] {
            let code = assemble(f).unwrap();
            assert_eq!(&code[code.len() - 4..], &[0xC5, 0xF8, 0x77, 0xC3], "{f:?}");
        }
        let code = assemble_softmax_row().unwrap();
        assert_eq!(&code[code.len() - 4..], &[0xC5, 0xF8, 0x77, 0xC3]);
        for len in 1..=LANES_MAX_LEN {
            let code = assemble_softmax_lanes(len).unwrap();
            assert_eq!(&code[code.len() - 4..], &[0xC5, 0xF8, 0x77, 0xC3], "{len}");
        }
        assert!(assemble_softmax_lanes(LANES_MAX_LEN + 1).is_err());
        for (m, l) in [(1, 1), (6, 49), (12, 3136)] {
            for cb in 1..=m2f_px_block(m) {
                let code = assemble_m2f_px(m, l, 64, cb, m == 6).unwrap();
                assert_eq!(
                    &code[code.len() - 4..],
                    &[0xC5, 0xF8, 0x77, 0xC3],
                    "{m} {l}"
                );
            }
        }
        assert!(assemble_m2f_px(M2F_PX_MAX_TOKENS + 1, 16, 8, 1, false).is_err());
        assert!(assemble_m2f_px(6, 16, 8, 5, false).is_err());
        for (m, hc) in [(1, 1), (6, 16), (12, 13)] {
            let code = assemble_f2m_run(m, hc, 3136, 96, 0.25).unwrap();
            assert_eq!(
                &code[code.len() - 4..],
                &[0xC5, 0xF8, 0x77, 0xC3],
                "{m} {hc}"
            );
        }
        assert!(assemble_f2m_run(F2M_MAX_TOKENS + 1, 4, 16, 8, 1.0).is_err());
    }
}
