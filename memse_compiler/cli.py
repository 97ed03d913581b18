"""`memse-compile MODEL --device DEVICE ...`: compile, analyse, report. Bad input: exit 2, one line."""
from __future__ import annotations

import argparse
import sys
import time
import traceback
from typing import Sequence

from device_models import DeviceError, load_device
from memse_compiler.ir.errors import MemseInputError

USER_ERRORS = (MemseInputError, DeviceError)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="memse-compile",
        description="Lower an ONNX network onto memristor crossbars and predict the mean, variance and MSE of "
                    "every signal under hardware noise, plus power.")
    p.add_argument("model", help="ONNX model file")
    p.add_argument("--device", required=True, help="device JSON file or bundled name (rram, pcm, ideal)")
    p.add_argument("--inputs", help="evaluation inputs (.npy, or .npz keyed by the input names; a model with "
                                    "several data inputs needs the .npz); default: a synthetic batch uniform on "
                                    "[0, 1) for each input")
    p.add_argument("--labels", help="the evaluation inputs' classes (.npy of ints): float and chip accuracy of a "
                                     "(batch, classes) output, by analysis and Monte-Carlo; per position, (batch, "
                                     "H, W) of (batch, classes, H, W) or (batch, T) of (batch, T, classes)")
    p.add_argument("--batch", type=int, default=None,
                   help="number of evaluation inputs (synthetic batch size, default 64; or the first N of --inputs)")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic inputs and of Monte-Carlo")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a device field, e.g. --set adc.bits=6 (repeatable)")
    p.add_argument("-o", "--output", help="write the report JSON here")
    p.add_argument("--no-analysis", action="store_true", help="lower only (hardware table), skip the analysis")
    p.add_argument("--debug", action="store_true", help="show tracebacks of internal errors")
    for hook in EXTENSIONS:
        hook.add_arguments(p)
    return p


class Extension:
    """A CLI feature owned by another module (analysis, Monte-Carlo, power, inspection): it adds flags,
    may extend the pipeline, and acts after compilation."""

    def add_arguments(self, p: argparse.ArgumentParser) -> None: ...
    def configure(self, args, options: dict) -> None: ...
    def after_compile(self, args, g, ctx) -> None: ...
    def finish(self, args, g, report: dict) -> None: ...


EXTENSIONS: list[Extension] = []


def _load_extensions() -> None:
    if not EXTENSIONS:
        from memse_compiler import cli_extensions   # noqa: F401  (registers into EXTENSIONS)


def describe_inputs(x) -> str:
    """'N x (shape)' of the evaluation batch; per input name for several inputs."""
    if isinstance(x, dict):
        return ", ".join(f"{name} {v.shape[0]} x {tuple(v.shape[1:])}" for name, v in x.items())
    return f"{x.shape[0]} x {tuple(x.shape[1:])}"


def run(args: argparse.Namespace) -> int:
    from memse_compiler.frontend import build_graph
    from memse_compiler.ir.feeds import feed_batch
    from memse_compiler.pipeline import checked_inputs, default_pipeline, load_inputs, load_labels, synthetic_feed
    from memse_compiler.ir.pass_base import PassContext
    from memse_compiler.report import (agreement_table, build_report, decision_lines, hardware_table, outputs_table,
                                       write_report)

    device = load_device(args.device, args.overrides)
    if args.batch is not None and args.batch < 1:
        raise MemseInputError(f"--batch must be at least 1, got {args.batch}")
    t0 = time.perf_counter()
    g = build_graph(args.model)
    shape = g.tensors[g.graph["inputs"][0]]          # every data input shares its batch
    if args.inputs:
        x = load_inputs(args.inputs, g, args.batch or shape[0])
    else:
        x = checked_inputs(g, synthetic_feed(g, args.batch or shape[0] or 64, args.seed))
    if args.labels:
        g.graph["labels"] = load_labels(args.labels, g, feed_batch(x))
    options = {"seed": args.seed}
    for hook in EXTENSIONS:
        hook.configure(args, options)
    ctx = PassContext(device=device, inputs=x, options=options)
    g.graph["device"] = device
    g.graph["options"] = dict(options)
    g = default_pipeline(analysis=not args.no_analysis).run(g, ctx)
    g.graph.setdefault("timing", {})["compile_s"] = time.perf_counter() - t0
    for hook in EXTENSIONS:
        hook.after_compile(args, g, ctx)
    report = build_report(g)
    print(f"model {report['model']}  device {device.name}  inputs {describe_inputs(x)}")
    print(hardware_table(report))
    if not args.no_analysis and any(o.get("mse") is not None for o in report["outputs"].values()):
        print()
        print(outputs_table(report))
        agreement = agreement_table(report)
        if agreement:
            print()
            print(agreement)
            for line in decision_lines(report):
                print(line)
    for hook in EXTENSIONS:
        hook.finish(args, g, report)
    if args.output:
        write_report(report, args.output)
        print(f"report written to {args.output}", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    _load_extensions()
    if argv and argv[0] == "inspect":
        from memse_compiler.inspect_cli import main as inspect_main
        return inspect_main(argv[1:])
    args = build_parser().parse_args(argv)
    from memse_compiler.allocator import tune_allocator
    tune_allocator()            # this process is ours: keep freed arrays in the heap (memse_compiler/allocator.py)
    try:
        return run(args)
    except USER_ERRORS as exc:
        print(f"memse-compile: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("memse-compile: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # an internal error: still one line unless asked for the traceback
        if args.debug:
            traceback.print_exc()
        print(f"memse-compile: internal error: {type(exc).__name__}: {exc} (rerun with --debug)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
