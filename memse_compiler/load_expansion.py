"""Ops expanded into other ONNX ops at load time, before anything runs the model in onnxruntime.

A rule whose `expand_at_load` is set (Attention: ir/ops/attention.py) has its `expand` applied here, to the ONNX
model, instead of during parsing: the frontend's probes (batch_first's layouts, shapes behind Shape arithmetic,
the per-sample check of a freed batch) then run plain MatMul / Softmax / Where nodes, which onnxruntime runs in
every form the op's definition allows, where its own kernel refuses some (Attention-23 with a mask broadcast over
the queries, as torch exports a key-padding mask), and batch_first follows the batch through ops it knows.

Rules with `probed_inputs` (the element-indexed reads and writes, ir/ops/scatter.py; RotaryEmbedding's position
ids, ir/ops/rotary.py) expand second: what they need and the model computes (indices from Shape arithmetic, the
shape of the data) is evaluated first with onnxruntime at two batch sizes (`probed_values`).
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from memse_compiler.batch_broadcasts import BATCH_PROBES
from memse_compiler.ir.errors import MemseInputError
from memse_compiler.ir.ops import rule_for
from memse_compiler.ir.ops.base import ParseContext
from memse_compiler.opset_upgrade import constant_tensors, default_opset, live_nodes, with_nodes


def _rule_of(node: onnx.NodeProto):
    """The rule of `node`'s op in its domain (onnxruntime's contrib ops have theirs: ir/ops/qoperator.py and
    ir/ops/contrib.py)."""
    return rule_for(node.op_type, node.domain)


def _expanded_here(node: onnx.NodeProto, probing: bool) -> bool:
    rule = _rule_of(node)
    return rule is not None and rule.expand_at_load and bool(rule.probed_inputs) == probing


def _float_type(node: onnx.NodeProto, types: dict) -> np.dtype:
    """The float type of the node's first float input (a quantized op's scale), float32 when none is known."""
    floats = (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16)
    found = next((types[t] for t in node.input if types.get(t) in floats), onnx.TensorProto.FLOAT)
    return helper.tensor_dtype_to_np_dtype(found)


def _value_dependent(graph: onnx.GraphProto, data: list[str]) -> set[str]:
    """The tensors whose values depend on the data inputs' values (a Shape's output does not)."""
    signals = set(data)
    for node in graph.node:
        if node.op_type not in ("Shape", "Size") and any(t in signals for t in node.input):
            signals.update(o for o in node.output if o)
    return signals


def _one_sample(values: list[np.ndarray], batches: tuple) -> tuple[np.ndarray, int | None] | None:
    """A batch-independent tensor's value at the probe batches as a constant: itself, or one sample's slice (size 1
    on the batch axis) when it follows the batch and every sample's slice is the same; None otherwise."""
    first = values[0]
    if all(v.shape == first.shape and np.array_equal(v, first) for v in values[1:]):
        return first, None
    moved = [a for a in range(first.ndim) if {np.shape(v)[a] if np.ndim(v) == first.ndim else -1 for v in values}
             != {first.shape[a]}]
    if len(moved) != 1 or any(np.ndim(v) != first.ndim or v.shape[moved[0]] != b for v, b in zip(values, batches)):
        return None
    axis = moved[0]
    one = np.take(first, [0], axis=axis)
    if all(np.array_equal(v, np.broadcast_to(one, v.shape)) for v in values):
        return one, axis
    return None


