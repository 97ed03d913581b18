"""The noisy onnxruntime executor and the Monte-Carlo driver (DESIGN §4, §6).

(a) noise off + ideal device == plain onnxruntime on the original model (examples and the op-coverage zoo);
(b) quantization and tiling only: deterministic and == interpret.run(g, x, hardware=True), row tiles included;
(c) read noise: per-element variance == 2 s_r^2 / c^2 * sum x^2 (tiling, groups, 1-D, transposed operands);
(d) Monte-Carlo MSE == an independent, literal numpy Monte-Carlo (programming noise with clipping, read noise
    drawn per device per MVM, DAC/ADC, tiling) within the confidence intervals.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

ROOT = Path(__file__).resolve().parents[1]
for p in (str(ROOT), str(ROOT / "tests")):          # works with `pytest` and `python -m pytest`
    if p not in sys.path:
        sys.path.insert(0, p)

from device_models import load_device  # noqa: E402
from memse_compiler import compile_model  # noqa: E402
from memse_compiler.executor import NoisyExecutor, row_tile_name, tile_vectors  # noqa: E402
from memse_compiler.ir import KIND_INPUT, KIND_OUTPUT, schedule  # noqa: E402
from memse_compiler.ir.interpret import operand_values, run as interpret  # noqa: E402
from memse_compiler.ir.ops import rule_for  # noqa: E402
from memse_compiler.montecarlo import run_montecarlo  # noqa: E402
from memse_compiler.pipeline import default_pipeline  # noqa: E402

try:
    from onnx_zoo import op_coverage_models, reference_outputs
except ModuleNotFoundError:  # pragma: no cover
    from tests.onnx_zoo import op_coverage_models, reference_outputs

EXAMPLES = ROOT / "examples"
X = np.load(EXAMPLES / "digits_inputs.npy")
ZOO = op_coverage_models()
IDEAL = load_device("ideal")
QUANT = ["conductance.levels=16", "adc.bits=6", "dac.bits=6", "programming_noise.sigma=0",
         "read_noise.sigma=0"]


def lower(model, device, x):
    return compile_model(model, device, x, pipeline=default_pipeline(analysis=False))[0]


def plain_ort(path: Path, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def example_inputs(name: str) -> np.ndarray:
    """The examples' evaluation batch: the images, or for tokens_digits the same images as int64 ids."""
    return np.load(EXAMPLES / "digits_tokens.npy") if name == "tokens" else X


EXAMPLE_NAMES = ["mlp", "cnn", "rescnn", "attn", "vit", "lstm", "gru", "tokens", "bnn"]


def assert_close(got, want, rtol=1e-5, what=""):
    want = np.asarray(want)
    atol = 1e-6 * max(float(np.abs(want).max()), 1e-3)        # tiny next to the signal's scale
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol, err_msg=what)


# ---- (a) noise off, ideal device: the original model -------------------------------------------------
@pytest.mark.parametrize("name", EXAMPLE_NAMES)
def test_ideal_examples_match_onnxruntime(name):
    path, x = EXAMPLES / f"{name}_digits.onnx", example_inputs(name)
    g = lower(path, IDEAL, x)
    ex = NoisyExecutor(g)
    want = plain_ort(path, x)
    assert_close(ex.run_noiseless(x)["logits"], want, what=name)
    assert_close(ex.run_chip(x, np.random.default_rng(0))["logits"], want, what=name)   # noise off: same


@pytest.mark.parametrize("zm", ZOO, ids=lambda m: m.name)
def test_ideal_zoo_matches_onnxruntime(zm):
    x = zm.batch(np.float32)
    g = lower(zm.model, IDEAL, x)
    values = NoisyExecutor(g).run_noiseless(x)
    for vi, want in zip(zm.model.graph.output, reference_outputs(zm)):
        assert_close(values[vi.name], want, what=f"{zm.name}:{vi.name}")


