//! The classic passes around saturation — dead-code elimination, CSE,
//! constant folding — and lowering fused ops back to primitives; each
//! result verified and checked against the interpreter.

mod common;

use common::{B, assert_same_function, histogram};
use kiln_ir::op::{BinaryOp, Op, UnaryOp};
use kiln_ir::{Model, verify, verify_weights};
use kiln_passes::const_fold::const_fold;
use kiln_passes::cse::cse;
use kiln_passes::dce::dce;
use kiln_passes::{OptOptions, optimize};

fn checked(m: &Model) {
    verify(&m.graph).unwrap();
    verify_weights(&m.graph, &m.weights).unwrap();
}

#[test]
fn dce_drops_dead_nodes_and_their_weights() {
    let mut b = B::new("dead");
    let x = b.input("x", &[2, 4]);
    let live = b.un(UnaryOp::Relu, x);
    let dead = b.linear(x, 3);
    let _ = dead;
    let m = b.finish(&[live]);
    let mut d = m.clone();
    assert_eq!(dce(&mut d), 5, "transpose, matmul, add and two weights");
    checked(&d);
    assert_eq!(d.graph.op_count(), 1);
    assert!(d.weights.is_empty());
    assert_same_function(&m, &d);
}

#[test]
fn cse_merges_equal_computations() {
    let mut b = B::new("dup");
    let x = b.input("x", &[2, 4]);
    let a1 = b.un(UnaryOp::Sigmoid, x);
    let a2 = b.un(UnaryOp::Sigmoid, x);
    let y = b.bin(BinaryOp::Mul, a1, a2);
    let m = b.finish(&[y]);
    let mut c = m.clone();
    assert_eq!(cse(&mut c.graph).unwrap(), 1);
    checked(&c);
    assert_eq!(c.graph.op_count(), 2);
    assert_same_function(&m, &c);
}

#[test]
fn const_fold_turns_weight_expressions_into_weights() {
    let mut b = B::new("fold");
    let x = b.input("x", &[2, 4]);
    let w = b.weight("w", &[3, 4], 1.0);
    let wt = b.op(Op::Transpose { perm: vec![1, 0] }, &[w]);
    let two = b.scalar(2.0);
    let w2 = b.bin(BinaryOp::Mul, wt, two);
    let y = b.op(Op::MatMul, &[x, w2]);
    let m = b.finish(&[y]);
    let mut f = m.clone();
    assert_eq!(const_fold(&mut f, &kiln_ir::Limits::default()).unwrap(), 2);
    dce(&mut f);
    checked(&f);
    assert_eq!(histogram(&f).get("matmul"), Some(&1));
    assert_eq!(f.graph.op_count(), 1);
    assert_same_function(&m, &f);
}

#[test]
fn lowering_fused_ops_gives_the_same_function() {
    let mut b = B::new("lower");
    let x = b.input("x", &[1, 4, 6, 6]);
    let y = b.conv(x, 8, 1, 1, 1, false);
    let y = b.bn(y);
    let y = b.un(UnaryOp::Relu6, y);
    let y = b.conv(y, 8, 3, 1, 8, false);
    let y = b.bn(y);
    let y = b.un(UnaryOp::Relu6, y);
    let y = b.conv(y, 4, 1, 1, 1, false);
    let y = b.bin(BinaryOp::Add, y, x);
    let m = b.finish(&[y]);
    let (mut o, _) = optimize(&m, &OptOptions::default()).unwrap();
    assert_eq!(histogram(&o).get("fused_conv_chain"), Some(&1));
    let n = kiln_ir::fused::lower_fused(&mut o.graph, &mut o.weights).unwrap();
    assert_eq!(n, 1);
    checked(&o);
    assert!(histogram(&o).keys().all(|k| !k.starts_with("fused_")));
    assert_same_function(&m, &o);
}
