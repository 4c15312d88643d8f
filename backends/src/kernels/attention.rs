//! Kernels of the attention-type fused ops: Mobile-Former's bridges
//! (`fused_m2f`, `fused_f2m`) and token attention (`fused_mha`), each one to
//! three kernels instead of the dozen transposes, small matmuls and
//! element-wise ops of their expansion (`FusedOp::expand`, the definition
//! these kernels are tested against).
//!
//! - **`fused_m2f`**: one unit per (image, head). The head's queries
//!   (`Q = zWq + bq`, and the gate `2·hsig(zWa + ba)`) are projected into
//!   scratch; the scores `scale · Q_j X_j` are computed with f32x4 lanes
//!   over the pixels, reading the feature map in its native `[N,C,H,W]`
//!   layout (each channel row once, `M` accumulators); each token's row of
//!   scores gets its softmax in place; then `Σ_l P[m,l]·X[c,l]` per channel
//!   (one more read of the map) times the gate goes to scratch. A second
//!   kernel (per image) projects with `Wo`, adds `z`, and the shared layer
//!   norm kernel finishes.
//! - **`fused_f2m`**: the key/value projections of the `M` tokens go to
//!   scratch (one unit per image); then one unit per (image, head, run of
//!   pixels): four pixels at a time, the `M` scores are `M` f32x4
//!   accumulators over the head's channels, their softmax runs across the
//!   accumulators (lane-wise, in registers), and the weighted sum of the
//!   values is added to `y` channel by channel.
//! - **`fused_mha`**: one unit per batch element: the projected sides go to
//!   scratch, then per query and head the scores over the keys, their
//!   softmax and the weighted sum of the values.
//!
//! Token counts above [`MAX_TOKENS`] keep the expansion (the bridges hold
//! one accumulator per token), as do operand shapes that only broadcast
//! (a batch of 1 against `N`); `fused_sep_attn` and `fused_xca` always do.

use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{InstBuilder, MemFlagsData, Type, Value};
use kiln_ir::TensorType;
use kiln_ir::fused::FusedOp;

use super::rows::{Fold, map_run, reduce_run};
use super::{Kernel, Kernels, NodeCx, norm};
use crate::codegen::math::{clamp, exp};
use crate::codegen::{Buf, Emitter, F32, Loc, V4};
use crate::error::BackendError;

/// The most tokens a bridge kernel takes: one f32x4 accumulator per token
/// is live in its inner loops (Mobile-Former has 3–6 tokens).
pub(crate) const MAX_TOKENS: usize = 12;

/// Pixels per unit of the Former→Mobile kernel (a multiple of 4): enough to
/// amortise the per-unit set-up, small enough to split one head over two
/// threads.
const F2M_RUN: usize = 256;

/// Columns of one block of [`linear`]: four f32x4 accumulators.
const LIN_BLOCK: usize = 16;

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

/// Where a `fused_m2f`'s operands and scratch arrays are.
struct M2fLayout {
    wq: Option<(usize, usize)>,
    q: Option<usize>,
    wa: Option<(usize, usize)>,
    g: Option<usize>,
    /// `wo, bo, gamma, beta`
    tail: usize,
}

fn m2f_layout(proj_q: bool, gate: bool) -> M2fLayout {
    let mut i = 2;
    let mut take = |k: usize| {
        i += k;
        i - k
    };
    let (wq, q) = if proj_q {
        let a = take(2);
        (Some((a, a + 1)), None)
    } else {
        (None, Some(take(1)))
    };
    let (wa, g) = if gate {
        let a = take(2);
        (Some((a, a + 1)), None)
    } else {
        (None, Some(take(1)))
    };
    M2fLayout {
        wq,
        q,
        wa,
        g,
        tail: take(4),
    }
}

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
/// attention output.
fn m2f_scratch(b: &Bridge) -> Scratch {
    let nmc = b.n * b.m * b.c;
    Scratch::new(&[nmc, nmc, b.n * b.heads * b.m * b.l, nmc])
}

