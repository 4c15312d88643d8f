"""What Model.__call__ adds to the Rust CompiledModel::run, on one
1x3x224x224 float32 input (docs/perf/python.md).

The model is a global average pool (3 outputs), so that the kernel time is
small next to what is measured and the difference is the binding's: argument
checks, the numpy borrow, the output array, releasing and retaking the GIL.
Both loops run in this process on the same compiled model, interleaved in
rounds; each reports the median of its calls.

    python python/bench/overhead.py [--iters N] [--rounds R]
"""

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

import kiln

KIR = """graph overhead {
  input %x : f32[1,3,224,224]
  %y = reduce_mean(%x) {axes=[2,3], keepdims=false} : f32[1,3]
  output %y
}
"""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--iters", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "overhead.kir"
        path.write_text(KIR)
        m = kiln.compile(path, threads=args.threads)
    x = np.random.default_rng(0).uniform(-1, 1, (1, 3, 224, 224)).astype(np.float32)
    out = np.empty((1, 3), np.float32)
    rust, call, run_into = [], [], []
    for _ in range(10):
        m(x)
    for _ in range(args.rounds):
        rust += m._time_rust_run(args.iters)
        for _ in range(args.iters):
            t = time.perf_counter_ns()
            m(x)
            call.append((time.perf_counter_ns() - t) * 1e-9)
        for _ in range(args.iters):
            t = time.perf_counter_ns()
            m.run([x], outputs=[out])
            run_into.append((time.perf_counter_ns() - t) * 1e-9)
    r, c, o = (statistics.median(v) * 1e6 for v in (rust, call, run_into))
    print(f"model: 1x3x224x224 -> global average pool, {args.threads} thread(s); "
          f"{args.rounds} rounds x {args.iters} calls each")
    print(f"Rust CompiledModel::run          median {r:8.2f} us")
    print(f"Model.__call__(x)                median {c:8.2f} us  (+{c - r:.2f} us)")
    print(f"Model.run([x], outputs=[out])    median {o:8.2f} us  (+{o - r:.2f} us)")


if __name__ == "__main__":
    main()
