"""Top-1 agreement: how often a noisy chip's class is the float model's (the question a designer asks of a
classifier, next to the MSE of its logits).

A classifier-shaped output is (N, C), or per position (N, T, C) with the classes last (a token classifier), or
(N, C, H, ...) with the classes on axis 1 (a segmentation net); C >= 2. Each (sample, position) is an instance,
and the agreement is the mean over instances. For instance n with float top class k (the argmax of the float reference),
the chip keeps the class when y_k > y_j for every other class j. The analysis has each class's mean mu_j and
variance v_j (correlation-aware after the sensitivity pass) and, from one more backward sweep per competitor seeded
with e_k - e_j (the sensitivity pass's machinery, per sample), Var(y_k - y_j), hence c_j = Cov(y_k, y_j). With the
logits Gaussian and the competitors independent given y_k (a one-factor model: exact for two classes),

    P(keep) = E over y_k of  prod_{j != k} Phi((y_k - mu_j - c_j / v_k (y_k - mu_k)) / sqrt(v_j - c_j^2 / v_k)),

a Gauss-Hermite quadrature over y_k, vectorised over samples and classes. Only the `SWEPT` most threatening
competitors per sample (smallest mean margin over its spread; one on models of LARGE_MODEL_MACS and more) get a
sweep; the others, and every competitor in the diagonal mode, count as uncorrelated with y_k. A sweep gives one
position of every sample: per-position outputs get at most POSITION_SWEEPS, over evenly spread positions (all
`SWEPT` competitors when they fit, else the closest one; one position on large models), and the other positions
take the correlation Corr(y_k, y_j) the swept ones show on average for their pair of classes (k, j). The option
`agreement: False` skips the pass. The mean over samples is `top1_agreement` of the output's
analysis entry; the Monte-Carlo executor measures the same fraction chip by chip (montecarlo.py). With labels the
same integral over P(argmax = label) gives `accuracy`. Top-k (an output TopK's k, or the `topk` option): the class
stays among the chip's top k when fewer than k others beat it; given y_k they do independently, each with
probability 1 - Phi(...) above, so the count is Poisson-binomial (`fewer_than`), under the same quadrature.
`agreement_at` evaluates them all at another device point from the closed form (the covariances kept from here,
scaled).
"""
from __future__ import annotations

import time

import numpy as np

from memse_compiler.ir import MemseGraph, schedule
from memse_compiler.ir.errors import MemseInputError
from memse_compiler.ir.geometry import ConvGeometry
from memse_compiler.ir.pass_base import Pass, PassContext
from memse_compiler.ir.stats import norm_cdf

SWEPT = 4     # competitors per sample given their covariance with the top class (4 -> 9 of 10 moved it <= 0.06 points)
POSITION_SWEEPS = 16      # sweeps per target of a per-position output (each gives one position of every sample)
NODES, WEIGHTS = np.polynomial.hermite_e.hermegauss(64)
WEIGHTS = WEIGHTS / WEIGHTS.sum()
TINY = 1e-300


def class_axis(shape: tuple) -> int | None:
    """The class axis a classifier-shaped output has by its shape alone: 1 of (batch, classes), 2 of (batch, tokens,
    classes), 1 of (batch, classes, H, ...); None when there are fewer than two classes there (or no such axis).
    `output_class_axis` also asks what computed the output."""
    axis = {2: 1, 3: 2}.get(len(shape), 1 if len(shape) > 3 else None)
    return axis if axis is not None and shape[axis] is not None and shape[axis] >= 2 else None


