"""Cost of one Monte-Carlo chip of the noisy executor vs one plain onnxruntime run of the same batch.

Run by hand:  python benchmarks/speed_executor.py [--threads N] [--repeat K] [--no-resnet]

For each model and device setting it prints: plain onnxruntime (original model, same batch), the executor's
noiseless programmed chip, one noisy chip (programming noise drawn + read noise + run), the ratio chip/plain
(target <= 2), chips/s of the executor alone and of run_montecarlo (next chip's noise drawn in a background
thread) tracking the outputs and layer outputs only ("MC out/s") or every annotated signal ("MC all/s").
"(draw)" is the programming-noise draw alone (numpy, ~10 ns per device).
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
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from device_models import load_device  # noqa: E402
from memse_compiler import compile_model  # noqa: E402
from memse_compiler.executor import NoisyExecutor  # noqa: E402
from memse_compiler.montecarlo import run_montecarlo  # noqa: E402
from memse_compiler.pipeline import default_pipeline  # noqa: E402

SETTINGS = {
    "prog": ["read_noise.sigma=0", "adc.bits=null"],               # programming noise only (MemSE case)
    "rram": [],                                                    # + read noise 2e-7 S, 8-bit ADC
    "rram+dac6+rows32": ["dac.bits=6", "adc.bits=6", "crossbar.rows=32"],
}


def resnet18(batch_hw: int = 224, classes: int = 1000, seed: int = 0) -> onnx.ModelProto:
    """ResNet-18 shape (conv-bn-relu, basic blocks, projection shortcuts), random weights, opset 17."""
    rng = np.random.default_rng(seed)
    nodes, inits, count = [], [], [0]

    def name(base):
        count[0] += 1
        return f"{base}_{count[0]}"

    def const(base, arr):
        n = name(base)
        inits.append(numpy_helper.from_array(np.asarray(arr, np.float32), n))
        return n

    def node(op, ins, **attrs):
        out = name(op.lower())
        nodes.append(helper.make_node(op, ins, [out], name=out, **attrs))
        return out

    def conv_bn(x, cin, cout, k, stride, relu=True):
        w = const("w", rng.standard_normal((cout, cin, k, k)) * np.sqrt(2.0 / (cin * k * k)))
        y = node("Conv", [x, w], kernel_shape=[k, k], strides=[stride, stride], pads=[k // 2] * 4)
        bn = [const("s", rng.uniform(0.5, 1.0, cout)), const("b", rng.normal(0, 0.1, cout)),
              const("m", rng.normal(0, 0.1, cout)), const("v", rng.uniform(0.5, 1.5, cout))]
        y = node("BatchNormalization", [y] + bn)
        return node("Relu", [y]) if relu else y

    x = "input"
    y = conv_bn(x, 3, 64, 7, 2)
    y = node("MaxPool", [y], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    cin = 64
    for cout, stride in [(64, 1), (128, 2), (256, 2), (512, 2)]:
        for blk in range(2):
            s = stride if blk == 0 else 1
            h = conv_bn(conv_bn(y, cin, cout, 3, s), cout, cout, 3, 1, relu=False)
            short = conv_bn(y, cin, cout, 1, s, relu=False) if (s != 1 or cin != cout) else y
            y = node("Relu", [node("Add", [h, short])])
            cin = cout
    y = node("Flatten", [node("GlobalAveragePool", [y])], axis=1)
    w = const("fc_w", rng.standard_normal((classes, 512)) / np.sqrt(512))
    y = node("Gemm", [y, w, const("fc_b", np.zeros(classes))], transB=1)
    graph = helper.make_graph(nodes, "resnet18_random",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, batch_hw, batch_hw])],
                              [helper.make_tensor_value_info(y, TensorProto.FLOAT, None)], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    return onnx.shape_inference.infer_shapes(model)


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
    args = ap.parse_args()
    x = np.load(ROOT / "examples" / "digits_inputs.npy")
    rows = []
    for name in ("mlp", "cnn", "rescnn"):
        for setting in SETTINGS:
            rows.append(bench(name, str(ROOT / "examples" / f"{name}_digits.onnx"), x, setting, args.threads,
                              args.repeat, 200))
            print_row(rows[-1], header=len(rows) == 1)
    if not args.no_resnet:
        model = resnet18()
        for batch in args.resnet_batch:
            xr = np.random.default_rng(1).random((batch, 3, 224, 224)).astype(np.float32)
            for setting in ("prog", "rram"):
                rows.append(bench("resnet18", model, xr, setting, args.threads, 3, 4))
                print_row(rows[-1])


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
