"""Correlation-aware output variance by first-order sensitivities (DESIGN §5).

The diagonal forward pass (passes/moments.py) treats every element as independent, which misses the
correlations that dominate deep networks: one programmed kernel is reused at every conv position, a layer
mixes correlated errors (W Gamma W^T), residual branches meet again at an Add. This pass instead writes
each graph output, for one input sample, as a linear response to every independent noise source:

    Var(y_k) ~= sum_layers sum_w S_w (dy_k/dw)^2                    programming noise (shared weights)
              + sum_e inj_e (dy_k/dz_e)^2                              sources independent per element:
                                                                      read noise, ADC/DAC quantization,
                                                                      nonlinear residuals (and second-order
                                                                      S*v when there is no random chip)

with dy_k/dw the per-sample weight gradient (sum over conv positions of output sensitivity x input mean):
every shared-weight correlation is captured, and no covariance matrix is ever formed. The second-order
programming term dW * (input error) is coherent across positions too (dW is shared, and the input error is
correlated across positions): `chip_backward` runs each probe through a random chip, W_bar + r sqrt(S) with
Rademacher r, and through its mirror (-r). A probe then also carries b = (r sqrt(S))^T g to the layer input,
and the pair gives Var(g^T e) + sum_{o,j} S_oj Var(sum_p g_po e_pj) (the cross terms cancel): the exact
second-order term, without a nested sweep. Sensitivities come from one backward pass per output element
through the Bussgang gains E[f'(X)] of the forward pass, or, when an output has more than `max_exact`
elements per sample, from probes u that estimate the mean variance without bias (E_u (u^T J)^2 = sum_k
J_k^2): one per position with random signs over samples and channels when the positions are few enough,
else Rademacher vectors.
"""
from __future__ import annotations

import time
from collections import defaultdict

import numpy as np

from memse_compiler.ir import MemseGraph, schedule
from memse_compiler.ir.crossbar import crossbar_uses
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


def shared_crossbars(g: MemseGraph) -> set[str]:
    """The crossbars that several ops drive (their programming noise is common to every use)."""
    return {name for name, uses in crossbar_uses(g.layers.values()).items() if len(uses) > 1}


def needs_chip(cm: CrossbarMoments) -> bool:
    """Whether a layer's second-order programming term needs the random chip: when its weights are shared by
    several positions. With one position per vector the forward's independent S v is right, given the
    input variance v (in the refined mode, v carries the correlation-aware refinement), so a network of
    such layers (an MLP) keeps one sweep per probe; otherwise every layer runs through the chip, which is
    exact in the linear model whatever v the forward has."""
    return cm.mu_vec.shape[1] > 1 and cm.has_programming


def sweeps_use_chip(g: MemseGraph, lin: dict) -> bool:
    """Whether `chip_backward` runs its sweeps through a random chip: some linearized layer needs one."""
    shared = shared_crossbars(g)
    return any(needs_chip(lin[u]) or (g.layers[u].crossbar in shared and lin[u].has_programming)
               for u in lin if u in g.layers)


def sweep_dtype(g: MemseGraph) -> type:
    """The backward sweeps' precision: float32 on large models (option `sweep_dtype`: "auto", "float32",
    "float64"). A sweep is BLAS products and memory-bound element-wise work, about twice as fast in single
    precision (ResNet-18 shape: 2.5-3.0 -> 1.3 s a probe); what it gives is a Rademacher estimate with a few %
    noise, or sums whose float32 rounding is ~1e-6 relative. Smaller models keep float64 (they gain little)."""
    choice = (g.graph.get("options") or {}).get("sweep_dtype", "auto")
    if choice == "auto":
        from passes.moments import LARGE_MODEL_MACS, model_macs
        return np.float32 if model_macs(g) >= LARGE_MODEL_MACS else np.float64
    if choice not in ("float32", "float64"):
        raise ValueError(f"sweep_dtype must be auto, float32 or float64, not {choice!r}")
    return np.float32 if choice == "float32" else np.float64


