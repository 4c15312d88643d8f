//! ONNX export: a zoo model exported and re-imported computes the same on
//! the interpreter; exported models pass `onnx.checker` and onnxruntime
//! reproduces the interpreter's outputs.
//!
//! The onnxruntime check needs a Python with `onnx` and `onnxruntime`:
//! `KILN_ONNX_PYTHON` names it (`scripts/test` sets it to a venv under
//! `target/`). Unset, the test fails and says so; `KILN_ONNX_PYTHON=skip`
//! skips it on purpose.

mod onnx_common;

use std::path::{Path, PathBuf};
use std::process::Command;

use kiln_frontends::onnx::{ImportOptions, export, export_bytes, import_bytes, import_with_report};
use kiln_frontends::zoo::{self, ZooOptions};
use kiln_ir::{
    BinaryOp, DType, Float, Graph, Model, Op, PadMode, PoolKind, ReduceKind, Tensor, TensorType,
    UnaryOp, Value, WeightStore, interp,
};
use onnx_common::{assert_close, f32_tensor};

fn random_inputs(m: &Model, seed: u64) -> Vec<Tensor> {
    m.graph
        .inputs()
        .iter()
        .enumerate()
        .map(|(i, &id)| f32_tensor(&m.graph.value_type(Value::of(id)).shape, seed + i as u64))
        .collect()
}

/// Export → import gives a model whose interpreter output is the same, for
/// one model of each zoo family.
#[test]
fn zoo_models_round_trip_through_onnx() {
    for name in ["mobile_former_26m", "mobilevitv2_050", "xformer"] {
        let m = zoo::build(
            name,
            &ZooOptions {
                seed: 7,
                ..Default::default()
            },
        )
        .unwrap();
        let bytes = export_bytes(&m).unwrap();
        let (back, report) = import_bytes(&bytes, &ImportOptions::default()).unwrap();
        assert_eq!(report.opset, 21);
        assert_eq!(back.graph.inputs().len(), m.graph.inputs().len());
        // ONNX-21 has no SiLU: it is exported as x · sigmoid(x), one more
        // op each; nothing else may grow.
        let silus = m
            .graph
            .node_ids()
            .filter(|&id| m.graph.node(id).op == Op::Unary(UnaryOp::Silu))
            .count();
        assert!(
            back.graph.op_count() <= m.graph.op_count() + silus,
            "{name}: re-import grew from {} to {} ops",
            m.graph.op_count(),
            back.graph.op_count()
        );
        let x = random_inputs(&m, 1);
        let want = interp::run(&m.graph, &m.weights, &x).unwrap();
        let got = interp::run(&back.graph, &back.weights, &x).unwrap();
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(g.shape(), w.shape());
            // SiLU's two-op spelling rounds once more per activation.
            let rtol = if silus > 0 { 1e-4 } else { 1e-6 };
            assert_close(g.as_f32().unwrap(), w.as_f32().unwrap(), rtol, 1e-6, name);
        }
    }
}

