"""An independent, literal numpy Monte-Carlo of the noise model (DESIGN §4) for tests: it draws every
device of every chip, and read noise per device per MVM, and runs the lowered layers with
CrossbarLayer.forward (DAC -> row tiles -> ADC -> adder) and digital ops with their float semantics."""
from __future__ import annotations

import numpy as np

from memse_compiler.ir import KIND_INPUT, KIND_OUTPUT, schedule
from memse_compiler.ir.interpret import operand_values
from memse_compiler.ir.ops import rule_for


def program(layer, device, rng) -> np.ndarray:
    """One chip's effective weights (G, O, Jb)."""
    pn = device.programming_noise

    def draw(gt):
        std = np.sqrt(pn.sigma ** 2 + (pn.relative * gt) ** 2)
        g = gt + std * rng.standard_normal(gt.shape)
        return np.maximum(g, 0.0) if pn.clip_at_zero else g
    return (draw(layer.g_plus) - draw(layer.g_minus)) / layer.scale_c


def layer_with_read_noise(layer, w, x, sigma_r, rng) -> np.ndarray:
    """Literal read noise: every device of every tile sees a fresh N(0, sigma_r^2) at every MVM."""
    vec = layer.vectors(layer.dac(x))                                 # N, P, G, Jb
    n, p, g, jb = vec.shape
    r = sigma_r * (rng.standard_normal((n, p) + w.shape) - rng.standard_normal((n, p) + w.shape))
    tiles = layer.split_rows(vec)                                     # N, P, G, R, rows
    w_mvm = layer.split_rows(w[None, None] + r / layer.scale_c)       # N, P, G, O, R, rows
    ps = np.einsum("npgrj,npgorj->npgro", tiles, w_mvm)
    return layer.combine(layer.adc(ps), x.shape)


def chip_outputs(g, device, x, rng) -> dict[str, np.ndarray]:
    vals = dict(x) if isinstance(x, dict) else {g.graph["inputs"][0]: x}
    chip: dict[str, np.ndarray] = {}        # crossbar -> its programmed weights (drawn once, at its first use)
    for unit in schedule(g):
        if unit in g.layers:
            layer = g.layers[unit]
            if layer.crossbar not in chip:
                chip[layer.crossbar] = program(layer, device, rng)
            w = chip[layer.crossbar]
            xin = vals[layer.input]
            if device.read_noise.sigma > 0:
                vals[layer.output] = layer_with_read_noise(layer, w, xin, device.read_noise.sigma, rng)
            else:
                vals[layer.output] = layer.forward(xin, w)
            continue
        d = g.nodes[unit]
        if d["kind"] in (KIND_INPUT, KIND_OUTPUT):
            continue
        vals.update(zip(d["outputs"], rule_for(d["op"]).forward(d["attrs"], operand_values(g, d["inputs"], vals))))
    return vals


def monte_carlo(g, device, x, chips: int, seed: int = 0, tensors=None) -> dict[str, tuple[float, float]]:
    """tensor -> (MSE vs the float reference, 95% CI half-width), chips as the independent units."""
    rng = np.random.default_rng(seed)
    ref = g.graph["reference"]
    tensors = tensors or g.graph["outputs"]
    per_chip = {t: [] for t in tensors}
    for _ in range(chips):
        vals = chip_outputs(g, device, x, rng)
        for t in tensors:
            per_chip[t].append(np.mean((vals[t] - ref[t]) ** 2))
    return {t: (float(np.mean(v)), 1.96 * float(np.std(v, ddof=1)) / np.sqrt(chips)) for t, v in per_chip.items()}
