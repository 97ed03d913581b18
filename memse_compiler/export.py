"""Export / import of the annotated graph (DESIGN §3): JSON node-link and GraphML, no pickles.

`export_graph(g, path, arrays=False)` writes every node and edge with its annotations: op, kind, shapes, tile
coordinates, conductance range, converter bits/ranges, `mean_expr`/`var_expr` (sympy `str`), mse/bias2/variance
and summaries of the `mean`/`var` arrays (`mean_avg`, `var_avg`, `var_max`, `mean_shape`); at graph level the
model, device, analysis, Monte-Carlo, power and closed form. With `arrays=True` the full `mean`/`var` arrays go
to a side file `<stem>.arrays.npz` (keys `e<index>.mean`, `e<index>.var`; `index` is an edge attribute).

Expressions stay exact across the round trip: beside an expression attribute `X` the exporter stores
`X_symbols` (keys of the graph-level `symbols` table: name and sympy assumptions, so `mu[conv1]` or
`G_/net/conv` keep their names); floats are printed with round-trip precision, and `X_floats` gives the
precision of those that are not machine doubles. `load_graph` rebuilds them (two symbols with one name and
different assumptions in one expression cannot be told apart in text: avoid that).

GraphML holds scalars only: dicts are flattened with dotted prefixes (`device.conductance.g_min`), lists and
nulls are JSON strings; the graph attribute `memse.keys` maps each flat key back to its path.
"""
from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import re
import tokenize
from functools import lru_cache
from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np
import sympy as sp
from mpmath import libmp as mlib
from mpmath.libmp import prec_to_dps
from sympy.core.function import AppliedUndef
from sympy.parsing.sympy_parser import parse_expr
from sympy.printing.str import StrPrinter

FORMAT = "memse-graph/1"
SMALL_ARRAY = 64                         # arrays up to this size are written in full, larger ones summarised
SKIP_GRAPH_KEYS = {"reference", "moments", "linearization", "constants", "producers", "layers", "device"}
EXPR_SUFFIX = "_symbols"
FLOATS_SUFFIX = "_floats"


# ---- expressions ---------------------------------------------------------------------------------------
class _Printer(StrPrinter):
    """sympy `str`, except that machine floats print with round-trip precision (repr)."""

    def _print_Float(self, expr: sp.Float) -> str:
        return _float_text(expr) if expr.is_finite else super()._print_Float(expr)


def _float_text(f: sp.Float) -> str:
    """Enough digits to get the same binary value back at the Float's precision (repr for machine floats)."""
    if f._prec == 53:
        return repr(float(f))
    return mlib.to_str(f._mpf_, prec_to_dps(f._prec) + 2)


_PRINTER = _Printer()


def expr_to_str(expr: sp.Basic) -> str:
    return _PRINTER.doprint(expr)


class _Symbols:
    """Graph-level table of the symbols and undefined functions used by exported expressions."""

    def __init__(self) -> None:
        self.table: dict[str, list] = {}       # key -> [name, assumptions]
        self.by_symbol: dict[sp.Symbol, str] = {}
        self.functions: set[str] = set()
        self._cache: dict[int, tuple[sp.Basic, str, list[str]]] = {}

    def encode(self, expr: sp.Basic) -> tuple[str, list[str], dict[str, int]]:
        """(text, symbol keys, {float literal: precision} for floats that are not machine doubles)."""
        hit = self._cache.get(id(expr))
        if hit is not None and hit[0] is expr:
            return hit[1:]
        keys = []
        for s in sorted(expr.free_symbols, key=lambda s: s.name):
            key = self.by_symbol.get(s)
            if key is None:
                key, n = s.name, 0
                while key in self.table:               # same name, other assumptions
                    n += 1
                    key = f"{s.name}#{n}"
                orig = getattr(s, "_assumptions_orig", s.assumptions0)
                self.table[key] = [s.name, {k: bool(v) for k, v in orig.items() if v is not None}]
                self.by_symbol[s] = key
            keys.append(key)
        self.functions.update(f.func.__name__ for f in expr.atoms(AppliedUndef))
        floats = {_float_text(f): int(f._prec) for f in expr.atoms(sp.Float) if f._prec != 53 and f.is_finite}
        text = expr_to_str(expr)
        self._cache[id(expr)] = (expr, text, keys, floats)
        return text, keys, floats


