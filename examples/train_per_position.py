#!/usr/bin/env python
"""Train two per-position classifiers on the digits and export them to ONNX (a class per pixel, a class per token:
the outputs whose top-1 agreement is counted per position, passes/agreement.py).

Produces (next to this script):
  seg_digits.onnx          a fully convolutional segmenter: (N, 1, 8, 8) -> (N, 11, 8, 8) logits, per pixel
                           background (intensity below 4 of 16) or the digit's class + 1; two 3x3 Convs, the
                           image's mean features added back (global context), a 1x1 Conv head
  tagger_digits.onnx       the 8 image rows as 8 tokens of 8 pixels: (N, 1, 8, 8) -> (N, 8, 10) logits, every row
                           tagged with the digit's class (a Linear per token, the tokens' mean added back, a head)
  digits_pixel_labels.npy  (200, 8, 8) int64 - the pixel classes of examples/digits_inputs.npy
  digits_row_labels.npy    (200, 8)    int64 - the row tags of the same images

Same data, split and seed as train_digits.py. Requires torch (NOT a dependency of memse-compiler), scikit-learn,
onnx, onnxruntime. Usage: python examples/train_per_position.py
"""
import os

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn as nn
import torch.nn.functional as F

from train_digits import HERE, N_SAVE, SEED, load_data, train

INK = 4 / 16            # a pixel below this intensity is background


def pixel_labels(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.where(x[:, 0] >= INK, y[:, None, None] + 1, 0).astype(np.int64)


def row_labels(y: np.ndarray) -> np.ndarray:
    return np.repeat(y[:, None], 8, axis=1).astype(np.int64)


class Segmenter(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(1, 12, 3, padding=1), nn.Conv2d(12, 12, 3, padding=1)
        self.context, self.head = nn.Linear(12, 12), nn.Conv2d(12, 11, 1)

    def forward(self, x):
        h = F.relu(self.c2(F.relu(self.c1(x))))
        h = h + self.context(h.mean((2, 3)))[:, :, None, None]
        return self.head(F.relu(h))


class Tagger(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed, self.context, self.head = nn.Linear(8, 24), nn.Linear(24, 24), nn.Linear(24, 10)

    def forward(self, x):
        h = F.relu(self.embed(x.reshape(x.shape[0], 8, 8)))
        h = h + self.context(h.mean(1))[:, None, :]
        return self.head(F.relu(h))


def export(model, path: str, x_test: np.ndarray, labels: np.ndarray, class_axis: int) -> None:
    torch.onnx.export(model, (torch.zeros(1, 1, 8, 8),), path, dynamo=False, opset_version=17,
                      input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    onnx.checker.check_model(path, full_check=True)
    out = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"input": x_test})[0]
    with torch.no_grad():
        ref = model(torch.from_numpy(x_test)).numpy()
    assert np.abs(out - ref).max() < 1e-4
    print(f"  [{os.path.basename(path)}] per-position accuracy {np.mean(out.argmax(class_axis) == labels):.4f}")


def main():
    torch.manual_seed(SEED)
    (x_train, y_train), (x_test, y_test) = load_data()
    pixels, rows = pixel_labels(x_test, y_test), row_labels(y_test)
    seg = Segmenter()
    train(seg, x_train, pixel_labels(x_train, y_train), epochs=40)
    export(seg, os.path.join(HERE, "seg_digits.onnx"), x_test, pixels, 1)
    torch.manual_seed(SEED)
    tagger = Tagger()
    # the classes last: cross_entropy wants them on axis 1
    train(tagger, x_train, row_labels(y_train), epochs=40,
          loss_fn=lambda logits, labels: F.cross_entropy(logits.transpose(1, 2), labels))
    export(tagger, os.path.join(HERE, "tagger_digits.onnx"), x_test, rows, 2)
    np.save(os.path.join(HERE, "digits_pixel_labels.npy"), pixels[:N_SAVE])
    np.save(os.path.join(HERE, "digits_row_labels.npy"), rows[:N_SAVE])


if __name__ == "__main__":
    main()
