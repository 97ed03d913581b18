"""ONNX frontend: load, check, infer shapes, fold constants, and build the op-level graph from the registry."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from memse_compiler.ir import KIND_DIGITAL, KIND_INPUT, KIND_OUTPUT, KIND_WEIGHTED, MemseGraph
from memse_compiler.ir.errors import MemseInputError
from memse_compiler.ir.ops import SUPPORTED_OPS, rule_for
from memse_compiler.ir.ops.base import ParseContext


def load_model(model: str | os.PathLike | onnx.ModelProto) -> tuple[onnx.ModelProto, str]:
    """Read and check an ONNX file; errors name the file and say what is wrong, in one line."""
    if isinstance(model, onnx.ModelProto):
        label = model.graph.name or "model"
    else:
        label = str(model)
        path = Path(model)
        if not path.is_file():
            raise MemseInputError(f"{label}: no such file")
        data = path.read_bytes()
        if not data:
            raise MemseInputError(f"{label}: empty file, not an ONNX model")
        try:
            model = onnx.load_from_string(data)
        except Exception as exc:  # protobuf raises its own DecodeError and friends
            raise MemseInputError(f"{label}: not a valid ONNX model (truncated or not ONNX: "
                                  f"{type(exc).__name__})") from None
    if not model.graph.node:
        raise MemseInputError(f"{label}: the ONNX graph has no nodes (truncated or not ONNX?)")
    try:
        onnx.checker.check_model(model)
        model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    except Exception as exc:
        raise MemseInputError(f"{label}: invalid ONNX model: {_first_line(exc)}") from None
    return model, label


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _as_float64(a: np.ndarray) -> np.ndarray:
    """Float constants are computed in float64, so the analysis and the reference lose nothing to rounding."""
    return a.astype(np.float64) if a.dtype.kind == "f" else a


def _dims(vi: onnx.ValueInfoProto) -> tuple | None:
    t = vi.type.tensor_type
    if not t.HasField("shape"):
        return None
    return tuple(d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim)


def _fold_constant_node(node: onnx.NodeProto, consts: dict[str, np.ndarray], opset: int) -> list[np.ndarray]:
    """Evaluate a node whose inputs are all constants (rare: exporters leave few) with onnx.reference."""
    from onnx.reference import ReferenceEvaluator
    inputs = [onnx.helper.make_tensor_value_info(n, onnx.helper.np_dtype_to_tensor_dtype(consts[n].dtype), None)
              for n in node.input if n]
    outputs = [onnx.helper.make_tensor_value_info(n, onnx.TensorProto.UNDEFINED, None) for n in node.output]
    g = onnx.helper.make_graph([node], "fold", inputs, outputs)
    m = onnx.helper.make_model(g, opset_imports=[onnx.helper.make_opsetid("", opset)])
    return ReferenceEvaluator(m).run(None, {n: consts[n] for n in node.input if n})


def build_graph(model: str | os.PathLike | onnx.ModelProto) -> MemseGraph:
    """The op-level graph: one node per ONNX op (weighted ops hold a CrossbarLayer), one edge per signal."""
    model, label = load_model(model)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 17)
    graph = model.graph
    consts: dict[str, np.ndarray] = {t.name: _as_float64(numpy_helper.to_array(t)) for t in graph.initializer}
    shapes: dict[str, tuple] = {}
    for vi in list(graph.value_info) + list(graph.output) + list(graph.input):
        dims = _dims(vi)
        if dims is not None:
            shapes[vi.name] = dims

    data_inputs = [vi for vi in graph.input if vi.name not in consts]
    if len(data_inputs) != 1:
        names = ", ".join(f"'{vi.name}'" for vi in data_inputs) or "none"
        raise MemseInputError(f"{label}: the model must have exactly one data input, found {names}")
    x_vi = data_inputs[0]
    x_shape = _dims(x_vi)
    if x_shape is None or not x_shape:
        raise MemseInputError(f"{label}: input '{x_vi.name}' has no static shape")
    for i, d in enumerate(x_shape[1:], start=1):
        if d is None:
            raise MemseInputError(f"{label}: input '{x_vi.name}' has a dynamic dimension {i}; only the batch "
                                  f"dimension (0) may be symbolic")
    if x_vi.type.tensor_type.elem_type not in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE):
        raise MemseInputError(f"{label}: input '{x_vi.name}' must be float32 or float64")

    g = MemseGraph(name=graph.name or Path(label).stem, model_path=label, opset=opset,
                   inputs=[x_vi.name], outputs=[o.name for o in graph.output], constants=consts)
    g.tensors.update(shapes)
    g.add_node(f"input:{x_vi.name}", op="Input", kind=KIND_INPUT, inputs=[], outputs=[x_vi.name])
    producers = {x_vi.name: f"input:{x_vi.name}"}
    used_names: set[str] = set()

    for idx, node in enumerate(graph.node):
        if node.domain not in ("", "ai.onnx"):
            raise MemseInputError(f"{label}: node '{node.name or idx}' uses the custom domain '{node.domain}'")
        if node.op_type == "Constant":
            value = onnx.helper.get_attribute_value(node.attribute[0])
            consts[node.output[0]] = _as_float64(numpy_helper.to_array(value) if isinstance(value, onnx.TensorProto)
                                                 else np.asarray(value))
            continue
        if all((not n) or n in consts for n in node.input):
            for name, val in zip(node.output, _fold_constant_node(node, consts, opset)):
                consts[name] = _as_float64(np.asarray(val))
            continue
        name = node.name or f"{node.op_type}_{idx}"
        while name in used_names:
            name = f"{name}_{idx}"
        used_names.add(name)
        rule = rule_for(node.op_type)
        if rule is None:
            raise MemseInputError(f"{label}: unsupported op '{node.op_type}' at node '{name}' "
                                  f"(supported: {', '.join(SUPPORTED_OPS)})")
        ctx = ParseContext(node=node, node_name=name, consts=consts, shapes=shapes)
        for i, inp in enumerate(node.input):
            if inp and inp not in consts and inp not in producers:
                raise MemseInputError(f"{label}: node '{name}' reads '{inp}', which nothing produces")
        attrs = rule.parse(ctx)
        operands = [node.input[i] for i in rule.operands(ctx)]
        g.add_node(name, op=node.op_type, kind=KIND_WEIGHTED if rule.weighted else KIND_DIGITAL,
                   inputs=operands, outputs=[o for o in node.output if o], attrs=attrs, onnx_node=node)
        for inp in dict.fromkeys(operands):
            if inp in producers:
                g.add_signal(producers[inp], name, inp)
        for out in node.output:
            if out:
                producers[out] = name

    for out in g.graph["outputs"]:
        if out not in producers:
            raise MemseInputError(f"{label}: graph output '{out}' is a constant or is not produced")
        g.add_node(f"output:{out}", op="Output", kind=KIND_OUTPUT, inputs=[out], outputs=[])
        g.add_signal(producers[out], f"output:{out}", out)
    if not any(d["kind"] == KIND_WEIGHTED for _, d in g.nodes(data=True)):
        raise MemseInputError(f"{label}: no weighted op (Gemm, MatMul or Conv with constant weights) to map")
    g.rebuild_producers()
    return g