@lru_cache(maxsize=4096)
def _pattern(names: tuple[str, ...]) -> re.Pattern:
    alts = "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True))
    return re.compile(rf"(?<![\w.\]])(?:{alts})(?![\w\[])")


def parse_expression(text: str, keys: list[str], table: dict[str, list], functions: list[str],
                     floats: dict[str, int] | None = None) -> sp.Expr:
    """Rebuild an expression from its `str` form: every stored symbol name (which may hold brackets, slashes,
    dots) is replaced by a placeholder bound to the exact sympy Symbol, then sympy's parser does the rest."""
    local: dict[str, Any] = {f: sp.Function(f) for f in functions}
    by_name = {}
    for i, key in enumerate(keys):
        name, assumptions = table[key]
        by_name.setdefault(name, f"_memse_s{i}_")
        local[by_name[name]] = sp.Symbol(name, **assumptions)
    if by_name:
        text = _pattern(tuple(by_name)).sub(lambda m: by_name[m.group(0)], text)
    _check_tokens(text, local)
    expr = parse_expr(text, local_dict=local)
    # floats of another precision: their literal, parsed as the parser does, back at the stored precision;
    # a machine float printed by repr (<= 17 digits) parses at 54..60 bits: back to the exact double
    exact = {sp.Float(t): sp.Float(t, precision=p) for t, p in (floats or {}).items()}
    subs = {f: exact[f] if f in exact else sp.Float(float(f)) for f in expr.atoms(sp.Float)
            if f in exact or 53 < f._prec <= 60}
    return expr.xreplace(subs) if subs else expr


_PLAIN_FUNCTIONS = {"sqrt", "cbrt", "root", "True", "False"}
_OPS = {"+", "-", "*", "/", "**", "(", ")", ",", "<", ">", "<=", ">=", "==", "!=", "&", "|", "~", "%"}


def _check_tokens(text: str, local: dict[str, Any]) -> None:
    """sympy's parser evaluates Python: accept only numbers, arithmetic, the stored symbols and functions,
    and sympy's own expression classes (a graph file must not be able to run code)."""
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(text).readline))
    except (tokenize.TokenError, SyntaxError) as exc:
        raise ValueError(f"malformed expression: {exc}") from None
    for tok in tokens:
        t = tok.string
        obj = getattr(sp, t, None) if tok.type == tokenize.NAME and not t.startswith("_") else None
        if not (tok.type in (tokenize.NUMBER, tokenize.NEWLINE, tokenize.ENDMARKER, tokenize.NL)
                or (tok.type == tokenize.OP and t in _OPS) or t in local or t in _PLAIN_FUNCTIONS
                or isinstance(obj, sp.Basic) or (isinstance(obj, type) and issubclass(obj, sp.Basic))):
            raise ValueError(f"expression holds a disallowed token {t!r}")


# ---- values -> JSON-ready ------------------------------------------------------------------------------
def array_summary(a: np.ndarray) -> dict[str, Any]:
    a = np.asarray(a)
    out: dict[str, Any] = {"shape": list(a.shape), "dtype": str(a.dtype)}
    if a.size and a.dtype.kind in "fiub":
        out.update(mean=_num(a.mean()), min=_num(a.min()), max=_num(a.max()))
    return out


def _num(x: Any) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def layer_summary(layer: Any) -> dict[str, Any]:
    """The JSON-ready record of a CrossbarLayer (no weight arrays: their shape and range)."""
    fields = ("name", "op", "input", "output", "groups", "outs", "rows", "bias_row", "scale", "g_min",
              "rows_per_tile", "outs_per_tile", "row_tiles", "col_tiles", "tiles", "dac_bits", "dac_range",
              "dac_signed", "adc_bits")
    out = {f: getattr(layer, f, None) for f in fields}
    out["geometry"] = type(getattr(layer, "geometry", None)).__name__
    out["weight"] = array_summary(layer.weight)
    out.update(w_max=_compact(getattr(layer, "w_max", None)), g_range=_compact(getattr(layer, "g_range", None)))
    out["adc_range"] = None if layer.adc_range is None else np.asarray(layer.adc_range).tolist()
    out["extra"] = getattr(layer, "extra", {})
    return out


