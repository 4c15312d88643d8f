//! Seeded random test material shared by the backend tests and the fuzz
//! targets (`fuzz/`): a SplitMix64 RNG, random tensors, NaN-poisoned
//! outputs, the relative-error measure and tolerance of every differential
//! test, and the random-graph generator (valid random DAGs of the primitive
//! op set on small shapes).

use crate::CompiledModel;
use kiln_ir::{
    BinaryOp, CoordMode, DType, Float, Graph, Model, NearestMode, Op, PadMode, PoolKind,
    ReduceKind, ResizeMode, Tensor, TensorType, UnaryOp, Value, WeightStore,
};

/// SplitMix64: small, seedable, good enough for test data.
#[derive(Clone, Debug)]
pub struct Rng(pub u64);

impl Rng {
    /// The next 64 random bits.
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
    /// A uniformly chosen element of `xs` (which must not be empty).
    pub fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len())]
    }
    /// A fair coin.
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

/// The tolerance of every differential test.
pub const TOL: f64 = 1e-4;

/// Relative size of the noise [`rounding_sensitivity`] puts on every
/// intermediate value: up to 4 units in the last place of an f32 (2^-21),
/// the order of what one correct kernel's rounding may differ by (f32
/// accumulation in another order, polynomial exp/tanh/erf).
pub const ROUNDING_NOISE: f64 = 1.0 / (1u64 << 21) as f64;

/// Whether an op's f32 result may differ from the exact one by rounding
/// in a correct implementation: not for data movement, selections
/// (max, min, ReLU, clip) and sign changes, which every implementation
/// computes exactly.
fn rounds(op: &Op) -> bool {
    match op {
        Op::Input
        | Op::Weight
        | Op::Reshape { .. }
        | Op::Transpose { .. }
        | Op::Concat { .. }
        | Op::Slice { .. }
        | Op::Split { .. }
        | Op::Squeeze { .. }
        | Op::Unsqueeze { .. }
        | Op::Flatten { .. }
        | Op::Pad { .. }
        | Op::Expand { .. }
        | Op::Gather { .. }
        | Op::Cast { .. }
        | Op::Clip { .. }
        | Op::Resize {
            mode: ResizeMode::Nearest,
            ..
        } => false,
        Op::Unary(u) => !matches!(
            u,
            UnaryOp::Relu | UnaryOp::Relu6 | UnaryOp::Neg | UnaryOp::Abs | UnaryOp::Identity
        ),
        // fmod is exact (the remainder of two floats is a float)
        Op::Binary(b) => !matches!(b, BinaryOp::Max | BinaryOp::Min | BinaryOp::Fmod),
        Op::Reduce { kind, .. } => *kind != ReduceKind::Max,
        Op::Pool2d { kind, .. } => *kind != PoolKind::Max,
        _ => true,
    }
}

/// Whether `op` sums many terms (reductions, products, convolutions,
/// averages), so that an f32 kernel's rounding error scales with the sum of
/// the terms' magnitudes rather than with the result: a sum of `x` and `-x`
/// is exactly 0 in the reference but rounding noise of the size of `x` in
/// f32 (the fuzzer's `tests/corpus/jit_cancelled_sum_group_norm_seed`).
fn accumulates(op: &Op) -> bool {
    match op {
        Op::Reduce { kind, .. } => matches!(kind, ReduceKind::Sum | ReduceKind::Mean),
        Op::Pool2d { kind, .. } => *kind != PoolKind::Max,
        Op::MatMul | Op::Gemm { .. } | Op::Conv2d { .. } => true,
        _ => false,
    }
}

/// `t` with every f32 element replaced by its magnitude (other dtypes, such
/// as indices, unchanged).
fn magnitudes(t: &Tensor) -> Tensor {
    match t.as_f32() {
        Some(x) => Tensor::from_f32(
            t.shape().to_vec(),
            x.iter().map(|v| v.abs()).collect::<Vec<f32>>(),
        )
        .expect("same shape and length"),
        None => t.clone(),
    }
}

