"""Analysis against Monte-Carlo on op-coverage models (tests/onnx_zoo*.py), at two device points.

Run by hand:
    python benchmarks/coverage.py                       # the models added for the op rules since the first 71
    python benchmarks/coverage.py NAME [NAME ...]       # named coverage models (prints only)
    options: --precision P (default 0.015) --max-chips C (default 4000) --out FILE (default
             benchmarks/results/coverage.md when no names are given)

Device points: the bundled "rram" with 16-row tiles and a 7-bit ADC, and the same with programming sigma 5e-6
(a noisier chip). Inputs: the model's own feed, repeated with small Gaussian jitter to 24 samples (these models
are random-weight; what is measured is the analysis against the simulation of the same chip model). Monte-Carlo
runs until its 95% CI half-width is <= precision of the mean or max-chips; rel err = analysis / MC - 1.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from device_models import load_device  # noqa: E402
from memse_compiler import compile_model  # noqa: E402
from memse_compiler.montecarlo import run_montecarlo  # noqa: E402
from onnx_zoo import op_coverage_models  # noqa: E402

POINTS = {"16-row tiles, 7-bit ADC": ["crossbar.rows=16", "adc.bits=7"],
          "same, sigma 5e-6": ["crossbar.rows=16", "adc.bits=7", "programming_noise.sigma=5e-6"]}
ADDED = ["gather_class_token", "gather_features_repeated", "split_tokens_three_ways", "prelu_per_feature",
         "pad_reflect_conv", "pad_constant_crop", "upsample_nearest_conv", "upsample_bilinear_conv",
         "upsample_opset9_linear", "resize_align_corners_up_down", "prelu_per_channel_conv",
         "conv_transpose_decoder", "conv_transpose_1d_grouped", "act_gelu_op_tanh", "act_neg", "act_abs", "act_exp",
         "act_pow_square", "act_pow_cube", "act_sqrt_of_square_plus_one", "act_reciprocal",
         "act_log_of_exp_plus_one", "act_pow_fractional", "unsqueeze_squeeze", "layer_norm_decomposed",
         "rms_norm_decomposed", "div_by_signal", "max_min_of_branches", "class_token_expand",
         "expand_signal_features", "l2_normalize_features", "tile_and_reduce_variants", "reduce_max_min_tokens",
         "global_max_pool_head", "interpolate_to_size"]


def jittered_inputs(x: np.ndarray, n: int = 24) -> np.ndarray:
    if len(x) >= n:
        return x
    copies = [x + 0.05 * np.random.default_rng(i).standard_normal(x.shape) if x.dtype.kind == "f" else x
              for i in range(-(-n // len(x)))]     # ids and masks repeated as they are
    return np.concatenate(copies)[:n]


def measure(zm, precision: float, max_chips: int) -> list[tuple]:
    x = zm.batch()
    x = {k: jittered_inputs(v) for k, v in x.items()} if isinstance(x, dict) else jittered_inputs(x)
    rows = []
    for point, overrides in POINTS.items():
        dev = load_device("rram", overrides)
        g, _ = compile_model(zm.model, dev, x)
        t = time.perf_counter()
        mc = run_montecarlo(g, dev, x, chips=max_chips, precision=precision, seed=1, progress=False, signals=[])
        for out, o in g.graph["analysis"]["outputs"].items():
            m = mc["outputs"][out]
            half = (m["ci95"][1] - m["ci95"][0]) / 2 / m["mse"]
            rows.append((zm.name, point, out, o["mse"], m["mse"], half, o["mse"] / m["mse"] - 1, mc["chips"],
                         time.perf_counter() - t))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("names", nargs="*")
    ap.add_argument("--precision", type=float, default=0.015)
    ap.add_argument("--max-chips", type=int, default=4000)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    names = args.names or ADDED
    out = args.out or (None if args.names else str(ROOT / "benchmarks" / "results" / "coverage.md"))
    models = {m.name: m for m in op_coverage_models()}
    unknown = [n for n in names if n not in models]
    if unknown:
        sys.exit(f"unknown coverage models: {', '.join(unknown)}")
    head = "| model | device point | output | analysis MSE | MC MSE | MC ±95% | rel err | chips |"
    lines = [head, "|---|---|---|---|---|---|---|---|"]
    print(head)
    errors = []
    for name in names:
        for r in measure(models[name], args.precision, args.max_chips):
            line = f"| {r[0]} | {r[1]} | {r[2]} | {r[3]:.4g} | {r[4]:.4g} | {100 * r[5]:.1f}% | {100 * r[6]:+.1f}% | {r[7]} |"
            lines.append(line)
            errors.append(r[6])
            print(line, flush=True)
            print(f"  ({r[8]:.1f} s)", file=sys.stderr)
    summary = (f"{len(errors)} outputs: rel err {100 * min(errors):+.1f} to {100 * max(errors):+.1f}%, "
               f"|rel err| mean {100 * float(np.mean(np.abs(errors))):.1f}%, "
               f"{sum(abs(e) <= 0.05 for e in errors)} within 5%, {sum(abs(e) <= 0.1 for e in errors)} within 10%")
    print(summary)
    if out:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=ROOT).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True, cwd=ROOT).stdout
        Path(out).write_text("\n".join([
            "# Op-coverage models: analysis vs Monte-Carlo", "",
            "- Command: `python benchmarks/coverage.py` (from the repository root)",
            f"- Date: {_dt.datetime.now(_dt.timezone.utc):%Y-%m-%d %H:%M} UTC; code: git {commit}"
            + (" + uncommitted changes" if dirty.strip() else ""),
            f"- Device points: bundled `rram` with {'; '.join(f'{k}: ' + ' '.join(v) for k, v in POINTS.items())}",
            f"- Inputs: each model's feed with Gaussian jitter (std 0.05) to 24 samples; Monte-Carlo to "
            f"±{100 * args.precision:g}% or {args.max_chips} chips (seed 1)",
            "", *lines, "", f"Summary: {summary}", ""]))
        print(f"written to {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
