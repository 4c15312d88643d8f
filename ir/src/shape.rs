//! Shape and type inference: the output types of an op from its operand types.
//!
//! Each op's rule is written on its helper below. Errors are plain strings
//! saying what is inconsistent; the caller (verifier, graph builder) adds the
//! node's name.

use crate::op::{BinaryOp, Op, PadMode, UnaryOp};
use crate::types::{DType, TensorType, broadcast_shapes};

/// The output types of `op` applied to operands of types `inputs`. Every
/// type it returns passes [`TensorType::check_size`] (a result too large to
/// exist is an error here, so no graph can hold one).
pub fn infer(op: &Op, inputs: &[TensorType]) -> Result<Vec<TensorType>, String> {
    let out = infer_unchecked(op, inputs)?;
    for t in &out {
        t.check_size()?;
    }
    Ok(out)
}

fn infer_unchecked(op: &Op, inputs: &[TensorType]) -> Result<Vec<TensorType>, String> {
    let ar = op.arity();
    if inputs.len() < ar.min || inputs.len() > ar.max {
        return Err(format!(
            "{} takes {} operand(s), got {}",
            op.name(),
            ar,
            inputs.len()
        ));
    }
    let one = |t: TensorType| Ok(vec![t]);
    match op {
        Op::Input | Op::Weight => Err(format!("{} has no operands to infer from", op.name())),
        Op::Conv2d {
            stride,
            pad,
            dilation,
            groups,
        } => one(conv2d(inputs, *stride, *pad, *dilation, *groups)?),
        Op::MatMul => one(matmul(&inputs[0], &inputs[1])?),
        Op::Gemm {
            trans_a, trans_b, ..
        } => one(gemm(inputs, *trans_a, *trans_b)?),
        Op::Unary(u) => one(unary(*u, &inputs[0])?),
        Op::Binary(b) => one(binary(*b, &inputs[0], &inputs[1])?),
        Op::Clip { .. } | Op::HardSigmoid { .. } => one(float_like(op, &inputs[0])?),
        Op::Softmax { axis } => {
            check_axis(op, *axis, inputs[0].rank())?;
            one(float_like(op, &inputs[0])?)
        }
        Op::LayerNorm { axis, .. } => one(layer_norm(inputs, *axis)?),
        Op::GroupNorm { groups, .. } => one(group_norm(inputs, *groups)?),
        Op::BatchNorm { .. } => one(batch_norm(inputs)?),
        Op::Reduce { axes, keepdims, .. } => one(reduce(op, &inputs[0], axes, *keepdims)?),
        Op::GlobalAvgPool => one(global_avg_pool(&inputs[0])?),
        Op::Pool2d {
            kernel,
            stride,
            pad,
            ..
        } => one(pool2d(&inputs[0], *kernel, *stride, *pad)?),
        Op::Reshape { shape } => one(reshape(&inputs[0], shape)?),
        Op::Transpose { perm } => one(transpose(&inputs[0], perm)?),
        Op::Concat { axis } => one(concat(inputs, *axis)?),
        Op::Slice {
            axes,
            starts,
            ends,
            steps,
        } => one(slice(&inputs[0], axes, starts, ends, steps)?),
        Op::Split { axis, sizes } => split(&inputs[0], *axis, sizes),
        Op::Squeeze { axes } => one(squeeze(&inputs[0], axes)?),
        Op::Unsqueeze { axes } => one(unsqueeze(&inputs[0], axes)?),
        Op::Flatten { axis } => {
            let x = &inputs[0];
            check_axis_incl(op, *axis, x.rank())?;
            let outer = x.shape[..*axis].iter().product::<usize>();
            let inner = x.shape[*axis..].iter().product::<usize>();
            one(TensorType::new(x.dtype, [outer, inner]))
        }
        Op::Pad { pads, mode, .. } => one(pad(&inputs[0], pads, *mode)?),
        Op::Expand { shape } => {
            let x = &inputs[0];
            let out = broadcast_shapes(&x.shape, shape)
                .ok_or_else(|| format!("expand: {x} does not broadcast with shape {shape:?}"))?;
            one(TensorType::new(x.dtype, out))
        }
        Op::Gather {
            axis,
            indices,
            indices_shape,
        } => one(gather(&inputs[0], *axis, indices, indices_shape)?),
        Op::Cast { to } => one(TensorType::new(*to, inputs[0].shape.clone())),
        Op::Resize { size, scale, .. } => one(resize(&inputs[0], *size, *scale)?),
        // The fused ops' rules live with their definitions (crate::fused).
        Op::Fused(f) => one(f.infer(inputs)?),
    }
}

