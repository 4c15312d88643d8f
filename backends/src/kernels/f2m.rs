//! Kernel of `fused_f2m`, Mobile-Former's Former→Mobile bridge: a handful
//! of kernels instead of the transposes, small matmuls and element-wise ops
//! of its expansion (`FusedOp::expand`, the definition they are tested
//! against). The feature map is never transposed.
//!
//! K and V are projected (`attn_parts::project`), then splatted to f32x4 per
//! (channel, token) ([`Splat`]); [`F2mCore`] takes one unit per (image,
//! head, run of pixels) and four pixels at a time: the `M` scores are `M`
//! f32x4 accumulators over the head's channels, their softmax runs across
//! the accumulators (lane-wise, in registers), and `y + Σ_m a_m V_m` is
//! stored channel by channel (one read of `y`, one write). On AVX-512
//! the run is one assembled call instead (`vector::assemble_f2m_run`:
//! 16 pixels per step, the scores in zmm registers, K and V read
//! unsplatted by embedded broadcast, so [`Splat`] is skipped).
//!
//! Token counts above `attn_parts::MAX_TOKENS` keep the expansion (the
//! kernel holds one accumulator per token), as do operand shapes that only
//! broadcast (a batch of 1 against `N`).

use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::types::I64;
use cranelift_codegen::ir::{AbiParam, InstBuilder, Signature, Type, Value};
use cranelift_codegen::isa::CallConv;
use kiln_ir::TensorType;
use kiln_ir::fused::FusedOp;
use kiln_ir::fused::f2m::OPERANDS as F2M;

use super::attn_parts::{
    Bridge, Ptr, Scratch, base, checked_types, operand, part, project, shape_is,
};
use super::epilogue::Epilogue;
use super::{Kernel, Kernels, NodeCx};
use crate::codegen::math::exp;
use crate::codegen::{Buf, Emitter, F32, V4};
use crate::error::BackendError;
use crate::ukernels::Spec;
use crate::ukernels::vector;

/// Pixels per unit of the Former→Mobile kernel (a multiple of 4): enough to
/// amortise the per-unit set-up, small enough to split one head over two
/// threads.
const F2M_RUN: usize = 256;

/// Scratch arrays of `fused_f2m`: the projected keys and values, then
/// both splatted to f32x4.
fn f2m_scratch(b: &Bridge) -> Scratch {
    let nmc = b.n * b.m * b.c;
    Scratch::new(&[nmc, nmc, 4 * nmc, 4 * nmc])
}

/// Whether this module has a kernel for the `fused_f2m` `f` with operand
/// types `ops` (the caller checked the op is well typed: it has an output).
pub(crate) fn has_kernel(f: &FusedOp, ops: &[TensorType]) -> bool {
    let FusedOp::F2m { heads, .. } = *f else {
        return false;
    };
    let Some(b) = Bridge::of(ops, heads) else {
        return false;
    };
    let l = F2M;
    ops.len() == l.count
        && [l.wk, l.wv]
            .iter()
            .all(|&i| shape_is(ops.get(i), &[b.d, b.c]))
        && [l.bk, l.bv].iter().all(|&i| shape_is(ops.get(i), &[b.c]))
}

/// Bytes of scratch the kernels of `f` need.
pub(crate) fn scratch_bytes(f: &FusedOp, ops: &[TensorType]) -> usize {
    match *f {
        FusedOp::F2m { heads, .. } if has_kernel(f, ops) => {
            Bridge::of(ops, heads).map_or(0, |b| f2m_scratch(&b).total)
        }
        _ => 0,
    }
}

/// The former→mobile kernel: one unit per (image, head, run of
/// [`F2M_RUN`] pixels); see the module docs.
struct F2mCore {
    b: Bridge,
    scale: f32,
    y: Buf,
    /// K and V splatted: `[N, C, M]` f32x4 vectors, so that the inner
    /// loops load each token's value as a vector operand of the FMA
    k: Buf,
    v: Buf,
    out: Buf,
    /// the assembled run (`vector::assemble_f2m_run`), which reads the
    /// projected `[N, M, C]` keys and values `kv` unsplatted
    asm: Option<(usize, [Buf; 2])>,
}

