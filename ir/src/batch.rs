//! Batch separability: proves that a graph computes every image of its
//! batch on its own, and writes the same computation for a smaller batch,
//! so that a batch of `N` can run as `N / G` runs of a `G`-image program
//! (on separate threads, each with a working set of `G` images).
//!
//! The batch is the first axis of the graph's inputs (every input has it).
//! The proof follows the batch through the graph in one topological pass:
//! each value either does not depend on the images (weights and what is
//! computed from them alone) or has a *batch axis* — an axis of `N · rest`
//! entries whose major factor is the image. The factor form lets the batch
//! merge with other axes and split off again, as MobileViT's unfolding
//! reshapes `[N, C, H, W]` into `[N·C·h, p, w, p]`. Each op has a rule
//! (written on [`rule`]) saying whether it keeps images apart and where the
//! batch axis of its result is; an op that would mix images (a softmax or a
//! reduction over the batch axis, a reshape that interleaves them, a
//! product summing over them) makes the graph inseparable, with a reason
//! naming the node. The graph outputs must hold their images contiguously
//! (nothing but size-1 axes before the batch axis), so a group's output is
//! one contiguous slice of the batch's.
//!
//! The smaller graph has the same nodes, names and weights; attributes that
//! spell out the batch (reshape and expand shapes) are rewritten, and every
//! type is inferred again and checked against the batch-axis bookkeeping.
//! Constants an importer folded to the batch's size (the same values once
//! per image) are sliced to the group's.

use std::collections::{HashMap, HashSet};

use crate::Model;
use crate::graph::{Graph, NodeId, Value};
use crate::op::Op;
use crate::tensor::{Tensor, WeightStore};
use crate::types::TensorType;

/// Where a value's images are: axis `axis` has `N · rest` entries, image `i`
/// being entries `[i · rest, (i + 1) · rest)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Batched {
    axis: usize,
    rest: usize,
}

/// The batch of a graph: the first axis of its first input, when every
/// input has that size on its first axis. `None` for a graph without
/// inputs or with inputs of different batches.
pub fn batch_size(g: &Graph) -> Option<usize> {
    let mut sizes = g
        .inputs()
        .iter()
        .map(|&i| g.value_type(Value::of(i)).shape.first().copied());
    let n = sizes.next()??;
    sizes.all(|s| s == Some(n)).then_some(n)
}

