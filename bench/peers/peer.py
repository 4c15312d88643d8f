"""Times one ONNX model in one peer runtime, in this fresh process.

usage: peer.py ort|openvino MODEL.onnx THREADS ITERS WARMUP INPUT.npy OUTPUT.npy

Prints one JSON object: {"runtime", "threads", "median_ms", "min_ms",
"precision"}, and writes the output of the run on INPUT.npy to OUTPUT.npy so
the harness can check that every runtime computes the same function.
"""

import json
import sys
import time

import numpy as np


def ort_session(path, threads):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    s = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    name = s.get_inputs()[0].name
    return (lambda x: s.run(None, {name: x})[0]), "fp32"


def openvino_session(path, threads):
    import openvino as ov

    core = ov.Core()
    # OpenVINO's default on CPUs with AMX/AVX-512-BF16 is bf16 inference:
    # force fp32 so that the comparison is like for like.
    compiled = core.compile_model(
        core.read_model(path),
        "CPU",
        {
            "INFERENCE_PRECISION_HINT": "f32",
            "INFERENCE_NUM_THREADS": threads,
            "PERFORMANCE_HINT": "LATENCY",
            "NUM_STREAMS": 1,
        },
    )
    p = compiled.get_property("INFERENCE_PRECISION_HINT")
    precision = p.to_string() if hasattr(p, "to_string") else str(p)
    req = compiled.create_infer_request()

    def run(x):
        req.infer({0: x})
        return req.get_output_tensor(0).data.copy()

    return run, precision


def main():
    runtime, path, threads, iters, warmup, inp, out = sys.argv[1:8]
    threads, iters, warmup = int(threads), int(iters), int(warmup)
    make = {"ort": ort_session, "openvino": openvino_session}[runtime]
    run, precision = make(path, threads)
    x = np.load(inp)
    np.save(out, run(x))
    for _ in range(warmup):
        run(x)
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        run(x)
        times.append((time.perf_counter() - t) * 1e3)
    print(
        json.dumps(
            {
                "runtime": runtime,
                "threads": threads,
                "median_ms": float(np.median(times)),
                "min_ms": float(min(times)),
                "precision": precision,
            }
        )
    )


if __name__ == "__main__":
    main()
