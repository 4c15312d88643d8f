//! Fused kernel-level ops: what the optimiser turns primitive sub-graphs into.
//!
//! Frontends never emit these (docs/ARCHITECTURE.md, "Frontends emit
//! primitive ops only"); the equality-saturation passes discover them. Each
//! fused op is *defined* by the primitive ops it stands for:
//! [`FusedOp::expand`] writes that composition against an [`Emitter`], and
//! everything else follows from it —
//!
//! - shape inference ([`FusedOp::infer`]) runs the expansion on types, so the
//!   shape rule cannot drift from the semantics (each variant's doc comment
//!   states the rule in words);
//! - the interpreter runs the expansion on tensors through its single-op
//!   `eval`, so the oracle for a fused op is the obviously-correct primitive
//!   composition, not a second hand-written kernel;
//! - [`lower_fused`] rewrites a graph's fused nodes back into primitives.
//!
//! Text form: every fused op has a name starting `fused_` and typed
//! attributes through [`crate::Op::attrs`] / [`crate::Op::from_parts`], so the
//! `.kir` printer and parser need no special case.
//!
//! One file per fused op (`conv.rs`, `linear.rs`, `conv_chain.rs`,
//! `mha.rs`, `m2f.rs`, `f2m.rs`, `sep_attn.rs`, `xca.rs`, named by the
//! op's stem) states its name, its operand layout (an `Operands` value the
//! backend's kernels read operands through, so the IR and a kernel cannot
//! disagree on the order), its attributes and its expansion; this module
//! holds the enum (its variants named by stem too: `FusedOp::M2f` is
//! `fused_m2f`), the activation vocabulary, the shared expansion pieces and
//! the dispatch. The same stem names the op's rule file in
//! `passes/src/rules/`, its kernel file in `backends/src/kernels/` and its
//! snapshot data in `passes/tests/data/` (docs/ARCHITECTURE.md, "Fused
//! ops: one stem each").
//!
//! Weight operands of linear maps are in *matmul layout* `[in, out]`
//! (`y = x @ w + b`): a PyTorch-style `[out, in]` weight arrives as
//! `transpose(@w)`, which constant folding turns into a new weight, while an
//! ONNX export that already stores `[in, out]` needs nothing.

pub mod conv;
pub mod conv_chain;
pub mod f2m;
pub mod linear;
pub mod m2f;
pub mod mha;
pub mod sep_attn;
pub mod xca;

use crate::error::IrError;
use crate::graph::{Graph, NodeId, Value};
use crate::op::{Attr, AttrReader, BinaryOp, Float, Op, ReduceKind, UnaryOp};
use crate::shape;
use crate::tensor::{Tensor, WeightStore};
use crate::types::TensorType;

/// The activation of a fused epilogue.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Act {
    /// no activation
    None,
    /// `relu`
    Relu,
    /// `relu6`
    Relu6,
    /// `hard_swish`
    HardSwish,
    /// PyTorch's hard sigmoid: `hard_sigmoid {alpha=1/6, beta=0.5}`
    HardSigmoid,
    /// `silu`
    Silu,
    /// exact `gelu`
    Gelu,
    /// Mobile-Former's dynamic ReLU `max(a1·x, a2·x)`; takes two extra
    /// operands `a1`, `a2` that broadcast to the output (per sample and
    /// channel, e.g. `[N,C,1,1]`).
    DyRelu,
}

impl Act {
    /// Every activation.
    pub const ALL: [Act; 8] = [
        Act::None,
        Act::Relu,
        Act::Relu6,
        Act::HardSwish,
        Act::HardSigmoid,
        Act::Silu,
        Act::Gelu,
        Act::DyRelu,
    ];

    /// Text name (`none`, `relu6`, `dyrelu`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Act::None => "none",
            Act::Relu => "relu",
            Act::Relu6 => "relu6",
            Act::HardSwish => "hard_swish",
            Act::HardSigmoid => "hard_sigmoid",
            Act::Silu => "silu",
            Act::Gelu => "gelu",
            Act::DyRelu => "dyrelu",
        }
    }

    /// Parses a text name.
    pub fn from_name(s: &str) -> Option<Act> {
        Act::ALL.iter().copied().find(|a| a.name() == s)
    }

    /// Extra operands the activation takes (2 for the dynamic ReLU's slopes).
    pub fn extra_operands(self) -> usize {
        if self == Act::DyRelu { 2 } else { 0 }
    }

    /// The primitive op of a parameterless activation, `None` for
    /// [`Act::None`] and [`Act::DyRelu`].
    pub fn primitive(self) -> Option<Op> {
        Some(match self {
            Act::None | Act::DyRelu => return None,
            Act::Relu => Op::Unary(UnaryOp::Relu),
            Act::Relu6 => Op::Unary(UnaryOp::Relu6),
            Act::HardSwish => Op::Unary(UnaryOp::HardSwish),
            Act::HardSigmoid => Op::HardSigmoid {
                alpha: Float(1.0 / 6.0),
                beta: Float(0.5),
            },
            Act::Silu => Op::Unary(UnaryOp::Silu),
            Act::Gelu => Op::Unary(UnaryOp::Gelu),
        })
    }

    /// The activation a primitive op computes, if it is one.
    pub fn from_primitive(op: &Op) -> Option<Act> {
        Act::ALL
            .iter()
            .copied()
            .find(|a| a.primitive().as_ref() == Some(op))
    }

    fn apply<E: Emitter>(self, e: &mut E, y: E::V, coeffs: &[E::V]) -> Result<E::V, IrError> {
        match self {
            Act::None => Ok(y),
            Act::DyRelu => {
                let p = e.op(Op::Binary(BinaryOp::Mul), &[y.clone(), coeffs[0].clone()])?;
                let q = e.op(Op::Binary(BinaryOp::Mul), &[y, coeffs[1].clone()])?;
                e.op(Op::Binary(BinaryOp::Max), &[p, q])
            }
            other => {
                let op = other.primitive().expect("parameterless activation");
                e.op(op, &[y])
            }
        }
    }
}

