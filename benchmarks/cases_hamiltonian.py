"""Benchmark case for HL: ``factory(params, use_gpu, device)`` returns a ready optimizer.

HL optimizes models, so ``HL.for_params`` wraps the parameters in a minimal model with a
one-element state; the harness's ``step(gradients=[...])`` (aligned with the parameters) then times
the Euler step of all weights and costates, one kernel over every parameter.
"""
from hyperopt.hamiltonian import HL


def hl(params, use_gpu, device):
    # non-local: every timed step moves the weights (local HL's first step uses a zero costate)
    return HL.for_params(params, delta=0.1, theta=0.1, beta=1.0, local=False, use_gpu=use_gpu, device=device)


CASES = {"HL": hl}
