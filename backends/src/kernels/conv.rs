//! 2-D convolution, NCHW, lowered by shape:
//!
//! - depthwise (`groups == C`, one input channel per group, any channel
//!   multiplier): its own kernel, see [`super::depthwise`];
//! - pointwise (1×1, stride 1, no padding): a GEMM per image and group,
//!   `out[O_g × HW] = W_g[O_g × C_g] · x[C_g × HW]`, reading x in place;
//! - everything else: im2col into arena scratch (one row per input channel
//!   and kernel tap, zeros where the window hangs over the padding), then
//!   the same GEMM with K = C_g·kh·kw.
//!
//! Weights known at compile time are packed as A panels; the bias seeds the
//! accumulators. A `fused_conv` takes the same paths with an [`Epilogue`]
//! (activation, residual) applied before the store. Layout stays NCHW: blocked layouts (NCHWc) would let the
//! depthwise and pointwise kernels share a vector-friendly channel blocking
//! and are the next optimisation, not done yet.

use cranelift_codegen::ir::{InstBuilder, Value};
use kiln_ir::fused::FusedOp;
use kiln_ir::{Graph, NodeId, Op};

use super::copy::{emit_copy_run, emit_fill_run};
use super::epilogue::Epilogue;
use super::gemm::{self, ASrc, BSrc, Gemm, Init, Tile};
use super::{Kernel, Kernels, NodeCx, depthwise};
use crate::codegen::{Buf, Emitter, Loc};
use crate::error::BackendError;

/// Geometry of one convolution.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Geom {
    /// batch
    pub n: usize,
    /// input channels
    pub c: usize,
    /// input height
    pub h: usize,
    /// input width
    pub w: usize,
    /// output channels
    pub o: usize,
    /// input channels per group
    pub cg: usize,
    /// kernel height
    pub kh: usize,
    /// kernel width
    pub kw: usize,
    /// output height
    pub ho: usize,
    /// output width
    pub wo: usize,
    /// `[sh, sw]`
    pub stride: [usize; 2],
    /// `[top, left, bottom, right]`
    pub pad: [usize; 4],
    /// `[dh, dw]`
    pub dil: [usize; 2],
    /// groups
    pub groups: usize,
}

impl Geom {
    /// The geometry of a conv2d (or the convolution of a `fused_conv`) with
    /// these operand and output shapes.
    pub fn of(op: &Op, x: &[usize], w: &[usize], out: &[usize]) -> Option<Geom> {
        let (Op::Conv2d {
            stride,
            pad,
            dilation,
            groups,
        }
        | Op::Fused(FusedOp::Conv {
            stride,
            pad,
            dilation,
            groups,
            ..
        })) = op
        else {
            return None;
        };
        if x.len() != 4 || w.len() != 4 || out.len() != 4 {
            return None;
        }
        Some(Geom {
            n: x[0],
            c: x[1],
            h: x[2],
            w: x[3],
            o: w[0],
            cg: w[1],
            kh: w[2],
            kw: w[3],
            ho: out[2],
            wo: out[3],
            stride: *stride,
            pad: *pad,
            dil: *dilation,
            groups: *groups,
        })
    }

    /// One input channel per group, every channel its own group.
    pub fn is_depthwise(&self) -> bool {
        self.groups == self.c && self.cg == 1 && self.groups > 1
    }

    /// 1×1, stride 1, no padding: the input is already the GEMM's B.
    pub fn is_pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.stride == [1, 1] && self.pad == [0; 4]
    }

    fn im2col_len(&self) -> usize {
        self.n * self.c * self.kh * self.kw * self.ho * self.wo
    }

    /// The output rows `[lo, hi)` whose tap `k` (of `n` taps, stride `s`,
    /// dilation `d`, leading pad `p`) reads inside an input of length `len`.
    fn valid(out: usize, len: usize, k: usize, s: usize, d: usize, p: usize) -> (usize, usize) {
        // input index = o·s + k·d - p must lie in [0, len)
        let off = (k * d) as i64 - p as i64;
        let lo = if off >= 0 {
            0
        } else {
            ((-off) as usize).div_ceil(s)
        };
        let hi_excl = len as i64 - off; // o·s < hi_excl
        let hi = if hi_excl <= 0 {
            0
        } else {
            ((hi_excl as usize - 1) / s + 1).min(out)
        };
        (lo.min(hi), hi)
    }
}

