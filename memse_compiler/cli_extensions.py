"""The CLI features beyond lowering, each an `Extension` (memse_compiler/cli.py) registered here."""
from __future__ import annotations

import argparse
import sys

from memse_compiler.cli import EXTENSIONS, Extension


class AnalysisExtension(Extension):
    """--mode and --explain (closed form and its validity)."""

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        from passes.moments import DEFAULT_MODE, MODES
        p.add_argument("--mode", choices=list(MODES), default=DEFAULT_MODE,
                       help="analysis mode: 'refined' (default: correlation-aware forward + sensitivities), "
                            "'sensitivity' (sensitivities on a diagonal forward, faster), 'diagonal' "
                            "(independent elements, fastest, underestimates deep nets)")
        p.add_argument("--explain", action="store_true",
                       help="print the closed form of the output MSE in the device parameters and check it "
                            "against the full analysis at a few other device points")

    def configure(self, args, options: dict) -> None:
        options["mode"] = args.mode

    def after_compile(self, args, g, ctx) -> None:
        if args.explain and not args.no_analysis and g.graph.get("closed_form"):
            from memse_compiler.explain import check_closed_form
            check_closed_form(g, args.model, ctx.device, ctx.inputs, ctx.options)

    def finish(self, args, g, report: dict) -> None:
        if args.explain and not args.no_analysis:
            from memse_compiler.explain import explain_text
            print()
            print(explain_text(g) or "no closed form (analysis mode 'diagonal' has no sensitivities)")


def _optional(module: str, cls: str) -> None:
    """Register an extension whose module ships with the package (import errors are real errors)."""
    mod = __import__(module, fromlist=[cls])
    EXTENSIONS.append(getattr(mod, cls)())


EXTENSIONS.append(AnalysisExtension())
