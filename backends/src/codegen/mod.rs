//! The emitter: a thin layer over Cranelift's `FunctionBuilder` that every
//! kernel uses — buffer addresses, loads and stores with the right memory
//! flags, constant splats, and loops.
//!
//! Kernels are specialised on static shapes, so almost every bound and stride
//! is a constant here; loops over a known count are emitted bottom-tested (one
//! compare per iteration) and only the outermost, parallel loop takes its
//! bounds at run time. At `opt_level=none` Cranelift does no redundancy
//! elimination, so hot loops step pointers instead of recomputing
//! `base + i * stride` (see the callers).

pub(crate) mod math;

use std::collections::HashMap;

use cranelift_codegen::cursor::{Cursor, FuncCursor};
use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{
    AbiParam, BlockArg, ConstantData, Endianness, ExtFuncData, ExternalName, GlobalValue, Inst,
    InstBuilder, MemFlagsData, Signature, Type, UserExternalName, Value, types,
};
use cranelift_codegen::isa::CallConv;
use cranelift_frontend::{FunctionBuilder, Variable};

use crate::runtime::ConstMap;

/// Scalar lane type of every kernel.
pub(crate) const F32: Type = types::F32;
/// The vector type: 128 bits is what Cranelift lowers on every target.
pub(crate) const V4: Type = types::F32X4;
/// Pointer / index type (kiln targets are 64-bit).
pub(crate) const I64: Type = types::I64;

/// Where a tensor's bytes live, as a kernel sees them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Loc {
    /// `offset` bytes into the per-call arena (intermediates, scratch).
    Arena(usize),
    /// A caller's tensor: `run` writes its address into the arena header at
    /// this byte offset, so inputs are read and outputs written in place.
    Io(usize),
    /// Constant data owned by the compiled model (weights, packed weights):
    /// a byte offset into the model's constant blob. Where the blob is comes
    /// from the emitter's [`ConstBase`]: an absolute address in the JIT, a
    /// symbol (relocated by the linker) in an object file.
    Const(usize),
}

/// Where the constant blob is, as the code being emitted sees it.
#[derive(Clone, Copy, Debug)]
pub(crate) enum ConstBase {
    /// JIT: the blob's absolute address, an immediate (no relocation).
    Addr(usize),
    /// Object file: a symbol declared in the function (PC-relative address,
    /// resolved by the linker).
    Symbol(GlobalValue),
}

/// How a kernel calls `powf` (the only host function kernels call).
#[derive(Clone, Copy, Debug)]
pub(crate) enum PowF {
    /// JIT: the host function's absolute address, called indirectly.
    Addr(usize),
    /// Object file: an imported function named [`POWF_NAME`], which the AOT
    /// driver maps to the C library's `powf`.
    Import,
}

/// The user external name under which kernels import `powf` in an object
/// file. cranelift-module names functions in namespace 0 and data objects
/// in namespace 1, so namespace 2 cannot collide with either.
pub(crate) const POWF_NAME: UserExternalName = UserExternalName {
    namespace: 2,
    index: 0,
};

/// What the emitted code may assume about its environment.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Env {
    /// use fused multiply-add (the target lowers it natively)
    pub fma: bool,
    /// the target's C calling convention
    pub call_conv: CallConv,
    /// where constants are
    pub cbase: ConstBase,
    /// how to call `powf`
    pub powf: PowF,
}

/// How a kernel reaches the functions assembled at compile time
/// (`ukernels/`), by their number in the `Registry`.
#[derive(Clone, Debug)]
pub(crate) enum AsmLink {
    /// JIT: their absolute addresses (empty when only printing)
    Addrs(Vec<usize>),
    /// object file: local functions of the object, referenced through
    /// relocations (`func_addr`)
    Refs(Vec<cranelift_codegen::ir::FuncRef>),
}

/// A tensor operand of a kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Buf {
    /// where it lives
    pub loc: Loc,
    /// nothing writes it while the kernel runs (lets loads be reordered)
    pub readonly: bool,
}

