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


def onnxruntime_output(model, x) -> np.ndarray:
    """x: the one input's batch, or a dict by input name."""
    model = str(model) if isinstance(model, Path) else model.SerializeToString()
    sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    return sess.run(None, x if isinstance(x, dict) else {sess.get_inputs()[0].name: x})[0]


def optimised(name: str, tmp_path: Path) -> Path:
    path = tmp_path / f"{name}_optimised.onnx"
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(path)
    ort.InferenceSession(str(EXAMPLES / f"{name}_digits.onnx"), options, providers=["CPUExecutionProvider"])
    return path


def assert_noise_off_is_onnxruntime(model, x) -> None:
    want = onnxruntime_output(model, x)
    g, _ = compile_model(model if isinstance(model, onnx.ModelProto) else str(model), load_device("ideal"), x,
                         pipeline=default_pipeline(analysis=False))
    out = g.graph["outputs"][0]
    scale = float(np.abs(want).max())
    np.testing.assert_allclose(g.graph["reference"][out], want, rtol=1e-5, atol=1e-6 * scale)
    np.testing.assert_allclose(NoisyExecutor(g).run_noiseless(x)[out], want, rtol=1e-5, atol=1e-6 * scale)


def assert_analysis_within_monte_carlo(g, device, x, out: str) -> None:
    """The output MSE within 10 % plus the 95 % interval of a 300-chip Monte-Carlo (itself tighter than 10 %)."""
    mse = g.graph["analysis"]["outputs"][out]["mse"]
    res = run_montecarlo(g, device, x, chips=300, seed=1, progress=False, signals=[])["outputs"][out]
    lo, hi = res["ci95"]
    assert (hi - lo) / 2 < 0.1 * res["mse"]
    assert abs(mse - res["mse"]) <= 0.1 * res["mse"] + (hi - lo) / 2, (mse, res)


def assert_refused_in_one_line(model: onnx.ModelProto, tmp_path: Path, capsys, needles: list[str]) -> None:
    path = tmp_path / "refused.onnx"
    onnx.save(model, path)
    code = main([str(path), "--device", "rram"])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


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
    assert_analysis_within_monte_carlo(g, device, X, "logits")


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
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(MS, 1),
                                                    helper.make_opsetid("com.microsoft.nchwc", 1)])
    assert_refused_in_one_line(model, tmp_path, capsys, needles)


def attention_model(mask: str | None = None, unidirectional: int = 0, sizes: list | None = None,
                    scale: float | None = None, seq: int = 6, hidden: int = 8, heads: int = 2) -> onnx.ModelProto:
    """x (N, seq, 4) -> MatMul -> com.microsoft Attention (merged Q/K/V weights and bias) -> MatMul; mask: None,
    "raw" ((N, seq) 0/1 int32 data input) or "lengths" ((N,) int32 valid lengths)."""
    rng = np.random.default_rng(4)
    sizes = sizes or [hidden] * 3
    inits = {"Wi": rng.standard_normal((4, hidden)) * 0.5, "W": rng.standard_normal((hidden, sum(sizes))) * 0.4,
             "b": rng.standard_normal(sum(sizes)) * 0.1, "Wo": rng.standard_normal((sizes[2], 3)) * 0.5}
    attrs = {"num_heads": heads, "unidirectional": unidirectional}
    if sizes != [hidden] * 3:
        attrs["qkv_hidden_sizes"] = sizes
    if scale:
        attrs["scale"] = scale
    nodes = [helper.make_node("MatMul", ["x", "Wi"], ["h"]),
             helper.make_node("Attention", ["h", "W", "b"] + (["mask"] if mask else []), ["a"], domain=MS, **attrs),
             helper.make_node("MatMul", ["a", "Wo"], ["y"])]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", seq, 4])]
    if mask:
        inputs.append(helper.make_tensor_value_info("mask", TensorProto.INT32, ["N", seq] if mask == "raw" else ["N"]))
    graph = helper.make_graph(nodes, "contrib_attention", inputs,
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", seq, 3])],
                              [numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(MS, 1)])


def attention_inputs(mask: str | None, n: int = 32, seq: int = 6):
    rng = np.random.default_rng(0)
    x = rng.random((n, seq, 4)).astype(np.float32)
    lengths = rng.integers(2, seq + 1, n).astype(np.int32)
    if mask is None:
        return x
    return {"x": x, "mask": (np.arange(seq)[None, :] < lengths[:, None]).astype(np.int32) if mask == "raw" else lengths}


@pytest.mark.parametrize("form", [{}, {"unidirectional": 1}, {"sizes": [8, 8, 4], "scale": 0.3}, {"mask": "raw"},
                                  {"mask": "lengths"}], ids=["plain", "causal", "v_size_scale", "raw_mask", "lengths"])
