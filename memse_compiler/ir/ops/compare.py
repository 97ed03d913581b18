"""Step functions of a noisy signal: comparisons and the logic on them (parsed, then folded into a function of one
signal, ir/ops/pointwise.py), Sign, and Round, Floor, Ceil (exact Gaussian moments on their own).

A comparison of a noisy signal gives a bool that differs from chip to chip: `where(x > 0, x, 0.1 * x)`,
`(x > t).float()`, hard shrinkage, a binarised activation. Its mean is a probability, and what it selects is
correlated with the signal compared, so it has no moments of its own that a consumer could use: the frontend
(memse_compiler/pointwise_fusion.py) folds every comparison, with the element-wise ops between it and the next
signal that is not a bool, into one Pointwise node whose moments are integrated on the compared signal's Gaussian,
piece by piece. A comparison of signals computed from the data inputs alone (a mask) is exact (ir/ops/exact.py).
"""
from __future__ import annotations

import numpy as np
import sympy

from memse_compiler.ir import stats
from memse_compiler.ir.ops.base import OpRule, register
from memse_compiler.ir.ops.elementwise import ElementwiseRule

COMPARISONS = {"Greater": np.greater, "Less": np.less, "GreaterOrEqual": np.greater_equal,
               "LessOrEqual": np.less_equal, "Equal": np.equal}
LOGIC = {"And": np.logical_and, "Or": np.logical_or, "Xor": np.logical_xor}


class _BooleanRule(OpRule):
    pointwise = True
    boolean = True

    def parse(self, ctx):
        return {"op": ctx.node.op_type}

    def moments(self, attrs, means, variances):
        # unreachable: the frontend folds a noisy comparison into a Pointwise node or refuses the model
        raise NotImplementedError(f"a noisy {attrs['op']} has no moments outside a function of one signal")

    def vjp(self, attrs, lin, gouts, in_shapes):
        raise NotImplementedError(f"a noisy {attrs['op']} has no linearisation outside a function of one signal")


@register
class CompareRule(_BooleanRule):
    op_types = tuple(COMPARISONS)

    def forward(self, attrs, xs):
        return [COMPARISONS[attrs["op"]](xs[0], xs[1])]

    def pieces(self, attrs, xs):
        return self.forward(attrs, xs)          # where the comparison flips, the function may jump


@register
class LogicRule(_BooleanRule):
    op_types = ("Not",) + tuple(LOGIC)

    def forward(self, attrs, xs):
        if attrs["op"] == "Not":
            return [np.logical_not(xs[0])]
        return [LOGIC[attrs["op"]](xs[0], xs[1])]


@register
class CastToBoolRule(_BooleanRule):
    """Cast(to=BOOL) of a noisy signal: x != 0 (a bool stays itself)."""
    op_types = ("CastToBool",)
    internal = True

    def parse(self, ctx):
        return {"op": "Cast"}

    def forward(self, attrs, xs):
        x = np.asarray(xs[0])
        return [x if x.dtype == bool else x != 0]


@register
class SignRule(ElementwiseRule):
    """sign(x) of X ~ N(mu, s^2): mean erf(mu / (s sqrt 2)) = P(X > 0) - P(X < 0), variance 1 - mean^2 (X = 0 has
    probability 0), gain E[sign'(X)] = 2 phi(mu / s) / s; exact. s = 0: sign(mu), no variance, gain 0."""
    op_types = ("Sign",)

    def f(self, attrs, x):
        return np.sign(x)

    def pieces(self, attrs, xs):
        return [xs[0] > 0, xs[0] < 0]

    def jumps(self, attrs):
        return True

    def stat(self, attrs, mu, var):
        mu, var = np.broadcast_arrays(np.asarray(mu, float), np.asarray(var, float))
        s = np.sqrt(np.maximum(var, 0.0))
        noisy = s > 0
        safe = np.where(noisy, s, 1.0)
        mean = np.where(noisy, stats.erf(mu / (safe * stats.SQRT2)), np.sign(mu))
        gain = np.where(noisy, 2.0 * stats.norm_pdf(mu / safe) / safe, 0.0)
        return stats.Moments(mean, np.where(noisy, np.maximum(1.0 - mean * mean, 0.0), 0.0), gain)

    def expressions(self, attrs, mus, vs, node):
        mean = sympy.erf(mus[0] / sympy.sqrt(2 * vs[0]))
        return [mean], [1 - mean ** 2]


ROUNDING = {"Round": (np.round, 0.0), "Floor": (np.floor, -0.5), "Ceil": (np.ceil, 0.5)}
WIDE = 1 << 40               # codes: no saturation


@register
class RoundRule(ElementwiseRule):
    """Round (ties to even), Floor, Ceil of X ~ N(mu, s^2): a unit staircase, floor(x) = round(x - 1/2) and
    ceil(x) = round(x + 1/2) but on a set of probability 0; the converters' exact staircase moments
    (stats.quantizer_moments, step 1, no saturation). s = 0: the function itself, no gain. Hand-written fake
    quantization (`torch.round(x / s) * s`) exports as Div, Round, Mul."""
    op_types = tuple(ROUNDING)

    def parse(self, ctx):
        return {"op": ctx.node.op_type}

    def f(self, attrs, x):
        return ROUNDING[attrs["op"]][0](x)

    def pieces(self, attrs, xs):
        return [np.mod(self.f(attrs, xs[0]), 2.0) == 1.0]      # the code's parity flips at every step

    def jumps(self, attrs):
        return True

    def stat(self, attrs, mu, var):
        mu, var = np.broadcast_arrays(np.asarray(mu, float), np.asarray(var, float))
        m = stats.quantizer_moments(mu + ROUNDING[attrs["op"]][1], var, 1.0, -WIDE, WIDE)
        fixed = var <= 0
        return stats.Moments(np.where(fixed, self.f(attrs, mu), m.mean), np.where(fixed, 0.0, m.var),
                             np.where(fixed, 0.0, m.gain))
