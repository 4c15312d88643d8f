//! The op set: every operation a graph node can perform, with typed attributes.
//!
//! Ops come in two levels (see docs/ARCHITECTURE.md): *primitive* ops, the
//! vocabulary of an ONNX export, which frontends emit; and *fused* ops, which
//! only the optimiser creates. This module holds the primitive set; each op's
//! shape rule is documented on [`crate::shape::infer`]'s per-op helpers.
//!
//! Every op also has a generic view — a text name plus a list of named
//! [`Attr`]s — used by the text format and by the e-graph language, so that
//! neither needs a hand-written case per op.

use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};

use crate::fused::FusedOp;
use crate::types::DType;

/// An `f32` attribute with total equality, hashing and ordering by bit
/// pattern, so that ops can be hashed and compared (e-graph nodes, CSE).
#[derive(Clone, Copy, Debug)]
pub struct Float(pub f32);

impl PartialEq for Float {
    fn eq(&self, other: &Self) -> bool {
        self.0.to_bits() == other.0.to_bits()
    }
}
impl Eq for Float {}
impl Hash for Float {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.to_bits().hash(state);
    }
}
impl PartialOrd for Float {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Float {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.total_cmp(&other.0)
    }
}
impl fmt::Display for Float {
    /// Rust's shortest round-tripping representation (`1e-5`, `0.5`, `6.0`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

/// Element-wise ops of one operand.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum UnaryOp {
    /// `max(x, 0)`
    Relu,
    /// `min(max(x, 0), 6)`
    Relu6,
    /// `1 / (1 + exp(-x))`
    Sigmoid,
    /// `tanh(x)`
    Tanh,
    /// `exp(x)`
    Exp,
    /// natural logarithm
    Log,
    /// `sqrt(x)`
    Sqrt,
    /// `-x`
    Neg,
    /// `1 / x`
    Reciprocal,
    /// the error function
    Erf,
    /// `|x|`
    Abs,
    /// `x * sigmoid(x)` (a.k.a. swish)
    Silu,
    /// `x * relu6(x + 3) / 6`
    HardSwish,
    /// exact GELU: `x * (1 + erf(x / sqrt 2)) / 2`
    Gelu,
    /// tanh-form GELU: `x * (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) / 2`
    GeluTanh,
    /// `x`
    Identity,
    /// `sin(x)` (radians)
    Sin,
    /// `cos(x)` (radians)
    Cos,
}

impl UnaryOp {
    /// Every unary op, for tables and tests.
    pub const ALL: [UnaryOp; 18] = [
        UnaryOp::Relu,
        UnaryOp::Relu6,
        UnaryOp::Sigmoid,
        UnaryOp::Tanh,
        UnaryOp::Exp,
        UnaryOp::Log,
        UnaryOp::Sqrt,
        UnaryOp::Neg,
        UnaryOp::Reciprocal,
        UnaryOp::Erf,
        UnaryOp::Abs,
        UnaryOp::Silu,
        UnaryOp::HardSwish,
        UnaryOp::Gelu,
        UnaryOp::GeluTanh,
        UnaryOp::Identity,
        UnaryOp::Sin,
        UnaryOp::Cos,
    ];

    /// Text-format name.
    pub fn name(self) -> &'static str {
        match self {
            UnaryOp::Relu => "relu",
            UnaryOp::Relu6 => "relu6",
            UnaryOp::Sigmoid => "sigmoid",
            UnaryOp::Tanh => "tanh",
            UnaryOp::Exp => "exp",
            UnaryOp::Log => "log",
            UnaryOp::Sqrt => "sqrt",
            UnaryOp::Neg => "neg",
            UnaryOp::Reciprocal => "reciprocal",
            UnaryOp::Erf => "erf",
            UnaryOp::Abs => "abs",
            UnaryOp::Silu => "silu",
            UnaryOp::HardSwish => "hard_swish",
            UnaryOp::Gelu => "gelu",
            UnaryOp::GeluTanh => "gelu_tanh",
            UnaryOp::Identity => "identity",
            UnaryOp::Sin => "sin",
            UnaryOp::Cos => "cos",
        }
    }
}

/// Element-wise ops of two operands with numpy broadcasting.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BinaryOp {
    /// `a + b`
    Add,
    /// `a - b`
    Sub,
    /// `a * b`
    Mul,
    /// `a / b`
    Div,
    /// `a ^ b`
    Pow,
    /// `max(a, b)`
    Max,
    /// `min(a, b)`
    Min,
    /// floored remainder `a - floor(a/b)·b`: the sign of `b` (Python's and
    /// numpy's `%`, ONNX `Mod` with `fmod=0`)
    Mod,
    /// truncated remainder `a - trunc(a/b)·b`: the sign of `a` (C's
    /// `fmod`, ONNX `Mod` with `fmod=1`)
    Fmod,
}

impl BinaryOp {
    /// Every binary op.
    pub const ALL: [BinaryOp; 9] = [
        BinaryOp::Add,
        BinaryOp::Sub,
        BinaryOp::Mul,
        BinaryOp::Div,
        BinaryOp::Pow,
        BinaryOp::Max,
        BinaryOp::Min,
        BinaryOp::Mod,
        BinaryOp::Fmod,
    ];