def test_contrib_attention_computes_what_onnxruntime_does(form):
    """com.microsoft Attention expanded into its projection and ONNX Attention's ops: noise off, onnxruntime's kernel
    output (measured: to the bit on all five forms)."""
    model = attention_model(**form)
    assert_noise_off_is_onnxruntime(model, attention_inputs(form.get("mask")))


def test_contrib_attention_analysis_matches_monte_carlo():
    """With a padding mask (exact, from a data input): the output MSE within 10 % plus a 300-chip Monte-Carlo's
    interval."""
    device = load_device("rram", ["programming_noise.sigma=4e-6"])
    x = attention_inputs("raw", n=64)
    g, _ = compile_model(attention_model(mask="raw"), device, x)
    assert len(g.layers) == 3                    # the input MatMul, the merged Q/K/V projection, the output MatMul
    assert_analysis_within_monte_carlo(g, device, x, "y")


@pytest.mark.parametrize("change,needle", [
    (lambda n: n.input.extend(["", "past"]), "the past state input is not supported"),
    (lambda n: n.attribute.append(helper.make_attribute("do_rotary", 1)), "do_rotary=1 is not supported"),
    (lambda n: n.attribute.append(helper.make_attribute("qkv_hidden_sizes", [8, 4, 12])),
     "do not split the weights' 24 columns into 2 heads")])
def test_unsupported_contrib_attention_forms_are_refused_in_one_line(tmp_path, capsys, change, needle):
    model = attention_model()
    change(model.graph.node[1])
    model.graph.input.append(helper.make_tensor_value_info("past", TensorProto.FLOAT, [2, "N", 2, 3, 4]))
    assert_refused_in_one_line(model, tmp_path, capsys, ["Attention", needle])


def bert_feed(n: int, padded: bool) -> dict:
    """The digits as token ids for tests/contrib/bert_digits.onnx; padded: masks of random lengths (40-64 keys)."""
    ids = np.load(EXAMPLES / "digits_tokens.npy")[:n]
    lengths = np.random.default_rng(0).integers(40, 65, n) if padded else np.full(n, 64)
    mask = (np.arange(64)[None, :] < lengths[:, None]).astype(np.int64)
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}


BERT = Path(__file__).resolve().parent / "contrib" / "bert_digits.onnx"


def test_bert_fused_by_onnxruntime_transformers_noise_off():
    """A small BERT trained on the digits' pixel tokens, fused by onnxruntime.transformers (tests/contrib/make.py):
    EmbedLayerNormalization, Attention, SkipLayerNormalization, BiasGelu. With padding masks, noise off: onnxruntime's
    kernels' output (mask_index as onnxruntime counts it)."""
    contrib = {n.op_type for n in onnx.load(BERT).graph.node if n.domain == MS}
    assert {"EmbedLayerNormalization", "Attention", "SkipLayerNormalization", "BiasGelu"} <= contrib
    assert_noise_off_is_onnxruntime(BERT, bert_feed(32, padded=True))


def test_bert_fused_by_onnxruntime_transformers_against_monte_carlo():
    """The output MSE within 10 % plus the Monte-Carlo's interval (measured on 64 samples with padding masks: 0.0481
    against 0.0489 [0.0470, 0.0508] at sigma 2e-6, 0.213 against 0.217 [0.209, 0.225] at 4e-6; top-1 agreement
    92.7 % against 92.3 %, 87.6 % against 87.2 %)."""
    device = load_device("rram", ["programming_noise.sigma=4e-6"])
    feed = bert_feed(32, padded=False)
    g, _ = compile_model(str(BERT), device, feed)
    assert len(g.layers) == 10     # per layer: Q/K/V (one crossbar), output, two FFN; the pooler, the classifier
    assert_analysis_within_monte_carlo(g, device, feed, "logits")


def test_bert_as_torch_exports_it_at_a_fixed_batch():
    """The same BERT exported straight by torch at a fixed batch of 16: transformers' mask code flattens the
    (batch, keys) mask and gathers from it across the batch, exact work on the integer inputs that the batch-first
    rewrite leaves as it is (memse_compiler/batch_layout.py). Noise off, onnxruntime's outputs; against a 300-chip
    Monte-Carlo at sigma 4e-6 (measured: 0.173 against 0.174 [0.167, 0.182]; Q, K and V are three crossbars here,
    one in the fused model, which gives 0.202 against 0.206 [0.197, 0.214] on the same inputs)."""
    path = BERT.with_name("bert_digits_export.onnx")
    feed = bert_feed(16, padded=True)
    assert_noise_off_is_onnxruntime(path, feed)
    device = load_device("rram", ["programming_noise.sigma=4e-6"])
    g, _ = compile_model(str(path), device, feed)
    assert len(g.layers) == 14
    assert_analysis_within_monte_carlo(g, device, feed, "logits")
