//! Element-wise kernels: unary ops, clip, hard-sigmoid, binary ops with
//! numpy broadcasting, and expand (a broadcasting copy).
//!
//! All of them are one [`Nest`]: f32x4 bodies when every operand's innermost
//! stride is 1 or 0 (a broadcast scalar, splatted once per chunk), a scalar
//! tail, and a scalar body for other strides. `pow` with a constant exponent
//! becomes multiplies or a square root; a general `pow` calls the host's
//! `powf` per element (no inlined approximation: it is rare in these models
//! and `exp(b·log a)` is wrong for negative bases). `mod`/`fmod` run
//! per element in f64 (`remainder`).

use cranelift_codegen::ir::{InstBuilder, Type, Value};
use kiln_ir::{BinaryOp, Op, UnaryOp};

use cranelift_codegen::ir::types::I64;

use super::nest::{Nest, broadcast_strides, contiguous};
use super::{Kernel, Kernels, NodeCx};
use crate::codegen::math::{self, clamp};
use crate::codegen::{Buf, Emitter, F32, V4};
use crate::error::BackendError;
use crate::ukernels::vector;
use crate::ukernels::{Registry, Spec};

/// The per-element function.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Func {
    /// a unary op
    Unary(UnaryOp),
    /// `clamp(x, lo, hi)`
    Clip(f32, f32),
    /// `clamp(alpha·x + beta, 0, 1)`
    HardSigmoid(f32, f32),
    /// a binary op
    Binary(BinaryOp),
    /// `x ^ p` for a compile-time exponent
    PowConst(f32),
}

impl Func {
    /// Whether a vector form exists (a general `pow` calls `powf` per element).
    fn vectorises(self) -> bool {
        match self {
            Func::Binary(BinaryOp::Pow | BinaryOp::Mod | BinaryOp::Fmod) => false,
            Func::PowConst(p) => pow_special(p).is_some(),
            _ => true,
        }
    }

    /// Relative cost per element, for the threading decision.
    fn weight(self) -> f64 {
        match self {
            Func::Unary(
                UnaryOp::Sigmoid
                | UnaryOp::Tanh
                | UnaryOp::Exp
                | UnaryOp::Log
                | UnaryOp::Erf
                | UnaryOp::Silu
                | UnaryOp::Gelu
                | UnaryOp::GeluTanh
                | UnaryOp::Sin
                | UnaryOp::Cos,
            ) => 20.0,
            Func::Binary(BinaryOp::Pow) => 40.0,
            Func::Binary(BinaryOp::Mod | BinaryOp::Fmod) => 10.0,
            _ => 1.0,
        }
    }
}

/// Exponents with an exact cheap form.
fn pow_special(p: f32) -> Option<&'static str> {
    Some(match p {
        0.0 => "one",
        1.0 => "x",
        2.0 => "x*x",
        3.0 => "x*x*x",
        0.5 => "sqrt",
        -1.0 => "1/x",
        _ => return None,
    })
}

pub(crate) extern "C" fn host_powf(a: f32, b: f32) -> f32 {
    a.powf(b)
}

/// Emits `func` on lane type `ty` (`F32` or `V4`) for argument values.
pub(crate) fn apply(e: &mut Emitter, ty: Type, func: Func, args: &[Value]) -> Value {
    let x = args[0];
    match func {
        Func::Unary(u) => unary(e, ty, u, x),
        Func::Clip(lo, hi) => clamp(e, ty, x, lo, hi),
        Func::HardSigmoid(a, b) => {
            let a = e.kc(ty, a);
            let b = e.kc(ty, b);
            let y = e.mul_add(x, a, b);
            clamp(e, ty, y, 0.0, 1.0)
        }
        Func::Binary(op) => {
            let y = args[1];
            match op {
                BinaryOp::Add => e.b.ins().fadd(x, y),
                BinaryOp::Sub => e.b.ins().fsub(x, y),
                BinaryOp::Mul => e.b.ins().fmul(x, y),
                BinaryOp::Div => e.b.ins().fdiv(x, y),
                BinaryOp::Max => e.b.ins().fmax(x, y),
                BinaryOp::Min => e.b.ins().fmin(x, y),
                BinaryOp::Pow => e.powf(x, y),
                BinaryOp::Mod => remainder(e, x, y, true),
                BinaryOp::Fmod => remainder(e, x, y, false),
            }
        }
        Func::PowConst(p) => match pow_special(p) {
            Some("one") => e.kc(ty, 1.0),
            Some("x") => x,
            Some("x*x") => e.b.ins().fmul(x, x),
            Some("x*x*x") => {
                let x2 = e.b.ins().fmul(x, x);
                e.b.ins().fmul(x2, x)
            }
            Some("sqrt") => e.b.ins().sqrt(x),
            Some("1/x") => {
                let one = e.kc(ty, 1.0);
                e.b.ins().fdiv(one, x)
            }
            _ => {
                let pc = e.fc(p);
                apply(e, ty, Func::Binary(BinaryOp::Pow), &[x, pc])
            }
        },
    }
}

