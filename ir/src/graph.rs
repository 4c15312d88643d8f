//! The dataflow graph: a petgraph DAG of op nodes whose edges carry values.
//!
//! A node produces one or more values (outputs); an edge from node `a` to
//! node `b` says "output `edge.output` of `a` is operand `edge.operand` of
//! `b`". Inputs and weights are leaf nodes ([`Op::Input`], [`Op::Weight`]).
//! Every value has a name and a static [`TensorType`]; value names are
//! printed `%name`, weight names `@name`, and the two namespaces are separate.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use petgraph::Direction;
use petgraph::stable_graph::{NodeIndex, StableDiGraph};
use petgraph::visit::{EdgeRef, NodeIndexable};

use crate::error::IrError;
use crate::op::Op;
use crate::shape;
use crate::types::TensorType;

/// Identifies a node. Stable across removals of other nodes.
pub type NodeId = NodeIndex<u32>;

/// A value: output `output` of node `node`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Value {
    /// the producing node
    pub node: NodeId,
    /// which of its outputs
    pub output: usize,
}

impl Value {
    /// Output 0 of `node`.
    pub fn of(node: NodeId) -> Value {
        Value { node, output: 0 }
    }
}

/// Name and type of a node's output.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ValueInfo {
    /// name without sigil (`12`, `x`, `blocks.3.dw.weight`)
    pub name: String,
    /// static type
    pub ty: TensorType,
}

/// A node: an op and the values it produces.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    /// the operation
    pub op: Op,
    /// one entry per output, in order
    pub outputs: Vec<ValueInfo>,
}

/// An edge: which output of the source feeds which operand of the target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Edge {
    /// output index at the source node
    pub output: usize,
    /// operand index at the target node
    pub operand: usize,
}

/// A dataflow graph with static shapes. See the module docs.
///
/// The builder methods ([`Graph::add`], [`Graph::add_multi`]) infer output
/// types and can only reference existing values, so graphs built with them
/// are acyclic and well-typed by construction. The raw methods
/// ([`Graph::add_raw`], [`Graph::connect`]) exist for the parser, which must
/// accept anything and leave the judgement to [`crate::verify()`].
#[derive(Clone, Debug, Default)]
pub struct Graph {
    /// the graph's name (printed in the text header)
    pub name: String,
    graph: StableDiGraph<Node, Edge>,
    inputs: Vec<NodeId>,
    weights: Vec<NodeId>,
    outputs: Vec<Value>,
    values: HashMap<String, Value>,
    weight_names: HashMap<String, NodeId>,
    next_auto: usize,
}

impl Graph {
    /// An empty graph.
    pub fn new(name: impl Into<String>) -> Graph {
        Graph {
            name: name.into(),
            ..Graph::default()
        }
    }

    /// Declares a graph input (appended to the input list).
    pub fn add_input(&mut self, name: impl Into<String>, ty: TensorType) -> Result<Value, IrError> {
        let id = self.add_raw(
            Op::Input,
            vec![ValueInfo {
                name: name.into(),
                ty,
            }],
        )?;
        Ok(Value::of(id))
    }

    /// Declares a weight (appended to the weight list). Its value lives in a
    /// [`crate::WeightStore`] under the same name.
    pub fn add_weight(
        &mut self,
        name: impl Into<String>,
        ty: TensorType,
    ) -> Result<Value, IrError> {
        let id = self.add_raw(
            Op::Weight,
            vec![ValueInfo {
                name: name.into(),
                ty,
            }],
        )?;
        Ok(Value::of(id))
    }

    /// Adds a single-output op on existing values; infers its type and gives
    /// the result a fresh numeric name.
    pub fn add(&mut self, op: Op, operands: &[Value]) -> Result<Value, IrError> {
        if op.num_outputs() != 1 {
            return Err(IrError::Graph(format!(
                "{} has {} outputs; use add_multi",
                op.name(),
                op.num_outputs()
            )));
        }
        Ok(self.add_multi(op, operands)?[0])
    }

    /// Adds an op with any number of outputs; infers their types and gives
    /// each a fresh numeric name.
    pub fn add_multi(&mut self, op: Op, operands: &[Value]) -> Result<Vec<Value>, IrError> {
        let names = (0..op.num_outputs()).map(|_| self.fresh_name()).collect();
        self.add_named(op, operands, names)
    }

