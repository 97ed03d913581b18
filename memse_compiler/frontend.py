"""ONNX frontend: load, check, infer shapes, fold constants, and build the op-level graph from the registry.

The graph is batch-generic whatever the export says: it is evaluated on any batch (the CLI's synthetic batch,
`--batch`, Monte-Carlo). A model exported with a fixed batch B gets a symbolic batch dimension, and the
reshapes that copy the batch as the constant B (what torch's `x.view(x.size(0), -1)` becomes) copy it as 0
instead. Shape arithmetic on the batch (the same `view` exported with a dynamic batch: Shape -> Gather ->
Concat -> Reshape) is folded at two probe batch sizes: a value that differs between them depends on the batch,
and may only end up as the leading size of a Reshape (then 0, "copy"), or the model is refused.

Before that, models below opset 11 are upgraded (opset_upgrade.py), recurrent ops are unrolled over their steps
(recurrent.py), signals whose batch an exporter moved off axis 0 are rewritten batch-first (batch_first.py), and
exporter patterns are fused (fusions.py). A fixed export
freed of its batch is checked sample by sample against onnxruntime at the end (else it keeps its batch).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from memse_compiler.batch_broadcasts import (BATCH_PROBES, BATCH_SLOTS, baked_broadcasts, batch_sized_constants,
                                             one_sample_broadcast)
from memse_compiler.batch_first import batch_first, check_freed_batch
from memse_compiler.decisions import split_decisions
from memse_compiler.fusions import drop_requantization, fuse_layer_norm
from memse_compiler.ir import KIND_DIGITAL, KIND_INPUT, KIND_OUTPUT, KIND_WEIGHTED, MemseGraph
from memse_compiler.ir.errors import MemseInputError
from memse_compiler.ir.feeds import checked_data_inputs
from memse_compiler.ir.ops import rule_for, unsupported_op
from memse_compiler.ir.ops.base import MASKED, ParseContext, node_attribute
from memse_compiler.ir.ops.exact import exact_attrs, node_evaluator, reads_only_exact, touches_non_float
from memse_compiler.load_expansion import expand_at_load
from memse_compiler.opset_upgrade import constant_tensors, default_opset, upgrade_opset
from memse_compiler.pointwise_fusion import fuse_pointwise
from memse_compiler.recurrent import refuse_sequence_first_input, unroll_recurrent


def load_model(model: str | os.PathLike | onnx.ModelProto) -> tuple[onnx.ModelProto, str]:
    """Read and check an ONNX file; errors name the file and say what is wrong, in one line."""
    if isinstance(model, onnx.ModelProto):
        label = model.graph.name or "model"
    else:
        label = str(model)
        path = Path(model)
        if not path.is_file():
            raise MemseInputError(f"{label}: no such file")
        data = path.read_bytes()
        if not data:
            raise MemseInputError(f"{label}: empty file, not an ONNX model")
        try:
            model = onnx.load_from_string(data)
        except Exception as exc:  # protobuf raises its own DecodeError and friends
            raise MemseInputError(f"{label}: not a valid ONNX model (truncated or not ONNX: "
                                  f"{type(exc).__name__})") from None
        _load_external_data(model, path, label)
    if not model.graph.node:
        raise MemseInputError(f"{label}: the ONNX graph has no nodes (truncated or not ONNX?)")
    try:
        onnx.checker.check_model(model)
        model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    except Exception as exc:
        raise MemseInputError(f"{label}: invalid ONNX model: {_first_line(exc)}") from None
    return upgrade_opset(model), label


def _load_external_data(model: onnx.ModelProto, path: Path, label: str) -> None:
    """Weights stored beside the model (torch's dynamo exporter writes `model.onnx.data`), read from the model's
    own folder whatever the working directory."""
    from onnx.external_data_helper import load_external_data_for_model, uses_external_data
    if not any(uses_external_data(t) for t in model.graph.initializer):
        return
    try:
        load_external_data_for_model(model, str(path.resolve().parent))
    except Exception as exc:
        raise MemseInputError(f"{label}: its external weight data could not be read ({_first_line(exc)})") from None


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


BATCH = "batch"               # the symbolic batch dimension


def _allows_zero(node: onnx.NodeProto) -> bool:
    """A Reshape whose target 0 means a zero size, not "copy the input's size" (allowzero=1)."""
    return bool(node_attribute(node, "allowzero", 0))


def _batch_entry(node: onnx.NodeProto, target: np.ndarray) -> int | None:
    """What replaces the batch in a target: the slot's entry; for a Reshape with allowzero=1 (torch's dynamo
    exporter writes it), whose 0 is a zero size, -1 (inferred) when no other entry is -1, else 0 when no other
    entry is 0 (`_retarget` then turns allowzero off: `x.reshape(x.size(0), -1)`); else None."""
    lead = BATCH_SLOTS[node.op_type][1]
    if lead == 0 and node.op_type == "Reshape" and _allows_zero(node):
        rest = target.reshape(-1)[1:]
        return -1 if not np.any(rest == -1) else (0 if not np.any(rest == 0) else None)
    return lead


def _retarget(node: onnx.NodeProto, slot: int, name: str, lead: int) -> None:
    """Point the node's target at `name`, whose batch entry is `lead`; a 0 there copies the batch, so an
    allowzero=1 Reshape loses that attribute (no other entry is 0: `_batch_entry`)."""
    node.input[slot] = name
    if lead == 0 and node.op_type == "Reshape" and _allows_zero(node):
        kept = [a for a in node.attribute if a.name != "allowzero"]
        del node.attribute[:]
        node.attribute.extend(kept)


def _with_leading(target: np.ndarray, lead: int) -> np.ndarray:
    """A shape-like target with its batch entry replaced: 0 in a Reshape copies the input's leading size, 1 in an
    Expand keeps it (two-way broadcast), 0 in Resize sizes is the Resize rule's mark for "the batch"."""
    return np.concatenate([[lead], target.reshape(-1)[1:]]).astype(np.int64)


