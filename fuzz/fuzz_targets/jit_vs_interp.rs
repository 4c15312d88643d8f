//! Differential: a random graph (the generator of `backends/tests/random_graphs.rs`,
//! `kiln_backends::testing::random`), compiled with the JIT under options the
//! input picks, must compute what the reference interpreter computes.
//!
//! Input layout: bytes 0..8 are the generator's seed (little-endian, missing
//! bytes zero); byte 8, when present, picks the options: bit 0 two threads
//! instead of one, bits 1-2 the widest tile level (0 and 3 the host's,
//! 1 AVX2, 2 Cranelift f32x4 — capped at what the host runs), bit 3 the
//! scalarised path (riscv64 without V), bit 4 the optimiser first (fusions,
//! as `kiln run` compiles), bit 5 Cranelift `speed` optimisation, bit 6
//! Cranelift's IR verifier off (it slows every compile; off for some
//! inputs buys executions, and the results are compared either way).
//! The generator consumes the seed, so libFuzzer's mutations explore seeds
//! and options rather than graph structure byte by byte. With
//! `KILN_FUZZ_PRINT` set, each input's graph is printed first.

#![no_main]

use kiln_backends::testing::random::{poisoned, random_graph, rel_error, tolerances};
use kiln_backends::{CompileOptions, OptLevel, TileLevel, compile};
use kiln_ir::interp;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut seed = [0u8; 8];
    let n = data.len().min(8);
    seed[..n].copy_from_slice(&data[..n]);
    let seed = u64::from_le_bytes(seed);
    let flags = data.get(8).copied().unwrap_or(0);

    let (model, inputs) = random_graph(seed);
    // For reproducers that crash before the comparison can print the graph
    // (an out-of-bounds write found at a later free, say).
    if std::env::var_os("KILN_FUZZ_PRINT").is_some() {
        eprintln!(
            "seed {seed} flags {flags:#04x}\n{}",
            kiln_ir::text::print(&model.graph)
        );
    }
    let host = TileLevel::host();
    let level = match (flags >> 1) & 3 {
        1 => TileLevel::Avx2.min(host),
        2 => TileLevel::F32x4,
        _ => host,
    };
    let speed = flags & 32 != 0;
    let options = CompileOptions {
        threads: Some(if flags & 1 != 0 { 2 } else { 1 }),
        // Cranelift's verifier: a lowering bug is an error, not a miscompile
        verify_ir: flags & 64 == 0,
        max_tiles: level,
        scalarize: flags & 8 != 0,
        asm_tiles: flags & 8 == 0,
        opt_level: if speed {
            OptLevel::Speed
        } else {
            OptLevel::None
        },
        tile_opt_level: if speed {
            OptLevel::Speed
        } else {
            OptLevel::None
        },
        ..CompileOptions::default()
    };
    let what = format!("random graph seed {seed} flags {flags:#04x} ({options:?})");

    // The oracle runs the graph as generated, like `kiln run` does.
    let want = interp::run(&model.graph, &model.weights, &inputs)
        .unwrap_or_else(|e| panic!("{what}: interpreter failed: {e}"));
    // See the comparison below.
    let tols = tolerances(&model, &inputs, &want)
        .unwrap_or_else(|e| panic!("{what}: rounding sensitivity failed: {e}"));
    let compiled_model = if flags & 16 != 0 {
        kiln_passes::optimize(&model, &Default::default())
            .unwrap_or_else(|e| panic!("{what}: optimiser failed: {e}"))
            .0
    } else {
        model
    };
    let m = compile(&compiled_model, &options)
        .unwrap_or_else(|e| panic!("{what}: compile failed: {e}"));
    let mut got = poisoned(&m);
    m.run_into(&inputs, &mut got)
        .unwrap_or_else(|e| panic!("{what}: run failed: {e}"));
    // TOL (1e-4 of the largest reference magnitude) is the tolerance of
    // every differential test (backends/tests, tests/zoo_all.rs): the
    // interpreter accumulates in f64, the JIT in f32 in another order and
    // with polynomial exp/tanh/erf (errors in codegen/math.rs), and a
    // random graph chains up to 18 such ops. Where the graph itself
    // amplifies rounding noise past that (a norm over a group whose spread
    // is rounding noise), the tolerance is ten times the measured
    // amplification of 4-ulp noise instead (`testing::random::tolerances`).
    for (k, ((g, w), tol)) in got.iter().zip(&want).zip(tols).enumerate() {
        let e = rel_error(g, w);
        assert!(
            e <= tol,
            "{what}: output {k} differs from the interpreter: relative error {e:.3e} (tolerance {tol:.3e})\n{}",
            kiln_ir::text::print(&compiled_model.graph)
        );
    }
});
