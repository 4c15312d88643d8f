//! ONNX operators kiln spells exactly with its primitive ops, or folds:
//! `CumSum` (folded on constants; on runtime floats a product with a
//! constant triangular 0/1 matrix), `Einsum` (sums, transposes, reshapes
//! and one batched matmul per operand pair) and `Where` whose constant
//! condition mixes true and false (both branches laid out flat side by
//! side, one constant gather picks each element).

use std::collections::{BTreeMap, HashSet};
use std::rc::Rc;

use kiln_ir::{Op, ReduceKind};

use super::consts::{Const, Data, Kind};
use super::import::{E, Importer, NodeCtx, R, Val};
use super::lower::{norm_axis, unsupported};

fn cval(c: Const) -> Val {
    Val::Const(Rc::new(c))
}

/// `CumSum(x, axis)` with `exclusive` and `reverse`. Constants fold (floats
/// summed in f64 and rounded once, as the interpreter would; integers
/// wrap). A runtime float tensor becomes `x @ T` (the axis innermost) or
/// `Tᵀ @ x` (viewed as `[outer, len, inner]`), `T[i][j] = 1` where `x_i`
/// enters `y_j`: every product is exact and the sum is the cumulative one.
pub(crate) fn cumsum(im: &mut Importer, n: &NodeCtx) -> R<Vec<Val>> {
    let out = n.out_name(0);
    let x = n.req(0)?.clone();
    let shape = im.shape(&x);
    let rank = shape.len();
    if rank == 0 {
        return Err(E::Msg("CumSum needs a tensor of rank ≥ 1".into()));
    }
    let axis_c = n.req_const(1, "axis")?;
    let axis = norm_axis(axis_c.scalar_i64().map_err(E::Msg)?, rank)?;
    let exclusive = n.attr_i("exclusive", 0)? != 0;
    let reverse = n.attr_i("reverse", 0)? != 0;
    let len = shape[axis];
    let outer: usize = shape[..axis].iter().product();
    let inner: usize = shape[axis + 1..].iter().product();
    // the positions along the axis in summation order
    let order: Vec<usize> = if reverse {
        (0..len).rev().collect()
    } else {
        (0..len).collect()
    };
    if let Val::Const(c) = &x {
        let at = |o: usize, i: usize, k: usize| (o * len + i) * inner + k;
        let data = match &c.data {
            Data::F32(v) => {
                let mut r = vec![0f32; v.len()];
                for o in 0..outer {
                    for k in 0..inner {
                        let mut acc = 0f64;
                        for &i in &order {
                            let xi = f64::from(v[at(o, i, k)]);
                            if !exclusive {
                                acc += xi;
                            }
                            r[at(o, i, k)] = acc as f32;
                            if exclusive {
                                acc += xi;
                            }
                        }
                    }
                }
                Data::F32(r)
            }
            Data::I64(v) => {
                let mut r = vec![0i64; v.len()];
                for o in 0..outer {
                    for k in 0..inner {
                        let mut acc = 0i64;
                        for &i in &order {
                            let xi = v[at(o, i, k)];
                            if !exclusive {
                                acc = acc.wrapping_add(xi);
                            }
                            r[at(o, i, k)] = acc;
                            if exclusive {
                                acc = acc.wrapping_add(xi);
                            }
                        }
                    }
                }
                Data::I64(r)
            }
            Data::Bool(_) => return Err(E::Msg("CumSum of a bool tensor".into())),
        };
        return Ok(vec![cval(Const { shape, data })]);
    }
    if im.kind(&x) != Kind::F32 {
        return Err(unsupported(n, "on runtime integers"));
    }
    super::consts::check_size(&[len, len])?;
    let enters = |i: usize, j: usize| match (reverse, exclusive) {
        (false, false) => i <= j,
        (false, true) => i < j,
        (true, false) => i >= j,
        (true, true) => i > j,
    };
    let xn = n.in_name(0);
    let tri_name = format!("{out}.triangle");
    let y = if inner == 1 {
        // [outer, len] @ T: T[i][j] = enters(i, j)
        let t: Vec<f32> = (0..len * len)
            .map(|ij| f32::from(u8::from(enters(ij / len, ij % len))))
            .collect();
        let t = cval(Const::f32(vec![len, len], t));
        let x2 = im.apply(
            Op::Reshape {
                shape: vec![outer, len],
            },
            &[(&x, &xn)],
            &format!("{out}.rows"),
        )?;
        im.apply(
            Op::MatMul,
            &[(&x2, ""), (&t, &tri_name)],
            &format!("{out}.sums"),
        )?
    } else {
        // Tᵀ @ [outer, len, inner]: Tᵀ[j][i] = enters(i, j)
        let t: Vec<f32> = (0..len * len)
            .map(|ji| f32::from(u8::from(enters(ji % len, ji / len))))
            .collect();
        let t = cval(Const::f32(vec![len, len], t));
        let x3 = im.apply(
            Op::Reshape {
                shape: vec![outer, len, inner],
            },
            &[(&x, &xn)],
            &format!("{out}.planes"),
        )?;
        im.apply(
            Op::MatMul,
            &[(&t, &tri_name), (&x3, "")],
            &format!("{out}.sums"),
        )?
    };
    Ok(vec![im.apply(Op::Reshape { shape }, &[(&y, "")], &out)?])
}

