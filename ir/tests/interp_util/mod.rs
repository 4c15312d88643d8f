//! Helpers shared by the interpreter tests: tensor constructors, one-op
//! evaluation, tolerant comparison and a seeded random source (so that
//! random-data tests are reproducible without a dependency).

// Each test file uses a different subset of these helpers.
#![allow(dead_code)]

use kiln_ir::interp::eval;
use kiln_ir::{Op, Tensor};

/// An f32 tensor.
pub fn t(shape: &[usize], data: &[f32]) -> Tensor {
    Tensor::from_f32(shape, data.to_vec()).expect("test tensor fits its shape")
}

/// An i64 tensor.
pub fn ti(shape: &[usize], data: &[i64]) -> Tensor {
    Tensor::from_i64(shape, data.to_vec()).expect("test tensor fits its shape")
}

/// Evaluates `op`, expecting success.
pub fn ev(op: &Op, operands: &[&Tensor]) -> Vec<Tensor> {
    eval(op, operands).unwrap_or_else(|e| panic!("{op}: {e}"))
}

/// Evaluates a single-output `op`, expecting success.
pub fn ev1(op: &Op, operands: &[&Tensor]) -> Tensor {
    let mut out = ev(op, operands);
    assert_eq!(out.len(), 1, "{op} produced {} results", out.len());
    out.remove(0)
}

/// The error of evaluating `op`, expecting failure.
pub fn ev_err(op: &Op, operands: &[&Tensor]) -> String {
    match eval(op, operands) {
        Ok(v) => panic!("{op} unexpectedly succeeded: {v:?}"),
        Err(e) => e,
    }
}

/// The f32 data of a tensor.
pub fn f(t: &Tensor) -> Vec<f32> {
    t.as_f32().expect("an f32 tensor").to_vec()
}

/// The i64 data of a tensor.
pub fn i(t: &Tensor) -> Vec<i64> {
    t.as_i64().expect("an i64 tensor").to_vec()
}

/// Asserts element-wise `|got - want| <= tol · max(1, |want|)`, NaN only
/// matching NaN.
pub fn assert_close(got: &[f32], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "lengths differ: {got:?} vs {want:?}");
    for (k, (&g, &w)) in got.iter().zip(want).enumerate() {
        let g = f64::from(g);
        let ok = if w.is_nan() {
            g.is_nan()
        } else if w.is_infinite() {
            g == w
        } else {
            (g - w).abs() <= tol * w.abs().max(1.0)
        };
        assert!(
            ok,
            "element {k}: got {g}, want {w} (tol {tol})\n got {got:?}\nwant {want:?}"
        );
    }
}

/// Same as [`assert_close`] with an f32 reference.
pub fn assert_close32(got: &[f32], want: &[f32], tol: f64) {
    let want: Vec<f64> = want.iter().map(|&w| f64::from(w)).collect();
    assert_close(got, &want, tol);
}

/// A tiny seeded generator (splitmix64): reproducible random test data.
pub struct Seeded(u64);

impl Seeded {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Seeded {
        Seeded(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [-1, 1).
    pub fn uniform(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    /// A tensor of uniform values in [-1, 1).
    pub fn tensor(&mut self, shape: &[usize]) -> Tensor {
        let n = shape.iter().product();
        let data: Vec<f32> = (0..n).map(|_| self.uniform()).collect();
        t(shape, &data)
    }
}
