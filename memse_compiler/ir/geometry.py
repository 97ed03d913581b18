"""How a weighted op's activation tensor is cut into the vectors a crossbar multiplies.

Every weighted op is a matrix product per group: vectors of shape (N, P, G, J) (samples, positions per
sample, groups, rows per group) times a matrix (G, O, J). Conv positions come from im2col in the ONNX
weight order (cin, kh, kw); a matrix op has P = 1 (or the middle axes of an N-D MatMul).
Each geometry also provides the exact transposes (for the sensitivity pass), so the linear algebra of
every consumer goes through one place.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# output positions below which `Windows.scatter` accumulates channel-last (measured crossover on the reference VM)
SCATTER_CHANNEL_LAST = 256


def conv_pads(in_spatial, kernel, strides, dilations, pads, auto_pad):
    """Explicit (begin..., end...) pads and output spatial shape, following the ONNX Conv/Pool spec."""
    nd = len(in_spatial)
    eff = [(k - 1) * d + 1 for k, d in zip(kernel, dilations)]
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        out = [math.ceil(i / s) for i, s in zip(in_spatial, strides)]
        total = [max((o - 1) * s + e - i, 0) for o, s, e, i in zip(out, strides, eff, in_spatial)]
        small = [t // 2 for t in total]
        big = [t - t // 2 for t in total]
        begin, end = (small, big) if auto_pad == "SAME_UPPER" else (big, small)
        return list(begin) + list(end), out
    if auto_pad == "VALID":
        pads = [0] * (2 * nd)
    pads = list(pads) if pads else [0] * (2 * nd)
    out = [(i + pads[a] + pads[a + nd] - e) // s + 1
           for a, (i, e, s) in enumerate(zip(in_spatial, eff, strides))]
    return pads, out


@dataclass
class Windows:
    """im2col over the last two axes of an (N, C, H, W) tensor (1-D convs use H = 1)."""
    kernel: tuple[int, int]
    strides: tuple[int, int]
    dilations: tuple[int, int]
    pads: tuple[int, int, int, int]     # top, left, bottom, right
    in_hw: tuple[int, int]
    out_hw: tuple[int, int]

    def extract(self, x: np.ndarray, fill: float = 0.0) -> np.ndarray:
        """(N, C, H, W) -> (N, C, Ho, Wo, kh, kw) copy of every window."""
        t, l, b, r = self.pads
        xp = np.pad(x, ((0, 0), (0, 0), (t, b), (l, r)), constant_values=fill) if any(self.pads) else x
        (kh, kw), (sh, sw), (dh, dw), (ho, wo) = self.kernel, self.strides, self.dilations, self.out_hw
        eh, ew = (kh - 1) * dh + 1, (kw - 1) * dw + 1
        win = np.lib.stride_tricks.sliding_window_view(xp, (eh, ew), axis=(2, 3))
        return win[:, :, : (ho - 1) * sh + 1: sh, : (wo - 1) * sw + 1: sw, ::dh, ::dw]

    def scatter(self, cols: np.ndarray) -> np.ndarray:
        """Transpose of `extract`: (N, C, Ho, Wo, kh, kw) -> (N, C, H, W), summing overlaps.

        One strided add per kernel tap. `cols` is usually a transposed view of (N, Ho, Wo, C, kh, kw) vectors,
        whose tap slices are strided in every axis; two layouts make the adds stream memory instead
        (`benchmarks/bench_scatter.py`): few positions (< SCATTER_CHANNEL_LAST): accumulate channel-last,
        where a tap slice of the vectors is contiguous over channels but for the taps' stride; otherwise copy
        the taps to (N, C, kh, kw, Ho, Wo) once, so that each tap adds whole rows. Same sums either way."""
        ho, wo = self.out_hw
        return self.scatter_channel_last(cols) if ho * wo < SCATTER_CHANNEL_LAST else self.scatter_tap_rows(cols)

    def _taps(self):
        """(rows, cols, i, j) of every kernel tap: the padded input window it adds into."""
        (kh, kw), (sh, sw), (dh, dw), (ho, wo) = self.kernel, self.strides, self.dilations, self.out_hw
        return [(slice(i * dh, i * dh + (ho - 1) * sh + 1, sh), slice(j * dw, j * dw + (wo - 1) * sw + 1, sw), i, j)
                for i in range(kh) for j in range(kw)]

    def scatter_channel_last(self, cols: np.ndarray) -> np.ndarray:
        """`scatter` accumulated in (N, H, W, C), then copied back to (N, C, H, W)."""
        n, c = cols.shape[:2]
        t, l, b, r = self.pads
        h, w = self.in_hw
        out = np.zeros((n, h + t + b, w + l + r, c), dtype=cols.dtype)
        taps = cols.transpose(0, 2, 3, 1, 4, 5)                           # N, Ho, Wo, C, kh, kw
        for hs, ws, i, j in self._taps():
            out[:, hs, ws, :] += taps[..., i, j]
        return np.ascontiguousarray(out[:, t: t + h, l: l + w, :].transpose(0, 3, 1, 2))

    def scatter_tap_rows(self, cols: np.ndarray) -> np.ndarray:
        """`scatter` with the taps first copied to (N, C, kh, kw, Ho, Wo), so that each tap adds whole rows."""
        n, c = cols.shape[:2]
        t, l, b, r = self.pads
        h, w = self.in_hw
        taps = np.empty((n, c) + self.kernel + self.out_hw, dtype=cols.dtype)
        taps[...] = cols.transpose(0, 1, 4, 5, 2, 3)
        out = np.zeros((n, c, h + t + b, w + l + r), dtype=cols.dtype)
        for hs, ws, i, j in self._taps():
            out[:, :, hs, ws] += taps[:, :, i, j]
        return out[:, :, t: t + h, l: l + w]


@dataclass
class ConvGeometry:
    windows: Windows
    groups: int
    in_channels: int
    one_d: bool = False          # (N, C, L) tensors, handled as H = 1

    def _as4d(self, x):
        return x[:, :, None, :] if self.one_d else x

    def to_vectors(self, x: np.ndarray, extra: int = 0) -> np.ndarray:
        """(N, C, H, W) -> (N, P, G, J + extra) window vectors, in one copy; the `extra` trailing columns are
        left uninitialised for the caller (the bias row)."""
        x = self._as4d(x)
        cols = self.windows.extract(x)                      # N, C, Ho, Wo, kh, kw (a strided view)
        n, c, ho, wo, kh, kw = cols.shape
        g, j = self.groups, (c // self.groups) * kh * kw
        out = np.empty((n, ho * wo, g, j + extra), dtype=cols.dtype)
        target = out[..., :j]
        target.shape = (n, ho, wo, g, c // g, kh, kw)      # a view (raises rather than copy)
        target[...] = cols.reshape(n, g, c // g, ho, wo, kh, kw).transpose(0, 3, 4, 1, 2, 5, 6)
        return out

    def from_vectors(self, y: np.ndarray, x_shape: tuple = ()) -> np.ndarray:
        n, p, g, o = y.shape
        ho, wo = self.windows.out_hw
        out = y.reshape(n, ho, wo, g * o).transpose(0, 3, 1, 2)
        return out[:, :, 0, :] if self.one_d else out

    # transposes, for back-propagating sensitivities
    def to_vectors_T(self, v: np.ndarray, x_shape: tuple = ()) -> np.ndarray:
        n, p, g, j = v.shape
        (ho, wo), (kh, kw) = self.windows.out_hw, self.windows.kernel
        cg = j // (kh * kw)
        cols = v.reshape(n, ho, wo, g, cg, kh, kw).transpose(0, 3, 4, 1, 2, 5, 6)
        x = self.windows.scatter(cols.reshape(n, g * cg, ho, wo, kh, kw))
        return x[:, :, 0, :] if self.one_d else x

    def from_vectors_T(self, dy: np.ndarray) -> np.ndarray:
        dy = self._as4d(dy)
        n, c = dy.shape[:2]
        ho, wo = self.windows.out_hw
        return dy.transpose(0, 2, 3, 1).reshape(n, ho * wo, self.groups, c // self.groups)

    @property
    def positions(self) -> int:
        return self.windows.out_hw[0] * self.windows.out_hw[1]


@dataclass
class MatrixGeometry:
    """Vectors along the last axis of the activation (x @ W^T), or its columns when the activation is a
    2-D right operand (W @ x, Gemm transA); likewise the output holds vectors as rows or as columns."""
    in_columns: bool = False
    out_columns: bool = False

    def to_vectors(self, x: np.ndarray, extra: int = 0) -> np.ndarray:
        """Vectors (N, P, 1, J + extra): a view when extra = 0; else a copy whose `extra` trailing columns are
        left uninitialised for the caller."""
        if self.in_columns:
            v = x.T[:, None, None, :]
        else:
            v = x.reshape(x.shape[0] if x.ndim > 1 else 1, -1, 1, x.shape[-1])
        if not extra:
            return v
        out = np.empty(v.shape[:-1] + (v.shape[-1] + extra,), dtype=v.dtype)
        out[..., : v.shape[-1]] = v
        return out

    def from_vectors(self, y: np.ndarray, x_shape: tuple) -> np.ndarray:
        lead = (x_shape[1],) if self.in_columns else tuple(x_shape[:-1])
        out = y.reshape(lead + (y.shape[-1],))
        return out.T if self.out_columns else out

    def to_vectors_T(self, v: np.ndarray, x_shape: tuple) -> np.ndarray:
        return v[:, 0, 0, :].T if self.in_columns else v.reshape(x_shape)

    def from_vectors_T(self, dy: np.ndarray) -> np.ndarray:
        if self.out_columns:
            dy = dy.T
        return dy.reshape(dy.shape[0] if dy.ndim > 1 else 1, -1, 1, dy.shape[-1])

    positions = 1