impl Buf {
    /// A buffer the kernel reads and nobody writes meanwhile.
    pub fn input(loc: Loc) -> Buf {
        Buf {
            loc,
            readonly: true,
        }
    }
    /// A buffer the kernel writes.
    pub fn output(loc: Loc) -> Buf {
        Buf {
            loc,
            readonly: false,
        }
    }
}

/// Materialised constants by type and bits.
type ConstCache = HashMap<(Type, u32), Value>;

/// Emits the body of one kernel function `fn(arena, begin, end)`.
pub(crate) struct Emitter<'a> {
    /// the underlying builder, for instructions the helpers do not cover
    pub b: FunctionBuilder<'a>,
    arena: Value,
    /// use fused multiply-add (the target lowers it natively)
    pub fma: bool,
    /// the target's C calling convention (for calls to host functions)
    pub call_conv: CallConv,
    cbase: ConstBase,
    powf: PowF,
    /// the constant blob's address, materialised once in the entry block
    cbase_value: Option<Value>,
    /// an arena window `[from, from + len)` whose buffers live at a run-time
    /// address instead (see [`Emitter::rebased`])
    rebase: Option<(usize, usize, Value)>,
    /// the entry block's jump to the body: float constants are inserted
    /// before it (see [`Emitter::kc`])
    entry_jump: Inst,
    /// constants already materialised in the entry block, by type and bits
    consts: ConstCache,
    /// a local constant scope (see [`Emitter::local_consts`]): the jump
    /// its constants are inserted before, and those already there
    local: Option<(Inst, ConstCache)>,
    /// where the assembled functions are
    pub asm: AsmLink,
    /// every constant-blob offset asked for, as the kernel knows it (the
    /// dry run that compacts the blob collects them)
    pub const_reads: Vec<usize>,
    /// where the kernel's offsets went when the blob was compacted
    pub const_map: Option<&'a ConstMap>,
}

impl<'a> Emitter<'a> {
    /// Wraps a builder positioned in the entry block; `arena` is the first
    /// parameter.
    pub fn new(mut b: FunctionBuilder<'a>, arena: Value, env: Env) -> Emitter<'a> {
        // The entry block only jumps to the body; constants are added to it
        // on demand, so they dominate every use.
        let body = b.create_block();
        let entry_jump = b.ins().jump(body, &[]);
        b.switch_to_block(body);
        b.seal_block(body);
        Emitter {
            b,
            arena,
            fma: env.fma,
            call_conv: env.call_conv,
            cbase: env.cbase,
            powf: env.powf,
            cbase_value: None,
            rebase: None,
            entry_jump,
            consts: HashMap::new(),
            local: None,
            asm: AsmLink::Addrs(Vec::new()),
            const_reads: Vec::new(),
            const_map: None,
        }
    }

    /// Gives the builder back (to finalise the function).
    pub fn finish(self) -> FunctionBuilder<'a> {
        self.b
    }

    // ---- constants and addresses ------------------------------------------

    /// An `i64` constant.
    /// The address of assembled function number `id`, to `call_indirect`
    /// (0 when only printing: such code is never run).
    pub fn asm_fn(&mut self, id: usize) -> Value {
        match &self.asm {
            AsmLink::Addrs(a) => {
                let addr = a.get(id).copied().unwrap_or(0);
                self.ic(addr as i64)
            }
            AsmLink::Refs(r) => {
                let f = r[id];
                self.b.ins().func_addr(types::I64, f)
            }
        }
    }

    pub fn ic(&mut self, x: i64) -> Value {
        self.b.ins().iconst(I64, x)
    }

    /// An `f32` constant.
    pub fn fc(&mut self, x: f32) -> Value {
        self.kc(F32, x)
    }