/// resize: `x` f32 `[N,C,H,W]` → `[N,C,size[0],size[1]]`; given scales are
/// finite and positive; an empty plane cannot become a non-empty one.
fn resize(
    x: &TensorType,
    size: [usize; 2],
    scale: Option<[crate::op::Float; 2]>,
) -> Result<TensorType, String> {
    want_f32("resize", x)?;
    if x.rank() != 4 {
        return Err(format!("resize: x must be [N,C,H,W], got {x}"));
    }
    if let Some(s) = scale
        && s.iter().any(|f| !(f.0.is_finite() && f.0 > 0.0))
    {
        return Err(format!(
            "resize: scales must be finite and positive, got [{}, {}]",
            s[0], s[1]
        ));
    }
    for (&d, &len) in x.shape[2..].iter().zip(&size) {
        if d == 0 && len != 0 {
            return Err(format!(
                "resize: cannot resize an empty axis of {x} to {len}"
            ));
        }
    }
    let out = TensorType::f32([x.shape[0], x.shape[1], size[0], size[1]]);
    out.check_size()?;
    Ok(out)
}

fn check_axis(op: &Op, axis: usize, rank: usize) -> Result<(), String> {
    if axis < rank {
        Ok(())
    } else {
        Err(format!(
            "{}: axis {axis} out of range for rank {rank}",
            op.name()
        ))
    }
}

fn check_axis_incl(op: &Op, axis: usize, rank: usize) -> Result<(), String> {
    if axis <= rank {
        Ok(())
    } else {
        Err(format!(
            "{}: axis {axis} out of range for rank {rank}",
            op.name()
        ))
    }
}

/// `a + b + ...` of sizes, or an error naming `what` when it overflows.
/// Attribute values (pads, sizes, dilations) come from user text or files and
/// may be anything up to `i64::MAX`; sums of them must not wrap or panic.
fn sum(what: &str, terms: &[usize]) -> Result<usize, String> {
    terms
        .iter()
        .try_fold(0usize, |a, &t| a.checked_add(t))
        .ok_or_else(|| format!("{what}: sizes overflow: {terms:?}"))
}

fn want_f32(what: &str, t: &TensorType) -> Result<(), String> {
    if t.dtype == DType::F32 {
        Ok(())
    } else {
        Err(format!("{what}: expected an f32 operand, got {t}"))
    }
}

/// Element-wise float ops: the output has the operand's type (f32 only).
fn float_like(op: &Op, x: &TensorType) -> Result<TensorType, String> {
    want_f32(op.name(), x)?;
    Ok(x.clone())
}

/// conv2d: `x [N,C,H,W]`, `w [O, C/g, kh, kw]`, optional `bias [O]`; `C` and
/// `O` divisible by `g`. Output `[N, O, Ho, Wo]` with
/// `Ho = (H + top + bottom - dh·(kh-1) - 1) / sh + 1` (floor), likewise `Wo`;
/// the padded input must hold at least one dilated kernel window.
fn conv2d(
    inputs: &[TensorType],
    stride: [usize; 2],
    pad: [usize; 4],
    dilation: [usize; 2],
    groups: usize,
) -> Result<TensorType, String> {
    let (x, w) = (&inputs[0], &inputs[1]);
    want_f32("conv2d", x)?;
    want_f32("conv2d weight", w)?;
    if x.rank() != 4 || w.rank() != 4 {
        return Err(format!(
            "conv2d: expected rank-4 input and weight, got {x} and {w}"
        ));
    }
    if groups == 0 || stride.contains(&0) || dilation.contains(&0) {
        return Err("conv2d: groups, stride and dilation must be positive".into());
    }
    let (n, c, h, wd) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3]);
    let (o, cg, kh, kw) = (w.shape[0], w.shape[1], w.shape[2], w.shape[3]);
    if !c.is_multiple_of(groups) || !o.is_multiple_of(groups) {
        return Err(format!(
            "conv2d: {c} input and {o} output channels must both be divisible by groups={groups}"
        ));
    }
    if cg.checked_mul(groups) != Some(c) {
        return Err(format!(
            "conv2d: weight {w} expects {} input channels per group, input has {c} channels in {groups} group(s)",
            cg
        ));
    }
    if let Some(b) = inputs.get(2) {
        want_f32("conv2d bias", b)?;
        if b.shape != [o] {
            return Err(format!("conv2d: bias must be f32[{o}], got {b}"));
        }
    }
    let out = |size: usize, lo: usize, hi: usize, k: usize, s: usize, d: usize, what: &str| {
        let padded = sum("conv2d", &[size, lo, hi])?;
        let span = d
            .checked_mul(k.max(1) - 1)
            .and_then(|x| x.checked_add(1))
            .ok_or_else(|| format!("conv2d: dilated kernel span overflows ({d} x {k})"))?;
        if k == 0 || padded < span {
            Err(format!(
                "conv2d: {what} {size} (padded {padded}) is smaller than the kernel span {span}"
            ))
        } else {
            Ok((padded - span) / s + 1)
        }
    };
    let ho = out(h, pad[0], pad[2], kh, stride[0], dilation[0], "height")?;
    let wo = out(wd, pad[1], pad[3], kw, stride[1], dilation[1], "width")?;
    Ok(TensorType::f32([n, o, ho, wo]))
}

