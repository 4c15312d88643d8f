//! One test per micro-kernel contract and ISA: a macro instantiates the
//! contract's check for every ISA, each check runs the assembled code on
//! the host (when it has the ISA; otherwise the test says it is skipped,
//! through `kiln_ir::skip`) over edge cases — every row count class, column
//! tails, odd and even K, every epilogue the ISA assembles, packed and
//! strided operands — and compares with the contract computed in f64. The
//! portable f32x4 GEMM tile (`f32x4/tile.rs`) meets the tile contract too,
//! compiled by Cranelift for the host as a kernel of its own; the other
//! portable paths compute their contracts inside their drivers, and the
//! backend's kernel tests (`backends/tests/ops.rs`) compare every level,
//! the portable one included, with the interpreter.

// Calling assembled code through raw function pointers.
#![allow(unsafe_code)]

use cranelift_codegen::Context;
use cranelift_codegen::ir::Value;
use cranelift_frontend::FunctionBuilderContext;
use cranelift_jit::{JITBuilder, JITModule};
use cranelift_module::{FuncId, Linkage, Module, default_libcall_names};

use super::f32x4::tile::{self as f32x4, AView, BView, Init, Ptrs};
use super::tile::{Act, Bias, Variant};
use super::vector::{Func, Width};
use super::{Registry, Spec, avx2, avx512, conv_direct, dw_window, transpose};
use crate::codegen::{AsmLink, Buf, ConstBase, Emitter, Env, Loc, PowF};
use crate::kernels::epilogue::{Epilogue, Slopes};
use crate::target::{Target, TileLevel};
use crate::testing::random::{Rng, TOL};

/// The GEMM tile contract in f64: `C[i][j] = act(init(i, j) + Σ_k
/// A[i·a_rs + k·a_ks]·B[k·b_ks + j]) + residual[i·c_rs + j]` for `i < mr`,
/// `j < nt`; `init` is 0, `bias[i]` or `bias[j]`; the dynamic ReLU's slopes
/// are per row.
fn tile_reference(v: &Variant, io: &TileIo) -> Vec<f64> {
    let mut c: Vec<f64> = io.c.iter().map(|&x| f64::from(x)).collect();
    for i in 0..v.mr {
        for j in 0..v.nt {
            let mut s = match v.bias {
                Bias::None => 0.0,
                Bias::Row => f64::from(io.bias[i]),
                Bias::Col => f64::from(io.bias[j]),
            };
            for k in 0..v.k {
                s += f64::from(io.a[i * v.a_rs + k * v.a_ks]) * f64::from(io.b[k * v.b_ks + j]);
            }
            let y = act_reference(v.act, s, io.a1[i], io.a2[i]);
            let r = if v.residual {
                f64::from(io.residual[i * v.c_rs + j])
            } else {
                0.0
            };
            c[i * v.c_rs + j] = y + r;
        }
    }
    c
}

/// `act` of `s` in f64, with the dynamic ReLU's slopes `a1`, `a2`.
fn act_reference(act: Act, s: f64, a1: f32, a2: f32) -> f64 {
    let relu6 = |x: f64| x.clamp(0.0, 6.0);
    match act {
        Act::None => s,
        Act::Relu => s.max(0.0),
        Act::Relu6 => relu6(s),
        Act::HardSwish => s * relu6(s + 3.0) / 6.0,
        Act::HardSigmoid => relu6(s + 3.0) / 6.0,
        Act::Silu => s / (1.0 + (-s).exp()),
        Act::Gelu => 0.5 * s * (1.0 + erf(s / std::f64::consts::SQRT_2)),
        Act::DyRelu => (f64::from(a1) * s).max(f64::from(a2) * s),
    }
}

/// The buffers of one tile call, each with room for whole-vector reads
/// past its last element.
struct TileIo {
    a: Vec<f32>,
    b: Vec<f32>,
    c: Vec<f32>,
    bias: Vec<f32>,
    residual: Vec<f32>,
    a1: Vec<f32>,
    a2: Vec<f32>,
    panel: Vec<f32>,
}

impl TileIo {
    fn new(v: &Variant, rng: &mut Rng) -> TileIo {
        let mut fill = |n: usize| (0..n).map(|_| rng.f32_in(-2.0, 2.0)).collect::<Vec<f32>>();
        let slack = 64;
        let c_len = v.mr * v.c_rs + slack;
        TileIo {
            a: fill(v.mr * v.a_rs + v.k * v.a_ks + slack),
            b: fill(v.k * v.b_ks + v.nr + slack),
            c: fill(c_len),
            bias: fill(v.mr.max(v.nr) + slack),
            residual: fill(c_len),
            a1: fill(v.mr + slack),
            a2: fill(v.mr + slack),
            panel: vec![f32::NAN; v.k * v.nr + slack],
        }
    }
}

/// The tile signature: System V, eight pointers.
type TileFn = unsafe extern "sysv64" fn(
    *const f32,
    *const f32,
    *mut f32,
    *const f32,
    *const f32,
    *const f32,
    *const f32,
    *mut f32,
);

/// A kernel's signature: `fn(arena, begin, end)`, System V on the hosts
/// the contract tests run on.
type KernelFn = unsafe extern "sysv64" fn(*const u64, u64, u64);

impl TileIo {
    /// The tile's arguments as the portable tile's kernel reads them from
    /// its arena: `[a, b, c, bias, residual, a1, a2]`.
    fn args(&mut self) -> [u64; 7] {
        [
            self.a.as_ptr() as u64,
            self.b.as_ptr() as u64,
            self.c.as_mut_ptr() as u64,
            self.bias.as_ptr() as u64,
            self.residual.as_ptr() as u64,
            self.a1.as_ptr() as u64,
            self.a2.as_ptr() as u64,
        ]
    }
}

/// The portable f32x4 tile of a variant as a kernel of its own: the
/// tile's arguments are the arena's first seven slots ([`TileIo::args`]).
struct PortableTile(Variant);

impl crate::kernels::Kernel for PortableTile {
    fn describe(&self) -> String {
        format!("portable tile {:?}", self.0)
    }

    fn units(&self) -> usize {
        1
    }

    fn cost(&self) -> f64 {
        0.0
    }

    fn emit(&self, e: &mut Emitter, _: Value, _: Value) {
        let v = &self.0;
        let arg = |k: usize| Buf::input(Loc::Io(8 * k));
        let p: Vec<Value> = (0..7)
            .map(|k| match k {
                2 => e.base(Buf::output(Loc::Io(16))),
                _ => e.base(arg(k)),
            })
            .collect();
        let dyrelu = v.act == Act::DyRelu;
        let epi = Epilogue {
            act: v.act,
            slopes: dyrelu.then_some(Slopes {
                a1: arg(5),
                a2: arg(6),
                batch_stride: 0,
            }),
            residual: v.residual.then_some(arg(4)),
        };
        let init = match v.bias {
            Bias::None => Init::Zero,
            Bias::Row => Init::Row(arg(3)),
            Bias::Col => Init::Col(arg(3)),
        };
        let tile = f32x4::Tile {
            k: v.k,
            a: AView {
                rs: v.a_rs as i64,
                ks: v.a_ks as i64,
                flags: Emitter::rflags(arg(0)),
            },
            b: BView {
                ks: v.b_ks as i64,
                padded: v.b_padded,
                flags: Emitter::rflags(arg(1)),
            },
            init,
            alpha: 1.0,
            cin: None,
            c_rs: v.c_rs as i64,
            epi: &epi,
        };
        let ptrs = Ptrs {
            a: p[0],
            b: p[1],
            c: p[2],
            bias: (v.bias != Bias::None).then_some(p[3]),
            cin: None,
            res: v.residual.then_some(p[4]),
            slopes: dyrelu.then_some((p[5], p[6])),
        };
        tile.emit(e, ptrs, v.mr, v.nt);
    }
}

