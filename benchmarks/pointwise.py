"""Functions of one noisy signal (comparisons, binarised activations, x reaching an op twice) against Monte-Carlo.

Run by hand:
    python benchmarks/pointwise.py            # writes benchmarks/results/accuracy_pointwise.md (~1-2 min, 2 cores)
    options: --precision P (default 0.015) --max-chips C (default 6000) --out FILE

Part 1: torch's exports in tests/torch_exports/act_*.onnx (Linear -> activation -> Linear, random weights) on the
first 200 digits images, device `rram` with programming sigma 4e-6 and read noise 1e-6 (the bundled 8-bit ADC):
the default analysis, the element-wise `diagonal` mode, and "op by op" (the frontend's fold into a Pointwise node
switched off: each op's own rule, its operands taken as independent; only where that parses). Part 2: the trained
binarised MLP `examples/bnn_digits.onnx` at four programming sigmas, with and without summing the sign's moments
over the ADC codes ("Gaussian stand-in": the codes' lattice ignored). Part 3: the op-coverage zoo's x * sigmoid(x)
and GELU's erf form after a Gemm, where the noise is larger against the activation's curvature, and round / floor /
ceil of 4 h or 3 h (hand-written fake quantization), whose codes alias with the ADC's (tests/onnx_zoo.py, random
weights, their own 64 samples), at the tests' point (16-row tiles, 7-bit ADC, sigma 4e-6). Part 4
(skipped with --no-resnet): a ResNet-18 (benchmarks/models.py, width 32, 112x112, batch 2, bundled `rram`) with
every ReLU written as where(x > 0, x, 0.1 x), against the same network with LeakyRelu(0.1): output MSE and analysis
time (the cost of the fold's quadrature at that scale). rel err = analysis / MC - 1.
"""
from __future__ import annotations

import argparse
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "tests"))

from accuracy import provenance  # noqa: E402
from device_models import load_device  # noqa: E402
from memse_compiler import compile_model, frontend  # noqa: E402
from memse_compiler.ir.errors import MemseInputError  # noqa: E402
from memse_compiler.montecarlo import run_montecarlo  # noqa: E402
from onnx_zoo import op_coverage_models  # noqa: E402
from passes import moments  # noqa: E402

EXPORTS = ["act_where_leaky", "act_hardshrink", "act_softshrink", "act_clamp_where", "act_heaviside", "act_silu",
           "act_gelu_tanh", "act_threshold.dynamo"]
EXPORT_DEVICE = ["programming_noise.sigma=4e-6", "read_noise.sigma=1e-6"]
BNN_SIGMAS = ["5e-7", "1e-6", "4e-6", "8e-6"]
ZOO = ["act_silu_pattern", "act_gelu_erf_pattern", "act_round_fake_quant", "act_floor", "act_ceil", "act_round_residual"]
ZOO_DEVICE = ["crossbar.rows=16", "crossbar.cols=8", "adc.bits=7", "programming_noise.sigma=4e-6"]


@contextmanager
def patched(module, name: str, value):
    old = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, old)


def mse(path, dev, x: np.ndarray, **options) -> float:
    g, _ = compile_model(path if not isinstance(path, Path) else str(path), dev, x, options=options)
    return g.graph["analysis"]["outputs"][g.graph["outputs"][0]]["mse"]


def row(path, dev, x: np.ndarray, args, variant: str) -> list:
    """path: a file, or an onnx.ModelProto."""
    g, _ = compile_model(path if not isinstance(path, Path) else str(path), dev, x)
    out = g.graph["outputs"][0]
    folded = [d["attrs"]["body"] for _, d in g.nodes(data=True) if d["op"] == "Pointwise"]
    mc = run_montecarlo(g, dev, x, chips=args.max_chips, precision=args.precision, seed=0, progress=False,
                        signals=[])
    o = mc["outputs"][out]
    half = (o["ci95"][1] - o["ci95"][0]) / 2
    an = g.graph["analysis"]["outputs"][out]["mse"]
    diag = mse(path, dev, x, mode="diagonal")
    if variant == "op by op":
        try:
            with patched(frontend, "fuse_pointwise", lambda g, label: None):
                diag_off, default_off = mse(path, dev, x, mode="diagonal"), mse(path, dev, x)
            alt = f"{diag_off / o['mse'] - 1:+.1%} / {default_off / o['mse'] - 1:+.1%}"
        except (MemseInputError, NotImplementedError):
            alt = "refused"
    else:
        with patched(moments, "on_lattice_moments", lambda *a: None):
            alt = f"{mse(path, dev, x) / o['mse'] - 1:+.1%}"
    ops = "; ".join(repr(b).split(" = ")[1] for b in folded) or "-"
    return [ops, f"{an:.4g}", f"{o['mse']:.4g} ± {half / o['mse']:.1%}", mc["chips"], f"{an / o['mse'] - 1:+.1%}",
            f"{diag / o['mse'] - 1:+.1%}", alt]


