"""A zoo of tiny hand-built ONNX models for the compiler's tests.

Entry points:

* :func:`op_coverage_models` -- valid float32 models (opset 17), each exercising one weighted-op variant
  (Gemm / MatMul / Conv) next to the digital op under test, with a deterministic input feed.
* :func:`bad_models` -- writes malformed or unsupported models to a directory (kind -> path).

Everything is deterministic: each model's weights and feed come from ``np.random.default_rng(seed)`` with
the seed derived from the model name (CRC32), so adding a model never changes the others.

Dense (Gemm/MatMul/activation) models live here; convolution, batch-norm and pooling models live in
``onnx_zoo_conv.py``, which reuses the :class:`Builder` defined below.
"""
from __future__ import annotations

import pathlib
import zlib
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 9          # onnx 1.14 level; accepted by onnxruntime 1.32
BATCH = 3               # concrete value fed for the symbolic batch dim
N = "N"                 # the symbolic batch dim
WEIGHTED_OPS = frozenset({"Gemm", "MatMul", "Conv", "ConvTranspose"})


@dataclass
class ZooModel:
    name: str                                   # unique, pytest-id friendly
    model: onnx.ModelProto
    inputs: dict[str, np.ndarray] = field(default_factory=dict)  # feed for the graph's data inputs

    def __repr__(self) -> str:  # keep pytest output short
        return f"ZooModel({self.name!r})"

    def batch(self, dtype=np.float64):
        """The feed as the compiler takes it: one array for a one-input model, else the dict by input name."""
        feed = {k: v.astype(dtype) if v.dtype.kind == "f" else v for k, v in self.inputs.items()}
        return next(iter(feed.values())) if len(feed) == 1 else feed


# --------------------------------------------------------------------------------------------------
# builder


class Builder:
    """Accumulates nodes/initializers of one graph; weights and feed from a name-seeded generator."""

    def __init__(self, name: str, opset: int = OPSET):
        self.name, self.opset = name, opset
        self.rng = np.random.default_rng(zlib.crc32(name.encode()))
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.graph_inputs: list[onnx.ValueInfoProto] = []
        self.feed: dict[str, np.ndarray] = {}
        self._names: set[str] = set()
        self._count: dict[str, int] = {}

    # ---- names
    def fresh(self, base: str) -> str:
        i = self._count.get(base, 0)
        self._count[base] = i + 1
        name = base if i == 0 and base not in self._names else f"{base}_{i}"
        while name in self._names:
            i += 1
            name = f"{base}_{i}"
        self._names.add(name)
        return name

    # ---- graph inputs
    def input(self, name: str, shape, dist: str = "normal", ids: int | None = None) -> str:
        """Graph input; 'N' in `shape` is symbolic (fed with BATCH), other strings stay symbolic too. ids: an int64
        input of token ids in [0, ids)."""
        self._names.add(name)
        elem = TensorProto.FLOAT if ids is None else TensorProto.INT64
        self.graph_inputs.append(helper.make_tensor_value_info(name, elem, list(shape)))
        concrete = [BATCH if isinstance(d, str) else d for d in shape]
        if ids is not None:
            self.feed[name] = self.rng.integers(0, ids, concrete).astype(np.int64)
            return name
        if dist == "normal":
            x = self.rng.standard_normal(concrete)
        elif dist == "uniform":
            x = self.rng.uniform(0.0, 1.0, concrete)
        else:
            raise ValueError(dist)
        self.feed[name] = x.astype(np.float32)
        return name

    # ---- initializers
    def const(self, name: str, value) -> str:
        arr = np.asarray(value)
        if arr.dtype.kind == "f":
            arr = arr.astype(np.float32)
        elif arr.dtype.kind in "iu" and arr.dtype.itemsize > 1:     # 8-bit: quantized weights, zero points
            arr = arr.astype(np.int64)
        name = self.fresh(name)
        self.inits.append(numpy_helper.from_array(arr, name))
        return name

    def weight(self, name: str, shape, fan_in: int | None = None) -> str:
        """N(0, 1/fan_in) weights (fan_in defaults to prod(shape[1:])), so activations stay O(1)."""
        fan_in = fan_in or int(np.prod(shape[1:]))
        return self.const(name, self.rng.standard_normal(shape) / np.sqrt(fan_in))

    def vector(self, name: str, shape, scale: float = 0.1) -> str:
        return self.const(name, scale * self.rng.standard_normal(shape))

    # ---- nodes
    def op(self, op_type: str, inputs, n_out: int = 1, name: str | None = None, **attrs):
        """Add a node named `name` (made unique) or after its op type; returns its output name(s)."""
        return self._node(op_type, inputs, self.fresh(name or op_type.lower()), n_out, **attrs)

    def _node(self, op_type: str, inputs, node_name: str, n_out: int = 1, **attrs):
        outs = [self.fresh(f"{node_name}_out{i}" if n_out > 1 else f"{node_name}_out") for i in range(n_out)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=node_name, **attrs))
        return outs[0] if n_out == 1 else outs

    # ---- composite helpers (PyTorch-export-like naming: fc1.weight, conv1.bias, ...)
    def gemm(self, x: str, k: int, m: int, name: str = "fc", bias: bool = True, trans_b: int = 1,
             **attrs) -> str:
        name = self.fresh(name)
        w = self.weight(f"{name}.weight", (m, k) if trans_b else (k, m), fan_in=k)
        ins = [x, w] + ([self.vector(f"{name}.bias", (m,))] if bias else [])
        return self._node("Gemm", ins, name, transB=trans_b, **attrs)

    def matmul(self, x: str, k: int, m: int, name: str = "matmul") -> str:
        name = self.fresh(name)
        return self._node("MatMul", [x, self.weight(f"{name}.weight", (k, m), fan_in=k)], name)

    def conv(self, x: str, cin: int, cout: int, kernel=(3, 3), name: str = "conv", bias: bool = True,
             group: int = 1, **attrs) -> str:
        name = self.fresh(name)
        kernel = tuple(kernel)
        w = self.weight(f"{name}.weight", (cout, cin // group, *kernel))
        ins = [x, w] + ([self.vector(f"{name}.bias", (cout,))] if bias else [])
        return self._node("Conv", ins, name, kernel_shape=list(kernel), group=group, **attrs)

    def bn(self, x: str, c: int, name: str = "bn", epsilon: float = 1e-3) -> str:
        name = self.fresh(name)
        scale = self.const(f"{name}.weight", self.rng.uniform(0.5, 1.5, c))
        bias = self.vector(f"{name}.bias", (c,), 0.2)
        mean = self.vector(f"{name}.running_mean", (c,), 0.3)
        var = self.const(f"{name}.running_var", self.rng.uniform(0.5, 2.0, c))
        return self._node("BatchNormalization", [x, scale, bias, mean, var], name, epsilon=epsilon)

    # ---- finish
    def build(self, outputs, typed: dict | None = None) -> ZooModel:
        """typed: {tensor: shape} declared for ops whose output onnx's shape inference does not type
        (GroupNormalization), as an exporter declares every tensor; kept in the model."""
        outputs = [outputs] if isinstance(outputs, str) else list(outputs)
        declared = [helper.make_tensor_value_info(t, TensorProto.FLOAT, list(shape)) for t, shape in (typed or {}).items()]
        graph = helper.make_graph(self.nodes, self.name, self.graph_inputs,
                                  [helper.make_value_info(o, onnx.TypeProto()) for o in outputs],
                                  initializer=self.inits, value_info=declared)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)],
                                  ir_version=IR_VERSION, producer_name="memse-onnx-zoo")
        # fill the output types/shapes (full_check requires them); drop intermediate value_info so the
        # models look like plain exporter output
        model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
        del model.graph.value_info[:]
        model.graph.value_info.extend(declared)
        return ZooModel(self.name, model, dict(self.feed))