/// Compiles the portable tile of every variant for the host, in a JIT
/// module pushed to `modules`; returns their addresses ([`KernelFn`]s).
fn portable_tiles(
    variants: &[Variant],
    target: &Target,
    modules: &mut Vec<JITModule>,
) -> Vec<usize> {
    let env = || Env {
        fma: target.fma,
        call_conv: target.speed.default_call_conv(),
        cbase: ConstBase::Addr(0),
        powf: PowF::Addr(crate::kernels::elementwise::host_powf as *const () as usize),
    };
    let mut module = JITModule::new(JITBuilder::with_isa(
        target.speed.clone(),
        default_libcall_names(),
    ));
    let mut fctx = FunctionBuilderContext::new();
    let ids: Vec<FuncId> = variants
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let func = crate::compiled::build_function(
                &PortableTile(*v),
                i as u32,
                target.speed.frontend_config(),
                |_| (env(), AsmLink::Addrs(Vec::new())),
                None,
                &mut fctx,
            );
            let id = module
                .declare_function(&format!("tile{i}"), Linkage::Local, &func.signature)
                .expect("declaring a tile");
            let mut ctx = Context::for_function(func);
            module
                .define_function(id, &mut ctx)
                .unwrap_or_else(|e| panic!("{v:?}: {e:?}"));
            id
        })
        .collect();
    module.finalize_definitions().expect("finalising the tiles");
    let addrs = ids
        .iter()
        .map(|&id| module.get_finalized_function(id) as usize)
        .collect();
    modules.push(module);
    addrs
}

/// The variants a tile contract test covers at `level`: for each column
/// width the level builds, one row, about half and the most rows; full
/// columns and vector tails; K of 1, 2, 3 and 8; each epilogue the tiles
/// assemble, each bias, with and without a residual; packed-A and strided
/// A, padded B, and B copied to the panel as it is read (at f32x4, which
/// never fills a panel, B read unpadded instead: its scalar columns).
fn tile_variants(level: TileLevel) -> Vec<Variant> {
    let widths: Vec<(usize, usize)> = match level {
        TileLevel::Avx512 => [16, 32, 48, 64]
            .into_iter()
            .map(|nr| (nr, avx512::tile::max_rows(nr).expect("a built width")))
            .collect(),
        TileLevel::Avx2 => vec![(avx2::tile::NR, avx2::tile::MR)],
        // the default 4×8, and a narrow and a wide shape (`--gemm-tile`)
        TileLevel::F32x4 => vec![(8, 4), (4, 6), (16, 3)],
    };
    let acts: Vec<Act> = Act::ALL.to_vec();
    let mut out = Vec::new();
    let mut i = 0usize;
    for (nr, rows) in widths {
        for mr in [1, rows.div_ceil(2), rows] {
            for nt in [nr, nr - 1, nr.saturating_sub(7).max(1), 1] {
                for k in [1, 2, 3, 8] {
                    i += 1;
                    let act = acts[i % acts.len()];
                    // the portable tile never fills a panel (its driver
                    // packs one first): it reads B unpadded instead
                    let unpadded = i.is_multiple_of(3);
                    let b_pack = unpadded && level != TileLevel::F32x4;
                    let packed_a = i.is_multiple_of(2);
                    out.push(Variant {
                        k,
                        mr,
                        nt,
                        nr,
                        a_rs: if packed_a { 1 } else { k + 3 },
                        a_ks: if packed_a { mr } else { 1 },
                        b_ks: if unpadded { nr + 5 } else { nr },
                        b_padded: !unpadded,
                        b_pack,
                        c_rs: nr + 3,
                        bias: [Bias::None, Bias::Row, Bias::Col][i % 3],
                        act,
                        residual: i % 4 < 2,
                        cols_in_lanes: false,
                    });
                }
            }
        }
    }
    if level == TileLevel::Avx512 {
        // narrow column tails with the rows across the lanes: every tail
        // width, 1 to 16 rows, odd and even K, every epilogue but the
        // dynamic ReLU, each bias, packed and rows-contiguous strided A (at
        // most the 14 rows of a 32-column tile; 16 lanes would take more)
        for (nt, mr, k) in [
            (1, 14, 8),
            (2, 9, 3),
            (3, 13, 1),
            (4, 14, 24),
            (4, 1, 2),
            (2, 5, 7),
        ] {
            for (n, act) in Act::ALL
                .into_iter()
                .filter(|&a| a != Act::DyRelu)
                .enumerate()
            {
                i += 1;
                let packed_a = i.is_multiple_of(2);
                let padded = i.is_multiple_of(3);
                out.push(Variant {
                    k,
                    mr,
                    nt,
                    nr: 32,
                    a_rs: 1,
                    a_ks: if packed_a { 14.max(mr) } else { mr + 5 },
                    b_ks: if padded { 32 } else { nt + 9 },
                    b_padded: padded,
                    b_pack: false,
                    c_rs: 37,
                    bias: [Bias::None, Bias::Row, Bias::Col][(i + n) % 3],
                    act,
                    residual: n % 2 == 0,
                    cols_in_lanes: true,
                });
            }
        }
    }
    out
}

/// Assembles every variant at `level`, runs each on random data and checks
/// the written tile against [`tile_reference`] (within TOL of the largest
/// magnitude), that nothing outside the tile changed, and that a `b_pack`
/// variant copied B to the panel exactly.
fn check_tile_contract(level: TileLevel, test: &str) {
    if TileLevel::host() < level {
        kiln_ir::skip::skip(test, &format!("this CPU lacks {level:?}"));
        return;
    }
    let variants = tile_variants(level);
    assert!(!variants.is_empty());
    let target = Target::host(false).expect("the host target");
    let mut modules = Vec::new();
    let addrs = if level == TileLevel::F32x4 {
        portable_tiles(&variants, &target, &mut modules)
    } else {
        place(level, variants.iter().map(|v| Spec::Tile(*v)), &mut modules)
    };
    let mut rng = Rng(0xc0de_7e57);
    for (v, &addr) in variants.iter().zip(&addrs) {
        let mut io = TileIo::new(v, &mut rng);
        let want = tile_reference(v, &io);
        let before = io.c.clone();
        // SAFETY: `addr` is the finalised code of `v`, assembled or compiled
        // for this level, which the host runs (checked above); every buffer
        // holds what `v`'s strides reach plus a vector of slack, and the
        // modules stay alive until the end of this function.
        unsafe {
            if level == TileLevel::F32x4 {
                let args = io.args();
                let f: KernelFn = std::mem::transmute::<usize, KernelFn>(addr);
                f(args.as_ptr(), 0, 1);
            } else {
                let f: TileFn = std::mem::transmute::<usize, TileFn>(addr);
                f(
                    io.a.as_ptr(),
                    io.b.as_ptr(),
                    io.c.as_mut_ptr(),
                    io.bias.as_ptr(),
                    io.residual.as_ptr(),
                    io.a1.as_ptr(),
                    io.a2.as_ptr(),
                    io.panel.as_mut_ptr(),
                );
            }
        }
        let scale = want.iter().fold(1.0f64, |m, x| m.max(x.abs()));
        for (idx, (&got, &w)) in io.c.iter().zip(&want).enumerate() {
            let (i, j) = (idx / v.c_rs, idx % v.c_rs);
            if i < v.mr && j < v.nt {
                let e = (f64::from(got) - w).abs() / scale;
                assert!(
                    e <= TOL,
                    "{level:?} {v:?}: C[{i}][{j}] = {got}, want {w} ({e:.2e})"
                );
            } else {
                assert_eq!(
                    got.to_bits(),
                    before[idx].to_bits(),
                    "{level:?} {v:?}: wrote outside the tile at {idx}"
                );
            }
        }
        if v.b_pack {
            for k in 0..v.k {
                for j in 0..v.nt {
                    assert_eq!(
                        io.panel[k * v.nr + j].to_bits(),
                        io.b[k * v.b_ks + j].to_bits(),
                        "{level:?} {v:?}: panel[{k}][{j}]"
                    );
                }
            }
        }
    }
    // A rows-in-lanes tail and its row-major twin give the same bits
    // (a GEMM split differently over threads computes a tail with either)
    let mut twins = Registry::new(level);
    let pairs: Vec<(Variant, usize, usize)> = variants
        .iter()
        .filter(|v| v.cols_in_lanes)
        .map(|v| {
            let lanes = twins.request(Spec::Tile(*v)).expect("assembled above");
            let rows = Variant {
                cols_in_lanes: false,
                ..*v
            };
            let rows = twins
                .request(Spec::Tile(rows))
                .unwrap_or_else(|e| panic!("{rows:?}: {e}"));
            (*v, lanes, rows)
        })
        .collect();
    let twin_addrs =
        crate::compiled::place_asm(&twins, &target, &mut modules).expect("placing the code");
    for (v, lanes, rows) in pairs {
        let mut io = TileIo::new(&v, &mut rng);
        let mut c = [io.c.clone(), io.c.clone()];
        for (out, id) in c.iter_mut().zip([lanes, rows]) {
            // SAFETY: as above, for the twins' registry.
            unsafe {
                let f: TileFn = std::mem::transmute::<usize, TileFn>(twin_addrs[id]);
                f(
                    io.a.as_ptr(),
                    io.b.as_ptr(),
                    out.as_mut_ptr(),
                    io.bias.as_ptr(),
                    io.residual.as_ptr(),
                    io.a1.as_ptr(),
                    io.a2.as_ptr(),
                    io.panel.as_mut_ptr(),
                );
            }
        }
        for (idx, (x, y)) in c[0].iter().zip(&c[1]).enumerate() {
            assert_eq!(
                x.to_bits(),
                y.to_bits(),
                "{v:?}: element {idx} differs from the row-major tile"
            );
        }
    }
    drop(modules);
}

