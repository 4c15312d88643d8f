#!/usr/bin/env python3
"""Exports small PyTorch blocks of the model families kiln targets as ONNX
fixtures for kiln's importer tests (frontends/tests/onnx_fixtures.rs).

Three blocks, written here at reduced widths:

- MobileViTv2Block: depthwise 3x3 conv + BN + SiLU, 1x1 conv, unfold into
  patches, separable self-attention (GroupNorm(1), a 1+2d-channel 1x1 qkv
  conv, softmax over patches, context vector), a 1x1 FFN, fold, 1x1 conv
  + BN.
- MobileFormerBlock: Mobile->Former bridge (tokens attend to pixels,
  gated), Former (multi-head self-attention + FFN with LayerNorm), a Mobile
  sub-block with dynamic ReLU driven by the first token, and the
  Former->Mobile bridge (pixels attend to tokens).

- GardenOpsBlock: the operators timm's exports added (issue 15): an
  EdgeNeXt-style Fourier position encoding (cumsum of a ones grid, sin,
  cos), a GhostNetV2-style nearest-upsampled gate, EfficientFormerV2-style
  bilinear 2x upsampling, a LeViT-style attention-bias lookup by index,
  two einsums and an fmod.

The forward passes read `x.shape` the way model code does, so the
TorchScript exporter emits the usual Shape -> Gather -> Unsqueeze -> Concat
-> Reshape chains that kiln must fold. Each block is exported with the
TorchScript exporter (opset 17, symbolic batch) and, when it works here,
with the dynamo exporter; next to each `.onnx` go `*.input*.npy` and
`*.output.npy` (PyTorch's own outputs, float32).

Usage: onnx_fixtures.py OUT_DIR   (needs: torch, onnx, onnxscript, numpy)
"""