def resnet_rows() -> list[list]:
    import time
    from onnx import helper, numpy_helper
    from models import resnet18
    x = np.random.default_rng(0).random((2, 3, 112, 112)).astype(np.float32)
    rows = []
    for form in ("LeakyRelu", "where"):
        m = resnet18(width=32, size=112)
        m.graph.initializer.extend([numpy_helper.from_array(np.float32(0), "pw_zero"),
                                    numpy_helper.from_array(np.float32(0.1), "pw_slope")])
        nodes = []
        for n in m.graph.node:
            x_in, y = (n.input[0], n.output[0]) if n.op_type == "Relu" else (None, None)
            if x_in and form == "where":
                nodes += [helper.make_node("Greater", [x_in, "pw_zero"], [y + "_c"], name=n.name + "_c"),
                          helper.make_node("Mul", [x_in, "pw_slope"], [y + "_s"], name=n.name + "_s"),
                          helper.make_node("Where", [y + "_c", x_in, y + "_s"], [y], name=n.name)]
            elif x_in:
                nodes.append(helper.make_node("LeakyRelu", [x_in], [y], name=n.name, alpha=0.1))
            else:
                nodes.append(n)
        del m.graph.node[:]
        m.graph.node.extend(nodes)
        t = time.perf_counter()
        g, _ = compile_model(m, "rram", x)
        rows.append([form, sum(d["op"] == "Pointwise" for _, d in g.nodes(data=True)),
                     f"{g.graph['analysis']['outputs'][g.graph['outputs'][0]]['mse']:.10g}",
                     f"{g.graph['timing']['analysis_s']:.1f} (compile {time.perf_counter() - t:.1f})"])
        print(" | ".join(str(c) for c in rows[-1]), file=sys.stderr)
    return rows


def table(header: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--precision", type=float, default=0.015)
    ap.add_argument("--max-chips", type=int, default=6000)
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/accuracy_pointwise.md"))
    ap.add_argument("--no-resnet", action="store_true")
    args = ap.parse_args()
    lines = provenance("# Functions of one noisy signal: analysis vs Monte-Carlo", __file__)
    x = np.load(ROOT / "examples/digits_inputs.npy")[:200].astype(np.float64)
    lines += [f"- Inputs: the first 200 of `examples/digits_inputs.npy`; Monte-Carlo to ±{args.precision:.1%} "
              f"(95 % CI) or {args.max_chips} chips, seed 0", ""]
    dev = load_device("rram", EXPORT_DEVICE)
    rows = []
    for name in EXPORTS:
        rows.append([f"`{name}`"] + row(ROOT / f"tests/torch_exports/{name}.onnx", dev, x, args, "op by op"))
        print(" | ".join(str(c) for c in rows[-1]), file=sys.stderr)
    lines += ["## torch exports (`tests/torch_exports/act_*.onnx`), `rram` with " + ", ".join(EXPORT_DEVICE), ""]
    lines += table(["export", "Pointwise body", "analysis MSE", "MC MSE", "chips", "rel err", "diagonal",
                    "op by op: diagonal / default"], rows)
    rows = []
    for sigma in BNN_SIGMAS:
        dev = load_device("rram", [f"programming_noise.sigma={sigma}"])
        rows.append([sigma] + row(ROOT / "examples/bnn_digits.onnx", dev, x, args, "lattice")[1:])
        print(" | ".join(str(c) for c in rows[-1]), file=sys.stderr)
    lines += ["", "## `examples/bnn_digits.onnx` (sign between three Gemms), bundled `rram` at programming sigma", ""]
    lines += table(["sigma", "analysis MSE", "MC MSE", "chips", "rel err", "diagonal",
                    "Gaussian stand-in for the ADC codes"], rows)
    rows = []
    dev = load_device("rram", ZOO_DEVICE)
    for zm in [m for m in op_coverage_models() if m.name in ZOO]:
        rows.append([f"`{zm.name}`"] + row(zm.model, dev, zm.batch(), args, "op by op"))
        print(" | ".join(str(c) for c in rows[-1]), file=sys.stderr)
    lines += ["", "## op-coverage zoo, `rram` with " + ", ".join(ZOO_DEVICE), ""]
    lines += table(["model", "Pointwise body", "analysis MSE", "MC MSE", "chips", "rel err", "diagonal",
                    "op by op: diagonal / default"], rows)
    if not args.no_resnet:
        lines += ["", "## ResNet-18 (width 32, 112x112, batch 2), bundled `rram`: every ReLU as where(x > 0, x, 0.1 x) "
                  "or as LeakyRelu(0.1)", ""]
        lines += table(["activation", "Pointwise nodes", "output MSE", "analysis s"], resnet_rows())
    text = "\n".join(lines) + "\n"
    print(text)
    Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
