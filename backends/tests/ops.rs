//! Per-op differential tests: every primitive op, compiled alone on awkward
//! shapes (channels not a multiple of 4, 1×1 and 1×k planes, stride 2 on odd
//! sizes, asymmetric padding, groups, broadcasting), run into NaN-poisoned
//! outputs at 1 and 2 threads, and compared with the reference interpreter
//! at a relative tolerance of 1e-4.

mod common;

use common::{Arg, Fill, check_op, input, weight};
use kiln_backends::{TileLevel, kernel_plan};
use kiln_ir::{BinaryOp, DType, Float, Op, PadMode, PoolKind, ReduceKind, UnaryOp};

#[test]
fn unary_ops() {
    for (i, u) in UnaryOp::ALL.iter().enumerate() {
        let fill = match u {
            UnaryOp::Log | UnaryOp::Sqrt | UnaryOp::Reciprocal => Fill::Range(0.1, 4.0),
            UnaryOp::Exp => Fill::Range(-10.0, 10.0),
            _ => Fill::Range(-6.0, 6.0),
        };
        // tails of the 8- and 16-lane assembled forms, one vector, none
        for shape in [&[7][..], &[2, 3, 5], &[1, 4, 9, 9], &[5000], &[8], &[23]] {
            check_op(
                &format!("{} {shape:?}", u.name()),
                Op::Unary(*u),
                &[input(shape)],
                i as u64,
                fill,
            );
        }
    }
}

#[test]
fn binary_ops_with_broadcasting() {
    let pairs: [(&[usize], &[usize]); 8] = [
        (&[2, 3, 4], &[2, 3, 4]),
        (&[2, 3, 5], &[5]),
        (&[2, 3, 4], &[3, 1]),
        (&[1, 5, 1], &[4, 1, 6]),
        (&[], &[3, 2]),
        (&[8, 1, 7], &[1, 9, 1]),
        (&[1, 13, 7, 7], &[1, 13, 1, 1]),
        (&[3, 4097], &[3, 4097]),
    ];
    for (i, b) in BinaryOp::ALL.iter().enumerate() {
        let fill = match b {
            BinaryOp::Pow | BinaryOp::Div => Fill::Range(0.5, 2.0),
            // divisors away from zero; signs and large quotients are in
            // remainders_and_periodic_functions_on_wide_ranges
            BinaryOp::Mod | BinaryOp::Fmod => Fill::Range(0.5, 2.0),
            _ => Fill::Signed,
        };
        for (j, (x, y)) in pairs.iter().enumerate() {
            check_op(
                &format!("{} {x:?} {y:?}", b.name()),
                Op::Binary(*b),
                &[input(x), input(y)],
                (i * 16 + j) as u64,
                fill,
            );
            // a constant operand on either side
            check_op(
                &format!("{} {x:?} @{y:?}", b.name()),
                Op::Binary(*b),
                &[input(x), weight(y)],
                (i * 16 + j + 100) as u64,
                fill,
            );
        }
    }
}

/// mod and fmod on dividends up to ±1000 and divisors of both signs and
/// sizes (quotients up to 10^6): the JIT's f64 remainder is exact there, as
/// the interpreter's is. Sin and cos on a wide range of arguments.
#[test]
fn remainders_and_periodic_functions_on_wide_ranges() {
    for (i, op) in [BinaryOp::Mod, BinaryOp::Fmod].into_iter().enumerate() {
        for (j, d) in [3.0f32, -2.5, 0.7, -1e-3, 7.25, 1e3]
            .into_iter()
            .enumerate()
        {
            check_op(
                &format!("{} by {d}", op.name()),
                Op::Binary(op),
                &[input(&[3, 37]), Arg::WData(vec![], vec![d])],
                (i * 8 + j) as u64,
                Fill::Range(-1000.0, 1000.0),
            );
        }
    }
    for u in [UnaryOp::Sin, UnaryOp::Cos] {
        check_op(
            u.name(),
            Op::Unary(u),
            &[input(&[5, 41])],
            3,
            Fill::Range(-3000.0, 3000.0),
        );
    }
}

#[test]
fn pow_with_constant_exponents() {
    for p in [0.0f32, 1.0, 2.0, 3.0, 0.5, -1.0, 1.7] {
        check_op(
            &format!("pow {p}"),
            Op::Binary(BinaryOp::Pow),
            &[input(&[3, 9]), Arg::WData(vec![], vec![p])],
            7,
            Fill::Range(0.2, 3.0),
        );
    }
}

