//! Scalarisation: rewrites every 128-bit vector value of a finished Cranelift
//! function into four 32-bit scalars, for ISAs that cannot lower vector
//! types (riscv64 without the V extension).
//!
//! The kernels are written once, over `f32x4`/`i32x4` (and `i8x16` for the
//! byte shuffle that gathers stride-2 columns). Rather than a second
//! lowering of every kernel, [`scalarize`] runs on the finished function
//! before `Context::compile`:
//!
//! - a vector value with 32-bit lanes becomes its four lanes; an `i8x16`
//!   or `i16x8` value becomes four `i32` words in little-endian byte order
//!   (all that the kernels do with byte vectors is bitcast them and shuffle
//!   whole 4-byte groups, which words express exactly);
//! - loads and stores become four scalar accesses at +0/4/8/12 with the
//!   same memory flags, constants (`vconst`, `splat`) four scalar values,
//!   lane-wise arithmetic four scalar instructions, `extractlane` and
//!   `insertlane` a pick or a replacement, `shuffle` a pick of words by its
//!   constant mask, `vany_true`/`vall_true` a reduction;
//! - a vector block parameter becomes four parameters, and every branch
//!   passes four arguments for it.
//!
//! Comparisons produce all-ones/zero `i32` lane masks as the vector forms
//! do (`bmask`); a `bitselect` whose mask is known to come from a
//! comparison becomes a `select` on the comparison, so the common
//! `fcmp` + `bitselect` pair costs one compare and one select per lane.
//!
//! Anything else involving a vector (a call with a vector argument, a
//! widening or pairwise op, a shuffle that splits a 4-byte group, 64-bit
//! lanes) is an error naming the opcode: the caller reports it as a codegen
//! error of the kernel's node, never a miscompile.
//!
//! The function is rewritten in place: blocks keep their numbers and
//! layout order, instructions without vectors keep their numbers (their
//! operands are renamed), and the replaced vector instructions are left
//! out of the layout, as Cranelift's own passes leave removed instructions.

use std::collections::{HashMap, HashSet};

use cranelift_codegen::isa::TargetIsa;
use cranelift_codegen::verify_function;

use cranelift_codegen::cursor::{Cursor, FuncCursor};
use cranelift_codegen::dominator_tree::DominatorTree;
use cranelift_codegen::flowgraph::ControlFlowGraph;
use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::immediates::Offset32;
use cranelift_codegen::ir::{
    Block, BlockArg, BlockCall, Function, Inst, InstBuilder, InstructionData, MemFlagsData, Opcode,
    Type, Value, types,
};

use crate::compiled::CompileOptions;

/// How an original value is represented after the rewrite.
#[derive(Clone, Copy, Debug)]
enum Repr {
    /// a scalar (renamed when it was a block parameter)
    One(Value),
    /// the four 32-bit pieces of a 128-bit vector
    Four([Value; 4]),
}

/// The scalar type of each of the four pieces of vector type `ty`, or an
/// error for vector types that do not split into four 32-bit pieces.
fn piece_type(ty: Type) -> Result<Type, String> {
    if !ty.is_vector() {
        return Err(format!("{ty} is not a vector"));
    }
    if ty.bits() != 128 || ty.is_dynamic_vector() {
        return Err(format!("vector type {ty} is not 128 bits"));
    }
    match ty.lane_bits() {
        32 => Ok(ty.lane_type()),
        // byte and half-word vectors: four little-endian words
        8 | 16 => Ok(types::I32),
        _ => Err(format!("vector type {ty} has 64-bit lanes")),
    }
}

/// Whether `ty`'s pieces are its own lanes (so lane-wise ops apply).
fn lanes_are_pieces(ty: Type) -> bool {
    ty.is_vector() && ty.bits() == 128 && ty.lane_bits() == 32
}

/// Opcodes that act on each lane independently with the same opcode on
/// scalars (the scalar form of each is defined for 32-bit lanes).
fn lane_wise(op: Opcode) -> bool {
    use Opcode::*;
    matches!(
        op,
        Fneg | Fabs
            | Sqrt
            | Ceil
            | Floor
            | Trunc
            | Nearest
            | Bnot
            | Ineg
            | Iabs
            | Popcnt
            | FcvtFromSint
            | FcvtFromUint
            | FcvtToSintSat
            | FcvtToUintSat
            | Fadd
            | Fsub
            | Fmul
            | Fdiv
            | Fmin
            | Fmax
            | Fcopysign
            | Iadd
            | Isub
            | Imul
            | Smin
            | Smax
            | Umin
            | Umax
            | Band
            | Bor
            | Bxor
            | Ishl
            | Ushr
            | Sshr
            | Rotl
            | Rotr
            | Fma
    )
}

