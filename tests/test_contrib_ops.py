"""onnxruntime's fused contrib ops (memse_compiler/ir/ops/contrib.py): the examples as onnxruntime itself optimised
them (ORT_ENABLE_EXTENDED, saved with `optimized_model_filepath`) and a hand-built model with every supported form,
against onnxruntime with noise off, against the original model's analysis, and against the Monte-Carlo executor."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from device_models import load_device
from memse_compiler import compile_model
from memse_compiler.cli import main
from memse_compiler.executor import NoisyExecutor
from memse_compiler.montecarlo import run_montecarlo
from memse_compiler.pipeline import default_pipeline

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
DIGITS = np.load(EXAMPLES / "digits_inputs.npy")[:64].astype(np.float32)
MS = "com.microsoft"
# the fusions onnxruntime makes on each example (asserted, so that a change in onnxruntime cannot empty the test)
FUSED = {"mlp": {"FusedGemm"}, "cnn": {"FusedConv"}, "rescnn": {"FusedConv"},
         "attn": {"FusedMatMul", "SkipLayerNormalization", "BiasGelu"}, "vit": {"BiasGelu"}}


def onnxruntime_output(model, x: np.ndarray) -> np.ndarray:
    model = str(model) if isinstance(model, Path) else model.SerializeToString()
    sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def optimised(name: str, tmp_path: Path) -> Path:
    path = tmp_path / f"{name}_optimised.onnx"
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(path)
    ort.InferenceSession(str(EXAMPLES / f"{name}_digits.onnx"), options, providers=["CPUExecutionProvider"])
    return path


def assert_noise_off_is_onnxruntime(model, x: np.ndarray) -> None:
    want = onnxruntime_output(model, x)
    g, _ = compile_model(model if isinstance(model, onnx.ModelProto) else str(model), load_device("ideal"), x,
                         pipeline=default_pipeline(analysis=False))
    out = g.graph["outputs"][0]
    scale = float(np.abs(want).max())
    np.testing.assert_allclose(g.graph["reference"][out], want, rtol=1e-5, atol=1e-6 * scale)
    np.testing.assert_allclose(NoisyExecutor(g).run_noiseless(x)[out], want, rtol=1e-5, atol=1e-6 * scale)


@pytest.mark.parametrize("name", FUSED)
def test_onnxruntime_optimised_examples_compile_as_the_originals(name, tmp_path):
    """The expansions give back the ops onnxruntime fused, in an order that maps the same crossbars (a Linear's bias
    that SkipLayerNormalization or BiasGelu took folds back into its crossbar): the same layers and the same output
    MSE as the original model, and onnxruntime's outputs with noise off."""
    path = optimised(name, tmp_path)
    contrib = {n.op_type for n in onnx.load(path).graph.node if n.domain == MS}
    assert FUSED[name] <= contrib, contrib
    assert_noise_off_is_onnxruntime(path, DIGITS)
    device = load_device("rram")
    original, _ = compile_model(str(EXAMPLES / f"{name}_digits.onnx"), device, DIGITS)
    fused, _ = compile_model(str(path), device, DIGITS)
    assert len(fused.layers) == len(original.layers)
    assert sorted(lay.bias_row for lay in fused.layers.values()) == \
        sorted(lay.bias_row for lay in original.layers.values())
    out_o, out_f = original.graph["outputs"][0], fused.graph["outputs"][0]
    assert fused.graph["analysis"]["outputs"][out_f]["mse"] == pytest.approx(
        original.graph["analysis"]["outputs"][out_o]["mse"], rel=1e-6)


