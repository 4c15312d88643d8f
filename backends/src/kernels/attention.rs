//! Kernels of the attention-type fused ops: Mobile-Former's bridges
//! (`fused_m2f`, `fused_f2m`) and token attention (`fused_mha`), a handful
//! of kernels each instead of the dozen-plus transposes, small matmuls and
//! element-wise ops of their expansion (`FusedOp::expand`, the definition
//! these kernels are tested against). The feature map is never transposed.
//!
//! The token-side projections (`M` = 3–6 rows) run on the GEMM driver
//! through `matmul::lower_linear` on sub-nodes ([`project`]): packed
//! weights, assembled tiles, bias seeds and epilogues (the gate's hard
//! sigmoid, `Wo`'s `+z` residual).
//!
//! - **`fused_m2f`**: `scale·Q` is copied to scratch ([`Scale`]: the
//!   assembled tiles take no alpha); the scores of every (image, head) are
//!   one batched GEMM `Q_j [M×dh] · X_j [dh×L]` reading `X` in place; then
//!   [`M2fCore`], one unit per (image, head), gives each token's row of
//!   scores its softmax in place (the assembled row softmax on AVX-512,
//!   else f32x4 passes) and sums `P·X` per channel over the pixels (the
//!   map's second and last read), times the gate (doubled here: `2·hsig`,
//!   exact): on AVX-512 an assembled pass over blocks of up to 4 channels
//!   (`vector::assemble_m2f_px`, 16 pixels per step, one weight read
//!   per block), else f32x4 lanes, one accumulator per token. `Wo`, `bo` and `z` are
//!   a GEMM into the output and the shared layer-norm kernel finishes in
//!   place.
//! - **`fused_f2m`**: K and V are projected, then splatted to f32x4 per
//!   (channel, token) ([`Splat`]); [`F2mCore`] takes one unit per (image,
//!   head, run of pixels) and four pixels at a time: the `M` scores are `M`
//!   f32x4 accumulators over the head's channels, their softmax runs across
//!   the accumulators (lane-wise, in registers), and `y + Σ_m a_m V_m` is
//!   stored channel by channel (one read of `y`, one write). On AVX-512
//!   the run is one assembled call instead (`vector::assemble_f2m_run`:
//!   16 pixels per step, the scores in zmm registers, K and V read
//!   unsplatted by embedded broadcast, so [`Splat`] is skipped).
//! - **`fused_mha`**: the projected sides go to scratch, then one unit per
//!   batch element computes per query and head the scores over the keys,
//!   their softmax and the weighted sum of the values ([`MhaKernel`]).
//!
//! Token counts above [`MAX_TOKENS`] keep the expansion (the bridges hold
//! one accumulator per token), as do operand shapes that only broadcast
//! (a batch of 1 against `N`); `fused_xca` always does. `fused_sep_attn`
//! has its kernel in `sep_attn.rs`.

use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::types::I64;
use cranelift_codegen::ir::{AbiParam, InstBuilder, MemFlagsData, Signature, Type, Value};
use cranelift_codegen::isa::CallConv;
use kiln_ir::TensorType;
use kiln_ir::fused::{Act, FusedOp};

use super::epilogue::Epilogue;
use super::gemm::{self, ASrc, BSrc, Gemm};
use super::rows::{Fold, map_run, reduce_run};
use super::{Kernel, Kernels, NodeCx, Operand, matmul, norm};
use crate::codegen::math::exp;
use crate::codegen::{Buf, Emitter, F32, Loc, V4};
use crate::error::BackendError;
use crate::ukernels::Spec;
use crate::ukernels::vector::{self, Width};

/// The most tokens a bridge kernel takes: one f32x4 accumulator per token
/// is live in its inner loops (Mobile-Former has 3–6 tokens).
pub(crate) const MAX_TOKENS: usize = 12;

/// Pixels per unit of the Former→Mobile kernel (a multiple of 4): enough to
/// amortise the per-unit set-up, small enough to split one head over two
/// threads.
const F2M_RUN: usize = 256;

fn shape_is(t: Option<&TensorType>, s: &[usize]) -> bool {
    t.is_some_and(|t| t.shape == s)
}

/// The dimensions of a bridge, from its operand types.
#[derive(Clone, Copy, Debug)]
struct Bridge {
    n: usize,
    c: usize,
    /// pixels per channel (`H·W`)
    l: usize,
    /// tokens
    m: usize,
    /// token width
    d: usize,
    heads: usize,
}

