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

/// The differential tolerance widens only where the graph itself amplifies
/// rounding: the fuzzer's one mismatch (the graph below, the one
/// tests/corpus/jit_groupnorm_near_constant_seed generates, written out so
/// the test does not depend on the generator: a group norm over six values
/// that are all 32 up to rounding, so its output is amplified rounding
/// noise) gets a wider
/// tolerance on that output and matches within it, under the options it
/// failed with; its other output, and every output of the first 60 random
/// graphs, keep TOL.
#[test]
fn the_tolerance_widens_only_for_ill_conditioned_graphs() {
    use kiln_backends::testing::random::{Fill, Rng, TOL, tensor, tolerances};
    let g = kiln_ir::text::parse(
        "graph near_constant_group {
          input %x : f32[2,8,6,4]
          weight @w0 : f32[1]
          weight @w1 : f32[1]
          %0 = softmax(%x) {axis=0} : f32[2,8,6,4]
          %1 = reduce_sum(%0) {axes=[0,1,3], keepdims=true} : f32[1,1,6,1]
          %2 = gelu(%1) : f32[1,1,6,1]
          %3 = group_norm(%2, @w0, @w1) {groups=1, eps=1e-5} : f32[1,1,6,1]
          %4 = gelu(%3) : f32[1,1,6,1]
          %5 = hard_sigmoid(%0) {alpha=0.2, beta=0.5} : f32[2,8,6,4]
          output %5, %4
        }",
    )
    .unwrap();
    let mut rng = Rng(3_567_966_930_646_308_543);
    let mut weights = kiln_ir::WeightStore::new();
    weights.insert(
        "w0".to_string(),
        tensor(&mut rng, &[1], Fill::Range(0.5, 2.0)),
    );
    weights.insert(
        "w1".to_string(),
        tensor(&mut rng, &[1], Fill::Range(-1.0, 1.0)),
    );
    let inputs = vec![tensor(&mut rng, &[2, 8, 6, 4], Fill::Range(-3.0, 3.0))];
    let model = kiln_ir::Model { graph: g, weights };
    let want = kiln_ir::interp::run(&model.graph, &model.weights, &inputs).unwrap();
    let tols = tolerances(&model, &inputs, &want).unwrap();
    assert_eq!(
        tols[0], TOL,
        "hard_sigmoid of a softmax is well conditioned"
    );
    assert!(
        tols[1] > 10.0 * TOL,
        "group norm of rounding noise: {tols:?}"
    );
    let m = kiln_backends::compile(
        &model,
        &CompileOptions {
            max_tiles: kiln_backends::TileLevel::Avx2.min(kiln_backends::TileLevel::host()),
            ..opts(2)
        },
    )
    .unwrap();
    assert_within(&m, &inputs, &want, &tols);
    for seed in 0..60 {
        let (model, inputs) = random_graph(seed);
        let want = kiln_ir::interp::run(&model.graph, &model.weights, &inputs).unwrap();
        let tols = tolerances(&model, &inputs, &want).unwrap();
        assert!(
            tols.iter().all(|&t| t == TOL),
            "seed {seed}: {tols:?}\n{}",
            kiln_ir::text::print(&model.graph)
        );
    }
}

/// The fuzzer's second near-miss (tests/corpus/jit_cancelled_sum_group_norm_seed,
/// seed 8793559748074515984, flags 0x2b: two threads, opt_level speed, the
/// scalarised path): a sum of `concat(-x, x)` over channels is exactly 0
/// in the reference and rounding noise of the size of `x` in f32, and a
/// group norm over three such sums outputs that noise amplified. Perturbing
/// each result by a fraction of itself missed it (0 stays 0); the
/// sensitivity now scales a sum's noise with its terms' magnitudes, so
/// that output gets a wider tolerance and the JIT matches within it, while
/// the conv chain beside it keeps TOL.
#[test]
fn a_sum_that_cancels_to_zero_is_ill_conditioned() {
    use kiln_backends::testing::random::{TOL, tolerances};
    let (model, inputs) = random_graph(8_793_559_748_074_515_984);
    let want = kiln_ir::interp::run(&model.graph, &model.weights, &inputs).unwrap();
    let tols = tolerances(&model, &inputs, &want).unwrap();
    assert_eq!(tols[0], TOL, "the conv chain is well conditioned: {tols:?}");
    assert!(
        tols[1] > 10.0 * TOL,
        "group norm of a cancelled sum: {tols:?}"
    );
    let m = kiln_backends::compile(
        &model,
        &CompileOptions {
            opt_level: OptLevel::Speed,
            tile_opt_level: OptLevel::Speed,
            asm_tiles: false,
            scalarize: true,
            ..opts(2)
        },
    )
    .unwrap();
    assert_within(&m, &inputs, &want, &tols);
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

/// Runs `m` on `inputs` into poisoned outputs and checks each output
/// against the interpreter's `want` within its tolerance.
fn assert_within(
    m: &kiln_backends::CompiledModel,
    inputs: &[kiln_ir::Tensor],
    want: &[kiln_ir::Tensor],
    tols: &[f64],
) {
    use kiln_backends::testing::random::{poisoned, rel_error};
    let mut got = poisoned(m);
    m.run_into(inputs, &mut got).unwrap();
    for ((g, w), tol) in got.iter().zip(want).zip(tols) {
        let e = rel_error(g, w);
        assert!(e <= *tol, "relative error {e:.3e} > {tol:.3e}");
    }
}
