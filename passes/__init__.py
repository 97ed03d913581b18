"""Passes over the memse graph, one module per pass. Lowering: fold_batchnorm, fold_bias, calibrate,
map_conductances, tile_crossbars, place_converters. Analysis: see the analysis modules."""
from passes.calibrate import Calibrate  # noqa: F401
from passes.fold_batchnorm import FoldBatchNorm  # noqa: F401
from passes.fold_bias import FoldBiasAdd  # noqa: F401
from passes.map_conductances import MapConductances  # noqa: F401
from passes.place_converters import PlaceConverters  # noqa: F401
from passes.tile_crossbars import TileCrossbars  # noqa: F401

LOWERING = ("FoldBatchNorm", "FoldBiasAdd", "Calibrate", "MapConductances", "TileCrossbars", "PlaceConverters")
from passes.agreement import Top1Agreement  # noqa: F401,E402
from passes.closed_form import ClosedFormPass  # noqa: F401,E402
from passes.moments import EvaluateMoments  # noqa: F401,E402
from passes.power import PowerPass  # noqa: F401,E402
from passes.sensitivity import Sensitivity  # noqa: F401,E402
from passes.symbolic import SymbolicMoments  # noqa: F401,E402

ANALYSIS = ("SymbolicMoments", "EvaluateMoments", "Sensitivity", "Top1Agreement", "ClosedFormPass", "PowerPass")


def analysis_pass_list() -> list:
    """Fresh instances of the default analysis passes, in order."""
    return [SymbolicMoments(), EvaluateMoments(), Sensitivity(), Top1Agreement(), ClosedFormPass(), PowerPass()]
