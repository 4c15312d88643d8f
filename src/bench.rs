//! `kiln bench`: optimise and compile a model with the JIT and time it.
//!
//! Reports compile time (passes and code generation), median and minimum
//! latency over `iters` timed runs (after `warmup` untimed ones), GFLOP/s as
//! `2·MACs / median` with MACs counted as `kiln info` does on the model as
//! loaded (conv2d, matmul, gemm), and the arena size; with `profile`, a
//! per-node table of where the time goes. Inputs are the same seeded random
//! tensors `kiln run` uses.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use kiln_backends::KernelTime;
use kiln_ir::{Model, Tensor, Value, stats};

use crate::compile::{CompileOptions, compile};
use crate::error::KilnError;
use crate::run::random_input;

/// What to measure.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// threads (`None` = every core)
    pub threads: Option<usize>,
    /// timed runs
    pub iters: usize,
    /// untimed runs first
    pub warmup: usize,
    /// seed of the random inputs
    pub seed: u64,
    /// run the optimiser first (`--no-opt` clears it)
    pub optimize: bool,
    /// also time every kernel (`--profile`), over `iters` profiled runs
    pub profile: bool,
    /// the widest GEMM tile level to use (`--tiles`; `None`: the host's)
    pub tiles: Option<kiln_backends::TileLevel>,
    /// run inverted-residual chains band by band (`--banded-chains`)
    pub banded_chains: bool,
    /// images per group of a batch (`--batch-group`; `None`: the whole
    /// batch in one program; see [`crate::CompileOptions::batch_group`])
    pub batch_group: Option<usize>,
    /// resource limits for the optimiser and the JIT (`--limit`)
    pub limits: kiln_ir::Limits,
}

/// One row of the profile: a graph node of the compiled (optimised) graph
/// and the kernels it was lowered to.
#[derive(Clone, Debug, PartialEq)]
pub struct ProfileRow {
    /// the node (`%12 (fused_conv)`)
    pub node: String,
    /// what its kernels do, joined with ` + `, each with its own median time
    /// when there are several
    pub kernels: String,
    /// median time, summed over the node's kernels, milliseconds
    pub ms: f64,
    /// share of the profiled total
    pub share: f64,
    /// `2·MACs / time` when the node computes MACs
    pub gflops: Option<f64>,
    /// `(operand + output bytes) / time` otherwise
    pub gbps: Option<f64>,
    /// the node's multiply-accumulates
    pub macs: u64,
    /// the node's operand plus output bytes
    pub bytes: u64,
    /// whether any of its kernels was split over the worker pool
    pub parallel: bool,
}

/// The profile summed over one kind of kernel (pointwise convs, depthwise
/// convs, transposes, ...): where a model's time goes at a glance, and the
/// rate each kind reaches as a whole.
#[derive(Clone, Debug, PartialEq)]
pub struct KindRow {
    /// the kind ([`kernel_kind`])
    pub kind: String,
    /// nodes of that kind
    pub nodes: usize,
    /// summed median time, milliseconds
    pub ms: f64,
    /// share of the profiled total
    pub share: f64,
    /// `2·MACs / time` over the kind, when it computes MACs
    pub gflops: Option<f64>,
    /// `bytes / time` over the kind otherwise
    pub gbps: Option<f64>,
}

/// The measurement.
#[derive(Clone, Debug, PartialEq)]
pub struct BenchReport {
    /// graph name
    pub model: String,
    /// compile time (passes plus code generation), milliseconds
    pub compile_ms: f64,
    /// optimiser time, milliseconds (0 with `--no-opt`)
    pub passes_ms: f64,
    /// lowering, code generation and tile assembly, milliseconds
    pub codegen_ms: f64,
    /// whether the optimiser ran
    pub optimized: bool,
    /// fused ops in the compiled graph (0 when not optimised)
    pub fused_ops: usize,
    /// median latency, milliseconds
    pub median_ms: f64,
    /// fastest run, milliseconds
    pub min_ms: f64,
    /// threads used
    pub threads: usize,
    /// the GEMM tile level compiled at (`avx512`, `avx2`, `f32x4`)
    pub tiles: String,
    /// `2·MACs / median`, in GFLOP/s
    pub gflops: f64,
    /// images per call: the first input's first (batch) dimension
    pub batch: usize,
    /// `batch / median`: images per second
    pub images_per_s: f64,
    /// runs of the kernels per call: the batch's groups of images (1 for
    /// one image or a batch compiled whole)
    pub groups: usize,
    /// why a batch of several images was compiled whole
    pub whole_batch: Option<String>,
    /// kernels run once for the whole batch after the groups (its tail)
    pub tail_kernels: usize,
    /// times the worker pool ran kernels on the caller alone because its
    /// workers missed jobs (over the warm-up and timed runs)
    pub solo_spells: u32,
    /// bytes of the per-call arena
    pub arena_bytes: usize,
    /// kernels split over the worker pool
    pub parallel_kernels: usize,
    /// median cost of one fork/join of the pool, microseconds (0 at one
    /// thread)
    pub barrier_us: f64,
    /// multiply-accumulates of one inference
    pub macs: u64,
    /// kernel functions generated
    pub kernels: usize,
    /// timed runs
    pub iters: usize,
    /// the per-node profile, slowest first (empty without `profile`)
    pub profile: Vec<ProfileRow>,
}

