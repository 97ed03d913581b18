"""Models with ONNX's Attention op (opset 23 on) for the op-coverage zoo (see ``onnx_zoo.py``, the entry).

Each projects tokens with crossbar MatMuls to Q, K and V, runs one Attention node (ir/ops/attention.py expands
it) and pools the result into a Gemm head, so the noisy scores and values go through every part of the node:
3-D heads and grouped-query heads, 4-D inputs, causal masks with a past, softcap and an explicit scale, constant
and run-time masks (bool and float, with fully masked query rows), `nonpad_kv_seqlen`, sliding windows, `qk_matmul_output`."""
from __future__ import annotations

import numpy as np
from onnx import helper, numpy_helper

if __package__:                                       # imported as tests.onnx_zoo_attention
    from .onnx_zoo import N, Builder, ZooModel
else:                                                 # imported with tests/ on sys.path
    from onnx_zoo import N, Builder, ZooModel

T, E = 4, 8        # tokens, input features per token

__all__ = ["attention_models"]


def _tokens(g: Builder, t: int = T, name: str = "x") -> str:
    """(N, t * E) data input viewed as t tokens of E features."""
    x = g.input(name, (N, t * E))
    return g.op("Reshape", [x, g.const("tokens", np.array([0, t, E], np.int64))])


def _head(g: Builder, y: str, width: int) -> str:
    """Mean over the tokens (axis 1 of a 3-D output), then a Gemm to 4 outputs."""
    pooled = g.op("ReduceMean", [y, g.const("token_axis", np.array([1], np.int64))], keepdims=0)
    return g.gemm(pooled, width, 4, name="head")


def _to_heads(g: Builder, x: str, heads: int, size: int) -> str:
    """(N, t, heads * size) -> (N, heads, t, size)."""
    split = g.op("Reshape", [x, g.const("heads", np.array([0, 0, heads, size], np.int64))])
    return g.op("Transpose", [split], perm=[0, 2, 1, 3])


def _from_heads(g: Builder, y: str) -> str:
    return g.op("Reshape", [g.op("Transpose", [y], perm=[0, 2, 1, 3]),
                            g.const("merge", np.array([0, 0, -1], np.int64))])


def _attention(g: Builder, inputs: list[str], outputs: tuple[int, ...] = (0,), **attrs) -> list[str]:
    """An Attention node writing only the outputs at the positions `outputs` (the others left unnamed)."""
    names = [g.fresh(f"attention_out{i}") if i in outputs else "" for i in range(max(outputs) + 1)]
    g.nodes.append(helper.make_node("Attention", inputs, names, name=g.fresh("attention"), **attrs))
    return [n for n in names if n]


def _self_attention_3d(name: str, q_heads: int = 2, kv_heads: int = 2, size: int = 8, opset: int = 23,
                       **attrs) -> ZooModel:
    g = Builder(name, opset=opset)
    t = _tokens(g)
    q = g.matmul(t, E, q_heads * size, name="q_proj")
    k = g.matmul(t, E, kv_heads * size, name="k_proj")
    v = g.matmul(t, E, kv_heads * size, name="v_proj")
    y, = _attention(g, [q, k, v], q_num_heads=q_heads, kv_num_heads=kv_heads, **attrs)
    return g.build(_head(g, y, q_heads * size))


