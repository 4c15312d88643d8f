//! The GEMM driver around the micro-kernel seam (docs/kernels.md, "GEMM"):
//! `C[M×N] = alpha · (init + A[M×K] · B[K×N]) + beta · Cin`, batched.
//!
//! The leaf is an `MR × NR` register tile (`NR = 4·nv` columns as f32x4
//! vectors, `MR` rows broadcast from A) over the whole K loop, with K, the
//! strides and the epilogue baked in. Around it Cranelift emits the loops
//! over tiles, the M and N tails (specialised tile variants, never a branch
//! per element) and the split of the work into parallel units.
//!
//! Operands: A is either packed at compile time (weights: panels of `MR`
//! rows stored `[K][MR]`, zero-padded) or read in place with baked strides;
//! B is packed (panels `[K][NR]`, zero-padded, so tails can load whole
//! vectors) or read in place, contiguous along N. Pointwise convolutions pack
//! A (their weights); linear layers pack B (theirs); attention products read
//! both in place.
//!
//! Fused conv/linear kernels add an [`Epilogue`] (activation, then a
//! residual laid out like C) applied to the accumulators right before the
//! store: in the portable Cranelift tile (`ukernels/f32x4/tile.rs`) on the
//! f32x4 accumulators; in the assembled
//! tiles (AVX-512 shapes fitted per GEMM by [`asm_tile_for`], or AVX2
//! 6×16, by the `Registry`'s level) as vector
//! instructions, GELU included. The Cranelift tile sweeps its expensive
//! activations (`Epilogue::swept`) and then the residual over the tile it
//! has just stored (still in L1).
//!
//! Each output tile is computed by the same instruction sequence whichever
//! unit it falls in, so results do not depend on the thread count.

use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{InstBuilder, MemFlagsData, StackSlotData, StackSlotKind, Value};

use super::epilogue::Epilogue;
use super::{Kernel, Opt};
use crate::codegen::{Buf, Emitter, F32, I64, Loc, V4};
use crate::runtime::ConstStore;
use crate::target::TileLevel;
use crate::ukernels::avx2::tile as avx2_tile;
use crate::ukernels::avx512::tile as avx512_tile;
use crate::ukernels::f32x4::tile::{self as f32x4, AView, BView, Ptrs};
use crate::ukernels::tile::{self, Bias};
use crate::ukernels::{Registry, Spec};
pub(crate) use f32x4::{CIn, Init};

/// Where A (`M×K`, broadcast element by element) comes from.
#[derive(Clone, Copy, Debug)]
pub(crate) enum ASrc {
    /// Packed: row-panel `p` is `[K][MR]` at `addr + 4·(off + p·MR·K)`.
    Packed { addr: usize },
    /// In place: element `(i, k)` at `base + 4·(off + i·rs + k·ks)`.
    Strided { buf: Buf, rs: i64, ks: i64 },
}

/// Where B (`K×N`, loaded as vectors along N) comes from.
#[derive(Clone, Copy, Debug)]
pub(crate) enum BSrc {
    /// Packed: column-panel `q` is `[K][NR]` at `addr + 4·(off + q·NR·K)`.
    Packed { addr: usize },
    /// In place: element `(k, j)` at `base + 4·(off + k·ks + j)`.
    Strided { buf: Buf, ks: i64 },
}

/// Tile shape: `mr` rows × `4·nv` columns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Tile {
    /// rows of the register tile
    pub mr: usize,
    /// f32x4 vectors per row
    pub nv: usize,
}

/// The default tile: 4×8 (8 accumulators, two B vectors and one broadcast
/// A value fit the 16 vector registers x86-64 exposes to Cranelift). See
/// `benches/pointwise_conv.rs` for the comparison with other shapes.
pub(crate) const DEFAULT_TILE: Tile = Tile { mr: 4, nv: 2 };

/// Whether the assembled tiles of `level` come in shape `tile`: at AVX-512
/// 16, 32, 48 or 64 columns with up to `avx512_tile::max_rows` rows, at AVX2
/// only 6×16.
pub(crate) fn level_fits(level: TileLevel, tile: Tile) -> bool {
    let nr = 4 * tile.nv;
    match level {
        TileLevel::Avx512 => avx512_tile::max_rows(nr).is_some_and(|r| (1..=r).contains(&tile.mr)),
        TileLevel::Avx2 => (tile.mr, nr) == (avx2_tile::MR, avx2_tile::NR),
        TileLevel::F32x4 => false,
    }
}

/// Estimated cycles of one assembled AVX-512 tile call of `r` rows and `c`
/// columns over `k` (Zen 4: one zmm or two ymm FMAs per cycle, FMA latency
/// 4, two loads per cycle): the K loop runs at the slowest of FMA
/// throughput (a last vector of ≤ 8 lanes is a ymm, half a zmm), the
/// latency of each accumulator's chain, and the loads (B row and A
/// broadcasts); plus the call, seeding and storing.
fn tile_cycles(r: usize, c: usize, k: usize) -> f64 {
    if r == 0 || c == 0 {
        return 0.0;
    }
    let nz = c.div_ceil(16);
    let tail = c - 16 * (nz - 1);
    let w = (nz - 1) as f64 + if tail <= 8 { 0.5 } else { 1.0 };
    let per_k = (r as f64 * w).max(4.0).max((nz + r) as f64 / 2.0);
    k as f64 * per_k + 20.0 + 2.0 * (r * nz) as f64
}

