"""Top-1 agreement and chip accuracy (passes/agreement.py) against Monte-Carlo, on the trained digits classifiers
(and the two per-position ones: seg_digits per pixel, tagger_digits per row, counted over samples and positions).

Run by hand:
    python benchmarks/agreement.py        # writes benchmarks/results/agreement.md (~3-5 min, 2 cores)
    python benchmarks/agreement.py --topk 3    # top-3 instead: benchmarks/results/agreement_top3.md
    options: --chips C (default 600) --inputs N (default 200) --topk K --out FILE

Per model and programming sigma (bundled `rram` otherwise: 64 levels, read noise 2e-7, 8-bit ADC, 128x128 tiles):
the fraction of the first N digits images whose class a noisy chip keeps ("kept": its argmax is the float model's)
and the chip's accuracy on their labels, by the analysis (default refined mode, the one-factor formula with the
sweeps' covariances; and the diagonal mode, logits independent) and by C Monte-Carlo chips (95 % CI over chips).
"flip err" = (1 - kept) by analysis over (1 - kept) by Monte-Carlo, minus 1: the relative error of the rate of
changed classes; "acc err" = the analysis' accuracy minus the measured one, in points. With --topk K the same
for the top K: "kept" = the float class stays among the chip's K best, accuracy = the label is among them,
"flip err" the relative error of the rate of drops out of the top K.
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

from accuracy import provenance  # noqa: E402
from device_models import load_device  # noqa: E402
from memse_compiler import compile_model  # noqa: E402
from memse_compiler.montecarlo import run_montecarlo  # noqa: E402

MODELS = ["mlp", "cnn", "rescnn", "attn", "vit", "lstm", "gru", "bnn", "tokens", "seg", "tagger"]
# the per-position examples' labels (a class per pixel, per row); the others take examples/digits_labels.npy
LABELS = {"seg": "digits_pixel_labels.npy", "tagger": "digits_row_labels.npy"}
SIGMAS = ["2e-6", "4e-6", "8e-6"]
SHOWN_DROPS, SUMMARY_DROPS = 0.001, 0.01     # Monte-Carlo rates of changed classes: flip err shown / summarised


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chips", type=int, default=600)
    ap.add_argument("--inputs", type=int, default=200)
    ap.add_argument("--topk", type=int, default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    k = args.topk or 1
    out_file = args.out or str(ROOT / "benchmarks" / "results" / f"agreement{f'_top{k}' if k > 1 else ''}.md")
    kept_key, acc_key = ("topk_agreement", "topk_accuracy") if k > 1 else ("top1_agreement", "accuracy")
    options = {"topk": k} if k > 1 else {}
    lines = provenance(f"# Top-{k} agreement and chip accuracy: analysis vs Monte-Carlo", __file__) + [
        f"- Inputs: the first {args.inputs} of `examples/digits_inputs.npy` (`tokens`: `examples/digits_tokens.npy`), "
        f"{f'top {k}, ' if k > 1 else ''}labels `examples/digits_labels.npy` (`seg`: `digits_pixel_labels.npy`, `tagger`: `digits_row_labels.npy`); {args.chips} Monte-Carlo chips per point", ""]
    header = ("| model | sigma | float acc | kept: analysis | kept: diagonal | kept: MC (95 % CI) | flip err | "
              "chip acc: analysis | chip acc: MC (95 % CI) | acc err | agreement pass s | analysis s |")
    lines += [header, "|" + "---|" * (header.count("|") - 1)]
    flips, accs = [], []
    for model in MODELS:
        x = np.load(ROOT / "examples" / ("digits_tokens.npy" if model == "tokens" else "digits_inputs.npy"))
        x = x[: args.inputs]
        path = str(ROOT / "examples" / f"{model}_digits.onnx")
        labels = np.load(ROOT / "examples" / LABELS.get(model, "digits_labels.npy"))[: args.inputs]
        for sigma in SIGMAS:
            dev = load_device("rram", [f"programming_noise.sigma={sigma}"])
            g, _ = compile_model(path, dev, x, labels=labels, options=options)
            out = g.graph["outputs"][0]
            a = g.graph["analysis"]["outputs"][out]
            gd, _ = compile_model(path, dev, x, options={"mode": "diagonal", **options})
            t = time.perf_counter()
            m = run_montecarlo(g, dev, x, chips=args.chips, seed=1, progress=False, signals=[])["outputs"][out]
            mc_s = time.perf_counter() - t
            kept_ci, acc_ci = m[f"{kept_key}_ci95"], m[f"{acc_key}_ci95"]
            drops = 1 - m[kept_key]
            flip = (1 - a[kept_key]) / drops - 1 if drops >= SHOWN_DROPS else None
            acc_err = 100 * (a[acc_key] - m[acc_key])
            if drops >= SUMMARY_DROPS:
                flips.append(abs(flip))
            accs.append(abs(acc_err))
            lines.append(
                f"| {model} | {sigma} | {100 * a[f'{acc_key}_float']:.1f} % | {100 * a[kept_key]:.2f} % | "
                f"{100 * gd.graph['analysis']['outputs'][out][kept_key]:.2f} % | "
                f"{100 * m[kept_key]:.2f} % [{100 * kept_ci[0]:.2f}, {100 * kept_ci[1]:.2f}] | "
                f"{'-' if flip is None else f'{100 * flip:+.1f} %'} | {100 * a[acc_key]:.2f} % | "
                f"{100 * m[acc_key]:.2f} % [{100 * acc_ci[0]:.2f}, {100 * acc_ci[1]:.2f}] | {acc_err:+.2f} | "
                f"{g.graph['timing']['passes']['top1_agreement']:.3f} | {g.graph['timing']['analysis_s']:.2f} |")
            print(lines[-1], f"(MC {mc_s:.1f} s)", flush=True)
    lines += ["", f"Summary: |flip err| median {100 * np.median(flips):.1f} %, max {100 * max(flips):.1f} % over the "
                  f"{len(flips)} points where at least {100 * SUMMARY_DROPS:g} % of the classes change (Monte-Carlo; "
                  f"flip err is not shown below {100 * SHOWN_DROPS:g} %, where it is a ratio of a few events); "
                  f"|acc err| median {np.median(accs):.2f} points, max {max(accs):.2f} points ({len(accs)} points)."]
    Path(out_file).write_text("\n".join(lines) + "\n")
    print(f"written to {out_file}")


if __name__ == "__main__":
    main()
