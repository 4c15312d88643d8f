//! Evaluation of ops whose operands are all constant, at import time.
//!
//! Movement ops and integer arithmetic — the shape scaffolding of an
//! export — are evaluated here directly on [`Const`]s, whatever their
//! element kind (shape arithmetic passes through `bool`, which kiln cannot
//! hold). Float compute on constants (a transposed weight, a scale
//! computed from two constants) goes through the reference interpreter on
//! a one-op graph, so that a folded value is exactly what the graph would
//! have computed at run time.

use kiln_ir::shape::slice_bounds;
use kiln_ir::{BinaryOp, DType, Op, TensorType, UnaryOp};

use super::consts::{Const, Data, Kind, broadcast_index, index_map};
use super::import::{E, R};

/// Evaluates kiln op `op` on constants. `None` means "not evaluable now":
/// the caller then adds the op to the graph instead.
pub(crate) fn eval_kiln(op: &Op, ins: &[&Const]) -> Option<R<Vec<Const>>> {
    if let Some(r) = eval_native(op, ins) {
        return Some(r.map_err(E::Msg));
    }
    eval_interp(op, ins)
}

/// A stand-in kiln type for shape inference of movement ops on a constant
/// of any kind.
fn standin(c: &Const) -> TensorType {
    let dtype = if c.kind() == Kind::F32 {
        DType::F32
    } else {
        DType::I64
    };
    TensorType::new(dtype, c.shape.clone())
}