    /// Adds an op whose outputs get the given names (one per output).
    pub fn add_named(
        &mut self,
        op: Op,
        operands: &[Value],
        names: Vec<String>,
    ) -> Result<Vec<Value>, IrError> {
        let types: Vec<TensorType> = operands
            .iter()
            .map(|v| self.try_value_info(*v).map(|i| i.ty.clone()))
            .collect::<Result<_, _>>()?;
        // the verifier's rules for a new node: types, and empty operands
        let out = shape::infer(&op, &types)
            .and_then(|out| crate::verify::check_empty(&op, &types, &out).map(|()| out))
            .map_err(|msg| IrError::Node {
                node: format!("new {} node", op.name()),
                msg,
            })?;
        if names.len() != out.len() {
            return Err(IrError::Graph(format!(
                "{} produces {} values, {} names given",
                op.name(),
                out.len(),
                names.len()
            )));
        }
        let infos = names
            .into_iter()
            .zip(out)
            .map(|(name, ty)| ValueInfo { name, ty })
            .collect();
        let id = self.add_raw(op, infos)?;
        for (i, v) in operands.iter().enumerate() {
            self.connect(*v, id, i);
        }
        Ok((0..self.graph[id].outputs.len())
            .map(|output| Value { node: id, output })
            .collect())
    }

    /// Adds a node with the given op and declared outputs but no operands;
    /// checks only that names are new and that each type can exist
    /// ([`TensorType::check_size`]). Inputs and weights are registered in
    /// declaration order. Used by the parser; see [`Graph::connect`].
    pub fn add_raw(&mut self, op: Op, outputs: Vec<ValueInfo>) -> Result<NodeId, IrError> {
        let is_weight = op == Op::Weight;
        for info in &outputs {
            info.ty
                .check_size()
                .map_err(|msg| IrError::Graph(format!("value {}: {msg}", info.name)))?;
            let taken = if is_weight {
                self.weight_names.contains_key(&info.name)
            } else {
                self.values.contains_key(&info.name)
            };
            if taken {
                let sigil = if is_weight { '@' } else { '%' };
                return Err(IrError::Graph(format!(
                    "duplicate name {sigil}{}",
                    info.name
                )));
            }
        }
        let is_input = op == Op::Input;
        let id = self.graph.add_node(Node { op, outputs });
        for (output, info) in self.graph[id].outputs.iter().enumerate() {
            if is_weight {
                self.weight_names.insert(info.name.clone(), id);
            } else {
                self.values
                    .insert(info.name.clone(), Value { node: id, output });
                // Keep auto-generated names clear of numeric names given by hand.
                if let Ok(n) = info.name.parse::<usize>() {
                    self.next_auto = self.next_auto.max(n.saturating_add(1));
                }
            }
        }
        if is_weight {
            self.weights.push(id);
        } else if is_input {
            self.inputs.push(id);
        }
        Ok(id)
    }

    /// Makes `value` operand `operand` of `node`. Does not check anything;
    /// [`crate::verify()`] does.
    pub fn connect(&mut self, value: Value, node: NodeId, operand: usize) {
        self.graph.add_edge(
            value.node,
            node,
            Edge {
                output: value.output,
                operand,
            },
        );
    }

    /// Sets the graph's outputs, in order.
    pub fn set_outputs(&mut self, outputs: Vec<Value>) {
        self.outputs = outputs;
    }

    /// A fresh numeric value name.
    pub fn fresh_name(&mut self) -> String {
        loop {
            let name = self.next_auto.to_string();
            self.next_auto += 1;
            if !self.values.contains_key(&name) {
                return name;
            }
        }
    }

    /// The node.
    ///
    /// # Panics
    /// If `id` is not in the graph (an internal invariant: ids come from this graph).
    pub fn node(&self, id: NodeId) -> &Node {
        &self.graph[id]
    }

    /// The node, if `id` is in the graph.
    pub fn try_node(&self, id: NodeId) -> Option<&Node> {
        self.graph.node_weight(id)
    }

    /// Mutable access to a node (for passes that rename or retype).
    pub fn node_mut(&mut self, id: NodeId) -> &mut Node {
        &mut self.graph[id]
    }

    /// Every node id, in insertion order.
    pub fn node_ids(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.graph.node_indices()
    }

    /// Number of nodes, leaves included.
    pub fn node_count(&self) -> usize {
        self.graph.node_count()
    }

    /// Number of computing nodes (leaves excluded).
    pub fn op_count(&self) -> usize {
        self.graph
            .node_weights()
            .filter(|n| !n.op.is_leaf())
            .count()
    }

    /// The graph inputs, in order.
    pub fn inputs(&self) -> &[NodeId] {
        &self.inputs
    }

    /// The weight nodes, in declaration order.
    pub fn weights(&self) -> &[NodeId] {
        &self.weights
    }

