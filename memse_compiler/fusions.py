"""ONNX-level fusions applied before parsing: multi-node patterns exporters emit for one operation, put back as
that operation so it gets its own rule (and its own, tighter, moments) instead of a chain of element-wise ones.

LayerNormalization exported below opset 17 (torch's `nn.LayerNorm` at opset 14, for instance) is the chain

    m = ReduceMean(x, axes); d = Sub(x, m); p = Pow(d, 2); v = ReduceMean(p, axes); s = Sqrt(Add(v, eps))
    y = Div(d, s) [-> Mul(y, scale)] [-> Add(y, bias)]

over trailing axes. Its moments as a chain treat x and mean(x), d and 1/s as independent in the forward pass;
as one LayerNormalization node the rule's delta method takes the normaliser's dependence on x into account.

Fake quantization of a tensor that is already on the same lattice (onnxruntime's QDQ quantizer puts a
QuantizeLinear -> DequantizeLinear pair after every op, so a Reshape or Transpose of a dequantized tensor is
quantized again with the same scale and zero point) is the identity, exactly: the pair is dropped, or the
analysis would add a rounding error at every copy that the chip never makes."""
from __future__ import annotations

import os

import numpy as np
import onnx
from onnx import helper, numpy_helper

from memse_compiler.ir.ops.base import node_attribute