def output_class_axis(g: MemseGraph, out: str) -> int | None:
    """The class axis of graph output `out`: the axis of the decision taken off it at load (memse_compiler/decisions.py);
    else, when a crossbar layer computes it (through ops that keep one signal's shape, and Transposes), the axis that
    holds the layer's output features: 1 of a convolution's (batch, classes, frames) or (batch, classes, H, W), the
    last of a Linear's, wherever a Transpose moved it (a Linear's (batch, frames, classes) transposed for a loss that
    wants (batch, classes, frames)); else by its shape (`class_axis`). None: not classifier-shaped."""
    shape = tuple(g.tensors.get(out) or np.shape(g.graph.get("reference", {}).get(out, ())))
    axis = next((d["axis"] for d in g.graph.get("decisions", {}).values() if d["of"] == out), None)
    if axis is None and len(shape) >= 2:
        axis = feature_axis(g, out)
    if axis is None or axis == 0:
        return class_axis(shape)
    return axis if shape[axis] is not None and shape[axis] >= 2 else None


def feature_axis(g: MemseGraph, tensor: str, steps: int = 8) -> int | None:
    """The axis of `tensor` holding a crossbar layer's output features (a convolution's channels, a Linear's last
    axis), followed back through up to `steps` ops of one signal that keep its shape (a Relu, a Softmax) or
    transpose it; None when another op comes first, or for a layer whose outputs are columns (W @ x)."""
    layers = {layer.output: layer for layer in g.layers.values()}
    producers = g.graph.get("producers", {})
    perms = []                                        # the Transposes met, the output's first
    for _ in range(steps):
        if tensor in layers:
            geometry, rank = layers[tensor].geometry, len(g.tensors.get(tensor) or ())
            if isinstance(geometry, ConvGeometry):
                axis = 1
            elif rank and not getattr(geometry, "out_columns", False):
                axis = rank - 1
            else:
                return None
            for perm in reversed(perms):              # output axis i holds input axis perm[i]
                axis = perm.index(axis)
            return axis
        if tensor not in producers:
            return None
        node = g.nodes[producers[tensor]]
        signals = [t for t in node.get("inputs", ()) if t in producers]
        if len(signals) != 1:
            return None
        if node.get("op") == "Transpose":
            rank = len(g.tensors.get(tensor) or ())
            perms.append(list(node["attrs"].get("perm") or range(rank - 1, -1, -1)))
        elif g.tensors.get(signals[0]) != g.tensors.get(tensor):
            return None
        tensor = signals[0]
    return None


def instance_shape(shape: tuple, axis: int) -> tuple:
    """(batch, *positions): a classifier output's shape without its class axis (the labels' shape)."""
    return tuple(shape[:axis]) + tuple(shape[axis + 1:])


def scores_labels(labels: np.ndarray | None, shape: tuple, axis: int) -> bool:
    """Whether `labels` are classes of an output of `shape` (classes on `axis`): one per sample and position, within
    range (checked_labels refuses labels that fit no output; another output may not take them)."""
    return labels is not None and labels.shape == instance_shape(shape, axis) and labels.max() < shape[axis]


def instances(a: np.ndarray, axis: int) -> np.ndarray:
    """(N, P, C): a classifier output with its classes (`axis`) last and its positions flattened (P = 1 for (N, C))."""
    moved = np.moveaxis(a, axis, -1)
    return moved.reshape(moved.shape[0], -1, moved.shape[-1])


def from_instances(a: np.ndarray, shape: tuple, axis: int) -> np.ndarray:
    """The inverse of `instances` for an output of `shape`."""
    moved = tuple(shape[:axis]) + tuple(shape[axis + 1:]) + (shape[axis],)
    return np.moveaxis(a.reshape(moved), -1, axis)


