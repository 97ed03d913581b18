"""Closed form of each output's MSE in the device parameters (DESIGN §5), from the sensitivity pass:

    MSE = C + sum_l A_l (sigma Wmax_l / G_l)^2 + sum_l B_l (sigma_r Wmax_l / G_l)^2
            + sum_l Q_l (Wmax_l / (L - 1))^2 + sum_l D_l / (2^(b_adc - 1) - 1)^2 + sum_l E_l / n_dac(b_dac)^2

A_l: programming noise (the clipping factor kappa_l = A_l / A_l(unclipped) and the second-order S*v term
measured at the compiled point), B_l: read noise, Q_l: conductance quantization as uniform error
(Delta = Wmax/(L-1) per weight), D_l/E_l: ADC/DAC quantization (uniform model, calibrated ranges). The
noise-driven part V = sum A + B terms also carries the nonlinearities' independent residual variance (in
proportion to V), a fitted growth exponent and the mean shift beta V^p. C holds the rest and anchors the form
so it equals the full analysis at the compiled point. `check_closed_form` re-runs the full analysis at other
points to report how far the form is off when the parameters move.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import sympy as sp

from memse_compiler.ir import MemseGraph
from memse_compiler.ir.pass_base import Pass, PassContext
from passes.symbolic import b_adc, b_dac, levels, sigma, sigma_r


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
    expression: sp.Expr = field(default=None)

    def build_expression(self) -> sp.Expr:
        terms = [sp.Float(self.constant, 6)]
        noise = []
        for name, c in self.coefficients.items():
            G, W = g_symbol(name), wmax_symbol(name)
            noise.append(sp.Float(c["A"], 6) * (sigma * W / G) ** 2)
            if c["B"]:
                noise.append(sp.Float(c["B"], 6) * (sigma_r * W / G) ** 2)
            terms.append(sp.Float(c["Q"], 6) * (W / (levels - 1)) ** 2)
            terms.append(sp.Float(c["D"], 6) / (2 ** (b_adc - 1) - 1) ** 2)
            terms.append(sp.Float(c["E"], 6) / dac_levels(b_dac, self.dac_signed[name]) ** 2)
        v = sp.Add(*noise)
        beta, p = self.bias_law
        e = self.var_exponent
        var_part = v if e == 1.0 or self.v0 <= 0 else sp.Float(self.v0 ** (1 - e), 6) * v ** sp.Float(e, 4)
        if self.v0 > 0 and self.nonlinear:
            var_part = sp.Float(1.0 + self.nonlinear / self.v0, 6) * var_part
        self.expression = sp.Add(*terms) + var_part + sp.Float(beta, 6) * v ** sp.Float(p, 4)
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
        for name, c in self.coefficients.items():
            ratio = self.wmax[name] / (g_ranges or self.g0)[name]
            out["programming"] += c["A"] * (s * ratio) ** 2
            out["read"] += c["B"] * (sr * ratio) ** 2
            out["quantization"] += c["Q"] * (self.wmax[name] / (lv - 1)) ** 2 if lv else 0.0
            out["adc"] += c["D"] / (2 ** (ab - 1) - 1) ** 2 if ab else 0.0
            out["dac"] += c["E"] / dac_levels(db, self.dac_signed[name]) ** 2 if db else 0.0
        v = out["programming"] + out["read"]
        if self.v0 > 0 and v > 0 and self.var_exponent != 1.0:
            scale = (v / self.v0) ** (self.var_exponent - 1.0)   # nonlinear growth of the variance
            out["programming"] *= scale
            out["read"] *= scale
        if self.v0 > 0:     # the nonlinearities' residual variance is driven by the same noise
            out["nonlinearity"] = self.nonlinear * (out["programming"] + out["read"]) / self.v0
        out["mean_shift"] = self.bias_law[0] * v ** self.bias_law[1]
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


def noise_scaled_bias2(g: MemseGraph, device, options: dict, k: float) -> dict[str, float]:
    """bias^2 of every output with every noise std multiplied by k (one cheap forward moment pass: the
    closed form takes only the shape of bias^2(V) from these, anchored at the full analysis)."""
    from passes.moments import forward_moments
    pn = device.programming_noise
    scaled = device.with_overrides({"programming_noise.sigma": pn.sigma * k,
                                    "programming_noise.relative": pn.relative * k,
                                    "read_noise.sigma": device.read_noise.sigma * k})
    n = batch_subset(g)
    # the per-layer refinement factors of the full analysis are reused: probing again costs O(layers^2)
    # backward sweeps per pass, and only the shape of bias^2(V) is taken from these passes
    moments = forward_moments(g, scaled, options, signals=False, samples=n,
                              refinement=g.graph.get("refinement"))[0]
    ref = g.graph["reference"]
    return {out: (float(np.mean((moments[out][0] - ref[out][:n]) ** 2)), float(np.mean(moments[out][1])))
            for out in g.graph["outputs"]}


def fit_bias_law(v0: float, low: float, mid: float, high: float, k: float) -> tuple[float, float, float]:
    """(b0, beta, p) of bias^2(V) = b0 + beta V^p through bias^2 at V0/k^2, V0, V0 k^2 (noise std scaled
    by 1/k, 1, k): the noise-induced mean shift grows like V (smooth nonlinearities, p = 2 for bias^2) to
    sqrt(V) (ReLU kinks near zero), so the exponent is fitted, within [0.5, 2]."""
    d1, d2 = mid - low, high - mid
    if v0 <= 0 or d1 <= 0 or d2 <= 0:
        return mid, 0.0, 1.0
    p = float(np.clip(np.log(d2 / d1) / np.log(k * k), 0.5, 2.5))
    beta = (d1 + d2) / (v0 ** p * (k ** (2 * p) - k ** (-2 * p)))
    return mid - beta * v0 ** p, float(beta), p


def fit_closed_form(g: MemseGraph, device, out: str, extra_bias: dict[float, dict] | None = None) -> ClosedForm:
    sens = g.graph["sensitivity"][out]
    entry = g.graph["analysis"]["outputs"][out]
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
    cf = ClosedForm(out, 0.0, coefficients, g0, wmax, signed, point)
    v0 = cf.terms()["programming"] + cf.terms()["read"]
    cf.v0 = v0
    cf.nonlinear = sum(v for k, v in sens.items() if k.endswith("|nonlinearity"))
    if extra_bias:
        (_, lo), (_, mid), (k_hi, hi) = sorted(extra_bias.items())
        _, beta, p = fit_bias_law(v0, lo[out][0], mid[out][0], hi[out][0], k_hi)
        cf.bias_law = (beta, p)
        # the same three points give the growth exponent of the noise-driven variance (diagonal pass)
        _, gamma, e = fit_bias_law(v0, lo[out][1], mid[out][1], hi[out][1], k_hi)
        cf.var_exponent = e if gamma > 0 else 1.0
    cf.constant = float(entry["mse"]) - sum(cf.terms().values())
    cf.build_expression()
    return cf


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
        # the mean-shift law costs three cheap forward passes: skipped on large models (bias^2 then
        # stays in the constant)
        extra = None if model_macs(g) > LARGE_MODEL_MACS else {
            k: noise_scaled_bias2(g, ctx.device, ctx.options, k) for k in self.noise_scales + (1.0,)}
        forms = {out: fit_closed_form(g, ctx.device, out, extra) for out in g.graph["sensitivity"]}
        g.graph["closed_form"] = forms
        timing = g.graph.setdefault("timing", {})
        timing["analysis_s"] = timing.get("analysis_s", 0.0) + time.perf_counter() - t0
        return g


def closed_form_summary(cf: ClosedForm) -> dict:
    """JSON-ready view for the report."""
    return {"expression": str(cf.expression), "constant": cf.constant,
            "terms": cf.terms(), "layers": cf.coefficients,
            "symbols": {str(wmax_symbol(k)): v for k, v in cf.wmax.items()}
            | {str(g_symbol(k)): v for k, v in cf.g0.items()},
            "point": cf.point}
