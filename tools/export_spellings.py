#!/usr/bin/env python3
"""Exports small PyTorch models of the three families kiln targets in every
spelling PyTorch writes, for `tests/spellings.rs`: the same module through
the TorchScript exporter at opsets 13 and 17 and through the dynamo exporter
called the default way (`torch.onnx.export(model, args, path)`: opset 18 and
later, weights beside the graph in `NAME.dynamo.onnx.data`).

kiln must optimise every spelling of one model to the same fused ops; the
test snapshots each file's optimised op counts and checks they agree.

Models (reduced widths, random weights, BatchNorm statistics randomised so
folding them is exercised):

- mvit2: MobileViTv2 in miniature: conv stem + BN + SiLU, an inverted
  residual, one MobileViTv2 block (depthwise local conv, unfold, one
  separable-attention layer with GroupNorm(1), FFN, fold, projection), a
  global average pool and a Linear classifier.
- mformer: one Mobile-Former block (tools/onnx_fixtures.py's
  MobileFormerBlock: both bridges, a Former layer, dynamic ReLU) on the
  stem's output, with a pooled classifier on the first token.
- vit: a plain pre-norm transformer (patch-embedding conv, one encoder
  layer with timm's unfused attention — `F.scaled_dot_product_attention`
  has no TorchScript export at opset 13 —, GELU MLP, LayerNorm, mean over
  tokens, Linear head).

Beside the `.onnx` files go `NAME.input0.npy` (the input) and
`NAME.output0.npy` (PyTorch's output on it), and `MANIFEST.md`, which
records the torch/onnx versions and exactly how each file was made.

Usage: export_spellings.py OUT_DIR   (needs: torch, onnx, onnxscript, numpy;
e.g. python3 -m venv target/torch-venv && target/torch-venv/bin/pip install
torch onnx onnxscript)
"""

import os
import sys

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from onnx_fixtures import MobileFormerBlock, MobileViTv2Block, randomise_bn  # noqa: E402


class InvertedResidual(nn.Module):
    def __init__(self, c, hidden):
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv2d(c, hidden, 1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.SiLU(),
            nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.SiLU(),
            nn.Conv2d(hidden, c, 1, bias=False),
            nn.BatchNorm2d(c),
        )

    def forward(self, x):
        return x + self.block(x)


def stem(c):
    return nn.Sequential(
        nn.Conv2d(3, c, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c), nn.SiLU()
    )


class MiniMobileViTv2(nn.Module):
    def __init__(self, c=16, classes=10):
        super().__init__()
        self.stem = stem(c)
        self.ir = InvertedResidual(c, 2 * c)
        self.block = MobileViTv2Block(c=c, d=24, ffn=48)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(c, classes)

    def forward(self, x):
        x = self.block(self.ir(self.stem(x)))
        return self.head(torch.flatten(self.pool(x), 1))


class MiniMobileFormer(nn.Module):
    def __init__(self, c=16, dz=32, m=4, classes=10):
        super().__init__()
        self.stem = stem(c)
        self.tokens = nn.Parameter(torch.randn(1, m, dz) * 0.5)
        self.block = MobileFormerBlock(c=c, dz=dz, m=m)
        self.head = nn.Linear(c + dz, classes)

    def forward(self, x):
        x = self.stem(x)
        z = self.tokens.expand(x.shape[0], -1, -1)
        x, z = self.block(x, z)
        pooled = x.mean(dim=(2, 3))
        return self.head(torch.cat([pooled, z[:, 0]], dim=1))


class Attention(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.heads = heads
        self.scale = (d // heads) ** -0.5
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)

    def forward(self, x):
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        # timm's unfused path: F.scaled_dot_product_attention has no
        # TorchScript export at opset 13.
        a = (q * self.scale) @ k.transpose(-2, -1)
        x = a.softmax(dim=-1) @ v
        return self.proj(x.transpose(1, 2).reshape(b, n, d))


class MiniViT(nn.Module):
    def __init__(self, d=32, heads=2, classes=10):
        super().__init__()
        self.embed = nn.Conv2d(3, d, 4, stride=4)
        self.ln1 = nn.LayerNorm(d)
        self.attn = Attention(d, heads)
        self.ln2 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, classes)

    def forward(self, x):
        x = self.embed(x).flatten(2).transpose(1, 2)
        x = x + self.attn(self.ln1(x))
        x = x + self.mlp(self.ln2(x))
        return self.head(self.norm(x).mean(dim=1))


def opset_of(path):
    m = onnx.load(path, load_external_data=False)
    return next(o.version for o in m.opset_import if o.domain in ("", "ai.onnx"))


def export_all(name, module, x, out, log):
    module.eval()
    with torch.no_grad():
        y = module(x)
    np.save(os.path.join(out, f"{name}.input0.npy"), x.numpy().astype(np.float32))
    np.save(os.path.join(out, f"{name}.output0.npy"), y.numpy().astype(np.float32))
    for opset in (13, 17):
        path = os.path.join(out, f"{name}.ts{opset}.onnx")
        # The symbolic batch of a typical deployment export.
        torch.onnx.export(
            module,
            (x,),
            path,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=opset,
            dynamo=False,
        )
        log.append(
            f"| `{name}.ts{opset}.onnx` | TorchScript | {opset_of(path)} | "
            f"`torch.onnx.export(m, (x,), path, input_names=['input'], output_names=['logits'], "
            f"dynamic_axes={{'input': {{0: 'batch'}}, 'logits': {{0: 'batch'}}}}, "
            f"opset_version={opset}, dynamo=False)` |"
        )
    # The default call: dynamo, static shapes, weights in a side file.
    path = os.path.join(out, f"{name}.dynamo.onnx")
    torch.onnx.export(module, (x,), path)
    data = path + ".data"
    how = "`torch.onnx.export(m, (x,), path)` (the default call)"
    if os.path.exists(data):
        how += f"; weights in `{os.path.basename(data)}`"
    log.append(f"| `{name}.dynamo.onnx` | dynamo | {opset_of(path)} | {how} |")


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    log = []
    models = [
        ("mvit2", MiniMobileViTv2()),
        ("mformer", MiniMobileFormer()),
        ("vit", MiniViT()),
    ]
    for name, module in models:
        randomise_bn(module, gen)
        x = torch.randn(1, 3, 32, 32, generator=gen)
        export_all(name, module, x, out, log)
    with open(os.path.join(out, "MANIFEST.md"), "w") as f:
        f.write(
            "# How these exports were made\n\n"
            f"Written by `tools/export_spellings.py` with torch {torch.__version__}, "
            f"onnx {onnx.__version__}; input `NAME.input0.npy` (1x3x32x32, seeded), "
            "PyTorch's output on it `NAME.output0.npy`.\n\n"
            "| file | exporter | opset | call |\n|---|---|---|---|\n"
        )
        f.write("\n".join(log) + "\n")
    for fn in sorted(os.listdir(out)):
        print(f"{fn}: {os.path.getsize(os.path.join(out, fn))} bytes")


if __name__ == "__main__":
    main()
