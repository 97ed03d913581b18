"""onnxruntime's fused float operators, expanded at load into the standard ONNX ops they fuse.

A model saved by onnxruntime after its graph optimisations (`SessionOptions.optimized_model_filepath` at
ORT_ENABLE_EXTENDED, or onnxruntime.transformers' optimizer) holds fused operators of its contrib domain
com.microsoft: FusedConv and FusedGemm (a Conv or Gemm and its activation, FusedConv also an Add of a `Z` input),
FusedMatMul (transposes and a scale around a MatMul), SkipLayerNormalization (a residual Add, a bias and a
LayerNormalization), BiasGelu, Gelu, FastGelu and QuickGelu; from onnxruntime.transformers, BERT's
EmbedLayerNormalization and the self-Attention of BERT and GPT-2. Each is written back as the ops it fuses, by its
definition in onnxruntime's contrib operator docs (checked against its CPU kernels, which decide where the docs are
loose); the rules of those ops then analyse it, and the Monte-Carlo executor runs them. GELU is the ONNX Gelu op from opset 20, before that the chain torch exports (the frontend
folds it into one function of its input). The layouts of ORT_ENABLE_ALL (com.microsoft.nchwc: blocked channels,
specific to the machine that wrote them) are refused at load (memse_compiler/load_expansion.py).
"""
from __future__ import annotations

import math

import numpy as np
import onnx

from memse_compiler.ir.ops.base import ExpansionWriter, OpRule, ParseContext, register
from memse_compiler.ir.ops.qoperator import CONTRIB, CONV_ATTRS, _attrs, _given


class _ContribRule(OpRule):
    expand_at_load = True       # before anything runs the model: the contrib ops have no ONNX shape inference
    domain = CONTRIB


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _only_first_output(ctx: ParseContext, keep: tuple[int, ...] = ()) -> None:
    """Refuse the optional outputs that this expansion does not write (other than those in `keep`)."""
    extra = [i for i, o in enumerate(ctx.node.output) if i and o and i not in keep]
    if extra:
        raise ctx.fail(f"output {extra[0]} ('{ctx.node.output[extra[0]]}') is not supported")


def _activation(w: ExpansionWriter, ctx: ParseContext, y: str, name: str, params: list[float]) -> str:
    """`name`(y) with onnxruntime's activation parameters (FusedConv's activation_params; FusedGemm's
    activation_alpha/beta), written to the node's output."""
    if name == "Relu" or name == "Tanh" or name == "Sigmoid":
        return w.add(name, [y])
    if name == "LeakyRelu":
        return w.add(name, [y], alpha=float(params[0]) if params else 0.01)
    if name == "HardSigmoid":
        alpha, beta = (list(params) + [0.2, 0.5][len(params):])[:2]
        return w.add(name, [y], alpha=float(alpha), beta=float(beta))
    if name == "Clip" and len(params) == 2:
        return w.add(name, [y, w.const("min", np.float32(params[0])), w.const("max", np.float32(params[1]))])
    raise ctx.fail(f"activation '{name}'{' without its min and max' if name == 'Clip' else ''} is not supported")


def _swap_last_two(w: ExpansionWriter, ctx: ParseContext, i: int, label: str) -> str:
    """Input i with its last two axes swapped (a 1-D input as it is, as onnxruntime's kernel does)."""
    rank = len(ctx.known_shape(i) or ())
    if rank < 2:
        if rank == 0:
            raise ctx.fail(f"the rank of input {i} ('{ctx.node.input[i]}') is unknown")
        return ctx.node.input[i]
    perm = list(range(rank - 2)) + [rank - 1, rank - 2]
    return w.add("Transpose", [ctx.node.input[i]], label, perm=perm)


def _gelu(w: ExpansionWriter, ctx: ParseContext, x: str, tanh: bool = False) -> str:
    """GELU of x, written to the node's output: ONNX Gelu from opset 20, else torch's export of it (exact erf:
    x * 0.5 * (1 + erf(x / sqrt 2)); tanh: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))))."""
    if ctx.opset >= 20:
        return w.add("Gelu", [x], approximate="tanh" if tanh else "none")
    half, one = w.const("half", np.float32(0.5)), w.const("one", np.float32(1.0))
    if tanh:
        cube = w.add("Mul", [w.add("Mul", [x, x], "x2"), x], "x3")
        inner = w.add("Add", [x, w.add("Mul", [cube, w.const("c", np.float32(0.044715))], "cx3")], "inner")
        core = w.add("Tanh", [w.add("Mul", [inner, w.const("k", np.float32(math.sqrt(2 / math.pi)))], "kx")], "tanh")
    else:
        core = w.add("Erf", [w.add("Div", [x, w.const("sqrt2", np.float32(math.sqrt(2.0)))], "scaled")], "erf")
    return w.add("Mul", [w.add("Mul", [x, half], "half_x"), w.add("Add", [core, one], "one_plus")])


