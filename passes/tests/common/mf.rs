//! Mobile-Former pieces spelled in primitive ops exactly as
//! models/mobile-former.md describes them (a stand-in for the zoo in these
//! tests; the zoo tests use the real builder).

use kiln_ir::Value;
use kiln_ir::op::{BinaryOp, Float, Op, UnaryOp};

use super::B;

/// `[B,T,D]` -> `[B,h,T,dh]`
pub fn split_heads(b: &mut B, x: Value, h: usize) -> Value {
    let s = b.shape(x);
    let r = b.reshape(x, &[s[0], s[1], h, s[2] / h]);
    b.transpose(r, &[0, 2, 1, 3])
}

/// `[B,h,T,dh]` -> `[B,T,h·dh]`
pub fn merge_heads(b: &mut B, o: Value) -> Value {
    let s = b.shape(o);
    let t = b.transpose(o, &[0, 2, 1, 3]);
    b.reshape(t, &[s[0], s[2], s[1] * s[3]])
}

/// `relu6(x + 3) / 6`
pub fn hsig(b: &mut B, x: Value) -> Value {
    let three = b.scalar(3.0);
    let six = b.scalar(6.0);
    let a = b.bin(BinaryOp::Add, x, three);
    let r = b.un(UnaryOp::Relu6, a);
    b.bin(BinaryOp::Div, r, six)
}

pub fn layer_norm(b: &mut B, x: Value) -> Value {
    let d = *b.shape(x).last().unwrap();
    let g = b.positive("ln.g", &[d], 0.0);
    let be = b.weight("ln.b", &[d], 0.1);
    let axis = b.shape(x).len() - 1;
    b.op(
        Op::LayerNorm {
            axis,
            eps: Float(1e-5),
        },
        &[x, g, be],
    )
}

/// Mobile→Former bridge (§2.3), 2 heads.
pub fn m2f(b: &mut B, x: Value, z: Value) -> Value {
    let xs = b.shape(x);
    let (n, c, l) = (xs[0], xs[1], xs[2] * xs[3]);
    let h = 2;
    let q = b.linear(z, c);
    let qh = split_heads(b, q, h);
    let xh = b.reshape(x, &[n, h, c / h, l]);
    let s = b.op(Op::MatMul, &[qh, xh]);
    let scale = b.scalar(1.0 / ((c / h) as f32).sqrt());
    let s = b.bin(BinaryOp::Mul, s, scale);
    let a = b.op(Op::Softmax { axis: 3 }, &[s]);
    let xv = b.transpose(xh, &[0, 1, 3, 2]);
    let o = b.op(Op::MatMul, &[a, xv]);
    let o = merge_heads(b, o);
    let g = b.linear(z, c);
    let g = hsig(b, g);
    let two = b.scalar(2.0);
    let g = b.bin(BinaryOp::Mul, g, two);
    let og = b.bin(BinaryOp::Mul, o, g);
    let d = *b.shape(z).last().unwrap();
    let p = b.linear(og, d);
    let r = b.bin(BinaryOp::Add, z, p);
    layer_norm(b, r)
}

/// The Former (§2.4): query-only attention, 4 heads, post-norm, GELU FFN.
pub fn former(b: &mut B, z: Value) -> Value {
    let d = *b.shape(z).last().unwrap();
    let h = 4;
    let q = b.linear(z, d);
    let qh = split_heads(b, q, h);
    let kh = split_heads(b, z, h);
    let kt = b.transpose(kh, &[0, 1, 3, 2]);
    let s = b.op(Op::MatMul, &[qh, kt]);
    let scale = b.scalar(1.0 / ((d / h) as f32).sqrt());
    let s = b.bin(BinaryOp::Mul, s, scale);
    let a = b.op(Op::Softmax { axis: 3 }, &[s]);
    let vh = split_heads(b, z, h);
    let o = b.op(Op::MatMul, &[a, vh]);
    let o = merge_heads(b, o);
    let p = b.linear(o, d);
    let r = b.bin(BinaryOp::Add, z, p);
    let z1 = layer_norm(b, r);
    let f = b.linear(z1, 2 * d);
    let f = b.un(UnaryOp::Gelu, f);
    let f = b.linear(f, d);
    let r = b.bin(BinaryOp::Add, z1, f);
    layer_norm(b, r)
}

