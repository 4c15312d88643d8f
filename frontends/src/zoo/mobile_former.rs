//! Mobile-Former (Chen et al., CVPR 2022), all seven ImageNet variants,
//! built per `docs/models/mobile-former.md` with the reference
//! checkpoint's (AAboys/MobileFormer) weight names and layouts.
//!
//! The block builders are public so that tests can build one block on a
//! tiny input and compare it with an independent computation. Each works in
//! the builder's *current scope*: the caller opens `features.3.local_global`
//! (say) and the bridge declares `q.weight`, `alpha.0.weight`, ... inside it.
//! Activations are NCHW feature maps `X [N,C,H,W]` and tokens `Z [N,M,d]`.

use kiln_ir::Value;

use crate::FrontendError;
use crate::builder::GraphBuilder;
use crate::zoo::dims4;

/// Heads of both bridges (reference: `attn_num_heads = 2`).
pub const BRIDGE_HEADS: usize = 2;
/// Heads of the Former (the reference's `GlobalBlock` default).
pub const FORMER_HEADS: usize = 4;

/// One row of a variant's block list (spec section 3.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MfBlock {
    /// Block 1, conv only: depthwise-expanding 3×3 (×e, stride s) then a
    /// pointwise projection to `out`.
    Lite {
        /// expansion of the depthwise conv
        e: usize,
        /// output channels
        out: usize,
        /// stride of the depthwise conv
        stride: usize,
    },
    /// Stride-2 Mobile-Former block: dw(×e1, s2) → pw → dw(×4) → pw.
    Down {
        /// first expansion
        e1: usize,
        /// output channels
        out: usize,
    },
    /// Stride-1 Mobile-Former block: pw(×e) → dw → pw.
    Mf {
        /// expansion
        e: usize,
        /// output channels
        out: usize,
    },
}

/// A Mobile-Former variant: the spec's compact configuration (section 3.1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MfConfig {
    /// zoo name, e.g. `mobile_former_508m`
    pub name: &'static str,
    /// stem channels C0
    pub stem: usize,
    /// token count M
    pub tokens: usize,
    /// token dimension d
    pub dim: usize,
    /// groups of every pointwise conv (4 for 26M, with channel shuffles)
    pub groups: usize,
    /// the block list
    pub blocks: Vec<MfBlock>,
    /// width F of the head's hidden FC
    pub head_fc: usize,
    /// input resolution (square)
    pub resolution: usize,
}

/// The zoo names of the seven variants, largest first.
pub const NAMES: [&str; 7] = [
    "mobile_former_508m",
    "mobile_former_294m",
    "mobile_former_214m",
    "mobile_former_151m",
    "mobile_former_96m",
    "mobile_former_52m",
    "mobile_former_26m",
];

/// The configuration of a variant by zoo name.
pub fn config(name: &str) -> Option<MfConfig> {
    use MfBlock::{Down, Lite, Mf};
    let lite = |e, out, stride| Lite { e, out, stride };
    let down = |out| Down { e1: 6, out };
    let mf = |e, out| Mf { e, out };
    let small = || {
        vec![
            lite(3, 12, 2),
            mf(3, 12),
            down(24),
            mf(3, 24),
            down(48),
            mf(4, 48),
            mf(6, 64),
            down(96),
            mf(6, 96),
        ]
    };
    let (name, stem, tokens, dim, groups, blocks, head_fc) = match name {
        "mobile_former_508m" => (
            NAMES[0],
            24,
            6,
            192,
            1,
            vec![
                lite(2, 24, 1),
                down(40),
                mf(3, 40),
                down(72),
                mf(3, 72),
                down(128),
                mf(4, 128),
                mf(6, 176),
                mf(6, 176),
                down(240),
                mf(6, 240),
                mf(6, 240),
            ],
            1920,
        ),
        "mobile_former_294m" => (
            NAMES[1],
            16,
            6,
            192,
            1,
            vec![
                lite(2, 16, 1),
                down(24),
                mf(4, 24),
                down(48),
                mf(4, 48),
                down(96),
                mf(4, 96),
                mf(6, 128),
                mf(6, 128),
                down(192),
                mf(6, 192),
                mf(6, 192),
            ],
            1920,
        ),
        "mobile_former_214m" => (
            NAMES[2],
            12,
            6,
            192,
            1,
            vec![
                lite(2, 12, 1),
                down(20),
                mf(3, 20),
                down(40),
                mf(4, 40),
                down(80),
                mf(4, 80),
                mf(6, 112),
                mf(6, 112),
                down(160),
                mf(6, 160),
                mf(6, 160),
            ],
            1600,
        ),
        "mobile_former_151m" => (
            NAMES[3],
            12,
            6,
            192,
            1,
            vec![
                lite(2, 12, 1),
                down(16),
                mf(3, 16),
                down(32),
                mf(3, 32),
                down(64),
                mf(4, 64),
                mf(6, 88),
                mf(6, 88),
                down(128),
                mf(6, 128),
                mf(6, 128),
            ],
            1280,
        ),
        "mobile_former_96m" => (
            NAMES[4],
            12,
            4,
            128,
            1,
            vec![
                lite(2, 12, 1),
                down(16),
                down(32),
                mf(3, 32),
                down(64),
                mf(4, 64),
                mf(6, 88),
                down(128),
                mf(6, 128),
            ],
            1280,
        ),
        "mobile_former_52m" => (NAMES[5], 8, 3, 128, 1, small(), 1024),
        "mobile_former_26m" => (NAMES[6], 8, 3, 128, 4, small(), 1024),
        _ => return None,
    };
    Some(MfConfig {
        name,
        stem,
        tokens,
        dim,
        groups,
        blocks,
        head_fc,
        resolution: 224,
    })
}

