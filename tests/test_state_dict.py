"""state_dict / load_state_dict and add_param_group across optimizers: all or nothing, no aliasing."""
import pickle

import numpy as np
import pytest

from hyperopt import AdamW, AutoSGM, HIOptimizer, HL
from hyperopt.optimizer import Optimizer


def _run(opt, grads):
    for g in grads:
        opt.step(gradients=g)


def _grads(rng, shapes, n):
    return [[rng.standard_normal(s).astype(np.float32) for s in shapes] for _ in range(n)]


def test_loading_amsgrad_state_switches_the_buffer_on(backend, opt_kwargs, rng):
    shapes = [(5, 3), (7,)]
    grads = _grads(rng, shapes, 8)
    start = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    straight = [p.copy() for p in start]
    ref = AdamW(straight, lr=0.05, amsgrad=True, **opt_kwargs)
    _run(ref, grads)

    first = [p.copy() for p in start]
    opt = AdamW(first, lr=0.05, amsgrad=True, **opt_kwargs)
    _run(opt, grads[:4])
    resumed = [p.copy() for p in first]
    other = AdamW(resumed, lr=0.05, amsgrad=False, **opt_kwargs)     # built without amsgrad
    other.load_state_dict(opt.state_dict())
    _run(other, grads[4:])
    for a, b in zip(resumed, straight):
        assert np.array_equal(a, b)


def test_loading_an_empty_state_starts_fresh(backend, opt_kwargs, rng):
    p = rng.standard_normal(6).astype(np.float32)
    q = p.copy()
    grads = _grads(rng, [(6,)], 4)
    fresh = AdamW([q], **opt_kwargs)
    opt = AdamW([p], **opt_kwargs)
    empty = opt.state_dict()
    _run(opt, grads)
    opt.load_state_dict(empty)
    p[...] = q
    opt.reload_params()
    _run(opt, grads)
    _run(fresh, grads)
    assert np.array_equal(p, q)


def test_hl_load_clears_costates(backend, opt_kwargs, rng):
    w = rng.standard_normal(4).astype(np.float32)
    hl = HL.for_params([w], **opt_kwargs)
    empty = hl.state_dict()
    _run(hl, _grads(rng, [(4,)], 3))
    hl.load_state_dict(empty)
    assert np.all(hl.state_of(0).get("costate", np.zeros(4)) == 0) or 0 not in hl.state
    before = w.copy()
    hl.step(gradients=[np.zeros(4, np.float32)])     # zero costate, zero gradient: nothing moves
    assert np.array_equal(w, before)


@pytest.mark.parametrize("case", ["nan state", "bad group extra"])
def test_a_bad_state_dict_changes_nothing(backend, opt_kwargs, rng, case):
    params = [rng.standard_normal((4, 3)).astype(np.float32), rng.standard_normal(3).astype(np.float32)]
    opt = HIOptimizer([{"params": params[:1]}, {"params": params[1:]}], lr=0.01, **opt_kwargs)
    _run(opt, _grads(rng, [(4, 3), (3,)], 3))
    before = pickle.dumps(opt.state_dict())
    bad = opt.state_dict()
    bad["param_groups"][0]["lr"] = 0.5
    if case == "nan state":
        bad["state"][1]["metric"][0] = np.nan
        match = "state 'metric' of parameter 1 contains NaN"
    else:
        del bad["extra"][1]["tau"]
        match = "tau"
    with pytest.raises((ValueError, KeyError), match=match):
        opt.load_state_dict(bad)
    assert pickle.dumps(opt.state_dict()) == before


def test_failed_add_param_group_leaves_the_optimizer_working(rng, vulkan_device):
    p = np.zeros(3, np.float32)
    opt = AdamW([p], lr=0.1, weight_decay=0.0, use_gpu=True, device=vulkan_device)
    with pytest.raises(TypeError, match="float64"):
        opt.add_param_group({"params": [np.zeros(2)]})
    assert len(opt.param_groups) == 1
    opt.step(gradients=[np.ones(3, np.float32)])
    np.testing.assert_allclose(p, -0.1, rtol=1e-6)


def test_saved_state_does_not_change_after_more_steps(backend, opt_kwargs, rng):
    """state_dict() holds copies, host-side matrices (AutoSGM's mix path) included."""
    W = rng.standard_normal((8, 6)).astype(np.float32)
    b = rng.standard_normal(6).astype(np.float32)          # a vector: the kernels' state too
    opt = AutoSGM([W, b], mix_cfg=(True, True, 1e-2, 0.9, 0.0), **opt_kwargs)
    _run(opt, _grads(rng, [(8, 6), (6,)], 2))
    saved = opt.state_dict()
    frozen = pickle.dumps(saved)
    _run(opt, _grads(rng, [(8, 6), (6,)], 2))
    assert pickle.dumps(saved) == frozen


def test_empty_parameters_are_fine(backend, opt_kwargs):
    ps = [np.zeros(0, np.float32), np.ones(5, np.float32), np.zeros((0, 3), np.float32)]
    opt = AdamW(ps, lr=0.1, weight_decay=0.0, **opt_kwargs)
    opt.step(gradients=[np.zeros(0, np.float32), np.ones(5, np.float32), np.zeros((0, 3), np.float32)])
    np.testing.assert_allclose(ps[1], 0.9, rtol=1e-6)


def test_every_optimizer_is_an_optimizer():
    import hyperopt
    for name in ("AdamW", "HypergradientAdamW", "AutoHypergradientAdamW", "HIOptimizer", "AutoSGM",
                 "HCNaturalGrad", "HL"):
        assert issubclass(getattr(hyperopt, name), Optimizer)
