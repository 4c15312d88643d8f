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
//! - `size_t kiln_<name>_scratch_bytes(void)` returns the arena size.
//!
//! Everything else is `Linkage::Local`. The only undefined symbols are C
//! library functions (`powf` for a non-constant power, and Cranelift
//! libcalls on targets lacking an instruction); [`AotObject::undefined`]
//! lists them and the header repeats the list. See docs/aot.md.

use std::collections::BTreeSet;

use cranelift_codegen::Context;
use cranelift_codegen::control::ControlPlane;
use cranelift_codegen::ir::{AbiParam, Function, InstBuilder, MemFlagsData, Signature, types};
use cranelift_codegen::ir::{UserExternalName, UserFuncName};
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};
use cranelift_module::{
    DataDescription, Linkage, Module, ModuleReloc, ModuleRelocTarget, default_libcall_names,
};
use cranelift_object::{ObjectBuilder, ObjectModule};
use kiln_ir::{DType, Model, TensorType, Value};

use crate::codegen::{AsmLink, ConstBase, Env, I64, POWF_NAME, PowF};
use crate::compiled::{
    CompileOptions, build_function, drop_unread_consts, front, kernel_isa, kernel_signature,
};
use crate::error::BackendError;
use crate::header;
use crate::target::Target;

/// Version of the object's C ABI (the two entry points and the scratch
/// contract); `model.h` defines it as `KILN_<NAME>_ABI_VERSION`.
pub const ABI_VERSION: u32 = 1;

/// What to compile for.
#[derive(Clone, Debug)]
pub struct AotOptions {
    /// target triple, one of [`aot_targets`]
    pub target: String,
    /// CPU level of that target (`x86-64-v2`, `generic`, ...)
    pub cpu: String,
    /// symbol prefix: `kiln_<name>_run`; letters, digits and `_`
    pub name: String,
    /// options of the shared front end (threads are ignored: the object is
    /// single-threaded)
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
    if name.is_empty()
        || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        || name.starts_with(|c: char| c.is_ascii_digit())
    {
        return Err(BackendError::Target(format!(
            "name `{name}` must be a C identifier (letters, digits, `_`)"
        )));
    }
    let target = Target::aot(&opts.target, &opts.cpu, opts.compile.verify_ir)?;
    let (in_ty, out_ty) = io_type(model)?;
    let mut copts = opts.compile.clone();
    copts.threads = Some(1);
    // Levels with AVX-512 (x86-64-v4, or native on such a machine) get the
    // assembled functions too, levels with AVX2 + FMA (x86-64-v3) the AVX2
    // tiles: their bytes are position-independent, so they go into the
    // object as local functions that the kernels reach through relocations.
    let mut front = front(model, &copts, target.tiles)?;
    drop_unread_consts(&mut front, target.speed.frontend_config());
    let obj_err = |e: cranelift_module::ModuleError| BackendError::Object(e.to_string());

    let builder = ObjectBuilder::new(
        target.speed.clone(),
        format!("kiln_{name}"),
        default_libcall_names(),
    )
    .map_err(obj_err)?;
    let mut module = ObjectModule::new(builder);
    let blob = module
        .declare_data(&format!("kiln_{name}_consts"), Linkage::Local, false, false)
        .map_err(obj_err)?;
    let mut desc = DataDescription::new();
    desc.define(front.consts.to_bytes().into_boxed_slice());
    desc.set_align(64);
    module.define_data(blob, &desc).map_err(obj_err)?;

