"""Convolution, batch-norm, pooling and block models of the ONNX zoo (see ``onnx_zoo.py``, the entry)."""
from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper

if __package__:                                       # imported as tests.onnx_zoo_conv
    from .onnx_zoo import N, Builder, ZooModel
else:                                                 # imported with tests/ on sys.path
    from onnx_zoo import N, Builder, ZooModel

C, H, W = 4, 8, 8   # default activation: (N, C, H, W)

__all__ = ["conv_models", "bn_models", "pool_models", "conv_misc_models", "block_models"]


def _image(g: Builder, c: int = C, h: int = H, w: int = W, dist: str = "normal") -> str:
    return g.input("x", (N, c, h, w), dist=dist)


# --------------------------------------------------------------------------------------------------
# Conv variants: each Conv is followed by Relu unless noted


def _conv_case(name: str, *, cin: int = C, cout: int = 6, kernel=(3, 3), post: str | None = "Relu",
               **conv_attrs) -> ZooModel:
    g = Builder(name)
    y = g.conv(_image(g, cin), cin, cout, kernel, **conv_attrs)
    return g.build(g.op(post, [y]) if post else y)


def conv_models() -> list[ZooModel]:
    models = [
        _conv_case("conv_3x3_bias_relu", pads=[1, 1, 1, 1]),
        _conv_case("conv_3x3_nobias", bias=False, pads=[1, 1, 1, 1]),
        _conv_case("conv_group2", cin=4, cout=6, group=2, pads=[1, 1, 1, 1]),
        _conv_case("conv_depthwise", cin=4, cout=4, group=4, pads=[1, 1, 1, 1]),
        _conv_case("conv_depthwise_mult2", cin=4, cout=8, group=4, pads=[1, 1, 1, 1], bias=False),
        _conv_case("conv_stride2", strides=[2, 2], pads=[1, 1, 1, 1]),
        _conv_case("conv_stride1x2", strides=[1, 2], pads=[1, 1, 1, 1]),
        # pads = [h_begin, w_begin, h_end, w_end]
        _conv_case("conv_pads_asym", pads=[1, 0, 2, 1]),
        # stride 2 on 8x8 with k=3: total pad 1, so UPPER and LOWER differ
        _conv_case("conv_same_upper", strides=[2, 2], auto_pad="SAME_UPPER"),
        _conv_case("conv_same_lower", strides=[2, 2], auto_pad="SAME_LOWER"),
        _conv_case("conv_valid", auto_pad="VALID"),
        _conv_case("conv_dilation2", dilations=[2, 2], pads=[2, 2, 2, 2]),
        _conv_case("conv_1x1", kernel=(1, 1), cout=8),
        _conv_case("conv_1x1_nobias", kernel=(1, 1), cout=3, bias=False, post="Sigmoid"),
        _conv_case("conv_5x3", kernel=(5, 3), pads=[2, 1, 2, 1]),
    ]
    g = Builder("conv1d")                              # (N, C, L)
    y = g.conv(g.input("x", (N, C, 16)), C, 6, kernel=(3,), pads=[1, 1])
    models.append(g.build(g.op("Relu", [y])))
    return models


# --------------------------------------------------------------------------------------------------
# BatchNormalization