    /// Text-format name.
    pub fn name(self) -> &'static str {
        match self {
            BinaryOp::Add => "add",
            BinaryOp::Sub => "sub",
            BinaryOp::Mul => "mul",
            BinaryOp::Div => "div",
            BinaryOp::Pow => "pow",
            BinaryOp::Max => "max",
            BinaryOp::Min => "min",
            BinaryOp::Mod => "mod",
            BinaryOp::Fmod => "fmod",
        }
    }
}

/// Reductions over a set of axes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ReduceKind {
    /// arithmetic mean
    Mean,
    /// sum
    Sum,
    /// maximum
    Max,
}

/// 2-D pooling kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PoolKind {
    /// maximum over the window (padding never wins)
    Max,
    /// mean over the window
    Avg,
}

/// How [`Op::Pad`] fills the border.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PadMode {
    /// a constant value
    Constant,
    /// mirror without repeating the edge (`dcb|abcd|cba`)
    Reflect,
    /// repeat the edge (`aaa|abcd|ddd`)
    Edge,
}

impl PadMode {
    fn name(self) -> &'static str {
        match self {
            PadMode::Constant => "constant",
            PadMode::Reflect => "reflect",
            PadMode::Edge => "edge",
        }
    }
}

/// How [`Op::Resize`] interpolates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ResizeMode {
    /// the nearest input pixel, chosen by a [`NearestMode`]
    Nearest,
    /// bilinear: separable linear interpolation of the two nearest rows
    /// and columns (indices clamped to the edge)
    Linear,
}

/// How [`Op::Resize`] in nearest mode rounds a source coordinate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NearestMode {
    /// `floor(x)` (PyTorch's `nearest`)
    Floor,
    /// `ceil(x)`
    Ceil,
    /// nearest, halves down
    RoundPreferFloor,
    /// nearest, halves up
    RoundPreferCeil,
}

/// How [`Op::Resize`] maps an output coordinate `x` to an input one, with
/// `s` the scale, `len_in` the input length and `len_r` the resized length
/// (`len_in · s` when the model gave scales, else the output length; ONNX's
/// `coordinate_transformation_mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CoordMode {
    /// `(x + 0.5) / s - 0.5`
    HalfPixel,
    /// as `HalfPixel`, but `0` when `len_r ≤ 1`
    PytorchHalfPixel,
    /// `x · (len_in - 1) / (len_r - 1)`, `0` when `len_r ≤ 1`
    AlignCorners,
    /// `x / s`
    Asymmetric,
}

/// A word-named enum of the text format.
macro_rules! words {
    ($t:ty { $($v:ident => $w:literal),* $(,)? }) => {
        impl $t {
            /// Every value, for tables and parsing.
            pub const ALL: &'static [$t] = &[$(<$t>::$v),*];
            /// Text-format word.
            pub fn name(self) -> &'static str {
                match self { $(<$t>::$v => $w),* }
            }
            fn from_word(w: &str) -> Option<$t> {
                Self::ALL.iter().copied().find(|v| v.name() == w)
            }
        }
    };
}
words!(ResizeMode { Nearest => "nearest", Linear => "linear" });
words!(NearestMode {
    Floor => "floor",
    Ceil => "ceil",
    RoundPreferFloor => "round_prefer_floor",
    RoundPreferCeil => "round_prefer_ceil",
});
words!(CoordMode {
    HalfPixel => "half_pixel",
    PytorchHalfPixel => "pytorch_half_pixel",
    AlignCorners => "align_corners",
    Asymmetric => "asymmetric",
});