def batch_generic(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int | None]:
    """(`model` with the data input's batch dimension symbolic, the batch B the export fixed, or None). When the
    export fixed it, every Reshape (Expand) whose constant target starts with B on a tensor that starts with B
    gets 0 (1) there, which keeps the batch, whatever it is; a constant of one sample expanded to B is
    build_graph's (`_batch_broadcast`). The input (and the outputs that start with B) get the symbolic batch,
    and the shapes are inferred again. Unchanged if that inference fails: the model then keeps its fixed batch
    (and B is None: nothing was freed)."""
    g = model.graph
    inits = {t.name for t in g.initializer}
    data = [vi for vi in g.input if vi.name not in inits]
    if not data or any(not vi.type.tensor_type.shape.dim for vi in data):
        return model, None
    leading = [vi.type.tensor_type.shape.dim[0] for vi in data]
    if not all(d.HasField("dim_value") for d in leading) or len({d.dim_value for d in leading}) != 1:
        return model, None
    b = leading[0].dim_value
    data_names = {vi.name for vi in data}
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    values = constant_tensors(g)
    infos = list(g.value_info) + list(g.input) + list(g.output)
    # a leading size of B, or the symbol batch_first gave the signals it wrote (the batch it follows)
    dims = {vi.name: (b,) + _dims(vi)[1:] if _symbolic(vi)[:1] == (BATCH,) else _dims(vi) for vi in infos}
    for k, node in enumerate(g.node):
        if node.op_type not in ("Reshape", "Expand") or len(node.input) < 2 or node.input[1] not in values:
            continue
        target = numpy_helper.to_array(values[node.input[1]])
        lead = _batch_entry(node, target)
        x_dims = dims.get(node.input[0])
        # an Expand's shape aligns with its input from the right: its entry 0 is the input's axis 0 at equal rank
        aligned = node.op_type == "Reshape" or (x_dims and len(x_dims) == target.size)
        if target.ndim == 1 and target.size and target[0] == b and x_dims and x_dims[0] == b and aligned and \
                lead is not None:
            name = f"{node.input[1]}__batch_{lead}_{k}"
            g.initializer.append(numpy_helper.from_array(_with_leading(target, lead), name))
            _retarget(node, 1, name, lead)
    for vi in [i for i in g.input if i.name in data_names] + [o for o in g.output if (_dims(o) or (None,))[0] == b]:
        vi.type.tensor_type.shape.dim[0].Clear()
        vi.type.tensor_type.shape.dim[0].dim_param = BATCH
    rewritten = [vi for vi in g.value_info if _symbolic(vi)[:1] == (BATCH,)]    # batch_layout's batch-first signals
    del g.value_info[:]
    g.value_info.extend(rewritten)
    try:
        return onnx.shape_inference.infer_shapes(out, strict_mode=True), b
    except Exception:
        return model, None