class _Graph:
    """Producer/consumer lookups and constant values of one ONNX graph."""

    def __init__(self, graph: onnx.GraphProto):
        self.consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
        for node in graph.node:
            if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
                self.consts[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
        self.producer = {o: n for n in graph.node for o in n.output if o}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for n in graph.node:
            for i in n.input:
                self.consumers.setdefault(i, []).append(n)
        self.outputs = {o.name for o in graph.output}

    def only_consumer(self, tensor: str, op_type: str) -> onnx.NodeProto | None:
        users = self.consumers.get(tensor, [])
        if len(users) == 1 and users[0].op_type == op_type and tensor not in self.outputs:
            return users[0]
        return None

    def scalar(self, tensor: str) -> float | None:
        v = self.consts.get(tensor)
        return float(v.reshape(-1)[0]) if v is not None and v.size == 1 else None

    def other_operand(self, node: onnx.NodeProto, tensor: str) -> str | None:
        """The input of a binary node that is not `tensor` (either order), None if `tensor` is not one of them."""
        a, b = (list(node.input) + ["", ""])[:2]
        return b if a == tensor else a if b == tensor else None


def _trailing_axes(node: onnx.NodeProto, g: _Graph) -> tuple[int, ...] | None:
    """The axes of a keepdims ReduceMean if they are the last k axes written negatively (-k..-1), else None."""
    if node_attribute(node, "keepdims", 1) != 1:
        return None
    axes = node_attribute(node, "axes")
    if axes is None and len(node.input) > 1 and node.input[1]:
        axes = g.consts.get(node.input[1])
    if axes is None:
        return None
    axes = tuple(sorted(int(a) for a in np.asarray(axes).reshape(-1)))
    return axes if axes and axes == tuple(range(-len(axes), 0)) else None


def _match_layer_norm(mean1: onnx.NodeProto, g: _Graph):
    """(nodes of the chain, x, axis, epsilon, scale, bias) when `mean1` starts a decomposed LayerNorm."""
    axes = _trailing_axes(mean1, g)
    x = mean1.input[0]
    sub = g.only_consumer(mean1.output[0], "Sub")
    if axes is None or sub is None or list(sub.input) != [x, mean1.output[0]]:
        return None
    d = sub.output[0]
    users = g.consumers.get(d, [])
    if d in g.outputs or sorted(u.op_type for u in users) != ["Div", "Pow"]:
        return None
    power, div = sorted(users, key=lambda u: u.op_type != "Pow")
    if power.input[0] != d or g.scalar(power.input[1]) != 2.0 or div.input[0] != d:
        return None
    mean2 = g.only_consumer(power.output[0], "ReduceMean")
    if mean2 is None or _trailing_axes(mean2, g) != axes:
        return None
    add_eps = g.only_consumer(mean2.output[0], "Add")
    eps = None if add_eps is None else g.scalar(g.other_operand(add_eps, mean2.output[0]) or "")
    sqrt = None if add_eps is None else g.only_consumer(add_eps.output[0], "Sqrt")
    if eps is None or sqrt is None or g.only_consumer(sqrt.output[0], "Div") is not div or div.input[1] != sqrt.output[0]:
        return None
    chain, y, scale, bias = [mean1, sub, power, mean2, add_eps, sqrt, div], div.output[0], None, None

    def per_feature(node: onnx.NodeProto | None, signal: str) -> np.ndarray | None:
        """The constant operand of `node` if it varies only along the normalised axes (a scale or bias)."""
        value = None if node is None else g.consts.get(g.other_operand(node, signal) or "")
        if value is None:
            return None
        shape = list(value.shape)
        while shape and shape[0] == 1:
            shape.pop(0)
        return value if len(shape) <= len(axes) else None
    scale = per_feature(g.only_consumer(y, "Mul"), y)
    if scale is not None:
        chain.append(g.only_consumer(y, "Mul"))
        y = chain[-1].output[0]
        bias = per_feature(g.only_consumer(y, "Add"), y)
        if bias is not None:
            chain.append(g.only_consumer(y, "Add"))
            y = chain[-1].output[0]
    return chain, x, y, -len(axes), eps, scale, bias


def _name(chain: list[onnx.NodeProto]) -> str:
    """The chain's common scope ('/ln/ReduceMean', '/ln/Sub' -> '/ln'), else the last node's name."""
    prefix = os.path.commonprefix([n.name for n in chain])
    scope = prefix[: prefix.rfind("/")] if "/" in prefix else ""
    return scope or chain[-1].name or "LayerNormalization"


def fuse_layer_norm(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with every decomposed LayerNorm replaced by one LayerNormalization node (a copy; the input is
    left alone). The fused node sits where the chain ended and writes the chain's output tensor."""
    g = _Graph(model.graph)
    fused: dict[int, onnx.NodeProto] = {}            # id of the chain's last node -> the fused node
    dropped: set[int] = set()
    inits = []
    for node in model.graph.node:
        if node.op_type != "ReduceMean" or id(node) in dropped:
            continue
        match = _match_layer_norm(node, g)
        if match is None:
            continue
        chain, x, y, axis, eps, scale, bias = match
        name = _name(chain)
        ins = [x]
        for label, value, default in (("scale", scale, 1.0), ("bias", bias, 0.0)):
            arr = np.full(1, default, np.float32) if value is None else np.asarray(value)
            inits.append(numpy_helper.from_array(arr, f"{name}/fused_{label}"))
            ins.append(inits[-1].name)
        fused[id(chain[-1])] = helper.make_node("LayerNormalization", ins, [y], name=name, axis=axis, epsilon=eps)
        dropped.update(id(n) for n in chain)
    if not fused:
        return model
    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.node[:]
    out.graph.node.extend(fused.get(id(n), n) for n in model.graph.node if id(n) not in dropped or id(n) in fused)
    out.graph.initializer.extend(inits)
    return out


# ops whose outputs are some of their (first) input's elements: a lattice survives them
LATTICE_KEEPING = {"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Identity", "Gather", "Slice", "Split",
                   "MaxPool", "GlobalMaxPool", "ReduceMax", "ReduceMin", "Expand", "Tile", "DepthToSpace",
                   "SpaceToDepth"}


def _lattice(tensor: str, g: _Graph) -> tuple | None:
    """(scale, zero point, zero point type) of the per-tensor DequantizeLinear whose output `tensor` is, through
    ops that only pick elements; None if it is not such a tensor."""
    node = g.producer.get(tensor)
    while node is not None and node.op_type in LATTICE_KEEPING:
        node = g.producer.get(node.input[0])
    if node is None or node.op_type != "DequantizeLinear":
        return None
    return _quantization(node, g)


def _quantization(node: onnx.NodeProto, g: _Graph) -> tuple | None:
    scale = g.consts.get(node.input[1])
    zero = g.consts.get(node.input[2]) if len(node.input) > 2 and node.input[2] else np.zeros((), np.uint8)
    if scale is None or zero is None or scale.size != 1 or zero.size != 1:
        return None
    return float(scale.reshape(-1)[0]), int(zero.reshape(-1)[0]), zero.dtype


def drop_requantization(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model without the QuantizeLinear -> DequantizeLinear pairs that re-quantize a tensor already on their
    lattice (same per-tensor scale, zero point and type): its readers read the tensor itself."""
    g = _Graph(model.graph)
    replace: dict[str, str] = {}
    dropped: set[int] = set()
    for q in model.graph.node:
        if q.op_type != "QuantizeLinear":
            continue
        dq = g.only_consumer(q.output[0], "DequantizeLinear")
        lattice = _lattice(q.input[0], g)
        if dq is None or lattice is None or dq.output[0] in g.outputs or \
                not (_quantization(q, g) == _quantization(dq, g) == lattice):
            continue
        replace[dq.output[0]] = q.input[0]
        dropped.update((id(q), id(dq)))
    if not replace:
        return model
    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.node[:]
    for node in model.graph.node:
        if id(node) in dropped:
            continue
        new = onnx.NodeProto()
        new.CopyFrom(node)
        for i, t in enumerate(new.input):
            while t in replace:          # a chain of them: to the first tensor on the lattice
                t = replace[t]
            new.input[i] = t
        out.graph.node.append(new)
    return out
