//! MobileViTv2 (Mehta & Rastegari, 2022), the seven widths 0.5 … 2.0, built
//! per `docs/models/mobilevitv2.md` with timm's state-dict names and
//! layouts (`timm/models/mobilevit.py`), so that a timm checkpoint saved as
//! safetensors binds as is (1×1 convs stay `[out,in,1,1]` convs, the
//! classifier is a `[1000, C5]` Linear).
//!
//! Unfold and fold are spelled with reshape/transpose exactly as timm's
//! `MobileVitV2Block.forward` does; the norm inside the attention path is a
//! one-group GroupNorm; separable attention is conv → split → softmax →
//! mul → reduce_sum → relu → mul → conv.

use kiln_ir::{Graph, Value};

use crate::FrontendError;
use crate::builder::GraphBuilder;
use crate::zoo::{conv_norm_act, dims4};

/// The zoo names, narrowest first.
pub const NAMES: [&str; 7] = [
    "mobilevitv2_050",
    "mobilevitv2_075",
    "mobilevitv2_100",
    "mobilevitv2_125",
    "mobilevitv2_150",
    "mobilevitv2_175",
    "mobilevitv2_200",
];

/// Widths derived from α by cvnets' rules (spec 1.1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MvConfig {
    /// zoo name
    pub name: &'static str,
    /// stem channels C0
    pub c0: usize,
    /// stage output channels C1 … C5
    pub channels: [usize; 5],
    /// attention dims of the three transformer stages
    pub attn_dims: [usize; 3],
    /// transformer depths of the three transformer stages
    pub depths: [usize; 3],
    /// input resolution (square)
    pub resolution: usize,
}

/// cvnets' `make_divisible(v, q, min)`: round to the nearest multiple of `q`
/// (at least `min`), bumped up by `q` when rounding lost more than 10 %.
pub fn make_divisible(v: f64, q: usize, min: usize) -> usize {
    let qf = q as f64;
    let r = (min as f64).max(((v + qf / 2.0) / qf).floor() * qf);
    let r = if r < 0.9 * v { r + qf } else { r };
    r as usize
}

/// The configuration of a width by zoo name.
pub fn config(name: &str) -> Option<MvConfig> {
    let i = NAMES.iter().position(|n| *n == name)?;
    let alpha = [0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0][i];
    let md = |v: f64| make_divisible(v * alpha, 8, 8);
    Some(MvConfig {
        name: NAMES[i],
        c0: make_divisible((32.0 * alpha).clamp(16.0, 64.0), 8, 16),
        channels: [
            make_divisible(64.0 * alpha, 16, 16),
            md(128.0),
            md(256.0),
            md(384.0),
            md(512.0),
        ],
        attn_dims: [md(128.0), md(192.0), md(256.0)],
        depths: [2, 4, 3],
        resolution: 256,
    })
}

/// Inverted residual (timm `BottleneckBlock`, spec 2.1), expansion 2, in the
/// current scope.
pub fn inverted_residual(
    b: &mut GraphBuilder,
    x: Value,
    out: usize,
    stride: usize,
) -> Result<Value, FrontendError> {
    let [_, cin, _, _] = dims4(b, x)?;
    let hid = make_divisible((2 * cin) as f64, 8, 8);
    let y = conv_norm_act(&mut b.scope("conv1_1x1"), x, hid, 1, 1, 1, true)?;
    let y = conv_norm_act(&mut b.scope("conv2_kxk"), y, hid, 3, stride, hid, true)?;
    let y = conv_norm_act(&mut b.scope("conv3_1x1"), y, out, 1, 1, 1, false)?;
    if stride == 1 && cin == out {
        b.add(y, x)
    } else {
        Ok(y)
    }
}

/// Separable self-attention (spec 2.3) on `u [N,d,P,Np]`, in the current
/// scope (timm `attn`: `qkv_proj`, `out_proj`, both 1×1 convs with bias).
pub fn separable_attention(b: &mut GraphBuilder, u: Value) -> Result<Value, FrontendError> {
    let [_, d, _, _] = dims4(b, u)?;
    let qkv = b.scope("qkv_proj").conv2d(u, 1 + 2 * d, 1, 1, 0, 1, true)?;
    let parts = b.split(qkv, 1, &[1, d, d])?;
    let (q, k, v) = (parts[0], parts[1], parts[2]);
    let s = b.softmax(q, 3)?; // over the patches of each pixel slot
    let kv = b.mul(k, s)?;
    let cv = b.reduce_sum(kv, &[3], true)?; // context vector [N,d,P,1]
    let v = b.relu(v)?;
    let y = b.mul(v, cv)?;
    b.scope("out_proj").conv2d(y, d, 1, 1, 0, 1, true)
}