/// How much a graph amplifies rounding: the reference outputs recomputed
/// with every intermediate f32 result `v` of an op that rounds (not data
/// movement or selections, which are exact) moved by `r·ROUNDING_NOISE·m`,
/// `r` a seeded uniform draw in `[-1, 1]` per element and `m` the result's
/// magnitude `|v|` — or, for an op that sums many terms (`accumulates`), the same op
/// computed over the operands' magnitudes — then [`rel_error`] of each
/// against `want` (the unperturbed outputs).
///
/// A well-conditioned graph stays near 1e-6. A graph that normalises a
/// group whose spread is itself rounding noise (a group norm over values
/// that are all 32 up to rounding: the fuzzer's
/// `tests/corpus/jit_groupnorm_near_constant_seed`) outputs nothing but
/// amplified noise, and its sensitivity is of the order of the output
/// itself: no implementation in f32 can match another there to TOL.
pub fn rounding_sensitivity(
    model: &Model,
    inputs: &[Tensor],
    want: &[Tensor],
) -> Result<Vec<f64>, String> {
    let g = &model.graph;
    let order = g.topo_order().map_err(|e| e.to_string())?;
    let mut rng = Rng(0x05ee_d0f2_011d);
    let mut values: std::collections::HashMap<Value, Tensor> = Default::default();
    let input_pos: std::collections::HashMap<_, _> = g
        .inputs()
        .iter()
        .enumerate()
        .map(|(i, &id)| (id, i))
        .collect();
    for id in order {
        let node = g.node(id);
        let results = match node.op {
            Op::Input => vec![inputs[input_pos[&id]].clone()],
            Op::Weight => vec![
                model
                    .weights
                    .get(&node.outputs[0].name)
                    .cloned()
                    .ok_or_else(|| format!("missing weight {}", node.outputs[0].name))?,
            ],
            _ => {
                let operands: Vec<Value> = g.operands(id);
                let operands: Vec<&Tensor> = operands.iter().map(|v| &values[v]).collect();
                // a sum's rounding scales with its terms, not with its
                // result: the same op over the operands' magnitudes
                let scale = if accumulates(&node.op) {
                    let abs: Vec<Tensor> = operands.iter().map(|t| magnitudes(t)).collect();
                    let abs: Vec<&Tensor> = abs.iter().collect();
                    Some(kiln_ir::interp::eval(&node.op, &abs)?)
                } else {
                    None
                };
                kiln_ir::interp::eval(&node.op, &operands)?
                    .into_iter()
                    .enumerate()
                    .map(|(k, t)| match t.as_f32() {
                        Some(x) if rounds(&node.op) => {
                            let mag = scale.as_ref().and_then(|s| s.get(k)?.as_f32());
                            let noisy: Vec<f32> = x
                                .iter()
                                .enumerate()
                                .map(|(i, &v)| {
                                    let r = f64::from(rng.f32_in(-1.0, 1.0));
                                    let m = match mag {
                                        Some(m) => f64::from(m[i]).abs(),
                                        None => f64::from(v).abs(),
                                    };
                                    (f64::from(v) + r * ROUNDING_NOISE * m) as f32
                                })
                                .collect();
                            Tensor::from_f32(t.shape().to_vec(), noisy)
                                .expect("same shape and length")
                        }
                        _ => t,
                    })
                    .collect()
            }
        };
        for (output, t) in results.into_iter().enumerate() {
            values.insert(Value { node: id, output }, t);
        }
    }
    Ok(g.outputs()
        .iter()
        .zip(want)
        .map(|(v, w)| match w.dtype() {
            DType::F32 => rel_error(&values[v], w),
            DType::I64 => 0.0,
        })
        .collect())
}

/// The differential tolerance of each output of `model` on `inputs`:
/// [`TOL`], or ten times the output's [`rounding_sensitivity`] where the
/// graph amplifies 4-ulp noise past a tenth of TOL — that is, only for
/// ill-conditioned graphs and inputs; the factor covers kernels whose
/// rounding differs by a few times that noise (long f32 sums).
pub fn tolerances(model: &Model, inputs: &[Tensor], want: &[Tensor]) -> Result<Vec<f64>, String> {
    Ok(rounding_sensitivity(model, inputs, want)?
        .into_iter()
        .map(|s| TOL.max(10.0 * s))
        .collect())
}

/// A random graph of seed `seed` with its weights, and input values: 4 to
/// 18 ops built on one `[1-2, 1-12, 1-11, 1-11]` input, no value above
/// 40,000 elements (so the interpreter stays quick), the last value (and
/// sometimes one more) an output. The same seed gives the same model.
pub fn random_graph(seed: u64) -> (Model, Vec<Tensor>) {
    Gen::new(seed).build()
}