# --------------------------------------------------------------------------------------------------
# Gemm / MatMul

K, M = 12, 10   # dense in/out features


def _gemm_act_a(name: str, *, trans_a=0, trans_b=0, alpha=1.0, beta=1.0, c_shape=(M,), post="Relu"):
    """Gemm with the activation as A and a constant B. transA=1 puts the batch on axis 1 (static)."""
    g = Builder(name)
    x = g.input("x", (K, BATCH) if trans_a else (N, K))
    w = g.weight("fc.weight", (M, K) if trans_b else (K, M), fan_in=K)
    ins = [x, w] + ([g.vector("fc.bias", c_shape)] if c_shape is not None else [])
    attrs = {k: v for k, v in (("alpha", alpha), ("beta", beta)) if v != 1.0}
    y = g.op("Gemm", ins, name="fc", transA=trans_a, transB=trans_b, **attrs)
    return g.build(g.op(post, [y]) if post else y)


def _gemm_const_a(name: str, *, trans_a=0, trans_b=0, c_shape=None):
    """Gemm where A is the constant and B the activation: Y (M, batch) = op(W) @ op(X)."""
    g = Builder(name)
    x = g.input("x", (N, K) if trans_b else (K, BATCH))
    w = g.weight("fc.weight", (K, M) if trans_a else (M, K), fan_in=K)
    ins = [w, x] + ([g.vector("fc.bias", c_shape)] if c_shape is not None else [])
    y = g.op("Gemm", ins, name="fc", transA=trans_a, transB=trans_b)
    return g.build(g.op("Relu", [y]))


def gemm_models() -> list[ZooModel]:
    return [
        _gemm_act_a("gemm_transb0_cvec_relu", trans_b=0, c_shape=(M,)),
        _gemm_act_a("gemm_transb1_crow_relu", trans_b=1, c_shape=(1, M)),
        _gemm_act_a("gemm_alpha_beta", trans_b=1, alpha=0.5, beta=2.0, c_shape=(M,), post="Identity"),
        _gemm_act_a("gemm_no_c", trans_b=1, alpha=1.5, c_shape=None),
        _gemm_act_a("gemm_transa_transb0", trans_a=1, trans_b=0, c_shape=(M,)),
        _gemm_act_a("gemm_transa_transb1_beta", trans_a=1, trans_b=1, beta=0.5, c_shape=(1, M)),
        _gemm_const_a("gemm_const_a", c_shape=(M, 1)),
        _gemm_const_a("gemm_const_a_transa_transb", trans_a=1, trans_b=1),
    ]


def matmul_models() -> list[ZooModel]:
    out = []

    g = Builder("matmul_2d")
    out.append(g.build(g.op("Relu", [g.matmul(g.input("x", (N, K)), K, M)])))

    g = Builder("matmul_3d")
    out.append(g.build(g.op("Relu", [g.matmul(g.input("x", (N, 5, K)), K, M)])))

    g = Builder("matmul_add_bias")
    y = g.matmul(g.input("x", (N, K)), K, M, name="fc")
    out.append(g.build(g.op("Relu", [g.op("Add", [y, g.vector("fc.bias", (M,))])])))

    g = Builder("matmul_add_bias_lhs_3d")     # bias as the first Add operand, 3-D activation
    y = g.matmul(g.input("x", (N, 5, K)), K, M, name="fc")
    out.append(g.build(g.op("Add", [g.vector("fc.bias", (M,)), y])))

    g = Builder("matmul_const_left")          # W (M,K) @ X (K, batch), static
    y = g.op("MatMul", [g.weight("fc.weight", (M, K)), g.input("x", (K, BATCH))], name="fc")
    out.append(g.build(g.op("Relu", [y])))
    return out


# --------------------------------------------------------------------------------------------------
# activations (each next to a Gemm)


def _act_model(name: str, act, before: bool = False, opset: int = OPSET):
    """`act(g, x) -> y` applied after (or before) a Linear-style Gemm."""
    g = Builder(name, opset)
    x = g.input("x", (N, K))
    if before:
        return g.build(g.gemm(act(g, x), K, M))
    return g.build(act(g, g.gemm(x, K, M)))


def _gelu(g: Builder, x: str) -> str:
    """GELU exactly as torch.onnx exports it at opset < 20: x * 0.5 * (1 + erf(x / sqrt(2)))."""
    d = g.op("Div", [x, g.const("sqrt2", np.float32(np.sqrt(2.0)))])
    e = g.op("Erf", [d])
    a = g.op("Add", [e, g.const("one", np.float32(1.0))])
    m = g.op("Mul", [x, a])
    return g.op("Mul", [m, g.const("half", np.float32(0.5))])


