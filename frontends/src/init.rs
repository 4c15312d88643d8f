//! Deterministic seeded weight initialisation for any graph.
//!
//! Random weights stand in for trained ones in tests, benchmarks and the
//! CLI (`kiln run` without `--weights`, `.kir` files too), so they must keep
//! activations in a sane range through the whole depth of a network whose
//! BatchNorms run on *stored* statistics (an inference BN does not
//! renormalise). Each tensor's role is read from how the graph uses it
//! (conv kernel, Linear weight, bias, norm γ/β, BN statistics), then from
//! its name (`tokens`, `running_var`, `temperature`), then from its shape;
//! see [`Role`]. Values are fan-in scaled so each layer roughly preserves
//! the second moment of its input.
//!
//! Determinism: every tensor draws from its own stream, seeded from the
//! global seed and the tensor's *name* (splitmix64 + Box–Muller), so a
//! tensor's values do not depend on which other tensors the graph has.

use kiln_ir::{BinaryOp, DType, Graph, Op, Tensor, UnaryOp, Value, WeightStore};

use crate::builder::const_value;

/// What a weight is, and so how it is drawn.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Role {
    /// A scalar constant named by [`crate::builder::const_name`]: exactly its value.
    Constant(f32),
    /// A conv kernel or Linear/matmul weight: `N(0, gain / fan_in)`, the
    /// gain chosen by what follows: 2 before a rectifier, ½ at the end of a
    /// residual branch, 1 otherwise.
    FanIn {
        /// inputs summed into each output
        fan_in: usize,
        /// variance gain
        gain: f32,
    },
    /// A bias or norm β: `N(0, 0.02²)`.
    Bias,
    /// A norm γ or a learned scale (temperature): `1 + U(-0.1, 0.1)`.
    Scale,
    /// BatchNorm running mean: `N(0, 0.1²)`.
    RunningMean,
    /// BatchNorm running variance: `U(0.5, 1.5)`.
    RunningVar,
    /// Learned tokens / embeddings: `N(0, 1)`.
    Tokens,
}

/// splitmix64: a tiny, well-mixed 64-bit generator (Steele et al., 2014).
#[derive(Clone, Debug)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1]: 53 random bits, never 0 (Box–Muller takes a log).
    fn unit(&mut self) -> f64 {
        ((self.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64
    }

    fn normal(&mut self) -> f64 {
        // One Box–Muller draw per call; the sine half is dropped to keep the
        // stream position a pure function of the element index.
        let (u1, u2) = (self.unit(), self.unit());
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
}

/// FNV-1a of the name: turns it into a stream id.
fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xCBF2_9CE4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01B3)
    })
}

fn stream(seed: u64, name: &str) -> SplitMix64 {
    let mut s = SplitMix64(seed ^ fnv1a(name).rotate_left(17));
    // decorrelate nearby seeds before use
    s.next_u64();
    SplitMix64(s.next_u64() ^ fnv1a(name))
}

/// The variance gain for a weighted sum producing `v`, from what consumes
/// it downstream:
///
/// - 2 (He) when a rectifying activation follows, which halves the second
///   moment (ReLU, ReLU6, SiLU, hard-swish, GELU, and `max`, the last op of
///   a dynamic ReLU);
/// - ½ when it ends a residual branch (reaches an `add` of two computed
///   values first), so that each residual add grows the stream's variance
///   by 1.5× rather than 2× — without it the 12-block Mobile-Former-508M
///   ends with activations near 3e3;
/// - 1 otherwise (a projection, attention queries and keys, the classifier).
///
/// The walk follows the value through ops that keep it a weighted sum: a
/// norm, a layout change, a product, the add of a bias, for a few steps.
fn gain_after(g: &Graph, v: Value) -> f32 {
    let mut frontier = vec![v];
    for _ in 0..6 {
        let mut next = Vec::new();
        for v in frontier {
            for (user, operand) in g.users(v) {
                let op = &g.node(user).op;
                let other_is_weight = || {
                    g.operands(user)
                        .iter()
                        .enumerate()
                        .any(|(i, o)| i != operand && g.is_weight(*o))
                };
                match op {
                    Op::Unary(
                        UnaryOp::Relu
                        | UnaryOp::Relu6
                        | UnaryOp::Silu
                        | UnaryOp::HardSwish
                        | UnaryOp::Gelu,
                    )
                    | Op::Binary(BinaryOp::Max) => return 2.0,
                    Op::BatchNorm { .. } | Op::Reshape { .. } | Op::Transpose { .. } => {
                        next.push(Value::of(user));
                    }
                    // a product keeps the kind of its operand (DyReLU slopes, a
                    // gate); an add of a weight is a bias
                    Op::Binary(BinaryOp::Mul) => next.push(Value::of(user)),
                    Op::Binary(BinaryOp::Add) if other_is_weight() => {
                        next.push(Value::of(user));
                    }
                    Op::Binary(BinaryOp::Add) => return 0.5,
                    _ => {}
                }
            }
        }
        if next.is_empty() {
            break;
        }
        frontier = next;
    }
    1.0
}

