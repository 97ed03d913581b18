"""Ops that copy input elements (Slice, Gather, Split, Pad) or resample them (Resize): exact linear maps.

A copying op is the same map for every sample, computed once at parse time by running the op on the element
indices of one sample: `sources[k]` holds, for every element of output k, the (flat, per-sample) input
element it copies, or -1 where the op writes a constant (Pad). Forward, moments and the transposed sensitivity
all go through that one map, so they cannot disagree. Resize is separable: one interpolation matrix per
resized axis, the ONNX coordinate rules written out once in `resize_matrix`.
"""
from __future__ import annotations

import numpy as np
import onnx
import sympy

from memse_compiler.ir.ops.base import Linearization, OpRule, ParseContext, batch_sized_shape, register


def _sample_shape(ctx: ParseContext) -> tuple[int, ...]:
    shape = tuple(ctx.shape(0))
    if not shape or any(d is None for d in shape[1:]):
        raise ctx.fail(f"the input needs a static shape past the batch axis, not {shape}")
    return shape[1:]


def _const_ints(ctx: ParseContext, i: int, what: str) -> list[int] | None:
    """A constant integer input (None when absent); a computed one fails with `what` named."""
    if i >= len(ctx.node.input) or not ctx.node.input[i]:
        return None
    v = ctx.const(i)
    if v is None:
        raise ctx.fail(f"{what} must be a constant")
    return [int(a) for a in np.ravel(v)]


def _as_range(src: np.ndarray) -> tuple[int, int] | None:
    """(start, stop) when an output copies one contiguous run of input elements, in order (a Slice of a
    leading axis, a Split): its copy and its transpose are then plain slices."""
    flat = src.ravel()
    if flat.size and flat[0] >= 0 and np.array_equal(flat, np.arange(flat[0], flat[0] + flat.size)):
        return int(flat[0]), int(flat[0] + flat.size)
    return None


class CopyRule(OpRule):
    """y_k[n, e] = x[n, sources_k[e]] (or `fill` where sources_k[e] = -1). Subclasses give `parse_copy`
    (the attributes) and `select(attrs, x, fill)` (the op on a batch of any dtype, per output)."""

    def operands(self, ctx):
        return [0]

    def parse_copy(self, ctx: ParseContext) -> dict:
        raise NotImplementedError

    def select(self, attrs: dict, x: np.ndarray, fill) -> list[np.ndarray]:
        raise NotImplementedError

    def parse(self, ctx):
        attrs = self.parse_copy(ctx)
        shape = _sample_shape(ctx)
        index = np.arange(int(np.prod(shape)), dtype=np.int64).reshape((1,) + shape)
        attrs["sources"] = [s[0] for s in self.select(attrs, index, -1)]
        attrs["ranges"] = [_as_range(src) for src in attrs["sources"]]
        attrs.setdefault("fill", 0.0)
        return attrs

    @staticmethod
    def _copy(attrs: dict, x: np.ndarray, fill: float) -> list[np.ndarray]:
        n = x.shape[0]
        flat = x.reshape(n, -1)
        outs = []
        for src, run in zip(attrs["sources"], attrs["ranges"]):
            if run is not None:
                outs.append(flat[:, run[0]:run[1]].copy().reshape((n,) + src.shape))
                continue
            y = flat[:, np.maximum(src, 0).ravel()]
            constant = (src < 0).ravel()
            if constant.any():
                y[:, constant] = fill
            outs.append(y.reshape((n,) + src.shape))
        return outs

    def forward(self, attrs, xs):
        return self._copy(attrs, xs[0], attrs["fill"])

    def moments(self, attrs, means, variances):
        return self._copy(attrs, means[0], attrs["fill"]), self._copy(attrs, variances[0], 0.0), Linearization()

    def vjp(self, attrs, lin, gouts, in_shapes):
        n, size = in_shapes[0][0], int(np.prod(in_shapes[0][1:]))
        g = np.zeros((n, size))
        for src, go, run in zip(attrs["sources"], gouts, attrs["ranges"]):
            if go is None:
                continue
            if run is not None:
                g[:, run[0]:run[1]] += go.reshape(n, -1)
                continue
            src, go = src.ravel(), go.reshape(n, -1)
            keep = src >= 0
            src, go = src[keep], go[:, keep]
            order = np.argsort(src, kind="stable")           # duplicates (Pad reflect, Gather) summed by runs
            src, go = src[order], go[:, order]
            starts = np.flatnonzero(np.r_[True, src[1:] != src[:-1]]) if src.size else np.zeros(0, int)
            if starts.size:
                g[:, src[starts]] += np.add.reduceat(go, starts, axis=1)
        return [g.reshape(in_shapes[0])]

    def expressions(self, attrs, mus, vs, node):
        k = len(attrs["sources"])
        return [mus[0]] * k, [vs[0]] * k


