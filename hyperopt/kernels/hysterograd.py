"""HysteroGrad's kernels.  GLSL twins: shaders/natural-gradient.glsl, shaders/hysteresis-control.glsl,
shaders/hysteresis-gate.glsl.

One step is the program [natural_gradient, hysteresis_control, hysteresis_gate]:

* ``natural_gradient`` (elementwise) updates the metric ``G`` and sums ``c**2`` per parameter, with
  ``c = g / (G**metric_power + eps)``;
* ``hysteresis_control`` (control) turns those sums into each group's norm, clip factor, internal
  time, temperature, energy, barrier and Liquid/Frozen decision, kept in the control array;
* ``hysteresis_gate`` (elementwise) applies ``p -= lr * k * c`` where the group is Liquid.  It
  recomputes ``c`` from ``g`` and the updated ``G`` (the same operations, so the same value) rather
  than storing it: one buffer less to write and read.

The scalar logic runs in float32, as upstream keeps tau, T and E in float32 tensors.
"""
import math

import numpy as np

from .core import CONTROL, TILE, dot_sum, fused_helper, kernel, lanes_add, tile_terms

# Control array: one record of CTL_STRIDE float32 per parameter group (the GLSL #defines the same).
CTL_TAU, CTL_TEMP, CTL_ENERGY, CTL_NORM, CTL_BARRIER, CTL_LIQUID, CTL_CLIP, CTL_STARTED = range(8)
CTL_STRIDE = 8

_F32 = np.float32
_CLIP_EPS = _F32(1e-6)       # upstream: grad_clip / (n + 1e-6)
_ENERGY_EPS = _F32(1e-8)     # upstream: h * (E + 1e-8)


def metric_root(metric, power):
    """``G ** power``; 0.5 and 1.0 take the exact paths (sqrt, identity) so the default is bit-faithful.

    Other powers use the C library's ``pow`` in double, as the fused body does: NumPy's own SIMD
    ``power`` (AVX-512 machines) differs from it in the last bit for a few percent of elements.
    float32 metrics take NumPy's double ``power`` rounded to float32 (its last-bit differences from
    ``pow`` vanish in that rounding); float64 ones call ``math.pow`` per element (slow, exact)."""
    if power == 0.5:
        return np.sqrt(metric)
    if power == 1.0:
        return metric.copy()
    if metric.dtype == np.float32:
        return np.power(metric.astype(np.float64), float(power)).astype(np.float32)
    return _libm_pow(metric, float(power)).astype(metric.dtype)


_libm_pow = np.frompyfunc(math.pow, 2, 1)


def precondition(grad, metric, eps, metric_power):
    denom = metric_root(metric, metric_power)
    denom += eps
    return grad / denom


@fused_helper
def metric_root_fused(m, power):
    """``metric_root`` of one element, widened to double (round it back to the metric's dtype):
    sqrt in the element's own precision, other powers with the C library's ``pow`` on doubles."""
    if power == 0.5:
        return np.float64(np.sqrt(m))
    if power == 1.0:
        return np.float64(m)
    return np.float64(m) ** np.float64(power)


def natural_gradient_fused(lo, hi, bufs, s, ctl, lanes):
    """Fused body of ``natural_gradient``."""
    grad, metric = bufs
    beta, metric_gain, eps, metric_power = s
    terms = tile_terms(1)
    for start in range(lo, hi, TILE):
        stop = min(start + TILE, hi)
        for i in range(start, stop):
            g = grad[i]
            m = metric[i] * beta + (metric_gain * g) * g
            metric[i] = m
            c = np.float64(g / (metric.dtype.type(metric_root_fused(m, metric_power)) + eps))
            terms[0, i - start] = c * c
        lanes_add(lanes, 0, terms, stop - start)


@kernel("natural_gradient",
        buffers=("grad", "metric"),
        scalars=("beta", "metric_gain", "eps", "metric_power"),
        sums=("sq_norm",),
        fused=natural_gradient_fused)
def natural_gradient(grad, metric, *, beta, metric_gain, eps, metric_power):
    """``G <- beta*G + ((1-beta)*metric_scale)*g*g`` (``metric_gain`` derived on the host in double);
    returns ``sum(c**2)`` with ``c = g / (G**metric_power + eps)``."""
    t = metric_gain * grad
    t *= grad
    metric *= beta
    metric += t
    c = precondition(grad, metric, eps, metric_power)
    return (dot_sum(c, c),)


