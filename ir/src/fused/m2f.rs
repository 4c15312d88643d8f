//! `fused_m2f`: Mobile-Former's Mobile→Former bridge (see
//! [`FusedOp::M2f`]).

use super::{
    Act, Emitter, FusedOp, bin, heads_first, heads_merge, linear, reshape, transpose, want,
};
use crate::error::IrError;
use crate::op::{Attr, AttrReader, BinaryOp, Float, Op};

/// The text-format name.
pub const NAME: &str = "fused_m2f";

/// How the queries (or the gate) arrive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// projected from the tokens: `(w, b)`
    Projected(usize, usize),
    /// given as a tensor (an importer folded the projection)
    Given(usize),
}

/// Where the operands are (indices into the node's operand list).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Operands {
    /// the feature map `[N,C,H,W]`
    pub x: usize,
    /// the tokens `[N,M,d]`
    pub z: usize,
    /// the queries
    pub q: Source,
    /// the gate
    pub gate: Source,
    /// the output projection's weight and bias
    pub wo: usize,
    /// see `wo`
    pub bo: usize,
    /// the layer norm's scale and shift
    pub gamma: usize,
    /// see `gamma`
    pub beta: usize,
    /// how many operands in all
    pub count: usize,
}

/// The operand layout: `x, z`, the queries (`wq, bq` or `Q`), the gate
/// (`wa, ba` or `G`), `wo, bo, gamma, beta`.
pub fn operands(proj_q: bool, gate: bool) -> Operands {
    let mut i = 2;
    let mut source = |projected: bool| {
        if projected {
            i += 2;
            Source::Projected(i - 2, i - 1)
        } else {
            i += 1;
            Source::Given(i - 1)
        }
    };
    let (q, gate) = (source(proj_q), source(gate));
    Operands {
        x: 0,
        z: 1,
        q,
        gate,
        wo: i,
        bo: i + 1,
        gamma: i + 2,
        beta: i + 3,
        count: i + 4,
    }
}

fn fields(op: &FusedOp) -> (usize, f32, f32, bool, bool) {
    let FusedOp::M2f {
        heads,
        scale,
        eps,
        proj_q,
        gate,
    } = *op
    else {
        unreachable!("m2f:: of {}", op.name())
    };
    (heads, scale.0, eps.0, proj_q, gate)
}

/// The attributes, in canonical order.
pub(super) fn attrs(op: &FusedOp) -> Vec<(&'static str, Attr)> {
    let (heads, scale, eps, proj_q, gate) = fields(op);
    vec![
        ("heads", Attr::Int(heads as i64)),
        ("scale", Attr::Float(scale)),
        ("eps", Attr::Float(eps)),
        ("proj_q", Attr::Bool(proj_q)),
        ("gate", Attr::Bool(gate)),
    ]
}

/// Reads the attributes.
pub(super) fn read(a: &mut AttrReader<'_>) -> Result<FusedOp, String> {
    Ok(FusedOp::M2f {
        heads: a.usize("heads")?,
        scale: Float(a.float("scale")?),
        eps: Float(a.float("eps")?),
        proj_q: a.bool("proj_q")?,
        gate: a.bool("gate")?,
    })
}

/// The primitive composition.
pub(super) fn expand<E: Emitter>(op: &FusedOp, e: &mut E, args: &[E::V]) -> Result<E::V, IrError> {
    let (heads, scale, eps, proj_q, gate) = fields(op);
    let l = operands(proj_q, gate);
    let (x, z) = (args[l.x].clone(), args[l.z].clone());
    let q = match l.q {
        Source::Projected(w, b) => linear(e, &z, &args[w], Some(&args[b]))?,
        Source::Given(q) => args[q].clone(),
    };
    let g = match l.gate {
        Source::Projected(w, b) => {
            let g = linear(e, &z, &args[w], Some(&args[b]))?;
            let g = e.op(Act::HardSigmoid.primitive().expect("hsig"), &[g])?;
            let two = e.scalar(2.0)?;
            bin(e, BinaryOp::Mul, g, two)?
        }
        Source::Given(g) => args[g].clone(),
    };
    let xt = e.ty(&x);
    want(xt.rank() == 4 && xt.shape[1] % heads == 0, || {
        format!("x must be [N,C,H,W] with C divisible by {heads} heads, got {xt}")
    })?;
    let (n, c, l2) = (xt.shape[0], xt.shape[1], xt.shape[2] * xt.shape[3]);
    let xf = reshape(e, x, &[n, heads, c / heads, l2])?;
    let q = heads_first(e, q, heads)?;
    let s = e.op(Op::MatMul, &[q, xf.clone()])?;
    let cs = e.scalar(scale)?;
    let s = bin(e, BinaryOp::Mul, s, cs)?;
    let a = e.op(Op::Softmax { axis: 3 }, &[s])?;
    let xv = transpose(e, xf, &[0, 1, 3, 2])?;
    let o = e.op(Op::MatMul, &[a, xv])?;
    let o = heads_merge(e, o)?;
    let (ot, gt) = (e.ty(&o), e.ty(&g));
    want(ot == gt, || {
        format!("the gate {gt} must match the attention {ot}")
    })?;
    let og = bin(e, BinaryOp::Mul, o, g)?;
    let p = linear(e, &og, &args[l.wo], Some(&args[l.bo]))?;
    let r = bin(e, BinaryOp::Add, z, p)?;
    let axis = e.ty(&r).rank() - 1;
    e.op(
        Op::LayerNorm {
            axis,
            eps: Float(eps),
        },
        &[r, args[l.gamma].clone(), args[l.beta].clone()],
    )
}
