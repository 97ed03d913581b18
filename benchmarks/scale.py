"""Scale: compile and analyse a ResNet-18-shaped model (random weights, 3x224x224) on this machine.
Prints time per pass, peak memory, and the ratio to one plain onnxruntime forward of the same batch; with
--mc CHIPS also the Monte-Carlo reference of the output, the pooled features and every crossbar layer.
Run by hand:  python benchmarks/scale.py [--batch 4] [--mode refined] [--seed S] [--mc 160]
                                         [--set programming_noise.sigma=5e-7] [--width 64 --size 224]"""
from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parent))
from models import resnet18  # noqa: E402

from device_models import load_device  # noqa: E402
from memse_compiler import compile_model, tune_allocator  # noqa: E402

tune_allocator()     # as the CLI does (memse_compiler/allocator.py)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--mode", default="refined")
    ap.add_argument("--device", default="rram")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="device override")
    ap.add_argument("--seed", type=int, default=0, help="analysis seed (probes)")
    ap.add_argument("--mc", type=int, default=0, help="Monte-Carlo chips (0: none)")
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--size", type=int, default=224)
    args = ap.parse_args()
    model = resnet18(width=args.width, size=args.size)
    x = np.random.default_rng(0).random((args.batch, 3, args.size, args.size)).astype(np.float32)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    sess.run(None, {"input": x})
    t = time.perf_counter()
    sess.run(None, {"input": x})
    t_ort = time.perf_counter() - t
    t = time.perf_counter()
    device = load_device(args.device, args.set)
    g, ctx = compile_model(model, device, x, options={"mode": args.mode}, seed=args.seed)
    total = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
    out = g.graph["analysis"]["outputs"]["logits"]
    tiles = sum(layer.tiles for layer in g.layers.values())
    print(f"ResNet-18 shape (width {args.width}, {args.size}x{args.size}), batch {args.batch}, device {args.device} "
          f"{' '.join(args.set)}, mode {args.mode}: "
          f"{len(g.layers)} crossbar layers, {tiles} tiles, {g.number_of_nodes()} nodes")
    print(f"{'pass':<22}{'seconds':>10}")
    for name, s in g.graph["timing"]["passes"].items():
        print(f"{name:<22}{s:>10.2f}")
    print(f"{'total compile+analysis':<22}{total:>10.2f}")
    print(f"peak RSS {peak:.2f} GiB; plain onnxruntime forward {t_ort * 1e3:.3g} ms; "
          f"analysis time {g.graph['timing']['analysis_s']:.2f} s = {g.graph['timing']['analysis_s'] / t_ort:.0f}x one forward")
    print(f"output MSE {out['mse']:.4e} (bias^2 {out['bias2']:.3e}, variance {out['variance']:.3e}, "
          f"method {out['method']}, probes {out.get('probes')})")
    if args.mc:
        from memse_compiler.montecarlo import run_montecarlo
        pooled = [t for t in g.tensors if t.startswith("gap")]
        mc = run_montecarlo(g, device, x, chips=args.mc, seed=args.seed, signals=pooled)
        edges = {d["tensor"]: d["mse"] for _, _, d in g.edges(data=True)}
        rows = [("logits", out["mse"], mc["outputs"]["logits"])]
        rows += [(t, edges[t], mc["signals"][t]) for t in pooled]
        rows += [(name, g.graph["analysis"]["layers"][name], mc["signals"][layer.output])
                 for name, layer in g.layers.items()]
        print(f"Monte-Carlo, {mc['chips']} chips ({mc['mc_s']:.0f} s): signal, analysis, MC +- 95% CI, rel. error")
        for name, a, m in rows:
            hw = (m["ci95"][1] - m["ci95"][0]) / 2
            print(f"{name:<22}{a:>11.4g}{m['mse']:>11.4g} +- {100 * hw / m['mse']:4.1f}%{100 * (a / m['mse'] - 1):>+8.1f}%")


if __name__ == "__main__":
    main()
