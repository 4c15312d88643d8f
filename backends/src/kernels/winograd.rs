//! Dense 3×3 stride-1 convolutions by Winograd F(4×4, 3×3) (docs/kernels.md,
//! "Winograd"): an input transform of every 4×4 tile's 6×6 window
//! ([`WinoInput`]), 36 GEMMs over the channels — one per transformed
//! position, the filters transformed and packed at compile time — and an
//! output transform that adds the bias and applies the epilogue
//! ([`WinoOutput`]). A quarter of the im2col GEMM's multiplications and no
//! im2col matrix; the transforms are assembled (`ukernels/winograd.rs`), so
//! this path needs AVX-512 and constant weights, and is taken where the
//! cost model ([`shape`]) expects it to beat the im2col GEMM.
//!
//! Accuracy: the transforms' coefficients (up to 8 in `Aᵀ`, 5 in `Bᵀ`)
//! amplify rounding. Measured against the f64 interpreter on random
//! inputs and weights (`backends/tests/fused.rs`,
//! `winograd_convs_meet_their_error_bound`), the error stays below 5e-5
//! of the output's largest magnitude (about 1e-5 measured at 16–512
//! channels, ten times the im2col GEMM's 3e-7 to 1e-6); the differential
//! tests' tolerance is 1e-4.

use cranelift_codegen::ir::{InstBuilder, Value};
use kiln_ir::fused::Act;

use super::conv::Geom;
use super::epilogue::Epilogue;
use super::gemm::{self, ASrc, BSrc, Gemm, Init, Tile};
use super::{Kernel, Kernels, NodeCx};
use crate::codegen::{Buf, Emitter, F32, Loc};
use crate::error::BackendError;
use crate::ukernels::Spec;
use crate::ukernels::dw_plane::assembles;
use crate::ukernels::vector::{self, Func, Width};
use crate::ukernels::winograd::{self, InSpec, OutSpec, POSITIONS, TILE};

/// Tile rows and columns of the output.
fn tiles(g: &Geom) -> (usize, usize) {
    (g.ho.div_ceil(TILE), g.wo.div_ceil(TILE))
}

/// Fewest input and output channels. One 3×3 conv with bias alone
/// (`kiln bench` on a one-op `.kir`, 1 thread, im2col or direct →
/// Winograd): 8→8 on 56×56 0.018 → 0.013 ms, 8→16 on 112×112 0.120 →
/// 0.086, 16→16 on 56×56 0.069 → 0.037; 3→16 on 112×112 0.047 → 0.053,
/// a loss.
const MIN_CHANNELS: usize = 8;

/// Fewest tiles per image: the GEMMs stream 2/T bytes of transformed
/// filters per flop and have T columns. Same measurements: 64→64 on
/// 12×12 (9 tiles) 0.050 → 0.032 ms, 256→256 on 10×10 (9) 0.534 → 0.383,
/// 512→512 on 14×14 (16) 3.99 → 1.70; on 8×8 and 7×7 (4 tiles) a loss
/// at every width (64: 0.022 → 0.029, 512: 1.20 → 1.53). Above, every
/// shape tried won by 1.4–3.4× (8 to 512 channels, planes 12 to 112).
const MIN_TILES: usize = 9;

/// Most bytes of transformed filters (36 floats per 9 of the conv's): a
/// bound on the constants one conv adds, far above the garden's largest
/// eligible conv (512→512 on 16×16 planes, 38 MB).
const MAX_FILTER_BYTES: usize = 64 << 20;

/// The row function that applies `act` after the output transform, for
/// the activations it does not assemble (SiLU, GELU).
fn swept(act: Act) -> Option<Func> {
    match act {
        Act::Silu => Some(Func::Silu),
        Act::Gelu => Some(Func::GeluEpilogue),
        _ => None,
    }
}

