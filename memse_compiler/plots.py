"""Pictures of an annotated graph (matplotlib, Agg; PNG and SVG).

    layer_mse        MSE at each crossbar layer's output: analysis, and Monte-Carlo beside it when present
    error_budget     output MSE split by noise source (analysis "sources") and by layer ("layer_shares");
                     without them, the per-layer MSE shares
    mse_vs_sigma     output MSE vs programming noise sigma/G (the MemSE paper's first curve)
    mse_vs_g         output MSE vs the conductance range G (second curve: larger G, smaller error)
    mse_vs_levels    output MSE vs the number of conductance levels (how many does the device need?)
    agreement_vs_sigma  a classifier output's top-1 agreement (and accuracy, with labels) vs sigma/G, from the
                     closed form (passes/agreement.agreement_at)
    tiles_<layer>    the tile grid (row tile x column tile, per group) coloured by each tile's ADC output MSE

The three curves come from the closed form's `sweep(param, values)` when present (with a few full re-runs
beside it as check points when the compile time allows), else from re-running
the default pipeline on the graph's model and evaluation inputs with an overridden device (the analysis is
fast; results are kept in `g.graph["sweeps"][param] = {"values", "mse", "output"}` and reused).
Monte-Carlo points are drawn from `g.graph["montecarlo"]["sweep"]` when present:
``{"sigma" | "g_scale" | "levels": {"values": [...], "mse": [...], "ci95": [[lo, hi], ...] (optional)}}``, with
sigma in siemens and g_scale the factor applied to the device range g_max - g_min.
"""
from __future__ import annotations

import io
import re
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
from matplotlib import rcParams
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure
from matplotlib.ticker import ScalarFormatter

from memse_compiler.ir.feeds import reference_feed

rcParams.update({"font.size": 11, "axes.titlesize": 12, "axes.labelsize": 11, "legend.fontsize": 10,
                 "svg.fonttype": "none", "axes.grid": True, "grid.alpha": 0.3})

ANALYSIS_COLOR, MC_COLOR = "#1f77b4", "#d62728"
SIGMA_REL = np.geomspace(1e-3, 1e-1, 9)      # programming noise sigma / G swept from 0.1% to 10%
G_SCALE = np.geomspace(0.1, 1.0, 8)          # conductance range G as a fraction of g_max - g_min
LEVELS = 2 ** np.arange(2, 9)                # conductance levels 4 .. 256
RERUN_BUDGET_S = 4.0                         # per curve: full re-runs checking a closed form, if that cheap


def _short(name: str, width: int = 22) -> str:
    """A layer/tensor name fit for an axis label: '/net/net.3/Conv' -> 'net.3/Conv'."""
    name = re.sub(r"^/+", "", name)
    parts = name.split("/")
    if len(parts) > 2 and parts[0] in parts[1]:
        name = "/".join(parts[1:])
    return name if len(name) <= width else "..." + name[-(width - 3):]


def _log_if_wide(ax, values, axis: str = "y") -> None:
    v = np.asarray([x for x in values if x is not None], dtype=float)
    if v.size and np.all(v > 0) and v.max() / v.min() > 20:
        (ax.set_yscale if axis == "y" else ax.set_xscale)("log")


def _first_output(g) -> str | None:
    outs = g.graph.get("outputs") or list(g.graph.get("analysis", {}).get("outputs", {}))
    return outs[0] if outs else None


# ---- per-layer MSE -------------------------------------------------------------------------------------
def layer_mse_figure(g) -> Figure | None:
    analysis = g.graph.get("analysis", {}).get("layers", {})
    mc = g.graph.get("montecarlo", {}).get("layers", {})
    names = [n for n in analysis if analysis[n] is not None]
    if not names:
        return None
    fig = Figure(figsize=(max(6.0, 0.9 * len(names) + 2), 4.5), layout="constrained")
    ax = fig.add_subplot()
    x = np.arange(len(names))
    width = 0.4 if mc else 0.6
    a = [analysis[n] for n in names]
    ax.bar(x - (width / 2 if mc else 0), a, width, label="analysis", color=ANALYSIS_COLOR)
    values = list(a)
    if mc:
        m = [mc.get(n) for n in names]
        ax.bar(x + width / 2, [v if v is not None else 0 for v in m], width, label="Monte-Carlo", color=MC_COLOR)
        values += m
    _log_if_wide(ax, values)
    ax.set_xticks(x, [_short(n) for n in names], rotation=30 if len(names) > 4 else 0, ha="right"
                  if len(names) > 4 else "center")
    ax.set_ylabel("MSE at the layer output")
    ax.set_title("MSE per crossbar layer (vs float reference)")
    ax.legend()
    return fig


