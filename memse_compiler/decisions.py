"""Decision outputs: a classifier exported for deployment ends in ArgMax over its classes (`logits.argmax(1)`).

An integer class index has no mean and variance worth the name, and the question it asks of a chip is already
answered for the scores it reads: how often the chip's top class is the float model's (passes/agreement.py). So
at load an ArgMax over the class axis of a classifier-shaped signal ((batch, classes), per token (batch, tokens,
classes), per pixel (batch, classes, H, W)), whose index is a graph output that nothing else reads, is taken off:
the graph outputs its scores instead (analysed, simulated, and given their top-1 agreement over the ArgMax's axis
and, with labels, accuracy), and `g.graph["decisions"]` records which output decided what, over which axis. Any
other ArgMax on a signal the crossbars compute stays refused.
"""
from __future__ import annotations

import onnx

from memse_compiler.ir.ops.base import node_attribute
from passes.agreement import class_axis


def _typed(graph: onnx.GraphProto) -> dict[str, onnx.ValueInfoProto]:
    return {vi.name: vi for vi in list(graph.input) + list(graph.value_info) + list(graph.output)}


def split_decisions(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, dict]]:
    """`model` without its output ArgMax nodes over a classifier's classes, their scores output instead, and
    {ArgMax output: {"op": "ArgMax", "of": scores, "axis": int, "keepdims": bool}} (empty, and the model itself,
    when none)."""
    graph = model.graph
    outputs = [o.name for o in graph.output]
    readers = {t for n in graph.node for t in n.input}
    typed = _typed(graph)
    decisions = {}
    for node in graph.node:
        if node.op_type != "ArgMax" or node.domain not in ("", "ai.onnx") or node.output[0] not in outputs or \
                node.output[0] in readers:
            continue
        scores = typed.get(node.input[0])
        dims = tuple(d.dim_value or None for d in scores.type.tensor_type.shape.dim) if scores is not None else ()
        axis = int(node_attribute(node, "axis", 0)) % max(len(dims), 1)
        # a 3-D output's classes are on either side of its positions: (batch, tokens, classes), or a Conv1d's
        # (batch, classes, frames); the ArgMax says which
        if len(dims) < 2 or (axis != class_axis(dims) and not (len(dims) == 3 and axis == 1)) or \
                not (dims[axis] or 0) >= 2:
            continue
        decisions[node.output[0]] = {"op": "ArgMax", "of": node.input[0], "axis": axis,
                                     "keepdims": bool(node_attribute(node, "keepdims", 1))}
    if not decisions:
        return model, {}
    out = onnx.ModelProto()
    out.CopyFrom(model)
    kept = [n for n in out.graph.node if not (n.op_type == "ArgMax" and n.output[0] in decisions)]
    del out.graph.node[:]
    out.graph.node.extend(kept)
    new_outputs, seen = [], set()
    for o in out.graph.output:
        name = decisions[o.name]["of"] if o.name in decisions else o.name
        if name in seen:
            continue
        seen.add(name)
        vi = onnx.ValueInfoProto()
        vi.CopyFrom(typed[name] if o.name in decisions else o)
        new_outputs.append(vi)
    del out.graph.output[:]
    out.graph.output.extend(new_outputs)
    return out, decisions
