"""Fast float32 standard normals for the Monte-Carlo executor.

numpy's ziggurat (`Generator.standard_normal`) costs ~7.5 ns per float32 number on the 2-core reference VM; a
chip of the residual digits CNN needs ~0.3 M read-noise numbers, so drawing them cost more than running the
chip. The Box-Muller transform vectorises into five numpy passes over float32 arrays (uniforms, log, sqrt,
cos, sin) and costs ~2 ns per number there (`benchmarks/speed_executor.py --normals` measures both).

Exactness: Box-Muller maps two independent U(0,1) to two independent N(0,1) exactly. Here the uniforms are
numpy's float32 ones, u = k 2^-24, so the radius sqrt(-2 ln(1 - u)) takes 2^24 values (it is exact in float32
since 1 - u is) and |z| <= sqrt(48 ln 2) = 5.77: the tail beyond carries probability 8e-9 and 3e-7 of the
variance, far below any Monte-Carlo interval. The angle has 2^24 values on [0, 2 pi).
"""
from __future__ import annotations

import numpy as np

TWO_PI = np.float32(2.0 * np.pi)


def standard_normal(rng: np.random.Generator, out: np.ndarray, scale: float | np.ndarray = 1.0) -> np.ndarray:
    """Fill the C-contiguous float32 array `out` with independent N(0, scale^2) numbers from `rng`; returns
    `out`. A scalar scale is folded into the radius (free); an array one (broadcasting to `out`) multiplies."""
    if out.dtype != np.float32 or not out.flags.c_contiguous:
        raise ValueError("standard_normal needs a C-contiguous float32 array")
    flat = out.reshape(-1)
    n = flat.size
    half = (n + 1) // 2
    u = rng.random(2 * half, dtype=np.float32)
    radius, angle = u[:half], u[half:]
    np.subtract(np.float32(1.0), radius, out=radius)        # (0, 1]: log is finite
    np.log(radius, out=radius)
    per_element = np.ndim(scale) > 0
    radius *= np.float32(-2.0 if per_element else -2.0 * scale * scale)
    np.sqrt(radius, out=radius)
    angle *= TWO_PI
    head, tail = flat[:half], flat[half:]
    np.cos(angle, out=head)
    head *= radius
    np.sin(angle[:n - half], out=tail)
    tail *= radius[:n - half]
    if per_element:
        np.multiply(out, scale, out=out)
    return out