/// matmul (numpy semantics): `a [..., M, K] @ b [..., K, N] -> [..., M, N]`,
/// batch dims broadcast. A rank-1 `a` is treated as `[1, K]` and a rank-1 `b`
/// as `[K, 1]`, and that inserted axis is dropped from the output.
pub fn matmul(a: &TensorType, b: &TensorType) -> Result<TensorType, String> {
    want_f32("matmul", a)?;
    want_f32("matmul", b)?;
    if a.rank() == 0 || b.rank() == 0 {
        return Err(format!(
            "matmul: operands must have rank >= 1, got {a} and {b}"
        ));
    }
    let a2: Vec<usize> = if a.rank() == 1 {
        vec![1, a.shape[0]]
    } else {
        a.shape.clone()
    };
    let b2: Vec<usize> = if b.rank() == 1 {
        vec![b.shape[0], 1]
    } else {
        b.shape.clone()
    };
    let (m, k) = (a2[a2.len() - 2], a2[a2.len() - 1]);
    let (k2, n) = (b2[b2.len() - 2], b2[b2.len() - 1]);
    if k != k2 {
        return Err(format!("matmul: inner dimensions differ: {a} @ {b}"));
    }
    let batch = broadcast_shapes(&a2[..a2.len() - 2], &b2[..b2.len() - 2])
        .ok_or_else(|| format!("matmul: batch dimensions of {a} and {b} do not broadcast"))?;
    let mut out = batch;
    if a.rank() > 1 {
        out.push(m);
    }
    if b.rank() > 1 {
        out.push(n);
    }
    Ok(TensorType::f32(out))
}

/// gemm: `a` 2-D `[M,K]` (`[K,M]` when `trans_a`), `b` 2-D `[K,N]` (`[N,K]`
/// when `trans_b`), optional `c` broadcastable to `[M,N]`. Output `[M,N]`.
fn gemm(inputs: &[TensorType], trans_a: bool, trans_b: bool) -> Result<TensorType, String> {
    let (a, b) = (&inputs[0], &inputs[1]);
    want_f32("gemm", a)?;
    want_f32("gemm", b)?;
    if a.rank() != 2 || b.rank() != 2 {
        return Err(format!("gemm: operands must be rank 2, got {a} and {b}"));
    }
    let (m, k) = if trans_a {
        (a.shape[1], a.shape[0])
    } else {
        (a.shape[0], a.shape[1])
    };
    let (k2, n) = if trans_b {
        (b.shape[1], b.shape[0])
    } else {
        (b.shape[0], b.shape[1])
    };
    if k != k2 {
        return Err(format!(
            "gemm: inner dimensions differ ({k} vs {k2}) for {a} and {b}"
        ));
    }
    if let Some(c) = inputs.get(2) {
        want_f32("gemm", c)?;
        if broadcast_shapes(&c.shape, &[m, n]).as_deref() != Some(&[m, n][..]) {
            return Err(format!("gemm: c {c} does not broadcast to [{m},{n}]"));
        }
    }
    Ok(TensorType::f32([m, n]))
}

/// Unary element-wise ops: output type = operand type; f32 only, except
/// `identity`, `neg` and `abs`, which also take i64.
fn unary(u: UnaryOp, x: &TensorType) -> Result<TensorType, String> {
    if !matches!(u, UnaryOp::Identity | UnaryOp::Neg | UnaryOp::Abs) {
        want_f32(u.name(), x)?;
    }
    Ok(x.clone())
}

