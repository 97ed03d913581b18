"""Accuracy of the analysis against the Monte-Carlo reference (DESIGN §9 quality bar: analytic output MSE
within 10% of Monte-Carlo, on MLP / CNN with pooling / residual CNN with batch-norm, sigma/G 0.1%..5%,
levels 16..256, with and without DAC/ADC, with tiling).

Run by hand:
    python benchmarks/accuracy.py            # full grid, writes benchmarks/results/accuracy.md (~5-15 min, 2 cores)
    python benchmarks/accuracy.py --quick    # 4 device points, 50 inputs, looser MC; prints only (no file)
    options: --models mlp,cnn --points rram,sigma=1e-7 --inputs N --precision P --max-chips C --out FILE

Device grid: one factor at a time around the bundled "rram" device (g_min 1e-6, g_max 1e-4, 64 levels,
programming sigma 2e-6 = 2% of the window, read noise 2e-7, 8-bit ADC, no DAC, 128x128 tiles), plus three
combined corners. For every (model, point): the default ("refined") analysis MSE of the output "logits", the
"diagonal" analysis MSE (element-wise propagation, to show how far it is off), and the Monte-Carlo MSE with
its 95% CI, simulated until the CI half-width is <= `--precision` (default 3%) of the mean, at least
`--min-chips` (default 100) and at most `--max-chips` chips (rows that hit the cap are marked). rel err = analysis/MC - 1.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from device_models import load_device  # noqa: E402
from memse_compiler import compile_model, tune_allocator  # noqa: E402
from memse_compiler.montecarlo import run_montecarlo  # noqa: E402

tune_allocator()     # as the CLI does (memse_compiler/allocator.py)

MODELS = {"mlp": "examples/mlp_digits.onnx", "cnn": "examples/cnn_digits.onnx",
          "rescnn": "examples/rescnn_digits.onnx", "attn": "examples/attn_digits.onnx",
          "vit": "examples/vit_digits.onnx", "lstm": "examples/lstm_digits.onnx", "gru": "examples/gru_digits.onnx",
          "tokens": "examples/tokens_digits.onnx"}
INPUTS = "examples/digits_inputs.npy"
TOKENS = "examples/digits_tokens.npy"      # the same images as int64 ids, for tokens_digits
OUTPUT = "logits"

# (name, overrides on top of the bundled "rram" device, what the point varies)
POINTS: list[tuple[str, list[str], str]] = [
    ("rram", [], "base: sigma 2e-6 (2%), L64, g_min 1e-6, read 2e-7, ADC 8b, rows 128"),
    ("sigma=1e-7", ["programming_noise.sigma=1e-7"], "sigma/G 0.1%"),
    ("sigma=5e-7", ["programming_noise.sigma=5e-7"], "sigma/G 0.5%"),
    ("sigma=5e-6", ["programming_noise.sigma=5e-6"], "sigma/G 5%"),
    ("L16", ["conductance.levels=16"], "16 levels"),
    ("L256", ["conductance.levels=256"], "256 levels"),
    ("g_min=0", ["conductance.g_min=0"], "g_min 0 (clipping at 0 active)"),
    ("no-conv", ["adc.bits=null"], "ideal converters (no ADC, no DAC)"),
    ("adc4", ["adc.bits=4"], "4-bit ADC"),
    ("dac4", ["dac.bits=4"], "4-bit DAC (+ 8-bit ADC)"),
    ("dac6+adc6", ["dac.bits=6", "adc.bits=6"], "6-bit DAC + 6-bit ADC"),
    ("rows=32", ["crossbar.rows=32"], "32-row tiles (more row tiles, more ADCs)"),
    ("rows=256", ["crossbar.rows=256"], "256-row tiles"),
    ("C:prog-only", ["programming_noise.sigma=1e-6", "read_noise.sigma=0", "adc.bits=null",
                     "conductance.g_min=0", "conductance.levels=256"],
     "corner: MemSE-like, programming noise only, sigma 1e-6, L256, g_min 0, no converters, no read noise"),
    ("C:harsh", ["programming_noise.sigma=5e-6", "conductance.levels=16", "conductance.g_min=0",
                 "dac.bits=4", "adc.bits=4", "crossbar.rows=32"],
     "corner: sigma 5e-6, L16, g_min 0, DAC 4b, ADC 4b, rows 32"),
    ("C:fine", ["programming_noise.sigma=1e-7", "read_noise.sigma=0", "conductance.levels=256",
                "dac.bits=8", "adc.bits=6", "crossbar.rows=64"],
     "corner: sigma 1e-7, L256, no read noise, DAC 8b, ADC 6b, rows 64"),
]
QUICK_POINTS = ["rram", "sigma=1e-7", "rows=32", "C:harsh"]


def machine_line() -> str:
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    load = os.getloadavg() if hasattr(os, "getloadavg") else ("?",) * 3
    import onnxruntime
    return (f"{platform.node()} ({platform.system()} {platform.machine()}, {cpu}, {os.cpu_count()} logical cores, "
            f"load average at start {load[0]:.2f}); Python {platform.python_version()}, numpy {np.__version__}, "
            f"onnxruntime {onnxruntime.__version__}")


def git_line() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                             timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return f"{rev}{' + uncommitted changes' if dirty else ''}" if rev else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def provenance(title: str, script: str) -> list[str]:
    """The results file's title and how it was made: command (as typed), date, git revision, machine."""
    cmd = "python " + " ".join([os.path.relpath(script, ROOT)] + sys.argv[1:])
    started = _dt.datetime.now().astimezone()
    return [title, "", f"- Command: `{cmd}` (from the repository root)",
            f"- Date: {started:%Y-%m-%d %H:%M %Z}; code: git {git_line()}", f"- Machine: {machine_line()}"]