/// Estimated cycles of an `m × n` GEMM over `k` in `mr × nr` tiles.
fn gemm_cycles(m: usize, n: usize, k: usize, mr: usize, nr: usize) -> f64 {
    let (rf, rt) = ((m / mr) as f64, m % mr);
    let (cf, ct) = ((n / nr) as f64, n % nr);
    rf * cf * tile_cycles(mr, nr, k)
        + rf * tile_cycles(mr, ct, k)
        + cf * tile_cycles(rt, nr, k)
        + tile_cycles(rt, ct, k)
}

/// The assembled tile shape for an `m × n` GEMM over `k` at `level` (what A
/// or B must be packed for). AVX2 has one shape, 6×16; at AVX-512 the
/// default 14×32 unless another width (16, 48, 64 columns, each with every
/// row count that fits the registers) is estimated ([`gemm_cycles`]) at
/// least 3 % faster: it wins where the default's tails leave FMA latency
/// exposed (a lone row, a short column tail), and the margin keeps the
/// measured default where the estimates tie.
pub(crate) fn asm_tile_for(level: TileLevel, m: usize, n: usize, k: usize) -> Tile {
    let shape = |mr: usize, nr: usize| Tile { mr, nv: nr / 4 };
    // One row is a GEMV streaming its weights: memory-bound, and 1×64 was
    // measured slower than 14×32 on Mobile-Former's classifier (9.7 against
    // 14.5 GFLOP/s) although it hides the FMA latency better.
    if level != TileLevel::Avx512 || m <= 1 || n == 0 {
        return match level {
            TileLevel::Avx2 => shape(avx2_tile::MR, avx2_tile::NR),
            _ => shape(avx512_tile::MR, avx512_tile::NR),
        };
    }
    let k = k.max(1);
    let default = gemm_cycles(m, n, k, avx512_tile::MR, avx512_tile::NR);
    let mut best = (0.97 * default, shape(avx512_tile::MR, avx512_tile::NR));
    for nr in [16, 32, 48, 64] {
        let rows = avx512_tile::max_rows(nr).unwrap_or(1);
        for mr in 1..=rows.min(m) {
            let c = gemm_cycles(m, n, k, mr, nr);
            if c < best.0 {
                best = (c, shape(mr, nr));
            }
        }
    }
    best.1
}

/// [`asm_tile_for`] as (rows, columns): what conv.rs, matmul.rs and
/// conv_chain.rs pack the weights for.
pub(crate) fn asm_shape_for(level: TileLevel, m: usize, n: usize, k: usize) -> (usize, usize) {
    let t = asm_tile_for(level, m, n, k);
    (t.mr, 4 * t.nv)
}

/// A batched GEMM. See the module docs.
#[derive(Debug)]
pub(crate) struct Gemm {
    /// what the node was (`pointwise conv`, `linear`, ...)
    pub what: &'static str,
    /// rows of C
    pub m: usize,
    /// columns of C
    pub n: usize,
    /// reduction length
    pub k: usize,
    /// number of independent products
    pub batch: usize,
    /// `[batch][4]` element offsets of A, B, C and the row bias, as an
    /// `i64` table in constant memory; `None` when `batch == 1` (all zero)
    pub offsets: Option<usize>,
    /// A
    pub a: ASrc,
    /// B
    pub b: BSrc,
    /// C
    pub c: Buf,
    /// row stride of C (elements); columns are contiguous
    pub c_rs: i64,
    /// accumulator start
    pub init: Init,
    /// scale of the product (and init)
    pub alpha: f32,
    /// optional `beta · Cin`
    pub cin: Option<CIn>,
    /// register tile
    pub tile: Tile,
    /// loop over row blocks outside column tiles (keeps an A panel in L1)
    pub rows_outer: bool,
    /// row blocks per unit
    pub row_group: usize,
    /// column tiles per unit
    pub col_group: usize,
    /// assembled tile variants to call instead of emitting the tile (see
    /// [`Gemm::request_asm`])
    pub asm: Option<AsmTiles>,
    /// activation and residual after the bias (fused ops); the dynamic
    /// ReLU's slopes are one per row, offset per batch like the row bias
    pub epi: Epilogue,
    /// what a fused kernel computes (`fused pointwise conv 96→24 +bias
    /// relu6 +res`), shown instead of `what` in descriptions
    pub title: Option<String>,
}

/// The assembled tile variants a GEMM calls.
#[derive(Clone, Copy, Debug)]
pub(crate) struct AsmTiles {
    /// the instruction set they are assembled for (the shape is the
    /// GEMM's `tile`)
    pub level: TileLevel,
    /// variant numbers in the `Registry`, by
    /// `4·packs + 2·(rows < MR) + (columns < NR)`, where `packs` marks the
    /// variants that copy B into the run-time panel as they read it
    pub ids: [Option<usize>; 8],
}