# ---- error budget --------------------------------------------------------------------------------------
def _budget_bars(ax, items: dict[str, float], total: float, title: str, color: str) -> None:
    items = {k: v for k, v in items.items() if v is not None and v > 0}
    names = sorted(items, key=items.get)
    vals = [items[k] for k in names]
    y = np.arange(len(names))
    ax.barh(y, vals, color=color)
    ax.set_yticks(y, [_short(n, 26) for n in names])
    ax.set_xlabel("contribution to the output MSE")
    ax.set_title(title)
    top = max(vals) if vals else 1.0
    for yi, v in zip(y, vals):
        ax.text(v + 0.01 * top, yi, f"{100 * v / total:.1f}%" if total > 0 else "", va="center", fontsize=10)
    ax.set_xlim(0, top * 1.18)
    ax.grid(axis="y", visible=False)


def error_budget_figure(g) -> Figure | None:
    out = _first_output(g)
    o = g.graph.get("analysis", {}).get("outputs", {}).get(out, {}) if out else {}
    total = o.get("mse") or 0.0
    sources, shares = dict(o.get("sources") or {}), dict(o.get("layer_shares") or {})
    if sources:
        rest = total - sum(v for v in sources.values() if v)
        if rest > 1e-9 * total:
            label = "systematic (bias^2)" if abs(rest - (o.get("bias2") or 0)) <= 1e-6 * total else "other"
            sources[label] = rest
    if not sources and not shares:
        layers = g.graph.get("analysis", {}).get("layers", {})
        if not layers:
            return None
        shares, total = {k: v for k, v in layers.items() if v}, sum(v for v in layers.values() if v)
        title_l = "per-layer MSE share (cumulative MSE at each layer)"
    else:
        title_l = "by layer (variance share)"
    panels = [p for p in ((sources, "by noise source"), (shares, title_l)) if p[0]]
    fig = Figure(figsize=(6.0 * len(panels) + 1, max(3.5, 0.45 * max(len(p[0]) for p in panels) + 1.8)),
                 layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (items, title), color in zip(axes, panels, ("#2ca02c", "#9467bd")):
        _budget_bars(ax, items, total, title, color)
    fig.suptitle(f"Error budget of output '{_short(out or '', 30)}': MSE {total:.3g}", fontsize=13)
    return fig


# ---- sweeps --------------------------------------------------------------------------------------------
def closed_form_parts(g, output: str | None = None) -> tuple[Any, Callable | None, dict | None]:
    """(expression, sweep, terms) of an output's closed form. `g.graph["closed_form"]` is either one record
    ({"expression", "sweep", "terms"}) or a dict output -> record (a dict or an object with those attributes,
    `terms` possibly a method). Missing parts are None."""
    cf = g.graph.get("closed_form")
    if not cf:
        return None, None, None
    if not (isinstance(cf, dict) and ("expression" in cf or "sweep" in cf)):
        output = output or _first_output(g)
        cf = cf.get(output) if isinstance(cf, dict) else None
        if cf is None:
            return None, None, None

    def get(key):
        return cf.get(key) if isinstance(cf, dict) else getattr(cf, key, None)
    terms = get("terms")
    try:
        terms = terms() if callable(terms) else terms
    except Exception:      # a record whose terms need arguments
        terms = None
    sweep = get("sweep")
    return get("expression"), (sweep if callable(sweep) else None), (terms if isinstance(terms, dict) else None)


def sweep_curve(g, param: str, values: np.ndarray, rerun: bool = False) -> np.ndarray:
    """Output MSE for `param` in {"sigma" (siemens), "g_scale" (factor on the compiled G), "levels"} at `values`:
    the closed form's sweep when the graph has one (and not `rerun`), else re-running the default pipeline."""
    values = np.asarray(values, dtype=float)
    sweep = closed_form_parts(g)[1]
    if sweep is not None and not rerun:
        return np.asarray(sweep(param, values), dtype=float)
    cache = g.graph.setdefault("sweeps", {}).setdefault(param, {"values": [], "mse": [],
                                                                "output": _first_output(g)})
    known = dict(zip(cache["values"], cache["mse"]))   # earlier re-runs (plots, then HTML: computed once)
    todo = [float(v) for v in values if float(v) not in known]
    if todo:
        from memse_compiler.pipeline import compile_model
        device, model = g.graph.get("device"), g.graph.get("model_path")
        x = reference_feed(g)
        if device is None or not hasattr(device, "with_overrides") or not model or x is None \
                or not Path(model).is_file():
            raise ValueError("the graph has neither a closed-form sweep nor model file, device and inputs "
                             "to re-run")
        c = device.conductance
        for v in todo:
            over = ({"programming_noise.sigma": v} if param == "sigma" else
                    {"conductance.levels": int(v)} if param == "levels"
                    else {"conductance.g_max": c.g_min + v * (c.g_max - c.g_min)})
            opts = {k: v for k, v in (g.graph.get("options") or {}).items() if k != "seed"}   # e.g. mode
            h, _ = compile_model(model, device.with_overrides(over), x, options=opts)
            known[v] = float(h.graph["analysis"]["outputs"][cache["output"]]["mse"])
        cache["values"] = sorted(known)
        cache["mse"] = [known[v] for v in cache["values"]]
    return np.asarray([known[float(v)] for v in values], dtype=float)


def _mc_points(ax, g, param: str, to_x: Callable[[np.ndarray], np.ndarray]) -> None:
    pts = (g.graph.get("montecarlo", {}).get("sweep") or {}).get(param)
    if not pts or not len(pts.get("values", [])):
        return
    x, y = to_x(np.asarray(pts["values"], dtype=float)), np.asarray(pts["mse"], dtype=float)
    ci = pts.get("ci95")
    if ci is not None and len(ci) == len(y):
        ci = np.asarray(ci, dtype=float)
        ax.errorbar(x, y, yerr=[y - ci[:, 0], ci[:, 1] - y], fmt="o", color=MC_COLOR, capsize=3,
                    label="Monte-Carlo (95% CI)")
    else:
        ax.plot(x, y, "o", color=MC_COLOR, label="Monte-Carlo")


def _check_points(g, param: str, values: np.ndarray, budget_s: float) -> tuple[np.ndarray, np.ndarray] | None:
    """A few full re-runs beside a closed-form curve (it is exact only at the compiled point), when the
    compile time allows `budget_s` seconds per curve."""
    if budget_s <= 0:
        return None
    xs, ys, t0 = [], [], time.perf_counter()
    try:
        # levels: on the curve's own (integer) points; else spread over the range
        inner = values[2:-1:2] if param == "levels" else np.geomspace(values[0], values[-1], 5)[1:-1]
        for v in (values[0], values[-1], *inner):
            if xs and (time.perf_counter() - t0) * (len(xs) + 1) / len(xs) > budget_s:
                break                                   # the next run would overrun the budget
            xs.append(v)
            ys.append(sweep_curve(g, param, [v], rerun=True)[0])
    except Exception as exc:
        warnings.warn(f"plot {param} check points skipped: {exc}")
    order = np.argsort(xs)
    return (np.asarray(xs)[order], np.asarray(ys)[order]) if len(xs) >= 2 else None


def _sweep_figure(g, param: str, rerun_budget_s: float = RERUN_BUDGET_S) -> Figure | None:
    device = g.graph.get("device")
    if device is None or not hasattr(device, "conductance"):
        return None
    c = device.conductance
    g0 = c.g_max - c.g_min
    closed = closed_form_parts(g)[1] is not None
    if param == "sigma":
        rel = np.geomspace(SIGMA_REL[0], SIGMA_REL[-1], 41) if closed else SIGMA_REL
        values, to_x, now = rel * g0, (lambda v: 100 * v / g0), device.programming_noise.sigma
        xlabel, title = "programming noise sigma / G  (%)", "Output MSE vs programming noise"
    elif param == "levels":
        values, to_x, now = LEVELS.astype(float), (lambda v: v), c.levels
        xlabel, title = "conductance levels", "Output MSE vs conductance levels"
    else:
        values = np.geomspace(G_SCALE[0], G_SCALE[-1], 41) if closed else G_SCALE
        to_x, now = (lambda v: 1e6 * v * g0), 1.0
        xlabel = f"conductance range G  (uS)   [sigma = {device.programming_noise.sigma * 1e6:.3g} uS]"
        title = "Output MSE vs conductance range G"
    try:
        mse = sweep_curve(g, param, values)
    except Exception as exc:   # a plot is never worth failing the compilation
        warnings.warn(f"plot {param} sweep skipped: {exc}")
        return None
    fig = Figure(figsize=(6.5, 4.5), layout="constrained")
    ax = fig.add_subplot()
    style = "-s" if not closed else "-o" if param == "levels" else "-"     # levels: only the integer points
    ax.plot(to_x(values), mse, style, color=ANALYSIS_COLOR, ms=4,
            label="analysis" + (" (closed form)" if closed else ""))
    check = _check_points(g, param, values, rerun_budget_s) if closed else None
    if check is not None:
        ax.plot(to_x(check[0]), check[1], "s", color="#ff7f0e", ms=6, label="full analysis (re-run)")
    _mc_points(ax, g, param, to_x)
    ax.set_xscale("log", base=2 if param == "levels" else 10)
    if param == "levels":
        ax.xaxis.set_major_formatter(ScalarFormatter())
    if np.all(mse > 0):
        ax.set_yscale("log")
    if now is not None:      # continuous conductances: no compiled number of levels
        ax.axvline(to_x(np.asarray(now)), color="gray", ls="--", lw=1, label="this device")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"output MSE ({_short(_first_output(g) or '', 20)})")
    ax.set_title(title)
    ax.legend()
    return fig


