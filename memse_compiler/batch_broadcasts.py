"""Constants that stand for one sample repeated over the batch, rewritten as BatchBroadcast nodes of the data input.

Exporters write "the same value for every sample" in several ways: an Expand of one sample to the batch size
read from a Shape (`cls.expand(x.shape[0], -1, -1)`), a fixed-batch export's folded copy (a (B, 1, d) initializer
the dynamo exporter writes for that expand, a `zeros_like(mask)` of B rows), a ConstantOfShape of a Shape. The
frontend (memse_compiler/frontend.py) turns each into an internal BatchBroadcast node, which runs at any batch.
"""
from __future__ import annotations

import numpy as np
import onnx

from memse_compiler.ir.ops.base import node_attribute

BATCH_PROBES = (2, 3)         # batch sizes the shape arithmetic is folded at, to see what depends on the batch
# where a batch size read from a Shape may stand (the input, as the leading entry) and what replaces it there:
# a Reshape target (0: copy), an Expand shape (1: keep), Resize sizes (`F.interpolate(x, size=...)`; 0: its mark)
BATCH_SLOTS = {"Reshape": (1, 0), "Expand": (1, 1), "Resize": (3, 0)}


def one_sample_broadcast(node: onnx.NodeProto, name: str, data: str, consts: dict, batch_dependent: dict,
                         export_batch: int | None) -> onnx.NodeProto | None:
    """Expand of a constant of one sample to a shape that starts with the batch size (`cls.expand(x.shape[0],
    -1, -1)`: computed from a Shape, or the batch a fixed export baked in): an internal BatchBroadcast node of
    the data input and the sample's value, else None."""
    if node.op_type != "Expand" or len(node.input) < 2 or node.input[1] not in consts:
        return None
    c = consts.get(node.input[0])
    if c is None or node.input[0] in batch_dependent:
        return None
    t1 = consts[node.input[1]].reshape(-1)
    if node.input[1] in batch_dependent:
        t2 = batch_dependent[node.input[1]].reshape(-1)
        if not t1.size or (t1[0], t2[0]) != BATCH_PROBES or not np.array_equal(t1[1:], t2[1:]):
            return None
    elif not (export_batch and export_batch > 1 and t1.size and t1[0] == export_batch):
        return None
    if c.ndim > t1.size:
        return None
    c = c.reshape((1,) * (t1.size - c.ndim) + c.shape)
    if c.shape[0] != 1:
        return None
    value = np.array(np.broadcast_to(c, np.broadcast_shapes(c.shape, (1,) + tuple(int(d) for d in t1[1:]))))
    consts[f"{name}/value"] = value
    return onnx.helper.make_node("BatchBroadcast", [data, f"{name}/value"], [node.output[0]], name=name)


def baked_broadcasts(node: onnx.NodeProto, name: str, data: str, consts: dict,
                      export_batch: int | None) -> list[onnx.NodeProto] | None:
    """A Concat (along another axis) of a constant that a fixed-batch export folded from a broadcast of one
    sample (torch's dynamo exporter folds `cls.expand(B, -1, -1)` into a (B, 1, d) initializer): each such
    constant, B equal slices, becomes a BatchBroadcast node of its first slice ahead of the Concat. None if
    there is none."""
    if node.op_type != "Concat" or not export_batch:
        return None
    axis = node_attribute(node, "axis", 0)
    picked = {}
    for i, t in enumerate(node.input):
        c = consts.get(t)
        if c is None or c.ndim < 2 or axis % c.ndim == 0 or c.shape[0] != export_batch or not np.all(c == c[:1]):
            continue
        picked[i] = c[:1]
    return _broadcast_inputs(node, name, data, consts, picked, "batch_broadcast")


def batch_sized_constants(node: onnx.NodeProto, name: str, data: str, consts: dict, batch_dependent: dict,
                           shapes: dict, export_batch: int | None) -> list[onnx.NodeProto] | None:
    """A node reading a constant that holds one value per sample, the same for every sample: computed from the
    batch size (`torch.zeros_like(mask)`: a ConstantOfShape of a Shape), or a fixed-batch export's folded copy of
    it, aligned with a batch-first signal operand of the same rank: a BatchBroadcast node of the data input and
    that sample's value ahead of the node. None if there is none (a Reshape's or Expand's target is `_copy_batch`'s)."""
    slot = BATCH_SLOTS.get(node.op_type, (None, None))[0]
    ranks = {len(shapes[t]) for t in node.input if t and t not in consts and shapes.get(t) and shapes[t][0] is None}
    picked = {}
    for i, t in enumerate(node.input):
        if i == slot or t not in consts:
            continue
        c1 = consts[t]
        if t in batch_dependent:
            c2 = batch_dependent[t]
            if c1.ndim == 0 or (c1.shape[0], c2.shape[0]) != BATCH_PROBES or c1.shape[1:] != c2.shape[1:] or \
                    not np.all(c2 == c1[:1]):
                continue
        elif not (export_batch and export_batch > 1 and c1.ndim in ranks and c1.shape[0] == export_batch):
            continue
        if not np.all(c1 == c1[:1]):
            continue
        picked[i] = c1[:1]
    return _broadcast_inputs(node, name, data, consts, picked, "batch_sized")


def _broadcast_inputs(node: onnx.NodeProto, name: str, data: str, consts: dict, picked: dict[int, np.ndarray],
                      tag: str) -> list[onnx.NodeProto] | None:
    """BatchBroadcast nodes of `data` and each picked input's one-sample value, then the node reading them; None if
    nothing was picked."""
    if not picked:
        return None
    new, nodes = onnx.NodeProto(), []
    new.CopyFrom(node)
    for i, value in picked.items():
        bb = f"{name}/{tag}_{i}"
        consts[f"{bb}/value"] = value
        nodes.append(onnx.helper.make_node("BatchBroadcast", [data, f"{bb}/value"], [f"{bb}/out"], name=bb))
        new.input[i] = f"{bb}/out"
    return nodes + [new]
