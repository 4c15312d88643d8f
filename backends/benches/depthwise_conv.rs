//! Depthwise convolutions at one thread, on the shapes of the MobileNet-style
//! blocks these models use (3×3 stride 1 and 2, and an expanding one).
//! Throughput is in FLOP/s ("elements" = 2 per multiply-add).

// criterion's macros define undocumented functions.
#![allow(missing_docs)]

mod common;

use common::{bench_model, opts, single};
use criterion::{Criterion, criterion_group, criterion_main};
use kiln_backends::OptLevel;
use kiln_ir::Op;

/// (channels in, multiplier, H = W, stride)
const SHAPES: [(usize, usize, usize, usize); 4] = [
    (96, 1, 56, 1),
    (144, 1, 56, 2),
    (192, 1, 28, 1),
    (24, 4, 56, 1),
];

fn depthwise(c: &mut Criterion) {
    for (ch, mult, hw, s) in SHAPES {
        let o = ch * mult;
        let op = Op::Conv2d {
            stride: [s, s],
            pad: [1, 1, 1, 1],
            dilation: [1, 1],
            groups: ch,
        };
        let (model, inputs) = single(op, &[1, ch, hw, hw], &[vec![o, 1, 3, 3], vec![o]]);
        let out = hw.div_ceil(s);
        let flops = 2 * (o * out * out * 9) as u64;
        bench_model(
            c,
            "depthwise_conv",
            &format!("{ch}x{mult}_{hw}x{hw}_s{s}"),
            &model,
            &inputs,
            flops,
            &opts(None, OptLevel::None),
        );
    }
}

criterion_group!(benches, depthwise);
criterion_main!(benches);
