"""Top-1 agreement and accuracy of classifier outputs (passes/agreement.py): the one-factor formula against its
closed form for two classes and against sampling where its model is exact; the pass against the Monte-Carlo
executor's measured fractions; labels through the API and the CLI."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from device_models import load_device
from memse_compiler import compile_model
from memse_compiler.cli import main
from memse_compiler.ir.stats import norm_cdf
from memse_compiler.montecarlo import run_montecarlo
from passes.agreement import keep_probability

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
X = np.load(EXAMPLES / "digits_inputs.npy")[:200]
LABELS = np.load(EXAMPLES / "digits_labels.npy")[:200]


def test_two_classes_is_the_margin_closed_form():
    mean = np.array([[1.0, 0.4], [0.2, 0.5]])
    var = np.array([[0.3, 0.2], [0.1, 0.4]])
    cov = np.array([[0.0, 0.12], [-0.05, 0.0]])       # Cov(y_top, y_other), sample by sample
    got = keep_probability(mean, var, cov, np.array([0, 1]))
    want = [norm_cdf((1.0 - 0.4) / np.sqrt(0.3 + 0.2 - 2 * 0.12)), norm_cdf((0.5 - 0.2) / np.sqrt(0.1 + 0.4 + 2 * 0.05))]
    np.testing.assert_allclose(got, want, rtol=1e-6)      # 64-node Gauss-Hermite over y_top


def test_one_factor_logits_against_sampling():
    """y_j = mu_j + b_j (y_top - mu_top) + e_j: the competitors are independent given y_top, as the formula
    assumes, so it is exact (Cov(y_top, y_j) = b_j v_top); sampled with 400 000 draws, each class as the top."""
    rng = np.random.default_rng(0)
    mu = np.array([1.0, 0.6, 0.3, 0.8, -0.2])
    b = np.array([0.0, -0.6, 0.9, 0.4, 0.2])
    e = np.array([0.0, 0.5, 0.2, 0.4, 0.6])
    for top in range(5):
        v_top = 0.3
        y_top = mu[top] + np.sqrt(v_top) * rng.standard_normal(400_000)
        slopes, spreads = np.where(np.arange(5) == top, 1.0, b), np.where(np.arange(5) == top, 0.0, e + 0.1)
        draws = mu + np.outer(y_top - mu[top], slopes) + rng.standard_normal((400_000, 5)) * spreads
        var = slopes ** 2 * v_top + spreads ** 2
        got = keep_probability(mu[None], var[None], (slopes * v_top)[None], np.array([top]))[0]
        want = np.mean(np.argmax(draws, axis=1) == top)
        assert abs(got - want) <= 4 * np.sqrt(want * (1 - want) / len(draws)) + 1e-6, (top, got, want)


def test_noiseless_chip_keeps_every_class():
    g, _ = compile_model(str(EXAMPLES / "cnn_digits.onnx"), load_device("ideal", ["conductance.levels=null"]), X[:32],
                         labels=LABELS[:32])
    entry = g.graph["analysis"]["outputs"]["logits"]
    assert entry["top1_agreement"] == pytest.approx(1.0, abs=1e-12)
    assert entry["accuracy"] == pytest.approx(entry["accuracy_float"], abs=1e-12)


def assert_agrees_with_monte_carlo(entry: dict, mc: dict) -> None:
    """The analysis' kept fraction and chip accuracy against the executor's: the rate of changed classes (of wrong
    answers beyond the float model's) within 15 % of the measured one, plus the Monte-Carlo's CI."""
    for key in ("top1_agreement", "accuracy"):
        lo, hi = mc[f"{key}_ci95"]
        ref_error = 1 - mc[key] if key == "top1_agreement" else entry["accuracy_float"] - mc[key]
        assert abs(entry[key] - mc[key]) <= 0.15 * ref_error + (hi - lo) / 2, (key, entry[key], mc[key], lo, hi)


@pytest.mark.parametrize("name,sigma", [("mlp", 4e-6), ("cnn", 4e-6), ("rescnn", 6e-6)])
def test_agreement_and_accuracy_against_monte_carlo(name, sigma):
    """The expected fraction of samples that keep their class (and that are right) against the executor's, chip by
    chip; the flip rate within 15 % of the measured one (plus the CI)."""
    dev = load_device("rram", [f"programming_noise.sigma={sigma}"])
    g, _ = compile_model(str(EXAMPLES / f"{name}_digits.onnx"), dev, X, labels=LABELS)
    entry = g.graph["analysis"]["outputs"]["logits"]
    mc = run_montecarlo(g, dev, X, chips=400, seed=2, progress=False, signals=[])["outputs"]["logits"]
    assert_agrees_with_monte_carlo(entry, mc)
    assert entry["accuracy_float"] == pytest.approx(np.mean(np.argmax(g.graph["reference"]["logits"], 1) == LABELS))


def test_cli_labels_table_and_report(capsys, tmp_path):
    labels = tmp_path / "labels.npy"
    np.save(labels, LABELS[:64])
    out = tmp_path / "r.json"
    code = main([str(EXAMPLES / "mlp_digits.onnx"), "--device", "rram", "--inputs", str(EXAMPLES / "digits_inputs.npy"),
                 "--batch", "64", "--labels", str(labels), "--mc", "20", "-o", str(out)])
    text = capsys.readouterr().out
    assert code == 0 and "top-1 kept" in text and "chip acc" in text
    entry = json.loads(out.read_text())["outputs"]["logits"]
    for key in ("top1_agreement", "accuracy", "accuracy_float", "mc_top1_agreement", "mc_top1_agreement_ci95",
                "mc_accuracy", "mc_accuracy_ci95"):
        assert entry[key] is not None, key


@pytest.mark.parametrize("labels,needle", [
    (np.arange(10), "10 labels for 64"), (np.zeros(64), "1-D integer array"), (np.full(64, 10), "[0, 10)")])
def test_cli_bad_labels(capsys, tmp_path, labels, needle):
    path = tmp_path / "labels.npy"
    np.save(path, labels)
    code = main([str(EXAMPLES / "mlp_digits.onnx"), "--device", "rram", "--labels", str(path)])
    err = capsys.readouterr().err
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, err


def test_monte_carlo_on_other_inputs_scores_no_accuracy():
    """The labels belong to the compiled inputs: a Monte-Carlo run on other inputs measures the agreement with their
    own float classes and no accuracy."""
    dev = load_device("rram")
    g, _ = compile_model(str(EXAMPLES / "mlp_digits.onnx"), dev, X[:50], labels=LABELS[:50])
    same = run_montecarlo(g, dev, chips=5, seed=0, progress=False, signals=[])["outputs"]["logits"]
    other = run_montecarlo(g, dev, X[50:100], chips=5, seed=0, progress=False, signals=[])["outputs"]["logits"]
    assert "accuracy" in same and "top1_agreement" in same
    assert "accuracy" not in other and 0.5 < other["top1_agreement"] <= 1.0


def test_agreement_at_other_noise_from_the_closed_form():
    """agreement_at: the compiled point's values exactly; at twice the programming sigma, within a point of a full
    re-analysis there (measured: within 0.15 points on these three)."""
    from passes.agreement import agreement_at
    for name in ("mlp", "cnn", "rescnn"):
        g, _ = compile_model(str(EXAMPLES / f"{name}_digits.onnx"), "rram", X, labels=LABELS)
        entry = g.graph["analysis"]["outputs"]["logits"]
        here = agreement_at(g, "logits")
        assert here == pytest.approx({k: entry[k] for k in ("top1_agreement", "accuracy")}, abs=1e-12)
        sigma = 2 * g.graph["device"].programming_noise.sigma
        there = agreement_at(g, "logits", sigma_v=sigma)
        h, _ = compile_model(str(EXAMPLES / f"{name}_digits.onnx"),
                             load_device("rram", [f"programming_noise.sigma={sigma}"]), X, labels=LABELS)
        full = h.graph["analysis"]["outputs"]["logits"]
        for key in ("top1_agreement", "accuracy"):
            assert abs(there[key] - full[key]) < 0.01, (name, key, there[key], full[key])
        assert there["top1_agreement"] < here["top1_agreement"]


def _with_argmax(tmp_path: Path, keepdims: int) -> Path:
    """examples/mlp_digits.onnx ending in ArgMax over its logits, as a deployment export ends."""
    import onnx
    from onnx import TensorProto, helper
    m = onnx.load(EXAMPLES / "mlp_digits.onnx")
    m.graph.node.append(helper.make_node("ArgMax", ["logits"], ["label"], name="decide", axis=1, keepdims=keepdims))
    del m.graph.output[:]
    m.graph.output.append(helper.make_tensor_value_info("label", TensorProto.INT64, ["batch"] + [1] * keepdims))
    path = tmp_path / "mlp_argmax.onnx"
    onnx.save(m, path)
    return path


@pytest.mark.parametrize("keepdims", [0, 1])
def test_an_output_argmax_is_its_logits_top1_agreement(tmp_path, keepdims):
    """The ArgMax is taken off at load: the graph outputs the logits, with the same analysis as the model without
    it, and the noiseless chip's top class is onnxruntime's ArgMax output."""
    import onnxruntime as ort
    from memse_compiler.executor import NoisyExecutor
    path = _with_argmax(tmp_path, keepdims)
    g, _ = compile_model(str(path), "rram", X, labels=LABELS)
    plain, _ = compile_model(str(EXAMPLES / "mlp_digits.onnx"), "rram", X, labels=LABELS)
    assert g.graph["outputs"] == ["logits"]
    assert g.graph["decisions"] == {"label": {"op": "ArgMax", "of": "logits", "axis": 1, "keepdims": bool(keepdims)}}
    for key in ("mse", "top1_agreement", "accuracy"):
        assert g.graph["analysis"]["outputs"]["logits"][key] == plain.graph["analysis"]["outputs"]["logits"][key]
    ideal, _ = compile_model(str(path), load_device("ideal", ["conductance.levels=null"]), X)
    want = ort.InferenceSession(str(path)).run(None, {"input": X.astype(np.float32)})[0].reshape(-1)
    np.testing.assert_array_equal(NoisyExecutor(ideal).run_noiseless(X)["logits"].argmax(axis=1), want)


def test_the_cli_says_which_output_decided(tmp_path, capsys):
    path = _with_argmax(tmp_path, 0)
    assert main([str(path), "--device", "rram", "--inputs", str(EXAMPLES / "digits_inputs.npy"), "--labels",
                 str(EXAMPLES / "digits_labels.npy"), "-o", str(tmp_path / "r.json"),
                 "--html", str(tmp_path / "r.html")]) == 0
    out = capsys.readouterr().out
    assert "output 'label' is the ArgMax of 'logits' over its classes" in out
    assert "output &#x27;label&#x27; is the ArgMax of &#x27;logits&#x27;" in (tmp_path / "r.html").read_text()
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["decisions"]["label"]["of"] == "logits" and report["outputs"]["logits"]["top1_agreement"] > 0.9


def test_instances_round_trip_every_classifier_layout():
    from passes.agreement import class_axis, from_instances, instance_shape, instances
    rng = np.random.default_rng(0)
    for shape, axis in (((5, 10), 1), ((5, 7, 10), 2), ((5, 11, 4, 3), 1), ((5, 4, 9), 1)):
        a = rng.standard_normal(shape)
        assert class_axis(shape) == axis or len(shape) == 3
        assert instances(a, axis).shape == (5, a.size // 5 // shape[axis], shape[axis])
        np.testing.assert_array_equal(from_instances(instances(a, axis), shape, axis), a)
        np.testing.assert_array_equal(instances(a, axis).argmax(-1).reshape(instance_shape(shape, axis)),
                                      a.argmax(axis))
    assert class_axis((5, 1)) is None and class_axis((5,)) is None


PER_POSITION = {"seg": "digits_pixel_labels.npy", "tagger": "digits_row_labels.npy"}


@pytest.mark.parametrize("name", ["seg", "tagger"])
def test_per_position_agreement_and_accuracy_against_monte_carlo(name):
    """A class per pixel (examples/seg_digits.onnx, (N, 11, 8, 8)) and per token (tagger_digits.onnx, (N, 8, 10)):
    the fractions of (sample, position) pairs kept and right, against the executor's; flip rate within 15 % (+CI).
    (Measured at sigma 4e-6: 71.4 % kept against 73.1 %, tagger 57.0 % against 57.1 %.)"""
    labels = np.load(EXAMPLES / PER_POSITION[name])
    dev = load_device("rram", ["programming_noise.sigma=4e-6"])
    g, _ = compile_model(str(EXAMPLES / f"{name}_digits.onnx"), dev, X, labels=labels)
    entry = g.graph["analysis"]["outputs"]["logits"]
    mc = run_montecarlo(g, dev, X, chips=200, seed=2, progress=False, signals=[])["outputs"]["logits"]
    assert_agrees_with_monte_carlo(entry, mc)
    axis = 1 if name == "seg" else 2
    assert entry["accuracy_float"] == pytest.approx(np.mean(g.graph["reference"]["logits"].argmax(axis) == labels))


def test_unswept_positions_take_the_swept_correlations(monkeypatch):
    """With a budget of 4 sweeps the tagger's 8 positions get one competitor at 4 of them, the other 4 positions the
    mean correlation per pair of classes there: within 0.3 points of sweeping every position and 4 competitors
    (measured 0.04), and far from leaving the covariances out (the diagonal mode: 10 points)."""
    import passes.agreement as agreement
    labels = np.load(EXAMPLES / PER_POSITION["tagger"])
    dev = load_device("rram", ["programming_noise.sigma=4e-6"])

    def kept(**options):
        g, _ = compile_model(str(EXAMPLES / "tagger_digits.onnx"), dev, X, labels=labels, options=options)
        return g.graph["analysis"]["outputs"]["logits"]["top1_agreement"]
    monkeypatch.setattr(agreement, "POSITION_SWEEPS", 4)
    transferred = kept()
    monkeypatch.setattr(agreement, "POSITION_SWEEPS", 10 ** 6)
    swept = kept()
    assert transferred != swept and abs(transferred - swept) < 0.003
    assert kept(mode="diagonal") - swept > 0.05


def test_labels_that_fit_no_output_are_refused(capsys):
    code = main([str(EXAMPLES / "mlp_digits.onnx"), "--device", "rram", "--inputs", str(EXAMPLES / "digits_inputs.npy"),
                 "--labels", str(EXAMPLES / "digits_pixel_labels.npy")])
    err = capsys.readouterr().err
    assert code == 2 and "fit no classifier output" in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("axis,taken", [(1, True), (2, False)])
def test_a_per_pixel_argmax_output_is_taken_off_over_the_class_axis_only(tmp_path, axis, taken):
    """seg_digits' ArgMax over its classes (axis 1) is its logits' per-pixel agreement; one over the rows is an
    ArgMax of a noisy signal, refused in one line."""
    import onnx
    from onnx import TensorProto, helper
    from memse_compiler.ir.errors import MemseInputError
    m = onnx.load(EXAMPLES / "seg_digits.onnx")
    m.graph.node.append(helper.make_node("ArgMax", ["logits"], ["decided"], name="decide", axis=axis, keepdims=0))
    del m.graph.output[:]
    m.graph.output.append(helper.make_tensor_value_info("decided", TensorProto.INT64,
                                                        ["batch", 8, 8] if axis == 1 else ["batch", 11, 8]))
    path = tmp_path / "seg_argmax.onnx"
    onnx.save(m, path)
    labels = np.load(EXAMPLES / PER_POSITION["seg"])[:32]
    if not taken:
        with pytest.raises(MemseInputError, match="ArgMax.*decide"):
            compile_model(str(path), "rram", X[:32])
        return
    g, _ = compile_model(str(path), "rram", X[:32], labels=labels)
    assert g.graph["outputs"] == ["logits"] and g.graph["decisions"]["decided"]["of"] == "logits"
    assert 0.5 < g.graph["analysis"]["outputs"]["logits"]["top1_agreement"] < 1.0


def _frame_classifier(argmax: bool = False):
    """Conv1d frame classifier (random weights): x (N, 2, 16) -> Conv1d -> Relu -> Conv1d to 4 classes per frame,
    (N, 4, 16), the classes on axis 1 as Conv1d writes them; optionally ending in ArgMax over them."""
    from onnx import TensorProto, helper
    from onnx_zoo import Builder
    g = Builder("frame_classifier")
    y = g.op("Relu", [g.conv(g.input("x", ("N", 2, 16)), 2, 6, kernel=(3,), pads=[1, 1], name="conv_a")])
    y = g.conv(y, 6, 4, kernel=(3,), pads=[1, 1], name="conv_b")
    if not argmax:
        return g.build(y)
    g.nodes.append(helper.make_node("ArgMax", [y], ["frames"], name="decide", axis=1, keepdims=0))
    zm = g.build(y)
    del zm.model.graph.output[:]
    zm.model.graph.output.append(helper.make_tensor_value_info("frames", TensorProto.INT64, ["N", 16]))
    return zm


def test_a_conv1d_frame_classifier_has_its_classes_on_axis_1():
    """(N, 4, 16) from a Conv1d: 4 classes per frame (not 16 per channel, as a token classifier's (N, T, C) would
    read); the agreement over frames against the executor's (measured 73.9 % against 74.4 % +- 0.5), and an ArgMax
    over axis 1 taken off as its decision."""
    from passes.agreement import output_class_axis
    dev = load_device("rram", ["programming_noise.sigma=8e-6"])
    x = np.random.default_rng(0).standard_normal((32, 2, 16))
    g, _ = compile_model(_frame_classifier().model, dev, x)
    out = g.graph["outputs"][0]
    assert output_class_axis(g, out) == 1
    entry = g.graph["analysis"]["outputs"][out]
    mc = run_montecarlo(g, dev, x, chips=300, seed=2, progress=False, signals=[])["outputs"][out]
    lo, hi = mc["top1_agreement_ci95"]
    assert abs(entry["top1_agreement"] - mc["top1_agreement"]) <= 0.15 * (1 - mc["top1_agreement"]) + (hi - lo) / 2
    decided, _ = compile_model(_frame_classifier(argmax=True).model, dev, x)
    assert decided.graph["decisions"]["frames"]["axis"] == 1
    assert decided.graph["analysis"]["outputs"][out]["top1_agreement"] == entry["top1_agreement"]


def test_a_transposed_linear_frame_classifier_has_its_classes_where_the_transpose_puts_them():
    """x (N, 16 frames, 2) -> MatMul -> Relu -> MatMul to 4 classes per frame -> Transpose to (N, 4, 16), as a frame
    classifier feeds a loss that wants the classes on axis 1: the classes are the MatMul's features, moved to axis 1
    (by its shape alone a 3-D output has them last); the agreement over frames against the executor's (measured
    81.5 % against 84.1 % +- 1.3)."""
    from onnx_zoo import Builder
    from passes.agreement import output_class_axis
    g = Builder("transposed_frames")
    y = g.matmul(g.op("Relu", [g.matmul(g.input("x", ("N", 16, 2)), 2, 6, name="mm_a")]), 6, 4, name="mm_b")
    zoo = g.build(g.op("Transpose", [y], perm=[0, 2, 1]))
    dev = load_device("rram", ["programming_noise.sigma=8e-6"])
    x = np.random.default_rng(0).standard_normal((32, 16, 2))
    compiled, _ = compile_model(zoo.model, dev, x)
    out = compiled.graph["outputs"][0]
    assert compiled.graph["reference"][out].shape == (32, 4, 16) and output_class_axis(compiled, out) == 1
    entry = compiled.graph["analysis"]["outputs"][out]
    mc = run_montecarlo(compiled, dev, x, chips=300, seed=2, progress=False, signals=[])["outputs"][out]
    lo, hi = mc["top1_agreement_ci95"]
    assert abs(entry["top1_agreement"] - mc["top1_agreement"]) <= 0.15 * (1 - mc["top1_agreement"]) + (hi - lo) / 2
