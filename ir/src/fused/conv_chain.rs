//! `fused_conv_chain`: 2–3 convolutions, each with its epilogue, then an
//! optional residual (see [`FusedOp::ConvChain`]).

use super::{Act, ConvStage, Emitter, FusedOp, act_epilogue, channel_shuffle};
use crate::error::IrError;
use crate::op::{Attr, AttrReader, Op};

/// The text-format name.
pub const NAME: &str = "fused_conv_chain";

/// Where one stage's operands are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StageOperands {
    /// the weight
    pub w: usize,
    /// the bias, when the stage has one
    pub bias: Option<usize>,
    /// the dynamic ReLU's slopes, when the stage's act is `dyrelu`
    pub slopes: Option<(usize, usize)>,
}

/// Where a chain's operands are (indices into the node's operand list).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operands {
    /// the input
    pub x: usize,
    /// per stage
    pub stages: Vec<StageOperands>,
    /// the residual, when `residual`
    pub residual: Option<usize>,
    /// how many operands in all
    pub count: usize,
}

/// The operand layout: `x`, then per stage `w`, `bias`, `a1, a2` as
/// present; `residual` last.
pub fn operands(stages: &[ConvStage], residual: bool) -> Operands {
    let mut i = 1;
    let mut take = |present: bool| {
        present.then(|| {
            i += 1;
            i - 1
        })
    };
    let stages = stages
        .iter()
        .map(|s| {
            let w = take(true).expect("present");
            let bias = take(s.bias);
            let dy = s.act == Act::DyRelu;
            let slopes = take(dy).zip(take(dy));
            StageOperands { w, bias, slopes }
        })
        .collect();
    let residual = take(residual);
    Operands {
        x: 0,
        stages,
        residual,
        count: i,
    }
}

/// Attribute names of the stages (static strings for [`Op::attrs`]).
const STAGE_KEYS: [[&str; 6]; 3] = [
    [
        "s0_stride",
        "s0_pad",
        "s0_groups",
        "s0_bias",
        "s0_act",
        "s0_shuffle",
    ],
    [
        "s1_stride",
        "s1_pad",
        "s1_groups",
        "s1_bias",
        "s1_act",
        "s1_shuffle",
    ],
    [
        "s2_stride",
        "s2_pad",
        "s2_groups",
        "s2_bias",
        "s2_act",
        "s2_shuffle",
    ],
];

fn fields(op: &FusedOp) -> (&[ConvStage], bool) {
    let FusedOp::ConvChain { stages, residual } = op else {
        unreachable!("conv_chain:: of {}", op.name())
    };
    (stages, *residual)
}

/// The attributes, in canonical order.
pub(super) fn attrs(op: &FusedOp) -> Vec<(&'static str, Attr)> {
    let (stages, residual) = fields(op);
    let mut a = Vec::new();
    for (i, s) in stages.iter().enumerate() {
        let k = &STAGE_KEYS[i.min(STAGE_KEYS.len() - 1)];
        a.extend([
            (k[0], super::ints(&s.stride)),
            (k[1], super::ints(&s.pad)),
            (k[2], Attr::Int(s.groups as i64)),
            (k[3], Attr::Bool(s.bias)),
        ]);
        if s.shuffle != 1 {
            a.push((k[5], Attr::Int(s.shuffle as i64)));
        }
        a.push((k[4], Attr::Word(s.act.name().into())));
    }
    a.push(("residual", Attr::Bool(residual)));
    a
}

/// Reads the attributes.
pub(super) fn read(a: &mut AttrReader<'_>) -> Result<FusedOp, String> {
    let mut stages = Vec::new();
    for k in &STAGE_KEYS {
        let Some(stride) = a.opt(k[0], |a, key| a.array::<2>(key))? else {
            break;
        };
        stages.push(ConvStage {
            stride,
            pad: a.array(k[1])?,
            groups: a.usize(k[2])?,
            bias: a.bool(k[3])?,
            shuffle: a.opt(k[5], |a, key| a.usize(key))?.unwrap_or(1),
            act: super::read_act(a, NAME, k[4])?,
        });
    }
    Ok(FusedOp::ConvChain {
        stages,
        residual: a.bool("residual")?,
    })
}

/// The primitive composition.
pub(super) fn expand<E: Emitter>(op: &FusedOp, e: &mut E, args: &[E::V]) -> Result<E::V, IrError> {
    let (stages, residual) = fields(op);
    let l = operands(stages, residual);
    let mut y = args[l.x].clone();
    for (s, at) in stages.iter().zip(&l.stages) {
        let mut ops = vec![y, args[at.w].clone()];
        if let Some(b) = at.bias {
            ops.push(args[b].clone());
        }
        let conv = Op::Conv2d {
            stride: s.stride,
            pad: s.pad,
            dilation: [1, 1],
            groups: s.groups,
        };
        y = e.op(conv, &ops)?;
        y = channel_shuffle(e, y, s.shuffle)?;
        y = act_epilogue(e, y, s.act, at.slopes, None, args)?;
    }
    act_epilogue(e, y, Act::None, None, l.residual, args)
}