/// The model computing `images` images of `model`'s batch (which `images`
/// must divide), or why it does not compute its images independently. The
/// result has the model's nodes, value names and weights in the same
/// order; image `k` of the group is image `k` of any contiguous group of
/// `images` images of the batch, and each output holds the group's images
/// contiguously. `images` equal to the batch returns the model unchanged.
///
/// A constant that repeats one value per image along its first axis (an
/// import folded `cls_token.expand(N, -1, -1)`, or a position encoding
/// computed from a batch-sized mask) counts as batched where an op needs
/// it so: the smaller model gets one group's slice of it as a new weight
/// (`NAME.group`).
pub fn rebatch(model: &Model, images: usize) -> Result<Model, String> {
    let g = &model.graph;
    let n = batch_size(g).ok_or("the inputs do not share a first (batch) axis")?;
    if images == 0 || !n.is_multiple_of(images) {
        return Err(format!("{images} images do not divide the batch of {n}"));
    }
    if images == n {
        return Ok(model.clone());
    }
    let order = g.topo_order().map_err(|e| e.to_string())?;
    let mut out = Graph::new(g.name.clone());
    let mut weights = model.weights.clone();
    let mut map: HashMap<Value, Value> = HashMap::new();
    let mut at: HashMap<Value, Option<Batched>> = HashMap::new();
    // repeated constants' group slices, made on first use
    let mut sliced: HashMap<Value, Value> = HashMap::new();
    let err = |e: crate::IrError| e.to_string();
    for &w in g.weights() {
        let info = &g.node(w).outputs[0];
        let v = out
            .add_weight(info.name.clone(), info.ty.clone())
            .map_err(err)?;
        map.insert(Value::of(w), v);
        at.insert(Value::of(w), None);
    }
    for &i in g.inputs() {
        let info = &g.node(i).outputs[0];
        let mut ty = info.ty.clone();
        ty.shape[0] = images;
        let v = out.add_input(info.name.clone(), ty).map_err(err)?;
        map.insert(Value::of(i), v);
        at.insert(Value::of(i), Some(Batched { axis: 0, rest: 1 }));
    }
    for id in order {
        let node = g.node(id);
        if matches!(node.op, Op::Input | Op::Weight) {
            continue;
        }
        let operands = g.operands(id);
        let mut ins: Vec<Option<Batched>> = operands.iter().map(|v| at[v]).collect();
        let types: Vec<&TensorType> = operands.iter().map(|v| g.value_type(*v)).collect();
        let outs: Vec<&TensorType> = node.outputs.iter().map(|o| &o.ty).collect();
        let name = g.display_node(id);
        let (op, batched) = if let Some(b) = broadcast_to_batch(&node.op, &ins, &types, outs[0], n)
        {
            (respell(&node.op, b, outs[0], n, images), vec![Some(b)])
        } else if ins.iter().all(Option::is_none) {
            (node.op.clone(), vec![None; outs.len()])
        } else {
            let mut b = rule(&node.op, &ins, &types, &outs, n);
            if !matches!(b, Ok(Some(_))) {
                // again with the repeated constants among the operands batched
                let alt: Vec<Option<Batched>> = operands
                    .iter()
                    .zip(&ins)
                    .map(|(v, i)| i.or_else(|| repeated(model, *v, n)))
                    .collect();
                if alt != ins
                    && let Ok(Some(bb)) = rule(&node.op, &alt, &types, &outs, n)
                {
                    b = Ok(Some(bb));
                    ins = alt;
                }
            }
            let Some(b) = b.map_err(|why| format!("node {name}: {why}"))? else {
                return Err(format!("node {name}: mixes the images of the batch"));
            };
            let op = respell(&node.op, b, outs[0], n, images);
            (op, vec![Some(b); outs.len()])
        };
        let mut new_operands = Vec::with_capacity(operands.len());
        for (v, b) in operands.iter().zip(&ins) {
            let mapped = match (at[v], b) {
                (None, Some(b)) => match sliced.get(v) {
                    Some(s) => *s,
                    None => {
                        let s = slice_weight(model, *v, *b, n, images, &mut out, &mut weights)?;
                        sliced.insert(*v, s);
                        s
                    }
                },
                _ => map[v],
            };
            new_operands.push(mapped);
        }
        let names = node.outputs.iter().map(|o| o.name.clone()).collect();
        let made = out.add_named(op, &new_operands, names).map_err(err)?;
        for (k, (&v, b)) in made.iter().zip(&batched).enumerate() {
            let mut want = outs[k].clone();
            if let Some(b) = b {
                want.shape[b.axis] = images * b.rest;
            }
            let got = out.value_type(v);
            if *got != want {
                return Err(format!(
                    "node {name}: the {images}-image graph infers {got} where {want} was expected"
                ));
            }
            let old = Value {
                node: id,
                output: k,
            };
            map.insert(old, v);
            at.insert(old, *b);
        }
    }
    let mut outputs = Vec::new();
    for v in g.outputs() {
        let shape = &g.value_type(*v).shape;
        match at[v] {
            Some(b) if shape[..b.axis].iter().all(|&d| d == 1) => outputs.push(map[v]),
            Some(_) => {
                return Err(format!(
                    "output {}: its images are not contiguous",
                    g.display_value(*v)
                ));
            }
            None => {
                return Err(format!(
                    "output {}: does not depend on the images",
                    g.display_value(*v)
                ));
            }
        }
    }
    out.set_outputs(outputs);
    Ok(Model {
        graph: out,
        weights,
    })
}

/// A batch model cut in two: the `head` computes the `cut` values from the
/// inputs, the `tail` the outputs from them (see [`split_tail`]).
#[derive(Debug)]
pub struct Split {
    /// the graph up to the cut: the model's inputs, the cut values as
    /// outputs
    pub head: Model,
    /// the rest: the cut values as inputs (same names and types), the
    /// model's outputs
    pub tail: Model,
}

