"""Fold an inference BatchNormalization into the weighted op before it (exact: per-output scale and shift)."""
from __future__ import annotations

import numpy as np

from memse_compiler.ir import MemseGraph
from memse_compiler.ir.pass_base import Pass, PassContext
from passes._rewrite import absorb, foldable_producer, output_channel_axis


class FoldBatchNorm(Pass):
    name = "fold_batchnorm"

    def apply(self, g: MemseGraph, ctx: PassContext) -> MemseGraph:
        for node in [n for n, d in g.nodes(data=True) if d.get("op") == "BatchNormalization"]:
            producer = foldable_producer(g, node)
            if producer is None:
                continue
            layer = g.nodes[producer]["attrs"]["layer"]
            out_shape = g.tensors.get(layer.output) or ()
            axis = output_channel_axis(layer)
            # BN normalises axis 1; it folds only if that axis is the layer's output axis
            if axis is None or (axis == -1 and len(out_shape) != 2) or axis == 0:
                continue
            a, b = g.nodes[node]["attrs"]["a"], g.nodes[node]["attrs"]["b"]
            a = a.reshape(layer.groups, layer.outs)
            layer.weight = layer.weight * a[:, :, None]
            bias = layer.bias if layer.bias is not None else np.zeros((layer.groups, layer.outs))
            layer.bias = a * bias + b.reshape(layer.groups, layer.outs)
            layer.extra.setdefault("folded", []).append(node)
            absorb(g, producer, node)
        return g
