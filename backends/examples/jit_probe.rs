//! A developer probe: compiles one pointwise convolution and times it.
//! `cargo run -p kiln-backends --release --example jit_probe -- CIN COUT HW [MR NR]`
//! (`KILN_NO_ASM=1`: the Cranelift tile only)
//! (set `KILN_JIT_DISASM=1` to see the machine code).

use std::time::Instant;

use kiln_backends::{CompileOptions, GemmTile, compile};
use kiln_ir::{Graph, Model, Op, Tensor, TensorType, WeightStore};

fn main() {
    let a: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|s| s.parse().ok())
        .collect();
    let (cin, cout, hw) = (
        a.first().copied().unwrap_or(96),
        a.get(1).copied().unwrap_or(192),
        a.get(2).copied().unwrap_or(28),
    );
    let tile = GemmTile {
        mr: a.get(3).copied().unwrap_or(4),
        nr: a.get(4).copied().unwrap_or(8),
    };
    let mut g = Graph::new("probe");
    let x = g.add_input("x", TensorType::f32([1, cin, hw, hw])).unwrap();
    let w = g
        .add_weight("w", TensorType::f32([cout, cin, 1, 1]))
        .unwrap();
    let y = g
        .add(
            Op::Conv2d {
                stride: [1, 1],
                pad: [0; 4],
                dilation: [1, 1],
                groups: 1,
            },
            &[x, w],
        )
        .unwrap();
    g.set_outputs(vec![y]);
    let mut weights = WeightStore::new();
    weights.insert(
        "w",
        Tensor::from_f32([cout, cin, 1, 1], vec![0.01; cout * cin]).unwrap(),
    );
    let model = Model { graph: g, weights };
    let opts = CompileOptions {
        threads: Some(1),
        gemm_tile: tile,
        tile_opt_level: if std::env::var("KILN_TILE_OPT").as_deref() == Ok("speed") {
            kiln_backends::OptLevel::Speed
        } else {
            kiln_backends::OptLevel::None
        },
        asm_tiles: std::env::var_os("KILN_NO_ASM").is_none(),
        ..CompileOptions::default()
    };
    let m = compile(&model, &opts).unwrap();
    let input = Tensor::from_f32([1, cin, hw, hw], vec![0.5; cin * hw * hw]).unwrap();
    let mut out = m.run(std::slice::from_ref(&input)).unwrap();
    let flops = 2.0 * (cin * cout * hw * hw) as f64;
    let mut best = f64::MAX;
    for _ in 0..20 {
        let t = Instant::now();
        for _ in 0..10 {
            m.run_into(std::slice::from_ref(&input), &mut out).unwrap();
        }
        best = best.min(t.elapsed().as_secs_f64() / 10.0);
    }
    let source = if m.stats().asm_variants > 0 {
        "assembled AVX-512 14x32".to_string()
    } else {
        format!("Cranelift {}x{}", tile.mr, tile.nr)
    };
    println!(
        "{cin}->{cout} {hw}x{hw} {source}: {:.1} GFLOP/s",
        flops / best / 1e9
    );
}