/// Packs a row-major `rows×cols` matrix (element `(i, k)` at
/// `src[i·rs + k·ks]`) as A panels of `mr` rows: `[panel][k][mr]`, zero-padded.
pub(crate) fn pack_a(
    src: &[f32],
    rows: usize,
    cols: usize,
    rs: usize,
    ks: usize,
    mr: usize,
) -> Vec<f32> {
    let panels = rows.div_ceil(mr);
    let mut out = vec![0.0; panels * mr * cols];
    for p in 0..panels {
        for k in 0..cols {
            for i in 0..mr {
                let r = p * mr + i;
                if r < rows {
                    out[(p * cols + k) * mr + i] = src[r * rs + k * ks];
                }
            }
        }
    }
    out
}

/// Packs a `k×n` matrix (element `(k, j)` at `src[k·ks + j·js]`) as B
/// panels of `nr` columns: `[panel][k][nr]`, zero-padded.
pub(crate) fn pack_b(src: &[f32], k: usize, n: usize, ks: usize, js: usize, nr: usize) -> Vec<f32> {
    let panels = n.div_ceil(nr);
    let mut out = vec![0.0; panels * nr * k];
    for q in 0..panels {
        for kk in 0..k {
            for j in 0..nr {
                let c = q * nr + j;
                if c < n {
                    out[(q * k + kk) * nr + j] = src[kk * ks + c * js];
                }
            }
        }
    }
    out
}

/// Size in elements of A packed for `rows×cols` with tile `mr`.
pub(crate) fn packed_a_len(rows: usize, cols: usize, mr: usize) -> usize {
    rows.div_ceil(mr) * mr * cols
}

/// Size in elements of B packed for `k×n` with panel width `nr`.
pub(crate) fn packed_b_len(k: usize, n: usize, nr: usize) -> usize {
    n.div_ceil(nr) * nr * k
}

/// Stores the per-batch offset table; `None` if there is one batch at offset 0.
pub(crate) fn offset_table(consts: &mut ConstStore, offs: &[[i64; 4]]) -> Option<usize> {
    if offs.len() == 1 && offs[0] == [0; 4] {
        return None;
    }
    let flat: Vec<i64> = offs.iter().flatten().copied().collect();
    Some(consts.add_i64(&flat))
}

/// Pointers of one tile: A at its first row, B at its first column, C at
/// its corner, bias at its first row/column, Cin at its corner.
#[derive(Clone, Copy)]
struct TilePtrs {
    a: Value,
    b: Value,
    c: Value,
    bias: Option<Value>,
    cin: Option<Value>,
    /// the residual at the tile's corner
    res: Option<Value>,
    /// the dynamic ReLU's slopes at the tile's first row
    slopes: Option<(Value, Value)>,
    /// the run-time B panel this tile fills as it reads B in place (`b`
    /// then points at B itself): the first tile of a column panel
    panel: Option<Value>,
}

/// Largest B panel (`K × NR` floats) packed at run time into the kernel's
/// stack frame.
const MAX_STACK_PANEL: usize = 64 * 1024;

