//! A small reference evaluator for the rule tests: naive loops, f64
//! accumulation, fused ops through their primitive expansion.
//!
//! It exists only because kiln-ir's interpreter has not landed on main yet;
//! the tests switch to `kiln_ir::interp` when it does (see docs/passes.md).

use std::collections::HashMap;

use kiln_ir::fused::Emitter;
use kiln_ir::op::{BinaryOp, Op, ReduceKind, UnaryOp};
use kiln_ir::types::{broadcast_shapes, strides_of};
use kiln_ir::{IrError, Model, Tensor, TensorType, Value};

type R<T> = Result<T, IrError>;

fn err(m: impl Into<String>) -> IrError {
    IrError::Tensor(m.into())
}

fn data(t: &Tensor) -> R<&[f32]> {
    t.as_f32().ok_or_else(|| err("f32 only"))
}

fn tensor(shape: Vec<usize>, d: Vec<f64>) -> R<Tensor> {
    Tensor::from_f32(shape, d.into_iter().map(|x| x as f32).collect::<Vec<f32>>())
}

/// Multi-index iteration over a shape.
fn for_each_index(shape: &[usize], mut f: impl FnMut(&[usize])) {
    let n: usize = shape.iter().product();
    let mut idx = vec![0usize; shape.len()];
    for _ in 0..n {
        f(&idx);
        for a in (0..shape.len()).rev() {
            idx[a] += 1;
            if idx[a] < shape[a] {
                break;
            }
            idx[a] = 0;
        }
    }
}

fn bcast_offset(idx: &[usize], shape: &[usize]) -> usize {
    let lead = idx.len() - shape.len();
    let st = strides_of(shape);
    (0..shape.len())
        .map(|a| {
            if shape[a] == 1 {
                0
            } else {
                idx[lead + a] * st[a]
            }
        })
        .sum()
}

fn unary(u: UnaryOp, x: f64) -> f64 {
    match u {
        UnaryOp::Relu => x.max(0.0),
        UnaryOp::Relu6 => x.clamp(0.0, 6.0),
        UnaryOp::Sigmoid => 1.0 / (1.0 + (-x).exp()),
        UnaryOp::Tanh => x.tanh(),
        UnaryOp::Exp => x.exp(),
        UnaryOp::Log => x.ln(),
        UnaryOp::Sqrt => x.sqrt(),
        UnaryOp::Neg => -x,
        UnaryOp::Reciprocal => 1.0 / x,
        UnaryOp::Erf => erf(x),
        UnaryOp::Abs => x.abs(),
        UnaryOp::Silu => x / (1.0 + (-x).exp()),
        UnaryOp::HardSwish => x * (x + 3.0).clamp(0.0, 6.0) / 6.0,
        UnaryOp::Gelu => 0.5 * x * (1.0 + erf(x / std::f64::consts::SQRT_2)),
        UnaryOp::GeluTanh => {
            let c = (2.0 / std::f64::consts::PI).sqrt();
            0.5 * x * (1.0 + (c * (x + 0.044715 * x * x * x)).tanh())
        }
        UnaryOp::Identity => x,
    }
}

