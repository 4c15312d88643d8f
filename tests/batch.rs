//! Batch N > 1: a zoo model built for a batch (`--input-shape image=N,...`,
//! `LoadOptions::input_shapes`) computes every image on the JIT as the
//! batch-1 model does — run in groups of images (the default) with the
//! classifier once for the batch, or compiled whole (`batch_group:
//! None`), within the JIT's tolerance. A graph that mixes its images is compiled whole and
//! says why.

use kiln::frontends::zoo;
use kiln::ir::batch::rebatch;
use kiln::ir::{Model, Tensor, Value};
use kiln::{CompileOptions, LoadOptions, compile, load_model, random_input};

const N: usize = 4;

/// The zoo model `name` at batch 1 and at batch `n`.
fn one_and_batch(name: &str, n: usize) -> (Model, Model) {
    let one = load_model(name, &LoadOptions::default()).unwrap();
    let shape = one
        .graph
        .value_type(Value::of(one.graph.inputs()[0]))
        .shape
        .clone();
    let batched = load_model(
        name,
        &LoadOptions {
            input_shapes: vec![("image".into(), [vec![n], shape[1..].to_vec()].concat())],
            ..LoadOptions::default()
        },
    )
    .unwrap();
    (one, batched)
}

/// The largest difference between `got` and `want`, relative to the
/// largest magnitude of `want`.
fn max_err(got: &[f32], want: &[f32]) -> f32 {
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    got.iter()
        .zip(want)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()))
        / scale
}

fn options(threads: usize, batch_group: Option<usize>) -> CompileOptions {
    let mut o = CompileOptions {
        batch_group,
        ..CompileOptions::default()
    };
    o.backend.threads = Some(threads);
    o
}

#[test]
fn a_zoo_model_runs_each_image_of_a_batch_as_batch_one() {
    let name = "mobile_former_26m";
    let (one, batched) = one_and_batch(name, N);
    // The weights do not depend on the batch.
    assert_eq!(one.weights, batched.weights);
    let ty = one
        .graph
        .value_type(Value::of(one.graph.inputs()[0]))
        .clone();
    let images: Vec<Tensor> = (0..N).map(|k| random_input(&ty, k as u64)).collect();
    let data: Vec<f32> = images
        .iter()
        .flat_map(|t| t.as_f32().unwrap().to_vec())
        .collect();
    let xb = Tensor::from_f32([vec![N], ty.shape[1..].to_vec()].concat(), data).unwrap();
    for threads in [1, 2] {
        let single = compile(&one, &options(threads, Some(1))).unwrap().model;
        let want: Vec<Tensor> = images
            .iter()
            .map(|x| single.run(std::slice::from_ref(x)).unwrap().remove(0))
            .collect();
        let classes = want[0].shape()[1];
        // in groups of one and of two images, the classifier once for the
        // batch: the same as batch 1 up to the rounding of the classifier's
        // products, which are matrix products of N rows instead of 1
        for group in [1, 2] {
            let c = compile(&batched, &options(threads, Some(group))).unwrap();
            assert_eq!(c.model.groups(), N / group);
            assert_eq!(c.whole_batch, None);
            assert!(c.tail_graph.is_some(), "the classifier is cut off");
            assert_eq!(c.model.inputs()[0].1.shape[0], N);
            let yb = c.model.run(std::slice::from_ref(&xb)).unwrap();
            assert_eq!(yb[0].shape(), [N, classes]);
            for (k, w) in want.iter().enumerate() {
                let got = &yb[0].as_f32().unwrap()[k * classes..(k + 1) * classes];
                let err = max_err(got, w.as_f32().unwrap());
                assert!(
                    err <= 1e-5,
                    "image {k}, groups of {group}, {threads} thread(s): {err}"
                );
            }
        }
        // the whole batch in the kernels
        let c = compile(&batched, &options(threads, None)).unwrap();
        assert_eq!(c.model.groups(), 1);
        assert!(c.whole_batch.as_deref().unwrap().contains("all"));
        let yb = c.model.run(std::slice::from_ref(&xb)).unwrap();
        for (k, w) in want.iter().enumerate() {
            let got = &yb[0].as_f32().unwrap()[k * classes..(k + 1) * classes];
            let err = max_err(got, w.as_f32().unwrap());
            assert!(err <= 1e-4, "image {k}: {err}");
        }
    }
}

