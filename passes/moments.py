"""Numeric evaluation of the moments: every edge gets `mean`, `var` (per sample and element) and `mse`.

One forward sweep in schedule order. Each unit's moments treat its input elements as independent; in the
`refined` mode (default) the part of each crossbar layer's output variance that its input error makes is
then rescaled to the correlation-aware total measured by a few Rademacher probes of the sensitivity
backward (passes/sensitivity.py; the layer's own noise is exact per element), and
MaxPool is given the measured within-window correlation, so the nonlinearities downstream see the right
spread. The linearisation of every unit is kept in ``g.graph["linearization"]`` for the sensitivity
pass, which then rebuilds the graph outputs' variances with every shared-weight correlation.
"""
from __future__ import annotations

import time

import numpy as np

from memse_compiler.ir import KIND_INPUT, KIND_OUTPUT, MemseGraph, schedule, stats
from memse_compiler.ir.crossbar import converter_levels
from memse_compiler.ir.errors import DomainError, MemseInputError
from memse_compiler.ir.ops import rule_for
from memse_compiler.ir.pass_base import Pass, PassContext
from memse_compiler.ir.ops.base import Linearization
from memse_compiler.ir.ops.elementwise import ElementwiseRule
from memse_compiler.ir.ops.pointwise import PointwiseRule
from passes.crossbar_math import crossbar_moments, propagated_variance


def mse_of(mean: np.ndarray, var: np.ndarray, ref: np.ndarray) -> tuple[float, float, float]:
    """(mse, bias^2, variance), averaged over samples and elements."""
    b2 = float(np.mean((np.asarray(mean, np.float64) - np.asarray(ref, np.float64)) ** 2))   # bool masks too
    v = float(np.mean(var))
    return b2 + v, b2, v


def refinement_factor(g: MemseGraph, lin: dict, moments: dict, tensor: str, var: np.ndarray,
                      rng: np.random.Generator, probes: int, own_unit: str | None = None) -> float:
    """The factor that rescales a tensor's diagonal variances to the correlation-aware total that Rademacher
    probes of the sensitivity backward give (so downstream nonlinearities see the right spread). One factor
    per tensor: pooled over samples, the probe estimate is stable with a few probes (each probe is two sweeps,
    through a random chip and its mirror, to carry the second-order programming term: passes/sensitivity.py).
    own_unit: a crossbar layer whose own noise (first-order programming, read, ADC: exact per element in the
    forward) is left out of the probes' total; `var` is then the rest (crossbar_math.propagated_variance), and
    the probes' noise from the layer's own, strongly position-correlated, programming noise is gone."""
    from passes.sensitivity import chip_backward
    order = [u for u in schedule(g) if u in lin]
    total = [0.0]

    def add(unit, source, per_sample):
        if unit != own_unit or source == "dac":
            total[0] += float(np.sum(per_sample))
    for _ in range(probes):
        chip_backward(g, order, {tensor: rng.choice([-1.0, 1.0], size=var.shape)}, add, lin=lin, moments=moments,
                      rng=rng)
    diag = float(var.sum())
    return total[0] / probes / diag if diag > 0 else 1.0


PROBE_BLOCKS = 2048   # refinement probes x independent blocks: ~3 % noise at most on a refinement factor