/// Cuts off the *tail* of a batch model: the nodes whose results, and
/// those of everything after them, hold at most `bytes` bytes per image
/// (a classifier after its global pooling). Run on the whole batch, the
/// tail's matrix–vector products become matrix products that read each
/// weight once per batch instead of once per image, while the head runs
/// image by image. `None` when no node qualifies, when the cut would pass
/// a graph input straight to the tail, or when an output comes from the
/// head.
pub fn split_tail(model: &Model, bytes: usize) -> Option<Split> {
    let g = &model.graph;
    let n = batch_size(g)?;
    let order = g.topo_order().ok()?;
    // nodes computed from weights alone (a transposed classifier weight):
    // each part gets its own copy of those it uses
    let mut constant: HashSet<NodeId> = HashSet::new();
    for &id in &order {
        let op = &g.node(id).op;
        if *op != Op::Input
            && g.operands(id)
                .iter()
                .all(|v| g.node(v.node).op == Op::Weight || constant.contains(&v.node))
        {
            constant.insert(id);
        }
    }
    let mut tail: HashSet<NodeId> = HashSet::new();
    let outputs: HashSet<Value> = g.outputs().iter().copied().collect();
    for &id in order.iter().rev() {
        let node = g.node(id);
        if matches!(node.op, Op::Input | Op::Weight) || constant.contains(&id) {
            continue;
        }
        let thin = node.outputs.iter().enumerate().all(|(k, o)| {
            let v = Value {
                node: id,
                output: k,
            };
            o.ty.size_bytes() <= bytes.saturating_mul(n)
                && g.users(v).iter().all(|(u, _)| tail.contains(u))
                && (outputs.contains(&v) || !g.users(v).is_empty())
        });
        if thin {
            tail.insert(id);
        }
    }
    if tail.is_empty() || g.outputs().iter().any(|v| !tail.contains(&v.node)) {
        return None;
    }
    // the values the tail reads from the head, in a fixed order
    let mut cut: Vec<Value> = Vec::new();
    for &id in &order {
        if !tail.contains(&id) {
            continue;
        }
        for v in g.operands(id) {
            let from = &g.node(v.node).op;
            if *from == Op::Input {
                return None;
            }
            if *from != Op::Weight
                && !constant.contains(&v.node)
                && !tail.contains(&v.node)
                && !cut.contains(&v)
            {
                cut.push(v);
            }
        }
    }
    let part =
        |member: &dyn Fn(NodeId) -> bool, inputs: &[Value], outs: &[Value]| -> Option<Model> {
            // the part's nodes and the constant nodes they read
            let mut kept: HashSet<NodeId> = HashSet::new();
            for &id in order.iter().rev() {
                let node = g.node(id);
                if matches!(node.op, Op::Input | Op::Weight) {
                    continue;
                }
                let used = || {
                    (0..node.outputs.len()).any(|k| {
                        g.users(Value {
                            node: id,
                            output: k,
                        })
                        .iter()
                        .any(|(u, _)| kept.contains(u))
                    })
                };
                if (member(id) && !constant.contains(&id)) || (constant.contains(&id) && used()) {
                    kept.insert(id);
                }
            }
            let keep = |id: NodeId| kept.contains(&id);
            let mut p = Graph::new(g.name.clone());
            let mut map: HashMap<Value, Value> = HashMap::new();
            for &w in g.weights() {
                let used = g.users(Value::of(w)).iter().any(|(u, _)| keep(*u));
                if used {
                    let info = &g.node(w).outputs[0];
                    map.insert(
                        Value::of(w),
                        p.add_weight(info.name.clone(), info.ty.clone()).ok()?,
                    );
                }
            }
            for v in inputs {
                let info = g.value_info(*v);
                map.insert(*v, p.add_input(info.name.clone(), info.ty.clone()).ok()?);
            }
            for &id in &order {
                let node = g.node(id);
                if matches!(node.op, Op::Input | Op::Weight) || !keep(id) {
                    continue;
                }
                let operands: Vec<Value> = g.operands(id).iter().map(|v| map[v]).collect();
                let names = node.outputs.iter().map(|o| o.name.clone()).collect();
                let made = p.add_named(node.op.clone(), &operands, names).ok()?;
                for (k, v) in made.into_iter().enumerate() {
                    map.insert(
                        Value {
                            node: id,
                            output: k,
                        },
                        v,
                    );
                }
            }
            p.set_outputs(outs.iter().map(|v| map[v]).collect());
            Some(Model {
                graph: p,
                weights: model.weights.clone(),
            })
        };
    let inputs: Vec<Value> = g.inputs().iter().map(|&i| Value::of(i)).collect();
    Some(Split {
        head: part(&|id| !tail.contains(&id), &inputs, &cut)?,
        tail: part(&|id| tail.contains(&id), &cut, g.outputs())?,
    })
}