/// Scratch arrays of `fused_f2m`: the projected keys and values.
fn f2m_scratch(b: &Bridge) -> Scratch {
    let nmc = b.n * b.m * b.c;
    Scratch::new(&[nmc, nmc])
}

/// The dimensions of a `fused_mha`.
#[derive(Clone, Copy, Debug)]
struct Mha {
    b: usize,
    tq: usize,
    tk: usize,
    dq: usize,
    dk: usize,
    dv: usize,
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
    let (xq, xk, xv) = (ops.first()?, ops.get(1)?, ops.get(2)?);
    if [xq, xk, xv].iter().any(|t| t.rank() != 3) || heads == 0 {
        return None;
    }
    let (b, tq, tk) = (xq.shape[0], xq.shape[1], xk.shape[1]);
    if xk.shape[0] != b || xv.shape[0] != b || xv.shape[1] != tk {
        return None;
    }
    let (dq, dk, dv) = (xq.shape[2], xk.shape[2], xv.shape[2]);
    let mut i = 3;
    let mut width = |on: bool, din: usize| -> Option<usize> {
        if !on {
            return Some(din);
        }
        let (w, bias) = (ops.get(i)?, ops.get(i + 1)?);
        i += 2;
        let dout = *w.shape.get(1)?;
        (w.shape == [din, dout] && bias.shape == [dout]).then_some(dout)
    };
    let d = width(proj_q, dq)?;
    let dkk = width(proj_k, dk)?;
    let dvo = width(proj_v, dv)?;
    (d == dkk && d % heads == 0 && dvo % heads == 0).then_some(Mha {
        b,
        tq,
        tk,
        dq,
        dk,
        dv,
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
            let proj_ok = |w: Option<(usize, usize)>, given: Option<usize>| match (w, given) {
                (Some((w, bias)), _) => {
                    shape_is(ops.get(w), &dc) && shape_is(ops.get(bias), &[b.c])
                }
                (None, Some(i)) => shape_is(ops.get(i), &nmc),
                (None, None) => false,
            };
            proj_ok(l.wq, l.q)
                && proj_ok(l.wa, l.g)
                && shape_is(ops.get(l.tail), &cd)
                && (1..4).all(|k| shape_is(ops.get(l.tail + k), &[b.d]))
                && ops.len() == l.tail + 4
        }
        FusedOp::F2mBridge { heads, .. } => {
            let Some(b) = Bridge::of(ops, heads) else {
                return false;
            };
            ops.len() == 6
                && [2, 4].iter().all(|&i| shape_is(ops.get(i), &[b.d, b.c]))
                && [3, 5].iter().all(|&i| shape_is(ops.get(i), &[b.c]))
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

/// What [`linear`] applies to each result before storing it.
#[derive(Clone, Copy, PartialEq)]
enum Post {
    None,
    /// Mobile-Former's gate `2·hsig(y)`, hsig being PyTorch's
    /// `clamp(y/6 + 1/2, 0, 1)`
    Gate,
}

/// `out[r·os + j] = post(x[r·xs ..] · w[.., j] + b[j]) + res[r·rs + j]` for
/// `r < rows`, `j < cols`, `k` terms; strides in elements. Columns go in
/// blocks of [`LIN_BLOCK`] (four f32x4 accumulators), then single vectors,
/// then scalars.
struct Linear {
    rows: usize,
    k: usize,
    cols: usize,
    x: (Ptr, i64),
    w: (Ptr, i64),
    b: Option<Ptr>,
    res: Option<(Ptr, i64)>,
    out: (Value, i64),
    post: Post,
}

fn linear(e: &mut Emitter, l: &Linear) {
    let wf = Emitter::wflags();
    e.for_static(0, l.rows as i64, 1, |e, r| {
        let xr = l.x.0.at(e, r, 4 * l.x.1);
        let or = e.index(l.out.0, r, 4 * l.out.1);
        let rr = l.res.map(|(p, s)| p.at(e, r, 4 * s));
        // `nv` vectors of `ty` from column byte offset `jo`
        let group = |e: &mut Emitter, jo: Value, nv: usize, ty: Type| {
            let lane = if ty == V4 { 16 } else { 4 };
            let zero = e.kc(ty, 0.0);
            let accs: Vec<_> = (0..nv)
                .map(|i| {
                    let init = match l.b {
                        Some(b) => {
                            let p = b.at(e, jo, 1);
                            p.load(e, ty, lane * i as i64)
                        }
                        None => zero,
                    };
                    e.var(ty, init)
                })
                .collect();
            let wj = l.w.0.at(e, jo, 1);
            e.for_static(0, l.k as i64, 1, |e, kk| {
                let xp = xr.at(e, kk, 4);
                let xs = xp.load(e, F32, 0);
                let xv = e.widen(ty, xs);
                let wp = wj.at(e, kk, 4 * l.w.1);
                for (i, &acc) in accs.iter().enumerate() {
                    let wv = wp.load(e, ty, lane * i as i64);
                    let a = e.b.use_var(acc);
                    let y = e.mul_add(xv, wv, a);
                    e.b.def_var(acc, y);
                }
            });
            for (i, &acc) in accs.iter().enumerate() {
                let mut y = e.b.use_var(acc);
                if l.post == Post::Gate {
                    let sixth = e.kc(ty, 1.0 / 6.0);
                    let half = e.kc(ty, 0.5);
                    let two = e.kc(ty, 2.0);
                    let h = e.mul_add(y, sixth, half);
                    let h = clamp(e, ty, h, 0.0, 1.0);
                    y = e.b.ins().fmul(h, two);
                }
                let off = lane * i as i64;
                if let Some(rp) = rr {
                    let p = rp.at(e, jo, 1);
                    let v = p.load(e, ty, off);
                    y = e.b.ins().fadd(y, v);
                }
                let p = e.b.ins().iadd(or, jo);
                e.store(wf, y, p, off);
            }
        };
        let blocks = l.cols / LIN_BLOCK;
        e.for_static(
            0,
            4 * (LIN_BLOCK * blocks) as i64,
            4 * LIN_BLOCK as i64,
            |e, jo| group(e, jo, LIN_BLOCK / 4, V4),
        );
        let mut j = LIN_BLOCK * blocks;
        while j + 4 <= l.cols {
            let jo = e.ic(4 * j as i64);
            group(e, jo, 1, V4);
            j += 4;
        }
        if j < l.cols {
            let jo = e.ic(4 * j as i64);
            group(e, jo, l.cols - j, F32);
        }
    });
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
    scale: f32,
    x: Buf,
    z: Buf,
    /// `(wq, bq)` or the given `Q`
    q: Result<(Buf, Buf), Buf>,
    /// `(wa, ba)` or the given gate
    g: Result<(Buf, Buf), Buf>,
    /// scratch: Q, gate, scores, output
    sq: Buf,
    sg: Buf,
    ss: Buf,
    so: Buf,
}

/// Projects the head-`j` columns of the token-side operand `p` (`(w, b)`:
/// from `z`) into scratch `dst` (when projected), returning where head `j`'s
/// columns of image `n` start (row stride `C`).
fn head_tokens(
    e: &mut Emitter,
    b: &Bridge,
    p: Result<(Ptr, Ptr), Ptr>,
    dst: Ptr,
    z: Ptr,
    n: Value,
    j: Value,
    post: Post,
) -> Ptr {
    let (m, c, d, dh) = (b.m, b.c, b.d, b.dh());
    // element offset of (n, 0, j·dh) in an [N, M, C] array
    let nm = e.b.ins().imul_imm_s(n, (m * c) as i64);
    let jd = e.b.ins().imul_imm_s(j, dh as i64);
    let at = e.b.ins().iadd(nm, jd);
    match p {
        Err(given) => given.at(e, at, 4),
        Ok((w, bias)) => {
            let out = dst.at(e, at, 4);
            let zn = z.at(e, n, 4 * (m * d) as i64);
            let wj = w.at(e, jd, 4);
            let bj = bias.at(e, jd, 4);
            linear(
                e,
                &Linear {
                    rows: m,
                    k: d,
                    cols: dh,
                    x: (zn, d as i64),
                    w: (wj, c as i64),
                    b: Some(bj),
                    res: None,
                    out: (out.p, c as i64),
                    post,
                },
            );
            out
        }
    }
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
        let z = base(e, self.z);
        let q = match self.q {
            Ok((w, bias)) => Ok((base(e, w), base(e, bias))),
            Err(g) => Err(base(e, g)),
        };
        let g = match self.g {
            Ok((w, bias)) => Ok((base(e, w), base(e, bias))),
            Err(g) => Err(base(e, g)),
        };
        let sq = base(e, self.sq);
        let sg = base(e, self.sg);
        let ss = base(e, self.ss);
        let so = base(e, self.so);
        let wf = Emitter::wflags();
        let scale = self.scale;
        e.for_range(begin, end, 1, |e, u| {
            let n = e.b.ins().udiv_imm_u(u, b.heads as i64);
            let j = e.b.ins().urem_imm_u(u, b.heads as i64);
            let qh = head_tokens(e, &b, q, sq, z, n, j, Post::None);
            let gh = head_tokens(e, &b, g, sg, z, n, j, Post::Gate);
            // channels (n, j·dh ..) of x: u·dh rows of L pixels in
            let xh = x.at(e, u, 4 * (dh * l) as i64);
            let sh = ss.at(e, u, 4 * (m * l) as i64);
            // scores: lanes over pixels, one accumulator per token
            let scores = |e: &mut Emitter, lo: Value, ty: Type| {
                let zero = e.kc(ty, 0.0);
                let accs: Vec<_> = (0..m).map(|_| e.var(ty, zero)).collect();
                let xl = xh.at(e, lo, 1);
                e.for_static(0, dh as i64, 1, |e, ch| {
                    let xv = xl.at(e, ch, 4 * l as i64).load(e, ty, 0);
                    let qc = qh.at(e, ch, 4);
                    for (t, &acc) in accs.iter().enumerate() {
                        let s = qc.load(e, F32, 4 * (t * c) as i64);
                        let sv = e.widen(ty, s);
                        let a = e.b.use_var(acc);
                        let y = e.mul_add(sv, xv, a);
                        e.b.def_var(acc, y);
                    }
                });
                let k = e.kc(ty, scale);
                let sl = sh.at(e, lo, 1);
                for (t, &acc) in accs.iter().enumerate() {
                    let a = e.b.use_var(acc);
                    let y = e.b.ins().fmul(a, k);
                    e.store(wf, y, sl.p, 4 * (t * l) as i64);
                }
            };
            let l4 = 4 * (l / 4);
            e.for_static(0, 4 * l4 as i64, 16, |e, lo| scores(e, lo, V4));
            for p in l4..l {
                let lo = e.ic(4 * p as i64);
                scores(e, lo, F32);
            }
            let inv: Vec<Value> = (0..m)
                .map(|t| {
                    let row = sh.off(e, 4 * (t * l) as i64);
                    exp_row(e, row, l)
                })
                .collect();
            let oh = {
                let nm = e.b.ins().imul_imm_s(n, (m * c) as i64);
                let jd = e.b.ins().imul_imm_s(j, dh as i64);
                let at = e.b.ins().iadd(nm, jd);
                so.at(e, at, 4)
            };
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
                    let o = e.b.ins().fmul(s, inv[t]);
                    let gv = gc.load(e, F32, 4 * (t * c) as i64);
                    let y = e.b.ins().fmul(o, gv);
                    e.store(wf, y, oc.p, 4 * (t * c) as i64);
                }
            });
        });
    }
}