/// Whether a conv of this shape (with this output shuffle, activation and
/// residual) runs as Winograd F(4,3) when the target assembles AVX-512 and
/// the weights are constant: 3×3, stride and dilation 1, one group,
/// paddings of at most 2, an activation the output transform applies or
/// one swept over the plane afterwards (SiLU, GELU: then no residual,
/// which would have to follow it), and a shape where the cost model
/// expects it to win.
pub(crate) fn shape(g: &Geom, shuffle: usize, act: Act, residual: bool) -> bool {
    let (ty, tx) = tiles(g);
    let act_ok = match swept(act) {
        Some(_) => !residual,
        None => assembles(act) && act != Act::DyRelu,
    };
    g.kh == 3
        && g.kw == 3
        && g.stride == [1, 1]
        && g.dil == [1, 1]
        && g.groups == 1
        && shuffle == 1
        && act_ok
        && g.pad.iter().all(|&p| p <= 2)
        && g.c >= MIN_CHANNELS
        && g.o >= MIN_CHANNELS
        && ty * tx >= MIN_TILES
        && 4 * POSITIONS * g.c * g.o <= MAX_FILTER_BYTES
}

/// Elements from one position's matrix of `rows` rows of `t` tiles to the
/// next: whole cache lines, an odd number of them, so the 36 positions a
/// transform reads or writes fall in 36 different L1 sets. Packed (C·T =
/// 256·16 floats, 16 KB), every position mapped to one set: the input
/// transform of ResNet-18's 14×14 convs took 0.30 ms instead of 0.04.
fn position_stride(rows: usize, t: usize) -> usize {
    let lines = (rows * t).div_ceil(16);
    16 * (lines | 1)
}

/// Scratch bytes of a Winograd conv: the transformed input, then the
/// GEMMs' products.
pub(crate) fn scratch_bytes(g: &Geom) -> usize {
    let (ty, tx) = tiles(g);
    let t = ty * tx;
    4 * g.n * POSITIONS * (position_stride(g.c, t) + position_stride(g.o, t))
}

/// Lowers a conv that [`shape`] accepts, with constant weights `w`, at
/// AVX-512.
pub(crate) fn lower(
    cx: &mut NodeCx,
    g: Geom,
    w: &[f32],
    bias: Option<Buf>,
    epi: Epilogue,
    title: Option<String>,
) -> Result<Kernels, BackendError> {
    let (ty, tx) = tiles(&g);
    let t = ty * tx;
    let v_at = match cx.scratch.map(|b| b.loc) {
        Some(Loc::Arena(off)) => off,
        _ => return Err(cx.unsupported("Winograd scratch was not planned")),
    };
    let (vs, ms) = (position_stride(g.c, t), position_stride(g.o, t));
    let m_at = v_at + 4 * g.n * POSITIONS * vs;
    let unsupported = cx.unsupported("a Winograd conv without AVX-512");
    let store = cx.asm512().ok_or(unsupported)?;
    let sweep = match swept(epi.act) {
        Some(f) => Some(
            store
                .request(Spec::Unary(f, Width::Zmm))
                .map_err(BackendError::Jit)?,
        ),
        None => None,
    };
    let act = if sweep.is_some() { Act::None } else { epi.act };
    let mut in_ids = Vec::with_capacity(ty);
    let mut out_ids = Vec::with_capacity(ty);
    for r in 0..ty {
        // the tile row's input rows 4r - pt .. +6, those inside the input
        let top = (TILE * r) as i64 - g.pad[0] as i64;
        let lo = (-top).clamp(0, 6) as usize;
        let hi = (g.h as i64 - top).clamp(lo as i64, 6) as usize;
        let s = InSpec {
            w: g.w,
            tiles: tx,
            pl: g.pad[1],
            lo,
            hi,
            stride: vs,
        };
        in_ids.push(store.request(Spec::WinoIn(s)).map_err(BackendError::Jit)?);
        let s = OutSpec {
            wo: g.wo,
            tiles: tx,
            rows: (g.ho - TILE * r).min(TILE),
            stride: ms,
            act,
            res: epi.residual.is_some(),
        };
        out_ids.push(store.request(Spec::WinoOut(s)).map_err(BackendError::Jit)?);
    }
    let (mr, nr) = gemm::asm_shape_for(store.level(), g.o, t, g.c);
    let tile = Tile { mr, nv: nr / 4 };
    let u = winograd::transform_weights(w, g.o, g.c);
    let a_len = gemm::packed_a_len(g.o, g.c, mr);
    let mut packed = Vec::with_capacity(POSITIONS * a_len);
    for p in 0..POSITIONS {
        packed.extend(gemm::pack_a(&u[p * g.o * g.c..], g.o, g.c, g.c, 1, mr));
    }
    let a = ASrc::Packed {
        addr: cx.consts.add(&packed),
    };
    let mut offs = Vec::with_capacity(g.n * POSITIONS);
    for n in 0..g.n {
        for p in 0..POSITIONS {
            let b = n * POSITIONS + p;
            offs.push([(p * a_len) as i64, (b * vs) as i64, (b * ms) as i64, 0]);
        }
    }
    let title = title.map(|t| t.replacen("fused im2col conv", "fused winograd conv", 1));
    let gm = Gemm {
        batch: offs.len(),
        offsets: gemm::offset_table(cx.consts, &offs),
        init: Init::Zero,
        ..Gemm::new(
            "winograd conv",
            [g.o, t, g.c],
            a,
            BSrc::Strided {
                buf: Buf::input(Loc::Arena(v_at)),
                ks: t as i64,
            },
            (Buf::output(Loc::Arena(m_at)), t as i64),
            tile,
        )
    };
    let gm = super::matmul::finish(cx, gm)?;
    Ok(vec![
        Box::new(WinoInput {
            x: cx.ins[0].buf,
            v: Buf::output(Loc::Arena(v_at)),
            g,
            stride: vs,
            ids: in_ids,
        }),
        Box::new(gm),
        Box::new(WinoOutput {
            m: Buf::input(Loc::Arena(m_at)),
            dst: cx.outs[0].0,
            res: epi.residual,
            bias,
            g,
            stride: ms,
            ids: out_ids,
            sweep,
            title,
        }),
    ])
}