impl Gemm {
    /// `C[m×n] = A·B` with C's rows `c_rs` elements apart: one batch,
    /// accumulators from zero, no epilogue, rows outside columns, one group
    /// each (before [`Gemm::partition`]); the other fields by struct update.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        what: &'static str,
        [m, n, k]: [usize; 3],
        a: ASrc,
        b: BSrc,
        (c, c_rs): (Buf, i64),
        tile: Tile,
    ) -> Gemm {
        Gemm {
            what,
            m,
            n,
            k,
            batch: 1,
            offsets: None,
            a,
            b,
            c,
            c_rs,
            init: Init::Zero,
            alpha: 1.0,
            cin: None,
            tile,
            rows_outer: true,
            row_group: 1,
            col_group: 1,
            asm: None,
            epi: Epilogue::NONE,
            title: None,
        }
    }

    fn nr(&self) -> usize {
        4 * self.tile.nv
    }
    fn row_blocks(&self) -> usize {
        self.m.div_ceil(self.tile.mr)
    }
    fn col_tiles(&self) -> usize {
        self.n.div_ceil(self.nr())
    }
    fn row_groups(&self) -> usize {
        self.row_blocks().div_ceil(self.row_group.max(1))
    }
    fn col_groups(&self) -> usize {
        self.col_tiles().div_ceil(self.col_group.max(1))
    }

    /// Chooses `rows_outer`, `row_group` and `col_group`: cache blocking
    /// first (the panel reused by the inner loop stays in L1, the block it
    /// is combined with in L2), then enough units for `threads` threads.
    pub fn partition(&mut self, threads: usize) {
        // A B panel packed at run time is reused by every row block, so the
        // column tiles go outside; a packed-at-compile-time B likewise
        // (unless A is packed too, when either order works).
        self.rows_outer = if self.packs_b_at_run_time() {
            false
        } else {
            !matches!(self.b, BSrc::Packed { .. }) || matches!(self.a, ASrc::Packed { .. })
        };
        let (rb, ct) = (self.row_blocks().max(1), self.col_tiles().max(1));
        const L2: usize = 256 * 1024;
        let k4 = 4 * self.k.max(1);
        if self.rows_outer {
            self.row_group = rb;
            self.col_group = (L2 / (self.nr() * k4)).clamp(1, ct);
        } else {
            self.col_group = ct;
            self.row_group = (L2 / (self.tile.mr * k4)).clamp(1, rb);
        }
        if threads > 1 {
            let want = 4 * threads;
            while self.batch * self.row_groups() * self.col_groups() < want
                && (self.row_group > 1 || self.col_group > 1)
            {
                // split the outer dimension first: it keeps the inner reuse
                let outer_split = if self.rows_outer {
                    &mut self.row_group
                } else {
                    &mut self.col_group
                };
                if *outer_split > 1 {
                    *outer_split = outer_split.div_ceil(2);
                } else if self.rows_outer {
                    self.col_group = self.col_group.div_ceil(2);
                } else {
                    self.row_group = self.row_group.div_ceil(2);
                }
            }
        }
    }

    /// Makes each batch one unit (all its row blocks and column tiles), for
    /// a kernel that prepares a batch's operand right before computing it
    /// (`conv::BandedConv`).
    pub fn one_unit_per_batch(&mut self) {
        self.row_group = self.row_blocks().max(1);
        self.col_group = self.col_tiles().max(1);
    }

    /// Whether B is read in place but copied, one `K × NR` panel at a time,
    /// into a contiguous stack buffer first. Activations read in place have
    /// row strides of whole feature maps (often a power of two): the K rows
    /// of a tile then fall into one L1 set and evict each other on every
    /// tile. The copy costs `K·NR` moves per column tile and is reused by
    /// every row block; with assembled tiles the first row block's tile
    /// makes it while it reads B (`tile::Variant::b_pack`).
    fn packs_b_at_run_time(&self) -> bool {
        matches!(self.b, BSrc::Strided { .. })
            && self.k * self.nr() * 4 <= MAX_STACK_PANEL
            && self.k > 0
    }

    /// Copies the `K × nt` panel at `src` (row stride `ks`) into `dst` as
    /// `[K][NR]`, zero-padding the columns past `nt`.
    fn pack_panel(&self, e: &mut Emitter, dst: Value, src: Value, nt: usize) {
        let BSrc::Strided { buf, ks } = self.b else {
            return;
        };
        let nr = self.nr();
        let rf = Emitter::rflags(buf);
        let wf = Emitter::wflags();
        let zero = e.fc(0.0);
        e.for_static(0, self.k as i64, 1, |e, kk| {
            let s = e.index(src, kk, 4 * ks);
            let d = e.index(dst, kk, 4 * nr as i64);
            for v in 0..nr / 4 {
                if 4 * v + 4 <= nt {
                    let x = e.load(V4, rf, s, 16 * v as i64);
                    e.store(wf, x, d, 16 * v as i64);
                } else {
                    for l in 0..4 {
                        let c = 4 * v + l;
                        let x = if c < nt {
                            e.load(F32, rf, s, 4 * c as i64)
                        } else {
                            zero
                        };
                        e.store(wf, x, d, 4 * c as i64);
                    }
                }
            }
        });
    }

    /// Whether the assembled tiles of `level` can compute this GEMM: they
    /// read A packed or with non-negative strides, seed with zero or a bias,
    /// and have no epilogue (no alpha, no `beta·C`); the GEMM must have been
    /// set up (packed) for a tile shape the level builds ([`level_fits`]).
    fn asm_compatible(&self, level: TileLevel) -> bool {
        let a_ok = match self.a {
            ASrc::Packed { .. } => true,
            ASrc::Strided { rs, ks, .. } => rs >= 0 && ks >= 0,
        };
        a_ok && self.alpha == 1.0 && self.cin.is_none() && level_fits(level, self.tile)
    }

    /// Assembles the tile variants this GEMM needs (full tiles, and the
    /// row and column tails it has) at the store's level and switches it to
    /// calling them.
    pub fn request_asm(&mut self, store: &mut Registry) -> Result<(), String> {
        if !self.asm_compatible(store.level()) || self.m == 0 || self.n == 0 {
            return Ok(());
        }
        let (tmr, tnr) = (self.tile.mr, self.nr());
        let (b_ks, b_padded) = match self.b {
            _ if self.packs_b_at_run_time() => (self.nr(), true),
            BSrc::Packed { .. } => (self.nr(), true),
            BSrc::Strided { ks, .. } => (ks as usize, false),
        };
        let (m_tail, n_tail) = (self.m % tmr, self.n % tnr);
        let (a_rs, a_ks) = match self.a {
            ASrc::Packed { .. } => (1, tmr),
            ASrc::Strided { rs, ks, .. } => (rs as usize, ks as usize),
        };
        let runtime_pack = self.packs_b_at_run_time();
        let mut ids = [None; 8];
        for (slot, (mr, nt)) in [(tmr, tnr), (tmr, n_tail), (m_tail, tnr), (m_tail, n_tail)]
            .into_iter()
            .enumerate()
        {
            if mr == 0 || nt == 0 || (slot < 2 && self.m < tmr) || (slot % 2 == 0 && self.n < tnr) {
                continue;
            }
            let v = tile::Variant {
                k: self.k,
                mr,
                nt,
                nr: tnr,
                a_rs,
                a_ks,
                b_ks,
                b_padded,
                b_pack: false,
                c_rs: self.c_rs as usize,
                bias: match self.init {
                    Init::Zero => Bias::None,
                    Init::Row(_) => Bias::Row,
                    Init::Col(_) => Bias::Col,
                },
                act: self.epi.act,
                residual: self.epi.residual.is_some(),
                cols_in_lanes: false,
            };
            // a narrow column tail with its rows across the lanes
            // (`avx512::tile::lanes_tail_fits`); the panel-packing variant
            // stays row-major
            let lanes = tile::Variant {
                cols_in_lanes: true,
                ..v
            };
            let v = if slot % 2 == 1
                && store.level() == TileLevel::Avx512
                && avx512_tile::lanes_tail_fits(&lanes)
            {
                lanes
            } else {
                v
            };
            ids[slot] = Some(store.request(Spec::Tile(v))?);
            if let (true, BSrc::Strided { ks, .. }) = (runtime_pack, self.b) {
                ids[4 + slot] = Some(store.request(Spec::Tile(tile::Variant {
                    b_ks: ks as usize,
                    b_padded: false,
                    b_pack: true,
                    cols_in_lanes: false,
                    ..v
                }))?);
            }
        }
        self.asm = Some(AsmTiles {
            level: store.level(),
            ids,
        });
        Ok(())
    }

    /// Calls assembled variant `id` on the tile at `p` (`mr × nt`), which
    /// applies the whole epilogue.
    fn call_asm(&self, e: &mut Emitter, p: TilePtrs, id: usize) {
        let sig = e.b.import_signature(tile::signature());
        let f = e.asm_fn(id);
        let zero = e.ic(0);
        let (s1, s2) = p.slopes.unwrap_or((zero, zero));
        let args = [
            p.a,
            p.b,
            p.c,
            p.bias.unwrap_or(zero),
            p.res.unwrap_or(zero),
            s1,
            s2,
            p.panel.unwrap_or(zero),
        ];
        e.b.ins().call_indirect(sig, f, &args);
    }

    /// Emits one tile of `mr` rows and `nt` valid columns: the GEMM's
    /// assembled variant for it when it has one, else the portable tile.
    fn tile(&self, e: &mut Emitter, p: TilePtrs, bv: BView, mr: usize, nt: usize) {
        if let Some(asm) = self.asm {
            // the GEMM's tile is the assembled one (`asm_compatible`)
            let slot = 4 * usize::from(p.panel.is_some())
                + 2 * usize::from(mr < self.tile.mr)
                + usize::from(nt < self.nr());
            if let Some(id) = asm.ids[slot] {
                self.call_asm(e, p, id);
                return;
            }
        }
        if let Some(panel) = p.panel {
            // no packing variant: copy the panel here, then read it
            self.pack_panel(e, panel, p.b, nt);
            let p = TilePtrs {
                b: panel,
                panel: None,
                ..p
            };
            return self.tile(e, p, bv, mr, nt);
        }
        let p = Ptrs {
            a: p.a,
            b: p.b,
            c: p.c,
            bias: p.bias,
            cin: p.cin,
            res: p.res,
            slopes: p.slopes,
        };
        self.portable(bv).emit(e, p, mr, nt);
    }

    /// The portable tile of this GEMM, reading B as `b`.
    fn portable(&self, b: BView) -> f32x4::Tile<'_> {
        let a = match self.a {
            ASrc::Packed { addr } => AView {
                rs: 1,
                ks: self.tile.mr as i64,
                flags: Emitter::rflags(Buf::input(Loc::Const(addr))),
            },
            ASrc::Strided { buf, rs, ks } => AView {
                rs,
                ks,
                flags: Emitter::rflags(buf),
            },
        };
        f32x4::Tile {
            k: self.k,
            a,
            b,
            init: self.init,
            alpha: self.alpha,
            cin: self.cin,
            c_rs: self.c_rs,
            epi: &self.epi,
        }
    }
}

