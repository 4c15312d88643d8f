"""Measurement helpers shared by bench/peers/harness.py and bench/garden/garden.py.

One measurement is one fresh process: `kiln bench ... --json` for kiln, or
peer.py for ONNX Runtime / OpenVINO (run by this Python, so in the venv the
harness runs in). `rotation` orders the runtimes of one round so that a
slow phase of a noisy machine hits every runtime alike over the rounds.
"""

import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
KILN = os.path.join(ROOT, "target", "release", "kiln")
PEER = os.path.join(HERE, "peer.py")


class Failed(Exception):
    """A measured process failed; the message is its last stderr line (the error)."""

    def __init__(self, args, returncode, stderr):
        lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
        errors = [ln for ln in lines if ln.startswith("error:")]
        self.message = (errors or lines or [f"exit code {returncode}"])[-1].strip()
        self.stderr = stderr
        super().__init__(f"failed: {' '.join(args)}\n{stderr}")


def run(args, timeout=None):
    """Runs a process; returns its stdout, raises Failed (or TimeoutExpired)."""
    r = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise Failed(args, r.returncode, r.stderr)
    return r.stdout


def sh(args):
    """`run`, exiting the harness with the process's stderr on failure."""
    try:
        return run(args)
    except Failed as e:
        sys.exit(str(e))


def kiln_bench(model, threads, iters, warmup, extra=(), timeout=None):
    """`kiln bench MODEL --json` in a fresh process: its JSON report."""
    return json.loads(run(
        [KILN, "bench", model, "--threads", str(threads), "--iters", str(iters),
         "--warmup", str(warmup), "--json", *extra], timeout=timeout))


def peer(runtime, onnx, x_path, y_path, threads, iters, warmup, timeout=None):
    """peer.py in a fresh process: its JSON report; its output is in y_path."""
    return json.loads(run(
        [sys.executable, PEER, runtime, onnx, str(threads), str(iters), str(warmup),
         x_path, y_path], timeout=timeout))


def rotation(runtimes, round_index, slot):
    """The runtimes in the order of this round and slot (a rotation)."""
    k = (round_index + slot) % len(runtimes)
    return runtimes[k:] + runtimes[:k]


def rel_diff(a, b):
    """max |a - b| / max |b| (b the reference)."""
    import numpy as np

    a, b = a.reshape(-1).astype(np.float64), b.reshape(-1).astype(np.float64)
    if a.shape != b.shape:
        return float("inf")
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))
