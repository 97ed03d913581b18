"""Several Monte-Carlo chips in one session run: stacked on the batch axis (chip c sees samples [c N, (c+1) N)).

Stacking keeps the node count of one chip and gives every node several chips' data, which pays on small matrix
networks, whose run is mostly per-node overhead (the digits MLP: 0.26 -> 0.14-0.21 ms per chip; its floor is the
chip's ~46 k normals, ~0.1 ms). The executor builds the stacked graph (`NoisyExecutor(chips_per_run=K)`); this
module says when the graph allows it and how many chips a run takes.
"""
from __future__ import annotations

import numpy as np

from memse_compiler.ir import KIND_INPUT, KIND_OUTPUT, MemseGraph, schedule
from memse_compiler.ir.geometry import ConvGeometry

# digital ops that treat every sample (axis 0) alone, whatever the batch: chips can be stacked on that axis
_PER_SAMPLE_OPS = {"Relu", "LeakyRelu", "PRelu", "Sigmoid", "HardSigmoid", "Tanh", "Elu", "Selu", "Celu", "Softplus",
                   "Softsign", "Gelu", "HardSwish", "Erf", "Exp", "Log", "Sqrt", "Abs", "Neg", "Reciprocal", "Clip",
                   "Identity", "Dropout", "Add", "Sub", "Mul", "Div", "Max", "Min", "Sum", "Pow", "Softmax",
                   "LogSoftmax", "Sign", "Round", "Floor", "Ceil", "Pointwise"}
CHIP_BATCH_ELEMENTS = 1 << 20     # float32 elements of the widest signal over a run's stacked chips
# the digits MLP costs the same per chip from 8 to 64 chips a run (0.16 ms); fewer waste fewer draws when a
# precision target stops the run part-way through its last run
MAX_CHIPS_PER_RUN = 16


def chip_batching_obstacle(g: MemseGraph) -> str | None:
    """Why the chips cannot be stacked on the batch axis of one session run (None: they can). Stacking keeps
    the node count of one chip and gives every node several chips' data, which pays on small matrix networks
    whose run is mostly per-node overhead. It needs every crossbar layer a plain (N, J) x (J, O) product and
    every digital op per sample (constants broadcast from the right, Softmax not over the batch)."""
    for name, lay in g.layers.items():
        geo = lay.geometry
        if isinstance(geo, ConvGeometry) or geo.in_columns or geo.out_columns or lay.groups != 1:
            return f"layer '{name}' is not a (N, J) x (J, O) product"
        if len(g.tensors[lay.input]) != 2:
            return f"layer '{name}' has a {len(g.tensors[lay.input])}-D input"
    consts = g.graph["constants"]
    for unit in schedule(g):
        if unit in g.layers or g.nodes[unit]["kind"] in (KIND_INPUT, KIND_OUTPUT):
            continue
        d = g.nodes[unit]
        op = d["op"]
        rank = len(g.tensors[d["inputs"][0]]) if d["inputs"] and d["inputs"][0] in g.tensors else 0
        if op == "Flatten" and d["attrs"].get("axis", 1) % max(rank, 1) != 0:
            continue              # (N, ...) -> (N * a, b): each chip's samples stay one block along axis 0
        shape = consts.get(d["inputs"][1]) if op == "Reshape" and len(d["inputs"]) > 1 else None
        if shape is not None and np.size(shape) and int(np.asarray(shape).reshape(-1)[0]) in (0, -1):
            continue              # the leading size copied or inferred: the same blocks
        if op not in _PER_SAMPLE_OPS:
            return f"'{unit}' ({op}) may mix samples"
        if op in ("Softmax", "LogSoftmax") and d["attrs"].get("axis", -1) % len(g.tensors[d["inputs"][0]]) == 0:
            return f"'{unit}' ({op}) normalises over the batch axis"
        read = d["attrs"]["body"].constants if op == "Pointwise" else {t: consts.get(t) for t in d["inputs"]}
        for c in read.values():
            if c is not None and np.ndim(c) >= len(g.tensors[d["outputs"][0]]) and np.shape(c)[0] != 1:
                return f"'{unit}' ({op}) has a constant along the batch axis"
    return None


def auto_chips_per_run(g: MemseGraph, n: int) -> int:
    """Chips per session run: as many as keep the widest signal under CHIP_BATCH_ELEMENTS (at most
    MAX_CHIPS_PER_RUN), when the graph allows stacking them (`chip_batching_obstacle`); else 1."""
    if chip_batching_obstacle(g) is not None:
        return 1
    widest = max(int(np.prod([d or 1 for d in shape[1:]])) for shape in g.tensors.values() if len(shape) >= 1)
    return int(np.clip(CHIP_BATCH_ELEMENTS // max(n * widest, 1), 1, MAX_CHIPS_PER_RUN))
