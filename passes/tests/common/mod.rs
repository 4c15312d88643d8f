//! Shared test helpers: a graph builder with seeded weights, a canonical
//! dump of a graph, and the differential check against the evaluator.

#![allow(dead_code)]

pub mod mf;

use std::collections::BTreeMap;

use kiln_ir::op::{BinaryOp, Float, Op, UnaryOp};
use kiln_ir::{Graph, Model, Tensor, TensorType, Value, WeightStore};
use kiln_passes::{OptOptions, OptReport, optimize};

/// splitmix64: deterministic pseudo-random numbers for weights and inputs.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// uniform in [-1, 1)
    pub fn uniform(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    pub fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.uniform() * scale).collect()
    }
}

/// Builds small primitive-op graphs with seeded weights.
pub struct B {
    pub g: Graph,
    pub w: WeightStore,
    pub rng: Rng,
    n: usize,
}

impl B {
    pub fn new(name: &str) -> B {
        B {
            g: Graph::new(name),
            w: WeightStore::new(),
            rng: Rng::new(42),
            n: 0,
        }
    }

    pub fn input(&mut self, name: &str, shape: &[usize]) -> Value {
        self.g.add_input(name, TensorType::f32(shape)).unwrap()
    }

    pub fn weight_data(&mut self, prefix: &str, shape: &[usize], data: Vec<f32>) -> Value {
        self.n += 1;
        let name = format!("{prefix}{}", self.n);
        self.w.insert(
            name.clone(),
            Tensor::from_f32(shape.to_vec(), data).unwrap(),
        );
        self.g.add_weight(name, TensorType::f32(shape)).unwrap()
    }

    /// uniform weights in [-scale, scale)
    pub fn weight(&mut self, prefix: &str, shape: &[usize], scale: f32) -> Value {
        let n = shape.iter().product();
        let d = self.rng.vec(n, scale);
        self.weight_data(prefix, shape, d)
    }

    /// positive weights in [lo, lo + 1)
    pub fn positive(&mut self, prefix: &str, shape: &[usize], lo: f32) -> Value {
        let n = shape.iter().product();
        let d = self
            .rng
            .vec(n, 0.5)
            .into_iter()
            .map(|x| x + 0.5 + lo)
            .collect();
        self.weight_data(prefix, shape, d)
    }

    pub fn scalar(&mut self, v: f32) -> Value {
        self.weight_data("c", &[], vec![v])
    }

    pub fn op(&mut self, op: Op, args: &[Value]) -> Value {
        self.g.add(op, args).unwrap()
    }

    pub fn un(&mut self, u: UnaryOp, x: Value) -> Value {
        self.op(Op::Unary(u), &[x])
    }

    pub fn bin(&mut self, b: BinaryOp, x: Value, y: Value) -> Value {
        self.op(Op::Binary(b), &[x, y])
    }

    pub fn shape(&self, v: Value) -> Vec<usize> {
        self.g.value_type(v).shape.clone()
    }

    pub fn conv(
        &mut self,
        x: Value,
        cout: usize,
        k: usize,
        stride: usize,
        groups: usize,
        bias: bool,
    ) -> Value {
        let cin = self.shape(x)[1];
        let fan = (cin / groups * k * k) as f32;
        let w = self.weight("conv.w", &[cout, cin / groups, k, k], 1.0 / fan.sqrt());
        let mut args = vec![x, w];
        if bias {
            args.push(self.weight("conv.b", &[cout], 0.1));
        }
        let p = k / 2;
        self.op(
            Op::Conv2d {
                stride: [stride, stride],
                pad: [p, p, p, p],
                dilation: [1, 1],
                groups,
            },
            &args,
        )
    }

    pub fn bn(&mut self, x: Value) -> Value {
        let c = self.shape(x)[1];
        let g = self.positive("bn.g", &[c], 0.0);
        let b = self.weight("bn.b", &[c], 0.2);
        let m = self.weight("bn.m", &[c], 0.2);
        let v = self.positive("bn.v", &[c], 0.2);
        self.op(Op::BatchNorm { eps: Float(1e-5) }, &[x, g, b, m, v])
    }

