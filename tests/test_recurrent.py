"""Recurrent ops unrolled at load time (memse_compiler/recurrent.py) and crossbars shared by several ops
(passes/map_conductances.share_crossbars): the unrolled graph against onnxruntime's own RNN/GRU/LSTM kernels,
the shared programming noise against a hand-computed variance and the Monte-Carlo executor, refusals."""
from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from device_models import load_device
from memse_compiler import compile_model
from memse_compiler.executor import NoisyExecutor
from memse_compiler.ir.errors import MemseInputError
from memse_compiler.montecarlo import run_montecarlo
from memse_compiler.recurrent import unroll_recurrent

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
X = np.load(EXAMPLES / "digits_inputs.npy")
GATES = {"RNN": 1, "GRU": 3, "LSTM": 4}


def recurrent_model(op, direction="forward", layout=0, initial=False, seq=5, n=3, inputs=4, hidden=6, **attrs):
    """One RNN/GRU/LSTM node with random constant weights (and initial states when `initial`)."""
    rng = np.random.default_rng(0)
    dirs = 2 if direction == "bidirectional" else 1
    gh = GATES[op] * hidden
    w = {"W": rng.normal(size=(dirs, gh, inputs)) * 0.5, "R": rng.normal(size=(dirs, gh, hidden)) * 0.5,
         "B": rng.normal(size=(dirs, 2 * gh)) * 0.5}
    names = ["x", "W", "R", "B", "", ""]
    if initial:
        h0 = rng.normal(size=(dirs, n, hidden))
        w["h0"] = h0.transpose(1, 0, 2) if layout else h0
        names[5] = "h0"
        if op == "LSTM":
            w["c0"], names = 0.7 * w["h0"], names + ["c0"]
    if op == "LSTM" and attrs.pop("peepholes", False):
        names += [""] * (7 - len(names)) + ["P"]
        w["P"] = rng.normal(size=(dirs, 3 * hidden))
    while names[-1] == "":
        names.pop()
    outs = ["Y", "Y_h"] + (["Y_c"] if op == "LSTM" else [])
    node = helper.make_node(op, names, outs, hidden_size=hidden, direction=direction, layout=layout, **attrs)
    x_shape = [n, seq, inputs] if layout else [seq, n, inputs]
    graph = helper.make_graph([node], "rnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outs],
                              [numpy_helper.from_array(v.astype(np.float32), k) for k, v in w.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    return onnx.shape_inference.infer_shapes(model), x_shape


def run_ort(model, x):
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"]).run(None, {"x": x})


VARIANTS = {"RNN": [{}, {"activations": ["Relu"]}], "GRU": [{"linear_before_reset": 0}, {"linear_before_reset": 1}],
            "LSTM": [{"peepholes": True}, {"clip": 0.8}]}
CASES = [(op, d, layout, init, extra) for op in GATES for d, layout, init, extra in
         itertools.product(["forward", "reverse", "bidirectional"], [0, 1], [False, True], range(2))]


@pytest.mark.parametrize("op,direction,layout,initial,variant", CASES,
                         ids=[f"{c[0]}-{c[1]}-layout{c[2]}-{'init' if c[3] else 'zero'}-v{c[4]}" for c in CASES])
def test_unrolled_equals_onnxruntime(op, direction, layout, initial, variant):
    """Every output (Y, Y_h, Y_c) of the unrolled steps against onnxruntime's kernel on the original node;
    onnxruntime has no layout 1, so that is checked against the layout-0 node on the transposed data."""
    extra = dict(VARIANTS[op][variant])
    if "activations" in extra and direction == "bidirectional":
        extra["activations"] = extra["activations"] * 2
    model, shape = recurrent_model(op, direction, layout, initial, **extra)
    x = np.random.default_rng(1).normal(size=shape).astype(np.float32)
    got = run_ort(unroll_recurrent(model, "t"), x)
    assert not any(n.op_type in GATES for n in unroll_recurrent(model, "t").graph.node)
    if layout == 0:
        want = run_ort(model, x)
    else:
        base = recurrent_model(op, direction, 0, initial, **dict(VARIANTS[op][variant], **(
            {"activations": extra["activations"]} if "activations" in extra else {})))[0]
        want = [np.transpose(v, (2, 0, 1, 3) if v.ndim == 4 else (1, 0, 2))
                for v in run_ort(base, np.ascontiguousarray(x.transpose(1, 0, 2)))]
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_lstm_example_drives_three_crossbars():
    """8 steps of W and 7 of R (the first step's state is zero): 16 ops on 3 programmed crossbars, and the
    executor feeds one weight draw per crossbar."""
    g, _ = compile_model(str(EXAMPLES / "lstm_digits.onnx"), "rram", X[:8], options={"mode": "diagonal"})
    crossbars = {lay.crossbar for lay in g.layers.values()}
    assert len(g.layers) == 16 and len(crossbars) == 3
    ex = NoisyExecutor(g)
    assert len(ex.plans) == 3
    assert sum(1 for name in ex.draw_chip(np.random.default_rng(0)) if name.endswith("/weight")) == 3


# ---- shared programming noise, exactly ------------------------------------------------------------------
def tied_model(tied: bool, chain: bool = False) -> onnx.ModelProto:
    """x (N, 6) -> x W + x W (`chain`: (x W) W) with W read from one initializer (`tied`) or from two equal ones."""
    w = np.random.default_rng(3).normal(size=(6, 6)).astype(np.float32) * 0.4
    second = "W" if tied else "W2"
    if chain:
        nodes = [helper.make_node("MatMul", ["x", "W"], ["a"], name="first"),
                 helper.make_node("MatMul", ["a", second], ["y"], name="second")]
    else:
        nodes = [helper.make_node("MatMul", ["x", "W"], ["a"], name="first"),
                 helper.make_node("MatMul", ["x", second], ["b"], name="second"),
                 helper.make_node("Add", ["a", "b"], ["y"], name="sum")]
    inits = [numpy_helper.from_array(w, "W")] + ([] if tied else [numpy_helper.from_array(w.copy(), "W2")])
    graph = helper.make_graph(nodes, "tied", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 6])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


NOISY = load_device("ideal", ["programming_noise.sigma=3e-6", "programming_noise.clip_at_zero=false"])
XT = np.random.default_rng(4).random((32, 6))


def test_one_initializer_is_one_crossbar_and_its_noise_adds_coherently():
    """y = x W~ + x W~ with ONE programmed W~ = W + E: Var(y) = 4 sum_j x_j^2 Var(E_jo), twice that of two
    independently programmed copies (2 sum_j ...). The analysis is exact here (linear, no converters)."""
    shared, _ = compile_model(tied_model(True), NOISY, XT)
    apart, _ = compile_model(tied_model(False), NOISY, XT)
    assert shared.layers["second"].shared_with == "first"
    assert apart.layers["second"].shared_with is None
    lay = apart.layers["first"]
    w_var = (2 * 3e-6 ** 2) / lay.scale_c ** 2                       # two devices per weight, in weight units
    hand = float(np.mean((XT ** 2).sum(axis=1))) * float(np.asarray(w_var).reshape(-1)[0])
    var_shared = shared.graph["analysis"]["outputs"]["y"]["variance"]
    var_apart = apart.graph["analysis"]["outputs"]["y"]["variance"]
    assert var_shared == pytest.approx(4 * hand, rel=1e-9)
    assert var_apart == pytest.approx(2 * hand, rel=1e-9)


@pytest.mark.parametrize("chain", [False, True], ids=["sum", "chain"])
def test_shared_crossbar_analysis_matches_monte_carlo(chain):
    """The executor draws one chip per crossbar: its MSE agrees with the analysis, tied or not; (x W) W also
    has the cross term of the two uses' errors, which the sensitivity pass sums before squaring."""
    for tied in (True, False):
        g, _ = compile_model(tied_model(tied, chain), NOISY, XT)
        mse = g.graph["analysis"]["outputs"]["y"]["mse"]
        mc = run_montecarlo(g, NOISY, XT, chips=3000, seed=5, progress=False, signals=[])["outputs"]["y"]
        lo, hi = mc["ci95"]
        assert (hi - lo) / 2 < 0.05 * mc["mse"]
        assert abs(mse - mc["mse"]) <= 0.02 * mc["mse"] + (hi - lo) / 2, (tied, mse, mc)


def test_chips_stacked_in_one_run_each_program_the_shared_crossbar_once():
    """8 chips per session run (chip_batching): each chip's one draw feeds both uses, as with one chip a run."""
    g, _ = compile_model(tied_model(True), NOISY, XT)
    mse = g.graph["analysis"]["outputs"]["y"]["mse"]
    ex = NoisyExecutor(g, chips_per_run=8)
    mc = run_montecarlo(g, NOISY, XT, chips=4000, seed=3, progress=False, signals=[], executor=ex)["outputs"]["y"]
    lo, hi = mc["ci95"]
    assert abs(mse - mc["mse"]) <= 0.02 * mc["mse"] + (hi - lo) / 2


def test_a_shared_crossbar_has_one_set_of_converters():
    """The ADC and DAC ranges of every use of one crossbar are the widest any use needs."""
    dev = load_device("rram")
    g, _ = compile_model(str(EXAMPLES / "gru_digits.onnx"), dev, X[:32], options={"mode": "diagonal"})
    by_crossbar: dict[str, list] = {}
    for lay in g.layers.values():
        by_crossbar.setdefault(lay.crossbar, []).append(lay)
    shared = [group for group in by_crossbar.values() if len(group) > 1]
    assert len(shared) == 4                      # W and R of each direction
    ref = g.graph["reference"]
    for group in shared:
        assert len({lay.dac_range for lay in group}) == 1
        assert group[0].dac_range == pytest.approx(max(float(np.abs(ref[lay.input]).max()) for lay in group))
        for lay in group[1:]:
            np.testing.assert_array_equal(lay.adc_range, group[0].adc_range)


# ---- refusals -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("attrs,needle", [
    ({"input_forget": 1}, "input_forget"),
    ({"activations": ["LeakyRelu", "Tanh", "Tanh"], "activation_alpha": [0.1]}, "LeakyRelu"),
    ({"direction": "sideways"}, "sideways"),
])
def test_refused_lstm_attributes(attrs, needle):
    model, _ = recurrent_model("LSTM", **{k: v for k, v in attrs.items() if k != "direction"},
                               **({"direction": attrs["direction"]} if "direction" in attrs else {}))
    with pytest.raises(MemseInputError, match=needle):
        unroll_recurrent(model, "m")


