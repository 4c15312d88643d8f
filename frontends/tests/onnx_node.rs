//! Conformance against the ONNX backend node tests.
//!
//! `tools/onnx_node_tests.py DIR` writes the tests (`DIR/test_*/model.onnx`,
//! `test_data_set_*/{input,output}_*.pb`, `tolerance.txt`); this runner
//! reads `DIR` from `KILN_ONNX_NODE_TESTS`, imports each model, runs it on
//! the reference interpreter and compares with the expected outputs.
//!
//! - **Tolerance**: each test's own `rtol`/`atol` from the onnx package
//!   (default `1e-3`/`1e-7`), as `|got - want| <= atol + rtol·|want|`;
//!   integer outputs must be equal; NaN matches NaN.
//! - **Specialisation**: kiln compiles static shapes, so `int64` and `bool`
//!   graph inputs (shapes, axes, indices, masks) are bound to the test's
//!   values as constants before import; float inputs stay runtime inputs,
//!   unless the importer needs one constant (Resize's `scales`): then every
//!   input after the first is bound, on a second try.
//! - **Skips**: a model the importer rejects as unsupported (an operator
//!   kiln lacks, an element type it cannot hold, an opset outside 11–21) is
//!   skipped with that reason, automatically. Every other skip is listed
//!   in `onnx_node_skip.txt` with its reason; a listed test that passes is
//!   reported as a stale entry and fails the run, so the list cannot hide a
//!   fixed — or a supported — operator.
//! - Unset `KILN_ONNX_NODE_TESTS` fails loudly; `KILN_ONNX_NODE_TESTS=skip`
//!   skips on purpose (`scripts/test` sets it up).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use kiln_frontends::FrontendError;
use kiln_frontends::onnx::proto::{ModelProto, TensorProto, tensor_proto::DataType, type_proto};
use kiln_frontends::onnx::{ImportOptions, Unsupported, import_proto, tensor_from_proto};
use kiln_ir::{Tensor, TensorData, interp};
use prost::Message;

enum Outcome {
    Pass,
    Fail(String),
    Skip(String),
}

fn skip_list() -> HashMap<String, String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/onnx_node_skip.txt");
    let text = std::fs::read_to_string(&path).expect("read onnx_node_skip.txt");
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (name, reason) = l.split_once(char::is_whitespace).unwrap_or((l, ""));
            let reason = reason.trim();
            assert!(!reason.is_empty(), "skip entry {name} gives no reason");
            (name.to_string(), reason.to_string())
        })
        .collect()
}

fn read_tensor(path: &Path) -> Result<TensorProto, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    TensorProto::decode(&bytes[..]).map_err(|e| format!("{}: {e}", path.display()))
}

fn elem_type(m: &ModelProto, name: &str) -> Option<i32> {
    let g = m.graph.as_ref()?;
    let vi = g.input.iter().find(|i| i.name.as_deref() == Some(name))?;
    match vi.r#type.as_ref()?.value.as_ref()? {
        type_proto::Value::TensorType(t) => t.elem_type,
        _ => None,
    }
}

fn unsupported_reason(items: &[Unsupported]) -> String {
    let mut parts: Vec<String> = items
        .iter()
        .map(|u| match u {
            Unsupported::Op { op_type, note, .. } => match note {
                Some(n) => format!("unsupported op {op_type} ({n})"),
                None => format!("unsupported op {op_type}"),
            },
            Unsupported::DType { dtype, .. } => format!("unsupported dtype {dtype}"),
            Unsupported::Opset { version } => format!("opset {version} outside 11-21"),
        })
        .collect();
    parts.sort();
    parts.dedup();
    parts.join(", ")
}

fn compare(got: &Tensor, want: &Tensor, rtol: f32, atol: f32) -> Result<(), String> {
    if got.shape() != want.shape() {
        return Err(format!(
            "shape {:?}, expected {:?}",
            got.shape(),
            want.shape()
        ));
    }
    let as_f64 = |t: &Tensor| -> Vec<f64> {
        match t.data() {
            TensorData::F32(v) => v.iter().map(|&x| x as f64).collect(),
            TensorData::I64(v) => v.iter().map(|&x| x as f64).collect(),
        }
    };
    let exact = want.dtype() == kiln_ir::DType::I64;
    let (g, w) = (as_f64(got), as_f64(want));
    for (i, (&a, &b)) in g.iter().zip(&w).enumerate() {
        let ok = if exact {
            a == b
        } else {
            (a.is_nan() && b.is_nan())
                || a == b
                || (a - b).abs() <= atol as f64 + rtol as f64 * b.abs()
        };
        if !ok {
            return Err(format!("element {i}: got {a}, expected {b}"));
        }
    }
    Ok(())
}

fn run_test(dir: &Path) -> Outcome {
    match try_run(dir) {
        Ok(o) => o,
        Err(e) => Outcome::Fail(e),
    }
}

