"""Tests for bugs that tools/mutation.py planted and the suite first missed."""
import numpy as np
import pytest

import hyperopt

from test_options import ref_hysterograd_group


def test_hysterograd_barrier_epsilon_and_strict_comparison(opt_kwargs):
    """With beta=0, E is this step's n_eff: a zero gradient after a real step leaves E = 0, so the
    barrier is kappa*sqrt(tau)*(1-T)*scale*(0 + 1e-8), not 0.  A first step with a zero gradient has
    n_eff = h = 0, and 0 > 0 is false: Frozen (upstream's strict comparison)."""
    w = np.ones(3, np.float32)
    opt = hyperopt.HIOptimizer([w], beta=0.0, initial_temp=0.5, **opt_kwargs)
    opt.step(gradients=[np.zeros(3, np.float32)])
    assert opt.diagnostics()[0]["status"] == "Frozen"
    np.testing.assert_array_equal(w, 1.0)
    gs = [[np.array([1.0, -2.0, 0.5], np.float32)], [np.zeros(3, np.float32)]]
    v = np.ones(3, np.float32)
    opt2 = hyperopt.HIOptimizer([v], beta=0.0, initial_temp=0.5, **opt_kwargs)
    for g in gs:
        opt2.step(gradients=g)
    _, want = ref_hysterograd_group([np.ones(3, np.float32)], gs, beta=0.0, initial_temp=0.5)
    assert want["barrier"] > 0
    assert opt2.diagnostics()[0]["barrier"] == pytest.approx(want["barrier"], rel=1e-5)


def test_hash_projection_resumes_its_stream_after_load_state_dict(opt_kwargs):
    rng = np.random.default_rng(4)
    init = [rng.standard_normal((6, 5)).astype(np.float32), rng.standard_normal(5).astype(np.float32)]
    grads = [[rng.standard_normal(a.shape).astype(np.float32) for a in init] for _ in range(5)]
    B = rng.standard_normal((6, 3))
    kw = dict(lr=0.01, fisher_damp=0.1, projection="hash", branches=B, **opt_kwargs)
    full = [a.copy() for a in init]
    opt = hyperopt.HCNaturalGrad(full, **kw)
    for g in grads:
        opt.step(gradients=g)
    first = [a.copy() for a in init]
    a = hyperopt.HCNaturalGrad(first, **kw)
    for g in grads[:3]:
        a.step(gradients=g)
    saved = a.state_dict()
    second = [x.copy() for x in first]
    b = hyperopt.HCNaturalGrad(second, **kw)
    b.load_state_dict(saved)
    for g in grads[3:]:
        b.step(gradients=g)
    for x, y in zip(second, full):
        np.testing.assert_array_equal(x, y)
