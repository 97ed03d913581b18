"""Correlation-aware output variance by first-order sensitivities (DESIGN §5).

The diagonal forward pass (passes/moments.py) treats every element as independent, which misses the
correlations that dominate deep networks: one programmed kernel is reused at every conv position, a layer
mixes correlated errors (W Gamma W^T), residual branches meet again at an Add. This pass instead writes
each graph output, for one input sample, as a linear response to every independent noise source:

    Var(y_k) ~= sum_layers sum_w S_w (dy_k/dw)^2                    programming noise (shared weights)
              + sum_e inj_e (dy_k/dz_e)^2                              sources independent per element:
                                                                      read noise, ADC/DAC quantization,
                                                                      second-order S*v, nonlinear residuals

with dy_k/dw the per-sample weight gradient (sum over conv positions of output sensitivity x input mean):
every shared-weight correlation is captured, and no covariance matrix is ever formed. Sensitivities come
from one backward pass per output element through the Bussgang gains E[f'(X)] of the forward pass, or,
when an output has more than `max_exact` elements per sample, from Rademacher probes u (E_u (u^T J)^2 =
sum_k J_k^2) that estimate the mean variance without bias.
"""
from __future__ import annotations

import time
from collections import defaultdict

import numpy as np

from memse_compiler.ir import MemseGraph, schedule
from memse_compiler.ir.ops import rule_for
from memse_compiler.ir.pass_base import Pass, PassContext
from passes.crossbar_math import CrossbarMoments

SOURCES = ("programming", "read", "adc", "dac", "nonlinearity")


def spread_per_sample(values: np.ndarray, n: int) -> np.ndarray:
    """Per-sample contributions; a layer whose vectors are not the batch (W @ x with x's columns as
    vectors) reports per vector: spread its total evenly over the samples."""
    return values if np.shape(values) == (n,) else np.full(n, float(np.sum(values)) / n)


def _sum_per_sample(a: np.ndarray, n: int) -> np.ndarray:
    return a.reshape(n, -1).sum(axis=1)


def layer_backward(layer, cm: CrossbarMoments, gout: np.ndarray, add, coef=None) -> np.ndarray:
    """Sensitivity of one output probe through a crossbar layer. Adds the variance each source of the
    layer contributes (per sample) via `add(source, per_sample)`; returns the input sensitivity."""
    g_y = layer.geometry.from_vectors_T(gout)                              # N, P, G, O
    n = g_y.shape[0]          # vectors' leading axis: the batch, except for W @ x (columns of x)
    g_ps = g_y[:, :, :, None, :] * cm.adc_gain                             # N, P, G, R, O
    g_ps = np.broadcast_to(g_ps, g_y.shape[:3] + (layer.row_tiles, layer.outs))
    # per-sample weight gradient: sum over positions of sensitivity x mean input, per row tile
    dw = layer.weight_grads(g_ps, cm.mu_vec)                               # N, G, O, Jb
    dw2 = dw * dw
    add("programming", np.einsum("ngoj,goj->n", dw2, np.broadcast_to(cm.w_var, layer.g_plus.shape)))
    y2 = g_y * g_y                 # every row tile of an output has its sensitivity: injections are tile sums
    if coef is not None:
        # unit coefficients of the closed form (passes/closed_form.py), per unit of each device parameter
        c2 = np.broadcast_to(1.0 / layer.scale_c ** 2, layer.g_plus.shape)
        coef("w2", dw2.reshape(n, -1).sum(axis=1))                            # sum_w (dy/dw)^2
        coef("w2_over_c2", np.einsum("ngoj,goj->n", dw2, c2))                  # x 2 sigma^2 (unclipped)
        coef("read_unit", _sum_per_sample(y2 * cm.read_unit, n))              # x sigma_r^2
        if layer.adc_range is not None:
            adc_r2 = (layer.per_output(layer.adc_range) ** 2).sum(axis=1)     # G, O: summed over row tiles
            coef("adc_unit", _sum_per_sample(y2 * adc_r2 / 12.0, n))           # x 1 / (2^(b-1) - 1)^2
        else:
            coef("adc_unit", np.zeros(n))
    add("programming", _sum_per_sample(y2 * cm.inj_programming, n))
    if np.any(cm.inj_read):
        add("read", _sum_per_sample(y2 * cm.inj_read, n))
    if np.any(cm.inj_adc):
        add("adc", _sum_per_sample(y2 * cm.inj_adc, n))
    g_vec = layer.partial_sums_T(np.ascontiguousarray(g_ps), cm.w_bar)[..., : layer.weight.shape[2]]
    g_dac = layer.geometry.to_vectors_T(g_vec, cm.mean_in.shape)
    if np.any(cm.dac_resid):
        add("dac", _sum_per_sample(g_dac * g_dac * cm.dac_resid, g_dac.shape[0]))
    if coef is not None:
        coef("dac_unit", _sum_per_sample(g_dac * g_dac, g_dac.shape[0]) * layer.dac_range ** 2 / 12.0)  # x 1 / levels^2
    return g_dac * cm.dac_gain