def contrib_model(opset: int) -> onnx.ModelProto:
    """Every supported contrib form: FusedConv with LeakyRelu, with a Z input and Clip, with HardSigmoid and no bias;
    FusedGemm with alpha, beta and LeakyRelu; FusedMatMul of two signals, both transposed, scaled;
    SkipLayerNormalization with a bias and its sum output; Gelu, FastGelu with a bias, QuickGelu, BiasGelu."""
    rng = np.random.default_rng(3)
    inits = {"shape": np.array([0, 4, 4], np.int64)}

    def c(name, *shape):
        inits[name] = (rng.standard_normal(shape) * 0.5).astype(np.float32)
        return name
    nodes = [
        helper.make_node("FusedConv", ["x", c("W1", 4, 2, 3, 3), c("B1", 4)], ["c1"], domain=MS, kernel_shape=[3, 3],
                         activation="LeakyRelu", activation_params=[0.1], pads=[1, 1, 1, 1]),
        helper.make_node("FusedConv", ["c1", c("W2", 4, 4, 1, 1), c("B2", 4), "c1"], ["c2"], domain=MS,
                         kernel_shape=[1, 1], activation="Clip", activation_params=[-1.0, 2.0]),
        helper.make_node("FusedConv", ["c2", c("W3", 3, 4, 3, 3)], ["c3"], domain=MS, kernel_shape=[3, 3],
                         activation="HardSigmoid", activation_params=[0.3, 0.4], strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("Flatten", ["c3"], ["f"]),
        helper.make_node("FusedGemm", ["f", c("G1", 27, 16), c("C1", 16)], ["h"], domain=MS, alpha=0.5, beta=2.0,
                         activation="LeakyRelu", activation_alpha=0.2),
        helper.make_node("Reshape", ["h", "shape"], ["r"]),
        helper.make_node("FusedMatMul", ["r", "r"], ["m"], domain=MS, transA=1, transB=1, alpha=0.7),
        helper.make_node("MatMul", ["m", c("P", 4, 4)], ["p"]),
        helper.make_node("SkipLayerNormalization", ["r", "p", c("gamma", 4), c("beta", 4), c("lnb", 4)],
                         ["ln", "", "", "sum"], domain=MS, epsilon=1e-5),
        helper.make_node("Gelu", ["ln"], ["g1"], domain=MS),
        helper.make_node("FastGelu", ["sum", c("fgb", 4)], ["g2"], domain=MS),
        helper.make_node("QuickGelu", ["g1"], ["g3"], domain=MS, alpha=1.5),
        helper.make_node("BiasGelu", ["g2", c("bgb", 4)], ["g4"], domain=MS),
        helper.make_node("Add", ["g3", "g4"], ["b"]),
        helper.make_node("Flatten", ["b"], ["fb"]),
        helper.make_node("Gemm", ["fb", c("G2", 5, 16), c("C2", 5)], ["logits"], transB=1)]
    graph = helper.make_graph(nodes, "contrib", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 6, 6])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 5])],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid(MS, 1)])


X = np.random.default_rng(0).random((64, 2, 6, 6)).astype(np.float32)


@pytest.mark.parametrize("opset", [17, 20])
def test_every_contrib_form_computes_what_onnxruntime_does(opset):
    """Noise off, the chip computes onnxruntime's kernels' output; GELU is ONNX's Gelu from opset 20, else the
    chain torch exports, folded into one function of its input, with the same analysis."""
    model = contrib_model(opset)
    assert_noise_off_is_onnxruntime(model, X)
    g, _ = compile_model(model, load_device("rram"), X)
    ops = {d.get("op") for _, d in g.nodes(data=True)}
    assert ("Gelu" in ops) == (opset >= 20) and "Pointwise" in ops
    assert len(g.layers) == 6             # 3 convs, the Gemms, the MatMul with a constant


def test_contrib_forms_analysis_matches_monte_carlo():
    """The output MSE within 10 % plus the interval of a 300-chip Monte-Carlo (measured: 0.662 against 0.714
    [0.659, 0.770])."""
    device = load_device("rram", ["programming_noise.sigma=4e-6"])
    g, _ = compile_model(contrib_model(17), device, X)
    mse = g.graph["analysis"]["outputs"]["logits"]["mse"]
    res = run_montecarlo(g, device, X, chips=300, seed=1, progress=False, signals=[])["outputs"]["logits"]
    lo, hi = res["ci95"]
    assert (hi - lo) / 2 < 0.1 * res["mse"]
    assert abs(mse - res["mse"]) <= 0.1 * res["mse"] + (hi - lo) / 2, (mse, res)


@pytest.mark.parametrize("case,needles", [
    ("nchwc", ["'reorder'", "com.microsoft.nchwc", "ORT_ENABLE_EXTENDED"]),
    ("trans_batch", ["'fm'", "FusedMatMul", "transBatchA=1 is not supported"]),
    ("activation", ["'fc'", "FusedConv", "activation 'Elu' is not supported"]),
    ("ln_mean", ["'skip'", "SkipLayerNormalization", "output 1 ('mean') is not supported"])])
def test_unsupported_contrib_forms_are_refused_in_one_line(tmp_path, capsys, case, needles):
    w = numpy_helper.from_array(np.ones((4, 4, 1, 1), np.float32), "w")
    v = numpy_helper.from_array(np.ones(4, np.float32), "v")
    node = {
        "nchwc": helper.make_node("ReorderOutput", ["x"], ["y"], name="reorder", domain="com.microsoft.nchwc"),
        "trans_batch": helper.make_node("FusedMatMul", ["x", "x"], ["y"], name="fm", domain=MS, transBatchA=1),
        "activation": helper.make_node("FusedConv", ["x", "w"], ["y"], name="fc", domain=MS, kernel_shape=[1, 1],
                                       activation="Elu"),
        "ln_mean": helper.make_node("SkipLayerNormalization", ["x", "x", "v", "v"], ["y", "mean"], name="skip",
                                    domain=MS)}[case]
    graph = helper.make_graph([node], case, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 4, 4])], [w, v])
    path = tmp_path / f"{case}.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(MS, 1),
                                                      helper.make_opsetid("com.microsoft.nchwc", 1)]), path)
    code = main([str(path), "--device", "rram"])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
