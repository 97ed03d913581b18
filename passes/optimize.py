"""Power-constrained choice of per-layer conductance ranges G_l and ADC bits (DESIGN §7, MemSE's headline use;
a "layer" l here is a programmed crossbar, with every op that drives it: a recurrent layer's steps share one G):
    min MSE(G, b)  s.t.  P(G, b) <= budget,  g_lo <= G_l <= g_max - g_min,  b_l in bits_range
or the dual, min P s.t. MSE <= target. g_lo = 1% of the window (G_LO_FRACTION): below it the window is all
g_min floor and programming noise.

Surrogate, re-fitted at every analysed point from its sensitivities (so clipping, noise propagation and the
nonlinearities are the full analysis' at that point):
    MSE ~ base + sum_l a_l / G_l^2 + D_l / (2^(b_l-1) - 1)^2,   a_l = (programming + read share of l) G_l^2
    P   = sum_l P_l G_l + P0_l + ADC/DAC(b_l)                   (passes/power.py; linear in G_l)
KKT: -2 a_l / G_l^3 + lambda P_l = 0  =>  G_l ∝ (a_l / P_l)^(1/3), scaled to spend the budget (the MSE falls
with every G), clipped to the bounds with the rest re-distributed. ADC bits: greedy on the surrogate (the bit
with the largest MSE gain, G re-solved for what the converters leave). Then a local search on the full
analysis: surrogate re-fits (KKT again from the new point, or half that step) and coordinate moves in log G
(and +-1 bit), every candidate re-projected on the budget. The exact power counts the input noise (a smaller G
makes noisier inputs that draw more read power), so projections predict the crossbar inputs' variance at the
new G from an analysed point, and candidates are compared at equal power (the excess priced at the KKT
multiplier). Each evaluation re-maps the layers (the quantized conductances change with G) and re-runs the
moments and sensitivities (not the frontend, calibration, converter ranges or closed-form fit) on
`search_batch` fixed samples; the uniform baseline and the result are analysed on the whole batch and brought
into [budget - 0.5% of the G-dependent power, budget] with their own input noise.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from memse_compiler.ir import KIND_ADC, MemseGraph
from memse_compiler.ir.errors import MemseInputError
from memse_compiler.ir.pass_base import Pass, PassContext
from passes.map_conductances import map_layer
from passes.power import PowerPass, adc_energy, dac_energy, layer_energy, layer_inputs, row_voltage2

G_LO_FRACTION = 0.01
BITS_RANGE = (3, 10)
SKIP_IN_LOOP = {"symbolic_moments", "closed_form", "power", "optimize"}   # independent of G / not needed


def _lv(bits: int | None) -> float:
    return 0.0 if bits is None else float(2 ** (bits - 1) - 1)


@dataclass
class Point:
    g: dict[str, float]
    bits: dict[str, int | None]
    mse: float = float("inf")
    power: float = float("inf")
    noise: dict[str, float] = field(default_factory=dict)     # programming + read variance share per layer
    adc: dict[str, float] = field(default_factory=dict)
    shares: dict[str, float] = field(default_factory=dict)    # every source, per layer
    rows_var: dict[str, np.ndarray] = field(default_factory=dict)


class Problem:
    """The state of one optimisation: the graph's layers are re-mapped in place while searching."""

    def __init__(self, g: MemseGraph, ctx: PassContext, output: str | None, search_batch: int,
                 bits_range: tuple[int, int] = BITS_RANGE):
        if not g.graph.get("sensitivity"):
            raise MemseInputError("the optimiser needs the sensitivity analysis (--mode sensitivity or refined)")
        self.g, self.ctx, self.dev, self.bits_range = g, ctx, ctx.device, bits_range
        # the knobs are per programmed crossbar: the ops that drive one (a recurrent layer's steps) share its
        # G and ADC bits, their error shares and powers summed
        self.knob = {name: lay.crossbar for name, lay in g.layers.items()}
        self.out, self.names, self.rate = output or g.graph["outputs"][0], list(dict.fromkeys(self.knob.values())), \
            ctx.device.inference_rate
        self.g_hi = self.dev.conductance.g_max - self.dev.conductance.g_min
        self.g_lo = G_LO_FRACTION * self.g_hi
        ref = g.graph["reference"]
        self.n = n = int(np.shape(ref[g.graph["inputs"][0]])[0])
        idx = np.unique(np.linspace(0, n - 1, min(search_batch, n)).round().astype(int))
        self.sub_ref = ref if len(idx) == n else {
            t: (v[idx] if np.ndim(v) and np.shape(v)[0] == n else v) for t, v in ref.items()}
        self.batch_sub = len(idx)
        # crossbar input power E[V^2] per row: the mean^2 part of the whole batch at the compiled point
        self.rows_mu, self.mvms = {}, {}
        for name, layer in g.layers.items():
            mu, v = layer_inputs(g, layer)
            self.rows_mu[name] = row_voltage2(layer, mu, np.zeros_like(mu), self.dev.crossbar.read_voltage, n)
            self.mvms[name] = mu.shape[0] * mu.shape[1] * layer.groups / n
        self.saved = {k: (lay.g_range.copy(), lay.adc_bits) for k, lay in g.layers.items()}
        self.rows_quiet = self.quiet_rows()
        self.point0 = self.from_graph(g, full=True)
        self.per_g = self.layer_power(self.point0)[0]
        cf = g.graph.get("closed_form", {}).get(self.out)     # ADC coefficient where the device has no ADC
        self.d_fallback = self.per_knob({n: (cf.coefficients[n]["D"] if cf else 0.0) for n in self.knob})
        self.evaluations = 0
        self.anchor(self.point0)

    def quiet_rows(self) -> dict[str, np.ndarray]:
        """Crossbar input variance with the conductance noise off (converters only): one diagonal forward."""
        from passes.moments import forward_moments
        quiet = self.dev.with_overrides({"programming_noise.sigma": 0.0, "programming_noise.relative": 0.0,
                                         "read_noise.sigma": 0.0})
        lin = forward_moments(self.g, quiet, {"seed": self.ctx.options.get("seed", 0), "mode": "diagonal"})[1]
        rv = self.dev.crossbar.read_voltage
        return {k: row_voltage2(lay, np.zeros_like(lin[k].v_vec), lin[k].v_vec, rv, self.n)
                for k, lay in self.g.layers.items()}

    # ---- configurations -----------------------------------------------------------------------------
    def per_knob(self, per_layer: dict[str, float]) -> dict[str, float]:
        """Per-layer values summed over the layers of each knob (crossbar)."""
        out = dict.fromkeys(self.names, 0.0)
        for name, v in per_layer.items():
            out[self.knob[name]] += v
        return out

    def apply(self, g_ranges: dict[str, float], bits: dict[str, int | None]) -> None:
        for name, layer in self.g.layers.items():
            layer.g_range = np.full(layer.w_max.shape, float(g_ranges[self.knob[name]]))
            map_layer(layer, self.dev)
            layer.adc_bits = bits[self.knob[name]]

    def layer_power(self, p: Point) -> tuple[dict[str, float], float]:
        """(P_l per layer, W/S, measured on the mapped conductances) and the exact total power (W)."""
        per_g, total = {}, 0.0
        for name, layer in self.g.layers.items():
            v2 = self.rows_mu[name] + p.rows_var.get(name, 0.0)
            lp = layer_energy(layer, v2, self.mvms[name], self.dev)
            G = float(np.mean(layer.g_range))
            per_g[name] = self.rate * (lp.crossbar - lp.floor) / G
            total += self.rate * lp.total
        return self.per_knob(per_g), total

    def fixed_power(self, bits: dict[str, int | None], rows_var: dict | None = None) -> float:
        """Power that does not scale with G: converters and the g_min floors (the floor ~ rows, not G)."""
        tot = 0.0
        for name, layer in self.g.layers.items():
            v2 = self.rows_mu[name] + (rows_var or {}).get(name, 0.0)
            floor = self.dev.crossbar.t_read * 2 * layer.g_min * layer.outs * float(v2.sum())
            n_adc = self.mvms[name] * layer.row_tiles * layer.outs
            n_dac = self.mvms[name] * layer.col_tiles * layer.weight.shape[2]
            tot += self.rate * (floor + n_adc * adc_energy(self.dev, bits[self.knob[name]])
                                + n_dac * dac_energy(self.dev, layer.dac_bits))
        return tot

    def linear_project(self, direction: dict[str, float], bits, budget: float, per_g: dict[str, float],
                       rows_var: dict | None = None) -> dict[str, float] | None:
        """G = k * direction spending the budget on the linear model, clipped to [g_lo, g_hi] with the rest
        re-distributed over the unclipped layers; None if even g_lo everywhere is over budget."""
        avail = budget - self.fixed_power(bits, rows_var)
        if avail < sum(per_g[n] * self.g_lo for n in self.names):
            return None
        fixed: dict[str, float] = {}
        while True:
            free = [n for n in self.names if n not in fixed]
            spent = sum(per_g[n] * fixed[n] for n in fixed)
            denom = sum(per_g[n] * direction[n] for n in free)
            k = (avail - spent) / denom if denom > 0 else np.inf
            G = {n: float(np.clip(k * direction[n], self.g_lo, self.g_hi)) for n in free}
            clipped = {n: v for n, v in G.items() if v in (self.g_lo, self.g_hi)}
            if not clipped or len(clipped) == len(free):
                return {**fixed, **G}
            fixed.update(clipped)

    def predicted_rows(self, G: dict[str, float], ref: Point) -> dict[str, np.ndarray]:
        """Crossbar input variance (per-row E[V^2] part) at G, from an evaluated point `ref`: the part due to
        conductance noise scales like the output's (programming + read, 1/G^2 per layer); the converters'
        quantization part (measured once, noise off) does not move."""
        noise = sum(ref.noise.values())
        ratio = sum(ref.noise[k] * (ref.g[k] / G[k]) ** 2 for k in self.names) / noise if noise > 0 else 1.0
        return {k: self.rows_quiet[k] + np.maximum(v - self.rows_quiet[k], 0.0) * ratio
                for k, v in ref.rows_var.items()}

    def project(self, direction: dict[str, float], bits, budget: float, ref: Point) -> dict[str, float] | None:
        """G along `direction` whose exact power (re-mapped conductances, input noise predicted from `ref`)
        meets the budget: linear_project on an effective budget corrected by the excess until it fits."""
        b, per_g, rows, best = budget, self.per_g, ref.rows_var, None
        for _ in range(8):
            G = self.linear_project(direction, bits, b, per_g, rows)
            if G is None:
                break
            self.apply(G, bits)
            rows = self.predicted_rows(G, ref)
            per_g, total = self.layer_power(Point(G, bits, rows_var=rows))
            if total <= budget * (1 + 1e-9):
                best = G
                if total >= budget * (1 - 1e-6) or all(G[k] >= self.g_hi for k in self.names):
                    break
            b -= total - budget
        return best

    # ---- evaluations ---------------------------------------------------------------------------------
    def from_graph(self, h: MemseGraph, full: bool) -> Point:
        sens = h.graph["sensitivity"][self.out]
        lin = h.graph["linearization"]
        layers = self.g.layers
        p = Point({k: float(np.mean(layers[k].g_range)) for k in self.names},
                  {k: layers[k].adc_bits for k in self.names},
                  mse=float(h.graph["analysis"]["outputs"][self.out]["mse"]))
        shares = h.graph["analysis"]["outputs"][self.out].get("layer_shares", {})
        p.noise = self.per_knob({k: sens.get(f"{k}|programming", 0.0) + sens.get(f"{k}|read", 0.0) for k in layers})
        p.adc = self.per_knob({k: sens.get(f"{k}|adc", 0.0) for k in layers})
        p.shares = self.per_knob({k: shares.get(k, 0.0) for k in layers})
        rv = self.dev.crossbar.read_voltage
        for k, lay in layers.items():
            # whole batch: exact (as the power pass); subset: its input variance on the whole batch's mean^2
            p.rows_var[k] = (row_voltage2(lay, lin[k].mu_vec, lin[k].v_vec, rv, self.n) - self.rows_mu[k] if full
                             else row_voltage2(lay, np.zeros_like(lin[k].v_vec), lin[k].v_vec, rv, self.batch_sub))
        p.power = self.layer_power(p)[1]
        return p

    def evaluate(self, G: dict[str, float], bits, full: bool = False) -> Point:
        """Full analysis (moments + sensitivities) of the configuration on a copy of the graph."""
        from passes import analysis_pass_list
        self.apply(G, bits)
        h = self.g.copy()
        for key in ("sensitivity", "closed_form"):
            h.graph.pop(key, None)
        h.graph.update(analysis={}, timing={}, reference=self.g.graph["reference"] if full else self.sub_ref)
        for p in analysis_pass_list():
            if p.name not in SKIP_IN_LOOP:
                h = p.apply(h, self.ctx)
        self.evaluations += 1
        return self.from_graph(h, full)

    # ---- surrogate -----------------------------------------------------------------------------------
    def anchor(self, p: Point) -> None:
        """Re-fit the surrogate at an evaluated point (its shares are exact there)."""
        self.a = {k: max(p.noise[k], 1e-300) * p.g[k] ** 2 for k in self.names}
        self.d = {k: p.adc[k] * _lv(p.bits[k]) ** 2 if p.bits[k] else self.d_fallback[k] for k in self.names}
        self.base = p.mse - sum(p.noise.values()) - sum(p.adc.values())

    def kkt_direction(self) -> dict[str, float]:
        return {k: (self.a[k] / self.per_g[k]) ** (1 / 3) if self.per_g[k] > 0 else self.g_hi for k in self.names}

    def surrogate_best(self, bits, budget: float) -> float:
        """The surrogate MSE at its KKT optimum for `bits` (inf if the budget cannot pay the converters)."""
        G = self.linear_project(self.kkt_direction(), bits, budget, self.per_g)
        return np.inf if G is None else self.base + sum(
            self.a[k] / G[k] ** 2 + (self.d[k] / _lv(bits[k]) ** 2 if bits[k] else 0.0) for k in self.names)

    def greedy_bits(self, budget: float) -> dict[str, int]:
        """From the lowest resolution, add the one bit that lowers the surrogate most (G re-solved for what
        the converters leave of the budget), until none does."""
        lo, hi = self.bits_range
        bits = {k: lo for k in self.names}
        best = self.surrogate_best(bits, budget)
        while True:
            trials = [(self.surrogate_best({**bits, k: bits[k] + 1}, budget), {**bits, k: bits[k] + 1})
                      for k in self.names if bits[k] < hi]
            if not trials or min(t[0] for t in trials) >= best * (1 - 1e-9):
                return bits
            best, bits = min(trials, key=lambda t: t[0])

    # ---- search --------------------------------------------------------------------------------------
    def price(self, p: Point) -> float:
        """MSE per watt at p: scaling every free G by (1 + e) changes the MSE by -2 e sum a/G^2 and the power by
        e sum P G (the KKT multiplier at the optimum)."""
        free = [k for k in self.names if self.g_lo < p.g[k] < self.g_hi] or self.names
        return 2 * sum(p.noise[k] for k in free) / max(sum(self.per_g[k] * p.g[k] for k in free), 1e-300)

    def better(self, cand: Point | None, cur: Point, budget: float) -> bool:
        """Compare at equal power: a candidate projected with the current point's input noise lands slightly
        off the budget once its own noise is known; charge/credit that (up to 2% of the crossbar power) at the
        current price. A candidate further over the budget is rejected."""
        if cand is None:
            return False
        lam, tol = self.price(cur), 0.02 * sum(self.per_g[k] * cur.g[k] for k in self.names)
        if cand.power > budget + tol:
            return False
        adj = lambda p: p.mse + lam * float(np.clip(p.power - budget, -tol, tol))  # noqa: E731
        return adj(cand) < adj(cur) * (1 - 1e-6)

    def try_direction(self, direction, bits, budget, cur: Point) -> Point | None:
        G = self.project(direction, bits, budget, cur)
        if G is None or all(abs(np.log(G[k] / cur.g[k])) < 1e-3 for k in self.names) and bits == cur.bits:
            return None
        return self.evaluate(G, bits)

    def search(self, budget: float, bits: dict, max_evals: int, opt_bits: bool, trace: list) -> Point:
        """KKT start, surrogate re-fits, then coordinate moves; every candidate is projected on the budget."""
        G = self.project(self.kkt_direction(), bits, budget, self.point0)
        if G is None:
            raise MemseInputError(
                f"power budget {budget:.4g} W cannot be met: converters and g_min floors alone draw "
                f"{self.fixed_power(bits):.4g} W (compiled: {self.point0.power:.4g} W), and a smaller G adds input "
                f"noise that raises the read power again")
        cur = self.evaluate(G, bits)
        trace.append(cur.mse)
        start_evals = self.evaluations
        for _ in range(4):                         # successive re-fits of the surrogate on the full analysis
            if self.evaluations - start_evals >= max_evals:
                break
            self.anchor(cur)
            target = self.kkt_direction()
            cand = self.try_direction(target, bits, budget, cur)
            if not self.better(cand, cur, budget) and cand is not None and self.evaluations - start_evals < max_evals:
                mid = {k: np.sqrt(target[k] * cur.g[k]) for k in self.names}   # half a step in log G
                cand = self.try_direction(mid, bits, budget, cur)
            if not self.better(cand, cur, budget):
                break
            cur = cand
            trace.append(cur.mse)
        step = 1.15
        while self.evaluations - start_evals < max_evals:      # coordinate moves in log G (and bits)
            moved = False
            for k in sorted(self.names, key=lambda n: -cur.noise[n]):     # the largest error share first
                moves = [({**cur.g, k: cur.g[k] * f}, cur.bits) for f in (step, 1 / step)]
                if opt_bits and cur.bits[k] is not None:
                    moves += [(cur.g, {**cur.bits, k: b}) for b in (cur.bits[k] - 1, cur.bits[k] + 1)
                              if self.bits_range[0] <= b <= self.bits_range[1]]
                for direction, b in moves:
                    if self.evaluations - start_evals >= max_evals:
                        break
                    cand = self.try_direction(direction, b, budget, cur)
                    if self.better(cand, cur, budget):
                        cur, moved = cand, True
                        trace.append(cur.mse)
                        break
            if not moved:
                if step < 1.05:
                    break
                step = np.sqrt(step)
        return cur

    def restore(self) -> None:
        for k, lay in self.g.layers.items():
            lay.g_range = self.saved[k][0]
            map_layer(lay, self.dev)
            lay.adc_bits = self.saved[k][1]

    def on_graph(self, G: dict[str, float], bits, refit: bool = False) -> Point:
        """Leave the graph at this configuration: re-map, re-run the analysis and the power pass on the batch."""
        from passes import analysis_pass_list
        self.apply(G, bits)
        for n, d in self.g.nodes(data=True):
            if d["kind"] == KIND_ADC:
                d["bits"] = self.g.layers[d["layer"]].adc_bits
        skip = SKIP_IN_LOOP - ({"closed_form"} if refit else set())
        for p in analysis_pass_list():
            if p.name not in skip:
                self.g = p.apply(self.g, self.ctx)
        self.g = PowerPass().apply(self.g, self.ctx)
        self.evaluations += 1
        p = self.from_graph(self.g, full=True)
        p.power = float(self.g.graph["power"]["total_w"])
        return p

    def within(self, G, bits, budget: float, run) -> Point:
        """run(G, bits) on the whole batch, then re-project until the exact power (its input noise included)
        is in [budget - tol, budget], tol = 0.5% of the crossbar's G-dependent power: the budget is met and
        (nearly) spent, so the uniform baseline and the optimum are compared at the same power."""
        p = run(G, bits)
        for i in range(4):
            tol = 5e-3 * sum(self.per_g[k] * p.g[k] for k in self.names)
            at_top = all(p.g[k] >= self.g_hi * (1 - 1e-9) for k in self.names)
            if p.power <= budget and (p.power >= budget - tol or at_top):
                break
            aim = budget - tol / 2 - (max(p.power - budget, 0.0) * 2 ** i if i else 0.0)
            G = self.project(p.g, bits, aim, p) or {k: self.g_lo for k in self.names}
            p = run(G, bits)
        return p


