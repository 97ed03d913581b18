"""Noisy onnxruntime executor: the Monte-Carlo reference of DESIGN §6, implementing §4 exactly.

The lowered graph is rewritten ONCE into an ONNX model run by ONE reused InferenceSession:

* digital units are re-emitted from their original ``onnx_node`` (their constant operands become
  initializers), so they keep the original opset's semantics;
* each crossbar layer becomes  DAC -> per row tile [Conv | MatMul] -> (+ read noise) -> ADC -> Sum -> bias.
  The layer's programmed weight W (ONNX layout, bias row excluded) and its bias-row weights are GRAPH INPUTS:
  a chip is one numpy draw of them. A row tile uses W sliced to the input channels (Conv) / rows (MatMul)
  it covers; a Conv tile that starts or ends inside a channel multiplies the slice by a constant 0/1 mask
  (rows follow the (cin, kh, kw) weight order, DESIGN §4.9). The bias row lives in the last tile as the
  Conv's B input / an Add.
* read noise is exact and cheap: given the crossbar input x, a tile's extra partial sum
  sum_j (r+_j - r-_j) x_j / c_o is N(0, 2 s_r^2 / c_o^2 * sum_{j in tile} x_j^2) (bias row: x = 1), independent
  across outputs, positions and samples. It is fed as a N(0, 2 s_r^2 / c_o^2) graph input per layer and row
  tile (drawn by numpy, so the scale costs nothing in the graph) and scaled in-graph by sqrt(sum x^2):
  ReduceSumSquare (MatMul rows; Conv channels, then a 1-channel box conv over the window).
* DAC/ADC: Div, Round (half to even, as numpy), Clip, Mul with per-output ADC steps as initializers.

Precision: everything runs in float32 (onnxruntime's Conv is float-only; inputs and float constants are cast),
except the DAC, computed in float64: its inputs are often exactly on a rounding tie (pixels k/16 on a 63-step
DAC) and must round as the float64 numpy model does. Results match `interpret.run(g, x, hardware=True)` to
float32 tolerance. All noise is drawn with numpy from the caller's ``np.random.default_rng`` (float32 Box-Muller
normals, `memse_compiler.sampling`, ~2 ns each); nothing random happens inside onnxruntime.
Needs ONNX opset >= 11 (the model keeps its own opset, so digital nodes keep their semantics).

Exposed signals (graph outputs): every float tensor of the original model that the graph computes, and per
layer L: ``L/dac`` (only when there is a DAC; otherwise `run_*` aliases it to the layer input), ``L/ps[r]``
(row tile r's partial sum after read noise), ``L/adc_out[r]`` (after its ADC; alias of ``L/ps[r]`` without
ADC) and ``L/sum`` (before a digital bias). Row-tile tensors hold all groups and column tiles in the layer's
output layout (Conv: (N, Cout, Ho, Wo), also for 1-D convs; MatMul/Gemm: (..., O) before any transpose);
`tile_vectors` turns them into the analysis' (N, P, G, O) vector layout, of which the analysis signals
``L/ps[g,r,c]`` / ``L/adc_out[g,r,c]`` are slices.

Several chips per run (`chips_per_run`, matrix networks: memse_compiler/chip_batching.py): the input batch is
tiled, chip c holding samples [c N, (c+1) N) of every tensor; a MatMul layer reshapes its input to (chips, N, J)
against the chips' (chips, J, O) weights, so its row-tile tensors are (chips, N, O). `split_chips` gives the
values of each chip as a one-chip executor would.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from memse_compiler.chip_batching import chip_batching_obstacle
from memse_compiler.ir import KIND_INPUT, KIND_OUTPUT, MemseGraph, schedule
from memse_compiler.ir.errors import MemseInputError
from memse_compiler.ir.feeds import Inputs, feed_batch, graph_feed, input_dtype
from memse_compiler.ir.crossbar import CrossbarLayer, converter_levels
from memse_compiler.ir.geometry import ConvGeometry
from memse_compiler.ir.ops import rule_for
from memse_compiler.sampling import standard_normal
from passes.crossbar_math import device_std

if TYPE_CHECKING:
    from device_models import Device

MIN_OPSET = 11          # Round, and Clip/Slice with tensor inputs


def row_tile_name(layer: str, kind: str, r: int) -> str:
    """Graph-output name of row tile r's partial sums (kind "ps") or ADC outputs (kind "adc_out")."""
    return f"{layer}/{kind}[{r}]"


