//! Ahead-of-time compilation: a model as a relocatable object file plus a C
//! header, for linking into a program that has no kiln at run time.
//!
//! The object holds one function per kernel (the same kernels as the JIT,
//! compiled for the chosen target and CPU level), the constant blob (weights
//! and packed weights) as one read-only data object, and two exported
//! functions generated in Cranelift IR:
//!
//! - `int kiln_<name>_run(const float *input, float *output, void *scratch)`
//!   stores the two pointers into the scratch arena's header exactly as the
//!   JIT driver does, calls every kernel over its whole unit range in order
//!   (single-threaded) and returns 0;
//! - `int kiln_<name>_run_parallel(input, output, scratch, parallel_for,
//!   pool)` does the same, but hands each kernel big enough to split (the
//!   JIT pool's rule) to the caller's `parallel_for(pool, task, context,
//!   range)` — the shape of pthreadpool's `parallelize_1d` — as `range`
//!   chunks, so the application keeps its threads; the local `task`
//!   function runs one chunk;
//! - `size_t kiln_<name>_scratch_bytes(void)` returns the arena size.
//!
//! Everything else is `Linkage::Local`. The only undefined symbols are C
//! library functions (`powf` for a non-constant power, and Cranelift
//! libcalls on targets lacking an instruction); [`AotObject::undefined`]
//! lists them and the header repeats the list. See docs/aot.md.

use std::collections::BTreeSet;

use cranelift_codegen::Context;
use cranelift_codegen::ir::{
    AbiParam, Function, InstBuilder, MemFlagsData, Signature, StackSlotData, StackSlotKind, types,
};
use cranelift_codegen::ir::{UserExternalName, UserFuncName};
use cranelift_codegen::isa::CallConv;
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};
use cranelift_module::{
    DataDescription, DataId, FuncId, Linkage, Module, ModuleRelocTarget, default_libcall_names,
};
use cranelift_object::{ObjectBuilder, ObjectModule};
use kiln_ir::{DType, Model, TensorType, Value};

use crate::codegen::{AsmLink, ConstBase, Env, I64, POWF_NAME, PowF};
use crate::compiled::{
    CompileOptions, Front, define_kernels, drop_unread_consts, entry_params, front,
    kernel_signature,
};
use crate::error::BackendError;
use crate::header;
use crate::target::Target;

/// Version of the object's C ABI (the two entry points and the scratch
/// contract); `model.h` defines it as `KILN_<NAME>_ABI_VERSION`.
pub const ABI_VERSION: u32 = 2;

/// Threads an object's kernels are partitioned for when
/// [`AotOptions::compile`] does not say (`kiln compile --threads`): the
/// devices objects are for have 4 to 8 cores.
pub const DEFAULT_THREADS: usize = 4;

/// What to compile for.
#[derive(Clone, Debug)]
pub struct AotOptions {
    /// target triple, one of [`aot_targets`]
    pub target: String,
    /// CPU level of that target (`x86-64-v2`, `generic`, ...)
    pub cpu: String,
    /// symbol prefix: `kiln_<name>_run`; letters, digits and `_`
    pub name: String,
    /// options of the shared front end; `threads` is how many threads the
    /// kernels are partitioned for ([`DEFAULT_THREADS`] when `None`): the
    /// most `kiln_<name>_run_parallel` can use
    pub compile: CompileOptions,
}

/// A compiled object file and its C header.
#[derive(Clone, Debug)]
pub struct AotObject {
    /// the ELF relocatable object
    pub object: Vec<u8>,
    /// `model.h`
    pub header: String,
    /// undefined symbols the object needs (C library functions), sorted
    pub undefined: Vec<String>,
    /// bytes of scratch one call needs
    pub scratch_bytes: usize,
    /// bytes of constant data (weights, packed weights)
    pub const_bytes: usize,
    /// the GEMM tile level of the object's kernels (from `--cpu`)
    pub tiles: crate::TileLevel,
    /// assembled functions (GEMM tile variants, and at `avx512` the other
    /// assembled kernels) the object carries as local functions
    pub asm_functions: usize,
    /// threads the kernels are partitioned for
    pub threads: usize,
    /// kernels `kiln_<name>_run_parallel` splits through the parallel-for
    /// (the others are too small to pay for it)
    pub parallel_kernels: usize,
    /// kernels in all
    pub kernels: usize,
}