#[test]
fn clip_and_hard_sigmoid() {
    check_op(
        "clip",
        Op::Clip {
            min: Float(-0.3),
            max: Float(0.5),
        },
        &[input(&[3, 11])],
        1,
        Fill::Signed,
    );
    check_op(
        "hard_sigmoid",
        Op::HardSigmoid {
            alpha: Float(1.0 / 6.0),
            beta: Float(0.5),
        },
        &[input(&[2, 5, 3])],
        2,
        Fill::Range(-5.0, 5.0),
    );
}

/// `(N, C, H, W, O, [kh, kw], stride, pad, dilation, groups, bias)`
type ConvCase = (
    usize,
    usize,
    usize,
    usize,
    usize,
    [usize; 2],
    [usize; 2],
    [usize; 4],
    [usize; 2],
    usize,
    bool,
);

fn conv_cases() -> Vec<ConvCase> {
    vec![
        // pointwise
        (1, 3, 7, 7, 5, [1, 1], [1, 1], [0; 4], [1, 1], 1, true),
        (1, 13, 5, 6, 10, [1, 1], [1, 1], [0; 4], [1, 1], 1, false),
        (2, 16, 1, 1, 24, [1, 1], [1, 1], [0; 4], [1, 1], 1, true),
        (1, 8, 1, 9, 6, [1, 1], [1, 1], [0; 4], [1, 1], 1, true),
        (1, 36, 14, 14, 33, [1, 1], [1, 1], [0; 4], [1, 1], 1, true),
        // pointwise with stride 2 (im2col)
        (1, 6, 9, 9, 7, [1, 1], [2, 2], [0; 4], [1, 1], 1, true),
        // dense 3x3
        (1, 3, 9, 9, 8, [3, 3], [2, 2], [1, 1, 1, 1], [1, 1], 1, true),
        (
            1,
            5,
            6,
            7,
            3,
            [3, 3],
            [1, 1],
            [1, 1, 1, 1],
            [1, 1],
            1,
            false,
        ),
        (1, 4, 8, 8, 5, [3, 3], [1, 1], [0, 1, 2, 0], [1, 1], 1, true),
        (1, 4, 9, 9, 4, [3, 3], [1, 1], [2, 2, 2, 2], [2, 2], 1, true),
        (1, 2, 1, 9, 3, [1, 3], [1, 2], [0, 1, 0, 1], [1, 1], 1, true),
        // grouped
        (
            1,
            8,
            6,
            6,
            12,
            [3, 3],
            [1, 1],
            [1, 1, 1, 1],
            [1, 1],
            2,
            true,
        ),
        (2, 6, 5, 5, 6, [1, 1], [1, 1], [0; 4], [1, 1], 3, true),
        // depthwise
        (1, 7, 9, 9, 7, [3, 3], [1, 1], [1, 1, 1, 1], [1, 1], 7, true),
        (
            1,
            6,
            9,
            11,
            6,
            [3, 3],
            [2, 2],
            [1, 1, 1, 1],
            [1, 1],
            6,
            true,
        ),
        (
            2,
            5,
            16,
            19,
            5,
            [3, 3],
            [2, 2],
            [1, 1, 1, 1],
            [1, 1],
            5,
            false,
        ),
        (
            1,
            4,
            12,
            13,
            8,
            [3, 3],
            [1, 1],
            [1, 1, 1, 1],
            [1, 1],
            4,
            true,
        ),
        (
            1,
            3,
            11,
            10,
            3,
            [5, 5],
            [1, 1],
            [2, 2, 2, 2],
            [1, 1],
            3,
            true,
        ),
        (
            1,
            3,
            12,
            12,
            3,
            [7, 7],
            [2, 2],
            [3, 3, 3, 3],
            [1, 1],
            3,
            true,
        ),
        (1, 5, 8, 8, 5, [3, 3], [1, 1], [0, 2, 1, 0], [1, 1], 5, true),
        (
            1,
            4,
            10,
            10,
            4,
            [3, 3],
            [1, 1],
            [2, 2, 2, 2],
            [2, 2],
            4,
            true,
        ),
        (
            1,
            3,
            1,
            17,
            3,
            [1, 3],
            [1, 1],
            [0, 1, 0, 1],
            [1, 1],
            3,
            true,
        ),
        (1, 2, 1, 1, 2, [1, 1], [1, 1], [0; 4], [1, 1], 2, true),
        (
            1,
            4,
            13,
            13,
            4,
            [3, 3],
            [3, 3],
            [1, 1, 1, 1],
            [1, 1],
            4,
            true,
        ),
        (
            1,
            32,
            28,
            28,
            32,
            [3, 3],
            [1, 1],
            [1, 1, 1, 1],
            [1, 1],
            32,
            true,
        ),
    ]
}