/// The operands' base pointers (before a batch's offsets).
#[derive(Clone, Copy)]
struct Bases {
    a: Value,
    b: Value,
    c: Value,
    bias: Option<Value>,
    cin: Option<Value>,
    res: Option<Value>,
    slopes: Option<(Value, Value)>,
}

/// One parallel unit's share: its batch's operands (Cin is never offset
/// per batch), its row blocks `rb_lo..rb_hi` and column tiles
/// `ct_lo..ct_hi`, and the numbers of full row blocks and column tiles.
#[derive(Clone, Copy)]
struct Unit {
    at: Bases,
    rb_lo: Value,
    rb_hi: Value,
    ct_lo: Value,
    ct_hi: Value,
    rb_full: Value,
    ct_full: Value,
}

impl Gemm {
    /// Loads the operands' base pointers.
    fn bases(&self, e: &mut Emitter) -> Bases {
        let a = match self.a {
            ASrc::Packed { addr } => e.const_addr(addr),
            ASrc::Strided { buf, .. } => e.base(buf),
        };
        let b = match self.b {
            BSrc::Packed { addr } => e.const_addr(addr),
            BSrc::Strided { buf, .. } => e.base(buf),
        };
        let c = e.base(self.c);
        let bias = match self.init {
            Init::Zero => None,
            Init::Row(b) | Init::Col(b) => Some(e.base(b)),
        };
        let cin = self.cin.map(|c| e.base(c.buf));
        let res = self.epi.residual.map(|r| e.base(r));
        let slopes = self.epi.slopes.map(|s| (e.base(s.a1), e.base(s.a2)));
        Bases {
            a,
            b,
            c,
            bias,
            cin,
            res,
            slopes,
        }
    }

