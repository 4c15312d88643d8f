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

/// The operand layout of a `fused_conv` / `fused_linear`: the IR's, so a
/// kernel reads operands where the expansion does.
fn layout(bias: bool, act: Act, residual: bool) -> kiln_ir::fused::conv::Operands {
    kiln_ir::fused::conv::operands(bias, act, residual)
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

/// What the backend has for one fused op: the one place [`has_kernel`],
/// `kernels::scratch_bytes`, `kernels::lower` and `compiled::unfuse` read.
/// A fused op without an entry runs as its primitive expansion.
pub(crate) struct FusedKernel {
    /// the op's kernel file, under `backends/src/kernels/` (checked to
    /// exist by a test, which is its only reader)
    #[cfg_attr(
        not(test),
        expect(dead_code, reason = "documents the table; the test reads it")
    )]
    pub file: &'static str,
    /// whether a node of this op runs as the kernel (else as its expansion)
    pub supports: fn(&Graph, NodeId) -> bool,
    /// arena scratch bytes a node the kernel runs needs
    pub scratch: fn(&Graph, NodeId) -> usize,
    /// the kernels of a node that `supports`
    pub lower: fn(&mut NodeCx, &FusedOp) -> Result<Kernels, BackendError>,
}

/// The table: the kernel of each fused op that has one.
pub(crate) fn kernel(f: &FusedOp) -> Option<&'static FusedKernel> {
    const CONV: FusedKernel = FusedKernel {
        file: "conv.rs",
        supports: conv_supports,
        scratch: conv::scratch_bytes,
        lower: lower_conv,
    };
    const LINEAR: FusedKernel = FusedKernel {
        file: "matmul.rs",
        supports: linear_supports,
        scratch: |_, _| 0,
        lower: lower_linear,
    };
    const CHAIN: FusedKernel = FusedKernel {
        file: "chain.rs",
        supports: chain::has_kernel,
        scratch: chain::scratch_bytes,
        lower: |cx, _| chain::lower(cx),
    };
    const ATTENTION: FusedKernel = FusedKernel {
        file: "attention.rs",
        supports: |g, id| fused_of(g, id).is_some_and(|f| attention::has_kernel(f, &types(g, id))),
        scratch: |g, id| fused_of(g, id).map_or(0, |f| attention::scratch_bytes(f, &types(g, id))),
        lower: attention::lower,
    };
    const SEP_ATTN: FusedKernel = FusedKernel {
        file: "sep_attn.rs",
        supports: |g, id| fused_of(g, id).is_some_and(|f| sep_attn::has_kernel(f, &types(g, id))),
        scratch: |g, id| fused_of(g, id).map_or(0, |f| sep_attn::scratch_bytes(f, &types(g, id))),
        lower: sep_attn::lower,
    };
    match f {
        FusedOp::Conv { .. } => Some(&CONV),
        FusedOp::Linear { .. } => Some(&LINEAR),
        FusedOp::ConvChain { .. } => Some(&CHAIN),
        FusedOp::Attention { .. } | FusedOp::M2fBridge { .. } | FusedOp::F2mBridge { .. } => {
            Some(&ATTENTION)
        }
        FusedOp::SepAttention { .. } => Some(&SEP_ATTN),
        // XFormer's cross-feature attention has no kernel yet: it runs as
        // its expansion.
        FusedOp::CrossFeatureAttention { .. } => None,
    }
}

/// The fused op of node `id`, if it is one.
fn fused_of(g: &Graph, id: NodeId) -> Option<&FusedOp> {
    match &g.node(id).op {
        Op::Fused(f) => Some(f),
        _ => None,
    }
}

/// The operand types of node `id`.
fn types(g: &Graph, id: NodeId) -> Vec<TensorType> {
    g.operands(id)
        .iter()
        .map(|&v| g.value_type(v).clone())
        .collect()
}

/// Whether node `id` (a fused op) has a kernel of its own; `false` means
/// the backend runs its primitive expansion.
pub(crate) fn has_kernel(g: &Graph, id: NodeId) -> bool {
    fused_of(g, id)
        .and_then(kernel)
        .is_some_and(|k| (k.supports)(g, id))
}

