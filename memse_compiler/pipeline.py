"""The pass manager and the default pipeline; `compile_model` is the one-call Python API."""
from __future__ import annotations

import os
import time
from typing import Iterable, Mapping, Sequence

import numpy as np
import onnx

from memse_compiler.frontend import build_graph
from memse_compiler.ir import MemseGraph
from memse_compiler.ir.errors import MemseInputError
from memse_compiler.ir.feeds import Inputs, feed_batch, graph_feed, input_dtype
from memse_compiler.ir.ops.base import node_attribute
from memse_compiler.ir.pass_base import Pass, PassContext


class Pipeline:
    """Runs passes in order, timing each (``g.graph["timing"]["passes"]``)."""

    def __init__(self, passes: Iterable[Pass]):
        self.passes = list(passes)

    def insert_after(self, name: str, new: Pass) -> "Pipeline":
        idx = next(i for i, p in enumerate(self.passes) if p.name == name)
        self.passes.insert(idx + 1, new)
        return self

    def run(self, g: MemseGraph, ctx: PassContext) -> MemseGraph:
        timing = g.graph.setdefault("timing", {}).setdefault("passes", {})
        for p in self.passes:
            t0 = time.perf_counter()
            g = p.apply(g, ctx)
            timing[p.name] = timing.get(p.name, 0.0) + time.perf_counter() - t0
        return g

    def __repr__(self) -> str:
        return "Pipeline([" + ", ".join(p.name for p in self.passes) + "])"


def lowering_passes() -> list[Pass]:
    from passes import Calibrate, FoldBatchNorm, FoldBiasAdd, MapConductances, PlaceConverters, TileCrossbars
    return [FoldBatchNorm(), FoldBiasAdd(), Calibrate(), MapConductances(), TileCrossbars(), PlaceConverters()]


def analysis_passes() -> list[Pass]:
    from passes import analysis_pass_list
    return analysis_pass_list()


def default_pipeline(analysis: bool = True) -> Pipeline:
    return Pipeline(lowering_passes() + (analysis_passes() if analysis else []))


def check_batch(shape: Sequence[int | None], n: int) -> None:
    """A model whose batch stays fixed (frontend.batch_generic could not free it, or a layer sums over the
    input's axis 0) runs on exactly that many inputs."""
    if shape[0] is not None and n != shape[0]:
        raise MemseInputError(f"the model fixes its batch at {shape[0]} and {n} inputs were given: "
                              f"evaluate {shape[0]} (--batch {shape[0]}) or export with a dynamic batch axis")


def synthetic_inputs(shape: Sequence[int | None], batch: int, seed: int | np.random.Generator) -> np.ndarray:
    """The documented default evaluation batch: uniform on [0, 1) (normalised image-like inputs)."""
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    return rng.random((batch,) + tuple(shape[1:]))


def synthetic_feed(g: MemseGraph, batch: int, seed: int) -> Inputs:
    """`synthetic_inputs` for every float data input, drawn in input order from one generator (an array for a
    one-input model, else a dict by name). An integer input that indexes a constant table (token ids into an
    embedding) gets ids drawn uniformly over the table's rows; any other integer or bool input (a mask) ones."""
    rng = np.random.default_rng(seed)
    feed = {}
    for name in g.graph["inputs"]:
        dtype = input_dtype(g, name)
        shape = (batch,) + tuple(g.tensors[name][1:])
        if dtype.kind == "f":
            feed[name] = synthetic_inputs(g.tensors[name], batch, rng)
        else:
            rows = index_range(g, name)
            feed[name] = (rng.integers(0, rows, shape) if rows else np.ones(shape)).astype(dtype)
    return next(iter(feed.values())) if len(feed) == 1 else feed


def index_range(g: MemseGraph, name: str) -> int | None:
    """The number of rows of the constant table a Gather reads with the input `name` as indices, if one does."""
    for unit in g.consumers(name):
        d = g.nodes[unit]
        node = d.get("onnx_node")
        if node is not None and node.op_type == "Gather" and len(node.input) > 1 and node.input[1] == name and \
                node.input[0] in g.graph["constants"]:
            return int(g.graph["constants"][node.input[0]].shape[node_attribute(node, "axis", 0)])
    return None


def checked_inputs(g: MemseGraph, x: Inputs, label: str = "inputs") -> Inputs:
    """`x` (an array, or a dict by input name) as float64, checked against the model's data inputs: every input
    given, its shape (N, ...) matching, finite, one common N, which a fixed-batch model must match. Returned in
    the form given."""
    feed = graph_feed(g, x, label=label)
    for name, v in feed.items():
        shape = g.tensors[name]
        want = tuple(shape[1:])
        if v.ndim != len(shape) or tuple(v.shape[1:]) != want:
            raise MemseInputError(f"{label}: input shape {v.shape} does not match the model input '{name}' of shape "
                                  f"(N, {', '.join(map(str, want))})")
        if v.shape[0] == 0:
            raise MemseInputError(f"{label}: contains no samples")
        rows = None if v.dtype.kind == "f" else index_range(g, name)
        if rows is not None and v.size and (v.min() < -rows or v.max() >= rows):
            raise MemseInputError(f"{label}: input '{name}' indexes a table of {rows} rows, and holds "
                                  f"{v.min() if v.min() < -rows else v.max()}")
        if v.dtype.kind == "f" and not np.all(np.isfinite(v)):
            raise MemseInputError(f"{label}: inputs contain NaN or inf" +
                                  (f" (input '{name}')" if len(feed) > 1 else ""))
        check_batch(shape, v.shape[0])
    return feed if isinstance(x, Mapping) or len(feed) > 1 else feed[g.graph["inputs"][0]]