/// The remainder of two f32 scalars in f64: `r = x - trunc(x/y)·y`, exact
/// while |x/y| < 2^29 (the product of a 29-bit quotient and a 24-bit `y`
/// fits in f64's 53 bits, and so does the difference), then moved by one
/// `|y|` if the rounded quotient was one off (`r` must have `x`'s sign and
/// be smaller than `y`). `floored`: then moved by `y` when its sign differs
/// from `y`'s (zero takes `y`'s sign), numpy's `mod`. `y = 0`, `x = ±inf`
/// and NaN give NaN; `y = ±inf` gives `x` (truncated). Beyond 2^29 the
/// quotient is rounded, so the result can be off by a multiple of `y`'s
/// unit in the last place; the interpreter computes it exactly.
fn remainder(e: &mut Emitter, x: Value, y: Value, floored: bool) -> Value {
    use cranelift_codegen::ir::condcodes::FloatCC;
    use cranelift_codegen::ir::types::F64;
    let xd = e.b.ins().fpromote(F64, x);
    let yd = e.b.ins().fpromote(F64, y);
    let q = e.b.ins().fdiv(xd, yd);
    // fcvt rather than trunc: trunc of f64 needs SSE4.1 or a libcall on x86
    let qi = e.b.ins().fcvt_to_sint_sat(I64, q);
    let q = e.b.ins().fcvt_from_sint(F64, qi);
    let qy = e.b.ins().fmul(q, yd);
    let r = e.b.ins().fsub(xd, qy);
    let zero = e.b.ins().f64const(0.0);
    let ay = e.b.ins().fabs(yd);
    let sy = e.b.ins().fcopysign(ay, xd);
    // r of the wrong sign: the quotient was one too large
    let rx = e.b.ins().fmul(r, xd);
    let wrong = e.b.ins().fcmp(FloatCC::LessThan, rx, zero);
    let up = e.b.ins().fadd(r, sy);
    let r = e.b.ins().select(wrong, up, r);
    // |r| ≥ |y|: one too small
    let ar = e.b.ins().fabs(r);
    let big = e.b.ins().fcmp(FloatCC::GreaterThanOrEqual, ar, ay);
    let down = e.b.ins().fsub(r, sy);
    let r = e.b.ins().select(big, down, r);
    let inf = e.b.ins().f64const(f64::INFINITY);
    let yinf = e.b.ins().fcmp(FloatCC::Equal, ay, inf);
    let mut r = e.b.ins().select(yinf, xd, r);
    if floored {
        let ry = e.b.ins().fmul(r, yd);
        let differ = e.b.ins().fcmp(FloatCC::LessThan, ry, zero);
        let moved = e.b.ins().fadd(r, yd);
        r = e.b.ins().select(differ, moved, r);
        let is0 = e.b.ins().fcmp(FloatCC::Equal, r, zero);
        let z = e.b.ins().fcopysign(zero, yd);
        r = e.b.ins().select(is0, z, r);
    }
    let ax = e.b.ins().fabs(xd);
    let xinf = e.b.ins().fcmp(FloatCC::Equal, ax, inf);
    let y0 = e.b.ins().fcmp(FloatCC::Equal, yd, zero);
    let bad = e.b.ins().bor(xinf, y0);
    let nan = e.b.ins().f64const(f64::NAN);
    let r = e.b.ins().select(bad, nan, r);
    e.b.ins().fdemote(F32, r)
}

