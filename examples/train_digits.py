#!/usr/bin/env python
"""Train nine small digit classifiers and export them to ONNX.

Produces (next to this script):
  mlp_digits.onnx, cnn_digits.onnx, rescnn_digits.onnx, attn_digits.onnx (a one-block transformer),
  vit_digits.onnx (a vision transformer of torch's nn.TransformerEncoderLayer), and the same weights as
  vit_digits_dynamo.onnx (torch's dynamo exporter, batch fixed at 1; needs onnxscript),
  lstm_digits.onnx and gru_digits.onnx (the image rows as an 8-step sequence),
  tokens_digits.onnx (the 64 pixel intensities 0..16 as int64 token ids, a small transformer),
  bnn_digits.onnx (binarised activations: sign between the layers, trained with a straight-through estimator)
  digits_tokens.npy        (200,64)    int64    - the first 200 test images as token ids
  digits_inputs.npy        (200,1,8,8) float32  - first 200 test images
  digits_labels.npy        (200,)      int64    - their labels
  digits_inputs_small.npz  key "input": (16,1,8,8) float32 - first 16 test images

Requires torch (NOT a dependency of memse-compiler), scikit-learn, onnx,
onnxruntime.  Usage:  python examples/train_digits.py [--only attn_digits]
"""
import os
import time
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn as nn
from sklearn.datasets import load_digits

HERE = os.path.dirname(os.path.abspath(__file__))
SEED = 0
N_TRAIN = 1497
N_TEST = 300
N_SAVE = 200
N_SMALL = 16


def load_data():
    ds = load_digits()
    x = (ds.data.astype(np.float32) / 16.0).reshape(-1, 1, 8, 8)
    y = ds.target.astype(np.int64)
    perm = np.random.RandomState(SEED).permutation(len(x))
    x, y = x[perm], y[perm]
    assert len(x) == N_TRAIN + N_TEST
    return (x[:N_TRAIN], y[:N_TRAIN]), (x[-N_TEST:], y[-N_TEST:])


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(64, 64), nn.ReLU(),
            nn.Linear(64, 32), nn.ReLU(),
            nn.Linear(32, 10),
        )

    def forward(self, x):
        return self.net(x)


class BinaryAct(nn.Module):
    """sign(x) in evaluation and export (ONNX Sign); in training the straight-through estimator, whose gradient is
    hardtanh's."""

    def forward(self, x):
        if self.training:
            c = x.clamp(-1.0, 1.0)
            return c + (torch.sign(x) - c).detach()
        return torch.sign(x)


class BNN(nn.Module):
    """Binarised activations (+-1 between the layers; the weights stay real, as the crossbars store them)."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(64, 64), BinaryAct(),
            nn.Linear(64, 64), BinaryAct(),
            nn.Linear(64, 10),
        )

    def forward(self, x):
        return self.net(x)


class CNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2),
            nn.Flatten(),
            nn.Linear(64, 10),
        )

    def forward(self, x):
        return self.net(x)


class ResCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.conv1 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.relu_out = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(128, 10)

    def forward(self, x):
        h = self.stem(x)
        r = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(h)))))
        h = self.relu_out(h + r)
        return self.fc(self.flatten(self.pool(h)))


class AttnNet(nn.Module):
    """A one-block transformer: the 8 image rows are 8 tokens of 8 pixels (torch exports the `view` as
    Shape -> Gather -> Concat -> Reshape), single-head self-attention and a GELU feed-forward, each with a
    residual and a LayerNorm, then the mean over tokens and a linear head."""

    def __init__(self, d=16):
        super().__init__()
        self.d = d
        self.embed = nn.Linear(8, d)
        self.pos = nn.Parameter(torch.zeros(8, d))
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.ff = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))
        self.head = nn.Linear(d, 10)

    def forward(self, x):
        h = self.embed(x.view(x.size(0), 8, 8)) + self.pos
        a = torch.softmax(self.q(h) @ self.k(h).transpose(1, 2) / self.d ** 0.5, dim=-1)
        h = self.ln1(h + self.o(a @ self.v(h)))
        h = self.ln2(h + self.ff(h))
        return self.head(h.mean(dim=1))


class ViTNet(nn.Module):
    """A vision transformer from torch's own modules: 2x2-pixel patches (a strided Conv) as 16 tokens, a class
    token, learned positions, one nn.TransformerEncoderLayer (nn.MultiheadAttention with 2 heads, which moves the
    batch off axis 0 and folds it into the heads: memse_compiler/batch_layout.py), and a linear head on the
    class token."""

    def __init__(self, d=16):
        super().__init__()
        self.patch = nn.Conv2d(1, d, 2, stride=2)
        self.cls = nn.Parameter(torch.zeros(1, 1, d))
        self.pos = nn.Parameter(torch.zeros(1, 17, d))
        self.encoder = nn.TransformerEncoderLayer(d, 2, 2 * d, dropout=0.0, batch_first=True,
                                                  activation="gelu")
        self.head = nn.Linear(d, 10)

    def forward(self, x):
        t = self.patch(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls.expand(x.shape[0], -1, -1), t], 1) + self.pos
        return self.head(self.encoder(t)[:, 0])


class LSTMNet(nn.Module):
    """The 8 image rows read one per step by an LSTM (8 steps of 8 pixels, hidden 24), a linear head on the last
    hidden state. torch exports the ONNX LSTM op (layout 0: Transposes move the batch to axis 1 and back); the
    compiler unrolls it, with W and R each one crossbar driven at every step (memse_compiler/recurrent.py)."""

    def __init__(self, hidden=24):
        super().__init__()
        self.rnn = nn.LSTM(8, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 10)

    def forward(self, x):
        y, _ = self.rnn(x.view(x.size(0), 8, 8))
        return self.head(y[:, -1])


class GRUNet(nn.Module):
    """The same with a bidirectional GRU (hidden 16 each way), the head on both directions' final states."""

    def __init__(self, hidden=16):
        super().__init__()
        self.rnn = nn.GRU(8, hidden, batch_first=True, bidirectional=True)
        self.head = nn.Linear(2 * hidden, 10)

    def forward(self, x):
        _, h = self.rnn(x.view(x.size(0), 8, 8))
        return self.head(torch.cat([h[0], h[1]], dim=1))