def with_lengths(model: onnx.ModelProto, n: int, constant: np.ndarray | None = None) -> onnx.ModelProto:
    """The recurrent node reading per-sample `sequence_lens`: an int32 data input 'lens' (n,), or a constant."""
    node = model.graph.node[0]
    while len(node.input) < 5:
        node.input.append("")
    node.input[4] = "lens"
    if constant is None:
        model.graph.input.append(helper.make_tensor_value_info("lens", TensorProto.INT32, [n]))
    else:
        model.graph.initializer.append(numpy_helper.from_array(constant.astype(np.int32), "lens"))
    return model


def run_ort_feed(model, feed):
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"]).run(None, feed)


SEQ_CASES = list(itertools.product(GATES, ["forward", "reverse", "bidirectional"], [False, True]))


@pytest.mark.parametrize("op,direction,initial", SEQ_CASES, ids=[f"{o}-{d}-{'init' if i else 'zero'}"
                                                                 for o, d, i in SEQ_CASES])
def test_per_sample_sequence_lens_equal_onnxruntime(op, direction, initial):
    """Steps past a sample's length hold its states and give Y zeros; the reverse direction starts at the sample's
    last step: every output against onnxruntime's kernel, with the lengths fed as an input and as a constant."""
    lens = np.array([5, 2, 3], np.int32)
    x = np.random.default_rng(1).normal(size=(5, 3, 4)).astype(np.float32)
    fed = with_lengths(recurrent_model(op, direction, 0, initial)[0], 3)
    want = run_ort_feed(fed, {"x": x, "lens": lens})
    for a, b in zip(run_ort_feed(unroll_recurrent(fed, "t"), {"x": x, "lens": lens}), want):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    fixed = with_lengths(recurrent_model(op, direction, 0, initial)[0], 3, constant=lens)
    for a, b in zip(run_ort_feed(unroll_recurrent(fixed, "t"), {"x": x}), want):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("op", ["LSTM", "GRU"])
