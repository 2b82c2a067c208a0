"""Hamiltonian Learning's Euler step of the weights and their costates.  GLSL twin:
shaders/hamiltonian-euler.glsl.

Per element, with ``keep = 1 - theta'``, ``costate_step = s`` and ``neg_weight_step = -delta*beta``
derived on the host in double (see ``hyperopt.hamiltonian.HL``)::

    costate_first = 0 (local HL):      w <- w + neg_weight_step * p ;  p <- keep * p + s * grad
    costate_first = 1 (non-local HL):  p <- keep * p + s * grad     ;  w <- w + neg_weight_step * p

The neuron costate follows the same costate rule (``euler_costate``), applied on the host because
the caller needs it there every step to form the next gradients.
"""
from .core import kernel


def euler_costate(costate, grad, keep, costate_step):
    """``costate <- keep * costate + costate_step * grad``, in place (upstream's decayed Euler step)."""
    costate *= keep
    costate += costate_step * grad


def hamiltonian_euler_fused(lo, hi, bufs, s, ctl, lanes):
    """Fused body of ``hamiltonian_euler``."""
    param, grad, costate = bufs
    keep, costate_step, neg_weight_step, costate_first = s
    for i in range(lo, hi):
        if costate_first != 0:
            c = costate[i] * keep + costate_step * grad[i]
            param[i] = param[i] + neg_weight_step * c
        else:
            c = costate[i]
            param[i] = param[i] + neg_weight_step * c
            c = c * keep + costate_step * grad[i]
        costate[i] = c


@kernel("hamiltonian_euler",
        buffers=("param", "grad", "costate"),
        scalars=("keep", "costate_step", "neg_weight_step", "costate_first"),
        fused=hamiltonian_euler_fused)
def hamiltonian_euler(param, grad, costate, *, keep, costate_step, neg_weight_step, costate_first):
    """One Euler step of a weight and its costate, in the order ``costate_first`` selects."""
    if costate_first:
        euler_costate(costate, grad, keep, costate_step)
        param += neg_weight_step * costate
    else:
        param += neg_weight_step * costate
        euler_costate(costate, grad, keep, costate_step)
