//! Graph → e-graph → graph.
//!
//! Loading adds one e-node per graph node (a multi-output node becomes a
//! tuple class plus one projection per output); rebuilding walks the chosen
//! e-node of every needed class and re-creates the graph with DAG sharing
//! intact (each class becomes at most one node).
//!
//! Determinism and the identity round trip: every class that holds an
//! original value keeps that value's name and its position in the
//! original topological order, and the rebuilt graph inserts nodes in that
//! order (new classes right after their last operand). With no rewrites the
//! rebuilt graph therefore prints exactly as the original.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap, HashSet};

use egg::Id;
use kiln_ir::{Graph, Model, Op, Tensor, TensorType, Value, WeightStore};

use crate::error::PassError;
use crate::lang::{Head, KAnalysis, KGraph, KNode};

/// A model loaded into an e-graph.
pub struct Loaded {
    /// the e-graph
    pub egraph: KGraph,
    /// the class of each graph output, in order
    pub outputs: Vec<Id>,
    /// the class of each graph input, in order (kept even when unused: the
    /// inputs are the model's signature)
    pub inputs: Vec<Id>,
    /// every original computed value: name, class, topological position
    pub values: Vec<(String, Id, usize)>,
    /// every original node's class (the tuple class for a multi-output
    /// node) with its topological position
    pub positions: Vec<(Id, usize)>,
    /// the graph's name
    pub name: String,
    /// the weights, carried through to the rebuilt model
    pub weights: WeightStore,
}

/// Loads `model` into a fresh e-graph.
pub fn load(model: &Model) -> Result<Loaded, PassError> {
    let g = &model.graph;
    let mut eg = KGraph::new(KAnalysis::new(&model.weights));
    let mut ids: HashMap<Value, Id> = HashMap::new();
    let mut values = Vec::new();
    let mut positions = Vec::new();
    for (rank, id) in g.topo_order()?.into_iter().enumerate() {
        let node = g.node(id);
        let info = |o: usize| &node.outputs[o];
        let mut arg_ids = Vec::new();
        for v in g.operands(id) {
            arg_ids.push(*ids.get(&v).ok_or_else(|| {
                PassError::Internal(format!("operand of {} not loaded", g.display_node(id)))
            })?);
        }
        match &node.op {
            Op::Input => {
                let c = eg.add(KNode {
                    head: Head::Input(info(0).name.clone(), info(0).ty.clone()),
                    args: vec![],
                });
                ids.insert(Value::of(id), c);
                positions.push((c, rank));
            }
            Op::Weight => {
                let c = eg.add(KNode {
                    head: Head::Weight(info(0).name.clone(), info(0).ty.clone()),
                    args: vec![],
                });
                ids.insert(Value::of(id), c);
                positions.push((c, rank));
            }
            op if node.outputs.len() == 1 => {
                let c = eg.add(KNode::op(op.clone(), arg_ids));
                ids.insert(Value::of(id), c);
                values.push((info(0).name.clone(), c, rank));
                positions.push((c, rank));
            }
            op => {
                let t = eg.add(KNode::op(op.clone(), arg_ids));
                positions.push((t, rank));
                for (o, out) in node.outputs.iter().enumerate() {
                    let c = eg.add(KNode {
                        head: Head::Proj(o),
                        args: vec![t],
                    });
                    ids.insert(
                        Value {
                            node: id,
                            output: o,
                        },
                        c,
                    );
                    values.push((out.name.clone(), c, rank));
                }
            }
        }
    }
    let look = |v: &Value| {
        ids.get(v)
            .copied()
            .ok_or_else(|| PassError::Internal("graph value not loaded".into()))
    };
    let outputs = g.outputs().iter().map(look).collect::<Result<_, _>>()?;
    let inputs = g
        .inputs()
        .iter()
        .map(|&n| look(&Value::of(n)))
        .collect::<Result<_, _>>()?;
    eg.rebuild();
    Ok(Loaded {
        egraph: eg,
        outputs,
        inputs,
        values,
        positions,
        name: g.name.clone(),
        weights: model.weights.clone(),
    })
}