#[test]
fn conv2d() {
    for (i, &(n, c, h, w, o, k, s, p, d, groups, bias)) in conv_cases().iter().enumerate() {
        let op = Op::Conv2d {
            stride: s,
            pad: p,
            dilation: d,
            groups,
        };
        let x = input(&[n, c, h, w]);
        let wt = [o, c / groups, k[0], k[1]];
        // constant weights (packed) and run-time weights (read in place)
        for constant in [true, false] {
            let wa = if constant { weight(&wt) } else { input(&wt) };
            let mut args = vec![x.clone(), wa];
            if bias {
                args.push(if constant { weight(&[o]) } else { input(&[o]) });
            }
            check_op(
                &format!("conv case {i} (constant weights: {constant})"),
                op.clone(),
                &args,
                i as u64,
                Fill::Signed,
            );
        }
    }
}

#[test]
fn matmul() {
    let cases: [(&[usize], &[usize]); 9] = [
        (&[5, 7], &[7, 9]),
        (&[2, 3, 5, 7], &[7, 6]),
        (&[2, 1, 4, 3], &[5, 3, 6]),
        (&[7], &[7, 9]),
        (&[4, 7], &[7]),
        (&[3, 7], &[7, 1]),
        (&[1, 33, 17], &[17, 29]),
        (&[4, 16, 8], &[4, 8, 16]),
        (&[2, 6, 64], &[64, 13]),
    ];
    for (i, (a, b)) in cases.iter().enumerate() {
        for (j, (ca, cb)) in [(false, false), (false, true), (true, false)]
            .iter()
            .enumerate()
        {
            let x = if *ca { weight(a) } else { input(a) };
            let y = if *cb { weight(b) } else { input(b) };
            check_op(
                &format!("matmul {a:?} {b:?} const ({ca}, {cb})"),
                Op::MatMul,
                &[x, y],
                (i * 4 + j) as u64,
                Fill::Signed,
            );
        }
    }
}