/// Supported targets and, for each, its `--cpu` levels (the first is the
/// default).
pub fn aot_targets() -> Vec<(&'static str, Vec<&'static str>)> {
    crate::target::AOT_TARGETS
        .iter()
        .map(|(t, levels)| (*t, levels.iter().map(|(c, _)| *c).collect()))
        .collect()
}

/// Compiles `model` into an object file for `opts.target`; returns the
/// object bytes and `model.h`. See [`compile_aot`] for the details.
pub fn compile_object(model: &Model, opts: &AotOptions) -> Result<(Vec<u8>, String), BackendError> {
    let o = compile_aot(model, opts)?;
    Ok((o.object, o.header))
}

/// One kernel call of an entry point.
struct EntryStep {
    id: FuncId,
    units: usize,
    /// `Some(n)`: split into `n` chunks through the parallel-for
    chunks: Option<usize>,
}

/// Bytes of the context a parallel step hands its task function:
/// `{arena, kernel, units, chunks}`, four 8-byte words.
const TASK_CONTEXT_BYTES: u32 = 32;

/// `static void kiln_<name>_task(void *context, size_t i)`: runs chunk `i`
/// of the kernel the context names, units `[i·units/chunks,
/// (i+1)·units/chunks)` (the JIT pool's `chunk_range`).
fn define_task(
    module: &mut ObjectModule,
    fctx: &mut FunctionBuilderContext,
    name: &str,
    cc: CallConv,
    target: &Target,
) -> Result<FuncId, BackendError> {
    let mut sig = Signature::new(cc);
    sig.params.push(AbiParam::new(I64));
    sig.params.push(AbiParam::new(I64));
    let id = module
        .declare_function(&format!("kiln_{name}_task"), Linkage::Local, &sig)
        .map_err(|e| BackendError::Object(e.to_string()))?;
    let mut func = Function::with_name_signature(UserFuncName::user(0, id.as_u32()), sig);
    {
        let mut b = FunctionBuilder::new(&mut func, fctx);
        let p = entry_params(&mut b);
        // the context lives on the entry point's stack until the
        // parallel-for returns, and nobody writes it meanwhile
        let f = MemFlagsData::trusted().with_readonly();
        let arena = b.ins().load(I64, f, p[0], 0);
        let kernel = b.ins().load(I64, f, p[0], 8);
        let units = b.ins().load(I64, f, p[0], 16);
        let chunks = b.ins().load(I64, f, p[0], 24);
        // chunks <= 4·threads and units fit in i64 with room to spare:
        // (i+1)·units cannot overflow for i < chunks
        let lo = b.ins().imul(p[1], units);
        let lo = b.ins().udiv(lo, chunks);
        let next = b.ins().iadd_imm_u(p[1], 1);
        let hi = b.ins().imul(next, units);
        let hi = b.ins().udiv(hi, chunks);
        let ksig = b.import_signature(kernel_signature(cc));
        b.ins().call_indirect(ksig, kernel, &[arena, lo, hi]);
        b.ins().return_(&[]);
        b.finalize(target.speed.frontend_config());
    }
    let mut ctx = Context::for_function(func);
    module
        .define_function(id, &mut ctx)
        .map_err(|e| BackendError::Codegen {
            node: "task function".into(),
            msg: e.to_string(),
        })?;
    Ok(id)
}

