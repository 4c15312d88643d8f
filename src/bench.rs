//! `kiln bench`: compile a model with the JIT and time it.
//!
//! Reports compile time, median and minimum latency over `iters` timed runs
//! (after `warmup` untimed ones), GFLOP/s as `2·MACs / median` with MACs
//! counted as `kiln info` does (conv2d, matmul, gemm), and the arena size.
//! Inputs are the same seeded random tensors `kiln run` uses.

use std::time::Instant;

use kiln_backends::{CompileOptions, compile};
use kiln_ir::{Model, Tensor, Value, stats};

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
}

/// The measurement.
#[derive(Clone, Debug, PartialEq)]
pub struct BenchReport {
    /// graph name
    pub model: String,
    /// JIT compile time, milliseconds
    pub compile_ms: f64,
    /// median latency, milliseconds
    pub median_ms: f64,
    /// fastest run, milliseconds
    pub min_ms: f64,
    /// threads used
    pub threads: usize,
    /// `2·MACs / median`, in GFLOP/s
    pub gflops: f64,
    /// bytes of the per-call arena
    pub arena_bytes: usize,
    /// multiply-accumulates of one inference
    pub macs: u64,
    /// kernel functions generated
    pub kernels: usize,
    /// timed runs
    pub iters: usize,
}

/// Compiles and times `model`.
pub fn bench_model(model: &Model, opts: &BenchOptions) -> Result<BenchReport, KilnError> {
    if opts.iters == 0 {
        return Err(KilnError::Usage("--iters must be at least 1".into()));
    }
    if opts.threads == Some(0) {
        return Err(KilnError::Usage("--threads must be at least 1".into()));
    }
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
    let jit = compile(
        model,
        &CompileOptions {
            threads: opts.threads,
            ..CompileOptions::default()
        },
    )?;
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
    times.sort_by(f64::total_cmp);
    let n = times.len();
    let median_ms = if n % 2 == 1 {
        times[n / 2]
    } else {
        (times[n / 2 - 1] + times[n / 2]) / 2.0
    };
    let macs = stats::graph_macs(g);
    let st = jit.stats();
    Ok(BenchReport {
        model: g.name.clone(),
        compile_ms: st.compile_time.as_secs_f64() * 1e3,
        median_ms,
        min_ms: times[0],
        threads: st.threads,
        gflops: if median_ms > 0.0 {
            2.0 * macs as f64 / (median_ms * 1e-3) / 1e9
        } else {
            0.0
        },
        arena_bytes: st.arena_bytes,
        macs,
        kernels: st.kernels,
        iters: n,
    })
}

/// The human-readable report.
pub fn render_text(r: &BenchReport) -> String {
    format!(
        "model:    {}\nthreads:  {}\ncompile:  {:.1} ms ({} kernels)\nlatency:  median {:.3} ms, min {:.3} ms over {} runs\nthroughput: {:.2} GFLOP/s ({} MACs)\narena:    {} bytes ({:.2} MiB)\n",
        r.model,
        r.threads,
        r.compile_ms,
        r.kernels,
        r.median_ms,
        r.min_ms,
        r.iters,
        r.gflops,
        r.macs,
        r.arena_bytes,
        r.arena_bytes as f64 / (1024.0 * 1024.0)
    )
}

/// One JSON object; the keys `median_ms`, `min_ms`, `compile_ms`, `threads`,
/// `gflops` and `arena_bytes` are stable.
pub fn render_json(r: &BenchReport) -> String {
    let v = serde_json::json!({
        "model": r.model,
        "median_ms": r.median_ms,
        "min_ms": r.min_ms,
        "compile_ms": r.compile_ms,
        "threads": r.threads,
        "gflops": r.gflops,
        "arena_bytes": r.arena_bytes,
        "macs": r.macs,
        "kernels": r.kernels,
        "iters": r.iters,
    });
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
        };
        let r = bench_model(&tiny(), &opts).unwrap();
        assert_eq!(r.threads, 1);
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
    }

    #[test]
    fn rejects_zero_iterations_and_threads() {
        let mut opts = BenchOptions {
            threads: Some(1),
            iters: 0,
            warmup: 0,
            seed: 0,
        };
        assert!(bench_model(&tiny(), &opts).is_err());
        opts.iters = 1;
        opts.threads = Some(0);
        assert!(bench_model(&tiny(), &opts).is_err());
    }
}
