//! ONNX import on hand-built models: static shape folding, opset
//! migrations, operator semantics that differ between opsets, and the
//! import report.

mod onnx_common;

use kiln_frontends::onnx::proto::{AttributeProto, TensorProto};
use kiln_frontends::onnx::{ImportOptions, import_proto};
use kiln_ir::{Tensor, interp};
use onnx_common::*;

fn ops(m: &kiln_ir::Model) -> Vec<String> {
    let mut v: Vec<String> = m
        .graph
        .node_ids()
        .map(|id| m.graph.node(id).op.name().to_string())
        .filter(|n| n != "input" && n != "weight")
        .collect();
    v.sort();
    v
}

fn run1(m: &kiln_ir::Model, x: &Tensor) -> Tensor {
    interp::run(&m.graph, &m.weights, std::slice::from_ref(x))
        .unwrap()
        .remove(0)
}

/// The PyTorch `x.view(x.size(0), -1)` spelling: Shape → Gather →
/// Unsqueeze → Concat → Reshape, plus Constant and Cast noise. All of it
/// folds into one reshape, with the symbolic batch set to 1.
#[test]
fn shape_chain_folds_to_one_reshape() {
    let nodes = vec![
        node("Shape", &["x"], &["s"], vec![]),
        node(
            "Constant",
            &[],
            &["zero"],
            vec![attr_t("value", tensor_i64("", &[], &[0]))],
        ),
        node("Gather", &["s", "zero"], &["b"], vec![attr_i("axis", 0)]),
        node(
            "Constant",
            &[],
            &["ax"],
            vec![attr_t("value", tensor_i64("", &[1], &[0]))],
        ),
        node("Unsqueeze", &["b", "ax"], &["b1"], vec![]),
        node(
            "Constant",
            &[],
            &["m1"],
            vec![attr_t("value", tensor_i64("", &[1], &[-1]))],
        ),
        node(
            "Concat",
            &["b1", "m1"],
            &["target"],
            vec![attr_i("axis", 0)],
        ),
        node("Cast", &["target"], &["target64"], vec![attr_i("to", 7)]),
        node("Reshape", &["x", "target64"], &["y"], vec![]),
        node("Relu", &["y"], &["z"], vec![]),
    ];
    let m = model(
        13,
        nodes,
        vec![],
        vec![vi("x", FLOAT, &[-1, 3, 4, 4])],
        vec![vi("z", FLOAT, &[-1, 48])],
    );
    let (km, report) = import_proto(&m, &ImportOptions::default()).unwrap();
    assert_eq!(ops(&km), ["relu", "reshape"]);
    assert_eq!(report.nodes_before, 10);
    assert_eq!(report.nodes_after, 2);
    assert_eq!(report.folded, 8);
    assert_eq!(km.graph.value_type(km.graph.outputs()[0]).shape, [1, 48]);
    let x = f32_tensor(&[1, 3, 4, 4], 1);
    let y = run1(&km, &x);
    let want: Vec<f32> = x.as_f32().unwrap().iter().map(|v| v.max(0.0)).collect();
    assert_eq!(y.as_f32().unwrap(), &want[..]);

    // The batch size can be chosen.
    let opts = ImportOptions {
        input_shapes: vec![("x".into(), vec![3, 3, 4, 4])],
    };
    let (km, _) = import_proto(&m, &opts).unwrap();
    assert_eq!(km.graph.value_type(km.graph.outputs()[0]).shape, [3, 48]);
}