import os
import sys

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class MobileViTv2Block(nn.Module):
    def __init__(self, c=16, d=24, ffn=48, patch=2):
        super().__init__()
        self.patch = patch
        self.d = d
        self.local = nn.Sequential(
            nn.Conv2d(c, c, 3, padding=1, groups=c, bias=False),
            nn.BatchNorm2d(c),
            nn.SiLU(),
            nn.Conv2d(c, d, 1, bias=False),
        )
        self.norm1 = nn.GroupNorm(1, d)
        self.qkv = nn.Conv2d(d, 1 + 2 * d, 1)
        self.attn_out = nn.Conv2d(d, d, 1)
        self.norm2 = nn.GroupNorm(1, d)
        self.ffn = nn.Sequential(nn.Conv2d(d, ffn, 1), nn.SiLU(), nn.Conv2d(ffn, d, 1))
        self.proj = nn.Sequential(nn.Conv2d(d, c, 1, bias=False), nn.BatchNorm2d(c))

    def unfold(self, x):
        b, c, h, w = x.shape
        p = self.patch
        x = x.reshape(b, c, h // p, p, w // p, p)
        x = x.permute(0, 1, 3, 5, 2, 4)
        return x.reshape(b, c, p * p, (h // p) * (w // p))

    def fold(self, x, h, w):
        b, c, _, _ = x.shape
        p = self.patch
        x = x.reshape(b, c, p, p, h // p, w // p)
        x = x.permute(0, 1, 4, 2, 5, 3)
        return x.reshape(b, c, h, w)

    def attention(self, x):
        qkv = self.qkv(x)
        q, k, v = torch.split(qkv, [1, self.d, self.d], dim=1)
        scores = F.softmax(q, dim=-1)
        context = (k * scores).sum(dim=-1, keepdim=True)
        out = F.relu(v) * context.expand_as(v)
        return self.attn_out(out)

    def forward(self, x):
        y = self.local(x)
        h, w = y.shape[2], y.shape[3]
        p = self.unfold(y)
        p = p + self.attention(self.norm1(p))
        p = p + self.ffn(self.norm2(p))
        return self.proj(self.fold(p, h, w)) + x


class MobileFormerBlock(nn.Module):
    def __init__(self, c=16, dz=32, m=4, heads=2, exp=32):
        super().__init__()
        self.c, self.dz, self.heads, self.exp = c, dz, heads, exp
        # Mobile -> Former
        self.m2f_q = nn.Linear(dz, c)
        self.m2f_out = nn.Linear(c, dz)
        self.m2f_gate = nn.Parameter(torch.zeros(1, 1, dz) + 0.3)
        # Former
        self.ln1 = nn.LayerNorm(dz)
        self.qkv = nn.Linear(dz, 3 * dz)
        self.attn_out = nn.Linear(dz, dz)
        self.ln2 = nn.LayerNorm(dz)
        self.ffn = nn.Sequential(nn.Linear(dz, 2 * dz), nn.GELU(), nn.Linear(2 * dz, dz))
        # Mobile with dynamic ReLU
        self.expand = nn.Sequential(nn.Conv2d(c, exp, 1, bias=False), nn.BatchNorm2d(exp))
        self.dw = nn.Sequential(
            nn.Conv2d(exp, exp, 3, padding=1, groups=exp, bias=False), nn.BatchNorm2d(exp)
        )
        self.project = nn.Sequential(nn.Conv2d(exp, c, 1, bias=False), nn.BatchNorm2d(c))
        self.dyrelu = nn.Sequential(nn.Linear(dz, dz), nn.ReLU(), nn.Linear(dz, 4 * exp))
        # Former -> Mobile
        self.f2m_k = nn.Linear(dz, c)
        self.f2m_v = nn.Linear(dz, c)

    def dynamic_relu(self, x, coeffs):
        b = x.shape[0]
        a1, b1, a2, b2 = torch.chunk(coeffs.reshape(b, 4 * self.exp, 1, 1), 4, dim=1)
        a1 = 2.0 * torch.sigmoid(a1)
        a2 = 2.0 * torch.sigmoid(a2) - 1.0
        return torch.maximum(x * a1 + b1, x * a2 + b2)

    def forward(self, x, z):
        b, c, h, w = x.shape
        pixels = x.reshape(b, c, h * w)  # [b, c, hw]
        # Mobile -> Former: tokens attend to pixels, gated
        q = self.m2f_q(z)  # [b, m, c]
        att = F.softmax(q @ pixels / (c**0.5), dim=-1)  # [b, m, hw]
        z = z + torch.sigmoid(self.m2f_gate) * self.m2f_out(att @ pixels.transpose(1, 2))
        # Former
        t = self.ln1(z)
        m = t.shape[1]
        qkv = self.qkv(t).reshape(b, m, 3, self.heads, self.dz // self.heads)
        qkv = qkv.permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        a = F.softmax(q @ k.transpose(-2, -1) * (self.dz // self.heads) ** -0.5, dim=-1)
        t = (a @ v).transpose(1, 2).reshape(b, m, self.dz)
        z = z + self.attn_out(t)
        z = z + self.ffn(self.ln2(z))
        # Mobile with dynamic ReLU driven by the first token
        coeffs = self.dyrelu(z[:, 0])
        y = self.dynamic_relu(self.expand(x), coeffs)
        y = self.dynamic_relu(self.dw(y), coeffs)
        y = self.project(y) + x
        # Former -> Mobile: pixels attend to tokens
        k = self.f2m_k(z)  # [b, m, c]
        v = self.f2m_v(z)
        pix = y.reshape(b, c, h * w).transpose(1, 2)  # [b, hw, c]
        att = F.softmax(pix @ k.transpose(1, 2) / (c**0.5), dim=-1)  # [b, hw, m]
        y = y + (att @ v).transpose(1, 2).reshape(b, c, h, w)
        return y, z


def randomise_bn(module, gen):
    """Non-trivial BatchNorm statistics, so folding them is tested."""
    for mod in module.modules():
        if isinstance(mod, nn.BatchNorm2d):
            with torch.no_grad():
                mod.running_mean.copy_(torch.randn(mod.num_features, generator=gen) * 0.1)
                mod.running_var.copy_(torch.rand(mod.num_features, generator=gen) + 0.5)
                mod.weight.copy_(torch.rand(mod.num_features, generator=gen) + 0.5)
                mod.bias.copy_(torch.randn(mod.num_features, generator=gen) * 0.1)


class GardenOpsBlock(nn.Module):
    def __init__(self, c=8, n=64, heads=4):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)
        self.bias = nn.Parameter(torch.randn(heads, n))
        self.register_buffer("idx", torch.randint(0, n, (n, n)))

    def forward(self, x):
        b, c, h, w = x.shape
        ones = torch.ones(b, h, w)
        xx = ones.cumsum(2)
        dim_t = torch.arange(4, dtype=torch.float32)
        dim_t = 10000 ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / 4)
        px = xx[:, :, :, None] / dim_t
        pos = torch.stack((px[..., 0::2].sin(), px[..., 1::2].cos()), dim=4)
        pos = pos.flatten(3).permute(0, 3, 1, 2)
        x = x + torch.cat([pos, pos], 1)
        g = torch.sigmoid(F.avg_pool2d(self.conv(x), 2))
        x = x * F.interpolate(g, size=(h, w), mode="nearest")
        up = F.interpolate(F.avg_pool2d(x, 2), scale_factor=2, mode="bilinear", align_corners=False)
        x = x + up
        t = x.flatten(2)
        att = torch.einsum("bcn,bcm->bnm", t, t) / 8 + self.bias[:, self.idx].mean(0)
        out = torch.einsum("bnm,bcm->bcn", att.softmax(-1), t)
        return out.reshape(b, c, h, w) + torch.fmod(x, 0.7)


def export(name, module, inputs, input_names, output_names, out):
    module.eval()
    with torch.no_grad():
        expected = module(*inputs)
    if isinstance(expected, torch.Tensor):
        expected = (expected,)
    for i, t in enumerate(inputs):
        np.save(os.path.join(out, f"{name}.input{i}.npy"), t.numpy().astype(np.float32))
    for i, t in enumerate(expected):
        np.save(os.path.join(out, f"{name}.output{i}.npy"), t.numpy().astype(np.float32))
    dynamic = {n: {0: "batch"} for n in input_names + output_names}
    path = os.path.join(out, f"{name}.torchscript.onnx")
    torch.onnx.export(
        module,
        inputs,
        path,
        input_names=input_names,
        output_names=output_names,
        dynamic_axes=dynamic,
        opset_version=17,
        dynamo=False,
    )
    print(f"{path}: {os.path.getsize(path)} bytes")
    try:
        path = os.path.join(out, f"{name}.dynamo.onnx")
        prog = torch.onnx.export(
            module,
            inputs,
            input_names=input_names,
            output_names=output_names,
            dynamo=True,
            external_data=False,
        )
        prog.save(path, external_data=False)
        print(f"{path}: {os.path.getsize(path)} bytes")
    except Exception as e:  # record why, keep the TorchScript fixture
        print(f"dynamo export of {name} failed: {str(e).splitlines()[0]}")


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)

    vit = MobileViTv2Block()
    randomise_bn(vit, gen)
    x = torch.randn(1, 16, 8, 8, generator=gen)
    export("mobilevitv2_block", vit, (x,), ["x"], ["y"], out)

    mf = MobileFormerBlock()
    randomise_bn(mf, gen)
    x = torch.randn(1, 16, 8, 8, generator=gen)
    z = torch.randn(1, 4, 32, generator=gen)
    export("mobileformer_block", mf, (x, z), ["x", "z"], ["y", "z_out"], out)

    ops = GardenOpsBlock()
    x = torch.randn(1, 8, 8, 8, generator=gen)
    export("garden_ops_block", ops, (x,), ["x"], ["y"], out)


if __name__ == "__main__":
    main()
