"""Moments of one lowered crossbar layer (DESIGN §4-5), vectorised over samples, positions and tiles.

DAC -> tiles -> ADCs -> adder, with inputs x ~ (mu, v) independent of the layer's own conductance noise:
    effective weight  w = (G+_dev - G-_dev) / c,  G_dev = max(G_target + e, 0),  e ~ N(0, s^2)
    partial sum       E[ps] = W_bar mu;   Var[ps] = W_bar^2 v + S (mu^2 + v) + R (mu^2 + v)
with W_bar, S the exact mean and variance of the clipped differential pair, R = 2 sigma_read^2 / c^2 the
read noise (fresh per MVM, not clipped), and each quantizer's Gaussian moments (memse_compiler.ir.stats).
The symbolic templates (passes/symbolic.py) state the same formulas; they are evaluated through them.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cached_property

import numpy as np

from memse_compiler.ir import stats
from memse_compiler.ir.crossbar import CrossbarLayer, converter_levels
from memse_compiler.ir.ops.base import cast_floats, cast_once


def programming_std(g_target, sigma: float, relative) -> np.ndarray:
    """A device's programming-noise std (DESIGN §4.4): sigma plus the state-dependent term, relative * G."""
    return np.sqrt(sigma ** 2 + (relative * g_target) ** 2)


def device_std(g_target: np.ndarray, device) -> np.ndarray:
    pn = device.programming_noise
    if pn.relative == 0:
        return np.full_like(g_target, pn.sigma)
    return programming_std(g_target, pn.sigma, pn.relative)


def weight_statistics(layer: CrossbarLayer, device) -> tuple[np.ndarray, np.ndarray]:
    """Per-weight mean W_bar and variance S (G, O, Jb) of the programmed effective weight. With quantized
    levels a pair's conductances are (g_min + k step, g_min) or (g_min, g_min + k step): the statistics are
    evaluated once per pair of levels and scale group (2L - 1 of them) and gathered, the same numbers as
    per weight (ResNet-18: 11 M weights, 1.8 s per analysis pass before)."""
    from passes.symbolic import weight_stat_function
    fn = weight_stat_function(device.programming_noise.clip_at_zero)
    pairs = level_pairs(layer, device.conductance.levels)
    if pairs is None:
        return fn(layer.g_plus, layer.g_minus, device_std(layer.g_plus, device), device_std(layer.g_minus, device),
                  layer.scale_c)
    g_plus, g_minus, index = pairs
    w_bar, w_var = (np.broadcast_to(a, g_plus.shape[:2] + (g_plus.shape[2],)) for a in
                    fn(g_plus, g_minus, device_std(g_plus, device), device_std(g_minus, device), layer.scale_c))
    shape = layer.g_plus.shape
    take = lambda a: np.take_along_axis(np.broadcast_to(a, shape[:2] + a.shape[2:]), index, axis=2)  # noqa: E731
    return take(w_bar), take(w_var)