/// Squeeze/Unsqueeze axes moved from attribute to input in opset 13, and
/// ReduceMean's in 18; both spellings import to the same computation.
#[test]
fn attribute_to_input_migrations() {
    let x_vi = vi("x", FLOAT, &[2, 1, 3]);
    let y_vi = vi("y", FLOAT, &[2]);
    let old = model(
        11,
        vec![
            node("Squeeze", &["x"], &["s"], vec![attr_ints("axes", &[1])]),
            node(
                "ReduceMean",
                &["s"],
                &["y"],
                vec![attr_ints("axes", &[-1]), attr_i("keepdims", 0)],
            ),
        ],
        vec![],
        vec![x_vi.clone()],
        vec![y_vi.clone()],
    );
    let new = model(
        18,
        vec![
            node("Squeeze", &["x", "a1"], &["s"], vec![]),
            node(
                "ReduceMean",
                &["s", "am1"],
                &["y"],
                vec![attr_i("keepdims", 0)],
            ),
        ],
        vec![tensor_i64("a1", &[1], &[1]), tensor_i64("am1", &[1], &[-1])],
        vec![x_vi],
        vec![y_vi],
    );
    let x = f32_tensor(&[2, 1, 3], 2);
    let xv = x.as_f32().unwrap();
    let want = [(xv[0] + xv[1] + xv[2]) / 3.0, (xv[3] + xv[4] + xv[5]) / 3.0];
    for m in [old, new] {
        let (km, _) = import_proto(&m, &ImportOptions::default()).unwrap();
        assert_eq!(ops(&km), ["reduce_mean", "squeeze"]);
        assert_close(run1(&km, &x).as_f32().unwrap(), &want, 1e-6, 0.0, "mean");
    }
}

/// Split: sizes as attribute (11), as input (13), equal pieces by
/// `num_outputs` with a short last piece (18).
#[test]
fn split_forms() {
    let mk = |opset, n: Vec<kiln_frontends::onnx::proto::NodeProto>, inits| {
        model(
            opset,
            n,
            inits,
            vec![vi("x", FLOAT, &[5])],
            vec![vi("a", FLOAT, &[3]), vi("b", FLOAT, &[2])],
        )
    };
    let cases = [
        mk(
            11,
            vec![node(
                "Split",
                &["x"],
                &["a", "b"],
                vec![attr_ints("split", &[3, 2])],
            )],
            vec![],
        ),
        mk(
            13,
            vec![node("Split", &["x", "sp"], &["a", "b"], vec![])],
            vec![tensor_i64("sp", &[2], &[3, 2])],
        ),
        mk(
            18,
            vec![node(
                "Split",
                &["x"],
                &["a", "b"],
                vec![attr_i("num_outputs", 2)],
            )],
            vec![],
        ),
    ];
    let x = Tensor::from_f32([5], vec![1.0, 2.0, 3.0, 4.0, 5.0]).unwrap();
    for m in cases {
        let (km, _) = import_proto(&m, &ImportOptions::default()).unwrap();
        let out = interp::run(&km.graph, &km.weights, std::slice::from_ref(&x)).unwrap();
        assert_eq!(out[0].as_f32().unwrap(), [1.0, 2.0, 3.0]);
        assert_eq!(out[1].as_f32().unwrap(), [4.0, 5.0]);
    }
}

/// Softmax before opset 13 normalises over everything from `axis` on
/// (coerced to 2-D); from 13 along `axis` alone.
#[test]
fn softmax_legacy_semantics() {
    let mk = |opset| {
        model(
            opset,
            vec![node("Softmax", &["x"], &["y"], vec![attr_i("axis", 1)])],
            vec![],
            vec![vi("x", FLOAT, &[2, 3, 4])],
            vec![vi("y", FLOAT, &[2, 3, 4])],
        )
    };
    let x = f32_tensor(&[2, 3, 4], 3);
    let (old, _) = import_proto(&mk(11), &ImportOptions::default()).unwrap();
    let y = run1(&old, &x);
    let y = y.as_f32().unwrap();
    for b in 0..2 {
        let s: f32 = y[b * 12..(b + 1) * 12].iter().sum();
        assert!(
            (s - 1.0).abs() < 1e-5,
            "legacy softmax sums to {s} over axes 1.."
        );
    }
    let (new, _) = import_proto(&mk(13), &ImportOptions::default()).unwrap();
    let y = run1(&new, &x);
    let y = y.as_f32().unwrap();
    for b in 0..2 {
        for k in 0..4 {
            let s: f32 = (0..3).map(|c| y[b * 12 + c * 4 + k]).sum();
            assert!(
                (s - 1.0).abs() < 1e-5,
                "softmax-13 sums to {s} along axis 1"
            );
        }
    }
}