impl BenchOptions {
    /// A usage error for options no measurement can have.
    pub fn check(&self) -> Result<(), KilnError> {
        if self.iters == 0 {
            return Err(KilnError::Usage("--iters must be at least 1".into()));
        }
        if self.threads == Some(0) {
            return Err(KilnError::Usage("--threads must be at least 1".into()));
        }
        Ok(())
    }
}

/// Compiles and times `model`.
pub fn bench_model(model: &Model, opts: &BenchOptions) -> Result<BenchReport, KilnError> {
    opts.check()?;
    let g = &model.graph;
    let inputs: Vec<Tensor> = g
        .inputs()
        .iter()
        .enumerate()
        .map(|(i, &id)| {
            random_input(
                g.value_type(Value::of(id)),
                opts.seed.wrapping_add(i as u64),
            )
        })
        .collect();
    let mut copts = CompileOptions {
        optimize: opts.optimize,
        ..CompileOptions::default()
    }
    .with_limits(opts.limits);
    copts.backend.threads = opts.threads;
    if let Some(t) = opts.tiles {
        copts.backend.max_tiles = t;
    }
    copts.backend.banded_chains = opts.banded_chains;
    copts.batch_group = opts.batch_group;
    let compiled = compile(model, &copts)?;
    let jit = &compiled.model;
    let mut outputs = jit.run(&inputs)?;
    for _ in 0..opts.warmup {
        jit.run_into(&inputs, &mut outputs)?;
    }
    let mut times = Vec::with_capacity(opts.iters);
    for _ in 0..opts.iters {
        let t = Instant::now();
        jit.run_into(&inputs, &mut outputs)?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let solo_spells = jit.solo_spells();
    let n = times.len();
    let median_ms = median(&mut times);
    let profile = if opts.profile {
        let mut runs = Vec::with_capacity(opts.iters);
        for _ in 0..opts.iters {
            runs.push(jit.profile(&inputs)?);
        }
        profile_rows(&runs)
    } else {
        Vec::new()
    };
    let macs = stats::graph_macs(g);
    let batch = g
        .inputs()
        .first()
        .and_then(|&id| g.value_type(Value::of(id)).shape.first().copied())
        .unwrap_or(1);
    let st = jit.stats();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    Ok(BenchReport {
        model: g.name.clone(),
        compile_ms: ms(compiled.compile_time()),
        passes_ms: ms(compiled.passes_time),
        codegen_ms: ms(compiled.codegen_time),
        optimized: compiled.report.is_some(),
        fused_ops: compiled.report.as_ref().map_or(0, |r| {
            r.ops
                .iter()
                .filter(|(op, _)| op.starts_with("fused_"))
                .map(|(_, n)| n)
                .sum()
        }),
        median_ms,
        min_ms: times[0],
        threads: st.threads,
        tiles: st.tiles.name().to_string(),
        gflops: if median_ms > 0.0 {
            2.0 * macs as f64 / (median_ms * 1e-3) / 1e9
        } else {
            0.0
        },
        batch,
        images_per_s: if median_ms > 0.0 {
            batch as f64 / (median_ms * 1e-3)
        } else {
            0.0
        },
        groups: jit.groups(),
        tail_kernels: jit.tail_kernels(),
        solo_spells,
        whole_batch: compiled.whole_batch.clone(),
        arena_bytes: st.arena_bytes,
        parallel_kernels: jit.parallel_kernels(),
        barrier_us: jit.barrier_cost(2000).as_secs_f64() * 1e6,
        macs,
        kernels: st.kernels,
        iters: n,
        profile,
    })
}

/// The median of `xs` (sorted in place); `xs` is not empty.
fn median(xs: &mut [f64]) -> f64 {
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    }
}