/// Binary element-wise ops: operands of one dtype, shapes broadcast (numpy);
/// output has the broadcast shape. `pow` is f32 only.
fn binary(op: BinaryOp, a: &TensorType, b: &TensorType) -> Result<TensorType, String> {
    if a.dtype != b.dtype {
        return Err(format!("{}: operand dtypes differ: {a} and {b}", op.name()));
    }
    if op == BinaryOp::Pow {
        want_f32("pow", a)?;
    }
    let shape = broadcast_shapes(&a.shape, &b.shape)
        .ok_or_else(|| format!("{}: shapes {a} and {b} do not broadcast", op.name()))?;
    Ok(TensorType::new(a.dtype, shape))
}

/// layer_norm: normalises over axes `axis..` (axis < rank); `gamma` and
/// optional `beta` have shape `x.shape[axis..]`. Output = `x`'s type.
fn layer_norm(inputs: &[TensorType], axis: usize) -> Result<TensorType, String> {
    let x = &inputs[0];
    want_f32("layer_norm", x)?;
    if axis >= x.rank() {
        return Err(format!("layer_norm: axis {axis} out of range for {x}"));
    }
    let want = &x.shape[axis..];
    for (what, t) in ["gamma", "beta"].iter().zip(&inputs[1..]) {
        if t.dtype != DType::F32 || t.shape != want {
            return Err(format!("layer_norm: {what} must be f32{want:?}, got {t}"));
        }
    }
    Ok(x.clone())
}

/// group_norm: `x [N,C,...]` (rank >= 2), `C % groups == 0`, `gamma` and
/// `beta` `[C]`. Output = `x`'s type.
fn group_norm(inputs: &[TensorType], groups: usize) -> Result<TensorType, String> {
    let x = &inputs[0];
    want_f32("group_norm", x)?;
    if x.rank() < 2 {
        return Err(format!("group_norm: input must have rank >= 2, got {x}"));
    }
    let c = x.shape[1];
    if groups == 0 || !c.is_multiple_of(groups) {
        return Err(format!(
            "group_norm: {c} channels not divisible by groups={groups}"
        ));
    }
    per_channel("group_norm", &inputs[1..], c)?;
    Ok(x.clone())
}

/// batch_norm: `x [N,C,...]` (rank >= 2); `gamma`, `beta`, `mean`, `var`
/// each `[C]`. Output = `x`'s type.
fn batch_norm(inputs: &[TensorType]) -> Result<TensorType, String> {
    let x = &inputs[0];
    want_f32("batch_norm", x)?;
    if x.rank() < 2 {
        return Err(format!("batch_norm: input must have rank >= 2, got {x}"));
    }
    per_channel("batch_norm", &inputs[1..], x.shape[1])?;
    Ok(x.clone())
}

fn per_channel(op: &str, params: &[TensorType], c: usize) -> Result<(), String> {
    for (i, t) in params.iter().enumerate() {
        if t.dtype != DType::F32 || t.shape != [c] {
            return Err(format!("{op}: operand {} must be f32[{c}], got {t}", i + 1));
        }
    }
    Ok(())
}

fn check_axes(op: &Op, axes: &[usize], rank: usize) -> Result<(), String> {
    if axes.windows(2).any(|w| w[0] >= w[1]) {
        return Err(format!(
            "{}: axes {axes:?} must be sorted and unique",
            op.name()
        ));
    }
    if let Some(&a) = axes.iter().find(|&&a| a >= rank) {
        return Err(format!(
            "{}: axis {a} out of range for rank {rank}",
            op.name()
        ));
    }
    Ok(())
}

/// reduce_*: `axes` sorted, unique, non-empty, each < rank. Output drops the
/// reduced axes, or keeps them as 1 with `keepdims`. f32 only.
fn reduce(op: &Op, x: &TensorType, axes: &[usize], keepdims: bool) -> Result<TensorType, String> {
    want_f32(op.name(), x)?;
    if axes.is_empty() {
        return Err(format!("{}: axes must not be empty", op.name()));
    }
    check_axes(op, axes, x.rank())?;
    let shape = x
        .shape
        .iter()
        .enumerate()
        .filter_map(|(i, &d)| match (axes.contains(&i), keepdims) {
            (false, _) => Some(d),
            (true, true) => Some(1),
            (true, false) => None,
        })
        .collect::<Vec<_>>();
    Ok(TensorType::f32(shape))
}