struct Gen {
    rng: Rng,
    g: Graph,
    weights: WeightStore,
    inputs: Vec<Tensor>,
    /// values to build on, newest last
    vals: Vec<Value>,
}

const SAFE_UNARY: [UnaryOp; 12] = [
    UnaryOp::Relu,
    UnaryOp::Relu6,
    UnaryOp::Sigmoid,
    UnaryOp::Tanh,
    UnaryOp::Silu,
    UnaryOp::HardSwish,
    UnaryOp::Gelu,
    UnaryOp::GeluTanh,
    UnaryOp::Neg,
    UnaryOp::Abs,
    UnaryOp::Erf,
    UnaryOp::Identity,
];

impl Gen {
    fn new(seed: u64) -> Gen {
        let mut g = Gen {
            rng: Rng(seed),
            g: Graph::new(format!("random_{seed}")),
            weights: WeightStore::new(),
            inputs: Vec::new(),
            vals: Vec::new(),
        };
        let c = g.rng.range(1, 12);
        let h = g.rng.range(1, 11);
        let w = g.rng.range(1, 11);
        let shape = [g.rng.range(1, 2), c, h, w];
        let x = g.g.add_input("x", TensorType::f32(shape)).unwrap();
        let t = tensor(&mut g.rng, &shape, Fill::Signed);
        g.inputs.push(t);
        g.vals.push(x);
        g
    }

    fn shape(&self, v: Value) -> Vec<usize> {
        self.g.value_type(v).shape.clone()
    }

    fn weight(&mut self, shape: &[usize], fill: Fill) -> Value {
        let name = format!("w{}", self.weights.len());
        let v = self.g.add_weight(&name, TensorType::f32(shape)).unwrap();
        let t = tensor(&mut self.rng, shape, fill);
        self.weights.insert(name, t);
        v
    }

    /// A recent value (biased towards the newest), optionally of a rank.
    fn pick(&mut self, rank: Option<usize>) -> Option<Value> {
        let cands: Vec<Value> = self
            .vals
            .iter()
            .copied()
            .filter(|&v| rank.is_none_or(|r| self.g.value_type(v).rank() == r))
            .collect();
        if cands.is_empty() {
            return None;
        }
        let n = cands.len();
        let i = if self.rng.coin() {
            n - 1
        } else {
            self.rng.below(n)
        };
        Some(cands[i])
    }

    fn add(&mut self, op: Op, args: &[Value]) -> Option<Value> {
        let v = self.g.add(op, args).ok()?;
        // keep tensors small so the interpreter stays quick
        if self.g.value_type(v).numel() > 40_000 {
            return None;
        }
        self.vals.push(v);
        Some(v)
    }

    /// Adds one random op on the values built so far (`None` when the
    /// draw does not fit them). Which op is the first draw; each op's own
    /// draws follow in its function, in the order the fuzz corpus's seeds
    /// depend on.
    fn step(&mut self) -> Option<Value> {
        match self.rng.below(20) {
            0..=3 => self.conv(),
            4..=6 => self.unary(),
            7..=8 => self.binary(),
            9 => self.norm(),
            10 => self.softmax(),
            11 => self.token_matmul(),
            12 => self.pool(),
            13 => self.reduce(),
            14 => self.transpose(),
            15 => self.concat(),
            16 => self.slice(),
            17 => self.pad(),
            18 => self.linear(),
            _ => self.clip(),
        }
    }

    /// A convolution of a rank-4 value: dense, grouped or depthwise, any of
    /// a few windows, strides and paddings, with or without a bias.
    fn conv(&mut self) -> Option<Value> {
        let x = self.pick(Some(4))?;
        let s = self.shape(x);
        let c = s[1];
        let k = *self.rng.pick(&[1, 1, 3, 3, 5]);
        let stride = *self.rng.pick(&[1, 1, 2]);
        let depthwise = self.rng.below(3) == 0;
        let (groups, o) = if depthwise {
            (c, c * self.rng.range(1, 2))
        } else if c.is_multiple_of(2) && self.rng.below(4) == 0 {
            (2, 2 * self.rng.range(1, 6))
        } else {
            (1, self.rng.range(1, 20))
        };
        let p = k / 2;
        let pad = if self.rng.below(4) == 0 {
            [
                self.rng.range(0, p),
                self.rng.range(0, p),
                self.rng.range(0, p),
                self.rng.range(0, p),
            ]
        } else {
            [p; 4]
        };
        let w = self.weight(&[o, c / groups, k, k], Fill::Range(-0.5, 0.5));
        let mut args = vec![x, w];
        if self.rng.coin() {
            args.push(self.weight(&[o], Fill::Signed));
        }
        self.add(
            Op::Conv2d {
                stride: [stride, stride],
                pad,
                dilation: [1, 1],
                groups,
            },
            &args,
        )
    }

