//! The memory plan: where every value lives while a compiled model runs.
//!
//! - Graph inputs are read, and graph outputs written, in the caller's own
//!   tensors (`Loc::Io`): no copy in or out, except an output that is not
//!   computed by a kernel of its own (an input, a weight, or a value already
//!   claimed by another output), which gets a copy step at the end.
//! - Weights are read in the model's constant blob (`Loc::Const`).
//! - Reshape, squeeze, unsqueeze, flatten, identity and same-type casts are
//!   free: their value is an alias of their operand's bytes (row-major data
//!   does not move).
//! - Every other intermediate, and each kernel's scratch space, gets an
//!   offset in one arena. Offsets are assigned by liveness in execution
//!   order: buffers whose live ranges do not overlap share bytes. An
//!   element-wise kernel whose operand dies at that kernel writes its result
//!   over the operand (in place) when the kernel allows it.
//!
//! The arena starts with a header of one pointer per graph input and output,
//! which `run` fills in; kernels read caller addresses from there, so one
//! compiled model serves any caller buffers.

use std::collections::{HashMap, HashSet};

use kiln_ir::limits::Bytes;
use kiln_ir::{Graph, Limits, NodeId, Op, Value};

use crate::codegen::Loc;
use crate::error::BackendError;
use crate::kernels;

/// Alignment of every arena buffer: a cache line, so that two buffers never
/// share one (threads write disjoint buffers without false sharing).
pub(crate) const ALIGN: usize = 64;

/// The plan for one graph. See the module docs.
#[derive(Debug)]
pub(crate) struct Plan {
    /// Kernel nodes (everything but leaves and aliases) in execution order.
    pub kernels: Vec<NodeId>,
    /// Location of every value of the graph.
    pub loc: HashMap<Value, Loc>,
    /// Scratch space of the kernels that asked for some.
    pub scratch: HashMap<NodeId, Loc>,
    /// Kernels whose output overwrites an operand.
    pub inplace: HashSet<NodeId>,
    /// Outputs filled by a copy after the kernels: `(output index, source, type)`.
    pub copies: Vec<(usize, Loc)>,
    /// Total arena size in bytes, header included.
    pub arena_bytes: usize,
    /// Bytes of every intermediate and scratch buffer, without reuse or
    /// in-place writes (for reports).
    pub unshared_bytes: usize,
}

/// Where a value's bytes come from before planning.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Root {
    Input(usize),
    Weight(NodeId),
    /// output of a kernel node
    Computed(Value),
}

/// One arena buffer with its live range in kernel steps (inclusive).
#[derive(Debug)]
struct Interval {
    bytes: usize,
    def: usize,
    end: usize,
    offset: usize,
}

fn align_up(x: usize) -> usize {
    // sizes of valid types are at most isize::MAX, so this cannot wrap
    x.div_ceil(ALIGN) * ALIGN
}

/// `a + b`, or the error of an arena too large to address.
fn add(a: usize, b: usize) -> Result<usize, BackendError> {
    a.checked_add(b)
        .filter(|&s| s <= kiln_ir::limits::MAX_TYPE_BYTES)
        .ok_or_else(|| {
            BackendError::Invalid(kiln_ir::IrError::Limit(
                "the arena's size does not fit in 63 bits".into(),
            ))
        })
}

/// Plans `g` (verified), whose weights are at the given offsets of the
/// constant blob.
///
/// Sizes add with overflow checks, and the arena must fit under
/// `limits.arena_bytes`: a graph's values are each bounded, but not their sum.
pub(crate) fn plan(
    g: &Graph,
    weight_addr: &HashMap<NodeId, usize>,
    limits: &Limits,
) -> Result<Plan, BackendError> {
    let order = g.topo_order()?;
    let n_in = g.inputs().len();
    let n_out = g.outputs().len();
    let header_bytes = align_up(8 * (n_in + n_out)).max(ALIGN);
    let (root, kernels_order) = roots(g, &order);
    let (claimed, copies) = claim_outputs(g, &root);
    let last_use = last_uses(g, &root, &kernels_order, &copies);
    let mut bufs = buffers(g, &root, &kernels_order, &claimed, &last_use)?;
    let arena_end = place(&mut bufs.intervals, header_bytes, limits)?;
    let loc = locations(g, weight_addr, &root, &claimed, &bufs, n_in)?;
    let intervals = &bufs.intervals;
    let scratch = bufs
        .scratch
        .iter()
        .map(|&(id, i)| (id, Loc::Arena(intervals[i].offset)))
        .collect();
    let copies = copies
        .into_iter()
        .map(|(k, v)| {
            loc.get(&v)
                .map(|&l| (k, l))
                .ok_or_else(|| BackendError::Jit(format!("output {k} has no location")))
        })
        .collect::<Result<_, _>>()?;
    Ok(Plan {
        kernels: kernels_order,
        loc,
        scratch,
        inplace: bufs.inplace,
        copies,
        arena_bytes: align_up(arena_end),
        unshared_bytes: bufs.unshared_bytes,
    })
}