/// Pad (pads and value as inputs), Clip (bounds as inputs) and a Slice
/// with from-the-end indices and a negative step.
#[test]
fn pad_clip_slice() {
    let m = model(
        13,
        vec![
            node("Pad", &["x", "pads", "v"], &["p"], vec![]),
            node("Clip", &["p", "lo", "hi"], &["c"], vec![]),
            node("Slice", &["c", "st", "en", "ax", "sp"], &["y"], vec![]),
        ],
        vec![
            tensor_i64("pads", &[2], &[1, 2]),
            tensor_f32("v", &[], &[9.0]),
            tensor_f32("lo", &[], &[-0.5]),
            tensor_f32("hi", &[], &[0.5]),
            tensor_i64("st", &[1], &[-2]),
            tensor_i64("en", &[1], &[i64::MIN]),
            tensor_i64("ax", &[1], &[0]),
            tensor_i64("sp", &[1], &[-2]),
        ],
        vec![vi("x", FLOAT, &[3])],
        vec![vi("y", FLOAT, &[3])],
    );
    let (km, _) = import_proto(&m, &ImportOptions::default()).unwrap();
    let x = Tensor::from_f32([3], vec![-1.0, 0.25, 1.0]).unwrap();
    // padded: [9, -1, .25, 1, 9, 9]; clipped: [.5, -.5, .25, .5, .5, .5];
    // from index 4 backwards by 2: indices 4, 2, 0.
    assert_eq!(run1(&km, &x).as_f32().unwrap(), [0.5, 0.25, 0.5]);
}

/// Conv with SAME_UPPER auto padding, a 1-D convolution, and Gemm.
#[test]
fn conv_forms() {
    let w = tensor_f32("w", &[1, 1, 3, 3], &[1.0; 9]);
    let m = model(
        13,
        vec![node(
            "Conv",
            &["x", "w"],
            &["y"],
            vec![
                attr_s("auto_pad", "SAME_UPPER"),
                attr_ints("strides", &[2, 2]),
            ],
        )],
        vec![w],
        vec![vi("x", FLOAT, &[1, 1, 4, 4])],
        vec![vi("y", FLOAT, &[1, 1, 2, 2])],
    );
    let (km, _) = import_proto(&m, &ImportOptions::default()).unwrap();
    let x = Tensor::from_f32([1, 1, 4, 4], (0..16).map(|v| v as f32).collect::<Vec<_>>()).unwrap();
    // total pad 1 per axis, all at the end: windows start at 0 and 2.
    let sum = |r0: usize, c0: usize| -> f32 {
        let mut s = 0.0;
        for r in r0..(r0 + 3).min(4) {
            for c in c0..(c0 + 3).min(4) {
                s += (r * 4 + c) as f32;
            }
        }
        s
    };
    let want = [sum(0, 0), sum(0, 2), sum(2, 0), sum(2, 2)];
    assert_eq!(run1(&km, &x).as_f32().unwrap(), want);

    let m1 = model(
        13,
        vec![node(
            "Conv",
            &["x", "w", "b"],
            &["y"],
            vec![attr_ints("pads", &[1, 0])],
        )],
        vec![
            tensor_f32("w", &[1, 1, 2], &[1.0, -1.0]),
            tensor_f32("b", &[1], &[0.5]),
        ],
        vec![vi("x", FLOAT, &[1, 1, 3])],
        vec![vi("y", FLOAT, &[1, 1, 3])],
    );
    let (km, _) = import_proto(&m1, &ImportOptions::default()).unwrap();
    let x = Tensor::from_f32([1, 1, 3], vec![1.0, 4.0, 9.0]).unwrap();
    // padded [0,1,4,9]: pairs (0,1), (1,4), (4,9) -> a - b + 0.5
    assert_eq!(run1(&km, &x).as_f32().unwrap(), [-0.5, -2.5, -4.5]);
}