# ---- (b) quantization + tiling, no noise: the deterministic programmed chip ----------------------------
def check_against_interpreter(g, x):
    ex = NoisyExecutor(g)
    a = ex.run_chip(x, np.random.default_rng(1))
    b = ex.run_chip(x, np.random.default_rng(2))
    hw = interpret(g, x, hardware=True)
    for t, want in hw.items():
        if np.asarray(want).dtype.kind == "f":
            np.testing.assert_array_equal(a[t], b[t], err_msg=t)      # deterministic
            assert_close(a[t], want, what=t)
    for lay in g.layers.values():      # row-tile ADC outputs and the DAC, against the layer's numpy model
        xin = hw[lay.input]
        assert_close(a[f"{lay.name}/dac"], lay.dac(xin), what=f"{lay.name}/dac")
        ps = lay.adc(lay.partial_sums(lay.vectors(lay.dac(xin)), lay.quantized_weight()))
        for r in range(lay.row_tiles):
            got = tile_vectors(lay, a[row_tile_name(lay.name, "adc_out", r)])
            assert_close(got, ps[:, :, :, r, :], what=f"{lay.name} row tile {r}")


@pytest.mark.parametrize("name", EXAMPLE_NAMES)
def test_quantized_tiled_examples_match_interpreter(name):
    rows = 16 if name in ("lstm", "gru", "tokens") else 32       # the recurrent examples' R has 25 and 17 rows
    dev = load_device("rram", QUANT + [f"crossbar.rows={rows}"])
    x = example_inputs(name)[:64]
    g = lower(EXAMPLES / f"{name}_digits.onnx", dev, x)
    assert any(lay.row_tiles > 1 for lay in g.layers.values())
    check_against_interpreter(g, x)


@pytest.mark.parametrize("zm", ZOO, ids=lambda m: m.name)
def test_quantized_tiled_zoo_matches_interpreter(zm):
    # 4 x 4 tiles: row tiles cut conv channels (masks), bias-only tiles, grouped convs gathered per group
    dev = load_device("rram", QUANT + ["crossbar.rows=4", "crossbar.cols=4", "crossbar.bias=" +
                                       ("digital" if len(zm.name) % 2 else "row")])
    x = zm.batch(np.float32)
    check_against_interpreter(lower(zm.model, dev, x), x)


# ---- (c) read noise: exact per-element variance ------------------------------------------------------
READ_ZOO = ["conv_group2", "conv_depthwise", "conv_depthwise_mult2", "conv1d", "conv_pads_asym",
            "conv_dilation2", "conv_same_lower", "gemm_transa_transb0", "gemm_const_a", "gemm_const_a_transa_transb",
            "matmul_3d", "matmul_const_left", "block_depthwise_separable", "mlp_gemm_relu"]


@pytest.mark.parametrize("idx,zm", [(i, m) for i, m in enumerate(ZOO) if m.name in READ_ZOO],
                         ids=lambda v: getattr(v, "name", str(v)))
def test_read_noise_variance(idx, zm):
    s_r = 3e-6
    dev = load_device("rram", ["programming_noise.sigma=0", "adc.bits=null", f"read_noise.sigma={s_r}",
                               "crossbar.rows=4", "crossbar.cols=4",
                               "mapping.scale=" + ("column" if idx % 2 else "layer")])
    x = zm.batch(np.float32)
    g = lower(zm.model, dev, x)
    ex = NoisyExecutor(g, dev)
    chips, rng = 300, np.random.default_rng(idx)
    runs = [ex.run_chip(x, rng) for _ in range(chips)]
    hw, noisy, checked = interpret(g, x, hardware=True), set(), 0
    for unit in schedule(g):
        if unit not in g.layers:
            d = g.nodes[unit]
            if any(t in noisy for t in d["inputs"]):
                noisy.update(d["outputs"])
            continue
        lay = g.layers[unit]
        if lay.input not in noisy:      # noise-free input: the only noise is this layer's read noise
            vec = lay.vectors(lay.dac(hw[lay.input]))                                  # N, P, G, Jb
            c = np.broadcast_to(lay.scale_c, (lay.groups, lay.outs, 1))[:, :, 0]
            var = 2 * s_r ** 2 / c ** 2 * (vec ** 2).sum(-1)[..., None]                # N, P, G, O
            want = lay.geometry.from_vectors(var, hw[lay.input].shape)
            y = np.stack([r[lay.output] for r in runs]).astype(np.float64)
            ratio = y.var(axis=0, ddof=1) / want
            assert abs(ratio.mean() - 1) < 0.05, (lay.name, ratio.mean())
            assert 0.5 < ratio.min() and ratio.max() < 1.6, (lay.name, ratio.min(), ratio.max())
            err = np.abs(y.mean(axis=0) - hw[lay.output]) / np.sqrt(want / chips + 1e-12)
            assert err.max() < 6, (lay.name, err.max())                                 # zero-mean noise
            checked += 1
        noisy.add(lay.output)
    assert checked


