"""Element-indexed reads and writes with constant indices: GatherElements, ScatterElements and ScatterND.

torch writes `torch.gather`, `take_along_dim` and `scatter` as the first two, and slice or index assignment
(`z[:, 2:5] = f(y)`, `z[:, [1, 3]] = y`, `z[:, 2:4] = 0`) as a ScatterND between two Transposes (dynamo exporter).
Each output element is one element of an input, so its moments are that element's: the op is data movement, and
it expands into ops that say so (at load, memse_compiler/load_expansion.py, before batch_first follows the batch):

* a read: a Gather of constant flat positions, after a Reshape that flattens the non-batch axes;
* a write of a signal: a Concat of the data and the updates, then a Gather picking, per output element, either
  its own element or the update written there (the last one where indices repeat, as onnxruntime does);
* a write of a constant (`z[:, 2:4] = 0`): a Where of a constant mask.

The indices must be constants. Those an exporter computes from shapes (a Range over a Shape, an Expand to the
input's shape) are evaluated at load at two batch sizes (load_expansion.probed_values); indices that follow the
batch must be the same for every sample (they are then one sample's), and ScatterND must not index the batch.
Refused in one line: indices computed from the data's values, a reduction other than none.
"""
from __future__ import annotations

import numpy as np

from memse_compiler.ir.ops.base import ExpansionWriter, OpRule, ParseContext, register


def _known_shape(ctx: ParseContext, i: int, what: str) -> tuple:
    """The input's shape: static sizes, None (the batch) at most once."""
    shape = np.shape(ctx.const(i)) if ctx.const(i) is not None else ctx.shapes.get(ctx.node.input[i])
    if shape is None or sum(d is None for d in shape) > 1:
        raise ctx.fail(f"the sizes of the {what} must be known (all but the batch)")
    return tuple(shape)


def _same_for_every_sample(ctx: ParseContext, i: int, rows: int | None, what: str) -> np.ndarray:
    """One sample's slice of a constant that follows the batch on axis 0: collapsed at load (size 1 there), or as
    many identical rows as the input has samples (an export with a fixed batch)."""
    value = np.asarray(ctx.const(i))
    if ctx.batch_axes.get(ctx.node.input[i]) == 0:
        return value[0]
    if value.shape[0] != rows:
        raise ctx.fail(f"the {what} must cover every sample on axis 0 (torch expands them to the input's shape)")
    if not np.all(value == value[:1]):
        raise ctx.fail(f"the {what} differ between samples (axis 0); only the same {what} for each sample are "
                       f"supported")
    return value[0]


def _data_batch_first(ctx: ParseContext) -> tuple:
    """The data's shape, checked to carry the batch (or nothing unknown) on axis 0."""
    shape = _known_shape(ctx, 0, "data")
    if None in shape[1:]:
        raise ctx.fail("the data's batch must be on axis 0")
    return shape


def _element_positions(ctx: ParseContext, row: np.ndarray, sample_shape: tuple, axis: int) -> np.ndarray:
    """Flat positions in one sample (of `sample_shape`) of the elements an element-indexed op reaches: `row`'s
    own position with its coordinate on `axis` (of the sample) replaced by its value."""
    if any(r > s for k, (r, s) in enumerate(zip(row.shape, sample_shape)) if k != axis):
        raise ctx.fail(f"the indices' shape {list(row.shape)} exceeds the data's {list(sample_shape)} off the axis")
    size = sample_shape[axis]
    if row.size and (row.min() < -size or row.max() >= size):
        raise ctx.fail(f"an index is out of range for axis {axis + 1} of size {size}")
    coords = list(np.indices(row.shape))
    coords[axis] = np.where(row < 0, row + size, row)
    return np.ravel_multi_index(tuple(coords), sample_shape)


def _axis(ctx: ParseContext, rank: int) -> int:
    axis = int(ctx.attr("axis", 0)) % rank
    if axis == 0:
        raise ctx.fail("indexing along the batch axis (0) is not supported")
    return axis - 1                                 # within one sample


def _no_reduction(ctx: ParseContext) -> None:
    reduction = ctx.attr("reduction", b"none")
    reduction = reduction.decode() if isinstance(reduction, bytes) else str(reduction)
    if reduction != "none":
        raise ctx.fail(f"reduction '{reduction}' is not supported (only none: a write, not an accumulation)")


class _Writer(ExpansionWriter):
    """With the two ops every expansion here writes; `last`: the node's own output."""

    def reshape(self, x: str, target: list[int], label: str, last: bool = False) -> str:
        return self.add("Reshape", [x, self.const(f"{label}_shape", np.array(target, np.int64))],
                        None if last else label)

    def gather(self, x: str, positions: np.ndarray, axis: int, last: bool) -> str:
        return self.add("Gather", [x, self.const("positions", positions.astype(np.int64))],
                        None if last else "gathered", axis=axis)