/// global_avg_pool: `x [N,C,d1,...]` (rank >= 3) -> `[N,C,1,...]`.
fn global_avg_pool(x: &TensorType) -> Result<TensorType, String> {
    want_f32("global_avg_pool", x)?;
    if x.rank() < 3 {
        return Err(format!(
            "global_avg_pool: input must have rank >= 3, got {x}"
        ));
    }
    let mut shape = x.shape.clone();
    for d in &mut shape[2..] {
        *d = 1;
    }
    Ok(TensorType::f32(shape))
}

/// max_pool2d / avg_pool2d: `x [N,C,H,W]`; output `[N,C,Ho,Wo]` with
/// `Ho = (H + top + bottom - kh) / sh + 1` (floor), likewise `Wo`; each pad
/// smaller than the kernel.
fn pool2d(
    x: &TensorType,
    kernel: [usize; 2],
    stride: [usize; 2],
    pad: [usize; 4],
) -> Result<TensorType, String> {
    want_f32("pool2d", x)?;
    if x.rank() != 4 {
        return Err(format!("pool2d: input must be rank 4, got {x}"));
    }
    if kernel.contains(&0) || stride.contains(&0) {
        return Err("pool2d: kernel and stride must be positive".into());
    }
    if pad[0] >= kernel[0] || pad[2] >= kernel[0] || pad[1] >= kernel[1] || pad[3] >= kernel[1] {
        return Err(format!(
            "pool2d: padding {pad:?} must be smaller than the kernel {kernel:?}"
        ));
    }
    let h = sum("pool2d", &[x.shape[2], pad[0], pad[2]])?;
    let w = sum("pool2d", &[x.shape[3], pad[1], pad[3]])?;
    if h < kernel[0] || w < kernel[1] {
        return Err(format!(
            "pool2d: kernel {kernel:?} larger than padded input {x}"
        ));
    }
    Ok(TensorType::f32([
        x.shape[0],
        x.shape[1],
        (h - kernel[0]) / stride[0] + 1,
        (w - kernel[1]) / stride[1] + 1,
    ]))
}

/// reshape: the new shape must have the same element count. Any dtype.
fn reshape(x: &TensorType, shape: &[usize]) -> Result<TensorType, String> {
    let n: Option<usize> = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    if n != Some(x.numel()) {
        return Err(format!(
            "reshape: {x} has {} elements, shape {shape:?} has a different count",
            x.numel()
        ));
    }
    Ok(TensorType::new(x.dtype, shape))
}

/// transpose: `perm` is a permutation of `0..rank`; `out.shape[i] = x.shape[perm[i]]`.
fn transpose(x: &TensorType, perm: &[usize]) -> Result<TensorType, String> {
    let mut seen = vec![false; x.rank()];
    if perm.len() != x.rank()
        || perm
            .iter()
            .any(|&p| p >= x.rank() || std::mem::replace(&mut seen[p], true))
    {
        return Err(format!(
            "transpose: {perm:?} is not a permutation of the axes of {x}"
        ));
    }
    Ok(TensorType::new(
        x.dtype,
        perm.iter().map(|&p| x.shape[p]).collect::<Vec<_>>(),
    ))
}

/// concat: all operands of one dtype and rank, equal in every dim but `axis`;
/// the output's `axis` is the sum.
fn concat(inputs: &[TensorType], axis: usize) -> Result<TensorType, String> {
    let first = &inputs[0];
    if axis >= first.rank() {
        return Err(format!("concat: axis {axis} out of range for {first}"));
    }
    let mut shape = first.shape.clone();
    shape[axis] = 0;
    for t in inputs {
        let same_rest = t.rank() == first.rank()
            && t.shape
                .iter()
                .zip(&first.shape)
                .enumerate()
                .all(|(i, (a, b))| i == axis || a == b);
        if t.dtype != first.dtype || !same_rest {
            return Err(format!(
                "concat: {t} does not match {first} outside axis {axis}"
            ));
        }
        shape[axis] = sum("concat", &[shape[axis], t.shape[axis]])?;
    }
    Ok(TensorType::new(first.dtype, shape))
}