/// Calls `f(e, r, id)` for every tile row `r` (a constant, or a loop
/// counter over a run of rows sharing one function) with its function.
fn for_tile_rows(e: &mut Emitter, ids: &[usize], mut f: impl FnMut(&mut Emitter, Value, usize)) {
    let mut r0 = 0;
    while r0 < ids.len() {
        let id = ids[r0];
        let r1 = r0 + ids[r0..].iter().take_while(|&&i| i == id).count();
        if r1 - r0 == 1 {
            let r = e.ic(r0 as i64);
            f(e, r, id);
        } else {
            e.for_static(r0 as i64, r1 as i64, 1, |e, r| f(e, r, id));
        }
        r0 = r1;
    }
}

/// The input transform: one unit per (image, channel), every tile row of
/// its plane into the 36 positions' matrices `V[image][ξ][channel][tile]`.
struct WinoInput {
    x: Buf,
    v: Buf,
    g: Geom,
    /// elements between positions (`position_stride`)
    stride: usize,
    /// the function of each tile row
    ids: Vec<usize>,
}

impl Kernel for WinoInput {
    fn describe(&self) -> String {
        let (ty, tx) = tiles(&self.g);
        format!(
            "winograd F(4,3) input transform of {} channels, {ty}x{tx} tiles avx512",
            self.g.c
        )
    }

    fn units(&self) -> usize {
        self.g.n * self.g.c
    }

    fn cost(&self) -> f64 {
        let (ty, tx) = tiles(&self.g);
        (4 * POSITIONS * self.g.n * self.g.c * ty * tx) as f64
    }