/// One convolution of a [`FusedOp::ConvChain`], with its epilogue. The
/// kernel size comes from the weight; dilation is 1.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConvStage {
    /// `[sh, sw]`
    pub stride: [usize; 2],
    /// `[top, left, bottom, right]`
    pub pad: [usize; 4],
    /// channel groups
    pub groups: usize,
    /// whether a bias operand follows the weight
    pub bias: bool,
    /// channel-shuffle groups applied to the biased conv output before the
    /// activation (1 = none); see [`FusedOp::Conv`]'s `shuffle`
    pub shuffle: usize,
    /// the activation after the (biased, shuffled) conv
    pub act: Act,
}

/// A fused kernel-level op. Operand lists are given per variant; optional
/// operands are present exactly when their flag says so, in the order listed.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FusedOp {
    /// `fused_conv`: conv2d → `+ bias` → channel shuffle → activation →
    /// `+ residual`. Operands: `x [N,C,H,W]`, `w [O,C/g,kh,kw]`, `bias [O]`
    /// if `bias`, `a1, a2` if `act = dyrelu`, `residual` (the conv's output
    /// shape) if `residual`. Shape rule: conv2d's; `O` divisible by
    /// `shuffle`; every other operand must broadcast to the conv output
    /// without changing it.
    Conv {
        /// `[sh, sw]`
        stride: [usize; 2],
        /// `[top, left, bottom, right]`
        pad: [usize; 4],
        /// `[dh, dw]`
        dilation: [usize; 2],
        /// channel groups
        groups: usize,
        /// a bias operand follows the weight
        bias: bool,
        /// channel-shuffle groups `G` (1 = none): ShuffleNet's
        /// `reshape [N,G,O/G,H,W] → transpose(0,2,1,3,4) → reshape
        /// [N,O,H,W]` of the biased output. Mobile-Former-26M shuffles the
        /// output of grouped convs, which no weight permutation of a
        /// grouped conv can express (the permuted conv is no longer
        /// grouped); in a kernel it is only where each row is stored.
        shuffle: usize,
        /// activation
        act: Act,
        /// a residual operand comes last, added after the activation
        residual: bool,
    },
    /// `fused_linear`: `x @ w` → `+ bias` → activation → `+ residual`.
    /// Operands: `x [..., K]`, `w [K, N]` (matmul layout), `bias [N]` if
    /// `bias`, `residual` if `residual`. Shape rule: matmul's (`[..., N]`).
    /// The dynamic ReLU is not allowed here.
    Linear {
        /// a bias operand follows the weight
        bias: bool,
        /// activation
        act: Act,
        /// a residual operand comes last, added after the activation
        residual: bool,
    },
    /// `fused_conv_chain`: a depthwise-separable (dw → pw), pointwise-MLP
    /// (pw → pw) or inverted-residual (pw → dw → pw) chain of 2–3
    /// convolutions, each with
    /// its epilogue, then an optional residual; computable tile by tile, the
    /// expanded intermediates never reaching memory. Operands: `x`, then per
    /// stage `w`, `bias` if the stage has one, `a1, a2` if its act is
    /// `dyrelu`; `residual` last if `residual`. Shape rule: the convs'
    /// shapes composed; the residual has the last conv's output shape.
    ConvChain {
        /// the convolutions, in order (2 or 3)
        stages: Vec<ConvStage>,
        /// a residual operand comes last
        residual: bool,
    },
    /// `fused_mha`: multi-head scaled dot-product attention over tokens,
    /// `concat_j softmax(scale · Q_j K_jᵀ) V_j`, heads taking contiguous
    /// channel blocks. Operands: `xq [B,Tq,Dq]`, `xk [B,Tk,Dk]`,
    /// `xv [B,Tk,Dv]`, then `(w, b)` pairs (matmul layout) for each projected
    /// side in the order q, k, v. Unprojected sides use the input as is
    /// (Mobile-Former's Former: only Q is projected, K = V = tokens). Shape
    /// rule: Q, K have one width D, V width Dv', both divisible by `heads`;
    /// output `[B, Tq, Dv']`.
    Mha {
        /// number of heads
        heads: usize,
        /// logit scale, usually `1/sqrt(D/heads)`
        scale: Float,
        /// query projection operands present
        proj_q: bool,
        /// key projection operands present
        proj_k: bool,
        /// value projection operands present
        proj_v: bool,
    },
    /// `fused_m2f`: Mobile-Former's Mobile→Former bridge. Operands:
    /// `x [N,C,H,W]`, `z [N,M,d]`, then the queries — `wq [d,C]`, `bq [C]`
    /// with `proj_q`, else `Q [N,M,C]` itself — then the gate — `wa [d,C]`,
    /// `ba [C]` with `gate`, else `G [N,M,C]` itself — then `wo [C,d]`,
    /// `bo [d]`, `gamma [d]`, `beta [d]`. Computes
    /// `LN(z + ((attn(Q, X) ⊙ G) Wo + bo))` with `Q = zWq+bq` and
    /// `G = 2·hsig(zWa+ba)`, where head `j` of the queries attends over the
    /// `L = H·W` positions of feature channels `[jC/h, (j+1)C/h)` with the
    /// raw features as keys and values. (An ONNX importer that folds
    /// constants turns the first block's `Q` and `G`, computed from the
    /// learned tokens, into weights: hence the flags.) Shape rule: output
    /// `[N,M,d]`; `C` divisible by `heads`.
    M2f {
        /// number of heads
        heads: usize,
        /// logit scale (the spec's `1/sqrt(C/heads)`)
        scale: Float,
        /// layer-norm epsilon
        eps: Float,
        /// the queries are projected from `z` (else given)
        proj_q: bool,
        /// the gate is computed from `z` (else given)
        gate: bool,
    },
    /// `fused_f2m`: Mobile-Former's Former→Mobile bridge. Operands:
    /// `y [N,C,H,W]`, `z [N,M,d]`, `wk [d,C]`, `bk [C]`, `wv [d,C]`,
    /// `bv [C]`. Every pixel's head-`j` feature slice attends over the `M`
    /// projected tokens; the result is added to `y`. Shape rule: output =
    /// `y`'s type; `C` divisible by `heads`.
    F2m {
        /// number of heads
        heads: usize,
        /// logit scale (the spec's `1/sqrt(C/heads)`)
        scale: Float,
    },
    /// `fused_sep_attn`: MobileViTv2 separable self-attention with its output
    /// projection. Operands: `u`, `wqkv [1+2d,d,1,1]`, `bqkv [1+2d]`,
    /// `wo [d,d,1,1]`, `bo [d]`. Without `patch`, `u` is the unfolded tensor
    /// `[N,d,P,Np]` and the softmax runs over axis 3 (the patches) for each
    /// pixel slot. With `patch = [ph, pw]`, `u` is the folded map
    /// `[N,d,H,W]` and the tokens of one slot are the pixels with equal
    /// `(y mod ph, x mod pw)` — unfold and fold absorbed into the indexing.
    /// Shape rule: output = `u`'s type; `H`, `W` divisible by the patch.
    SepAttn {
        /// the folded form's patch size
        patch: Option<[usize; 2]>,
    },
    /// `fused_xca`: XFormer-R's cross-feature attention (XCA form, XFA-R in
    /// models/xformer.md §2) before its output projection. Operands:
    /// `x [N,T,D]`, `wq [D,D]`, `bq [D]`, `wk`, `bk`, `wv`, `bv`, `tau [h]`.
    /// Per head, Q and K columns are L2-normalised over the tokens
    /// (`max(norm, eps)`), `A = softmax(τ · Q̂ᵀK̂)` over the last axis, and
    /// the output is `V Aᵀ`. Shape rule: output `[N,T,D]`, `D` divisible by
    /// `heads`.
    Xca {
        /// number of heads
        heads: usize,
        /// the L2 normalisation's lower bound
        eps: Float,
    },
}