def bn_models() -> list[ZooModel]:
    out = []

    g = Builder("bn_after_conv")                       # foldable into the conv
    y = g.bn(g.conv(_image(g), C, 6, bias=False, pads=[1, 1, 1, 1]), 6, epsilon=1e-5)
    out.append(g.build(g.op("Relu", [y])))

    g = Builder("bn_after_conv_with_bias")             # foldable, conv has its own bias
    y = g.bn(g.conv(_image(g), C, 6, strides=[2, 2], pads=[1, 1, 1, 1]), 6, epsilon=1e-3)
    out.append(g.build(y))

    g = Builder("bn_on_input")                         # not foldable: stays a digital affine node
    y = g.bn(_image(g), C, epsilon=1e-2)
    out.append(g.build(g.op("Relu", [g.conv(y, C, 6, pads=[1, 1, 1, 1])])))

    g = Builder("bn_after_add")                        # x + conv(x) -> BN: not foldable
    x = _image(g)
    s = g.op("Add", [x, g.conv(x, C, C, pads=[1, 1, 1, 1])])
    out.append(g.build(g.op("Relu", [g.bn(s, C, epsilon=1e-3)])))

    for name, op, attrs, cmid, cout in (("pixel_shuffle_conv", "DepthToSpace", {"mode": "CRD"}, 8, 2),
                                        ("depth_to_space_dcr_conv", "DepthToSpace", {"mode": "DCR"}, 8, 2),
                                        ("space_to_depth_conv", "SpaceToDepth", {}, 2, 8)):
        g = Builder(name)                              # PixelShuffle / PixelUnshuffle between convs
        y = g.op("Relu", [g.conv(_image(g), C, cmid, pads=[1, 1, 1, 1], name="conv_a")])
        y = g.op(op, [y], blocksize=2, **attrs)
        out.append(g.build(g.conv(y, cout, 4, name="conv_b")))

    g = Builder("qdq_per_channel_int8_conv")           # int8 weights behind a DequantizeLinear, a per-channel
    x = _image(g)                                      # int8 fake quantization of the activations
    w_q = g.const("w_q", g.rng.integers(-127, 128, (6, C, 3, 3)).astype(np.int8))
    w = g.op("DequantizeLinear", [w_q, g.const("w_scale", np.float32(0.004)), g.const("w_zero", np.int8(0))])
    y = g.op("Conv", [x, w], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    scale, zero = g.const("a_scale", g.rng.uniform(0.01, 0.03, 6)), g.const("a_zero", np.arange(-3, 3, dtype=np.int8))
    y = g.op("DequantizeLinear", [g.op("QuantizeLinear", [y, scale, zero], axis=1), scale, zero], axis=1)
    out.append(g.build(g.conv(g.op("Relu", [y]), 6, 4, name="conv_b")))

    g = Builder("instance_norm_conv")                  # InstanceNorm2d(affine=True) between convs
    y = g.conv(_image(g), C, 6, pads=[1, 1, 1, 1], name="conv_a")
    y = g.op("InstanceNormalization", [y, g.const("in.weight", g.rng.uniform(0.5, 1.5, 6)),
                                       g.vector("in.bias", (6,), 0.2)], epsilon=1e-5)
    out.append(g.build(g.conv(g.op("Relu", [y]), 6, 4, name="conv_b")))

    g = Builder("group_norm_conv")                     # nn.GroupNorm(2, 6) as torch exports it
    y = g.conv(_image(g), C, 6, pads=[1, 1, 1, 1], name="conv_a")
    y = g.op("Reshape", [y, g.const("groups", np.array([0, 2, -1]))])
    y = g.op("InstanceNormalization", [y, g.const("ones", np.ones(2, np.float32)),
                                       g.const("zeros", np.zeros(2, np.float32))], epsilon=1e-5)
    y = g.op("Reshape", [y, g.const("channels", np.array([0, 6, H, W]))])
    y = g.op("Add", [g.op("Mul", [y, g.const("gn.weight", g.rng.uniform(0.5, 1.5, (6, 1, 1)))]),
                     g.vector("gn.bias", (6, 1, 1), 0.2)])
    out.append(g.build(g.conv(g.op("Relu", [y]), 6, 4, name="conv_b")))

    for name, axes in (("mvn_spatial_conv", [2, 3]), ("mvn_channels_conv", [1])):   # trailing axes, and moved last
        g = Builder(name)
        y = g.conv(_image(g), C, 6, pads=[1, 1, 1, 1], name="conv_a")
        y = g.op("MeanVarianceNormalization", [y], axes=axes)
        out.append(g.build(g.conv(g.op("Relu", [y]), 6, 4, name="conv_b")))

    g = Builder("group_normalization_conv", opset=21)  # GroupNormalization-21, as torch's dynamo exporter writes it
    y = g.conv(_image(g), C, 6, pads=[1, 1, 1, 1], name="conv_a")
    y = g.op("GroupNormalization", [y, g.const("gn.weight", g.rng.uniform(0.5, 1.5, 6)),
                                    g.vector("gn.bias", (6,), 0.2)], num_groups=3, epsilon=1e-5)
    out.append(g.build(g.conv(g.op("Relu", [y]), 6, 4, name="conv_b"), typed={y: (N, 6, H, W)}))
    return out


# --------------------------------------------------------------------------------------------------
# pooling (after Conv + Relu)


def _pool_case(name: str, op: str, relu: bool = True, **attrs) -> ZooModel:
    g = Builder(name)
    y = g.conv(_image(g, dist="uniform"), C, 6, pads=[1, 1, 1, 1])
    y = g.op("Relu", [y]) if relu else y
    return g.build(g.op(op, [y], **attrs))


def pool_models() -> list[ZooModel]:
    models = [
        _pool_case("avgpool_k2s2", "AveragePool", kernel_shape=[2, 2], strides=[2, 2]),
        _pool_case("avgpool_k3s1p1_excl_pad", "AveragePool", kernel_shape=[3, 3], strides=[1, 1],
                   pads=[1, 1, 1, 1], count_include_pad=0),
        _pool_case("avgpool_k3s1p1_incl_pad", "AveragePool", kernel_shape=[3, 3], strides=[1, 1],
                   pads=[1, 1, 1, 1], count_include_pad=1),
        _pool_case("maxpool_k2s2", "MaxPool", kernel_shape=[2, 2], strides=[2, 2]),
        _pool_case("maxpool_k3s2p1", "MaxPool", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
        _pool_case("global_avgpool", "GlobalAveragePool"),
        # Lp pools of the conv output itself (a window of a Relu's zeros has a square root of 0: no delta method)
        _pool_case("lppool_p2_k3s2p1", "LpPool", relu=False, kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1],
                   p=2),
        _pool_case("lppool_p1_k2s2", "LpPool", relu=False, kernel_shape=[2, 2], strides=[2, 2], p=1),
        _pool_case("global_lppool_p2", "GlobalLpPool", relu=False, p=2),
        _pool_case("maxpool_k3s2_ceil", "MaxPool", kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1),
        _pool_case("maxpool_k3s2p1_ceil", "MaxPool", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1],
                   ceil_mode=1),
        # ceil_mode's last windows run past the end: the divisor counts the input (count_include_pad=0) or the
        # input and its declared padding, not the extra end (=1), as onnxruntime and PyTorch divide
        _pool_case("avgpool_k3s2_ceil", "AveragePool", kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1),
        _pool_case("avgpool_k3s2p1_ceil_incl_pad", "AveragePool", kernel_shape=[3, 3], strides=[2, 2],
                   pads=[1, 1, 1, 1], ceil_mode=1, count_include_pad=1),
        _pool_case("avgpool_k3x2s2_pleft_ceil_excl_pad", "AveragePool", kernel_shape=[3, 2], strides=[2, 2],
                   pads=[0, 1, 0, 0], ceil_mode=1, count_include_pad=0),
    ]
    g = Builder("maxpool_before_conv")                 # pool on the input, then the weighted op
    y = g.op("MaxPool", [_image(g)], kernel_shape=[2, 2], strides=[2, 2])
    models.append(g.build(g.conv(y, C, 6, pads=[1, 1, 1, 1])))
    return models