    /// A constant of lane type `ty` (`F32` or `V4`) with every lane `x`,
    /// materialised once per function in the entry block. Kernels ask for
    /// constants inside loops (the polynomials of `exp`, clamp bounds); at
    /// `opt_level=none` nothing would hoist them, and at `speed` Cranelift
    /// rematerialises constants at each use (a constant-pool load per use
    /// inside the loop), which made `exp` load-port bound.
    pub fn kc(&mut self, ty: Type, x: f32) -> Value {
        let key = (ty, x.to_bits());
        let (at, cache) = match &mut self.local {
            Some((jump, map)) => (*jump, map),
            None => (self.entry_jump, &mut self.consts),
        };
        if let Some(&v) = cache.get(&key) {
            return v;
        }
        let mut cur = FuncCursor::new(self.b.func).at_inst(at);
        let s = cur.ins().f32const(x);
        let v = if ty == V4 { cur.ins().splat(V4, s) } else { s };
        cache.insert(key, v);
        v
    }

    /// Runs `body` with [`Emitter::kc`] constants materialised at the
    /// current position (in a block that dominates all of `body`) instead
    /// of the entry block. For code after a register-hungry loop — an
    /// activation polynomial after a GEMM tile's K loop — whose constants,
    /// hoisted to the entry block, would be live across that loop and push
    /// its accumulators out of registers (measured: silu fused into the
    /// 4×8 tile ran 1.8× slower than a separate kernel with hoisted
    /// constants). Costs the constants once per execution of the scope.
    pub fn local_consts<R>(&mut self, body: impl FnOnce(&mut Self) -> R) -> R {
        let next = self.b.create_block();
        let jump = self.b.ins().jump(next, &[]);
        self.b.switch_to_block(next);
        self.b.seal_block(next);
        let outer = self.local.replace((jump, HashMap::new()));
        let r = body(self);
        self.local = outer;
        r
    }

    /// An `i32` constant in every lane of `ty` (`I32` or `I32X4`), hoisted
    /// into the entry block like [`Emitter::kc`].
    pub fn kc_i32(&mut self, ty: Type, x: i32) -> Value {
        let key = (ty, x as u32);
        let (at, cache) = match &mut self.local {
            Some((jump, map)) => (*jump, map),
            None => (self.entry_jump, &mut self.consts),
        };
        if let Some(&v) = cache.get(&key) {
            return v;
        }
        let mut cur = FuncCursor::new(self.b.func).at_inst(at);
        let s = cur.ins().iconst(types::I32, i64::from(x));
        let v = if ty.is_vector() {
            cur.ins().splat(ty, s)
        } else {
            s
        };
        cache.insert(key, v);
        v
    }

    /// Broadcasts a scalar to `ty` (identity for `F32`).
    pub fn widen(&mut self, ty: Type, s: Value) -> Value {
        if ty == V4 {
            self.b.ins().splat(V4, s)
        } else {
            s
        }
    }

    /// The base address of `buf`. Call it before entering loops: the value
    /// must dominate its uses.
    pub fn base(&mut self, buf: Buf) -> Value {
        match buf.loc {
            Loc::Arena(off) => match self.rebase {
                Some((from, len, to)) if (from..from + len).contains(&off) => {
                    self.off(to, (off - from) as i64)
                }
                _ => self.b.ins().iadd_imm_s(self.arena, off as i64),
            },
            Loc::Io(slot) => {
                let f = MemFlagsData::trusted().with_readonly().with_can_move();
                self.b.ins().load(I64, f, self.arena, slot as i32)
            }
            Loc::Const(off) => self.const_addr(off),
        }
    }

    /// Runs `body` with the arena bytes `[from, from + len)` moved to the
    /// run-time address `to`: [`Emitter::base`] of a buffer in that window
    /// points into `to` instead. A kernel that runs another kernel's code
    /// on per-unit scratch (`conv_chain::ChainConv`'s slots) plans that code on
    /// the first slot and emits it rebased to the unit's own.
    pub fn rebased<R>(
        &mut self,
        from: usize,
        len: usize,
        to: Value,
        body: impl FnOnce(&mut Self) -> R,
    ) -> R {
        let saved = self.rebase.replace((from, len, to));
        let r = body(self);
        self.rebase = saved;
        r
    }

