//! What users run, end to end on the zoo: the optimiser then the JIT
//! (`kiln::compile`, as `kiln run` does), compared with the reference
//! interpreter on the model as built (max |out − ref| ≤ 1e-4 · max |ref|),
//! at 1 and 2 threads (which must agree bit for bit).
//!
//! CI checks the smallest model of each family. `KILN_ALL_MODELS=1` checks
//! all fifteen and prints a table with the interpreter's and the JIT's
//! times (run it in release mode:
//! `KILN_ALL_MODELS=1 cargo test --release --test zoo_all -- --nocapture`).

use std::time::Instant;

use kiln::frontends::zoo::{self, ZooOptions};
use kiln::ir::{Tensor, Value, interp};
use kiln::{CompileOptions, compile, random_input};

/// Result of one model.
struct Row {
    rel_err: f64,
    fused: usize,
    interp_ms: f64,
    jit_ms: f64,
    compile_ms: f64,
}

fn check(name: &str) -> Row {
    let model = zoo::build(name, &ZooOptions::default()).unwrap();
    let g = &model.graph;
    let inputs: Vec<Tensor> = g
        .inputs()
        .iter()
        .enumerate()
        .map(|(i, &id)| random_input(g.value_type(Value::of(id)), 7 + i as u64))
        .collect();
    let t = Instant::now();
    let want = interp::run(g, &model.weights, &inputs).unwrap();
    let interp_ms = t.elapsed().as_secs_f64() * 1e3;

    let mut results = Vec::new();
    let mut row = None;
    for threads in [1, 2] {
        let mut opts = CompileOptions::default();
        opts.backend.threads = Some(threads);
        let c = compile(&model, &opts).unwrap();
        let fused = c.report.as_ref().map_or(0, |r| {
            r.ops
                .iter()
                .filter(|(op, _)| op.starts_with("fused_"))
                .map(|(_, n)| n)
                .sum()
        });
        assert!(fused > 0, "{name}: the optimiser fused nothing");
        let mut got = c.model.run(&inputs).unwrap();
        // time a few more runs (the first includes page faults)
        let mut times = Vec::new();
        for _ in 0..5 {
            let t = Instant::now();
            c.model.run_into(&inputs, &mut got).unwrap();
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
        times.sort_by(f64::total_cmp);
        let mut rel_err = 0f64;
        for (a, b) in got.iter().zip(&want) {
            let (a, b) = (a.as_f32().unwrap(), b.as_f32().unwrap());
            let max_ref = b.iter().fold(0f32, |m, x| m.max(x.abs())) as f64;
            let max_diff = a
                .iter()
                .zip(b)
                .fold(0f64, |m, (x, y)| m.max((x - y).abs() as f64));
            assert!(
                max_diff.is_finite() && max_diff <= 1e-4 * max_ref,
                "{name} at {threads} thread(s): max |diff| {max_diff:e} > 1e-4 · {max_ref:e}"
            );
            rel_err = rel_err.max(max_diff / max_ref);
        }
        if threads == 1 {
            row = Some(Row {
                rel_err,
                fused,
                interp_ms,
                jit_ms: times[2],
                compile_ms: c.compile_time().as_secs_f64() * 1e3,
            });
        }
        results.push(got);
    }
    assert_eq!(
        results[0], results[1],
        "{name}: 1 and 2 threads differ (results must not depend on the thread count)"
    );
    row.unwrap()
}

#[test]
fn smallest_of_each_family() {
    for name in ["mobile_former_26m", "mobilevitv2_050", "xformer"] {
        check(name);
    }
}

#[test]
fn all_models_when_asked() {
    if std::env::var_os("KILN_ALL_MODELS").is_none() {
        eprintln!("all_models_when_asked: set KILN_ALL_MODELS=1 to check all 15 models");
        return;
    }
    println!(
        "{:<20} {:>6} {:>10} {:>10} {:>9} {:>9} {:>9}",
        "model", "fused", "rel err", "interp ms", "jit ms", "speed-up", "compile"
    );
    for e in zoo::list() {
        let r = check(e.name);
        println!(
            "{:<20} {:>6} {:>10.2e} {:>10.1} {:>9.3} {:>8.0}x {:>7.0}ms",
            e.name,
            r.fused,
            r.rel_err,
            r.interp_ms,
            r.jit_ms,
            r.interp_ms / r.jit_ms,
            r.compile_ms
        );
    }
}