class TokenNet(nn.Module):
    """The 64 pixels as a sequence of token ids: load_digits' raw intensities 0..16 are a vocabulary of 17. An
    embedding table and learned positions, one nn.TransformerEncoderLayer (2 heads), the mean over tokens, a linear
    head. Its input is int64 ids (`digits_tokens.npy`): the lookup is an exact digital op for the compiler
    (memse_compiler/ir/ops/exact.py), the projections are crossbars."""

    def __init__(self, d=24):
        super().__init__()
        self.tok = nn.Embedding(17, d)
        self.pos = nn.Parameter(torch.zeros(1, 64, d))
        self.encoder = nn.TransformerEncoderLayer(d, 2, 2 * d, dropout=0.0, batch_first=True, activation="gelu")
        self.head = nn.Linear(d, 10)

    def forward(self, ids):
        return self.head(self.encoder(self.tok(ids) + self.pos).mean(1))


def as_tokens(x: np.ndarray) -> np.ndarray:
    """(N, 1, 8, 8) images in [0, 1] -> (N, 64) int64 ids: load_digits' integer intensities 0..16."""
    return np.rint(x.reshape(len(x), 64) * 16).astype(np.int64)


def train(model, x, y, epochs, lr=1e-2, batch=64, loss_fn=None):
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss() if loss_fn is None else loss_fn
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    g = torch.Generator().manual_seed(SEED)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(xt), generator=g)
        for i in range(0, len(xt), batch):
            idx = perm[i:i + batch]
            opt.zero_grad()
            loss = loss_fn(model(xt[idx]), yt[idx])
            loss.backward()
            opt.step()
    model.eval()
    return loss.item()


def export(model, path, dummy=None, input_name="input", **extra):
    if os.path.exists(path):
        os.remove(path)
    dummy = torch.zeros(1, 1, 8, 8, dtype=torch.float32) if dummy is None else dummy
    torch.onnx.export(
        model, (dummy,), path,
        dynamo=False,
        opset_version=17,
        input_names=[input_name],
        output_names=["logits"],
        dynamic_axes={input_name: {0: "batch"}, "logits": {0: "batch"}},
        **extra,
    )
    # Make sure the file is self-contained: reload (pulling in any external
    # data, should the exporter have written some) and re-save inline.
    m = onnx.load(path, load_external_data=True)
    ext = [t.name for t in m.graph.initializer
           if t.data_location == onnx.TensorProto.EXTERNAL]
    stray = [f for f in os.listdir(os.path.dirname(path))
             if f.startswith(os.path.basename(path)) and f != os.path.basename(path)]
    if ext or stray:
        onnx.save_model(m, path, save_as_external_data=False)
        for f in stray:
            os.remove(os.path.join(os.path.dirname(path), f))
    m = onnx.load(path, load_external_data=False)
    assert all(t.data_location != onnx.TensorProto.EXTERNAL for t in m.graph.initializer)
    return m


def export_dynamo(model, path):
    """torch.onnx.export's default since torch 2.9 (needs onnxscript): the shapes of the dummy batch are baked in,
    Reshape targets get allowzero=1 and the class token's expand is folded into a (1, 1, d) constant."""
    if os.path.exists(path):
        os.remove(path)
    torch.onnx.export(model, (torch.zeros(1, 1, 8, 8),), path, dynamo=True, external_data=False, opset_version=18,
                      input_names=["input"], output_names=["logits"])
    onnx.checker.check_model(path, full_check=True)


def verify_fixed(model, path, x):
    """A batch-1 export against torch, sample by sample."""
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    out = np.concatenate([sess.run(["logits"], {"input": x[i:i + 1]})[0] for i in range(len(x))])
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    diff = float(np.abs(out - ref).max())
    print(f"  [{os.path.basename(path)}] max|dlogits| torch vs onnxruntime, {len(x)} samples one by one = {diff:.2e}")
    assert diff < 1e-4, diff


