"""Tiling (DESIGN §4.9): expand each weighted op into DAC -> crossbar tiles -> ADCs -> partial-sum adder.

A tile holds `rows` x `cols/2` weights (a differential pair uses two columns); rows follow the op's input
order with the bias row last; row tiles' partial sums are added digitally after their ADCs.
"""
from __future__ import annotations

import math

from memse_compiler.ir import (KIND_ADC, KIND_BIAS, KIND_CROSSBAR, KIND_DAC, KIND_SUM, KIND_WEIGHTED,
                               MemseGraph)
from memse_compiler.ir.pass_base import Pass, PassContext


def tile_layer(layer, rows: int, cols: int) -> None:
    layer.rows_per_tile = rows
    layer.outs_per_tile = cols // 2
    layer.row_tiles = math.ceil(layer.rows / rows)
    layer.col_tiles = math.ceil(layer.outs / layer.outs_per_tile)


def expand(g: MemseGraph, node: str) -> None:
    """Replace the weighted node by its tile cluster; the output tensor keeps its name."""
    data = g.nodes[node]
    layer = data["attrs"]["layer"]
    in_edges = list(g.in_edges(node, data=True))
    out_edges = list(g.out_edges(node, data=True))
    g.remove_node(node)
    g.layers[layer.name] = layer
    L, x = layer.name, layer.input
    positions = getattr(layer.geometry, "positions", 1)
    common = dict(layer=L, onnx_op=layer.op)
    dac = f"{L}/dac"
    g.add_node(dac, op="DAC", kind=KIND_DAC, inputs=[x], outputs=[dac], **common)
    g.tensors[dac] = g.tensors.get(x)
    for src, _, edata in in_edges:
        g.add_edge(src, dac, **edata)
    has_digital_bias = layer.bias is not None and not layer.bias_row
    summed = f"{L}/sum" if has_digital_bias else layer.output
    adc_outs = []
    for grp in range(layer.groups):            # one node per tile: the graph is the hardware netlist
        for r in range(layer.row_tiles):
            r0, r1 = r * layer.rows_per_tile, min((r + 1) * layer.rows_per_tile, layer.rows)
            for c in range(layer.col_tiles):
                o0, o1 = c * layer.outs_per_tile, min((c + 1) * layer.outs_per_tile, layer.outs)
                idx = f"[{grp},{r},{c}]"
                tile, ps, adc, code = f"{L}/tile{idx}", f"{L}/ps{idx}", f"{L}/adc{idx}", f"{L}/adc_out{idx}"
                where = dict(group=grp, row_tile=r, col_tile=c, rows=[r0, r1], outputs_range=[o0, o1], **common)
                g.add_node(tile, op="Crossbar", kind=KIND_CROSSBAR, inputs=[dac], outputs=[ps],
                           used_rows=r1 - r0, used_outputs=o1 - o0, **where)
                g.add_node(adc, op="ADC", kind=KIND_ADC, inputs=[ps], outputs=[code], **where)
                g.tensors[ps] = g.tensors[code] = (None, positions, o1 - o0)
                g.add_signal(dac, tile, dac)
                g.add_signal(tile, adc, ps)
                adc_outs.append((adc, code))
    g.add_node(f"{L}/sum", op="PartialSum", kind=KIND_SUM, inputs=[c for _, c in adc_outs], outputs=[summed],
               **common)
    for adc, code in adc_outs:
        g.add_signal(adc, f"{L}/sum", code)
    last = f"{L}/sum"
    if has_digital_bias:
        g.tensors[summed] = g.tensors.get(layer.output)
        g.add_node(f"{L}/bias", op="Bias", kind=KIND_BIAS, inputs=[summed], outputs=[layer.output], **common)
        g.add_signal(last, f"{L}/bias", summed)
        last = f"{L}/bias"
    for _, dst, edata in out_edges:
        g.add_edge(last, dst, **edata)


class TileCrossbars(Pass):
    name = "tile_crossbars"

    def apply(self, g: MemseGraph, ctx: PassContext) -> MemseGraph:
        xbar = ctx.device.crossbar
        for node in [n for n, d in g.nodes(data=True) if d["kind"] == KIND_WEIGHTED]:
            tile_layer(g.nodes[node]["attrs"]["layer"], xbar.rows, xbar.cols)
            expand(g, node)
        g.rebuild_producers()
        return g
