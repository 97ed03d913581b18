"""The op registry: one rule per ONNX op kind, consulted by the frontend, the moment passes and the executor.

Adding an op is one place: write an `OpRule` subclass in one of these modules and decorate it with
`@register`. A rule knows how to parse the ONNX node, compute it exactly in float, propagate Gaussian
moments through it, back-propagate sensitivities through its linearisation, and write its expressions.
"""
from memse_compiler.ir.ops.base import OpRule, REGISTRY, register, rule_for  # noqa: F401
from memse_compiler.ir.ops import (  # noqa: F401  (registration)
    arithmetic, attention, broadcast, compare, contrib, einsum, elementwise, exact, indexing, linear, normalization,
    pointwise, pooling, qoperator, quantization, reduction, resize, rotary, scatter, weighted)

# op types, whatever their domain (ONNX's Gelu and onnxruntime's are one name)
SUPPORTED_OPS = tuple(sorted({key.split(":")[-1] for key, rule in REGISTRY.items() if not rule.internal}))


def unsupported_op(label: str, op_type: str, node_name: str, noisy: bool = False):
    """The one-line error for an op no rule takes (the frontend's, and batch_first's ahead of it). noisy: the
    node reads a signal with hardware noise upstream (any op may read only the data inputs' exact signals)."""
    from memse_compiler.ir.errors import MemseInputError
    where = " on a signal computed by the crossbars" if noisy else ""
    return MemseInputError(f"{label}: unsupported op '{op_type}' at node '{node_name}'{where} (supported: "
                           f"{', '.join(SUPPORTED_OPS)}; any op reading only the data inputs, e.g. a mask)")