/// Rebuilds a model from the chosen e-node of each needed class
/// (`choice` is keyed by canonical class id).
pub fn rebuild(l: &Loaded, choice: &HashMap<Id, KNode>) -> Result<Model, PassError> {
    let eg = &l.egraph;
    let find = |id: Id| eg.find(id);
    let chosen = |c: Id| {
        choice
            .get(&c)
            .ok_or_else(|| PassError::Internal(format!("no e-node chosen for class {c}")))
    };
    // Names and positions of the original values, first one per class wins.
    let mut named: HashMap<Id, (String, usize)> = HashMap::new();
    for (name, id, rank) in &l.values {
        named
            .entry(find(*id))
            .or_insert_with(|| (name.clone(), *rank));
    }
    let mut rank_of: HashMap<Id, usize> = HashMap::new();
    for (id, rank) in &l.positions {
        rank_of.entry(find(*id)).or_insert(*rank);
    }
    // Needed classes, reachable from the outputs and inputs through choices.
    let roots: Vec<Id> = l
        .outputs
        .iter()
        .chain(&l.inputs)
        .map(|&i| find(i))
        .collect();
    let mut needed: BTreeSet<Id> = BTreeSet::new();
    let mut stack = roots.clone();
    while let Some(c) = stack.pop() {
        if needed.insert(c) {
            stack.extend(chosen(c)?.args.iter().map(|&a| find(a)));
        }
    }
    // Priority: original position, or right after the latest operand.
    let mut prio: HashMap<Id, (usize, usize)> = HashMap::new();
    let mut order_stack: Vec<(Id, bool)> = roots.iter().map(|&r| (r, false)).collect();
    let mut visiting: HashSet<Id> = HashSet::new();
    while let Some((c, done)) = order_stack.pop() {
        if prio.contains_key(&c) {
            continue;
        }
        let args: Vec<Id> = chosen(c)?.args.iter().map(|&a| find(a)).collect();
        if done {
            let p = match rank_of.get(&c) {
                Some(rank) => (*rank, 0),
                None => (
                    args.iter().map(|a| prio[a].0).max().unwrap_or(0),
                    1 + usize::from(c),
                ),
            };
            prio.insert(c, p);
            continue;
        }
        if !visiting.insert(c) {
            return Err(PassError::Internal(format!(
                "the chosen e-nodes form a cycle through class {c}"
            )));
        }
        order_stack.push((c, true));
        for a in args.into_iter().rev() {
            if !prio.contains_key(&a) {
                order_stack.push((a, false));
            }
        }
    }
    // Kahn's algorithm over the needed classes, smallest priority first.
    let mut users: HashMap<Id, Vec<Id>> = HashMap::new();
    let mut indeg: HashMap<Id, usize> = HashMap::new();
    for &c in &needed {
        let args: BTreeSet<Id> = chosen(c)?.args.iter().map(|&a| find(a)).collect();
        indeg.insert(c, args.len());
        for a in args {
            users.entry(a).or_default().push(c);
        }
    }
    let mut ready: BinaryHeap<Reverse<((usize, usize), Id)>> = needed
        .iter()
        .filter(|c| indeg[c] == 0)
        .map(|&c| Reverse((prio[&c], c)))
        .collect();
    let reserved: HashSet<&str> = l.values.iter().map(|(n, _, _)| n.as_str()).collect();
    let mut next_name = l
        .values
        .iter()
        .filter_map(|(n, _, _)| n.parse::<usize>().ok())
        .max()
        .map_or(0, |m| m + 1);
    let mut fresh = || {
        // Numeric names after every original numeric name: never clashes.
        let n = next_name.to_string();
        next_name += 1;
        n
    };
    let mut graph = Graph::new(l.name.clone());
    let mut weights = l.weights.clone();
    let mut value_of: HashMap<Id, Value> = HashMap::new();
    let mut const_count = 0usize;
    while let Some(Reverse((_, c))) = ready.pop() {
        let node = chosen(c)?;
        let args: Vec<Value> = node.args.iter().map(|&a| value_of[&find(a)]).collect();
        let v = match &node.head {
            Head::Input(name, ty) => graph.add_input(name.clone(), ty.clone())?,
            Head::Weight(name, ty) => graph.add_weight(name.clone(), ty.clone())?,
            Head::Const(x) => {
                let name = loop {
                    let n = format!("opt.const.{const_count}");
                    const_count += 1;
                    if !weights.contains(&n) && graph.weight_by_name(&n).is_none() {
                        break n;
                    }
                };
                weights.insert(name.clone(), Tensor::from_f32(Vec::new(), vec![x.0])?);
                graph.add_weight(name, TensorType::f32(Vec::new()))?
            }
            Head::Proj(i) => Value {
                node: args[0].node,
                output: *i,
            },
            Head::Op(op) => {
                let n_out = op.num_outputs();
                let mut names = Vec::with_capacity(n_out);
                for o in 0..n_out {
                    let own = if n_out == 1 {
                        named.get(&c).map(|(n, _)| n.clone())
                    } else {
                        proj_name(eg, c, o, choice, &named)
                    };
                    names.push(match own {
                        Some(n) => n,
                        None => loop {
                            let n = fresh();
                            if !reserved.contains(n.as_str()) {
                                break n;
                            }
                        },
                    });
                }
                graph.add_named(op.clone(), &args, names)?[0]
            }
        };
        value_of.insert(c, v);
        if let Some(us) = users.get(&c) {
            for &u in us {
                let d = indeg.get_mut(&u).expect("user is needed");
                *d -= 1;
                if *d == 0 {
                    ready.push(Reverse((prio[&u], u)));
                }
            }
        }
    }
    let outputs = l
        .outputs
        .iter()
        .map(|&o| {
            value_of
                .get(&find(o))
                .copied()
                .ok_or_else(|| PassError::Internal("an output was not rebuilt".into()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    graph.set_outputs(outputs);
    Ok(Model { graph, weights })
}

fn proj_name(
    eg: &KGraph,
    tuple: Id,
    o: usize,
    choice: &HashMap<Id, KNode>,
    named: &HashMap<Id, (String, usize)>,
) -> Option<String> {
    let node = KNode {
        head: Head::Proj(o),
        args: vec![tuple],
    };
    let p = eg.lookup(node.clone())?;
    let p = eg.find(p);
    (choice.get(&p)? == &node)
        .then(|| named.get(&p).map(|(n, _)| n.clone()))
        .flatten()
}
