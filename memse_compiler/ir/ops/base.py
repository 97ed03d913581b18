"""Base class of op rules and the registry."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import numpy as np
import onnx
import sympy

from memse_compiler.ir.errors import MemseInputError

REGISTRY: dict[str, "OpRule"] = {}


MASKED = -1e30      # an additive mask's -inf (torch's causal attention mask): exp(-1e30 - max) is 0 in float32 too


def registry_key(op_type: str, domain: str = "") -> str:
    """An op's key in REGISTRY: its type in ONNX's domain, `domain:type` in another (onnxruntime's com.microsoft
    has a Gelu of its own)."""
    return op_type if domain in ("", "ai.onnx") else f"{domain}:{op_type}"


def register(cls: type["OpRule"]) -> type["OpRule"]:
    inst = cls()
    for t in cls.op_types:
        REGISTRY[registry_key(t, cls.domain)] = inst
    return cls


def rule_for(op_type: str, domain: str = "") -> "OpRule | None":
    return REGISTRY.get(registry_key(op_type, domain))


def node_attribute(node: onnx.NodeProto, name: str, default: Any = None) -> Any:
    """An ONNX node's attribute value, or `default` when the node does not set it."""
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


@dataclass
class ParseContext:
    """What a rule may ask the frontend while parsing one node."""
    node: onnx.NodeProto
    node_name: str
    consts: dict[str, np.ndarray]
    shapes: dict[str, tuple]              # static shapes, None for the symbolic batch dimension
    opset: int = 17                       # the model's default-domain opset
    exact: set = field(default_factory=set)   # signals computed from the data inputs alone (ir/ops/exact.py)
    elem_types: dict = field(default_factory=dict)    # ONNX elem type of each tensor whose type is known
    # constants evaluated at load that follow the batch (load_expansion.probed_values): their batch axis, where
    # they hold one sample's values (size 1), the same for every sample
    batch_axes: dict = field(default_factory=dict)

    def const(self, i: int) -> np.ndarray | None:
        if i >= len(self.node.input) or not self.node.input[i]:
            return None
        return self.consts.get(self.node.input[i])

    def is_const(self, i: int) -> bool:
        return self.const(i) is not None

    def attr(self, name: str, default: Any = None) -> Any:
        return node_attribute(self.node, name, default)

    def new_const(self, label: str, value: np.ndarray) -> str:
        """A constant for the nodes an `expand` writes, named `<node>/<label>`: its name."""
        name = f"{self.node_name}/{label}"
        self.consts[name] = value
        return name

    def shape(self, i: int = 0) -> tuple:
        return self.shapes[self.node.input[i]]

    def known_shape(self, i: int) -> tuple | None:
        """Input i's shape: a constant's own, else the inferred one (None where unknown)."""
        value = self.const(i)
        return np.shape(value) if value is not None else self.shapes.get(self.node.input[i])

    def out_shape(self, i: int = 0) -> tuple:
        return self.shapes[self.node.output[i]]

    def fail(self, why: str) -> MemseInputError:
        return MemseInputError(f"node '{self.node_name}' ({self.node.op_type}): {why}")

    def sliding_windows(self, kernel: list[int], ceil_mode: bool = False):
        """The Windows of a Conv/pool node over input 0 (strides, dilations, pads, auto_pad); 1-D as H = 1.
        ceil_mode: the output size rounds up, the windows past the end reading end padding (a window that would
        start inside the end padding is dropped, as onnxruntime and PyTorch do)."""
        from memse_compiler.ir.geometry import Windows, conv_pads
        shape = self.shape(0)
        k = [int(v) for v in kernel]
        nd = len(k)
        s = [int(v) for v in self.attr("strides", [1] * nd)]
        d = [int(v) for v in self.attr("dilations", [1] * nd)]
        auto = self.attr("auto_pad", b"NOTSET")
        auto = auto.decode() if isinstance(auto, bytes) else auto
        pads, out = conv_pads(shape[2:], k, s, d, self.attr("pads"), auto)
        if ceil_mode and auto == "NOTSET":
            pads = list(pads)
            for a, (i, kk, ss, dd) in enumerate(zip(shape[2:], k, s, d)):
                span = i + pads[a] + pads[a + nd] - (kk - 1) * dd - 1
                o = -(-span // ss) + 1
                if (o - 1) * ss >= i + pads[a]:
                    o -= 1
                pads[a + nd] += max((o - 1) * ss + (kk - 1) * dd + 1 - (i + pads[a] + pads[a + nd]), 0)
                out[a] = o
        spatial = tuple(shape[2:])
        if nd == 1:
            k, s, d, pads, out, spatial = [1] + k, [1] + s, [1] + d, [0, pads[0], 0, pads[1]], [1] + out, (1,) + spatial
        return Windows(tuple(k), tuple(s), tuple(d), tuple(pads), spatial, tuple(out))


class ExpansionWriter:
    """The nodes an `expand` writes for `ctx.node`: each named and written `<node>/<label>`; `out` writes another
    tensor (label None: the node's own first output), and the node writing that output takes the node's name."""

    def __init__(self, ctx: ParseContext):
        self.ctx, self.base, self.nodes = ctx, ctx.node_name, []

    def const(self, label: str, value) -> str:
        """A new constant `<node>/<label>`, floats in float64 (the analysis' precision)."""
        value = np.asarray(value)
        return self.ctx.new_const(label, value.astype(np.float64) if value.dtype.kind == "f" else value)

    def add(self, op: str, inputs: list[str], label: str | None = None, out: str | None = None, **attrs) -> str:
        out = out or (self.ctx.node.output[0] if label is None else f"{self.base}/{label}")
        assert out not in self.ctx.consts, f"{out}: a node output named as a constant of the expansion"
        name = self.base if out == self.ctx.node.output[0] else f"{self.base}/{label}"
        self.nodes.append(onnx.helper.make_node(op, inputs, [out], name=name, **attrs))
        return out


@dataclass
class Linearization:
    """What the forward moment pass leaves for the backward sensitivity pass.

    `gains[i]` multiplies an output sensitivity into input i (elementwise ops) or is rule-specific data;
    `residual[k]` is the variance of output k not explained by the linear response to the inputs: it is
    injected there as an independent noise source (statistical linearisation). `jumps`: where an element-wise
    function jumps within its input's spread (a bool array, or True throughout): its residual lies in high Hermite
    orders, whose correlations fall as rho^k, and is injected independently there (moments.forward_moments)."""
    gains: list[Any] = field(default_factory=list)
    residual: list[np.ndarray | None] = field(default_factory=list)
    jumps: Any = None

    def in_dtype(self, dtype) -> "Linearization":
        """This linearization with its float arrays in `dtype` (the backward sweeps' precision), made once."""
        return cast_once(self, dtype, lambda: Linearization(gains=cast_floats(self.gains, dtype),
                                                            residual=cast_floats(self.residual, dtype),
                                                            jumps=self.jumps))


def cast_once(obj: Any, dtype, make: Callable[[], Any]) -> Any:
    """`obj` itself in float64, else `make()`'s copy in `dtype`, kept on `obj` so that it is made once."""
    if dtype == np.float64:
        return obj
    cast = obj.__dict__.setdefault("_in_dtype", {})
    key = np.dtype(dtype).str
    if key not in cast:
        cast[key] = make()
    return cast[key]


def cast_floats(value: Any, dtype) -> Any:
    """The float64 arrays in `value` (an array, or lists and tuples of them) as `dtype`; anything else as it is."""
    if isinstance(value, np.ndarray):
        return value.astype(dtype) if value.dtype == np.float64 else value
    if isinstance(value, (list, tuple)):
        return type(value)(cast_floats(v, dtype) for v in value)
    return value


class OpRule:
    op_types: ClassVar[tuple[str, ...]] = ()
    weighted: ClassVar[bool] = False
    internal: ClassVar[bool] = False        # reached through another rule's `resolve`, not an ONNX op type
    # handles integer signals itself (fake quantization's codes); other rules leave a node that reads or writes
    # integer or bool data inputs' values to the exact rule (ir/ops/exact.py)
    integer_signals: ClassVar[bool] = False
    # element-wise in its signal operands (constants broadcast from the right), so `forward` also runs on stacked
    # values with extra leading axes: it may sit inside a function of one noisy signal (ir/ops/pointwise.py)
    pointwise: ClassVar[bool] = False
    # gives a bool signal (a comparison, logic on comparisons): only inside such a function
    boolean: ClassVar[bool] = False
    # `expand` runs on the ONNX model at load time (memse_compiler/load_expansion.py), before onnxruntime probes it
    expand_at_load: ClassVar[bool] = False
    # input slots that expansion needs to know, evaluated at load by onnxruntime when the model computes them
    # (indices from Shape arithmetic; a signal's shape): load_expansion.probed_values
    probed_inputs: ClassVar[tuple[int, ...]] = ()
    # the ONNX domain of op_types ("": the default one; onnxruntime's contrib ops: "com.microsoft")
    domain: ClassVar[str] = ""

    # ---- frontend --------------------------------------------------------------------------------
    def resolve(self, ctx: ParseContext) -> "OpRule":
        """The rule that handles this node: itself, or (an op whose meaning depends on its operands, like
        MatMul with or without a constant weight) a rule registered under an internal name, which the graph
        node then carries as its `op`."""
        return self

    def expand(self, ctx: ParseContext) -> list[onnx.NodeProto] | None:
        """Nodes of other supported ops that compute this node exactly, which the frontend then parses in its
        place (their new constants written into `ctx.consts`); None: the node is parsed as it is."""
        return None

    def parse(self, ctx: ParseContext) -> dict[str, Any]:
        """Validated attributes of the node (a dict stored as the node's ``attrs``)."""
        return {}

    def operands(self, ctx: ParseContext) -> list[int]:
        """Input positions read at run time (activations, or constants entering with variance 0);
        the other inputs are parameters that `parse` folded into the attributes."""
        return [i for i, name in enumerate(ctx.node.input) if name]

    # ---- exact float semantics -------------------------------------------------------------------
    def forward(self, attrs: dict, xs: list[np.ndarray]) -> list[np.ndarray]:
        raise NotImplementedError

    # ---- moments ---------------------------------------------------------------------------------
    def moments(self, attrs: dict, means: list[np.ndarray], variances: list[np.ndarray]
                ) -> tuple[list[np.ndarray], list[np.ndarray], Linearization]:
        """Output means and variances of the node for independent Gaussian inputs (constants: var 0)."""
        raise NotImplementedError

    def vjp(self, attrs: dict, lin: Linearization, gouts: list[np.ndarray | None],
            in_shapes: list[tuple]) -> list[np.ndarray | None]:
        """Transpose of the node's linearisation: output sensitivities -> input sensitivities."""
        raise NotImplementedError

    def pieces(self, attrs: dict, xs: list[np.ndarray]) -> list[np.ndarray]:
        """Pointwise rules: bool arrays that split the op's input space where it jumps or kinks (x > 0 for Relu),
        so that quadrature over a function of one noisy signal integrates each smooth piece on its own."""
        return []

    def jumps(self, attrs: dict) -> bool:
        """Pointwise rules: whether the function jumps (a comparison, Sign). Read straight off an ADC, such a
        function sees the ADC's codes, not a Gaussian: the moment pass then sums over the codes."""
        return False

    def averages(self, attrs: dict) -> bool:
        """Whether the op averages over positions (a pool, a mean, a linear resampling): where treating the
        input errors as independent fails most, so the refined analysis measures that output's variance."""
        return False

    # ---- executor --------------------------------------------------------------------------------
    def emit(self, node: onnx.NodeProto, attrs: dict, const: Callable[[str, np.ndarray], str]
             ) -> list[onnx.NodeProto]:
        """The ONNX nodes the Monte-Carlo executor runs for this digital node: the original one; an internal op
        with no ONNX counterpart writes its own (`const(hint, value)` adds a constant and returns its name)."""
        return [node]

    # ---- expressions -----------------------------------------------------------------------------
    def expressions(self, attrs: dict, mus: list[sympy.Expr], vs: list[sympy.Expr], node: str
                    ) -> tuple[list[sympy.Expr], list[sympy.Expr]]:
        """Mean and variance expressions of each output in the inputs' moment symbols."""
        op = type(self).__name__.removesuffix("Rule")
        f_mean, f_var = sympy.Function(f"{op}_mean"), sympy.Function(f"{op}_var")
        return [f_mean(*mus, *vs)], [f_var(*mus, *vs)]


def batch_sized_shape(x: str, tail: np.ndarray, base: str, const: Callable[[str, np.ndarray], str]
                      ) -> tuple[list[onnx.NodeProto], str]:
    """(nodes, name) of the shape `[batch size of x] ++ tail`, read at run time (Shape, Slice, Concat): what an
    emitted node needs where its export read the batch from a Shape."""
    h = onnx.helper
    begin, end = const(f"{base}/begin", np.zeros(1, np.int64)), const(f"{base}/end", np.ones(1, np.int64))
    rest = const(f"{base}/tail", np.asarray(tail, np.int64))
    return ([h.make_node("Shape", [x], [f"{base}/shape_x"], name=f"{base}/shape"),
             h.make_node("Slice", [f"{base}/shape_x", begin, end], [f"{base}/batch"], name=f"{base}/batch"),
             h.make_node("Concat", [f"{base}/batch", rest], [f"{base}/target"], name=f"{base}/target", axis=0)],
            f"{base}/target")


def unbroadcast(g: np.ndarray, shape: tuple) -> np.ndarray:
    """Sum a broadcast result's sensitivity back to an operand's shape."""
    while g.ndim > len(shape):
        g = g.sum(axis=0)
    for ax, n in enumerate(shape):
        if n == 1 and g.shape[ax] != 1:
            g = g.sum(axis=ax, keepdims=True)
    return g


Elementwise = Callable[[np.ndarray], np.ndarray]