class _IndexedRule(OpRule):
    """Expanded at load when its indices are known; parsing it as it is means they are not."""
    expand_at_load = True
    probed_inputs = (0, 1, 2)
    what = "indices"

    def parse(self, ctx):
        raise ctx.fail(f"the {self.what} must be constants (computed from the data's values they cannot be "
                       f"followed through the chip; computed from shapes, they are evaluated when the data inputs' "
                       f"sizes other than the batch are static)")


@register
class GatherElementsRule(_IndexedRule):
    op_types = ("GatherElements",)

    def expand(self, ctx):
        if ctx.const(1) is None:
            return None
        shape = _data_batch_first(ctx)
        axis = _axis(ctx, len(shape))
        row = _same_for_every_sample(ctx, 1, shape[0], "indices")
        flat = _element_positions(ctx, np.asarray(row, np.int64), shape[1:], axis)
        w = _Writer(ctx)
        if len(shape) == 2:                   # (N, F): a Gather of the positions along axis 1 is the op
            w.gather(ctx.node.input[0], flat, 1, last=True)
            return w.nodes
        data = w.reshape(ctx.node.input[0], [0, -1], "flat")
        w.reshape(w.gather(data, flat.reshape(-1), 1, last=False), [0, *row.shape], "unflat", last=True)
        return w.nodes


@register
class ScatterElementsRule(_IndexedRule):
    op_types = ("ScatterElements",)

    def expand(self, ctx):
        if ctx.const(1) is None:
            return None
        _no_reduction(ctx)
        shape = _data_batch_first(ctx)
        axis = _axis(ctx, len(shape))
        row = np.asarray(_same_for_every_sample(ctx, 1, shape[0], "indices"), np.int64)
        targets = _element_positions(ctx, row, shape[1:], axis).reshape(-1)
        size = int(np.prod(shape[1:], dtype=np.int64))
        w = _Writer(ctx)
        if ctx.const(2) is not None:          # a constant written: a Where of a constant mask
            values = np.asarray(_same_for_every_sample(ctx, 2, shape[0], "updates"), np.float64)
            if values.shape != row.shape:
                raise ctx.fail(f"the updates' shape {list(values.shape)} is not the indices' {list(row.shape)}")
            return _rows_written(ctx, w, targets, values.reshape(-1), size, (1, *shape[1:]))
        flat = len(shape) > 2
        updates = w.reshape(ctx.node.input[2], [0, -1], "updates_flat") if flat else ctx.node.input[2]
        data = w.reshape(ctx.node.input[0], [0, -1], "flat") if flat and ctx.const(0) is None else ctx.node.input[0]
        return _written(ctx, w, data, updates, targets, size, 1, [0, *shape[1:]] if flat else None,
                        (1, *shape[1:]))


def _written(ctx: ParseContext, w: _Writer, data: str, updates: str, targets: np.ndarray, count: int, axis: int,
             back: list | None, mask_shape: tuple) -> list:
    """A signal written: along `axis`, `count` data elements (flattened) and the updates (flattened) written at
    `targets`; `back`: the Reshape target to the output's shape (None: already it). Into a signal, a Gather of
    Concat(data, updates); into a constant data input, Where(mask, the gathered updates, data)."""
    source = np.arange(count)
    source[targets] = count + np.arange(targets.size)       # numpy keeps the last write, as onnxruntime
    if ctx.const(0) is not None:          # `zeros.scatter(1, idx, y)`, `z = zeros_like(y); z[:, i] = y`
        picked = w.gather(updates, np.maximum(source - count, 0), axis, last=False)
        if back is not None:
            picked = w.reshape(picked, back, "unflat")
        return _where_into_constant(ctx, w, source >= count, picked, mask_shape)
    both = w.add("Concat", [data, updates], "with_updates", axis=axis)
    if back is None:
        w.gather(both, source, axis, last=True)
        return w.nodes
    w.reshape(w.gather(both, source, axis, last=False), back, "unflat", last=True)
    return w.nodes


def _where_into_constant(ctx: ParseContext, w: _Writer, mask: np.ndarray, picked: str, shape: tuple) -> list:
    """Where(mask, picked, data) for a constant data input (written as its own constant: the one the model
    computes may follow the batch, which only broadcasting takes)."""
    data = ctx.new_const("data", np.asarray(ctx.const(0), np.float64))
    w.add("Where", [ctx.new_const("mask", mask.reshape(shape)), picked, data])
    return w.nodes


def _rows_written(ctx: ParseContext, w: _Writer, targets: np.ndarray, rows: np.ndarray, count: int, lead: tuple,
                  rest: tuple = ()) -> list:
    """data with the constant `rows` (each of shape `rest`) written at the flat `targets` of `count` positions laid
    out as `lead` (a 1 in front: the same for every sample): Where(mask, written, data)."""
    mask, written = np.zeros(count, bool), np.zeros((count,) + rest)
    mask[targets], written[targets] = True, rows
    w.add("Where", [ctx.new_const("mask", mask.reshape(lead + (1,) * len(rest))),
                    ctx.new_const("written", written.reshape(lead + rest)), ctx.node.input[0]])
    return w.nodes


