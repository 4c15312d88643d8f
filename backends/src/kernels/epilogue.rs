//! The epilogue of fused conv/linear kernels (`fused_conv`, `fused_linear`):
//! the activation and the residual add applied to finished accumulators
//! before they are stored, so the fused op's output is written once and
//! never re-read by separate element-wise kernels. The bias is not part of
//! it: it seeds the accumulators (GEMM `Init`, the depthwise start value).

use cranelift_codegen::ir::{InstBuilder, Type, Value};
use kiln_ir::UnaryOp;
use kiln_ir::fused::Act;

use super::elementwise::{Func, apply};
use crate::codegen::{Buf, Emitter};

/// The dynamic ReLU's slopes: one `(a1, a2)` pair per output channel.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Slopes {
    /// `a1`
    pub a1: Buf,
    /// `a2`
    pub a2: Buf,
    /// elements between the slopes of consecutive images: 0 when one set
    /// serves the whole batch, the channel count when each image has its own
    pub batch_stride: usize,
}

/// What happens to an output value after the bias: `act`, then `+ residual`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Epilogue {
    /// activation
    pub act: Act,
    /// the slopes when `act` is the dynamic ReLU
    pub slopes: Option<Slopes>,
    /// a residual with exactly the output's layout (the kernel reads element
    /// `i` of it right before writing element `i` of the output; the two are
    /// never the same buffer: fused nodes have no in-place operand)
    pub residual: Option<Buf>,
}

impl Epilogue {
    /// Nothing after the bias (plain conv2d and matmul).
    pub const NONE: Epilogue = Epilogue {
        act: Act::None,
        slopes: None,
        residual: None,
    };

    /// `" +bias relu6 +res"`-style suffix for kernel descriptions.
    pub fn suffix(&self, bias: bool) -> String {
        let mut s = String::new();
        if bias {
            s.push_str(" +bias");
        }
        if self.act != Act::None {
            s.push(' ');
            s.push_str(self.act.name());
        }
        if self.residual.is_some() {
            s.push_str(" +res");
        }
        s
    }

    /// Whether the Cranelift kernels apply the activation (and then the
    /// residual) in a sweep over the freshly stored block rather than to the
    /// accumulators: activations with polynomials or several constants.
    /// Inline, their code and constants compete with the tile's
    /// accumulators and the depthwise kernel's weights for the 16 vector
    /// registers (measured on a 128-channel 3×3 depthwise conv at 32×32:
    /// silu inline 395 µs, separate kernel 257 µs).
    pub fn swept(&self) -> bool {
        matches!(
            self.act,
            Act::HardSwish | Act::HardSigmoid | Act::Silu | Act::Gelu
        )
    }

    /// Applies the activation to `x` of lane type `ty` (`F32` or `V4`);
    /// `slopes` are the dynamic ReLU's coefficients of `x`'s channel, of the
    /// same type. The functions are the element-wise kernels' own, so a
    /// fused and an unfused activation compute the same value.
    pub fn activate(
        &self,
        e: &mut Emitter,
        ty: Type,
        x: Value,
        slopes: Option<(Value, Value)>,
    ) -> Value {
        let func = match self.act {
            Act::None => return x,
            Act::DyRelu => {
                let Some((s1, s2)) = slopes else {
                    // lowering always provides the slopes with a dynamic ReLU
                    unreachable!("dynamic ReLU without slopes")
                };
                let p = e.b.ins().fmul(x, s1);
                let q = e.b.ins().fmul(x, s2);
                return e.b.ins().fmax(p, q);
            }
            Act::Relu => Func::Unary(UnaryOp::Relu),
            Act::Relu6 => Func::Unary(UnaryOp::Relu6),
            Act::HardSwish => Func::Unary(UnaryOp::HardSwish),
            Act::HardSigmoid => Func::HardSigmoid(1.0 / 6.0, 0.5),
            Act::Silu => Func::Unary(UnaryOp::Silu),
            Act::Gelu => Func::Unary(UnaryOp::Gelu),
        };
        apply(e, ty, func, &[x])
    }
}
