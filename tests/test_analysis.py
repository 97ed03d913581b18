"""The analysis against independent computations: a literal numpy Monte-Carlo (tests/mc_reference.py),
hand-computed single-layer variances, and the exact noiseless chip."""
from __future__ import annotations

import dataclasses

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from device_models import load_device
from memse_compiler import compile_model
from memse_compiler.ir import interpret

from mc_reference import monte_carlo

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
X = np.load(EXAMPLES / "digits_inputs.npy").astype(np.float64)
TOKENS = np.load(EXAMPLES / "digits_tokens.npy")             # the same images as int64 ids, for tokens_digits


def example_inputs(name: str, n: int = 16) -> np.ndarray:
    return (TOKENS if name == "tokens" else X)[:n]


def analyse(name, overrides, n=16, mode="refined"):
    dev = load_device("rram", overrides)
    g, _ = compile_model(str(EXAMPLES / f"{name}_digits.onnx"), dev, example_inputs(name, n), options={"mode": mode})
    return g, dev


# (model, device overrides, chips): sigma/G from ~0.1% to 5%, g_min 0, levels 16..256, converters, tiling
CASES = [
    ("mlp", ["read_noise.sigma=0", "adc.bits=null"], 300),
    ("mlp", ["conductance.g_min=0", "programming_noise.sigma=5e-6", "conductance.levels=256"], 300),
    ("mlp", ["programming_noise.sigma=1e-7", "conductance.levels=16", "read_noise.sigma=1e-6"], 200),
    # a 6-bit DAC re-quantizing the previous 6-bit ADC's lattice: aliasing, not the uniform step^2/12
    ("mlp", ["dac.bits=6", "adc.bits=6", "read_noise.sigma=0"], 300),
    ("cnn", [], 200),
    ("cnn", ["crossbar.rows=32", "adc.bits=6", "dac.bits=6"], 200),
    ("cnn", ["conductance.g_min=0", "programming_noise.sigma=5e-6", "read_noise.sigma=2e-6"], 200),
    ("rescnn", ["read_noise.sigma=0"], 200),         # literal read noise is slow in the reference; cnn has it
    ("rescnn", ["adc.bits=5", "programming_noise.sigma=1e-6", "read_noise.sigma=0"], 200),
    ("attn", [], 200),                               # a trained one-block transformer: attention, LayerNorm
    # torch's nn.TransformerEncoderLayer: batch moved off axis 0 and folded into the heads (batch_layout.py)
    ("vit", [], 200),
    ("vit", ["programming_noise.sigma=5e-6", "adc.bits=6", "crossbar.rows=32"], 200),
    # recurrent: W and R are each one crossbar driven at all 8 steps (programming noise common to the steps)
    ("lstm", [], 200),
    ("gru", ["programming_noise.sigma=1e-6", "adc.bits=6"], 200),
    # int64 token ids: the embedding lookup is an exact digital op, the projections crossbars (literal read noise
    # over 64 tokens is slow in the reference; the executor checks it)
    ("tokens", ["read_noise.sigma=0"], 150),
    # binarised activations: sign of each one-row-tile layer's ADC output, its moments summed over the ADC codes
    ("bnn", [], 300),
    ("bnn", ["programming_noise.sigma=5e-7"], 300),
]


@pytest.mark.parametrize("name,overrides,chips", CASES, ids=[f"{c[0]}-{'-'.join(c[1]) or 'rram'}" for c in CASES])
def test_output_mse_matches_monte_carlo(name, overrides, chips):
    g, dev = analyse(name, overrides)
    mse = g.graph["analysis"]["outputs"]["logits"]["mse"]
    mc, ci = monte_carlo(g, dev, example_inputs(name), chips, seed=1)["logits"]
    assert ci < 0.1 * mc, "the Monte-Carlo reference must be tighter than the tolerance"
    assert abs(mse - mc) <= 0.10 * mc + ci, (mse, mc, ci)