/// Every fused op name, for docs and error messages.
pub const FUSED_OP_NAMES: &[&str] = &[
    conv::NAME,
    linear::NAME,
    conv_chain::NAME,
    mha::NAME,
    m2f::NAME,
    f2m::NAME,
    sep_attn::NAME,
    xca::NAME,
];

/// Something primitive ops can be applied to: types (shape inference),
/// tensors (the interpreter) or graph values ([`lower_fused`]).
pub trait Emitter {
    /// The value type: a type, a tensor or a graph value.
    type V: Clone;
    /// Applies a single-output primitive op.
    fn op(&mut self, op: Op, args: &[Self::V]) -> Result<Self::V, IrError>;
    /// A scalar `f32` constant (shape `[]`).
    fn scalar(&mut self, x: f32) -> Result<Self::V, IrError>;
    /// The type of a value.
    fn ty(&self, v: &Self::V) -> TensorType;
}

/// Shape inference as an [`Emitter`].
struct TypeEmitter;

impl Emitter for TypeEmitter {
    type V = TensorType;
    fn op(&mut self, op: Op, args: &[TensorType]) -> Result<TensorType, IrError> {
        let name = op.name();
        let mut out = shape::infer(&op, args).map_err(IrError::Graph)?;
        match out.len() {
            1 => Ok(out.remove(0)),
            n => Err(IrError::Graph(format!("{name} gives {n} results"))),
        }
    }
    fn scalar(&mut self, _x: f32) -> Result<TensorType, IrError> {
        Ok(TensorType::f32(Vec::new()))
    }
    fn ty(&self, v: &TensorType) -> TensorType {
        v.clone()
    }
}

fn reshape<E: Emitter>(e: &mut E, x: E::V, shape: &[usize]) -> Result<E::V, IrError> {
    e.op(
        Op::Reshape {
            shape: shape.to_vec(),
        },
        &[x],
    )
}