def sigma_over_g(dev) -> float:
    return dev.programming_noise.sigma / (dev.conductance.g_max - dev.conductance.g_min)


def run_point(model: str, point: str, sets: list[str], x: np.ndarray, args) -> dict:
    dev = load_device("rram", sets)
    path = ROOT / MODELS[model]
    t = time.perf_counter()
    g, _ = compile_model(str(path), dev, x, options={"mode": "refined"})
    an = g.graph["analysis"]["outputs"][OUTPUT]
    an_s = g.graph["timing"]["analysis_s"]
    gd, _ = compile_model(str(path), dev, x, options={"mode": "diagonal"})
    diag = gd.graph["analysis"]["outputs"][OUTPUT]
    mc = run_montecarlo(g, dev, x, chips=args.max_chips, precision=args.precision, seed=args.seed,
                        min_chips=args.min_chips, progress=False, signals=[])
    o = mc["outputs"][OUTPUT]
    layers = []
    if point == LAYER_POINT:     # every crossbar layer's output MSE, in the three modes, against the same MC
        gs, _ = compile_model(str(path), dev, x, options={"mode": "sensitivity"})
        for name, layer in g.layers.items():
            m = mc["signals"][layer.output]
            layers.append({"layer": name, "output": layer.output == OUTPUT, "mc": m["mse"],
                           "hw": (m["ci95"][1] - m["ci95"][0]) / 2, "refined": g.graph["analysis"]["layers"][name],
                           "sensitivity": gs.graph["analysis"]["layers"][name],
                           "diagonal": gd.graph["analysis"]["layers"][name]})
    lo, hi = o["ci95"]
    hw = (hi - lo) / 2
    rel = an["mse"] / o["mse"] - 1.0
    rel_d = diag["mse"] / o["mse"] - 1.0
    return {"model": model, "point": point, "sig_g": sigma_over_g(dev), "an": an["mse"],
            "an_b2": an.get("bias2"), "diag": diag["mse"], "mc": o["mse"], "mc_b2": o["bias2"], "lo": lo,
            "hi": hi, "hw_rel": hw / o["mse"], "chips": mc["chips"],
            "capped": mc["chips"] >= args.max_chips and hw > args.precision * o["mse"],
            "rel": rel, "rel_d": rel_d, "ok": abs(rel) <= 0.10, "ok_d": abs(rel_d) <= 0.10,
            "an_s": an_s, "mc_s": mc["mc_s"], "wall_s": time.perf_counter() - t, "layers": layers}


LAYER_POINT = "rram"
MODES = ("refined", "sensitivity", "diagonal")