/// A row function: `fn(src, dst, n)`, System V.
type RowFn = unsafe extern "sysv64" fn(*const f32, *mut f32, usize);

/// The row contracts: `dst[i] = f(src[i])` for an element-wise function,
/// or the softmax of the row, for `i < n`; nothing outside `[0, n)` read
/// or written; `src == dst` allowed.
#[derive(Clone, Copy, Debug)]
enum Row {
    Unary(Func),
    Softmax,
}

fn row_reference(row: Row, x: &[f32]) -> Vec<f64> {
    let x: Vec<f64> = x.iter().map(|&v| f64::from(v)).collect();
    match row {
        Row::Unary(Func::Exp) => x.iter().map(|v| v.exp()).collect(),
        Row::Unary(Func::Sigmoid) => x.iter().map(|v| 1.0 / (1.0 + (-v).exp())).collect(),
        Row::Unary(Func::Silu) => x.iter().map(|v| v / (1.0 + (-v).exp())).collect(),
        Row::Unary(Func::Gelu | Func::GeluEpilogue) => x
            .iter()
            .map(|&v| 0.5 * v * (1.0 + erf(v / std::f64::consts::SQRT_2)))
            .collect(),
        Row::Unary(Func::GeluTanh) => {
            let c = (2.0 / std::f64::consts::PI).sqrt();
            x.iter()
                .map(|&v| 0.5 * v * (1.0 + (c * (v + 0.044715 * v * v * v)).tanh()))
                .collect()
        }
        Row::Softmax => {
            let m = x.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = x.iter().map(|v| (v - m).exp()).collect();
            let s: f64 = e.iter().sum();
            e.iter().map(|v| v / s).collect()
        }
    }
}

/// `erf` in f64 (Abramowitz–Stegun 7.1.26 is too coarse for a reference;
/// this is the series below 3 and the continued fraction above, both to
/// about 1e-15).
fn erf(x: f64) -> f64 {
    let a = x.abs();
    let r = if a < 3.0 {
        // erf(a) = 2/√π · Σ (-1)^n a^(2n+1) / (n! (2n+1))
        let (mut term, mut sum, mut n) = (a, a, 0.0f64);
        while term.abs() > 1e-17 * sum.abs() {
            n += 1.0;
            term *= -a * a / n;
            sum += term / (2.0 * n + 1.0);
        }
        sum * std::f64::consts::FRAC_2_SQRT_PI
    } else {
        // erfc(a) = exp(-a²)/√π · 1/(a + 1/2/(a + 1/(a + 3/2/(a + ...))))
        let mut f = a;
        for k in (1..60).rev() {
            f = a + (k as f64 / 2.0) / f;
        }
        1.0 - (-a * a).exp() / (std::f64::consts::PI.sqrt() * f)
    };
    if x < 0.0 { -r } else { r }
}

/// The tiles' GELU (`tile.rs`, `GELU_P`) as they evaluate it, step for
/// step in f32, is within the bound its documentation states,
/// 1.8e-7 · max(|x|, 1), of the exact GELU on [-8, 8] and keeps NaN and
/// +∞; the TOL-level tile contracts would not notice a mistyped digit.
#[test]
fn the_tiles_rational_gelu_meets_its_stated_bound() {
    use super::tile::{GELU_P, GELU_Q, GELU_ZMAX};
    let gelu = |x: f32| {
        let z = (x * std::f32::consts::FRAC_1_SQRT_2).clamp(-GELU_ZMAX, GELU_ZMAX);
        let u = z * z;
        let horner = |c: &[f32; 6]| {
            c[..5]
                .iter()
                .rev()
                .fold(c[5], |acc, &ck| acc.mul_add(u, ck))
        };
        let erf = horner(&GELU_P) * z / horner(&GELU_Q);
        let h = x * 0.5;
        erf.mul_add(h, h)
    };
    let mut worst = 0.0f64;
    for i in 0..=160_000 {
        let x = -8.0 + i as f32 * 1e-4;
        let exact = 0.5 * f64::from(x) * (1.0 + erf(f64::from(x) / std::f64::consts::SQRT_2));
        let e = (f64::from(gelu(x)) - exact).abs() / f64::from(x.abs()).max(1.0);
        worst = worst.max(e);
    }
    assert!(worst <= 1.8e-7, "{worst:e}");
    assert!(gelu(f32::NAN).is_nan());
    assert_eq!(gelu(f32::INFINITY), f32::INFINITY);
}