def _compact(a: np.ndarray | None) -> float | list | None:
    """A scalar when every entry is equal, else the flat list (None stays None)."""
    flat = None if a is None else np.asarray(a, dtype=np.float64).ravel()
    return flat if flat is None else float(flat[0]) if flat.size and np.all(flat == flat[0]) else flat.tolist()


def _clean(x: Any, syms: _Symbols) -> Any:
    from memse_compiler.ir.crossbar import CrossbarLayer
    if isinstance(x, dict):
        out = {}
        for k, v in x.items():
            if callable(v) and not isinstance(v, sp.Basic):
                continue
            if isinstance(v, sp.Basic):
                out[str(k)], out[f"{k}{EXPR_SUFFIX}"], floats = syms.encode(v)
                if floats:
                    out[f"{k}{FLOATS_SUFFIX}"] = floats
            else:
                out[str(k)] = _clean(v, syms)
        return out
    if isinstance(x, (list, tuple, set)):
        return [_clean(v, syms) for v in x]
    if isinstance(x, np.ndarray):
        return _clean(x.tolist(), syms) if x.size <= SMALL_ARRAY else array_summary(x)
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return _num(x)
    if x is None or isinstance(x, str):
        return x
    if isinstance(x, sp.Basic):
        return syms.encode(x)[0]
    if isinstance(x, CrossbarLayer):
        return _clean(layer_summary(x), syms)
    if hasattr(x, "to_dict"):
        return _clean(x.to_dict(), syms)
    if dataclasses.is_dataclass(x) and not isinstance(x, type):     # e.g. a fitted closed form
        return _clean({f.name: getattr(x, f.name) for f in dataclasses.fields(x)}, syms)
    if type(x).__name__ == "NodeProto":
        import onnx.helper
        return onnx.helper.printable_node(x)
    return str(x)


# ---- graph -> plain export graph -------------------------------------------------------------------------
def _slice_group(a: np.ndarray | None, grp: int, o0: int, o1: int) -> float | list | None:
    """The (G, O, 1) or (1, 1, 1) per-scale-group value seen by a tile's outputs [o0, o1) of group grp."""
    g = None if a is None else (a[grp] if a.shape[0] > 1 else a[0])
    return None if g is None else _compact(g[o0:o1] if g.shape[0] > 1 else g)


def _node_record(g: nx.DiGraph, n: str, d: dict, syms: _Symbols) -> dict[str, Any]:
    rec = _clean(d, syms)
    layer = g.graph.get("layers", {}).get(d.get("layer")) if isinstance(d.get("layer"), str) else None
    if layer is not None:
        tile = ("group" in d and "outputs_range" in d)
        for k in ("g_range", "w_max"):
            a = getattr(layer, k)
            rec[k] = _slice_group(a, d["group"], *d["outputs_range"]) if tile else _compact(a)
        rec["g_min"] = float(layer.g_min)
    outs = [e for e in g.out_edges(n, data=True) if e[2].get("tensor") in d.get("outputs", ())]
    edges = outs or list(g.in_edges(n, data=True))
    if edges and edges[0][2].get("mse") is not None:
        rec["out_mse"] = _num(edges[0][2]["mse"])
    return rec


def _edge_record(d: dict, index: int, syms: _Symbols, arrays: dict[str, np.ndarray] | None) -> dict[str, Any]:
    plain = {k: v for k, v in d.items() if k not in ("mean", "var")}
    rec = _clean(plain, syms)
    rec["index"] = index
    for k in ("mean", "var"):
        a = d.get(k)
        if a is None:
            continue
        a = np.asarray(a, dtype=np.float64)
        rec[f"{k}_avg"] = _num(a.mean()) if a.size else None
        rec[f"{k}_shape"] = list(a.shape)
        if k == "var":
            rec["var_max"] = _num(a.max()) if a.size else None
        if arrays is not None:
            arrays[f"e{index}.{k}"] = a
    return rec


