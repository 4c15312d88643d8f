//! One model, one optimised graph, whatever the exporter: three small
//! models (MobileViTv2, Mobile-Former, a plain transformer), each exported
//! by PyTorch's TorchScript exporter at opsets 13 and 17 and by the dynamo
//! exporter called the default way (opset 20, weights in a side file) —
//! `tests/data/spellings`, written by `tools/export_spellings.py`, whose
//! MANIFEST.md records how.
//!
//! Every file must import (external data, symbolic batch), reproduce
//! PyTorch's output before and after the optimiser, and optimise to the
//! same graph up to value names as the other spellings of its model. Each
//! file's optimised graph is a reviewed snapshot: its ops with their result
//! types, sorted (names and node order vary by exporter, the computation
//! must not).

mod common;

use std::path::PathBuf;

use kiln::frontends::npy;
use kiln::ir::{Graph, Tensor};
use kiln::passes::{OptOptions, optimize};
use kiln::{Backend, LoadOptions, load_model_with_notes, run_model};

const MODELS: [&str; 3] = ["mvit2", "mformer", "vit"];
const SPELLINGS: [&str; 3] = ["ts13", "ts17", "dynamo"];

fn data(file: &str) -> PathBuf {
    common::root().join("tests/data/spellings").join(file)
}

/// The graph's computing ops with their result types, one per line, sorted.
fn op_lines(g: &Graph) -> String {
    let mut lines: Vec<String> = g
        .node_ids()
        .filter(|&id| !g.node(id).op.is_leaf())
        .map(|id| {
            let n = g.node(id);
            let tys: Vec<String> = n.outputs.iter().map(|o| o.ty.to_string()).collect();
            format!("{} : {}", n.op.name(), tys.join(", "))
        })
        .collect();
    lines.sort();
    lines.join("\n")
}

fn max_rel_err(got: &Tensor, want: &Tensor) -> f32 {
    let (g, w) = (got.as_f32().unwrap(), want.as_f32().unwrap());
    assert_eq!(got.shape(), want.shape());
    let scale = w.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-6);
    g.iter().zip(w).fold(0f32, |m, (a, b)| m.max((a - b).abs())) / scale
}

/// Loads `model.spelling.onnx` and returns it optimised, after checking
/// both against PyTorch's output.
fn load_and_optimise(model: &str, spelling: &str) -> (kiln::ir::Model, Vec<String>) {
    let file = data(&format!("{model}.{spelling}.onnx"));
    let (m, notes) = load_model_with_notes(file.to_str().unwrap(), &LoadOptions::default())
        .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let x = npy::read(&data(&format!("{model}.input0.npy"))).unwrap();
    let want = npy::read(&data(&format!("{model}.output0.npy"))).unwrap();
    let got = run_model(&m, std::slice::from_ref(&x), Backend::Interp).unwrap();
    let err = max_rel_err(&got[0], &want);
    assert!(err <= 1e-4, "{model}.{spelling}: {err} against PyTorch");
    let (opt, _) = optimize(&m, &OptOptions::default()).unwrap();
    let got = run_model(&opt, &[x], Backend::Interp).unwrap();
    let err = max_rel_err(&got[0], &want);
    assert!(
        err <= 1e-4,
        "{model}.{spelling} optimised: {err} against PyTorch"
    );
    (opt, notes)
}

#[test]
fn every_spelling_optimises_to_one_graph() {
    for model in MODELS {
        let mut first: Option<(String, String)> = None;
        for spelling in SPELLINGS {
            let (opt, notes) = load_and_optimise(model, spelling);
            // TorchScript files declare a symbolic batch, pinned to 1.
            assert_eq!(
                notes.len(),
                usize::from(spelling != "dynamo"),
                "{model}.{spelling}: {notes:?}"
            );
            let ops = op_lines(&opt.graph);
            insta::assert_snapshot!(format!("{model}.{spelling}"), ops);
            match &first {
                None => first = Some((spelling.to_string(), ops)),
                Some((s0, ops0)) => assert_eq!(
                    &ops, ops0,
                    "{model}: {spelling} optimises to another graph than {s0}"
                ),
            }
        }
    }
}

/// A symbolic batch set with `--input-shape` (`LoadOptions::input_shapes`)
/// compiles for that batch, and the JIT computes every image as the batch-1
/// model does.
#[test]
fn a_symbolic_batch_runs_each_image_as_batch_one() {
    const N: usize = 3;
    for model in MODELS {
        let file = data(&format!("{model}.ts17.onnx"));
        let one = kiln::load_model(file.to_str().unwrap(), &LoadOptions::default()).unwrap();
        let opts = LoadOptions {
            input_shapes: vec![("input".into(), vec![N, 3, 32, 32])],
            ..LoadOptions::default()
        };
        let (batched, notes) = load_model_with_notes(file.to_str().unwrap(), &opts).unwrap();
        assert!(notes.is_empty(), "{notes:?}");
        // Three different images: the seeded input, scaled.
        let x = npy::read(&data(&format!("{model}.input0.npy"))).unwrap();
        let x = x.as_f32().unwrap();
        let images: Vec<Vec<f32>> = (0..N)
            .map(|k| x.iter().map(|v| v * (1.0 - 0.3 * k as f32)).collect())
            .collect();
        let xb = Tensor::from_f32(vec![N, 3, 32, 32], images.concat()).unwrap();
        let yb = run_model(&batched, &[xb], Backend::Jit).unwrap();
        let classes = yb[0].shape()[1];
        assert_eq!(yb[0].shape(), [N, classes]);
        for (k, img) in images.into_iter().enumerate() {
            let xk = Tensor::from_f32(vec![1, 3, 32, 32], img).unwrap();
            let want = run_model(&one, &[xk], Backend::Interp).unwrap();
            let row = &yb[0].as_f32().unwrap()[k * classes..(k + 1) * classes];
            let got = Tensor::from_f32(vec![1, classes], row.to_vec()).unwrap();
            let err = max_rel_err(&got, &want[0]);
            assert!(err <= 1e-4, "{model} image {k}: {err}");
        }
    }
}
