//! Depthwise convolutions at one thread, on the shapes of the MobileNet-style
//! blocks these models use (3×3 stride 1 and 2, and an expanding one), and
//! the larger windows of the garden's models (ConvNeXt's and StarNet's 7×7,
//! EfficientNet's 5×5 stride 2, MixNet's 9×9 and 11×11).
//! Throughput is in FLOP/s ("elements" = 2 per multiply-add).

// criterion's macros define undocumented functions.
#![allow(missing_docs)]

mod common;

use common::{bench_model, cranelift_only, opts, single};
use criterion::{Criterion, criterion_group, criterion_main};
use kiln_backends::{CompileOptions, OptLevel, TileLevel};
use kiln_ir::Op;

/// (channels in, multiplier, H = W, stride): generic MobileNet blocks, then
/// Mobile-Former's (expanding ones included) and MobileViTv2's
const SHAPES: [(usize, usize, usize, usize); 12] = [
    (96, 1, 56, 1),
    (144, 1, 56, 2),
    (192, 1, 28, 1),
    (24, 4, 56, 1),
    (8, 3, 112, 2),
    (12, 6, 56, 2),
    (36, 1, 56, 1),
    (288, 1, 14, 1),
    (576, 1, 7, 1),
    (32, 1, 128, 1),
    (64, 1, 128, 2),
    (128, 1, 64, 1),
];

/// (channels, H = W, window, stride), padding `window / 2`: ConvNeXt-atto's
/// 7×7 at 56², 14² and 7², EfficientNet's 5×5 stride 2 and 5×5 at 14²,
/// MixNet's 9×9 and 11×11
const WINDOWS: [(usize, usize, usize, usize); 7] = [
    (40, 56, 7, 1),
    (160, 14, 7, 1),
    (320, 7, 7, 1),
    (144, 56, 5, 2),
    (480, 14, 5, 1),
    (120, 28, 9, 1),
    (200, 14, 11, 1),
];

fn depthwise(c: &mut Criterion) {
    let avx2 = CompileOptions {
        max_tiles: TileLevel::Avx2,
        ..opts(None, OptLevel::None)
    };
    let levels = [
        ("avx512", opts(None, OptLevel::None)),
        ("avx2", avx2),
        ("f32x4", cranelift_only(None, OptLevel::None)),
    ];
    for (ch, hw, k, s) in WINDOWS {
        let p = k / 2;
        let op = Op::Conv2d {
            stride: [s, s],
            pad: [p, p, p, p],
            dilation: [1, 1],
            groups: ch,
        };
        let (model, inputs) = single(op, &[1, ch, hw, hw], &[vec![ch, 1, k, k], vec![ch]]);
        let out = hw.div_ceil(s);
        let flops = 2 * (ch * out * out * k * k) as u64;
        for (what, o) in &levels {
            bench_model(
                c,
                "depthwise_conv",
                &format!("{ch}_{hw}x{hw}_k{k}_s{s}_{what}"),
                &model,
                &inputs,
                flops,
                o,
            );
        }
    }
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
        // GB/s = (input + output + weights and bias) bytes / time: the
        // kernel is memory- and latency-bound
        let bytes = 4 * (ch * hw * hw + o * out * out + o * 10);
        // the assembled AVX-512 and AVX2 interiors, and the f32x4
        // Cranelift kernel
        for (what, o) in &levels {
            bench_model(
                c,
                "depthwise_conv",
                &format!("{ch}x{mult}_{hw}x{hw}_s{s}_{what}_{bytes}B"),
                &model,
                &inputs,
                flops,
                o,
            );
        }
    }
}

criterion_group!(benches, depthwise);
criterion_main!(benches);
