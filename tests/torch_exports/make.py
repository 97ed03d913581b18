#!/usr/bin/env python
"""Export the transformer forms of torch's own modules that tests/test_torch_exports.py checks (random weights,
seed 0; the legacy TorchScript exporter, opset 17, as examples/train_digits.py). Needs torch (not a dependency
of memse-compiler); the committed .onnx files are what the tests read. Usage: python tests/torch_exports/make.py
[activations | attention23 | indexed | group_norm21 | rotary23 | decisions] (the act_*, *.attention23, idx_*,
group_norm21, rope_* or dec_* exports only)

  seqfirst_mha.onnx           nn.MultiheadAttention(batch_first=False) between two transposes (dynamic batch)
  mha_weights.fixed.onnx      need_weights=True: the head-averaged attention weights are used too (batch 4)
  causal_encoder.fixed.onnx   2-layer nn.TransformerEncoder, 4 heads, causal -inf mask (batch 4)
  decoder.fixed.onnx          nn.TransformerDecoderLayer: self- and cross-attention on the same tokens (batch 4)
  merge.onnx                  x.reshape(-1, d) -> Linear -> reshape back: the batch merged with the tokens
  group_norm.onnx             Conv -> nn.GroupNorm(2, 8) -> Conv (InstanceNormalization between two Reshapes)
  group_norm21.dynamo.onnx    the same through the dynamo exporter at opset 21: one GroupNormalization node
  rope_<form>.rotary23.onnx   the image rows as 8 tokens, q and k projections turned by
                              torch.onnx.ops.rotary_embedding (ONNX RotaryEmbedding, opset 23; position ids an
                              Expand of a Range to the batch), 2-head attention, a head: 4-D (batch, heads, seq,
                              size) halves, interleaved pairs, a partial rotary_embedding_dim of 4, and 3-D inputs
                              with num_heads (dynamic batch)
  fake_quant.onnx             quantization-aware training's fake quantization of the input and a hidden layer
                              (torch.fake_quantize_per_tensor_affine: QuantizeLinear -> DequantizeLinear pairs)
  gpt_block.onnx              nanoGPT's block: `B, T, C = x.size()` on a computed tensor, heads by view and
                              transpose, masked_fill(-inf) with a causal buffer, GELU MLP (dynamic batch)
  lstm_2layer.onnx            nn.LSTM(num_layers=2, batch_first=True): two LSTM nodes, the zero initial states
                              sliced from one ConstantOfShape of the batch size (dynamic batch)
  gru_seqfirst.dynamo.onnx    a bidirectional nn.GRU on sequence-first input, the head on both final states,
                              through torch's dynamo exporter (batch 1; needs onnxscript)
  cross_attention.onnx        two data inputs: image tokens attend (sequence-first nn.MultiheadAttention) to a
                              second input's context tokens (dynamic batch)
  cross_attention.fixed.onnx  the same exported at batch 4
  tokens_fill.onnx            int64 token ids and padding mask: embedding + positions, self-attention masked by
                              masked_fill(mask == 0, -inf), masked mean pool (dynamic batch)
  tokens_additive.onnx        the same with the additive mask (1 - mask) * -1e4 of BERT-style models
  mini_bert.onnx              int64 ids only, padding = id 0: embeddings, 2-layer nn.TransformerEncoder with
                              src_key_padding_mask = (ids == 0), masked mean pool (dynamic batch)
  mini_bert.dynamo.onnx       the same through torch's dynamo exporter (batch 4; needs onnxscript)
  act_<name>.onnx             Linear -> activation -> Linear, activations written with comparisons of the noisy
                              signal or the signal reaching an op twice (ir/ops/pointwise.py): torch.where(h > 0, h,
                              0.1 h), F.hardshrink (Greater, Less, Cast to bool, Or, Where), F.softshrink,
                              torch.where(h < -0.5, full_like(h, -0.5), h) (a ConstantOfShape of the batch),
                              h * (h > 0.2).float(), F.silu at opset 13 (Sigmoid, Mul), F.gelu(approximate="tanh")
                              (its chain of Mul, Add, Tanh); act_threshold.dynamo: F.threshold(h, 0.1, -0.2) through
                              the dynamo exporter (LessOrEqual, Where; batch 4)
  idx_<name>.dynamo.onnx      Linear -> an indexed read or write -> Linear, through the dynamo exporter (dynamic
                              batch; ir/ops/scatter.py): slice assignment z[:, 4:9] = relu(h[:, :5]) and z[:, 2:6] = 0
                              and z[:, 1:3, 2:5] = sigmoid(...) on a 3-D view (ScatterND between Transposes), an
                              index assignment into zeros_like (ScatterND into a constant), z[:, 1] = 2 h[:, 0]
                              (ScatterElements), torch.scatter into h and into zeros, torch.gather with expanded
                              indices, take_along_dim (GatherElements; the exporter fixes its batch to 4)
  dec_<name>[.dynamo].onnx    deployment heads (memse_compiler/decisions.py): Linear -> ReLU -> Linear to 10 classes,
                              then logits.topk(3, dim=1) (values and indices outputs; the legacy exporter at
                              opset 17 and the dynamo one at 18); per token (the image rows as 8 tokens, 5 classes
                              each), logits.topk(2, dim=-1) (dynamic batch)
  idx_<name>.fixed.onnx       index assignment into zeros_like and z[:, 2:6] = 0 through the legacy exporter at a
                              fixed batch of 4: ScatterND indices that enumerate the samples
"""
import math
import os
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
D = 16