/// `dst[n, c, m] = splat(src[n, m, c])` (f32x4) for `[N, M, C]` sources.
struct Splat {
    n: usize,
    m: usize,
    c: usize,
    /// `(src, dst)` pairs
    arrays: Vec<(Buf, Buf)>,
}

impl Kernel for Splat {
    fn describe(&self) -> String {
        format!("fused_f2m token splat {}x{}x{}", self.n, self.m, self.c)
    }

    fn units(&self) -> usize {
        self.n
    }

    fn cost(&self) -> f64 {
        (self.n * self.m * self.c * self.arrays.len()) as f64
    }

    fn emit(&self, e: &mut Emitter, begin: Value, end: Value) {
        let (m, c) = (self.m, self.c);
        let wf = Emitter::wflags();
        let arrays: Vec<(Ptr, Value)> = self
            .arrays
            .iter()
            .map(|&(s, d)| (base(e, s), e.base(d)))
            .collect();
        e.for_range(begin, end, 1, |e, n| {
            for &(src, dst) in &arrays {
                let sn = src.at(e, n, 4 * (m * c) as i64);
                let dn = e.index(dst, n, 16 * (m * c) as i64);
                e.for_static(0, c as i64, 1, |e, ch| {
                    let sc = sn.at(e, ch, 4);
                    let dc = e.index(dn, ch, 16 * m as i64);
                    for t in 0..m {
                        let x = sc.load(e, F32, 4 * (t * c) as i64);
                        let v = e.b.ins().splat(V4, x);
                        e.store(wf, v, dc, 16 * t as i64);
                    }
                });
            }
        });
    }
}

impl F2mCore {
    fn runs(&self) -> usize {
        self.b.l.div_ceil(F2M_RUN)
    }

    /// Pixels `[lo, lo + 4)` (`ty = V4`) or pixel `lo` (`F32`): scores over
    /// the tokens, their softmax across the accumulators, the weighted sum
    /// of the values added to `y`.
    fn pixels(&self, e: &mut Emitter, ty: Type, h: HeadPtrs, lo: Value) {
        let HeadPtrs {
            y: yh,
            out: oh,
            k: kh,
            v: vh,
        } = h;
        let b = self.b;
        let (m, l, dh) = (b.m, b.l, b.dh());
        let wf = Emitter::wflags();
        let zero = e.kc(ty, 0.0);
        let accs: Vec<_> = (0..m).map(|_| e.var(ty, zero)).collect();
        let yl = yh.at(e, lo, 1);
        e.for_static(0, dh as i64, 1, |e, ch| {
            let yv = yl.at(e, ch, 4 * l as i64).load(e, ty, 0);
            let kc = kh.at(e, ch, 16 * m as i64);
            for (t, &acc) in accs.iter().enumerate() {
                let sv = kc.load(e, ty, 16 * t as i64);
                let a = e.b.use_var(acc);
                let r = e.mul_add(sv, yv, a);
                e.b.def_var(acc, r);
            }
        });
        let k = e.kc(ty, self.scale);
        let s: Vec<Value> = accs
            .iter()
            .map(|&acc| {
                let a = e.b.use_var(acc);
                e.b.ins().fmul(a, k)
            })
            .collect();
        let mx = s[1..].iter().fold(s[0], |a, &x| e.b.ins().fmax(a, x));
        let ex: Vec<Value> = s
            .iter()
            .map(|&x| {
                let d = e.b.ins().fsub(x, mx);
                exp(e, ty, d)
            })
            .collect();
        let sum = ex[1..].iter().fold(ex[0], |a, &x| e.b.ins().fadd(a, x));
        let one = e.kc(ty, 1.0);
        let inv = e.b.ins().fdiv(one, sum);
        let a: Vec<Value> = ex.iter().map(|&x| e.b.ins().fmul(x, inv)).collect();
        let ol = e.b.ins().iadd(oh, lo);
        e.for_static(0, dh as i64, 1, |e, ch| {
            let yv = yl.at(e, ch, 4 * l as i64).load(e, ty, 0);
            let vc = vh.at(e, ch, 16 * m as i64);
            let mut o = zero;
            for (t, &at) in a.iter().enumerate() {
                let sv = vc.load(e, ty, 16 * t as i64);
                o = e.mul_add(at, sv, o);
            }
            let r = e.b.ins().fadd(yv, o);
            let p = e.index(ol, ch, 4 * l as i64);
            e.store(wf, r, p, 0);
        });
    }

