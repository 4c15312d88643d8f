//! Fused conv/linear kernels (epilogues inside the GEMM and depthwise
//! kernels) against the interpreter, which runs each fused op's primitive
//! expansion: every activation × bias × residual combination on random
//! awkward shapes (channels not a multiple of 4, odd planes, stride 2,
//! asymmetric padding, depthwise, grouped, 1×1 and k×k, M/N/K around the
//! 14×32 and 4×8 tiles), NaN-poisoned outputs, 1 vs 2 threads bit for bit,
//! assembled tiles on and off. Then whole optimised zoo models against the
//! interpreter on the unoptimised ones.

mod common;

use common::{Arg, Fill, Rng, check, input, opts, single, tensor, weight};
use kiln_backends::{CompileOptions, compile};
use kiln_frontends::zoo::{self, ZooOptions};
use kiln_ir::fused::{Act, ConvStage, FusedOp};
use kiln_ir::{Model, Op, Tensor, Value, interp};

/// The kernel descriptions of `model` compiled at 1 thread.
fn kernels(model: &Model, options: &CompileOptions) -> Vec<String> {
    compile(model, options)
        .unwrap_or_else(|e| panic!("compile failed: {e}"))
        .kernel_descriptions()
        .into_iter()
        .map(|(_, what)| what)
        .collect()
}

/// Checks `op` on `args` and that it compiled to a fused kernel (not the
/// expansion) whose description mentions `what_kernel`.
fn check_fused(what: &str, op: FusedOp, args: &[Arg], seed: u64, what_kernel: &str) {
    let mut rng = Rng(seed);
    let (model, inputs) = single(Op::Fused(op), args, &mut rng, Fill::Signed);
    check(what, &model, &inputs);
    for asm in [true, false] {
        let o = CompileOptions {
            asm_tiles: asm,
            ..opts(1)
        };
        let ks = kernels(&model, &o);
        assert!(
            ks.iter()
                .any(|k| k.starts_with("fused") && k.contains(what_kernel)),
            "{what}: no fused {what_kernel} kernel (asm {asm}): {ks:?}"
        );
    }
}

/// Every (activation, bias, residual) combination, for convolutions.
fn combos() -> Vec<(Act, bool, bool)> {
    let mut v = Vec::new();
    for act in Act::ALL {
        for bias in [false, true] {
            for residual in [false, true] {
                v.push((act, bias, residual));
            }
        }
    }
    v
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Pointwise,
    Im2col,
    Depthwise,
    Grouped,
}

/// One `fused_conv` case: a `[1, c, h, w]` input, `o` outputs, a square
/// `k×k` kernel.
struct ConvSpec {
    c: usize,
    o: usize,
    groups: usize,
    k: usize,
    h: usize,
    w: usize,
    stride: usize,
    pad: [usize; 4],
    act: Act,
    bias: bool,
    residual: bool,
}

/// The op of `s` and its operands: input, weight, then the bias, the
/// run-time dynamic-ReLU slopes and the residual as the epilogue asks.
fn fused_conv(s: &ConvSpec) -> (FusedOp, Vec<Arg>) {
    let ho = (s.h + s.pad[0] + s.pad[2] - s.k) / s.stride + 1;
    let wo = (s.w + s.pad[1] + s.pad[3] - s.k) / s.stride + 1;
    let mut args = vec![
        input(&[1, s.c, s.h, s.w]),
        weight(&[s.o, s.c / s.groups, s.k, s.k]),
    ];
    if s.bias {
        args.push(weight(&[s.o]));
    }
    if s.act == Act::DyRelu {
        // run-time slopes, as Mobile-Former computes them from its tokens
        args.push(input(&[1, s.o, 1, 1]));
        args.push(input(&[1, s.o, 1, 1]));
    }
    if s.residual {
        args.push(input(&[1, s.o, ho, wo]));
    }
    let op = FusedOp::Conv {
        stride: [s.stride, s.stride],
        pad: s.pad,
        dilation: [1, 1],
        groups: s.groups,
        bias: s.bias,
        shuffle: 1,
        act: s.act,
        residual: s.residual,
    };
    (op, args)
}