/// erf by Abramowitz–Stegun 7.1.26 refined with a series for small |x|;
/// accurate to ~1e-7, ample for 1e-4 comparisons.
fn erf(x: f64) -> f64 {
    if x.abs() < 2.0 {
        // Maclaurin series, converges fast here
        let mut sum = 0.0f64;
        let mut term = x;
        let mut n = 0.0f64;
        while term.abs() > 1e-17 * sum.abs().max(1e-300) || n < 3.0 {
            sum += term / (2.0 * n + 1.0);
            n += 1.0;
            term *= -x * x / n;
            if n > 200.0 {
                break;
            }
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    } else {
        let t = 1.0 / (1.0 + 0.5 * x.abs());
        let y = 1.0
            - t * (-x * x - 1.26551223
                + t * (1.00002368
                    + t * (0.37409196
                        + t * (0.09678418
                            + t * (-0.18628806
                                + t * (0.27886807
                                    + t * (-1.13520398
                                        + t * (1.48851587
                                            + t * (-0.82215223 + t * 0.17087277)))))))))
                .exp();
        if x >= 0.0 { y } else { -y }
    }
}

/// Evaluates one op.
pub fn eval_op(op: &Op, ins: &[&Tensor]) -> R<Vec<Tensor>> {
    let out_ty =
        kiln_ir::shape::infer(op, &ins.iter().map(|t| t.ty()).collect::<Vec<_>>()).map_err(err)?;
    let one = |t: Tensor| Ok(vec![t]);
    let oshape = out_ty[0].shape.clone();
    match op {
        Op::Fused(f) => {
            let mut e = TensorEmitter;
            let args: Vec<Tensor> = ins.iter().map(|t| (*t).clone()).collect();
            one(f.expand(&mut e, &args)?)
        }
        Op::Unary(u) => one(tensor(
            oshape,
            data(ins[0])?.iter().map(|&x| unary(*u, x as f64)).collect(),
        )?),
        Op::Clip { min, max } => one(tensor(
            oshape,
            data(ins[0])?
                .iter()
                .map(|&x| (x as f64).max(min.0 as f64).min(max.0 as f64))
                .collect(),
        )?),
        Op::HardSigmoid { alpha, beta } => one(tensor(
            oshape,
            data(ins[0])?
                .iter()
                .map(|&x| (alpha.0 as f64 * x as f64 + beta.0 as f64).clamp(0.0, 1.0))
                .collect(),
        )?),
        Op::Binary(b) => {
            let (x, y) = (data(ins[0])?, data(ins[1])?);
            let (xs, ys) = (ins[0].shape(), ins[1].shape());
            let shape = broadcast_shapes(xs, ys).ok_or_else(|| err("broadcast"))?;
            let mut out = Vec::new();
            for_each_index(&shape, |i| {
                let (a, c) = (x[bcast_offset(i, xs)] as f64, y[bcast_offset(i, ys)] as f64);
                out.push(match b {
                    BinaryOp::Add => a + c,
                    BinaryOp::Sub => a - c,
                    BinaryOp::Mul => a * c,
                    BinaryOp::Div => a / c,
                    BinaryOp::Pow => a.powf(c),
                    BinaryOp::Max => a.max(c),
                    BinaryOp::Min => a.min(c),
                });
            });
            one(tensor(shape, out)?)
        }
        Op::MatMul => {
            let (a, b) = (ins[0], ins[1]);
            if a.shape().len() < 2 || b.shape().len() < 2 {
                return Err(err("matmul rank >= 2 only here"));
            }
            let (m, k) = (
                a.shape()[a.shape().len() - 2],
                a.shape()[a.shape().len() - 1],
            );
            let n = b.shape()[b.shape().len() - 1];
            let batch = &oshape[..oshape.len() - 2];
            let (ab, bb) = (
                &a.shape()[..a.shape().len() - 2],
                &b.shape()[..b.shape().len() - 2],
            );
            let (ad, bd) = (data(a)?, data(b)?);
            let mut out = Vec::with_capacity(oshape.iter().product());
            for_each_index(batch, |bi| {
                let ao = bcast_offset(bi, ab) * m * k;
                let bo = bcast_offset(bi, bb) * k * n;
                for i in 0..m {
                    for j in 0..n {
                        let mut s = 0.0f64;
                        for t in 0..k {
                            s += ad[ao + i * k + t] as f64 * bd[bo + t * n + j] as f64;
                        }
                        out.push(s);
                    }
                }
            });
            one(tensor(oshape, out)?)
        }
        Op::Conv2d {
            stride,
            pad,
            dilation,
            groups,
        } => {
            let (x, w) = (ins[0], ins[1]);
            let (xd, wd) = (data(x)?, data(w)?);
            let bias = ins.get(2).map(|b| data(b)).transpose()?;
            let [n, c, h, wi] = [x.shape()[0], x.shape()[1], x.shape()[2], x.shape()[3]];
            let [o, cg, kh, kw] = [w.shape()[0], w.shape()[1], w.shape()[2], w.shape()[3]];
            let (ho, wo) = (oshape[2], oshape[3]);
            let og = o / groups;
            let mut out = Vec::with_capacity(n * o * ho * wo);
            for b in 0..n {
                for oc in 0..o {
                    let g = oc / og;
                    for y in 0..ho {
                        for xx in 0..wo {
                            let mut s = bias.map_or(0.0, |bb| bb[oc] as f64);
                            for ic in 0..cg {
                                let cin = g * cg + ic;
                                for ky in 0..kh {
                                    let iy =
                                        (y * stride[0] + ky * dilation[0]) as i64 - pad[0] as i64;
                                    if iy < 0 || iy >= h as i64 {
                                        continue;
                                    }
                                    for kx in 0..kw {
                                        let ix = (xx * stride[1] + kx * dilation[1]) as i64
                                            - pad[1] as i64;
                                        if ix < 0 || ix >= wi as i64 {
                                            continue;
                                        }
                                        s += xd
                                            [((b * c + cin) * h + iy as usize) * wi + ix as usize]
                                            as f64
                                            * wd[((oc * cg + ic) * kh + ky) * kw + kx] as f64;
                                    }
                                }
                            }
                            out.push(s);
                        }
                    }
                }
            }
            one(tensor(oshape, out)?)
        }
        Op::Softmax { axis } => {
            let x = data(ins[0])?;
            let s = ins[0].shape();
            let inner: usize = s[axis + 1..].iter().product();
            let len = s[*axis];
            let outer: usize = s[..*axis].iter().product();
            let mut out = vec![0.0f64; x.len()];
            for o in 0..outer {
                for i in 0..inner {
                    let at = |j: usize| (o * len + j) * inner + i;
                    let m = (0..len).map(|j| x[at(j)] as f64).fold(f64::MIN, f64::max);
                    let z: f64 = (0..len).map(|j| (x[at(j)] as f64 - m).exp()).sum();
                    for j in 0..len {
                        out[at(j)] = (x[at(j)] as f64 - m).exp() / z;
                    }
                }
            }
            one(tensor(oshape, out)?)
        }
        Op::LayerNorm { axis, eps } => {
            let x = data(ins[0])?;
            let inner: usize = ins[0].shape()[*axis..].iter().product();
            let g = data(ins[1])?;
            let be = ins.get(2).map(|b| data(b)).transpose()?;
            let mut out = Vec::with_capacity(x.len());
            for row in x.chunks(inner) {
                let m = row.iter().map(|&v| v as f64).sum::<f64>() / inner as f64;
                let v = row.iter().map(|&v| (v as f64 - m).powi(2)).sum::<f64>() / inner as f64;
                let sd = (v + eps.0 as f64).sqrt();
                for (i, &r) in row.iter().enumerate() {
                    out.push((r as f64 - m) / sd * g[i] as f64 + be.map_or(0.0, |b| b[i] as f64));
                }
            }
            one(tensor(oshape, out)?)
        }
        Op::GroupNorm { groups, eps } => {
            let x = data(ins[0])?;
            let s = ins[0].shape();
            let (n, c) = (s[0], s[1]);
            let sp: usize = s[2..].iter().product();
            let (g, b) = (data(ins[1])?, data(ins[2])?);
            let per = c / groups * sp;
            let mut out = vec![0.0; x.len()];
            for bi in 0..n {
                for gi in 0..*groups {
                    let base = bi * c * sp + gi * per;
                    let sl = &x[base..base + per];
                    let m = sl.iter().map(|&v| v as f64).sum::<f64>() / per as f64;
                    let v = sl.iter().map(|&v| (v as f64 - m).powi(2)).sum::<f64>() / per as f64;
                    let sd = (v + eps.0 as f64).sqrt();
                    for (i, &xv) in sl.iter().enumerate() {
                        let ch = gi * (c / groups) + i / sp;
                        out[base + i] = (xv as f64 - m) / sd * g[ch] as f64 + b[ch] as f64;
                    }
                }
            }
            one(tensor(oshape, out)?)
        }
        Op::BatchNorm { eps } => {
            let x = data(ins[0])?;
            let s = ins[0].shape();
            let c = s[1];
            let sp: usize = s[2..].iter().product();
            let p: Vec<&[f32]> = ins[1..].iter().map(|t| data(t)).collect::<R<_>>()?;
            let out = x
                .iter()
                .enumerate()
                .map(|(i, &v)| {
                    let ch = (i / sp) % c;
                    (v as f64 - p[2][ch] as f64) / (p[3][ch] as f64 + eps.0 as f64).sqrt()
                        * p[0][ch] as f64
                        + p[1][ch] as f64
                })
                .collect();
            one(tensor(oshape, out)?)
        }
        Op::Reduce { kind, axes, .. } => {
            let x = data(ins[0])?;
            let s = ins[0].shape().to_vec();
            let kept: Vec<usize> = s
                .iter()
                .enumerate()
                .map(|(i, &d)| if axes.contains(&i) { 1 } else { d })
                .collect();
            let n_out: usize = kept.iter().product();
            let mut acc = vec![
                match kind {
                    ReduceKind::Max => f64::MIN,
                    _ => 0.0,
                };
                n_out
            ];
            let ks = strides_of(&kept);
            let mut i = 0;
            for_each_index(&s, |idx| {
                let o: usize = idx
                    .iter()
                    .enumerate()
                    .map(|(a, &v)| if axes.contains(&a) { 0 } else { v * ks[a] })
                    .sum();
                let v = x[i] as f64;
                acc[o] = match kind {
                    ReduceKind::Max => acc[o].max(v),
                    _ => acc[o] + v,
                };
                i += 1;
            });
            if *kind == ReduceKind::Mean {
                let cnt: usize = axes.iter().map(|&a| s[a]).product();
                acc.iter_mut().for_each(|v| *v /= cnt as f64);
            }
            one(tensor(oshape, acc)?)
        }
        Op::GlobalAvgPool => {
            let x = data(ins[0])?;
            let sp: usize = ins[0].shape()[2..].iter().product();
            let out = x
                .chunks(sp)
                .map(|c| c.iter().map(|&v| v as f64).sum::<f64>() / sp as f64)
                .collect();
            one(tensor(oshape, out)?)
        }
        Op::Reshape { .. } | Op::Squeeze { .. } | Op::Unsqueeze { .. } | Op::Flatten { .. } => {
            one(ins[0].reshaped(oshape)?)
        }
        Op::Expand { .. } => {
            let x = data(ins[0])?;
            let xs = ins[0].shape();
            let mut out = Vec::new();
            for_each_index(&oshape, |i| out.push(x[bcast_offset(i, xs)] as f64));
            one(tensor(oshape, out)?)
        }
        Op::Transpose { perm } => {
            let x = data(ins[0])?;
            let xs = strides_of(ins[0].shape());
            let mut out = Vec::new();
            for_each_index(&oshape, |i| {
                let off: usize = i.iter().zip(perm).map(|(&v, &p)| v * xs[p]).sum();
                out.push(x[off] as f64);
            });
            one(tensor(oshape, out)?)
        }
        Op::Slice {
            axes,
            starts,
            steps,
            ends,
        } => {
            let x = data(ins[0])?;
            let xs = ins[0].shape();
            let st = strides_of(xs);
            let mut start = vec![0i64; xs.len()];
            let mut step = vec![1i64; xs.len()];
            for (k, &a) in axes.iter().enumerate() {
                start[a] = kiln_ir::shape::slice_bounds(xs[a], starts[k], ends[k], steps[k]).0;
                step[a] = steps[k];
            }
            let mut out = Vec::new();
            for_each_index(&oshape, |i| {
                let off: i64 = i
                    .iter()
                    .enumerate()
                    .map(|(a, &v)| (start[a] + v as i64 * step[a]) * st[a] as i64)
                    .sum();
                out.push(x[off as usize] as f64);
            });
            one(tensor(oshape, out)?)
        }
        Op::Split { axis, sizes } => {
            let mut res = Vec::new();
            let mut at = 0i64;
            for &sz in sizes {
                let sl = Op::Slice {
                    axes: vec![*axis],
                    starts: vec![at],
                    ends: vec![at + sz as i64],
                    steps: vec![1],
                };
                res.extend(eval_op(&sl, &[ins[0]])?);
                at += sz as i64;
            }
            Ok(res)
        }
        Op::Concat { axis } => {
            let mut out = Vec::new();
            let outer: usize = oshape[..*axis].iter().product();
            for o in 0..outer {
                for t in ins {
                    let inner: usize = t.shape()[*axis..].iter().product();
                    out.extend(
                        data(t)?[o * inner..(o + 1) * inner]
                            .iter()
                            .map(|&v| v as f64),
                    );
                }
            }
            one(tensor(oshape, out)?)
        }
        Op::Gather { axis, indices, .. } => {
            let x = data(ins[0])?;
            let xs = ins[0].shape();
            let outer: usize = xs[..*axis].iter().product();
            let inner: usize = xs[axis + 1..].iter().product();
            let mut out = Vec::new();
            for o in 0..outer {
                for &i in indices {
                    let i = if i < 0 { i + xs[*axis] as i64 } else { i } as usize;
                    let base = (o * xs[*axis] + i) * inner;
                    out.extend(x[base..base + inner].iter().map(|&v| v as f64));
                }
            }
            one(tensor(oshape, out)?)
        }
        other => Err(err(format!(
            "test evaluator: {} not supported",
            other.name()
        ))),
    }
}

/// Fused ops evaluated as the composition of primitive ops they stand for.
pub struct TensorEmitter;

impl Emitter for TensorEmitter {
    type V = Tensor;
    fn op(&mut self, op: Op, args: &[Tensor]) -> R<Tensor> {
        let refs: Vec<&Tensor> = args.iter().collect();
        Ok(eval_op(&op, &refs)?.remove(0))
    }
    fn scalar(&mut self, x: f32) -> R<Tensor> {
        Tensor::from_f32(Vec::new(), vec![x])
    }
    fn ty(&self, v: &Tensor) -> TensorType {
        v.ty()
    }
}

/// Runs a model on inputs (one per graph input, in order).
pub fn run(m: &Model, inputs: &[Tensor]) -> R<Vec<Tensor>> {
    let g = &m.graph;
    let mut vals: HashMap<Value, Tensor> = HashMap::new();
    for (i, &id) in g.inputs().iter().enumerate() {
        vals.insert(Value::of(id), inputs[i].clone());
    }
    for id in g.topo_order()? {
        let node = g.node(id);
        match node.op {
            Op::Input => continue,
            Op::Weight => {
                let name = &node.outputs[0].name;
                let t = m
                    .weights
                    .get(name)
                    .ok_or_else(|| err(format!("no weight {name}")))?;
                vals.insert(Value::of(id), t.clone());
            }
            _ => {
                let ins: Vec<&Tensor> = g.operands(id).iter().map(|v| &vals[v]).collect();
                let outs = eval_op(&node.op, &ins)?;
                for (o, t) in outs.into_iter().enumerate() {
                    vals.insert(
                        Value {
                            node: id,
                            output: o,
                        },
                        t,
                    );
                }
            }
        }
    }
    Ok(g.outputs().iter().map(|v| vals[v].clone()).collect())
}
