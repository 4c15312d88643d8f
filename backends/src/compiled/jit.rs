//! The JIT: kernels compiled into executable memory for the host CPU,
//! assembled tiles placed first, and the compiled model assembled.

use super::front::{define_kernels, drop_unread_consts, front, splits};
use super::model::{CompileStats, CompiledModel, JitCode, Step};
use super::options::CompileOptions;
use std::sync::Mutex;
use std::time::Instant;

use cranelift_jit::{JITBuilder, JITModule};
use cranelift_module::{Linkage, Module, default_libcall_names};
use kiln_ir::{Model, Value};

use crate::codegen::{AsmLink, ConstBase, Env, PowF};
use crate::error::BackendError;
use crate::kernels;
use crate::runtime::ConstStore;
use crate::runtime::pool::Pool;
use crate::target::Target;
use crate::ukernels::Registry;

/// The JIT's environment: constants at the blob's absolute address, `powf`
/// called through the host's address.
pub(super) fn jit_env(target: &Target, consts: &ConstStore) -> Env {
    Env {
        fma: target.fma,
        call_conv: target.speed.default_call_conv(),
        cbase: ConstBase::Addr(consts.base()),
        powf: PowF::Addr(kernels::elementwise::host_powf as *const () as usize),
    }
}

/// Places the assembled tiles in a JIT module of their own, finalised first
/// so that their addresses can be baked into the kernels that call them.
pub(crate) fn place_asm(
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
        groups: 1,
        group_bytes: Vec::new(),
        tail: None,
        stats,
        _consts: front.consts,
        _weights: front.weights,
        _code: JitCode({
            modules.push(module);
            modules
        }),
    })
}
