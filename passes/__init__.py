"""Passes over the memse graph, one module per pass. Lowering: fold_batchnorm, fold_bias, calibrate,
map_conductances, tile_crossbars, place_converters. Analysis: see the analysis modules."""
from passes.calibrate import Calibrate  # noqa: F401
from passes.fold_batchnorm import FoldBatchNorm  # noqa: F401
from passes.fold_bias import FoldBiasAdd  # noqa: F401
from passes.map_conductances import MapConductances  # noqa: F401
from passes.place_converters import PlaceConverters  # noqa: F401
from passes.tile_crossbars import TileCrossbars  # noqa: F401

LOWERING = ("FoldBatchNorm", "FoldBiasAdd", "Calibrate", "MapConductances", "TileCrossbars", "PlaceConverters")
