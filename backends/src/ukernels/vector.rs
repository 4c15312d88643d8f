//! Element-wise transcendentals (`exp`, `sigmoid`, `silu`, exact `gelu`),
//! and the softmax
//! routines built on the same `exp` (a long row; blocks of short rows, one
//! per lane), assembled at compile time with iced-x86 for AVX-512 (zmm, 16
//! lanes) or AVX2 + FMA (ymm, 8 lanes) by one generator ([`Width`]); and,
//! for AVX-512 only, the Mobile→Former bridge's `P·X` pass and the
//! Former→Mobile bridge's per-pixel attention.
//!
//! Cranelift lowers only 128-bit vectors on x86-64, and an `exp`-based
//! activation in f32x4 runs at about 6.6 GB/s here — compute-bound: SiLU
//! alone was a third of mobilevitv2_050's time. Wider vectors, and at
//! AVX-512 `vscalefps` (which applies `2^n` with correct overflow to
//! infinity and underflow through the subnormals in one instruction), make
//! the same algorithm several times faster.
//!
//! The algorithm is `codegen::math::exp`'s: Cody–Waite reduction
//! `x = n·ln2 + r` with `n = round(x·log2 e)`, `|r| ≤ ln2/2`, the Cephes
//! `expf` polynomial for `e^r`, then `2^n` (by `vscalefps`, or at AVX2 as
//! two exponent-field factors, which round the same: see [`Gen::exp`]).
//! Arguments are clamped to [-104, 89] first (beyond them the result is 0
//! or ∞ anyway), NaN-preserving: `vmaxps`/`vminps` return their second
//! source when either is NaN, and the argument is always that source.
//! `sigmoid(x) = 1/(1 + exp(-x))`, `silu(x) = x/(1 + exp(-x))` with a true
//! division, as the Cranelift forms do. Errors are measured against f64 by
//! `backends/tests/math.rs` with the same documented bounds as the f32x4
//! versions, at both widths.
//!
//! Calling convention: System V, `fn(src: *const f32, dst: *mut f32, n:
//! usize)` in rdi, rsi, rdx; `src == dst` is allowed (each vector is loaded
//! before it is stored). The last `n mod lanes` elements are handled with a
//! masked load and store (an opmask, or `vmaskmovps` with a lane mask), so
//! nothing outside `[0, n)` is read or written. Constants are materialised
//! from immediates (no relocations): in zmm16.. at AVX-512, in a stack
//! frame (and the registers left over) at AVX2, whose functions use VEX
//! encodings and ymm0..ymm15 only; a function needing more (GELU) reads
//! the rest RIP-relative from data placed after its `ret` ([`Gen::data`]),
//! which keeps the bytes position-independent. Every function ends with
//! `vzeroupper; ret`.

// The Cephes coefficients as published, rounded to f32 by the compiler.
#![allow(clippy::excessive_precision)]

use iced_x86::code_asm::*;

use crate::target::TileLevel;

/// The vector width a function is assembled for: the same generator emits
/// both, so the algorithm (and every rounding step) is written once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Width {
    /// AVX-512F: 16 lanes in zmm, opmask tails, `vscalefps`.
    Zmm,
    /// AVX2 + FMA: 8 lanes in ymm0..ymm15, VEX encodings only,
    /// `vmaskmovps` tails, `2^n` built in the exponent bits.
    Ymm,
}

impl Width {
    /// The width of `level`'s assembled functions (none at `F32x4`).
    pub fn of(level: TileLevel) -> Option<Width> {
        match level {
            TileLevel::Avx512 => Some(Width::Zmm),
            TileLevel::Avx2 => Some(Width::Ymm),
            TileLevel::F32x4 => None,
        }
    }

    /// f32 lanes per vector.
    pub fn lanes(self) -> usize {
        match self {
            Width::Zmm => 16,
            Width::Ymm => 8,
        }
    }

    /// Bytes per vector.
    pub fn bytes(self) -> i32 {
        4 * self.lanes() as i32
    }

    /// The level's name, for kernel descriptions.
    pub fn name(self) -> &'static str {
        match self {
            Width::Zmm => "avx512",
            Width::Ymm => "avx2",
        }
    }

    /// A vector-sized memory operand at `m`.
    pub fn mem(self, m: impl Into<AsmMemoryOperand>) -> AsmMemoryOperand {
        match self {
            Width::Zmm => zmmword_ptr(m),
            Width::Ymm => ymmword_ptr(m),
        }
    }
}

/// The functions there is an assembled form of.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Func {
    /// `exp(x)`
    Exp,
    /// `1 / (1 + exp(-x))`
    Sigmoid,
    /// `x / (1 + exp(-x))`
    Silu,
    /// exact GELU `x/2 · (1 + erf(x/√2))` (see [`Gen::gelu`]), accurate
    /// relatively everywhere: the standalone GELU op
    Gelu,
    /// the same GELU as a fused conv's epilogue computes it: the GEMM
    /// tiles' rational erf (`tile::GELU_P`), accurate to 2.6e-7 absolute
    /// (see [`Gen::gelu_epilogue`]); for the kernels that sweep it after
    /// their assembled code
    GeluEpilogue,
    /// tanh-form GELU `x · sigmoid(2u)`, `u = √(2/π)·(x + 0.044715·x³)`,
    /// as `codegen/math.rs`'s `gelu_tanh`
    GeluTanh,
}

