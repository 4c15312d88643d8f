//! Inlined approximations of the transcendental functions (and sin/cos), emitted as
//! Cranelift IR for one lane type at a time (`F32` scalar or `F32X4`).
//!
//! Cranelift has no vector `exp`/`log`/`tanh`, and a call per element to the
//! host's `expf` would dominate these memory-bound kernels, so each function
//! is a range reduction plus a polynomial, written once and emitted for both
//! lane types with the same operations (so a vector body and its scalar tail
//! agree bit for bit). Clamps use compare+select rather than `fmin`/`fmax`,
//! which Cranelift expands into NaN-propagating sequences; the selects are
//! written so that a NaN input still yields NaN.
//!
//! Maximum relative errors against `f64` over dense sweeps (2·10⁶ points),
//! measured by `backends/tests/math.rs` on an AVX-512 Xeon with FMA; the
//! test fails if one exceeds its documented bound. The assembled AVX-512
//! forms of `exp`, `sigmoid`, SiLU and GELU (`ukernels/vector.rs`) are held
//! to the same bounds (measured: 8.4e-8, 1.5e-7, 1.7e-7, 2.1e-6; the
//! assembled GELU uses only this file's erfc branch, see `Gen::gelu`):
//!
//! | function | domain swept | measured | documented bound |
//! |---|---|---|---|
//! | `exp` | [-87, 88] | 8.3e-8 | [`EXP_MAX_REL`] = 1.5e-7 |
//! | `log` | [1e-30, 1e30] | 7.8e-8 | [`LOG_MAX_REL`] = 1.5e-7 |
//! | `tanh` | [-20, 20] | 1.3e-7 | [`TANH_MAX_REL`] = 2e-7 |
//! | `sigmoid` | [-80, 20] | 1.5e-7 | [`SIGMOID_MAX_REL`] = 2.5e-7 |
//! | SiLU `x/(1+e^-x)` | [-80, 20] | 1.7e-7 | [`SIGMOID_MAX_REL`] = 2.5e-7 |
//! | `erf` | [-6, 6] | 1.7e-7 | [`ERF_MAX_REL`] = 2.5e-7 |
//! | `gelu` | [-6, 12] | 2.1e-6 | [`GELU_MAX_REL`] = 3e-6 |
//! | `sin`, `cos` (absolute) | [-8192, 8192] | 9.2e-8 | [`SIN_COS_MAX_ABS`] = 1.5e-7 |
//! | `sin`, `cos` (|y| ≥ 1e-3) | [-π, π] | 1.3e-7 | [`SIN_COS_MAX_REL`] = 2.5e-7 |
//!
//! In GELU's far negative tail (x < -6, |gelu| < 1e-8) the f32 rounding of
//! the argument of `exp(-x²/2 …)`, about 19 there, bounds the relative error
//! near 2e-5 (tanh-form GELU likewise: 1.2e-5 on [-12, 12]) — immaterial
//! next to the tensor-level tolerance of 1e-4 of the largest magnitude.
//! Without native FMA, `x²` is not split into two parts and the `erf` and
//! `gelu` tails lose a few more bits.

// Polynomial coefficients are written as their sources publish them (Cephes,
// Numerical Recipes), so they can be checked against those; the compiler
// rounds them to the nearest f32, which is what the kernels use.
#![allow(clippy::excessive_precision)]

use cranelift_codegen::ir::condcodes::FloatCC;
use cranelift_codegen::ir::{Endianness, InstBuilder, MemFlagsData, Type, Value, types};

use super::{Emitter, V4};

/// Documented bound on `exp`'s relative error (checked by a test).
pub const EXP_MAX_REL: f64 = 1.5e-7;
/// Documented bound on `log`'s relative error (checked by a test).
pub const LOG_MAX_REL: f64 = 1.5e-7;
/// Documented bound on `tanh`'s relative error (checked by a test).
pub const TANH_MAX_REL: f64 = 2e-7;
/// Documented bound on `sigmoid`'s relative error (checked by a test).
pub const SIGMOID_MAX_REL: f64 = 2.5e-7;
/// Documented bound on `erf`'s relative error (checked by a test).
pub const ERF_MAX_REL: f64 = 2.5e-7;
/// Documented bound on exact GELU's relative error on [-6, 12] (checked by a test).
pub const GELU_MAX_REL: f64 = 3e-6;
/// Documented bound on `sin`'s and `cos`'s absolute error on |x| ≤ 2^13
/// (checked by a test; see `codegen::math::sin_cos`).
pub const SIN_COS_MAX_ABS: f64 = 1.5e-7;
/// Documented bound on `sin`'s and `cos`'s relative error on |x| ≤ π where
/// the result is at least 1e-3 in magnitude (checked by a test).
pub const SIN_COS_MAX_REL: f64 = 2.5e-7;

