"""Inspection outputs (issue 6): graph export/import, the inspect CLI, plots, the HTML report."""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import networkx as nx
import numpy as np
import pytest
import sympy
import sympy as sp

from memse_compiler import compile_model
from memse_compiler.export import export_graph, load_graph
from memse_compiler.html_report import write_html
from memse_compiler.inspect_cli import main as inspect_main
from memse_compiler.ir.errors import MemseInputError
from memse_compiler.report import build_report

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


@pytest.fixture(autouse=True)
def _no_check_reruns(monkeypatch):
    """Closed-form curves without the (slow) full re-run check points: keeps this file fast."""
    from memse_compiler import plots
    monkeypatch.setattr(plots, "RERUN_BUDGET_S", 0.0)


@pytest.fixture(scope="module")
def cnn():
    x = np.load(EXAMPLES / "digits_inputs.npy")[:32].astype(np.float64)
    g, _ = compile_model(str(EXAMPLES / "cnn_digits.onnx"), "rram", x)
    return g


@pytest.fixture(scope="module")
def exported(cnn, tmp_path_factory):
    d = tmp_path_factory.mktemp("graphs")
    return {fmt: export_graph(cnn, d / f"cnn.{fmt}", arrays=True) for fmt in ("json", "graphml")}


def _same_expr(a, b) -> bool:
    return a == b or sp.simplify(a - b) == 0


# ---- export / load -----------------------------------------------------------------------------------
def test_every_exported_edge_is_annotated(exported):
    data = json.loads(exported["json"].read_text())
    assert data["links"], "no edges exported"
    for e in data["links"]:
        assert isinstance(e["mean_expr"], str) and isinstance(e["var_expr"], str)
        assert isinstance(e["mse"], float)
        assert {"mean_avg", "var_avg", "var_max", "mean_shape", "tensor", "shape"} <= set(e)
    assert "mean" not in data["links"][0], "full arrays belong in the side .npz"
    assert data["graph"]["device"]["name"] == "rram"


@pytest.mark.parametrize("fmt", ["json", "graphml"])
def test_round_trip(cnn, exported, fmt):
    h = load_graph(exported[fmt])
    assert isinstance(h, nx.DiGraph)
    assert set(h.nodes) == set(cnn.nodes) and set(h.edges) == set(cnn.edges)
    for u, v, d in cnn.edges(data=True):
        e = h.edges[u, v]
        for k in ("mean_expr", "var_expr"):
            assert isinstance(e[k], sp.Basic) and _same_expr(e[k], d[k]), (u, v, k)
            assert {s.name for s in e[k].free_symbols} == {s.name for s in d[k].free_symbols}
        for k in ("mse", "bias2", "variance"):
            assert e[k] == d[k]
        assert e["tensor"] == d["tensor"] and e["shape"] == d["shape"]
        np.testing.assert_array_equal(e["mean"], d["mean"])
        np.testing.assert_array_equal(e["var"], d["var"])
        assert e["var_max"] == pytest.approx(float(np.max(d["var"])))
    for n, d in cnn.nodes(data=True):
        a = h.nodes[n]
        assert a["op"] == d["op"] and a["kind"] == d["kind"]
        if d["kind"] in ("crossbar", "adc"):
            assert (a["group"], a["row_tile"], a["col_tile"]) == (d["group"], d["row_tile"], d["col_tile"])
            assert a["g_range"] == pytest.approx(float(np.mean(cnn.layers[d["layer"]].g_range)))
        if d["kind"] in ("adc", "dac"):
            assert a["bits"] == d["bits"] and a["range"] == pytest.approx(d["range"])
    assert h.graph["device"] == cnn.graph["device"].to_dict()
    out = cnn.graph["outputs"][0]
    assert h.graph["analysis"]["outputs"][out]["mse"] == cnn.graph["analysis"]["outputs"][out]["mse"]
    assert set(h.graph["layers"]) == set(cnn.layers)
    cf = cnn.graph.get("closed_form")
    if isinstance(cf, dict) and out in cf and getattr(cf[out], "expression", None) is not None:
        # the clip models' kappa_i / shrink_i come back as undefined functions of the same name and arguments
        from sympy.core.function import AppliedUndef
        plain = cf[out].expression.replace(lambda e: isinstance(e, AppliedUndef),
                                           lambda e: sympy.Function(e.func.__name__)(*e.args))
        assert h.graph["closed_form"][out]["expression"] == plain


