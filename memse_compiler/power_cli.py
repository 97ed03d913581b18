"""CLI flags for power and the power-constrained optimiser (DESIGN §7-8): --power-budget, --optimize,
--target-mse, --opt-adc-bits. Registered as an `Extension` (memse_compiler/cli.py)."""
from __future__ import annotations

import argparse
import math

from memse_compiler.cli import Extension
from memse_compiler.ir.errors import MemseInputError


def _fmt(v, spec: str = ".3e") -> str:
    return "-" if v is None else format(v, spec)


def _positive(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got '{text}'") from None
    if not (math.isfinite(v) and v > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return v


def power_line(g) -> str:
    p = g.graph.get("power") or {}
    if p.get("total_w") is None:
        return "power: -"
    b = p["breakdown"]
    return (f"power {p['total_w']:.4g} W  (crossbar {b['crossbar']:.3g} W, ADC {b['adc']:.3g} W, DAC {b['dac']:.3g} W)"
            f"  = {p['energy_per_inference_j']:.4g} J/inference at {p['inference_rate']:.3g} inferences/s")


def optimization_text(opt: dict) -> str:
    """Before/after per layer and the uniform-vs-optimised summary."""
    from memse_compiler.report import _table
    before = {r["name"]: r for r in opt["before"]["layers"]}
    rows = []
    for r in opt["layers"]:
        b = before[r["name"]]
        rows.append([r["name"], f"{b['g_range'] * 1e6:.3g}", f"{r['g_range'] * 1e6:.3g}",
                     str(b["adc_bits"]), str(r["adc_bits"]), _fmt(b["mse_share"]), _fmt(r["mse_share"]),
                     _fmt(b["power_w"]), _fmt(r["power_w"])])
    cols = ["layer", "G uS before", "G uS after", "bits before", "bits after", "mse share before",
            "mse share after", "power W before", "power W after"]
    u, o = opt["uniform"], opt["optimized"]
    goal = (f"budget {opt['budget_w']:.4g} W" if opt["objective"] == "min_mse"
            else f"target MSE {opt['target_mse']:.4g}")
    lines = [f"optimisation ({goal}, output {opt['output']}; {opt['evaluations']} analyses, "
             f"{opt['time_s']:.1f} s):", _table(cols, rows), "",
             _table(["configuration", "mse", "power_w", "G uS", "mc_mse"],
                    [["compiled", _fmt(opt["before"]["mse"]), _fmt(opt["before"]["power_w"]), "-", "-"],
                     ["uniform G", _fmt(u["mse"]), _fmt(u["power_w"]),
                      "-" if u["g_range"] is None else f"{u['g_range'] * 1e6:.3g}", "-"],
                     ["optimised", _fmt(o["mse"]), _fmt(o["power_w"]), "per layer", _fmt(o["mc_mse"])]])]
    if u["mse"] and o["mse"] is not None and opt["objective"] == "min_mse":
        lines.append(f"optimised / uniform MSE at the same budget: {o['mse'] / u['mse']:.3f}")
    elif u["power_w"] and opt["objective"] == "min_power":
        lines.append(f"optimised / uniform power at the same target: {o['power_w'] / u['power_w']:.3f}")
    if o.get("fallback_to_uniform"):
        lines.append("(the search did not beat the uniform G: the uniform configuration is kept)")
    if not o.get("met", True):
        lines.append("warning: the target could not be met within the conductance window and bit range")
    return "\n".join(lines)


class PowerExtension(Extension):
    def __init__(self) -> None:
        self._mc_done_before = False
        self._ctx = None

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        grp = p.add_argument_group("power and optimisation")
        grp.add_argument("--power-budget", type=_positive, metavar="WATTS",
                         help="power budget; with --optimize: choose per-layer conductance ranges G_l minimising "
                              "the output MSE under it (alone: check the compiled power against it)")
        grp.add_argument("--optimize", action="store_true",
                         help="optimise per-layer G_l (and ADC bits with --opt-adc-bits) for --power-budget or "
                              "--target-mse; the report then describes the optimised configuration")
        grp.add_argument("--target-mse", type=_positive, metavar="MSE",
                         help="dual problem: least power whose output MSE is at most MSE (implies --optimize)")
        grp.add_argument("--opt-adc-bits", action="store_true",
                         help="also choose each layer's ADC resolution (3..10 bits)")
        grp.add_argument("--opt-evals", type=int, default=5, metavar="N",
                         help="analyses the local search may spend after the closed-form start (default 5)")

    def _wants(self, args) -> bool:
        return bool(args.optimize or args.target_mse is not None)

    def configure(self, args, options: dict) -> None:
        if self._wants(args):
            if args.power_budget is not None and args.target_mse is not None:
                raise MemseInputError("give either --power-budget or --target-mse, not both")
            if args.power_budget is None and args.target_mse is None:
                raise MemseInputError("--optimize needs --power-budget WATTS or --target-mse MSE")
            if args.no_analysis:
                raise MemseInputError("--optimize needs the analysis (drop --no-analysis)")
            if getattr(args, "mode", None) == "diagonal":
                raise MemseInputError("--optimize needs the sensitivities: use --mode sensitivity or refined")
        elif args.opt_adc_bits:
            raise MemseInputError("--opt-adc-bits only applies with --optimize")

    def after_compile(self, args, g, ctx) -> None:
        from passes.power import PowerPass
        self._ctx = ctx
        if "power" not in g.graph and g.layers:
            PowerPass().apply(g, ctx)
        if not self._wants(args):
            return
        from passes.optimize import optimize
        self._mc_done_before = "montecarlo" in g.graph     # an earlier extension simulated the compiled chip
        optimize(g, ctx, args.power_budget, args.target_mse, args.opt_adc_bits, max_evals=args.opt_evals)
        if self._mc_done_before and getattr(args, "mc", None):
            self._montecarlo(args, g, ctx)                   # re-simulate: the chip changed

    def _montecarlo(self, args, g, ctx) -> None:
        try:
            from memse_compiler.montecarlo import run_montecarlo
        except ImportError:
            return
        run_montecarlo(g, ctx.device, ctx.inputs, chips=args.mc, seed=args.seed)

    def finish(self, args, g, report: dict) -> None:
        print()
        print(power_line(g))
        budget = args.power_budget
        if budget is not None and not self._wants(args) and g.graph.get("power"):
            total = g.graph["power"]["total_w"]
            print(f"power budget {budget:.4g} W: {'met' if total <= budget else 'EXCEEDED'} "
                  f"({100 * total / budget:.1f}% used)")
        opt = g.graph.get("optimization")
        if not opt:
            return
        if getattr(args, "mc", None):
            if "montecarlo" not in g.graph:
                self._montecarlo(args, g, self._ctx)
            mc = g.graph.get("montecarlo", {}).get("outputs", {}).get(opt["output"], {})
            opt["optimized"]["mc_mse"] = mc.get("mse")
            if "optimization" in report:
                report["optimization"]["optimized"]["mc_mse"] = mc.get("mse")
            out = report.get("outputs", {}).get(opt["output"])
            if out is not None and mc:          # the report was built before a Monte-Carlo run from here
                out.update(mc_mse=mc.get("mse"), mc_ci95=mc.get("ci95"))
        print()
        print(optimization_text(opt))