fn eval_native(op: &Op, ins: &[&Const]) -> Option<Result<Vec<Const>, String>> {
    let one = |r: Result<Const, String>| Some(r.map(|c| vec![c]));
    let out_shape = |op: &Op, ins: &[&Const]| -> Result<Vec<usize>, String> {
        let types: Vec<TensorType> = ins.iter().map(|c| standin(c)).collect();
        let mut out = kiln_ir::shape::infer(op, &types)?;
        let shape = out.swap_remove(0).shape;
        super::consts::check_size(&shape)?;
        Ok(shape)
    };
    let x = ins.first()?;
    match op {
        Op::Reshape { .. } | Op::Squeeze { .. } | Op::Unsqueeze { .. } | Op::Flatten { .. } => {
            one(out_shape(op, ins).and_then(|s| x.reshaped(s)))
        }
        Op::Unary(UnaryOp::Identity) => one(Ok((*x).clone())),
        Op::Transpose { perm } => one(out_shape(op, ins).map(|shape| {
            let strides = kiln_ir::types::strides_of(&x.shape);
            let idx = index_map(&shape, |o| {
                o.iter()
                    .enumerate()
                    .map(|(i, &k)| k * strides[perm[i]])
                    .sum()
            });
            x.take(&idx, shape)
        })),
        Op::Slice {
            axes,
            starts,
            ends,
            steps,
        } => one(out_shape(op, ins).map(|shape| {
            let rank = x.shape.len();
            let mut start = vec![0i64; rank];
            let mut step = vec![1i64; rank];
            for (i, &a) in axes.iter().enumerate() {
                start[a] = slice_bounds(x.shape[a], starts[i], ends[i], steps[i]).0;
                step[a] = steps[i];
            }
            let strides = kiln_ir::types::strides_of(&x.shape);
            let idx = index_map(&shape, |o| {
                o.iter()
                    .enumerate()
                    .map(|(d, &k)| ((start[d] + k as i64 * step[d]) as usize) * strides[d])
                    .sum()
            });
            x.take(&idx, shape)
        })),
        Op::Gather {
            axis,
            indices,
            indices_shape,
        } => one(out_shape(op, ins).map(|shape| {
            let dim = x.shape[*axis] as i64;
            let inner: usize = x.shape[axis + 1..].iter().product();
            let nidx = indices_shape.len();
            let istrides = kiln_ir::types::strides_of(indices_shape);
            let idx = index_map(&shape, |o| {
                let outer_flat = o[..*axis]
                    .iter()
                    .zip(&x.shape[..*axis])
                    .fold(0, |a, (&k, &d)| a * d + k);
                let which: usize = o[*axis..axis + nidx]
                    .iter()
                    .zip(&istrides)
                    .map(|(&k, &s)| k * s)
                    .sum();
                let i = indices[which];
                let i = if i < 0 { i + dim } else { i } as usize;
                let inner_flat = o[axis + nidx..]
                    .iter()
                    .zip(&x.shape[axis + 1..])
                    .fold(0, |a, (&k, &d)| a * d + k);
                (outer_flat * x.shape[*axis] + i) * inner + inner_flat
            });
            x.take(&idx, shape)
        })),
        Op::Concat { axis } => {
            let parts: Vec<Const> = ins.iter().map(|c| (*c).clone()).collect();
            one(Const::concat(&parts, *axis))
        }
        Op::Expand { .. } => one(out_shape(op, ins).map(|shape| {
            let idx = index_map(&shape, |o| broadcast_index(&x.shape, o));
            x.take(&idx, shape)
        })),
        Op::Split { axis, sizes } => {
            let mut out = Vec::new();
            let mut start = 0i64;
            for &s in sizes {
                let sl = Op::Slice {
                    axes: vec![*axis],
                    starts: vec![start],
                    ends: vec![start + s as i64],
                    steps: vec![1],
                };
                match eval_native(&sl, ins)? {
                    Ok(mut v) => out.push(v.swap_remove(0)),
                    Err(e) => return Some(Err(e)),
                }
                start += s as i64;
            }
            Some(Ok(out))
        }
        Op::Cast { to } => one(Ok(x.cast(match to {
            DType::F32 => Kind::F32,
            DType::I64 => Kind::I64,
        }))),
        Op::Unary(u @ (UnaryOp::Neg | UnaryOp::Abs)) if x.kind() == Kind::I64 => {
            let v = x.ints().ok()?;
            let f = if *u == UnaryOp::Neg {
                i64::wrapping_neg
            } else {
                i64::wrapping_abs
            };
            one(Ok(Const::i64(
                x.shape.clone(),
                v.into_iter().map(f).collect(),
            )))
        }
        Op::Binary(b) if ins.len() == 2 && x.kind() == Kind::I64 && ins[1].kind() == Kind::I64 => {
            let f = match b {
                BinaryOp::Add => |a: i64, b: i64| Some(a.wrapping_add(b)),
                BinaryOp::Sub => |a: i64, b: i64| Some(a.wrapping_sub(b)),
                BinaryOp::Mul => |a: i64, b: i64| Some(a.wrapping_mul(b)),
                BinaryOp::Div => |a: i64, b: i64| a.checked_div(b),
                BinaryOp::Max => |a: i64, b: i64| Some(a.max(b)),
                BinaryOp::Min => |a: i64, b: i64| Some(a.min(b)),
                BinaryOp::Pow => |a: i64, b: i64| u32::try_from(b).ok().map(|e| a.wrapping_pow(e)),
                BinaryOp::Fmod => |a: i64, b: i64| a.checked_rem(b).or((b == -1).then_some(0)),
                BinaryOp::Mod => |a: i64, b: i64| {
                    let r = a.checked_rem(b).or((b == -1).then_some(0))?;
                    Some(if r != 0 && (r < 0) != (b < 0) {
                        r + b
                    } else {
                        r
                    })
                },
            };
            one(binary_ints(ins[0], ins[1], f))
        }
        _ => None,
    }
}

/// Element-wise integer op with broadcasting; `None` from `f` is a
/// division by zero.
pub(crate) fn binary_ints(
    a: &Const,
    b: &Const,
    f: impl Fn(i64, i64) -> Option<i64>,
) -> Result<Const, String> {
    let (av, bv) = (a.ints()?, b.ints()?);
    let shape = broadcast(a, b)?;
    let mut out = Vec::with_capacity(shape.iter().product());
    for i in index_map(&shape, |o| broadcast_index(&a.shape, o))
        .into_iter()
        .zip(index_map(&shape, |o| broadcast_index(&b.shape, o)))
    {
        out.push(f(av[i.0], bv[i.1]).ok_or("integer division by zero or negative integer power")?);
    }
    Ok(Const::i64(shape, out))
}

