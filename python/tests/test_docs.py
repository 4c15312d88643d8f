"""docs/python.md's example, run as written; and the torch entry point."""

import os
import re

import numpy as np
import pytest

import kiln
from conftest import ROOT

try:
    import torch
except ImportError:  # torch is optional: these tests say so and skip
    torch = None

if torch is None and os.environ.get("KILN_SKIP_LOG"):
    # scripts/test's list of what could not run on this machine
    with open(os.environ["KILN_SKIP_LOG"], "a") as log:
        log.write("SKIPPED python/tests/test_docs.py (the torch path, docs/python.md's example): torch is not installed\n")

needs_torch = pytest.mark.skipif(
    torch is None,
    reason="torch is not installed: the PyTorch path of kiln.compile and docs/python.md's example are not tested",
)


def docs_example():
    text = (ROOT / "docs" / "python.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert blocks, "docs/python.md has no python example"
    return blocks[0]


def test_docs_example_is_ten_lines():
    lines = [l for l in docs_example().splitlines() if l.strip()]
    assert len(lines) <= 10, lines


@needs_torch
def test_docs_example_runs():
    exec(compile(docs_example(), "docs/python.md", "exec"), {})


@needs_torch
def test_torch_module_two_inputs_and_errors():
    class Add(torch.nn.Module):
        def forward(self, a, b):
            return torch.sigmoid(a) * b, a + b

    a, b = torch.randn(2, 8), torch.randn(2, 8)
    m = kiln.compile(Add(), example_inputs=(a, b))
    y0, y1 = m(a.numpy(), b.numpy())
    want0, want1 = Add()(a, b)
    np.testing.assert_allclose(y0, want0.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(y1, want1.numpy(), rtol=1e-6, atol=1e-6)
    with pytest.raises(kiln.KilnError, match="example_inputs"):
        kiln.compile(Add())


def test_torch_is_not_imported_for_other_models():
    import sys

    had = "torch" in sys.modules
    kiln.compile(ROOT / "frontends/tests/data/onnx/mobilevitv2_block.torchscript.onnx")
    assert had or "torch" not in sys.modules
