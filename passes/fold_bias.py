"""Fold `weighted op -> Add(constant)` into the op's bias when the constant is one value per output."""
from __future__ import annotations

import numpy as np

from memse_compiler.ir import MemseGraph
from memse_compiler.ir.pass_base import Pass, PassContext
from passes._rewrite import absorb, foldable_producer, output_channel_axis


def per_output_vector(c: np.ndarray, outs: int, axis: int, out_rank: int) -> np.ndarray | None:
    """The constant as an (outs,) vector if it only varies along `axis` of an output of rank `out_rank`."""
    if c.ndim > out_rank:
        return None
    full = (1,) * (out_rank - c.ndim) + c.shape
    ax = axis % out_rank
    if any(n != 1 for i, n in enumerate(full) if i != ax) or full[ax] not in (1, outs):
        return None
    return np.broadcast_to(c.reshape(-1), (outs,)).astype(np.float64)


class FoldBiasAdd(Pass):
    name = "fold_bias"

    def apply(self, g: MemseGraph, ctx: PassContext) -> MemseGraph:
        consts = g.graph["constants"]
        for node in [n for n, d in g.nodes(data=True) if d.get("op") == "Add"]:
            producer = foldable_producer(g, node)
            if producer is None:
                continue
            other = [i for i in g.nodes[node]["inputs"] if i in consts]
            layer = g.nodes[producer]["attrs"]["layer"]
            out_shape = g.tensors.get(layer.output)
            axis = output_channel_axis(layer)
            if len(other) != 1 or out_shape is None or axis is None:
                continue
            vec = per_output_vector(consts[other[0]], layer.groups * layer.outs, axis, len(out_shape))
            if vec is None:
                continue
            bias = layer.bias if layer.bias is not None else np.zeros((layer.groups, layer.outs))
            layer.bias = bias + vec.reshape(layer.groups, layer.outs)
            layer.extra.setdefault("folded", []).append(node)
            absorb(g, producer, node)
        return g
