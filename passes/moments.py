"""Numeric evaluation of the moments: every edge gets `mean`, `var` (per sample and element) and `mse`.

Forward, in schedule order, under the diagonal (independent elements) assumption; the linearisation of
every unit is kept in ``g.graph["linearization"]`` for the sensitivity pass, which adds the correlations.
"""
from __future__ import annotations

import time

import numpy as np

from memse_compiler.ir import KIND_INPUT, KIND_OUTPUT, MemseGraph, schedule
from memse_compiler.ir.ops import rule_for
from memse_compiler.ir.pass_base import Pass, PassContext
from passes.crossbar_math import crossbar_moments


def mse_of(mean: np.ndarray, var: np.ndarray, ref: np.ndarray) -> tuple[float, float, float]:
    """(mse, bias^2, variance), averaged over samples and elements."""
    b2 = float(np.mean((mean - ref) ** 2))
    v = float(np.mean(var))
    return b2 + v, b2, v


def tile_signals(layer, cm, x_ref: np.ndarray) -> dict[str, tuple]:
    """(mean, var, ref) of every lowered layer's internal signals, as views of the layer's arrays."""
    ps_ref = layer.partial_sums(layer.vectors(x_ref), layer.augmented_weight())
    out = {f"{layer.name}/dac": (cm.dac_mean, cm.dac_var, x_ref)}
    for grp in range(layer.groups):
        for r in range(layer.row_tiles):
            for c in range(layer.col_tiles):
                o = slice(c * layer.outs_per_tile, min((c + 1) * layer.outs_per_tile, layer.outs))
                idx = f"[{grp},{r},{c}]"
                ref = ps_ref[:, :, grp, r, o]
                out[f"{layer.name}/ps{idx}"] = (cm.ps_mean[:, :, grp, r, o], cm.ps_var[:, :, grp, r, o], ref)
                out[f"{layer.name}/adc_out{idx}"] = (cm.adc_mean[:, :, grp, r, o], cm.adc_var[:, :, grp, r, o], ref)
    return out


class EvaluateMoments(Pass):
    name = "evaluate_moments"

    def apply(self, g: MemseGraph, ctx: PassContext) -> MemseGraph:
        t0 = time.perf_counter()
        ref = g.graph["reference"]
        consts = g.graph["constants"]
        x_name = g.graph["inputs"][0]
        moments = {x_name: (ref[x_name], np.zeros_like(ref[x_name]))}
        internal: dict[str, tuple] = {}
        lin = {}
        for unit in schedule(g):
            if unit in g.layers:
                layer = g.layers[unit]
                m, v = moments[layer.input]
                cm = crossbar_moments(layer, ctx.device, m, v)
                lin[unit] = cm
                moments[layer.output] = (cm.out_mean, cm.out_var)
                internal.update(tile_signals(layer, cm, ref[layer.input]))
                if layer.bias is not None and not layer.bias_row:
                    summed = f"{layer.name}/sum"
                    no_bias = cm.out_mean - layer.geometry.from_vectors(
                        np.broadcast_to(layer.bias, cm.adc_mean.shape[:3] + (layer.outs,)), m.shape)
                    internal[summed] = (no_bias, cm.out_var, ref[layer.output] - (cm.out_mean - no_bias))
                continue
            d = g.nodes[unit]
            if d["kind"] in (KIND_INPUT, KIND_OUTPUT):
                continue
            ins = [moments[t] if t in moments else (consts[t], np.zeros_like(consts[t])) for t in d["inputs"]]
            means, variances, lin[unit] = rule_for(d["op"]).moments(d["attrs"], [a for a, _ in ins],
                                                                    [b for _, b in ins])
            for t, m, v in zip(d["outputs"], means, variances):
                moments[t] = (m, v)
        g.graph["moments"] = moments
        g.graph["linearization"] = lin
        for u, v, data in g.edges(data=True):
            t = data["tensor"]
            if t in internal:
                mean, var, r = internal[t]
            else:
                (mean, var), r = moments[t], ref[t]
            data["mean"], data["var"] = mean, var
            data["mse"], data["bias2"], data["variance"] = mse_of(mean, var, r)
        analysis = g.graph.setdefault("analysis", {})
        analysis["layers"] = {name: mse_of(*moments[layer.output], ref[layer.output])[0]
                              for name, layer in g.layers.items()}
        analysis["outputs"] = {}
        for out in g.graph["outputs"]:
            mse, b2, var = mse_of(*moments[out], ref[out])
            analysis["outputs"][out] = {"mse": mse, "bias2": b2, "variance": var, "variance_diagonal": var,
                                        "method": "diagonal"}
        timing = g.graph.setdefault("timing", {})
        timing["analysis_s"] = timing.get("analysis_s", 0.0) + time.perf_counter() - t0
        return g