/// `Where(c, x, y)` with a constant condition that is neither all true nor
/// all false, on runtime branches: `gather(concat(flat x, flat y), k ↦ c_k
/// ? k : N + k)`, reshaped. Pure data movement, so exact.
pub(crate) fn select_const(
    im: &mut Importer,
    n: &NodeCtx,
    c: &Const,
    shape: Vec<usize>,
) -> R<Vec<Val>> {
    let out = n.out_name(0);
    let count: usize = shape.iter().product();
    let mut flat = Vec::new();
    for i in [1, 2] {
        let v = n.req(i)?.clone();
        let name = n.in_name(i);
        let e = if im.shape(&v) == shape {
            v
        } else {
            im.apply(
                Op::Expand {
                    shape: shape.clone(),
                },
                &[(&v, &name)],
                &format!("{out}.expand{i}"),
            )?
        };
        flat.push(im.apply(
            Op::Reshape { shape: vec![count] },
            &[(&e, &name)],
            &format!("{out}.flat{i}"),
        )?);
    }
    let both = im.apply(
        Op::Concat { axis: 0 },
        &[(&flat[0], "x"), (&flat[1], "y")],
        &format!("{out}.both"),
    )?;
    let cs = c.bools();
    let idx = super::consts::index_map(&shape, |o| super::consts::broadcast_index(&c.shape, o));
    let indices = idx
        .iter()
        .enumerate()
        .map(|(k, &ci)| if cs[ci] { k as i64 } else { (count + k) as i64 })
        .collect();
    let picked = im.apply(
        Op::Gather {
            axis: 0,
            indices,
            indices_shape: vec![count],
        },
        &[(&both, "")],
        &format!("{out}.picked"),
    )?;
    Ok(vec![im.apply(
        Op::Reshape { shape },
        &[(&picked, "")],
        &out,
    )?])
}

/// One einsum operand: its value and one label per axis.
struct Term {
    val: Val,
    labels: Vec<char>,
}

/// The labels of one side of an einsum equation, the ellipsis expanded
/// to the last `rank - explicit` of `ell` (right-aligned, numpy's rule).
fn parse_term(s: &str, rank: Option<usize>, ell: &[char]) -> R<Vec<char>> {
    let (head, tail, has) = match s.find("...") {
        Some(p) => (&s[..p], &s[p + 3..], true),
        None => (s, "", false),
    };
    let letters = |t: &str| -> R<Vec<char>> {
        t.chars()
            .map(|c| {
                if c.is_ascii_alphabetic() {
                    Ok(c)
                } else {
                    Err(E::Msg(format!("bad character `{c}` in einsum term `{s}`")))
                }
            })
            .collect()
    };
    let (h, t) = (letters(head)?, letters(tail)?);
    let mut out = h.clone();
    if has {
        let k = match rank {
            Some(r) => r
                .checked_sub(h.len() + t.len())
                .ok_or_else(|| E::Msg(format!("einsum term `{s}` has more labels than axes")))?,
            None => ell.len(),
        };
        out.extend_from_slice(&ell[ell.len() - k..]);
    }
    out.extend(t);
    if let Some(r) = rank
        && out.len() != r
    {
        return Err(E::Msg(format!(
            "einsum term `{s}` has {} labels for an operand of rank {r}",
            out.len()
        )));
    }
    Ok(out)
}

