"""Symbolic moments: every edge gets `mean_expr` / `var_expr` (sympy) in device symbols and opaque symbols
for upstream moments, weights and conductances; plus the lambdified templates the numeric pass evaluates.

Expressions are written one level deep (in the moments of the producer's inputs), never substituted layer
into layer (that explodes). Each template is lambdified once per shape and memoised (sympy does not cache).
Digital ops write their rule's expression (a closed form such as ReLU's, or an opaque E_f/Var_f); those are
evaluated by the rule's vectorised numpy code, which computes the same quantity.
"""
from __future__ import annotations

from functools import lru_cache

import sympy as sp

from memse_compiler.ir import (KIND_ADC, KIND_BIAS, KIND_CROSSBAR, KIND_DAC, KIND_INPUT, KIND_OUTPUT, KIND_SUM,
                               MemseGraph)
from memse_compiler.ir import stats
from memse_compiler.ir.ops import rule_for
from memse_compiler.ir.pass_base import Pass, PassContext

# ---- device symbols ----------------------------------------------------------------------------------
sigma = sp.Symbol("sigma", nonnegative=True)            # programming noise std (S)
sigma_rel = sp.Symbol("sigma_rel", nonnegative=True)    # state-dependent programming noise (relative)
sigma_r = sp.Symbol("sigma_r", nonnegative=True)        # read noise std (S)
g_min = sp.Symbol("g_min", nonnegative=True)
levels = sp.Symbol("L", positive=True)
b_dac = sp.Symbol("b_dac", positive=True)
b_adc = sp.Symbol("b_adc", positive=True)
DEVICE_SYMBOLS = (sigma, sigma_rel, sigma_r, g_min, levels, b_dac, b_adc)

RectMean = sp.Function("RectMean")      # E[max(g + s Z, 0)]
RectVar = sp.Function("RectVar")        # Var[max(g + s Z, 0)]
Contract = sp.Function("Contract")      # Contract(K, A, x): the layer's per-tile matrix product A x
TileSum = sp.Function("TileSum")        # TileSum(T, x): the sum of x over each row tile's rows
Quant = sp.Function("Q_L")              # snap to L evenly spaced conductances on [0, G]
Pos = sp.Function("Pos")                # max(., 0)
QMean = sp.Function("E_q")              # E[q(X)] for X ~ N(mu, v), step d
QVar = sp.Function("Var_q")


# ---- numeric templates (the analysis evaluates these) ---------------------------------------------------
_gp, _gm, _sp, _sm, _c = sp.symbols("Gp Gm s_p s_m c", positive=True)
_K, _T, _wbar, _wvar, _rvar, _mu, _v = sp.symbols("K T Wbar S R mu v")


def weight_stat_exprs(clip: bool) -> tuple[sp.Expr, sp.Expr]:
    if clip:
        return ((RectMean(_gp, _sp) - RectMean(_gm, _sm)) / _c, (RectVar(_gp, _sp) + RectVar(_gm, _sm)) / _c ** 2)
    return (_gp - _gm) / _c, (_sp ** 2 + _sm ** 2) / _c ** 2


_rect_cache: list[tuple] = []     # within one evaluation: RectMean and RectVar share rectified_moments


def _rectified(g, s):
    for cg, cs, m in _rect_cache:    # identity: the lambdified code passes the same arrays to both
        if cg is g and cs is s:
            return m
    m = stats.rectified_moments(g, s)
    _rect_cache[:] = _rect_cache[-1:] + [(g, s, m)]
    return m


def _rect_mean(g, s):
    return _rectified(g, s)[0]


def _rect_var(g, s):
    return _rectified(g, s)[1]


@lru_cache(maxsize=None)
def weight_stat_function(clip: bool):
    """(G+, G-, s+, s-, c) -> (W_bar, S): mean and variance of the programmed effective weight."""
    fn = sp.lambdify([_gp, _gm, _sp, _sm, _c], list(weight_stat_exprs(clip)),
                     modules=[{"RectMean": _rect_mean, "RectVar": _rect_var}, "numpy"], cse=True)

    def evaluate(*args):
        try:
            return fn(*args)
        finally:
            _rect_cache.clear()          # do not keep a layer's conductance arrays alive
    return evaluate