impl Bridge {
    fn of(ops: &[TensorType], heads: usize) -> Option<Bridge> {
        let (x, z) = (ops.first()?, ops.get(1)?);
        if x.rank() != 4 || z.rank() != 3 || heads == 0 || x.shape[1] % heads != 0 {
            return None;
        }
        let b = Bridge {
            n: x.shape[0],
            c: x.shape[1],
            l: x.shape[2] * x.shape[3],
            m: z.shape[1],
            d: z.shape[2],
            heads,
        };
        (z.shape[0] == b.n && (1..=MAX_TOKENS).contains(&b.m)).then_some(b)
    }

    /// channels per head
    fn dh(&self) -> usize {
        self.c / self.heads
    }
}

use kiln_ir::fused::f2m::OPERANDS as F2M;
use kiln_ir::fused::m2f::{Source, operands as m2f_layout};

/// Byte offsets of the scratch arrays of a bridge, and the total.
struct Scratch {
    parts: Vec<usize>,
    total: usize,
}

impl Scratch {
    fn new(sizes: &[usize]) -> Scratch {
        let mut parts = Vec::new();
        let mut total = 0;
        for &s in sizes {
            parts.push(total);
            // keep every array 64-byte aligned
            total += (4 * s).div_ceil(64) * 64;
        }
        Scratch { parts, total }
    }
}

/// Scratch arrays of `fused_m2f`: `Q`, the gate, the scores, the gated
/// attention output, `scale·Q`.
fn m2f_scratch(b: &Bridge) -> Scratch {
    let nmc = b.n * b.m * b.c;
    Scratch::new(&[nmc, nmc, b.n * b.heads * b.m * b.l, nmc, nmc])
}

/// Scratch arrays of `fused_f2m`: the projected keys and values, then
/// both splatted to f32x4.
fn f2m_scratch(b: &Bridge) -> Scratch {
    let nmc = b.n * b.m * b.c;
    Scratch::new(&[nmc, nmc, 4 * nmc, 4 * nmc])
}

/// The dimensions of a `fused_mha`.
#[derive(Clone, Copy, Debug)]
struct Mha {
    b: usize,
    tq: usize,
    tk: usize,
    /// query/key width after projection
    d: usize,
    /// value width after projection
    dvo: usize,
    heads: usize,
}

fn mha_of(f: &FusedOp, ops: &[TensorType]) -> Option<Mha> {
    let FusedOp::Attention {
        heads,
        proj_q,
        proj_k,
        proj_v,
        ..
    } = *f
    else {
        return None;
    };
    let l = kiln_ir::fused::mha::operands(proj_q, proj_k, proj_v);
    let (xq, xk, xv) = (ops.get(l.xq)?, ops.get(l.xk)?, ops.get(l.xv)?);
    if [xq, xk, xv].iter().any(|t| t.rank() != 3) || heads == 0 {
        return None;
    }
    let (b, tq, tk) = (xq.shape[0], xq.shape[1], xk.shape[1]);
    if xk.shape[0] != b || xv.shape[0] != b || xv.shape[1] != tk {
        return None;
    }
    let (dq, dk, dv) = (xq.shape[2], xk.shape[2], xv.shape[2]);
    let width = |proj: Option<(usize, usize)>, din: usize| -> Option<usize> {
        let Some((w, bias)) = proj else {
            return Some(din);
        };
        let (w, bias) = (ops.get(w)?, ops.get(bias)?);
        let dout = *w.shape.get(1)?;
        (w.shape == [din, dout] && bias.shape == [dout]).then_some(dout)
    };
    let d = width(l.q, dq)?;
    let dkk = width(l.k, dk)?;
    let dvo = width(l.v, dv)?;
    (d == dkk && d % heads == 0 && dvo % heads == 0).then_some(Mha {
        b,
        tq,
        tk,
        d,
        dvo,
        heads,
    })
}

/// Scratch arrays of `fused_mha`: per batch element the projected Q, K, V
/// (where projected) and one row of scores.
fn mha_scratch(a: &Mha) -> Scratch {
    Scratch::new(&[
        a.b * a.tq * a.d,
        a.b * a.tk * a.d,
        a.b * a.tk * a.dvo,
        a.b * a.tk,
    ])
}

