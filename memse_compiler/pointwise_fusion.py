"""Folding functions of one noisy signal into Pointwise nodes (ir/ops/pointwise.py), after the frontend's parse.

Every tensor computed from one signal x by pointwise ops alone (each op's other operands constants) is a function
f(x) of it, element by element. Op by op, the moment passes take each op's operands as independent Gaussians,
which fails in three cases that this pass folds into one Pointwise node, integrated on x's Gaussian as a whole:
- a comparison of x (`where(x > 0, x, 0.1 * x)`, `(x > t).float()`): its bool has no usable moments on its own;
- x reaching one op along two paths (`x * sigmoid(x)`, GELU's tanh form): the operands are strongly correlated;
- an op that jumps (Round, Sign) behind other ops of x (`round(x * 4) / 4`): folded so that, when x is an ADC's
  output, the function as a whole is summed over the ADC's codes (the codes of x * 4 alias with the rounding).
A comparison of two signals that selects one of them (`torch.where(a > b, a, b)`) is their Max (or Min), whose
rule takes two signals: it becomes that op first.
The fold runs from x to each such tensor that a node outside the function reads (a crossbar, an op of another
signal, a graph output). A noisy bool that leaves a function of one signal (`where(x > y, ...)` of two signals, a
mask cast to int) is refused in one line naming the node.
"""
from __future__ import annotations

import networkx as nx
from onnx import helper

from memse_compiler.ir import KIND_DIGITAL, KIND_INPUT, MemseGraph
from memse_compiler.ir.errors import MemseInputError
from memse_compiler.ir.ops import rule_for
from memse_compiler.ir.ops.pointwise import PointwiseBody, Step


def _roots(g: MemseGraph, order: list[str]) -> tuple[dict[str, str], set[str], set[str], set[str]]:
    """(root: tensor -> the noisy signal it is a pointwise function of, booleans: noisy bool tensors, folded:
    tensors whose function of their root must be integrated as a whole, quiet: signals without noise, read like
    constants)."""
    consts = g.graph["constants"]
    root: dict[str, str] = {}
    booleans: set[str] = set()
    folded: set[str] = set()
    quiet: set[str] = set()       # the data inputs and what digital ops compute from them alone (exact nodes, masks)
    for n in order:
        d = g.nodes[n]
        if d["kind"] == KIND_INPUT:
            quiet.update(d["outputs"])
        if d["kind"] != KIND_DIGITAL:
            continue
        if all(t in consts or t in quiet for t in d["inputs"]):
            quiet.update(d["outputs"])
            continue
        rule = rule_for(d["op"])
        if rule.boolean:
            booleans.update(d["outputs"])
        signals = [t for t in d["inputs"] if t not in consts and t not in quiet]
        if not (rule.pointwise and len(d["outputs"]) == 1):
            continue
        roots = {root.get(t, t) for t in signals}
        out = d["outputs"][0]
        if len(roots) != 1 or g.tensors.get(out) != g.tensors.get(next(iter(roots))):
            continue                        # several signals, or an output broadcast beyond the signal's shape
        root[out] = roots.pop()
        # a jump behind other ops of the signal (round(x * 4)): folded, so that it reads an ADC's codes as its root
        jump_behind = rule.jumps(d["attrs"]) and any(t in root for t in signals)
        if rule.boolean or jump_behind or len(set(signals)) > 1 or any(t in booleans or t in folded for t in signals):
            folded.add(out)
    return root, booleans, folded, quiet


def _inside(g: MemseGraph, consumer: str, r: str, root: dict[str, str]) -> bool:
    """Whether `consumer` is a pointwise op of the function of `r`."""
    d = g.nodes[consumer]
    return d["kind"] == KIND_DIGITAL and len(d["outputs"]) == 1 and root.get(d["outputs"][0]) == r


def _refuse(label: str, g: MemseGraph, node: str, why: str) -> MemseInputError:
    return MemseInputError(f"{label}: node '{node}' ({g.nodes[node]['op']}) {why} (a noisy comparison is supported "
                           f"inside an element-wise function of one signal: where(x > 0, x, 0.1 * x), "
                           f"(x > t).float() * x)")


def _body(g: MemseGraph, tensor: str, r: str, position: dict[str, int], quiet: set[str]) -> PointwiseBody:
    """The steps from `r` to `tensor`, in graph order."""
    consts, producers = g.graph["constants"], g.graph["producers"]
    members, stack = set(), [producers[tensor]]
    while stack:
        n = stack.pop()
        if n in members:
            continue
        members.add(n)
        stack += [producers[t] for t in g.nodes[n]["inputs"] if t not in consts and t not in quiet and t != r]
    steps = []
    for n in sorted(members, key=position.__getitem__):
        d = g.nodes[n]
        steps.append(Step(d["op"], d["attrs"], list(d["inputs"]), list(d["outputs"]), d["onnx_node"]))
    read = {t: consts[t] for s in steps for t in s.inputs if t in consts}
    sides = list(dict.fromkeys(t for s in steps for t in s.inputs if t in quiet and t not in consts))
    return PointwiseBody(r, tensor, steps, read, sides)


