//! Pointwise (1×1) convolutions at one thread: the GEMM micro-kernel on the
//! layer shapes these models spend most multiply-adds in. Also compares tile
//! shapes and Cranelift optimisation levels (`KILN_BENCH_TILES=1`).

// criterion's macros define undocumented functions.
#![allow(missing_docs)]

mod common;

use common::{bench_model, opts, single};
use criterion::{Criterion, criterion_group, criterion_main};
use kiln_backends::OptLevel;
use kiln_ir::Op;

const POINTWISE: Op = Op::Conv2d {
    stride: [1, 1],
    pad: [0, 0, 0, 0],
    dilation: [1, 1],
    groups: 1,
};

/// (C in, C out, H = W)
const SHAPES: [(usize, usize, usize); 4] =
    [(32, 96, 56), (96, 192, 28), (192, 384, 14), (320, 1280, 7)];

/// A tile shape (default when `None`), the level to compile it at, a label.
type Variant = (Option<(usize, usize)>, OptLevel, &'static str);

fn pointwise(c: &mut Criterion) {
    let tiles: Vec<Variant> = if std::env::var("KILN_BENCH_TILES").is_ok() {
        vec![
            (None, OptLevel::None, "4x8-none"),
            (None, OptLevel::Speed, "4x8-speed"),
            (Some((6, 8)), OptLevel::None, "6x8-none"),
            (Some((3, 12)), OptLevel::None, "3x12-none"),
            (Some((4, 12)), OptLevel::None, "4x12-none"),
            (Some((2, 16)), OptLevel::None, "2x16-none"),
        ]
    } else {
        vec![(None, OptLevel::None, "4x8-none")]
    };
    for (cin, cout, hw) in SHAPES {
        let (model, inputs) = single(
            POINTWISE,
            &[1, cin, hw, hw],
            &[vec![cout, cin, 1, 1], vec![cout]],
        );
        let flops = 2 * (cin * cout * hw * hw) as u64;
        for (tile, level, name) in &tiles {
            bench_model(
                c,
                "pointwise_conv",
                &format!("{cin}to{cout}_{hw}x{hw}_{name}"),
                &model,
                &inputs,
                flops,
                &opts(*tile, *level),
            );
        }
    }
}

criterion_group!(benches, pointwise);
criterion_main!(benches);