def activation_models() -> list[ZooModel]:
    simple = lambda op, **kw: (lambda g, x: g.op(op, [x], **kw))  # noqa: E731
    lo, hi = lambda g: g.const("clip_min", np.float32(-0.5)), lambda g: g.const("clip_max", np.float32(0.8))
    return [
        _act_model("act_relu", simple("Relu")),
        _act_model("act_leaky_relu", simple("LeakyRelu", alpha=0.1)),
        _act_model("act_clip_min_max", lambda g, x: g.op("Clip", [x, lo(g), hi(g)])),
        _act_model("act_clip_max_only", lambda g, x: g.op("Clip", [x, "", hi(g)])),
        _act_model("act_clip_none", lambda g, x: g.op("Clip", [x])),
        _act_model("act_softplus", simple("Softplus")),
        _act_model("act_sigmoid", simple("Sigmoid")),
        _act_model("act_tanh", simple("Tanh")),
        _act_model("act_tanh_before_gemm", simple("Tanh"), before=True),
        _act_model("act_gelu_erf_pattern", _gelu),
        _act_model("act_erf", simple("Erf")),
        _act_model("act_hard_sigmoid", simple("HardSigmoid", alpha=0.3, beta=0.4)),
        _act_model("act_hard_swish", lambda g, x: g.op("HardSwish", [g.op("Mul", [x, g.const("three", np.float32(3.0))])])),
        _act_model("act_elu", simple("Elu", alpha=0.7)),
        _act_model("act_selu", simple("Selu")),
        _act_model("act_celu", simple("Celu", alpha=0.6)),
        _act_model("act_sin", lambda g, x: g.op("Sin", [g.op("Mul", [x, g.const("omega", np.float32(2.0))])])),
        _act_model("act_cos", simple("Cos")),
        _act_model("act_cumsum", lambda g, x: g.op("CumSum", [x, g.const("axis", np.array(1, np.int64))])),
        _act_model("act_cumsum_exclusive_reverse", lambda g, x: g.op(
            "CumSum", [x, g.const("axis", np.array(-1, np.int64))], exclusive=1, reverse=1)),
        _act_model("act_softsign", simple("Softsign")),
        _act_model("act_mish", simple("Mish"), opset=18),
        _act_model("act_gelu_op_tanh", simple("Gelu", approximate="tanh"), opset=20),
        _act_model("act_neg", simple("Neg")),
        _act_model("act_abs", simple("Abs")),
        _act_model("act_exp", simple("Exp")),
        _act_model("act_pow_square", lambda g, x: g.op("Pow", [x, g.const("two", np.float32(2.0))])),
        _act_model("act_pow_cube", lambda g, x: g.op("Pow", [x, g.const("three", np.float32(3.0))])),
        _act_model("act_sqrt_of_square_plus_one", lambda g, x: g.op("Sqrt", [_square_plus(g, x, 1.0)])),
        _act_model("act_reciprocal", lambda g, x: g.op("Reciprocal", [_square_plus(g, x, 0.5)])),
        _act_model("act_log_of_exp_plus_one", lambda g, x: g.op("Log", [g.op("Add", [
            g.op("Exp", [x]), g.const("one", np.float32(1.0))])])),
        _act_model("act_pow_fractional", lambda g, x: g.op("Pow", [_square_plus(g, x, 1.0),
                                                                   g.const("p", np.float32(-1.5))])),
        _act_model("act_atan", lambda g, x: g.op("Atan", [g.op("Mul", [x, g.const("gain", np.float32(3.0))])])),
        _act_model("act_asinh", lambda g, x: g.op("Asinh", [g.op("Mul", [x, g.const("gain", np.float32(3.0))])])),
        _act_model("act_sinh", simple("Sinh")),
        _act_model("act_cosh", simple("Cosh")),
        _act_model("act_swish", simple("Swish", alpha=1.5), opset=24),
        _act_model("act_thresholded_relu", simple("ThresholdedRelu", alpha=0.2)),
        _act_model("act_shrink", simple("Shrink", lambd=0.3, bias=0.1)),
    ]


def _where_leaky(g: Builder, x: str) -> str:
    """torch.where(x > 0, x, 0.1 * x)."""
    c = g.op("Greater", [x, g.const("zero", np.float32(0.0))])
    return g.op("Where", [c, x, g.op("Mul", [x, g.const("slope", np.float32(0.1))])])


def _hard_shrink(g: Builder, x: str) -> str:
    """F.hardshrink's form: where(not |x| < lambda, x, 0), with a threshold per feature."""
    small = g.op("Less", [g.op("Abs", [x]), g.const("lambd", g.rng.uniform(0.2, 0.6, M).astype(np.float32))])
    return g.op("Where", [g.op("Not", [small]), x, g.const("zero", np.float32(0.0))])


def _band_gate(g: Builder, x: str) -> str:
    """x * ((x > -0.3) & (x <= 0.4)).float() + (x >= 0.4).float(): a band kept, a step above."""
    band = g.op("And", [g.op("Greater", [x, g.const("lo", np.float32(-0.3))]),
                        g.op("LessOrEqual", [x, g.const("hi", np.float32(0.4))])])
    above = g.op("Cast", [g.op("GreaterOrEqual", [x, g.const("top", np.float32(0.4))])], to=TensorProto.FLOAT)
    return g.op("Add", [g.op("Mul", [x, g.op("Cast", [band], to=TensorProto.FLOAT)]), above])


def _odd_logic(g: Builder, x: str) -> str:
    """where((x < -0.8) | ((x > 0) ^ (x == 0.25)), x, 0.5 x): Or, Xor and a float Equal (a measure-zero event)."""
    flip = g.op("Xor", [g.op("Greater", [x, g.const("zero", np.float32(0.0))]),
                        g.op("Equal", [x, g.const("quarter", np.float32(0.25))])])
    cond = g.op("Or", [g.op("Less", [x, g.const("low", np.float32(-0.8))]), flip])
    return g.op("Where", [cond, x, g.op("Mul", [x, g.const("half", np.float32(0.5))])])


def pointwise_models() -> list[ZooModel]:
    """Functions of one noisy signal folded into one Pointwise node: comparisons, logic, x reaching an op twice."""
    return [
        _act_model("act_where_leaky", _where_leaky),
        _act_model("act_hard_shrink", _hard_shrink),
        _act_model("act_band_gate", _band_gate),
        _act_model("act_odd_logic", _odd_logic),
        _act_model("act_silu_pattern", lambda g, x: g.op("Mul", [x, g.op("Sigmoid", [x])])),
        _act_model("act_round_fake_quant", lambda g, x: _scaled(g, "Round", x, 4.0)),
        _act_model("act_floor", lambda g, x: _scaled(g, "Floor", x, 3.0)),
        _act_model("act_ceil", lambda g, x: _scaled(g, "Ceil", x, 3.0)),
        _act_model("act_round_residual", lambda g, x: g.op("Sub", [x, _scaled(g, "Round", x, 4.0)])),
    ] + [_binarized(), _conv_channel_threshold()]


def _scaled(g: Builder, op: str, x: str, scale: float) -> str:
    """op(x * scale) / scale: hand-written fake quantization (torch.round(x / s) * s) and its floor / ceil forms."""
    y = g.op(op, [g.op("Mul", [x, g.const("scale", np.float32(scale))])])
    return g.op("Mul", [y, g.const("inv_scale", np.float32(1.0 / scale))])