    /// An element-wise unary op that is finite on every input.
    fn unary(&mut self) -> Option<Value> {
        let x = self.pick(None)?;
        let u = *self.rng.pick(&SAFE_UNARY);
        self.add(Op::Unary(u), &[x])
    }

    /// A binary op: a residual with a value of the same shape, or a
    /// broadcast of a per-channel or scalar weight.
    fn binary(&mut self) -> Option<Value> {
        // residual or broadcast binary
        let x = self.pick(None)?;
        let s = self.shape(x);
        let op = *self.rng.pick(&[
            BinaryOp::Add,
            BinaryOp::Add,
            BinaryOp::Mul,
            BinaryOp::Sub,
            BinaryOp::Max,
            BinaryOp::Min,
        ]);
        let same: Vec<Value> = self
            .vals
            .iter()
            .copied()
            .filter(|&v| v != x && self.shape(v) == s)
            .collect();
        let y = if !same.is_empty() && self.rng.coin() {
            *self.rng.pick(&same)
        } else if s.len() == 4 && self.rng.coin() {
            self.weight(&[1, s[1], 1, 1], Fill::Signed)
        } else {
            self.weight(&[], Fill::Signed)
        };
        self.add(Op::Binary(op), &[x, y])
    }

    /// A batch, group or layer normalisation of a rank-4 value.
    fn norm(&mut self) -> Option<Value> {
        let x = self.pick(Some(4))?;
        let s = self.shape(x);
        let eps = Float(1e-5);
        match self.rng.below(3) {
            0 => {
                let c = s[1];
                let args = [
                    x,
                    self.weight(&[c], Fill::Signed),
                    self.weight(&[c], Fill::Signed),
                    self.weight(&[c], Fill::Signed),
                    self.weight(&[c], Fill::Range(0.5, 2.0)),
                ];
                self.add(Op::BatchNorm { eps }, &args)
            }
            1 => {
                let c = s[1];
                let groups = *self.rng.pick(&[1, c]);
                let args = [
                    x,
                    self.weight(&[c], Fill::Signed),
                    self.weight(&[c], Fill::Signed),
                ];
                self.add(Op::GroupNorm { groups, eps }, &args)
            }
            _ => {
                let axis = self.rng.range(1, 3);
                let p = s[axis..].to_vec();
                let args = [
                    x,
                    self.weight(&p, Fill::Signed),
                    self.weight(&p, Fill::Signed),
                ];
                self.add(Op::LayerNorm { axis, eps }, &args)
            }
        }
    }

    /// A softmax along one axis.
    fn softmax(&mut self) -> Option<Value> {
        let x = self.pick(None)?;
        let r = self.shape(x).len();
        if r == 0 {
            return None;
        }
        let axis = self.rng.below(r);
        self.add(Op::Softmax { axis }, &[x])
    }

    /// A token-style matmul (`[N, C, H, W] -> [N, C, HW] @ W[HW, K]`),
    /// sometimes followed by an attention-like product with its own transpose.
    fn token_matmul(&mut self) -> Option<Value> {
        // token-style matmul: [N, C, H, W] -> [N, C, HW] @ W[HW, K]
        let x = self.pick(Some(4))?;
        let s = self.shape(x);
        let t = self.add(
            Op::Reshape {
                shape: vec![s[0], s[1], s[2] * s[3]],
            },
            &[x],
        )?;
        let k = self.rng.range(1, 12);
        let w = self.weight(&[s[2] * s[3], k], Fill::Range(-0.5, 0.5));
        let m = self.add(Op::MatMul, &[t, w])?;
        // attention-like product with its own transpose
        if self.rng.coin() {
            let tt = self.add(
                Op::Transpose {
                    perm: vec![0, 2, 1],
                },
                &[m],
            )?;
            self.add(Op::MatMul, &[m, tt])
        } else {
            Some(m)
        }
    }