/// `out = z + og·Wo + bo` per image (the layer norm follows).
struct M2fOut {
    b: Bridge,
    og: Buf,
    z: Buf,
    wo: Buf,
    bo: Buf,
    out: Buf,
}

impl Kernel for M2fOut {
    fn describe(&self) -> String {
        format!(
            "fused_m2f output projection {}x{} -> {}",
            self.b.m, self.b.c, self.b.d
        )
    }

    fn units(&self) -> usize {
        self.b.n
    }

    fn cost(&self) -> f64 {
        let b = &self.b;
        (2 * b.n * b.m * b.c * b.d) as f64
    }

    fn emit(&self, e: &mut Emitter, begin: Value, end: Value) {
        let b = self.b;
        let og = base(e, self.og);
        let z = base(e, self.z);
        let wo = base(e, self.wo);
        let bo = base(e, self.bo);
        let out = e.base(self.out);
        e.for_range(begin, end, 1, |e, n| {
            let ogn = og.at(e, n, 4 * (b.m * b.c) as i64);
            let zn = z.at(e, n, 4 * (b.m * b.d) as i64);
            let on = e.index(out, n, 4 * (b.m * b.d) as i64);
            linear(
                e,
                &Linear {
                    rows: b.m,
                    k: b.c,
                    cols: b.d,
                    x: (ogn, b.c as i64),
                    w: (wo, b.d as i64),
                    b: Some(bo),
                    res: Some((zn, b.d as i64)),
                    out: (on, b.d as i64),
                    post: Post::None,
                },
            );
        });
    }
}

