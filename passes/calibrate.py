"""Run the float model over the evaluation inputs: the reference every MSE is measured against, and the
signal ranges the converters are calibrated on (DESIGN §4.6)."""
from __future__ import annotations

import networkx as nx
import numpy as np

from memse_compiler.ir import MemseGraph
from memse_compiler.ir.errors import MemseInputError
from memse_compiler.ir.feeds import feed_batch, graph_feed
from memse_compiler.ir.interpret import run
from memse_compiler.ir.pass_base import Pass, PassContext


class Calibrate(Pass):
    name = "calibrate"

    def apply(self, g: MemseGraph, ctx: PassContext) -> MemseGraph:
        if ctx.inputs is None:
            raise MemseInputError("no evaluation inputs were given to calibrate on")
        feed = graph_feed(g, ctx.inputs)
        try:
            with np.errstate(divide="ignore", invalid="ignore", over="ignore"):   # _require_finite reports
                g.graph["reference"] = run(g, feed, hardware=False)
        except (ValueError, IndexError) as exc:
            # a batch the export fixed as a constant somewhere (frontend.batch_generic frees the usual ones)
            b, n = g.graph.get("export_batch"), feed_batch(feed)
            if b is None or b == n:
                raise
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise MemseInputError(f"the model was exported with a fixed batch of {b} and does not run on {n} "
                                  f"inputs ({first}): evaluate {b} (--batch {b}) or export with a dynamic batch "
                                  f"axis") from None
        _require_finite(g, g.graph["reference"])
        return g


def _require_finite(g: MemseGraph, reference: dict) -> None:
    """The float model must give finite signals on the evaluation inputs (Sqrt or Log of a negative, a
    division by 0): name the first node, in graph order, whose output is not finite."""
    for unit in nx.topological_sort(g):
        for t in g.nodes[unit].get("outputs", ()):
            value = reference.get(t)
            if value is not None and not np.all(np.isfinite(value)):
                bad = int(np.size(value) - np.count_nonzero(np.isfinite(value)))
                raise MemseInputError(f"node '{unit}' ({g.nodes[unit]['op']}): gives NaN or inf at {bad} of "
                                      f"{np.size(value)} values of '{t}' on the evaluation inputs")
