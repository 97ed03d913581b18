"""Recurrent ops (ONNX RNN, GRU, LSTM) unrolled over their time steps, at load time.

A recurrent layer runs the same two matrices at every step: W on the step's input, R on the previous hidden
state. On a chip they are two programmed crossbars driven once per step, so the unrolled graph gives each
step a Gemm that reads the SAME initializer: the frontend records that name as the layer's weight source and
the lowering maps every Gemm of one source onto one crossbar (passes/map_conductances.share_crossbars), with
its programming noise common to all steps (read noise and converters stay per use). The rest of a step is
element-wise ops of the registry: gate slices, activations, the cell and hidden-state updates.

Both layouts and all three directions are unrolled; `clip` becomes a Clip before every gate activation (as in
onnxruntime, not before h of the cell state); the peepholes of LSTM are element-wise products; a zero initial
state (absent, or torch's ConstantOfShape of the batch size) leaves the first step without a recurrent product.
Per-sample `sequence_lens` (an int data input, exact: ir/ops/exact.py) mask the steps past each sample's length
with Where: the states are held and Y is zero there, as onnxruntime does. Refused in one line: a non-constant
W/R/B, LSTM's `input_forget`, activations that take parameters, a symbolic sequence length.
Runs before batch_first: with layout 0 the batch is on axis 1 of X and Y, which it then moves.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from memse_compiler.ir.errors import MemseInputError
from memse_compiler.ir.ops.base import node_attribute
from memse_compiler.opset_upgrade import constant_tensors, with_nodes

RECURRENT = {"RNN": 1, "GRU": 3, "LSTM": 4}                 # op -> gates per direction
DEFAULT_ACTIVATIONS = {"RNN": ["Tanh"], "GRU": ["Sigmoid", "Tanh"], "LSTM": ["Sigmoid", "Tanh", "Tanh"]}
ACTIVATIONS = {"Sigmoid", "Tanh", "Relu", "Softsign", "Softplus"}   # the ones without alpha/beta
# ops whose output is zero when their (first) input is: torch slices one zero initial state per layer
ZERO_PRESERVING = {"Slice", "Gather", "Squeeze", "Unsqueeze", "Reshape", "Transpose", "Identity", "Expand", "Split"}


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class _Unroller:
    """Builds the unrolled nodes of one recurrent node."""

    def __init__(self, node: onnx.NodeProto, values: dict[str, np.ndarray], zeros: set[str], seq: int, label: str):
        self.node, self.values, self.zeros, self.seq, self.label = node, values, zeros, seq, label
        self.op = node.op_type
        self.key = node.name or node.output[0]
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.hidden = int(node_attribute(node, "hidden_size", 0))
        self.layout = int(node_attribute(node, "layout", 0))
        direction = _text(node_attribute(node, "direction", b"forward"))
        self.directions = {"forward": [False], "reverse": [True], "bidirectional": [False, True]}.get(direction)
        if self.directions is None:
            raise self.refuse(f"has direction '{direction}' (forward, reverse or bidirectional)")
        self.clip = node_attribute(node, "clip", None)
        acts = [_text(a) for a in node_attribute(node, "activations", [])] or \
            DEFAULT_ACTIVATIONS[self.op] * len(self.directions)
        per_dir = len(DEFAULT_ACTIVATIONS[self.op])
        if len(acts) != per_dir * len(self.directions):
            raise self.refuse(f"lists {len(acts)} activations ({per_dir} per direction expected)")
        bad = [a for a in acts if a not in ACTIVATIONS]
        if bad or node_attribute(node, "activation_alpha") or node_attribute(node, "activation_beta"):
            raise self.refuse(f"uses activation {bad[0] if bad else 'parameters'} (supported: "
                              f"{', '.join(sorted(ACTIVATIONS))})")
        self.acts = [acts[d * per_dir:(d + 1) * per_dir] for d in range(len(self.directions))]
        if self.op == "LSTM" and node_attribute(node, "input_forget", 0):
            raise self.refuse("couples the input and forget gates (input_forget=1)")
        self.count = 0
        self.step = ""                 # direction@time of the step being built, for node names
        self.const_values: dict[str, np.ndarray] = {}

    def refuse(self, why: str) -> MemseInputError:
        return MemseInputError(f"{self.label}: node '{self.key}' ({self.op}) {why}")

    # ---- node building ------------------------------------------------------------------------------
    def input(self, i: int) -> str | None:
        return self.node.input[i] if len(self.node.input) > i and self.node.input[i] else None

    def state(self, i: int) -> str | None:
        """An initial state input, None when it is zero (absent, or zeros such as torch's ConstantOfShape of
        the batch size): the first step then has no recurrent product."""
        name = self.input(i)
        return None if name is None or name in self.zeros else name

    def constant(self, i: int, what: str) -> np.ndarray | None:
        name = self.input(i)
        if name is None:
            return None
        if name not in self.values:
            raise self.refuse(f"has a computed {what} (only constant weights map onto crossbars)")
        if not np.all(np.isfinite(self.values[name])):
            raise self.refuse(f"{what} initializer '{name}' contains NaN or inf")
        return self.values[name].astype(np.float32)

    def fresh(self, hint: str) -> str:
        self.count += 1
        return f"{self.key}/{hint}_{self.count}"

    def const(self, hint: str, value: np.ndarray, name: str | None = None) -> str:
        name = name or self.fresh(hint)
        self.const_values[name] = np.asarray(value, np.float32)
        self.inits.append(numpy_helper.from_array(self.const_values[name], name))
        return name

    def emit(self, op: str, inputs: list[str], hint: str, out: str | None = None, name: str | None = None,
             **attrs) -> str:
        out = out or self.fresh(hint)
        self.nodes.append(helper.make_node(op, inputs, [out], name=name or self.fresh(op), **attrs))
        return out

    def unsqueeze(self, x: str, axes: list[int]) -> str:
        return self.emit("Unsqueeze", [x, self.const_int("axes", axes)], "unsq")

    def const_int(self, hint: str, value) -> str:
        name = self.fresh(hint)
        self.inits.append(numpy_helper.from_array(np.asarray(value, np.int64), name))
        return name

    def activation(self, name: str, x: str, clip: bool = True) -> str:
        if clip and self.clip is not None:
            lim = float(self.clip)
            x = self.emit("Clip", [x, self.const("lo", np.float32(-lim)), self.const("hi", np.float32(lim))], "clip")
        return self.emit(name, [x], name.lower())

    def gate(self, parts: str, k: int) -> str:
        """Gate k of a (N, gates*H) product: columns [k H, (k+1) H); of a constant (gates*H,) bias, its slice."""
        h = self.hidden
        if parts in self.const_values:
            return self.const(f"g{k}", self.const_values[parts][k * h:(k + 1) * h])
        return self.emit("Slice", [parts, self.const_int("s", [k * h]), self.const_int("e", [(k + 1) * h]),
                                   self.const_int("ax", [1])], f"gate{k}")

    # ---- the unroll ---------------------------------------------------------------------------------
    def run(self) -> None:
        gates, h = RECURRENT[self.op], self.hidden
        W, R, B = self.constant(1, "W"), self.constant(2, "R"), self.constant(3, "B")
        if W is None or R is None:
            raise self.refuse("has no constant W and R")
        lens = self.input(4)
        full = lens is None or (lens in self.values and np.all(self.values[lens] == self.seq))
        # per-sample lengths (a data input, exact): steps past a sample's length hold its state and give Y zeros
        self.lengths = None if full else self.emit("Cast", [lens], "lens", to=onnx.TensorProto.INT64)
        self.valid_at: dict[int, str] = {}
        if B is None:
            B = np.zeros((len(self.directions), 2 * gates * h), np.float32)
        seq_axis = 1 if self.layout else 0
        steps = [self.emit("Gather", [self.node.input[0], self.const_int("t", t)], f"x{t}", axis=seq_axis)
                 for t in range(self.seq)]
        ys, finals_h, finals_c = [], [], []
        for d in range(len(self.directions)):
            outs, last, c_last = self.direction(d, steps, W[d], R[d], B[d])
            if self.used(0):    # Y: (seq, dirs, N, H) in layout 0, (N, seq, dirs, H) in layout 1
                axes = [1, 2] if self.layout else [0, 1]
                ys.append(self.emit("Concat", [self.unsqueeze(o, axes) for o in outs], "y", axis=seq_axis))
            finals_h.append(self.unsqueeze(last, [seq_axis]) if self.used(1) else None)
            finals_c.append(self.unsqueeze(c_last, [seq_axis]) if self.used(2) else None)
        self.finish(0, ys, 2 if self.layout else 1)
        self.finish(1, finals_h, seq_axis)        # Y_h, Y_c: (dirs, N, H) in layout 0, (N, dirs, H) in layout 1
        self.finish(2, finals_c, seq_axis)

    def valid(self, t: int) -> str:
        """(N, 1) bool: whether step t is within each sample's length."""
        if t not in self.valid_at:
            self.valid_at[t] = self.unsqueeze(self.emit("Less", [self.const_int("t", t), self.lengths], "valid"), [1])
        return self.valid_at[t]

    def masked(self, t: int, new: str, held: str | None) -> str:
        """`new` where step t is within the sample's length, else `held` (zeros when None)."""
        return self.emit("Where", [self.valid(t), new, held or self.const("zero", np.float32(0.0))], "held")

    def direction(self, d: int, steps: list[str], W: np.ndarray, R: np.ndarray, B: np.ndarray
                  ) -> tuple[list, str, str]:
        """The steps of direction d: (its output at every time, its last hidden and cell (LSTM) states). With
        per-sample lengths a step past a sample's length outputs zeros and keeps its states, so the reverse
        direction starts at each sample's last step, as ONNX specifies."""
        gates, h = RECURRENT[self.op], self.hidden
        # GRU without linear_before_reset: R_h multiplies r * H, a product of its own (a third crossbar)
        split = self.op == "GRU" and not node_attribute(self.node, "linear_before_reset", 0)
        rows = 2 * h if split else gates * h
        # one crossbar each: the Gemms of every step read these initializers
        w, r = self.const(f"W{d}", W), self.const(f"R{d}", R[:rows])
        wb, rb = self.const(f"Wb{d}", B[:gates * h]), self.const(f"Rb{d}", B[gates * h:gates * h + rows])
        r_h = (self.const(f"Rh{d}", R[2 * h:]), self.const(f"Rbh{d}", B[5 * h:])) if split else None
        peep = self.constant(7, "P") if self.op == "LSTM" else None
        init_h, init_c = self.state(5), (self.state(6) if self.op == "LSTM" else None)
        h_prev = self.initial(init_h, d) if init_h else None
        c_prev = self.initial(init_c, d) if init_c else None
        outs = [None] * self.seq
        for t in (reversed(range(self.seq)) if self.directions[d] else range(self.seq)):
            # the crossbar products are named after their matrix and step: '<node>/W0@t3'
            self.step = f"{d}@t{t}"
            xw = self.emit("Gemm", [steps[t], w, wb], "xw", name=f"{self.key}/W{self.step}", transB=1)
            hr = self.emit("Gemm", [h_prev, r, rb], "hr", name=f"{self.key}/R{self.step}", transB=1) if h_prev else rb
            acts = self.acts[d]
            c_new = None
            if self.op == "RNN":
                h_new = self.activation(acts[0], self.emit("Add", [xw, hr], "a"))
            elif self.op == "GRU":
                h_new = self.gru_step(xw, hr, h_prev, r_h, acts)
            else:
                h_new, c_new = self.lstm_step(xw, hr, c_prev, None if peep is None else peep[d], acts)
            if self.lengths is None:
                h_prev, c_prev, outs[t] = h_new, c_new, h_new
                continue
            outs[t] = self.masked(t, h_new, None)
            h_prev = self.masked(t, h_new, h_prev)
            c_prev = self.masked(t, c_new, c_prev) if c_new is not None else None
        return outs, h_prev, c_prev

    def used(self, i: int) -> bool:
        return len(self.node.output) > i and bool(self.node.output[i])

    def initial(self, name: str, d: int) -> str:
        """Direction d of an initial state (dirs, N, H) in layout 0, (N, dirs, H) in layout 1."""
        return self.emit("Gather", [name, self.const_int("d", d)], "init", axis=1 if self.layout else 0)

    def finish(self, i: int, parts: list[str], axis: int) -> None:
        if not self.used(i):
            return
        out = self.node.output[i]
        if len(parts) == 1:
            self.emit("Identity", parts, "out", out=out)
        else:
            self.emit("Concat", parts, "out", out=out, axis=axis)

    def gru_step(self, xw: str, hr: str, h_prev: str | None, r_h: tuple[str, str] | None,
                 acts: list[str]) -> str:
        f, g = acts
        z = self.activation(f, self.emit("Add", [self.gate(xw, 0), self.gate(hr, 0)], "z"))
        rgate = self.activation(f, self.emit("Add", [self.gate(xw, 1), self.gate(hr, 1)], "r"))
        if r_h is None:           # linear_before_reset: r * (H R_h^T + Rb_h)
            cand = self.emit("Mul", [rgate, self.gate(hr, 2)], "rh")
        elif h_prev is None:      # (r * 0) R_h^T + Rb_h
            cand = r_h[1]
        else:
            cand = self.emit("Gemm", [self.emit("Mul", [rgate, h_prev], "rh"), r_h[0], r_h[1]], "hrh",
                             name=f"{self.key}/Rh{self.step}", transB=1)
        n = self.activation(g, self.emit("Add", [self.gate(xw, 2), cand], "n"))
        new = self.emit("Mul", [self.emit("Sub", [self.const("one", np.float32(1.0)), z], "1mz"), n], "zn")
        if h_prev is None:
            return new
        return self.emit("Add", [new, self.emit("Mul", [z, h_prev], "zh")], "h")

    def lstm_step(self, xw: str, hr: str, c_prev: str | None, peep: np.ndarray | None,
                  acts: list[str]) -> tuple[str, str]:
        f, g, hact = acts
        h = self.hidden
        pre = [self.emit("Add", [self.gate(xw, k), self.gate(hr, k)], "pre") for k in range(4)]   # i, o, f, c

        def peephole(x: str, k: int, c: str | None) -> str:
            if peep is None or c is None:
                return x
            return self.emit("Add", [x, self.emit("Mul", [c, self.const("p", peep[k * h:(k + 1) * h])], "pc")], "pp")
        i = self.activation(f, peephole(pre[0], 0, c_prev))
        cand = self.activation(g, pre[3])
        c = self.emit("Mul", [i, cand], "ic")
        if c_prev is not None:
            forget = self.activation(f, peephole(pre[2], 2, c_prev))
            c = self.emit("Add", [self.emit("Mul", [forget, c_prev], "fc"), c], "c")
        o = self.activation(f, peephole(pre[1], 1, c))
        # onnxruntime applies h to the unclipped cell state (its tanh_m/sigmoid_m ignore the clipped copy)
        return self.emit("Mul", [o, self.activation(hact, c, clip=False)], "h"), c


