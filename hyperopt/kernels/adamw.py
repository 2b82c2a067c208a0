"""AdamW's per-element update; GLSL twin: shaders/adamw-update.glsl."""
import numpy as np

from .core import kernel, scratch


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
