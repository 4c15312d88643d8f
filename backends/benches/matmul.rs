//! Matrix products at one thread: linear layers over tokens (constant,
//! packed weights) and attention-style products of two activations.
//! Throughput is in FLOP/s ("elements" = 2 per multiply-add).

// criterion's macros define undocumented functions.
#![allow(missing_docs)]

mod common;

use common::{bench_model, opts, single, values};
use criterion::{Criterion, criterion_group, criterion_main};
use kiln_backends::OptLevel;
use kiln_ir::{Graph, Model, Op, Tensor, TensorType, WeightStore};

fn matmul(c: &mut Criterion) {
    // linear layers: [tokens, K] @ W[K, N]
    for (m, k, n) in [
        (196, 192, 384),
        (256, 128, 128),
        (49, 320, 1280),
        (6, 192, 192),
    ] {
        let (model, inputs) = single(Op::MatMul, &[m, k], &[vec![k, n]]);
        bench_model(
            c,
            "matmul_linear",
            &format!("{m}x{k}x{n}"),
            &model,
            &inputs,
            2 * (m * k * n) as u64,
            &opts(None, OptLevel::None),
        );
    }
    // attention: softmax(Q K^T) V per head, both products on activations
    for (heads, tokens, d) in [(4, 196, 32), (2, 256, 64)] {
        let mut g = Graph::new("attention");
        let q = g
            .add_input("q", TensorType::f32([heads, tokens, d]))
            .unwrap();
        let kt = g
            .add_input("kt", TensorType::f32([heads, d, tokens]))
            .unwrap();
        let v = g
            .add_input("v", TensorType::f32([heads, tokens, d]))
            .unwrap();
        let s = g.add(Op::MatMul, &[q, kt]).unwrap();
        let p = g.add(Op::Softmax { axis: 2 }, &[s]).unwrap();
        let o = g.add(Op::MatMul, &[p, v]).unwrap();
        g.set_outputs(vec![o]);
        let model = Model {
            graph: g,
            weights: WeightStore::new(),
        };
        let n = heads * tokens * d;
        let inputs = vec![
            Tensor::from_f32([heads, tokens, d], values(n, 1)).unwrap(),
            Tensor::from_f32([heads, d, tokens], values(n, 2)).unwrap(),
            Tensor::from_f32([heads, tokens, d], values(n, 3)).unwrap(),
        ];
        bench_model(
            c,
            "attention",
            &format!("{heads}h_{tokens}t_{d}d"),
            &model,
            &inputs,
            4 * (heads * tokens * tokens * d) as u64,
            &opts(None, OptLevel::None),
        );
    }
}

criterion_group!(benches, matmul);
criterion_main!(benches);