    /// A run of `len` pixels at `h`.
    fn run(&self, e: &mut Emitter, h: HeadPtrs, len: usize) {
        let l4 = 4 * (len / 4);
        e.for_static(0, 4 * l4 as i64, 16, |e, lo| self.pixels(e, V4, h, lo));
        for p in l4..len {
            let lo = e.ic(4 * p as i64);
            self.pixels(e, F32, h, lo);
        }
    }
}

/// Where one unit of [`F2mCore`] reads and writes: `y` and the output at
/// the run's first pixel of the head's first channel, the head's splatted
/// keys and values.
#[derive(Clone, Copy)]
struct HeadPtrs {
    y: Ptr,
    out: Value,
    k: Ptr,
    v: Ptr,
}

impl Kernel for F2mCore {
    fn describe(&self) -> String {
        let b = &self.b;
        format!(
            "fused_f2m attention: {}x{}x{} pixels over {} tokens, {} heads",
            b.n, b.c, b.l, b.m, b.heads
        )
    }

    fn units(&self) -> usize {
        if self.b.c == 0 {
            0
        } else {
            self.b.n * self.b.heads * self.runs()
        }
    }

    fn cost(&self) -> f64 {
        let b = &self.b;
        (4 * b.n * b.c * b.l * b.m) as f64
    }

    fn emit(&self, e: &mut Emitter, begin: Value, end: Value) {
        let b = self.b;
        let (m, c, l, dh) = (b.m, b.c, b.l, b.dh());
        let runs = self.runs();
        let y = base(e, self.y);
        let ks = base(e, self.k);
        let vs = base(e, self.v);
        let out = e.base(self.out);
        // fn(y, o, k, v, n) of the assembled run
        let asm = self.asm.map(|(id, [k, v])| {
            let mut sig = Signature::new(CallConv::SystemV);
            for _ in 0..5 {
                sig.params.push(AbiParam::new(I64));
            }
            (e.b.import_signature(sig), id, base(e, k), base(e, v))
        });
        e.for_range(begin, end, 1, |e, u| {
            let nj = e.b.ins().udiv_imm_u(u, runs as i64);
            let r = e.b.ins().urem_imm_u(u, runs as i64);
            let n = e.b.ins().udiv_imm_u(nj, b.heads as i64);
            let j = e.b.ins().urem_imm_u(nj, b.heads as i64);
            // pixel offset of the run, in bytes, then the head's channels
            let ro = e.b.ins().imul_imm_s(r, 4 * F2M_RUN as i64);
            let ho = e.b.ins().imul_imm_s(nj, 4 * (dh * l) as i64);
            let at = e.b.ins().iadd(ho, ro);
            let yh = y.at(e, at, 1);
            let oh = e.b.ins().iadd(out, at);
            // the head's channels in the splatted [N, C, M] arrays
            let nc = e.b.ins().imul_imm_s(n, c as i64);
            let jd = e.b.ins().imul_imm_s(j, dh as i64);
            let ch0 = e.b.ins().iadd(nc, jd);
            let kh = ks.at(e, ch0, 16 * m as i64);
            let vh = vs.at(e, ch0, 16 * m as i64);
            let h = HeadPtrs {
                y: yh,
                out: oh,
                k: kh,
                v: vh,
            };
            let last = l - (runs - 1) * F2M_RUN;
            if let Some((sig, id, kp, vp)) = asm {
                // the head's first channel of the [N, M, C] tokens
                let nm = e.b.ins().imul_imm_s(n, (m * c) as i64);
                let jd = e.b.ins().imul_imm_s(j, dh as i64);
                let t0 = e.b.ins().iadd(nm, jd);
                let kh = kp.at(e, t0, 4);
                let vh = vp.at(e, t0, 4);
                let is_last = e.b.ins().icmp_imm_s(IntCC::Equal, r, (runs - 1) as i64);
                let lc = e.ic(last as i64);
                let rc = e.ic(F2M_RUN as i64);
                let len = e.b.ins().select(is_last, lc, rc);
                let f = e.asm_fn(id);
                e.b.ins()
                    .call_indirect(sig, f, &[yh.p, oh, kh.p, vh.p, len]);
                return;
            }
            if last == F2M_RUN {
                self.run(e, h, F2M_RUN);
            } else {
                let is_last = e.b.ins().icmp_imm_s(IntCC::Equal, r, (runs - 1) as i64);
                let not_last = e.b.ins().icmp_imm_s(IntCC::NotEqual, r, (runs - 1) as i64);
                e.if_then(is_last, |e| self.run(e, h, last));
                e.if_then(not_last, |e| self.run(e, h, F2M_RUN));
            }
        });
    }
}

