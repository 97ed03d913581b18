"""`memse-compile inspect GRAPH ...`: browse an exported annotated graph (.json or .graphml).

    memse-compile inspect annotated.json                       nodes sorted by output MSE
    memse-compile inspect annotated.json --layer conv1 --top 5 only the nodes of one layer
    memse-compile inspect annotated.json --tile 0,1,0           only the tiles/ADCs at group 0, row tile 1, col 0
    memse-compile inspect annotated.json --node conv1/adc[0,0,0]
    memse-compile inspect annotated.json --edge U V | --tensor T

Names may be given in full or by a unique part. A bad graph file or an unknown name: exit 2, one line.
"""
from __future__ import annotations

import argparse
import re
import shutil
import sys
from typing import Any, Sequence

import networkx as nx
import sympy as sp

from memse_compiler.export import load_graph

PROG = "memse-compile inspect"


class InspectError(Exception):
    pass


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="Inspect an annotated graph written with --graph: where "
                                "the error comes from, node by node and edge by edge.")
    p.add_argument("graph", help="graph file (.json node-link or .graphml) written by memse-compile --graph")
    p.add_argument("--node", help="show one node: attributes, and the MSE of its input and output signals")
    sel = p.add_mutually_exclusive_group()
    sel.add_argument("--edge", nargs=2, metavar=("U", "V"), help="show one edge (signal) with its expressions")
    sel.add_argument("--tensor", help="show the edge(s) carrying this tensor")
    p.add_argument("--layer", help="list only the nodes of this lowered layer")
    p.add_argument("--tile", help="list only the tile nodes at G,R,C (group, row tile, column tile)")
    p.add_argument("--sort", choices=("mse", "name", "order"), default="mse",
                   help="node list order: by output MSE (default, largest first), by name, or topological")
    p.add_argument("--top", type=int, default=None, metavar="N", help="list at most N nodes")
    return p


# ---- lookups -------------------------------------------------------------------------------------------
def _resolve(name: str, candidates: Sequence[str], what: str) -> str:
    if name in candidates:
        return name
    hits = [c for c in candidates if name in c]
    if len(hits) == 1:
        return hits[0]
    if not hits:
        raise InspectError(f"no {what} named '{name}'")
    shown = ", ".join(hits[:5]) + (", ..." if len(hits) > 5 else "")
    raise InspectError(f"'{name}' matches {len(hits)} {what}s: {shown}")


def parse_tile(text: str) -> tuple[int, int, int]:
    try:
        g, r, c = (int(v) for v in text.split(","))
    except ValueError:
        raise InspectError(f"--tile wants G,R,C (three integers), got '{text}'") from None
    return g, r, c


def node_mse(g: nx.DiGraph, n: str) -> float | None:
    d = g.nodes[n]
    if d.get("out_mse") is not None:
        return d["out_mse"]
    edges = list(g.out_edges(n, data=True)) or list(g.in_edges(n, data=True))
    vals = [e[2].get("mse") for e in edges if e[2].get("mse") is not None]
    return max(vals) if vals else None


def select_nodes(g: nx.DiGraph, layer: str | None = None, tile: tuple[int, int, int] | None = None,
                 sort: str = "mse", top: int | None = None) -> list[str]:
    """Node names after the layer/tile filters, in the requested order."""
    nodes = list(nx.topological_sort(g)) if nx.is_directed_acyclic_graph(g) else list(g.nodes)
    if layer is not None:
        layers = sorted({d["layer"] for _, d in g.nodes(data=True) if isinstance(d.get("layer"), str)})
        layer = _resolve(layer, layers, "layer")
        nodes = [n for n in nodes if g.nodes[n].get("layer") == layer]
    if tile is not None:
        nodes = [n for n in nodes if (g.nodes[n].get("group"), g.nodes[n].get("row_tile"),
                                      g.nodes[n].get("col_tile")) == tile]
    if sort == "mse":
        nodes.sort(key=lambda n: -(node_mse(g, n) or 0.0))
    elif sort == "name":
        nodes.sort()
    return nodes[:top] if top is not None else nodes