/// `Einsum`: each operand first sums the labels no one else needs, then
/// operands are contracted left to right, each pair as one batched matmul
/// `[batch.., free_a, k] @ [batch.., k, free_b]`; a final transpose puts the
/// output's order. A label repeated within one term (a diagonal) is refused.
pub(crate) fn einsum(im: &mut Importer, n: &NodeCtx) -> R<Vec<Val>> {
    let out = n.out_name(0);
    let eq: String = n
        .attr_s("equation", "")?
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    let (lhs, rhs) = match eq.split_once("->") {
        Some((l, r)) => (l, Some(r)),
        None => (eq.as_str(), None),
    };
    let sides: Vec<&str> = lhs.split(',').collect();
    let count = n.ins.len();
    if sides.len() != count {
        return Err(E::Msg(format!(
            "einsum equation `{eq}` has {} terms for {count} inputs",
            sides.len()
        )));
    }
    let mut vals = Vec::new();
    for i in 0..count {
        let v = n.req(i)?.clone();
        if im.kind(&v) != Kind::F32 {
            return Err(unsupported(n, "on integer tensors"));
        }
        vals.push(v);
    }
    // the ellipsis spans the most axes any term gives it
    let mut ell_rank = 0;
    for (s, v) in sides.iter().zip(&vals) {
        if s.contains("...") {
            let explicit = s.replace("...", "").chars().count();
            ell_rank = ell_rank.max(im.shape(v).len().saturating_sub(explicit));
        }
    }
    // labels outside ASCII letters, so they never collide with the equation's
    let ell: Vec<char> = (0..ell_rank)
        .map(|k| char::from_u32(0x100 + k as u32).expect("small code point"))
        .collect();
    let mut terms = Vec::new();
    let mut dims: BTreeMap<char, usize> = BTreeMap::new();
    for (s, v) in sides.iter().zip(vals) {
        let shape = im.shape(&v);
        let labels = parse_term(s, Some(shape.len()), &ell)?;
        let mut seen = HashSet::new();
        for (&l, &d) in labels.iter().zip(&shape) {
            if !seen.insert(l) {
                return Err(unsupported(
                    n,
                    format!("with a label repeated within one term (`{s}`: a diagonal)"),
                ));
            }
            let e = dims.entry(l).or_insert(d);
            if *e != d && *e != 1 && d != 1 {
                return Err(E::Msg(format!(
                    "einsum label `{l}` has sizes {} and {d}",
                    *e
                )));
            }
            *e = (*e).max(d);
        }
        terms.push(Term { val: v, labels });
    }
    let out_labels = match rhs {
        Some(r) => {
            let o = parse_term(r, None, &ell)?;
            let mut seen = HashSet::new();
            for &l in &o {
                if !dims.contains_key(&l) {
                    return Err(E::Msg(format!("einsum output label `{l}` is in no input")));
                }
                if !seen.insert(l) {
                    return Err(E::Msg(format!("einsum output label `{l}` repeats")));
                }
            }
            o
        }
        None => {
            // implicit: the ellipsis, then labels used once, alphabetically
            let mut once: Vec<char> = dims
                .keys()
                .copied()
                .filter(|l| !ell.contains(l))
                .filter(|l| terms.iter().filter(|t| t.labels.contains(l)).count() == 1)
                .collect();
            once.sort_unstable();
            ell.iter().copied().chain(once).collect()
        }
    };
    let mut step = 0;
    let mut fresh = |what: &str| {
        step += 1;
        format!("{out}.{what}{step}")
    };
    // sum away what only one term has and the output does not keep
    for i in 0..terms.len() {
        let lone: Vec<usize> = terms[i]
            .labels
            .iter()
            .enumerate()
            .filter(|(_, l)| {
                !out_labels.contains(l)
                    && terms
                        .iter()
                        .enumerate()
                        .all(|(j, t)| j == i || !t.labels.contains(l))
            })
            .map(|(a, _)| a)
            .collect();
        if !lone.is_empty() {
            let t = &terms[i];
            let name = fresh("sum");
            let v = im.apply(
                Op::Reduce {
                    kind: ReduceKind::Sum,
                    axes: lone.clone(),
                    keepdims: false,
                },
                &[(&t.val, &n.in_name(i))],
                &name,
            )?;
            let labels = t
                .labels
                .iter()
                .enumerate()
                .filter(|(a, _)| !lone.contains(a))
                .map(|(_, &l)| l)
                .collect();
            terms[i] = Term { val: v, labels };
        }
    }
    let mut rest = terms.into_iter();
    let mut acc = rest.next().ok_or("Einsum has no inputs")?;
    let rest: Vec<Term> = rest.collect();
    for (k, b) in rest.iter().enumerate() {
        let keep: HashSet<char> = out_labels
            .iter()
            .chain(rest[k + 1..].iter().flat_map(|t| t.labels.iter()))
            .copied()
            .collect();
        acc = contract(im, &acc, b, &keep, &dims, &mut fresh)?;
    }
    // every label left is an output label (the rest were summed or contracted)
    Ok(vec![permute(im, &acc.val, &acc.labels, &out_labels, &out)?])
}