/// Bitwise opcodes: on float lanes they go through `i32` (scalar float
/// bitwise ops are not lowered by every backend).
fn bitwise(op: Opcode) -> bool {
    use Opcode::*;
    matches!(op, Bnot | Band | Bor | Bxor)
}

/// Whether the function has a vector value anywhere in its layout.
fn has_vectors(func: &Function) -> bool {
    func.layout.blocks().any(|b| {
        func.dfg
            .block_params(b)
            .iter()
            .any(|&p| func.dfg.value_type(p).is_vector())
            || func.layout.block_insts(b).any(|i| {
                func.dfg
                    .inst_results(i)
                    .iter()
                    .any(|&r| func.dfg.value_type(r).is_vector())
                    || func
                        .dfg
                        .inst_values(i)
                        .any(|v| func.dfg.value_type(v).is_vector())
            })
    })
}

/// Rewrites every 128-bit vector value of `func` into four scalars (see the
/// module docs). On error `func` is left half-rewritten and must not be
/// compiled; the error names the opcode that could not be scalarised.
pub(crate) fn scalarize(func: &mut Function) -> Result<(), String> {
    if !has_vectors(func) {
        return Ok(());
    }
    let cfg = ControlFlowGraph::with_function(func);
    let domtree = DominatorTree::with_function(func, &cfg);
    // Reverse post-order visits every definition before its uses (block
    // parameters are made first), so each operand is already rewritten.
    let rpo: Vec<Block> = domtree.cfg_rpo().copied().collect();
    let reachable: HashSet<Block> = rpo.iter().copied().collect();
    // Unreachable blocks are dropped: nothing reachable branches to them.
    let order: Vec<Block> = func
        .layout
        .blocks()
        .filter(|b| reachable.contains(b))
        .collect();
    let insts: HashMap<Block, Vec<Inst>> = order
        .iter()
        .map(|&b| (b, func.layout.block_insts(b).collect()))
        .collect();
    func.layout.clear();
    for &b in &order {
        func.layout.append_block(b);
    }
    let mut s = Scalarizer {
        map: HashMap::new(),
        masks: HashMap::new(),
    };
    for &b in &order {
        let old = func.dfg.detach_block_params(b);
        let old: Vec<Value> = old.as_slice(&func.dfg.value_lists).to_vec();
        for p in old {
            let ty = func.dfg.value_type(p);
            let r = if ty.is_vector() {
                let pt = piece_type(ty).map_err(|e| format!("block parameter: {e}"))?;
                Repr::Four(std::array::from_fn(|_| func.dfg.append_block_param(b, pt)))
            } else {
                Repr::One(func.dfg.append_block_param(b, ty))
            };
            s.map.insert(p, r);
        }
    }
    for &b in &rpo {
        for &inst in &insts[&b] {
            s.inst(func, b, inst)?;
        }
    }
    // Nothing vector-typed may remain: the backend could not lower it.
    for b in func.layout.blocks() {
        for i in func.layout.block_insts(b) {
            let vec = func
                .dfg
                .inst_results(i)
                .iter()
                .chain(func.dfg.inst_args(i))
                .any(|&v| func.dfg.value_type(v).is_vector());
            if vec {
                return Err(format!(
                    "internal: `{}` still has a vector operand after scalarisation",
                    func.dfg.display_inst(i)
                ));
            }
        }
    }
    Ok(())
}

/// A vector instruction being scalarised.
struct VecInst {
    opcode: Opcode,
    data: InstructionData,
    args: Vec<Value>,
    results: Vec<Value>,
}

impl VecInst {
    /// The error of an instruction without a scalar form, saying why.
    fn fail(&self, why: &str) -> String {
        format!("cannot scalarise `{}`: {why}", self.opcode)
    }

    /// The result's vector type and the type of its pieces.
    fn out(&self, func: &Function) -> Result<(Type, Type), String> {
        let ty = func.dfg.value_type(self.results[0]);
        piece_type(ty).map(|p| (ty, p)).map_err(|e| self.fail(&e))
    }
}

struct Scalarizer {
    map: HashMap<Value, Repr>,
    /// scalar lanes known to be all-ones/zero masks, with the `i8`
    /// condition they were made from
    masks: HashMap<Value, Value>,
}

impl Scalarizer {
    fn get(&self, func: &Function, v: Value) -> Repr {
        let v = func.dfg.resolve_aliases(v);
        self.map.get(&v).copied().unwrap_or(Repr::One(v))
    }

    fn one(&self, func: &Function, v: Value) -> Result<Value, String> {
        match self.get(func, v) {
            Repr::One(x) => Ok(x),
            Repr::Four(_) => Err(format!("internal: vector {v} used as a scalar")),
        }
    }

