"""Gradient utilities over the gradient forms ``Optimizer.step(gradients=...)`` accepts."""
from __future__ import annotations

import math
import numbers

import numpy as np

__all__ = ["clip_grad_norm_"]


def _gradient_arrays(gradients) -> list:
    """The gradient arrays of ``gradients``, in order, to be scaled in place."""
    if isinstance(gradients, np.ndarray):
        items = [gradients]
    elif isinstance(gradients, dict):
        items = list(gradients.values())
    elif isinstance(gradients, (list, tuple)):
        items = list(gradients)
    elif hasattr(gradients, "grad"):
        items = [gradients]
    else:
        raise TypeError("gradients must be an array, a dict {id(param): grad}, a list of arrays, or parameter "
                        f"objects with .grad; got {type(gradients).__name__}")
    arrays = []
    for k, g in enumerate(items):
        if g is not None and not isinstance(g, np.ndarray):
            g = getattr(g, "grad", None)         # a parameter object: its .grad (None: no gradient)
            if g is not None and not isinstance(g, np.ndarray):
                g = getattr(g, "data", g)
        if g is None:
            continue
        if not isinstance(g, np.ndarray):
            raise TypeError(f"gradient {k} is a {type(g).__name__}, not a NumPy array (clipping is in place)")
        if g.dtype.kind != "f":
            raise TypeError(f"gradient {k} has dtype {g.dtype}; clipping in place needs floating-point arrays")
        if not g.flags.writeable:
            raise ValueError(f"gradient {k} is a read-only array; clipping is in place")
        arrays.append(g)
    return arrays


def clip_grad_norm_(gradients, max_norm: float, norm_type: float = 2.0, error_if_nonfinite: bool = False) -> float:
    r"""Scale gradients in place so that their total norm is at most ``max_norm``; returns the total
    norm before clipping (as ``torch.nn.utils.clip_grad_norm_``, as a Python float).

    ``gradients`` takes the forms ``step(gradients=...)`` accepts: a list of arrays (``None``
    entries skipped), a dict ``{id(param): array}``, parameter objects with ``.grad`` (one, or a
    list), or a single array.  Clip first, then pass the same object to ``step``::

        clip_grad_norm_(grads, max_norm=1.0)
        opt.step(gradients=grads)

    .. code-block:: text

        total = || (||g_1||_p, ..., ||g_n||_p) ||_p          p = norm_type (inf: the largest |g|)
        coef  = min(1, max_norm / (total + 1e-6))
        g_i  <- coef * g_i                                    for every gradient, in place

    The norms are computed in float64; the scaling is done in each array's dtype.  A NaN or
    infinite total raises RuntimeError with ``error_if_nonfinite=True``; otherwise the gradients are
    scaled by the resulting NaN coefficient, as torch does.  Nothing is changed when an argument is
    invalid.
    """
    if isinstance(max_norm, bool) or not isinstance(max_norm, numbers.Real) or math.isnan(max_norm):
        raise ValueError(f"Invalid max_norm: {max_norm!r}")
    if isinstance(norm_type, str) and norm_type.lower() == "inf":
        norm_type = math.inf
    if isinstance(norm_type, bool) or not isinstance(norm_type, numbers.Real) or math.isnan(norm_type):
        raise ValueError(f"Invalid norm_type: {norm_type!r}")
    norm_type = float(norm_type)
    arrays = _gradient_arrays(gradients)
    if not arrays:
        return 0.0
    norms = np.array([np.linalg.norm(g.astype(np.float64, copy=False).ravel(), ord=norm_type) if g.size else 0.0
                      for g in arrays], np.float64)
    total = float(np.linalg.norm(norms, ord=norm_type))
    if error_if_nonfinite and not math.isfinite(total):
        raise RuntimeError(f"The total norm of order {norm_type} for gradients is non-finite, so it cannot be "
                           "clipped. To disable this error and scale the gradients by the non-finite norm anyway, "
                           "set `error_if_nonfinite=False`")
    coef = min(1.0, float(max_norm) / (total + 1e-6)) if not math.isnan(total) else math.nan
    for g in arrays:
        g *= g.dtype.type(coef)
    return total
