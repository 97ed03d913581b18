"""Ops that copy input elements (Slice, Gather, Split, Pad; GatherND, Trilu, CenterCropPad and Compress as those):
exact linear maps. (Resize, which resamples, is ir/ops/resize.py.)

A copying op is the same map for every sample, computed once at parse time by running the op on the element
indices of one sample: `sources[k]` holds, for every element of output k, the (flat, per-sample) input
element it copies, or -1 where the op writes a constant (Pad). Forward, moments and the transposed sensitivity
all go through that one map, so they cannot disagree.
"""
from __future__ import annotations

import numpy as np

from memse_compiler.ir.ops.base import ExpansionWriter, Linearization, OpRule, ParseContext, register


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
        data, w = ctx.node.input[0], ExpansionWriter(ctx)
        if k > 1:
            target = [int(np.prod(lead))] + [-1 if d is None else int(d) for d in shape[k:]]
            data = w.add("Reshape", [data, w.const("merged_shape", np.array(target))], "merged")
        w.add("Gather", [data, w.const("flat_indices", flat)], axis=0)
        return w.nodes


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
        w = ExpansionWriter(ctx)
        w.add("Mul", [ctx.node.input[0], w.const("triangle", mask)])
        return w.nodes


@register
class CenterCropPadRule(OpRule):
    """CenterCropPad of non-batch axes to constant sizes: a centred Slice where the axis is longer (the window's
    start rounded down), a zero Pad where it is shorter (the odd element after); exact data movement."""
    op_types = ("CenterCropPad",)

    def expand(self, ctx):
        shape = ctx.shape(0)
        rank = len(shape)
        sizes = ctx.const(1)
        if sizes is None:
            raise ctx.fail("the target shape must be a constant")
        axes = [int(a) % rank for a in (ctx.attr("axes") or range(rank))]
        sizes = [int(v) for v in np.ravel(sizes)]
        if len(sizes) != len(axes):
            raise ctx.fail(f"{len(sizes)} sizes for {len(axes)} axes")
        x = ctx.node.input[0]
        starts, stops, cropped, pads = [], [], [], [0] * (2 * rank)
        for a, target in zip(axes, sizes):
            if shape[a] == target:
                continue
            if a == 0 or shape[a] is None:
                raise ctx.fail(f"axis {a} is the batch or of unknown size: it cannot be cropped or padded")
            if target < shape[a]:
                start = (shape[a] - target) // 2
                starts.append(start), stops.append(start + target), cropped.append(a)
            else:
                pads[a], pads[rank + a] = (target - shape[a]) // 2, target - shape[a] - (target - shape[a]) // 2
        padded, w = any(pads), ExpansionWriter(ctx)
        def ints(label, values):
            return w.const(label, np.array(values, np.int64))
        if cropped:
            x = w.add("Slice", [x, ints("starts", starts), ints("stops", stops), ints("axes", cropped)],
                      "cropped" if padded else None)
        if padded or not cropped:
            w.add("Pad", [x, ints("pads", pads)], mode="constant")
        return w.nodes


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
        w = ExpansionWriter(ctx)
        w.add("Gather", [ctx.node.input[0], w.const("kept", keep.astype(np.int64))], axis=axis)
        return w.nodes