/// Every row function at `level`'s width over lengths 1 to 3 vectors plus
/// every tail, out of place and in place, against [`row_reference`]
/// (within TOL of the largest magnitude), with guard elements on both
/// sides that must stay untouched.
fn check_row_contract(level: TileLevel, test: &str) {
    if TileLevel::host() < level {
        kiln_ir::skip::skip(test, &format!("this CPU lacks {level:?}"));
        return;
    }
    let width = match level {
        TileLevel::Avx512 => Width::Zmm,
        TileLevel::Avx2 => Width::Ymm,
        TileLevel::F32x4 => unreachable!("no assembled rows at f32x4"),
    };
    let rows = [
        Row::Unary(Func::Exp),
        Row::Unary(Func::Sigmoid),
        Row::Unary(Func::Silu),
        Row::Unary(Func::Gelu),
        Row::Unary(Func::GeluEpilogue),
        Row::Unary(Func::GeluTanh),
        Row::Softmax,
    ];
    let mut modules = Vec::new();
    let addrs = place(
        level,
        rows.iter().map(|&r| match r {
            Row::Unary(f) => Spec::Unary(f, width),
            Row::Softmax => Spec::SoftmaxRow(width),
        }),
        &mut modules,
    );
    let ids = 0..addrs.len();
    let lanes = match width {
        Width::Zmm => 16,
        Width::Ymm => 8,
    };
    let mut rng = Rng(0x0a11_2025);
    const GUARD: usize = 32;
    for (&row, id) in rows.iter().zip(ids) {
        for n in 1..=3 * lanes + 1 {
            for in_place in [false, true] {
                let src: Vec<f32> = (0..n).map(|_| rng.f32_in(-30.0, 30.0)).collect();
                let want = row_reference(row, &src);
                let mut buf = vec![f32::NAN; n + 2 * GUARD];
                let mut dst = vec![-7.0f32; n + 2 * GUARD];
                buf[GUARD..GUARD + n].copy_from_slice(&src);
                // SAFETY: `addrs[id]` is the finalised code of this row
                // function at a level the host runs; both pointers have
                // `n` elements (the guards stay outside the call's range,
                // which the contract says it never leaves).
                unsafe {
                    let f: RowFn = std::mem::transmute::<usize, RowFn>(addrs[id]);
                    let s = buf.as_mut_ptr().add(GUARD);
                    let d = if in_place {
                        s
                    } else {
                        dst.as_mut_ptr().add(GUARD)
                    };
                    f(s, d, n);
                }
                let out = if in_place { &buf } else { &dst };
                let fill = if in_place { f32::NAN } else { -7.0 };
                // the epilogue GELU's erf is accurate to 2.6e-7 absolute
                // (as PyTorch's vectorised erf is), not relative: far in
                // the negative tail, where GELU is ~0, its error is
                // measured against the input's size
                let floor = match row {
                    Row::Unary(Func::GeluEpilogue) => {
                        src.iter().fold(1e-30f64, |m, &x| m.max(f64::from(x).abs()))
                    }
                    _ => 1e-30,
                };
                let scale = want.iter().fold(floor, |m, x| m.max(x.abs()));
                for (i, &got) in out.iter().enumerate() {
                    if (GUARD..GUARD + n).contains(&i) {
                        let w = want[i - GUARD];
                        let e = (f64::from(got) - w).abs() / scale;
                        assert!(
                            e <= TOL,
                            "{level:?} {row:?} n={n} in_place={in_place}: [{}] = {got}, want {w} ({e:.2e})",
                            i - GUARD
                        );
                    } else {
                        assert_eq!(
                            got.to_bits(),
                            fill.to_bits(),
                            "{level:?} {row:?} n={n}: wrote outside the row at {i}"
                        );
                    }
                }
            }
        }
    }
    drop(modules);
}

/// Assembles `specs` at `level` and places the code in executable memory
/// that `modules` keeps alive; returns each spec's address, in order.
fn place(
    level: TileLevel,
    specs: impl IntoIterator<Item = Spec>,
    modules: &mut Vec<JITModule>,
) -> Vec<usize> {
    let mut reg = Registry::new(level);
    let ids: Vec<usize> = specs
        .into_iter()
        .map(|s| reg.request(s).unwrap_or_else(|e| panic!("{s:?}: {e}")))
        .collect();
    let target = Target::host(false).expect("the host target");
    let addrs = crate::compiled::place_asm(&reg, &target, modules).expect("placing the code");
    ids.into_iter().map(|id| addrs[id]).collect()
}

/// One test per ISA for a contract.
macro_rules! contract_tests {
    ($check:ident: $($name:ident => $level:expr),+ $(,)?) => {
        $(
            #[test]
            fn $name() {
                $check($level, concat!("ukernels::contract::", stringify!($name)));
            }
        )+
    };
}

contract_tests!(check_tile_contract:
    avx512_gemm_tiles_meet_the_tile_contract => TileLevel::Avx512,
    avx2_gemm_tiles_meet_the_tile_contract => TileLevel::Avx2,
    f32x4_gemm_tiles_meet_the_tile_contract => TileLevel::F32x4,
);

contract_tests!(check_row_contract:
    avx512_row_functions_meet_the_row_contract => TileLevel::Avx512,
    avx2_row_functions_meet_the_row_contract => TileLevel::Avx2,
);

/// Elements of NaN (or sentinel) guard before and after each buffer a
/// plane contract test hands the code.
const GUARD: usize = 64;

/// A depthwise window function: System V, `fn(x, dst, w, res, bias, s1, s2)`.
type WindowFn =
    unsafe extern "sysv64" fn(*const f32, *mut f32, *const f32, *const f32, f32, f32, f32);

/// The depthwise window contract in f64: output `(r, c)` of the plane is
/// `act(bias + Σ_i Σ_j x[r·sh + i·dh - pt][c·sw + j·dw - pl]·w[i][j])`
/// over the taps inside the input, plus the residual at `(r, c)`.
fn window_reference(
    s: &dw_window::Spec,
    x: &[f32],
    w: &[f32],
    res: &[f32],
    k: [f32; 3],
) -> Vec<f64> {
    let mut out = Vec::with_capacity(s.ho * s.wo);
    for r in 0..s.ho {
        for c in 0..s.wo {
            let mut acc = f64::from(k[0]);
            for i in 0..s.kh {
                for j in 0..s.kw {
                    let (y, xx) = (r * s.sh + i * s.dh, c * s.sw + j * s.dw);
                    if y >= s.pt && y - s.pt < s.h && xx >= s.pl && xx - s.pl < s.w {
                        let v = f64::from(x[(y - s.pt) * s.w + xx - s.pl]);
                        acc = if s.max {
                            acc.max(v)
                        } else {
                            acc + v * f64::from(w[i * s.kw + j])
                        };
                    }
                }
            }
            out.push(epilogue_reference(
                s.act,
                acc,
                k,
                s.residual.then(|| res[r * s.wo + c]),
            ));
        }
    }
    out
}

/// A plane kernel's epilogue in f64: `act(acc)` (with the dynamic ReLU's
/// slopes `k[1]`, `k[2]`), plus the residual when there is one.
fn epilogue_reference(act: Act, acc: f64, k: [f32; 3], res: Option<f32>) -> f64 {
    act_reference(act, acc, k[1], k[2]) + res.map_or(0.0, f64::from)
}