def test_sequence_lens_input_against_monte_carlo(op):
    """A bidirectional layout-1 node exported at batch 3 with its lengths as an int32 input, run on 40 samples of
    random lengths: noise off as onnxruntime (the layout-0 node on the transposed data), and the analysis of Y and
    Y_h against the executor's Monte-Carlo (measured: within 1.4 %)."""
    model = with_lengths(recurrent_model(op, "bidirectional", 1, False)[0], 3)
    rng = np.random.default_rng(2)
    x = {"x": rng.normal(size=(40, 5, 4)), "lens": rng.integers(1, 6, 40).astype(np.int32)}
    g, _ = compile_model(model, load_device("ideal", ["conductance.levels=null"]), x)
    base = with_lengths(recurrent_model(op, "bidirectional", 0, False, n=40)[0], 40)
    want = run_ort_feed(base, {"x": np.ascontiguousarray(x["x"].transpose(1, 0, 2)).astype(np.float32),
                               "lens": x["lens"]})[1].transpose(1, 0, 2)
    np.testing.assert_allclose(NoisyExecutor(g).run_noiseless(x)["Y_h"], want, rtol=1e-5, atol=1e-5)
    dev = load_device("rram", ["programming_noise.sigma=4e-6"])
    g, _ = compile_model(model, dev, x)
    mc = run_montecarlo(g, dev, chips=600, seed=1, progress=False, signals=[])
    for out in ("Y", "Y_h"):
        m, (lo, hi) = mc["outputs"][out]["mse"], mc["outputs"][out]["ci95"]
        assert abs(g.graph["analysis"]["outputs"][out]["mse"] - m) <= 0.1 * m + (hi - lo) / 2, out


