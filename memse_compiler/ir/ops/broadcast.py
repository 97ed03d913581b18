"""Expand and Tile: a signal broadcast or repeated over non-batch axes (a copy, exact), and a constant broadcast
to the batch (a class token, an initial state: `cls.expand(x.shape[0], -1, -1)`), which becomes the internal op
BatchBroadcast, a signal of variance 0 that only takes its batch size from the data input. Where with a constant
condition (`masked_fill` with a fixed mask, or one computed from the data inputs alone) broadcasts its operands and
picks one per element, also exactly."""
from __future__ import annotations

import re
from typing import Callable

import numpy as np
import onnx
import sympy

from memse_compiler.ir.ops.base import Linearization, OpRule, batch_sized_shape, register, unbroadcast
from memse_compiler.ir.ops.indexing import CopyRule, _const_ints


@register
class ExpandRule(CopyRule):
    """Expand of a signal (ONNX's two-way broadcast) with a constant shape that keeps the batch: its leading
    entry is 1 (the frontend writes 1 where the export computed or fixed the batch size)."""
    op_types = ("Expand",)

    def parse_copy(self, ctx):
        target = _const_ints(ctx, 1, "the shape")
        rank = max(len(ctx.shape(0)), len(target))
        target = [1] * (rank - len(target)) + target
        if len(target) > len(ctx.shape(0)) or target[0] != 1:
            raise ctx.fail(f"expanding to {target} changes the batch axis (only the other axes may grow)")
        return {"target": target}

    def select(self, attrs, x, fill):
        shape = np.broadcast_shapes(x.shape, tuple(attrs["target"]))
        return [np.broadcast_to(x, shape)]


@register
class TileRule(CopyRule):
    """Tile of a signal (`x.repeat(1, k, ...)`) with constant repeats, 1 along the batch."""
    op_types = ("Tile",)

    def parse_copy(self, ctx):
        repeats = _const_ints(ctx, 1, "the repeats")
        if repeats is None or len(repeats) != len(ctx.shape(0)) or repeats[0] != 1:
            raise ctx.fail(f"repeats {repeats} must give every axis, with 1 for the batch axis")
        return {"repeats": repeats}

    def select(self, attrs, x, fill):
        return [np.tile(x, attrs["repeats"])]


@register
class BatchBroadcastRule(OpRule):
    """A constant of one sample (`value`, leading axis 1) repeated over the data input's batch. Inputs: the data
    input (for its batch size only) and the value. Exact, variance 0, no sensitivity to anything."""
    op_types = ("BatchBroadcast",)
    internal = True

    def operands(self, ctx):
        return [0]

    def parse(self, ctx):
        return {"value": np.asarray(ctx.const(1), np.float64)}

    def _broadcast(self, attrs, x):
        value = attrs["value"]
        return np.broadcast_to(value, (x.shape[0],) + value.shape[1:])

    def forward(self, attrs, xs):
        return [np.array(self._broadcast(attrs, xs[0]))]

    def moments(self, attrs, means, variances):
        mean = np.array(self._broadcast(attrs, means[0]))
        return [mean], [np.zeros_like(mean)], Linearization()

    def vjp(self, attrs, lin, gouts, in_shapes):
        return [np.zeros(in_shapes[0])]          # the value does not depend on the input's values

    def expressions(self, attrs, mus, vs, node):
        return [sympy.Symbol(f"const[{node}]")], [sympy.Integer(0)]

    def emit(self, node: onnx.NodeProto, attrs: dict, const: Callable[[str, np.ndarray], str]
             ) -> list[onnx.NodeProto]:
        """Expand(value, [batch of x, 1, ...]): onnxruntime's two-way broadcast repeats the value's leading 1
        over the batch."""
        x, value = node.input[0], node.input[1]
        nodes, target = batch_sized_shape(x, np.ones(attrs["value"].ndim - 1), node.name, const)
        return nodes + [onnx.helper.make_node("Expand", [value, target], [node.output[0]], name=node.name)]


@register
class WhereRule(OpRule):
    """Where(condition, a, b) with a constant condition (`scores.masked_fill(mask == 0, -inf)` with a fixed causal
    mask, whose -inf the frontend makes -1e30 as for an additive mask) or an exact one, computed from the data
    inputs alone (a padding mask fed with the tokens, ir/ops/exact.py): the same on every chip. Every element is
    one operand's element: its moments are that operand's, exactly, and so is its sensitivity. A condition that
    compares a noisy signal is parsed too, as an operand; the frontend then folds the Where into a function of
    that one signal (ir/ops/pointwise.py) or refuses it (memse_compiler/pointwise_fusion.py)."""
    op_types = ("Where",)
    pointwise = True

    def parse(self, ctx):
        cond = ctx.const(0)
        if cond is not None:
            return {"condition": cond.astype(bool)}
        return {"condition": None}              # an operand, read at run time (exact, or fused away)

    def operands(self, ctx):
        return [1, 2] if ctx.is_const(0) else [0, 1, 2]

    @staticmethod
    def _split(attrs, xs):
        """(condition, a, b) from the operands."""
        if attrs["condition"] is None:
            c = np.asarray(xs[0])
            return (c if c.dtype == bool else c.astype(bool)), xs[1], xs[2]
        return attrs["condition"], xs[0], xs[1]

    def forward(self, attrs, xs):
        c, a, b = self._split(attrs, xs)
        return [np.where(c, a, b)]

    def moments(self, attrs, means, variances):
        c, ma, mb = self._split(attrs, means)
        _, va, vb = self._split(attrs, variances)
        return [np.where(c, ma, mb)], [np.where(c, va, vb)], Linearization(gains=[c])

    def vjp(self, attrs, lin, gouts, in_shapes):
        g = gouts[0]
        signal_cond = attrs["condition"] is None
        if g is None:
            return [None] * (3 if signal_cond else 2)
        c = lin.gains[0] if signal_cond else attrs["condition"]
        grads = [unbroadcast(np.where(c, g, 0.0), in_shapes[-2]), unbroadcast(np.where(c, 0.0, g), in_shapes[-1])]
        return [None] + grads if signal_cond else grads

    def expressions(self, attrs, mus, vs, node):
        c = attrs["condition"]
        pick = sympy.Function("where_" + re.sub(r"\W+", "_", node))   # a name the graph export parses back
        if c is None:
            return [pick(*mus)], [pick(*vs[1:])]
        if c.all() or not c.any():                  # one operand throughout
            k = 0 if c.all() else 1
            return [mus[k]], [vs[k]]
        return [pick(mus[0], mus[1])], [pick(vs[0], vs[1])]