def probes_for_tensor(shape: tuple, base: int) -> int:
    """Refinement probes for a tensor: at least `base`, more (up to 8x) when it has few (sample, channel)
    blocks. A Rademacher probe's error comes from the covariances inside a block (the errors of one channel
    are correlated across positions), so its relative noise is ~sqrt(2 / blocks); small tensors are also
    cheap to sweep, so the cost per tensor stays about the same."""
    blocks = int(np.prod(shape[:2])) if len(shape) >= 2 else int(np.prod(shape))
    return max(base, min(8 * base, -(-PROBE_BLOCKS // max(blocks, 1))))


def window_correlation(g: MemseGraph, lin: dict, moments: dict, tensor: str, attrs: dict,
                       rng: np.random.Generator, probes: int) -> np.ndarray:
    """Mean correlation (per sample) of the errors inside a pooling window: probes with one random sign
    per window measure sum_w Var(sum_{i in w} x_i); the excess over sum_i Var(x_i) is the covariance."""
    from passes.sensitivity import chip_backward, spread_per_sample
    windows, one_d = attrs["windows"], attrs["one_d"]
    var = moments[tensor][1]
    n = var.shape[0]
    v4 = var[:, :, None, :] if one_d else var
    order = [u for u in schedule(g) if u in lin]
    total = np.zeros(n)

    def add(unit, source, per_sample):
        total[:] += spread_per_sample(per_sample, n)
    out_shape = v4.shape[:2] + windows.out_hw
    for _ in range(probes):
        sign = rng.choice([-1.0, 1.0], size=out_shape)
        u = windows.scatter(np.broadcast_to(sign[..., None, None], out_shape + windows.kernel))
        chip_backward(g, order, {tensor: u[:, :, 0, :] if one_d else u}, add, lin=lin, moments=moments, rng=rng)
    s = np.sqrt(windows.extract(v4, fill=0.0))
    s = s.reshape(s.shape[:4] + (-1,))
    cross = (s.sum(axis=-1) ** 2 - (s * s).sum(axis=-1)).reshape(n, -1).sum(axis=1)
    excess = total / probes - (s * s).reshape(n, -1).sum(axis=1)
    return np.clip(np.where(cross > 0, excess / np.where(cross > 0, cross, 1.0), 0.0), -0.5, 0.999)


def adc_layer(g: MemseGraph, z: str, lin: dict):
    """The analysed layer whose output `z` is, when it has ADCs (z = the sum of its row tiles' ADC outputs, plus a
    digital bias), else None."""
    name = g.nodes[g.producer(z)].get("layer")      # set on a lowered layer's sum/bias node
    layer = g.layers.get(name) if name else None
    return layer if layer is not None and name in lin and layer.output == z and layer.adc_bits is not None else None


def lattice_layer(g: MemseGraph, z: str, lin: dict):
    """The layer whose output `z` is, when that output sits on its ADC's lattice (one row tile, an ADC, no digital
    bias: z = ADC code x step), else None."""
    layer = adc_layer(g, z, lin)
    return layer if layer is not None and layer.row_tiles == 1 and (layer.bias is None or layer.bias_row) else None


def relu_source(g: MemseGraph, tensor: str, moments: dict, lin: dict) -> tuple:
    """(moments of Z, lattice) when `tensor` = Relu(Z), else (None, None). The DAC of a rectified signal is
    exact on Z's Gaussian; `lattice` = (layer, its moments) when Z is the output of a one-row-tile crossbar
    layer with an ADC and no digital bias, i.e. Z sits on the ADC's lattice (crossbar_math.lattice_dac_moments)."""
    d = g.nodes[g.producer(tensor)]
    if d.get("op") != "Relu" or d["inputs"][0] not in moments:
        return None, None
    z = d["inputs"][0]
    layer = lattice_layer(g, z, lin)
    return moments[z], ((layer, lin[layer.name]) if layer is not None else None)


def on_lattice_moments(g: MemseGraph, unit: str, rule, attrs: dict, ins: list[tuple], lin: dict):
    """(means, variances, linearization) of a pointwise op that jumps, read straight off a layer's ADCs: summed over
    the codes of its row tiles' ADCs (stats.lattice_function_moments), on their partial sums' Gaussians, whose
    variances are scaled by the refinement's correction of the layer output's variance; elements with too many
    combinations of codes keep the rule's Gaussian moments. None when the input is not an ADC'd layer's output."""
    d = g.nodes[unit]
    layer = adc_layer(g, d["inputs"][0], lin) if rule.jumps(attrs) else None
    if layer is None:
        return None
    cm = lin[layer.name]
    shape, geo = cm.out_mean.shape, layer.geometry
    tiles = range(layer.row_tiles)
    steps = np.broadcast_to(layer.adc_steps(), cm.ps_mean.shape)             # (N, P, G, R, O)
    y_mean = np.stack([geo.from_vectors(cm.ps_mean[:, :, :, r, :], shape) for r in tiles])
    y_var = np.stack([geo.from_vectors(cm.ps_var[:, :, :, r, :], shape) for r in tiles])
    step = np.stack([geo.from_vectors(np.ascontiguousarray(steps[:, :, :, r, :]), shape) for r in tiles])
    total = y_var.sum(axis=0)
    y_var = y_var * np.where(total > 0, np.maximum(total + ins[0][1] - cm.out_var, 0.0) / np.where(total > 0, total,
                                                                                                   1.0), 1.0)
    offset = 0.0
    if layer.bias is not None and not layer.bias_row:
        offset = geo.from_vectors(np.broadcast_to(layer.bias, cm.ps_mean.shape[:3] + cm.ps_mean.shape[4:]), shape)
    sides = [m for m, _ in ins[1:]]
    m, ok = stats.lattice_function_moments(lambda z: rule.forward(attrs, [z] + sides)[0], y_mean, y_var, step,
                                           *converter_levels(layer.adc_bits, True), offset=offset)
    # the Gaussian moments: where the codes are too many, and where the function jumps
    (g_mean,), (g_var,), g_lz = rule.moments(attrs, [a for a, _ in ins], [b for _, b in ins])
    mean, var, gain = np.where(ok, m.mean, g_mean), np.where(ok, m.var, g_var), np.where(ok, m.gain, g_lz.gains[0])
    resid = np.maximum(var - gain ** 2 * ins[0][1], 0.0)
    return [mean], [var], Linearization(gains=[gain] + [None] * len(sides), residual=[resid], jumps=g_lz.jumps)


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


MODES = {  # analysis modes (CLI --mode): how much of the error correlation the forward pass accounts for
    "diagonal": {"refine_probes": 0, "residual": "independent", "sensitivity": False},
    "sensitivity": {"refine_probes": 0, "residual": "half", "sensitivity": True},
    # a probe is two backward sweeps (a random chip and its mirror); 2 probes matched 4 on the accuracy grid
    "refined": {"refine_probes": 2, "residual": "half", "sensitivity": True},
}
# how much of a nonlinearity's residual follows its input's correlations (see forward_moments): "half" is
# the default; against Monte-Carlo, "coherent" was 7-10 % high on the ResNet-18 shape (224x224) and
# "half" -4.5 % / +1.5 % at sigma/G 2 % / 0.5 %, with the digits models within 3-5 % either way
RESIDUALS = {"coherent": 1.0, "half": 0.5, "independent": 0.0}
DEFAULT_MODE = "refined"


LARGE_MODEL_MACS = 1e9   # above this (MACs over the evaluation batch) the analysis trims its extras


def model_macs(g: MemseGraph) -> float:
    """Multiply-accumulates of all crossbar layers over the evaluation batch."""
    n = g.graph["reference"][g.graph["inputs"][0]].shape[0]
    return float(sum(n * layer.geometry.positions * layer.groups * layer.outs * layer.rows
                     for layer in g.layers.values()))


def analysis_options(options: dict) -> dict:
    """The mode's settings, overridden by any explicit option."""
    mode = options.get("mode", DEFAULT_MODE)
    if mode not in MODES:
        raise ValueError(f"unknown analysis mode '{mode}' (choose from {', '.join(MODES)})")
    settings = {**MODES[mode], **{k: v for k, v in options.items() if k in MODES[mode]}}
    r = settings["residual"]
    if r not in RESIDUALS and not (isinstance(r, (int, float)) and 0.0 <= r <= 1.0):
        raise ValueError(f"residual must be one of {', '.join(RESIDUALS)} or a fraction in [0, 1], not {r!r}")
    return settings


def forward_moments(g: MemseGraph, device, options: dict, signals: bool = True,
                    samples: int | None = None, refinement: dict | None = None) -> tuple[dict, dict, dict]:
    """Moments of every tensor (and every lowered layer's internal signals) on `device`, without touching
    the graph: (moments, linearizations, internal signals (only if `signals`)). Options: `refine_probes` (0 = purely diagonal),
    `residual` ("coherent": a nonlinearity's residual variance follows its input's error, so correlated
    inputs give correlated residuals; "independent": injected per element; "half" (default) or a number in
    [0, 1]: that fraction coherent, the rest independent. The residuals of two inputs of correlation rho
    are correlated ~rho^2 (their leading Hermite term), between the two extremes), `seed`.
    `refinement`: an empty dict is filled with what the refinement measured (tensor -> variance factor,
    MaxPool unit -> per-sample window correlation); a filled one is applied instead of probing again, for
    cheap passes at other noise levels (the closed form's bias law)."""
    ref = g.graph["reference"]
    consts = g.graph["constants"]
    moments = {}
    for x_name in g.graph["inputs"]:       # exact data: no variance
        x = ref[x_name] if samples is None else ref[x_name][:samples]
        moments[x_name] = (x, np.zeros(np.shape(x)))
    internal: dict[str, tuple] = {}
    lin: dict = {}
    settings = analysis_options(options)
    refine = pool_refine = int(settings["refine_probes"])
    if refine and "refine_probes" not in options and model_macs(g) > LARGE_MODEL_MACS:
        refine = 0     # refinement costs a backward pass per layer and probe: O(layers^2) on large models
    coherent = float(RESIDUALS.get(settings["residual"], settings["residual"]))
    # with crossbars driven at several steps, the same programming noise reaches both operands of a merge at
    # every step (an LSTM's cell state was 48 % low without); elsewhere it moved the outputs < 1 %, at a cost
    from passes.sensitivity import shared_crossbars, sweeps_use_chip
    refine_merges = bool(shared_crossbars(g))
    rng = np.random.default_rng(options.get("seed", 0) + 1)
    reuse = bool(refinement)

    def refined(key: str, measure):
        if reuse:
            return refinement.get(key)
        value = measure()
        if refinement is not None:
            refinement[key] = value
        return value
    for unit in schedule(g):
        if unit in g.layers:
            layer = g.layers[unit]
            m, v = moments[layer.input]
            pre_relu, lattice = relu_source(g, layer.input, moments, lin)
            cm = crossbar_moments(layer, device, m, v, pre_relu=pre_relu, lattice=lattice)
            lin[unit] = cm
            moments[layer.output] = (cm.out_mean, cm.out_var)
            if refine:
                # only the part the input error makes is rescaled: the layer's own noise is exact per element
                # S v goes upstream through the random chip, when the sweeps run through one
                prop = propagated_variance(layer, cm, sweeps_use_chip(g, lin))
                f = refined(layer.output, lambda: refinement_factor(
                    g, lin, moments, layer.output, prop, rng, probes_for_tensor(prop.shape, refine),
                    own_unit=unit) if prop.any() else 1.0)
                var = cm.out_var if f is None else np.maximum(cm.out_var + (f - 1.0) * prop, 0.0)
                moments[layer.output] = (cm.out_mean, var)
            if not signals:
                continue
            internal.update(tile_signals(layer, cm, ref[layer.input]))
            if layer.bias is not None and not layer.bias_row:
                no_bias = cm.out_mean - layer.geometry.from_vectors(
                    np.broadcast_to(layer.bias, cm.adc_mean.shape[:3] + (layer.outs,)), m.shape)
                internal[f"{layer.name}/sum"] = (no_bias, cm.out_var, ref[layer.output] - (cm.out_mean - no_bias))
            continue
        d = g.nodes[unit]
        if d["kind"] in (KIND_INPUT, KIND_OUTPUT):
            continue
        ins = [moments[t] if t in moments else (consts[t], np.zeros_like(consts[t])) for t in d["inputs"]]
        attrs = d["attrs"]
        if refine and d["op"] == "MaxPool":
            rho = refined(unit, lambda: window_correlation(g, lin, moments, d["inputs"][0], attrs, rng, refine))
            if rho is not None:
                attrs = dict(attrs, rho=rho[: moments[d["inputs"][0]][1].shape[0]])
        rule = rule_for(d["op"])
        try:
            means, variances, lz = (on_lattice_moments(g, unit, rule, attrs, ins, lin) or
                                    rule.moments(attrs, [a for a, _ in ins], [b for _, b in ins]))
        except DomainError as exc:
            raise MemseInputError(f"node '{unit}' ({d['op']}): {exc}") from None
        if coherent and isinstance(rule, (ElementwiseRule, PointwiseRule)):
            fraction = coherent if lz.jumps is None else np.where(lz.jumps, 0.0, coherent)
            lz = coherent_residual(lz, ins[0][1], fraction)
        lin[unit] = lz
        for t, m, v in zip(d["outputs"], means, variances):
            # an average over positions is where the diagonal model fails most (programming noise is shared
            # by every position: ResNet-18's global pool was 5x too low), and there are few such tensors:
            # refined even on large models
            if pool_refine and (rule.averages(attrs) or (refine_merges and merges_signals(d, moments))) \
                    and t in g.tensors:
                f = refined(t, lambda: refinement_factor(g, lin, moments, t, v, rng,
                                                         probes_for_tensor(v.shape, pool_refine)))
                v = v if f is None else v * f
            moments[t] = (m, v)
    return moments, lin, internal


def merges_signals(node: dict, moments: dict) -> bool:
    """An Add/Sub of two signals: their errors may be correlated (a crossbar's noise reaching both, as in a
    recurrent cell state), which the diagonal model drops."""
    return node["op"] in ("Add", "Sub") and sum(t in moments for t in node["inputs"]) >= 2


def coherent_residual(lz: Linearization, var_in: np.ndarray, fraction: float | np.ndarray = 1.0) -> Linearization:
    """Fold `fraction` of an element-wise nonlinearity's residual variance into its gain: |gain_eff|^2 var_in =
    gain^2 var_in + fraction * residual; the rest stays an independent injection. Its own variance is
    unchanged, but that part of the residual now carries the input's correlations."""
    gain, resid = lz.gains[0], lz.residual[0]
    pos = var_in > 0
    extra = np.where(pos, fraction * resid / np.where(pos, var_in, 1.0), 0.0)
    eff = np.sign(gain) * np.sqrt(gain ** 2 + extra)
    eff = np.where(gain == 0, np.sqrt(extra), eff)
    return Linearization(gains=[eff], residual=[np.where(pos, (1.0 - fraction) * resid, resid)])


class EvaluateMoments(Pass):
    name = "evaluate_moments"

    def apply(self, g: MemseGraph, ctx: PassContext) -> MemseGraph:
        t0 = time.perf_counter()
        ref = g.graph["reference"]
        refinement: dict = {}
        moments, lin, internal = forward_moments(g, ctx.device, ctx.options, refinement=refinement)
        g.graph["refinement"] = refinement
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
