"""Shared graph surgery for the folding passes."""
from __future__ import annotations

from memse_compiler.ir import KIND_WEIGHTED, MemseGraph


def reads_shared_initializer(g: MemseGraph, weighted: str) -> bool:
    """Whether another weighted op reads the same weight initializer: they may drive one crossbar
    (passes/map_conductances.share_crossbars), which folding a constant into one of them would break."""
    source = g.nodes[weighted]["attrs"]["layer"].extra.get("weight_source")
    return source is not None and any(
        n != weighted and d["kind"] == KIND_WEIGHTED and d["attrs"]["layer"].extra.get("weight_source") == source
        for n, d in g.nodes(data=True))


def foldable_producer(g: MemseGraph, node: str) -> str | None:
    """The weighted op feeding `node` if `node` is its only consumer and its output is not a graph output (and it
    shares its weights with no other op: the folded constant then stays a digital op)."""
    data = g.nodes[node]
    preds = [p for p in g.predecessors(node) if g.nodes[p]["kind"] == KIND_WEIGHTED]
    for p in preds:
        out = g.nodes[p]["outputs"][0]
        if out in data["inputs"] and out not in g.graph["outputs"] and list(g.successors(p)) == [node] \
                and data["inputs"].count(out) == 1 and not reads_shared_initializer(g, p):
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