/// A graph using every primitive op the zoo models do not, with awkward
/// attributes (reverse slices, asymmetric pads, reflect padding).
fn op_zoo() -> Model {
    let mut g = Graph::new("ops");
    let mut w = WeightStore::new();
    let mut weight = |g: &mut Graph, name: &str, shape: &[usize], seed: u64| {
        let t = f32_tensor(shape, seed);
        let v = g.add_weight(name, t.ty()).unwrap();
        w.insert(name, t);
        v
    };
    let x = g.add_input("x", TensorType::f32([2, 4, 6, 6])).unwrap();
    let add = |g: &mut Graph, op: Op, ins: &[Value]| g.add(op, ins).unwrap();
    let mp = add(
        &mut g,
        Op::Pool2d {
            kind: PoolKind::Max,
            kernel: [3, 3],
            stride: [2, 2],
            pad: [1, 0, 1, 1],
            count_include_pad: false,
        },
        &[x],
    );
    let ap = add(
        &mut g,
        Op::Pool2d {
            kind: PoolKind::Avg,
            kernel: [2, 2],
            stride: [1, 1],
            pad: [1, 1, 0, 0],
            count_include_pad: true,
        },
        &[mp],
    );
    let pd = add(
        &mut g,
        Op::Pad {
            pads: vec![0, 0, 1, 2, 0, 0, 2, 1],
            mode: PadMode::Reflect,
            value: Float(0.0),
        },
        &[ap],
    );
    let sl = add(
        &mut g,
        Op::Slice {
            axes: vec![3, 2],
            starts: vec![5, 0],
            ends: vec![-1, 6],
            steps: vec![-2, 2],
        },
        &[pd],
    );
    let hs = add(
        &mut g,
        Op::HardSigmoid {
            alpha: Float(0.2),
            beta: Float(0.5),
        },
        &[sl],
    );
    let c = add(
        &mut g,
        Op::Clip {
            min: Float(-0.3),
            max: Float(0.7),
        },
        &[sl],
    );
    let cat = add(&mut g, Op::Concat { axis: 1 }, &[hs, c]);
    // resize both ways: nearest from scales, bilinear from sizes
    let cs = g.value_type(cat).shape.clone();
    let up = add(
        &mut g,
        Op::Resize {
            mode: kiln_ir::ResizeMode::Nearest,
            nearest: kiln_ir::NearestMode::Floor,
            coord: kiln_ir::CoordMode::Asymmetric,
            size: [cs[2] * 2, cs[3] * 3],
            scale: Some([Float(2.0), Float(3.0)]),
        },
        &[cat],
    );
    let cat = add(
        &mut g,
        Op::Resize {
            mode: kiln_ir::ResizeMode::Linear,
            nearest: kiln_ir::NearestMode::RoundPreferFloor,
            coord: kiln_ir::CoordMode::HalfPixel,
            size: [cs[2] + 1, cs[3] * 2 - 1],
            scale: None,
        },
        &[up],
    );
    let dv = weight(&mut g, "mod.d", &[cs[3] * 2 - 1], 9);
    // (floored f32 mod exports as a Where construction kiln cannot import
    // back: floored_mod_runs_on_onnxruntime checks it)
    let cat = add(&mut g, Op::Binary(BinaryOp::Fmod), &[cat, dv]);
    let mut v = cat;
    for u in [
        UnaryOp::Sin,
        UnaryOp::Cos,
        UnaryOp::HardSwish,
        UnaryOp::Relu6,
        UnaryOp::Silu,
        UnaryOp::Tanh,
        UnaryOp::Abs,
        UnaryOp::GeluTanh,
        UnaryOp::Neg,
        UnaryOp::Exp,
        UnaryOp::Sqrt,
        UnaryOp::Log,
        UnaryOp::Erf,
        UnaryOp::Reciprocal,
    ] {
        v = add(&mut g, Op::Unary(u), &[v]);
    }
    let fl = add(&mut g, Op::Flatten { axis: 1 }, &[v]);
    let k = g.value_type(fl).shape[1];
    let gw = weight(&mut g, "gemm.w", &[5, k], 3);
    let gb = weight(&mut g, "gemm.b", &[5], 4);
    let gm = add(
        &mut g,
        Op::Gemm {
            alpha: Float(0.5),
            beta: Float(2.0),
            trans_a: false,
            trans_b: true,
        },
        &[fl, gw, gb],
    );
    let un = add(&mut g, Op::Unsqueeze { axes: vec![0, 2] }, &[gm]);
    let ex = add(
        &mut g,
        Op::Expand {
            shape: vec![3, 2, 4, 5],
        },
        &[un],
    );
    let rm = add(
        &mut g,
        Op::Reduce {
            kind: ReduceKind::Max,
            axes: vec![0],
            keepdims: false,
        },
        &[ex],
    );
    let sq = add(&mut g, Op::Squeeze { axes: vec![] }, &[rm]);
    let ga = add(
        &mut g,
        Op::Gather {
            axis: 2,
            indices: vec![4, -1, 0],
            indices_shape: vec![3],
        },
        &[sq],
    );
    let pw = weight(&mut g, "pow.e", &[3], 5);
    let ab = add(&mut g, Op::Unary(UnaryOp::Abs), &[ga]);
    let p = add(&mut g, Op::Binary(BinaryOp::Pow), &[ab, pw]);
    let mx = add(&mut g, Op::Binary(BinaryOp::Max), &[p, ga]);
    let mn = add(&mut g, Op::Binary(BinaryOp::Min), &[mx, pw]);
    let sm = add(&mut g, Op::Softmax { axis: 1 }, &[mn]);
    let parts = g
        .add_multi(
            Op::Split {
                axis: 2,
                sizes: vec![1, 2],
            },
            &[sm],
        )
        .unwrap();
    let cast = add(&mut g, Op::Cast { to: DType::I64 }, &[parts[1]]);
    let back = add(&mut g, Op::Cast { to: DType::F32 }, &[cast]);
    let rs = add(&mut g, Op::Reshape { shape: vec![4, 4] }, &[back]);
    let tr = add(&mut g, Op::Transpose { perm: vec![1, 0] }, &[rs]);
    let mm = add(&mut g, Op::MatMul, &[rs, tr]);
    g.set_outputs(vec![mm, parts[0], x]);
    Model {
        graph: g,
        weights: w,
    }
}

