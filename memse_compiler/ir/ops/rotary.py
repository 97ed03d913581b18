"""RotaryEmbedding (opset 23; torch.onnx.ops.rotary_embedding): rotary position embeddings as the ops of their
definition. Each pair (x1, x2) of a head's first `rotary_embedding_dim` features (the two halves, or neighbours when
`interleaved`) turns by its position's angle:

    x1' = x1 cos - x2 sin,   x2' = x2 cos + x1 sin,   the other features unchanged,

cos and sin being the caches' rows at the token's position (`position_ids`, or caches already per token). The
angles carry no noise (constants, or exact signals of the data inputs), so each output element is a fixed linear
combination of two distinct input elements: exact moments for independent errors. At load (before onnxruntime
probes the model), with `position_ids` that torch computes from shapes (an Expand of a Range to the batch)
evaluated first (load_expansion.probed_values): their cos and sin rows become constants broadcast over the batch.
3-D inputs (batch, sequence, heads x size) are split into heads (`num_heads`) and merged back; 4-D ones are
(batch, heads, sequence, size).
"""
from __future__ import annotations

import numpy as np

from memse_compiler.ir.ops.base import ExpansionWriter, OpRule, ParseContext, register

X, COS, SIN, POSITIONS = range(4)


class _Writer(ExpansionWriter):
    def ints(self, label: str, values) -> str:
        return self.const(label, np.asarray(values, np.int64))

    def features(self, x: str, start: int, stop: int, label: str, step: int = 1) -> str:
        """x[..., start:stop:step]"""
        return self.add("Slice", [x, self.ints(f"{label}_start", [start]), self.ints(f"{label}_stop", [stop]),
                                  self.ints(f"{label}_axis", [-1]), self.ints(f"{label}_step", [step])], label)


def _angles(ctx: ParseContext, w: _Writer, which: int, head_axis: int) -> str:
    """The cos or sin rows of each token, (batch or 1, sequence, 1 (heads), rotary / 2) in the input's layout."""
    name = "cos" if which == COS else "sin"
    cache = ctx.const(which)
    has_positions = len(ctx.node.input) > POSITIONS and ctx.node.input[POSITIONS]
    positions = ctx.const(POSITIONS) if has_positions else None
    if cache is not None and (positions is not None or not has_positions):
        rows = np.asarray(cache, np.float64)
        if positions is not None:
            if ctx.node.input[POSITIONS] not in ctx.batch_axes and np.ndim(positions) and \
                    np.shape(positions)[0] != 1 and ctx.shape(X)[0] is None:
                raise ctx.fail("the position ids must be the same for every sample or fed with the batch")
            rows = rows[np.asarray(positions, np.int64)]
        return ctx.new_const(f"{name}_rows", np.expand_dims(rows, head_axis))
    table = ctx.node.input[which]
    if has_positions:
        table = w.add("Gather", [table, ctx.node.input[POSITIONS]], f"{name}_gathered", axis=0)
    return w.add("Unsqueeze", [table, w.ints(f"{name}_head_axis", [head_axis])], f"{name}_rows")


@register
class RotaryEmbeddingRule(OpRule):
    op_types = ("RotaryEmbedding",)
    expand_at_load = True
    probed_inputs = (POSITIONS,)

    def expand(self, ctx):
        shape = ctx.shapes.get(ctx.node.input[X])
        if shape is None or len(shape) not in (3, 4) or shape[-1] is None:
            raise ctx.fail("the input must be (batch, heads, sequence, size) or (batch, sequence, hidden) with "
                           "known sizes")
        w = _Writer(ctx)
        x = ctx.node.input[X]
        if len(shape) == 3:
            heads = int(ctx.attr("num_heads", 0))
            if heads <= 0 or shape[2] % heads:
                raise ctx.fail(f"num_heads {heads} does not split the hidden size {shape[2]}")
            x = w.add("Reshape", [x, w.ints("heads_shape", [0, 0, heads, shape[2] // heads])], "heads")
            size, head_axis = shape[2] // heads, 2
        else:
            size, head_axis = int(shape[3]), 1
        rotary = int(ctx.attr("rotary_embedding_dim", 0)) or size
        if rotary > size or rotary % 2:
            raise ctx.fail(f"rotary_embedding_dim {rotary} must be even and at most the head size {size}")
        half = rotary // 2
        for which in (COS, SIN):
            cache = ctx.const(which) if ctx.const(which) is not None else None
            width = np.shape(cache)[-1] if cache is not None else (ctx.shapes.get(ctx.node.input[which]) or (None,))[-1]
            if width is not None and width != half:
                raise ctx.fail(f"the caches hold {width} angles per position, not rotary_embedding_dim / 2 = {half}")
        cos, sin = _angles(ctx, w, COS, head_axis), _angles(ctx, w, SIN, head_axis)
        interleaved = bool(int(ctx.attr("interleaved", 0)))
        if interleaved:
            first, second = w.features(x, 0, rotary, "even", 2), w.features(x, 1, rotary, "odd", 2)
        else:
            first, second = w.features(x, 0, half, "first_half"), w.features(x, half, rotary, "second_half")
        turned_first = w.add("Sub", [w.add("Mul", [first, cos], "first_cos"), w.add("Mul", [second, sin], "second_sin")],
                             "turned_first")
        turned_second = w.add("Add", [w.add("Mul", [second, cos], "second_cos"), w.add("Mul", [first, sin], "first_sin")],
                              "turned_second")
        if interleaved:     # back to neighbours: (..., half, 2) -> (..., rotary)
            pairs = w.add("Concat", [w.add("Unsqueeze", [t, w.ints(f"{t.rsplit('/', 1)[1]}_axis", [-1])], f"{label}_pair")
                                     for t, label in ((turned_first, "first"), (turned_second, "second"))],
                          "pairs", axis=-1)
            turned = w.add("Reshape", [pairs, w.ints("pairs_shape", [0, 0, 0, rotary])], "turned")
        else:
            turned = w.add("Concat", [turned_first, turned_second], "turned", axis=-1)
        last = len(shape) == 4
        if rotary < size:
            turned = w.add("Concat", [turned, w.features(x, rotary, size, "kept")], None if last else "joined",
                           axis=-1)
        elif last:
            turned = w.add("Identity", [turned], None)
        if not last:
            w.add("Reshape", [turned, w.ints("merged_shape", [0, 0, -1])], None)
        return w.nodes
