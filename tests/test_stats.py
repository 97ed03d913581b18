"""Gaussian moment formulas against independent numeric integration (fine trapezoid grid) and math.erfc."""
import math
import os
import time

import numpy as np
import pytest

from memse_compiler.ir import stats

CASES = [(0.3, 0.5), (-2.0, 0.1), (5.0, 0.01), (0.0, 1.0), (-0.7, 2.5), (1.2, 1e-4)]


def integrate(f, mu, var, n=400001):
    """E[f], Var[f], E[f'] (via Stein: E[f(X)(X-mu)]/var) by quadrature on +-12 std."""
    s = math.sqrt(var)
    z = np.linspace(-12, 12, n)
    w = np.exp(-z * z / 2)
    w /= np.trapezoid(w, z)
    y = f(mu + s * z)
    m = np.trapezoid(y * w, z)
    return m, np.trapezoid((y - m) ** 2 * w, z), np.trapezoid(y * z * w, z) / s


def check(got, want, rtol, atol=1e-12):
    np.testing.assert_allclose([float(np.asarray(g)) for g in got], want, rtol=rtol, atol=atol)


def test_erfc_matches_math_including_tails():
    x = np.linspace(-9, 9, 3001)
    ref = np.array([math.erfc(v) for v in x])
    assert np.max(np.abs(stats.erfc(x) - ref) / ref) < 2e-7


@pytest.mark.parametrize("mu,var", CASES)
def test_relu_leaky_clip(mu, var):
    check(stats.relu_moments(np.array(mu), np.array(var)), integrate(lambda x: np.maximum(x, 0), mu, var), 1e-5)
    check(stats.leaky_relu_moments(np.array(mu), np.array(var), 0.1),
          integrate(lambda x: np.where(x > 0, x, 0.1 * x), mu, var), 1e-5)
    check(stats.clip_moments(np.array(mu), np.array(var), -0.5, 1.0),
          integrate(lambda x: np.clip(x, -0.5, 1.0), mu, var), 1e-5)
    check(stats.clip_moments(np.array(mu), np.array(var), 0.0, np.inf),
          integrate(lambda x: np.maximum(x, 0), mu, var), 1e-5)


@pytest.mark.parametrize("mu,var", [c for c in CASES if c[1] >= 0.01])
@pytest.mark.parametrize("fn,f", [
    (stats.sigmoid_moments, stats.sigmoid), (stats.tanh_moments, np.tanh),
    (stats.softplus_moments, stats.softplus), (stats.erf_moments, stats.erf),
    (stats.gelu_moments, stats.gelu_erf),
    (lambda m, v: stats.gelu_moments(m, v, "tanh"), stats.gelu_tanh)])
def test_smooth_functions_by_quadrature(fn, f, mu, var):
    check(fn(np.array(mu), np.array(var)), integrate(f, mu, var), 2e-4, atol=2e-7)


def test_rectified_keeps_precision_far_above_zero():
    """A programmed conductance 100 uS with 2 uS noise: clipping is negligible, variance must be s^2."""
    mean, var = stats.rectified_moments(np.array(1e-4), np.array(2e-6))
    assert mean == pytest.approx(1e-4, rel=1e-12)
    assert var == pytest.approx(4e-12, rel=1e-9)
    # at g = 0 the clipped normal: mean s/sqrt(2 pi), var s^2 (1/2 - 1/(2 pi))
    mean, var = stats.rectified_moments(np.array(0.0), np.array(2.0))
    assert mean == pytest.approx(2 / math.sqrt(2 * math.pi), rel=1e-6)
    assert var == pytest.approx(4 * (0.5 - 1 / (2 * math.pi)), rel=1e-6)


def test_rectified_with_a_vanishing_spread_is_the_constant():
    """A spread 1e-200 of the mean (rounding left over by a variance correction): no overflow, no NaN."""
    with np.errstate(over="raise", invalid="raise", divide="raise", under="ignore"):
        mean, var = stats.rectified_moments(np.array([1.5, -1.5, 0.0]), np.array([1e-200, 1e-200, 0.0]))
    np.testing.assert_array_equal(mean, [1.5, 0.0, 0.0])
    np.testing.assert_array_equal(var, [0.0, 0.0, 0.0])          # 1e-400 underflows to 0


