"""Element-wise nonlinear ops: exact moments of a Gaussian through each function (memse_compiler.ir.stats)."""
from __future__ import annotations

import numpy as np
import sympy

from memse_compiler.ir import stats
from memse_compiler.ir.ops.base import ExpansionWriter, Linearization, OpRule, ParseContext, register


class ElementwiseRule(OpRule):
    """y = f(x). Subclasses give `f` and `stat(mu, var, attrs) -> stats.Moments`."""
    pointwise = True

    def operands(self, ctx: ParseContext) -> list[int]:
        return [0]

    def f(self, attrs: dict, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def stat(self, attrs: dict, mu: np.ndarray, var: np.ndarray):
        raise NotImplementedError

    def forward(self, attrs, xs):
        return [self.f(attrs, xs[0])]

    def moments(self, attrs, means, variances):
        m = self.stat(attrs, means[0], variances[0])
        resid = np.maximum(m.var - m.gain ** 2 * variances[0], 0.0)
        return [m.mean], [m.var], Linearization(gains=[m.gain], residual=[resid], jumps=self.jumps(attrs) or None)

    def vjp(self, attrs, lin, gouts, in_shapes):
        return [None if gouts[0] is None else gouts[0] * lin.gains[0]]

    def expressions(self, attrs, mus, vs, node):
        name = self.op_types[0]
        return ([sympy.Function(f"E_{name}")(mus[0], vs[0])], [sympy.Function(f"Var_{name}")(mus[0], vs[0])])


@register
class ReluRule(ElementwiseRule):
    op_types = ("Relu",)

    def f(self, attrs, x):
        return np.maximum(x, 0.0)

    def pieces(self, attrs, xs):
        return [xs[0] > 0]

    def stat(self, attrs, mu, var):
        return stats.relu_moments(mu, var)

    def expressions(self, attrs, mus, vs, node):
        # closed form for X ~ N(mu, v): E = mu*Phi(mu/s) + s*phi(mu/s)
        mu, v = mus[0], vs[0]
        s = sympy.sqrt(v)
        phi = sympy.exp(-mu ** 2 / (2 * v)) / sympy.sqrt(2 * sympy.pi)
        cdf = (1 + sympy.erf(mu / (s * sympy.sqrt(2)))) / 2
        mean = mu * cdf + s * phi
        return [mean], [(mu ** 2 + v) * cdf + mu * s * phi - mean ** 2]


@register
class LeakyReluRule(ElementwiseRule):
    op_types = ("LeakyRelu",)

    def parse(self, ctx):
        return {"alpha": float(ctx.attr("alpha", 0.01))}

    def f(self, attrs, x):
        return np.where(x >= 0, x, attrs["alpha"] * x)

    def pieces(self, attrs, xs):
        return [xs[0] >= 0]

    def stat(self, attrs, mu, var):
        return stats.leaky_relu_moments(mu, var, attrs["alpha"])


@register
class PReluRule(LeakyReluRule):
    """PRelu: LeakyRelu with a constant slope broadcast onto the input (one per channel, as torch exports it)."""
    op_types = ("PRelu",)

    def parse(self, ctx):
        slope = ctx.const(1)
        if slope is None:
            raise ctx.fail("the slope must be a constant")
        shape = tuple(ctx.shape(0))
        try:
            np.broadcast_shapes(tuple(1 if d is None else d for d in shape), np.shape(slope))
        except ValueError:
            raise ctx.fail(f"the slope's shape {np.shape(slope)} does not broadcast to the input's {shape}") from None
        if len(np.shape(slope)) >= len(shape) and np.shape(slope)[0] != 1:
            raise ctx.fail("a slope per sample (over the batch axis) is not supported")
        return {"alpha": np.asarray(slope, dtype=np.float64)}


@register
class ClipRule(ElementwiseRule):
    op_types = ("Clip",)

    def parse(self, ctx):
        lo, hi = ctx.attr("min"), ctx.attr("max")          # opset < 11
        for i, key in ((1, "lo"), (2, "hi")):
            if i < len(ctx.node.input) and ctx.node.input[i]:
                c = ctx.const(i)
                if c is None:
                    raise ctx.fail(f"clip bound input {i} must be a constant")
                if key == "lo":
                    lo = float(c)
                else:
                    hi = float(c)
        return {"lo": -np.inf if lo is None else float(lo), "hi": np.inf if hi is None else float(hi)}

    def f(self, attrs, x):
        return np.clip(x, attrs["lo"], attrs["hi"])

    def pieces(self, attrs, xs):
        return [xs[0] < attrs["lo"], xs[0] > attrs["hi"]]

    def stat(self, attrs, mu, var):
        return stats.clip_moments(mu, var, attrs["lo"], attrs["hi"])


@register
class SigmoidRule(ElementwiseRule):
    op_types = ("Sigmoid",)

    def f(self, attrs, x):
        return stats.sigmoid(x)

    def stat(self, attrs, mu, var):
        return stats.sigmoid_moments(mu, var)


@register
class TanhRule(ElementwiseRule):
    op_types = ("Tanh",)

    def f(self, attrs, x):
        return np.tanh(x)

    def stat(self, attrs, mu, var):
        return stats.tanh_moments(mu, var)


@register
class SoftplusRule(ElementwiseRule):
    op_types = ("Softplus",)

    def f(self, attrs, x):
        return stats.softplus(x)

    def stat(self, attrs, mu, var):
        return stats.softplus_moments(mu, var)


@register
class MishRule(ElementwiseRule):
    """ONNX Mish (opset 18; torch's F.mish exports as it there), moments by quadrature. At lower opsets torch
    writes x * tanh(softplus(x)): x reaches the Mul twice, and the frontend folds the chain into one function of x
    (memse_compiler/pointwise_fusion.py), integrated the same way."""
    op_types = ("Mish",)

    def f(self, attrs, x):
        return stats.mish(x)

    def stat(self, attrs, mu, var):
        return stats.mish_moments(mu, var)


@register
class ErfRule(ElementwiseRule):
    op_types = ("Erf",)

    def f(self, attrs, x):
        return stats.erf(x)

    def stat(self, attrs, mu, var):
        return stats.erf_moments(mu, var)


@register
class GeluRule(ElementwiseRule):
    """ONNX Gelu (opset 20). torch's export at lower opsets (x * 0.5 * (1 + erf(x / sqrt 2)), or the tanh form's
    chain) reaches one Mul with x twice: the frontend folds it into one function of x (memse_compiler/
    pointwise_fusion.py), whose moments are integrated on x's Gaussian as here. Op by op, the forward moments
    took the two operands as independent (the zoo's erf pattern -25 % in the diagonal mode)."""
    op_types = ("Gelu",)

    def parse(self, ctx):
        approx = ctx.attr("approximate", "none")
        approx = approx.decode() if isinstance(approx, bytes) else approx
        if approx not in ("none", "tanh"):
            raise ctx.fail(f"unknown approximate='{approx}'")
        return {"approximate": approx}

    def f(self, attrs, x):
        return stats.gelu_tanh(x) if attrs["approximate"] == "tanh" else stats.gelu_erf(x)

    def stat(self, attrs, mu, var):
        return stats.gelu_moments(mu, var, approximate=attrs["approximate"])


@register
class SoftmaxRule(OpRule):
    op_types = ("Softmax",)

    def operands(self, ctx):
        return [0]

    def parse(self, ctx):
        return {"axis": int(ctx.attr("axis", -1))}

    def forward(self, attrs, xs):
        x = xs[0] - xs[0].max(axis=attrs["axis"], keepdims=True)
        e = np.exp(x)
        return [e / e.sum(axis=attrs["axis"], keepdims=True)]

    def moments(self, attrs, means, variances):
        ax = attrs["axis"]
        mean, var = stats.softmax_moments(means[0], variances[0], axis=ax)
        p = self.forward(attrs, [means[0]])[0]
        # variance of the linearisation J diag(v) J^T at the mean, J = diag(p) - p p^T
        lin_var = p ** 2 * ((1 - 2 * p) * variances[0] + (p ** 2 * variances[0]).sum(axis=ax, keepdims=True))
        return [mean], [var], Linearization(gains=[p], residual=[np.maximum(var - lin_var, 0.0)])

    def vjp(self, attrs, lin, gouts, in_shapes):
        g, p = gouts[0], lin.gains[0]
        if g is None:
            return [None]
        return [p * (g - (p * g).sum(axis=attrs["axis"], keepdims=True))]


@register
class LogSoftmaxRule(SoftmaxRule):
    """x - logsumexp(x) along an axis: second-order (delta-method) mean, first-order variance, independent inputs
    (as Softmax): E ~ mu - lse(mu) - 1/2 sum_j p_j (1 - p_j) v_j, Var_i ~ (1 - 2 p_i) v_i + sum_j p_j^2 v_j."""
    op_types = ("LogSoftmax",)

    def forward(self, attrs, xs):
        x, ax = xs[0], attrs["axis"]
        m = x.max(axis=ax, keepdims=True)
        return [x - m - np.log(np.exp(x - m).sum(axis=ax, keepdims=True))]

    def moments(self, attrs, means, variances):
        ax, v = attrs["axis"], variances[0]
        p = stats.softmax(means[0], ax)
        mean = self.forward(attrs, means)[0] - 0.5 * (p * (1 - p) * v).sum(axis=ax, keepdims=True)
        var = np.maximum((1 - 2 * p) * v + (p * p * v).sum(axis=ax, keepdims=True), 0.0)
        return [mean], [var], Linearization(gains=[p], residual=[np.zeros_like(var)])

    def vjp(self, attrs, lin, gouts, in_shapes):
        g = gouts[0]
        return [None if g is None else g - lin.gains[0] * g.sum(axis=attrs["axis"], keepdims=True)]


@register
class HardSigmoidRule(ElementwiseRule):
    """clip(alpha x + beta, 0, 1): exact, as the clip of an affine Gaussian."""
    op_types = ("HardSigmoid",)

    def parse(self, ctx):
        return {"alpha": float(ctx.attr("alpha", 0.2)), "beta": float(ctx.attr("beta", 0.5))}

    def f(self, attrs, x):
        return np.clip(attrs["alpha"] * x + attrs["beta"], 0.0, 1.0)

    def pieces(self, attrs, xs):
        z = attrs["alpha"] * xs[0] + attrs["beta"]
        return [z < 0, z > 1]

    def stat(self, attrs, mu, var):
        a = attrs["alpha"]
        m = stats.clip_moments(a * mu + attrs["beta"], a * a * var, 0.0, 1.0)
        return stats.Moments(m.mean, m.var, a * m.gain)


@register
class HardSwishRule(ElementwiseRule):
    """x * clip(x / 6 + 1/2, 0, 1), by quadrature on its three pieces."""
    op_types = ("HardSwish",)

    def f(self, attrs, x):
        return stats.hard_swish(x)

    def pieces(self, attrs, xs):
        return [xs[0] < -3.0, xs[0] > 3.0]

    def stat(self, attrs, mu, var):
        return stats.piecewise_quadrature_moments(stats.hard_swish, stats.hard_swish_grad, mu, var, (-3.0, 3.0))


@register
class EluRule(ElementwiseRule):
    """Elu (x > 0: x, else alpha (e^x - 1)), Selu (gamma times Elu) and Celu (x > 0: x, else alpha (e^(x / alpha)
    - 1): torch's F.celu), by quadrature on both sides of 0."""
    op_types = ("Elu", "Selu", "Celu")

    def parse(self, ctx):
        if ctx.node.op_type == "Selu":
            return {"alpha": float(ctx.attr("alpha", 1.67326319217681884765625)),
                    "gamma": float(ctx.attr("gamma", 1.05070102214813232421875)), "rate": 1.0}
        alpha = float(ctx.attr("alpha", 1.0))
        if ctx.node.op_type == "Celu" and alpha == 0:
            raise ctx.fail("alpha must not be 0")
        return {"alpha": alpha, "gamma": 1.0, "rate": 1.0 / alpha if ctx.node.op_type == "Celu" else 1.0}

    def f(self, attrs, x):
        negative = attrs["alpha"] * np.expm1(np.minimum(attrs["rate"] * x, 0.0))
        return attrs["gamma"] * np.where(x > 0, x, negative)

    def pieces(self, attrs, xs):
        return [xs[0] > 0]

    def df(self, attrs, x):
        negative = attrs["alpha"] * attrs["rate"] * np.exp(np.minimum(attrs["rate"] * x, 0.0))
        return attrs["gamma"] * np.where(x > 0, 1.0, negative)

    def stat(self, attrs, mu, var):
        return stats.piecewise_quadrature_moments(lambda x: self.f(attrs, x), lambda x: self.df(attrs, x), mu, var,
                                                  (0.0,))


@register
class SinusoidRule(ElementwiseRule):
    """Sin and Cos (SIREN's activations, Fourier features of a computed signal): exact Gaussian moments."""
    op_types = ("Sin", "Cos")

    def parse(self, ctx):
        return {"cosine": ctx.node.op_type == "Cos"}

    def f(self, attrs, x):
        return np.cos(x) if attrs["cosine"] else np.sin(x)

    def stat(self, attrs, mu, var):
        return stats.sinusoid_moments(mu, var, cosine=attrs["cosine"])

    def expressions(self, attrs, mus, vs, node):
        mu, v = mus[0], vs[0]
        value = sympy.cos(mu) if attrs["cosine"] else sympy.sin(mu)
        return [value * sympy.exp(-v / 2)], [(1 - sympy.exp(-2 * v)) / 2 - value ** 2 * sympy.exp(-v) * (1 - sympy.exp(-v))]


@register
class SoftsignRule(ElementwiseRule):
    """x / (1 + |x|), by quadrature on both sides of 0."""
    op_types = ("Softsign",)

    def f(self, attrs, x):
        return x / (1.0 + np.abs(x))

    def pieces(self, attrs, xs):
        return [xs[0] > 0]

    def stat(self, attrs, mu, var):
        return stats.piecewise_quadrature_moments(lambda x: self.f(attrs, x),
                                                  lambda x: 1.0 / (1.0 + np.abs(x)) ** 2, mu, var, (0.0,))


@register
class ArcRule(ElementwiseRule):
    """Atan and Asinh: smooth and defined everywhere, by Gauss-Legendre quadrature on pieces cut at -1, 0 and 1,
    where their curvature lives (Gauss-Hermite was 1e-2 off at variance 2: their derivatives have poles at +-i).
    (Tan, Asin, Acos, Acosh and Atanh are not: a pole or a bounded domain that a Gaussian error crosses; they stay
    exact-signal ops.)"""
    op_types = ("Atan", "Asinh")
    FUNCTIONS = {"Atan": (np.arctan, lambda x: 1.0 / (1.0 + x * x)),
                 "Asinh": (np.arcsinh, lambda x: 1.0 / np.sqrt(1.0 + x * x))}

    def parse(self, ctx):
        return {"op": ctx.node.op_type}

    def f(self, attrs, x):
        return self.FUNCTIONS[attrs["op"]][0](x)

    def stat(self, attrs, mu, var):
        return stats.piecewise_quadrature_moments(*self.FUNCTIONS[attrs["op"]], mu, var, (-1.0, 0.0, 1.0))

    def expressions(self, attrs, mus, vs, node):
        return ([sympy.Function(f"E_{attrs['op']}")(mus[0], vs[0])],
                [sympy.Function(f"Var_{attrs['op']}")(mus[0], vs[0])])


@register
class HyperbolicRule(ElementwiseRule):
    """Sinh and Cosh: exact Gaussian moments, (e^X -+ e^-X) / 2 with E e^(aX) = e^(a mu + a^2 v / 2):
    E sinh X = sinh(mu) e^(v/2), E cosh X = cosh(mu) e^(v/2), E[f(X)^2] = (cosh(2 mu) e^(2v) -+ 1) / 2, and the gain
    E f'(X) is the other function's mean."""
    op_types = ("Sinh", "Cosh")

    def parse(self, ctx):
        return {"cosh": ctx.node.op_type == "Cosh"}

    def f(self, attrs, x):
        return np.cosh(x) if attrs["cosh"] else np.sinh(x)

    def stat(self, attrs, mu, var):
        grow = np.exp(var / 2)
        sinh_mean, cosh_mean = np.sinh(mu) * grow, np.cosh(mu) * grow
        mean = cosh_mean if attrs["cosh"] else sinh_mean
        square = (np.cosh(2 * mu) * grow ** 4 + (1.0 if attrs["cosh"] else -1.0)) / 2
        return stats.Moments(mean, np.maximum(square - mean ** 2, 0.0), sinh_mean if attrs["cosh"] else cosh_mean)

    def expressions(self, attrs, mus, vs, node):
        mu, v = mus[0], vs[0]
        mean = (sympy.cosh(mu) if attrs["cosh"] else sympy.sinh(mu)) * sympy.exp(v / 2)
        return [mean], [(sympy.cosh(2 * mu) * sympy.exp(2 * v) + (1 if attrs["cosh"] else -1)) / 2 - mean ** 2]


class _Composite(OpRule):
    """An activation that is a small function of its input written with other ops (a comparison, the input
    reaching an op twice): expanded into them, which the frontend folds into one Pointwise node (exact moments by
    quadrature, jumps included: ir/ops/pointwise.py)."""

    def write(self, ctx: ParseContext, w: ExpansionWriter, x: str) -> None:
        raise NotImplementedError

    def expand(self, ctx):
        w = ExpansionWriter(ctx)
        self.write(ctx, w, ctx.node.input[0])
        return w.nodes


@register
class SwishRule(_Composite):
    """Swish (opset 24): x sigmoid(alpha x)."""
    op_types = ("Swish",)

    def write(self, ctx, w, x):
        scaled = w.add("Mul", [x, w.const("alpha", float(ctx.attr("alpha", 1.0)))], "scaled")
        w.add("Mul", [x, w.add("Sigmoid", [scaled], "gate")])


@register
class ThresholdedReluRule(_Composite):
    """ThresholdedRelu: x where x > alpha, else 0 (a jump at alpha)."""
    op_types = ("ThresholdedRelu",)

    def write(self, ctx, w, x):
        above = w.add("Greater", [x, w.const("alpha", float(ctx.attr("alpha", 1.0)))], "above")
        w.add("Where", [above, x, w.const("zero", 0.0)])


@register
class ShrinkRule(_Composite):
    """Shrink: x + bias below -lambd, x - bias above lambd, else 0 (jumps where bias != lambd)."""
    op_types = ("Shrink",)

    def write(self, ctx, w, x):
        lambd, bias = float(ctx.attr("lambd", 0.5)), float(ctx.attr("bias", 0.0))
        if lambd < 0:
            raise ctx.fail(f"lambd {lambd} is negative")
        below = w.add("Less", [x, w.const("low", -lambd)], "below")
        above = w.add("Greater", [x, w.const("high", lambd)], "above")
        raised = w.add("Add", [x, w.const("bias", bias)], "raised")
        lowered = w.add("Sub", [x, w.const("bias_again", bias)], "lowered")
        upper = w.add("Where", [above, lowered, w.const("zero", 0.0)], "upper")
        w.add("Where", [below, raised, upper])
