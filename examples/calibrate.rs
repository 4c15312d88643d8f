//! Calibrates the optimiser's cost model (`kiln_passes::cost::CostModel`)
//! against the JIT: compiles zoo models with `kiln_backends::compile` at one
//! thread, times every kernel with `CompiledModel::profile` (best of
//! `--runs`), pairs each node's time with its FLOPs and bytes as the cost
//! model counts them, and fits
//!
//! ```text
//! time = overhead + gemm_flops / gemm_rate + other_flops / vector_rate + bytes / bandwidth
//! ```
//!
//! minimising the sum of *relative* errors (each node counts alike, so the
//! many small kernels count as much as the few large ones; iteratively
//! reweighted least squares), with every coefficient kept non-negative. Prints the data per kernel class, the
//! fitted constants and how well old and new constants predict each
//! model's total.
//!
//! ```text
//! cargo run --release --example calibrate [-- --runs N] [MODEL...]
//! ```
//!
//! Each model is timed twice: as built (primitive kernels) and optimised
//! (the fused kernels: fused conv and linear, and whatever else has a kernel
//! of its own), because extraction compares exactly these two kinds of
//! node. A fused op's FLOPs are its expansion's and its bytes only its
//! operands and result, as the cost model counts them. Times are paired
//! with the nodes of `kiln_backends::kernel_graph`, the graph the kernels
//! were generated from (conv chains split per stage).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use kiln_backends::{CompileOptions, compile, kernel_graph};
use kiln_frontends::zoo::{ZooOptions, build};
use kiln_ir::fused::FusedOp;
use kiln_ir::{Model, Op, Tensor, TensorType};
use kiln_passes::cost::{CostModel, is_gemm_like, is_view, split_flops};
use kiln_passes::{OptOptions, optimize};

/// One timed node: its class, FLOPs, bytes and best time.
struct Row {
    model: String,
    class: &'static str,
    gemm: f64,
    other: f64,
    bytes: f64,
    secs: f64,
}

fn class_of(op: &Op, ins: &[TensorType]) -> &'static str {
    match op {
        Op::Fused(FusedOp::Conv { groups, .. }) => {
            let w = &ins[1].shape;
            if *groups > 1 && *groups == ins[0].shape[1] && w[1] == 1 {
                "fused depthwise conv"
            } else if w[2..] == [1, 1] {
                "fused conv 1x1"
            } else {
                "fused conv kxk"
            }
        }
        Op::Fused(FusedOp::Linear { .. }) => "fused linear",
        Op::Fused(_) => "fused attention",
        Op::Conv2d { .. } if is_gemm_like(op, ins) => {
            if ins[1].shape[2..] == [1, 1] {
                "conv 1x1"
            } else {
                "conv kxk (im2col)"
            }
        }
        Op::Conv2d { .. } => "depthwise conv",
        Op::MatMul | Op::Gemm { .. } => "matmul",
        Op::Softmax { .. } => "softmax",
        Op::LayerNorm { .. } | Op::GroupNorm { .. } | Op::BatchNorm { .. } => "norm",
        Op::Unary(_) | Op::Binary(_) | Op::Clip { .. } | Op::HardSigmoid { .. } => "element-wise",
        Op::Reduce { .. } | Op::GlobalAvgPool | Op::Pool2d { .. } => "reduce/pool",
        _ => "movement",
    }
}

