//! DAG-aware, cost-based extraction ("faster greedy DAG", after
//! extraction-gym): the cost of choosing an e-node is the cost of the
//! *union* of the classes its choice needs, not the sum over a tree.
//!
//! A tree-cost extractor counts a shared sub-graph once per use — the
//! residual input of a block, the tokens that feed Q, the gate and the
//! residual of a bridge — and so over-values any choice that avoids a
//! second use of something that must be computed anyway. Here each class
//! carries the set of classes its current best choice needs (a bitset over
//! class indices); a node's cost is the sum of the local costs over the
//! union of its children's sets plus its own class. A node whose children's
//! union already contains its own class would close a cycle and is skipped.
//!
//! Ties (equal cost) are broken by the smaller needed set, then by the
//! e-node's order, so extraction is deterministic.
//!
//! Greedy per class cannot see that another root needs a value anyway, so
//! a second phase revisits each class of the extracted DAG and keeps an
//! alternative e-node when the cost of the whole DAG, all roots at once,
//! falls. An alternative that is an output of a multi-output op (`split`)
//! is tried together with the op's other used outputs, which share its
//! cost. docs/passes.md says why this rather than egg's `LpExtractor`.
//!
//! The sets make this quadratic in the number of classes (memory and
//! time). Above a work budget (classes × bitset words, the `extract`
//! resource limit) extraction falls back to a linear-time greedy choice by
//! tree cost (`greedy_tree`), and says so ([`Extraction::greedy`]).

use std::collections::{HashMap, VecDeque};
use std::rc::Rc;

use egg::Id;

use crate::cost::CostModel;
use crate::error::PassError;
use crate::lang::{Head, KGraph, KNode};

/// The chosen e-node of every class that has one, and the estimated cost
/// of the DAG needed by the roots.
#[derive(Debug)]
pub struct Extraction {
    /// canonical class id -> chosen e-node
    pub choice: HashMap<Id, KNode>,
    /// estimated microseconds of the extracted graph (cost model units)
    pub cost: f64,
    /// the work the DAG-aware extractor would have taken (classes × bitset
    /// words), when it was over the budget and the greedy tree-cost choice
    /// was made instead
    pub greedy: Option<usize>,
}

/// The local cost of one e-node (its own kernel only).
pub fn node_cost(eg: &KGraph, node: &KNode, model: &CostModel) -> f64 {
    match &node.head {
        Head::Op(op) => {
            let ins: Vec<_> = node
                .args
                .iter()
                .map(|a| eg[*a].data.types[0].clone())
                .collect();
            let Ok(outs) = crate::lang::node_types(eg, node) else {
                return f64::INFINITY;
            };
            let konst = !node.args.is_empty() && node.args.iter().all(|a| eg[*a].data.konst);
            model.op_cost(op, &ins, &outs, konst)
        }
        _ => 0.0,
    }
}

struct Best {
    total: f64,
    count: u32,
    set: Rc<[u64]>,
    node: usize,
}