fn err(msg: String) -> FrontendError {
    FrontendError::Zoo(msg)
}

fn dims3(b: &GraphBuilder, z: Value) -> Result<[usize; 3], FrontendError> {
    let s = b.shape(z)?;
    s.as_slice().try_into().map_err(|_| {
        err(format!(
            "{}: expected tokens [N,M,d], got {s:?}",
            b.path("")
        ))
    })
}

fn split_heads(b: &GraphBuilder, c: usize, heads: usize) -> Result<usize, FrontendError> {
    if c.is_multiple_of(heads) {
        Ok(c / heads)
    } else {
        Err(err(format!(
            "{}: {c} channels do not split into {heads} heads",
            b.path("")
        )))
    }
}

/// Conv (no bias) → BN, in the sub-scopes `{conv}` and `{bn}`.
fn conv_bn(
    b: &mut GraphBuilder,
    x: Value,
    names: (&str, &str),
    out: usize,
    k: usize,
    stride: usize,
    groups: usize,
) -> Result<Value, FrontendError> {
    let y = b
        .scope(names.0)
        .conv2d(x, out, k, stride, k / 2, groups, false)?;
    b.scope(names.1).batch_norm(y)
}

/// `shuffle(x, G)`: view channels as `[G, C/G]`, swap, flatten (spec 2.9).
pub fn channel_shuffle(
    b: &mut GraphBuilder,
    x: Value,
    groups: usize,
) -> Result<Value, FrontendError> {
    let [n, c, h, w] = dims4(b, x)?;
    let per = split_heads(b, c, groups)?;
    let v = b.reshape(x, &[n, groups, per, h, w])?;
    let t = b.transpose(v, &[0, 2, 1, 3, 4])?;
    b.reshape(t, &[n, c, h, w])
}

/// Mobile→Former bridge (spec 2.3): tokens `z` read the feature map `x`
/// (2 heads, no key/value projection, the dynamic gate `2·hsig`), post-LN.
/// Declares `q`, `alpha.0`, `proj` (Linear) and `layer_norm` in the current scope.
pub fn m2f_bridge(b: &mut GraphBuilder, x: Value, z: Value) -> Result<Value, FrontendError> {
    let [n, c, h, w] = dims4(b, x)?;
    let [_, m, d] = dims3(b, z)?;
    let heads = BRIDGE_HEADS;
    let ch = split_heads(b, c, heads)?;
    let l = h * w;
    // queries from the tokens, split into heads: [N, h, M, Ch]
    let q = b.scope("q").linear(z, c, true)?;
    let q = b.reshape(q, &[n, m, heads, ch])?;
    let q = b.transpose(q, &[0, 2, 1, 3])?;
    // keys = values = the raw features: [N, h, Ch, L]
    let k = b.reshape(x, &[n, heads, ch, l])?;
    let s = b.matmul(q, k)?;
    let s = b.mul_scalar(s, (ch as f32).powf(-0.5))?;
    let a = b.softmax(s, 3)?;
    let v = b.transpose(k, &[0, 1, 3, 2])?;
    let o = b.matmul(a, v)?; // [N, h, M, Ch]
    let o = b.transpose(o, &[0, 2, 1, 3])?;
    let o = b.reshape(o, &[n, m, c])?;
    // dynamic gate from the bridge's input tokens
    let g = b.scope("alpha.0").linear(z, c, true)?;
    let g = b.hard_sigmoid(g)?;
    let g = b.mul_scalar(g, 2.0)?;
    let o = b.mul(o, g)?;
    let p = b.scope("proj").linear(o, d, true)?;
    let r = b.add(z, p)?;
    b.scope("layer_norm").layer_norm(r)
}