def agreement_figure(g) -> Figure | None:
    """Top-1 agreement (and accuracy, with labels) vs programming noise sigma/G from the closed form
    (passes/agreement.agreement_at: the logits' spread and mean shift scaled as the closed form scales them), the
    full analysis' value at the compiled point marked."""
    out = _first_output(g)
    device = g.graph.get("device")
    if out is None or out not in (g.graph.get("agreement") or {}) or out not in (g.graph.get("closed_form") or {}) \
            or not hasattr(device, "conductance"):
        return None
    from passes.agreement import agreement_at
    g0 = device.conductance.g_max - device.conductance.g_min
    values = np.geomspace(SIGMA_REL[0], SIGMA_REL[-1], 41) * g0
    try:
        curves = [agreement_at(g, out, sigma_v=float(v)) for v in values]
    except Exception as exc:   # a plot is never worth failing the compilation
        warnings.warn(f"plot agreement skipped: {exc}")
        return None
    fig = Figure(figsize=(6.5, 4.5), layout="constrained")
    ax = fig.add_subplot()
    entry = g.graph["analysis"]["outputs"][out]
    now = 100 * device.programming_noise.sigma / g0
    k = entry.get("topk")
    for key, label, color, style in (("top1_agreement", "top-1 kept", ANALYSIS_COLOR, "-"),
                                     ("accuracy", "chip accuracy", MC_COLOR, "-"),
                                     ("topk_agreement", f"top-{k} kept", ANALYSIS_COLOR, "--"),
                                     ("topk_accuracy", f"chip top-{k} accuracy", MC_COLOR, "--")):
        if key in curves[0]:
            ax.plot(100 * values / g0, [100 * c[key] for c in curves], style, color=color,
                    label=f"{label} (closed form)")
            ax.plot([now], [100 * entry[key]], "s", color=color, ms=6, label=f"{label} (full analysis)")
    if "accuracy_float" in entry:
        ax.axhline(100 * entry["accuracy_float"], color="gray", ls=":", lw=1, label="float accuracy")
    ax.axvline(now, color="gray", ls="--", lw=1, label="this device")
    ax.set_xscale("log")
    ax.set_xlabel("programming noise sigma / G  (%)")
    ax.set_ylabel(f"% of samples ({_short(out, 20)})")
    ax.set_title("Top-1 agreement vs programming noise")
    ax.legend()
    return fig


