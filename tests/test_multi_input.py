"""Models with several data inputs (two branches, an attention mask fed beside the tokens): the batch given as a
dict by input name, through the Python API, the CLI (.npz), the analysis and the Monte-Carlo executor."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from device_models import load_device
from memse_compiler import compile_model
from memse_compiler.cli import main
from memse_compiler.executor import NoisyExecutor
from memse_compiler.ir.errors import MemseInputError
from memse_compiler.montecarlo import run_montecarlo
from mc_reference import monte_carlo


def two_branch_model(batch="N", k1=7, k2=4, m=5, seed=0) -> onnx.ModelProto:
    """y = a W1^T + b1 + b W2^T + b2: two data inputs, one crossbar each, meeting at an Add."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n)
             for n, s in (("w1", (m, k1)), ("b1", (m,)), ("w2", (m, k2)), ("b2", (m,)))]
    nodes = [helper.make_node("Gemm", ["a", "w1", "b1"], ["h1"], transB=1, name="fc_a"),
             helper.make_node("Gemm", ["b", "w2", "b2"], ["h2"], transB=1, name="fc_b"),
             helper.make_node("Add", ["h1", "h2"], ["y"], name="merge")]
    graph = helper.make_graph(nodes, "two_branch", [helper.make_tensor_value_info("a", TensorProto.FLOAT, [batch, k1]),
                                                    helper.make_tensor_value_info("b", TensorProto.FLOAT, [batch, k2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, m])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def sequence_first_model(batch="N", t=4, e=6) -> onnx.ModelProto:
    """Both inputs moved to (T, N, E) by Transposes, multiplied, moved back, then a MatMul: batch_first.py must
    follow the batch of both."""
    w = numpy_helper.from_array(np.random.default_rng(1).standard_normal((e, 5)).astype(np.float32), "w")
    nodes = [helper.make_node("Transpose", ["a"], ["at"], perm=[1, 0, 2]),
             helper.make_node("Transpose", ["b"], ["bt"], perm=[1, 0, 2]),
             helper.make_node("Mul", ["at", "bt"], ["s"]),
             helper.make_node("Transpose", ["s"], ["sb"], perm=[1, 0, 2]),
             helper.make_node("MatMul", ["sb", "w"], ["y"])]
    graph = helper.make_graph(nodes, "seq_first", [helper.make_tensor_value_info(n, TensorProto.FLOAT, [batch, t, e])
                                                   for n in ("a", "b")],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, t, 5])], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def plain(model: onnx.ModelProto, feed: dict) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {k: v.astype(np.float32) for k, v in feed.items()})[0]


def feed_for(n: int, seed: int = 0, k1: int = 7, k2: int = 4) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"a": rng.random((n, k1)), "b": rng.standard_normal((n, k2))}