/// Extracts the cheapest DAG for `roots`, or — when the DAG-aware search
/// would take more than `work_budget` (classes × bitset words) — a greedy
/// choice by tree cost.
pub fn extract(
    eg: &KGraph,
    roots: &[Id],
    model: &CostModel,
    work_budget: usize,
) -> Result<Extraction, PassError> {
    let mut class_ids: Vec<Id> = eg.classes().map(|c| c.id).collect();
    class_ids.sort();
    let index: HashMap<Id, usize> = class_ids.iter().enumerate().map(|(i, &c)| (c, i)).collect();
    let words = class_ids.len().div_ceil(64);
    let work = class_ids.len().saturating_mul(words);
    // Flatten every e-node: (class index, node, child class indices, cost).
    let mut nodes: Vec<FlatNode> = Vec::new();
    for (ci, &c) in class_ids.iter().enumerate() {
        for n in &eg[c].nodes {
            let kids: Vec<usize> = n.args.iter().map(|a| index[&eg.find(*a)]).collect();
            let cost = node_cost(eg, n, model);
            nodes.push((ci, n.clone(), kids, cost));
        }
    }
    let mut parents: Vec<Vec<usize>> = vec![Vec::new(); class_ids.len()];
    for (ni, (_, _, kids, _)) in nodes.iter().enumerate() {
        for &k in kids {
            if parents[k].last() != Some(&ni) {
                parents[k].push(ni);
            }
        }
    }
    let root_idx = roots
        .iter()
        .map(|r| {
            index
                .get(&eg.find(*r))
                .copied()
                .ok_or_else(|| PassError::Internal("root class missing".into()))
        })
        .collect::<Result<Vec<usize>, _>>()?;
    if work > work_budget {
        let pick = greedy_tree(&nodes, &parents, class_ids.len());
        let cost = dag_cost(&nodes, &pick, &root_idx)
            .ok_or_else(|| PassError::Internal("no acyclic extraction for the roots".into()))?;
        return Ok(Extraction {
            choice: choices(&class_ids, &nodes, &pick),
            cost,
            greedy: Some(work),
        });
    }
    let mut local = vec![0.0f64; class_ids.len()];
    let mut best: Vec<Option<Best>> = (0..class_ids.len()).map(|_| None).collect();
    let mut queue: VecDeque<usize> = VecDeque::new();
    let mut queued = vec![false; nodes.len()];
    for (ni, (_, _, kids, _)) in nodes.iter().enumerate() {
        if kids.is_empty() {
            queue.push_back(ni);
            queued[ni] = true;
        }
    }
    // A safety net against ping-pong between classes; extraction-gym's
    // algorithm converges long before this on every graph we have seen.
    let mut budget = 64usize.saturating_mul(nodes.len()).max(1 << 16);
    while let Some(ni) = queue.pop_front() {
        queued[ni] = false;
        budget = budget.saturating_sub(1);
        if budget == 0 {
            break;
        }
        let (ci, node, kids, cost) = &nodes[ni];
        if kids.iter().any(|&k| best[k].is_none()) {
            continue;
        }
        let mut set: Vec<u64> = vec![0; words];
        for &k in kids {
            let ks = &best[k].as_ref().expect("checked above").set;
            for (w, x) in set.iter_mut().zip(ks.iter()) {
                *w |= *x;
            }
        }
        if set[ci / 64] & (1 << (ci % 64)) != 0 {
            continue; // would need itself: a cycle
        }
        set[ci / 64] |= 1 << (ci % 64);
        let mut total = 0.0;
        let mut count = 0u32;
        for (wi, &w) in set.iter().enumerate() {
            let mut w = w;
            count += w.count_ones();
            while w != 0 {
                let b = w.trailing_zeros() as usize;
                let c = wi * 64 + b;
                total += if c == *ci { *cost } else { local[c] };
                w &= w - 1;
            }
        }
        let better = match &best[*ci] {
            None => true,
            Some(b) => {
                (total, count) < (b.total, b.count)
                    || ((total, count) == (b.total, b.count) && node < &nodes[b.node].1)
            }
        };
        if better {
            best[*ci] = Some(Best {
                total,
                count,
                set: set.into(),
                node: ni,
            });
            local[*ci] = *cost;
            for &p in &parents[*ci] {
                if !queued[p] {
                    queued[p] = true;
                    queue.push_back(p);
                }
            }
        }
    }
    let mut pick: Vec<Option<usize>> = best.iter().map(|b| b.as_ref().map(|b| b.node)).collect();
    // Each class's choice was acyclic when it was made, but a child may
    // later have switched to a choice that needs the parent (seen on a
    // MobileViTv2 block once the cost constants were calibrated). Then
    // extract again in an order that cannot close a cycle.
    if dag_cost(&nodes, &pick, &root_idx).is_none() {
        pick = acyclic_greedy(&nodes, &parents, class_ids.len(), words);
    }
    let mut cost = dag_cost(&nodes, &pick, &root_idx)
        .ok_or_else(|| PassError::Internal("no acyclic extraction for the roots".into()))?;
    // Each class's greedy choice is best for that class alone; a fusion that
    // recomputes an intermediate another root needs anyway looks cheap to
    // it. Revisit the choices with the whole DAG's cost (all roots at once).
    let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); class_ids.len()];
    for (ni, n) in nodes.iter().enumerate() {
        by_class[n.0].push(ni);
    }
    for _round in 0..4 {
        let mut improved = false;
        let used = used_classes(&nodes, &pick, &root_idx);
        let mut in_use = vec![false; pick.len()];
        for &c in &used {
            in_use[c] = true;
        }
        for &c in &used {
            let current = pick[c];
            for &alt in &by_class[c] {
                if Some(alt) == current || nodes[alt].2.iter().any(|&k| pick[k].is_none()) {
                    continue;
                }
                // An output of a multi-output op pays for the whole op, so
                // one output alone never beats its single-output spelling
                // (a `split` output against a `slice`): switch every used
                // output of that op at once.
                let mut switched = vec![(c, current)];
                pick[c] = Some(alt);
                if let Head::Proj(_) = nodes[alt].1.head {
                    let op = nodes[alt].2[0];
                    for &c2 in &used {
                        if c2 == c || pick[c2].is_some_and(|p| is_proj_of(&nodes[p], op)) {
                            continue;
                        }
                        if let Some(&p2) = by_class[c2].iter().find(|&&n| is_proj_of(&nodes[n], op))
                        {
                            switched.push((c2, pick[c2]));
                            pick[c2] = Some(p2);
                        }
                    }
                }
                let mut t = dag_cost(&nodes, &pick, &root_idx);
                // The alternative may need a class the DAG did not use,
                // whose own greedy pick recomputes what the DAG has
                // (layer scale folded into a conv whose plain output is
                // still needed: the folded class picks the second conv).
                // Re-pick each such child by the whole DAG's cost too.
                for &k in &nodes[alt].2 {
                    if in_use[k] {
                        continue;
                    }
                    let was = pick[k];
                    for &alt2 in &by_class[k] {
                        if Some(alt2) == pick[k] || nodes[alt2].2.iter().any(|&j| pick[j].is_none())
                        {
                            continue;
                        }
                        let keep = pick[k];
                        pick[k] = Some(alt2);
                        match (dag_cost(&nodes, &pick, &root_idx), t) {
                            (Some(t2), Some(t1)) if t2 < t1 => t = Some(t2),
                            (Some(t2), None) => t = Some(t2),
                            _ => pick[k] = keep,
                        }
                    }
                    if pick[k] != was {
                        switched.push((k, was));
                    }
                }
                match t {
                    Some(t) if t < cost - 1e-9 * cost.abs().max(1.0) => {
                        cost = t;
                        improved = true;
                        break;
                    }
                    _ => {
                        for (c2, was) in switched.into_iter().rev() {
                            pick[c2] = was;
                        }
                    }
                }
            }
        }
        if !improved {
            break;
        }
    }
    Ok(Extraction {
        choice: choices(&class_ids, &nodes, &pick),
        cost,
        greedy: None,
    })
}

