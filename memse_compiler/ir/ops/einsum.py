"""Einsum of two operands (torch's legacy exporter writes `torch.einsum` as one), parsed as the ops it is made of:
a ReduceSum of the indices only one operand has, Transposes and Reshapes that line the operands up as
(batch..., rows, contracted) and (batch..., contracted, columns), one MatMul (a crossbar layer when the other
operand is a constant weight, the digital product of two signals otherwise), and the Reshape and Transpose to the
output's order. The data batch must be the first index of the signal operands and of the output."""
from __future__ import annotations

import numpy as np
from onnx import helper

from memse_compiler.ir.ops.base import OpRule, register


def _prod(sizes) -> int:
    return int(np.prod(sizes, dtype=np.int64)) if len(sizes) else 1


@register
class EinsumRule(OpRule):
    op_types = ("Einsum",)

    def expand(self, ctx):
        eq = ctx.attr("equation", b"")
        eq = (eq.decode() if isinstance(eq, bytes) else eq).replace(" ", "")
        if "..." in eq or "->" not in eq or eq.count(",") != 1:
            raise ctx.fail(f"equation {eq!r}: only two operands, an explicit output and no ellipsis are supported")
        lhs, out = eq.split("->")
        terms = lhs.split(",")
        if any(len(set(t)) != len(t) for t in terms + [out]):
            raise ctx.fail(f"equation {eq!r}: a repeated index (a trace or a diagonal) is not supported")
        names = list(ctx.node.input[:2])
        consts = [ctx.const(0), ctx.const(1)]
        shapes = [tuple(np.shape(c)) if c is not None else tuple(ctx.shape(i)) for i, c in enumerate(consts)]
        if consts[0] is not None:                    # the signal first: the product is symmetric in its operands
            terms, names, consts, shapes = terms[::-1], names[::-1], consts[::-1], shapes[::-1]
        size = {c: d for t, s in zip(terms, shapes) for c, d in zip(t, s)}
        batch_index = terms[0][0]
        if not out or out[0] != batch_index or (consts[1] is None and terms[1][:1] != batch_index):
            raise ctx.fail(f"equation {eq!r}: the batch (the first index of every signal operand) must lead the "
                           f"output")
        base, nodes = ctx.node_name, []

        def const(label, value):
            return ctx.new_const(label, np.asarray(value, np.int64))

        def node(op, inputs, label, **attrs):
            nodes.append(helper.make_node(op, inputs, [f"{base}/{label}"], name=f"{base}/{label}", **attrs))
            return f"{base}/{label}"

        def target(indices):                         # 0 copies the batch (always the leading entry here)
            return [0 if c == batch_index else size[c] for c in indices]
        for k in range(2):                           # indices only this operand has: summed first
            lone = [c for c in terms[k] if c not in terms[1 - k] and c not in out]
            if batch_index in lone:
                raise ctx.fail(f"equation {eq!r}: sums over the batch")
            if lone:
                axes = [terms[k].index(c) for c in lone]
                names[k] = (node("ReduceSum", [names[k], const(f"sum{k}_axes", axes)], f"sum{k}", keepdims=0)
                            if ctx.opset >= 13 else node("ReduceSum", [names[k]], f"sum{k}", axes=axes, keepdims=0))
                terms[k] = "".join(c for c in terms[k] if c not in lone)
        a, b = terms
        weight = consts[1] is not None
        batch = [c for c in a if c in b and c in out]
        contract = [c for c in a if c in b and c not in out]
        left, right = [c for c in a if c not in b], [c for c in b if c not in a]
        if weight and batch:
            raise ctx.fail(f"equation {eq!r}: a constant operand shared over an index of the output")
        if not weight and batch[:1] != [batch_index]:
            raise ctx.fail(f"equation {eq!r}: the batch must be an index of both signals and of the output")
        order_a, order_b = batch + left + contract, batch + contract + right
        if list(a) != order_a:
            names[0] = node("Transpose", [names[0]], "lhs", perm=[a.index(c) for c in order_a])
        if list(b) != order_b:
            names[1] = node("Transpose", [names[1]], "rhs", perm=[b.index(c) for c in order_b])
        # rows: the left indices kept apart against a weight (the MatMul broadcasts over them), else merged
        rows = left if weight else [_prod([size[c] for c in left])]
        shape_a = (target(batch + left) if weight else target(batch) + rows) + [_prod([size[c] for c in contract])]
        shape_b = target(batch) + [_prod([size[c] for c in contract]), _prod([size[c] for c in right])]
        names[0] = node("Reshape", [names[0], const("lhs_shape", shape_a)], "lhs_matrix")
        names[1] = node("Reshape", [names[1], const("rhs_shape", shape_b)], "rhs_matrix")
        product = node("MatMul", names, "matmul")
        current = batch + left + right
        product = node("Reshape", [product, const("out_shape", target(current))], "unfold")
        if current == list(out):
            nodes[-1].output[0] = ctx.node.output[0]
        else:
            nodes.append(helper.make_node("Transpose", [product], [ctx.node.output[0]], name=base,
                                          perm=[current.index(c) for c in out]))
        nodes[-1].name = base
        return nodes