impl Func {
    /// The assembled form of `op`, if there is one.
    pub fn of(op: kiln_ir::UnaryOp) -> Option<Func> {
        match op {
            kiln_ir::UnaryOp::Exp => Some(Func::Exp),
            kiln_ir::UnaryOp::Sigmoid => Some(Func::Sigmoid),
            kiln_ir::UnaryOp::Silu => Some(Func::Silu),
            kiln_ir::UnaryOp::Gelu => Some(Func::Gelu),
            kiln_ir::UnaryOp::GeluTanh => Some(Func::GeluTanh),
            _ => None,
        }
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

// The constants, by index. At `Zmm` constant `c` lives in zmm(16 + c)
// (broadcast once per call); at `Ymm` there are only 16 registers, so they
// live in a stack frame (one 32-byte vector each), and each function loads
// the ones it has registers for (the others are memory operands).
const C_LO: usize = 0; // -104
const C_HI: usize = 1; // 89
const C_LOG2E: usize = 2;
const C_LN2_HI: usize = 3;
const C_LN2_LO: usize = 4;
const C_ONE: usize = 5;
const C_POLY: usize = 6; // .. 11
const C_SIGN: usize = 12; // the sign bit
const C_NINF: usize = 13; // -inf (softmax row)
/// `Ymm` only: the lane numbers 0..8 as integers (tail masks).
const C_IOTA: usize = 14;
/// Constants in the `Ymm` frame.
const NK: usize = 15;
/// zmm register of constant 0.
const ZMM_K: usize = 16;

/// The f32 bits of constant `c` (not [`C_IOTA`]).
fn constant_bits(c: usize) -> u32 {
    match c {
        C_LO => (-104.0f32).to_bits(),
        C_HI => 89.0f32.to_bits(),
        C_LOG2E => std::f32::consts::LOG2_E.to_bits(),
        C_LN2_HI => LN2_HI.to_bits(),
        C_LN2_LO => LN2_LO.to_bits(),
        C_ONE => 1.0f32.to_bits(),
        C_SIGN => 0x8000_0000,
        C_NINF => f32::NEG_INFINITY.to_bits(),
        _ => EXP_POLY[c - C_POLY].to_bits(),
    }
}

/// `zmm{i}`.
pub(crate) fn zmm(i: usize) -> AsmRegisterZmm {
    const Z: [AsmRegisterZmm; 32] = [
        zmm0, zmm1, zmm2, zmm3, zmm4, zmm5, zmm6, zmm7, zmm8, zmm9, zmm10, zmm11, zmm12, zmm13,
        zmm14, zmm15, zmm16, zmm17, zmm18, zmm19, zmm20, zmm21, zmm22, zmm23, zmm24, zmm25, zmm26,
        zmm27, zmm28, zmm29, zmm30, zmm31,
    ];
    Z[i]
}

/// `ymm{i}` (`i < 16`: VEX can name no other).
pub(crate) fn ymm(i: usize) -> AsmRegisterYmm {
    const Y: [AsmRegisterYmm; 16] = [
        ymm0, ymm1, ymm2, ymm3, ymm4, ymm5, ymm6, ymm7, ymm8, ymm9, ymm10, ymm11, ymm12, ymm13,
        ymm14, ymm15,
    ];
    Y[i]
}

/// `xmm{i}` (`i < 16`).
pub(crate) fn xmm(i: usize) -> AsmRegisterXmm {
    const X: [AsmRegisterXmm; 16] = [
        xmm0, xmm1, xmm2, xmm3, xmm4, xmm5, xmm6, xmm7, xmm8, xmm9, xmm10, xmm11, xmm12, xmm13,
        xmm14, xmm15,
    ];
    X[i]
}

/// A vector operand: register number `R(i)` (zmm or ymm by the width) or a
/// vector-sized memory operand.
#[derive(Clone, Copy)]
pub(crate) enum V {
    R(usize),
    M(AsmMemoryOperand),
}

/// Three-operand vector instructions `d = op(s1, s2)` at either width.
macro_rules! op3 {
    ($($name:ident),* $(,)?) => { $(
        pub fn $name(&mut self, d: usize, s1: usize, s2: V) -> Result<(), IcedError> {
            match (self.w, s2) {
                (Width::Zmm, V::R(r)) => self.a.$name(zmm(d), zmm(s1), zmm(r)),
                (Width::Zmm, V::M(m)) => self.a.$name(zmm(d), zmm(s1), m),
                (Width::Ymm, V::R(r)) => self.a.$name(ymm(d), ymm(s1), ymm(r)),
                (Width::Ymm, V::M(m)) => self.a.$name(ymm(d), ymm(s1), m),
            }
        }
    )* };
}

/// An assembler for one function at one width: where the constants are,
/// and (at `Ymm`) which register holds the tail mask.
pub(crate) struct Gen {
    pub a: CodeAssembler,
    pub w: Width,
    k: [V; NK],
    /// bytes the function reserved below its return address
    frame: i32,
    /// `Ymm`: the register of the tail mask ([`Gen::tail_mask`])
    mask: usize,
    /// constants placed after the code ([`Gen::data`]): bits and label
    data: Vec<(u32, CodeLabel)>,
}

impl Gen {
    /// The prologue: `extra` bytes of stack at `[rsp, rsp + extra)` for the
    /// caller, and the constants. At `Ymm` they are written to a frame
    /// above those bytes and the first `regs.len()` of them (in index
    /// order) loaded into `regs`; `mask` is the tail mask's register. At
    /// `Zmm` all live in zmm16.. and `regs`, `mask` are unused.
    fn enter(w: Width, extra: i32, regs: &[usize], mask: usize) -> Result<Gen, IcedError> {
        let mut a = CodeAssembler::new(64)?;
        let mut k = [V::R(0); NK];
        let mut frame = extra;
        match w {
            Width::Zmm => {
                for (c, v) in k.iter_mut().enumerate().take(C_IOTA) {
                    a.mov(eax, constant_bits(c))?;
                    a.vpbroadcastd(zmm(ZMM_K + c), eax)?;
                    *v = V::R(ZMM_K + c);
                }
            }
            Width::Ymm => {
                // VEX encodings only: these run on CPUs without AVX-512
                a.set_prefer_vex(true);
                frame += 32 * NK as i32;
                a.sub(rsp, frame)?;
                for (c, v) in k.iter_mut().enumerate() {
                    let at = ymmword_ptr(rsp + extra + 32 * c as i32);
                    if c == C_IOTA {
                        for l in 0..8 {
                            a.mov(dword_ptr(rsp + extra + 32 * c as i32 + 4 * l), l as u32)?;
                        }
                    } else {
                        a.mov(eax, constant_bits(c))?;
                        a.vmovd(xmm1, eax)?;
                        a.vpbroadcastd(ymm1, xmm1)?;
                        a.vmovups(at, ymm1)?;
                    }
                    *v = V::M(at);
                }
                for (c, &r) in regs.iter().enumerate() {
                    if let V::M(m) = k[c] {
                        a.vmovups(ymm(r), m)?;
                    }
                    k[c] = V::R(r);
                }
            }
        }
        if w == Width::Zmm && extra > 0 {
            a.sub(rsp, extra)?;
        }
        Ok(Gen {
            a,
            w,
            k,
            frame,
            mask,
            data: Vec::new(),
        })
    }

    /// The epilogue: frees the frame, `vzeroupper`, `ret`, then the data
    /// constants; the bytes.
    fn leave(mut self) -> Result<Vec<u8>, IcedError> {
        if self.frame > 0 {
            self.a.add(rsp, self.frame)?;
        }
        self.a.vzeroupper()?;
        self.a.ret()?;
        for (bits, mut label) in std::mem::take(&mut self.data) {
            self.a.set_label(&mut label)?;
            match self.w {
                // read with an embedded broadcast
                Width::Zmm => self.a.dd(&[bits])?,
                // read as a whole vector (AVX2 has no embedded broadcast)
                Width::Ymm => self.a.dd(&[bits; 8])?,
            }
        }
        self.a.assemble(0)
    }

    /// A constant placed after the code and read RIP-relative (so the
    /// function stays position-independent), as a vector operand: for
    /// functions that need more constants than the frame holds. Equal
    /// constants share one slot.
    fn data(&mut self, x: f32) -> V {
        self.data_bits(x.to_bits())
    }

    /// [`Gen::data`] by bit pattern.
    fn data_bits(&mut self, bits: u32) -> V {
        let label = self.data_label(bits);
        V::M(match self.w {
            Width::Zmm => dword_bcst(label),
            Width::Ymm => ymmword_ptr(label),
        })
    }

    /// The label of the data constant `bits`, placing it if new.
    fn data_label(&mut self, bits: u32) -> CodeLabel {
        match self.data.iter().find(|(b, _)| *b == bits) {
            Some(&(_, l)) => l,
            None => {
                let l = self.a.create_label();
                self.data.push((bits, l));
                l
            }
        }
    }

    /// Vector `d` = the data constant `x` in every lane.
    fn load_data(&mut self, d: usize, x: f32) -> Result<(), IcedError> {
        let label = self.data_label(x.to_bits());
        match self.w {
            Width::Zmm => self.a.vbroadcastss(zmm(d), dword_ptr(label)),
            Width::Ymm => self.a.vmovups(ymm(d), ymmword_ptr(label)),
        }
    }

    /// `d = (x < y) ? if_lt : other` per lane (an ordered compare: NaN
    /// takes `other`). `Ymm` uses vector 14 for the mask, `Zmm` `k2`.
    fn select_lt(
        &mut self,
        d: usize,
        (x, y): (usize, usize),
        if_lt: usize,
        other: usize,
    ) -> Result<(), IcedError> {
        const LT_OS: u32 = 1;
        match self.w {
            Width::Zmm => {
                self.a.vcmpps(k2, zmm(x), zmm(y), LT_OS)?;
                self.a.vblendmps(zmm(d).k2(), zmm(other), zmm(if_lt))
            }
            Width::Ymm => {
                self.a.vcmpps(ymm(14), ymm(x), ymm(y), LT_OS)?;
                self.a.vblendvps(ymm(d), ymm(other), ymm(if_lt), ymm(14))
            }
        }
    }

    /// Constant `c` as an operand.
    fn k(&self, c: usize) -> V {
        self.k[c]
    }

    /// A register holding constant `c`: its own, or `tmp` loaded with it
    /// (for operand slots that take no memory).
    fn kr(&mut self, c: usize, tmp: usize) -> Result<usize, IcedError> {
        match self.k[c] {
            V::R(r) => Ok(r),
            m @ V::M(_) => {
                self.mov(tmp, m)?;
                Ok(tmp)
            }
        }
    }

    /// A vector-sized memory operand at `m`.
    fn mem(&self, m: impl Into<AsmMemoryOperand>) -> V {
        V::M(self.w.mem(m))
    }

    op3!(
        vmaxps,
        vminps,
        vmulps,
        vaddps,
        vsubps,
        vdivps,
        vxorps,
        vandps,
        vfmadd213ps,
        vfnmadd231ps,
        vfmsub231ps,
        vpaddd,
    );

    /// `d = s` (a register copy or a load).
    fn mov(&mut self, d: usize, s: V) -> Result<(), IcedError> {
        match (self.w, s) {
            (Width::Zmm, V::R(r)) => self.a.vmovaps(zmm(d), zmm(r)),
            (Width::Zmm, V::M(m)) => self.a.vmovups(zmm(d), m),
            (Width::Ymm, V::R(r)) => self.a.vmovaps(ymm(d), ymm(r)),
            (Width::Ymm, V::M(m)) => self.a.vmovups(ymm(d), m),
        }
    }

    /// `d = round(s)` to nearest even.
    fn round(&mut self, d: usize, s: usize) -> Result<(), IcedError> {
        match self.w {
            Width::Zmm => self.a.vrndscaleps(zmm(d), zmm(s), 0),
            Width::Ymm => self.a.vroundps(ymm(d), ymm(s), 0),
        }
    }

    /// A vector-sized memory operand at `m`, for [`Gen::load`] and
    /// [`Gen::store`].
    fn at(&self, m: impl Into<AsmMemoryOperand>) -> AsmMemoryOperand {
        self.w.mem(m)
    }

    /// Loads the vector at `m` into `d`; `tail`: only the lanes of the tail
    /// mask (the others zero, never read).
    fn load(&mut self, d: usize, m: AsmMemoryOperand, tail: bool) -> Result<(), IcedError> {
        match (self.w, tail) {
            (_, false) => self.mov(d, V::M(m)),
            (Width::Zmm, true) => self.a.vmovups(zmm(d).k1().z(), m),
            (Width::Ymm, true) => self.a.vmaskmovps(ymm(d), ymm(self.mask), m),
        }
    }

    /// Stores `s` at `m`; `tail`: only the lanes of the tail mask.
    fn store(&mut self, m: AsmMemoryOperand, s: usize, tail: bool) -> Result<(), IcedError> {
        match (self.w, tail) {
            (Width::Zmm, false) => self.a.vmovups(m, zmm(s)),
            (Width::Ymm, false) => self.a.vmovups(m, ymm(s)),
            (Width::Zmm, true) => self.a.vmovups(m.k1(), zmm(s)),
            (Width::Ymm, true) => self.a.vmaskmovps(m, ymm(self.mask), ymm(s)),
        }
    }

    /// The tail mask = the low `n` lanes (`n < lanes`, in the 32-bit
    /// register `n`): `k1` at `Zmm` (clobbers eax), the mask register at
    /// `Ymm`.
    fn tail_mask(&mut self, n: AsmRegister32) -> Result<(), IcedError> {
        match self.w {
            Width::Zmm => {
                self.a.mov(eax, 1u32)?;
                self.a.shlx(eax, eax, n)?;
                self.a.dec(eax)?;
                self.a.kmovw(k1, eax)
            }
            Width::Ymm => {
                let m = self.mask;
                self.a.vmovd(xmm(m), n)?;
                self.a.vpbroadcastd(ymm(m), xmm(m))?;
                // lane l: n > l
                let iota = self.k(C_IOTA);
                self.vpcmpgtd(m, iota)
            }
        }
    }

    /// `m = (m > s)` as 32-bit integers, per lane (`Ymm` only).
    fn vpcmpgtd(&mut self, m: usize, s: V) -> Result<(), IcedError> {
        match s {
            V::R(r) => self.a.vpcmpgtd(ymm(m), ymm(m), ymm(r)),
            V::M(at) => self.a.vpcmpgtd(ymm(m), ymm(m), at),
        }
    }

    /// Walks `r8` elements a vector at a time, stepping every register of
    /// `ptrs` by one vector: `body(g, false)` per whole vector, then, if
    /// `r8 mod lanes` elements remain, `body(g, true)` once with the tail
    /// mask holding those lanes (masked loads and stores keep everything
    /// inside `[0, r8)`). Clobbers r8, eax and the mask.
    fn for_vectors(
        &mut self,
        ptrs: &[AsmRegister64],
        mut body: impl FnMut(&mut Gen, bool) -> Result<(), IcedError>,
    ) -> Result<(), IcedError> {
        let lanes = self.w.lanes() as i32;
        let mut full = self.a.create_label();
        let mut tail = self.a.create_label();
        let mut done = self.a.create_label();
        self.a.set_label(&mut full)?;
        self.a.cmp(r8, lanes)?;
        self.a.jb(tail)?;
        body(self, false)?;
        for &p in ptrs {
            self.a.add(p, self.w.bytes())?;
        }
        self.a.sub(r8, lanes)?;
        self.a.jmp(full)?;
        self.a.set_label(&mut tail)?;
        self.a.test(r8, r8)?;
        self.a.jz(done)?;
        self.tail_mask(r8d)?;
        body(self, true)?;
        self.a.set_label(&mut done)
    }

    /// Reduces vector 4 to its lane 0 with `op` (`vmaxps` or `vaddps`) in
    /// a fixed order, then broadcasts the result to every lane of it.
    /// Clobbers vector 1.
    fn horizontal(
        &mut self,
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
        let a = &mut self.a;
        if self.w == Width::Zmm {
            a.vextractf64x4(ymm1, zmm4, 1)?;
            op_y(a, ymm4, ymm4, ymm1)?;
        }
        a.vextractf128(xmm1, ymm4, 1)?;
        op(a, xmm4, xmm4, xmm1)?;
        a.vpermilps(xmm1, xmm4, 0x4E)?;
        op(a, xmm4, xmm4, xmm1)?;
        a.vpermilps(xmm1, xmm4, 0xB1)?;
        op(a, xmm4, xmm4, xmm1)?;
        match self.w {
            Width::Zmm => a.vbroadcastss(zmm4, xmm4),
            Width::Ymm => a.vbroadcastss(ymm4, xmm4),
        }
    }

    /// Vector 1 = `exp(vector 1)`; clobbers vectors 2 and 3.
    fn exp(&mut self) -> Result<(), IcedError> {
        // clamp, NaN-preserving (the argument is the second source)
        let lo = self.kr(C_LO, 2)?;
        self.vmaxps(1, lo, V::R(1))?;
        let hi = self.kr(C_HI, 2)?;
        self.vminps(1, hi, V::R(1))?;
        // n = round(x · log2 e)
        self.vmulps(2, 1, self.k(C_LOG2E))?;
        self.round(2, 2)?;
        // r = x - n·ln2_hi - n·ln2_lo
        self.vfnmadd231ps(1, 2, self.k(C_LN2_HI))?;
        self.vfnmadd231ps(1, 2, self.k(C_LN2_LO))?;
        // p(r) by Horner, then e^r = p·r² + r + 1
        self.mov(3, self.k(C_POLY))?;
        for c in 1..EXP_POLY.len() {
            self.vfmadd213ps(3, 1, self.k(C_POLY + c))?;
        }
        self.vmulps(3, 3, V::R(1))?; // p·r
        self.vfmadd213ps(3, 1, V::R(1))?; // p·r² + r
        self.vaddps(3, 3, self.k(C_ONE))?;
        // · 2^n
        match self.w {
            Width::Zmm => self.a.vscalefps(zmm1, zmm3, zmm2),
            Width::Ymm => {
                // n ∈ [-150, 128] after the clamp: 2^n as two factors
                // 2^n1 · 2^n2 with n1 = n >> 1, n2 = n - n1 in [-75, 64],
                // each a normal float built in the exponent field (n + 127
                // << 23 = (n << 23) + bits(1.0)). e^r ∈ [2^-½, 2^½], so
                // e^r · 2^n1 is exact and the one rounding is the second
                // product's — into the subnormals or to infinity as
                // `vscalefps` rounds: the same bits as the `Zmm` form.
                let a = &mut self.a;
                a.vcvtps2dq(ymm2, ymm2)?;
                a.vpsrad(ymm1, ymm2, 1)?;
                a.vpsubd(ymm2, ymm2, ymm1)?;
                a.vpslld(ymm1, ymm1, 23)?;
                a.vpslld(ymm2, ymm2, 23)?;
                self.vpaddd(1, 1, self.k(C_ONE))?;
                self.vpaddd(2, 2, self.k(C_ONE))?;
                self.vmulps(3, 3, V::R(1))?;
                self.vmulps(1, 3, V::R(2))
            }
        }
    }

    /// Vector 0 = exact GELU of vector 0, `x/2 · (1 + erf(u))` with `u =
    /// x/√2`, from erfc alone: the bracket is `erfc(|u|)` for `u < 0` and
    /// `2 - erfc(|u|)` otherwise, and the Numerical Recipes fit `erfc(a) =
    /// t·exp(-a² + Q(t))`, `t = 1/(1 + a/2)`, has a fractional error below
    /// 1.2e-7 for every `a ≥ 0` — so, unlike `erf` itself, GELU needs no
    /// Taylor branch near 0 (the bracket is near 1 there), which saves a
    /// third of the work of `codegen/math.rs`'s form. `a² = x²/2` is an
    /// exact two-part sum from `x` clamped to ±14 (exp amplifies an error
    /// in it by `a²`). Clobbers vectors 1..3 and 5..14 (4 is the `Ymm`
    /// tail mask) and, at `Zmm`, `k2`; constants are data ([`Gen::data`])
    /// besides exp's.
    fn gelu(&mut self) -> Result<(), IcedError> {
        use crate::codegen::math::ERFCC;
        // 5 = u = x/√2, 6 = a = min(|u|, 10) (NaN kept: second source)
        let c = self.data(std::f32::consts::FRAC_1_SQRT_2);
        self.vmulps(5, 0, c)?;
        let abs = self.data_bits(0x7fff_ffff);
        self.vandps(6, 5, abs)?;
        self.load_data(12, 10.0)?;
        self.vminps(6, 12, V::R(6))?;
        // 7 = clamp(x, -14, 14); 8 + 9 = its square, exact (hi, lo)
        self.load_data(12, 14.0)?;
        self.vminps(7, 12, V::R(0))?;
        self.load_data(12, -14.0)?;
        self.vmaxps(7, 12, V::R(7))?;
        self.vmulps(8, 7, V::R(7))?;
        self.mov(9, V::R(8))?;
        self.vfmsub231ps(9, 7, V::R(7))?;
        // 7 + 8 = a² = x²/2
        let half = self.data(0.5);
        self.vmulps(7, 8, half)?;
        self.vmulps(8, 9, half)?;
        // 10 = t = 1/(1 + a/2): the reciprocal estimate (2^-14 at Zmm,
        // 2^-12 at Ymm) and one Newton step, t = r + r·(1 - d·r), to about
        // 2^-24
        self.load_data(13, 0.5)?;
        let one = self.k(C_ONE);
        self.vfmadd213ps(13, 6, one)?;
        match self.w {
            Width::Zmm => self.a.vrcp14ps(zmm(10), zmm(13))?,
            Width::Ymm => self.a.vrcpps(ymm(10), ymm(13))?,
        }
        self.mov(12, self.k(C_ONE))?;
        self.vfnmadd231ps(12, 13, V::R(10))?; // 1 - d·r
        self.vfmadd213ps(12, 10, V::R(10))?; // r·(1 - d·r) + r
        self.mov(10, V::R(12))?;
        // 11 = Q(t); 1 = Q - a²; 11 = erfc = t·exp(1)
        self.load_data(11, ERFCC[0])?;
        for &c in &ERFCC[1..] {
            let c = self.data(c);
            self.vfmadd213ps(11, 10, c)?;
        }
        self.vsubps(1, 11, V::R(7))?;
        self.vsubps(1, 1, V::R(8))?;
        self.exp()?;
        self.vmulps(11, 10, V::R(1))?;
        // 13 = the bracket: u < 0 ? erfc : 2 - erfc; 0 = x/2 · bracket
        self.vxorps(3, 3, V::R(3))?;
        self.load_data(1, 2.0)?;
        self.vsubps(13, 1, V::R(11))?;
        self.select_lt(13, (5, 3), 11, 13)?;
        self.vmulps(0, 0, half)?;
        self.vmulps(0, 0, V::R(13))
    }

    /// Vector 0 = GELU of vector 0 as the GEMM tiles' epilogue computes it:
    /// `x/2 + x/2 · erf(z)`, `z = x/√2` clamped to ±`GELU_ZMAX`, erf the
    /// rational `z·P(z²)/Q(z²)` of `tile.rs` — 17 FMA-pipe instructions
    /// and a division a vector, against [`Gen::gelu`]'s ~40 (which keeps a
    /// relative bound far into the negative tail, where this one's error
    /// is absolute). Clobbers vectors 5..8; constants are data.
    fn gelu_epilogue(&mut self) -> Result<(), IcedError> {
        use super::tile::{GELU_P, GELU_Q, GELU_ZMAX};
        let c = self.data(std::f32::consts::FRAC_1_SQRT_2);
        self.vmulps(5, 0, c)?;
        let hi = self.data(GELU_ZMAX);
        self.vminps(5, 5, hi)?;
        let lo = self.data(-GELU_ZMAX);
        self.vmaxps(5, 5, lo)?;
        self.vmulps(6, 5, V::R(5))?;
        for (d, poly) in [(7, &GELU_P), (8, &GELU_Q)] {
            self.load_data(d, poly[5])?;
            for &ck in poly[..5].iter().rev() {
                let ck = self.data(ck);
                self.vfmadd213ps(d, 6, ck)?;
            }
        }
        self.vmulps(7, 7, V::R(5))?;
        self.vdivps(7, 7, V::R(8))?;
        let half = self.data(0.5);
        self.vmulps(0, 0, half)?;
        self.vfmadd213ps(0, 7, V::R(0))
    }

    /// Vector 0 = `f(vector 0)`; clobbers vectors 1..3 (GELU more: see
    /// [`Gen::gelu`]).
    fn apply(&mut self, f: Func) -> Result<(), IcedError> {
        match f {
            Func::Gelu => self.gelu(),
            Func::GeluEpilogue => self.gelu_epilogue(),
            Func::GeluTanh => {
                // 1 = 2u = √(8/π)·x·(1 + 0.044715·x²), then -2u
                self.vmulps(1, 0, V::R(0))?;
                let k = self.data(0.044_715);
                self.vmulps(1, 1, k)?;
                let one = self.k(C_ONE);
                self.vaddps(1, 1, one)?;
                self.vmulps(1, 1, V::R(0))?;
                let c = self.data(-(8.0f64 / std::f64::consts::PI).sqrt() as f32);
                self.vmulps(1, 1, c)?;
                // x / (1 + exp(-2u))
                self.exp()?;
                self.vaddps(1, 1, self.k(C_ONE))?;
                self.vdivps(0, 0, V::R(1))
            }
            Func::Exp => {
                self.mov(1, V::R(0))?;
                self.exp()?;
                self.mov(0, V::R(1))
            }
            Func::Sigmoid | Func::Silu => {
                // exp(-x): negation by the sign bit is exact and keeps NaN
                self.vxorps(1, 0, self.k(C_SIGN))?;
                self.exp()?;
                self.vaddps(1, 1, self.k(C_ONE))?;
                if f == Func::Silu {
                    self.vdivps(0, 0, V::R(1))
                } else {
                    let one = self.kr(C_ONE, 2)?;
                    self.vdivps(0, one, V::R(1))
                }
            }
        }
    }
}

/// The signature of the row functions, `fn(src, dst, n)` (System V), for
/// the kernels that call them.
pub(crate) fn row_signature() -> cranelift_codegen::ir::Signature {
    use cranelift_codegen::ir::{AbiParam, Signature, types::I64};
    let mut sig = Signature::new(cranelift_codegen::isa::CallConv::SystemV);
    for _ in 0..3 {
        sig.params.push(AbiParam::new(I64));
    }
    sig
}

/// Assembles `f` at width `w`; the bytes are position-independent.
pub(crate) fn assemble(f: Func, w: Width) -> Result<Vec<u8>, String> {
    emit(f, w).map_err(|e| e.to_string())
}

fn emit(f: Func, w: Width) -> Result<Vec<u8>, IcedError> {
    // Ymm: vector 0 the value, 1..3 temporaries, 4 the tail mask, the exp
    // constants up to the fifth polynomial coefficient in 5..15 — except
    // for GELU, which needs 5..14 for itself and reads every constant from
    // memory
    let regs: &[usize] = match f {
        Func::Gelu | Func::GeluEpilogue => &[],
        _ => &[5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15],
    };
    let mut g = Gen::enter(w, 0, regs, 4)?;
    g.a.mov(r8, rdx)?;
    g.for_vectors(&[rdi, rsi], |g, tail| {
        g.load(0, g.at(rdi), tail)?;
        g.apply(f)?;
        g.store(g.at(rsi), 0, tail)
    })?;
    g.leave()
}

/// Assembles a whole softmax over one contiguous row, `fn(src: *const f32,
/// dst: *mut f32, n: usize)` with `n ≥ 1` (System V, as above; `src ==
/// dst` is allowed): the maximum, `dst[i] = exp(src[i] - max)` with their
/// sum, then `dst[i] *= 1/sum`, each pass a vector at a time with a masked
/// tail.
///
/// Long rows (Mobile-Former's tokens attending over 56×56 pixels) spent
/// their time in the f32x4 `exp`; this is the same `exp` as
/// [`assemble`]'s, one call per row, so the three passes stay in L1.
/// Lanes past the end are `-inf` for the maximum and excluded from the sum.
/// The sum's order depends only on `n` (and the width), so a row's result
/// does not depend on which thread computes it.
pub(crate) fn assemble_softmax_row(w: Width) -> Result<Vec<u8>, String> {
    emit_softmax_row(w).map_err(|e| e.to_string())
}

/// The longest row [`assemble_softmax_lanes`] takes (its element columns
/// live in vectors 4..10).
pub(crate) const LANES_MAX_LEN: usize = 7;

/// Assembles a softmax over `rows ≥ 1` contiguous rows of `len ≤`
/// [`LANES_MAX_LEN`] elements, `fn(src: *const f32, dst: *mut f32, rows:
/// usize)` (System V; `src == dst` allowed), in blocks of a vector's lanes
/// of rows (16 or 8), one row per lane.
///
/// A block is `len` contiguous vectors; element `j` of its rows is
/// gathered into one vector by `len` permutes reading those vectors from
/// memory (merge-masked `vpermps` at `Zmm`; `vpermps` and `vblendps` at
/// `Ymm`), so the maximum, `exp`, sum and reciprocal are one vector
/// operation per element column however short the rows are (Mobile-Former's
/// pixels attend over 3–6 tokens: 16-lane `exp` along a 3-element row
/// would waste 13 lanes). The inverse permutes build the output vectors,
/// stored whole. (`vgatherdps`/`vscatterdps` were no faster than f32x4
/// lane inserts here.) Permute indices live on the stack, built from
/// immediates on entry. The last `rows mod lanes` rows go through a
/// zero-filled stack copy and are copied back with masked stores, so
/// nothing outside the rows is read or written. Each row's arithmetic is
/// the same whatever its lane or block, so results do not depend on how the
/// caller splits the rows.
pub(crate) fn assemble_softmax_lanes(len: usize, w: Width) -> Result<Vec<u8>, String> {
    if len == 0 || len > LANES_MAX_LEN {
        return Err(format!(
            "softmax lanes: row length {len} not in 1..={LANES_MAX_LEN}"
        ));
    }
    emit_softmax_lanes(len, w).map_err(|e| e.to_string())
}

/// Lanes `r` (of `n`) of element column `j` that come from block vector
/// `k`.
fn gather_mask(n: usize, len: usize, j: usize, k: usize) -> u32 {
    (0..n)
        .filter(|r| (r * len + j) / n == k)
        .fold(0, |m, r| m | 1 << r)
}

/// Lanes `p` (of `n`) of output vector `k` that come from element column
/// `j`.
fn scatter_mask(n: usize, len: usize, k: usize, j: usize) -> u32 {
    (0..n)
        .filter(|p| (n * k + p) % len == j)
        .fold(0, |m, p| m | 1 << p)
}

/// `d = permute(indices in vector 13, s)` on the lanes of `mask` (16 or 8
/// bits): a merge-masked `vpermps` at `Zmm` (skipping empty masks); at
/// `Ymm`, a `vpermps` into `d` when `first` (its other lanes are written by
/// later calls), else into vector 15 and blended in. Returns whether `d`
/// has been written.
fn permute_masked(g: &mut Gen, d: usize, mask: u32, s: V, first: bool) -> Result<bool, IcedError> {
    let full = (1u32 << g.w.lanes()) - 1;
    let a = &mut g.a;
    match (g.w, mask, s) {
        (_, 0, _) => return Ok(!first),
        (Width::Zmm, m, s) => {
            let dst = if m == full {
                zmm(d)
            } else {
                a.mov(eax, m)?;
                a.kmovw(k1, eax)?;
                zmm(d).k1()
            };
            match s {
                V::R(r) => a.vpermps(dst, zmm13, zmm(r))?,
                V::M(at) => a.vpermps(dst, zmm13, at)?,
            }
        }
        (Width::Ymm, m, s) => {
            let t = if first { d } else { 15 };
            match s {
                V::R(r) => a.vpermps(ymm(t), ymm13, ymm(r))?,
                V::M(at) => a.vpermps(ymm(t), ymm13, at)?,
            }
            if !first {
                a.vblendps(ymm(d), ymm(d), ymm15, m)?;
            }
        }
    }
    Ok(true)
}

/// One block of rows from `src` to `dst` (`len` vectors each). Gather
/// indices at `[rsp + B·j]`, scatter indices at `[rsp + B·(len + k)]` (B
/// the vector bytes); element columns in vectors 4.., max in 11, sum in
/// 12, indices in 13, an output vector in 14.
fn lanes_block(
    g: &mut Gen,
    len: usize,
    src: AsmRegister64,
    dst: AsmRegister64,
) -> Result<(), IcedError> {
    let (n, b) = (g.w.lanes(), g.w.bytes());
    let col = |j: usize| 4 + j;
    for j in 0..len {
        g.mov(13, g.mem(rsp + b * j as i32))?;
        let mut written = false;
        for k in 0..len {
            let m = gather_mask(n, len, j, k);
            let from = g.mem(src + b * k as i32);
            written = permute_masked(g, col(j), m, from, !written)?;
        }
    }
    g.mov(11, V::R(col(0)))?;
    for j in 1..len {
        g.vmaxps(11, 11, V::R(col(j)))?;
    }
    for j in 0..len {
        g.vsubps(1, col(j), V::R(11))?;
        g.exp()?;
        g.mov(col(j), V::R(1))?;
    }
    g.mov(12, V::R(col(0)))?;
    for j in 1..len {
        g.vaddps(12, 12, V::R(col(j)))?;
    }
    let one = g.kr(C_ONE, 1)?;
    g.vdivps(12, one, V::R(12))?;
    for j in 0..len {
        g.vmulps(col(j), col(j), V::R(12))?;
    }
    for k in 0..len {
        g.mov(13, g.mem(rsp + b * (len + k) as i32))?;
        let mut written = false;
        for j in 0..len {
            let m = scatter_mask(n, len, k, j);
            written = permute_masked(g, 14, m, V::R(col(j)), !written)?;
        }
        g.store(g.at(dst + b * k as i32), 14, false)?;
    }
    Ok(())
}

/// The tail mask = the lanes of vector `k` among the first `eax` elements
/// (`r11d` is 0); clobbers ecx, r8d.
fn count_mask(g: &mut Gen, k: usize) -> Result<(), IcedError> {
    let n = g.w.lanes();
    let a = &mut g.a;
    a.mov(ecx, eax)?;
    a.sub(ecx, (n * k) as i32)?;
    a.cmovl(ecx, r11d)?;
    match g.w {
        Width::Zmm => {
            a.mov(r8d, 0xFFFFu32)?;
            a.bzhi(r8d, r8d, ecx)?;
            a.kmovw(k1, r8d)
        }
        // ecx may be ≥ 8 here: every lane
        Width::Ymm => g.tail_mask(ecx),
    }
}

fn emit_softmax_lanes(len: usize, w: Width) -> Result<Vec<u8>, IcedError> {
    let (n, b) = (w.lanes(), w.bytes());
    // stack frame (a leaf: no alignment needed): gather indices, scatter
    // indices, tail input copy, tail output copy, `len` vectors each
    let v = b * len as i32;
    // Ymm: every register is taken, so the constants stay in memory; the
    // tail mask in vector 0
    let mut g = Gen::enter(w, 4 * v, &[], 0)?;
    for j in 0..len {
        for r in 0..n {
            let at = b * j as i32 + 4 * r as i32;
            g.a.mov(dword_ptr(rsp + at), ((r * len + j) % n) as u32)?;
        }
    }
    for k in 0..len {
        for p in 0..n {
            let at = v + b * k as i32 + 4 * p as i32;
            g.a.mov(dword_ptr(rsp + at), ((n * k + p) / len) as u32)?;
        }
    }

    let mut full = g.a.create_label();
    let mut tail = g.a.create_label();
    let mut done = g.a.create_label();
    g.a.set_label(&mut full)?;
    g.a.cmp(rdx, n as i32)?;
    g.a.jb(tail)?;
    lanes_block(&mut g, len, rdi, rsi)?;
    g.a.add(rdi, v)?;
    g.a.add(rsi, v)?;
    g.a.sub(rdx, n as i32)?;
    g.a.jmp(full)?;
    g.a.set_label(&mut tail)?;
    g.a.test(rdx, rdx)?;
    g.a.jz(done)?;
    // the last rows·len elements, through zero-filled copies on the stack
    g.a.imul_3(eax, edx, len as i32)?;
    g.a.xor(r11d, r11d)?;
    for k in 0..len {
        count_mask(&mut g, k)?;
        g.load(13, g.at(rdi + b * k as i32), true)?;
        g.store(g.at(rsp + 2 * v + b * k as i32), 13, false)?;
    }
    g.a.lea(r9, ptr(rsp + 2 * v))?;
    g.a.lea(r10, ptr(rsp + 3 * v))?;
    lanes_block(&mut g, len, r9, r10)?;
    g.a.imul_3(eax, edx, len as i32)?;
    for k in 0..len {
        count_mask(&mut g, k)?;
        g.mov(13, g.mem(rsp + 3 * v + b * k as i32))?;
        g.store(g.at(rsi + b * k as i32), 13, true)?;
    }
    g.a.set_label(&mut done)?;
    g.leave()
}

fn emit_softmax_row(w: Width) -> Result<Vec<u8>, IcedError> {
    // Ymm: vector 0 the tail mask, 1..3 exp's, 4 the running max or sum, 5
    // the max; the constants up to the fourth coefficient in 6..15
    let mut g = Gen::enter(w, 0, &[6, 7, 8, 9, 10, 11, 12, 13, 14, 15], 0)?;

    // pass 1: vector 4 = max over the row, in every lane
    g.a.mov(rcx, rdi)?;
    g.a.mov(r8, rdx)?;
    g.mov(4, g.k(C_NINF))?;
    g.for_vectors(&[rcx], |g, tail| {
        if tail {
            // lanes past the row are -inf
            match g.w {
                Width::Zmm => {
                    g.mov(1, g.k(C_NINF))?;
                    g.a.vmovups(zmm1.k1(), zmmword_ptr(rcx))?;
                }
                Width::Ymm => {
                    g.load(1, g.at(rcx), true)?;
                    let ninf = g.kr(C_NINF, 2)?;
                    let m = g.mask;
                    g.a.vblendvps(ymm1, ymm(ninf), ymm1, ymm(m))?;
                }
            }
            g.vmaxps(4, 4, V::R(1))
        } else {
            g.vmaxps(4, 4, g.mem(rcx))
        }
    })?;
    g.horizontal(CodeAssembler::vmaxps, CodeAssembler::vmaxps)?;
    g.mov(5, V::R(4))?;

    // pass 2: dst = exp(src - max), vector 4 = Σ dst
    g.a.mov(rcx, rdi)?;
    g.a.mov(r9, rsi)?;
    g.a.mov(r8, rdx)?;
    g.vxorps(4, 4, V::R(4))?;
    g.for_vectors(&[rcx, r9], |g, tail| {
        g.load(1, g.at(rcx), tail)?;
        g.vsubps(1, 1, V::R(5))?;
        g.exp()?;
        g.store(g.at(r9), 1, tail)?;
        match (tail, g.w) {
            (false, _) => g.vaddps(4, 4, V::R(1)),
            (true, Width::Zmm) => g.a.vaddps(zmm4.k1(), zmm4, zmm1),
            (true, Width::Ymm) => {
                // the lanes past the row add +0: the sum is unchanged
                let m = g.mask;
                g.vandps(1, 1, V::R(m))?;
                g.vaddps(4, 4, V::R(1))
            }
        }
    })?;
    g.horizontal(CodeAssembler::vaddps, CodeAssembler::vaddps)?;
    // one division, then multiplies (as the Cranelift form)
    let one = g.kr(C_ONE, 1)?;
    g.vdivps(4, one, V::R(4))?;

    // pass 3: dst *= 1/sum
    g.a.mov(r9, rsi)?;
    g.a.mov(r8, rdx)?;
    g.for_vectors(&[r9], |g, tail| {
        if tail {
            g.load(1, g.at(r9), true)?;
            g.vmulps(1, 1, V::R(4))?;
        } else {
            g.vmulps(1, 4, g.mem(r9))?;
        }
        g.store(g.at(r9), 1, tail)
    })?;
    g.leave()
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
/// channel per pass left it L2-bound (the f32x4 form in `kernels/m2f.rs`,
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
    let mut g = Gen::enter(Width::Zmm, 0, &[], 0)?;
    for i in 0..cb {
        for t in 0..m {
            g.a.vxorps(acc(i, t), acc(i, t), acc(i, t))?;
        }
    }
    // row t of p and row i of x are 4·t·l and 4·i·l bytes past the
    // walking pointers
    let row = |t: usize| (4 * t * l) as i32;
    g.a.mov(r8, l as u64)?;
    g.for_vectors(&[rdi, rsi], |g, masked| {
        for i in 0..cb {
            if masked {
                g.a.vmovups(xr(i).k1().z(), zmmword_ptr(rdi + row(i)))?;
            } else {
                g.a.vmovups(xr(i), zmmword_ptr(rdi + row(i)))?;
            }
        }
        for t in 0..m {
            if masked {
                g.a.vmovups(zmm1.k1().z(), zmmword_ptr(rsi + row(t)))?;
                for i in 0..cb {
                    g.a.vfmadd231ps(acc(i, t), xr(i), zmm1)?;
                }
            } else {
                for i in 0..cb {
                    g.a.vfmadd231ps(acc(i, t), xr(i), zmmword_ptr(rsi + row(t)))?;
                }
            }
        }
        Ok(())
    })?;
    for i in 0..cb {
        for t in 0..m {
            // halves, quarters, then pairs: a fixed order (the upper half
            // of zmm1 after the first add is never read)
            g.a.vextractf64x4(ymm1, acc(i, t), 1)?;
            g.a.vaddps(zmm1, zmm1, acc(i, t))?;
            g.a.vextractf128(xmm2, ymm1, 1)?;
            g.a.vaddps(xmm1, xmm1, xmm2)?;
            g.a.vpermilps(xmm2, xmm1, 0x4E)?;
            g.a.vaddps(xmm1, xmm1, xmm2)?;
            g.a.vpermilps(xmm2, xmm1, 0xB1)?;
            g.a.vaddss(xmm1, xmm1, xmm2)?;
            let at = (4 * (t * c + i)) as i32;
            g.a.vmovss(xmm2, dword_ptr(rdx + at))?;
            if twice {
                g.a.vaddss(xmm2, xmm2, xmm2)?;
            }
            g.a.vmulss(xmm1, xmm1, xmm2)?;
            g.a.vmovss(dword_ptr(rcx + at), xmm1)?;
        }
    }
    g.leave()
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
    let mut g = Gen::enter(Width::Zmm, 0, &[], 0)?;
    g.a.mov(eax, scale.to_bits())?;
    g.a.vpbroadcastd(zmm(K_SCALE), eax)?;
    g.for_vectors(&[rdi, rsi], |g, masked| {
        let load_y = |a: &mut CodeAssembler, src: AsmRegister64| {
            if masked {
                a.vmovups(zmm0.k1().z(), zmmword_ptr(src))
            } else {
                a.vmovups(zmm0, zmmword_ptr(src))
            }
        };
        // scores over the head's channels
        for t in 0..m {
            g.a.vxorps(s(t), s(t), s(t))?;
        }
        g.a.mov(r9, rdi)?;
        g.a.mov(r10, rdx)?;
        g.a.mov(r11, hc as u64)?;
        let mut scores = g.a.create_label();
        g.a.set_label(&mut scores)?;
        load_y(&mut g.a, r9)?;
        for t in 0..m {
            g.a.vfmadd231ps(s(t), zmm0, dword_bcst(r10 + tok(t)))?;
        }
        g.a.add(r9, (4 * l) as i32)?;
        g.a.add(r10, 4)?;
        g.a.dec(r11)?;
        g.a.jnz(scores)?;
        // softmax across the score registers
        for t in 0..m {
            g.a.vmulps(s(t), s(t), zmm(K_SCALE))?;
        }
        g.a.vmovaps(zmm(MAX), s(0))?;
        for t in 1..m {
            g.a.vmaxps(zmm(MAX), zmm(MAX), s(t))?;
        }
        g.a.vxorps(zmm(SUM), zmm(SUM), zmm(SUM))?;
        for t in 0..m {
            g.a.vsubps(zmm1, s(t), zmm(MAX))?;
            g.exp()?;
            g.a.vmovaps(s(t), zmm1)?;
            g.a.vaddps(zmm(SUM), zmm(SUM), zmm1)?;
        }
        g.a.vdivps(zmm(SUM), zmm(ZMM_K + C_ONE), zmm(SUM))?;
        for t in 0..m {
            g.a.vmulps(s(t), s(t), zmm(SUM))?;
        }
        // y + Σ_t a_t·v_t, channel by channel
        g.a.mov(r9, rdi)?;
        g.a.mov(rax, rsi)?;
        g.a.mov(r10, rcx)?;
        g.a.mov(r11, hc as u64)?;
        let mut values = g.a.create_label();
        g.a.set_label(&mut values)?;
        load_y(&mut g.a, r9)?;
        for t in 0..m {
            g.a.vfmadd231ps(zmm0, s(t), dword_bcst(r10 + tok(t)))?;
        }
        if masked {
            g.a.vmovups(zmmword_ptr(rax).k1(), zmm0)?;
        } else {
            g.a.vmovups(zmmword_ptr(rax), zmm0)?;
        }
        g.a.add(r9, (4 * l) as i32)?;
        g.a.add(rax, (4 * l) as i32)?;
        g.a.add(r10, 4)?;
        g.a.dec(r11)?;
        g.a.jnz(values)
    })?;
    g.leave()
}

/// The instruction bytes of an assembled function: up to and including
/// its `ret` (the one every function ends with); data constants
/// ([`Gen::data`]) follow it.
#[cfg(test)]
pub(crate) fn instructions(code: &[u8]) -> &[u8] {
    use iced_x86::{Decoder, DecoderOptions, Mnemonic};
    let mut d = Decoder::new(64, code, DecoderOptions::NONE);
    for ins in &mut d {
        if ins.mnemonic() == Mnemonic::Ret {
            return &code[..ins.next_ip() as usize];
        }
    }
    code
}

/// Decodes `code` (an AVX2 function, named `what`) and panics on any
/// instruction an AVX2-only CPU would fault on: EVEX encodings, zmm or
/// opmask registers, vector registers above 15. Returns the instruction
/// count.
#[cfg(test)]
pub(crate) fn assert_vex_only(what: &str, code: &[u8]) -> usize {
    use iced_x86::{Decoder, DecoderOptions, EncodingKind, OpKind};
    let mut checked = 0;
    for ins in &mut Decoder::new(64, instructions(code), DecoderOptions::NONE) {
        assert!(!ins.is_invalid(), "{what}");
        assert!(
            matches!(ins.encoding(), EncodingKind::Legacy | EncodingKind::VEX),
            "{what}: {:?} is {:?}",
            ins.code(),
            ins.encoding()
        );
        for i in 0..ins.op_count() {
            if ins.op_kind(i) == OpKind::Register {
                let r = ins.op_register(i);
                assert!(
                    !r.is_zmm() && !r.is_k() && (!r.is_vector_register() || r.number() < 16),
                    "{what}: {:?} names {r:?}",
                    ins.code()
                );
            }
        }
        checked += 1;
    }
    checked
}

#[cfg(test)]
mod tests {
    use super::*;

    const WIDTHS: [Width; 2] = [Width::Zmm, Width::Ymm];

    /// Every function of `w`: the element-wise ones, the row softmax and
    /// the short-row softmax of every length.
    fn all(w: Width) -> Vec<(String, Vec<u8>)> {
        use crate::ukernels::Spec;
        let mut out = Vec::new();
        for f in [
            Func::Exp,
            Func::Sigmoid,
            Func::Silu,
            Func::Gelu,
            Func::GeluEpilogue,
            Func::GeluTanh,
        ] {
            out.push((Spec::Unary(f, w).label(), assemble(f, w).unwrap()));
        }
        out.push((
            Spec::SoftmaxRow(w).label(),
            assemble_softmax_row(w).unwrap(),
        ));
        for len in 1..=LANES_MAX_LEN {
            out.push((
                Spec::SoftmaxLanes { len, width: w }.label(),
                assemble_softmax_lanes(len, w).unwrap(),
            ));
        }
        out
    }

    #[test]
    fn every_function_assembles_and_ends_with_vzeroupper_ret() {
        for w in WIDTHS {
            for (key, code) in all(w) {
                let code = instructions(&code);
                assert_eq!(&code[code.len() - 4..], &[0xC5, 0xF8, 0x77, 0xC3], "{key}");
            }
            assert!(assemble_softmax_lanes(LANES_MAX_LEN + 1, w).is_err());
            assert!(assemble_softmax_lanes(0, w).is_err());
        }
    }

    /// No instruction of any AVX2 function is EVEX-encoded or names a
    /// register above 15 (either would fault on the AVX2 CPUs these are
    /// for): every function is decoded and each instruction checked.
    #[test]
    fn avx2_functions_have_no_avx512_encodings() {
        let checked: usize = all(Width::Ymm)
            .iter()
            .map(|(key, code)| assert_vex_only(key, code))
            .sum();
        assert!(checked > 1000, "{checked}");
    }

    /// The bridge functions assemble and end in `vzeroupper; ret` at the
    /// shapes the zoo uses and the limits, and refuse what does not fit.
    #[test]
    fn bridge_functions_assemble() {
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
