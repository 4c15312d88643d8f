"""Exports the garden's timm models to ONNX, twice each, with PyTorch's logits.

For every model: build it with pretrained=False under torch.manual_seed,
redraw its constant-valued parameters and batch-norm statistics from the
same seed (see `enliven`), reparameterise it where timm has an inference
form, put it in eval mode, and write into target/garden/models/MODEL/:

- input.npy   a seeded N(0, 1) batch-1 input at the model's default size
              (pretrained_cfg["input_size"]);
- ref.npy     PyTorch's output (logits) on it, computed in float64 from the
              same float32 weights, so the reference carries no float32
              rounding of its own;
- torchscript.onnx  torch.onnx.export(..., dynamo=False, opset_version=17);
- dynamo.onnx (+ dynamo.onnx.data)  torch.onnx.export(...) with the
              installed torch's defaults (the torch.export-based exporter);
- meta.json   versions, how each file was made, or the export's error.

Each model is exported in its own process (a crash or a runaway export
stays contained, memory is returned); models already exported are skipped
unless --force. target/garden/models/manifest.json gathers every meta.json.
"""

import argparse
import json
import os
import subprocess
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
MODELS_DIR = os.path.join(ROOT, "target", "garden", "models")
SPELLINGS = ("torchscript", "dynamo")
SEED = 0

# (timm name, family). The smallest variant of each family, and a second
# one where the family's variants differ in kind (conv vs hybrid, v1 vs v2,
# the two EfficientViT series, LeViT's linear and conv spellings).
MODELS = [
    ("mobilevit_xxs", "MobileViT v1"),
    ("mobilevitv2_050", "MobileViT v2"),
    ("edgenext_xx_small", "EdgeNeXt"),
    ("efficientformer_l1", "EfficientFormer v1"),
    ("efficientformerv2_s0", "EfficientFormer v2"),
    ("fastvit_t8", "FastViT"),
    ("fastvit_mci0", "FastViT (MobileCLIP)"),
    ("levit_128s", "LeViT"),
    ("levit_conv_128s", "LeViT (conv)"),
    ("tiny_vit_5m_224", "TinyViT"),
    ("repvit_m0_9", "RepViT"),
    ("mobileone_s0", "MobileOne"),
    ("efficientvit_b0", "EfficientViT (MIT)"),
    ("efficientvit_m0", "EfficientViT (MSRA)"),
    ("mobilenetv3_small_100", "MobileNetV3"),
    ("mobilenetv3_large_100", "MobileNetV3"),
    ("mobilenetv4_conv_small", "MobileNetV4 (conv)"),
    ("mobilenetv4_hybrid_medium", "MobileNetV4 (hybrid)"),
    ("ghostnet_100", "GhostNet"),
    ("ghostnetv2_100", "GhostNetV2"),
    ("efficientnet_b0", "EfficientNet"),
    ("tf_efficientnetv2_b0", "EfficientNetV2"),
    ("convnext_atto", "ConvNeXt"),
    ("deit_tiny_patch16_224", "DeiT"),
    ("resnet18", "ResNet"),
    ("shvit_s1", "SHViT"),
    ("starnet_s1", "StarNet"),
    ("regnetx_002", "RegNet"),
    ("inception_next_atto", "InceptionNeXt"),
    ("poolformerv2_s12", "PoolFormer v2"),
    ("rexnet_100", "ReXNet"),
    ("mixnet_s", "MixNet"),
    ("lcnet_050", "LCNet"),
    ("hgnetv2_b0", "HGNetV2"),
    ("pvt_v2_b0", "PVT v2"),
    ("xcit_nano_12_p16_224", "XCiT"),
    ("mambaout_femto", "MambaOut"),
    ("fasternet_t0", "FasterNet"),
    ("gcvit_xxtiny", "GCViT"),
    ("coat_lite_tiny", "CoaT-Lite"),
]
FAMILY = dict(MODELS)


