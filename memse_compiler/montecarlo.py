"""Monte-Carlo reference (DESIGN §6): simulate chips with the noisy executor, measure every signal's MSE.

A chip is the independent unit: its programming noise is drawn once and used for every evaluation input;
read noise is fresh per MVM and is averaged within the chip. Per chip and signal, MSE_chip = mean over samples
and elements of (y_chip - y_ref)^2 with y_ref the float model (g.graph["reference"]); the estimate is the mean
over chips, with a 95% confidence interval mean +- 1.96 std / sqrt(n) (normal approximation over chips).
"""
from __future__ import annotations

import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Iterable

import numpy as np

from memse_compiler.chip_batching import auto_chips_per_run
from memse_compiler.executor import NoisyExecutor, row_tile_name
from memse_compiler.ir import MemseGraph
from memse_compiler.ir.feeds import Inputs, feed_batch, graph_feed, reference_feed, same_feed
from memse_compiler.ir.geometry import ConvGeometry
from memse_compiler.ir.interpret import run as interpret
from passes.agreement import beaten, output_class_axis, output_topk, scores_labels

Z95 = 1.96
PIPELINE_MIN_S = 3e-4      # a run (session run) and its draw + record must both take longer for the pipeline


def _ci(per_chip: np.ndarray) -> tuple[float, list[float] | None, float]:
    """(mean, [lo, hi] or None for fewer than 2 chips, half-width)."""
    m = float(per_chip.mean())
    if per_chip.size < 2:
        return m, None, float("inf")
    hw = Z95 * float(per_chip.std(ddof=1)) / np.sqrt(per_chip.size)
    return m, [float(m - hw), float(m + hw)], hw


def _fraction_ci(per_chip: np.ndarray) -> tuple[float, list[float] | None]:
    """(mean, [lo, hi]) of per-chip fractions, the normal interval kept within [0, 1]."""
    m, ci, _ = _ci(per_chip)
    return m, None if ci is None else [max(ci[0], 0.0), min(ci[1], 1.0)]


def _msd_chips(y: np.ndarray, r: np.ndarray, chips: int) -> np.ndarray:
    """mean((y_c - r)^2) of each chip c of a run, y holding the chips one after the other along axis 0 (one
    temporary; no BLAS, whose thread start-up costs more than it saves here)."""
    d = np.subtract(y.reshape(chips, -1), r.reshape(1, -1))
    np.multiply(d, d, out=d)
    return d.mean(axis=1, dtype=np.float64)


class _TileSignals:
    """Per-(group, row tile, column tile) MSE of the analysis signals L/ps[g,r,c] and L/adc_out[g,r,c],
    from the executor's row-tile tensors: one vectorised reduction per row tile, in the executor's layout."""

    def __init__(self, layer, x_ref: np.ndarray):
        self.layer, self.conv = layer, isinstance(layer.geometry, ConvGeometry)
        # the float partial sums are the reference of both ps and adc_out (as in the analysis)
        ps = layer.partial_sums(layer.vectors(x_ref), layer.augmented_weight())                # N, P, G, R, O
        self.vec_ref = ps.astype(np.float32)
        self.ref: list[np.ndarray] | None = None
        self.starts = np.arange(0, layer.outs, layer.outs_per_tile)
        self.counts = np.diff(np.append(self.starts, layer.outs))

    def _layout(self, y: np.ndarray) -> list[np.ndarray]:
        """The reference of every row tile in the executor's layout (inverse of `tile_vectors`)."""
        v = self.vec_ref
        if self.conv:
            tiles = [v[:, :, :, r, :].transpose(0, 2, 3, 1).reshape(y.shape) for r in range(v.shape[3])]
        else:
            tiles = [v[:, :, :, r, :].reshape(y.shape) for r in range(v.shape[3])]
        return [np.ascontiguousarray(t) for t in tiles]

    def mse(self, values: dict[str, np.ndarray], kind: str) -> dict[str, float]:
        lay, out = self.layer, {}
        for r in range(lay.row_tiles):
            y = values[row_tile_name(lay.name, kind, r)]
            if self.ref is None:
                self.ref = self._layout(y)
            d2 = np.subtract(y, self.ref[r])
            np.multiply(d2, d2, out=d2)
            if self.conv:          # (N, G*O, Ho, Wo)
                per_out = d2.mean(axis=(0, 2, 3))
            else:                  # (..., O)
                per_out = d2.reshape(-1, lay.outs).mean(axis=0)
            per_tile = np.add.reduceat(per_out.reshape(lay.groups, lay.outs), self.starts, axis=1) / self.counts
            for grp in range(lay.groups):
                for c in range(lay.col_tiles):
                    out[f"{lay.name}/{kind}[{grp},{r},{c}]"] = float(per_tile[grp, c])
        return out


