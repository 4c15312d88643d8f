//! Kernel of `fused_m2f`, Mobile-Former's Mobile→Former bridge: a handful
//! of kernels instead of the dozen-plus transposes, small matmuls and
//! element-wise ops of its expansion (`FusedOp::expand`, the definition
//! they are tested against). The feature map is never transposed.
//!
//! `scale·Q` is copied to scratch ([`Scale`]: the assembled tiles take no
//! alpha); the scores of every (image, head) are one batched GEMM
//! `Q_j [M×dh] · X_j [dh×L]` reading `X` in place; then [`M2fCore`], one
//! unit per (image, head), gives each token's row of scores its softmax in
//! place (the assembled row softmax on AVX-512, else f32x4 passes) and sums
//! `P·X` per channel over the pixels (the map's second and last read),
//! times the gate (doubled here: `2·hsig`, exact): on AVX-512 an assembled
//! pass over blocks of up to 4 channels (`vector::assemble_m2f_px`, 16
//! pixels per step, one weight read per block), else f32x4 lanes, one
//! accumulator per token. `Wo`, `bo` and `z` are a GEMM into the output and
//! the shared layer-norm kernel finishes in place. The token-side
//! projections are `attn_parts::project`.
//!
//! Token counts above `attn_parts::MAX_TOKENS` keep the expansion (the
//! kernel holds one accumulator per token), as do operand shapes that only
//! broadcast (a batch of 1 against `N`).

use cranelift_codegen::ir::types::I64;
use cranelift_codegen::ir::{AbiParam, InstBuilder, Signature, Type, Value};
use cranelift_codegen::isa::CallConv;
use kiln_ir::TensorType;
use kiln_ir::fused::m2f::{Source, operands as m2f_layout};
use kiln_ir::fused::{Act, FusedOp};

use super::attn_parts::{
    Bridge, Scratch, base, checked_types, exp_row, operand, part, project, scratch_operand,
    shape_is,
};
use super::epilogue::Epilogue;
use super::gemm::{self, ASrc, BSrc, Gemm};
use super::rows::map_run;
use super::{Kernel, Kernels, NodeCx, matmul, norm};
use crate::codegen::{Buf, Emitter, F32, V4};
use crate::error::BackendError;
use crate::ukernels::Spec;
use crate::ukernels::vector::{self, Width};

/// Scratch arrays of `fused_m2f`: `Q`, the gate, the scores, the gated
/// attention output, `scale·Q`.
fn m2f_scratch(b: &Bridge) -> Scratch {
    let nmc = b.n * b.m * b.c;
    Scratch::new(&[nmc, nmc, b.n * b.heads * b.m * b.l, nmc, nmc])
}

/// Whether this module has a kernel for the `fused_m2f` `f` with operand
/// types `ops` (the caller checked the op is well typed: it has an output).
pub(crate) fn has_kernel(f: &FusedOp, ops: &[TensorType]) -> bool {
    let FusedOp::M2f {
        heads,
        proj_q,
        gate,
        ..
    } = *f
    else {
        return false;
    };
    let Some(b) = Bridge::of(ops, heads) else {
        return false;
    };
    let l = m2f_layout(proj_q, gate);
    let (nmc, dc, cd) = ([b.n, b.m, b.c], [b.d, b.c], [b.c, b.d]);
    let proj_ok = |src: Source| match src {
        Source::Projected(w, bias) => shape_is(ops.get(w), &dc) && shape_is(ops.get(bias), &[b.c]),
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

/// Bytes of scratch the kernels of `f` need.
pub(crate) fn scratch_bytes(f: &FusedOp, ops: &[TensorType]) -> usize {
    match *f {
        FusedOp::M2f { heads, .. } if has_kernel(f, ops) => {
            Bridge::of(ops, heads).map_or(0, |b| m2f_scratch(&b).total)
        }
        _ => 0,
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

/// Lowers a `fused_m2f` that [`has_kernel`].
pub(crate) fn lower(cx: &mut NodeCx, f: &FusedOp) -> Result<Kernels, BackendError> {
    let types = checked_types(cx, f, has_kernel)?;
    lower_m2f(cx, f, &types)
}

/// The Mobile→Former bridge: projections, scores, the core, the output projection and its layer norm.
fn lower_m2f(cx: &mut NodeCx, f: &FusedOp, types: &[TensorType]) -> Result<Kernels, BackendError> {
    let FusedOp::M2f {
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