# ---- formatting ----------------------------------------------------------------------------------------
def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _table(cols: list[str], rows: list[list[str]]) -> str:
    widths = [max([len(c)] + [len(r[i]) for r in rows]) for i, c in enumerate(cols)]
    out = ["  ".join(c.ljust(w) for c, w in zip(cols, widths)).rstrip()]
    out.append("-" * len(out[0]))
    out += ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(out)


def short_names(expr: sp.Basic, longer_than: int = 10) -> tuple[sp.Basic, list[tuple[str, str]]]:
    """Replace long symbol names (`G_/net/conv1`, `mu[/net/relu_out]`) by short aliases (`G`, `mu`, `G2`) so the
    pretty form stays readable; returns the new expression and the legend [(alias, full name)]."""
    names = {s.name for s in expr.free_symbols}
    subs, legend, used = {}, [], set(names)
    for s in sorted(expr.free_symbols, key=lambda s: s.name):
        if len(s.name) <= longer_than:
            continue
        base = re.match(r"[A-Za-z]*", s.name).group(0) or "s"
        alias, k = base, 1
        while alias in used:
            k += 1
            alias = f"{base}{k}"
        used.add(alias)
        subs[s] = sp.Symbol(alias, **getattr(s, "_assumptions_orig", {}))
        legend.append((alias, s.name))
    return (expr.xreplace(subs) if subs else expr), legend


def pretty(expr: Any, width: int | None = None) -> str:
    """ASCII pretty form of an expression (unicode off), wrapped to `width` (default: the terminal), with long
    symbol names shortened and listed below."""
    if not isinstance(expr, sp.Basic):
        return str(expr)
    width = width or max(60, shutil.get_terminal_size((120, 40)).columns)
    short, legend = short_names(expr)
    text = sp.pretty(short, use_unicode=False, wrap_line=True, num_columns=width)
    if legend:
        text += "\n  where " + "\n        ".join(f"{a} = {n}" for a, n in legend)
    return text


def header(g: nx.DiGraph) -> str:
    dev = g.graph.get("device", {})
    lines = [f"model {g.graph.get('model')}  device {dev.get('name', '?')}  "
             f"{g.number_of_nodes()} nodes, {g.number_of_edges()} edges"]
    mc = g.graph.get("montecarlo", {}).get("outputs", {})
    for name, o in g.graph.get("analysis", {}).get("outputs", {}).items():
        line = f"output {name}: mse {_fmt(o.get('mse'))} (bias^2 {_fmt(o.get('bias2'))}, " \
               f"variance {_fmt(o.get('variance'))})"
        if name in mc:
            line += f"  Monte-Carlo {_fmt(mc[name].get('mse'))} ci95 {mc[name].get('ci95')}"
        kept = [f"{label} {100 * o[key]:.2f}%" for key, label in (("top1_agreement", "top-1 kept"),
                                                                    ("accuracy", "chip accuracy"),
                                                                    ("accuracy_float", "float accuracy"))
                if o.get(key) is not None]
        if kept:
            line += "\n  " + ", ".join(kept)
        lines.append(line)
    return "\n".join(lines)


def node_table(g: nx.DiGraph, nodes: list[str]) -> str:
    rows = []
    for n in nodes:
        d = g.nodes[n]
        tile = ",".join(str(d[k]) for k in ("group", "row_tile", "col_tile")) if "row_tile" in d else ""
        rows.append([n, str(d.get("op", "")), str(d.get("kind", "")), str(d.get("layer") or ""), tile,
                     _fmt(node_mse(g, n))])
    return _table(["node", "op", "kind", "layer", "tile", "out_mse"], rows)


SKIP_NODE = {"inputs", "outputs", "onnx_node"}


def _body_lines(body: dict) -> list[str]:
    """A Pointwise node's function, one step a line: op(inputs) -> outputs."""
    lines = [f"  function       {body.get('function', '')}"]
    if body.get("sides"):
        lines.append(f"  noiseless      {', '.join(body['sides'])}")
    lines += [f"    {s['op']}({', '.join(s['inputs'])}) -> {', '.join(s['outputs'])}" for s in body.get("steps", ())]
    return lines


