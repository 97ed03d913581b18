"""Lowering is exact (noise off, continuous levels, ideal converters: the tile graph reproduces
onnxruntime), and the hardware counts match hand computation."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from device_models import load_device
from memse_compiler import compile_model
from memse_compiler.ir import KIND_ADC, KIND_CROSSBAR, KIND_DAC, interpret
from memse_compiler.pipeline import default_pipeline
from memse_compiler.report import build_report

from onnx_zoo import op_coverage_models, reference_outputs

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
IDEAL = load_device("ideal", ["conductance.levels=null"])


def lower(model, x, device=IDEAL):
    return compile_model(model, device, x, pipeline=default_pipeline(analysis=False))[0]


@pytest.mark.parametrize("name", ["mlp", "cnn", "rescnn", "attn", "vit"])
@pytest.mark.parametrize("rows", [128, 16])
def test_examples_lower_exactly(name, rows):
    path = EXAMPLES / f"{name}_digits.onnx"
    x = np.load(EXAMPLES / "digits_inputs.npy")[:32]
    g = lower(str(path), x, IDEAL.with_overrides({"crossbar.rows": rows, "crossbar.cols": 8}))
    got = interpret.run(g, x, hardware=True)["logits"]
    want = ort.InferenceSession(str(path)).run(None, {"input": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


ZOO = op_coverage_models()


@pytest.mark.parametrize("zm", ZOO, ids=[z.name for z in ZOO])
def test_zoo_lowers_exactly(zm):
    x = zm.batch()
    g = lower(zm.model, x, IDEAL.with_overrides({"crossbar.rows": 8, "crossbar.cols": 6}))
    vals = interpret.run(g, x, hardware=True)
    for name, want in zip([o.name for o in zm.model.graph.output], reference_outputs(zm)):
        np.testing.assert_allclose(vals[name], want, rtol=1e-5, atol=1e-5 * max(1.0, np.abs(want).max()))


@pytest.mark.parametrize("rows,cols", [(128, 128), (32, 8), (16, 4), (65, 20)])
def test_hardware_counts_by_hand(rows, cols):
    """MLP 64-64-32-10 with the bias as a crossbar row: a layer (out x in) holds (in + 1) rows."""
    x = np.load(EXAMPLES / "digits_inputs.npy")[:4]
    g = lower(str(EXAMPLES / "mlp_digits.onnx"), x,
              IDEAL.with_overrides({"crossbar.rows": rows, "crossbar.cols": cols}))
    report = build_report(g)
    per_tile = cols // 2
    want_tiles = want_adcs = want_dacs = 0
    for out, inp in [(64, 64), (32, 64), (10, 32)]:
        r, c = math.ceil((inp + 1) / rows), math.ceil(out / per_tile)
        want_tiles += r * c
        want_adcs += r * out          # one conversion per output per row tile
        want_dacs += c * inp          # every column tile's rows are driven; the bias row is a fixed reference
    assert report["hardware"] == {"tiles": want_tiles, "adcs": want_adcs, "dacs": want_dacs}
    nodes = [d["kind"] for _, d in g.nodes(data=True)]
    assert nodes.count(KIND_CROSSBAR) == want_tiles
    assert nodes.count(KIND_ADC) == sum(math.ceil((i + 1) / rows) * math.ceil(o / per_tile)
                                        for o, i in [(64, 64), (32, 64), (10, 32)])
    assert nodes.count(KIND_DAC) == 3


def test_conv_counts_by_hand():
    """CNN: conv 1->8 3x3 (9+1 rows), conv 8->16 3x3 (72+1 rows), fc 64->10 (64+1 rows); 32x16 arrays."""
    x = np.load(EXAMPLES / "digits_inputs.npy")[:4]
    g = lower(str(EXAMPLES / "cnn_digits.onnx"), x, IDEAL.with_overrides({"crossbar.rows": 32, "crossbar.cols": 16}))
    layers = build_report(g)["layers"]
    assert [(l["tiles"], l["adcs"], l["dacs"]) for l in layers] == [
        (1 * 1, 8, 9), (3 * 2, 3 * 16, 2 * 72), (3 * 2, 3 * 10, 2 * 64)]


def test_quantized_conductances_on_levels():
    x = np.load(EXAMPLES / "digits_inputs.npy")[:4]
    g = lower(str(EXAMPLES / "cnn_digits.onnx"), x, load_device("rram", ["conductance.levels=16"]))
    for layer in g.layers.values():
        steps = (layer.g_plus - layer.g_min) / (layer.g_range / 15)
        np.testing.assert_allclose(steps, np.round(steps), atol=1e-9)
        assert layer.g_plus.min() >= layer.g_min and layer.g_plus.max() <= layer.g_min + layer.g_range.max() * (1 + 1e-12)
        # the differential pair: one side at g_min
        assert np.all(np.minimum(layer.g_plus, layer.g_minus) == layer.g_min)


@pytest.mark.parametrize("rows", [128, 32])          # one row tile, several
def test_tile_products_and_their_transposes_agree_with_einsum(rows, monkeypatch):
    """The layer's per-row-tile products (strided BLAS on views) against plain einsums on the split tiles, and
    the two weight-gradient paths (per sample for small batches, batched otherwise) against each other."""
    import memse_compiler.ir.crossbar as crossbar
    x = np.load(Path(__file__).resolve().parent.parent / "examples" / "digits_inputs.npy")[:6]
    g, _ = compile_model(str(Path(__file__).resolve().parent.parent / "examples" / "rescnn_digits.onnx"),
                         load_device("rram", [f"crossbar.rows={rows}"]), x)
    rng = np.random.default_rng(0)
    for layer in g.layers.values():
        cm = g.graph["linearization"][layer.name]
        w = rng.standard_normal(layer.g_plus.shape)
        vec, dps = cm.mu_vec, rng.standard_normal(cm.ps_mean.shape)
        tiles_v, tiles_w = layer.split_rows(vec), layer.split_rows(w)           # (..., R, rows_per_tile)
        want = np.einsum("npgrj,gorj->npgro", tiles_v, tiles_w)
        np.testing.assert_allclose(layer.partial_sums(vec, w), want, rtol=1e-12, atol=1e-12)
        back = np.einsum("npgro,gorj->npgrj", dps, tiles_w).reshape(vec.shape[:3] + (-1,))[..., : layer.rows]
        j = layer.weight.shape[2]
        np.testing.assert_allclose(layer.partial_sums_T(dps, w, rows=j), back[..., :j], rtol=1e-12, atol=1e-12)
        grads = np.einsum("npgro,npgrj->ngorj", dps, tiles_v)
        grads = grads.reshape(grads.shape[:3] + (-1,))[..., : layer.rows]
        small = layer.weight_grads(dps, vec)
        monkeypatch.setattr(crossbar, "SMALL_BATCH", 0)
        batched = layer.weight_grads(dps, vec)
        monkeypatch.setattr(crossbar, "SMALL_BATCH", 16)
        np.testing.assert_allclose(small, grads, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(batched, grads, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("kernel,stride,dilation,pad,size", [
    ((3, 3), (1, 1), (1, 1), (1, 1, 1, 1), (8, 8)),       # few positions: channel-last accumulation
    ((3, 3), (1, 1), (1, 1), (1, 1, 1, 1), (20, 20)),     # many: taps copied to rows first
    ((7, 5), (2, 3), (1, 1), (3, 2, 2, 1), (33, 29)),
    ((3, 2), (1, 2), (2, 3), (0, 1, 2, 0), (17, 30)),
    ((2, 2), (2, 2), (1, 1), (0, 0, 0, 0), (6, 6)),       # no overlap, no padding
])
def test_conv_vectors_transpose_is_the_adjoint(groups, kernel, stride, dilation, pad, size):
    """<to_vectors(x), v> == <x, to_vectors_T(v)> for random x, v (both layouts of the col2im scatter), and the
    scatter against an explicit loop over output positions and taps."""
    from memse_compiler.ir.geometry import ConvGeometry, Windows, conv_pads
    c = 4
    pads, out = conv_pads(size, kernel, stride, dilation, pad, "NOTSET")
    geo = ConvGeometry(Windows(kernel, stride, dilation, tuple(pads), size, tuple(out)), groups, c)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, c) + size)
    vec = geo.to_vectors(x)
    v = rng.standard_normal(vec.shape)
    back = geo.to_vectors_T(v, x.shape)
    assert back.shape == x.shape
    np.testing.assert_allclose(np.sum(vec * v), np.sum(x * back), rtol=1e-12)
    # by hand: every (position, channel, tap) adds its entry to the input pixel it reads
    want = np.zeros((3, c, size[0] + pads[0] + pads[2], size[1] + pads[1] + pads[3]))
    cols = v.reshape(3, out[0], out[1], c, kernel[0], kernel[1])      # rows in (cin, kh, kw) order per group
    for a in range(out[0]):
        for b in range(out[1]):
            for i in range(kernel[0]):
                for j in range(kernel[1]):
                    want[:, :, a * stride[0] + i * dilation[0], b * stride[1] + j * dilation[1]] += cols[:, a, b, :, i, j]
    want = want[:, :, pads[0]: pads[0] + size[0], pads[1]: pads[1] + size[1]]
    np.testing.assert_allclose(back, want, rtol=1e-12, atol=1e-12)


def test_pool_output_declared_with_symbolic_sizes():
    """x.reshape(x.shape[0], 3, 8) as torch's legacy exporter writes it (Shape, Gather, Concat): ONNX's shape
    inference leaves the lengths after it symbolic, so a 1-D MaxPool's output length is unknown at parse time.
    The pool compiles (it was refused as a ceil_mode mismatch against the unknown size) and equals onnxruntime."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    w = np.random.default_rng(0).standard_normal((4, 3, 3)).astype(np.float32)
    const = lambda name, v: numpy_helper.from_array(np.asarray(v, np.int64), name)  # noqa: E731
    nodes = [helper.make_node("Shape", ["x"], ["shape"]),
             helper.make_node("Gather", ["shape", "zero"], ["batch"], axis=0),
             helper.make_node("Concat", ["batch", "three", "eight"], ["target"], axis=0),
             helper.make_node("Reshape", ["x", "target"], ["seq"]),
             helper.make_node("Conv", ["seq", "w"], ["c"], name="conv", pads=[1, 1]),
             helper.make_node("MaxPool", ["c"], ["y"], name="pool", kernel_shape=[2], strides=[2])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 24])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(w, "w"), const("zero", [0]), const("three", [3]),
                               const("eight", [8])])
    model = onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    assert [d.dim_param for d in model.graph.output[0].type.tensor_type.shape.dim][2]     # symbolic there
    x = np.random.default_rng(1).random((5, 24)).astype(np.float32)
    g = lower(model, x.astype(np.float64))
    want = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    np.testing.assert_allclose(interpret.run(g, x.astype(np.float64), hardware=True)["y"], want, rtol=1e-5,
                               atol=1e-6)