/// Whether this module has a kernel for fused op `f` with operand types
/// `ops` (the caller checked the op is well typed: it has an output).
pub(crate) fn has_kernel(f: &FusedOp, ops: &[TensorType]) -> bool {
    match *f {
        FusedOp::M2fBridge {
            heads,
            proj_q,
            gate,
            ..
        } => {
            let Some(b) = Bridge::of(ops, heads) else {
                return false;
            };
            let l = m2f_layout(proj_q, gate);
            let (nmc, dc, cd) = ([b.n, b.m, b.c], [b.d, b.c], [b.c, b.d]);
            let proj_ok = |src: Source| match src {
                Source::Projected(w, bias) => {
                    shape_is(ops.get(w), &dc) && shape_is(ops.get(bias), &[b.c])
                }
                Source::Given(i) => shape_is(ops.get(i), &nmc),
            };
            proj_ok(l.q)
                && proj_ok(l.gate)
                && shape_is(ops.get(l.wo), &cd)
                && [l.bo, l.gamma, l.beta]
                    .iter()
                    .all(|&k| shape_is(ops.get(k), &[b.d]))
                && ops.len() == l.count
        }
        FusedOp::F2mBridge { heads, .. } => {
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
        FusedOp::Attention { .. } => mha_of(f, ops).is_some() && ops.len() == f.num_operands(),
        _ => false,
    }
}

/// Bytes of scratch the kernels of `f` need.
pub(crate) fn scratch_bytes(f: &FusedOp, ops: &[TensorType]) -> usize {
    if !has_kernel(f, ops) {
        return 0;
    }
    match *f {
        FusedOp::M2fBridge { heads, .. } => {
            Bridge::of(ops, heads).map_or(0, |b| m2f_scratch(&b).total)
        }
        FusedOp::F2mBridge { heads, .. } => {
            Bridge::of(ops, heads).map_or(0, |b| f2m_scratch(&b).total)
        }
        FusedOp::Attention { .. } => mha_of(f, ops).map_or(0, |a| mha_scratch(&a).total),
        _ => 0,
    }
}

/// A pointer into a tensor and its read flags, at run time.
#[derive(Clone, Copy)]
struct Ptr {
    p: Value,
    f: MemFlagsData,
}

impl Ptr {
    fn at(self, e: &mut Emitter, idx: Value, scale: i64) -> Ptr {
        Ptr {
            p: e.index(self.p, idx, scale),
            f: self.f,
        }
    }
    fn off(self, e: &mut Emitter, bytes: i64) -> Ptr {
        Ptr {
            p: e.off(self.p, bytes),
            f: self.f,
        }
    }
    fn load(self, e: &mut Emitter, ty: Type, bytes: i64) -> Value {
        e.load(ty, self.f, self.p, bytes)
    }
}

/// The base of `buf` with its read flags.
fn base(e: &mut Emitter, buf: Buf) -> Ptr {
    Ptr {
        p: e.base(buf),
        f: Emitter::rflags(buf),
    }
}

/// `dst = k · src` over `len` contiguous elements (one unit: a few
/// hundred elements of token-side queries).
struct Scale {
    src: Buf,
    dst: Buf,
    len: usize,
    k: f32,
}

impl Kernel for Scale {
    fn describe(&self) -> String {
        format!("fused_m2f query scale x{} over {}", self.k, self.len)
    }

    fn units(&self) -> usize {
        usize::from(self.len > 0)
    }

    fn cost(&self) -> f64 {
        self.len as f64
    }

    fn emit(&self, e: &mut Emitter, begin: Value, end: Value) {
        let src = e.base(self.src);
        let dst = e.base(self.dst);
        let rf = Emitter::rflags(self.src);
        let k = self.k;
        e.for_range(begin, end, 1, |e, _| {
            let kv = e.kc(V4, k);
            let ks = e.fc(k);
            let f = |e: &mut Emitter, ty: Type, x: Value| {
                e.b.ins().fmul(x, if ty == V4 { kv } else { ks })
            };
            map_run(e, dst, src, self.len, rf, &f, false);
        });
    }
}

/// `Σ_i a[i]·b[i]` over a contiguous run of `len` (f32x4 lanes, then
/// scalars), in a fixed order.
fn dot(e: &mut Emitter, a: Ptr, b: Ptr, len: usize) -> Value {
    let zero = e.kc(V4, 0.0);
    let acc = e.var(V4, zero);
    e.for_static(0, 16 * (len / 4) as i64, 16, |e, o| {
        let x = a.at(e, o, 1).load(e, V4, 0);
        let y = b.at(e, o, 1).load(e, V4, 0);
        let s = e.b.use_var(acc);
        let r = e.mul_add(x, y, s);
        e.b.def_var(acc, r);
    });
    let v = e.b.use_var(acc);
    let mut s = e.hsum(v);
    for i in 4 * (len / 4)..len {
        let x = a.load(e, F32, 4 * i as i64);
        let y = b.load(e, F32, 4 * i as i64);
        s = e.mul_add(x, y, s);
    }
    s
}

/// Softmax of a contiguous row in place, unnormalised: `row = exp(row -
/// max)`; returns `1 / Σ row`.
fn exp_row(e: &mut Emitter, row: Ptr, len: usize) -> Value {
    let m = reduce_run(e, Fold::Max, row.p, len, 1, row.f, None);
    let mv = e.b.ins().splat(V4, m);
    let sub_exp = |e: &mut Emitter, ty: Type, v: Value| {
        let d = e.b.ins().fsub(v, if ty == V4 { mv } else { m });
        exp(e, ty, d)
    };
    let s = map_run(e, row.p, row.p, len, row.f, &sub_exp, true).unwrap_or(m);
    let one = e.fc(1.0);
    e.b.ins().fdiv(one, s)
}

/// The mobile→former kernel of one (image, head) per unit: see the module
/// docs. Writes the gated attention output `[N, M, C]` to scratch.
struct M2fCore {
    b: Bridge,
    x: Buf,
    /// the gate `[N, M, C]`: given, or `hsig(zWa + ba)` from the GEMM,
    /// which this kernel doubles (`twice`; exact in floating point)
    g: Buf,
    twice: bool,
    /// scratch: the scaled scores `[N·h, M, L]` (from the GEMM), the
    /// output `[N, M, C]`
    ss: Buf,
    so: Buf,
    /// the assembled row softmax, by its number in the `Registry`
    asm: Option<usize>,
    /// the assembled `P·X` pass (`vector::assemble_m2f_px`) for blocks
    /// of `cb` channels and for the head's last `dh mod cb`, only with the
    /// row softmax (it takes the weights normalised)
    px: Option<PxFns>,
}

/// The assembled `P·X` functions of an `M2fCore`, by their numbers in the
/// `Registry`.
#[derive(Clone, Copy)]
struct PxFns {
    cb: usize,
    block: usize,
    tail: Option<usize>,
}

impl Kernel for M2fCore {
    fn describe(&self) -> String {
        let b = &self.b;
        format!(
            "fused_m2f attention: {} tokens over {}x{}x{} pixels, {} heads",
            b.m, b.n, b.c, b.l, b.heads
        )
    }

    fn units(&self) -> usize {
        if self.b.l == 0 || self.b.c == 0 {
            0
        } else {
            self.b.n * self.b.heads
        }
    }

    fn cost(&self) -> f64 {
        let b = &self.b;
        (b.n * b.c * b.l * b.m * 2 + 2 * b.n * b.m * b.c * b.d) as f64
    }

    fn emit(&self, e: &mut Emitter, begin: Value, end: Value) {
        let b = self.b;
        let (m, c, l, dh) = (b.m, b.c, b.l, b.dh());
        let x = base(e, self.x);
        let g = base(e, self.g);
        let ss = base(e, self.ss);
        let so = base(e, self.so);
        let wf = Emitter::wflags();
        // fn(src, dst, n) of the assembled row softmax (vector)
        let asm = self.asm.map(|id| {
            let mut sig = Signature::new(CallConv::SystemV);
            for _ in 0..3 {
                sig.params.push(AbiParam::new(I64));
            }
            (e.b.import_signature(sig), id)
        });
        // fn(x, p, g, o) of the assembled P·X pass
        let px = self.px.filter(|_| self.asm.is_some()).map(|fns| {
            let mut sig = Signature::new(CallConv::SystemV);
            for _ in 0..4 {
                sig.params.push(AbiParam::new(I64));
            }
            (e.b.import_signature(sig), fns)
        });
        e.for_range(begin, end, 1, |e, u| {
            let n = e.b.ins().udiv_imm_u(u, b.heads as i64);
            let j = e.b.ins().urem_imm_u(u, b.heads as i64);
            // element offset of (n, 0, j·dh) in the [N, M, C] arrays
            let nm = e.b.ins().imul_imm_s(n, (m * c) as i64);
            let jd = e.b.ins().imul_imm_s(j, dh as i64);
            let tok = e.b.ins().iadd(nm, jd);
            let gh = g.at(e, tok, 4);
            let oh = so.at(e, tok, 4);
            let xh = x.at(e, u, 4 * (dh * l) as i64);
            let sh = ss.at(e, u, 4 * (m * l) as i64);
            let l4 = 4 * (l / 4);
            // each token's row of scores becomes its softmax: normalised
            // in place by the assembled row function, else exponentiated
            // in place and scaled by `1/Σ` below
            let inv: Vec<Option<Value>> = (0..m)
                .map(|t| {
                    let row = sh.off(e, 4 * (t * l) as i64);
                    match asm {
                        Some((sig, id)) => {
                            let f = e.asm_fn(id);
                            let len = e.ic(l as i64);
                            e.b.ins().call_indirect(sig, f, &[row.p, row.p, len]);
                            None
                        }
                        None => Some(exp_row(e, row, l)),
                    }
                })
                .collect();
            if let Some((sig, fns)) = px {
                // blocks of channels, 16 pixels at a time, gated and
                // stored by the assembled pass
                let call = |e: &mut Emitter, id: usize, ch: Value| {
                    let xc = xh.at(e, ch, 4 * l as i64);
                    let gc = gh.at(e, ch, 4);
                    let oc = oh.at(e, ch, 4);
                    let f = e.asm_fn(id);
                    e.b.ins().call_indirect(sig, f, &[xc.p, sh.p, gc.p, oc.p]);
                };
                let full = fns.cb * (dh / fns.cb);
                e.for_static(0, full as i64, fns.cb as i64, |e, ch| {
                    call(e, fns.block, ch)
                });
                if let Some(id) = fns.tail {
                    let ch = e.ic(full as i64);
                    call(e, id, ch);
                }
                return;
            }
            // per channel: Σ_l P[t,l]·X[ch,l] for every token t
            e.for_static(0, dh as i64, 1, |e, ch| {
                let xc = xh.at(e, ch, 4 * l as i64);
                let zero = e.kc(V4, 0.0);
                let accs: Vec<_> = (0..m).map(|_| e.var(V4, zero)).collect();
                e.for_static(0, 4 * l4 as i64, 16, |e, lo| {
                    let xv = xc.at(e, lo, 1).load(e, V4, 0);
                    let sl = sh.at(e, lo, 1);
                    for (t, &acc) in accs.iter().enumerate() {
                        let pv = sl.load(e, V4, 4 * (t * l) as i64);
                        let a = e.b.use_var(acc);
                        let y = e.mul_add(pv, xv, a);
                        e.b.def_var(acc, y);
                    }
                });
                let gc = gh.at(e, ch, 4);
                let oc = oh.at(e, ch, 4);
                for (t, &acc) in accs.iter().enumerate() {
                    let a = e.b.use_var(acc);
                    let mut s = e.hsum(a);
                    for p in l4..l {
                        let xv = xc.load(e, F32, 4 * p as i64);
                        let pv = sh.load(e, F32, 4 * (t * l + p) as i64);
                        s = e.mul_add(pv, xv, s);
                    }
                    let o = match inv[t] {
                        Some(i) => e.b.ins().fmul(s, i),
                        None => s,
                    };
                    let mut gv = gc.load(e, F32, 4 * (t * c) as i64);
                    if self.twice {
                        gv = e.b.ins().fadd(gv, gv);
                    }
                    let y = e.b.ins().fmul(o, gv);
                    e.store(wf, y, oc.p, 4 * (t * c) as i64);
                }
            });
        });
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

/// `fused_mha`: one unit per batch element; see the module docs.
struct MhaKernel {
    a: Mha,
    scale: f32,
    /// Q `[B, Tq, D]`, K `[B, Tk, D]`, V `[B, Tk, Dv']`: the inputs, or
    /// their projections in scratch
    qkv: [Buf; 3],
    /// scratch: one row of scores per batch element
    srow: Buf,
    out: Buf,
}

impl Kernel for MhaKernel {
    fn describe(&self) -> String {
        let a = &self.a;
        format!(
            "fused_mha {} queries over {} keys, {} heads, width {}",
            a.tq, a.tk, a.heads, a.d
        )
    }

    fn units(&self) -> usize {
        self.a.b
    }

    fn cost(&self) -> f64 {
        let a = &self.a;
        (2 * a.b * a.tq * a.tk * (a.d + a.dvo)) as f64
    }

    fn emit(&self, e: &mut Emitter, begin: Value, end: Value) {
        let a = self.a;
        let side: Vec<Ptr> = self.qkv.iter().map(|&x| base(e, x)).collect();
        let srow = base(e, self.srow);
        let out = e.base(self.out);
        let wf = Emitter::wflags();
        let (dh, dvh) = (a.d / a.heads, a.dvo / a.heads);
        e.for_range(begin, end, 1, |e, bi| {
            let q = side[0].at(e, bi, 4 * (a.tq * a.d) as i64);
            let k = side[1].at(e, bi, 4 * (a.tk * a.d) as i64);
            let v = side[2].at(e, bi, 4 * (a.tk * a.dvo) as i64);
            let srow = srow.at(e, bi, 4 * a.tk as i64);
            let ob = e.index(out, bi, 4 * (a.tq * a.dvo) as i64);
            e.for_static(0, a.tq as i64, 1, |e, i| {
                let qi = q.at(e, i, 4 * a.d as i64);
                let oi = e.index(ob, i, 4 * a.dvo as i64);
                for h in 0..a.heads {
                    let qh = qi.off(e, 4 * (h * dh) as i64);
                    let kh = k.off(e, 4 * (h * dh) as i64);
                    e.for_static(0, a.tk as i64, 1, |e, t| {
                        let kt = kh.at(e, t, 4 * a.d as i64);
                        let s = dot(e, qh, kt, dh);
                        let sk = e.fc(self.scale);
                        let s = e.b.ins().fmul(s, sk);
                        let p = e.index(srow.p, t, 4);
                        e.store(wf, s, p, 0);
                    });
                    let inv = exp_row(e, srow, a.tk);
                    let vh = v.off(e, 4 * (h * dvh) as i64);
                    let oh = e.off(oi, 4 * (h * dvh) as i64);
                    // the weighted sum of the values, f32x4 lanes over columns
                    let cols = |e: &mut Emitter, jo: i64, ty: Type| {
                        let zero = e.kc(ty, 0.0);
                        let acc = e.var(ty, zero);
                        e.for_static(0, a.tk as i64, 1, |e, t| {
                            let pt = srow.at(e, t, 4).load(e, F32, 0);
                            let pv = e.widen(ty, pt);
                            let vt = vh.at(e, t, 4 * a.dvo as i64).load(e, ty, jo);
                            let s = e.b.use_var(acc);
                            let r = e.mul_add(pv, vt, s);
                            e.b.def_var(acc, r);
                        });
                        let s = e.b.use_var(acc);
                        let iv = e.widen(ty, inv);
                        let r = e.b.ins().fmul(s, iv);
                        e.store(wf, r, oh, jo);
                    };
                    for j in (0..4 * (dvh / 4)).step_by(4) {
                        cols(e, 4 * j as i64, V4);
                    }
                    for j in 4 * (dvh / 4)..dvh {
                        cols(e, 4 * j as i64, F32);
                    }
                }
            });
        });
    }
}

/// The `k`-th scratch array of a node.
fn part(cx: &NodeCx, s: &Scratch, k: usize) -> Result<Buf, BackendError> {
    match cx.scratch {
        Some(Buf {
            loc: Loc::Arena(off),
            ..
        }) => Ok(Buf::output(Loc::Arena(off + s.parts[k]))),
        _ => Err(cx.unsupported("attention kernel without its arena scratch")),
    }
}

/// `dst = x·w + bias` (`x [.., K]`, `w [K, N]`) with `epi`, on the GEMM
/// driver: `matmul::lower_linear` on a node of its own made of these
/// operands (weights are packed at compile time as for `fused_linear`).
fn project<'a>(
    cx: &mut NodeCx<'a>,
    x: Operand<'a>,
    w: usize,
    bias: usize,
    dst: (Buf, Vec<usize>),
    epi: Epilogue,
) -> Result<Kernels, BackendError> {
    let wo = &cx.ins[w];
    let ins = vec![
        x,
        Operand {
            buf: wo.buf,
            ty: wo.ty.clone(),
            data: wo.data,
        },
    ];
    let bias = cx.ins[bias].buf;
    let mut sub = NodeCx {
        name: cx.name.clone(),
        op: cx.op,
        ins,
        outs: vec![(dst.0, TensorType::f32(dst.1))],
        scratch: None,
        threads: cx.threads,
        tile: cx.tile,
        consts: &mut *cx.consts,
        asm: cx.asm.as_deref_mut(),
    };
    matmul::lower_linear(&mut sub, Some(bias), epi)
}

/// Operand `i` of the node, as a sub-node's operand.
fn operand<'a>(cx: &NodeCx<'a>, i: usize) -> Operand<'a> {
    let o = &cx.ins[i];
    Operand {
        buf: o.buf,
        ty: o.ty.clone(),
        data: o.data,
    }
}

