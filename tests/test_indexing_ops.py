"""The copying and resampling rules (Slice, Gather, Split, Pad, Resize) and ConvTranspose's expansion against
onnxruntime on single nodes, in every mode they accept, and their refusals (one line naming the node)."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from memse_compiler.ir.errors import MemseInputError
from memse_compiler.ir.ops import rule_for
from memse_compiler.ir.ops.base import ParseContext

X = np.random.default_rng(0).standard_normal((2, 3, 5, 4)).astype(np.float32)


def _node_case(op: str, consts: dict, opset: int = 17, x: np.ndarray = X, n_out: int = 1, **attrs):
    """(rule outputs, onnxruntime outputs) of one node `op(x, *consts)`; '' in consts = an absent input."""
    names = ["x"] + [("" if v is None else k) for k, v in consts.items()]
    outs = [f"y{i}" for i in range(n_out)]
    node = helper.make_node(op, names, outs, name="node_under_test", **attrs)
    inits = [numpy_helper.from_array(np.asarray(v), k) for k, v in consts.items() if v is not None]
    graph = helper.make_graph([node], "t", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
                              [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outs], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=9)
    expected = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})
    shapes = {"x": (None,) + x.shape[1:]}
    ctx = ParseContext(node=node, node_name="node_under_test", consts={k: np.asarray(v) for k, v in consts.items()
                                                                       if v is not None}, shapes=shapes,
                        opset=opset)
    rule = rule_for(op)
    attrs_parsed = rule.parse(ctx)
    got = rule.forward(attrs_parsed, [x.astype(np.float64)])
    return got, expected, rule, attrs_parsed


def _assert_same(got, expected):
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


SCALES = [(1, 1, 2, 2), (1, 1, 0.5, 1.5), (1, 1, 0.75, 3), (1, 1, 1.7, 0.6)]


@pytest.mark.parametrize("scales", SCALES, ids=str)
@pytest.mark.parametrize("coordinate", ["half_pixel", "half_pixel_symmetric", "pytorch_half_pixel", "align_corners",
                                        "asymmetric"])
@pytest.mark.parametrize("mode,nearest", [("linear", "round_prefer_floor"), ("nearest", "round_prefer_floor"),
                                          ("nearest", "round_prefer_ceil"), ("nearest", "floor"), ("nearest", "ceil")])
def test_resize_matches_onnxruntime(mode, nearest, coordinate, scales):
    got, expected, rule, attrs = _node_case("Resize", {"roi": None, "scales": np.array(scales, np.float32)}, opset=19,
                                            mode=mode, coordinate_transformation_mode=coordinate, nearest_mode=nearest)
    _assert_same(got, expected)
    # a linear map: the variance goes through the squared matrices, the sensitivity through the transposes
    v = np.random.default_rng(1).random(X.shape)
    _, (var,), _ = rule.moments(attrs, [X.astype(np.float64)], [v])
    g = np.random.default_rng(2).standard_normal(got[0].shape)
    (gin,) = rule.vjp(attrs, None, [g], [X.shape])
    u = np.random.default_rng(3).standard_normal(X.shape)
    np.testing.assert_allclose((g * rule.forward(attrs, [u])[0]).sum(), (gin * u).sum(), rtol=1e-10)
    if mode == "nearest":
        np.testing.assert_allclose(var, rule.forward(attrs, [v])[0])


@pytest.mark.parametrize("scales", SCALES, ids=str)
@pytest.mark.parametrize("coordinate", ["half_pixel", "half_pixel_symmetric", "pytorch_half_pixel", "align_corners",
                                        "asymmetric"])
@pytest.mark.parametrize("cubic_a,exclude_outside", [(-0.75, 0), (-0.5, 0), (-0.75, 1)])
def test_cubic_resize_matches_onnxruntime(cubic_a, exclude_outside, coordinate, scales):
    """Keys' cubic weights on the four neighbours, edge-clamped or (exclude_outside) renormalised inside. Computed
    in float32 as onnxruntime's; its half_pixel_symmetric fractions still differ in the last float32 bits (weights
    up to 9e-7 apart), hence the tolerance."""
    got, expected, rule, attrs = _node_case("Resize", {"roi": None, "scales": np.array(scales, np.float32)}, opset=19,
                                            mode="cubic", coordinate_transformation_mode=coordinate,
                                            cubic_coeff_a=cubic_a, exclude_outside=exclude_outside)
    np.testing.assert_allclose(got[0], expected[0], rtol=1e-5, atol=3e-6)


@pytest.mark.parametrize("op,opset,scales", [("Upsample", 9, (1, 1, 2, 3)), ("Upsample", 9, (1, 1, 2.5, 1.7)),
                                              ("Resize", 10, (1, 1, 2.5, 1.7)), ("Resize", 10, (1, 1, 0.5, 1.5)),
                                              ("Upsample", 7, (1, 1, 2, 1.5))])
@pytest.mark.parametrize("mode", ["nearest", "linear"])
def test_legacy_upsample_and_resize_match_onnxruntime(op, opset, scales, mode):
    """Upsample (opset 7-9) and Resize-10: asymmetric coordinates, floor rounding; opset-10 nearest downsampling
    is refused (onnxruntime's follows none of the documented modes)."""
    scales = np.array(scales, np.float32)
    consts, attrs = ({}, {"scales": [float(v) for v in scales]}) if opset < 9 else ({"scales": scales}, {})
    if op == "Resize" and mode == "nearest" and scales.min() < 1:
        with pytest.raises(MemseInputError, match="opset-10 nearest downsampling is not supported"):
            _node_case(op, consts, opset=opset, mode=mode, **attrs)
        return
    got, expected, _, _ = _node_case(op, consts, opset=opset, mode=mode, **attrs)
    _assert_same(got, expected)


def test_resize_by_sizes_on_the_spatial_axes():
    got, expected, _, _ = _node_case("Resize", {"roi": None, "scales": None, "sizes": np.array([9, 3], np.int64)},
                                     opset=18, mode="linear", axes=[2, 3], coordinate_transformation_mode="half_pixel")
    _assert_same(got, expected)


@pytest.mark.parametrize("mode", ["constant", "reflect", "edge", "wrap"])
def test_pad_matches_onnxruntime(mode):
    pads = np.array([0, 0, 2, 1, 0, 1, 1, 3], np.int64)
    consts = {"pads": pads, "value": np.array(0.5, np.float32) if mode == "constant" else None}
    got, expected, _, _ = _node_case("Pad", consts, opset=19, mode=mode)
    _assert_same(got, expected)


def test_pad_crops_with_negative_pads_and_takes_axes():
    got, expected, _, _ = _node_case("Pad", {"pads": np.array([-1, 2, 1, -2], np.int64), "value": None,
                                             "axes": np.array([-2, 3], np.int64)}, opset=18)
    _assert_same(got, expected)


@pytest.mark.parametrize("opset,consts,attrs", [
    (18, {}, {"num_outputs": 2, "axis": 2}),                      # 5 -> 3 + 2
    (13, {"split": np.array([1, 1, 3], np.int64)}, {"axis": -2}),
    (11, {}, {"split": [2, 1], "axis": 1}),
    (13, {}, {"axis": 3}),                                         # equal parts, one per output
])
def test_split_matches_onnxruntime(opset, consts, attrs):
    n_out = attrs.get("num_outputs", len(consts["split"]) if "split" in consts else len(attrs.get("split", [0, 0])))
    got, expected, _, _ = _node_case("Split", consts, opset=opset, n_out=n_out, **attrs)
    _assert_same(got, expected)


def test_gather_with_repeated_and_negative_indices():
    got, expected, rule, attrs = _node_case("Gather", {"idx": np.array([[3, -1], [0, 3]], np.int64)}, axis=2)
    _assert_same(got, expected)
    g = np.ones_like(got[0])
    (gin,) = rule.vjp(attrs, None, [g], [X.shape])
    np.testing.assert_array_equal(gin[0, 0, :, 0], [1, 0, 0, 2, 1])     # each element once per copy


@pytest.mark.parametrize("op,consts,attrs,needle", [
    ("Gather", {"idx": np.array([0], np.int64)}, {"axis": 0}, "batch axis"),
    ("Gather", {"idx": np.array([7], np.int64)}, {"axis": 3}, "out of range"),
    ("Split", {}, {"axis": 0}, "batch axis"),
    ("Pad", {"pads": np.array([1, 0, 0, 0, 1, 0, 0, 0], np.int64)}, {}, "batch axis"),
    ("Pad", {"pads": np.array([0, 0, -1, 0, 0, 0, 0, 0], np.int64)}, {"mode": "reflect"}, "negative pads"),
    ("Resize", {"roi": None, "scales": np.array([1, 1, 0.5, 0.5], np.float32)}, {"mode": "cubic", "antialias": 1},
     "antialias"),
    ("Resize", {"roi": None, "scales": np.array([2, 1, 1, 1], np.float32)}, {}, "batch axis"),
    ("Resize", {"roi": None, "scales": None, "sizes": np.array([2, 3, 10, 8], np.int64)}, {}, "scale factor"),
    ("Resize", {"roi": None, "scales": np.array([1, 1, 2, 2], np.float32)},
     {"coordinate_transformation_mode": "tf_crop_and_resize"}, "tf_crop_and_resize"),
])
def test_refusals_name_the_node(op, consts, attrs, needle):
    node = helper.make_node(op, ["x"] + [("" if v is None else k) for k, v in consts.items()], ["y"],
                            name="node_under_test", **attrs)
    ctx = ParseContext(node=node, node_name="node_under_test",
                       consts={k: v for k, v in consts.items() if v is not None}, shapes={"x": (None,) + X.shape[1:]})
    with pytest.raises(MemseInputError) as err:
        rule_for(op).parse(ctx)
    msg = str(err.value)
    assert "node_under_test" in msg and op in msg and needle in msg, msg
    assert "\n" not in msg


def _conv_transpose_model(cin, cout, group, kernel, x_shape, bias=True, **attrs):
    rng = np.random.default_rng(4)
    inits = [numpy_helper.from_array(rng.standard_normal((cin, cout // group) + kernel).astype(np.float32), "w")]
    if bias:
        inits.append(numpy_helper.from_array(rng.standard_normal(cout).astype(np.float32), "b"))
    node = helper.make_node("ConvTranspose", ["x", "w"] + (["b"] if bias else []), ["y"], name="deconv",
                            group=group, kernel_shape=list(kernel), **attrs)
    graph = helper.make_graph([node, helper.make_node("Relu", ["y"], ["z"], name="relu")], "t",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", cin] + list(x_shape))],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)], initializer=inits)
    return onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                                                               ir_version=9))


@pytest.mark.parametrize("cin,cout,group,kernel,x_shape,bias,attrs", [
    (4, 6, 1, (3, 3), (5, 4), True, dict(strides=[2, 2], pads=[1, 1, 1, 1], output_padding=[1, 1])),
    (4, 6, 2, (3, 2), (5, 4), True, dict(strides=[2, 1], pads=[0, 1, 2, 0], output_padding=[1, 0], dilations=[1, 2])),
    (4, 4, 1, (4,), (6,), False, dict(strides=[3], pads=[1, 2], output_padding=[2])),
    (3, 5, 1, (3, 3), (5, 4), True, dict(pads=[2, 2, 2, 2])),              # stride 1: only the flipped conv
    (3, 2, 1, (2, 2), (3, 3), True, dict(strides=[2, 2], auto_pad="VALID")),
    (2, 3, 1, (3, 3), (4, 5), True, dict(strides=[2, 2], auto_pad="SAME_UPPER")),      # odd total padding
    (2, 3, 1, (3, 3), (4, 5), True, dict(strides=[2, 2], auto_pad="SAME_LOWER")),
    (2, 3, 1, (3, 3), (4, 5), False, dict(strides=[2, 2], dilations=[2, 1], auto_pad="SAME_UPPER")),
    (2, 3, 1, (3, 3), (4, 5), True, dict(strides=[3, 3], output_padding=[1, 0], auto_pad="SAME_LOWER")),
    (2, 4, 2, (4,), (6,), True, dict(strides=[2], auto_pad="SAME_LOWER")),               # even total padding
])
def test_conv_transpose_is_the_flipped_conv_on_the_zero_inserted_input(cin, cout, group, kernel, x_shape, bias, attrs):
    """The expansion (zero insertion, border, flipped conv) against onnxruntime's ConvTranspose; the crossbar
    layer keeps the node's name."""
    from memse_compiler.frontend import build_graph
    from memse_compiler.ir.interpret import run
    model = _conv_transpose_model(cin, cout, group, kernel, x_shape, bias, **attrs)
    x = np.random.default_rng(5).standard_normal((2, cin) + x_shape).astype(np.float32)
    expected = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    g = build_graph(model)
    got = run(g, x.astype(np.float64))["z"]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    weighted = [n for n, op in g.nodes(data="op") if op in ("Conv", "ConvTranspose", "MatMul", "Gemm")]
    assert weighted == ["deconv"] and g.nodes["deconv"]["op"] == "Conv"


@pytest.mark.parametrize("attrs,message", [
    (dict(strides=[2, 2], output_shape=[8, 8]), "output_shape is not supported"),
    (dict(strides=[3, 3], auto_pad="SAME_UPPER"), "auto_pad SAME_UPPER with a kernel shorter than the stride"),
])
def test_conv_transpose_refusals_name_the_node(attrs, message):
    """Forms onnxruntime and the ONNX reference compute differently are refused, naming the node."""
    from memse_compiler.frontend import build_graph
    model = _conv_transpose_model(3, 2, 1, (2, 2), (4, 4), **attrs)
    with pytest.raises(MemseInputError, match="node 'deconv' \\(ConvTranspose\\): " + message):
        build_graph(model)


def _old_upsample_model(opset: int, mode: str, scales) -> onnx.ModelProto:
    rng = np.random.default_rng(11)
    inits = [numpy_helper.from_array(rng.standard_normal((2, 3, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(np.array(scales, np.float32), "scales")]
    op = "Upsample" if opset < 10 else "Resize"
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Clip", ["c"], ["r"], name="clip", min=0.0, max=6.0),          # opset < 11 form
             helper.make_node(op, ["r", "scales"], ["y"], name="up", mode=mode)]
    graph = helper.make_graph(nodes, "t", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 4, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=inits)
    return onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                                                               ir_version=7))


@pytest.mark.parametrize("opset,mode", [(9, "linear"), (9, "nearest"), (10, "linear")])
def test_old_models_are_upgraded_to_opset_11_with_their_results(opset, mode):
    """The version converter's Resize gets Upsample's asymmetric/floor modes written out (it leaves the default
    half_pixel, which moved linear results by up to 0.77 on a coverage model)."""
    from memse_compiler.frontend import build_graph
    model = _old_upsample_model(opset, mode, [1, 1, 2, 1.5])
    x = np.random.default_rng(12).standard_normal((3, 3, 4, 5)).astype(np.float32)
    want = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    g = build_graph(model)
    assert g.graph["opset"] == 11 and g.nodes["up"]["op"] == "Resize"
    from memse_compiler.ir.interpret import run
    np.testing.assert_allclose(run(g, x.astype(np.float64))["y"], want, rtol=1e-5, atol=1e-5)


def test_an_upgrade_that_changes_the_results_is_not_taken(monkeypatch):
    """The guard: a conversion whose onnxruntime outputs differ on the probe batch leaves the model as it was."""
    from onnx import version_converter

    from memse_compiler.opset_upgrade import upgrade_opset
    model = _old_upsample_model(9, "nearest", [1, 1, 2, 2])
    real = version_converter.convert_version

    def corrupting(m, target):
        out = real(m, target)
        w = numpy_helper.to_array(out.graph.initializer[0]) * 2
        out.graph.initializer[0].CopyFrom(numpy_helper.from_array(w, out.graph.initializer[0].name))
        return out
    monkeypatch.setattr(version_converter, "convert_version", corrupting)
    assert upgrade_opset(model) is model
    monkeypatch.setattr(version_converter, "convert_version", real)
    assert upgrade_opset(model).opset_import[0].version == 11


def test_resize10_nearest_downsampling_is_not_upgraded_and_is_refused():
    from memse_compiler.frontend import build_graph
    model = _old_upsample_model(10, "nearest", [1, 1, 0.5, 2])
    with pytest.raises(MemseInputError, match="node 'up' \\(Resize\\): opset-10 nearest downsampling"):
        build_graph(model)


def test_resize_sizes_with_a_baked_in_batch_are_refused():
    """Constant sizes [B, C, H, W]: B is an export batch baked in (onnxruntime would resize the batch axis at any
    other batch); only a batch read from a Shape (F.interpolate(x, size=...)) is kept, see interpolate_to_size."""
    with pytest.raises(MemseInputError, match="sizes that include the batch axis are not supported"):
        _node_case("Resize", {"roi": None, "scales": None, "sizes": np.array([2, 3, 7, 9], np.int64)}, mode="linear")
