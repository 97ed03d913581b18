"""memse-compiler: lower ONNX networks onto memristor crossbars and predict their noise and power.

Public API (imported lazily so that `memse_compiler.ir` stays importable from the passes):
    compile_model, Pipeline, default_pipeline, build_graph, PassContext, Pass, MemseInputError,
    tune_allocator (glibc malloc thresholds for this process; the CLI calls it)
"""
from importlib import import_module

__version__ = "0.1.0"

_API = {
    "compile_model": "memse_compiler.pipeline",
    "Pipeline": "memse_compiler.pipeline",
    "default_pipeline": "memse_compiler.pipeline",
    "lowering_passes": "memse_compiler.pipeline",
    "analysis_passes": "memse_compiler.pipeline",
    "build_graph": "memse_compiler.frontend",
    "Pass": "memse_compiler.ir.pass_base",
    "PassContext": "memse_compiler.ir.pass_base",
    "MemseInputError": "memse_compiler.ir.errors",
    "tune_allocator": "memse_compiler.allocator",
}


def __getattr__(name: str):
    if name in _API:
        return getattr(import_module(_API[name]), name)
    raise AttributeError(f"module 'memse_compiler' has no attribute {name!r}")


__all__ = sorted(_API)
