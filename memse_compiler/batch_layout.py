"""Where the batch sits in a signal, and the rewrite that puts it first (memse_compiler/batch_first.py runs it).

A signal's `Layout` says where the batch sits in it: in one axis, possibly merged with a factor before it and
one after it (torch's (L*N, E) has before = L, its (N*H, L, d) after = H). The batch-first tensor is the
original one with the batch pulled out of its axis and put in front, every other axis in its order:

    original = reshape(moveaxis(batch_first, 0, k), original_shape)

`BatchFirstRewriter` walks the nodes once, following each signal's layout from op semantics and the shapes of
one probe run, and writes the batch-first graph: Transposes and Reshapes on the batch-first tensors (often
nothing), a Gemm on a merged batch a MatMul + Add, axis attributes remapped, constants reshaped, Shape
arithmetic that fed the rewritten Reshapes replaced by constant targets whose 0 copies the batch. Ops it has
no rule for must see the batch first (they keep it there).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import onnx
from onnx import helper, numpy_helper

from memse_compiler.ir.errors import MemseInputError
from memse_compiler.ir.ops import rule_for, unsupported_op
from memse_compiler.ir.ops.base import node_attribute
from memse_compiler.opset_upgrade import default_opset

SUFFIX = "/batch_first"
# one signal in, same shape out, no axis semantics: the op runs unchanged on the batch-first tensor
UNARY = {"Abs", "Cast", "Celu", "Dropout", "Elu", "Erf", "Exp", "Gelu", "HardSigmoid", "HardSwish", "Identity",
         "LeakyRelu", "Log", "Mish", "Neg", "Reciprocal", "Relu", "Selu", "Sigmoid", "Softplus", "Softsign", "Sqrt",
         "Tanh", "Clip", "Round", "Floor", "Ceil", "Sign", "Sin", "Cos", "Not", "Atan", "Asinh", "Sinh", "Cosh",
         "Swish", "ThresholdedRelu", "Shrink"}
BROADCASTING = {"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "PRelu", "Where", "Greater", "Less", "GreaterOrEqual",
                "LessOrEqual", "Equal", "And", "Or", "Xor", "Sum", "Mean"}
RESHAPING = {"Reshape", "Flatten", "Squeeze", "Unsqueeze"}
REDUCTIONS = {"ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
              "ReduceSumSquare", "ReduceLogSumExp", "ReduceLogSum"}


@dataclass(frozen=True)
class Layout:
    """Where the batch sits in a signal of `shape` (at the probe batch): in axis `axis`, as the middle factor of
    before x batch x after."""
    shape: tuple
    axis: int = 0
    before: int = 1
    after: int = 1

    @property
    def leading(self) -> bool:
        return self.axis == 0 and self.before == 1 and self.after == 1

    def units(self) -> list:
        """The batch-first tensor's axes after the batch: original axes by index, the batch axis's factors as
        'before' / 'after' (only when > 1)."""
        out = []
        for i in range(len(self.shape)):
            if i != self.axis:
                out.append(i)
                continue
            out += ["before"] * (self.before > 1) + ["after"] * (self.after > 1)
        return out

    def batch_first_shape(self, n: int) -> tuple:
        sizes = {"before": self.before, "after": self.after}
        return (n,) + tuple(sizes[u] if isinstance(u, str) else self.shape[u] for u in self.units())

    def axis_of(self, i: int) -> int:
        """The batch-first axis of original axis i (not the batch's)."""
        i = i % len(self.shape)
        return 1 + self.units().index(i)


def _prod(xs) -> int:
    return int(np.prod(xs, dtype=np.int64)) if len(xs) else 1


def reshaped_layouts(src: Layout, shape: tuple, n: int) -> list[Layout]:
    """The layouts the batch may have after a row-major reshape of `src` to `shape`: it must stay one digit of
    one axis, i.e. that axis's stride divides what follows the batch and its span covers the batch. Empty if the
    reshape splits it (e.g. N = 4 into 2 x 2). One layout when n > 1 (up to size-1 axes); at n = 1 (a batch-1
    export) every axis boundary fits, and the caller tries them in this order: an axis of its own first."""
    pre = _prod(src.shape[:src.axis]) * src.before
    post = src.after * _prod(src.shape[src.axis + 1:])
    found = []
    for j in range(len(shape)):
        stride = _prod(shape[j + 1:])
        if post % stride or (shape[j] * stride) % (n * post):
            continue
        before = shape[j] * stride // (n * post)
        if _prod(shape[:j]) * before == pre:
            found.append(Layout(tuple(shape), j, before, post // stride))
    return sorted(found, key=lambda lay: (lay.before * lay.after > 1, lay.axis))


def reshaped_layout(src: Layout, shape: tuple, n: int) -> Layout | None:
    """The first of `reshaped_layouts`, or None."""
    found = reshaped_layouts(src, shape, n)
    return found[0] if found else None


def _set_attribute(node: onnx.NodeProto, name: str, value) -> None:
    for a in list(node.attribute):
        if a.name == name:
            node.attribute.remove(a)
    node.attribute.append(helper.make_attribute(name, value))


def _write_axis(node: onnx.NodeProto, axes: list[int]) -> None:
    _set_attribute(node, "axis", axes[0])


class BatchFirstRewriter:
    """One pass over the nodes: each signal's layout, the batch-first nodes, and what replaced what."""

    def __init__(self, model: onnx.ModelProto, data: list[str], batch: int, values: dict, label: str, symbol: str,
                 choices: dict | None = None):
        self.model, self.n, self.values, self.label, self.data = model, batch, values, label, set(data)
        self.symbol = symbol
        self.choices = choices or {}       # node -> which of its candidate layouts to take (batch-1 exports)
        self.points: list[tuple[str, int]] = []     # the nodes that had a choice, in order, and how many
        self.layouts = {x: Layout(tuple(values[x].shape)) for x in data}
        # tensors computed from the integer and bool data inputs alone (ids, masks): exact signals for the frontend
        # (ir/ops/exact.py), which may mix the batch as they like
        self.exact = {x for x in data if np.asarray(values[x]).dtype.kind in "iub"}
        self.names = {x: x for x in data}          # original signal -> its batch-first tensor
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.init_names: set[str] = set()
        g = model.graph
        self.static_inputs = {t.name for t in g.initializer} | {o for n in g.node if n.op_type == "Constant"
                                                                for o in n.output}

    # ---- helpers -------------------------------------------------------------------------------------
    def refuse(self, node: onnx.NodeProto, why: str) -> MemseInputError:
        return MemseInputError(f"{self.label}: node '{node.name or node.output[0]}' ({node.op_type}) {why}")

    def shape(self, tensor: str) -> tuple:
        return tuple(self.values[tensor].shape)

    def const(self, base: str, value: np.ndarray) -> str:
        name = f"{base}{SUFFIX}"
        while name in self.init_names:
            name += "_"
        self.init_names.add(name)
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def place(self, tensor: str, layout: Layout) -> str:
        """Record an output's layout; its batch-first tensor keeps the name when the batch already led."""
        self.layouts[tensor] = layout
        self.names[tensor] = tensor if layout.leading else f"{tensor}{SUFFIX}"
        return self.names[tensor]

    def emit(self, op: str, inputs: list, output: str, name: str, **attrs) -> None:
        self.nodes.append(helper.make_node(op, inputs, [output], name=name, **attrs))

    def alias(self, tensor: str, layout: Layout, source: str) -> None:
        self.layouts[tensor], self.names[tensor] = layout, self.names[source]

    def renamed(self, node: onnx.NodeProto, outputs: dict | None = None) -> onnx.NodeProto:
        """`node` reading the batch-first signals; outputs renamed by `outputs` (original -> new)."""
        new = onnx.NodeProto()
        new.CopyFrom(node)
        for i, t in enumerate(new.input):
            if t in self.names:
                new.input[i] = self.names[t]
        for i, t in enumerate(new.output):
            if outputs and t in outputs:
                new.output[i] = outputs[t]
        return new

    def keep(self, node: onnx.NodeProto, layouts: dict) -> None:
        """The node as it is (on renamed inputs), its outputs with `layouts`."""
        self.nodes.append(self.renamed(node, {t: self.place(t, lay) for t, lay in layouts.items()}))

    def choose(self, node: onnx.NodeProto, candidates: list[Layout]) -> Layout | None:
        if len(candidates) > 1:
            key = node.name or node.output[0]
            self.points.append((key, len(candidates)))
            return candidates[self.choices.get(key, 0)]
        return candidates[0] if candidates else None

    def signals(self, node: onnx.NodeProto) -> list[str]:
        return [t for t in node.input if t in self.layouts]

    # ---- the pass ------------------------------------------------------------------------------------
    def run(self) -> bool:
        """Rewrite every node; False when one is refused before any signal's batch moved."""
        for node in self.model.graph.node:
            if node.op_type in ("Shape", "Size"):
                self.shape_of(node)
            elif not self.signals(node):
                self.nodes.append(self.renamed(node))       # constant or shape arithmetic
            else:
                if all(t in self.exact for t in self.signals(node)):
                    self.exact.update(o for o in node.output if o)
                try:
                    self.handler(node.op_type)(node)
                except MemseInputError:
                    if any(not lay.leading for t, lay in self.layouts.items() if t not in self.exact):
                        raise
                    # the batch has moved in exact signals only (a transformers mask gathered from its flattened
                    # batch): the model as it is, or else the op rules say what is wrong with it
                    return False
                except KeyError:
                    return False       # a tensor the probe could not expose (no type): leave the model as it is
        return True

    def handler(self, op: str):
        """The op's own `op_<Op>` method, its family's, or batch_first_only."""
        own = getattr(self, f"op_{op}", None)
        if own is not None:
            return own
        families = ((UNARY, self.unary), (BROADCASTING, self.broadcasting), (RESHAPING, self.reshaping),
                    (REDUCTIONS, self.reduction))
        return next((method for ops, method in families if op in ops), self.batch_first_only)

    def shape_of(self, node: onnx.NodeProto) -> None:
        """A Shape of a signal whose batch moved, rebuilt from the batch-first tensor's: its static sizes with
        the batch's axis as batch x before x after (so the frontend folds it as it folds any batch arithmetic)."""
        src = node.input[0]
        lay = self.layouts.get(src)
        if lay is None or lay.leading or node.op_type != "Shape":
            self.nodes.append(self.renamed(node))     # a Size of a moved batch: refused if anything reads it
            return
        base, out = node.name or node.output[0], node.output[0]
        batch, axis = f"{out}/batch{SUFFIX}", f"{out}/batch_axis{SUFFIX}"
        self.emit("Shape", [self.names[src]], batch, f"{base}/batch", start=0, end=1)
        self.emit("Mul", [batch, self.const(f"{out}/merged", np.array([lay.before * lay.after], np.int64))], axis,
                  f"{base}/batch_axis")
        parts = [self.const(f"{out}/{k}", np.array(sizes, np.int64)) if k != "batch" else axis
                 for k, sizes in (("leading", lay.shape[:lay.axis]), ("batch", ()),
                                  ("trailing", lay.shape[lay.axis + 1:])) if k == "batch" or sizes]
        rank = len(lay.shape)
        start, end = node_attribute(node, "start", 0), node_attribute(node, "end", rank)
        full = out if (start, end) == (0, rank) else f"{out}/full{SUFFIX}"
        self.emit("Concat", parts, full, f"{base}/sizes", axis=0)
        if full != out:
            self.emit("Slice", [full, self.const(f"{out}/start", np.array([start], np.int64)),
                                self.const(f"{out}/end", np.array([end], np.int64))], out, base)

    def batch_first_only(self, node: onnx.NodeProto) -> None:
        """Any other op: its signals must carry the batch first, and so do its outputs."""
        for t in self.signals(node):
            lay = self.layouts[t]
            if not lay.leading and (rule_for(node.op_type) is None or rule_for(node.op_type).internal):
                raise unsupported_op(self.label, node.op_type, node.name or node.output[0])
            if not lay.leading:
                raise self.refuse(node, f"reads '{t}', whose batch is not on axis 0 alone (axis {lay.axis} of "
                                        f"{list(lay.shape)}, after a Transpose or Reshape), which "
                                        f"{node.op_type} cannot be rewritten to take first")
        self.keep(node, {o: Layout(self.shape(o)) for o in node.output if o})

    def unary(self, node: onnx.NodeProto) -> None:
        lay = self.layouts[node.input[0]]
        self.keep(node, {o: replace(lay, shape=self.shape(o)) for o in node.output if o})

    def broadcasting(self, node: onnx.NodeProto) -> None:
        out = node.output[0]
        shape = self.shape(out)
        rank = len(shape)
        axes = {(self.layouts[t].axis + rank - len(self.layouts[t].shape), self.layouts[t].before,
                 self.layouts[t].after) for t in self.signals(node)}
        if len(axes) != 1:
            raise self.refuse(node, "combines signals whose batches sit on different axes")
        axis, before, after = axes.pop()
        lay = Layout(shape, axis, before, after)
        if lay.leading and all(self.layouts[t].leading for t in self.signals(node)):
            self.keep(node, {out: lay})
            return
        inputs = []
        for t in node.input:
            if t in self.layouts:
                src = self.layouts[t]
                name = self.names[t]
                if len(src.shape) < rank:       # ones after the batch for the axes it broadcasts along
                    target = (0,) + (1,) * (rank - len(src.shape)) + src.batch_first_shape(self.n)[1:]
                    name = self.reshape_to(node, name, target, f"{t}/rank")
                inputs.append(name)
                continue
            v = self.values[t]
            if v.ndim <= rank - axis - 1:       # spans only axes after the batch's: broadcasts as it is
                inputs.append(t)
                continue
            v = v.reshape((1,) * (rank - v.ndim) + v.shape)
            if v.shape[axis] != 1:
                raise self.refuse(node, f"broadcasts the constant '{t}' along the batch")
            ones = (1,) * ((before > 1) + (after > 1))
            inputs.append(self.const(t, v.reshape((1,) + v.shape[:axis] + ones + v.shape[axis + 1:])))
        self.nodes.append(self.renamed(node, {out: self.place(out, lay)}))
        self.nodes[-1].input[:] = inputs

    def reshape_to(self, node: onnx.NodeProto, source: str, target: tuple, tensor: str) -> str:
        out = f"{tensor}{SUFFIX}"
        self.emit("Reshape", [source, self.const(f"{tensor}/shape", np.array(target, np.int64))], out,
                  f"{node.name or tensor}/batch_first")
        return out

    def reshaping(self, node: onnx.NodeProto) -> None:
        """Reshape, Flatten, Squeeze, Unsqueeze: one Reshape of the batch-first tensor (or none), target constant
        (its Shape arithmetic, which computed with the batch, is no longer read)."""
        src, out = node.input[0], node.output[0]
        lay_in = self.layouts[src]
        exact = self.squeezed_layout(node, lay_in)
        lay = exact or self.choose(node, reshaped_layouts(lay_in, self.shape(out), self.n))
        if lay is None:
            raise self.refuse(node, f"splits the batch of '{src}' over several axes ({list(lay_in.shape)} -> "
                                    f"{list(self.shape(out))})")
        constant_target = node.op_type != "Reshape" or node.input[1] in self.static_inputs
        if lay_in.leading and lay.leading and constant_target:
            self.keep(node, {out: lay})
            return
        before, after = lay_in.batch_first_shape(self.n), lay.batch_first_shape(self.n)
        if before == after:
            self.alias(out, lay, src)
            return
        self.place(out, lay)
        self.emit("Reshape", [self.names[src], self.const(f"{out}/shape", np.array((0,) + after[1:], np.int64))],
                  self.names[out], node.name or out)

    def squeezed_layout(self, node: onnx.NodeProto, lay_in: Layout) -> Layout | None:
        """Where an Unsqueeze or a Squeeze with explicit axes puts the batch: no choice to make, even at batch 1
        (where a reshape could put it at any size-1 axis, and an unrolled recurrence has two such nodes a step).
        None for other nodes, and for a Squeeze of the batch's own axis."""
        if node.op_type not in ("Unsqueeze", "Squeeze"):
            return None
        axes = node_attribute(node, "axes", None)
        if axes is None and len(node.input) > 1 and node.input[1] in self.values:
            axes = np.asarray(self.values[node.input[1]]).reshape(-1).tolist()
        if axes is None:
            return None
        out_shape = self.shape(node.output[0])
        if node.op_type == "Unsqueeze":
            axes = {int(a) % len(out_shape) for a in axes}
            kept = [i for i in range(len(out_shape)) if i not in axes]
            return Layout(out_shape, kept[lay_in.axis], lay_in.before, lay_in.after)
        axes = {int(a) % len(lay_in.shape) for a in axes}
        if lay_in.axis in axes:
            return None
        return Layout(out_shape, lay_in.axis - sum(a < lay_in.axis for a in axes), lay_in.before, lay_in.after)

    def op_Transpose(self, node: onnx.NodeProto) -> None:
        src, out = node.input[0], node.output[0]
        lay_in = self.layouts[src]
        perm = list(node_attribute(node, "perm", None) or reversed(range(len(lay_in.shape))))
        lay = Layout(self.shape(out), perm.index(lay_in.axis), lay_in.before, lay_in.after)
        if lay_in.leading and lay.leading:
            self.keep(node, {out: lay})
            return
        units_in = lay_in.units()
        order = []
        for i in perm:
            order += [1 + k for k, u in enumerate(units_in) if u == i or (i == lay_in.axis and isinstance(u, str))]
        if order == sorted(order):
            self.alias(out, lay, src)
            return
        self.place(out, lay)
        self.emit("Transpose", [self.names[src]], self.names[out], node.name or out, perm=[0] + order)

    def op_MatMul(self, node: onnx.NodeProto) -> None:
        a, b = node.input
        out = node.output[0]
        sig = self.signals(node)
        lays = [self.layouts[t] for t in sig]
        if all(lay.leading for lay in lays):
            return self.batch_first_only(node)
        rank = len(self.shape(out))
        if len(sig) == 2:
            la, lb = lays
            if (la.axis, la.before, la.after) != (lb.axis, lb.before, lb.after) or len(la.shape) != len(lb.shape) \
                    or la.axis >= len(la.shape) - 2:
                raise self.refuse(node, "multiplies signals whose batches sit on different axes")
            lay = Layout(self.shape(out), la.axis, la.before, la.after)
        elif a in self.layouts:
            la = self.layouts[a]
            if la.axis == len(la.shape) - 1 or self.values[b].ndim != 2:
                raise self.refuse(node, "contracts the axis that holds the batch")
            lay = replace(la, shape=self.shape(out))
        else:
            lb = self.layouts[b]
            if lb.axis >= len(lb.shape) - 2 or self.values[a].ndim != 2:
                raise self.refuse(node, "contracts the axis that holds the batch")
            lay = Layout(self.shape(out), lb.axis + rank - len(lb.shape), lb.before, lb.after)
        self.nodes.append(self.renamed(node, {out: self.place(out, lay)}))

    def op_Gemm(self, node: onnx.NodeProto) -> None:
        a, out = node.input[0], node.output[0]
        lay_in = self.layouts.get(a)
        if lay_in is None or lay_in.leading or any(t in self.layouts for t in node.input[1:]):
            return self.batch_first_only(node)
        if node_attribute(node, "transA", 0) or lay_in.axis != 0:
            raise self.refuse(node, "contracts the axis that holds the batch")
        w = self.values[node.input[1]]
        w = (w.T if node_attribute(node, "transB", 0) else w) * node_attribute(node, "alpha", 1.0)
        lay = replace(lay_in, shape=self.shape(out))
        self.place(out, lay)
        name = node.name or out
        product = self.names[out] if len(node.input) < 3 or not node.input[2] else f"{out}/matmul{SUFFIX}"
        self.emit("MatMul", [self.names[a], self.const(f"{node.input[1]}/matmul", w.astype(self.values[a].dtype))],
                  product, name)
        if product != self.names[out]:
            c = np.asarray(self.values[node.input[2]]) * node_attribute(node, "beta", 1.0)
            if c.ndim == 2 and c.shape[0] != 1:
                raise self.refuse(node, "adds a bias that varies along the batch")
            self.emit("Add", [product, self.const(f"{node.input[2]}/bias", c.reshape(-1).astype(w.dtype))],
                      self.names[out], f"{name}/bias")

    def axis_op(self, node: onnx.NodeProto, axes: list[int], lay_in: Layout, lay_out: Layout,
                set_axes) -> None:
        """An op along `axes` (of its input): refused across the batch, else the same op on the batch-first
        tensor with the axes `set_axes(new_node, batch_first_axes)` writes."""
        rank = len(lay_in.shape)
        axes = [a % rank for a in axes]
        if lay_in.axis in axes:
            raise self.refuse(node, f"works along the axis that holds the batch (axis {lay_in.axis} of "
                                    f"{list(lay_in.shape)})")
        outs = [o for o in node.output if o]
        if lay_in.leading and lay_out.leading:
            self.keep(node, {o: replace(lay_out, shape=self.shape(o)) for o in outs})
            return
        new = self.renamed(node, {o: self.place(o, replace(lay_out, shape=self.shape(o))) for o in outs})
        set_axes(new, [lay_in.axis_of(a) for a in axes])
        self.nodes.append(new)

    def op_Softmax(self, node: onnx.NodeProto) -> None:
        lay = self.layouts[node.input[0]]
        if default_opset(self.model) < 13 and not lay.leading:
            raise self.refuse(node, "(below opset 13) flattens from its axis, across the batch")
        self.axis_op(node, [node_attribute(node, "axis", -1)], lay, lay, _write_axis)

    op_LogSoftmax = op_Softmax

    def op_QuantizeLinear(self, node: onnx.NodeProto) -> None:
        """Element-wise per tensor; per axis, along `axis` (remapped)."""
        lay = self.layouts[node.input[0]]
        scale = self.values.get(node.input[1])
        if scale is None or np.size(scale) == 1:
            return self.unary(node)
        self.axis_op(node, [node_attribute(node, "axis", 1)], lay, lay, _write_axis)

    op_DequantizeLinear = op_QuantizeLinear

    def op_DynamicQuantizeLinear(self, node: onnx.NodeProto) -> None:
        """Element-wise on its input, with one scale and zero point for the whole tensor (wherever its batch sits):
        the codes keep the input's layout; the scale and zero point, scalars, carry no batch."""
        lay = self.layouts[node.input[0]]
        self.keep(node, {node.output[0]: replace(lay, shape=self.shape(node.output[0]))})

    def op_LayerNormalization(self, node: onnx.NodeProto) -> None:
        lay = self.layouts[node.input[0]]
        rank = len(lay.shape)
        first = node_attribute(node, "axis", -1) % rank
        axes = list(range(first, rank))
        self.axis_op(node, axes, lay, lay, _write_axis)

    def op_Concat(self, node: onnx.NodeProto) -> None:
        lays = {self.layouts.get(t) and (self.layouts[t].axis, self.layouts[t].before, self.layouts[t].after)
                for t in node.input}
        lay = self.layouts[self.signals(node)[0]]
        if len(lays) != 1 and not lay.leading:
            raise self.refuse(node, "joins tensors whose batches sit on different axes (or a constant)")
        out = Layout(self.shape(node.output[0]), lay.axis, lay.before, lay.after)
        self.axis_op(node, [node_attribute(node, "axis")], lay, out, _write_axis)

    def op_Split(self, node: onnx.NodeProto) -> None:
        lay = self.layouts[node.input[0]]
        self.axis_op(node, [node_attribute(node, "axis", 0)], lay, lay, _write_axis)

    def op_Gather(self, node: onnx.NodeProto) -> None:
        if node.input[0] not in self.layouts:
            # rows of a constant table picked by signal indices (an embedding lookup of token ids): along axis 0 the
            # output is the indices' shape then the row's, its batch where the indices have it
            if node_attribute(node, "axis", 0) % self.values[node.input[0]].ndim:
                raise self.refuse(node, "gathers a constant along another axis than 0 by signal indices")
            return self.batch_first_only(node)
        lay = self.layouts[node.input[0]]
        if node.input[1] in self.layouts:
            return self.batch_first_only(node)
        axis = node_attribute(node, "axis", 0) % len(lay.shape)
        shift = self.values[node.input[1]].ndim - 1 if axis < lay.axis else 0
        out = Layout(self.shape(node.output[0]), lay.axis + shift, lay.before, lay.after)
        self.axis_op(node, [axis], lay, out, _write_axis)

    def op_Slice(self, node: onnx.NodeProto) -> None:
        lay = self.layouts[node.input[0]]
        rank = len(lay.shape)
        axes = (list(self.values[node.input[3]]) if len(node.input) > 3 and node.input[3]
                else list(range(len(self.values[node.input[1]]))))
        out = replace(lay, shape=self.shape(node.output[0]))

        def set_axes(new, ax):
            while len(new.input) < 4:
                new.input.append("")
            new.input[3] = self.const(f"{node.output[0]}/axes", np.array(ax, np.int64))
            for i in (1, 2, 4):   # the starts, ends and steps the rewrite keeps read constants
                if i < len(new.input) and new.input[i]:
                    new.input[i] = self.const(f"{node.output[0]}/in{i}", self.values[node.input[i]])
        self.axis_op(node, [int(a) % rank for a in axes], lay, out, set_axes)

    def reduction(self, node: onnx.NodeProto) -> None:
        lay = self.layouts[node.input[0]]
        rank = len(lay.shape)
        from_input = len(node.input) > 1 and node.input[1]
        axes = list(self.values[node.input[1]]) if from_input else node_attribute(node, "axes", None)
        if axes is None or not len(axes):
            if lay.leading:
                return self.batch_first_only(node)
            raise self.refuse(node, "reduces over every axis, the batch's included")
        axes = [int(a) % rank for a in axes]
        keep = node_attribute(node, "keepdims", 1)
        axis = lay.axis - (0 if keep else sum(a < lay.axis for a in axes))
        out = Layout(self.shape(node.output[0]), axis, lay.before, lay.after)

        def set_axes(new, ax):
            if from_input:
                new.input[1] = self.const(f"{node.output[0]}/axes", np.array(ax, np.int64))
            else:
                _set_attribute(new, "axes", ax)
        self.axis_op(node, axes, lay, out, set_axes)

    def signal_shapes(self, names: set) -> list[onnx.ValueInfoProto]:
        """Every batch-first signal's shape, the batch as the input's symbol: shape inference cannot see through
        the Shape arithmetic the exporter left (a class token's Expand, say) and would give it a fresh one."""
        out, outputs = [], {o.name for o in self.model.graph.output}
        for t, lay in self.layouts.items():
            name = self.names[t]
            if name in names and name not in self.data and name not in outputs and (t == name or not lay.leading):
                dtype = helper.np_dtype_to_tensor_dtype(self.values[t].dtype)
                dims = [self.symbol, *lay.batch_first_shape(self.n)[1:]]
                out.append(helper.make_tensor_value_info(name, dtype, dims))
        return list({vi.name: vi for vi in out}.values())
