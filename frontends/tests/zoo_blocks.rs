//! Block-level checks: each zoo block builder, run on a tiny input by the
//! reference interpreter, against an independent numpy computation of the
//! spec's formulas (`tests/data/blocks/make_blocks.py`, outputs committed).

use std::path::{Path, PathBuf};

use kiln_frontends::FrontendError;
use kiln_frontends::builder::GraphBuilder;
use kiln_frontends::npy;
use kiln_frontends::zoo::{self, XfaKind, mobile_former, mobilevitv2, xformer};
use kiln_ir::{Tensor, Value, WeightStore};

fn case_dir(case: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/blocks")
        .join(case)
}

/// Every `.npy` in `dir`, named by its file name without `.npy`.
fn load_dir(dir: &Path) -> WeightStore {
    let mut store = WeightStore::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let file = path.file_name().unwrap().to_str().unwrap();
        if let Some(name) = file.strip_suffix(".npy") {
            store.insert(name, npy::read(&path).unwrap());
        }
    }
    store
}

/// Builds the block on the case's inputs (in the given order), binds the
/// case's weights — which must match the declared names and shapes exactly
/// — runs it and compares with `expected.npy`.
fn check(
    case: &str,
    inputs: &[&str],
    build: impl FnOnce(&mut GraphBuilder, &[Value]) -> Result<Value, FrontendError>,
) {
    let dir = case_dir(case);
    let tensors: Vec<Tensor> = inputs
        .iter()
        .map(|n| npy::read(&dir.join("inputs").join(format!("{n}.npy"))).unwrap())
        .collect();
    let mut b = GraphBuilder::new(case);
    let values: Vec<Value> = inputs
        .iter()
        .zip(&tensors)
        .map(|(n, t)| b.input(n, t.shape()).unwrap())
        .collect();
    let y = build(&mut b, &values).unwrap();
    let g = b.finish(vec![y]).unwrap();
    let weights = zoo::bind_weights(&g, load_dir(&dir.join("weights"))).unwrap();
    let got = kiln_ir::interp::run(&g, &weights, &tensors).unwrap();
    let want = npy::read(&dir.join("expected.npy")).unwrap();
    assert_eq!(got[0].shape(), want.shape(), "{case}: output shape");
    let (got, want) = (got[0].as_f32().unwrap(), want.as_f32().unwrap());
    // the reference is not degenerate (constant outputs would hide bugs)
    assert!(want.iter().any(|v| (v - want[0]).abs() > 1e-3), "{case}");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= 1e-4 + 1e-4 * w.abs(),
            "{case}: element {i}: got {g}, numpy {w}"
        );
    }
}

#[test]
fn mobile_to_former_bridge() {
    check("m2f_bridge", &["x", "z"], |b, v| {
        mobile_former::m2f_bridge(b, v[0], v[1])
    });
}

#[test]
fn former() {
    check("former", &["z"], |b, v| mobile_former::former(b, v[0]));
}

#[test]
fn former_to_mobile_bridge() {
    check("f2m_bridge", &["y", "z"], |b, v| {
        mobile_former::f2m_bridge(b, v[0], v[1])
    });
}

#[test]
fn dynamic_relu() {
    check("dyrelu", &["x", "t"], |b, v| {
        mobile_former::dyrelu(b, v[0], v[1])
    });
}

#[test]
fn mobilevitv2_separable_attention() {
    check("separable_attention", &["u"], |b, v| {
        mobilevitv2::separable_attention(b, v[0])
    });
}

#[test]
fn mobilevitv2_block_with_unfold_and_fold() {
    check("mobilevit_block", &["x"], |b, v| {
        mobilevitv2::mobilevit_block(b, v[0], 8, 2)
    });
}

#[test]
fn xformer_cross_covariance_attention() {
    check("xfa", &["x"], |b, v| {
        xformer::xfa(b, v[0], 4, XfaKind::CrossCovariance)
    });
}

#[test]
fn xformer_xnorm_attention() {
    check("xnorm", &["x"], |b, v| {
        xformer::xfa(b, v[0], 4, XfaKind::XNorm)
    });
}