fn unary(e: &mut Emitter, ty: Type, u: UnaryOp, x: Value) -> Value {
    match u {
        UnaryOp::Relu => math::relu(e, ty, x),
        UnaryOp::Relu6 => clamp(e, ty, x, 0.0, 6.0),
        UnaryOp::Sigmoid => math::sigmoid(e, ty, x),
        UnaryOp::Tanh => math::tanh(e, ty, x),
        UnaryOp::Exp => math::exp(e, ty, x),
        UnaryOp::Log => math::log(e, ty, x),
        UnaryOp::Sqrt => e.b.ins().sqrt(x),
        UnaryOp::Neg => e.b.ins().fneg(x),
        UnaryOp::Reciprocal => {
            let one = e.kc(ty, 1.0);
            e.b.ins().fdiv(one, x)
        }
        UnaryOp::Erf => math::erf(e, ty, x),
        UnaryOp::Abs => e.b.ins().fabs(x),
        UnaryOp::Silu => {
            // x / (1 + exp(-x)): one division, no multiply
            let nx = e.b.ins().fneg(x);
            let ex = math::exp(e, ty, nx);
            let one = e.kc(ty, 1.0);
            let d = e.b.ins().fadd(one, ex);
            e.b.ins().fdiv(x, d)
        }
        UnaryOp::HardSwish => {
            let three = e.kc(ty, 3.0);
            let t = e.b.ins().fadd(x, three);
            let t = clamp(e, ty, t, 0.0, 6.0);
            let y = e.b.ins().fmul(x, t);
            let six = e.kc(ty, 6.0);
            e.b.ins().fdiv(y, six)
        }
        UnaryOp::Gelu => math::gelu(e, ty, x),
        UnaryOp::GeluTanh => math::gelu_tanh(e, ty, x),
        UnaryOp::Sin => math::sin_cos(e, ty, x, false),
        UnaryOp::Cos => math::sin_cos(e, ty, x, true),
        UnaryOp::Identity => x,
    }
}

/// An element-wise kernel over a nest whose operand 0 is the output.
pub(crate) struct Elementwise {
    func: Func,
    nest: Nest,
    bufs: Vec<Buf>,
    /// the assembled form of a unary `func` over contiguous data
    /// (`vector`), by its number in the `Registry`, and its width
    asm: Option<(usize, vector::Width)>,
}

impl Elementwise {
    /// A kernel applying `func`; `nest` and `bufs` list the output first.
    pub fn new(func: Func, nest: Nest, bufs: Vec<Buf>) -> Elementwise {
        Elementwise {
            func,
            nest,
            bufs,
            asm: None,
        }
    }

    /// Uses the assembled form of the function (width `w`) when there is
    /// one and every operand is contiguous along the innermost dimension.
    fn request_asm(&mut self, store: &mut Registry, w: vector::Width) -> Result<(), BackendError> {
        let Func::Unary(u) = self.func else {
            return Ok(());
        };
        let Some(f) = vector::Func::of(u) else {
            return Ok(());
        };
        if self.bufs.len() != 2 || (0..2).any(|k| self.nest.inner_stride(k) != 1) {
            return Ok(());
        }
        let id = store
            .request(Spec::Unary(f, w))
            .map_err(BackendError::Jit)?;
        self.asm = Some((id, w));
        Ok(())
    }
}

impl Kernel for Elementwise {
    fn describe(&self) -> String {
        format!(
            "element-wise {:?}{} over {:?} (inner strides {:?})",
            self.func,
            match self.asm {
                Some((_, w)) => format!(" {}", w.name()),
                None => String::new(),
            },
            self.nest.dims,
            (0..self.bufs.len())
                .map(|k| self.nest.inner_stride(k))
                .collect::<Vec<_>>()
        )
    }

    fn units(&self) -> usize {
        self.nest.units()
    }

    fn cost(&self) -> f64 {
        self.nest.numel() as f64 * self.func.weight()
    }

