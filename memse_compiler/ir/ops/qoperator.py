"""onnxruntime's quantized operators, expanded at load into float ops between DequantizeLinear and QuantizeLinear.

`onnxruntime.quantization.quantize_static(..., quant_format=QOperator)` writes QLinearConv and QLinearMatMul
(standard ONNX) and, from its contrib domain com.microsoft, QGemm, QLinearAdd, QLinearMul, QLinearAveragePool,
QLinearGlobalAveragePool, QLinearConcat, QLinearSigmoid and QLinearLeakyRelu; `quantize_dynamic` writes
MatMulInteger and ConvInteger behind DynamicQuantizeLinear. Each is, by its definition, the float op on the
dequantized operands, re-quantized to its output's scale and zero point: written so here (the QDQ form of the same
model), the weights dequantized into float constants, the integer bias into a float one (its scale is
x_scale * w_scale), the activations through DequantizeLinear / QuantizeLinear nodes that the quantization rules
(ir/ops/quantization.py) analyse as the uniform quantizers they are. The crossbars then hold the dequantized
weights; MatMulInteger and ConvInteger hold the integer weights less their zero point, and read the integer codes
less theirs, as exact float values (their int32 result becomes a float one, which the model's Cast passes on).
With noise off, the executor then agrees with onnxruntime's integer kernels up to the float rounding of their
requantization (an element just at a rounding tie may land one code away).
"""
from __future__ import annotations

import numpy as np
import onnx

from memse_compiler.ir.ops.base import ExpansionWriter, OpRule, ParseContext, register

CONTRIB = "com.microsoft"
POOL_ATTRS = ("auto_pad", "ceil_mode", "count_include_pad", "kernel_shape", "pads", "strides")
CONV_ATTRS = ("auto_pad", "dilations", "group", "kernel_shape", "pads", "strides")


def _given(ctx: ParseContext, i: int) -> bool:
    return i < len(ctx.node.input) and bool(ctx.node.input[i])


def _constant(ctx: ParseContext, i: int, what: str) -> np.ndarray:
    value = ctx.const(i)
    if value is None:
        raise ctx.fail(f"the {what} must be a constant")
    return np.asarray(value)


def _zero_point(ctx: ParseContext, i: int) -> np.ndarray:
    return _constant(ctx, i, "zero point").astype(np.float64) if _given(ctx, i) else np.zeros(())


def _along(value: np.ndarray, ndim: int, axis: int) -> np.ndarray:
    """A per-tensor value as it is; a per-channel one shaped to broadcast along `axis` of an ndim-D tensor."""
    if value.size == 1:
        return value.reshape(())
    shape = [1] * ndim
    shape[axis] = -1
    return value.reshape(shape)


def _centred(ctx: ParseContext, w: int, zero: int, axis: int) -> np.ndarray:
    """The constant integer input `w` less its zero point (per channel along `axis`), in float64."""
    q = _constant(ctx, w, "weight").astype(np.float64)
    return q - _along(_zero_point(ctx, zero), q.ndim, axis)


def _dequantized_weight(ctx: ParseContext, w: int, scale: int, zero: int, axis: int) -> np.ndarray:
    """(w - zero) * scale in float64, a per-channel scale and zero point along `axis` of the weight."""
    centred = _centred(ctx, w, zero, axis)
    return centred * _along(_constant(ctx, scale, "weight scale").astype(np.float64), centred.ndim, axis)


def _dequantize(w: ExpansionWriter, ctx: ParseContext, x: int, scale: int, zero: int, label: str,
                axis: int = 0) -> str:
    """The float value of input `x`: a DequantizeLinear node of a signal, a float constant of a constant (its scale
    and zero point per channel along `axis`)."""
    if ctx.const(x) is not None:
        return w.const(label, _dequantized_weight(ctx, x, scale, zero, axis))
    ins = [ctx.node.input[x], ctx.node.input[scale]] + ([ctx.node.input[zero]] if _given(ctx, zero) else [])
    return w.add("DequantizeLinear", ins, label)


def _bias(w: ExpansionWriter, ctx: ParseContext, bias: int, a_scale: int, b_scale: int) -> str:
    """The int32 bias at input `bias` as a float constant: its scale is the product of the operands' (per output
    channel when the weight's is)."""
    scale = _constant(ctx, a_scale, "input scale").astype(np.float64) * \
        _constant(ctx, b_scale, "weight scale").astype(np.float64).reshape(-1)
    return w.const("bias", _constant(ctx, bias, "bias").astype(np.float64) * scale)