/// A random fused conv of `kind` with epilogue `(act, bias, residual)`.
fn conv_case(
    rng: &mut Rng,
    kind: Kind,
    act: Act,
    bias: bool,
    residual: bool,
) -> (FusedOp, Vec<Arg>) {
    // output channel counts around the 14-row asm tile and the 4-row
    // Cranelift tile, never all multiples of 4
    let oc = *rng.pick(&[1usize, 3, 5, 13, 14, 15, 27, 29, 33]);
    let (c, o, groups, k, stride, pad) = match kind {
        Kind::Pointwise => (rng.range(1, 21), oc, 1, 1, 1, [0; 4]),
        Kind::Im2col => {
            let k = *rng.pick(&[1usize, 3, 5]);
            let s = rng.range(1, 2);
            let pad = [0; 4].map(|_| rng.below(k));
            // a 1×1 with stride 2 or padding also goes through im2col
            let pad = if k == 1 && s == 1 { [0, 1, 1, 0] } else { pad };
            (rng.range(1, 11), oc, 1, k, s, pad)
        }
        Kind::Depthwise => {
            let c = rng.range(2, 19);
            let k = *rng.pick(&[3usize, 5]);
            let pad = [0; 4].map(|_| rng.below(k));
            (c, c * rng.range(1, 2), c, k, rng.range(1, 2), pad)
        }
        Kind::Grouped => {
            let g = 2;
            // at least 2 channels per group: 1 per group is depthwise
            let c = 2 * rng.range(2, 6);
            let o = 2 * rng.range(1, 9);
            (c, o, g, 3, rng.range(1, 2), [1, 0, 2, 1])
        }
    };
    // planes whose pixel counts fall around 32 columns and 8 columns
    let h = rng.range(k.max(3), 13);
    let w = rng.range(k.max(3), 13);
    fused_conv(&ConvSpec {
        c,
        o,
        groups,
        k,
        h,
        w,
        stride,
        pad,
        act,
        bias,
        residual,
    })
}

fn conv_kind(kind: Kind, label: &str, seed: u64) {
    let mut rng = Rng(seed);
    for (i, (act, bias, residual)) in combos().into_iter().enumerate() {
        let (op, args) = conv_case(&mut rng, kind, act, bias, residual);
        let what = format!("{kind:?} {act:?} bias {bias} res {residual}: {op:?} {args:?}");
        check_fused(&what, op, &args, seed * 1000 + i as u64, label);
    }
}

#[test]
fn pointwise_conv_epilogues() {
    conv_kind(Kind::Pointwise, "pointwise conv", 1);
}

#[test]
fn im2col_conv_epilogues() {
    conv_kind(Kind::Im2col, "im2col conv", 2);
}

#[test]
fn depthwise_conv_epilogues() {
    conv_kind(Kind::Depthwise, "depthwise conv", 3);
}

