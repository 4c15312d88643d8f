//! The GEMM tile contract, the same for every ISA: what a tile variant
//! computes ([`Variant`]: `C[mr × nt] = init + A[mr × K] · B[K × nt]`, then
//! the activation and an optional residual), its calling convention
//! ([`signature`]), and the x86 pieces both assembled tiles share (the
//! unrolled K loop, the red-zone constants of the activations). The ISAs'
//! emitters are `avx512/tile.rs` and `avx2/tile.rs`; the portable Cranelift
//! f32x4 tile computing the same contract is `f32x4/tile.rs`.

use cranelift_codegen::ir::{AbiParam, Signature, types::I64};
use cranelift_codegen::isa::CallConv;
use iced_x86::code_asm::*;

/// The tiles' signature: `fn(a, b, c, bias, residual, a1, a2, panel)`, all
/// pointers (0 when unused), System V.
pub(crate) fn signature() -> Signature {
    let mut sig = Signature::new(CallConv::SystemV);
    for _ in 0..8 {
        sig.params.push(AbiParam::new(I64));
    }
    sig
}

/// One assembled tile variant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Variant {
    /// reduction length
    pub k: usize,
    /// rows computed (at most the ISA's row count)
    pub mr: usize,
    /// columns computed (≤ `nr`)
    pub nt: usize,
    /// columns of the GEMM's full tile: the row stride of the run-time B
    /// panel a `b_pack` variant writes (16, 32, 48 or 64 at AVX-512, see
    /// `avx512::tile::max_rows`; `avx2::tile::NR` at AVX2)
    pub nr: usize,
    /// elements between consecutive rows of A (1 in a packed panel)
    pub a_rs: usize,
    /// elements between consecutive k of one row of A (the panel height
    /// when packed)
    pub a_ks: usize,
    /// B row stride in elements
    pub b_ks: usize,
    /// whether B rows are padded to whole vectors (a packed panel)
    pub b_padded: bool,
    /// whether every B row loaded is also stored, zero-padded to whole
    /// vectors, to the panel (the eighth argument) with row stride `nr`;
    /// B itself is read unpadded with stride `b_ks`
    pub b_pack: bool,
    /// C row stride in elements
    pub c_rs: usize,
    /// what seeds the accumulators
    pub bias: Bias,
    /// activation applied before the store
    pub act: Act,
    /// whether a residual (pointer in r8, laid out like C) is added after
    /// the activation
    pub residual: bool,
    /// a narrow column tail computed with the rows across the lanes: one
    /// accumulator per column (`nt ≤` [`LANES_TAIL_COLS`]), A's packed
    /// panel column loaded as a vector, B broadcast (AVX-512 only; see
    /// `avx512/tile.rs`)
    pub cols_in_lanes: bool,
}

/// The widest column tail computed with the rows across the lanes
/// ([`Variant::cols_in_lanes`]).
pub(crate) const LANES_TAIL_COLS: usize = 4;

/// The activations: the IR's own vocabulary, every one of which the
/// assembled tiles apply (GELU's erf as the rational [`GELU_P`] /
/// [`GELU_Q`]); the portable tile sweeps the polynomial ones after its
/// store (`f32x4/tile.rs`).
pub(crate) use kiln_ir::fused::Act;

/// The accumulators' starting values (pointer in rcx).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Bias {
    /// zero
    None,
    /// `bias[i]` for row `i` (convolution bias)
    Row,
    /// `bias[j]` for column `j` (a linear layer's bias)
    Col,
}

/// Checks that `v` fits a `what` tile of at most `mr × nr` built from
/// `vbytes`-byte vectors, and that every displacement its emitter forms
/// (C rows, two k steps of A and B, the panel) fits in 32 bits.
pub(crate) fn check_variant(
    v: &Variant,
    mr: usize,
    nr: usize,
    vbytes: usize,
    what: &str,
) -> Result<(), String> {
    if v.mr == 0 || v.mr > mr || v.nt == 0 || v.nt > nr || v.nr != nr || (v.b_pack && v.b_padded) {
        return Err(format!("{what} tile variant out of range: {v:?}"));
    }
    // every displacement of the emitters is at most one of these
    let largest = [
        4 * (v.mr * v.c_rs + nr),
        8 * v.a_ks + 4 * mr * v.a_rs + vbytes,
        8 * v.b_ks + 2 * vbytes,
        // a `b_pack` variant's prefetch of the next panel
        8 * v.b_ks + 8 * nr,
        // the packed operands' prefetches
        8 * v.a_ks + PREFETCH_A,
        8 * v.b_ks + PREFETCH_B + 4 * nr,
        8 * nr + 2 * vbytes,
    ];
    if largest.iter().any(|&x| i32::try_from(x).is_err()) {
        return Err(format!("strides too large for 32-bit displacements: {v:?}"));
    }
    Ok(())
}