def _graph_record(g: nx.DiGraph, syms: _Symbols) -> dict[str, Any]:
    rec = _clean({k: v for k, v in g.graph.items() if k not in SKIP_GRAPH_KEYS}, syms)
    dev = g.graph.get("device")
    rec["device"] = dev.to_dict() if hasattr(dev, "to_dict") else _clean(dev, syms)
    rec["model"] = g.graph.get("model_path", g.graph.get("name"))
    rec["layers"] = {name: _clean(layer_summary(layer), syms) if not isinstance(layer, dict) else _clean(layer, syms)
                     for name, layer in g.graph.get("layers", {}).items()}
    rec["format"] = FORMAT
    return rec


def to_plain(g: nx.DiGraph, arrays: dict[str, np.ndarray] | None = None) -> nx.DiGraph:
    """A copy of `g` whose attributes are JSON-ready (see the module doc); fills `arrays` when given."""
    syms = _Symbols()
    out = nx.DiGraph()
    for n, d in g.nodes(data=True):
        out.add_node(n, **_node_record(g, n, d, syms))
    for i, (u, v, d) in enumerate(g.edges(data=True)):
        out.add_edge(u, v, **_edge_record(d, i, syms, arrays))
    out.graph.update(_graph_record(g, syms))
    out.graph["symbols"] = syms.table
    out.graph["functions"] = sorted(syms.functions)
    return out


# ---- GraphML flattening --------------------------------------------------------------------------------
def _flatten(rec: dict, prefix: tuple = ()) -> list[tuple[tuple, Any]]:
    items = []
    for k, v in rec.items():
        path = prefix + (k,)
        if isinstance(v, dict) and v:
            items += _flatten(v, path)
        else:
            items.append((path, v))
    return items


def _to_graphml_graph(plain: nx.DiGraph) -> nx.DiGraph:
    elements = [plain.graph] + [d for _, d in plain.nodes(data=True)] + [d for *_, d in plain.edges(data=True)]
    flat = [_flatten(e) for e in elements]
    path_key: dict[tuple, str] = {}
    taken: dict[str, tuple] = {}
    types: dict[str, set] = {}
    for path, v in (item for items in flat for item in items):
        if path not in path_key:
            key = base = ".".join(map(str, path))
            while key in taken:                          # ("a.b",) and ("a", "b") both flatten to "a.b"
                key = f"{base}~{len(taken)}"
            path_key[path], taken[key] = key, path
        types.setdefault(path_key[path], set()).add(type(v))
    as_json = {k for k, ts in types.items() if len(ts) > 1 or not ts <= {str, int, float, bool}}
    table = {k: [list(taken[k]), k in as_json] for k in taken}
    out = nx.DiGraph()

    def scalars(items):
        return {path_key[p]: (json.dumps(v) if path_key[p] in as_json else v) for p, v in items}

    nn = plain.number_of_nodes()
    out.graph.update(scalars(flat[0]))
    out.add_nodes_from((n, scalars(items)) for n, items in zip(plain.nodes, flat[1:1 + nn]))
    out.add_edges_from((u, v, scalars(items)) for (u, v), items in zip(plain.edges, flat[1 + nn:]))
    out.graph["memse.keys"] = json.dumps(table)
    return out


def _unflatten(d: dict, table: dict[str, list]) -> dict:
    out: dict = {}
    for k, v in d.items():
        if k not in table:
            out[k] = v
            continue
        path, is_json = table[k]
        if is_json and isinstance(v, str):
            v = json.loads(v)
        cur = out
        for p in path[:-1]:
            cur = cur.setdefault(p, {})
        cur[path[-1]] = v
    return out


