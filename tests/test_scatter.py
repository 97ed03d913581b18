"""Element-indexed reads and writes (ir/ops/scatter.py) on hand-built models: the indices a fixed-batch export
bakes per sample, constant updates (a Where), the load-time probe's reading of tensors that follow the batch, and
the refusals. The torch exports (tests/torch_exports/idx_*) and the op-coverage zoo check the rest against
onnxruntime and Monte-Carlo."""
from __future__ import annotations

import numpy as np
import pytest

from device_models import load_device
from memse_compiler import compile_model
from memse_compiler.executor import NoisyExecutor
from memse_compiler.ir.errors import MemseInputError
from memse_compiler.load_expansion import _one_sample
from memse_compiler.pipeline import default_pipeline
from onnx_zoo import K, M, Builder, reference_outputs

IDEAL = load_device("ideal", ["conductance.levels=null"])


def _fixed_batch(name: str, op: str, indices: np.ndarray, updates: np.ndarray | None = None):
    """x (3, K) -> Gemm -> op(y, indices[, updates]) along axis 1 -> Gemm: an export with its batch fixed at 3."""
    g = Builder(name)
    y = g.gemm(g.input("x", (3, K)), K, M)
    inputs = [y, g.const("at", indices)] + ([] if updates is None else [g.const("written", updates)])
    z = g.op(op, inputs, name="indexed", axis=1)
    return g.build(g.gemm(z, indices.shape[1] if op == "GatherElements" else M, 4, name="fc_out"))


def _noiseless_equals_onnxruntime(zm):
    x = zm.batch()
    g, _ = compile_model(zm.model, IDEAL, x, pipeline=default_pipeline(analysis=False))
    out = g.graph["outputs"][0]
    assert not {d["op"] for _, d in g.nodes(data=True)} & {"GatherElements", "ScatterElements", "ScatterND"}
    np.testing.assert_allclose(NoisyExecutor(g).run_noiseless(x)[out], reference_outputs(zm)[0], rtol=1e-5,
                               atol=1e-6)


def test_a_fixed_export_s_per_sample_indices_gather_every_sample():
    rows = np.tile(np.array([[9, 0, -1, 4, 4]], np.int64), (3, 1))
    _noiseless_equals_onnxruntime(_fixed_batch("gather_fixed", "GatherElements", rows))


def test_constant_updates_are_written_by_a_where():
    at = np.tile(np.array([[2, 7, 2]], np.int64), (3, 1))           # position 2 twice: the last write wins
    written = np.tile(np.array([[0.5, -1.0, 3.0]], np.float32), (3, 1))
    _noiseless_equals_onnxruntime(_fixed_batch("scatter_constant", "ScatterElements", at, written))


def test_indices_that_differ_between_samples_are_refused():
    rows = np.array([[0, 1], [1, 0], [0, 1]], np.int64)
    with pytest.raises(MemseInputError, match="'indexed'.*differ between samples"):
        compile_model(_fixed_batch("gather_per_sample", "GatherElements", rows).model, IDEAL, np.zeros((3, K)))


def test_a_probed_tensor_following_the_batch_is_one_sample_s_slice():
    one = np.arange(6.0).reshape(2, 1, 3)
    value, axis = _one_sample([np.repeat(one, 2, axis=1), np.repeat(one, 3, axis=1)], (2, 3))
    assert axis == 1 and np.array_equal(value, one)
    assert _one_sample([np.ones((2, 4)), np.ones((2, 4))], (2, 3))[1] is None        # batch-independent
    differ = np.arange(4.0).reshape(2, 2)
    assert _one_sample([differ, np.arange(6.0).reshape(2, 3)], (2, 3)) is None       # the samples differ
    assert _one_sample([np.ones((2, 2)), np.ones((3, 3))], (2, 3)) is None           # two axes follow the batch
