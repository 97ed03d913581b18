"""The closed form's clipping models (passes/closed_form.py): per layer, how much of its devices' programming
variance clipping at 0 leaves, and how far it shrinks the mean weights, at any sigma, G and number of levels.

A histogram of the layer's weights over the level of each pair's active device (the other one sits at g_min),
with the analysis' own clipped pair statistics (passes.symbolic.weight_stat_function) evaluated per bin: the
sums are exact at any sigma and G, since levels are fractions of G.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from passes.crossbar_math import programming_std
from passes.symbolic import weight_stat_function


LEVEL_BINS = 64       # histogram bins of the active device's level when the conductances are not quantized
WEIGHT_BINS = 256     # bins of the float weight |w| / Wmax, to re-quantize at another number of levels


@dataclass
class ClipModel:
    """One layer's programmed weights as a histogram over the level of each pair's active device (the other one
    sits at g_min, DESIGN §4.2), each weight counted with the mean power E[x^2] of the crossbar row it
    multiplies. A device's clipped statistics depend only on its conductance and a level is a fixed fraction
    of G, so sums over the bins are the sums over the weights at any sigma and G (with per-column scale groups,
    every column is taken at the layer's mean G). The bins also split by the
    float weight's fraction of Wmax (WEIGHT_BINS), which is re-quantized for another number of levels (there
    the sums are those of the bins' mean weights)."""
    weight: np.ndarray          # (B,) summed row power of the weights in each bin
    fraction: np.ndarray        # (B,) their mean level fraction (g_active - g_min) / G
    unquantized: np.ndarray     # (B,) their mean float fraction |w| / Wmax (of the scale group)
    wmax: float
    g_min: float
    relative: float             # state-dependent programming noise: std = sqrt(sigma^2 + (relative g)^2)
    clip: bool
    levels: int | None = None   # the compiled conductance levels (None: continuous)
    rounding: str = "nearest"
    at_point: tuple[float, float] = (0.0, 0.0)      # `stats` at the compiled point

    @classmethod
    def of_layer(cls, layer, cm, device) -> "ClipModel":
        cond = device.conductance
        g_range = np.broadcast_to(layer.g_range, layer.g_plus.shape)
        active = np.maximum(layer.g_plus, layer.g_minus) - layer.g_min
        frac = np.clip(active / np.where(g_range > 0, g_range, 1.0), 0.0, 1.0).ravel()
        w_max = np.broadcast_to(layer.w_max, layer.g_plus.shape)
        u = np.clip(np.abs(layer.augmented_weight()) / np.where(w_max > 0, w_max, 1.0), 0.0, 1.0).ravel()
        if cond.levels and cond.levels <= 4096:
            level = np.rint(frac * (cond.levels - 1)).astype(np.intp)
        else:
            level = np.minimum((frac * LEVEL_BINS).astype(np.intp), LEVEL_BINS - 1)
        idx = level * WEIGHT_BINS + np.minimum((u * WEIGHT_BINS).astype(np.intp), WEIGHT_BINS - 1)
        power = np.mean(cm.mu_vec ** 2 + cm.v_vec, axis=(0, 1))             # (G, Jb); the bias row's is 1
        w = np.broadcast_to(power[:, None, :], layer.g_plus.shape).ravel()
        weight = np.bincount(idx, weights=w)
        keep = weight > 0
        mean_of = lambda a: np.bincount(idx, weights=w * a, minlength=len(weight))[keep] / weight[keep]  # noqa: E731
        pn = device.programming_noise
        model = cls(weight[keep], mean_of(frac), mean_of(u), float(np.max(layer.w_max)), float(layer.g_min),
                    float(pn.relative), bool(pn.clip_at_zero), cond.levels, cond.rounding)
        model.at_point = model.stats(pn.sigma, float(np.mean(layer.g_range)))
        return model

    def fractions(self, levels="keep") -> np.ndarray:
        """The bins' level fractions at `levels` ("keep": the compiled ones, exact)."""
        if levels == "keep" or levels == self.levels:
            return self.fraction
        from passes.map_conductances import quantize_conductance
        return quantize_conductance(self.unquantized, np.float64(1.0), levels, self.rounding)

    def stats(self, sigma_v: float, g_range: float, levels="keep") -> tuple[float, float]:
        """(sum over the weights of row power x Var(w), shrink) at (sigma, G): see `ClipStack.stats`."""
        return ClipStack([self]).stats(sigma_v, [g_range], levels)[0]

    def kappa(self, sigma_v: float, g_range: float, sigma0: float, g0: float, levels="keep") -> float:
        """The programming variance at (sigma, G, levels) relative to the clip-free scaling (sigma G0 / (sigma0
        G))^2 of the one at the compiled point (sigma0, G0): 1 there, < 1 where clipping bites harder."""
        base = self.at_point[0]
        if base <= 0 or sigma_v <= 0:
            return 1.0
        return self.stats(sigma_v, g_range, levels)[0] / base * (sigma0 * g_range / (sigma_v * g0)) ** 2


class ClipStack:
    """Several layers' clip models as one (layers, bins) table, zero-padded, so that one evaluation of the
    analysis' pair statistics (passes.symbolic.weight_stat_function) serves them all, the g_min device once per
    layer (the closed form evaluates every layer at each device point)."""

    def __init__(self, models: list[ClipModel]):
        if len({m.clip for m in models}) > 1:
            raise ValueError("ClipStack: the models disagree on clipping")
        self.models, self.clip = models, bool(models and models[0].clip)
        self.weight = self._table([m.weight for m in models])
        self.frac = self._table([m.fraction for m in models])
        column = lambda values: np.array(values, dtype=float)[:, None]  # noqa: E731
        self.wmax = column([m.wmax for m in models])
        self.g_min = column([m.g_min for m in models])
        self.rel = column([m.relative for m in models])

    def _table(self, rows: list[np.ndarray]) -> np.ndarray:
        out = np.zeros((len(rows), max((len(r) for r in rows), default=0)))
        for i, r in enumerate(rows):
            out[i, :len(r)] = r
        return out

    def stats(self, sigma_v: float, g_ranges, levels="keep") -> list[tuple[float, float]]:
        """Per model: (sum over the weights of row power x Var(w), shrink) at (sigma, G), w the programmed
        effective weight by the analysis' pair statistics. The shrink is how far E[w] falls short of w,
        relative, as one least-squares factor (weights: row power x w^2); clipping makes it > 0. levels: the
        number of conductance levels ("keep": as compiled)."""
        if not self.models:
            return []
        frac = self.frac
        if levels != "keep" and any(m.levels != levels for m in self.models):
            frac = self._table([m.fractions(levels) for m in self.models])
        G = np.asarray(g_ranges, dtype=float)[:, None]
        c = np.where(self.wmax > 0, G / np.where(self.wmax > 0, self.wmax, 1.0), 1.0)
        g_on, g_off = self.g_min + frac * G, self.g_min             # each bin's pair: active device, g_min
        std_on, std_off = (programming_std(g, sigma_v, self.rel) for g in (g_on, g_off))
        w_bar, w_var = weight_stat_function(self.clip)(g_on, g_off, std_on, std_off, c)
        w = frac * self.wmax
        var_sum = (self.weight * w_var).sum(axis=1)
        short = (self.weight * w * (w - w_bar)).sum(axis=1)
        energy = (self.weight * w * w).sum(axis=1)
        shrink = np.where(energy > 0, short / np.where(energy > 0, energy, 1.0), 0.0)
        return [(float(a), float(b)) for a, b in zip(var_sum, shrink)]
