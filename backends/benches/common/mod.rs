//! Shared bench helpers: single-op models with seeded values, and a
//! criterion group per kernel family reporting FLOP/s as "elements/s"
//! (one element = one floating-point operation; 2 per multiply-add).

#![allow(dead_code)]

use criterion::{BenchmarkId, Criterion, Throughput};
use kiln_backends::{CompileOptions, GemmTile, OptLevel, compile};
use kiln_ir::{Graph, Model, Op, Tensor, TensorType, WeightStore};

/// `n` deterministic values in [-0.5, 0.5) (xorshift).
pub fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        })
        .collect()
}

/// A model of one op over one input of `x` and constant operands `ws`.
pub fn single(op: Op, x: &[usize], ws: &[Vec<usize>]) -> (Model, Vec<Tensor>) {
    let mut g = Graph::new("bench");
    let mut weights = WeightStore::new();
    let mut args = vec![g.add_input("x", TensorType::f32(x)).unwrap()];
    for (i, w) in ws.iter().enumerate() {
        let name = format!("w{i}");
        args.push(g.add_weight(&name, TensorType::f32(w.clone())).unwrap());
        let n = w.iter().product();
        weights.insert(
            name,
            Tensor::from_f32(w.clone(), values(n, i as u64 + 7)).unwrap(),
        );
    }
    let y = g.add(op, &args).unwrap();
    g.set_outputs(vec![y]);
    let n = x.iter().product();
    let input = Tensor::from_f32(x.to_vec(), values(n, 1)).unwrap();
    (Model { graph: g, weights }, vec![input])
}

/// Benchmarks `run_into` of `model` under `id`, `flops` per run.
pub fn bench_model(
    c: &mut Criterion,
    group: &str,
    id: &str,
    model: &Model,
    inputs: &[Tensor],
    flops: u64,
    opts: &CompileOptions,
) {
    bench_throughput(
        c,
        group,
        id,
        model,
        inputs,
        Throughput::Elements(flops),
        opts,
    );
}

/// Benchmarks `run_into` of `model` under `id` with any throughput unit
/// (bytes for memory-bound kernels).
pub fn bench_throughput(
    c: &mut Criterion,
    group: &str,
    id: &str,
    model: &Model,
    inputs: &[Tensor],
    throughput: Throughput,
    opts: &CompileOptions,
) {
    let m = compile(model, opts).unwrap();
    let mut out = m.run(inputs).unwrap();
    let mut g = c.benchmark_group(group);
    g.throughput(throughput);
    g.bench_function(BenchmarkId::from_parameter(id), |b| {
        b.iter(|| m.run_into(inputs, &mut out).unwrap())
    });
    g.finish();
}

/// One thread, default options, optionally another tile or opt level.
pub fn opts(tile: Option<(usize, usize)>, level: OptLevel) -> CompileOptions {
    CompileOptions {
        threads: Some(1),
        tile_opt_level: level,
        gemm_tile: tile.map_or_else(GemmTile::default, |(mr, nr)| GemmTile { mr, nr }),
        ..CompileOptions::default()
    }
}

/// [`opts`] without the assembled AVX-512 tiles: the Cranelift tile alone.
pub fn cranelift_only(tile: Option<(usize, usize)>, level: OptLevel) -> CompileOptions {
    CompileOptions {
        asm_tiles: false,
        ..opts(tile, level)
    }
}