/// The K loop of a tile with `nr`-column panels, unrolled by two (loop
/// overhead is a tenth of a step): `step(a, a_off, b_off, panel_off)` emits
/// one k step at those byte offsets from rdi, rsi and rax (the panel, when
/// `v.b_pack`), which the loop then advances; an odd K ends with one more
/// step.
pub(crate) fn k_loop(
    a: &mut CodeAssembler,
    v: &Variant,
    nr: usize,
    mut step: impl FnMut(&mut CodeAssembler, usize, usize, usize) -> Result<(), IcedError>,
) -> Result<(), IcedError> {
    let (a_step, b_step) = (4 * v.a_ks, 4 * v.b_ks);
    if v.k >= 2 {
        a.mov(r10, (v.k / 2) as u64)?;
        let mut top = a.create_label();
        a.set_label(&mut top)?;
        step(a, 0, 0, 0)?;
        step(a, a_step, b_step, 4 * nr)?;
        a.add(rdi, disp(2 * a_step))?;
        a.add(rsi, disp(2 * b_step))?;
        if v.b_pack {
            a.add(rax, disp(8 * nr))?;
        }
        a.dec(r10)?;
        a.jnz(top)?;
    }
    if v.k % 2 == 1 {
        step(a, 0, 0, 0)?;
    }
    Ok(())
}

/// How far ahead of the K loop the tiles prefetch a packed operand (A's
/// panel, or B's for a linear layer), in bytes. Packed operands are the
/// weights: a model's weights exceed L2 (often L3), so every inference
/// streams them from L3 or memory, a stream the hardware prefetchers
/// did not keep ahead of (measured, 1 thread: LeViT-conv-128S 5.24 →
/// 3.63–3.92 ms, ResNet-18 23.3 → 18.8–19.5, RepViT-M0.9 9.6 → 8.4,
/// EfficientFormer-L1 16.6 → 13.8; DeiT-tiny's and LeViT-128S's linears,
/// B packed: 12.1 → 11.5 and 4.4 → 3.4 ms). A on 3072 to 16384 bytes:
/// 4096–8192 best; B 8192 better than 4096. With the operands in L1 (a
/// conv run alone) it costs nothing measurable: one load-port
/// instruction per k step beside 15 loads.
pub(crate) const PREFETCH_A: usize = 6144;
/// [`PREFETCH_A`] for a packed B panel.
pub(crate) const PREFETCH_B: usize = 8192;

/// The prefetches of the k step at byte offsets `a_off`, `b_off` from rdi
/// and rsi ([`k_loop`]'s): A's packed panel (`a_rs == 1`, one contiguous
/// stream of `4·a_ks` bytes a step; one prefetch a step, or only on the
/// unrolled pair's first step, `a_off == 0`, when two steps fit a cache
/// line), and a padded B panel, every 64-byte line of its row. Strided
/// operands are activations, which the previous kernel just wrote.
pub(crate) fn prefetch_step(
    a: &mut CodeAssembler,
    v: &Variant,
    a_off: usize,
    b_off: usize,
) -> Result<(), IcedError> {
    if v.a_rs == 1 && (a_off == 0 || 8 * v.a_ks > 64) {
        a.prefetcht0(byte_ptr(rdi + disp(a_off + PREFETCH_A)))?;
    }
    if v.b_padded {
        for z in 0..(4 * v.b_ks).div_ceil(64) {
            a.prefetcht0(byte_ptr(rsi + disp(b_off + PREFETCH_B + 64 * z)))?;
        }
    }
    Ok(())
}

/// A displacement [`check_variant`] has range-checked.
pub(crate) fn disp(x: usize) -> i32 {
    x as i32
}

/// Red-zone slots of the epilogue's constants (bytes below rsp), shared
/// with the AVX2 tile.
pub(crate) const SIX: i32 = 4;
pub(crate) const THREE: i32 = 8;
pub(crate) const SIXTH: i32 = 12;
pub(crate) const HALF: i32 = 16;
pub(crate) const ONE: i32 = 20;
pub(crate) const NEG_LOG2E: i32 = 24;
/// `2^f ≈ Σ c_k f^k` (Taylor, `c_k = ln2^k / k!`), highest degree first;
/// `c_0 = 1` is [`ONE`].
pub(crate) const EXP2_POLY: [(i32, f32); 6] = [
    (28, 1.540_353e-4),
    (32, 1.333_355_8e-3),
    (36, 9.618_129e-3),
    (40, 5.550_411e-2),
    (44, 2.402_265e-1),
    (48, std::f32::consts::LN_2),
];

