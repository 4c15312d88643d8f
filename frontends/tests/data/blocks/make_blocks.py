#!/usr/bin/env python3
"""Independent reference outputs for the zoo's block-level tests.

Each block is computed here straight from the formulas of the model specs
(docs/models/mobile-former.md sections 2.3-2.5, 2.8; mobilevitv2.md
sections 2.2-2.4; xformer.md section 2) in float64 numpy -- per-head loops,
explicit index formulas for unfold/fold -- not by mirroring the graph the
Rust builder emits. For every case it writes, under <case>/:

  weights/<name>.npy   every weight, named as the builder declares it
  inputs/<name>.npy    the block's inputs
  expected.npy         the block's output

All files are float32. Run `python3 make_blocks.py` in this folder (needs
only numpy); the outputs are committed so the tests need no Python.
"""
import math
import os
import shutil

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
RNG = np.random.default_rng(20240611)


class Case:
    def __init__(self, name):
        self.dir = os.path.join(HERE, name)
        shutil.rmtree(self.dir, ignore_errors=True)
        os.makedirs(os.path.join(self.dir, "weights"))
        os.makedirs(os.path.join(self.dir, "inputs"))

    def _save(self, sub, name, arr):
        arr = np.asarray(arr, dtype=np.float32)
        np.save(os.path.join(self.dir, sub, name + ".npy"), arr)
        # compute from the float32 values the Rust side will see
        return arr.astype(np.float64)

    def w(self, name, shape, scale=None, kind="normal"):
        if kind == "normal":
            if scale is None:
                fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
                scale = 1.0 / math.sqrt(fan_in)
            a = RNG.normal(0.0, scale, shape)
        elif kind == "gamma":
            a = 1.0 + RNG.uniform(-0.3, 0.3, shape)
        elif kind == "var":
            a = RNG.uniform(0.5, 1.5, shape)
        else:
            raise ValueError(kind)
        return self._save("weights", name, a)

    def inp(self, name, shape, scale=1.0):
        return self._save("inputs", name, RNG.normal(0.0, scale, shape))

    def expected(self, arr):
        np.save(os.path.join(self.dir, "expected.npy"), np.asarray(arr, dtype=np.float32))


# ----- reference operators (float64) -----------------------------------

def join(scope, leaf):
    """A weight name in a scope; the root scope adds no prefix."""
    return scope + "." + leaf if scope else leaf


def linear(c, scope, x, out, inp):
    """PyTorch Linear: x W^T + b, W [out, in]."""
    W = c.w(scope + ".weight", (out, inp))
    b = c.w(scope + ".bias", (out,), scale=0.1)
    return x @ W.T + b


def layer_norm(c, scope, x):
    d = x.shape[-1]
    g = c.w(scope + ".weight", (d,), kind="gamma")
    b = c.w(scope + ".bias", (d,), scale=0.1)
    m = x.mean(-1, keepdims=True)
    v = ((x - m) ** 2).mean(-1, keepdims=True)
    return (x - m) / np.sqrt(v + 1e-5) * g + b


def group_norm1(c, scope, x):
    """GroupNorm with one group: statistics over all of C, P, Np per sample."""
    d = x.shape[1]
    g = c.w(scope + ".weight", (d,), kind="gamma")
    b = c.w(scope + ".bias", (d,), scale=0.1)
    out = np.empty_like(x)
    for n in range(x.shape[0]):
        m = x[n].mean()
        v = ((x[n] - m) ** 2).mean()
        out[n] = (x[n] - m) / math.sqrt(v + 1e-5)
    return out * g[None, :, None, None] + b[None, :, None, None]


def batch_norm(c, scope, x):
    C = x.shape[1]
    g = c.w(scope + ".weight", (C,), kind="gamma")
    b = c.w(scope + ".bias", (C,), scale=0.1)
    m = c.w(scope + ".running_mean", (C,), scale=0.1)
    v = c.w(scope + ".running_var", (C,), kind="var")
    sh = (1, C, 1, 1)
    return (x - m.reshape(sh)) / np.sqrt(v.reshape(sh) + 1e-5) * g.reshape(sh) + b.reshape(sh)


def conv2d(c, scope, x, out, k, groups, bias=False):
    """Direct convolution, stride 1, zero padding k//2."""
    N, C, H, W = x.shape
    cg = C // groups
    w = c.w(scope + ".weight", (out, cg, k, k))
    b = c.w(scope + ".bias", (out,), scale=0.1) if bias else np.zeros(out)
    p = k // 2
    xp = np.zeros((N, C, H + 2 * p, W + 2 * p))
    xp[:, :, p:p + H, p:p + W] = x
    y = np.zeros((N, out, H, W))
    og = out // groups
    for o in range(out):
        gi = o // og
        for ci in range(cg):
            for dy in range(k):
                for dx in range(k):
                    y[:, o] += w[o, ci, dy, dx] * xp[:, gi * cg + ci, dy:dy + H, dx:dx + W]
        y[:, o] += b[o]
    return y