@register
class SliceRule(CopyRule):
    """Slice of a signal (constant starts/ends/axes/steps, not along the batch)."""
    op_types = ("Slice",)

    def parse_copy(self, ctx):
        rank = len(ctx.shape(0))
        if len(ctx.node.input) > 1:                 # opset >= 10: inputs
            starts, ends, axes, steps = (_const_ints(ctx, i, "starts, ends, axes and steps") for i in range(1, 5))
        else:                                       # opset < 10: attributes
            starts, ends, axes, steps = ctx.attr("starts"), ctx.attr("ends"), ctx.attr("axes"), None
        starts, ends = [int(v) for v in np.ravel(starts)], [int(v) for v in np.ravel(ends)]
        axes = list(range(len(starts))) if axes is None else [int(a) % rank for a in np.ravel(axes)]
        steps = [1] * len(starts) if steps is None else [int(s) for s in np.ravel(steps)]
        if 0 in axes:
            raise ctx.fail("slicing the batch axis (0) is not supported")
        return {"axes": axes, "starts": starts, "ends": ends, "steps": steps}

    def select(self, attrs, x, fill):
        idx = [slice(None)] * x.ndim
        for a, s, e, st in zip(attrs["axes"], attrs["starts"], attrs["ends"], attrs["steps"]):
            idx[a] = slice(s, e, st)         # Python's clamping is ONNX's (the ends are not adjusted first)
        return [x[tuple(idx)]]


@register
class GatherRule(CopyRule):
    """Gather with constant indices along a non-batch axis (`x[:, 0]`, a token or channel selection)."""
    op_types = ("Gather",)

    def parse_copy(self, ctx):
        rank = len(ctx.shape(0))
        axis = int(ctx.attr("axis", 0))
        if not -rank <= axis < rank:
            raise ctx.fail(f"axis {axis} is out of range for rank {rank}")
        if axis % rank == 0:
            raise ctx.fail("gathering along the batch axis (0) is not supported")
        idx = ctx.const(1)
        if idx is None:
            raise ctx.fail("the indices must be a constant (a signal's values cannot index)")
        idx = np.asarray(idx).astype(np.int64)
        dim = ctx.shape(0)[axis]
        if idx.size and (idx.min() < -dim or idx.max() >= dim):
            raise ctx.fail(f"an index is out of range for axis {axis % rank} of size {dim}")
        return {"axis": axis % rank, "indices": idx}

    def select(self, attrs, x, fill):
        return [np.take(x, attrs["indices"], axis=attrs["axis"])]


@register
class GatherNDRule(OpRule):
    """GatherND with constant indices and batch_dims 0 (torch's dynamo exporter gathers an adaptive pool's windows,
    or a 1-D linear resize's taps, this way, with the batch moved off the indexed axes). At load (before batch_first
    follows the batch) it becomes what it is: the K indexed leading axes merged into one (Reshape) and a Gather
    of the flat indices along it, which batch_first and the Gather rule then take as any Gather."""
    op_types = ("GatherND",)
    expand_at_load = True

    def expand(self, ctx):
        indices = ctx.const(1)
        if indices is None:
            raise ctx.fail("the indices must be a constant (a signal's values cannot index)")
        if int(ctx.attr("batch_dims", 0)):
            raise ctx.fail("batch_dims > 0 is not supported")
        shape = ctx.shapes.get(ctx.node.input[0])
        k = int(np.shape(indices)[-1])
        if shape is None or any(d is None for d in shape[:k]) or sum(d is None for d in shape[k:]) > 1:
            raise ctx.fail("the sizes of the indexed axes (and all but one of the others) must be known")
        lead = np.asarray(shape[:k], np.int64)
        indices = np.asarray(indices, np.int64)
        if np.any(indices < -lead) or np.any(indices >= lead):
            raise ctx.fail("an index is out of range")
        flat = np.ravel_multi_index(tuple(np.moveaxis(np.where(indices < 0, indices + lead, indices), -1, 0)),
                                    tuple(lead))
        base, data = ctx.node_name, ctx.node.input[0]
        nodes = []
        if k > 1:
            target = [int(np.prod(lead))] + [-1 if d is None else int(d) for d in shape[k:]]
            nodes.append(onnx.helper.make_node("Reshape", [data, ctx.new_const("merged_shape", np.array(target))],
                                               [f"{base}/merged"], name=f"{base}/merge"))
            data = f"{base}/merged"
        nodes.append(onnx.helper.make_node("Gather", [data, ctx.new_const("flat_indices", flat)], [ctx.node.output[0]],
                                           name=base, axis=0))
        return nodes