fn python() -> Option<PathBuf> {
    match std::env::var("KILN_ONNX_PYTHON") {
        Ok(s) if s == "skip" => {
            kiln_ir::skip::skip(
                "onnxruntime check of exported models",
                "KILN_ONNX_PYTHON=skip",
            );
            None
        }
        Ok(s) => Some(PathBuf::from(s)),
        Err(_) => panic!(
            "KILN_ONNX_PYTHON is not set: run scripts/test (which makes a venv with onnx and \
             onnxruntime), point it at such a python, or set it to `skip` to skip on purpose"
        ),
    }
}

/// Checks `model.onnx` in `dir` with onnx.checker (full check, with shape
/// inference) and runs it on onnxruntime with `input_*.bin` (raw f32),
/// writing `output_*.bin`.
const ORT_SCRIPT: &str = r#"
import sys, os, numpy as np, onnx, onnxruntime as ort
d = sys.argv[1]
m = onnx.load(os.path.join(d, "model.onnx"))
onnx.checker.check_model(m, full_check=True)
s = ort.InferenceSession(os.path.join(d, "model.onnx"), providers=["CPUExecutionProvider"])
feeds = {}
for i, inp in enumerate(s.get_inputs()):
    shape = [int(x) for x in inp.shape]
    feeds[inp.name] = np.fromfile(os.path.join(d, f"input_{i}.bin"), dtype="<f4").reshape(shape)
for i, out in enumerate(s.run(None, feeds)):
    np.asarray(out, dtype="<f4").tofile(os.path.join(d, f"output_{i}.bin"))
"#;

fn check_with_onnxruntime(py: &Path, name: &str, m: &Model) {
    let dir = std::env::temp_dir().join(format!("kiln-onnx-export-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    export(m, &dir.join("model.onnx")).unwrap();
    let inputs = random_inputs(m, 11);
    for (i, t) in inputs.iter().enumerate() {
        let bytes: Vec<u8> = t
            .as_f32()
            .unwrap()
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        std::fs::write(dir.join(format!("input_{i}.bin")), bytes).unwrap();
    }
    let out = Command::new(py)
        .arg("-c")
        .arg(ORT_SCRIPT)
        .arg(&dir)
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", py.display()));
    assert!(
        out.status.success(),
        "{name}: onnx checker / onnxruntime failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let want = interp::run(&m.graph, &m.weights, &inputs).unwrap();
    for (i, w) in want.iter().enumerate() {
        let bytes = std::fs::read(dir.join(format!("output_{i}.bin"))).unwrap();
        let got: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        assert_close(
            &got,
            w.as_f32().unwrap(),
            1e-4,
            1e-5,
            &format!("{name} output {i}"),
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn exported_models_run_on_onnxruntime() {
    let Some(py) = python() else { return };
    check_with_onnxruntime(&py, "ops", &op_zoo());
    // floored f32 mod: ONNX allows only fmod=1 on floats, so it exports as
    // fmod plus a sign fix (Less, Xor, Equal, Not, And, Add, Where)
    let mut g = Graph::new("floored_mod");
    let x = g.add_input("x", TensorType::f32([3, 7])).unwrap();
    let d = g.add_weight("d", TensorType::f32([7])).unwrap();
    let y = g.add(Op::Binary(BinaryOp::Mod), &[x, d]).unwrap();
    g.set_outputs(vec![y]);
    let mut w = WeightStore::new();
    w.insert("d", f32_tensor(&[7], 11));
    let m = Model {
        graph: g,
        weights: w,
    };
    check_with_onnxruntime(&py, "floored mod", &m);
    for name in ["mobile_former_26m", "mobilevitv2_050", "xformer"] {
        let m = zoo::build(name, &ZooOptions::default()).unwrap();
        check_with_onnxruntime(&py, name, &m);
    }
    // The PyTorch fixtures, imported and exported again.
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/onnx");
    for f in [
        "mobilevitv2_block.torchscript.onnx",
        "mobileformer_block.dynamo.onnx",
    ] {
        let (m, _) = import_with_report(&data.join(f), &ImportOptions::default()).unwrap();
        check_with_onnxruntime(&py, f, &m);
    }
}

/// The op zoo itself round-trips through export and import.
#[test]
fn op_zoo_round_trips() {
    let m = op_zoo();
    let (back, _) = import_bytes(&export_bytes(&m).unwrap(), &ImportOptions::default()).unwrap();
    let x = random_inputs(&m, 2);
    let want = interp::run(&m.graph, &m.weights, &x).unwrap();
    let got = interp::run(&back.graph, &back.weights, &x).unwrap();
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(g.shape(), w.shape(), "output {i}");
        assert_close(
            g.as_f32().unwrap(),
            w.as_f32().unwrap(),
            1e-6,
            1e-7,
            "op zoo",
        );
    }
}
