"""Exact signals (memse_compiler/ir/ops/exact.py): ops computed from the data inputs alone, such as token ids looked up
in an embedding table and a padding mask turned into an attention mask. Their value is the same on every chip,
so they carry no variance; the models around them are checked against onnxruntime and Monte-Carlo in
tests/test_torch_exports.py (tokens_*) and the op-coverage zoo (token_embedding, where_exact_condition)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from memse_compiler import compile_model
from memse_compiler.cli import main
from memse_compiler.executor import NoisyExecutor
from memse_compiler.ir.errors import MemseInputError

EXPORTS = Path(__file__).resolve().parent / "torch_exports"
FILL = EXPORTS / "tokens_fill.onnx"         # int64 ids (vocabulary 20) and mask, length 6, masked_fill(-inf)


def padded_batch(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 7, n)
    return {"ids": rng.integers(0, 20, (n, 6)), "mask": (np.arange(6)[None, :] < lengths[:, None]).astype(np.int64)}


def test_exact_nodes_carry_no_variance():
    """The lookup, the mask's comparison and casts are exact nodes with zero variance on a noisy device; the
    Where that masks the (noisy) scores keeps the scores' variance where the mask keeps them, and gives the
    masked positions none."""
    x = padded_batch(12)
    g, _ = compile_model(FILL, "rram", x)
    exact = {d["attrs"]["onnx_op"] for _, d in g.nodes(data=True) if d["op"] == "Exact"}
    assert {"Gather", "Equal", "Cast", "Unsqueeze"} <= exact
    for unit, d in g.nodes(data=True):
        if d["op"] == "Exact":
            for t in d["outputs"]:
                assert not np.any(g.graph["moments"][t][1]), t
    (where,) = [d for _, d in g.nodes(data=True) if d["op"] == "Where"]
    cond, fill, scores = where["inputs"]                # masked_fill: Where(mask == 0, -inf, scores)
    assert fill in g.graph["constants"] and cond not in g.graph["constants"]
    out_var = g.graph["moments"][where["outputs"][0]][1]
    scores_var = np.broadcast_to(g.graph["moments"][scores][1], out_var.shape)
    masked = np.broadcast_to(g.graph["moments"][cond][0].astype(bool), out_var.shape)
    assert np.all(out_var[masked] == 0) and np.all(out_var[~masked] == scores_var[~masked])
    assert masked.any() and (~masked).any() and np.all(scores_var > 0)


def test_padded_batch_matches_onnxruntime_noise_off():
    x = padded_batch(9, seed=3)
    want = ort.InferenceSession(str(FILL)).run(None, x)[0]
    g, _ = compile_model(FILL, "ideal", x)
    np.testing.assert_allclose(g.graph["reference"]["y"], want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(NoisyExecutor(g).run_noiseless(x)["y"], want, rtol=1e-5, atol=1e-6)


def test_synthetic_ids_cover_the_table_and_masks_are_ones():
    g, ctx = compile_model(FILL, "rram", batch=200)
    ids, mask = ctx.inputs["ids"], ctx.inputs["mask"]
    assert ids.dtype == np.int64 and mask.dtype == np.int64
    assert ids.min() == 0 and ids.max() == 19 and len(np.unique(ids)) == 20
    assert np.all(mask == 1)


def test_bad_ids_and_types_are_refused():
    x = padded_batch(4)
    with pytest.raises(MemseInputError, match="indexes a table of 20 rows, and holds 20"):
        compile_model(FILL, "rram", dict(x, ids=np.where(x["ids"] == 0, 20, x["ids"])))
    with pytest.raises(MemseInputError, match="'ids' is int64 in the model"):
        compile_model(FILL, "rram", dict(x, ids=x["ids"].astype(np.float64) + 0.5))


def test_cli_with_token_ids(tmp_path, capsys):
    x = padded_batch(30, seed=4)
    npz = tmp_path / "tokens.npz"
    np.savez(npz, **x)
    code = main([str(FILL), "--device", "rram", "--inputs", str(npz), "--mc", "40"])
    out = capsys.readouterr().out
    assert code == 0 and "ids 30 x (6,), mask 30 x (6,)" in out
    bad = tmp_path / "float_ids.npz"
    np.savez(bad, ids=x["ids"] + 0.25, mask=x["mask"])
    code = main([str(FILL), "--device", "rram", "--inputs", str(bad)])
    err = capsys.readouterr().err
    assert code == 2 and "'ids' is int64 in the model" in err and len(err.strip().splitlines()) == 1
