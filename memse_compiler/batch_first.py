"""ONNX-level rewrite applied before parsing: every signal carries the batch on its axis 0, alone.

The IR keeps the batch as the leading axis of every signal (per-sample moments, the executor's chips). torch's
`nn.MultiheadAttention` (so `nn.TransformerEncoderLayer`) moves it: the sequence goes first, (L, N, E); the heads
are folded into the batch, (N*H, L, d); the output projection runs on (L*N, E). `batch_first` probes the model
once with onnxruntime (every intermediate exposed, for the shapes), rewrites it batch-first
(memse_compiler/batch_layout.py), and checks the result against onnxruntime on the original model before it is
used. Models whose signals all keep the batch first are returned as they are, and not run unless their inferred
shapes leave that open (Shape arithmetic, an unknown dimension, a Transpose that moves axis 0).
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from memse_compiler.batch_layout import BatchFirstRewriter
from memse_compiler.ir.errors import MemseInputError
from memse_compiler.ir.feeds import input_dtype, probe_input
from memse_compiler.ir.ops.base import node_attribute
from memse_compiler.opset_upgrade import live_nodes


PROBE_BATCH = 3        # the dynamic export's batch for the layout probe
CHECK_BATCH = 5        # another one, for the checks (what differs between the two is the batch)


def _batch_then_static(t: onnx.TypeProto.Tensor, batch) -> bool:
    """Whether an inferred tensor type is `batch` followed by known static sizes."""
    dims = [d.dim_param or d.dim_value for d in t.shape.dim] if t.HasField("shape") else []
    return bool(dims) and dims[0] == batch and all(isinstance(d, int) and d > 0 for d in dims[1:])


def _needs_rewrite(model: onnx.ModelProto, data: str) -> bool:
    """Cheap test on the inferred shapes: a Transpose that moves axis 0 of a computed tensor, or a float tensor
    whose shape is not the batch followed by static sizes, may hold the batch elsewhere."""
    g = model.graph
    consts = {t.name for t in g.initializer} | {o for n in g.node if n.op_type == "Constant" for o in n.output}
    x_dims = g.input[[vi.name for vi in g.input].index(data)].type.tensor_type.shape.dim
    batch = x_dims[0].dim_param or x_dims[0].dim_value
    for node in g.node:
        moves_axis_0 = (node_attribute(node, "perm") or [1])[0] != 0
        if node.op_type == "Transpose" and node.input[0] not in consts and moves_axis_0:
            return True
    float_types = (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16)
    for vi in list(g.value_info) + list(g.output):
        t = vi.type.tensor_type
        if t.elem_type in float_types and vi.name not in consts and not _batch_then_static(t, batch):
            return True
    return False


def _onnx_semantics(model: onnx.ModelProto):
    """An onnxruntime session with graph optimisations off: the ONNX semantics (the optimisations would fuse fake
    quantization into integer kernels, which round differently)."""
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 3        # errors only: an export's unused initializers are not the user's concern here
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def probe_values(model: onnx.ModelProto, data: str | list[str], batch: int, seed: int = 0,
                 everything: bool = True) -> dict[str, np.ndarray]:
    """Every tensor's value (or only the outputs') on a batch of uniform [0, 1) inputs, one per data input
    (onnxruntime, optimisations off: the ONNX semantics)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    if everything:
        known = {o.name for o in m.graph.output}
        produced = {o for n in m.graph.node for o in n.output if o}
        m.graph.output.extend(vi for vi in m.graph.value_info if vi.name in produced and vi.name not in known)
    rng = np.random.default_rng(seed)
    feed = {}
    for name in [data] if isinstance(data, str) else data:
        x_vi = next(vi for vi in m.graph.input if vi.name == name)
        dims = [batch] + [d.dim_value for d in x_vi.type.tensor_type.shape.dim[1:]]
        feed[name] = probe_input(rng, dims, helper.tensor_dtype_to_np_dtype(x_vi.type.tensor_type.elem_type))
    sess = _onnx_semantics(m)
    names = [o.name for o in sess.get_outputs()]
    values = dict(zip(names, sess.run(names, feed)))
    values.update(feed)
    values.update((t.name, numpy_helper.to_array(t)) for t in m.graph.initializer)
    return values


MAX_ATTEMPTS = 256


