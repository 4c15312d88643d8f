//! Interpreter tests for whole graphs: `run` and `run_all` results, and the
//! errors for inputs and weights that do not match the graph — each a clear
//! message naming what is wrong, never a panic.

mod interp_util;

use interp_util::*;
use kiln_ir::interp::{run, run_all};
use kiln_ir::{
    BinaryOp, Graph, IrError, Op, Tensor, TensorType, UnaryOp, Value, ValueInfo, WeightStore,
};

/// `y = relu(x·w + b)`, `z = -x`: two inputs' worth of checks in one graph.
fn linear() -> (Graph, WeightStore) {
    let mut g = Graph::new("linear");
    let x = g.add_input("x", TensorType::f32([1, 2])).unwrap();
    let w = g.add_weight("w", TensorType::f32([2, 2])).unwrap();
    let b = g.add_weight("b", TensorType::f32([2])).unwrap();
    let m = g.add(Op::MatMul, &[x, w]).unwrap();
    let a = g.add(Op::Binary(BinaryOp::Add), &[m, b]).unwrap();
    let y = g.add(Op::Unary(UnaryOp::Relu), &[a]).unwrap();
    let z = g.add(Op::Unary(UnaryOp::Neg), &[x]).unwrap();
    g.set_outputs(vec![y, z]);
    let mut ws = WeightStore::new();
    ws.insert("w", t(&[2, 2], &[1., 2., 3., 4.]));
    ws.insert("b", t(&[2], &[-10., 0.]));
    (g, ws)
}

#[test]
fn run_returns_outputs_in_order() {
    let (g, ws) = linear();
    let x = t(&[1, 2], &[1., 2.]);
    let out = run(&g, &ws, &[x]).unwrap();
    // x·w = [1+6, 2+8] = [7, 10]; + b = [-3, 10]; relu -> [0, 10]
    assert_eq!(out.len(), 2);
    assert_eq!((out[0].shape(), f(&out[0])), (&[1, 2][..], vec![0., 10.]));
    assert_eq!(f(&out[1]), [-1., -2.]);
}

#[test]
fn run_all_returns_every_value() {
    let (g, ws) = linear();
    let x = t(&[1, 2], &[1., 2.]);
    let all = run_all(&g, &ws, std::slice::from_ref(&x)).unwrap();
    assert_eq!(all.len(), g.node_count());
    let by_name = |n: &str| &all[&g.value_by_name(n).unwrap()];
    assert_eq!(by_name("x"), &x);
    // the matmul and the add, by their auto-generated names
    assert_eq!(f(by_name("0")), [7., 10.]);
    assert_eq!(f(by_name("1")), [-3., 10.]);
    assert_eq!(&all[&g.weight_by_name("w").unwrap()], ws.get("w").unwrap());
}

#[test]
fn outputs_may_be_inputs_weights_repeats_and_split_pieces() {
    let mut g = Graph::new("misc");
    let x = g.add_input("x", TensorType::f32([4])).unwrap();
    let w = g.add_weight("w", TensorType::f32([1])).unwrap();
    let parts = g
        .add_multi(
            Op::Split {
                axis: 0,
                sizes: vec![1, 3],
            },
            &[x],
        )
        .unwrap();
    g.set_outputs(vec![parts[1], x, w, parts[1]]);
    let mut ws = WeightStore::new();
    ws.insert("w", t(&[1], &[9.]));
    let x = t(&[4], &[1., 2., 3., 4.]);
    let out = run(&g, &ws, std::slice::from_ref(&x)).unwrap();
    assert_eq!(f(&out[0]), [2., 3., 4.]);
    assert_eq!(out[1], x);
    assert_eq!(f(&out[2]), [9.]);
    assert_eq!(out[3], out[0]);
}

#[test]
fn value_used_twice_is_kept_until_its_last_use() {
    // d = (x + 1) · (x + 1) - x: %a feeds two operands of one node, x
    // feeds the first and the last node
    let mut g = Graph::new("reuse");
    let x = g.add_input("x", TensorType::f32([2])).unwrap();
    let one = g.add_weight("one", TensorType::f32([])).unwrap();
    let a = g.add(Op::Binary(BinaryOp::Add), &[x, one]).unwrap();
    let sq = g.add(Op::Binary(BinaryOp::Mul), &[a, a]).unwrap();
    let d = g.add(Op::Binary(BinaryOp::Sub), &[sq, x]).unwrap();
    g.set_outputs(vec![d]);
    let mut ws = WeightStore::new();
    ws.insert("one", t(&[], &[1.]));
    let out = run(&g, &ws, &[t(&[2], &[1., 2.])]).unwrap();
    assert_eq!(f(&out[0]), [4. - 1., 9. - 2.]);
}

