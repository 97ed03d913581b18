"""Linear and affine digital ops: exact in float; moments propagate exactly for independent inputs."""
from __future__ import annotations

import numpy as np
import onnx
import sympy
from onnx import helper

from memse_compiler.ir import stats
from memse_compiler.ir.errors import DomainError
from memse_compiler.ir.ops.base import ExpansionWriter, Linearization, OpRule, register, unbroadcast


class ShapeRule(OpRule):
    """Ops that only move elements: the same map applies to means, variances and (inverted) sensitivities."""

    def operands(self, ctx):
        return [0]

    def move(self, attrs, x):
        raise NotImplementedError

    def forward(self, attrs, xs):
        return [self.move(attrs, xs[0])]

    def moments(self, attrs, means, variances):
        return [self.move(attrs, means[0])], [self.move(attrs, variances[0])], Linearization()

    def vjp(self, attrs, lin, gouts, in_shapes):
        return [None if gouts[0] is None else gouts[0].reshape(in_shapes[0])]

    def expressions(self, attrs, mus, vs, node):
        return [mus[0]], [vs[0]]


@register
class IdentityRule(ShapeRule):
    op_types = ("Identity", "Dropout")
    pointwise = True

    def parse(self, ctx):
        if ctx.node.op_type == "Dropout" and len(ctx.node.output) > 1 and ctx.node.output[1]:
            raise ctx.fail("the Dropout mask output is not supported (inference graphs only)")
        return {}

    def move(self, attrs, x):
        return x


@register
class CastRule(IdentityRule):
    """Cast of a signal to float or double (`x.float()`): the identity here, where signals are float64."""
    op_types = ("Cast",)

    def resolve(self, ctx):
        """A cast to bool (of a noisy comparison, as torch's legacy hardshrink export writes it): CastToBool."""
        if int(ctx.attr("to", 0)) == onnx.TensorProto.BOOL:
            from memse_compiler.ir.ops.base import rule_for
            return rule_for("CastToBool")
        return self

    def parse(self, ctx):
        to = int(ctx.attr("to", 0))
        if to not in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE):
            raise ctx.fail(f"a cast of a signal to {onnx.TensorProto.DataType.Name(to)} is not supported "
                           f"(only to FLOAT or DOUBLE)")
        return {}

    def forward(self, attrs, xs):
        # a noisy comparison cast to float inside a function of one signal ((x > 0).float()): 0/1, not bool
        x = np.asarray(xs[0])
        return [x if x.dtype.kind == "f" else x.astype(np.float64)]


@register
class CastLikeRule(OpRule):
    """CastLike: the Cast to the second input's type (a float type: the identity here)."""
    op_types = ("CastLike",)

    def expand(self, ctx):
        to = ctx.elem_types.get(ctx.node.input[1])
        if not to and ctx.const(1) is not None:          # a folded constant's own dtype
            to = helper.np_dtype_to_tensor_dtype(np.asarray(ctx.const(1)).dtype)
        if not to:
            raise ctx.fail("the type of the target input is unknown")
        w = ExpansionWriter(ctx)
        w.add("Cast", [ctx.node.input[0]], to=int(to))
        return w.nodes


@register
class FlattenRule(ShapeRule):
    op_types = ("Flatten",)

    def parse(self, ctx):
        return {"axis": int(ctx.attr("axis", 1))}

    def move(self, attrs, x):
        ax = attrs["axis"] % x.ndim if x.ndim else 0
        return x.reshape(int(np.prod(x.shape[:ax])), -1)


@register
class ReshapeRule(ShapeRule):
    op_types = ("Reshape",)

    def parse(self, ctx):
        shape = ctx.const(1)
        if shape is None:
            raise ctx.fail("the target shape must be a constant")
        return {"shape": [int(d) for d in shape], "allowzero": int(ctx.attr("allowzero", 0))}

    def move(self, attrs, x):
        target = [x.shape[i] if d == 0 and not attrs["allowzero"] else d for i, d in enumerate(attrs["shape"])]
        return x.reshape(target)


