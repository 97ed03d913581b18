"""Pooling ops: average pools are linear (exact), MaxPool uses Clark's moments of a max of Gaussians, LpPool is the
window sum of |x| or x * x (an AveragePool) and its square root."""
from __future__ import annotations

import numpy as np
from onnx import helper

from memse_compiler.ir import stats
from memse_compiler.ir.geometry import Windows
from memse_compiler.ir.ops.base import ExpansionWriter, Linearization, OpRule, ParseContext, register

PAD_MEAN = -1e100     # stands for -inf in max-pool padding; finite so that Clark's formulas stay exact


def pool_windows(ctx: ParseContext) -> Windows:
    """The pool's windows; with ceil_mode=1 the last ones run past the end (MaxPool: into padding, which never wins a
    max; AveragePool: its divisor counts what lies inside the input, or inside the declared padding)."""
    shape = ctx.shape(0)
    if len(shape) not in (3, 4):
        raise ctx.fail(f"only 1-D and 2-D pooling is supported (input rank {len(shape)}; a 3-D pool only over its "
                       f"first axis)")
    ceil = bool(ctx.attr("ceil_mode", 0))
    windows = ctx.sliding_windows(ctx.attr("kernel_shape"), ceil_mode=ceil)
    declared = ctx.shapes.get(ctx.node.output[0])
    # an export may declare the spatial sizes symbolically (None here): nothing to compare then
    if ceil and declared and all(d is not None for d in declared[2:]):
        spatial, computed = tuple(declared[2:]), tuple(windows.out_hw[-(len(declared) - 2):])
        if spatial != computed:
            # ceil_mode with a last window starting in the end padding: onnxruntime (and PyTorch) drop it,
            # ONNX's shape inference keeps it; the graph's shapes and the executor would disagree
            raise ctx.fail(f"ceil_mode=1 puts a window entirely in the end padding: onnxruntime's output "
                           f"size {computed} is not the ONNX shape {spatial}")
    return windows


def _inside_counts(windows: Windows, declared: Windows) -> np.ndarray:
    """(Ho, Wo) number of each window's taps inside the input padded by the `declared` pads: ceil_mode's extra
    end padding is not counted (count_include_pad=1, as onnxruntime and PyTorch divide)."""
    counts = []
    for axis in range(2):
        k, s, d = windows.kernel[axis], windows.strides[axis], windows.dilations[axis]
        begin, size = windows.pads[axis], windows.in_hw[axis]
        taps = np.arange(windows.out_hw[axis])[:, None] * s - begin + np.arange(k)[None, :] * d
        counts.append(((taps >= -declared.pads[axis]) & (taps < size + declared.pads[axis + 2])).sum(axis=1))
    return np.outer(counts[0], counts[1]).astype(float)


def _4d(x, one_d):
    return x[:, :, None, :] if one_d else x


def _back(x, one_d):
    return x[:, :, 0, :] if one_d else x


