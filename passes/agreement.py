"""Top-1 agreement: how often a noisy chip's class is the float model's (the question a designer asks of a
classifier, next to the MSE of its logits).

For an output of shape (N, C), C >= 2, and sample n with float top class k (the argmax of the float reference),
the chip keeps the class when y_k > y_j for every other class j. The analysis has each class's mean mu_j and
variance v_j (correlation-aware after the sensitivity pass) and, from one more backward sweep per competitor seeded
with e_k - e_j (the sensitivity pass's machinery, per sample), Var(y_k - y_j), hence c_j = Cov(y_k, y_j). With the
logits Gaussian and the competitors independent given y_k (a one-factor model: exact for two classes),

    P(keep) = E over y_k of  prod_{j != k} Phi((y_k - mu_j - c_j / v_k (y_k - mu_k)) / sqrt(v_j - c_j^2 / v_k)),

a Gauss-Hermite quadrature over y_k, vectorised over samples and classes. Only the `SWEPT` most threatening
competitors per sample (smallest mean margin over its spread; one on models of LARGE_MODEL_MACS and more) get a
sweep; the others, and every competitor in the diagonal mode, count as uncorrelated with y_k. The option
`agreement: False` skips the pass. The mean over samples is `top1_agreement` of the output's
analysis entry; the Monte-Carlo executor measures the same fraction chip by chip (montecarlo.py). With labels the
same integral over P(argmax = label) gives `accuracy`. `agreement_at` evaluates both at another device point from
the closed form (the covariances kept from here, scaled).
"""
from __future__ import annotations

import time

import numpy as np

from memse_compiler.ir import MemseGraph, schedule
from memse_compiler.ir.pass_base import Pass, PassContext
from memse_compiler.ir.stats import norm_cdf

SWEPT = 4     # competitors per sample given their covariance with the top class (4 -> 9 of 10 moved it <= 0.06 points)
NODES, WEIGHTS = np.polynomial.hermite_e.hermegauss(64)
WEIGHTS = WEIGHTS / WEIGHTS.sum()
TINY = 1e-300


def is_classifier(shape: tuple) -> bool:
    """A 2-D output (batch, classes) with at least two classes."""
    return len(shape) == 2 and shape[1] >= 2


def keep_probability(mean: np.ndarray, var: np.ndarray, cov_top: np.ndarray, top: np.ndarray) -> np.ndarray:
    """P(argmax stays `top[n]`) per sample under the one-factor model: mean, var, cov_top (N, C), cov_top[n, j] =
    Cov(y_top, y_j) (its entry at the top class is ignored)."""
    rows = np.arange(len(mean))
    mu_k, v_k = mean[rows, top][:, None], np.maximum(var[rows, top], TINY)[:, None]
    beta = cov_top / v_k                                                   # regression of y_j on y_k
    spread = np.sqrt(np.maximum(var - cov_top ** 2 / v_k, TINY))           # conditional std of y_j
    y_k = mu_k + np.sqrt(v_k) * NODES[None, :]                              # (N, Z)
    cond_mean = mean[:, None, :] + beta[:, None, :] * (y_k - mu_k)[:, :, None]
    p = norm_cdf((y_k[:, :, None] - cond_mean) / spread[:, None, :])        # (N, Z, C)
    p[rows, :, top] = 1.0
    return p.prod(axis=2) @ WEIGHTS


def competitors(mean: np.ndarray, var: np.ndarray, top: np.ndarray, count: int) -> np.ndarray:
    """(N, count) class indices, per sample the `count` others with the smallest margin over its spread."""
    rows = np.arange(len(mean))
    z = (mean[rows, top][:, None] - mean) / np.sqrt(np.maximum(var[rows, top][:, None] + var, TINY))
    z[rows, top] = np.inf
    return np.argsort(z, axis=1, kind="stable")[:, :count]


