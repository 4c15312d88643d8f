//! Shared helpers of the backend tests: a seeded RNG, single-op model
//! builders, and the differential check against the reference interpreter.

#![allow(dead_code)]

use kiln_backends::{CompileOptions, CompiledModel, TileLevel, compile};
use kiln_ir::{DType, Graph, Model, Op, Tensor, TensorType, Value, WeightStore, interp};

/// SplitMix64: small, seedable, good enough for test data.
#[derive(Clone, Debug)]
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `[0, n)`.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
    /// Uniform in `[lo, hi]`.
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi - lo + 1)
    }
    /// Uniform in `[lo, hi)`.
    pub fn f32_in(&mut self, lo: f32, hi: f32) -> f32 {
        let u = (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32;
        lo + (hi - lo) * u
    }
    /// Non-zero values in `[-1, -0.05] ∪ [0.05, 1]`.
    pub fn nonzero(&mut self) -> f32 {
        let m = self.f32_in(0.05, 1.0);
        if self.next_u64() & 1 == 0 { m } else { -m }
    }
    pub fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len())]
    }
    pub fn coin(&mut self) -> bool {
        self.next_u64() & 1 == 0
    }
}

/// How to fill a tensor.
#[derive(Clone, Copy, Debug)]
pub enum Fill {
    /// non-zero values in ±[0.05, 1]
    Signed,
    /// values in [lo, hi]
    Range(f32, f32),
}

/// A tensor of `shape` filled as `fill` says.
pub fn tensor(rng: &mut Rng, shape: &[usize], fill: Fill) -> Tensor {
    let n: usize = shape.iter().product();
    let data: Vec<f32> = (0..n)
        .map(|_| match fill {
            Fill::Signed => rng.nonzero(),
            Fill::Range(lo, hi) => rng.f32_in(lo, hi),
        })
        .collect();
    Tensor::from_f32(shape.to_vec(), data).unwrap()
}

/// Seeded inputs for every input of `g`, uniform in [-1, 1): the inputs
/// the whole-model tests (zoo, fused zoo, AOT) feed.
pub fn graph_inputs(g: &Graph) -> Vec<Tensor> {
    let mut rng = Rng(42);
    g.inputs()
        .iter()
        .map(|&n| {
            tensor(
                &mut rng,
                &g.value_type(Value::of(n)).shape,
                Fill::Range(-1.0, 1.0),
            )
        })
        .collect()
}

/// An operand of a single-op test graph.
#[derive(Clone, Debug)]
pub enum Arg {
    /// a graph input of this shape
    In(Vec<usize>),
    /// a weight of this shape (random values)
    W(Vec<usize>),
    /// a weight with these exact values
    WData(Vec<usize>, Vec<f32>),
}

pub fn input(shape: &[usize]) -> Arg {
    Arg::In(shape.to_vec())
}

pub fn weight(shape: &[usize]) -> Arg {
    Arg::W(shape.to_vec())
}

/// A model applying `op` to `args`; every result is a graph output.
/// Returns the model and input values.
pub fn single(op: Op, args: &[Arg], rng: &mut Rng, fill: Fill) -> (Model, Vec<Tensor>) {
    let mut g = Graph::new("single");
    let mut weights = WeightStore::new();
    let mut inputs = Vec::new();
    let mut vals: Vec<Value> = Vec::new();
    for (i, a) in args.iter().enumerate() {
        match a {
            Arg::In(s) => {
                vals.push(
                    g.add_input(format!("x{i}"), TensorType::f32(s.clone()))
                        .unwrap(),
                );
                inputs.push(tensor(rng, s, fill));
            }
            Arg::W(s) => {
                let name = format!("w{i}");
                vals.push(g.add_weight(&name, TensorType::f32(s.clone())).unwrap());
                weights.insert(name, tensor(rng, s, fill));
            }
            Arg::WData(s, d) => {
                let name = format!("w{i}");
                vals.push(g.add_weight(&name, TensorType::f32(s.clone())).unwrap());
                weights.insert(name, Tensor::from_f32(s.clone(), d.clone()).unwrap());
            }
        }
    }
    let outs = g
        .add_multi(op, &vals)
        .unwrap_or_else(|e| panic!("building the test graph: {e}"));
    g.set_outputs(outs);
    (Model { graph: g, weights }, inputs)
}

/// Options every differential test compiles with: Cranelift's verifier on.
pub fn opts(threads: usize) -> CompileOptions {
    CompileOptions {
        threads: Some(threads),
        verify_ir: true,
        ..CompileOptions::default()
    }
}

/// Output tensors of the model's output types, filled with NaN, so that an
/// element the JIT fails to write shows up.
pub fn poisoned(m: &CompiledModel) -> Vec<Tensor> {
    m.outputs()
        .iter()
        .map(|(_, ty)| match ty.dtype {
            DType::F32 => Tensor::from_f32(ty.shape.clone(), vec![f32::NAN; ty.numel()]).unwrap(),
            DType::I64 => Tensor::zeros(ty),
        })
        .collect()
}

/// `max|a - b| / max|b|` (or the absolute difference when `b` is all zero);
/// NaN anywhere in `a` that `b` does not have counts as infinite error.
pub fn rel_error(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.shape(), b.shape(), "shapes differ");
    let (a, b) = (a.as_f32().unwrap(), b.as_f32().unwrap());
    let mut max_ref = 0f64;
    let mut max_diff = 0f64;
    for (&x, &y) in a.iter().zip(b) {
        if y.is_nan() {
            if !x.is_nan() {
                return f64::INFINITY;
            }
            continue;
        }
        if x.is_nan() {
            return f64::INFINITY;
        }
        max_ref = max_ref.max(f64::from(y).abs());
        max_diff = max_diff.max((f64::from(x) - f64::from(y)).abs());
    }
    if max_ref == 0.0 {
        max_diff
    } else {
        max_diff / max_ref
    }
}