def _binarized() -> ZooModel:
    """A binarised hidden layer: sign(x W1) W2 (64 hidden units, so that a chip flips a few signs)."""
    g = Builder("binarized_sign")
    h = g.op("Sign", [g.gemm(g.input("x", (N, K)), K, 64, name="fc1")])
    return g.build(g.gemm(h, 64, 4, name="fc2"))


def _conv_channel_threshold() -> ZooModel:
    """where(y > t_c, y, 0) on a conv's output, a threshold per channel (C, 1, 1), then another conv."""
    g = Builder("conv_channel_threshold")
    y = g.conv(g.input("x", ("N", 3, 8, 8)), 3, 4, pads=[1, 1, 1, 1])
    keep = g.op("Greater", [y, g.const("t", g.rng.uniform(-0.2, 0.3, (4, 1, 1)).astype(np.float32))])
    y = g.op("Where", [keep, y, g.const("zero", np.float32(0.0))])
    return g.build(g.conv(y, 4, 2, name="conv2"))


def _square_plus(g: Builder, x: str, c: float) -> str:
    """x^2 + c: a positive signal for Sqrt, Log and fractional powers."""
    return g.op("Add", [g.op("Mul", [x, x]), g.const("c", np.float32(c))])


# --------------------------------------------------------------------------------------------------
# dense structural / element-wise ops


