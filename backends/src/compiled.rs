//! The compile driver and the compiled model: verify, plan memory, lower
//! every kernel node, generate one Cranelift function per kernel, and run
//! them in order over a per-call arena.
//!
//! ## Sharing a compiled model between threads
//!
//! `CompiledModel` is `Send + Sync`. Each call to `run`/`run_into` takes an
//! arena from a small pool (a mutex-guarded `Vec`, refilled when the call
//! ends; a new arena is allocated only when every existing one is in use),
//! so concurrent calls never share intermediates. The worker pool is guarded
//! by a mutex that a call only *tries* to take: a call that finds it busy
//! runs its kernels on its own thread instead of queueing. This is sound for
//! results because every kernel computes each output element the same way
//! whatever slice of units a thread gets, so a model gives bitwise identical
//! results on 1 thread, on N threads, and when run concurrently.

// Calling JIT code and releasing its memory are unsafe; each block says why
// it is sound.
#![allow(unsafe_code)]

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use cranelift_codegen::Context;
use cranelift_codegen::control::ControlPlane;
use cranelift_codegen::ir::{AbiParam, Function, InstBuilder, Signature, UserFuncName};
use cranelift_codegen::isa::CallConv;
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};
use cranelift_jit::{JITBuilder, JITModule};
use cranelift_module::{FuncId, Linkage, Module, ModuleReloc, default_libcall_names};
use kiln_ir::{DType, Graph, Model, NodeId, Tensor, TensorData, TensorType, Value};

use crate::codegen::{AsmLink, Buf, ConstBase, Emitter, Env, I64, Loc, PowF};
use crate::error::BackendError;
use crate::kernels::gemm::{DEFAULT_TILE, Tile};
use crate::kernels::{self, Kernel, NodeCx, Operand, Opt, copy::Copy};
use crate::plan;
use crate::runtime::pool::{KernelFn, Pool};
use crate::runtime::{Arena, ConstMap, ConstStore};
use crate::target::{Target, TileLevel};
use crate::ukernels::Registry;

/// Cranelift optimisation level.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OptLevel {
    /// `opt_level=none`: no mid-end optimisation; register allocation only.
    None,
    /// `opt_level=speed`.
    Speed,
}

impl OptLevel {
    fn name(self) -> &'static str {
        match self {
            OptLevel::None => "none",
            OptLevel::Speed => "speed",
        }
    }
}

/// How to compile a model.
#[derive(Clone, Debug)]
pub struct CompileOptions {
    /// Threads to run on, the caller's included; `None` = every available core.
    pub threads: Option<usize>,
    /// Optimisation level of the memory-bound kernels. `none` by default:
    /// the kernels already place their loop-invariant values themselves,
    /// and at `speed` Cranelift rematerialises vector constants inside
    /// loops (measured 10–15 % slower on `exp`-heavy kernels, and slower
    /// compiles).
    pub opt_level: OptLevel,
    /// Optimisation level of register-tiled GEMM kernels. `none` by default:
    /// measured faster, because `speed` spills the tile's accumulators (see
    /// docs/ARCHITECTURE.md and `benches/pointwise_conv.rs`).
    pub tile_opt_level: OptLevel,
    /// Run Cranelift's IR verifier on every kernel (slower compiles; tests
    /// turn it on so a lowering bug is an error, not a miscompile).
    pub verify_ir: bool,
    /// The GEMM register tile (for measuring alternatives; the default is
    /// the fastest measured here).
    pub gemm_tile: GemmTile,
    /// Compute convolutions with constant weights and linear layers with
    /// GEMM tiles assembled for the host (AVX-512: 14×32, zmm; AVX2 + FMA:
    /// 6×16, ymm), up to [`CompileOptions::max_tiles`]; the Cranelift f32x4
    /// tile otherwise. `false` is `max_tiles: TileLevel::F32x4`.
    pub asm_tiles: bool,
    /// The widest tile level to use even when the target has more (for
    /// comparing levels on one host; `kiln run/bench --tiles`). The other
    /// assembled functions (transcendental rows, depthwise interiors) follow
    /// it at `Avx2` and `Avx512`; the bridges' loops exist only at `Avx512`.
    pub max_tiles: TileLevel,
    /// Rewrite every kernel's vectors into scalars (`scalarize.rs`) even
    /// when the ISA has 128-bit SIMD: the code path of targets without it
    /// (riscv64 without V), forced so that the differential tests run it on
    /// the host. Slower; for tests only.
    #[doc(hidden)]
    pub scalarize: bool,
    /// Run inverted-residual conv chains (pointwise → depthwise →
    /// pointwise with a large expanded tensor) band by band in one kernel,
    /// the expanded tensor never in memory (`kernels/chain.rs`), instead of
    /// as three convolutions. `false` by default: it shrinks the arena
    /// (mobilevitv2_050: 6.0 → 4.1 MiB) but measured 1–3 % slower here,
    /// where the split kernels are compute-bound and their intermediates
    /// stay in L3; for memory-constrained devices (`kiln compile
    /// --banded-chains`).
    pub banded_chains: bool,
    /// Resource limits: the model's sizes, compile-time folding, the
    /// constant blob and the arena are checked against them.
    pub limits: kiln_ir::Limits,
}

/// Shape of the GEMM register tile: `mr` rows by `nr` columns (`nr` a
/// multiple of 4: f32x4 vectors).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GemmTile {
    /// rows
    pub mr: usize,
    /// columns
    pub nr: usize,
}

impl Default for GemmTile {
    fn default() -> Self {
        GemmTile {
            mr: DEFAULT_TILE.mr,
            nr: 4 * DEFAULT_TILE.nv,
        }
    }
}

impl From<GemmTile> for Tile {
    fn from(t: GemmTile) -> Tile {
        Tile {
            mr: t.mr.max(1),
            nv: (t.nr / 4).max(1),
        }
    }
}

