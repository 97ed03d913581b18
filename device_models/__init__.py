"""Device/architecture model of a memristive crossbar accelerator: schema, loading + validation, bundled
device files (`load_device("rram")`, `"pcm"`, `"ideal"`). Standard library only; imports nothing else
from this project.
"""
from .errors import DeviceError
from .loader import apply_overrides, bundled_names, load_device, parse_set
from .schema import (WALDEN_FOM, Adc, Conductance, Converter, Crossbar, Dac, Device, Mapping,
                     ProgrammingNoise, ReadNoise, schema_markdown)

__all__ = ["Device", "Conductance", "ProgrammingNoise", "ReadNoise", "Crossbar", "Mapping", "Dac", "Adc",
           "Converter", "WALDEN_FOM", "DeviceError", "load_device", "apply_overrides", "parse_set",
           "bundled_names", "schema_markdown"]
