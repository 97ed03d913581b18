"""Power model and power-constrained optimiser (DESIGN §7).

(a) crossbar read energy, ADC and DAC energy of a 1-layer Gemm against a hand computation (sum G V^2 t_read
    over both devices of every pair, per tile), the linear form in G and the sympy expression;
(b) input noise counts in E[V^2];
(c) the optimiser meets the budget and beats the best uniform G at the same power (CNN, residual CNN), the
    dual meets its MSE target with less power than the uniform G, and the CLI flags work.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from device_models import load_device  # noqa: E402
from memse_compiler import compile_model  # noqa: E402
from passes.closed_form import g_symbol  # noqa: E402
from passes.optimize import optimize  # noqa: E402
from passes.power import PowerPass  # noqa: E402
from passes.symbolic import b_adc  # noqa: E402

EXAMPLES = ROOT / "examples"
X = np.load(EXAMPLES / "digits_inputs.npy")

W = np.array([[1.0, -0.5], [0.25, 0.0], [-1.0, 0.75]])      # multiples of Wmax/4: exact on 5 levels
B = np.array([0.5, -0.25, 0.0])
XS = np.array([[3 / 7, -1.0], [1.0, 2 / 7]])                 # multiples of 1/7: exact on a 4-bit signed DAC
G_MIN, G_MAX, RV, T_READ, RATE = 1e-6, 1e-4, 0.2, 1e-8, 1e3


def gemm_model(w: np.ndarray = W, b: np.ndarray = B) -> onnx.ModelProto:
    nodes = [helper.make_node("Gemm", ["input", "W", "B"], ["logits"], transB=1)]
    graph = helper.make_graph(nodes, "gemm", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, 2])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [None, 3])],
                              [numpy_helper.from_array(w.astype(np.float32), "W"),
                               numpy_helper.from_array(b.astype(np.float32), "B")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def tiny_device(rows: int = 128, cols: int = 128, adc_energy=1e-12, **extra):
    d = {"name": "tiny", "conductance": {"g_min": G_MIN, "g_max": G_MAX, "levels": 5},
         "programming_noise": {"sigma": 0.0}, "read_noise": {"sigma": 0.0},
         "crossbar": {"rows": rows, "cols": cols, "bias": "row", "read_voltage": RV, "t_read": T_READ},
         "dac": {"bits": 4, "energy": 2e-13}, "adc": {"bits": 4, "energy": adc_energy}, "inference_rate": RATE}
    for k, v in extra.items():
        d[k] = {**d.get(k, {}), **v}
    return load_device(d)


def hand_tile_energies(row_tiles: list[list[int]], col_tiles: list[list[int]]) -> np.ndarray:
    """Energy per inference of each tile, by hand: t_read * mean over samples of sum G V^2 (both devices)."""
    a = np.concatenate([W, B[:, None]], axis=1)                 # the bias is the last crossbar row
    G = G_MAX - G_MIN                                           # Wmax = 1: c = G
    gp, gm = G_MIN + G * np.maximum(a, 0), G_MIN + G * np.maximum(-a, 0)
    x_max = np.abs(XS).max()
    out = np.zeros((len(row_tiles), len(col_tiles)))
    for x in XS:
        v = np.append(RV * x / x_max, RV)                       # bias row driven at read_voltage
        for r, rows in enumerate(row_tiles):
            for c, cols in enumerate(col_tiles):
                for i in cols:
                    for j in rows:
                        out[r, c] += T_READ * (gp[i, j] + gm[i, j]) * v[j] ** 2
    return out / len(XS)


def test_power_of_one_gemm_matches_hand_computation():
    dev = tiny_device()
    g, ctx = compile_model(gemm_model(), dev, XS)
    g = PowerPass().apply(g, ctx)
    p = g.graph["power"]
    xbar = hand_tile_energies([[0, 1, 2]], [[0, 1, 2]]).sum()
    adc = 3 * 1e-12            # one MVM per inference, 1 row tile x 3 outputs
    dac = 2 * 2e-13            # 1 column tile x 2 driven rows (the bias row is a fixed reference)
    assert p["breakdown"]["crossbar"] == pytest.approx(xbar * RATE, rel=1e-9)
    assert p["breakdown"]["adc"] == pytest.approx(adc * RATE, rel=1e-12)
    assert p["breakdown"]["dac"] == pytest.approx(dac * RATE, rel=1e-12)
    assert p["energy_per_inference_j"] == pytest.approx(xbar + adc + dac, rel=1e-9)
    assert p["total_w"] == pytest.approx((xbar + adc + dac) * RATE, rel=1e-9)
    (name,) = g.layers
    assert p["layers"][name] == pytest.approx(p["total_w"], rel=1e-12)
    # linear in G: P_l G + P0_l is the crossbar power; the sympy form has the same value
    G = G_MAX - G_MIN
    assert p["per_g"][name] * G + p["fixed_w"][name] == pytest.approx(p["breakdown"]["crossbar"], rel=1e-9)
    expr = g.graph["power_expression"]
    assert float(expr.subs({g_symbol(name): G, b_adc: 4})) == pytest.approx(p["total_w"], rel=1e-5)
    json.dumps(p)                                               # the report copies it: JSON-clean


def test_power_per_tile_and_walden_adc():
    dev = tiny_device(rows=2, cols=4, adc_energy=None)          # 2 row tiles x 2 column tiles
    g, ctx = compile_model(gemm_model(), dev, XS)
    g = PowerPass().apply(g, ctx)
    p = g.graph["power"]
    (name,) = g.layers
    hand = hand_tile_energies([[0, 1], [2]], [[0, 1], [2]])
    for r in range(2):
        for c in range(2):
            assert p["tiles"][f"{name}/tile[0,{r},{c}]"] == pytest.approx(hand[r, c] * RATE, rel=1e-9)
            assert g.nodes[f"{name}/tile[0,{r},{c}]"]["power_w"] == pytest.approx(hand[r, c] * RATE, rel=1e-9)
    adc = 2 * 3 * 5e-15 * 2 ** 4     # 2 row tiles x 3 outputs, Walden energy at 4 bits
    assert p["breakdown"]["adc"] == pytest.approx(adc * RATE, rel=1e-12)
    assert p["breakdown"]["dac"] == pytest.approx(2 * 2 * 2e-13 * RATE, rel=1e-12)   # 2 column tiles x 2 rows
    assert float(g.graph["power_expression"].subs({g_symbol(name): G_MAX - G_MIN, b_adc: 4})) == \
        pytest.approx(p["total_w"], rel=1e-5)


def test_input_noise_counts_in_read_energy():
    """Two Gemms: the second layer's input is noisy; E[V^2] = (rv / x_max)^2 (mu^2 + var) of the analysis."""
    w2 = np.array([[0.5, -1.0, 0.25], [1.0, 0.0, -0.5]])
    nodes = [helper.make_node("Gemm", ["input", "W", "B"], ["h"], transB=1),
             helper.make_node("Gemm", ["h", "W2", "B2"], ["logits"], transB=1)]
    graph = helper.make_graph(nodes, "two", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, 2])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [None, 2])],
                              [numpy_helper.from_array(W.astype(np.float32), "W"),
                               numpy_helper.from_array(B.astype(np.float32), "B"),
                               numpy_helper.from_array(w2.astype(np.float32), "W2"),
                               numpy_helper.from_array(np.zeros(2, np.float32), "B2")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    dev = tiny_device(dac={"bits": None}, programming_noise={"sigma": 5e-6})
    g, ctx = compile_model(model, dev, XS)
    g = PowerPass().apply(g, ctx)
    name = list(g.layers)[1]
    layer = g.layers[name]
    mu, var = g.graph["moments"][layer.input]
    assert var.min() > 0
    v2 = np.append((RV / layer.dac_range) ** 2 * (mu ** 2 + var).mean(axis=0), RV ** 2)    # bias row last
    hand = T_READ * np.sum((layer.g_plus[0] + layer.g_minus[0]) * v2[None, :])
    assert g.graph["power"]["layer_breakdown"][name]["crossbar"] == pytest.approx(hand * RATE, rel=1e-9)
    noiseless = T_READ * np.sum((layer.g_plus[0] + layer.g_minus[0]) *
                                np.append((RV / layer.dac_range) ** 2 * (mu ** 2).mean(axis=0), RV ** 2)[None, :])
    assert hand > noiseless


# ---- optimiser ---------------------------------------------------------------------------------------
DEV = load_device("rram", ["adc.bits=6"])


def budget_at(g, frac: float) -> float:
    """A budget where a uniform G would be `frac` of the window: converters and floors + frac of the rest."""
    p = g.graph["power"]
    fixed = p["breakdown"]["adc"] + p["breakdown"]["dac"] + sum(p["fixed_w"].values())
    return fixed + frac * (p["total_w"] - fixed)


@pytest.fixture(scope="module")
def cnn():
    g, ctx = compile_model(EXAMPLES / "cnn_digits.onnx", DEV, X[:128])
    return PowerPass().apply(g, ctx), ctx


def check_result(g, r: dict, budget: float) -> None:
    assert r["optimized"]["power_w"] <= budget * (1 + 1e-9)
    assert g.graph["power"]["total_w"] <= budget * (1 + 1e-9)       # the graph is left optimised
    assert r["uniform"]["power_w"] <= budget * (1 + 1e-9)
    assert r["optimized"]["mse"] < r["uniform"]["mse"]
    assert g.graph["analysis"]["outputs"]["logits"]["mse"] == pytest.approx(r["optimized"]["mse"])
    for row in r["layers"]:
        assert r["g_lo"] * (1 - 1e-9) <= row["g_range"] <= r["g_max"] * (1 + 1e-9)
        assert float(np.mean(g.layers[row["name"]].g_range)) == pytest.approx(row["g_range"])
    json.dumps(r)


def confirm_by_monte_carlo(g, ctx, r: dict) -> None:
    """The optimised chip, re-checked by the Monte-Carlo executor: the analysis holds within 10%."""
    from memse_compiler.montecarlo import run_montecarlo
    mc = run_montecarlo(g, ctx.device, ctx.inputs, chips=300, precision=0.03, seed=3, progress=False,
                        signals=[])["outputs"]["logits"]
    half = (mc["ci95"][1] - mc["ci95"][0]) / 2
    assert abs(r["optimized"]["mse"] - mc["mse"]) <= 0.10 * mc["mse"] + half, (r["optimized"]["mse"], mc)


def test_optimizer_beats_uniform_on_cnn(cnn):
    g, ctx = cnn
    budget = budget_at(g, 0.3)
    r = optimize(g, ctx, budget)
    check_result(g, r, budget)
    confirm_by_monte_carlo(g, ctx, r)
    print(f"\nCNN @ {budget:.4g} W: uniform MSE {r['uniform']['mse']:.4g}, optimised {r['optimized']['mse']:.4g}, "
          f"{r['time_s']:.1f} s")


def test_dual_and_adc_bits_on_cnn():
    g, ctx = compile_model(EXAMPLES / "cnn_digits.onnx", DEV, X[:128])
    target = 3.0 * g.graph["analysis"]["outputs"]["logits"]["mse"]
    r = optimize(g, ctx, target_mse=target)
    assert r["optimized"]["mse"] <= target and r["optimized"]["met"]
    assert r["uniform"]["mse"] <= target
    assert r["optimized"]["power_w"] <= r["uniform"]["power_w"]
    # ADC bits too: converters dominate this device's power, so a per-layer resolution wins a lot
    g, ctx = compile_model(EXAMPLES / "cnn_digits.onnx", DEV, X[:128])
    g = PowerPass().apply(g, ctx)
    budget = budget_at(g, 0.3)
    r = optimize(g, ctx, budget, opt_adc_bits=True)
    check_result(g, r, budget)
    assert all(3 <= row["adc_bits"] <= 10 for row in r["layers"])


def test_optimize_rescnn_time():
    g, ctx = compile_model(EXAMPLES / "rescnn_digits.onnx", DEV, X[:128])
    g = PowerPass().apply(g, ctx)
    budget = budget_at(g, 0.3)
    t0 = time.perf_counter()
    r = optimize(g, ctx, budget)
    elapsed = time.perf_counter() - t0
    print(f"\nresidual CNN @ {budget:.4g} W: uniform MSE {r['uniform']['mse']:.4g}, optimised "
          f"{r['optimized']['mse']:.4g}; --optimize took {elapsed:.1f} s ({r['evaluations']} analyses)")
    check_result(g, r, budget)
    assert elapsed < 30
    confirm_by_monte_carlo(g, ctx, r)


def test_cli_flags(tmp_path, capsys):
    from memse_compiler import cli
    from memse_compiler.power_cli import PowerExtension
    cli._load_extensions()
    added = not any(isinstance(e, PowerExtension) for e in cli.EXTENSIONS)
    if added:
        cli.EXTENSIONS.append(PowerExtension())
    try:
        np.save(tmp_path / "x.npy", X[:64])
        base = [str(EXAMPLES / "cnn_digits.onnx"), "--device", "rram", "--inputs", str(tmp_path / "x.npy"),
                "--set", "adc.bits=6"]
        assert cli.main(base + ["--optimize"]) == 2
        assert "--power-budget" in capsys.readouterr().err
        with pytest.raises(SystemExit) as exc:
            cli.main(base + ["--power-budget", "-1"])
        assert exc.value.code == 2
        out = tmp_path / "r.json"
        assert cli.main(base + ["--power-budget", "2.62e-4", "--optimize", "-o", str(out)]) == 0
        text = capsys.readouterr().out
        assert "uniform G" in text and "optimised" in text
        rep = json.loads(out.read_text())
        opt = rep["optimization"]
        assert opt["optimized"]["power_w"] <= 2.62e-4 and opt["optimized"]["mse"] < opt["uniform"]["mse"]
        assert rep["power"]["total_w"] == pytest.approx(opt["optimized"]["power_w"])
        assert {"name", "g_range", "adc_bits"} <= set(opt["layers"][0])
        assert all(row["power_w"] is not None for row in rep["layers"])
    finally:
        if added:
            cli.EXTENSIONS.remove(next(e for e in cli.EXTENSIONS if isinstance(e, PowerExtension)))
