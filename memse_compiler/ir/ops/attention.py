"""ONNX Attention (opset 23 on), parsed as the ops of its definition. torch's dynamo exporter writes
`F.scaled_dot_product_attention`, hence `nn.MultiheadAttention` and the Transformer layers, as one Attention node
from opset 23 on. On a chip it is digital work between crossbar layers, so it expands into the registry's ops:

* 3-D inputs (batch, sequence, heads x size) split into heads: Reshape [0, 0, H, -1], Transpose (0, 2, 1, 3);
* `past_key` / `past_value` concatenated in front of K / V (Concat on the sequence axis); the present key and
  value outputs are those concatenations;
* grouped-query attention: each K / V head repeated for its group of query heads (Gather on the head axis);
* scores Q K^T (the MatMul of two signals) times `scale` (default 1/sqrt(head size)); `softcap` c > 0 as
  c tanh(s / c);
* the attention bias added, Softmax on the last axis, the product with V, and for 3-D inputs the heads merged
  back (Transpose, Reshape [0, 0, -1]).

The bias: the causal mask (bottom-right aligned: query i attends key j iff j <= i + offset, the offset being the
past length), the sliding window (opset 25) and a constant `attn_mask` (bool: True attends; float: added) fold into
one constant, -inf where masked (the frontend writes it as MASKED). A mask fed at run time and `nonpad_kv_seqlen`
(opset 24: a per-sample count of valid keys; the causal frontier then sits at nonpad - q_len) are exact signals,
computed from the data inputs, so they become exact ops (ir/ops/exact.py), combined with the constant part. A query
row whose keys are all masked gives zeros (the operator's errata), not a uniform row: the Softmax output is
multiplied by a 0/1 row guard, a constant, or an exact signal when a mask comes at run time. The optional
`qk_matmul_output` is the scores after the scale (mode 0), the softcap (1), the bias (2) or the guarded Softmax
(3). Refused in one line: a `softmax_precision` below float32 (the analysis computes the Softmax in float64, the
executor in float32), unknown sequence or head sizes where the masks or the head split need them.
"""
from __future__ import annotations

import numpy as np
import onnx

from memse_compiler.ir.ops.base import MASKED, ExpansionWriter, OpRule, ParseContext, register

Q, K, V, MASK, PAST_K, PAST_V, NONPAD = range(7)
PRECISE_SOFTMAX = (0, onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE)


def _size(ctx: ParseContext, i: int, axis: int, what: str) -> int:
    shape = ctx.known_shape(i)
    size = shape[axis] if shape is not None and -len(shape) <= axis < len(shape) else None
    if not isinstance(size, (int, np.integer)) or size <= 0:
        raise ctx.fail(f"the {what} must be known from the model's shapes (export with static sizes)")
    return int(size)


def _input(ctx: ParseContext, i: int) -> str | None:
    return ctx.node.input[i] if i < len(ctx.node.input) and ctx.node.input[i] else None