@pytest.mark.parametrize("opset", [18, 21])
def test_newer_opsets_give_the_same_chip(opset):
    """ReduceSumSquare takes its axes as an input from opset 18 on: the same chip (seed) at opset 17, 18, 21."""
    import onnx
    from onnx import version_converter
    dev = load_device("rram", ["crossbar.rows=32", "dac.bits=6"])
    model = onnx.load(EXAMPLES / "cnn_digits.onnx")
    chips = [NoisyExecutor(lower(m, dev, X[:8])).run_chip(X[:8], np.random.default_rng(0))["logits"]
             for m in (model, version_converter.convert_version(model, opset))]
    np.testing.assert_array_equal(chips[0], chips[1])


# ---- (d) Monte-Carlo vs an independent literal numpy Monte-Carlo -----------------------------------------
def numpy_montecarlo(g, device, x, chips, seed):
    """Per-chip MSE of every layer output and graph output: programming noise per device and chip (clipped
    at 0 when asked), read noise drawn per device per MVM (each sample, each position), DAC/ADC via the
    layer's own numpy model. Digital ops through the op rules, as the interpreter does."""
    rng = np.random.default_rng(seed)
    pn, s_r = device.programming_noise, device.read_noise.sigma
    ref = g.graph["reference"]
    names = list(g.graph["outputs"]) + [lay.output for lay in g.layers.values()]
    per_chip = {t: [] for t in names}
    for _ in range(chips):
        values = {g.graph["inputs"][0]: x}
        for unit in schedule(g):
            if unit in g.layers:
                lay = g.layers[unit]
                gdev = []
                for tgt in (lay.g_plus, lay.g_minus):
                    d = tgt + np.sqrt(pn.sigma ** 2 + (pn.relative * tgt) ** 2) * rng.standard_normal(tgt.shape)
                    gdev.append(np.maximum(d, 0) if pn.clip_at_zero else d)
                c = lay.scale_c
                xin = values[lay.input]
                if s_r == 0:
                    values[lay.output] = lay.forward(xin, (gdev[0] - gdev[1]) / c)
                    continue
                vec = lay.vectors(lay.dac(xin))                                    # N, P, G, Jb
                n, p = vec.shape[:2]
                shape = (n, p) + gdev[0].shape                                     # a matrix per MVM
                w = ((gdev[0] + s_r * rng.standard_normal(shape)) - (gdev[1] + s_r * rng.standard_normal(shape))) / c
                ps = np.einsum("npgrt,npgort->npgro", lay.split_rows(vec), lay.split_rows(w))
                values[lay.output] = lay.combine(lay.adc(ps), xin.shape)
                continue
            d = g.nodes[unit]
            if d["kind"] in (KIND_INPUT, KIND_OUTPUT):
                continue
            outs = rule_for(d["op"]).forward(d["attrs"], operand_values(g, d["inputs"], values))
            values.update(zip(d["outputs"], outs))
        for t in names:
            per_chip[t].append(float(np.mean((values[t] - ref[t]) ** 2)))
    return {t: np.asarray(v) for t, v in per_chip.items()}


MC_CASES = [
    # name, model, device overrides, chips (numpy MC)
    ("mlp_clip_gmin0", "mlp", ["conductance.g_min=0", "programming_noise.sigma=5e-6", "read_noise.sigma=0",
                               "conductance.levels=16", "adc.bits=null"], 400),
    ("mlp_noclip_gmin0", "mlp", ["conductance.g_min=0", "programming_noise.sigma=5e-6", "read_noise.sigma=0",
                                 "programming_noise.clip_at_zero=false", "adc.bits=null"], 400),
    ("mlp_read_adc_tiles", "mlp", ["programming_noise.sigma=1e-6", "programming_noise.relative=0.05",
                                   "read_noise.sigma=3e-6", "adc.bits=5", "crossbar.rows=32", "crossbar.bias=digital",
                                   "mapping.scale=column"], 400),
    ("cnn_all", "cnn", ["conductance.g_min=0", "programming_noise.sigma=3e-6", "read_noise.sigma=2e-6",
                        "dac.bits=6", "adc.bits=6", "crossbar.rows=32"], 250),
]


