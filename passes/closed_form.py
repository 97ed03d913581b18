"""Closed form of each output's MSE in the device parameters (DESIGN §5), from the sensitivity pass:

    MSE = C + V + beta V^p + 2 X s + E s^2 + levels_shift(L)
            + sum_l Q_l (Wmax_l / (L0 - 1))^2 + sum_l D_l / (2^(b_adc - 1) - 1)^2 + sum_l E_l / n_dac(b_dac)^2
    V   = sum_l g_l [A_l (sigma Wmax_l / G_l)^2 kappa_l(sigma, G_l) + B_l (sigma_r Wmax_l / G_l)^2]
    s   = sum_l shrink_l(sigma, G_l)

A_l: programming noise (with the second-order S*v term) and B_l: read noise, measured at the compiled point;
Q_l: conductance quantization as uniform error (Delta = Wmax/(L0-1) per weight) at the compiled levels L0, and
levels_shift(L) its change at L levels: the weights re-rounded and the noiseless chip run (exact for the
rounding's deterministic effect on the mean, passes/closed_form_levels.py). Large models (> 1e9 MACs) keep the
uniform model in L instead: sum_l Q_l (Wmax_l / (L - 1))^2. D_l/E_l: ADC/DAC quantization (uniform model,
calibrated ranges). V also carries the nonlinearities' independent residual variance (in
proportion to V) and a fitted growth exponent; beta V^p is the nonlinearities' mean shift.

Clipping at 0 (DESIGN §4.4) is modelled per layer by `ClipModel` (passes/closed_form_clip.py), a histogram of
the layer's weights over the level of each pair's active device (the other one sits at g_min), with the clipped
Gaussian statistics of the devices evaluated per bin: exact sums over the weights at any sigma and G, since
levels are fractions of G.
kappa_l: the clipped variance relative to sigma^2 and to the compiled point (1 there). shrink_l: clipping also
shrinks the mean weights toward 0 (a device near g_min reads high on average). That biases the output in
proportion to s, not V: 2 X s + E s^2, its overlap X with the other mean shifts and its own size E, both
measured at the compiled point against forward passes without clipping. It also scales the noise of every layer
in series with the shrinking one (g_l: the product of (1 - shrink_m)^2 over the layers every path through l also
crosses, `series_layers`, relative to the compiled point). The laws in V (beta, p, the growth exponent) are
fitted on forward passes without clipping at noise x0.5, x1, x2, so that clipping, which changes along sigma
but also along G, is carried by the clip models alone. C holds the rest and anchors the form so it equals the
full analysis at the compiled point. `check_closed_form` (memse_compiler/explain.py) and
benchmarks/closed_form.py re-run the full analysis at other points to report how far the form is off.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import sympy as sp

from memse_compiler.ir import MemseGraph
from memse_compiler.ir.pass_base import Pass, PassContext
from passes.closed_form_clip import ClipModel, ClipStack
from passes.closed_form_levels import LevelsShift, levels_count
from passes.symbolic import b_adc, b_dac, levels, sigma, sigma_r

LEVELS_FUNCTION = "levels_shift"     # the sympy function of the levels direction (implemented by LevelsShift)


def g_symbol(layer: str) -> sp.Symbol:
    return sp.Symbol(f"G[{layer}]", positive=True)


def wmax_symbol(layer: str) -> sp.Symbol:
    return sp.Symbol(f"Wmax[{layer}]", positive=True)


def dac_levels(bits, signed: bool):
    return 2 ** (bits - 1) - 1 if signed else 2 ** bits - 1


@dataclass
class ClosedForm:
    """The fitted form of one output: coefficients per layer and the sympy expression."""
    output: str
    constant: float
    coefficients: dict[str, dict[str, float]]          # layer -> {A, B, Q, D, E, kappa}
    g0: dict[str, float]                               # compiled G per layer (mean over scale groups)
    wmax: dict[str, float]
    dac_signed: dict[str, bool]
    point: dict[str, float | None]                     # device parameters at the compiled point
    bias_law: tuple[float, float] = (0.0, 1.0)         # mean shift: beta * V^p, V = noise variance terms
    var_exponent: float = 1.0                          # variance grows as V0 (V/V0)^e (nonlinear gains)
    v0: float = 0.0
    nonlinear: float = 0.0                             # nonlinear residual variance at V0; scales like V
    clip: dict[str, ClipModel] = field(default_factory=dict)
    shift: tuple[float, float, float] = (0.0, 0.0, 0.0)   # clipping's output bias: overlap X, size E, shrink s0
    bias_floor: float = 0.0                            # bias^2 of the other mean shifts without noise
    series: dict[str, list[str]] = field(default_factory=dict)   # layer -> layers in series (`series_layers`)
    levels_shift: LevelsShift | None = None          # bias^2 change with the levels (else the uniform model)
    expression: sp.Expr = field(default=None)
    noise_expression: sp.Expr = field(default=None)      # V, the noise variance terms (a subtree of expression)

    def _clip_functions(self, index: int, name: str):
        """kappa_i(sigma, G, L) and shrink_i(sigma, G, L) of layer i as sympy functions implemented by its clip
        model (numbered: a layer name is not a valid function name; `explain` prints the legend)."""
        from sympy.utilities.lambdify import implemented_function
        model, s0, g0 = self.clip[name], self.point["sigma"], self.g0[name]
        kappa = implemented_function(f"kappa_{index}",
                                     lambda s, g, n: model.kappa(float(s), float(g), s0, g0, levels_count(n)))
        shrink = implemented_function(f"shrink_{index}",
                                      lambda s, g, n: model.stats(float(s), float(g), levels_count(n))[1])
        return kappa, shrink

    @cached_property
    def _clip_stack(self) -> tuple[list[str], ClipStack]:
        """The layers whose clipping is modelled, and their models stacked (the models do not change)."""
        clipped = [name for name in self.coefficients if self._uses_clip(name)]
        return clipped, ClipStack([self.clip[n] for n in clipped])

    def _uses_clip(self, name: str) -> bool:
        model = self.clip.get(name)
        return model is not None and model.at_point[0] > 0 and self.point["sigma"] > 0

    def build_expression(self) -> sp.Expr:
        terms = [sp.Float(self.constant, 6)]
        noise, shrink, keep, kappas = [], [], {}, {}
        for i, name in enumerate(self.coefficients):
            if self._uses_clip(name):
                kappas[name], shrink_fn = self._clip_functions(i, name)
                shrink.append(shrink_fn(sigma, g_symbol(name), levels))
                keep[name] = (1 - shrink[-1]) / sp.Float(1.0 - self.clip[name].at_point[1], 8)
        for name, c in self.coefficients.items():
            G, W = g_symbol(name), wmax_symbol(name)
            gain = sp.Mul(*[keep[m] for m in self.series.get(name, ()) if m in keep]) ** 2
            prog = sp.Float(c["A"], 6) * (sigma * W / G) ** 2
            if name in kappas:
                prog = prog * kappas[name](sigma, G, levels)
            noise.append(gain * prog)
            if c["B"]:
                noise.append(gain * sp.Float(c["B"], 6) * (sigma_r * W / G) ** 2)
            if self.levels_shift is None:
                terms.append(sp.Float(c["Q"], 6) * (W / (levels - 1)) ** 2)
            elif self.point["levels"]:     # the uniform term at the compiled levels; levels_shift(L) moves it
                terms.append(sp.Float(c["Q"], 6) * (W / (self.point["levels"] - 1)) ** 2)
            terms.append(sp.Float(c["D"], 6) / (2 ** (b_adc - 1) - 1) ** 2)
            terms.append(sp.Float(c["E"], 6) / dac_levels(b_dac, self.dac_signed[name]) ** 2)
        if self.levels_shift is not None:
            from sympy.utilities.lambdify import implemented_function
            terms.append(implemented_function(LEVELS_FUNCTION, self.levels_shift)(levels))
        v = self.noise_expression = sp.Add(*noise)
        beta, p = self.bias_law
        e = self.var_exponent
        var_part = v if e == 1.0 or self.v0 <= 0 else sp.Float(self.v0 ** (1 - e), 6) * v ** sp.Float(e, 4)
        if self.v0 > 0 and self.nonlinear:
            var_part = sp.Float(1.0 + self.nonlinear / self.v0, 6) * var_part
        law = sp.Float(beta, 6) * v ** sp.Float(p, 4)
        self.expression = sp.Add(*terms) + var_part + law
        x_over, e_own, s0 = self.shift
        if s0 > 0 and shrink:
            r = sp.Add(*shrink) / sp.Float(s0, 6)
            at_v0 = self.bias_floor + beta * self.v0 ** p
            grow = sp.sqrt((sp.Float(self.bias_floor, 6) + law) / sp.Float(at_v0, 6)) if at_v0 > 0 else 1
            self.expression += sp.Float(2 * x_over, 6) * r * grow + sp.Float(e_own, 6) * r ** 2
        return self.expression

    def point_symbols(self) -> dict[sp.Symbol, float]:
        """Values of every symbol of the expression at the compiled point (ideal converters and continuous
        levels as infinity, which zeroes their terms)."""
        p = self.point
        vals = {sigma: p["sigma"], sigma_r: p["sigma_r"], levels: p["levels"] or sp.oo,
                b_adc: p["adc_bits"] or sp.oo, b_dac: p["dac_bits"] or sp.oo}
        vals.update({g_symbol(k): v for k, v in self.g0.items()})
        vals.update({wmax_symbol(k): v for k, v in self.wmax.items()})
        return vals

    def terms(self, sigma_v=None, sigma_r_v=None, levels_v="keep", adc_bits="keep", dac_bits="keep",
              g_ranges: dict[str, float] | None = None) -> dict[str, float]:
        """Value of every source term (numerically, without sympy) at a device point; "keep" = compiled."""
        p = self.point
        s = p["sigma"] if sigma_v is None else sigma_v
        sr = p["sigma_r"] if sigma_r_v is None else sigma_r_v
        lv = p["levels"] if levels_v == "keep" else levels_v
        ab = p["adc_bits"] if adc_bits == "keep" else adc_bits
        db = p["dac_bits"] if dac_bits == "keep" else dac_bits
        out = {"programming": 0.0, "read": 0.0, "quantization": 0.0, "adc": 0.0, "dac": 0.0, "nonlinearity": 0.0,
               "mean_shift": 0.0}
        clipped, stack = self._clip_stack
        layer_stats = dict(zip(clipped, stack.stats(s, [(g_ranges or self.g0)[n] for n in clipped], levels_v)))
        keep = {name: (1.0 - st[1]) / (1.0 - self.clip[name].at_point[1]) for name, st in layer_stats.items()}
        shrink = sum(st[1] for st in layer_stats.values())
        for name, c in self.coefficients.items():
            G = (g_ranges or self.g0)[name]
            ratio = self.wmax[name] / G
            # the shrink of the layers in series scales this layer's inputs (upstream) and sensitivities
            # (downstream); relative to the compiled point
            gain = float(np.prod([keep[m] for m in self.series.get(name, ()) if m in keep])) ** 2
            if name in layer_stats:
                out["programming"] += gain * c["A"] * (p["sigma"] * self.wmax[name] / self.g0[name]) ** 2 * (
                    layer_stats[name][0] / self.clip[name].at_point[0])
            else:
                out["programming"] += gain * c["A"] * (s * ratio) ** 2
            out["read"] += gain * c["B"] * (sr * ratio) ** 2
            q_levels = p["levels"] if self.levels_shift is not None else lv     # levels_shift moves it below
            out["quantization"] += c["Q"] * (self.wmax[name] / (q_levels - 1)) ** 2 if q_levels else 0.0
            out["adc"] += c["D"] / (2 ** (ab - 1) - 1) ** 2 if ab else 0.0
            out["dac"] += c["E"] / dac_levels(db, self.dac_signed[name]) ** 2 if db else 0.0
        if self.levels_shift is not None and levels_v != "keep":
            out["quantization"] += self.levels_shift(levels_v)
        v = out["programming"] + out["read"]
        if self.v0 > 0 and v > 0 and self.var_exponent != 1.0:
            scale = (v / self.v0) ** (self.var_exponent - 1.0)   # nonlinear growth of the variance
            out["programming"] *= scale
            out["read"] *= scale
        if self.v0 > 0:     # the nonlinearities' residual variance is driven by the same noise
            out["nonlinearity"] = self.nonlinear * (out["programming"] + out["read"]) / self.v0
        beta, p_law = self.bias_law
        law = beta * v ** p_law
        out["mean_shift"] = law
        x_over, e_own, s0 = self.shift
        if s0 > 0:      # clipping's shrink bias, and its overlap with the other mean shifts (grown with them)
            r = shrink / s0
            at_v0 = self.bias_floor + beta * self.v0 ** p_law
            grow = np.sqrt(max(self.bias_floor + law, 0.0) / at_v0) if at_v0 > 0 else 1.0
            out["mean_shift"] += 2.0 * x_over * r * grow + e_own * r * r
        return out

    def mse(self, **point) -> float:
        return self.constant + sum(self.terms(**point).values())

    def sweep(self, param: str, values) -> np.ndarray:
        """Output MSE along one parameter: "sigma", "sigma_r", "levels", "adc_bits", "dac_bits", or
        "g_scale" (every layer's G multiplied by the value)."""
        out = []
        for v in np.asarray(values, dtype=float):
            if param == "g_scale":
                out.append(self.mse(g_ranges={k: g * v for k, g in self.g0.items()}))
            elif param in ("sigma", "sigma_r"):
                out.append(self.mse(**{f"{param}_v": v}))
            elif param == "levels":
                out.append(self.mse(levels_v=v))
            elif param in ("adc_bits", "dac_bits"):
                out.append(self.mse(**{param: int(v)}))
            else:
                raise ValueError(f"unknown sweep parameter '{param}'")
        return np.asarray(out)


def batch_subset(g: MemseGraph, limit: int = 32) -> int | None:
    """How many leading samples the cheap passes may use (None: all; only when the batch axis is the
    first axis of every crossbar layer's vectors)."""
    if any(getattr(layer.geometry, "in_columns", False) or getattr(layer.geometry, "out_columns", False)
           for layer in g.layers.values()):
        return None
    return limit


def noise_scaled_bias(g: MemseGraph, device, options: dict, k: float, clip: bool | None = None
                      ) -> dict[str, tuple[np.ndarray, float]]:
    """Per output: (mean - reference, mean variance) with every noise std multiplied by k, on a subset of the
    samples (one cheap forward moment pass: the closed form takes only the shape of the bias(V) law from these,
    anchored at the full analysis). clip: override `programming_noise.clip_at_zero`."""
    from passes.moments import forward_moments
    pn = device.programming_noise
    over = {"programming_noise.sigma": pn.sigma * k, "programming_noise.relative": pn.relative * k,
            "read_noise.sigma": device.read_noise.sigma * k}
    if clip is not None:
        over["programming_noise.clip_at_zero"] = clip
    n = batch_subset(g)
    # the per-layer refinement factors of the full analysis are reused: probing again costs O(layers^2)
    # backward sweeps per pass, and only the shape of bias(V) is taken from these passes
    moments = forward_moments(g, device.with_overrides(over), options, signals=False, samples=n,
                              refinement=g.graph.get("refinement"))[0]
    ref = g.graph["reference"]
    return {out: (moments[out][0] - ref[out][:n], float(np.mean(moments[out][1]))) for out in g.graph["outputs"]}


def fit_power_law(vs, ys) -> tuple[float, float, float]:
    """(b0, beta, p) of y(V) = b0 + beta V^p through three points (V ascending): the noise-induced mean shift
    grows like V (smooth nonlinearities, p = 2 for bias^2) to sqrt(V) (ReLU kinks near zero), the variance
    about like V; p is found by bisection within [0.5, 2.5]. No growth: (y at the middle point, 0, 1)."""
    (v1, v2, v3), (y1, y2, y3) = vs, ys
    d1, d2 = y2 - y1, y3 - y2
    if v1 <= 0 or not v1 < v2 < v3 or d1 <= 0 or d2 <= 0:
        return y2, 0.0, 1.0
    target = np.log(d2 / d1)

    def excess(q):   # log((v3^q - v2^q) / (v2^q - v1^q)) - target, increasing in q
        return np.log((v3 ** q - v2 ** q) / (v2 ** q - v1 ** q)) - target
    lo, hi = 0.5, 2.5
    if excess(lo) >= 0 or excess(hi) <= 0:
        q = lo if excess(lo) >= 0 else hi
    else:
        for _ in range(60):
            q = 0.5 * (lo + hi)
            lo, hi = (q, hi) if excess(q) < 0 else (lo, q)
        q = 0.5 * (lo + hi)
    beta = (d1 + d2) / (v3 ** q - v1 ** q)
    return y2 - beta * v2 ** q, float(beta), float(q)


def clip_models(g: MemseGraph, device) -> dict[str, ClipModel]:
    """Every linearized crossbar layer's clip model (the same for all outputs)."""
    lin = g.graph.get("linearization", {})
    return {name: ClipModel.of_layer(layer, lin[name], device) for name, layer in g.layers.items()
            if name in lin and float(np.max(layer.w_max)) > 0}


def base_form(g: MemseGraph, device, out: str, clip: dict[str, ClipModel]) -> ClosedForm:
    """The coefficients of every term at the compiled point, with the layers' clip models (`clip_models`) and the
    series layers; no laws, not anchored (`anchor`)."""
    sens = g.graph["sensitivity"][out]
    pn = device.programming_noise
    point = {"sigma": pn.sigma, "sigma_r": device.read_noise.sigma, "levels": device.conductance.levels,
             "adc_bits": device.adc.bits, "dac_bits": device.dac.bits}
    coefficients, g0, wmax, signed = {}, {}, {}, {}
    for name, layer in g.layers.items():
        def val(key):
            return sens.get(f"{name}|{key}", 0.0)
        G = float(np.mean(layer.g_range))
        W = float(np.max(layer.w_max))
        g0[name], wmax[name], signed[name] = G, W, bool(layer.dac_signed)
        unclipped = 2.0 * val("_w2_over_c2") * G ** 2 / W ** 2      # A_l without clipping or S*v
        a = val("programming") / (pn.sigma * W / G) ** 2 if pn.sigma > 0 else unclipped
        b = val("_read_unit") * G ** 2 / W ** 2
        q = val("_w2_over_c2") * G ** 2 / W ** 2 / 12.0
        coefficients[name] = {"A": a, "B": b, "Q": q, "D": val("_adc_unit"), "E": val("_dac_unit"),
                              "kappa": a / unclipped if unclipped > 0 else 1.0}
    cf = ClosedForm(out, 0.0, coefficients, g0, wmax, signed, point, clip=clip, series=series_layers(g, out))
    at_point = cf.terms()
    cf.v0 = at_point["programming"] + at_point["read"]
    cf.nonlinear = sum(v for k, v in sens.items() if k.endswith("|nonlinearity"))
    return cf


def unclipped_noise(cf: ClosedForm) -> float:
    """V at the compiled point as a device without clipping at 0 would give it: every layer's programming part
    with the clip-free variance of its devices, and without the clipping shrink of the layers in series with it
    (which scales its inputs and sensitivities). The clip models without clipping keep their clipped reference
    point, so the form's own terms give it."""
    free = dataclasses.replace(cf, clip={n: dataclasses.replace(m, clip=False) for n, m in cf.clip.items()})
    t = free.terms()
    return t["programming"] + t["read"]


def free_noise_scale(cf: ClosedForm) -> float:
    """The noise scale at which a pass without clipping has the compiled point's V (<= 1: clipping removes part
    of the devices' variance, 25-28 % on the digits models at the bundled rram point). The laws in V are sampled
    around it, since the nonlinear growth depends on how much noise reaches the nonlinearities: sampled at the
    device's own scales instead, the 27-point grid of benchmarks/closed_form.py was 2.3 % off on average, and
    the residual CNN +10.1 % at sigma x0.5 (now 1.8 % and +1.0 %)."""
    v_free = unclipped_noise(cf)
    return float(np.sqrt(cf.v0 / v_free)) if v_free > 0 and cf.v0 > 0 else 1.0


def fit_laws(cf: ClosedForm, extra: dict) -> None:
    """The laws in V from cheap passes, keyed by noise scale k (V = k^2 V0 there): extra = {"free": passes
    without clipping at three scales (run at k times `free_noise_scale`), "clip": the pass as the device is at
    k = 1} when the device clips; else only "clip", at three scales. The mean shift beta V^p and the growth
    exponent of the variance come from the three passes (without clipping when the device clips: along sigma,
    clipping changes with the noise, but not along G; the clip models carry it in both directions); the shrink
    bias (2 X s + E s^2) from the clipped pass against the free one of the same V."""
    out = cf.output
    free = extra.get("free") or extra["clip"]
    scales = sorted(free)
    vs = [k * k * cf.v0 for k in scales]
    floor, beta, p = fit_power_law(vs, [float(np.mean(free[k][out][0] ** 2)) for k in scales])
    cf.bias_law, cf.bias_floor = (beta, p), max(floor, 0.0)
    # the same passes give the growth exponent of the noise-driven variance (diagonal passes)
    _, gamma, e = fit_power_law(vs, [free[k][out][1] for k in scales])
    cf.var_exponent = e if gamma > 0 else 1.0
    if extra.get("free"):
        b_free, b_clip = free[1.0][out][0], extra["clip"][1.0][out][0]
        shift = b_clip - b_free
        s0 = sum(m.at_point[1] for n, m in cf.clip.items() if cf._uses_clip(n))
        if s0 > 0:
            cf.shift = (float(np.mean(b_free * shift)), float(np.mean(shift * shift)), s0)


def anchor(cf: ClosedForm, g: MemseGraph) -> ClosedForm:
    """Set the constant so that the form equals the full analysis at the compiled point; build the expression."""
    cf.constant = float(g.graph["analysis"]["outputs"][cf.output]["mse"]) - sum(cf.terms().values())
    cf.build_expression()
    return cf


def series_layers(g: MemseGraph, out: str) -> dict[str, list[str]]:
    """For every crossbar layer, the other layers that every signal path through it to `out` also crosses: its
    dominators from the input and its post-dominators toward `out`, in the dataflow of the analysed units. In a
    chain that is every other layer; the layers of a residual branch are in series with the stem and the head,
    which are not in series with them (the skip bypasses the branch)."""
    import networkx as nx
    from memse_compiler.ir import schedule
    lin = g.graph.get("linearization", {})
    producer = {t: "<input>" for t in g.graph["inputs"]}
    dag = nx.DiGraph()
    dag.add_node("<input>")
    for u in (u for u in schedule(g) if u in lin):
        ins, outs = (([g.layers[u].input], [g.layers[u].output]) if u in g.layers
                     else (g.nodes[u]["inputs"], g.nodes[u]["outputs"]))
        dag.add_node(u)
        dag.add_edges_from((producer[t], u) for t in ins if t in producer)
        producer.update((t, u) for t in outs)
    if out not in producer:
        return {}
    dag.add_edge(producer[out], "<output>")
    live = nx.ancestors(dag, "<output>") & nx.descendants(dag, "<input>")
    sub = dag.subgraph(live | {"<input>", "<output>"})
    dom, post = nx.immediate_dominators(sub, "<input>"), nx.immediate_dominators(sub.reverse(copy=False), "<output>")

    def chain(idom, node):
        while idom.get(node, node) != node:
            node = idom[node]
            yield node
    return {name: [m for m in (*chain(dom, name), *chain(post, name)) if m in g.layers]
            for name in g.layers if name in live}


class ClosedFormPass(Pass):
    """Fits the closed form of every graph output: ``g.graph["closed_form"][output]``."""
    name = "closed_form"

    def __init__(self, noise_scales: tuple[float, float] = (0.5, 2.0)):
        self.noise_scales = noise_scales   # where the mean shift's dependence on the noise is sampled

    def apply(self, g: MemseGraph, ctx: PassContext) -> MemseGraph:
        if "sensitivity" not in g.graph:
            return g
        t0 = time.perf_counter()
        from passes.moments import LARGE_MODEL_MACS, model_macs
        clip = clip_models(g, ctx.device)
        forms = {out: base_form(g, ctx.device, out, clip) for out in g.graph["sensitivity"]}
        # the laws cost three cheap forward passes (four when the device clips): skipped on large models, where
        # they did not help (bias^2 then stays in the constant; benchmarks/results/closed_form_resnet.md), nor did
        # levels_shift (the ResNet-18 shape's levels x0.5 / x0.25: +7.2 / +34.1 %, the uniform model -5.8 / -16.0 %)
        if forms and model_macs(g) <= LARGE_MODEL_MACS:
            scales = self.noise_scales + (1.0,)
            pn = ctx.device.programming_noise
            bias = lambda k, clip=None: noise_scaled_bias(g, ctx.device, ctx.options, k, clip)  # noqa: E731
            if pn.clip_at_zero and pn.sigma > 0:
                # with clipping the laws come from passes without it, at the clipped point's V (the first
                # output's: the passes are shared); the one with it gives the shrink's bias
                k_free = free_noise_scale(next(iter(forms.values())))
                extra = {"clip": {1.0: bias(1.0)}, "free": {k: bias(k * k_free, clip=False) for k in scales}}
            else:
                extra = {"clip": {k: bias(k) for k in scales}}
            for cf in forms.values():
                fit_laws(cf, extra)
                cf.levels_shift = LevelsShift.of_graph(g, cf.output, ctx.device)
        forms = {out: anchor(cf, g) for out, cf in forms.items()}
        g.graph["closed_form"] = forms
        timing = g.graph.setdefault("timing", {})
        timing["analysis_s"] = timing.get("analysis_s", 0.0) + time.perf_counter() - t0
        return g


def function_legend(cf: ClosedForm) -> dict[str, str]:
    """What the closed form's functions kappa_i / shrink_i stand for (i: the layer's index)."""
    legend = {}
    for i, name in enumerate(cf.coefficients):
        if cf._uses_clip(name):
            legend[f"kappa_{i}"] = (f"{name}: its devices' programming variance with clipping at 0, relative to "
                                    f"sigma^2 and to the compiled point")
            legend[f"shrink_{i}"] = f"{name}: relative shrink of its mean weights by clipping at 0"
    if cf.levels_shift is not None:
        legend[LEVELS_FUNCTION] = ("change of the output's bias^2 when every weight is rounded to L levels instead "
                                   "of the compiled ones (noiseless chip runs; passes/closed_form_levels.py)")
    return legend


def closed_form_summary(cf: ClosedForm) -> dict:
    """JSON-ready view for the report."""
    return {"expression": str(cf.expression), "constant": cf.constant, "functions": function_legend(cf),
            "terms": cf.terms(), "layers": cf.coefficients,
            "symbols": {str(wmax_symbol(k)): v for k, v in cf.wmax.items()}
            | {str(g_symbol(k)): v for k, v in cf.g0.items()},
            "point": cf.point}
