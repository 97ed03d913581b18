"""LayerNormalization: a nonlinear map of a whole feature vector, propagated by its linearisation; RMSNormalization
as the elementwise ops it is made of;
InstanceNormalization (and so torch's GroupNorm, which exports as one between two Reshapes) as a LayerNormalization
over the spatial axes followed by the per-channel scale and bias; GroupNormalization (opset 21; onnx's checker
refuses opset 18's deprecated per-group form) as that LayerNormalization over each group between two Reshapes;
MeanVarianceNormalization as a LayerNormalization over its axes; LRN as its channel-window sum of squares and the
elementwise ops around it."""
from __future__ import annotations

import numpy as np

from memse_compiler.ir.ops.base import ExpansionWriter, Linearization, OpRule, register


@register
class LayerNormRule(OpRule):
    """y = (x - mean(x)) / sqrt(var(x) + eps) * scale + bias over the trailing axes from `axis` (constant scale
    and bias; not over the batch). Moments by the delta method with independent inputs, around the normaliser the
    noisy vector sees: s = sqrt(var(mu) + (1 - 1/n) mean(v) + eps), its expected power (without the noise term
    the trained transformer example was +14 % and +22 % from Monte-Carlo at sigma/G 5 %, with it -7 % and -4 %).
    The mean is the map at the input mean with that s, and with x_hat = (mu - mean(mu)) / s, the Jacobian is
    J_ij = scale_i / s (delta_ij - (1 + x_hat_i x_hat_j) / n), so that
    Var(y_i) = (scale_i / s)^2 [v_i (1 - 2 (1 + x_hat_i^2) / n) + (S0 + 2 x_hat_i S1 + x_hat_i^2 S2) / n^2]
    with S_k = sum_j x_hat_j^k v_j: O(n) per vector, no Jacobian matrix."""
    op_types = ("LayerNormalization",)

    def operands(self, ctx):
        return [0]

    def parse(self, ctx):
        rank = len(ctx.shape(0))
        axis = int(ctx.attr("axis", -1)) % rank
        if axis == 0:
            raise ctx.fail("normalising over the batch axis (0) is not supported")
        if len([o for o in ctx.node.output if o]) > 1:
            raise ctx.fail("only the normalised output Y is supported (not Mean / InvStdDev)")
        scale = ctx.const(1)
        bias = ctx.const(2) if len(ctx.node.input) > 2 and ctx.node.input[2] else np.zeros(1)
        if scale is None or bias is None:
            raise ctx.fail("scale and bias must be constants")
        return {"axis": axis, "epsilon": float(ctx.attr("epsilon", 1e-5)),
                "scale": np.asarray(scale, np.float64), "bias": np.asarray(bias, np.float64)}

    @staticmethod
    def _axes(attrs, x):
        return tuple(range(attrs["axis"], x.ndim))

    def _normalise(self, attrs, x, var=None):
        """(x_hat, s) at x. var: the inputs' noise variance, which the normaliser also sees: E[var_j(x + e)] =
        var_j(x) + (1 - 1/n) mean(v) for independent errors, so s is taken there."""
        axes = self._axes(attrs, x)
        c = x - x.mean(axis=axes, keepdims=True)
        power = (c * c).mean(axis=axes, keepdims=True) + attrs["epsilon"]
        if var is not None:
            n = int(np.prod([x.shape[a] for a in axes]))
            power = power + (1.0 - 1.0 / n) * var.mean(axis=axes, keepdims=True)
        s = np.sqrt(power)
        return c / s, s

    def forward(self, attrs, xs):
        x_hat, _ = self._normalise(attrs, xs[0])
        return [x_hat * attrs["scale"] + attrs["bias"]]

    def moments(self, attrs, means, variances):
        mu, v = means[0], variances[0]
        axes = self._axes(attrs, mu)
        n = int(np.prod(mu.shape[attrs["axis"]:]))
        x_hat, s = self._normalise(attrs, mu, v)
        s0, s1, s2 = (np.sum(x_hat ** k * v, axis=axes, keepdims=True) for k in range(3))
        inner = v * (1.0 - 2.0 * (1.0 + x_hat ** 2) / n) + (s0 + 2.0 * x_hat * s1 + x_hat ** 2 * s2) / n ** 2
        var = (attrs["scale"] / s) ** 2 * np.maximum(inner, 0.0)
        return ([x_hat * attrs["scale"] + attrs["bias"]], [var],
                Linearization(gains=[(x_hat, s)], residual=[np.zeros_like(var)]))

    def vjp(self, attrs, lin, gouts, in_shapes):
        g = gouts[0]
        if g is None:
            return [None]
        x_hat, s = lin.gains[0]
        axes = self._axes(attrs, g)
        gs = g * attrs["scale"]                 # J^T g = (gs - mean(gs) - x_hat mean(gs x_hat)) / s
        return [(gs - gs.mean(axis=axes, keepdims=True) - x_hat * (gs * x_hat).mean(axis=axes, keepdims=True)) / s]