def _sequence_lengths(model: onnx.ModelProto, shapes: dict, label: str) -> dict[str, int]:
    """The sequence length of every recurrent node's X: from its static shape, else (torch computes the reshape
    before a batch-first LSTM from Shape ops) from one onnxruntime probe; refused if it changes with the batch."""
    from memse_compiler.batch_first import PROBE_BATCH, CHECK_BATCH, probe_values
    lengths, unknown = {}, []
    for node in (n for n in model.graph.node if n.op_type in RECURRENT):
        axis = 1 if node_attribute(node, "layout", 0) else 0
        dims = shapes.get(node.input[0])
        dim = dims.dim[axis] if dims is not None and len(dims.dim) == 3 else None
        if dim is not None and dim.HasField("dim_value"):
            lengths[node.input[0]] = dim.dim_value
        else:
            unknown.append((node, axis))
    if unknown:
        inits = {t.name for t in model.graph.initializer}
        data = [vi.name for vi in model.graph.input if vi.name not in inits]
        try:
            probes = [probe_values(model, data, b) for b in (PROBE_BATCH, CHECK_BATCH)]
        except Exception:
            probes = []
        for node, axis in unknown:
            seen = {p[node.input[0]].shape[axis] for p in probes if node.input[0] in p}
            if len(seen) != 1:
                raise MemseInputError(f"{label}: node '{node.name or node.output[0]}' ({node.op_type}) runs over a "
                                      f"sequence whose length is not fixed (export with a static sequence length)")
            lengths[node.input[0]] = seen.pop()
    return lengths