def enliven(model, gen, calib):
    """Redraws what timm initialises to a constant, then calibrates batch norms.

    timm's init leaves norm scales at 1, biases at 0, layer scales at
    1e-6..1e-5 and zero-initialises the last norm of many residual
    branches: a whole branch then adds (almost) nothing to the logits, and
    a wrong kernel in it would pass a 1e-4 comparison. So every
    constant-valued parameter is redrawn from `gen` (zero: N(0, 0.02);
    below 0.1 in magnitude, the layer scales: U(0.2, 0.6); else
    c * U(0.5, 1.5)).

    Batch-norm running statistics are then set as training would leave
    them: the mean and variance of each BN's input on `calib` (two other
    seeded images, not the test input), so activations keep their scale
    through the network; with random statistics instead, multi-branch
    blocks (MobileOne) grow the logits to 1e16 and deep ReLU stacks
    (MobileNetV3) to cancellation that PyTorch's own float32 misses by
    1e-4. A BN that sees fewer than 16 values per channel in one image
    (the 1-D norm of a pooled head) keeps drawn statistics (mean N(0, 0.1),
    var U(0.5, 1.5)). Random weights are no worse than trained ones for
    timing and make every path of the graph count in the comparison.
    """
    import torch

    with torch.no_grad():
        for _, p in model.named_parameters():
            if p.numel() == 0 or not p.dtype.is_floating_point:
                continue
            flat = p.reshape(-1)
            if not bool((flat == flat[0]).all()):
                continue
            c = float(flat[0])
            if c == 0.0:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
            elif abs(c) < 0.1:
                p.copy_(0.2 + 0.4 * torch.rand(p.shape, generator=gen))
            else:
                p.copy_(c * (0.5 + torch.rand(p.shape, generator=gen)))
        bns = [m for m in model.modules()
               if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
               and m.running_mean is not None]
        drawn, seen, hooks = {}, {}, []
        for m in bns:
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.1)
            m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=gen))
            drawn[m] = (m.running_mean.clone(), m.running_var.clone())

            def count(mod, args):
                # shape[0] may be batch x tokens (LeViT's flattened BatchNorm1d)
                per_image = args[0].numel() // args[0].shape[1] // calib.shape[0]
                seen[mod] = min(seen.get(mod, 1 << 62), per_image)

            hooks.append(m.register_forward_pre_hook(count))
            m.reset_running_stats()
            m.momentum = None  # cumulative average: the statistics of `calib`
        model.eval()
        for m in bns:
            m.train()
        model(calib)
        for h in hooks:
            h.remove()
        for m in bns:
            m.momentum = 0.1
            if seen.get(m, 0) < 16:
                m.running_mean.copy_(drawn[m][0])
                m.running_var.copy_(drawn[m][1])
    model.eval()
    return len(bns), sum(seen.get(m, 0) < 16 for m in bns)


# Families trained with parallel branches that timm folds into one conv for
# inference (timm.utils.reparameterize_model): a user deploys that form.
# Other families' `fuse` (conv + BN, LeViT, SHViT, ...) is left to kiln.
REPARAM_PREFIXES = ("fastvit_", "mobileone_", "repvit_")


def reparameterizable(name):
    return name.startswith(REPARAM_PREFIXES)


