//! Winograd F(4×4, 3×3) transforms for dense 3×3 stride-1 convolutions,
//! assembled at compile time with iced-x86 for AVX-512; `kernels/winograd.rs`
//! runs them around one batched GEMM (docs/kernels.md, "Winograd").
//!
//! A 3×3 conv computed as 4×4 output tiles needs 36 multiplications per
//! tile and channel pair instead of 144: each 6×6 input tile `d` becomes
//! `V = Bᵀ·d·B`, each 3×3 filter `g` becomes `U = G·g·Gᵀ` (at compile time,
//! in f64), the 36 positions `ξ` of the transformed tiles are 36 GEMMs
//! `M[ξ] = U[ξ]·V[ξ]` over the channels, and `Y = Aᵀ·M·A` is the output
//! tile. The interpolation points are 0, ±1, ±2 and ∞ (Lavin & Gray,
//! "Fast Algorithms for Convolutional Neural Networks", 2016).
//!
//! Both transforms work on 16 tiles at once, one tile per lane: along the
//! tile row's input rows (the column pass) on contiguous vectors of
//! pixels, then across each tile's six columns (the row pass) on vectors
//! of tiles, which needs the pixels of every 4th column in one vector: a
//! stride-4 deinterleave of 64 pixels by eight `vpermt2ps`, the two
//! columns that overlap the next tile by a `valignd`. The output side
//! interleaves back with eight more. Intermediate rows go through a stack
//! frame; masked loads (zeroing, fault-suppressing) stand for the padding
//! columns, and rows in the padding are a zero register, so nothing
//! outside the input is read. Masked stores write exactly the tiles and
//! output pixels that exist.
//!
//! - input transform, System V `fn(src, dst)`: `src` is input row
//!   `4·ty - pt` of one channel's plane (only rows inside the input,
//!   [`InSpec::lo`]..[`InSpec::hi`], are read), `dst` the tile row's first
//!   tile at position 0 in the transformed input; position `ξ` is
//!   [`InSpec::stride`] elements further.
//! - output transform, System V `fn(m, dst, res, bias)`: `m` the tile
//!   row's first tile at position 0 in the GEMM's product (positions
//!   [`OutSpec::stride`] apart), `dst` and `res` output row `4·ty` of one
//!   channel's plane (`res` read only with [`OutSpec::res`]), `bias` in
//!   xmm0; writes `act(Y + bias) + res` for the tile row's
//!   [`OutSpec::rows`] rows.
//!
//! Both end with `vzeroupper` and keep their frame below the stack
//! pointer they restore.

use iced_x86::code_asm::*;

use super::dw_plane::{Act, ActRegs, act_consts_zmm, act_zmm, assembles};
use super::vector::zmm;

/// Output tile side.
pub(crate) const TILE: usize = 4;
/// Transformed positions per tile: the number of GEMMs.
pub(crate) const POSITIONS: usize = 36;
/// Tiles per vector.
const LANES: usize = 16;

/// `Bᵀ`: input tile `d` (6×6) to `V = Bᵀ·d·B` (the emitters compute it as
/// the factored sums of `bt`; the contract test uses the matrix).
#[cfg(test)]
pub(crate) const BT: [[f64; 6]; 6] = [
    [4.0, 0.0, -5.0, 0.0, 1.0, 0.0],
    [0.0, -4.0, -4.0, 1.0, 1.0, 0.0],
    [0.0, 4.0, -4.0, -1.0, 1.0, 0.0],
    [0.0, -2.0, -1.0, 2.0, 1.0, 0.0],
    [0.0, 2.0, -1.0, -2.0, 1.0, 0.0],
    [0.0, 4.0, 0.0, -5.0, 0.0, 1.0],
];

/// `G`: filter `g` (3×3) to `U = G·g·Gᵀ`.
pub(crate) const G: [[f64; 3]; 6] = [
    [1.0 / 4.0, 0.0, 0.0],
    [-1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0],
    [-1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0],
    [1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0],
    [1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0],
    [0.0, 0.0, 1.0],
];

/// `Aᵀ`: product tile `M` (6×6) to the output tile `Y = Aᵀ·M·A` (4×4), as
/// the factored sums of `at` in the emitters.
#[cfg(test)]
pub(crate) const AT: [[f64; 6]; 4] = [
    [1.0, 1.0, 1.0, 1.0, 1.0, 0.0],
    [0.0, 1.0, -1.0, 2.0, -2.0, 0.0],
    [0.0, 1.0, 1.0, 4.0, 4.0, 0.0],
    [0.0, 1.0, -1.0, 8.0, -8.0, 1.0],
];

