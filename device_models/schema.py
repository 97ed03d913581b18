"""Device/architecture schema: frozen, self-validating dataclasses (SI units).

Every field carries metadata (kind, constraint, unit, meaning). The same metadata drives validation
(`__post_init__`), error messages and `schema_markdown()`, so the documentation cannot drift from the code.
This module imports only the standard library.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field, fields
from collections.abc import Mapping as _Map, Sequence
from typing import Any, ClassVar, Union

from .errors import DeviceError, show

# Walden figure of merit used when `adc.energy` is null: energy per conversion = WALDEN_FOM * 2**bits.
# 5 fJ per conversion step is a typical mid-range SAR ADC value (Murmann, "ADC Performance Survey").
WALDEN_FOM = 5e-15  # J / conversion-step


def _field(default: Any, kind: str, doc: str, *, nullable: bool = False, ge: float | None = None,
           gt: float | None = None, le: float | None = None, choices: tuple[str, ...] = (),
           even: bool = False, gt_field: str | None = None, unit: str = "") -> Any:
    """A dataclass field with validation/documentation metadata."""
    meta = dict(kind=kind, doc=doc, nullable=nullable, ge=ge, gt=gt, le=le, choices=choices,
                even=even, gt_field=gt_field, unit=unit)
    return field(default=default, metadata=meta)


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e6 else f"{x:g}"


def _describe(meta: _Map[str, Any]) -> str:
    """Constraint as a phrase: 'an integer >= 2', 'null or an integer in 1..16', ..."""
    kind = meta["kind"]
    if kind == "enum":
        text = "one of " + ", ".join(f'"{c}"' for c in meta["choices"])
    elif kind == "bool":
        text = "true or false"
    elif kind == "str":
        text = "a non-empty string"
    else:
        noun = "an even integer" if meta["even"] else ("an integer" if kind == "int" else "a number")
        lo, hi = meta["ge"], meta["le"]
        if lo is not None and hi is not None:
            text = f"{noun} in {_fmt(lo)}..{_fmt(hi)}"
        elif meta["gt_field"]:
            text = f"{noun} > {meta['gt_field']}"
        elif meta["gt"] is not None:
            text = f"{noun} > {_fmt(meta['gt'])}"
        elif lo is not None:
            text = f"{noun} >= {_fmt(lo)}"
        else:
            text = noun
    return ("null or " + text) if meta["nullable"] else text


def _check(path: str, value: Any, meta: _Map[str, Any]) -> Any:
    """Validate one value against its field metadata; return it normalised (ints -> float for numbers)."""
    bad = DeviceError(f"must be {_describe(meta)} (got {show(value)})", path)
    kind = meta["kind"]
    if value is None:
        if meta["nullable"]:
            return None
        raise bad
    if kind == "bool":
        if not isinstance(value, bool):
            raise bad
        return value
    if kind in ("enum", "str"):
        if not isinstance(value, str) or not value or (kind == "enum" and value not in meta["choices"]):
            raise bad
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise bad
    if kind == "int":
        if not isinstance(value, int):
            raise bad
    else:
        if not math.isfinite(value):
            raise DeviceError(f"must be a finite number (got {show(value)})", path)
        value = float(value)
    if ((meta["ge"] is not None and value < meta["ge"]) or (meta["gt"] is not None and value <= meta["gt"])
            or (meta["le"] is not None and value > meta["le"]) or (meta["even"] and value % 2)):
        raise bad
    return value


class _Section:
    """Mixin: validates and normalises every metadata-carrying field after construction."""
    SECTION: ClassVar[str] = ""

    def __post_init__(self) -> None:
        prefix = f"{self.SECTION}." if self.SECTION else ""
        for f in fields(self):  # type: ignore[arg-type]
            if "kind" in f.metadata and f.metadata["kind"] != "section":
                value = _check(prefix + f.name, getattr(self, f.name), f.metadata)
                object.__setattr__(self, f.name, value)
        for f in fields(self):  # type: ignore[arg-type]
            other = f.metadata.get("gt_field")
            if other and getattr(self, f.name) <= getattr(self, other):
                raise DeviceError(f"must be greater than {prefix}{other} "
                                  f"(got {show(getattr(self, f.name))} <= {show(getattr(self, other))})",
                                  prefix + f.name)


@dataclass(frozen=True)
class Conductance(_Section):
    """Programmable conductance window and its quantization."""
    SECTION: ClassVar[str] = "conductance"
    g_min: float = _field(1e-6, "float", "lowest programmable conductance (both devices of a pair)",
                          ge=0.0, unit="S")
    g_max: float = _field(1e-4, "float", "highest programmable conductance; default range G = g_max - g_min",
                          gt_field="g_min", unit="S")
    levels: Union[int, None] = _field(64, "int", "evenly spaced levels on [g_min, g_min + G]; null = "
                                      "continuous (no quantization)", nullable=True, ge=2)
    rounding: str = _field("nearest", "enum", "target rounding: nearest level, or floor (MemSE authors' "
                           "model)", choices=("nearest", "floor"))


@dataclass(frozen=True)
class ProgrammingNoise(_Section):
    """Per-device write noise, drawn once per chip: std = sqrt(sigma^2 + (relative * G_target)^2)."""
    SECTION: ClassVar[str] = "programming_noise"
    sigma: float = _field(2e-6, "float", "state-independent std of the programmed conductance", ge=0.0,
                          unit="S")
    relative: float = _field(0.0, "float", "state-dependent std as a fraction of the target conductance",
                             ge=0.0)
    clip_at_zero: bool = _field(True, "bool", "clip programmed conductances at 0 (MemSE authors' analysis: "
                                "false)")


@dataclass(frozen=True)
class ReadNoise(_Section):
    """Per-read conductance fluctuation, fresh for every MVM."""
    SECTION: ClassVar[str] = "read_noise"
    sigma: float = _field(0.0, "float", "std of the conductance seen by one read", ge=0.0, unit="S")


@dataclass(frozen=True)
class Crossbar(_Section):
    """Array geometry and read conditions. A differential pair uses two columns."""
    SECTION: ClassVar[str] = "crossbar"
    rows: int = _field(128, "int", "rows (inputs) per tile, bias row included", ge=1)
    cols: int = _field(128, "int", "columns per tile; a tile holds rows x cols/2 weights", ge=2, even=True)
    bias: str = _field("row", "enum", "bias on an extra crossbar row driven by 1 (noisy like a weight), or "
                       "added exactly after the ADC", choices=("row", "digital"))
    read_voltage: float = _field(0.2, "float", "read voltage for a full-scale input", gt=0.0, unit="V")
    t_read: float = _field(1e-8, "float", "read (integration) time per MVM", gt=0.0, unit="s")


@dataclass(frozen=True)
class Mapping(_Section):
    """Weight-to-conductance scale groups."""
    SECTION: ClassVar[str] = "mapping"
    scale: str = _field("layer", "enum", "one Wmax per op (layer) or per output (column)",
                        choices=("layer", "column"))


@dataclass(frozen=True)
class Dac(_Section):
    """Input digital-to-analog converter (one per crossbar input)."""
    SECTION: ClassVar[str] = "dac"
    bits: Union[int, None] = _field(None, "int", "resolution; null = ideal (no quantization)",
                                    nullable=True, ge=1, le=16)
    energy: float = _field(0.0, "float", "energy per conversion", ge=0.0, unit="J")

    def conversion_energy(self) -> float:
        """Energy per conversion in joules (0 for an ideal converter)."""
        return 0.0 if self.bits is None else self.energy


@dataclass(frozen=True)
class Adc(_Section):
    """Output analog-to-digital converter (one conversion per output per row tile)."""
    SECTION: ClassVar[str] = "adc"
    bits: Union[int, None] = _field(None, "int", "resolution (signed codes, so at least 2 bits: 1 bit leaves only "
                                    "the code 0); null = ideal (no quantization)", nullable=True, ge=2, le=16)
    headroom: float = _field(1.0, "float", "full-scale range = headroom * max|partial sum| of the tile",
                             gt=0.0)
    energy: Union[float, None] = _field(None, "float", f"energy per conversion; null = Walden default "
                                        f"{WALDEN_FOM:g} J * 2**bits", nullable=True, ge=0.0, unit="J")

    def conversion_energy(self) -> float:
        """Energy per conversion in joules: `energy`, else WALDEN_FOM * 2**bits; 0 for an ideal ADC."""
        if self.bits is None:
            return 0.0
        return self.energy if self.energy is not None else WALDEN_FOM * 2 ** self.bits


Converter = Union[Dac, Adc]

SECTIONS: dict[str, type] = {"conductance": Conductance, "programming_noise": ProgrammingNoise,
                             "read_noise": ReadNoise, "crossbar": Crossbar, "mapping": Mapping,
                             "dac": Dac, "adc": Adc}
TOP_LEVEL_KEYS = ("name", "source", *SECTIONS, "inference_rate")


def _section(cls: type) -> Any:
    return field(default_factory=cls, metadata=dict(kind="section", cls=cls))


@dataclass(frozen=True)
class Device(_Section):
    """A memristive crossbar accelerator: device physics + array + converters. Immutable and validated."""
    name: str = _field(None, "str", "device name (default for a file: its stem)")
    conductance: Conductance = _section(Conductance)
    programming_noise: ProgrammingNoise = _section(ProgrammingNoise)
    read_noise: ReadNoise = _section(ReadNoise)
    crossbar: Crossbar = _section(Crossbar)
    mapping: Mapping = _section(Mapping)
    dac: Dac = _section(Dac)
    adc: Adc = _section(Adc)
    inference_rate: float = _field(1e6, "float", "inferences per second (energy -> power)", gt=0.0,
                                   unit="1/s")
    source: Union[str, None] = _field(None, "str", "free-text provenance, e.g. a literature reference",
                                      nullable=True)

    def __post_init__(self) -> None:
        super().__post_init__()
        for f in fields(self):
            cls = f.metadata.get("cls")
            if cls is not None and not isinstance(getattr(self, f.name), cls):
                raise DeviceError(f"must be a {cls.__name__} (got {type(getattr(self, f.name)).__name__})",
                                  f.name)

    # --- construction / serialisation -------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: _Map[str, Any], source: str | None = None) -> "Device":
        """Build from a JSON-like dict (missing fields take defaults); errors name `source` and the field."""
        try:
            if not isinstance(data, _Map):
                raise DeviceError(f"device description must be a JSON object (got {type(data).__name__})")
            _unknown(data, TOP_LEVEL_KEYS, "")
            if "name" not in data:
                raise DeviceError("required (a non-empty string)", "name")
            kwargs: dict[str, Any] = {}
            for key, value in data.items():
                if key in SECTIONS:
                    if not isinstance(value, _Map):
                        raise DeviceError(f"must be an object (got {show(value)})", key)
                    sec = SECTIONS[key]
                    _unknown(value, [f.name for f in fields(sec)], key + ".")
                    kwargs[key] = sec(**value)
                else:
                    kwargs[key] = value
            return cls(**kwargs)
        except DeviceError as err:
            raise err.located(source) if source else err

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready nested dict with every resolved field (round-trips through `from_dict`)."""
        out: dict[str, Any] = {"name": self.name, "source": self.source}
        for key in SECTIONS:
            out[key] = dataclasses.asdict(getattr(self, key))
        out["inference_rate"] = self.inference_rate
        return out

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def with_overrides(self, overrides: _Map[str, Any] | Sequence[str], source: str | None = None) -> "Device":
        """New validated Device with dotted-path overrides: {"adc.bits": 6} or ["adc.bits=6", ...]."""
        from .loader import apply_overrides  # same package; loader builds on this module
        return apply_overrides(self, overrides, source)

    def replace(self, **overrides: Any) -> "Device":
        """`device.replace(adc__bits=6, name="x")`: like with_overrides, '__' standing for '.'."""
        return self.with_overrides({k.replace("__", "."): v for k, v in overrides.items()},
                                   source="replace()")

    def summary(self) -> str:
        """One-line human description."""
        c, pn, xb = self.conductance, self.programming_noise, self.crossbar
        prog = f"{pn.sigma:.3g} S" + (f" + {pn.relative:.3g}*G" if pn.relative else "")
        levels = f"{c.levels} levels" if c.levels is not None else "continuous"
        dac = f"{self.dac.bits}b" if self.dac.bits is not None else "ideal"
        adc = f"{self.adc.bits}b" if self.adc.bits is not None else "ideal"
        return (f"{self.name}: G [{c.g_min:.3g}, {c.g_max:.3g}] S, {levels}, prog sigma {prog}, "
                f"read sigma {self.read_noise.sigma:.3g} S, {xb.rows}x{xb.cols} crossbar (bias {xb.bias}), "
                f"scale {self.mapping.scale}, DAC {dac}, ADC {adc}")