/// Scratch for im2col, when the convolution needs it.
pub(crate) fn scratch_bytes(g: &Graph, id: NodeId) -> usize {
    let ops = g.operands(id);
    let node = g.node(id);
    let geom = match (ops.first(), ops.get(1), node.outputs.first()) {
        (Some(&x), Some(&w), Some(out)) => Geom::of(
            &node.op,
            &g.value_type(x).shape,
            &g.value_type(w).shape,
            &out.ty.shape,
        ),
        _ => None,
    };
    match geom {
        Some(gm) if !gm.is_depthwise() && !gm.is_pointwise() => 4 * gm.im2col_len(),
        _ => 0,
    }
}

/// Writes the im2col matrix: for input plane `(n, c)` and tap `(i, j)`, row
/// `((n·C + c)·kh + i)·kw + j` holds the tap's input for every output pixel.
struct Im2col {
    x: Buf,
    col: Buf,
    g: Geom,
}

impl Kernel for Im2col {
    fn describe(&self) -> String {
        format!("im2col {:?}", self.g)
    }

    fn units(&self) -> usize {
        self.g.n * self.g.c
    }

    fn cost(&self) -> f64 {
        self.g.im2col_len() as f64
    }

    fn emit(&self, e: &mut Emitter, begin: Value, end: Value) {
        let g = self.g;
        let p = g.ho * g.wo;
        let x = e.base(self.x);
        let col = e.base(self.col);
        e.for_range(begin, end, 1, |e, u| {
            let src = e.index(x, u, 4 * (g.h * g.w) as i64);
            let dst = e.index(col, u, 4 * (g.kh * g.kw * p) as i64);
            for i in 0..g.kh {
                let (oh_lo, oh_hi) = Geom::valid(g.ho, g.h, i, g.stride[0], g.dil[0], g.pad[0]);
                for j in 0..g.kw {
                    let (ow_lo, ow_hi) = Geom::valid(g.wo, g.w, j, g.stride[1], g.dil[1], g.pad[1]);
                    let row = e.off(dst, 4 * ((i * g.kw + j) * p) as i64);
                    emit_fill_run(e, row, oh_lo * g.wo, 0.0);
                    let tail = e.off(row, 4 * (oh_hi * g.wo) as i64);
                    emit_fill_run(e, tail, (g.ho - oh_hi) * g.wo, 0.0);
                    if ow_lo >= ow_hi {
                        let mid = e.off(row, 4 * (oh_lo * g.wo) as i64);
                        emit_fill_run(e, mid, (oh_hi - oh_lo) * g.wo, 0.0);
                        continue;
                    }
                    e.for_static(oh_lo as i64, oh_hi as i64, 1, |e, oh| {
                        let d = e.index(row, oh, 4 * g.wo as i64);
                        // input row oh·sh + i·dh - pt, column ow_lo·sw + j·dw - pl
                        let ih = e.b.ins().imul_imm_s(oh, g.stride[0] as i64);
                        let ih =
                            e.b.ins()
                                .iadd_imm_s(ih, (i * g.dil[0]) as i64 - g.pad[0] as i64);
                        let s = e.index(src, ih, 4 * g.w as i64);
                        let s = e.off(
                            s,
                            4 * ((ow_lo * g.stride[1] + j * g.dil[1]) as i64 - g.pad[1] as i64),
                        );
                        emit_fill_run(e, d, ow_lo, 0.0);
                        let dm = e.off(d, 4 * ow_lo as i64);
                        emit_copy_run(e, dm, s, ow_hi - ow_lo, g.stride[1] as i64, self.x);
                        let dt = e.off(d, 4 * ow_hi as i64);
                        emit_fill_run(e, dt, g.wo - ow_hi, 0.0);
                    });
                }
            }
        });
    }
}

/// Lowers a conv2d node.
pub(crate) fn lower(cx: &mut NodeCx) -> Result<Kernels, BackendError> {
    let bias = cx.ins.get(2).map(|b| b.buf);
    lower_with(cx, bias, Epilogue::NONE)
}