    fn four(&self, func: &Function, v: Value) -> Result<[Value; 4], String> {
        match self.get(func, v) {
            Repr::Four(x) => Ok(x),
            Repr::One(_) => Err(format!("internal: scalar {v} used as a vector")),
        }
    }

    /// The four pieces of operand `v`, or `v` itself four times when it is
    /// a scalar (a shift amount).
    fn lanes_or_splat(&self, func: &Function, v: Value) -> [Value; 4] {
        match self.get(func, v) {
            Repr::Four(x) => x,
            Repr::One(x) => [x; 4],
        }
    }

    /// Rewrites `inst` (of block `b`) and appends the result to `b`.
    fn inst(&mut self, func: &mut Function, b: Block, inst: Inst) -> Result<(), String> {
        let opcode = func.dfg.insts[inst].opcode();
        let results = func.dfg.inst_results(inst).to_vec();
        let vector = results
            .iter()
            .chain(func.dfg.inst_args(inst))
            .any(|&v| func.dfg.value_type(v).is_vector());
        if !vector {
            return self.keep(func, b, inst);
        }
        let i = VecInst {
            opcode,
            data: func.dfg.insts[inst],
            args: func.dfg.inst_args(inst).to_vec(),
            results,
        };
        let mut cur = FuncCursor::new(func).at_bottom(b);
        let new = match opcode {
            Opcode::Load | Opcode::Store => self.memory(&mut cur, &i)?,
            Opcode::Splat
            | Opcode::ScalarToVector
            | Opcode::Vconst
            | Opcode::Extractlane
            | Opcode::Insertlane => Some(self.lanes(&mut cur, &i)?),
            Opcode::Bitcast | Opcode::Shuffle => Some(self.rearrange(&mut cur, &i)?),
            Opcode::VanyTrue | Opcode::VallTrue | Opcode::Fcmp | Opcode::Icmp => {
                Some(self.compare(&mut cur, &i)?)
            }
            Opcode::Bitselect | Opcode::Select => Some(self.choose(&mut cur, &i)?),
            op if lane_wise(op) => Some(self.lane_wise_op(&mut cur, &i)?),
            Opcode::Jump | Opcode::Brif => return self.keep(cur.func, b, inst),
            _ => {
                return Err(i.fail(
                    "no scalar form (calls, returns, widening, pairwise and \
                     lane-crossing ops on vectors are not supported)",
                ));
            }
        };
        if let (Some(&r), Some(new)) = (i.results.first(), new) {
            self.map.insert(r, new);
        }
        Ok(())
    }

    /// Loads and stores: four scalar accesses at +0/4/8/12 with the same flags
    /// (a store has no result: `None`).
    fn memory(&mut self, cur: &mut FuncCursor<'_>, i: &VecInst) -> Result<Option<Repr>, String> {
        let VecInst {
            opcode,
            data,
            ref args,
            ..
        } = *i;
        let fail = |why: &str| i.fail(why);
        let out = |func: &Function| i.out(func);
        Ok(Some(match (opcode, data) {
            (Opcode::Load, InstructionData::Load { flags, offset, .. }) => {
                let (_, pt) = out(cur.func)?;
                let p = self.one(cur.func, args[0])?;
                let base = i32::from(offset);
                Repr::Four(std::array::from_fn(|k| {
                    let off = Offset32::new(base + 4 * k as i32);
                    let (i, dfg) = cur.ins().Load(Opcode::Load, pt, flags, off, p);
                    dfg.first_result(i)
                }))
            }
            (Opcode::Store, InstructionData::Store { flags, offset, .. }) => {
                let x = self.four(cur.func, args[0])?;
                let p = self.one(cur.func, args[1])?;
                let pt = cur.func.dfg.value_type(x[0]);
                let base = i32::from(offset);
                for (k, &xk) in x.iter().enumerate() {
                    let off = Offset32::new(base + 4 * k as i32);
                    cur.ins().Store(Opcode::Store, pt, flags, off, xk, p);
                }
                return Ok(None);
            }
            _ => return Err(fail("unexpected instruction format")),
        }))
    }