def tile_vectors(layer: CrossbarLayer, y: np.ndarray) -> np.ndarray:
    """A row-tile tensor in the layer's output layout -> the (N, P, G, O) vector layout of the analysis."""
    if isinstance(layer.geometry, ConvGeometry):
        n = y.shape[0]
        return y.reshape(n, layer.groups, layer.outs, -1).transpose(0, 3, 1, 2)
    return y.reshape(y.shape[0] if y.ndim > 1 else 1, -1, 1, y.shape[-1])


class _Builder:
    """Accumulates the rewritten ONNX graph; names made unique under a private prefix."""

    def __init__(self, opset: int):
        self.opset, self.nodes, self.inits, self.inputs = opset, [], [], []
        self._n, self._const_names = 0, set()

    def fresh(self, hint: str) -> str:
        self._n += 1
        return f"__memse/{hint}#{self._n}"

    def const(self, hint: str, value: np.ndarray, name: str | None = None) -> str:
        name = name or self.fresh(hint)
        if name not in self._const_names:
            self._const_names.add(name)
            self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def input(self, name: str, shape: tuple, elem: int = TensorProto.FLOAT) -> str:
        dims = ["N" if d is None else int(d) for d in shape]
        self.inputs.append(helper.make_tensor_value_info(name, elem, dims))
        return name

    def op(self, op_type: str, inputs: list[str], out: str | None = None, **attrs) -> str:
        out = out or self.fresh(op_type)
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=self.fresh(op_type), **attrs))
        return out

    def slice(self, x: str, start: int, stop: int, axis: int) -> str:
        ints = lambda v: self.const("i64", np.array([v], np.int64))  # noqa: E731
        return self.op("Slice", [x, ints(start), ints(stop), ints(axis)])

    def reshape(self, x: str, shape: list[int], out: str | None = None) -> str:
        return self.op("Reshape", [x, self.const("shape", np.array(shape, np.int64))], out)

    def quantize(self, x: str, step: np.ndarray, qmin: int, qmax: int, out: str | None, exact: bool) -> str:
        """step * clip(round(x / step), qmin, qmax). exact: in float64, so that exact ties (quantized inputs such
        as pixels k/16 on a DAC) round as the float64 numpy model does; else float32."""
        dt, elem = (np.float64, TensorProto.DOUBLE) if exact else (np.float32, TensorProto.FLOAT)
        s = self.const("step", np.asarray(step, dt))
        q = self.op("Round", [self.op("Div", [self.op("Cast", [x], to=elem) if exact else x, s])])
        lo, hi = self.const("qmin", np.array(qmin, dt)), self.const("qmax", np.array(qmax, dt))
        q = self.op("Clip", [q, lo, hi]) if self.opset >= 12 else self.op("Min", [self.op("Max", [q, lo]), hi])
        if exact:
            return self.op("Cast", [self.op("Mul", [q, s])], out, to=TensorProto.FLOAT)
        return self.op("Mul", [q, s], out)

    def reduce_sum_square(self, x: str, axis: int) -> str:
        """Sum of squares over one axis, kept (axes became an input in opset 18)."""
        if self.opset >= 18:
            return self.op("ReduceSumSquare", [x, self.const("axes", np.array([axis], np.int64))], keepdims=1)
        return self.op("ReduceSumSquare", [x], axes=[axis], keepdims=1)

    def rename(self, old: str, new: str) -> str:
        """Give a tensor produced by a recent node another name (instead of an Identity copy)."""
        for k in range(len(self.nodes) - 1, -1, -1):
            node = self.nodes[k]
            if old in node.output:
                node.output[:] = [new if o == old else o for o in node.output]
                for later in self.nodes[k + 1:]:
                    later.input[:] = [new if i == old else i for i in later.input]
                return new
        raise KeyError(old)


