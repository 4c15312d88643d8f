//! The optimisation pipeline: the ordered pass list as plain calls, the
//! verifier between steps in debug builds and tests.
//!
//! ```text
//! verify -> dce -> cse -> load e-graph -> saturate -> extract -> rebuild
//!        -> const_fold -> dce -> verify
//! ```

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use kiln_ir::{Limits, Model, Op, verify, verify_weights};

use crate::const_fold::const_fold;
use crate::cost::CostModel;
use crate::cse::cse;
use crate::dce::dce;
use crate::error::PassError;
use crate::rules::{self, Rw};
use crate::saturate::{SaturationLimits, Stop, saturate};
use crate::{convert, extract};

/// A rule family (one file under `rules/`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    /// transpose/reshape cancellation, identities, scale and softmax motion
    Canon,
    /// SiLU, hard-sigmoid, hard-swish, GELU, layer-norm recognition
    Activations,
    /// batch-norm folding into convs and linears
    BnFold,
    /// `fused_conv`: bias, shuffle, activation and residual epilogues
    Conv,
    /// `fused_linear`: activation and residual epilogues
    Linear,
    /// `fused_conv_chain`: depthwise-separable / inverted-residual chains
    ConvChain,
    /// `fused_mha`: multi-head attention
    Mha,
    /// `fused_m2f`: Mobile-Former's Mobile→Former bridge
    M2f,
    /// `fused_f2m`: Mobile-Former's Former→Mobile bridge
    F2m,
    /// MobileViTv2 separable attention
    SepAttn,
    /// spatial ops commuting with unfold/fold
    Layout,
    /// XFormer-R cross-feature attention
    Xca,
}

impl Family {
    /// Every family, in application order.
    pub const ALL: [Family; 12] = [
        Family::Canon,
        Family::Activations,
        Family::BnFold,
        Family::Conv,
        Family::Linear,
        Family::ConvChain,
        Family::Mha,
        Family::M2f,
        Family::F2m,
        Family::SepAttn,
        Family::Layout,
        Family::Xca,
    ];

    /// The family's rules.
    pub fn rules(self) -> Vec<Rw> {
        match self {
            Family::Canon => rules::canon::rules(),
            Family::Activations => rules::activations::rules(),
            Family::BnFold => rules::bn_fold::rules(),
            Family::Conv => rules::conv::rules(),
            Family::Linear => rules::linear::rules(),
            Family::ConvChain => rules::conv_chain::rules(),
            Family::Mha => rules::mha::rules(),
            Family::M2f => rules::m2f::rules(),
            Family::F2m => rules::f2m::rules(),
            Family::SepAttn => rules::sep_attn::rules(),
            Family::Layout => rules::layout::rules(),
            Family::Xca => rules::xca::rules(),
        }
    }
}

/// Options of [`optimize`].
#[derive(Clone, Debug, PartialEq)]
pub struct OptOptions {
    /// saturation limits
    pub saturation: SaturationLimits,
    /// the cost model extraction minimises
    pub cost: CostModel,
    /// which rule families run (all by default; none gives the identity)
    pub families: Vec<Family>,
    /// fold weight-only expressions into new weights after extraction
    pub fold_constants: bool,
    /// resource limits: graph size, folded constants, extraction work
    pub limits: Limits,
}

impl Default for OptOptions {
    fn default() -> Self {
        OptOptions {
            saturation: SaturationLimits::default(),
            cost: CostModel::default(),
            families: Family::ALL.to_vec(),
            fold_constants: true,
            limits: Limits::default(),
        }
    }
}

/// What [`optimize`] did.
#[derive(Clone, Debug, PartialEq)]
pub struct OptReport {
    /// rule name -> times it changed the e-graph
    pub rules: BTreeMap<String, usize>,
    /// why saturation stopped
    pub stop: Stop,
    /// saturation iterations
    pub iterations: usize,
    /// e-nodes / e-classes when saturation stopped
    pub egraph_nodes: usize,
    /// e-classes when saturation stopped
    pub egraph_classes: usize,
    /// computing nodes of the input graph
    pub nodes_before: usize,
    /// computing nodes of the optimised graph
    pub nodes_after: usize,
    /// estimated cost of the input graph (µs, cost-model units)
    pub cost_before: f64,
    /// estimated cost of the optimised graph
    pub cost_after: f64,
    /// op name -> count in the optimised graph
    pub ops: BTreeMap<String, usize>,
    /// weight-only nodes folded into new weights
    pub folded: usize,
    /// time spent saturating
    pub saturate_time: Duration,
    /// time spent extracting and rebuilding
    pub extract_time: Duration,
    /// `Some(work)` when the DAG-aware extraction would have taken `work`
    /// (over the `extract` limit) and the greedy tree-cost choice was made
    pub greedy_extraction: Option<usize>,
}

impl OptReport {
    /// Count of each fused op in the optimised graph.
    pub fn fused(&self) -> BTreeMap<&str, usize> {
        self.ops
            .iter()
            .filter(|(k, _)| k.starts_with("fused_"))
            .map(|(k, v)| (k.as_str(), *v))
            .collect()
    }