/// The transformed filters `U[ξ][o][c] = (G·w[o][c]·Gᵀ)[a][b]`, `ξ = 6a + b`,
/// of weights `w[o][c][3][3]`: computed in f64 and rounded once.
pub(crate) fn transform_weights(w: &[f32], o: usize, c: usize) -> Vec<f32> {
    let oc = o * c;
    let mut u = vec![0f32; POSITIONS * oc];
    for (f, g) in w.chunks_exact(9).take(oc).enumerate() {
        // G·g, 6×3
        let mut t = [[0f64; 3]; 6];
        for (ta, ga) in t.iter_mut().zip(&G) {
            for (j, tj) in ta.iter_mut().enumerate() {
                *tj = (0..3).map(|i| ga[i] * f64::from(g[3 * i + j])).sum();
            }
        }
        for (a, ta) in t.iter().enumerate() {
            for (b, gb) in G.iter().enumerate() {
                let v: f64 = (0..3).map(|j| ta[j] * gb[j]).sum();
                u[(6 * a + b) * oc + f] = v as f32;
            }
        }
    }
    u
}

/// One tile row's input transform.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct InSpec {
    /// input row length
    pub w: usize,
    /// tiles across the row
    pub tiles: usize,
    /// left padding (columns)
    pub pl: usize,
    /// the first of the tile row's six input rows inside the input
    pub lo: usize,
    /// one past the last of them
    pub hi: usize,
    /// elements between consecutive positions in the destination
    pub stride: usize,
}

/// One tile row's output transform and epilogue.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct OutSpec {
    /// output row length
    pub wo: usize,
    /// tiles across the row
    pub tiles: usize,
    /// output rows written (1..=4: the last tile row may be cut)
    pub rows: usize,
    /// elements between consecutive positions in the source
    pub stride: usize,
    /// activation, after the bias
    pub act: Act,
    /// whether a residual laid out like the output is added last
    pub res: bool,
}

/// Whether byte offsets up to `x` elements fit the 32-bit displacements.
fn near(x: usize) -> bool {
    x.checked_mul(4).is_some_and(|b| b < i32::MAX as usize / 2)
}

impl InSpec {
    /// Whether the function is assembled.
    pub fn fits(&self) -> bool {
        self.tiles > 0
            && self.lo <= self.hi
            && self.hi <= 6
            && self.pl <= 2
            && near(POSITIONS * self.stride + self.tiles * TILE + LANES)
            && near(6 * self.w + self.tiles * TILE + 2 * LANES)
    }

    /// A short name for kernel plans.
    pub fn label(&self) -> String {
        format!(
            "winograd4x3 input w{} tiles{} pl{} rows{}..{} stride{}",
            self.w, self.tiles, self.pl, self.lo, self.hi, self.stride
        )
    }
}

impl OutSpec {
    /// Whether the function is assembled: an activation the AVX-512
    /// epilogue applies (not the dynamic ReLU, whose slopes it lacks).
    pub fn fits(&self) -> bool {
        self.tiles > 0
            && (1..=TILE).contains(&self.rows)
            && self.wo > TILE * (self.tiles - 1)
            && self.wo <= TILE * self.tiles
            && assembles(self.act)
            && self.act != Act::DyRelu
            && near(POSITIONS * self.stride + self.tiles * TILE + LANES)
            && near(TILE * self.wo + LANES)
    }

    /// A short name for kernel plans.
    pub fn label(&self) -> String {
        format!(
            "winograd4x3 output wo{} tiles{} rows{} stride{}{}{}",
            self.wo,
            self.tiles,
            self.rows,
            self.stride,
            match self.act {
                Act::None => String::new(),
                a => format!(" {}", a.name()),
            },
            if self.res { " +res" } else { "" }
        )
    }
}

/// The input transform's signature, `fn(src, dst)` (System V).
pub(crate) fn in_signature() -> cranelift_codegen::ir::Signature {
    use cranelift_codegen::ir::{AbiParam, Signature, types::I64};
    let mut sig = Signature::new(cranelift_codegen::isa::CallConv::SystemV);
    sig.params.push(AbiParam::new(I64));
    sig.params.push(AbiParam::new(I64));
    sig
}

