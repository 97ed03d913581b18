"""Bad input of every kind (DESIGN §9): exit code 2 and one line naming the culprit, never a traceback."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from memse_compiler.cli import main

from onnx_zoo import bad_models

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
CNN = str(EXAMPLES / "cnn_digits.onnx")


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_user_error(code, err, *needles):
    assert code == 2, err
    lines = [l for l in err.strip().splitlines() if l]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], (n, lines[0])


@pytest.fixture(scope="module")
def bad(tmp_path_factory):
    return bad_models(tmp_path_factory.mktemp("bad"))


@pytest.mark.parametrize("kind,needles", [
    ("truncated", ["truncated.onnx"]), ("not_onnx", ["not_onnx.onnx"]), ("empty", ["empty.onnx"]),
    ("unsupported_op", ["TopK", "weird_node"]), ("dynamic_spatial", ["dynamic_spatial.onnx"]),
    ("nan_weight", ["fc.weight"]), ("inf_weight", ["fc.weight"]), ("mismatched_batches", ["mismatched_batches.onnx", "'x1' 2, 'x2' 3"]),
    ("no_weighted_ops", ["no_weighted_ops.onnx"]), ("maxpool_ceil_past_end", ["ceil_pool", "ceil_mode"]),
    ("unbatched_vector", ["fc_vector", "1-D", "batch axis"]), ("scatter_add", ["accumulate", "reduction 'add'"]),
    ("gather_by_data", ["data_indexed", "must be constants"]), ("scatternd_batch", ["batch_write", "not the batch"]),
    ("mvn_default_axes", ["mvn_batch", "batch axis"])])
def test_bad_models(bad, capsys, kind, needles):
    code, out, err = run_cli(capsys, bad[kind], "--device", "rram")
    assert_user_error(code, err, *needles)


def test_missing_model(capsys, tmp_path):
    code, _, err = run_cli(capsys, tmp_path / "nope.onnx", "--device", "rram")
    assert_user_error(code, err, "nope.onnx")


@pytest.mark.parametrize("array,needle", [
    (np.zeros((4, 1, 8, 7), np.float32), "shape"),
    (np.zeros((4, 64), np.float32), "shape"),
    (np.zeros((4, 1, 8, 8), np.int64), "dtype"),
    (np.full((4, 1, 8, 8), np.nan, np.float32), "NaN")])
def test_bad_input_files(capsys, tmp_path, array, needle):
    path = tmp_path / "x.npy"
    np.save(path, array)
    code, _, err = run_cli(capsys, CNN, "--device", "rram", "--inputs", path)
    assert_user_error(code, err, "x.npy", needle)


def test_input_file_not_numpy(capsys, tmp_path):
    path = tmp_path / "x.npy"
    path.write_text("hello")
    code, _, err = run_cli(capsys, CNN, "--device", "rram", "--inputs", path)
    assert_user_error(code, err, "x.npy")


@pytest.mark.parametrize("override,field", [
    ("adc.bitz=3", "adc.bitz"), ("programming_noise.sigma=-1e-6", "programming_noise.sigma"),
    ("conductance.levels=1", "conductance.levels"), ("conductance.g_max=1e-7", "conductance.g_max"),
    ("adc.bits=0", "adc.bits"), ("dac.bits=17", "dac.bits"), ("crossbar.cols=7", "crossbar.cols"),
    ("crossbar.bias=sideways", "crossbar.bias"), ("read_noise.sigma=abc", "read_noise.sigma")])
def test_bad_device_overrides(capsys, override, field):
    code, _, err = run_cli(capsys, CNN, "--device", "rram", "--set", override)
    assert_user_error(code, err, field)


@pytest.mark.parametrize("content,needle", [
    ({"name": "x", "conductance": {"g_min": 1e-6, "g_max": 1e-4, "levels": 2.5}}, "conductance.levels"),
    ({"name": "x", "programming_noise": {"sigma": "big"}}, "programming_noise.sigma"),
    ({"name": "x", "crossbar": {"rows": 0}}, "crossbar.rows"),
    ({"name": "x", "mapping": {"scale": "tile"}}, "mapping.scale"),
    ({"name": "x", "weird": 1}, "weird")])
def test_bad_device_files(capsys, tmp_path, content, needle):
    path = tmp_path / "dev.json"
    path.write_text(json.dumps(content))
    code, _, err = run_cli(capsys, CNN, "--device", path)
    assert_user_error(code, err, "dev.json", needle)


def test_device_file_not_json_and_unknown_name(capsys, tmp_path):
    path = tmp_path / "dev.json"
    path.write_text("{not json")
    assert_user_error(*run_cli(capsys, CNN, "--device", path)[::2], "dev.json")
    assert_user_error(*run_cli(capsys, CNN, "--device", "memristor9000")[::2], "memristor9000")


def test_console_script_exit_code(tmp_path):
    """The installed entry point, in a real process: exit status 2, no traceback on stderr."""
    proc = subprocess.run([sys.executable, "-m", "memse_compiler.cli", CNN, "--device", "rram",
                           "--set", "adc.bits=99"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "adc.bits" in proc.stderr


def test_tune_allocator_sets_glibc_thresholds_once():
    """The CLI's allocator tuning: done on glibc Linux (this CI), idempotent, and the analysis numbers do not
    depend on it (same MSE before and after, bitwise)."""
    from device_models import load_device
    from memse_compiler import compile_model, tune_allocator
    x = np.load(EXAMPLES / "digits_inputs.npy")[:8]
    before = compile_model(str(EXAMPLES / "cnn_digits.onnx"), load_device("rram"), x)[0].graph["analysis"]
    done = tune_allocator()
    assert done is sys.platform.startswith("linux")
    assert tune_allocator() is done
    after = compile_model(str(EXAMPLES / "cnn_digits.onnx"), load_device("rram"), x)[0].graph["analysis"]
    assert after["outputs"]["logits"]["mse"] == before["outputs"]["logits"]["mse"]


def test_a_signed_one_bit_dac_names_the_layer(capsys, tmp_path):
    """Inputs with negative values make the first layer's DAC signed: 1 bit would leave only the code 0."""
    x = tmp_path / "x.npy"
    np.save(x, np.load(EXAMPLES / "digits_inputs.npy")[:16] - 0.5)
    code, _, err = run_cli(capsys, CNN, "--device", "rram", "--inputs", str(x), "--set", "dac.bits=1")
    assert_user_error(code, err, "its input takes negative values", "dac.bits >= 2")