/// The clamped `(start, end)` of a slice along an axis of length `dim`, as
/// [`Op::Slice`] documents; shared with the interpreter.
pub fn slice_bounds(dim: usize, start: i64, end: i64, step: i64) -> (i64, i64, usize) {
    let d = dim as i64;
    let (s, e) = if step > 0 {
        (start.clamp(0, d), end.clamp(0, d))
    } else {
        (start.clamp(0, (d - 1).max(0)), end.clamp(-1, d - 1))
    };
    // ceil(n / |step|) written as (n - 1) / |step| + 1 so that a huge step
    // cannot overflow; `unsigned_abs` because -i64::MIN does not fit in i64.
    let len = if step > 0 {
        if e > s { (e - s - 1) / step + 1 } else { 0 }
    } else if s > e && d > 0 {
        ((s - e - 1).unsigned_abs() / step.unsigned_abs() + 1) as i64
    } else {
        0
    };
    (s, e, len as usize)
}

/// slice: `axes` unique and < rank; `starts`, `ends`, `steps` the same length
/// as `axes`; steps non-zero. Each listed axis gets
/// `ceil((end - start) / step)` elements (0 if negative) after clamping;
/// unlisted axes are unchanged.
fn slice(
    x: &TensorType,
    axes: &[usize],
    starts: &[i64],
    ends: &[i64],
    steps: &[i64],
) -> Result<TensorType, String> {
    if starts.len() != axes.len() || ends.len() != axes.len() || steps.len() != axes.len() {
        return Err("slice: axes, starts, ends and steps must have the same length".into());
    }
    let mut shape = x.shape.clone();
    for (i, &a) in axes.iter().enumerate() {
        if a >= x.rank() || axes[..i].contains(&a) {
            return Err(format!("slice: axis {a} repeated or out of range for {x}"));
        }
        if steps[i] == 0 {
            return Err("slice: step must not be 0".into());
        }
        shape[a] = slice_bounds(x.shape[a], starts[i], ends[i], steps[i]).2;
    }
    Ok(TensorType::new(x.dtype, shape))
}

/// split: sizes sum to `x.shape[axis]`; one output per size, each `x`'s shape
/// with `axis` set to the size.
fn split(x: &TensorType, axis: usize, sizes: &[usize]) -> Result<Vec<TensorType>, String> {
    if axis >= x.rank() {
        return Err(format!("split: axis {axis} out of range for {x}"));
    }
    if sizes.is_empty() || sum("split", sizes)? != x.shape[axis] {
        return Err(format!(
            "split: sizes {sizes:?} must be non-empty and sum to {}",
            x.shape[axis]
        ));
    }
    Ok(sizes
        .iter()
        .map(|&s| {
            let mut shape = x.shape.clone();
            shape[axis] = s;
            TensorType::new(x.dtype, shape)
        })
        .collect())
}

/// squeeze: `axes` sorted, unique, < rank, each of size 1; they are removed.
fn squeeze(x: &TensorType, axes: &[usize]) -> Result<TensorType, String> {
    check_axes(&Op::Squeeze { axes: vec![] }, axes, x.rank())?;
    if let Some(&a) = axes.iter().find(|&&a| x.shape[a] != 1) {
        return Err(format!("squeeze: axis {a} of {x} is not of size 1"));
    }
    let shape = x
        .shape
        .iter()
        .enumerate()
        .filter(|(i, _)| !axes.contains(i))
        .map(|(_, &d)| d)
        .collect::<Vec<_>>();
    Ok(TensorType::new(x.dtype, shape))
}

/// unsqueeze: `axes` sorted, unique, each < output rank (= rank + axes.len());
/// a size-1 axis is inserted at each.
fn unsqueeze(x: &TensorType, axes: &[usize]) -> Result<TensorType, String> {
    let rank = x.rank() + axes.len();
    check_axes(&Op::Unsqueeze { axes: vec![] }, axes, rank)?;
    let mut it = x.shape.iter();
    let shape = (0..rank)
        .map(|i| {
            if axes.contains(&i) {
                1
            } else {
                *it.next().unwrap_or(&1)
            }
        })
        .collect::<Vec<_>>();
    Ok(TensorType::new(x.dtype, shape))
}

