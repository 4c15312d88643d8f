//! The release run: every zoo model optimised and checked against the
//! original on the reference interpreter, with a table of fused-op counts,
//! optimiser time and relative error.
//!
//! Whole models on the f64 interpreter take minutes, so this runs only
//! with `KILN_ALL_MODELS=1` (docs/passes.md, "Tests"):
//!
//! ```text
//! KILN_ALL_MODELS=1 cargo test --release -p kiln-passes --test release_all -- --nocapture
//! ```
//!
//! CI covers the smallest model of each family in `tests/zoo.rs`
//! (`smallest_model_of_each_family_computes_the_same`), with the same
//! tolerance; the fused-op counts of all fifteen are checked there too.

mod common;

use kiln_frontends::zoo::{ZooOptions, build, list};
use kiln_passes::{OptOptions, Stop, optimize};

/// `max |out − ref| / max |ref|` over all outputs.
fn rel_error(a: &[kiln_ir::Tensor], b: &[kiln_ir::Tensor]) -> f64 {
    let mut worst = 0.0f64;
    for (x, y) in a.iter().zip(b) {
        assert_eq!(x.shape(), y.shape());
        let (x, y) = (x.as_f32().unwrap(), y.as_f32().unwrap());
        let scale = x.iter().fold(0.0f64, |m, v| m.max(f64::from(v.abs())));
        let diff = x
            .iter()
            .zip(y)
            .fold(0.0f64, |m, (p, q)| m.max(f64::from((p - q).abs())));
        worst = worst.max(diff / scale.max(1e-30));
    }
    worst
}

#[test]
fn every_zoo_model_optimises_to_the_same_function() {
    if std::env::var_os("KILN_ALL_MODELS").is_none_or(|v| v != "1") {
        println!("release_all: set KILN_ALL_MODELS=1 to optimise and check all zoo models");
        return;
    }
    let mut rows = Vec::new();
    for e in list() {
        let m = build(e.name, &ZooOptions::default()).unwrap();
        let (o, r) = optimize(&m, &OptOptions::default()).unwrap();
        assert_eq!(r.stop, Stop::Saturated, "{}", e.name);
        let ins = common::inputs(&m, 1);
        let want = kiln_ir::interp::run(&m.graph, &m.weights, &ins).unwrap();
        let got = kiln_ir::interp::run(&o.graph, &o.weights, &ins).unwrap();
        let err = rel_error(&want, &got);
        let fused: Vec<String> = r
            .fused()
            .iter()
            .map(|(k, v)| format!("{}={v}", k.trim_start_matches("fused_")))
            .collect();
        let ms = 1e3 * (r.saturate_time + r.extract_time).as_secs_f64();
        let row = format!(
            "| {} | {} | {:.0} | {err:.2e} |",
            e.name,
            fused.join(" "),
            ms
        );
        println!("{row}");
        rows.push(row);
        assert!(err <= 1e-4, "{}: relative error {err:e}", e.name);
    }
    println!("\n| model | fused ops | saturate+extract ms | max rel err |");
    println!("|---|---|---|---|");
    for row in rows {
        println!("{row}");
    }
}