/// Where/Equal/ConstantOfShape/Range/Expand on constants fold completely.
#[test]
fn mask_arithmetic_on_constants_folds() {
    let m = model(
        13,
        vec![
            node("Shape", &["x"], &["s"], vec![]),
            node(
                "ConstantOfShape",
                &["s"],
                &["ones"],
                vec![attr_t("value", tensor_i64("", &[1], &[1]))],
            ),
            node("Range", &["r0", "r1", "r2"], &["r"], vec![]),
            node("Equal", &["r", "two"], &["eq"], vec![]),
            node("Where", &["eq", "neg", "ones"], &["w"], vec![]),
            node("Cast", &["w"], &["wf"], vec![attr_i("to", 1)]),
            node("Mul", &["x", "wf"], &["y"], vec![]),
        ],
        vec![
            tensor_i64("r0", &[], &[0]),
            tensor_i64("r1", &[], &[4]),
            tensor_i64("r2", &[], &[1]),
            tensor_i64("two", &[], &[2]),
            tensor_i64("neg", &[], &[-1]),
        ],
        vec![vi("x", FLOAT, &[4])],
        vec![vi("y", FLOAT, &[4])],
    );
    let (km, report) = import_proto(&m, &ImportOptions::default()).unwrap();
    assert_eq!(ops(&km), ["mul"]);
    assert_eq!(report.folded, 6);
    let x = Tensor::from_f32([4], vec![1.0, 2.0, 3.0, 4.0]).unwrap();
    assert_eq!(run1(&km, &x).as_f32().unwrap(), [1.0, 2.0, -3.0, 4.0]);
}

/// GroupNormalization-18 has per-group scale/bias; they are spread to
/// channels. Checked against a direct computation.
#[test]
fn group_norm_per_group_affine() {
    let m = model(
        18,
        vec![node(
            "GroupNormalization",
            &["x", "s", "b"],
            &["y"],
            vec![attr_i("num_groups", 2), attr_f("epsilon", 1e-5)],
        )],
        vec![
            tensor_f32("s", &[2], &[2.0, 3.0]),
            tensor_f32("b", &[2], &[0.5, -0.5]),
        ],
        vec![vi("x", FLOAT, &[1, 4, 2])],
        vec![vi("y", FLOAT, &[1, 4, 2])],
    );
    let (km, _) = import_proto(&m, &ImportOptions::default()).unwrap();
    let x = f32_tensor(&[1, 4, 2], 5);
    let xv = x.as_f32().unwrap();
    let mut want = vec![0.0f32; 8];
    for g in 0..2 {
        let part = &xv[g * 4..g * 4 + 4];
        let mean = part.iter().map(|&v| v as f64).sum::<f64>() / 4.0;
        let var = part.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / 4.0;
        for k in 0..4 {
            let (s, b) = ([2.0, 3.0][g], [0.5, -0.5][g]);
            want[g * 4 + k] = ((part[k] as f64 - mean) / (var + 1e-5).sqrt() * s + b) as f32;
        }
    }
    assert_close(
        run1(&km, &x).as_f32().unwrap(),
        &want,
        1e-5,
        1e-6,
        "group norm",
    );
}

#[test]
fn report_prints_counts() {
    let m = model(
        13,
        vec![
            node("Shape", &["x"], &["s"], vec![]),
            node("Reshape", &["x", "s"], &["y"], vec![]),
        ],
        vec![],
        vec![vi("x", FLOAT, &[2, 2])],
        vec![vi("y", FLOAT, &[2, 2])],
    );
    let (_, r) = import_proto(&m, &ImportOptions::default()).unwrap();
    let text = r.to_string();
    assert!(text.contains("2 nodes -> 1 kiln ops (1 folded)"), "{text}");
    assert!(text.contains("reshape"), "{text}");
}