@pytest.mark.parametrize("case", MC_CASES, ids=lambda c: c[0])
def test_montecarlo_matches_independent_numpy(case):
    _, model, overrides, chips = case
    dev = load_device("rram", overrides)
    x = X[:8].astype(np.float64)
    g = lower(EXAMPLES / f"{model}_digits.onnx", dev, x)
    res = run_montecarlo(g, dev, chips=4 * chips, seed=2, progress=False, signals=[])
    ours = numpy_montecarlo(g, dev, x, chips, seed=1)
    for t, vals in ours.items():
        m2, se2 = vals.mean(), vals.std(ddof=1) / np.sqrt(vals.size)
        m1 = res["signals"][t]["mse"]
        lo, hi = res["signals"][t]["ci95"]
        se1 = (hi - lo) / (2 * 1.96)
        assert se1 < 0.05 * m1 and se2 < 0.1 * m2, (t, m1, se1, m2, se2)     # the comparison is sharp
        # 3 standard errors of the difference (1.5x the combined 95% CI): deterministic seeds, robust margin
        assert abs(m1 - m2) <= 3 * np.hypot(se1, se2), (t, m1, m2, se1, se2)


def test_montecarlo_result_contract(capsys, monkeypatch):
    dev = load_device("rram", ["adc.bits=6", "crossbar.rows=32", "crossbar.bias=digital"])
    g = lower(EXAMPLES / "cnn_digits.onnx", dev, X[:16])
    res = run_montecarlo(g, dev, chips=1000, precision=0.1, min_chips=10, progress=False)
    assert 10 <= res["chips"] < 1000                                    # stopped early at +-10%
    out = res["outputs"]["logits"]
    lo, hi = out["ci95"]
    assert (hi - lo) / 2 <= 0.1 * out["mse"] and lo < out["mse"] < hi
    assert out["bias2"] + out["variance"] == pytest.approx(out["mse"], rel=1e-6)
    assert g.graph["montecarlo"] is res and g.graph["timing"]["mc_s"] == res["mc_s"] > 0
    assert set(res["layers"]) == set(g.layers)
    edge_tensors = {t for _, _, t in g.edges(data="tensor")} - set(g.graph["inputs"])
    assert edge_tensors <= set(res["signals"]), sorted(edge_tensors - set(res["signals"]))[:5]
    # seeded: reproducible, whether the next chip's noise is drawn in a background thread or in line
    # (the pipelined loop checks chip n's convergence after chip n+1 has run; it must stop where the
    # sequential loop stops)
    for prefetch in (False, True):      # res: the default, chips 1-2 in line, then the pipeline if it pays
        again = run_montecarlo(g, dev, chips=1000, precision=0.1, min_chips=10, progress=False, prefetch=prefetch)
        assert again["chips"] == res["chips"]
        assert again["outputs"]["logits"]["mse"] == pytest.approx(out["mse"], rel=1e-6)
        assert again["layers"] == pytest.approx(res["layers"], rel=1e-6)
    import memse_compiler.montecarlo as mc
    for threshold in (0.0, 1e9):        # the default's hand-over to the pipeline after run 2, and none
        monkeypatch.setattr(mc, "PIPELINE_MIN_S", threshold)
        for chips in (1, 2, 3, 5):
            short = [run_montecarlo(g, dev, chips=chips, progress=False, signals=[], prefetch=p)
                     for p in (None, True, False)]
            assert [r["chips"] for r in short] == [chips] * 3
            assert short[0]["outputs"]["logits"]["mse"] == pytest.approx(short[2]["outputs"]["logits"]["mse"], rel=1e-6)
            assert short[1]["outputs"]["logits"]["mse"] == pytest.approx(short[2]["outputs"]["logits"]["mse"], rel=1e-6)
        stop = run_montecarlo(g, dev, chips=1000, precision=0.1, min_chips=10, progress=False)
        assert stop["chips"] == res["chips"] and stop["outputs"]["logits"]["mse"] == pytest.approx(out["mse"], rel=1e-6)
    capsys.readouterr()
    run_montecarlo(g, dev, chips=3, progress=True, signals=[])
    assert capsys.readouterr().err == ""                                # no progress bar for short runs