fn transpose<E: Emitter>(e: &mut E, x: E::V, perm: &[usize]) -> Result<E::V, IrError> {
    e.op(
        Op::Transpose {
            perm: perm.to_vec(),
        },
        &[x],
    )
}

fn bin<E: Emitter>(e: &mut E, b: BinaryOp, x: E::V, y: E::V) -> Result<E::V, IrError> {
    e.op(Op::Binary(b), &[x, y])
}

/// `x @ w + b`
fn linear<E: Emitter>(e: &mut E, x: &E::V, w: &E::V, b: Option<&E::V>) -> Result<E::V, IrError> {
    let y = e.op(Op::MatMul, &[x.clone(), w.clone()])?;
    match b {
        Some(b) => bin(e, BinaryOp::Add, y, b.clone()),
        None => Ok(y),
    }
}

fn channel_slice<E: Emitter>(e: &mut E, x: E::V, from: usize, to: usize) -> Result<E::V, IrError> {
    e.op(
        Op::Slice {
            axes: vec![1],
            starts: vec![from as i64],
            ends: vec![to as i64],
            steps: vec![1],
        },
        &[x],
    )
}

fn want(cond: bool, msg: impl FnOnce() -> String) -> Result<(), IrError> {
    if cond {
        Ok(())
    } else {
        Err(IrError::Graph(msg()))
    }
}

/// Checks that `v` broadcasts to `out` without changing it.
fn broadcasts_to(what: &str, v: &TensorType, out: &TensorType) -> Result<(), IrError> {
    want(
        crate::types::broadcast_shapes(&v.shape, &out.shape).as_deref() == Some(&out.shape[..]),
        || format!("{what} {v} does not broadcast to the output {out}"),
    )
}

/// Applies an epilogue to `y`: the activation (the dynamic ReLU's slopes
/// at `slopes` in `args`), then the residual at `residual`.
fn act_epilogue<E: Emitter>(
    e: &mut E,
    mut y: E::V,
    act: Act,
    slopes: Option<(usize, usize)>,
    residual: Option<usize>,
    args: &[E::V],
) -> Result<E::V, IrError> {
    let mut coeffs = Vec::new();
    if let Some((a1, a2)) = slopes {
        for a in [a1, a2] {
            let a = args[a].clone();
            broadcasts_to("dynamic-ReLU coefficient", &e.ty(&a), &e.ty(&y))?;
            coeffs.push(a);
        }
    }
    y = act.apply(e, y, &coeffs)?;
    if let Some(r) = residual {
        let r = args[r].clone();
        let (rt, yt) = (e.ty(&r), e.ty(&y));
        want(rt == yt, || {
            format!("residual {rt} must have the output type {yt}")
        })?;
        y = bin(e, BinaryOp::Add, y, r)?;
    }
    Ok(y)
}

/// An attribute list of sizes.
fn ints(v: &[usize]) -> Attr {
    Attr::Ints(v.iter().map(|&x| x as i64).collect())
}

/// Reads activation attribute `key` of op `name`.
fn read_act(a: &mut AttrReader<'_>, name: &str, key: &str) -> Result<Act, String> {
    let w = a.word(key)?;
    Act::from_name(&w).ok_or_else(|| {
        format!(
            "{name}: unknown activation `{w}` (expected one of {})",
            Act::ALL.map(Act::name).join(", ")
        )
    })
}

/// Q/K/V in per-head layout `[B, h, T, dh]` from `[B, T, D]`.
fn heads_first<E: Emitter>(e: &mut E, x: E::V, h: usize) -> Result<E::V, IrError> {
    let t = e.ty(&x);
    want(t.rank() == 3 && t.shape[2] % h == 0, || {
        format!("expected [B,T,D] with D divisible by {h} heads, got {t}")
    })?;
    let (b, n, d) = (t.shape[0], t.shape[1], t.shape[2]);
    let x = reshape(e, x, &[b, n, h, d / h])?;
    transpose(e, x, &[0, 2, 1, 3])
}

/// `[B, h, T, dh]` back to `[B, T, h·dh]`.
fn heads_merge<E: Emitter>(e: &mut E, x: E::V) -> Result<E::V, IrError> {
    let t = e.ty(&x);
    let (b, h, n, dh) = (t.shape[0], t.shape[1], t.shape[2], t.shape[3]);
    let x = transpose(e, x, &[0, 2, 1, 3])?;
    reshape(e, x, &[b, n, h * dh])
}