def load_inputs(path: str | os.PathLike, g: MemseGraph, batch: int | None = None) -> Inputs:
    """Read evaluation inputs from .npy (a one-input model) or .npz (keyed by the input names; a one-input model
    also takes an .npz holding one array) and check them; the first `batch` samples."""
    label = str(path)
    names = g.graph["inputs"]
    data = _read_array_file(path, ".npy/.npz")
    if isinstance(data, np.lib.npyio.NpzFile):
        keys = list(data.keys())
        if all(n in keys for n in names):
            arrays = {n: np.asarray(data[n]) for n in names}
        elif len(names) == 1 and len(keys) == 1:
            arrays = {names[0]: np.asarray(data[keys[0]])}
        else:
            missing = [n for n in names if n not in keys]
            raise MemseInputError(f"{label}: has arrays {keys}; name " +
                                  (f"one '{names[0]}'" if len(names) == 1 else
                                   f"one per data input (missing {', '.join(repr(n) for n in missing)})"))
    elif len(names) > 1:
        raise MemseInputError(f"{label}: the model has {len(names)} data inputs ({', '.join(map(repr, names))}): "
                              f"give an .npz with one array per input name")
    else:
        arrays = {names[0]: np.asarray(data)}
    for name, v in arrays.items():
        if input_dtype(g, name).kind == "f" and v.dtype.kind != "f":
            raise MemseInputError(f"{label}: inputs must be floating point, got dtype {v.dtype}" +
                                  (f" for '{name}'" if len(names) > 1 else ""))
    if batch is not None:
        arrays = {n: v[:batch] for n, v in arrays.items()}
    feed = checked_inputs(g, arrays, label)
    return feed[names[0]] if len(names) == 1 else feed


def checked_labels(g: MemseGraph, labels, n: int, label: str = "labels") -> np.ndarray:
    """Class labels of the evaluation samples (the first `n` if there are more): integers in [0, classes), one per
    sample of a classifier-shaped output (batch, classes), or one per sample and position of a per-position one
    ((batch, tokens) of (batch, tokens, classes), (batch, H, W) of (batch, classes, H, W)); they give the float and
    the chip accuracy (passes/agreement.py)."""
    from passes.agreement import instance_shape, output_class_axis
    labels = np.asarray(labels)
    if labels.ndim < 1 or labels.dtype.kind not in "iu":
        raise MemseInputError(f"{label}: labels must be an integer array (1-D integer array for (batch, classes)), "
                              f"got {labels.dtype} of shape {labels.shape}")
    if len(labels) < n:
        raise MemseInputError(f"{label}: {len(labels)} labels for {n} evaluation samples")
    labels = labels[:n].astype(np.int64)
    layouts = [(tuple(g.tensors.get(o, ())), output_class_axis(g, o)) for o in g.graph["outputs"]]
    layouts = [(s, axis) for s, axis in layouts if axis is not None]
    if not layouts:
        raise MemseInputError(f"{label}: no output is (batch, classes), so labels have nothing to score")
    classes = [s[axis] for s, axis in layouts if instance_shape(s, axis)[1:] == labels.shape[1:]]
    if not classes:
        wanted = " or ".join(str(["samples", *instance_shape(s, axis)[1:]]) for s, axis in layouts)
        raise MemseInputError(f"{label}: labels of shape {list(labels.shape)} fit no classifier output (it takes "
                              f"{wanted})")
    if labels.min() < 0 or labels.max() >= max(classes):
        raise MemseInputError(f"{label}: labels must lie in [0, {max(classes)}), got {labels.min()}..{labels.max()}")
    return labels


def load_labels(path: str | os.PathLike, g: MemseGraph, n: int) -> np.ndarray:
    """`checked_labels` from a .npy file."""
    return checked_labels(g, _read_array_file(path, ".npy"), n, str(path))


def _read_array_file(path: str | os.PathLike, kinds: str):
    """np.load of a user's file; a missing or unreadable one is one line naming it."""
    try:
        return np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise MemseInputError(f"{path}: no such file") from None
    except Exception as exc:
        raise MemseInputError(f"{path}: not a readable {kinds} file ({type(exc).__name__})") from None


def compile_model(model: str | os.PathLike | onnx.ModelProto, device, inputs: Inputs | None = None, *,
                  batch: int = 64, seed: int = 0, pipeline: Pipeline | None = None,
                  options: dict | None = None, labels=None) -> tuple[MemseGraph, PassContext]:
    """Build the graph of `model`, then run `pipeline` (default: lowering + analysis) on `device`.

    `device` is a device_models.Device (or anything load_device accepts). Returns the annotated graph and
    the pass context (device, inputs, options). `inputs`: the evaluation batch, an array, or for a model with
    several data inputs a dict by input name (None: `synthetic_feed`). `labels`: the samples' classes, for the
    float and chip accuracy of a classifier output (`checked_labels`): (batch,) for (batch, classes), (batch, H, W)
    for a per-pixel (batch, classes, H, W), (batch, tokens) for a per-token (batch, tokens, classes).
    """
    from device_models import Device, load_device
    if not isinstance(device, Device):
        device = load_device(device)
    g = build_graph(model)
    inputs = checked_inputs(g, synthetic_feed(g, batch, seed) if inputs is None else inputs)
    if labels is not None:
        g.graph["labels"] = checked_labels(g, labels, feed_batch(inputs))
    ctx = PassContext(device=device, inputs=inputs,
                      options={"seed": seed, **(options or {})})
    g.graph["device"] = device
    g.graph["options"] = dict(ctx.options)
    t0 = time.perf_counter()
    g = (pipeline or default_pipeline()).run(g, ctx)
    g.graph.setdefault("timing", {})["compile_s"] = time.perf_counter() - t0
    return g, ctx
