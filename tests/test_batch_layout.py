"""Signals whose batch leaves axis 0 (memse_compiler/batch_layout.py): torch's nn.MultiheadAttention layout, the
sequence first and the heads folded into the batch, rewritten batch-first and checked against onnxruntime."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from device_models import load_device
from memse_compiler import MemseInputError, compile_model
from memse_compiler.batch_first import batch_first, check_freed_batch
from memse_compiler.batch_layout import Layout, reshaped_layout, reshaped_layouts
from memse_compiler.cli import main
from memse_compiler.executor import NoisyExecutor
from memse_compiler.frontend import BATCH, build_graph, load_model
from memse_compiler.ir import KIND_WEIGHTED
from memse_compiler.ir.interpret import run
from memse_compiler.pipeline import default_pipeline

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
L, E, H = 5, 8, 2                 # tokens, features, heads
D = E // H
RNG = np.random.default_rng(7)
W = {"w_qkv": RNG.normal(0, 0.4, (E, 3 * E)), "b_qkv": RNG.normal(0, 0.1, 3 * E), "w_o": RNG.normal(0, 0.4, (E, E)),
     "b_o": RNG.normal(0, 0.1, E), "w_head": RNG.normal(0, 0.4, (4, E)), "scale": np.array(D ** -0.5)}
X = RNG.random((7, L, E)).astype(np.float32)


def test_reshaped_layout_by_hand():
    n = 3
    seq_first = Layout((L, n, E), axis=1)
    heads = reshaped_layout(seq_first, (L, n * H, D), n)              # (L, N*H, d): H after the batch
    assert heads == Layout((L, n * H, D), 1, 1, H)
    assert heads.batch_first_shape(n) == (n, L, H, D) and heads.units() == [0, "after", 2]
    assert heads.axis_of(2) == 3
    rows = reshaped_layout(Layout((L, n, H, D), axis=1), (L * n, E), n)    # (L*N, E): L before the batch
    assert rows == Layout((L * n, E), 0, L, 1) and rows.batch_first_shape(n) == (n, L, E)
    assert reshaped_layout(rows, (L, n, E), n) == Layout((L, n, E), 1)
    assert reshaped_layout(Layout((n * H, L, D), 0, 1, H), (n, H, L, D), n).leading
    assert reshaped_layout(Layout((4, 108)), (2, 216), 4) is None       # splits the batch 4 = 2 x 2


def attention(batch, fixed_targets: bool = False, softmax_axis: int = -1, output_seq_first: bool = False):
    """nn.MultiheadAttention's graph on (N, L, E): Transpose to (L, N, E), one in-projection, the heads folded into
    the batch (L, N*H, d) -> (N*H, L, d), softmax(Q K^T / sqrt(d)) V, back to (L*N, E) for the out-projection's
    Gemm, (L, N, E), mean over tokens, a Gemm head. Reshape targets as torch writes them (-1 for the batch), or,
    with `fixed_targets`, with the export's batch baked in."""
    n = batch if fixed_targets else -1
    t = {"t_heads": [L, n * H if fixed_targets else -1, D], "t_rows": [n * L if fixed_targets else -1, E],
         "t_seq": [L, n, E], "tokens": [0]}
    nodes = [helper.make_node("Transpose", ["x"], ["seq"], perm=[1, 0, 2], name="to_seq_first"),
             helper.make_node("MatMul", ["seq", "w_qkv"], ["qkv0"], name="in_proj"),
             helper.make_node("Add", ["qkv0", "b_qkv"], ["qkv"], name="in_bias"),
             helper.make_node("Split", ["qkv"], ["q", "k", "v"], axis=2, num_outputs=3, name="chunk")]
    for a in "qkv":
        nodes += [helper.make_node("Reshape", [a, "t_heads"], [f"{a}h"], name=f"{a}_heads"),
                  helper.make_node("Transpose", [f"{a}h"], [f"{a}b"], perm=[1, 0, 2], name=f"{a}_batch_heads")]
    nodes += [helper.make_node("Transpose", ["kb"], ["kt"], perm=[0, 2, 1], name="k_t"),
              helper.make_node("Mul", ["qb", "scale"], ["qs"], name="q_scale"),
              helper.make_node("MatMul", ["qs", "kt"], ["s"], name="scores"),
              helper.make_node("Softmax", ["s"], ["p"], axis=softmax_axis, name="softmax"),
              helper.make_node("MatMul", ["p", "vb"], ["o"], name="mix"),
              helper.make_node("Transpose", ["o"], ["ot"], perm=[1, 0, 2], name="o_seq_first"),
              helper.make_node("Reshape", ["ot", "t_rows"], ["rows"], name="o_rows"),
              helper.make_node("Gemm", ["rows", "w_o", "b_o"], ["proj"], transB=1, name="out_proj"),
              helper.make_node("Reshape", ["proj", "t_seq"], ["attn"], name="o_seq")]
    if output_seq_first:
        nodes.append(helper.make_node("Relu", ["attn"], ["y"], name="act"))
        out = [L, batch, E]
    else:
        nodes += [helper.make_node("ReduceMean", ["attn", "tokens"], ["pooled"], keepdims=0, name="pool"),
                  helper.make_node("Gemm", ["pooled", "w_head"], ["y"], transB=1, name="head")]
        out = [batch, 4]
    inits = [numpy_helper.from_array(v.astype(np.float32), k) for k, v in W.items()]
    inits += [numpy_helper.from_array(np.array(v, np.int64), k) for k, v in t.items()]
    graph = helper.make_graph(nodes, "mha", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, L, E])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, out)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def ort_run(model, x):
    return ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]


