//! Accuracy of the inlined approximations (exp, log, tanh, sigmoid, SiLU,
//! erf and the GELUs built on them) against `f64`, over dense sweeps. Each
//! bound is the one documented in `codegen/math.rs`; the test prints what it
//! measured. Every check runs at every level the host has: the assembled
//! AVX-512 and AVX2 forms (`ukernels/vector.rs`: exp, sigmoid, SiLU, GELU) and
//! the Cranelift f32x4 forms.

mod common;

use kiln_backends::testing::{
    ERF_MAX_REL, EXP_MAX_REL, GELU_MAX_REL, LOG_MAX_REL, SIGMOID_MAX_REL, SIN_COS_MAX_ABS,
    SIN_COS_MAX_REL, TANH_MAX_REL,
};
use kiln_backends::{CompileOptions, TileLevel, compile};
use kiln_ir::{Graph, Model, Op, Tensor, TensorType, UnaryOp, WeightStore};

/// The levels to test: f32x4 and the assembled ones this host runs.
fn levels() -> Vec<TileLevel> {
    let mut out = vec![TileLevel::F32x4];
    out.extend(common::asm_levels().into_iter().rev());
    out
}

/// Runs `op` over `xs` through the JIT, with the tiles capped at `level`.
fn jit(op: UnaryOp, xs: &[f32], level: TileLevel) -> Vec<f32> {
    let mut g = Graph::new("math");
    let x = g.add_input("x", TensorType::f32([xs.len()])).unwrap();
    let y = g.add(Op::Unary(op), &[x]).unwrap();
    g.set_outputs(vec![y]);
    let model = Model {
        graph: g,
        weights: WeightStore::new(),
    };
    let opts = CompileOptions {
        threads: Some(1),
        verify_ir: true,
        max_tiles: level,
        ..CompileOptions::default()
    };
    let m = compile(&model, &opts).unwrap();
    let input = Tensor::from_f32([xs.len()], xs.to_vec()).unwrap();
    m.run(&[input]).unwrap()[0].as_f32().unwrap().to_vec()
}

/// `n` points evenly spread over `[lo, hi]` (an odd count, so the vector
/// body and the scalar tail both run).
fn sweep(lo: f64, hi: f64, n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| (lo + (hi - lo) * i as f64 / (n - 1) as f64) as f32)
        .collect()
}

/// Maximum relative error of `op` against `reference` over `xs`; also
/// returns the worst input for the message.
fn max_rel(
    op: UnaryOp,
    xs: &[f32],
    level: TileLevel,
    reference: impl Fn(f64) -> f64,
) -> (f64, f32) {
    let ys = jit(op, xs, level);
    let mut worst = (0.0f64, 0.0f32);
    for (&x, &y) in xs.iter().zip(&ys) {
        let r = reference(f64::from(x));
        if r == 0.0 || !r.is_finite() {
            continue;
        }
        let e = ((f64::from(y) - r) / r).abs();
        if e.is_nan() {
            // a NaN result where the reference is finite: the worst error
            return (f64::INFINITY, x);
        }
        if e > worst.0 {
            worst = (e, x);
        }
    }
    worst
}

fn check(name: &str, op: UnaryOp, xs: &[f32], bound: f64, reference: impl Fn(f64) -> f64) {
    for level in levels() {
        let (e, at) = max_rel(op, xs, level, &reference);
        println!(
            "{name} ({level}): max relative error {e:.3e} (at x = {at}) over {} points",
            xs.len()
        );
        assert!(
            e <= bound,
            "{name} ({level}): max relative error {e:.3e} at x = {at} exceeds {bound:.1e}"
        );
    }
}

#[test]
fn exp_is_accurate() {
    check(
        "exp",
        UnaryOp::Exp,
        &sweep(-87.0, 88.0, 2_000_001),
        EXP_MAX_REL,
        f64::exp,
    );
}

#[test]
fn log_is_accurate() {
    // log-spaced over 60 decades, plus a dense linear sweep near 1 where
    // the result is small
    let mut xs: Vec<f32> = (0..1_000_001)
        .map(|i| 10f64.powf(-30.0 + 60.0 * i as f64 / 1_000_000.0) as f32)
        .collect();
    xs.extend(sweep(0.5, 2.0, 1_000_001));
    check("log", UnaryOp::Log, &xs, LOG_MAX_REL, f64::ln);
}

#[test]
fn tanh_is_accurate() {
    check(
        "tanh",
        UnaryOp::Tanh,
        &sweep(-20.0, 20.0, 2_000_001),
        TANH_MAX_REL,
        f64::tanh,
    );
}