def pool_over_first_axis(ctx: ParseContext) -> list | None:
    """A 3-D pool whose kernel, stride, dilation and padding are 1, 1, 1, 0 on the last two axes (torch's
    LocalResponseNorm pools x^2 over the channels as (N, 1, C, H, W) with kernel (size, 1, 1)) as the 2-D pool it
    is: the last two axes merged (Reshape), the pool with kernel (k, 1), and the Reshape back. None: not that."""
    shape = ctx.shape(0)
    kernel = [int(v) for v in ctx.attr("kernel_shape", [])]
    if len(shape) != 5 or len(kernel) != 3 or any(d is None for d in shape[3:]):
        return None
    strides = [int(v) for v in ctx.attr("strides", [1, 1, 1])]
    dilations = [int(v) for v in ctx.attr("dilations", [1, 1, 1])]
    pads = [int(v) for v in ctx.attr("pads", [0] * 6)]
    auto = ctx.attr("auto_pad", b"NOTSET")
    if (auto.decode() if isinstance(auto, bytes) else auto) != "NOTSET" or kernel[1:] != [1, 1] or \
            strides[1:] != [1, 1] or dilations[1:] != [1, 1] or pads[1:3] + pads[4:] != [0, 0, 0, 0]:
        return None
    (h, w), writer = shape[3:], ExpansionWriter(ctx)
    attrs = {a.name: helper.get_attribute_value(a) for a in ctx.node.attribute
             if a.name not in ("kernel_shape", "strides", "dilations", "pads", "auto_pad")}
    if ctx.attr("dilations") is not None:       # AveragePool has them from opset 19 only
        attrs["dilations"] = [dilations[0], 1]
    merged = writer.add("Reshape", [ctx.node.input[0],
                                    writer.const("merged_shape", np.array([0, 0, shape[2] or -1, h * w], np.int64))],
                        "merged")
    pooled = writer.add(ctx.node.op_type, [merged], "pooled", kernel_shape=[kernel[0], 1], strides=[strides[0], 1],
                        pads=[pads[0], 0, pads[3], 0], **attrs)
    writer.add("Reshape", [pooled, writer.const("unmerged_shape", np.array([0, 0, -1, h, w], np.int64))])
    return writer.nodes


@register
class AveragePoolRule(OpRule):
    op_types = ("AveragePool",)

    def averages(self, attrs):
        return True

    def expand(self, ctx):
        return pool_over_first_axis(ctx)

    def operands(self, ctx):
        return [0]

    def parse(self, ctx):
        w = pool_windows(ctx)
        ones = np.ones((1, 1) + w.in_hw)
        if ctx.attr("count_include_pad", 0):
            count = _inside_counts(w, ctx.sliding_windows(ctx.attr("kernel_shape"))) if ctx.attr("ceil_mode", 0) \
                else np.full(w.out_hw, float(np.prod(w.kernel)))
        else:
            count = w.extract(ones).sum(axis=(-1, -2))[0, 0]
        return {"windows": w, "count": count, "one_d": len(ctx.shape(0)) == 3}

    def _pool(self, attrs, x, power=1):
        s = attrs["windows"].extract(_4d(x, attrs["one_d"])).sum(axis=(-1, -2))
        return _back(s / attrs["count"] ** power, attrs["one_d"])

    def forward(self, attrs, xs):
        return [self._pool(attrs, xs[0])]

    def moments(self, attrs, means, variances):
        return [self._pool(attrs, means[0])], [self._pool(attrs, variances[0], 2)], Linearization()

    def vjp(self, attrs, lin, gouts, in_shapes):
        g = _4d(gouts[0], attrs["one_d"]) / attrs["count"]
        cols = np.broadcast_to(g[..., None, None], g.shape + attrs["windows"].kernel)
        return [_back(attrs["windows"].scatter(cols), attrs["one_d"])]


@register
class GlobalAveragePoolRule(OpRule):
    op_types = ("GlobalAveragePool",)

    def averages(self, attrs):
        return True

    def forward(self, attrs, xs):
        x = xs[0]
        return [x.mean(axis=tuple(range(2, x.ndim)), keepdims=True)]

    def moments(self, attrs, means, variances):
        v = variances[0]
        n = int(np.prod(v.shape[2:]))
        return self.forward(attrs, means), [v.mean(axis=tuple(range(2, v.ndim)), keepdims=True) / n], Linearization()

    def vjp(self, attrs, lin, gouts, in_shapes):
        n = int(np.prod(in_shapes[0][2:]))
        return [np.broadcast_to(gouts[0] / n, in_shapes[0]).copy()]


