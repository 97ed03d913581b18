"""Element-wise arithmetic (Neg, Abs, Exp, Pow, Sqrt, Reciprocal, Log, Div by a signal, x op x) and the fusion
of decomposed LayerNorms: moments against numeric integration, forwards against onnxruntime, the fused graph
against the unfused one, and the refusals (one line naming the node)."""
from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from memse_compiler import compile_model
from memse_compiler.fusions import fuse_layer_norm
from memse_compiler.ir import stats
from memse_compiler.ir.errors import MemseInputError
from memse_compiler.ir.ops import rule_for
from test_stats import check, integrate

ROOT = __import__("pathlib").Path(__file__).resolve().parent.parent


# ---- moments -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mu,var", [(0.3, 0.5), (-2.0, 0.1), (5.0, 0.01), (0.0, 1.0), (1.2, 1e-4)])
@pytest.mark.parametrize("n", [0, 1, 2, 3, 5])
def test_integer_powers_are_exact(n, mu, var):
    check(stats.power_moments(np.array(mu), np.array(var), n), integrate(lambda x: x ** n, mu, var), 1e-6,
          atol=1e-10)


def test_square_variance_keeps_its_precision_when_the_noise_is_tiny():
    """var << mu^2: 4 mu^2 v + 2 v^2 directly, not E[X^4] - E[X^2]^2 (which loses every digit here)."""
    m = stats.power_moments(np.array(1e3), np.array(1e-12), 2)
    assert m.var == pytest.approx(4e6 * 1e-12 + 2e-24, rel=1e-12)


@pytest.mark.parametrize("mu,var", [(0.3, 0.5), (-2.0, 0.1), (0.0, 1.0), (1.2, 1e-4)])
def test_exp_and_abs_are_exact(mu, var):
    check(stats.exp_moments(np.array(mu), np.array(var)), integrate(np.exp, mu, var), 1e-6)
    check(rule_for("Abs").stat({}, np.array(mu), np.array(var)), integrate(np.abs, mu, var), 1e-5, atol=1e-7)


@pytest.mark.parametrize("mu,var", [(0.3, 0.5), (-2.0, 0.1), (0.0, 1.0), (1.2, 1e-4), (-0.7, 2.0)])
@pytest.mark.parametrize("op,attrs,f", [("Sinh", {"cosh": False}, np.sinh), ("Cosh", {"cosh": True}, np.cosh),
                                        ("Atan", {"op": "Atan"}, np.arctan), ("Asinh", {"op": "Asinh"}, np.arcsinh)])
def test_hyperbolic_closed_forms_and_arc_quadrature_against_integration(op, attrs, f, mu, var):
    """Sinh / Cosh in closed form, Atan / Asinh by Gauss-Hermite: mean, variance and gain (Stein's E f')."""
    check(rule_for(op).stat(attrs, np.array(mu), np.array(var)), integrate(f, mu, var), 1e-5, atol=1e-9)


@pytest.mark.parametrize("op,attrs,f", [("Sqrt", {"exponent": 0.5}, np.sqrt),
                                        ("Reciprocal", {"exponent": -1.0}, lambda x: 1 / x),
                                        ("Log", {}, np.log), ("Pow", {"exponent": -1.5}, lambda x: x ** -1.5)])
@pytest.mark.parametrize("mu,std", [(2.0, 0.02), (0.7, 0.01), (40.0, 1.0)])
def test_delta_method_at_small_relative_noise(op, attrs, f, mu, std):
    """Second-order mean, first-order variance: within O((std/mu)^4) and O((std/mu)^2) of the Gaussian integral
    (the variance's next term is 8 (std/mu)^2 for 1/x)."""
    rule = rule_for(op)
    got = rule.stat(attrs, np.array(mu), np.array(std ** 2))
    want = integrate(f, mu, std ** 2)
    rel = (std / mu) ** 2
    assert float(got.mean) == pytest.approx(want[0], rel=50 * rel ** 2 + 1e-12)
    assert float(got.var) == pytest.approx(want[1], rel=20 * rel)
    assert float(got.gain) == pytest.approx(want[2], rel=20 * rel)


@pytest.mark.parametrize("op,mean,var,lin_gains", [("Add", 2.4, 0.4, None), ("Sub", 0.0, 0.0, None),
                                                   ("Mul", 1.2 ** 2 + 0.1, 4 * 1.44 * 0.1 + 2 * 0.01, 2.4)])