/// `K = zWk + bk`, `V = zWv + bv` of every image, into scratch.
struct F2mTokens {
    b: Bridge,
    z: Buf,
    /// `(w, b, destination)` for K and V
    proj: [(Buf, Buf, Buf); 2],
}

impl Kernel for F2mTokens {
    fn describe(&self) -> String {
        format!(
            "fused_f2m token projections {}x{} -> {}",
            self.b.m, self.b.d, self.b.c
        )
    }

    fn units(&self) -> usize {
        self.b.n
    }

    fn cost(&self) -> f64 {
        let b = &self.b;
        (4 * b.n * b.m * b.c * b.d) as f64
    }

    fn emit(&self, e: &mut Emitter, begin: Value, end: Value) {
        let b = self.b;
        let z = base(e, self.z);
        let proj: Vec<(Ptr, Ptr, Value)> = self
            .proj
            .iter()
            .map(|&(w, bias, dst)| (base(e, w), base(e, bias), e.base(dst)))
            .collect();
        e.for_range(begin, end, 1, |e, n| {
            let zn = z.at(e, n, 4 * (b.m * b.d) as i64);
            for &(w, bias, dst) in &proj {
                let on = e.index(dst, n, 4 * (b.m * b.c) as i64);
                linear(
                    e,
                    &Linear {
                        rows: b.m,
                        k: b.d,
                        cols: b.c,
                        x: (zn, b.d as i64),
                        w: (w, b.c as i64),
                        b: Some(bias),
                        res: None,
                        out: (on, b.c as i64),
                        post: Post::None,
                    },
                );
            }
        });
    }
}