/// The output transform's signature, `fn(m, dst, res, bias)` (System V).
pub(crate) fn out_signature() -> cranelift_codegen::ir::Signature {
    use cranelift_codegen::ir::{AbiParam, Signature, types::F32, types::I64};
    let mut sig = Signature::new(cranelift_codegen::isa::CallConv::SystemV);
    for _ in 0..3 {
        sig.params.push(AbiParam::new(I64));
    }
    sig.params.push(AbiParam::new(F32));
    sig
}

/// Assembles the input transform `s`; the bytes are position-independent.
pub(crate) fn assemble_in(s: &InSpec) -> Result<Vec<u8>, String> {
    if !s.fits() {
        return Err(format!("winograd input transform not assembled: {s:?}"));
    }
    emit_in(s).map_err(|e| e.to_string())
}

/// Assembles the output transform `s`; the bytes are position-independent.
pub(crate) fn assemble_out(s: &OutSpec) -> Result<Vec<u8>, String> {
    if !s.fits() {
        return Err(format!("winograd output transform not assembled: {s:?}"));
    }
    emit_out(s).map_err(|e| e.to_string())
}

// Constants: 2 and 4 in both transforms; zmm26 holds 5 in the input
// transform (`Bᵀ`) and 8 in the output transform (`Aᵀ`), which never meet.
const C2: usize = 24;
const C4: usize = 25;
const C5: usize = 26;
const C8: usize = 26;
const ZERO: usize = 31;

/// Floats per staged row of the input transform: 64 columns of 16 tiles
/// and the two the last tile shares with the next chunk, in whole vectors.
const ROW: usize = 80;

/// `[idx][16]` permutation tables: the input's deinterleave (residues 0|1
/// and 2|3 of 32 lanes, then the low and high halves of two vectors), and
/// the output's interleave (pairs, then pairs of pairs).
fn tables(out: bool) -> Vec<u32> {
    let mut t = Vec::with_capacity(64);
    if out {
        t.extend((0..8).flat_map(|i| [i, 16 + i]));
        t.extend((8..16).flat_map(|i| [i, 16 + i]));
        t.extend((0..4).flat_map(|i| [2 * i, 2 * i + 1, 16 + 2 * i, 17 + 2 * i]));
        t.extend((4..8).flat_map(|i| [2 * i, 2 * i + 1, 16 + 2 * i, 17 + 2 * i]));
    } else {
        t.extend((0..8).map(|i| 4 * i).chain((0..8).map(|i| 4 * i + 1)));
        t.extend((0..8).map(|i| 4 * i + 2).chain((0..8).map(|i| 4 * i + 3)));
        t.extend((0..8).chain(16..24));
        t.extend((8..16).chain(24..32));
    }
    t
}

/// Loads the four permutation tables at `data` into `regs`; uses rax.
fn load_tables(a: &mut CodeAssembler, data: CodeLabel, regs: [usize; 4]) -> Result<(), IcedError> {
    a.lea(rax, ptr(data))?;
    for (i, r) in regs.into_iter().enumerate() {
        a.vmovups(zmm(r), zmmword_ptr(rax + (64 * i) as i32))?;
    }
    Ok(())
}

/// `zmm(r) = x` broadcast; uses eax.
fn splat(a: &mut CodeAssembler, r: usize, x: f32) -> Result<(), IcedError> {
    a.mov(eax, x.to_bits())?;
    a.vpbroadcastd(zmm(r), eax)
}

/// Sets opmask `k` (1..=3) to the low `bits` of a 16-bit mask; uses eax.
fn mask(a: &mut CodeAssembler, k: u8, bits: u32) -> Result<(), IcedError> {
    a.mov(eax, bits)?;
    match k {
        1 => a.kmovw(k1, eax),
        2 => a.kmovw(k2, eax),
        _ => a.kmovw(k3, eax),
    }
}

/// `z` under opmask `k` (0: none), zeroing.
fn kz(z: AsmRegisterZmm, k: u8) -> AsmRegisterZmm {
    match k {
        0 => z,
        1 => z.k1().z(),
        2 => z.k2().z(),
        _ => z.k3().z(),
    }
}

