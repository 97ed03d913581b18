"""QuantizeLinear and DequantizeLinear on signals: the fake quantization of a quantization-aware-trained model
(torch's `fake_quantize_per_tensor_affine`, onnxruntime's QDQ format) runs digitally next to the crossbars.
A QuantizeLinear of a signal is a uniform quantizer, whose Gaussian moments are the converters' (stats); the
integer signal it gives is carried as floats, and DequantizeLinear maps it back exactly. Weights stored as
integers behind a DequantizeLinear are constants, folded by the frontend before any rule sees them."""
from __future__ import annotations

import numpy as np
import sympy

from memse_compiler.ir import stats
from memse_compiler.ir.ops.base import Linearization, OpRule, register

INTEGER_RANGES = {np.dtype(np.uint8): (0, 255), np.dtype(np.int8): (-128, 127),
                  np.dtype(np.uint16): (0, 65535), np.dtype(np.int16): (-32768, 32767)}


def _scale_and_zero_point(ctx) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """(scale, zero point) shaped to broadcast against the input (per tensor, or per axis along `axis`), and
    the integer range of the zero point's type (uint8 when it is absent, as ONNX defaults)."""
    scale = ctx.const(1)
    zero = ctx.const(2) if len(ctx.node.input) > 2 and ctx.node.input[2] else np.zeros((), np.uint8)
    if scale is None or zero is None:
        raise ctx.fail("the scale and zero point must be constants")
    if zero.dtype not in INTEGER_RANGES:
        raise ctx.fail(f"a {zero.dtype} zero point is not supported (8- or 16-bit integers)")
    if ctx.attr("block_size", 0):
        raise ctx.fail("blocked quantization is not supported")
    if np.any(scale <= 0):
        raise ctx.fail("the scale must be positive")
    rank = len(ctx.shape(0))
    if scale.size > 1:                    # per axis: along `axis`, not the batch's
        axis = int(ctx.attr("axis", 1)) % rank
        if axis == 0:
            raise ctx.fail("quantizing per sample (axis 0, the batch) is not supported")
        shape = (scale.size,) + (1,) * (rank - 1 - axis)
        scale, zero = scale.reshape(shape), zero.reshape(shape)
    return np.asarray(scale, np.float64), zero.astype(np.float64), INTEGER_RANGES[zero.dtype]


@register
class QuantizeLinearRule(OpRule):
    """q = clip(round(x / scale) + zero_point, qmin, qmax), round half to even (as ONNX and numpy)."""
    op_types = ("QuantizeLinear",)
    integer_signals = True

    def operands(self, ctx):
        return [0]

    def parse(self, ctx):
        scale, zero, (qmin, qmax) = _scale_and_zero_point(ctx)
        return {"scale": scale, "zero_point": zero, "qmin": qmin, "qmax": qmax}

    def forward(self, attrs, xs):
        q = np.rint(xs[0] / attrs["scale"]) + attrs["zero_point"]
        return [np.clip(q, attrs["qmin"], attrs["qmax"])]

    def moments(self, attrs, means, variances):
        s, z = attrs["scale"], attrs["zero_point"]
        # in x's units the quantizer is s * clip(round(x / s), qmin - z, qmax - z); zero points are integers
        lo, hi = attrs["qmin"] - z, attrs["qmax"] - z
        m = _quantizer(means[0], variances[0], s, lo, hi)
        gain = m.gain / s
        return ([z + m.mean / s], [m.var / s ** 2],
                Linearization(gains=[gain], residual=[np.maximum(m.var / s ** 2 - gain ** 2 * variances[0], 0.0)]))

    def vjp(self, attrs, lin, gouts, in_shapes):
        return [None if gouts[0] is None else gouts[0] * lin.gains[0]]

    def expressions(self, attrs, mus, vs, node):
        s = float(np.max(attrs["scale"]))
        return [mus[0] / s + sympy.Symbol(f"zero_point[{node}]")], [vs[0] / s ** 2 + sympy.Rational(1, 12)]