@pytest.mark.parametrize("fmt", ["json", "graphml"])
def test_round_trip_awkward_symbols_and_floats(tmp_path, fmt):
    """Symbol names with brackets/slashes or that sympy's parser would take for constants (S, E, lambda),
    assumptions, floats of several precisions, a brief-style closed form record and nested values."""
    mu, v = sp.Symbol("mu[conv1]"), sp.Symbol("v[/net/x.0/Conv_output_0]", nonnegative=True)
    sig, G = sp.Symbol("sigma", nonnegative=True), sp.Symbol("G[/net/conv]", positive=True)
    E, S, lam, Q = sp.Symbol("E"), sp.Symbol("S"), sp.Symbol("lambda"), sp.Function("Q_L")
    e1 = sp.Float(0.30000000000000004) * mu + sp.Rational(1, 3) * S + E * lam + Q(G * mu / 3, sp.Symbol("L"))
    e2 = sp.Float(15.045065856, 6) * (sig / G) ** 2 + sp.Float("1.2345678901234567890123", 30) * v + sp.sqrt(v)
    g = nx.DiGraph(name="tiny", outputs=["y"], closed_form={"expression": e2, "terms": {"programming": e2 / 2}},
                   analysis={"outputs": {"y": {"mse": 1.5, "bias2": None}}, "layers": {"a.b": 1.0}},
                   extra={"nested": {"list": [1, 2.5, None], "flag": True}})
    g.add_node("a", op="Input", kind="input", inputs=[], outputs=["x"])
    g.add_node("b", op="Relu", kind="digital", inputs=["x"], outputs=["y"], attrs={"alpha": np.float32(0.5)})
    g.add_edge("a", "b", tensor="x", shape=(None, 3), mean_expr=e1, var_expr=e2, mse=0.25,
               mean=np.arange(6.0).reshape(2, 3), var=np.ones((2, 3)))
    h = load_graph(export_graph(g, tmp_path / f"tiny.{fmt}", arrays=True))
    e = h.edges["a", "b"]
    assert e["mean_expr"] == e1 and e["var_expr"] == e2
    assert h.graph["closed_form"]["expression"] == e2
    assert h.graph["closed_form"]["terms"]["programming"] == e2 / 2
    assert h.graph["analysis"] == {"outputs": {"y": {"mse": 1.5, "bias2": None}}, "layers": {"a.b": 1.0}}
    assert h.graph["extra"] == {"nested": {"list": [1, 2.5, None], "flag": True}}
    assert h.nodes["b"]["attrs"] == {"alpha": 0.5} and h.nodes["b"]["outputs"] == ["y"]
    np.testing.assert_array_equal(e["mean"], np.arange(6.0).reshape(2, 3))


def test_load_rejects_bad_files(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    for path in (bad, tmp_path / "missing.json", EXAMPLES / "cnn_digits.onnx"):
        with pytest.raises(ValueError, match=re.escape(path.name)):
            load_graph(path)
    with pytest.raises(ValueError):
        export_graph(nx.DiGraph(), tmp_path / "g.txt")


def test_load_never_runs_code_from_the_file(exported, tmp_path):
    data = json.loads(exported["json"].read_text())
    data["links"][0]["mean_expr"] = "__import__('os').system('touch pwned')"
    evil = tmp_path / "evil.json"
    evil.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="disallowed"):
        load_graph(evil)
    assert not (tmp_path / "pwned").exists() and not Path("pwned").exists()


# ---- inspect CLI -------------------------------------------------------------------------------------
def test_inspect_lists_sorted_by_mse(exported, capsys):
    assert inspect_main([str(exported["json"]), "--top", "5"]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.startswith("/net") or line.startswith("output:")]
    assert len(rows) == 5
    mses = [float(r[-1]) for r in rows]
    assert mses == sorted(mses, reverse=True)
    assert "output logits: mse" in out and "top-1 kept" in out          # the classifier's agreement
    from memse_compiler.cli import main as cli_main            # `memse-compile inspect ...` dispatch
    assert cli_main(["inspect", str(exported["json"]), "--top", "2"]) == 0
    assert "out_mse" in capsys.readouterr().out


def test_inspect_show_node_edge_tensor_and_filters(exported, capsys):
    path = str(exported["graphml"])
    assert inspect_main([path, "--node", "net.3/Conv/adc"]) == 0
    out = capsys.readouterr().out
    assert "node /net/net.3/Conv/adc[0,0,0]" in out and "bits" in out and "g_range" in out
    assert inspect_main([path, "--edge", "net.0/Conv/tile", "net.0/Conv/adc"]) == 0
    out = capsys.readouterr().out
    assert "mean_expr:" in out and "var_expr:" in out and "where" in out and "Contract" in out
    assert inspect_main([path, "--tensor", "logits"]) == 0
    assert "edge /net/net.7/Gemm/sum -> output:logits" in capsys.readouterr().out
    assert inspect_main([path, "--layer", "net.3/Conv", "--sort", "name"]) == 0
    out = capsys.readouterr().out
    assert "/net/net.3/Conv/dac" in out and "/net/net.0/Conv/dac" not in out
    assert inspect_main([path, "--tile", "0,0,0"]) == 0
    assert "Relu" not in capsys.readouterr().out


