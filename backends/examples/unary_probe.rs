//! Times one unary op over a large tensor (developer aid):
//! `cargo run -p kiln-backends --release --example unary_probe -- silu 1048576`
//! (`KILN_TILES=avx2` caps the tile level, as `kiln bench --tiles`)
use std::time::Instant;

use kiln_backends::{CompileOptions, compile};
use kiln_ir::{Graph, Model, Op, Tensor, TensorType, UnaryOp, WeightStore};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let name = args.first().map_or("silu", String::as_str);
    let n: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(1 << 20);
    let u = *UnaryOp::ALL
        .iter()
        .find(|u| u.name() == name)
        .expect("unknown unary op");
    let mut g = Graph::new("unary");
    let x = g.add_input("x", TensorType::f32([n])).unwrap();
    let y = g.add(Op::Unary(u), &[x]).unwrap();
    g.set_outputs(vec![y]);
    let model = Model {
        graph: g,
        weights: WeightStore::new(),
    };
    let m = compile(
        &model,
        &CompileOptions {
            threads: Some(1),
            opt_level: if std::env::var("KILN_OPT").as_deref() == Ok("none") {
                kiln_backends::OptLevel::None
            } else {
                kiln_backends::OptLevel::Speed
            },
            max_tiles: std::env::var("KILN_TILES")
                .ok()
                .and_then(|t| kiln_backends::TileLevel::parse(&t))
                .unwrap_or(kiln_backends::TileLevel::Avx512),
            ..CompileOptions::default()
        },
    )
    .unwrap();
    let input = Tensor::from_f32(
        [n],
        (0..n)
            .map(|i| (i % 1000) as f32 / 100.0 - 5.0)
            .collect::<Vec<_>>(),
    )
    .unwrap();
    let inputs = [input];
    let mut out = m.run(&inputs).unwrap();
    let mut best = f64::MAX;
    for _ in 0..50 {
        let t = Instant::now();
        m.run_into(&inputs, &mut out).unwrap();
        best = best.min(t.elapsed().as_secs_f64());
    }
    println!(
        "{name} over {n}: {:.3} ms, {:.2} Gelem/s",
        best * 1e3,
        n as f64 / best / 1e9
    );
}
