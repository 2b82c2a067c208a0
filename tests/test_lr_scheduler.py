"""hyperopt.lr_scheduler against torch.optim.lr_scheduler (same floats over many steps, resumes,
state dicts), the schedulers on every optimizer, WindowLR's restart, and clip_grad_norm_ against torch."""
import math
import warnings

import numpy as np
import pytest
import torch

import hyperopt
from hyperopt import (AdamW, AutoHypergradientAdamW, AutoSGM, CosineAnnealingLR, ExponentialLR, HCNaturalGrad,
                      HIOptimizer, HL, HypergradientAdamW, LambdaLR, LinearLR, MultiStepLR, SequentialLR, StepLR,
                      WindowLR, clip_grad_norm_)
from hyperopt.lr_scheduler import get_group_lr

pytestmark = pytest.mark.timeout(120)

LRS = (0.1, 0.03)


def _pair():
    """Our AdamW and a torch SGD, each with two groups at the rates LRS."""
    ours = AdamW([{"params": [np.zeros(3, np.float32)], "lr": LRS[0]},
                  {"params": [np.zeros(2, np.float32)], "lr": LRS[1]}], use_gpu=False)
    theirs = torch.optim.SGD([{"params": [torch.zeros(3, requires_grad=True)], "lr": LRS[0]},
                              {"params": [torch.zeros(2, requires_grad=True)], "lr": LRS[1]}])
    return ours, theirs