    /// The address of byte `off` of the constant blob. The blob's base is
    /// materialised once, in the entry block.
    pub fn const_addr(&mut self, off: usize) -> Value {
        self.const_reads.push(off);
        let off = self.const_map.map_or(off, |m| m.map(off));
        let base = match self.cbase_value {
            Some(v) => v,
            None => {
                let mut cur = FuncCursor::new(self.b.func).at_inst(self.entry_jump);
                let v = match self.cbase {
                    ConstBase::Addr(a) => cur.ins().iconst(I64, a as i64),
                    ConstBase::Symbol(gv) => cur.ins().symbol_value(I64, gv),
                };
                self.cbase_value = Some(v);
                v
            }
        };
        self.off(base, off as i64)
    }

    /// `powf(x, y)` for scalars.
    pub fn powf(&mut self, x: Value, y: Value) -> Value {
        let mut sig = Signature::new(self.call_conv);
        sig.params.push(AbiParam::new(F32));
        sig.params.push(AbiParam::new(F32));
        sig.returns.push(AbiParam::new(F32));
        match self.powf {
            PowF::Addr(a) => {
                let sig = self.b.import_signature(sig);
                let f = self.ic(a as i64);
                let call = self.b.ins().call_indirect(sig, f, &[x, y]);
                self.b.inst_results(call)[0]
            }
            PowF::Import => {
                let signature = self.b.import_signature(sig);
                let name = self.b.func.declare_imported_user_function(POWF_NAME);
                let f = self.b.import_function(ExtFuncData {
                    name: ExternalName::user(name),
                    signature,
                    colocated: false,
                    patchable: false,
                });
                let call = self.b.ins().call(f, &[x, y]);
                self.b.inst_results(call)[0]
            }
        }
    }

    /// `p + bytes`.
    pub fn off(&mut self, p: Value, bytes: i64) -> Value {
        if bytes == 0 {
            p
        } else {
            self.b.ins().iadd_imm_s(p, bytes)
        }
    }

    /// `p + idx * scale` (bytes).
    pub fn index(&mut self, p: Value, idx: Value, scale: i64) -> Value {
        if scale == 0 {
            return p;
        }
        let s = if scale == 1 {
            idx
        } else {
            self.b.ins().imul_imm_s(idx, scale)
        };
        self.b.ins().iadd(p, s)
    }

    // ---- memory -------------------------------------------------------------

    /// Flags for reading `buf`: never trapping (the plan keeps every access in
    /// bounds); read-only buffers may be reordered across stores, constants
    /// moved freely (hoisted out of loops at `opt_level=speed`).
    pub fn rflags(buf: Buf) -> MemFlagsData {
        let f = MemFlagsData::new().with_notrap();
        match (buf.loc, buf.readonly) {
            (Loc::Const(_), _) => f.with_readonly().with_can_move(),
            (_, true) => f.with_readonly(),
            _ => f,
        }
    }

    /// Flags for writing.
    pub fn wflags() -> MemFlagsData {
        MemFlagsData::new().with_notrap()
    }

    /// Loads a `ty` at `p + off` bytes.
    pub fn load(&mut self, ty: Type, f: MemFlagsData, p: Value, off: i64) -> Value {
        match i32::try_from(off) {
            Ok(o) => self.b.ins().load(ty, f, p, o),
            Err(_) => {
                let q = self.b.ins().iadd_imm_s(p, off);
                self.b.ins().load(ty, f, q, 0)
            }
        }
    }

