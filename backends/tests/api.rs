//! The public API: errors at the boundary, outputs that are not computed by
//! a kernel of their own, buffer reuse, sharing between threads, and the
//! `--emit clif` text.

mod common;

use std::sync::Arc;

use common::{Fill, Rng, check, check_threads, opts, poisoned, single, tensor};
use kiln_backends::{BackendError, CompileOptions, CompiledModel, compile, emit_clif};
use kiln_ir::{BinaryOp, DType, Graph, Model, Op, Tensor, TensorType, UnaryOp, WeightStore};

fn relu_model(shape: &[usize]) -> Model {
    let mut g = Graph::new("relu");
    let x = g.add_input("x", TensorType::f32(shape)).unwrap();
    let y = g.add(Op::Unary(UnaryOp::Relu), &[x]).unwrap();
    g.set_outputs(vec![y]);
    Model {
        graph: g,
        weights: WeightStore::new(),
    }
}

#[test]
fn compiled_model_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<CompiledModel>();
}

#[test]
fn inputs_are_checked_at_the_boundary() {
    let m = compile(&relu_model(&[2, 3]), &CompileOptions::default()).unwrap();
    let e = m.run(&[]).unwrap_err();
    assert!(matches!(e, BackendError::Input(_)), "{e}");
    assert!(e.to_string().contains("1 inputs, 0 given"), "{e}");
    let wrong = Tensor::from_f32([3, 2], vec![0.0; 6]).unwrap();
    let e = m.run(&[wrong]).unwrap_err().to_string();
    assert_eq!(e, "input: input 0 (%x) must be f32[2,3], got f32[3,2]");
    let wrong = Tensor::from_i64([2, 3], vec![0; 6]).unwrap();
    let e = m.run(&[wrong]).unwrap_err().to_string();
    assert!(e.contains("must be f32[2,3], got i64[2,3]"), "{e}");
    let x = Tensor::from_f32([2, 3], vec![1.0; 6]).unwrap();
    let mut out = vec![Tensor::from_f32([6], vec![0.0; 6]).unwrap()];
    let e = m.run_into(&[x], &mut out).unwrap_err();
    assert!(matches!(e, BackendError::Output(_)), "{e}");
}