# --------------------------------------------------------------------------------------------------
# element-wise / structural ops around convs


def conv_misc_models() -> list[ZooModel]:
    out = []

    g = Builder("residual_add")                        # Add of two activations
    x = _image(g)
    y = g.op("Relu", [g.conv(x, C, C, pads=[1, 1, 1, 1])])
    out.append(g.build(g.op("Add", [y, x])))

    g = Builder("mul_scalar_const")
    y = g.conv(_image(g), C, 6, pads=[1, 1, 1, 1])
    out.append(g.build(g.op("Mul", [y, g.const("scale", np.float32(0.75))])))

    g = Builder("mul_per_channel_const")               # (C,1,1) broadcast
    y = g.conv(_image(g), C, 6, pads=[1, 1, 1, 1])
    out.append(g.build(g.op("Mul", [y, g.const("scale", g.rng.uniform(0.5, 1.5, (6, 1, 1)))])))

    g = Builder("add_per_channel_const")
    y = g.conv(_image(g), C, 6, pads=[1, 1, 1, 1])
    out.append(g.build(g.op("Add", [g.vector("shift", (6, 1, 1), 0.5), y])))

    g = Builder("concat_channels")                     # two branches -> Concat(axis=1) -> Conv
    x = _image(g)
    a = g.op("Relu", [g.conv(x, C, 3, kernel=(1, 1), name="branch_a")])
    b = g.op("Relu", [g.conv(x, C, 5, pads=[1, 1, 1, 1], name="branch_b")])
    cat = g.op("Concat", [a, b], axis=1)
    out.append(g.build(g.conv(cat, 8, 4, kernel=(1, 1), name="fuse")))

    g = Builder("flatten_gemm")                        # Conv -> Flatten(axis=1) -> Gemm
    y = g.op("Relu", [g.conv(_image(g, h=4, w=4), C, 3, pads=[1, 1, 1, 1])])
    out.append(g.build(g.gemm(g.op("Flatten", [y], axis=1), 3 * 4 * 4, 5)))

    g = Builder("reshape_gemm")                        # Reshape with shape [0, -1]
    y = g.op("Relu", [g.conv(_image(g, h=4, w=4), C, 3, pads=[1, 1, 1, 1])])
    y = g.op("Reshape", [y, g.const("shape", np.array([0, -1]))])
    out.append(g.build(g.gemm(y, 3 * 4 * 4, 5)))

    g = Builder("transpose_nhwc_conv")                 # NHWC input transposed to NCHW
    y = g.op("Transpose", [g.input("x", (N, H, W, C))], perm=[0, 3, 1, 2])
    out.append(g.build(g.op("Relu", [g.conv(y, C, 6, pads=[1, 1, 1, 1])])))

    g = Builder("lrn_size5")                           # ONNX LRN (onnxruntime takes odd sizes only)
    y = g.op("Relu", [g.conv(_image(g), C, 6, pads=[1, 1, 1, 1])])
    out.append(g.build(g.op("LRN", [y], size=5, alpha=0.5, beta=0.75, bias=2.0)))

    # torch's LocalResponseNorm: x^2 as (N, 1, C, H, W), pooled over the channels by a 3-D AveragePool (size, 1, 1);
    # then a 3-D MaxPool over the channels with a stride
    g = Builder("pool3d_over_channels")
    y = g.op("Relu", [g.conv(_image(g), C, 6, pads=[1, 1, 1, 1])])
    sq = g.op("Unsqueeze", [g.op("Mul", [y, y]), g.const("axis1", np.array([1], np.int64))])
    avg = g.op("AveragePool", [sq], kernel_shape=[3, 1, 1], pads=[1, 0, 0, 1, 0, 0], count_include_pad=1)
    mx = g.op("MaxPool", [avg], kernel_shape=[2, 1, 1], strides=[2, 1, 1])
    out.append(g.build(g.op("Squeeze", [mx, g.const("axis1b", np.array([1], np.int64))])))

    # If on a condition the shapes decide (torch's legacy exporter writes x.squeeze(d) of a size it cannot see as
    # If(size == 1, Squeeze, Identity)): the branch taken is inlined; C = 6, so the first takes its then branch
    # (x 0.5, with a constant of its own), the second its else branch
    g = Builder("if_static_condition")
    taken = g.op("Relu", [g.conv(_image(g), C, 6, pads=[1, 1, 1, 1])])
    size = g.op("Gather", [g.op("Shape", [taken]), g.const("channel", np.array(1, np.int64))], axis=0)
    for k, (test, then_op) in enumerate([(6, "Mul"), (1, "Neg")]):
        cond = g.op("Equal", [size, g.const("size", np.array(test, np.int64))])
        inputs = [taken] + ([f"half{k}"] if then_op == "Mul" else [])
        then = helper.make_graph([helper.make_node(then_op, inputs, [f"then{k}"])], f"then{k}", [],
                                 [helper.make_tensor_value_info(f"then{k}", TensorProto.FLOAT, None)],
                                 [numpy_helper.from_array(np.array(0.5, np.float32), f"half{k}")])
        other = helper.make_graph([helper.make_node("Identity", [taken], [f"else{k}"])], f"else{k}", [],
                                  [helper.make_tensor_value_info(f"else{k}", TensorProto.FLOAT, None)])
        taken = g.op("If", [cond], then_branch=then, else_branch=other)
    out.append(g.build(g.gemm(g.op("Flatten", [taken]), 6 * H * W, 5)))
    return out