/// The root of every value (aliases through to their operand's), and the
/// kernel nodes in execution order.
fn roots(g: &Graph, order: &[NodeId]) -> (HashMap<Value, Root>, Vec<NodeId>) {
    let mut root: HashMap<Value, Root> = HashMap::new();
    let mut kernels_order = Vec::new();
    for &id in order {
        let node = g.node(id);
        match node.op {
            Op::Input => {
                let k = g.inputs().iter().position(|&n| n == id).unwrap_or(0);
                root.insert(Value::of(id), Root::Input(k));
            }
            Op::Weight => {
                root.insert(Value::of(id), Root::Weight(id));
            }
            _ if kernels::is_alias(g, id) => {
                let src = g.operands(id)[0];
                let r = root[&src];
                root.insert(Value::of(id), r);
            }
            _ => {
                for o in 0..node.outputs.len() {
                    let v = Value {
                        node: id,
                        output: o,
                    };
                    root.insert(v, Root::Computed(v));
                }
                kernels_order.push(id);
            }
        }
    }
    (root, kernels_order)
}

/// Outputs claim the root they are computed in (written in the caller's
/// tensor); the others (inputs, weights, a root another output claimed)
/// are `(output index, value)` copies at the end.
fn claim_outputs(
    g: &Graph,
    root: &HashMap<Value, Root>,
) -> (HashMap<Value, usize>, Vec<(usize, Value)>) {
    let mut claimed: HashMap<Value, usize> = HashMap::new();
    let mut copies = Vec::new();
    for (k, &v) in g.outputs().iter().enumerate() {
        match root[&v] {
            Root::Computed(r) if !claimed.contains_key(&r) => {
                claimed.insert(r, k);
            }
            _ => copies.push((k, v)),
        }
    }
    (claimed, copies)
}

/// The last step that reads each computed root; the copies read at the
/// end (step `kernels.len()`).
fn last_uses(
    g: &Graph,
    root: &HashMap<Value, Root>,
    kernels_order: &[NodeId],
    copies: &[(usize, Value)],
) -> HashMap<Value, usize> {
    let n_steps = kernels_order.len();
    let mut last_use: HashMap<Value, usize> = HashMap::new();
    for (t, &id) in kernels_order.iter().enumerate() {
        for u in g.operands(id) {
            if let Root::Computed(r) = root[&u] {
                let e = last_use.entry(r).or_insert(t);
                *e = (*e).max(t);
            }
        }
    }
    for &(_, v) in copies {
        if let Root::Computed(r) = root[&v] {
            last_use.insert(r, n_steps);
        }
    }
    last_use
}

/// The arena's buffers before placement. See [`buffers`].
struct Buffers {
    /// every buffer with its live range
    intervals: Vec<Interval>,
    /// the buffer of each unclaimed computed value
    buffer_of: HashMap<Value, usize>,
    /// kernels writing over an operand
    inplace: HashSet<NodeId>,
    /// `(kernel, buffer)` of each kernel's scratch
    scratch: Vec<(NodeId, usize)>,
    /// bytes of all of them, without sharing
    unshared_bytes: usize,
}