/// Element-wise comparison or logic with broadcasting, on floats when
/// either side is a float and on integers otherwise; the result is `bool`.
pub(crate) fn compare(a: &Const, b: &Const, f: impl Fn(f64, f64) -> bool) -> Result<Const, String> {
    let shape = broadcast(a, b)?;
    let to_f64 = |c: &Const| -> Vec<f64> {
        match &c.data {
            Data::F32(v) => v.iter().map(|&x| x as f64).collect(),
            Data::I64(v) => v.iter().map(|&x| x as f64).collect(),
            Data::Bool(v) => v.iter().map(|&x| x as i32 as f64).collect(),
        }
    };
    let (av, bv) = (to_f64(a), to_f64(b));
    let ia = index_map(&shape, |o| broadcast_index(&a.shape, o));
    let ib = index_map(&shape, |o| broadcast_index(&b.shape, o));
    let out = ia.iter().zip(&ib).map(|(&i, &j)| f(av[i], bv[j])).collect();
    Ok(Const::bool(shape, out))
}

/// The broadcast shape of two constants.
pub(crate) fn broadcast(a: &Const, b: &Const) -> Result<Vec<usize>, String> {
    kiln_ir::types::broadcast_shapes(&a.shape, &b.shape)
        .ok_or_else(|| format!("shapes {:?} and {:?} do not broadcast", a.shape, b.shape))
}

/// `Where` on constants.
pub(crate) fn select(c: &Const, x: &Const, y: &Const) -> Result<Const, String> {
    if x.kind() != y.kind() {
        return Err("Where: the two branches have different element types".into());
    }
    let s1 = broadcast(c, x)?;
    let shape = kiln_ir::types::broadcast_shapes(&s1, &y.shape)
        .ok_or_else(|| format!("Where: shapes {s1:?} and {:?} do not broadcast", y.shape))?;
    let cv = c.bools();
    let ic = index_map(&shape, |o| broadcast_index(&c.shape, o));
    let ix = index_map(&shape, |o| broadcast_index(&x.shape, o));
    let iy = index_map(&shape, |o| broadcast_index(&y.shape, o));
    let pick = |k: usize| cv[ic[k]];
    let n = ic.len();
    let data = match (&x.data, &y.data) {
        (Data::F32(a), Data::F32(b)) => Data::F32(
            (0..n)
                .map(|k| if pick(k) { a[ix[k]] } else { b[iy[k]] })
                .collect(),
        ),
        (Data::I64(a), Data::I64(b)) => Data::I64(
            (0..n)
                .map(|k| if pick(k) { a[ix[k]] } else { b[iy[k]] })
                .collect(),
        ),
        (Data::Bool(a), Data::Bool(b)) => Data::Bool(
            (0..n)
                .map(|k| if pick(k) { a[ix[k]] } else { b[iy[k]] })
                .collect(),
        ),
        _ => unreachable!("kinds checked above"),
    };
    Ok(Const { shape, data })
}

/// Integer reduction of a constant over `axes` (shape arithmetic such as
/// `ReduceProd(Shape(x))`).
pub(crate) fn reduce_ints(
    x: &Const,
    axes: &[usize],
    keepdims: bool,
    init: i64,
    f: impl Fn(i64, i64) -> i64,
) -> Result<Const, String> {
    let v = x.ints()?;
    let out_full: Vec<usize> = x
        .shape
        .iter()
        .enumerate()
        .map(|(i, &d)| if axes.contains(&i) { 1 } else { d })
        .collect();
    let mut acc = vec![init; out_full.iter().product()];
    let src = index_map(&x.shape, |o| {
        o.iter().enumerate().fold(0, |a, (i, &k)| {
            a * out_full[i] + if axes.contains(&i) { 0 } else { k }
        })
    });
    for (k, &dst) in src.iter().enumerate() {
        acc[dst] = f(acc[dst], v[k]);
    }
    let shape = if keepdims {
        out_full
    } else {
        x.shape
            .iter()
            .enumerate()
            .filter(|(i, _)| !axes.contains(i))
            .map(|(_, &d)| d)
            .collect()
    };
    Ok(Const::i64(shape, acc))
}