def refuse_sequence_first_input(model: onnx.ModelProto, label: str) -> None:
    """The compiler's signals start with the batch, the graph input too: a layout-0 recurrent node reading the
    input itself, (seq, batch, features), is refused in one line (torch's batch_first=True exports a Transpose
    in front, which batch_first.py follows)."""
    graph = model.graph
    data = {vi.name for vi in graph.input} - {t.name for t in graph.initializer}
    for node in graph.node:
        if node.op_type in RECURRENT and not int(node_attribute(node, "layout", 0)) and node.input[0] in data:
            raise MemseInputError(f"{label}: node '{node.name or node.output[0]}' ({node.op_type}) reads the graph "
                                  f"input '{node.input[0]}' sequence-first (layout 0): the input must start with the "
                                  f"batch (export with batch_first=True, or use layout=1)")


def unroll_recurrent(model: onnx.ModelProto, label: str) -> onnx.ModelProto:
    """`model` with every RNN/GRU/LSTM node replaced by its unrolled steps (unchanged if it has none)."""
    graph = model.graph
    if not any(n.op_type in RECURRENT for n in graph.node):
        return model
    values = {k: numpy_helper.to_array(t) for k, t in constant_tensors(graph).items()}
    shapes = {vi.name: vi.type.tensor_type.shape for vi in list(graph.input) + list(graph.value_info)}
    zeros = {k for k, v in values.items() if v.dtype.kind == "f" and not np.any(v)}
    for node in graph.node:      # a ConstantOfShape of zeros (its default value) whatever its shape, and parts of one
        value = node_attribute(node, "value")
        if node.op_type == "ConstantOfShape" and (value is None or not np.any(numpy_helper.to_array(value))):
            zeros.add(node.output[0])
        elif node.op_type in ZERO_PRESERVING and node.input and node.input[0] in zeros:
            zeros.update(node.output)
    lengths = _sequence_lengths(model, shapes, label)
    nodes, inits = [], []
    for node in graph.node:
        if node.op_type not in RECURRENT:
            nodes.append(node)
            continue
        unroller = _Unroller(node, values, zeros, lengths[node.input[0]], label)
        unroller.run()
        nodes += unroller.nodes
        inits += unroller.inits
    return with_nodes(model, nodes, inits, label, "unrolling the recurrent ops")
