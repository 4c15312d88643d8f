//! Bad ONNX input: every problem is an error that says what and where,
//! never a panic — including arbitrary corruptions of a valid file.

mod onnx_common;

use kiln_frontends::FrontendError;
use kiln_frontends::onnx::proto::ModelProto;
use kiln_frontends::onnx::{ImportOptions, Unsupported, import_bytes, import_proto};
use onnx_common::*;
use proptest::prelude::*;
use prost::Message;

fn small_model() -> ModelProto {
    model(
        13,
        vec![
            node(
                "Conv",
                &["x", "w", "b"],
                &["c"],
                vec![attr_ints("pads", &[1, 1, 1, 1])],
            ),
            node("Relu", &["c"], &["r"], vec![]),
            node("Shape", &["r"], &["s"], vec![]),
            node("Reshape", &["r", "flat"], &["y"], vec![]),
        ],
        vec![
            tensor_f32("w", &[2, 1, 3, 3], &data(18, 1)),
            tensor_f32("b", &[2], &[0.1, -0.1]),
            tensor_i64("flat", &[2], &[0, -1]),
        ],
        vec![vi("x", FLOAT, &[-1, 1, 4, 4])],
        vec![vi("y", FLOAT, &[-1, 32])],
    )
}

fn err(m: &ModelProto) -> String {
    match import_proto(m, &ImportOptions::default()) {
        Ok(_) => panic!("import succeeded"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn small_model_is_valid() {
    let (m, _) = import_proto(&small_model(), &ImportOptions::default()).unwrap();
    assert_eq!(m.graph.op_count(), 3);
}

#[test]
fn truncated_and_garbage_bytes() {
    let bytes = small_model().encode_to_vec();
    for cut in [1, bytes.len() / 3, bytes.len() - 1] {
        let e = import_bytes(&bytes[..cut], &ImportOptions::default()).unwrap_err();
        assert!(e.to_string().contains("not a valid ONNX model"), "{e}");
    }
    let e = import_bytes(
        b"definitely not protobuf \xff\xff\xff",
        &ImportOptions::default(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("onnx"), "{e}");
}

#[test]
fn cycle_names_a_node() {
    let m = model(
        13,
        vec![
            node("Add", &["x", "b"], &["a"], vec![]),
            node("Relu", &["a"], &["b"], vec![]),
        ],
        vec![],
        vec![vi("x", FLOAT, &[2])],
        vec![vi("b", FLOAT, &[2])],
    );
    let e = err(&m);
    assert!(e.contains("cycle through node 'Add_a' (Add)"), "{e}");
}

#[test]
fn undefined_input_and_missing_initialiser() {
    let mut m = small_model();
    m.graph
        .as_mut()
        .unwrap()
        .initializer
        .retain(|t| t.name.as_deref() != Some("w"));
    let e = err(&m);
    assert!(
        e.contains("node 'Conv_c' (Conv): input 'w' is not a graph input, an initialiser"),
        "{e}"
    );
}

#[test]
fn opsets_outside_the_range_are_unsupported() {
    for v in [9, 22] {
        let mut m = small_model();
        m.opset_import[0].version = Some(v);
        match import_proto(&m, &ImportOptions::default()) {
            Err(FrontendError::OnnxUnsupported(items)) => {
                assert_eq!(items, vec![Unsupported::Opset { version: v }]);
            }
            other => panic!("opset {v}: {other:?}"),
        }
    }
    let e = err(&{
        let mut m = small_model();
        m.opset_import[0].version = Some(22);
        m
    });
    assert!(e.contains("opset 22 (kiln imports opsets 11–21)"), "{e}");
}

#[test]
fn every_unsupported_op_is_listed_at_once() {
    let mut m = small_model();
    let g = m.graph.as_mut().unwrap();
    g.node.push(node("LSTM", &["y"], &["l"], vec![]));
    g.node.push(node("Tan", &["y"], &["s2"], vec![]));
    let mut custom = node("Fancy", &["y"], &["f"], vec![]);
    custom.domain = Some("com.example".into());
    g.node.push(custom);
    match import_proto(&m, &ImportOptions::default()) {
        Err(FrontendError::OnnxUnsupported(items)) => {
            let ops: Vec<(String, String)> = items
                .iter()
                .map(|u| match u {
                    Unsupported::Op { op_type, node, .. } => (op_type.clone(), node.clone()),
                    other => panic!("{other:?}"),
                })
                .collect();
            assert_eq!(
                ops,
                [
                    ("LSTM".to_string(), "node 'LSTM_l' (LSTM)".to_string()),
                    ("Tan".into(), "node 'Tan_s2' (Tan)".into()),
                    ("com.example::Fancy".into(), "node 'Fancy_f' (Fancy)".into()),
                ]
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn inconsistent_shapes_name_the_node() {
    // The conv weight wants 1 input channel, the input has 3.
    let mut m = small_model();
    m.graph.as_mut().unwrap().input[0] = vi("x", FLOAT, &[1, 3, 4, 4]);
    let e = err(&m);
    assert!(e.starts_with("onnx: node 'Conv_c' (Conv): conv2d"), "{e}");
    // A declared output shape that the computation contradicts.
    let mut m = small_model();
    m.graph.as_mut().unwrap().output[0] = vi("y", FLOAT, &[1, 31]);
    let e = err(&m);
    assert!(
        e.contains("value 'y' (produced by node 'Reshape_y' (Reshape)) is declared with shape [1,31] but computes to [1, 32]"),
        "{e}"
    );
}

#[test]
fn dynamic_shapes_that_cannot_be_resolved() {
    // A symbolic spatial dim: kiln needs a concrete size.
    let mut m = small_model();
    m.graph.as_mut().unwrap().input[0] = vi("x", FLOAT, &[1, 1, -1, 4]);
    let e = err(&m);
    assert!(
        e.contains("graph input 'x' has a symbolic dimension 'd2' at axis 2"),
        "{e}"
    );
    // ... which ImportOptions can give.
    let opts = ImportOptions {
        input_shapes: vec![("x".into(), vec![1, 1, 4, 4])],
    };
    assert!(import_proto(&m, &opts).is_ok());
    // A reshape target computed from runtime data.
    let m = model(
        13,
        vec![
            node("Cast", &["x"], &["xi"], vec![attr_i("to", 7)]),
            node("Reshape", &["x", "xi"], &["y"], vec![]),
        ],
        vec![],
        vec![vi("x", FLOAT, &[2])],
        vec![vi("y", FLOAT, &[2])],
    );
    let e = err(&m);
    assert!(
        e.contains("operator Reshape at node 'Reshape_y' (Reshape) (input 1 (shape) is computed at run time"),
        "{e}"
    );
    // ImportOptions naming an input the model lacks.
    let opts = ImportOptions {
        input_shapes: vec![("image".into(), vec![1, 1, 4, 4])],
    };
    let e = import_proto(&small_model(), &opts).unwrap_err().to_string();
    assert!(
        e.contains(
            "'image' (--input-shape / ImportOptions::input_shapes), which is not a graph input"
        ),
        "{e}"
    );
}

#[test]
fn symbolic_dims_name_the_flag_and_a_pinned_batch_is_noted() {
    let mut m = small_model();
    m.graph.as_mut().unwrap().input[0] = vi("x", FLOAT, &[-1, 1, -1, 4]);
    let e = err(&m);
    assert!(
        e.contains("symbolic dimension 'd2' at axis 2 ([N,1,d2,4])")
            && e.contains("give its size with --input-shape x=1,1,D2,4"),
        "{e}"
    );
    // The batch alone is pinned to 1, and the report says so.
    let (model, report) = import_proto(&small_model(), &ImportOptions::default()).unwrap();
    assert_eq!(
        model
            .graph
            .value_type(kiln_ir::Value::of(model.graph.inputs()[0]))
            .shape,
        [1, 1, 4, 4]
    );
    assert_eq!(
        report.notes,
        [
            "input 'x' has a symbolic batch dimension 'N': compiled for batch 1 \
          (another size: --input-shape x=N,1,4,4)"
        ]
    );
    // A given batch is no note, and a given static dim must match.
    let opts = ImportOptions {
        input_shapes: vec![("x".into(), vec![3, 1, 4, 4])],
    };
    let (model, report) = import_proto(&small_model(), &opts).unwrap();
    assert_eq!(
        model
            .graph
            .value_type(kiln_ir::Value::of(model.graph.inputs()[0]))
            .shape,
        [3, 1, 4, 4]
    );
    assert!(report.notes.is_empty(), "{:?}", report.notes);
    let opts = ImportOptions {
        input_shapes: vec![("x".into(), vec![3, 2, 4, 4])],
    };
    let e = import_proto(&small_model(), &opts).unwrap_err().to_string();
    assert!(
        e.contains("the shape [3,2,4,4] given for input 'x' (--input-shape / ImportOptions::input_shapes) does not fit its declared shape [N,1,4,4]"),
        "{e}"
    );
}

#[test]
fn bad_tensor_data_is_reported() {
    let mut m = small_model();
    m.graph.as_mut().unwrap().initializer[0].float_data.pop();
    let e = err(&m);
    assert!(e.contains("tensor 'w': has 17 elements"), "{e}");
}

#[test]
fn degenerate_sizes_are_errors() {
    // A zero-size kernel with automatic padding.
    let m = model(
        13,
        vec![node(
            "Conv",
            &["x", "w"],
            &["y"],
            vec![attr_s("auto_pad", "SAME_UPPER")],
        )],
        vec![tensor_f32("w", &[1, 1, 0, 3], &[])],
        vec![vi("x", FLOAT, &[1, 1, 4, 4])],
        vec![vi("y", FLOAT, &[1, 1, 4, 4])],
    );
    let e = err(&m);
    assert!(e.contains("node 'Conv_y' (Conv)"), "{e}");
    // A constant far too large to fold.
    let m = model(
        13,
        vec![
            node("ConstantOfShape", &["s"], &["c"], vec![]),
            node("Add", &["x", "c"], &["y"], vec![]),
        ],
        vec![tensor_i64("s", &[2], &[1 << 20, 1 << 20])],
        vec![vi("x", FLOAT, &[1])],
        vec![vi("y", FLOAT, &[1 << 20, 1 << 20])],
    );
    let e = err(&m);
    assert!(e.contains("would exceed"), "{e}");
}

#[test]
fn reshape_target_whose_size_overflows_is_an_error() {
    // Found by the onnx_import fuzz target: the product of the known dims
    // of a `-1` reshape overflowed (a panic with overflow checks on).
    let m = model(
        13,
        vec![node("Reshape", &["x", "s"], &["y"], vec![])],
        vec![tensor_i64("s", &[3], &[1 << 40, 1 << 40, -1])],
        vec![vi("x", FLOAT, &[1, 4])],
        vec![vi("y", FLOAT, &[1, 1, 4])],
    );
    let e = err(&m);
    assert!(
        e.contains("node 'Reshape_y' (Reshape)") && e.contains("has too many elements"),
        "{e}"
    );
}

/// A model touching many lowering paths, for the mutation test: every
/// attribute and constant in it is a target for corruption.
fn busy_model() -> ModelProto {
    model(
        13,
        vec![
            node("Shape", &["x"], &["s"], vec![]),
            node(
                "ConstantOfShape",
                &["s"],
                &["ones"],
                vec![attr_t("value", tensor_f32("", &[1], &[1.0]))],
            ),
            node("Mul", &["x", "ones"], &["m"], vec![]),
            node("Slice", &["m", "st", "en", "ax", "sp"], &["sl"], vec![]),
            node("Gather", &["sl", "idx"], &["g"], vec![attr_i("axis", 1)]),
            node(
                "Pad",
                &["g", "pads"],
                &["p"],
                vec![attr_s("mode", "reflect")],
            ),
            node("Softmax", &["p"], &["sm"], vec![attr_i("axis", -1)]),
            node(
                "ReduceMean",
                &["sm"],
                &["rm"],
                vec![attr_ints("axes", &[-1]), attr_i("keepdims", 1)],
            ),
            node(
                "Transpose",
                &["rm"],
                &["t"],
                vec![attr_ints("perm", &[0, 2, 1])],
            ),
            node("Unsqueeze", &["t", "ua"], &["u"], vec![]),
            node("Expand", &["u", "es"], &["e"], vec![]),
            node("Split", &["e", "spl"], &["a", "b"], vec![attr_i("axis", 0)]),
            node("Concat", &["a", "b"], &["c"], vec![attr_i("axis", 0)]),
            node(
                "MaxPool",
                &["x4"],
                &["mp"],
                vec![attr_ints("kernel_shape", &[2, 2]), attr_i("ceil_mode", 1)],
            ),
            node("Flatten", &["mp"], &["fl"], vec![attr_i("axis", 1)]),
            node("Gemm", &["fl", "gw"], &["gm"], vec![attr_i("transB", 1)]),
        ],
        vec![
            tensor_i64("st", &[1], &[1]),
            tensor_i64("en", &[1], &[-1]),
            tensor_i64("ax", &[1], &[2]),
            tensor_i64("sp", &[1], &[1]),
            tensor_i64("idx", &[2], &[0, -1]),
            tensor_i64("pads", &[6], &[0, 0, 1, 0, 0, 1]),
            tensor_i64("ua", &[1], &[0]),
            tensor_i64("es", &[4], &[2, 1, 1, 1]),
            tensor_i64("spl", &[2], &[1, 1]),
            tensor_f32("gw", &[3, 4], &data(12, 9)),
        ],
        vec![vi("x", FLOAT, &[-1, 3, 5]), vi("x4", FLOAT, &[1, 1, 3, 3])],
        vec![vi("c", FLOAT, &[-1, -1, -1, -1]), vi("gm", FLOAT, &[1, 3])],
    )
}

#[test]
fn busy_model_is_valid() {
    let (m, _) = import_proto(&busy_model(), &ImportOptions::default()).unwrap();
    assert!(m.graph.op_count() > 10);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// Any corruption of a valid model's bytes imports or fails cleanly.
    #[test]
    fn mutated_bytes_never_panic(
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
    ) {
        let base = if truncate { small_model() } else { busy_model() };
        let mut bytes = base.encode_to_vec();
        for (at, b) in edits {
            let i = at.index(bytes.len());
            bytes[i] = b;
        }
        if truncate {
            let n = cut.index(bytes.len());
            bytes.truncate(n);
        }
        let _ = import_bytes(&bytes, &ImportOptions::default());
    }

    /// Any values in the constants and integer attributes — negative,
    /// zero, out of range — import or fail cleanly.
    #[test]
    fn mutated_values_never_panic(
        consts in proptest::collection::vec((any::<prop::sample::Index>(), any::<prop::sample::Index>(), -12i64..12), 1..6),
        attrs in proptest::collection::vec((any::<prop::sample::Index>(), -6i64..6), 0..4),
        batch in 0usize..3,
    ) {
        let mut m = busy_model();
        let g = m.graph.as_mut().unwrap();
        for (t, e, v) in consts {
            let t = t.get_mut(&mut g.initializer);
            if !t.int64_data.is_empty() {
                let i = e.index(t.int64_data.len());
                t.int64_data[i] = v;
            }
        }
        for (n, v) in attrs {
            let n = n.get_mut(&mut g.node);
            if let Some(a) = n.attribute.iter_mut().find(|a| a.i.is_some()) {
                a.i = Some(v);
            }
        }
        let opts = ImportOptions { input_shapes: vec![("x".into(), vec![batch, 3, 5])] };
        let _ = import_proto(&m, &opts);
    }
}

/// The fuzzer's 162-byte file: an `Expand` of a runtime value to
/// [2^33, 2^31], then a softmax. Its element count wrapped to 0 in release
/// builds, the plan gave the tensor 64 bytes and the softmax kernel wrote
/// 2^31 floats per row. The type cannot exist, so the import stops there.
#[test]
fn an_expand_to_a_shape_no_allocation_could_hold_is_an_error() {
    let m = model(
        13,
        vec![
            node("Expand", &["x", "s"], &["e"], vec![]),
            node("Softmax", &["e"], &["y"], vec![attr_i("axis", -1)]),
        ],
        vec![tensor_i64("s", &[2], &[1 << 33, 1 << 31])],
        vec![vi("x", FLOAT, &[1, 1])],
        vec![vi("y", FLOAT, &[1 << 33, 1 << 31])],
    );
    let e = err(&m);
    assert!(e.contains("too large"), "{e}");
    // and a shape whose byte count fits but whose element count times 4
    // does not stops at the same check
    let m = model(
        13,
        vec![node("Expand", &["x", "s"], &["y"], vec![])],
        vec![tensor_i64("s", &[2], &[1 << 31, 1 << 31])],
        vec![vi("x", FLOAT, &[1, 1])],
        vec![vi("y", FLOAT, &[1 << 31, 1 << 31])],
    );
    assert!(err(&m).contains("too large"), "{}", err(&m));
}

#[test]
fn unsupported_ops_are_one_line_each_op_once() {
    let mut m = small_model();
    let g = m.graph.as_mut().unwrap();
    for i in 0..3 {
        g.node
            .push(node("LSTM", &["y"], &[&format!("l{i}")], vec![]));
    }
    g.node.push(node("Tan", &["y"], &["s2"], vec![]));
    g.node.push(node("LSTM", &["y"], &["l3"], vec![]));
    let e = err(&m);
    assert_eq!(
        e,
        "onnx: kiln cannot import: operator LSTM (4 nodes, first node 'LSTM_l0' (LSTM)); \
         operator Tan at node 'Tan_s2' (Tan)"
    );
}