impl FusedOp {
    /// The text-format name.
    pub fn name(&self) -> &'static str {
        match self {
            FusedOp::Conv { .. } => conv::NAME,
            FusedOp::Linear { .. } => linear::NAME,
            FusedOp::ConvChain { .. } => conv_chain::NAME,
            FusedOp::Mha { .. } => mha::NAME,
            FusedOp::M2f { .. } => m2f::NAME,
            FusedOp::F2m { .. } => f2m::NAME,
            FusedOp::SepAttn { .. } => sep_attn::NAME,
            FusedOp::Xca { .. } => xca::NAME,
        }
    }

    /// How many operands the op takes (exact: flags decide), from its
    /// operand layout.
    pub fn num_operands(&self) -> usize {
        match self {
            FusedOp::Conv {
                bias,
                act,
                residual,
                ..
            } => conv::operands(*bias, *act, *residual).count,
            FusedOp::Linear {
                bias,
                act,
                residual,
            } => linear::operands(*bias, *act, *residual).count,
            FusedOp::ConvChain { stages, residual } => {
                conv_chain::operands(stages, *residual).count
            }
            FusedOp::Mha {
                proj_q,
                proj_k,
                proj_v,
                ..
            } => mha::operands(*proj_q, *proj_k, *proj_v).count,
            FusedOp::M2f { proj_q, gate, .. } => m2f::operands(*proj_q, *gate).count,
            FusedOp::F2m { .. } => f2m::OPERANDS.count,
            FusedOp::SepAttn { .. } => sep_attn::OPERANDS.count,
            FusedOp::Xca { .. } => xca::OPERANDS.count,
        }
    }

    /// The attributes in canonical order (see [`crate::Op::attrs`]).
    pub fn attrs(&self) -> Vec<(&'static str, Attr)> {
        match self {
            FusedOp::Conv { .. } => conv::attrs(self),
            FusedOp::Linear { .. } => linear::attrs(self),
            FusedOp::ConvChain { .. } => conv_chain::attrs(self),
            FusedOp::Mha { .. } => mha::attrs(self),
            FusedOp::M2f { .. } => m2f::attrs(self),
            FusedOp::F2m { .. } => f2m::attrs(self),
            FusedOp::SepAttn { .. } => sep_attn::attrs(self),
            FusedOp::Xca { .. } => xca::attrs(self),
        }
    }

    /// Builds a fused op from its name and attributes; `Ok(None)` when the
    /// name is not a fused op's.
    pub(crate) fn from_reader(
        name: &str,
        a: &mut AttrReader<'_>,
    ) -> Result<Option<FusedOp>, String> {
        let op = match name {
            conv::NAME => conv::read(a)?,
            linear::NAME => linear::read(a)?,
            conv_chain::NAME => conv_chain::read(a)?,
            mha::NAME => mha::read(a)?,
            m2f::NAME => m2f::read(a)?,
            f2m::NAME => f2m::read(a)?,
            sep_attn::NAME => sep_attn::read(a)?,
            xca::NAME => xca::read(a)?,
            _ => return Ok(None),
        };
        op.check_attrs().map_err(|e| format!("{name}: {e}"))?;
        Ok(Some(op))
    }

    /// Attribute checks that do not need operand types.
    fn check_attrs(&self) -> Result<(), String> {
        let pos = |what: &str, x: usize| {
            if x == 0 {
                Err(format!("{what} must be positive"))
            } else {
                Ok(())
            }
        };
        match self {
            FusedOp::Linear { act, .. } if *act == Act::DyRelu => {
                Err("the dynamic ReLU is a conv epilogue only".into())
            }
            FusedOp::ConvChain { stages, .. } if !(2..=3).contains(&stages.len()) => Err(format!(
                "a conv chain has 2 or 3 stages, got {}",
                stages.len()
            )),
            FusedOp::Conv { shuffle, .. } => pos("shuffle", *shuffle),
            FusedOp::ConvChain { stages, .. } => stages
                .iter()
                .try_for_each(|s| pos("stage shuffle", s.shuffle)),
            FusedOp::Mha { heads, .. }
            | FusedOp::M2f { heads, .. }
            | FusedOp::F2m { heads, .. }
            | FusedOp::Xca { heads, .. } => pos("heads", *heads),
            FusedOp::SepAttn { patch: Some(p) } => {
                pos("patch height", p[0])?;
                pos("patch width", p[1])
            }
            _ => Ok(()),
        }
    }

    /// Shape rule (see each variant's doc): the output type, or what is wrong.
    pub fn infer(&self, inputs: &[TensorType]) -> Result<TensorType, String> {
        self.check_attrs()?;
        if inputs.len() != self.num_operands() {
            return Err(format!(
                "{} takes {} operand(s) with these attributes, got {}",
                self.name(),
                self.num_operands(),
                inputs.len()
            ));
        }
        self.expand(&mut TypeEmitter, inputs)
            .map_err(|e| format!("{}: {}", self.name(), strip(e)))
    }

    /// Writes the primitive composition this op stands for: the definition
    /// of its meaning. `args` are the operands as the variant documents.
    pub fn expand<E: Emitter>(&self, e: &mut E, args: &[E::V]) -> Result<E::V, IrError> {
        self.check_attrs().map_err(IrError::Graph)?;
        want(args.len() == self.num_operands(), || {
            format!(
                "takes {} operand(s), got {}",
                self.num_operands(),
                args.len()
            )
        })?;
        match self {
            FusedOp::Conv { .. } => conv::expand(self, e, args),
            FusedOp::Linear { .. } => linear::expand(self, e, args),
            FusedOp::ConvChain { .. } => conv_chain::expand(self, e, args),
            FusedOp::Mha { .. } => mha::expand(self, e, args),
            FusedOp::M2f { .. } => m2f::expand(self, e, args),
            FusedOp::F2m { .. } => f2m::expand(self, e, args),
            FusedOp::SepAttn { .. } => sep_attn::expand(self, e, args),
            FusedOp::Xca { .. } => xca::expand(self, e, args),
        }
    }
}