@dataclass
class _LayerPlan:
    """What a chip draw needs for one layer: targets, per-device std, 1/c, and the feed layout."""
    layer: CrossbarLayer
    w_input: str
    b_input: str | None
    w_shape: tuple
    transpose: bool                        # MatMul weights are fed as (J, O)
    g_target: np.ndarray = field(repr=False, default=None)   # (2, G, O, Jb) float32: G+ and G- targets
    std: float | np.ndarray = field(repr=False, default=None)  # their programming-noise std (float: uniform)
    inv_c: np.ndarray = field(repr=False, default=None)      # 1/c, float32, broadcasting to (G, O, Jb)
    # read-noise inputs: (name, shape with None = batch, std per output: a float or an array broadcasting to shape)
    noise: list[tuple[str, tuple, float | np.ndarray]] = field(default_factory=list)

    def feed(self, w: np.ndarray, buffer=None) -> dict[str, np.ndarray]:
        """Effective weights (G, O, Jb) -> this layer's weight (and bias-row) graph inputs, float32.
        buffer(name, shape): a float32 array to write an input into (None: fresh arrays)."""
        lay = self.layer
        j = lay.weight.shape[2]
        if buffer is None:
            buffer = lambda name, shape: np.empty(shape, np.float32)  # noqa: E731
        if w.ndim == 4:           # chips batched (chips, 1, O, Jb): MatMul layers only (chip_batching_obstacle)
            m = w[:, 0, :, :j].transpose(0, 2, 1)
        else:
            m = w[0, :, :j].T if self.transpose else w[:, :, :j]
        out = {self.w_input: buffer(self.w_input, self.w_shape)}
        np.copyto(out[self.w_input].reshape(m.shape), m)
        if self.b_input:
            bias = w[:, 0, :, j][:, None, :] if w.ndim == 4 else w[:, :, j]
            out[self.b_input] = buffer(self.b_input, (bias.size,))
            np.copyto(out[self.b_input].reshape(bias.shape), bias)
            out[self.b_input] = out[self.b_input].reshape(bias.shape if w.ndim == 4 else (-1,))
        return out


