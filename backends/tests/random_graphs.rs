//! Random graphs: valid random DAGs of the primitive op set (convolutions of
//! every kind, matrix products, norms, softmax, reductions, pooling, resize, data
//! movement, element-wise chains with residuals, sin/cos and remainders of
//! the input) on random small shapes,
//! compiled and compared with the interpreter at 1 and 2 threads.
//!
//! CI runs a bounded number; `KILN_RANDOM_GRAPHS=N` runs N. A failure
//! prints the seed and writes the graph as `.kir` text to the temp
//! directory (weights and inputs are regenerated from the seed).

mod common;

// The generator lives in `kiln_backends::testing::random`, shared with the
// differential fuzz target (`fuzz/fuzz_targets/jit_vs_interp.rs`).

use common::{check, check_scalar, check_with, opts};
use kiln_backends::testing::random::random_graph;
use kiln_backends::{CompileOptions, OptLevel};

fn run_seed(seed: u64) {
    let (model, inputs) = random_graph(seed);
    let result = std::panic::catch_unwind(|| {
        let what = format!("random graph seed {seed}");
        check(&what, &model, &inputs);
        // every graph also scalarised (the path of riscv64 without V)
        check_scalar(&what, &model, &inputs);
        // every third graph also at opt_level=speed: both levels must be right
        if seed.is_multiple_of(3) {
            let options = CompileOptions {
                opt_level: OptLevel::Speed,
                tile_opt_level: OptLevel::Speed,
                ..opts(2)
            };
            check_with(
                &format!("{what} at opt_level=speed"),
                &model,
                &inputs,
                &options,
            );
        }
    });
    if let Err(e) = result {
        let path = std::env::temp_dir().join(format!("kiln_random_{seed}.kir"));
        let _ = std::fs::write(&path, kiln_ir::text::print(&model.graph));
        eprintln!(
            "random graph seed {seed} failed; reproducer: {} (weights and inputs come from the seed)",
            path.display()
        );
        std::panic::resume_unwind(e);
    }
}

#[test]
fn random_graphs_match_the_interpreter() {
    let n: u64 = std::env::var("KILN_RANDOM_GRAPHS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    for seed in 0..n {
        run_seed(seed);
    }
}

/// The generator draws the ops added for the timm exports (issue 15), so
/// the test above and the fuzzer exercise them.
#[test]
fn random_graphs_draw_the_newer_ops() {
    let mut seen = std::collections::BTreeSet::new();
    for seed in 0..400 {
        let (m, _) = random_graph(seed);
        for id in m.graph.node_ids() {
            seen.insert(m.graph.node(id).op.name());
        }
    }
    for op in ["sin", "cos", "mod", "fmod", "resize"] {
        assert!(seen.contains(op), "{op} never drawn in 400 graphs");
    }
}
