"""The pass manager and the default pipeline; `compile_model` is the one-call Python API."""
from __future__ import annotations

import os
import time
from typing import Iterable, Sequence

import numpy as np
import onnx

from memse_compiler.frontend import build_graph
from memse_compiler.ir import MemseGraph
from memse_compiler.ir.errors import MemseInputError
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


def synthetic_inputs(shape: Sequence[int | None], batch: int, seed: int) -> np.ndarray:
    """The documented default evaluation batch: uniform on [0, 1) (normalised image-like inputs)."""
    rng = np.random.default_rng(seed)
    return rng.random((batch,) + tuple(shape[1:]))


def load_inputs(path: str | os.PathLike, shape: Sequence[int | None], input_name: str,
                batch: int | None = None) -> np.ndarray:
    """Read evaluation inputs from .npy or .npz (key = the input's name, or the only array) and check them."""
    label = str(path)
    try:
        data = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise MemseInputError(f"{label}: no such file") from None
    except Exception as exc:
        raise MemseInputError(f"{label}: not a readable .npy/.npz file ({type(exc).__name__})") from None
    if isinstance(data, np.lib.npyio.NpzFile):
        keys = list(data.keys())
        if input_name in keys:
            data = data[input_name]
        elif len(keys) == 1:
            data = data[keys[0]]
        else:
            raise MemseInputError(f"{label}: has arrays {keys}; name one '{input_name}'")
    x = np.asarray(data)
    if x.dtype.kind != "f":
        raise MemseInputError(f"{label}: inputs must be floating point, got dtype {x.dtype}")
    want = tuple(shape[1:])
    if x.ndim != len(shape) or tuple(x.shape[1:]) != want:
        raise MemseInputError(f"{label}: input shape {x.shape} does not match the model input "
                              f"'{input_name}' of shape (N, {', '.join(map(str, want))})")
    if x.shape[0] == 0:
        raise MemseInputError(f"{label}: contains no samples")
    if not np.all(np.isfinite(x)):
        raise MemseInputError(f"{label}: inputs contain NaN or inf")
    if batch is not None:
        x = x[:batch]
    return x.astype(np.float64)


def compile_model(model: str | os.PathLike | onnx.ModelProto, device, inputs: np.ndarray | None = None, *,
                  batch: int = 64, seed: int = 0, pipeline: Pipeline | None = None,
                  options: dict | None = None) -> tuple[MemseGraph, PassContext]:
    """Build the graph of `model`, then run `pipeline` (default: lowering + analysis) on `device`.

    `device` is a device_models.Device (or anything load_device accepts). Returns the annotated graph and
    the pass context (device, inputs, options).
    """
    from device_models import Device, load_device
    if not isinstance(device, Device):
        device = load_device(device)
    g = build_graph(model)
    shape = g.tensors[g.graph["inputs"][0]]
    if inputs is None:
        inputs = synthetic_inputs(shape, batch, seed)
    elif tuple(np.shape(inputs)[1:]) != tuple(shape[1:]):
        raise MemseInputError(f"inputs of shape {np.shape(inputs)} do not match the model input {shape}")
    check_batch(shape, len(inputs))
    ctx = PassContext(device=device, inputs=np.asarray(inputs, dtype=np.float64),
                      options={"seed": seed, **(options or {})})
    g.graph["device"] = device
    g.graph["options"] = dict(ctx.options)
    t0 = time.perf_counter()
    g = (pipeline or default_pipeline()).run(g, ctx)
    g.graph.setdefault("timing", {})["compile_s"] = time.perf_counter() - t0
    return g, ctx
