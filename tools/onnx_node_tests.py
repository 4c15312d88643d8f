#!/usr/bin/env python3
"""Writes the ONNX backend node tests into a directory, for kiln's runner.

The `onnx` wheel no longer ships `backend/test/data/node`, but it carries
the generators: `onnx.backend.test.case.node.collect_testcases` yields each
test's model, inputs and expected outputs. This writes them in the standard
layout the runner (`frontends/tests/onnx_node.rs`) reads:

    OUT/test_x/model.onnx
    OUT/test_x/test_data_set_0/input_0.pb ... output_0.pb ...
    OUT/test_x/tolerance.txt            "rtol atol" of the onnx test

Many generators declare the newest opset (22+), or an old one (< 11),
though their operators are unchanged since; kiln imports opsets 11-21. Each
such model is converted with onnx's own version converter (whose adapters
preserve meaning) to opset 21 (or 11) and kept only if the result passes
the checker; otherwise it is written unchanged and the runner reports the
opset as unsupported.

Usage: onnx_node_tests.py OUT_DIR
"""

import os
import sys
import warnings

import numpy as np
import onnx
from onnx import numpy_helper, version_converter
from onnx.backend.test.case.node import collect_testcases

LO, HI = 11, 21


def default_opset(model):
    for o in model.opset_import:
        if o.domain in ("", "ai.onnx"):
            return o.version
    return None


def convert(model):
    """The model at an opset kiln imports, or the model itself."""
    v = default_opset(model)
    if v is None or LO <= v <= HI:
        return model, "as is"
    target = HI if v > HI else LO
    try:
        converted = version_converter.convert_version(model, target)
        onnx.checker.check_model(converted)
        return converted, f"converted {v} -> {target}"
    except Exception as e:  # the converter has no adapter for this step
        return model, f"kept at {v} ({str(e).splitlines()[0][:80]})"


def write_value(path, value, name):
    try:
        proto = to_proto(value, name)
    except Exception:  # e.g. an object array; such tests use ops kiln lacks
        return
    with open(path, "wb") as f:
        f.write(proto.SerializeToString())


def to_proto(value, name):
    if isinstance(value, np.ndarray) or np.isscalar(value):
        proto = numpy_helper.from_array(np.asarray(value), name=name)
    elif isinstance(value, list):
        proto = numpy_helper.from_list(value, name=name)
    elif value is None or isinstance(value, dict):
        proto = numpy_helper.from_optional(value, name=name)
    else:
        proto = numpy_helper.from_array(np.asarray(value), name=name)
    return proto


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    warnings.simplefilter("ignore")
    counts = {}
    cases = collect_testcases(None)
    for case in cases:
        d = os.path.join(out, case.name)
        os.makedirs(d, exist_ok=True)
        model, how = convert(case.model)
        key = how.split(" ")[0]
        counts[key] = counts.get(key, 0) + 1
        onnx.save(model, os.path.join(d, "model.onnx"))
        with open(os.path.join(d, "tolerance.txt"), "w") as f:
            f.write(f"{case.rtol} {case.atol}\n")
        ins = [i.name for i in model.graph.input]
        outs = [o.name for o in model.graph.output]
        for k, (inputs, outputs) in enumerate(case.data_sets or []):
            ds = os.path.join(d, f"test_data_set_{k}")
            os.makedirs(ds, exist_ok=True)
            for j, v in enumerate(inputs):
                name = ins[j] if j < len(ins) else f"input_{j}"
                write_value(os.path.join(ds, f"input_{j}.pb"), v, name)
            for j, v in enumerate(outputs):
                name = outs[j] if j < len(outs) else f"output_{j}"
                write_value(os.path.join(ds, f"output_{j}.pb"), v, name)
    print(f"wrote {len(cases)} node tests to {out}: {counts}")


if __name__ == "__main__":
    main()
