//! Rewrite rules, one file per family, and the small framework they share.
//!
//! Attributes make egg's s-expression patterns awkward (a pattern would have
//! to spell `conv2d {stride=[1,1], ...}` exactly), so most rules are Rust
//! matchers: a rule ([`rule`]) names a root op filter and a function that looks at
//! one e-node of a class and returns [`Recipe`]s — small lists of new
//! e-nodes over existing classes whose root is equal to the matched class.
//! The applier type-checks every recipe node with the IR's shape inference
//! before adding it, and only merges a root whose type equals the matched
//! class's: a rule can be too eager, never ill-typed.
//!
//! Writing a rule (see also docs/passes.md):
//! - give it a stable name `family-what` (it is reported and tested by name);
//! - match through the helpers here, which see all e-nodes of a class and
//!   both operand orders of commutative ops, so one matcher covers
//!   `x*sigmoid(x)` and `sigmoid(x)*x` without commutativity rewrites that
//!   would grow the e-graph;
//! - never require a value to have a single use: sharing is the cost
//!   model's business (extraction is DAG-aware), so a fusion that duplicates
//!   work is simply not chosen when it does not pay.

pub mod activations;
pub mod bn_fold;
pub mod canon;
pub mod conv;
pub mod conv_chain;
pub mod f2m;
pub mod layout;
pub mod linear;
pub mod m2f;
pub mod mha;
pub mod sep_attn;
pub mod view;
pub mod xca;

use egg::{Applier, Id, PatternAst, Rewrite, SearchMatches, Searcher, Subst, Symbol, Var};
use kiln_ir::op::{BinaryOp, Float, Op, UnaryOp};
use kiln_ir::{Act, FusedOp, TensorType};

use crate::lang::{Head, KAnalysis, KGraph, KNode, node_types};

/// A rewrite over the optimiser's e-graph.
pub type Rw = Rewrite<KNode, KAnalysis>;

/// A reference inside a [`Recipe`]: an existing class or a recipe node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum R {
    /// an existing e-class
    Old(Id),
    /// the `i`-th node of the recipe
    New(usize),
}

/// New e-nodes to add, in dependency order.
#[derive(Clone, Debug, Default)]
pub struct Recipe {
    nodes: Vec<(Head, Vec<R>)>,
}

impl Recipe {
    /// An empty recipe.
    pub fn new() -> Recipe {
        Recipe::default()
    }

    /// Adds `op(args)`.
    pub fn op(&mut self, op: Op, args: &[R]) -> R {
        self.nodes.push((Head::Op(op), args.to_vec()));
        R::New(self.nodes.len() - 1)
    }

    /// Adds output `i` of the multi-output op `x`.
    pub fn proj(&mut self, x: R, i: usize) -> R {
        self.nodes.push((Head::Proj(i), vec![x]));
        R::New(self.nodes.len() - 1)
    }

    /// Adds a fused op.
    pub fn fused(&mut self, f: FusedOp, args: &[R]) -> R {
        self.op(Op::Fused(f), args)
    }

    /// Adds a scalar constant.
    pub fn konst(&mut self, x: f32) -> R {
        self.nodes.push((Head::Const(Float(x)), vec![]));
        R::New(self.nodes.len() - 1)
    }

    /// Adds `a ⊕ b`.
    pub fn bin(&mut self, b: BinaryOp, x: R, y: R) -> R {
        self.op(Op::Binary(b), &[x, y])
    }

    /// Adds a reshape.
    pub fn reshape(&mut self, x: R, shape: &[usize]) -> R {
        self.op(
            Op::Reshape {
                shape: shape.to_vec(),
            },
            &[x],
        )
    }

    /// Adds a transpose.
    pub fn transpose(&mut self, x: R, perm: &[usize]) -> R {
        self.op(
            Op::Transpose {
                perm: perm.to_vec(),
            },
            &[x],
        )
    }
}