#[test]
fn gemm() {
    let (m, k, n) = (5, 11, 9);
    for trans_a in [false, true] {
        for trans_b in [false, true] {
            for (ci, c) in [
                None,
                Some(vec![n]),
                Some(vec![m, n]),
                Some(vec![m, 1]),
                Some(vec![]),
            ]
            .into_iter()
            .enumerate()
            {
                for (alpha, beta) in [(1.0, 1.0), (0.5, 2.0)] {
                    for const_b in [false, true] {
                        let a = if trans_a { vec![k, m] } else { vec![m, k] };
                        let b = if trans_b { vec![n, k] } else { vec![k, n] };
                        let mut args =
                            vec![input(&a), if const_b { weight(&b) } else { input(&b) }];
                        if let Some(c) = &c {
                            args.push(weight(c));
                        }
                        check_op(
                            &format!(
                                "gemm ta={trans_a} tb={trans_b} c={c:?} alpha={alpha} beta={beta} const_b={const_b}"
                            ),
                            Op::Gemm {
                                alpha: Float(alpha),
                                beta: Float(beta),
                                trans_a,
                                trans_b,
                            },
                            &args,
                            ci as u64,
                            Fill::Signed,
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn softmax() {
    for (shape, axis) in [
        (&[3, 10][..], 1),
        (&[2, 5, 7], 2),
        (&[2, 5, 7], 1),
        (&[1, 4, 3, 9], 1),
        (&[6, 3], 0),
        (&[2, 300], 1),
        // short rows in lanes: every short length, outer a multiple of
        // the 4-, 8- and 16-row blocks (f32x4, AVX2, AVX-512) and not,
        // fewer rows than one block
        (&[9, 1], 1),
        (&[11, 2], 1),
        (&[2, 7, 3], 2),
        (&[2, 3, 4], 2),
        (&[13, 5], 1),
        (&[2, 18, 6], 2),
        (&[3, 7], 1),
        (&[1, 2], 1),
        (&[8, 4], 1),
        (&[15, 5], 1),
        (&[17, 7], 1),
        (&[2, 16, 1], 2),
        // Mobile-Former's Former→Mobile bridge: 2 heads × 56×56 pixels
        // over 3 tokens
        (&[2, 3136, 3], 2),
        // long rows (assembled on AVX-512 and AVX2): masked tails of
        // either width, one full vector,
        // Mobile→Former's 6 tokens over 56×56 pixels, MobileViTv2's patches
        (&[5, 8], 1),
        (&[3, 16], 1),
        (&[5, 17], 1),
        (&[3, 33], 1),
        (&[4, 9], 1),
        (&[3, 12], 1),
        (&[2, 23], 1),
        (&[6, 3136], 1),
        (&[1, 1, 4, 256], 3),
        // inner > 1: strided rows, short and long
        (&[3, 5, 2], 1),
        (&[2, 17, 6], 1),
    ] {
        check_op(
            &format!("softmax {shape:?} axis {axis}"),
            Op::Softmax { axis },
            &[input(shape)],
            3,
            Fill::Range(-8.0, 8.0),
        );
    }
}

#[test]
fn norms() {
    let eps = Float(1e-5);
    for (shape, axis, beta) in [
        (&[2, 5, 7][..], 2, true),
        (&[2, 5, 7], 1, true),
        (&[3, 13], 1, false),
        (&[1, 49, 96], 2, true),
    ] {
        let p = &shape[axis..];
        let mut args = vec![input(shape), weight(p)];
        if beta {
            args.push(weight(p));
        }
        check_op(
            &format!("layer_norm {shape:?} axis {axis}"),
            Op::LayerNorm { axis, eps },
            &args,
            4,
            Fill::Signed,
        );
    }
    for (shape, groups) in [
        (&[2, 6, 5, 5][..], 1),
        (&[1, 6, 7], 2),
        (&[1, 6, 3, 3], 6),
        (&[2, 4], 2),
    ] {
        let c = shape[1];
        check_op(
            &format!("group_norm {shape:?} groups {groups}"),
            Op::GroupNorm { groups, eps },
            &[input(shape), weight(&[c]), weight(&[c])],
            5,
            Fill::Signed,
        );
    }
    for shape in [&[2, 5, 3, 3][..], &[1, 7], &[1, 3, 10]] {
        let c = shape[1];
        // variance must be positive
        check_op(
            &format!("batch_norm {shape:?}"),
            Op::BatchNorm { eps },
            &[
                input(shape),
                weight(&[c]),
                weight(&[c]),
                weight(&[c]),
                Arg::WData(vec![c], (0..c).map(|i| 0.5 + i as f32).collect()),
            ],
            6,
            Fill::Signed,
        );
    }
}

#[test]
fn reductions() {
    for kind in [ReduceKind::Mean, ReduceKind::Sum, ReduceKind::Max] {
        for (shape, axes) in [
            (&[2, 3, 4][..], &[1][..]),
            (&[2, 3, 4], &[0, 2]),
            (&[2, 3, 5, 6], &[2, 3]),
            (&[5, 9], &[0]),
            (&[2, 3, 4], &[0, 1, 2]),
            (&[3, 1, 7], &[1]),
            (&[4, 5, 6, 7], &[1, 3]),
        ] {
            for keepdims in [false, true] {
                check_op(
                    &format!("reduce {kind:?} {shape:?} {axes:?} keep {keepdims}"),
                    Op::Reduce {
                        kind,
                        axes: axes.to_vec(),
                        keepdims,
                    },
                    &[input(shape)],
                    8,
                    Fill::Signed,
                );
            }
        }
    }
    for shape in [&[1, 7, 5, 5][..], &[2, 3, 9], &[1, 4, 1, 1]] {
        check_op(
            &format!("global_avg_pool {shape:?}"),
            Op::GlobalAvgPool,
            &[input(shape)],
            9,
            Fill::Signed,
        );
    }
}

#[test]
fn pooling() {
    for (kind, kernel, stride, pad, cip, shape) in [
        (
            PoolKind::Max,
            [3, 3],
            [2, 2],
            [1, 1, 1, 1],
            false,
            [1, 3, 9, 9],
        ),
        (PoolKind::Max, [2, 2], [2, 2], [0; 4], false, [2, 2, 8, 7]),
        (
            PoolKind::Avg,
            [3, 3],
            [1, 1],
            [1, 1, 1, 1],
            false,
            [1, 5, 6, 6],
        ),
        (
            PoolKind::Avg,
            [3, 3],
            [1, 1],
            [1, 1, 1, 1],
            true,
            [1, 5, 6, 6],
        ),
        (
            PoolKind::Avg,
            [2, 3],
            [2, 1],
            [1, 0, 0, 2],
            false,
            [1, 2, 7, 9],
        ),
        (
            PoolKind::Max,
            [3, 3],
            [1, 1],
            [1, 1, 1, 1],
            false,
            [1, 2, 12, 13],
        ),
    ] {
        check_op(
            &format!("{kind:?} pool {kernel:?} s{stride:?} p{pad:?} {shape:?}"),
            Op::Pool2d {
                kind,
                kernel,
                stride,
                pad,
                count_include_pad: cip,
            },
            &[input(&shape)],
            10,
            Fill::Signed,
        );
    }
}

#[test]
fn data_movement() {
    let cases: Vec<(Op, Vec<Arg>)> = vec![
        (Op::Transpose { perm: vec![1, 0] }, vec![input(&[5, 7])]),
        (
            Op::Transpose {
                perm: vec![0, 2, 1, 3],
            },
            vec![input(&[2, 3, 4, 5])],
        ),
        (
            Op::Transpose {
                perm: vec![2, 0, 1],
            },
            vec![input(&[3, 4, 6])],
        ),
        // tiny innermost dims: blocked copies (MobileViTv2's unfold and
        // fold, Mobile-Former's per-head pixel/channel swaps), including
        // blocks whose outer dim is cut into chunks with a short last one
        (
            Op::Transpose {
                perm: vec![0, 1, 3, 5, 2, 4],
            },
            vec![input(&[1, 8, 6, 2, 5, 2])],
        ),
        (
            Op::Transpose {
                perm: vec![0, 1, 4, 2, 5, 3],
            },
            vec![input(&[1, 8, 2, 2, 6, 5])],
        ),
        (
            Op::Transpose {
                perm: vec![0, 2, 1],
            },
            vec![input(&[2, 6, 700])],
        ),
        // runs contiguous on both sides but shorter than a vector, also
        // blocked (MobileViT v1's 2×2 unfold moves pairs; runs of 3)
        (
            Op::Transpose {
                perm: vec![0, 2, 1, 3],
            },
            vec![input(&[64, 2, 16, 2])],
        ),
        (
            Op::Transpose {
                perm: vec![1, 0, 2],
            },
            vec![input(&[5, 70, 3])],
        ),
        // and runs under 32 (attention heads split in runs of 16; a run of
        // 7: one vector and a tail)
        (
            Op::Transpose {
                perm: vec![1, 0, 2, 3],
            },
            vec![input(&[3, 10, 4, 16])],
        ),
        (
            Op::Transpose {
                perm: vec![0, 2, 1, 3],
            },
            vec![input(&[2, 6, 5, 7])],
        ),
        (Op::Transpose { perm: vec![1, 0] }, vec![input(&[3, 4100])]),
        (
            Op::Concat { axis: 1 },
            vec![input(&[2, 3, 4]), input(&[2, 5, 4]), weight(&[2, 1, 4])],
        ),
        (
            Op::Concat { axis: 2 },
            vec![input(&[2, 3, 4]), input(&[2, 3, 3])],
        ),
        (Op::Concat { axis: 0 }, vec![input(&[1, 7]), input(&[2, 7])]),
        (
            Op::Slice {
                axes: vec![1],
                starts: vec![1],
                ends: vec![100],
                steps: vec![2],
            },
            vec![input(&[2, 9, 3])],
        ),
        (
            Op::Slice {
                axes: vec![0, 2],
                starts: vec![5, 0],
                ends: vec![-1, 3],
                steps: vec![-1, 1],
            },
            vec![input(&[4, 2, 6])],
        ),
        (
            Op::Slice {
                axes: vec![1],
                starts: vec![7],
                ends: vec![0],
                steps: vec![-3],
            },
            vec![input(&[2, 9])],
        ),
        (
            Op::Split {
                axis: 1,
                sizes: vec![2, 3, 1],
            },
            vec![input(&[2, 6, 5])],
        ),
        (
            Op::Split {
                axis: 2,
                sizes: vec![4, 5],
            },
            vec![input(&[3, 2, 9])],
        ),
        (
            Op::Pad {
                pads: vec![0, 1, 2, 0, 2, 1],
                mode: PadMode::Constant,
                value: Float(-1.5),
            },
            vec![input(&[2, 3, 4])],
        ),
        (
            Op::Pad {
                pads: vec![0, 0, 1, 2, 0, 0, 2, 1],
                mode: PadMode::Reflect,
                value: Float(0.0),
            },
            vec![input(&[1, 2, 4, 5])],
        ),
        (
            Op::Pad {
                pads: vec![1, 3, 2, 0],
                mode: PadMode::Edge,
                value: Float(0.0),
            },
            vec![input(&[3, 4])],
        ),
        (
            Op::Expand {
                shape: vec![4, 1, 3],
            },
            vec![input(&[2, 1])],
        ),
        (
            Op::Expand {
                shape: vec![2, 3, 8],
            },
            vec![input(&[3, 1])],
        ),
        (
            Op::Gather {
                axis: 1,
                indices: vec![0],
                indices_shape: vec![],
            },
            vec![input(&[2, 5, 3])],
        ),
        (
            Op::Gather {
                axis: 0,
                indices: vec![2, -1, 0, 2],
                indices_shape: vec![2, 2],
            },
            vec![input(&[4, 6])],
        ),
        (
            Op::Gather {
                axis: 1,
                indices: (0..40).map(|i| (i * 7) % 20 - 10).collect(),
                indices_shape: vec![40],
            },
            vec![input(&[3, 20, 2])],
        ),
        (Op::Reshape { shape: vec![6, 4] }, vec![input(&[2, 3, 4])]),
        (Op::Flatten { axis: 2 }, vec![input(&[2, 3, 4])]),
        (Op::Squeeze { axes: vec![0] }, vec![input(&[1, 3])]),
        (Op::Unsqueeze { axes: vec![0, 3] }, vec![input(&[2, 3])]),
        (Op::Cast { to: DType::F32 }, vec![input(&[5])]),
        (Op::Reshape { shape: vec![3, 2] }, vec![weight(&[2, 3])]),
    ];
    for (i, (op, args)) in cases.into_iter().enumerate() {
        check_op(&format!("{op}"), op, &args, i as u64, Fill::Signed);
    }
}

/// Random convolution geometries: any group structure (dense, grouped,
/// depthwise, depthwise-expanding), kernel 1..5, stride 1..3, dilation 1..2,
/// asymmetric padding, odd and tiny planes.
/// Stem-like strided convs through im2col (stride and window of 4 or
/// more) write each input row's taps with one transposed panel at AVX-512
/// (`kernels/conv.rs`, `panel_cols`), the edge columns whose taps reach
/// into the padding one by one; narrower windows keep the strided copy.
/// Patchify stems, a 7×7 stride-4 stem with padding 3 on an even and an
/// odd width (left and right edges), and — copied, no panel — 2×2, 3×3,
/// 5×5 and 1×1 stride-2 convs; whole-tensor and band by band (constant
/// small weights band), vertical padding included; against the
/// interpreter at every level, and whether the panels ran asserted.
#[test]
fn strided_convs_im2col_by_panels() {
    // (n, c, h, w, o, k, stride, pad), whether a panel writes the rows
    type Case = (usize, usize, usize, usize, usize, usize, usize, [usize; 4]);
    let cases: [(Case, bool); 9] = [
        ((1, 3, 32, 32, 96, 4, 4, [0; 4]), true),
        ((1, 3, 128, 128, 96, 16, 16, [0; 4]), true),
        ((1, 3, 48, 50, 64, 7, 4, [3; 4]), true),
        ((2, 8, 41, 47, 72, 7, 4, [2, 3, 1, 3]), true),
        ((2, 56, 16, 21, 64, 2, 2, [1, 0, 1, 0]), false),
        ((1, 40, 28, 28, 80, 2, 2, [0; 4]), false),
        ((1, 16, 24, 37, 96, 3, 2, [1; 4]), false),
        ((1, 8, 20, 40, 72, 5, 2, [2; 4]), false),
        ((1, 32, 28, 29, 96, 1, 2, [0; 4]), false),
    ];
    for (i, ((n, c, h, w, o, k, s, pad), panel)) in cases.into_iter().enumerate() {
        let op = Op::Conv2d {
            stride: [s, s],
            pad,
            dilation: [1, 1],
            groups: 1,
        };
        for constant in [true, false] {
            let wt = [o, c, k, k];
            let wa = if constant { weight(&wt) } else { input(&wt) };
            let args = vec![input(&[n, c, h, w]), wa, weight(&[o])];
            let what = format!("strided case {i} (constant weights: {constant})");
            check_op(&what, op.clone(), &args, 900 + i as u64, Fill::Signed);
            if common::asm_levels().contains(&TileLevel::Avx512) {
                let mut rng = common::Rng(1);
                let (model, _) = common::single(op.clone(), &args, &mut rng, Fill::Signed);
                let plan = kernel_plan(&model, &common::level_opts(1, TileLevel::Avx512)).unwrap();
                assert_eq!(plan.contains("transpose panel"), panel, "{what}:\n{plan}");
            }
        }
    }
}

#[test]
fn conv2d_random_shapes() {
    let mut rng = common::Rng(77);
    let mut done = 0;
    while done < 40 {
        let groups = *rng.pick(&[1, 1, 2, 3, 0]);
        let c = if groups == 0 {
            rng.range(1, 9)
        } else {
            groups * rng.range(1, 5)
        };
        let groups = if groups == 0 { c } else { groups };
        let o = groups * rng.range(1, 4);
        let (kh, kw) = (rng.range(1, 5), rng.range(1, 5));
        let stride = [rng.range(1, 3), rng.range(1, 3)];
        let dilation = [rng.range(1, 2), rng.range(1, 2)];
        let pad = [
            rng.range(0, 2),
            rng.range(0, 2),
            rng.range(0, 2),
            rng.range(0, 2),
        ];
        let (h, w) = (rng.range(1, 13), rng.range(1, 13));
        let op = Op::Conv2d {
            stride,
            pad,
            dilation,
            groups,
        };
        let x = [rng.range(1, 2), c, h, w];
        let wt = [o, c / groups, kh, kw];
        // skip geometries whose padded input is smaller than the window
        if kiln_ir::shape::infer(
            &op,
            &[kiln_ir::TensorType::f32(x), kiln_ir::TensorType::f32(wt)],
        )
        .is_err()
        {
            continue;
        }
        let mut args = vec![input(&x), weight(&wt)];
        if rng.coin() {
            args.push(weight(&[o]));
        }
        check_op(
            &format!("conv x{x:?} w{wt:?} s{stride:?} p{pad:?} d{dilation:?} g{groups}"),
            op,
            &args,
            done,
            Fill::Signed,
        );
        done += 1;
    }
}

/// Random matrix products, constant or run-time right operand, with
/// broadcast batch dimensions.
#[test]
fn matmul_random_shapes() {
    let mut rng = common::Rng(78);
    for i in 0..30 {
        let (m, k, n) = (rng.range(1, 40), rng.range(1, 70), rng.range(1, 40));
        let batch_a: Vec<usize> = (0..rng.range(0, 2)).map(|_| rng.range(1, 3)).collect();
        let batch_b: Vec<usize> = if rng.coin() {
            vec![]
        } else {
            batch_a
                .iter()
                .map(|&d| if rng.coin() { d } else { 1 })
                .collect()
        };
        let a = [batch_a.clone(), vec![m, k]].concat();
        let b = [batch_b, vec![k, n]].concat();
        let rhs = if rng.coin() { weight(&b) } else { input(&b) };
        check_op(
            &format!("matmul {a:?} @ {b:?}"),
            Op::MatMul,
            &[input(&a), rhs],
            i,
            Fill::Signed,
        );
    }
}

/// A depthwise window taller (or wider) than the padded input has no
/// interior; its first interior row was computed past the last output row,
/// and the edge code wrote one row beyond the plane — heap corruption found
/// by the `jit_vs_interp` fuzz target (tests/corpus/dw_multiplier2_h1.kir).
/// Multipliers 1 and 2, both axes, every level and the scalarised path.
#[test]
fn depthwise_windows_larger_than_the_input() {
    for (x, w, groups) in [
        ([1, 2, 1, 8], [4, 1, 5, 5], 2),
        ([1, 2, 1, 8], [2, 1, 5, 5], 2),
        ([1, 3, 7, 1], [3, 1, 5, 5], 3),
        ([1, 4, 2, 2], [8, 1, 7, 7], 4),
    ] {
        let pad = w[2] / 2;
        let op = Op::Conv2d {
            stride: [1, 1],
            pad: [pad, pad, pad, pad],
            dilation: [1, 1],
            groups,
        };
        let what = format!("depthwise {w:?} over {x:?}");
        check_op(&what, op, &[input(&x), weight(&w)], 7, Fill::Signed);
    }
}

/// resize: every mode, rounding and coordinate mapping, up and down, with
/// scales and with sizes, odd plane sizes and a 1-pixel axis.
#[test]
fn resize_all_modes() {
    use kiln_ir::{CoordMode, NearestMode, ResizeMode};
    // input shape, output size, scales (None: from the sizes)
    type Case<'a> = (&'a [usize], [usize; 2], Option<[f32; 2]>);
    // (the kernel's column paths: 2× duplication — and half-pixel 2×
    // bilinear — with vector steps and a tail, and of a 1-pixel width;
    // identity columns; a 3× table)
    let cases: [Case; 10] = [
        (&[1, 3, 6, 13], [12, 26], Some([2.0, 2.0])),
        (&[1, 2, 2, 1], [4, 2], None),
        (&[1, 2, 5, 9], [10, 9], None),
        (&[1, 2, 4, 4], [12, 12], Some([3.0, 3.0])),
        (&[1, 3, 4, 5], [8, 10], Some([2.0, 2.0])),
        (&[2, 2, 7, 9], [3, 4], None),
        (&[1, 1, 5, 3], [11, 7], None),
        (&[1, 5, 6, 6], [9, 15], Some([1.5, 2.5])),
        (&[1, 2, 1, 6], [4, 1], None),
        (&[1, 2, 9, 8], [4, 3], Some([0.5, 0.4])),
    ];
    let mut seed = 0;
    for mode in ResizeMode::ALL {
        let nearests: &[NearestMode] = if *mode == ResizeMode::Nearest {
            NearestMode::ALL
        } else {
            &[NearestMode::RoundPreferFloor]
        };
        for nearest in nearests {
            for coord in CoordMode::ALL {
                for (x, size, scale) in &cases {
                    seed += 1;
                    let op = Op::Resize {
                        mode: *mode,
                        nearest: *nearest,
                        coord: *coord,
                        size: *size,
                        scale: scale.map(|[h, w]| [Float(h), Float(w)]),
                    };
                    check_op(
                        &format!("{op} of {x:?}"),
                        op,
                        &[input(x)],
                        seed,
                        Fill::Signed,
                    );
                }
            }
        }
    }
}

/// Transposes as transposed panels (`ukernels/transpose.rs`, AVX-512) on
/// random shapes and permutations: panels of 4 to 16 columns and more
/// (whole 16-column chunks and a short last one), 4 to 70 rows (whole
/// 16-row blocks and a short last one), outer dims walked around them,
/// and the layouts the models move (NCHW ↔ NHWC, heads). Copies are exact:
/// every level must reproduce the input's bits, and at AVX-512 most of
/// these shapes must have run as panels.
#[test]
fn transpose_panels() {
    use kiln_backends::{CompileOptions, TileLevel, compile};
    let mut rng = common::Rng(0x7a_05e);
    let mut cases: Vec<(Vec<usize>, Vec<usize>)> = vec![
        (vec![1, 40, 56, 56], vec![0, 2, 3, 1]),
        (vec![1, 56, 56, 40], vec![0, 3, 1, 2]),
        (vec![2, 17, 33], vec![0, 2, 1]),
        (vec![16, 16], vec![1, 0]),
        (vec![1, 4, 49, 32], vec![0, 2, 1, 3]),
        (vec![1, 197, 3, 64], vec![0, 2, 3, 1]),
    ];
    let dims = [1usize, 3, 4, 5, 15, 16, 17, 33, 40, 70];
    while cases.len() < 40 {
        let rank = rng.range(2, 4);
        let shape: Vec<usize> = (0..rank).map(|_| *rng.pick(&dims)).collect();
        let mut perm: Vec<usize> = (0..rank).collect();
        for i in (1..rank).rev() {
            perm.swap(i, rng.below(i + 1));
        }
        cases.push((shape, perm));
    }
    let mut panels = 0;
    for (i, (shape, perm)) in cases.into_iter().enumerate() {
        let what = format!("transpose {shape:?} by {perm:?}");
        let op = Op::Transpose { perm };
        check_op(
            &what,
            op.clone(),
            &[input(&shape)],
            40 + i as u64,
            Fill::Signed,
        );
        if common::asm_levels().contains(&TileLevel::Avx512) {
            let mut rng = common::Rng(i as u64);
            let (model, inputs) = common::single(op, &[input(&shape)], &mut rng, Fill::Signed);
            let run = |level: TileLevel| {
                let options = CompileOptions {
                    max_tiles: level,
                    ..common::opts(2)
                };
                let m = compile(&model, &options).unwrap();
                let n = m
                    .kernel_descriptions()
                    .iter()
                    .filter(|(_, k)| k.contains("transpose panels"))
                    .count();
                (m.run(&inputs).unwrap(), n)
            };
            // the f32x4 level copies element by element
            let (want, _) = run(TileLevel::F32x4);
            let (got, n) = run(TileLevel::Avx512);
            panels += n;
            let (g, w) = (got[0].as_f32().unwrap(), want[0].as_f32().unwrap());
            assert!(
                g.iter().zip(w).all(|(a, b)| a.to_bits() == b.to_bits()),
                "{what}: not the input's bits"
            );
        }
    }
    if common::asm_levels().contains(&TileLevel::Avx512) {
        assert!(panels >= 15, "only {panels} transposes ran as panels");
    }
}
