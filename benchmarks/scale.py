"""Scale: compile and analyse a ResNet-18-shaped model (random weights, 3x224x224) on this machine.
Prints time per pass, peak memory, and the ratio to one plain onnxruntime forward of the same batch.
Run by hand:  python benchmarks/scale.py [--batch 4] [--mode refined]"""
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
from memse_compiler import compile_model  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--mode", default="refined")
    ap.add_argument("--device", default="rram")
    args = ap.parse_args()
    model = resnet18()
    x = np.random.default_rng(0).random((args.batch, 3, 224, 224)).astype(np.float32)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    sess.run(None, {"input": x})
    t = time.perf_counter()
    sess.run(None, {"input": x})
    t_ort = time.perf_counter() - t
    t = time.perf_counter()
    g, ctx = compile_model(model, load_device(args.device), x, options={"mode": args.mode})
    total = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
    out = g.graph["analysis"]["outputs"]["logits"]
    tiles = sum(layer.tiles for layer in g.layers.values())
    print(f"ResNet-18 shape, batch {args.batch}, device {args.device}, mode {args.mode}: "
          f"{len(g.layers)} crossbar layers, {tiles} tiles, {g.number_of_nodes()} nodes")
    print(f"{'pass':<22}{'seconds':>10}")
    for name, s in g.graph["timing"]["passes"].items():
        print(f"{name:<22}{s:>10.2f}")
    print(f"{'total compile+analysis':<22}{total:>10.2f}")
    print(f"peak RSS {peak:.2f} GiB; plain onnxruntime forward {t_ort * 1e3:.0f} ms; "
          f"analysis time {g.graph['timing']['analysis_s']:.2f} s = {g.graph['timing']['analysis_s'] / t_ort:.0f}x one forward")
    print(f"output MSE {out['mse']:.4e} (bias^2 {out['bias2']:.3e}, variance {out['variance']:.3e}, "
          f"method {out['method']}, probes {out.get('probes')})")


if __name__ == "__main__":
    main()