# where(a OP b, a, b) is max(a, b) for OP in > >=, min(a, b) for < <= (ties pick equal values); swapped, the other
EXTREMA = {"Greater": "Max", "GreaterOrEqual": "Max", "Less": "Min", "LessOrEqual": "Min"}


def selections_as_extrema(g: MemseGraph, root: dict[str, str], quiet: set[str]) -> bool:
    """Rewrite each Where that selects one of the two signals its condition compares, functions of different noisy
    signals, as Max or Min of them (of one signal, the fold below is exact). Whether it rewrote one."""
    consts, producers = g.graph["constants"], g.graph["producers"]
    done = False
    for n, d in list(g.nodes(data=True)):
        if d.get("op") != "Where" or d["attrs"].get("condition") is not None or len(d["inputs"]) != 3:
            continue
        cond, a, b = d["inputs"]
        c = g.nodes[producers[cond]] if cond in producers else None
        if c is None or c["op"] not in EXTREMA or a in consts or b in consts or a in quiet or b in quiet \
                or set(c["inputs"]) != {a, b} or root.get(a, a) == root.get(b, b):
            continue
        op = EXTREMA[c["op"]] if c["inputs"] == [a, b] else ("Min" if EXTREMA[c["op"]] == "Max" else "Max")
        for u in list(g.predecessors(n)):
            g.remove_edge(u, n)
        d.update(op=op, inputs=[a, b], attrs={"op": op, "same_operand": False},
                 onnx_node=helper.make_node(op, [a, b], list(d["outputs"]), name=n))
        for t in (a, b):
            g.add_signal(producers[t], n, t)
        if not any(True for _ in g.successors(producers[cond])):
            g.remove_node(producers[cond])
        done = True
    g.rebuild_producers()
    return done


def fuse_pointwise(g: MemseGraph, label: str) -> None:
    """Fold the functions of one noisy signal that need it into Pointwise nodes, in place (module docstring)."""
    order = list(nx.lexicographical_topological_sort(g))
    root, booleans, folded, quiet = _roots(g, order)
    if booleans and selections_as_extrema(g, root, quiet):
        order = list(nx.lexicographical_topological_sort(g))
        root, booleans, folded, quiet = _roots(g, order)
    position = {n: i for i, n in enumerate(order)}
    if not folded and not booleans:
        return
    producers = g.graph["producers"]
    for t in sorted(booleans, key=lambda t: position[producers[t]]):
        if t not in root:
            n = producers[t]
            noisy = [s for s in g.nodes[n]["inputs"] if s not in g.graph["constants"] and s not in quiet]
            if len({root.get(s, s) for s in noisy}) > 1:
                raise _refuse(label, g, n, f"compares two different noisy signals ({', '.join(map(repr, noisy))})")
            raise _refuse(label, g, n, f"gives a bool of shape {g.tensors.get(t)}, broadcast beyond the shape "
                                       f"{g.tensors.get(noisy[0])} of the noisy signal '{noisy[0]}'")
        for c in g.consumers(t):
            if not _inside(g, c, root[t], root):
                raise _refuse(label, g, c, f"reads '{t}', a comparison of the noisy signal '{root[t]}', but is not "
                                           f"an element-wise function of '{root[t]}' alone")
    boundary = [t for t in folded if t not in booleans and
                any(not _inside(g, c, root[t], root) for c in g.consumers(t))]
    bodies = {producers[t]: _body(g, t, root[t], position, quiet) for t in boundary}
    for n, body in bodies.items():
        for u in list(g.predecessors(n)):
            g.remove_edge(u, n)
        operands = [body.root] + body.sides
        g.nodes[n].update(op="Pointwise", inputs=operands, outputs=[body.output], attrs={"body": body},
                          onnx_node=helper.make_node("Pointwise", operands, [body.output], name=n, domain="memse"))
        for t in operands:
            g.add_signal(producers[t], n, t)
    # the folded ops now live in the bodies; ops of the signal left without a reader (0.1 * x) go too
    gone = {producers[t] for t in folded | booleans} - set(bodies)
    g.remove_nodes_from(gone)
    dead = [n for n, d in g.nodes(data=True) if d["kind"] == KIND_DIGITAL and g.out_degree(n) == 0]
    while dead:
        preds = {u for n in dead for u in g.predecessors(n)}
        g.remove_nodes_from(dead)
        dead = [u for u in preds if u in g and g.nodes[u]["kind"] == KIND_DIGITAL and g.out_degree(u) == 0]
    g.rebuild_producers()