/// `int kiln_<name>_run(input, output, scratch)`, or with `task`
/// `int kiln_<name>_run_parallel(input, output, scratch, parallel_for,
/// pool)`: stores the two tensor pointers into the arena's header as the
/// JIT driver does, then calls every kernel in order. A split step calls
/// `parallel_for(pool, task, &context, chunks)` when `parallel_for` is not
/// NULL; every kernel computes a unit the same way whichever chunk holds
/// it, so the results are those of `_run`, bit for bit.
fn define_entry(
    module: &mut ObjectModule,
    fctx: &mut FunctionBuilderContext,
    name: &str,
    cc: CallConv,
    cfg: cranelift_codegen::isa::TargetFrontendConfig,
    steps: &[EntryStep],
    task: Option<FuncId>,
) -> Result<(), BackendError> {
    let n_in: i32 = 1;
    let mut sig = Signature::new(cc);
    let params = if task.is_some() { 5 } else { 3 };
    for _ in 0..params {
        sig.params.push(AbiParam::new(I64));
    }
    sig.returns.push(AbiParam::new(types::I32));
    let symbol = if task.is_some() {
        format!("kiln_{name}_run_parallel")
    } else {
        format!("kiln_{name}_run")
    };
    let run_id = module
        .declare_function(&symbol, Linkage::Export, &sig)
        .map_err(|e| BackendError::Object(e.to_string()))?;
    let mut func = Function::with_name_signature(UserFuncName::user(0, run_id.as_u32()), sig);
    {
        let mut b = FunctionBuilder::new(&mut func, fctx);
        let p = entry_params(&mut b);
        let f = MemFlagsData::trusted();
        b.ins().store(f, p[0], p[2], 0);
        b.ins().store(f, p[1], p[2], 8 * n_in);
        let split = match task {
            Some(task) => {
                let slot = b.create_sized_stack_slot(StackSlotData::new(
                    StackSlotKind::ExplicitSlot,
                    TASK_CONTEXT_BYTES,
                    3,
                ));
                let ctx = b.ins().stack_addr(I64, slot, 0);
                let tref = module.declare_func_in_func(task, b.func);
                let task_addr = b.ins().func_addr(I64, tref);
                let mut psig = Signature::new(cc);
                for _ in 0..4 {
                    psig.params.push(AbiParam::new(I64));
                }
                let psig = b.import_signature(psig);
                Some((ctx, task_addr, psig))
            }
            None => None,
        };
        for s in steps {
            let fref = module.declare_func_in_func(s.id, b.func);
            let serial_call = |b: &mut FunctionBuilder| {
                let zero = b.ins().iconst(I64, 0);
                let units = b.ins().iconst(I64, s.units as i64);
                b.ins().call(fref, &[p[2], zero, units]);
            };
            match (split, s.chunks) {
                (Some((ctx, task_addr, psig)), Some(chunks)) => {
                    let (par, ser, next) = (b.create_block(), b.create_block(), b.create_block());
                    b.ins().brif(p[3], par, &[], ser, &[]);
                    b.seal_block(par);
                    b.seal_block(ser);
                    b.switch_to_block(par);
                    let kernel = b.ins().func_addr(I64, fref);
                    let units = b.ins().iconst(I64, s.units as i64);
                    let chunks = b.ins().iconst(I64, chunks as i64);
                    b.ins().store(f, p[2], ctx, 0);
                    b.ins().store(f, kernel, ctx, 8);
                    b.ins().store(f, units, ctx, 16);
                    b.ins().store(f, chunks, ctx, 24);
                    b.ins()
                        .call_indirect(psig, p[3], &[p[4], task_addr, ctx, chunks]);
                    b.ins().jump(next, &[]);
                    b.switch_to_block(ser);
                    serial_call(&mut b);
                    b.ins().jump(next, &[]);
                    b.switch_to_block(next);
                    b.seal_block(next);
                }
                _ => serial_call(&mut b),
            }
        }
        let ok = b.ins().iconst(types::I32, 0);
        b.ins().return_(&[ok]);
        b.finalize(cfg);
    }
    let mut ctx = Context::for_function(func);
    module
        .define_function(run_id, &mut ctx)
        .map_err(|e| BackendError::Codegen {
            node: "entry point".into(),
            msg: e.to_string(),
        })
}

fn io_type(model: &Model) -> Result<(TensorType, TensorType), BackendError> {
    let g = &model.graph;
    if g.inputs().len() != 1 || g.outputs().len() != 1 {
        return Err(BackendError::Target(format!(
            "an object's entry point takes one input and one output; `{}` has {} inputs and {} outputs",
            g.name,
            g.inputs().len(),
            g.outputs().len()
        )));
    }
    let i = g.value_type(Value::of(g.inputs()[0])).clone();
    let o = g.value_type(g.outputs()[0]).clone();
    if i.dtype != DType::F32 || o.dtype != DType::F32 {
        return Err(BackendError::Target(format!(
            "an object's entry point takes f32 tensors; `{}` has input {i} and output {o}",
            g.name
        )));
    }
    Ok((i, o))
}