/// The tolerance of every differential test.
pub const TOL: f64 = 1e-4;

/// Compiles `model` for `threads` threads, runs it into NaN-poisoned
/// outputs, and compares every output with the interpreter. Returns the
/// worst relative error; panics (with `what`) above [`TOL`].
pub fn check_threads(what: &str, model: &Model, inputs: &[Tensor], threads: usize) -> Vec<Tensor> {
    check_with(what, model, inputs, &opts(threads))
}

/// [`check_threads`] with explicit compile options.
pub fn check_with(
    what: &str,
    model: &Model,
    inputs: &[Tensor],
    options: &CompileOptions,
) -> Vec<Tensor> {
    let want = interp::run(&model.graph, &model.weights, inputs)
        .unwrap_or_else(|e| panic!("{what}: interpreter failed: {e}"));
    let m = compile(model, options).unwrap_or_else(|e| panic!("{what}: compile failed: {e}"));
    let mut got = poisoned(&m);
    m.run_into(inputs, &mut got)
        .unwrap_or_else(|e| panic!("{what}: run failed: {e}"));
    for (k, (g, w)) in got.iter().zip(&want).enumerate() {
        let e = rel_error(g, w);
        assert!(
            e <= TOL,
            "{what}: output {k} differs from the interpreter: relative error {e:.3e}\n got {:?}\nwant {:?}",
            &g.as_f32().unwrap()[..g.numel().min(16)],
            &w.as_f32().unwrap()[..w.numel().min(16)]
        );
    }
    got
}

/// The assembled tile levels this host runs, widest first; the first call
/// prints the ones it cannot (their tests are skipped here).
pub fn asm_levels() -> Vec<TileLevel> {
    static SKIPPED: std::sync::Once = std::sync::Once::new();
    // the level the JIT itself picks here: the library's detection, not a
    // second copy of it
    let host = TileLevel::host();
    let (run, skip): (Vec<_>, Vec<_>) = [TileLevel::Avx512, TileLevel::Avx2]
        .into_iter()
        .partition(|&l| l <= host);
    SKIPPED.call_once(|| {
        if !skip.is_empty() {
            let names: Vec<&str> = skip.iter().map(|l| l.name()).collect();
            kiln_ir::skip::skip(
                &format!("tile levels {}", names.join(", ")),
                "this host lacks them: not tested",
            );
        }
    });
    run
}

/// [`opts`] with the tiles capped at `level`.
pub fn level_opts(threads: usize, level: TileLevel) -> CompileOptions {
    CompileOptions {
        max_tiles: level,
        ..opts(threads)
    }
}

/// Panics unless `a` and `b` agree bit for bit.
pub fn assert_same_bits(what: &str, a: &[Tensor], b: &[Tensor]) {
    for (a, b) in a.iter().zip(b) {
        let (a, b) = (a.as_f32().unwrap(), b.as_f32().unwrap());
        assert!(
            a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()),
            "{what}: 1 and 2 threads differ"
        );
    }
}

/// [`check_with`] at every assembled tile level the host runs
/// ([`asm_levels`]: AVX-512, AVX2), each at 1 and 2 threads, which must
/// agree bit for bit; then the Cranelift f32x4 tiles (at 1 thread, or at
/// 1 and 2 when nothing is assembled on this host).
pub fn check(what: &str, model: &Model, inputs: &[Tensor]) {
    check_tweaked(what, model, inputs, |_| {});
}

/// [`check`] with every option set changed by `tweak` (an opt-in code
/// path such as `banded_chains`).
pub fn check_tweaked(what: &str, model: &Model, inputs: &[Tensor], tweak: fn(&mut CompileOptions)) {
    let at = |threads, level| {
        let mut o = level_opts(threads, level);
        tweak(&mut o);
        o
    };
    let levels = asm_levels();
    for &level in &levels {
        let what = format!("{what} ({level} tiles)");
        let one = check_with(&what, model, inputs, &at(1, level));
        let two = check_with(&what, model, inputs, &at(2, level));
        assert_same_bits(&what, &one, &two);
    }
    let what = format!("{what} (Cranelift tiles only)");
    let one = check_with(&what, model, inputs, &at(1, TileLevel::F32x4));
    if levels.is_empty() {
        let two = check_with(&what, model, inputs, &at(2, TileLevel::F32x4));
        assert_same_bits(&what, &one, &two);
    }
}

/// Options of the scalarised path (`CompileOptions::scalarize`, what
/// riscv64 without V compiles), forced on the host: every vector value
/// rewritten into four scalars, with the Cranelift GEMM tile (objects never
/// call assembled tiles).
pub fn scalar_opts(threads: usize) -> CompileOptions {
    CompileOptions {
        scalarize: true,
        asm_tiles: false,
        ..opts(threads)
    }
}

/// [`check_with`] on the scalarised path, at the same tolerance.
pub fn check_scalar(what: &str, model: &Model, inputs: &[Tensor]) -> Vec<Tensor> {
    check_with(
        &format!("{what} (scalarised)"),
        model,
        inputs,
        &scalar_opts(1),
    )
}

/// Builds and checks a single-op model, on the vector and the scalarised
/// path.
pub fn check_op(what: &str, op: Op, args: &[Arg], seed: u64, fill: Fill) {
    let mut rng = Rng(seed);
    let (model, inputs) = single(op, args, &mut rng, fill);
    check(what, &model, &inputs);
    check_scalar(what, &model, &inputs);
}