def partial_sum_exprs() -> tuple[sp.Expr, sp.Expr, sp.Expr, sp.Expr]:
    """(mean, variance, second-order programming term S v, tile sum of E[x^2]) of every tile's partial sums.
    Read noise R depends only on the output's scale c, so its term is R times the tile's sum of E[x^2]: a row
    sum, not a matrix product (returned too: the read-noise injection and its closed-form unit derive from it)."""
    mean = Contract(_K, _wbar, _mu)
    prog2 = Contract(_K, _wvar, _v)
    tiles = TileSum(_T, _mu ** 2 + _v)
    var = Contract(_K, _wbar ** 2, _v) + Contract(_K, _wvar, _mu ** 2) + prog2 + _rvar * tiles
    return mean, var, prog2, tiles


@lru_cache(maxsize=None)
def partial_sum_function():
    """(K, T, W_bar, S, R, mu, v) -> partial_sum_exprs() evaluated; K = layer.partial_sums, T = layer.tile_sums,
    R per output shaped (G, 1, O) so it broadcasts over (N, P, G, R, O)."""
    return sp.lambdify([_K, _T, _wbar, _wvar, _rvar, _mu, _v], list(partial_sum_exprs()),
                       modules=[{"Contract": lambda k, a, x: k(x, a), "TileSum": lambda t, x: t(x)}, "numpy"],
                       cse=True)


# ---- per-edge display expressions ----------------------------------------------------------------------
def _tensor_syms(t: str) -> tuple[sp.Symbol, sp.Symbol]:
    return sp.Symbol(f"mu[{t}]"), sp.Symbol(f"v[{t}]")


def layer_symbols(name: str) -> dict[str, sp.Symbol]:
    return {"G": sp.Symbol(f"G_{name}", positive=True), "Wmax": sp.Symbol(f"Wmax_{name}", positive=True),
            "W": sp.Symbol(f"W_{name}"), "R_dac": sp.Symbol(f"R_dac_{name}", positive=True)}


@lru_cache(maxsize=1024)
def _layer_weight_exprs(name: str, relative: bool, clip: bool) -> tuple[sp.Expr, sp.Expr, sp.Expr]:
    """(W_bar, S, R) of a layer in device symbols: the same for every tile of the layer, so built once
    (ResNet-18 has 1514 tiles); each tile only substitutes them into the small partial-sum template."""
    s = layer_symbols(name)
    g_plus = g_min + Quant(s["G"] * Pos(s["W"]) / s["Wmax"], levels)
    g_minus = g_min + Quant(s["G"] * Pos(-s["W"]) / s["Wmax"], levels)
    std = sp.sqrt(sigma ** 2 + (sigma_rel * g_plus) ** 2) if relative else sigma
    std_m = sp.sqrt(sigma ** 2 + (sigma_rel * g_minus) ** 2) if relative else sigma
    w_bar, w_var = weight_stat_exprs(clip)
    c = s["G"] / s["Wmax"]
    subs = {_gp: g_plus, _gm: g_minus, _sp: std, _sm: std_m, _c: c}
    return w_bar.xreplace(subs), w_var.xreplace(subs), 2 * sigma_r ** 2 / c ** 2


def crossbar_exprs(layer, device, x: str, tile: tuple[int, int, int]) -> tuple[sp.Expr, sp.Expr]:
    """Partial-sum moments of one tile, in device symbols."""
    pn = device.programming_noise
    w_bar, w_var, r = _layer_weight_exprs(layer.name, bool(pn.relative), bool(pn.clip_at_zero))
    mean, var, _, _ = partial_sum_exprs()
    mu, v = _tensor_syms(x)
    k = sp.Symbol(f"K_{layer.name}[{tile[0]},{tile[1]},{tile[2]}]")
    subs = {_K: k, _T: k, _wbar: w_bar, _wvar: w_var, _rvar: r, _mu: mu, _v: v}
    return mean.xreplace(subs), var.xreplace(subs)


