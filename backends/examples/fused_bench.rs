//! Measures what the fused conv/linear kernels buy: each zoo model compiled
//! unoptimised and optimised (`kiln_passes::optimize`, whose fused ops run
//! as epilogue kernels), median latency at 1 thread side by side.
//! `cargo run --release -p kiln-backends --example fused_bench [-- NAME...]`
//! (`ITERS=n`, default 30 after 5 warm-up runs).

use std::time::Instant;

use kiln_backends::{CompileOptions, CompiledModel, compile};
use kiln_frontends::zoo::{self, ZooOptions};
use kiln_ir::{Model, Tensor, Value};

const DEFAULT: [&str; 3] = ["mobile_former_26m", "mobile_former_294m", "mobilevitv2_050"];

/// Median wall time of `iters` runs after 5 warm-up runs, in milliseconds.
fn median_ms(m: &CompiledModel, inputs: &[Tensor], iters: usize) -> f64 {
    let mut out = m.run(inputs).expect("run");
    for _ in 0..5 {
        m.run_into(inputs, &mut out).expect("run");
    }
    let mut times: Vec<f64> = (0..iters)
        .map(|_| {
            let t = Instant::now();
            m.run_into(inputs, &mut out).expect("run");
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

fn inputs_of(model: &Model) -> Vec<Tensor> {
    let g = &model.graph;
    g.inputs()
        .iter()
        .map(|&n| {
            let ty = g.value_type(Value::of(n));
            let data: Vec<f32> = (0..ty.numel())
                .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5)
                .collect();
            Tensor::from_f32(ty.shape.clone(), data).expect("input")
        })
        .collect()
}

/// Prints the kernel kinds taking the most time (`PROFILE=1`): best of 5
/// profiled runs per kernel, summed by the description's first words.
fn top_kernels(label: &str, m: &CompiledModel, inputs: &[Tensor]) {
    let mut best: Vec<f64> = Vec::new();
    let mut names = Vec::new();
    for _ in 0..5 {
        let p = m.profile(inputs).expect("profile");
        if best.is_empty() {
            best = vec![f64::INFINITY; p.len()];
            names = p
                .iter()
                .map(|k| {
                    let w: Vec<&str> = k.kernel.split([':', '(']).collect();
                    w[0].split_whitespace()
                        .take(3)
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .collect();
        }
        for (b, k) in best.iter_mut().zip(&p) {
            *b = b.min(k.time.as_secs_f64() * 1e3);
        }
    }
    let mut by: std::collections::BTreeMap<String, f64> = Default::default();
    for (n, t) in names.into_iter().zip(best) {
        *by.entry(n).or_default() += t;
    }
    let mut v: Vec<_> = by.into_iter().collect();
    v.sort_by(|a, b| b.1.total_cmp(&a.1));
    println!("  {label}:");
    for (n, t) in v.iter().take(8) {
        println!("    {t:8.3} ms  {n}");
    }
}

fn main() {
    let mut names: Vec<String> = std::env::args().skip(1).collect();
    if names.is_empty() {
        names = DEFAULT.iter().map(|s| s.to_string()).collect();
    }
    let iters = std::env::var("ITERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30usize)
        .max(1);
    let opts = CompileOptions {
        threads: Some(1),
        ..CompileOptions::default()
    };
    println!(
        "{:<20} {:>12} {:>12} {:>8} {:>8} {:>8}",
        "model", "unopt ms", "opt ms", "speedup", "kernels", "fused"
    );
    for name in names {
        let model = zoo::build(&name, &ZooOptions::default()).expect("zoo model");
        let (opt, _) =
            kiln_passes::optimize(&model, &kiln_passes::OptOptions::default()).expect("optimize");
        let inputs = inputs_of(&model);
        let base = compile(&model, &opts).expect("compile unoptimised");
        let fused = compile(&opt, &opts).expect("compile optimised");
        let t_base = median_ms(&base, &inputs, iters);
        let t_fused = median_ms(&fused, &inputs, iters);
        let kernels = fused.kernel_descriptions();
        let n_fused = kernels
            .iter()
            .filter(|(_, k)| k.starts_with("fused"))
            .count();
        if std::env::var_os("PROFILE").is_some() {
            for (label, m) in [("unoptimised", &base), ("optimised", &fused)] {
                top_kernels(label, m, &inputs);
            }
        }
        println!(
            "{:<20} {:>12.3} {:>12.3} {:>7.2}x {:>4}/{:<4} {:>6}",
            name,
            t_base,
            t_fused,
            t_base / t_fused,
            base.kernel_descriptions().len(),
            kernels.len(),
            n_fused
        );
    }
}
