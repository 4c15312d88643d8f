//! Equality saturation: runs the rule families over the e-graph within
//! explicit limits and reports what happened as data.
//!
//! The limits are set on purpose (docs/passes.md): the rules are designed to
//! saturate (every rewrite either merges movement ops, moves a scale one
//! way, or builds a bigger fused op from smaller ones), so on the zoo models
//! saturation — not a limit — should end the run; the limits are the safety
//! net for graphs nobody designed the rules for.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use egg::{Runner, SimpleScheduler, StopReason};

use crate::lang::KGraph;
use crate::rules::Rw;

/// Bounds on one saturation run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SaturationLimits {
    /// most rule-application rounds; the deepest fusion here (a bridge on
    /// top of canonicalised views, linears and a gate) needs about ten
    pub iterations: usize,
    /// most e-nodes; about fifty times the largest zoo model's node count
    pub nodes: usize,
    /// wall-clock budget
    pub time: Duration,
}

impl Default for SaturationLimits {
    fn default() -> Self {
        SaturationLimits {
            iterations: 40,
            nodes: 400_000,
            time: Duration::from_secs(20),
        }
    }
}

/// Why saturation stopped.
#[derive(Clone, Debug, PartialEq)]
pub enum Stop {
    /// no rule changed the e-graph: every fusion the rules know was found
    Saturated,
    /// the iteration limit was reached
    IterationLimit(usize),
    /// the node limit was exceeded
    NodeLimit(usize),
    /// the time limit was exceeded (seconds)
    TimeLimit(f64),
    /// something else stopped the runner
    Other(String),
}

impl fmt::Display for Stop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Stop::Saturated => f.write_str("saturated"),
            Stop::IterationLimit(n) => write!(f, "iteration limit ({n})"),
            Stop::NodeLimit(n) => write!(f, "node limit ({n})"),
            Stop::TimeLimit(s) => write!(f, "time limit ({s:.1} s)"),
            Stop::Other(s) => write!(f, "stopped: {s}"),
        }
    }
}

/// What one saturation run did.
#[derive(Clone, Debug, PartialEq)]
pub struct SatReport {
    /// rule name -> number of rewrites that changed the e-graph
    pub rules: BTreeMap<String, usize>,
    /// why it stopped
    pub stop: Stop,
    /// iterations run
    pub iterations: usize,
    /// e-nodes at the end
    pub egraph_nodes: usize,
    /// e-classes at the end
    pub egraph_classes: usize,
}

/// Runs `rules` on `egraph` until saturation or a limit.
pub fn saturate(egraph: KGraph, rules: &[Rw], limits: &SaturationLimits) -> (KGraph, SatReport) {
    // The simple scheduler: the backoff scheduler would ban a rule whose
    // root filter matches many classes (every add, every reshape) and so
    // stop short of fusions that need it on the last block.
    let runner = Runner::default()
        .with_scheduler(SimpleScheduler)
        .with_egraph(egraph)
        .with_iter_limit(limits.iterations)
        .with_node_limit(limits.nodes)
        .with_time_limit(limits.time)
        .run(rules);
    let mut fired: BTreeMap<String, usize> = BTreeMap::new();
    for it in &runner.iterations {
        for (name, n) in &it.applied {
            *fired.entry(name.to_string()).or_default() += n;
        }
    }
    let stop = match &runner.stop_reason {
        Some(StopReason::Saturated) => Stop::Saturated,
        Some(StopReason::IterationLimit(n)) => Stop::IterationLimit(*n),
        Some(StopReason::NodeLimit(n)) => Stop::NodeLimit(*n),
        Some(StopReason::TimeLimit(s)) => Stop::TimeLimit(*s),
        Some(StopReason::Other(s)) => Stop::Other(s.clone()),
        None => Stop::Other("no stop reason".into()),
    };
    let report = SatReport {
        rules: fired,
        stop,
        iterations: runner.iterations.len(),
        egraph_nodes: runner.egraph.total_number_of_nodes(),
        egraph_classes: runner.egraph.number_of_classes(),
    };
    (runner.egraph, report)
}