def _rewrite(model: onnx.ModelProto, data: list[str], batch: int, values: dict, label: str,
             symbol: str) -> BatchFirstRewriter | None:
    """The rewriter that went through every node, or None if one refused before the batch moved. At batch 1 a
    Reshape may put the batch at several axis boundaries: the choices are searched depth first, the latest undone
    first, until every node accepts its inputs' layouts (a wrong guess soon meets an op that works along the
    batch); the first refusal is the one reported."""
    choices: dict[str, int] = {}
    first = None
    for _ in range(MAX_ATTEMPTS):
        rewriter = BatchFirstRewriter(model, data, batch, values, label, symbol, choices)
        try:
            return rewriter if rewriter.run() else None
        except MemseInputError as exc:
            first = first or exc
        points = rewriter.points
        while points and choices.get(points[-1][0], 0) + 1 >= points[-1][1]:
            points = points[:-1]
        if not points:
            break
        choices = {key: choices.get(key, 0) for key, _ in points}
        choices[points[-1][0]] += 1
    raise first


def _assemble(rewriter: BatchFirstRewriter) -> onnx.ModelProto:
    """The rewritten model: outputs under their own names, what nothing reads any more (the Shape arithmetic of
    the rewritten Reshapes, mostly) dropped, the batch-first signals' shapes written. Refused when an output
    does not start with the batch, or a node still reads a tensor that no longer exists (a Size of a moved
    batch, say)."""
    g = rewriter.model.graph
    nodes = list(rewriter.nodes)
    for o in g.output:
        lay = rewriter.layouts.get(o.name)
        if lay is not None and not lay.leading:
            raise MemseInputError(f"{rewriter.label}: output '{o.name}' does not carry the batch on its axis 0 "
                                  f"(axis {lay.axis} of {list(lay.shape)})")
        if rewriter.names.get(o.name, o.name) != o.name:
            nodes.append(helper.make_node("Identity", [rewriter.names[o.name]], [o.name], name=f"{o.name}/output"))
    kept = live_nodes(nodes, {o.name for o in g.output})     # drop what nothing reads any more
    produced = {t.name for t in g.initializer} | {t.name for t in rewriter.inits} | {vi.name for vi in g.input}
    for node in kept:
        for t in node.input:
            if t and t not in produced:
                lay = rewriter.layouts.get(t)
                where = f"axis {lay.axis} of {list(lay.shape)}" if lay else "elsewhere"
                raise MemseInputError(f"{rewriter.label}: node '{node.name or node.output[0]}' ({node.op_type}) "
                                      f"computes with the shape of '{t}', whose batch is not on axis 0 "
                                      f"({where})")
        produced.update(node.output)
    used = {t for n in kept for t in n.input}
    graph = helper.make_graph(kept, g.name, list(g.input), list(g.output),
                              [t for t in list(g.initializer) + rewriter.inits if t.name in used],
                              value_info=rewriter.signal_shapes(produced))
    model = rewriter.model
    out = helper.make_model(graph, opset_imports=list(model.opset_import), ir_version=model.ir_version)
    out.producer_name = model.producer_name
    return out