/// A scratch array as a sub-node's (run-time) operand.
fn scratch_operand<'a>(buf: Buf, shape: Vec<usize>) -> Operand<'a> {
    Operand {
        buf,
        ty: TensorType::f32(shape),
        data: None,
    }
}

/// Lowers a `fused_m2f`, `fused_f2m` or `fused_mha` that [`has_kernel`].
pub(crate) fn lower(cx: &mut NodeCx, f: &FusedOp) -> Result<Kernels, BackendError> {
    let types: Vec<TensorType> = cx.ins.iter().map(|o| o.ty.clone()).collect();
    if !has_kernel(f, &types) {
        return Err(cx.unsupported(format!("{} operands this kernel does not take", f.name())));
    }
    match f {
        FusedOp::M2fBridge { .. } => lower_m2f(cx, f, &types),
        FusedOp::F2mBridge { .. } => lower_f2m(cx, f, &types),
        FusedOp::Attention { .. } => lower_mha(cx, f, &types),
        _ => Err(cx.unsupported(format!("{} has no attention kernel", f.name()))),
    }
}

/// The Mobile→Former bridge: projections, scores, the core, the output projection and its layer norm.
fn lower_m2f(cx: &mut NodeCx, f: &FusedOp, types: &[TensorType]) -> Result<Kernels, BackendError> {
    let FusedOp::M2fBridge {
        heads,
        scale,
        eps,
        proj_q,
        gate,
    } = *f
    else {
        return Err(cx.unsupported(format!("{} is not fused_m2f", f.name())));
    };
    let out = cx.outs[0].0;
    let mut ks: Kernels = Vec::new();
    let b = Bridge::of(types, heads).ok_or_else(|| cx.unsupported("bridge shape"))?;
    let s = m2f_scratch(&b);
    let l = m2f_layout(proj_q, gate);
    let nmc = vec![b.n, b.m, b.c];
    let (sq, sg, so) = (part(cx, &s, 0)?, part(cx, &s, 1)?, part(cx, &s, 3)?);
    let q = match l.q {
        Source::Projected(w, bias) => {
            let z = operand(cx, l.z);
            ks.extend(project(cx, z, w, bias, (sq, nmc.clone()), Epilogue::NONE)?);
            sq
        }
        Source::Given(q) => cx.ins[q].buf,
    };
    let g = match l.gate {
        Source::Projected(w, bias) => {
            let z = operand(cx, l.z);
            let epi = Epilogue {
                act: Act::HardSigmoid,
                ..Epilogue::NONE
            };
            ks.extend(project(cx, z, w, bias, (sg, nmc.clone()), epi)?);
            sg
        }
        Source::Given(g) => cx.ins[g].buf,
    };
    let asm = match cx.asm512() {
        Some(store) => Some(
            store
                .request(Spec::SoftmaxRow(Width::Zmm))
                .map_err(BackendError::Jit)?,
        ),
        None => None,
    };
    // scale·Q, so that the scores' GEMM has no alpha (the
    // assembled tiles have none)
    let sq2 = part(cx, &s, 4)?;
    ks.push(Box::new(Scale {
        src: q,
        dst: sq2,
        len: b.n * b.m * b.c,
        k: scale.0,
    }));
    // the scores of every (image, head): Q_j [M, dh] · X_j [dh, L]
    // with X read in place
    let ss = part(cx, &s, 2)?;
    let offs: Vec<[i64; 4]> = (0..b.n * heads)
        .map(|u| {
            let (n, j) = (u / heads, u % heads);
            [
                (n * b.m * b.c + j * b.dh()) as i64,
                (u * b.dh() * b.l) as i64,
                (u * b.m * b.l) as i64,
                0,
            ]
        })
        .collect();
    let gm = Gemm {
        batch: b.n * heads,
        offsets: gemm::offset_table(cx.consts, &offs),
        title: Some(format!(
            "fused_m2f scores {}x{}x{} x{}",
            b.m,
            b.dh(),
            b.l,
            b.n * heads
        )),
        ..Gemm::new(
            "matmul",
            [b.m, b.l, b.dh()],
            ASrc::Strided {
                buf: sq2,
                rs: b.c as i64,
                ks: 1,
            },
            BSrc::Strided {
                buf: cx.ins[l.x].buf,
                ks: b.l as i64,
            },
            (ss, b.l as i64),
            matmul::tile_for(cx, true),
        )
    };
    ks.push(Box::new(matmul::finish(cx, gm)?));
    let px = match (asm, cx.asm512()) {
        // (no channels: no pass, and no block size)
        (Some(_), Some(store)) if b.dh() > 0 && vector::m2f_px_fits(b.m, b.l, b.c) => {
            let (m, l, c) = (b.m, b.l, b.c);
            let mut get = |cb: usize| {
                store
                    .request(Spec::M2fPx {
                        m,
                        l,
                        c,
                        cb,
                        twice: gate,
                    })
                    .map_err(BackendError::Jit)
            };
            let cb = vector::m2f_px_block(m).min(b.dh());
            let tail = b.dh() % cb;
            Some(PxFns {
                cb,
                block: get(cb)?,
                tail: if tail > 0 { Some(get(tail)?) } else { None },
            })
        }
        _ => None,
    };
    ks.push(Box::new(M2fCore {
        b,
        x: cx.ins[l.x].buf,
        g,
        twice: gate,
        ss,
        so,
        asm,
        px,
    }));
    // out = z + og·Wo + bo, then the layer norm in place
    let epi = Epilogue {
        residual: Some(cx.ins[l.z].buf),
        ..Epilogue::NONE
    };
    let og = scratch_operand(so, nmc);
    ks.extend(project(
        cx,
        og,
        l.wo,
        l.bo,
        (out, vec![b.n, b.m, b.d]),
        epi,
    )?);
    let params = [cx.ins[l.gamma].buf, cx.ins[l.beta].buf];
    ks.push(norm::layer_norm(out, params, out, b.d, b.n * b.m, eps.0));
    Ok(ks)
}