/// `m` under opmask `k` (0: none).
fn km(m: AsmMemoryOperand, k: u8) -> AsmMemoryOperand {
    match k {
        0 => m,
        1 => m.k1(),
        2 => m.k2(),
        _ => m.k3(),
    }
}

/// The six rows of `Bᵀ·x` from `x` (registers; a zero register for rows in
/// the padding) into `out`; `t` two temporaries.
fn bt(
    a: &mut CodeAssembler,
    x: [usize; 6],
    out: [usize; 6],
    t: [usize; 2],
) -> Result<(), IcedError> {
    let [x0, x1, x2, x3, x4, x5] = x.map(zmm);
    let [o0, o1, o2, o3, o4, o5] = out.map(zmm);
    let (t0, t1) = (zmm(t[0]), zmm(t[1]));
    // 4·x0 - 5·x2 + x4
    a.vmovaps(o0, x4)?;
    a.vfnmadd231ps(o0, x2, zmm(C5))?;
    a.vfmadd231ps(o0, x0, zmm(C4))?;
    // (x4 - 4·x2) ± (x3 - 4·x1)
    a.vmovaps(t0, x4)?;
    a.vfnmadd231ps(t0, x2, zmm(C4))?;
    a.vmovaps(t1, x3)?;
    a.vfnmadd231ps(t1, x1, zmm(C4))?;
    a.vaddps(o1, t0, t1)?;
    a.vsubps(o2, t0, t1)?;
    // (x4 - x2) ± 2·(x3 - x1)
    a.vsubps(t0, x4, x2)?;
    a.vsubps(t1, x3, x1)?;
    a.vmovaps(o3, t0)?;
    a.vfmadd231ps(o3, t1, zmm(C2))?;
    a.vmovaps(o4, t0)?;
    a.vfnmadd231ps(o4, t1, zmm(C2))?;
    // 4·x1 - 5·x3 + x5
    a.vmovaps(o5, x5)?;
    a.vfnmadd231ps(o5, x3, zmm(C5))?;
    a.vfmadd231ps(o5, x1, zmm(C4))?;
    Ok(())
}

/// The four rows of `Aᵀ·m` from `m` (six registers) into `out`; `t` four
/// temporaries.
fn at(
    a: &mut CodeAssembler,
    m: [usize; 6],
    out: [usize; 4],
    t: [usize; 4],
) -> Result<(), IcedError> {
    let [m0, m1, m2, m3, m4, m5] = m.map(zmm);
    let [o0, o1, o2, o3] = out.map(zmm);
    let [s12, d12, s34, d34] = t.map(zmm);
    a.vaddps(s12, m1, m2)?;
    a.vsubps(d12, m1, m2)?;
    a.vaddps(s34, m3, m4)?;
    a.vsubps(d34, m3, m4)?;
    // m0 + (m1 + m2) + (m3 + m4)
    a.vaddps(o0, m0, s12)?;
    a.vaddps(o0, o0, s34)?;
    // (m1 - m2) + 2·(m3 - m4)
    a.vmovaps(o1, d12)?;
    a.vfmadd231ps(o1, d34, zmm(C2))?;
    // (m1 + m2) + 4·(m3 + m4)
    a.vmovaps(o2, s12)?;
    a.vfmadd231ps(o2, s34, zmm(C4))?;
    // (m1 - m2) + 8·(m3 - m4) + m5
    a.vmovaps(o3, d12)?;
    a.vfmadd231ps(o3, d34, zmm(C8))?;
    a.vaddps(o3, o3, m5)?;
    Ok(())
}

// Input transform registers: zmm0..5 the rows or columns in, zmm8..11
// the deinterleave's halves, zmm12 a broadcast, zmm13..18 the transform
// out, zmm19/20 its temporaries, zmm27..30 the tables.
const IN_TABLES: [usize; 4] = [27, 28, 29, 30];

