"""The pass interface: a pass is a small object with one `apply(graph, ctx) -> graph` (xDSL style)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from memse_compiler.ir.graph import MemseGraph


@dataclass
class PassContext:
    """What passes share besides the graph: the device, the evaluation inputs, options and results."""
    device: Any                                   # device_models.Device
    inputs: np.ndarray | None = None              # evaluation batch for the first graph input
    options: dict[str, Any] = field(default_factory=dict)


class Pass:
    """Graph in, graph out. Subclasses set `name` and implement `apply`; they may mutate `g` in place."""
    name: str = "pass"

    def apply(self, g: MemseGraph, ctx: PassContext) -> MemseGraph:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<pass {self.name}>"
