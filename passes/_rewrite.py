"""Shared graph surgery for the folding passes."""
from __future__ import annotations

from memse_compiler.ir import KIND_WEIGHTED, MemseGraph


def foldable_producer(g: MemseGraph, node: str) -> str | None:
    """The weighted op feeding `node` if `node` is its only consumer and its output is not a graph output."""
    data = g.nodes[node]
    preds = [p for p in g.predecessors(node) if g.nodes[p]["kind"] == KIND_WEIGHTED]
    for p in preds:
        out = g.nodes[p]["outputs"][0]
        if out in data["inputs"] and out not in g.graph["outputs"] and list(g.successors(p)) == [node] \
                and data["inputs"].count(out) == 1:
            return p
    return None


def absorb(g: MemseGraph, producer: str, node: str) -> None:
    """Remove `node`, letting `producer` write its output tensor (same name, so consumers are unchanged)."""
    out = g.nodes[node]["outputs"][0]
    for _, succ, data in list(g.out_edges(node, data=True)):
        g.add_edge(producer, succ, **data)
    g.remove_node(node)
    g.nodes[producer]["outputs"] = [out]
    g.nodes[producer]["attrs"]["layer"].output = out
    g.rebuild_producers()


def output_channel_axis(layer) -> int | None:
    """Axis of the layer's output tensor that indexes its outputs, or None when a fold cannot be expressed."""
    from memse_compiler.ir.geometry import ConvGeometry
    if isinstance(layer.geometry, ConvGeometry):
        return 1
    return 0 if layer.geometry.out_columns else -1