def _batch_hint(export_batch: int | None) -> str:
    return (f" (the export fixed the batch at {export_batch}: export with a dynamic batch axis)"
            if export_batch else "")


def _symbolic(vi: onnx.ValueInfoProto) -> tuple:
    """Per dimension: its symbol (dim_param) or None."""
    t = vi.type.tensor_type
    return tuple(d.dim_param or None for d in t.shape.dim) if t.HasField("shape") else ()


def _as_float64(a: np.ndarray) -> np.ndarray:
    """Float constants are computed in float64, so the analysis and the reference lose nothing to rounding."""
    return a.astype(np.float64) if a.dtype.kind == "f" else a


def _dims(vi: onnx.ValueInfoProto) -> tuple | None:
    t = vi.type.tensor_type
    if not t.HasField("shape"):
        return None
    return tuple(d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim)


def _fold_constant_node(node: onnx.NodeProto, consts: dict[str, np.ndarray], opset: int) -> list[np.ndarray]:
    """Evaluate a node whose inputs are all constants (rare: exporters leave few) with onnx.reference."""
    fed = {n: onnx.helper.np_dtype_to_tensor_dtype(consts[n].dtype) for n in node.input if n}
    return node_evaluator(node, fed, opset).run(None, {n: consts[n] for n in fed})


def _fold_shape(node: onnx.NodeProto, shapes: dict, symbols: tuple, batch: str | None, consts: dict,
                batch_dependent: dict, label: str) -> None:
    """A Shape of a computed tensor, as a constant: its batch dimension at the probe sizes (batch-dependent)."""
    dims = shapes.get(node.input[0])
    name = node.name or node.output[0]
    if dims is None:
        raise MemseInputError(f"{label}: node '{name}' (Shape): the shape of '{node.input[0]}' is unknown")
    probes = []
    for b in BATCH_PROBES:
        full = []
        for i, d in enumerate(dims):
            if d is None and batch and i < len(symbols) and symbols[i] == batch:
                d = b
            elif d is None:
                raise MemseInputError(f"{label}: node '{name}' (Shape): dimension {i} of '{node.input[0]}' is "
                                      f"dynamic and not the batch")
            full.append(d)
        probes.append(np.array(full[node_attribute(node, "start", 0):node_attribute(node, "end", len(full))],
                               np.int64))
    consts[node.output[0]] = probes[0]
    if not np.array_equal(*probes):
        batch_dependent[node.output[0]] = probes[1]


def _fold(node: onnx.NodeProto, consts: dict, batch_dependent: dict, opset: int) -> None:
    """Evaluate a node whose inputs are all constants; again at the second probe batch when one of them depends
    on the batch (its outputs depend on it if they differ)."""
    values = _fold_constant_node(node, consts, opset)
    for name, val in zip(node.output, values):
        consts[name] = _as_float64(np.asarray(val))
    if any(n in batch_dependent for n in node.input):
        alt = _fold_constant_node(node, {**consts, **batch_dependent}, opset)
        for name, val, val2 in zip(node.output, values, alt):
            if not np.array_equal(np.asarray(val), np.asarray(val2)):
                batch_dependent[name] = _as_float64(np.asarray(val2))