    /// PyTorch-style linear: `matmul(x, transpose(W)) + b`, `W [out, in]`.
    pub fn linear(&mut self, x: Value, out: usize) -> Value {
        let inn = *self.shape(x).last().unwrap();
        let w = self.weight("lin.w", &[out, inn], 1.0 / (inn as f32).sqrt());
        let b = self.weight("lin.b", &[out], 0.1);
        let wt = self.op(Op::Transpose { perm: vec![1, 0] }, &[w]);
        let m = self.op(Op::MatMul, &[x, wt]);
        self.bin(BinaryOp::Add, m, b)
    }

    /// A bias-free linear layer (`qkv_bias=False`): `matmul(x, transpose(W))`.
    pub fn linear_nobias(&mut self, x: Value, out: usize) -> Value {
        let inn = *self.shape(x).last().unwrap();
        let w = self.weight("lin.w", &[out, inn], 1.0 / (inn as f32).sqrt());
        let wt = self.op(Op::Transpose { perm: vec![1, 0] }, &[w]);
        self.op(Op::MatMul, &[x, wt])
    }

    pub fn reshape(&mut self, x: Value, shape: &[usize]) -> Value {
        self.op(
            Op::Reshape {
                shape: shape.to_vec(),
            },
            &[x],
        )
    }

    pub fn transpose(&mut self, x: Value, perm: &[usize]) -> Value {
        self.op(
            Op::Transpose {
                perm: perm.to_vec(),
            },
            &[x],
        )
    }

    pub fn finish(mut self, outputs: &[Value]) -> Model {
        self.g.set_outputs(outputs.to_vec());
        kiln_ir::verify(&self.g).unwrap();
        Model {
            graph: self.g,
            weights: self.w,
        }
    }
}

/// The graph's `.kir` text.
pub fn dump(g: &Graph) -> String {
    kiln_ir::text::print(g)
}

/// Random inputs for a model, seeded.
pub fn inputs(m: &Model, seed: u64) -> Vec<Tensor> {
    let mut rng = Rng::new(seed);
    m.graph
        .inputs()
        .iter()
        .map(|&id| {
            let ty = &m.graph.node(id).outputs[0].ty;
            Tensor::from_f32(ty.shape.clone(), rng.vec(ty.numel(), 1.0)).unwrap()
        })
        .collect()
}

/// Asserts that `b` computes what `a` computes on random inputs, within
/// 1e-4 relative to the largest reference magnitude of each output.
pub fn assert_same_function(a: &Model, b: &Model) {
    for seed in [1, 2] {
        let ins = inputs(a, seed);
        let ra = kiln_ir::interp::run(&a.graph, &a.weights, &ins).unwrap();
        let rb = kiln_ir::interp::run(&b.graph, &b.weights, &ins).unwrap();
        assert_eq!(ra.len(), rb.len());
        for (x, y) in ra.iter().zip(&rb) {
            assert_eq!(x.shape(), y.shape());
            let (x, y) = (x.as_f32().unwrap(), y.as_f32().unwrap());
            let scale = x.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-6);
            let diff = x
                .iter()
                .zip(y)
                .fold(0.0f32, |m, (p, q)| m.max((p - q).abs()));
            assert!(
                diff <= 1e-4 * scale,
                "outputs differ: max |diff| {diff} vs scale {scale}"
            );
        }
    }
}

/// Optimises with all rule families and checks the result against the
/// original on random inputs.
pub fn optimize_checked(m: &Model) -> (Model, OptReport) {
    let (o, r) = optimize(m, &OptOptions::default()).unwrap();
    assert_same_function(m, &o);
    (o, r)
}

/// Count of each op in a graph.
pub fn histogram(m: &Model) -> BTreeMap<String, usize> {
    kiln_passes::pipeline::op_histogram(m)
}