impl Default for CompileOptions {
    fn default() -> Self {
        CompileOptions {
            threads: None,
            opt_level: OptLevel::None,
            tile_opt_level: OptLevel::None,
            verify_ir: false,
            gemm_tile: GemmTile::default(),
            asm_tiles: true,
            max_tiles: TileLevel::Avx512,
            scalarize: false,
            banded_chains: false,
            limits: kiln_ir::Limits::default(),
        }
    }
}

/// Facts about a compiled model, for `kiln bench` and reports.
#[derive(Clone, Debug)]
pub struct CompileStats {
    /// wall time of [`compile`]
    pub compile_time: Duration,
    /// kernel functions generated
    pub kernels: usize,
    /// size of the per-call arena (intermediates and scratch, after reuse)
    pub arena_bytes: usize,
    /// what the intermediates would take without buffer reuse
    pub unshared_bytes: usize,
    /// bytes of packed weights and tables owned by the model
    pub const_bytes: usize,
    /// element-wise kernels that write over their operand
    pub inplace_kernels: usize,
    /// assembled functions (tile variants and, at `Avx512`, the other
    /// assembled kernels; 0 at the f32x4 level)
    pub asm_variants: usize,
    /// the tile level the model was compiled at: the target's, capped by
    /// the options
    pub tiles: TileLevel,
    /// threads the model runs on
    pub threads: usize,
    /// the host target and the features kiln uses
    pub target: String,
}

/// A kernel function ready to call.
struct Step {
    func: usize,
    units: usize,
    parallel: bool,
    /// the node it came from and what it does, for profiles
    node: String,
    what: String,
    work: NodeWork,
}

/// The compulsory work of one graph node: what a profile divides a
/// kernel's time by (GFLOP/s for compute, GB/s for memory traffic).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeWork {
    /// multiply-accumulates (`kiln_ir::stats::node_macs`)
    pub macs: u64,
    /// bytes of the node's operands plus its outputs: the traffic a kernel
    /// cannot avoid (each read and written once)
    pub bytes: u64,
}

/// Time spent in one kernel during [`CompiledModel::profile`].
#[derive(Clone, Debug)]
pub struct KernelTime {
    /// the node the kernel came from (`%12 (conv2d)`)
    pub node: String,
    /// what the kernel does
    pub kernel: String,
    /// wall time
    pub time: Duration,
    /// the node's work; a node lowered to several kernels (im2col, then a
    /// GEMM) repeats it on each, so sum times per node before dividing
    pub work: NodeWork,
    /// whether the kernel was split over the worker pool (always false at
    /// one thread)
    pub parallel: bool,
}

/// Owns the JIT's executable memory (the assembled tiles' module and the
/// kernels' module) and frees it on drop.
struct JitCode(Vec<JITModule>);

// SAFETY: after `finalize_definitions` the module is never used again except
// to free its memory in `drop`, which needs `&mut self` (so no other thread
// can be using it); the code it owns is immutable and callable from any thread.
unsafe impl Send for JitCode {}
// SAFETY: as above — no method of the module is called through `&JitCode`.
unsafe impl Sync for JitCode {}

impl Drop for JitCode {
    fn drop(&mut self) {
        for m in self.0.drain(..) {
            // SAFETY: the only pointers into this memory are the `Step`s of the
            // `CompiledModel` being dropped (and the tile addresses baked into
            // its kernels); no run can be in progress because running borrows
            // the model.
            unsafe { m.free_memory() };
        }
    }
}

/// Work (in the kernels' rough cost units) below which splitting a kernel
/// over threads costs more in synchronisation than it saves.
const PARALLEL_MIN_COST: f64 = 30_000.0;

/// Whether a kernel compiled for `threads` threads is split over them (the
/// JIT's pool and an object's parallel entry point decide alike); the
/// others run whole on the calling thread.
pub(crate) fn splits(k: &dyn Kernel, threads: usize) -> bool {
    threads > 1 && k.units() > 1 && k.cost() >= PARALLEL_MIN_COST
}

/// Into how many chunks a split kernel of `units` units is cut for
/// `threads` threads: a few per thread, small enough to balance, large
/// enough that claiming one costs nothing next to its work.
pub(crate) fn chunks_for(units: usize, threads: usize) -> usize {
    units.min(4 * threads).max(1)
}

/// A model compiled to native code for the host. See the module docs for
/// how it may be shared between threads.
pub struct CompiledModel {
    steps: Vec<Step>,
    inputs: Vec<(String, TensorType)>,
    outputs: Vec<(String, TensorType)>,
    arena_bytes: usize,
    arenas: Mutex<Vec<Arena>>,
    pool: Mutex<Pool>,
    stats: CompileStats,
    // Kept alive because compiled code holds their addresses.
    _consts: ConstStore,
    _weights: kiln_ir::WeightStore,
    _code: JitCode,
}

fn weight_data<'a>(model: &'a Model, g: &Graph, mut v: Value) -> Option<&'a [f32]> {
    loop {
        let node = g.node(v.node);
        match node.op {
            kiln_ir::Op::Weight => {
                return model.weights.get(&node.outputs[0].name)?.as_f32();
            }
            _ if kernels::is_alias(g, v.node) => v = g.operands(v.node)[0],
            _ => return None,
        }
    }
}

/// Lowered kernels with the node each came from.
pub(crate) type Lowered = Vec<(String, Box<dyn Kernel>)>;