    /// The report as JSON (`kiln opt --explain --json`): keys `ops`,
    /// `rules`, `stop_reason`, `cost_before`, `cost_after`, plus node
    /// counts. Timings are left out so the output is reproducible.
    pub fn to_json(&self) -> String {
        let map = |m: &BTreeMap<String, usize>| {
            let items: Vec<String> = m
                .iter()
                .map(|(k, v)| format!("\"{}\": {v}", json_escape(k)))
                .collect();
            format!("{{{}}}", items.join(", "))
        };
        // only present when it happened, so the usual output is unchanged
        let greedy = self
            .greedy_extraction
            .map_or(String::new(), |w| format!(", \"greedy_extraction\": {w}"));
        format!(
            "{{\"ops\": {}, \"rules\": {}, \"stop_reason\": \"{}\", \"cost_before\": {:.3}, \"cost_after\": {:.3}, \"nodes_before\": {}, \"nodes_after\": {}, \"iterations\": {}, \"egraph_nodes\": {}, \"folded\": {}{greedy}}}",
            map(&self.ops),
            map(&self.rules),
            json_escape(&self.stop.to_string()),
            self.cost_before,
            self.cost_after,
            self.nodes_before,
            self.nodes_after,
            self.iterations,
            self.egraph_nodes,
            self.folded,
        )
    }

    /// How long saturation and extraction took (kept out of [`explain`]
    /// and [`to_json`] so that those are reproducible byte for byte).
    ///
    /// [`explain`]: OptReport::explain
    /// [`to_json`]: OptReport::to_json
    pub fn timings(&self) -> String {
        format!(
            "saturation {:.3} s, extraction {:.3} s",
            self.saturate_time.as_secs_f64(),
            self.extract_time.as_secs_f64()
        )
    }

    /// A human-readable summary (`kiln opt --explain`); deterministic.
    pub fn explain(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "saturation: {} after {} iteration(s), {} e-nodes in {} classes",
            self.stop, self.iterations, self.egraph_nodes, self.egraph_classes,
        );
        let _ = writeln!(
            s,
            "nodes: {} -> {}; estimated cost: {:.1} -> {:.1} us ({:.1}%)",
            self.nodes_before,
            self.nodes_after,
            self.cost_before,
            self.cost_after,
            100.0 * (self.cost_after - self.cost_before) / self.cost_before.max(1e-12)
        );
        if let Some(work) = self.greedy_extraction {
            let _ = writeln!(
                s,
                "extraction: greedy by tree cost (the DAG-aware search would take {work} bitset \
                 words, over the extract limit; --limit extract=N raises it)"
            );
        }
        let _ = writeln!(s, "rules fired:");
        for (k, v) in &self.rules {
            let _ = writeln!(s, "  {k:<32} {v}");
        }
        let _ = writeln!(s, "ops after:");
        for (k, v) in &self.ops {
            let _ = writeln!(s, "  {k:<32} {v}");
        }
        s
    }
}

fn json_escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

/// Verifies in debug builds and tests (the verifier re-infers every node:
/// cheap next to saturation, but not free).
fn check(m: &Model) -> Result<(), PassError> {
    if cfg!(debug_assertions) {
        verify(&m.graph)?;
        verify_weights(&m.graph, &m.weights)?;
    }
    Ok(())
}

/// Op name -> count over the computing nodes of a graph.
pub fn op_histogram(m: &Model) -> BTreeMap<String, usize> {
    let mut h = BTreeMap::new();
    for id in m.graph.node_ids() {
        let op: &Op = &m.graph.node(id).op;
        if !op.is_leaf() {
            *h.entry(op.name().to_string()).or_default() += 1;
        }
    }
    h
}

/// Optimises a model: the classic clean-ups, equality saturation with the
/// chosen rule families, DAG-aware extraction, constant folding.
pub fn optimize(model: &Model, opts: &OptOptions) -> Result<(Model, OptReport), PassError> {
    verify(&model.graph)?;
    verify_weights(&model.graph, &model.weights)?;
    opts.limits.check_graph(&model.graph)?;
    let nodes_before = model.graph.op_count();
    let cost_before = opts.cost.graph_cost(&model.graph);

    let mut m = model.clone();
    dce(&mut m);
    cse(&mut m.graph)?;
    check(&m)?;

    let t0 = Instant::now();
    let loaded = convert::load(&m)?;
    let rules: Vec<Rw> = opts.families.iter().flat_map(|f| f.rules()).collect();
    let (egraph, sat) = saturate(loaded.egraph, &rules, &opts.saturation);
    let loaded = convert::Loaded { egraph, ..loaded };
    let saturate_time = t0.elapsed();

    let t1 = Instant::now();
    let roots: Vec<_> = loaded
        .outputs
        .iter()
        .chain(&loaded.inputs)
        .copied()
        .collect();
    let ex = extract::extract(&loaded.egraph, &roots, &opts.cost, opts.limits.extract_work)?;
    let mut out = convert::rebuild(&loaded, &ex.choice)?;
    let extract_time = t1.elapsed();
    check(&out)?;

    let folded = if opts.fold_constants {
        const_fold(&mut out, &opts.limits)?
    } else {
        0
    };
    dce(&mut out);
    verify(&out.graph)?;
    verify_weights(&out.graph, &out.weights)?;

    let report = OptReport {
        rules: sat.rules,
        stop: sat.stop,
        iterations: sat.iterations,
        egraph_nodes: sat.egraph_nodes,
        egraph_classes: sat.egraph_classes,
        nodes_before,
        nodes_after: out.graph.op_count(),
        cost_before,
        cost_after: opts.cost.graph_cost(&out.graph),
        ops: op_histogram(&out),
        folded,
        saturate_time,
        extract_time,
        greedy_extraction: ex.greedy,
    };
    Ok((out, report))
}
