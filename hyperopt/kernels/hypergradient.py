"""Hypergradient AdamW's two extra kernels; GLSL twins: shaders/hypergradient-reduce.glsl and
shaders/hypergradient-direction.glsl.

A step runs ``hypergradient_reduce`` alone (its sums decide the learning rate and beta1 on the
host), then ``adamw_update`` followed by ``hypergradient_direction``, which stores the Adam
direction for the next step and sums its squared norm.  Sums of a chunk are float32, like the
device's per-workgroup partials; the backend adds chunks and segments in float64.
"""
import numpy as np

from .core import kernel


@kernel("hypergradient_reduce",
        buffers=("grad", "direction", "exp_avg", "grad_ema"),
        scalars=("with_momentum", "with_surprise", "ema_decay", "ema_rate"),
        sums=("grad_dot_direction", "grad_dot_exp_avg", "grad_sq", "surprise_error_sq"))
def hypergradient_reduce(grad, direction, exp_avg, grad_ema, *, with_momentum, with_surprise,
                         ema_decay, ema_rate):
    """The dot products behind the hypergradients, and the surprise signal's error.

    Always ``<g, d>`` (d: the previous step's direction).  With ``with_momentum``, ``<g, m>`` (m:
    the first moment before this step's update, i.e. the previous step's).  With
    ``with_surprise``, ``|g|^2`` and ``|g - ema|^2``, then ``ema <- ema_decay*ema + ema_rate*g``
    (``ema_decay=0, ema_rate=1`` starts the average at g).  Sums that are off are 0, and buffers
    that are off are neither read nor written, so the caller may bind a placeholder for them.
    """
    gd = float(np.vdot(grad, direction))
    gm = float(np.vdot(grad, exp_avg)) if with_momentum else 0.0
    if not with_surprise:
        return gd, gm, 0.0, 0.0
    err = grad - grad_ema
    sums = gd, gm, float(np.vdot(grad, grad)), float(np.vdot(err, err))
    grad_ema *= ema_decay
    grad_ema += ema_rate * grad
    return sums


@kernel("hypergradient_direction",
        buffers=("exp_avg", "exp_avg_sq", "max_exp_avg_sq", "direction"),
        scalars=("bias_correction1", "bias_correction2", "eps", "amsgrad"),
        sums=("direction_sq",))
def hypergradient_direction(exp_avg, exp_avg_sq, max_exp_avg_sq, direction, *, bias_correction1,
                            bias_correction2, eps, amsgrad):
    """The Adam direction without weight decay, ``d = m_hat / (sqrt(v_hat) + eps)``, and ``|d|^2``.

    ``m_hat = m / (1 - beta1^t)``, ``v_hat = v / (1 - beta2^t)`` (v: ``max_exp_avg_sq`` when
    ``amsgrad``), in the reference implementation's order of operations; runs after
    ``adamw_update``, so m and v are this step's moments.
    """
    second = max_exp_avg_sq if amsgrad else exp_avg_sq
    denom = second / bias_correction2
    np.sqrt(denom, out=denom)
    denom += eps
    np.divide(exp_avg, bias_correction1, out=direction)
    direction /= denom
    return (float(np.vdot(direction, direction)),)