/// A sinusoidal position table as exports spell it: `Range` → `Cast` →
/// `Mul` by a constant frequency → `Sin`/`Cos` → `Concat`, on constants
/// only, folds to one weight; the graph keeps only the `Add` to `x`. The
/// table equals f64 `sin`/`cos` of the positions rounded once.
#[test]
fn sinusoidal_table_of_a_constant_range_folds() {
    let c = |name: &str, t: TensorProto| node("Constant", &[], &[name], vec![attr_t("value", t)]);
    let nodes = vec![
        c("start", tensor_i64("", &[], &[0])),
        c("limit", tensor_i64("", &[], &[6])),
        c("delta", tensor_i64("", &[], &[1])),
        node("Range", &["start", "limit", "delta"], &["pos_i"], vec![]),
        node("Cast", &["pos_i"], &["pos"], vec![attr_i("to", 1)]),
        c("freq", tensor_f32("", &[], &[0.37])),
        node("Mul", &["pos", "freq"], &["arg"], vec![]),
        node("Sin", &["arg"], &["s"], vec![]),
        node("Cos", &["arg"], &["co"], vec![]),
        node("Concat", &["s", "co"], &["table"], vec![attr_i("axis", 0)]),
        node("Add", &["x", "table"], &["y"], vec![]),
    ];
    let m = model(
        17,
        nodes,
        vec![],
        vec![vi("x", FLOAT, &[2, 12])],
        vec![vi("y", FLOAT, &[2, 12])],
    );
    let (km, _) = import_proto(&m, &ImportOptions::default()).unwrap();
    assert_eq!(ops(&km), ["add"]);
    let x = Tensor::from_f32([2, 12], vec![0.0; 24]).unwrap();
    let y = run1(&km, &x);
    let arg = |i: usize| f64::from((i as f32) * 0.37f32);
    let want: Vec<f32> = (0..2)
        .flat_map(|_| {
            (0..6)
                .map(move |i| arg(i).sin() as f32)
                .chain((0..6).map(move |i| arg(i).cos() as f32))
        })
        .collect();
    assert_eq!(y.as_f32().unwrap(), &want[..]);
}

/// `Mod` on integer shapes folds with both sign conventions (`fmod=0`:
/// the divisor's sign, Python's `%`; `fmod=1`: the dividend's, C's), and on
/// runtime floats becomes kiln's `fmod`/`mod`.
#[test]
fn mod_folds_on_shapes_and_runs_on_floats() {
    let c = |name: &str, v: &[i64]| {
        node(
            "Constant",
            &[],
            &[name],
            vec![attr_t("value", tensor_i64("", &[4], v))],
        )
    };
    let nodes = vec![
        c("a", &[7, -7, 7, -7]),
        c("b", &[3, 3, -3, -3]),
        node("Mod", &["a", "b"], &["floored"], vec![]),
        node("Mod", &["a", "b"], &["trunc"], vec![attr_i("fmod", 1)]),
        node(
            "Concat",
            &["floored", "trunc"],
            &["both"],
            vec![attr_i("axis", 0)],
        ),
        node("Reshape", &["x", "both"], &["never"], vec![]),
    ];
    // The folded values are checked through the error they give as a shape.
    let m = model(
        17,
        nodes,
        vec![],
        vec![vi("x", FLOAT, &[8])],
        vec![vi("never", FLOAT, &[8])],
    );
    let e = import_proto(&m, &ImportOptions::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("[1, 2, -2, -1, 1, -1, 1, -1]"), "{e}");

    let nodes = vec![
        node("Mod", &["x", "d"], &["t"], vec![attr_i("fmod", 1)]),
        node("Mod", &["t", "d"], &["y"], vec![]),
    ];
    let m = model(
        17,
        nodes,
        vec![tensor_f32("d", &[], &[-1.5])],
        vec![vi("x", FLOAT, &[4])],
        vec![vi("y", FLOAT, &[4])],
    );
    let (km, _) = import_proto(&m, &ImportOptions::default()).unwrap();
    assert_eq!(ops(&km), ["fmod", "mod"]);
    let x = Tensor::from_f32([4], vec![4.0, -4.0, 0.5, -0.5]).unwrap();
    // fmod(4, -1.5) = 1, then floored by -1.5: 1 - 1.5 = -0.5
    assert_eq!(run1(&km, &x).as_f32().unwrap(), &[-0.5, -1.0, -1.0, -0.5]);
}