    /// How the tiles read B: the run-time panel, the packed panels, or B in
    /// place.
    fn b_view(&self, runtime_pack: bool) -> BView {
        let nr = self.nr();
        match self.b {
            _ if runtime_pack => BView {
                ks: nr as i64,
                padded: true,
                flags: MemFlagsData::new().with_notrap(),
            },
            BSrc::Packed { addr } => BView {
                ks: nr as i64,
                padded: true,
                flags: Emitter::rflags(Buf::input(Loc::Const(addr))),
            },
            BSrc::Strided { buf, ks } => BView {
                ks,
                padded: false,
                flags: Emitter::rflags(buf),
            },
        }
    }

    /// The run-time B panel (`K × NR` floats) in the kernel's stack frame,
    /// aligned to a cache line: the assembled tiles read and write it as
    /// whole zmm vectors, and a vector straddling two lines costs two
    /// accesses.
    fn panel_slot(&self, e: &mut Emitter) -> Value {
        let slot = e.b.create_sized_stack_slot(StackSlotData::new(
            StackSlotKind::ExplicitSlot,
            (4 * self.k * self.nr() + 64) as u32,
            4,
        ));
        let addr = e.b.ins().stack_addr(I64, slot, 0);
        let addr = e.b.ins().iadd_imm_s(addr, 63);
        e.b.ins().band_imm_s(addr, -64)
    }

    /// Decodes unit `u` (batch, row group, column group): its batch's
    /// operands, through the offset `table`, and its ranges of tiles.
    fn unit(&self, e: &mut Emitter, u: Value, bases: Bases, table: Option<Value>) -> Unit {
        let (rg, cg) = (self.row_groups(), self.col_groups());
        let tf = Emitter::rflags(Buf::input(Loc::Const(0)));
        let row_bias = matches!(self.init, Init::Row(_));
        let per_batch = (rg * cg) as i64;
        let bidx = e.b.ins().udiv_imm_u(u, per_batch);
        let r = e.b.ins().urem_imm_u(u, per_batch);
        let rgi = e.b.ins().udiv_imm_u(r, cg as i64);
        let cgi = e.b.ins().urem_imm_u(r, cg as i64);
        let mut at = bases;
        if let Some(t) = table {
            let row = e.index(t, bidx, 32);
            let ao = e.load(I64, tf, row, 0);
            let bo = e.load(I64, tf, row, 8);
            let co = e.load(I64, tf, row, 16);
            at.a = e.index(at.a, ao, 4);
            at.b = e.index(at.b, bo, 4);
            at.c = e.index(at.c, co, 4);
            // the residual is laid out like C
            at.res = at.res.map(|r| e.index(r, co, 4));
            if (row_bias && at.bias.is_some()) || at.slopes.is_some() {
                let bo = e.load(I64, tf, row, 24);
                if row_bias && let Some(bb) = at.bias {
                    at.bias = Some(e.index(bb, bo, 4));
                }
                at.slopes = at
                    .slopes
                    .map(|(s1, s2)| (e.index(s1, bo, 4), e.index(s2, bo, 4)));
            }
        }
        let rb_lo = e.b.ins().imul_imm_s(rgi, self.row_group as i64);
        let rb_hi = e.b.ins().iadd_imm_s(rb_lo, self.row_group as i64);
        let rb_end = e.ic(self.row_blocks() as i64);
        let rb_hi = e.imin(rb_hi, rb_end);
        let ct_lo = e.b.ins().imul_imm_s(cgi, self.col_group as i64);
        let ct_hi = e.b.ins().iadd_imm_s(ct_lo, self.col_group as i64);
        let ct_end = e.ic(self.col_tiles() as i64);
        let ct_hi = e.imin(ct_hi, ct_end);
        let rb_full = e.ic((self.m / self.tile.mr) as i64);
        let ct_full = e.ic((self.n / self.nr()) as i64);
        Unit {
            at,
            rb_lo,
            rb_hi,
            ct_lo,
            ct_hi,
            rb_full,
            ct_full,
        }
    }