    /// Vectors built from scalars or constants, and single lanes read or
    /// replaced.
    fn lanes(&mut self, cur: &mut FuncCursor<'_>, i: &VecInst) -> Result<Repr, String> {
        let VecInst {
            opcode,
            data,
            ref args,
            ..
        } = *i;
        let fail = |why: &str| i.fail(why);
        let out = |func: &Function| i.out(func);
        Ok(match (opcode, data) {
            (Opcode::Splat, _) => {
                let (ty, _) = out(cur.func)?;
                if !lanes_are_pieces(ty) {
                    return Err(fail(&format!("splat to {ty}")));
                }
                Repr::Four([self.one(cur.func, args[0])?; 4])
            }
            (Opcode::ScalarToVector, _) => {
                let (ty, pt) = out(cur.func)?;
                if !lanes_are_pieces(ty) {
                    return Err(fail(&format!("to {ty}")));
                }
                let x = self.one(cur.func, args[0])?;
                let z = zero(cur, pt);
                Repr::Four([x, z, z, z])
            }
            (
                Opcode::Vconst,
                InstructionData::UnaryConst {
                    constant_handle, ..
                },
            ) => {
                let (_, pt) = out(cur.func)?;
                let bytes = cur
                    .func
                    .dfg
                    .constants
                    .get(constant_handle)
                    .as_slice()
                    .to_vec();
                if bytes.len() != 16 {
                    return Err(fail("constant is not 16 bytes"));
                }
                Repr::Four(std::array::from_fn(|k| {
                    let w = u32::from_le_bytes(bytes[4 * k..4 * k + 4].try_into().unwrap());
                    if pt == types::F32 {
                        cur.ins().f32const(f32::from_bits(w))
                    } else {
                        cur.ins().iconst(types::I32, i64::from(w as i32))
                    }
                }))
            }
            (Opcode::Extractlane, InstructionData::BinaryImm8 { imm, .. }) => {
                let ty = cur.func.dfg.value_type(args[0]);
                if !lanes_are_pieces(ty) {
                    return Err(fail(&format!("lanes of {ty}")));
                }
                let x = self.four(cur.func, args[0])?;
                let r = x[usize::from(imm) & 3];
                // The original result keeps its number: later scalar
                // instructions use it.
                Repr::One(r)
            }
            (Opcode::Insertlane, InstructionData::TernaryImm8 { imm, .. }) => {
                let (ty, _) = out(cur.func)?;
                if !lanes_are_pieces(ty) {
                    return Err(fail(&format!("lanes of {ty}")));
                }
                let mut x = self.four(cur.func, args[0])?;
                x[usize::from(imm) & 3] = self.one(cur.func, args[1])?;
                Repr::Four(x)
            }
            _ => return Err(fail("unexpected instruction format")),
        })
    }

    /// Reinterpretations and shuffles: the same words, retyped or picked by
    /// the constant mask.
    fn rearrange(&mut self, cur: &mut FuncCursor<'_>, i: &VecInst) -> Result<Repr, String> {
        let VecInst {
            opcode,
            data,
            ref args,
            ..
        } = *i;
        let fail = |why: &str| i.fail(why);
        let out = |func: &Function| i.out(func);
        Ok(match (opcode, data) {
            (Opcode::Bitcast, _) => {
                let (ty, pt) = out(cur.func)?;
                let from = cur.func.dfg.value_type(args[0]);
                if !from.is_vector() {
                    return Err(fail(&format!("{from} to {ty}")));
                }
                let x = self.four(cur.func, args[0])?;
                let mut r = x;
                for k in 0..4 {
                    let xt = cur.func.dfg.value_type(x[k]);
                    if xt != pt {
                        r[k] = cur.ins().bitcast(pt, MemFlagsData::new(), x[k]);
                        if let Some(&c) = self.masks.get(&x[k]) {
                            self.masks.insert(r[k], c);
                        }
                    }
                }
                Repr::Four(r)
            }
            (Opcode::Shuffle, InstructionData::Shuffle { imm, .. }) => {
                let mask = cur.func.dfg.immediates[imm].as_slice().to_vec();
                let a = self.four(cur.func, args[0])?;
                let c = self.four(cur.func, args[1])?;
                let words: [Value; 8] = [a[0], a[1], a[2], a[3], c[0], c[1], c[2], c[3]];
                let mut r = a;
                for k in 0..4 {
                    let g = &mask[4 * k..4 * k + 4];
                    let w = usize::from(g[0]) / 4;
                    let whole = g[0].is_multiple_of(4)
                        && w < 8
                        && g.iter()
                            .enumerate()
                            .all(|(j, &m)| usize::from(m) == 4 * w + j);
                    if !whole {
                        return Err(fail(&format!("mask {mask:?} splits 4-byte groups")));
                    }
                    r[k] = words[w];
                }
                Repr::Four(r)
            }
            _ => return Err(fail("unexpected instruction format")),
        })
    }