def _copy_batch(node: onnx.NodeProto, name: str, consts: dict, batch_dependent: dict, label: str) -> onnx.NodeProto:
    """A node reading a batch-dependent constant: where `BATCH_SLOTS` allows it and the constant depends on the
    batch only in its leading entry, that entry gets the slot's replacement (a new constant); any other use is
    refused."""
    used = [i for i, n in enumerate(node.input) if n in batch_dependent]
    if not used:
        return node
    slot = BATCH_SLOTS.get(node.op_type, (None, None))[0]
    if used == [slot]:
        t1, t2 = consts[node.input[slot]].reshape(-1), batch_dependent[node.input[slot]].reshape(-1)
        lead = _batch_entry(node, t1)
        if t1.size and (t1[0], t2[0]) == BATCH_PROBES and np.array_equal(t1[1:], t2[1:]) and lead is not None:
            new = onnx.NodeProto()
            new.CopyFrom(node)
            consts[f"{node.input[slot]}__batch_{lead}"] = _with_leading(t1, lead)
            _retarget(new, slot, f"{node.input[slot]}__batch_{lead}", lead)
            return new
    raise MemseInputError(f"{label}: node '{name}' ({node.op_type}) computes with the batch size (from a Shape); "
                          f"only a Reshape or Expand that keeps the batch as its leading size is supported: "
                          f"export with Flatten, or with a fixed batch")


def taken_branch(node: onnx.NodeProto, name: str, consts: dict) -> list[onnx.NodeProto]:
    """The nodes of the branch an If takes when its condition is a constant (torch's legacy exporter writes
    `x.squeeze(d)` on a size it cannot see as `If(size == 1, Squeeze, Identity)`; the sizes are static here), then
    an Identity from each branch output to the If's; the branch's initializers join the constants."""
    branch = node_attribute(node, "then_branch" if bool(np.ravel(consts[node.input[0]])[0]) else "else_branch")
    consts.update((t.name, _as_float64(numpy_helper.to_array(t))) for t in branch.initializer)
    links = [onnx.helper.make_node("Identity", [b.name], [o], name=f"{name}/{o}")
             for b, o in zip(branch.output, node.output) if o]
    return list(branch.node) + links


def _finite_mask(node: onnx.NodeProto, consts: dict) -> onnx.NodeProto:
    """An Add (or Where: `masked_fill`) of a constant with -inf entries (an attention mask ahead of a Softmax)
    with MASKED there instead: the Softmax gives the same 0, and the signal stays finite for the analysis (and
    the calibration's check)."""
    new = onnx.NodeProto()
    new.CopyFrom(node)
    for i, t in enumerate(node.input):
        v = consts.get(t)
        if t not in consts or v.dtype.kind != "f" or not np.isneginf(v).any():
            continue
        new.input[i] = f"{t}/finite"
        consts[new.input[i]] = np.where(np.isneginf(v), MASKED, v)
    return new


def _complete_shapes(rule, attrs: dict, node: onnx.NodeProto, operands: list[str], shapes: dict, consts: dict,
                     tensors: dict) -> None:
    """Output dimensions ONNX's shape inference left unknown (it cannot see the constants the frontend folded,
    e.g. Slice bounds computed from a Shape): the rule's own forward on zeros at the two probe batches; a
    dimension that differs between them is the batch (None)."""
    outs = [o for o in node.output if o]
    if all(o in shapes and None not in shapes[o][1:] for o in outs):
        return
    if any(t not in consts and t not in shapes for t in operands):
        return
    probes = []
    for b in BATCH_PROBES:
        xs = [consts[t] if t in consts else np.zeros(tuple(b if d is None else d for d in shapes[t]))
              for t in operands]
        with np.errstate(all="ignore"):            # zeros are only for the shapes (a Reciprocal of 0, say)
            probes.append([np.shape(y) for y in rule.forward(attrs, xs)])
    for o, s2, s3 in zip(outs, *probes):
        shapes[o] = tensors[o] = tuple(a if a == c else None for a, c in zip(s2, s3))


EXACT = rule_for("Exact")