/// The role of weight `w` by its use, name and shape (in that order).
pub fn role(g: &Graph, w: Value) -> Role {
    let info = g.value_info(w);
    let (name, shape) = (info.name.as_str(), info.ty.shape.as_slice());
    if let Some(v) = const_value(name) {
        return Role::Constant(v);
    }
    let fan_in = |fan_in: usize, out: Value| Role::FanIn {
        fan_in: fan_in.max(1),
        gain: gain_after(g, out),
    };
    let rank = shape.len();
    for (user, operand) in g.users(w) {
        let out = Value::of(user);
        let role = match (&g.node(user).op, operand) {
            (Op::BatchNorm { .. }, 1) => Some(Role::Scale),
            (Op::BatchNorm { .. }, 2) => Some(Role::Bias),
            (Op::BatchNorm { .. }, 3) => Some(Role::RunningMean),
            (Op::BatchNorm { .. }, 4) => Some(Role::RunningVar),
            (Op::LayerNorm { .. } | Op::GroupNorm { .. }, 1) => Some(Role::Scale),
            (Op::LayerNorm { .. } | Op::GroupNorm { .. }, 2) => Some(Role::Bias),
            (Op::Conv2d { .. }, 1) if rank == 4 => Some(fan_in(shape[1..].iter().product(), out)),
            (Op::Conv2d { .. } | Op::Gemm { .. }, 2) => Some(Role::Bias),
            (Op::Gemm { trans_b, .. }, 1) if rank == 2 => {
                Some(fan_in(if *trans_b { shape[1] } else { shape[0] }, out))
            }
            (Op::MatMul, 1) if rank >= 2 => Some(fan_in(shape[rank - 2], out)),
            // a PyTorch-layout Linear weight: matmul(x, transpose(W))
            (Op::Transpose { perm }, 0) if rank == 2 && perm == &[1, 0] => g
                .users(out)
                .into_iter()
                .find(|&(u, o)| g.node(u).op == Op::MatMul && o == 1)
                .map(|(mm, _)| fan_in(shape[1], Value::of(mm))),
            _ => None,
        };
        if let Some(r) = role {
            return r;
        }
    }
    let leaf = name.rsplit('.').next().unwrap_or(name);
    if name.contains("tokens") || leaf.contains("embed") {
        return Role::Tokens;
    }
    match leaf {
        "running_mean" => return Role::RunningMean,
        "running_var" => return Role::RunningVar,
        "bias" => return Role::Bias,
        "temperature" | "gamma" | "scale" => return Role::Scale,
        "weight" if rank <= 1 => return Role::Scale,
        _ => {}
    }
    if rank >= 2 {
        Role::FanIn {
            fan_in: shape[1..].iter().product::<usize>().max(1),
            gain: 1.0,
        }
    } else {
        Role::Bias
    }
}

fn draw(role: Role, n: usize, rng: &mut SplitMix64) -> Vec<f32> {
    let mut gen_n = |f: &mut dyn FnMut(&mut SplitMix64) -> f64| -> Vec<f32> {
        (0..n).map(|_| f(rng) as f32).collect()
    };
    match role {
        Role::Constant(v) => vec![v; n],
        Role::FanIn { fan_in, gain } => {
            let std = (f64::from(gain) / fan_in as f64).sqrt();
            gen_n(&mut |r| std * r.normal())
        }
        Role::Bias => gen_n(&mut |r| 0.02 * r.normal()),
        Role::Scale => gen_n(&mut |r| 1.0 + 0.2 * (r.unit() - 0.5)),
        Role::RunningMean => gen_n(&mut |r| 0.1 * r.normal()),
        Role::RunningVar => gen_n(&mut |r| 0.5 + r.unit()),
        Role::Tokens => gen_n(&mut |r| r.normal()),
    }
}