/// Transposes `v` (labels `from`) to the label order `to`, unless it is
/// already in it.
fn permute(im: &mut Importer, v: &Val, from: &[char], to: &[char], name: &str) -> R<Val> {
    let perm: Vec<usize> = to
        .iter()
        .map(|l| from.iter().position(|m| m == l).expect("label present"))
        .collect();
    if perm.iter().enumerate().all(|(i, &p)| i == p) {
        return Ok(v.clone());
    }
    im.apply(Op::Transpose { perm }, &[(v, "")], name)
}

/// One pair of operands as a batched matmul; the result keeps the labels
/// in `keep` (batch labels first, then `a`'s free labels, then `b`'s).
fn contract(
    im: &mut Importer,
    a: &Term,
    b: &Term,
    keep: &HashSet<char>,
    dims: &BTreeMap<char, usize>,
    fresh: &mut impl FnMut(&str) -> String,
) -> R<Term> {
    let batch: Vec<char> = a
        .labels
        .iter()
        .copied()
        .filter(|l| b.labels.contains(l) && keep.contains(l))
        .collect();
    let summed: Vec<char> = a
        .labels
        .iter()
        .copied()
        .filter(|l| b.labels.contains(l) && !keep.contains(l))
        .collect();
    let fa: Vec<char> = a
        .labels
        .iter()
        .copied()
        .filter(|l| !b.labels.contains(l))
        .collect();
    let fb: Vec<char> = b
        .labels
        .iter()
        .copied()
        .filter(|l| !a.labels.contains(l))
        .collect();
    let sizes = |t: &Term, ls: &[char], im: &Importer| -> Vec<usize> {
        let shape = im.shape(&t.val);
        ls.iter()
            .map(|l| shape[t.labels.iter().position(|m| m == l).expect("label")])
            .collect()
    };
    let prod = |ls: &[char]| ls.iter().map(|l| dims[l]).product::<usize>();
    let (m, k, nn) = (prod(&fa), prod(&summed), prod(&fb));
    let order_a: Vec<char> = batch.iter().chain(&fa).chain(&summed).copied().collect();
    let order_b: Vec<char> = batch.iter().chain(&summed).chain(&fb).copied().collect();
    let ta = permute(im, &a.val, &a.labels, &order_a, &fresh("transpose"))?;
    let tb = permute(im, &b.val, &b.labels, &order_b, &fresh("transpose"))?;
    let (ba, bb) = (sizes(a, &batch, im), sizes(b, &batch, im));
    let mut sa = ba.clone();
    sa.extend([m, k]);
    let mut sb = bb.clone();
    sb.extend([k, nn]);
    let ra = im.apply(Op::Reshape { shape: sa }, &[(&ta, "")], &fresh("reshape"))?;
    let rb = im.apply(Op::Reshape { shape: sb }, &[(&tb, "")], &fresh("reshape"))?;
    let p = im.apply(Op::MatMul, &[(&ra, ""), (&rb, "")], &fresh("matmul"))?;
    let mut shape: Vec<usize> = ba.iter().zip(&bb).map(|(&x, &y)| x.max(y)).collect();
    shape.extend(fa.iter().chain(&fb).map(|l| dims[l]));
    let val = im.apply(Op::Reshape { shape }, &[(&p, "")], &fresh("reshape"))?;
    let labels = batch.iter().chain(&fa).chain(&fb).copied().collect();
    Ok(Term { val, labels })
}