def layer_table(rows: list[dict]) -> list[str]:
    """Per crossbar layer at LAYER_POINT: each mode's output MSE and its error against the Monte-Carlo."""
    sel = [(r["model"], lr) for r in rows for lr in r["layers"]]
    if not sel:
        return []
    out = ["", f"## Every crossbar layer's output MSE at the `{LAYER_POINT}` point", "",
           "| model | layer | MC MSE | CI hw | " + " | ".join(f"{m} (rel err)" for m in MODES) + " |",
           "|" + "|".join(["---"] * (4 + len(MODES))) + "|"]
    for model, lr in sel:
        cells = " | ".join(f"{lr[m]:.4g} ({(lr[m] / lr['mc'] - 1) * 100:+.1f}%)" for m in MODES)
        out.append(f"| {model} | {lr['layer']}{' (output)' if lr['output'] else ''} | {lr['mc']:.4g} "
                   f"| {lr['hw'] / lr['mc'] * 100:.1f}% | {cells} |")
    out.append("")
    for kind, pick in (("output layers", True), ("inner layers", False)):
        part = [lr for _, lr in sel if lr["output"] == pick]
        if part:
            rng = "; ".join(f"{m} {min(lr[m] / lr['mc'] - 1 for lr in part) * 100:+.1f} to "
                            f"{max(lr[m] / lr['mc'] - 1 for lr in part) * 100:+.1f}%" for m in MODES)
            out.append(f"- {kind} ({len(part)}): {rng}")
    return out


HEAD = ("| model | point | sigma/G | analysis MSE | MC MSE | MC 95% CI | CI hw | chips | rel err | <=10% "
        "| diagonal MSE | diag rel err | bias² share an / MC | analysis s | MC s |")
SEP = "|" + "|".join(["---"] * (HEAD.count("|") - 1)) + "|"


def row(r: dict) -> str:
    share = lambda b2, m: f"{b2 / m:.2f}" if b2 is not None and m else "-"  # noqa: E731
    return (f"| {r['model']} | {r['point']} | {r['sig_g'] * 100:.2g}% | {r['an']:.4g} | {r['mc']:.4g} "
            f"| [{r['lo']:.4g}, {r['hi']:.4g}] | {r['hw_rel'] * 100:.1f}% "
            f"| {r['chips']}{' (cap)' if r['capped'] else ''} | {r['rel'] * 100:+.1f}% | {'yes' if r['ok'] else '**NO**'} "
            f"| {r['diag']:.4g} | {r['rel_d'] * 100:+.1f}% | {share(r['an_b2'], r['an'])} / {share(r['mc_b2'], r['mc'])} "
            f"| {r['an_s']:.2f} | {r['mc_s']:.2f} |")