/// A `fused_conv` runs as the convolution kernel when its geometry is one
/// the kernel takes, its shuffle maps to row strides, and its dynamic-ReLU
/// slopes are per channel.
fn conv_supports(g: &Graph, id: NodeId) -> bool {
    let node = g.node(id);
    let Op::Fused(FusedOp::Conv {
        bias,
        act,
        residual,
        shuffle,
        ..
    }) = node.op
    else {
        return false;
    };
    let ops = types(g, id);
    let Some(out) = node.outputs.first().map(|o| &o.ty) else {
        return false;
    };
    let l = layout(bias, act, residual);
    let Some(geom) = ops
        .get(l.w)
        .and_then(|w| Geom::of(&node.op, &ops[l.x].shape, &w.shape, &out.shape))
    else {
        return false;
    };
    // A channel shuffle (Mobile-Former-26M) is where each output row is
    // stored: any shuffle for the depthwise kernel (one plane per unit),
    // for a GEMM one whose blocks nest with the conv groups (a fixed C row
    // stride per batch).
    if shuffle != 1
        && !geom.is_depthwise()
        && conv::shuffle_rows(geom.o / geom.groups, geom.o, shuffle).is_none()
    {
        return false;
    }
    match l.slopes {
        None => true,
        Some((i1, i2)) => {
            let s1 = slope_batch_stride(&ops[i1], &out.shape);
            let s2 = slope_batch_stride(&ops[i2], &out.shape);
            // The GEMM's slope rows are offset per group, not per image:
            // per-image slopes of a batch run as the expansion.
            s1.is_some() && s1 == s2 && (geom.is_depthwise() || s1 == Some(0))
        }
    }
}

/// A `fused_linear` runs as the GEMM when its weight is a matrix and its
/// bias a vector.
fn linear_supports(g: &Graph, id: NodeId) -> bool {
    let Some(FusedOp::Linear {
        bias,
        act,
        residual,
        ..
    }) = fused_of(g, id)
    else {
        return false;
    };
    let ops = types(g, id);
    let l = layout(*bias, *act, *residual);
    ops.len() == l.count
        && ops[l.w].rank() == 2
        && !ops[l.x].shape.is_empty()
        && l.bias.is_none_or(|b| ops[b].rank() == 1)
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
        let l = kiln_ir::fused::conv_chain::operands(&stages, residual);
        let mut y: Value = operands[l.x];
        for (k, (s, at)) in stages.iter().zip(&l.stages).enumerate() {
            let last = k + 1 == stages.len();
            let mut args = vec![y, operands[at.w]];
            args.extend(at.bias.map(|b| operands[b]));
            if let Some((a1, a2)) = at.slopes {
                args.extend([operands[a1], operands[a2]]);
            }
            let res = last && residual;
            if res {
                args.extend(l.residual.map(|r| operands[r]));
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

/// Lowers a fused node that [`has_kernel`], through the table.
pub(crate) fn lower(cx: &mut NodeCx, f: &FusedOp) -> Result<Kernels, BackendError> {
    match kernel(f) {
        Some(k) => (k.lower)(cx, f),
        None => Err(cx.unsupported(format!(
            "{} has no kernel (compile expands it into primitive ops first)",
            f.name()
        ))),
    }
}

/// A `fused_conv`: the convolution kernel with the epilogue in its tile.
fn lower_conv(cx: &mut NodeCx, f: &FusedOp) -> Result<Kernels, BackendError> {
    let FusedOp::Conv {
        bias,
        act,
        residual,
        shuffle,
        ..
    } = *f
    else {
        return Err(cx.unsupported(format!("{} is not fused_conv", f.name())));
    };
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

/// A `fused_linear`: the GEMM with the epilogue in its tile.
fn lower_linear(cx: &mut NodeCx, f: &FusedOp) -> Result<Kernels, BackendError> {
    let FusedOp::Linear {
        bias,
        act,
        residual,
    } = *f
    else {
        return Err(cx.unsupported(format!("{} is not fused_linear", f.name())));
    };
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every entry of the fused-kernel table names a kernel file that
    /// exists.
    #[test]
    fn the_table_names_real_files() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/kernels");
        let ops = [
            FusedOp::Linear {
                bias: true,
                act: Act::None,
                residual: false,
            },
            FusedOp::SepAttention { patch: None },
            FusedOp::F2mBridge {
                heads: 1,
                scale: kiln_ir::Float(1.0),
            },
            FusedOp::ConvChain {
                stages: vec![],
                residual: false,
            },
        ];
        for f in &ops {
            let k = kernel(f).unwrap_or_else(|| panic!("{} has a kernel", f.name()));
            assert!(dir.join(k.file).is_file(), "{}: {}", f.name(), k.file);
        }
        assert!(
            kernel(&FusedOp::CrossFeatureAttention {
                heads: 1,
                eps: kiln_ir::Float(1e-6)
            })
            .is_none()
        );
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
