"""Benchmark models built with onnx.helper (no torch): a ResNet-18-shaped network with random weights."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper


def resnet18(num_classes: int = 1000, seed: int = 0, width: int = 64, size: int = 224) -> onnx.ModelProto:
    """ResNet-18 topology (torchvision layout: conv7x7/2, maxpool, 4 stages x 2 basic blocks, global
    average pool, fc) on size x size RGB inputs, He-initialised random weights, BatchNorm kept as separate nodes."""
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    counter = [0]

    def name(base):
        counter[0] += 1
        return f"{base}_{counter[0]}"

    def const(base, arr):
        n = name(base)
        inits.append(numpy_helper.from_array(arr.astype(np.float32), n))
        return n

    def conv(x, cin, cout, k, stride, pad):
        w = const("w", rng.standard_normal((cout, cin, k, k)) * np.sqrt(2.0 / (cin * k * k)))
        y = name("conv")
        nodes.append(helper.make_node("Conv", [x, w], [y], name=y, kernel_shape=[k, k], strides=[stride] * 2,
                                      pads=[pad] * 4))
        return y

    def bn(x, c):
        y = name("bn")
        ins = [x, const("gamma", 1 + 0.1 * rng.standard_normal(c)), const("beta", 0.1 * rng.standard_normal(c)),
               const("mean", 0.1 * rng.standard_normal(c)), const("var", 1 + 0.1 * rng.random(c))]
        nodes.append(helper.make_node("BatchNormalization", ins, [y], name=y, epsilon=1e-5))
        return y

    def relu(x):
        y = name("relu")
        nodes.append(helper.make_node("Relu", [x], [y], name=y))
        return y

    def block(x, cin, cout, stride):
        h = relu(bn(conv(x, cin, cout, 3, stride, 1), cout))
        h = bn(conv(h, cout, cout, 3, 1, 1), cout)
        skip = bn(conv(x, cin, cout, 1, stride, 0), cout) if (stride != 1 or cin != cout) else x
        y = name("add")
        nodes.append(helper.make_node("Add", [h, skip], [y], name=y))
        return relu(y)

    x = relu(bn(conv("input", 3, width, 7, 2, 3), width))
    p = name("maxpool")
    nodes.append(helper.make_node("MaxPool", [x], [p], name=p, kernel_shape=[3, 3], strides=[2, 2], pads=[1] * 4))
    x, c = p, width
    for i, cout in enumerate([width, 2 * width, 4 * width, 8 * width]):
        x = block(x, c, cout, 1 if i == 0 else 2)
        x = block(x, cout, cout, 1)
        c = cout
    gap = name("gap")
    nodes.append(helper.make_node("GlobalAveragePool", [x], [gap], name=gap))
    flat = name("flatten")
    nodes.append(helper.make_node("Flatten", [gap], [flat], name=flat))
    w = const("fc_w", rng.standard_normal((num_classes, c)) * np.sqrt(1.0 / c))
    b = const("fc_b", 0.01 * rng.standard_normal(num_classes))
    nodes.append(helper.make_node("Gemm", [flat, w, b], ["logits"], name="fc", transB=1))
    graph = helper.make_graph(
        nodes, "resnet18", [helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, ["N", 3, size, size])],
        [helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["N", num_classes])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model
