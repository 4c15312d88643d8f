#!/usr/bin/env python3
"""Fits the rational erf of the assembled GEMM tiles' GELU epilogue.

    erf(z) ~ z * P(z^2) / Q(z^2),  Q(0) = 1,  z in [0, ZMAX]

minimax in the absolute error, by Lawson-reweighted linearised least squares
(Sanathanan-Koerner iteration) on a Chebyshev-plus-uniform grid against
mpmath's erf. Then evaluates the f32 coefficients the way the tiles do (f32
Horner, z = x/sqrt2 clamped to +-ZMAX, gelu = x/2 + x/2 * erf) and prints the
errors that `backends/src/ukernels/tile.rs` quotes beside `GELU_P`/`GELU_Q`.

    pip install numpy mpmath
    python3 tools/fit_gelu_erf.py 5 5 3.92    # degrees of P and Q in z^2, ZMAX
"""
import math
import sys

import mpmath
import numpy as np

mpmath.mp.dps = 30


def main():
    n_p, n_q, zmax = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
    z = np.cos(np.linspace(0, math.pi, 4000)) * zmax / 2 + zmax / 2
    z = np.sort(np.concatenate([z, np.linspace(0, zmax, 4000)]))
    f = np.array([float(mpmath.erf(mpmath.mpf(v))) for v in z])
    u = z * z
    w = np.ones_like(z)
    q_val = np.ones_like(z)
    for _ in range(60):
        # unknowns p0..p_np, q1..q_nq: z*P(u) - f*(Q(u) - 1) = f, scaled by
        # sqrt(w)/Q(u) of the previous iterate
        cols = [z * u**k for k in range(n_p + 1)] + [-f * u**k for k in range(1, n_q + 1)]
        scale = np.sqrt(w) / q_val
        sol, *_ = np.linalg.lstsq(np.stack(cols, 1) * scale[:, None], f * scale, rcond=None)
        p = sol[: n_p + 1]
        q = np.concatenate([[1.0], sol[n_p + 1 :]])
        q_val = np.polyval(q[::-1], u)
        err = z * np.polyval(p[::-1], u) / q_val - f
        w = w * np.abs(err) + 1e-30
        w /= w.sum()
    print("max |erf error|, exact arithmetic:", np.abs(err).max())

    p32, q32 = p.astype(np.float32), q.astype(np.float32)
    xs = np.linspace(-8, 8, 8001).astype(np.float32)
    zz = np.clip(xs * np.float32(1 / math.sqrt(2)), -zmax, zmax).astype(np.float32)
    uu = (zz * zz).astype(np.float32)

    def horner(c, v):
        acc = np.full_like(v, c[-1])
        for cc in c[-2::-1]:
            acc = (acc * v + cc).astype(np.float32)
        return acc

    e = ((zz * horner(p32, uu)).astype(np.float32) / horner(q32, uu)).astype(np.float32)
    h = (xs * np.float32(0.5)).astype(np.float32)
    g = (h * e + h).astype(np.float32)
    sqrt2 = mpmath.sqrt(2)
    erf_ref = np.array([float(mpmath.erf(mpmath.mpf(float(v)))) for v in zz])
    gelu_ref = np.array(
        [float(0.5 * mpmath.mpf(float(v)) * (1 + mpmath.erf(mpmath.mpf(float(v)) / sqrt2))) for v in xs]
    )
    print("max |erf error|, f32 as the tiles evaluate it:", np.abs(e - erf_ref).max())
    print("max |gelu error| / max(|x|, 1):", (np.abs(g - gelu_ref) / np.maximum(np.abs(xs), 1)).max())
    print("P =", [float(c) for c in p32])
    print("Q =", [float(c) for c in q32])


if __name__ == "__main__":
    main()