class Halve:
    """A callable object: LambdaLR saves its __dict__ in state_dict."""

    def __init__(self):
        self.rate = 0.5

    def __call__(self, epoch):
        return self.rate ** (epoch // 7)


CASES = {
    "LambdaLR": (LambdaLR, torch.optim.lr_scheduler.LambdaLR, lambda: dict(lr_lambda=lambda e: 1 / (1 + 0.1 * e))),
    "LambdaLR-object": (LambdaLR, torch.optim.lr_scheduler.LambdaLR, lambda: dict(lr_lambda=Halve())),
    "StepLR": (StepLR, torch.optim.lr_scheduler.StepLR, lambda: dict(step_size=7, gamma=0.5)),
    "MultiStepLR": (MultiStepLR, torch.optim.lr_scheduler.MultiStepLR,
                    lambda: dict(milestones=[5, 20, 20, 61], gamma=0.3)),
    "ExponentialLR": (ExponentialLR, torch.optim.lr_scheduler.ExponentialLR, lambda: dict(gamma=0.97)),
    "CosineAnnealingLR": (CosineAnnealingLR, torch.optim.lr_scheduler.CosineAnnealingLR,
                          lambda: dict(T_max=25, eta_min=1e-3)),
    "LinearLR": (LinearLR, torch.optim.lr_scheduler.LinearLR,
                 lambda: dict(start_factor=0.1, end_factor=0.9, total_iters=30)),
}


def _torch_step(opt, sched):
    opt.step()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sched.step()


def _lrs(opt):
    return [g["lr"] for g in opt.param_groups]


@pytest.mark.parametrize("case", list(CASES))
def test_values_equal_torch_over_many_steps(case):
    ours_cls, torch_cls, kwargs = CASES[case]
    ours, theirs = _pair()
    s_ours, s_theirs = ours_cls(ours, **kwargs()), torch_cls(theirs, **kwargs())
    assert _lrs(ours) == _lrs(theirs)
    for _ in range(130):                       # past T_max, milestones, total_iters: the cosine climbs back
        _torch_step(theirs, s_theirs)
        s_ours.step()
        assert _lrs(ours) == _lrs(theirs)      # the same floats, not just close
        assert s_ours.get_last_lr() == s_theirs.get_last_lr()
    assert s_ours.last_epoch == s_theirs.last_epoch == 130


@pytest.mark.parametrize("case", list(CASES))
def test_state_dict_round_trip_resumes_the_same_values(case):
    ours_cls, torch_cls, kwargs = CASES[case]
    ours, theirs = _pair()
    s_ours, s_theirs = ours_cls(ours, **kwargs()), torch_cls(theirs, **kwargs())
    for _ in range(17):
        _torch_step(theirs, s_theirs)
        s_ours.step()
    saved = s_ours.state_dict()
    assert "optimizer" not in saved
    groups = [dict(g) for g in ours.param_groups]
    ours2, _ = _pair()
    s_ours2 = ours_cls(ours2, **kwargs())                       # torch's order: build, then load both states
    for g, saved_group in zip(ours2.param_groups, groups):      # the optimizer's own state: its group rates
        g["lr"], g["initial_lr"] = saved_group["lr"], saved_group["initial_lr"]
    s_ours2.load_state_dict(saved)
    for _ in range(60):
        _torch_step(theirs, s_theirs)
        s_ours2.step()
        assert _lrs(ours2) == _lrs(theirs)
    if case == "LambdaLR-object":
        assert saved["lr_lambdas"][0] == {"rate": 0.5}


@pytest.mark.parametrize("case", ["StepLR", "MultiStepLR", "ExponentialLR", "CosineAnnealingLR", "LinearLR",
                                  "LambdaLR"])
def test_last_epoch_resume_matches_torch(case):
    ours_cls, torch_cls, kwargs = CASES[case]
    ours, theirs = _pair()
    for opt in (ours, theirs):
        for g in opt.param_groups:
            g["initial_lr"] = g["lr"]
    s_ours = ours_cls(ours, last_epoch=9, **kwargs())
    s_theirs = torch_cls(theirs, last_epoch=9, **kwargs())
    assert _lrs(ours) == _lrs(theirs)
    for _ in range(40):
        _torch_step(theirs, s_theirs)
        s_ours.step()
        assert _lrs(ours) == _lrs(theirs)


def test_resume_without_initial_lr_is_a_key_error_like_torch():
    ours, _ = _pair()
    with pytest.raises(KeyError, match="initial_lr"):
        StepLR(ours, step_size=3, last_epoch=4)


def test_sequential_warmup_then_cosine_equals_torch():
    ours, theirs = _pair()
    s_ours = SequentialLR(ours, [LinearLR(ours, start_factor=0.05, total_iters=10),
                                 ExponentialLR(ours, gamma=0.9),
                                 CosineAnnealingLR(ours, T_max=30)], milestones=[10, 25])
    s_theirs = torch.optim.lr_scheduler.SequentialLR(
        theirs, [torch.optim.lr_scheduler.LinearLR(theirs, start_factor=0.05, total_iters=10),
                 torch.optim.lr_scheduler.ExponentialLR(theirs, gamma=0.9),
                 torch.optim.lr_scheduler.CosineAnnealingLR(theirs, T_max=30)], milestones=[10, 25])
    assert _lrs(ours) == _lrs(theirs)
    for k in range(90):
        _torch_step(theirs, s_theirs)
        s_ours.step()
        assert _lrs(ours) == _lrs(theirs), k
        if k == 40:
            saved = s_ours.state_dict()
    assert len(saved["_schedulers"]) == 3


def test_sequential_validation():
    ours, _ = _pair()
    other, _ = _pair()
    a = LinearLR(ours, total_iters=3)
    with pytest.raises(ValueError, match="number of milestones"):
        SequentialLR(ours, [a, StepLR(ours, 2)], milestones=[])
    with pytest.raises(ValueError, match="same optimizer"):
        SequentialLR(ours, [a, StepLR(other, 2)], milestones=[3])


def test_bad_arguments_are_clear_errors():
    ours, _ = _pair()
    with pytest.raises(ValueError, match="step_size"):
        StepLR(ours, step_size=0)
    with pytest.raises(ValueError, match="T_max"):
        CosineAnnealingLR(ours, T_max=0)
    with pytest.raises(ValueError, match="Starting multiplicative factor"):
        LinearLR(ours, start_factor=0)
    with pytest.raises(ValueError, match="Expected 2 lr_lambdas"):
        LambdaLR(ours, [lambda e: 1.0])
    with pytest.raises(TypeError, match="not an Optimizer"):
        StepLR(object(), step_size=2)
    assert _lrs(ours) == list(LRS)


def _problem(opt_factory):
    rng = np.random.default_rng(0)
    W = rng.standard_normal((5, 3)).astype(np.float32)
    b = np.zeros(3, np.float32)
    return [W, b], opt_factory([W, b])


FACTORIES = {
    "AdamW": lambda p: AdamW(p, lr=1e-2, use_gpu=False),
    "HypergradientAdamW": lambda p: HypergradientAdamW(p, lr=1e-2, use_gpu=False),
    "AutoHypergradientAdamW": lambda p: AutoHypergradientAdamW(p, lr=1e-2, use_gpu=False),
    "HIOptimizer": lambda p: HIOptimizer(p, lr=1e-2, use_gpu=False),
    "AutoSGM": lambda p: AutoSGM(p, lr_cfg=(True, 1e-2, 0), use_gpu=False),
    "HCNaturalGrad": lambda p: HCNaturalGrad(p, lr=1e-2, use_gpu=False),
}


@pytest.mark.parametrize("name", list(FACTORIES))
def test_every_optimizer_with_a_learning_rate_is_scheduled(name):
    params, opt = _problem(FACTORIES[name])
    sched = StepLR(opt, step_size=2, gamma=0.5)
    seen = []
    for _ in range(6):
        before = [p.copy() for p in params]
        opt.step(gradients=[np.ones_like(p) for p in params])
        assert any(not np.array_equal(a, p) for a, p in zip(before, params))
        seen.append(get_group_lr(opt, opt.param_groups[0]))
        sched.step()
    if "Hypergradient" not in name:     # those adapt the rate themselves between the scheduler's writes
        assert seen == [1e-2, 1e-2, 5e-3, 5e-3, 2.5e-3, 2.5e-3]
    else:
        assert seen[4] < seen[0]
    if name == "AutoSGM":
        assert opt.param_groups[0]["lr_cfg"].lr_init == sched.get_last_lr()[0]


def test_hl_has_no_learning_rate_and_says_so():
    W = np.zeros((3, 2), np.float32)
    hl = HL.for_params([W], delta=0.3, use_gpu=False)
    for make in (lambda: CosineAnnealingLR(hl, T_max=10), lambda: WindowLR(hl, "cosine", tau=1, spe=10)):
        with pytest.raises(TypeError, match="HL has no learning rate.*beta"):
            make()
    assert "initial_lr" not in hl.param_groups[0]


def test_window_lr_restarts_after_its_length_or_holds_with_restart_false():
    length = 10
    opt_a = AdamW([np.zeros(2, np.float32)], lr=1.0, use_gpu=False)
    opt_b = AdamW([np.zeros(2, np.float32)], lr=1.0, use_gpu=False)
    a = WindowLR(opt_a, "cosine", tau=1, spe=length, x=0.1)
    b = WindowLR(opt_b, "cosine", tau=1, spe=length, x=0.1, restart=False)
    la, lb = [a.get_last_lr()[0]], [b.get_last_lr()[0]]
    for _ in range(2 * length):
        a.step()
        b.step()
        la.append(a.get_last_lr()[0])
        lb.append(b.get_last_lr()[0])
    assert la[:length] == lb[:length]
    assert la[length] == pytest.approx(1.0)             # step length+1: the peak again (warm restart)
    assert lb[length:] == [lb[length - 1]] * (length + 1)  # held at the last value of the window
    assert lb[length - 1] < 0.2
    assert b.state_dict()["restart"] is False


def test_schedulers_are_exported():
    for name in ("LambdaLR", "StepLR", "MultiStepLR", "ExponentialLR", "CosineAnnealingLR", "LinearLR",
                 "SequentialLR", "clip_grad_norm_"):
        assert name in hyperopt.__all__ and hasattr(hyperopt, name)


# ---------------------------------------------------------------------------------------------- clipping
def _grads(seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(np.float32) * 3 for s in ((4, 5), (5,), (2, 3, 2))]


def _torch_clip(grads, max_norm, norm_type):
    ps = []
    for g in grads:
        p = torch.zeros(g.shape, requires_grad=True)
        p.grad = torch.from_numpy(g.copy())
        ps.append(p)
    total = torch.nn.utils.clip_grad_norm_(ps, max_norm, norm_type=norm_type)
    return float(total), [p.grad.numpy() for p in ps]


@pytest.mark.parametrize("norm_type", [2.0, 1.0, 3.0, math.inf, "inf"])
@pytest.mark.parametrize("max_norm", [0.5, 1e6])
def test_clip_grad_norm_equals_torch_on_a_list(norm_type, max_norm):
    grads = _grads()
    total_t, clipped_t = _torch_clip(grads, max_norm, norm_type)
    total = clip_grad_norm_(grads, max_norm, norm_type)
    assert isinstance(total, float)
    assert total == pytest.approx(total_t, rel=1e-5)
    for g, gt in zip(grads, clipped_t):
        np.testing.assert_allclose(g, gt, rtol=1e-5, atol=1e-7)
    if max_norm == 0.5:
        assert float(np.linalg.norm([np.linalg.norm(g.ravel(), ord=float(norm_type)) for g in grads],
                                    ord=float(norm_type))) == pytest.approx(0.5, rel=1e-4)


class Param:
    def __init__(self, data, grad):
        self.data, self.grad = data, grad


def test_clip_grad_norm_over_every_gradient_form_then_step():
    grads = _grads(1)
    total_t, clipped_t = _torch_clip(grads, 1.0, 2.0)
    params = [np.zeros_like(g) for g in grads]
    as_dict = {id(p): g.copy() for p, g in zip(params, grads)}
    objects = [Param(p, g.copy()) for p, g in zip(params, grads)]
    with_none = [grads[0].copy(), None, grads[1].copy(), grads[2].copy()]
    for form, arrays in ((as_dict, list(as_dict.values())), (objects, [o.grad for o in objects])):
        assert clip_grad_norm_(form, 1.0) == pytest.approx(total_t, rel=1e-5)
        for a, gt in zip(arrays, clipped_t):
            np.testing.assert_allclose(a, gt, rtol=1e-5)
    assert clip_grad_norm_(with_none, 1.0) == pytest.approx(total_t, rel=1e-5)
    single = grads[0].copy()
    assert clip_grad_norm_(single, 1e-3) == pytest.approx(np.linalg.norm(grads[0]), rel=1e-5)
    assert np.linalg.norm(single) == pytest.approx(1e-3, rel=1e-3)
    opt = AdamW(params, lr=1e-2, use_gpu=False)
    opt.step(gradients=as_dict)                              # the clipped dict goes straight to step
    assert all(np.any(p != 0) for p in params)


def test_clip_grad_norm_edge_cases():
    assert clip_grad_norm_([], 1.0) == 0.0
    g = np.array([np.inf, 1.0], np.float32)
    with pytest.raises(RuntimeError, match="non-finite"):
        clip_grad_norm_([g], 1.0, error_if_nonfinite=True)
    assert g[1] == 1.0                                       # nothing changed
    ints = np.array([3, 4])
    with pytest.raises(TypeError, match="floating-point"):
        clip_grad_norm_([ints], 1.0)
    with pytest.raises(ValueError, match="max_norm"):
        clip_grad_norm_([np.ones(2)], float("nan"))
    f64 = np.array([3.0, 4.0])
    assert clip_grad_norm_(f64, 1.0) == 5.0
    np.testing.assert_allclose(f64, [0.6, 0.8], rtol=1e-6)
