"""Interpreters of the graph: exact float semantics, and the deterministic (noiseless) programmed chip."""
from __future__ import annotations

import numpy as np

from memse_compiler.ir.feeds import Inputs, graph_feed
from memse_compiler.ir.graph import KIND_INPUT, KIND_OUTPUT, KIND_WEIGHTED, LOWERED_KINDS, MemseGraph, schedule
from memse_compiler.ir.ops import rule_for


def operand_values(g: MemseGraph, names: list[str], values: dict[str, np.ndarray]) -> list[np.ndarray]:
    consts = g.graph["constants"]
    return [values[n] if n in values else consts[n] for n in names]


def run(g: MemseGraph, x: Inputs, hardware: bool = False,
        matrices: dict[str, np.ndarray] | None = None, converters: bool = True) -> dict[str, np.ndarray]:
    """All signals of the graph for the input batch `x` (float64; a dict by input name for several inputs).

    hardware=False: the network's float semantics (weighted ops with their float weights), the reference.
    hardware=True: the noiseless programmed chip: quantized conductances, tiling and converters; `matrices`:
    other effective weights (G, O, Jb) for some layers (e.g. rounded to other levels); converters=False:
    ideal DACs and ADCs.
    """
    values = graph_feed(g, x)
    for unit in schedule(g):
        if unit in g.layers:
            layer = g.layers[unit]
            xin = values[layer.input]
            values[layer.output] = (layer.forward(xin, (matrices or {}).get(unit), converters) if hardware
                                    else layer.float_forward(xin))
            continue
        data = g.nodes[unit]
        if data["kind"] in (KIND_INPUT, KIND_OUTPUT):
            continue
        if data["kind"] in LOWERED_KINDS:
            raise ValueError(f"lowered node '{unit}' has no layer record")
        if data["kind"] == KIND_WEIGHTED:
            values[data["outputs"][0]] = data["attrs"]["layer"].float_forward(values[data["inputs"][0]])
            continue
        outs = rule_for(data["op"]).forward(data["attrs"], operand_values(g, data["inputs"], values))
        values.update(zip(data["outputs"], outs))
    return values