/// Evaluates the op with the reference interpreter. `None` when an
/// operand has no kiln type (`bool`); the caller then adds the op to the
/// graph, where the type check reports it.
fn eval_interp(op: &Op, ins: &[&Const]) -> Option<R<Vec<Const>>> {
    let tensors: Vec<kiln_ir::Tensor> = ins.iter().map(|c| c.to_tensor()).collect::<Option<_>>()?;
    let refs: Vec<&kiln_ir::Tensor> = tensors.iter().collect();
    Some(
        kiln_ir::interp::eval(op, &refs)
            .map(|r| r.iter().map(Const::from_tensor).collect())
            .map_err(E::Msg),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ints(shape: &[usize], v: &[i64]) -> Const {
        Const::i64(shape.to_vec(), v.to_vec())
    }

    fn native(op: Op, ins: &[&Const]) -> Const {
        eval_native(&op, ins).unwrap().unwrap().swap_remove(0)
    }

    #[test]
    fn movement_ops_on_constants() {
        let x = ints(&[2, 3], &[0, 1, 2, 3, 4, 5]);
        let t = native(Op::Transpose { perm: vec![1, 0] }, &[&x]);
        assert_eq!(t, ints(&[3, 2], &[0, 3, 1, 4, 2, 5]));
        let s = native(
            Op::Slice {
                axes: vec![1],
                starts: vec![2],
                ends: vec![-1],
                steps: vec![-2],
            },
            &[&x],
        );
        assert_eq!(s, ints(&[2, 2], &[2, 0, 5, 3]));
        let g = native(
            Op::Gather {
                axis: 1,
                indices: vec![-1, 0],
                indices_shape: vec![2],
            },
            &[&x],
        );
        assert_eq!(g, ints(&[2, 2], &[2, 0, 5, 3]));
        let g0 = native(
            Op::Gather {
                axis: 0,
                indices: vec![1],
                indices_shape: vec![],
            },
            &[&x],
        );
        assert_eq!(g0, ints(&[3], &[3, 4, 5]));
        let e = native(Op::Expand { shape: vec![2, 2] }, &[&ints(&[2, 1], &[7, 8])]);
        assert_eq!(e, ints(&[2, 2], &[7, 7, 8, 8]));
    }

    #[test]
    fn integer_arithmetic_broadcasts_and_checks_division() {
        let a = ints(&[2], &[6, 9]);
        let b = ints(&[], &[3]);
        let q = native(Op::Binary(BinaryOp::Div), &[&a, &b]);
        assert_eq!(q, ints(&[2], &[2, 3]));
        let zero = ints(&[], &[0]);
        assert!(
            eval_native(&Op::Binary(BinaryOp::Div), &[&a, &zero])
                .unwrap()
                .is_err()
        );
    }

    #[test]
    fn where_and_reduce() {
        let c = Const::bool(vec![2], vec![true, false]);
        let r = select(&c, &ints(&[2], &[1, 2]), &ints(&[], &[9])).unwrap();
        assert_eq!(r, ints(&[2], &[1, 9]));
        let p = reduce_ints(
            &ints(&[2, 3], &[1, 2, 3, 4, 5, 6]),
            &[1],
            false,
            1,
            |a, b| a * b,
        )
        .unwrap();
        assert_eq!(p, ints(&[2], &[6, 120]));
    }
}