/// What a matcher returns: recipes whose root equals the matched class.
pub type Found = Vec<(Recipe, R)>;

/// A matcher: the e-graph, the matched class and one of its e-nodes whose
/// op passed the rule's filter.
pub type MatchFn = fn(&KGraph, Id, &KNode) -> Found;

/// A rule's root filter.
pub type Filter = fn(&Op) -> bool;

/// A root filter on whole e-nodes, for rules whose root is not an op (a
/// weight, one output of a multi-output op).
pub type NodeFilter = fn(&KNode) -> bool;

/// Which e-nodes a rule's matcher is called on.
#[derive(Clone, Copy)]
enum Root {
    Op(Filter),
    Node(NodeFilter),
}

impl Root {
    fn hits(self, n: &KNode) -> bool {
        match self {
            Root::Op(f) => n.as_op().is_some_and(f),
            Root::Node(f) => f(n),
        }
    }
}

/// Builds a named rewrite from a root filter and a matcher.
pub fn rule(name: &'static str, filter: Filter, f: MatchFn) -> Rw {
    root_rule(name, Root::Op(filter), f)
}

/// [`rule`] with a filter on whole e-nodes (leaves and projections too).
pub fn node_rule(name: &'static str, filter: NodeFilter, f: MatchFn) -> Rw {
    root_rule(name, Root::Node(filter), f)
}

fn root_rule(name: &'static str, filter: Root, f: MatchFn) -> Rw {
    Rewrite::new(name, RootSearcher { filter }, RecipeApplier { filter, f })
        .unwrap_or_else(|e| panic!("invariant: rule {name} is well-formed: {e}"))
}

/// An e-graph searcher that matches every class with an e-node that passes
/// the filter; the real matching happens in the applier, which can see the
/// whole class and its analysis data.
struct RootSearcher {
    filter: Root,
}

impl Searcher<KNode, KAnalysis> for RootSearcher {
    fn search_eclass_with_limit(
        &self,
        eg: &KGraph,
        eclass: Id,
        limit: usize,
    ) -> Option<SearchMatches<'_, KNode>> {
        let hit = limit > 0 && eg[eclass].nodes.iter().any(|n| self.filter.hits(n));
        hit.then(|| SearchMatches {
            eclass,
            substs: vec![Subst::with_capacity(0)],
            ast: None,
        })
    }

    fn vars(&self) -> Vec<Var> {
        vec![]
    }
}

struct RecipeApplier {
    filter: Root,
    f: MatchFn,
}

impl Applier<KNode, KAnalysis> for RecipeApplier {
    fn apply_one(
        &self,
        eg: &mut KGraph,
        eclass: Id,
        _subst: &Subst,
        _ast: Option<&PatternAst<KNode>>,
        _rule: Symbol,
    ) -> Vec<Id> {
        let roots: Vec<KNode> = eg[eclass]
            .nodes
            .iter()
            .filter(|n| self.filter.hits(n))
            .cloned()
            .collect();
        let mut found = Vec::new();
        for n in &roots {
            found.extend((self.f)(eg, eclass, n));
        }
        let mut changed = Vec::new();
        for (recipe, root) in found {
            if let Some(id) = build(eg, &recipe, root)
                && eg[id].data.types == eg[eclass].data.types
                && eg.union(eclass, id)
            {
                changed.push(eclass);
            }
        }
        changed
    }
}

/// Adds a recipe's nodes, type-checking each; `None` if one is ill-typed.
fn build(eg: &mut KGraph, recipe: &Recipe, root: R) -> Option<Id> {
    let mut ids: Vec<Id> = Vec::with_capacity(recipe.nodes.len());
    for (head, args) in &recipe.nodes {
        let args: Vec<Id> = args
            .iter()
            .map(|r| match r {
                R::Old(i) => *i,
                R::New(k) => ids[*k],
            })
            .collect();
        let node = KNode {
            head: head.clone(),
            args,
        };
        node_types(eg, &node).ok()?;
        ids.push(eg.add(node));
    }
    Some(match root {
        R::Old(i) => i,
        R::New(k) => ids[k],
    })
}

