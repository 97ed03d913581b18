"""Exact signals: ops computed from the data inputs and constants alone, whatever their dtype.

No crossbar sits upstream of such an op, so its value is the same on every chip: its moments are (value, 0).
That covers what a model does to inputs that are not float activations: an attention mask fed as int64 and turned
into an additive mask (Cast, Sub, Mul), a comparison giving a boolean condition (Equal, Not, Less...), the
embedding lookup of token ids (a Gather of constant rows by signal indices). The frontend gives a node this rule
when every signal it reads is exact and either no registry rule takes the node as it is, or one of its operands
or outputs is not float (frontend.build_graph). onnx.reference computes it with ONNX's own semantics and dtypes;
the Monte-Carlo executor runs the node as exported.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
import sympy
from onnx import helper

from memse_compiler.ir.ops.base import Linearization, OpRule, register


@dataclass(eq=False)
class ExactNode:
    """One exported node run on its signal operands (the constants it reads are kept here)."""
    node: onnx.NodeProto
    constants: dict[int, np.ndarray]          # input position -> constant value
    input_types: dict[int, int]               # signal input position -> ONNX elem type it is fed as
    output_types: list[int]
    opset: int
    _session: object = field(default=None, repr=False)

    def __repr__(self) -> str:       # what the exported graph shows
        return f"exact {self.node.op_type}"

    def _evaluator(self):
        if self._session is None:
            from onnx.reference import ReferenceEvaluator
            names = [f"in{i}" if n else "" for i, n in enumerate(self.node.input)]
            node = helper.make_node(self.node.op_type, names, [f"out{k}" for k in range(len(self.output_types))],
                                    domain=self.node.domain)
            node.attribute.extend(self.node.attribute)
            inputs = [helper.make_tensor_value_info(f"in{i}", self.input_types[i], None) for i in self.input_types]
            inits = [onnx.numpy_helper.from_array(np.asarray(v), f"in{i}") for i, v in self.constants.items()]
            outputs = [helper.make_tensor_value_info(f"out{k}", t, None) for k, t in enumerate(self.output_types)]
            graph = helper.make_graph([node], "exact", inputs, outputs, inits)
            model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)])
            self._session = ReferenceEvaluator(model)
        return self._session

    def run(self, signals: list[np.ndarray]) -> list[np.ndarray]:
        feed = {f"in{i}": np.asarray(x, dtype=helper.tensor_dtype_to_np_dtype(self.input_types[i]))
                for i, x in zip(sorted(self.input_types), signals)}
        return [np.asarray(y) for y in self._evaluator().run(None, feed)]


def _float64(a: np.ndarray) -> np.ndarray:
    return a.astype(np.float64) if a.dtype.kind == "f" else a


@register
class ExactRule(OpRule):
    op_types = ("Exact",)
    internal = True

    def forward(self, attrs, xs):
        return [_float64(y) for y in attrs["exact"].run(xs)]

    def moments(self, attrs, means, variances):
        outs = self.forward(attrs, means)
        return outs, [np.zeros(np.shape(y)) for y in outs], Linearization()

    def vjp(self, attrs, lin, gouts, in_shapes):
        return [None] * len(in_shapes)          # nothing noisy flows through an exact signal

    def expressions(self, attrs, mus, vs, node):
        op = attrs["exact"].node.op_type
        return ([sympy.Function(f"{op}_exact")(*mus) for _ in attrs["exact"].output_types],
                [sympy.Integer(0) for _ in attrs["exact"].output_types])


FLOAT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE)


def reads_only_exact(node: onnx.NodeProto, consts: dict, exact: set) -> bool:
    """Whether every signal the node reads is exact (and it reads one)."""
    signals = [t for t in node.input if t and t not in consts]
    return bool(signals) and all(t in exact for t in signals)


def touches_non_float(node: onnx.NodeProto, consts: dict, elem_types: dict) -> bool:
    """Whether a signal operand or an output of the node is not float (int ids, a bool condition...)."""
    names = [t for t in node.input if t and t not in consts] + [o for o in node.output if o]
    return any(elem_types.get(t, onnx.TensorProto.FLOAT) not in FLOAT_TYPES for t in names)


def exact_attrs(node: onnx.NodeProto, consts: dict, elem_types: dict, opset: int) -> tuple[dict, list[str]]:
    """(the Exact node's attrs, its signal operands)."""
    constants, types = {}, {}
    for i, t in enumerate(node.input):
        if not t:
            continue
        if t in consts:
            c = consts[t]
            # folded constants are float64 here; as exported they are float32 unless declared double
            want = elem_types.get(t) or (onnx.TensorProto.FLOAT if c.dtype.kind == "f" else None)
            constants[i] = c.astype(helper.tensor_dtype_to_np_dtype(want)) if want else c
        else:
            types[i] = elem_types.get(t, onnx.TensorProto.FLOAT)
    outs = [elem_types.get(o, onnx.TensorProto.FLOAT) for o in node.output if o]
    attrs = {"exact": ExactNode(node, constants, types, outs, opset), "onnx_op": node.op_type}
    return attrs, [node.input[i] for i in sorted(types)]