def softmax(x, axis):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def hsig(x):
    return np.clip(x + 3.0, 0.0, 6.0) / 6.0


def silu(x):
    return x / (1.0 + np.exp(-x))


def gelu(x):
    return 0.5 * x * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))


# ----- Mobile-Former (mobile-former.md) ----------------------------------

def m2f_case():
    c = Case("m2f_bridge")
    N, C, H, W, M, d = 1, 8, 3, 4, 3, 6
    X = c.inp("x", (N, C, H, W))
    Z = c.inp("z", (N, M, d))
    heads, Ch, L = 2, C // 2, H * W
    Xf = X.reshape(N, C, L)
    Q = linear(c, "q", Z, C, d)
    O = np.zeros((N, M, C))
    for j in range(heads):
        cols = slice(j * Ch, (j + 1) * Ch)
        S = Q[:, :, cols] @ Xf[:, cols, :] / math.sqrt(Ch)       # N x M x L
        A = softmax(S, -1)                                      # over positions
        O[:, :, cols] = A @ Xf[:, cols, :].transpose(0, 2, 1)   # values = features
    G = 2.0 * hsig(linear(c, "alpha.0", Z, C, d))
    out = layer_norm(c, "layer_norm", Z + linear(c, "proj", O * G, d, C))
    c.expected(out)


def former_case():
    c = Case("former")
    N, M, d = 1, 3, 8
    Z = c.inp("z", (N, M, d))
    heads, dh = 4, d // 4
    Q = linear(c, "q", Z, d, d)
    O = np.zeros((N, M, d))
    for j in range(heads):
        cols = slice(j * dh, (j + 1) * dh)
        K = Z[:, :, cols]                                   # keys = values = tokens
        A = softmax(Q[:, :, cols] @ K.transpose(0, 2, 1) / math.sqrt(dh), -1)
        O[:, :, cols] = A @ K
    Z1 = layer_norm(c, "layer_norm", Z + linear(c, "channel_mlp", O, d, d))
    F = linear(c, "ffn.2", gelu(linear(c, "ffn.0", Z1, 2 * d, d)), d, 2 * d)
    c.expected(layer_norm(c, "ffn_norm", Z1 + F))


def f2m_case():
    c = Case("f2m_bridge")
    N, C, H, W, M, d = 1, 8, 2, 3, 3, 6
    Y = c.inp("y", (N, C, H, W))
    Z = c.inp("z", (N, M, d))
    heads, Ch, L = 2, C // 2, H * W
    Yf = Y.reshape(N, C, L)
    K = linear(c, "k", Z, C, d)
    V = linear(c, "proj", Z, C, d)
    out = np.zeros((N, C, L))
    for j in range(heads):
        cols = slice(j * Ch, (j + 1) * Ch)
        S = Yf[:, cols, :].transpose(0, 2, 1) @ K[:, :, cols].transpose(0, 2, 1) / math.sqrt(Ch)
        A = softmax(S, -1)                                  # N x L x M, over tokens
        out[:, cols, :] = (A @ V[:, :, cols]).transpose(0, 2, 1)
    c.expected(Y + out.reshape(N, C, H, W))


