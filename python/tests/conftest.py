"""Fixtures of the kiln Python tests: the repository, the `kiln` binary (to
export zoo models as ONNX and to compare with the CLI), scratch files."""

import os
import pathlib
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "frontends" / "tests" / "data" / "onnx"


def _kiln_bin():
    env = os.environ.get("KILN_BIN")
    if env:
        return env
    for profile in ("debug", "release"):
        p = ROOT / "target" / profile / "kiln"
        if p.exists():
            return str(p)
    return shutil.which("kiln")


@pytest.fixture(scope="session")
def kiln_cli():
    """Runs the `kiln` CLI (KILN_BIN, or target/debug/kiln); returns stdout."""
    exe = _kiln_bin()
    if exe is None:
        pytest.fail("no kiln binary: build it (cargo build) or set KILN_BIN")

    def run(*args):
        out = subprocess.run([exe, *map(str, args)], capture_output=True, text=True)
        if out.returncode != 0:
            raise RuntimeError(f"kiln {' '.join(map(str, args))}: {out.stderr}")
        return out.stdout

    return run


@pytest.fixture(scope="session")
def exported(kiln_cli, tmp_path_factory):
    """`exported(name)`: the zoo model written as ONNX by `kiln export`."""
    d = tmp_path_factory.mktemp("onnx")
    cache = {}

    def get(name):
        if name not in cache:
            path = d / f"{name}.onnx"
            kiln_cli("export", name, "-o", path)
            cache[name] = path
        return cache[name]

    return get
