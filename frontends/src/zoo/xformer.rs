//! XFormer-R: a **reconstruction** of XFormer (Zhao et al., arXiv
//! 2207.07268) per `docs/models/xformer.md` sections 2–3. Neither the
//! paper's XFA formula nor its layout could be verified; this is the
//! MobileViT-S skeleton with every self-attention replaced by XFA-R (XCiT's
//! cross-covariance attention). It must be reported as "XFormer-R
//! (reconstruction)", never as the paper's model.
//!
//! No checkpoint exists, so weight names follow timm's MobileViT (v1)
//! naming for the parts the two share (`stem`, `stages.k.i.conv1_1x1`,
//! `conv_kxk`, `conv_1x1`, `transformer.l.norm1`, `conv_proj`,
//! `conv_fusion`, `final_conv`, `head.fc`); the attention owns separate
//! `attn.q`, `attn.k`, `attn.v`, `attn.proj` Linears and `attn.temperature
//! [h]` (XFA-R) or `attn.gamma [h]` (the XNorm-style alternative).

use kiln_ir::{Graph, Value};

use crate::FrontendError;
use crate::builder::GraphBuilder;
use crate::zoo::conv_norm_act;

/// The zoo name.
pub const NAME: &str = "xformer";

/// Heads of XFA (spec recommendation: 4, the MobileViT-S default).
pub const HEADS: usize = 4;

/// Which attention the transformer layers use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum XfaKind {
    /// XFA-R (default): cross-covariance attention — per head, L2-normalise
    /// the q and k feature columns over the tokens, softmax the `Dh×Dh`
    /// channel-affinity (`τ`-scaled), mix the value features.
    #[default]
    CrossCovariance,
    /// The XNorm-style softmax-free alternative: L2-normalise q and k per
    /// token over the head's features, scale q by `γ`, and compute
    /// `q̂ (k̂ᵀ v)` per head.
    XNorm,
}

fn dims(b: &GraphBuilder, x: Value, rank: usize) -> Result<Vec<usize>, FrontendError> {
    let s = b.shape(x)?;
    if s.len() == rank {
        Ok(s)
    } else {
        Err(FrontendError::Zoo(format!(
            "{}: expected a rank-{rank} value, got {s:?}",
            b.path("")
        )))
    }
}

/// `x / max(‖x‖₂ over axis, 1e-12)` (PyTorch's `F.normalize`).
fn l2_normalize(b: &mut GraphBuilder, x: Value, axis: usize) -> Result<Value, FrontendError> {
    let sq = b.mul(x, x)?;
    let ss = b.reduce_sum(sq, &[axis], true)?;
    let norm = b.unary(kiln_ir::UnaryOp::Sqrt, ss)?;
    let norm = b.max_scalar(norm, 1e-12)?;
    b.div(x, norm)
}

/// XFA on tokens `x [B,T,D]` in the current scope (`attn`), `heads` heads.
pub fn xfa(
    b: &mut GraphBuilder,
    x: Value,
    heads: usize,
    kind: XfaKind,
) -> Result<Value, FrontendError> {
    let s = dims(b, x, 3)?;
    let (bt, t, d) = (s[0], s[1], s[2]);
    if !d.is_multiple_of(heads) {
        return Err(FrontendError::Zoo(format!(
            "{}: dim {d} does not split into {heads} heads",
            b.path("")
        )));
    }
    let dh = d / heads;
    let proj = |b: &mut GraphBuilder, name: &str| -> Result<Value, FrontendError> {
        let y = b.scope(name).linear(x, d, true)?;
        let y = b.reshape(y, &[bt, t, heads, dh])?;
        b.transpose(y, &[0, 2, 1, 3]) // [B, h, T, Dh]
    };
    let q = proj(b, "q")?;
    let k = proj(b, "k")?;
    let v = proj(b, "v")?;
    let o = match kind {
        XfaKind::CrossCovariance => {
            // XCiT works on the transposed heads [B, h, Dh, T]
            let q = b.transpose(q, &[0, 1, 3, 2])?;
            let k = b.transpose(k, &[0, 1, 3, 2])?;
            let v = b.transpose(v, &[0, 1, 3, 2])?;
            let q = l2_normalize(b, q, 3)?;
            let k = l2_normalize(b, k, 3)?;
            let kt = b.transpose(k, &[0, 1, 3, 2])?;
            let a = b.matmul(q, kt)?; // [B, h, Dh, Dh]
            let tau = b.param("temperature", &[heads])?;
            let tau = b.reshape(tau, &[heads, 1, 1])?;
            let a = b.mul(a, tau)?;
            let a = b.softmax(a, 3)?;
            let o = b.matmul(a, v)?; // [B, h, Dh, T]
            b.transpose(o, &[0, 3, 1, 2])? // [B, T, h, Dh]
        }
        XfaKind::XNorm => {
            let q = l2_normalize(b, q, 3)?;
            let k = l2_normalize(b, k, 3)?;
            let gamma = b.param("gamma", &[heads])?;
            let gamma = b.reshape(gamma, &[heads, 1, 1])?;
            let q = b.mul(q, gamma)?;
            let kt = b.transpose(k, &[0, 1, 3, 2])?;
            let kv = b.matmul(kt, v)?; // [B, h, Dh, Dh]
            let o = b.matmul(q, kv)?; // [B, h, T, Dh]
            b.transpose(o, &[0, 2, 1, 3])? // [B, T, h, Dh]
        }
    };
    let o = b.reshape(o, &[bt, t, d])?;
    b.scope("proj").linear(o, d, true)
}