/// ShuffleNet's channel shuffle of `y [N,C,H,W]` with `g` groups (identity
/// for `g = 1`): view channels as `[g, C/g]`, swap, flatten.
fn channel_shuffle<E: Emitter>(e: &mut E, y: E::V, g: usize) -> Result<E::V, IrError> {
    if g == 1 {
        return Ok(y);
    }
    let t = e.ty(&y);
    want(t.rank() == 4 && g > 0 && t.shape[1] % g == 0, || {
        format!("channel shuffle of {t} with {g} groups: channels must divide evenly")
    })?;
    let (n, c, h, w) = (t.shape[0], t.shape[1], t.shape[2], t.shape[3]);
    let v = reshape(e, y, &[n, g, c / g, h, w])?;
    let v = transpose(e, v, &[0, 2, 1, 3, 4])?;
    reshape(e, v, &[n, c, h, w])
}

/// `x / max(sqrt(sum(x², last axis)), eps)`
fn l2_normalize<E: Emitter>(e: &mut E, x: E::V, eps: f32) -> Result<E::V, IrError> {
    let last = e.ty(&x).rank() - 1;
    let sq = bin(e, BinaryOp::Mul, x.clone(), x.clone())?;
    let ss = e.op(
        Op::Reduce {
            kind: ReduceKind::Sum,
            axes: vec![last],
            keepdims: true,
        },
        &[sq],
    )?;
    let norm = e.op(Op::Unary(UnaryOp::Sqrt), &[ss])?;
    let eps = e.scalar(eps)?;
    let norm = bin(e, BinaryOp::Max, norm, eps)?;
    bin(e, BinaryOp::Div, x, norm)
}

/// MobileViT unfold: `[N,d,H,W]` -> `[N,d,ph·pw,(H/ph)(W/pw)]`, slot
/// `p = (y mod ph)·pw + (x mod pw)`, patch `j = (y div ph)(W/pw) + x div pw`.
pub fn unfold<E: Emitter>(e: &mut E, x: E::V, ph: usize, pw: usize) -> Result<E::V, IrError> {
    let t = e.ty(&x);
    want(
        t.rank() == 4
            && ph > 0
            && pw > 0
            && t.shape[2].is_multiple_of(ph)
            && t.shape[3].is_multiple_of(pw),
        || format!("cannot unfold {t} into {ph}x{pw} patches"),
    )?;
    let (n, d, h, w) = (t.shape[0], t.shape[1], t.shape[2], t.shape[3]);
    let x = reshape(e, x, &[n, d, h / ph, ph, w / pw, pw])?;
    let x = transpose(e, x, &[0, 1, 3, 5, 2, 4])?;
    reshape(e, x, &[n, d, ph * pw, (h / ph) * (w / pw)])
}

/// The inverse of [`unfold`] back to `shape = [N,d,H,W]`.
pub fn fold<E: Emitter>(
    e: &mut E,
    x: E::V,
    shape: &[usize],
    ph: usize,
    pw: usize,
) -> Result<E::V, IrError> {
    want(shape.len() == 4 && ph > 0 && pw > 0, || {
        format!("cannot fold into {shape:?} with {ph}x{pw} patches")
    })?;
    let (n, d, h, w) = (shape[0], shape[1], shape[2], shape[3]);
    let x = reshape(e, x, &[n, d, ph, pw, h / ph, w / pw])?;
    let x = transpose(e, x, &[0, 1, 4, 2, 5, 3])?;
    reshape(e, x, &[n, d, h, w])
}

fn strip(e: IrError) -> String {
    match e {
        IrError::Graph(m) => m,
        other => other.to_string(),
    }
}

/// Appends primitive nodes to a graph; scalars become new weights.
pub struct GraphEmitter<'a> {
    /// the graph receiving the nodes
    pub graph: &'a mut Graph,
    /// the store receiving scalar constants
    pub weights: &'a mut WeightStore,
    /// prefix of the scalar weights' names
    pub prefix: String,
    counter: usize,
}

impl<'a> GraphEmitter<'a> {
    /// An emitter adding to `graph`, naming scalars `{prefix}.c{i}`.
    pub fn new(graph: &'a mut Graph, weights: &'a mut WeightStore, prefix: String) -> Self {
        GraphEmitter {
            graph,
            weights,
            prefix,
            counter: 0,
        }
    }
}

impl Emitter for GraphEmitter<'_> {
    type V = Value;
    fn op(&mut self, op: Op, args: &[Value]) -> Result<Value, IrError> {
        self.graph.add(op, args)
    }
    fn scalar(&mut self, x: f32) -> Result<Value, IrError> {
        let name = loop {
            let name = format!("{}.c{}", self.prefix, self.counter);
            self.counter += 1;
            if self.graph.weight_by_name(&name).is_none() && !self.weights.contains(&name) {
                break name;
            }
        };
        self.weights
            .insert(name.clone(), Tensor::from_f32(Vec::new(), vec![x])?);
        self.graph.add_weight(name, TensorType::f32(Vec::new()))
    }
    fn ty(&self, v: &Value) -> TensorType {
        self.graph.value_type(*v).clone()
    }
}

