"""CLI extension of `memse-compile` for inspection outputs:

    --graph PATH       annotated graph (.json node-link or .graphml), see memse_compiler.export
    --graph-arrays     also the full per-edge mean/var arrays in <stem>.arrays.npz next to it
    --plots DIR        PNG + SVG figures (memse_compiler.plots)
    --html PATH        one self-contained HTML report (memse_compiler.html_report)

Paths are checked before compiling (bad suffix, missing directory: exit 2 with one line).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from memse_compiler.cli import Extension
from memse_compiler.ir.errors import MemseInputError

GRAPH_SUFFIXES = (".json", ".graphml")


def _parent_exists(path: str, flag: str) -> None:
    parent = Path(path).expanduser().resolve().parent
    if not parent.is_dir():
        raise MemseInputError(f"{flag} {path}: directory {parent} does not exist")


class InspectionExtension(Extension):
    """--graph / --graph-arrays / --plots / --html."""

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        grp = p.add_argument_group("inspection outputs")
        grp.add_argument("--graph", metavar="PATH",
                         help="write the annotated graph (.json node-link or .graphml; expressions as strings)")
        grp.add_argument("--graph-arrays", action="store_true",
                         help="with --graph: also write the full per-edge mean/var arrays to <stem>.arrays.npz")
        grp.add_argument("--plots", metavar="DIR", help="write PNG and SVG figures to this directory")
        grp.add_argument("--html", metavar="PATH", help="write a self-contained HTML report")

    def configure(self, args, options: dict) -> None:
        graph = getattr(args, "graph", None)
        if graph is not None:
            if Path(graph).suffix.lower() not in GRAPH_SUFFIXES:
                raise MemseInputError(f"--graph {graph}: the format is chosen by the suffix, .json or .graphml")
            _parent_exists(graph, "--graph")
        elif getattr(args, "graph_arrays", False):
            raise MemseInputError("--graph-arrays needs --graph PATH")
        if getattr(args, "html", None):
            _parent_exists(args.html, "--html")
        plots = getattr(args, "plots", None)
        if plots is not None and Path(plots).exists() and not Path(plots).is_dir():
            raise MemseInputError(f"--plots {plots}: exists and is not a directory")

    def after_compile(self, args, g, ctx) -> None:
        pass

    def finish(self, args, g, report: dict) -> None:
        plots, page, graph = getattr(args, "plots", None), getattr(args, "html", None), getattr(args, "graph", None)
        figs = None
        if plots or page:
            from memse_compiler.plots import figures
            figs = figures(g)
        if plots:
            out = Path(plots)
            out.mkdir(parents=True, exist_ok=True)
            n = 0
            for stem, fig in figs.items():
                for fmt in ("png", "svg"):
                    fig.savefig(out / f"{stem}.{fmt}", dpi=120 if fmt == "png" else None)
                    n += 1
            print(f"{n} plots written to {out}", file=sys.stderr)
        if page:
            from memse_compiler.html_report import write_html
            write_html(g, report, page, figs)
            print(f"HTML report written to {page}", file=sys.stderr)
        if graph:      # last: it also records the sweeps the plots computed
            from memse_compiler.export import arrays_path, export_graph
            export_graph(g, graph, arrays=getattr(args, "graph_arrays", False))
            extra = f" (arrays in {arrays_path(graph)})" if getattr(args, "graph_arrays", False) else ""
            print(f"annotated graph written to {graph}{extra}", file=sys.stderr)