fn profile(name: &str, runs: usize, optimized: bool) -> Vec<Row> {
    let built: Model = build(name, &ZooOptions::default()).expect("zoo model builds");
    let m = if optimized {
        optimize(&built, &OptOptions::default())
            .expect("optimises")
            .0
    } else {
        built
    };
    let opts = CompileOptions {
        threads: Some(1),
        ..CompileOptions::default()
    };
    let c = compile(&m, &opts).expect("compiles");
    let inputs: Vec<Tensor> = m
        .graph
        .inputs()
        .iter()
        .map(|&id| {
            let ty = &m.graph.node(id).outputs[0].ty;
            let data: Vec<f32> = (0..ty.numel())
                .map(|i| ((i % 17) as f32 - 8.0) / 8.0)
                .collect();
            Tensor::from_f32(ty.shape.clone(), data).expect("input")
        })
        .collect();
    // warm up (page faults, caches), then the best of `runs` per kernel
    let _ = c.profile(&inputs).expect("runs");
    let mut best = c.profile(&inputs).expect("runs");
    for _ in 1..runs {
        for (b, t) in best.iter_mut().zip(c.profile(&inputs).expect("runs")) {
            b.time = b.time.min(t.time);
        }
    }
    // several kernels of one node (im2col + GEMM) are one node's time
    let mut per_node: BTreeMap<String, Duration> = BTreeMap::new();
    for k in &best {
        let value = k
            .node
            .split(' ')
            .next()
            .unwrap_or("")
            .trim_start_matches('%');
        *per_node.entry(value.to_string()).or_default() += k.time;
    }
    let kg = kernel_graph(&m).expect("lowers");
    let g = &kg.graph;
    let by_name: HashMap<&str, kiln_ir::NodeId> = g
        .node_ids()
        .filter_map(|id| g.node(id).outputs.first().map(|o| (o.name.as_str(), id)))
        .collect();
    let mut rows = Vec::new();
    let mut unmatched = 0;
    for (value, t) in per_node {
        let Some(&id) = by_name.get(value.as_str()) else {
            // output copies and nodes the backend created while folding
            unmatched += 1;
            continue;
        };
        let node = g.node(id);
        if node.op.is_leaf() || is_view(&node.op) {
            continue;
        }
        let ins: Vec<TensorType> = g
            .operands(id)
            .iter()
            .map(|v| g.value_type(*v).clone())
            .collect();
        let outs: Vec<TensorType> = node.outputs.iter().map(|o| o.ty.clone()).collect();
        let (gemm, other) = split_flops(&node.op, &ins, &outs[0]);
        let bytes: usize = ins.iter().chain(&outs).map(TensorType::size_bytes).sum();
        rows.push(Row {
            model: if optimized {
                format!("{name} (optimised)")
            } else {
                name.to_string()
            },
            class: class_of(&node.op, &ins),
            gemm,
            other,
            bytes: bytes as f64,
            secs: t.as_secs_f64(),
        });
    }
    eprintln!(
        "{name}{}: {} kernels, {} nodes timed, {unmatched} kernels without a graph node",
        if optimized { " (optimised)" } else { "" },
        best.len(),
        rows.len()
    );
    rows
}

fn features(r: &Row) -> [f64; 4] {
    [1.0, r.gemm, r.other, r.bytes]
}

/// Minimises Σ |pred/t − 1| (the relative error of each node, not its
/// square: a squared fit let a few kernels the linear form cannot describe
/// pull every constant, and came out worse at the median than the old
/// constants) by iteratively reweighted least squares from the squared fit.
fn fit(rows: &[Row]) -> [f64; 4] {
    let mut beta = fit_weighted(rows, &vec![1.0; rows.len()]);
    for _ in 0..30 {
        let w: Vec<f64> = rows
            .iter()
            .map(|r| 1.0 / (predict(&beta, r) / r.secs - 1.0).abs().max(1e-3))
            .collect();
        beta = fit_weighted(rows, &w);
    }
    beta
}

/// Weighted least squares with non-negative coefficients (active set: a
/// column whose coefficient comes out negative is dropped and the rest
/// refitted). Minimises Σ wᵢ ((pred − t) / t)².
fn fit_weighted(rows: &[Row], weights: &[f64]) -> [f64; 4] {
    let mut active = [true; 4];
    loop {
        let idx: Vec<usize> = (0..4).filter(|&i| active[i]).collect();
        let k = idx.len();
        let mut a = vec![vec![0.0f64; k + 1]; k];
        for (r, &wr) in rows.iter().zip(weights) {
            let f = features(r);
            let w = wr / (r.secs * r.secs);
            for (p, &i) in idx.iter().enumerate() {
                for (q, &j) in idx.iter().enumerate() {
                    a[p][q] += w * f[i] * f[j];
                }
                a[p][k] += w * f[i] * r.secs;
            }
        }
        let x = solve(a);
        let mut beta = [0.0; 4];
        for (p, &i) in idx.iter().enumerate() {
            beta[i] = x[p];
        }
        match (0..4).find(|&i| active[i] && beta[i] < 0.0) {
            Some(i) => active[i] = false,
            None => return beta,
        }
    }
}

/// Gaussian elimination with partial pivoting on an augmented matrix.
fn solve(mut a: Vec<Vec<f64>>) -> Vec<f64> {
    let n = a.len();
    for c in 0..n {
        let p = (c..n)
            .max_by(|&i, &j| a[i][c].abs().total_cmp(&a[j][c].abs()))
            .expect("non-empty");
        a.swap(c, p);
        let d = a[c][c];
        if d.abs() < 1e-300 {
            continue;
        }
        for x in &mut a[c][c..] {
            *x /= d;
        }
        let pivot = a[c].clone();
        for (i, row) in a.iter_mut().enumerate() {
            if i != c {
                let f = row[c];
                for (x, p) in row[c..].iter_mut().zip(&pivot[c..]) {
                    *x -= f * p;
                }
            }
        }
    }
    a.iter().map(|r| r[n]).collect()
}

fn predict(beta: &[f64; 4], r: &Row) -> f64 {
    features(r).iter().zip(beta).map(|(f, b)| f * b).sum()
}

