"""Expand: a class token broadcast to the batch (dynamic and fixed-batch exports) and a signal broadcast over
its other axes, at batch sizes other than the export's, against onnxruntime run at the export's batch; the
noiseless executor (which emits BatchBroadcast as Shape, Slice, Concat, Expand) against the same; and the
one-line errors for graphs that only run at their export's batch."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from memse_compiler import compile_model
from memse_compiler.executor import NoisyExecutor
from memse_compiler.ir.errors import MemseInputError
from memse_compiler.pipeline import default_pipeline

B, T, K, M = 4, 3, 6, 5          # export batch, tokens, features in, features out
ROOT = __import__("pathlib").Path(__file__).resolve().parent.parent


def _fixed_batch_model(head_nodes, inits, x_shape=(B, T, K), y_shape=None) -> onnx.ModelProto:
    rng = np.random.default_rng(6)
    inits = [numpy_helper.from_array(rng.standard_normal((K, M)).astype(np.float32), "w")] + [
        numpy_helper.from_array(np.asarray(v, np.float32 if np.asarray(v).dtype.kind == "f" else np.int64), n)
        for n, v in inits.items()]
    nodes = [helper.make_node("MatMul", ["x", "w"], ["tokens"], name="embed")] + head_nodes
    graph = helper.make_graph(nodes, "t", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)], initializer=inits)
    return onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                                                               ir_version=9))


def _class_token_model() -> onnx.ModelProto:
    """torch's fixed-batch export of cat([cls.expand(4, -1, -1), tokens], 1): the target [4, 1, 1] a constant."""
    rng = np.random.default_rng(7)
    return _fixed_batch_model(
        [helper.make_node("Expand", ["cls", "target"], ["cls_b"], name="cls_expand"),
         helper.make_node("Concat", ["cls_b", "tokens"], ["seq"], name="cat", axis=1),
         helper.make_node("Relu", ["seq"], ["y"], name="relu")],
        {"cls": rng.standard_normal((1, 1, M)), "target": np.array([B, 1, 1])})


def _signal_expand_model() -> onnx.ModelProto:
    """tokens (4, 1, M) -> Expand to [4, 3, M] -> Tanh: the batch entry is the export's fixed batch."""
    return _fixed_batch_model([helper.make_node("Expand", ["tokens", "target"], ["wide"], name="widen"),
                               helper.make_node("Tanh", ["wide"], ["y"], name="tanh")],
                              {"target": np.array([B, 3, M])}, x_shape=(B, 1, K))


def _ort_in_chunks(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString())
    return np.concatenate([sess.run(None, {"x": x[i:i + B]})[0] for i in range(0, len(x), B)])


@pytest.mark.parametrize("make", [_class_token_model, _signal_expand_model])
def test_fixed_batch_expand_runs_at_any_batch(make):
    model = make()
    x = np.random.default_rng(8).standard_normal((2 * B,) + tuple(
        d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim[1:])).astype(np.float32)
    want = _ort_in_chunks(model, x)
    g, _ = compile_model(model, "ideal", x.astype(np.float64), pipeline=default_pipeline(analysis=False))
    np.testing.assert_allclose(g.graph["reference"]["y"], want, rtol=1e-5, atol=1e-6)
    noiseless = NoisyExecutor(g).run_noiseless(x)["y"]
    np.testing.assert_allclose(noiseless, want, rtol=1e-5, atol=1e-6)


def test_class_token_is_a_batch_broadcast_of_variance_zero():
    model = _class_token_model()
    x = np.random.default_rng(9).standard_normal((6, T, K))
    g, _ = compile_model(model, "rram", x)
    assert g.nodes["cls_expand"]["op"] == "BatchBroadcast"
    mean, var = g.graph["moments"]["cls_b"]
    assert mean.shape == (6, 1, M) and not var.any()