    fn emit(&self, e: &mut Emitter, begin: Value, end: Value) {
        let bases: Vec<Value> = self.bufs.iter().map(|&b| e.base(b)).collect();
        if let Some((id, _)) = self.asm {
            // one call per chunk: fn(src, dst, n) (vector)
            let sig = e.b.import_signature(vector::row_signature());
            let mut body = |e: &mut Emitter, ptrs: &[Value], len: usize| {
                let f = e.asm_fn(id);
                let n = e.ic(len as i64);
                e.b.ins().call_indirect(sig, f, &[ptrs[1], ptrs[0], n]);
            };
            self.nest.emit(e, &bases, begin, end, 0, &mut body);
            return;
        }
        let nin = self.bufs.len() - 1;
        let strides: Vec<i64> = (0..=nin).map(|k| self.nest.inner_stride(k)).collect();
        let vector = self.func.vectorises()
            && strides[0] == 1
            && strides[1..].iter().all(|&s| s == 0 || s == 1);
        let rf: Vec<_> = self.bufs.iter().map(|&b| Emitter::rflags(b)).collect();
        let wf = Emitter::wflags();
        let func = self.func;
        let mut body = |e: &mut Emitter, ptrs: &[Value], len: usize| {
            // Broadcast scalars: loaded once per chunk.
            let scal: Vec<Option<Value>> = (1..=nin)
                .map(|k| (strides[k] == 0).then(|| e.load(F32, rf[k], ptrs[k], 0)))
                .collect();
            if vector {
                let splat: Vec<Option<Value>> = scal
                    .iter()
                    .map(|s| s.map(|s| e.b.ins().splat(V4, s)))
                    .collect();
                let n4 = (len / 4) as i64;
                e.for_static(0, n4 * 16, 16, |e, i| {
                    let args: Vec<Value> = (1..=nin)
                        .map(|k| match splat[k - 1] {
                            Some(s) => s,
                            None => {
                                let p = e.b.ins().iadd(ptrs[k], i);
                                e.load(V4, rf[k], p, 0)
                            }
                        })
                        .collect();
                    let y = apply(e, V4, func, &args);
                    let p = e.b.ins().iadd(ptrs[0], i);
                    e.store(wf, y, p, 0);
                });
                for j in (n4 as usize * 4)..len {
                    let args: Vec<Value> = (1..=nin)
                        .map(|k| match scal[k - 1] {
                            Some(s) => s,
                            None => e.load(F32, rf[k], ptrs[k], 4 * j as i64),
                        })
                        .collect();
                    let y = apply(e, F32, func, &args);
                    e.store(wf, y, ptrs[0], 4 * j as i64);
                }
            } else {
                e.for_static(0, len as i64, 1, |e, i| {
                    let args: Vec<Value> = (1..=nin)
                        .map(|k| match scal[k - 1] {
                            Some(s) => s,
                            None => {
                                let p = e.index(ptrs[k], i, 4 * strides[k]);
                                e.load(F32, rf[k], p, 0)
                            }
                        })
                        .collect();
                    let y = apply(e, F32, func, &args);
                    let p = e.index(ptrs[0], i, 4 * strides[0]);
                    e.store(wf, y, p, 0);
                });
            }
        };
        self.nest.emit(e, &bases, begin, end, 0, &mut body);
    }
}

/// Lowers unary, clip, hard-sigmoid and binary nodes.
pub(crate) fn lower(cx: &mut NodeCx) -> Result<Kernels, BackendError> {
    let (out_buf, out_ty) = cx.outs[0].clone();
    let out = &out_ty.shape;
    let func = match cx.op {
        Op::Unary(u) => Func::Unary(*u),
        Op::Clip { min, max } => Func::Clip(min.0, max.0),
        Op::HardSigmoid { alpha, beta } => Func::HardSigmoid(alpha.0, beta.0),
        Op::Binary(BinaryOp::Pow) if cx.ins[1].ty.numel() == 1 && cx.ins[0].ty.shape == *out => {
            match cx.ins[1].data {
                Some(d) => Func::PowConst(d[0]),
                None => Func::Binary(BinaryOp::Pow),
            }
        }
        Op::Binary(b) => Func::Binary(*b),
        other => return Err(cx.unsupported(format!("{} is not element-wise", other.name()))),
    };
    let nin = match func {
        Func::Binary(_) => 2,
        _ => 1,
    };
    let mut strides = vec![contiguous(out)];
    let mut bufs = vec![out_buf];
    for op in &cx.ins[..nin] {
        strides.push(broadcast_strides(&op.ty.shape, out));
        bufs.push(op.buf);
    }
    let nest = Nest::new(out, strides, vec![0; nin + 1]);
    let mut k = Elementwise::new(func, nest, bufs);
    if let Some((store, w)) = cx.asm_width() {
        k.request_asm(store, w)?;
    }
    Ok(vec![Box::new(k)])
}

/// Lowers expand: a broadcasting copy.
pub(crate) fn lower_expand(cx: &mut NodeCx) -> Result<Kernels, BackendError> {
    let (out_buf, out_ty) = cx.outs[0].clone();
    let out = &out_ty.shape;
    let nest = Nest::new(
        out,
        vec![contiguous(out), broadcast_strides(&cx.ins[0].ty.shape, out)],
        vec![0, 0],
    );
    Ok(vec![Box::new(Elementwise::new(
        Func::Unary(UnaryOp::Identity),
        nest,
        vec![out_buf, cx.ins[0].buf],
    ))])
}
