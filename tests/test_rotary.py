"""RotaryEmbedding (ir/ops/rotary.py) with position ids fed at run time, one order per sample: the Gather of the
cache rows is an exact signal, and the rotation equals onnxruntime's. (The exports in tests/torch_exports/rope_*,
position ids from shapes, are checked with the other torch exports.)"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from device_models import load_device
from memse_compiler import compile_model
from memse_compiler.executor import NoisyExecutor
from memse_compiler.ir.errors import MemseInputError

EXPORT = Path(__file__).resolve().parent / "torch_exports" / "rope_halves.rotary23.onnx"


def _fed_positions(tmp_path: Path, dims=("batch", 8)) -> Path:
    m = onnx.load(EXPORT)
    for node in m.graph.node:
        if node.op_type == "RotaryEmbedding":
            node.input[3] = "positions"
    m.graph.input.append(helper.make_tensor_value_info("positions", TensorProto.INT64, list(dims)))
    path = tmp_path / "rope_positions.onnx"
    onnx.save(onnx.shape_inference.infer_shapes(m), path)
    return path


def test_positions_fed_per_sample_match_onnxruntime(tmp_path):
    path = _fed_positions(tmp_path)
    rng = np.random.default_rng(0)
    x = rng.random((6, 1, 8, 8)).astype(np.float32)
    positions = np.stack([rng.permutation(16)[:8] for _ in range(6)]).astype(np.int64)
    want = ort.InferenceSession(str(path)).run(None, {"x": x, "positions": positions})[0]
    feed = {"x": x.astype(np.float64), "positions": positions}
    g, _ = compile_model(str(path), load_device("ideal", ["conductance.levels=null"]), feed)
    out = g.graph["outputs"][0]
    assert "RotaryEmbedding" not in {d["op"] for _, d in g.nodes(data=True)}
    np.testing.assert_allclose(g.graph["reference"][out], want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(NoisyExecutor(g).run_noiseless(feed)[out], want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dim,needle", [(3, "rotary_embedding_dim 3 must be even"),
                                        (4, "the caches hold 4 angles per position, not rotary_embedding_dim / 2 = 2")])
def test_a_bad_rotary_dimension_is_refused_naming_the_node(tmp_path, dim, needle):
    m = onnx.load(_fed_positions(tmp_path))
    node = next(n for n in m.graph.node if n.op_type == "RotaryEmbedding")
    node.attribute.append(helper.make_attribute("rotary_embedding_dim", dim))
    path = tmp_path / "bad.onnx"
    onnx.save(m, path)
    feed = {"x": np.zeros((2, 1, 8, 8)), "positions": np.zeros((2, 8), np.int64)}
    with pytest.raises(MemseInputError, match=f"{node.name}.*{needle}"):
        compile_model(str(path), "rram", feed)