def _quantize(w: ExpansionWriter, ctx: ParseContext, y: str, scale: int, zero: int) -> str:
    """y re-quantized to the node's output (scale and zero point at inputs `scale`, `zero`)."""
    ins = [y, ctx.node.input[scale]] + ([ctx.node.input[zero]] if _given(ctx, zero) else [])
    return w.add("QuantizeLinear", ins)


def _attrs(ctx: ParseContext, names: tuple[str, ...]) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in ctx.node.attribute if a.name in names}


def _no_channels_last(ctx: ParseContext) -> None:
    if int(ctx.attr("channels_last", 0)):
        raise ctx.fail("channels_last=1 is not supported")


class _QuantizedRule(OpRule):
    expand_at_load = True       # before anything runs the model: the contrib ops have no ONNX shape inference


@register
class QLinearConvRule(_QuantizedRule):
    """QLinearConv(x, x_scale, x_zp, w, w_scale, w_zp, y_scale, y_zp, B): Conv of the dequantized x and w, the
    int32 bias at scale x_scale * w_scale, re-quantized to y."""
    op_types = ("QLinearConv",)

    def expand(self, ctx):
        w = ExpansionWriter(ctx)
        x = _dequantize(w, ctx, 0, 1, 2, "x")
        weight = w.const("weight", _dequantized_weight(ctx, 3, 4, 5, 0))
        ins = [x, weight] + ([_bias(w, ctx, 8, 1, 4)] if _given(ctx, 8) else [])
        _quantize(w, ctx, w.add("Conv", ins, "conv", **_attrs(ctx, CONV_ATTRS)), 6, 7)
        return w.nodes


@register
class QLinearMatMulRule(_QuantizedRule):
    """QLinearMatMul(a, a_scale, a_zp, b, b_scale, b_zp, y_scale, y_zp): MatMul of the dequantized operands
    (a constant b per column: its scale along its last axis), re-quantized."""
    op_types = ("QLinearMatMul",)

    def expand(self, ctx):
        w = ExpansionWriter(ctx)
        a, b = _dequantize(w, ctx, 0, 1, 2, "a"), _dequantize(w, ctx, 3, 4, 5, "b", axis=-1)
        _quantize(w, ctx, w.add("MatMul", [a, b], "matmul"), 6, 7)
        return w.nodes


@register
class IntegerProductRule(_QuantizedRule):
    """MatMulInteger(A, B, a_zp, b_zp) and ConvInteger(x, w, x_zp, w_zp): the int32 product of the operands less
    their zero points, as floats (exact: integers below 2^24 in float32); a zero point that the model computes
    (DynamicQuantizeLinear's) is subtracted by a Sub node."""
    op_types = ("MatMulInteger", "ConvInteger")

    def expand(self, ctx):
        w = ExpansionWriter(ctx)
        conv = ctx.node.op_type == "ConvInteger"
        operands = []
        for i, label in ((0, "a"), (1, "b")):
            if ctx.const(i) is not None:
                # the weight's zero point: per output channel (ConvInteger), per column (MatMulInteger B)
                axis = 0 if conv or i == 0 else -1
                operands.append(w.const(label, _centred(ctx, i, 2 + i, axis)))
                continue
            value = w.add("Cast", [ctx.node.input[i]], f"{label}_float", to=onnx.TensorProto.FLOAT)
            if _given(ctx, 2 + i):
                zero = ctx.node.input[2 + i]
                if ctx.const(2 + i) is None:
                    zero = w.add("Cast", [zero], f"{label}_zero_point", to=onnx.TensorProto.FLOAT)
                else:
                    zero = w.const(f"{label}_zero_point", _constant(ctx, 2 + i, "zero point").astype(np.float64))
                value = w.add("Sub", [value, zero], f"{label}_centred")
            operands.append(value)
        w.add("Conv" if conv else "MatMul", operands, **(_attrs(ctx, CONV_ATTRS) if conv else {}))
        return w.nodes