/// The batch axis of a weight whose first axis holds the same values for
/// every image (`N · rest` entries, each image's `rest` equal to the
/// first's), or `None`.
fn repeated(model: &Model, v: Value, n: usize) -> Option<Batched> {
    let g = &model.graph;
    if g.node(v.node).op != Op::Weight {
        return None;
    }
    let name = &g.node(v.node).outputs[0].name;
    let t = model.weights.get(name)?;
    let d0 = *t.shape().first()?;
    if d0 == 0 || !d0.is_multiple_of(n) {
        return None;
    }
    fn same<T: PartialEq>(d: &[T], n: usize) -> bool {
        let len = d.len() / n;
        d.chunks_exact(len).all(|c| c == &d[..len])
    }
    let equal = match (t.as_f32(), t.as_i64()) {
        // bit patterns: a NaN repeats too, and -0 differs from +0
        (Some(d), _) => same(&d.iter().map(|x| x.to_bits()).collect::<Vec<_>>(), n),
        (_, Some(d)) => same(d, n),
        _ => false,
    };
    equal.then_some(Batched {
        axis: 0,
        rest: d0 / n,
    })
}

/// Adds to `out` (and `weights`) the first group's slice of the repeated
/// constant `v` (see [`repeated`]), named `NAME.group`.
fn slice_weight(
    model: &Model,
    v: Value,
    b: Batched,
    n: usize,
    images: usize,
    out: &mut Graph,
    weights: &mut WeightStore,
) -> Result<Value, String> {
    let info = &model.graph.node(v.node).outputs[0];
    let t = model
        .weights
        .get(&info.name)
        .ok_or_else(|| format!("weight @{} has no value", info.name))?;
    let mut shape = t.shape().to_vec();
    shape[0] = images * b.rest;
    let keep = t.shape().iter().product::<usize>() / n * images;
    let part = match (t.as_f32(), t.as_i64()) {
        (Some(d), _) => Tensor::from_f32(shape.clone(), d[..keep].to_vec()),
        (_, Some(d)) => Tensor::from_i64(shape.clone(), d[..keep].to_vec()),
        _ => return Err(format!("weight @{}: not f32 or i64", info.name)),
    }
    .map_err(|e| e.to_string())?;
    let mut name = format!("{}.group", info.name);
    while model.graph.weight_by_name(&name).is_some() {
        name.push('_');
    }
    let value = out
        .add_weight(name.clone(), TensorType::new(info.ty.dtype, shape))
        .map_err(|e| e.to_string())?;
    weights.insert(name, part);
    Ok(value)
}