    let cc = target.speed.default_call_conv();
    let mut asm_ids = Vec::new();
    for (i, code) in front.asm.code().iter().enumerate() {
        // The declared signature is nominal: callers use their own with
        // `call_indirect` on the function's address (System V, as assembled).
        let mut sig = Signature::new(cranelift_codegen::isa::CallConv::SystemV);
        sig.params.push(AbiParam::new(I64));
        let id = module
            .declare_function(&format!("kiln_{name}_asm{i}"), Linkage::Local, &sig)
            .map_err(obj_err)?;
        module
            .define_function_bytes(id, 64, code, &[])
            .map_err(obj_err)?;
        asm_ids.push(id);
    }
    let mut fctx = FunctionBuilderContext::new();
    let mut kernel_ids = Vec::new();
    let mut powf = None;
    let libcall_name = default_libcall_names();
    let mut undefined = BTreeSet::new();
    for (i, (node, k)) in front.lowered.iter().enumerate() {
        let func = build_function(
            k.as_ref(),
            i as u32,
            target.speed.frontend_config(),
            |f: &mut Function| {
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
            front.const_map.as_ref(),
            &mut fctx,
        );
        let id = module
            .declare_function(
                &format!("kiln_{name}_k{i}"),
                Linkage::Local,
                &kernel_signature(cc),
            )
            .map_err(obj_err)?;
        let (isa, _) = kernel_isa(k.as_ref(), &copts, &target);
        let func = crate::scalarize::prepare(func, target.scalar || copts.scalarize, isa, &copts)
            .map_err(|msg| BackendError::Codegen {
            node: node.clone(),
            msg,
        })?;
        let mut ctx = Context::for_function(func);
        let code = ctx
            .compile(isa, &mut ControlPlane::default())
            .map_err(|e| BackendError::Codegen {
                node: node.clone(),
                msg: cranelift_codegen::print_errors::pretty_error(e.func, e.inner),
            })?;
        let align = u64::from(code.buffer.alignment).max(16);
        let bytes = code.code_buffer().to_vec();
        let mach_relocs = code.buffer.relocs().to_vec();
        let mut relocs = Vec::with_capacity(mach_relocs.len());
        for r in &mach_relocs {
            let mut m = ModuleReloc::from_mach_reloc(r, &ctx.func, id);
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
            relocs.push(m);
        }
        module
            .define_function_bytes(id, align, &bytes, &relocs)
            .map_err(|e| BackendError::Codegen {
                node: node.clone(),
                msg: e.to_string(),
            })?;
        kernel_ids.push(id);
    }

    // The entry point: header slots, then every kernel over all its units.
    let n_in: i32 = 1;
    let mut sig = Signature::new(cc);
    for _ in 0..3 {
        sig.params.push(AbiParam::new(I64));
    }
    sig.returns.push(AbiParam::new(types::I32));
    let run_id = module
        .declare_function(&format!("kiln_{name}_run"), Linkage::Export, &sig)
        .map_err(obj_err)?;
    let mut func = Function::with_name_signature(UserFuncName::user(0, run_id.as_u32()), sig);
    {
        let mut b = FunctionBuilder::new(&mut func, &mut fctx);
        let entry = b.create_block();
        b.append_block_params_for_function_params(entry);
        b.switch_to_block(entry);
        b.seal_block(entry);
        let p = b.block_params(entry).to_vec();
        let f = MemFlagsData::trusted();
        b.ins().store(f, p[0], p[2], 0);
        b.ins().store(f, p[1], p[2], 8 * n_in);
        for (&kid, (_, k)) in kernel_ids.iter().zip(&front.lowered) {
            if k.units() == 0 {
                continue;
            }
            let fref = module.declare_func_in_func(kid, b.func);
            let zero = b.ins().iconst(I64, 0);
            let units = b.ins().iconst(I64, k.units() as i64);
            b.ins().call(fref, &[p[2], zero, units]);
        }
        let ok = b.ins().iconst(types::I32, 0);
        b.ins().return_(&[ok]);
        b.finalize(target.speed.frontend_config());
    }
    let mut ctx = Context::for_function(func);
    module
        .define_function(run_id, &mut ctx)
        .map_err(|e| BackendError::Codegen {
            node: "entry point".into(),
            msg: e.to_string(),
        })?;

    // The scratch size: the arena, rounded up to whole cache lines as the
    // JIT allocates it.
    let scratch_bytes = front.plan.arena_bytes.div_ceil(64).max(1) * 64;
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
        let mut b = FunctionBuilder::new(&mut func, &mut fctx);
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

    let object = module
        .finish()
        .emit()
        .map_err(|e| BackendError::Object(e.to_string()))?;
    let undefined: Vec<String> = undefined.into_iter().collect();
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
    });
    Ok(AotObject {
        object,
        header,
        undefined,
        scratch_bytes,
        const_bytes: front.consts.bytes(),
        tiles: front.tiles,
        asm_functions: front.asm.code().len(),
    })
}