def _quantizer(mu, var, step, lo, hi) -> stats.Moments:
    """stats.quantizer_moments with per-element range ends (a per-axis zero point), one call per distinct pair."""
    lo, hi = np.broadcast_arrays(np.asarray(lo, float), np.asarray(hi, float))
    pairs = set(zip(lo.ravel().tolist(), hi.ravel().tolist()))
    if len(pairs) == 1:
        (a, b), = pairs
        return stats.quantizer_moments(mu, var, step, int(a), int(b))
    mu, var, step, lo, hi = np.broadcast_arrays(mu, var, step, lo, hi)
    mean, v, gain = (np.empty(mu.shape) for _ in range(3))
    for a, b in pairs:
        sel = (lo == a) & (hi == b)
        m = stats.quantizer_moments(mu[sel], var[sel], step[sel], int(a), int(b))
        mean[sel], v[sel], gain[sel] = m.mean, m.var, m.gain
    return stats.Moments(mean, v, gain)


@register
class DequantizeLinearRule(OpRule):
    """x = (q - zero_point) * scale: exact, affine."""
    op_types = ("DequantizeLinear",)
    integer_signals = True

    def operands(self, ctx):
        return [0]

    def parse(self, ctx):
        scale, zero, _ = _scale_and_zero_point(ctx)
        return {"scale": scale, "zero_point": zero}

    def forward(self, attrs, xs):
        return [(xs[0] - attrs["zero_point"]) * attrs["scale"]]

    def moments(self, attrs, means, variances):
        s = attrs["scale"]
        return ([(means[0] - attrs["zero_point"]) * s], [variances[0] * s ** 2],
                Linearization(gains=[np.broadcast_to(s, np.shape(means[0]))]))

    def vjp(self, attrs, lin, gouts, in_shapes):
        return [None if gouts[0] is None else gouts[0] * lin.gains[0]]

    def expressions(self, attrs, mus, vs, node):
        s = float(np.max(attrs["scale"]))
        return [(mus[0] - sympy.Symbol(f"zero_point[{node}]")) * s], [vs[0] * s ** 2]


def _dynamic_range(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DynamicQuantizeLinear's scale (float32, as the operator's definition computes it) and uint8 zero point:
    the range [min(x, 0), max(x, 0)] of the whole tensor in 255 steps."""
    low, high = min(float(np.min(x)), 0.0), max(float(np.max(x)), 0.0)
    scale = float(np.float32((high - low) / 255.0)) or 1.0          # an all-zero tensor: any scale gives 0
    return np.asarray(scale), np.asarray(float(np.clip(np.rint(-low / scale), 0, 255)))


@register
class DynamicQuantizeLinearRule(OpRule):
    """y, y_scale, y_zero_point = DynamicQuantizeLinear(x): x's uint8 codes on the range [min(x, 0), max(x, 0)] of
    the whole tensor, in 255 steps (onnxruntime's dynamic quantization writes it before MatMulInteger and
    ConvInteger). The analysis takes the scale and zero point of the mean signal, as constants of the chip, and y
    as the uniform quantizer they make; the executor runs the operator, so every chip has the range of its own
    noisy signal (its extremes move with the noise, a few per cent on the digits models at 4 uS programming
    noise; the analysis leaves that second-order change of the step out)."""
    op_types = ("DynamicQuantizeLinear",)
    integer_signals = True

    def forward(self, attrs, xs):
        scale, zero = _dynamic_range(xs[0])
        return [np.clip(np.rint(xs[0] / scale) + zero, 0, 255), scale, zero]

    def moments(self, attrs, means, variances):
        scale, zero = _dynamic_range(means[0])
        m = stats.quantizer_moments(means[0], variances[0], scale, int(-zero), int(255 - zero))
        gain, var = m.gain / scale, m.var / scale ** 2
        return ([zero + m.mean / scale, scale, zero], [var, np.zeros(()), np.zeros(())],
                Linearization(gains=[gain], residual=[np.maximum(var - gain ** 2 * variances[0], 0.0), None, None]))

    def vjp(self, attrs, lin, gouts, in_shapes):
        return [None if gouts[0] is None else gouts[0] * lin.gains[0]]

    def expressions(self, attrs, mus, vs, node):
        scale, zero = sympy.Symbol(f"scale[{node}]"), sympy.Symbol(f"zero_point[{node}]")
        return ([mus[0] / scale + zero, scale, zero],
                [vs[0] / scale ** 2 + sympy.Rational(1, 12), sympy.Integer(0), sympy.Integer(0)])