    /// Comparisons (lane masks, remembered for `bitselect`) and their
    /// reductions to one truth value.
    fn compare(&mut self, cur: &mut FuncCursor<'_>, i: &VecInst) -> Result<Repr, String> {
        let VecInst {
            opcode,
            data,
            ref args,
            ..
        } = *i;
        let fail = |why: &str| i.fail(why);
        Ok(match (opcode, data) {
            (Opcode::VanyTrue | Opcode::VallTrue, _) => {
                let ty = cur.func.dfg.value_type(args[0]);
                if !lanes_are_pieces(ty) || ty.lane_type().is_float() {
                    return Err(fail(&format!("of {ty}")));
                }
                let x = self.four(cur.func, args[0])?;
                let cc = if opcode == Opcode::VanyTrue {
                    IntCC::NotEqual
                } else {
                    IntCC::Equal
                };
                let t: Vec<Value> = x
                    .iter()
                    .map(|&v| {
                        let z = cur.ins().iconst(types::I32, 0);
                        cur.ins().icmp(cc, v, z)
                    })
                    .collect();
                let l = cur.ins().bor(t[0], t[1]);
                let h = cur.ins().bor(t[2], t[3]);
                let any = cur.ins().bor(l, h);
                let r = if opcode == Opcode::VanyTrue {
                    any
                } else {
                    // all true = no lane equal to zero
                    let one = cur.ins().iconst(types::I8, 1);
                    cur.ins().bxor(any, one)
                };
                Repr::One(r)
            }
            (Opcode::Fcmp | Opcode::Icmp, _) => {
                let ty = cur.func.dfg.value_type(args[0]);
                if !lanes_are_pieces(ty) {
                    return Err(fail(&format!("of {ty}")));
                }
                let (a, c) = (self.four(cur.func, args[0])?, self.four(cur.func, args[1])?);
                let mut r = a;
                for k in 0..4 {
                    let cond = match data {
                        InstructionData::FloatCompare { cond, .. } => {
                            cur.ins().fcmp(cond, a[k], c[k])
                        }
                        InstructionData::IntCompare { cond, .. } => {
                            cur.ins().icmp(cond, a[k], c[k])
                        }
                        _ => return Err(fail("unexpected format")),
                    };
                    r[k] = cur.ins().bmask(types::I32, cond);
                    self.masks.insert(r[k], cond);
                }
                Repr::Four(r)
            }
            _ => return Err(fail("unexpected instruction format")),
        })
    }

    /// Selections: `bitselect` lane by lane (a `select` on a known comparison,
    /// else the bit formula), `select` on a scalar condition.
    fn choose(&mut self, cur: &mut FuncCursor<'_>, i: &VecInst) -> Result<Repr, String> {
        let VecInst {
            opcode,
            data,
            ref args,
            ..
        } = *i;
        let fail = |why: &str| i.fail(why);
        let out = |func: &Function| i.out(func);
        Ok(match (opcode, data) {
            (Opcode::Bitselect, _) => {
                let (ty, pt) = out(cur.func)?;
                if !lanes_are_pieces(ty) {
                    return Err(fail(&format!("of {ty}")));
                }
                let m = self.four(cur.func, args[0])?;
                let x = self.four(cur.func, args[1])?;
                let y = self.four(cur.func, args[2])?;
                let mut r = x;
                for k in 0..4 {
                    r[k] = if let Some(&c) = self.masks.get(&m[k]) {
                        cur.ins().select(c, x[k], y[k])
                    } else {
                        // (m & x) | (y & !m), in i32
                        let mi = as_int(cur, m[k]);
                        let xi = as_int(cur, x[k]);
                        let yi = as_int(cur, y[k]);
                        let a = cur.ins().band(mi, xi);
                        let nm = cur.ins().bnot(mi);
                        let n = cur.ins().band(yi, nm);
                        let v = cur.ins().bor(a, n);
                        if pt == types::I32 {
                            v
                        } else {
                            cur.ins().bitcast(pt, MemFlagsData::new(), v)
                        }
                    };
                }
                Repr::Four(r)
            }
            (Opcode::Select, _) => {
                let (ty, _) = out(cur.func)?;
                if cur.func.dfg.value_type(args[0]).is_vector() || !lanes_are_pieces(ty) {
                    return Err(fail(&format!("of {ty} on a vector condition")));
                }
                let c = self.one(cur.func, args[0])?;
                let x = self.four(cur.func, args[1])?;
                let y = self.four(cur.func, args[2])?;
                Repr::Four(std::array::from_fn(|k| cur.ins().select(c, x[k], y[k])))
            }
            _ => return Err(fail("unexpected instruction format")),
        })
    }