/// One operation. Attribute conventions: axes are non-negative and already
/// normalised (frontends resolve negative axes); shapes in attributes are
/// fully static. The shape rule of each op is written on its helper in
/// [`crate::shape`].
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Op {
    /// A graph input. No operands.
    Input,
    /// A named constant whose value lives in the [`crate::WeightStore`]. No operands.
    Weight,
    /// 2-D convolution, NCHW. Operands: `x [N,C,H,W]`, `w [O,C/groups,kh,kw]`,
    /// optional `bias [O]`.
    Conv2d {
        /// `[sh, sw]`
        stride: [usize; 2],
        /// `[top, left, bottom, right]` (ONNX order: begins then ends)
        pad: [usize; 4],
        /// `[dh, dw]`
        dilation: [usize; 2],
        /// channel groups; `groups == C` is a depthwise conv
        groups: usize,
    },
    /// Batched matrix product with numpy broadcasting of the batch dims.
    MatMul,
    /// `alpha * op(a) @ op(b) + beta * c`, `a`, `b` 2-D; `c` optional and
    /// broadcast to the output.
    Gemm {
        /// scale of the product
        alpha: Float,
        /// scale of `c`
        beta: Float,
        /// use `a` transposed
        trans_a: bool,
        /// use `b` transposed
        trans_b: bool,
    },
    /// An element-wise op of one operand.
    Unary(UnaryOp),
    /// An element-wise op of two operands (broadcasting).
    Binary(BinaryOp),
    /// `min(max(x, min), max)`
    Clip {
        /// lower bound
        min: Float,
        /// upper bound
        max: Float,
    },
    /// `clamp(alpha * x + beta, 0, 1)` (PyTorch's hardsigmoid: alpha = 1/6, beta = 0.5)
    HardSigmoid {
        /// slope
        alpha: Float,
        /// offset
        beta: Float,
    },
    /// Softmax along one axis.
    Softmax {
        /// the normalised axis
        axis: usize,
    },
    /// Layer normalisation over the trailing axes `axis..`. Operands: `x`,
    /// `gamma`, optional `beta`, both shaped `x.shape[axis..]`.
    LayerNorm {
        /// first normalised axis
        axis: usize,
        /// variance epsilon
        eps: Float,
    },
    /// Group normalisation of `x [N,C,...]`: statistics per sample and group of
    /// `C/groups` channels; per-channel affine. Operands: `x`, `gamma [C]`, `beta [C]`.
    GroupNorm {
        /// number of channel groups
        groups: usize,
        /// variance epsilon
        eps: Float,
    },
    /// Inference batch norm on channel axis 1. Operands: `x`, `gamma`, `beta`,
    /// `mean`, `var`, each `[C]`.
    BatchNorm {
        /// variance epsilon
        eps: Float,
    },
    /// Reduction over `axes` (sorted, unique, non-empty).
    Reduce {
        /// which reduction
        kind: ReduceKind,
        /// reduced axes
        axes: Vec<usize>,
        /// keep reduced axes as size 1
        keepdims: bool,
    },
    /// Mean over every axis after the first two, kept as size 1.
    GlobalAvgPool,
    /// 2-D max or average pooling, NCHW.
    Pool2d {
        /// max or avg
        kind: PoolKind,
        /// `[kh, kw]`
        kernel: [usize; 2],
        /// `[sh, sw]`
        stride: [usize; 2],
        /// `[top, left, bottom, right]`
        pad: [usize; 4],
        /// average pooling: divide by the full window including padding
        count_include_pad: bool,
    },
    /// Reinterpret the row-major data with another static shape.
    Reshape {
        /// the new shape (every dim explicit)
        shape: Vec<usize>,
    },
    /// Permute axes: output axis `i` is input axis `perm[i]`.
    Transpose {
        /// the permutation
        perm: Vec<usize>,
    },
    /// Concatenate operands along an axis.
    Concat {
        /// the axis
        axis: usize,
    },
    /// Strided slice of the listed axes. Indices are absolute (not counted
    /// from the end) and clamped as ONNX does: for `step > 0` start and end
    /// into `[0, dim]`; for `step < 0` start into `[0, dim-1]`, end into
    /// `[-1, dim-1]` (`-1` = "through index 0").
    Slice {
        /// sliced axes (unique)
        axes: Vec<usize>,
        /// first index per listed axis
        starts: Vec<i64>,
        /// one-past-last index per listed axis
        ends: Vec<i64>,
        /// step per listed axis, non-zero
        steps: Vec<i64>,
    },
    /// Split along an axis into pieces of the given sizes; one output per piece.
    Split {
        /// the axis
        axis: usize,
        /// piece sizes, summing to the axis length
        sizes: Vec<usize>,
    },
    /// Remove size-1 axes.
    Squeeze {
        /// removed axes (sorted, unique)
        axes: Vec<usize>,
    },
    /// Insert size-1 axes.
    Unsqueeze {
        /// positions in the *output* (sorted, unique)
        axes: Vec<usize>,
    },
    /// Collapse to 2-D: `[prod(shape[..axis]), prod(shape[axis..])]`.
    Flatten {
        /// the split point
        axis: usize,
    },
    /// Pad every axis; `pads` is ONNX-ordered: all begins, then all ends.
    Pad {
        /// `2 * rank` non-negative amounts
        pads: Vec<usize>,
        /// border mode
        mode: PadMode,
        /// fill value for [`PadMode::Constant`]
        value: Float,
    },
    /// Broadcast to a shape (ONNX Expand: the output is the broadcast of the
    /// input shape and `shape`).
    Expand {
        /// target shape
        shape: Vec<usize>,
    },
    /// Gather constant indices along an axis (ONNX Gather). Negative indices
    /// count from the end.
    Gather {
        /// the axis
        axis: usize,
        /// the indices, row-major
        indices: Vec<i64>,
        /// shape of the index tensor (`[]` for a scalar index, which drops the axis)
        indices_shape: Vec<usize>,
    },
    /// Spatial resize of `x [N,C,H,W]` to `[N,C,size[0],size[1]]` (ONNX
    /// `Resize` on the two last axes); the per-axis rule is
    /// [`crate::interp::resize_taps`].
    Resize {
        /// nearest or linear
        mode: ResizeMode,
        /// rounding of nearest mode (ignored, and left unprinted, in linear)
        nearest: NearestMode,
        /// output → input coordinate mapping
        coord: CoordMode,
        /// `[Ho, Wo]`
        size: [usize; 2],
        /// the scales `[sh, sw]` the coordinate mapping divides by, when the
        /// model gave scales; `None`: `Ho / H` and `Wo / W` (given sizes)
        scale: Option<[Float; 2]>,
    },
    /// Convert the element type.
    Cast {
        /// the new element type
        to: DType,
    },
    /// A fused kernel-level op; only the optimiser creates these
    /// (see [`crate::fused`]).
    Fused(FusedOp),
}