/// Lowers the convolution of a conv2d or `fused_conv` node (`cx.op`) with
/// this bias and epilogue. Operands 0 and 1 are `x` and `w`.
pub(crate) fn lower_with(
    cx: &mut NodeCx,
    bias: Option<Buf>,
    epi: Epilogue,
) -> Result<Kernels, BackendError> {
    let (out_buf, out_ty) = cx.outs[0].clone();
    let g = Geom::of(
        cx.op,
        &cx.ins[0].ty.shape,
        &cx.ins[1].ty.shape,
        &out_ty.shape,
    )
    .ok_or_else(|| cx.unsupported("not a conv2d"))?;
    let title = matches!(cx.op, Op::Fused(_)).then(|| {
        let kind = if g.is_depthwise() {
            "depthwise"
        } else if g.is_pointwise() {
            "pointwise"
        } else {
            "im2col"
        };
        format!(
            "fused {kind} conv {}→{} {}x{}{}",
            g.c,
            g.o,
            g.kh,
            g.kw,
            epi.suffix(bias.is_some())
        )
    });
    if g.is_depthwise() {
        return depthwise::lower(cx, g, bias, epi, title);
    }
    let groups = g.groups;
    let og = g.o / groups;
    let k = g.cg * g.kh * g.kw;
    let p = g.ho * g.wo;
    // The assembled tile needs packed weights (constant) and sets the
    // panel shapes; otherwise the Cranelift tile of the options.
    let tile = match cx.asm.as_deref() {
        Some(store) if cx.ins[1].data.is_some() => {
            let (mr, nr) = store.tile_shape();
            Tile { mr, nv: nr / 4 }
        }
        _ => cx.tile,
    };
    let mut kernels: Kernels = Vec::new();
    let (b, b_off): (BSrc, Box<dyn Fn(usize, usize) -> i64>) = if g.is_pointwise() {
        let chw = g.c * g.h * g.w;
        let cghw = g.cg * g.h * g.w;
        (
            BSrc::Strided {
                buf: cx.ins[0].buf,
                ks: p as i64,
            },
            Box::new(move |n, gi| (n * chw + gi * cghw) as i64),
        )
    } else {
        // An empty im2col matrix (a zero-sized dimension) is never read:
        // the plan gives it no bytes, and any location will do.
        let col = match cx.scratch {
            Some(b) => b,
            None if g.im2col_len() == 0 => Buf::output(Loc::Arena(0)),
            None => return Err(cx.unsupported("im2col scratch was not planned")),
        };
        kernels.push(Box::new(Im2col {
            x: cx.ins[0].buf,
            col,
            g,
        }));
        let per = k * p;
        (
            BSrc::Strided {
                buf: Buf::input(col.loc),
                ks: p as i64,
            },
            Box::new(move |n, gi| ((n * groups + gi) * per) as i64),
        )
    };
    let (a, a_per_group) = match cx.ins[1].data {
        Some(w) => {
            let mut packed = Vec::with_capacity(groups * gemm::packed_a_len(og, k, tile.mr));
            for gi in 0..groups {
                packed.extend(gemm::pack_a(&w[gi * og * k..], og, k, k, 1, tile.mr));
            }
            let addr = cx.consts.add(&packed);
            (ASrc::Packed { addr }, gemm::packed_a_len(og, k, tile.mr))
        }
        None => (
            ASrc::Strided {
                buf: cx.ins[1].buf,
                rs: k as i64,
                ks: 1,
            },
            og * k,
        ),
    };
    let mut offs = Vec::with_capacity(g.n * groups);
    for n in 0..g.n {
        for gi in 0..groups {
            offs.push([
                (gi * a_per_group) as i64,
                b_off(n, gi),
                ((n * g.o + gi * og) * p) as i64,
                (gi * og) as i64,
            ]);
        }
    }
    let init = match bias {
        Some(b) => Init::Row(b),
        None => Init::Zero,
    };
    let mut gm = Gemm {
        what: if g.is_pointwise() {
            "pointwise conv"
        } else {
            "conv (im2col)"
        },
        m: og,
        n: p,
        k,
        batch: g.n * groups,
        offsets: gemm::offset_table(cx.consts, &offs),
        a,
        b,
        c: out_buf,
        c_rs: p as i64,
        init,
        alpha: 1.0,
        cin: None,
        tile,
        rows_outer: true,
        row_group: 1,
        col_group: 1,
        asm: None,
        epi,
        title,
    };
    gm.partition(cx.threads);
    if let Some(store) = cx.asm.as_deref_mut() {
        gm.request_asm(store).map_err(|e| cx_err(&cx.name, &e))?;
    }
    kernels.push(Box::new(gm));
    Ok(kernels)
}

fn cx_err(node: &str, msg: &str) -> BackendError {
    BackendError::Codegen {
        node: node.to_string(),
        msg: format!("assembling the GEMM tile: {msg}"),
    }
}