fn emit_in(s: &InSpec) -> Result<Vec<u8>, IcedError> {
    let mut a = CodeAssembler::new(64)?;
    let mut data = a.create_label();
    let frame = (6 * ROW * 4) as i32;
    a.sub(rsp, frame)?;
    splat(&mut a, C2, 2.0)?;
    splat(&mut a, C4, 4.0)?;
    splat(&mut a, C5, 5.0)?;
    a.vxorps(zmm(ZERO), zmm(ZERO), zmm(ZERO))?;
    load_tables(&mut a, data, IN_TABLES)?;
    let [d01, d23, lo, hi] = IN_TABLES.map(zmm);
    let out = [13, 14, 15, 16, 17, 18];
    let tmp = [19, 20];
    let row = |k: usize, at: usize| zmmword_ptr(rsp + (4 * (k * ROW + at)) as i32);
    for chunk in 0..s.tiles.div_ceil(LANES) {
        // column pass: t_k = Σ_i Bᵀ[k][i]·row_i over columns 64·ch - pl ..
        for v in 0..ROW / LANES {
            let x0 = (TILE * LANES * chunk + LANES * v) as i64 - s.pl as i64;
            let used = if v == ROW / LANES - 1 { 2 } else { LANES };
            let bits = (0..used as i64)
                .filter(|&l| (0..s.w as i64).contains(&(x0 + l)))
                .fold(0u32, |m, l| m | 1 << l);
            if bits == 0 || s.lo == s.hi {
                for k in 0..6 {
                    a.vmovups(row(k, LANES * v), zmm(ZERO))?;
                }
                continue;
            }
            let k = if bits == 0xffff { 0 } else { 1 };
            if k == 1 {
                mask(&mut a, 1, bits)?;
            }
            let mut x = [ZERO; 6];
            for (i, xi) in x.iter_mut().enumerate().take(s.hi).skip(s.lo) {
                let off = 4 * (i as i64 * s.w as i64 + x0);
                a.vmovups(kz(zmm(i), k), zmmword_ptr(rdi + off as i32))?;
                *xi = i;
            }
            bt(&mut a, x, out, tmp)?;
            for (k, &o) in out.iter().enumerate() {
                a.vmovups(row(k, LANES * v), zmm(o))?;
            }
        }
        // row pass: tile column j of 16 tiles is every 4th staged column
        let n = (s.tiles - LANES * chunk).min(LANES);
        let store_k = if n < LANES {
            mask(&mut a, 2, (1 << n) - 1)?;
            2
        } else {
            0
        };
        for k in 0..6 {
            let (p01a, p23a, p01b, p23b) = (zmm(8), zmm(9), zmm(10), zmm(11));
            a.vmovups(p23a, row(k, 0))?;
            a.vmovaps(p01a, p23a)?;
            a.vpermt2ps(p01a, d01, row(k, 16))?;
            a.vpermt2ps(p23a, d23, row(k, 16))?;
            a.vmovups(p23b, row(k, 32))?;
            a.vmovaps(p01b, p23b)?;
            a.vpermt2ps(p01b, d01, row(k, 48))?;
            a.vpermt2ps(p23b, d23, row(k, 48))?;
            for (r, (src, other, half)) in [
                (p01a, p01b, lo),
                (p01a, p01b, hi),
                (p23a, p23b, lo),
                (p23a, p23b, hi),
            ]
            .into_iter()
            .enumerate()
            {
                a.vmovaps(zmm(r), src)?;
                a.vpermt2ps(zmm(r), half, other)?;
            }
            // columns 4 and 5: columns 0 and 1 of the next tile
            for r in 0..2 {
                a.vbroadcastss(zmm(12), dword_ptr(rsp + (4 * (k * ROW + 64 + r)) as i32))?;
                a.valignd(zmm(4 + r), zmm(12), zmm(r), 1)?;
            }
            bt(&mut a, [0, 1, 2, 3, 4, 5], out, tmp)?;
            for (l, &o) in out.iter().enumerate() {
                let off = 4 * ((6 * k + l) * s.stride + LANES * chunk);
                a.vmovups(km(zmmword_ptr(rsi + off as i32), store_k), zmm(o))?;
            }
        }
    }
    a.add(rsp, frame)?;
    a.vzeroupper()?;
    a.ret()?;
    a.set_label(&mut data)?;
    a.dd(&tables(false))?;
    a.assemble(0)
}

// Output transform registers: zmm0..5 the positions or columns in,
// zmm6..9 the transform's temporaries (zmm6 then the epilogue's), zmm10..13
// its rows out, zmm14..17 the interleave, zmm18..23 the activation
// constants, zmm27..30 the tables, zmm31... is ZERO for the input; here
// the bias.
const OUT_TABLES: [usize; 4] = [27, 28, 29, 30];
const BIAS: usize = 31;
const ACT: ActRegs = ActRegs {
    zero: 18,
    six: 19,
    three: 20,
    half: 21,
    sixth: 22,
    one: 23,
    s1: 18,
    s2: 18,
};