def test_refused_symbolic_sequence_length():
    model, _ = recurrent_model("RNN")
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "T"
    with pytest.raises(MemseInputError, match="not fixed"):
        unroll_recurrent(model, "m")


def test_report_counts_a_shared_crossbar_once():
    from memse_compiler.report import build_report, hardware_table
    g, _ = compile_model(str(EXAMPLES / "lstm_digits.onnx"), "rram", X[:8], options={"mode": "diagonal"})
    report = build_report(g)
    own = [r for r in report["layers"] if r["crossbar"] == r["name"]]
    assert [r["name"] for r in own] == ["/rnn/LSTM/W0@t0", "/rnn/LSTM/R0@t1", "/head/Gemm"]
    assert report["hardware"]["tiles"] == sum(r["tiles"] for r in own) == 2 + 2 + 1
    assert "13 ops drive the crossbar of an earlier op" in hardware_table(report)


def test_tied_weights_keep_their_biases_digital_and_share_one_crossbar():
    """x W + b1 and x W + b2: folding each bias into its op (as a crossbar row) would make two arrays, so the
    biases stay digital Adds and both products drive one crossbar."""
    model = tied_model(True)
    nodes = list(model.graph.node)
    adds = [helper.make_node("Add", ["a", "b1"], ["a1"], name="bias1"),
            helper.make_node("Add", ["b", "b2"], ["b1_out"], name="bias2"),
            helper.make_node("Add", ["a1", "b1_out"], ["y"], name="sum")]
    del model.graph.node[:]
    model.graph.node.extend(nodes[:2] + adds)
    model.graph.initializer.extend([numpy_helper.from_array(np.full(6, 0.1, np.float32), "b1"),
                                    numpy_helper.from_array(np.full(6, -0.2, np.float32), "b2")])
    g, _ = compile_model(model, NOISY, XT, options={"mode": "diagonal"})
    assert g.layers["second"].shared_with == "first"
    assert g.layers["first"].bias is None and {"bias1", "bias2"} <= set(g.nodes)


def test_one_initializer_read_two_ways_is_two_crossbars():
    """x W (MatMul) and x W^T (Gemm transB=1) read one initializer but hold transposed arrays: not shared."""
    model = tied_model(True)
    model.graph.node[1].CopyFrom(helper.make_node("Gemm", ["x", "W"], ["b"], name="second", transB=1))
    g, _ = compile_model(model, NOISY, XT, options={"mode": "diagonal"})
    assert g.layers["second"].shared_with is None


