"""Benchmark cases for AutoSGM: ``factory(params, use_gpu, device)`` returns a ready optimizer.

``num_lrc=0`` is the Adam-like instance (one fused kernel per step); ``num_lrc=2`` the parcor
estimator with its Huber prefilter (three dispatches: statistics with a per-tensor sum, the control
kernel, the update), both with cosine annealing over 10 epochs of 1000 steps.
"""
from hyperopt.autosgm import AutoSGM

_WINDOW = (1, 0, 0, 2, 1, 10, 1000, 1, 0)


def _autosgm(num_lrc):
    def factory(params, use_gpu, device):
        return AutoSGM(params, lr_cfg=(True, 1e-3, num_lrc), beta_cfg=(0.9999, 0.999, 0.9, 0.0, 0, True),
                       rc_cfg=_WINDOW, wd_cfg=(1e-2, 1), eps_cfg=(1e-8,), use_gpu=use_gpu, device=device)
    return factory


# names a shell takes unquoted (no parentheses)
CASES = {"AutoSGM-lrc0": _autosgm(0), "AutoSGM-lrc2": _autosgm(2)}