/// `1.5 · 2^23`: adding it rounds an `f32` of magnitude below `2^22` to an
/// integer (in the current, round-to-nearest-even mode), and the sum's low
/// mantissa bits hold that integer.
const ROUND_MAGIC: f32 = 12_582_912.0;

fn int_ty(ty: Type) -> Type {
    if ty == V4 { types::I32X4 } else { types::I32 }
}

fn lane_flags(ty: Type) -> MemFlagsData {
    // A bitcast between vector types must say how lanes map to bytes.
    if ty.is_vector() {
        MemFlagsData::new().with_endianness(Endianness::Little)
    } else {
        MemFlagsData::new()
    }
}

/// Reinterprets float lanes as `i32` lanes.
fn to_bits(e: &mut Emitter, ty: Type, x: Value) -> Value {
    e.b.ins().bitcast(int_ty(ty), lane_flags(ty), x)
}

/// Reinterprets `i32` lanes as float lanes.
fn from_bits(e: &mut Emitter, ty: Type, x: Value) -> Value {
    e.b.ins().bitcast(ty, lane_flags(ty), x)
}

/// An `i32` constant in every lane.
fn ik(e: &mut Emitter, ty: Type, x: i32) -> Value {
    e.kc_i32(int_ty(ty), x)
}

/// `cond(a, b) ? x : y`, lane-wise.
pub fn select_cmp(
    e: &mut Emitter,
    ty: Type,
    cc: FloatCC,
    a: Value,
    b: Value,
    x: Value,
    y: Value,
) -> Value {
    let c = e.b.ins().fcmp(cc, a, b);
    select_mask(e, ty, c, x, y)
}

/// `mask ? x : y` where `mask` is an `fcmp` result of lane type `ty`.
pub fn select_mask(e: &mut Emitter, ty: Type, mask: Value, x: Value, y: Value) -> Value {
    if ty == V4 {
        let m = e.b.ins().bitcast(V4, lane_flags(V4), mask);
        e.b.ins().bitselect(m, x, y)
    } else {
        e.b.ins().select(mask, x, y)
    }
}

/// `x < lo ? lo : (x > hi ? hi : x)`; NaN stays NaN.
pub fn clamp(e: &mut Emitter, ty: Type, x: Value, lo: f32, hi: f32) -> Value {
    let l = e.kc(ty, lo);
    let h = e.kc(ty, hi);
    let x = select_cmp(e, ty, FloatCC::LessThan, x, l, l, x);
    select_cmp(e, ty, FloatCC::GreaterThan, x, h, h, x)
}

/// `max(x, 0)`, NaN-propagating like the interpreter: `x < 0 ? 0 : x`.
pub fn relu(e: &mut Emitter, ty: Type, x: Value) -> Value {
    let z = e.kc(ty, 0.0);
    select_cmp(e, ty, FloatCC::LessThan, x, z, z, x)
}

/// Horner evaluation `((c0·x + c1)·x + c2)…`, coefficients highest first.
fn horner(e: &mut Emitter, ty: Type, x: Value, coeffs: &[f32]) -> Value {
    let mut p = e.kc(ty, coeffs[0]);
    for &c in &coeffs[1..] {
        let k = e.kc(ty, c);
        p = e.mul_add(p, x, k);
    }
    p
}

