"""Side-by-side: kiln vs ONNX Runtime vs OpenVINO (fp32) on zoo models.

Each zoo model is exported with `kiln export` (same seeded weights as
`kiln bench MODEL`), then every runtime is timed in a fresh process per
measurement, interleaved (round by round, runtimes in rotating order) so
that machine noise hits all of them alike. Each process reports the median
of its timed runs; the table gives the median over rounds and kiln's ratio
to the best peer (< 1: kiln faster). Every runtime's output on one shared
input is compared with kiln's, so the table never compares different
functions.

Run through bench/peers/run, which sets up the Python packages.
"""

import argparse
import json
import os
import statistics
import sys

import numpy as np

from runners import KILN, ROOT, kiln_bench, peer, rel_diff, rotation, sh

OUT = os.path.join(ROOT, "target", "peers")

# The models the performance issue sets targets on.
DEFAULT_MODELS = [
    "mobile_former_26m",
    "mobile_former_151m",
    "mobile_former_294m",
    "mobile_former_508m",
    "mobilevitv2_050",
    "mobilevitv2_075",
    "mobilevitv2_100",
]


def prepare(model):
    """Exports the model, writes a seeded input and kiln's output on it."""
    onnx = os.path.join(OUT, f"{model}.onnx")
    x_path = os.path.join(OUT, f"{model}.input.npy")
    y_path = os.path.join(OUT, f"{model}.kiln.npy")
    if not os.path.exists(onnx):
        sh([KILN, "export", model, "-o", onnx])
    info = json.loads(sh([KILN, "info", model, "--json"]))
    shape = info["inputs"][0]["shape"]
    x = np.random.default_rng(0).uniform(-1, 1, size=shape).astype(np.float32)
    np.save(x_path, x)
    sh([KILN, "run", model, "--input", x_path, "--output", y_path])
    return onnx, x_path, np.load(y_path)


def time_kiln(model, threads, iters, warmup):
    try:
        return kiln_bench(model, threads, iters, warmup)
    except Exception as e:  # noqa: BLE001 - the harness stops with the process's error
        sys.exit(str(e))


def time_peer(runtime, onnx, x_path, threads, iters, warmup, model):
    y_path = os.path.join(OUT, f"{model}.{runtime}.npy")
    try:
        j = peer(runtime, onnx, x_path, y_path, threads, iters, warmup)
    except Exception as e:  # noqa: BLE001 - as above
        sys.exit(str(e))
    return j, np.load(y_path)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default=",".join(DEFAULT_MODELS),
                    help="comma-separated zoo names (default: the seven target models)")
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--iters", type=int, default=30, help="timed runs per process")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--runtimes", default="ort,openvino", help="peers to run")
    ap.add_argument("--json", help="also write every measurement here")
    a = ap.parse_args()
    os.makedirs(OUT, exist_ok=True)
    models = a.models.split(",")
    threads = [int(t) for t in a.threads.split(",")]
    peers = a.runtimes.split(",")
    runtimes = ["kiln"] + peers

    times = {}  # (model, threads, runtime) -> [median per round]
    extra = {}  # (model, threads) -> kiln's compile_ms / gflops
    agree = {}  # (model, runtime) -> max relative difference to kiln
    precision = {}
    prepared = {m: prepare(m) for m in models}
    for r in range(a.rounds):
        for m in models:
            onnx, x_path, y_kiln = prepared[m]
            for t in threads:
                for rt in rotation(runtimes, r, threads.index(t)):
                    if rt == "kiln":
                        j = time_kiln(m, t, a.iters, a.warmup)
                        extra[(m, t)] = (j["compile_ms"], j["gflops"])
                    else:
                        j, y = time_peer(rt, onnx, x_path, t, a.iters, a.warmup, m)
                        agree[(m, rt)] = rel_diff(y, y_kiln)
                        precision[rt] = j["precision"]
                    times.setdefault((m, t, rt), []).append(j["median_ms"])
                    print(f"round {r + 1}/{a.rounds} {m} threads={t} {rt}: "
                          f"{j['median_ms']:.3f} ms", file=sys.stderr)

    med = {k: statistics.median(v) for k, v in times.items()}
    head = f"{'model':<20} {'thr':>3} " + " ".join(f"{rt:>9}" for rt in runtimes)
    head += f" {'best peer':>10} {'kiln/best':>9} {'GFLOP/s':>8} {'compile':>8}"
    print(f"median ms over {a.rounds} rounds x {a.iters} runs, batch 1, fp32 "
          f"(peer precision: {precision})")
    print(head)
    print("-" * len(head))
    for m in models:
        for t in threads:
            row = f"{m:<20} {t:>3} " + " ".join(f"{med[(m, t, rt)]:>9.3f}" for rt in runtimes)
            best = min(peers, key=lambda p: med[(m, t, p)]) if peers else None
            if best:
                ratio = med[(m, t, "kiln")] / med[(m, t, best)]
                row += f" {best:>10} {ratio:>9.2f}"
            comp, gf = extra[(m, t)]
            row += f" {gf:>8.1f} {comp:>6.0f}ms"
            print(row)
    print("\noutputs vs kiln (max |diff| / max |kiln|): " + ", ".join(
        f"{m}/{rt} {d:.1e}" for (m, rt), d in sorted(agree.items())))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"rounds": a.rounds, "iters": a.iters,
                       "medians": {f"{m}/{t}/{rt}": v for (m, t, rt), v in times.items()},
                       "agree": {f"{m}/{rt}": d for (m, rt), d in agree.items()}}, f, indent=1)


if __name__ == "__main__":
    main()