fn input_err(r: Result<Vec<Tensor>, IrError>) -> String {
    match r {
        Err(IrError::Input(m)) => m,
        other => panic!("expected an input error, got {other:?}"),
    }
}

#[test]
fn wrong_input_count() {
    let (g, ws) = linear();
    let m = input_err(run(&g, &ws, &[]));
    assert_eq!(m, "expected 1 input(s) (%x), got 0");
    let x = t(&[1, 2], &[1., 2.]);
    let m = input_err(run(&g, &ws, &[x.clone(), x]));
    assert_eq!(m, "expected 1 input(s) (%x), got 2");
}

#[test]
fn wrong_input_dtype_and_shape() {
    let (g, ws) = linear();
    let m = input_err(run(&g, &ws, &[ti(&[1, 2], &[1, 2])]));
    assert_eq!(m, "input %x: expected f32[1,2], got i64[1,2]");
    let m = input_err(run(&g, &ws, &[t(&[2, 1], &[1., 2.])]));
    assert_eq!(m, "input %x: expected f32[1,2], got f32[2,1]");
    // run_all checks the same way
    let e = run_all(&g, &ws, &[t(&[2], &[1., 2.])]).unwrap_err();
    assert_eq!(e.to_string(), "input %x: expected f32[1,2], got f32[2]");
}

#[test]
fn missing_and_mistyped_weights() {
    let (g, mut ws) = linear();
    ws.remove("b");
    ws.insert("w", t(&[4], &[0.; 4]));
    let e = run(&g, &ws, &[t(&[1, 2], &[1., 2.])]).unwrap_err();
    match &e {
        IrError::Weights(problems) => {
            assert_eq!(problems.len(), 2, "{problems:?}");
            assert!(
                problems
                    .iter()
                    .any(|p| p == "@b: missing (declared f32[2])")
            );
            assert!(
                problems
                    .iter()
                    .any(|p| p == "@w: declared f32[2,2], value is f32[4]")
            );
        }
        other => panic!("expected a weights error, got {other:?}"),
    }
}

#[test]
fn invalid_graph_is_rejected_before_running() {
    // a node whose declared type differs from the inferred one
    let mut g = Graph::new("bad");
    let x = g.add_input("x", TensorType::f32([2])).unwrap();
    let r = g
        .add_raw(
            Op::Unary(UnaryOp::Relu),
            vec![ValueInfo {
                name: "r".into(),
                ty: TensorType::f32([3]),
            }],
        )
        .unwrap();
    g.connect(x, r, 0);
    g.set_outputs(vec![Value::of(r)]);
    let e = run(&g, &WeightStore::new(), &[t(&[2], &[1., 2.])]).unwrap_err();
    assert!(matches!(e, IrError::Node { .. }), "{e:?}");
    assert!(e.to_string().starts_with("%r (relu):"), "{e}");
    // no outputs at all
    let mut g = Graph::new("empty");
    g.add_input("x", TensorType::f32([2])).unwrap();
    assert!(run(&g, &WeightStore::new(), &[t(&[2], &[1., 2.])]).is_err());
}

#[test]
fn value_errors_name_the_node() {
    // i64 shape arithmetic dividing by a zero input
    let mut g = Graph::new("shapes");
    let a = g.add_input("a", TensorType::i64([2])).unwrap();
    let b = g.add_input("b", TensorType::i64([2])).unwrap();
    let q = g
        .add_named(Op::Binary(BinaryOp::Div), &[a, b], vec!["q".into()])
        .unwrap();
    g.set_outputs(q);
    let ws = WeightStore::new();
    let out = run(&g, &ws, &[ti(&[2], &[7, -7]), ti(&[2], &[2, 2])]).unwrap();
    assert_eq!(i(&out[0]), [3, -3]);
    let e = run(&g, &ws, &[ti(&[2], &[7, -7]), ti(&[2], &[2, 0])]).unwrap_err();
    assert_eq!(e.to_string(), "%q (div): div: i64 division by zero");
    // a cast of NaN to i64
    let mut g = Graph::new("cast");
    let x = g.add_input("x", TensorType::f32([1])).unwrap();
    let c = g
        .add(
            Op::Cast {
                to: kiln_ir::DType::I64,
            },
            &[x],
        )
        .unwrap();
    g.set_outputs(vec![c]);
    let e = run(&g, &ws, &[t(&[1], &[f32::NAN])]).unwrap_err();
    assert!(e.to_string().starts_with("%0 (cast): cast:"), "{e}");
}