def _unknown(data: _Map[str, Any], known: Sequence[str], prefix: str) -> None:
    for key in data:
        if key not in known:
            raise DeviceError(f"unknown key (known: {', '.join(known)})", f"{prefix}{key}")


def schema_markdown() -> str:
    """Markdown table of every device-file field: type, default, constraint, meaning (from the metadata)."""
    rows = ["| field | type | default | constraint | meaning |", "|---|---|---|---|---|"]

    def add(path: str, meta: _Map[str, Any], default: Any) -> None:
        typ = {"float": "number", "int": "integer", "bool": "boolean", "enum": "string", "str": "string"}
        typ_s = typ[meta["kind"]] + (" \\| null" if meta["nullable"] else "")
        if meta["unit"]:
            typ_s += f" ({meta['unit']})"
        dflt = "required (file: its stem)" if path == "name" else f"`{json.dumps(default)}`"
        doc = meta["doc"].replace("|", "\\|")  # keep the table intact
        rows.append(f"| `{path}` | {typ_s} | {dflt} | {_describe(meta)} | {doc} |")

    for f in fields(Device):
        if f.metadata["kind"] == "section":
            for sf in fields(f.metadata["cls"]):
                add(f"{f.name}.{sf.name}", sf.metadata, sf.default)
        else:
            add(f.name, f.metadata, f.default)
    notes = [
        "",
        "Units are SI (siemens, volts, seconds, joules). Unknown keys, wrong types (a boolean is not a number;",
        "an integer is accepted where a number is expected), NaN/infinity and out-of-range values are errors.",
        f"`adc.energy = null` uses the Walden figure of merit: {WALDEN_FOM:g} J per conversion step, i.e.",
        "`5e-15 * 2**bits` J per conversion. An ideal converter (`bits = null`) costs no energy.",
    ]
    return "\n".join(rows + notes) + "\n"