/// `CumSum` folds on constants (exclusive and reverse included) and on a
/// runtime float tensor becomes one matmul with a triangular 0/1 matrix.
#[test]
fn cumsum_folds_or_becomes_a_triangular_matmul() {
    let nodes = vec![
        node(
            "Constant",
            &[],
            &["v"],
            vec![attr_t(
                "value",
                tensor_i64("", &[2, 3], &[1, 2, 3, 4, 5, 6]),
            )],
        ),
        node(
            "Constant",
            &[],
            &["ax"],
            vec![attr_t("value", tensor_i64("", &[], &[1]))],
        ),
        node(
            "CumSum",
            &["v", "ax"],
            &["cs"],
            vec![attr_i("exclusive", 1), attr_i("reverse", 1)],
        ),
        node("Reshape", &["x", "cs"], &["never"], vec![]),
    ];
    let m = model(
        17,
        nodes,
        vec![],
        vec![vi("x", FLOAT, &[6])],
        vec![vi("never", FLOAT, &[6])],
    );
    let e = import_proto(&m, &ImportOptions::default())
        .unwrap_err()
        .to_string();
    // reverse exclusive sums of [1,2,3] and [4,5,6]
    assert!(e.contains("[5, 3, 0, 11, 6, 0]"), "{e}");

    for (axis, reverse) in [(1i64, 0i64), (0, 1), (-1, 1)] {
        let nodes = vec![node(
            "CumSum",
            &["x", "ax"],
            &["y"],
            vec![attr_i("reverse", reverse)],
        )];
        let m = model(
            17,
            nodes,
            vec![tensor_i64("ax", &[], &[axis])],
            vec![vi("x", FLOAT, &[3, 4])],
            vec![vi("y", FLOAT, &[3, 4])],
        );
        let (km, _) = import_proto(&m, &ImportOptions::default()).unwrap();
        assert!(ops(&km).contains(&"matmul".to_string()), "{:?}", ops(&km));
        let x = f32_tensor(&[3, 4], 5);
        let xv = x.as_f32().unwrap();
        let a = if axis == 0 { 0 } else { 1 };
        let want: Vec<f32> = (0..12)
            .map(|k| {
                let (i, j) = (k / 4, k % 4);
                let range: Vec<usize> = if a == 0 {
                    if reverse == 1 {
                        (i..3).collect()
                    } else {
                        (0..=i).collect()
                    }
                } else if reverse == 1 {
                    (j..4).collect()
                } else {
                    (0..=j).collect()
                };
                range
                    .iter()
                    .map(|&t| f64::from(if a == 0 { xv[t * 4 + j] } else { xv[i * 4 + t] }))
                    .sum::<f64>() as f32
            })
            .collect();
        assert_close(run1(&km, &x).as_f32().unwrap(), &want, 1e-6, 1e-7, "cumsum");
    }
}