/// Compiles `model` into an object file with every fact about it.
pub fn compile_aot(model: &Model, opts: &AotOptions) -> Result<AotObject, BackendError> {
    let name = &opts.name;
    check_name(name)?;
    let target = Target::aot(&opts.target, &opts.cpu, opts.compile.verify_ir)?;
    let (in_ty, out_ty) = io_type(model)?;
    let mut copts = opts.compile.clone();
    // kernels are partitioned for the threads the parallel entry point is
    // meant to run on; the serial entry point runs the same units in turn
    copts.threads = Some(opts.compile.threads.unwrap_or(DEFAULT_THREADS).max(1));
    // Levels with AVX-512 (x86-64-v4, or native on such a machine) get the
    // assembled functions too, levels with AVX2 + FMA (x86-64-v3) the AVX2
    // tiles: their bytes are position-independent, so they go into the
    // object as local functions that the kernels reach through relocations.
    let mut front = front(model, &copts, target.tiles)?;
    drop_unread_consts(&mut front, target.speed.frontend_config());

    let builder = ObjectBuilder::new(
        target.speed.clone(),
        format!("kiln_{name}"),
        default_libcall_names(),
    )
    .map_err(obj_err)?;
    let mut module = ObjectModule::new(builder);
    let (blob, asm_ids) = define_consts_and_asm(&mut module, name, &front)?;

    let cc = target.speed.default_call_conv();
    let (kernel_ids, undefined) =
        define_model_kernels(&mut module, &front, &target, &copts, name, blob, &asm_ids)?;
    let mut fctx = FunctionBuilderContext::new();

    // The entry points: header slots, then every kernel over all its units,
    // on the calling thread or (`_run_parallel`) split through the caller's
    // parallel-for; and the task function that runs one chunk.
    let threads = copts.threads.unwrap_or(1);
    let task_id = define_task(&mut module, &mut fctx, name, cc, &target)?;
    let cfg = target.speed.frontend_config();
    let steps = entry_steps(&kernel_ids, &front, threads);
    let parallel_kernels = steps.iter().filter(|s| s.chunks.is_some()).count();
    for parallel in [false, true] {
        define_entry(
            &mut module,
            &mut fctx,
            name,
            cc,
            cfg,
            &steps,
            parallel.then_some(task_id),
        )?;
    }

    // The scratch size: the arena, rounded up to whole cache lines as the
    // JIT allocates it.
    let scratch_bytes = front.plan.arena_bytes.div_ceil(64).max(1) * 64;
    define_scratch_bytes(&mut module, &mut fctx, name, cc, &target, scratch_bytes)?;

    let object = module
        .finish()
        .emit()
        .map_err(|e| BackendError::Object(e.to_string()))?;
    let isa_flags: Vec<String> = crate::target::enabled_flags(&*target.speed)
        .into_iter()
        .map(String::from)
        .collect();
    let header = header::header(&header::HeaderInfo {
        name,
        target: &opts.target,
        cpu: &opts.cpu,
        input: &in_ty,
        output: &out_ty,
        scratch_bytes,
        undefined: &undefined,
        fma: target.fma,
        isa_flags: &isa_flags,
        tiles: front.tiles,
        threads,
    });
    Ok(AotObject {
        object,
        header,
        undefined,
        scratch_bytes,
        const_bytes: front.consts.bytes(),
        tiles: front.tiles,
        asm_functions: front.asm.code().len(),
        threads,
        parallel_kernels,
        kernels: steps.len(),
    })
}

/// The error of a module operation on the object.
fn obj_err(e: cranelift_module::ModuleError) -> BackendError {
    BackendError::Object(e.to_string())
}

/// Checks that `name` makes C identifiers of the object's symbols.
fn check_name(name: &str) -> Result<(), BackendError> {
    if name.is_empty()
        || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        || name.starts_with(|c: char| c.is_ascii_digit())
    {
        return Err(BackendError::Target(format!(
            "name `{name}` must be a C identifier (letters, digits, `_`)"
        )));
    }
    Ok(())
}

/// Defines the constant blob (`kiln_<name>_consts`) and the assembled
/// functions (`kiln_<name>_asm<i>`), all local to the object.
fn define_consts_and_asm(
    module: &mut ObjectModule,
    name: &str,
    front: &Front,
) -> Result<(DataId, Vec<FuncId>), BackendError> {
    let blob = module
        .declare_data(&format!("kiln_{name}_consts"), Linkage::Local, false, false)
        .map_err(obj_err)?;
    let mut desc = DataDescription::new();
    desc.define(front.consts.to_bytes().into_boxed_slice());
    desc.set_align(64);
    module.define_data(blob, &desc).map_err(obj_err)?;

    let mut asm_ids = Vec::new();
    for (i, code) in front.asm.code().iter().enumerate() {
        // The declared signature is nominal: callers use their own with
        // `call_indirect` on the function's address (System V, as assembled).
        let mut sig = Signature::new(CallConv::SystemV);
        sig.params.push(AbiParam::new(I64));
        let id = module
            .declare_function(&format!("kiln_{name}_asm{i}"), Linkage::Local, &sig)
            .map_err(obj_err)?;
        module
            .define_function_bytes(id, 64, code, &[])
            .map_err(obj_err)?;
        asm_ids.push(id);
    }
    Ok((blob, asm_ids))
}

