//! Prints the CLIF of a small pointwise convolution (developer aid).
use kiln_backends::{CompileOptions, GemmTile, emit_clif};
use kiln_ir::{Graph, Model, Op, Tensor, TensorType, WeightStore};
fn main() {
    let mut g = Graph::new("probe");
    let x = g.add_input("x", TensorType::f32([1, 8, 4, 4])).unwrap();
    let w = g.add_weight("w", TensorType::f32([12, 8, 1, 1])).unwrap();
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
        Tensor::from_f32([12, 8, 1, 1], vec![0.01; 96]).unwrap(),
    );
    let opts = CompileOptions {
        threads: Some(1),
        gemm_tile: GemmTile { mr: 12, nr: 4 },
        ..CompileOptions::default()
    };
    println!(
        "{}",
        emit_clif(&Model { graph: g, weights }, &opts).unwrap()
    );
}