@pytest.mark.parametrize("n", [1, 3, 7])
def test_attention_runs_batch_first_at_any_batch(n):
    model = attention("N")
    g = build_graph(model)
    np.testing.assert_allclose(run(g, X[:n].astype(np.float64))["y"], ort_run(model, X[:n]), rtol=1e-5, atol=1e-6)
    weighted = {n for n, d in g.nodes(data=True) if d["kind"] == KIND_WEIGHTED}
    assert weighted == {"in_proj", "out_proj", "head"}        # the layers keep the model's names
    assert all(g.tensors[t][0] is None for t in g.tensors if t != "w_qkv" and g.tensors[t])


def test_fixed_batch_attention_is_freed():
    """The same graph exported with the batch 4 baked into its targets runs at 7, sample by sample."""
    model = attention(4, fixed_targets=True)
    g, _ = compile_model(model, "ideal", X.astype(np.float64), pipeline=default_pipeline(analysis=False))
    want = ort_run(model, X[:4])
    np.testing.assert_allclose(g.graph["reference"]["y"][:4], want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(g.graph["reference"]["y"][4:], ort_run(model, X[3:7])[1:], rtol=1e-5, atol=1e-6)


def test_noiseless_chip_matches_onnxruntime_and_noise_reaches_the_output():
    model = attention("N")
    device = load_device("ideal", ["conductance.levels=null"])
    g, _ = compile_model(model, device, X.astype(np.float64), pipeline=default_pipeline(analysis=False))
    np.testing.assert_allclose(NoisyExecutor(g).run_noiseless(X)["y"], ort_run(model, X), rtol=1e-5, atol=1e-6)
    g, _ = compile_model(model, "rram", X.astype(np.float64))
    out = g.graph["analysis"]["outputs"]["y"]
    assert out["mse"] > 0 and np.isfinite(out["mse"])


def test_models_with_the_batch_first_are_not_touched():
    model, label = load_model(EXAMPLES / "cnn_digits.onnx")
    assert batch_first(model, label, BATCH) is model


@pytest.mark.parametrize("kwargs,culprit", [
    (dict(softmax_axis=0), "node 'softmax' (Softmax) works along the axis that holds the batch"),
    (dict(output_seq_first=True), "output 'y' does not carry the batch on its axis 0"),
])
def test_what_cannot_follow_the_batch_is_refused_in_one_line(tmp_path, capsys, kwargs, culprit):
    path = tmp_path / "m.onnx"
    onnx.save(attention("N", **kwargs), path)
    code = main([str(path), "--device", "rram"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and culprit in err[0], err


def test_a_reshape_that_splits_a_moved_batch_is_refused():
    nodes = [helper.make_node("Transpose", ["x"], ["t"], perm=[1, 0, 2]),
             helper.make_node("Reshape", ["t", "shape"], ["r"], name="split_batch"),
             helper.make_node("MatMul", ["r", "w"], ["y"])]
    graph = helper.make_graph(nodes, "split", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", L, E])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [L, 2, 3])],
                              [numpy_helper.from_array(np.array([L, 2, -1], np.int64), "shape"),
                               numpy_helper.from_array(np.ones((12, 3), np.float32), "w")])
    with pytest.raises(MemseInputError, match="node 'split_batch' \\(Reshape\\) splits the batch of 't'"):
        build_graph(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def test_torch_transformer_example_fixed_and_dynamic_exports_agree():
    """examples/vit_digits.onnx (nn.TransformerEncoderLayer, dynamic batch) against onnxruntime, per sample."""
    x = np.load(EXAMPLES / "digits_inputs.npy")[:5]
    g = build_graph(EXAMPLES / "vit_digits.onnx")
    want = ort.InferenceSession(str(EXAMPLES / "vit_digits.onnx")).run(None, {"input": x})[0]
    np.testing.assert_allclose(run(g, x.astype(np.float64))["logits"], want, rtol=1e-5, atol=1e-5)
    assert any(n.endswith("/batch_first") for n in g.tensors)       # the heads were folded into the batch


def test_batch_one_reshapes_try_every_axis_boundary():
    """At n = 1 the batch fits any boundary: (L, 1, E) -> (L, 2, d) may hold it as axis 1's major factor or as
    axis 0's minor one (tried in axis order); an axis of its own comes first."""
    found = reshaped_layouts(Layout((L, 1, E), axis=1), (L, H, D), 1)
    assert found == [Layout((L, H, D), 0, L, 1), Layout((L, H, D), 1, 1, H)]
    assert reshaped_layouts(Layout((L, H, D), 0, L, 1), (L, 1, E), 1)[0] == Layout((L, 1, E), 1)


def test_dynamo_batch_one_export_is_the_same_network():
    """examples/vit_digits_dynamo.onnx: the same weights through torch's dynamo exporter at batch 1 (Reshape
    allowzero=1 targets with the 1 folded into the heads, the class token's expand folded into a constant). The
    batch-1 layout search finds where the batch goes; freed, the graph gives the legacy export's logits and
    analysis at batch 16, and its noiseless chip is onnxruntime's."""
    x = np.load(EXAMPLES / "digits_inputs.npy")[:16].astype(np.float64)
    legacy, _ = compile_model(str(EXAMPLES / "vit_digits.onnx"), "rram", x)
    dynamo, _ = compile_model(str(EXAMPLES / "vit_digits_dynamo.onnx"), "rram", x)
    np.testing.assert_allclose(dynamo.graph["reference"]["logits"], legacy.graph["reference"]["logits"],
                               rtol=1e-5, atol=1e-5)
    mse = [g.graph["analysis"]["outputs"]["logits"]["mse"] for g in (legacy, dynamo)]
    assert mse[1] == pytest.approx(mse[0], rel=1e-3)
    ideal = load_device("ideal", ["conductance.levels=null"])
    g, _ = compile_model(str(EXAMPLES / "vit_digits_dynamo.onnx"), ideal, x, pipeline=default_pipeline(analysis=False))
    want = ort.InferenceSession(str(EXAMPLES / "vit_digits.onnx")).run(None, {"input": x.astype(np.float32)})[0]
    np.testing.assert_allclose(NoisyExecutor(g).run_noiseless(x.astype(np.float32))["logits"], want,
                               rtol=1e-5, atol=1e-5)


def test_a_freed_batch_that_is_not_the_export_keeps_the_export_batch():
    """check_freed_batch compares the freed graph with the export sample by sample: a graph that is not the
    export's network (here: the export has other weights) fails it, and such a model keeps its export batch."""
    model = attention(2, fixed_targets=True)
    g = build_graph(model)
    assert g.tensors["x"][0] is None
    other = attention(2, fixed_targets=True)
    other.graph.initializer[0].CopyFrom(numpy_helper.from_array(2 * W["w_qkv"].astype(np.float32), "w_qkv"))
    assert check_freed_batch(g, model, 2) and not check_freed_batch(g, other, 2)


def test_shape_of_a_moved_batch_is_rebuilt():
    """A Shape of the sequence-first tensor read by the analysis (the scale from its feature size, as torch's
    decoder reads the query's embed size): rebuilt from the batch-first tensor, batch x before x after."""
    model = attention("N")
    g = model.graph
    g.node.extend([helper.make_node("Shape", ["seq"], ["seq_shape"], name="seq_shape"),
                   helper.make_node("Gather", ["seq_shape", "two"], ["e"], axis=0, name="feature_size"),
                   helper.make_node("Cast", ["e"], ["ef"], to=TensorProto.FLOAT),
                   helper.make_node("Div", ["y0", "ef"], ["y"], name="per_feature")])
    next(n for n in g.node if n.name == "head").output[0] = "y0"
    g.initializer.append(numpy_helper.from_array(np.array(2, np.int64), "two"))
    onnx.checker.check_model(model)
    np.testing.assert_allclose(run(build_graph(model), X[:3].astype(np.float64))["y"], ort_run(model, X[:3]),
                               rtol=1e-5, atol=1e-6)


def test_additive_minus_inf_mask_stays_finite():
    """A causal mask of -inf above the diagonal added to the scores (torch's attention mask): the Softmax
    gives 0 there as onnxruntime does, and the analysis stays finite."""
    model = attention("N")
    mask = np.triu(np.full((L, L), -np.inf, np.float32), 1)
    g = model.graph
    g.initializer.append(numpy_helper.from_array(mask, "mask"))
    g.node.insert([n.name for n in g.node].index("softmax"), helper.make_node("Add", ["s0", "mask"], ["s"],
                                                                             name="causal"))
    next(n for n in g.node if n.name == "scores").output[0] = "s0"
    onnx.checker.check_model(model)
    np.testing.assert_allclose(run(build_graph(model), X.astype(np.float64))["y"], ort_run(model, X), rtol=1e-5,
                               atol=1e-6)
    g, _ = compile_model(model, "rram", X.astype(np.float64))
    assert np.isfinite(g.graph["analysis"]["outputs"]["y"]["mse"])
