"""Window functions and WindowLR: every shape against its formula, units, sequences, the scheduler."""
import math

import numpy as np
import pytest

from hyperopt import AdamW
from hyperopt.autosgm import AutoSGM
from hyperopt.schedules import WINDOW_NAMES, Window, WindowLR

L = 40


def formula(rcm, f, n):
    """The shapes of upstream's window functions, written independently of the module (M = 1)."""
    if rcm == 1:
        return math.cos(math.pi * f / 2) ** n
    if rcm == 2:
        return (1 - f) ** n
    if rcm == 3:
        return (n ** f - n) / (1 - n)
    if rcm == 4:
        return (1 - f ** n) ** 2
    sig = lambda u, mid: 1 / (1 + 2 ** (2 * n * (u - mid)))
    if rcm == 5:
        return (sig(f, 0.5) - sig(1, 0.5)) / (sig(0, 0.5) - sig(1, 0.5))
    return (sig(f, 0.875) - 1 / (1 + 2 ** n)) / (1 / (1 + 2 ** -n) - 1 / (1 + 2 ** n))


SHAPE_PARAMS = {1: 2, 2: 1.5, 3: 0.2, 4: 2.5, 5: 4, 6: 4}


@pytest.mark.parametrize("rcm", range(1, 7))
@pytest.mark.parametrize("m", [1, 0])
def test_every_window_matches_its_formula_at_start_middle_and_end(rcm, m):
    n, x, e = SHAPE_PARAMS[rcm], 0.1, 0.25
    w = Window(rcm, x=x, n=n, m=m, tau=2, spe=L // 2, e=e)
    for t in (1, L // 2 + 1, L):                                  # start, middle, end of the window
        f = (t - 1) / L
        if m == 0:
            f = abs(2 * f - 1)                                      # full: warm-up mirrors the anneal
        expected = 1.0 if f < e else formula(rcm, (f - e) / (1 - e), n) * (1 - x) + x
        assert w(t) == pytest.approx(expected, rel=1e-12, abs=1e-12), (rcm, m, t)
    # no flat top, no floor: a half window starts at the shape's value at 0 and ends just above its value at 1
    plain = Window(rcm, n=n, tau=1, spe=L)
    assert plain(1) == pytest.approx(formula(rcm, 0.0, n), rel=1e-12)
    assert plain(L) == pytest.approx(formula(rcm, (L - 1) / L, n), rel=1e-12)


def test_normalised_windows_run_from_one_to_the_floor():
    for rcm in range(1, 6):
        w = Window(rcm, x=0.2, n=SHAPE_PARAMS[rcm], tau=1, spe=1000)
        v = w.values(np.arange(1, 1001))
        assert v[0] == pytest.approx(1.0)
        assert v[-1] == pytest.approx(0.2, abs=0.02)
        assert np.all(np.diff(v) <= 1e-15)                          # annealing only
    late = Window(6, n=4, tau=1, spe=30)                            # the late sigmoid is not renormalised
    assert late(1) == pytest.approx(1.0579, abs=1e-4)


def test_cosine_n2_m1_is_standard_cosine_annealing():
    torch = pytest.importorskip("torch")
    base, floor = 0.1, 0.05
    w = Window("cosine", x=floor, n=2, m=1, tau=1, spe=L)
    for t in range(1, L + 1):                                       # closed form, eta_min = x * base
        expected = floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * (t - 1) / L))
        assert w(t) == pytest.approx(expected, rel=1e-12)
    # and torch's scheduler, driven the same way as ours
    p = torch.nn.Parameter(torch.zeros(1))
    topt = torch.optim.SGD([p], lr=base)
    tsched = torch.optim.lr_scheduler.CosineAnnealingLR(topt, T_max=L, eta_min=floor * base)
    ours = AdamW([np.zeros(1, np.float32)], lr=base, use_gpu=False)
    sched = WindowLR(ours, w)
    for _ in range(L):
        assert ours.param_groups[0]["lr"] == pytest.approx(topt.param_groups[0]["lr"], rel=1e-9)
        topt.step()
        tsched.step()
        sched.step()


def test_linear_decay_and_triangle():
    lin = Window(2, n=1, m=1, tau=1, spe=L)
    tri = Window(2, n=1, m=0, tau=1, spe=L)
    for t in range(1, L + 1):
        assert lin(t) == pytest.approx(1 - (t - 1) / L)
        assert tri(t) == pytest.approx(1 - abs(2 * (t - 1) / L - 1))