/// Lowers a `fused_f2m` that [`has_kernel`].
pub(crate) fn lower(cx: &mut NodeCx, f: &FusedOp) -> Result<Kernels, BackendError> {
    let types = checked_types(cx, f, has_kernel)?;
    lower_f2m(cx, f, &types)
}

/// The Former→Mobile bridge: the token projections, then the per-pixel core.
fn lower_f2m(cx: &mut NodeCx, f: &FusedOp, types: &[TensorType]) -> Result<Kernels, BackendError> {
    let FusedOp::F2m { heads, scale } = *f else {
        return Err(cx.unsupported(format!("{} is not fused_f2m", f.name())));
    };
    let out = cx.outs[0].0;
    let mut ks: Kernels = Vec::new();
    let b = Bridge::of(types, heads).ok_or_else(|| cx.unsupported("bridge shape"))?;
    let s = f2m_scratch(&b);
    let (k, v) = (part(cx, &s, 0)?, part(cx, &s, 1)?);
    let (k4, v4) = (part(cx, &s, 2)?, part(cx, &s, 3)?);
    let nmc = vec![b.n, b.m, b.c];
    let l = F2M;
    for (dst, w, bias) in [(k, l.wk, l.bk), (v, l.wv, l.bv)] {
        let z = operand(cx, l.z);
        ks.extend(project(cx, z, w, bias, (dst, nmc.clone()), Epilogue::NONE)?);
    }
    let asm = match cx.asm512() {
        Some(store) if vector::f2m_fits(b.m, b.dh(), b.l, b.c) => {
            let (m, hc, l, c, sc) = (b.m, b.dh(), b.l, b.c, scale.0);
            let id = store
                .request(Spec::F2mRun {
                    m,
                    hc,
                    l,
                    c,
                    scale: sc.to_bits(),
                })
                .map_err(BackendError::Jit)?;
            Some((id, [Buf::input(k.loc), Buf::input(v.loc)]))
        }
        _ => None,
    };
    // the f32x4 form reads the tokens splatted; the assembled one
    // broadcasts them itself
    if asm.is_none() {
        ks.push(Box::new(Splat {
            n: b.n,
            m: b.m,
            c: b.c,
            arrays: vec![(k, k4), (v, v4)],
        }));
    }
    ks.push(Box::new(F2mCore {
        b,
        scale: scale.0,
        y: cx.ins[l.y].buf,
        k: k4,
        v: v4,
        out,
        asm,
    }));
    Ok(ks)
}
