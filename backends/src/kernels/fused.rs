//! Kernels of the optimiser's fused ops: `fused_conv` and `fused_linear`
//! run as one convolution / GEMM kernel whose [`Epilogue`] applies the
//! activation and the residual to the accumulators before the store (the
//! bias seeds them). `fused_mha`, `fused_m2f` and `fused_f2m` have kernels
//! in `attention.rs`, `fused_sep_attn` in `sep_attn.rs`. `fused_xca`, and
//! the few shapes these kernels do not take, are expanded into
//! primitive ops before lowering ([`has_kernel`] decides,
//! `compiled::front` expands). A
//! `fused_conv_chain` is split into one `fused_conv` per stage
//! ([`split_conv_chains`]), each convolution keeping its epilogue; with
//! `CompileOptions::banded_chains`, an inverted-residual block (pointwise
//! → depthwise → pointwise with a large expanded tensor) runs band by band
//! in `chain.rs` instead, its expanded tensor never in memory.
//!
//! The residual is read at the index about to be written; it is never the
//! output buffer, because fused nodes have no in-place operand
//! (`kernels::inplace_operand`).

use kiln_ir::fused::{Act, FusedOp};
use kiln_ir::{Graph, IrError, NodeId, Op, TensorType, Value};

use super::conv::{self, Geom};
use super::epilogue::{Epilogue, Slopes};
use super::{Kernels, NodeCx, attention, chain, matmul, sep_attn};
use crate::error::BackendError;

/// Where the operands of a `fused_conv` / `fused_linear` are: bias, the
/// dynamic ReLU's slopes, residual (indices into the operand list).
struct Layout {
    bias: Option<usize>,
    slopes: Option<(usize, usize)>,
    residual: Option<usize>,
}

fn layout(bias: bool, act: Act, residual: bool) -> Layout {
    let mut i = 2;
    let mut take = |present: bool| {
        present.then(|| {
            i += 1;
            i - 1
        })
    };
    let bias = take(bias);
    let slopes = take(act == Act::DyRelu).zip(take(act == Act::DyRelu));
    let residual = take(residual);
    Layout {
        bias,
        slopes,
        residual,
    }
}

/// The batch stride of dynamic-ReLU slopes of type `t` for an output
/// `[N, O, H, W]`: `Some(0)` when one slope per channel serves every image,
/// `Some(O)` for one per image and channel, `None` for any other broadcast
/// (those run as the expansion).
pub(crate) fn slope_batch_stride(t: &TensorType, out: &[usize]) -> Option<usize> {
    if t.shape.len() > 4 || out.len() != 4 {
        return None;
    }
    let mut s = vec![1; 4 - t.shape.len()];
    s.extend(&t.shape);
    if s[1] != out[1] || s[2] != 1 || s[3] != 1 {
        return None;
    }
    match s[0] {
        _ if out[0] == 1 => Some(0),
        1 => Some(0),
        n if n == out[0] => Some(out[1]),
        _ => None,
    }
}

/// Whether node `id` (a fused op) has a kernel of its own; `false` means
/// the backend runs its primitive expansion.
pub(crate) fn has_kernel(g: &Graph, id: NodeId) -> bool {
    let node = g.node(id);
    let Op::Fused(f) = &node.op else {
        return false;
    };
    let ops: Vec<TensorType> = g
        .operands(id)
        .iter()
        .map(|&v| g.value_type(v).clone())
        .collect();
    let Some(out) = node.outputs.first().map(|o| &o.ty) else {
        return false;
    };
    match *f {
        FusedOp::Conv {
            bias,
            act,
            residual,
            shuffle,
            ..
        } => {
            let Some(geom) = ops
                .get(1)
                .and_then(|w| Geom::of(&node.op, &ops[0].shape, &w.shape, &out.shape))
            else {
                return false;
            };
            // A channel shuffle (Mobile-Former-26M) is where each output
            // row is stored: any shuffle for the depthwise kernel (one plane
            // per unit), for a GEMM one whose blocks nest with the conv
            // groups (a fixed C row stride per batch).
            if shuffle != 1
                && !geom.is_depthwise()
                && conv::shuffle_rows(geom.o / geom.groups, geom.o, shuffle).is_none()
            {
                return false;
            }
            let l = layout(bias, act, residual);
            match l.slopes {
                None => true,
                Some((i1, i2)) => {
                    let s1 = slope_batch_stride(&ops[i1], &out.shape);
                    let s2 = slope_batch_stride(&ops[i2], &out.shape);
                    // The GEMM's slope rows are offset per group, not per
                    // image: per-image slopes of a batch run as the expansion.
                    s1.is_some() && s1 == s2 && (geom.is_depthwise() || s1 == Some(0))
                }
            }
        }
        FusedOp::Linear { bias, .. } => {
            ops.len() >= 2
                && ops[1].rank() == 2
                && !ops[0].shape.is_empty()
                && (!bias || ops.get(2).is_some_and(|b| b.rank() == 1))
        }
        FusedOp::Attention { .. } | FusedOp::M2fBridge { .. } | FusedOp::F2mBridge { .. } => {
            attention::has_kernel(f, &ops)
        }
        FusedOp::SepAttention { .. } => sep_attn::has_kernel(f, &ops),
        // XFormer's cross-feature attention has no kernel yet: it runs as
        // its expansion.
        FusedOp::CrossFeatureAttention { .. } => false,
        FusedOp::ConvChain { .. } => chain::has_kernel(g, id),
    }
}