@register
class RMSNormRule(OpRule):
    """RMSNormalization (opset 23; torch's nn.RMSNorm at opset 23): y = x / sqrt(mean(x^2) + eps) * scale over the
    trailing axes from `axis`, parsed as the ops torch writes for it at lower opsets (Pow, ReduceMean, Add, Sqrt,
    Reciprocal, Mul, Mul), whose moments the registry already propagates (the decomposed form is within 1 % of
    Monte-Carlo on a Gemm -> RMSNorm -> Gemm export)."""
    op_types = ("RMSNormalization",)

    def expand(self, ctx):
        rank = len(ctx.shape(0))
        axis = int(ctx.attr("axis", -1)) % rank
        if axis == 0:
            raise ctx.fail("normalising over the batch axis (0) is not supported")
        if ctx.const(1) is None:
            raise ctx.fail("the scale must be a constant")
        x, w = ctx.node.input[0], ExpansionWriter(ctx)
        mean_axes = ({"axes": list(range(axis, rank))} if ctx.opset < 18 else {})
        square = w.add("Pow", [x, w.const("two", 2.0)], "square")
        mean = w.add("ReduceMean", [square] + ([] if ctx.opset < 18 else
                                               [w.const("axes", np.arange(axis, rank, dtype=np.int64))]),
                     "mean", keepdims=1, **mean_axes)
        shifted = w.add("Add", [mean, w.const("epsilon", float(ctx.attr("epsilon", 1e-5)))], "shifted")
        inverse = w.add("Reciprocal", [w.add("Sqrt", [shifted], "rms")], "inverse")
        w.add("Mul", [w.add("Mul", [x, inverse], "normed"), ctx.node.input[1]])
        return w.nodes


@register
class InstanceNormRule(OpRule):
    """InstanceNormalization over (N, C, D1, ...): per sample and channel, over the spatial axes, which is a
    LayerNormalization from axis 2; the per-channel scale and bias follow as a Mul and an Add (left out when they
    are 1 and 0, as in torch's GroupNorm export, which applies its affine after the Reshape back)."""
    op_types = ("InstanceNormalization",)

    def expand(self, ctx):
        shape = ctx.shape(0)
        if len(shape) < 3:
            raise ctx.fail(f"the input must be (N, C, D1, ...), got rank {len(shape)}")
        scale, bias = ctx.const(1), ctx.const(2)
        if scale is None or bias is None:
            raise ctx.fail("scale and bias must be constants")
        x, w = ctx.node.input[0], ExpansionWriter(ctx)
        per_channel = (shape[1],) + (1,) * (len(shape) - 2)
        affine = not (np.all(scale == 1) and np.all(bias == 0))
        normalised = w.add("LayerNormalization", [x, w.const("ones", np.ones(1))], "normalised" if affine else None,
                           axis=2, epsilon=float(ctx.attr("epsilon", 1e-5)))
        if affine:
            scaled = w.add("Mul", [normalised, w.const("scale", scale.reshape(per_channel))], "scaled")
            w.add("Add", [scaled, w.const("bias", bias.reshape(per_channel))])
        return w.nodes