/// Realistic random values for every weight `g` declares, chosen from the
/// weight's role (see [`role`]), deterministic in `seed` and the weight's
/// name. i64 weights (index tensors of imported graphs) are zeros.
pub fn seeded_weights(g: &Graph, seed: u64) -> WeightStore {
    let mut store = WeightStore::new();
    for &id in g.weights() {
        let w = Value::of(id);
        let info = g.value_info(w);
        let tensor = match info.ty.dtype {
            DType::F32 => {
                let mut rng = stream(seed, &info.name);
                let data = draw(role(g, w), info.ty.numel(), &mut rng);
                Tensor::from_f32(info.ty.shape.clone(), data)
            }
            DType::I64 => Ok(Tensor::zeros(&info.ty)),
        };
        // from_f32 only fails on a length mismatch, and data has numel elements
        let tensor = tensor.expect("drawn data has the declared element count");
        store.insert(info.name.clone(), tensor);
    }
    store
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builder::GraphBuilder;

    fn small() -> Graph {
        let mut b = GraphBuilder::new("t");
        let x = b.input("x", &[1, 8, 4, 4]).unwrap();
        let y = b.scope("c").conv2d(x, 16, 3, 1, 1, 1, false).unwrap();
        let y = b.scope("bn").batch_norm(y).unwrap();
        let y = b.relu(y).unwrap();
        let y = b.scope("p").conv2d(y, 8, 1, 1, 0, 1, true).unwrap();
        let y = b.mul_scalar(y, 2.0).unwrap();
        let y = b.reshape(y, &[1, 8, 16]).unwrap();
        let y = b.scope("fc").linear(y, 5, true).unwrap();
        b.finish(vec![y]).unwrap()
    }

    fn get(s: &WeightStore, n: &str) -> Vec<f32> {
        s.get(n).unwrap().as_f32().unwrap().to_vec()
    }

    #[test]
    fn roles_from_use() {
        let g = small();
        let r = |n: &str| role(&g, g.weight_by_name(n).unwrap());
        assert_eq!(
            r("c.weight"),
            Role::FanIn {
                fan_in: 72,
                gain: 2.0
            }
        );
        assert_eq!(
            r("p.weight"),
            Role::FanIn {
                fan_in: 16,
                gain: 1.0
            }
        );
        assert_eq!(
            r("fc.weight"),
            Role::FanIn {
                fan_in: 16,
                gain: 1.0
            }
        );
        assert_eq!(r("p.bias"), Role::Bias);
        assert_eq!(r("bn.weight"), Role::Scale);
        assert_eq!(r("bn.running_mean"), Role::RunningMean);
        assert_eq!(r("bn.running_var"), Role::RunningVar);
        assert_eq!(r("const.2.0"), Role::Constant(2.0));
    }

    #[test]
    fn deterministic_per_name_and_seed() {
        let g = small();
        let a = seeded_weights(&g, 7);
        assert_eq!(a, seeded_weights(&g, 7));
        assert_ne!(get(&a, "c.weight"), get(&seeded_weights(&g, 8), "c.weight"));
        // streams differ between tensors of the same shape
        assert_ne!(get(&a, "bn.weight"), get(&a, "bn.bias"));
        assert_eq!(get(&a, "const.2.0"), vec![2.0]);
        // a tensor does not depend on the rest of the graph
        let mut b = GraphBuilder::new("u");
        let x = b.input("x", &[1, 8, 4, 4]).unwrap();
        let y = b.scope("c").conv2d(x, 16, 3, 1, 1, 1, false).unwrap();
        let y = b.relu(y).unwrap();
        let g2 = b.finish(vec![y]).unwrap();
        assert_eq!(
            get(&seeded_weights(&g2, 7), "c.weight"),
            get(&a, "c.weight")
        );
    }

    #[test]
    fn distributions() {
        let g = small();
        let s = seeded_weights(&g, 1);
        let w = get(&s, "c.weight");
        let var = w.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>() / w.len() as f64;
        let want = 2.0 / 72.0;
        assert!((var / want - 1.0).abs() < 0.15, "{var} vs {want}");
        assert!(
            get(&s, "bn.running_var")
                .iter()
                .all(|v| (0.5..=1.5).contains(v))
        );
        let gamma = get(&s, "bn.weight");
        assert!(gamma.iter().all(|v| (0.9..=1.1).contains(v)));
        assert!(gamma.iter().any(|v| *v != 1.0));
    }
}
