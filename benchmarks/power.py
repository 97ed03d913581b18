"""MSE vs power: uniform conductance range vs per-layer optimised G_l (and ADC bits), DESIGN §7.

Run by hand:  python benchmarks/power.py [--models cnn rescnn] [--fractions 0.2 0.3 0.5 0.75]
                                        [--mc-chips 200] [--mc-points 2] [--device rram --set adc.bits=6]

For each example model the budget sweeps the G-dependent part of the compiled power: budget = converters +
g_min floors + f * (crossbar power at the full window - floors), f in --fractions. At each budget it reports
the best uniform G (largest single G meeting the budget), the optimised per-layer G_l, and the optimised G_l +
per-layer ADC bits (3..10), all on the full analysis; at --mc-points budgets also a Monte-Carlo check
(memse_compiler.montecarlo, if present) of the uniform and optimised chips. Prints the table and writes
benchmarks/results/power.md and benchmarks/results/power_<model>.png.
"""
from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from device_models import load_device  # noqa: E402
from memse_compiler import compile_model, tune_allocator  # noqa: E402
from memse_compiler.ir.errors import MemseInputError  # noqa: E402
from passes.map_conductances import map_layer  # noqa: E402
from passes.optimize import optimize  # noqa: E402
from passes.power import PowerPass  # noqa: E402

tune_allocator()     # as the CLI does (memse_compiler/allocator.py)

RESULTS = ROOT / "benchmarks" / "results"
X = np.load(ROOT / "examples" / "digits_inputs.npy")


def budget_at(g, frac: float) -> float:
    p = g.graph["power"]
    fixed = p["breakdown"]["adc"] + p["breakdown"]["dac"] + sum(p["fixed_w"].values())
    return fixed + frac * (p["total_w"] - fixed)


def mc_mse(g, dev, chips: int, g_uniform: float | None = None) -> tuple[float, list] | None:
    """Monte-Carlo MSE of the graph's chip (or of the uniform-G chip) with its 95% CI; None if unavailable."""
    try:
        from memse_compiler.montecarlo import run_montecarlo
    except ImportError:
        return None
    h = g
    if g_uniform is not None:
        h = copy.deepcopy(g)
        for layer in h.layers.values():
            layer.g_range = np.full(layer.w_max.shape, g_uniform)
            map_layer(layer, dev)
    out = h.graph["outputs"][0]
    r = run_montecarlo(h, dev, X, chips=chips, precision=0.03, progress=False)["outputs"][out]
    return r["mse"], r["ci95"]


def run_model(name: str, dev, fractions: list[float], mc_chips: int, mc_points: int) -> list[dict]:
    t0 = time.perf_counter()
    g0, ctx = compile_model(ROOT / "examples" / f"{name}_digits.onnx", dev, X)
    g0 = PowerPass().apply(g0, ctx)
    compile_s = time.perf_counter() - t0
    out = g0.graph["outputs"][0]
    print(f"{name}: compiled in {compile_s:.1f} s, MSE {g0.graph['analysis']['outputs'][out]['mse']:.4g} at "
          f"{g0.graph['power']['total_w']:.4g} W")
    rows = []
    mc_at = set(np.linspace(0, len(fractions) - 1, min(mc_points, len(fractions))).round().astype(int))
    for i, f in enumerate(fractions):
        budget = budget_at(g0, f)
        row = {"model": name, "fraction": f, "budget_w": budget}
        for key, bits in (("opt", False), ("opt_bits", True)):
            g = copy.deepcopy(g0)
            try:
                r = optimize(g, ctx, budget, opt_adc_bits=bits)
            except MemseInputError as exc:
                print(f"  f={f}: {exc}")
                row[key] = None
                continue
            row[key] = {"mse": r["optimized"]["mse"], "power_w": r["optimized"]["power_w"], "time_s": r["time_s"],
                        "evaluations": r["evaluations"], "bits": [x["adc_bits"] for x in r["layers"]],
                        "g": [x["g_range"] for x in r["layers"]]}
            if not bits:
                row["uniform"] = r["uniform"]
                if i in mc_at and mc_chips:
                    row["mc_opt"] = mc_mse(g, dev, mc_chips)
                    if r["uniform"]["g_range"] is not None:
                        row["mc_uniform"] = mc_mse(g, dev, mc_chips, r["uniform"]["g_range"])
        rows.append(row)
        print("  " + fmt_row(row))
    return rows


def _e(v, spec=".3e") -> str:
    return "-" if v is None else format(v, spec)


def _mc(v) -> str:
    return "-" if not v else f"{v[0]:.3e} [{v[1][0]:.2e}, {v[1][1]:.2e}]" if v[1] else f"{v[0]:.3e}"


