"""The record of one weighted op mapped onto crossbars, and the array maths every consumer shares.

A `CrossbarLayer` is created by the frontend (matrix form: weight (G, O, J), bias (G, O), geometry) and filled
in by the lowering passes (conductances, tiling, converters). The analysis, the Monte-Carlo executor and the
power model all read it, so the noise model of DESIGN §4 is written down once, here and in the passes.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from memse_compiler.ir.geometry import ConvGeometry, MatrixGeometry

TINY_STEP = 1e-30   # quantizer step of a signal that was identically zero in calibration


def converter_levels(bits: int, signed: bool) -> tuple[int, int]:
    """Integer code range of a b-bit quantizer (DESIGN §4.6): symmetric when signed."""
    if signed:
        top = 2 ** (bits - 1) - 1
        return -top, top
    return 0, 2 ** bits - 1


def converter_step(bits: int, full_range: np.ndarray | float, signed: bool) -> np.ndarray:
    top = converter_levels(bits, signed)[1]
    return np.maximum(np.asarray(full_range, dtype=np.float64) / top, TINY_STEP)


def quantize(v: np.ndarray, step: np.ndarray | float, qmin: int, qmax: int) -> np.ndarray:
    """q(v) = step * clip(round(v / step), qmin, qmax), round half to even (as numpy and ONNX Round)."""
    return step * np.clip(np.round(v / step), qmin, qmax)


def crossbar_uses(layers) -> dict[str, list["CrossbarLayer"]]:
    """The ops driving each programmed crossbar (one, or a shared crossbar's several), in the given order."""
    uses: dict[str, list[CrossbarLayer]] = {}
    for layer in layers:
        uses.setdefault(layer.crossbar, []).append(layer)
    return uses


SMALL_BATCH = 16     # weight gradients per sample (no copies of the activations) up to this batch


@dataclass
class CrossbarLayer:
    name: str
    op: str
    input: str
    output: str
    geometry: ConvGeometry | MatrixGeometry
    weight: np.ndarray                 # (G, O, J) float64: the float weight, alpha and folded BN included
    bias: np.ndarray | None            # (G, O) or None
    # MapConductances
    bias_row: bool = False             # bias mapped as the last crossbar row, driven by a constant 1
    scale: str = "layer"
    w_max: np.ndarray | None = None    # (1, 1, 1) per layer or (G, O, 1) per column
    g_range: np.ndarray | None = None  # conductance range G of each scale group, same shape as w_max
    g_min: float = 0.0
    g_plus: np.ndarray | None = None   # (G, O, Jb) quantized target conductances, siemens
    g_minus: np.ndarray | None = None
    # the layer whose programmed crossbar this op drives (an RNN step reusing W and R): its programming noise
    # is that layer's, draw for draw; read noise and converters stay per use. None: a crossbar of its own
    shared_with: str | None = None
    # TileCrossbars
    rows_per_tile: int = 0
    outs_per_tile: int = 0
    row_tiles: int = 0
    col_tiles: int = 0
    # PlaceConverters
    dac_bits: int | None = None
    dac_range: float = 0.0
    dac_signed: bool = True
    adc_bits: int | None = None
    adc_range: np.ndarray | None = None     # (G, R, C): one range per tile
    extra: dict[str, Any] = field(default_factory=dict)

    # ---- shapes ------------------------------------------------------------------------------------
    @property
    def groups(self) -> int:
        return self.weight.shape[0]

    @property
    def outs(self) -> int:
        return self.weight.shape[1]

    @property
    def rows(self) -> int:
        """Crossbar rows used per group (inputs, plus the bias row when mapped)."""
        return self.weight.shape[2] + int(self.bias_row)

    @property
    def crossbar(self) -> str:
        """The name of the programmed crossbar this op drives (its own, or the one it shares)."""
        return self.shared_with or self.name

    @property
    def tiles(self) -> int:
        return self.groups * self.row_tiles * self.col_tiles

    def augmented_weight(self) -> np.ndarray:
        """(G, O, Jb): the float matrix the crossbar holds (bias as the last column when mapped)."""
        if not self.bias_row:
            return self.weight
        return np.concatenate([self.weight, self.bias[:, :, None]], axis=2)

    # ---- mapping -----------------------------------------------------------------------------------
    @property
    def scale_c(self) -> np.ndarray:
        """c = G / Wmax (siemens per weight unit); a group of zeros gets c = 1 (its conductances are g_min)."""
        return np.where(self.w_max > 0, self.g_range / np.where(self.w_max > 0, self.w_max, 1.0), 1.0)

    def weight_from_conductance(self, g_plus: np.ndarray, g_minus: np.ndarray) -> np.ndarray:
        return (g_plus - g_minus) / self.scale_c

    def quantized_weight(self) -> np.ndarray:
        """(G, O, Jb) effective weight of the noiseless programmed chip."""
        return self.weight_from_conductance(self.g_plus, self.g_minus)

    # ---- vectors and tiles -------------------------------------------------------------------------
    def vectors(self, x: np.ndarray, bias_value: float = 1.0) -> np.ndarray:
        """Crossbar input vectors (N, P, G, Jb); the bias row's input is the constant 1 (`bias_value`: what
        that row carries instead, e.g. 0 for a variance)."""
        if not self.bias_row:
            return self.geometry.to_vectors(x)
        v = self.geometry.to_vectors(x, extra=1)
        v[..., -1] = bias_value
        return v

    def split_rows(self, a: np.ndarray) -> np.ndarray:
        """(..., Jb) -> (..., R, rows_per_tile), zero padded: the row tiles."""
        pad = self.row_tiles * self.rows_per_tile - a.shape[-1]
        if pad:
            a = np.concatenate([a, np.zeros(a.shape[:-1] + (pad,), a.dtype)], axis=-1)
        return a.reshape(a.shape[:-1] + (self.row_tiles, self.rows_per_tile))

    def row_slices(self) -> list[slice]:
        """The rows of each row tile."""
        return [slice(r * self.rows_per_tile, min((r + 1) * self.rows_per_tile, self.rows))
                for r in range(self.row_tiles)]

    def partial_sums(self, vec: np.ndarray, matrix: np.ndarray) -> np.ndarray:
        """Per row tile products: vec (N, P, G, Jb) x matrix (G, O, Jb) -> (N, P, G, R, O)."""
        n, p, g, _ = vec.shape
        matrix = np.broadcast_to(matrix, (g, self.outs, self.rows))
        out = np.empty((n, p, g, self.row_tiles, self.outs), dtype=np.result_type(vec, matrix))
        if g == 1:   # one BLAS product per row tile (few, large), on strided views: no copies at all
            flat, out2 = vec.reshape(n * p, -1), out.reshape(n * p, self.row_tiles, self.outs)
            for r, sl in enumerate(self.row_slices()):
                np.matmul(flat[:, sl], matrix[0, :, sl].T, out=out2[:, r, :])
            return out
        xv = np.ascontiguousarray(
            self.split_rows(vec).reshape(n * p, g, self.row_tiles, self.rows_per_tile).transpose(1, 2, 0, 3))
        wt = np.ascontiguousarray(self.split_rows(matrix).transpose(0, 2, 3, 1))          # G, R, rows, O
        ps = np.matmul(xv, wt)                                      # G, R, NP, O
        return ps.transpose(2, 0, 1, 3).reshape(n, p, g, self.row_tiles, self.outs)

    def tile_sums(self, vec: np.ndarray) -> np.ndarray:
        """Sum of vec (N, P, G, Jb) over each row tile's rows -> (N, P, G, R, 1), broadcasting like a partial sum."""
        starts = np.arange(0, self.rows, self.rows_per_tile)
        return np.add.reduceat(vec, starts, axis=-1)[..., None]

    def partial_sums_T(self, dps: np.ndarray, matrix: np.ndarray, rows: int | None = None) -> np.ndarray:
        """Transpose of `partial_sums` in its vector argument: (N, P, G, R, O) -> (N, P, G, Jb), or only its
        first `rows` rows (e.g. without the bias row)."""
        n, p, g, r, o = dps.shape
        matrix = np.broadcast_to(matrix, (g, self.outs, self.rows))
        if g == 1:   # one BLAS product per row tile, on views, straight into the (contiguous) result
            keep = self.rows if rows is None else rows
            out = np.empty((n, p, 1, keep), dtype=np.result_type(dps, matrix))
            flat, out2 = dps.reshape(n * p, r, o), out.reshape(n * p, keep)
            for t, sl in enumerate(self.row_slices()):
                sl = slice(sl.start, min(sl.stop, keep))
                if sl.stop > sl.start:
                    np.matmul(flat[:, t, :], matrix[0, :, sl], out=out2[:, sl])
            return out
        wt = np.ascontiguousarray(self.split_rows(matrix).transpose(0, 2, 1, 3))          # G, R, O, rows
        d = np.matmul(np.ascontiguousarray(dps.reshape(n * p, g, r, o).transpose(1, 2, 0, 3)), wt)  # G, R, NP, rows
        d = d.transpose(2, 0, 1, 3).reshape(n, p, g, r * self.rows_per_tile)
        return d[..., : self.rows if rows is None else rows]

    def weight_grads(self, dps: np.ndarray, vec: np.ndarray) -> np.ndarray:
        """Per-sample gradient of sum(dps * partial_sums(vec, W)) in W: sums over positions.
        dps (N, P, G, R, O), vec (N, P, G, Jb) -> (N, G, O, Jb)."""
        n, p, g, r, o = dps.shape
        out = np.empty((n, g, o, self.rows), dtype=np.result_type(dps, vec))
        if g == 1 and n <= SMALL_BATCH:   # a few samples: one 2-D BLAS product per sample and tile, on views
            for i in range(n):
                for t, sl in enumerate(self.row_slices()):
                    np.matmul(dps[i, :, 0, t, :].T, vec[i, :, 0, sl], out=out[i, 0, :, sl])
            return out
        for t, sl in enumerate(self.row_slices()):   # few row tiles; each a batched BLAS product
            # C-contiguous operands: on strided/transposed stacks numpy's matmul leaves BLAS (30x slower)
            a = np.ascontiguousarray(dps[:, :, :, t, :].transpose(0, 2, 3, 1))       # N, G, O, P
            x = np.ascontiguousarray(vec[:, :, :, sl].transpose(0, 2, 1, 3))         # N, G, P, rows
            out[:, :, :, sl] = np.matmul(a, x)
        return out

    def per_output(self, per_tile: np.ndarray) -> np.ndarray:
        """(G, R, C) tile values -> (G, R, O): each output column inherits its tile's value."""
        return np.repeat(per_tile, self.outs_per_tile, axis=2)[:, :, : self.outs]

    def tile_of_outputs(self) -> np.ndarray:
        return np.arange(self.outs) // self.outs_per_tile

    # ---- converters --------------------------------------------------------------------------------
    def dac_step(self) -> float:
        return float(converter_step(self.dac_bits, self.dac_range, self.dac_signed))

    def dac(self, x: np.ndarray) -> np.ndarray:
        if self.dac_bits is None:
            return x
        return quantize(x, self.dac_step(), *converter_levels(self.dac_bits, self.dac_signed))

    def adc_steps(self) -> np.ndarray:
        """(G, R, O) ADC step of every output column of every row tile."""
        return self.per_output(converter_step(self.adc_bits, self.adc_range, True))

    def adc(self, ps: np.ndarray) -> np.ndarray:
        if self.adc_bits is None:
            return ps
        return quantize(ps, self.adc_steps(), *converter_levels(self.adc_bits, True))

    def combine(self, ps: np.ndarray, x_shape: tuple) -> np.ndarray:
        """Digital partial-sum adder (and digital bias): (N, P, G, R, O) -> output tensor."""
        y = ps.sum(axis=3)
        if self.bias is not None and not self.bias_row:
            y = y + self.bias
        return self.geometry.from_vectors(y, x_shape)

    def forward(self, x: np.ndarray, matrix: np.ndarray | None = None, converters: bool = True) -> np.ndarray:
        """Deterministic hardware forward: DAC, tiles with `matrix` (default: programmed weights), ADC, adder
        (converters=False: ideal DAC and ADCs)."""
        matrix = self.quantized_weight() if matrix is None else matrix
        if not converters:
            return self.combine(self.partial_sums(self.vectors(x), matrix), x.shape)
        return self.combine(self.adc(self.partial_sums(self.vectors(self.dac(x)), matrix)), x.shape)

    def float_forward(self, x: np.ndarray) -> np.ndarray:
        """The op's exact float semantics (no mapping, no converters)."""
        y = np.einsum("npgj,goj->npgo", self.geometry.to_vectors(x), self.weight, optimize=True)
        if self.bias is not None:
            y = y + self.bias
        return self.geometry.from_vectors(y, x.shape)
