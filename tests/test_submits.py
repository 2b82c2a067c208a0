"""Submits per step on the Vulkan backend, for every optimizer (README's "submits per step" table).

The Vulkan context's ``submit`` is counted over three steady-state steps (after 12 steps that record
the command buffers and pass AutoHypergradientAdamW's warmup of 10).  Each count is the documented one: a change is either a regression or
a README update.
"""
import numpy as np
import pytest

import hyperopt
from hyperopt.hamiltonian import StatelessModel

SHAPES = [(8, 5), (5,), (300,)]

# optimizer -> (constructor, step keyword arguments, submits per steady-state step)
BRANCHES = np.random.default_rng(3).standard_normal((6, 5))      # 6 branches over D=5 components


def _build(name, params, kw):
    if name == "HL":
        return hyperopt.HL(StatelessModel(params), **kw)
    if name == "HCNaturalGrad-numpy":
        return hyperopt.HCNaturalGrad(params, lr=1e-3, branches=BRANCHES, projection="numpy", **kw)
    if name == "HCNaturalGrad-hash":
        return hyperopt.HCNaturalGrad(params, lr=1e-3, branches=BRANCHES, projection="hash", **kw)
    if name == "HCNaturalGrad-nobranches":
        return hyperopt.HCNaturalGrad(params, lr=1e-3, **kw)
    return getattr(hyperopt, name)(params, **kw)


EXPECTED = {
    "AdamW": 1,
    "HypergradientAdamW": 2,
    "AutoHypergradientAdamW": 2,
    "HIOptimizer": 1,
    "AutoSGM": 1,
    "HL": 1,
    "HCNaturalGrad-nobranches": 1,
    "HCNaturalGrad-numpy": 7,       # D=5 projection columns stored one by one, then project+expand
    "HCNaturalGrad-hash": 2,
}


@pytest.mark.parametrize("name", list(EXPECTED))
def test_submits_per_step(name, vulkan_device, monkeypatch):
    rng = np.random.default_rng(0)
    params = [rng.standard_normal(s).astype(np.float32) for s in SHAPES]
    opt = _build(name, params, dict(use_gpu=True, device=vulkan_device))
    assert opt.backend.startswith("vulkan:")
    grads = lambda: [rng.standard_normal(s).astype(np.float32) for s in SHAPES]
    step = (lambda g: opt.step(gradients={f"p{k}": x for k, x in enumerate(g)})) if name == "HL" else \
        (lambda g: opt.step(gradients=g))
    for _ in range(12):                        # records the programs; past AutoHypergradient's warmup
        step(grads())
    ctx = opt._backend.ctx
    submits = []
    real = ctx.submit
    monkeypatch.setattr(ctx, "submit", lambda *a: (submits.append(1), real(*a))[1])
    for _ in range(3):
        step(grads())
    per_step = len(submits) / 3
    print(f"{name}: {per_step:g} submits per step")
    assert per_step == EXPECTED[name], f"{name}: {per_step:g} submits per step, README says {EXPECTED[name]}"
