"""Element-wise arithmetic: Neg, Abs, Exp exactly; Pow by an integer exactly; Sqrt, Reciprocal, Log and other
powers by the delta method, which needs the input's mean inside the function's smooth domain (else the analysis
stops naming the node: the linearisation there would be infinite or meaningless). Max and Min by Clark's moments;
they and Sum and Mean of more operands as chains of two-operand ops."""
from __future__ import annotations

from math import comb

import numpy as np
import sympy

from memse_compiler.ir import stats
from memse_compiler.ir.errors import DomainError
from memse_compiler.ir.ops.base import ExpansionWriter, Linearization, OpRule, register, unbroadcast
from memse_compiler.ir.ops.elementwise import ElementwiseRule

MAX_EXACT_POWER = 8          # integer exponents up to this use the exact Gaussian moments


@register
class NegRule(ElementwiseRule):
    op_types = ("Neg",)

    def f(self, attrs, x):
        return -x

    def stat(self, attrs, mu, var):
        return stats.Moments(-mu, var, np.full_like(mu, -1.0))

    def expressions(self, attrs, mus, vs, node):
        return [-mus[0]], [vs[0]]


@register
class AbsRule(ElementwiseRule):
    """|x| = LeakyReLU with slope -1: the folded Gaussian, exact."""
    op_types = ("Abs",)

    def f(self, attrs, x):
        return np.abs(x)

    def pieces(self, attrs, xs):
        return [xs[0] >= 0]

    def stat(self, attrs, mu, var):
        return stats.leaky_relu_moments(mu, var, -1.0)


@register
class ExpRule(ElementwiseRule):
    op_types = ("Exp",)

    def f(self, attrs, x):
        return np.exp(x)

    def stat(self, attrs, mu, var):
        return stats.exp_moments(mu, var)

    def expressions(self, attrs, mus, vs, node):
        mean = sympy.exp(mus[0] + vs[0] / 2)
        return [mean], [mean ** 2 * (sympy.exp(vs[0]) - 1)]


def _require(ok: np.ndarray, what: str) -> None:
    if not np.all(ok):
        bad = int(np.size(ok) - np.count_nonzero(ok))
        raise DomainError(f"the input's mean is {what} at {bad} of {np.size(ok)} elements, where the delta-method "
                          f"moments do not exist")