/// A small conv net end to end (conv, batch norm, hard-swish, pool, flatten,
/// gemm), checked against the same computation done with one `eval` per op:
/// `run` must wire operands and outputs exactly as the graph says.
#[test]
fn run_matches_op_by_op_evaluation() {
    let mut rng = Seeded::new(42);
    let mut g = Graph::new("tiny");
    let mut ws = WeightStore::new();
    let mut weight = |g: &mut Graph, name: &str, value: Tensor| {
        let ty = value.ty();
        ws.insert(name, value);
        g.add_weight(name, ty).unwrap()
    };
    let x = g.add_input("x", TensorType::f32([2, 3, 8, 8])).unwrap();
    let cw = weight(&mut g, "conv.w", rng.tensor(&[6, 3, 3, 3]));
    let cb = weight(&mut g, "conv.b", rng.tensor(&[6]));
    let bn: Vec<Value> = ["g", "b", "m"]
        .iter()
        .map(|n| weight(&mut g, &format!("bn.{n}"), rng.tensor(&[6])))
        .collect();
    // variances must be positive
    let bv = weight(&mut g, "bn.v", t(&[6], &[0.5, 1., 2., 0.25, 1., 3.]));
    let fw = weight(&mut g, "fc.w", rng.tensor(&[4, 6]));
    let ops = [
        Op::Conv2d {
            stride: [2, 2],
            pad: [1, 1, 1, 1],
            dilation: [1, 1],
            groups: 1,
        },
        Op::BatchNorm {
            eps: kiln_ir::Float(1e-5),
        },
        Op::Unary(UnaryOp::HardSwish),
        Op::GlobalAvgPool,
        Op::Flatten { axis: 1 },
        Op::Gemm {
            alpha: kiln_ir::Float(1.0),
            beta: kiln_ir::Float(1.0),
            trans_a: false,
            trans_b: true,
        },
    ];
    let c = g.add(ops[0].clone(), &[x, cw, cb]).unwrap();
    let n = g
        .add(ops[1].clone(), &[c, bn[0], bn[1], bn[2], bv])
        .unwrap();
    let h = g.add(ops[2].clone(), &[n]).unwrap();
    let p = g.add(ops[3].clone(), &[h]).unwrap();
    let fl = g.add(ops[4].clone(), &[p]).unwrap();
    let y = g.add(ops[5].clone(), &[fl, fw]).unwrap();
    g.set_outputs(vec![y]);

    let xin = Seeded::new(7).tensor(&[2, 3, 8, 8]);
    let out = run(&g, &ws, std::slice::from_ref(&xin)).unwrap();
    assert_eq!(out[0].shape(), [2, 4]);

    let w = |n: &str| ws.get(n).unwrap();
    let c = ev1(&ops[0], &[&xin, w("conv.w"), w("conv.b")]);
    let n = ev1(&ops[1], &[&c, w("bn.g"), w("bn.b"), w("bn.m"), w("bn.v")]);
    let h = ev1(&ops[2], &[&n]);
    let p = ev1(&ops[3], &[&h]);
    let fl = ev1(&ops[4], &[&p]);
    let y = ev1(&ops[5], &[&fl, w("fc.w")]);
    assert_eq!(out[0], y);
}

#[test]
fn eval_rejects_leaves_and_bad_arity() {
    let e = kiln_ir::interp::eval(&Op::Input, &[]).unwrap_err();
    assert!(e.contains("input"), "{e}");
    let x = t(&[1], &[1.0]);
    let e = kiln_ir::interp::eval(&Op::Binary(BinaryOp::Add), &[&x]).unwrap_err();
    assert!(e.contains("takes 2 operand(s), got 1"), "{e}");
}