/// Per-node rows from several profiled runs: each kernel's median over the
/// runs, summed per node, slowest first. A per-kernel median rather than
/// the run with the median total, so one descheduled kernel does not
/// colour the whole table.
pub fn profile_rows(runs: &[Vec<KernelTime>]) -> Vec<ProfileRow> {
    let Some(first) = runs.first() else {
        return Vec::new();
    };
    /// One node's kernels so far.
    struct Acc<'a> {
        kernels: Vec<(&'a str, f64)>,
        ms: f64,
        work: kiln_backends::NodeWork,
        parallel: bool,
    }
    let mut order: Vec<&str> = Vec::new();
    let mut nodes: HashMap<&str, Acc> = HashMap::new();
    for (k, kt) in first.iter().enumerate() {
        let mut ts: Vec<f64> = runs
            .iter()
            .filter_map(|r| r.get(k))
            .map(|t| t.time.as_secs_f64() * 1e3)
            .collect();
        let t = median(&mut ts);
        let e = nodes.entry(&kt.node).or_insert_with(|| {
            order.push(&kt.node);
            Acc {
                kernels: Vec::new(),
                ms: 0.0,
                work: kt.work,
                parallel: false,
            }
        });
        e.kernels.push((&kt.kernel, t));
        e.ms += t;
        e.parallel |= kt.parallel;
    }
    let total: f64 = nodes.values().map(|e| e.ms).sum();
    let mut rows: Vec<ProfileRow> = order
        .into_iter()
        .map(|node| {
            let Acc {
                kernels,
                ms,
                work,
                parallel,
            } = &nodes[node];
            let secs = ms * 1e-3;
            let rate = |x: f64| (secs > 0.0).then(|| x / secs / 1e9);
            ProfileRow {
                node: node.to_string(),
                // each kernel's own time when the node has several
                kernels: match kernels.as_slice() {
                    [(k, _)] => k.to_string(),
                    ks => ks
                        .iter()
                        .map(|(k, t)| format!("{k} ({t:.4} ms)"))
                        .collect::<Vec<_>>()
                        .join(" + "),
                },
                ms: *ms,
                share: if total > 0.0 { ms / total } else { 0.0 },
                gflops: (work.macs > 0)
                    .then(|| rate(2.0 * work.macs as f64))
                    .flatten(),
                gbps: (work.macs == 0).then(|| rate(work.bytes as f64)).flatten(),
                macs: work.macs,
                bytes: work.bytes,
                parallel: *parallel,
            }
        })
        .collect();
    rows.sort_by(|a, b| b.ms.total_cmp(&a.ms));
    rows
}

/// The kind a profile row is summed under: convolutions by the kernel they
/// were lowered to (a pointwise conv is a GEMM and is judged against the
/// FMA peak, a depthwise one against memory bandwidth), linear layers with
/// one row apart (a GEMV streams its weights), every other node by its op.
pub fn kernel_kind(row: &ProfileRow) -> String {
    let k = &row.kernels;
    let op = row
        .node
        .split_once('(')
        .map_or(row.node.as_str(), |(_, rest)| rest.trim_end_matches(')'));
    if k.contains("pointwise conv") {
        "pointwise conv".into()
    } else if k.contains("depthwise") {
        "depthwise conv".into()
    } else if k.contains("direct conv") {
        "direct conv".into()
    } else if k.contains("winograd") {
        "winograd conv".into()
    } else if k.contains("im2col") {
        "im2col conv".into()
    } else if matches!(op, "fused_linear" | "gemm") && k.contains("gemm M=1 ") {
        "linear (one row)".into()
    } else if matches!(op, "fused_linear" | "gemm") {
        "linear".into()
    } else {
        op.to_string()
    }
}

