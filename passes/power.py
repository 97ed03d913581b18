"""Power of the lowered network (DESIGN §7): crossbar read energy, ADC and DAC conversions, per tile, per
layer and in total; and a form linear in each layer's conductance range G_l for the optimiser.

Voltage mapping (documented contract). A layer's crossbar inputs are scaled so that the largest input of the
evaluation batch (|x| = x_max = the layer's calibrated DAC range, max |x| of its float input) is driven at
`crossbar.read_voltage`:  V_j = read_voltage * x_j / x_max; the bias row is driven at read_voltage.
One MVM (one input vector of one group; every conv output position is an MVM) dissipates
    E_mvm = t_read * sum_j V_j^2 * sum_i (G+_ij + G-_ij)
over both devices of every differential pair (g_min included), with the programmed target conductances.
The input is noisy, so the expectation E[V_j^2] = (read_voltage / x_max)^2 (mu_j^2 + var_j) is taken with
the analysis moments of the DAC output (``g.graph["linearization"][layer].mu_vec / v_vec``); without an
analysis the noiseless programmed chip's DAC output is used (var = 0).
Converters: ADC conversions per MVM = row tiles x outputs (one per output per row tile, DESIGN §4.8), each
`adc.conversion_energy()` at the layer's ADC bits; DAC conversions per MVM = column tiles x driven rows
(one DAC per driven row per tile, as in the hardware table; the bias row is a fixed reference).
Energy per inference = total over the evaluation batch / batch size; power = energy * inference_rate.

Linear form: with G+ - g_min = c w+, c = G_l / Wmax_l, the crossbar power of a layer is
P0_l + P_l * G_l, P0_l = t_read * rate * 2 g_min * O * sum_j E[V_j^2] (the g_min floor), and
P_l = (crossbar power - P0_l) / G_l measured on the quantized conductances at the compiled point.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import sympy as sp

from device_models import WALDEN_FOM
from memse_compiler.ir import KIND_ADC, KIND_CROSSBAR, MemseGraph
from memse_compiler.ir.crossbar import CrossbarLayer
from memse_compiler.ir.pass_base import Pass, PassContext

MAX_TILES_IN_SUMMARY = 512   # per-tile powers go to the summary dict only for small models (nodes always)


def adc_energy(device, bits: int | None) -> float:
    """Energy of one ADC conversion at `bits` (the device's fixed energy, else Walden); 0 for an ideal ADC."""
    if bits is None:
        return 0.0
    return device.adc.energy if device.adc.energy is not None else WALDEN_FOM * 2 ** bits


def dac_energy(device, bits: int | None) -> float:
    return 0.0 if bits is None else device.dac.energy


def row_voltage2(layer: CrossbarLayer, mu_vec: np.ndarray, v_vec: np.ndarray, read_voltage: float,
                 batch: int) -> np.ndarray:
    """(G, Jb): sum over one inference's MVMs of E[V_j^2] per crossbar row (mean over the batch)."""
    s = (mu_vec ** 2 + v_vec).sum(axis=(0, 1)) / batch                 # G, Jb
    x_max = float(layer.dac_range)
    scale = np.full(s.shape[-1], (read_voltage / x_max) ** 2 if x_max > 0 else 0.0)
    if layer.bias_row:
        scale[-1] = read_voltage ** 2                                   # constant input 1 -> read_voltage
    return s * scale


@dataclass
class LayerPower:
    """Energies per inference (J) of one layer and what the linear form needs."""
    tiles: np.ndarray            # (G, R, C) crossbar read energy of every tile
    adc: float
    dac: float
    floor: float                 # crossbar energy of the g_min floor (independent of G)
    adc_conversions: float       # per inference
    dac_conversions: float

    @property
    def crossbar(self) -> float:
        return float(self.tiles.sum())

    @property
    def total(self) -> float:
        return self.crossbar + self.adc + self.dac


def layer_energy(layer: CrossbarLayer, v2: np.ndarray, mvms: float, device) -> LayerPower:
    """Energy per inference of `layer` given its per-row E[V^2] sums `v2` (G, Jb) and MVMs per inference."""
    t_read = device.crossbar.t_read
    gsum = layer.g_plus + layer.g_minus                                  # G, O, Jb
    per_out = layer.split_rows(gsum * v2[:, None, :]).sum(axis=-1)       # G, O, R
    pad = layer.col_tiles * layer.outs_per_tile - layer.outs
    per_out = np.pad(per_out, ((0, 0), (0, pad), (0, 0)))
    tiles = t_read * per_out.reshape(layer.groups, layer.col_tiles, layer.outs_per_tile, layer.row_tiles) \
        .sum(axis=2).transpose(0, 2, 1)                                  # G, R, C
    floor = t_read * 2.0 * layer.g_min * layer.outs * float(v2.sum())
    n_adc = mvms * layer.row_tiles * layer.outs
    n_dac = mvms * layer.col_tiles * layer.weight.shape[2]
    return LayerPower(tiles, n_adc * adc_energy(device, layer.adc_bits), n_dac * dac_energy(device, layer.dac_bits),
                      floor, n_adc, n_dac)


def layer_inputs(g: MemseGraph, layer: CrossbarLayer) -> tuple[np.ndarray, np.ndarray]:
    """Crossbar input moments (N, P, G, Jb): the analysis' DAC output, else the noiseless DAC output."""
    cm = g.graph.get("linearization", {}).get(layer.name)
    if cm is not None and hasattr(cm, "mu_vec"):
        return cm.mu_vec, cm.v_vec
    mu = layer.vectors(layer.dac(g.graph["reference"][layer.input]))
    return mu, np.zeros_like(mu)


@dataclass
class PowerModel:
    """Per layer: crossbar power P_l * G_l + P0_l (W), and converter conversions per second."""
    per_g: dict[str, float]                  # P_l, W per siemens of conductance range
    fixed: dict[str, float]                  # P0_l, W (g_min floor)
    adc_rate: dict[str, float]               # ADC conversions per second
    dac_rate: dict[str, float]
    dac_bits: dict[str, int | None]
    device: object = field(repr=False, default=None)

    def layer_power(self, name: str, g_range: float, adc_bits: int | None) -> float:
        return (self.per_g[name] * g_range + self.fixed[name] + self.adc_rate[name] * adc_energy(self.device, adc_bits)
                + self.dac_rate[name] * dac_energy(self.device, self.dac_bits[name]))

    def power(self, g_ranges: dict[str, float], adc_bits: dict[str, int | None]) -> float:
        return sum(self.layer_power(n, g_ranges[n], adc_bits[n]) for n in self.per_g)

    def converter_power(self, adc_bits: dict[str, int | None]) -> float:
        """Everything that does not depend on G: converters and the g_min floors."""
        return sum(self.layer_power(n, 0.0, adc_bits[n]) for n in self.per_g)


def compute_power(g: MemseGraph, device) -> tuple[dict, PowerModel, dict[str, LayerPower]]:
    """Power summary (JSON-clean), the linear model, and the per-layer energies."""
    rate = device.inference_rate
    batch = int(np.shape(g.graph["reference"][g.graph["inputs"][0]])[0])
    per_layer: dict[str, LayerPower] = {}
    model = PowerModel({}, {}, {}, {}, {}, device)
    for name, layer in g.layers.items():
        mu, v = layer_inputs(g, layer)
        v2 = row_voltage2(layer, mu, v, device.crossbar.read_voltage, batch)
        mvms = mu.shape[0] * mu.shape[1] * layer.groups / batch      # MVMs per inference
        lp = per_layer[name] = layer_energy(layer, v2, mvms, device)
        G = float(np.mean(layer.g_range))
        model.per_g[name] = rate * (lp.crossbar - lp.floor) / G if G > 0 else 0.0
        model.fixed[name] = rate * lp.floor
        model.adc_rate[name] = rate * lp.adc_conversions
        model.dac_rate[name] = rate * lp.dac_conversions
        model.dac_bits[name] = layer.dac_bits
    energy = sum(lp.total for lp in per_layer.values())
    summary = {
        "total_w": energy * rate, "energy_per_inference_j": energy, "inference_rate": rate,
        "layers": {n: lp.total * rate for n, lp in per_layer.items()},
        "breakdown": {"crossbar": rate * sum(lp.crossbar for lp in per_layer.values()),
                      "adc": rate * sum(lp.adc for lp in per_layer.values()),
                      "dac": rate * sum(lp.dac for lp in per_layer.values())},
        "layer_breakdown": {n: {"crossbar": rate * lp.crossbar, "adc": rate * lp.adc, "dac": rate * lp.dac}
                            for n, lp in per_layer.items()},
        "per_g": dict(model.per_g), "fixed_w": dict(model.fixed),
        "adc_conversions": {n: lp.adc_conversions for n, lp in per_layer.items()},
        "dac_conversions": {n: lp.dac_conversions for n, lp in per_layer.items()},
        "voltage_mapping": "V = read_voltage * x / max|x| of the layer input; bias row at read_voltage",
    }
    return summary, model, per_layer


def power_expression(model: PowerModel, adc_on: dict[str, bool]) -> sp.Expr:
    """P = sum_l (P_l G_l + P0_l) + sum_l n_adc_l E_adc(b_adc) + n_dac_l E_dac, in the closed form's symbols."""
    from passes.closed_form import g_symbol
    from passes.symbolic import b_adc
    dev = model.device
    e_adc = sp.Float(dev.adc.energy, 6) if dev.adc.energy is not None else sp.Float(WALDEN_FOM, 6) * 2 ** b_adc
    terms = []
    for name in model.per_g:
        terms.append(sp.Float(model.per_g[name], 6) * g_symbol(name) + sp.Float(model.fixed[name], 6))
        if adc_on[name]:
            terms.append(sp.Float(model.adc_rate[name], 6) * e_adc)
        if model.dac_bits[name] is not None and dev.dac.energy:
            terms.append(sp.Float(model.dac_rate[name] * dev.dac.energy, 6))
    return sp.Add(*terms)


def annotate(g: MemseGraph, per_layer: dict[str, LayerPower], rate: float) -> dict[str, float]:
    """Write `power_w` on every tile and ADC node; return {tile node: W}."""
    tiles = {}
    for n, d in g.nodes(data=True):
        lp = per_layer.get(d.get("layer"))
        if lp is None or d["kind"] not in (KIND_CROSSBAR, KIND_ADC):
            continue
        if d["kind"] == KIND_CROSSBAR:
            d["power_w"] = tiles[n] = float(lp.tiles[d["group"], d["row_tile"], d["col_tile"]] * rate)
        else:   # ADCs of one row tile/column tile: their share of the layer's conversions
            layer = g.layers[d["layer"]]
            used = d["outputs_range"][1] - d["outputs_range"][0]
            d["power_w"] = float(lp.adc * rate * used / (layer.outs * layer.row_tiles))
    return tiles


class PowerPass(Pass):
    """``g.graph["power"]``: total_w, energy_per_inference_j, inference_rate, layers {name: W}, breakdown
    {crossbar, adc, dac}, per_g {layer: P_l}, fixed_w {layer: P0_l}, tiles {tile node: W} (small models);
    ``g.graph["power_expression"]``: the sympy form. Runs after the analysis (uses its input moments) or
    without it (noiseless inputs)."""
    name = "power"

    def apply(self, g: MemseGraph, ctx: PassContext) -> MemseGraph:
        if not g.layers or "reference" not in g.graph:
            return g
        summary, model, per_layer = compute_power(g, ctx.device)
        tiles = annotate(g, per_layer, ctx.device.inference_rate)
        if len(tiles) <= MAX_TILES_IN_SUMMARY:
            summary["tiles"] = tiles
        expr = power_expression(model, {n: lay.adc_bits is not None for n, lay in g.layers.items()})
        summary["expression"] = str(expr)
        g.graph["power"] = summary
        g.graph["power_expression"] = expr
        return g


def power_pass_list() -> list[Pass]:
    """The passes to append to the default analysis list (after ClosedFormPass)."""
    return [PowerPass()]