@register
class QGemmRule(_QuantizedRule):
    """com.microsoft QGemm(A, a_scale, a_zp, B, b_scale, b_zp, C, y_scale, y_zp): alpha op(A) op(B) + C of the
    dequantized operands, C an int32 bias at scale a_scale * b_scale; a float output when y_scale is absent."""
    op_types = ("QGemm",)
    domain = CONTRIB

    def expand(self, ctx):
        w = ExpansionWriter(ctx)
        a = _dequantize(w, ctx, 0, 1, 2, "a")
        trans_b = int(ctx.attr("transB", 0))
        b = w.const("b", _dequantized_weight(ctx, 3, 4, 5, 0 if trans_b else -1))
        ins = [a, b] + ([_bias(w, ctx, 6, 1, 4)] if _given(ctx, 6) else [])
        attrs = {"alpha": float(ctx.attr("alpha", 1.0)), "transA": int(ctx.attr("transA", 0)), "transB": trans_b}
        if not _given(ctx, 7):
            w.add("Gemm", ins, **attrs)
        else:
            _quantize(w, ctx, w.add("Gemm", ins, "gemm", **attrs), 7, 8)
        return w.nodes


@register
class QLinearBinaryRule(_QuantizedRule):
    """com.microsoft QLinearAdd and QLinearMul(A, A_scale, A_zp, B, B_scale, B_zp, C_scale, C_zp)."""
    op_types = ("QLinearAdd", "QLinearMul")
    domain = CONTRIB

    def expand(self, ctx):
        w = ExpansionWriter(ctx)
        a, b = _dequantize(w, ctx, 0, 1, 2, "a"), _dequantize(w, ctx, 3, 4, 5, "b")
        _quantize(w, ctx, w.add(ctx.node.op_type.removeprefix("QLinear"), [a, b], "float"), 6, 7)
        return w.nodes


@register
class QLinearUnaryRule(_QuantizedRule):
    """com.microsoft QLinearAveragePool, QLinearGlobalAveragePool, QLinearSigmoid and QLinearLeakyRelu
    (X, X_scale, X_zp, Y_scale, Y_zp): the float op between the two (channels first)."""
    op_types = ("QLinearAveragePool", "QLinearGlobalAveragePool", "QLinearSigmoid", "QLinearLeakyRelu")
    domain = CONTRIB

    def expand(self, ctx):
        _no_channels_last(ctx)
        w = ExpansionWriter(ctx)
        op = ctx.node.op_type.removeprefix("QLinear")
        attrs = _attrs(ctx, POOL_ATTRS) if op == "AveragePool" else \
            {"alpha": float(ctx.attr("alpha", 0.01))} if op == "LeakyRelu" else {}
        _quantize(w, ctx, w.add(op, [_dequantize(w, ctx, 0, 1, 2, "x")], "float", **attrs), 3, 4)
        return w.nodes


@register
class QLinearSoftmaxRule(_QuantizedRule):
    """com.microsoft QLinearSoftmax(X, X_scale, X_zp, Y_scale, Y_zp): Softmax of the dequantized input along
    `axis`, with the meaning of Softmax at the attribute `opset` (below 13: of the input flattened to 2-D at
    `axis`, the same when `axis` is the last)."""
    op_types = ("QLinearSoftmax",)
    domain = CONTRIB

    def expand(self, ctx):
        shape = ctx.shapes.get(ctx.node.input[0])         # a contrib op's input may have no inferred shape
        old = int(ctx.attr("opset", 13)) < 13
        axis = int(ctx.attr("axis", 1 if old else -1))
        rank = len(shape) if shape is not None else None
        if old and axis != -1 and axis != (rank or 0) - 1:
            raise ctx.fail(f"a Softmax over the flattened axes from {axis} of a {rank or 'N'}-D input (opset "
                           f"{ctx.attr('opset')}) is not supported")
        w = ExpansionWriter(ctx)
        _quantize(w, ctx, w.add("Softmax", [_dequantize(w, ctx, 0, 1, 2, "x")], "float", axis=axis), 3, 4)
        return w.nodes


@register
class QLinearConcatRule(_QuantizedRule):
    """com.microsoft QLinearConcat(Y_scale, Y_zp, X1, X1_scale, X1_zp, ...): Concat of the dequantized inputs."""
    op_types = ("QLinearConcat",)
    domain = CONTRIB

    def expand(self, ctx):
        w = ExpansionWriter(ctx)
        parts = [_dequantize(w, ctx, i, i + 1, i + 2, f"x{(i - 2) // 3}") for i in range(2, len(ctx.node.input), 3)]
        _quantize(w, ctx, w.add("Concat", parts, "float", axis=int(ctx.attr("axis"))), 0, 1)
        return w.nodes
