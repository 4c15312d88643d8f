//! Real PyTorch exports (frontends/tests/data/onnx, written by
//! tools/onnx_fixtures.py; TorchScript and dynamo exporter) go through the
//! optimiser and must fuse like the same block built by kiln's zoo
//! builder. PyTorch spells things its own way — Gemm or MatMul+Add,
//! `[in,out]` weights, Erf-based GELU, LayerNormalization, the scale on
//! Q or on the logits — and every fusion must still be found.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use kiln_frontends::onnx::{ImportOptions, import};
use kiln_ir::Model;
use kiln_passes::{OptOptions, Stop, optimize};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../frontends/tests/data/onnx")
        .join(name)
}

fn optimise_fixture(block: &str, exporter: &str) -> (Model, Model, kiln_passes::OptReport) {
    let m = import(
        &fixture(&format!("{block}.{exporter}.onnx")),
        &ImportOptions::default(),
    )
    .unwrap();
    let (o, r) = optimize(&m, &OptOptions::default()).unwrap();
    (m, o, r)
}

#[test]
fn dump() {
    for block in ["mobilevitv2_block", "mobileformer_block"] {
        for exp in ["torchscript", "dynamo"] {
            let (m, o, r) = optimise_fixture(block, exp);
            println!(
                "== {block}.{exp}\n{:?}\n{:?}\n{}",
                common::histogram(&m),
                common::histogram(&o),
                r.explain()
            );
            let _ = (Stop::Saturated, BTreeMap::<u8, u8>::new());
        }
    }
}
