//! The attention-like fused ops at one thread, on the shapes the zoo's
//! optimised graphs contain: Mobile-Former's Mobile→Former and Former→Mobile
//! bridges (mobile_former_294m's first stage: a 24×56×56 feature map and 6
//! tokens of width 192) and MobileViTv2's separable self-attention
//! (mobilevitv2_050's 64×32×32 map, folded form with 2×2 patches, and the
//! unfolded form). They are memory-bound: throughput is in bytes/s of the
//! compulsory traffic (every operand and the output, read or written once),
//! to compare with the machine's bandwidth (about 30 GB/s from L2 per core,
//! ~10 GB/s from DRAM).

// criterion's macros define undocumented functions.
#![allow(missing_docs)]

mod common;

use common::{bench_throughput, opts, values};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use kiln_backends::OptLevel;
use kiln_ir::{Float, FusedOp, Graph, Model, Op, Tensor, TensorType, WeightStore};

/// A model of one fused op over activations `xs` (graph inputs) and
/// constants `ws`; also returns the compulsory bytes of one run.
fn fused(op: FusedOp, xs: &[Vec<usize>], ws: &[Vec<usize>]) -> (Model, Vec<Tensor>, u64) {
    let mut g = Graph::new("bench");
    let mut weights = WeightStore::new();
    let mut args = Vec::new();
    let mut inputs = Vec::new();
    let mut bytes = 0;
    for (i, x) in xs.iter().enumerate() {
        args.push(
            g.add_input(format!("x{i}"), TensorType::f32(x.clone()))
                .unwrap(),
        );
        let n: usize = x.iter().product();
        bytes += 4 * n;
        inputs.push(Tensor::from_f32(x.clone(), values(n, i as u64 + 1)).unwrap());
    }
    for (i, w) in ws.iter().enumerate() {
        let name = format!("w{i}");
        args.push(g.add_weight(&name, TensorType::f32(w.clone())).unwrap());
        let n: usize = w.iter().product();
        bytes += 4 * n;
        weights.insert(
            name,
            Tensor::from_f32(w.clone(), values(n, i as u64 + 7)).unwrap(),
        );
    }
    let y = g.add(Op::Fused(op), &args).unwrap();
    bytes += g.value_type(y).size_bytes();
    g.set_outputs(vec![y]);
    (Model { graph: g, weights }, inputs, bytes as u64)
}

fn bridges(c: &mut Criterion) {
    let (ch, hw, m, d, heads) = (24, 56, 6, 192, 2);
    let scale = Float(1.0 / ((ch / heads) as f32).sqrt());
    let (model, inputs, bytes) = fused(
        FusedOp::M2f {
            heads,
            scale,
            eps: Float(1e-5),
            proj_q: true,
            gate: true,
        },
        &[vec![1, ch, hw, hw], vec![1, m, d]],
        &[
            vec![d, ch],
            vec![ch],
            vec![d, ch],
            vec![ch],
            vec![ch, d],
            vec![d],
            vec![d],
            vec![d],
        ],
    );
    let o = opts(None, OptLevel::None);
    bench_throughput(
        c,
        "bridge",
        "m2f_24x56x56_6x192",
        &model,
        &inputs,
        Throughput::Bytes(bytes),
        &o,
    );
    let (model, inputs, bytes) = fused(
        FusedOp::F2m { heads, scale },
        &[vec![1, ch, hw, hw], vec![1, m, d]],
        &[vec![d, ch], vec![ch], vec![d, ch], vec![ch]],
    );
    bench_throughput(
        c,
        "bridge",
        "f2m_24x56x56_6x192",
        &model,
        &inputs,
        Throughput::Bytes(bytes),
        &o,
    );
}

fn separable_attention(c: &mut Criterion) {
    let d = 64;
    let ws = [
        vec![1 + 2 * d, d, 1, 1],
        vec![1 + 2 * d],
        vec![d, d, 1, 1],
        vec![d],
    ];
    let o = opts(None, OptLevel::None);
    for (id, patch, x) in [
        ("folded_64x32x32_p2", Some([2, 2]), vec![1, d, 32, 32]),
        ("unfolded_64x4x256", None, vec![1, d, 4, 256]),
    ] {
        let (model, inputs, bytes) = fused(FusedOp::SepAttn { patch }, &[x], &ws);
        bench_throughput(
            c,
            "separable_attention",
            id,
            &model,
            &inputs,
            Throughput::Bytes(bytes),
            &o,
        );
    }
}

criterion_group!(benches, bridges, separable_attention);
criterion_main!(benches);