#[test]
fn sigmoid_is_accurate() {
    check(
        "sigmoid",
        UnaryOp::Sigmoid,
        &sweep(-80.0, 20.0, 2_000_001),
        SIGMOID_MAX_REL,
        |x| 1.0 / (1.0 + (-x).exp()),
    );
}

#[test]
fn silu_is_accurate() {
    // x / (1 + e^-x): sigmoid's error plus one rounding of the division
    check(
        "silu",
        UnaryOp::Silu,
        &sweep(-80.0, 20.0, 2_000_001),
        SIGMOID_MAX_REL,
        |x| x / (1.0 + (-x).exp()),
    );
}

#[test]
fn erf_is_accurate() {
    check(
        "erf",
        UnaryOp::Erf,
        &sweep(-6.0, 6.0, 2_000_001),
        ERF_MAX_REL,
        libm::erf,
    );
}

#[test]
fn gelus_are_accurate() {
    // 1 + erf(u) = erfc(-u): the f64 reference must not cancel either.
    let gelu = |x: f64| 0.5 * x * libm::erfc(-x / std::f64::consts::SQRT_2);
    // On [-6, 12] the documented bound; in the far negative tail (|gelu|
    // down to 1e-30) the f32 rounding of exp's argument dominates. Every
    // level: the assembled AVX-512 and AVX2 forms too.
    for level in levels() {
        let (e, at) = max_rel(UnaryOp::Gelu, &sweep(-6.0, 12.0, 1_000_001), level, gelu);
        println!("gelu ({level}) on [-6, 12]: max relative error {e:.3e} at {at}");
        assert!(e <= GELU_MAX_REL, "gelu ({level}): {e:.3e} at {at}");
        let (e, at) = max_rel(UnaryOp::Gelu, &sweep(-12.0, 12.0, 1_000_001), level, |x| {
            let r = gelu(x);
            if r.abs() < 1e-30 { 0.0 } else { r }
        });
        println!("gelu ({level}) on [-12, 12]: max relative error {e:.3e} at {at}");
        assert!(e <= 3e-5, "gelu ({level}): {e:.3e} at {at}");
    }
    let c = (2.0 / std::f64::consts::PI).sqrt();
    // x/2·(1 + tanh(u)) = x·sigmoid(2u), without cancellation in f64
    let gelu_tanh = |x: f64| x / (1.0 + (-2.0 * c * (x + 0.044715 * x * x * x)).exp());
    let xs = sweep(-12.0, 12.0, 1_000_001);
    for level in levels() {
        let (e, at) = max_rel(UnaryOp::GeluTanh, &xs, level, |x| {
            let r = gelu_tanh(x);
            if r.abs() < 1e-30 { 0.0 } else { r }
        });
        println!("gelu_tanh ({level}): max relative error {e:.3e} at {at}");
        // the same tail effect as exact GELU: exp of a large negative argument
        assert!(e <= 3e-5, "gelu_tanh ({level}): {e:.3e} at {at}");
    }
}

/// sin and cos: absolute error over a wide range (position embeddings
/// reach arguments of a few thousand), relative error on one period away
/// from the zeros, and NaN for ±inf and NaN. Only the Cranelift forms
/// exist, so one level suffices; both lane types run (odd sweep length).
#[test]
fn sin_cos_are_accurate() {
    for (op, f) in [
        (UnaryOp::Sin, f64::sin as fn(f64) -> f64),
        (UnaryOp::Cos, f64::cos),
    ] {
        let xs = sweep(-8192.0, 8192.0, 2_000_001);
        let ys = jit(op, &xs, TileLevel::F32x4);
        let (mut worst, mut at) = (0.0f64, 0.0f32);
        for (&x, &y) in xs.iter().zip(&ys) {
            let e = (f64::from(y) - f(f64::from(x))).abs();
            assert!(!e.is_nan(), "{op:?}({x}) = {y}");
            if e > worst {
                (worst, at) = (e, x);
            }
        }
        println!("{op:?} on [-8192, 8192]: max absolute error {worst:.3e} at {at}");
        assert!(worst <= SIN_COS_MAX_ABS, "{op:?}: {worst:.3e} at {at}");
        let xs: Vec<f32> = sweep(-std::f64::consts::PI, std::f64::consts::PI, 2_000_001)
            .into_iter()
            .filter(|&x| f(f64::from(x)).abs() >= 1e-3)
            .collect();
        let (e, at) = max_rel(op, &xs, TileLevel::F32x4, f);
        println!("{op:?} on [-pi, pi], |result| >= 1e-3: max relative error {e:.3e} at {at}");
        assert!(e <= SIN_COS_MAX_REL, "{op:?}: {e:.3e} at {at}");
        let special = jit(
            op,
            &[f32::INFINITY, f32::NEG_INFINITY, f32::NAN, 0.0, -0.0],
            TileLevel::F32x4,
        );
        assert!(
            special[..3].iter().all(|y| y.is_nan()),
            "{op:?}: {special:?}"
        );
        let at0 = if op == UnaryOp::Sin { 0.0 } else { 1.0 };
        assert_eq!(&special[3..], &[at0, at0], "{op:?} at ±0");
    }
}