type FlatNode = (usize, KNode, Vec<usize>, f64);

/// The chosen e-node of every class that has a pick.
fn choices(class_ids: &[Id], nodes: &[FlatNode], pick: &[Option<usize>]) -> HashMap<Id, KNode> {
    pick.iter()
        .enumerate()
        .filter_map(|(ci, p)| p.map(|p| (class_ids[ci], nodes[p].1.clone())))
        .collect()
}

/// The greedy fallback: each class takes the e-node of least *tree* cost
/// (its own cost plus its children's, a shared child counted once per use),
/// found by a worklist that revisits a node's parents when its class
/// improves. No sets: memory and time are linear in the e-graph, times the
/// few rounds until costs settle. A class only changes for a strictly lower
/// cost, and costs are non-negative, so a choice can never come to need its
/// own class (that would cost at least as much as the class already does).
fn greedy_tree(nodes: &[FlatNode], parents: &[Vec<usize>], classes: usize) -> Vec<Option<usize>> {
    let mut best: Vec<Option<(f64, usize)>> = vec![None; classes];
    let mut queue: VecDeque<usize> = VecDeque::new();
    let mut queued = vec![false; nodes.len()];
    for (ni, n) in nodes.iter().enumerate() {
        if n.2.is_empty() {
            queue.push_back(ni);
            queued[ni] = true;
        }
    }
    while let Some(ni) = queue.pop_front() {
        queued[ni] = false;
        let (ci, _, kids, cost) = &nodes[ni];
        let mut total = cost.max(0.0);
        let mut ready = true;
        for &k in kids {
            match best[k] {
                Some((t, _)) => total += t,
                None => {
                    ready = false;
                    break;
                }
            }
        }
        if !ready || best[*ci].is_some_and(|(t, _)| t <= total) {
            continue;
        }
        best[*ci] = Some((total, ni));
        for &p in &parents[*ci] {
            if !queued[p] {
                queued[p] = true;
                queue.push_back(p);
            }
        }
    }
    best.into_iter().map(|b| b.map(|(_, ni)| ni)).collect()
}