/// The Former (spec 2.4): one post-norm transformer layer on the tokens
/// with a query projection only (keys = values = the tokens), 4 heads, an
/// output projection `channel_mlp` and a GELU FFN of expansion 2.
pub fn former(b: &mut GraphBuilder, z: Value) -> Result<Value, FrontendError> {
    let [n, m, d] = dims3(b, z)?;
    let heads = FORMER_HEADS;
    let dh = split_heads(b, d, heads)?;
    let q = b.scope("q").linear(z, d, true)?;
    let q = b.reshape(q, &[n, m, heads, dh])?;
    let q = b.transpose(q, &[0, 2, 1, 3])?; // [N, h, M, dh]
    let k = b.transpose(z, &[0, 2, 1])?;
    let k = b.reshape(k, &[n, heads, dh, m])?; // [N, h, dh, M]
    let s = b.matmul(q, k)?;
    let s = b.mul_scalar(s, (dh as f32).powf(-0.5))?;
    let a = b.softmax(s, 3)?;
    let v = b.transpose(k, &[0, 1, 3, 2])?;
    let o = b.matmul(a, v)?; // [N, h, M, dh]
    let o = b.transpose(o, &[0, 2, 1, 3])?;
    let o = b.reshape(o, &[n, m, d])?;
    let p = b.scope("channel_mlp").linear(o, d, true)?;
    let r = b.add(z, p)?;
    let z1 = b.scope("layer_norm").layer_norm(r)?;
    let f = b.scope("ffn.0").linear(z1, 2 * d, true)?;
    let f = b.gelu(f)?;
    let f = b.scope("ffn.2").linear(f, d, true)?;
    let r = b.add(z1, f)?;
    b.scope("ffn_norm").layer_norm(r)
}

/// Former→Mobile bridge (spec 2.8): the feature map `y` reads the tokens
/// (2 heads; queries are the raw features, keys `k` and values `proj` are
/// projected tokens); plain residual, no norm.
pub fn f2m_bridge(b: &mut GraphBuilder, y: Value, z: Value) -> Result<Value, FrontendError> {
    let [n, c, h, w] = dims4(b, y)?;
    let [_, m, _] = dims3(b, z)?;
    let heads = BRIDGE_HEADS;
    let ch = split_heads(b, c, heads)?;
    let l = h * w;
    let q = b.reshape(y, &[n, heads, ch, l])?;
    let q = b.transpose(q, &[0, 1, 3, 2])?; // [N, h, L, Ch]
    let k = b.scope("k").linear(z, c, true)?;
    let k = b.transpose(k, &[0, 2, 1])?;
    let k = b.reshape(k, &[n, heads, ch, m])?; // [N, h, Ch, M]
    let s = b.matmul(q, k)?;
    let s = b.mul_scalar(s, (ch as f32).powf(-0.5))?;
    let a = b.softmax(s, 3)?; // over tokens
    let v = b.scope("proj").linear(z, c, true)?;
    let v = b.transpose(v, &[0, 2, 1])?;
    let v = b.reshape(v, &[n, heads, ch, m])?;
    let v = b.transpose(v, &[0, 1, 3, 2])?; // [N, h, M, Ch]
    let o = b.matmul(a, v)?; // [N, h, L, Ch]
    let o = b.transpose(o, &[0, 1, 3, 2])?;
    let o = b.reshape(o, &[n, c, h, w])?;
    b.add(y, o)
}