/// The Former→Mobile bridge: the token projections, then the per-pixel core.
fn lower_f2m(cx: &mut NodeCx, f: &FusedOp, types: &[TensorType]) -> Result<Kernels, BackendError> {
    let FusedOp::F2mBridge { heads, scale } = *f else {
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

/// Multi-head attention: the optional Q/K/V projections, then the core.
fn lower_mha(cx: &mut NodeCx, f: &FusedOp, types: &[TensorType]) -> Result<Kernels, BackendError> {
    let FusedOp::Attention {
        scale,
        proj_q,
        proj_k,
        proj_v,
        ..
    } = *f
    else {
        return Err(cx.unsupported(format!("{} is not fused_mha", f.name())));
    };
    let out = cx.outs[0].0;
    let mut ks: Kernels = Vec::new();
    let a = mha_of(f, types).ok_or_else(|| cx.unsupported("attention shape"))?;
    let s = mha_scratch(&a);
    let rows = [a.tq, a.tk, a.tk];
    let dout = [a.d, a.d, a.dvo];
    let l = kiln_ir::fused::mha::operands(proj_q, proj_k, proj_v);
    let inputs = [l.xq, l.xk, l.xv];
    let mut qkv = inputs.map(|i| cx.ins[i].buf);
    for (side, proj) in [l.q, l.k, l.v].into_iter().enumerate() {
        if let Some((w, bias)) = proj {
            let dst = part(cx, &s, side)?;
            let x = operand(cx, inputs[side]);
            let shape = vec![a.b, rows[side], dout[side]];
            ks.extend(project(cx, x, w, bias, (dst, shape), Epilogue::NONE)?);
            qkv[side] = dst;
        }
    }
    ks.push(Box::new(MhaKernel {
        a,
        scale: scale.0,
        qkv,
        srow: part(cx, &s, 3)?,
        out,
    }));
    Ok(ks)
}
