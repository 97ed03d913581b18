"""The evaluation batch of a graph's data inputs: one array (a one-input model) or a dict keyed by input name.

Every consumer of an input batch (interpreters, calibration, the moment passes, the Monte-Carlo executor) goes
through `input_feed`, so a model with several data inputs (two branches, an attention mask fed beside the
tokens) is handled in one place: all of them share the batch on axis 0.
"""
from __future__ import annotations

from typing import Mapping, Union

import numpy as np
import onnx

from memse_compiler.ir.errors import MemseInputError

Inputs = Union[np.ndarray, Mapping[str, np.ndarray]]


def input_dtype(g, name: str) -> np.dtype:
    """The dtype the model declares for data input `name` (float32 when the graph does not say)."""
    return np.dtype((g.graph.get("input_types") or {}).get(name, "float32"))


def probe_input(rng: np.random.Generator, shape: tuple, dtype) -> np.ndarray:
    """A batch to probe the model with: uniform on [0, 1) for a float input; ones for ids and masks (a valid index,
    nothing masked out)."""
    return rng.random(shape).astype(dtype) if np.dtype(dtype).kind == "f" else np.ones(shape, dtype)


def input_feed(names: list[str], x: Inputs, dtype=np.float64, types: Mapping[str, str] | None = None,
               label: str = "inputs") -> dict[str, np.ndarray]:
    """{input name: batch} for the data inputs `names` (a graph's ``g.graph["inputs"]``), checked to cover them
    all and to share one batch size. Float inputs as `dtype`; an input `types` declares int or bool (token ids, a
    mask) must be given as integers or booleans, and is kept as its declared type. `label` starts the errors
    (the file the batch came from)."""
    if isinstance(x, Mapping):
        missing = [n for n in names if n not in x]
        extra = [k for k in x if k not in names]
        if missing or extra:
            what = (f"no batch for {', '.join(repr(n) for n in missing)}" if missing else
                    f"{', '.join(repr(k) for k in extra)} is not a data input")
            raise MemseInputError(f"{label}: {what} (the model's data inputs: {', '.join(map(repr, names))})")
        given = {n: x[n] for n in names}
    else:
        if len(names) != 1:
            raise MemseInputError(f"the model has {len(names)} data inputs ({', '.join(map(repr, names))}): "
                                  f"give one batch per input, keyed by name (.npz, or a dict in Python)")
        given = {names[0]: x}
    feed = {}
    for n, v in given.items():
        declared = np.dtype((types or {}).get(n, "float32"))
        v = np.asarray(v)
        if declared.kind == "f":
            feed[n] = v.astype(dtype, copy=False)
        elif v.dtype.kind in "iub":
            feed[n] = v.astype(declared, copy=False)
        else:
            raise MemseInputError(f"{label}: input '{n}' is {declared} in the model (ids or a mask), got {v.dtype}")
    sizes = {n: (v.shape[0] if v.ndim else None) for n, v in feed.items()}
    if len(set(sizes.values())) > 1:
        listed = ", ".join(f"'{n}' {s}" for n, s in sizes.items())
        raise MemseInputError(f"{label}: the data inputs' batches differ in size ({listed})")
    return feed


def graph_feed(g, x: Inputs, dtype=np.float64, label: str = "inputs") -> dict[str, np.ndarray]:
    """`input_feed` for the data inputs of graph `g`, with their declared types."""
    return input_feed(g.graph["inputs"], x, dtype, g.graph.get("input_types"), label)


def feed_batch(feed: Inputs) -> int:
    """The common batch size of a checked feed (a dict by input name, or the one input's array)."""
    return int(np.shape(next(iter(feed.values())) if isinstance(feed, Mapping) else feed)[0])


def same_feed(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray]) -> bool:
    """Whether two feeds hold the same batches (same names, shapes and values)."""
    return a.keys() == b.keys() and all(np.shape(a[k]) == np.shape(b[k]) and np.array_equal(a[k], b[k])
                                        for k in a)


def reference_feed(g) -> dict[str, np.ndarray] | None:
    """The evaluation batch a calibrated graph was compiled on (from its float reference), or None."""
    ref = g.graph.get("reference")
    if not ref or not g.graph.get("inputs") or any(n not in ref for n in g.graph["inputs"]):
        return None
    return {n: ref[n] for n in g.graph["inputs"]}


INPUT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.INT64, onnx.TensorProto.INT32,
               onnx.TensorProto.BOOL)


def _shape(vi: onnx.ValueInfoProto) -> tuple | None:
    t = vi.type.tensor_type
    return tuple(d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim) if t.HasField("shape") else None


def checked_data_inputs(inputs: list[onnx.ValueInfoProto], label: str) -> list[onnx.ValueInfoProto]:
    """A model's data inputs, checked: at least one; each float (or int/bool: token ids, a mask) with static sizes
    but for its batch axis (0); one batch dimension for all."""
    if not inputs:
        raise MemseInputError(f"{label}: the model has no data input (every graph input is an initializer)")
    for vi in inputs:
        shape = _shape(vi)
        if not shape:
            raise MemseInputError(f"{label}: input '{vi.name}' has no static shape")
        for i, d in enumerate(shape[1:], start=1):
            if d is None:
                raise MemseInputError(f"{label}: input '{vi.name}' has a dynamic dimension {i}; only the batch "
                                      f"dimension (0) may be symbolic")
        if vi.type.tensor_type.elem_type not in INPUT_TYPES:
            raise MemseInputError(f"{label}: input '{vi.name}' must be float32/64 (or int32/64 or bool, read by exact "
                                  f"ops such as an embedding lookup or a mask), not "
                                  f"{onnx.TensorProto.DataType.Name(vi.type.tensor_type.elem_type)}")
    batches = {vi.name: _shape(vi)[0] for vi in inputs}
    if len(set(batches.values())) > 1:
        listed = ", ".join(f"'{n}' {b if b is not None else 'dynamic'}" for n, b in batches.items())
        raise MemseInputError(f"{label}: the data inputs must share their batch dimension (axis 0), found {listed}")
    return inputs