# ---- tile maps -----------------------------------------------------------------------------------------
def tile_mse(g, layer: str, groups: int, row_tiles: int, col_tiles: int) -> np.ndarray:
    """(G, R, C) MSE of each tile's ADC output edge (NaN where missing)."""
    out = np.full((groups, row_tiles, col_tiles), np.nan)
    for n, d in g.nodes(data=True):
        if d.get("kind") == "adc" and d.get("layer") == layer:
            vals = [e.get("mse") for *_, e in g.out_edges(n, data=True) if e.get("mse") is not None]
            if vals:
                out[d["group"], d["row_tile"], d["col_tile"]] = vals[0]
    return out


def _layer_shapes(g) -> dict[str, tuple[int, int, int]]:
    shapes = {}
    for name, layer in g.graph.get("layers", {}).items():
        get = layer.get if isinstance(layer, dict) else (lambda k, _l=layer: getattr(_l, k, None))
        if get("row_tiles") and get("col_tiles"):
            shapes[name] = (int(get("groups") or 1), int(get("row_tiles")), int(get("col_tiles")))
    return shapes


def tile_map_figure(g, layer: str, shape: tuple[int, int, int]) -> Figure:
    G, R, C = shape
    mse = tile_mse(g, layer, G, R, C)
    # stack the groups along the axis that keeps the picture closest to square
    stack_rows = abs(np.log((G * R) / C)) <= abs(np.log(R / (G * C)))
    grid = mse.reshape(G * R, C) if stack_rows else mse.transpose(1, 0, 2).reshape(R, G * C)
    fig = Figure(figsize=(min(12.0, 2.5 + 0.6 * grid.shape[1]), min(10.0, 2.0 + 0.5 * grid.shape[0])),
                 layout="constrained")
    ax = fig.add_subplot()
    finite = grid[np.isfinite(grid) & (grid > 0)]
    norm = (LogNorm(finite.min(), finite.max()) if finite.size and finite.max() / finite.min() > 20
            else Normalize(np.nanmin(grid) if np.isfinite(grid).any() else 0, np.nanmax(grid)
                           if np.isfinite(grid).any() else 1))
    im = ax.imshow(grid, cmap="viridis", norm=norm, aspect="auto", interpolation="nearest")
    ax.grid(False)
    fig.colorbar(im, ax=ax, label="ADC output MSE")
    if grid.size <= 64:
        for (i, j), v in np.ndenumerate(grid):
            if np.isfinite(v):
                ax.text(j, i, f"{v:.2g}", ha="center", va="center", fontsize=9,
                        color="white" if norm(v) < 0.6 else "black")
    if G > 1:
        for k in range(1, G):
            (ax.axhline(k * R - 0.5, color="white", lw=2) if stack_rows else ax.axvline(k * C - 0.5, color="white", lw=2))
        if G <= 16:     # name the group blocks on the opposite side
            centers = [k * (R if stack_rows else C) + ((R if stack_rows else C) - 1) / 2 for k in range(G)]
            sec = ax.secondary_yaxis("right") if stack_rows else ax.secondary_xaxis("top")
            sec.set_ticks(centers, [f"group {k}" for k in range(G)])
            sec.tick_params(length=0)
    gl = f" ({G} groups stacked {'vertically' if stack_rows else 'horizontally'})" if G > 1 else ""
    ax.set_xlabel("column tile" + ("" if stack_rows or G == 1 else " (per group)"))
    ax.set_ylabel("row tile" + ("" if not stack_rows or G == 1 else " (per group)"))
    if grid.shape[1] <= 20:
        ax.set_xticks(range(grid.shape[1]), [str(j % C) if not stack_rows else str(j) for j in range(grid.shape[1])])
    if grid.shape[0] <= 20:
        ax.set_yticks(range(grid.shape[0]), [str(i % R) if stack_rows else str(i) for i in range(grid.shape[0])])
    ax.set_title(f"Tiles of {_short(layer, 30)}: {G * R * C} tile(s){gl}")
    return fig