/// The assembled depthwise interior's edges (`asm_dw`): every width 1..=17
/// and 33 (masked tails, one or two full 16-column chunks, no interior),
/// stride 1 and 2 on odd and even sizes, heights around the 6-row groups
/// (interiors of 1 to 17 rows: remainders, one and two whole groups), the
/// one-column left and right edges the assembled code computes with masked
/// taps (both, either; in one chunk, a whole last chunk or a short one) and
/// the top and bottom edge rows (both, either, in one group or two),
/// channel multipliers 1 and 3, every epilogue. The assembled and the
/// Cranelift interiors sum in the same order and apply the same activation
/// formulas, so they must agree bit for bit (but for silu, whose assembled
/// form scales by `vscalefps`).
#[test]
fn depthwise_asm_edges() {
    let mut rng = Rng(21);
    let mut i = 0;
    let mut assembled = 0;
    for w in (1..=17).chain([33]) {
        for stride in [1, 2] {
            for _ in 0..2 {
                let act = Act::ALL[i % Act::ALL.len()];
                let (bias, residual) = (i % 2 == 0, i % 3 != 1);
                let c = 2 + i % 3;
                let o = c * if i % 4 < 2 { 1 } else { 3 };
                let h = 3 + (i * 5) % 17;
                // [t, l, b, r]: both edge columns assembled (one column of
                // padding each side), only the left, only the right
                let pad = match i % 5 {
                    4 => [0, 1, 2, 0],
                    2 => [1, 0, 0, 1],
                    _ => [1; 4],
                };
                if w + pad[1] + pad[3] < 3 {
                    i += 1;
                    continue;
                }
                let (op, args) = fused_conv(&ConvSpec {
                    c,
                    o,
                    groups: c,
                    k: 3,
                    h,
                    w,
                    stride,
                    pad,
                    act,
                    bias,
                    residual,
                });
                let what = format!("{act:?} bias {bias} res {residual}: {op:?} {args:?}");
                check_fused(&what, op.clone(), &args, 500 + i as u64, "depthwise conv");
                let (model, inputs) = single(Op::Fused(op), &args, &mut rng, Fill::Signed);
                let run = |asm: bool| {
                    let o = CompileOptions {
                        asm_tiles: asm,
                        ..opts(1)
                    };
                    let m = compile(&model, &o).unwrap();
                    let mut got = common::poisoned(&m);
                    m.run_into(&inputs, &mut got).unwrap();
                    got[0].as_f32().unwrap().to_vec()
                };
                let ks = kernels(&model, &opts(1));
                assembled += ks.iter().filter(|k| k.contains("avx512")).count();
                let (a, b) = (run(true), run(false));
                assert!(
                    act == Act::Silu || a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()),
                    "{what}: assembled and Cranelift interiors differ"
                );
                i += 1;
            }
        }
    }
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx512f") {
        assert!(assembled > 20, "only {assembled} assembled interiors");
    }
}

#[test]
fn grouped_conv_epilogues() {
    conv_kind(Kind::Grouped, "im2col conv", 4);
}

/// Weights that are run-time values (no packing, no assembled tile) and a
/// batch of two images with per-image depthwise slopes.
#[test]
fn run_time_weights_and_batches() {
    let pw = FusedOp::Conv {
        stride: [1, 1],
        pad: [0; 4],
        dilation: [1, 1],
        groups: 1,
        bias: true,
        shuffle: 1,
        act: Act::HardSwish,
        residual: true,
    };
    check_fused(
        "pointwise, run-time weight, batch 2",
        pw,
        &[
            input(&[2, 7, 5, 9]),
            input(&[15, 7, 1, 1]),
            input(&[15]),
            input(&[2, 15, 5, 9]),
        ],
        11,
        "pointwise conv",
    );
    let dw = FusedOp::Conv {
        stride: [2, 2],
        pad: [1, 0, 1, 2],
        dilation: [1, 1],
        groups: 6,
        bias: true,
        shuffle: 1,
        act: Act::DyRelu,
        residual: false,
    };
    check_fused(
        "depthwise, per-image slopes",
        dw,
        &[
            input(&[2, 6, 9, 11]),
            weight(&[6, 1, 3, 3]),
            weight(&[6]),
            input(&[2, 6, 1, 1]),
            input(&[2, 6, 1, 1]),
        ],
        12,
        "depthwise conv",
    );
    // per-image slopes on a GEMM conv run as the expansion: still right
    let pw_dy = FusedOp::Conv {
        stride: [1, 1],
        pad: [0; 4],
        dilation: [1, 1],
        groups: 1,
        bias: false,
        shuffle: 1,
        act: Act::DyRelu,
        residual: true,
    };
    let mut rng = Rng(13);
    let (model, inputs) = single(
        Op::Fused(pw_dy),
        &[
            input(&[2, 5, 4, 4]),
            weight(&[9, 5, 1, 1]),
            input(&[2, 9, 1, 1]),
            input(&[2, 9, 1, 1]),
            input(&[2, 9, 4, 4]),
        ],
        &mut rng,
        Fill::Signed,
    );
    check("pointwise, per-image slopes (expanded)", &model, &inputs);
}