@register
class FusedConvRule(_ContribRule):
    """FusedConv(X, W, B, Z): activation(Conv(X, W, B) + Z), activation_params as the activation's attributes."""
    op_types = ("FusedConv",)

    def expand(self, ctx):
        _only_first_output(ctx)
        w = ExpansionWriter(ctx)
        ins = [ctx.node.input[0], ctx.node.input[1]] + ([ctx.node.input[2]] if _given(ctx, 2) else [])
        y = w.add("Conv", ins, "conv", **_attrs(ctx, CONV_ATTRS))
        if _given(ctx, 3):
            y = w.add("Add", [y, ctx.node.input[3]], "sum")
        _activation(w, ctx, y, _text(ctx.attr("activation", "")), list(ctx.attr("activation_params", [])))
        return w.nodes


@register
class FusedGemmRule(_ContribRule):
    """FusedGemm(A, B, C): activation(Gemm(A, B, C)) with Gemm's alpha, beta, transA, transB; activation_alpha and
    activation_beta as the activation's parameters."""
    op_types = ("FusedGemm",)

    def expand(self, ctx):
        _only_first_output(ctx)
        w = ExpansionWriter(ctx)
        ins = [ctx.node.input[0], ctx.node.input[1]] + ([ctx.node.input[2]] if _given(ctx, 2) else [])
        y = w.add("Gemm", ins, "gemm", **_attrs(ctx, ("alpha", "beta", "transA", "transB")))
        params = [ctx.attr(a) for a in ("activation_alpha", "activation_beta")]
        _activation(w, ctx, y, _text(ctx.attr("activation", "")), [p for p in params if p is not None])
        return w.nodes


@register
class FusedMatMulRule(_ContribRule):
    """FusedMatMul(A, B) = alpha * op(A) @ op(B), op a swap of the last two axes where transA / transB say so
    (transBatchA / transBatchB, which move the batch axes, are refused). The operands' ranks come from onnxruntime
    (ONNX's shape inference does not know the contrib ops upstream)."""
    op_types = ("FusedMatMul",)
    probed_inputs = (0, 1)

    def expand(self, ctx):
        _only_first_output(ctx)
        for flag in ("transBatchA", "transBatchB"):
            if int(ctx.attr(flag, 0)):
                raise ctx.fail(f"{flag}=1 is not supported")
        w = ExpansionWriter(ctx)
        a = _swap_last_two(w, ctx, 0, "a_t") if int(ctx.attr("transA", 0)) else ctx.node.input[0]
        b = _swap_last_two(w, ctx, 1, "b_t") if int(ctx.attr("transB", 0)) else ctx.node.input[1]
        alpha = float(ctx.attr("alpha", 1.0))
        if alpha == 1.0:
            w.add("MatMul", [a, b])
        else:
            w.add("Mul", [w.add("MatMul", [a, b], "matmul"), w.const("alpha", np.float32(alpha))])
        return w.nodes


@register
class SkipLayerNormalizationRule(_ContribRule):
    """SkipLayerNormalization(input, skip, gamma, beta, bias): s = input + (skip + bias), LayerNormalization(s) over
    the last axis with `epsilon`; its optional fourth output is s (the mean and inverse std outputs are refused).
    The bias goes on the skip first: the skip is the output of a Linear whose bias onnxruntime moved here, and
    that Add of a constant is what folds it back into the crossbar (passes/fold_bias.py), as in the model before."""
    op_types = ("SkipLayerNormalization",)

    def expand(self, ctx):
        _only_first_output(ctx, keep=(3,))
        w = ExpansionWriter(ctx)
        outs = ctx.node.output
        skip = w.add("Add", [ctx.node.input[1], ctx.node.input[4]], "biased_skip") if _given(ctx, 4) else \
            ctx.node.input[1]
        keep_sum = len(outs) > 3 and bool(outs[3])
        total = w.add("Add", [ctx.node.input[0], skip], "skip_sum", out=outs[3] if keep_sum else None)
        ins = [total, ctx.node.input[2]] + ([ctx.node.input[3]] if _given(ctx, 3) else [])
        w.add("LayerNormalization", ins, axis=-1, epsilon=float(ctx.attr("epsilon", 1e-12)))
        return w.nodes


