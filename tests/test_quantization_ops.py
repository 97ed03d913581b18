"""QuantizeLinear / DequantizeLinear on signals (memse_compiler/ir/ops/quantization.py) against a numpy
simulation of the map, and the dropping of re-quantization onto the same lattice (fusions.drop_requantization)."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from memse_compiler.frontend import build_graph
from memse_compiler.fusions import drop_requantization
from memse_compiler.ir.interpret import run
from memse_compiler.ir.ops import rule_for


@pytest.mark.parametrize("zero,qmin,qmax", [(0, 0, 255), (3, -128, 127), (-5, -128, 127)])
def test_quantize_moments_match_a_sampled_gaussian(zero, qmin, qmax):
    """Mean and variance of clip(round(x / s) + z) for x ~ N(mu, v), per element, against 400k samples: around
    the steps (std below and above the step) and into the saturation."""
    rule, s = rule_for("QuantizeLinear"), 0.1
    attrs = {"scale": np.float64(s), "zero_point": np.float64(zero), "qmin": qmin, "qmax": qmax}
    mu = np.array([0.013, 0.37, -1.2, 12.9, 3.0])
    var = np.array([0.02, 0.3, 0.5, 1.0, 0.001]) ** 2
    (mean,), (v,), _ = rule.moments(attrs, [mu], [var])
    rng = np.random.default_rng(0)
    x = mu + np.sqrt(var) * rng.standard_normal((400_000, mu.size))
    q = rule.forward(attrs, [x])[0]
    np.testing.assert_allclose(mean, q.mean(axis=0), atol=4 * q.std(axis=0).max() / np.sqrt(len(x)) + 1e-3)
    np.testing.assert_allclose(v, q.var(axis=0), rtol=0.02, atol=0.01)        # atol: 1 % of a step squared


def _chain(scale2: float, reshape: bool = True) -> onnx.ModelProto:
    """x -> Q -> DQ -> Reshape -> Q (scale2) -> DQ -> MatMul: onnxruntime's QDQ form of a copy op."""
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q1"]),
             helper.make_node("DequantizeLinear", ["q1", "s", "z"], ["d1"]),
             helper.make_node("Reshape" if reshape else "Relu", ["d1", "shape"] if reshape else ["d1"], ["r"]),
             helper.make_node("QuantizeLinear", ["r", "s2", "z"], ["q2"]),
             helper.make_node("DequantizeLinear", ["q2", "s2", "z"], ["d2"]),
             helper.make_node("MatMul", ["d2", "w"], ["y"])]
    inits = [numpy_helper.from_array(np.array(0.05, np.float32), "s"),
             numpy_helper.from_array(np.array(scale2, np.float32), "s2"),
             numpy_helper.from_array(np.array(128, np.uint8), "z"),
             numpy_helper.from_array(np.array([0, 12], np.int64), "shape"),
             numpy_helper.from_array(np.random.default_rng(1).standard_normal((12, 3)).astype(np.float32), "w")]
    graph = helper.make_graph(nodes, "qdq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_requantization_onto_the_same_lattice_is_dropped():
    same, other = _chain(0.05), _chain(0.07)
    assert [n.op_type for n in drop_requantization(same).graph.node] == \
        ["QuantizeLinear", "DequantizeLinear", "Reshape", "MatMul"]
    assert drop_requantization(other) is other                 # another scale: a real rounding
    x = np.random.default_rng(2).standard_normal((5, 3, 4)).astype(np.float32)
    for model in (same, other):                                  # exact either way
        want = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
        np.testing.assert_allclose(run(build_graph(model), x.astype(np.float64))["y"], want, rtol=1e-5, atol=1e-5)