def test_inspect_errors_exit_2_with_one_line(exported, tmp_path, capsys):
    bad = tmp_path / "garbage.graphml"
    bad.write_text("<graphml")
    for argv in ([str(bad)], [str(tmp_path / "none.json")], [str(exported["json"]), "--node", "nope"],
                 [str(exported["json"]), "--node", "Conv"], [str(exported["json"]), "--tile", "1,2"]):
        assert inspect_main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "error" in err


# ---- plots ---------------------------------------------------------------------------------------------
def _check_files(paths):
    for p in paths:
        assert p.stat().st_size > 1000, p
        head = p.read_bytes()[:200]
        assert head.startswith(b"\x89PNG") if p.suffix == ".png" else b"<svg" in p.read_bytes()[:2000]


def test_plots_png_and_svg(cnn, tmp_path):
    from memse_compiler.plots import make_plots
    paths = make_plots(cnn, tmp_path)
    stems = {p.stem for p in paths}
    assert {"layer_mse", "error_budget", "mse_vs_sigma", "mse_vs_g", "mse_vs_levels", "agreement_vs_sigma"} <= stems
    assert sum(s.startswith("tiles_") for s in stems) == len(cnn.layers)
    assert {p.suffix for p in paths} == {".png", ".svg"} and len(paths) == 2 * len(stems)
    _check_files(paths)


def test_plots_rerun_sweeps_and_mc_points(tmp_path, monkeypatch):
    """Without a closed form the curves come from re-running the analysis; Monte-Carlo points are drawn."""
    from memse_compiler import plots
    monkeypatch.setattr(plots, "SIGMA_REL", np.array([5e-3, 5e-2]))
    monkeypatch.setattr(plots, "G_SCALE", np.array([0.3, 1.0]))
    monkeypatch.setattr(plots, "LEVELS", np.array([8, 64]))
    x = np.load(EXAMPLES / "digits_inputs.npy")[:16].astype(np.float64)
    g, _ = compile_model(str(EXAMPLES / "mlp_digits.onnx"), "rram", x)
    g.graph.pop("closed_form", None)
    sigma = g.graph["device"].programming_noise.sigma
    g.graph["montecarlo"] = {"outputs": {}, "layers": {n: 0.1 for n in g.layers},
                             "sweep": {"sigma": {"values": [sigma], "mse": [1.0], "ci95": [[0.9, 1.1]]}}}
    paths = plots.make_plots(g, tmp_path, formats=("png",))
    assert {"mse_vs_sigma", "mse_vs_g", "mse_vs_levels"} <= {p.stem for p in paths}
    mse = g.graph["sweeps"]["sigma"]["mse"]
    assert len(mse) == 2 and mse[0] < mse[1]           # more programming noise, more error
    g_mse = g.graph["sweeps"]["g_scale"]["mse"]
    assert g_mse[0] > g_mse[1]                          # larger conductance range, less error
    levels = g.graph["sweeps"]["levels"]
    assert levels["values"] == [8.0, 64.0] and levels["mse"][0] > levels["mse"][1]    # coarser levels, more error
    _check_files(paths)


# ---- HTML and the CLI extension ------------------------------------------------------------------------
def _assert_self_contained(text: str) -> None:
    assert not re.search(r"""(?:src|href|action)\s*=\s*["']?\s*(?:https?:)?//""", text, re.I)
    assert not re.search(r"url\(\s*['\"]?\s*(?:https?:)?//|@import|<link\b|<script\b[^>]*\bsrc", text, re.I)


def test_html_report_is_self_contained(cnn, tmp_path):
    path = write_html(cnn, build_report(cnn), tmp_path / "report.html")
    text = path.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>") and text.rstrip().endswith("</html>")
    _assert_self_contained(text)
    assert text.count("<svg") >= 4 and "<table" in text
    for layer in cnn.layers:
        assert layer in text
    assert "mean_expr" in text and "Closed form" in text


def test_cli_extension_writes_everything(cnn, tmp_path, capsys):
    from memse_compiler.inspection_cli import InspectionExtension
    ext, p = InspectionExtension(), argparse.ArgumentParser()
    ext.add_arguments(p)
    args = p.parse_args(["--graph", str(tmp_path / "g.json"), "--graph-arrays", "--plots", str(tmp_path / "plots"),
                         "--html", str(tmp_path / "r.html")])
    ext.configure(args, {})
    ext.after_compile(args, cnn, None)
    ext.finish(args, cnn, build_report(cnn))
    assert (tmp_path / "g.arrays.npz").stat().st_size > 0 and (tmp_path / "r.html").stat().st_size > 0
    assert len(list((tmp_path / "plots").glob("*.png"))) == len(list((tmp_path / "plots").glob("*.svg"))) >= 4
    assert load_graph(tmp_path / "g.json").number_of_edges() == cnn.number_of_edges()
    for bad in (["--graph", str(tmp_path / "g.txt")], ["--graph-arrays"], ["--html", "/no/such/dir/r.html"]):
        with pytest.raises(MemseInputError):
            ext.configure(p.parse_args(bad), {})