    /// The graph outputs, in order.
    pub fn outputs(&self) -> &[Value] {
        &self.outputs
    }

    /// The operands of `node`, ordered by operand index. (Missing or
    /// duplicate slots are the verifier's business; here they just sort.)
    pub fn operands(&self, node: NodeId) -> Vec<Value> {
        self.operand_edges(node)
            .into_iter()
            .map(|(_, v)| v)
            .collect()
    }

    /// `(operand index, value)` for every incoming edge, sorted.
    pub fn operand_edges(&self, node: NodeId) -> Vec<(usize, Value)> {
        let mut ops: Vec<(usize, Value)> = self
            .graph
            .edges_directed(node, Direction::Incoming)
            .map(|e| {
                (
                    e.weight().operand,
                    Value {
                        node: e.source(),
                        output: e.weight().output,
                    },
                )
            })
            .collect();
        ops.sort();
        ops
    }

    /// Every use of `value`: `(user node, operand index)`, sorted.
    pub fn users(&self, value: Value) -> Vec<(NodeId, usize)> {
        let mut u: Vec<(NodeId, usize)> = self
            .graph
            .edges_directed(value.node, Direction::Outgoing)
            .filter(|e| e.weight().output == value.output)
            .map(|e| (e.target(), e.weight().operand))
            .collect();
        u.sort();
        u
    }

    /// Name and type of a value.
    ///
    /// # Panics
    /// If the value does not exist (values come from this graph).
    pub fn value_info(&self, v: Value) -> &ValueInfo {
        &self.graph[v.node].outputs[v.output]
    }

    /// Name and type of a value, or an error if it does not exist.
    pub fn try_value_info(&self, v: Value) -> Result<&ValueInfo, IrError> {
        self.graph
            .node_weight(v.node)
            .and_then(|n| n.outputs.get(v.output))
            .ok_or_else(|| IrError::Graph(format!("value {v:?} is not in the graph")))
    }

    /// Type of a value.
    pub fn value_type(&self, v: Value) -> &TensorType {
        &self.value_info(v).ty
    }

    /// Whether the value is a weight.
    pub fn is_weight(&self, v: Value) -> bool {
        self.graph[v.node].op == Op::Weight
    }

    /// The value's name as printed: `%name` or `@name`.
    pub fn display_value(&self, v: Value) -> String {
        match self.try_value_info(v) {
            Ok(info) if self.is_weight(v) => format!("@{}", info.name),
            Ok(info) => format!("%{}", info.name),
            Err(_) => format!("<missing value {v:?}>"),
        }
    }

    /// The node's name in errors: its first value and op, `%12 (conv2d)`.
    pub fn display_node(&self, id: NodeId) -> String {
        match self.try_node(id) {
            Some(n) if !n.outputs.is_empty() => {
                format!("{} ({})", self.display_value(Value::of(id)), n.op.name())
            }
            Some(n) => format!("node {} ({})", id.index(), n.op.name()),
            None => format!("node {} (removed)", id.index()),
        }
    }

    /// The value named `%name`.
    pub fn value_by_name(&self, name: &str) -> Option<Value> {
        self.values.get(name).copied()
    }

    /// The weight named `@name`.
    pub fn weight_by_name(&self, name: &str) -> Option<Value> {
        self.weight_names.get(name).map(|&id| Value::of(id))
    }

    /// Nodes in a deterministic topological order: among the nodes whose
    /// operands are all placed, the earliest inserted goes first (so a graph
    /// prints in the order it was built). Errors on a cycle.
    pub fn topo_order(&self) -> Result<Vec<NodeId>, IrError> {
        let mut indeg: HashMap<NodeId, usize> = self
            .graph
            .node_indices()
            .map(|n| (n, self.graph.edges_directed(n, Direction::Incoming).count()))
            .collect();
        let mut ready: BinaryHeap<Reverse<NodeId>> = indeg
            .iter()
            .filter(|&(_, &d)| d == 0)
            .map(|(&n, _)| Reverse(n))
            .collect();
        let mut order = Vec::with_capacity(indeg.len());
        while let Some(Reverse(n)) = ready.pop() {
            order.push(n);
            for e in self.graph.edges_directed(n, Direction::Outgoing) {
                let d = indeg.get_mut(&e.target()).expect("edge target is a node");
                *d -= 1;
                if *d == 0 {
                    ready.push(Reverse(e.target()));
                }
            }
        }
        if order.len() == self.graph.node_count() {
            Ok(order)
        } else {
            let stuck = self
                .graph
                .node_indices()
                .filter(|n| indeg[n] > 0)
                .min()
                .expect("a cycle leaves some node unplaced");
            Err(IrError::Cycle(self.display_node(stuck)))
        }
    }