def _references(g: MemseGraph, x: Inputs | None) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(the evaluation batch by input name, the float reference of every signal on it)."""
    ref = g.graph.get("reference")
    if x is None:
        return reference_feed(g), ref
    feed = graph_feed(g, x)
    compiled = reference_feed(g)
    if compiled is not None and same_feed(compiled, feed):
        return feed, ref
    return feed, interpret(g, feed, hardware=False)      # other inputs: their own float reference


def run_montecarlo(g: MemseGraph, device=None, x: Inputs | None = None, chips: int = 100,
                   precision: float | None = None, seed: int = 0, min_chips: int = 10, progress: bool = True,
                   signals: Iterable[str] | None = None, executor: NoisyExecutor | None = None,
                   prefetch: bool | None = None) -> dict:
    """Simulate up to `chips` chips and return the per-signal MSE with 95% CIs (also stored in
    g.graph["montecarlo"], time in g.graph["timing"]["mc_s"]).

    x: evaluation inputs (default: those of g.graph["reference"]). precision: stop early once, for every
    graph output, CI half-width / MSE <= precision (checked after each chip from `min_chips` on).
    signals: tensors whose MSE to report besides the outputs and layer outputs; None = every signal the
    analysis annotates (original tensors, L/dac, L/ps[g,r,c], L/adc_out[g,r,c], L/sum); [] = none.
    prefetch: draw the next chip's noise in a background thread while onnxruntime runs the current one
    (numpy releases the GIL while drawing; same numbers as drawing in line, since one rng is used in order);
    None (default): decided after timing the second run in line (tiny models lose more to the hand-offs than
    they overlap: the digits MLP one chip per run 0.25 ms/chip in line, 0.29-0.39 pipelined; the CNN 1.16
    against 0.73-0.92).
    executor: a NoisyExecutor to reuse (default: built here, onnxruntime on all cores but one).
    Returns {"chips", "outputs": {name: {"mse", "ci95", "bias2", "variance"[, "top1_agreement",
    "top1_agreement_ci95"] (classifier-shaped outputs, passes/agreement.py)[, "accuracy", "accuracy_ci95"]
    (with g.graph["labels"])[, "topk", "topk_agreement", "topk_agreement_ci95"[, "topk_accuracy",
    "topk_accuracy_ci95"]] (with a k: passes/agreement.output_topk)}}, "layers": {name: mse},
    "signals": {tensor: {"mse", "ci95"}}, "mc_s", "seed", "precision"}.
    """
    t0 = time.perf_counter()
    # with prefetching, one core draws noise while onnxruntime runs on the others
    inputs, ref = _references(g, x)
    batch = feed_batch(inputs)
    ex = executor or NoisyExecutor(g, device, threads=max(1, (os.cpu_count() or 2) - 1) if prefetch is not False
                                   else None, chips_per_run=min(auto_chips_per_run(g, batch), chips))
    x = ex.data_feed(inputs)        # float32 once, fed to every run as it is
    rng = np.random.default_rng(seed)
    outputs = list(g.graph["outputs"])
    layer_out = {name: lay.output for name, lay in g.layers.items()}
    # plain tensors to track: outputs, layer outputs, and the requested / all annotated ones
    tile_sets: dict[str, tuple] = {}
    plain = dict.fromkeys(outputs + list(layer_out.values()))
    want = None if signals is None else set(signals)
    for t in ref:
        if t not in inputs and np.asarray(ref[t]).dtype.kind == "f" and (want is None or t in want):
            plain.setdefault(t)
    # float32 references for the internal signals: the chip's values are float32 anyway, and the squared error
    # then costs half the memory traffic; graph outputs keep float64 (their bias^2/variance split)
    f32 = lambda a: np.ascontiguousarray(a, dtype=np.float32)  # noqa: E731
    refs = {t: (ref[t] if t in outputs else f32(ref[t])) for t in plain}
    for name, lay in g.layers.items():
        if want is None or f"{name}/dac" in want:
            refs[f"{name}/dac"] = refs[lay.input] if lay.input in refs else f32(ref[lay.input])
        if lay.bias is not None and not lay.bias_row and (want is None or f"{name}/sum" in want):
            xr = ref[lay.input]
            bias = np.broadcast_to(lay.bias, lay.geometry.to_vectors(xr).shape[:3] + (lay.outs,))
            refs[f"{name}/sum"] = f32(ref[lay.output] - lay.geometry.from_vectors(bias, xr.shape))
        kinds = [k for k in ("ps", "adc_out")
                 if want is None or any(s.startswith(f"{name}/{k}[") for s in want)]
        if kinds:
            tile_sets[name] = (_TileSignals(lay, ref[lay.input]), kinds)
    if want is not None:
        missing = {s for s in want - set(refs) if not s.split("/")[-1].startswith(("ps[", "adc_out["))}
        if missing:
            raise KeyError(f"unknown signals: {sorted(missing)[:5]}")

    per_chip: dict[str, list[float]] = {t: [] for t in refs}
    # classifier-shaped outputs: per chip, the fraction of samples (and positions) whose argmax is the float model's
    class_axes = {o: output_class_axis(g, o) for o in outputs}
    tops = {o: np.argmax(ref[o], axis=axis) for o, axis in class_axes.items() if axis is not None}
    agreement: dict[str, list[float]] = {o: [] for o in tops}
    # and, given the classes of the compiled inputs (g.graph["labels"]) and those inputs, the fraction right
    labels = g.graph.get("labels") if ref is g.graph.get("reference") else None
    scored = {o for o in tops if scores_labels(labels, np.shape(ref[o]), class_axes[o])}
    accuracy: dict[str, list[float]] = {o: [] for o in scored}
    # and with a k (an output TopK's, or the topk option): the fractions whose float class (label) stays in the top k
    topk = {o: k for o in tops if (k := output_topk(g, o))}
    topk_agreement: dict[str, list[float]] = {o: [] for o in topk}
    topk_accuracy: dict[str, list[float]] = {o: [] for o in topk if o in scored}
    sums = {o: np.zeros_like(ref[o], dtype=np.float64) for o in outputs}
    sums2 = {o: np.zeros_like(ref[o], dtype=np.float64) for o in outputs}
    def converged(count: int) -> bool:
        """Whether the first `count` chips reach the requested precision on every output."""
        return precision is not None and count >= max(min_chips, 2) and all(
            _ci(np.asarray(per_chip[o][:count]))[2] <= precision * abs(np.mean(per_chip[o][:count])) for o in outputs)

    # A run is one session run: ex.chips chips (stacked on the batch axis where that pays, see
    # chip_batching.auto_chips_per_run), recorded together and kept up to `chips` or convergence.
    # Pipeline: while onnxruntime runs run r in this thread, one worker draws run r+1's noise and another
    # folds run r-1's chips into the statistics; run r-1 is checked for convergence after run r has run, and
    # stopping there discards run r, so the result equals the sequential loop's. prefetch None: runs 1 and 2
    # in line, 2 timed; the pipeline pays only when both its halves are worth a thread hand-off.
    shown, last_show, n = False, 0.0, 0
    pool = pending = pending_record = None

    def finished() -> bool:
        return n >= chips or converged(n)

    def record_run(values: dict[str, np.ndarray]) -> None:
        """Fold a run's chips into the per-chip MSE lists and the output sums: every tracked signal's per-chip
        MSE in one array operation over the run's chips; then keep the chips up to the first one at which the
        outputs have converged (or `chips` are reached), exactly where a one-chip loop would have stopped."""
        nonlocal n
        k, take = ex.chips, min(ex.chips, chips - n)
        if take <= 0 or converged(n):
            return
        fed = {id(values[n]) for n in inputs}
        seen: dict[tuple[int, int], np.ndarray] = {}      # aliases (L/dac without a DAC, ...) computed once
        for t, r in refs.items():
            v = values[t]
            key = (id(v), id(r))
            if key not in seen:
                # the fed batch is every chip's input: one value for all of them
                seen[key] = np.repeat(_msd_chips(v, r, 1), k) if id(v) in fed else _msd_chips(v, r, k)
            per_chip[t].extend(seen[key][:take].tolist())
        if tile_sets:
            for chip in ex.split_chips(values)[:take]:
                for ts, kinds in tile_sets.values():
                    for kind in kinds:
                        for t, val in ts.mse(chip, kind).items():
                            per_chip.setdefault(t, []).append(val)
        keep = next((m for m in range(1, take + 1) if converged(n + m)), take) if precision is not None else take
        for lst in per_chip.values():
            del lst[n + keep:]
        for o in outputs:
            v = values[o]
            y = (np.broadcast_to(v, (k,) + v.shape) if id(v) in fed else v.reshape((k,) + ref[o].shape))[:keep]
            if o in tops:
                classes = np.argmax(y, axis=1 + class_axes[o])     # y: (chips, *output shape)
                chips_axes = tuple(range(1, classes.ndim))
                agreement[o].extend((classes == tops[o]).mean(axis=chips_axes).tolist())
                if o in scored:
                    accuracy[o].extend((classes == labels).mean(axis=chips_axes).tolist())
                if o in topk:
                    scores = np.moveaxis(y, 1 + class_axes[o], -1)              # (chips, *positions, classes)
                    for fractions, target in ((topk_agreement, tops[o]), (topk_accuracy, labels)):
                        if o in fractions:
                            within = beaten(scores, np.broadcast_to(target, scores.shape[:-1])) < topk[o]
                            fractions[o].extend(within.mean(axis=chips_axes).tolist())
            y = y.astype(np.float64)
            sums[o] += y.sum(axis=0)
            sums2[o] += np.square(y).sum(axis=0)
        n += keep

    def show(done: bool) -> None:
        nonlocal shown, last_show
        elapsed = time.perf_counter() - t0
        if progress and n and (done or n == chips or elapsed - last_show > 0.2) and (elapsed > 1.0 or shown):
            m, _, hw = _ci(np.asarray(per_chip[outputs[0]][:n]))
            sys.stderr.write(f"\rMonte-Carlo: {n}/{chips} chips  {outputs[0]} MSE {m:.4g} +- {hw:.2g}"
                             f"  {elapsed:.1f} s   ")
            sys.stderr.flush()
            shown, last_show = True, elapsed
    try:
        runs = 0
        while not prefetch and runs < 2 and not finished():       # the in-line start
            t_draw = time.perf_counter()
            feed = ex.chip_feed(batch, rng)
            t_run = time.perf_counter()
            values = ex.run_feed(x, feed)
            t_rec = time.perf_counter()
            record_run(values)
            runs += 1
            side = time.perf_counter() - t_rec + t_run - t_draw          # draw + record: what threads overlap
            if prefetch is None and runs == 2 and min(t_rec - t_run, side) > PIPELINE_MIN_S:
                prefetch = True
            show(finished())
        if prefetch and not finished():
            pool = ThreadPoolExecutor(2)
            draw = lambda j: pool.submit(ex.chip_feed, batch, rng, j % 2)  # noqa: E731
            pending = draw(runs)
            while True:
                feed = pending.result()
                runs += 1
                last = runs * ex.chips >= chips              # the runs so far hold every chip asked for
                pending = None if last else draw(runs)
                values = ex.run_feed(x, feed)
                if pending_record is not None:
                    pending_record.result()
                    if finished():
                        break
                pending_record = pool.submit(record_run, values)
                if last:
                    pending_record.result()
                    break
                show(False)
        else:
            while not finished():
                record_run(ex.run_feed(x, ex.chip_feed(batch, rng)))
                show(finished())
        show(True)
    finally:
        if pool:
            if pending is not None:
                pending.cancel()
            pool.shutdown(wait=True)
    if shown:
        sys.stderr.write("\n")

    result: dict = {"chips": n, "seed": seed, "precision": precision, "outputs": {}, "layers": {}, "signals": {}}
    for t, vals in per_chip.items():
        m, ci, _ = _ci(np.asarray(vals))
        result["signals"][t] = {"mse": m, "ci95": ci}
    for o in outputs:
        mean = sums[o] / n
        # unbiased over chips; bias2 + variance == mse exactly before clamping bias2 at 0
        var = np.maximum(sums2[o] / n - mean ** 2, 0.0) * (n / (n - 1) if n > 1 else 0.0)
        variance = float(np.mean(var))
        bias2 = float(np.mean((mean - ref[o]) ** 2)) - (variance / n)
        result["outputs"][o] = {**result["signals"][o], "bias2": max(bias2, 0.0), "variance": variance}
        if o in tops:
            m, ci = _fraction_ci(np.asarray(agreement[o]))
            result["outputs"][o].update(top1_agreement=m, top1_agreement_ci95=ci)
        if o in scored:
            m, ci = _fraction_ci(np.asarray(accuracy[o]))
            result["outputs"][o].update(accuracy=m, accuracy_ci95=ci)
        for key, fractions in (("topk_agreement", topk_agreement), ("topk_accuracy", topk_accuracy)):
            if o in fractions:
                m, ci = _fraction_ci(np.asarray(fractions[o]))
                result["outputs"][o].update({"topk": topk[o], key: m, f"{key}_ci95": ci})
    result["layers"] = {name: result["signals"][t]["mse"] for name, t in layer_out.items()}
    result["mc_s"] = time.perf_counter() - t0
    g.graph["montecarlo"] = result
    g.graph.setdefault("timing", {})["mc_s"] = result["mc_s"]
    return result
