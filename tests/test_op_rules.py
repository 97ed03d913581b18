"""Every digital op rule's `vjp` is the transpose of its own `forward`'s Jacobian (finite differences), at the
signals of every op-coverage model: the sensitivity pass relies on it."""
from __future__ import annotations

import numpy as np
import pytest

from memse_compiler import compile_model
from memse_compiler.ir import KIND_DIGITAL
from memse_compiler.ir.ops import rule_for
from memse_compiler.pipeline import default_pipeline
from onnx_zoo import op_coverage_models

CASES = []
for _zm in op_coverage_models():
    _x = _zm.batch()
    _g, _ = compile_model(_zm.model, "ideal", _x, pipeline=default_pipeline(analysis=False))
    _ref, _consts = _g.graph["reference"], _g.graph["constants"]
    for _n, _d in _g.nodes(data=True):
        if _d.get("kind") == KIND_DIGITAL and _d["op"] != "Exact":     # exact ops carry no noise: no vjp
            CASES.append(pytest.param(_d["op"], _d["attrs"], [_ref[t] if t in _ref else _consts[t] for t in _d["inputs"]],
                                      [t in _ref for t in _d["inputs"]], id=f"{_zm.name}-{_n}"))


@pytest.mark.parametrize("op,attrs,inputs,signal", CASES)
def test_vjp_is_the_transposed_jacobian(op, attrs, inputs, signal):
    rule = rule_for(op)
    rng = np.random.default_rng(0)
    # jittered off exact ties (ReLU zeros in a max-pool window), where the map has no derivative
    inputs = [np.asarray(a, np.float64) + (1e-3 * rng.standard_normal(np.shape(a)) if s else 0.0)
              for a, s in zip(inputs, signal)]
    # an attention mask's MASKED (-1e30) would swallow the finite differences: a bias of -30 keeps its role
    inputs = [np.where(a <= -1e20, -30.0, a) for a in inputs]
    # zero variance: the linearisation is the derivative at the point
    _, _, lin = rule.moments(attrs, inputs, [np.zeros_like(a) for a in inputs])
    outs = rule.forward(attrs, inputs)
    g_out = rng.standard_normal(np.shape(outs[0]))
    gins = rule.vjp(attrs, lin, [g_out] + [None] * (len(outs) - 1), [a.shape for a in inputs])
    checked = 0
    for i, (a, is_signal) in enumerate(zip(inputs, signal)):
        if not is_signal or gins[i] is None:
            continue
        d = rng.standard_normal(a.shape)
        eps = 1e-6 * max(float(np.abs(a).max()), 1.0)
        plus = rule.forward(attrs, [a + eps * d if j == i else b for j, b in enumerate(inputs)])[0]
        minus = rule.forward(attrs, [a - eps * d if j == i else b for j, b in enumerate(inputs)])[0]
        want = float(np.sum(g_out * (plus - minus) / (2 * eps)))
        got = float(np.sum(np.broadcast_to(gins[i], a.shape) * d))
        assert got == pytest.approx(want, rel=1e-4, abs=1e-6 * np.sqrt(g_out.size * a.size)), (op, i)
        checked += 1
    assert checked or not any(signal)


@pytest.mark.parametrize("eq,ranks,want", [
    ("...ij,jk->...ik", [4, 2], "abij,jk->abik"),
    ("ij,jk", [2, 2], "ij,jk->ik"),                          # implicit output: the indices used once, sorted
    ("...ij,...jk", [3, 4], "bij,abjk->abik"),               # ellipses right-aligned, as broadcasting
    ("bld,de", [3, 2], "bld,de->bel"),
])
def test_einsum_equation_spelled_out(eq, ranks, want):
    from memse_compiler.ir.ops.einsum import explicit_equation
    assert explicit_equation(eq, ranks) == want
