"""Reductions over non-batch axes: ReduceMean / ReduceSum and CumSum are linear (exact); the composite ones (L1, L2,
sum of squares, log-sum-exp, log-sum) and the Lp norms are written as the ops they are made of; ReduceProd has the
exact moments of a product of independent inputs; ReduceMax / ReduceMin and GlobalMaxPool are a MaxPool."""
from __future__ import annotations

import numpy as np
import sympy

from memse_compiler.ir.ops.base import ExpansionWriter, Linearization, OpRule, ParseContext, register
from memse_compiler.ir.ops.indexing import _sample_shape


def reduce_axes(ctx):
    """A reduction's axes: the constant input (ReduceSum from opset 13, the others from 18) or the attribute;
    None when neither is given."""
    if len(ctx.node.input) > 1 and ctx.node.input[1]:
        axes = ctx.const(1)
        if axes is None:
            raise ctx.fail("the axes must be a constant")
        return axes
    return ctx.attr("axes")


def reduced_axes(ctx) -> tuple[int, ...]:
    """The sorted non-negative axes a reduction sums over (all when none are given, unless noop_with_empty_axes);
    the batch axis refused."""
    rank = len(ctx.shape(0))
    axes = reduce_axes(ctx)
    if axes is None or np.size(axes) == 0:
        axes = [] if ctx.attr("noop_with_empty_axes", 0) else range(rank)
    axes = tuple(sorted({int(a) % rank for a in np.ravel(list(axes))}))
    if 0 in axes:
        raise ctx.fail("reducing over the batch axis (0) is not supported")
    return axes


@register
class ReduceMeanRule(OpRule):
    """ReduceMean / ReduceSum over axes other than the batch: linear, exact (the moment pass refines the variance
    of averaging ops for the correlation of the summed errors)."""
    op_types = ("ReduceMean", "ReduceSum")

    def averages(self, attrs):
        return True

    def operands(self, ctx):
        return [0]

    def parse(self, ctx):
        return {"axes": reduced_axes(ctx), "keepdims": bool(ctx.attr("keepdims", 1)),
                "mean": ctx.node.op_type == "ReduceMean"}

    def _count(self, attrs, shape) -> int:
        return int(np.prod([shape[a] for a in attrs["axes"]]))

    def forward(self, attrs, xs):
        x = xs[0]
        if not attrs["axes"]:
            return [x]
        s = x.sum(axis=attrs["axes"], keepdims=attrs["keepdims"])
        return [s / self._count(attrs, x.shape) if attrs["mean"] else s]

    def moments(self, attrs, means, variances):
        v = variances[0]
        if not attrs["axes"]:
            return [means[0]], [v], Linearization()
        n = self._count(attrs, v.shape) if attrs["mean"] else 1
        return (self.forward(attrs, means), [v.sum(axis=attrs["axes"], keepdims=attrs["keepdims"]) / n ** 2],
                Linearization())

    def vjp(self, attrs, lin, gouts, in_shapes):
        g = gouts[0]
        if g is None or not attrs["axes"]:
            return [g]
        if not attrs["keepdims"]:
            g = np.expand_dims(g, attrs["axes"])
        n = self._count(attrs, in_shapes[0]) if attrs["mean"] else 1
        return [np.broadcast_to(g / n, in_shapes[0]).copy()]


@register
class CumSumRule(OpRule):
    """CumSum along an axis other than the batch (`exclusive`, `reverse`): linear; each output is a sum of inputs,
    so its variance is the running sum of theirs, refined like any sum (the moment pass measures averaging ops'
    output variance for the correlation of the summed errors)."""
    op_types = ("CumSum",)

    def averages(self, attrs):
        return True

    def operands(self, ctx):
        return [0]

    def parse(self, ctx):
        axis = ctx.const(1)
        if axis is None:
            raise ctx.fail("the axis must be a constant")
        rank = len(ctx.shape(0))
        axis = int(np.ravel(axis)[0]) % rank
        if axis == 0:
            raise ctx.fail("a running sum over the batch axis (0) is not supported")
        return {"axis": axis, "exclusive": bool(ctx.attr("exclusive", 0)), "reverse": bool(ctx.attr("reverse", 0))}

    @staticmethod
    def running(attrs, x, reverse: bool):
        """The (exclusive) running sum of x along the axis, from its end when `reverse`."""
        axis = attrs["axis"]
        if reverse:
            x = np.flip(x, axis)
        s = np.cumsum(x, axis=axis)
        if attrs["exclusive"]:
            s = np.concatenate([np.zeros_like(np.take(s, [0], axis=axis)), np.delete(s, -1, axis=axis)], axis=axis)
        return np.flip(s, axis) if reverse else s

    def forward(self, attrs, xs):
        return [self.running(attrs, xs[0], attrs["reverse"])]

    def moments(self, attrs, means, variances):
        return [self.forward(attrs, means)[0]], [self.running(attrs, variances[0], attrs["reverse"])], Linearization()

    def vjp(self, attrs, lin, gouts, in_shapes):
        # the transpose of a running sum is the running sum the other way
        return [None if gouts[0] is None else self.running(attrs, gouts[0], not attrs["reverse"])]

    def expressions(self, attrs, mus, vs, node):
        return [sympy.Function("CumSum")(mus[0])], [sympy.Function("CumSum")(vs[0])]