def tokens(x):
    return x.reshape(x.shape[0], 8, 8)


class SeqFirstMHA(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb, self.mha, self.head = nn.Linear(8, D), nn.MultiheadAttention(D, 2), nn.Linear(D, 10)

    def forward(self, x):
        t = self.emb(tokens(x)).transpose(0, 1)
        a, _ = self.mha(t, t, t, need_weights=False)
        return self.head(a.transpose(0, 1).mean(1))


class MHAWeights(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb, self.mha = nn.Linear(8, D), nn.MultiheadAttention(D, 2, batch_first=True)
        self.head = nn.Linear(D + 8, 10)

    def forward(self, x):
        t = self.emb(tokens(x))
        a, w = self.mha(t, t, t)
        return self.head(torch.cat([a.mean(1), w.mean(1)], 1))


class CausalEncoder(nn.Module):
    def __init__(self):
        super().__init__()
        layer = nn.TransformerEncoderLayer(D, 4, 2 * D, dropout=0.0, batch_first=True)
        self.emb, self.head = nn.Linear(8, D), nn.Linear(D, 10)
        self.enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(8))

    def forward(self, x):
        return self.head(self.enc(self.emb(tokens(x)), mask=self.mask)[:, -1])


class CausalEncoderFlagged(CausalEncoder):
    """The same with is_causal=True next to the mask, as torch.export needs (it cannot test the buffer's values)."""

    def forward(self, x):
        return self.head(self.enc(self.emb(tokens(x)), mask=self.mask, is_causal=True)[:, -1])


class Decoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb, self.head = nn.Linear(8, D), nn.Linear(D, 10)
        self.dec = nn.TransformerDecoderLayer(D, 2, 2 * D, dropout=0.0, batch_first=True)

    def forward(self, x):
        t = self.emb(tokens(x))
        return self.head(self.dec(t, t).mean(1))


class Merge(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(8, D), nn.Linear(D, 10)

    def forward(self, x):
        t = tokens(x)
        h = F.relu(self.a(t.reshape(-1, 8))).reshape(t.shape[0], 8, D)
        return self.b(h.mean(1))


class CausalSelfAttention(nn.Module):
    def __init__(self, heads=2, t=8):
        super().__init__()
        self.c_attn, self.c_proj, self.heads = nn.Linear(D, 3 * D), nn.Linear(D, D), heads
        self.register_buffer("bias", torch.tril(torch.ones(t, t)).view(1, 1, t, t))

    def forward(self, x):
        b, t, c = x.size()
        q, k, v = (a.view(b, t, self.heads, c // self.heads).transpose(1, 2) for a in self.c_attn(x).split(D, 2))
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
        att = F.softmax(att.masked_fill(self.bias[:, :, :t, :t] == 0, float("-inf")), dim=-1)
        return self.c_proj((att @ v).transpose(1, 2).contiguous().view(b, t, c))


class GPTBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb, self.ln1, self.attn, self.ln2 = nn.Linear(8, D), nn.LayerNorm(D), CausalSelfAttention(), nn.LayerNorm(D)
        self.mlp, self.head = nn.Sequential(nn.Linear(D, 4 * D), nn.GELU(), nn.Linear(4 * D, D)), nn.Linear(D, 10)

    def forward(self, x):
        t = self.emb(tokens(x))
        t = t + self.attn(self.ln1(t))
        return self.head((t + self.mlp(self.ln2(t)))[:, -1])


class GroupNormConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.gn, self.c2 = nn.Conv2d(1, 8, 3, padding=1), nn.GroupNorm(2, 8), nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Linear(8, 10)
        with torch.no_grad():          # an affine that is not the identity
            self.gn.weight.uniform_(0.5, 1.5)
            self.gn.bias.uniform_(-0.2, 0.2)

    def forward(self, x):
        return self.head(F.relu(self.c2(F.relu(self.gn(self.c1(x))))).mean((2, 3)))


class FakeQuant(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(64, 32), nn.Linear(32, 10)

    def forward(self, x):
        x = torch.fake_quantize_per_tensor_affine(x.flatten(1), 1 / 255, 0, 0, 255)
        h = torch.fake_quantize_per_tensor_affine(F.relu(self.a(x)), 0.05, 0, 0, 255)
        return self.b(h)


class StackedLSTM(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn, self.head = nn.LSTM(8, 12, num_layers=2, batch_first=True), nn.Linear(12, 10)

    def forward(self, x):
        return self.head(self.rnn(x.view(x.size(0), 8, 8))[0][:, -1])


class SeqFirstGRU(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn, self.head = nn.GRU(8, 12, bidirectional=True), nn.Linear(24, 10)

    def forward(self, x):
        _, h = self.rnn(x.view(x.size(0), 8, 8).transpose(0, 1))
        return self.head(torch.cat([h[0], h[1]], dim=1))


class CrossAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb, self.ctx = nn.Linear(8, D), nn.Linear(5, D)
        self.mha, self.head = nn.MultiheadAttention(D, 2), nn.Linear(D, 10)

    def forward(self, x, context):
        q = self.emb(tokens(x)).transpose(0, 1)
        kv = torch.tanh(self.ctx(context)).transpose(0, 1)
        a, _ = self.mha(q, kv, kv, need_weights=False)
        return self.head(a.transpose(0, 1).mean(1))


class TokenClassifier(nn.Module):
    VOCAB, LENGTH = 20, 6

    def __init__(self, style):
        super().__init__()
        self.style = style
        self.tok, self.pos = nn.Embedding(self.VOCAB, D), nn.Parameter(torch.randn(self.LENGTH, D) * 0.1)
        self.qkv, self.proj, self.head = nn.Linear(D, 3 * D), nn.Linear(D, D), nn.Linear(D, 4)

    def forward(self, ids, mask):
        x = self.tok(ids) + self.pos
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        s = q @ k.transpose(1, 2) / D ** 0.5
        if self.style == "fill":
            s = s.masked_fill(mask[:, None, :] == 0, float("-inf"))
        else:
            s = s + (1.0 - mask[:, None, :].float()) * -1e4
        a = self.proj(F.softmax(s, dim=-1) @ v)
        m = mask.float()[:, :, None]
        return self.head((F.relu(a + x) * m).sum(1) / m.sum(1))


class MiniBert(nn.Module):
    VOCAB, LENGTH = 30, 8

    def __init__(self):
        super().__init__()
        self.tok, self.pos = nn.Embedding(self.VOCAB, D, padding_idx=0), nn.Embedding(self.LENGTH, D)
        layer = nn.TransformerEncoderLayer(D, 2, 32, dropout=0.0, batch_first=True)
        self.enc, self.head = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False), nn.Linear(D, 3)

    def forward(self, ids):
        pad = ids == 0
        pos = torch.arange(ids.shape[1], device=ids.device)
        h = self.enc(self.tok(ids) + self.pos(pos)[None], src_key_padding_mask=pad)
        keep = (~pad).float()[:, :, None]
        return self.head((h * keep).sum(1) / keep.sum(1).clamp(min=1))


ACTIVATIONS = {
    "where_leaky": lambda h: torch.where(h > 0, h, 0.1 * h),
    "hardshrink": lambda h: F.hardshrink(h, 0.3),
    "softshrink": lambda h: F.softshrink(h, 0.3),
    "clamp_where": lambda h: torch.where(h < -0.5, torch.full_like(h, -0.5), h),
    "heaviside": lambda h: h * (h > 0.2).float(),
    "silu": F.silu,
    "gelu_tanh": lambda h: F.gelu(h, approximate="tanh"),
    "threshold": lambda h: F.threshold(h, 0.1, -0.2),
}


def _slice_assign(h):
    z = h.clone()
    z[:, 4:9] = torch.relu(h[:, :5])
    return z


def _fill(h):
    z = h.clone()
    z[:, 2:6] = 0
    return z


def _assign_3d(h):
    z = h.reshape(-1, 4, 8).clone()
    z[:, 1:3, 2:5] = torch.sigmoid(z[:, 0:2, 0:3])
    return z.flatten(1)


def _index_put(h):
    z = torch.zeros_like(h)
    z[:, torch.tensor([1, 3, 8])] = h[:, :3]
    return z


def _select_scatter(h):
    z = h.clone()
    z[:, 1] = h[:, 0] * 2
    return z


SCATTER_AT = torch.tensor([[3, 1, 0, 17, 30]])
PERMUTATION = torch.tensor([[(7 * i) % 32 for i in range(32)]])
INDEXED = {
    "slice_assign": _slice_assign, "fill": _fill, "assign_3d": _assign_3d, "index_put": _index_put,
    "select_scatter": _select_scatter,
    "scatter": lambda h: torch.scatter(h, 1, SCATTER_AT.expand(h.shape[0], 5), torch.relu(h[:, :5])),
    "scatter_zeros": lambda h: torch.zeros_like(h).scatter(1, SCATTER_AT.expand(h.shape[0], 5), h[:, 10:15]),
    "gather": lambda h: torch.gather(h, 1, PERMUTATION.expand(h.shape[0], 32)),
    "take_along": lambda h: torch.take_along_dim(h, torch.tensor([[7, 0, 1, 31, 7]]), dim=1),
}


class Indexed(nn.Module):
    def __init__(self, name):
        super().__init__()
        self.a, self.fn = nn.Linear(64, 32), INDEXED[name]
        self.b = nn.Linear(5 if name == "take_along" else 32, 10)

    def forward(self, x):
        return self.b(self.fn(self.a(x.flatten(1))))


class RoPEBlock(nn.Module):
    def __init__(self, interleaved=False, partial=0, three_d=False):
        super().__init__()
        self.emb, self.q, self.k, self.v, self.head = (nn.Linear(8, 16), nn.Linear(16, 16), nn.Linear(16, 16),
                                                       nn.Linear(16, 16), nn.Linear(16, 10))
        self.interleaved, self.partial, self.three_d = interleaved, partial, three_d
        d = partial or 8
        angle = torch.arange(16).float()[:, None] / (10000 ** (torch.arange(0, d, 2).float() / d))[None]
        self.register_buffer("cos", torch.cos(angle))
        self.register_buffer("sin", torch.sin(angle))

    def turn(self, t, positions, heads=0):
        return torch.onnx.ops.rotary_embedding(t, self.cos, self.sin, positions, interleaved=self.interleaved,
                                               num_heads=heads, rotary_embedding_dim=self.partial)

    def forward(self, x):
        h = self.emb(x.reshape(x.shape[0], 8, 8))
        b = h.shape[0]
        positions = torch.arange(8).unsqueeze(0).expand(b, 8)

        def heads(t):
            return t.reshape(b, 8, 2, 8).transpose(1, 2)
        q, k = self.q(h), self.k(h)
        if self.three_d:
            q, k = heads(self.turn(q, positions, 2)), heads(self.turn(k, positions, 2))
        else:
            q, k = self.turn(heads(q), positions), self.turn(heads(k), positions)
        a = torch.softmax(q @ k.transpose(-1, -2) / 8 ** 0.5, -1) @ heads(self.v(h))
        return self.head(a.transpose(1, 2).reshape(b, 8, 16).mean(1))


def export_rotary23():
    from torch.export import Dim
    warnings.filterwarnings("ignore")
    for name, kw in [("halves", {}), ("interleaved", dict(interleaved=True)), ("partial", dict(partial=4)),
                     ("3d", dict(three_d=True))]:
        torch.manual_seed(0)
        path = os.path.join(HERE, f"rope_{name}.rotary23.onnx")
        torch.onnx.export(RoPEBlock(**kw).eval(), (torch.rand(4, 1, 8, 8),), path, dynamo=True, opset_version=23,
                          external_data=False, input_names=["x"], output_names=["y"],
                          dynamic_shapes=({0: Dim("batch")},))
        print(f"{os.path.basename(path)}  {os.path.getsize(path)} B")


def export_group_norm21():
    from torch.export import Dim
    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    path = os.path.join(HERE, "group_norm21.dynamo.onnx")
    torch.onnx.export(GroupNormConv().eval(), (torch.rand(4, 1, 8, 8),), path, dynamo=True, opset_version=21,
                      external_data=False, input_names=["x"], output_names=["y"], dynamic_shapes=({0: Dim("batch")},))
    print(f"{os.path.basename(path)}  {os.path.getsize(path)} B")


def export_indexed():
    from torch.export import Dim
    warnings.filterwarnings("ignore")
    for name in INDEXED:
        torch.manual_seed(0)
        path = os.path.join(HERE, f"idx_{name}.dynamo.onnx")
        torch.onnx.export(Indexed(name).eval(), (torch.rand(4, 1, 8, 8),), path, dynamo=True, opset_version=18,
                          external_data=False, input_names=["x"], output_names=["y"],
                          dynamic_shapes=({0: Dim("batch")},))
        print(f"{os.path.basename(path)}  {os.path.getsize(path)} B")
    for name in ("index_put", "fill"):
        torch.manual_seed(0)
        path = os.path.join(HERE, f"idx_{name}.fixed.onnx")
        torch.onnx.export(Indexed(name).eval(), (torch.rand(4, 1, 8, 8),), path, dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["y"])
        print(f"{os.path.basename(path)}  {os.path.getsize(path)} B")


class Activation(nn.Module):
    def __init__(self, name):
        super().__init__()
        self.a, self.b, self.act = nn.Linear(64, 32), nn.Linear(32, 10), ACTIVATIONS[name]

    def forward(self, x):
        return self.b(self.act(self.a(x.flatten(1))))


class TopKHead(nn.Module):
    """A classifier whose export ends in torch.topk over its classes: (values, indices)."""
    def __init__(self, per_token: bool = False):
        super().__init__()
        self.per_token = per_token
        self.a, self.b = (nn.Linear(8, 16), nn.Linear(16, 5)) if per_token else (nn.Linear(64, 32), nn.Linear(32, 10))

    def forward(self, x):
        h = x.flatten(1, 2) if self.per_token else x.flatten(1)            # (N, 8 tokens, 8) or (N, 64)
        return self.b(torch.relu(self.a(h))).topk(2 if self.per_token else 3, dim=-1)


def export_decisions():
    from torch.export import Dim
    warnings.filterwarnings("ignore")
    for name, per_token, dynamo in [("topk", False, False), ("topk", False, True), ("topk_tokens", True, False)]:
        torch.manual_seed(0)
        path = os.path.join(HERE, f"dec_{name}{'.dynamo' if dynamo else ''}.onnx")
        extra = (dict(opset_version=18, external_data=False, dynamic_shapes=({0: Dim("batch")},)) if dynamo else
                 dict(opset_version=17, dynamic_axes={"x": {0: "N"}, "values": {0: "N"}, "indices": {0: "N"}}))
        torch.onnx.export(TopKHead(per_token).eval(), (torch.rand(4, 1, 8, 8),), path, dynamo=dynamo,
                          input_names=["x"], output_names=["values", "indices"], **extra)
        print(f"{os.path.basename(path)}  {os.path.getsize(path)} B")


def export_activations():
    warnings.filterwarnings("ignore")
    for name in ACTIVATIONS:
        torch.manual_seed(0)
        dynamo = name == "threshold"          # the legacy exporter refuses a non-zero threshold
        path = os.path.join(HERE, f"act_{name}{'.dynamo' if dynamo else ''}.onnx")
        extra = (dict(external_data=False) if dynamo else
                 dict(opset_version=13 if name == "silu" else 17, dynamic_axes={"x": {0: "N"}, "y": {0: "N"}}))
        torch.onnx.export(Activation(name).eval(), (torch.rand(4, 1, 8, 8),), path, dynamo=dynamo,
                          input_names=["x"], output_names=["y"], **extra)
        print(f"{os.path.basename(path)}  {os.path.getsize(path)} B")


def export_attention23():
    """torch's dynamo exporter at opset 23 writes scaled_dot_product_attention as one ONNX Attention node."""
    from torch.export import Dim
    warnings.filterwarnings("ignore")
    for name, cls, example in [("seqfirst_mha", SeqFirstMHA, torch.rand(4, 1, 8, 8)),
                               ("causal_encoder", CausalEncoderFlagged, torch.rand(4, 1, 8, 8)),
                               ("decoder", Decoder, torch.rand(4, 1, 8, 8)),
                               ("mini_bert", MiniBert, None)]:
        torch.manual_seed(0)
        path = os.path.join(HERE, f"{name}.attention23.onnx")
        if example is None:
            example = torch.randint(1, MiniBert.VOCAB, (4, MiniBert.LENGTH))
            example[1, 5:] = 0
        torch.onnx.export(cls().eval(), (example,), path, dynamo=True, opset_version=23, external_data=False,
                          input_names=["ids" if cls is MiniBert else "x"], output_names=["y"],
                          dynamic_shapes=({0: Dim("batch")},))
        print(f"{os.path.basename(path)}  {os.path.getsize(path)} B")


def main():
    warnings.filterwarnings("ignore")
    for name, cls, dynamic in [("seqfirst_mha", SeqFirstMHA, True), ("mha_weights.fixed", MHAWeights, False),
                               ("causal_encoder.fixed", CausalEncoder, False), ("decoder.fixed", Decoder, False),
                               ("merge", Merge, True), ("group_norm", GroupNormConv, True), ("fake_quant", FakeQuant, True),
                               ("gpt_block", GPTBlock, True), ("lstm_2layer", StackedLSTM, True)]:
        torch.manual_seed(0)
        path = os.path.join(HERE, name + ".onnx")
        torch.onnx.export(cls().eval(), (torch.rand(4, 1, 8, 8),), path, dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "N"}, "y": {0: "N"}} if dynamic else None)
        print(f"{name}.onnx  {os.path.getsize(path)} B")
    for name, dynamic in [("cross_attention", True), ("cross_attention.fixed", False)]:
        torch.manual_seed(0)
        path = os.path.join(HERE, name + ".onnx")
        torch.onnx.export(CrossAttention().eval(), (torch.rand(4, 1, 8, 8), torch.rand(4, 6, 5)), path, dynamo=False,
                          opset_version=17, input_names=["x", "context"], output_names=["y"],
                          dynamic_axes={"x": {0: "N"}, "context": {0: "N"}, "y": {0: "N"}} if dynamic else None)
        print(f"{name}.onnx  {os.path.getsize(path)} B")
    for style in ("fill", "additive"):
        torch.manual_seed(0)
        path = os.path.join(HERE, f"tokens_{style}.onnx")
        ids = torch.randint(0, TokenClassifier.VOCAB, (4, TokenClassifier.LENGTH))
        mask = torch.ones(4, TokenClassifier.LENGTH, dtype=torch.int64)
        mask[1, 4:] = 0
        torch.onnx.export(TokenClassifier(style).eval(), (ids, mask), path, dynamo=False, opset_version=17,
                          input_names=["ids", "mask"], output_names=["y"],
                          dynamic_axes={"ids": {0: "N"}, "mask": {0: "N"}, "y": {0: "N"}})
        print(f"tokens_{style}.onnx  {os.path.getsize(path)} B")
    for name, dynamo in [("mini_bert", False), ("mini_bert.dynamo", True)]:
        torch.manual_seed(0)
        path = os.path.join(HERE, name + ".onnx")
        ids = torch.randint(1, MiniBert.VOCAB, (4, MiniBert.LENGTH))
        ids[1, 5:] = 0
        extra = (dict(external_data=False) if dynamo
                 else dict(opset_version=17, dynamic_axes={"ids": {0: "N"}, "y": {0: "N"}}))
        torch.onnx.export(MiniBert().eval(), (ids,), path, dynamo=dynamo, input_names=["ids"], output_names=["y"],
                          **extra)
        print(f"{name}.onnx  {os.path.getsize(path)} B")
    export_activations()
    export_indexed()
    export_group_norm21()
    export_rotary23()
    torch.manual_seed(0)
    path = os.path.join(HERE, "gru_seqfirst.dynamo.onnx")
    torch.onnx.export(SeqFirstGRU().eval(), (torch.rand(1, 1, 8, 8),), path, dynamo=True, external_data=False,
                      input_names=["x"], output_names=["y"])
    print(f"gru_seqfirst.dynamo.onnx  {os.path.getsize(path)} B")


if __name__ == "__main__":
    import sys
    {"activations": export_activations, "attention23": export_attention23, "indexed": export_indexed,
     "group_norm21": export_group_norm21, "rotary23": export_rotary23, "decisions": export_decisions}.get(" ".join(sys.argv[1:]), main)()