/// `Resize` (opsets 11–21) of the two spatial axes of an NCHW tensor:
/// nearest (floor, ceil, round_prefer_floor, round_prefer_ceil) or linear;
/// coordinate modes half_pixel, pytorch_half_pixel, align_corners and
/// asymmetric; scales or sizes (with `axes` from opset 18). Cubic,
/// antialiasing, tf_crop_and_resize, half_pixel_symmetric, a
/// keep_aspect_ratio_policy other than stretch, and resizing N or C are
/// refused with the reason.
pub(crate) fn resize(im: &mut Importer, n: &NodeCtx) -> R<Vec<Val>> {
    use kiln_ir::{CoordMode, Float, NearestMode, ResizeMode};
    let out = n.out_name(0);
    let x = n.req(0)?.clone();
    let shape = im.shape(&x);
    let rank = shape.len();
    let mode = match n.attr_s("mode", "nearest")?.as_str() {
        "nearest" => ResizeMode::Nearest,
        "linear" => ResizeMode::Linear,
        other => return Err(unsupported(n, format!("with mode \"{other}\""))),
    };
    let nearest = match n.attr_s("nearest_mode", "round_prefer_floor")?.as_str() {
        "floor" => NearestMode::Floor,
        "ceil" => NearestMode::Ceil,
        "round_prefer_floor" => NearestMode::RoundPreferFloor,
        "round_prefer_ceil" => NearestMode::RoundPreferCeil,
        other => return Err(E::Msg(format!("unknown nearest_mode \"{other}\""))),
    };
    let coord = match n
        .attr_s("coordinate_transformation_mode", "half_pixel")?
        .as_str()
    {
        "half_pixel" => CoordMode::HalfPixel,
        "pytorch_half_pixel" => CoordMode::PytorchHalfPixel,
        "align_corners" => CoordMode::AlignCorners,
        "asymmetric" => CoordMode::Asymmetric,
        other => {
            return Err(unsupported(
                n,
                format!("with coordinate_transformation_mode \"{other}\""),
            ));
        }
    };
    if n.attr_i("antialias", 0)? != 0 && mode == ResizeMode::Linear {
        return Err(unsupported(n, "with antialias=1"));
    }
    let policy = n.attr_s("keep_aspect_ratio_policy", "stretch")?;
    if policy != "stretch" {
        return Err(unsupported(
            n,
            format!("with keep_aspect_ratio_policy \"{policy}\""),
        ));
    }
    let axes = match n.attr_ints("axes") {
        Some(a) => a
            .iter()
            .map(|&a| norm_axis(a, rank))
            .collect::<R<Vec<_>>>()?,
        None => (0..rank).collect(),
    };
    let scales = n.opt_const(2, "scales")?.filter(|c| c.numel() > 0);
    let sizes = n.opt_const(3, "sizes")?.filter(|c| c.numel() > 0);
    // per-axis (output length, scale if given), over every axis of x
    let mut target: Vec<(usize, Option<f32>)> = shape.iter().map(|&d| (d, None)).collect();
    match (scales, sizes) {
        (Some(s), None) => {
            let v = s.floats();
            if v.len() != axes.len() {
                return Err(E::Msg(format!(
                    "scales {v:?} must have one entry per axis ({})",
                    axes.len()
                )));
            }
            for (&a, &f) in axes.iter().zip(&v) {
                if !(f.is_finite() && f > 0.0) {
                    return Err(E::Msg(format!("scale {f} must be finite and positive")));
                }
                let len = (shape[a] as f64 * f64::from(f)).floor();
                if len > u32::MAX as f64 {
                    return Err(E::Msg(format!("scale {f} makes axis {a} too long")));
                }
                target[a] = (len as usize, Some(f));
            }
        }
        (None, Some(s)) => {
            let v = s.ints().map_err(E::Msg)?;
            if v.len() != axes.len() {
                return Err(E::Msg(format!(
                    "sizes {v:?} must have one entry per axis ({})",
                    axes.len()
                )));
            }
            for (&a, &d) in axes.iter().zip(&v) {
                let d = usize::try_from(d)
                    .map_err(|_| E::Msg(format!("sizes {v:?} has a negative entry")))?;
                target[a] = (d, None);
            }
        }
        (Some(_), Some(_)) => return Err(E::Msg("both scales and sizes are given".into())),
        (None, None) => return Err(E::Msg("neither scales nor sizes is given".into())),
    }
    // Only H and W of NCHW: anything else changing is refused.
    for (a, &(len, s)) in target.iter().enumerate() {
        let spatial = rank == 4 && a >= 2;
        if !spatial && (len != shape[a] || s.is_some_and(|s| s != 1.0)) {
            return Err(unsupported(
                n,
                format!(
                    "resizing axis {a} of a rank-{rank} tensor (kiln resizes H and W of NCHW only)"
                ),
            ));
        }
    }
    if rank != 4 {
        // nothing changes: the identity
        return Ok(vec![x]);
    }
    let size = [target[2].0, target[3].0];
    let scale = match (target[2].1, target[3].1) {
        (None, None) => None,
        (h, w) => Some([Float(h.unwrap_or(1.0)), Float(w.unwrap_or(1.0))]),
    };
    let op = Op::resize(mode, nearest, coord, size, scale);
    Ok(vec![im.apply(op, &[(&x, &n.in_name(0))], &out)?])
}