def level_pairs(layer: CrossbarLayer, levels: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(G+ and G- of every pair of levels (.., 2L - 1) per scale group, each weight's index into them (G, O, Jb)),
    or None when the conductances are not quantized (or not as DESIGN §4.2-4.3 maps them)."""
    if not levels:
        return None
    step = layer.g_range / (levels - 1)                              # per scale group, as the mapping quantizes
    if np.size(step) * (2 * levels - 1) * 4 > layer.g_plus.size:
        return None                  # too many levels and scale groups for the table to pay
    safe = np.where(step > 0, step, 1.0)
    k_plus = np.rint((layer.g_plus - layer.g_min) / safe).astype(np.int64)
    k_minus = np.rint((layer.g_minus - layer.g_min) / safe).astype(np.int64)
    if np.any(np.minimum(k_plus, k_minus) != 0):
        return None                  # not a differential pair with one side at g_min
    k = np.arange(1 - levels, levels, dtype=np.float64)              # k+ - k-
    g_plus = layer.g_min + np.maximum(k, 0.0) * np.where(step > 0, step, 0.0)
    g_minus = layer.g_min + np.maximum(-k, 0.0) * np.where(step > 0, step, 0.0)
    return g_plus, g_minus, k_plus - k_minus + (levels - 1)


@dataclass
class CrossbarMoments:
    """Everything the forward pass computes for a layer, kept for the backward (sensitivity) pass."""
    mean_in: np.ndarray           # DAC input moments (the layer's input tensor)
    var_in: np.ndarray
    dac_mean: np.ndarray          # DAC output (tensor shaped)
    dac_var: np.ndarray
    dac_gain: np.ndarray | float
    dac_resid: np.ndarray | float
    mu_vec: np.ndarray            # crossbar input vectors (N, P, G, Jb) after the DAC (bias row = 1)
    v_vec: np.ndarray
    w_bar: np.ndarray             # (G, O, Jb)
    w_var: np.ndarray             # S
    read_var: np.ndarray          # R, broadcastable to (G, O, Jb)
    ps_mean: np.ndarray           # (N, P, G, R, O) before the ADC
    ps_var: np.ndarray
    adc_mean: np.ndarray          # after the ADC
    adc_var: np.ndarray
    adc_gain: np.ndarray | float
    # variance injected per output (N, P, G, O) by source beyond the linear response, summed over row tiles
    inj_programming: np.ndarray   # a_gain^2 * S v  (second order in the noise)
    inj_read: np.ndarray          # a_gain^2 * R (mu^2 + v)
    inj_adc: np.ndarray           # the ADCs' quantization residual
    out_mean: np.ndarray
    out_var: np.ndarray
    read_unit: np.ndarray         # inj_read per unit sigma_r^2 (N, P, G, O)

    # which sources the layer has: asked by every backward sweep (hundreds in the refined mode), computed once
    @cached_property
    def has_programming(self) -> bool:
        return bool(np.any(self.w_var))

    @cached_property
    def has_read(self) -> bool:
        return bool(np.any(self.inj_read))

    @cached_property
    def has_adc(self) -> bool:
        return bool(np.any(self.inj_adc))

    @cached_property
    def has_dac(self) -> bool:
        return bool(np.any(self.dac_resid))

    # what a backward sweep reads (passes/sensitivity.layer_backward)
    SWEEP_FIELDS = ("mu_vec", "w_bar", "w_var", "adc_gain", "inj_programming", "inj_read", "inj_adc", "read_unit",
                    "dac_gain", "dac_resid")

    def in_dtype(self, dtype) -> "CrossbarMoments":
        """These moments with the arrays a backward sweep reads in `dtype`, made once (the rest shared)."""
        return cast_once(self, dtype, lambda: replace(self, **{f: cast_floats(getattr(self, f), dtype)
                                                               for f in self.SWEEP_FIELDS}))


def lattice_dac_moments(layer: CrossbarLayer, prev: CrossbarLayer, prev_cm: "CrossbarMoments",
                        max_half_width: int = 64) -> tuple[np.ndarray, np.ndarray] | None:
    """Exact DAC moments when the DAC input is relu(ADC output) of a one-row-tile layer: that signal lives
    on the ADC's lattice, and when its spacing is near a multiple of the DAC step the DAC error aliases
    (far from the uniform step^2/12). E[f(code)] over the ADC codes' probabilities under the Gaussian
    partial sum, with f(k) = q_dac(max(k * step_adc, 0)). None when the window would be too wide."""
    mu = prev_cm.ps_mean[:, :, :, 0, :]                        # N, P, G, O
    sd = np.sqrt(np.maximum(prev_cm.ps_var[:, :, :, 0, :], 0.0))
    step_a = prev.adc_steps()[:, 0, :]                         # G, O
    qa_min, qa_max = converter_levels(prev.adc_bits, True)
    h = int(np.ceil(6 * np.max(sd / step_a, initial=0.0))) + 1
    if h > max_half_width:
        return None
    kc = np.round(mu / step_a)
    k = kc[..., None] + np.arange(-h, h + 1)                   # candidate codes
    z_hi = ((k + 0.5) * step_a[..., None] - mu[..., None])
    z_lo = ((k - 0.5) * step_a[..., None] - mu[..., None])
    pos = sd[..., None] > 0
    s = np.where(pos, sd[..., None], 1.0)
    p = np.where(pos, stats.norm_cdf(z_hi / s) - stats.norm_cdf(z_lo / s), (k == kc[..., None]).astype(float))
    p[..., 0] += np.where(pos[..., 0], stats.norm_cdf(z_lo[..., 0] / s[..., 0]), 0.0)     # tails fold onto
    p[..., -1] += np.where(pos[..., 0], stats.norm_sf(z_hi[..., -1] / s[..., 0]), 0.0)   # the window ends
    value = np.maximum(np.clip(k, qa_min, qa_max) * step_a[..., None], 0.0)
    qd_min, qd_max = converter_levels(layer.dac_bits, False)
    f = layer.dac_step() * np.clip(np.round(value / layer.dac_step()), qd_min, qd_max)
    m1 = (p * f).sum(-1)
    m2 = (p * (f - m1[..., None]) ** 2).sum(-1)
    shape = prev_cm.out_mean.shape
    return prev.geometry.from_vectors(m1, shape), prev.geometry.from_vectors(m2, shape)


def crossbar_moments(layer: CrossbarLayer, device, mean: np.ndarray, var: np.ndarray,
                     pre_relu: tuple[np.ndarray, np.ndarray] | None = None,
                     lattice: tuple | None = None) -> CrossbarMoments:
    """`pre_relu`: the moments of Z when the layer's input is relu(Z). An unsigned DAC then sees
    q(relu(Z)) = q_unsigned(Z) exactly, so its moments come from the Gaussian Z rather than from a
    Gaussian stand-in for the rectified signal (whose mass below 0 the DAC would wrongly clip)."""
    from passes.symbolic import partial_sum_function
    shape = mean.shape
    if layer.dac_bits is not None:
        qmin, qmax = converter_levels(layer.dac_bits, layer.dac_signed)
        if pre_relu is not None and not layer.dac_signed:
            zm, zv = pre_relu
            m_d, v_d, g_z = stats.quantizer_moments(zm, zv, layer.dac_step(), qmin, qmax)
            relu_gain = stats.relu_moments(zm, zv).gain
            # gain w.r.t. the relu output, so that the backward chain (relu gain x this) is dq/dz
            g_d = np.where(relu_gain > 1e-12, g_z / np.maximum(relu_gain, 1e-12), 0.0)
            exact = lattice_dac_moments(layer, *lattice) if lattice is not None else None
            if exact is not None and exact[0].shape == m_d.shape:
                m_d, v_d = exact
        else:
            m_d, v_d, g_d = stats.quantizer_moments(mean, var, layer.dac_step(), qmin, qmax)
        dac_resid = np.maximum(v_d - g_d ** 2 * var, 0.0)
    else:
        m_d, v_d, g_d, dac_resid = mean, var, 1.0, 0.0
    mu_vec = layer.vectors(m_d)
    v_vec = layer.vectors(v_d, bias_value=0.0)
    w_bar, w_var = weight_statistics(layer, device)
    read_var = 2 * device.read_noise.sigma ** 2 / layer.scale_c ** 2               # per output: (G, O, 1)
    read_out = np.swapaxes(read_var, -1, -2) if np.ndim(read_var) == 3 else read_var   # (G, 1, O)
    ps_mean, ps_var, prog2, tiles = partial_sum_function()(layer.partial_sums, layer.tile_sums, w_bar, w_var,
                                                           read_out, mu_vec, v_vec)
    if layer.adc_bits is not None:
        qmin, qmax = converter_levels(layer.adc_bits, True)
        a_mean, a_var, a_gain = stats.quantizer_moments(ps_mean, ps_var, layer.adc_steps(), qmin, qmax)
    else:
        a_mean, a_var, a_gain = ps_mean, ps_var, 1.0
    # what the backward pass does not see through the linear response: S v, read noise, ADC residual. Summed
    # over row tiles (every row tile of an output has the same sensitivity), in place: on ResNet-sized layers
    # every fresh temporary costs more than the arithmetic.
    g2 = np.square(a_gain)
    # read-noise variance per unit sigma_r^2: 2 / c^2 times the tiles' sums of E[x^2] (the closed form's unit)
    inv_c2 = np.broadcast_to(1.0 / layer.scale_c ** 2, (layer.groups, layer.outs, 1))[..., 0]        # G, O
    read_unit = 2.0 * np.einsum("npgro,npgr->npgo", np.broadcast_to(g2, ps_var.shape), tiles[..., 0]) * inv_c2
    inj_read = device.read_noise.sigma ** 2 * read_unit
    own = prog2.shape == ps_var.shape and prog2 is not ps_var      # prog2's buffer is free after this
    inj_prog = np.multiply(g2, prog2, out=prog2 if own else None).sum(axis=3)
    inj_adc = np.multiply(g2, ps_var, out=prog2 if own else None)
    np.subtract(a_var, inj_adc, out=inj_adc)
    inj_adc = np.maximum(inj_adc, 0.0, out=inj_adc).sum(axis=3)
    out_mean = layer.combine(a_mean, shape)
    out_var = layer.geometry.from_vectors(a_var.sum(axis=3), shape)
    return CrossbarMoments(mean, var, m_d, v_d, g_d, dac_resid, mu_vec, v_vec, w_bar, w_var, read_var, ps_mean, ps_var,
                           a_mean, a_var, a_gain, inj_prog, inj_read, inj_adc, out_mean, out_var, read_unit)


def propagated_variance(layer: CrossbarLayer, cm: CrossbarMoments, second_order: bool = True) -> np.ndarray:
    """The part of the output variance (tensor layout) that the layer's input error makes: a_gain^2 (W_bar^2 v
    + S v) over the row tiles, i.e. everything but the layer's own first-order programming noise, read noise
    and ADC residual. The backward pass through a random chip carries exactly this part to the upstream
    sources; the refinement rescales only it, the rest being exact per element. second_order=False: without
    S v, which a backward without the chip injects at the layer itself."""
    prop = (np.square(cm.adc_gain) * layer.partial_sums(cm.v_vec, np.square(cm.w_bar))).sum(axis=3)
    return layer.geometry.from_vectors(prop + cm.inj_programming if second_order else prop, cm.mean_in.shape)