@register
class ReduceCompositeRule(OpRule):
    """ReduceSumSquare, ReduceL2, ReduceL1, ReduceLogSumExp, ReduceLogSum: written as the exact compositions they
    are (x * x, |x| or exp x, then ReduceSum, then Sqrt or Log), so each step gets its own rule's moments (the
    square of one variable is exact, not two independent factors)."""
    op_types = ("ReduceSumSquare", "ReduceL2", "ReduceL1", "ReduceLogSumExp", "ReduceLogSum")
    STEPS = {"ReduceSumSquare": ("Mul", None), "ReduceL2": ("Mul", "Sqrt"), "ReduceL1": ("Abs", None),
             "ReduceLogSumExp": ("Exp", "Log"), "ReduceLogSum": (None, "Log")}

    def expand(self, ctx):
        before, after = self.STEPS[ctx.node.op_type]
        x, w = ctx.node.input[0], ExpansionWriter(ctx)
        axes = reduce_axes(ctx)
        keep = {"keepdims": int(ctx.attr("keepdims", 1)),
                "noop_with_empty_axes": int(ctx.attr("noop_with_empty_axes", 0))}
        sum_inputs = [x if before is None else w.add(before, [x, x] if before == "Mul" else [x], before.lower())]
        if axes is not None and np.size(axes):
            if ctx.opset >= 13:            # ReduceSum takes its axes as an input from opset 13
                sum_inputs.append(w.const("axes", np.asarray(np.ravel(axes), np.int64)))
            else:
                keep["axes"] = [int(a) for a in np.ravel(axes)]
        if ctx.opset < 13:
            keep.pop("noop_with_empty_axes")
        total = w.add("ReduceSum", sum_inputs, None if after is None else "sum", **keep)
        if after is not None:
            w.add(after, [total])
        return w.nodes


def _norm(ctx: ParseContext, w: ExpansionWriter, p: int, axes: list[int], label: str | None) -> str:
    """ReduceL1 / ReduceL2 of the node's input over `axes` (kept), written as `label` (None: the node's output)."""
    if p not in (1, 2):
        raise ctx.fail(f"p = {p} is not supported (1 or 2)")
    inputs, attrs = [ctx.node.input[0]], {"keepdims": 1}
    if ctx.opset >= 18:                    # the Reduce ops take their axes as an input from opset 18
        inputs.append(w.const(f"{label or 'norm'}_axes", np.asarray(axes, np.int64)))
    else:
        attrs["axes"] = axes
    return w.add(f"ReduceL{p}", inputs, label, **attrs)


@register
class LpNormRule(OpRule):
    """LpNormalization (p 1 or 2) along a non-batch axis: x / ||x||_p, as the ReduceL1 / ReduceL2 and the Div by a
    signal it is (the moments torch's F.normalize gets, written so)."""
    op_types = ("LpNormalization",)

    def expand(self, ctx):
        rank = len(ctx.shape(0))
        axis = int(ctx.attr("axis", -1)) % rank
        if axis == 0:
            raise ctx.fail("normalising over the batch axis (0) is not supported")
        w = ExpansionWriter(ctx)
        w.add("Div", [ctx.node.input[0], _norm(ctx, w, int(ctx.attr("p", 2)), [axis], "norm")])
        return w.nodes


@register
class GlobalLpPoolRule(OpRule):
    """GlobalLpPool (p 1 or 2): the ReduceL1 / ReduceL2 over the spatial axes, kept."""
    op_types = ("GlobalLpPool",)

    def expand(self, ctx):
        rank = len(ctx.shape(0))
        w = ExpansionWriter(ctx)
        _norm(ctx, w, int(ctx.attr("p", 2)), list(range(2, rank)), None)
        return w.nodes