    /// A max or average pool of a rank-4 value.
    fn pool(&mut self) -> Option<Value> {
        let x = self.pick(Some(4))?;
        let kind = *self.rng.pick(&[PoolKind::Max, PoolKind::Avg]);
        let k = self.rng.range(1, 3);
        let s = self.rng.range(1, 2);
        let p = self.rng.range(0, k - 1);
        let count_include_pad = self.rng.coin();
        self.add(
            Op::Pool2d {
                kind,
                kernel: [k, k],
                stride: [s, s],
                pad: [p; 4],
                count_include_pad,
            },
            &[x],
        )
    }

    /// A reduction over a random set of axes (a global average pool when
    /// the set is empty).
    fn reduce(&mut self) -> Option<Value> {
        let x = self.pick(None)?;
        let r = self.shape(x).len();
        if r == 0 {
            return None;
        }
        let kind = *self
            .rng
            .pick(&[ReduceKind::Mean, ReduceKind::Sum, ReduceKind::Max]);
        let axes: Vec<usize> = (0..r).filter(|_| self.rng.coin()).collect();
        if axes.is_empty() {
            return self.add(Op::GlobalAvgPool, &[x]);
        }
        self.add(
            Op::Reduce {
                kind,
                axes,
                keepdims: true,
            },
            &[x],
        )
    }

    /// A random permutation of the axes.
    fn transpose(&mut self) -> Option<Value> {
        let x = self.pick(None)?;
        let r = self.shape(x).len();
        let mut perm: Vec<usize> = (0..r).collect();
        for i in (1..r).rev() {
            let j = self.rng.below(i + 1);
            perm.swap(i, j);
        }
        self.add(Op::Transpose { perm }, &[x])
    }

    /// A channel concatenation of two rank-4 values of the same batch and
    /// plane, sometimes split again in two.
    fn concat(&mut self) -> Option<Value> {
        let x = self.pick(Some(4))?;
        let s = self.shape(x);
        let same: Vec<Value> = self
            .vals
            .iter()
            .copied()
            .filter(|&v| {
                let t = self.shape(v);
                t.len() == 4 && t[0] == s[0] && t[2] == s[2] && t[3] == s[3]
            })
            .collect();
        let y = *self.rng.pick(&same);
        let c = self.add(Op::Concat { axis: 1 }, &[x, y])?;
        let total = self.shape(c)[1];
        let a = self.rng.range(1, total.max(2) - 1).min(total);
        if a < total && self.rng.coin() {
            let parts = self
                .g
                .add_multi(
                    Op::Split {
                        axis: 1,
                        sizes: vec![a, total - a],
                    },
                    &[c],
                )
                .ok()?;
            self.vals.extend(&parts);
            Some(parts[self.rng.below(2)])
        } else {
            Some(c)
        }
    }

    /// A slice along one axis, forward or backward.
    fn slice(&mut self) -> Option<Value> {
        let x = self.pick(None)?;
        let s = self.shape(x);
        if s.is_empty() {
            return None;
        }
        let axis = self.rng.below(s.len());
        let d = s[axis] as i64;
        let (start, end, step) = if self.rng.coin() {
            (
                self.rng.below(d as usize) as i64,
                d + 2,
                self.rng.range(1, 2) as i64,
            )
        } else {
            (d - 1, -1, -(self.rng.range(1, 2) as i64))
        };
        self.add(
            Op::Slice {
                axes: vec![axis],
                starts: vec![start],
                ends: vec![end],
                steps: vec![step],
            },
            &[x],
        )
    }

    /// A constant or edge padding of up to one element each side.
    fn pad(&mut self) -> Option<Value> {
        let x = self.pick(None)?;
        let r = self.shape(x).len();
        let pads: Vec<usize> = (0..2 * r).map(|_| self.rng.range(0, 1)).collect();
        let mode = *self.rng.pick(&[PadMode::Constant, PadMode::Edge]);
        self.add(
            Op::Pad {
                pads,
                mode,
                value: Float(0.25),
            },
            &[x],
        )
    }