def summary(rows: list[dict]) -> list[str]:
    def stats(key_rel, key_ok, sel):
        a = np.abs([r[key_rel] for r in sel])
        return (f"max |rel err| {a.max() * 100:.1f}%, within 10%: {sum(r[key_ok] for r in sel)}/{len(sel)} "
                f"({np.mean([r[key_ok] for r in sel]) * 100:.0f}%), mean |rel err| {a.mean() * 100:.1f}%")
    out = [f"- **refined (default)**: {stats('rel', 'ok', rows)}",
           f"- **diagonal**: {stats('rel_d', 'ok_d', rows)}"]
    for m in dict.fromkeys(r["model"] for r in rows):
        sel = [r for r in rows if r["model"] == m]
        out.append(f"- {m}: refined {stats('rel', 'ok', sel)}; diagonal {stats('rel_d', 'ok_d', sel)}")
    capped = [r for r in rows if r["capped"]]
    out.append(f"- MC chip cap ({rows and max(r['chips'] for r in rows)} max used) hit without reaching the "
               f"target precision: {len(capped)} row(s)"
               + (": " + ", ".join(f"{r['model']}/{r['point']} (CI hw {r['hw_rel'] * 100:.1f}%)" for r in capped)
                  if capped else ""))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="4 points, 50 inputs, precision 5%%, cap 500; no file")
    ap.add_argument("--models", default="mlp,cnn,rescnn",
                    help=f"comma-separated, of {', '.join(MODELS)} (default: the three of DESIGN §9; the transformers' "
                         "tables are benchmarks/results/accuracy_attn.md and accuracy_vit.md, from --models attn "
                         "and --models vit)")
    ap.add_argument("--points", default=None, help="comma-separated point names (default: all, or the quick set)")
    ap.add_argument("--inputs", type=int, default=None, help="first N of examples/digits_inputs.npy (default 200)")
    ap.add_argument("--precision", type=float, default=None, help="MC target CI half-width / mean (default 0.03)")
    ap.add_argument("--min-chips", type=int, default=None, help="default 100 (quick: 30)")
    ap.add_argument("--max-chips", type=int, default=None, help="chip cap (default 2000)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="markdown output (default benchmarks/results/accuracy.md; "
                                                "--quick writes nothing unless --out is given)")
    args = ap.parse_args()
    quick = args.quick
    args.inputs = args.inputs or (50 if quick else 200)
    args.precision = args.precision or (0.05 if quick else 0.03)
    args.max_chips = args.max_chips or (500 if quick else 2000)
    args.min_chips = args.min_chips or (30 if quick else 100)
    names = args.points.split(",") if args.points else (QUICK_POINTS if quick else [p[0] for p in POINTS])
    table = {p[0]: p for p in POINTS}
    unknown = [n for n in names if n not in table]
    if unknown:
        sys.exit(f"unknown point(s) {unknown}; known: {list(table)}")
    models = args.models.split(",")
    x = np.load(ROOT / INPUTS)[: args.inputs]
    header = provenance("# Analysis vs Monte-Carlo accuracy (output `logits` MSE)", __file__) + [
        f"- Inputs: the first {len(x)} of `{INPUTS}` (shape {x.shape}; `tokens`: of `{TOKENS}`, the same images as "
        f"int64 ids), used both as the calibration/evaluation batch of the analysis and as the Monte-Carlo "
        f"evaluation inputs",
        f"- Monte-Carlo: `run_montecarlo(..., precision={args.precision}, min_chips={args.min_chips}, "
        f"chips={args.max_chips}, seed={args.seed})`: chips are simulated until the 95% CI half-width is <= "
        f"{args.precision * 100:g}% of the MSE (\"(cap)\" = stopped at the chip cap before that)",
        "- analysis = default mode (`refined`); diagonal = `options={\"mode\": \"diagonal\"}`; "
        "rel err = analysis / MC - 1; <=10% is the DESIGN §9 bar (on the MC point estimate)",
        "- bias² share = bias² / MSE of the analysis and of the MC (MC bias² is the debiased estimate)",
        "- analysis s = `g.graph[\"timing\"][\"analysis_s\"]`; MC s = `mc_s` (includes the executor build)",
        "", "Device points (overrides of the bundled `rram` device: g_min 1e-6, g_max 1e-4, 64 levels, "
        "programming sigma 2e-6, read noise 2e-7, 8-bit ADC, no DAC, 128x128 tiles; sigma/G = sigma/(g_max-g_min)):", "",
    ]
    header += [f"- `{n}`: {table[n][2]}" + (f" — `{' '.join('--set ' + s for s in table[n][1])}`"
                                            if table[n][1] else "") for n in names]
    print("\n".join(header), flush=True)
    print("\n" + HEAD + "\n" + SEP, flush=True)
    rows = []
    t_all = time.perf_counter()
    for model in models:
        for n in names:
            xm = np.load(ROOT / TOKENS)[: args.inputs] if model == "tokens" else x
            r = run_point(model, n, table[n][1], xm, args)
            rows.append(r)
            print(row(r), flush=True)
    total = time.perf_counter() - t_all
    summ = summary(rows)
    bad = [r for r in rows if not r["ok"]]
    tail = layer_table(rows) + ["", "## Summary", ""] + summ + [f"- total run time {total / 60:.1f} min", ""]
    if bad:
        tail += ["## Cases where the analysis is off by more than 10%", "",
                 "| model | point | analysis MSE | MC MSE | MC 95% CI | rel err | chips |", "|---|---|---|---|---|---|---|"]
        tail += [f"| {r['model']} | {r['point']} | {r['an']:.4g} | {r['mc']:.4g} | [{r['lo']:.4g}, {r['hi']:.4g}] "
                 f"| {r['rel'] * 100:+.1f}% | {r['chips']} |" for r in bad]
    else:
        tail += ["No case is off by more than 10%."]
    print("\n".join(tail))
    out = args.out or (None if quick else str(ROOT / "benchmarks/results/accuracy.md"))
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text("\n".join(header + ["", "## Table", "", HEAD, SEP] + [row(r) for r in rows] + tail)
                             + "\n")
        print(f"\nwritten {out}")


if __name__ == "__main__":
    main()