    /// Lane-wise arithmetic and bitwise ops: one scalar instruction per lane
    /// (bitwise ops on floats through `i32`).
    fn lane_wise_op(&mut self, cur: &mut FuncCursor<'_>, i: &VecInst) -> Result<Repr, String> {
        let VecInst {
            opcode,
            data,
            ref args,
            ..
        } = *i;
        let fail = |why: &str| i.fail(why);
        let out = |func: &Function| i.out(func);
        Ok(match (opcode, data) {
            (op, _) if lane_wise(op) => {
                let (ty, pt) = out(cur.func)?;
                if !lanes_are_pieces(ty) {
                    return Err(fail(&format!("lane-wise on {ty}")));
                }
                let ops: Vec<[Value; 4]> = args
                    .iter()
                    .map(|&a| self.lanes_or_splat(cur.func, a))
                    .collect();
                let float_bits = bitwise(op) && pt.is_float();
                let mut r = ops[0];
                for k in 0..4 {
                    let mut lane: Vec<Value> = ops.iter().map(|o| o[k]).collect();
                    if float_bits {
                        for v in &mut lane {
                            *v = as_int(cur, *v);
                        }
                    }
                    let ct = if float_bits { types::I32 } else { pt };
                    let (i, dfg) = match (data, lane.as_slice()) {
                        (InstructionData::Unary { .. }, &[a]) => cur.ins().Unary(op, ct, a),
                        (InstructionData::Binary { .. }, &[a, c]) => cur.ins().Binary(op, ct, a, c),
                        (InstructionData::Ternary { .. }, &[a, c, d]) => {
                            cur.ins().Ternary(op, ct, a, c, d)
                        }
                        _ => return Err(fail("unexpected instruction format")),
                    };
                    let v = dfg.first_result(i);
                    r[k] = if float_bits {
                        cur.ins().bitcast(pt, MemFlagsData::new(), v)
                    } else {
                        v
                    };
                }
                Repr::Four(r)
            }
            _ => return Err(fail("unexpected instruction format")),
        })
    }

    /// Keeps a scalar instruction (or a branch): renames its operands,
    /// passes four arguments for every vector block argument, and appends
    /// it to `b`.
    fn keep(&self, func: &mut Function, b: Block, inst: Inst) -> Result<(), String> {
        let fixed: Vec<Value> = func.dfg.inst_args(inst).to_vec();
        let mut renamed = Vec::with_capacity(fixed.len());
        for v in fixed {
            renamed.push(self.one(func, v)?);
        }
        let dests: Vec<(Block, Vec<BlockArg>)> = func.dfg.insts[inst]
            .branch_destination(&func.dfg.jump_tables, &func.dfg.exception_tables)
            .iter()
            .map(|d| {
                (
                    d.block(&func.dfg.value_lists),
                    d.args(&func.dfg.value_lists).collect(),
                )
            })
            .collect();
        let mut new_dests = Vec::with_capacity(dests.len());
        for (blk, args) in dests {
            let mut out = Vec::with_capacity(args.len());
            for a in args {
                match a {
                    BlockArg::Value(v) => match self.get(func, v) {
                        Repr::One(x) => out.push(BlockArg::Value(x)),
                        Repr::Four(x) => out.extend(x.map(BlockArg::Value)),
                    },
                    other => out.push(other),
                }
            }
            new_dests.push((blk, out));
        }
        let dfg = &mut func.dfg;
        for (a, v) in dfg.insts[inst]
            .arguments_mut(&mut dfg.value_lists)
            .iter_mut()
            .zip(renamed)
        {
            *a = v;
        }
        let slots =
            dfg.insts[inst].branch_destination_mut(&mut dfg.jump_tables, &mut dfg.exception_tables);
        for (slot, (blk, args)) in slots.iter_mut().zip(new_dests) {
            *slot = BlockCall::new(blk, args, &mut dfg.value_lists);
        }
        func.layout.append_inst(inst, b);
        Ok(())
    }
}

/// A zero of scalar type `ty` (`f32` or `i32`).
fn zero(cur: &mut FuncCursor, ty: Type) -> Value {
    if ty == types::F32 {
        cur.ins().f32const(0.0)
    } else {
        cur.ins().iconst(ty, 0)
    }
}

/// `v` as `i32` bits.
fn as_int(cur: &mut FuncCursor, v: Value) -> Value {
    if cur.func.dfg.value_type(v) == types::I32 {
        v
    } else {
        cur.ins().bitcast(types::I32, MemFlagsData::new(), v)
    }
}

/// Scalarises kernel `func` when `scalar` is set (the target has no 128-bit
/// SIMD, or [`CompileOptions::scalarize`] forces it), then runs Cranelift's
/// verifier on the result in debug builds and when `opts.verify_ir` asks:
/// a rewrite bug is then an error naming the instruction, not a miscompile.
pub(crate) fn prepare(
    mut func: Function,
    scalar: bool,
    isa: &dyn TargetIsa,
    opts: &CompileOptions,
) -> Result<Function, String> {
    if !scalar {
        return Ok(func);
    }
    scalarize(&mut func)?;
    if opts.verify_ir || cfg!(debug_assertions) {
        verify_function(&func, isa).map_err(|e| {
            format!(
                "after scalarisation: {}",
                cranelift_codegen::print_errors::pretty_verifier_error(&func, None, e)
            )
        })?;
    }
    Ok(func)
}

