#!/usr/bin/env python
"""Make bert_digits.onnx and bert_digits_export.onnx: a small BERT (Hugging Face transformers' BertForSequenceClassification: 2 layers, hidden 32,
2 heads) trained on the digits as 64 pixel tokens (load_digits' intensities 0..16), exported by torch and then fused
by onnxruntime.transformers' optimizer into its com.microsoft EmbedLayerNormalization, Attention,
SkipLayerNormalization and BiasGelu, as a deployment of such a model ships it (bert_digits.onnx); and the same model
as torch exports it, at a fixed batch of 16 (bert_digits_export.onnx: transformers' mask code gathers the mask from
its flattened batch).

Requires torch, transformers (NOT dependencies of memse-compiler), scikit-learn, onnx, onnxruntime.
Usage:  python tests/contrib/make.py
"""
import os
import sys
import tempfile

import onnx
import torch
from onnxruntime.transformers import optimizer
from transformers import BertConfig, BertForSequenceClassification

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "examples"))
from train_digits import as_tokens, load_data  # noqa: E402

FUSED = {"EmbedLayerNormalization", "Attention", "SkipLayerNormalization", "BiasGelu"}


def main() -> None:
    torch.manual_seed(0)
    (x_train, y_train), (x_test, y_test) = load_data()
    ids_train, ids_test = torch.from_numpy(as_tokens(x_train)), torch.from_numpy(as_tokens(x_test))
    config = BertConfig(vocab_size=17, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                        max_position_embeddings=64, num_labels=10, hidden_act="gelu", hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0)
    # eager attention: the pattern onnxruntime.transformers fuses (the SDPA export's mask code it does not)
    model = BertForSequenceClassification._from_config(config, attn_implementation="eager")
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    y = torch.from_numpy(y_train)
    for epoch in range(30):
        perm = torch.randperm(len(ids_train))
        for i in range(0, len(perm), 64):
            idx = perm[i:i + 64]
            loss = torch.nn.functional.cross_entropy(model(input_ids=ids_train[idx]).logits, y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        acc = (model(input_ids=ids_test).logits.argmax(-1).numpy() == y_test).mean()
    print(f"bert_digits: test accuracy {acc:.3f}")
    ids = ids_test[:2]
    mask, segments = torch.ones_like(ids), torch.zeros_like(ids)
    with tempfile.TemporaryDirectory() as tmp:
        raw = os.path.join(tmp, "bert.onnx")
        names = ["input_ids", "attention_mask", "token_type_ids"]
        torch.onnx.export(model, (ids, mask, segments), raw, input_names=names, output_names=["logits"],
                          opset_version=17, dynamo=False, dynamic_axes={name: {0: "N"} for name in names + ["logits"]})
        fused = optimizer.optimize_model(raw, model_type="bert", num_heads=2, hidden_size=32)
        out = os.path.join(HERE, "bert_digits.onnx")
        fused.save_model_to_file(out)
    ids = ids_test[:16]
    export = os.path.join(HERE, "bert_digits_export.onnx")
    torch.onnx.export(model, (ids, torch.ones_like(ids), torch.zeros_like(ids)), export, input_names=names,
                      output_names=["logits"], opset_version=17, dynamo=False)
    print(f"wrote {export} ({os.path.getsize(export)} bytes)")
    ops = {n.op_type for n in onnx.load(out).graph.node if n.domain == "com.microsoft"}
    assert FUSED <= ops, f"onnxruntime.transformers fused only {sorted(ops)}"
    print(f"wrote {out} ({os.path.getsize(out)} bytes), com.microsoft ops: {sorted(ops)}")


if __name__ == "__main__":
    main()
