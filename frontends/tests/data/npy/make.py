"""Writes the .npy fixtures for frontends/tests/io_npy.rs with numpy itself,
so the reader is tested against the reference writer, not against our own
encoder. Run from this directory: python3 make.py (needs numpy only)."""
import numpy as np
from numpy.lib import format as npf

# f32 values: arange(24) * 0.5 - 3, shape (2, 3, 4) -- the test rebuilds them.
a = (np.arange(24, dtype=np.float32) * np.float32(0.5) - np.float32(3)).reshape(2, 3, 4)
np.save("f32_v1.npy", a)
for version in [(2, 0), (3, 0)]:
    with open(f"f32_v{version[0]}.npy", "wb") as f:
        npf.write_array(f, a, version=version)

np.save("i64.npy", np.array([[-1, 2**40, 7], [0, -(2**62), 5]], dtype="<i8"))
np.save("scalar.npy", np.array(3.25, dtype="<f4"))
np.save("empty.npy", np.zeros((0, 3), dtype="<f4"))
np.save("vector.npy", np.array([1.5, -2.0, 1e-30], dtype="<f4"))

# rejected files
np.save("f64.npy", a.astype(np.float64))
np.save("i32.npy", np.arange(6, dtype="<i4"))
np.save("bool.npy", np.array([True, False]))
np.save("f16.npy", a.astype(np.float16))
np.save("big_endian.npy", a.astype(">f4"))
np.save("fortran.npy", np.asfortranarray(a))
np.save("structured.npy", np.zeros(2, dtype=[("x", "<f4"), ("y", "<i8")]))
