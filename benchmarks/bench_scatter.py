"""The col2im scatter of the sensitivity pass (`Windows.scatter`, the transpose of im2col): three layouts timed on
the conv shapes of the digits CNNs and ResNet-18, to back the layout rule in memse_compiler/ir/geometry.py.

Run by hand:  python benchmarks/bench_scatter.py [--repeat 5]

* strided: one add per tap straight from the (N, Ho, Wo, C, kh, kw) vectors viewed as (N, C, Ho, Wo, kh, kw)
  (the code before the rule, kept here as the baseline);
* channel-last: `Windows.scatter_channel_last`, accumulate into (N, H, W, C), then one copy back to (N, C, H, W);
* tap rows: `Windows.scatter_tap_rows`, copy the taps to (N, C, kh, kw, Ho, Wo) once, then each tap adds rows;
* scatter: what `Windows.scatter` picks (channel-last below SCATTER_CHANNEL_LAST positions, else tap rows).
Times in ms, min over repeats, float64 as the analysis runs.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from memse_compiler.ir.geometry import SCATTER_CHANNEL_LAST, Windows, conv_pads

SHAPES = [  # (name, batch, channels, input size, kernel, stride, pad)
    ("cnn conv2", 200, 8, 8, 3, 1, 1),
    ("cnn conv2 (16 ch)", 200, 16, 8, 3, 1, 1),
    ("digits 1 ch", 200, 1, 8, 3, 1, 1),
    ("16 ch 16x16", 64, 16, 16, 3, 1, 1),
    ("32 ch 16x16", 64, 32, 16, 3, 1, 1),
    ("8 ch 32x32", 64, 8, 32, 3, 1, 1),
    ("resnet stem", 4, 3, 224, 7, 2, 3),
    ("resnet layer1", 4, 64, 56, 3, 1, 1),
    ("resnet layer2 down", 4, 64, 56, 3, 2, 1),
    ("resnet layer2", 4, 128, 28, 3, 1, 1),
    ("resnet layer3", 4, 256, 14, 3, 1, 1),
    ("resnet layer4", 4, 512, 7, 3, 1, 1),
]


def strided(win: Windows, cols: np.ndarray) -> np.ndarray:
    n, c = cols.shape[:2]
    t, l, b, r = win.pads
    (h, w), (kh, kw), (sh, sw), (ho, wo) = win.in_hw, win.kernel, win.strides, win.out_hw
    out = np.zeros((n, c, h + t + b, w + l + r))
    for i in range(kh):
        for j in range(kw):
            out[:, :, i: i + (ho - 1) * sh + 1: sh, j: j + (wo - 1) * sw + 1: sw] += cols[:, :, :, :, i, j]
    return out[:, :, t: t + h, l: l + w]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    print(f"{'shape':<20}{'N':>5}{'C':>5}{'HxW':>9}{'k/s':>6}{'Ho*Wo':>7}"
          f"{'strided':>10}{'chan-last':>11}{'tap rows':>10}{'scatter':>9}  picks")
    for name, n, c, size, k, s, p in SHAPES:
        pads, out = conv_pads((size, size), (k, k), (s, s), (1, 1), [p] * 4, "NOTSET")
        win = Windows((k, k), (s, s), (1, 1), tuple(pads), (size, size), tuple(out))
        v = np.random.default_rng(0).standard_normal((n, out[0] * out[1], 1, c * k * k))
        # the view the sensitivity pass hands to scatter (see ConvGeometry.to_vectors_T)
        cols = v.reshape(n, out[0], out[1], 1, c, k, k).transpose(0, 3, 4, 1, 2, 5, 6).reshape(n, c, *out, k, k)
        ref = strided(win, cols)
        times = {}
        for label, fn in [("strided", strided), ("channel-last", Windows.scatter_channel_last),
                          ("tap rows", Windows.scatter_tap_rows), ("scatter", Windows.scatter)]:
            np.testing.assert_allclose(fn(win, cols), ref, rtol=1e-12, atol=1e-12)
            best = float("inf")
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                fn(win, cols)
                best = min(best, time.perf_counter() - t0)
            times[label] = best * 1e3
        picks = "channel-last" if out[0] * out[1] < SCATTER_CHANNEL_LAST else "tap rows"
        print(f"{name:<20}{n:>5}{c:>5}{f'{size}x{size}':>9}{f'{k}/{s}':>6}{out[0] * out[1]:>7}"
              f"{times['strided']:>10.2f}{times['channel-last']:>11.2f}{times['tap rows']:>10.2f}"
              f"{times['scatter']:>9.2f}  {picks}")


if __name__ == "__main__":
    main()
