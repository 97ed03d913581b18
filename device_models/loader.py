"""Loading device descriptions: JSON files, bundled devices by name, dicts; dotted-path overrides (--set)."""
from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any, Union

from .errors import DeviceError, show
from .schema import SECTIONS, TOP_LEVEL_KEYS, Device

DeviceSpec = Union[str, "os.PathLike[str]", Mapping[str, Any], Device]
Overrides = Union[Sequence[str], Mapping[str, Any], None]


def bundled_names() -> list[str]:
    """Names of the bundled device files (usable as `--device NAME`)."""
    folder = resources.files(__package__).joinpath("bundled")
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".json"))


def load_device(spec: DeviceSpec, overrides: Overrides = None) -> Device:
    """Load and validate a device.

    `spec`: a path to a JSON file, a bundled name ("rram", "pcm", "ideal"; "rram.json" also works), a
    dict, or a Device. `overrides`: ["adc.bits=6", ...] (CLI `--set`; values parsed as JSON, else kept as
    a bare string) or {"adc.bits": 6}. Raises DeviceError with one line naming the source and the field.
    """
    if isinstance(spec, Device):
        device = spec
    elif isinstance(spec, Mapping):
        device = Device.from_dict(spec, source="device dict")
    elif isinstance(spec, (str, os.PathLike)):
        data, source = _read_spec(spec)
        device = Device.from_dict(data, source=source)
    else:
        raise DeviceError(f"device must be a file path, a bundled name or a dict (got {type(spec).__name__})")
    if overrides:
        device = apply_overrides(device, overrides)
    return device


def _read_spec(spec: str | os.PathLike) -> tuple[dict[str, Any], str]:
    """Resolve a path or bundled name to (raw dict with a name, source label)."""
    path = Path(spec)
    text_spec = os.fspath(spec)
    if isinstance(spec, str) and not path.is_file():
        stem = text_spec[:-5] if text_spec.endswith(".json") else text_spec
        if os.sep not in text_spec and "/" not in text_spec:
            if stem in bundled_names():
                source = f"{stem} (bundled)"
                text = resources.files(__package__).joinpath("bundled", f"{stem}.json").read_text("utf-8")
                return _parse(text, source, stem), source
            if not text_spec.endswith(".json"):
                raise DeviceError(f"unknown device '{text_spec}': not a file and not a bundled device "
                                  f"(bundled: {', '.join(bundled_names())})")
    source = text_spec
    if not path.exists():
        raise DeviceError(f"file not found (bundled devices: {', '.join(bundled_names())})", source=source)
    if not path.is_file():
        raise DeviceError("not a regular file", source=source)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise DeviceError("not a UTF-8 text file", source=source) from None
    except OSError as err:
        raise DeviceError(f"cannot read file ({err.strerror})", source=source) from None
    return _parse(text, source, path.stem), source


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise DeviceError(f"duplicate key '{key}'")
        out[key] = value
    return out


def _parse(text: str, source: str, default_name: str) -> dict[str, Any]:
    """Parse JSON text; the top level must be an object; a missing name defaults to `default_name`."""
    try:
        data = json.loads(text, object_pairs_hook=_no_duplicates)
    except json.JSONDecodeError as err:
        raise DeviceError(f"invalid JSON at line {err.lineno}, column {err.colno}: {err.msg}",
                          source=source) from None
    except DeviceError as err:
        raise err.located(source) from None
    if not isinstance(data, dict):
        raise DeviceError(f"top level must be a JSON object (got {type(data).__name__})", source=source)
    data.setdefault("name", default_name)
    return data


def parse_set(items: Sequence[str], source: str = "--set") -> dict[str, Any]:
    """["adc.bits=6", "crossbar.bias=digital"] -> {"adc.bits": 6, "crossbar.bias": "digital"}.

    A value is parsed as JSON when it is valid JSON (6, 2e-6, null, true, "row"), else kept as a string.
    """
    out: dict[str, Any] = {}
    for item in items:
        if not isinstance(item, str) or "=" not in item or not item.split("=", 1)[0].strip():
            raise DeviceError(f"expected KEY=VALUE, e.g. adc.bits=6 (got {show(item)})", source=source)
        key, raw = item.split("=", 1)
        raw = raw.strip()
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        out[key.strip()] = value
    return out


def apply_overrides(device: Device, overrides: Overrides, source: str | None = None) -> Device:
    """New validated Device with dotted-path overrides applied (list of "k=v" strings, or a dict).

    A section key with an object value ("adc": {"bits": 6}) updates the given fields of that section.
    """
    if not overrides:
        return device
    if isinstance(overrides, Mapping):
        source = source or "overrides"
        items = dict(overrides)
    elif isinstance(overrides, (str, bytes)):
        source = source or "--set"
        items = parse_set([overrides], source)
    else:
        source = source or "--set"
        items = parse_set(list(overrides), source)
    data = device.to_dict()
    for key, value in items.items():
        try:
            _set_path(data, str(key), value)
        except DeviceError as err:
            raise err.located(source) from None
    return Device.from_dict(data, source=source)


def _set_path(data: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    if any(not p for p in parts):
        raise DeviceError("malformed key (expected e.g. adc.bits)", key)
    head = parts[0]
    if head not in TOP_LEVEL_KEYS:
        raise DeviceError(f"unknown key (known: {', '.join(TOP_LEVEL_KEYS)})", head if len(parts) == 1 else key)
    if len(parts) == 1:
        if head in SECTIONS and isinstance(value, Mapping):
            data[head] = {**data[head], **value}   # unknown keys are reported by from_dict
        else:
            data[head] = value
        return
    if head not in SECTIONS:
        raise DeviceError(f"'{head}' is not a section (sections: {', '.join(SECTIONS)})", key)
    if len(parts) > 2:
        raise DeviceError("too deep (expected SECTION.FIELD)", key)
    data[head] = {**data[head], parts[1]: value}