@register
class GroupNormRule(OpRule):
    """GroupNormalization over (N, C, D1, ...): per sample and group of C / G channels, over the group's channels and
    the spatial axes, which is a LayerNormalization from axis 2 of the input reshaped to (N, G, -1), then reshaped
    back and scaled per channel (torch's dynamo exporter writes nn.GroupNorm so from opset 21 on)."""
    op_types = ("GroupNormalization",)

    def expand(self, ctx):
        shape = ctx.shape(0)
        groups = int(ctx.attr("num_groups", 0))
        if len(shape) < 3 or shape[1] is None or None in shape[2:]:
            raise ctx.fail("the input must be (N, C, D1, ...) with known channels and sizes")
        channels = int(shape[1])
        if groups <= 0 or channels % groups:
            raise ctx.fail(f"num_groups {groups} does not divide the {channels} channels")
        scale, bias = ctx.const(1), ctx.const(2)
        if scale is None or bias is None:
            raise ctx.fail("scale and bias must be constants")
        if np.size(scale) != channels or np.size(bias) != channels:
            raise ctx.fail(f"scale and bias must have one value per channel ({channels})")
        w = ExpansionWriter(ctx)
        per_channel = (channels,) + (1,) * (len(shape) - 2)
        grouped = w.add("Reshape", [ctx.node.input[0], w.const("grouped_shape", np.array([0, groups, -1], np.int64))],
                        "grouped")
        normalised = w.add("LayerNormalization", [grouped, w.const("ones", np.ones(1))], "normalised", axis=2,
                           epsilon=float(ctx.attr("epsilon", 1e-5)))
        back = np.array([0] + [int(d) for d in shape[1:]], np.int64)
        ungrouped = w.add("Reshape", [normalised, w.const("shape", back)], "ungrouped")
        scaled = w.add("Mul", [ungrouped, w.const("scale", np.reshape(scale, per_channel))], "scaled")
        w.add("Add", [scaled, w.const("bias", np.reshape(bias, per_channel))])
        return w.nodes


@register
class MeanVarianceNormRule(OpRule):
    """MeanVarianceNormalization over non-batch axes: (x - E x) / (sqrt(E x^2 - (E x)^2) + 1e-9), as the
    LayerNormalization it is (epsilon 1e-18 under the root: the two denominators differ by 1e-9 absolute, well
    below float32's rounding of the variance for any std above 1e-2), the axes moved last by a Transpose when they
    are not the trailing ones."""
    op_types = ("MeanVarianceNormalization",)

    def expand(self, ctx):
        rank = len(ctx.shape(0))
        axes = sorted({int(a) % rank for a in ctx.attr("axes", [0, 2, 3])})
        if 0 in axes:
            raise ctx.fail(f"normalising over the batch axis (0) is not supported (axes {axes}; the default axes are "
                           f"[0, 2, 3])")
        kept = [a for a in range(1, rank) if a not in axes]
        perm = [0] + kept + axes
        moved = perm != list(range(rank))
        w = ExpansionWriter(ctx)
        x = w.add("Transpose", [ctx.node.input[0]], "moved", perm=perm) if moved else ctx.node.input[0]
        normalised = w.add("LayerNormalization", [x, w.const("ones", np.ones(1))], "normalised" if moved else None,
                           axis=1 + len(kept), epsilon=1e-18)
        if moved:
            w.add("Transpose", [normalised], perm=list(np.argsort(perm)))
        return w.nodes


@register
class LRNRule(OpRule):
    """Local response normalisation (AlexNet's; the ONNX model zoo's CaffeNet, GoogLeNet): y = x / (bias +
    alpha / size * sum of x^2 over the `size` channels around c)^beta, as the ops it is made of: x * x (one
    variable), the channel axis zero-padded by floor((size - 1) / 2) before and ceil((size - 1) / 2) after, `size`
    shifted Slices added up, then Mul, Add, a fractional Pow and the Div by it (their rules' moments)."""
    op_types = ("LRN",)

    def expand(self, ctx):
        rank = len(ctx.shape(0))
        size = int(ctx.attr("size", 0))
        if rank < 3 or size < 1:
            raise ctx.fail(f"needs (N, C, D1, ...) and size >= 1 (rank {rank}, size {size})")
        channels = ctx.shape(0)[1]
        x, w = ctx.node.input[0], ExpansionWriter(ctx)
        lo, hi = (size - 1) // 2, size - 1 - (size - 1) // 2
        pads = [0] * (2 * rank)
        pads[1], pads[rank + 1] = lo, hi
        padded = w.add("Pad", [w.add("Mul", [x, x], "square"), w.const("pads", np.array(pads, np.int64))], "padded")
        total, axis = None, w.const("channel_axis", np.array([1], np.int64))
        for i in range(size):
            window = [w.const(f"start{i}", np.array([i], np.int64)),
                      w.const(f"end{i}", np.array([i + channels], np.int64)), axis]
            shifted = w.add("Slice", [padded, *window], f"shift{i}")
            total = shifted if total is None else w.add("Add", [total, shifted], f"sum{i}")
        alpha, beta, bias = (float(ctx.attr(k, d)) for k, d in (("alpha", 1e-4), ("beta", 0.75), ("bias", 1.0)))
        scaled = w.add("Mul", [total, w.const("alpha", alpha / size)], "scaled")
        shifted = w.add("Add", [scaled, w.const("bias", bias)], "shifted")
        w.add("Div", [x, w.add("Pow", [shifted, w.const("beta", beta)], "denominator")])
        return w.nodes