def test_an_operand_combined_with_itself_is_one_variable(op, mean, var, lin_gains):
    """x + x, x - x, x * x: the moments of 2x, 0, x^2 (not of two independent copies)."""
    rule = rule_for(op)
    attrs = {"op": op, "same_operand": True}
    mu, v = np.array([1.2]), np.array([0.1])
    (m,), (s2,), lin = rule.moments(attrs, [mu, mu], [v, v])
    assert float(m[0]) == pytest.approx(mean) and float(s2[0]) == pytest.approx(var)
    if lin_gains is not None:
        assert float(sum(lin.gains)[0]) == pytest.approx(lin_gains)


def test_division_by_a_signal_by_the_delta_method():
    rule = rule_for("Div")
    ma, va, mb, vb = 1.5, 0.01, 4.0, 0.02
    (m,), (v,), lin = rule.moments({"op": "Div"}, [np.array(ma), np.array(mb)], [np.array(va), np.array(vb)])
    rng = np.random.default_rng(0)
    a, b = ma + math.sqrt(va) * rng.standard_normal(2_000_000), mb + math.sqrt(vb) * rng.standard_normal(2_000_000)
    assert float(m) == pytest.approx(np.mean(a / b), rel=2e-4)
    assert float(v) == pytest.approx(np.var(a / b), rel=2e-2)
    assert [float(x) for x in lin.gains] == pytest.approx([1 / mb, -ma / mb ** 2])


# ---- forwards against onnxruntime ----------------------------------------------------------------------------
def _one_node(op: str, extra_inputs=(), opset: int = 17, **attrs) -> onnx.ModelProto:
    inits = [numpy_helper.from_array(np.asarray(v, np.float32), f"c{i}") for i, v in enumerate(extra_inputs)]
    node = helper.make_node(op, ["x"] + [t.name for t in inits], ["y"], name="node", **attrs)
    graph = helper.make_graph([node], "t", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=9)


@pytest.mark.parametrize("op,extra", [("Neg", ()), ("Abs", ()), ("Exp", ()), ("Log", ()), ("Sqrt", ()),
                                      ("Reciprocal", ()), ("Pow", (2.0,)), ("Pow", (3.0,)), ("Pow", (-0.5,))])
def test_forward_equals_onnxruntime(op, extra):
    x = np.random.default_rng(1).uniform(0.2, 3.0, (4, 6)).astype(np.float32)
    want = ort.InferenceSession(_one_node(op, extra).SerializeToString()).run(None, {"x": x})[0]
    attrs = {"exponent": float(extra[0])} if extra else {}
    got = rule_for(op).forward(attrs or ({"exponent": 0.5} if op == "Sqrt" else {"exponent": -1.0}
                                         if op == "Reciprocal" else {}), [x.astype(np.float64)])[0]
    np.testing.assert_allclose(got, want, rtol=2e-6)


# ---- refusals --------------------------------------------------------------------------------------------------
def _gemm_then(op_nodes, x_range=(0.0, 1.0)) -> onnx.ModelProto:
    rng = np.random.default_rng(2)
    inits = [numpy_helper.from_array(rng.standard_normal((6, 4)).astype(np.float32), "w"),
             numpy_helper.from_array(np.float32(-100.0), "shift")]
    nodes = [helper.make_node("Gemm", ["x", "w"], ["h"], name="fc")] + op_nodes
    graph = helper.make_graph(nodes, "t", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=inits)
    return onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                                                               ir_version=9))


def test_a_nan_in_the_float_model_names_the_node():
    """Sqrt of a negative signal: the reference itself is NaN; calibration refuses, naming the node."""
    model = _gemm_then([helper.make_node("Add", ["h", "shift"], ["n"], name="neg"),
                        helper.make_node("Sqrt", ["n"], ["y"], name="root")])
    x = np.random.default_rng(3).random((8, 6))
    with pytest.raises(MemseInputError, match="node 'root' \\(Sqrt\\): gives NaN or inf at 32 of 32"):
        compile_model(model, "rram", x)


def test_a_mean_outside_the_domain_names_the_node():
    """Sqrt of a ReLU that is 0 everywhere: the float model is finite (sqrt 0 = 0) but, noise-free, the analysis'
    mean sits at 0, where Sqrt's linearisation is infinite: refused, naming the node."""
    model = _gemm_then([helper.make_node("Add", ["h", "shift"], ["n"], name="neg"),
                        helper.make_node("Relu", ["n"], ["r"], name="relu"),
                        helper.make_node("Sqrt", ["r"], ["y"], name="root")])
    x = np.random.default_rng(3).random((8, 6))
    with pytest.raises(MemseInputError, match="node 'root' \\(Sqrt\\): the input's mean is <= 0 at 32 of 32"):
        compile_model(model, "ideal", x)


