"""Validity of the closed form away from the compiled point: for each digits model, the fitted closed form
(passes/closed_form.py) at other device points against a full re-analysis there.

Run by hand:  python benchmarks/closed_form.py [--inputs 200] [--set KEY=VALUE ...] [--out FILE]
              python benchmarks/closed_form.py --resnet    (the ResNet-18 shape instead: ~30 s per point)

Points: programming sigma x0.5 .. x3, every layer's G x0.25 .. x0.75 (same levels: the weights' level indices
stay, clipping changes), sigma and G both x0.5 (the same sigma/G; only clipping changes), and the conductance
levels x0.5 and x0.25 (the weights re-rounded and the noiseless chip run: passes/closed_form_levels.py; the
ResNet-18 shape keeps the uniform Delta^2/12 model). Prints the relative error per point and its mean / max, and
writes a markdown table.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from device_models import load_device  # noqa: E402
from memse_compiler import compile_model, tune_allocator  # noqa: E402

tune_allocator()     # as the CLI does (memse_compiler/allocator.py)

MODELS = ("mlp", "cnn", "rescnn")
POINTS = [("sigma", 0.5), ("sigma", 0.75), ("sigma", 1.5), ("sigma", 2.0), ("sigma", 3.0),
          ("G", 0.25), ("G", 0.5), ("G", 0.75), ("sigma & G", 0.5), ("levels", 0.5), ("levels", 0.25)]


def point(dev, cf, kind: str, k: float) -> tuple[dict, dict]:
    """(device override, closed-form arguments) of one point."""
    s0, cond = dev.programming_noise.sigma, dev.conductance
    g_args = {"g_ranges": {n: v * k for n, v in cf.g0.items()}}
    if kind == "sigma":
        return {"programming_noise.sigma": s0 * k}, {"sigma_v": s0 * k}
    if kind == "G":
        return {"conductance.g_max": cond.g_min + k * (cond.g_max - cond.g_min)}, g_args
    if kind == "levels":
        n = int(cond.levels * k)
        return {"conductance.levels": n}, {"levels_v": n}
    # both: sigma and G scaled together, sigma/G kept
    return ({"programming_noise.sigma": s0 * k, "conductance.g_max": cond.g_min + k * (cond.g_max - cond.g_min)},
            {"sigma_v": s0 * k, **g_args})


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--inputs", type=int, default=200)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--resnet", action="store_true",
                    help="the ResNet-18 shape (benchmarks/models.py, batch 4 of seeded uniform inputs) instead")
    ap.add_argument("--points", default=None,
                    help="only these points, comma-separated as in the table's head (e.g. 'sigma x2.0,G x0.5')")
    ap.add_argument("--out", default=None, help="markdown file (default benchmarks/results/closed_form[_resnet].md)")
    args = ap.parse_args()
    out = args.out or str(ROOT / "benchmarks" / "results" / f"closed_form{'_resnet' if args.resnet else ''}.md")
    if args.resnet:
        from models import resnet18
        models = {"resnet18-shape": resnet18()}
        x = np.random.default_rng(0).random((4, 3, 224, 224)).astype(np.float32)
        inputs = "batch 4 of uniform [0,1) 3x224x224 (seed 0)"
    else:
        models = {name: str(ROOT / "examples" / f"{name}_digits.onnx") for name in MODELS}
        x = np.load(ROOT / "examples" / "digits_inputs.npy")[: args.inputs]
        inputs = f"the first {len(x)} of `examples/digits_inputs.npy`"
    dev = load_device("rram", args.set)
    points = POINTS if not args.points else [(kind, k) for kind, k in POINTS
                                               if f"{kind} x{k}" in {p.strip() for p in args.points.split(",")}]
    head = ["model"] + [f"{kind} x{k}" for kind, k in points] + ["mean abs", "max abs"]
    rows, errors = [], []
    for name, path in models.items():
        g, _ = compile_model(path, dev, x)
        output = g.graph["outputs"][0]
        cf = g.graph["closed_form"][output]
        errs = []
        for kind, k in points:
            over, cf_args = point(dev, cf, kind, k)
            g2, _ = compile_model(path, dev.with_overrides(over), x)
            errs.append(cf.mse(**cf_args) / g2.graph["analysis"]["outputs"][output]["mse"] - 1)
            print(f"  {name} {kind} x{k}: {100 * errs[-1]:+.1f} %", file=sys.stderr)
        errors.append(errs)
        a = np.abs(errs)
        rows.append([name] + [f"{100 * e:+.1f} %" for e in errs] + [f"{100 * a.mean():.1f} %", f"{100 * a.max():.1f} %"])
        print(" ".join(f"{c:>12}" for c in rows[-1]))
    a = np.abs(np.array(errors))
    noise = [i for i, (kind, _) in enumerate(points) if kind != "levels"]
    lv = [i for i, (kind, _) in enumerate(points) if kind == "levels"]
    def stats(cols: list[int], label: str) -> str:
        sub = a[:, cols]
        return f"{label}, {sub.size} points: mean abs {100 * sub.mean():.1f} %, max abs {100 * sub.max():.1f} %"
    summary = "; ".join(stats(cols, label) for cols, label in [(noise, "sigma and G"), (lv, "levels")] if cols)
    print(summary)
    lines = ["# Closed form vs full re-analysis away from the compiled point", "",
             f"- Command: `python benchmarks/closed_form.py{' --resnet' if args.resnet else ''}{''.join(' --set ' + s for s in args.set)}` "
             f"({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})",
             f"- Device: bundled `rram`{' with ' + ', '.join(args.set) if args.set else ''}; inputs: {inputs}; "
             f"output `{output}`",
             "- Each cell: closed form (fitted once at the compiled point) / full analysis re-run at the point - 1",
             "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    lines += ["", summary, ""]
    Path(out).write_text("\n".join(lines))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