#[test]
fn i64_computation_is_a_compile_error_naming_the_node() {
    let mut g = Graph::new("cast");
    let x = g.add_input("x", TensorType::f32([4])).unwrap();
    let c = g.add(Op::Cast { to: DType::I64 }, &[x]).unwrap();
    g.set_outputs(vec![c]);
    let model = Model {
        graph: g,
        weights: WeightStore::new(),
    };
    let e = compile(&model, &CompileOptions::default()).err().unwrap();
    assert!(matches!(e, BackendError::Unsupported { .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.starts_with("%0 (cast): unsupported in the JIT"),
        "{msg}"
    );
}

#[test]
fn invalid_models_are_rejected() {
    let mut g = Graph::new("w");
    let x = g.add_input("x", TensorType::f32([2])).unwrap();
    let w = g.add_weight("w", TensorType::f32([2])).unwrap();
    let y = g.add(Op::Binary(BinaryOp::Add), &[x, w]).unwrap();
    g.set_outputs(vec![y]);
    let model = Model {
        graph: g,
        weights: WeightStore::new(),
    };
    let e = compile(&model, &CompileOptions::default()).err().unwrap();
    assert!(matches!(e, BackendError::Invalid(_)), "{e}");
    assert!(e.to_string().contains("@w: missing"), "{e}");
}

/// Outputs that are inputs, weights, aliases, or the same value twice get
/// their copy; every output buffer is written.
#[test]
fn outputs_that_no_kernel_computes() {
    let mut g = Graph::new("outs");
    let x = g.add_input("x", TensorType::f32([2, 3])).unwrap();
    let w = g.add_weight("w", TensorType::f32([3, 2])).unwrap();
    let r = g.add(Op::Unary(UnaryOp::Tanh), &[x]).unwrap();
    let rr = g.add(Op::Reshape { shape: vec![6] }, &[r]).unwrap();
    let xr = g.add(Op::Flatten { axis: 0 }, &[x]).unwrap();
    let wr = g.add(Op::Reshape { shape: vec![6] }, &[w]).unwrap();
    g.set_outputs(vec![x, w, r, rr, r, xr, wr]);
    let mut weights = WeightStore::new();
    let mut rng = Rng(1);
    weights.insert("w", tensor(&mut rng, &[3, 2], Fill::Signed));
    let model = Model { graph: g, weights };
    let input = tensor(&mut rng, &[2, 3], Fill::Signed);
    check("outputs", &model, &[input]);
}

#[test]
fn empty_tensors() {
    let mut rng = Rng(2);
    let (model, inputs) = single(
        Op::Unary(UnaryOp::Relu),
        &[common::input(&[0, 3])],
        &mut rng,
        Fill::Signed,
    );
    let out = check_threads("empty", &model, &inputs, 2);
    assert_eq!(out[0].shape(), &[0, 3]);
}

/// A chain of element-wise ops reuses buffers: the arena is far smaller
/// than the sum of the intermediates, and the kernels write in place.
#[test]
fn memory_plan_reuses_buffers() {
    let mut g = Graph::new("chain");
    let x = g.add_input("x", TensorType::f32([64, 1024])).unwrap();
    let mut v = x;
    let ops = [UnaryOp::Relu, UnaryOp::Tanh, UnaryOp::Neg, UnaryOp::Sigmoid];
    for i in 0..12 {
        v = g.add(Op::Unary(ops[i % 4]), &[v]).unwrap();
        if i % 3 == 2 {
            // a residual: the older value stays live
            let t = g.add(Op::Unary(UnaryOp::Abs), &[v]).unwrap();
            v = g.add(Op::Binary(BinaryOp::Add), &[v, t]).unwrap();
        }
    }
    g.set_outputs(vec![v]);
    let model = Model {
        graph: g,
        weights: WeightStore::new(),
    };
    let m = compile(&model, &opts(1)).unwrap();
    let st = m.stats();
    let one = 64 * 1024 * 4;
    assert!(st.unshared_bytes >= 15 * one, "{st:?}");
    assert!(
        st.arena_bytes <= 3 * one,
        "arena {} for {st:?}",
        st.arena_bytes
    );
    assert!(st.inplace_kernels >= 8, "{st:?}");
    let mut rng = Rng(3);
    let input = tensor(&mut rng, &[64, 1024], Fill::Signed);
    check("chain", &model, &[input]);
}

/// Several threads run one compiled model at once (each call takes its own
/// arena; callers that find the worker pool busy run alone) and all get the
/// single-threaded result bit for bit.
#[test]
fn concurrent_runs_agree() {
    let mut rng = Rng(4);
    let (model, inputs) = single(
        Op::Conv2d {
            stride: [1, 1],
            pad: [1, 1, 1, 1],
            dilation: [1, 1],
            groups: 1,
        },
        &[
            common::input(&[1, 16, 20, 20]),
            common::weight(&[24, 16, 3, 3]),
            common::weight(&[24]),
        ],
        &mut rng,
        Fill::Signed,
    );
    let m = Arc::new(compile(&model, &opts(2)).unwrap());
    let want = m.run(&inputs).unwrap();
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let m = Arc::clone(&m);
            let inputs = inputs.clone();
            std::thread::spawn(move || {
                let mut last = Vec::new();
                for _ in 0..20 {
                    let mut out = poisoned(&m);
                    m.run_into(&inputs, &mut out).unwrap();
                    last = out;
                }
                last
            })
        })
        .collect();
    for h in handles {
        let got = h.join().unwrap();
        assert_eq!(got, want);
    }
}

#[test]
fn run_into_reuses_the_callers_buffers() {
    let m = compile(&relu_model(&[4]), &CompileOptions::default()).unwrap();
    let x = Tensor::from_f32([4], vec![-1.0, 2.0, -3.0, 4.0]).unwrap();
    let mut out = poisoned(&m);
    let before = out[0].as_f32().unwrap().as_ptr();
    m.run_into(&[x], &mut out).unwrap();
    assert_eq!(out[0].as_f32().unwrap().as_ptr(), before);
    assert_eq!(out[0].as_f32().unwrap(), &[0.0, 2.0, 0.0, 4.0]);
}

