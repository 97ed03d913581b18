"""The executor's Box-Muller normals against the normal law: moments, CDF (Kolmogorov-Smirnov against math.erfc),
independence of the two halves of each pair, scale, shapes, seeding."""
import math

import numpy as np
import pytest

from memse_compiler.sampling import standard_normal

N = 2_000_001          # odd: the last pair is half used


@pytest.fixture(scope="module")
def z() -> np.ndarray:
    return standard_normal(np.random.default_rng(7), np.empty(N, np.float32)).astype(np.float64)


def test_moments_within_sampling_error(z):
    n = z.size
    assert abs(z.mean()) < 4 / math.sqrt(n)
    assert abs(z.var() - 1) < 4 * math.sqrt(2 / n)
    assert abs(np.mean(z ** 4) - 3) < 4 * math.sqrt(96 / n)       # Var[z^4] = 105 - 9
    assert abs(np.mean(z ** 3)) < 4 * math.sqrt(15 / n)
    assert np.abs(z).max() <= math.sqrt(48 * math.log(2)) + 1e-5   # the float32-uniform bound


def test_cdf_kolmogorov_smirnov(z):
    s = np.sort(z[::4])                    # 500k points keep the exact CDF evaluation cheap
    cdf = np.array([0.5 * math.erfc(-v / math.sqrt(2)) for v in s[::50]])
    k = np.arange(0, s.size, 50)
    d = max(np.max(np.abs(cdf - (k + 1) / s.size)), np.max(np.abs(cdf - k / s.size)))
    assert d < 1.63 / math.sqrt(s.size)    # 99% KS bound (on a subset of the order statistics: conservative)


def test_pair_halves_independent(z):
    half = (z.size + 1) // 2
    a, b = z[:half - 1], z[half:]          # out[i] and out[half + i] share a radius and an angle
    tol = 4 / math.sqrt(a.size)
    assert abs(np.corrcoef(a, b)[0, 1]) < tol
    assert abs(np.corrcoef(a * a, b * b)[0, 1]) < tol     # cos^2/sin^2 with one radius: chi2_1 each, independent


def test_scale_shape_and_seed():
    out = np.empty((3, 5, 7), np.float32)
    a = standard_normal(np.random.default_rng(1), out, scale=3.0).copy()
    b = standard_normal(np.random.default_rng(1), np.empty((3, 5, 7), np.float32), scale=3.0)
    np.testing.assert_array_equal(a, b)
    big = standard_normal(np.random.default_rng(2), np.empty(400_000, np.float32), scale=3.0)
    assert abs(big.std() / 3 - 1) < 4 * math.sqrt(0.5 / big.size)
    scales = np.array([0.5, 2.0, 7.0], np.float32)            # per element: broadcast over the last axis
    cols = standard_normal(np.random.default_rng(4), np.empty((200_000, 3), np.float32), scales)
    np.testing.assert_allclose(cols.std(axis=0) / scales, 1.0, atol=4 * np.sqrt(0.5 / 200_000))
    assert standard_normal(np.random.default_rng(3), np.empty(1, np.float32)).shape == (1,)
    assert standard_normal(np.random.default_rng(3), np.empty(0, np.float32)).shape == (0,)


@pytest.mark.parametrize("bad", [np.empty(4), np.empty((4, 4), np.float32)[:, ::2]])
def test_rejects_wrong_buffers(bad):
    with pytest.raises(ValueError):
        standard_normal(np.random.default_rng(0), bad)
