"""Type stubs of kiln's extension module (python/src/lib.rs). The public
names are re-exported by the ``kiln`` package; use them from there."""

from __future__ import annotations

import os
from typing import Any, Optional, Sequence, Union

import numpy as np
import numpy.typing as npt

ArrayLike = Union[np.ndarray, npt.ArrayLike]

class KilnError(Exception):
    """Base class of every error kiln raises; the message is the CLI's one line."""

class ModelImportError(KilnError):
    """A model or weights that cannot be read: a missing file, not ONNX, a
    bad .kir, an unknown zoo name, weights that do not match the graph."""

class UnsupportedOpError(KilnError):
    """An operator, element type or opset kiln cannot import or compile;
    the message names the op and the node."""

class ShapeError(KilnError):
    """Arrays that do not fit the model: wrong count, dtype or shape, or an
    output buffer that is not writable, C-contiguous and aligned."""

class CompileError(KilnError):
    """The optimiser or the code generator failed on a model that imported."""

class TensorInfo:
    """A graph input or output."""

    @property
    def name(self) -> str:
        """The value's name in the graph."""
    @property
    def shape(self) -> list[int]:
        """The static shape."""
    @property
    def dtype(self) -> str:
        """numpy's name of the element type: ``"float32"`` or ``"int64"``."""

class Model:
    """A compiled model: native code for this CPU (``kiln.compile``).

    Safe to call from several Python threads at once: the GIL is released
    while kernels run, and each call gets its own scratch memory.
    """

    def __call__(self, *arrays: ArrayLike) -> Union[np.ndarray, list[np.ndarray]]:
        """Runs the model on one array per input, in order. Returns the
        output array, or a list of them when the model has several."""
    def run(
        self,
        inputs: Union[ArrayLike, Sequence[ArrayLike], dict[str, ArrayLike]],
        outputs: Optional[Union[np.ndarray, Sequence[np.ndarray]]] = None,
    ) -> list[np.ndarray]:
        """Runs the model; returns the list of outputs.

        ``inputs``: one array per input (a sequence, or a dict by input
        name; a single array for a one-input model). An array with the
        declared dtype that is C-contiguous and aligned is read in place; a
        non-contiguous one is copied first; another dtype raises
        ``ShapeError`` (kiln does not convert silently). Objects that are
        not arrays go through ``numpy.asarray(obj, dtype=declared)``.

        ``outputs``: arrays to write into (declared dtype and shape,
        writable, C-contiguous), returned as given; by default new arrays.
        Raises ``ShapeError`` for arrays that do not fit, ``KilnError``
        when the model is closed.
        """
    @property
    def inputs(self) -> list[TensorInfo]:
        """The graph inputs, in order."""
    @property
    def outputs(self) -> list[TensorInfo]:
        """The graph outputs, in order."""
    @property
    def threads(self) -> int:
        """Threads a call uses."""
    @property
    def kir(self) -> str:
        """The compiled graph (optimised unless ``optimize=False``) as ``.kir`` text."""
    def explain(self) -> Optional[dict[str, Any]]:
        """The optimiser's report (``kiln opt --explain --json``): fusions
        found, op counts before and after, timings; ``None`` when compiled
        with ``optimize=False``."""
    def profile(
        self, iters: int = 10, inputs: Optional[Sequence[ArrayLike]] = None
    ) -> list[dict[str, Any]]:
        """The ``kiln bench --profile`` table over ``iters`` runs: one dict
        per node of the compiled graph, slowest first, with ``node``,
        ``kernels``, ``ms`` (each kernel's median, summed), ``share``,
        ``gflops`` or ``gbps``, ``macs``, ``bytes`` and ``parallel``.
        Inputs default to kiln's seeded random ones."""
    def close(self) -> None:
        """Frees the compiled code; later calls raise ``KilnError``. Calls
        in progress on other threads finish first."""
    @property
    def closed(self) -> bool:
        """Whether ``close`` was called."""
    def __enter__(self) -> Model: ...
    def __exit__(self, *args: object) -> bool: ...
    def _time_rust_run(self, iters: int, warmup: int = 10) -> list[float]:
        """Seconds per call of the Rust ``CompiledModel::run`` on the seeded
        inputs (the baseline of python/bench/overhead.py)."""

def compile(
    model: Union[str, bytes],
    *,
    input_shapes: Optional[list[tuple[str, list[int]]]] = None,
    threads: Optional[int] = None,
    tiles: Optional[str] = None,
    optimize: bool = True,
    weights: Optional[str] = None,
) -> Model:
    """The extension's compile: a path or zoo name, or ONNX bytes
    (``kiln.compile`` also takes protos and torch modules)."""

def compile_aot(
    model: Union[str, bytes],
    *,
    target: str = "x86_64-unknown-linux-gnu",
    cpu: Optional[str] = None,
    out_dir: str = ".",
    name: Optional[str] = None,
    optimize: bool = True,
    weights: Optional[str] = None,
    input_shapes: Optional[list[tuple[str, list[int]]]] = None,
    threads: Optional[int] = None,
) -> dict[str, Any]:
    """The extension's ahead-of-time compile (see ``kiln.compile_aot``)."""

def zoo() -> list[dict[str, Any]]:
    """The model zoo as ``kiln list`` shows it: ``name``, ``family`` and
    ``resolution`` (square inputs) per model."""

def load_weights(path: Union[str, os.PathLike[str]]) -> dict[str, np.ndarray]:
    """A safetensors file as a dict of numpy arrays (float32 or int64)."""

def _last_input_addresses() -> list[int]:
    """The addresses of the input memory the last call on this thread read
    (an array's own ``ctypes.data`` when read in place, a copy's otherwise)."""