@register
class AttentionRule(OpRule):
    op_types = ("Attention",)
    expand_at_load = True       # onnxruntime's kernel refuses some forms the definition allows (load_expansion.py)

    def expand(self, ctx):
        w = ExpansionWriter(ctx)
        rank = len(ctx.shape(Q))
        if rank not in (3, 4) or len(ctx.shape(K)) != rank or len(ctx.shape(V)) != rank:
            raise ctx.fail("Q, K and V must all be 3-D or all 4-D")
        precision = int(ctx.attr("softmax_precision", 0))
        if precision not in PRECISE_SOFTMAX:
            raise ctx.fail(f"softmax_precision {onnx.TensorProto.DataType.Name(precision)} is not supported "
                           f"(float or double)")
        if (_input(ctx, PAST_K) is None) != (_input(ctx, PAST_V) is None):
            raise ctx.fail("past_key and past_value must be given together")
        if _input(ctx, NONPAD) and _input(ctx, PAST_K):
            raise ctx.fail("nonpad_kv_seqlen cannot be combined with past_key / past_value")
        q, k, v, heads_q, heads_kv, head_size = self._heads(ctx, w, rank)
        past = _size(ctx, PAST_K, 2, "past sequence length (axis 2 of past_key)") if _input(ctx, PAST_K) else 0
        if past:
            k = w.add("Concat", [ctx.node.input[PAST_K], k], "present_key", axis=2)
            v = w.add("Concat", [ctx.node.input[PAST_V], v], "present_value", axis=2)
        for i, tensor in ((1, k), (2, v)):
            if i < len(ctx.node.output) and ctx.node.output[i]:
                w.add("Identity", [tensor], f"output{i}", out=ctx.node.output[i])
        if heads_q != heads_kv:
            if heads_q % heads_kv:
                raise ctx.fail(f"{heads_q} query heads do not divide into {heads_kv} key/value heads")
            repeat = w.const("head_of_group", np.repeat(np.arange(heads_kv, dtype=np.int64), heads_q // heads_kv))
            k = w.add("Gather", [k, repeat], "key_groups", axis=1)
            v = w.add("Gather", [v, repeat], "value_groups", axis=1)
        scale = ctx.attr("scale", None)
        scale = 1.0 / np.sqrt(head_size) if scale is None else float(scale)
        scores = w.add("MatMul", [q, w.add("Transpose", [k], "key_t", perm=[0, 1, 3, 2])], "qk")
        # the scores after the scale, the softcap, the bias, the Softmax: qk_matmul_output_mode 0-3
        stages = [w.add("Mul", [scores, w.const("scale", scale)], "scaled")]
        softcap = float(ctx.attr("softcap", 0.0))
        if softcap > 0:
            capped = w.add("Tanh", [w.add("Mul", [stages[0], w.const("inv_softcap", 1.0 / softcap)], "over_cap")],
                           "tanh_cap")
            stages.append(w.add("Mul", [capped, w.const("softcap", softcap)], "capped"))
        else:
            stages.append(stages[0])
        masked = any((int(ctx.attr("is_causal", 0)), _input(ctx, MASK), _input(ctx, NONPAD),
                      int(ctx.attr("left_window_size", -1)) >= 0, int(ctx.attr("right_window_size", -1)) >= 0))
        bias, guard = None, None
        if masked:          # the masks need the sequence lengths; plain attention runs at any length
            q_len = _size(ctx, Q, 2 if rank == 4 else 1, "query sequence length")
            kv_len = past + _size(ctx, K, 2 if rank == 4 else 1, "key sequence length")
            bias, guard = self._bias(ctx, w, q_len, kv_len, past)
        stages.append(w.add("Add", [stages[-1], bias], "biased") if bias else stages[-1])
        probs = w.add("Softmax", [stages[-1]], "softmax", axis=-1)
        stages.append(w.add("Mul", [probs, guard], "guarded") if guard else probs)
        mode = int(ctx.attr("qk_matmul_output_mode", 0))
        if len(ctx.node.output) > 3 and ctx.node.output[3]:
            if mode not in range(4):
                raise ctx.fail(f"qk_matmul_output_mode {mode} is not one of 0-3")
            w.add("Identity", [stages[mode]], "output3", out=ctx.node.output[3])
        y = ctx.node.output[0]
        if rank == 4:
            w.add("MatMul", [stages[-1], v], "y", out=y)
        else:
            heads = w.add("Transpose", [w.add("MatMul", [stages[-1], v], "y_heads")], "y_tokens", perm=[0, 2, 1, 3])
            w.add("Reshape", [heads, w.const("merge_heads", np.array([0, 0, -1], np.int64))], "y", out=y)
        return w.nodes

    def _heads(self, ctx: ParseContext, w: ExpansionWriter, rank: int):
        """Q, K, V as (batch, heads, sequence, size), the head counts and the query head size."""
        names = [ctx.node.input[i] for i in (Q, K, V)]
        if rank == 4:
            if ctx.attr("q_num_heads", None) is not None or ctx.attr("kv_num_heads", None) is not None:
                raise ctx.fail("q_num_heads / kv_num_heads are for 3-D inputs only")
            heads_q = _size(ctx, Q, 1, "number of query heads (axis 1 of Q)")
            heads_kv = _size(ctx, K, 1, "number of key/value heads (axis 1 of K)")
            return (*names, heads_q, heads_kv, _size(ctx, Q, 3, "query head size"))
        heads_q, heads_kv = ctx.attr("q_num_heads", None), ctx.attr("kv_num_heads", None)
        if heads_q is None or heads_kv is None:
            raise ctx.fail("3-D inputs need the q_num_heads and kv_num_heads attributes")
        hidden = _size(ctx, Q, 2, "query hidden size")
        if hidden % int(heads_q):
            raise ctx.fail(f"the query hidden size {hidden} does not split into {heads_q} heads")
        split = []
        for label, name, heads in zip("qkv", names, (heads_q, heads_kv, heads_kv)):
            shape = w.const(f"{label}_heads", np.array([0, 0, int(heads), -1], np.int64))
            split.append(w.add("Transpose", [w.add("Reshape", [name, shape], f"{label}_split")], f"{label}_4d",
                               perm=[0, 2, 1, 3]))
        return (*split, int(heads_q), int(heads_kv), hidden // int(heads_q))

    def _bias(self, ctx: ParseContext, w: ExpansionWriter, q_len: int, kv_len: int, past: int
              ) -> tuple[str | None, str | None]:
        """The attention bias to add to the scores and the 0/1 guard of fully masked query rows (None: none)."""
        rows, cols = np.arange(q_len)[:, None], np.arange(kv_len)[None, :]
        causal = bool(ctx.attr("is_causal", 0))
        left, right = int(ctx.attr("left_window_size", -1)), int(ctx.attr("right_window_size", -1))
        nonpad = _input(ctx, NONPAD)
        blocked = np.zeros((q_len, kv_len), bool)            # the constant part: (q, kv), or the mask's shape
        additive = np.zeros((q_len, kv_len))
        if nonpad is None:
            frontier = rows + past - cols                    # >= 0 where key j is at or before query i
            blocked |= (causal & (frontier < 0)) | ((left >= 0) & (frontier > left)) | \
                ((right >= 0) & (-frontier > right))
        mask = _input(ctx, MASK)
        mask_value = ctx.const(MASK) if mask else None
        mask_is_bool = False
        if mask:
            mask_is_bool = (np.asarray(mask_value).dtype == bool if mask_value is not None
                            else ctx.elem_types.get(mask) == onnx.TensorProto.BOOL)
            width = _size(ctx, MASK, -1, "attention mask's last axis")
            if width > kv_len:
                raise ctx.fail(f"the attention mask has {width} keys for {kv_len}")
        if mask_value is not None:
            mask_value = np.asarray(mask_value)
            pad = [(0, 0)] * (mask_value.ndim - 1) + [(0, kv_len - mask_value.shape[-1])]
            if mask_is_bool:
                blocked = blocked | ~np.pad(mask_value.astype(bool), pad, constant_values=False)
            else:
                padded = np.pad(mask_value.astype(np.float64), pad, constant_values=-np.inf)
                blocked = blocked | np.isneginf(padded)
                additive = additive + np.where(np.isneginf(padded), 0.0, padded)
        constant = np.where(blocked, -np.inf, additive)
        if nonpad is None and (mask is None or mask_value is not None):
            bias = w.const("bias", constant) if (blocked.any() or additive.any()) else None
            rows_blocked = blocked.all(axis=-1, keepdims=True)
            guard = w.const("row_guard", (~rows_blocked).astype(np.float64)) if rows_blocked.any() else None
            return bias, guard
        return self._runtime_bias(ctx, w, mask if mask_value is None else None, mask_is_bool, nonpad, constant,
                                  rows - cols, q_len, kv_len, causal, left, right)

    def _runtime_bias(self, ctx, w: ExpansionWriter, mask, mask_is_bool, nonpad, constant, offsets, q_len, kv_len,
                      causal, left, right):
        """The bias and row guard as exact ops on a run-time mask and / or `nonpad_kv_seqlen`."""
        blocked_parts = [w.const("blocked", np.isneginf(constant))]
        finite = np.where(np.isneginf(constant), 0.0, constant)
        added = [w.const("added", finite)] if finite.any() else []
        if nonpad is not None:
            per_sample = w.add("Unsqueeze", [nonpad, w.const("sample_axes", np.array([1, 2, 3], np.int64))],
                               "nonpad_4d")
            keys = w.const("key_index", np.arange(kv_len, dtype=np.int64).reshape(1, 1, 1, kv_len))
            blocked_parts.append(w.add("GreaterOrEqual", [keys, per_sample], "padding"))
            # the frontier i + (nonpad - q_len) - j, per sample: where the causal and window bounds sit
            shift = w.add("Sub", [per_sample, w.const("q_len", np.array(q_len, np.int64))], "frontier_shift")
            frontier = w.add("Add", [w.const("query_minus_key", offsets.astype(np.int64)), shift], "frontier")
            bounds = [("Less", 0, causal, "causal"), ("Greater", left, left >= 0, "left"),
                      ("Less", -right, right >= 0, "right")]
            for op, bound, used, label in bounds:
                if used:
                    blocked_parts.append(w.add(op, [frontier, w.const(f"{label}_bound", np.array(bound, np.int64))],
                                               label))
        if mask is not None:
            width = _size(ctx, MASK, -1, "attention mask's last axis")
            rank = len(ctx.shape(MASK))
            padded = mask
            if width < kv_len:       # keys past the mask's end are masked
                pads = w.const("mask_pads", np.array([0] * (2 * rank - 1) + [kv_len - width], np.int64))
                fill = np.array(False) if mask_is_bool else np.array(-np.inf)
                padded = w.add("Pad", [mask, pads, w.const("mask_fill", fill)], "mask_padded" if mask_is_bool else None)
            if mask_is_bool:
                blocked_parts.append(w.add("Not", [padded], "mask_blocked"))
            else:       # -inf, or the frontend's MASKED for a -inf constant the mask was computed with
                masked = w.add("LessOrEqual", [padded, w.const("masked_level", np.array(MASKED))], "mask_masked")
                blocked_parts.append(masked)
                added.append(w.add("Where", [masked, w.const("mask_zero", np.array(0.0)), padded], "mask_finite"))
        blocked = blocked_parts[0]
        for i, part in enumerate(blocked_parts[1:]):
            blocked = w.add("Or", [blocked, part], f"blocked_{i}")
        total = w.add("Where", [blocked, w.const("masked", np.array(-np.inf)), w.const("attended", np.array(0.0))],
                      "bias_blocked")
        for i, part in enumerate(added):
            total = w.add("Add", [total, part], f"bias_{i}")
        as_float = w.add("Cast", [blocked], "blocked_float", to=onnx.TensorProto.FLOAT)
        all_blocked = w.add("ReduceMin", [as_float, w.const("last_axis", np.array([-1], np.int64))], "row_blocked",
                            keepdims=1)
        guard = w.add("Sub", [w.const("one", np.array(1.0)), all_blocked], "row_guard")
        return total, guard