    /// A linear layer on the last axis, as a GEMM.
    fn linear(&mut self) -> Option<Value> {
        // a linear layer on the last axis via gemm
        let x = self.pick(None)?;
        let s = self.shape(x);
        let k = *s.last()?;
        let m = s.iter().product::<usize>() / k.max(1);
        let f = self.add(Op::Reshape { shape: vec![m, k] }, &[x])?;
        let n = self.rng.range(1, 16);
        let w = self.weight(&[n, k], Fill::Range(-0.5, 0.5));
        let b = self.weight(&[n], Fill::Signed);
        self.add(
            Op::Gemm {
                alpha: Float(1.0),
                beta: Float(1.0),
                trans_a: false,
                trans_b: true,
            },
            &[f, w, b],
        )
    }

    /// A clip or a hard sigmoid.
    fn clip(&mut self) -> Option<Value> {
        let x = self.pick(None)?;
        let op = if self.rng.coin() {
            Op::Clip {
                min: Float(-0.5),
                max: Float(0.7),
            }
        } else {
            Op::HardSigmoid {
                alpha: Float(0.2),
                beta: Float(0.5),
            }
        };
        self.add(op, &[x])
    }

    /// The ops added for the timm exports (issue 15: sin, cos, mod, fmod,
    /// resize), drawn after a seed's original graph and outputs are fixed —
    /// the fuzz corpus and pinned seeds name those graphs — in half the
    /// graphs, each one more output. A remainder jumps by |y| where x/y
    /// crosses an integer, so it takes the graph input (the same bits in the
    /// JIT and the interpreter); sin and cos take the input times a
    /// constant (arguments up to ±8, exactly rounded on both sides).
    fn newer_ops(&mut self, outs: &mut Vec<Value>) {
        if self.rng.coin() {
            return;
        }
        let x = self.vals[0];
        let v = match self.rng.below(3) {
            0 => {
                let w = self.weight(&[], Fill::Range(1.0, 8.0));
                let Some(a) = self.add(Op::Binary(BinaryOp::Mul), &[x, w]) else {
                    return;
                };
                let u = *self.rng.pick(&[UnaryOp::Sin, UnaryOp::Cos]);
                self.add(Op::Unary(u), &[a])
            }
            1 => {
                let op = *self.rng.pick(&[BinaryOp::Mod, BinaryOp::Fmod]);
                let y = self.weight(&[], Fill::Range(0.3, 0.9));
                let y = if self.rng.coin() {
                    let Some(n) = self.add(Op::Unary(UnaryOp::Neg), &[y]) else {
                        return;
                    };
                    n
                } else {
                    y
                };
                self.add(Op::Binary(op), &[x, y])
            }
            _ => self.resize(),
        };
        if let Some(v) = v {
            outs.push(v);
        }
    }

    /// A resize of a rank-4 value, up or down, scales or sizes; which
    /// pixels are read depends on the shapes only, so nearest mode is as
    /// safe as bilinear.
    fn resize(&mut self) -> Option<Value> {
        let x = self.pick(Some(4))?;
        let s = self.shape(x);
        let mode = *self.rng.pick(ResizeMode::ALL);
        let size = [
            self.rng.range(1, 2 * s[2] + 1),
            self.rng.range(1, 2 * s[3] + 1),
        ];
        let scale = if self.rng.coin() {
            let f = |d: usize, o: usize| Float(o as f32 / d.max(1) as f32);
            Some([f(s[2], size[0]), f(s[3], size[1])])
        } else {
            None
        };
        let nearest = *self.rng.pick(NearestMode::ALL);
        let coord = *self.rng.pick(CoordMode::ALL);
        self.add(Op::resize(mode, nearest, coord, size, scale), &[x])
    }

    fn build(mut self) -> (Model, Vec<Tensor>) {
        let n = self.rng.range(4, 18);
        let mut made = 0;
        for _ in 0..200 {
            if made >= n {
                break;
            }
            if self.step().is_some() {
                made += 1;
            }
        }
        let last = *self.vals.last().unwrap_or(&self.vals[0]);
        let mut outs = vec![last];
        if self.vals.len() > 2 && self.rng.coin() {
            let other = self.vals[self.rng.below(self.vals.len() - 1)];
            outs.push(other);
        }
        self.newer_ops(&mut outs);
        self.g.set_outputs(outs);
        (
            Model {
                graph: self.g,
                weights: self.weights,
            },
            self.inputs,
        )
    }
}