/// GELU in a tile's epilogue: `gelu(x) = x/2 · (1 + erf(z))`, `z = x/√2`
/// clamped to ±[`GELU_ZMAX`] (where erf is 1 in f32), and
/// `erf(z) ≈ z·P(z²)/Q(z²)`. Both polynomials are degree 5 in `z²`, lowest
/// degree first ([`GELU_P`], [`GELU_Q`], `Q(0) = 1`), fitted minimax on
/// `[0, 3.92]` by `tools/fit_gelu_erf.py` (which prints these values):
/// 1.6e-8 from erf in exact arithmetic, 2.6e-7 (absolute) evaluated in f32
/// as the tiles do, so the GELU is within 1.8e-7 · max(|x|, 1) of the exact
/// one. Seventeen FMA-pipe instructions and one division (which runs beside
/// the FMA pipes) per vector with four temporaries, where the row
/// function's erfc form (`vector.rs`, accurate to 1.2e-7 *relative* far
/// into the negative tail) takes ~40 and fourteen registers. An absolute
/// error is what PyTorch's own vectorised erf and oneDNN's GELU have too.
pub(crate) const GELU_ZMAX: f32 = 3.92;
/// Numerator of [`GELU_ZMAX`]'s rational erf, lowest degree in `z²` first.
// P(0) is the fit's, one f32 step from 2/√π (the Taylor slope), which
// minimises the error over the whole range, not at 0
#[allow(clippy::approx_constant)]
pub(crate) const GELU_P: [f32; 6] = [
    1.128_379,
    0.192_763_05,
    0.053_060_01,
    0.003_868_176_6,
    0.000_287_457_9,
    2.034_517_1e-6,
];
/// Denominator, lowest degree first (`Q(0) = 1`).
pub(crate) const GELU_Q: [f32; 6] = [
    1.0,
    0.504_163_5,
    0.115_083_89,
    0.015_172_029,
    0.001_188_043_5,
    3.806_723e-5,
];
/// Red-zone slots of GELU's constants: `1/√2`, `±ZMAX`, then P and Q
/// (index `k` of each at `GELU_P_SLOT + 4k`, `GELU_Q_SLOT + 4k`; Q's `k = 0`
/// is [`ONE`]). They reuse SiLU's slots (a tile has one activation) and
/// stay below the AVX2 tile's tail mask.
pub(crate) const GELU_SCALE: i32 = 24;
pub(crate) const GELU_HI: i32 = 28;
pub(crate) const GELU_LO: i32 = 32;
pub(crate) const GELU_P_SLOT: i32 = 36;
pub(crate) const GELU_Q_SLOT: i32 = 56;

/// The red-zone slot of GELU's numerator (`p`) or denominator coefficient
/// `k`.
pub(crate) fn gelu_slot(numerator: bool, k: usize) -> i32 {
    match (numerator, k) {
        (false, 0) => ONE,
        (true, _) => GELU_P_SLOT + 4 * k as i32,
        (false, _) => GELU_Q_SLOT + 4 * k as i32,
    }
}

/// Writes the activations' scalar constants to their red-zone slots (and
/// silu's `-log2 e` and exp2 polynomial, or GELU's scale, clamp and
/// polynomials, when `act` is one of those).
pub(crate) fn write_act_consts(a: &mut CodeAssembler, act: Act) -> Result<(), IcedError> {
    for (slot, x) in [
        (SIX, 6.0f32),
        (THREE, 3.0),
        (SIXTH, 1.0 / 6.0),
        (HALF, 0.5),
        (ONE, 1.0),
    ] {
        a.mov(dword_ptr(rsp - slot), x.to_bits())?;
    }
    if act == Act::Gelu {
        for (slot, x) in [
            (GELU_SCALE, std::f32::consts::FRAC_1_SQRT_2),
            (GELU_HI, GELU_ZMAX),
            (GELU_LO, -GELU_ZMAX),
        ] {
            a.mov(dword_ptr(rsp - slot), x.to_bits())?;
        }
        for k in 0..6 {
            a.mov(dword_ptr(rsp - gelu_slot(true, k)), GELU_P[k].to_bits())?;
            if k > 0 {
                a.mov(dword_ptr(rsp - gelu_slot(false, k)), GELU_Q[k].to_bits())?;
            }
        }
    }
    if act == Act::Silu {
        a.mov(
            dword_ptr(rsp - NEG_LOG2E),
            (-std::f32::consts::LOG2_E).to_bits(),
        )?;
        for (slot, c) in EXP2_POLY {
            a.mov(dword_ptr(rsp - slot), c.to_bits())?;
        }
    }
    Ok(())
}
