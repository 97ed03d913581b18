"""device_models: loading, defaults, --set overrides, validation messages, round trip, energies."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from device_models import (WALDEN_FOM, Adc, Conductance, Crossbar, Dac, Device, DeviceError, bundled_names,
                           load_device, schema_markdown)


def write(tmp_path, obj, name="dev.json"):
    p = tmp_path / name
    p.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return p


def error_of(fn, *args, **kw) -> str:
    with pytest.raises(DeviceError) as info:
        fn(*args, **kw)
    msg = str(info.value)
    assert "\n" not in msg and msg
    return msg


# --- loading -------------------------------------------------------------------------------------------
def test_bundled_names():
    assert {"rram", "pcm", "ideal"} <= set(bundled_names())


@pytest.mark.parametrize("name", ["rram", "pcm", "ideal", "rram.json"])
def test_load_bundled(name):
    dev = load_device(name)
    assert dev.name == name.removesuffix(".json")
    assert isinstance(dev.source, str) and dev.source
    assert dev.summary().startswith(dev.name)


def test_bundled_values():
    rram, pcm, ideal = load_device("rram"), load_device("pcm"), load_device("ideal")
    assert rram.conductance.levels == 64 and rram.adc.bits == 8 and rram.adc.energy is None
    assert pcm.crossbar.rows == 256 and pcm.conductance.g_max == 25e-6
    assert ideal.conductance.levels is None and ideal.programming_noise.sigma == 0
    assert ideal.read_noise.sigma == 0 and ideal.adc.bits is None and ideal.dac.bits is None


def test_load_path_defaults_and_stem(tmp_path):
    p = write(tmp_path, {"conductance": {"g_min": 0, "levels": 16}}, "mydev.json")
    for spec in (p, str(p)):
        dev = load_device(spec)
        assert dev.name == "mydev"
        assert dev.conductance.g_min == 0.0 and isinstance(dev.conductance.g_min, float)
        assert dev.conductance.g_max == 1e-4 and dev.conductance.levels == 16
        assert dev.conductance.rounding == "nearest"
        assert dev.crossbar == Crossbar() and dev.adc == Adc() and dev.dac == Dac()
        assert dev.inference_rate == 1e6 and dev.source is None


def test_local_file_wins_over_bundled(tmp_path, monkeypatch):
    write(tmp_path, {"name": "local", "adc": {"bits": 3}}, "rram.json")
    monkeypatch.chdir(tmp_path)
    assert load_device("rram.json").name == "local"
    assert load_device("rram").name == "rram"


def test_load_dict_and_device():
    dev = load_device({"name": "d", "adc": {"bits": 4}})
    assert dev.adc.bits == 4
    assert load_device(dev) is dev


def test_design_example_file(tmp_path):
    example = {"name": "rram-example",
               "conductance": {"g_min": 1e-6, "g_max": 1e-4, "levels": 64},
               "programming_noise": {"sigma": 2e-6}, "read_noise": {"sigma": 0.0},
               "crossbar": {"rows": 128, "cols": 128, "bias": "row", "read_voltage": 0.2, "t_read": 1e-8},
               "mapping": {"scale": "layer"}, "dac": {"bits": None, "energy": 0.0},
               "adc": {"bits": None, "headroom": 1.0, "energy": 0.0}}
    assert load_device(write(tmp_path, example)).name == "rram-example"


# --- overrides -----------------------------------------------------------------------------------------
def test_set_overrides_parse_types():
    dev = load_device("rram", ["adc.bits=6", "conductance.levels=null", "crossbar.bias=digital",
                               "programming_noise.sigma=2e-6", "programming_noise.clip_at_zero=false",
                               'mapping.scale="column"', "name=my chip", "inference_rate=1000"])
    assert dev.adc.bits == 6 and dev.conductance.levels is None and dev.crossbar.bias == "digital"
    assert dev.programming_noise.sigma == 2e-6 and dev.programming_noise.clip_at_zero is False
    assert dev.mapping.scale == "column" and dev.name == "my chip" and dev.inference_rate == 1000.0
    assert dev.conductance.g_max == 1e-4  # untouched fields kept


def test_dict_overrides_and_methods():
    base = load_device("rram")
    dev = load_device("rram", {"adc.bits": 6, "dac": {"bits": 4}})
    assert dev.adc.bits == 6 and dev.dac.bits == 4 and dev.adc.headroom == base.adc.headroom
    assert base.with_overrides({"adc.bits": 6}).adc.bits == 6
    assert base.with_overrides(["crossbar.rows=64"]).crossbar.rows == 64
    assert base.replace(adc__bits=5, read_noise__sigma=0).adc.bits == 5
    assert base.adc.bits == 8  # immutable
    with pytest.raises(Exception):
        base.name = "x"  # frozen


# --- validation ----------------------------------------------------------------------------------------
INVALID_SECTIONS = [
    ({"conductance": {"levels": 1}}, "conductance.levels", "integer >= 2"),
    ({"conductance": {"levels": 64.0}}, "conductance.levels", "integer"),
    ({"conductance": {"levels": True}}, "conductance.levels", "integer"),
    ({"conductance": {"g_min": -1e-6}}, "conductance.g_min", ">= 0"),
    ({"conductance": {"g_max": 1e-6}}, "conductance.g_max", "greater than"),
    ({"conductance": {"g_min": 2e-4}}, "conductance.g_max", "greater than"),
    ({"conductance": {"g_max": "1e-4"}}, "conductance.g_max", "number"),
    ({"conductance": {"rounding": "up"}}, "conductance.rounding", "one of"),
    ({"programming_noise": {"sigma": -1e-6}}, "programming_noise.sigma", ">= 0"),
    ({"programming_noise": {"sigma": True}}, "programming_noise.sigma", "number"),
    ({"programming_noise": {"sigma": "abc"}}, "programming_noise.sigma", "number"),
    ({"programming_noise": {"relative": -0.1}}, "programming_noise.relative", ">= 0"),
    ({"programming_noise": {"clip_at_zero": 1}}, "programming_noise.clip_at_zero", "true or false"),
    ({"read_noise": {"sigma": -1.0}}, "read_noise.sigma", ">= 0"),
    ({"crossbar": {"cols": 127}}, "crossbar.cols", "even"),
    ({"crossbar": {"cols": 0}}, "crossbar.cols", "even"),
    ({"crossbar": {"rows": 0}}, "crossbar.rows", ">= 1"),
    ({"crossbar": {"bias": "column"}}, "crossbar.bias", "one of"),
    ({"crossbar": {"read_voltage": 0}}, "crossbar.read_voltage", "> 0"),
    ({"crossbar": {"t_read": -1e-9}}, "crossbar.t_read", "> 0"),
    ({"mapping": {"scale": "tile"}}, "mapping.scale", "one of"),
    ({"dac": {"bits": 0}}, "dac.bits", "1..16"),
    ({"adc": {"bits": 17}}, "adc.bits", "2..16"),
    ({"adc": {"bits": 1}}, "adc.bits", "2..16"),
    ({"adc": {"headroom": 0}}, "adc.headroom", "> 0"),
    ({"adc": {"energy": -1.0}}, "adc.energy", ">= 0"),
    ({"adc": {"bitz": 8}}, "adc.bitz", "unknown key (known: bits, headroom, energy)"),
    ({"adc": 8}, "adc", "must be an object"),
    ({"adc": None}, "adc", "must be an object"),
    ({"colour": "red"}, "colour", "unknown key"),
    ({"inference_rate": 0}, "inference_rate", "> 0"),
    ({"name": ""}, "name", "non-empty string"),
    ({"name": 5}, "name", "non-empty string"),
]


@pytest.mark.parametrize("patch,field,reason", INVALID_SECTIONS)
def test_invalid_file(tmp_path, patch, field, reason):
    p = write(tmp_path, {"name": "bad", **patch}, "bad.json")
    msg = error_of(load_device, p)
    assert msg.startswith(str(p) + ":"), msg
    assert f"field '{field}'" in msg and reason in msg, msg


def test_message_format(tmp_path):
    p = write(tmp_path, {"conductance": {"levels": 1}}, "rram.json")
    assert error_of(load_device, p) == f"{p}: field 'conductance.levels': must be null or an integer >= 2 (got 1)"


@pytest.mark.parametrize("text", ['{"name": "x", "read_noise": {"sigma": NaN}}',
                                  '{"name": "x", "read_noise": {"sigma": Infinity}}',
                                  '{"name": "x", "read_noise": {"sigma": -Infinity}}'])
def test_non_finite(tmp_path, text):
    msg = error_of(load_device, write(tmp_path, text))
    assert "field 'read_noise.sigma'" in msg and "finite" in msg


@pytest.mark.parametrize("item,field", [
    ("conductance.levels=1", "conductance.levels"), ("adc.bits=true", "adc.bits"),
    ("adc.bitz=3", "adc.bitz"), ("crossbar.bias=diagonal", "crossbar.bias"),
    ("programming_noise.sigma=-1e-6", "programming_noise.sigma"), ("crossbar.cols=127", "crossbar.cols"),
    ("programming_noise.sigma=NaN", "programming_noise.sigma"), ("read_noise.sigma=abc", "read_noise.sigma"),
    ("foo=1", "foo"), ("foo.bar=1", "foo.bar"), ("name.x=1", "name.x"), ("adc.bits.x=1", "adc.bits.x"),
    ("adc=8", "adc"),
])
def test_invalid_set(item, field):
    msg = error_of(load_device, "rram", [item])
    assert msg.startswith("--set: ") and f"field '{field}'" in msg, msg


def test_set_without_equals():
    assert "KEY=VALUE" in error_of(load_device, "rram", ["adc.bits"])


def test_missing_and_unknown(tmp_path):
    msg = error_of(load_device, tmp_path / "nope.json")
    assert "nope.json" in msg and "file not found" in msg
    msg = error_of(load_device, "nosuchdevice")
    assert "nosuchdevice" in msg and all(n in msg for n in ("rram", "pcm", "ideal"))
    assert "not found" in error_of(load_device, "nosuchdevice.json")
    assert "not a regular file" in error_of(load_device, tmp_path)


def test_bad_json(tmp_path):
    msg = error_of(load_device, write(tmp_path, '{\n "name": "x",\n "adc": {"bits": 8,}\n}'))
    assert "invalid JSON at line 3" in msg
    assert "JSON object" in error_of(load_device, write(tmp_path, "[1, 2]"))
    assert "duplicate key 'adc'" in error_of(load_device, write(tmp_path, '{"adc": {}, "adc": {}}'))


def test_dict_without_name():
    msg = error_of(load_device, {"adc": {"bits": 8}})
    assert "field 'name'" in msg


def test_direct_construction_validates():
    with pytest.raises(DeviceError, match="conductance.levels"):
        Conductance(levels=1)
    with pytest.raises(DeviceError, match="field 'adc'"):
        Device(name="x", adc=Dac())
    assert Device(name="x").conductance == Conductance()


# --- serialisation / energies / docs ------------------------------------------------------------------
@pytest.mark.parametrize("name", ["rram", "pcm", "ideal"])
def test_to_dict_round_trip(name, tmp_path):
    dev = load_device(name, ["adc.bits=5", "crossbar.bias=digital"])
    d = dev.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert load_device(d) == dev
    assert load_device(write(tmp_path, d)) == dev
    assert set(d["adc"]) == {"bits", "headroom", "energy"} and d["source"] == dev.source


def test_walden_default_energy():
    assert Adc(bits=8).conversion_energy() == pytest.approx(WALDEN_FOM * 256)
    assert WALDEN_FOM == 5e-15
    assert Adc(bits=8, energy=1e-12).conversion_energy() == 1e-12
    assert Adc(bits=None).conversion_energy() == 0.0
    assert Dac(bits=None, energy=1e-13).conversion_energy() == 0.0
    assert Dac(bits=6, energy=1e-13).conversion_energy() == 1e-13
    assert load_device("rram").adc.conversion_energy() == pytest.approx(5e-15 * 2 ** 8)


def test_schema_markdown_covers_every_field():
    md = schema_markdown()
    d = load_device("rram").to_dict()
    for key, value in d.items():
        keys = [f"{key}.{k}" for k in value] if isinstance(value, dict) else [key]
        for k in keys:
            assert f"`{k}`" in md
    assert all(len(line.split(" | ")) == 5 for line in md.splitlines() if line.startswith("| `"))


def test_standalone_import():
    """device_models must not import the compiler or the passes."""
    code = ("import sys, device_models; device_models.load_device('rram'); "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('memse_compiler', 'passes', 'numpy')]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])
