"""Transformer forms of torch's own modules (tests/torch_exports/, made by its make.py with random weights):
each runs batch-first at another batch as onnxruntime runs the export, its noiseless chip is onnxruntime's, and
its analysis agrees with Monte-Carlo."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from device_models import load_device
from memse_compiler import compile_model
from memse_compiler.executor import NoisyExecutor
from memse_compiler.montecarlo import run_montecarlo
from memse_compiler.pipeline import default_pipeline

EXPORTS = Path(__file__).resolve().parent / "torch_exports"
MODELS = ["seqfirst_mha", "mha_weights.fixed", "causal_encoder.fixed", "decoder.fixed", "merge", "group_norm", "fake_quant",
          "gpt_block"]
X = np.random.default_rng(3).random((8, 1, 8, 8)).astype(np.float32)


def export_outputs(path: Path, x: np.ndarray) -> np.ndarray:
    """onnxruntime on the export, in chunks of its fixed batch (or at once). Graph optimisations off: they would
    fuse fake quantization (QuantizeLinear -> DequantizeLinear -> Gemm) into integer kernels, which round
    differently from the ONNX semantics the compiler and its executor follow."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    batch = sess.get_inputs()[0].shape[0]
    step = batch if isinstance(batch, int) else len(x)
    return np.concatenate([sess.run(None, {"x": x[i:i + step]})[0] for i in range(0, len(x), step)])


@pytest.mark.parametrize("name", MODELS)
def test_export_runs_batch_first_at_another_batch(name):
    path = EXPORTS / f"{name}.onnx"
    ideal = load_device("ideal", ["conductance.levels=null"])
    g, _ = compile_model(str(path), ideal, X.astype(np.float64), pipeline=default_pipeline(analysis=False))
    want = export_outputs(path, X)
    np.testing.assert_allclose(g.graph["reference"]["y"], want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(NoisyExecutor(g).run_noiseless(X)["y"], want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", MODELS)
def test_export_analysis_matches_monte_carlo(name):
    device = load_device("rram", ["programming_noise.sigma=4e-6"])
    g, _ = compile_model(str(EXPORTS / f"{name}.onnx"), device, X.astype(np.float64))
    mse = g.graph["analysis"]["outputs"]["y"]["mse"]
    res = run_montecarlo(g, device, chips=600, seed=1, progress=False, signals=[])["outputs"]["y"]
    mc, (lo, hi) = res["mse"], res["ci95"]
    assert hi - lo < 0.2 * mc, "the Monte-Carlo reference must be tighter than the tolerance"
    assert abs(mse - mc) <= 0.10 * mc + (hi - lo) / 2, (mse, mc, lo, hi)