#[test]
fn emit_clif_names_every_kernel_node() {
    let mut rng = Rng(5);
    let (model, _) = single(
        Op::Conv2d {
            stride: [2, 2],
            pad: [1, 1, 1, 1],
            dilation: [1, 1],
            groups: 1,
        },
        // run-time weights: a stem with constant ones would run band by
        // band in one kernel
        &[common::input(&[1, 3, 9, 9]), common::input(&[4, 3, 3, 3])],
        &mut rng,
        Fill::Signed,
    );
    let text = emit_clif(&model, &CompileOptions::default()).unwrap();
    // im2col, then the GEMM: both from the conv node
    assert_eq!(text.matches("from %0 (conv2d)").count(), 2, "{text}");
    assert!(text.contains("function u0:0(i64, i64, i64)"), "{text}");
    assert!(
        text.contains("opt_level=none"),
        "GEMM tiles compile at none:\n{text}"
    );
}

#[test]
fn stats_describe_the_compilation() {
    let m = compile(&relu_model(&[8]), &opts(3)).unwrap();
    let st = m.stats();
    assert_eq!(st.kernels, 1);
    assert_eq!(st.threads, 3);
    assert_eq!(m.threads(), 3);
    assert!(st.arena_bytes >= 64, "{st:?}");
    assert!(!st.target.is_empty());
}

/// Nodes whose operands are all constant (a weight transposed before its
/// matmul) are evaluated at compile time: only the matmul runs.
#[test]
fn constant_nodes_are_folded() {
    let mut g = Graph::new("fold");
    let x = g.add_input("x", TensorType::f32([3, 8])).unwrap();
    let w = g.add_weight("w", TensorType::f32([5, 8])).unwrap();
    let wt = g.add(Op::Transpose { perm: vec![1, 0] }, &[w]).unwrap();
    let wt2 = g.add(Op::Unary(UnaryOp::Tanh), &[wt]).unwrap();
    let y = g.add(Op::MatMul, &[x, wt2]).unwrap();
    g.set_outputs(vec![y, wt2]);
    let mut rng = Rng(6);
    let mut weights = WeightStore::new();
    weights.insert("w", tensor(&mut rng, &[5, 8], Fill::Signed));
    let model = Model { graph: g, weights };
    let m = compile(&model, &opts(1)).unwrap();
    // the matmul, and the copy of the folded output
    assert_eq!(m.stats().kernels, 2, "{:?}", m.stats());
    let input = tensor(&mut rng, &[3, 8], Fill::Signed);
    check("fold", &model, &[input]);
}

/// Tensors with a zero-sized dimension compile and run (nothing to do, but
/// no kernel may divide by zero or index past an empty buffer).
#[test]
fn zero_sized_dimensions() {
    let cases: Vec<(Op, Vec<common::Arg>)> = vec![
        (
            Op::Conv2d {
                stride: [1, 1],
                pad: [1, 1, 1, 1],
                dilation: [1, 1],
                groups: 1,
            },
            vec![common::input(&[0, 3, 5, 5]), common::weight(&[4, 3, 3, 3])],
        ),
        (
            Op::MatMul,
            vec![common::input(&[0, 7]), common::weight(&[7, 5])],
        ),
        (
            Op::MatMul,
            vec![common::input(&[3, 0]), common::input(&[0, 5])],
        ),
        (Op::Softmax { axis: 1 }, vec![common::input(&[2, 0, 3])]),
        (
            Op::LayerNorm {
                axis: 1,
                eps: kiln_ir::Float(1e-5),
            },
            vec![common::input(&[0, 4]), common::weight(&[4])],
        ),
        (
            Op::Reduce {
                kind: kiln_ir::ReduceKind::Sum,
                axes: vec![0],
                keepdims: false,
            },
            vec![common::input(&[0, 4])],
        ),
        (
            Op::Transpose { perm: vec![1, 0] },
            vec![common::input(&[0, 4])],
        ),
        (
            Op::Concat { axis: 0 },
            vec![common::input(&[0, 4]), common::input(&[2, 4])],
        ),
        (
            Op::Binary(BinaryOp::Add),
            vec![common::input(&[0, 4]), common::input(&[4])],
        ),
        (Op::GlobalAvgPool, vec![common::input(&[1, 0, 3, 3])]),
    ];
    for (i, (op, args)) in cases.into_iter().enumerate() {
        let mut rng = Rng(100 + i as u64);
        let (model, inputs) = single(op.clone(), &args, &mut rng, Fill::Signed);
        let m = compile(&model, &opts(2)).unwrap_or_else(|e| panic!("{op}: {e}"));
        let got = m.run(&inputs).unwrap_or_else(|e| panic!("{op}: {e}"));
        let want = kiln_ir::interp::run(&model.graph, &model.weights, &inputs).unwrap();
        assert_eq!(got, want, "{op}");
    }
}