def verify(model, path, x_test, y_test, input_name="input"):
    onnx.checker.check_model(path, full_check=True)
    with torch.no_grad():
        ref = model(torch.from_numpy(x_test)).numpy()
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    out = sess.run(["logits"], {input_name: x_test})[0]
    acc_t = float((ref.argmax(1) == y_test).mean())
    acc_o = float((out.argmax(1) == y_test).mean())
    diff = float(np.abs(out - ref).max())
    # also check a non-1 batch dimension of a different size works
    out_small = sess.run(["logits"], {input_name: x_test[:N_SMALL]})[0]
    assert out_small.shape == (N_SMALL, 10)
    print(f"  [{os.path.basename(path)}] torch acc={acc_t:.4f} onnxruntime acc={acc_o:.4f} "
          f"max|dlogits|={diff:.2e}")
    assert acc_t == acc_o, (acc_t, acc_o)
    assert diff < 1e-4, diff
    return acc_t


def main():
    import argparse
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default=None, help="comma-separated model names (e.g. attn_digits): train and "
                                                 "export only these, and leave the input files alone")
    only = ap.parse_args().only
    # dynamo=False is deliberate (TorchScript exporter); silence its deprecation note.
    warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
    torch.manual_seed(SEED)
    np.random.seed(SEED)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    (x_tr, y_tr), (x_te, y_te) = load_data()

    specs = [
        ("mlp_digits", MLP, 30, {}),
        ("cnn_digits", CNN, 20, {}),
        ("rescnn_digits", ResCNN, 15, dict(
            do_constant_folding=False,
            training=torch.onnx.TrainingMode.EVAL,
            export_modules_as_functions=False,
        )),
        ("attn_digits", AttnNet, 40, {}),
        ("vit_digits", ViTNet, 40, {}),
        ("lstm_digits", LSTMNet, 40, {}),
        ("gru_digits", GRUNet, 40, {}),
        ("tokens_digits", TokenNet, 60, {}),
        ("bnn_digits", BNN, 60, {}),
    ]
    if only:
        specs = [s for s in specs if s[0] in only.split(",")]
    rows = []
    for name, cls, epochs, extra in specs:
        torch.manual_seed(SEED)
        model = cls()
        tokens = cls is TokenNet
        xs_tr, xs_te = (as_tokens(x_tr), as_tokens(x_te)) if tokens else (x_tr, x_te)
        t0 = time.time()
        loss = train(model, xs_tr, y_tr, epochs, **(dict(lr=5e-3) if tokens else {}))
        dt = time.time() - t0
        print(f"{name}: trained {epochs} epochs in {dt:.1f}s, final batch loss {loss:.4f}")
        path = os.path.join(HERE, name + ".onnx")
        if tokens:
            extra = dict(extra, dummy=torch.zeros(1, 64, dtype=torch.int64), input_name="tokens")
            np.save(os.path.join(HERE, "digits_tokens.npy"), as_tokens(x_te[:N_SAVE]))
        m = export(model, path, **extra)
        ops = [n.op_type for n in m.graph.node]
        print(f"  ops: {ops}")
        if cls is ResCNN:
            bns = [mod for mod in model.modules() if isinstance(mod, nn.BatchNorm2d)]
            for bn in bns:  # BN really trained: running stats moved from init
                assert not torch.allclose(bn.running_mean, torch.zeros_like(bn.running_mean))
                assert not torch.allclose(bn.running_var, torch.ones_like(bn.running_var))
            n_bn = ops.count("BatchNormalization")
            assert n_bn >= 1, "BatchNormalization nodes were fused away"
            assert n_bn == len(bns), (n_bn, len(bns))
        acc = verify(model, path, xs_te, y_te, input_name="tokens" if tokens else "input")
        n_params = sum(p.numel() for p in model.parameters())
        size = os.path.getsize(path)
        assert size < 100_000, size
        rows.append((name + ".onnx", n_params, acc, size))
        if cls is ViTNet:    # the same weights through torch's default exporter (dynamo), fixed batch 1
            dyn_path = os.path.join(HERE, name + "_dynamo.onnx")
            export_dynamo(model, dyn_path)
            verify_fixed(model, dyn_path, x_te[:8])
            rows.append((name + "_dynamo.onnx", n_params, acc, os.path.getsize(dyn_path)))

    if not only:
        np.save(os.path.join(HERE, "digits_inputs.npy"), np.ascontiguousarray(x_te[:N_SAVE], dtype=np.float32))
        np.save(os.path.join(HERE, "digits_labels.npy"), np.ascontiguousarray(y_te[:N_SAVE], dtype=np.int64))
        np.savez(os.path.join(HERE, "digits_inputs_small.npz"),
                 input=np.ascontiguousarray(x_te[:N_SMALL], dtype=np.float32))

    print()
    print(f"{'model':<22}{'params':>8}{'test acc (300)':>16}{'file size (B)':>15}")
    for name, n_params, acc, size in rows:
        print(f"{name:<22}{n_params:>8}{acc:>16.4f}{size:>15}")


if __name__ == "__main__":
    main()