/// A generic attribute value, as the text format spells it.
#[derive(Clone, Debug, PartialEq)]
pub enum Attr {
    /// `3`, `-1`
    Int(i64),
    /// `0.5`, `1e-5` (a literal with `.` or an exponent)
    Float(f32),
    /// `true` / `false`
    Bool(bool),
    /// `[1,2,3]` (also used for an empty list `[]`)
    Ints(Vec<i64>),
    /// a bare word: `reflect`, `i64`
    Word(String),
}

impl fmt::Display for Attr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Attr::Int(i) => write!(f, "{i}"),
            Attr::Float(x) => write!(f, "{}", Float(*x)),
            Attr::Bool(b) => write!(f, "{b}"),
            Attr::Ints(v) => {
                f.write_str("[")?;
                for (i, x) in v.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{x}")?;
                }
                f.write_str("]")
            }
            Attr::Word(w) => f.write_str(w),
        }
    }
}

/// How many operands an op takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Arity {
    /// fewest operands
    pub min: usize,
    /// most operands (`usize::MAX` = variadic)
    pub max: usize,
}

impl fmt::Display for Arity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.min == self.max {
            write!(f, "{}", self.min)
        } else if self.max == usize::MAX {
            write!(f, "at least {}", self.min)
        } else {
            write!(f, "{} to {}", self.min, self.max)
        }
    }
}

const fn arity(min: usize, max: usize) -> Arity {
    Arity { min, max }
}

/// Every name [`Op::from_parts`] accepts, for error messages and docs.
pub const OP_NAMES: &[&str] = &[
    "conv2d",
    "matmul",
    "gemm",
    "relu",
    "relu6",
    "sigmoid",
    "tanh",
    "exp",
    "log",
    "sqrt",
    "neg",
    "reciprocal",
    "erf",
    "abs",
    "silu",
    "hard_swish",
    "gelu",
    "gelu_tanh",
    "identity",
    "sin",
    "cos",
    "add",
    "sub",
    "mul",
    "div",
    "pow",
    "max",
    "min",
    "mod",
    "fmod",
    "clip",
    "hard_sigmoid",
    "softmax",
    "layer_norm",
    "group_norm",
    "batch_norm",
    "reduce_mean",
    "reduce_sum",
    "reduce_max",
    "global_avg_pool",
    "max_pool2d",
    "avg_pool2d",
    "reshape",
    "transpose",
    "concat",
    "slice",
    "split",
    "squeeze",
    "unsqueeze",
    "flatten",
    "pad",
    "expand",
    "gather",
    "cast",
    "resize",
];

impl Op {
    /// A resize with its nearest-rounding mode made canonical: the given one
    /// in nearest mode, `round_prefer_floor` (ignored, unprinted) in linear
    /// mode, so equal resizes compare equal whoever built them.
    pub fn resize(
        mode: ResizeMode,
        nearest: NearestMode,
        coord: CoordMode,
        size: [usize; 2],
        scale: Option<[Float; 2]>,
    ) -> Op {
        Op::Resize {
            mode,
            nearest: if mode == ResizeMode::Nearest {
                nearest
            } else {
                NearestMode::RoundPreferFloor
            },
            coord,
            size,
            scale,
        }
    }

