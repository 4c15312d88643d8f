//! `GraphBuilder`: builds primitive-op graphs in the style of model code.
//!
//! Model code reads like its PyTorch original: open a scope named like the
//! module (`b.scope("stages.2.1")`), call layer helpers (`conv2d`,
//! `batch_norm`, `linear`, ...) that declare their weights under that scope
//! with the checkpoint's names and layouts, and combine the returned value
//! handles. Every helper emits *primitive* ops only, spelled the way an ONNX
//! export spells the layer (a Linear is `matmul(x, transpose(W)) + b`), so
//! the optimiser has to discover every fusion itself. Errors from shape
//! inference propagate as `Result`s; nothing here panics on bad shapes.
//!
//! Scalar constants (the `2` of `2·hsig(x)`, an attention scale) are weights
//! too, as in an ONNX export where they are initialisers. Their value is
//! written in their name (`@const.2.0`, see [`const_name`]) so that any
//! consumer that only sees the graph — seeded initialisation, checkpoint
//! binding, a hand-written `.kir` file — knows it without a side table.

use std::ops::{Deref, DerefMut};

use kiln_ir::{BinaryOp, Float, Graph, Op, ReduceKind, TensorType, UnaryOp, Value};

use crate::FrontendError;

/// Prefix of the weight names that hold scalar constants.
pub const CONST_PREFIX: &str = "const.";

/// The weight name of the scalar constant `v`: `const.` followed by Rust's
/// shortest round-tripping spelling of `v`, with `-` written `m` so that the
/// name stays a plain dotted identifier (`const.2.0`, `const.1em12`,
/// `const.m1.0`).
pub fn const_name(v: f32) -> String {
    format!("{CONST_PREFIX}{}", format!("{v:?}").replace('-', "m"))
}

/// The value a constant's weight name encodes, or `None` when `name` is not
/// exactly a name [`const_name`] produces (so `const.2` or `const.2.00` are
/// not constants: each value has one spelling).
pub fn const_value(name: &str) -> Option<f32> {
    let body = name.strip_prefix(CONST_PREFIX)?;
    let v: f32 = body.replace('m', "-").parse().ok()?;
    (const_name(v) == name).then_some(v)
}

/// Builds a [`Graph`] layer by layer with scoped weight names. See the
/// module docs.
#[derive(Debug)]
pub struct GraphBuilder {
    graph: Graph,
    scope: Vec<String>,
}

/// A named scope, open while this guard lives. It dereferences to the
/// builder, so layer helpers are called on it directly; nested scopes are
/// joined with `.`.
#[derive(Debug)]
#[must_use = "the scope closes when the guard is dropped"]
pub struct Scope<'a> {
    builder: &'a mut GraphBuilder,
    depth: usize,
}

impl Deref for Scope<'_> {
    type Target = GraphBuilder;
    fn deref(&self) -> &GraphBuilder {
        self.builder
    }
}

impl DerefMut for Scope<'_> {
    fn deref_mut(&mut self) -> &mut GraphBuilder {
        self.builder
    }
}

impl Drop for Scope<'_> {
    fn drop(&mut self) {
        self.builder.scope.truncate(self.depth);
    }
}

fn zoo_err(msg: impl Into<String>) -> FrontendError {
    FrontendError::Zoo(msg.into())
}

impl GraphBuilder {
    /// A builder for an empty graph called `name`.
    pub fn new(name: impl Into<String>) -> GraphBuilder {
        GraphBuilder {
            graph: Graph::new(name),
            scope: Vec::new(),
        }
    }

    /// The graph built so far.
    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// Sets the outputs, verifies the graph and returns it.
    pub fn finish(mut self, outputs: Vec<Value>) -> Result<Graph, FrontendError> {
        self.graph.set_outputs(outputs);
        kiln_ir::verify(&self.graph)?;
        Ok(self.graph)
    }