def probed_values(model: onnx.ModelProto, wanted: set[str], types: dict, label: str
                  ) -> tuple[dict[str, np.ndarray], dict[str, tuple], dict[str, int]]:
    """Tensors the model computes, run by onnxruntime at two batch sizes (at the export's, when it fixes one):
    those that do not depend on the data's values (indices from Shape arithmetic, an Expand of a constant to the
    input's shape) as constants, with their batch axis where they follow the batch (`_one_sample`); of the others
    (signals) the shapes, None on the batch axis. Empty when the inputs' sizes other than the batch are unknown."""
    from memse_compiler.batch_first import probe_values
    graph = model.graph
    inits = {t.name for t in graph.initializer}
    data = [vi for vi in graph.input if vi.name not in inits]
    dims = [[d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim] for vi in data]
    # a tensor whose type shape inference could not give (behind onnxruntime's contrib ops) is asked for as float:
    # what the rules that probe past them read (an Attention's or FusedMatMul's input)
    types = {t: types.get(t, onnx.TensorProto.FLOAT) for t in wanted}
    names = sorted(wanted)
    if not data or not names or any(not d or None in d[1:] for d in dims):
        return {}, {}, {}
    batches = (dims[0][0],) if dims[0][0] is not None else BATCH_PROBES
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.output[:]
    probe.graph.output.extend(helper.make_tensor_value_info(t, types[t], None) for t in names)
    try:
        runs = [probe_values(probe, [vi.name for vi in data], b, everything=False) for b in batches]
    except Exception as exc:       # onnxruntime's own errors, in one line
        text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise MemseInputError(f"{label}: {', '.join(names)} (computed from shapes) could not be evaluated by "
                              f"onnxruntime ({text})") from None
    signals = _value_dependent(graph, [vi.name for vi in data])
    consts, shapes, batch_axes = {}, {}, {}
    for t in names:
        values = [np.asarray(run[t]) for run in runs]
        if t in signals:
            if all(v.ndim == values[0].ndim for v in values):
                shapes[t] = tuple(d if all(v.shape[a] == d for v in values) else None
                                  for a, d in enumerate(values[0].shape))
            continue
        fixed = _one_sample(values, batches)
        if fixed is not None:
            consts[t] = fixed[0]
            if fixed[1] is not None:
                batch_axes[t] = fixed[1]
    return consts, shapes, batch_axes


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
    """`model` with every node of an `expand_at_load` rule replaced by its expansion (unchanged if none). A node of
    another domain than ONNX's that no rule expands is refused here, in one line."""
    for idx, node in enumerate(model.graph.node):
        if node.domain in ("", "ai.onnx"):
            continue
        rule = _rule_of(node)
        if rule is None or not rule.expand_at_load:
            why = {"com.microsoft": f" (its op {node.op_type} is not one of onnxruntime's contrib ops that load "
                                    f"expands)",
                   "com.microsoft.nchwc": " (onnxruntime's blocked layouts of ORT_ENABLE_ALL, specific to the machine "
                                          "that saved the model: save it at ORT_ENABLE_EXTENDED or below)"}
            raise MemseInputError(f"{label}: node '{node.name or idx}' uses the custom domain '{node.domain}'"
                                  + why.get(node.domain, ""))
    return _expand(_expand(model, label, probing=False), label, probing=True)


def _expand(model: onnx.ModelProto, label: str, probing: bool) -> onnx.ModelProto:
    graph = model.graph
    targets = {i for i, n in enumerate(graph.node) if _expanded_here(n, probing)}
    if not targets:
        return model
    shapes, types = _shapes(graph)
    consts = {k: numpy_helper.to_array(t) for k, t in constant_tensors(graph).items()}
    batch_axes: dict[str, int] = {}
    if probing:
        wanted = {graph.node[i].input[s] for i in targets for s in _rule_of(graph.node[i]).probed_inputs
                  if s < len(graph.node[i].input)} - set(consts) - {vi.name for vi in graph.input} - {""}
        values, probed_shapes, batch_axes = probed_values(model, wanted, types, label)
        consts.update(values)
        shapes.update(probed_shapes)
    opset = default_opset(model)
    nodes, inits = [], []
    for idx, node in enumerate(graph.node):
        if idx not in targets:
            nodes.append(node)
            continue
        known = set(consts)
        ctx = ParseContext(node=node, node_name=node.name or f"{node.op_type}_{idx}", consts=consts, shapes=shapes,
                           opset=opset, elem_types=types, batch_axes=batch_axes)
        try:
            expanded = _rule_of(node).expand(ctx)
        except MemseInputError as exc:
            raise MemseInputError(f"{label}: {exc}") from None
        nodes += expanded or [node]      # None: left to the frontend (indices from the data: an exact op, or refused)
        # the rules write float constants in float64 (the analysis' precision): as the node's own float type here
        float_type = _float_type(node, types)
        for name in consts.keys() - known:
            value = np.asarray(consts[name])
            inits.append(numpy_helper.from_array(value.astype(float_type) if value.dtype.kind == "f" else value,
                                                 name))
    expanded = ", ".join(sorted({graph.node[i].op_type for i in targets}))
    if probing:
        nodes = live_nodes(nodes, {o.name for o in graph.output})      # the indices' Shape arithmetic
    return with_nodes(model, nodes, inits, label, f"expanding {expanded}")