class NoisyExecutor:
    """Runs the lowered graph `g` as noisy chips of `device` (default: the device `g` was lowered for; only its
    noise fields are read, the mapping, tiling and converters are those of `g`). One InferenceSession, reused
    for every chip; `threads` = onnxruntime intra-op threads (None: its default). `chips_per_run` > 1 stacks
    that many chips on the batch axis of every run (small matrix networks, see `chip_batching_obstacle`): a
    run's values then hold all of them, `split_chips` separates them.

        ex = NoisyExecutor(g)
        values = ex.run_chip(x, np.random.default_rng(0))     # {tensor: array} for one chip on batch x
        chip = ex.draw_chip(rng); ex.run(x1, chip, rng); ex.run(x2, chip, rng)   # one chip, several batches
    """

    def __init__(self, g: MemseGraph, device: Device | None = None, threads: int | None = None,
                 chips_per_run: int = 1):
        import onnxruntime as ort
        if chips_per_run > 1:
            reason = chip_batching_obstacle(g)
            if reason:
                raise ValueError(f"chips_per_run > 1: {reason}")
        self.chips = int(chips_per_run)
        self.g = g
        self.device = device if device is not None else g.graph["device"]
        self.read_sigma = float(self.device.read_noise.sigma)
        pn = self.device.programming_noise
        self.programming = pn.sigma > 0 or pn.relative > 0
        opset = int(g.graph.get("opset", 17))
        if opset < MIN_OPSET:
            # its digital nodes run as exported, next to Round and tensor-bound Clip/Slice of opset 11
            raise MemseInputError(f"the Monte-Carlo executor needs ONNX opset >= {MIN_OPSET} (the model has "
                                  f"{opset}): export it with opset_version >= {MIN_OPSET}")
        self.input_names = list(g.graph["inputs"])
        self.aliases: dict[str, str] = {}
        self._plans: dict[str, _LayerPlan] = {}     # one per programmed crossbar
        b = _Builder(opset)
        self._chip_major: set[str] = set()      # chip-batched tensors laid out (chips, N, ...) rather than (chips*N, ...)
        self.feed_names: dict[str, str] = {}     # data input -> the session input it is fed as
        for i, name in enumerate(self.input_names):
            declared = input_dtype(g, name)         # float inputs run in float32; ids and masks as declared
            elem = TensorProto.FLOAT if declared.kind == "f" else helper.np_dtype_to_tensor_dtype(declared)
            if self.chips > 1:      # the batch is fed once and tiled: chip c sees samples [c N, (c+1) N)
                self.feed_names[name] = b.input(f"__memse/input{i or ''}", g.tensors[name], elem)
                reps = np.ones(len(g.tensors[name]), np.int64)
                reps[0] = self.chips
                b.op("Tile", [self.feed_names[name], b.const(f"reps{i or ''}", reps)], name)
            else:
                self.feed_names[name] = b.input(name, g.tensors[name], elem)
        consts, ref = g.graph["constants"], g.graph.get("reference", {})
        outputs: list[str] = []
        for unit in schedule(g):
            if unit in g.layers:
                outputs += self._emit_layer(b, g.layers[unit])
                continue
            data = g.nodes[unit]
            if data["kind"] in (KIND_INPUT, KIND_OUTPUT):
                continue
            original = onnx.NodeProto()
            original.CopyFrom(data["onnx_node"])
            for node in rule_for(data["op"]).emit(original, data["attrs"], b.const):
                for name in node.input:
                    if name in consts:       # float constants are float64 in the IR; the graph runs in float32
                        c = consts[name]
                        b.const(name, c.astype(np.float32) if c.dtype.kind == "f" else c, name=name)
                b.nodes.append(node)
            outputs += list(data["outputs"])
        # expose float tensors only (integer side tensors such as shapes stay internal)
        outputs = [t for t in dict.fromkeys(outputs)
                   if t not in ref or np.asarray(ref[t]).dtype.kind == "f"]
        graph = helper.make_graph(b.nodes, f"{g.graph.get('name', 'model')}_noisy", b.inputs,
                                  [helper.make_value_info(t, onnx.TypeProto()) for t in outputs],
                                  initializer=b.inits)
        opsets = [helper.make_opsetid("", opset)]
        model = helper.make_model(graph, opset_imports=opsets,
                                  ir_version=max(7, helper.find_min_ir_version_for(opsets)))
        self.model = onnx.shape_inference.infer_shapes(model)
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        self.session = ort.InferenceSession(self.model.SerializeToString(), opts,
                                            providers=["CPUExecutionProvider"])
        self.output_names = outputs
        self._noiseless = self._weights(None)
        self._bufs: dict[tuple, np.ndarray] = {}

    # ---- graph construction -----------------------------------------------------------------------
    def _emit_layer(self, b: _Builder, lay: CrossbarLayer) -> list[str]:
        L, conv = lay.name, isinstance(lay.geometry, ConvGeometry)
        G, O, J, T = lay.groups, lay.outs, lay.weight.shape[2], lay.rows_per_tile
        exposed = []
        x = lay.input
        if lay.dac_bits is not None:
            x = b.quantize(x, lay.dac_step(), *converter_levels(lay.dac_bits, lay.dac_signed), f"{L}/dac", True)
            exposed.append(x)
        else:
            self.aliases[f"{L}/dac"] = lay.input
        x_shape = self.g.tensors[lay.input]
        c_out = np.broadcast_to(lay.scale_c, (G, O, 1)).reshape(G * O)
        read_var = 2.0 * self.read_sigma ** 2 / c_out ** 2        # per output: 2 s_r^2 / c_o^2
        uniform = bool(np.all(read_var == read_var[0]))           # a scalar scale is free in the draw
        if conv:
            win = lay.geometry.windows
            (kh, kw), (ho, wo), K = win.kernel, win.out_hw, win.kernel[0] * win.kernel[1]
            cg = J // K
            w_shape, o_shape = (G * O, cg, kh, kw), (G * O, 1, 1)
            if lay.geometry.one_d:     # run 1-D convs as 2-D with H = 1, like the geometry does
                x = b.reshape(x, [0, lay.geometry.in_channels, 1, x_shape[-1]])
            attrs = dict(kernel_shape=list(win.kernel), strides=list(win.strides), dilations=list(win.dilations),
                         pads=list(win.pads), group=G)
        else:
            geo = lay.geometry
            w_shape, o_shape = (J, O), (O,)
            if geo.in_columns:
                x = b.op("Transpose", [x], perm=[1, 0])
            lead = (x_shape[1],) if geo.in_columns else tuple(x_shape[:-1])
            if self.chips > 1:    # (chips * N, J) -> (chips, N, J) against each chip's (J, O)
                x, w_shape, lead = b.reshape(x, [self.chips, -1, J]), (self.chips, J, O), (self.chips, None)
        shared = self._plans.get(lay.crossbar)
        if shared is not None:       # a crossbar programmed once: every op driving it reads the same draw
            w_in, b_in = shared.w_input, shared.b_input
        else:
            w_in = b.input(f"{L}/weight", w_shape)
            b_in = None
            if lay.bias_row:
                b_in = b.input(f"{L}/bias_row", (self.chips, 1, G * O) if self.chips > 1 else (G * O,))
        plan = _LayerPlan(lay, w_in, b_in, w_shape, transpose=not conv)
        tiles = []
        for r in range(lay.row_tiles):
            r0, r1 = r * T, min((r + 1) * T, lay.rows)
            has_bias = lay.bias_row and r1 == lay.rows
            w1 = min(r1, J)                                  # weight rows [r0, w1) of this tile
            ps_name = row_tile_name(L, "ps", r)
            if conv:
                c0, c1 = (r0 // K, -(-w1 // K)) if w1 > r0 else (0, 1)
                xs, ws = x, w_in
                if (c0, c1) != (0, cg):
                    idx = np.concatenate([np.arange(c0, c1) + grp * cg for grp in range(G)])
                    xs = b.slice(x, c0, c1, 1) if G == 1 else b.op("Gather", [x, b.const("idx", idx)], axis=1)
                    ws = b.slice(w_in, c0, c1, 1)
                rows = np.arange(c0 * K, c1 * K)
                mask = ((rows >= r0) & (rows < w1)).astype(np.float32).reshape(1, c1 - c0, kh, kw)
                if not mask.all():
                    ws = b.op("Mul", [ws, b.const("mask", mask)])
                ps = b.op("Conv", [xs, ws] + ([b_in] if has_bias else []), **attrs)
            else:
                if w1 > r0:
                    xs = x if (r0, w1) == (0, J) else b.slice(x, r0, w1, -1)
                    ws = w_in if (r0, w1) == (0, J) else b.slice(w_in, r0, w1, 1 if self.chips > 1 else 0)
                else:                  # a tile holding only the bias row: a zero product of the right shape
                    xs, ws = b.slice(x, 0, 1, -1), b.const("zero", np.zeros((1, O), np.float32))
                ps = b.op("MatMul", [xs, ws])
                if has_bias:
                    ps = b.op("Add", [ps, b_in])
            if self.read_sigma > 0:
                # the tile's read noise: sqrt(sum over its rows of x^2 (bias row: 1)) * z, z ~ N(0, read_var)
                # per output, drawn (scaled) by numpy
                if w1 <= r0:           # only the bias row: sum of squares 1
                    root = None
                elif conv:             # per group: (N, G, Ho, Wo)
                    root = b.op("Sqrt", [self._conv_sum_squares(b, x, xs, c0, mask, attrs, G, has_bias)])
                else:
                    ssq = b.reduce_sum_square(xs, -1)
                    root = b.op("Sqrt", [b.op("Add", [ssq, b.const("one", np.array(1, np.float32))])
                                         if has_bias else ssq])
                z_name = f"{L}/read_noise[{r}]"
                rstd = np.sqrt(read_var)
                if conv and G > 1 and O > 1:     # (N, G, O, Ho, Wo) so each group's sum of x^2 broadcasts
                    z_shape, rstd = (None, G, O, ho, wo), rstd.reshape(G, O, 1, 1)
                    z = b.input(z_name, z_shape)
                    term = z if root is None else b.op("Mul", [b.reshape(root, [0, G, 1, ho, wo]), z])
                    term = b.reshape(term, [0, G * O, ho, wo])
                else:
                    z_shape, rstd = ((None, G * O, ho, wo), rstd.reshape(G * O, 1, 1)) if conv else (lead + (O,), rstd)
                    z = b.input(z_name, z_shape)
                    term = z if root is None else b.op("Mul", [root, z])
                plan.noise.append((z_name, z_shape, float(rstd.flat[0]) if uniform else rstd.astype(np.float32)))
                ps = b.op("Add", [ps, term])
            exposed.append(b.rename(ps, ps_name))
            ps = ps_name
            if lay.adc_bits is not None:
                step = lay.adc_steps()[:, r, :].reshape(o_shape)
                ps = b.quantize(ps, step, *converter_levels(lay.adc_bits, True), row_tile_name(L, "adc_out", r), False)
                exposed.append(ps)
            else:
                self.aliases[row_tile_name(L, "adc_out", r)] = ps
            tiles.append(ps)
            if self.chips > 1:
                self._chip_major.update((ps_name, ps))
        digital_bias = lay.bias is not None and not lay.bias_row
        y = tiles[0] if len(tiles) == 1 else b.op("Sum", tiles)
        if self.chips > 1:
            y = b.reshape(y, [-1, O])
        if conv and lay.geometry.one_d:
            y = b.reshape(y, [0, G * O, wo])
        elif not conv and lay.geometry.out_columns:
            y = b.op("Transpose", [y], perm=[1, 0])
        if digital_bias:
            y = self._name(b, y, f"{L}/sum", exposed)
            bias = lay.bias.reshape(-1).astype(np.float32)
            if conv:
                bias = bias.reshape((-1, 1) if lay.geometry.one_d else (-1, 1, 1))
            elif lay.geometry.out_columns:
                bias = bias.reshape(-1, 1)
            exposed.append(b.op("Add", [y, b.const("bias", bias)], lay.output))
        else:
            self._name(b, y, lay.output, exposed)
        # what a chip draw needs: float32, as the graph computes (conductance errors ~1e-7 of G, far below a level)
        plan.g_target = np.stack([lay.g_plus, lay.g_minus]).astype(np.float32)
        std = np.stack([device_std(lay.g_plus, self.device), device_std(lay.g_minus, self.device)])
        plan.std = float(std.flat[0]) if np.all(std == std.flat[0]) else std.astype(np.float32)
        plan.inv_c = (1.0 / np.asarray(lay.scale_c, dtype=np.float64)).astype(np.float32)
        if shared is None:
            self._plans[lay.crossbar] = plan
        else:
            shared.noise += plan.noise       # its read noise is its own, drawn with the crossbar's
        return exposed

    @staticmethod
    def _conv_sum_squares(b: _Builder, x: str, xs: str, c0: int, mask: np.ndarray, attrs: dict, groups: int,
                          has_bias: bool) -> str:
        """Sum over a conv row tile's rows of x^2 (bias row: 1) at every output position, per group: (N, G, Ho, Wo).
        x: the layer input, xs: its channels the tile touches (from c0), mask: (1, channels, kh, kw) 0/1 rows.
        One group: the channels the tile covers whole are summed first (ReduceSumSquare over channels) and then
        box-filtered by a 1-channel conv; the (at most two) channels it covers in part get a 1-channel conv with
        their own mask. That is ~C times less work than a conv of x^2 with the mask. Several groups: one conv of
        x^2 with the mask per group."""
        if groups > 1:
            parts = [b.op("Conv", [b.op("Mul", [xs, xs]), b.const("mask", np.repeat(mask, groups, axis=0))], **attrs)]
        else:
            full = mask.reshape(mask.shape[1], -1).all(axis=1)
            whole = np.flatnonzero(full)
            parts = []
            if whole.size:
                a, e = c0 + int(whole[0]), c0 + int(whole[-1]) + 1      # contiguous: rows are a contiguous range
                box = b.const("box", np.ones((1, 1) + mask.shape[2:], np.float32))
                parts.append(b.op("Conv", [b.reduce_sum_square(b.slice(x, a, e, 1), 1), box], **attrs))
            for i in np.flatnonzero(~full):
                xc = b.slice(x, c0 + int(i), c0 + int(i) + 1, 1)
                parts.append(b.op("Conv", [b.op("Mul", [xc, xc]), b.const("mask", mask[:, i:i + 1])], **attrs))
        if has_bias:
            parts.append(b.const("one", np.array(1, np.float32)))
        return parts[0] if len(parts) == 1 else b.op("Sum", parts)

    def _name(self, b: _Builder, y: str, name: str, exposed: list[str]) -> str:
        """Make tensor `y` available as `name`: rename it, or when it is itself a named (exposed) row-tile
        signal, rename it and keep the old name as an alias of the new one (no copy either way)."""
        if y in exposed:
            exposed[exposed.index(y)] = name
            self.aliases = {a: (name if t == y else t) for a, t in self.aliases.items()}
            self.aliases[y] = name
        else:
            exposed.append(name)
        b.rename(y, name)
        return name

    # ---- chips ------------------------------------------------------------------------------------
    @property
    def plans(self) -> list[_LayerPlan]:
        """What a chip draw needs, one plan per programmed crossbar, in graph order."""
        return list(self._plans.values())

    def _buffer(self, key: tuple, shape: tuple) -> np.ndarray:
        """A reused float32 array (allocated once: on ResNet-18 a chip's inputs are ~0.4 GB, and fresh pages
        cost more than the arithmetic that fills them)."""
        buf = self._bufs.get(key)
        if buf is None or buf.shape != tuple(shape):
            buf = self._bufs[key] = np.zeros(shape, np.float32)
        return buf

    def _weights(self, rng: np.random.Generator | None, slot: int | None = None) -> dict[str, np.ndarray]:
        """One chip's programmed weights (rng=None: the noiseless programmed chip), as graph inputs. slot: write
        them into that set of reused buffers (see `_read_noise`); None: fresh arrays the caller may keep."""
        clip = self.device.programming_noise.clip_at_zero
        feed = {}
        buffer = None if slot is None else (lambda name, shape: self._buffer(("w", name, slot), shape))
        lead = (self.chips,) if self.chips > 1 else ()
        for p in self._plans.values():
            if rng is None or not self.programming:       # float64, then rounded once
                w = p.layer.quantized_weight()
                if lead:
                    w = np.broadcast_to(w, lead + w.shape)
            else:       # in place on one float32 buffer: ResNet-18 has 2 x 11 M devices
                shape = lead + p.g_target.shape
                out = (np.empty(shape, np.float32) if slot is None else self._buffer(("g", p.w_input, slot), shape))
                g = standard_normal(rng, out, p.std)
                g += p.g_target
                if clip:            # a conductance is not negative (DESIGN §4.4)
                    np.maximum(g, 0.0, out=g)
                w = np.subtract(g[..., 0, :, :, :], g[..., 1, :, :, :], out=g[..., 0, :, :, :])
                w *= p.inv_c
            feed.update(p.feed(w, buffer))
        return feed

    def draw_chip(self, rng: np.random.Generator, slot: int | None = None) -> dict[str, np.ndarray]:
        """Program one chip: its weight feed, to reuse for any number of input batches with `run` (slot: into
        that set of reused buffers, see `_weights`)."""
        return self._weights(rng, slot) if self.programming else self._noiseless

    def _read_noise(self, n: int, rng: np.random.Generator | None, slot: int = 0) -> dict[str, np.ndarray]:
        """Standard-normal read-noise inputs for a batch of n (rng=None: zeros), drawn into reused buffers:
        `slot` selects one of several buffer sets so that a prefetching caller can fill one while the session
        reads another (the session never writes into its inputs)."""
        feed = {}
        for p in self._plans.values():
            for name, shape, std in p.noise:
                shp = tuple(n if d is None else d for d in shape)
                buf = self._buffer((name, shp, slot) if rng is not None else ("zeros", shp), shp)
                if rng is not None:
                    standard_normal(rng, buf, std)
                feed[name] = buf
        return feed

    def chip_feed(self, n: int, rng: np.random.Generator, slot: int = 0) -> dict[str, np.ndarray]:
        """All the noise of one chip on a batch of n: programmed weights, then read noise (the order
        `run_chip` draws in, so prefetching the feed in another thread gives the same numbers)."""
        return {**self.draw_chip(rng, slot), **self._read_noise(n, rng if self.read_sigma > 0 else None, slot)}

    def data_feed(self, x: Inputs) -> dict[str, np.ndarray]:
        """The batch `x` (an array, or a dict by input name) as the float32 arrays the session is fed."""
        return {n: np.ascontiguousarray(v) for n, v in graph_feed(self.g, x, np.float32).items()}

    def run_feed(self, x: Inputs, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Every exposed signal for the batch `x` with a complete noise feed (see `chip_feed`); `x` may be a
        `data_feed` already (then it is not copied again)."""
        data = self.data_feed(x)
        session_feed = {self.feed_names[n]: v for n, v in data.items()}
        values = dict(zip(self.output_names, self.session.run(self.output_names, {**session_feed, **feed})))
        values.update(data)
        for alias, target in self.aliases.items():
            values[alias] = values[target]
        return values

    def run(self, x: Inputs, chip: dict[str, np.ndarray], rng: np.random.Generator | None = None
            ) -> dict[str, np.ndarray]:
        """Every exposed signal for the batch `x` on `chip` (from `draw_chip`, reusable across batches);
        fresh read noise from `rng` (None: no read noise)."""
        data = self.data_feed(x)
        return self.run_feed(data, {**chip, **self._read_noise(feed_batch(data), rng)})

    def run_chip(self, x: Inputs, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """One simulated chip (programming noise drawn once) on the whole batch `x`, with read noise."""
        data = self.data_feed(x)
        return self.run_feed(data, self.chip_feed(feed_batch(data), rng))

    def split_chips(self, values: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
        """A run's values (chips stacked on the batch axis) -> one dict per chip, as a one-chip executor gives
        them (views, no copies). One chip per run: [values]."""
        if self.chips == 1:
            return [values]
        out = [dict() for _ in range(self.chips)]
        fed = {id(values[n]) for n in self.input_names if n in values}
        for name, v in values.items():
            if id(v) in fed:          # the input batches, and their aliases (L/dac without a DAC): every chip's
                parts = [v] * self.chips
            elif name in self._chip_major:
                parts = list(v)
            else:
                parts = list(v.reshape((self.chips, v.shape[0] // self.chips) + v.shape[1:]))
            for chip, part in zip(out, parts):
                chip[name] = part
        return out

    def run_noiseless(self, x: Inputs) -> dict[str, np.ndarray]:
        """The noiseless programmed chip (quantized conductances, tiling, converters): `interpret.run(g, x,
        hardware=True)` in float32."""
        return self.run(x, self._noiseless, None)