@pytest.mark.parametrize("mu,var", [(0.33, 1e-3), (0.33, 0.02), (1.3, 0.05), (0.37, 0.0121), (0.37, 0.3),
                                    (0.5, 0.04), (-0.66, 0.002), (0.02, 0.5)])
def test_quantizer_moments(mu, var):
    step, qmin, qmax = 0.1, -7, 7
    q = stats.quantizer_moments(np.array([mu]), np.array([var]), np.array([step]), qmin, qmax)
    ref = integrate(lambda x: step * np.clip(np.round(x / step), qmin, qmax), mu, var, n=2_000_001)
    # saturating with std > 3 steps: the clipped-Gaussian + uniform form (documented < 0.5% off)
    rtol = 3e-3 if np.sqrt(var) / step > 3 else 1e-4
    check([q.mean[0], q.var[0], q.gain[0]], ref, rtol, atol=1e-8)


def test_quantizer_deterministic_input_is_exact():
    mu = np.array([0.33, -0.049, 0.051, 2.0, -5.0])
    q = stats.quantizer_moments(mu, np.zeros(5), np.full(5, 0.1), -7, 7)
    np.testing.assert_array_equal(q.mean, 0.1 * np.clip(np.round(mu / 0.1), -7, 7))
    np.testing.assert_array_equal(q.var, 0.0)


def test_max_moments_clark_vs_integration():
    # independent: E[max(X1, X2)] by 2-D quadrature over a product grid
    mu1, v1, mu2, v2 = 1.0, 0.5, 0.7, 0.2
    z = np.linspace(-10, 10, 2001)
    w = np.exp(-z ** 2 / 2)
    w /= w.sum()
    x1 = mu1 + np.sqrt(v1) * z[:, None]
    x2 = mu2 + np.sqrt(v2) * z[None, :]
    mx = np.maximum(x1, x2)
    ww = w[:, None] * w[None, :]
    m = (mx * ww).sum()
    v = ((mx - m) ** 2 * ww).sum()
    p = ((x1 > x2) * ww).sum()
    mean, var, p1 = stats.max_moments(np.array(mu1), np.array(v1), np.array(mu2), np.array(v2))
    check([mean, var, p1], [m, v, p], 1e-4)


def test_softmax_moments_small_noise_vs_sampling():
    rng = np.random.default_rng(0)
    mu = np.array([[1.0, 0.2, -0.5, 2.0]])
    var = np.full_like(mu, 0.01)
    samples = stats.softmax(mu + np.sqrt(var) * rng.standard_normal((400_000, 4)), axis=1)
    mean, v = stats.softmax_moments(mu, var, axis=1)
    np.testing.assert_allclose(mean[0], samples.mean(0), rtol=2e-3)
    np.testing.assert_allclose(v[0], samples.var(0), rtol=3e-2)


