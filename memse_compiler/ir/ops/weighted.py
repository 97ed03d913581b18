"""Weighted ops (Gemm, MatMul with a constant operand, Conv): parsed into the matrix form of a CrossbarLayer.

Their moments are not computed here: after lowering, a weighted op is a cluster of DAC, tiles, ADCs and an
adder, analysed as one vectorised unit by the moment passes from the CrossbarLayer record.
"""
from __future__ import annotations

import numpy as np

from memse_compiler.ir.crossbar import CrossbarLayer
from memse_compiler.ir.geometry import ConvGeometry, MatrixGeometry
from memse_compiler.ir.ops.base import ExpansionWriter, OpRule, ParseContext, register


class WeightedRule(OpRule):
    weighted = True

    def forward(self, attrs, xs):
        return [attrs["layer"].float_forward(xs[0])]

    def _finish(self, ctx: ParseContext, act: int, weight: np.ndarray, bias, geometry) -> dict:
        _require_finite(ctx, [("weight", self._param_name(ctx, "weight"), weight),
                              ("bias", self._param_name(ctx, "bias"), bias)])
        layer = CrossbarLayer(name=ctx.node_name, op=ctx.node.op_type, input=ctx.node.input[act],
                              output=ctx.node.output[0], geometry=geometry,
                              weight=np.ascontiguousarray(weight, dtype=np.float64),
                              bias=None if bias is None else np.asarray(bias, np.float64))
        # ops reading one initializer may share one crossbar (passes/map_conductances.share_crossbars)
        layer.extra["weight_source"] = self._param_name(ctx, "weight")
        return {"layer": layer}

    @staticmethod
    def _param_name(ctx, what):
        consts = [n for n in ctx.node.input if n in ctx.consts]
        return consts[0] if what == "weight" or len(consts) < 2 else consts[-1]

    def operands(self, ctx):
        return [i for i, n in enumerate(ctx.node.input) if n and n not in ctx.consts]


def _require_finite(ctx: ParseContext, params: list[tuple[str, str, np.ndarray | None]]) -> None:
    """(what, initializer name, value) of each parameter: a NaN or inf is refused, naming the initializer."""
    for what, name, arr in params:
        if arr is not None and not np.all(np.isfinite(arr)):
            raise ctx.fail(f"{what} initializer '{name}' contains NaN or inf")


def _bias_vector(ctx: ParseContext, c: np.ndarray | None, outs: int, out_axis_last: bool) -> np.ndarray | None:
    """A constant added to the product is a bias only if it is constant along the vectors' axis."""
    if c is None:
        return None
    c = np.asarray(c, np.float64)
    shape = (1, outs) if out_axis_last else (outs, 1)
    try:
        b = np.broadcast_to(c, shape) if c.ndim <= 2 else None
    except ValueError:
        b = None
    if b is None or (c.ndim == 2 and c.shape[0 if out_axis_last else 1] != 1):
        raise ctx.fail(f"a bias of shape {c.shape} that varies along the batch axis is not supported")
    return (b[0] if out_axis_last else b[:, 0])[None, :].copy()


@register
class GemmRule(WeightedRule):
    op_types = ("Gemm",)

    def parse(self, ctx):
        alpha, beta = float(ctx.attr("alpha", 1.0)), float(ctx.attr("beta", 1.0))
        ta, tb = int(ctx.attr("transA", 0)), int(ctx.attr("transB", 0))
        a, b = ctx.const(0), ctx.const(1)
        c = ctx.const(2)
        if len(ctx.node.input) > 2 and ctx.node.input[2] and c is None:
            raise ctx.fail("input C must be a constant")
        if (a is None) == (b is None):
            raise ctx.fail("exactly one of A and B must be a constant weight")
        if b is not None:              # Y = A' B' with B' (K, O) the weight: vectors are rows of A'
            w = (b if tb else b.T) * alpha
            geom, act = MatrixGeometry(in_columns=bool(ta), out_columns=False), 0
        else:                          # Y = A' B' with A' (O, K) the weight and B' = the activation
            w = (a.T if ta else a) * alpha
            geom, act = MatrixGeometry(in_columns=not tb, out_columns=True), 1
        bias = None if c is None else _bias_vector(ctx, c * beta, w.shape[0], not geom.out_columns)
        return self._finish(ctx, act, w[None], bias, geom)


