"""Benchmark cases for HCNaturalGrad: ``factory(params, use_gpu, device)`` returns a ready optimizer.

The harness calls ``step(gradients=[...])`` only, so each optimizer gets fixed synthetic branches
(8 samples of a 4-dim state) as its default: every timed step is a full branched step (projection,
host CG, expansion).  "HCNaturalGrad" uploads P from NumPy's stream (upstream parity);
"HCNaturalGrad-hash" generates P in the kernels.
"""
import numpy as np

from hyperopt.natural_grad import HCNaturalGrad

BRANCHES = np.random.default_rng(0).standard_normal((8, 4))


def natural_grad(params, use_gpu, device, projection="numpy"):
    return HCNaturalGrad(params, lr=1e-3, fisher_damp=0.1, branches=BRANCHES, projection=projection,
                         use_gpu=use_gpu, device=device)


def natural_grad_hash(params, use_gpu, device):
    return natural_grad(params, use_gpu, device, projection="hash")


CASES = {"HCNaturalGrad": natural_grad, "HCNaturalGrad-hash": natural_grad_hash}