pub(crate) struct Front {
    /// weights of the compiled graph (the model's, plus folded constants)
    pub weights: kiln_ir::WeightStore,
    /// functions assembled with iced-x86 that the kernels call (placed by
    /// the JIT, or local functions of an object)
    pub asm: Registry,
    pub lowered: Lowered,
    /// the assembled functions each lowered node's kernels call, by the
    /// node name in `lowered` ([`Registry::labels_since`]; none at `F32x4`)
    pub asm_used: HashMap<String, Vec<String>>,
    /// each lowered node's work, by the node name in `lowered`
    pub work: HashMap<String, NodeWork>,
    pub plan: plan::Plan,
    pub consts: ConstStore,
    /// where kernels' constant offsets went once [`drop_unread_consts`]
    /// compacted `consts` (`None` before)
    pub const_map: Option<ConstMap>,
    pub threads: usize,
    /// the tile level kernels were lowered for
    pub tiles: TileLevel,
}

/// The target's tile level `target`, capped by `opts`.
fn effective_tiles(target: TileLevel, opts: &CompileOptions) -> TileLevel {
    if opts.asm_tiles {
        target.min(opts.max_tiles)
    } else {
        TileLevel::F32x4
    }
}

/// An optimised model's fused ops (kiln-passes) without a kernel of their
/// own (attention, bridges, unusual dynamic-ReLU slopes) run as the
/// primitive ops they stand for; fused conv and linear nodes stay and get
/// epilogue kernels (kernels/fused.rs). Conv chains become one fused conv
/// per stage first, unless `banded_chains` and the chain has a kernel of
/// its own (`kernels/chain.rs`). `None` when `model` has nothing to
/// rewrite.
fn unfuse(model: &Model, banded_chains: bool) -> Result<Option<Model>, BackendError> {
    let g = &model.graph;
    if !g.node_ids().any(|id| match &g.node(id).op {
        kiln_ir::Op::Fused(kiln_ir::fused::FusedOp::ConvChain { .. }) => {
            !(banded_chains && kernels::chain::has_kernel(g, id))
        }
        kiln_ir::Op::Fused(_) => !kernels::fused::has_kernel(g, id),
        _ => false,
    }) {
        return Ok(None);
    }
    let mut m = model.clone();
    kernels::fused::split_conv_chains(&mut m.graph, |g, id| {
        banded_chains && kernels::chain::has_kernel(g, id)
    })?;
    kiln_ir::fused::lower_fused_where(&mut m.graph, &mut m.weights, |g, id| {
        !kernels::fused::has_kernel(g, id)
    })?;
    Ok(Some(m))
}

/// The graph [`compile`] generates kernels from: `model` with its conv
/// chains split into fused convs, the fused ops that have no kernel of their
/// own expanded into primitive ops, and constant subgraphs folded. Its node
/// names are the ones [`CompiledModel::profile`] reports, so a tool can pair
/// each kernel's time with the node it computes (`examples/calibrate.rs`).
pub fn kernel_graph(model: &Model) -> Result<Model, BackendError> {
    let unfused = unfuse(model, CompileOptions::default().banded_chains)?;
    let model = unfused.as_ref().unwrap_or(model);
    kiln_ir::verify(&model.graph)?;
    kiln_ir::verify_weights(&model.graph, &model.weights)?;
    let limits = CompileOptions::default().limits;
    Ok(crate::fold::fold_constants(model, &limits)?.unwrap_or_else(|| model.clone()))
}

/// Verifies, folds, plans and lowers `model`: everything before code
/// generation, shared by the JIT and the object-file backend. `tiles` is
/// the target's level; the options may cap it (`Front::tiles`).
pub(crate) fn front(
    model: &Model,
    opts: &CompileOptions,
    tiles: TileLevel,
) -> Result<Front, BackendError> {
    let unfused = unfuse(model, opts.banded_chains)?;
    let model = unfused.as_ref().unwrap_or(model);
    kiln_ir::verify(&model.graph)?;
    kiln_ir::verify_weights(&model.graph, &model.weights)?;
    opts.limits.check_graph(&model.graph)?;
    let folded = crate::fold::fold_constants(model, &opts.limits)?;
    let model = folded.as_ref().unwrap_or(model);
    let g = &model.graph;
    let threads = opts
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    // Weights go into the constant blob, so that kernels address them by
    // offset like packed constants (relocatable in an object file).
    let mut consts = ConstStore::with_limits(opts.limits);
    let mut weight_addr: HashMap<NodeId, usize> = HashMap::new();
    for &w in g.weights() {
        let name = &g.node(w).outputs[0].name;
        if let Some(t) = model.weights.get(name) {
            let off = match t.data() {
                TensorData::F32(d) => consts.add(d),
                TensorData::I64(d) => consts.add_i64(d),
            };
            weight_addr.insert(w, off);
        }
    }
    let plan = plan::plan(g, &weight_addr, &opts.limits)?;
    let tiles = effective_tiles(tiles, opts);
    let mut asm = Registry::new(tiles);
    let use_asm = tiles > TileLevel::F32x4;
    let mut lowered: Lowered = Vec::new();
    let mut work = HashMap::new();
    let mut asm_used = HashMap::new();
    for &id in &plan.kernels {
        let node = g.node(id);
        if node.outputs.iter().all(|o| o.ty.numel() == 0) {
            // Empty results: nothing to compute, and no kernel may see an
            // empty tensor (the verifier refuses empty operands of a node
            // with a non-empty result; see `kiln_ir::verify`).
            continue;
        }
        let inplace = plan.inplace.contains(&id);
        let loc = |v: &Value| {
            plan.loc.get(v).copied().ok_or_else(|| {
                BackendError::Jit(format!("{}: value without a location", g.display_node(id)))
            })
        };
        let mut ins = Vec::new();
        for v in g.operands(id) {
            ins.push(Operand {
                buf: Buf {
                    loc: loc(&v)?,
                    readonly: !inplace,
                },
                ty: g.value_type(v).clone(),
                data: weight_data(model, g, v),
            });
        }
        let mut outs = Vec::new();
        for (o, info) in node.outputs.iter().enumerate() {
            outs.push((
                Buf::output(loc(&Value {
                    node: id,
                    output: o,
                })?),
                info.ty.clone(),
            ));
        }
        let name = g.display_node(id);
        let mark = asm.request_count();
        let mut cx = NodeCx {
            name: name.clone(),
            op: &node.op,
            ins,
            outs,
            scratch: plan.scratch.get(&id).map(|&l| Buf::output(l)),
            threads,
            tile: opts.gemm_tile.into(),
            consts: &mut consts,
            asm: use_asm.then_some(&mut asm),
        };
        for k in kernels::lower(&mut cx)? {
            lowered.push((name.clone(), k));
        }
        asm_used.insert(name.clone(), asm.labels_since(mark));
        let bytes = g
            .operands(id)
            .iter()
            .map(|v| g.value_type(*v).size_bytes())
            .chain(node.outputs.iter().map(|o| o.ty.size_bytes()))
            .sum::<usize>();
        work.insert(
            name.clone(),
            NodeWork {
                macs: kiln_ir::stats::node_macs(g, id),
                bytes: bytes as u64,
            },
        );
    }
    // packed weights and tables added during lowering count too
    consts.room(0, "the constant blob")?;
    let n_in = g.inputs().len();
    for &(k, src) in &plan.copies {
        let v = g.outputs()[k];
        let words = g.value_type(v).size_bytes() / 4;
        if words == 0 {
            continue;
        }
        let dst = Buf::output(Loc::Io(8 * (n_in + k)));
        let name = format!("output {k} ({})", g.display_value(v));
        work.insert(
            name.clone(),
            NodeWork {
                macs: 0,
                bytes: 8 * words as u64,
            },
        );
        lowered.push((name, Box::new(Copy::flat(dst, Buf::input(src), words))));
    }
    Ok(Front {
        weights: model.weights.clone(),
        asm,
        lowered,
        asm_used,
        work,
        plan,
        consts,
        const_map: None,
        threads,
        tiles,
    })
}