#[test]
fn every_zoo_model_splits_its_batch_into_images() {
    for e in zoo::list() {
        let (_, batched) = one_and_batch(e.name, 2);
        if let Err(why) = rebatch(&batched, 1) {
            panic!("{}: {why}", e.name);
        }
    }
}

#[test]
fn a_graph_that_mixes_its_images_is_compiled_whole() {
    // softmax over the batch axis: each image's result depends on the others
    let text = "graph mix {\n  input %x : f32[3,8]\n  weight @w : f32[8,8]\n  %m = matmul(%x, @w) : f32[3,8]\n  %s = softmax(%m) {axis=0} : f32[3,8]\n  output %s\n}\n";
    let graph = kiln::ir::text::parse(text).unwrap();
    let mut weights = kiln::ir::WeightStore::new();
    weights.insert("w", random_input(&kiln::ir::TensorType::f32([8, 8]), 7));
    let model = Model { graph, weights };
    let x = random_input(&kiln::ir::TensorType::f32([3, 8]), 1);
    let want =
        kiln::ir::interp::run(&model.graph, &model.weights, std::slice::from_ref(&x)).unwrap();
    for threads in [1, 2] {
        let c = compile(&model, &options(threads, Some(1))).unwrap();
        assert_eq!(c.model.groups(), 1);
        let why = c.whole_batch.unwrap();
        assert!(why.contains("softmax") && why.contains("mixes"), "{why}");
        let got = c.model.run(std::slice::from_ref(&x)).unwrap();
        let err = got[0]
            .as_f32()
            .unwrap()
            .iter()
            .zip(want[0].as_f32().unwrap())
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(err <= 1e-5, "{err}");
    }
}

/// Random graphs (the fuzz generator's, half of them on a batch of two):
/// each one `rebatch` accepts gives, image by image in the interpreter,
/// exactly the batch's result, and compiled in groups (with its tail, if
/// one is cut) the batch's result within the JIT's tolerance at 1 and 2
/// threads. The generator transposes, pads, slices, pools and reduces over
/// every axis, the batch's included, so most of its graphs do mix images
/// (of seeds 0..150, 74 are on a batch of two and 19 split; the refusals
/// read — softmax and sums over axis 0, pads that add an image, convs and
/// pools after a transpose moved the batch into the plane — are all
/// real); the test asks for at least 10, so that it proves something. The
/// refused ones are compiled whole and must match too.
#[test]
fn random_graphs_split_into_images_exactly() {
    use kiln::backends::testing::random::{random_graph, tolerances};
    let (mut batched, mut accepted) = (0, 0);
    for seed in 0..150u64 {
        let (model, inputs) = random_graph(seed);
        let n = inputs[0].shape()[0];
        if n < 2 || model.graph.inputs().len() != 1 {
            continue;
        }
        batched += 1;
        let want = kiln::ir::interp::run(&model.graph, &model.weights, &inputs).unwrap();
        if let Ok(one) = rebatch(&model, 1) {
            accepted += 1;
            let x = inputs[0].as_f32().unwrap();
            let len = x.len() / n;
            for k in 0..n {
                let mut shape = inputs[0].shape().to_vec();
                shape[0] = 1;
                let xk = Tensor::from_f32(shape, x[k * len..(k + 1) * len].to_vec()).unwrap();
                let got = kiln::ir::interp::run(&one.graph, &one.weights, &[xk]).unwrap();
                for (g, w) in got.iter().zip(&want) {
                    let w = w.as_f32().unwrap();
                    let part = w.len() / n;
                    assert_eq!(
                        g.as_f32().unwrap(),
                        &w[k * part..(k + 1) * part],
                        "seed {seed}, image {k}"
                    );
                }
            }
        }
        let tol = tolerances(&model, &inputs, &want).unwrap();
        for threads in [1, 2] {
            let c = compile(&model, &options(threads, Some(1))).unwrap();
            let got = c.model.run(&inputs).unwrap();
            for ((g, w), t) in got.iter().zip(&want).zip(&tol) {
                let err = kiln::backends::testing::random::rel_error(g, w);
                assert!(err <= *t, "seed {seed}, {threads} thread(s): {err} > {t}");
            }
        }
    }
    assert!(batched >= 40, "{batched} graphs on a batch of two");
    assert!(
        accepted >= 10,
        "only {accepted} of {batched} batch-2 graphs split into images"
    );
}