fn emit_out(s: &OutSpec) -> Result<Vec<u8>, IcedError> {
    let mut a = CodeAssembler::new(64)?;
    let mut data = a.create_label();
    // the float argument first: zmm0 is overwritten below
    a.vbroadcastss(zmm(BIAS), xmm0)?;
    let frame = (TILE * 6 * LANES * 4) as i32;
    a.sub(rsp, frame)?;
    splat(&mut a, C2, 2.0)?;
    splat(&mut a, C4, 4.0)?;
    splat(&mut a, C8, 8.0)?;
    act_consts_zmm(&mut a, &ACT)?;
    load_tables(&mut a, data, OUT_TABLES)?;
    let [ilo, ihi, qlo, qhi] = OUT_TABLES.map(zmm);
    let q = |i: usize, l: usize| zmmword_ptr(rsp + (4 * LANES * (6 * i + l)) as i32);
    let rows = [10, 11, 12, 13];
    let tmp = [6, 7, 8, 9];
    for chunk in 0..s.tiles.div_ceil(LANES) {
        let n = (s.tiles - LANES * chunk).min(LANES);
        let load_k = if n < LANES {
            mask(&mut a, 2, (1 << n) - 1)?;
            2
        } else {
            0
        };
        // down the tile: q[i][l] = Σ_k Aᵀ[i][k]·M[6k + l]
        for l in 0..6 {
            for k in 0..6 {
                let off = 4 * ((6 * k + l) * s.stride + LANES * chunk);
                a.vmovups(kz(zmm(k), load_k), zmmword_ptr(rdi + off as i32))?;
            }
            at(&mut a, [0, 1, 2, 3, 4, 5], rows, tmp)?;
            for (i, &r) in rows.iter().enumerate().take(s.rows) {
                a.vmovups(q(i, l), zmm(r))?;
            }
        }
        // across: y[i][j] = Σ_l Aᵀ[j][l]·q[i][l], interleaved into pixels
        for i in 0..s.rows {
            for l in 0..6 {
                a.vmovups(zmm(l), q(i, l))?;
            }
            at(&mut a, [0, 1, 2, 3, 4, 5], rows, tmp)?;
            let [y0, y1, y2, y3] = rows.map(zmm);
            let (p01lo, p23lo) = (zmm(14), zmm(15));
            a.vmovaps(p01lo, y0)?;
            a.vpermt2ps(p01lo, ilo, y1)?;
            a.vpermt2ps(y0, ihi, y1)?;
            a.vmovaps(p23lo, y2)?;
            a.vpermt2ps(p23lo, ilo, y3)?;
            a.vpermt2ps(y2, ihi, y3)?;
            // y0 and y2 now hold the high pairs
            a.vmovaps(zmm(16), p01lo)?;
            a.vpermt2ps(zmm(16), qlo, p23lo)?;
            a.vpermt2ps(p01lo, qhi, p23lo)?;
            a.vmovaps(zmm(17), y0)?;
            a.vpermt2ps(zmm(17), qlo, y2)?;
            a.vpermt2ps(y0, qhi, y2)?;
            for (u, px) in [16, 14, 17, 10].into_iter().enumerate() {
                let x0 = TILE * LANES * chunk + LANES * u;
                if x0 >= s.wo {
                    break;
                }
                let lanes = (s.wo - x0).min(LANES);
                let k = if lanes < LANES {
                    mask(&mut a, 3, (1 << lanes) - 1)?;
                    3
                } else {
                    0
                };
                let px = zmm(px);
                a.vaddps(px, px, zmm(BIAS))?;
                act_zmm(&mut a, s.act, px, zmm(6), &ACT)?;
                let off = (4 * (i * s.wo + x0)) as i32;
                if s.res {
                    a.vaddps(kz(px, k), px, zmmword_ptr(rdx + off))?;
                }
                a.vmovups(km(zmmword_ptr(rsi + off), k), px)?;
            }
        }
    }
    a.add(rsp, frame)?;
    a.vzeroupper()?;
    a.ret()?;
    a.set_label(&mut data)?;
    a.dd(&tables(true))?;
    a.assemble(0)
}