/// Drops from the constant blob every range no kernel reads: weights are
/// added before lowering (the plan addresses them there), but a weight that
/// every reader packs (convolution and linear weights) would otherwise be
/// stored twice. A dry run of code generation collects the offsets each
/// kernel asks for; the real run maps them into the compacted blob.
pub(crate) fn drop_unread_consts(
    front: &mut Front,
    frontend: cranelift_codegen::isa::TargetFrontendConfig,
) {
    let mut fctx = FunctionBuilderContext::new();
    let mut reads = Vec::new();
    for (i, (_, k)) in front.lowered.iter().enumerate() {
        let dry = |_: &mut Function| {
            let env = Env {
                fma: false,
                call_conv: frontend.default_call_conv,
                cbase: ConstBase::Addr(0),
                powf: PowF::Import,
            };
            (env, AsmLink::Addrs(Vec::new()))
        };
        let (_, r) = build(k.as_ref(), i as u32, frontend, dry, None, &mut fctx);
        reads.extend(r);
    }
    let (consts, map) = front.consts.retain_read(&reads);
    front.consts = consts;
    front.const_map = Some(map);
}

/// The signature of every kernel: `fn(arena, begin, end)`.
pub(crate) fn kernel_signature(cc: CallConv) -> Signature {
    let mut sig = Signature::new(cc);
    for _ in 0..3 {
        sig.params.push(AbiParam::new(I64));
    }
    sig
}

/// The JIT's environment: constants at the blob's absolute address, `powf`
/// called through the host's address.
fn jit_env(target: &Target, consts: &ConstStore) -> Env {
    Env {
        fma: target.fma,
        call_conv: target.speed.default_call_conv(),
        cbase: ConstBase::Addr(consts.base()),
        powf: PowF::Addr(kernels::elementwise::host_powf as *const () as usize),
    }
}

/// Builds the Cranelift function of kernel number `index`. `env` makes the
/// environment and the links to assembled functions once the function
/// exists (an object file declares the constant blob's symbol and the
/// assembled functions in it); `const_map` is where the kernel's constant
/// offsets went when the blob was compacted.
pub(crate) fn build_function(
    k: &dyn Kernel,
    index: u32,
    frontend: cranelift_codegen::isa::TargetFrontendConfig,
    env: impl FnOnce(&mut Function) -> (Env, AsmLink),
    const_map: Option<&ConstMap>,
    fctx: &mut FunctionBuilderContext,
) -> Function {
    build(k, index, frontend, env, const_map, fctx).0
}

/// [`build_function`], also returning the constant offsets the kernel read.
fn build(
    k: &dyn Kernel,
    index: u32,
    frontend: cranelift_codegen::isa::TargetFrontendConfig,
    env: impl FnOnce(&mut Function) -> (Env, AsmLink),
    const_map: Option<&ConstMap>,
    fctx: &mut FunctionBuilderContext,
) -> (Function, Vec<usize>) {
    let env0 = Env {
        fma: false,
        call_conv: frontend.default_call_conv,
        cbase: ConstBase::Addr(0),
        powf: PowF::Import,
    };
    let sig = kernel_signature(env0.call_conv);
    let mut func = Function::with_name_signature(UserFuncName::user(0, index), sig);
    let (env, asm) = env(&mut func);
    let mut b = FunctionBuilder::new(&mut func, fctx);
    let entry = b.create_block();
    b.append_block_params_for_function_params(entry);
    b.switch_to_block(entry);
    b.seal_block(entry);
    let p = b.block_params(entry).to_vec();
    let mut e = Emitter::new(b, p[0], env);
    e.asm = asm;
    e.const_map = const_map;
    k.emit(&mut e, p[1], p[2]);
    let reads = std::mem::take(&mut e.const_reads);
    let mut b = e.finish();
    b.ins().return_(&[]);
    b.finalize(frontend);
    (func, reads)
}