/// The batch axis of `op`'s results, given its operands' (`ins`, at least
/// one batched) and types; `Ok(None)` or an error (saying why) when the op
/// would mix images. Every output of a multi-output op (split) has the
/// same batch axis.
///
/// - element-wise ops, clip, casts: the operands' axis, aligned from the
///   right as broadcasting aligns them; an image-independent operand must
///   have size 1 (or nothing) there, every batched one the same axis;
/// - softmax, layer norm, reductions: the batch axis is not normalised or
///   reduced; group and batch norm, pooling, resize, conv: the batch is
///   axis 0 (conv: of the input; weights and bias image-independent);
/// - matmul: the batch in a broadcast batch axis, or the rows of the left
///   operand, or the columns of the right one — never the summed axis;
///   gemm likewise with its transposes;
/// - reshape, flatten, squeeze, unsqueeze: the output axis that starts at
///   the same offset as the batch axis and is a multiple of the batch;
/// - transpose: where the permutation puts it; concat, split, slice, pad,
///   gather: along other axes only (a slice may keep the batch axis whole);
/// - expand: a batched input keeps its axis; an image-independent one
///   broadcast along axis 0 to a multiple of the batch gains it there.
fn rule(
    op: &Op,
    ins: &[Option<Batched>],
    types: &[&TensorType],
    outs: &[&TensorType],
    n: usize,
) -> Result<Option<Batched>, String> {
    let first = ins.iter().flatten().next().copied();
    let Some(b) = first else {
        return Ok(None);
    };
    let rank = |k: usize| types[k].shape.len();
    let out_rank = outs[0].shape.len();
    // only operand 0 batched, the others image-independent
    let only_first = || ins[0].is_some() && ins[1..].iter().all(Option::is_none);
    let same_axis = |ok: bool| if ok { Ok(Some(b)) } else { Ok(None) };
    Ok(match op {
        Op::Input | Op::Weight => unreachable!("inputs and weights have no operands"),
        Op::Fused(_) => {
            return Err("fused ops come from the optimiser; split the batch before it".into());
        }
        Op::Unary(_) | Op::Clip { .. } | Op::HardSigmoid { .. } | Op::Cast { .. } => Some(b),
        Op::Binary(_) => broadcast(ins, types, out_rank)?,
        Op::Softmax { axis } => return same_axis(b.axis != *axis),
        Op::LayerNorm { axis, .. } => return same_axis(only_first() && b.axis < *axis),
        Op::GroupNorm { .. } | Op::Conv2d { .. } => return same_axis(only_first() && b.axis == 0),
        Op::BatchNorm { .. } => return same_axis(only_first() && b.axis != 1),
        Op::GlobalAvgPool | Op::Pool2d { .. } | Op::Resize { .. } => {
            return same_axis(only_first() && b.axis < 2);
        }
        Op::Reduce { axes, keepdims, .. } => {
            if axes.contains(&b.axis) {
                return Ok(None);
            }
            let before = if *keepdims {
                0
            } else {
                axes.iter().filter(|&&a| a < b.axis).count()
            };
            Some(Batched {
                axis: b.axis - before,
                rest: b.rest,
            })
        }
        Op::MatMul => matmul(ins, types, out_rank)?,
        Op::Gemm {
            trans_a, trans_b, ..
        } => {
            let c_ok = |axis: usize| {
                ins.get(2).is_none_or(|c| c.is_none())
                    && types.get(2).is_none_or(|t| {
                        let r = t.shape.len();
                        // c broadcast to [M, N] from the right
                        axis + r < 2 || t.shape[axis + r - 2] == 1
                    })
            };
            match (ins[0], ins[1]) {
                (Some(a), None) if a.axis == usize::from(*trans_a) && c_ok(0) => {
                    Some(Batched { axis: 0, ..a })
                }
                (None, Some(bb)) if bb.axis == usize::from(!*trans_b) && c_ok(1) => {
                    Some(Batched { axis: 1, ..bb })
                }
                _ => None,
            }
        }
        Op::Reshape { .. } | Op::Flatten { .. } | Op::Squeeze { .. } | Op::Unsqueeze { .. } => {
            reshaped(b, &types[0].shape, &outs[0].shape, n)
        }
        Op::Transpose { perm } => perm
            .iter()
            .position(|&p| p == b.axis)
            .map(|axis| Batched { axis, rest: b.rest }),
        Op::Concat { axis } => {
            return same_axis(*axis != b.axis && ins.iter().all(|i| *i == Some(b)));
        }
        Op::Split { axis, .. } => return same_axis(*axis != b.axis),
        Op::Slice {
            axes,
            starts,
            ends,
            steps,
        } => {
            let dim = types[0].shape[b.axis] as i64;
            let whole = axes
                .iter()
                .zip(starts.iter().zip(ends).zip(steps))
                .all(|(&a, ((&s, &e), &st))| a != b.axis || (s == 0 && e >= dim && st == 1));
            return same_axis(whole);
        }
        Op::Pad { pads, .. } => {
            return same_axis(pads[b.axis] == 0 && pads[b.axis + rank(0)] == 0);
        }
        Op::Gather {
            axis,
            indices_shape,
            ..
        } => {
            if *axis == b.axis {
                return Ok(None);
            }
            let axis_out = if b.axis < *axis {
                b.axis
            } else {
                b.axis + indices_shape.len() - 1
            };
            Some(Batched {
                axis: axis_out,
                rest: b.rest,
            })
        }
        Op::Expand { .. } => Some(Batched {
            axis: b.axis + out_rank - rank(0),
            rest: b.rest,
        }),
    })
}

/// An image-independent value expanded along axis 0 to a multiple of the
/// batch (a class token `cls.expand(N, -1, -1)`): every image's slice is
/// the same, so the result is batched on axis 0.
fn broadcast_to_batch(
    op: &Op,
    ins: &[Option<Batched>],
    types: &[&TensorType],
    out: &TensorType,
    n: usize,
) -> Option<Batched> {
    let Op::Expand { .. } = op else {
        return None;
    };
    let (r, d0) = (types[0].shape.len(), *out.shape.first()?);
    let broadcast = r < out.shape.len() || types[0].shape[0] == 1;
    (ins[0].is_none() && broadcast && d0 > 0 && d0.is_multiple_of(n)).then(|| Batched {
        axis: 0,
        rest: d0 / n,
    })
}

