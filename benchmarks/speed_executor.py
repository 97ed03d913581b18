"""Cost of one Monte-Carlo chip of the noisy executor vs one plain onnxruntime run of the same batch.

Run by hand:  python benchmarks/speed_executor.py [--threads N] [--repeat K] [--no-resnet] [--only digits|resnet|normals]

For each model and device setting it prints: plain onnxruntime (original model, same batch), the executor's
noiseless programmed chip, one noisy chip (programming noise drawn + read noise + run), the ratio chip/plain
(target <= 2), chips/s of the executor alone and of run_montecarlo (next chip's noise drawn in a background
thread) tracking the outputs and layer outputs only ("MC out/s") or every annotated signal ("MC all/s").
"(draw)" is the programming-noise draw alone (Box-Muller, ~2 ns per device; `--only normals` compares it with numpy's ziggurat).
Times are the minimum over repeats (the machine may be shared).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from models import resnet18  # noqa: E402

from device_models import load_device  # noqa: E402
from memse_compiler import compile_model  # noqa: E402
from memse_compiler.executor import NoisyExecutor  # noqa: E402
from memse_compiler.montecarlo import run_montecarlo  # noqa: E402
from memse_compiler.pipeline import default_pipeline  # noqa: E402
from memse_compiler.sampling import standard_normal  # noqa: E402

SETTINGS = {
    "prog": ["read_noise.sigma=0", "adc.bits=null"],               # programming noise only (MemSE case)
    "rram": [],                                                    # + read noise 2e-7 S, 8-bit ADC
    "rram+dac6+rows32": ["dac.bits=6", "adc.bits=6", "crossbar.rows=32"],
}


def best(f, repeat: int) -> float:
    f()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        f()
        times.append(time.perf_counter() - t0)
    return min(times)


def bench(label: str, model, x: np.ndarray, setting: str, threads: int, repeat: int, mc_chips: int) -> dict:
    dev = load_device("rram", SETTINGS[setting])
    t0 = time.perf_counter()
    g, _ = compile_model(model, dev, x, pipeline=default_pipeline(analysis=False))
    t_compile = time.perf_counter() - t0
    t0 = time.perf_counter()
    ex = NoisyExecutor(g, threads=threads)
    t_build = time.perf_counter() - t0
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    blob = model.SerializeToString() if isinstance(model, onnx.ModelProto) else Path(model).read_bytes()
    plain = ort.InferenceSession(blob, opts, providers=["CPUExecutionProvider"])
    feed = {plain.get_inputs()[0].name: x.astype(np.float32)}
    rng = np.random.default_rng(0)
    t_plain = best(lambda: plain.run(None, feed), repeat)
    t_noiseless = best(lambda: ex.run_noiseless(x), repeat)
    t_chip = best(lambda: ex.run_chip(x, rng), repeat)
    t_draw = best(lambda: ex.draw_chip(rng), repeat)
    t_mc = t_mc_all = None
    if mc_chips:
        res = run_montecarlo(g, dev, x, chips=mc_chips, progress=False, executor=ex, signals=[])
        t_mc = res["mc_s"] / res["chips"]
        res = run_montecarlo(g, dev, x, chips=mc_chips, progress=False, executor=ex)
        t_mc_all = res["mc_s"] / res["chips"]
    tiles = sum(lay.tiles for lay in g.layers.values())
    return dict(model=label, setting=setting, batch=x.shape[0], tiles=tiles, compile_s=t_compile, build_s=t_build,
                plain_ms=1e3 * t_plain, noiseless_ms=1e3 * t_noiseless, chip_ms=1e3 * t_chip,
                draw_ms=1e3 * t_draw, ratio=t_chip / t_plain, chips_s=1 / t_chip,
                mc_chips_s=None if t_mc is None else 1 / t_mc,
                mc_all_chips_s=None if t_mc_all is None else 1 / t_mc_all)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads for both (default 1)")
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--no-resnet", action="store_true")
    ap.add_argument("--resnet-batch", type=int, nargs="+", default=[2, 8])
    ap.add_argument("--only", choices=["digits", "resnet", "normals"], help="run one part only")
    args = ap.parse_args()
    if args.only in (None, "normals"):
        normals()
    if args.only == "normals":
        return
    x = np.load(ROOT / "examples" / "digits_inputs.npy")
    rows = []
    for name in ("mlp", "cnn", "rescnn") if args.only != "resnet" else ():
        for setting in SETTINGS:
            rows.append(bench(name, str(ROOT / "examples" / f"{name}_digits.onnx"), x, setting, args.threads,
                              args.repeat, 200))
            print_row(rows[-1], header=len(rows) == 1)
    if not args.no_resnet and args.only != "digits":
        model = resnet18()
        for batch in args.resnet_batch:
            xr = np.random.default_rng(1).random((batch, 3, 224, 224)).astype(np.float32)
            for setting in ("prog", "rram"):
                rows.append(bench("resnet18", model, xr, setting, args.threads, 3, 4))
                print_row(rows[-1])


def normals(n: int = 1_000_000) -> None:
    """ns per float32 standard normal: numpy's ziggurat vs the executor's Box-Muller (memse_compiler.sampling)."""
    rng, out = np.random.default_rng(0), np.empty(n, np.float32)
    zig = best(lambda: rng.standard_normal(dtype=np.float32, out=out), 10)
    bm = best(lambda: standard_normal(rng, out), 10)
    print(f"float32 N(0,1): numpy ziggurat {1e9 * zig / n:.2f} ns, Box-Muller {1e9 * bm / n:.2f} ns per number\n")


def print_row(r: dict, header: bool = False) -> None:
    if header:
        print(f"{'model':9s} {'setting':17s} {'batch':>5s} {'tiles':>5s} {'plain ms':>9s} {'noiseless':>9s} "
              f"{'chip ms':>9s} {'(draw)':>8s} {'chip/plain':>10s} {'chips/s':>8s} {'MC out/s':>8s} {'MC all/s':>8s} "
              f"{'compile s':>9s} {'build s':>7s}")
    mc = "-" if r["mc_chips_s"] is None else f"{r['mc_chips_s']:.1f}"
    mc_all = "-" if r["mc_all_chips_s"] is None else f"{r['mc_all_chips_s']:.1f}"
    print(f"{r['model']:9s} {r['setting']:17s} {r['batch']:5d} {r['tiles']:5d} {r['plain_ms']:9.3f} "
          f"{r['noiseless_ms']:9.3f} {r['chip_ms']:9.3f} {r['draw_ms']:8.3f} {r['ratio']:10.2f} "
          f"{r['chips_s']:8.1f} {mc:>8s} {mc_all:>8s} {r['compile_s']:9.2f} {r['build_s']:7.2f}", flush=True)


if __name__ == "__main__":
    main()