/// `rows` summed per [`kernel_kind`], slowest kind first.
pub fn kind_rows(rows: &[ProfileRow]) -> Vec<KindRow> {
    let total: f64 = rows.iter().map(|r| r.ms).sum();
    let mut order: Vec<String> = Vec::new();
    let mut sums: HashMap<String, (usize, f64, u64, u64)> = HashMap::new();
    for r in rows {
        let kind = kernel_kind(r);
        let e = sums.entry(kind.clone()).or_insert_with(|| {
            order.push(kind);
            (0, 0.0, 0, 0)
        });
        e.0 += 1;
        e.1 += r.ms;
        e.2 += r.macs;
        e.3 += r.bytes;
    }
    let mut kinds: Vec<KindRow> = order
        .into_iter()
        .map(|kind| {
            let (nodes, ms, macs, bytes) = sums[&kind];
            let secs = ms * 1e-3;
            let rate = |x: f64| (secs > 0.0).then(|| x / secs / 1e9);
            KindRow {
                kind,
                nodes,
                ms,
                share: if total > 0.0 { ms / total } else { 0.0 },
                gflops: (macs > 0).then(|| rate(2.0 * macs as f64)).flatten(),
                gbps: (macs == 0).then(|| rate(bytes as f64)).flatten(),
            }
        })
        .collect();
    kinds.sort_by(|a, b| b.ms.total_cmp(&a.ms));
    kinds
}

/// `12.3 GFLOP/s`, `4.5 GB/s` or `-`.
fn rate_text(gflops: Option<f64>, gbps: Option<f64>) -> String {
    match (gflops, gbps) {
        (Some(g), _) => format!("{g:.1} GFLOP/s"),
        (None, Some(b)) => format!("{b:.1} GB/s"),
        (None, None) => "-".to_string(),
    }
}

/// The human-readable report (with the profile table when there is one).
pub fn render_text(r: &BenchReport) -> String {
    let passes = if r.optimized {
        format!("passes {:.1} ms ({} fused ops)", r.passes_ms, r.fused_ops)
    } else {
        "passes off".to_string()
    };
    let mut s = format!(
        "model:    {}\nthreads:  {}{}\ntiles:    {}\ncompile:  {:.1} ms ({passes}, codegen {:.1} ms, {} kernels)\nlatency:  median {:.3} ms, min {:.3} ms over {} runs\nthroughput: {:.2} GFLOP/s ({} MACs), {:.1} images/s (batch {})\narena:    {} bytes ({:.2} MiB)\n",
        r.model,
        r.threads,
        if r.threads > 1 {
            format!(
                " ({} parallel kernels; one fork/join of the pool costs {:.2} µs{})",
                r.parallel_kernels,
                r.barrier_us,
                if r.solo_spells > 0 {
                    format!(
                        "; the workers missed jobs {} time(s), then the caller ran them alone",
                        r.solo_spells
                    )
                } else {
                    String::new()
                }
            )
        } else {
            String::new()
        },
        r.tiles,
        r.compile_ms,
        r.codegen_ms,
        r.kernels,
        r.median_ms,
        r.min_ms,
        r.iters,
        r.gflops,
        r.macs,
        r.images_per_s,
        r.batch,
        r.arena_bytes,
        r.arena_bytes as f64 / (1024.0 * 1024.0)
    );
    if r.groups > 1 {
        s += &format!(
            "batch:    {} groups of {} image(s), each on one thread with its own arena{}\n",
            r.groups,
            r.batch / r.groups,
            if r.tail_kernels > 0 {
                format!(
                    ", then {} kernel(s) once for the whole batch",
                    r.tail_kernels
                )
            } else {
                String::new()
            }
        );
    } else if let Some(why) = &r.whole_batch {
        s += &format!("batch:    compiled whole ({why})\n");
    }
    if !r.profile.is_empty() {
        s += &render_profile(&r.profile);
    }
    s
}

/// The profile as a table, slowest node first, with a running share so the
/// reader sees how few nodes make most of the time.
pub fn render_profile(rows: &[ProfileRow]) -> String {
    let total: f64 = rows.iter().map(|r| r.ms).sum();
    let w = rows.iter().map(|r| r.node.len()).max().unwrap_or(4).max(4);
    let mut s = format!(
        "\nprofile ({} nodes, {:.3} ms in kernels; median per kernel)",
        rows.len(),
        total,
    );
    if rows.iter().any(|r| r.parallel) {
        // what bounds the gain from more threads
        let serial: Vec<&ProfileRow> = rows.iter().filter(|r| !r.parallel).collect();
        let ms: f64 = serial.iter().map(|r| r.ms).sum();
        s += &format!(
            "; {} nodes ran on one thread: {:.3} ms, {:.1}%",
            serial.len(),
            ms,
            if total > 0.0 { 100.0 * ms / total } else { 0.0 }
        );
    }
    s += ", by kind:\n";
    let kinds = kind_rows(rows);
    s += &format!(
        "{:>9}  {:>6}  {:>14}  {:>5}  kind\n",
        "ms", "share", "rate", "nodes"
    );
    for k in &kinds {
        s += &format!(
            "{:>9.4}  {:>5.1}%  {:>14}  {:>5}  {}\n",
            k.ms,
            100.0 * k.share,
            rate_text(k.gflops, k.gbps),
            k.nodes,
            k.kind
        );
    }
    s += &format!(
        "\n{:>9}  {:>6}  {:>6}  {:>14}  {:<w$}  kernels\n",
        "ms", "share", "cum", "rate", "node"
    );
    let mut cum = 0.0;
    for r in rows {
        cum += r.share;
        s += &format!(
            "{:>9.4}  {:>5.1}%  {:>5.1}%  {:>14}  {:<w$}  {}\n",
            r.ms,
            100.0 * r.share,
            100.0 * cum,
            rate_text(r.gflops, r.gbps),
            r.node,
            r.kernels
        );
    }
    s
}