    /// Redirects every use of `old` (operands and graph outputs) to `new`.
    pub fn replace_all_uses(&mut self, old: Value, new: Value) {
        for (user, operand) in self.users(old) {
            let edge = self
                .graph
                .edges_directed(old.node, Direction::Outgoing)
                .find(|e| {
                    e.target() == user
                        && e.weight().operand == operand
                        && e.weight().output == old.output
                })
                .map(|e| e.id())
                .expect("users() returned this edge");
            self.graph.remove_edge(edge);
            self.connect(new, user, operand);
        }
        for o in &mut self.outputs {
            if *o == old {
                *o = new;
            }
        }
    }

    /// Removes a node and its edges. Uses of its values become dangling
    /// operands, which the verifier reports; callers remove users first.
    pub fn remove_node(&mut self, id: NodeId) -> Option<Node> {
        let node = self.graph.remove_node(id)?;
        for info in &node.outputs {
            if node.op == Op::Weight {
                self.weight_names.remove(&info.name);
            } else {
                self.values.remove(&info.name);
            }
        }
        self.inputs.retain(|&n| n != id);
        self.weights.retain(|&n| n != id);
        Some(node)
    }

    /// Removes every node that no graph output depends on (graph inputs are
    /// kept: they are part of the signature). Returns how many were removed.
    pub fn remove_dead(&mut self) -> usize {
        let mut live = vec![false; self.graph.node_bound()];
        let mut stack: Vec<NodeId> = self.outputs.iter().map(|v| v.node).collect();
        stack.extend(self.inputs.iter().copied());
        while let Some(n) = stack.pop() {
            if std::mem::replace(&mut live[n.index()], true) {
                continue;
            }
            stack.extend(self.graph.neighbors_directed(n, Direction::Incoming));
        }
        let dead: Vec<NodeId> = self
            .graph
            .node_indices()
            .filter(|n| !live[n.index()])
            .collect();
        for &n in &dead {
            self.remove_node(n);
        }
        dead.len()
    }

    /// The underlying petgraph, for algorithms and Graphviz output.
    pub fn petgraph(&self) -> &StableDiGraph<Node, Edge> {
        &self.graph
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::op::{BinaryOp, UnaryOp};

    fn small() -> (Graph, Value, Value) {
        let mut g = Graph::new("t");
        let x = g.add_input("x", TensorType::f32([2, 3])).unwrap();
        let r = g.add(Op::Unary(UnaryOp::Relu), &[x]).unwrap();
        let s = g.add(Op::Binary(BinaryOp::Sub), &[r, x]).unwrap();
        g.set_outputs(vec![s]);
        (g, x, s)
    }

    #[test]
    fn builds_and_orders() {
        let (g, x, s) = small();
        assert_eq!(
            g.operands(s.node),
            vec![Value::of(g.value_by_name("0").unwrap().node), x]
        );
        assert_eq!(g.topo_order().unwrap().len(), 3);
        assert_eq!(g.display_node(s.node), "%1 (sub)");
        assert_eq!(g.users(x).len(), 2);
    }

    #[test]
    fn duplicate_names_are_rejected() {
        let mut g = Graph::new("t");
        g.add_input("x", TensorType::f32([1])).unwrap();
        assert!(g.add_input("x", TensorType::f32([1])).is_err());
        // weights live in their own namespace
        assert!(g.add_weight("x", TensorType::f32([1])).is_ok());
        assert!(g.add_weight("x", TensorType::f32([1])).is_err());
    }

    #[test]
    fn cycles_are_found() {
        let mut g = Graph::new("t");
        let a = g
            .add_raw(
                Op::Unary(UnaryOp::Relu),
                vec![ValueInfo {
                    name: "a".into(),
                    ty: TensorType::f32([1]),
                }],
            )
            .unwrap();
        let b = g
            .add_raw(
                Op::Unary(UnaryOp::Relu),
                vec![ValueInfo {
                    name: "b".into(),
                    ty: TensorType::f32([1]),
                }],
            )
            .unwrap();
        g.connect(Value::of(a), b, 0);
        g.connect(Value::of(b), a, 0);
        assert!(matches!(g.topo_order(), Err(IrError::Cycle(_))));
    }

    #[test]
    fn replace_and_remove_dead() {
        let (mut g, x, s) = small();
        let relu = g.operands(s.node)[0];
        g.replace_all_uses(relu, x);
        assert_eq!(g.operands(s.node), vec![x, x]);
        assert_eq!(g.remove_dead(), 1);
        assert!(g.value_by_name("0").is_none());
    }
}