@register
class PowRule(ElementwiseRule):
    """x^p for a constant scalar p. Integer 0 <= p <= 8: exact (stats.power_moments); otherwise the delta method,
    with the mean > 0 (fractional p) or != 0 (negative integer p)."""
    op_types = ("Pow",)

    def parse(self, ctx):
        p = ctx.const(1)
        if p is None or np.size(p) != 1:
            raise ctx.fail("the exponent must be a constant scalar")
        if ctx.is_const(0):
            raise ctx.fail("the base must be a signal")
        return {"exponent": float(np.reshape(p, -1)[0])}

    @staticmethod
    def _exact(p: float) -> bool:
        return float(p).is_integer() and 0 <= p <= MAX_EXACT_POWER

    def f(self, attrs, x):
        return np.power(x, attrs["exponent"])

    def stat(self, attrs, mu, var):
        p = attrs["exponent"]
        if self._exact(p):
            return stats.power_moments(mu, var, int(p))
        if float(p).is_integer():
            _require(mu != 0, "0")
        else:
            _require(mu > 0, "<= 0")
        return stats.delta_moments(lambda x: np.power(x, p), lambda x: p * np.power(x, p - 1),
                                   lambda x: p * (p - 1) * np.power(x, p - 2), mu, var)

    def expressions(self, attrs, mus, vs, node):
        mu, v, p = mus[0], vs[0], attrs["exponent"]
        if self._exact(p):
            n = int(p)
            z = [sympy.Integer(0) if k % 2 else sympy.factorial2(k - 1) * v ** (k // 2) for k in range(2 * n + 1)]
            mean = sum(comb(n, k) * mu ** (n - k) * z[k] for k in range(n + 1))
            var = sum(comb(n, j) * comb(n, k) * mu ** (2 * n - j - k) * (z[j + k] - z[j] * z[k])
                      for j in range(1, n + 1) for k in range(1, n + 1))
            return [mean], [sympy.expand(var)]
        return _delta_expressions(lambda x: x ** sympy.nsimplify(p), mu, v)


def _delta_expressions(f, mu, v):
    x = sympy.Dummy("x")
    fx = f(x)
    at = {x: mu}
    return [fx.subs(at) + sympy.diff(fx, x, 2).subs(at) * v / 2], [sympy.diff(fx, x).subs(at) ** 2 * v]


@register
class SqrtRule(PowRule):
    op_types = ("Sqrt",)

    def parse(self, ctx):
        return {"exponent": 0.5}

    def f(self, attrs, x):
        return np.sqrt(x)


@register
class ReciprocalRule(PowRule):
    op_types = ("Reciprocal",)

    def parse(self, ctx):
        return {"exponent": -1.0}

    def f(self, attrs, x):
        return 1.0 / x


@register
class LogRule(ElementwiseRule):
    """log x by the delta method (mean > 0)."""
    op_types = ("Log",)

    def f(self, attrs, x):
        return np.log(x)

    def stat(self, attrs, mu, var):
        _require(mu > 0, "<= 0")
        return stats.delta_moments(np.log, lambda x: 1.0 / x, lambda x: -1.0 / (x * x), mu, var)

    def expressions(self, attrs, mus, vs, node):
        return _delta_expressions(sympy.log, mus[0], vs[0])


def variadic_chain(w: ExpansionWriter, op: str, operands: list[str], label: str | None = None) -> str:
    """`op` of the operands as a left-to-right chain of two-operand nodes (an Identity for one operand), the last
    writing `label` (None: the node's output)."""
    if len(operands) == 1:
        return w.add("Identity", operands, label)
    acc = operands[0]
    for i, x in enumerate(operands[1:], start=1):
        acc = w.add(op, [acc, x], label if i == len(operands) - 1 else f"{op.lower()}_{i}")
    return acc


@register
class SumMeanRule(OpRule):
    """Sum and Mean of any number of operands (broadcast): a chain of Adds, exact for independent operands; an
    operand given k times enters once, times k (its copies are one variable); Mean then scales by 1 / n."""
    op_types = ("Sum", "Mean")

    def expand(self, ctx):
        ins = [i for i in ctx.node.input if i]
        w = ExpansionWriter(ctx)
        terms = [x if k == 1 else w.add("Mul", [x, w.const(f"count_{j}", float(k))], f"times_{j}")
                 for j, (x, k) in enumerate({x: ins.count(x) for x in dict.fromkeys(ins)}.items())]
        if ctx.node.op_type == "Sum":
            variadic_chain(w, "Add", terms)
        else:
            w.add("Mul", [variadic_chain(w, "Add", terms, "sum"), w.const("inverse_count", 1.0 / len(ins))])
        return w.nodes


@register
class ExtremumRule(OpRule):
    """Element-wise Max / Min of two operands (torch.maximum, clamp with tensor bounds), broadcast. Clark's
    moments of the larger of two Gaussians, taken as independent like the other binary ops (exact against a
    constant, where the other variance is 0); max(x, x) = x. The gains are P(operand wins)."""
    op_types = ("Max", "Min")
    pointwise = True

    def expand(self, ctx):
        """More than two operands (or one): a chain of two-operand ones over the distinct operands."""
        if len([i for i in ctx.node.input if i]) == 2:
            return None
        w = ExpansionWriter(ctx)
        variadic_chain(w, ctx.node.op_type, list(dict.fromkeys(i for i in ctx.node.input if i)))
        return w.nodes

    def parse(self, ctx):
        ins = [i for i in ctx.node.input if i]
        return {"op": ctx.node.op_type, "same_operand": ins[0] == ins[1]}

    def forward(self, attrs, xs):
        return [(np.maximum if attrs["op"] == "Max" else np.minimum)(xs[0], xs[1])]

    def pieces(self, attrs, xs):
        return [xs[0] > xs[1]]

    def moments(self, attrs, means, variances):
        (ma, mb), (va, vb) = means, variances
        if attrs["same_operand"]:
            return [ma], [va], Linearization(gains=[np.full_like(ma, 0.5), np.full_like(ma, 0.5)])
        sign = 1.0 if attrs["op"] == "Max" else -1.0          # min(a, b) = -max(-a, -b)
        mean, var, p = stats.max_moments(sign * ma, va, sign * mb, vb)
        resid = np.maximum(var - p * p * va - (1 - p) ** 2 * vb, 0.0)
        return [sign * mean], [var], Linearization(gains=[p, 1.0 - p], residual=[resid])

    def vjp(self, attrs, lin, gouts, in_shapes):
        g = gouts[0]
        if g is None:
            return [None, None]
        return [unbroadcast(g * gain, shape) for gain, shape in zip(lin.gains, in_shapes)]