def dyrelu_case():
    c = Case("dyrelu")
    N, C, H, W, d = 1, 5, 3, 3, 8
    x = c.inp("x", (N, C, H, W))
    t = c.inp("t", (N, d))
    h = np.maximum(linear(c, "hyper.0", t, d // 4, d), 0.0)
    theta = hsig(linear(c, "hyper.2", h, 2 * C, d // 4))
    a1 = 2.0 * (theta[:, :C] - 0.5) + 1.0
    a2 = 2.0 * (theta[:, C:] - 0.5)
    y = np.maximum(a1[:, :, None, None] * x, a2[:, :, None, None] * x)
    c.expected(y)


# ----- MobileViTv2 (mobilevitv2.md) --------------------------------------

def separable_attention(c, scope, U):
    N, d, P, Np = U.shape
    Wqkv = c.w(join(scope, "qkv_proj.weight"), (1 + 2 * d, d, 1, 1))[:, :, 0, 0]
    bqkv = c.w(join(scope, "qkv_proj.bias"), (1 + 2 * d,), scale=0.1)
    Wo = c.w(join(scope, "out_proj.weight"), (d, d, 1, 1))[:, :, 0, 0]
    bo = c.w(join(scope, "out_proj.bias"), (d,), scale=0.1)
    out = np.zeros_like(U)
    for n in range(N):
        for p in range(P):
            tok = U[n, :, p, :]                              # d x Np: the Np patches of slot p
            qkv = Wqkv @ tok + bqkv[:, None]
            q, k, v = qkv[0], qkv[1:1 + d], qkv[1 + d:]
            s = softmax(q, 0)                                # over patches
            cv = (k * s[None, :]).sum(axis=1)                # context vector, d
            y = np.maximum(v, 0.0) * cv[:, None]
            out[n, :, p, :] = Wo @ y + bo[:, None]
    return out


def pointwise(c, scope, U, out, bias):
    d = U.shape[1]
    W = c.w(scope + ".weight", (out, d, 1, 1))[:, :, 0, 0]
    b = c.w(scope + ".bias", (out,), scale=0.1) if bias else np.zeros(out)
    return np.einsum("oc,ncpj->nopj", W, U) + b[None, :, None, None]


def sep_attn_case():
    c = Case("separable_attention")
    U = c.inp("u", (1, 6, 4, 5))
    c.expected(separable_attention(c, "", U))


def mobilevit_block_case():
    c = Case("mobilevit_block")
    N, C, H, W, d, depth = 1, 4, 4, 6, 8, 2
    f = (2 * d // 16) * 16
    X = c.inp("x", (N, C, H, W))
    y = silu(batch_norm(c, "conv_kxk.bn", conv2d(c, "conv_kxk.conv", X, C, 3, C)))
    F = conv2d(c, "conv_1x1", y, d, 1, 1)
    nw = W // 2
    Np = (H // 2) * nw
    U = np.zeros((N, d, 4, Np))
    for p in range(4):
        for j in range(Np):
            U[:, :, p, j] = F[:, :, 2 * (j // nw) + p // 2, 2 * (j % nw) + p % 2]
    for l in range(depth):
        s = "transformer.%d" % l
        U = U + separable_attention(c, s + ".attn", group_norm1(c, s + ".norm1", U))
        h = silu(pointwise(c, s + ".mlp.fc1", group_norm1(c, s + ".norm2", U), f, True))
        U = U + pointwise(c, s + ".mlp.fc2", h, d, True)
    U = group_norm1(c, "norm", U)
    Fo = np.zeros((N, d, H, W))
    for y_ in range(H):
        for x_ in range(W):
            Fo[:, :, y_, x_] = U[:, :, 2 * (y_ % 2) + x_ % 2, (y_ // 2) * nw + x_ // 2]
    out = batch_norm(c, "conv_proj.bn", conv2d(c, "conv_proj.conv", Fo, C, 1, 1))
    c.expected(out)


# ----- XFormer-R attention (xformer.md section 2) -----------------------

def xfa_case(name, kind):
    c = Case(name)
    B, T, D, h = 2, 5, 8, 4
    Dh = D // h
    X = c.inp("x", (B, T, D))
    Q = linear(c, "q", X, D, D)
    K = linear(c, "k", X, D, D)
    V = linear(c, "v", X, D, D)
    if kind == "xca":
        tau = c.w("temperature", (h,), kind="gamma")
    else:
        gamma = c.w("gamma", (h,), kind="gamma")
    O = np.zeros((B, T, D))
    for i in range(h):
        cols = slice(i * Dh, (i + 1) * Dh)
        Qi, Ki, Vi = Q[:, :, cols], K[:, :, cols], V[:, :, cols]
        if kind == "xca":
            # unit L2 norm of every feature column across the tokens
            Qn = Qi / np.maximum(np.linalg.norm(Qi, axis=1, keepdims=True), 1e-12)
            Kn = Ki / np.maximum(np.linalg.norm(Ki, axis=1, keepdims=True), 1e-12)
            A = softmax(tau[i] * Qn.transpose(0, 2, 1) @ Kn, -1)     # Dh x Dh
            O[:, :, cols] = Vi @ A.transpose(0, 2, 1)
        else:
            # unit L2 norm of every token over the head's features
            Qn = Qi / np.maximum(np.linalg.norm(Qi, axis=2, keepdims=True), 1e-12)
            Kn = Ki / np.maximum(np.linalg.norm(Ki, axis=2, keepdims=True), 1e-12)
            O[:, :, cols] = (gamma[i] * Qn) @ (Kn.transpose(0, 2, 1) @ Vi)
    c.expected(linear(c, "proj", O, D, D))


if __name__ == "__main__":
    m2f_case()
    former_case()
    f2m_case()
    dyrelu_case()
    sep_attn_case()
    mobilevit_block_case()
    xfa_case("xfa", "xca")
    xfa_case("xnorm", "xnorm")
