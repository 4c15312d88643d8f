//! Batch N > 1: a zoo model built for a batch (`--input-shape image=N,...`,
//! `LoadOptions::input_shapes`) computes every image on the JIT as the
//! batch-1 model does.

use kiln::ir::{Tensor, Value};
use kiln::{Backend, LoadOptions, load_model, random_input, run_model};

#[test]
fn a_zoo_model_runs_each_image_of_a_batch_as_batch_one() {
    const N: usize = 3;
    let name = "mobile_former_26m";
    let one = load_model(name, &LoadOptions::default()).unwrap();
    let ty = one
        .graph
        .value_type(Value::of(one.graph.inputs()[0]))
        .clone();
    let shape = ty.shape.clone();
    let batched = load_model(
        name,
        &LoadOptions {
            input_shapes: vec![("image".into(), [vec![N], shape[1..].to_vec()].concat())],
            ..LoadOptions::default()
        },
    )
    .unwrap();
    // The weights do not depend on the batch.
    assert_eq!(one.weights, batched.weights);
    let images: Vec<Tensor> = (0..N).map(|k| random_input(&ty, k as u64)).collect();
    let data: Vec<f32> = images
        .iter()
        .flat_map(|t| t.as_f32().unwrap().to_vec())
        .collect();
    let xb = Tensor::from_f32([vec![N], shape[1..].to_vec()].concat(), data).unwrap();
    let yb = run_model(&batched, &[xb], Backend::Jit).unwrap();
    let classes = yb[0].shape()[1];
    assert_eq!(yb[0].shape(), [N, classes]);
    for (k, x) in images.into_iter().enumerate() {
        let want = run_model(&one, &[x], Backend::Jit).unwrap();
        let want = want[0].as_f32().unwrap();
        let got = &yb[0].as_f32().unwrap()[k * classes..(k + 1) * classes];
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        let err = got
            .iter()
            .zip(want)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(err <= 1e-4 * scale, "image {k}: {err} (scale {scale})");
    }
}