@register
class MatMulRule(WeightedRule):
    op_types = ("MatMul",)

    def resolve(self, ctx):
        """Two signals (attention's Q K^T, weights times values): the digital product (linear.SignalMatMulRule)."""
        if ctx.const(0) is None and ctx.const(1) is None:
            from memse_compiler.ir.ops.base import rule_for
            return rule_for("MatMulSignals")
        return self

    def parse(self, ctx):
        a, b = ctx.const(0), ctx.const(1)
        if (a is None) == (b is None):
            raise ctx.fail("exactly one operand must be a constant weight")
        if len(ctx.shape(0 if b is not None else 1)) < 2:
            raise ctx.fail("the activation is 1-D: its one axis is the batch, which the product would sum over "
                           "(export the model with a batch axis in front)")
        if b is not None:
            if b.ndim != 2:
                raise ctx.fail(f"the constant operand must be 2-D, got shape {b.shape}")
            return self._finish(ctx, 0, b.T[None], None, MatrixGeometry())
        if a.ndim != 2 or len(ctx.shape(1)) != 2:
            raise ctx.fail("a constant left operand needs a 2-D weight and a 2-D activation")
        return self._finish(ctx, 1, a[None], None, MatrixGeometry(in_columns=True, out_columns=True))


def _conv_weight(ctx, what: str) -> np.ndarray:
    """The constant 3-D/4-D kernel of a (transposed) convolution whose data input is a signal."""
    w = ctx.const(1)
    if w is None or ctx.is_const(0):
        raise ctx.fail("the weight must be a constant and the data input a signal")
    if w.ndim not in (3, 4):
        raise ctx.fail(f"only 1-D and 2-D {what} are supported (weight rank {w.ndim})")
    return w


