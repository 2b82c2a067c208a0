"""AdamW's per-element update; GLSL twin: shaders/adamw-update.glsl."""
import numpy as np

from .core import kernel


@kernel("adamw_update",
        buffers=("param", "grad", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"),
        scalars=("decay", "one_minus_beta1", "beta2", "one_minus_beta2", "eps", "neg_step_size",
                 "bias_correction2_sqrt", "amsgrad", "maximize"))
def adamw_update(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, *, decay, one_minus_beta1, beta2,
                 one_minus_beta2, eps, neg_step_size, bias_correction2_sqrt, amsgrad, maximize):
    """torch.optim.AdamW's single-tensor update, in place, in torch's order of operations.

    The host derives the scalars in double precision, as torch does with Python floats:
    ``decay = 1 - lr*weight_decay``, ``neg_step_size = -lr / (1 - beta1**t)`` and
    ``bias_correction2_sqrt = sqrt(1 - beta2**t)``, t being the parameter's own step count.
    ``max_exp_avg_sq`` is only touched when ``amsgrad`` is set.
    """
    g = -grad if maximize else grad
    param *= decay
    exp_avg += (g - exp_avg) * one_minus_beta1          # torch's lerp_(g, 1 - beta1)
    exp_avg_sq *= beta2
    exp_avg_sq += one_minus_beta2 * g * g
    if amsgrad:
        np.maximum(max_exp_avg_sq, exp_avg_sq, out=max_exp_avg_sq)
        second = max_exp_avg_sq
    else:
        second = exp_avg_sq
    denom = np.sqrt(second)
    denom /= bias_correction2_sqrt
    denom += eps
    step = neg_step_size * exp_avg                      # torch's addcdiv_: p + (value * m) / denom
    step /= denom
    param += step