fn try_run(dir: &Path) -> Result<Outcome, String> {
    let bytes = std::fs::read(dir.join("model.onnx")).map_err(|e| e.to_string())?;
    let mut model = ModelProto::decode(&bytes[..]).map_err(|e| format!("model.onnx: {e}"))?;
    let (rtol, atol) = std::fs::read_to_string(dir.join("tolerance.txt"))
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(|x| x.parse::<f32>());
            Some((it.next()?.ok()?, it.next()?.ok()?))
        })
        .unwrap_or((1e-3, 1e-7));
    let mut sets: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| e.to_string())?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    sets.sort();
    let input_names: Vec<String> = model
        .graph
        .as_ref()
        .map(|g| {
            g.input
                .iter()
                .map(|i| i.name.clone().unwrap_or_default())
                .collect()
        })
        .unwrap_or_default();

    // Bind integer and bool inputs (shapes, indices, masks) as constants;
    // this needs one data set, as every node test has. A float input the
    // importer needs constant (Resize's scales: a parameter, which a model
    // holds as an initialiser) is bound too, on a second try that binds
    // every input after the first.
    let first = sets.first().ok_or("no test data set")?;
    let pristine = model.clone();
    let mut runtime_inputs = Vec::new();
    let mut km = None;
    for bind_params in [false, true] {
        model = pristine.clone();
        runtime_inputs.clear();
        for (j, name) in input_names.iter().enumerate() {
            let et = elem_type(&model, name);
            let binds = et == Some(DataType::Int64 as i32)
                || et == Some(DataType::Bool as i32)
                || (bind_params && j > 0);
            if binds && sets.len() == 1 {
                let mut t = read_tensor(&first.join(format!("input_{j}.pb")))?;
                t.name = Some(name.clone());
                let g = model.graph.as_mut().ok_or("no graph")?;
                g.initializer.push(t);
            } else {
                runtime_inputs.push(j);
            }
        }
        match import_proto(&model, &ImportOptions::default()) {
            Ok((m, _)) => {
                km = Some(m);
                break;
            }
            Err(FrontendError::OnnxUnsupported(items)) => {
                let needs_const = items.iter().any(|u| {
                    matches!(u, Unsupported::Op { note: Some(n), .. }
                        if n.contains("is computed at run time; kiln needs it constant"))
                });
                if bind_params || !needs_const || input_names.len() < 2 {
                    return Ok(Outcome::Skip(unsupported_reason(&items)));
                }
            }
            Err(e) => return Err(format!("import: {e}")),
        }
    }
    let km = km.ok_or("no import attempt succeeded")?;
    for set in &sets {
        let mut inputs = Vec::new();
        for &j in &runtime_inputs {
            let t = read_tensor(&set.join(format!("input_{j}.pb")))?;
            inputs.push(tensor_from_proto(&t).map_err(|e| format!("input {j}: {e}"))?);
        }
        let got = interp::run(&km.graph, &km.weights, &inputs).map_err(|e| format!("run: {e}"))?;
        for (k, g) in got.iter().enumerate() {
            let path = set.join(format!("output_{k}.pb"));
            let want = tensor_from_proto(&read_tensor(&path)?).map_err(|e| e.to_string())?;
            compare(g, &want, rtol, atol).map_err(|e| {
                format!(
                    "{}/output_{k}: {e}",
                    set.file_name().unwrap_or_default().to_string_lossy()
                )
            })?;
        }
    }
    Ok(Outcome::Pass)
}

#[test]
fn onnx_backend_node_tests() {
    let dir = match std::env::var("KILN_ONNX_NODE_TESTS") {
        Ok(s) if s == "skip" => {
            kiln_ir::skip::skip("onnx_backend_node_tests", "KILN_ONNX_NODE_TESTS=skip");
            return;
        }
        Ok(s) => PathBuf::from(s),
        Err(_) => panic!(
            "KILN_ONNX_NODE_TESTS is not set: run scripts/test (which generates the ONNX node \
             tests with tools/onnx_node_tests.py), or set it to the generated directory, or to \
             `skip` to skip them on purpose"
        ),
    };
    let skips = skip_list();
    let mut tests: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("model.onnx").is_file())
        .collect();
    tests.sort();
    assert!(!tests.is_empty(), "{} holds no node tests", dir.display());
    let only = std::env::var("KILN_ONNX_NODE_FILTER").ok();
    let (mut passed, mut failed, mut skipped) = (0, 0, 0);
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    let mut failures = Vec::new();
    let mut stale = Vec::new();
    for t in &tests {
        let name = t
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .to_string();
        if only.as_ref().is_some_and(|f| !name.contains(f.as_str())) {
            continue;
        }
        let outcome = run_test(t);
        if let Some(reason) = skips.get(&name) {
            if matches!(outcome, Outcome::Pass) {
                stale.push(name.clone());
            }
            skipped += 1;
            *reasons.entry(format!("listed: {reason}")).or_insert(0) += 1;
            continue;
        }
        match outcome {
            Outcome::Pass => passed += 1,
            Outcome::Skip(r) => {
                skipped += 1;
                *reasons.entry(r).or_insert(0) += 1;
            }
            Outcome::Fail(e) => {
                failed += 1;
                failures.push(format!("{name}: {e}"));
            }
        }
    }
    for r in skips.keys() {
        if !tests.iter().any(|t| t.ends_with(r)) {
            eprintln!("note: skip entry {r} names no generated test");
        }
    }
    // Written to the raw stderr handle, past the test harness's capture:
    // the summary is the point of this test, pass or fail.
    let mut text = String::from("onnx node tests, skip reasons:\n");
    for (r, n) in &reasons {
        text.push_str(&format!("  {n:4}  {r}\n"));
    }
    for f in &failures {
        text.push_str(&format!("FAIL {f}\n"));
    }
    for s in &stale {
        text.push_str(&format!("STALE skip entry (the test passes): {s}\n"));
    }
    text.push_str(&format!(
        "onnx-node: {passed} passed, {failed} failed, {skipped} skipped\n"
    ));
    let _ = std::io::Write::write_all(&mut std::io::stderr(), text.as_bytes());
    assert!(
        failures.is_empty() && stale.is_empty(),
        "{} ONNX node test(s) failed, {} stale skip entries",
        failures.len(),
        stale.len()
    );
}