/// pad: `pads` has `2·rank` entries (all begins, then all ends); each output
/// dim is `begin + dim + end`. Reflect needs every pad < dim; edge needs a
/// non-empty axis wherever it pads.
fn pad(x: &TensorType, pads: &[usize], mode: PadMode) -> Result<TensorType, String> {
    let r = x.rank();
    if pads.len() != 2 * r {
        return Err(format!(
            "pad: expected {} pad amounts for {x}, got {}",
            2 * r,
            pads.len()
        ));
    }
    let mut shape = x.shape.clone();
    for (i, d) in shape.iter_mut().enumerate() {
        let (b, e) = (pads[i], pads[r + i]);
        match mode {
            PadMode::Reflect if (b > 0 || e > 0) && (b >= *d || e >= *d) => {
                return Err(format!(
                    "pad: reflect pads ({b},{e}) must be smaller than axis {i} of {x}"
                ));
            }
            PadMode::Edge if (b > 0 || e > 0) && *d == 0 => {
                return Err(format!("pad: edge mode cannot pad empty axis {i} of {x}"));
            }
            _ => {}
        }
        *d = sum("pad", &[b, *d, e])?;
    }
    Ok(TensorType::new(x.dtype, shape))
}

/// gather: `axis < rank`; every index in `[-dim, dim)`; `indices` has
/// `prod(indices_shape)` entries. Output:
/// `x.shape[..axis] ++ indices_shape ++ x.shape[axis+1..]`.
fn gather(
    x: &TensorType,
    axis: usize,
    indices: &[i64],
    ishape: &[usize],
) -> Result<TensorType, String> {
    if axis >= x.rank() {
        return Err(format!("gather: axis {axis} out of range for {x}"));
    }
    let count = ishape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    if count != Some(indices.len()) {
        return Err(format!(
            "gather: {} indices do not fill indices_shape {ishape:?}",
            indices.len()
        ));
    }
    let d = x.shape[axis] as i64;
    if let Some(i) = indices.iter().find(|&&i| i < -d || i >= d) {
        return Err(format!(
            "gather: index {i} out of range for axis {axis} of {x}"
        ));
    }
    let mut shape = x.shape[..axis].to_vec();
    shape.extend_from_slice(ishape);
    shape.extend_from_slice(&x.shape[axis + 1..]);
    Ok(TensorType::new(x.dtype, shape))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::op::Float;

    fn f(shape: &[usize]) -> TensorType {
        TensorType::f32(shape)
    }

    fn conv(stride: usize, pad: [usize; 4], groups: usize) -> Op {
        Op::Conv2d {
            stride: [stride, stride],
            pad,
            dilation: [1, 1],
            groups,
        }
    }

    #[test]
    fn conv_shapes() {
        let out = infer(
            &conv(2, [1, 1, 1, 1], 1),
            &[f(&[1, 3, 224, 224]), f(&[16, 3, 3, 3])],
        )
        .unwrap();
        assert_eq!(out, vec![f(&[1, 16, 112, 112])]);
        // depthwise, stride 2 on an odd size, asymmetric pad
        let out = infer(
            &conv(2, [0, 0, 1, 1], 8),
            &[f(&[1, 8, 7, 7]), f(&[8, 1, 3, 3])],
        )
        .unwrap();
        assert_eq!(out, vec![f(&[1, 8, 3, 3])]);
        // expanding depthwise (each channel -> 2)
        let out = infer(
            &conv(1, [1, 1, 1, 1], 4),
            &[f(&[1, 4, 5, 5]), f(&[8, 1, 3, 3])],
        )
        .unwrap();
        assert_eq!(out, vec![f(&[1, 8, 5, 5])]);
        assert!(infer(&conv(1, [0; 4], 3), &[f(&[1, 4, 5, 5]), f(&[8, 1, 3, 3])]).is_err());
        assert!(infer(&conv(1, [0; 4], 1), &[f(&[1, 4, 2, 2]), f(&[8, 4, 3, 3])]).is_err());
        assert!(
            infer(
                &conv(1, [0; 4], 1),
                &[f(&[1, 4, 3, 3]), f(&[8, 4, 3, 3]), f(&[7])]
            )
            .is_err()
        );
    }

    #[test]
    fn matmul_shapes() {
        assert_eq!(
            matmul(&f(&[2, 1, 3, 4]), &f(&[5, 4, 6])).unwrap(),
            f(&[2, 5, 3, 6])
        );
        assert_eq!(matmul(&f(&[4]), &f(&[4, 6])).unwrap(), f(&[6]));
        assert_eq!(matmul(&f(&[3, 4]), &f(&[4])).unwrap(), f(&[3]));
        assert!(matmul(&f(&[3, 4]), &f(&[5, 6])).is_err());
    }

    #[test]
    fn movement_shapes() {
        let t = |op: Op, x: &[usize]| infer(&op, &[f(x)]).map(|v| v[0].shape.clone());
        assert_eq!(
            t(
                Op::Transpose {
                    perm: vec![0, 2, 1]
                },
                &[1, 2, 3]
            )
            .unwrap(),
            [1, 3, 2]
        );
        assert!(
            t(
                Op::Transpose {
                    perm: vec![0, 0, 1]
                },
                &[1, 2, 3]
            )
            .is_err()
        );
        assert_eq!(t(Op::Reshape { shape: vec![6] }, &[2, 3]).unwrap(), [6]);
        assert!(t(Op::Reshape { shape: vec![7] }, &[2, 3]).is_err());
        assert_eq!(
            t(Op::Unsqueeze { axes: vec![0, 3] }, &[2, 3]).unwrap(),
            [1, 2, 3, 1]
        );
        assert_eq!(t(Op::Squeeze { axes: vec![0] }, &[1, 3]).unwrap(), [3]);
        assert!(t(Op::Squeeze { axes: vec![1] }, &[1, 3]).is_err());
        assert_eq!(t(Op::Flatten { axis: 1 }, &[2, 3, 4]).unwrap(), [2, 12]);
        let sl = Op::Slice {
            axes: vec![1],
            starts: vec![1],
            ends: vec![100],
            steps: vec![2],
        };
        assert_eq!(t(sl, &[2, 6]).unwrap(), [2, 3]);
        let rev = Op::Slice {
            axes: vec![0],
            starts: vec![5],
            ends: vec![-1],
            steps: vec![-1],
        };
        assert_eq!(t(rev, &[4]).unwrap(), [4]);
        let g = Op::Gather {
            axis: 1,
            indices: vec![0],
            indices_shape: vec![],
        };
        assert_eq!(t(g, &[1, 3, 8]).unwrap(), [1, 8]);
        let p = Op::Pad {
            pads: vec![0, 1, 0, 2],
            mode: PadMode::Constant,
            value: Float(0.0),
        };
        assert_eq!(t(p, &[2, 3]).unwrap(), [2, 6]);
        let p = Op::Pad {
            pads: vec![3, 0],
            mode: PadMode::Reflect,
            value: Float(0.0),
        };
        assert!(t(p, &[3]).is_err());
        assert_eq!(
            t(
                Op::Expand {
                    shape: vec![4, 1, 3]
                },
                &[2, 1]
            )
            .unwrap(),
            [4, 2, 3]
        );
    }

    #[test]
    fn norms_and_reductions() {
        let ln = Op::LayerNorm {
            axis: 2,
            eps: Float(1e-5),
        };
        assert!(infer(&ln, &[f(&[1, 6, 8]), f(&[8]), f(&[8])]).is_ok());
        assert!(infer(&ln, &[f(&[1, 6, 8]), f(&[6, 8])]).is_err());
        let gn = Op::GroupNorm {
            groups: 3,
            eps: Float(1e-5),
        };
        assert!(infer(&gn, &[f(&[1, 4, 2]), f(&[4]), f(&[4])]).is_err());
        let r = Op::Reduce {
            kind: crate::op::ReduceKind::Mean,
            axes: vec![1, 2],
            keepdims: false,
        };
        assert_eq!(infer(&r, &[f(&[2, 3, 4])]).unwrap(), vec![f(&[2])]);
        let r = Op::Reduce {
            kind: crate::op::ReduceKind::Sum,
            axes: vec![2, 1],
            keepdims: true,
        };
        assert!(infer(&r, &[f(&[2, 3, 4])]).is_err());
    }

    #[test]
    fn arity_is_checked() {
        let e = infer(&Op::Binary(BinaryOp::Add), &[f(&[1])]).unwrap_err();
        assert!(e.contains("takes 2 operand(s), got 1"), "{e}");
        assert!(infer(&Op::Concat { axis: 0 }, &[]).is_err());
    }

    #[test]
    fn slice_bounds_clamp_like_onnx() {
        assert_eq!(slice_bounds(5, 0, 5, 1), (0, 5, 5));
        assert_eq!(slice_bounds(5, 4, -1, -1), (4, -1, 5));
        assert_eq!(slice_bounds(5, 9, 0, -2), (4, 0, 2));
        assert_eq!(slice_bounds(5, 3, 1, 1), (3, 1, 0));
        assert_eq!(slice_bounds(0, 0, -1, -1), (0, -1, 0));
        // huge steps take one element and must not overflow
        assert_eq!(slice_bounds(5, 2, 5, i64::MAX), (2, 5, 1));
        assert_eq!(slice_bounds(5, 4, -1, i64::MIN), (4, -1, 1));
    }
}