/// Dynamic-ReLU coefficients (§2.5) for `c` channels from token 0 of `z`:
/// `(a1, a2)`, each `[N, c, 1, 1]`.
pub fn dyrelu_coeffs(b: &mut B, z: Value, c: usize) -> (Value, Value) {
    let zs = b.shape(z);
    let (n, d) = (zs[0], zs[2]);
    let t = b.op(
        Op::Gather {
            axis: 1,
            indices: vec![0],
            indices_shape: vec![],
        },
        &[z],
    );
    let hdn = b.linear(t, d / 4);
    let hdn = b.un(UnaryOp::Relu, hdn);
    let th = b.linear(hdn, 2 * c);
    let th = hsig(b, th);
    let half = b.scalar(0.5);
    let two = b.scalar(2.0);
    let one = b.scalar(1.0);
    let centred = b.bin(BinaryOp::Sub, th, half);
    let scaled = b.bin(BinaryOp::Mul, centred, two);
    let slice = |b: &mut B, from: i64, to: i64| {
        b.op(
            Op::Slice {
                axes: vec![1],
                starts: vec![from],
                ends: vec![to],
                steps: vec![1],
            },
            &[scaled],
        )
    };
    let a1 = slice(b, 0, c as i64);
    let a1 = b.bin(BinaryOp::Add, a1, one);
    let a2 = slice(b, c as i64, 2 * c as i64);
    let a1 = b.reshape(a1, &[n, c, 1, 1]);
    let a2 = b.reshape(a2, &[n, c, 1, 1]);
    (a1, a2)
}

pub fn dyrelu(b: &mut B, x: Value, a1: Value, a2: Value) -> Value {
    let p = b.bin(BinaryOp::Mul, x, a1);
    let q = b.bin(BinaryOp::Mul, x, a2);
    b.bin(BinaryOp::Max, p, q)
}

/// Stride-1 Mobile sub-block (§2.6) with expansion `e`, plus the identity.
pub fn mobile_s1(b: &mut B, x: Value, z2: Value, e: usize) -> Value {
    let c = b.shape(x)[1];
    let ch = e * c;
    let y = b.conv(x, ch, 1, 1, 1, false);
    let y = b.bn(y);
    let (a1, a2) = dyrelu_coeffs(b, z2, ch);
    let y = dyrelu(b, y, a1, a2);
    let y = b.conv(y, ch, 3, 1, ch, false);
    let y = b.bn(y);
    let (a1, a2) = dyrelu_coeffs(b, z2, ch);
    let y = dyrelu(b, y, a1, a2);
    let y = b.conv(y, c, 1, 1, 1, false);
    let y = b.bn(y);
    b.bin(BinaryOp::Add, y, x)
}

/// Former→Mobile bridge (§2.8), 2 heads.
pub fn f2m(b: &mut B, y: Value, z: Value) -> Value {
    let ys = b.shape(y);
    let (n, c, l) = (ys[0], ys[1], ys[2] * ys[3]);
    let h = 2;
    let yh = b.reshape(y, &[n, h, c / h, l]);
    let yq = b.transpose(yh, &[0, 1, 3, 2]);
    let k = b.linear(z, c);
    let kh = split_heads(b, k, h);
    let kt = b.transpose(kh, &[0, 1, 3, 2]);
    let v = b.linear(z, c);
    let vh = split_heads(b, v, h);
    let s = b.op(Op::MatMul, &[yq, kt]);
    let scale = b.scalar(1.0 / ((c / h) as f32).sqrt());
    let s = b.bin(BinaryOp::Mul, s, scale);
    let a = b.op(Op::Softmax { axis: 3 }, &[s]);
    let o = b.op(Op::MatMul, &[a, vh]);
    let o = b.transpose(o, &[0, 1, 3, 2]);
    let o = b.reshape(o, &ys);
    b.bin(BinaryOp::Add, y, o)
}

/// One stride-1 Mobile-Former block (§2.10): `(X, Z) -> (X', Z2)`.
pub fn block_s1(b: &mut B, x: Value, z: Value, e: usize) -> (Value, Value) {
    let z1 = m2f(b, x, z);
    let z2 = former(b, z1);
    let y = mobile_s1(b, x, z2, e);
    (f2m(b, y, z2), z2)
}