def backward(g: MemseGraph, order: list[str], probe: dict[str, np.ndarray], add, coef=None,
             lin: dict | None = None, moments: dict | None = None) -> None:
    """One backward sweep from `probe` (tensor -> sensitivity) through the units in reverse `order`.
    `add(unit, source, per_sample_variance)`; `coef(unit, name, per_sample)` receives the closed form's
    unit coefficients (None: not computed)."""
    lin = g.graph["linearization"] if lin is None else lin
    moments = g.graph["moments"] if moments is None else moments
    consts = g.graph["constants"]
    grads = dict(probe)
    for unit in reversed(order):
        if unit in g.layers:
            layer = g.layers[unit]
            gout = grads.pop(layer.output, None)
            if gout is None:
                continue
            gin = layer_backward(layer, lin[unit], gout, lambda s, v, u=unit: add(u, s, v),
                                 None if coef is None else (lambda s, v, u=unit: coef(u, s, v)))
            grads[layer.input] = grads[layer.input] + gin if layer.input in grads else gin
            continue
        d = g.nodes[unit]
        gouts = [grads.pop(t, None) for t in d["outputs"]]
        if all(x is None for x in gouts):
            continue
        rule, lz = rule_for(d["op"]), lin[unit]
        for go, resid in zip(gouts, lz.residual):
            if go is not None and resid is not None and np.any(resid):
                add(unit, "nonlinearity", _sum_per_sample(go * go * resid, go.shape[0]))
        in_shapes = [moments[t][0].shape if t in moments else np.shape(consts[t]) for t in d["inputs"]]
        gins = rule.vjp(d["attrs"], lz, gouts, in_shapes)
        for t, gi in zip(d["inputs"], gins):
            if gi is None or t in consts:
                continue
            grads[t] = grads[t] + gi if t in grads else gi


def probes_for(shape: tuple, max_exact: int, n_probes: int, rng: np.random.Generator):
    """Yield (probe array, weight): one-hot per output element, or Rademacher vectors."""
    k = int(np.prod(shape[1:]))
    if k <= max_exact:
        for i in range(k):
            p = np.zeros((shape[0], k))
            p[:, i] = 1.0
            yield p.reshape(shape), i
    else:
        for _ in range(n_probes):
            yield rng.choice([-1.0, 1.0], size=shape), None


class Sensitivity(Pass):
    """Replaces each graph output's diagonal variance by the correlation-aware one; records the share of
    every noise source and every layer in ``analysis.outputs[name]``."""
    name = "sensitivity"

    def __init__(self, max_exact: int = 64, probes: int | None = None):
        # probes=None: 16 Rademacher probes (one backward pass each); 4 on large models, where 4 seeds
        # of the ResNet-18 shape agreed within 3.5%
        self.max_exact, self.probes_option = max_exact, probes

    def apply(self, g: MemseGraph, ctx: PassContext) -> MemseGraph:
        from passes.moments import LARGE_MODEL_MACS, analysis_options, model_macs
        if not analysis_options(ctx.options)["sensitivity"]:
            return g
        self.probes = self.probes_option or int(ctx.options.get("probes") or
                                                (16 if model_macs(g) < LARGE_MODEL_MACS else 4))
        t0 = time.perf_counter()
        rng = np.random.default_rng(ctx.options.get("seed", 0))
        lin, moments, ref = g.graph["linearization"], g.graph["moments"], g.graph["reference"]
        order = [u for u in schedule(g) if u in lin]
        analysis = g.graph["analysis"]
        for out in g.graph["outputs"]:
            mean, var_diag = moments[out]
            n = mean.shape[0]
            k = int(np.prod(mean.shape[1:]))
            exact = k <= self.max_exact
            per_elem = np.zeros((n, k)) if exact else None
            total = np.zeros(n)
            by_source: dict[str, float] = defaultdict(float)
            by_unit: dict[str, float] = defaultdict(float)
            by_unit_source: dict[tuple, float] = defaultdict(float)

            for probe, idx in probes_for(mean.shape, self.max_exact, self.probes, rng):
                acc = np.zeros(n)

                def add(unit, source, per_sample, acc=acc):
                    s = float(per_sample.sum())
                    by_unit_source[unit, source] += s
                    acc += spread_per_sample(per_sample, n)
                    by_source[source] += s
                    by_unit[unit] += s

                def coef(unit, name, per_sample):
                    by_unit_source[unit, "_" + name] += float(per_sample.sum())
                backward(g, order, {out: probe}, add, coef)
                total += acc
                if exact:
                    per_elem[:, idx] = acc
            norm = n * k if exact else n * k * self.probes   # -> mean over samples and elements
            variance = float(total.sum() / norm)
            b2 = float(np.mean((mean - ref[out]) ** 2))
            entry = analysis["outputs"][out]
            entry.update(mse=b2 + variance, bias2=b2, variance=variance, method="sensitivity",
                         probes=None if exact else self.probes,
                         sources={s: by_source.get(s, 0.0) / norm for s in SOURCES},
                         layer_shares={u: v / norm for u, v in by_unit.items()})
            g.graph.setdefault("sensitivity", {})[out] = {f"{u}|{src}": v / norm
                                                          for (u, src), v in by_unit_source.items()}
            # the output's per-element variance: exact per element, or (probes: only the total is known) the
            # forward's per-element variance scaled to the correlation-aware total, so that the output's
            # edges and its layer's row agree with the output entry
            if exact:
                var_full = per_elem.reshape(mean.shape)
            else:
                diag_mean = float(np.mean(var_diag))
                var_full = var_diag * (variance / diag_mean) if diag_mean > 0 else np.full(mean.shape, variance)
            g.graph["moments"][out] = (mean, var_full)
            for u, v, data in g.edges(data=True):
                if data["tensor"] == out:
                    data["var"], data["variance"], data["mse"] = var_full, variance, b2 + variance
            for name, layer in g.layers.items():
                if layer.output == out:
                    analysis.setdefault("layers", {})[name] = b2 + variance
        timing = g.graph.setdefault("timing", {})
        timing["analysis_s"] = timing.get("analysis_s", 0.0) + time.perf_counter() - t0
        return g
