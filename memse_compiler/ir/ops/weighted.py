"""Weighted ops (Gemm, MatMul with a constant operand, Conv): parsed into the matrix form of a CrossbarLayer.

Their moments are not computed here: after lowering, a weighted op is a cluster of DAC, tiles, ADCs and an
adder, analysed as one vectorised unit by the moment passes from the CrossbarLayer record.
"""
from __future__ import annotations

import numpy as np

from memse_compiler.ir.crossbar import CrossbarLayer
from memse_compiler.ir.geometry import ConvGeometry, MatrixGeometry
from memse_compiler.ir.ops.base import OpRule, ParseContext, register


class WeightedRule(OpRule):
    weighted = True

    def forward(self, attrs, xs):
        return [attrs["layer"].float_forward(xs[0])]

    def _finish(self, ctx: ParseContext, act: int, weight: np.ndarray, bias, geometry) -> dict:
        for what, arr in (("weight", weight), ("bias", bias)):
            if arr is not None and not np.all(np.isfinite(arr)):
                raise ctx.fail(f"{what} initializer '{self._param_name(ctx, what)}' contains NaN or inf")
        layer = CrossbarLayer(name=ctx.node_name, op=ctx.node.op_type, input=ctx.node.input[act],
                              output=ctx.node.output[0], geometry=geometry,
                              weight=np.ascontiguousarray(weight, dtype=np.float64),
                              bias=None if bias is None else np.asarray(bias, np.float64))
        return {"layer": layer}

    @staticmethod
    def _param_name(ctx, what):
        consts = [n for n in ctx.node.input if n in ctx.consts]
        return consts[0] if what == "weight" or len(consts) < 2 else consts[-1]

    def operands(self, ctx):
        return [i for i, n in enumerate(ctx.node.input) if n and n not in ctx.consts]


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
        if b is not None:
            if b.ndim != 2:
                raise ctx.fail(f"the constant operand must be 2-D, got shape {b.shape}")
            return self._finish(ctx, 0, b.T[None], None, MatrixGeometry())
        if a.ndim != 2 or len(ctx.shape(1)) != 2:
            raise ctx.fail("a constant left operand needs a 2-D weight and a 2-D activation")
        return self._finish(ctx, 1, a[None], None, MatrixGeometry(in_columns=True, out_columns=True))


@register
class ConvRule(WeightedRule):
    op_types = ("Conv",)

    def parse(self, ctx):
        w = ctx.const(1)
        if w is None or ctx.is_const(0):
            raise ctx.fail("the weight must be a constant and the data input a signal")
        if w.ndim not in (3, 4):
            raise ctx.fail(f"only 1-D and 2-D convolutions are supported (weight rank {w.ndim})")
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