#[test]
fn special_values() {
    for level in levels() {
        special_values_with(level);
    }
}

/// The AVX2 `exp` builds `2^n` as two exponent-field factors, the AVX-512
/// one with `vscalefps`: both round once, at the same place, so every
/// result agrees bit for bit — also where it underflows into the
/// subnormals (x < -87.3) or overflows (x > 88.7).
#[test]
fn avx2_and_avx512_forms_agree_bit_for_bit() {
    let lv = levels();
    if !lv.contains(&TileLevel::Avx512) || !lv.contains(&TileLevel::Avx2) {
        kiln_ir::skip::skip(
            "avx2_and_avx512_forms_agree_bit_for_bit",
            "this host lacks AVX-512 or AVX2 + FMA",
        );
        return;
    }
    let mut xs = sweep(-110.0, 95.0, 1_000_001);
    xs.extend(sweep(-104.0, -86.0, 200_001));
    for op in [UnaryOp::Exp, UnaryOp::Sigmoid, UnaryOp::Silu] {
        let a = jit(op, &xs, TileLevel::Avx512);
        let b = jit(op, &xs, TileLevel::Avx2);
        for ((&x, &p), &q) in xs.iter().zip(&a).zip(&b) {
            assert!(
                p.to_bits() == q.to_bits(),
                "{op:?}({x}): avx512 {p:e}, avx2 {q:e}"
            );
        }
    }
}

fn special_values_with(level: TileLevel) {
    let jit = |op, xs: &[f32]| jit(op, xs, level);
    let xs = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 0.0, -0.0, 1e-45];
    // 17 elements: a full 16-lane vector and a masked tail in the assembled code
    let mut long = xs.to_vec();
    long.extend([0.5f32; 11]);
    let exp = jit(UnaryOp::Exp, &long);
    assert!(exp[0].is_nan(), "{level}");
    assert_eq!(&exp[1..5], &[f32::INFINITY, 0.0, 1.0, 1.0], "{level}");
    let log = jit(
        UnaryOp::Log,
        &[f32::NAN, f32::INFINITY, 0.0, -1.0, 1e-45, 1.0],
    );
    assert!(log[0].is_nan());
    assert_eq!(log[1], f32::INFINITY);
    assert_eq!(log[2], f32::NEG_INFINITY);
    assert!(log[3].is_nan());
    assert!(
        (f64::from(log[4]) - (1e-45f32 as f64).ln()).abs() < 1e-4,
        "{}",
        log[4]
    );
    assert_eq!(log[5], 0.0);
    let t = jit(UnaryOp::Tanh, &xs);
    assert!(t[0].is_nan());
    assert_eq!(&t[1..5], &[1.0, -1.0, 0.0, 0.0]);
    let s = jit(UnaryOp::Sigmoid, &long);
    assert!(s[0].is_nan(), "{level}");
    assert_eq!(&s[1..4], &[1.0, 0.0, 0.5], "{level}");
    let silu = jit(UnaryOp::Silu, &long);
    assert!(silu[0].is_nan(), "{level}");
    assert_eq!(silu[1], f32::INFINITY, "{level}");
    assert_eq!(&silu[3..5], &[0.0, 0.0], "{level}");
    // the far negative tail, where 1 + e^-x overflows to infinity (from
    // x ≈ -88.7; the assembled forms clamp exp's argument to 89): finite,
    // no NaN, and zero or tiny with the sign of x (a division-free
    // reciprocal would have to keep rcp(∞) = 0 from becoming 0·∞ = NaN)
    let tail = [
        -88.0f32, -88.8, -89.5, -100.0, -1e4, -3e38, -88.5, -95.0, -200.0, -1e3, -1e6, -1e9, -1e12,
        -1e15, -1e20, -1e25, -1e30,
    ];
    let s = jit(UnaryOp::Sigmoid, &tail);
    let silu = jit(UnaryOp::Silu, &tail);
    for ((&x, &s), &y) in tail.iter().zip(&s).zip(&silu) {
        assert!((0.0..1e-37).contains(&s), "sigmoid({x}) = {s}, {level}");
        assert!(
            y.is_finite() && y <= 0.0 && y > -1e-35,
            "silu({x}) = {y}, {level}"
        );
    }
    let e = jit(UnaryOp::Erf, &xs);
    assert!(e[0].is_nan());
    assert_eq!(&e[1..4], &[1.0, -1.0, 0.0]);
}