def test_cli_refuses_in_one_line(tmp_path):
    model = _gemm_then([helper.make_node("Add", ["h", "shift"], ["n"], name="neg"),
                        helper.make_node("Log", ["n"], ["y"], name="log")])
    path = tmp_path / "log.onnx"
    onnx.save(model, path)
    r = subprocess.run([sys.executable, "-m", "memse_compiler.cli", str(path), "--device", "rram"],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "node 'log' (Log)" in r.stderr, r.stderr


def test_pow_refuses_a_signal_exponent():
    from memse_compiler.frontend import build_graph
    model = _gemm_then([helper.make_node("Pow", ["h", "h"], ["y"], name="pw")])
    with pytest.raises(MemseInputError, match="node 'pw' \\(Pow\\): the exponent must be a constant scalar"):
        build_graph(model)


# ---- LayerNorm fusion ----------------------------------------------------------------------------------------
def decompose_layer_norms(model: onnx.ModelProto, opset: int) -> onnx.ModelProto:
    """Every LayerNormalization node written as torch exports nn.LayerNorm below opset 17 (axes as an input
    from opset 18), with the scope naming torch uses ('/ln1/LayerNormalization' -> '/ln1/ReduceMean', ...)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    nodes, inits = [], list(out.graph.initializer)
    for node in model.graph.node:
        if node.op_type == "ReduceMean" and opset >= 18:          # axes became an input
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            inits.append(numpy_helper.from_array(np.array(attrs.pop("axes"), np.int64), f"{node.name}/axes"))
            nodes.append(helper.make_node("ReduceMean", [node.input[0], inits[-1].name], list(node.output),
                                          name=node.name, **attrs))
            continue
        if node.op_type != "LayerNormalization":
            nodes.append(node)
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        scope, x = node.name.rsplit("/", 1)[0], node.input[0]
        axis = int(attrs.get("axis", -1))
        assert axis < 0
        t = lambda s: f"{scope}/{s}_output_0"  # noqa: E731
        consts = {"two": np.float32(2.0), "eps": np.float32(attrs.get("epsilon", 1e-5)),
                  "axes": np.arange(axis, 0, dtype=np.int64)}
        for k, v in consts.items():
            nodes.append(helper.make_node("Constant", [], [t(k)], name=f"{scope}/{k}",
                                          value=numpy_helper.from_array(v)))

        def reduce_mean(src, name):
            if opset >= 18:
                return helper.make_node("ReduceMean", [src, t("axes")], [t(name)], name=f"{scope}/{name}")
            return helper.make_node("ReduceMean", [src], [t(name)], name=f"{scope}/{name}", axes=list(range(axis, 0)))
        nodes += [reduce_mean(x, "ReduceMean"),
                  helper.make_node("Sub", [x, t("ReduceMean")], [t("Sub")], name=f"{scope}/Sub"),
                  helper.make_node("Pow", [t("Sub"), t("two")], [t("Pow")], name=f"{scope}/Pow"),
                  reduce_mean(t("Pow"), "ReduceMean_1"),
                  helper.make_node("Add", [t("ReduceMean_1"), t("eps")], [t("Add")], name=f"{scope}/Add"),
                  helper.make_node("Sqrt", [t("Add")], [t("Sqrt")], name=f"{scope}/Sqrt"),
                  helper.make_node("Div", [t("Sub"), t("Sqrt")], [t("Div")], name=f"{scope}/Div"),
                  helper.make_node("Mul", [t("Div"), node.input[1]], [t("Mul")], name=f"{scope}/Mul"),
                  helper.make_node("Add", [t("Mul"), node.input[2]], [node.output[0]], name=f"{scope}/Add_1")]
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    del out.graph.initializer[:]
    out.graph.initializer.extend(inits)
    del out.opset_import[:]
    out.opset_import.extend([helper.make_opsetid("", opset)])
    return out


@pytest.mark.parametrize("opset", [14, 18])
def test_decomposed_layer_norms_fuse_back(opset):
    """The trained transformer with its LayerNorms decomposed: onnxruntime agrees with the original, the frontend
    fuses both chains back into nodes named after the torch scope, and the analysis is the original's."""
    original = onnx.load(ROOT / "examples" / "attn_digits.onnx")
    model = decompose_layer_norms(original, opset)
    x = np.load(ROOT / "examples" / "digits_inputs.npy")[:32]
    run = lambda m: ort.InferenceSession(m.SerializeToString()).run(None, {"input": x})[0]  # noqa: E731
    np.testing.assert_allclose(run(model), run(original), rtol=1e-4, atol=1e-5)
    fused = fuse_layer_norm(model)
    assert [n.name for n in fused.graph.node if n.op_type == "LayerNormalization"] == ["/ln1", "/ln2"]
    assert not {"Pow", "Sqrt"} & {n.op_type for n in fused.graph.node}
    g_dec, _ = compile_model(model, "rram", x.astype(np.float64))
    g_org, _ = compile_model(original, "rram", x.astype(np.float64))
    a, b = (g.graph["analysis"]["outputs"]["logits"]["mse"] for g in (g_dec, g_org))
    assert a == pytest.approx(b, rel=1e-6)


def test_fusion_leaves_a_chain_whose_pieces_are_used_elsewhere():
    """The centred signal also feeding the output: not a LayerNorm any more; nothing is fused."""
    original = onnx.load(ROOT / "examples" / "attn_digits.onnx")
    model = decompose_layer_norms(original, 14)
    model.graph.output.append(helper.make_tensor_value_info("/ln1/Sub_output_0", TensorProto.FLOAT, None))
    fused = fuse_layer_norm(model)
    assert [n.name for n in fused.graph.node if n.op_type == "LayerNormalization"] == ["/ln2"]


@pytest.mark.parametrize("op,f", [("Max", np.maximum), ("Min", np.minimum)])
@pytest.mark.parametrize("mu,var", [(0.3, 0.5), (-2.0, 0.1), (1.2, 1e-4)])
def test_max_min_against_a_constant_are_exact(op, f, mu, var):
    rule = rule_for(op)
    (m,), (v,), lin = rule.moments({"op": op, "same_operand": False}, [np.array(mu), np.array(0.25)],
                                   [np.array(var), np.array(0.0)])
    want = integrate(lambda x: f(x, 0.25), mu, var)
    check((m, v, lin.gains[0]), want, 1e-5, atol=1e-9)


@pytest.mark.parametrize("op,f", [("Max", np.maximum), ("Min", np.minimum)])
def test_max_min_of_two_independent_signals_against_sampling(op, f):
    rule = rule_for(op)
    ma, va, mb, vb = 0.2, 0.3, -0.1, 0.6
    (m,), (v,), lin = rule.moments({"op": op, "same_operand": False}, [np.array(ma), np.array(mb)],
                                   [np.array(va), np.array(vb)])
    rng = np.random.default_rng(4)
    a, b = ma + math.sqrt(va) * rng.standard_normal(2_000_000), mb + math.sqrt(vb) * rng.standard_normal(2_000_000)
    y = f(a, b)
    assert float(m) == pytest.approx(y.mean(), abs=2e-3) and float(v) == pytest.approx(y.var(), rel=5e-3)
    assert float(lin.gains[0]) == pytest.approx(np.mean(y == a), abs=2e-3)


def test_reduce_prod_moments_of_independent_factors():
    """E and Var of a product of independent Gaussians against sampling; the gains are the others' means; a tiny
    noise keeps its digits (mu^2 (prod(1 + v / mu^2) - 1), not a difference of two near-equal squares)."""
    rule = rule_for("ReduceProd")
    attrs = {"axes": (1,), "keepdims": False}
    mu = np.array([[1.2, -0.7, 0.4], [0.0, 2.0, 1.5]])
    var = np.array([[0.3, 0.1, 0.2], [0.5, 0.05, 0.4]])
    (mean,), (v,), lin = rule.moments(attrs, [mu], [var])
    draws = np.random.default_rng(0).standard_normal((400_000,) + mu.shape) * np.sqrt(var) + mu
    prods = draws.prod(axis=2)
    np.testing.assert_allclose(mean, prods.mean(axis=0), atol=4e-3)
    np.testing.assert_allclose(v, prods.var(axis=0), rtol=2e-2)
    np.testing.assert_allclose(lin.gains[0], [[-0.28, 0.48, -0.84], [3.0, 0.0, 0.0]])
    (_,), (tiny,), _ = rule.moments(attrs, [np.array([[1e3, 2.0]])], [np.array([[1e-12, 0.0]])])
    assert tiny[0] == pytest.approx(4.0 * 1e-12, rel=1e-9)
