//! Element-wise kernels: unary and binary ops (with numpy broadcasting),
//! clip, hard-sigmoid and cast.
//!
//! Float semantics: each f32 result is computed in f64 from the f32
//! operands and rounded to f32 once, so `add`/`sub`/`mul`/`div`/`sqrt` are
//! correctly rounded and the transcendental ops are as accurate as f64
//! `std`/`libm` allow. IEEE rules apply otherwise (`x/0 = ±inf`,
//! `log(-1) = NaN`). `max`, `min`, `relu`, `relu6` and `clip` propagate NaN,
//! as PyTorch and numpy's `maximum` do: a NaN operand gives a NaN result.
//!
//! Integer semantics (i64): `div` truncates toward zero (C, Rust and ONNX
//! behaviour, not Python's floor division); division by zero and overflow
//! (`i64::MIN / -1`, a sum out of range) are errors, never wrap-around.
//! `mod` is the floored remainder (sign of the divisor, Python's `%`),
//! `fmod` the truncated one (sign of the dividend, C's `%`), on both
//! dtypes; a zero integer divisor is an error.

use crate::op::{BinaryOp, UnaryOp};
use crate::tensor::{Tensor, TensorData};
use crate::types::DType;

use super::view::{Elem, Strided, broadcast_strides};

/// `max` that returns NaN when either side is NaN (`f64::max` would
/// silently drop it).
pub(super) fn max_nan(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else {
        a.max(b)
    }
}

/// `min` that returns NaN when either side is NaN.
pub(super) fn min_nan(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else {
        a.min(b)
    }
}

/// The floored remainder (numpy's `mod`): C's `fmod`, moved by one `b`
/// when its sign differs from `b`'s; a zero result takes `b`'s sign.
pub(crate) fn floor_mod(a: f64, b: f64) -> f64 {
    let r = a % b;
    if r == 0.0 {
        0f64.copysign(b)
    } else if (r < 0.0) != (b < 0.0) {
        r + b
    } else {
        r
    }
}