    /// The pointers of tile (`rbi`, `cti`) of unit `u`, without a panel.
    fn ptrs(&self, e: &mut Emitter, u: &Unit, rbi: Value, cti: Value) -> TilePtrs {
        let (mr, nr) = (self.tile.mr, self.nr());
        // per row block / column tile strides in bytes
        let a_rb = match self.a {
            ASrc::Packed { .. } => 4 * (mr * self.k) as i64,
            ASrc::Strided { rs, .. } => 4 * mr as i64 * rs,
        };
        let b_ct = self.b_col_stride();
        let c_rb = 4 * mr as i64 * self.c_rs;
        let c_ct = 4 * nr as i64;
        let at = u.at;
        TilePtrs {
            a: e.index(at.a, rbi, a_rb),
            b: e.index(at.b, cti, b_ct),
            c: {
                let c = e.index(at.c, rbi, c_rb);
                e.index(c, cti, c_ct)
            },
            bias: at.bias.map(|bb| match self.init {
                Init::Row(_) => e.index(bb, rbi, 4 * mr as i64),
                Init::Col(_) => e.index(bb, cti, 4 * nr as i64),
                Init::Zero => bb,
            }),
            cin: self.cin.zip(at.cin).map(|(c, cb)| {
                let x = e.index(cb, rbi, 4 * mr as i64 * c.rs);
                e.index(x, cti, 4 * nr as i64 * c.cs)
            }),
            res: at.res.map(|r| {
                let x = e.index(r, rbi, c_rb);
                e.index(x, cti, c_ct)
            }),
            slopes: at.slopes.map(|(s1, s2)| {
                (
                    e.index(s1, rbi, 4 * mr as i64),
                    e.index(s2, rbi, 4 * mr as i64),
                )
            }),
            panel: None,
        }
    }

    /// Bytes between consecutive column tiles of B.
    fn b_col_stride(&self) -> i64 {
        match self.b {
            BSrc::Packed { .. } => 4 * (self.nr() * self.k) as i64,
            BSrc::Strided { .. } => 4 * self.nr() as i64,
        }
    }

    /// The unit's tiles of row block `rbi` (`mrows` rows): its full column
    /// tiles, then the column tail if its range reaches it. Loops with no
    /// full tile at all are not emitted: their body would be dead code, and
    /// the biggest tile to compile.
    fn row_of_tiles(&self, e: &mut Emitter, u: &Unit, bview: BView, rbi: Value, mrows: usize) {
        let nr = self.nr();
        let (ct_full, n_tail) = (self.n / nr, self.n % nr);
        if ct_full > 0 {
            let hi_full = e.imin(u.ct_hi, u.ct_full);
            e.for_range(u.ct_lo, hi_full, 1, |e, cti| {
                let p = self.ptrs(e, u, rbi, cti);
                self.tile(e, p, bview, mrows, nr);
            });
        }
        if n_tail > 0 {
            // the tail tile belongs to the unit whose range reaches it
            let has = e.b.ins().icmp(IntCC::SignedGreaterThan, u.ct_hi, u.ct_full);
            e.if_then(has, |e| {
                let p = self.ptrs(e, u, rbi, u.ct_full);
                self.tile(e, p, bview, mrows, n_tail);
            });
        }
    }

    /// The unit's tiles of column tile `cti` (`ncols` columns): its full row
    /// blocks, then the row tail. With a run-time B panel, the Cranelift
    /// tiles have it packed first; with assembled tiles the unit's first
    /// row block fills it while computing (a `b_pack` variant) and the
    /// others read it.
    fn column_of_tiles(
        &self,
        e: &mut Emitter,
        u: &Unit,
        bview: BView,
        panel: Option<Value>,
        cti: Value,
        ncols: usize,
    ) {
        let mr = self.tile.mr;
        let (rb_full, m_tail) = (self.m / mr, self.m % mr);
        // tile pointers, with B redirected to the packed panel
        let ptrs_in = |e: &mut Emitter, rbi: Value| {
            let mut p = self.ptrs(e, u, rbi, cti);
            if let Some(panel) = panel {
                p.b = panel;
            }
            p
        };
        // the first tile of a column panel, which also fills the panel
        let ptrs_fill = |e: &mut Emitter, rbi: Value| TilePtrs {
            panel,
            ..self.ptrs(e, u, rbi, cti)
        };
        if let (Some(panel), None) = (panel, self.asm) {
            let src = e.index(u.at.b, cti, self.b_col_stride());
            self.pack_panel(e, panel, src, ncols);
        }
        let fill_first = panel.is_some() && self.asm.is_some();
        if rb_full > 0 {
            let hi_full = e.imin(u.rb_hi, u.rb_full);
            let mut lo = u.rb_lo;
            if fill_first {
                let has = e.b.ins().icmp(IntCC::SignedLessThan, u.rb_lo, hi_full);
                e.if_then(has, |e| {
                    let p = ptrs_fill(e, u.rb_lo);
                    self.tile(e, p, bview, mr, ncols);
                });
                lo = e.b.ins().iadd_imm_s(u.rb_lo, 1);
            }
            e.for_range(lo, hi_full, 1, |e, rbi| {
                let p = ptrs_in(e, rbi);
                self.tile(e, p, bview, mr, ncols);
            });
        }
        if m_tail > 0 {
            let has = e.b.ins().icmp(IntCC::SignedGreaterThan, u.rb_hi, u.rb_full);
            e.if_then(has, |e| {
                if fill_first {
                    // the panel is filled iff a full row block ran
                    let filled = e.b.ins().icmp(IntCC::SignedLessThan, u.rb_lo, u.rb_full);
                    e.if_then(filled, |e| {
                        let p = ptrs_in(e, u.rb_full);
                        self.tile(e, p, bview, m_tail, ncols);
                    });
                    let empty =
                        e.b.ins()
                            .icmp(IntCC::SignedGreaterThanOrEqual, u.rb_lo, u.rb_full);
                    e.if_then(empty, |e| {
                        let p = ptrs_fill(e, u.rb_full);
                        self.tile(e, p, bview, m_tail, ncols);
                    });
                } else {
                    let p = ptrs_in(e, u.rb_full);
                    self.tile(e, p, bview, m_tail, ncols);
                }
            });
        }
    }
}

