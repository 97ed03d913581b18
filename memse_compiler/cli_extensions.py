"""The CLI features beyond lowering, each an `Extension` (memse_compiler/cli.py) registered here."""
from __future__ import annotations

import argparse

from memse_compiler.cli import EXTENSIONS, Extension


class AnalysisExtension(Extension):
    """--mode, --probes, --topk and --explain (closed form and its validity)."""

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        from passes.moments import DEFAULT_MODE, MODES
        p.add_argument("--mode", choices=list(MODES), default=DEFAULT_MODE,
                       help="analysis mode: 'refined' (default: correlation-aware forward + sensitivities), "
                            "'sensitivity' (sensitivities on a diagonal forward, faster), 'diagonal' "
                            "(independent elements, fastest, underestimates deep nets)")
        p.add_argument("--probes", type=int, metavar="N",
                       help="probe budget for outputs with more than 64 elements per sample (default 16, up "
                            "to 8x that on outputs with few sample x channel blocks; 4 on models above 1e9 MACs); "
                            "conv outputs whose positions fit get one probe per position")
        p.add_argument("--topk", type=int, metavar="K",
                       help="also the top-K agreement (the float class stays among the chip's K best) and, with "
                            "--labels, top-K accuracy of classifier outputs, by analysis and Monte-Carlo (an output "
                            "TopK brings its own K)")
        p.add_argument("--explain", action="store_true",
                       help="print the closed form of the output MSE in the device parameters and check it "
                            "against the full analysis at a few other device points")

    def configure(self, args, options: dict) -> None:
        from memse_compiler.ir.errors import MemseInputError
        options["mode"] = args.mode
        if args.probes is not None:
            if args.probes < 1:
                raise MemseInputError(f"--probes must be at least 1, got {args.probes}")
            options["probes"] = args.probes
        if args.topk is not None:
            if args.topk < 2:
                raise MemseInputError(f"--topk must be at least 2 (top-1 is always reported), got {args.topk}")
            options["topk"] = args.topk

    def after_compile(self, args, g, ctx) -> None:
        if args.explain and not args.no_analysis and g.graph.get("closed_form"):
            from memse_compiler.explain import check_closed_form
            check_closed_form(g, args.model, ctx.device, ctx.inputs, ctx.options)

    def finish(self, args, g, report: dict) -> None:
        if args.explain and not args.no_analysis:
            from memse_compiler.explain import explain_text
            print()
            print(explain_text(g) or "no closed form (analysis mode 'diagonal' has no sensitivities)")


class MonteCarloExtension(Extension):
    """--mc CHIPS / --mc-precision: the noisy onnxruntime executor beside the analysis."""

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("--mc", type=int, metavar="CHIPS",
                       help="also run the Monte-Carlo reference over at most CHIPS simulated chips")
        p.add_argument("--mc-precision", type=float, metavar="REL",
                       help="stop the Monte-Carlo early once every output's 95%% CI half-width is within "
                            "REL of its MSE (e.g. 0.05); needs --mc as the cap")

    def configure(self, args, options: dict) -> None:
        from memse_compiler.ir.errors import MemseInputError
        if args.mc is not None and args.mc < 2:
            raise MemseInputError(f"--mc needs at least 2 chips for a confidence interval, got {args.mc}")
        if args.mc_precision is not None and (args.mc is None or not 0 < args.mc_precision < 1):
            raise MemseInputError("--mc-precision needs --mc CHIPS (the cap) and a value in (0, 1)")

    def after_compile(self, args, g, ctx) -> None:
        if args.mc:
            from memse_compiler.montecarlo import run_montecarlo
            run_montecarlo(g, ctx.device, ctx.inputs, chips=args.mc, precision=args.mc_precision,
                           seed=args.seed, progress=True)


from memse_compiler.inspection_cli import InspectionExtension  # noqa: E402
from memse_compiler.power_cli import PowerExtension  # noqa: E402

# order matters: the optimiser (power) acts before Monte-Carlo checks the final chip; inspection last
EXTENSIONS.extend([AnalysisExtension(), PowerExtension(), MonteCarloExtension(), InspectionExtension()])