def test_external_weight_data_is_read_from_the_model_folder(tmp_path, monkeypatch):
    """torch's dynamo exporter writes the weights beside the model (model.onnx.data): they are read from the model's
    folder whatever the working directory (they were looked up in the working directory)."""
    import onnx
    path = tmp_path / "models" / "cnn.onnx"
    path.parent.mkdir()
    onnx.save(onnx.load(str(EXAMPLES / "cnn_digits.onnx")), str(path), save_as_external_data=True,
              all_tensors_to_one_file=True, location="cnn.onnx.data", size_threshold=0)
    assert (path.parent / "cnn.onnx.data").stat().st_size > path.stat().st_size
    monkeypatch.chdir(tmp_path)
    x = np.load(EXAMPLES / "digits_inputs.npy")[:8]
    got = interpret.run(lower(str(path), x), x, hardware=True)["logits"]
    want = interpret.run(lower(str(EXAMPLES / "cnn_digits.onnx"), x), x, hardware=True)["logits"]
    np.testing.assert_array_equal(got, want)


def test_lrn_of_even_size_against_the_definition():
    """An even LRN window is asymmetric (floor((size - 1) / 2) channels before, ceil after). onnxruntime refuses
    even sizes and onnx.reference's LRN loops over the batch instead of the channels, so the lowered graph is
    checked against the operator's definition written out in numpy."""
    from onnx_zoo_conv import Builder, _image
    g = Builder("lrn_size4")
    y = g.op("Relu", [g.conv(_image(g), 4, 6, pads=[1, 1, 1, 1])])
    zm = g.build(g.op("LRN", [y], size=4, alpha=0.5, beta=0.75, bias=2.0))
    graph = lower(zm.model, zm.batch())
    values = interpret.run(graph, zm.batch(), hardware=True)
    x = values[y]
    square_sum = np.stack([np.sum(x[:, max(0, c - 1): min(6, c + 3)] ** 2, axis=1) for c in range(6)], axis=1)
    want = x / (2.0 + 0.5 / 4 * square_sum) ** 0.75
    np.testing.assert_allclose(values[zm.model.graph.output[0].name], want, rtol=1e-12)
