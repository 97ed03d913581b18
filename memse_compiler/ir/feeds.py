"""The evaluation batch of a graph's data inputs: one array (a one-input model) or a dict keyed by input name.

Every consumer of an input batch (interpreters, calibration, the moment passes, the Monte-Carlo executor) goes
through `input_feed`, so a model with several data inputs (two branches, an attention mask fed beside the
tokens) is handled in one place: all of them share the batch on axis 0.
"""
from __future__ import annotations

from typing import Mapping, Union

import numpy as np

from memse_compiler.ir.errors import MemseInputError

Inputs = Union[np.ndarray, Mapping[str, np.ndarray]]


def input_feed(names: list[str], x: Inputs, dtype=np.float64) -> dict[str, np.ndarray]:
    """{input name: batch} for the data inputs `names` (a graph's ``g.graph["inputs"]``), checked to cover them
    all and to share one batch size."""
    if isinstance(x, Mapping):
        missing = [n for n in names if n not in x]
        extra = [k for k in x if k not in names]
        if missing or extra:
            what = (f"no batch for {', '.join(repr(n) for n in missing)}" if missing else
                    f"{', '.join(repr(k) for k in extra)} is not a data input")
            raise MemseInputError(f"inputs: {what} (the model's data inputs: {', '.join(map(repr, names))})")
        feed = {n: np.asarray(x[n], dtype=dtype) for n in names}
    else:
        if len(names) != 1:
            raise MemseInputError(f"the model has {len(names)} data inputs ({', '.join(map(repr, names))}): "
                                  f"give one batch per input, keyed by name (.npz, or a dict in Python)")
        feed = {names[0]: np.asarray(x, dtype=dtype)}
    sizes = {n: (v.shape[0] if v.ndim else None) for n, v in feed.items()}
    if len(set(sizes.values())) > 1:
        listed = ", ".join(f"'{n}' {s}" for n, s in sizes.items())
        raise MemseInputError(f"inputs: the data inputs' batches differ in size ({listed})")
    return feed


def feed_batch(feed: Mapping[str, np.ndarray]) -> int:
    """The common batch size of a checked feed."""
    return int(np.shape(next(iter(feed.values())))[0])


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