def _row(p: Point, name: str, power: dict | None = None) -> dict:
    return {"name": name, "g_range": p.g[name], "adc_bits": p.bits[name], "mse_share": p.shares.get(name),
            "power_w": (power or {}).get(name)}


def optimize(g: MemseGraph, ctx: PassContext, budget_w: float | None = None, target_mse: float | None = None,
             opt_adc_bits: bool = False, bits_range: tuple[int, int] = BITS_RANGE, search_batch: int = 64,
             max_evals: int = 5, output: str | None = None, refit_closed_form: bool = False) -> dict:
    """Choose G_l (and ADC bits) per layer: min MSE s.t. power <= budget_w, or min power s.t. MSE <= target_mse.

    The graph is left compiled at the optimised configuration (analysis and power re-run; the closed form is
    kept as fitted at the compiled point unless `refit_closed_form`). Returns and stores
    ``g.graph["optimization"]`` (JSON-clean): budget_w, target_mse, uniform {mse, power_w, g_range},
    optimized {mse, power_w, mc_mse}, layers [{name, g_range, adc_bits, mse_share, power_w}], before {...},
    iterations, evaluations, time_s."""
    if (budget_w is None) == (target_mse is None):
        raise MemseInputError("give exactly one of a power budget or a target MSE")
    if budget_w is not None and not budget_w > 0:
        raise MemseInputError(f"the power budget must be positive, got {budget_w}")
    t0 = time.perf_counter()
    if "power" not in g.graph:
        g = PowerPass().apply(g, ctx)
    prob = Problem(g, ctx, output, search_batch, bits_range)
    try:
        return _optimize(prob, budget_w, target_mse, opt_adc_bits, max_evals, refit_closed_form, t0)
    except BaseException:
        prob.restore()        # leave the graph as compiled
        raise