/// Dynamic ReLU (spec 2.5) of `x [N,C,H,W]` with coefficients from the
/// token vector `t [N,d]`: the hyper-MLP `hyper.0` (d→d/4) → ReLU →
/// `hyper.2` (→2C) → hsig gives θ; `a1 = (θ₁−½)·2+1`, `a2 = (θ₂−½)·2`;
/// `y = max(a1·x, a2·x)` per channel.
pub fn dyrelu(b: &mut GraphBuilder, x: Value, t: Value) -> Result<Value, FrontendError> {
    let [n, c, _, _] = dims4(b, x)?;
    let ts = b.shape(t)?;
    let d = match ts[..] {
        [_, d] => d,
        _ => return Err(err(format!("{}: dyrelu token must be [N,d]", b.path("")))),
    };
    let hidden = split_heads(b, d, 4)?;
    let hp = b.scope("hyper.0").linear(t, hidden, true)?;
    let hp = b.relu(hp)?;
    let hp = b.scope("hyper.2").linear(hp, 2 * c, true)?;
    let theta = b.hard_sigmoid(hp)?;
    let theta = b.reshape(theta, &[n, 2 * c, 1, 1])?;
    let parts = b.split(theta, 1, &[c, c])?;
    let a1 = b.sub_scalar(parts[0], 0.5)?;
    let a1 = b.mul_scalar(a1, 2.0)?;
    let a1 = b.add_scalar(a1, 1.0)?;
    let a2 = b.sub_scalar(parts[1], 0.5)?;
    let a2 = b.mul_scalar(a2, 2.0)?;
    let y1 = b.mul(x, a1)?;
    let y2 = b.mul(x, a2)?;
    b.max(y1, y2)
}

/// Block 1, "bneck-lite" (spec 2.2), under `conv.{0,1,4,5}`.
fn lite_block(
    b: &mut GraphBuilder,
    x: Value,
    (e, out, stride): (usize, usize, usize),
    groups: usize,
) -> Result<Value, FrontendError> {
    let [_, cin, _, _] = dims4(b, x)?;
    let y = conv_bn(b, x, ("conv.0", "conv.1"), e * cin, 3, stride, cin)?;
    let mut y = b.relu6(y)?;
    if groups > 1 {
        y = channel_shuffle(b, y, cin)?;
    }
    let y = conv_bn(b, y, ("conv.4", "conv.5"), out, 1, 1, groups)?;
    if stride == 1 && cin == out {
        b.add(y, x)
    } else {
        Ok(y)
    }
}

/// The Mobile sub-block of a stride-1 block (spec 2.6), before the skip.
fn mobile_mf(
    b: &mut GraphBuilder,
    x: Value,
    t: Value,
    (e, out): (usize, usize),
    groups: usize,
) -> Result<Value, FrontendError> {
    let [_, cin, _, _] = dims4(b, x)?;
    let hid = e * cin;
    let mut y = conv_bn(b, x, ("conv1.0", "conv1.1"), hid, 1, 1, groups)?;
    if groups > 1 {
        y = channel_shuffle(b, y, groups)?;
    }
    let y = dyrelu(&mut b.scope("hyper1"), y, t)?;
    let y = conv_bn(b, y, ("conv2.0", "conv2.1"), hid, 3, 1, hid)?;
    let y = dyrelu(&mut b.scope("hyper2"), y, t)?;
    let mut y = conv_bn(b, y, ("conv3.0", "conv3.1"), out, 1, 1, groups)?;
    if groups > 1 {
        y = channel_shuffle(b, y, groups)?;
    }
    Ok(y)
}

/// The Mobile sub-block of a stride-2 block (spec 2.7), inner residual included.
fn mobile_down(
    b: &mut GraphBuilder,
    x: Value,
    t: Value,
    (e1, out): (usize, usize),
    groups: usize,
) -> Result<Value, FrontendError> {
    let [_, cin, _, _] = dims4(b, x)?;
    let mut y = conv_bn(b, x, ("conv1.0", "conv1.1"), e1 * cin, 3, 2, cin)?;
    if groups > 1 {
        y = channel_shuffle(b, y, cin)?;
    }
    let y = dyrelu(&mut b.scope("hyper1"), y, t)?;
    let r = conv_bn(b, y, ("conv2.0", "conv2.1"), out, 1, 1, groups)?;
    let mut y = conv_bn(b, r, ("conv3.0", "conv3.1"), 4 * out, 3, 1, out)?;
    if groups > 1 {
        y = channel_shuffle(b, y, out)?;
    }
    let y = dyrelu(&mut b.scope("hyper3"), y, t)?;
    let y = conv_bn(b, y, ("conv4.0", "conv4.1"), out, 1, 1, groups)?;
    b.add(y, r)
}

