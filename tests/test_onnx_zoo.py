"""The ONNX zoo itself: every coverage model is valid and runs; bad models are bad in the intended way."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

try:
    from onnx_zoo import OPSET, WEIGHTED_OPS, ZooModel, bad_models, op_coverage_models, reference_outputs
except ModuleNotFoundError:  # tests/ imported as a package
    from tests.onnx_zoo import (OPSET, WEIGHTED_OPS, ZooModel, bad_models, op_coverage_models,
                                reference_outputs)

MODELS = op_coverage_models()


def _op_types(model: onnx.ModelProto) -> set[str]:
    return {n.op_type for n in model.graph.node}


def _dims(vi: onnx.ValueInfoProto) -> list:
    return [d.dim_param if d.HasField("dim_param") else d.dim_value for d in vi.type.tensor_type.shape.dim]


def test_names_unique_and_pytest_friendly():
    names = [m.name for m in MODELS]
    assert len(names) == len(set(names))
    assert all(re.fullmatch(r"[a-z0-9_]+", n) for n in names), names
    assert len(MODELS) >= 45


@pytest.mark.parametrize("zm", MODELS, ids=lambda m: m.name)
def test_coverage_model_valid_and_runs(zm: ZooModel):
    model = zm.model
    onnx.checker.check_model(model, full_check=True)
    opset = [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")]
    # Gelu exists from opset 20, Mish from 18, RMSNormalization and Attention from 23 (windows 25), GroupNormalization as
    # it is now from 21, Swish from 24; Upsample is the old (opset <= 9) export
    assert opset == [OPSET] or (opset == [20] and "Gelu" in _op_types(model)) or (
        opset == [18] and "Mish" in _op_types(model)) or (opset == [9] and "Upsample" in _op_types(model)) or (
        opset == [23] and "RMSNormalization" in _op_types(model)) or (
        opset in ([23], [25]) and "Attention" in _op_types(model)) or (
        opset == [23] and "RotaryEmbedding" in _op_types(model)) or (
        opset == [21] and "GroupNormalization" in _op_types(model)) or (opset == [24] and "Swish" in _op_types(model)) or (
        opset == [18] and "CenterCropPad" in _op_types(model))
    # every coverage model has a weighted op (an Einsum with a constant operand is one)
    assert _op_types(model) & (WEIGHTED_OPS | {"Einsum"})
    assert all(n.name for n in model.graph.node)

    init_names = {i.name for i in model.graph.initializer}
    graph_inputs = [i for i in model.graph.input if i.name not in init_names]
    assert list(zm.inputs) == [vi.name for vi in graph_inputs]
    for vi in graph_inputs:
        x = zm.inputs[vi.name]
        assert x.dtype == (np.float32 if vi.type.tensor_type.elem_type == onnx.TensorProto.FLOAT else np.int64)
        declared = _dims(vi)
        assert len(declared) == x.ndim
        assert all(isinstance(d, str) or d == s for d, s in zip(declared, x.shape))

    for init in model.graph.initializer:
        assert np.isfinite(numpy_helper.to_array(init)).all()

    outs = reference_outputs(zm)
    assert len(outs) == len(model.graph.output)
    for vi, y in zip(model.graph.output, outs):
        assert np.isfinite(y).all(), vi.name
        assert y.size > 0
        dims = _dims(vi)
        assert len(dims) == y.ndim and all(isinstance(d, str) or d == s for d, s in zip(dims, y.shape))


def test_deterministic():
    again = {m.name: m for m in op_coverage_models()}
    for m in MODELS:
        assert m.model.SerializeToString() == again[m.name].model.SerializeToString(), m.name
        for k, v in m.inputs.items():
            np.testing.assert_array_equal(v, again[m.name].inputs[k])


def _attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def test_zoo_covers_the_brief():
    nodes = [(m.name, n) for m in MODELS for n in m.model.graph.node]
    ops = {n.op_type for _, n in nodes}
    from memse_compiler.ir.ops import SUPPORTED_OPS
    # onnxruntime's quantized ops are covered by the models its own quantizer wrote (tests/test_quantized.py)
    quantized = {n.op_type for f in (Path(__file__).parent / "quantized").glob("*.onnx") for n in onnx.load(f).graph.node}
    # onnxruntime's fused float ops by tests/test_contrib_ops.py's model of every form and the BERT its optimizer fused
    from test_contrib_ops import BERT, contrib_model
    contrib = {n.op_type for n in contrib_model(17).graph.node} | {n.op_type for n in onnx.load(BERT).graph.node}
    missing = set(SUPPORTED_OPS) - ops - quantized - contrib
    assert not missing, f"ops without a coverage model: {sorted(missing)}"

    convs = [n for _, n in nodes if n.op_type == "Conv"]
    assert {_attr(n, "group", 1) for n in convs} >= {1, 2, 4}
    assert {_attr(n, "auto_pad", b"NOTSET") for n in convs} >= {b"SAME_UPPER", b"SAME_LOWER", b"VALID"}
    assert {tuple(_attr(n, "kernel_shape")) for n in convs} >= {(1, 1), (3, 3), (5, 3), (3,)}
    assert {tuple(_attr(n, "strides", [1, 1])) for n in convs} >= {(2, 2), (1, 2)}
    assert (2, 2) in {tuple(_attr(n, "dilations", [1, 1])) for n in convs}
    assert {len(n.input) for n in convs} == {2, 3}

    gemms = [n for _, n in nodes if n.op_type == "Gemm"]
    assert {(_attr(n, "transA", 0), _attr(n, "transB", 0)) for n in gemms} == {(0, 0), (0, 1), (1, 0), (1, 1)}
    assert any(_attr(n, "alpha", 1.0) != 1.0 for n in gemms) and any(_attr(n, "beta", 1.0) != 1.0 for n in gemms)
    assert {len(n.input) for n in gemms} == {2, 3}

    clips = [n for _, n in nodes if n.op_type == "Clip"]
    assert {tuple(bool(i) for i in n.input) for n in clips} >= {(True,), (True, False, True), (True, True, True)}
    pools = [n for _, n in nodes if n.op_type == "AveragePool"]
    assert {_attr(n, "count_include_pad", 0) for n in pools} == {0, 1}


def test_bad_models(tmp_path):
    paths = bad_models(tmp_path)
    assert set(paths) == {"truncated", "not_onnx", "empty", "unsupported_op", "dynamic_spatial",
                          "nan_weight", "inf_weight", "mismatched_batches", "no_weighted_ops", "maxpool_ceil_past_end",
                          "unbatched_vector", "scatter_add", "gather_by_data", "scatternd_batch",
                          "mvn_default_axes"}
    for kind, path in paths.items():
        assert path.exists() and path.parent == tmp_path and path.suffix == ".onnx", kind

    assert paths["empty"].stat().st_size == 0
    for kind in ("truncated", "not_onnx"):
        assert paths[kind].stat().st_size > 0
        with pytest.raises(Exception):
            onnx.load(paths[kind])

    # the rest are well-formed ONNX: they are bad only for the compiler
    loaded = {k: onnx.load(paths[k]) for k in paths if k not in ("truncated", "not_onnx", "empty")}
    for kind, model in loaded.items():
        onnx.checker.check_model(model, full_check=True)

    weird = [n for n in loaded["unsupported_op"].graph.node if n.name == "weird_node"]
    assert len(weird) == 1 and weird[0].op_type == "TopK"
    assert "Gemm" in _op_types(loaded["unsupported_op"])

    assert _dims(loaded["dynamic_spatial"].graph.input[0])[2:] == ["H", "W"]
    assert "Conv" in _op_types(loaded["dynamic_spatial"])

    for kind, bad in (("nan_weight", np.isnan), ("inf_weight", np.isinf)):
        w = {i.name: numpy_helper.to_array(i) for i in loaded[kind].graph.initializer}["fc.weight"]
        assert bad(w).sum() == 1, kind

    two = loaded["mismatched_batches"]
    assert [_dims(i)[0] for i in two.graph.input] == [2, 3]
    used = {i for n in two.graph.node for i in n.input}
    assert all(i.name in used for i in two.graph.input)

    assert not (_op_types(loaded["no_weighted_ops"]) & WEIGHTED_OPS)