/// The window planes a contract test covers: windows 1×1 to 11×11 and
/// oblong ones, strides, dilations, paddings from none to past the
/// window, planes narrower than a vector to several vectors and several
/// bands, every epilogue the code assembles, with and without residual.
fn window_specs() -> Vec<dw_window::Spec> {
    let mut rng = Rng(0x0d3_317);
    let acts: Vec<Act> = Act::ALL
        .into_iter()
        .filter(|&a| super::dw_plane::assembles(a))
        .collect();
    let windows = [(1, 1), (3, 3), (5, 5), (7, 7), (11, 11), (1, 9), (6, 2)];
    let mut out = Vec::new();
    let mut i = 0;
    while out.len() < 60 {
        i += 1;
        let (kh, kw) = windows[i % windows.len()];
        let (sh, sw) = (rng.below(3) + 1, rng.below(2) + 1);
        let dh = rng.below(2) + 1;
        let dw = if sw == 1 { rng.below(2) + 1 } else { 1 };
        let pad = [
            rng.below(kh + 1),
            rng.below(kw + 1),
            rng.below(kh + 1),
            rng.below(kw + 1),
        ];
        let h = 1 + rng.below(20);
        let w = [1, 5, 16, 17, 31, 40, 64][i % 7];
        let (eh, ew) = ((kh - 1) * dh + 1, (kw - 1) * dw + 1);
        if h + pad[0] + pad[2] < eh || w + pad[1] + pad[3] < ew {
            continue;
        }
        let s = dw_window::Spec {
            kh,
            kw,
            sh,
            sw,
            dh,
            dw,
            pt: pad[0],
            pl: pad[1],
            h,
            w,
            ho: (h + pad[0] + pad[2] - eh) / sh + 1,
            wo: (w + pad[1] + pad[3] - ew) / sw + 1,
            act: acts[i % acts.len()],
            residual: i % 3 != 0,
            max: false,
        };
        assert!(s.fits(), "{s:?}");
        out.push(s);
    }
    // max pools of the same windows where every output has a tap inside
    // (ONNX's pads are below the window: no output of only padding)
    let inside = |s: &dw_window::Spec| {
        (0..s.ho).all(|r| (0..s.kh).any(|i| s.row_ok(r, i)))
            && (0..s.wo).all(|c| {
                (0..s.kw).any(|j| {
                    let x = c * s.sw + j * s.dw;
                    x >= s.pl && x - s.pl < s.w
                })
            })
    };
    let conv = out.clone();
    for s in conv.iter().filter(|s| inside(s)).take(20) {
        out.push(dw_window::Spec {
            act: Act::None,
            residual: false,
            max: true,
            ..*s
        });
    }
    out
}

/// Assembles every window spec, runs each on a random plane between
/// guard regions, and checks the output against [`window_reference`]
/// (within TOL of the largest magnitude), that nothing outside the output
/// plane was written, and that the input, weights and residual are intact.
fn check_window_contract(level: TileLevel, test: &str) {
    if TileLevel::host() < level {
        kiln_ir::skip::skip(test, &format!("this CPU lacks {level:?}"));
        return;
    }
    let specs = window_specs();
    let mut modules = Vec::new();
    let addrs = place(
        level,
        specs.iter().map(|s| Spec::DwWindow(*s)),
        &mut modules,
    );
    let ids = 0..addrs.len();
    let mut rng = Rng(0x3d_3d);
    for (s, id) in specs.iter().zip(ids) {
        let mut fill = |n: usize| -> Vec<f32> {
            let mut v = vec![f32::NAN; n + 2 * GUARD];
            for x in &mut v[GUARD..GUARD + n] {
                *x = rng.f32_in(-2.0, 2.0);
            }
            v
        };
        let x = fill(s.h * s.w);
        let w = fill(s.kh * s.kw);
        let res = fill(s.ho * s.wo);
        let mut k = [
            rng.f32_in(-1.0, 1.0),
            rng.f32_in(-1.0, 1.0),
            rng.f32_in(-1.0, 1.0),
        ];
        if s.max {
            k[0] = f32::NEG_INFINITY;
        }
        let inner = |v: &[f32], n: usize| v[GUARD..GUARD + n].to_vec();
        let want = window_reference(
            s,
            &inner(&x, s.h * s.w),
            &inner(&w, s.kh * s.kw),
            &inner(&res, s.ho * s.wo),
            k,
        );
        // SAFETY: `addrs[id]` is the finalised code of `s`, assembled for a
        // level the host runs (checked above), reading planes of `s`'s size.
        unsafe {
            call_plane_fn(
                addrs[id],
                [&x, &w, &res],
                k,
                s.ho * s.wo,
                |i| Some(want[i]),
                s,
            )
        };
    }
    drop(modules);
}

/// Calls the plane function at `addr` (`fn(x, dst, w, res, bias, s1, s2)`,
/// [`WindowFn`]) on `x`, `w` and `res` — each with [`GUARD`] elements
/// before and after — into an output of `out` elements between guards,
/// then checks output element `i` against `want(i)` within TOL of the
/// largest wanted magnitude (`None`: it must stay unwritten), that nothing
/// outside the output was written, and that no input changed. `case`
/// names the case in failures.
///
/// # Safety
///
/// `addr` is finalised code of that signature for an ISA the host runs,
/// reading and writing only what its contract lets it within those
/// buffers (guards excluded), and the code's module outlives the call.
unsafe fn call_plane_fn(
    addr: usize,
    [x, w, res]: [&[f32]; 3],
    k: [f32; 3],
    out: usize,
    want: impl Fn(usize) -> Option<f64>,
    case: &dyn std::fmt::Debug,
) {
    let mut dst = vec![-7.0f32; out + 2 * GUARD];
    let (x0, w0, r0) = (x.to_vec(), w.to_vec(), res.to_vec());
    // SAFETY: the caller's contract; each pointer is past the guard
    // before its buffer.
    unsafe {
        let f: WindowFn = std::mem::transmute::<usize, WindowFn>(addr);
        f(
            x.as_ptr().add(GUARD),
            dst.as_mut_ptr().add(GUARD),
            w.as_ptr().add(GUARD),
            res.as_ptr().add(GUARD),
            k[0],
            k[1],
            k[2],
        );
    }
    let scale = (0..out)
        .filter_map(&want)
        .fold(1.0f64, |m, v| m.max(v.abs()));
    for (idx, &got) in dst.iter().enumerate() {
        match idx.checked_sub(GUARD).filter(|&i| i < out).and_then(&want) {
            Some(want) => {
                let e = (f64::from(got) - want).abs() / scale;
                assert!(
                    e <= TOL,
                    "{case:?}: [{}] = {got}, want {want} ({e:.2e})",
                    idx - GUARD
                );
            }
            None => assert_eq!(
                got.to_bits(),
                (-7.0f32).to_bits(),
                "{case:?}: wrote outside the output at {idx}"
            ),
        }
    }
    let same = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(p, q)| p.to_bits() == q.to_bits());
    assert!(
        same(x, &x0) && same(w, &w0) && same(res, &r0),
        "{case:?}: changed an input"
    );
}

contract_tests!(check_window_contract:
    avx512_depthwise_windows_meet_the_window_contract => TileLevel::Avx512,
);

/// The 3×3 depthwise plane-interior contract in f64: output `(r, c)` of
/// the `rows × cols` block is `act(bias + Σ_i Σ_j x[(r·sh + i)·w + c·sw +
/// j]·w[i][j])` — `x` pointing at the first output's top-left tap — over
/// the taps that are not in the padding of an edge the spec marks (tap row
/// 0 of the top row, row 2 of the bottom row, column 0 of the left column,
/// column 2 of the right one), plus the residual at `(r, c)` (row length
/// `wo`).
fn plane_reference(
    s: &super::dw_plane::Spec,
    x: &[f32],
    w: &[f32],
    res: &[f32],
    k: [f32; 3],
) -> Vec<f64> {
    let mut out = Vec::with_capacity(s.rows * s.cols);
    for r in 0..s.rows {
        for c in 0..s.cols {
            let mut acc = f64::from(k[0]);
            for i in 0..3 {
                if (s.top && r == 0 && i == 0) || (s.bottom && r == s.rows - 1 && i == 2) {
                    continue;
                }
                for j in 0..3 {
                    if (s.left && c == 0 && j == 0) || (s.right && c == s.cols - 1 && j == 2) {
                        continue;
                    }
                    acc +=
                        f64::from(x[(r * s.sh + i) * s.w + c * s.sw + j]) * f64::from(w[i * 3 + j]);
                }
            }
            out.push(epilogue_reference(
                s.act,
                acc,
                k,
                s.residual.then(|| res[r * s.wo + c]),
            ));
        }
    }
    out
}