    /// The text-format name (`conv2d`, `layer_norm`, ...).
    pub fn name(&self) -> &'static str {
        match self {
            Op::Input => "input",
            Op::Weight => "weight",
            Op::Conv2d { .. } => "conv2d",
            Op::MatMul => "matmul",
            Op::Gemm { .. } => "gemm",
            Op::Unary(u) => u.name(),
            Op::Binary(b) => b.name(),
            Op::Clip { .. } => "clip",
            Op::HardSigmoid { .. } => "hard_sigmoid",
            Op::Softmax { .. } => "softmax",
            Op::LayerNorm { .. } => "layer_norm",
            Op::GroupNorm { .. } => "group_norm",
            Op::BatchNorm { .. } => "batch_norm",
            Op::Reduce { kind, .. } => match kind {
                ReduceKind::Mean => "reduce_mean",
                ReduceKind::Sum => "reduce_sum",
                ReduceKind::Max => "reduce_max",
            },
            Op::GlobalAvgPool => "global_avg_pool",
            Op::Pool2d { kind, .. } => match kind {
                PoolKind::Max => "max_pool2d",
                PoolKind::Avg => "avg_pool2d",
            },
            Op::Reshape { .. } => "reshape",
            Op::Transpose { .. } => "transpose",
            Op::Concat { .. } => "concat",
            Op::Slice { .. } => "slice",
            Op::Split { .. } => "split",
            Op::Squeeze { .. } => "squeeze",
            Op::Unsqueeze { .. } => "unsqueeze",
            Op::Flatten { .. } => "flatten",
            Op::Pad { .. } => "pad",
            Op::Expand { .. } => "expand",
            Op::Gather { .. } => "gather",
            Op::Cast { .. } => "cast",
            Op::Resize { .. } => "resize",
            Op::Fused(f) => f.name(),
        }
    }

    /// Whether this is a leaf (graph input or weight) rather than a computation.
    pub fn is_leaf(&self) -> bool {
        matches!(self, Op::Input | Op::Weight)
    }

    /// How many operands the op takes.
    pub fn arity(&self) -> Arity {
        match self {
            Op::Input | Op::Weight => arity(0, 0),
            Op::Conv2d { .. } | Op::Gemm { .. } | Op::LayerNorm { .. } => arity(2, 3),
            Op::MatMul | Op::Binary(_) => arity(2, 2),
            Op::GroupNorm { .. } => arity(3, 3),
            Op::BatchNorm { .. } => arity(5, 5),
            Op::Concat { .. } => arity(1, usize::MAX),
            Op::Fused(f) => arity(f.num_operands(), f.num_operands()),
            _ => arity(1, 1),
        }
    }

    /// How many values the op produces.
    pub fn num_outputs(&self) -> usize {
        match self {
            Op::Split { sizes, .. } => sizes.len(),
            _ => 1,
        }
    }

    /// The attributes the text format prints, in their canonical order.
    /// Attributes equal to their default are left out where
    /// [`Op::from_parts`] documents a default.
    pub fn attrs(&self) -> Vec<(&'static str, Attr)> {
        fn ints<T: Copy + TryInto<i64>>(v: &[T]) -> Attr {
            // Attribute values are shapes and axes, far below i64::MAX.
            Attr::Ints(
                v.iter()
                    .map(|&x| x.try_into().unwrap_or(i64::MAX))
                    .collect(),
            )
        }
        let int = |x: usize| Attr::Int(i64::try_from(x).unwrap_or(i64::MAX));
        match self {
            Op::Input
            | Op::Weight
            | Op::MatMul
            | Op::Unary(_)
            | Op::Binary(_)
            | Op::GlobalAvgPool => vec![],
            Op::Conv2d {
                stride,
                pad,
                dilation,
                groups,
            } => {
                let mut a = vec![("stride", ints(stride)), ("pad", ints(pad))];
                if *dilation != [1, 1] {
                    a.push(("dilation", ints(dilation)));
                }
                a.push(("groups", int(*groups)));
                a
            }
            Op::Gemm {
                alpha,
                beta,
                trans_a,
                trans_b,
            } => vec![
                ("alpha", Attr::Float(alpha.0)),
                ("beta", Attr::Float(beta.0)),
                ("trans_a", Attr::Bool(*trans_a)),
                ("trans_b", Attr::Bool(*trans_b)),
            ],
            Op::Clip { min, max } => vec![("min", Attr::Float(min.0)), ("max", Attr::Float(max.0))],
            Op::HardSigmoid { alpha, beta } => {
                vec![
                    ("alpha", Attr::Float(alpha.0)),
                    ("beta", Attr::Float(beta.0)),
                ]
            }
            Op::Softmax { axis } => vec![("axis", int(*axis))],
            Op::LayerNorm { axis, eps } => vec![("axis", int(*axis)), ("eps", Attr::Float(eps.0))],
            Op::GroupNorm { groups, eps } => {
                vec![("groups", int(*groups)), ("eps", Attr::Float(eps.0))]
            }
            Op::BatchNorm { eps } => vec![("eps", Attr::Float(eps.0))],
            Op::Reduce { axes, keepdims, .. } => {
                vec![("axes", ints(axes)), ("keepdims", Attr::Bool(*keepdims))]
            }
            Op::Pool2d {
                kind,
                kernel,
                stride,
                pad,
                count_include_pad,
            } => {
                let mut a = vec![
                    ("kernel", ints(kernel)),
                    ("stride", ints(stride)),
                    ("pad", ints(pad)),
                ];
                if *kind == PoolKind::Avg {
                    a.push(("count_include_pad", Attr::Bool(*count_include_pad)));
                }
                a
            }
            Op::Reshape { shape } => vec![("shape", ints(shape))],
            Op::Transpose { perm } => vec![("perm", ints(perm))],
            Op::Concat { axis } => vec![("axis", int(*axis))],
            Op::Slice {
                axes,
                starts,
                ends,
                steps,
            } => vec![
                ("axes", ints(axes)),
                ("starts", ints(starts)),
                ("ends", ints(ends)),
                ("steps", ints(steps)),
            ],
            Op::Split { axis, sizes } => vec![("axis", int(*axis)), ("sizes", ints(sizes))],
            Op::Squeeze { axes } | Op::Unsqueeze { axes } => vec![("axes", ints(axes))],
            Op::Flatten { axis } => vec![("axis", int(*axis))],
            Op::Pad { pads, mode, value } => {
                let mut a = vec![
                    ("pads", ints(pads)),
                    ("mode", Attr::Word(mode.name().into())),
                ];
                if *mode == PadMode::Constant {
                    a.push(("value", Attr::Float(value.0)));
                }
                a
            }
            Op::Expand { shape } => vec![("shape", ints(shape))],
            Op::Gather {
                axis,
                indices,
                indices_shape,
            } => vec![
                ("axis", int(*axis)),
                ("indices", ints(indices)),
                ("indices_shape", ints(indices_shape)),
            ],
            Op::Cast { to } => vec![("to", Attr::Word(to.name().into()))],
            Op::Resize {
                mode,
                nearest,
                coord,
                size,
                scale,
            } => {
                let mut v = vec![("mode", Attr::Word(mode.name().into()))];
                if *mode == ResizeMode::Nearest {
                    v.push(("nearest", Attr::Word(nearest.name().into())));
                }
                v.push(("coord", Attr::Word(coord.name().into())));
                v.push(("size", ints(size)));
                if let Some([h, w]) = scale {
                    v.push(("scale_h", Attr::Float(h.0)));
                    v.push(("scale_w", Attr::Float(w.0)));
                }
                v
            }
            Op::Fused(f) => f.attrs(),
        }
    }

    /// Builds an op from its text name and attributes. Every attribute listed
    /// by [`Op::attrs`] is required except these defaults: conv2d
    /// `dilation=[1,1]`; avg_pool2d `count_include_pad=false`; pad
    /// `value=0.0` (and `mode=constant`). Unknown or duplicate attributes are
    /// errors. The error string says what was wrong; the caller adds the place.
    pub fn from_parts(name: &str, attrs: &[(String, Attr)]) -> Result<Op, String> {
        let mut a = AttrReader::new(name, attrs)?;
        let op = match name {
            "input" | "weight" => {
                return Err(format!(
                    "`{name}` is declared in the graph header, not used as an op"
                ));
            }
            "conv2d" => Op::Conv2d {
                stride: a.array("stride")?,
                pad: a.array("pad")?,
                dilation: a.opt("dilation", |a, k| a.array(k))?.unwrap_or([1, 1]),
                groups: a.usize("groups")?,
            },
            "matmul" => Op::MatMul,
            "gemm" => Op::Gemm {
                alpha: Float(a.float("alpha")?),
                beta: Float(a.float("beta")?),
                trans_a: a.bool("trans_a")?,
                trans_b: a.bool("trans_b")?,
            },
            "clip" => Op::Clip {
                min: Float(a.float("min")?),
                max: Float(a.float("max")?),
            },
            "hard_sigmoid" => Op::HardSigmoid {
                alpha: Float(a.float("alpha")?),
                beta: Float(a.float("beta")?),
            },
            "softmax" => Op::Softmax {
                axis: a.usize("axis")?,
            },
            "layer_norm" => Op::LayerNorm {
                axis: a.usize("axis")?,
                eps: Float(a.float("eps")?),
            },
            "group_norm" => Op::GroupNorm {
                groups: a.usize("groups")?,
                eps: Float(a.float("eps")?),
            },
            "batch_norm" => Op::BatchNorm {
                eps: Float(a.float("eps")?),
            },
            "reduce_mean" | "reduce_sum" | "reduce_max" => Op::Reduce {
                kind: match name {
                    "reduce_mean" => ReduceKind::Mean,
                    "reduce_sum" => ReduceKind::Sum,
                    _ => ReduceKind::Max,
                },
                axes: a.usizes("axes")?,
                keepdims: a.bool("keepdims")?,
            },
            "global_avg_pool" => Op::GlobalAvgPool,
            "max_pool2d" | "avg_pool2d" => {
                let kind = if name == "max_pool2d" {
                    PoolKind::Max
                } else {
                    PoolKind::Avg
                };
                Op::Pool2d {
                    kind,
                    kernel: a.array("kernel")?,
                    stride: a.array("stride")?,
                    pad: a.array("pad")?,
                    count_include_pad: if kind == PoolKind::Avg {
                        a.opt("count_include_pad", |a, k| a.bool(k))?
                            .unwrap_or(false)
                    } else {
                        false
                    },
                }
            }
            "reshape" => Op::Reshape {
                shape: a.usizes("shape")?,
            },
            "transpose" => Op::Transpose {
                perm: a.usizes("perm")?,
            },
            "concat" => Op::Concat {
                axis: a.usize("axis")?,
            },
            "slice" => Op::Slice {
                axes: a.usizes("axes")?,
                starts: a.ints("starts")?,
                ends: a.ints("ends")?,
                steps: a.ints("steps")?,
            },
            "split" => Op::Split {
                axis: a.usize("axis")?,
                sizes: a.usizes("sizes")?,
            },
            "squeeze" => Op::Squeeze {
                axes: a.usizes("axes")?,
            },
            "unsqueeze" => Op::Unsqueeze {
                axes: a.usizes("axes")?,
            },
            "flatten" => Op::Flatten {
                axis: a.usize("axis")?,
            },
            "pad" => {
                let pads = a.usizes("pads")?;
                let mode = match a.opt("mode", |a, k| a.word(k))?.as_deref() {
                    None | Some("constant") => PadMode::Constant,
                    Some("reflect") => PadMode::Reflect,
                    Some("edge") => PadMode::Edge,
                    Some(other) => {
                        return Err(format!(
                            "pad: unknown mode `{other}` (expected constant, reflect or edge)"
                        ));
                    }
                };
                let value = if mode == PadMode::Constant {
                    a.opt("value", |a, k| a.float(k))?.unwrap_or(0.0)
                } else {
                    0.0
                };
                Op::Pad {
                    pads,
                    mode,
                    value: Float(value),
                }
            }
            "expand" => Op::Expand {
                shape: a.usizes("shape")?,
            },
            "gather" => Op::Gather {
                axis: a.usize("axis")?,
                indices: a.ints("indices")?,
                indices_shape: a.usizes("indices_shape")?,
            },
            "resize" => {
                let word = |a: &mut AttrReader, k: &str| a.word(k);
                let w = word(&mut a, "mode")?;
                let mode = ResizeMode::from_word(&w).ok_or_else(|| {
                    format!("resize: unknown mode `{w}` (expected nearest or linear)")
                })?;
                let nearest = match a.opt("nearest", word)? {
                    None => NearestMode::RoundPreferFloor,
                    Some(w) if mode == ResizeMode::Nearest => NearestMode::from_word(&w)
                        .ok_or_else(|| format!("resize: unknown nearest mode `{w}`"))?,
                    Some(_) => return Err("resize: `nearest` is only for mode=nearest".into()),
                };
                let w = word(&mut a, "coord")?;
                let coord = CoordMode::from_word(&w)
                    .ok_or_else(|| format!("resize: unknown coord mode `{w}`"))?;
                let size = a.array("size")?;
                let sh = a.opt("scale_h", |a, k| a.float(k))?;
                let sw = a.opt("scale_w", |a, k| a.float(k))?;
                let scale = match (sh, sw) {
                    (Some(h), Some(w)) => Some([Float(h), Float(w)]),
                    (None, None) => None,
                    _ => return Err("resize: give both scale_h and scale_w or neither".into()),
                };
                Op::resize(mode, nearest, coord, size, scale)
            }
            "cast" => {
                let w = a.word("to")?;
                Op::Cast {
                    to: DType::from_name(&w).ok_or_else(|| {
                        format!("cast: unknown dtype `{w}` (expected f32 or i64)")
                    })?,
                }
            }
            _ => {
                if let Some(f) = FusedOp::from_reader(name, &mut a)? {
                    Op::Fused(f)
                } else if let Some(u) = UnaryOp::ALL.iter().find(|u| u.name() == name) {
                    Op::Unary(*u)
                } else if let Some(b) = BinaryOp::ALL.iter().find(|b| b.name() == name) {
                    Op::Binary(*b)
                } else {
                    return Err(format!("unknown op `{name}`"));
                }
            }
        };
        a.finish()?;
        Ok(op)
    }
}