fn as_model(beta: &[f64; 4]) -> CostModel {
    let rate = |b: f64| if b > 0.0 { 1.0 / b } else { f64::INFINITY };
    CostModel {
        overhead_s: beta[0],
        gemm_rate: rate(beta[1]),
        vector_rate: rate(beta[2]),
        bandwidth: rate(beta[3]),
        ..CostModel::default()
    }
}

fn beta_of(m: &CostModel) -> [f64; 4] {
    [
        m.overhead_s,
        1.0 / m.gemm_rate,
        1.0 / m.vector_rate,
        1.0 / m.bandwidth,
    ]
}

/// Median of |pred/t − 1| over rows.
fn median_rel_err(beta: &[f64; 4], rows: &[&Row]) -> f64 {
    let mut e: Vec<f64> = rows
        .iter()
        .map(|r| (predict(beta, r) / r.secs - 1.0).abs())
        .collect();
    e.sort_by(f64::total_cmp);
    e.get(e.len() / 2).copied().unwrap_or(0.0)
}

fn main() {
    let mut runs = 7;
    let mut models = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--runs" {
            runs = args.next().and_then(|n| n.parse().ok()).expect("--runs N");
        } else {
            models.push(a);
        }
    }
    if models.is_empty() {
        models = [
            "mobile_former_26m",
            "mobile_former_151m",
            "mobilevitv2_050",
            "xformer",
        ]
        .map(String::from)
        .to_vec();
    }
    let rows: Vec<Row> = models
        .iter()
        .flat_map(|m| [false, true].map(|opt| profile(m, runs, opt)))
        .flatten()
        .collect();
    let beta = fit(&rows);
    let old = beta_of(&CostModel::default());
    let fitted = as_model(&beta);

    println!(
        "| kernel class | nodes | time ms | GFLOP | MB | GFLOP/s | GB/s | median rel err, current constants | fitted |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut classes: Vec<&str> = rows.iter().map(|r| r.class).collect();
    classes.sort();
    classes.dedup();
    for c in classes {
        let rs: Vec<&Row> = rows.iter().filter(|r| r.class == c).collect();
        let t: f64 = rs.iter().map(|r| r.secs).sum();
        let fl: f64 = rs.iter().map(|r| r.gemm + r.other).sum();
        let by: f64 = rs.iter().map(|r| r.bytes).sum();
        println!(
            "| {c} | {} | {:.2} | {:.3} | {:.1} | {:.1} | {:.1} | {:.0}% | {:.0}% |",
            rs.len(),
            t * 1e3,
            fl * 1e-9,
            by * 1e-6,
            fl / t * 1e-9,
            by / t * 1e-9,
            100.0 * median_rel_err(&old, &rs),
            100.0 * median_rel_err(&beta, &rs),
        );
    }
    println!();
    println!("| model | measured ms (sum of kernels) | predicted, current constants | fitted |");
    println!("|---|---|---|---|");
    let mut names: Vec<&str> = rows.iter().map(|r| r.model.as_str()).collect();
    names.dedup();
    for m in names {
        let rs: Vec<&Row> = rows.iter().filter(|r| r.model == m).collect();
        let t: f64 = rs.iter().map(|r| r.secs).sum();
        let po: f64 = rs.iter().map(|r| predict(&old, r)).sum();
        let pn: f64 = rs.iter().map(|r| predict(&beta, r)).sum();
        println!(
            "| {m} | {:.2} | {:.2} | {:.2} |",
            t * 1e3,
            po * 1e3,
            pn * 1e3
        );
    }
    // what extraction relies on: the gain of the optimised graph over the
    // model as built, predicted against measured
    println!();
    println!("| model | optimised / as built, measured | predicted, current constants | fitted |");
    println!("|---|---|---|---|");
    let total = |m: &str, f: &dyn Fn(&Row) -> f64| -> f64 {
        rows.iter().filter(|r| r.model == m).map(f).sum()
    };
    for m in &models {
        let o = format!("{m} (optimised)");
        let ratio = |f: &dyn Fn(&Row) -> f64| total(&o, f) / total(m, f);
        println!(
            "| {m} | {:.2} | {:.2} | {:.2} |",
            ratio(&|r| r.secs),
            ratio(&|r| predict(&old, r)),
            ratio(&|r| predict(&beta, r))
        );
    }
    println!();
    println!(
        "fitted over {} nodes: overhead {:.2} us, gemm {:.1} GFLOP/s, vector {:.1} GFLOP/s, bandwidth {:.1} GB/s",
        rows.len(),
        fitted.overhead_s * 1e6,
        fitted.gemm_rate * 1e-9,
        fitted.vector_rate * 1e-9,
        fitted.bandwidth * 1e-9
    );
    let all: Vec<&Row> = rows.iter().collect();
    println!(
        "median relative error per node: current constants {:.0}%, fitted {:.0}%",
        100.0 * median_rel_err(&old, &all),
        100.0 * median_rel_err(&beta, &all)
    );
}
