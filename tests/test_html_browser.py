"""The HTML report renders in a real headless browser (skipped when none is installed)."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from memse_compiler import compile_model
from memse_compiler.html_report import write_html
from memse_compiler.report import build_report

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def _browser() -> str | None:
    return next((p for p in map(shutil.which, BROWSERS) if p), None)


def _run(browser: str, *args: str, home: Path) -> subprocess.CompletedProcess:
    cmd = [browser, "--headless", "--disable-gpu", "--no-sandbox", "--no-first-run",
           "--disable-dev-shm-usage", *args]
    env = dict(os.environ, HOME=str(home))     # a private profile: no state shared with the user's browser
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)


@pytest.fixture(scope="module")
def page(tmp_path_factory) -> Path:
    browser = _browser()
    if browser is None:
        pytest.skip("no chromium / google-chrome on PATH")
    x = np.load(EXAMPLES / "digits_inputs.npy")[:16].astype(np.float64)
    g, _ = compile_model(str(EXAMPLES / "cnn_digits.onnx"), "rram", x)
    d = tmp_path_factory.mktemp("html")
    from memse_compiler.plots import figures
    return write_html(g, build_report(g), d / "report.html", figures(g, rerun_budget_s=0.0))


def test_screenshot_is_not_blank(page, tmp_path):
    shot = tmp_path / "shot.png"
    _run(_browser(), f"--screenshot={shot}", "--window-size=1200,2000", page.resolve().as_uri(), home=tmp_path)
    assert shot.exists() and shot.stat().st_size > 5000, "the browser wrote no screenshot"
    import matplotlib.image as mpimg
    img = mpimg.imread(shot)[..., :3]
    assert img.shape[0] >= 1000 and img.shape[1] >= 1000
    assert img.std() > 0.05, "blank page"
    dark = (img.mean(axis=2) < 0.5).mean()
    assert 0.005 < dark < 0.5, f"implausible share of dark pixels {dark:.3f}"
    colour = (img.max(axis=2) - img.min(axis=2) > 0.3).mean()
    assert colour > 0.005, "no coloured plot visible"


def test_dom_has_tables_and_plots(page, tmp_path):
    res = _run(_browser(), "--dump-dom", page.resolve().as_uri(), home=tmp_path)
    dom = res.stdout
    assert "<table" in dom and "/net/net.3/Conv" in dom
    assert dom.count("<svg") >= 4
