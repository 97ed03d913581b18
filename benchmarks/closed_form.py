"""Validity of the closed form away from the compiled point: for each digits model, the fitted closed form
(passes/closed_form.py) at other device points against a full re-analysis there.

Run by hand:  python benchmarks/closed_form.py [--inputs 200] [--set KEY=VALUE ...] [--out FILE]

Points: programming sigma x0.5 .. x3, every layer's G x0.25 .. x0.75 (same levels: the weights' level indices
stay, clipping changes), sigma and G both x0.5 (the same sigma/G; only clipping changes), and the conductance
levels x0.5 and x0.25 (the quantization term is the uniform Delta^2/12 model: the weak direction). Prints the relative error per point and its mean / max, and writes a markdown table.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

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
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "closed_form.md"))
    args = ap.parse_args()
    x = np.load(ROOT / "examples" / "digits_inputs.npy")[: args.inputs]
    dev = load_device("rram", args.set)
    head = ["model"] + [f"{kind} x{k}" for kind, k in POINTS] + ["mean abs", "max abs"]
    rows, errors = [], []
    for name in MODELS:
        path = str(ROOT / "examples" / f"{name}_digits.onnx")
        g, _ = compile_model(path, dev, x)
        cf = g.graph["closed_form"]["logits"]
        errs = []
        for kind, k in POINTS:
            over, cf_args = point(dev, cf, kind, k)
            g2, _ = compile_model(path, dev.with_overrides(over), x)
            errs.append(cf.mse(**cf_args) / g2.graph["analysis"]["outputs"]["logits"]["mse"] - 1)
        errors.append(errs)
        a = np.abs(errs)
        rows.append([name] + [f"{100 * e:+.1f} %" for e in errs] + [f"{100 * a.mean():.1f} %", f"{100 * a.max():.1f} %"])
        print(" ".join(f"{c:>12}" for c in rows[-1]))
    a = np.abs(np.array(errors))
    noise = [i for i, (kind, _) in enumerate(POINTS) if kind != "levels"]
    lv = [i for i, (kind, _) in enumerate(POINTS) if kind == "levels"]
    summary = (f"sigma and G, {a[:, noise].size} points: mean abs {100 * a[:, noise].mean():.1f} %, max abs "
               f"{100 * a[:, noise].max():.1f} %; levels, {a[:, lv].size} points: mean abs {100 * a[:, lv].mean():.1f} %, "
               f"max abs {100 * a[:, lv].max():.1f} %")
    print(summary)
    lines = ["# Closed form vs full re-analysis away from the compiled point", "",
             f"- Command: `python benchmarks/closed_form.py{''.join(' --set ' + s for s in args.set)}` "
             f"({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})",
             f"- Device: bundled `rram`{' with ' + ', '.join(args.set) if args.set else ''}; the first "
             f"{len(x)} of `examples/digits_inputs.npy`; output `logits`",
             "- Each cell: closed form (fitted once at the compiled point) / full analysis re-run at the point - 1",
             "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    lines += ["", summary, ""]
    Path(args.out).write_text("\n".join(lines))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