/// Maps f32 data through an f64 function, rounding each result once.
fn map_f32(x: &[f32], f: impl Fn(f64) -> f64) -> Vec<f32> {
    x.iter().map(|&v| f(f64::from(v)) as f32).collect()
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

fn relu6(x: f64) -> f64 {
    min_nan(max_nan(x, 0.0), 6.0)
}

/// One unary op. f32 for every op; i64 for `identity`, `neg` and `abs`.
pub(super) fn unary(u: UnaryOp, x: &Tensor) -> Result<Tensor, String> {
    let shape = x.shape().to_vec();
    let data = match x.data() {
        TensorData::I64(d) => {
            return Ok(i64::tensor(shape, unary_i64(u, d)?));
        }
        TensorData::F32(d) => d,
    };
    use std::f64::consts::{FRAC_2_SQRT_PI, SQRT_2};
    let y = match u {
        UnaryOp::Relu => map_f32(data, |v| max_nan(v, 0.0)),
        UnaryOp::Relu6 => map_f32(data, relu6),
        UnaryOp::Sigmoid => map_f32(data, sigmoid),
        UnaryOp::Tanh => map_f32(data, f64::tanh),
        UnaryOp::Exp => map_f32(data, f64::exp),
        UnaryOp::Log => map_f32(data, f64::ln),
        UnaryOp::Sqrt => map_f32(data, f64::sqrt),
        UnaryOp::Neg => map_f32(data, |v| -v),
        UnaryOp::Reciprocal => map_f32(data, |v| 1.0 / v),
        UnaryOp::Erf => map_f32(data, libm::erf),
        UnaryOp::Abs => map_f32(data, f64::abs),
        UnaryOp::Silu => map_f32(data, |v| v * sigmoid(v)),
        UnaryOp::HardSwish => map_f32(data, |v| v * relu6(v + 3.0) / 6.0),
        UnaryOp::Gelu => map_f32(data, |v| 0.5 * v * (1.0 + libm::erf(v / SQRT_2))),
        UnaryOp::GeluTanh => {
            // sqrt(2/pi) = (2/sqrt(pi)) / sqrt(2)
            let k = FRAC_2_SQRT_PI / SQRT_2;
            map_f32(data, |v| {
                0.5 * v * (1.0 + (k * (v + 0.044715 * v * v * v)).tanh())
            })
        }
        UnaryOp::Sin => map_f32(data, f64::sin),
        UnaryOp::Cos => map_f32(data, f64::cos),
        UnaryOp::Identity => return Ok(x.clone()),
    };
    Ok(f32::tensor(shape, y))
}

fn unary_i64(u: UnaryOp, d: &[i64]) -> Result<Vec<i64>, String> {
    let checked = |f: fn(i64) -> Option<i64>| {
        d.iter()
            .map(|&v| f(v).ok_or_else(|| format!("{}: i64 overflow on {v}", u.name())))
            .collect()
    };
    match u {
        UnaryOp::Identity => Ok(d.to_vec()),
        UnaryOp::Neg => checked(i64::checked_neg),
        UnaryOp::Abs => checked(i64::checked_abs),
        _ => Err(format!("{} is defined on f32 only", u.name())),
    }
}

/// The common iteration shape and per-operand strides for reading `a` and
/// `b` broadcast to `out`. When each operand is either the full output or a
/// single element, the view collapses to one axis so that the walk is a
/// plain linear scan.
pub(super) fn pair_views(
    a: &[usize],
    b: &[usize],
    out: &[usize],
) -> (Vec<usize>, Vec<isize>, Vec<isize>) {
    let flat = |s: &[usize]| {
        if s == out {
            Some(1)
        } else if s.iter().product::<usize>() == 1 {
            Some(0)
        } else {
            None
        }
    };
    if let (Some(sa), Some(sb)) = (flat(a), flat(b)) {
        let n: usize = out.iter().product();
        return (vec![n], vec![sa], vec![sb]);
    }
    (
        out.to_vec(),
        broadcast_strides(a, out),
        broadcast_strides(b, out),
    )
}

/// Applies `f` to every broadcast pair of elements, in output order. The
/// odometer runs over the outer axes; along the innermost axis each operand
/// is either contiguous (stride 1) or broadcast (stride 0), so the inner
/// loop is a plain slice walk.
fn zip_broadcast<A: Copy, B: Copy, R>(
    a: &[A],
    a_shape: &[usize],
    b: &[B],
    b_shape: &[usize],
    out_shape: &[usize],
    mut f: impl FnMut(A, B) -> R,
) -> Vec<R> {
    let (shape, sa, sb) = pair_views(a_shape, b_shape, out_shape);
    let n: usize = shape.iter().product();
    let mut out = Vec::with_capacity(n);
    let Some((&len, outer)) = shape.split_last() else {
        out.push(f(a[0], b[0]));
        return out;
    };
    if n == 0 {
        return out;
    }
    let r = shape.len() - 1;
    let rows = Strided::new(outer, &sa[..r], 0).zip(Strided::new(outer, &sb[..r], 0));
    for (oa, ob) in rows {
        match (sa[r], sb[r]) {
            (1, 1) => out.extend(
                a[oa..oa + len]
                    .iter()
                    .zip(&b[ob..ob + len])
                    .map(|(&p, &q)| f(p, q)),
            ),
            (1, _) => {
                let q = b[ob];
                out.extend(a[oa..oa + len].iter().map(|&p| f(p, q)));
            }
            (_, 1) => {
                let p = a[oa];
                out.extend(b[ob..ob + len].iter().map(|&q| f(p, q)));
            }
            _ => {
                let (p, q) = (a[oa], b[ob]);
                out.extend((0..len).map(|_| f(p, q)));
            }
        }
    }
    out
}

/// One binary op with broadcasting to `out_shape` (from shape inference).
pub(super) fn binary(
    op: BinaryOp,
    a: &Tensor,
    b: &Tensor,
    out_shape: &[usize],
) -> Result<Tensor, String> {
    let shape = out_shape.to_vec();
    match (a.data(), b.data()) {
        (TensorData::F32(x), TensorData::F32(y)) => {
            // Generic rather than a fn pointer, so each op's arithmetic is
            // inlined into the loop.
            fn z(
                (x, xs): (&[f32], &[usize]),
                (y, ys): (&[f32], &[usize]),
                out: &[usize],
                f: impl Fn(f64, f64) -> f64,
            ) -> Vec<f32> {
                zip_broadcast(x, xs, y, ys, out, |p, q| {
                    f(f64::from(p), f64::from(q)) as f32
                })
            }
            let (xa, yb) = ((&x[..], a.shape()), (&y[..], b.shape()));
            let data = match op {
                BinaryOp::Add => z(xa, yb, out_shape, |p, q| p + q),
                BinaryOp::Sub => z(xa, yb, out_shape, |p, q| p - q),
                BinaryOp::Mul => z(xa, yb, out_shape, |p, q| p * q),
                BinaryOp::Div => z(xa, yb, out_shape, |p, q| p / q),
                BinaryOp::Pow => z(xa, yb, out_shape, f64::powf),
                BinaryOp::Max => z(xa, yb, out_shape, max_nan),
                BinaryOp::Min => z(xa, yb, out_shape, min_nan),
                BinaryOp::Mod => z(xa, yb, out_shape, floor_mod),
                // f64 `%` is C's fmod, exact (the remainder of two f32
                // values is an f32 value).
                BinaryOp::Fmod => z(xa, yb, out_shape, |p, q| p % q),
            };
            Ok(f32::tensor(shape, data))
        }
        (TensorData::I64(x), TensorData::I64(y)) => {
            let name = op.name();
            let z = |f: fn(i64, i64) -> Option<i64>| {
                zip_broadcast(x, a.shape(), y, b.shape(), out_shape, |p, q| {
                    f(p, q).ok_or_else(|| format!("{name}: i64 overflow in {p} {name} {q}"))
                })
                .into_iter()
                .collect::<Result<Vec<i64>, String>>()
            };
            let data = match op {
                BinaryOp::Add => z(i64::checked_add)?,
                BinaryOp::Sub => z(i64::checked_sub)?,
                BinaryOp::Mul => z(i64::checked_mul)?,
                BinaryOp::Div => {
                    if y.contains(&0) {
                        return Err("div: i64 division by zero".into());
                    }
                    // checked_div truncates toward zero; with zero divisors
                    // ruled out it fails only on i64::MIN / -1.
                    z(i64::checked_div)?
                }
                BinaryOp::Max => z(|p, q| Some(p.max(q)))?,
                BinaryOp::Min => z(|p, q| Some(p.min(q)))?,
                BinaryOp::Mod | BinaryOp::Fmod => {
                    if y.contains(&0) {
                        return Err(format!("{name}: i64 division by zero"));
                    }
                    // wrapping_rem: i64::MIN % -1 is 0, not an overflow.
                    if op == BinaryOp::Fmod {
                        z(|p, q| Some(p.wrapping_rem(q)))?
                    } else {
                        z(|p, q| {
                            let r = p.wrapping_rem(q);
                            Some(if r != 0 && ((r < 0) != (q < 0)) {
                                r + q
                            } else {
                                r
                            })
                        })?
                    }
                }
                BinaryOp::Pow => return Err("pow is defined on f32 only".into()),
            };
            Ok(i64::tensor(shape, data))
        }
        _ => Err(format!(
            "{}: operand dtypes differ: {} and {}",
            op.name(),
            a.dtype(),
            b.dtype()
        )),
    }
}

/// `min(max(x, lo), hi)`, NaN-propagating.
pub(super) fn clip(x: &[f32], lo: f32, hi: f32) -> Vec<f32> {
    let (lo, hi) = (f64::from(lo), f64::from(hi));
    map_f32(x, |v| min_nan(max_nan(v, lo), hi))
}

/// `clamp(alpha·x + beta, 0, 1)`, NaN-propagating.
pub(super) fn hard_sigmoid(x: &[f32], alpha: f32, beta: f32) -> Vec<f32> {
    let (alpha, beta) = (f64::from(alpha), f64::from(beta));
    map_f32(x, |v| min_nan(max_nan(alpha * v + beta, 0.0), 1.0))
}

/// Converts the element type.
///
/// - f32 → i64 truncates toward zero (ONNX Cast, C and Rust `as`); NaN,
///   ±inf and values outside the i64 range are errors rather than the
///   saturating or undefined results other runtimes give.
/// - i64 → f32 rounds to the nearest f32 (ties to even), exact up to 2^24.
pub(super) fn cast(x: &Tensor, to: DType) -> Result<Tensor, String> {
    let shape = x.shape().to_vec();
    match (x.data(), to) {
        (TensorData::F32(_), DType::F32) | (TensorData::I64(_), DType::I64) => Ok(x.clone()),
        (TensorData::I64(d), DType::F32) => {
            Ok(f32::tensor(shape, d.iter().map(|&v| v as f32).collect()))
        }
        (TensorData::F32(d), DType::I64) => {
            // 2^63 is exactly representable; the valid truncated range is
            // [-2^63, 2^63).
            const LIMIT: f32 = 9_223_372_036_854_775_808.0;
            let data = d
                .iter()
                .enumerate()
                .map(|(i, &v)| {
                    let t = v.trunc();
                    if t.is_finite() && (-LIMIT..LIMIT).contains(&t) {
                        Ok(t as i64)
                    } else {
                        Err(format!(
                            "cast: f32 element {i} ({v}) has no i64 value (NaN, infinite or out of range)"
                        ))
                    }
                })
                .collect::<Result<Vec<i64>, String>>()?;
            Ok(i64::tensor(shape, data))
        }
    }
}