def show_node(g: nx.DiGraph, n: str) -> str:
    d = g.nodes[n]
    lines = [f"node {n}"]
    for k in sorted(d):
        if k not in SKIP_NODE and not isinstance(d[k], dict):
            lines.append(f"  {k:14s} {_fmt(d[k])}")
    for k in sorted(k for k in d if isinstance(d[k], dict) and d[k]):
        items = dict(d[k])
        body = items.pop("body", None) if k == "attrs" else None
        body = body.to_dict() if hasattr(body, "to_dict") else body
        if items:
            lines.append(f"  {k}: " + ", ".join(f"{a}={_fmt(b)}" for a, b in items.items()))
        if isinstance(body, dict):
            lines += _body_lines(body)
    if d.get("onnx_node"):
        lines.append(f"  onnx           {d['onnx_node']}")
    rows = [["in", u, str(e.get("tensor")), _fmt(e.get("mse"))] for u, _, e in g.in_edges(n, data=True)]
    rows += [["out", v, str(e.get("tensor")), _fmt(e.get("mse"))] for _, v, e in g.out_edges(n, data=True)]
    if rows:
        lines += ["", _table(["dir", "peer", "tensor", "mse"], rows)]
    return "\n".join(lines)


def show_edge(g: nx.DiGraph, u: str, v: str) -> str:
    e = g.edges[u, v]
    lines = [f"edge {u} -> {v}", f"  tensor     {e.get('tensor')}", f"  shape      {e.get('shape')}"]
    for k in ("mse", "bias2", "variance", "mean_avg", "var_avg", "var_max"):
        if k in e:
            lines.append(f"  {k:10s} {_fmt(e[k])}")
    mc = (g.graph.get("montecarlo", {}).get("signals") or {}).get(e.get("tensor"))
    if mc:
        lines.append(f"  {'mc_mse':10s} {_fmt(mc.get('mse'))}  ci95 {mc.get('ci95')}")
    for k in sorted(e):
        if k not in ("tensor", "shape", "mse", "bias2", "variance", "mean_avg", "var_avg", "var_max", "index",
                     "mean", "var", "mean_expr", "var_expr") and not k.endswith("_symbols"):
            lines.append(f"  {k:10s} {_fmt(e[k])}")
    for k in ("mean_expr", "var_expr"):
        if k in e:
            lines += ["", f"{k}:", pretty(e[k]), "", f"  (text) {e[k]}"]
    return "\n".join(lines)


# ---- entry point ---------------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> str:
    try:
        g = load_graph(args.graph)
    except ValueError as exc:
        raise InspectError(str(exc)) from None
    if args.top is not None and args.top < 1:
        raise InspectError(f"--top must be at least 1, got {args.top}")
    nodes = list(g.nodes)
    if args.edge:
        u, v = (_resolve(x, nodes, "node") for x in args.edge)
        if not g.has_edge(u, v):
            raise InspectError(f"no edge {u} -> {v}")
        return show_edge(g, u, v)
    if args.tensor:
        tensors = sorted({t for *_, t in g.edges(data="tensor") if t is not None})
        t = _resolve(args.tensor, tensors, "tensor")
        edges = [(u, v) for u, v, x in g.edges(data="tensor") if x == t]
        out = [show_edge(g, *edges[0])]
        if len(edges) > 1:
            out.append("also carried by: " + ", ".join(f"{u} -> {v}" for u, v in edges[1:]))
        return "\n".join(out)
    if args.node:
        return show_node(g, _resolve(args.node, nodes, "node"))
    tile = parse_tile(args.tile) if args.tile else None
    chosen = select_nodes(g, args.layer, tile, args.sort, args.top)
    if not chosen:
        raise InspectError("no node matches the filters")
    return header(g) + "\n\n" + node_table(g, chosen)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        print(run(args))
    except InspectError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