def _flat_targets(ctx: ParseContext, indices: np.ndarray, lead: tuple) -> tuple[np.ndarray, int]:
    """ScatterND's index tuples (..., k) over axes of sizes `lead` as flat positions, and how many there are."""
    sizes = np.asarray(lead, np.int64)
    if np.any(indices < -sizes) or np.any(indices >= sizes):
        raise ctx.fail("an index is out of range")
    indices = np.where(indices < 0, indices + sizes, indices)
    return (np.ravel_multi_index(tuple(np.moveaxis(indices, -1, 0)), lead).reshape(-1),
            int(np.prod(lead, dtype=np.int64)))


@register
class ScatterNDRule(_IndexedRule):
    op_types = ("ScatterND",)

    def expand(self, ctx):
        if ctx.const(1) is None:
            return None
        _no_reduction(ctx)
        if ctx.node.input[1] in ctx.batch_axes:
            raise ctx.fail("the indices depend on the batch size (they index the batch axis)")
        indices = np.asarray(ctx.const(1), np.int64)
        shape = _known_shape(ctx, 0, "data")
        k = indices.shape[-1] if indices.ndim else 0
        if _enumerates_samples(indices, shape):
            return _per_sample_scatter(ctx, indices[0, ..., 1:], shape)
        lead, rest = shape[:k], shape[k:]
        if indices.ndim == 0 or k == 0 or k > len(shape) or None in lead:
            raise ctx.fail("the indexed axes must be static and not the batch (torch writes a slice assignment "
                           "with the batch moved after them)")
        targets, count = _flat_targets(ctx, indices, lead)
        merged = [count] + [-1 if d is None else int(d) for d in rest]
        w = _Writer(ctx)
        if ctx.const(2) is not None:          # a constant written (a fill): a Where of a constant mask
            values = np.asarray(ctx.const(2), np.float64)
            free = tuple(1 if ctx.batch_axes.get(ctx.node.input[2]) == indices.ndim - 1 + i else d
                         for i, d in enumerate(rest))
            if values.shape != indices.shape[:-1] + free or None in free:
                raise ctx.fail(f"the updates' shape {list(values.shape)} does not fit the indices and the data")
            return _rows_written(ctx, w, targets, values.reshape((-1,) + free), count, lead, free)
        updates = (w.reshape(ctx.node.input[2], [targets.size] + merged[1:], "updates_merged")
                   if indices.ndim != 2 else ctx.node.input[2])
        data = w.reshape(ctx.node.input[0], merged, "merged") if k > 1 and ctx.const(0) is None else ctx.node.input[0]
        return _written(ctx, w, data, updates, targets, count, 0, [*lead, *merged[1:]] if k > 1 else None,
                        lead + (1,) * len(rest))


def _enumerates_samples(indices: np.ndarray, shape: tuple) -> bool:
    """Whether ScatterND's indices write every sample of a fixed batch alike: their first coordinate is the sample,
    index by index along their leading axis (torch's legacy exporter writes `z[:, 1] = y` at a fixed batch so), and
    the other coordinates are the same for each sample."""
    batch = shape[0] if shape else None
    if batch is None or indices.ndim < 3 or indices.shape[0] != batch or indices.shape[-1] < 2:
        return False
    samples = np.arange(batch).reshape((batch,) + (1,) * (indices.ndim - 2))
    return bool(np.all(indices[..., 0] == samples) and np.all(indices[..., 1:] == indices[:1, ..., 1:]))


def _per_sample_scatter(ctx: ParseContext, indices: np.ndarray, shape: tuple) -> list:
    """ScatterND of each sample alike, `indices` one sample's (m..., k) over its axes 1..k: the leading sample axes
    merged into one (Reshape), the written signal's rows (or constant values) picked by position along it."""
    k = indices.shape[-1]
    lead, rest = tuple(shape[1:1 + k]), tuple(shape[1 + k:])
    if None in lead + rest:
        raise ctx.fail("the indexed axes and the others must be static")
    targets, count = _flat_targets(ctx, indices, lead)
    w = _Writer(ctx)
    if ctx.const(2) is not None:
        values = np.asarray(_same_for_every_sample(ctx, 2, shape[0], "updates"), np.float64)
        return _rows_written(ctx, w, targets, values.reshape((-1,) + rest), count, (1, *lead), rest)
    merged = [0, count, *rest]
    updates = w.reshape(ctx.node.input[2], [0, targets.size, *rest], "updates_merged")
    data = w.reshape(ctx.node.input[0], merged, "merged") if ctx.const(0) is None else ctx.node.input[0]
    return _written(ctx, w, data, updates, targets, count, 1, [0, *lead, *rest], (1, *lead) + (1,) * len(rest))