def margin_covariances(g: MemseGraph, out: str, top: np.ndarray, var: np.ndarray, rng: np.random.Generator,
                       swept: int = SWEPT) -> np.ndarray:
    """Cov(y_top, y_j) per sample for the `swept` most threatening competitors (0 elsewhere): one backward sweep
    of the sensitivity pass per competitor rank, seeded with e_top - e_j per sample."""
    from passes.sensitivity import chip_backward, spread_per_sample
    mean = g.graph["moments"][out][0]
    n, c = mean.shape
    rows = np.arange(n)
    order = [u for u in schedule(g) if u in g.graph["linearization"]]
    cov = np.zeros((n, c))
    for rank in competitors(mean, var, top, min(swept, c - 1)).T:
        probe = np.zeros((n, c))
        probe[rows, top], probe[rows, rank] = 1.0, -1.0
        margin_var = np.zeros(n)

        def add(unit, source, per_sample, acc=margin_var):
            acc += spread_per_sample(per_sample, n)
        chip_backward(g, order, {out: probe}, add, rng=rng)
        cov[rows, rank] = (var[rows, top] + var[rows, rank] - margin_var) / 2
    return cov


def agreement_at(g: MemseGraph, out: str, **point) -> dict[str, float]:
    """`top1_agreement` (and `accuracy`, with labels) of `out` at another device point, in microseconds: the
    logits' variances and covariances scaled by the output variance of the closed form there (passes/closed_form.py;
    `point` as its `terms` takes it: sigma_v, sigma_r_v, levels_v, adc_bits, dac_bits, g_ranges) over the one at
    the compiled point, and their mean error (from the float logits) by the square root of its mean_shift term's
    ratio (clipping at zero shrinks the logits as the noise grows)."""
    from passes.sensitivity import SOURCES         # the analysis' variance sources, which the closed form splits too
    cf = g.graph["closed_form"][out]
    here, there = cf.terms(), cf.terms(**point)
    spread = sum(here[k] for k in SOURCES)
    ratio = sum(there[k] for k in SOURCES) / spread if spread > 0 else 1.0
    shift = np.sqrt(there["mean_shift"] / here["mean_shift"]) if here["mean_shift"] > 0 else 1.0
    mean, var = g.graph["moments"][out][:2]
    reference = g.graph["reference"][out]
    mean = reference + shift * (mean - reference)
    return {key: float(keep_probability(mean, ratio * var, ratio * cov, classes).mean())
            for key, (classes, cov) in g.graph["agreement"][out].items()}


class Top1Agreement(Pass):
    """Writes into the analysis entry of every classifier-shaped output `top1_agreement`, the mean over samples of
    P(the chip's argmax is the float model's); with labels (g.graph["labels"], compile_model's `labels`, the CLI's
    --labels) also `accuracy_float`, the float model's accuracy, and `accuracy`, the chip's expected accuracy (the
    mean of P(argmax = label))."""
    name = "top1_agreement"

    def apply(self, g: MemseGraph, ctx: PassContext) -> MemseGraph:
        from passes.moments import LARGE_MODEL_MACS, analysis_options, model_macs
        if not ctx.options.get("agreement", True):
            return g
        t0 = time.perf_counter()
        # a sweep costs as much as one of the sensitivity pass's: on large models only the closest competitor
        # (the ResNet-18 shape: 4 sweeps took 13.8 s, more than the sensitivity pass's 12.7 s)
        swept = 0 if not analysis_options(ctx.options)["sensitivity"] else \
            (1 if model_macs(g) >= LARGE_MODEL_MACS else SWEPT)
        rng = np.random.default_rng(ctx.options.get("seed", 0) + 1)
        labels = g.graph.get("labels")
        for out in g.graph["outputs"]:
            reference = g.graph["reference"][out]
            if not is_classifier(reference.shape):
                continue
            entry = g.graph["analysis"]["outputs"][out]
            top = np.argmax(reference, axis=1)
            targets = {"top1_agreement": top}
            if labels is not None and labels.max() < reference.shape[1]:
                entry["accuracy_float"] = float(np.mean(top == labels))
                targets["accuracy"] = labels
            state = g.graph.setdefault("agreement", {})[out] = {}
            mean, var = g.graph["moments"][out][:2]
            for key, classes in targets.items():
                cov = margin_covariances(g, out, classes, var, rng, swept) if swept else np.zeros_like(var)
                entry[key] = float(keep_probability(mean, var, cov, classes).mean())
                state[key] = (classes, cov)     # for agreement_at: another device point, from the closed form
        timing = g.graph.setdefault("timing", {})
        timing["analysis_s"] = timing.get("analysis_s", 0.0) + time.perf_counter() - t0
        return g