pub(crate) fn kernel_isa<'t>(
    k: &dyn Kernel,
    opts: &CompileOptions,
    t: &'t Target,
) -> (&'t dyn cranelift_codegen::isa::TargetIsa, OptLevel) {
    let level = match k.opt() {
        Opt::None => opts.tile_opt_level,
        Opt::Speed => opts.opt_level,
    };
    let isa = match level {
        OptLevel::None => &*t.none,
        OptLevel::Speed => &*t.speed,
    };
    (isa, level)
}

/// Compiles every lowered kernel of `front` and defines it in `module` as
/// local function `symbol(i)`: the one kernel loop of the JIT and of object
/// files (any `cranelift_module::Module`). What differs is passed in:
/// `link` makes a kernel's environment once its function exists (where the
/// constants are, how `powf` is reached, the assembled functions), and
/// `reloc` may rewrite each relocation before it is recorded (an object
/// turns the `powf` placeholder into an import). Developer aids:
/// `KILN_JIT_DISASM=1` prints each kernel's machine code,
/// `KILN_COMPILE_TIMES=1` the kernels that took 5 ms or more.
pub(crate) fn define_kernels<M: Module>(
    module: &mut M,
    front: &Front,
    target: &Target,
    opts: &CompileOptions,
    symbol: &dyn Fn(usize) -> String,
    link: &mut dyn FnMut(&mut M, &mut Function) -> (Env, AsmLink),
    reloc: &mut dyn FnMut(&mut M, ModuleReloc) -> Result<ModuleReloc, BackendError>,
) -> Result<Vec<FuncId>, BackendError> {
    let mut fctx = FunctionBuilderContext::new();
    let disasm = std::env::var_os("KILN_JIT_DISASM").is_some();
    let times = std::env::var_os("KILN_COMPILE_TIMES").is_some();
    let mut ids = Vec::with_capacity(front.lowered.len());
    for (i, (node, k)) in front.lowered.iter().enumerate() {
        let codegen_err = |msg: String| BackendError::Codegen {
            node: node.clone(),
            msg,
        };
        let func = build_function(
            k.as_ref(),
            i as u32,
            target.speed.frontend_config(),
            |f: &mut Function| link(module, f),
            front.const_map.as_ref(),
            &mut fctx,
        );
        let id = module
            .declare_function(&symbol(i), Linkage::Local, &func.signature)
            .map_err(|e| codegen_err(e.to_string()))?;
        let (isa, _) = kernel_isa(k.as_ref(), opts, target);
        let func = crate::scalarize::prepare(func, target.scalar || opts.scalarize, isa, opts)
            .map_err(codegen_err)?;
        let tk = Instant::now();
        let mut ctx = Context::for_function(func);
        ctx.set_disasm(disasm);
        let code = ctx
            .compile(isa, &mut ControlPlane::default())
            .map_err(|e| {
                codegen_err(cranelift_codegen::print_errors::pretty_error(
                    e.func, e.inner,
                ))
            })?;
        if let (true, Some(text)) = (disasm, &code.vcode) {
            eprintln!(
                "; kernel {} from {node}: {}\n{text}",
                symbol(i),
                k.describe()
            );
        }
        let align = u64::from(code.buffer.alignment).max(16);
        let bytes = code.code_buffer().to_vec();
        let mach_relocs = code.buffer.relocs().to_vec();
        let mut relocs = Vec::with_capacity(mach_relocs.len());
        for r in &mach_relocs {
            relocs.push(reloc(
                module,
                ModuleReloc::from_mach_reloc(r, &ctx.func, id),
            )?);
        }
        module
            .define_function_bytes(id, align, &bytes, &relocs)
            .map_err(|e| codegen_err(e.to_string()))?;
        ids.push(id);
        if times && tk.elapsed().as_millis() >= 5 {
            eprintln!("{:?} {node}: {}", tk.elapsed(), k.describe());
        }
    }
    Ok(ids)
}

/// Places the assembled tiles in a JIT module of their own, finalised first
/// so that their addresses can be baked into the kernels that call them.
fn place_asm(
    asm: &Registry,
    target: &Target,
    modules: &mut Vec<JITModule>,
) -> Result<Vec<usize>, BackendError> {
    if asm.code().is_empty() {
        return Ok(Vec::new());
    }
    let mut module = JITModule::new(JITBuilder::with_isa(
        target.speed.clone(),
        default_libcall_names(),
    ));
    let sig = crate::ukernels::tile::signature();
    let mut ids = Vec::new();
    for (i, code) in asm.code().iter().enumerate() {
        let id = module
            .declare_function(&format!("tile{i}"), Linkage::Local, &sig)
            .map_err(|e| BackendError::Jit(e.to_string()))?;
        module
            .define_function_bytes(id, 64, code, &[])
            .map_err(|e| BackendError::Jit(e.to_string()))?;
        ids.push(id);
    }
    module
        .finalize_definitions()
        .map_err(|e| BackendError::Jit(e.to_string()))?;
    let addrs = ids
        .iter()
        .map(|&id| module.get_finalized_function(id) as usize)
        .collect();
    modules.push(module);
    Ok(addrs)
}