def test_diagonal_mode_underestimates_deep_nets_and_sensitivity_fixes_it():
    """On the residual CNN the element-wise model misses the shared-kernel and residual correlations."""
    overrides = ["programming_noise.sigma=4e-6", "read_noise.sigma=0", "adc.bits=null"]
    diag = analyse("rescnn", overrides, mode="diagonal")[0].graph["analysis"]["outputs"]["logits"]["mse"]
    g, dev = analyse("rescnn", overrides)
    full = g.graph["analysis"]["outputs"]["logits"]["mse"]
    mc, ci = monte_carlo(g, dev, X[:16], 150, seed=2)["logits"]
    assert diag < 0.8 * mc
    assert abs(full - mc) <= 0.1 * mc + ci


def test_refined_mode_gets_the_inner_layers_right():
    """Every crossbar layer's output MSE against the executor's Monte-Carlo: the refined (default) mode within
    10 %; the sensitivity mode, right at the output only, is >= 15 % low on the residual CNN's second conv."""
    from memse_compiler.montecarlo import run_montecarlo
    g, dev = analyse("rescnn", [], n=64)
    sens = analyse("rescnn", [], n=64, mode="sensitivity")[0].graph["analysis"]["layers"]
    mc = run_montecarlo(g, dev, X[:64], chips=3000, precision=0.03, seed=3, progress=False, signals=[])
    for name, m in mc["layers"].items():
        lo, hi = mc["signals"][g.layers[name].output]["ci95"]
        assert (hi - lo) / 2 <= 0.03 * m
        assert abs(g.graph["analysis"]["layers"][name] - m) <= 0.1 * m + (hi - lo) / 2, name
    assert sens["/conv2/Conv"] < 0.85 * mc["layers"]["/conv2/Conv"]


def test_refinement_leaves_a_layers_own_noise_exact():
    """The refinement rescales only the part of a layer's output variance that its input error makes (the
    probes' estimate of it); the layer's own noise is exact per element. So the first layer (exact input, no
    DAC) keeps exactly the diagonal variance, and every layer's variance is at least its own noise."""
    from passes.crossbar_math import propagated_variance
    g, _ = analyse("cnn", [], n=8)
    diag, _ = analyse("cnn", [], n=8, mode="diagonal")
    first, *rest = g.layers.values()
    np.testing.assert_array_equal(g.graph["moments"][first.output][1], diag.graph["moments"][first.output][1])
    for layer in rest:
        cm = g.graph["linearization"][layer.name]
        own = cm.out_var - propagated_variance(layer, cm)
        assert np.all(g.graph["moments"][layer.output][1] >= own - 1e-15)


