"""Functions of one noisy signal: y = f(x) element by element, f written as a small graph of pointwise ops.

The frontend (memse_compiler/pointwise_fusion.py) folds such a subgraph into one internal Pointwise node when its
ops cannot be analysed one at a time: a comparison of x (`where(x > 0, x, 0.1 * x)`, `(x > t).float() * x`, hard
shrinkage), x reaching one op along two paths (SiLU written `x * sigmoid(x)`, GELU's tanh form), where the
op-by-op moments would take the two operands as independent, or a jump behind other ops of x (`round(4 x)`). Here
the moments are those of f(X) for X ~ N(mu, s^2), element-wise, by Gauss-Legendre quadrature on the pieces where f
is smooth: every op of the body marks where it jumps or kinks (`OpRule.pieces`: a comparison, Relu's x > 0), those
breaks are located per element in standardised units (a grid, then bisection), and each piece gets its own nodes.
The gain is Stein's Cov(X, f(X)) / Var(X), which counts f's jumps. When x is a layer's ADC output and f jumps, the
moment pass sums over the ADC codes instead (passes/moments.on_lattice_moments). The executor runs the body's nodes
as exported.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import onnx
import sympy

from memse_compiler.ir import stats
from memse_compiler.ir.ops.base import Linearization, OpRule, register, rule_for

SPAN = 8.0                                # standard deviations integrated on each side of the mean
GRID = np.linspace(-SPAN, SPAN, 65)       # break search: a flip between two neighbours (0.25 apart) is bisected
BISECTIONS = 22                           # 0.25 / 2^22: breaks to 6e-8 standard deviations
NODES = 16                                # Gauss-Legendre nodes per piece


@dataclass(eq=False)
class Step:
    """One op of the body, as the frontend parsed it."""
    op: str
    attrs: dict
    inputs: list[str]
    outputs: list[str]
    onnx_node: onnx.NodeProto

    def to_dict(self) -> dict:
        return {"op": self.op, "inputs": self.inputs, "outputs": self.outputs}


@dataclass(eq=False)
class PointwiseBody:
    """y = f(x): `steps` in order, from the signal `root` to `output`, reading `constants` by name and the signals
    `sides`, which carry no noise (a mask computed from the data inputs, `full_like(x, c)`): operands of the node
    after the root, the same on every chip."""
    root: str
    output: str
    steps: list[Step]
    constants: dict[str, np.ndarray] = field(repr=False)
    sides: list[str] = field(default_factory=list)

    def __repr__(self) -> str:       # what the exported graph and `inspect` show
        return f"f({self.root}) = " + " -> ".join(s.op for s in self.steps)

    def to_dict(self) -> dict:
        return {"root": self.root, "output": self.output, "sides": self.sides,
                "steps": [s.to_dict() for s in self.steps], "function": repr(self)}

    def run(self, x: np.ndarray, sides: list[np.ndarray] = (), pieces: bool = False
            ) -> tuple[np.ndarray, list[np.ndarray]]:
        """f(x) for x shaped like the root, or stacked with extra leading axes, and the side signals' values; and,
        if asked, the bool arrays of every step's pieces (where f may jump or kink)."""
        env = dict(zip(self.sides, sides))
        env[self.root] = x
        marks: list[np.ndarray] = []
        for s in self.steps:
            rule = rule_for(s.op)
            xs = [env[t] if t in env else self.constants[t] for t in s.inputs]
            if pieces:
                marks += rule.pieces(s.attrs, xs)
            env.update(zip(s.outputs, rule.forward(s.attrs, xs)))
        y = np.asarray(env[self.output])
        return (y if y.dtype.kind == "f" else y.astype(np.float64)), marks

    def value(self, x: np.ndarray, sides: list[np.ndarray] = ()) -> np.ndarray:
        """f(x) (not __call__: the graph export drops callables)."""
        return self.run(x, sides)[0]


def _flips(marks_a: list[np.ndarray], marks_b: list[np.ndarray]) -> np.ndarray:
    """Where any piece indicator differs between two evaluations."""
    out = np.zeros(np.broadcast_shapes(*(np.shape(m) for m in marks_a)), dtype=bool)
    for a, b in zip(marks_a, marks_b):
        out |= np.asarray(a) != np.asarray(b)
    return out


def breaks(body: PointwiseBody, mu: np.ndarray, s: np.ndarray, sides: list[np.ndarray] = ()) -> np.ndarray:
    """(B, *mu.shape) standardised positions in (-SPAN, SPAN) where f's pieces change, ascending per element;
    elements with fewer than B breaks are padded with SPAN. A flip between two grid neighbours is bisected
    (two flips closer than the grid's 0.25 standard deviations cancel and are missed: a piece that narrow holds
    under 10 % of the probability, and a function its width cannot change much). Loops over grid points, each
    an evaluation of the body on the whole signal (memory stays that of a few signals)."""
    marks_of = lambda x: body.run(x, sides, pieces=True)[1]      # noqa: E731
    prev = marks_of(mu + s * GRID[0])
    if not prev:
        return np.empty((0,) + mu.shape)
    count = np.zeros(mu.shape, dtype=np.int64)
    slots: list[np.ndarray] = []          # slots[k]: the grid cell (its left end) of each element's k-th flip
    for left, z in zip(GRID[:-1], GRID[1:]):
        cur = marks_of(mu + s * z)
        flip = _flips(cur, prev)
        if flip.any():
            for k in np.unique(count[flip]):
                if k == len(slots):
                    slots.append(np.full(mu.shape, SPAN))
                slots[k][flip & (count == k)] = left
            count += flip
        prev = cur
    if not slots:
        return np.empty((0,) + mu.shape)
    lo = np.stack(slots)
    hi = np.where(lo < SPAN, lo + (GRID[1] - GRID[0]), SPAN)
    at_lo = marks_of(mu + s * lo)
    for _ in range(BISECTIONS):          # the marks at lo never change: lo only moves to a point that matches it
        mid = 0.5 * (lo + hi)
        flip = _flips(marks_of(mu + s * mid), at_lo)
        hi = np.where(flip, mid, hi)
        lo = np.where(flip, lo, mid)
    return 0.5 * (lo + hi)