/// Compiles `model` for the host CPU.
pub fn compile(model: &Model, opts: &CompileOptions) -> Result<CompiledModel, BackendError> {
    let t0 = Instant::now();
    let target = Target::host(opts.verify_ir)?;
    let mut front = front(model, opts, target.tiles)?;
    drop_unread_consts(&mut front, target.speed.frontend_config());
    if std::env::var_os("KILN_COMPILE_TIMES").is_some() {
        eprintln!("front: {:?}", t0.elapsed());
    }
    let mut modules = Vec::new();
    let asm_addrs = place_asm(&front.asm, &target, &mut modules)?;
    if std::env::var_os("KILN_COMPILE_TIMES").is_some() {
        eprintln!(
            "asm placed: {:?} ({} variants)",
            t0.elapsed(),
            asm_addrs.len()
        );
    }
    let mut module = JITModule::new(JITBuilder::with_isa(
        target.speed.clone(),
        default_libcall_names(),
    ));
    let ids = define_kernels(
        &mut module,
        &front,
        &target,
        opts,
        &|i| format!("k{i}"),
        &mut |_, _| {
            (
                jit_env(&target, &front.consts),
                AsmLink::Addrs(asm_addrs.clone()),
            )
        },
        &mut |_, r| Ok(r),
    )?;
    module
        .finalize_definitions()
        .map_err(|e| BackendError::Jit(e.to_string()))?;
    let steps = ids
        .iter()
        .zip(&front.lowered)
        .map(|(&id, (node, k))| Step {
            func: module.get_finalized_function(id) as usize,
            units: k.units(),
            parallel: splits(k.as_ref(), front.threads),
            node: node.clone(),
            what: k.describe(),
            work: front.work.get(node).copied().unwrap_or_default(),
        })
        .collect();
    let g = &model.graph;
    let io = |v: Value| {
        let info = g.value_info(v);
        (info.name.clone(), info.ty.clone())
    };
    let pool = Pool::new(front.threads)
        .map_err(|e| BackendError::Jit(format!("starting worker threads: {e}")))?;
    let stats = CompileStats {
        compile_time: t0.elapsed(),
        kernels: front.lowered.len(),
        arena_bytes: front.plan.arena_bytes,
        unshared_bytes: front.plan.unshared_bytes,
        const_bytes: front.consts.bytes(),
        inplace_kernels: front.plan.inplace.len(),
        asm_variants: front.asm.code().len(),
        tiles: front.tiles,
        threads: front.threads,
        target: target.describe(),
    };
    Ok(CompiledModel {
        steps,
        inputs: g.inputs().iter().map(|&n| io(Value::of(n))).collect(),
        outputs: g.outputs().iter().map(|&v| io(v)).collect(),
        arena_bytes: front.plan.arena_bytes,
        arenas: Mutex::new(Vec::new()),
        pool: Mutex::new(pool),
        stats,
        _consts: front.consts,
        _weights: front.weights,
        _code: JitCode({
            modules.push(module);
            modules
        }),
    })
}

/// The kernel plan of `model` for the host (capped by `opts`, like
/// [`compile`]): the tile level, then every kernel in run order with the
/// node it came from and what it computes, and after each node the
/// assembled functions its kernels call. Lowering only, no code
/// generation. For `kiln opt --emit plan` and the plan snapshots, which
/// catch a kernel silently falling back to another path.
pub fn kernel_plan(model: &Model, opts: &CompileOptions) -> Result<String, BackendError> {
    let target = Target::host(false)?;
    let front = front(model, opts, target.tiles)?;
    let mut out = format!(
        "tiles {}, {} kernels, {} assembled functions\n",
        front.tiles,
        front.lowered.len(),
        front.asm.code().len()
    );
    for (i, (node, k)) in front.lowered.iter().enumerate() {
        out.push_str(&format!("k{i} {node}: {}\n", k.describe()));
        let last_of_node = front.lowered.get(i + 1).is_none_or(|(n, _)| n != node);
        if let Some(used) = front
            .asm_used
            .get(node)
            .filter(|u| last_of_node && !u.is_empty())
        {
            for label in used {
                out.push_str(&format!("    asm {label}\n"));
            }
        }
    }
    Ok(out)
}

/// The Cranelift IR of every kernel `compile` would generate, each preceded
/// by a comment naming the kiln node it came from (for `kiln opt --emit clif`).
pub fn emit_clif(model: &Model, opts: &CompileOptions) -> Result<String, BackendError> {
    let target = Target::host(opts.verify_ir)?;
    let mut front = front(model, opts, target.tiles)?;
    drop_unread_consts(&mut front, target.speed.frontend_config());
    let mut fctx = FunctionBuilderContext::new();
    let mut out = format!(
        "; kiln: {} kernels, arena {} bytes, target {}\n",
        front.lowered.len(),
        front.plan.arena_bytes,
        target.describe()
    );
    for (i, (node, k)) in front.lowered.iter().enumerate() {
        let env = jit_env(&target, &front.consts);
        let func = build_function(
            k.as_ref(),
            i as u32,
            target.speed.frontend_config(),
            |_| (env, AsmLink::Addrs(Vec::new())),
            front.const_map.as_ref(),
            &mut fctx,
        );
        let (isa, level) = kernel_isa(k.as_ref(), opts, &target);
        let func = crate::scalarize::prepare(func, target.scalar || opts.scalarize, isa, opts)
            .map_err(|msg| BackendError::Codegen {
                node: node.clone(),
                msg,
            })?;
        out.push_str(&format!(
            "\n; kernel k{i} from {node}: {} ({} units, opt_level={})\n{}",
            k.describe(),
            k.units(),
            level.name(),
            func.display()
        ));
    }
    Ok(out)
}

/// Elements of a tensor borrowed from the caller (a numpy array, a
/// memory-mapped file, ...), for [`CompiledModel::run_views`].
#[derive(Clone, Copy, Debug)]
pub enum Elems<'a> {
    /// `f32` elements, row-major.
    F32(&'a [f32]),
    /// `i64` elements, row-major.
    I64(&'a [i64]),
}

/// Mutable elements of a tensor borrowed from the caller, for
/// [`CompiledModel::run_views`].
#[derive(Debug)]
pub enum ElemsMut<'a> {
    /// `f32` elements, row-major.
    F32(&'a mut [f32]),
    /// `i64` elements, row-major.
    I64(&'a mut [i64]),
}

/// An input read in place: a shape and the caller's row-major elements.
#[derive(Clone, Copy, Debug)]
pub struct TensorRef<'a> {
    /// the shape; the elements must number its product
    pub shape: &'a [usize],
    /// the elements
    pub data: Elems<'a>,
}

/// An output written in place: a shape and the caller's row-major elements.
#[derive(Debug)]
pub struct TensorMut<'a> {
    /// the shape; the elements must number its product
    pub shape: &'a [usize],
    /// the elements
    pub data: ElemsMut<'a>,
}