/// The plane interiors a contract test covers at `width`: strides 1 and 2
/// both ways, 1 to 14 rows (around the six-row groups), columns from one
/// (AVX2: eight, its smallest) to several vectors with masked tails, every
/// edge marking alone and together, every epilogue the code assembles,
/// with and without residual, input rows longer than the taps need.
fn plane_specs(width: Width) -> Vec<super::dw_plane::Spec> {
    let mut rng = Rng(0x33d3);
    let acts: Vec<Act> = Act::ALL
        .into_iter()
        .filter(|&a| super::dw_plane::assembles(a))
        .collect();
    let widths: &[usize] = match width {
        Width::Zmm => &[1, 5, 15, 16, 17, 31, 33, 40],
        Width::Ymm => &[8, 9, 15, 16, 17, 31, 33, 40],
    };
    (0..64)
        .map(|i| {
            let (sh, sw) = (1 + rng.below(2), 1 + rng.below(2));
            let (top, bottom, left, right) = (i % 4 == 1, i % 5 == 2, i % 3 == 1, i % 7 == 3);
            let rows = (1 + rng.below(14)).max(1 + usize::from(top && bottom));
            let cols = widths[i % widths.len()].max(1 + usize::from(left && right));
            super::dw_plane::Spec {
                sh,
                sw,
                w: (cols - 1) * sw + 3 + rng.below(5),
                wo: cols + rng.below(4),
                rows,
                cols,
                top,
                bottom,
                left,
                right,
                act: acts[i % acts.len()],
                residual: i % 2 == 0,
                width,
            }
        })
        .collect()
}

/// Assembles every plane spec, runs each on random taps between guard
/// regions — the padding taps of marked edges NaN, so that reading one
/// shows — and checks the block against [`plane_reference`] (within TOL
/// of the largest magnitude), that nothing outside the block was written
/// (the rest of each output row included), and that no input changed.
fn check_plane_contract(level: TileLevel, test: &str) {
    if TileLevel::host() < level {
        kiln_ir::skip::skip(test, &format!("this CPU lacks {level:?}"));
        return;
    }
    let width = Width::of(level).expect("an assembling level");
    let specs = plane_specs(width);
    let mut modules = Vec::new();
    let addrs = place(level, specs.iter().map(|s| Spec::DwPlane(*s)), &mut modules);
    let ids = 0..addrs.len();
    let mut rng = Rng(0x91ae);
    for (s, id) in specs.iter().zip(ids) {
        let in_rows = (s.rows - 1) * s.sh + 3;
        let mut x = vec![f32::NAN; in_rows * s.w + 2 * GUARD];
        for r in 0..in_rows {
            for c in 0..s.w {
                let pad = (s.top && r == 0)
                    || (s.bottom && r == in_rows - 1)
                    || (s.left && c == 0)
                    || (s.right && c == (s.cols - 1) * s.sw + 2);
                if !pad {
                    x[GUARD + r * s.w + c] = rng.f32_in(-2.0, 2.0);
                }
            }
        }
        let mut fill = |n: usize| -> Vec<f32> {
            let mut v = vec![f32::NAN; n + 2 * GUARD];
            for x in &mut v[GUARD..GUARD + n] {
                *x = rng.f32_in(-2.0, 2.0);
            }
            v
        };
        let w = fill(9);
        let res = fill(s.rows * s.wo);
        let k = [
            rng.f32_in(-1.0, 1.0),
            rng.f32_in(-1.0, 1.0),
            rng.f32_in(-1.0, 1.0),
        ];
        let inner = |v: &[f32], n: usize| v[GUARD..GUARD + n].to_vec();
        let want = plane_reference(
            s,
            &inner(&x, in_rows * s.w),
            &inner(&w, 9),
            &inner(&res, s.rows * s.wo),
            k,
        );
        // the block's columns of each output row, the rest untouched
        let at = |i: usize| (i % s.wo < s.cols).then(|| want[i / s.wo * s.cols + i % s.wo]);
        // SAFETY: `addrs[id]` is the finalised code of `s`, assembled for a
        // level the host runs (checked above); `x` holds the taps of `s`'s
        // block from the first output's top-left one, `res` and the output
        // `s.rows` rows of `s.wo`.
        unsafe { call_plane_fn(addrs[id], [&x, &w, &res], k, s.rows * s.wo, at, s) };
    }
    drop(modules);
}

contract_tests!(check_plane_contract:
    avx512_depthwise_planes_meet_the_plane_contract => TileLevel::Avx512,
    avx2_depthwise_planes_meet_the_plane_contract => TileLevel::Avx2,
);

/// A transpose panel: System V, `fn(src, dst)`.
type PanelFn = unsafe extern "sysv64" fn(*const f32, *mut f32, *const f32);

/// The transpose panel contract: `dst[j·da + i] = src[i·sb + j]` (plus
/// `res[j·da + i]` with a residual) for `j < a`, `i < b`, nothing else
/// written; checked for every panel width 1..=16, row counts around the
/// 16-row blocks, and strides wider than the panel on both sides, with
/// NaN guards around and between the rows (of the residual too).
fn check_panel_contract(level: TileLevel, test: &str) {
    if TileLevel::host() < level {
        kiln_ir::skip::skip(test, &format!("this CPU lacks {level:?}"));
        return;
    }
    let mut specs = Vec::new();
    for a in 1..=16 {
        for b in [1, 5, 16, 17, 40] {
            specs.push(transpose::Spec {
                a,
                b,
                sb: a + (a * b) % 7,
                da: b + a % 3,
                res: (a + b) % 2 == 0,
                // a prefetch never faults nor changes a value: some panels
                // prefetch past their source, far past it
                ahead: if (a + b) % 3 == 0 { 4096 * a } else { 0 },
            });
        }
    }
    let mut modules = Vec::new();
    let addrs = place(
        level,
        specs.iter().map(|s| Spec::Transpose(*s)),
        &mut modules,
    );
    let ids = 0..addrs.len();
    let mut rng = Rng(0x7a_11e1);
    const GUARD: usize = 64;
    for (s, id) in specs.iter().zip(ids) {
        let src_len = (s.b - 1) * s.sb + s.a;
        let dst_len = (s.a - 1) * s.da + s.b;
        let mut src = vec![f32::NAN; src_len + 2 * GUARD];
        for i in 0..s.b {
            for j in 0..s.a {
                src[GUARD + i * s.sb + j] = rng.f32_in(-2.0, 2.0);
            }
        }
        let mut dst = vec![-7.0f32; dst_len + 2 * GUARD];
        let mut res = vec![f32::NAN; dst_len + 2 * GUARD];
        for i in 0..s.b {
            for j in 0..s.a {
                res[GUARD + j * s.da + i] = rng.f32_in(-2.0, 2.0);
            }
        }
        // SAFETY: `addrs[id]` is the finalised code of `s` at a level the
        // host runs; `src`, `dst` and `res` hold the panel's extent between
        // guards the contract says are never touched; the modules outlive
        // the call.
        unsafe {
            let f: PanelFn = std::mem::transmute::<usize, PanelFn>(addrs[id]);
            f(
                src.as_ptr().add(GUARD),
                dst.as_mut_ptr().add(GUARD),
                res.as_ptr().add(GUARD),
            );
        }
        let mut want = vec![-7.0f32; dst_len + 2 * GUARD];
        for i in 0..s.b {
            for j in 0..s.a {
                let x = src[GUARD + i * s.sb + j];
                want[GUARD + j * s.da + i] = if s.res {
                    x + res[GUARD + j * s.da + i]
                } else {
                    x
                };
            }
        }
        for (k, (g, w)) in dst.iter().zip(&want).enumerate() {
            assert_eq!(
                g.to_bits(),
                w.to_bits(),
                "{s:?}: element {k} (guards of {GUARD})"
            );
        }
    }
    drop(modules);
}