@register
class ConvRule(WeightedRule):
    op_types = ("Conv",)

    def parse(self, ctx):
        w = _conv_weight(ctx, "convolutions")
        shape = ctx.shape(0)
        one_d = w.ndim == 3
        g = int(ctx.attr("group", 1))
        cout = w.shape[0]
        if cout % g or shape[1] % g or w.shape[1] != shape[1] // g:
            raise ctx.fail(f"weight shape {w.shape} does not fit {shape[1]} input channels in {g} groups")
        geom = ConvGeometry(ctx.sliding_windows(list(w.shape[2:])), groups=g, in_channels=shape[1], one_d=one_d)
        matrix = w.reshape(g, cout // g, -1)                # rows in the ONNX weight order (cin, kh, kw)
        b = ctx.const(2)
        bias = None if b is None else b.reshape(g, cout // g)
        return self._finish(ctx, 0, matrix, bias, geom)


@register
class ConvTransposeRule(OpRule):
    """ConvTranspose, mapped as crossbars do it: the input with s - 1 zeros inserted between elements (Reshape,
    Pad, Reshape), bordered by (k - 1) d - pad (a Pad, negative where it crops), then a stride-1 Conv with the
    kernel flipped and its in/out axes swapped, which is what the crossbars hold. The zeros cost a crossbar
    nothing in noise (they carry no current) and enter the analysis as exact zeros."""
    op_types = ("ConvTranspose",)

    def expand(self, ctx):
        w = _conv_weight(ctx, "transposed convolutions")
        b = ctx.const(2)
        _require_finite(ctx, [("weight", ctx.node.input[1], w),
                              ("bias", ctx.node.input[2] if b is not None else "", b)])
        if ctx.opset < 11:
            raise ctx.fail(f"opset {ctx.opset} is too old (ConvTranspose is mapped with Pad, opset >= 11)")
        auto = ctx.attr("auto_pad", b"NOTSET")
        auto = auto.decode() if isinstance(auto, bytes) else auto
        if auto not in ("NOTSET", "VALID", "SAME_UPPER", "SAME_LOWER"):
            raise ctx.fail(f"unknown auto_pad {auto!r}")
        if ctx.attr("output_shape") is not None:
            # onnxruntime and the ONNX reference do not agree on it (the reference refuses most forms)
            raise ctx.fail("output_shape is not supported (give pads and output_padding)")
        shape = ctx.shape(0)
        nd, g = w.ndim - 2, int(ctx.attr("group", 1))
        cin, kernel = shape[1], list(w.shape[2:])
        if cin != w.shape[0] or cin % g:
            raise ctx.fail(f"weight shape {w.shape} does not fit {cin} input channels in {g} groups")
        strides = [int(v) for v in ctx.attr("strides", [1] * nd)]
        dil = [int(v) for v in ctx.attr("dilations", [1] * nd)]
        extra = [int(v) for v in ctx.attr("output_padding", [0] * nd)]
        spatial = [int(d) for d in shape[2:]]
        if auto.startswith("SAME"):
            pads = _same_transposed_pads(ctx, auto, spatial, kernel, strides, dil, extra)
        else:
            pads = [0] * (2 * nd) if auto == "VALID" else [int(v) for v in ctx.attr("pads", [0] * (2 * nd))]
        x, writer = ctx.node.input[0], ExpansionWriter(ctx)
        const = writer.const
        if any(s > 1 for s in strides):
            # (N, C, H, W) -> (N, C, H, 1, W, 1) -> zeros after each element -> (N, C, H s, W s)
            split = [0, cin] + [v for d in spatial for v in (d, 1)]
            ends = [0, 0] + [v for s in strides for v in (0, s - 1)]
            for label, op, ins in (("blocks", "Reshape", [const("split", np.array(split, np.int64))]),
                                   ("spaced", "Pad", [const("zeros", np.array([0] * len(split) + ends, np.int64))]),
                                   ("upsampled", "Reshape", [const("merge", np.array(
                                       [0, cin] + [d * s for d, s in zip(spatial, strides)], np.int64))])):
                x = writer.add(op, [x] + ins, label)
        begin = [d * (k - 1) - p for d, k, p in zip(dil, kernel, pads[:nd])]
        end = [d * (k - 1) - p + e - (s - 1) for d, k, p, e, s in zip(dil, kernel, pads[nd:], extra, strides)]
        if any(begin) or any(end):
            x = writer.add("Pad", [x, const("border", np.array([0, 0] + begin + [0, 0] + end, np.int64))], "bordered")
        # (Cin, Cout/g, k...) -> per group (Cout/g, Cin/g, k...), flipped in space
        flip = (slice(None),) * 3 + (slice(None, None, -1),) * nd
        kernel_conv = w.reshape((g, cin // g) + w.shape[1:]).swapaxes(1, 2)[flip]
        ins = [x, const("weight", np.ascontiguousarray(kernel_conv.reshape((-1, cin // g) + w.shape[2:])))]
        if b is not None:
            ins.append(ctx.node.input[2])
        writer.add("Conv", ins, group=g, dilations=dil, kernel_shape=kernel)
        return writer.nodes


def _same_transposed_pads(ctx, auto: str, spatial, kernel, strides, dil, extra) -> list[int]:
    """The pads auto_pad=SAME_* stands for: output = input x stride, the total padding split with the odd
    one at the end (UPPER) or the beginning (LOWER). A negative total (kernel shorter than the stride) is
    refused: the ONNX reference grows the output to input x stride, onnxruntime clamps the padding to 0."""
    total = [s * (n - 1) + e + (k - 1) * d + 1 - n * s
             for n, k, s, d, e in zip(spatial, kernel, strides, dil, extra)]
    if min(total) < 0:
        raise ctx.fail(f"auto_pad {auto} with a kernel shorter than the stride (total padding {total}) is "
                       "computed differently by onnxruntime and the ONNX reference; give pads")
    small = [t // 2 for t in total]
    large = [t - t // 2 for t in total]
    return small + large if auto == "SAME_UPPER" else large + small