def test_chunked_evaluation_equals_the_whole_array():
    """The cache-sized chunking of the element-wise moment functions changes nothing: every regime of the
    quantizer (staircase, uniform, clipped), ReLU and Clark's max on 3 chunks' worth of elements."""
    rng = np.random.default_rng(5)
    n = 3 * stats.CHUNK + 17
    mu, var = rng.normal(0, 40, n), rng.uniform(0, 30, n) ** 2 * (rng.random(n) < 0.9)
    step = np.broadcast_to(rng.uniform(0.5, 2.0, (1, 16)), (n // 16 + 1, 16)).ravel()[:n]
    for fn, args in [(stats.quantizer_moments, (mu, var, step, -63, 63)), (stats.relu_moments, (mu, var)),
                     (stats.clip_moments, (mu, var, -20.0, np.inf)),
                     (stats.max_moments, (mu, var, mu[::-1], var[::-1], 0.3))]:
        got, want = fn(*args), fn.__wrapped__(*args)
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w, rtol=1e-9, atol=1e-12)


def test_chunks_on_threads_give_the_same_bits(monkeypatch):
    """The chunks run on a thread pool (stats.CHUNK_THREADS): bit for bit what one thread gives, nested chunked
    calls included (the quantizer's clipped regime calls clip_moments on its subsets)."""
    rng = np.random.default_rng(6)
    n = 9 * stats.CHUNK + 5
    mu, var = rng.normal(0, 60, n), rng.uniform(0, 30, n) ** 2
    step = rng.uniform(0.5, 2.0, n)
    monkeypatch.setattr(stats, "CHUNK_THREADS", 2)
    threaded = stats.quantizer_moments(mu, var, step, -63, 63)
    monkeypatch.setattr(stats, "CHUNK_THREADS", 1)
    single = stats.quantizer_moments(mu, var, step, -63, 63)
    assert type(threaded) is stats.Moments
    for a, b in zip(threaded, single):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("mu,var", [c for c in CASES if c[1] >= 0.01])
@pytest.mark.parametrize("op,attrs,rtol", [
    ("HardSigmoid", {"alpha": 0.3, "beta": 0.4}, 1e-5),      # exact: the clip of an affine Gaussian
    ("HardSwish", {}, 1e-5), ("Elu", {"alpha": 0.7, "gamma": 1.0, "rate": 1.0}, 1e-5), ("Selu", None, 1e-5),
    ("Celu", {"alpha": 0.6, "gamma": 1.0, "rate": 1 / 0.6}, 1e-5),
    ("Softsign", {}, 1e-5),       # the others: Gauss-Legendre per smooth piece
    ("Sin", {"cosine": False}, 1e-7), ("Cos", {"cosine": True}, 1e-7)])     # exact: the characteristic function
def test_registry_activations_against_integration(op, attrs, rtol, mu, var):
    """The moments the rules of the newer activations give against numeric integration of their own `f`."""
    from memse_compiler.ir.ops import rule_for
    rule = rule_for(op)
    if attrs is None:
        attrs = {"alpha": 1.67326319217681884765625, "gamma": 1.05070102214813232421875, "rate": 1.0}
    check(rule.stat(attrs, np.array(mu), np.array(var)), integrate(lambda x: rule.f(attrs, x), mu, var), rtol,
          atol=1e-6)


@pytest.mark.parametrize("noise", [0.1, 1.0])
def test_layer_norm_moments_against_sampling(noise):
    """LayerNormalization of a noisy vector (noise variance up to the features' own spread): the rule's
    variance within 5 % of 50 000 samples in total, and its mean (the normaliser taken at the noisy vector's
    expected power) much closer to the sampled mean than the map at the mean is."""
    from memse_compiler.ir.ops import rule_for
    rule, rng, n = rule_for("LayerNormalization"), np.random.default_rng(0), 16
    attrs = {"axis": 1, "epsilon": 1e-5, "scale": rng.uniform(0.5, 1.5, n), "bias": rng.normal(0, 0.2, n)}
    mu, v = rng.normal(0, 1, (4, n)), noise * rng.uniform(0.5, 1.5, (4, n))
    (mean,), (var,), _ = rule.moments(attrs, [mu], [v])
    x = mu + np.sqrt(v) * rng.standard_normal((50000, 4, n))
    y = rule.forward(attrs, [x.reshape(-1, n)])[0].reshape(x.shape)
    assert var.sum() == pytest.approx(y.var(axis=0).sum(), rel=0.05)
    at_mean = rule.forward(attrs, [mu])[0]
    assert np.sqrt(np.mean((mean - y.mean(axis=0)) ** 2)) < 0.1 * np.sqrt(np.mean((at_mean - y.mean(axis=0)) ** 2))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_chunk_threads_work_in_a_forked_child(monkeypatch):
    """A child forked after the pool started inherits it without its threads: it must make its own, not hang."""
    monkeypatch.setattr(stats, "CHUNK_THREADS", 2)
    x = np.linspace(-50, 50, 9 * stats.CHUNK)
    v = np.full_like(x, 4.0)
    want = stats.quantizer_moments(x, v, 1.0, -20, 20)
    pid = os.fork()
    if pid == 0:                                   # the child: exit code 0 when it got the same bits
        got = stats.quantizer_moments(x, v, 1.0, -20, 20)
        os._exit(0 if all(np.array_equal(a, b) for a, b in zip(got, want)) else 1)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            assert os.waitstatus_to_exitcode(status) == 0
            return
        time.sleep(0.05)
    os.kill(pid, 9)
    pytest.fail("the forked child hung on the chunk pool")