def _causal_past_4d() -> ZooModel:
    """4-D cross-sized attention: 2 queries over a data-input past of 3 keys plus 4 new ones, causal (bottom-right:
    query i sees the past and new keys 0..i + 2), softcap 2 and scale 0.3; present_key a second output (onnxruntime
needs present_value written too)."""
    g = Builder("attention_causal_past_4d", opset=23)
    heads, size = 2, 4
    t = _tokens(g)
    queries = g.op("Slice", [t, g.const("start", np.array([2], np.int64)), g.const("end", np.array([4], np.int64)),
                             g.const("axis", np.array([1], np.int64))])
    q = _to_heads(g, g.matmul(queries, E, heads * size, name="q_proj"), heads, size)
    k = _to_heads(g, g.matmul(t, E, heads * size, name="k_proj"), heads, size)
    v = _to_heads(g, g.matmul(t, E, heads * size, name="v_proj"), heads, size)
    past_k, past_v = g.input("past_key", (N, heads, 3, size)), g.input("past_value", (N, heads, 3, size))
    y, present_key, _ = _attention(g, [q, k, v, "", past_k, past_v], (0, 1, 2), is_causal=1, softcap=2.0,
                                   scale=0.3)
    return g.build([_head(g, _from_heads(g, y), heads * size), present_key])


def _id_padding_mask(name: str, fully_masked_sample: int = 1) -> ZooModel:
    """A run-time bool mask from token ids ((ids > 0) as (N, 1, T, T): onnxruntime takes no broadcast over the
    queries), one sample with every key masked (its
    output row is zero, the operator's errata), with qk_matmul_output (mode 3: the guarded Softmax) an output."""
    g = Builder(name, opset=23)
    t = _tokens(g)
    ids = g.input("ids", (N, T), ids=3)
    g.feed[ids][fully_masked_sample] = 0
    g.feed[ids][:, 0] = np.where(np.arange(len(g.feed[ids])) == fully_masked_sample, 0, 1)
    mask = g.op("Unsqueeze", [g.op("Greater", [ids, g.const("pad_id", np.array(0, np.int64))]),
                              g.const("mask_axes", np.array([1, 2], np.int64))])
    mask = g.op("Expand", [mask, g.const("mask_shape", np.array([1, 1, T, T], np.int64))])
    q = g.matmul(t, E, 16, name="q_proj")
    k = g.matmul(t, E, 16, name="k_proj")
    v = g.matmul(t, E, 16, name="v_proj")
    y, probs = _attention(g, [q, k, v, mask], (0, 3), q_num_heads=2, kv_num_heads=2, qk_matmul_output_mode=3)
    return g.build([_head(g, y, 16), probs])


def _float_mask_input() -> ZooModel:
    """A run-time additive float mask (N, 1, T, T): a data input plus where(ids == 0, -inf, 0) over the keys, one
    sample with every id 0 (a fully masked query row gives zeros)."""
    g = Builder("attention_float_mask_input", opset=23)
    t = _tokens(g)
    ids = g.input("ids", (N, T), ids=3)
    g.feed[ids][:, 0] = 1
    g.feed[ids][1] = 0
    padding = g.op("Where", [g.op("Equal", [ids, g.const("pad_id", np.array(0, np.int64))]),
                             g.op("Constant", [], value=numpy_helper.from_array(np.float32(-np.inf))),
                             g.const("zero", np.float32(0.0))])       # -inf as torch writes it: a Constant node
    padding = g.op("Unsqueeze", [padding, g.const("mask_axes", np.array([1, 2], np.int64))])
    mask = g.op("Add", [padding, g.input("mask", (N, 1, T, T))])
    q = g.matmul(t, E, 16, name="q_proj")
    k = g.matmul(t, E, 16, name="k_proj")
    v = g.matmul(t, E, 16, name="v_proj")
    y, = _attention(g, [q, k, v, mask], q_num_heads=2, kv_num_heads=2)
    return g.build(_head(g, y, 16))