/// Rewrites every fused node of `graph` into the primitive ops it stands
/// for (the inverse of the optimiser's fusion, used to check it and by
/// backends without a kernel for some fused op). Scalar constants the
/// expansions need are added to `weights`. Returns how many nodes were
/// lowered.
pub fn lower_fused(graph: &mut Graph, weights: &mut WeightStore) -> Result<usize, IrError> {
    lower_fused_where(graph, weights, |_, _| true)
}

/// [`lower_fused`] for the fused nodes `expand(graph, node)` selects only
/// (a backend keeps the ones it has kernels for). Whether a node is
/// expanded is decided on the original graph, before any expansion.
pub fn lower_fused_where(
    graph: &mut Graph,
    weights: &mut WeightStore,
    expand: impl Fn(&Graph, NodeId) -> bool,
) -> Result<usize, IrError> {
    let fused: Vec<NodeId> = graph
        .topo_order()?
        .into_iter()
        .filter(|&id| matches!(graph.node(id).op, Op::Fused(_)) && expand(graph, id))
        .collect();
    for &id in &fused {
        let Op::Fused(f) = graph.node(id).op.clone() else {
            continue;
        };
        let operands = graph.operands(id);
        let name = graph.node(id).outputs[0].name.clone();
        let mut e = GraphEmitter::new(graph, weights, format!("lowered.{name}"));
        let v = f.expand(&mut e, &operands)?;
        graph.replace_all_uses(Value::of(id), v);
        graph.remove_node(id);
    }
    Ok(fused.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The operand layouts kernels read through: positions as each op's
    /// doc lists them, and counts equal to `num_operands`.
    #[test]
    fn operand_layouts() {
        let l = conv::operands(true, Act::DyRelu, true);
        assert_eq!(
            (l.x, l.w, l.bias, l.slopes, l.residual, l.count),
            (0, 1, Some(2), Some((3, 4)), Some(5), 6)
        );
        let l = linear::operands(false, Act::Relu, true);
        assert_eq!(
            (l.bias, l.slopes, l.residual, l.count),
            (None, None, Some(2), 3)
        );
        let stage = |bias, act| ConvStage {
            stride: [1, 1],
            pad: [0; 4],
            groups: 1,
            bias,
            shuffle: 1,
            act,
        };
        let stages = [
            stage(true, Act::Relu),
            stage(false, Act::DyRelu),
            stage(true, Act::None),
        ];
        let l = conv_chain::operands(&stages, true);
        let at: Vec<_> = l.stages.iter().map(|s| (s.w, s.bias, s.slopes)).collect();
        assert_eq!(
            at,
            [
                (1, Some(2), None),
                (3, None, Some((4, 5))),
                (6, Some(7), None)
            ]
        );
        assert_eq!((l.residual, l.count), (Some(8), 9));
        let l = mha::operands(true, false, true);
        assert_eq!(
            (l.q, l.k, l.v, l.count),
            (Some((3, 4)), None, Some((5, 6)), 7)
        );
        let l = m2f::operands(false, true);
        assert_eq!(
            (l.q, l.gate, l.wo, l.beta, l.count),
            (m2f::Source::Given(2), m2f::Source::Projected(3, 4), 5, 8, 9)
        );
        for (op, count) in [
            (conv_op(Act::DyRelu, true), 6),
            (
                FusedOp::ConvChain {
                    stages: stages.to_vec(),
                    residual: true,
                },
                9,
            ),
            (
                FusedOp::M2f {
                    heads: 2,
                    scale: Float(1.0),
                    eps: Float(1e-5),
                    proj_q: false,
                    gate: true,
                },
                9,
            ),
            (
                FusedOp::F2m {
                    heads: 2,
                    scale: Float(1.0),
                },
                f2m::OPERANDS.count,
            ),
            (FusedOp::SepAttn { patch: None }, 5),
            (
                FusedOp::Xca {
                    heads: 2,
                    eps: Float(1e-6),
                },
                8,
            ),
        ] {
            assert_eq!(op.num_operands(), count, "{}", op.name());
        }
    }

    fn conv_op(act: Act, residual: bool) -> FusedOp {
        FusedOp::Conv {
            stride: [1, 1],
            pad: [1, 1, 1, 1],
            dilation: [1, 1],
            groups: 8,
            bias: true,
            shuffle: 1,
            act,
            residual,
        }
    }

    #[test]
    fn text_view_round_trips() {
        let mut shuffled = conv_op(Act::DyRelu, false);
        if let FusedOp::Conv { shuffle, .. } = &mut shuffled {
            *shuffle = 4;
        }
        let samples = vec![
            conv_op(Act::DyRelu, true),
            shuffled,
            FusedOp::Linear {
                bias: true,
                act: Act::Gelu,
                residual: false,
            },
            FusedOp::ConvChain {
                stages: vec![
                    ConvStage {
                        stride: [2, 2],
                        pad: [1, 1, 1, 1],
                        groups: 4,
                        bias: true,
                        shuffle: 4,
                        act: Act::Relu6,
                    },
                    ConvStage {
                        stride: [1, 1],
                        pad: [0; 4],
                        groups: 1,
                        bias: false,
                        shuffle: 1,
                        act: Act::None,
                    },
                ],
                residual: true,
            },
            FusedOp::Mha {
                heads: 4,
                scale: Float(0.125),
                proj_q: true,
                proj_k: false,
                proj_v: false,
            },
            FusedOp::M2f {
                heads: 2,
                scale: Float(0.25),
                eps: Float(1e-5),
                proj_q: true,
                gate: false,
            },
            FusedOp::F2m {
                heads: 2,
                scale: Float(0.25),
            },
            FusedOp::SepAttn { patch: None },
            FusedOp::SepAttn {
                patch: Some([2, 2]),
            },
            FusedOp::Xca {
                heads: 4,
                eps: Float(1e-12),
            },
        ];
        for f in samples {
            let op = Op::Fused(f);
            let attrs: Vec<(String, Attr)> = op
                .attrs()
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect();
            assert_eq!(Op::from_parts(op.name(), &attrs).unwrap(), op, "{op}");
        }
        for name in FUSED_OP_NAMES {
            let err = Op::from_parts(name, &[]).err().unwrap_or_default();
            assert!(!err.contains("unknown op"), "{name}: {err}");
        }
    }

    /// docs/ir-text.md documents every fused op: a new one fails here until
    /// it is added to the reference.
    #[test]
    fn the_text_reference_documents_every_fused_op() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/ir-text.md");
        let doc = std::fs::read_to_string(path).unwrap();
        for name in FUSED_OP_NAMES {
            assert!(doc.contains(&format!("| `{name}` |")), "{name}");
        }
    }

    #[test]
    fn shuffle_is_shufflenets_channel_shuffle() {
        // A 1×1 identity conv over 6 channels numbered 0..6, shuffled with
        // 2 groups: [g0: 0 1 2 | g1: 3 4 5] -> 0 3 1 4 2 5.
        let x = Tensor::from_f32(
            vec![1, 6, 1, 1],
            (0..6).map(|i| i as f32).collect::<Vec<f32>>(),
        )
        .unwrap();
        let mut w = vec![0.0; 36];
        for i in 0..6 {
            w[i * 6 + i] = 1.0;
        }
        let w = Tensor::from_f32(vec![6, 6, 1, 1], w).unwrap();
        let conv = |shuffle| FusedOp::Conv {
            stride: [1, 1],
            pad: [0; 4],
            dilation: [1, 1],
            groups: 1,
            bias: false,
            shuffle,
            act: Act::None,
            residual: false,
        };
        let f = conv(2);
        let y = crate::interp::eval(&Op::Fused(f.clone()), &[&x, &w]).unwrap();
        assert_eq!(y[0].as_f32().unwrap(), &[0.0, 3.0, 1.0, 4.0, 2.0, 5.0]);
        // channels must divide evenly; 0 groups is not a shuffle
        let t = |s: &[usize]| TensorType::f32(s);
        assert!(
            conv(4)
                .infer(&[t(&[1, 6, 1, 1]), t(&[6, 6, 1, 1])])
                .is_err()
        );
        assert!(
            conv(0)
                .infer(&[t(&[1, 6, 1, 1]), t(&[6, 6, 1, 1])])
                .is_err()
        );
    }

    #[test]
    fn shape_rules() {
        let f = |s: &[usize]| TensorType::f32(s);
        let t = conv_op(Act::Relu6, true)
            .infer(&[
                f(&[1, 8, 5, 5]),
                f(&[8, 1, 3, 3]),
                f(&[8]),
                f(&[1, 8, 5, 5]),
            ])
            .unwrap();
        assert_eq!(t, f(&[1, 8, 5, 5]));
        // residual of the wrong shape
        assert!(
            conv_op(Act::Relu6, true)
                .infer(&[
                    f(&[1, 8, 5, 5]),
                    f(&[8, 1, 3, 3]),
                    f(&[8]),
                    f(&[1, 8, 4, 4])
                ])
                .is_err()
        );
        // dyrelu coefficients broadcast per channel
        let t = conv_op(Act::DyRelu, false)
            .infer(&[
                f(&[2, 8, 5, 5]),
                f(&[8, 1, 3, 3]),
                f(&[8]),
                f(&[2, 8, 1, 1]),
                f(&[2, 8, 1, 1]),
            ])
            .unwrap();
        assert_eq!(t, f(&[2, 8, 5, 5]));
        let m2f = FusedOp::M2f {
            heads: 2,
            scale: Float(0.5),
            eps: Float(1e-5),
            proj_q: true,
            gate: true,
        };
        let (c, d) = (8, 12);
        let t = m2f
            .infer(&[
                f(&[1, c, 4, 4]),
                f(&[1, 3, d]),
                f(&[d, c]),
                f(&[c]),
                f(&[d, c]),
                f(&[c]),
                f(&[c, d]),
                f(&[d]),
                f(&[d]),
                f(&[d]),
            ])
            .unwrap();
        assert_eq!(t, f(&[1, 3, d]));
        let sep = FusedOp::SepAttn {
            patch: Some([2, 2]),
        };
        let t = sep
            .infer(&[
                f(&[1, 4, 6, 6]),
                f(&[9, 4, 1, 1]),
                f(&[9]),
                f(&[4, 4, 1, 1]),
                f(&[4]),
            ])
            .unwrap();
        assert_eq!(t, f(&[1, 4, 6, 6]));
        assert!(
            sep.infer(&[
                f(&[1, 4, 5, 6]),
                f(&[9, 4, 1, 1]),
                f(&[9]),
                f(&[4, 4, 1, 1]),
                f(&[4]),
            ])
            .is_err()
        );
    }
}
