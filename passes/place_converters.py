"""DAC/ADC placement and range calibration (DESIGN §4.6-4.8) on the float run of the evaluation inputs."""
from __future__ import annotations

import numpy as np

from memse_compiler.ir import KIND_ADC, KIND_DAC, MemseGraph
from memse_compiler.ir.crossbar import crossbar_uses
from memse_compiler.ir.errors import MemseInputError
from memse_compiler.ir.pass_base import Pass, PassContext


def calibrate_layer(layer, x_ref: np.ndarray, dac_bits, adc_bits, headroom: float) -> None:
    layer.dac_bits, layer.adc_bits = dac_bits, adc_bits
    layer.dac_range = float(np.abs(x_ref).max()) if x_ref.size else 0.0
    layer.dac_signed = bool((x_ref < 0).any())
    if layer.dac_signed and dac_bits == 1:
        raise MemseInputError(f"layer '{layer.name}': its input takes negative values, so its DAC is signed, and a "
                              f"signed 1-bit DAC has only the code 0: use dac.bits >= 2")
    # float partial sums of every tile: one ADC range per tile
    ps = np.abs(layer.partial_sums(layer.vectors(x_ref), layer.augmented_weight())).max(axis=(0, 1))  # G, R, O
    pad = layer.col_tiles * layer.outs_per_tile - layer.outs
    ps = np.pad(ps, ((0, 0), (0, 0), (0, pad)))
    layer.adc_range = headroom * ps.reshape(layer.groups, layer.row_tiles, layer.col_tiles, -1).max(axis=-1)


def share_converters(g: MemseGraph) -> None:
    """A shared crossbar has one set of converters: ranges cover every use (the widest), signed if any is."""
    for group in (u for u in crossbar_uses(g.layers.values()).values() if len(u) > 1):
        dac_range = max(lay.dac_range for lay in group)
        dac_signed = any(lay.dac_signed for lay in group)
        adc_range = np.maximum.reduce([lay.adc_range for lay in group])
        for lay in group:
            lay.dac_range, lay.dac_signed, lay.adc_range = dac_range, dac_signed, adc_range.copy()


class PlaceConverters(Pass):
    name = "place_converters"

    def apply(self, g: MemseGraph, ctx: PassContext) -> MemseGraph:
        ref = g.graph.get("reference")
        if ref is None:
            raise MemseInputError("place_converters needs the calibrate pass to run first")
        dev = ctx.device
        for layer in g.layers.values():
            calibrate_layer(layer, ref[layer.input], dev.dac.bits, dev.adc.bits, dev.adc.headroom)
        share_converters(g)
        for n, d in g.nodes(data=True):     # copies for inspection; the layer record is the source of truth
            if d["kind"] == KIND_DAC:
                layer = g.layers[d["layer"]]
                d.update(bits=layer.dac_bits, range=layer.dac_range, signed=layer.dac_signed)
            elif d["kind"] == KIND_ADC:
                layer = g.layers[d["layer"]]
                d.update(bits=layer.adc_bits, range=float(layer.adc_range[d["group"], d["row_tile"], d["col_tile"]]),
                         signed=True)
        return g
