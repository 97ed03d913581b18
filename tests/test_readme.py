"""The README's Python example runs as written; its set-up commands name files that exist."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_python_api_example_runs(monkeypatch, capsys):
    block = re.search(r"```python\n(.*?)```", README, re.S).group(1)
    monkeypatch.chdir(ROOT)
    exec(compile(block, "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "count_tiles" in out and "mse" in out


def test_setup_commands_refer_to_shipped_files():
    setup = re.search(r"## Set-up.*?```bash\n(.*?)```", README, re.S).group(1)
    assert "python -m pytest" in setup
    for path in re.findall(r"examples/\S+", setup):
        assert (ROOT / path).exists(), path
    assert "python -m pytest" in (ROOT / ".ci" / "run").read_text()


def test_supported_ops_list_is_the_registry():
    """The README's op list is every registered ONNX op (internal ones, such as MatMulSignals, excluded)."""
    from memse_compiler.ir.ops import SUPPORTED_OPS
    listed = re.search(r"\*\*Supported ONNX ops\*\*[^:]*:(.*?)\.\s+Conv/", README, re.S).group(1)
    # the op names between the list's commas, full stops and colons (a sentence introduces onnxruntime's ops)
    names = [w for w in (item.strip() for item in re.split(r"[,.:]|\band\b", listed)) if re.fullmatch(r"[A-Z]\w*", w)]
    assert sorted(set(names)) == sorted(SUPPORTED_OPS)      # Gelu: ONNX's and onnxruntime's