/// The arena buffers: one per unclaimed computed value, merged with the
/// operand's for an in-place kernel, and one per kernel's scratch.
fn buffers(
    g: &Graph,
    root: &HashMap<Value, Root>,
    kernels_order: &[NodeId],
    claimed: &HashMap<Value, usize>,
    last_use: &HashMap<Value, usize>,
) -> Result<Buffers, BackendError> {
    let mut intervals: Vec<Interval> = Vec::new();
    let mut buffer_of: HashMap<Value, usize> = HashMap::new();
    let mut inplace = HashSet::new();
    let mut scratch_iv: Vec<(NodeId, usize)> = Vec::new();
    let mut unshared_bytes = 0;
    for (t, &id) in kernels_order.iter().enumerate() {
        let node = g.node(id);
        let operands = g.operands(id);
        let mut done_inplace = false;
        if let Some(i) = kernels::inplace_operand(g, id) {
            let out = Value::of(id);
            if let (Some(&u), false) = (operands.get(i), claimed.contains_key(&out))
                && let Root::Computed(r) = root[&u]
                && let Some(&buf) = buffer_of.get(&r)
                && last_use.get(&r) == Some(&t)
                && g.value_type(u).size_bytes() == node.outputs[0].ty.size_bytes()
                // the operand must not also be read through another slot with a
                // different root that this write could clobber: only `r` itself
                && operands.iter().all(|o| root[o] != Root::Computed(r) || *o == u)
            {
                let end = last_use.get(&out).copied().unwrap_or(t);
                intervals[buf].end = intervals[buf].end.max(end);
                buffer_of.insert(out, buf);
                inplace.insert(id);
                done_inplace = true;
            }
        }
        for (o, info) in node.outputs.iter().enumerate() {
            let v = Value {
                node: id,
                output: o,
            };
            if claimed.contains_key(&v) {
                continue;
            }
            unshared_bytes = add(unshared_bytes, align_up(info.ty.size_bytes().max(1)))?;
            if done_inplace && o == 0 {
                continue;
            }
            let end = last_use.get(&v).copied().unwrap_or(t);
            buffer_of.insert(v, intervals.len());
            intervals.push(Interval {
                bytes: align_up(info.ty.size_bytes().max(1)),
                def: t,
                end,
                offset: 0,
            });
        }
        let s = kernels::scratch_bytes(g, id);
        unshared_bytes = add(unshared_bytes, align_up(s))?;
        if s > 0 {
            scratch_iv.push((id, intervals.len()));
            intervals.push(Interval {
                bytes: align_up(s),
                def: t,
                end: t,
                offset: 0,
            });
        }
    }
    Ok(Buffers {
        intervals,
        buffer_of,
        inplace,
        scratch: scratch_iv,
        unshared_bytes,
    })
}

/// Gives every interval an offset after the `header_bytes` header, first
/// fit, largest buffers first (a simple heuristic that does well on these
/// chain-like graphs); returns the arena's end, which must fit under
/// `limits.arena_bytes`.
fn place(
    intervals: &mut [Interval],
    header_bytes: usize,
    limits: &Limits,
) -> Result<usize, BackendError> {
    let mut by_size: Vec<usize> = (0..intervals.len()).collect();
    by_size.sort_by(|&a, &b| {
        intervals[b]
            .bytes
            .cmp(&intervals[a].bytes)
            .then(intervals[a].def.cmp(&intervals[b].def))
    });
    let mut placed: Vec<usize> = Vec::new();
    let mut arena_end = header_bytes;
    for &i in &by_size {
        let mut taken: Vec<(usize, usize)> = placed
            .iter()
            .filter(|&&j| {
                intervals[j].def <= intervals[i].end && intervals[i].def <= intervals[j].end
            })
            .map(|&j| {
                (
                    intervals[j].offset,
                    intervals[j].offset + intervals[j].bytes,
                )
            })
            .collect();
        taken.sort();
        let mut off = header_bytes;
        for (lo, hi) in taken {
            if off + intervals[i].bytes <= lo {
                break;
            }
            off = off.max(hi);
        }
        intervals[i].offset = off;
        // every placed interval ends below the arena limit (checked here),
        // and the limit is at most isize::MAX, so the sums above cannot wrap
        arena_end = arena_end.max(add(off, intervals[i].bytes)?);
        if arena_end > limits.arena_bytes {
            return Err(kiln_ir::limits::exceeded(
                &format!("the arena needs at least {}", Bytes(arena_end)),
                limits.arena_bytes,
                "arena",
            )
            .into());
        }
        placed.push(i);
    }
    Ok(arena_end)
}

/// The location of every value: an input or output slot of the header, the
/// constant blob, or the arena (aliases share their root's).
fn locations(
    g: &Graph,
    weight_addr: &HashMap<NodeId, usize>,
    root: &HashMap<Value, Root>,
    claimed: &HashMap<Value, usize>,
    bufs: &Buffers,
    n_in: usize,
) -> Result<HashMap<Value, Loc>, BackendError> {
    let (intervals, buffer_of) = (&bufs.intervals, &bufs.buffer_of);
    let out_slot = |k: usize| Loc::Io(8 * (n_in + k));
    let mut loc = HashMap::new();
    for (&v, r) in root {
        let l = match *r {
            Root::Input(k) => Loc::Io(8 * k),
            Root::Weight(w) => match weight_addr.get(&w) {
                Some(&a) => Loc::Const(a),
                None => {
                    return Err(BackendError::Jit(format!(
                        "{}: weight has no data",
                        g.display_node(w)
                    )));
                }
            },
            Root::Computed(c) => match claimed.get(&c) {
                Some(&k) => out_slot(k),
                None => Loc::Arena(intervals[buffer_of[&c]].offset),
            },
        };
        loc.insert(v, l);
    }
    Ok(loc)
}