/// Rewrites every `fused_conv_chain` of `g` but those to `keep` (which
/// run as `chain.rs` kernels) into its stages, each a
/// `fused_conv` with the stage's bias and activation, the chain's residual
/// on the last one. This is the chain's own expansion
/// (`FusedOp::expand`: each stage is conv2d → epilogue, then the residual
/// after the last activation) grouped per convolution. Returns how many
/// chains were split.
pub(crate) fn split_conv_chains(
    g: &mut Graph,
    keep: impl Fn(&Graph, NodeId) -> bool,
) -> Result<usize, IrError> {
    let chains: Vec<NodeId> = g
        .topo_order()?
        .into_iter()
        .filter(|&id| matches!(g.node(id).op, Op::Fused(FusedOp::ConvChain { .. })) && !keep(g, id))
        .collect();
    for &id in &chains {
        let Op::Fused(FusedOp::ConvChain { stages, residual }) = g.node(id).op.clone() else {
            continue;
        };
        let operands = g.operands(id);
        let want = FusedOp::ConvChain {
            stages: stages.clone(),
            residual,
        }
        .num_operands();
        if operands.len() != want {
            return Err(IrError::Graph(format!(
                "{}: fused_conv_chain takes {want} operands, has {}",
                g.display_node(id),
                operands.len()
            )));
        }
        let mut it = operands.iter().copied();
        let mut next = || it.next().expect("operand count checked above");
        let mut y: Value = next();
        for (k, s) in stages.iter().enumerate() {
            let last = k + 1 == stages.len();
            let mut args = vec![y, next()];
            if s.bias {
                args.push(next());
            }
            for _ in 0..s.act.extra_operands() {
                args.push(next());
            }
            let res = last && residual;
            if res {
                args.push(next());
            }
            let conv = FusedOp::Conv {
                stride: s.stride,
                pad: s.pad,
                dilation: [1, 1],
                groups: s.groups,
                bias: s.bias,
                shuffle: s.shuffle,
                act: s.act,
                residual: res,
            };
            y = g.add(Op::Fused(conv), &args)?;
        }
        g.replace_all_uses(Value::of(id), y);
        g.remove_node(id);
    }
    Ok(chains.len())
}

/// Lowers a `fused_conv`, `fused_linear`, `fused_mha`, `fused_m2f`,
/// `fused_f2m` or `fused_sep_attn` node that [`has_kernel`].
pub(crate) fn lower(cx: &mut NodeCx, f: &FusedOp) -> Result<Kernels, BackendError> {
    match *f {
        FusedOp::Conv {
            bias,
            act,
            residual,
            shuffle,
            ..
        } => {
            let l = layout(bias, act, residual);
            let out = cx.outs[0].1.shape.clone();
            let slopes = match l.slopes {
                None => None,
                Some((i1, i2)) => {
                    let stride = slope_batch_stride(&cx.ins[i1].ty, &out)
                        .ok_or_else(|| cx.unsupported("dynamic-ReLU slopes are not per channel"))?;
                    Some(Slopes {
                        a1: cx.ins[i1].buf,
                        a2: cx.ins[i2].buf,
                        batch_stride: stride,
                    })
                }
            };
            let epi = Epilogue {
                act,
                slopes,
                residual: l.residual.map(|i| cx.ins[i].buf),
            };
            let bias = l.bias.map(|i| cx.ins[i].buf);
            conv::lower_with(cx, bias, epi, shuffle)
        }
        FusedOp::Linear {
            bias,
            act,
            residual,
        } => {
            if act == Act::DyRelu {
                return Err(cx.unsupported("fused_linear takes no dynamic ReLU"));
            }
            let l = layout(bias, act, residual);
            let epi = Epilogue {
                act,
                slopes: None,
                residual: l.residual.map(|i| cx.ins[i].buf),
            };
            let bias = l.bias.map(|i| cx.ins[i].buf);
            matmul::lower_linear(cx, bias, epi)
        }
        FusedOp::Attention { .. } | FusedOp::M2fBridge { .. } | FusedOp::F2mBridge { .. } => {
            attention::lower(cx, f)
        }
        FusedOp::SepAttention { .. } => sep_attn::lower(cx, f),
        FusedOp::ConvChain { .. } => chain::lower(cx),
        _ => Err(cx.unsupported(format!(
            "{} has no kernel (compile expands it into primitive ops first)",
            f.name()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operand_layout() {
        let l = layout(true, Act::DyRelu, true);
        assert_eq!(
            (l.bias, l.slopes, l.residual),
            (Some(2), Some((3, 4)), Some(5))
        );
        let l = layout(false, Act::Relu, true);
        assert_eq!((l.bias, l.slopes, l.residual), (None, None, Some(2)));
    }

    #[test]
    fn slopes_must_be_per_channel() {
        let t = |s: &[usize]| TensorType::f32(s.to_vec());
        assert_eq!(
            slope_batch_stride(&t(&[1, 8, 1, 1]), &[2, 8, 5, 5]),
            Some(0)
        );
        assert_eq!(
            slope_batch_stride(&t(&[2, 8, 1, 1]), &[2, 8, 5, 5]),
            Some(8)
        );
        assert_eq!(slope_batch_stride(&t(&[8, 1, 1]), &[1, 8, 5, 5]), Some(0));
        assert_eq!(slope_batch_stride(&t(&[1, 1, 1, 1]), &[1, 8, 5, 5]), None);
        assert_eq!(slope_batch_stride(&t(&[1, 8, 5, 5]), &[1, 8, 5, 5]), None);
    }
}