def build_graph(model: str | os.PathLike | onnx.ModelProto) -> MemseGraph:
    """The op-level graph: one node per ONNX op (weighted ops hold a CrossbarLayer), one edge per signal."""
    model, label = load_model(model)
    model, decisions = split_decisions(model)
    refuse_sequence_first_input(model, label)
    model = unroll_recurrent(model, label)
    model = expand_at_load(model, label)
    original = model
    model = batch_first(model, label, BATCH)
    model, export_batch = batch_generic(model)
    model = drop_requantization(fuse_layer_norm(model))
    opset = default_opset(model)
    graph = model.graph
    consts: dict[str, np.ndarray] = {t.name: _as_float64(numpy_helper.to_array(t)) for t in graph.initializer}
    shapes: dict[str, tuple] = {}
    symbols: dict[str, tuple] = {}
    for vi in list(graph.value_info) + list(graph.output) + list(graph.input):
        dims = _dims(vi)
        if dims is not None:
            shapes[vi.name] = dims
            symbols[vi.name] = _symbolic(vi)
    # constants that depend on the batch size: their value at the second probe batch (consts: at the first)
    batch_dependent: dict[str, np.ndarray] = {}

    data_inputs = checked_data_inputs([vi for vi in graph.input if vi.name not in consts], label)
    x_vi = data_inputs[0]       # the batch reference (every data input carries the same batch on axis 0)

    g = MemseGraph(name=graph.name or Path(label).stem, model_path=label, opset=opset,
                   inputs=[vi.name for vi in data_inputs], outputs=[o.name for o in graph.output],
                   constants=consts, export_batch=export_batch,
                   input_types={vi.name: str(onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type))
                                for vi in data_inputs})
    g.tensors.update(shapes)
    if decisions:
        g.graph["decisions"] = decisions
    producers = {}
    for vi in data_inputs:
        g.add_node(f"input:{vi.name}", op="Input", kind=KIND_INPUT, inputs=[], outputs=[vi.name])
        producers[vi.name] = f"input:{vi.name}"
    used_names: set[str] = set()

    batch_fixed = False                 # set by a layer that sums over the input's axis 0
    exact = {vi.name for vi in data_inputs}      # signals computed from the data inputs alone (ir/ops/exact.py)
    elem_types = {vi.name: vi.type.tensor_type.elem_type for vi in list(graph.value_info) + list(graph.output) +
                  list(graph.input) if vi.type.tensor_type.elem_type}
    elem_types.update((t.name, t.data_type) for t in graph.initializer)
    pending = list(graph.node)          # a rule may expand a node into others, parsed next
    internal: set[str] = set()          # internal nodes the frontend wrote (BatchBroadcast of a baked constant)
    idx = -1
    while pending:
        node, idx = pending.pop(0), idx + 1
        if node.op_type == "Constant":
            value = onnx.helper.get_attribute_value(node.attribute[0])
            consts[node.output[0]] = _as_float64(numpy_helper.to_array(value) if isinstance(value, onnx.TensorProto)
                                                 else np.asarray(value))
            continue
        if node.op_type == "Shape" and node.input[0] not in consts:
            _fold_shape(node, shapes, symbols.get(node.input[0], ()), symbols[x_vi.name][0], consts,
                        batch_dependent, label)
            continue
        name = node.name or f"{node.op_type}_{idx}"
        while name in used_names:
            name = f"{name}_{idx}"
        synthetic = one_sample_broadcast(node, name, x_vi.name, consts, batch_dependent, export_batch)
        baked = baked_broadcasts(node, name, x_vi.name, consts, export_batch) or \
            batch_sized_constants(node, name, x_vi.name, consts, batch_dependent, shapes, export_batch)
        if baked:
            internal.update(n.name for n in baked[:-1])
            # shape inference read the baked constant's B as every downstream signal's batch: it is any batch
            for t, dims in shapes.items():
                if dims and dims[0] == export_batch and t not in consts:
                    shapes[t] = g.tensors[t] = (None,) + tuple(dims[1:])
            pending[:0] = baked
            idx -= 1
            continue
        if node.op_type == "If" and node.input[0] in consts:
            pending[:0] = taken_branch(node, name, consts)
            continue
        if synthetic is not None or name in internal:
            node = synthetic or node
        elif all((not n) or n in consts for n in node.input):
            try:
                _fold(node, consts, batch_dependent, opset)
            except Exception as exc:          # onnx.reference's own errors: one line naming the node
                raise MemseInputError(f"{label}: node '{name}' ({node.op_type}) could not be evaluated on its "
                                      f"constant inputs{_batch_hint(export_batch)} ({_first_line(exc)})") from None
            continue
        used_names.add(name)
        rule = rule_for(node.op_type)
        if rule is not None and rule.internal and synthetic is None and name not in internal:
            rule = None                  # internal op names are not ONNX ops
        exact_ok = synthetic is None and name not in internal and reads_only_exact(node, consts, exact)
        if rule is None and not exact_ok:
            noisy = any(t in producers and t not in exact for t in node.input)
            raise unsupported_op(label, node.op_type, name, noisy=noisy)
        node = _copy_batch(node, name, consts, batch_dependent, label)
        if node.op_type in ("Add", "Where"):
            node = _finite_mask(node, consts)
        ctx = ParseContext(node=node, node_name=name, consts=consts, shapes=shapes, opset=opset, exact=exact,
                           elem_types=elem_types)
        if exact_ok and (rule is None or (not rule.integer_signals and touches_non_float(node, consts, elem_types))):
            rule = EXACT
        else:
            expanded = rule.expand(ctx)
            if expanded:
                used_names.discard(name)     # the expansion's last node takes the name
                pending[:0] = expanded
                continue
            rule = rule.resolve(ctx)
        for i, inp in enumerate(node.input):
            if inp and inp not in consts and inp not in producers:
                raise MemseInputError(f"{label}: node '{name}' reads '{inp}', which nothing produces")
        if rule is not EXACT:
            try:
                attrs = rule.parse(ctx)
                operands = [node.input[i] for i in rule.operands(ctx)]
            except MemseInputError:
                if not exact_ok or rule.weighted:
                    raise
                # computed from the data inputs alone (a Gather of constant rows by token ids): the same value on
                # every chip, whatever the registry's rule refuses
                rule = EXACT
        if rule is EXACT:
            attrs, operands = exact_attrs(node, consts, elem_types, opset)
        if rule.weighted and getattr(attrs["layer"].geometry, "in_columns", False) and \
                shapes.get(attrs["layer"].input, (0,))[0] is None:
            # the activation's axis 0 is summed over (Gemm transA=1, a constant left operand): no batch there
            if export_batch is None:
                raise MemseInputError(f"{label}: node '{name}' ({node.op_type}) sums over axis 0 of its input, which "
                                      f"the model declares as the batch axis")
            batch_fixed = True
        try:
            _complete_shapes(rule, attrs, node, operands, shapes, consts, g.tensors)
        except ValueError as exc:
            raise MemseInputError(f"{label}: node '{name}' ({node.op_type}) does not run at other batch sizes"
                                  f"{_batch_hint(export_batch)} ({_first_line(exc)})") from None
        g.add_node(name, op=rule.op_types[0] if rule.internal else node.op_type,
                   kind=KIND_WEIGHTED if rule.weighted else KIND_DIGITAL,
                   inputs=operands, outputs=[o for o in node.output if o], attrs=attrs, onnx_node=node)
        for inp in dict.fromkeys(operands):
            if inp in producers:
                g.add_signal(producers[inp], name, inp)
        for out in node.output:
            if out:
                producers[out] = name
        if not rule.weighted and all(t in exact for t in operands):
            exact.update(o for o in node.output if o)

    for out in g.graph["outputs"]:
        if out not in producers:
            raise MemseInputError(f"{label}: graph output '{out}' is a constant or is not produced")
        g.add_node(f"output:{out}", op="Output", kind=KIND_OUTPUT, inputs=[out], outputs=[])
        g.add_signal(producers[out], f"output:{out}", out)
    if not any(d["kind"] == KIND_WEIGHTED for _, d in g.nodes(data=True)):
        raise MemseInputError(f"{label}: no weighted op (Gemm, MatMul or Conv with constant weights) to map")
    g.rebuild_producers()
    fuse_pointwise(g, label)
    if export_batch is not None and not batch_fixed:
        # freed of its batch, the graph must still be the export's network sample by sample; if not, it keeps it
        batch_fixed = not check_freed_batch(g, original, export_batch)
    if batch_fixed:                     # the export's batch is the only one the model runs at
        for vi in data_inputs:
            g.tensors[vi.name] = (export_batch,) + tuple(g.tensors[vi.name][1:])
    return g