/// Defines one function per kernel (`kiln_<name>_k<i>`), reaching the
/// constants and the assembled functions by relocation; returns their ids
/// and the C library functions they call (`powf`, Cranelift's libcalls).
fn define_model_kernels(
    module: &mut ObjectModule,
    front: &Front,
    target: &Target,
    copts: &CompileOptions,
    name: &str,
    blob: DataId,
    asm_ids: &[FuncId],
) -> Result<(Vec<FuncId>, Vec<String>), BackendError> {
    let cc = target.speed.default_call_conv();
    let mut powf = None;
    let libcall_name = default_libcall_names();
    let mut undefined = BTreeSet::new();
    let kernel_ids = define_kernels(
        module,
        front,
        target,
        copts,
        &|i| format!("kiln_{name}_k{i}"),
        &mut |module, f| {
            let env = Env {
                fma: target.fma,
                call_conv: cc,
                cbase: ConstBase::Symbol(module.declare_data_in_func(blob, f)),
                powf: PowF::Import,
            };
            let refs = asm_ids
                .iter()
                .map(|&id| module.declare_func_in_func(id, f))
                .collect();
            (env, AsmLink::Refs(refs))
        },
        &mut |module, mut m| {
            match m.name {
                ModuleRelocTarget::User { namespace, index }
                    if namespace == POWF_NAME.namespace && index == POWF_NAME.index =>
                {
                    let f = match powf {
                        Some(f) => f,
                        None => {
                            let mut sig = Signature::new(cc);
                            sig.params.push(AbiParam::new(types::F32));
                            sig.params.push(AbiParam::new(types::F32));
                            sig.returns.push(AbiParam::new(types::F32));
                            let f = module
                                .declare_function("powf", Linkage::Import, &sig)
                                .map_err(obj_err)?;
                            undefined.insert("powf".to_string());
                            powf = Some(f);
                            f
                        }
                    };
                    m.name = ModuleRelocTarget::user(0, f.as_u32());
                }
                ModuleRelocTarget::LibCall(lc) => {
                    undefined.insert(libcall_name(lc));
                }
                _ => {}
            }
            Ok(m)
        },
    )?;
    Ok((kernel_ids, undefined.into_iter().collect()))
}

/// The entry points' steps: every kernel with units, split into chunks
/// through the parallel-for when the JIT's pool would split it.
fn entry_steps(kernel_ids: &[FuncId], front: &Front, threads: usize) -> Vec<EntryStep> {
    kernel_ids
        .iter()
        .zip(&front.lowered)
        .filter(|(_, (_, k))| k.units() > 0)
        .map(|(&id, (_, k))| EntryStep {
            id,
            units: k.units(),
            chunks: crate::compiled::splits(k.as_ref(), threads)
                .then(|| crate::compiled::chunks_for(k.units(), threads)),
        })
        .collect()
}

/// Defines `kiln_<name>_scratch_bytes`, which returns `scratch_bytes`.
fn define_scratch_bytes(
    module: &mut ObjectModule,
    fctx: &mut FunctionBuilderContext,
    name: &str,
    cc: CallConv,
    target: &Target,
    scratch_bytes: usize,
) -> Result<(), BackendError> {
    let mut sig = Signature::new(cc);
    sig.returns.push(AbiParam::new(I64));
    let size_id = module
        .declare_function(&format!("kiln_{name}_scratch_bytes"), Linkage::Export, &sig)
        .map_err(obj_err)?;
    let mut func = Function::with_name_signature(
        UserFuncName::User(UserExternalName::new(0, size_id.as_u32())),
        sig,
    );
    {
        let mut b = FunctionBuilder::new(&mut func, fctx);
        let entry = b.create_block();
        b.switch_to_block(entry);
        b.seal_block(entry);
        let v = b.ins().iconst(I64, scratch_bytes as i64);
        b.ins().return_(&[v]);
        b.finalize(target.speed.frontend_config());
    }
    let mut ctx = Context::for_function(func);
    module
        .define_function(size_id, &mut ctx)
        .map_err(|e| BackendError::Codegen {
            node: "scratch size".into(),
            msg: e.to_string(),
        })?;
    Ok(())
}