def test_optimiser_tunes_each_shared_crossbar_as_one():
    """--optimize's knobs are the programmed crossbars: every step of W (of R) gets the one G the search picks
    for it; the budget holds, the result is no worse than the uniform G, and Monte-Carlo confirms it."""
    from passes.optimize import optimize
    from passes.power import PowerPass
    dev = load_device("rram")
    g, ctx = compile_model(str(EXAMPLES / "lstm_digits.onnx"), dev, X[:64])
    g = PowerPass().apply(g, ctx)
    budget = 0.995 * g.graph["power"]["total_w"]
    r = optimize(g, ctx, budget, max_evals=3)
    assert [row["name"] for row in r["layers"]] == ["/rnn/LSTM/W0@t0", "/rnn/LSTM/R0@t1", "/head/Gemm"]
    chosen = {row["name"]: row["g_range"] for row in r["layers"]}
    for lay in g.layers.values():
        assert float(np.mean(lay.g_range)) == pytest.approx(chosen[lay.crossbar])
    assert r["optimized"]["power_w"] <= budget * (1 + 1e-9)
    assert r["optimized"]["mse"] <= r["uniform"]["mse"]
    mc = run_montecarlo(g, dev, X[:64], chips=400, seed=4, progress=False, signals=[])["outputs"]["logits"]
    lo, hi = mc["ci95"]
    assert abs(r["optimized"]["mse"] - mc["mse"]) <= 0.1 * mc["mse"] + (hi - lo) / 2


def test_refused_nan_recurrent_weight():
    model, _ = recurrent_model("RNN", layout=1)
    r = next(t for t in model.graph.initializer if t.name == "R")
    bad = numpy_helper.to_array(r).copy()
    bad[0, 0, 0] = np.nan
    r.CopyFrom(numpy_helper.from_array(bad, "R"))
    with pytest.raises(MemseInputError, match="R initializer 'R' contains NaN"):
        unroll_recurrent(model, "m")


def test_refused_sequence_first_graph_input():
    """A layout-0 node reading the graph input itself: that input is (seq, batch, features), not batch first."""
    model, _ = recurrent_model("LSTM")
    with pytest.raises(MemseInputError, match="sequence-first"):
        compile_model(model, "rram", np.zeros((5, 3, 4)))


def test_layout_1_graph_outputs_y_and_y_h():
    """A bare GRU with layout 1: its two outputs, (N, seq, dirs, H) and (N, dirs, H), are graph outputs with the
    batch first; noise off, the executor gives the unrolled graph's onnxruntime values."""
    model, shape = recurrent_model("GRU", "bidirectional", layout=1, linear_before_reset=1)
    x = np.random.default_rng(2).normal(size=shape).astype(np.float32)
    g, _ = compile_model(model, "ideal", x.astype(np.float64), options={"mode": "diagonal"})
    got = NoisyExecutor(g).run_noiseless(x)
    for name, want in zip(["Y", "Y_h"], run_ort(unroll_recurrent(model, "t"), x)):
        np.testing.assert_allclose(got[name], want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["conv", "tokens"])
def test_shared_crossbar_over_positions_matches_monte_carlo(kind):
    """One weight reused by two layers that each apply it at several positions (a conv twice, or a token-wise
    MatMul twice): the per-sample weight gradients summed over positions and uses, against the executor."""
    rng = np.random.default_rng(6)
    if kind == "conv":
        w = rng.normal(0, 0.3, (4, 4, 3, 3)).astype(np.float32)
        x_shape, nodes = ["N", 4, 6, 6], [helper.make_node("Conv", ["x", "W"], ["a"], name="first", pads=[1, 1, 1, 1]),
                                          helper.make_node("Relu", ["a"], ["r"]),
                                          helper.make_node("Conv", ["r", "W"], ["y"], name="second", pads=[1, 1, 1, 1])]
        x = rng.random((16, 4, 6, 6))
    else:
        w = rng.normal(0, 0.4, (6, 6)).astype(np.float32)
        x_shape, nodes = ["N", 5, 6], [helper.make_node("MatMul", ["x", "W"], ["a"], name="first"),
                                       helper.make_node("Relu", ["a"], ["r"]),
                                       helper.make_node("MatMul", ["r", "W"], ["y"], name="second")]
        x = rng.random((16, 5, 6))
    graph = helper.make_graph(nodes, kind, [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, x_shape)],
                              [numpy_helper.from_array(w, "W")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    g, _ = compile_model(model, NOISY, x)
    assert g.layers["second"].shared_with == "first"
    mse = g.graph["analysis"]["outputs"]["y"]["mse"]
    mc = run_montecarlo(g, NOISY, x, chips=2000, seed=7, progress=False, signals=[])["outputs"]["y"]
    lo, hi = mc["ci95"]
    assert abs(mse - mc["mse"]) <= 0.05 * mc["mse"] + (hi - lo) / 2, (mse, mc)