/// `GatherND(data, indices)` with constant indices (the attention-bias
/// lookup `biases[:, idx]` of LeViT, TinyViT, EfficientFormerV2 and GCViT
/// as torch's dynamo exporter spells it): `data` viewed as `[B·E, rest..]`
/// (`B` the `batch_dims` axes, `E` the indexed ones) and one `gather` along
/// axis 0 of the flat positions `lin(batch)·|E| + lin(index)`, so it folds
/// on constants and is pure data movement otherwise.
pub(crate) fn gather_nd(im: &mut Importer, n: &NodeCtx) -> R<Vec<Val>> {
    let out = n.out_name(0);
    let data = n.req(0)?.clone();
    let idx = n.req_const(1, "indices")?;
    let ds = im.shape(&data);
    let b = usize::try_from(n.attr_i("batch_dims", 0)?)
        .map_err(|_| E::Msg("batch_dims must be non-negative".into()))?;
    let is = &idx.shape;
    let k = *is
        .last()
        .ok_or_else(|| E::Msg("indices must have rank ≥ 1".into()))?;
    if k == 0 {
        return Err(unsupported(
            n,
            "with an empty index tuple (indices.shape[-1] = 0)",
        ));
    }
    if b >= is.len() || b + k > ds.len() || ds[..b] != is[..b] {
        return Err(E::Msg(format!(
            "indices {is:?} with batch_dims {b} do not fit data {ds:?}"
        )));
    }
    let iv = idx.ints().map_err(E::Msg)?;
    let (bdims, edims, rest) = (&ds[..b], &ds[b..b + k], &ds[b + k..]);
    let e_count: usize = edims.iter().product();
    let b_count: usize = bdims.iter().product();
    let per_batch: usize = is[b..is.len() - 1].iter().product();
    let mut flat = Vec::with_capacity(iv.len() / k.max(1));
    for (t, tuple) in iv.chunks(k).enumerate() {
        let batch = t / per_batch.max(1);
        let mut lin = 0i64;
        for (&i, &d) in tuple.iter().zip(edims) {
            let d = d as i64;
            let i = if i < 0 { i + d } else { i };
            if !(0..d).contains(&i) {
                return Err(E::Msg(format!(
                    "index {i} is out of range for a dimension of {d}"
                )));
            }
            lin = lin * d + i;
        }
        flat.push((batch * e_count) as i64 + lin);
    }
    let mut view = vec![b_count * e_count];
    view.extend_from_slice(rest);
    let v = im.apply(
        Op::Reshape { shape: view },
        &[(&data, &n.in_name(0))],
        &format!("{out}.rows"),
    )?;
    let g = Op::Gather {
        axis: 0,
        indices: flat,
        indices_shape: is[..is.len() - 1].to_vec(),
    };
    Ok(vec![im.apply(g, &[(&v, "")], &out)?])
}