    /// The f32x4 of the even elements `p[0], p[2], p[4], p[6]` (at `p + off`
    /// bytes): two vector loads and one byte shuffle, where four scalar
    /// loads and three lane inserts would gather them. Reads `p[7]` too, so
    /// the caller must know it is in bounds.
    pub fn load_even(&mut self, f: MemFlagsData, p: Value, off: i64) -> Value {
        let lo = self.load(V4, f, p, off);
        let hi = self.load(V4, f, p, off + 16);
        let le = MemFlagsData::new().with_endianness(Endianness::Little);
        let lo = self.b.ins().bitcast(types::I8X16, le, lo);
        let hi = self.b.ins().bitcast(types::I8X16, le, hi);
        // lanes 0, 2 of lo and 0, 2 of hi (bytes 16.. select from hi)
        let mask: Vec<u8> = [0u8, 2, 4, 6]
            .iter()
            .flat_map(|&l| (0..4).map(move |b| l * 4 + b))
            .collect();
        let imm = self.b.func.dfg.immediates.push(ConstantData::from(mask));
        let s = self.b.ins().shuffle(lo, hi, imm);
        self.b.ins().bitcast(V4, le, s)
    }

    /// The f32x4 `[v[l0], v[l1], v[l2], v[l3]]` (one byte shuffle).
    pub fn pick_lanes(&mut self, v: Value, lanes: [u8; 4]) -> Value {
        let le = MemFlagsData::new().with_endianness(Endianness::Little);
        let b = self.b.ins().bitcast(types::I8X16, le, v);
        let mask: Vec<u8> = lanes
            .iter()
            .flat_map(|&l| (0..4).map(move |k| l * 4 + k))
            .collect();
        let imm = self.b.func.dfg.immediates.push(ConstantData::from(mask));
        let s = self.b.ins().shuffle(b, b, imm);
        self.b.ins().bitcast(V4, le, s)
    }

    /// The f32x4 of lanes `lanes` of `a ++ b` (0–3 from `a`, 4–7 from `b`).
    pub fn pick_lanes2(&mut self, a: Value, b: Value, lanes: [u8; 4]) -> Value {
        let le = MemFlagsData::new().with_endianness(Endianness::Little);
        let ab = self.b.ins().bitcast(types::I8X16, le, a);
        let bb = self.b.ins().bitcast(types::I8X16, le, b);
        let mask: Vec<u8> = lanes
            .iter()
            .flat_map(|&l| (0..4).map(move |k| l * 4 + k))
            .collect();
        let imm = self.b.func.dfg.immediates.push(ConstantData::from(mask));
        let s = self.b.ins().shuffle(ab, bb, imm);
        self.b.ins().bitcast(V4, le, s)
    }

    /// Stores `v` at `p + off` bytes.
    pub fn store(&mut self, f: MemFlagsData, v: Value, p: Value, off: i64) {
        match i32::try_from(off) {
            Ok(o) => {
                self.b.ins().store(f, v, p, o);
            }
            Err(_) => {
                let q = self.b.ins().iadd_imm_s(p, off);
                self.b.ins().store(f, v, q, 0);
            }
        }
    }

    // ---- arithmetic shared by scalar and vector paths -----------------------

    /// `a * b + c`, fused when the target has native FMA. Scalar and vector
    /// code use the same choice, so a value does not depend on whether it was
    /// computed in a vector body or a scalar tail.
    pub fn mul_add(&mut self, a: Value, b: Value, c: Value) -> Value {
        if self.fma {
            self.b.ins().fma(a, b, c)
        } else {
            let m = self.b.ins().fmul(a, b);
            self.b.ins().fadd(m, c)
        }
    }

    /// Horizontal sum of a `V4` in a fixed order: `(l0 + l1) + (l2 + l3)`.
    pub fn hsum(&mut self, v: Value) -> Value {
        let l: Vec<Value> = (0..4u8).map(|i| self.b.ins().extractlane(v, i)).collect();
        let a = self.b.ins().fadd(l[0], l[1]);
        let c = self.b.ins().fadd(l[2], l[3]);
        self.b.ins().fadd(a, c)
    }

    /// Horizontal maximum of a `V4` (NaN-propagating, like `fmax`).
    pub fn hmax(&mut self, v: Value) -> Value {
        let l: Vec<Value> = (0..4u8).map(|i| self.b.ins().extractlane(v, i)).collect();
        let a = self.b.ins().fmax(l[0], l[1]);
        let c = self.b.ins().fmax(l[2], l[3]);
        self.b.ins().fmax(a, c)
    }

