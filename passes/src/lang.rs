//! The e-graph language and analysis: one e-node per IR op with its
//! attributes, leaves named by their names, a projection node per output of
//! a multi-output op.
//!
//! The [`Analysis`] gives every e-class its types, whether it depends only
//! on weights (so it can be folded at compile time) and, for one-element
//! constants, the value — the facts rules check (groups == channels, softmax
//! axis, token counts, broadcast shapes, "this is the scalar 0.5").

use std::collections::HashMap;

use egg::{Analysis, DidMerge, EGraph, Id, Language};
use kiln_ir::op::{BinaryOp, Float, Op, UnaryOp};
use kiln_ir::shape;
use kiln_ir::{TensorType, WeightStore};

/// What an e-node is: a leaf, an op, or one output of a multi-output op.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Head {
    /// a graph input, by name and type
    Input(String, TensorType),
    /// a weight, by name and type
    Weight(String, TensorType),
    /// a scalar `f32` constant a rule introduced (materialised as a new
    /// weight when the graph is rebuilt)
    Const(Float),
    /// an IR op applied to the children
    Op(Op),
    /// output `i` of the multi-output op in the only child
    Proj(usize),
}

/// An e-node: a [`Head`] and its operand classes, in operand order.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KNode {
    /// the operation
    pub head: Head,
    /// operand e-classes
    pub args: Vec<Id>,
}

impl KNode {
    /// An op node.
    pub fn op(op: Op, args: Vec<Id>) -> KNode {
        KNode {
            head: Head::Op(op),
            args,
        }
    }

    /// The op, if this is an op node.
    pub fn as_op(&self) -> Option<&Op> {
        match &self.head {
            Head::Op(op) => Some(op),
            _ => None,
        }
    }
}

impl Language for KNode {
    type Discriminant = Head;

    fn discriminant(&self) -> Head {
        self.head.clone()
    }

    fn matches(&self, other: &Self) -> bool {
        self.head == other.head && self.args.len() == other.args.len()
    }

    fn children(&self) -> &[Id] {
        &self.args
    }

    fn children_mut(&mut self) -> &mut [Id] {
        &mut self.args
    }
}

/// The e-graph type of the optimiser.
pub type KGraph = EGraph<KNode, KAnalysis>;

/// Per-class facts.
#[derive(Clone, Debug, PartialEq)]
pub struct ClassData {
    /// the types of the class's values: one for an ordinary value, one per
    /// output for a multi-output op's class
    pub types: Vec<TensorType>,
    /// depends on weights and constants only (foldable at compile time)
    pub konst: bool,
    /// the value, when the class is a constant with exactly one element
    pub scalar: Option<f32>,
}

impl ClassData {
    /// The type of a single-value class.
    pub fn ty(&self) -> &TensorType {
        &self.types[0]
    }
}

/// The analysis: knows the values of one-element weights so that scalar
/// constants (scales, epsilons, the `3` and `6` of hard-swish) are visible
/// to rules.
#[derive(Clone, Debug, Default)]
pub struct KAnalysis {
    scalars: HashMap<String, f32>,
}

impl KAnalysis {
    /// An analysis that knows every one-element f32 weight of `weights`.
    pub fn new(weights: &WeightStore) -> KAnalysis {
        let scalars = weights
            .iter()
            .filter(|(_, t)| t.numel() == 1)
            .filter_map(|(n, t)| t.as_f32().map(|d| (n.to_string(), d[0])))
            .collect();
        KAnalysis { scalars }
    }
}

/// The types of `node` given its children's types, or why it is ill-typed.
pub fn node_types(eg: &KGraph, node: &KNode) -> Result<Vec<TensorType>, String> {
    match &node.head {
        Head::Input(_, t) | Head::Weight(_, t) => Ok(vec![t.clone()]),
        Head::Const(_) => Ok(vec![TensorType::f32(Vec::new())]),
        Head::Proj(i) => {
            let d = &eg[node.args[0]].data;
            d.types
                .get(*i)
                .cloned()
                .map(|t| vec![t])
                .ok_or_else(|| format!("projection {i} of a {}-output class", d.types.len()))
        }
        Head::Op(op) => {
            let mut ins = Vec::with_capacity(node.args.len());
            for a in &node.args {
                let d = &eg[*a].data;
                if d.types.len() != 1 {
                    return Err("a multi-output class used as an operand".into());
                }
                ins.push(d.types[0].clone());
            }
            shape::infer(op, &ins)
        }
    }
}

fn fold_scalar(op: &Op, args: &[Option<f32>]) -> Option<f32> {
    let a = *args.first()?;
    Some(match op {
        Op::Unary(u) => {
            let x = a?;
            match u {
                UnaryOp::Sqrt => x.sqrt(),
                UnaryOp::Neg => -x,
                UnaryOp::Reciprocal => 1.0 / x,
                UnaryOp::Identity => x,
                UnaryOp::Exp => x.exp(),
                _ => return None,
            }
        }
        Op::Binary(b) => {
            let (x, y) = (a?, (*args.get(1)?)?);
            match b {
                BinaryOp::Add => x + y,
                BinaryOp::Sub => x - y,
                BinaryOp::Mul => x * y,
                BinaryOp::Div => x / y,
                BinaryOp::Pow => x.powf(y),
                BinaryOp::Max => x.max(y),
                BinaryOp::Min => x.min(y),
                BinaryOp::Mod | BinaryOp::Fmod => return None,
            }
        }
        Op::Reshape { .. }
        | Op::Squeeze { .. }
        | Op::Unsqueeze { .. }
        | Op::Flatten { .. }
        | Op::Transpose { .. }
        | Op::Cast { .. } => a?,
        _ => return None,
    })
}

impl Analysis<KNode> for KAnalysis {
    type Data = ClassData;

    fn make(eg: &mut KGraph, node: &KNode, _id: Id) -> ClassData {
        // Rules only add nodes they type-checked first (rules::Recipe), and
        // the graph's nodes passed the verifier, so inference cannot fail.
        let types = node_types(eg, node)
            .unwrap_or_else(|e| panic!("invariant: e-nodes are well-typed ({node:?}: {e})"));
        let konst = match &node.head {
            Head::Input(..) => false,
            Head::Weight(..) | Head::Const(_) => true,
            Head::Proj(_) | Head::Op(_) => {
                !node.args.is_empty() && node.args.iter().all(|a| eg[*a].data.konst)
            }
        };
        let scalar = match &node.head {
            Head::Weight(name, _) => eg.analysis.scalars.get(name).copied(),
            Head::Const(c) => Some(c.0),
            Head::Op(op) if types.len() == 1 && types[0].numel() == 1 => {
                let args: Vec<Option<f32>> = node.args.iter().map(|a| eg[*a].data.scalar).collect();
                fold_scalar(op, &args)
            }
            _ => None,
        };
        ClassData {
            types,
            konst,
            scalar,
        }
    }

    fn merge(&mut self, a: &mut ClassData, b: ClassData) -> DidMerge {
        debug_assert_eq!(a.types, b.types, "invariant: merged classes have one type");
        let mut changed_a = false;
        if b.konst && !a.konst {
            a.konst = true;
            changed_a = true;
        }
        if a.scalar.is_none() && b.scalar.is_some() {
            a.scalar = b.scalar;
            changed_a = true;
        }
        let changed_b = (a.konst && !b.konst) || (a.scalar.is_some() && b.scalar.is_none());
        DidMerge(changed_a, changed_b)
    }
}