impl fmt::Display for Op {
    /// `name {k=v, ...}` (attributes only when there are any).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())?;
        let attrs = self.attrs();
        if !attrs.is_empty() {
            f.write_str(" {")?;
            for (i, (k, v)) in attrs.iter().enumerate() {
                if i > 0 {
                    f.write_str(", ")?;
                }
                write!(f, "{k}={v}")?;
            }
            f.write_str("}")?;
        }
        Ok(())
    }
}

/// Typed access to a parsed attribute list, tracking which were used so that
/// unknown attributes are reported.
pub(crate) struct AttrReader<'a> {
    op: &'a str,
    attrs: &'a [(String, Attr)],
    used: Vec<bool>,
}

impl<'a> AttrReader<'a> {
    fn new(op: &'a str, attrs: &'a [(String, Attr)]) -> Result<Self, String> {
        for (i, (k, _)) in attrs.iter().enumerate() {
            if attrs[..i].iter().any(|(k2, _)| k2 == k) {
                return Err(format!("{op}: attribute `{k}` given twice"));
            }
        }
        Ok(AttrReader {
            op,
            attrs,
            used: vec![false; attrs.len()],
        })
    }

    fn take(&mut self, key: &str) -> Option<&'a Attr> {
        let i = self.attrs.iter().position(|(k, _)| k == key)?;
        self.used[i] = true;
        Some(&self.attrs[i].1)
    }

    fn get(&mut self, key: &str) -> Result<&'a Attr, String> {
        let op = self.op;
        self.take(key)
            .ok_or_else(|| format!("{op}: missing attribute `{key}`"))
    }

    pub(crate) fn opt<T>(
        &mut self,
        key: &str,
        f: impl FnOnce(&mut Self, &str) -> Result<T, String>,
    ) -> Result<Option<T>, String> {
        if self.attrs.iter().any(|(k, _)| k == key) {
            f(self, key).map(Some)
        } else {
            Ok(None)
        }
    }

    fn wrong(&self, key: &str, want: &str, got: &Attr) -> String {
        format!("{}: attribute `{key}` must be {want}, got `{got}`", self.op)
    }

    pub(crate) fn int(&mut self, key: &str) -> Result<i64, String> {
        match self.get(key)? {
            Attr::Int(i) => Ok(*i),
            other => Err(self.wrong(key, "an integer", other)),
        }
    }

    pub(crate) fn usize(&mut self, key: &str) -> Result<usize, String> {
        let i = self.int(key)?;
        usize::try_from(i).map_err(|_| {
            format!(
                "{}: attribute `{key}` must be non-negative, got {i}",
                self.op
            )
        })
    }

    pub(crate) fn float(&mut self, key: &str) -> Result<f32, String> {
        match self.get(key)? {
            Attr::Float(x) => Ok(*x),
            // An integer literal is accepted where a float is expected (`max=6`).
            Attr::Int(i) => Ok(*i as f32),
            other => Err(self.wrong(key, "a number", other)),
        }
    }

    pub(crate) fn bool(&mut self, key: &str) -> Result<bool, String> {
        match self.get(key)? {
            Attr::Bool(b) => Ok(*b),
            other => Err(self.wrong(key, "true or false", other)),
        }
    }

    pub(crate) fn word(&mut self, key: &str) -> Result<String, String> {
        match self.get(key)? {
            Attr::Word(w) => Ok(w.clone()),
            other => Err(self.wrong(key, "a word", other)),
        }
    }

    pub(crate) fn ints(&mut self, key: &str) -> Result<Vec<i64>, String> {
        match self.get(key)? {
            Attr::Ints(v) => Ok(v.clone()),
            other => Err(self.wrong(key, "a list of integers", other)),
        }
    }

    pub(crate) fn usizes(&mut self, key: &str) -> Result<Vec<usize>, String> {
        let v = self.ints(key)?;
        v.iter()
            .map(|&i| usize::try_from(i))
            .collect::<Result<_, _>>()
            .map_err(|_| {
                format!(
                    "{}: attribute `{key}` must be non-negative, got {v:?}",
                    self.op
                )
            })
    }

    pub(crate) fn array<const N: usize>(&mut self, key: &str) -> Result<[usize; N], String> {
        let v = self.usizes(key)?;
        let len = v.len();
        v.try_into().map_err(|_| {
            format!(
                "{}: attribute `{key}` must have {N} entries, got {len}",
                self.op
            )
        })
    }

    fn finish(self) -> Result<(), String> {
        match self.used.iter().position(|u| !u) {
            Some(i) => Err(format!(
                "{}: unknown attribute `{}`",
                self.op, self.attrs[i].0
            )),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every name in `OP_NAMES` builds from its printed attributes and prints
    /// back the same: the generic view and the typed enum agree.
    #[test]
    fn names_and_attrs_round_trip() {
        let samples = [
            Op::Conv2d {
                stride: [2, 2],
                pad: [1, 0, 1, 0],
                dilation: [2, 1],
                groups: 4,
            },
            Op::Gemm {
                alpha: Float(1.0),
                beta: Float(0.5),
                trans_a: false,
                trans_b: true,
            },
            Op::Pool2d {
                kind: PoolKind::Avg,
                kernel: [3, 3],
                stride: [2, 2],
                pad: [1, 1, 1, 1],
                count_include_pad: true,
            },
            Op::Pad {
                pads: vec![0, 0, 1, 1, 0, 0, 1, 1],
                mode: PadMode::Constant,
                value: Float(-1.5),
            },
            Op::Pad {
                pads: vec![1, 1],
                mode: PadMode::Reflect,
                value: Float(0.0),
            },
            Op::Cast { to: DType::I64 },
            Op::Gather {
                axis: 1,
                indices: vec![0],
                indices_shape: vec![],
            },
            Op::LayerNorm {
                axis: 2,
                eps: Float(1e-5),
            },
            Op::Resize {
                mode: ResizeMode::Nearest,
                nearest: NearestMode::Floor,
                coord: CoordMode::Asymmetric,
                size: [8, 6],
                scale: Some([Float(2.0), Float(1.5)]),
            },
            Op::Resize {
                mode: ResizeMode::Linear,
                nearest: NearestMode::RoundPreferFloor,
                coord: CoordMode::PytorchHalfPixel,
                size: [3, 5],
                scale: None,
            },
        ];
        for op in samples {
            let attrs: Vec<(String, Attr)> = op
                .attrs()
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect();
            assert_eq!(Op::from_parts(op.name(), &attrs).unwrap(), op, "{op}");
        }
        for u in UnaryOp::ALL {
            assert_eq!(Op::from_parts(u.name(), &[]).unwrap(), Op::Unary(u));
        }
        for b in BinaryOp::ALL {
            assert_eq!(Op::from_parts(b.name(), &[]).unwrap(), Op::Binary(b));
        }
        for name in OP_NAMES {
            // Each listed name is known (it may lack attributes, but it is not "unknown op").
            let err = Op::from_parts(name, &[]).err().unwrap_or_default();
            assert!(!err.contains("unknown op"), "{name}: {err}");
        }
    }

    #[test]
    fn defaults_and_errors() {
        let conv = Op::from_parts(
            "conv2d",
            &[
                ("stride".into(), Attr::Ints(vec![1, 1])),
                ("pad".into(), Attr::Ints(vec![0, 0, 0, 0])),
                ("groups".into(), Attr::Int(1)),
            ],
        )
        .unwrap();
        assert!(matches!(
            conv,
            Op::Conv2d {
                dilation: [1, 1],
                ..
            }
        ));
        assert!(
            Op::from_parts("conv3d", &[])
                .unwrap_err()
                .contains("unknown op")
        );
        let e = Op::from_parts("softmax", &[("axis".into(), Attr::Int(-1))]).unwrap_err();
        assert!(e.contains("non-negative"), "{e}");
        let e = Op::from_parts(
            "softmax",
            &[
                ("axis".into(), Attr::Int(1)),
                ("bogus".into(), Attr::Int(1)),
            ],
        )
        .unwrap_err();
        assert!(e.contains("unknown attribute `bogus`"), "{e}");
        let e = Op::from_parts(
            "softmax",
            &[("axis".into(), Attr::Int(1)), ("axis".into(), Attr::Int(1))],
        )
        .unwrap_err();
        assert!(e.contains("twice"), "{e}");
    }

    #[test]
    fn display() {
        let op = Op::Conv2d {
            stride: [1, 1],
            pad: [1, 1, 1, 1],
            dilation: [1, 1],
            groups: 96,
        };
        assert_eq!(
            op.to_string(),
            "conv2d {stride=[1,1], pad=[1,1,1,1], groups=96}"
        );
        assert_eq!(Float(1e-5).to_string(), "1e-5");
        assert_eq!(Float(6.0).to_string(), "6.0");
    }
}