def _constant_masks() -> ZooModel:
    """Two nodes: a constant bool mask with a fully masked query row; a constant float mask (a relative-position bias) with causal masking and softcap 3, qk_matmul_output mode 1 (after the softcap; mode 2's masked scores are -inf in onnx.reference, float's lowest in onnxruntime, MASKED here)."""
    g = Builder("attention_constant_masks", opset=23)
    t = _tokens(g)
    allowed = np.array([[1, 1, 0, 1], [0, 0, 0, 0], [1, 0, 1, 0], [1, 1, 1, 1]], bool)
    mask = g.const("allowed", allowed)
    q = g.matmul(t, E, 16, name="q_proj")
    k = g.matmul(t, E, 16, name="k_proj")
    v = g.matmul(t, E, 16, name="v_proj")
    y, = _attention(g, [q, k, v, mask], q_num_heads=2, kv_num_heads=2)
    relative = g.const("relative_bias", -0.25 * np.abs(np.subtract.outer(np.arange(T), np.arange(T))))
    y2, scores = _attention(g, [y, y, y, relative], (0, 3), q_num_heads=4, kv_num_heads=4, is_causal=1,
                            softcap=3.0, qk_matmul_output_mode=1)
    return g.build([_head(g, y2, 16), scores])


def _nonpad_kv_seqlen() -> ZooModel:
    """Opset 24's nonpad_kv_seqlen (a per-sample count of valid keys) with causal masking and opset 25's sliding
    window (2 keys back): the frontier sits at nonpad - q_len + i per sample (2 queries, 4 keys)."""
    g = Builder("attention_nonpad_kv_seqlen", opset=25)
    t = _tokens(g)
    lengths = g.input("lengths", (N,), ids=T + 1)
    g.feed[lengths] = np.arange(len(g.feed[lengths])) % (T - 1) + 2
    queries = g.op("Slice", [t, g.const("start", np.array([0], np.int64)), g.const("end", np.array([2], np.int64)),
                             g.const("axis", np.array([1], np.int64))])
    q = g.matmul(queries, E, 16, name="q_proj")
    k = g.matmul(t, E, 16, name="k_proj")
    v = g.matmul(t, E, 16, name="v_proj")
    y, = _attention(g, [q, k, v, "", "", "", lengths], q_num_heads=2, kv_num_heads=2, is_causal=1,
                    left_window_size=2)
    return g.build(_head(g, y, 16))


def _rotary(name: str, interleaved: int, partial: int = 0, fed_positions: bool = False) -> ZooModel:
    """RotaryEmbedding on 3-D projections (2 heads of 8), position ids expanded to the batch from shapes as torch
    writes them (or fed as an int64 input), then the product of the turned q and k (the scores) pooled."""
    g = Builder(name, opset=23)
    t = _tokens(g)
    q = g.matmul(t, E, 16, name="q_proj")
    half = (partial or 8) // 2
    angles = np.arange(8)[:, None] / 10000 ** (np.arange(half) / half)[None]
    if fed_positions:
        positions = g.input("positions", (N, T), ids=8)
    else:
        sizes = g.op("Concat", [g.op("Shape", [q], end=1), g.const("tokens_n", np.array([T], np.int64))], axis=0)
        positions = g.op("Expand", [g.const("order", np.array([[3, 0, 1, 2]], np.int64)), sizes])
    turned = g.op("RotaryEmbedding", [q, g.const("cos_cache", np.cos(angles)), g.const("sin_cache", np.sin(angles)),
                                      positions], num_heads=2, interleaved=interleaved, rotary_embedding_dim=partial)
    return g.build(_head(g, turned, 16))


def attention_models() -> list[ZooModel]:
    return [
        _self_attention_3d("attention_3d"),
        _self_attention_3d("attention_gqa", q_heads=4, kv_heads=2, size=4),
        _self_attention_3d("attention_mqa_causal", q_heads=4, kv_heads=1, size=4, is_causal=1),
        _self_attention_3d("attention_sliding_window", opset=25, left_window_size=1, right_window_size=2),
        _causal_past_4d(),
        _id_padding_mask("attention_id_padding_mask"),
        _float_mask_input(),
        _constant_masks(),
        _nonpad_kv_seqlen(),
        _rotary("rotary_halves", 0),
        _rotary("rotary_interleaved_partial", 1, partial=4),
        _rotary("rotary_fed_positions", 0, fed_positions=True),
    ]