/// Checks arguments — `(dtype, shape, element count)` each — against the
/// declared types without allocating (the message is built only on error).
/// The element count matters for borrowed views, whose slices could be
/// shorter than their shape says: kernels index by the shape.
fn check<'t>(
    what: &str,
    want: &[(String, TensorType)],
    got: impl ExactSizeIterator<Item = (DType, &'t [usize], usize)>,
) -> Result<(), String> {
    if got.len() != want.len() {
        return Err(format!(
            "the model has {} {what}s, {} given",
            want.len(),
            got.len()
        ));
    }
    for (k, ((name, ty), (dtype, shape, len))) in want.iter().zip(got).enumerate() {
        if dtype != ty.dtype || shape != ty.shape.as_slice() {
            let got = TensorType::new(dtype, shape.to_vec());
            return Err(format!("{what} {k} (%{name}) must be {ty}, got {got}"));
        }
        if len != ty.numel() {
            return Err(format!(
                "{what} {k} (%{name}) has {len} elements, its shape {ty} needs {}",
                ty.numel()
            ));
        }
    }
    Ok(())
}

fn tensor_arg(t: &Tensor) -> (DType, &[usize], usize) {
    (t.dtype(), t.shape(), t.numel())
}

fn tensor_addr(t: &Tensor) -> usize {
    match t.data() {
        TensorData::F32(d) => d.as_ptr() as usize,
        TensorData::I64(d) => d.as_ptr() as usize,
    }
}

/// The address of `t`'s elements, made unique first (copy-on-write).
fn tensor_addr_mut(t: &mut Tensor) -> usize {
    match t.dtype() {
        DType::F32 => t.as_f32_mut().map_or(0, |d| d.as_mut_ptr() as usize),
        DType::I64 => t.as_i64_mut().map_or(0, |d| d.as_mut_ptr() as usize),
    }
}

impl Elems<'_> {
    fn arg<'s>(&self, shape: &'s [usize]) -> (DType, &'s [usize], usize) {
        match self {
            Elems::F32(d) => (DType::F32, shape, d.len()),
            Elems::I64(d) => (DType::I64, shape, d.len()),
        }
    }
}

impl ElemsMut<'_> {
    fn arg<'s>(&self, shape: &'s [usize]) -> (DType, &'s [usize], usize) {
        match self {
            ElemsMut::F32(d) => (DType::F32, shape, d.len()),
            ElemsMut::I64(d) => (DType::I64, shape, d.len()),
        }
    }
}

