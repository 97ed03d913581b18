"""Graph IR of memse-compiler: the annotated networkx graph, op rules, crossbar layer records, moment math.

Layering: this package imports only numpy/networkx/sympy/onnx and `device_models`; passes build on it.
"""
from memse_compiler.ir.errors import MemseInputError  # noqa: F401
from memse_compiler.ir.graph import (  # noqa: F401
    KIND_ADC, KIND_BIAS, KIND_CROSSBAR, KIND_DAC, KIND_DIGITAL, KIND_INPUT, KIND_OUTPUT, KIND_SUM,
    KIND_WEIGHTED, MemseGraph, edges_of_tensor, schedule,
)