# --------------------------------------------------------------------------------------------------
# small blocks


def block_models() -> list[ZooModel]:
    out = []

    g = Builder("block_residual_bn")                   # conv-bn-relu-conv-bn (+x) -relu
    x = _image(g)
    y = g.op("Relu", [g.bn(g.conv(x, C, C, bias=False, pads=[1, 1, 1, 1], name="conv1"), C, "bn1")])
    y = g.bn(g.conv(y, C, C, bias=False, pads=[1, 1, 1, 1], name="conv2"), C, "bn2")
    out.append(g.build(g.op("Relu", [g.op("Add", [y, x])])))

    g = Builder("block_residual_downsample")           # strided block with a 1x1 projection shortcut
    x = _image(g)
    y = g.op("Relu", [g.bn(g.conv(x, C, 8, bias=False, strides=[2, 2], pads=[1, 1, 1, 1], name="conv1"),
                           8, "bn1")])
    y = g.bn(g.conv(y, 8, 8, bias=False, pads=[1, 1, 1, 1], name="conv2"), 8, "bn2")
    sc = g.bn(g.conv(x, C, 8, kernel=(1, 1), bias=False, strides=[2, 2], name="downsample"), 8, "bn_ds")
    out.append(g.build(g.op("Relu", [g.op("Add", [y, sc])])))

    g = Builder("block_depthwise_separable")           # dw3x3-bn-relu6, pw1x1-bn-relu
    y = g.conv(_image(g), C, C, group=C, bias=False, pads=[1, 1, 1, 1], name="dw")
    y = g.op("Clip", [g.bn(y, C, "bn_dw"), g.const("zero", np.float32(0.0)), g.const("six", np.float32(6.0))])
    y = g.bn(g.conv(y, C, 8, kernel=(1, 1), bias=False, name="pw"), 8, "bn_pw")
    out.append(g.build(g.op("Relu", [y])))

    g = Builder("pad_reflect_conv")                     # explicit reflection padding, then a VALID conv
    y = g.op("Relu", [g.conv(_image(g), C, 6, pads=[1, 1, 1, 1], name="conv1")])
    y = g.op("Pad", [y, g.const("pads", np.array([0, 0, 1, 2, 0, 0, 1, 0], np.int64))], mode="reflect")
    out.append(g.build(g.op("Relu", [g.conv(y, 6, 4, name="conv2")])))

    g = Builder("pad_constant_crop")                   # constant 0.5 on the width, a row cropped (negative pad)
    y = g.op("Relu", [g.conv(_image(g), C, 6, pads=[1, 1, 1, 1], name="conv1")])
    y = g.op("Pad", [y, g.const("pads", np.array([0, 0, -1, 2, 0, 0, 0, 1], np.int64)),
                     g.const("value", np.float32(0.5))])
    out.append(g.build(g.conv(y, 6, 4, name="conv2")))

    g = Builder("upsample_nearest_conv")               # nn.Upsample(scale_factor=2): asymmetric, floor
    y = g.op("Relu", [g.conv(_image(g, h=4, w=4), C, 6, pads=[1, 1, 1, 1], name="conv1")])
    y = g.op("Resize", [y, "", g.const("scales", np.array([1, 1, 2, 2], np.float32))], mode="nearest",
             coordinate_transformation_mode="asymmetric", nearest_mode="floor")
    out.append(g.build(g.op("Relu", [g.conv(y, 6, 4, pads=[1, 1, 1, 1], name="conv2")])))

    g = Builder("upsample_opset9_linear", opset=9)      # an old export: Upsample, upgraded to Resize at load
    y = g.op("Relu", [g.conv(_image(g, h=4, w=4), C, 6, pads=[1, 1, 1, 1], name="conv1")])
    y = g.op("Upsample", [y, g.const("scales", np.array([1, 1, 2, 1.5], np.float32))], mode="linear")
    out.append(g.build(g.op("Relu", [g.conv(y, 6, 4, pads=[1, 1, 1, 1], name="conv2")])))

    g = Builder("interpolate_to_size")                 # F.interpolate(x, size=(7, 9)): sizes [N, C] ++ [7, 9]
    y = g.op("Relu", [g.conv(_image(g, h=4, w=5), C, 6, pads=[1, 1, 1, 1], name="conv1")])
    head = g.op("Slice", [g.op("Shape", [y]), g.const("begin", np.array([0])), g.const("end", np.array([2]))])
    sizes = g.op("Concat", [head, g.const("hw", np.array([7, 9]))], axis=0)
    y = g.op("Resize", [y, "", "", sizes], mode="linear", coordinate_transformation_mode="pytorch_half_pixel")
    out.append(g.build(g.op("Relu", [g.conv(y, 6, 4, pads=[1, 1, 1, 1], name="conv2")])))

    g = Builder("global_max_pool_head")                # Keras-style GlobalMaxPooling2D before the classifier
    y = g.op("GlobalMaxPool", [g.op("Relu", [g.conv(_image(g, h=5, w=5), C, 6, name="conv1")])])
    out.append(g.build(g.gemm(g.op("Flatten", [y]), 6, 4, name="fc")))

    g = Builder("upsample_bilinear_conv")              # bilinear, align_corners=False (pytorch_half_pixel)
    y = g.op("Relu", [g.conv(_image(g, h=4, w=4), C, 6, pads=[1, 1, 1, 1], name="conv1")])
    y = g.op("Resize", [y, "", g.const("scales", np.array([1, 1, 2, 2], np.float32))], mode="linear",
             coordinate_transformation_mode="pytorch_half_pixel")
    out.append(g.build(g.op("Relu", [g.conv(y, 6, 4, pads=[1, 1, 1, 1], name="conv2")])))

    g = Builder("resize_align_corners_up_down")        # align_corners=True, 6x6 -> 9x3 (up on H, down on W)
    y = g.conv(_image(g, h=6, w=6), C, 6, pads=[1, 1, 1, 1], name="conv1")
    y = g.op("Resize", [y, "", g.const("scales", np.array([1, 1, 1.5, 0.5], np.float32))], mode="linear",
             coordinate_transformation_mode="align_corners")
    out.append(g.build(g.op("Relu", [g.conv(y, 6, 4, name="conv2")])))

    g = Builder("upsample_bicubic_conv")               # F.interpolate(mode="bicubic"): Keys' a = -0.75, 2x
    y = g.op("Relu", [g.conv(_image(g, h=4, w=4), C, 6, pads=[1, 1, 1, 1], name="conv1")])
    y = g.op("Resize", [y, "", g.const("scales", np.array([1, 1, 2, 2], np.float32))], mode="cubic",
             coordinate_transformation_mode="pytorch_half_pixel", cubic_coeff_a=-0.75)
    out.append(g.build(g.op("Relu", [g.conv(y, 6, 4, pads=[1, 1, 1, 1], name="conv2")])))

    g = Builder("prelu_per_channel_conv")              # nn.PReLU(C): slope (C, 1, 1)
    y = g.conv(_image(g), C, 6, pads=[1, 1, 1, 1], name="conv1")
    y = g.op("PRelu", [y, g.const("prelu.weight", g.rng.uniform(0.05, 0.5, (6, 1, 1)))])
    out.append(g.build(g.conv(y, 6, 4, name="conv2")))

    g = Builder("conv_transpose_decoder")              # conv, then a 2x up-sampling deconv (k3 s2 p1 op1)
    y = g.op("Relu", [g.conv(_image(g, h=4, w=4), C, 6, pads=[1, 1, 1, 1], name="conv1")])
    w = g.weight("deconv.weight", (6, 4, 3, 3), fan_in=6 * 9 // 4)
    y = g.op("ConvTranspose", [y, w, g.vector("deconv.bias", (4,))], name="deconv", kernel_shape=[3, 3],
             strides=[2, 2], pads=[1, 1, 1, 1], output_padding=[1, 1])
    out.append(g.build(g.op("Relu", [y])))

    g = Builder("conv_transpose_1d_grouped")           # 1-D, 2 groups, dilation 2, stride 3, no bias, asymmetric pads
    y = g.op("Relu", [g.conv(g.input("x", (N, C, 6)), C, 4, kernel=(3,), pads=[1, 1], name="conv1")])
    w = g.weight("deconv.weight", (4, 3, 3), fan_in=3)
    y = g.op("ConvTranspose", [y, w], name="deconv", kernel_shape=[3], strides=[3], dilations=[2], pads=[2, 0],
             group=2)
    out.append(g.build(g.op("Tanh", [y])))

    g = Builder("small_cnn")                           # conv-relu-maxpool-conv-relu-gap-flatten-gemm
    y = g.op("Relu", [g.conv(_image(g, c=3, dist="uniform"), 3, 8, pads=[1, 1, 1, 1], name="conv1")])
    y = g.op("MaxPool", [y], kernel_shape=[2, 2], strides=[2, 2])
    y = g.op("Relu", [g.conv(y, 8, 8, pads=[1, 1, 1, 1], name="conv2")])
    y = g.op("Flatten", [g.op("GlobalAveragePool", [y])], axis=1)
    out.append(g.build(g.gemm(y, 8, 5, name="classifier")))
    return out

