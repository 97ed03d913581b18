#!/usr/bin/env python
"""Quantize two examples with onnxruntime's static quantization (QDQ format, uint8 activations, int8 weights
per channel; 32 calibration images of examples/digits_inputs.npy), as a user preparing a quantization-aware
deployment would. Needs only onnxruntime. Usage: python tests/torch_exports/make_qdq.py

  cnn_qdq.onnx   examples/cnn_digits.onnx
  vit_qdq.onnx   examples/vit_digits.onnx (fake quantization also inside the attention, on moved batches)
"""
import os
import tempfile

import numpy as np
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

HERE = os.path.dirname(os.path.abspath(__file__))
EXAMPLES = os.path.join(HERE, "..", "..", "examples")


class Calibration(CalibrationDataReader):
    def __init__(self):
        x = np.load(os.path.join(EXAMPLES, "digits_inputs.npy"))[:32]
        self.feeds = iter([{"input": x[i:i + 1]} for i in range(len(x))])

    def get_next(self):
        return next(self.feeds, None)


def main():
    for name in ("cnn", "vit"):
        out = os.path.join(HERE, f"{name}_qdq.onnx")
        with tempfile.TemporaryDirectory() as tmp:
            pre = os.path.join(tmp, "pre.onnx")
            quant_pre_process(os.path.join(EXAMPLES, f"{name}_digits.onnx"), pre, skip_symbolic_shape=True)
            quantize_static(pre, out, Calibration(), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        print(f"{os.path.basename(out)}  {os.path.getsize(out)} B")


if __name__ == "__main__":
    main()