    fn emit(&self, e: &mut Emitter, begin: Value, end: Value) {
        let g = self.g;
        let (ty, tx) = tiles(&g);
        let t = ty * tx;
        let x = e.base(self.x);
        let v = e.base(self.v);
        let sig = e.b.import_signature(winograd::in_signature());
        e.for_range(begin, end, 1, |e, u| {
            let plane = e.index(x, u, 4 * (g.h * g.w) as i64);
            // V[img][0][ch]: image img's positions, then row ch
            let img = e.b.ins().udiv_imm_u(u, g.c as i64);
            let ch = e.b.ins().urem_imm_u(u, g.c as i64);
            let dst = e.index(v, img, 4 * (POSITIONS * self.stride) as i64);
            let dst = e.index(dst, ch, 4 * t as i64);
            for_tile_rows(e, &self.ids, |e, r, id| {
                // input row 4r - pt: only the rows inside are read
                let src = e.index(plane, r, 4 * (TILE * g.w) as i64);
                let src = e.off(src, -4 * (g.pad[0] * g.w) as i64);
                let d = e.index(dst, r, 4 * tx as i64);
                let f = e.asm_fn(id);
                e.b.ins().call_indirect(sig, f, &[src, d]);
            });
        });
    }
}

/// The output transform with the bias and epilogue: one unit per (image,
/// output channel), every tile row of its plane from the products
/// `M[image][ξ][channel][tile]`.
struct WinoOutput {
    m: Buf,
    dst: Buf,
    res: Option<Buf>,
    bias: Option<Buf>,
    g: Geom,
    /// elements between positions (`position_stride`)
    stride: usize,
    /// the function of each tile row
    ids: Vec<usize>,
    /// the row function applying the activation to the finished plane
    sweep: Option<usize>,
    /// the fused conv's description
    title: Option<String>,
}

impl Kernel for WinoOutput {
    fn describe(&self) -> String {
        let (ty, tx) = tiles(&self.g);
        format!(
            "{}winograd F(4,3) output transform of {} channels, {ty}x{tx} tiles avx512",
            self.title
                .as_ref()
                .map_or(String::new(), |t| format!("{t}: ")),
            self.g.o
        )
    }

    fn units(&self) -> usize {
        self.g.n * self.g.o
    }

    fn cost(&self) -> f64 {
        let (ty, tx) = tiles(&self.g);
        (4 * POSITIONS * self.g.n * self.g.o * ty * tx) as f64
    }

    fn emit(&self, e: &mut Emitter, begin: Value, end: Value) {
        let g = self.g;
        let (ty, tx) = tiles(&g);
        let t = ty * tx;
        let m = e.base(self.m);
        let out = e.base(self.dst);
        let res = self.res.map(|r| e.base(r));
        let bias = self.bias.map(|b| (e.base(b), Emitter::rflags(b)));
        let sig = e.b.import_signature(winograd::out_signature());
        let p = (g.ho * g.wo) as i64;
        e.for_range(begin, end, 1, |e, u| {
            let img = e.b.ins().udiv_imm_u(u, g.o as i64);
            let oc = e.b.ins().urem_imm_u(u, g.o as i64);
            let src = e.index(m, img, 4 * (POSITIONS * self.stride) as i64);
            let src = e.index(src, oc, 4 * t as i64);
            let dst = e.index(out, u, 4 * p);
            let r_plane = res.map(|r| e.index(r, u, 4 * p));
            let b = match bias {
                Some((bp, f)) => {
                    let q = e.index(bp, oc, 4);
                    e.load(F32, f, q, 0)
                }
                None => e.fc(0.0),
            };
            for_tile_rows(e, &self.ids, |e, r, id| {
                let s = e.index(src, r, 4 * tx as i64);
                let row = (4 * TILE * g.wo) as i64;
                let d = e.index(dst, r, row);
                // no residual: a null pointer the function never reads
                let rp = match r_plane {
                    Some(rp) => e.index(rp, r, row),
                    None => e.ic(0),
                };
                let f = e.asm_fn(id);
                e.b.ins().call_indirect(sig, f, &[s, d, rp, b]);
            });
            if let Some(id) = self.sweep {
                // fn(src, dst, n) in place over the plane, still in L1/L2
                let sig = e.b.import_signature(vector::row_signature());
                let f = e.asm_fn(id);
                let n = e.ic(p);
                e.b.ins().call_indirect(sig, f, &[dst, dst, n]);
            }
        });
    }
}
