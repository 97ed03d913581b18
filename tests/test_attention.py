"""ONNX Attention (ir/ops/attention.py, expanded at load by load_expansion.py): forms onnxruntime's kernel refuses
against onnx.reference (the operator's definition), fully masked rows, 4-D grouped-query heads, refusals in one line.
The op-coverage zoo's attention models (tests/onnx_zoo_attention.py) run through the zoo-wide tests (noise off
against onnxruntime, the tiled chip against the interpreter, the analysis against Monte-Carlo), and torch's opset-23
exports through test_torch_exports.py."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper
from onnx.reference import ReferenceEvaluator

from device_models import load_device
from memse_compiler import compile_model
from memse_compiler.executor import NoisyExecutor
from memse_compiler.ir.errors import MemseInputError
from memse_compiler.montecarlo import run_montecarlo
from memse_compiler.pipeline import default_pipeline
from onnx_zoo import N, Builder

T, E = 4, 8
IDEAL = load_device("ideal", ["conductance.levels=null"])


def _model(name: str, heads=(2, 2), size: int = 4, mask=None, mask_input=None, rank: int = 3, opset: int = 23,
           **attrs):
    """x (N, T*E) -> tokens -> Q, K, V MatMuls -> Attention (3-D or 4-D, heads = (query, key/value)) -> the output
    flattened. mask: a constant attn_mask; mask_input: (shape, dtype) of an attn_mask data input, with its feed."""
    g = Builder(name, opset=opset)
    x = g.op("Reshape", [g.input("x", (N, T * E)), g.const("tokens", np.array([0, T, E], np.int64))])
    qkv = [g.matmul(x, E, h * size, name=f"{p}_proj") for p, h in zip("qkv", (heads[0], heads[1], heads[1]))]
    if rank == 4:
        qkv = [g.op("Transpose", [g.op("Reshape", [t, g.const("split", np.array([0, 0, h, size], np.int64))])],
                    perm=[0, 2, 1, 3]) for t, h in zip(qkv, (heads[0], heads[1], heads[1]))]
    else:
        attrs.update(q_num_heads=heads[0], kv_num_heads=heads[1])
    inputs = list(qkv)
    if mask is not None:
        inputs.append(g.const("mask", mask))
    elif mask_input is not None:
        shape, value = mask_input
        name_in = "mask"
        g._names.add(name_in)
        g.graph_inputs.append(helper.make_tensor_value_info(
            name_in, onnx.helper.np_dtype_to_tensor_dtype(value.dtype), list(shape)))
        g.feed[name_in] = value
        inputs.append(name_in)
    y = g.op("Attention", inputs, name="attention", **attrs)
    return g.build(g.op("Flatten", [y], axis=1))


def _check_against_definition(zm, feed_runs_in_onnxruntime: bool):
    """The compiled graph's float reference and the executor's noiseless chip equal onnx.reference's output."""
    x = zm.batch(np.float32)
    want = ReferenceEvaluator(zm.model).run(None, zm.inputs)[0]
    g, _ = compile_model(zm.model, IDEAL, zm.batch(), pipeline=default_pipeline(analysis=False))
    out = g.graph["outputs"][0]
    np.testing.assert_allclose(g.graph["reference"][out], want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(NoisyExecutor(g).run_noiseless(x)[out], want, rtol=1e-5, atol=1e-6)
    import onnxruntime as ort
    if not feed_runs_in_onnxruntime:          # the reason for checking against the definition
        with pytest.raises(Exception):
            ort.InferenceSession(zm.model.SerializeToString()).run(None, zm.inputs)
    return g, want


def test_constant_mask_narrower_than_the_keys_masks_the_rest():
    """A bool mask over the first 3 of 4 keys: the 4th is masked (onnxruntime refuses the shape)."""
    allowed = np.array([[1, 1, 0], [0, 1, 1], [1, 0, 1], [1, 1, 1]], bool)
    _check_against_definition(_model("narrow_bool_mask", mask=allowed), feed_runs_in_onnxruntime=False)
    bias = np.array([[0.0, -1.0, 0.5], [0.2, 0.0, -np.inf], [0.0, 0.0, 0.0], [-0.5, 0.5, 0.0]], np.float32)
    _check_against_definition(_model("narrow_float_mask", mask=bias), feed_runs_in_onnxruntime=False)


def test_runtime_mask_broadcast_over_the_queries():
    """(N, 1, 1, keys), as torch exports a key-padding mask; a sample whose keys are all masked gives zeros."""
    allowed = np.ones((3, 1, 1, T), bool)
    allowed[0, ..., 2:] = False
    allowed[2] = False
    zm = _model("padding_broadcast", mask_input=((N, 1, 1, T), allowed))
    _, want = _check_against_definition(zm, feed_runs_in_onnxruntime=False)
    assert not want[2].any() and want[0].any()


def test_constant_fully_masked_row_gives_zeros_as_onnxruntime():
    allowed = np.ones((T, T), bool)
    allowed[1] = False
    zm = _model("masked_row", mask=allowed)
    g, want = _check_against_definition(zm, feed_runs_in_onnxruntime=True)
    rows = want.reshape(len(want), T, -1)
    assert not rows[:, 1].any() and rows[:, [0, 2, 3]].all()
    import onnxruntime as ort
    np.testing.assert_allclose(ort.InferenceSession(zm.model.SerializeToString()).run(None, zm.inputs)[0], want,
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("heads", [(4, 2), (4, 1)])
def test_grouped_query_heads_4d(heads):
    """4-D inputs: the head counts come from the shapes; each K/V head serves a group of query heads."""
    _check_against_definition(_model(f"gqa_4d_{heads[1]}", heads=heads, rank=4, is_causal=1),
                              feed_runs_in_onnxruntime=True)


def test_grouped_query_analysis_matches_monte_carlo():
    zm = _model("gqa_mc", heads=(4, 2), rank=4, softcap=1.5, scale=0.7)
    dev = load_device("rram", ["programming_noise.sigma=4e-6", "crossbar.rows=16"])
    g, _ = compile_model(zm.model, dev, zm.batch())
    out = g.graph["outputs"][0]
    res = run_montecarlo(g, dev, zm.batch(), chips=2000, precision=0.03, seed=0, progress=False,
                         signals=[])["outputs"][out]
    half = (res["ci95"][1] - res["ci95"][0]) / 2
    assert abs(g.graph["analysis"]["outputs"][out]["mse"] - res["mse"]) <= 0.06 * res["mse"] + half


def test_refusals_name_the_node():
    zm = _model("refused", softmax_precision=onnx.TensorProto.FLOAT16)
    with pytest.raises(MemseInputError, match=r"^refused: node 'attention' \(Attention\): softmax_precision FLOAT16 "
                                              r"is not supported \(float or double\)$"):
        compile_model(zm.model, IDEAL, zm.batch(), pipeline=default_pipeline(analysis=False))
    # a causal mask over a sequence of symbolic length
    g = Builder("dynamic_length", opset=23)
    x = g.input("x", (N, "L", E))
    qkv = [g.matmul(x, E, 8, name=f"{p}_proj") for p in "qkv"]
    zm = g.build(g.op("Attention", qkv, name="attention", q_num_heads=2, kv_num_heads=2, is_causal=1))
    with pytest.raises(MemseInputError, match=r"^dynamic_length: node 'attention' \(Attention\): the query sequence "
                                              r"length must be known from the model's shapes"):
        compile_model(zm.model, IDEAL, zm.batch(), pipeline=default_pipeline(analysis=False))