contract_tests!(check_panel_contract:
    avx512_transpose_panels_meet_the_panel_contract => TileLevel::Avx512,
);

/// A direct conv call: System V, `fn(x, dst, w, res, bias)`.
type DirectFn = unsafe extern "sysv64" fn(*const f32, *mut f32, *const f32, *const f32, *const f32);

/// The direct conv contract in f64: for output channel `o < cout` and
/// output row `r` in the call's rows, `act(bias[o] + Σ_ic Σ_i Σ_j
/// x[ic][tap row][tap col]·w[o][ic][i][j])` over the taps inside the
/// input, plus the residual; planes contiguous.
fn direct_reference(
    s: &conv_direct::Spec,
    x: &[f32],
    w: &[f32],
    res: &[f32],
    bias: &[f32],
) -> Vec<(usize, f64)> {
    let g = &s.win;
    let (plane, taps) = (g.ho * g.wo, g.kh * g.kw);
    let mut out = Vec::new();
    for o in 0..s.cout {
        for r in s.r0..s.r0 + s.rows {
            for c in 0..g.wo {
                let mut acc = if s.bias { f64::from(bias[o]) } else { 0.0 };
                for ic in 0..s.cin {
                    for i in 0..g.kh {
                        for j in 0..g.kw {
                            let (y, xx) = (r * g.sh + i * g.dh, c * g.sw + j * g.dw);
                            if y >= g.pt && y - g.pt < g.h && xx >= g.pl && xx - g.pl < g.w {
                                let v = x[ic * g.h * g.w + (y - g.pt) * g.w + xx - g.pl];
                                let wt = w[(o * s.cin + ic) * taps + i * g.kw + j];
                                acc += f64::from(v) * f64::from(wt);
                            }
                        }
                    }
                }
                let at = o * plane + r * g.wo + c;
                let y = act_reference(g.act, acc, 0.0, 0.0);
                out.push((at, y + if g.residual { f64::from(res[at]) } else { 0.0 }));
            }
        }
    }
    out
}

/// Runs direct conv calls over random channels, windows, strides, row
/// blocks and epilogues against [`direct_reference`] (within TOL of the
/// largest magnitude), checking that only the call's rows of its planes
/// were written and that no operand changed.
fn check_direct_contract(level: TileLevel, test: &str) {
    if TileLevel::host() < level {
        kiln_ir::skip::skip(test, &format!("this CPU lacks {level:?}"));
        return;
    }
    let mut specs = Vec::new();
    for (n, win) in window_specs().into_iter().enumerate() {
        if !conv_direct::assembles(win.act) {
            continue;
        }
        let cout = [1, 3, 8, 16][n % 4];
        let r0 = if n % 3 == 0 { win.ho / 2 } else { 0 };
        let spec = conv_direct::Spec {
            win,
            cin: 1 + n % 5,
            cout,
            bias: n % 2 == 0,
            r0,
            rows: win.ho - r0,
        };
        assert!(spec.fits(), "{spec:?}");
        specs.push(spec);
    }
    let mut modules = Vec::new();
    let addrs = place(
        level,
        specs.iter().map(|s| Spec::ConvDirect(*s)),
        &mut modules,
    );
    let ids = 0..addrs.len();
    let mut rng = Rng(0xd1_2ec7);
    const GUARD: usize = 64;
    for (s, id) in specs.iter().zip(ids) {
        let g = &s.win;
        let mut fill = |n: usize| -> Vec<f32> {
            let mut v = vec![f32::NAN; n + 2 * GUARD];
            for x in &mut v[GUARD..GUARD + n] {
                *x = rng.f32_in(-2.0, 2.0);
            }
            v
        };
        let out_len = s.cout * g.ho * g.wo;
        let x = fill(s.cin * g.h * g.w);
        let w = fill(s.cout * s.cin * g.kh * g.kw);
        let res = fill(out_len);
        let bias = fill(s.cout);
        let mut dst = vec![-7.0f32; out_len + 2 * GUARD];
        let before = (x.clone(), w.clone(), res.clone(), bias.clone());
        // SAFETY: `addrs[id]` is the finalised code of `s` at a level the
        // host runs; every pointer starts an operand of `s`'s size between
        // guards the contract says are never touched; the modules outlive
        // the call.
        unsafe {
            let f: DirectFn = std::mem::transmute::<usize, DirectFn>(addrs[id]);
            f(
                x.as_ptr().add(GUARD),
                dst.as_mut_ptr().add(GUARD),
                w.as_ptr().add(GUARD),
                res.as_ptr().add(GUARD),
                bias.as_ptr().add(GUARD),
            );
        }
        let inner = |v: &[f32]| v[GUARD..v.len() - GUARD].to_vec();
        let want = direct_reference(s, &inner(&x), &inner(&w), &inner(&res), &inner(&bias));
        let scale = want.iter().fold(1.0f64, |m, (_, v)| m.max(v.abs()));
        let mut expect = vec![None; dst.len()];
        for &(at, v) in &want {
            expect[GUARD + at] = Some(v);
        }
        for (k, (&got, want)) in dst.iter().zip(&expect).enumerate() {
            match want {
                Some(v) => {
                    let e = (f64::from(got) - v).abs() / scale;
                    assert!(
                        e <= TOL,
                        "{s:?}: [{}] = {got}, want {v} ({e:.2e})",
                        k as i64 - GUARD as i64
                    );
                }
                None => assert_eq!(
                    got.to_bits(),
                    (-7.0f32).to_bits(),
                    "{s:?}: wrote outside its rows at {k}"
                ),
            }
        }
        let same = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(p, q)| p.to_bits() == q.to_bits());
        assert!(
            same(&x, &before.0)
                && same(&w, &before.1)
                && same(&res, &before.2)
                && same(&bias, &before.3),
            "{s:?}: changed an operand"
        );
    }
    drop(modules);
}

contract_tests!(check_direct_contract:
    avx512_direct_convs_meet_the_direct_contract => TileLevel::Avx512,
);

/// A Winograd input transform: System V, `fn(src, dst)`.
type WinoInFn = unsafe extern "sysv64" fn(*const f32, *mut f32);
/// A Winograd output transform: System V, `fn(m, dst, res, bias)`.
type WinoOutFn = unsafe extern "sysv64" fn(*const f32, *mut f32, *const f32, f32);

/// The Winograd transform contracts in f64. Input: for tile `t < tiles`
/// and position `ξ = 6k + l`, `dst[ξ·stride + t] = Σ_i Σ_j Bᵀ[k][i]·d[i][j]·
/// Bᵀ[l][j]` with `d[i][j]` the plane's row `i` (of the tile row's six,
/// zero outside `lo..hi`) at column `4t + j - pl` (zero outside the row);
/// nothing else written. Output: for row `i < rows` and pixel `x < wo`
/// (tile `x / 4`, column `j = x mod 4`), `dst[i·wo + x] = act(Σ_k Σ_l
/// Aᵀ[i][k]·M[6k + l]·Aᵀ[j][l] + bias) + res[i·wo + x]`; nothing else
/// written. Each within a few roundings of the sum of the terms'
/// magnitudes (the transforms are short sums with exact coefficients);
/// checked for rows cut at the top and bottom, tiles in one and several
/// chunks with and without a tail, left paddings 0–2 and every
/// activation the output assembles, between NaN guards.
fn check_winograd_contract(level: TileLevel, test: &str) {
    if TileLevel::host() < level {
        kiln_ir::skip::skip(test, &format!("this CPU lacks {level:?}"));
        return;
    }
    let ins = winograd_in_specs();
    let outs = winograd_out_specs();
    let mut modules = Vec::new();
    let specs = ins.iter().map(|s| Spec::WinoIn(*s));
    let addrs = place(
        level,
        specs.chain(outs.iter().map(|s| Spec::WinoOut(*s))),
        &mut modules,
    );
    let (in_ids, out_ids) = (0..ins.len(), ins.len()..addrs.len());
    let mut rng = Rng(0x0313_30a7);
    for (s, id) in ins.iter().zip(in_ids) {
        check_winograd_in(s, addrs[id], &mut rng);
    }
    for (s, id) in outs.iter().zip(out_ids) {
        check_winograd_out(s, addrs[id], &mut rng);
    }
    drop(modules);
}