/// Whether the flat node is an output of the multi-output op in class `op`.
fn is_proj_of(n: &FlatNode, op: usize) -> bool {
    matches!(n.1.head, Head::Proj(_)) && n.2 == [op]
}

/// A decided class: its node and the set of classes its DAG needs.
type Final = Option<(usize, Rc<[u64]>)>;

/// Greedy DAG extraction that finalises classes cheapest first (Dijkstra
/// order): a node is considered only once all its children are final, and
/// a final class never changes, so no choice can need its own class. Each
/// class's DAG cost is as in the main loop (local costs summed over the
/// union of the children's sets), only the order of decisions differs.
fn acyclic_greedy(
    nodes: &[FlatNode],
    parents: &[Vec<usize>],
    classes: usize,
    words: usize,
) -> Vec<Option<usize>> {
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;
    let mut fin: Vec<Final> = vec![None; classes];
    let mut local = vec![0.0f64; classes];
    // (total as ordered bits — costs are non-negative —, class count, node)
    let mut heap: BinaryHeap<Reverse<(u64, u32, usize)>> = BinaryHeap::new();
    let candidate = |ni: usize, fin: &[Final], local: &[f64]| {
        let (ci, _, kids, cost) = &nodes[ni];
        let mut set = vec![0u64; words];
        for &k in kids {
            let (_, ks) = fin[k].as_ref()?;
            for (w, x) in set.iter_mut().zip(ks.iter()) {
                *w |= *x;
            }
        }
        set[ci / 64] |= 1 << (ci % 64);
        let mut total = 0.0;
        let mut count = 0u32;
        for (wi, &w) in set.iter().enumerate() {
            let mut w = w;
            count += w.count_ones();
            while w != 0 {
                let c = wi * 64 + w.trailing_zeros() as usize;
                total += if c == *ci { *cost } else { local[c] };
                w &= w - 1;
            }
        }
        Some((total, count, set))
    };
    for (ni, n) in nodes.iter().enumerate() {
        if n.2.is_empty() {
            heap.push(Reverse((n.3.max(0.0).to_bits(), 1, ni)));
        }
    }
    while let Some(Reverse((_, _, ni))) = heap.pop() {
        let ci = nodes[ni].0;
        if fin[ci].is_some() {
            continue;
        }
        let Some((_, _, set)) = candidate(ni, &fin, &local) else {
            continue;
        };
        fin[ci] = Some((ni, set.into()));
        local[ci] = nodes[ni].3;
        for &p in &parents[ci] {
            if fin[nodes[p].0].is_none()
                && let Some((t, count, _)) = candidate(p, &fin, &local)
            {
                heap.push(Reverse((t.max(0.0).to_bits(), count, p)));
            }
        }
    }
    fin.into_iter().map(|f| f.map(|(ni, _)| ni)).collect()
}

/// The classes the current choice needs for the roots, sorted.
fn used_classes(nodes: &[FlatNode], pick: &[Option<usize>], roots: &[usize]) -> Vec<usize> {
    let mut seen = vec![false; pick.len()];
    let mut stack = roots.to_vec();
    let mut out = Vec::new();
    while let Some(c) = stack.pop() {
        if std::mem::replace(&mut seen[c], true) {
            continue;
        }
        out.push(c);
        if let Some(n) = pick[c] {
            stack.extend(nodes[n].2.iter().copied());
        }
    }
    out.sort_unstable();
    out
}

/// The cost of the DAG the choice needs (each class once), or `None` when
/// it is cyclic or incomplete.
fn dag_cost(nodes: &[FlatNode], pick: &[Option<usize>], roots: &[usize]) -> Option<f64> {
    // 0 = unvisited, 1 = on the stack, 2 = done
    let mut state = vec![0u8; pick.len()];
    let mut total = 0.0;
    let mut stack: Vec<(usize, bool)> = roots.iter().map(|&r| (r, false)).collect();
    while let Some((c, leaving)) = stack.pop() {
        if leaving {
            state[c] = 2;
            continue;
        }
        match state[c] {
            2 => continue,
            1 => return None,
            _ => {}
        }
        let n = pick[c]?;
        state[c] = 1;
        total += nodes[n].3;
        stack.push((c, true));
        for &k in &nodes[n].2 {
            match state[k] {
                1 => return None,
                2 => {}
                _ => stack.push((k, false)),
            }
        }
    }
    Some(total)
}