def test_two_inputs_variance_by_hand():
    """Continuous levels, no clipping in reach, no converters: Var(y_i) = 2 sigma^2 (sum_j a_j^2 + 1) / c_a^2
    + 2 sigma^2 (sum_j b_j^2 + 1) / c_b^2 exactly (each branch's bias row carries 1), the mean is the float
    model, in every analysis mode."""
    x = feed_for(6)
    sigma = 1e-6
    dev = load_device("ideal", ["conductance.levels=null", f"programming_noise.sigma={sigma}",
                                "conductance.g_min=5e-5"])
    model = two_branch_model()
    want_mean = plain(model, x)
    for mode in ("diagonal", "sensitivity", "refined"):
        g, _ = compile_model(model, dev, x, options={"mode": mode})
        c = {g.layers[name].input: float(g.layers[name].scale_c.ravel()[0]) for name in g.layers}
        want = sum(2 * sigma ** 2 / c[k] ** 2 * ((x[k] ** 2).sum(1) + 1) for k in ("a", "b"))
        mean, var = g.graph["moments"]["y"]
        np.testing.assert_allclose(mean, want_mean, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(var, np.broadcast_to(want[:, None], var.shape), rtol=1e-6, err_msg=mode)


def test_two_inputs_noise_off_executor_matches_onnxruntime():
    model = two_branch_model()
    x = feed_for(9, seed=3)
    g, _ = compile_model(model, "ideal", x)
    ex = NoisyExecutor(g)
    want = plain(model, x)
    np.testing.assert_allclose(ex.run_noiseless(x)["y"], want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ex.run_chip(x, np.random.default_rng(0))["y"], want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("chips_per_run", [1, 4])
def test_two_inputs_analysis_against_monte_carlo(chips_per_run):
    """The default analysis against the executor's Monte-Carlo and against the independent numpy simulation of
    tests/mc_reference.py, on a quantized, ADC-equipped device; the executor batching chips gives the same
    kind of answer."""
    dev = load_device("rram", ["adc.bits=6"])
    model = two_branch_model()
    x = feed_for(40, seed=1)
    g, _ = compile_model(model, dev, x)
    ex = NoisyExecutor(g, dev, chips_per_run=chips_per_run)
    mc = run_montecarlo(g, dev, x, chips=400, seed=2, progress=False, executor=ex)
    ref_mse, ref_half = monte_carlo(g, dev, x, chips=300, seed=5)["y"]
    got = g.graph["analysis"]["outputs"]["y"]["mse"]
    m = mc["outputs"]["y"]
    half = (m["ci95"][1] - m["ci95"][0]) / 2
    assert abs(got - m["mse"]) < 0.05 * m["mse"] + half, (got, m)
    assert abs(m["mse"] - ref_mse) < half + ref_half, (m["mse"], ref_mse)


@pytest.mark.parametrize("batch", ["N", 2])
def test_two_inputs_batch_first_and_fixed_batch(batch):
    """Sequence-first signals of two inputs are followed to batch-first; a fixed-batch export (both inputs at 2)
    is freed and runs at another batch, sample by sample what onnxruntime gives at its own batch."""
    model = sequence_first_model(batch)
    rng = np.random.default_rng(4)
    x = {k: rng.random((6, 4, 6)) for k in ("a", "b")}
    g, _ = compile_model(model, "ideal", x)
    assert "Transpose" not in {d["op"] for _, d in g.nodes(data=True)}
    want = np.concatenate([plain(model, {k: v[i:i + 2] for k, v in x.items()}) for i in range(0, 6, 2)])
    np.testing.assert_allclose(NoisyExecutor(g).run_noiseless(x)["y"], want, rtol=1e-5, atol=1e-5)


def test_two_inputs_python_api_errors():
    model = two_branch_model()
    x = feed_for(5)
    with pytest.raises(MemseInputError, match="2 data inputs"):
        compile_model(model, "rram", x["a"])
    with pytest.raises(MemseInputError, match="no batch for 'b'"):
        compile_model(model, "rram", {"a": x["a"]})
    with pytest.raises(MemseInputError, match="'c' is not a data input"):
        compile_model(model, "rram", {**x, "c": x["a"]})
    with pytest.raises(MemseInputError, match="differ in size"):
        compile_model(model, "rram", {"a": x["a"], "b": x["b"][:3]})
    with pytest.raises(MemseInputError, match="model input 'b'"):
        compile_model(model, "rram", {"a": x["a"], "b": x["a"]})
    bad = dict(x, b=x["b"].copy())
    bad["b"][1, 2] = np.nan
    with pytest.raises(MemseInputError, match="NaN or inf.*'b'"):
        compile_model(model, "rram", bad)


def test_two_inputs_synthetic_default():
    """Without inputs every data input gets its own uniform [0, 1) batch of the same size."""
    g, ctx = compile_model(two_branch_model(), "rram", batch=12)
    assert set(ctx.inputs) == {"a", "b"}
    assert {v.shape for v in ctx.inputs.values()} == {(12, 7), (12, 4)}
    assert not np.array_equal(ctx.inputs["a"][:, :4], ctx.inputs["b"])
    assert all(0 <= v.min() and v.max() < 1 for v in ctx.inputs.values())


def run_cli(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_two_inputs_cli(tmp_path, capsys):
    model_path = tmp_path / "two.onnx"
    onnx.save(two_branch_model(), model_path)
    x = feed_for(20, seed=7)
    npz = tmp_path / "x.npz"
    np.savez(npz, **x)
    report = tmp_path / "r.json"
    code, out, err = run_cli(capsys, model_path, "--device", "rram", "--inputs", npz, "--batch", 8,
                             "--mc", 30, "-o", report)
    assert code == 0, err
    assert "a 8 x (7,), b 8 x (4,)" in out
    import json
    rep = json.loads(report.read_text())
    g, _ = compile_model(two_branch_model(), "rram", {k: v[:8] for k, v in x.items()})
    assert rep["outputs"]["y"]["mse"] == pytest.approx(g.graph["analysis"]["outputs"]["y"]["mse"], rel=1e-9)
    assert rep["outputs"]["y"]["mc_mse"] > 0

    code, _, _ = run_cli(capsys, model_path, "--device", "rram")        # synthetic inputs for both
    assert code == 0

    npy = tmp_path / "a.npy"
    np.save(npy, x["a"])
    short = tmp_path / "short.npz"
    np.savez(short, a=x["a"])
    uneven = tmp_path / "uneven.npz"
    np.savez(uneven, a=x["a"], b=x["b"][:5])
    for path, needle in ((npy, "give an .npz with one array per input name"), (short, "missing 'b'"),
                         (uneven, "differ in size")):
        code, out, err = run_cli(capsys, model_path, "--device", "rram", "--inputs", path)
        assert code == 2 and needle in err and "Traceback" not in err, err
        assert len(err.strip().splitlines()) == 1
