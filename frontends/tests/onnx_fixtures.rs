//! Real PyTorch exports (written by `tools/onnx_fixtures.py`): a
//! MobileViTv2-style and a Mobile-Former-style block, each exported by the
//! TorchScript and the dynamo exporter. Each must import to a clean graph
//! — no shape arithmetic, casts or integer values left, only compute ops —
//! and reproduce PyTorch's own outputs on the interpreter within 1e-4
//! relative.

mod onnx_common;

use std::path::{Path, PathBuf};

use kiln_frontends::onnx::{ImportOptions, import_with_report};
use kiln_ir::{DType, Tensor, Value, interp};
use onnx_common::assert_close;

/// The ops a clean import of these blocks may contain: their computation,
/// nothing that only computes shapes.
const COMPUTE_OPS: &[&str] = &[
    "conv2d",
    "batch_norm",
    "matmul",
    "gemm",
    "add",
    "sub",
    "mul",
    "div",
    "pow",
    "max",
    "sigmoid",
    "relu",
    "erf",
    "gelu",
    "softmax",
    "layer_norm",
    "group_norm",
    "reduce_sum",
    "reshape",
    "transpose",
    "split",
    "slice",
    "gather",
    "expand",
    "avg_pool2d",
    "resize",
    "fmod",
];

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/onnx")
}

/// Reads a little-endian f32, C-order `.npy` (what the fixture script writes).
fn read_npy(path: &Path) -> Tensor {
    let b = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(&b[..6], b"\x93NUMPY", "{}", path.display());
    let (hlen, start) = if b[6] == 1 {
        (u16::from_le_bytes([b[8], b[9]]) as usize, 10)
    } else {
        (u32::from_le_bytes([b[8], b[9], b[10], b[11]]) as usize, 12)
    };
    let header = std::str::from_utf8(&b[start..start + hlen]).unwrap();
    assert!(header.contains("'<f4'") && header.contains("'fortran_order': False"));
    let shape_txt = header.split("'shape': (").nth(1).unwrap();
    let shape: Vec<usize> = shape_txt[..shape_txt.find(')').unwrap()]
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| s.trim().parse().unwrap())
        .collect();
    let data: Vec<f32> = b[start + hlen..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    Tensor::from_f32(shape, data).unwrap()
}

fn check(block: &str, exporter: &str, inputs: usize, outputs: usize) {
    let path = dir().join(format!("{block}.{exporter}.onnx"));
    let size = std::fs::metadata(&path).unwrap().len();
    assert!(
        size < 2 << 20,
        "{}: fixture is {size} bytes",
        path.display()
    );
    let (m, report) = import_with_report(&path, &ImportOptions::default()).unwrap();
    println!("{block}.{exporter}: {report}");

    // Clean: only compute ops, and not one integer value left.
    for op in report.ops_after.keys() {
        assert!(
            COMPUTE_OPS.contains(&op.as_str()),
            "{block}.{exporter}: `{op}` left after import\n{report}"
        );
    }
    for id in m.graph.node_ids() {
        for (k, o) in m.graph.node(id).outputs.iter().enumerate() {
            assert_eq!(
                o.ty.dtype,
                DType::F32,
                "{block}.{exporter}: integer value {} left",
                m.graph.display_value(Value {
                    node: id,
                    output: k
                })
            );
        }
    }
    // Folding never grows a graph, except where one ONNX node is spelled
    // with several kiln ops: an Einsum becomes transposes, reshapes and one
    // matmul (the garden block's two einsums: 19 dynamo nodes -> 27 ops).
    if block == "garden_ops_block" {
        assert_eq!(report.ops_after.get("matmul"), Some(&2), "{report}");
    } else {
        assert!(report.nodes_after <= report.nodes_before);
    }
    // ONNX names (`/blocks.0/Conv_output_0`, `onnx::MatMul_42`) are kept
    // as they are and survive the text format.
    let text = kiln_ir::text::print(&m.graph);
    let reparsed = kiln_ir::text::parse(&text).unwrap();
    assert_eq!(kiln_ir::text::print(&reparsed), text);

    let ins: Vec<Tensor> = (0..inputs)
        .map(|i| read_npy(&dir().join(format!("{block}.input{i}.npy"))))
        .collect();
    let got = interp::run(&m.graph, &m.weights, &ins).unwrap();
    assert_eq!(got.len(), outputs);
    for (i, g) in got.iter().enumerate() {
        let want = read_npy(&dir().join(format!("{block}.output{i}.npy")));
        assert_eq!(g.shape(), want.shape());
        assert_close(
            g.as_f32().unwrap(),
            want.as_f32().unwrap(),
            1e-4,
            1e-5,
            &format!("{block}.{exporter} output {i}"),
        );
    }
}

#[test]
fn mobilevitv2_block_torchscript() {
    check("mobilevitv2_block", "torchscript", 1, 1);
}

#[test]
fn mobilevitv2_block_dynamo() {
    check("mobilevitv2_block", "dynamo", 1, 1);
}

#[test]
fn mobileformer_block_torchscript() {
    check("mobileformer_block", "torchscript", 2, 2);
}

#[test]
fn mobileformer_block_dynamo() {
    check("mobileformer_block", "dynamo", 2, 2);
}

/// The operators timm's exports added (issue 15): a position encoding of
/// a constant grid (CumSum, Sin, Cos) folds away; nearest and bilinear
/// resizes, einsums (as matmuls) and an fmod run.
#[test]
fn garden_ops_block_torchscript() {
    check("garden_ops_block", "torchscript", 1, 1);
}

#[test]
fn garden_ops_block_dynamo() {
    check("garden_ops_block", "dynamo", 1, 1);
}