def hysteresis_control_fused(ctl, sums, table):
    """Fused body of ``hysteresis_control``: the twin's float32 operations, group by group, with
    Python's ``min``/``max`` written out (``min(a, b)`` is ``b`` only when ``b < a``)."""
    one, zero = np.float32(1), np.float32(0)
    for g in range(min(table.shape[0], ctl.shape[0] // CTL_STRIDE)):
        if np.float32(table[g, 2]) == 0:            # no gradient in this group this step
            continue
        lr, clip, cooling, beta, one_minus_beta, kappa, scale, adaptive, freeze_below, thaw_above = (
            np.float32(table[g, 3]), np.float32(table[g, 4]), np.float32(table[g, 5]), np.float32(table[g, 6]),
            np.float32(table[g, 7]), np.float32(table[g, 8]), np.float32(table[g, 9]), np.float32(table[g, 10]),
            np.float32(table[g, 11]), np.float32(table[g, 12]))
        sq = zero
        for s in range(int(np.float32(table[g, 0])), int(np.float32(table[g, 1]))):
            sq = sq + np.float32(sums[s, 0])
        n = np.sqrt(sq)
        k = one
        if clip > 0:
            ratio = clip / (n + _CLIP_EPS)
            k = ratio if ratio < one else one
        n_eff = n * k
        r = g * CTL_STRIDE
        tau = ctl[r + CTL_TAU] + lr * n_eff
        temp = ctl[r + CTL_TEMP] * cooling
        energy = beta * ctl[r + CTL_ENERGY] + one_minus_beta * n_eff
        bounded = temp if temp > zero else zero
        bounded = one if one < bounded else bounded
        h = kappa * np.sqrt(tau) * (one - bounded) * scale
        if adaptive != 0:
            h = h * (energy + _ENERGY_EPS)
        threshold = (freeze_below if ctl[r + CTL_LIQUID] != 0 else thaw_above) * h
        ctl[r + CTL_TAU], ctl[r + CTL_TEMP], ctl[r + CTL_ENERGY] = tau, temp, energy
        ctl[r + CTL_NORM], ctl[r + CTL_BARRIER], ctl[r + CTL_CLIP] = n_eff, h, k
        ctl[r + CTL_LIQUID] = 1.0 if n_eff > threshold else 0.0


@kernel("hysteresis_control", kind=CONTROL,
        scalars=("seg_begin", "seg_end", "has_grad", "lr", "clip", "cooling_rate", "beta", "one_minus_beta",
                 "stiffening", "hysteresis_scale", "adaptive", "freeze_below", "thaw_above"),
        fused=hysteresis_control_fused)
def hysteresis_control(ctl, sums, table):
    """Per-group scalar logic.  Row ``g`` of the table describes group ``g`` (there are never more
    groups than segments): its segment range, whether any of its parameters has a gradient this
    step, and its hyperparameters.  ``clip`` 0 means no clipping.  The decision is a two-threshold
    trigger on the barrier ``h``: a Liquid group stays Liquid while ``n > freeze_below*h``, a Frozen
    group thaws once ``n > thaw_above*h``; with both at 1 it is upstream's single comparison."""
    rec = ctl.reshape(-1, CTL_STRIDE)
    for g, row in enumerate(table[: len(rec)]):
        (begin, end, has_grad, lr, clip, cooling, beta, one_minus_beta, kappa, scale, adaptive,
         freeze_below, thaw_above) = (_F32(v) for v in row)
        if has_grad == 0:
            continue
        sq = _F32(0)
        for s in range(int(begin), int(end)):
            sq = _F32(sq + _F32(sums[s, 0]))
        n = np.sqrt(sq)
        k = min(_F32(1), clip / (n + _CLIP_EPS)) if clip > 0 else _F32(1)
        n_eff = n * k
        r = rec[g]
        tau = r[CTL_TAU] + lr * n_eff
        temp = r[CTL_TEMP] * cooling
        energy = beta * r[CTL_ENERGY] + one_minus_beta * n_eff
        h = kappa * np.sqrt(tau) * (_F32(1) - min(max(temp, _F32(0)), _F32(1))) * scale
        if adaptive != 0:
            h = h * (energy + _ENERGY_EPS)
        threshold = (freeze_below if r[CTL_LIQUID] != 0 else thaw_above) * h
        r[CTL_TAU], r[CTL_TEMP], r[CTL_ENERGY] = tau, temp, energy
        r[CTL_NORM], r[CTL_BARRIER], r[CTL_CLIP] = n_eff, h, k
        r[CTL_LIQUID] = 1.0 if n_eff > threshold else 0.0


def hysteresis_gate_fused(lo, hi, bufs, s, ctl, lanes):
    """Fused body of ``hysteresis_gate``."""
    param, grad, metric = bufs
    lr, eps, metric_power, ctl_base = s
    base = int(ctl_base)
    if ctl[base + CTL_LIQUID] == 0:
        return
    step = lr * ctl[base + CTL_CLIP]
    for i in range(lo, hi):
        c = grad[i] / (metric.dtype.type(metric_root_fused(metric[i], metric_power)) + eps)
        param[i] = param[i] - c * step


@kernel("hysteresis_gate",
        buffers=("param", "grad", "metric"),
        scalars=("lr", "eps", "metric_power", "ctl_base"),
        ctl=True, fused=hysteresis_gate_fused)
def hysteresis_gate(param, grad, metric, *, lr, eps, metric_power, ctl_base, ctl, segment):
    """``p <- p - (lr*k)*c`` if the parameter's group (record at ``ctl_base``) is Liquid, else nothing."""
    base = int(ctl_base)
    if ctl[base + CTL_LIQUID] == 0:
        return None
    c = precondition(grad, metric, eps, metric_power)
    c *= lr * ctl[base + CTL_CLIP]
    param -= c
    return None