def export_one(name, out_dir):
    """Exports one model (run in a child process); writes meta.json."""
    import numpy as np
    import onnx
    import timm
    import torch

    os.makedirs(out_dir, exist_ok=True)
    meta = {
        "model": name,
        "family": FAMILY.get(name, "?"),
        "versions": {"torch": torch.__version__, "timm": timm.__version__,
                     "onnx": onnx.__version__, "numpy": np.__version__},
        "seed": SEED,
        "init": "timm init, pretrained=False, torch.manual_seed(0); then constant "
                "parameters redrawn and BN statistics calibrated on a second seeded "
                "input (export.py: enliven)",
        "spellings": {},
    }
    t0 = time.time()
    torch.manual_seed(SEED)
    model = timm.create_model(name, pretrained=False)
    gen = torch.Generator().manual_seed(SEED)
    shape = [1] + list(model.pretrained_cfg["input_size"])
    # Two images: a BN over one value per channel cannot train on one.
    calib = torch.from_numpy(np.random.default_rng(SEED + 1)
                             .standard_normal([2] + shape[1:]).astype(np.float32))
    meta["batch_norms"], meta["batch_norms_drawn"] = enliven(model, gen, calib)
    meta["reparameterized"] = reparameterizable(name)
    if meta["reparameterized"]:
        from timm.utils import reparameterize_model

        model = reparameterize_model(model)
        model.eval()
    meta["input_shape"] = shape
    meta["params"] = sum(p.numel() for p in model.parameters())
    x = np.random.default_rng(SEED).standard_normal(shape).astype(np.float32)
    np.save(os.path.join(out_dir, "input.npy"), x)
    xt = torch.from_numpy(x)
    with torch.no_grad():
        ref32 = model(xt).numpy()
        try:
            ref = model.double()(xt.double()).float().numpy()
            meta["ref"] = "float64 (float32 weights and input, computed in float64)"
        except Exception as e:  # noqa: BLE001 - a model with float32-only parts
            ref = ref32
            meta["ref"] = f"float32 (float64 failed: {type(e).__name__}: {e})".splitlines()[0]
        model.float()
    np.save(os.path.join(out_dir, "ref.npy"), ref)
    meta["output_shape"] = list(ref.shape)
    meta["ref_max_abs"] = float(np.abs(ref).max())
    meta["ref_finite"] = bool(np.isfinite(ref).all())
    # PyTorch's own float32 error against the float64 reference: what a
    # float32 runtime can be expected to reach.
    meta["torch_f32_rel"] = float(np.abs(ref32 - ref).max() / max(np.abs(ref).max(), 1e-30))
    meta["prepare_s"] = round(time.time() - t0, 2)

    for spelling in SPELLINGS:
        path = os.path.join(out_dir, f"{spelling}.onnx")
        entry = {"file": os.path.relpath(path, ROOT)}
        t0 = time.time()
        try:
            with torch.no_grad():
                if spelling == "torchscript":
                    entry["how"] = "torch.onnx.export(model, (x,), f, dynamo=False, opset_version=17)"
                    torch.onnx.export(model, (xt,), path, dynamo=False, opset_version=17,
                                      input_names=["input"], output_names=["logits"])
                else:
                    entry["how"] = "torch.onnx.export(model, (x,), f) (installed torch's defaults: dynamo)"
                    torch.onnx.export(model, (xt,), path, input_names=["input"],
                                      output_names=["logits"])
            m = onnx.load(path, load_external_data=False)
            entry["opset"] = next(o.version for o in m.opset_import if o.domain in ("", "ai.onnx"))
            entry["nodes"] = len(m.graph.node)
            entry["op_types"] = sorted({n.op_type for n in m.graph.node})
            entry["ok"] = True
        except Exception as e:  # noqa: BLE001 - the error text is the result
            entry["ok"] = False
            entry["error"] = f"{type(e).__name__}: {e}".splitlines()[0][:500]
            entry["traceback"] = traceback.format_exc()[-2000:]
        entry["export_s"] = round(time.time() - t0, 2)
        meta["spellings"][spelling] = entry
    with open(os.path.join(out_dir, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1)


def done(out_dir):
    p = os.path.join(out_dir, "meta.json")
    if not os.path.exists(p):
        return False
    with open(p) as f:
        meta = json.load(f)
    return all(s in meta.get("spellings", {}) for s in SPELLINGS)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", help="comma-separated timm names (default: the garden's list)")
    ap.add_argument("--force", action="store_true", help="re-export models already exported")
    ap.add_argument("--timeout", type=int, default=900, help="seconds per model")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        export_one(a.one, os.path.join(MODELS_DIR, a.one))
        return
    models = a.models.split(",") if a.models else [m for m, _ in MODELS]
    os.makedirs(MODELS_DIR, exist_ok=True)
    for i, name in enumerate(models):
        out_dir = os.path.join(MODELS_DIR, name)
        if done(out_dir) and not a.force:
            continue
        print(f"export [{i + 1}/{len(models)}] {name}", file=sys.stderr, flush=True)
        t0 = time.time()
        log = os.path.join(MODELS_DIR, f"{name}.export.log")
        os.makedirs(out_dir, exist_ok=True)
        with open(log, "w") as f:
            try:
                r = subprocess.run([sys.executable, __file__, "--one", name], stdout=f,
                                   stderr=subprocess.STDOUT, timeout=a.timeout)
                failed = r.returncode != 0 and f"exit code {r.returncode}"
            except subprocess.TimeoutExpired:
                failed = f"timed out after {a.timeout} s"
        if failed:
            with open(log) as f:
                tail = f.read()[-1500:]
            last = ([ln for ln in tail.splitlines() if ln.strip()] or [""])[-1].strip()
            meta = {"model": name, "family": FAMILY.get(name, "?"), "error": failed, "log_tail": tail,
                    "spellings": {s: {"ok": False,
                                      "error": f"export process failed ({failed}): {last}"}
                                  for s in SPELLINGS}}
            with open(os.path.join(out_dir, "meta.json"), "w") as f:
                json.dump(meta, f, indent=1)
            print(f"  failed ({failed}); see {os.path.relpath(log, ROOT)}", file=sys.stderr)
        else:
            print(f"  {time.time() - t0:.0f} s", file=sys.stderr)
    manifest = {}
    for name in sorted(os.listdir(MODELS_DIR)):
        p = os.path.join(MODELS_DIR, name, "meta.json")
        if os.path.exists(p):
            with open(p) as f:
                manifest[name] = json.load(f)
    with open(os.path.join(MODELS_DIR, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)


if __name__ == "__main__":
    main()