/// `exp(x)`: Cody–Waite reduction `x = n·ln2 + r`, |r| ≤ ln2/2, the Cephes
/// `expf` polynomial for `e^r`, then `2^n` applied as two halves so that
/// results down to the subnormal range and up to overflow are right.
pub fn exp(e: &mut Emitter, ty: Type, x: Value) -> Value {
    // Beyond these bounds the result is 0 or inf anyway; the clamp keeps n small.
    let x = clamp(e, ty, x, -104.0, 89.0);
    let log2e = e.kc(ty, std::f32::consts::LOG2_E);
    let magic = e.kc(ty, ROUND_MAGIC);
    let t = e.b.ins().fmul(x, log2e);
    let y = e.b.ins().fadd(t, magic);
    let n = e.b.ins().fsub(y, magic);
    let c1 = e.kc(ty, -0.693_359_4);
    let c2 = e.kc(ty, 2.121_944_4e-4);
    let r = e.mul_add(n, c1, x);
    let r = e.mul_add(n, c2, r);
    let p = horner(
        e,
        ty,
        r,
        &[
            1.987_569_1e-4,
            1.398_2e-3,
            8.333_452e-3,
            4.166_579_6e-2,
            1.666_666_5e-1,
            5.000_000_1e-1,
        ],
    );
    let z = e.b.ins().fmul(r, r);
    let p = e.mul_add(p, z, r);
    let one = e.kc(ty, 1.0);
    let p = e.b.ins().fadd(p, one);
    // n as an integer: the low bits of y = n + 1.5·2^23.
    let yi = to_bits(e, ty, y);
    let magic_bits = ik(e, ty, ROUND_MAGIC.to_bits() as i32);
    let ni = e.b.ins().isub(yi, magic_bits);
    let n1 = e.b.ins().sshr_imm_s(ni, 1);
    let n2 = e.b.ins().isub(ni, n1);
    let bias = ik(e, ty, 127);
    let s1 = e.b.ins().iadd(n1, bias);
    let s1 = e.b.ins().ishl_imm_u(s1, 23);
    let s2 = e.b.ins().iadd(n2, bias);
    let s2 = e.b.ins().ishl_imm_u(s2, 23);
    let s1 = from_bits(e, ty, s1);
    let s2 = from_bits(e, ty, s2);
    let p = e.b.ins().fmul(p, s1);
    e.b.ins().fmul(p, s2)
}

/// Natural logarithm: the Cephes `logf` reduction to a mantissa in
/// [√½, √2) and its degree-9 polynomial; subnormal inputs are rescaled first.
/// `log(0) = -inf`, `log(x<0) = NaN`, `log(inf) = inf`, NaN stays NaN.
pub fn log(e: &mut Emitter, ty: Type, x0: Value) -> Value {
    let tiny = e.kc(ty, f32::MIN_POSITIVE);
    let scale = e.kc(ty, 8_388_608.0); // 2^23
    let scaled = e.b.ins().fmul(x0, scale);
    let small = e.b.ins().fcmp(FloatCC::LessThan, x0, tiny);
    let x = select_mask(e, ty, small, scaled, x0);
    let m23 = e.kc(ty, -23.0);
    let zero = e.kc(ty, 0.0);
    let adj = select_mask(e, ty, small, m23, zero);
    let xi = to_bits(e, ty, x);
    // exponent: ((bits >> 23) & 0xff) - 126, so that the mantissa is in [0.5, 1)
    let ex = e.b.ins().ushr_imm_u(xi, 23);
    let mask = ik(e, ty, 0xff);
    let ex = e.b.ins().band(ex, mask);
    let b126 = ik(e, ty, 126);
    let ex = e.b.ins().isub(ex, b126);
    let ef = e.b.ins().fcvt_from_sint(ty, ex);
    let ef = e.b.ins().fadd(ef, adj);
    let mmask = ik(e, ty, 0x807f_ffff_u32 as i32);
    let half = ik(e, ty, 0x3f00_0000);
    let mi = e.b.ins().band(xi, mmask);
    let mi = e.b.ins().bor(mi, half);
    let m = from_bits(e, ty, mi);
    // if m < √½: e -= 1, m = 2m - 1; else m = m - 1
    let sqrth = e.kc(ty, std::f32::consts::FRAC_1_SQRT_2);
    let lt = e.b.ins().fcmp(FloatCC::LessThan, m, sqrth);
    let one = e.kc(ty, 1.0);
    let dec = select_mask(e, ty, lt, one, zero);
    let ef = e.b.ins().fsub(ef, dec);
    let extra = select_mask(e, ty, lt, m, zero);
    let m = e.b.ins().fsub(m, one);
    let m = e.b.ins().fadd(m, extra);
    let z = e.b.ins().fmul(m, m);
    let p = horner(
        e,
        ty,
        m,
        &[
            7.037_683_6e-2,
            -1.151_461e-1,
            1.167_699_9e-1,
            -1.242_014_1e-1,
            1.424_932_3e-1,
            -1.666_805_8e-1,
            2.000_071_5e-1,
            -2.499_999_4e-1,
            3.333_333_1e-1,
        ],
    );
    let p = e.b.ins().fmul(p, m);
    let y = e.b.ins().fmul(p, z);
    let q1 = e.kc(ty, -2.121_944_4e-4);
    let y = e.mul_add(ef, q1, y);
    let mhalf = e.kc(ty, -0.5);
    let y = e.mul_add(z, mhalf, y);
    let r = e.b.ins().fadd(m, y);
    let q2 = e.kc(ty, 0.693_359_4);
    let r = e.mul_add(ef, q2, r);
    // special values
    let ninf = e.kc(ty, f32::NEG_INFINITY);
    let r = select_cmp(e, ty, FloatCC::Equal, x0, zero, ninf, r);
    let inf = e.kc(ty, f32::INFINITY);
    let r = select_cmp(e, ty, FloatCC::Equal, x0, inf, inf, r);
    let nan = e.kc(ty, f32::NAN);
    let r = select_cmp(e, ty, FloatCC::LessThan, x0, zero, nan, r);
    select_cmp(e, ty, FloatCC::Unordered, x0, x0, x0, r)
}