@pytest.mark.parametrize("overrides", [["crossbar.rows=32"], ["dac.bits=6", "crossbar.bias=digital"]])
def test_chips_stacked_in_one_run_are_the_one_chip_runs(overrides):
    """An MLP's chips stacked on the batch axis of one session run: each chip's signals are bitwise those of the
    one-chip executor fed that chip's weights and read noise; conv networks are refused with the reason."""
    dev = load_device("rram", overrides)
    x = X[:20]
    g = lower(EXAMPLES / "mlp_digits.onnx", dev, x)
    one, four = NoisyExecutor(g, threads=1), NoisyExecutor(g, threads=1, chips_per_run=4)
    feed = four.chip_feed(len(x), np.random.default_rng(3))
    chips = four.split_chips(four.run_feed(x, feed))
    assert len(chips) == 4 and set(chips[0]) == set(one.run_noiseless(x))
    for c, values in enumerate(chips):
        own = {}
        for p1, p4 in zip(one.plans, four.plans):
            own[p1.w_input] = np.ascontiguousarray(feed[p4.w_input][c])
            if p1.b_input:
                own[p1.b_input] = np.ascontiguousarray(feed[p4.b_input][c]).reshape(-1)
            for (name1, _, _), (name4, _, _) in zip(p1.noise, p4.noise):
                own[name1] = np.ascontiguousarray(feed[name4][c])
        want = one.run_feed(x, own)
        for name, v in want.items():
            np.testing.assert_array_equal(values[name], v, err_msg=name)
    assert not np.array_equal(chips[0]["logits"], chips[1]["logits"])       # four different chips
    noiseless = four.split_chips(four.run_noiseless(x))
    np.testing.assert_array_equal(noiseless[3]["logits"], one.run_noiseless(x)["logits"])
    with pytest.raises(ValueError, match="not a .* product"):
        NoisyExecutor(lower(EXAMPLES / "cnn_digits.onnx", dev, x), chips_per_run=2)


def test_montecarlo_with_stacked_chips_counts_and_stops_like_one_by_one(monkeypatch):
    """run_montecarlo stacks an MLP's chips (auto_chips_per_run); it still records exactly `chips` chips, stops at
    the same chip whether pipelined or not, and agrees with a one-chip-per-run executor within the CIs."""
    import memse_compiler.montecarlo as mc
    from memse_compiler.chip_batching import auto_chips_per_run
    dev = load_device("rram")
    x = X[:40]
    g = lower(EXAMPLES / "mlp_digits.onnx", dev, x)
    assert auto_chips_per_run(g, len(x)) > 1
    for threshold in (0.0, 1e9):
        monkeypatch.setattr(mc, "PIPELINE_MIN_S", threshold)
        for chips in (1, 5, 70):
            res = [run_montecarlo(g, dev, chips=chips, progress=False, signals=[], prefetch=p) for p in (None, True, False)]
            assert [r["chips"] for r in res] == [chips] * 3
            assert res[0]["outputs"]["logits"]["mse"] == res[2]["outputs"]["logits"]["mse"]
            assert res[1]["outputs"]["logits"]["mse"] == pytest.approx(res[2]["outputs"]["logits"]["mse"], rel=1e-12)
        stops = [run_montecarlo(g, dev, chips=2000, precision=0.05, min_chips=10, progress=False, signals=[],
                                prefetch=p) for p in (None, False)]
        assert stops[0]["chips"] == stops[1]["chips"] < 2000
    stacked = stops[1]["outputs"]["logits"]
    single = run_montecarlo(g, dev, chips=2000, precision=0.05, min_chips=10, progress=False, signals=[],
                            executor=NoisyExecutor(g, dev), seed=1)["outputs"]["logits"]
    half = (stacked["ci95"][1] - stacked["ci95"][0]) / 2 + (single["ci95"][1] - single["ci95"][0]) / 2
    assert abs(stacked["mse"] - single["mse"]) < half
