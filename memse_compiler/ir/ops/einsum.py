"""Einsum (torch's legacy exporter writes `torch.einsum` as one), parsed as the ops it is made of. Two operands:
a ReduceSum of the indices only one operand has, Transposes and Reshapes that line the operands up as
(batch..., rows, contracted) and (batch..., contracted, columns), one MatMul (a crossbar layer when the other
operand is a constant weight, the digital product of two signals otherwise), and the Reshape and Transpose to the
output's order. The data batch must be the first index of the signal operands and of the output. An ellipsis
is spelled out with free letters (from the operands' ranks) and an implicit output written as NumPy does; more
operands become a chain of two-operand Einsums, the signals first, then each constant in turn (a crossbar each:
`x W1 W2` is two layers, as the model computes it)."""
from __future__ import annotations

import string
from collections import Counter

import numpy as np

from memse_compiler.ir.ops.base import ExpansionWriter, OpRule, register


def explicit_equation(eq: str, ranks: list[int]) -> str:
    """`eq` with every ellipsis replaced by letters it does not use (right-aligned, as broadcasting aligns them)
    and an implicit output (no '->') made explicit: the ellipsis, then the indices used once, sorted."""
    lhs, arrow, out = eq.partition("->")
    terms = lhs.split(",")
    free = [c for c in string.ascii_letters if c not in eq]
    dots = [rank - (len(t) - 3) for t, rank in zip(terms, ranks) if "..." in t]
    ellipsis = "".join(free[:max(dots, default=0)])
    if not arrow:
        once = Counter(c for t in terms for c in t.replace("...", ""))
        out = ("..." if dots else "") + "".join(sorted(c for c, k in once.items() if k == 1))
    spelled = [t.replace("...", ellipsis[len(ellipsis) - (rank - (len(t) - 3)):]) if "..." in t else t
               for t, rank in zip(terms, ranks)]
    return ",".join(spelled) + "->" + out.replace("...", ellipsis)


def _prod(sizes) -> int:
    return int(np.prod(sizes, dtype=np.int64)) if len(sizes) else 1


@register
class EinsumRule(OpRule):
    op_types = ("Einsum",)

    def expand(self, ctx):
        eq = ctx.attr("equation", b"")
        eq = (eq.decode() if isinstance(eq, bytes) else eq).replace(" ", "")
        k = len(ctx.node.input)
        consts = [ctx.const(i) for i in range(k)]
        shapes = [tuple(np.shape(c)) if c is not None else tuple(ctx.shape(i)) for i, c in enumerate(consts)]
        if "..." in eq or "->" not in eq:
            eq = explicit_equation(eq, [len(s) for s in shapes])
        lhs, out = eq.split("->")
        terms = lhs.split(",")
        if any(len(set(t)) != len(t) for t in terms + [out]):
            raise ctx.fail(f"equation {eq!r}: a repeated index (a trace or a diagonal) is not supported")
        sizes = {}
        for t, s in zip(terms, shapes):
            for c, d in zip(t, s):
                if sizes.setdefault(c, d) != d:
                    raise ctx.fail(f"equation {eq!r}: index {c!r} broadcasts ({sizes[c]} against {d})")
        if k > 2:
            return self._chain(ctx, terms, out, consts)
        names = list(ctx.node.input[:2])
        if consts[0] is not None:                    # the signal first: the product is symmetric in its operands
            terms, names, consts, shapes = terms[::-1], names[::-1], consts[::-1], shapes[::-1]
        size = {c: d for t, s in zip(terms, shapes) for c, d in zip(t, s)}
        batch_index = terms[0][0]
        if not out or out[0] != batch_index or (consts[1] is None and terms[1][:1] != batch_index):
            raise ctx.fail(f"equation {eq!r}: the batch (the first index of every signal operand) must lead the "
                           f"output")
        w = ExpansionWriter(ctx)

        def const(label, value):
            return w.const(label, np.asarray(value, np.int64))

        def node(op, inputs, label, **attrs):
            return w.add(op, inputs, label, **attrs)

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
        product = node("Reshape", [product, const("out_shape", target(current))], None if current == list(out) else "unfold")
        if current != list(out):
            w.add("Transpose", [product], perm=[current.index(c) for c in out])
        return w.nodes

    @staticmethod
    def _chain(ctx, terms: list[str], out: str, consts: list) -> list:
        """Two-operand Einsums, the signals first and then each constant, each keeping only the indices that a later
        operand or the output still needs (in order of first appearance: the batch stays first)."""
        order = [i for i, c in enumerate(consts) if c is None] + [i for i, c in enumerate(consts) if c is not None]
        w = ExpansionWriter(ctx)
        current, term = ctx.node.input[order[0]], terms[order[0]]
        for step, i in enumerate(order[1:], start=1):
            later = "".join(terms[j] for j in order[step + 1:]) + out
            joined = "".join(dict.fromkeys(term + terms[i]))
            last = step == len(order) - 1
            result = out if last else "".join(c for c in joined if c in later)
            current = w.add("Einsum", [current, ctx.node.input[i]], None if last else f"step{step}",
                            equation=f"{term},{terms[i]}->{result}")
            term = result
        return w.nodes