    /// Opens the scope `name` (which may itself contain dots) inside the
    /// current one until the returned guard is dropped.
    pub fn scope(&mut self, name: impl AsRef<str>) -> Scope<'_> {
        let depth = self.scope.len();
        let name = name.as_ref();
        if !name.is_empty() {
            self.scope.push(name.to_string());
        }
        Scope {
            builder: self,
            depth,
        }
    }

    /// The full name of `leaf` in the current scope (`stem.conv.weight`).
    pub fn path(&self, leaf: &str) -> String {
        let mut parts: Vec<&str> = self.scope.iter().map(String::as_str).collect();
        if !leaf.is_empty() {
            parts.push(leaf);
        }
        parts.join(".")
    }

    /// The shape of a value.
    pub fn shape(&self, v: Value) -> Result<Vec<usize>, FrontendError> {
        Ok(self.graph.try_value_info(v)?.ty.shape.clone())
    }

    /// Declares a graph input.
    pub fn input(&mut self, name: &str, shape: &[usize]) -> Result<Value, FrontendError> {
        Ok(self.graph.add_input(name, TensorType::f32(shape))?)
    }

    /// Declares the f32 weight `{scope}.{leaf}`.
    pub fn param(&mut self, leaf: &str, shape: &[usize]) -> Result<Value, FrontendError> {
        let name = self.path(leaf);
        Ok(self.graph.add_weight(name, TensorType::f32(shape))?)
    }

    /// The scalar constant `v` (declared once per graph, outside any scope).
    pub fn constant(&mut self, v: f32) -> Result<Value, FrontendError> {
        let name = const_name(v);
        match self.graph.weight_by_name(&name) {
            Some(w) => Ok(w),
            None => Ok(self.graph.add_weight(name, TensorType::f32([]))?),
        }
    }

    /// Any op on existing values.
    pub fn op(&mut self, op: Op, operands: &[Value]) -> Result<Value, FrontendError> {
        Ok(self.graph.add(op, operands)?)
    }

    // ----- layers that own weights -------------------------------------

    /// `Conv2d(in, out_ch, k, stride, pad, groups, bias)` on NCHW `x`:
    /// declares `{scope}.weight [out_ch, in/groups, k, k]` and, with `bias`,
    /// `{scope}.bias [out_ch]`.
    #[allow(clippy::too_many_arguments)]
    pub fn conv2d(
        &mut self,
        x: Value,
        out_ch: usize,
        k: usize,
        stride: usize,
        pad: usize,
        groups: usize,
        bias: bool,
    ) -> Result<Value, FrontendError> {
        let shape = self.shape(x)?;
        let [_, c, _, _] = shape[..] else {
            return Err(zoo_err(format!(
                "{}: conv2d expects an NCHW input, got {shape:?}",
                self.path("")
            )));
        };
        if groups == 0 || !c.is_multiple_of(groups) {
            return Err(zoo_err(format!(
                "{}: {c} input channels are not divisible by groups={groups}",
                self.path("")
            )));
        }
        let w = self.param("weight", &[out_ch, c / groups, k, k])?;
        let mut operands = vec![x, w];
        if bias {
            operands.push(self.param("bias", &[out_ch])?);
        }
        self.op(
            Op::Conv2d {
                stride: [stride, stride],
                pad: [pad; 4],
                dilation: [1, 1],
                groups,
            },
            &operands,
        )
    }

    /// Inference BatchNorm (eps 1e-5) over axis 1: declares `{scope}.weight`,
    /// `.bias`, `.running_mean`, `.running_var`, each `[C]`.
    pub fn batch_norm(&mut self, x: Value) -> Result<Value, FrontendError> {
        let c = self.channels(x, "batch_norm")?;
        let mut operands = vec![x];
        for leaf in ["weight", "bias", "running_mean", "running_var"] {
            operands.push(self.param(leaf, &[c])?);
        }
        self.op(Op::BatchNorm { eps: Float(1e-5) }, &operands)
    }

    /// PyTorch `Linear(in, out)` on the last axis, as an ONNX export spells
    /// it: `matmul(x, transpose(W)) + b` with `{scope}.weight [out, in]` and,
    /// with `bias`, `{scope}.bias [out]`.
    pub fn linear(&mut self, x: Value, out: usize, bias: bool) -> Result<Value, FrontendError> {
        let shape = self.shape(x)?;
        let Some(&inp) = shape.last() else {
            return Err(zoo_err(format!(
                "{}: linear needs an input of rank >= 1",
                self.path("")
            )));
        };
        let w = self.param("weight", &[out, inp])?;
        let wt = self.transpose(w, &[1, 0])?;
        let y = self.matmul(x, wt)?;
        if bias {
            let b = self.param("bias", &[out])?;
            self.add(y, b)
        } else {
            Ok(y)
        }
    }

    /// LayerNorm over the last axis (eps 1e-5): `{scope}.weight`, `.bias`.
    pub fn layer_norm(&mut self, x: Value) -> Result<Value, FrontendError> {
        let shape = self.shape(x)?;
        let (Some(&d), Some(axis)) = (shape.last(), shape.len().checked_sub(1)) else {
            return Err(zoo_err(format!(
                "{}: layer_norm needs an input of rank >= 1",
                self.path("")
            )));
        };
        let g = self.param("weight", &[d])?;
        let b = self.param("bias", &[d])?;
        self.op(
            Op::LayerNorm {
                axis,
                eps: Float(1e-5),
            },
            &[x, g, b],
        )
    }

    /// GroupNorm (eps 1e-5) of `x [N,C,...]`: `{scope}.weight`, `.bias` `[C]`.
    pub fn group_norm(&mut self, x: Value, groups: usize) -> Result<Value, FrontendError> {
        let c = self.channels(x, "group_norm")?;
        let g = self.param("weight", &[c])?;
        let b = self.param("bias", &[c])?;
        self.op(
            Op::GroupNorm {
                groups,
                eps: Float(1e-5),
            },
            &[x, g, b],
        )
    }

    fn channels(&self, x: Value, what: &str) -> Result<usize, FrontendError> {
        let shape = self.shape(x)?;
        shape.get(1).copied().ok_or_else(|| {
            zoo_err(format!(
                "{}: {what} needs an input of rank >= 2, got {shape:?}",
                self.path("")
            ))
        })
    }

    // ----- element-wise ------------------------------------------------

    /// An element-wise op of one operand.
    pub fn unary(&mut self, u: UnaryOp, x: Value) -> Result<Value, FrontendError> {
        self.op(Op::Unary(u), &[x])
    }

    /// `max(x, 0)`
    pub fn relu(&mut self, x: Value) -> Result<Value, FrontendError> {
        self.unary(UnaryOp::Relu, x)
    }

    /// `min(max(x, 0), 6)`
    pub fn relu6(&mut self, x: Value) -> Result<Value, FrontendError> {
        self.unary(UnaryOp::Relu6, x)
    }

    /// `1 / (1 + exp(-x))`
    pub fn sigmoid(&mut self, x: Value) -> Result<Value, FrontendError> {
        self.unary(UnaryOp::Sigmoid, x)
    }

    /// `x · sigmoid(x)`
    pub fn silu(&mut self, x: Value) -> Result<Value, FrontendError> {
        self.unary(UnaryOp::Silu, x)
    }

    /// Exact (erf) GELU.
    pub fn gelu(&mut self, x: Value) -> Result<Value, FrontendError> {
        self.unary(UnaryOp::Gelu, x)
    }

    /// `x · relu6(x + 3) / 6`
    pub fn hard_swish(&mut self, x: Value) -> Result<Value, FrontendError> {
        self.unary(UnaryOp::HardSwish, x)
    }

    /// `relu6(x + 3) / 6`, i.e. `clamp(x/6 + 1/2, 0, 1)` (PyTorch's hardsigmoid).
    pub fn hard_sigmoid(&mut self, x: Value) -> Result<Value, FrontendError> {
        self.op(
            Op::HardSigmoid {
                alpha: Float(1.0 / 6.0),
                beta: Float(0.5),
            },
            &[x],
        )
    }

    /// An element-wise op of two broadcast operands.
    pub fn binary(&mut self, op: BinaryOp, a: Value, b: Value) -> Result<Value, FrontendError> {
        self.op(Op::Binary(op), &[a, b])
    }

    /// `a + b`
    pub fn add(&mut self, a: Value, b: Value) -> Result<Value, FrontendError> {
        self.binary(BinaryOp::Add, a, b)
    }

    /// `a - b`
    pub fn sub(&mut self, a: Value, b: Value) -> Result<Value, FrontendError> {
        self.binary(BinaryOp::Sub, a, b)
    }

    /// `a · b`
    pub fn mul(&mut self, a: Value, b: Value) -> Result<Value, FrontendError> {
        self.binary(BinaryOp::Mul, a, b)
    }

    /// `a / b`
    pub fn div(&mut self, a: Value, b: Value) -> Result<Value, FrontendError> {
        self.binary(BinaryOp::Div, a, b)
    }

    /// `max(a, b)`
    pub fn max(&mut self, a: Value, b: Value) -> Result<Value, FrontendError> {
        self.binary(BinaryOp::Max, a, b)
    }

    /// `x + c` for a scalar constant `c`.
    pub fn add_scalar(&mut self, x: Value, c: f32) -> Result<Value, FrontendError> {
        let k = self.constant(c)?;
        self.add(x, k)
    }

    /// `x - c` for a scalar constant `c`.
    pub fn sub_scalar(&mut self, x: Value, c: f32) -> Result<Value, FrontendError> {
        let k = self.constant(c)?;
        self.sub(x, k)
    }

    /// `x · c` for a scalar constant `c`.
    pub fn mul_scalar(&mut self, x: Value, c: f32) -> Result<Value, FrontendError> {
        let k = self.constant(c)?;
        self.mul(x, k)
    }

    /// `max(x, c)` for a scalar constant `c`.
    pub fn max_scalar(&mut self, x: Value, c: f32) -> Result<Value, FrontendError> {
        let k = self.constant(c)?;
        self.max(x, k)
    }

    // ----- structure ---------------------------------------------------

    /// Batched matrix product (numpy broadcasting).
    pub fn matmul(&mut self, a: Value, b: Value) -> Result<Value, FrontendError> {
        self.op(Op::MatMul, &[a, b])
    }

    /// Softmax along `axis`.
    pub fn softmax(&mut self, x: Value, axis: usize) -> Result<Value, FrontendError> {
        self.op(Op::Softmax { axis }, &[x])
    }

    /// Reinterpret with a new static shape.
    pub fn reshape(&mut self, x: Value, shape: &[usize]) -> Result<Value, FrontendError> {
        self.op(
            Op::Reshape {
                shape: shape.to_vec(),
            },
            &[x],
        )
    }

    /// Permute axes: output axis `i` is input axis `perm[i]`.
    pub fn transpose(&mut self, x: Value, perm: &[usize]) -> Result<Value, FrontendError> {
        self.op(
            Op::Transpose {
                perm: perm.to_vec(),
            },
            &[x],
        )
    }

    /// Concatenate along `axis`.
    pub fn concat(&mut self, xs: &[Value], axis: usize) -> Result<Value, FrontendError> {
        self.op(Op::Concat { axis }, xs)
    }

    /// `x[start..end]` along one axis.
    pub fn slice(
        &mut self,
        x: Value,
        axis: usize,
        start: usize,
        end: usize,
    ) -> Result<Value, FrontendError> {
        let as_i64 = |v: usize| i64::try_from(v).map_err(|_| zoo_err("slice bound too large"));
        self.op(
            Op::Slice {
                axes: vec![axis],
                starts: vec![as_i64(start)?],
                ends: vec![as_i64(end)?],
                steps: vec![1],
            },
            &[x],
        )
    }

    /// Split along `axis` into pieces of the given sizes.
    pub fn split(
        &mut self,
        x: Value,
        axis: usize,
        sizes: &[usize],
    ) -> Result<Vec<Value>, FrontendError> {
        Ok(self.graph.add_multi(
            Op::Split {
                axis,
                sizes: sizes.to_vec(),
            },
            &[x],
        )?)
    }

    /// `x[..., index, ...]` along `axis` (a scalar gather, which drops the axis).
    pub fn gather(&mut self, x: Value, axis: usize, index: i64) -> Result<Value, FrontendError> {
        self.op(
            Op::Gather {
                axis,
                indices: vec![index],
                indices_shape: vec![],
            },
            &[x],
        )
    }

    /// Broadcast to `shape`.
    pub fn expand(&mut self, x: Value, shape: &[usize]) -> Result<Value, FrontendError> {
        self.op(
            Op::Expand {
                shape: shape.to_vec(),
            },
            &[x],
        )
    }

    /// Mean over every spatial axis, kept as size 1.
    pub fn global_avg_pool(&mut self, x: Value) -> Result<Value, FrontendError> {
        self.op(Op::GlobalAvgPool, &[x])
    }

    /// Mean over `axes`.
    pub fn reduce_mean(
        &mut self,
        x: Value,
        axes: &[usize],
        keepdims: bool,
    ) -> Result<Value, FrontendError> {
        self.op(
            Op::Reduce {
                kind: ReduceKind::Mean,
                axes: axes.to_vec(),
                keepdims,
            },
            &[x],
        )
    }

    /// Sum over `axes`.
    pub fn reduce_sum(
        &mut self,
        x: Value,
        axes: &[usize],
        keepdims: bool,
    ) -> Result<Value, FrontendError> {
        self.op(
            Op::Reduce {
                kind: ReduceKind::Sum,
                axes: axes.to_vec(),
                keepdims,
            },
            &[x],
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn const_names_round_trip_and_are_unique() {
        for v in [2.0f32, 0.5, 1.0, -1.0, 1e-12, 0.14433756, 6.0] {
            let n = const_name(v);
            assert!(
                n.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '_'),
                "{n}"
            );
            assert_eq!(const_value(&n), Some(v), "{n}");
        }
        assert_eq!(const_name(2.0), "const.2.0");
        assert_eq!(const_name(1e-12), "const.1em12");
        assert_eq!(const_value("const.2"), None);
        assert_eq!(const_value("const.2.00"), None);
        assert_eq!(const_value("stem.weight"), None);
    }

    #[test]
    fn scopes_nest_and_close() {
        let mut b = GraphBuilder::new("t");
        let x = b.input("x", &[1, 4, 8, 8]).unwrap();
        let y = {
            let mut s = b.scope("stages.2");
            let mut t = s.scope("1");
            assert_eq!(t.path("weight"), "stages.2.1.weight");
            t.conv2d(x, 8, 3, 1, 1, 1, true).unwrap()
        };
        assert_eq!(b.path("weight"), "weight");
        let g = b.finish(vec![y]).unwrap();
        assert!(g.weight_by_name("stages.2.1.weight").is_some());
        assert!(g.weight_by_name("stages.2.1.bias").is_some());
    }

    #[test]
    fn linear_is_matmul_of_transposed_weight() {
        let mut b = GraphBuilder::new("t");
        let x = b.input("x", &[1, 3, 5]).unwrap();
        let y = b.scope("fc").linear(x, 7, true).unwrap();
        assert_eq!(b.shape(y).unwrap(), vec![1, 3, 7]);
        let g = b.finish(vec![y]).unwrap();
        let w = g.weight_by_name("fc.weight").unwrap();
        assert_eq!(g.value_type(w).shape, vec![7, 5]);
        let ops: Vec<&str> = g
            .topo_order()
            .unwrap()
            .into_iter()
            .map(|n| g.node(n).op.name())
            .filter(|n| !matches!(*n, "input" | "weight"))
            .collect();
        assert_eq!(ops, ["transpose", "matmul", "add"]);
    }

    #[test]
    fn shape_errors_are_results() {
        let mut b = GraphBuilder::new("t");
        let x = b.input("x", &[1, 6, 8, 8]).unwrap();
        assert!(b.scope("c").conv2d(x, 8, 3, 1, 1, 4, false).is_err());
        let t = b.input("t", &[2, 3]).unwrap();
        assert!(b.scope("c2").conv2d(t, 8, 3, 1, 1, 1, false).is_err());
        assert!(b.matmul(x, t).is_err());
        // the same constant is declared once
        let a = b.constant(2.0).unwrap();
        assert_eq!(b.constant(2.0).unwrap(), a);
    }
}