def _optimize(prob: Problem, budget_w, target_mse, opt_adc_bits, max_evals, refit_closed_form, t0) -> dict:
    g, bits_range = prob.g, prob.bits_range
    p0, trace = prob.point0, []
    before = {"mse": p0.mse, "power_w": float(g.graph["power"]["total_w"]),
              "layers": [_row(p0, k, prob.per_knob(g.graph["power"]["layers"])) for k in prob.names]}
    ones = {k: 1.0 for k in prob.names}
    full = lambda G, b: prob.evaluate(G, b, full=True)  # noqa: E731
    if budget_w is not None:
        Gu = prob.project(ones, p0.bits, budget_w, p0)
        uniform = prob.within(Gu, p0.bits, budget_w, full) if Gu else None
        uniform = uniform if uniform and uniform.power <= budget_w * (1 + 1e-9) else None
        bits = prob.greedy_bits(budget_w) if opt_adc_bits else dict(p0.bits)
        best = prob.search(budget_w, bits, max_evals, opt_adc_bits, trace)
        chosen = (best.g, best.bits, budget_w)
    else:
        uniform = _uniform_for_target(prob, target_mse, full)
        chosen = _min_power(prob, target_mse, opt_adc_bits, max_evals, trace, full)
    final = prob.within(chosen[0], chosen[1], chosen[2], lambda G, b: prob.on_graph(G, b, refit_closed_form))
    fallback = uniform is not None and (final.mse > uniform.mse if budget_w is not None
                                        else final.power > uniform.power or final.mse > target_mse)
    if fallback:    # the search never returns worse than the baseline it is compared with
        final = prob.on_graph(uniform.g, uniform.bits, refit_closed_form)
    power_layers = prob.per_knob(g.graph["power"]["layers"])
    result = {
        "objective": "min_mse" if budget_w is not None else "min_power", "budget_w": budget_w,
        "target_mse": target_mse, "output": prob.out, "g_lo": prob.g_lo, "g_max": prob.g_hi,
        "adc_bits_range": list(bits_range) if opt_adc_bits else None,
        "uniform": {"mse": uniform.mse if uniform else None, "power_w": uniform.power if uniform else None,
                    "g_range": float(np.mean(list(uniform.g.values()))) if uniform else None},
        "optimized": {"mse": final.mse, "power_w": final.power, "mc_mse": None, "fallback_to_uniform": fallback,
                      "met": final.mse <= target_mse if target_mse is not None else final.power <= budget_w * (1 + 1e-9)},
        "layers": [_row(final, k, power_layers) for k in prob.names],
        "before": before, "search_trace": trace, "search_batch": prob.batch_sub,
        "iterations": len(trace), "evaluations": prob.evaluations, "time_s": time.perf_counter() - t0}
    g.graph["optimization"] = result
    return result