/// Every rule of every family, in a fixed order.
pub fn all() -> Vec<Rw> {
    let mut v = Vec::new();
    v.extend(canon::rules());
    v.extend(activations::rules());
    v.extend(bn_fold::rules());
    v.extend(conv::rules());
    v.extend(linear::rules());
    v.extend(conv_chain::rules());
    v.extend(mha::rules());
    v.extend(m2f::rules());
    v.extend(f2m::rules());
    v.extend(sep_attn::rules());
    v.extend(layout::rules());
    v.extend(xca::rules());
    v
}

// ---- matching helpers -------------------------------------------------

/// The type of a single-value class.
pub fn ty(eg: &KGraph, id: Id) -> &TensorType {
    eg[id].data.ty()
}

/// Whether the class depends only on weights and constants.
pub fn konst(eg: &KGraph, id: Id) -> bool {
    eg[id].data.konst
}

/// The class's scalar value, if it is a one-element constant.
pub fn scalar(eg: &KGraph, id: Id) -> Option<f32> {
    eg[id].data.scalar
}

/// Whether the class is the scalar `v`: within 1e-6 relative, which
/// absorbs how an exporter rounded a constant (`0.70710677` vs `1/√2`,
/// `1/1.4142135`), and exactly when `v` is 0 (`max(x, 1e-12)` is not a
/// ReLU).
pub fn is_scalar(eg: &KGraph, id: Id, v: f32) -> bool {
    scalar(eg, id).is_some_and(|x| (x - v).abs() <= 1e-6 * v.abs())
}

/// The e-nodes of a class whose op satisfies `pred`, with their operands.
pub fn ops<'a>(
    eg: &'a KGraph,
    id: Id,
    pred: impl Fn(&Op) -> bool + 'a,
) -> impl Iterator<Item = (&'a Op, &'a [Id])> + 'a {
    eg[id]
        .nodes
        .iter()
        .filter_map(move |n| n.as_op().filter(|op| pred(op)).map(|op| (op, &n.args[..])))
}

/// The operands of every `u(x)` e-node of the class.
pub fn unary(eg: &KGraph, id: Id, u: UnaryOp) -> Vec<Id> {
    ops(eg, id, move |op| *op == Op::Unary(u))
        .map(|(_, a)| a[0])
        .collect()
}

/// `(a, b)` for every `a ⊕ b` e-node of the class; for commutative ops
/// (add, mul, max, min) also `(b, a)`.
pub fn binary(eg: &KGraph, id: Id, b: BinaryOp) -> Vec<(Id, Id)> {
    let commutes = matches!(
        b,
        BinaryOp::Add | BinaryOp::Mul | BinaryOp::Max | BinaryOp::Min
    );
    let mut v = Vec::new();
    for (_, a) in ops(eg, id, move |op| *op == Op::Binary(b)) {
        v.push((a[0], a[1]));
        if commutes && a[0] != a[1] {
            v.push((a[1], a[0]));
        }
    }
    v
}

/// `x` for every way the class is `x · c` or `x / (1/c)` with a scalar
/// constant equal to `c` (either operand order for the product).
pub fn scaled_by(eg: &KGraph, id: Id, c: f32) -> Vec<Id> {
    let mut v: Vec<Id> = binary(eg, id, BinaryOp::Mul)
        .into_iter()
        .filter(|&(_, k)| is_scalar(eg, k, c))
        .map(|(x, _)| x)
        .collect();
    v.extend(
        binary(eg, id, BinaryOp::Div)
            .into_iter()
            .filter(|&(_, k)| is_scalar(eg, k, 1.0 / c))
            .map(|(x, _)| x),
    );
    v
}

