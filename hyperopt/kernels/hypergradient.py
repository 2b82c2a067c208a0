"""Hypergradient AdamW's two extra kernels; GLSL twins: shaders/hypergradient-reduce.glsl and
shaders/hypergradient-direction.glsl.

A step runs ``hypergradient_reduce`` alone (its sums decide the learning rate and beta1 on the
host), then ``adamw_update`` followed by ``hypergradient_direction``, which stores what the next
step reads: the Adam direction (and its squared norm) and the gradient EMA of the surprise signal.
The reduction only reads, so a step refused after it (hyperparameters the sums made non-finite,
say) has changed nothing.  Sums follow the per-segment sums contract (``core``): float64
products, added lane by lane per block; the fused bodies add the same terms.
"""
import numpy as np

from .core import TILE, dot_sum, kernel, lanes_add, tile_terms


def hypergradient_reduce_fused(lo, hi, bufs, s, ctl, lanes):
    """Fused body of ``hypergradient_reduce``: a tile at a time, one straight loop (vectorised)
    for each combination of the sums that are on, then the tile's terms added to the lanes."""
    grad, direction, exp_avg, grad_ema = bufs
    with_momentum, with_surprise = s
    terms = tile_terms(4)
    for start in range(lo, hi, TILE):
        stop = min(start + TILE, hi)
        if with_surprise != 0 and with_momentum != 0:
            for i in range(start, stop):
                g = grad[i]
                g64 = np.float64(g)
                err = np.float64(g - grad_ema[i])
                terms[0, i - start] = g64 * np.float64(direction[i])
                terms[1, i - start] = g64 * np.float64(exp_avg[i])
                terms[2, i - start] = g64 * g64
                terms[3, i - start] = err * err
        elif with_surprise != 0:
            for i in range(start, stop):
                g = grad[i]
                g64 = np.float64(g)
                err = np.float64(g - grad_ema[i])
                terms[0, i - start] = g64 * np.float64(direction[i])
                terms[2, i - start] = g64 * g64
                terms[3, i - start] = err * err
        elif with_momentum != 0:
            for i in range(start, stop):
                g64 = np.float64(grad[i])
                terms[0, i - start] = g64 * np.float64(direction[i])
                terms[1, i - start] = g64 * np.float64(exp_avg[i])
        else:
            for i in range(start, stop):
                terms[0, i - start] = np.float64(grad[i]) * np.float64(direction[i])
        lanes_add(lanes, 0, terms, stop - start)
        if with_momentum != 0:
            lanes_add(lanes, 1, terms, stop - start)
        if with_surprise != 0:
            lanes_add(lanes, 2, terms, stop - start)
            lanes_add(lanes, 3, terms, stop - start)


@kernel("hypergradient_reduce",
        buffers=("grad", "direction", "exp_avg", "grad_ema"),
        scalars=("with_momentum", "with_surprise"),
        sums=("grad_dot_direction", "grad_dot_exp_avg", "grad_sq", "surprise_error_sq"),
        fused=hypergradient_reduce_fused)
def hypergradient_reduce(grad, direction, exp_avg, grad_ema, *, with_momentum, with_surprise):
    """The dot products behind the hypergradients, and the surprise signal's error; reads only.

    Always ``<g, d>`` (d: the previous step's direction).  With ``with_momentum``, ``<g, m>`` (m:
    the first moment before this step's update, i.e. the previous step's).  With
    ``with_surprise``, ``|g|^2`` and ``|g - ema|^2`` (the EMA as the previous step left it;
    ``hypergradient_direction`` moves it on).  Sums that are off are 0, and buffers that are off
    are not read, so the caller may bind a placeholder for them.
    """
    gd = dot_sum(grad, direction)
    gm = dot_sum(grad, exp_avg) if with_momentum else 0.0
    if not with_surprise:
        return gd, gm, 0.0, 0.0
    err = grad - grad_ema
    return gd, gm, dot_sum(grad, grad), dot_sum(err, err)


def hypergradient_direction_fused(lo, hi, bufs, s, ctl, lanes):
    """Fused body of ``hypergradient_direction``, a tile at a time: the direction, then the EMA in
    a loop of its own (each loop over few buffers, so each vectorises; the tile stays in cache)."""
    exp_avg, exp_avg_sq, max_exp_avg_sq, direction, grad, grad_ema = bufs
    bias_correction1, bias_correction2, eps, amsgrad, with_surprise, ema_decay, ema_rate = s
    second = max_exp_avg_sq if amsgrad != 0 else exp_avg_sq
    terms = tile_terms(1)
    for start in range(lo, hi, TILE):
        stop = min(start + TILE, hi)
        for i in range(start, stop):
            d = (exp_avg[i] / bias_correction1) / (np.sqrt(second[i] / bias_correction2) + eps)
            direction[i] = d
            d64 = np.float64(d)
            terms[0, i - start] = d64 * d64
        lanes_add(lanes, 0, terms, stop - start)
        if with_surprise != 0:
            for i in range(start, stop):
                grad_ema[i] = grad_ema[i] * ema_decay + ema_rate * grad[i]


@kernel("hypergradient_direction",
        buffers=("exp_avg", "exp_avg_sq", "max_exp_avg_sq", "direction", "grad", "grad_ema"),
        scalars=("bias_correction1", "bias_correction2", "eps", "amsgrad", "with_surprise", "ema_decay", "ema_rate"),
        sums=("direction_sq",),
        fused=hypergradient_direction_fused)
def hypergradient_direction(exp_avg, exp_avg_sq, max_exp_avg_sq, direction, grad, grad_ema, *, bias_correction1,
                            bias_correction2, eps, amsgrad, with_surprise, ema_decay, ema_rate):
    """What the next step reads: the Adam direction without weight decay,
    ``d = m_hat / (sqrt(v_hat) + eps)``, with ``|d|^2``; and, with ``with_surprise``, the gradient
    EMA moved on, ``ema <- ema_decay*ema + ema_rate*g`` (``ema_decay=0, ema_rate=1`` starts it at g).

    ``m_hat = m / (1 - beta1^t)``, ``v_hat = v / (1 - beta2^t)`` (v: ``max_exp_avg_sq`` when
    ``amsgrad``), in the reference implementation's order of operations; runs after
    ``adamw_update``, so m and v are this step's moments.  The EMA is written here, in the step's
    last run, rather than by the reduction that reads it: nothing can refuse the step after this
    run.  Without ``with_surprise``, ``grad_ema`` is not touched (it may be a placeholder).
    """
    second = max_exp_avg_sq if amsgrad else exp_avg_sq
    denom = second / bias_correction2
    np.sqrt(denom, out=denom)
    denom += eps
    np.divide(exp_avg, bias_correction1, out=direction)
    direction /= denom
    if with_surprise:
        grad_ema *= ema_decay
        grad_ema += ema_rate * grad
    return (dot_sum(direction, direction),)
