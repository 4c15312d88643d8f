//! Random graphs: valid random DAGs of the primitive op set (convolutions of
//! every kind, matrix products, norms, softmax, reductions, pooling, data
//! movement, element-wise chains with residuals) on random small shapes,
//! compiled and compared with the interpreter at 1 and 2 threads.
//!
//! CI runs a bounded number; `KILN_RANDOM_GRAPHS=N` runs N. A failure
//! prints the seed and writes the graph as `.kir` text to the temp
//! directory (weights and inputs are regenerated from the seed).

mod common;

use common::{Fill, Rng, check, check_scalar, check_with, opts, tensor};
use kiln_backends::{CompileOptions, OptLevel};
use kiln_ir::{
    BinaryOp, Float, Graph, Model, Op, PadMode, PoolKind, ReduceKind, Tensor, TensorType, UnaryOp,
    Value, WeightStore,
};

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

    fn step(&mut self) -> Option<Value> {
        let choice = self.rng.below(20);
        match choice {
            0..=3 => {
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
            4..=6 => {
                let x = self.pick(None)?;
                let u = *self.rng.pick(&SAFE_UNARY);
                self.add(Op::Unary(u), &[x])
            }
            7..=8 => {
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
            9 => {
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
            10 => {
                let x = self.pick(None)?;
                let r = self.shape(x).len();
                if r == 0 {
                    return None;
                }
                let axis = self.rng.below(r);
                self.add(Op::Softmax { axis }, &[x])
            }
            11 => {
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
            12 => {
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
            13 => {
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
            14 => {
                let x = self.pick(None)?;
                let r = self.shape(x).len();
                let mut perm: Vec<usize> = (0..r).collect();
                for i in (1..r).rev() {
                    let j = self.rng.below(i + 1);
                    perm.swap(i, j);
                }
                self.add(Op::Transpose { perm }, &[x])
            }
            15 => {
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
            16 => {
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
            17 => {
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
            18 => {
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
            _ => {
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
        }
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

fn run_seed(seed: u64) {
    let (model, inputs) = Gen::new(seed).build();
    let result = std::panic::catch_unwind(|| {
        let what = format!("random graph seed {seed}");
        check(&what, &model, &inputs);
        // every graph also scalarised (the path of riscv64 without V)
        check_scalar(&what, &model, &inputs);
        // every third graph also at opt_level=speed: both levels must be right
        if seed.is_multiple_of(3) {
            let options = CompileOptions {
                opt_level: OptLevel::Speed,
                tile_opt_level: OptLevel::Speed,
                ..opts(2)
            };
            check_with(
                &format!("{what} at opt_level=speed"),
                &model,
                &inputs,
                &options,
            );
        }
    });
    if let Err(e) = result {
        let path = std::env::temp_dir().join(format!("kiln_random_{seed}.kir"));
        let _ = std::fs::write(&path, kiln_ir::text::print(&model.graph));
        eprintln!(
            "random graph seed {seed} failed; reproducer: {} (weights and inputs come from the seed)",
            path.display()
        );
        std::panic::resume_unwind(e);
    }
}

#[test]
fn random_graphs_match_the_interpreter() {
    let n: u64 = std::env::var("KILN_RANDOM_GRAPHS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    for seed in 0..n {
        run_seed(seed);
    }
}