def jumps_at(body: PointwiseBody, mu: np.ndarray, s: np.ndarray, cuts: np.ndarray, sides: list[np.ndarray]
             ) -> np.ndarray:
    """Where f jumps at one of its breaks `cuts` (B, *mu.shape) rather than kinks: its change across the break,
    2e-4 std wide, is over twice its changes just beside it (a kink's is at most half of theirs)."""
    out = np.zeros(mu.shape, dtype=bool)
    if not cuts.size:
        return out
    f = [body.value(mu + s * (cuts + e), sides) for e in (-3e-4, -1e-4, 1e-4, 3e-4)]
    across, beside = np.abs(f[2] - f[1]), np.abs(f[3] - f[2]) + np.abs(f[1] - f[0])
    jump = (across > 2.0 * beside + 1e-12 * (1.0 + np.abs(f[1]))) & (cuts < SPAN)
    return jump.any(axis=0)


def function_moments(body: PointwiseBody, mu: np.ndarray, var: np.ndarray, sides: list[np.ndarray] = (),
                     with_jumps: bool = False) -> stats.Moments | tuple[stats.Moments, np.ndarray]:
    """Mean, variance and Stein gain of f(X), X ~ N(mu, var) element-wise, piece by piece (module docstring):
    Gauss-Legendre on [-SPAN, SPAN] standard deviations cut at the mean and at f's breaks (stats.legendre_pieces;
    16 nodes a piece: x sigmoid(x) within 6e-7 of its exact moments up to a standard deviation of 2)."""
    mu, var = np.broadcast_arrays(np.asarray(mu, float), np.asarray(var, float))
    s = np.sqrt(np.maximum(var, 0.0))
    found = breaks(body, mu, s, sides)
    cuts = np.sort(np.concatenate([np.zeros((1,) + mu.shape), found]), axis=0)
    edges = np.concatenate([np.full((1,) + mu.shape, -SPAN), cuts, np.full((1,) + mu.shape, SPAN)])
    f0, m1, m2, mz = stats.legendre_pieces(lambda x: body.value(x, sides), mu, s, edges, NODES)
    noisy = s > 0
    gain = np.where(noisy, mz / np.where(noisy, s, 1.0), _slope(body, mu, sides))
    m = stats.Moments(f0 + m1, np.where(noisy, np.maximum(m2 - m1 * m1, 0.0), 0.0), gain)
    return (m, jumps_at(body, mu, s, found, sides)) if with_jumps else m


def _slope(body: PointwiseBody, mu: np.ndarray, sides: list[np.ndarray]) -> np.ndarray:
    """f'(mu) by a central difference, 0 across a break (elements without noise: their gain only scales a zero
    error)."""
    h = 1e-6 * np.maximum(1.0, np.abs(mu))
    (up, marks_up), (down, marks_down) = body.run(mu + h, sides, True), body.run(mu - h, sides, True)
    slope = (up - down) / (2.0 * h)
    return np.where(_flips(marks_up, marks_down), 0.0, slope) if marks_up else slope


@register
class PointwiseRule(OpRule):
    """The internal op of a folded function of one noisy signal: attrs {"body": PointwiseBody}; operands: the
    signal, then the body's noiseless side signals."""
    op_types = ("Pointwise",)
    internal = True

    def forward(self, attrs, xs):
        return [attrs["body"].value(np.asarray(xs[0], dtype=np.float64), xs[1:])]

    def moments(self, attrs, means, variances):
        m, jumps = function_moments(attrs["body"], means[0], variances[0], means[1:], with_jumps=True)
        resid = np.maximum(m.var - m.gain ** 2 * variances[0], 0.0)
        return [m.mean], [m.var], Linearization(gains=[m.gain], residual=[resid], jumps=jumps)

    def vjp(self, attrs, lin, gouts, in_shapes):
        return [None if gouts[0] is None else gouts[0] * lin.gains[0]] + [None] * (len(in_shapes) - 1)

    def jumps(self, attrs):
        return any(rule_for(s.op).boolean or rule_for(s.op).jumps(s.attrs) for s in attrs["body"].steps)

    def emit(self, node, attrs, const):
        """The body's nodes, their intermediate tensors renamed under this node's name (an op of the body may
        also run on its own elsewhere in the graph)."""
        body = attrs["body"]
        rename = {t: f"{node.name}/{t}" for s in body.steps for t in s.outputs if t != body.output}
        out = []
        for s in body.steps:
            original = onnx.NodeProto()
            original.CopyFrom(s.onnx_node)
            for n in rule_for(s.op).emit(original, s.attrs, const):
                n.input[:] = [rename.get(t, t) for t in n.input]
                n.output[:] = [rename.get(t, t) for t in n.output]
                n.name = f"{node.name}/{n.name}"
                out.append(n)
        return out

    def expressions(self, attrs, mus, vs, node):
        name = re.sub(r"\W+", "_", node)          # names the graph export parses back
        return ([sympy.Function(f"E_pointwise_{name}")(mus[0], vs[0])],
                [sympy.Function(f"Var_pointwise_{name}")(mus[0], vs[0])])