/// Floats of NaN (or of a marker) around each buffer a Winograd transform
/// reads or writes, so a read or write outside it shows.
const WINO_GUARD: usize = 256;

/// The input transforms checked: plane widths with whole and partial last
/// tiles, left paddings 0–2, and every band of valid rows (`lo..hi`).
fn winograd_in_specs() -> Vec<super::winograd::InSpec> {
    use super::winograd::InSpec;
    let mut ins = Vec::new();
    for (w, tiles, pl) in [
        (7, 2, 1),
        (56, 14, 1),
        (58, 14, 0),
        (20, 6, 2),
        (130, 33, 1),
        (64, 16, 0),
    ] {
        for (lo, hi) in [(0, 6), (1, 6), (0, 3), (2, 5), (0, 0)] {
            ins.push(InSpec {
                w,
                tiles,
                pl,
                lo,
                hi,
                stride: tiles * 3 + 5,
            });
        }
    }
    ins
}

/// The output transforms checked: widths with whole and partial last
/// tiles, 1–4 rows, several activations, with and without a residual.
fn winograd_out_specs() -> Vec<super::winograd::OutSpec> {
    use super::winograd::OutSpec;
    let mut outs = Vec::new();
    for (wo, tiles) in [(7, 2), (56, 14), (8, 2), (130, 33), (64, 16), (17, 5)] {
        for (rows, act) in [
            (4, Act::Relu),
            (1, Act::None),
            (3, Act::HardSwish),
            (2, Act::Relu6),
            (4, Act::HardSigmoid),
        ] {
            for res in [false, true] {
                outs.push(OutSpec {
                    wo,
                    tiles,
                    rows,
                    stride: tiles * 2 + 3,
                    act,
                    res,
                });
            }
        }
    }
    outs
}

/// Runs the input transform `s` assembled at `addr` on random rows inside
/// guards and checks every tile it writes (and nothing else) against
/// `Bᵀ d B` in f64.
fn check_winograd_in(s: &super::winograd::InSpec, addr: usize, rng: &mut Rng) {
    use super::winograd::{BT, POSITIONS};
    const GUARD: usize = WINO_GUARD;
    // six rows of `w`, inside guards: rows outside lo..hi are NaN
    let mut src = vec![f32::NAN; 6 * s.w + 2 * GUARD];
    for i in s.lo..s.hi {
        for x in 0..s.w {
            src[GUARD + i * s.w + x] = rng.f32_in(-2.0, 2.0);
        }
    }
    let dst_len = (POSITIONS - 1) * s.stride + s.tiles;
    let mut dst = vec![-7.0f32; dst_len + 2 * GUARD];
    // SAFETY: `addr` is the finalised code of `s` at a level the
    // host runs; it reads rows lo..hi of `src` (inside the guards) and
    // writes the tiles of `dst`; the modules outlive the call.
    unsafe {
        let f: WinoInFn = std::mem::transmute::<usize, WinoInFn>(addr);
        f(src.as_ptr().add(GUARD), dst.as_mut_ptr().add(GUARD));
    }
    let d = |i: usize, x: i64| -> f64 {
        if (s.lo..s.hi).contains(&i) && (0..s.w as i64).contains(&x) {
            f64::from(src[GUARD + i * s.w + x as usize])
        } else {
            0.0
        }
    };
    let mut want = vec![-7.0f64; dst.len()];
    let mut bound = vec![0f64; dst.len()];
    for t in 0..s.tiles {
        for (k, bk) in BT.iter().enumerate() {
            for (l, bl) in BT.iter().enumerate() {
                let (mut v, mut mag) = (0f64, 0f64);
                for (i, &bki) in bk.iter().enumerate() {
                    for (j, &blj) in bl.iter().enumerate() {
                        let term = bki * d(i, (4 * t + j) as i64 - s.pl as i64) * blj;
                        v += term;
                        mag += term.abs();
                    }
                }
                let at = GUARD + (6 * k + l) * s.stride + t;
                want[at] = v;
                bound[at] = 8.0 * f64::from(f32::EPSILON) * mag;
            }
        }
    }
    for (k, ((g, w), b)) in dst.iter().zip(&want).zip(&bound).enumerate() {
        let e = (f64::from(*g) - w).abs();
        assert!(e <= *b, "{s:?}: element {k}: {g} against {w} (bound {b:e})");
    }
}

/// Runs the output transform `s` assembled at `addr` on random tiles, bias
/// and residual, and checks every row it writes (and nothing else) against
/// `Aᵀ m A`, the bias, the activation and the residual in f64.
fn check_winograd_out(s: &super::winograd::OutSpec, addr: usize, rng: &mut Rng) {
    use super::winograd::{AT, POSITIONS};
    const GUARD: usize = WINO_GUARD;
    let m_len = (POSITIONS - 1) * s.stride + s.tiles;
    let mut m = vec![f32::NAN; m_len + 2 * GUARD];
    for p in 0..POSITIONS {
        for t in 0..s.tiles {
            m[GUARD + p * s.stride + t] = rng.f32_in(-2.0, 2.0);
        }
    }
    let len = s.rows * s.wo;
    let mut dst = vec![-7.0f32; len + 2 * GUARD];
    let mut res = vec![f32::NAN; len + 2 * GUARD];
    for r in &mut res[GUARD..GUARD + len] {
        *r = rng.f32_in(-2.0, 2.0);
    }
    let bias = rng.f32_in(-1.0, 1.0);
    // SAFETY: as above: `m` holds every tile of every position, `dst`
    // and `res` the rows the call writes and reads, inside guards.
    unsafe {
        let f: WinoOutFn = std::mem::transmute::<usize, WinoOutFn>(addr);
        f(
            m.as_ptr().add(GUARD),
            dst.as_mut_ptr().add(GUARD),
            res.as_ptr().add(GUARD),
            bias,
        );
    }
    let mut want = vec![-7.0f64; dst.len()];
    let mut bound = vec![0f64; dst.len()];
    for i in 0..s.rows {
        for x in 0..s.wo {
            let (t, j) = (x / 4, x % 4);
            let (mut y, mut mag) = (f64::from(bias), f64::from(bias).abs());
            for (k, &aik) in AT[i].iter().enumerate() {
                for (l, &ajl) in AT[j].iter().enumerate() {
                    let v = aik * f64::from(m[GUARD + (6 * k + l) * s.stride + t]) * ajl;
                    y += v;
                    mag += v.abs();
                }
            }
            let r = if s.res {
                f64::from(res[GUARD + i * s.wo + x])
            } else {
                0.0
            };
            let at = GUARD + i * s.wo + x;
            want[at] = act_reference(s.act, y, 0.0, 0.0) + r;
            bound[at] = 8.0 * f64::from(f32::EPSILON) * (mag + r.abs());
        }
    }
    for (k, ((g, w), b)) in dst.iter().zip(&want).zip(&bound).enumerate() {
        let e = (f64::from(*g) - w).abs();
        assert!(e <= *b, "{s:?}: element {k}: {g} against {w} (bound {b:e})");
    }
}

contract_tests!(check_winograd_contract:
    avx512_winograd_transforms_meet_their_contract => TileLevel::Avx512,
);