#[test]
fn parallel_kernels_and_barrier_cost() {
    // a large element-wise kernel is split over the pool at 2 threads only
    let model = relu_model(&[64, 4096]);
    let one = compile(&model, &opts(1)).unwrap();
    let two = compile(&model, &opts(2)).unwrap();
    assert_eq!(one.parallel_kernels(), 0);
    assert_eq!(two.parallel_kernels(), 1);
    assert_eq!(one.barrier_cost(10), std::time::Duration::ZERO);
    // the pool still runs correct jobs after being measured
    let cost = two.barrier_cost(10);
    assert!(cost < std::time::Duration::from_millis(100), "{cost:?}");
    let x = tensor(&mut Rng(3), &[64, 4096], Fill::Range(-1.0, 1.0));
    let want = one.run(std::slice::from_ref(&x)).unwrap();
    assert_eq!(two.run(&[x]).unwrap(), want);
}

#[test]
fn run_views_reads_and_writes_borrowed_memory() {
    use kiln_backends::{Elems, ElemsMut, TensorMut, TensorRef};
    let m = compile(&relu_model(&[2, 3]), &CompileOptions::default()).unwrap();
    // An input at an odd element offset: views assume no alignment beyond
    // the element's (numpy slices start anywhere).
    let backing: Vec<f32> = (0..7).map(|i| i as f32 - 3.5).collect();
    let x = &backing[1..];
    let want = m
        .run(&[Tensor::from_f32([2, 3], x.to_vec()).unwrap()])
        .unwrap();
    let mut out = [f32::NAN; 6];
    let shape = [2, 3];
    m.run_views(
        &[TensorRef {
            shape: &shape,
            data: Elems::F32(x),
        }],
        &mut [TensorMut {
            shape: &shape,
            data: ElemsMut::F32(&mut out),
        }],
    )
    .unwrap();
    assert_eq!(&out[..], want[0].as_f32().unwrap());
    // A slice shorter than its shape is an error, never read past its end.
    let e = m
        .run_views(
            &[TensorRef {
                shape: &shape,
                data: Elems::F32(&x[..5]),
            }],
            &mut [TensorMut {
                shape: &shape,
                data: ElemsMut::F32(&mut out),
            }],
        )
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "input: input 0 (%x) has 5 elements, its shape f32[2,3] needs 6"
    );
    let mut short = [0.0f32; 5];
    let e = m
        .run_views(
            &[TensorRef {
                shape: &shape,
                data: Elems::F32(x),
            }],
            &mut [TensorMut {
                shape: &shape,
                data: ElemsMut::F32(&mut short),
            }],
        )
        .unwrap_err();
    assert!(matches!(e, BackendError::Output(_)), "{e}");
    // wrong dtype: the same message as for tensors
    let ints = [0i64; 6];
    let e = m
        .run_views(
            &[TensorRef {
                shape: &shape,
                data: Elems::I64(&ints),
            }],
            &mut [TensorMut {
                shape: &shape,
                data: ElemsMut::F32(&mut out),
            }],
        )
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "input: input 0 (%x) must be f32[2,3], got i64[2,3]"
    );
}