/// `1 / (1 + exp(-x))`.
pub fn sigmoid(e: &mut Emitter, ty: Type, x: Value) -> Value {
    let nx = e.b.ins().fneg(x);
    let ex = exp(e, ty, nx);
    let one = e.kc(ty, 1.0);
    let d = e.b.ins().fadd(one, ex);
    e.b.ins().fdiv(one, d)
}

/// `tanh(x)`: the Cephes `tanhf` odd polynomial for |x| < 0.625 (where
/// `1 - 2/(e^2x + 1)` would lose relative precision), that formula beyond.
pub fn tanh(e: &mut Emitter, ty: Type, x: Value) -> Value {
    let ax = e.b.ins().fabs(x);
    let z = e.b.ins().fmul(x, x);
    let p = horner(
        e,
        ty,
        z,
        &[
            -5.704_988_7e-3,
            2.063_908_9e-2,
            -5.373_971_6e-2,
            1.333_144_2e-1,
            -3.333_328_2e-1,
        ],
    );
    let pz = e.b.ins().fmul(p, z);
    let small = e.mul_add(pz, x, x);
    let two = e.kc(ty, 2.0);
    let a2 = e.b.ins().fmul(ax, two);
    let ex = exp(e, ty, a2);
    let one = e.kc(ty, 1.0);
    let d = e.b.ins().fadd(ex, one);
    let q = e.b.ins().fdiv(two, d);
    let big = e.b.ins().fsub(one, q);
    let nbig = e.b.ins().fneg(big);
    let zero = e.kc(ty, 0.0);
    let big = select_cmp(e, ty, FloatCC::LessThan, x, zero, nbig, big);
    let lim = e.kc(ty, 0.625);
    select_cmp(e, ty, FloatCC::LessThan, ax, lim, small, big)
}

/// Taylor coefficients of `erf(x)/x` in powers of `x²`, highest first:
/// `2/√π · (-1)^n / (n! (2n+1))` for n = 10 … 0. On |x| < 1 the first
/// omitted term is below 1.3e-8.
const ERF_TAYLOR: [f32; 11] = {
    const C: f64 = std::f64::consts::FRAC_2_SQRT_PI;
    let mut out = [0f32; 11];
    let mut n = 0;
    let mut fact = 1.0f64;
    while n < 11 {
        if n > 0 {
            fact *= n as f64;
        }
        let sign = if n % 2 == 0 { 1.0 } else { -1.0 };
        out[10 - n] = (C * sign / (fact * (2 * n + 1) as f64)) as f32;
        n += 1;
    }
    out
};

/// `x·x` as an unevaluated sum `hi + lo` (exact with FMA; `lo = 0` without).
fn square2(e: &mut Emitter, x: Value) -> (Value, Value) {
    let hi = e.b.ins().fmul(x, x);
    let lo = if e.fma {
        let nhi = e.b.ins().fneg(hi);
        e.b.ins().fma(x, x, nhi)
    } else {
        let z = e.b.func.dfg.value_type(x);
        let zero = e.b.ins().f32const(0.0);
        if z.is_vector() {
            e.b.ins().splat(z, zero)
        } else {
            zero
        }
    };
    (hi, lo)
}

/// The Numerical Recipes `erfcc` polynomial in `t = 1/(1 + a/2)`, highest
/// degree first: `erfc(a) ≈ t·exp(-a² + Q(t))`.
pub(crate) const ERFCC: [f32; 10] = [
    0.170_872_77,
    -0.822_152_23,
    1.488_515_9,
    -1.135_203_98,
    0.278_868_07,
    -0.186_288_06,
    0.096_784_18,
    0.374_091_96,
    1.000_023_7,
    -1.265_512_2,
];

