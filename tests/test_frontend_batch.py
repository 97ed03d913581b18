"""The graph is batch-generic: fixed-batch exports and shape arithmetic on the batch (frontend.batch_generic)."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from device_models import load_device
from memse_compiler import MemseInputError, compile_model
from memse_compiler.cli import main
from memse_compiler.executor import NoisyExecutor
from memse_compiler.montecarlo import run_montecarlo

RNG = np.random.default_rng(0)
W_CONV = RNG.normal(0, 0.5, (3, 1, 3, 3)).astype(np.float32)
W_FC = RNG.normal(0, 0.2, (5, 108)).astype(np.float32)
X = RNG.random((7, 1, 6, 6))


def conv_net(batch, flatten_nodes, extra_inits=()) -> onnx.ModelProto:
    """x (batch, 1, 6, 6) -> Conv -> Relu -> [flatten_nodes: 'r' -> 'f' (batch, 108)] -> Gemm -> y."""
    nodes = [helper.make_node("Conv", ["x", "wc"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]), *flatten_nodes,
             helper.make_node("Gemm", ["f", "wf"], ["y"], transB=1)]
    inits = [numpy_helper.from_array(W_CONV, "wc"), numpy_helper.from_array(W_FC, "wf"), *extra_inits]
    graph = helper.make_graph(nodes, "net", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 1, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 5])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def i64(name, values):
    return numpy_helper.from_array(np.array(values, np.int64), name)


def reshape_net(batch, target):
    """The flatten as torch exports `x.view(x.size(0), -1)` with a fixed batch: a constant target."""
    return conv_net(batch, [helper.make_node("Reshape", ["r", "t"], ["f"])], [i64("t", target)])


def shape_chain_net():
    """The same `view` exported with a dynamic batch: Shape -> Gather -> Unsqueeze -> Concat -> Reshape."""
    return conv_net("N", [helper.make_node("Shape", ["r"], ["s"]),
                          helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
                          helper.make_node("Unsqueeze", ["n", "axes"], ["n1"]),
                          helper.make_node("Concat", ["n1", "minus1"], ["t"], axis=0),
                          helper.make_node("Reshape", ["r", "t"], ["f"])],
                    [i64("zero", 0), i64("axes", [0]), i64("minus1", [-1])])


def ort_run(model, x):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x.astype(np.float32)})[0]


DEVICE = load_device("rram")


def test_fixed_batch_export_runs_on_any_batch():
    """A batch of 4 fixed by the export, with the batch baked into the flatten's target: 7 inputs compile, equal
    onnxruntime on the dynamic-batch model, and the Monte-Carlo executor runs them."""
    g, _ = compile_model(reshape_net(4, [4, -1]), DEVICE, X)
    want = ort_run(reshape_net("N", [0, -1]), X)
    np.testing.assert_allclose(g.graph["reference"]["y"], want, rtol=1e-5, atol=1e-6)
    assert g.tensors["x"][0] is None and g.graph["export_batch"] == 4
    g_dyn, _ = compile_model(reshape_net("N", [0, -1]), DEVICE, X)
    assert g.graph["analysis"]["outputs"]["y"]["mse"] == pytest.approx(
        g_dyn.graph["analysis"]["outputs"]["y"]["mse"], rel=1e-12)
    ideal = load_device("ideal")
    gi, _ = compile_model(reshape_net(4, [4, -1]), ideal, X)
    np.testing.assert_allclose(NoisyExecutor(gi, ideal).run_noiseless(X)["y"], want, rtol=1e-5, atol=1e-6)
    mc = run_montecarlo(g, DEVICE, X, chips=4, progress=False)
    assert mc["chips"] == 4 and np.isfinite(mc["outputs"]["y"]["mse"])


def test_batch_shape_arithmetic_becomes_a_batch_copy():
    """Shape -> Gather -> Unsqueeze -> Concat -> Reshape on a dynamic batch folds to the target [0, -1]."""
    g, _ = compile_model(shape_chain_net(), DEVICE, X)
    reshape = next(d for _, d in g.nodes(data=True) if d.get("op") == "Reshape")
    assert reshape["attrs"]["shape"] == [0, -1]
    g_dyn, _ = compile_model(reshape_net("N", [0, -1]), DEVICE, X)
    assert g.graph["analysis"]["outputs"]["y"]["mse"] == pytest.approx(
        g_dyn.graph["analysis"]["outputs"]["y"]["mse"], rel=1e-12)
    np.testing.assert_allclose(g.graph["reference"]["y"], ort_run(shape_chain_net(), X), rtol=1e-5, atol=1e-6)


def test_batch_used_as_a_value_is_refused(tmp_path, capsys):
    """y / batch size: exit 2, one line naming the node."""
    model = shape_chain_net()
    g = model.graph
    del g.node[-1]
    g.node.extend([helper.make_node("Cast", ["n"], ["nf"], to=TensorProto.FLOAT),
                   helper.make_node("Gemm", ["f", "wf"], ["z"], transB=1),
                   helper.make_node("Div", ["z", "nf"], ["y"], name="per_batch")])
    path = tmp_path / "batch_value.onnx"
    onnx.save(model, path)
    code = main([str(path), "--device", "rram"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "'per_batch' (Div)" in err[0] and "batch size" in err[0]


def test_batch_folded_into_another_axis_is_freed():
    """A fixed export's target that folds the batch into another axis ((4, 108) -> (12, 36) -> (4, 108)):
    batch_layout follows the batch through it, so the model runs at any batch, sample by sample as exported."""
    model = conv_net(4, [helper.make_node("Reshape", ["r", "t1"], ["m"]),
                         helper.make_node("Reshape", ["m", "t2"], ["f"])], [i64("t1", [12, 36]), i64("t2", [4, 108])])
    g, _ = compile_model(model, DEVICE, X[:4])
    np.testing.assert_allclose(g.graph["reference"]["y"], ort_run(model, X[:4]), rtol=1e-5, atol=1e-6)
    g, _ = compile_model(model, DEVICE, X)
    np.testing.assert_allclose(g.graph["reference"]["y"][:4], ort_run(model, X[:4]), rtol=1e-5, atol=1e-6)


def test_batch_split_by_a_reshape_names_the_fixed_batch():
    """A target that splits the batch (4 -> 2 x 2) cannot be freed: the export's batch still compiles, another
    one is refused with a message naming the fixed batch."""
    model = conv_net(4, [helper.make_node("Reshape", ["r", "t1"], ["m"]),
                         helper.make_node("Reshape", ["m", "t2"], ["f"])], [i64("t1", [2, 216]), i64("t2", [4, 108])])
    g, _ = compile_model(model, DEVICE, X[:4])
    np.testing.assert_allclose(g.graph["reference"]["y"], ort_run(model, X[:4]), rtol=1e-5, atol=1e-6)
    with pytest.raises(MemseInputError, match="fixes its batch at 4 and 7 inputs were given"):
        compile_model(model, DEVICE, X)


def test_dynamo_style_fixed_batch_export_is_freed():
    """torch's dynamo exporter writes `view` as a Reshape with allowzero=1 (a 0 there is a zero size, not a copy),
    and folds a broadcast class token into a (B, 1, d) constant that a Concat joins with the signal: the target's
    batch becomes -1, the constant a BatchBroadcast of one sample, and the model runs at any batch."""
    token = np.repeat(RNG.normal(0, 1, (1, 1, 36)), 4, axis=0).astype(np.float32)
    nodes = [helper.make_node("Reshape", ["r", "t"], ["rows"], allowzero=1),
             helper.make_node("Concat", ["token", "rows"], ["seq"], axis=1),
             helper.make_node("Reshape", ["seq", "t2"], ["f"], allowzero=1)]
    model = conv_net(4, nodes, [i64("t", [4, 3, 36]), i64("t2", [4, 144]),
                                numpy_helper.from_array(token, "token")])
    model.graph.initializer.remove(next(t for t in model.graph.initializer if t.name == "wf"))
    model.graph.initializer.append(numpy_helper.from_array(RNG.normal(0, 0.2, (5, 144)).astype(np.float32), "wf"))
    onnx.checker.check_model(model)
    g, _ = compile_model(model, DEVICE, X)
    halves = [ort_run(model, X[:4]), ort_run(model, X[3:7])]
    np.testing.assert_allclose(g.graph["reference"]["y"], np.concatenate([halves[0], halves[1][1:]]),
                               rtol=1e-5, atol=1e-6)
    assert any(d["op"] == "BatchBroadcast" for _, d in g.nodes(data=True))
    res = run_montecarlo(g, DEVICE, chips=3, seed=0, progress=False)       # the executor runs it at batch 7 too
    assert np.isfinite(res["outputs"]["y"]["mse"])


def test_dynamo_flatten_with_inferred_features_is_freed():
    """`x.reshape(x.size(0), -1)` through the dynamo exporter: target [B, -1] with allowzero=1, so the batch can
    be neither -1 (taken) nor a copying 0: the 0 is written and allowzero dropped (no other entry is 0)."""
    nodes = [helper.make_node("Reshape", ["r", "t"], ["f"], allowzero=1)]
    model = conv_net(4, nodes, [i64("t", [4, -1])])
    onnx.checker.check_model(model)
    g, _ = compile_model(model, DEVICE, X)
    halves = [ort_run(model, X[:4]), ort_run(model, X[3:7])]
    np.testing.assert_allclose(g.graph["reference"]["y"], np.concatenate([halves[0], halves[1][1:]]),
                               rtol=1e-5, atol=1e-6)


def test_shapes_onnx_cannot_infer_are_completed():
    """Slice bounds computed from a Shape (as torch exports `chunk`): ONNX's shape inference leaves the slice's
    last dimension unknown; the frontend completes it, and the executor (read noise shaped by it) runs."""
    rng = np.random.default_rng(3)
    w1, w2 = rng.normal(0, 0.3, (8, 12)).astype(np.float32), rng.normal(0, 0.3, (4, 3)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["y"]),
             helper.make_node("Shape", ["y"], ["s"]),
             helper.make_node("Gather", ["s", "two"], ["d"], axis=0),
             helper.make_node("Div", ["d", "three"], ["third"]),
             helper.make_node("Unsqueeze", ["third", "axes"], ["end"]),
             helper.make_node("Slice", ["y", "zero1", "end", "last"], ["part"]),
             helper.make_node("MatMul", ["part", "w2"], ["out"])]
    inits = [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2"), i64("two", 2), i64("three", 3),
             i64("axes", [0]), i64("zero1", [0]), i64("last", [2])]
    graph = helper.make_graph(nodes, "chunk", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6, 8])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 6, 3])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = rng.random((7, 6, 8))
    g, _ = compile_model(model, DEVICE, x)
    assert g.tensors["part"] == (None, 6, 4)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    want = sess.run(None, {"x": x.astype(np.float32)})[0]
    np.testing.assert_allclose(g.graph["reference"]["out"], want, rtol=1e-5, atol=1e-6)
    mc = run_montecarlo(g, DEVICE, x, chips=3, progress=False)
    assert mc["chips"] == 3 and np.isfinite(mc["outputs"]["out"]["mse"])


def test_a_layer_summing_over_the_input_axis_0_keeps_the_export_batch(tmp_path, capsys):
    """Gemm transA=1 on the input: its axis 0 is summed over, so it is no batch. The CLI evaluates the export's
    batch by default and refuses any other in one line (a batch of 1 used to broadcast silently, then crash)."""
    from onnx_zoo import op_coverage_models
    zm = next(m for m in op_coverage_models() if m.name == "gemm_transa_transb0")
    path = tmp_path / "m.onnx"
    onnx.save(zm.model, path)
    assert main([str(path), "--device", "rram"]) == 0
    assert "inputs 12 x (3,)" in capsys.readouterr().out
    assert main([str(path), "--device", "rram", "--batch", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "fixes its batch at 12 and 1 inputs were given" in err[0]
    with pytest.raises(MemseInputError, match="fixes its batch at 12"):
        compile_model(zm.model, "rram", np.zeros((1, 3)))