/// `(x, s)` for every way the class is `x` times a scalar constant `s`
/// (`x·s`, `s·x`, `x/(1/s)`), plus `(class, 1)`.
pub fn with_scale(eg: &KGraph, id: Id) -> Vec<(Id, f32)> {
    let mut v = vec![(id, 1.0)];
    for (x, k) in binary(eg, id, BinaryOp::Mul) {
        if let Some(s) = scalar(eg, k)
            && scalar(eg, x).is_none()
        {
            v.push((x, s));
        }
    }
    for (x, k) in binary(eg, id, BinaryOp::Div) {
        if let Some(s) = scalar(eg, k)
            && s != 0.0
        {
            v.push((x, 1.0 / s));
        }
    }
    v
}

/// A linear map found in a class: `x @ w (+ b)`, `w` a constant matrix in
/// matmul layout `[K, N]`, `b` a constant `[N]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lin {
    /// the input
    pub x: Id,
    /// the weight (matmul layout)
    pub w: Id,
    /// the bias
    pub b: Option<Id>,
}

fn is_matrix_const(eg: &KGraph, w: Id) -> bool {
    konst(eg, w) && ty(eg, w).rank() == 2
}

/// Every way the class is a linear map with constant weights: primitive
/// `matmul(x, w) + b` (either order of the add), or an epilogue-free
/// `fused_linear`.
pub fn linears(eg: &KGraph, id: Id) -> Vec<Lin> {
    let mut v = Vec::new();
    let bare = |m: Id| -> Vec<(Id, Id)> {
        ops(eg, m, |op| *op == Op::MatMul)
            .filter(|(_, a)| is_matrix_const(eg, a[1]))
            .map(|(_, a)| (a[0], a[1]))
            .collect()
    };
    for (x, w) in bare(id) {
        v.push(Lin { x, w, b: None });
    }
    for (m, b) in binary(eg, id, BinaryOp::Add) {
        let bt = ty(eg, b);
        if !konst(eg, b) || bt.rank() != 1 {
            continue;
        }
        for (x, w) in bare(m) {
            if ty(eg, w).shape[1] == bt.shape[0] {
                v.push(Lin { x, w, b: Some(b) });
            }
        }
    }
    for (op, a) in ops(eg, id, |op| matches!(op, Op::Fused(FusedOp::Linear { .. }))) {
        if let Op::Fused(FusedOp::Linear {
            bias,
            act: Act::None,
            residual: false,
        }) = op
        {
            v.push(Lin {
                x: a[0],
                w: a[1],
                b: bias.then(|| a[2]),
            });
        }
    }
    v.sort_by_key(|l| (l.x, l.w, l.b));
    v.dedup();
    v
}

/// Every way the class is a linear map `x @ w (+ b)`, as `(x, w, b)`.
pub fn linear_maps(eg: &KGraph, id: Id) -> Vec<(Id, Id, Option<Id>)> {
    linears(eg, id)
        .into_iter()
        .map(|l| (l.x, l.w, l.b))
        .collect()
}

/// The bias operand of a fused op whose projection had bias `b`: `b`
/// itself, or zeros of the weight's output width (a constant the cost
/// model prices at zero and folding turns into a weight) for a bias-free
/// layer, so that `qkv_bias=False` models fuse like the others.
pub fn bias_arg(r: &mut Recipe, eg: &KGraph, w: Id, b: Option<Id>) -> R {
    match b {
        Some(b) => R::Old(b),
        None => {
            let n = ty(eg, w).shape[1];
            let z = r.konst(0.0);
            r.op(Op::Expand { shape: vec![n] }, &[z])
        }
    }
}

/// The standard hard sigmoid applied to some `x`, in every spelling a
/// canonicalised class carries (`hard_sigmoid {1/6, 0.5}`; the activation
/// rules turn `relu6(x+3)/6` into it).
pub fn hard_sigmoids(eg: &KGraph, id: Id) -> Vec<Id> {
    let std = Act::HardSigmoid.primitive();
    ops(eg, id, move |op| Some(op) == std.as_ref())
        .map(|(_, a)| a[0])
        .collect()
}