impl Kernel for Gemm {
    fn describe(&self) -> String {
        format!(
            "{}: gemm M={} N={} K={} batch={} tile {}x{}{} ({}), A {}, B {}, groups {}x{}",
            self.title.as_deref().unwrap_or(self.what),
            self.m,
            self.n,
            self.k,
            self.batch,
            self.tile.mr,
            self.nr(),
            match self.asm {
                Some(asm) => format!(" {}", asm.level),
                None => String::new(),
            },
            if self.rows_outer {
                "rows outer"
            } else {
                "columns outer"
            },
            match self.a {
                ASrc::Packed { .. } => "packed",
                ASrc::Strided { .. } => "strided",
            },
            match self.b {
                BSrc::Packed { .. } => "packed",
                BSrc::Strided { .. } => "strided",
            },
            self.row_group,
            self.col_group
        )
    }

    fn units(&self) -> usize {
        if self.m == 0 || self.n == 0 {
            return 0;
        }
        self.batch * self.row_groups() * self.col_groups()
    }

    fn cost(&self) -> f64 {
        2.0 * (self.batch * self.m * self.n * self.k.max(1)) as f64
    }

    fn opt(&self) -> Opt {
        Opt::None
    }

    fn emit(&self, e: &mut Emitter, begin: Value, end: Value) {
        let bases = self.bases(e);
        let table = self.offsets.map(|t| e.const_addr(t));
        let runtime_pack = self.packs_b_at_run_time();
        let bview = self.b_view(runtime_pack);
        let panel = runtime_pack.then(|| self.panel_slot(e));
        e.for_range(begin, end, 1, |e, u| {
            let unit = self.unit(e, u, bases, table);
            let (mr, nr) = (self.tile.mr, self.nr());
            let (rb_full, m_tail) = (self.m / mr, self.m % mr);
            let (ct_full, n_tail) = (self.n / nr, self.n % nr);
            if self.rows_outer {
                if rb_full > 0 {
                    let hi_full = e.imin(unit.rb_hi, unit.rb_full);
                    e.for_range(unit.rb_lo, hi_full, 1, |e, rbi| {
                        self.row_of_tiles(e, &unit, bview, rbi, mr)
                    });
                }
                if m_tail > 0 {
                    let has =
                        e.b.ins()
                            .icmp(IntCC::SignedGreaterThan, unit.rb_hi, unit.rb_full);
                    e.if_then(has, |e| {
                        self.row_of_tiles(e, &unit, bview, unit.rb_full, m_tail)
                    });
                }
            } else {
                if ct_full > 0 {
                    let hi_full = e.imin(unit.ct_hi, unit.ct_full);
                    e.for_range(unit.ct_lo, hi_full, 1, |e, cti| {
                        self.column_of_tiles(e, &unit, bview, panel, cti, nr)
                    });
                }
                if n_tail > 0 {
                    let has =
                        e.b.ins()
                            .icmp(IntCC::SignedGreaterThan, unit.ct_hi, unit.ct_full);
                    e.if_then(has, |e| {
                        self.column_of_tiles(e, &unit, bview, panel, unit.ct_full, n_tail)
                    });
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every shape the chooser returns is one the level assembles, never
    /// estimated slower than the default, and the default where the zoo's
    /// large GEMMs and one-row GEMVs are concerned.
    #[test]
    fn tile_choice_fits_and_beats_default() {
        let default = Tile { mr: 14, nv: 8 };
        for m in 1..70 {
            for n in [1, 5, 16, 17, 33, 47, 49, 64, 97, 196, 3136] {
                for k in [1, 3, 16, 27, 192] {
                    let t = asm_tile_for(TileLevel::Avx512, m, n, k);
                    assert!(level_fits(TileLevel::Avx512, t), "{m}x{n}x{k}: {t:?}");
                    assert!(
                        gemm_cycles(m, n, k, t.mr, 4 * t.nv) <= gemm_cycles(m, n, k, 14, 32),
                        "{m}x{n}x{k}: {t:?}"
                    );
                    let avx2 = asm_tile_for(TileLevel::Avx2, m, n, k);
                    assert_eq!(avx2, Tile { mr: 6, nv: 4 });
                    assert!(level_fits(TileLevel::Avx2, avx2));
                }
            }
        }
        for (m, n, k) in [
            (1, 1920, 1344),
            (1152, 49, 192),
            (192, 49, 1152),
            (16, 12544, 32),
            (64, 16384, 32),
            (129, 1024, 64),
        ] {
            assert_eq!(asm_tile_for(TileLevel::Avx512, m, n, k), default);
        }
        assert_eq!(
            asm_tile_for(TileLevel::Avx512, 16, 49, 8),
            Tile { mr: 6, nv: 16 }
        );
        assert!(!level_fits(TileLevel::Avx512, Tile { mr: 15, nv: 8 }));
        assert!(!level_fits(TileLevel::Avx512, Tile { mr: 4, nv: 6 }));
        assert!(!level_fits(TileLevel::F32x4, default));
    }
}
