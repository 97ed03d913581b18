"""Run the float model over the evaluation inputs: the reference every MSE is measured against, and the
signal ranges the converters are calibrated on (DESIGN §4.6)."""
from __future__ import annotations

from memse_compiler.ir import MemseGraph
from memse_compiler.ir.errors import MemseInputError
from memse_compiler.ir.interpret import run
from memse_compiler.ir.pass_base import Pass, PassContext


class Calibrate(Pass):
    name = "calibrate"

    def apply(self, g: MemseGraph, ctx: PassContext) -> MemseGraph:
        if ctx.inputs is None:
            raise MemseInputError("no evaluation inputs were given to calibrate on")
        g.graph["reference"] = run(g, ctx.inputs, hardware=False)
        return g