@register
class GeluRules(_ContribRule):
    """Gelu(X) and BiasGelu(A, B) = Gelu(A + B) (exact, erf); FastGelu(X, bias) = the tanh approximation of
    Gelu(X + bias); QuickGelu(X) = X * Sigmoid(alpha X)."""
    op_types = ("Gelu", "BiasGelu", "FastGelu", "QuickGelu")

    def expand(self, ctx):
        _only_first_output(ctx)
        w = ExpansionWriter(ctx)
        op, x = ctx.node.op_type, ctx.node.input[0]
        if op == "QuickGelu":
            alpha = float(ctx.attr("alpha", 1.702))
            w.add("Mul", [x, w.add("Sigmoid", [w.add("Mul", [x, w.const("alpha", np.float32(alpha))], "ax")],
                                   "sigmoid")])
            return w.nodes
        if _given(ctx, 1):
            x = w.add("Add", [x, ctx.node.input[1]], "biased")
        _gelu(w, ctx, x, tanh=op == "FastGelu")
        return w.nodes


@register
class ContribAttentionRule(_ContribRule):
    """com.microsoft Attention (onnxruntime.transformers' fusion of a BERT/GPT-2 self-attention): the merged Q/K/V
    projection input @ weights + bias (one crossbar, as the model holds it), split along its last axis by
    qkv_hidden_sizes (thirds by default), then ONNX Attention's definition on the three (ir/ops/attention.py, the
    same expansion): num_heads heads, `scale` (default 1/sqrt(head size)), `unidirectional` as is_causal. The mask:
    a raw (batch, keys) 0/1 mask or (batch,) valid lengths (right padding), a data input or computed from them, so
    exact; masked keys get -inf where onnxruntime adds mask_filter_value (-10000): the same weights unless a query's
    keys are all masked. Refused in one line: past / present state, attention_bias, rotary embedding, 3-D/4-D
    masks and left-padding index masks."""
    op_types = ("Attention",)
    probed_inputs = (0,)          # the input's shape (sequence length, hidden size) from onnxruntime

    def expand(self, ctx):
        from memse_compiler.ir.ops.attention import AttentionRule
        for i, what in ((4, "past state"), (5, "attention_bias"), (6, "past_sequence_length")):
            if _given(ctx, i):
                raise ctx.fail(f"the {what} input is not supported")
        _only_first_output(ctx)
        for flag in ("do_rotary", "past_present_share_buffer"):
            if int(ctx.attr(flag, 0)):
                raise ctx.fail(f"{flag}=1 is not supported")
        weights = ctx.const(1)
        if weights is None or (_given(ctx, 2) and ctx.const(2) is None):
            raise ctx.fail("the weights and bias must be constants")
        shape = ctx.shapes.get(ctx.node.input[0])
        if shape is None or len(shape) != 3 or shape[1] is None:
            raise ctx.fail("the input must be 3-D (batch, sequence, hidden) with a known sequence length")
        sizes = [int(s) for s in ctx.attr("qkv_hidden_sizes", [])] or [weights.shape[1] // 3] * 3
        heads = int(ctx.attr("num_heads", 0))
        if sum(sizes) != weights.shape[1] or sizes[0] != sizes[1] or heads <= 0 or any(s % heads for s in sizes):
            raise ctx.fail(f"qkv_hidden_sizes {sizes} do not split the weights' {weights.shape[1]} columns into "
                           f"{heads} heads")
        w = ExpansionWriter(ctx)
        qkv = w.add("MatMul", [ctx.node.input[0], ctx.node.input[1]], "qkv_matmul")
        if _given(ctx, 2):
            qkv = w.add("Add", [qkv, ctx.node.input[2]], "qkv")
        ends = np.cumsum([0] + sizes)
        parts = [w.add("Slice", [qkv, w.const(f"{label}_start", np.array([ends[i]], np.int64)),
                                 w.const(f"{label}_end", np.array([ends[i + 1]], np.int64)),
                                 w.const(f"{label}_axis", np.array([-1], np.int64))], label)
                 for i, label in enumerate("qkv")]
        batch, seq = shape[0], int(shape[1])
        shapes = dict(ctx.shapes, **{p: (batch, seq, s) for p, s in zip(parts, sizes)})
        types = dict(ctx.elem_types)
        if _given(ctx, 3):
            parts.append(self._mask(ctx, w, seq, shapes, types))
        attrs = {"q_num_heads": heads, "kv_num_heads": heads, "is_causal": int(ctx.attr("unidirectional", 0))}
        if ctx.attr("scale") is not None:
            attrs["scale"] = float(ctx.attr("scale"))
        node = onnx.helper.make_node("Attention", parts, [ctx.node.output[0]], **attrs)
        inner = ParseContext(node=node, node_name=f"{ctx.node_name}/attention", consts=ctx.consts, shapes=shapes,
                             opset=ctx.opset, elem_types=types, batch_axes=ctx.batch_axes)
        return w.nodes + AttentionRule().expand(inner)

    @staticmethod
    def _mask(ctx: ParseContext, w: ExpansionWriter, keys: int, shapes: dict, types: dict) -> str:
        """The mask as ONNX Attention's boolean attn_mask (batch, 1, 1, keys): True where a key is attended."""
        mask = ctx.node.input[3]
        rank = len(ctx.known_shape(3) or ())
        if rank == 2:
            attended = w.add("Cast", [mask], "mask_bool", to=onnx.TensorProto.BOOL)
        elif rank == 1:          # valid lengths, right padding; (2 x batch) left-padding forms have another meaning
            if ctx.shapes.get(mask, (None,))[0] is not None and ctx.const(3) is None:
                raise ctx.fail("a mask_index of fixed length is ambiguous (lengths, or end and start positions)")
            lengths = w.add("Unsqueeze", [mask, w.const("length_axis", np.array([1], np.int64))], "lengths")
            key_index = w.const("key_index", np.arange(keys, dtype=np.int64)[None, :])
            attended = w.add("Less", [key_index, w.add("Cast", [lengths], "lengths64", to=onnx.TensorProto.INT64)],
                             "mask_bool")
        else:
            raise ctx.fail(f"a {rank}-D mask_index is not supported (raw (batch, keys) masks and (batch,) lengths are)")
        out = w.add("Unsqueeze", [attended, w.const("mask_axes", np.array([1, 2], np.int64))], "mask_4d")
        shapes[out], types[out] = (None, 1, 1, keys), onnx.TensorProto.BOOL
        return out


@register
class EmbedLayerNormalizationRule(_ContribRule):
    """EmbedLayerNormalization (onnxruntime.transformers' fusion of BERT's embeddings): word (+ position + segment)
    embedding lookups of the ids, LayerNormalization over the last axis; mask_index, per sample the number of ones
    in the mask (as onnxruntime's kernel counts, its doc says the first 0's position), the valid lengths the
    Attention ops after it read (right padding). Positions are 0..S-1 unless
    position_ids are given. The ids are exact signals of the data inputs, so all of it is exact digital work."""
    op_types = ("EmbedLayerNormalization",)

    def expand(self, ctx):
        _only_first_output(ctx, keep=(1,))
        w = ExpansionWriter(ctx)
        ids = ctx.node.input[0]
        total = w.add("Gather", [ctx.node.input[2], ids], "words", axis=0)
        if _given(ctx, 8):
            positions = w.add("Gather", [ctx.node.input[3], ctx.node.input[8]], "positions", axis=0)
        else:
            shape, table = ctx.shapes.get(ids), ctx.const(3)
            if shape is None or len(shape) != 2 or shape[1] is None or table is None:
                raise ctx.fail("the positions need a known sequence length and a constant position table")
            positions = w.const("positions", np.asarray(table)[: int(shape[1])])
        total = w.add("Add", [total, positions], "with_positions")
        if _given(ctx, 1) and _given(ctx, 4):
            total = w.add("Add", [total, w.add("Gather", [ctx.node.input[4], ctx.node.input[1]], "segments", axis=0)],
                          "with_segments")
        w.add("LayerNormalization", [total, ctx.node.input[5], ctx.node.input[6]], axis=-1,
              epsilon=float(ctx.attr("epsilon", 1e-12)))
        if len(ctx.node.output) > 1 and ctx.node.output[1]:
            if not _given(ctx, 7):
                raise ctx.fail("mask_index without a mask input is not supported")
            # the number of ones, as onnxruntime's kernel counts them (a mask [1, 1, 0, 1, 1, 0...] gives 4)
            mask = w.add("Cast", [ctx.node.input[7]], "mask64", to=onnx.TensorProto.INT64)
            axes = w.const("axes", np.array([1], np.int64))
            count = (w.add("ReduceSum", [mask, axes], "count", keepdims=0) if ctx.opset >= 13 else
                     w.add("ReduceSum", [mask], "count", axes=[1], keepdims=0))
            w.add("Cast", [count], "mask_index", out=ctx.node.output[1], to=onnx.TensorProto.INT32)
        return w.nodes
