//! Pointwise (1×1) convolutions at one thread: the GEMM micro-kernel on the
//! layer shapes these models spend most multiply-adds in, at every tile
//! level the host runs: `avx512` (assembled 14×32 zmm tile), `avx2`
//! (assembled 6×16 ymm tile) and `cranelift-4x8-none` (the Cranelift f32x4
//! tile every target has), side by side in one run. With
//! `KILN_BENCH_TILES=1` it also compares Cranelift tile shapes and
//! optimisation levels.

// criterion's macros define undocumented functions.
#![allow(missing_docs)]

mod common;

use common::{bench_model, cranelift_only, opts, single};
use criterion::{Criterion, criterion_group, criterion_main};
use kiln_backends::{CompileOptions, OptLevel, TileLevel};
use kiln_ir::Op;

const POINTWISE: Op = Op::Conv2d {
    stride: [1, 1],
    pad: [0, 0, 0, 0],
    dilation: [1, 1],
    groups: 1,
};

/// (C in, C out, H = W): the first three are mobilevitv2_050's
/// (`M=64 N=16384 K=32`, `M=128 N=4096 K=64`, `M=256 N=1024 K=128`), where B
/// rows are a power-of-two stride apart; the last four are awkward for the
/// 14×32 tile (`gemm::asm_tile_for`): mobilevitv2_050's `M=32 N=16384
/// K=16`, Mobile-Former's `M=16 N=12544 K=32` and its 7×7 maps (N = 49).
const SHAPES: [(usize, usize, usize); 11] = [
    (32, 64, 128),
    (64, 128, 64),
    (128, 256, 32),
    (32, 96, 56),
    (96, 192, 28),
    (192, 384, 14),
    (320, 1280, 7),
    (16, 32, 128),
    (32, 16, 112),
    (192, 1152, 7),
    (1152, 192, 7),
];

/// A tile shape (default when `None`), the level to compile it at, a label.
type Variant = (Option<(usize, usize)>, OptLevel, &'static str);

/// The assembled tile levels this host runs, widest first.
fn asm_levels() -> Vec<TileLevel> {
    let host = TileLevel::host();
    [TileLevel::Avx512, TileLevel::Avx2]
        .into_iter()
        .filter(|&l| l <= host)
        .collect()
}

fn pointwise(c: &mut Criterion) {
    let mut tiles: Vec<Variant> = vec![(None, OptLevel::None, "4x8-none")];
    if std::env::var("KILN_BENCH_TILES").is_ok() {
        tiles.extend([
            (None, OptLevel::Speed, "4x8-speed"),
            (Some((6, 8)), OptLevel::None, "6x8-none"),
            (Some((3, 12)), OptLevel::None, "3x12-none"),
            (Some((4, 12)), OptLevel::None, "4x12-none"),
            (Some((2, 16)), OptLevel::None, "2x16-none"),
            (Some((12, 4)), OptLevel::None, "12x4-none"),
        ]);
    }
    for (cin, cout, hw) in SHAPES {
        let (model, inputs) = single(
            POINTWISE,
            &[1, cin, hw, hw],
            &[vec![cout, cin, 1, 1], vec![cout]],
        );
        let flops = 2 * (cin * cout * hw * hw) as u64;
        for level in asm_levels() {
            bench_model(
                c,
                "pointwise_conv",
                &format!("{cin}to{cout}_{hw}x{hw}_{level}"),
                &model,
                &inputs,
                flops,
                &CompileOptions {
                    max_tiles: level,
                    ..opts(None, OptLevel::None)
                },
            );
        }
        for (tile, level, name) in &tiles {
            bench_model(
                c,
                "pointwise_conv",
                &format!("{cin}to{cout}_{hw}x{hw}_cranelift-{name}"),
                &model,
                &inputs,
                flops,
                &cranelift_only(*tile, *level),
            );
        }
    }
}

criterion_group!(benches, pointwise);
criterion_main!(benches);