/// `Einsum` in the forms torch emits becomes transposes, reshapes and one
/// batched matmul per pair (a lone label a sum); the result equals the
/// explicit sum. A diagonal is refused naming the op.
#[test]
fn einsum_lowers_to_matmuls() {
    // "bhqd,bhkd->bhqk" (attention scores), "bij,jk->bik", "ij->j" sums
    // equation, shapes of a, b and the output
    type Case<'a> = (&'a str, &'a [i64], &'a [i64], &'a [i64]);
    let cases: [Case; 3] = [
        (
            "bhqd,bhkd->bhqk",
            &[2, 3, 4, 5],
            &[2, 3, 6, 5],
            &[2, 3, 4, 6],
        ),
        ("bij,jk->bik", &[2, 3, 4], &[4, 5], &[2, 3, 5]),
        ("...ij,...jk", &[2, 3, 4], &[2, 4, 5], &[2, 3, 5]),
    ];
    for (eq, sa, sb, so) in cases {
        let nodes = vec![node(
            "Einsum",
            &["a", "b"],
            &["y"],
            vec![attr_s("equation", eq)],
        )];
        let m = model(
            17,
            nodes,
            vec![],
            vec![vi("a", FLOAT, sa), vi("b", FLOAT, sb)],
            vec![vi("y", FLOAT, so)],
        );
        let (km, _) = import_proto(&m, &ImportOptions::default()).unwrap();
        assert!(
            ops(&km).contains(&"matmul".to_string()),
            "{eq}: {:?}",
            ops(&km)
        );
        let us = |s: &[i64]| s.iter().map(|&d| d as usize).collect::<Vec<_>>();
        let (a, b) = (f32_tensor(&us(sa), 1), f32_tensor(&us(sb), 2));
        let y = interp::run(&km.graph, &km.weights, &[a.clone(), b.clone()])
            .unwrap()
            .remove(0);
        assert_eq!(y.shape(), &us(so)[..], "{eq}");
        // the explicit sum over the contracted label
        let (av, bv) = (a.as_f32().unwrap(), b.as_f32().unwrap());
        let want: Vec<f32> = match eq {
            "bhqd,bhkd->bhqk" => (0..2 * 3 * 4 * 6)
                .map(|o| {
                    let (bh, q, k) = (o / 24, (o / 6) % 4, o % 6);
                    (0..5)
                        .map(|d| {
                            f64::from(av[(bh * 4 + q) * 5 + d])
                                * f64::from(bv[(bh * 6 + k) * 5 + d])
                        })
                        .sum::<f64>() as f32
                })
                .collect(),
            _ => (0..2 * 3 * 5)
                .map(|o| {
                    let (bi, k) = (o / 5, o % 5);
                    let boff = if eq.starts_with("bij") {
                        0
                    } else {
                        (bi / 3) * 20
                    };
                    (0..4)
                        .map(|j| f64::from(av[bi * 4 + j]) * f64::from(bv[boff + j * 5 + k]))
                        .sum::<f64>() as f32
                })
                .collect(),
        };
        assert_close(y.as_f32().unwrap(), &want, 1e-6, 1e-6, eq);
    }
    let nodes = vec![node(
        "Einsum",
        &["a"],
        &["y"],
        vec![attr_s("equation", "ii->i")],
    )];
    let m = model(
        17,
        nodes,
        vec![],
        vec![vi("a", FLOAT, &[3, 3])],
        vec![vi("y", FLOAT, &[3])],
    );
    let e = import_proto(&m, &ImportOptions::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("Einsum") && e.contains("diagonal"), "{e}");
}

/// `Where` with a constant condition that mixes true and false, on a
/// runtime branch, selects element by element (a gather of both branches).
#[test]
fn where_with_a_mixed_constant_condition_selects() {
    let cond = TensorProto {
        name: Some("c".into()),
        dims: vec![2, 1],
        data_type: Some(9), // BOOL
        int32_data: vec![1, 0],
        ..Default::default()
    };
    let nodes = vec![node("Where", &["c", "x", "fill"], &["y"], vec![])];
    let m = model(
        17,
        nodes,
        vec![cond, tensor_f32("fill", &[], &[f32::NEG_INFINITY])],
        vec![vi("x", FLOAT, &[2, 3])],
        vec![vi("y", FLOAT, &[2, 3])],
    );
    let (km, _) = import_proto(&m, &ImportOptions::default()).unwrap();
    assert!(ops(&km).contains(&"gather".to_string()), "{:?}", ops(&km));
    let x = f32_tensor(&[2, 3], 3);
    let mut want = x.as_f32().unwrap()[..3].to_vec();
    want.extend([f32::NEG_INFINITY; 3]);
    assert_eq!(run1(&km, &x).as_f32().unwrap(), &want[..]);
}