def test_units_epochs_restarts_and_sub_windows():
    # cfact 0: the window moves once per epoch (every spe steps) over tau epochs
    ep = Window(1, n=2, tau=5, spe=6, cfact=0)
    v = ep.values(np.arange(1, 31)).reshape(5, 6)
    assert np.all(v == v[:, :1])
    np.testing.assert_allclose(v[:, 0], [math.cos(math.pi * k / 10) ** 2 for k in range(5)], rtol=1e-12)
    assert ep(31) == ep(1)                                          # then a new frame
    # cfact 2: one window per epoch, restarting
    sub = Window(1, n=2, tau=3, spe=10, cfact=2)
    np.testing.assert_array_equal(sub.values(np.arange(1, 11)), sub.values(np.arange(11, 21)))
    # cfact 1: one window over tau*spe steps, periodic after it
    one = Window(1, n=2, tau=3, spe=10, cfact=1)
    assert one(30) < 0.01 and one(31) == 1.0
    # cfact 4: four stacked sub-shapes; at each quarter the value has dropped by a quarter
    stack = Window(1, n=2, tau=1, spe=L, cfact=4)
    for q in range(4):
        assert stack(q * L // 4 + 1) == pytest.approx(1 - q / 4)
        f = (q * L // 4 + 5) / L                                    # inside quarter q
        r = 4 * f - q
        assert stack(q * L // 4 + 6) == pytest.approx((4 - (q + 1) + math.cos(math.pi * r / 2) ** 2) / 4)


def test_kronecker_sequence():
    half = Window(1, inseq=1, n=2, m=1, tau=1, spe=L, e=0.25)
    v = half.values(np.arange(1, L + 1))
    assert np.all(np.diff(v) <= 0)                                 # served largest first
    assert np.sum(v == 1.0) == 10 + 1                              # the flat top, and frac(0 phi) = 0
    phi = (math.sqrt(5) - 1) / 2
    samples = sorted((math.cos(math.pi * ((j * phi) % 1) / 2) ** 2 for j in range(30)), reverse=True)
    np.testing.assert_allclose(v[10:], samples, rtol=1e-12)
    full = Window(1, inseq=1, n=2, m=0, tau=1, spe=L)
    w = full.values(np.arange(1, L + 1))
    assert np.all(np.diff(w[: L // 2]) >= 0) and np.all(np.diff(w[L // 2:]) <= 0)
    np.testing.assert_allclose(w[: L // 2], w[L // 2:][::-1])
    assert full(L + 1) == full(1)
    # same values as the uniform order would visit, roughly: same mean within a few percent
    uniform = Window(1, n=2, m=1, tau=1, spe=1000).values(np.arange(1, 1001)).mean()
    kron = Window(1, inseq=1, n=2, m=1, tau=1, spe=1000).values(np.arange(1, 1001)).mean()
    assert kron == pytest.approx(uniform, rel=0.02)


def test_names_and_validation():
    for name, number in WINDOW_NAMES.items():
        assert Window(name, tau=1, spe=10).rcm == number
    assert Window(0, tau=1, spe=1)(5) == 1.0                       # flat needs no length
    bad = [dict(rcm=9), dict(rcm="triangle"), dict(rcm=1, inseq=2), dict(rcm=1, x=1.5), dict(rcm=1, m=2),
           dict(rcm=1, tau=0), dict(rcm=1, spe=1), dict(rcm=1, cfact=0, tau=1, spe=100), dict(rcm=1, e=-0.1),
           dict(rcm=3, n=1.0), dict(rcm=1, n=0), dict(rcm=1, inseq=1, spe=1 << 25)]
    for kw in bad:
        kw.setdefault("spe", 10)
        with pytest.raises(ValueError, match="Invalid"):
            Window(kw.pop("rcm"), **kw)
    with pytest.raises(ValueError):
        Window(1, spe=10)(0)


def test_window_lr_drives_adamw_and_autosgm():
    rng = np.random.default_rng(0)
    grads = rng.standard_normal((10, 5)).astype(np.float32)
    # AdamW with the schedule equals AdamW with the rate set by hand each step
    a, b = np.ones(5, np.float32), np.ones(5, np.float32)
    oa = AdamW([a], lr=0.1, use_gpu=False)
    ob = AdamW([b], lr=0.1, use_gpu=False)
    w = Window("sigmoid", n=4, tau=1, spe=10, x=0.1)
    sched = WindowLR(oa, w)
    for t, g in enumerate(grads, 1):
        ob.param_groups[0]["lr"] = 0.1 * w(t)
        oa.step(gradients=[g])
        ob.step(gradients=[g])
        sched.step()
    np.testing.assert_array_equal(a, b)
    assert sched.get_last_lr() == [pytest.approx(0.1 * w(11))]
    # state_dict round trip resumes the schedule
    fresh = AdamW([np.ones(5, np.float32)], lr=0.1, use_gpu=False)
    again = WindowLR(fresh, "flat")
    again.load_state_dict(sched.state_dict())
    assert fresh.param_groups[0]["lr"] == pytest.approx(0.1 * w(11))
    # AutoSGM has no 'lr': the schedule scales lr_cfg's lr_init
    p = np.ones(5, np.float32)
    auto = AutoSGM([p], lr_cfg=(False, 0.5, 0), use_gpu=False)
    s2 = WindowLR(auto, 2, n=1, tau=1, spe=4)
    assert auto.param_groups[0]["lr_cfg"].lr_init == 0.5
    s2.step()
    assert auto.param_groups[0]["lr_cfg"].lr_init == pytest.approx(0.5 * 0.75)
    auto.step(gradients=[np.ones(5, np.float32)])
    np.testing.assert_allclose(p, 1 - 0.5 * 0.75, rtol=1e-6)   # debiased filter: v = g at t=1
