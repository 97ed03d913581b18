"""The report (DESIGN §8): a JSON-serialisable summary of the compiled, annotated graph, and stdout tables."""
from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

from memse_compiler.ir import MemseGraph


def layer_hardware(layer) -> dict[str, Any]:
    """Counts of one lowered layer: tiles, converters (one ADC per output per tile, one DAC per driven row;
    the bias row is a fixed reference, not a DAC) and array utilisation."""
    g, o, j = layer.weight.shape
    tiles = layer.tiles
    return {"name": layer.name, "op": layer.op, "crossbar": layer.crossbar,
            "matrix": [g * o, j + int(layer.bias_row)], "groups": g,
            "tiles": tiles, "row_tiles": layer.row_tiles, "col_tiles": layer.col_tiles,
            "adcs": g * layer.row_tiles * o, "dacs": g * layer.col_tiles * j,
            "utilization": g * o * layer.rows / (tiles * layer.rows_per_tile * layer.outs_per_tile)}


def _clean(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, np.ndarray):
        return _clean(x.tolist())
    if isinstance(x, (np.floating, float)):
        x = float(x)
        return x if math.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    return x


def build_report(g: MemseGraph) -> dict[str, Any]:
    analysis = g.graph.get("analysis", {})
    power = g.graph.get("power", {})
    mc = g.graph.get("montecarlo", {})
    layers = []
    for layer in g.layers.values():
        row = layer_hardware(layer)
        row["mse"] = analysis.get("layers", {}).get(layer.name)
        if mc:
            row["mc_mse"] = mc.get("layers", {}).get(layer.name)
        row["power_w"] = power.get("layers", {}).get(layer.name)
        layers.append(row)
    outputs = {}
    for name in g.graph["outputs"]:
        a = analysis.get("outputs", {}).get(name, {})
        m = mc.get("outputs", {}).get(name, {})
        outputs[name] = {"mse": a.get("mse"), "bias2": a.get("bias2"), "variance": a.get("variance"),
                         "mc_mse": m.get("mse"), "mc_ci95": m.get("ci95"),
                         **{k: v for k, v in a.items() if k not in ("mse", "bias2", "variance")}}
        for key in ("top1_agreement", "accuracy", "topk_agreement", "topk_accuracy"):
            if key in m:
                outputs[name].update({f"mc_{key}": m[key], f"mc_{key}_ci95": m[f"{key}_ci95"]})
    timing = g.graph.get("timing", {})
    report = {
        "model": g.graph.get("model_path", g.graph.get("name")),
        "device": g.graph["device"].to_dict(),
        # a crossbar driven by several ops (its tiles and converters) is counted once
        "hardware": {k: sum(r[k] for r in layers if r["crossbar"] == r["name"]) for k in ("tiles", "adcs", "dacs")},
        "outputs": outputs,
        "layers": layers,
        "power": {"total_w": power.get("total_w"), **{k: v for k, v in power.items() if k not in ("layers",)}},
        "timing": {"analysis_s": timing.get("analysis_s"), "mc_s": timing.get("mc_s"),
                   "compile_s": timing.get("compile_s"), "passes": timing.get("passes", {})},
    }
    if g.graph.get("closed_form"):
        from passes.closed_form import closed_form_summary
        report["closed_form"] = {out: closed_form_summary(cf) for out, cf in g.graph["closed_form"].items()}
        if g.graph.get("closed_form_validity"):
            report["closed_form_validity"] = g.graph["closed_form_validity"]
    for key in ("optimization", "evaluation", "decisions"):
        if key in g.graph:
            report[key] = g.graph[key]
    return _clean(report)


def decision_lines(report: dict) -> list[str]:
    """One line per decision output taken off at load (memse_compiler/decisions.py): what the report shows for it."""
    def shown(d: dict) -> str:       # a TopK of every class is a ranking: its top-1 is what the report has
        k = report["outputs"].get(d["of"], {}).get("topk")
        return f"top-{k} agreement" if d["op"] == "TopK" and k == d["k"] else "top-1 agreement"
    return [f"output '{name}' is the {d['op']} of '{d['of']}' over its classes: the chip's decision is that output's "
            f"{shown(d)}" for name, d in report.get("decisions", {}).items()]


def write_report(report: dict, path: str) -> None:
    with open(path, "w") as fh:
        json.dump(report, fh, indent=2)


def _fmt(v, spec=".3e") -> str:
    return "-" if v is None else format(v, spec)


