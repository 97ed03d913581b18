"""Resize (and the old Upsample) of non-batch axes: one interpolation matrix per resized axis, nearest, linear or
cubic, as the ONNX Resize spec defines them; a linear map, so exact moments for independent elements."""
from __future__ import annotations

import numpy as np
import onnx
import sympy

from memse_compiler.ir.ops.base import Linearization, OpRule, batch_sized_shape, register
from memse_compiler.ir.ops.indexing import _sample_shape


NEAREST_MODES = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil")
COORDINATE_MODES = ("half_pixel", "half_pixel_symmetric", "pytorch_half_pixel", "align_corners", "asymmetric")


def cubic_weights(t: np.ndarray, a: float) -> np.ndarray:
    """Keys' cubic convolution weights (ONNX Resize, `cubic_coeff_a` = a) of the neighbours at offsets -1, 0, 1, 2
    from floor(x), for the fractional parts t: (n, 4)."""
    one = t.dtype.type(1)       # computed in t's precision

    def near(d):        # |d| <= 1
        return ((a + 2 * one) * d - (a + 3 * one)) * d * d + one

    def far(d):         # 1 < |d| < 2
        return ((a * d - 5 * a) * d + 8 * a) * d - 4 * a
    return np.stack([far(t + one), near(t), near(one - t), far(2 * one - t)], axis=-1)


def resize_matrix(n_in: int, n_out: int, scale: float, mode: str, coordinate: str, nearest: str,
                  cubic_a: float = -0.75, exclude_outside: bool = False) -> np.ndarray:
    """(n_out, n_in) interpolation matrix of one axis, as the ONNX Resize spec defines it: the output coordinate
    mapped back to the input, then the nearest element, the two linear neighbours or the four cubic ones, clamped
    to the edge (cubic with `exclude_outside`: those outside get weight 0 and the rest are renormalised). The
    coordinate is computed in float32 as onnxruntime does: an exact .0 or .5 in float64 may round the other way
    there (half_pixel at scale 0.6: 1.5 / 0.6 - 0.5 is 2 in float64, 1.9999999 in float32)."""
    f32 = np.float32
    x, scale, half = np.arange(n_out, dtype=f32), f32(scale), f32(0.5)
    if coordinate == "align_corners":
        src = x * f32(n_in - 1) / f32(n_out - 1) if n_out > 1 else np.zeros_like(x)
    elif coordinate == "asymmetric":
        src = x / scale
    elif coordinate == "pytorch_half_pixel":
        src = (x + half) / scale - half if n_out > 1 else np.zeros_like(x)
    elif coordinate == "half_pixel_symmetric":
        adjustment = f32(n_out) / (scale * f32(n_in))
        src = f32(n_in) / f32(2) * (f32(1) - adjustment) + (x + half) / scale - half
    else:
        src = (x + half) / scale - half
    src = src.astype(np.float64)
    m = np.zeros((n_out, n_in))
    rows = np.arange(n_out)
    if mode == "nearest":
        frac = src - np.floor(src)
        if nearest == "round_prefer_floor":
            idx = np.where(frac <= 0.5, np.floor(src), np.ceil(src))
        elif nearest == "round_prefer_ceil":
            idx = np.where(frac < 0.5, np.floor(src), np.ceil(src))
        else:
            idx = np.floor(src) if nearest == "floor" else np.ceil(src)
        m[rows, np.clip(idx, 0, n_in - 1).astype(int)] = 1.0
        return m
    lo = np.floor(src)
    r = src - lo
    if mode == "cubic":        # the weights in float32 too, as onnxruntime's (5e-7 apart in float64)
        taps = lo[:, None] + np.arange(-1, 3)
        w = cubic_weights(r.astype(f32), f32(cubic_a))
        if exclude_outside:
            w = w * ((taps >= 0) & (taps <= n_in - 1))
            w = w / w.sum(axis=1, keepdims=True, dtype=f32)
        np.add.at(m, (np.repeat(rows[:, None], 4, axis=1), np.clip(taps, 0, n_in - 1).astype(int)), w)
        return m
    np.add.at(m, (rows, np.clip(lo, 0, n_in - 1).astype(int)), 1.0 - r)
    np.add.at(m, (rows, np.clip(lo + 1, 0, n_in - 1).astype(int)), r)
    return m