/// Silu and GELU on outputs far into both tails: the assembled silu's
/// `exp` overflows to infinity for large negative values (giving -0, like
/// the reference) and vanishes for large positive ones.
/// Pointwise convs whose B panel the assembled tiles copy as they read it
/// (the first row block of each column panel fills it, the others read
/// it): power-of-two planes (B rows a whole feature map apart), K of 1,
/// odd and 32, M below, at and around the 14-row tile, column tails, one
/// column panel with M split across units at 2 threads (so a unit holds
/// only the row tail and must fill the panel itself), every epilogue.
#[test]
fn pointwise_run_time_b_panels() {
    // (C in = K, C out = M, H, W)
    let shapes = [
        (32, 64, 64, 64),
        (33, 29, 16, 33),
        (1, 14, 8, 8),
        (2, 5, 4, 8),
        (7, 29, 4, 8),
        (64, 43, 3, 7),
    ];
    let mut case = 0u64;
    for (c, o, h, w) in shapes {
        for (i, act) in Act::ALL.into_iter().enumerate() {
            let (bias, residual) = (i % 2 == 0, i % 3 != 1);
            let (op, args) = fused_conv(&ConvSpec {
                c,
                o,
                groups: 1,
                k: 1,
                h,
                w,
                stride: 1,
                pad: [0; 4],
                act,
                bias,
                residual,
            });
            let what = format!("{c}->{o} {h}x{w} {act:?} bias {bias} res {residual}");
            case += 1;
            check_fused(&what, op, &args, 500 + case, "pointwise conv");
        }
    }
}

#[test]
fn activations_on_large_outputs() {
    for act in [Act::Silu, Act::Gelu, Act::HardSwish] {
        let op = FusedOp::Conv {
            stride: [1, 1],
            pad: [0; 4],
            dilation: [1, 1],
            groups: 1,
            bias: true,
            shuffle: 1,
            act,
            residual: true,
        };
        let args = [
            input(&[1, 6, 7, 9]),
            weight(&[29, 6, 1, 1]),
            weight(&[29]),
            input(&[1, 29, 7, 9]),
        ];
        let mut rng = Rng(400);
        let (model, inputs) = single(Op::Fused(op), &args, &mut rng, Fill::Range(-40.0, 40.0));
        check(&format!("{act:?} on large outputs"), &model, &inputs);
    }
}

/// A conv chain runs as one fused conv kernel per stage (an inverted
/// residual: pointwise expand with dynamic ReLU, depthwise stride 2,
/// pointwise project with the residual on the last stage).
#[test]
fn conv_chains_split_into_fused_convs() {
    let stage = |stride, pad, groups, bias, act| ConvStage {
        stride: [stride, stride],
        pad,
        groups,
        bias,
        shuffle: 1,
        act,
    };
    let chain = FusedOp::ConvChain {
        stages: vec![
            stage(1, [0; 4], 1, true, Act::DyRelu),
            stage(2, [1, 1, 1, 1], 18, true, Act::Relu6),
            stage(1, [0; 4], 1, false, Act::None),
        ],
        residual: true,
    };
    let args = [
        input(&[1, 7, 9, 11]),
        weight(&[18, 7, 1, 1]),
        weight(&[18]),
        input(&[1, 18, 1, 1]),
        input(&[1, 18, 1, 1]),
        weight(&[18, 1, 3, 3]),
        weight(&[18]),
        weight(&[5, 18, 1, 1]),
        input(&[1, 5, 5, 6]),
    ];
    let mut rng = Rng(300);
    let (model, inputs) = single(Op::Fused(chain), &args, &mut rng, Fill::Signed);
    check("conv chain", &model, &inputs);
    let ks = kernels(&model, &opts(1));
    for want in [
        "pointwise conv 7→18",
        "depthwise conv 18→18",
        "pointwise conv 18→5",
    ] {
        assert!(
            ks.iter()
                .any(|k| k.starts_with("fused") && k.contains(want)),
            "no fused {want}: {ks:?}"
        );
    }
}

