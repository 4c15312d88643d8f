//! Fused conv/linear kernels (epilogues inside the GEMM and depthwise
//! kernels) against the interpreter, which runs each fused op's primitive
//! expansion: every activation × bias × residual combination on random
//! awkward shapes (channels not a multiple of 4, odd planes, stride 2,
//! asymmetric padding, depthwise, grouped, 1×1 and k×k, M/N/K around the
//! 14×32 and 4×8 tiles), NaN-poisoned outputs, 1 vs 2 threads bit for bit,
//! assembled tiles on and off. Then whole optimised zoo models against the
//! interpreter on the unoptimised ones.

mod common;

use common::{
    Arg, Fill, Rng, asm_levels, check, input, level_opts, opts, rel_error, single, weight,
};
use kiln_backends::{CompileOptions, TileLevel, compile};
use kiln_frontends::zoo::{self, ZooOptions};
use kiln_ir::fused::{Act, ConvStage, FusedOp};
use kiln_ir::{Float, Model, Op, interp};

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
/// expansion) whose description mentions `what_kernel` (or one of the
/// `|`-separated alternatives: a narrow k×k conv runs as a direct conv at
/// AVX-512 and through im2col elsewhere).
fn check_fused(what: &str, op: FusedOp, args: &[Arg], seed: u64, what_kernel: &str) {
    let mut rng = Rng(seed);
    let (model, inputs) = single(Op::Fused(op), args, &mut rng, Fill::Signed);
    check(what, &model, &inputs);
    let levels = asm_levels().into_iter().chain([TileLevel::F32x4]);
    for level in levels {
        let ks = kernels(&model, &level_opts(1, level));
        assert!(
            ks.iter()
                .any(|k| k.starts_with("fused") && what_kernel.split('|').any(|w| k.contains(w))),
            "{what}: no fused {what_kernel} kernel ({level} tiles): {ks:?}"
        );
    }
}

/// The edges of the assembled AVX2 6×16 tile (and the AVX-512 one where
/// they coincide): every column count 1..=17 and around 32 (tails of 1..7
/// lanes in one vector, 9..15 in two), row counts below, at and above 6 and
/// 14, odd and even K, every activation, each bias mode and the residual,
/// on the three ways the driver calls tiles: a pointwise conv (A packed,
/// B activations copied to a run-time panel by a `b_pack` variant, then
/// read padded), a linear layer (A strided in place, B packed, column
/// bias) and a linear layer with a run-time weight (B strided and
/// unpadded: masked loads). `check_fused` runs each at every level the
/// host has, at 1 and 2 threads; this also asserts that the GEMM kernel
/// really called the tiles of each level.
#[test]
fn assembled_tile_edges() {
    let cols: Vec<usize> = (1..=17).chain([23, 31, 32, 33, 47]).collect();
    let rows = [1usize, 2, 5, 6, 7, 11, 12, 13, 14, 15];
    let ks = [1usize, 2, 3, 8, 17];
    let acts = Act::ALL;
    let mut case = 0usize;
    for (i, &n) in cols.iter().enumerate() {
        let m = rows[i % rows.len()];
        let k = ks[i % ks.len()];
        let act = acts[i % acts.len()];
        let (bias, residual) = (i % 3 != 0, i % 2 == 0);
        // pointwise conv: M = output channels, N = pixels (a 1×n plane)
        let (op, args) = fused_conv(&ConvSpec {
            c: k,
            o: m,
            groups: 1,
            k: 1,
            h: 1,
            w: n,
            stride: 1,
            pad: [0; 4],
            shuffle: 1,
            act,
            bias,
            residual,
        });
        let what = format!("tile edge conv M={m} N={n} K={k} {act:?} bias {bias} res {residual}");
        check_tiles(&what, op, &args, 900 + case as u64, "pointwise conv");
        case += 1;
        if act == Act::DyRelu {
            continue;
        }
        // linear: M = tokens, N = output features
        for runtime_w in [false, true] {
            let w = if runtime_w {
                input(&[k, n])
            } else {
                weight(&[k, n])
            };
            let mut args = vec![input(&[1, m, k]), w];
            if bias {
                args.push(weight(&[n]));
            }
            if residual {
                args.push(input(&[1, m, n]));
            }
            let op = FusedOp::Linear {
                bias,
                act,
                residual,
            };
            let what = format!(
                "tile edge linear M={m} N={n} K={k} {act:?} bias {bias} res {residual} run-time w {runtime_w}"
            );
            check_tiles(&what, op, &args, 900 + case as u64, "linear");
            case += 1;
        }
    }
}

/// The AVX-512 tile shapes fitted to awkward GEMMs (`gemm::asm_tile_for`):
/// each case is an (M, N, K) the chooser gives a non-default shape — every
/// width (16, 48, 64 columns and 32 with fewer rows), row counts past one
/// and two tiles with a row tail, N = 49 and 97 (a last vector of one lane,
/// run as ymm), tails of 9..15 lanes — plus the default 14×32 on N = 49.
/// Each runs as a pointwise conv (A packed for that shape, B copied to a
/// run-time panel of that width) and as a linear layer (B packed for that
/// width), with activations, biases and residuals rotating, at every level
/// the host has (the AVX2 tile stays 6×16); on an AVX-512 host it asserts
/// the shape the kernel ran.
#[test]
fn gemmfit_tile_shapes() {
    // (M, N, K, expected AVX-512 tile rows × columns)
    let cases = [
        (16, 49, 8, 6, 64),
        (15, 49, 3, 5, 64),
        (17, 97, 3, 6, 64),
        (3, 49, 17, 3, 64),
        (2, 97, 3, 2, 64),
        (9, 97, 1, 9, 48),
        (17, 33, 8, 9, 48),
        (8, 97, 3, 8, 48),
        (19, 33, 3, 7, 48),
        (6, 40, 17, 6, 48),
        (29, 1, 1, 15, 16),
        (31, 5, 2, 16, 16),
        (57, 16, 3, 19, 16),
        (49, 97, 1, 25, 16),
        (55, 33, 1, 28, 16),
        (15, 17, 3, 8, 32),
        (29, 17, 8, 10, 32),
        (43, 17, 17, 11, 32),
        (13, 49, 17, 14, 32),
        (29, 49, 17, 6, 64),
    ];
    let avx512 = asm_levels().contains(&TileLevel::Avx512);
    for (i, &(m, n, k, mr, nr)) in cases.iter().enumerate() {
        let act = Act::ALL[i % Act::ALL.len()];
        let (bias, residual) = (i % 3 != 0, i % 2 == 0);
        let tile = format!("tile {mr}x{nr} avx512");
        let (op, args) = fused_conv(&ConvSpec {
            c: k,
            o: m,
            groups: 1,
            k: 1,
            h: 1,
            w: n,
            stride: 1,
            pad: [0; 4],
            shuffle: 1,
            act,
            bias,
            residual,
        });
        let what = format!("fitted tile conv M={m} N={n} K={k} {act:?} bias {bias} res {residual}");
        check_tiles(&what, op.clone(), &args, 1700 + i as u64, "pointwise conv");
        if avx512 {
            let mut rng = Rng(1700 + i as u64);
            let (model, _) = single(Op::Fused(op), &args, &mut rng, Fill::Signed);
            let ks = kernels(&model, &level_opts(1, TileLevel::Avx512));
            // a conv over one pixel is a linear layer
            // (`conv::pointwise_as_linear`): one row, the channels across
            let want = if n == 1 {
                format!("gemm M=1 N={m} K={k}")
            } else {
                tile.clone()
            };
            assert!(
                ks.iter().any(|d| d.contains(&want)),
                "{what}: not {want}: {ks:?}"
            );
        }
        if act == Act::DyRelu {
            continue;
        }
        let mut args = vec![input(&[1, m, k]), weight(&[k, n])];
        if bias {
            args.push(weight(&[n]));
        }
        if residual {
            args.push(input(&[1, m, n]));
        }
        let op = FusedOp::Linear {
            bias,
            act,
            residual,
        };
        let what =
            format!("fitted tile linear M={m} N={n} K={k} {act:?} bias {bias} res {residual}");
        check_tiles(&what, op.clone(), &args, 1800 + i as u64, "linear");
        if avx512 {
            let mut rng = Rng(1800 + i as u64);
            let (model, _) = single(Op::Fused(op), &args, &mut rng, Fill::Signed);
            let ks = kernels(&model, &level_opts(1, TileLevel::Avx512));
            assert!(
                ks.iter().any(|d| d.contains(&tile)),
                "{what}: not {tile}: {ks:?}"
            );
        }
    }
}