    /// A fresh variable of type `ty` holding `init`.
    pub fn var(&mut self, ty: Type, init: Value) -> Variable {
        let v = self.b.declare_var(ty);
        self.b.def_var(v, init);
        v
    }

    // ---- control flow -------------------------------------------------------

    /// `for i in (lo..hi).step_by(step)` with bounds known only at run time.
    pub fn for_range(
        &mut self,
        lo: Value,
        hi: Value,
        step: i64,
        mut body: impl FnMut(&mut Self, Value),
    ) {
        let header = self.b.create_block();
        self.b.append_block_param(header, I64);
        let inner = self.b.create_block();
        let exit = self.b.create_block();
        self.b.ins().jump(header, &[BlockArg::Value(lo)]);
        self.b.switch_to_block(header);
        let i = self.b.block_params(header)[0];
        let c = self.b.ins().icmp(IntCC::SignedLessThan, i, hi);
        self.b.ins().brif(c, inner, &[], exit, &[]);
        self.b.switch_to_block(inner);
        self.b.seal_block(inner);
        body(self, i);
        let next = self.b.ins().iadd_imm_s(i, step);
        self.b.ins().jump(header, &[BlockArg::Value(next)]);
        self.b.seal_block(header);
        self.b.switch_to_block(exit);
        self.b.seal_block(exit);
    }

    /// `for i in (lo..hi).step_by(step)` with constant bounds: nothing for an
    /// empty range, straight-line code for one trip, else a loop.
    ///
    /// The loop is top-tested on purpose. In a bottom-tested loop the values
    /// carried out of the body (say, GEMM accumulators) are used twice — by
    /// the back edge and by the code after the loop — and Cranelift then
    /// treats every instruction feeding them as used more than once, which
    /// stops it from folding loads into their users (`vbroadcastss` from
    /// memory, FMA memory operands). Leaving through the header, the code
    /// after the loop reads the header's block parameters instead.
    pub fn for_static(&mut self, lo: i64, hi: i64, step: i64, body: impl FnMut(&mut Self, Value)) {
        if lo >= hi {
            return;
        }
        if lo + step >= hi {
            let mut body = body;
            let i = self.ic(lo);
            body(self, i);
            return;
        }
        let lo_v = self.ic(lo);
        let hi_v = self.ic(hi);
        self.for_range(lo_v, hi_v, step, body);
    }

    /// Runs `body` only when `cond` (an `i8` truth value) is non-zero.
    pub fn if_then(&mut self, cond: Value, body: impl FnOnce(&mut Self)) {
        let then = self.b.create_block();
        let join = self.b.create_block();
        self.b.ins().brif(cond, then, &[], join, &[]);
        self.b.switch_to_block(then);
        self.b.seal_block(then);
        body(self);
        self.b.ins().jump(join, &[]);
        self.b.switch_to_block(join);
        self.b.seal_block(join);
    }

    /// `max(a, b)` of two `i64`s.
    pub fn imax(&mut self, a: Value, b: Value) -> Value {
        self.b.ins().smax(a, b)
    }

    /// `min(a, b)` of two `i64`s.
    pub fn imin(&mut self, a: Value, b: Value) -> Value {
        self.b.ins().smin(a, b)
    }

    /// Calls `body(i)` for every outer index `i` in `[max(begin, lo), min(end,
    /// hi))`: the slice of a kernel's parallel range that falls in one region.
    pub fn sub_range(
        &mut self,
        begin: Value,
        end: Value,
        lo: usize,
        hi: usize,
        body: impl FnMut(&mut Self, Value),
    ) {
        let lo_v = self.ic(lo as i64);
        let hi_v = self.ic(hi as i64);
        let a = self.imax(begin, lo_v);
        let z = self.imin(end, hi_v);
        self.for_range(a, z, 1, body);
    }
}