COLS = ["model", "budget W", "uniform G uS", "uniform MSE", "optimised MSE", "opt/uniform", "opt power W",
        "opt time s", "opt+bits MSE", "opt+bits ADC bits", "MC uniform", "MC optimised"]


def cells(row: dict) -> list[str]:
    u, o, ob = row.get("uniform") or {}, row.get("opt") or {}, row.get("opt_bits") or {}
    ratio = o["mse"] / u["mse"] if o and u.get("mse") else None
    return [row["model"], _e(row["budget_w"], ".4e"), _e(u.get("g_range") and u["g_range"] * 1e6, ".3g"),
            _e(u.get("mse"), ".4g"), _e(o.get("mse"), ".4g"), _e(ratio, ".3f"), _e(o.get("power_w"), ".4e"),
            _e(o.get("time_s"), ".1f"), _e(ob.get("mse"), ".4g"), ",".join(map(str, ob.get("bits", []))) or "-",
            _mc(row.get("mc_uniform")), _mc(row.get("mc_opt"))]


def fmt_row(row: dict) -> str:
    return "  ".join(f"{c}={v}" for c, v in zip(COLS[1:], cells(row)[1:]))


def markdown(rows: list[dict], device: str) -> str:
    lines = ["# MSE vs power: uniform vs per-layer optimised conductance range", "",
             f"Device `{device}`, 200 digits inputs, output `logits`. Budget = converters + g_min floors + f x the "
             "G-dependent crossbar power at the full window. `uniform`: the largest single G meeting the budget; "
             "`optimised`: per-layer G_l (KKT start + local search on the full analysis); `opt+bits`: also per-layer "
             "ADC bits (3..10). Every power is the exact power pass (input noise included) and meets the budget. "
             "MC: Monte-Carlo MSE of the same chips with its 95% CI. A `-` uniform: no single G meets the budget "
             "(below some G the noisier inputs draw more read power than the smaller conductances save).", "",
             "| " + " | ".join(COLS) + " |", "|" + "---|" * len(COLS)]
    lines += ["| " + " | ".join(cells(r)) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], name: str, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = [r for r in rows if r["model"] == name]
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for key, label, style in (("uniform", "uniform G", "o--"), ("opt", "optimised G_l", "s-"),
                              ("opt_bits", "optimised G_l + ADC bits", "^-")):
        pts = [(r[key]["power_w"], r[key]["mse"]) for r in rows if r.get(key) and r[key].get("mse") is not None]
        if pts:
            ax.plot([p * 1e6 for p, _ in pts], [m for _, m in pts], style, label=label)
    for key, color in (("mc_uniform", "C0"), ("mc_opt", "C1")):
        for r in rows:
            v = r.get(key)
            if v and v[1]:
                p = (r["uniform"] if key == "mc_uniform" else r["opt"])["power_w"] * 1e6
                ax.errorbar([p], [v[0]], yerr=[[v[0] - v[1][0]], [v[1][1] - v[0]]], fmt="x", color=color,
                            capsize=3, label=f"Monte-Carlo ({'uniform' if key == 'mc_uniform' else 'optimised'})")
    handles, labels = ax.get_legend_handles_labels()
    uniq = dict(zip(labels, handles))
    ax.legend(uniq.values(), uniq.keys())
    ax.set_yscale("log")
    ax.set_xlabel("power (uW)")
    ax.set_ylabel("output MSE (logits)")
    ax.set_title(f"{name}: MSE vs power budget")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["cnn", "rescnn"])
    ap.add_argument("--fractions", nargs="+", type=float, default=[0.2, 0.3, 0.5, 0.75])
    ap.add_argument("--device", default="rram")
    ap.add_argument("--set", dest="overrides", action="append", default=None)
    ap.add_argument("--mc-chips", type=int, default=200)
    ap.add_argument("--mc-points", type=int, default=2)
    args = ap.parse_args(argv)
    overrides = args.overrides if args.overrides is not None else ["adc.bits=6"]
    dev = load_device(args.device, overrides)
    rows = []
    for name in args.models:
        rows += run_model(name, dev, args.fractions, args.mc_chips, args.mc_points)
    from memse_compiler.report import _table
    print()
    print(_table(COLS, [cells(r) for r in rows]))
    RESULTS.mkdir(parents=True, exist_ok=True)
    label = f"{args.device} " + " ".join(overrides)
    (RESULTS / "power.md").write_text(markdown(rows, label))
    for name in args.models:
        plot(rows, name, RESULTS / f"power_{name}.png")
    print(f"\nwrote {RESULTS / 'power.md'} and power_<model>.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