#[cfg(test)]
mod tests {
    // Running JIT code is unsafe; the one block says why it is sound.
    #![allow(unsafe_code)]

    use super::*;
    use cranelift_codegen::Context;
    use cranelift_codegen::control::ControlPlane;
    use cranelift_codegen::ir::condcodes::FloatCC;
    use cranelift_codegen::ir::{AbiParam, ConstantData, Endianness, Signature, UserFuncName};
    use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};
    use cranelift_jit::{JITBuilder, JITModule};
    use cranelift_module::{Linkage, Module, default_libcall_names};
    use types::{F32X4, I8X16, I32X4, I64};

    /// `fn(p)`: reads `a = p[0..4]`, `c = p[4..8]` (f32) and writes
    /// `p[8..32]`, exercising what the kernels do not (vconst, a shuffle
    /// mixing both operands, a loop carrying a vector, `vall_true`,
    /// `vany_true`, integer lanes) next to what they do.
    fn sample(fc: cranelift_codegen::isa::TargetFrontendConfig) -> Function {
        let mut sig = Signature::new(fc.default_call_conv);
        sig.params.push(AbiParam::new(I64));
        let mut func = Function::with_name_signature(UserFuncName::user(0, 0), sig);
        let mut fctx = FunctionBuilderContext::new();
        let mut b = FunctionBuilder::new(&mut func, &mut fctx);
        let entry = b.create_block();
        b.append_block_params_for_function_params(entry);
        b.switch_to_block(entry);
        let p = b.block_params(entry)[0];
        let f = MemFlagsData::trusted();
        let le = MemFlagsData::new().with_endianness(Endianness::Little);
        let a = b.ins().load(F32X4, f, p, 0);
        let c = b.ins().load(F32X4, f, p, 16);
        // a loop carrying a vector: acc = fma(acc, a, c), three times
        let head = b.create_block();
        let acc = b.append_block_param(head, F32X4);
        let i = b.append_block_param(head, I64);
        let body = b.create_block();
        let exit = b.create_block();
        let out = b.append_block_param(exit, F32X4);
        let zero = b.ins().iconst(I64, 0);
        b.ins()
            .jump(head, &[BlockArg::Value(a), BlockArg::Value(zero)]);
        b.switch_to_block(head);
        let three = b.ins().iconst(I64, 3);
        let more = b.ins().icmp(IntCC::SignedLessThan, i, three);
        b.ins().brif(more, body, &[], exit, &[BlockArg::Value(acc)]);
        b.switch_to_block(body);
        let next = b.ins().fma(acc, a, c);
        let i1 = b.ins().iadd_imm_s(i, 1);
        b.ins()
            .jump(head, &[BlockArg::Value(next), BlockArg::Value(i1)]);
        b.switch_to_block(exit);
        b.ins().store(f, out, p, 32);
        // max(a, c) where a < c else a - c, through fcmp/bitcast/bitselect
        let lt = b.ins().fcmp(FloatCC::LessThan, a, c);
        let m = b.ins().bitcast(F32X4, le, lt);
        let d = b.ins().fsub(a, c);
        let mx = b.ins().fmax(a, c);
        let sel = b.ins().bitselect(m, mx, d);
        b.ins().store(f, sel, p, 48);
        // words 1, 6, 3, 4 of a ++ c, plus a vconst
        let ab = b.ins().bitcast(I8X16, le, a);
        let cb = b.ins().bitcast(I8X16, le, c);
        let mask: Vec<u8> = [1u8, 6, 3, 4]
            .iter()
            .flat_map(|&w| (0..4).map(move |k| 4 * w + k))
            .collect();
        let imm = b.func.dfg.immediates.push(ConstantData::from(mask));
        let sh = b.ins().shuffle(ab, cb, imm);
        let sh = b.ins().bitcast(F32X4, le, sh);
        let k: Vec<u8> = [1.5f32, -2.0, 0.25, 8.0]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        let kc = b.func.dfg.constants.insert(ConstantData::from(k));
        let kv = b.ins().vconst(F32X4, kc);
        let sh = b.ins().fmul(sh, kv);
        // lane 2 replaced by the sum of lanes 0 and 3
        let l0 = b.ins().extractlane(sh, 0u8);
        let l3 = b.ins().extractlane(sh, 3u8);
        let s = b.ins().fadd(l0, l3);
        let sh = b.ins().insertlane(sh, s, 2u8);
        b.ins().store(f, sh, p, 64);
        // integer lanes: (bits(a) >> 23) & 0xff, as f32; any/all lanes > 0
        let ai = b.ins().bitcast(I32X4, le, a);
        let e = b.ins().ushr_imm_u(ai, 23);
        let ff = b.ins().iconst(types::I32, 0xff);
        let ff = b.ins().splat(I32X4, ff);
        let e = b.ins().band(e, ff);
        let ef = b.ins().fcvt_from_sint(F32X4, e);
        b.ins().store(f, ef, p, 80);
        let z = b.ins().f32const(0.0);
        let z = b.ins().splat(F32X4, z);
        let pos = b.ins().fcmp(FloatCC::GreaterThan, a, z);
        let any = b.ins().vany_true(pos);
        let all = b.ins().vall_true(pos);
        let any = b.ins().uextend(types::I32, any);
        let all = b.ins().uextend(types::I32, all);
        let two = b.ins().iconst(types::I32, 2);
        let all2 = b.ins().imul(all, two);
        let flags = b.ins().iadd(any, all2);
        let flags = b.ins().fcvt_from_sint(types::F32, flags);
        b.ins().store(f, flags, p, 96);
        b.ins().return_(&[]);
        b.seal_all_blocks();
        b.finalize(fc);
        func
    }

    /// Runs `func` (signature `fn(*mut f32)`) on a copy of `data`.
    fn run(func: Function, data: &[f32; 32]) -> [f32; 32] {
        let isa = host();
        let mut module = JITModule::new(JITBuilder::with_isa(isa.clone(), default_libcall_names()));
        let id = module
            .declare_function("f", Linkage::Local, &func.signature)
            .unwrap();
        let mut ctx = Context::for_function(func);
        let code = ctx.compile(&*isa, &mut ControlPlane::default()).unwrap();
        let bytes = code.code_buffer().to_vec();
        let mach = code.buffer.relocs().to_vec();
        let relocs: Vec<_> = mach
            .iter()
            .map(|r| cranelift_module::ModuleReloc::from_mach_reloc(r, &ctx.func, id))
            .collect();
        module
            .define_function_bytes(id, 16, &bytes, &relocs)
            .unwrap();
        module.finalize_definitions().unwrap();
        let f = module.get_finalized_function(id);
        let mut out = *data;
        // SAFETY: `f` was just compiled from a function of signature
        // `fn(i64)` that reads and writes only `p[0..32]` (f32), and `out`
        // is 32 floats; the module stays alive until after the call.
        unsafe {
            let f: extern "C" fn(*mut f32) = std::mem::transmute(f);
            f(out.as_mut_ptr());
            module.free_memory();
        }
        out
    }

    fn host() -> cranelift_codegen::isa::OwnedTargetIsa {
        cranelift_native::builder()
            .unwrap()
            .finish(cranelift_codegen::settings::Flags::new(
                cranelift_codegen::settings::builder(),
            ))
            .unwrap()
    }

    #[test]
    fn scalarised_code_computes_what_the_vector_code_does() {
        let isa = host();
        let vector = sample(isa.frontend_config());
        let mut scalar = vector.clone();
        scalarize(&mut scalar).unwrap();
        verify_function(&scalar, &*isa).unwrap();
        let text = scalar.display().to_string();
        for ty in ["f32x4", "i32x4", "i8x16"] {
            assert!(!text.contains(ty), "{ty} left:\n{text}");
        }
        let mut data = [0f32; 32];
        for (x, v) in data[..8]
            .iter_mut()
            .zip([0.5f32, -1.25, 3.0, 7.5, 2.0, -0.5, 3.0, -8.0])
        {
            *x = v;
        }
        let want = run(vector, &data);
        let got = run(scalar, &data);
        assert_eq!(
            want.map(f32::to_bits),
            got.map(f32::to_bits),
            "\nwant {want:?}\n got {got:?}"
        );
        // and the results are not trivial: a < c in lane 0, all flags set
        assert_eq!(want[24], 1.0, "{want:?}"); // some lane > 0, not all
    }

    #[test]
    fn an_op_without_a_scalar_form_is_an_error_naming_it() {
        let isa = host();
        let fc = isa.frontend_config();
        let mut sig = Signature::new(fc.default_call_conv);
        sig.params.push(AbiParam::new(I64));
        let mut func = Function::with_name_signature(UserFuncName::user(0, 0), sig);
        let mut fctx = FunctionBuilderContext::new();
        let mut b = FunctionBuilder::new(&mut func, &mut fctx);
        let entry = b.create_block();
        b.append_block_params_for_function_params(entry);
        b.switch_to_block(entry);
        b.seal_block(entry);
        let p = b.block_params(entry)[0];
        let f = MemFlagsData::trusted();
        let a = b.ins().load(I32X4, f, p, 0);
        let s = b.ins().iadd_pairwise(a, a);
        b.ins().store(f, s, p, 16);
        b.ins().return_(&[]);
        b.finalize(fc);
        let e = scalarize(&mut func).unwrap_err();
        assert!(e.contains("iadd_pairwise"), "{e}");
    }
}
