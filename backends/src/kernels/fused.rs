//! The table of the optimiser's fused ops' kernels ([`kernel`]: supports,
//! scratch, lower), the one place `kernels::lower`, `kernels::scratch_bytes`
//! and `compiled::front`'s unfusing ask. Each op's kernel is in the file
//! named by its stem, as the op is in `ir/src/fused/`:
//! `conv.rs` and `linear.rs` (one convolution / GEMM kernel whose
//! [`Epilogue`](super::epilogue::Epilogue) applies the activation and the residual to the
//! accumulators before the store, the bias seeding them), `conv_chain.rs`,
//! `mha.rs`, `m2f.rs`, `f2m.rs` and `sep_attn.rs`. `fused_xca`, and the few
//! shapes these kernels do not take, are expanded into primitive ops before
//! lowering ([`has_kernel`] decides, `compiled::front` expands). A
//! `fused_conv_chain` is split into one `fused_conv` per stage
//! ([`split_conv_chains`]), each convolution keeping its epilogue; with
//! `CompileOptions::banded_chains`, an inverted-residual block (pointwise
//! → depthwise → pointwise with a large expanded tensor) runs band by band
//! in `conv_chain.rs` instead, its expanded tensor never in memory.
//!
//! The residual is read at the index about to be written; it is never the
//! output buffer, because fused nodes have no in-place operand
//! (`kernels::inplace_operand`).

use kiln_ir::fused::{Act, FusedOp};
use kiln_ir::{Graph, IrError, NodeId, Op, TensorType, Value};

use super::{Kernels, NodeCx, conv, conv_chain, f2m, linear, m2f, mha, sep_attn};
use crate::error::BackendError;

/// The operand layout of a `fused_conv` / `fused_linear`: the IR's, so a
/// kernel reads operands where the expansion does.
pub(super) fn layout(bias: bool, act: Act, residual: bool) -> kiln_ir::fused::conv::Operands {
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
        supports: conv::fused_supports,
        scratch: conv::scratch_bytes,
        lower: conv::lower_fused,
    };
    const LINEAR: FusedKernel = FusedKernel {
        file: "linear.rs",
        supports: linear::supports,
        scratch: |_, _| 0,
        lower: linear::lower,
    };
    const CONV_CHAIN: FusedKernel = FusedKernel {
        file: "conv_chain.rs",
        supports: conv_chain::has_kernel,
        scratch: conv_chain::scratch_bytes,
        lower: |cx, _| conv_chain::lower(cx),
    };
    const MHA: FusedKernel = FusedKernel {
        file: "mha.rs",
        supports: |g, id| fused_of(g, id).is_some_and(|f| mha::has_kernel(f, &types(g, id))),
        scratch: |g, id| fused_of(g, id).map_or(0, |f| mha::scratch_bytes(f, &types(g, id))),
        lower: mha::lower,
    };
    const M2F: FusedKernel = FusedKernel {
        file: "m2f.rs",
        supports: |g, id| fused_of(g, id).is_some_and(|f| m2f::has_kernel(f, &types(g, id))),
        scratch: |g, id| fused_of(g, id).map_or(0, |f| m2f::scratch_bytes(f, &types(g, id))),
        lower: m2f::lower,
    };
    const F2M: FusedKernel = FusedKernel {
        file: "f2m.rs",
        supports: |g, id| fused_of(g, id).is_some_and(|f| f2m::has_kernel(f, &types(g, id))),
        scratch: |g, id| fused_of(g, id).map_or(0, |f| f2m::scratch_bytes(f, &types(g, id))),
        lower: f2m::lower,
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
        FusedOp::ConvChain { .. } => Some(&CONV_CHAIN),
        FusedOp::Mha { .. } => Some(&MHA),
        FusedOp::M2f { .. } => Some(&M2F),
        FusedOp::F2m { .. } => Some(&F2M),
        FusedOp::SepAttn { .. } => Some(&SEP_ATTN),
        // XFormer's cross-feature attention has no kernel yet: it runs as
        // its expansion.
        FusedOp::Xca { .. } => None,
    }
}

/// The fused op of node `id`, if it is one.
pub(super) fn fused_of(g: &Graph, id: NodeId) -> Option<&FusedOp> {
    match &g.node(id).op {
        Op::Fused(f) => Some(f),
        _ => None,
    }
}

/// The operand types of node `id`.
pub(super) fn types(g: &Graph, id: NodeId) -> Vec<TensorType> {
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

/// Rewrites every `fused_conv_chain` of `g` but those to `keep` (which
/// run as `conv_chain.rs` kernels) into its stages, each a
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every entry of the fused-kernel table names a kernel file that
    /// exists and is named by the op's stem (`fused_<stem>` is defined in
    /// `ir/src/fused/<stem>.rs`, its kernel is `kernels/<stem>.rs`).
    #[test]
    fn the_table_names_each_ops_stem_file() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/kernels");
        let one = kiln_ir::Float(1.0);
        let ops = [
            FusedOp::Conv {
                stride: [1, 1],
                pad: [0; 4],
                dilation: [1, 1],
                groups: 1,
                bias: true,
                shuffle: 1,
                act: Act::None,
                residual: false,
            },
            FusedOp::Linear {
                bias: true,
                act: Act::None,
                residual: false,
            },
            FusedOp::ConvChain {
                stages: vec![],
                residual: false,
            },
            FusedOp::Mha {
                heads: 1,
                scale: one,
                proj_q: true,
                proj_k: true,
                proj_v: true,
            },
            FusedOp::M2f {
                heads: 1,
                scale: one,
                eps: one,
                proj_q: true,
                gate: true,
            },
            FusedOp::F2m {
                heads: 1,
                scale: one,
            },
            FusedOp::SepAttn { patch: None },
        ];
        for f in &ops {
            let k = kernel(f).unwrap_or_else(|| panic!("{} has a kernel", f.name()));
            assert!(dir.join(k.file).is_file(), "{}: {}", f.name(), k.file);
            let stem = f.name().strip_prefix("fused_").expect("fused_ prefix");
            assert_eq!(k.file, format!("{stem}.rs"), "{}", f.name());
        }
        assert!(
            kernel(&FusedOp::Xca {
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