def keep_probability(mean: np.ndarray, var: np.ndarray, cov_top: np.ndarray, top: np.ndarray, k: int = 1) -> np.ndarray:
    """P(`top[n]` stays among the chip's k highest classes) per sample under the one-factor model (k = 1: stays its
    argmax): mean, var, cov_top (N, C), cov_top[n, j] = Cov(y_top, y_j) (its entry at the top class is ignored).
    Given y_top, each other class beats it independently with probability q_j; the top stays when fewer than k do."""
    rows = np.arange(len(mean))
    mu_k, v_k = mean[rows, top][:, None], np.maximum(var[rows, top], TINY)[:, None]
    beta = cov_top / v_k                                                   # regression of y_j on y_k
    spread = np.sqrt(np.maximum(var - cov_top ** 2 / v_k, TINY))           # conditional std of y_j
    y_k = mu_k + np.sqrt(v_k) * NODES[None, :]                              # (N, Z)
    cond_mean = mean[:, None, :] + beta[:, None, :] * (y_k - mu_k)[:, :, None]
    z = (y_k[:, :, None] - cond_mean) / spread[:, None, :]                 # (N, Z, C)
    if k == 1:
        p = norm_cdf(z)
        p[rows, :, top] = 1.0
        return p.prod(axis=2) @ WEIGHTS
    q = norm_cdf(-z)                                                        # P(y_j > y_top | y_top)
    q[rows, :, top] = 0.0
    return fewer_than(q, k) @ WEIGHTS


def fewer_than(q: np.ndarray, k: int) -> np.ndarray:
    """P(fewer than k of independent events happen), their probabilities q (..., C) on the last axis: the
    coefficients below z^k of prod_j (1 - q_j + q_j z) (a Poisson-binomial law), multiplied pairwise in a tree of
    log2(C) array products, each truncated at degree k - 1."""
    poly = np.zeros(q.shape + (k,))
    poly[..., 0] = 1.0 - q
    if k > 1:
        poly[..., 1] = q
    while poly.shape[-2] > 1:
        if poly.shape[-2] % 2:                     # an odd factor out: pair it with the constant polynomial 1
            one = np.zeros(poly.shape[:-2] + (1, k))
            one[..., 0] = 1.0
            poly = np.concatenate([poly, one], axis=-2)
        a, b = poly[..., 0::2, :], poly[..., 1::2, :]
        product = np.zeros(a.shape)
        for i in range(k):                         # degree i of a times every degree of b that stays below k
            product[..., i:] += a[..., i:i + 1] * b[..., : k - i]
        poly = product
    return poly[..., 0, :].sum(axis=-1)


def competitors(mean: np.ndarray, var: np.ndarray, top: np.ndarray, count: int) -> np.ndarray:
    """(N, count) class indices, per sample the `count` others with the smallest margin over its spread."""
    rows = np.arange(len(mean))
    z = (mean[rows, top][:, None] - mean) / np.sqrt(np.maximum(var[rows, top][:, None] + var, TINY))
    z[rows, top] = np.inf
    return np.argsort(z, axis=1, kind="stable")[:, :count]


