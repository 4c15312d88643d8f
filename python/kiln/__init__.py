"""kiln: compile hybrid CNN-transformer vision models to native code and run
them on numpy arrays.

>>> import kiln, numpy as np
>>> m = kiln.compile("mobile_former_26m")          # or a .onnx/.kir path, ONNX bytes,
>>> y = m(np.zeros((1, 3, 224, 224), np.float32))  # an onnx.ModelProto, a torch module
>>> y.shape
(1, 1000)

``compile`` loads, optimises and JIT-compiles a model once; a ``Model`` is
then called like a function on numpy arrays (read in place when float32 and
C-contiguous), from any number of threads. docs/python.md is the guide.
"""

from __future__ import annotations

import io
import os
from typing import Any, Optional, Sequence

from . import _kiln
from ._kiln import (
    CompileError,
    KilnError,
    Model,
    ModelImportError,
    ShapeError,
    TensorInfo,
    UnsupportedOpError,
    load_weights,
    zoo,
)

__all__ = [
    "compile",
    "compile_aot",
    "zoo",
    "load_weights",
    "Model",
    "TensorInfo",
    "KilnError",
    "ModelImportError",
    "UnsupportedOpError",
    "ShapeError",
    "CompileError",
]


def _is_torch_module(obj: Any) -> bool:
    # Checked by name first, so that torch is imported only for torch objects.
    for cls in type(obj).__mro__:
        if cls.__module__.startswith("torch.nn") and cls.__name__ == "Module":
            return True
    return False


def _torch_version(torch: Any) -> tuple:
    parts = []
    for p in torch.__version__.split("+")[0].split(".")[:2]:
        digits = "".join(c for c in p if c.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def _torch_to_onnx(module: Any, example_inputs: Any) -> bytes:
    """Exports a torch.nn.Module in memory with torch's default exporter."""
    import torch  # optional dependency: only needed here

    if example_inputs is None:
        raise KilnError(
            "compiling a torch.nn.Module needs example_inputs= (a tensor or a tuple of tensors)"
        )
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    example_inputs = tuple(example_inputs)
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            if _torch_version(torch) >= (2, 9):
                # The default exporter (dynamo) returns an ONNXProgram when
                # given no file; its writer takes paths, not buffers.
                data = torch.onnx.export(module, example_inputs).model_proto.SerializeToString()
            else:
                # The default exporter (TorchScript) writes to a buffer.
                buf = io.BytesIO()
                torch.onnx.export(module, example_inputs, buf)
                data = buf.getvalue()
    finally:
        module.train(was_training)
    if not data:
        raise KilnError("torch.onnx.export produced no ONNX model")
    return data


def _source(model: Any, example_inputs: Any) -> Any:
    """What the extension takes: a path or zoo name (str), or ONNX bytes."""
    if isinstance(model, (str, os.PathLike)):
        return os.fspath(model)
    if isinstance(model, (bytes, bytearray, memoryview)):
        return bytes(model)
    if type(model).__name__ == "ModelProto" and hasattr(model, "SerializeToString"):
        return model.SerializeToString()
    if _is_torch_module(model):
        return _torch_to_onnx(model, example_inputs)
    return model  # the extension names the type it cannot take


def compile(
    model: Any,
    *,
    input_shapes: Optional[dict] = None,
    threads: Optional[int] = None,
    tiles: Optional[str] = None,
    optimize: bool = True,
    weights: Optional[str | os.PathLike] = None,
    example_inputs: Any = None,
) -> Model:
    """Loads, optimises and compiles ``model`` for this CPU.

    ``model`` is a path to an ``.onnx`` or ``.kir`` file, a zoo name
    (``kiln.zoo()``), serialised ONNX bytes, an ``onnx.ModelProto``, or a
    ``torch.nn.Module`` together with ``example_inputs=`` (exported in
    memory with ``torch.onnx.export``; torch is imported only then).

    ``input_shapes`` maps ONNX input names to concrete shapes for symbolic
    dims (``{"x": (1, 3, 224, 224)}``); ``threads`` defaults to every core;
    ``tiles`` caps the GEMM tile level (``"avx512"``, ``"avx2"``,
    ``"f32x4"``); ``optimize=False`` skips the optimiser; ``weights`` is a
    safetensors file that supplies every weight.

    Raises ``ModelImportError`` (unreadable model or weights),
    ``UnsupportedOpError`` (the message names the op and node) or
    ``CompileError``, all subclasses of ``KilnError``.
    """
    shapes = None
    if input_shapes is not None:
        shapes = [(str(k), [int(d) for d in v]) for k, v in dict(input_shapes).items()]
    return _kiln.compile(
        _source(model, example_inputs),
        input_shapes=shapes,
        threads=threads,
        tiles=tiles,
        optimize=optimize,
        weights=None if weights is None else os.fspath(weights),
    )


def compile_aot(
    model: Any,
    *,
    target: str = "x86_64-unknown-linux-gnu",
    cpu: Optional[str] = None,
    out_dir: str | os.PathLike = ".",
    name: Optional[str] = None,
    optimize: bool = True,
    weights: Optional[str | os.PathLike] = None,
    input_shapes: Optional[dict] = None,
    example_inputs: Any = None,
    threads: Optional[int] = None,
) -> dict:
    """Compiles ``model`` ahead of time into ``out_dir/<name>.o`` and
    ``out_dir/<name>.h`` (``kiln compile``; docs/aot.md).

    ``target`` is a triple and ``cpu`` a level of it (``kiln compile
    --list-targets``; default: the target's most portable level); ``name``
    is the symbol prefix (default: the graph name). Returns a dict with the
    ``object`` and ``header`` paths, the ``entry`` symbol, ``target``,
    ``cpu``, ``scratch_bytes``, ``const_bytes``, the ``undefined``
    symbols the object needs, and ``threads`` (what the kernels are
    partitioned for: ``threads``, default 4, the most
    ``kiln_<name>_run_parallel`` can use) with ``parallel_kernels`` of
    ``kernels`` split by it.
    """
    shapes = None
    if input_shapes is not None:
        shapes = [(str(k), [int(d) for d in v]) for k, v in dict(input_shapes).items()]
    return _kiln.compile_aot(
        _source(model, example_inputs),
        target=target,
        cpu=cpu,
        out_dir=os.fspath(out_dir),
        name=name,
        optimize=optimize,
        weights=None if weights is None else os.fspath(weights),
        input_shapes=shapes,
        threads=threads,
    )