#[test]
fn linear_epilogues() {
    let mut rng = Rng(5);
    let mut i = 0;
    for act in Act::ALL.into_iter().filter(|&a| a != Act::DyRelu) {
        for bias in [false, true] {
            for residual in [false, true] {
                // rows and columns around 14×32 and 4×8, K with tails of 2 and 4
                let m = *rng.pick(&[1usize, 4, 13, 14, 15, 29]);
                let n = *rng.pick(&[1usize, 3, 8, 31, 32, 33, 45]);
                let k = *rng.pick(&[1usize, 3, 4, 17, 64]);
                let batch = rng.range(1, 2);
                let mut args = vec![input(&[batch, m, k]), weight(&[k, n])];
                if bias {
                    args.push(weight(&[n]));
                }
                if residual {
                    args.push(input(&[batch, m, n]));
                }
                let op = FusedOp::Linear {
                    bias,
                    act,
                    residual,
                };
                let what = format!("linear {act:?} bias {bias} res {residual} {m}x{k}x{n}");
                check_fused(&what, op, &args, 100 + i, "linear");
                i += 1;
            }
        }
    }
    // a run-time right operand (attention-style), tokens folded into M
    check_fused(
        "linear, run-time weight",
        FusedOp::Linear {
            bias: true,
            act: Act::Gelu,
            residual: true,
        },
        &[
            input(&[3, 5, 19]),
            input(&[19, 37]),
            weight(&[37]),
            input(&[3, 5, 37]),
        ],
        200,
        "linear",
    );
}

/// `optimize` the zoo model, compile the result, and compare it with the
/// interpreter on the *unoptimised* model; the compiled model must contain
/// fused conv kernels (so a fallback to the expansion fails here).
fn zoo_optimised(name: &str) {
    let model = zoo::build(name, &ZooOptions::default()).unwrap();
    let (opt, _) = kiln_passes::optimize(&model, &kiln_passes::OptOptions::default()).unwrap();
    let g = &model.graph;
    let mut rng = Rng(42);
    let inputs: Vec<Tensor> = g
        .inputs()
        .iter()
        .map(|&n| {
            tensor(
                &mut rng,
                &g.value_type(Value::of(n)).shape,
                Fill::Range(-1.0, 1.0),
            )
        })
        .collect();
    let want = interp::run(g, &model.weights, &inputs).unwrap();
    let mut one = Vec::new();
    for (label, o) in [
        ("1 thread", opts(1)),
        ("2 threads", opts(2)),
        (
            "Cranelift tiles only",
            CompileOptions {
                asm_tiles: false,
                ..opts(1)
            },
        ),
    ] {
        let m = compile(&opt, &o).unwrap_or_else(|e| panic!("{name} {label}: {e}"));
        let fused_convs = m
            .kernel_descriptions()
            .iter()
            .filter(|(_, k)| k.starts_with("fused") && k.contains(" conv "))
            .count();
        assert!(fused_convs > 0, "{name} {label}: no fused conv kernel");
        let mut got = common::poisoned(&m);
        m.run_into(&inputs, &mut got).unwrap();
        for (k, (x, y)) in got.iter().zip(&want).enumerate() {
            let e = common::rel_error(x, y);
            assert!(
                e <= common::TOL,
                "{name} {label}: output {k}: relative error {e:.3e}"
            );
        }
        if one.is_empty() {
            one = got;
        } else if label == "2 threads" {
            for (a, b) in one.iter().zip(&got) {
                let (a, b) = (a.as_f32().unwrap(), b.as_f32().unwrap());
                assert!(
                    a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()),
                    "{name}: 1 and 2 threads differ"
                );
            }
        }
    }
}

#[test]
fn zoo_mobile_former_26m_optimised() {
    zoo_optimised("mobile_former_26m");
}

#[test]
fn zoo_mobilevitv2_050_optimised() {
    zoo_optimised("mobilevitv2_050");
}

#[test]
fn zoo_xformer_optimised() {
    zoo_optimised("xformer");
}
