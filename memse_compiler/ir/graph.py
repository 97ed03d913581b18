"""The annotated graph: a networkx.DiGraph whose nodes are ops and whose edges are signals.

Node attributes (all nodes):
    op        ONNX op type, or one of "Input", "Output", "DAC", "Crossbar", "ADC", "PartialSum", "Bias"
    kind      one of the KIND_* constants below
    inputs    ordered activation tensor names the node reads
    outputs   tensor names it writes
Frontend nodes additionally carry ``attrs`` (parsed ONNX attributes), ``params`` (constant operands by role),
``onnx_node`` (the NodeProto, re-emitted by the executor for digital ops) and ``rule`` (the op rule name).
Nodes produced by lowering carry ``layer`` (the weighted op they implement) and, for tiles/ADCs,
``group``, ``row_tile``, ``col_tile``, ``rows`` ([start, stop) of the matrix rows) and ``outputs_range``.

Edge attributes: ``tensor`` (signal name), ``shape`` (None for the symbolic batch dimension), and after the
analysis ``mean_expr``, ``var_expr`` (sympy), ``mean``, ``var`` (numpy arrays) and ``mse`` (float).

Graph attributes (``g.graph``): ``name``, ``inputs``/``outputs`` (graph tensor names), ``tensors``
(name -> static shape), ``layers`` (name -> CrossbarLayer, after lowering), ``device``, and whatever the
passes record (``reference`` activations, ``timing``, ...).
"""
from __future__ import annotations

from typing import Any, Iterator

import networkx as nx

KIND_INPUT = "input"
KIND_OUTPUT = "output"
KIND_DIGITAL = "digital"
KIND_WEIGHTED = "weighted"      # a weighted op before lowering
KIND_DAC = "dac"
KIND_CROSSBAR = "crossbar"
KIND_ADC = "adc"
KIND_SUM = "sum"                # digital partial-sum adder of a lowered layer
KIND_BIAS = "bias"              # digital bias add (crossbar.bias = "digital")

LOWERED_KINDS = (KIND_DAC, KIND_CROSSBAR, KIND_ADC, KIND_SUM, KIND_BIAS)


class MemseGraph(nx.DiGraph):
    """A DiGraph with a few named accessors; everything lives in plain networkx attributes."""

    @property
    def layers(self) -> dict[str, Any]:
        return self.graph.setdefault("layers", {})

    @property
    def tensors(self) -> dict[str, tuple]:
        return self.graph.setdefault("tensors", {})

    def producer(self, tensor: str) -> str:
        return self.graph["producers"][tensor]

    def add_signal(self, src: str, dst: str, tensor: str, **attrs: Any) -> None:
        self.add_edge(src, dst, tensor=tensor, shape=self.tensors.get(tensor), **attrs)

    def rebuild_producers(self) -> None:
        self.graph["producers"] = {t: n for n, d in self.nodes(data=True) for t in d.get("outputs", ())}

    def consumers(self, tensor: str) -> list[str]:
        return [v for _, v, t in self.out_edges(self.producer(tensor), data="tensor") if t == tensor]


def edges_of_tensor(g: nx.DiGraph, tensor: str) -> Iterator[tuple[str, str]]:
    for u, v, t in g.edges(data="tensor"):
        if t == tensor:
            yield u, v


def schedule(g: nx.DiGraph) -> list[str]:
    """Execution units in topological order: a digital node's name, or a lowered layer's name once.

    A lowered layer's nodes form a convex cluster fed only through its DAC, so the first time topological
    order reaches one of them, all of the layer's inputs are ready.
    """
    units, seen = [], set()
    for n in nx.lexicographical_topological_sort(g):
        data = g.nodes[n]
        unit = data.get("layer", n) if data["kind"] in LOWERED_KINDS else n
        if unit not in seen:
            seen.add(unit)
            units.append(unit)
    return units