class RandomChip:
    """The weights a backward sweep runs through to carry the second-order programming term: W_bar + r sqrt(S),
    r = +-1 per weight, drawn once per layer; `mirrored()` is the same chip with -r."""

    def __init__(self, rng: np.random.Generator, signs: dict | None = None, sign: float = 1.0):
        self.rng, self.signs, self.sign = rng, {} if signs is None else signs, sign

    def matrix(self, unit: str, cm: CrossbarMoments) -> np.ndarray:
        bits = self.signs.get(unit)
        if bits is None:
            raw = np.frombuffer(self.rng.bytes(-(-cm.w_bar.size // 8)), np.uint8)
            bits = self.signs[unit] = np.unpackbits(raw, count=cm.w_bar.size).reshape(cm.w_bar.shape)
        r = bits.astype(cm.w_bar.dtype) * (2.0 * self.sign) - self.sign
        return cm.w_bar + r * np.sqrt(cm.w_var)

    def mirrored(self) -> "RandomChip":
        return RandomChip(self.rng, self.signs, -self.sign)


def weight_terms(layer, dw2: np.ndarray, w_var: np.ndarray, coefs: bool) -> dict[str, np.ndarray]:
    """Per sample, from the squared weight gradients dw2 (N, G, O, Jb): sum_w S_w dw^2 ("programming") and, for
    the closed form, sum_w dw^2 ("w2") and sum_w dw^2 / c^2 ("w2_over_c2")."""
    flat = dw2.reshape(dw2.shape[0], -1)

    def weighted(w):       # a BLAS product: in float32 sweeps einsum's running sum was off by 2e-4 on ResNet layers
        return flat @ np.broadcast_to(w, layer.g_plus.shape).astype(flat.dtype, copy=False).reshape(-1)
    terms = {"programming": weighted(w_var)}
    if coefs:
        terms["w2"] = flat.sum(axis=1)
        terms["w2_over_c2"] = weighted(1.0 / layer.scale_c ** 2)
    return terms


def outer_weight_terms(layer, g_t: np.ndarray, mu: np.ndarray, w_var: np.ndarray, coefs: bool) -> dict:
    """`weight_terms` of a layer with one vector per sample, dw[n, g, o, j] = g_t[n, g, tile(j), o] mu[n, g, j],
    without forming dw: sum_w S_w dw^2 = sum_{tile, o} g_t^2 sum_{j in tile} S_oj mu_j^2, one product per tile."""
    mu2 = layer.split_rows(mu * mu)                                                    # N, G, R, rows
    s = layer.split_rows(np.broadcast_to(w_var, layer.g_plus.shape))                   # G, O, R, rows
    inner = np.matmul(np.ascontiguousarray(mu2.transpose(1, 2, 0, 3)),
                      np.ascontiguousarray(s.transpose(0, 2, 3, 1)))                  # G, R, N, O
    g2 = g_t * g_t                                                                     # N, G, R, O
    terms = {"programming": np.einsum("ngro,grno->n", g2, inner)}
    if coefs:
        m2 = mu2.sum(axis=-1)                                                          # N, G, R
        c2 = np.broadcast_to(1.0 / layer.scale_c ** 2, (layer.groups, layer.outs, 1))[..., 0]   # G, O
        terms["w2"] = np.einsum("ngro,ngr->n", g2, m2)
        terms["w2_over_c2"] = np.einsum("ngro,ngr,go->n", g2, m2, c2)
    return terms


def layer_backward(layer, cm: CrossbarMoments, gout: np.ndarray, add, coef=None,
                   chip: np.ndarray | None = None, shared: "SharedProgramming | None" = None) -> np.ndarray:
    """Sensitivity of one output probe through a crossbar layer. Adds the variance each source of the
    layer contributes (per sample) via `add(source, per_sample)`; returns the input sensitivity.
    chip: the random chip's weights to run through (the coherent second-order term); None: W_bar, and that
    term is taken as independent per position (the forward's S v). shared: the sweep's `SharedProgramming`,
    for a layer driving a crossbar that other ops drive too."""
    g_y = layer.geometry.from_vectors_T(gout)                              # N, P, G, O
    n = g_y.shape[0]          # vectors' leading axis: the batch, except for W @ x (columns of x)
    g_ps = g_y[:, :, :, None, :] * cm.adc_gain                             # N, P, G, R, O
    g_ps = np.broadcast_to(g_ps, g_y.shape[:3] + (layer.row_tiles, layer.outs))
    if cm.mu_vec.shape[1] == 1:
        # one vector per sample: dw = g (x) mu per row tile, whose weighted squares are products of (N, O) arrays
        own = outer_weight_terms(layer, g_ps[:, 0], cm.mu_vec[:, 0], cm.w_var, coef is not None)
        if shared is not None:
            shared.collect_outer(layer.crossbar, g_ps[:, 0], cm.mu_vec[:, 0], cm.w_var)
    else:
        # per-sample weight gradient: sum over positions of sensitivity x mean input, per row tile
        dw2 = layer.weight_grads(g_ps, cm.mu_vec)                              # N, G, O, Jb
        if shared is not None:
            shared.collect(layer.crossbar, dw2, cm.w_var)
        np.square(dw2, out=dw2)              # in place: on ResNet-sized layers a fresh temporary costs more
        own = weight_terms(layer, dw2, cm.w_var, coef is not None)
    add("programming", own["programming"])
    y2 = g_y * g_y                 # every row tile of an output has its sensitivity: injections are tile sums
    if coef is not None:
        # unit coefficients of the closed form (passes/closed_form.py), per unit of each device parameter
        coef("w2", own["w2"])                                                  # sum_w (dy/dw)^2
        coef("w2_over_c2", own["w2_over_c2"])                                  # x 2 sigma^2 (unclipped)
        coef("read_unit", _sum_per_sample(y2 * cm.read_unit, n))              # x sigma_r^2
        if layer.adc_range is not None:
            adc_r2 = (layer.per_output(layer.adc_range) ** 2).sum(axis=1)     # G, O: summed over row tiles
            coef("adc_unit", _sum_per_sample(y2 * adc_r2 / 12.0, n))           # x 1 / (2^(b-1) - 1)^2
        else:
            coef("adc_unit", np.zeros(n))
    through = cm.w_bar if chip is None else chip
    if chip is None:
        add("programming", _sum_per_sample(y2 * cm.inj_programming, n))
    if cm.has_read:
        add("read", _sum_per_sample(y2 * cm.inj_read, n))
    if cm.has_adc:
        add("adc", _sum_per_sample(y2 * cm.inj_adc, n))
    g_vec = layer.partial_sums_T(np.ascontiguousarray(g_ps), through, rows=layer.weight.shape[2])
    g_dac = layer.geometry.to_vectors_T(g_vec, cm.mean_in.shape)
    if cm.has_dac:
        add("dac", _sum_per_sample(g_dac * g_dac * cm.dac_resid, g_dac.shape[0]))
    if coef is not None:
        coef("dac_unit", _sum_per_sample(g_dac * g_dac, g_dac.shape[0]) * layer.dac_range ** 2 / 12.0)  # x 1 / levels^2
    if shared is not None:
        shared.own(layer.crossbar, own)
    return g_dac * cm.dac_gain


class SharedProgramming:
    """One sweep's programming terms of the crossbars several ops drive. Their noise is common to the uses: the
    variance is S (sum_uses dw)^2, not sum_uses S dw^2. Each use adds its own square as any layer does (so that a
    use's own share stays its own, as the refinement needs); `finish` adds the cross terms,
    S (sum dw)^2 - sum_uses S dw^2, to the crossbar's first layer in graph order (no other use is upstream of it,
    so a refinement probe from its output, which leaves its own noise out, has no cross term to lose)."""

    def __init__(self, g: MemseGraph):
        self.g = g
        self.dw: dict[str, np.ndarray] = {}             # crossbar -> sum over its uses of the weight gradient
        self.outer: dict[str, list] = {}                # crossbar -> its uses' (g_t, mu) with dw = g_t (x) mu
        self.own_terms: dict[str, dict[str, np.ndarray]] = {}   # crossbar -> term -> sum of the uses' own
        # crossbar -> its weights' programming variance (any use's: the uses are one array; the crossbar's first
        # layer need not be linearized yet when a refinement probe runs)
        self.w_var: dict[str, np.ndarray] = {}

    def collect(self, crossbar: str, dw: np.ndarray, w_var: np.ndarray) -> None:
        self.w_var[crossbar] = w_var
        if crossbar in self.dw:
            self.dw[crossbar] += dw
        else:
            self.dw[crossbar] = dw.copy()

    def collect_outer(self, crossbar: str, g_t: np.ndarray, mu: np.ndarray, w_var: np.ndarray) -> None:
        """A use with one vector per sample: its gradient g_t (N, G, R, O) (x) mu (N, G, Jb), kept as factors."""
        self.w_var[crossbar] = w_var
        self.outer.setdefault(crossbar, []).append((g_t, mu))

    def _summed_outer(self, key: str) -> np.ndarray:
        """sum_uses g_t (x) mu: per row tile, one batched product over the uses."""
        layer, uses = self.g.layers[key], self.outer[key]
        g_t = np.stack([u[0] for u in uses], axis=-1)                      # N, G, R, O, U
        mu = np.stack([u[1] for u in uses], axis=-2)                       # N, G, U, Jb
        total = np.empty(mu.shape[:2] + (layer.outs, mu.shape[-1]))
        for t, sl in enumerate(layer.row_slices()):
            np.matmul(g_t[:, :, t], mu[..., sl], out=total[..., sl])
        return total

    def own(self, crossbar: str, terms: dict[str, np.ndarray]) -> None:
        acc = self.own_terms.setdefault(crossbar, {})
        for name, per_sample in terms.items():
            acc[name] = acc[name] + per_sample if name in acc else per_sample

    def finish(self, add, coef=None) -> None:
        for key in {**self.dw, **self.outer}:
            layer, own = self.g.layers[key], self.own_terms[key]
            total = self.dw.get(key)
            if key in self.outer:
                total = self._summed_outer(key) if total is None else total + self._summed_outer(key)
            np.square(total, out=total)
            terms = weight_terms(layer, total, self.w_var[key], coef is not None)
            add(key, "programming", terms["programming"] - own["programming"])
            if coef is not None:
                coef(key, "w2", terms["w2"] - own["w2"])
                coef(key, "w2_over_c2", terms["w2_over_c2"] - own["w2_over_c2"])


def backward(g: MemseGraph, order: list[str], probe: dict[str, np.ndarray], add, coef=None,
             lin: dict | None = None, moments: dict | None = None, chip: RandomChip | None = None) -> None:
    """One backward sweep from `probe` (tensor -> sensitivity) through the units in reverse `order`.
    `add(unit, source, per_sample_variance)`; `coef(unit, name, per_sample)` receives the closed form's
    unit coefficients (None: not computed); `chip`: run through that random chip (see `layer_backward`)."""
    lin = g.graph["linearization"] if lin is None else lin
    moments = g.graph["moments"] if moments is None else moments
    consts = g.graph["constants"]
    dtype = sweep_dtype(g)
    grads = {t: np.asarray(p, dtype) for t, p in probe.items()}
    shared, programming = shared_crossbars(g), SharedProgramming(g)
    for unit in reversed(order):
        if unit in g.layers:
            layer = g.layers[unit]
            gout = grads.pop(layer.output, None)
            if gout is None:
                continue
            cm = lin[unit].in_dtype(dtype)
            gin = layer_backward(layer, cm, gout, lambda s, v, u=unit: add(u, s, v),
                                 None if coef is None else (lambda s, v, u=unit: coef(u, s, v)),
                                 chip.matrix(layer.crossbar, cm) if chip is not None and cm.has_programming else None,
                                 programming if layer.crossbar in shared else None)
            grads[layer.input] = grads[layer.input] + gin if layer.input in grads else gin
            continue
        d = g.nodes[unit]
        gouts = [grads.pop(t, None) for t in d["outputs"]]
        if all(x is None for x in gouts):
            continue
        rule, lz = rule_for(d["op"]), lin[unit].in_dtype(dtype)
        for go, resid in zip(gouts, lz.residual):
            if go is not None and resid is not None and np.any(resid):
                add(unit, "nonlinearity", _sum_per_sample(go * go * resid, go.shape[0]))
        in_shapes = [moments[t][0].shape if t in moments else np.shape(consts[t]) for t in d["inputs"]]
        gins = rule.vjp(d["attrs"], lz, gouts, in_shapes)
        for t, gi in zip(d["inputs"], gins):
            if gi is None or t in consts:
                continue
            grads[t] = grads[t] + gi if t in grads else gi
    programming.finish(add, coef)


def chip_backward(g: MemseGraph, order: list[str], probe: dict[str, np.ndarray], add, coef=None,
                  lin: dict | None = None, moments: dict | None = None,
                  rng: np.random.Generator | None = None) -> None:
    """`backward` through a random chip and through its mirror (-r), each weighted 1/2: the cross terms
    between the probe's sensitivity and the second-order part cancel exactly, leaving Var(g^T e) + Var(b^T e)
    (module docstring). rng None, or no layer shares its weights across positions: one sweep through W_bar."""
    lin = g.graph["linearization"] if lin is None else lin
    if rng is None or not sweeps_use_chip(g, lin):
        backward(g, order, probe, add, coef, lin=lin, moments=moments)
        return
    chip = RandomChip(rng)

    def half(f):
        return lambda unit, name, per_sample: f(unit, name, 0.5 * per_sample)
    for c in (chip, chip.mirrored()):
        backward(g, order, probe, half(add), None if coef is None else half(coef), lin=lin, moments=moments, chip=c)


def probes_for(shape: tuple, max_exact: int, n_probes: int, rng: np.random.Generator) -> tuple[list, int]:
    """Output probes and how many estimates of the whole trace they sum to: ([(probe, element index or
    None)], traces).

    * at most `max_exact` elements per sample: one-hot per element (exact, one trace);
    * positions (axes 2+) at most `n_probes`: one probe per position, random signs over samples and
      channels there, repeated n_probes // positions times. The errors of one channel are strongly
      correlated across positions (shared weights), which is what makes Rademacher probes noisy; these
      probes never pair two positions;
    * otherwise `n_probes` Rademacher vectors."""
    k = int(np.prod(shape[1:]))
    if k <= max_exact:
        out = []
        for i in range(k):
            p = np.zeros((shape[0], k))
            p[:, i] = 1.0
            out.append((p.reshape(shape), i))
        return out, 1
    positions = int(np.prod(shape[2:])) if len(shape) > 2 else 1
    if 1 < positions <= n_probes:
        rounds = n_probes // positions
        out = []
        for _ in range(rounds):
            for pos in range(positions):
                p = np.zeros(shape[:2] + (positions,))
                p[:, :, pos] = rng.choice([-1.0, 1.0], size=shape[:2])
                out.append((p.reshape(shape), None))
        return out, rounds
    return [(rng.choice([-1.0, 1.0], size=shape), None) for _ in range(n_probes)], n_probes


class Sensitivity(Pass):
    """Replaces each graph output's diagonal variance by the correlation-aware one; records the share of
    every noise source and every layer in ``analysis.outputs[name]``."""
    name = "sensitivity"

    def __init__(self, max_exact: int = 64, probes: int | None = None):
        # probes=None: 16 Rademacher probes (each a backward pass, or two through a random chip and its
        # mirror); 4 on large models, where 4 seeds of the ResNet-18 shape agreed within 3.5%; more on an
        # output with few (sample, channel) blocks (moments.probes_for_tensor), whose probes are noisier
        self.max_exact, self.probes_option = max_exact, probes

    def apply(self, g: MemseGraph, ctx: PassContext) -> MemseGraph:
        from passes.moments import LARGE_MODEL_MACS, analysis_options, model_macs, probes_for_tensor
        if not analysis_options(ctx.options)["sensitivity"]:
            return g
        fixed = self.probes_option or ctx.options.get("probes")
        self.probes = int(fixed or (16 if model_macs(g) < LARGE_MODEL_MACS else 4))
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

            n_probes = self.probes if fixed else probes_for_tensor(mean.shape, self.probes)
            probes, traces = probes_for(mean.shape, self.max_exact, n_probes, rng)
            for probe, idx in probes:
                acc = np.zeros(n)

                def add(unit, source, per_sample, acc=acc):
                    s = float(per_sample.sum())
                    by_unit_source[unit, source] += s
                    acc += spread_per_sample(per_sample, n)
                    by_source[source] += s
                    by_unit[unit] += s

                def coef(unit, name, per_sample):
                    by_unit_source[unit, "_" + name] += float(per_sample.sum())
                chip_backward(g, order, {out: probe}, add, coef, rng=rng)
                total += acc
                if exact:
                    per_elem[:, idx] = acc
            norm = n * k * traces   # -> mean over samples and elements
            variance = float(total.sum() / norm)
            b2 = float(np.mean((mean - ref[out]) ** 2))
            entry = analysis["outputs"][out]
            entry.update(mse=b2 + variance, bias2=b2, variance=variance, method="sensitivity",
                         probes=None if exact else len(probes),
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
