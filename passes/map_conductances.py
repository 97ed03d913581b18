"""Weight-to-conductance mapping (DESIGN §4.1-4.3): scale groups, differential pairs, quantized targets."""
from __future__ import annotations

import numpy as np

from memse_compiler.ir import KIND_WEIGHTED, MemseGraph
from memse_compiler.ir.crossbar import CrossbarLayer
from memse_compiler.ir.errors import MemseInputError
from memse_compiler.ir.pass_base import Pass, PassContext


def weighted_layers(g: MemseGraph) -> list[CrossbarLayer]:
    """Every crossbar layer, lowered or not, in graph order."""
    found = [d["attrs"]["layer"] for _, d in g.nodes(data=True) if d["kind"] == KIND_WEIGHTED]
    return found + [layer for layer in g.layers.values() if layer not in found]


def quantize_conductance(target: np.ndarray, g_range: np.ndarray, levels: int | None, rounding: str) -> np.ndarray:
    """Targets above g_min (0..G) snapped to `levels` evenly spaced conductances on [0, G]."""
    if levels is None:
        return target
    step = g_range / (levels - 1)
    safe = np.where(step > 0, step, 1.0)
    k = np.round(target / safe) if rounding == "nearest" else np.floor(target / safe * (1 + 1e-12))
    return np.where(step > 0, np.clip(k, 0, levels - 1) * step, 0.0)


def map_layer(layer: CrossbarLayer, device) -> None:
    cond = device.conductance
    layer.bias_row = device.crossbar.bias == "row" and layer.bias is not None
    layer.scale = device.mapping.scale
    a = layer.augmented_weight()
    axes = (0, 1, 2) if layer.scale == "layer" else (2,)
    layer.w_max = np.abs(a).max(axis=axes, keepdims=True)
    window = cond.g_max - cond.g_min
    if layer.g_range is None or np.shape(layer.g_range) != layer.w_max.shape:
        layer.g_range = np.full(layer.w_max.shape, window)
    if np.any(layer.g_range <= 0) or np.any(layer.g_range > window * (1 + 1e-9)):
        raise MemseInputError(f"layer '{layer.name}': conductance range must lie in (0, g_max - g_min]")
    layer.g_min = cond.g_min
    layer.g_plus, layer.g_minus = pair_conductances(layer, cond.levels, cond.rounding)


def pair_conductances(layer: CrossbarLayer, levels: int | None, rounding: str) -> tuple[np.ndarray, np.ndarray]:
    """(G+, G-) target conductances of the layer's weights (its w_max, G and g_min as mapped) with `levels`
    levels: the positive part of each weight on G+, the negative part on G-, the other device at g_min."""
    a, c = layer.augmented_weight(), layer.scale_c
    return (layer.g_min + quantize_conductance(c * np.maximum(a, 0), layer.g_range, levels, rounding),
            layer.g_min + quantize_conductance(c * np.maximum(-a, 0), layer.g_range, levels, rounding))


def same_crossbar(a: CrossbarLayer, b: CrossbarLayer) -> bool:
    """Whether two mapped layers hold the same programmed array: same geometry kind, scale groups, ranges and
    target conductances (after every fold, so an op whose bias or scale was folded differently is apart)."""
    return (type(a.geometry) is type(b.geometry) and a.bias_row == b.bias_row and a.scale == b.scale
            and a.g_plus.shape == b.g_plus.shape and np.array_equal(a.g_range, b.g_range)
            and np.array_equal(a.g_plus, b.g_plus) and np.array_equal(a.g_minus, b.g_minus)
            and np.array_equal(a.w_max, b.w_max))


def share_crossbars(layers: list[CrossbarLayer]) -> None:
    """Ops that read the same weight initializer and map to the same array drive ONE crossbar, the first one's
    (`shared_with`): a recurrent layer's W and R at every step (recurrent.py), or weights tied in the model."""
    arrays: dict[str, list[CrossbarLayer]] = {}      # initializer -> the distinct arrays mapped from it
    for layer in layers:
        layer.shared_with = None
        source = layer.extra.get("weight_source")
        if source is None:
            continue
        lead = next((a for a in arrays.setdefault(source, []) if same_crossbar(a, layer)), None)
        if lead is None:
            arrays[source].append(layer)
        else:
            layer.shared_with = lead.name


class MapConductances(Pass):
    name = "map_conductances"

    def apply(self, g: MemseGraph, ctx: PassContext) -> MemseGraph:
        layers = weighted_layers(g)
        for layer in layers:
            map_layer(layer, ctx.device)
        share_crossbars(layers)
        return g