/// One JSON object; the keys `median_ms`, `min_ms`, `compile_ms`, `threads`,
/// `gflops` and `arena_bytes` are stable. `profile` is an array of rows
/// (`node`, `kernels`, `ms`, `share`, `gflops` or `gbps`) when profiled.
pub fn render_json(r: &BenchReport) -> String {
    let mut v = serde_json::json!({
        "model": r.model,
        "median_ms": r.median_ms,
        "min_ms": r.min_ms,
        "compile_ms": r.compile_ms,
        "passes_ms": r.passes_ms,
        "codegen_ms": r.codegen_ms,
        "optimized": r.optimized,
        "fused_ops": r.fused_ops,
        "threads": r.threads,
        "tiles": r.tiles,
        "gflops": r.gflops,
        "batch": r.batch,
        "images_per_s": r.images_per_s,
        "groups": r.groups,
        "tail_kernels": r.tail_kernels,
        "solo_spells": r.solo_spells,
        "whole_batch": r.whole_batch,
        "arena_bytes": r.arena_bytes,
        "parallel_kernels": r.parallel_kernels,
        "barrier_us": r.barrier_us,
        "macs": r.macs,
        "kernels": r.kernels,
        "iters": r.iters,
    });
    if !r.profile.is_empty() {
        v["profile"] = r
            .profile
            .iter()
            .map(|p| {
                serde_json::json!({
                    "node": p.node,
                    "kernels": p.kernels,
                    "ms": p.ms,
                    "share": p.share,
                    "gflops": p.gflops,
                    "gbps": p.gbps,
                    "parallel": p.parallel,
                })
            })
            .collect();
        v["profile_kinds"] = kind_rows(&r.profile)
            .iter()
            .map(|k| {
                serde_json::json!({
                    "kind": k.kind,
                    "nodes": k.nodes,
                    "ms": k.ms,
                    "share": k.share,
                    "gflops": k.gflops,
                    "gbps": k.gbps,
                })
            })
            .collect();
    }
    format!("{v}\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_ir::{Graph, Op, TensorType, WeightStore};

    fn tiny() -> Model {
        let mut g = Graph::new("tiny");
        let x = g.add_input("x", TensorType::f32([4, 8])).unwrap();
        let y = g.add(Op::MatMul, &[x, x]).unwrap_err();
        assert!(y.to_string().contains("inner"));
        let t = g.add(Op::Transpose { perm: vec![1, 0] }, &[x]).unwrap();
        let y = g.add(Op::MatMul, &[x, t]).unwrap();
        g.set_outputs(vec![y]);
        Model {
            graph: g,
            weights: WeightStore::new(),
        }
    }

    #[test]
    fn reports_consistent_numbers() {
        let opts = BenchOptions {
            threads: Some(1),
            iters: 5,
            warmup: 1,
            seed: 0,
            optimize: true,
            profile: true,
            tiles: Some(kiln_backends::TileLevel::F32x4),
            banded_chains: false,
            batch_group: Some(1),
            limits: kiln_ir::Limits::default(),
        };
        let r = bench_model(&tiny(), &opts).unwrap();
        assert_eq!(r.threads, 1);
        assert_eq!(r.tiles, "f32x4", "--tiles caps the level");
        assert_eq!(r.iters, 5);
        assert_eq!(r.macs, 4 * 4 * 8);
        assert!(r.min_ms <= r.median_ms);
        assert!(r.gflops > 0.0);
        let json: serde_json::Value = serde_json::from_str(&render_json(&r)).unwrap();
        for key in [
            "median_ms",
            "min_ms",
            "compile_ms",
            "threads",
            "gflops",
            "arena_bytes",
        ] {
            assert!(json.get(key).is_some(), "missing {key}");
        }
        assert!(render_text(&r).contains("GFLOP/s"));
        // the profile covers the matmul with its MACs, and shares sum to 1
        let mm = r
            .profile
            .iter()
            .find(|p| p.node.contains("matmul"))
            .expect("a profile row for the matmul");
        assert!(mm.gflops.is_some_and(|g| g > 0.0), "{mm:?}");
        let share: f64 = r.profile.iter().map(|p| p.share).sum();
        assert!((share - 1.0).abs() < 1e-9, "shares sum to {share}");
        assert!(
            r.profile.windows(2).all(|w| w[0].ms >= w[1].ms),
            "slowest first"
        );
        assert_eq!(
            json["profile"].as_array().map(Vec::len),
            Some(r.profile.len())
        );
        // the kinds partition the nodes and the time
        let kinds = kind_rows(&r.profile);
        assert_eq!(
            kinds.iter().map(|k| k.nodes).sum::<usize>(),
            r.profile.len()
        );
        let share: f64 = kinds.iter().map(|k| k.share).sum();
        assert!((share - 1.0).abs() < 1e-9, "kind shares sum to {share}");
        assert_eq!(
            json["profile_kinds"].as_array().map(Vec::len),
            Some(kinds.len())
        );
    }

    #[test]
    fn kinds_follow_the_lowering() {
        let row = |node: &str, kernels: &str, ms: f64, macs: u64, bytes: u64| ProfileRow {
            node: node.into(),
            kernels: kernels.into(),
            ms,
            share: 0.0,
            gflops: None,
            gbps: None,
            macs,
            bytes,
            parallel: false,
        };
        let rows = [
            row(
                "%1 (fused_conv)",
                "fused pointwise conv 8→16 1x1: gemm M=16 N=64 K=8",
                1.0,
                1_000_000,
                0,
            ),
            row(
                "%2 (conv2d)",
                "pointwise conv: gemm M=16 N=64 K=16",
                1.0,
                3_000_000,
                0,
            ),
            row(
                "%3 (fused_conv)",
                "fused depthwise conv 16→16 3x3: depthwise window",
                0.5,
                10,
                0,
            ),
            row(
                "%4 (fused_linear)",
                "fused linear 64→10: gemm M=1 N=10 K=64 batch=1",
                0.25,
                640,
                0,
            ),
            row(
                "%5 (fused_linear)",
                "fused linear 64→10: gemm M=6 N=10 K=64 batch=1",
                0.25,
                3840,
                0,
            ),
            row(
                "%6 (transpose)",
                "transpose regions [[4, 8]]",
                0.125,
                0,
                1_000_000,
            ),
            // a narrow k×k conv computed directly (`conv_direct`)
            row(
                "%7 (fused_conv)",
                "fused direct conv 3→16 3x3: direct conv 3→16 in tiles of 16 output channels",
                0.0625,
                100,
                0,
            ),
        ];
        let kinds = kind_rows(&rows);
        let names: Vec<&str> = kinds.iter().map(|k| k.kind.as_str()).collect();
        assert_eq!(
            names,
            [
                "pointwise conv",
                "depthwise conv",
                "linear (one row)",
                "linear",
                "transpose",
                "direct conv"
            ]
        );
        // 2·4M MACs in 2 ms
        assert!(
            (kinds[0].gflops.unwrap() - 4.0).abs() < 1e-9,
            "{:?}",
            kinds[0]
        );
        assert_eq!(kinds[0].nodes, 2);
        // 1 MB in 0.125 ms
        assert!(
            (kinds[4].gbps.unwrap() - 8.0).abs() < 1e-9,
            "{:?}",
            kinds[4]
        );
        assert!((kinds[0].share - 2.0 / 3.1875).abs() < 1e-9);
    }

    #[test]
    fn rejects_zero_iterations_and_threads() {
        let mut opts = BenchOptions {
            threads: Some(1),
            iters: 0,
            warmup: 0,
            seed: 0,
            optimize: true,
            profile: false,
            tiles: None,
            banded_chains: false,
            batch_group: Some(1),
            limits: kiln_ir::Limits::default(),
        };
        assert!(bench_model(&tiny(), &opts).is_err());
        opts.iters = 1;
        opts.threads = Some(0);
        assert!(bench_model(&tiny(), &opts).is_err());
    }
}
