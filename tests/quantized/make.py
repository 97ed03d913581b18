#!/usr/bin/env python
"""Quantize the digits examples with onnxruntime's own tools into the models tests/test_quantized.py reads
(onnxruntime.quantization, in the onnxruntime wheel; calibration on the first 64 digits in batches of 8, defaults
otherwise: uint8 activations, int8 weights per tensor). Usage: python tests/quantized/make.py

  <model>_qop.onnx   quantize_static(quant_format=QOperator): QLinearConv, QLinearMatMul and onnxruntime's
                     contrib ops (com.microsoft) QGemm, QLinearAdd, QLinearMul, QLinearAveragePool, QLinearSoftmax,
                     QLinearConcat between QuantizeLinear and DequantizeLinear at the ends
  <model>_dyn.onnx   quantize_dynamic: DynamicQuantizeLinear before every MatMulInteger / ConvInteger, the int32
                     product scaled back to float by a Cast and a Mul
  heads_qop.onnx     a small conv net (GlobalAveragePool, Sigmoid, LeakyRelu, Concat; random weights, seed 0) so
                     that QLinearGlobalAveragePool, QLinearSigmoid, QLinearLeakyRelu and QLinearConcat appear
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_dynamic, quantize_static

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT / "tests"))

STATIC = ["cnn", "rescnn", "attn", "gru"]
DYNAMIC = ["mlp", "cnn", "vit", "gru"]


class Digits(CalibrationDataReader):
    def __init__(self, name: str, x: np.ndarray):
        self.batches = iter([{name: x[i:i + 8]} for i in range(0, len(x), 8)])

    def get_next(self):
        return next(self.batches, None)


def heads_model() -> onnx.ModelProto:
    """x (N, 1, 8, 8) -> Conv 4 -> Sigmoid | LeakyRelu -> Concat -> GlobalAveragePool -> Flatten -> Gemm 10."""
    from onnx_zoo import Builder
    g = Builder("heads")
    h = g.conv(g.input("x", ("N", 1, 8, 8), dist="uniform"), 1, 4, name="conv")
    both = g.op("Concat", [g.op("Sigmoid", [h]), g.op("LeakyRelu", [h], alpha=0.1)], axis=1)
    pooled = g.op("Flatten", [g.op("GlobalAveragePool", [both])])
    return g.build(g.gemm(pooled, 8, 10, name="head")).model


def main() -> None:
    x = np.load(ROOT / "examples" / "digits_inputs.npy")[:64].astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        heads = Path(tmp) / "heads.onnx"
        onnx.save(heads_model(), heads)
        sources = {m: ROOT / "examples" / f"{m}_digits.onnx" for m in set(STATIC + DYNAMIC)}
        for name in STATIC + ["heads"]:
            src = heads if name == "heads" else sources[name]
            data = np.random.default_rng(0).random((64, 1, 8, 8), dtype=np.float32) if name == "heads" else x
            quantize_static(str(src), str(HERE / f"{name}_qop.onnx"),
                            Digits(onnx.load(src).graph.input[0].name, data), quant_format=QuantFormat.QOperator)
        for name in DYNAMIC:
            quantize_dynamic(str(sources[name]), str(HERE / f"{name}_dyn.onnx"))
    for f in sorted(HERE.glob("*.onnx")):
        ops = sorted({n.op_type for n in onnx.load(f).graph.node if n.op_type.startswith(("Q", "Dyn")) or
                      n.op_type.endswith("Integer")})
        print(f"{f.name:18s} {f.stat().st_size:7d} B  {', '.join(ops)}")


if __name__ == "__main__":
    main()
