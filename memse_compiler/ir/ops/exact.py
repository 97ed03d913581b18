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
from onnx import helper, numpy_helper

from memse_compiler.ir.ops.base import Linearization, OpRule, register


# onnx.reference implements (De)QuantizeLinear from opset 19 on, the same map for 8-bit integers as 13's
EVALUATE_FROM = {"DequantizeLinear": 19, "QuantizeLinear": 19}


def node_evaluator(node: onnx.NodeProto, fed: dict[str, int], opset: int,
                   constants: dict[str, np.ndarray] | None = None):
    """onnx.reference on a model of `node` alone: `fed` maps the inputs given at run time to their ONNX elem types,
    `constants` holds the others (the frontend's folds of constant nodes, and exact nodes)."""
    from onnx.reference import ReferenceEvaluator
    inputs = [helper.make_tensor_value_info(n, t, None) for n, t in fed.items()]
    inits = [numpy_helper.from_array(np.asarray(v), n) for n, v in (constants or {}).items()]
    outputs = [helper.make_tensor_value_info(n, onnx.TensorProto.UNDEFINED, None) for n in node.output]
    graph = helper.make_graph([node], "one_node", inputs, outputs, inits)
    opset = max(opset, EVALUATE_FROM.get(node.op_type, 0))
    return ReferenceEvaluator(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]))


@dataclass(eq=False)
class ExactNode:
    """One exported node run on its signal operands (the constants it reads are kept here)."""
    node: onnx.NodeProto
    constants: dict[str, np.ndarray]          # the constants it reads, as exported
    fed: dict[str, int]                       # the signals it reads -> the ONNX elem type each is fed as
    opset: int
    _session: object = field(default=None, repr=False)

    def __repr__(self) -> str:       # what the exported graph shows
        return f"exact {self.node.op_type}"

    @property
    def outputs(self) -> list[str]:
        return [o for o in self.node.output if o]

    def run(self, signals: list[np.ndarray]) -> list[np.ndarray]:
        """The outputs for the signal operands, in the node's input order."""
        if self._session is None:
            self._session = node_evaluator(self.node, self.fed, self.opset, self.constants)
        names = [t for t in self.node.input if t in self.fed]
        feed = {n: np.asarray(x, dtype=helper.tensor_dtype_to_np_dtype(self.fed[n])) for n, x in zip(names, signals)}
        return [np.asarray(y) for y in self._session.run(None, feed)]


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
        return ([sympy.Function(f"{op}_exact")(*mus) for _ in attrs["exact"].outputs],
                [sympy.Integer(0) for _ in attrs["exact"].outputs])


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
    constants, fed = {}, {}
    for t in node.input:
        if not t:
            continue
        if t in consts:
            c = consts[t]
            # folded constants are float64 here; as exported they are float32 unless declared double
            want = elem_types.get(t) or (onnx.TensorProto.FLOAT if c.dtype.kind == "f" else None)
            constants[t] = c.astype(helper.tensor_dtype_to_np_dtype(want)) if want else c
        else:
            fed[t] = elem_types.get(t, onnx.TensorProto.FLOAT)
    attrs = {"exact": ExactNode(node, constants, fed, opset), "onnx_op": node.op_type}
    return attrs, [t for t in node.input if t in fed]