def quantizer_exprs(x: str, full_range: sp.Expr, bits: sp.Expr, signed: bool) -> tuple[sp.Expr, sp.Expr]:
    mu, v = _tensor_syms(x)
    step = full_range / (2 ** (bits - 1) - 1 if signed else 2 ** bits - 1)
    return QMean(mu, v, step), QVar(mu, v, step)


class SymbolicMoments(Pass):
    """Annotate every edge with `mean_expr` and `var_expr`."""
    name = "symbolic_moments"

    def apply(self, g: MemseGraph, ctx: PassContext) -> MemseGraph:
        exprs: dict[str, tuple[sp.Expr, sp.Expr]] = {}
        consts = g.graph["constants"]
        for node, d in g.nodes(data=True):
            kind = d["kind"]
            if kind == KIND_INPUT:
                exprs[d["outputs"][0]] = _tensor_syms(d["outputs"][0])[0], sp.Integer(0)
            elif kind == KIND_DAC:
                layer = g.layers[d["layer"]]
                if layer.dac_bits is None:
                    exprs[d["outputs"][0]] = _tensor_syms(d["inputs"][0])
                else:
                    exprs[d["outputs"][0]] = quantizer_exprs(d["inputs"][0], layer_symbols(layer.name)["R_dac"],
                                                             b_dac, layer.dac_signed)
            elif kind == KIND_CROSSBAR:
                layer = g.layers[d["layer"]]
                exprs[d["outputs"][0]] = crossbar_exprs(layer, ctx.device, d["inputs"][0],
                                                        (d["group"], d["row_tile"], d["col_tile"]))
            elif kind == KIND_ADC:
                layer = g.layers[d["layer"]]
                if layer.adc_bits is None:
                    exprs[d["outputs"][0]] = _tensor_syms(d["inputs"][0])
                else:
                    r = sp.Symbol(f"R_adc_{layer.name}[{d['group']},{d['row_tile']},{d['col_tile']}]", positive=True)
                    exprs[d["outputs"][0]] = quantizer_exprs(d["inputs"][0], r, b_adc, True)
            elif kind == KIND_SUM:
                # each output column adds its row tiles' conversions (independent ADC errors); column
                # tiles and groups are placed side by side
                blocks: dict[tuple, list] = {}
                for t in d["inputs"]:
                    p = g.nodes[g.producer(t)]
                    blocks.setdefault((p["group"], p["col_tile"]), []).append(_tensor_syms(t))
                sums = [(sp.Add(*[m for m, _ in b]), sp.Add(*[v for _, v in b])) for _, b in sorted(blocks.items())]
                if len(sums) == 1:
                    exprs[d["outputs"][0]] = sums[0]
                else:
                    cat = sp.Function("Concat")
                    exprs[d["outputs"][0]] = cat(*[m for m, _ in sums]), cat(*[v for _, v in sums])
            elif kind == KIND_BIAS:
                mu, v = _tensor_syms(d["inputs"][0])
                exprs[d["outputs"][0]] = mu + sp.Symbol(f"b_{d['layer']}"), v
            elif kind != KIND_OUTPUT:
                mus, vs = [], []
                for t in d["inputs"]:
                    if t in consts:
                        mus.append(sp.Symbol(f"const[{t}]"))
                        vs.append(sp.Integer(0))
                    else:
                        m, v = _tensor_syms(t)
                        mus.append(m)
                        vs.append(v)
                means, variances = rule_for(d["op"]).expressions(d["attrs"], mus, vs, node)
                for t, m, v in zip(d["outputs"], means, variances):
                    exprs[t] = (m, v)
        for u, v, data in g.edges(data=True):
            data["mean_expr"], data["var_expr"] = exprs[data["tensor"]]
        return g