def test_conv_output_probes_never_pair_positions():
    """A conv layer as the graph output (6 x 8 x 8 elements per sample: probes, not one-hot): its errors are
    correlated across positions (shared weights) but not across channels (independent weight rows, exact
    input). One probe per position with random channel signs is then exact, where Rademacher probes over
    all elements are off by ~10 % here."""
    from passes.sensitivity import probes_for
    rng = np.random.default_rng(4)
    w, x = rng.standard_normal((6, 2, 3, 3)), rng.random((3, 2, 8, 8))
    node = helper.make_node("Conv", ["x", "W"], ["y"], name="conv", pads=[1, 1, 1, 1])
    graph = helper.make_graph([node], "conv", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT,
                                                                            ["N", 2, 8, 8])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 6, 8, 8])],
                              [numpy_helper.from_array(w.astype(np.float32), "W")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    dev = load_device("rram", ["adc.bits=null", "read_noise.sigma=0"])
    g, _ = compile_model(model, dev, x)
    out = g.graph["analysis"]["outputs"]["y"]
    assert out["probes"] == 64
    assert out["variance"] == pytest.approx(out["variance_diagonal"], rel=1e-9)
    probes, traces = probes_for((3, 6, 8, 8), 64, 128, rng)
    assert len(probes) == 128 and traces == 2
    assert np.array_equal(sum(np.abs(p) for p, _ in probes), np.full((3, 6, 8, 8), 2.0))   # each element twice


@pytest.mark.parametrize("fraction", [0.0, 0.5, 1.0])
def test_residual_fraction_keeps_each_elements_variance(fraction):
    """A ReLU's residual (its variance beyond the Bussgang gain) split into a coherent part, folded into the
    gain, and an independent injection: the element's own variance is unchanged whatever the split."""
    from memse_compiler.ir import stats
    from memse_compiler.ir.ops.base import Linearization
    from passes.moments import analysis_options, coherent_residual
    mu, var = np.array([-0.3, 0.0, 0.2, 1.5, 0.4]), np.array([0.04, 0.09, 0.01, 0.2, 0.0])
    m = stats.relu_moments(mu, var)
    resid = np.maximum(m.var - m.gain ** 2 * var, 0.0)
    lz = coherent_residual(Linearization(gains=[m.gain], residual=[resid]), var, fraction)
    np.testing.assert_allclose(lz.gains[0] ** 2 * var + lz.residual[0], m.gain ** 2 * var + resid, rtol=1e-12)
    np.testing.assert_allclose(lz.residual[0][var > 0], (1 - fraction) * resid[var > 0], rtol=1e-12)
    assert analysis_options({"residual": fraction})["residual"] == fraction
    with pytest.raises(ValueError, match="residual"):
        analysis_options({"residual": 1.5})


def _single_gemm(w: np.ndarray, b: np.ndarray) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", w.shape[1]])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", w.shape[0]])
    node = helper.make_node("Gemm", ["x", "W", "B"], ["y"], name="fc", transB=1)
    graph = helper.make_graph([node], "one", [x], [y], [numpy_helper.from_array(w.astype(np.float32), "W"),
                                                       numpy_helper.from_array(b.astype(np.float32), "B")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_single_layer_variance_by_hand():
    """One Gemm, continuous levels, no clipping in reach: Var(y_i) = sum_j 2 sigma^2 / c^2 x_j^2 exactly
    (bias row included, x = 1), and mean = W x + b."""
    rng = np.random.default_rng(0)
    w, b = rng.standard_normal((5, 7)), rng.standard_normal(5)
    x = rng.random((3, 7))
    sigma = 1e-6
    dev = load_device("ideal", ["conductance.levels=null", f"programming_noise.sigma={sigma}",
                                "conductance.g_min=5e-5"])
    g, _ = compile_model(_single_gemm(w, b), dev, x, options={"mode": "diagonal"})
    layer = next(iter(g.layers.values()))
    c = float(layer.scale_c.ravel()[0])
    mean, var = g.graph["moments"]["y"]
    wq, bq = w.astype(np.float32).astype(float), b.astype(np.float32).astype(float)
    np.testing.assert_allclose(mean, x @ wq.T + bq, rtol=1e-9)
    np.testing.assert_allclose(var, np.broadcast_to(2 * sigma ** 2 / c ** 2 * ((x ** 2).sum(1) + 1)[:, None], var.shape),
                               rtol=1e-9)
    # the sensitivity mode agrees (one layer: nothing to correlate)
    g2, _ = compile_model(_single_gemm(w, b), dev, x, options={"mode": "sensitivity"})
    assert g2.graph["analysis"]["outputs"]["y"]["variance"] == pytest.approx(float(var.mean()), rel=1e-9)


@pytest.mark.parametrize("sweep_dtype", ["float64", "float32"])
def test_global_average_pool_of_a_conv_by_hand(sweep_dtype):
    """Conv -> GlobalAveragePool: programming noise is shared by every position, so the pooled error is
    dW . mean_p(x_p) and Var = 2 sigma^2 / c^2 (sum_j mean_p(x_pj)^2 + 1) (bias row), far above the diagonal
    model's average of per-position variances. The refined analysis must give it (its Rademacher probes are
    exact here: the weight noise is independent across outputs)."""
    rng = np.random.default_rng(1)
    w, b = rng.standard_normal((4, 2, 3, 3)), rng.standard_normal(4)
    x = rng.random((3, 2, 6, 6))
    nodes = [helper.make_node("Conv", ["x", "W", "B"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("GlobalAveragePool", ["c"], ["p"], name="gap"),
             helper.make_node("Flatten", ["p"], ["y"], name="flat")]      # p is internal: not the output
    graph = helper.make_graph(nodes, "conv_gap", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT,
                                                                                 ["N", 2, 6, 6])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 4])],
                              [numpy_helper.from_array(w.astype(np.float32), "W"),
                               numpy_helper.from_array(b.astype(np.float32), "B")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    sigma = 1e-6
    dev = load_device("ideal", ["conductance.levels=null", f"programming_noise.sigma={sigma}",
                                "conductance.g_min=5e-5"])
    g, _ = compile_model(model, dev, x, options={"sweep_dtype": sweep_dtype})
    layer = next(iter(g.layers.values()))
    c = float(layer.scale_c.ravel()[0])
    pooled = layer.vectors(x).mean(axis=1)[:, 0, :]                                 # N, Jb (bias row: 1)
    want = 2 * sigma ** 2 / c ** 2 * (pooled ** 2).sum(axis=1)                       # per sample, every channel
    var = g.graph["moments"]["p"][1]
    assert float(var.mean()) == pytest.approx(float(want.mean()), rel=1e-6 if sweep_dtype == "float64" else 1e-5)
    diag = compile_model(model, dev, x, options={"mode": "diagonal"})[0].graph["moments"]["p"][1]
    assert float(diag.mean()) < 0.5 * float(want.mean())                            # the test is sharp


def test_second_order_programming_term_by_hand():
    """1x1 conv -> 1x1 conv -> GlobalAveragePool: the pooled output is (W2 + d2)(W1 + d1) xbar, so
    Var(y_o) = S2 |W1 xbar|^2 + S1 |xbar|^2 sum_j W2_oj^2 + C1 S1 S2 |xbar|^2 exactly (S = 2 sigma^2 / c^2,
    continuous levels, no clipping). The last, second-order term is coherent over positions: d2 is shared and
    so is the input error d1 x_p. The sensitivity backward through a random chip and its mirror gives it
    exactly (Rademacher signs, one-hot output probes); taken as independent per position it is ~P times
    too small."""
    rng = np.random.default_rng(2)
    c0, c1, c2 = 3, 6, 4
    w1, w2 = rng.standard_normal((c1, c0, 1, 1)), rng.standard_normal((c2, c1, 1, 1))
    x = rng.random((3, c0, 5, 5))
    nodes = [helper.make_node("Conv", ["x", "W1"], ["h"], name="conv1"),
             helper.make_node("Conv", ["h", "W2"], ["c"], name="conv2"),
             helper.make_node("GlobalAveragePool", ["c"], ["p"], name="gap"),
             helper.make_node("Flatten", ["p"], ["y"], name="flat")]
    graph = helper.make_graph(nodes, "two_convs", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT,
                                                                                  ["N", c0, 5, 5])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", c2])],
                              [numpy_helper.from_array(w1.astype(np.float32), "W1"),
                               numpy_helper.from_array(w2.astype(np.float32), "W2")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    sigma = 2e-5                          # 20% of the window: the second-order term is a sizeable share
    dev = load_device("ideal", ["conductance.levels=null", f"programming_noise.sigma={sigma}",
                                "programming_noise.clip_at_zero=false"])
    g, _ = compile_model(model, dev, x)
    s1, s2 = (2 * sigma ** 2 / float(layer.scale_c.ravel()[0]) ** 2 for layer in g.layers.values())
    a, b = (w.astype(np.float32).astype(float)[:, :, 0, 0] for w in (w1, w2))
    xbar = x.astype(np.float32).astype(float).mean(axis=(2, 3))                     # N, C0
    xx = (xbar ** 2).sum(axis=1)[:, None]
    second = c1 * s1 * s2 * xx
    want = s2 * ((xbar @ a.T) ** 2).sum(axis=1)[:, None] + s1 * xx * (b ** 2).sum(axis=1)[None, :] + second
    out = g.graph["analysis"]["outputs"]["y"]
    assert out["variance"] == pytest.approx(float(want.mean()), rel=1e-6)
    assert float(second.mean()) > 0.1 * float(want.mean())                          # the test is sharp


@pytest.mark.parametrize("name", ["mlp", "cnn", "rescnn", "attn", "vit"])
def test_quantization_only_is_exact(name):
    """No programming/read noise: the chip is deterministic; the analysis mean is the programmed chip's
    output exactly (levels, DAC, ADC and tiling included) and its variance is 0."""
    g, _ = analyse(name, ["programming_noise.sigma=0", "read_noise.sigma=0", "conductance.levels=16",
                          "adc.bits=6", "dac.bits=5", "crossbar.rows=32"])
    hw = interpret.run(g, X[:16], hardware=True)["logits"]
    mean, var = g.graph["moments"]["logits"]
    np.testing.assert_allclose(mean, hw, rtol=1e-9, atol=1e-12)
    assert np.all(var == 0)
    out = g.graph["analysis"]["outputs"]["logits"]
    assert out["mse"] == pytest.approx(np.mean((hw - g.graph["reference"]["logits"]) ** 2), rel=1e-9)


def test_every_edge_is_annotated():
    g, _ = analyse("rescnn", ["adc.bits=6"])
    for u, v, d in g.edges(data=True):
        assert {"mean_expr", "var_expr", "mean", "var", "mse", "bias2", "variance"} <= set(d), (u, v)
        assert np.isfinite(d["mse"])


@pytest.mark.parametrize("max_exact", [64, 4])       # 10 outputs: one backward each, or Rademacher probes
def test_output_layer_row_and_edges_agree_with_the_output(max_exact):
    from memse_compiler.ir.pass_base import PassContext
    from passes.sensitivity import Sensitivity
    g, dev = analyse("cnn", ["adc.bits=6"])
    if max_exact < 10:
        Sensitivity(max_exact=max_exact, probes=64).apply(g, PassContext(device=dev, inputs=X[:16], options={}))
    out = g.graph["analysis"]["outputs"]["logits"]
    assert out["probes"] == (None if max_exact >= 10 else 64)
    (fc,) = [name for name, layer in g.layers.items() if layer.output == "logits"]
    assert g.graph["analysis"]["layers"][fc] == pytest.approx(out["mse"], rel=1e-12)
    edges = [d for _, _, d in g.edges(data=True) if d["tensor"] == "logits"]
    assert edges and all(d["mse"] == pytest.approx(out["mse"], rel=1e-12) for d in edges)
    assert all(float(np.mean(d["var"])) == pytest.approx(out["variance"], rel=1e-9) for d in edges)


def test_closed_form_matches_at_point_and_tracks_converters():
    g, dev = analyse("cnn", ["adc.bits=6", "dac.bits=6"], n=32)
    cf = g.graph["closed_form"]["logits"]
    full = g.graph["analysis"]["outputs"]["logits"]["mse"]
    assert cf.mse() == pytest.approx(full, rel=1e-9)
    assert float(cf.expression.subs(cf.point_symbols())) == pytest.approx(full, rel=1e-4)
    for override, args in [({"adc.bits": 5}, {"adc_bits": 5}), ({"conductance.levels": 32}, {"levels_v": 32}),
                           ({"programming_noise.sigma": 3e-6}, {"sigma_v": 3e-6})]:
        g2, _ = compile_model(str(EXAMPLES / "cnn_digits.onnx"), dev.with_overrides(override), X[:32])
        assert cf.mse(**args) == pytest.approx(g2.graph["analysis"]["outputs"]["logits"]["mse"], rel=0.15)


def test_closed_form_scales_the_nonlinear_residual_with_the_noise():
    """The nonlinearities' residual variance is driven by the noise: the closed form scales it with the noise
    variance terms instead of leaving it in the constant. Where the noise falls, that is what keeps the form close
    to a full re-analysis of the residual CNN: at sigma x0.5 +3.5 % against +7.4 % with it in the constant; at
    sigma x2, where it is 1 % of the MSE, +0.5 % against -0.4 %."""
    x = X[:64]
    dev = load_device("rram")
    g, _ = compile_model(str(EXAMPLES / "rescnn_digits.onnx"), dev, x)
    cf = g.graph["closed_form"]["logits"]
    at_point = cf.terms()["nonlinearity"]
    assert at_point > 0.01 * cf.mse()
    assert cf.mse() == pytest.approx(g.graph["analysis"]["outputs"]["logits"]["mse"], rel=1e-9)
    for k, tol in [(0.5, 0.15), (2.0, 0.08)]:
        sigma_v = dev.programming_noise.sigma * k
        g2, _ = compile_model(str(EXAMPLES / "rescnn_digits.onnx"),
                              dev.with_overrides({"programming_noise.sigma": sigma_v}), x)
        full = g2.graph["analysis"]["outputs"]["logits"]["mse"]
        scaled = cf.mse(sigma_v=sigma_v)
        in_constant = scaled - cf.terms(sigma_v=sigma_v)["nonlinearity"] + at_point
        assert scaled == pytest.approx(full, rel=tol)
        if k < 1:
            assert abs(scaled - full) < abs(in_constant - full)


def test_clip_model_sums_equal_the_per_weight_sums_at_any_sigma_and_g():
    """The level histogram of a layer gives, at another sigma and G, exactly the row-power weighted sums over
    the weights of the clipped weight variance and the shrink numerator, computed weight by weight on the
    layer re-mapped at that G (quantized levels are fractions of G)."""
    from passes.closed_form import ClipModel
    from passes.crossbar_math import weight_statistics
    from passes.map_conductances import map_layer
    dev = load_device("rram", ["conductance.levels=16"])
    g, _ = compile_model(str(EXAMPLES / "cnn_digits.onnx"), dev, X[:16])
    for name, layer in g.layers.items():
        cm = g.graph["linearization"][name]
        model = ClipModel.of_layer(layer, cm, dev)
        power = np.mean(cm.mu_vec ** 2 + cm.v_vec, axis=(0, 1))[:, None, :]          # (G, 1, Jb)
        for sigma_v, scale in [(2e-6, 1.0), (5e-6, 1.0), (2e-6, 0.3), (1e-6, 0.6)]:
            G = float(np.mean(layer.g_range)) * scale
            remapped = dataclasses.replace(layer, g_range=np.full(layer.w_max.shape, G))
            map_layer(remapped, dev)
            d = dev.with_overrides({"programming_noise.sigma": sigma_v})
            w_bar, w_var = weight_statistics(remapped, d)
            w = remapped.quantized_weight()
            var_sum, shrink = model.stats(sigma_v, G)
            assert var_sum == pytest.approx(float(np.sum(power * w_var)), rel=1e-9)
            want = float(np.sum(power * np.abs(w) * (np.abs(w) - np.abs(w_bar)))) / float(np.sum(power * w * w))
            assert shrink == pytest.approx(want, rel=1e-9)
            assert shrink > 0       # a device near g_min reads high on average: clipping shrinks the weights


def test_closed_form_follows_clipping_along_g():
    """Halving or quartering every layer's G keeps sigma/G's effect but changes how much of each device's noise
    clipping removes and how far it shrinks the weights; the fitted form followed sigma only (+15 % / +51 %
    at G x0.5 / x0.25 on the MLP before the clip models)."""
    x = X[:64]
    dev = load_device("rram")
    g, _ = compile_model(str(EXAMPLES / "mlp_digits.onnx"), dev, x)
    cf = g.graph["closed_form"]["logits"]
    cond = dev.conductance
    for k in (0.5, 0.25):
        g2, _ = compile_model(str(EXAMPLES / "mlp_digits.onnx"),
                              dev.with_overrides({"conductance.g_max": cond.g_min + k * (cond.g_max - cond.g_min)}), x)
        full = g2.graph["analysis"]["outputs"]["logits"]["mse"]
        assert cf.mse(g_ranges={n: v * k for n, v in cf.g0.items()}) == pytest.approx(full, rel=0.05)
    assert float(cf.expression.subs(cf.point_symbols())) == pytest.approx(cf.mse(), rel=1e-4)


def test_series_layers_follow_the_dataflow():
    """A chain: every layer is in series with every other; a residual branch: its layers are in series with the
    stem and the head, but the stem and the head are not in series with the branch (the skip bypasses it)."""
    from passes.closed_form import series_layers
    g, _ = analyse("rescnn", [], n=8)
    series = {k: set(v) for k, v in series_layers(g, "logits").items()}
    stem, conv1, conv2, fc = list(g.layers)
    assert series == {stem: {fc}, conv1: {stem, conv2, fc}, conv2: {stem, conv1, fc}, fc: {stem}}
    g, _ = analyse("mlp", [], n=8)
    names = set(g.layers)
    assert {k: set(v) for k, v in series_layers(g, "logits").items()} == {k: names - {k} for k in names}


@pytest.mark.parametrize("name", ["cnn", "rescnn"])
def test_quantization_only_executor_equals_analysis_mean(name):
    """The Monte-Carlo executor's deterministic chip (no programming/read noise) is the analysis' mean."""
    from memse_compiler.executor import NoisyExecutor
    g, dev = analyse(name, ["programming_noise.sigma=0", "read_noise.sigma=0", "conductance.levels=16",
                            "adc.bits=6", "dac.bits=6", "crossbar.rows=32"])
    ex = NoisyExecutor(g, dev)
    rng = np.random.default_rng(0)
    a, b = ex.run_chip(X[:16], rng)["logits"], ex.run_chip(X[:16], rng)["logits"]
    np.testing.assert_array_equal(a, b)
    mean = g.graph["moments"]["logits"][0]
    np.testing.assert_allclose(a, mean, rtol=1e-4, atol=1e-4 * np.abs(mean).max())


def test_every_op_coverage_model_against_the_executor():
    """All op-coverage models (every supported op and Conv/Gemm variant, random weights), tiled and
    with an ADC: the analysis' output MSE against the Monte-Carlo executor (measured: 70/71 within 10%)."""
    from memse_compiler.montecarlo import run_montecarlo
    from onnx_zoo import op_coverage_models
    dev = load_device("rram", ["crossbar.rows=16", "crossbar.cols=8", "adc.bits=7"])
    misses = []
    for zm in op_coverage_models():
        x = zm.batch()
        g, _ = compile_model(zm.model, dev, x)
        mc = run_montecarlo(g, dev, x, chips=300, precision=0.03, seed=0, progress=False, signals=[])
        for out, o in g.graph["analysis"]["outputs"].items():
            m = mc["outputs"][out]
            half = (m["ci95"][1] - m["ci95"][0]) / 2
            if abs(o["mse"] - m["mse"]) > 0.12 * m["mse"] + half:
                misses.append((zm.name, out, o["mse"], m["mse"], half))
    assert not misses, misses


@pytest.mark.parametrize("overrides", [[], ["programming_noise.relative=0.05"], ["programming_noise.clip_at_zero=false"],
                                       ["conductance.levels=16", "mapping.scale=column"], ["conductance.g_min=0"]])
def test_weight_statistics_by_level_pairs_equal_the_per_weight_ones(overrides):
    """With quantized levels the clipped pair statistics are evaluated once per pair of levels and gathered:
    bitwise the numbers of the per-weight evaluation (the same function on the same conductances)."""
    from passes.crossbar_math import device_std, level_pairs, weight_statistics
    from passes.symbolic import weight_stat_function
    dev = load_device("rram", overrides)
    used = 0
    for name in ("rescnn", "mlp"):
        g, _ = compile_model(str(EXAMPLES / f"{name}_digits.onnx"), dev, X[:4])
        for layer in g.layers.values():
            want = weight_stat_function(dev.programming_noise.clip_at_zero)(
                layer.g_plus, layer.g_minus, device_std(layer.g_plus, dev), device_std(layer.g_minus, dev),
                layer.scale_c)
            got = weight_statistics(layer, dev)
            used += level_pairs(layer, dev.conductance.levels) is not None
            for a, b in zip(want, got):
                np.testing.assert_array_equal(np.broadcast_to(a, layer.g_plus.shape), b)
    assert used > 0


@pytest.mark.parametrize("name,overrides", [("mlp", []), ("cnn", []), ("rescnn", ["programming_noise.sigma=4e-6"])])
def test_closed_form_knows_the_noise_without_clipping(name, overrides):
    """The closed form's V without clipping (clip-free device variances, no shrink of the layers in series),
    from which it picks the scale of its clip-free law passes, is what a compile of a device that does not clip
    measures (0.4-0.9 % here)."""
    from passes.closed_form import unclipped_noise
    g, dev = analyse(name, overrides, n=64)
    free, _ = analyse(name, overrides + ["programming_noise.clip_at_zero=false"], n=64)
    cf, cf_free = g.graph["closed_form"]["logits"], free.graph["closed_form"]["logits"]
    assert unclipped_noise(cf) > 1.2 * cf.v0          # clipping removes a good part of the devices' variance
    assert unclipped_noise(cf) == pytest.approx(cf_free.v0, rel=0.03)


def test_closed_form_follows_the_levels_by_rerounding_the_weights():
    """Rounding is deterministic: the form re-rounds every weight at the other number of levels and runs the
    noiseless chip, whose output change adds to the output's bias at the compiled point as a vector. The
    uniform Delta^2/12 model was +10.7 % / +26.8 % off on the MLP at 32 / 16 levels (64 compiled); the chip run
    equals that of a chip compiled at those levels. With 6-bit converters too: the runs leave them ideal, as
    the noise dithers them (+0.1 % at 32 levels; with them in the runs +27 %, the uniform model +12 %)."""
    from memse_compiler.ir import interpret
    x = X[:64]
    dev = load_device("rram")
    path = str(EXAMPLES / "mlp_digits.onnx")
    g, _ = compile_model(path, dev, x)
    cf = g.graph["closed_form"]["logits"]
    assert cf.levels_shift(64) == 0.0
    for n in (32, 16):
        g2, _ = compile_model(path, dev.with_overrides({"conductance.levels": n}), x)
        chip = interpret.run(g2, g2.graph["reference"][g2.graph["inputs"][0]], hardware=True)["logits"]
        np.testing.assert_allclose(cf.levels_shift.chip_output(n, converters=True), chip, rtol=1e-12, atol=1e-12)
        full = g2.graph["analysis"]["outputs"]["logits"]["mse"]
        assert cf.mse(levels_v=n) == pytest.approx(full, rel=0.05)
    assert float(cf.expression.subs(cf.point_symbols())) == pytest.approx(cf.mse(), rel=1e-4)
    dev6 = dev.with_overrides({"adc.bits": 6, "dac.bits": 6})
    cf6 = compile_model(path, dev6, x)[0].graph["closed_form"]["logits"]
    full = compile_model(path, dev6.with_overrides({"conductance.levels": 32}), x)[0].graph["analysis"]
    assert cf6.mse(levels_v=32) == pytest.approx(full["outputs"]["logits"]["mse"], rel=0.05)


def test_float32_sweeps_give_the_float64_numbers(monkeypatch):
    """Large models run their backward sweeps in float32 (sensitivity.sweep_dtype): the same probes through the
    same chips, so every number the sweeps make (refinement, correlation-aware variance, top-1 agreement, closed
    form coefficients) lands within float32 rounding of the float64 sweeps."""
    import passes.moments
    from passes.sensitivity import sweep_dtype
    dev = load_device("rram", ["programming_noise.sigma=4e-6"])
    model, x = str(EXAMPLES / "rescnn_digits.onnx"), X[:32]
    runs = {dt: compile_model(model, dev, x, options={"sweep_dtype": dt, "mode": "refined", "refine_probes": 2})[0]
            for dt in ("float64", "float32")}
    assert runs["float64"].graph["refinement"], "the refinement ran"
    for key, f in runs["float64"].graph["refinement"].items():
        np.testing.assert_allclose(runs["float32"].graph["refinement"][key], f, rtol=1e-4, err_msg=key)
    out64, out32 = (runs[dt].graph["analysis"]["outputs"]["logits"] for dt in ("float64", "float32"))
    for key in ("mse", "variance", "top1_agreement"):
        assert out32[key] == pytest.approx(out64[key], rel=1e-4), key
    assert out32["variance"] != out64["variance"], "the float32 sweeps ran"
    for name, lz in runs["float32"].graph["linearization"].items():
        assert lz.in_dtype(np.float32) is lz.in_dtype(np.float32)            # cast once
    # "auto": float32 from LARGE_MODEL_MACS on (the digits models stay in float64)
    g = runs["float64"]
    g.graph["options"]["sweep_dtype"] = "auto"
    assert sweep_dtype(g) is np.float64
    monkeypatch.setattr(passes.moments, "LARGE_MODEL_MACS", passes.moments.model_macs(g))
    assert sweep_dtype(g) is np.float32
    g.graph["options"]["sweep_dtype"] = "half"
    with pytest.raises(ValueError, match="sweep_dtype"):
        sweep_dtype(g)
