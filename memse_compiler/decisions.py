"""Decision outputs: a classifier exported for deployment ends in a decision over its classes: ArgMax
(`logits.argmax(1)`), TopK (`logits.topk(5)`, its values and indices) or Hardmax (the one-hot argmax).

A class index has no mean and variance worth the name, and the question it asks of a chip is already answered
for the scores it reads: how often the chip's top class is the float model's, or stays among its top k
(passes/agreement.py). So at load such a node over the class axis of a classifier-shaped signal ((batch,
classes), per token (batch, tokens, classes), per pixel (batch, classes, H, W)), whose outputs nothing else reads
and at least one of which is a graph output, is taken off: the graph outputs its scores instead (analysed,
simulated, and given their top-1 agreement over the decision's axis, their top-k agreement for a TopK of k >= 2,
and, with labels, accuracy), and `g.graph["decisions"]` records which output decided what, over which axis. Any
other such node on a signal the crossbars compute stays refused (a TopK of the smallest scores, a K the data
computes, a decision read by later ops).
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from memse_compiler.ir.ops.base import node_attribute
from passes.agreement import class_axis

DECISION_OPS = ("ArgMax", "TopK", "Hardmax")


def _typed(graph: onnx.GraphProto) -> dict[str, onnx.ValueInfoProto]:
    return {vi.name: vi for vi in list(graph.input) + list(graph.value_info) + list(graph.output)}


def _constant_values(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    """Initializers and Constant nodes' tensors, by name (a TopK's K is one of them)."""
    values = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        value = node_attribute(node, "value") if node.op_type == "Constant" else None
        if isinstance(value, onnx.TensorProto):
            values[node.output[0]] = numpy_helper.to_array(value)
    return values


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)


def _decision(node: onnx.NodeProto, dims: tuple, opset: int, constants: dict) -> dict | None:
    """What `node` (a decision op over a signal of shape `dims`) decides, or None when it is not a decision over
    a classifier's class axis."""
    if len(dims) < 2:
        return None
    default_axis = -1 if node.op_type == "TopK" or (node.op_type == "Hardmax" and opset >= 13) else \
        (1 if node.op_type == "Hardmax" else 0)
    axis = int(node_attribute(node, "axis", default_axis)) % len(dims)
    # a 3-D output's classes are on either side of its positions: (batch, tokens, classes), or a Conv1d's
    # (batch, classes, frames); the decision says which
    if (axis != class_axis(dims) and not (len(dims) == 3 and axis == 1)) or not (dims[axis] or 0) >= 2:
        return None
    if node.op_type == "ArgMax":
        return {"op": "ArgMax", "of": node.input[0], "axis": axis, "keepdims": bool(node_attribute(node, "keepdims", 1))}
    if node.op_type == "Hardmax":
        # before opset 13 Hardmax flattens from its axis on: one argmax per row only when that axis is the last
        return {"op": "Hardmax", "of": node.input[0], "axis": axis} if opset >= 13 or axis == len(dims) - 1 else None
    if not node_attribute(node, "largest", 1):
        return None
    k = node_attribute(node, "k") if len(node.input) < 2 else constants.get(node.input[1])
    if k is None or np.size(k) != 1 or not 1 <= int(np.reshape(k, -1)[0]) <= dims[axis]:
        return None
    return {"op": "TopK", "of": node.input[0], "axis": axis, "k": int(np.reshape(k, -1)[0])}


def split_decisions(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, dict]]:
    """`model` without its output decision nodes over a classifier's classes, their scores output instead, and
    {decision output: {"op": "ArgMax" | "TopK" | "Hardmax", "of": scores, "axis": int, ...}} (ArgMax: "keepdims";
    TopK: "k"; TopK's values and indices both decide) (empty, and the model itself, when none)."""
    graph = model.graph
    outputs = [o.name for o in graph.output]
    readers = {t for n in graph.node for t in n.input}
    typed, constants, opset = _typed(graph), None, _opset(model)
    decisions, taken = {}, set()
    for node in graph.node:
        if node.op_type not in DECISION_OPS or node.domain not in ("", "ai.onnx") or \
                any(t in readers for t in node.output) or not any(t in outputs for t in node.output):
            continue
        scores = typed.get(node.input[0])
        dims = tuple(d.dim_value or None for d in scores.type.tensor_type.shape.dim) if scores is not None else ()
        if node.op_type == "TopK" and constants is None:
            constants = _constant_values(graph)
        decision = _decision(node, dims, opset, constants)
        if decision is None:
            continue
        taken.add(id(node))
        decisions.update({t: dict(decision) for t in node.output if t in outputs})
    if not decisions:
        return model, {}
    out = onnx.ModelProto()
    out.CopyFrom(model)
    kept = [n for n, original in zip(out.graph.node, graph.node) if id(original) not in taken]
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