impl CompiledModel {
    /// Runs the model; returns one tensor per graph output.
    pub fn run(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>, BackendError> {
        let mut outs: Vec<Tensor> = self.outputs.iter().map(|(_, t)| Tensor::zeros(t)).collect();
        self.run_into(inputs, &mut outs)?;
        Ok(outs)
    }

    /// Runs the model writing into `outputs`, which must already have the
    /// outputs' types. Allocates nothing once an arena is pooled (the first
    /// call allocates it) and the output tensors own their data (a shared
    /// output tensor is copied on write, see [`Tensor::as_f32_mut`]).
    pub fn run_into(&self, inputs: &[Tensor], outputs: &mut [Tensor]) -> Result<(), BackendError> {
        self.check_args(
            inputs.iter().map(tensor_arg),
            outputs.iter().map(tensor_arg),
        )?;
        // SAFETY: the addresses are those of `inputs` and `outputs`, just
        // checked and borrowed (outputs mutably, each made unique by
        // `as_f32_mut`) for the whole call.
        unsafe {
            self.execute(
                inputs.iter().map(tensor_addr),
                outputs.iter_mut().map(tensor_addr_mut),
                None,
            )
        };
        Ok(())
    }

    /// [`CompiledModel::run_into`] on borrowed memory: reads the inputs and
    /// writes the outputs in place, without copying either (the Python
    /// binding passes numpy arrays this way). Each view's shape must be the
    /// declared one and its slice hold exactly that many elements. The
    /// elements may have any address their type allows (no alignment beyond
    /// the element's is assumed, as for [`Tensor`] data).
    pub fn run_views(
        &self,
        inputs: &[TensorRef<'_>],
        outputs: &mut [TensorMut<'_>],
    ) -> Result<(), BackendError> {
        self.check_args(
            inputs.iter().map(|t| t.data.arg(t.shape)),
            outputs.iter().map(|t| t.data.arg(t.shape)),
        )?;
        // SAFETY: the addresses are those of `inputs` and `outputs`, just
        // checked and borrowed (outputs mutably, so overlapping nothing
        // else) for the whole call.
        unsafe {
            self.execute(
                inputs.iter().map(|t| match t.data {
                    Elems::F32(d) => d.as_ptr() as usize,
                    Elems::I64(d) => d.as_ptr() as usize,
                }),
                outputs.iter_mut().map(|t| match &mut t.data {
                    ElemsMut::F32(d) => d.as_mut_ptr() as usize,
                    ElemsMut::I64(d) => d.as_mut_ptr() as usize,
                }),
                None,
            )
        };
        Ok(())
    }

    /// Runs the model once, timing every kernel (the outputs are discarded).
    pub fn profile(&self, inputs: &[Tensor]) -> Result<Vec<KernelTime>, BackendError> {
        let mut outs: Vec<Tensor> = self.outputs.iter().map(|(_, t)| Tensor::zeros(t)).collect();
        self.check_args(inputs.iter().map(tensor_arg), outs.iter().map(tensor_arg))?;
        let mut times = Vec::with_capacity(self.steps.len());
        // SAFETY: as in `run_into`.
        unsafe {
            self.execute(
                inputs.iter().map(tensor_addr),
                outs.iter_mut().map(tensor_addr_mut),
                Some(&mut times),
            )
        };
        Ok(self
            .steps
            .iter()
            .zip(times)
            .map(|(s, time)| KernelTime {
                node: s.node.clone(),
                kernel: s.what.clone(),
                time,
                work: s.work,
                parallel: s.parallel,
            })
            .collect())
    }

    /// Checks run arguments against the graph's inputs and outputs.
    fn check_args<'a, 'b>(
        &self,
        inputs: impl ExactSizeIterator<Item = (DType, &'a [usize], usize)>,
        outputs: impl ExactSizeIterator<Item = (DType, &'b [usize], usize)>,
    ) -> Result<(), BackendError> {
        check("input", &self.inputs, inputs).map_err(BackendError::Input)?;
        check("output", &self.outputs, outputs).map_err(BackendError::Output)
    }

    /// Runs the kernels over the given input and output addresses.
    ///
    /// # Safety
    ///
    /// The addresses are those of the arguments the caller checked with
    /// [`CompiledModel::check_args`] (declared dtype and shape, exactly
    /// that many elements), in order, and the caller keeps them borrowed
    /// (outputs mutably, not overlapping anything else) until this returns.
    unsafe fn execute(
        &self,
        inputs: impl Iterator<Item = usize>,
        outputs: impl Iterator<Item = usize>,
        mut times: Option<&mut Vec<Duration>>,
    ) {
        let mut arena = self
            .arenas
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop()
            .unwrap_or_else(|| Arena::new(self.arena_bytes));
        let n_in = self.inputs.len();
        for (k, p) in inputs.enumerate() {
            arena.set_slot(k, p);
        }
        for (k, p) in outputs.enumerate() {
            arena.set_slot(n_in + k, p);
        }
        let base = arena.base();
        let pool = self.pool.try_lock().ok();
        for s in &self.steps {
            let t0 = times.is_some().then(Instant::now);
            if s.units == 0 {
                if let (Some(t), Some(t0)) = (times.as_deref_mut(), t0) {
                    t.push(t0.elapsed());
                }
                continue;
            }
            // SAFETY: `s.func` is a finalized kernel of this model's JIT module
            // (kept alive by `self`) with signature `KernelFn`.
            let f: KernelFn = unsafe { std::mem::transmute::<usize, KernelFn>(s.func) };
            match (&pool, s.parallel) {
                // SAFETY: the arena was laid out by this model's plan: its
                // header holds the addresses of `inputs` and `outputs`, which
                // by this function's contract are checked and stay borrowed
                // until we return; nobody else uses this arena.
                (Some(p), true) => unsafe { p.run(f, base, s.units) },
                // SAFETY: as above, on this thread alone.
                _ => unsafe { f(base, 0, s.units as i64) },
            }
            if let (Some(t), Some(t0)) = (times.as_deref_mut(), t0) {
                t.push(t0.elapsed());
            }
        }
        drop(pool);
        self.arenas
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(arena);
    }

    /// Every kernel in run order: the node it came from and what it
    /// computes (the names [`CompiledModel::profile`] reports, e.g. `fused
    /// pointwise conv 96→24 1x1 +bias relu6 +res: gemm ...`).
    pub fn kernel_descriptions(&self) -> Vec<(String, String)> {
        self.steps
            .iter()
            .map(|s| (s.node.clone(), s.what.clone()))
            .collect()
    }

    /// Compile-time facts: time, kernel count, arena size, threads.
    pub fn stats(&self) -> &CompileStats {
        &self.stats
    }

    /// Bytes of the per-call arena.
    pub fn arena_bytes(&self) -> usize {
        self.arena_bytes
    }

    /// Kernels split over the worker pool (each pays one fork/join).
    pub fn parallel_kernels(&self) -> usize {
        self.steps.iter().filter(|s| s.parallel).count()
    }

    /// The median overhead of one fork/join of the worker pool over
    /// `samples` rounds (zero at one thread): a job of `4·threads` units
    /// that each spin for 1 µs is timed, and the ideal split of its work
    /// (`4 µs` per thread) subtracted. What remains is publishing the job,
    /// waking or reaching the workers, claiming chunks and waiting for the
    /// last one — including the cost of a worker that arrives late. Times
    /// [`CompiledModel::parallel_kernels`], it estimates what
    /// synchronisation costs a run. Waits for any run in progress on
    /// another thread.
    pub fn barrier_cost(&self, samples: usize) -> Duration {
        const SPIN: Duration = Duration::from_micros(1);
        /// One unit of work: a 1 µs spin per unit in `[begin, end)`.
        unsafe extern "C" fn spin(_: *mut u8, begin: i64, end: i64) {
            for _ in begin..end {
                let t = Instant::now();
                while t.elapsed() < SPIN {
                    std::hint::spin_loop();
                }
            }
        }
        let threads = self.stats.threads;
        if threads <= 1 || samples == 0 {
            return Duration::ZERO;
        }
        let pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        let units = 4 * threads;
        let ideal = SPIN * (units / threads) as u32;
        let mut times: Vec<Duration> = (0..samples)
            .map(|_| {
                let t = Instant::now();
                // SAFETY: `spin` touches no memory, so any arena pointer
                // (here null) satisfies `run`'s contract.
                unsafe { pool.run(spin, std::ptr::null_mut(), units) };
                t.elapsed().saturating_sub(ideal)
            })
            .collect();
        times.sort();
        times[times.len() / 2]
    }

    /// Threads a run uses.
    pub fn threads(&self) -> usize {
        self.stats.threads
    }

    /// Names and types of the graph inputs, in order.
    pub fn inputs(&self) -> &[(String, TensorType)] {
        &self.inputs
    }

    /// Names and types of the graph outputs, in order.
    pub fn outputs(&self) -> &[(String, TensorType)] {
        &self.outputs
    }
}