/// [`check_fused`], then that at each assembled level the host has the
/// fused GEMM kernel calls that level's tiles (its description names it).
fn check_tiles(what: &str, op: FusedOp, args: &[Arg], seed: u64, what_kernel: &str) {
    check_fused(what, op.clone(), args, seed, what_kernel);
    let mut rng = Rng(seed);
    let (model, _) = single(Op::Fused(op), args, &mut rng, Fill::Signed);
    for level in asm_levels() {
        let ks = kernels(&model, &level_opts(1, level));
        assert!(
            ks.iter().any(|k| k.starts_with("fused")
                && k.contains(what_kernel)
                && k.contains(&format!(" {level} "))),
            "{what}: no fused {what_kernel} kernel on {level} tiles: {ks:?}"
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
    /// channel-shuffle groups of the output (1 = none)
    shuffle: usize,
}

/// `args` with `n` images: the graph inputs' batch (weights have none).
fn batched(args: Vec<Arg>, n: usize) -> Vec<Arg> {
    args.into_iter()
        .map(|a| match a {
            Arg::In(mut shape) => {
                shape[0] = n;
                Arg::In(shape)
            }
            other => other,
        })
        .collect()
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
        shuffle: s.shuffle,
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
        shuffle: 1,
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
    conv_kind(Kind::Im2col, "im2col conv|direct conv", 2);
}

#[test]
fn depthwise_conv_epilogues() {
    conv_kind(Kind::Depthwise, "depthwise conv", 3);
}

/// The assembled depthwise interior's edges (`asm_dw`, at each assembled
/// level the host has: AVX-512's 16-lane and AVX2's 8-lane chunks): every
/// width 1..=17, 23 and 33 (masked tails, one or more full chunks, no
/// interior), stride 1 and 2 on odd and even sizes, heights 1..=7 and
/// around the 6-row groups (interiors of 1 to 17 rows: remainders, one and
/// two whole groups), the one-column left and right edges the assembled
/// code computes with masked taps (both, either; in one chunk, a whole last
/// chunk or a short one) and the top and bottom edge rows (both, either,
/// in one group or two), channel multipliers 1 and 3, every epilogue. The
/// assembled and the Cranelift interiors sum in the same order and apply
/// the same activation formulas, so they must agree bit for bit (but for
/// silu and GELU, which the sweep applies with the assembled row functions
/// of `ukernels/vector.rs`: their own exp, and GELU's reciprocal estimate
/// — equal within the bounds `backends/tests/math.rs` checks, and to the
/// interpreter within TOL through `check_fused` above).
#[test]
fn depthwise_asm_edges() {
    let mut rng = Rng(21);
    let mut i = 0;
    let mut assembled = std::collections::HashMap::new();
    for w in (1..=17).chain([23, 33]) {
        for stride in [1, 2] {
            for _ in 0..2 {
                let act = Act::ALL[i % Act::ALL.len()];
                let (bias, residual) = (i % 2 == 0, i % 3 != 1);
                let c = 2 + i % 3;
                let o = c * if i % 4 < 2 { 1 } else { 3 };
                let h = if i % 2 == 0 {
                    1 + (i / 2) % 7
                } else {
                    3 + (i * 5) % 17
                };
                // [t, l, b, r]: both edge columns assembled (one column of
                // padding each side), only the left, only the right
                let pad = match i % 5 {
                    4 => [0, 1, 2, 0],
                    2 => [1, 0, 0, 1],
                    _ => [1; 4],
                };
                if w + pad[1] + pad[3] < 3 || h + pad[0] + pad[2] < 3 {
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
                    shuffle: 1,
                });
                let what = format!("{act:?} bias {bias} res {residual}: {op:?} {args:?}");
                check_fused(&what, op.clone(), &args, 500 + i as u64, "depthwise conv");
                let (model, inputs) = single(Op::Fused(op), &args, &mut rng, Fill::Signed);
                let run = |level: TileLevel| {
                    let m = compile(&model, &level_opts(1, level)).unwrap();
                    let mut got = common::poisoned(&m);
                    m.run_into(&inputs, &mut got).unwrap();
                    got[0].as_f32().unwrap().to_vec()
                };
                let plain = run(TileLevel::F32x4);
                for level in asm_levels() {
                    let ks = kernels(&model, &level_opts(1, level));
                    *assembled.entry(level).or_insert(0) +=
                        ks.iter().filter(|k| k.contains(level.name())).count();
                    let a = run(level);
                    assert!(
                        matches!(act, Act::Silu | Act::Gelu)
                            || a.iter()
                                .zip(&plain)
                                .all(|(x, y)| x.to_bits() == y.to_bits()),
                        "{what}: assembled ({level}) and Cranelift interiors differ"
                    );
                }
                i += 1;
            }
        }
    }
    for level in asm_levels() {
        let n = assembled.get(&level).copied().unwrap_or(0);
        assert!(n > 20, "only {n} assembled interiors at {level}");
    }
}

/// The assembled whole depthwise planes of any window (`dw_window`, AVX-512)
/// on random geometries: windows 1×7 to 11×11 (and 3×3 where `dw_plane`
/// has no interior), paddings from none to wider than the window's reach,
/// vertical strides 1–3, horizontal 1–2, dilations, planes of 1 to 58
/// columns (tails, whole vectors, several chunks, edges in one chunk) and
/// 1 to 20 rows (bands of 8 and their remainders), channel multipliers 1
/// and 2, every epilogue. Each is checked against the interpreter at every
/// level (`check_fused`), and the assembled planes against the f32x4
/// kernel bit for bit: both sum `bias` and the taps inside the input in
/// the same order (but for silu and GELU, whose sweep uses the assembled
/// row functions). The test also asserts the planes were assembled.
#[test]
fn depthwise_window_planes() {
    let mut rng = Rng(0xd1_7e);
    let mut assembled = 0;
    let windows = [
        (5, 5),
        (7, 7),
        (9, 9),
        (11, 11),
        (3, 5),
        (1, 7),
        (7, 1),
        (2, 2),
        (4, 6),
        (3, 3),
    ];
    let mut i = 0;
    while i < 120 {
        let (kh, kw) = windows[i % windows.len()];
        let (sh, sw) = (rng.range(1, 3), rng.range(1, 2));
        let dh = rng.range(1, 2);
        let dw = if sw == 1 { rng.range(1, 2) } else { 1 };
        let pad = [
            rng.range(0, kh),
            rng.range(0, kw),
            rng.range(0, kh),
            rng.range(0, kw),
        ];
        let h = *rng.pick(&[1usize, 2, 5, 7, 8, 9, 14, 17, 20]);
        let w = *rng.pick(&[1usize, 3, 7, 14, 15, 16, 17, 28, 31, 33, 47, 56, 58]);
        let eh = (kh - 1) * dh + 1;
        let ew = (kw - 1) * dw + 1;
        if h + pad[0] + pad[2] < eh || w + pad[1] + pad[3] < ew {
            continue;
        }
        let ho = (h + pad[0] + pad[2] - eh) / sh + 1;
        let wo = (w + pad[1] + pad[3] - ew) / sw + 1;
        let act = Act::ALL[i % Act::ALL.len()];
        let (bias, residual) = (i % 2 == 0, i % 3 != 1);
        let c = 2 + i % 2;
        let o = c * (1 + i % 4 / 3);
        let mut args = vec![input(&[1, c, h, w]), weight(&[o, 1, kh, kw])];
        if bias {
            args.push(weight(&[o]));
        }
        if act == Act::DyRelu {
            args.push(input(&[1, o, 1, 1]));
            args.push(input(&[1, o, 1, 1]));
        }
        if residual {
            args.push(input(&[1, o, ho, wo]));
        }
        let op = FusedOp::Conv {
            stride: [sh, sw],
            pad,
            dilation: [dh, dw],
            groups: c,
            bias,
            shuffle: 1,
            act,
            residual,
        };
        let what = format!("{act:?} bias {bias} res {residual}: {op:?} {args:?}");
        check_fused(&what, op.clone(), &args, 900 + i as u64, "depthwise");
        let (model, inputs) = single(Op::Fused(op), &args, &mut rng, Fill::Signed);
        let run = |level: TileLevel| {
            let m = compile(&model, &level_opts(1, level)).unwrap();
            let mut got = common::poisoned(&m);
            m.run_into(&inputs, &mut got).unwrap();
            got[0].as_f32().unwrap().to_vec()
        };
        let plain = run(TileLevel::F32x4);
        // An output whose taps all fall in the padding is the bias; with
        // none, 0, and the dynamic ReLU's max(0·s1, 0·s2) ties +0 with -0:
        // `vmaxps` returns its second operand on a tie, Cranelift's `fmax`
        // orders -0 below +0. Those two agree as zeros, not as bits.
        let same = |x: &f32, y: &f32| {
            x.to_bits() == y.to_bits() || (act == Act::DyRelu && *x == 0.0 && *y == 0.0)
        };
        if asm_levels().contains(&TileLevel::Avx512) {
            let ks = kernels(&model, &level_opts(1, TileLevel::Avx512));
            assembled += ks.iter().filter(|k| k.contains("avx512")).count();
            let a = run(TileLevel::Avx512);
            assert!(
                matches!(act, Act::Silu | Act::Gelu)
                    || a.iter().zip(&plain).all(|(x, y)| same(x, y)),
                "{what}: assembled and Cranelift planes differ: {:?}",
                a.iter()
                    .zip(&plain)
                    .enumerate()
                    .find(|(_, (x, y))| !same(x, y))
            );
        }
        i += 1;
    }
    if asm_levels().contains(&TileLevel::Avx512) {
        assert!(assembled > 100, "only {assembled} assembled planes");
    }
}

/// Channel-shuffled fused convs (Mobile-Former-26M's grouped convs): the
/// shuffle only moves whole output rows (GEMM) or planes (depthwise), so
/// every kernel path keeps its fused kernel. Shuffle blocks equal to, larger
/// than and smaller than the conv groups; the dynamic ReLU's slopes and the
/// residual are indexed by the stored channel.
#[test]
fn shuffled_conv_epilogues() {
    // (c, o, groups, k, stride, shuffle, what the kernel is)
    let cases = [
        (8, 12, 4, 1, 1, 4, "pointwise conv"),
        (8, 24, 4, 1, 1, 2, "pointwise conv"),
        (8, 24, 2, 1, 1, 4, "pointwise conv"),
        (6, 28, 1, 1, 1, 2, "pointwise conv"),
        (8, 16, 4, 3, 2, 4, "im2col conv"),
        (6, 18, 3, 3, 1, 6, "im2col conv"),
        (8, 24, 8, 3, 2, 8, "depthwise conv"),
        (8, 24, 8, 3, 1, 4, "depthwise conv"),
        (9, 9, 9, 3, 1, 3, "depthwise conv"),
    ];
    let mut i = 0;
    for (c, o, groups, k, stride, shuffle, kind) in cases {
        for act in [Act::DyRelu, Act::Relu6, Act::None, Act::Silu] {
            let (bias, residual) = (i % 2 == 0, i % 3 != 2);
            let spec = ConvSpec {
                c,
                o,
                groups,
                k,
                h: 7 + i % 5,
                w: 9 + i % 4,
                stride,
                pad: if k == 3 { [1; 4] } else { [0; 4] },
                act,
                bias,
                residual,
                shuffle,
            };
            let (op, args) = fused_conv(&spec);
            let what = format!("shuffle {act:?} bias {bias} res {residual}: {op:?} {args:?}");
            check_fused(&what, op.clone(), &args, 700 + i as u64, kind);
            let (model, _) = single(Op::Fused(op), &args, &mut Rng(1), Fill::Signed);
            let ks = kernels(&model, &opts(1));
            assert!(
                ks.iter().any(|k| k.contains(&format!("shuffle {shuffle}"))),
                "{what}: no shuffling kernel: {ks:?}"
            );
            i += 1;
        }
    }
}

/// A pointwise conv over 1×1 planes (a classifier's `conv_head`) runs as a
/// linear layer: one GEMM row per image, the output channels across the
/// tile (`conv::pointwise_as_linear`); batches of 1 to 3, channel counts
/// around the tile widths, every epilogue but the dynamic ReLU (whose
/// slopes keep the conv form), with and without bias and residual. A
/// grouped one stays a conv: taken as linear, its weights were packed as
/// if dense and the packing read past them (the `jit_vs_interp` fuzz
/// target's `grouped_pointwise_on_1x1_planes`).
#[test]
fn pointwise_conv_on_one_pixel() {
    for (n, groups, cg, og) in [(4, 2, 2, 5), (1, 3, 8, 16), (2, 4, 1, 3)] {
        let (c, o) = (groups * cg, groups * og);
        let op = FusedOp::Conv {
            stride: [1, 1],
            pad: [0; 4],
            dilation: [1, 1],
            groups,
            bias: true,
            shuffle: 1,
            act: Act::Relu,
            residual: false,
        };
        let args = [input(&[n, c, 1, 1]), weight(&[o, cg, 1, 1]), weight(&[o])];
        let what = format!("grouped {op:?} {args:?}");
        let mut r = Rng(groups as u64);
        let (model, inputs) = single(Op::Fused(op), &args, &mut r, Fill::Signed);
        check(&what, &model, &inputs);
    }
    let mut i = 0;
    for (n, c, o) in [
        (1, 576, 1024),
        (2, 40, 33),
        (3, 7, 16),
        (1, 960, 1280),
        (2, 1, 5),
    ] {
        for act in Act::ALL.into_iter().filter(|&a| a != Act::DyRelu) {
            let (bias, residual) = (i % 2 == 0, i % 3 == 1);
            let mut args = vec![input(&[n, c, 1, 1]), weight(&[o, c, 1, 1])];
            if bias {
                args.push(weight(&[o]));
            }
            if residual {
                args.push(input(&[n, o, 1, 1]));
            }
            let op = FusedOp::Conv {
                stride: [1, 1],
                pad: [0; 4],
                dilation: [1, 1],
                groups: 1,
                bias,
                shuffle: 1,
                act,
                residual,
            };
            let what = format!("{act:?} bias {bias} res {residual}: {op:?} {args:?}");
            check_fused(
                &what,
                op.clone(),
                &args,
                1200 + i as u64,
                &format!("gemm M={n} N={o} K={c}"),
            );
            i += 1;
        }
    }
}

/// Convs over small planes (17..63 pixels, not a multiple of 16) with
/// 64+ output channels in whole vectors compute their output transposed
/// at AVX-512 (`conv.rs`, `transposed`): pixels as the GEMM's rows, then
/// 16-channel panels transposed into the planes, adding the residual.
/// Pointwise and 3×3 (through im2col, stride 1 and 2), one and two
/// images, every activation but the dynamic ReLU, with and without bias
/// and residual; against the interpreter at every level, and at AVX-512
/// the transposed kernels must be the ones that ran.
#[test]
fn convs_over_small_planes_run_transposed() {
    let mut i = 0u64;
    for (n, c, o, h, k, stride) in [
        (1, 96, 64, 7, 1, 1),
        (2, 40, 128, 5, 1, 1),
        (1, 32, 80, 7, 3, 1),
        (2, 24, 64, 14, 3, 2),
        (1, 16, 96, 9, 3, 2),
    ] {
        for act in Act::ALL.into_iter().filter(|&a| a != Act::DyRelu) {
            let (bias, residual) = (i.is_multiple_of(2), i % 3 != 1);
            let (op, args) = fused_conv(&ConvSpec {
                c,
                o,
                groups: 1,
                k,
                h,
                w: h,
                stride,
                pad: [k / 2; 4],
                act,
                bias,
                residual,
                shuffle: 1,
            });
            let args = batched(args, n);
            let what = format!("{act:?} bias {bias} res {residual}: {op:?} {args:?}");
            let mut r = Rng(1700 + i);
            let (model, inputs) = single(Op::Fused(op), &args, &mut r, Fill::Signed);
            check(&what, &model, &inputs);
            if asm_levels().contains(&TileLevel::Avx512) {
                let ks = kernels(&model, &level_opts(1, TileLevel::Avx512));
                assert!(
                    ks.iter().any(|k| k.contains("transposed"))
                        && ks.iter().any(|k| k.starts_with("transpose ")),
                    "{what}: not transposed: {ks:?}"
                );
            }
            i += 1;
        }
    }
}

/// Dense 3×3 stride-1 convs with enough channels and tiles run as Winograd
/// F(4,3) at AVX-512 (`kernels/winograd.rs`): planes whose output is not
/// a multiple of the 4×4 tile on either axis, tile rows over one and two
/// 16-tile chunks, paddings 0, 1, 2 and uneven, 1–2 images, every
/// activation the output transform applies, bias and residual; each
/// against the interpreter at every level (`check`), asserted to have run
/// as Winograd at AVX-512, and held there to the error bound the module
/// states: 5e-5 of the output's largest magnitude against the interpreter
/// (which accumulates in f64), where the same conv through im2col stays
/// near 1e-6.
#[test]
fn winograd_convs_meet_their_error_bound() {
    const BOUND: f64 = 5e-5;
    let mut worst = 0f64;
    for (i, (n, c, o, h, w, pad, act, residual)) in [
        (1, 16, 16, 16, 16, [1; 4], Act::None, true),
        (2, 24, 40, 17, 23, [1; 4], Act::Relu, true),
        (1, 64, 32, 30, 30, [0; 4], Act::Relu6, false),
        (1, 32, 48, 18, 70, [2; 4], Act::HardSwish, true),
        (1, 16, 24, 20, 21, [1, 0, 2, 1], Act::HardSigmoid, true),
        (1, 128, 64, 15, 15, [1; 4], Act::None, false),
        // swept after the output transform: never with a residual
        (2, 32, 64, 19, 24, [1; 4], Act::Silu, false),
        (1, 48, 32, 16, 20, [1; 4], Act::Gelu, false),
    ]
    .into_iter()
    .enumerate()
    {
        let bias = i % 2 == 0;
        let (op, args) = fused_conv(&ConvSpec {
            c,
            o,
            groups: 1,
            k: 3,
            h,
            w,
            stride: 1,
            pad,
            act,
            bias,
            residual,
            shuffle: 1,
        });
        let args = batched(args, n);
        let what = format!("{act:?} bias {bias} res {residual}: {op:?} {args:?}");
        let mut r = Rng(0x3170 + i as u64);
        let (model, inputs) = single(Op::Fused(op), &args, &mut r, Fill::Signed);
        check(&what, &model, &inputs);
        if asm_levels().contains(&TileLevel::Avx512) {
            let options = level_opts(1, TileLevel::Avx512);
            let ks = kernels(&model, &options);
            assert!(
                ks.iter().any(|k| k.contains("winograd F(4,3) output")),
                "{what}: not Winograd: {ks:?}"
            );
            let want = interp::run(&model.graph, &model.weights, &inputs).unwrap();
            let m = compile(&model, &options).unwrap();
            let got = m.run(&inputs).unwrap();
            let e = rel_error(&got[0], &want[0]);
            assert!(
                e <= BOUND,
                "{what}: error {e:.2e} above the bound {BOUND:e}"
            );
            worst = worst.max(e);
            eprintln!("{what}: {e:.2e}");
        }
    }
    eprintln!("winograd: worst error {worst:.2e} of the largest output");
}

/// Direct convolutions (`conv_direct`, AVX-512) on random narrow convs:
/// 1 to 48 output channels per group (one tile, tiles of equal and of
/// unequal width), 1 to 3 groups, 1 to 20 input channels per group, windows
/// 2×2 to 5×5 and oblong, strides 1–2 (and a vertical 3), dilation,
/// paddings none to past the window, planes of 1 to 40 columns and rows,
/// batches of 1 and 2, every activation it takes (SiLU and GELU swept
/// afterwards, then without residual), with and without bias and
/// residual; each against the interpreter at every level, and asserted to
/// have run directly at AVX-512.
#[test]
fn direct_conv_planes() {
    let mut rng = Rng(0xd12ec7);
    let mut direct = 0;
    let mut i = 0;
    while i < 60 {
        let groups = *rng.pick(&[1usize, 1, 2, 3]);
        let og = *rng.pick(&[1usize, 3, 8, 15, 16, 17, 24, 32, 40, 48]);
        let cg = *rng.pick(&[1usize, 3, 4, 9, 20]);
        let (kh, kw) = *rng.pick(&[(3usize, 3usize), (2, 2), (5, 5), (3, 1), (1, 4), (3, 3)]);
        let (sh, sw) = (*rng.pick(&[1usize, 2, 2, 3]), rng.range(1, 2));
        let dh = rng.range(1, 2);
        let dw = if sw == 1 { rng.range(1, 2) } else { 1 };
        let pad = [
            rng.range(0, kh),
            rng.range(0, kw),
            rng.range(0, kh),
            rng.range(0, kw),
        ];
        let (h, w) = (
            *rng.pick(&[1usize, 5, 8, 13, 20, 40]),
            *rng.pick(&[1usize, 7, 16, 17, 33, 40]),
        );
        let (eh, ew) = ((kh - 1) * dh + 1, (kw - 1) * dw + 1);
        if h + pad[0] + pad[2] < eh || w + pad[1] + pad[3] < ew {
            continue;
        }
        let ho = (h + pad[0] + pad[2] - eh) / sh + 1;
        let wo = (w + pad[1] + pad[3] - ew) / sw + 1;
        let act = [
            Act::None,
            Act::Relu,
            Act::Relu6,
            Act::HardSwish,
            Act::HardSigmoid,
            Act::Silu,
            Act::Gelu,
        ][i % 7];
        let bias = i % 2 == 0;
        let residual = i % 3 != 1 && !matches!(act, Act::Silu | Act::Gelu);
        let n = 1 + i % 4 / 3;
        let (c, o) = (groups * cg, groups * og);
        let mut args = vec![input(&[n, c, h, w]), weight(&[o, cg, kh, kw])];
        if bias {
            args.push(weight(&[o]));
        }
        if residual {
            args.push(input(&[n, o, ho, wo]));
        }
        let op = FusedOp::Conv {
            stride: [sh, sw],
            pad,
            dilation: [dh, dw],
            groups,
            bias,
            shuffle: 1,
            act,
            residual,
        };
        let what = format!("{act:?} bias {bias} res {residual}: {op:?} {args:?}");
        let mut r = Rng(700 + i as u64);
        let (model, inputs) = single(Op::Fused(op), &args, &mut r, Fill::Signed);
        check(&what, &model, &inputs);
        if asm_levels().contains(&TileLevel::Avx512) {
            let ks = kernels(&model, &level_opts(1, TileLevel::Avx512));
            let ran = ks.iter().any(|k| k.contains("direct conv"));
            // narrower planes stay im2col (`conv_direct::MIN_COLUMNS`);
            // one input channel per group is a depthwise conv
            assert_eq!(
                ran,
                wo >= 8 && (cg > 1 || groups == 1),
                "{what}: direct? {ks:?}"
            );
            direct += usize::from(ran);
        }
        i += 1;
    }
    if asm_levels().contains(&TileLevel::Avx512) {
        assert!(direct >= 30, "only {direct} direct convs");
    }
}

/// A stem (RGB in, 3×3 stride 2) with more output channels than a direct
/// conv takes (`kernels/conv_direct.rs`) runs band by band: each unit
/// writes a few output rows' im2col matrix and multiplies it at once.
#[test]
fn stem_conv_in_bands() {
    for (i, act) in [Act::Relu6, Act::Silu, Act::HardSwish]
        .into_iter()
        .enumerate()
    {
        let (op, args) = fused_conv(&ConvSpec {
            c: 3,
            o: 96,
            groups: 1,
            k: 3,
            h: 64,
            w: 62,
            stride: 2,
            pad: [1; 4],
            act,
            bias: true,
            residual: i == 1,
            shuffle: 1,
        });
        check_fused(
            &format!("stem {act:?}"),
            op,
            &args,
            900 + i as u64,
            "bands of 8 rows",
        );
    }
}

/// RGB stems up to 64 output channels run directly at AVX-512
/// (`conv_direct::MAX_STEM_CHANNELS`), a 7×7 one (ResNet's) included;
/// 65 channels go back to im2col bands.
#[test]
fn rgb_stems_up_to_64_channels_run_directly() {
    for (i, (o, k, direct)) in [(64, 7, true), (64, 3, true), (65, 3, false)]
        .into_iter()
        .enumerate()
    {
        let (op, args) = fused_conv(&ConvSpec {
            c: 3,
            o,
            groups: 1,
            k,
            h: 40,
            w: 36,
            stride: 2,
            pad: [k / 2; 4],
            act: Act::Relu,
            bias: true,
            residual: false,
            shuffle: 1,
        });
        let what = format!("stem 3→{o} {k}x{k}");
        let mut r = Rng(950 + i as u64);
        let (model, inputs) = single(Op::Fused(op), &args, &mut r, Fill::Signed);
        check(&what, &model, &inputs);
        if asm_levels().contains(&TileLevel::Avx512) {
            let ks = kernels(&model, &level_opts(1, TileLevel::Avx512));
            assert_eq!(
                ks.iter().any(|k| k.contains("direct conv")),
                direct,
                "{what}: {ks:?}"
            );
        }
    }
}

#[test]
fn grouped_conv_epilogues() {
    conv_kind(Kind::Grouped, "im2col conv|direct conv", 4);
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
                shuffle: 1,
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

/// Inverted-residual chains big enough for the banded kernel (conv_chain.rs,
/// an expanded tensor over 1 MB): stride 1 and 2, 3×3 and 5×5, odd and
/// even maps (the last band's window reaching past the image, which the
/// kernel zero-fills), asymmetric padding, two images (two slabs each),
/// dynamic-ReLU slopes on every stage, stages without bias, a residual.
/// `check` runs each at every tile level, at 1 and 2 threads bit for bit;
/// every level must have run the chain kernel, not the split convs.
#[test]
fn conv_chains_in_bands() {
    struct Case {
        n: usize,
        c: usize,
        hw: [usize; 2],
        e: usize,
        o: usize,
        k: usize,
        stride: usize,
        pad: [usize; 4],
        acts: [Act; 3],
        bias: [bool; 3],
        residual: bool,
    }
    let cases = [
        Case {
            n: 1,
            c: 8,
            hw: [96, 80],
            e: 36,
            o: 8,
            k: 3,
            stride: 1,
            pad: [1; 4],
            acts: [Act::Silu, Act::Silu, Act::None],
            bias: [true; 3],
            residual: true,
        },
        Case {
            n: 1,
            c: 5,
            hw: [97, 75],
            e: 48,
            o: 12,
            k: 3,
            stride: 2,
            pad: [1; 4],
            acts: [Act::DyRelu, Act::DyRelu, Act::DyRelu],
            bias: [true; 3],
            residual: false,
        },
        Case {
            n: 2,
            c: 6,
            hw: [64, 96],
            e: 44,
            o: 7,
            k: 5,
            stride: 1,
            pad: [2; 4],
            acts: [Act::Relu6, Act::HardSwish, Act::Relu],
            bias: [false, true, false],
            residual: true,
        },
        Case {
            n: 1,
            c: 9,
            hw: [96, 70],
            e: 40,
            o: 9,
            k: 3,
            stride: 2,
            pad: [1, 0, 0, 1],
            acts: [Act::Silu, Act::Relu, Act::None],
            bias: [true, false, true],
            residual: true,
        },
    ];
    for (i, cs) in cases.iter().enumerate() {
        let stage = |s: usize, stride: usize, pad: [usize; 4], groups: usize| ConvStage {
            stride: [stride, stride],
            pad,
            groups,
            bias: cs.bias[s],
            shuffle: 1,
            act: cs.acts[s],
        };
        let [h, w] = cs.hw;
        let ho = (h + cs.pad[0] + cs.pad[2] - cs.k) / cs.stride + 1;
        let wo = (w + cs.pad[1] + cs.pad[3] - cs.k) / cs.stride + 1;
        let stages = vec![
            stage(0, 1, [0; 4], 1),
            stage(1, cs.stride, cs.pad, cs.e),
            stage(2, 1, [0; 4], 1),
        ];
        let mut args = vec![input(&[cs.n, cs.c, h, w])];
        for (s, (wshape, ch)) in [
            (vec![cs.e, cs.c, 1, 1], cs.e),
            (vec![cs.e, 1, cs.k, cs.k], cs.e),
            (vec![cs.o, cs.e, 1, 1], cs.o),
        ]
        .into_iter()
        .enumerate()
        {
            args.push(weight(&wshape));
            if cs.bias[s] {
                args.push(weight(&[ch]));
            }
            if cs.acts[s] == Act::DyRelu {
                args.extend([input(&[1, ch, 1, 1]), input(&[1, ch, 1, 1])]);
            }
        }
        if cs.residual {
            args.push(input(&[cs.n, cs.o, ho, wo]));
        }
        let chain = FusedOp::ConvChain {
            stages,
            residual: cs.residual,
        };
        let what = format!(
            "chain {}→{}→{} {k}x{k}/{} on {h}x{w}, {} image(s)",
            cs.c,
            cs.e,
            cs.o,
            cs.stride,
            cs.n,
            k = cs.k
        );
        let mut rng = Rng(400 + i as u64);
        let (model, inputs) = single(Op::Fused(chain), &args, &mut rng, Fill::Signed);
        common::check_tweaked(&what, &model, &inputs, banded);
        for level in asm_levels().into_iter().chain([TileLevel::F32x4]) {
            let mut o = level_opts(1, level);
            banded(&mut o);
            let ks = kernels(&model, &o);
            assert!(
                ks.iter().any(|k| k.starts_with("fused conv chain")),
                "{what}: no chain kernel ({level} tiles): {ks:?}"
            );
            // without the option, the chain is split into three convs
            let ks = kernels(&model, &level_opts(1, level));
            assert!(
                ks.iter().all(|k| !k.starts_with("fused conv chain")),
                "{what}: chain kernel without --banded-chains ({level} tiles): {ks:?}"
            );
        }
    }
}

/// Options with `CompileOptions::banded_chains` on.
fn banded(o: &mut CompileOptions) {
    o.banded_chains = true;
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
/// fused conv kernels (so a fallback to the expansion fails here). Returns
/// the optimised model.
fn zoo_optimised(name: &str) -> Model {
    let model = zoo::build(name, &ZooOptions::default()).unwrap();
    let (opt, _) = kiln_passes::optimize(&model, &kiln_passes::OptOptions::default()).unwrap();
    let inputs = common::graph_inputs(&model.graph);
    let want = interp::run(&model.graph, &model.weights, &inputs).unwrap();
    // every assembled level the host has at 1 and 2 threads (bit for bit
    // equal), then the Cranelift tiles
    let mut runs: Vec<(TileLevel, usize)> = Vec::new();
    for level in asm_levels() {
        runs.extend([(level, 1), (level, 2)]);
    }
    runs.push((TileLevel::F32x4, 1));
    let mut one = Vec::new();
    for (level, threads) in runs {
        let label = format!("{level} tiles, {threads} thread(s)");
        let m = compile(&opt, &level_opts(threads, level))
            .unwrap_or_else(|e| panic!("{name} {label}: {e}"));
        assert_eq!(m.stats().tiles, level, "{name} {label}");
        let fused_convs = m
            .kernel_descriptions()
            .iter()
            .filter(|(_, k)| k.starts_with("fused") && k.contains(" conv "))
            .count();
        assert!(fused_convs > 0, "{name} {label}: no fused conv kernel");
        let mut got = common::poisoned(&m);
        m.run_into(&inputs, &mut got).unwrap();
        for (k, (x, y)) in got.iter().zip(&want).enumerate() {
            let e = rel_error(x, y);
            assert!(
                e <= common::TOL,
                "{name} {label}: output {k}: relative error {e:.3e}"
            );
        }
        if threads == 1 {
            one = got;
        } else {
            common::assert_same_bits(&format!("{name} {label}"), &one, &got);
        }
    }
    opt
}

#[test]
fn zoo_mobile_former_26m_optimised() {
    let opt = zoo_optimised("mobile_former_26m");
    // the bridges and the Former's attention ran as kernels of their own
    let ks = kernels(&opt, &opts(1));
    for want in ["fused_m2f attention", "fused_f2m attention", "fused_mha"] {
        assert!(
            ks.iter().any(|k| k.starts_with(want)),
            "mobile_former_26m: no {want} kernel"
        );
    }
}

#[test]
fn zoo_mobilevitv2_050_optimised() {
    let opt = zoo_optimised("mobilevitv2_050");
    // every separable attention ran as its kernel: no expansion left
    let plain = kernels(&opt, &opts(1));
    let sep = opt
        .graph
        .node_ids()
        .filter(|&id| matches!(opt.graph.node(id).op, Op::Fused(FusedOp::SepAttn { .. })))
        .count();
    let cores = plain
        .iter()
        .filter(|k| k.starts_with("fused_sep_attn context"))
        .count();
    assert!(sep > 0, "mobilevitv2_050: no fused_sep_attn after optimize");
    assert_eq!(cores, sep, "mobilevitv2_050: fused_sep_attn kernels");
    // with --banded-chains, the inverted residuals of the 128² and 64²
    // stages run band by band, at 1 and 2 threads bit for bit (the
    // optimised graph's interpreter run is the oracle here)
    let mut o = opts(1);
    banded(&mut o);
    let ks = kernels(&opt, &o);
    let chains = ks
        .iter()
        .filter(|k| k.starts_with("fused conv chain"))
        .count();
    assert!(chains >= 3, "mobilevitv2_050: {chains} chain kernels");
    let inputs = common::graph_inputs(&opt.graph);
    let one = common::check_with("mobilevitv2_050 banded chains", &opt, &inputs, &o);
    o.threads = Some(2);
    let two = common::check_with("mobilevitv2_050 banded chains", &opt, &inputs, &o);
    common::assert_same_bits("mobilevitv2_050 banded chains", &one, &two);
}

#[test]
fn zoo_xformer_optimised() {
    zoo_optimised("xformer");
}

/// [`check_fused`] on the scalarised path too (every vector rewritten into
/// scalars), for the attention kernels' lanes and horizontal sums.
fn check_attention(what: &str, op: FusedOp, args: &[Arg], seed: u64, what_kernel: &str) {
    check_fused(what, op.clone(), args, seed, what_kernel);
    let mut rng = Rng(seed);
    let (model, inputs) = single(Op::Fused(op), args, &mut rng, Fill::Signed);
    common::check_scalar(what, &model, &inputs);
}

/// The queries or the gate of a bridge: projected from the tokens
/// (`[d, C]` weight and `[C]` bias) or given (`[N, M, C]`).
fn bridge_side(args: &mut Vec<Arg>, projected: bool, n: usize, m: usize, d: usize, c: usize) {
    if projected {
        args.push(weight(&[d, c]));
        args.push(weight(&[c]));
    } else {
        args.push(input(&[n, m, c]));
    }
}

/// A random bridge shape: `(n, c, h, w, m, d, heads)`, with several heads,
/// channels per head with and without f32x4 tails, odd planes, batches.
fn bridge_shape(rng: &mut Rng) -> (usize, usize, usize, usize, usize, usize, usize) {
    let heads = *rng.pick(&[1usize, 2, 3, 4]);
    let dh = *rng.pick(&[1usize, 3, 4, 5, 8, 13]);
    let (h, w) = *rng.pick(&[(1, 1), (3, 5), (7, 7), (4, 4), (9, 13), (17, 19), (16, 32)]);
    let m = rng.range(1, 7);
    let d = *rng.pick(&[1usize, 5, 8, 16, 19, 33]);
    (rng.range(1, 2), heads * dh, h, w, m, d, heads)
}

#[test]
fn m2f_bridges() {
    let mut rng = Rng(31);
    for i in 0..16 {
        let (proj_q, gate) = (i & 1 == 0, i & 2 == 0);
        let (n, c, h, w, m, d, heads) = bridge_shape(&mut rng);
        let mut args = vec![input(&[n, c, h, w]), input(&[n, m, d])];
        bridge_side(&mut args, proj_q, n, m, d, c);
        bridge_side(&mut args, gate, n, m, d, c);
        args.extend([weight(&[c, d]), weight(&[d]), weight(&[d]), weight(&[d])]);
        let op = FusedOp::M2f {
            heads,
            scale: Float(1.0 / ((c / heads) as f32).sqrt()),
            eps: Float(1e-5),
            proj_q,
            gate,
        };
        let what = format!(
            "m2f {n}x{c}x{h}x{w}, {m} tokens of {d}, {heads} heads, q {proj_q} gate {gate}"
        );
        check_attention(&what, op, &args, 300 + i, "fused_m2f attention");
    }
}

#[test]
fn f2m_bridges() {
    let mut rng = Rng(32);
    for i in 0..12 {
        let (n, c, h, w, m, d, heads) = bridge_shape(&mut rng);
        let args = [
            input(&[n, c, h, w]),
            input(&[n, m, d]),
            weight(&[d, c]),
            weight(&[c]),
            weight(&[d, c]),
            weight(&[c]),
        ];
        let op = FusedOp::F2m {
            heads,
            scale: Float(1.0 / ((c / heads) as f32).sqrt()),
        };
        let what = format!("f2m {n}x{c}x{h}x{w}, {m} tokens of {d}, {heads} heads");
        check_attention(&what, op, &args, 400 + i, "fused_f2m attention");
    }
}

/// The bridges at 8 to `MAX_TOKENS` (12) tokens, where the assembled
/// passes change shape (fewer channels per `P·X` block, up to 12 score
/// registers), with channel blocks that leave a tail, pixel counts with a
/// 16-lane tail, and a batch.
#[test]
fn bridges_with_many_tokens() {
    let cases = [
        (8usize, 2usize, 5usize, 3usize, 7usize),
        (11, 1, 7, 9, 13),
        (12, 3, 13, 5, 5),
    ];
    for (i, &(m, heads, dh, h, w)) in cases.iter().enumerate() {
        let (n, c, d) = (2, heads * dh, 9);
        let scale = Float(1.0 / (dh as f32).sqrt());
        for gate in [false, true] {
            let mut args = vec![input(&[n, c, h, w]), input(&[n, m, d])];
            bridge_side(&mut args, true, n, m, d, c);
            bridge_side(&mut args, gate, n, m, d, c);
            args.extend([weight(&[c, d]), weight(&[d]), weight(&[d]), weight(&[d])]);
            let op = FusedOp::M2f {
                heads,
                scale,
                eps: Float(1e-5),
                proj_q: true,
                gate,
            };
            let what = format!("m2f {n}x{c}x{h}x{w}, {m} tokens, {heads} heads, gate {gate}");
            check_attention(&what, op, &args, 700 + i as u64, "fused_m2f attention");
        }
        let args = [
            input(&[n, c, h, w]),
            input(&[n, m, d]),
            weight(&[d, c]),
            weight(&[c]),
            weight(&[d, c]),
            weight(&[c]),
        ];
        let op = FusedOp::F2m { heads, scale };
        let what = format!("f2m {n}x{c}x{h}x{w}, {m} tokens, {heads} heads");
        check_attention(&what, op, &args, 710 + i as u64, "fused_f2m attention");
    }
}

/// More tokens than the bridge kernels hold in registers: the expansion
/// runs, and is still right.
#[test]
fn bridges_with_many_tokens_run_as_the_expansion() {
    let (n, c, h, w, m, d, heads) = (1, 8, 5, 5, 13, 7, 2);
    let args = [
        input(&[n, c, h, w]),
        input(&[n, m, d]),
        weight(&[d, c]),
        weight(&[c]),
        weight(&[d, c]),
        weight(&[c]),
    ];
    let op = FusedOp::F2m {
        heads,
        scale: Float(0.5),
    };
    let mut rng = Rng(33);
    let (model, inputs) = single(Op::Fused(op), &args, &mut rng, Fill::Signed);
    check("f2m, 13 tokens", &model, &inputs);
    let ks = kernels(&model, &opts(1));
    assert!(
        !ks.iter().any(|k| k.starts_with("fused_f2m")),
        "13 tokens took the kernel: {ks:?}"
    );
}

#[test]
fn token_attention() {
    let mut rng = Rng(34);
    for i in 0..16u64 {
        let (proj_q, proj_k, proj_v) = (i & 1 == 0, i & 2 == 0, i & 4 == 0);
        let heads = *rng.pick(&[1usize, 2, 3, 4]);
        let dh = *rng.pick(&[1usize, 3, 4, 8, 13]);
        let dvh = *rng.pick(&[1usize, 2, 4, 5, 9]);
        let (d, dv) = (heads * dh, heads * dvh);
        let b = rng.range(1, 3);
        let (tq, tk) = (rng.range(1, 9), rng.range(1, 9));
        // inputs: projected sides any width, others already the right width
        let dq = if proj_q { rng.range(1, 20) } else { d };
        let dk = if proj_k { rng.range(1, 20) } else { d };
        let dvi = if proj_v { rng.range(1, 20) } else { dv };
        let mut args = vec![
            input(&[b, tq, dq]),
            input(&[b, tk, dk]),
            input(&[b, tk, dvi]),
        ];
        for (on, din, dout) in [(proj_q, dq, d), (proj_k, dk, d), (proj_v, dvi, dv)] {
            if on {
                args.push(weight(&[din, dout]));
                args.push(weight(&[dout]));
            }
        }
        let op = FusedOp::Mha {
            heads,
            scale: Float(1.0 / (dh as f32).sqrt()),
            proj_q,
            proj_k,
            proj_v,
        };
        let what = format!(
            "mha b {b}, {tq} queries, {tk} keys, {heads} heads of {dh}/{dvh}, proj {proj_q} {proj_k} {proj_v}"
        );
        check_attention(&what, op, &args, 500 + i, "fused_mha");
    }
}

/// MobileViTv2's separable attention against its expansion: the folded
/// form with patches 2×2, 1×1, non-square, and widths that divide the
/// f32x4 lanes (1, 2, 4: the slot pattern in lanes) or not (3: scalar),
/// on maps whose rows have f32x4 tails; the unfolded form; `d` of 1, 3,
/// 16 and 67; batches of 1 to 3; constant and run-time projection
/// weights. `check_attention` runs every level at 1 and 2 threads and the
/// scalarised path.
#[test]
fn separable_attention() {
    let mut rng = Rng(35);
    let patches: [Option<[usize; 2]>; 9] = [
        Some([2, 2]),
        Some([1, 1]),
        Some([2, 1]),
        Some([1, 2]),
        Some([3, 2]),
        Some([2, 4]),
        Some([1, 3]),
        Some([2, 3]),
        None,
    ];
    for i in 0..18u64 {
        let patch = patches[i as usize % patches.len()];
        let d = *rng.pick(&[1usize, 3, 16, 67]);
        let n = rng.range(1, 3);
        let (h, w) = match patch {
            Some([ph, pw]) => (
                ph * *rng.pick(&[1usize, 3, 4, 5, 8]),
                pw * *rng.pick(&[1usize, 3, 5, 8, 9, 16]),
            ),
            // [N, d, P, Np]: pixel slots, then patches
            None => (
                *rng.pick(&[1usize, 2, 4, 6]),
                *rng.pick(&[1usize, 3, 5, 16, 17]),
            ),
        };
        let r = 1 + 2 * d;
        // run-time projection weights every fifth case (A read strided)
        let w_arg = |shape: &[usize]| {
            if i % 5 == 4 {
                input(shape)
            } else {
                weight(shape)
            }
        };
        let args = [
            input(&[n, d, h, w]),
            w_arg(&[r, d, 1, 1]),
            weight(&[r]),
            w_arg(&[d, d, 1, 1]),
            weight(&[d]),
        ];
        let op = FusedOp::SepAttn { patch };
        let what = format!("sep_attn {n}x{d}x{h}x{w}, patch {patch:?}, case {i}");
        check_attention(&what, op, &args, 600 + i, "fused_sep_attn context");
    }
}
