//! Graph -> e-graph -> graph with no rules is the identity, and the
//! optimiser is deterministic.

mod common;

use common::{B, dump};
use kiln_ir::op::{BinaryOp, Op, UnaryOp};
use kiln_passes::{OptOptions, optimize};

/// A graph with sharing (a residual and a value used three times), a
/// multi-output split, and weights used twice.
fn sample() -> kiln_ir::Model {
    let mut b = B::new("sample");
    let x = b.input("x", &[1, 4, 6, 6]);
    let y = b.conv(x, 4, 3, 1, 4, false);
    let y = b.bn(y);
    let y = b.un(UnaryOp::Relu6, y);
    let y = b.bin(BinaryOp::Add, y, x);
    let parts =
        b.g.add_multi(
            Op::Split {
                axis: 1,
                sizes: vec![1, 3],
            },
            &[y],
        )
        .unwrap();
    let s = b.un(UnaryOp::Sigmoid, parts[0]);
    let z = b.bin(BinaryOp::Mul, parts[1], s);
    let z2 = b.bin(BinaryOp::Mul, z, z);
    let t = b.input("t", &[1, 3, 8]);
    let l = b.linear(t, 5);
    b.finish(&[z2, l, y])
}

fn no_rules() -> OptOptions {
    OptOptions {
        families: vec![],
        fold_constants: false,
        ..OptOptions::default()
    }
}

#[test]
fn round_trip_without_rules_is_identity() {
    let m = sample();
    let (o, r) = optimize(&m, &no_rules()).unwrap();
    assert_eq!(dump(&o.graph), dump(&m.graph));
    assert_eq!(r.stop, kiln_passes::Stop::Saturated);
    assert!(r.rules.is_empty());
    assert_eq!(o.weights, m.weights);
}

#[test]
fn optimisation_is_deterministic() {
    let m = sample();
    let (a, ra) = optimize(&m, &OptOptions::default()).unwrap();
    for _ in 0..3 {
        let (b, rb) = optimize(&m, &OptOptions::default()).unwrap();
        assert_eq!(dump(&a.graph), dump(&b.graph));
        assert_eq!(ra.to_json(), rb.to_json());
        assert_eq!(a.weights, b.weights);
    }
}

#[test]
fn optimised_sample_computes_the_same() {
    let m = sample();
    let (o, _) = common::optimize_checked(&m);
    assert_ne!(dump(&o.graph), dump(&m.graph), "something should fuse");
}
