"""`--explain`: the closed form of the output MSE, its terms, and its validity against the full analysis."""
from __future__ import annotations

import time

import numpy as np
import sympy as sp

from memse_compiler.ir import MemseGraph
from passes.closed_form import LEVELS_FUNCTION, ClosedForm, closed_form_summary


def validity_points(device) -> list[tuple[str, dict, dict]]:
    """(label, device override, closed-form arguments) of the points the form is re-checked at."""
    pn, cond = device.programming_noise, device.conductance
    pts = []
    if pn.sigma > 0:
        pts += [("sigma x0.5", {"programming_noise.sigma": pn.sigma / 2}, {"sigma_v": pn.sigma / 2}),
                ("sigma x2", {"programming_noise.sigma": pn.sigma * 2}, {"sigma_v": pn.sigma * 2})]
    half = cond.g_min + 0.5 * (cond.g_max - cond.g_min)
    pts.append(("G x0.5", {"conductance.g_max": half}, {"g_scale": 0.5}))
    if cond.levels and cond.levels >= 8:
        pts.append((f"levels {cond.levels // 2}", {"conductance.levels": cond.levels // 2},
                    {"levels_v": cond.levels // 2}))
    if device.adc.bits and device.adc.bits > 3:
        pts.append((f"adc {device.adc.bits - 2} bits", {"adc.bits": device.adc.bits - 2},
                    {"adc_bits": device.adc.bits - 2}))
    return pts


def _predict(cf: ClosedForm, args: dict) -> float:
    if "g_scale" in args:
        return float(cf.sweep("g_scale", [args["g_scale"]])[0])
    return cf.mse(**args)


def check_closed_form(g: MemseGraph, model, device, inputs: np.ndarray, options: dict) -> list[dict]:
    """Re-run the full analysis at each validity point; store and return the comparison rows."""
    from memse_compiler.pipeline import compile_model
    t0 = time.perf_counter()
    rows = []
    forms: dict[str, ClosedForm] = g.graph.get("closed_form", {})
    for label, override, args in validity_points(device):
        g2, _ = compile_model(model, device.with_overrides(override), inputs, options=dict(options))
        for out, cf in forms.items():
            full = g2.graph["analysis"]["outputs"][out]["mse"]
            pred = _predict(cf, args)
            rows.append({"output": out, "point": label, "closed_form": pred, "full": full,
                         "rel_err": pred / full - 1 if full else None})
    g.graph["closed_form_validity"] = rows
    g.graph.setdefault("timing", {})["closed_form_check_s"] = time.perf_counter() - t0
    return rows


def explain_text(g: MemseGraph) -> str:
    lines = []
    for out, cf in g.graph.get("closed_form", {}).items():
        s = closed_form_summary(cf)
        lines.append(f"closed form of MSE[{out}] (device symbols; Wmax[l], G[l] per layer):")
        v = cf.noise_expression
        shown = cf.expression.xreplace({v: sp.Symbol("V")}) if v is not None else cf.expression
        for term in str(shown).split(" + "):
            lines.append(f"    + {term}")
        if v is not None and shown != cf.expression:
            lines.append("  where V (the noise variance terms) =")
            lines.extend(f"    + {term}" for term in str(v).split(" + "))
        lines.append("  at the compiled point: " + ", ".join(f"{k} {v:.3e}" for k, v in s["terms"].items())
                     + f", rest {cf.constant:.3e}")
        kappa = {k: c["kappa"] for k, c in cf.coefficients.items()}
        lines.append("  clipping/second-order factor at the compiled point per layer: "
                     + ", ".join(f"{k} {v:.3f}" for k, v in kappa.items()))
        for fn, meaning in s["functions"].items():
            lines.append(f"  {fn}({'L' if fn == LEVELS_FUNCTION else 'sigma, G, L'}): {meaning}")
    rows = g.graph.get("closed_form_validity")
    if rows:
        lines.append("validity of the closed form (re-analysed in full at each point):")
        lines.append(f"  {'output':<10} {'point':<14} {'closed form':>12} {'full':>12} {'rel.err':>8}")
        for r in rows:
            rel = "-" if r["rel_err"] is None else f"{100 * r['rel_err']:+.1f}%"
            lines.append(f"  {r['output']:<10} {r['point']:<14} {r['closed_form']:>12.4e} {r['full']:>12.4e} {rel:>8}")
    return "\n".join(lines)