# ---- driver --------------------------------------------------------------------------------------------
def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "layer"


def figures(g, sweeps: bool = True, rerun_budget_s: float | None = None) -> dict[str, Figure]:
    """All figures of the graph, by file stem (figures that do not apply are left out). `rerun_budget_s`
    (default RERUN_BUDGET_S) bounds the time spent per curve on full re-runs beside a closed form."""
    budget = RERUN_BUDGET_S if rerun_budget_s is None else rerun_budget_s
    out: dict[str, Figure | None] = {"layer_mse": layer_mse_figure(g), "error_budget": error_budget_figure(g)}
    if sweeps and g.graph.get("analysis", {}).get("outputs"):
        out["mse_vs_sigma"] = _sweep_figure(g, "sigma", budget)
        out["mse_vs_g"] = _sweep_figure(g, "g_scale", budget)
        out["mse_vs_levels"] = _sweep_figure(g, "levels", budget)
        out["agreement_vs_sigma"] = agreement_figure(g)
    for name, shape in _layer_shapes(g).items():
        if np.isfinite(tile_mse(g, name, *shape)).any():
            out[f"tiles_{safe_name(name)}"] = tile_map_figure(g, name, shape)
    return {k: f for k, f in out.items() if f is not None}


def figure_svg(fig: Figure) -> str:
    """The figure as an inline <svg> element (no XML prolog)."""
    buf = io.StringIO()
    fig.savefig(buf, format="svg")
    text = buf.getvalue()
    return text[text.index("<svg"):]


def make_plots(g, outdir: str | Path, formats: tuple[str, ...] = ("png", "svg"), sweeps: bool = True,
               rerun_budget_s: float | None = None) -> list[Path]:
    """Write every figure to `outdir` in each format; returns the paths written."""
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    paths = []
    for stem, fig in figures(g, sweeps, rerun_budget_s).items():
        for fmt in formats:
            path = outdir / f"{stem}.{fmt}"
            fig.savefig(path, dpi=120 if fmt == "png" else None)
            paths.append(path)
    return paths