/// One Mobile-Former block (spec 2.10) in the current scope
/// (`features.K`): M2F on the block input, Former, Mobile sub-block with
/// DyReLU coefficients from token 0 of the Former output, identity skip,
/// then F2M. Returns `(X', Z')`.
pub fn mf_block(
    b: &mut GraphBuilder,
    x: Value,
    z: Value,
    block: MfBlock,
    groups: usize,
) -> Result<(Value, Value), FrontendError> {
    let z1 = m2f_bridge(&mut b.scope("local_global"), x, z)?;
    let z2 = former(&mut b.scope("global_block"), z1)?;
    // hyper_token_id = 0: the first token of this block's Former output
    let t = b.gather(z2, 1, 0)?;
    let [_, cin, _, _] = dims4(b, x)?;
    let y = match block {
        MfBlock::Mf { e, out } => {
            let y = mobile_mf(b, x, t, (e, out), groups)?;
            if cin == out { b.add(y, x)? } else { y }
        }
        MfBlock::Down { e1, out } => mobile_down(b, x, t, (e1, out), groups)?,
        MfBlock::Lite { .. } => {
            return Err(err(format!(
                "{}: a bneck-lite block has no bridges",
                b.path("")
            )));
        }
    };
    let x2 = f2m_bridge(&mut b.scope("global_local"), y, z2)?;
    Ok((x2, z2))
}

/// The head (spec 2.11): conv1×1 → BN → ReLU6 → pool → hswish, concat
/// token 0 of `z`, FC → BN1d → hswish, classifier FC.
fn head(b: &mut GraphBuilder, x: Value, z: Value, cfg: &MfConfig) -> Result<Value, FrontendError> {
    let [n, c, _, _] = dims4(b, x)?;
    let mut b = b.scope("classifier");
    let mut y = x;
    if cfg.groups > 1 {
        y = channel_shuffle(&mut b, y, cfg.groups)?;
    }
    let y = conv_bn(&mut b, y, ("conv.1", "conv.2"), 6 * c, 1, 1, cfg.groups)?;
    let y = b.relu6(y)?;
    let y = b.global_avg_pool(y)?;
    let y = b.hard_swish(y)?;
    let y = b.reshape(y, &[n, 6 * c])?;
    let t = b.gather(z, 1, 0)?;
    let y = b.concat(&[y, t], 1)?;
    let y = b.scope("fc.0").linear(y, cfg.head_fc, true)?;
    let y = b.scope("fc.1").batch_norm(y)?;
    let y = b.hard_swish(y)?;
    // classifier.0 is dropout: identity at inference
    b.scope("classifier.1").linear(y, 1000, true)
}

/// Builds the whole network for `cfg` and a batch of `n` (input
/// `f32[n,3,224,224]`, output logits `f32[n,1000]`).
pub fn build(cfg: &MfConfig, n: usize) -> Result<kiln_ir::Graph, FrontendError> {
    let mut b = GraphBuilder::new(cfg.name);
    let image = b.input("image", &[n, 3, cfg.resolution, cfg.resolution])?;
    let tokens = b.param("tokens.weight", &[cfg.tokens, cfg.dim])?;
    let mut z = b.expand(tokens, &[n, cfg.tokens, cfg.dim])?;
    let x = conv_bn(&mut b, image, ("stem.0", "stem.1"), cfg.stem, 3, 2, 1)?;
    let mut x = b.relu6(x)?;
    for (i, &block) in cfg.blocks.iter().enumerate() {
        let mut s = b.scope(format!("features.{i}"));
        match block {
            MfBlock::Lite { e, out, stride } => {
                x = lite_block(&mut s, x, (e, out, stride), cfg.groups)?;
            }
            _ => (x, z) = mf_block(&mut s, x, z, block, cfg.groups)?,
        }
    }
    let zf = m2f_bridge(&mut b.scope("local_global"), x, z)?;
    let logits = head(&mut b, x, zf, cfg)?;
    b.finish(vec![logits])
}