/// One pre-norm `LinearTransformerBlock` on `u [N,d,P,Np]`, in the current
/// scope (`transformer.{l}`): `norm1`, `attn`, `norm2`, `mlp.fc1`, `mlp.fc2`.
pub fn transformer_layer(
    b: &mut GraphBuilder,
    u: Value,
    ffn: usize,
) -> Result<Value, FrontendError> {
    let [_, d, _, _] = dims4(b, u)?;
    let h = b.scope("norm1").group_norm(u, 1)?;
    let h = separable_attention(&mut b.scope("attn"), h)?;
    let u = b.add(u, h)?;
    let h = b.scope("norm2").group_norm(u, 1)?;
    let h = b.scope("mlp.fc1").conv2d(h, ffn, 1, 1, 0, 1, true)?;
    let h = b.silu(h)?;
    let h = b.scope("mlp.fc2").conv2d(h, d, 1, 1, 0, 1, true)?;
    b.add(u, h)
}

/// `MobileVitV2Block` (spec 2.2) in the current scope (`stages.{k}.1`).
pub fn mobilevit_block(
    b: &mut GraphBuilder,
    x: Value,
    d: usize,
    depth: usize,
) -> Result<Value, FrontendError> {
    let [n, c, h, w] = dims4(b, x)?;
    if !h.is_multiple_of(2) || !w.is_multiple_of(2) {
        // timm would resize; the zoo only builds inputs where this never happens
        return Err(FrontendError::Zoo(format!(
            "{}: feature map {h}x{w} is not a multiple of the 2x2 patch",
            b.path("")
        )));
    }
    let (nh, nw) = (h / 2, w / 2);
    let y = conv_norm_act(&mut b.scope("conv_kxk"), x, c, 3, 1, c, true)?;
    let y = b.scope("conv_1x1").conv2d(y, d, 1, 1, 0, 1, false)?;
    // unfold: [N,d,H,W] -> [N,d,nh,2,nw,2] -> [N,d,2,2,nh,nw] -> [N,d,4,Np]
    let u = b.reshape(y, &[n, d, nh, 2, nw, 2])?;
    let u = b.transpose(u, &[0, 1, 3, 5, 2, 4])?;
    let mut u = b.reshape(u, &[n, d, 4, nh * nw])?;
    let ffn = (2 * d / 16) * 16;
    for l in 0..depth {
        u = transformer_layer(&mut b.scope(format!("transformer.{l}")), u, ffn)?;
    }
    let u = b.scope("norm").group_norm(u, 1)?;
    // fold: the exact inverse
    let f = b.reshape(u, &[n, d, 2, 2, nh, nw])?;
    let f = b.transpose(f, &[0, 1, 4, 2, 5, 3])?;
    let f = b.reshape(f, &[n, d, h, w])?;
    conv_norm_act(&mut b.scope("conv_proj"), f, c, 1, 1, 1, false)
}

/// Builds the whole network for a batch of `n` (input `f32[n,3,256,256]`,
/// output `f32[n,1000]`).
pub fn build(cfg: &MvConfig, n: usize) -> Result<Graph, FrontendError> {
    let mut b = GraphBuilder::new(cfg.name);
    let image = b.input("image", &[n, 3, cfg.resolution, cfg.resolution])?;
    let mut x = conv_norm_act(&mut b.scope("stem"), image, cfg.c0, 3, 2, 1, true)?;
    let [c1, c2, c3, c4, c5] = cfg.channels;
    x = inverted_residual(&mut b.scope("stages.0.0"), x, c1, 1)?;
    x = inverted_residual(&mut b.scope("stages.1.0"), x, c2, 2)?;
    x = inverted_residual(&mut b.scope("stages.1.1"), x, c2, 1)?;
    for (k, c) in [(2, c3), (3, c4), (4, c5)] {
        x = inverted_residual(&mut b.scope(format!("stages.{k}.0")), x, c, 2)?;
        let (d, depth) = (cfg.attn_dims[k - 2], cfg.depths[k - 2]);
        x = mobilevit_block(&mut b.scope(format!("stages.{k}.1")), x, d, depth)?;
    }
    // timm's final_conv is an identity; the head pools and classifies
    let p = b.global_avg_pool(x)?;
    let p = b.reshape(p, &[n, c5])?;
    let logits = b.scope("head.fc").linear(p, 1000, true)?;
    b.finish(vec![logits])
}