/// The former→mobile kernel: one unit per (image, head, run of
/// [`F2M_RUN`] pixels); see the module docs.
struct F2mCore {
    b: Bridge,
    scale: f32,
    y: Buf,
    k: Buf,
    v: Buf,
    out: Buf,
}

impl F2mCore {
    fn runs(&self) -> usize {
        self.b.l.div_ceil(F2M_RUN)
    }

    /// Pixels `[lo, lo + 4)` (`ty = V4`) or pixel `lo` (`F32`): scores over
    /// the tokens, their softmax across the accumulators, the weighted sum
    /// of the values added to `y`.
    #[allow(clippy::too_many_arguments)]
    fn pixels(&self, e: &mut Emitter, ty: Type, yh: Ptr, oh: Value, kh: Ptr, vh: Ptr, lo: Value) {
        let b = self.b;
        let (m, c, l, dh) = (b.m, b.c, b.l, b.dh());
        let wf = Emitter::wflags();
        let zero = e.kc(ty, 0.0);
        let accs: Vec<_> = (0..m).map(|_| e.var(ty, zero)).collect();
        let yl = yh.at(e, lo, 1);
        e.for_static(0, dh as i64, 1, |e, ch| {
            let yv = yl.at(e, ch, 4 * l as i64).load(e, ty, 0);
            let kc = kh.at(e, ch, 4);
            for (t, &acc) in accs.iter().enumerate() {
                let s = kc.load(e, F32, 4 * (t * c) as i64);
                let sv = e.widen(ty, s);
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
            let vc = vh.at(e, ch, 4);
            let mut o = zero;
            for (t, &at) in a.iter().enumerate() {
                let s = vc.load(e, F32, 4 * (t * c) as i64);
                let sv = e.widen(ty, s);
                o = e.mul_add(at, sv, o);
            }
            let r = e.b.ins().fadd(yv, o);
            let p = e.index(ol, ch, 4 * l as i64);
            e.store(wf, r, p, 0);
        });
    }

    /// A run of `len` pixels starting at byte offset `start`.
    #[allow(clippy::too_many_arguments)]
    fn run(&self, e: &mut Emitter, yh: Ptr, oh: Value, kh: Ptr, vh: Ptr, len: usize) {
        let l4 = 4 * (len / 4);
        e.for_static(0, 4 * l4 as i64, 16, |e, lo| {
            self.pixels(e, V4, yh, oh, kh, vh, lo)
        });
        for p in l4..len {
            let lo = e.ic(4 * p as i64);
            self.pixels(e, F32, yh, oh, kh, vh, lo);
        }
    }
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
            let nm = e.b.ins().imul_imm_s(n, (m * c) as i64);
            let jd = e.b.ins().imul_imm_s(j, dh as i64);
            let tok = e.b.ins().iadd(nm, jd);
            let kh = ks.at(e, tok, 4);
            let vh = vs.at(e, tok, 4);
            let last = l - (runs - 1) * F2M_RUN;
            if last == F2M_RUN {
                self.run(e, yh, oh, kh, vh, F2M_RUN);
            } else {
                let is_last = e.b.ins().icmp_imm_s(IntCC::Equal, r, (runs - 1) as i64);
                let not_last = e.b.ins().icmp_imm_s(IntCC::NotEqual, r, (runs - 1) as i64);
                e.if_then(is_last, |e| self.run(e, yh, oh, kh, vh, last));
                e.if_then(not_last, |e| self.run(e, yh, oh, kh, vh, F2M_RUN));
            }
        });
    }
}

