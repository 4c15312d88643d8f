//! Spatial resize (`resize`, ONNX Resize on H and W): nearest or bilinear
//! from tables built at compile time with the interpreter's own taps
//! (`kiln_ir::interp::resize_taps`), so both pick the same pixels.
//!
//! A unit is one output row of one plane. Its two source rows and their
//! weights come from a per-row table, each output column's two source
//! columns and weights from a per-column table (element offsets as `i64`,
//! weights as `f32` pairs `1 - f, f`); bilinear is `wh0·(ww0·a + ww1·b) +
//! wh1·(ww0·c + ww1·d)` in f32, nearest a plain load. Scalar code: a resize
//! moves each output element once and is rare in these models (decoders and
//! feature-pyramid upsampling).

use cranelift_codegen::ir::{InstBuilder, Value};
use kiln_ir::interp::resize_taps;
use kiln_ir::{Op, ResizeMode};

use super::{Kernel, Kernels, NodeCx};
use crate::codegen::{Buf, Emitter, F32, I64, Loc};
use crate::error::BackendError;

struct Resize {
    dst: Buf,
    src: Buf,
    /// planes `N·C`, input `H·W`, output `Ho`, `Wo`
    planes: usize,
    hw: usize,
    ho: usize,
    wo: usize,
    linear: bool,
    /// `[ho][2]` i64 element offsets of the source rows
    rows: usize,
    /// `[ho][2]` f32 row weights
    row_w: usize,
    /// `[wo][2]` i64 source columns
    cols: usize,
    /// `[wo][2]` f32 column weights
    col_w: usize,
}

impl Kernel for Resize {
    fn describe(&self) -> String {
        format!(
            "resize {} {} planes of {} -> {}x{}",
            if self.linear { "bilinear" } else { "nearest" },
            self.planes,
            self.hw,
            self.ho,
            self.wo
        )
    }

    fn units(&self) -> usize {
        self.planes * self.ho
    }

    fn cost(&self) -> f64 {
        (self.planes * self.ho * self.wo) as f64 * if self.linear { 8.0 } else { 2.0 }
    }

    fn emit(&self, e: &mut Emitter, begin: Value, end: Value) {
        let dst = e.base(self.dst);
        let src = e.base(self.src);
        let table = |off| Buf::input(Loc::Const(off));
        let rows = e.base(table(self.rows));
        let row_w = e.base(table(self.row_w));
        let cols = e.base(table(self.cols));
        let col_w = e.base(table(self.col_w));
        let tf = Emitter::rflags(table(self.rows));
        let rf = Emitter::rflags(self.src);
        let wf = Emitter::wflags();
        let (hw, ho, wo, linear) = (self.hw as i64, self.ho as i64, self.wo as i64, self.linear);
        e.for_range(begin, end, 1, |e, u| {
            let hov = e.ic(ho);
            let plane = e.b.ins().udiv(u, hov);
            let base = e.b.ins().imul(plane, hov);
            let oh = e.b.ins().isub(u, base);
            let sp = e.index(src, plane, 4 * hw);
            let rp = e.index(rows, oh, 16);
            let r0 = e.load(I64, tf, rp, 0);
            let p0 = e.index(sp, r0, 4);
            let dp = e.index(dst, u, 4 * wo);
            if !linear {
                e.for_static(0, wo, 1, |e, j| {
                    let cp = e.index(cols, j, 16);
                    let c0 = e.load(I64, tf, cp, 0);
                    let xp = e.index(p0, c0, 4);
                    let v = e.load(F32, rf, xp, 0);
                    let op = e.index(dp, j, 4);
                    e.store(wf, v, op, 0);
                });
                return;
            }
            let r1 = e.load(I64, tf, rp, 8);
            let p1 = e.index(sp, r1, 4);
            let wp = e.index(row_w, oh, 8);
            let a0 = e.load(F32, tf, wp, 0);
            let a1 = e.load(F32, tf, wp, 4);
            e.for_static(0, wo, 1, |e, j| {
                let cp = e.index(cols, j, 16);
                let c0 = e.load(I64, tf, cp, 0);
                let c1 = e.load(I64, tf, cp, 8);
                let cwp = e.index(col_w, j, 8);
                let b0 = e.load(F32, tf, cwp, 0);
                let b1 = e.load(F32, tf, cwp, 4);
                let row = |e: &mut Emitter, p: Value| {
                    let xa = e.index(p, c0, 4);
                    let xa = e.load(F32, rf, xa, 0);
                    let xb = e.index(p, c1, 4);
                    let xb = e.load(F32, rf, xb, 0);
                    let t = e.b.ins().fmul(b0, xa);
                    e.mul_add(b1, xb, t)
                };
                let top = row(e, p0);
                let bot = row(e, p1);
                let t = e.b.ins().fmul(a0, top);
                let v = e.mul_add(a1, bot, t);
                let op = e.index(dp, j, 4);
                e.store(wf, v, op, 0);
            });
        });
    }
}

/// Lowers a resize node.
pub(crate) fn lower(cx: &mut NodeCx) -> Result<Kernels, BackendError> {
    let Op::Resize {
        mode,
        nearest,
        coord,
        size,
        scale,
    } = *cx.op
    else {
        return Err(cx.unsupported("not a resize"));
    };
    let x = &cx.ins[0].ty.shape;
    let (h, w) = (x[2], x[3]);
    let th = resize_taps(mode, nearest, coord, h, size[0], scale.map(|s| s[0]));
    let tw = resize_taps(mode, nearest, coord, w, size[1], scale.map(|s| s[1]));
    let what = format!(
        "{}: resize tables of {} entries",
        cx.name,
        th.len() + tw.len()
    );
    cx.consts
        .room((th.len() + tw.len()).saturating_mul(24), &what)?;
    let offs = |taps: &[kiln_ir::interp::Tap], stride: usize| -> Vec<i64> {
        taps.iter()
            .flat_map(|t| [(t.i0 * stride) as i64, (t.i1 * stride) as i64])
            .collect()
    };
    let weights = |taps: &[kiln_ir::interp::Tap]| -> Vec<f32> {
        taps.iter()
            .flat_map(|t| [(1.0 - t.w1) as f32, t.w1 as f32])
            .collect()
    };
    let k = Resize {
        dst: cx.outs[0].0,
        src: cx.ins[0].buf,
        planes: x[0] * x[1],
        hw: h * w,
        ho: size[0],
        wo: size[1],
        linear: mode == ResizeMode::Linear,
        rows: cx.consts.add_i64(&offs(&th, w)),
        row_w: cx.consts.add(&weights(&th)),
        cols: cx.consts.add_i64(&offs(&tw, 1)),
        col_w: cx.consts.add(&weights(&tw)),
    };
    Ok(vec![Box::new(k)])
}
