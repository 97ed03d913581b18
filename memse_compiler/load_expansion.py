"""Ops expanded into other ONNX ops at load time, before anything runs the model in onnxruntime.

A rule whose `expand_at_load` is set (Attention: ir/ops/attention.py) has its `expand` applied here, to the ONNX
model, instead of during parsing: the frontend's probes (batch_first's layouts, shapes behind Shape arithmetic,
the per-sample check of a freed batch) then run plain MatMul / Softmax / Where nodes, which onnxruntime runs in
every form the op's definition allows, where its own kernel refuses some (Attention-23 with a mask broadcast over
the queries, as torch exports a key-padding mask), and batch_first follows the batch through ops it knows.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from memse_compiler.ir.errors import MemseInputError
from memse_compiler.ir.ops import rule_for
from memse_compiler.ir.ops.base import ParseContext
from memse_compiler.opset_upgrade import constant_tensors, default_opset, with_nodes


def _expanded_here(node: onnx.NodeProto) -> bool:
    rule = rule_for(node.op_type) if node.domain in ("", "ai.onnx") else None
    return rule is not None and rule.expand_at_load


def _shapes(graph: onnx.GraphProto) -> tuple[dict[str, tuple], dict[str, int]]:
    """Static shapes (None for a symbolic size) and elem types of the typed tensors."""
    shapes, types = {}, {}
    for vi in list(graph.input) + list(graph.value_info) + list(graph.output):
        t = vi.type.tensor_type
        if t.elem_type:
            types[vi.name] = t.elem_type
        if t.HasField("shape"):
            shapes[vi.name] = tuple(d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim)
    types.update((t.name, t.data_type) for t in graph.initializer)
    return shapes, types


def expand_at_load(model: onnx.ModelProto, label: str) -> onnx.ModelProto:
    """`model` with every node of an `expand_at_load` rule replaced by its expansion (unchanged if none)."""
    graph = model.graph
    targets = {i for i, n in enumerate(graph.node) if _expanded_here(n)}
    if not targets:
        return model
    shapes, types = _shapes(graph)
    consts = {k: numpy_helper.to_array(t) for k, t in constant_tensors(graph).items()}
    opset = default_opset(model)
    nodes, inits = [], []
    for idx, node in enumerate(graph.node):
        if idx not in targets:
            nodes.append(node)
            continue
        known = set(consts)
        ctx = ParseContext(node=node, node_name=node.name or f"{node.op_type}_{idx}", consts=consts, shapes=shapes,
                           opset=opset, elem_types=types)
        try:
            nodes += rule_for(node.op_type).expand(ctx)
        except MemseInputError as exc:
            raise MemseInputError(f"{label}: {exc}") from None
        # the rules write float constants in float64 (the analysis' precision): as the node's own float type here
        float_type = helper.tensor_dtype_to_np_dtype(types.get(node.input[0], onnx.TensorProto.FLOAT))
        for name in consts.keys() - known:
            value = np.asarray(consts[name])
            inits.append(numpy_helper.from_array(value.astype(float_type) if value.dtype.kind == "f" else value,
                                                 name))
    expanded = ", ".join(sorted({graph.node[i].op_type for i in targets}))
    return with_nodes(model, nodes, inits, label, f"expanding {expanded}")