def _shapes_read_but_lost(model: onnx.ModelProto, batch: str) -> bool:
    """Whether a Shape reads a computed tensor whose inferred shape is not the batch symbol then static sizes
    (only then do the frontend's folds need the probe's shapes)."""
    infos = {vi.name: vi.type.tensor_type for vi in model.graph.value_info}
    given = {vi.name for vi in model.graph.input} | {t.name for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type != "Shape" or node.input[0] in given:
            continue
        if node.input[0] not in infos or not _batch_then_static(infos[node.input[0]], batch):
            return True
    return False


def _with_batch_shapes(model: onnx.ModelProto, rewriter: BatchFirstRewriter, other: dict) -> onnx.ModelProto:
    """A dynamic export whose signals all keep the batch first, with their shapes written (the batch symbol, then
    static sizes) where shape inference lost them behind Shape arithmetic (`B, T, C = x.size()` on a computed
    tensor): those whose leading size was the batch at both probes and whose other sizes did not change."""
    keep = {t for t, lay in rewriter.layouts.items() if t in other and np.ndim(other[t]) and
            np.shape(other[t]) == (CHECK_BATCH,) + lay.shape[1:] and lay.shape[0] == rewriter.n}
    produced = {o for n in model.graph.node for o in n.output}
    mine = [vi for vi in rewriter.signal_shapes(produced) if vi.name in keep]
    out = onnx.ModelProto()
    out.CopyFrom(model)
    names = {vi.name for vi in mine}
    rest = [vi for vi in out.graph.value_info if vi.name not in names]
    del out.graph.value_info[:]
    out.graph.value_info.extend(mine + rest)
    return out


def batch_first(model: onnx.ModelProto, label: str, symbol: str) -> onnx.ModelProto:
    """`model` with every signal's batch on axis 0 (unchanged when that already holds). Refused in one line
    when a signal's batch cannot be followed (an op that works along it, a Reshape that splits it). The
    rewritten signals' shapes are written with the input's batch symbol, or `symbol` if the export fixed it
    (the rewrite itself runs at any batch)."""
    g = model.graph
    inits = {t.name for t in g.initializer}
    data = [vi.name for vi in g.input if vi.name not in inits]
    if not data or not _needs_rewrite(model, data[0]):
        return model
    all_dims = [vi.type.tensor_type.shape.dim for vi in g.input if vi.name in data]
    if any(not d or any(not e.HasField("dim_value") for e in d[1:]) for d in all_dims):
        return model
    dims = all_dims[0]
    fixed = dims[0].dim_value if dims[0].HasField("dim_value") else None
    batch = fixed or PROBE_BATCH
    try:
        values = probe_values(model, data, batch)
    except Exception:
        return model                     # the frontend's own checks say what is wrong
    rewriter = _rewrite(model, data, batch, values, label, (fixed is None and dims[0].dim_param) or symbol)
    if rewriter is None:
        return model
    if all(lay.leading for lay in rewriter.layouts.values()):
        if fixed or not _shapes_read_but_lost(model, dims[0].dim_param):
            return model
        return _with_batch_shapes(model, rewriter, probe_values(model, data, CHECK_BATCH, seed=1))
    out = _assemble(rewriter)
    try:
        mine = {vi.name: vi for vi in out.graph.value_info}
        out = onnx.shape_inference.infer_shapes(out, strict_mode=True)
        # inference through a fixed export's constants writes its batch back: the batch-first shapes win
        inferred = [vi for vi in out.graph.value_info if vi.name not in mine]
        del out.graph.value_info[:]
        out.graph.value_info.extend(list(mine.values()) + inferred)
        check = probe_values(out, data, fixed or CHECK_BATCH, seed=1, everything=False)
        ref = probe_values(model, data, fixed or CHECK_BATCH, seed=1, everything=False)
    except Exception as exc:
        raise MemseInputError(f"{label}: moving the batch to axis 0 failed ({str(exc).strip().splitlines()[0]})") \
            from None
    for o in g.output:
        if not np.allclose(check[o.name], ref[o.name], rtol=1e-4, atol=1e-5):
            raise MemseInputError(f"{label}: moving the batch to axis 0 changed output '{o.name}' (internal error)")
    return out


CHECK_UP_TO = 16        # export batches whose freed graph is checked (at twice the batch; larger ones are not)


def check_freed_batch(g, original: onnx.ModelProto, export_batch: int) -> bool:
    """Whether a fixed-batch export made batch-generic (frontend.batch_generic, batch_first, the baked
    broadcasts) gives at another batch, sample by sample, what onnxruntime gives on the export at its own batch:
    the graph at twice the batch against the export on each half (three samples one by one for a batch-1
    export). Not checked (True) above CHECK_UP_TO."""
    if export_batch > CHECK_UP_TO:
        return True
    from memse_compiler.ir.interpret import run
    m = 2 * export_batch if export_batch > 1 else 3
    rng = np.random.default_rng(0)
    xs = {}
    for name in g.graph["inputs"]:      # float inputs as onnxruntime runs the export: float32
        dtype = np.float32 if input_dtype(g, name).kind == "f" else input_dtype(g, name)
        xs[name] = probe_input(rng, (m,) + tuple(g.tensors[name][1:]), dtype)
    try:
        got = run(g, xs)
    except Exception:           # a batch the export baked in somewhere else: not freed
        return False
    sess = _onnx_semantics(original)
    names = [o.name for o in sess.get_outputs()]
    chunks = [sess.run(names, {name: x[i:i + export_batch] for name, x in xs.items()})
              for i in range(0, m, export_batch)]
    for k, name in enumerate(names):
        want = np.concatenate([c[k] for c in chunks])
        if want.dtype.kind != "f" or name not in got:
            continue
        scale = max(float(np.abs(want).max()) if want.size else 0.0, 1.0)
        if got[name].shape != want.shape or not np.allclose(got[name], want, rtol=1e-4, atol=1e-5 * scale):
            return False
    return True