def test_a_constant_sized_for_the_export_batch_is_refused_in_one_line(tmp_path):
    """A (4, 1, M) constant of four different rows joined to the tokens: not a broadcast of one sample, it cannot
    follow another batch (the freed graph fails the per-sample check); one line naming the fixed batch, exit 2."""
    rng = np.random.default_rng(10)
    model = _fixed_batch_model([helper.make_node("Concat", ["cls_b", "tokens"], ["y"], name="cat", axis=1)],
                               {"cls_b": rng.standard_normal((B, 1, M))})
    with pytest.raises(MemseInputError, match="fixes its batch at 4 and 2 inputs were given"):
        compile_model(model, "rram", np.zeros((2, T, K)))
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    r = subprocess.run([sys.executable, "-m", "memse_compiler.cli", str(path), "--device", "rram", "--batch", "2"],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "fixes its batch at 4" in r.stderr, r.stderr


def test_a_constant_node_that_fails_to_evaluate_is_named():
    """A target only evaluation sees (computed by a Mul, as the GRU export's initial state computes its own)."""
    model = _fixed_batch_model([helper.make_node("Mul", ["half_target", "two"], ["bad_target"], name="double"),
                                helper.make_node("Expand", ["c", "bad_target"], ["cc"], name="bad"),
                                helper.make_node("Add", ["tokens", "cc"], ["y"], name="add")],
                               {"c": np.ones((1, 1, M)), "half_target": np.array([1, 1, 2]), "two": np.array([1, 2, 2])},
                               y_shape=[B, T, M])
    with pytest.raises(MemseInputError, match="node 'bad' \\(Expand\\) could not be evaluated on its constant"):
        compile_model(model, "rram", np.zeros((2, T, K)))


def test_expand_that_grows_the_batch_is_refused():
    model = _fixed_batch_model([helper.make_node("Expand", ["tokens", "target"], ["y"], name="grow")],
                               {"target": np.array([2, T, M])}, x_shape=("N", T, K))
    with pytest.raises(MemseInputError, match="node 'grow' \\(Expand\\): expanding to \\[2, 3, 5\\] changes the batch"):
        compile_model(model, "rram", np.zeros((1, T, K)))


def _single(op: str, opset: int, x_shape, inits: dict, out_type=TensorProto.FLOAT, **attrs) -> onnx.ModelProto:
    rng = np.random.default_rng(13)
    w = numpy_helper.from_array(rng.standard_normal((x_shape[-1], x_shape[-1])).astype(np.float32), "w")
    consts = [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()]
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
             helper.make_node(op, ["h"] + list(inits), ["y"], name="node", **attrs)]
    graph = helper.make_graph(nodes, "t", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N"] + list(x_shape))],
                              [helper.make_tensor_value_info("y", out_type, None)], initializer=[w] + consts)
    return onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                                                               ir_version=8))


@pytest.mark.parametrize("op", ["ReduceSumSquare", "ReduceL2", "ReduceL1", "ReduceLogSumExp"])
@pytest.mark.parametrize("opset,axes_input", [(11, False), (17, False), (18, True)])
@pytest.mark.parametrize("keepdims", [0, 1])
def test_composite_reductions_match_onnxruntime(op, opset, axes_input, keepdims):
    """Expanded into x*x / |x| / exp x, ReduceSum, Sqrt / Log; the last node keeps the reduction's name."""
    from memse_compiler.frontend import build_graph
    from memse_compiler.ir.interpret import run
    axes = np.array([1, -1], np.int64)
    model = _single(op, opset, (3, 4), {"axes": axes} if axes_input else {}, keepdims=keepdims,
                    **({} if axes_input else {"axes": [1, -1]}))
    x = np.random.default_rng(14).standard_normal((5, 3, 4)).astype(np.float32)
    want = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    g = build_graph(model)
    np.testing.assert_allclose(run(g, x.astype(np.float64))["y"], want, rtol=1e-5, atol=1e-5)
    assert "node" in g.nodes and g.nodes["node"]["outputs"] == ["y"]


def test_tile_and_cast_match_onnxruntime_and_refuse_what_they_cannot_map():
    from memse_compiler.frontend import build_graph
    from memse_compiler.ir.interpret import run
    x = np.random.default_rng(15).standard_normal((5, 3, 4)).astype(np.float32)
    for op, inits, attrs in (("Tile", {"r": np.array([1, 2, 3], np.int64)}, {}),
                             ("Cast", {}, {"to": TensorProto.FLOAT})):
        model = _single(op, 17, (3, 4), inits, **attrs)
        want = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
        np.testing.assert_allclose(run(build_graph(model), x.astype(np.float64))["y"], want, rtol=1e-5, atol=1e-5)
    with pytest.raises(MemseInputError, match="node 'node' \\(Tile\\): repeats \\[2, 1, 1\\] must give every axis"):
        build_graph(_single("Tile", 17, (3, 4), {"r": np.array([2, 1, 1], np.int64)}))
    with pytest.raises(MemseInputError, match="node 'node' \\(Cast\\): a cast of a signal to INT64 is not supported"):
        build_graph(_single("Cast", 17, (3, 4), {}, out_type=TensorProto.INT64, to=TensorProto.INT64))


@pytest.mark.parametrize("op", ["ReduceMax", "ReduceMin"])
@pytest.mark.parametrize("axes,keepdims", [([1], 0), ([-1], 1), ([1, 2], 1), ([2], 0)])
def test_max_reductions_are_max_pools(op, axes, keepdims):
    """ReduceMax/ReduceMin over any non-batch axes against onnxruntime, through Transpose, Reshape, MaxPool."""
    from memse_compiler.frontend import build_graph
    from memse_compiler.ir.interpret import run
    model = _single(op, 17, (3, 4), {}, axes=axes, keepdims=keepdims)
    x = np.random.default_rng(16).standard_normal((5, 3, 4)).astype(np.float32)
    want = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    g = build_graph(model)
    np.testing.assert_allclose(run(g, x.astype(np.float64))["y"], want, rtol=1e-6, atol=1e-6)
    assert g.nodes["node/pool"]["op"] == "MaxPool"


def test_reduce_max_over_the_batch_is_refused():
    from memse_compiler.frontend import build_graph
    with pytest.raises(MemseInputError, match="node 'node' \\(ReduceMax\\): reducing over the batch axis"):
        build_graph(_single("ReduceMax", 17, (3, 4), {}, axes=[0, 1]))