@register
class ResizeRule(OpRule):
    """Resize, nearest, (bi)linear or (bi)cubic, of non-batch axes: y = A_1 ... A_k x, one matrix per resized axis.
    Linear in the input, so moments are exact for independent elements (var through A^2), like a pool.
    Upsample (opset 7-9) and Resize-10 are the asymmetric coordinate mapping with floor rounding, as onnxruntime
    computes them (it rejects Upsample scales below 1, and its Resize-10 nearest downsampling follows no
    documented mode, so that form is refused)."""
    op_types = ("Resize", "Upsample")

    def operands(self, ctx):
        return [0]

    def parse(self, ctx):
        shape = (None,) + _sample_shape(ctx)
        rank = len(shape)

        def text(name, default):
            v = ctx.attr(name, default)
            return v.decode() if isinstance(v, bytes) else str(v)
        mode, coordinate, nearest = (text("mode", "nearest"), text("coordinate_transformation_mode", "half_pixel"),
                                     text("nearest_mode", "round_prefer_floor"))
        if mode not in ("nearest", "linear", "cubic"):
            raise ctx.fail(f"resize mode '{mode}' is not supported (nearest, linear, cubic)")
        if coordinate not in COORDINATE_MODES:
            raise ctx.fail(f"coordinate_transformation_mode '{coordinate}' is not supported "
                           f"({', '.join(COORDINATE_MODES)})")
        if nearest not in NEAREST_MODES:
            raise ctx.fail(f"nearest_mode '{nearest}' is not supported")
        if int(ctx.attr("antialias", 0)) and mode != "nearest":
            raise ctx.fail("antialias=1 is not supported")
        if text("keep_aspect_ratio_policy", "stretch") != "stretch":
            raise ctx.fail("keep_aspect_ratio_policy other than 'stretch' is not supported")
        axes = ctx.attr("axes")
        axes = list(range(rank)) if axes is None else [int(a) % rank for a in axes]
        if ctx.node.op_type == "Upsample" or ctx.opset < 11:
            scales, sizes = self._legacy_scales(ctx), None
            coordinate, nearest = "asymmetric", "floor"
            if ctx.node.op_type == "Resize" and mode == "nearest" and min(np.ravel(scales)) < 1:
                raise ctx.fail("opset-10 nearest downsampling is not supported (export at opset 11 or later)")
        else:
            scales = ctx.const(2) if len(ctx.node.input) > 2 and ctx.node.input[2] else None
            sizes = ctx.const(3) if len(ctx.node.input) > 3 and ctx.node.input[3] else None
            if (len(ctx.node.input) > 2 and ctx.node.input[2] and scales is None) or \
                    (len(ctx.node.input) > 3 and ctx.node.input[3] and sizes is None):
                raise ctx.fail("the scales and sizes must be constants")
        if scales is not None and np.size(scales):
            scale = dict(zip(axes, (float(s) for s in np.ravel(scales))))
            out = {a: int(np.floor(shape[a] * scale[a])) for a in axes if a}
        elif sizes is not None and np.size(sizes):
            out = dict(zip(axes, (int(s) for s in np.ravel(sizes))))
            scale = {a: (float(np.float32(out[a]) / np.float32(shape[a])) if a else 1.0) for a in axes}
        else:
            raise ctx.fail("neither scales nor sizes is given")
        keep_batch = None
        if 0 in axes and sizes is not None and not (scales is not None and np.size(scales)):
            # 0: the frontend's mark for a batch size read from a Shape (`F.interpolate(x, size=...)`); any other
            # number is an export batch baked in, which onnxruntime would apply at another batch
            if out[0] != 0:
                raise ctx.fail("sizes that include the batch axis are not supported (export with a scale factor)")
            keep_batch = [int(v) for v in np.ravel(sizes)[1:]]   # the sizes after the marked entry
        if scale.get(0, 1.0) != 1.0:
            raise ctx.fail("resizing the batch axis (0) is not supported")
        matrices = {}
        for a in axes:
            if a == 0 or (out[a] == shape[a] and scale[a] == 1.0):
                continue
            if out[a] <= 0:
                raise ctx.fail(f"axis {a} would be resized to {out[a]} elements")
            matrices[a] = resize_matrix(shape[a], out[a], scale[a], mode, coordinate, nearest,
                                        float(ctx.attr("cubic_coeff_a", -0.75)),
                                        bool(int(ctx.attr("exclude_outside", 0))))
        return {"mode": mode, "matrices": matrices, "keep_batch": keep_batch}

    def emit(self, node, attrs, const):
        """Sizes whose batch entry is the frontend's 0: the executor reads the batch from the input, as the
        exported graph did."""
        if attrs.get("keep_batch") is None:
            return [node]
        nodes, sizes = batch_sized_shape(node.input[0], attrs["keep_batch"], node.name, const)
        resized = onnx.NodeProto()
        resized.CopyFrom(node)
        resized.input[3] = sizes
        return nodes + [resized]

    @staticmethod
    def _legacy_scales(ctx) -> np.ndarray:
        """Upsample-7/8's `scales` attribute, or the scales input of Upsample-9 and Resize-10."""
        if len(ctx.node.input) > 1 and ctx.node.input[1]:
            scales = ctx.const(1)
            if scales is None:
                raise ctx.fail("the scales must be a constant")
            return scales
        scales = ctx.attr("scales")
        if scales is None:
            raise ctx.fail("no scales given")
        return np.asarray(scales, float)

    @staticmethod
    def _apply(matrices: dict, x: np.ndarray, transpose: bool = False) -> np.ndarray:
        for a, m in matrices.items():
            x = np.moveaxis(np.tensordot(m.T if transpose else m, x, axes=(1, a)), 0, a)
        return x

    def forward(self, attrs, xs):
        return [self._apply(attrs["matrices"], xs[0])]

    def moments(self, attrs, means, variances):
        squared = {a: m * m for a, m in attrs["matrices"].items()}
        return [self._apply(attrs["matrices"], means[0])], [self._apply(squared, variances[0])], Linearization()

    def vjp(self, attrs, lin, gouts, in_shapes):
        return [None if gouts[0] is None else self._apply(attrs["matrices"], gouts[0], transpose=True)]

    def averages(self, attrs) -> bool:
        return attrs["mode"] != "nearest"

    def expressions(self, attrs, mus, vs, node):
        if attrs["mode"] == "nearest":
            return [mus[0]], [vs[0]]
        return [sympy.Function("Resize")(mus[0])], [sympy.Function("Resize2")(vs[0])]
