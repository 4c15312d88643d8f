"""Writes the data for conv_norm_attention.kir, computing the expected output
with numpy alone (float64 throughout), independently of kiln.

    python3 examples/conv_norm_attention.py

Outputs (committed, so CI needs no numpy):
  conv_norm_attention.safetensors     the weights, in the safetensors format
                                      written by hand below (8-byte LE header
                                      length, JSON header, raw LE data)
  conv_norm_attention_input.npy       the input x, f32[1,3,8,8]
  conv_norm_attention_expected.npy    the output, f32[1,64,16]
"""
import json
import os

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
rng = np.random.default_rng(20240611)
C_IN, C, H, W = 3, 16, 8, 8
D = C  # token width


def f32(a):
    return np.asarray(a, dtype=np.float32)


weights = {
    "conv.weight": f32(rng.normal(0, 0.3, (C, C_IN, 3, 3))),
    "conv.bias": f32(rng.normal(0, 0.1, C)),
    "bn.gamma": f32(rng.uniform(0.5, 1.5, C)),
    "bn.beta": f32(rng.normal(0, 0.1, C)),
    "bn.mean": f32(rng.normal(0, 0.2, C)),
    "bn.var": f32(rng.uniform(0.5, 1.5, C)),
    "attn.wq": f32(rng.normal(0, D**-0.5, (D, D))),
    "attn.wk": f32(rng.normal(0, D**-0.5, (D, D))),
    "attn.wv": f32(rng.normal(0, D**-0.5, (D, D))),
    "attn.scale": f32(1.0 / np.sqrt(D)),  # a scalar: shape ()
    "ln.gamma": f32(rng.uniform(0.5, 1.5, D)),
    "ln.beta": f32(rng.normal(0, 0.1, D)),
}
x = f32(rng.normal(0, 1, (1, C_IN, H, W)))


def write_safetensors(path, tensors):
    """The safetensors format by hand: only numpy needed."""
    header, chunks, offset = {}, [], 0
    for name in sorted(tensors):
        # (not np.ascontiguousarray: it turns the 0-d scale into shape (1,))
        a = np.asarray(tensors[name], dtype="<f4")
        raw = a.tobytes(order="C")
        header[name] = {
            "dtype": "F32",
            "shape": list(a.shape),
            "data_offsets": [offset, offset + len(raw)],
        }
        chunks.append(raw)
        offset += len(raw)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # pad so the data is 8-byte aligned
    with open(path, "wb") as f:
        f.write(len(text).to_bytes(8, "little"))
        f.write(text)
        for c in chunks:
            f.write(c)


# --- the reference computation, float64, written out op by op ---
w = {k: v.astype(np.float64) for k, v in weights.items()}
xd = x.astype(np.float64)

# conv2d 3x3, stride 1, pad 1: sum over input channel and kernel offsets
xp = np.pad(xd, ((0, 0), (0, 0), (1, 1), (1, 1)))
conv = np.zeros((1, C, H, W))
for ky in range(3):
    for kx in range(3):
        patch = xp[:, :, ky:ky + H, kx:kx + W]  # [1, C_IN, H, W]
        conv += np.einsum("nchw,oc->nohw", patch, w["conv.weight"][:, :, ky, kx])
conv += w["conv.bias"][None, :, None, None]

# inference batch norm on channel axis 1
bc = lambda v: v[None, :, None, None]
bn = (conv - bc(w["bn.mean"])) / np.sqrt(bc(w["bn.var"]) + 1e-5) * bc(w["bn.gamma"]) + bc(w["bn.beta"])
act = np.maximum(bn, 0.0)

# pixels to tokens: [1, C, H*W] -> [1, H*W, C]
tokens = act.reshape(1, C, H * W).transpose(0, 2, 1)

q = tokens @ w["attn.wq"]
k = tokens @ w["attn.wk"]
v = tokens @ w["attn.wv"]
scores = q @ k.transpose(0, 2, 1) * w["attn.scale"]
scores -= scores.max(axis=2, keepdims=True)
probs = np.exp(scores) / np.exp(scores).sum(axis=2, keepdims=True)
res = tokens + probs @ v

mean = res.mean(axis=2, keepdims=True)
var = ((res - mean) ** 2).mean(axis=2, keepdims=True)
out = (res - mean) / np.sqrt(var + 1e-5) * w["ln.gamma"] + w["ln.beta"]

write_safetensors(os.path.join(HERE, "conv_norm_attention.safetensors"), weights)
np.save(os.path.join(HERE, "conv_norm_attention_input.npy"), x)
np.save(os.path.join(HERE, "conv_norm_attention_expected.npy"), f32(out))
print("output", out.shape, "max |out|", float(np.abs(out).max()))