# ---- public API ----------------------------------------------------------------------------------------
def arrays_path(path: str | os.PathLike) -> Path:
    p = Path(path)
    return p.with_name(p.stem + ".arrays.npz")


def export_graph(g: nx.DiGraph, path: str | os.PathLike, arrays: bool = False) -> Path:
    """Write the annotated graph to `path` (.json node-link or .graphml); with `arrays`, the full per-edge
    mean/var arrays to `<stem>.arrays.npz` next to it. Returns the path written."""
    path = Path(path)
    fmt = path.suffix.lower()
    if fmt not in (".json", ".graphml"):
        raise ValueError(f"{path}: graph export format must be .json or .graphml")
    store: dict[str, np.ndarray] | None = {} if arrays else None
    plain = to_plain(g, store)
    if arrays:
        side = arrays_path(path)
        np.savez_compressed(side, **store)
        plain.graph["arrays_file"] = side.name
    if fmt == ".json":
        data = nx.node_link_data(plain, edges="links")
        with open(path, "w") as fh:
            json.dump(data, fh, indent=1, allow_nan=False)
    else:
        nx.write_graphml(_to_graphml_graph(plain), path, infer_numeric_types=True)
    return path


def _read(path: Path) -> nx.DiGraph:
    if path.suffix.lower() == ".graphml":
        raw = nx.read_graphml(path)
        table = json.loads(raw.graph.pop("memse.keys"))
        g = nx.DiGraph()
        g.graph.update(_unflatten({k: v for k, v in raw.graph.items()
                                   if k not in ("node_default", "edge_default")}, table))
        for n, d in raw.nodes(data=True):
            g.add_node(n, **_unflatten(d, table))
        for u, v, d in raw.edges(data=True):
            g.add_edge(u, v, **_unflatten(d, table))
        return g
    with open(path) as fh:
        return nx.node_link_graph(json.load(fh), edges="links", directed=True, multigraph=False)


def load_graph(path: str | os.PathLike) -> nx.DiGraph:
    """Read a graph written by `export_graph`: expressions back as sympy (same symbols), shapes as tuples,
    and the `mean`/`var` arrays from the side .npz when it exists. Raises ValueError on a bad file."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    try:
        g = _read(path)
        if g.graph.get("format") != FORMAT:
            raise ValueError(f"format {g.graph.get('format')!r}, want {FORMAT!r}")
        table, funcs, memo = g.graph.get("symbols", {}), g.graph.get("functions", []), {}
        for d in [g.graph] + [d for _, d in g.nodes(data=True)] + [d for *_, d in g.edges(data=True)]:
            _restore(d, table, funcs, memo)
        for *_, d in g.edges(data=True):
            if isinstance(d.get("shape"), list):
                d["shape"] = tuple(d["shape"])
        side = path.with_name(g.graph["arrays_file"]) if g.graph.get("arrays_file") else None
        if side is not None and side.exists():
            with np.load(side, allow_pickle=False) as npz:
                for *_, d in g.edges(data=True):
                    for k in ("mean", "var"):
                        if f"e{d.get('index')}.{k}" in npz:
                            d[k] = npz[f"e{d.get('index')}.{k}"]
    except Exception as exc:   # JSON, XML, zip, sympy and shape errors alike: one message naming the file
        raise ValueError(f"{path}: not a readable memse graph file ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    return g


def _restore(d: dict, table: dict, funcs: list, memo: dict) -> None:
    for k in [k for k in d if k.endswith(EXPR_SUFFIX)]:
        base = k[: -len(EXPR_SUFFIX)]
        if isinstance(d.get(base), str) and isinstance(d[k], list):
            floats = d.get(base + FLOATS_SUFFIX)
            key = (d[base], tuple(d[k]), json.dumps(floats, sort_keys=True))
            if key not in memo:
                memo[key] = parse_expression(d[base], d[k], table, funcs, floats)
            d[base] = memo[key]
    for k, v in d.items():
        if isinstance(v, dict) and k != "symbols" and not k.endswith(FLOATS_SUFFIX):
            _restore(v, table, funcs, memo)