/// `Resize` as torch exports it (`F.interpolate`): scales or sizes, nearest
/// and bilinear, import to one `resize`; uses kiln cannot run are clear
/// errors naming the op and the reason.
#[test]
fn resize_imports_and_refuses_clearly() {
    let scales = tensor_f32("scales", &[4], &[1.0, 1.0, 2.0, 2.0]);
    let nodes = vec![node(
        "Resize",
        &["x", "", "scales"],
        &["y"],
        vec![
            attr_s("mode", "nearest"),
            attr_s("nearest_mode", "floor"),
            attr_s("coordinate_transformation_mode", "asymmetric"),
        ],
    )];
    let m = model(
        17,
        nodes,
        vec![scales],
        vec![vi("x", FLOAT, &[1, 2, 3, 3])],
        vec![vi("y", FLOAT, &[1, 2, 6, 6])],
    );
    let (km, _) = import_proto(&m, &ImportOptions::default()).unwrap();
    assert_eq!(ops(&km), ["resize"]);
    let x = f32_tensor(&[1, 2, 3, 3], 4);
    let y = run1(&km, &x);
    let xv = x.as_f32().unwrap();
    let want: Vec<f32> = (0..72)
        .map(|o| {
            let (p, i, j) = (o / 36, (o / 6) % 6, o % 6);
            xv[p * 9 + (i / 2) * 3 + j / 2]
        })
        .collect();
    assert_eq!(y.as_f32().unwrap(), &want[..]);

    let bad = |attrs: Vec<AttributeProto>, sizes: &[i64]| {
        let nodes = vec![node("Resize", &["x", "", "", "sizes"], &["y"], attrs)];
        let m = model(
            18,
            nodes,
            vec![tensor_i64("sizes", &[4], sizes)],
            vec![vi("x", FLOAT, &[1, 2, 3, 3])],
            vec![vi("y", FLOAT, &[-1, -1, -1, -1])],
        );
        import_proto(&m, &ImportOptions::default())
            .unwrap_err()
            .to_string()
    };
    let e = bad(vec![attr_s("mode", "cubic")], &[1, 2, 6, 6]);
    assert!(e.contains("Resize") && e.contains("cubic"), "{e}");
    let e = bad(vec![attr_s("mode", "linear")], &[1, 4, 6, 6]);
    assert!(e.contains("Resize") && e.contains("axis 1"), "{e}");
    let e = bad(
        vec![attr_s(
            "coordinate_transformation_mode",
            "tf_crop_and_resize",
        )],
        &[1, 2, 6, 6],
    );
    assert!(e.contains("tf_crop_and_resize"), "{e}");
}

/// `GatherND` with constant indices: the attention-bias lookup folds when
/// the table is an initialiser, and on a runtime tensor becomes one gather;
/// `batch_dims` and negative indices follow the ONNX definition.
#[test]
fn gather_nd_folds_or_gathers() {
    // runtime data [4, 3, 2], index pairs into the first two axes
    let nodes = vec![node("GatherND", &["x", "idx"], &["y"], vec![])];
    let m = model(
        17,
        nodes,
        vec![tensor_i64("idx", &[2, 2, 2], &[0, 1, 3, -1, 2, 0, 1, 2])],
        vec![vi("x", FLOAT, &[4, 3, 2])],
        vec![vi("y", FLOAT, &[2, 2, 2])],
    );
    let (km, _) = import_proto(&m, &ImportOptions::default()).unwrap();
    assert!(ops(&km).contains(&"gather".to_string()), "{:?}", ops(&km));
    let x = f32_tensor(&[4, 3, 2], 7);
    let xv = x.as_f32().unwrap();
    let pick = |i: usize, j: usize| [xv[(i * 3 + j) * 2], xv[(i * 3 + j) * 2 + 1]];
    let want: Vec<f32> = [pick(0, 1), pick(3, 2), pick(2, 0), pick(1, 2)].concat();
    assert_eq!(run1(&km, &x).as_f32().unwrap(), &want[..]);

    // a constant table with batch_dims = 1 folds: row b picks its own entries
    let nodes = vec![
        node(
            "GatherND",
            &["table", "bidx"],
            &["bias"],
            vec![attr_i("batch_dims", 1)],
        ),
        node("Add", &["x", "bias"], &["y"], vec![]),
    ];
    let m = model(
        17,
        nodes,
        vec![
            tensor_f32("table", &[2, 3], &[10.0, 11.0, 12.0, 20.0, 21.0, 22.0]),
            tensor_i64("bidx", &[2, 2, 1], &[2, 0, 1, 1]),
        ],
        vec![vi("x", FLOAT, &[2, 2])],
        vec![vi("y", FLOAT, &[2, 2])],
    );
    let (km, _) = import_proto(&m, &ImportOptions::default()).unwrap();
    assert_eq!(ops(&km), ["add"]);
    let zero = Tensor::from_f32([2, 2], vec![0.0; 4]).unwrap();
    assert_eq!(
        run1(&km, &zero).as_f32().unwrap(),
        &[12.0, 10.0, 21.0, 21.0]
    );
}