def _uniform_for_target(prob: Problem, target: float, full) -> Point | None:
    """Smallest single G meeting the target MSE: secant steps on mse = rest + a / G^2 (full analysis)."""
    p, best = prob.point0, None
    for _ in range(4):
        a = sum(p.noise.values()) * float(np.mean(list(p.g.values()))) ** 2
        rest = p.mse - sum(p.noise.values())
        G = prob.g_hi if target <= rest else float(np.clip(np.sqrt(a / (target - rest)), prob.g_lo, prob.g_hi))
        if best is not None and abs(G / best.g[prob.names[0]] - 1) < 1e-3:
            break
        G = min(G * 1.01, prob.g_hi) if p.mse > target else G     # aim just inside the target
        p = full({k: G for k in prob.names}, prob.point0.bits)
        if p.mse <= target and (best is None or p.power < best.power):
            best = p
        if p.mse <= target and p.mse >= target * 0.98:
            break
    return best


def _min_power(prob: Problem, target: float, opt_bits: bool, max_evals: int, trace: list, full):
    """Dual: the least budget whose optimum meets the target. First budget from the surrogate, then the
    primal search there, its full analysis, and a corrected budget (noise part of the MSE ~ 1/(P - fixed)^2)
    until the MSE lands in [0.98 target, target]; the cheapest configuration meeting the target wins."""
    lo_b, hi_b = prob.bits_range
    bits_lo = {k: lo_b if opt_bits else prob.point0.bits[k] for k in prob.names}
    bits_hi = {k: hi_b if opt_bits else prob.point0.bits[k] for k in prob.names}
    p_min = prob.fixed_power(bits_lo) + sum(prob.per_g[k] * prob.g_lo for k in prob.names)
    p_max = prob.fixed_power(bits_hi) + sum(prob.per_g[k] * prob.g_hi for k in prob.names)
    done: list[tuple[Point, float]] = []

    def value(budget):
        bits = prob.greedy_bits(budget) if opt_bits else dict(prob.point0.bits)
        return prob.surrogate_best(bits, budget), bits
    lo, hi = p_min * 1.0001, p_max           # first budget: where the surrogate optimum meets the target
    if value(hi)[0] <= target:
        for _ in range(40):
            mid = np.sqrt(lo * hi)
            lo, hi = (lo, mid) if value(mid)[0] <= target else (mid, hi)
    budget = hi
    for _ in range(4):
        bits = value(budget)[1]
        try:
            best = prob.search(budget, bits, max(2, max_evals // 2), opt_bits, trace)
        except MemseInputError:       # below what the input noise allows
            budget = min(budget * 1.02, p_max)
            continue
        p = full(best.g, best.bits)
        done.append((p, budget))
        if target * 0.98 <= p.mse <= target or budget >= p_max:
            break
        # next budget from the measured point: the conductance-noise part of the MSE ~ 1 / (budget - fixed)^2
        fixed, rest = prob.fixed_power(bits), p.mse - sum(p.noise.values())
        if target <= rest:
            budget = p_max
            continue
        ratio = np.sqrt(max(p.mse - rest, 1e-300) / (target - rest)) * (1.01 if p.mse > target else 1.0)
        budget = float(min(fixed + (budget - fixed) * ratio, p_max))
    if not done:
        raise MemseInputError(f"no configuration found for the target MSE {target:.4g}")
    ok = [d for d in done if d[0].mse <= target]
    p, budget = min(ok, key=lambda d: d[0].power) if ok else min(done, key=lambda d: d[0].mse)
    return p.g, p.bits, p.power * (1 + 1e-6)


class OptimizePass(Pass):
    """Runs `optimize` when ctx.options has "power_budget" or "target_mse" (and "opt_adc_bits")."""
    name = "optimize"

    def apply(self, g: MemseGraph, ctx: PassContext) -> MemseGraph:
        o = ctx.options
        if o.get("power_budget") is None and o.get("target_mse") is None:
            return g
        optimize(g, ctx, o.get("power_budget"), o.get("target_mse"), bool(o.get("opt_adc_bits")))
        return g