def hardware_table(report: dict) -> str:
    cols = ["layer", "op", "matrix", "tiles", "ADCs", "DACs", "util", "mse", "power_w"]
    def shared(r: dict) -> bool:       # the op drives an earlier op's crossbar (marked *, not in the totals)
        return r.get("crossbar", r["name"]) != r["name"]
    rows = [[r["name"], r["op"], f"{r['matrix'][0]}x{r['matrix'][1]}"]
            + [f"{r[k]}{'*' if shared(r) else ''}" for k in ("tiles", "adcs", "dacs")]
            + [f"{100 * r['utilization']:.0f}%", _fmt(r.get("mse")), _fmt(r.get("power_w"))]
            for r in report["layers"]]
    hw = report["hardware"]
    rows.append(["total", "", "", str(hw["tiles"]), str(hw["adcs"]), str(hw["dacs"]), "", "",
                 _fmt(report["power"].get("total_w"))])
    if any(r.get("mc_mse") is not None for r in report["layers"]):
        cols.insert(8, "mc_mse")
        for row, r in zip(rows, report["layers"] + [{}]):
            row.insert(8, _fmt(r.get("mc_mse")))
    count = sum(shared(r) for r in report["layers"])
    note = (f"\n* {count} ops drive the crossbar of an earlier op (a recurrent layer's steps, tied weights): "
            f"its tiles and converters count once") if count else ""
    return _table(cols, rows) + note


def outputs_table(report: dict) -> str:
    cols = ["output", "mse", "bias^2", "variance", "mc_mse", "mc_ci95", "rel.err"]
    rows = []
    for name, o in report["outputs"].items():
        ci = o.get("mc_ci95")
        rel = (o["mse"] / o["mc_mse"] - 1) if o.get("mse") is not None and o.get("mc_mse") else None
        rows.append([name, _fmt(o.get("mse")), _fmt(o.get("bias2")), _fmt(o.get("variance")),
                     _fmt(o.get("mc_mse")), "-" if not ci else f"[{ci[0]:.3e}, {ci[1]:.3e}]",
                     "-" if rel is None else f"{100 * rel:+.1f}%"])
    return _table(cols, rows)


def agreement_rows(report: dict, topk: bool = False) -> tuple[list[str], list[list[str]]]:
    """Classifier-shaped outputs (passes/agreement.py): the fraction of samples whose top-1 class a noisy chip keeps
    and, with labels, the float and the chip accuracy; analysis and Monte-Carlo. `topk`: the same for the outputs
    with a k (the float class kept among the chip's top k; the label among the top k). (columns, rows); no rows when
    no output has one."""
    def pct(v):
        return "-" if v is None else f"{100 * v:.2f}%"

    def ci(v):
        return "-" if not v else f"[{100 * v[0]:.2f}%, {100 * v[1]:.2f}%]"
    kept, accuracy = ("topk_agreement", "topk_accuracy") if topk else ("top1_agreement", "accuracy")
    rows, labelled = [], any(o.get(accuracy) is not None for o in report["outputs"].values())
    for name, o in report["outputs"].items():
        if o.get(kept) is None:
            continue
        row = [name] + ([str(o["topk"])] if topk else []) + \
            [pct(o[kept]), pct(o.get(f"mc_{kept}")), ci(o.get(f"mc_{kept}_ci95"))]
        if labelled:
            row += [pct(o.get(f"{accuracy}_float")), pct(o.get(accuracy)), pct(o.get(f"mc_{accuracy}")),
                    ci(o.get(f"mc_{accuracy}_ci95"))]
        rows.append(row)
    what = "top-k" if topk else "top-1"
    cols = ["output"] + (["k"] if topk else []) + [f"{what} kept", f"mc_{what} kept", "mc_ci95"] + \
        ([f"float {what} acc", f"chip {what} acc", f"mc_chip {what} acc", "mc_ci95"] if topk and labelled else
         ["float acc", "chip acc", "mc_chip acc", "mc_ci95"] if labelled else [])
    return cols, rows


def agreement_table(report: dict) -> str:
    """`agreement_rows` as text tables, top-1 then top-k ("" when there are none)."""
    tables = [_table(*table) for table in (agreement_rows(report), agreement_rows(report, topk=True)) if table[1]]
    return "\n\n".join(tables)


def _table(cols: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(c), *(len(r[i]) for r in rows)) if rows else len(c) for i, c in enumerate(cols)]
    line = "  ".join(c.ljust(w) for c, w in zip(cols, widths))
    out = [line, "-" * len(line)]
    out += ["  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in rows]
    return "\n".join(out)
