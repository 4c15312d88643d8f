//! Softmax at one thread on the zoo's shapes: Mobile-Former's Former→Mobile
//! bridge (each of 2×56×56 pixel queries over 3 tokens: many short rows),
//! its Mobile→Former bridge (6 token queries over 56×56 pixels: few long
//! rows) and MobileViTv2's separable attention (context scores over the 256
//! patches of mobilevitv2_050's first stage, 4 pixels per patch), at the
//! host's widest tile level and capped at `_avx2` and `_f32x4`. Memory
//! traffic is the input read and the output written once, in bytes/s.

// criterion's macros define undocumented functions.
#![allow(missing_docs)]

mod common;

use common::{bench_throughput, opts, single};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use kiln_backends::{CompileOptions, OptLevel, TileLevel};
use kiln_ir::Op;

fn softmax(c: &mut Criterion) {
    let o = opts(None, OptLevel::None);
    for (id, shape) in [
        ("f2m_6272x3", vec![6272, 3]),
        ("m2f_6x3136", vec![6, 3136]),
        ("sep_attn_1x1x4x256", vec![1, 1, 4, 256]),
    ] {
        let axis = shape.len() - 1;
        let (model, inputs) = single(Op::Softmax { axis }, &shape, &[]);
        let bytes = 2 * 4 * shape.iter().product::<usize>() as u64;
        // the host's widest level under the plain name, then capped
        for (suffix, level) in [
            ("", TileLevel::Avx512),
            ("_avx2", TileLevel::Avx2),
            ("_f32x4", TileLevel::F32x4),
        ] {
            let o = CompileOptions {
                max_tiles: level,
                ..o.clone()
            };
            bench_throughput(
                c,
                "softmax",
                &format!("{id}{suffix}"),
                &model,
                &inputs,
                Throughput::Bytes(bytes),
                &o,
            );
        }
    }
}

criterion_group!(benches, softmax);
criterion_main!(benches);
