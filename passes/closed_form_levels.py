"""The closed form's levels direction (passes/closed_form.py): how the output's bias changes when every weight
is rounded to another number of conductance levels.

Rounding a weight to its nearest level is deterministic (DESIGN §4.3), so the change is not a uniform noise
Delta^2/12 per weight: the rounding errors of a layer add up through the network as one vector, which adds to
the other mean shifts of the output (clipping's shrink, the nonlinearities' noise-induced shift) as vectors.
With the uniform model the form was off by up to +27 % at a quarter of the levels, and the MLP's full MSE is
even lower at 32 levels than at 64. Here the noiseless chip is run at the other number of levels (its
weights re-rounded, everything else as compiled) and its output's change is added to the output's bias at the
compiled point:

    bias^2(L) - bias^2(L0) = mean((b0 + y(L) - y(L0))^2) - mean(b0^2)

with b0 the analysis' mean minus the reference, and y(L) the noiseless chip's output with L levels: the new
rounding's effect on the mean, the noise's own shift kept as at the compiled point. The chip runs with ideal
converters: a noiseless ADC rounds each partial sum deterministically, a jitter that the noisy chip, dithered
by its noise, does not see (with 6-bit ADC and DAC the digits models' levels points were 18 % off on average
with converters in the runs, 0.4-1.8 % without). One forward run of the noiseless chip per number of levels
(cached): milliseconds on the digits models, so the form costs that once per new L, and stays a microsecond
evaluation otherwise.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from memse_compiler.ir import MemseGraph
from memse_compiler.ir.crossbar import CrossbarLayer
from memse_compiler.ir.feeds import reference_feed
from memse_compiler.ir.interpret import run as interpret
from passes.map_conductances import pair_conductances


def levels_count(n) -> int | None:
    """A number of levels as given to the closed form (an int, a float or sympy number, None or infinity for
    continuous conductances) -> int, or None for continuous."""
    return None if n is None or not np.isfinite(float(n)) else int(round(float(n)))


def weights_at_levels(layer: CrossbarLayer, levels: int | None, rounding: str) -> np.ndarray:
    """(G, O, Jb) effective weight of the noiseless chip with `levels` conductance levels (None: continuous), the
    layer's own G and scale groups, mapped as passes/map_conductances.py maps them."""
    return layer.weight_from_conductance(*pair_conductances(layer, levels, rounding))


@dataclass
class LevelsShift:
    """Change of an output's bias^2 with the number of conductance levels (see the module docstring); called with
    L (None: continuous conductances), 0 at the compiled levels. Holds the lowered graph, whose evaluation
    inputs and digital units the chip runs need."""
    g: MemseGraph = field(repr=False)
    output: str
    levels: int | None                                   # as compiled
    rounding: str
    bias: np.ndarray = field(repr=False)                 # analysis mean - reference at the compiled point
    at_point: np.ndarray = field(repr=False, default=None)   # noiseless chip output at the compiled levels
    _cache: dict = field(repr=False, default_factory=dict)

    @classmethod
    def of_graph(cls, g: MemseGraph, output: str, device) -> "LevelsShift":
        bias = g.graph["moments"][output][0] - g.graph["reference"][output]
        return cls(g, output, device.conductance.levels, device.conductance.rounding, bias)

    def chip_output(self, levels: int | None, compiled: bool = False, converters: bool = False) -> np.ndarray:
        """The noiseless chip's output on the evaluation inputs with `levels` levels (compiled: as mapped), with
        ideal converters unless `converters`."""
        matrices = None if compiled else {name: weights_at_levels(layer, levels, self.rounding)
                                          for name, layer in self.g.layers.items()}
        return interpret(self.g, reference_feed(self.g), hardware=True, matrices=matrices, converters=converters)[self.output]

    def __call__(self, levels: int | None) -> float:
        levels = levels_count(levels)
        if levels == self.levels:
            return 0.0
        if levels not in self._cache:
            if self.at_point is None:        # run on the first call: a compile that never asks pays nothing
                self.at_point = self.chip_output(self.levels, compiled=True)
            moved = self.bias + (self.chip_output(levels) - self.at_point)
            self._cache[levels] = float(np.mean(moved ** 2) - np.mean(self.bias ** 2))
        return self._cache[levels]