/// `fused_mha`: one unit per batch element; see the module docs.
struct MhaKernel {
    a: Mha,
    scale: f32,
    x: [Buf; 3],
    /// `(w, b)` of each projected side
    proj: [Option<(Buf, Buf)>; 3],
    /// scratch for the projected Q, K, V and one row of scores
    scratch: [Buf; 4],
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
        let proj = a.tq * a.dq * a.d + a.tk * a.dk * a.d + a.tk * a.dv * a.dvo;
        (2 * a.b * (proj + a.tq * a.tk * (a.d + a.dvo))) as f64
    }

    fn emit(&self, e: &mut Emitter, begin: Value, end: Value) {
        let a = self.a;
        let rows = [a.tq, a.tk, a.tk];
        let din = [a.dq, a.dk, a.dv];
        let dout = [a.d, a.d, a.dvo];
        let xs: Vec<Ptr> = self.x.iter().map(|&x| base(e, x)).collect();
        let proj: Vec<Option<(Ptr, Ptr)>> = self
            .proj
            .iter()
            .map(|p| p.map(|(w, b)| (base(e, w), base(e, b))))
            .collect();
        let sc: Vec<Ptr> = self.scratch.iter().map(|&s| base(e, s)).collect();
        let out = e.base(self.out);
        let wf = Emitter::wflags();
        let (dh, dvh) = (a.d / a.heads, a.dvo / a.heads);
        e.for_range(begin, end, 1, |e, bi| {
            // Q, K, V of this batch element: projected into scratch or as given
            let side: Vec<Ptr> = (0..3)
                .map(|s| {
                    let x = xs[s].at(e, bi, 4 * (rows[s] * din[s]) as i64);
                    match proj[s] {
                        None => x,
                        Some((w, bias)) => {
                            let o = sc[s].at(e, bi, 4 * (rows[s] * dout[s]) as i64);
                            linear(
                                e,
                                &Linear {
                                    rows: rows[s],
                                    k: din[s],
                                    cols: dout[s],
                                    x: (x, din[s] as i64),
                                    w: (w, dout[s] as i64),
                                    b: Some(bias),
                                    res: None,
                                    out: (o.p, dout[s] as i64),
                                    post: Post::None,
                                },
                            );
                            o
                        }
                    }
                })
                .collect();
            let (q, k, v) = (side[0], side[1], side[2]);
            let srow = sc[3].at(e, bi, 4 * a.tk as i64);
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

/// Lowers a `fused_m2f`, `fused_f2m` or `fused_mha` that [`has_kernel`].
pub(crate) fn lower(cx: &mut NodeCx, f: &FusedOp) -> Result<Kernels, BackendError> {
    let types: Vec<TensorType> = cx.ins.iter().map(|o| o.ty.clone()).collect();
    if !has_kernel(f, &types) {
        return Err(cx.unsupported(format!("{} operands this kernel does not take", f.name())));
    }
    let buf = |i: usize| cx.ins[i].buf;
    let out = cx.outs[0].0;
    match *f {
        FusedOp::M2fBridge {
            heads,
            scale,
            eps,
            proj_q,
            gate,
        } => {
            let b = Bridge::of(&types, heads).ok_or_else(|| cx.unsupported("bridge shape"))?;
            let s = m2f_scratch(&b);
            let l = m2f_layout(proj_q, gate);
            let side = |w: Option<(usize, usize)>, given: Option<usize>| match (w, given) {
                (Some((w, bias)), _) => Ok((buf(w), buf(bias))),
                (_, g) => Err(buf(g.unwrap_or(0))),
            };
            let core = M2fCore {
                b,
                scale: scale.0,
                x: buf(0),
                z: buf(1),
                q: side(l.wq, l.q),
                g: side(l.wa, l.g),
                sq: part(cx, &s, 0)?,
                sg: part(cx, &s, 1)?,
                ss: part(cx, &s, 2)?,
                so: part(cx, &s, 3)?,
            };
            let proj = M2fOut {
                b,
                og: part(cx, &s, 3)?,
                z: buf(1),
                wo: buf(l.tail),
                bo: buf(l.tail + 1),
                out,
            };
            // the layer norm reads the rows the projection wrote, in place
            let ln = norm::layer_norm(
                out,
                [buf(l.tail + 2), buf(l.tail + 3)],
                out,
                b.d,
                b.n * b.m,
                eps.0,
            );
            Ok(vec![Box::new(core), Box::new(proj), ln])
        }
        FusedOp::F2mBridge { heads, scale } => {
            let b = Bridge::of(&types, heads).ok_or_else(|| cx.unsupported("bridge shape"))?;
            let s = f2m_scratch(&b);
            let (k, v) = (part(cx, &s, 0)?, part(cx, &s, 1)?);
            let tokens = F2mTokens {
                b,
                z: buf(1),
                proj: [(buf(2), buf(3), k), (buf(4), buf(5), v)],
            };
            let core = F2mCore {
                b,
                scale: scale.0,
                y: buf(0),
                k,
                v,
                out,
            };
            Ok(vec![Box::new(tokens), Box::new(core)])
        }
        FusedOp::Attention {
            scale,
            proj_q,
            proj_k,
            proj_v,
            ..
        } => {
            let a = mha_of(f, &types).ok_or_else(|| cx.unsupported("attention shape"))?;
            let s = mha_scratch(&a);
            let mut i = 3;
            let mut take = |on: bool| {
                on.then(|| {
                    i += 2;
                    (buf(i - 2), buf(i - 1))
                })
            };
            let proj = [take(proj_q), take(proj_k), take(proj_v)];
            let k = MhaKernel {
                a,
                scale: scale.0,
                x: [buf(0), buf(1), buf(2)],
                proj,
                scratch: [
                    part(cx, &s, 0)?,
                    part(cx, &s, 1)?,
                    part(cx, &s, 2)?,
                    part(cx, &s, 3)?,
                ],
                out,
            };
            Ok(vec![Box::new(k)])
        }
        _ => Err(cx.unsupported(format!("{} has no attention kernel", f.name()))),
    }
}
