"""AdamW's per-element update: NumPy twin, fused CPU body, GLSL twin shaders/adamw-update.glsl."""
import numpy as np

from .core import kernel, scratch


def adamw_update_fused(lo, hi, bufs, s, ctl, lanes):
    """Fused body of ``adamw_update``: the twin's operations, element by element."""
    param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq = bufs
    (decay, one_minus_beta1, beta2, one_minus_beta2, eps, neg_step_size, bias_correction2_sqrt,
     amsgrad, maximize) = s
    for i in range(lo, hi):
        g = -grad[i] if maximize != 0 else grad[i]
        m = exp_avg[i] + (g - exp_avg[i]) * one_minus_beta1
        v = exp_avg_sq[i] * beta2 + (g * one_minus_beta2) * g
        exp_avg[i] = m
        exp_avg_sq[i] = v
        if amsgrad != 0:
            v = np.maximum(max_exp_avg_sq[i], v)
            max_exp_avg_sq[i] = v
        denom = np.sqrt(v) / bias_correction2_sqrt + eps
        param[i] = param[i] * decay + (m * neg_step_size) / denom


@kernel("adamw_update",
        buffers=("param", "grad", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"),
        scalars=("decay", "one_minus_beta1", "beta2", "one_minus_beta2", "eps", "neg_step_size",
                 "bias_correction2_sqrt", "amsgrad", "maximize"),
        fused=adamw_update_fused)
def adamw_update(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, *, decay, one_minus_beta1, beta2,
                 one_minus_beta2, eps, neg_step_size, bias_correction2_sqrt, amsgrad, maximize):
    """torch.optim.AdamW's single-tensor update, in place, in torch's order of operations.

    The host derives the scalars in double precision, as torch does with Python floats:
    ``decay = 1 - lr*weight_decay``, ``neg_step_size = -lr / (1 - beta1**t)`` and
    ``bias_correction2_sqrt = sqrt(1 - beta2**t)``, t being the parameter's own step count.
    ``max_exp_avg_sq`` is only touched when ``amsgrad`` is set.
    """
    g = np.negative(grad, out=scratch(grad, 0)) if maximize else grad
    param *= decay
    tmp = np.subtract(g, exp_avg, out=scratch(grad, 1))      # torch's lerp_(g, 1 - beta1)
    tmp *= one_minus_beta1
    exp_avg += tmp
    exp_avg_sq *= beta2
    np.multiply(g, one_minus_beta2, out=tmp)
    tmp *= g
    exp_avg_sq += tmp
    if amsgrad:
        np.maximum(max_exp_avg_sq, exp_avg_sq, out=max_exp_avg_sq)
        second = max_exp_avg_sq
    else:
        second = exp_avg_sq
    denom = np.sqrt(second, out=tmp)
    denom /= bias_correction2_sqrt
    denom += eps
    step = np.multiply(exp_avg, neg_step_size, out=scratch(grad, 2))   # torch's addcdiv_: p + (value*m)/denom
    step /= denom
    param += step
