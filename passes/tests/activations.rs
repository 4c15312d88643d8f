//! Recognition of primitives ONNX exports decompose: SiLU, hard-sigmoid,
//! hard-swish, exact GELU, layer-norm — in the operand orders real exports
//! produce.

mod common;

use common::{B, assert_same_function, histogram};
use kiln_ir::op::{BinaryOp, Float, Op, ReduceKind, UnaryOp};
use kiln_ir::{Model, Value};
use kiln_passes::{OptOptions, optimize};

fn count(m: &Model, op: &str) -> usize {
    histogram(m).get(op).copied().unwrap_or(0)
}

fn optimise(m: &Model) -> Model {
    let (o, _) = optimize(m, &OptOptions::default()).unwrap();
    assert_same_function(m, &o);
    o
}

/// A one-op graph `f(x)` around a pointwise op, to read the result.
fn unary_graph(f: impl Fn(&mut B, Value) -> Value) -> Model {
    let mut b = B::new("act");
    let x = b.input("x", &[2, 3, 8]);
    let y = f(&mut b, x);
    b.finish(&[y])
}

#[test]
fn silu_in_both_orders() {
    for flip in [false, true] {
        let m = unary_graph(|b, x| {
            let s = b.un(UnaryOp::Sigmoid, x);
            if flip {
                b.bin(BinaryOp::Mul, s, x)
            } else {
                b.bin(BinaryOp::Mul, x, s)
            }
        });
        let o = optimise(&m);
        assert_eq!(count(&o, "silu"), 1);
        assert_eq!(o.graph.op_count(), 1);
    }
}

#[test]
fn hard_swish_spellings() {
    // x * relu6(x + 3) / 6
    let a = unary_graph(|b, x| {
        let three = b.scalar(3.0);
        let six = b.scalar(6.0);
        let p = b.bin(BinaryOp::Add, x, three);
        let r = b.un(UnaryOp::Relu6, p);
        let m = b.bin(BinaryOp::Mul, x, r);
        b.bin(BinaryOp::Div, m, six)
    });
    // x * hard_sigmoid(x) (PyTorch's alpha 1/6)
    let c = unary_graph(|b, x| {
        let h = b.op(
            Op::HardSigmoid {
                alpha: Float(1.0 / 6.0),
                beta: Float(0.5),
            },
            &[x],
        );
        b.bin(BinaryOp::Mul, h, x)
    });
    // x * (clip(x + 3, 0, 6) * (1/6)) — ONNX Clip, scale as a product
    let d = unary_graph(|b, x| {
        let three = b.scalar(3.0);
        let sixth = b.scalar(1.0 / 6.0);
        let p = b.bin(BinaryOp::Add, three, x);
        let r = b.op(
            Op::Clip {
                min: Float(0.0),
                max: Float(6.0),
            },
            &[p],
        );
        let h = b.bin(BinaryOp::Mul, r, sixth);
        b.bin(BinaryOp::Mul, x, h)
    });
    for m in [a, c, d] {
        let o = optimise(&m);
        assert_eq!(count(&o, "hard_swish"), 1);
        assert_eq!(o.graph.op_count(), 1);
    }
}

#[test]
fn gelu_from_the_erf_formula_in_three_groupings() {
    for grouping in 0..3 {
        let m = unary_graph(|b, x| {
            let sqrt2 = b.scalar(std::f32::consts::SQRT_2);
            let one = b.scalar(1.0);
            let half = b.scalar(0.5);
            let s = b.bin(BinaryOp::Div, x, sqrt2);
            let e = b.un(UnaryOp::Erf, s);
            let e = b.bin(BinaryOp::Add, e, one);
            match grouping {
                0 => {
                    // PyTorch's ONNX export: (x * (erf + 1)) * 0.5
                    let p = b.bin(BinaryOp::Mul, x, e);
                    b.bin(BinaryOp::Mul, p, half)
                }
                1 => {
                    let p = b.bin(BinaryOp::Mul, half, x);
                    b.bin(BinaryOp::Mul, p, e)
                }
                _ => {
                    let p = b.bin(BinaryOp::Mul, e, half);
                    b.bin(BinaryOp::Mul, x, p)
                }
            }
        });
        let o = optimise(&m);
        assert_eq!(count(&o, "gelu"), 1, "grouping {grouping}");
        assert_eq!(o.graph.op_count(), 1);
    }
}

/// LayerNorm as ONNX opsets < 17 export it.
fn decomposed_layer_norm(square_as_pow: bool, eps: f32) -> Model {
    let mut b = B::new("ln");
    let x = b.input("x", &[2, 5, 8]);
    let mean = |b: &mut B, v: Value| {
        b.op(
            Op::Reduce {
                kind: ReduceKind::Mean,
                axes: vec![2],
                keepdims: true,
            },
            &[v],
        )
    };
    let m = mean(&mut b, x);
    let d = b.bin(BinaryOp::Sub, x, m);
    let sq = if square_as_pow {
        let two = b.scalar(2.0);
        b.bin(BinaryOp::Pow, d, two)
    } else {
        b.bin(BinaryOp::Mul, d, d)
    };
    let var = mean(&mut b, sq);
    let e = b.scalar(eps);
    let ve = b.bin(BinaryOp::Add, var, e);
    let sd = b.un(UnaryOp::Sqrt, ve);
    let n = b.bin(BinaryOp::Div, d, sd);
    let g = b.positive("g", &[8], 0.0);
    let be = b.weight("b", &[8], 0.1);
    let y = b.bin(BinaryOp::Mul, n, g);
    let y = b.bin(BinaryOp::Add, be, y);
    b.finish(&[y])
}

#[test]
fn layer_norm_from_its_decomposition() {
    for pow in [true, false] {
        let o = optimise(&decomposed_layer_norm(pow, 1e-5));
        assert_eq!(count(&o, "layer_norm"), 1);
        assert_eq!(o.graph.op_count(), 1);
    }
}

#[test]
fn layer_norm_over_the_wrong_axes_is_not_recognised() {
    // mean over axis 1 (tokens), not the trailing feature axis
    let mut b = B::new("not_ln");
    let x = b.input("x", &[2, 5, 8]);
    let r = |b: &mut B, v: Value| {
        b.op(
            Op::Reduce {
                kind: ReduceKind::Mean,
                axes: vec![1],
                keepdims: true,
            },
            &[v],
        )
    };
    let m = r(&mut b, x);
    let d = b.bin(BinaryOp::Sub, x, m);
    let sq = b.bin(BinaryOp::Mul, d, d);
    let var = r(&mut b, sq);
    let e = b.scalar(1e-5);
    let ve = b.bin(BinaryOp::Add, var, e);
    let sd = b.un(UnaryOp::Sqrt, ve);
    let n = b.bin(BinaryOp::Div, d, sd);
    let g = b.positive("g", &[8], 0.0);
    let y = b.bin(BinaryOp::Mul, n, g);
    let m = b.finish(&[y]);
    let o = optimise(&m);
    assert_eq!(count(&o, "layer_norm"), 0);
}

#[test]
fn max_with_a_tiny_epsilon_is_not_a_relu() {
    // the L2-normalisation guard `max(norm, 1e-12)` keeps 1e-12 for a zero
    // norm; a relu would give 0 and the division would blow up
    let m = unary_graph(|b, x| {
        let eps = b.scalar(1e-12);
        b.bin(BinaryOp::Max, x, eps)
    });
    let o = optimise(&m);
    assert_eq!(count(&o, "relu"), 0);
    assert_eq!(count(&o, "max"), 1);
}