def margin_covariances(g: MemseGraph, out: str, axis: int, top: np.ndarray, mean: np.ndarray, var: np.ndarray,
                       rng: np.random.Generator, swept: int = SWEPT, budget: int | None = None) -> np.ndarray:
    """Cov(y_top, y_j) per instance (N, P, C) for the `swept` most threatening competitors (0 elsewhere): one
    backward sweep of the sensitivity pass per competitor rank and swept position, seeded with e_top - e_j there
    per sample; positions past the sweep budget (POSITION_SWEEPS by default) by correlation (`_transferred`).
    `out`'s classes on `axis`; top (N, P), mean and var (N, P, C) its instances."""
    from passes.sensitivity import chip_backward, spread_per_sample
    shape = np.shape(g.graph["moments"][out][0])
    n, positions, c = var.shape
    rows = np.arange(n)
    order = [u for u in schedule(g) if u in g.graph["linearization"]]
    budget = POSITION_SWEEPS if budget is None else budget
    per_position = min(swept, c - 1)
    if positions > 1 and positions * per_position > budget:
        per_position = 1
    chosen = np.unique(np.linspace(0, positions - 1, min(positions, max(1, budget // per_position)))
                       .round().astype(int)) if positions > 1 else np.array([0])
    cov = np.zeros((n, positions, c))
    for p in chosen:
        for rank in competitors(mean[:, p], var[:, p], top[:, p], per_position).T:
            probe = np.zeros((n, positions, c))
            probe[rows, p, top[:, p]], probe[rows, p, rank] = 1.0, -1.0
            margin_var = np.zeros(n)

            def add(unit, source, per_sample, acc=margin_var):
                acc += spread_per_sample(per_sample, n)
            chip_backward(g, order, {out: from_instances(probe, shape, axis)}, add, rng=rng)
            cov[rows, p, rank] = (var[rows, p, top[:, p]] + var[rows, p, rank] - margin_var) / 2
    if len(chosen) < positions:
        cov = _transferred(cov, var, top, chosen)
    return cov


def _transferred(cov: np.ndarray, var: np.ndarray, top: np.ndarray, chosen: np.ndarray) -> np.ndarray:
    """cov with the positions not in `chosen` filled from the swept ones' correlations: the mean Corr(y_k, y_j)
    of each pair (top class k, competitor j) there (the mean over every swept pair where a pair was not swept)."""
    c = var.shape[-1]
    scale = np.sqrt(np.maximum(np.take_along_axis(var, top[..., None], -1) * var, TINY))      # (N, P, C)
    swept = cov[:, chosen] != 0
    corr = np.where(swept, cov[:, chosen] / scale[:, chosen], 0.0)
    pairs = (np.broadcast_to(top[:, chosen, None], swept.shape)[swept], np.nonzero(swept)[2])
    total, count = np.zeros((c, c)), np.zeros((c, c))
    np.add.at(total, pairs, corr[swept])
    np.add.at(count, pairs, 1.0)
    overall = total.sum() / count.sum() if count.sum() else 0.0
    table = np.where(count > 0, total / np.maximum(count, 1.0), overall)
    np.fill_diagonal(table, 0.0)
    filled = table[top] * scale
    filled[:, chosen] = cov[:, chosen]
    return filled


def agreement_at(g: MemseGraph, out: str, **point) -> dict[str, float]:
    """`top1_agreement` (and `accuracy`, with labels; and the top-k ones, with a k) of `out` at another device point, in microseconds: the
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
    axis = output_class_axis(g, out)
    mean, var = (instances(a, axis) for a in g.graph["moments"][out][:2])
    reference = instances(g.graph["reference"][out], axis)
    mean = reference + shift * (mean - reference)
    return {key: _agreement(mean, ratio * var, ratio * cov, classes, k)
            for key, (classes, cov, k) in g.graph["agreement"][out].items()}


# elements of one (instances, nodes, classes[, k]) block of `keep_probability`: a per-pixel output has many instances
CHUNK = 1 << 22


def _agreement(mean: np.ndarray, var: np.ndarray, cov: np.ndarray, classes: np.ndarray, k: int = 1) -> float:
    """The mean over instances of P(classes among the chip's top k); arrays (N, P, C), classes (N, P)."""
    c = mean.shape[-1]
    flat, targets = [a.reshape(-1, c) for a in (mean, var, cov)], classes.reshape(-1)
    step = max(1, CHUNK // (len(NODES) * c * k))
    return float(np.concatenate([keep_probability(*(a[i: i + step] for a in flat), targets[i: i + step], k)
                                 for i in range(0, len(targets), step)]).mean())


def output_topk(g: MemseGraph, out: str) -> int | None:
    """k of the top-k agreement and accuracy of classifier output `out`: the K of an output TopK taken off it
    (memse_compiler/decisions.py), else the `topk` option (g.graph["options"]); None without one, or when it
    leaves no class out or is 1 (the top-1 figures)."""
    k = next((d["k"] for d in g.graph.get("decisions", {}).values() if d["of"] == out and d["op"] == "TopK"),
             g.graph.get("options", {}).get("topk"))
    axis = output_class_axis(g, out)
    if k is None or axis is None:
        return None
    return int(k) if 1 < int(k) < np.shape(g.graph["reference"][out])[axis] else None


def checked_topk(g: MemseGraph, k) -> None:
    """The `topk` option: an integer of at least 2, below some classifier output's number of classes."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 2:
        raise MemseInputError(f"topk must be an integer of at least 2 (top-1 is always reported), got {k!r}")
    sizes = [np.shape(g.graph["reference"][o])[axis] for o in g.graph["outputs"]
             if (axis := output_class_axis(g, o)) is not None]
    if not sizes:
        raise MemseInputError(f"topk {k}: no output is classifier-shaped (batch, classes)")
    if k >= max(sizes):
        raise MemseInputError(f"topk {k}: the classifier outputs have at most {max(sizes)} classes, so every class "
                              f"is in the top {k}")


def beaten(scores: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """How many classes score strictly above `classes` per instance: scores (..., C), classes (...)."""
    return (scores > np.take_along_axis(scores, classes[..., None], axis=-1)).sum(axis=-1)


class Top1Agreement(Pass):
    """Writes into the analysis entry of every classifier-shaped output `top1_agreement`, the mean over samples of
    P(the chip's argmax is the float model's); with labels (g.graph["labels"], compile_model's `labels`, the CLI's
    --labels) also `accuracy_float`, the float model's accuracy, and `accuracy`, the chip's expected accuracy (the
    mean of P(argmax = label)). With a k (`output_topk`: an output TopK's, or the `topk` option) also `topk`,
    `topk_agreement` (P(the float model's class stays among the chip's top k)) and, with labels, `topk_accuracy_float`
    and `topk_accuracy` (P(the label is among them)), from the same covariances."""
    name = "top1_agreement"

    def apply(self, g: MemseGraph, ctx: PassContext) -> MemseGraph:
        from passes.moments import LARGE_MODEL_MACS, analysis_options, model_macs
        if not ctx.options.get("agreement", True):
            return g
        if ctx.options.get("topk") is not None:
            checked_topk(g, ctx.options["topk"])
        t0 = time.perf_counter()
        # a sweep costs as much as one of the sensitivity pass's: on large models only the closest competitor
        # (the ResNet-18 shape: 4 sweeps took 13.8 s, more than the sensitivity pass's 12.7 s)
        large = model_macs(g) >= LARGE_MODEL_MACS
        swept = 0 if not analysis_options(ctx.options)["sensitivity"] else (1 if large else SWEPT)
        budget = 1 if large else POSITION_SWEEPS       # a per-position output of a large model: one position swept
        rng = np.random.default_rng(ctx.options.get("seed", 0) + 1)
        labels = g.graph.get("labels")
        for out in g.graph["outputs"]:
            axis = output_class_axis(g, out)
            if axis is None:
                continue
            reference = instances(g.graph["reference"][out], axis)
            entry = g.graph["analysis"]["outputs"][out]
            k = output_topk(g, out)
            top = np.argmax(reference, axis=-1)
            targets = {"top1_agreement": top}
            if scores_labels(labels, g.graph["reference"][out].shape, axis):
                classes = labels.reshape(top.shape)
                entry["accuracy_float"] = float(np.mean(top == classes))
                targets["accuracy"] = classes
                if k:
                    entry["topk_accuracy_float"] = float(np.mean(beaten(reference, classes) < k))
            state = g.graph.setdefault("agreement", {})[out] = {}
            mean, var = (instances(a, axis) for a in g.graph["moments"][out][:2])
            if k:
                entry["topk"] = k
            for key, classes in targets.items():
                cov = (margin_covariances(g, out, axis, classes, mean, var, rng, swept, budget) if swept
                       else np.zeros_like(var))
                entry[key] = _agreement(mean, var, cov, classes)
                state[key] = (classes, cov, 1)     # for agreement_at: another device point, from the closed form
                if k:   # the competitors that most threaten the top-1 class threaten its place in the top k too
                    topk_key = "topk_agreement" if key == "top1_agreement" else "topk_accuracy"
                    entry[topk_key] = _agreement(mean, var, cov, classes, k)
                    state[topk_key] = (classes, cov, k)
        timing = g.graph.setdefault("timing", {})
        timing["analysis_s"] = timing.get("analysis_s", 0.0) + time.perf_counter() - t0
        return g
