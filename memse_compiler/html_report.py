"""One self-contained HTML page of a compiled graph: hardware summary, outputs and per-layer tables, error
budget, plots (inline SVG) and expressions. No network: the CSS is inline and nothing is fetched."""
from __future__ import annotations

import html
import json
import re
from pathlib import Path
from typing import Any

import sympy as sp

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;margin:24px auto;max-width:1180px;
color:#1d232a;background:#fff;line-height:1.45;padding:0 16px}
h1{font-size:1.6em;margin-bottom:.2em}h2{font-size:1.25em;border-bottom:2px solid #e3e8ee;padding-bottom:.2em;
margin-top:1.6em}.sub{color:#5b6773;margin-top:0}
table{border-collapse:collapse;margin:.6em 0;font-size:.93em}th,td{padding:4px 10px;border-bottom:1px solid #e3e8ee;
text-align:right;white-space:nowrap}th{background:#f4f6f8;text-align:center}td.l,th.l{text-align:left}
tr:hover td{background:#fafbfc}.cards{display:flex;flex-wrap:wrap;gap:12px;margin:.8em 0}
.card{border:1px solid #e3e8ee;border-radius:8px;padding:8px 14px;min-width:120px}
.card b{display:block;font-size:1.35em}.card span{color:#5b6773;font-size:.85em}
.plots{display:flex;flex-wrap:wrap;gap:16px}.plot{border:1px solid #e3e8ee;border-radius:8px;padding:6px;
max-width:100%;overflow:auto}.plot svg{max-width:100%;height:auto}
pre{background:#f6f8fa;border:1px solid #e3e8ee;border-radius:6px;padding:10px;overflow:auto;font-size:.82em}
code{font-size:.9em}details{margin:.5em 0}.bad{color:#b42318}.ok{color:#067647}
"""


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _num(v: Any, spec: str = ".4g") -> str:
    if v is None:
        return "-"
    if isinstance(v, (int, float)):
        return format(v, spec)
    return _e(v)


def _table(cols: list[str], rows: list[list[str]], left: int = 1, cls: str = "") -> str:
    head = "".join(f'<th class="l">{_e(c)}</th>' if i < left else f"<th>{_e(c)}</th>" for i, c in enumerate(cols))
    body = "".join("<tr>" + "".join(f'<td class="l">{v}</td>' if i < left else f"<td>{v}</td>"
                                    for i, v in enumerate(r)) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _cards(report: dict) -> str:
    hw, power = report.get("hardware", {}), report.get("power", {})
    timing = report.get("timing", {})
    items = [("tiles", hw.get("tiles")), ("ADCs", hw.get("adcs")), ("DACs", hw.get("dacs")),
             ("power (W)", power.get("total_w")), ("analysis (s)", timing.get("analysis_s")),
             ("Monte-Carlo (s)", timing.get("mc_s"))]
    return '<div class="cards">' + "".join(f"<div class='card'><b>{_num(v, '.3g')}</b><span>{_e(k)}</span></div>"
                                           for k, v in items if v is not None) + "</div>"


def _outputs(report: dict) -> str:
    rows = []
    for name, o in report.get("outputs", {}).items():
        ci = o.get("mc_ci95")
        rel = (o["mse"] / o["mc_mse"] - 1) if o.get("mse") is not None and o.get("mc_mse") else None
        rel_s = "-" if rel is None else f'<span class="{"ok" if abs(rel) <= 0.1 else "bad"}">{100 * rel:+.1f}%</span>'
        rows.append([_e(name), _num(o.get("mse")), _num(o.get("bias2")), _num(o.get("variance")),
                     _e(o.get("method", "-")), _num(o.get("mc_mse")),
                     "-" if not ci else f"[{ci[0]:.4g}, {ci[1]:.4g}]", rel_s])
    return _table(["output", "MSE", "bias²", "variance", "method", "MC MSE", "MC 95% CI", "analysis vs MC"], rows)


def _agreement(report: dict) -> str:
    """Top-1 (and top-k) agreement and accuracy of the classifier-shaped outputs (report.agreement_rows), if any."""
    from memse_compiler.report import agreement_rows, decision_lines
    tables = "".join(_table(cols, [[_e(v) for v in r] for r in rows])
                     for cols, rows in (agreement_rows(report), agreement_rows(report, topk=True)) if rows)
    decided = "".join(f"<p>{_e(line)}.</p>" for line in decision_lines(report))
    return ("<p>Classes a noisy chip keeps, and accuracy on the labels given:</p>" + tables + decided) if tables else ""


def _layers(report: dict) -> str:
    has_mc = any(r.get("mc_mse") is not None for r in report.get("layers", []))
    cols = ["layer", "op", "matrix", "tiles", "ADCs", "DACs", "utilization", "MSE"] + (["MC MSE"] if has_mc else [])
    cols.append("power (W)")
    rows = []
    for r in report.get("layers", []):
        m = r.get("matrix") or ["?", "?"]
        row = [_e(r["name"]), _e(r.get("op")), f"{m[0]}×{m[1]}", _num(r.get("tiles")), _num(r.get("adcs")),
               _num(r.get("dacs")), f"{100 * r['utilization']:.0f}%" if r.get("utilization") is not None else "-",
               _num(r.get("mse"))] + ([_num(r.get("mc_mse"))] if has_mc else [])
        rows.append(row + [_num(r.get("power_w"), ".3g")])
    return _table(cols, rows, left=2)


def _budget(report: dict) -> str:
    out = []
    for name, o in report.get("outputs", {}).items():
        src = o.get("sources") or {}
        total = o.get("mse") or 0.0
        if src and total:
            rows = [[_e(k), _num(v), f"{100 * v / total:.1f}%"] for k, v in sorted(src.items(), key=lambda kv: -(kv[1] or 0))
                    if v is not None]
            rest = total - sum(v for v in src.values() if v)
            if rest > 1e-9 * total:
                rows.append(["systematic (bias²)" if abs(rest - (o.get("bias2") or 0)) <= 1e-6 * total else "other",
                             _num(rest), f"{100 * rest / total:.1f}%"])
            out.append(f"<p>Output <code>{_e(name)}</code> by noise source (MSE {total:.4g}, of which bias² "
                       f"{_num(o.get('bias2'))}):</p>" + _table(["source", "MSE", "share"], rows))
    return "".join(out)


def _expr_block(title: str, expr: Any, as_sum: bool = False) -> str:
    """A titled <pre>: the ASCII pretty form, or for `as_sum` one term of the sum per line (long sums such as
    the closed form read better that way); the plain text form below it."""
    from memse_compiler.inspect_cli import pretty
    if as_sum and isinstance(expr, sp.Add):
        terms = sorted(expr.args, key=lambda t: (not t.is_number, str(t)))
        text = "  " + "\n+ ".join(str(t) for t in terms)
    else:
        text = pretty(expr, width=150) if isinstance(expr, sp.Basic) else str(expr)
    return f"<h3>{_e(title)}</h3><pre>{_e(text)}</pre>" + (
        f"<details><summary>as text</summary><pre>{_e(str(expr))}</pre></details>" if isinstance(expr, sp.Basic) else "")


def _expressions(g, max_edges: int = 4) -> str:
    parts = []
    from memse_compiler.plots import closed_form_parts
    for out in g.graph.get("outputs", []):
        expr, _, terms = closed_form_parts(g, out)
        if expr is not None:
            parts.append(_expr_block(f"Closed form of the MSE of output '{out}'", expr, as_sum=True))
        if terms:
            parts.append(_table(["term", "value at this device"],
                                [[_e(k), _num(v) if isinstance(v, (int, float)) else f"<code>{_e(v)}</code>"]
                                 for k, v in terms.items()], left=1))
    picked, seen = [], set()
    for u, v, d in sorted(g.edges(data=True), key=lambda e: -(e[2].get("mse") or 0.0)):
        kind = g.nodes[u].get("kind")                 # the worst edge of each kind: tile, ADC, adder, activation
        if d.get("mean_expr") is None or kind in seen or kind in ("input", "dac"):
            continue
        seen.add(kind)
        picked.append((u, v, d))
        if len(picked) == max_edges:
            break
    for u, v, d in picked:
        parts.append(f"<h3>Edge <code>{_e(u)}</code> → <code>{_e(v)}</code></h3>"
                     f"<p>MSE {_num(d.get('mse'))}, bias² {_num(d.get('bias2'))}, variance {_num(d.get('variance'))}</p>")
        for k in ("mean_expr", "var_expr"):
            if d.get(k) is not None:
                parts.append(_expr_block(k, d[k]).replace("<h3>", "<h4>").replace("</h3>", "</h4>"))
    return "".join(parts) or "<p>No expressions in this graph (was the analysis run?).</p>"


def _svg(fig) -> str:
    from memse_compiler.plots import figure_svg
    text = figure_svg(fig)
    return re.sub(r"<metadata>.*?</metadata>", "", text, flags=re.S)


def render_html(g, report: dict, figures: dict | None = None) -> str:
    """The page as a string. `figures` (name -> matplotlib Figure) defaults to `plots.figures(g)`."""
    if figures is None:
        from memse_compiler.plots import figures as make_figures
        figures = make_figures(g)
    dev = report.get("device", {})
    device_obj = g.graph.get("device")
    summary = device_obj.summary() if hasattr(device_obj, "summary") else dev.get("name", "")
    plots = "".join(f'<div class="plot" id="plot-{_e(name)}">{_svg(fig)}</div>' for name, fig in figures.items())
    sections = [
        f"<h1>memse-compiler report: {_e(Path(str(report.get('model') or 'model')).name)}</h1>",
        f'<p class="sub">model <code>{_e(report.get("model"))}</code> · device {_e(summary)}</p>',
        "<h2>Hardware</h2>", _cards(report),
        "<h2>Outputs</h2>", _outputs(report), _agreement(report), _budget(report),
        "<h2>Layers</h2>", _layers(report),
        "<h2>Plots</h2>", f'<div class="plots">{plots or "<p>No plots.</p>"}</div>',
        "<h2>Expressions</h2>", _expressions(g),
        "<h2>Device</h2>", f"<details><summary>resolved device</summary><pre>{_e(json.dumps(dev, indent=2))}</pre>"
                           "</details>",
    ]
    title = _e(f"memse report {Path(str(report.get('model') or 'model')).name}")
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{CSS}</style></head>'
            f"<body>{''.join(sections)}</body></html>\n")


def write_html(g, report: dict, path: str | Path, figures: dict | None = None) -> Path:
    """Write the self-contained HTML report of `g` (with `report` = report.build_report(g)) to `path`."""
    path = Path(path)
    path.write_text(render_html(g, report, figures), encoding="utf-8")
    return path