/// The batch axis of a broadcasting element-wise result (see [`rule`]).
fn broadcast(
    ins: &[Option<Batched>],
    types: &[&TensorType],
    out_rank: usize,
) -> Result<Option<Batched>, String> {
    let mut found: Option<Batched> = None;
    for (b, t) in ins.iter().zip(types) {
        if let Some(b) = b {
            let at = Batched {
                axis: b.axis + out_rank - t.shape.len(),
                rest: b.rest,
            };
            if found.is_some_and(|f| f != at) {
                return Ok(None);
            }
            found = Some(at);
        }
    }
    let Some(f) = found else {
        return Ok(None);
    };
    for (b, t) in ins.iter().zip(types) {
        let r = t.shape.len();
        if b.is_none() && f.axis + r >= out_rank && t.shape[f.axis + r - out_rank] != 1 {
            return Err("an image-independent operand varies along the batch axis".into());
        }
    }
    Ok(Some(f))
}

/// The batch axis of a matmul result (see [`rule`]).
fn matmul(
    ins: &[Option<Batched>],
    types: &[&TensorType],
    out_rank: usize,
) -> Result<Option<Batched>, String> {
    let (ra, rb) = (types[0].shape.len(), types[1].shape.len());
    if ra < 2 || rb < 2 {
        return Ok(None);
    }
    match (ins[0], ins[1]) {
        // rows of the left operand, the right one shared by every row
        (Some(a), None) if a.axis == ra - 2 => Ok(Some(Batched {
            axis: out_rank - 2,
            ..a
        })),
        // columns of the right operand
        (None, Some(b)) if b.axis == rb - 1 => Ok(Some(Batched {
            axis: out_rank - 1,
            ..b
        })),
        // the summed axis
        (Some(a), _) if a.axis == ra - 1 => Ok(None),
        (_, Some(b)) if b.axis == rb - 2 => Ok(None),
        // a broadcast batch axis (the two matrix axes excluded)
        _ => {
            let r = broadcast(ins, types, out_rank)?;
            Ok(r.filter(|b| b.axis + 2 < out_rank))
        }
    }
}

/// The batch axis after a reshape of `from` into `to`: the axis of `to`
/// that starts at the same element offset as the batch axis of `from`
/// (the same product of the axes before it) and whose size is a multiple
/// of the batch. Then the batch is its major factor too: both axes cover
/// `N · rest · (what follows)` elements from that offset.
fn reshaped(b: Batched, from: &[usize], to: &[usize], n: usize) -> Option<Batched> {
    let offset: usize = from[..b.axis].iter().product();
    let mut before = 1usize;
    for (axis, &d) in to.iter().enumerate() {
        if before == offset && d > 0 && d.is_multiple_of(n) {
            return Some(Batched { axis, rest: d / n });
        }
        before = before.saturating_mul(d);
        if before > offset {
            return None;
        }
    }
    None
}

/// `op` for the smaller batch: the shape attributes that spell out the
/// batch axis (`b`, in the result `out`) get `images · rest` there.
fn respell(op: &Op, b: Batched, out: &TensorType, n: usize, images: usize) -> Op {
    let smaller = |shape: &[usize]| {
        let mut s = shape.to_vec();
        // expand's shape is aligned to the result from the right
        let at = b.axis + s.len() - out.shape.len();
        if s[at] == n * b.rest {
            s[at] = images * b.rest;
        }
        s
    };
    match op {
        Op::Reshape { shape } => Op::Reshape {
            shape: smaller(shape),
        },
        Op::Expand { shape } if shape.len() + b.axis >= out.shape.len() => Op::Expand {
            shape: smaller(shape),
        },
        _ => op.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rest_of(shape: &[usize], from: usize, to: &[usize]) -> Option<(usize, usize)> {
        reshaped(
            Batched {
                axis: from,
                rest: 1,
            },
            shape,
            to,
            2,
        )
        .map(|b| (b.axis, b.rest))
    }

    #[test]
    fn a_reshape_keeps_the_batch_where_it_stays_the_major_factor() {
        // [N, C, HW] from [N, C, H, W]
        assert_eq!(rest_of(&[2, 3, 4, 4], 0, &[2, 3, 16]), Some((0, 1)));
        // MobileViT's unfold: the batch merged into the leading axis
        assert_eq!(rest_of(&[2, 3, 4, 4], 0, &[12, 2, 2, 2]), Some((0, 6)));
        // a size-1 axis before it
        assert_eq!(rest_of(&[2, 6], 0, &[1, 2, 6]), Some((1, 1)));
        // [N, C] → [C, N] interleaves the images
        assert_eq!(rest_of(&[2, 3], 0, &[3, 2]), None);
        // batch behind another axis, reshaped across it
        assert_eq!(rest_of(&[3, 2, 5], 1, &[30]), None);
    }
}