@register
class MaxPoolRule(OpRule):
    op_types = ("MaxPool",)

    def expand(self, ctx):
        return pool_over_first_axis(ctx)

    def operands(self, ctx):
        return [0]

    def parse(self, ctx):
        if len([o for o in ctx.node.output if o]) > 1:
            raise ctx.fail("the Indices output of MaxPool is not supported")
        return {"windows": pool_windows(ctx), "one_d": len(ctx.shape(0)) == 3}

    def forward(self, attrs, xs):
        cols = attrs["windows"].extract(_4d(xs[0], attrs["one_d"]), fill=-np.inf)
        return [_back(cols.max(axis=(-1, -2)), attrs["one_d"])]

    def moments(self, attrs, means, variances):
        """Clark's pairwise reduction over the window; the gains are each element's probability of being
        the max, which is also dE[max]/dmu of that element. `attrs["rho"]` (scalar or one per sample) is
        the correlation of the errors within a window (estimated by passes/moments.py when refining);
        the running max's correlation with the next tap follows from its linear weights."""
        w, one_d = attrs["windows"], attrs["one_d"]
        m = w.extract(_4d(means[0], one_d), fill=PAD_MEAN)
        v = w.extract(_4d(variances[0], one_d), fill=0.0)
        k = m.shape[-2] * m.shape[-1]
        m = m.reshape(m.shape[:-2] + (k,))
        v = v.reshape(v.shape[:-2] + (k,))
        s = np.sqrt(v)
        rho = np.asarray(attrs.get("rho", 0.0), dtype=float)
        rho = rho.reshape(rho.shape + (1,) * (m.ndim - 1 - rho.ndim))
        mean, var = m[..., 0], v[..., 0]
        weights = np.zeros_like(m)
        weights[..., 0] = 1.0
        for i in range(1, k):                  # loop over window taps; each step is vectorised
            if rho.any():
                cov = rho * s[..., i] * (weights[..., :i] * s[..., :i]).sum(axis=-1)
                den = np.sqrt(var * v[..., i])
                r = np.clip(np.where(den > 0, cov / np.where(den > 0, den, 1.0), 0.0), -1.0, 1.0)
            else:
                r = 0.0
            mean, var, p_prev = stats.max_moments(mean, var, m[..., i], v[..., i], r)
            weights[..., :i] *= p_prev[..., None]
            weights[..., i] = 1.0 - p_prev
        ws = weights * s
        lin_var = (ws ** 2).sum(axis=-1) + rho * (ws.sum(axis=-1) ** 2 - (ws ** 2).sum(axis=-1))
        resid = np.maximum(var - lin_var, 0.0)
        return ([_back(mean, one_d)], [_back(var, one_d)],
                Linearization(gains=[weights.reshape(weights.shape[:-1] + w.kernel)],
                              residual=[_back(resid, one_d)]))

    def vjp(self, attrs, lin, gouts, in_shapes):
        g = _4d(gouts[0], attrs["one_d"])
        cols = g[..., None, None] * lin.gains[0]
        return [_back(attrs["windows"].scatter(cols), attrs["one_d"])]


@register
class LpPoolRule(OpRule):
    """LpPool (p 1 or 2): |x| or x * x summed over each window (an AveragePool counting the zero padding, times the
    window size), then its square root for p = 2."""
    op_types = ("LpPool",)

    def expand(self, ctx):
        p = int(ctx.attr("p", 2))
        if p not in (1, 2):
            raise ctx.fail(f"p = {p} is not supported (1 or 2)")
        if int(ctx.attr("ceil_mode", 0)):
            raise ctx.fail("ceil_mode=1 is not supported")
        kernel = [int(k) for k in ctx.attr("kernel_shape")]
        x, w = ctx.node.input[0], ExpansionWriter(ctx)
        window = {k: ctx.attr(k) for k in ("strides", "pads", "dilations", "auto_pad") if ctx.attr(k) is not None}
        power = w.add("Mul", [x, x], "power") if p == 2 else w.add("Abs", [x], "power")
        mean = w.add("AveragePool", [power], "mean", kernel_shape=kernel, count_include_pad=1, **window)
        total = w.add("Mul", [mean, w.const("window", float(np.prod(kernel)))], "sum" if p == 2 else None)
        if p == 2:
            w.add("Sqrt", [total])
        return w.nodes