/// MV2 inverted residual, expansion 4 (spec 3.2), in the current scope.
fn mv2(b: &mut GraphBuilder, x: Value, out: usize, stride: usize) -> Result<Value, FrontendError> {
    let cin = dims(b, x, 4)?[1];
    let hid = 4 * cin;
    let y = conv_norm_act(&mut b.scope("conv1_1x1"), x, hid, 1, 1, 1, true)?;
    let y = conv_norm_act(&mut b.scope("conv2_kxk"), y, hid, 3, stride, hid, true)?;
    let y = conv_norm_act(&mut b.scope("conv3_1x1"), y, out, 1, 1, 1, false)?;
    if stride == 1 && cin == out {
        b.add(y, x)
    } else {
        Ok(y)
    }
}

/// The XFormer-R block (spec 3.1) in the current scope (`stages.{k}.1`).
pub fn xformer_block(
    b: &mut GraphBuilder,
    x: Value,
    (d, depth, ffn): (usize, usize, usize),
    kind: XfaKind,
) -> Result<Value, FrontendError> {
    let s = dims(b, x, 4)?;
    let (n, c, h, w) = (s[0], s[1], s[2], s[3]);
    if !h.is_multiple_of(2) || !w.is_multiple_of(2) {
        return Err(FrontendError::Zoo(format!(
            "{}: feature map {h}x{w} is not a multiple of the 2x2 patch",
            b.path("")
        )));
    }
    let (nh, nw) = (h / 2, w / 2);
    let y = conv_norm_act(&mut b.scope("conv_kxk"), x, c, 3, 1, 1, true)?;
    let y = b.scope("conv_1x1").conv2d(y, d, 1, 1, 0, 1, false)?;
    // unfold: slot p = 2(y mod 2) + (x mod 2) becomes its own sequence of
    // the (H/2)(W/2) patches: [N,D,nh,2,nw,2] -> [N,2,2,nh,nw,D] -> [4N,T,D]
    let u = b.reshape(y, &[n, d, nh, 2, nw, 2])?;
    let u = b.transpose(u, &[0, 3, 5, 2, 4, 1])?;
    let mut z = b.reshape(u, &[4 * n, nh * nw, d])?;
    for l in 0..depth {
        let mut s = b.scope(format!("transformer.{l}"));
        let a = s.scope("norm1").layer_norm(z)?;
        let a = xfa(&mut s.scope("attn"), a, HEADS, kind)?;
        z = s.add(z, a)?;
        let f = s.scope("norm2").layer_norm(z)?;
        let f = s.scope("mlp.fc1").linear(f, ffn, true)?;
        let f = s.silu(f)?;
        let f = s.scope("mlp.fc2").linear(f, d, true)?;
        z = s.add(z, f)?;
    }
    let z = b.scope("norm").layer_norm(z)?;
    // fold: the exact inverse
    let f = b.reshape(z, &[n, 2, 2, nh, nw, d])?;
    let f = b.transpose(f, &[0, 5, 3, 1, 4, 2])?;
    let f = b.reshape(f, &[n, d, h, w])?;
    let y = conv_norm_act(&mut b.scope("conv_proj"), f, c, 1, 1, 1, true)?;
    let cat = b.concat(&[x, y], 1)?;
    conv_norm_act(&mut b.scope("conv_fusion"), cat, c, 3, 1, 1, true)
}

/// Builds XFormer-R for a batch of `n` (input `f32[n,3,256,256]`, output
/// `f32[n,1000]`).
pub fn build(kind: XfaKind, n: usize) -> Result<Graph, FrontendError> {
    let mut b = GraphBuilder::new(NAME);
    let image = b.input("image", &[n, 3, 256, 256])?;
    let mut x = conv_norm_act(&mut b.scope("stem"), image, 16, 3, 2, 1, true)?;
    x = mv2(&mut b.scope("stages.0.0"), x, 32, 1)?;
    x = mv2(&mut b.scope("stages.1.0"), x, 64, 2)?;
    x = mv2(&mut b.scope("stages.1.1"), x, 64, 1)?;
    x = mv2(&mut b.scope("stages.1.2"), x, 64, 1)?;
    for (k, c, d, depth) in [(2, 96, 144, 2), (3, 128, 192, 4), (4, 160, 240, 3)] {
        x = mv2(&mut b.scope(format!("stages.{k}.0")), x, c, 2)?;
        let cfg = (d, depth, 2 * d);
        x = xformer_block(&mut b.scope(format!("stages.{k}.1")), x, cfg, kind)?;
    }
    let x = conv_norm_act(&mut b.scope("final_conv"), x, 640, 1, 1, 1, true)?;
    let p = b.global_avg_pool(x)?;
    let p = b.reshape(p, &[n, 640])?;
    let logits = b.scope("head.fc").linear(p, 1000, true)?;
    b.finish(vec![logits])
}
