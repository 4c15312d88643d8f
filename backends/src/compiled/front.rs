//! The shared front of the JIT and object files: verify, unfuse, plan
//! memory, lower every kernel node, and the one kernel-definition loop
//! over any `cranelift_module::Module`; which kernels split over threads.

use super::jit::jit_env;
use super::model::NodeWork;
use super::options::{CompileOptions, OptLevel};
use std::collections::HashMap;
use std::time::Instant;

use cranelift_codegen::Context;
use cranelift_codegen::control::ControlPlane;
use cranelift_codegen::ir::{AbiParam, Function, InstBuilder, Signature, UserFuncName};
use cranelift_codegen::isa::CallConv;
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};
use cranelift_module::{FuncId, Linkage, Module, ModuleReloc};
use kiln_ir::{Graph, Model, NodeId, TensorData, Value};

use crate::codegen::{AsmLink, Buf, ConstBase, Emitter, Env, I64, Loc, PowF};
use crate::error::BackendError;
use crate::kernels::{self, Kernel, NodeCx, Operand, Opt, copy::Copy};
use crate::plan;
use crate::runtime::{ConstMap, ConstStore};
use crate::target::{Target, TileLevel};
use crate::ukernels::Registry;

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
/// enough that claiming one costs nothing next to its work. Eight per
/// thread rather than four: at 2 threads StarNet-S1 2.39 → 2.33 ms and
/// InceptionNeXt-atto 2.74 → 2.66 (medians of two 60-run sittings each,
/// alternated), MobileNetV4-conv-small and SHViT-S1 unchanged.
pub(crate) fn chunks_for(units: usize, threads: usize) -> usize {
    units.min(8 * threads).max(1)
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
/// its own (`kernels/conv_chain.rs`). `None` when `model` has nothing to
/// rewrite.
fn unfuse(model: &Model, banded_chains: bool) -> Result<Option<Model>, BackendError> {
    let g = &model.graph;
    if !g.node_ids().any(|id| match &g.node(id).op {
        kiln_ir::Op::Fused(kiln_ir::fused::FusedOp::ConvChain { .. }) => {
            !(banded_chains && kernels::conv_chain::has_kernel(g, id))
        }
        kiln_ir::Op::Fused(_) => !kernels::fused::has_kernel(g, id),
        _ => false,
    }) {
        return Ok(None);
    }
    let mut m = model.clone();
    kernels::fused::split_conv_chains(&mut m.graph, |g, id| {
        banded_chains && kernels::conv_chain::has_kernel(g, id)
    })?;
    kiln_ir::fused::lower_fused_where(&mut m.graph, &mut m.weights, |g, id| {
        !kernels::fused::has_kernel(g, id)
    })?;
    Ok(Some(m))
}

/// The graph [`compile`](super::compile) generates kernels from: `model` with its conv
/// chains split into fused convs, the fused ops that have no kernel of their
/// own expanded into primitive ops, and constant subgraphs folded. Its node
/// names are the ones [`CompiledModel::profile`](super::CompiledModel::profile) reports, so a tool can pair
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

/// Opens the function's entry block, with its parameters: where every
/// generated function (kernels, an object's entry points and task) starts.
pub(crate) fn entry_params(b: &mut FunctionBuilder) -> Vec<cranelift_codegen::ir::Value> {
    let entry = b.create_block();
    b.append_block_params_for_function_params(entry);
    b.switch_to_block(entry);
    b.seal_block(entry);
    b.block_params(entry).to_vec()
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
    let p = entry_params(&mut b);
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

/// The kernel plan of `model` for the host (capped by `opts`, like
/// [`compile`](super::compile)): the tile level, then every kernel in run order with the
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