@register
class SplitRule(CopyRule):
    """Split along a non-batch axis, sizes from the `split` input or attribute, or `num_outputs`/outputs."""
    op_types = ("Split",)

    def parse_copy(self, ctx):
        rank = len(ctx.shape(0))
        axis = int(ctx.attr("axis", 0)) % rank
        if axis == 0:
            raise ctx.fail("splitting the batch axis (0) is not supported")
        dim, parts = ctx.shape(0)[axis], len(ctx.node.output)
        sizes = _const_ints(ctx, 1, "the split sizes") or ctx.attr("split")
        if sizes is None:
            chunk = -(-dim // int(ctx.attr("num_outputs", parts)))    # equal parts, the last one smaller
            sizes = [min(chunk, dim - i * chunk) for i in range(parts)]
        sizes = [int(s) for s in sizes]
        if sum(sizes) != dim or len(sizes) != parts or min(sizes) < 0:
            raise ctx.fail(f"split sizes {sizes} do not cut axis {axis} of size {dim} into {parts} outputs")
        return {"axis": axis, "cuts": list(np.cumsum(sizes)[:-1])}

    def select(self, attrs, x, fill):
        return np.split(x, attrs["cuts"], axis=attrs["axis"])


@register
class PadRule(CopyRule):
    """Pad (constant, reflect, edge or wrap) of non-batch axes; a negative pad crops (constant mode)."""
    op_types = ("Pad",)
    MODES = {"constant": "constant", "reflect": "reflect", "edge": "edge", "wrap": "wrap"}

    def parse_copy(self, ctx):
        rank = len(ctx.shape(0))
        mode = ctx.attr("mode", b"constant")
        mode = mode.decode() if isinstance(mode, bytes) else str(mode)
        if mode not in self.MODES:
            raise ctx.fail(f"pad mode '{mode}' is not supported ({', '.join(self.MODES)})")
        if len(ctx.node.input) > 1:                 # opset >= 11: inputs
            pads = _const_ints(ctx, 1, "the pads")
            value = ctx.const(2) if len(ctx.node.input) > 2 and ctx.node.input[2] else 0.0
            if value is None:
                raise ctx.fail("the constant value must be a constant")
            axes = _const_ints(ctx, 3, "the axes")
        else:
            pads, value, axes = [int(p) for p in ctx.attr("pads")], ctx.attr("value", 0.0), None
        axes = list(range(rank)) if axes is None else [a % rank for a in axes]
        if len(pads) != 2 * len(axes):
            raise ctx.fail(f"{len(pads)} pads for {len(axes)} axes")
        widths = [[0, 0] for _ in range(rank)]
        for i, a in enumerate(axes):
            widths[a] = [pads[i], pads[i + len(axes)]]
        if widths[0] != [0, 0]:
            raise ctx.fail("padding the batch axis (0) is not supported")
        if mode != "constant" and min(min(w) for w in widths) < 0:
            raise ctx.fail(f"negative pads (cropping) are only supported in constant mode, not '{mode}'")
        return {"mode": mode, "widths": widths, "fill": float(np.ravel(value)[0])}

    def select(self, attrs, x, fill):
        crop = tuple(slice(max(-b, 0), x.shape[a] - max(-e, 0)) for a, (b, e) in enumerate(attrs["widths"]))
        widths = [(max(b, 0), max(e, 0)) for b, e in attrs["widths"]]
        mode = self.MODES[attrs["mode"]]
        extra = {"constant_values": fill} if mode == "constant" else {}
        return [np.pad(x[crop], widths, mode=mode, **extra)]


# ---- Resize -----------------------------------------------------------------------------------------

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


@register
class TriluRule(OpRule):
    """Trilu of a signal: the product with the constant 0/1 triangle of its last two axes (exact)."""
    op_types = ("Trilu",)

    def expand(self, ctx):
        shape = ctx.shape(0)
        if len(shape) < 3 or None in shape[-2:]:
            raise ctx.fail("the last two axes must be known and not the batch")
        k = ctx.const(1) if len(ctx.node.input) > 1 and ctx.node.input[1] else np.array(0)
        if k is None:
            raise ctx.fail("k must be a constant")
        rows, cols = int(shape[-2]), int(shape[-1])
        offset = int(np.ravel(k)[0])
        upper = bool(int(ctx.attr("upper", 1)))
        mask = np.triu(np.ones((rows, cols)), offset) if upper else np.tril(np.ones((rows, cols)), offset)
        return [onnx.helper.make_node("Mul", [ctx.node.input[0], ctx.new_const("triangle", mask)],
                                      [ctx.node.output[0]], name=ctx.node_name)]


@register
class CompressRule(OpRule):
    """Compress along a non-batch axis by a constant condition: the Gather of the positions it keeps."""
    op_types = ("Compress",)

    def expand(self, ctx):
        condition = ctx.const(1)
        if condition is None:
            raise ctx.fail("the condition must be a constant")
        if ctx.attr("axis") is None:
            raise ctx.fail("without an axis Compress flattens the batch into its result")
        rank = len(ctx.shape(0))
        axis = int(ctx.attr("axis")) % rank
        if axis == 0:
            raise ctx.fail("compressing the batch axis (0) is not supported")
        keep = np.flatnonzero(np.ravel(condition).astype(bool))
        return [onnx.helper.make_node("Gather", [ctx.node.input[0], ctx.new_const("kept", keep.astype(np.int64))],
                                      [ctx.node.output[0]], name=ctx.node_name, axis=axis)]