@register
class SqueezeRule(ShapeRule):
    op_types = ("Squeeze", "Unsqueeze")

    def parse(self, ctx):
        axes = ctx.const(1) if len(ctx.node.input) > 1 and ctx.node.input[1] else ctx.attr("axes")
        return {"op": ctx.node.op_type, "axes": None if axes is None else [int(a) for a in np.ravel(axes)]}

    def move(self, attrs, x):
        if attrs["op"] == "Squeeze":
            return np.squeeze(x, axis=None if attrs["axes"] is None else tuple(attrs["axes"]))
        out_nd = x.ndim + len(attrs["axes"])
        return np.expand_dims(x, tuple(a % out_nd for a in attrs["axes"]))


@register
class TransposeRule(ShapeRule):
    op_types = ("Transpose",)

    def parse(self, ctx):
        perm = ctx.attr("perm")
        return {"perm": None if perm is None else [int(p) for p in perm]}

    def move(self, attrs, x):
        return np.transpose(x, attrs["perm"])

    def vjp(self, attrs, lin, gouts, in_shapes):
        g = gouts[0]
        if g is None:
            return [None]
        perm = attrs["perm"] or list(range(g.ndim))[::-1]
        return [np.transpose(g, np.argsort(perm))]


@register
class DepthToSpaceRule(OpRule):
    """DepthToSpace (torch's PixelShuffle exports it, mode CRD) and SpaceToDepth (PixelUnshuffle): exact
    rearrangements, parsed as the Reshape -> Transpose -> Reshape by which the ONNX spec defines them."""
    op_types = ("DepthToSpace", "SpaceToDepth")

    def expand(self, ctx):
        shape = ctx.shape(0)
        if len(shape) != 4:
            raise ctx.fail(f"the input must be (N, C, H, W), got rank {len(shape)}")
        b, (_, c, h, w) = int(ctx.attr("blocksize", 0)), shape
        if b < 1:
            raise ctx.fail("blocksize must be at least 1")
        if ctx.node.op_type == "DepthToSpace":
            mode = ctx.attr("mode", b"DCR")
            mode = mode.decode() if isinstance(mode, bytes) else mode
            if c % (b * b) or mode not in ("DCR", "CRD"):
                raise ctx.fail(f"{c} channels in blocks of {b} x {b}, mode {mode!r}: not a depth-to-space")
            split, perm = (([0, b, b, c // b ** 2, h, w], [0, 3, 4, 1, 5, 2]) if mode == "DCR" else
                           ([0, c // b ** 2, b, b, h, w], [0, 1, 4, 2, 5, 3]))
            merge = [0, c // b ** 2, h * b, w * b]
        else:
            if h % b or w % b:
                raise ctx.fail(f"{h} x {w} is not divisible into blocks of {b}")
            split, perm, merge = [0, c, h // b, b, w // b, b], [0, 3, 5, 1, 2, 4], [0, c * b * b, h // b, w // b]
        w = ExpansionWriter(ctx)
        blocks = w.add("Reshape", [ctx.node.input[0], w.const("split", np.array(split, np.int64))], "blocks")
        moved = w.add("Transpose", [blocks], "moved", perm=perm)
        w.add("Reshape", [moved, w.const("merge", np.array(merge, np.int64))])
        return w.nodes


@register
class ConcatRule(OpRule):
    op_types = ("Concat",)

    def parse(self, ctx):
        return {"axis": int(ctx.attr("axis"))}

    def forward(self, attrs, xs):
        return [np.concatenate(xs, axis=attrs["axis"])]

    def moments(self, attrs, means, variances):
        return self.forward(attrs, means), self.forward(attrs, variances), Linearization()

    def vjp(self, attrs, lin, gouts, in_shapes):
        g = gouts[0]
        ax = attrs["axis"] % g.ndim
        cuts = np.cumsum([s[ax] for s in in_shapes])[:-1]
        return list(np.split(g, cuts, axis=ax))

    def expressions(self, attrs, mus, vs, node):
        f = sympy.Function("Concat")
        return [f(*mus)], [f(*vs)]


@register
class BinaryRule(OpRule):
    """Add, Sub, Mul, Div with numpy broadcasting. Inputs are treated as independent; a constant operand
    enters with variance 0 (so Mul by a constant scales the variance by its square). Division by a signal takes
    the delta method (second-order mean, first-order variance), so its mean must stay away from 0."""
    op_types = ("Add", "Sub", "Mul", "Div")
    pointwise = True

    def parse(self, ctx):
        # x + x, x - x, x * x (torch exports x * x and x + x so): one variable, not two independent ones
        same = ctx.node.input[0] == ctx.node.input[1] and not ctx.is_const(0)
        return {"op": ctx.node.op_type, "same_operand": same}

    def forward(self, attrs, xs):
        a, b = xs
        return [{"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": np.divide}[attrs["op"]](a, b)]

    def moments(self, attrs, means, variances):
        (ma, mb), (va, vb) = means, variances
        op = attrs["op"]
        if attrs.get("same_operand") and op != "Div":
            return self._same_operand(op, ma, va, mb)
        if op in ("Add", "Sub"):
            return self.forward(attrs, means), [va + vb], Linearization()
        if op == "Div":
            if np.any(mb == 0):
                raise DomainError(f"the divisor's mean is 0 at {int(np.size(mb) - np.count_nonzero(mb))} of "
                                  f"{np.size(mb)} elements")
            inv = 1.0 / mb
            q = ma * inv
            if not np.any(vb):                                      # a constant divisor: exact
                return [q], [va * inv ** 2], Linearization(gains=[inv, None])
            return ([q + q * vb * inv ** 2], [(va + q ** 2 * vb) * inv ** 2],
                    Linearization(gains=[inv, -q * inv]))
        var = ma ** 2 * vb + mb ** 2 * va + va * vb
        lin_var = ma ** 2 * vb + mb ** 2 * va
        return [ma * mb], [var], Linearization(gains=[mb, ma], residual=[np.maximum(var - lin_var, 0.0)])

    @staticmethod
    def _same_operand(op: str, mu: np.ndarray, var: np.ndarray, mu_b: np.ndarray):
        """x + x = 2x, x - x = 0, x * x = x^2 (exact Gaussian moments); the gains are per operand slot, which
        the sensitivity pass adds up for the one tensor (2 in all, 2 mu for the square)."""
        if op == "Add":
            return [2.0 * mu], [4.0 * var], Linearization()
        if op == "Sub":
            zero = np.zeros_like(mu)
            return [zero], [zero], Linearization()
        m = stats.power_moments(mu, var, 2)
        # per slot d(ab)/da = b, d(ab)/db = a (the same tensor in a graph; the vjp test jitters the slots apart)
        resid = np.maximum(m.var - m.gain ** 2 * var, 0.0)
        return [m.mean], [m.var], Linearization(gains=[mu_b, mu], residual=[resid])

    def vjp(self, attrs, lin, gouts, in_shapes):
        g, op = gouts[0], attrs["op"]
        if g is None:
            return [None, None]
        if op == "Add":
            parts = [g, g]
        elif op == "Sub":
            parts = [g, -g]
        elif op == "Div":
            parts = [g * lin.gains[0], None if lin.gains[1] is None else g * lin.gains[1]]
        else:
            parts = [g * lin.gains[0], g * lin.gains[1]]
        return [None if p is None else unbroadcast(p, s) for p, s in zip(parts, in_shapes)]

    def expressions(self, attrs, mus, vs, node):
        (ma, mb), (va, vb), op = mus, vs, attrs["op"]
        if attrs.get("same_operand") and op != "Div":
            return {"Add": ([2 * ma], [4 * va]), "Sub": ([sympy.Integer(0)], [sympy.Integer(0)]),
                    "Mul": ([ma ** 2 + va], [4 * ma ** 2 * va + 2 * va ** 2])}[op]
        if op == "Add":
            return [ma + mb], [va + vb]
        if op == "Sub":
            return [ma - mb], [va + vb]
        if op == "Div":
            return [ma / mb + ma * vb / mb ** 3], [va / mb ** 2 + ma ** 2 * vb / mb ** 4]
        return [ma * mb], [ma ** 2 * vb + mb ** 2 * va + va * vb]


@register
class BatchNormRule(OpRule):
    """Inference BatchNormalization left as a digital affine node (when it could not be folded)."""
    op_types = ("BatchNormalization",)

    def operands(self, ctx):
        return [0]

    def parse(self, ctx):
        if len([o for o in ctx.node.output if o]) > 1 or ctx.attr("training_mode", 0):
            raise ctx.fail("only inference-mode BatchNormalization is supported")
        params = [ctx.const(i) for i in range(1, 5)]
        if any(p is None for p in params):
            raise ctx.fail("scale, bias, mean and var must be constants")
        scale, bias, mean, var = (np.asarray(p, np.float64) for p in params)
        a = scale / np.sqrt(var + float(ctx.attr("epsilon", 1e-5)))
        return {"a": a, "b": bias - a * mean}

    @staticmethod
    def _bc(v, x):
        return v.reshape((1, -1) + (1,) * (x.ndim - 2))

    def forward(self, attrs, xs):
        x = xs[0]
        return [x * self._bc(attrs["a"], x) + self._bc(attrs["b"], x)]

    def moments(self, attrs, means, variances):
        return self.forward(attrs, means), [variances[0] * self._bc(attrs["a"], variances[0]) ** 2], Linearization()

    def vjp(self, attrs, lin, gouts, in_shapes):
        g = gouts[0]
        return [None if g is None else g * self._bc(attrs["a"], g)]

    def expressions(self, attrs, mus, vs, node):
        a, b = sympy.Symbol(f"a_{node}"), sympy.Symbol(f"b_{node}")
        return [a * mus[0] + b], [a ** 2 * vs[0]]


@register
class SignalMatMulRule(OpRule):
    """MatMul of two signals (attention's Q K^T and weights x values), digital, operands independent:
    E[AB] = E[A] E[B], Var(AB)_ik = sum_j vA_ij mB_jk^2 + mA_ij^2 vB_jk + vA_ij vB_jk (the last term is the
    residual beyond the linearisation). Reached from MatMul (weighted.MatMulRule.resolve) when neither operand
    is a constant."""
    op_types = ("MatMulSignals",)
    internal = True

    def parse(self, ctx):
        if min(len(ctx.shape(0)), len(ctx.shape(1))) < 2:
            raise ctx.fail("a product of two signals needs both operands at least 2-D")
        return {}

    def forward(self, attrs, xs):
        return [np.matmul(xs[0], xs[1])]

    def moments(self, attrs, means, variances):
        (ma, mb), (va, vb) = means, variances
        resid = np.matmul(va, vb)
        var = np.matmul(va, mb * mb) + np.matmul(ma * ma, vb) + resid
        return [np.matmul(ma, mb)], [var], Linearization(gains=[ma, mb], residual=[resid])

    def vjp(self, attrs, lin, gouts, in_shapes):
        g = gouts[0]
        if g is None:
            return [None, None]
        ma, mb = lin.gains
        return [unbroadcast(np.matmul(g, np.swapaxes(mb, -1, -2)), in_shapes[0]),
                unbroadcast(np.matmul(np.swapaxes(ma, -1, -2), g), in_shapes[1])]

    def expressions(self, attrs, mus, vs, node):
        (ma, mb), (va, vb) = mus, vs
        return [ma * mb], [va * mb ** 2 + ma ** 2 * vb + va * vb]