/// For `a = |x|` and `a² = a2.0 + a2.1`: `(a·P(a²), erfc(a))` — the Taylor
/// value of `erf(a)`, good on a < 1, and the Numerical Recipes `erfcc`
/// Chebyshev fit (fractional error < 1.2e-7 everywhere), used on a ≥ 1.
/// `exp(-a²)` amplifies an error in `a²` by `a²`, hence the two-part square.
fn erf_parts(e: &mut Emitter, ty: Type, a: Value, a2: (Value, Value)) -> (Value, Value) {
    let p = horner(e, ty, a2.0, &ERF_TAYLOR);
    let small = e.b.ins().fmul(p, a);
    (small, erfc_part(e, ty, a, a2))
}

/// `erfc(a)` for `a = |x|` and `a² = a2.0 + a2.1` by the Numerical Recipes
/// fit (see [`erf_parts`]).
fn erfc_part(e: &mut Emitter, ty: Type, a: Value, a2: (Value, Value)) -> Value {
    let (a2, a2_lo) = a2;
    let one = e.kc(ty, 1.0);
    let half = e.kc(ty, 0.5);
    let d = e.mul_add(a, half, one);
    let t = e.b.ins().fdiv(one, d);
    let q = horner(e, ty, t, &ERFCC);
    let arg = e.b.ins().fsub(q, a2);
    let arg = e.b.ins().fsub(arg, a2_lo);
    let ex = exp(e, ty, arg);
    e.b.ins().fmul(t, ex)
}

/// The error function.
pub fn erf(e: &mut Emitter, ty: Type, x: Value) -> Value {
    let a = e.b.ins().fabs(x);
    // erf(10) is 1 in f32; the clamp keeps a² finite (inf - inf = NaN).
    let a = clamp(e, ty, a, 0.0, 10.0);
    let a2 = square2(e, a);
    let (small, erfc) = erf_parts(e, ty, a, a2);
    let one = e.kc(ty, 1.0);
    let big = e.b.ins().fsub(one, erfc);
    let lim = e.kc(ty, 1.0);
    let r = select_cmp(e, ty, FloatCC::LessThan, a, lim, small, big);
    let nr = e.b.ins().fneg(r);
    let zero = e.kc(ty, 0.0);
    select_cmp(e, ty, FloatCC::LessThan, x, zero, nr, r)
}

/// Exact GELU, `x/2 · (1 + erf(x/√2))`, from erfc alone: the bracket is
/// `erfc(|u|)` for `u = x/√2 < 0` (no cancellation in the far negative
/// tail) and `2 - erfc(|u|)` otherwise. The Numerical Recipes fit holds a
/// fractional error below 1.2e-7 for every `|u|`, and the bracket is near
/// 1 where `erf` itself would need its Taylor branch, so GELU skips that
/// branch (a third of the work). The assembled forms (`ukernels/vector.rs`)
/// compute the same.
pub fn gelu(e: &mut Emitter, ty: Type, x: Value) -> Value {
    let s = e.kc(ty, std::f32::consts::FRAC_1_SQRT_2);
    let u = e.b.ins().fmul(x, s);
    let a = e.b.ins().fabs(u);
    let a = clamp(e, ty, a, 0.0, 10.0);
    // u² = x²/2 from x itself, so that the rounding of x/√2 does not reach exp.
    let xc = clamp(e, ty, x, -14.0, 14.0);
    let (hi, lo) = square2(e, xc);
    let half = e.kc(ty, 0.5);
    let a2 = (e.b.ins().fmul(hi, half), e.b.ins().fmul(lo, half));
    let erfc = erfc_part(e, ty, a, a2);
    let two = e.kc(ty, 2.0);
    let zero = e.kc(ty, 0.0);
    let bp = e.b.ins().fsub(two, erfc);
    let br = select_cmp(e, ty, FloatCC::LessThan, u, zero, erfc, bp);
    let hx = e.b.ins().fmul(x, half);
    e.b.ins().fmul(hx, br)
}

/// tanh-form GELU: `x/2 · (1 + tanh(u))`, `u = √(2/π)·(x + 0.044715·x³)`,
/// computed as `x · sigmoid(2u)` (the same function) so that the bracket
/// does not cancel for negative x.
pub fn gelu_tanh(e: &mut Emitter, ty: Type, x: Value) -> Value {
    let x2 = e.b.ins().fmul(x, x);
    let k = e.kc(ty, 0.044_715);
    let one = e.kc(ty, 1.0);
    let inner = e.mul_add(x2, k, one);
    let inner = e.b.ins().fmul(inner, x);
    let c = e.kc(ty, (8.0f64 / std::f64::consts::PI).sqrt() as f32);
    let u2 = e.b.ins().fmul(inner, c);
    let s = sigmoid(e, ty, u2);
    e.b.ins().fmul(x, s)
}