@register
class ReduceProdRule(OpRule):
    """ReduceProd over non-batch axes: for independent inputs E[prod x] = prod mu and E[(prod x)^2] = prod (mu^2 + v),
    exact; the variance as mu_y^2 (prod (1 + v / mu^2) - 1) where no mean is 0 (no cancellation when the noise is
    small). The gain of x_i is the product of the others' means."""
    op_types = ("ReduceProd",)

    def operands(self, ctx):
        return [0]

    def parse(self, ctx):
        return {"axes": reduced_axes(ctx), "keepdims": bool(ctx.attr("keepdims", 1))}

    def forward(self, attrs, xs):
        return [np.prod(xs[0], axis=attrs["axes"], keepdims=attrs["keepdims"])]

    def moments(self, attrs, means, variances):
        mu, v = means[0], variances[0]
        axes, keep = attrs["axes"], attrs["keepdims"]
        mean = np.prod(mu, axis=axes, keepdims=keep)
        nonzero = np.all(mu != 0, axis=axes, keepdims=keep)
        with np.errstate(divide="ignore", invalid="ignore"):
            growth = np.expm1(np.sum(np.log1p(v / np.where(mu != 0, mu * mu, 1.0)), axis=axes, keepdims=keep))
        direct = np.prod(mu * mu + v, axis=axes, keepdims=keep) - mean * mean
        var = np.maximum(np.where(nonzero, mean * mean * growth, direct), 0.0)
        return [mean], [var], Linearization(gains=[self._others(attrs, mu)])

    @staticmethod
    def _others(attrs, mu: np.ndarray) -> np.ndarray:
        """Per element, the product of the other reduced elements' means (exclusive products, no division)."""
        axes = attrs["axes"]
        kept = [a for a in range(mu.ndim) if a not in axes]
        moved = np.transpose(mu, kept + list(axes))
        flat = moved.reshape(moved.shape[:len(kept)] + (-1,))
        ones = np.ones(flat.shape[:-1] + (1,))
        before = np.cumprod(np.concatenate([ones, flat[..., :-1]], axis=-1), axis=-1)
        after = np.flip(np.cumprod(np.concatenate([ones, np.flip(flat, -1)[..., :-1]], axis=-1), axis=-1), -1)
        others = (before * after).reshape(moved.shape)
        return np.transpose(others, np.argsort(kept + list(axes)))

    def vjp(self, attrs, lin, gouts, in_shapes):
        g = gouts[0]
        if g is None:
            return [None]
        if not attrs["keepdims"]:
            g = np.expand_dims(g, attrs["axes"])
        return [g * lin.gains[0]]


@register
class ReduceMaxRule(OpRule):
    """ReduceMax / ReduceMin over non-batch axes and GlobalMaxPool, as the MaxPool they are: the reduced axes
    moved last (Transpose) and flattened (Reshape) to (N, kept, reduced), a 1-D MaxPool over the whole length
    (Clark's moments, with the refined window correlation), then the output shape (Reshape); min = -max(-x)."""
    op_types = ("ReduceMax", "ReduceMin", "GlobalMaxPool")

    def expand(self, ctx):
        shape, op = ctx.shape(0), ctx.node.op_type
        rank = len(shape)
        if op == "GlobalMaxPool":
            axes, keepdims = list(range(2, rank)), 1
        else:
            axes = reduce_axes(ctx)
            axes = (list(range(rank)) if axes is None or np.size(axes) == 0
                    else [int(a) % rank for a in np.ravel(axes)])
            keepdims = int(ctx.attr("keepdims", 1))
        if 0 in axes:
            raise ctx.fail("reducing over the batch axis (0) is not supported")
        _sample_shape(ctx)
        reduced = sorted(set(axes))
        kept = [a for a in range(1, rank) if a not in reduced]
        x, w = ctx.node.input[0], ExpansionWriter(ctx)

        def ints(label, values):
            return w.const(label, np.asarray(values, np.int64))
        perm = [0] + kept + reduced
        if perm != list(range(rank)):
            x = w.add("Transpose", [x], "move", perm=perm)
        length = int(np.prod([shape[a] for a in reduced]))
        x = w.add("Reshape", [x, ints("flat", [0, int(np.prod([shape[a] for a in kept])), length])], "flatten")
        if op == "ReduceMin":
            x = w.add("Neg", [x], "negate")
        x = w.add("MaxPool", [x], "pool", kernel_shape=[length])
        if op == "ReduceMin":
            x = w.add("Neg", [x], "negate_back")
        out = [shape[a] for a in kept] if not keepdims else [1 if a in reduced else shape[a] for a in range(1, rank)]
        w.add("Reshape", [x, ints("shape", [0] + out)])
        return w.nodes
