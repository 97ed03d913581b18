"""Models below opset 11 converted to opset 11 at load (onnx.version_converter), so that the analysis and the
Monte-Carlo executor (which needs Round and tensor-bound Clip/Slice/Pad) run the same graph; every conversion is
checked against onnxruntime on a probe batch and kept only if it agrees."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from memse_compiler.ir.ops.base import node_attribute


def default_opset(model: onnx.ModelProto, missing: int = 17) -> int:
    """The model's opset of the default ONNX domain (`missing` when it declares none)."""
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), missing)


def constant_tensors(graph: onnx.GraphProto) -> dict[str, onnx.TensorProto]:
    """Initializers and Constant-node values by tensor name (before any folding)."""
    values = {t.name: t for t in graph.initializer}
    values.update((n.output[0], n.attribute[0].t) for n in graph.node
                  if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value")
    return values


def _nearest_downsampling(node: onnx.NodeProto, values: dict[str, onnx.TensorProto]) -> bool:
    """A Resize-10 in nearest mode whose scales go below 1 or are not a visible constant."""
    if node.op_type != "Resize":
        return False
    mode = node_attribute(node, "mode", b"nearest")
    if mode not in (b"nearest", "nearest"):
        return False
    scales = values.get(node.input[1]) if len(node.input) > 1 else None
    return scales is None or bool(np.min(numpy_helper.to_array(scales)) < 1)


def live_nodes(nodes: list[onnx.NodeProto], outputs: set[str]) -> list[onnx.NodeProto]:
    """`nodes` (in order) without those whose outputs nothing reads on the way to `outputs` (a rewrite's leftover
    Shape arithmetic, mostly)."""
    live, kept = set(outputs), []
    for node in reversed(nodes):
        if any(o in live for o in node.output):
            kept.append(node)
            live.update(node.input)
    return kept[::-1]


def with_nodes(model: onnx.ModelProto, nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto], label: str,
               doing: str) -> onnx.ModelProto:
    """`model` with `nodes` as its nodes and `inits` added (a load-time rewrite's result): initializers nothing
    reads any more dropped, shapes inferred again; a failure is one line saying what was being `doing`."""
    from memse_compiler.ir.errors import MemseInputError
    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    out.graph.initializer.extend(inits)
    used = {i for n in out.graph.node for i in n.input} | {o.name for o in out.graph.output}
    dropped = {t.name for t in out.graph.initializer if t.name not in used}
    kept = [t for t in out.graph.initializer if t.name not in dropped]
    del out.graph.initializer[:]
    out.graph.initializer.extend(kept)
    inputs = [vi for vi in out.graph.input if vi.name not in dropped]    # IR < 4 lists initializers as inputs
    del out.graph.input[:]
    out.graph.input.extend(inputs)
    del out.graph.value_info[:]
    try:
        return onnx.shape_inference.infer_shapes(out, strict_mode=True)
    except Exception as exc:
        raise MemseInputError(f"{label}: {doing} failed ({str(exc).strip().splitlines()[0]})") from None


UPGRADE_TO = 11     # the executor's minimum (Round; Clip, Slice, Pad with tensor inputs)


def upgrade_opset(model: onnx.ModelProto) -> onnx.ModelProto:
    """A model below opset 11 converted to 11 (onnx.version_converter: Upsample becomes Resize with its
    asymmetric / floor modes written out, Clip and Slice take inputs), so that the analysis and the Monte-Carlo
    executor run the same graph. Unchanged where the conversion fails or changes what onnxruntime computes on a
    probe batch (then the rules read the old forms, and the executor refuses the model in one line), and for
    Resize-10 nearest downsampling (onnxruntime's follows no documented mode; its rule refuses it)."""
    opset = default_opset(model, missing=UPGRADE_TO)
    if opset >= UPGRADE_TO:
        return model
    values = constant_tensors(model.graph)
    if any(_nearest_downsampling(n, values) for n in model.graph.node):
        return model
    from onnx import version_converter
    try:
        converted = version_converter.convert_version(model, UPGRADE_TO)
        names = {o: n.name for n in model.graph.node for o in n.output}
        for node in converted.graph.node:
            if not node.name and node.output and node.output[0] in names:    # the converter drops some names
                node.name = names[node.output[0]]
            if node.op_type == "Resize":      # from Upsample / Resize-10; the converter leaves half_pixel implied
                node.attribute.extend([onnx.helper.make_attribute("coordinate_transformation_mode", "asymmetric"),
                                       onnx.helper.make_attribute("nearest_mode", "floor")])
        onnx.checker.check_model(converted)
        converted = onnx.shape_inference.infer_shapes(converted, strict_mode=True)
    except Exception:
        return model
    return converted if _same_results(model, converted) else model


def _same_results(a: onnx.ModelProto, b: onnx.ModelProto) -> bool:
    """onnxruntime gives the same outputs for both models on a probe batch of 2 uniform [0, 1) inputs."""
    import onnxruntime as ort
    try:
        feeds, weights = {}, {t.name for t in a.graph.initializer}
        for vi in a.graph.input:
            if vi.name in weights:
                continue
            dims = [d.dim_value if d.HasField("dim_value") else 2 for d in vi.type.tensor_type.shape.dim]
            dtype = onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)
            feeds[vi.name] = np.random.default_rng(0).random(dims).astype(dtype)
        opts = ort.SessionOptions()
        opts.log_severity_level = 3    # errors only (warnings on the export's unused initializers)
        outs = [ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"]).run(None, feeds)
                for m in (a, b)]
    except Exception:
        return False
    return all(np.allclose(x, y, rtol=1e-4, atol=1e-5, equal_nan=True) for x, y in zip(*outs))