/// `sin(x)` (`cos == false`) or `cos(x)`: `x = n·π/2 + r` with `n` rounded
/// to nearest and `π/2` split three ways as Cephes does (the first two parts
/// have few enough bits that `n·part` is exact for |n| < 2^16), so
/// |r| ≤ π/4; then the Cephes `sinf`/`cosf` polynomials on `r`, the pair
/// chosen and signed by the quadrant `n mod 4` (`cos(x) = sin(x + π/2)`: the
/// quadrant plus one). The reduction's error grows with |x| (about
/// `|n|·6e-15` in `r`); measured against f64 on |x| ≤ 2^13 the absolute
/// error stays below [`SIN_COS_MAX_ABS`]. Beyond |x| ≈ 6.6e6 the rounding
/// trick no longer gives the quadrant and the result is meaningless (f32
/// spacing there is already 0.5); ±inf and NaN give NaN.
pub fn sin_cos(e: &mut Emitter, ty: Type, x: Value, cos: bool) -> Value {
    let two_over_pi = e.kc(ty, std::f32::consts::FRAC_2_PI);
    let magic = e.kc(ty, ROUND_MAGIC);
    let t = e.b.ins().fmul(x, two_over_pi);
    let y = e.b.ins().fadd(t, magic);
    let n = e.b.ins().fsub(y, magic);
    // Cephes DP1..DP3 (for π/4) doubled: π/2 = P1 + P2 + P3.
    let p1 = e.kc(ty, -1.570_312_5);
    let p2 = e.kc(ty, -4.837_512_969_970_703_125e-4);
    let p3 = e.kc(ty, -7.549_789_954_891_882e-8);
    let r = e.mul_add(n, p1, x);
    let r = e.mul_add(n, p2, r);
    let r = e.mul_add(n, p3, r);
    let z = e.b.ins().fmul(r, r);
    // sin r = r + r·z·S(z)
    let ps = horner(
        e,
        ty,
        z,
        &[-1.951_529_589_1e-4, 8.332_160_873_6e-3, -1.666_665_461_1e-1],
    );
    let rz = e.b.ins().fmul(r, z);
    let sin_r = e.mul_add(rz, ps, r);
    // cos r = 1 - z/2 + z²·C(z)
    let pc = horner(
        e,
        ty,
        z,
        &[
            2.443_315_711_809_948e-5,
            -1.388_731_625_493_765e-3,
            4.166_664_568_298_827e-2,
        ],
    );
    let z2 = e.b.ins().fmul(z, z);
    let mhalf = e.kc(ty, -0.5);
    let one = e.kc(ty, 1.0);
    let c = e.mul_add(z, mhalf, one);
    let cos_r = e.mul_add(z2, pc, c);
    // the quadrant as an integer: the low bits of y = n + 1.5·2^23
    let yi = to_bits(e, ty, y);
    let magic_bits = ik(e, ty, ROUND_MAGIC.to_bits() as i32);
    let mut q = e.b.ins().isub(yi, magic_bits);
    if cos {
        let k1 = ik(e, ty, 1);
        q = e.b.ins().iadd(q, k1);
    }
    // odd quadrants take the other polynomial: mask = -(q & 1)
    let k1 = ik(e, ty, 1);
    let odd = e.b.ins().band(q, k1);
    let mask = e.b.ins().ineg(odd);
    let sb = to_bits(e, ty, sin_r);
    let cb = to_bits(e, ty, cos_r);
    let pick_c = e.b.ins().band(cb, mask);
    // band + bnot rather than band_not: the scalariser maps these lane-wise
    let nmask = e.b.ins().bnot(mask);
    let pick_s = e.b.ins().band(sb, nmask);
    let v = e.b.ins().bor(pick_c, pick_s);
    // quadrants 2 and 3 are negated: sign bit = (q & 2) << 30
    let k2 = ik(e, ty, 2);
    let neg = e.b.ins().band(q, k2);
    let neg = e.b.ins().ishl_imm_u(neg, 30);
    let v = e.b.ins().bxor(v, neg);
    from_bits(e, ty, v)
}