def dense_misc_models() -> list[ZooModel]:
    out = []

    g = Builder("sub_two_branches")
    x = g.input("x", (N, K))
    out.append(g.build(g.op("Sub", [g.gemm(x, K, M, name="fc_a"), g.gemm(x, K, M, name="fc_b")])))

    g = Builder("add_const_after_gemm")
    y = g.gemm(g.input("x", (N, K)), K, M, bias=False)
    out.append(g.build(g.op("Add", [y, g.vector("shift", (M,), 0.5)])))

    g = Builder("identity_before_gemm")
    out.append(g.build(g.gemm(g.op("Identity", [g.input("x", (N, K))]), K, M)))

    # GatherND with constant indices over leading axes, the batch moved behind them, as torch's dynamo exporter
    # gathers an adaptive pool's windows: (N, 2, 5) -> (2, 5, N) -> 3 x 2 picked (row, column) pairs -> (N, 3, 2)
    g = Builder("gathernd_windows")
    y = g.op("Reshape", [g.gemm(g.input("x", (N, K)), K, M), g.const("rows", np.array([0, 2, 5], np.int64))])
    moved = g.op("Transpose", [y], perm=[1, 2, 0])
    picked = g.op("GatherND", [moved, g.const("pairs", np.array([[[0, 1], [1, 4]], [[1, 0], [0, 0]],
                                                                  [[-1, 2], [0, -2]]], np.int64))])
    back = g.op("Transpose", [picked], perm=[2, 0, 1])
    out.append(g.build(g.gemm(g.op("Flatten", [back]), 6, 4, name="fc_out")))

    # ScatterND writing (row, column) pairs of leading axes, the batch behind them (torch's dynamo exporter writes a
    # slice assignment so): (N, 2, 5) -> (2, 5, N), three updates (one pair twice: the last write wins) -> back
    g = Builder("scatternd_pairs")
    x = g.input("x", (N, K))
    moved = g.op("Transpose", [g.op("Reshape", [g.gemm(x, K, M), g.const("rows", np.array([0, 2, 5], np.int64))])],
                 perm=[1, 2, 0])
    updates = g.op("Transpose", [g.op("Relu", [g.gemm(x, K, 3, name="fc_updates")])], perm=[1, 0])
    pairs = g.const("pairs", np.array([[0, 1], [-1, 4], [0, 1]], np.int64))
    back = g.op("Transpose", [g.op("ScatterND", [moved, pairs, updates])], perm=[2, 0, 1])
    out.append(g.build(g.gemm(g.op("Flatten", [back]), M, 4, name="fc_out")))

    # ScatterElements / GatherElements along axis 2 / 1 of (N, 2, 5), the indices one sample's, expanded to the
    # batch as torch writes them (Expand to Concat(Shape(y)[:1], rest))
    for name, rest in (("scatterelements_3d", (2, 3)), ("gatherelements_3d", (3, 5))):
        g = Builder(name)
        x = g.input("x", (N, K))
        y = g.op("Reshape", [g.gemm(x, K, M), g.const("rows", np.array([0, 2, 5], np.int64))])
        sizes = g.op("Concat", [g.op("Shape", [y], end=1), g.const("rest", np.array(rest, np.int64))], axis=0)
        if name.startswith("scatter"):
            one = g.const("at", np.array([[[4, 0, -1], [2, 2, 1]]], np.int64))
            updates = g.op("Reshape", [g.op("Sigmoid", [g.gemm(x, K, 6, name="fc_updates")]),
                                       g.const("update_rows", np.array([0, 2, 3], np.int64))])
            y = g.op("ScatterElements", [y, g.op("Expand", [one, sizes]), updates], axis=2)
        else:
            one = g.const("at", np.array([[[1, 0, 1, 1, 0], [0, 0, 1, -2, 1], [1, 1, 0, 0, -1]]], np.int64))
            y = g.op("GatherElements", [y, g.op("Expand", [one, sizes])], axis=1)
        out.append(g.build(g.gemm(g.op("Flatten", [y]), int(np.prod(rest)) if name.startswith("gather") else M, 4,
                                  name="fc_out")))

    # Sum and Mean of three operands (one of them twice), Max of three: chains of two-operand ops
    for op in ("Sum", "Mean", "Max"):
        g = Builder(f"{op.lower()}_of_three")
        x = g.input("x", (N, K))
        a, b = g.gemm(x, K, M, name="fc_a"), g.gemm(x, K, M, name="fc_b")
        out.append(g.build(g.op(op, [a, b, a if op != "Max" else g.vector("floor", (M,), 0.3)])))

    # reductions and masks written as other ops: ReduceLogSum (of a positive signal), LpNormalization, ReduceProd
    # (exact for independent factors), Trilu and Compress by constants
    g = Builder("reduce_log_sum")
    y = g.op("Reshape", [g.op("Sigmoid", [g.gemm(g.input("x", (N, K)), K, M)]), g.const("rows", np.array([0, 2, 5]))])
    out.append(g.build(g.gemm(g.op("ReduceLogSum", [y], axes=[2], keepdims=0), 2, 3,
                              name="fc_out")))

    g = Builder("lp_normalization")
    y = g.op("LpNormalization", [g.gemm(g.input("x", (N, K)), K, M)], axis=1, p=2)
    out.append(g.build(g.gemm(y, M, 4, name="fc_out")))

    g = Builder("reduce_prod")
    y = g.op("Reshape", [g.op("Add", [g.gemm(g.input("x", (N, K)), K, M), g.const("one", np.float32(1.5))]),
                         g.const("rows", np.array([0, 5, 2]))])
    out.append(g.build(g.gemm(g.op("ReduceProd", [y], axes=[2], keepdims=0), 5, 3, name="fc_out")))

    g = Builder("trilu_lower")
    y = g.op("Reshape", [g.gemm(g.input("x", (N, K)), K, 16), g.const("square", np.array([0, 4, 4]))])
    y = g.op("Trilu", [y, g.const("k", np.array(-1, np.int64))], upper=0)
    out.append(g.build(g.gemm(g.op("Flatten", [y]), 16, 4, name="fc_out")))

    g = Builder("castlike_float")                     # CastLike to a float constant's type: the identity
    y = g.op("CastLike", [g.gemm(g.input("x", (N, K)), K, M), g.const("like", np.float32(0.0))])
    out.append(g.build(g.gemm(g.op("Relu", [y]), M, 4, name="fc_out")))

    g = Builder("center_crop_pad", opset=18)         # (N, 2, 5) -> crop axis 2 to 3, pad axis 1 to 5
    y = g.op("Reshape", [g.gemm(g.input("x", (N, K)), K, M), g.const("rows", np.array([0, 2, 5]))])
    y = g.op("CenterCropPad", [y, g.const("target", np.array([5, 3], np.int64))], axes=[1, 2])
    out.append(g.build(g.gemm(g.op("Flatten", [y]), 15, 4, name="fc_out")))

    g = Builder("compress_columns")
    y = g.op("Compress", [g.gemm(g.input("x", (N, K)), K, M), g.const("keep", np.array(
        [1, 0, 1, 1, 0, 0, 1, 0, 1, 1], bool))], axis=1)
    out.append(g.build(g.gemm(y, 6, 4, name="fc_out")))

    g = Builder("dropout_between_gemms")
    y = g.op("Relu", [g.gemm(g.input("x", (N, K)), K, M, name="fc1")])
    y = g.op("Dropout", [y, g.const("ratio", np.float32(0.25))])
    out.append(g.build(g.gemm(y, M, 4, name="fc2")))

    g = Builder("softmax_after_gemm")
    out.append(g.build(g.op("Softmax", [g.gemm(g.input("x", (N, K)), K, M)], axis=-1)))

    g = Builder("where_causal_mask_softmax")  # masked_fill of a fixed mask (finite fill), then Softmax
    y = g.matmul(g.input("x", (N, 4, K)), K, 4)
    mask = g.const("keep", np.tril(np.ones((4, 4), bool)))
    y = g.op("Where", [mask, y, g.const("fill", np.float32(-30.0))])
    out.append(g.build(g.op("Softmax", [y], axis=-1)))

    g = Builder("qdq_between_gemms")          # fake quantization (QAT) of a hidden activation, uint8
    y = g.op("Relu", [g.gemm(g.input("x", (N, K)), K, M, name="fc1")])
    scale, zero = g.const("scale", np.float32(0.02)), g.const("zero", np.uint8(0))
    y = g.op("DequantizeLinear", [g.op("QuantizeLinear", [y, scale, zero]), scale, zero])
    out.append(g.build(g.gemm(y, M, 4, name="fc2")))

    g = Builder("einsum_weight_then_tokens_summed")   # torch.einsum as the legacy exporter writes it
    y = g.op("Einsum", [g.input("x", (N, 5, K)), g.weight("w", (K, M))], equation="bld,de->ble")
    out.append(g.build(g.op("Einsum", [g.op("Relu", [y]), g.weight("head", (M, 4))], equation="bld,dc->bc")))

    g = Builder("einsum_attention_heads")     # scores of two projections per head, then weights x values
    x = g.input("x", (N, 4, 2 * K))
    q = g.op("Reshape", [g.matmul(x, 2 * K, 2 * K, name="q"), g.const("heads", np.array([0, 4, 2, K]))])
    k = g.op("Reshape", [g.matmul(x, 2 * K, 2 * K, name="k"), g.const("heads_k", np.array([0, 4, 2, K]))])
    v = g.op("Reshape", [g.matmul(x, 2 * K, 2 * K, name="v"), g.const("heads_v", np.array([0, 4, 2, K]))])
    att = g.op("Softmax", [g.op("Einsum", [q, k], equation="bihd,bjhd->bhij")], axis=-1)
    out.append(g.build(g.op("Einsum", [att, v], equation="bhij,bjhd->bihd")))

    g = Builder("einsum_ellipsis_implicit_output")   # "...d,de->...e", then "ble,ec" (output "bcl")
    y = g.op("Einsum", [g.input("x", (N, 5, K)), g.weight("w", (K, M))], equation="...d,de->...e")
    out.append(g.build(g.op("Einsum", [g.op("Relu", [y]), g.weight("head", (M, 3))], equation="ble,ec")))

    g = Builder("einsum_three_operands")      # x W1 W2 in one Einsum: two crossbars in a chain
    out.append(g.build(g.op("Einsum", [g.input("x", (N, K)), g.weight("w1", (K, M)), g.weight("w2", (M, 4))],
                            equation="bi,ij,jk->bk")))

    g = Builder("einsum_bilinear")            # x_i h_j W_ijc: the outer product of two signals, then a crossbar
    x = g.input("x", (N, K))
    h = g.op("Relu", [g.gemm(x, K, 3, name="fc")])
    out.append(g.build(g.op("Einsum", [x, g.weight("w", (K, 3, 4)), h], equation="bi,ijc,bj->bc")))

    g = Builder("two_inputs_add")             # two data inputs meet exactly at an Add, then a crossbar
    out.append(g.build(g.gemm(g.op("Add", [g.input("x1", (N, K)), g.input("x2", (N, K), dist="uniform")]), K, M)))

    g = Builder("two_inputs_branches")        # an image branch and a feature branch, concatenated, then a head
    img = g.op("Flatten", [g.op("Relu", [g.conv(g.input("image", (N, 2, 4, 4)), 2, 3, pads=[1, 1, 1, 1])])])
    side = g.op("Relu", [g.gemm(g.input("features", (N, K)), K, 5, name="side")])
    out.append(g.build(g.gemm(g.op("Concat", [img, side], axis=1), 3 * 16 + 5, 4, name="head")))

    g = Builder("two_inputs_attention_mask")  # scores of two projections plus an additive mask fed as an input
    x = g.input("x", (N, 4, K))
    q, k = g.matmul(x, K, K, name="q"), g.matmul(x, K, K, name="k")
    scores = g.op("MatMul", [q, g.op("Transpose", [k], perm=[0, 2, 1])])
    mask = g.op("Mul", [g.input("mask", (N, 4, 4), dist="uniform"), g.const("minus", np.array(-4.0, np.float32))])
    att = g.op("Softmax", [g.op("Add", [scores, mask])], axis=-1)
    out.append(g.build(g.matmul(g.op("MatMul", [att, g.matmul(x, K, K, name="v")]), K, 3, name="out")))

    g = Builder("where_exact_condition")      # a condition computed from a second input alone selects the signal
    y = g.op("Relu", [g.gemm(g.input("x", (N, K)), K, M)])
    keep = g.op("Greater", [g.input("gate", (N, M), dist="uniform"), g.const("half", np.array(0.5, np.float32))])
    out.append(g.build(g.gemm(g.op("Where", [keep, y, g.const("zero", np.array(0.0, np.float32))]), M, 4,
                              name="fc2")))

    g = Builder("token_embedding")            # int64 ids -> rows of a constant table (a digital lookup), then a crossbar
    emb = g.op("Gather", [g.weight("table", (9, K)), g.input("ids", (N, 5), ids=9)], axis=0)
    out.append(g.build(g.matmul(g.op("Relu", [g.matmul(emb, K, M)]), M, 3, name="head")))

    g = Builder("transpose_matmul")           # (N, C, T) -> (N, T, C) @ (C, M)
    y = g.op("Transpose", [g.input("x", (N, K, 5))], perm=[0, 2, 1])
    out.append(g.build(g.matmul(y, K, M)))

    g = Builder("reshape_after_gemm")         # shape [0, 2, -1]
    y = g.gemm(g.input("x", (N, K)), K, M)
    out.append(g.build(g.op("Reshape", [y, g.const("shape", np.array([0, 2, -1]))])))

    g = Builder("reduce_mean_tokens")         # (N, T, K) @ (K, M) -> mean over T -> Gemm
    y = g.op("Relu", [g.matmul(g.input("x", (N, 5, K)), K, M)])
    y = g.op("ReduceMean", [y], axes=[1], keepdims=0)
    out.append(g.build(g.gemm(y, M, 4)))

    g = Builder("reduce_sum_keepdims")        # (N, T, K) @ (K, M) -> sum over T, kept -> (N, 1, M)
    y = g.matmul(g.input("x", (N, 4, K)), K, M)
    out.append(g.build(g.op("ReduceSum", [y, g.const("axes", np.array([-2]))], keepdims=1)))

    g = Builder("log_softmax_after_gemm")
    out.append(g.build(g.op("LogSoftmax", [g.gemm(g.input("x", (N, K)), K, M)], axis=1)))

    g = Builder("slice_tokens_and_features")  # (N, 5, K) @ (K, M) -> tokens 1..3, every other feature
    y = g.matmul(g.input("x", (N, 5, K)), K, M)
    i64 = lambda name, v: g.const(name, np.array(v, np.int64))  # noqa: E731
    y = g.op("Slice", [y, i64("starts", [1, 0]), i64("ends", [4, 1 << 40]), i64("axes", [1, -1]), i64("steps", [1, 2])])
    out.append(g.build(g.matmul(g.op("Relu", [y]), M // 2, 4)))

    g = Builder("layer_norm_tokens")          # (N, 5, K) @ (K, M) -> LayerNorm over features -> Relu -> (M, 4)
    y = g.matmul(g.input("x", (N, 5, K)), K, M)
    y = g.op("LayerNormalization", [y, g.vector("ln.weight", (M,), 0.5), g.vector("ln.bias", (M,), 0.2)], axis=-1)
    out.append(g.build(g.matmul(g.op("Relu", [y]), M, 4)))

    g = Builder("layer_norm_two_axes")        # normalised over (tokens, features), no bias
    y = g.matmul(g.input("x", (N, 5, K)), K, M)
    out.append(g.build(g.op("LayerNormalization", [y, g.vector("ln.weight", (5, M), 0.5)], axis=1)))

    g = Builder("rms_norm_tokens", opset=23)  # RMSNormalization (opset 23: torch's nn.RMSNorm) over the features
    y = g.matmul(g.input("x", (N, 5, K)), K, M)
    y = g.op("RMSNormalization", [y, g.vector("rms.weight", (M,), 0.5)], axis=-1, epsilon=1e-3)
    out.append(g.build(g.matmul(g.op("Relu", [y]), M, 4)))

    g = Builder("unsqueeze_squeeze")          # (N, M) -> (N, 1, M) -> MatMul -> (N, 4)
    axis = g.const("axis", np.array([1], np.int64))
    y = g.op("Unsqueeze", [g.op("Relu", [g.gemm(g.input("x", (N, K)), K, M)]), axis])
    out.append(g.build(g.op("Squeeze", [g.matmul(y, M, 4), axis])))

    g = Builder("class_token_expand")         # ViT: cat([cls.expand(x.shape[0], -1, -1), tokens], 1) + pos
    x = g.input("x", (N, 4, K))
    i64 = lambda name, v: g.const(name, np.array(v, np.int64))  # noqa: E731
    n = g.op("Unsqueeze", [g.op("Gather", [g.op("Shape", [x]), i64("zero", 0)], axis=0), i64("axis0", [0])])
    target = g.op("Concat", [n, i64("ones", [1, 1])], axis=0)
    cls = g.op("Expand", [g.vector("cls", (1, 1, M), 1.0), target])
    y = g.op("Concat", [cls, g.matmul(x, K, M, name="embed")], axis=1)
    y = g.op("Relu", [g.op("Add", [y, g.vector("pos", (1, 5, M), 0.3)])])
    out.append(g.build(g.matmul(g.op("Gather", [y, i64("token", 0)], axis=1), M, 4, name="head")))

    g = Builder("expand_signal_features")     # (N, 1, M) broadcast to (N, 3, M) with the batch kept by a 1
    y = g.op("Unsqueeze", [g.op("Tanh", [g.gemm(g.input("x", (N, K)), K, M)]), g.const("axis", np.array([1]))])
    y = g.op("Expand", [y, g.const("target", np.array([1, 3, M]))])
    out.append(g.build(g.matmul(g.op("Add", [y, g.vector("shift", (3, M), 0.5)]), M, 4)))

    g = Builder("l2_normalize_features")      # F.normalize: x / max(||x||_2, eps), a ReduceL2 and a division
    y = g.gemm(g.input("x", (N, K)), K, M)
    norm = g.op("ReduceL2", [y], axes=[-1], keepdims=1)
    y = g.op("Div", [y, g.op("Clip", [norm, g.const("eps", np.float32(1e-12)), ""])])
    out.append(g.build(g.gemm(g.op("Cast", [y], to=TensorProto.FLOAT), M, 4, name="fc2")))

    g = Builder("tile_and_reduce_variants")   # x.repeat(1, 2, 1); sum of squares, L1 and log-sum-exp per token
    y = g.op("Tile", [g.matmul(g.input("x", (N, 3, K)), K, M), g.const("repeats", np.array([1, 2, 1]))])
    parts = [g.op(op, [y], axes=[-1], keepdims=1) for op in ("ReduceSumSquare", "ReduceL1", "ReduceLogSumExp")]
    out.append(g.build(g.matmul(g.op("Concat", parts, axis=-1), 3, 4, name="out")))

    g = Builder("reduce_max_min_tokens")      # a text CNN's max over tokens, and a min over features, kept
    y = g.matmul(g.input("x", (N, 6, K)), K, M)
    hi = g.op("ReduceMax", [y], axes=[1], keepdims=0)
    lo = g.op("ReduceMin", [y], axes=[-1], keepdims=1)
    out.append(g.build([g.gemm(hi, M, 4, name="fc_hi"), g.matmul(lo, 1, 3, name="fc_lo")]))

    g = Builder("layer_norm_decomposed")      # torch's nn.LayerNorm below opset 17, fused back by the frontend
    y = g.matmul(g.input("x", (N, 5, K)), K, M)
    d = g.op("Sub", [y, g.op("ReduceMean", [y], axes=[-1])])
    v = g.op("ReduceMean", [g.op("Pow", [d, g.const("two", np.float32(2.0))])], axes=[-1])
    y = g.op("Div", [d, g.op("Sqrt", [g.op("Add", [v, g.const("eps", np.float32(1e-5))])])])
    y = g.op("Add", [g.op("Mul", [y, g.vector("ln.weight", (M,), 0.5)]), g.vector("ln.bias", (M,), 0.2)])
    out.append(g.build(g.matmul(g.op("Relu", [y]), M, 4)))

    g = Builder("rms_norm_decomposed")        # x / sqrt(mean(x^2) + eps) * w: Mul of correlated signals
    y = g.matmul(g.input("x", (N, 5, K)), K, M)
    ms = g.op("ReduceMean", [g.op("Pow", [y, g.const("two", np.float32(2.0))])], axes=[-1])
    r = g.op("Reciprocal", [g.op("Sqrt", [g.op("Add", [ms, g.const("eps", np.float32(1e-6))])])])
    y = g.op("Mul", [g.op("Mul", [y, r]), g.vector("rms.weight", (M,), 0.5)])
    out.append(g.build(g.matmul(y, M, 4)))

    g = Builder("max_min_of_branches")        # torch.maximum of two branches, then clamp at a constant ceiling
    x = g.input("x", (N, K))
    y = g.op("Max", [g.gemm(x, K, M, name="fc_a"), g.gemm(x, K, M, name="fc_b")])
    out.append(g.build(g.gemm(g.op("Min", [y, g.const("ceiling", np.float32(0.6))]), M, 4, name="fc2")))

    g = Builder("div_by_signal")              # a / (1 + exp(b)): two branches, a divisor away from 0
    x = g.input("x", (N, K))
    den = g.op("Add", [g.op("Exp", [g.gemm(x, K, M, name="fc_b")]), g.const("one", np.float32(1.0))])
    out.append(g.build(g.gemm(g.op("Div", [g.gemm(x, K, M, name="fc_a"), den]), M, 4, name="fc2")))

    g = Builder("self_attention")             # softmax(Q K^T / sqrt(d)) V, then an output projection
    x = g.input("x", (N, 5, K))
    q, k, v = (g.matmul(x, K, M, name=n) for n in ("q", "k", "v"))
    s = g.op("MatMul", [q, g.op("Transpose", [k], perm=[0, 2, 1])])
    a = g.op("Softmax", [g.op("Mul", [s, g.const("inv_sqrt_d", np.float32(1 / np.sqrt(M)))])], axis=-1)
    out.append(g.build(g.matmul(g.op("MatMul", [a, v]), M, 4, name="o")))

    g = Builder("gather_class_token")         # (N, 5, K) @ (K, M) -> token 0 (x[:, 0]) -> Gemm
    y = g.op("Relu", [g.matmul(g.input("x", (N, 5, K)), K, M)])
    y = g.op("Gather", [y, g.const("token", np.array(0, np.int64))], axis=1)
    out.append(g.build(g.gemm(y, M, 4)))

    g = Builder("gather_features_repeated")   # features picked with a repeat and a negative index
    y = g.gemm(g.input("x", (N, K)), K, M)
    y = g.op("Gather", [y, g.const("idx", np.array([[0, 3], [-1, 3]], np.int64))], axis=-1)
    out.append(g.build(g.gemm(g.op("Flatten", [g.op("Tanh", [y])]), 4, 3, name="fc2")))

    g = Builder("split_tokens_three_ways")    # split sizes input; each part through its own ops
    y = g.matmul(g.input("x", (N, 6, K)), K, M)
    a, b, c = g.op("Split", [y, g.const("split", np.array([1, 2, 3], np.int64))], n_out=3, axis=1)
    y = g.op("Concat", [g.op("Relu", [a]), g.op("Sigmoid", [b]), c], axis=1)
    out.append(g.build(g.matmul(y, M, 4, name="out")))

    g = Builder("prelu_per_feature")          # torch's nn.PReLU(num_parameters=M) on (N, M)
    y = g.gemm(g.input("x", (N, K)), K, M)
    y = g.op("PRelu", [y, g.const("prelu.weight", g.rng.uniform(0.05, 0.5, M))])
    out.append(g.build(g.gemm(y, M, 4, name="fc2")))

    g = Builder("mlp_gemm_relu")
    y = g.op("Relu", [g.gemm(g.input("x", (N, 16)), 16, 24, name="fc1")])
    y = g.op("Relu", [g.gemm(y, 24, 12, name="fc2")])
    out.append(g.build(g.gemm(y, 12, 4, name="fc3")))
    return out


# --------------------------------------------------------------------------------------------------
# entry points


def op_coverage_models() -> list[ZooModel]:
    """All coverage models (fresh objects on each call)."""
    conv = _conv_module()
    models = (gemm_models() + matmul_models() + activation_models() + pointwise_models() + dense_misc_models()
              + conv.conv_models() + conv.bn_models() + conv.pool_models() + conv.conv_misc_models()
              + conv.block_models() + _attention_module().attention_models())
    names = [m.name for m in models]
    assert len(names) == len(set(names)), "duplicate zoo model names"
    return models


def reference_outputs(zm: ZooModel) -> list[np.ndarray]:
    """Plain onnxruntime outputs of a zoo model on its feed."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(zm.model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, zm.inputs)


def _conv_module():
    if __package__:                                   # imported as tests.onnx_zoo
        from . import onnx_zoo_conv
    else:                                             # imported as onnx_zoo (tests/ on sys.path)
        import onnx_zoo_conv
    return onnx_zoo_conv


def _attention_module():
    if __package__:
        from . import onnx_zoo_attention
    else:
        import onnx_zoo_attention
    return onnx_zoo_attention


def _fc_with_weight(name: str, weight: np.ndarray) -> onnx.ModelProto:
    g = Builder(name)
    x = g.input("x", (N, weight.shape[1]))
    w = g.const("fc.weight", weight)
    return g.build(g.op("Gemm", [x, w, g.vector("fc.bias", (weight.shape[0],))], name="fc", transB=1)).model


def bad_models(tmpdir: pathlib.Path) -> dict[str, pathlib.Path]:
    """Write malformed / unsupported models into `tmpdir`; returns kind -> path."""
    tmpdir = pathlib.Path(tmpdir)
    tmpdir.mkdir(parents=True, exist_ok=True)
    models: dict[str, onnx.ModelProto] = {}
    raw: dict[str, bytes] = {}

    good = _fc_with_weight("truncated_src", np.random.default_rng(0).standard_normal((16, 32)))
    data = good.SerializeToString()
    raw["truncated"] = data[: len(data) // 2]         # cut inside the weight's raw_data
    raw["not_onnx"] = b"this is not an ONNX model, just some text\n"
    raw["empty"] = b""

    # TopK's values read on (not a decision the model ends in: memse_compiler/decisions.py): order statistics of
    # noisy signals, which the analysis has no rule for
    g = Builder("unsupported_op")
    y = g.gemm(g.input("x", (N, K)), K, M)
    values, _ = g.op("TopK", [y, g.const("k", np.array([3]))], n_out=2, name="weird_node", axis=-1)
    models["unsupported_op"] = g.build(g.op("Relu", [values])).model

    g = Builder("dynamic_spatial")
    y = g.conv(g.input("x", (N, 3, "H", "W")), 3, 4, pads=[1, 1, 1, 1])
    models["dynamic_spatial"] = g.build(g.op("Relu", [y])).model

    w = np.random.default_rng(1).standard_normal((M, K)) / np.sqrt(K)
    w_nan, w_inf = w.copy(), w.copy()
    w_nan[2, 5] = np.nan
    w_inf[4, 1] = np.inf
    models["nan_weight"] = _fc_with_weight("nan_weight", w_nan)
    models["inf_weight"] = _fc_with_weight("inf_weight", w_inf)

    g = Builder("mismatched_batches")          # two data inputs whose fixed batches differ
    models["mismatched_batches"] = g.build([g.gemm(g.input("x1", (2, K)), K, M, name="fc1"),
                                            g.gemm(g.input("x2", (3, K)), K, M, name="fc2")]).model

    g = Builder("maxpool_ceil_past_end")              # ceil_mode would start a window in the end padding
    y = g.op("Relu", [g.conv(g.input("x", (N, 3, 8, 8)), 3, 4, pads=[1, 1, 1, 1])])
    models["maxpool_ceil_past_end"] = g.build(g.gemm(g.op("Flatten", [g.op(
        "MaxPool", [y], name="ceil_pool", kernel_shape=[3, 3], strides=[3, 3], pads=[1, 1, 1, 1], ceil_mode=1)]),
        4 * 4 * 4, M)).model

    g = Builder("unbatched_vector")                   # x (K,): MatMul would sum over what the compiler takes as the batch
    models["unbatched_vector"] = g.build(g.matmul(g.input("x", (K,)), K, M, name="fc_vector")).model

    g = Builder("scatter_add")                        # an accumulation: not a write of each element
    y = g.gemm(g.input("x", (N, K)), K, M)
    at = g.op("Expand", [g.const("at", np.array([[1, 1, 3]], np.int64)),
                         g.op("Concat", [g.op("Shape", [y], end=1), g.const("three", np.array([3], np.int64))],
                              axis=0)])
    models["scatter_add"] = g.build(g.op("ScatterElements", [y, at, g.op("Slice", [y, g.const("s", np.array([0])),
                                                                               g.const("e", np.array([3])),
                                                                               g.const("a", np.array([1]))])],
                                         name="accumulate", axis=1, reduction="add")).model

    g = Builder("gather_by_data")                     # indices computed from the input's values
    x = g.input("x", (N, K))
    at = g.op("Cast", [g.op("Floor", [g.op("Abs", [g.op("Slice", [x, g.const("s", np.array([0])),
                                                                  g.const("e", np.array([M])),
                                                                  g.const("a", np.array([1]))])])])],
              to=TensorProto.INT64)
    models["gather_by_data"] = g.build(g.op("GatherElements", [g.gemm(x, K, M), g.op("Min", [at, g.const(
        "top", np.array(M - 1, np.int64))])], name="data_indexed", axis=1)).model

    g = Builder("scatternd_batch")                    # ScatterND indexing the batch axis
    y = g.gemm(g.input("x", (N, K)), K, M)
    models["scatternd_batch"] = g.build(g.op("ScatterND", [y, g.const("first", np.array([[0]], np.int64)),
                                                           g.op("Slice", [y, g.const("s", np.array([0])),
                                                                          g.const("e", np.array([1])),
                                                                          g.const("a", np.array([0]))])],
                                             name="batch_write")).model

    g = Builder("mvn_default_axes")                   # MeanVarianceNormalization's default axes [0, 2, 3]
    y = g.op("Reshape", [g.gemm(g.input("x", (N, K)), K, M), g.const("image", np.array([0, 2, 5, 1]))])
    models["mvn_default_axes"] = g.build(g.op("MeanVarianceNormalization", [y], name="mvn_batch",
                                              axes=[0, 2, 3])).model

    g = Builder("no_weighted_ops")
    models["no_weighted_ops"] = g.build(g.op("Relu", [g.input("x", (N, K))])).model

    paths = {}
    for kind, blob in [*raw.items(), *((k, m.SerializeToString()) for k, m in models.items())]:
        path = tmpdir / (f"{kind}.onnx")
        path.write_bytes(blob)
        paths[kind] = path
    return paths
