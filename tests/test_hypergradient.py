"""HypergradientAdamW and AutoHypergradientAdamW: reference replays, kernels, behaviour, real runs."""
import json
import pickle

import numpy as np
import pytest

from hyperopt.backends import select_backend
from hyperopt.backends.numpy_backend import NumpyBackend
from hyperopt.hypergradient import AutoHypergradientAdamW, HypergradientAdamW
from hyperopt.kernels.hypergradient import hypergradient_direction, hypergradient_reduce

from benchmarks import tasks   # on sys.path through conftest.py
from conftest import GOLDENS



def make(cls, params, opt_kwargs, **kw):
    return cls(params, **opt_kwargs, **kw)


def golden(name):
    path = GOLDENS / name
    if not path.exists():
        pytest.fail(f"reference trajectory {path} is missing")
    d = np.load(path)
    kwargs = json.loads(str(d["config_json"]))["kwargs"]
    kwargs.pop("use_gpu")
    return d, kwargs


# ============================================================================ reference replays
@pytest.mark.parametrize("name, cls", [("grilly_hyper_basic_7922440b.npz", HypergradientAdamW),
                                       ("grilly_auto_momentum_surprise_7922440b.npz", AutoHypergradientAdamW)])
def test_replay_reference_trajectory(name, cls, opt_kwargs):
    d, kwargs = golden(name)
    W, b = d["W0"].copy(), d["b0"].copy()
    opt = make(cls, [W, b], opt_kwargs, **kwargs)
    for t in range(30):
        opt.step(gradients={id(W): d["grad_W"][t], id(b): d["grad_b"][t]})
        np.testing.assert_allclose(W, d["W_traj"][t + 1], rtol=1e-5, atol=1e-6, err_msg=f"W after step {t + 1}")
        np.testing.assert_allclose(b, d["b_traj"][t + 1], rtol=1e-5, atol=1e-6, err_msg=f"b after step {t + 1}")
        np.testing.assert_allclose(opt.current_lr, d["lr_after_step"][t], rtol=1e-5, err_msg=f"lr after step {t + 1}")
        np.testing.assert_allclose(opt.param_groups[0]["betas"][0], d["beta1_after_step"][t], rtol=1e-6)
        if cls is AutoHypergradientAdamW:
            for value, key in [(opt.current_surprise, "surprise"), (opt.accumulated_surprise, "s_bar"),
                               (opt.current_surprise_gain, "surprise_gain")]:
                np.testing.assert_allclose(value, d[key][t], rtol=1e-4, atol=1e-6, err_msg=f"{key} after step {t + 1}")
    lrs = list(d["lr_after_step"])
    if cls is HypergradientAdamW:   # adapted from step 2 on: the initial value, then 29 adaptations
        np.testing.assert_allclose(opt.lr_history, [kwargs["lr"]] + lrs[1:], rtol=1e-5)
    else:                           # warmup 3: adapted from step 4 on
        np.testing.assert_allclose(opt.lr_history, [kwargs["lr"]] + lrs[3:], rtol=1e-5)
        np.testing.assert_allclose(opt.surprise_history, d["surprise"][3:], rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(opt.s_bar_history, d["s_bar"][3:], rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(opt.beta1_history, [0.9] + list(d["beta1_after_step"][3:]), rtol=1e-6)


# ============================================================================ kernels
# On "numpy" the twin is checked against the formulas; on "vulkan" the shader against the twin.
def _run_kernel(backend, kernel, names, arrays, states, rows, active):
    """One dispatch of ``kernel``; returns the state buffers after it and its per-segment sums."""
    backend.bind([a.copy() for a in arrays], tuple(states))
    for name, values in states.items():
        for i, v in enumerate(values):
            backend.write(name, i, v)
    prog = backend.program([(kernel, names)])
    prog.tables[0][:] = rows
    sums = backend.run(prog, {i: _grad(arrays[i]) for i in active}, download=False)[0]
    out = {name: [backend.read(name, i) for i in range(len(arrays))] for name in states}
    backend.close()
    return out, sums


def _grad(a):
    return a * np.float32(0.5) - np.float32(0.25)


SIZES = [1, 255, 257, 4099, (1 << 20) + 3]


def test_reduce_kernel(opt_kwargs):
    rng = np.random.default_rng(1)
    arrays = [rng.standard_normal(n).astype(np.float32) for n in SIZES]
    states = {name: [rng.standard_normal(n).astype(np.float32) for n in SIZES]
              for name in ("direction", "exp_avg", "grad_ema")}
    # per segment: momentum on/off, surprise on/off; segment 1 has no gradient
    rows = np.array([[1, 1], [1, 1], [0, 1], [1, 0], [1, 1]], np.float32)
    active = [0, 2, 3, 4]
    args = (hypergradient_reduce, ("grad", "direction", "exp_avg", "grad_ema"), arrays, states, rows, active)
    ref, ref_sums = _run_kernel(NumpyBackend(), *args)
    got, sums = _run_kernel(select_backend(**opt_kwargs), *args)
    np.testing.assert_allclose(sums, ref_sums, rtol=2e-5, atol=1e-4)
    for name, values in states.items():          # the reduction only reads
        for i in range(len(SIZES)):
            np.testing.assert_array_equal(got[name][i], values[i])
    for i in active:
        g = _grad(arrays[i]).astype(np.float64)
        d, m, ema = (states[name][i].astype(np.float64) for name in ("direction", "exp_avg", "grad_ema"))
        mom, sur = rows[i]
        expect = [g @ d, (g @ m) * mom, (g @ g) * sur, ((g - ema) @ (g - ema)) * sur]
        np.testing.assert_allclose(sums[i], expect, rtol=2e-5, atol=1e-4 * np.sqrt(g.size))
    assert np.all(sums[1] == 0)                                                   # no gradient: no sums


def test_direction_kernel(opt_kwargs):
    rng = np.random.default_rng(2)
    arrays = [rng.standard_normal(n).astype(np.float32) for n in SIZES]
    v = np.split(10.0 ** rng.uniform(-20, 6, size=sum(SIZES)), np.cumsum(SIZES)[:-1])   # many decades
    states = {"exp_avg": [rng.standard_normal(n).astype(np.float32) for n in SIZES],
              "exp_avg_sq": [x.astype(np.float32) for x in v],
              "max_exp_avg_sq": [(2 * x).astype(np.float32) for x in v],
              "direction": [np.full(n, 7.0, np.float32) for n in SIZES],
              "grad_ema": [rng.standard_normal(n).astype(np.float32) for n in SIZES]}
    # per segment: bias corrections, eps, amsgrad, then the EMA (moved on / off / started at g)
    rows = np.array([[0.1, 0.001, 1e-8, 0, 1, 0.9, 0.1], [0.19, 0.002, 1e-8, 1, 1, 0.9, 0.1],
                     [0.5, 0.5, 1e-3, 0, 1, 0.9, 0.1], [1.0, 1.0, 1e-8, 1, 0, 0.9, 0.1],
                     [0.9, 0.1, 1e-6, 0, 1, 0.0, 1.0]], np.float32)
    active = [0, 1, 3, 4]
    args = (hypergradient_direction, ("exp_avg", "exp_avg_sq", "max_exp_avg_sq", "direction", "grad", "grad_ema"),
            arrays, states, rows, active)
    ref, ref_sums = _run_kernel(NumpyBackend(), *args)
    got, sums = _run_kernel(select_backend(**opt_kwargs), *args)
    for i in range(len(SIZES)):
        np.testing.assert_allclose(got["direction"][i], ref["direction"][i], rtol=2e-6)
        np.testing.assert_allclose(got["grad_ema"][i], ref["grad_ema"][i], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(sums, ref_sums, rtol=2e-5)
    np.testing.assert_array_equal(got["grad_ema"][4], _grad(arrays[4]))           # a fresh EMA is g itself
    np.testing.assert_array_equal(got["grad_ema"][2], states["grad_ema"][2])      # no gradient: untouched
    for i in active:
        g, ema = _grad(arrays[i]).astype(np.float64), states["grad_ema"][i].astype(np.float64)
        surprise, decay, rate = rows[i, 4:]
        np.testing.assert_allclose(got["grad_ema"][i], decay * ema + rate * g if surprise else ema, rtol=1e-6,
                                   atol=1e-7)
        bc1, bc2, eps, amsgrad = (float(x) for x in rows[i, :4])
        m = states["exp_avg"][i].astype(np.float64)
        second = states["max_exp_avg_sq" if amsgrad else "exp_avg_sq"][i].astype(np.float64)
        d = m / bc1 / (np.sqrt(second / bc2) + eps)
        np.testing.assert_allclose(got["direction"][i], d, rtol=2e-6)
        assert sums[i, 0] == pytest.approx(d @ d, rel=2e-5)
    np.testing.assert_array_equal(got["direction"][2], 7.0)   # no gradient: untouched
    assert sums[2, 0] == 0


# ============================================================================ behaviour
def _constant(n=6):
    return np.linspace(-1.0, 1.0, n).astype(np.float32) + 0.1


def _run(opt, params, grads_fn, steps):
    lrs = []
    for k in range(steps):
        opt.step(gradients=[grads_fn(k, i) for i in range(len(params))])
        lrs.append([g["lr"] for g in opt.param_groups])
    return np.array(lrs)


@pytest.mark.parametrize("cls, kw", [(HypergradientAdamW, dict(beta_hyper=1e-3)),
                                     (AutoHypergradientAdamW, dict(warmup_steps=2))])
def test_lr_rises_when_gradients_agree_and_falls_when_they_oscillate(cls, kw, opt_kwargs):
    g = _constant()
    p = np.zeros(6, np.float32)
    lrs = _run(make(cls, [p], opt_kwargs, lr=0.01, **kw), [p], lambda k, i: g, 20)[:, 0]
    assert lrs[-1] > 0.01 and np.all(np.diff(lrs) >= 0)
    p = np.zeros(6, np.float32)
    lrs = _run(make(cls, [p], opt_kwargs, lr=0.01, **kw), [p], lambda k, i: g * (-1) ** k, 20)[:, 0]
    assert lrs[-1] < 0.01 and np.all(np.diff(lrs) <= 0)


def test_lr_stays_in_range(opt_kwargs):
    g = _constant()
    for sign, bound in [(1, 0.05), (-1, 1e-3)]:
        for cls, kw in [(HypergradientAdamW, dict(beta_hyper=1.0)),
                        (HypergradientAdamW, dict(beta_hyper=1.0, log_scale=True)),
                        (AutoHypergradientAdamW, dict(hyper_lr=1.0, warmup_steps=0))]:
            p = np.zeros(6, np.float32)
            opt = make(cls, [p], opt_kwargs, lr=0.01, lr_min=1e-3, lr_max=0.05, **kw)
            lrs = _run(opt, [p], lambda k, i: g * sign ** k, 60)[:, 0]
            assert np.all((lrs >= 1e-3) & (lrs <= 0.05)), (cls, kw)
            assert lrs[-1] == pytest.approx(bound), (cls, kw, sign)


def test_auto_lr_changes_at_most_ten_percent_per_step(opt_kwargs):
    rng = np.random.default_rng(3)
    grads = [rng.standard_normal(50).astype(np.float32) * (1 + k % 3) for k in range(40)]
    p = np.zeros(50, np.float32)
    opt = make(AutoHypergradientAdamW, [p], opt_kwargs, lr=0.01, hyper_lr=1.0, warmup_steps=0)
    lrs = np.r_[0.01, _run(opt, [p], lambda k, i: grads[k], 40)[:, 0]]
    ratio = lrs[1:] / lrs[:-1]
    assert np.all(np.abs(ratio - 1) <= 0.1 + 1e-12)
    assert np.isclose(np.abs(ratio - 1), 0.1).sum() > 10   # the limit really binds


@pytest.mark.parametrize("warmup", [0, 5])
def test_auto_does_not_adapt_during_warmup(warmup, opt_kwargs):
    g = _constant()
    p = np.zeros(6, np.float32)
    opt = make(AutoHypergradientAdamW, [p], opt_kwargs, lr=0.01, warmup_steps=warmup, adapt_momentum=True,
               track_surprise=True)
    for k in range(warmup + 2):
        opt.step(gradients=[g * (1 + k % 2)])
        moved = opt.current_lr != 0.01
        assert moved == (k >= max(warmup, 1)), k    # step 1 has no previous direction either
        assert (opt.param_groups[0]["betas"][0] != 0.9) == moved
        assert (opt.current_surprise != 0) == (k >= warmup)


@pytest.mark.parametrize("sign, bound", [(1, "beta_min"), (-1, "beta_max")])
def test_beta1_stays_in_range(sign, bound, opt_kwargs):
    g = _constant()
    p = np.zeros(6, np.float32)
    opt = make(AutoHypergradientAdamW, [p], opt_kwargs, lr=0.01, adapt_momentum=True, hyper_lr_beta=0.5,
               beta_min=0.6, beta_max=0.95, warmup_steps=1)
    betas = []
    for k in range(30):
        opt.step(gradients=[g * sign ** k])
        betas.append(opt.param_groups[0]["betas"][0])
    assert all(0.6 <= b <= 0.95 for b in betas)
    assert betas[-1] == pytest.approx(opt.param_groups[0][bound])   # agreeing grads lower beta1, oscillating raise it
    assert opt.beta1_history[-1] == betas[-1]


@pytest.mark.parametrize("cls, kw", [(HypergradientAdamW, dict(beta_hyper=1e-3)),
                                     (AutoHypergradientAdamW, dict(warmup_steps=2, adapt_momentum=True))])
def test_groups_adapt_independently(cls, kw, opt_kwargs):
    g = _constant()
    steady = lambda k, i: g                     # noqa: E731
    flip = lambda k, i: g * (-1) ** k           # noqa: E731
    a, b = np.zeros(6, np.float32), np.zeros(6, np.float32)
    opt = make(cls, [{"params": [a]}, {"params": [b], "lr": 0.02}], opt_kwargs, lr=0.01, **kw)
    lrs = _run(opt, [a, b], lambda k, i: steady(k, i) if i == 0 else flip(k, i), 15)
    assert lrs[-1, 0] > 0.01 and lrs[-1, 1] < 0.02
    # each group follows exactly the trajectory it would follow alone
    for start, fn, col, x in [(0.01, steady, 0, a), (0.02, flip, 1, b)]:
        p = np.zeros(6, np.float32)
        alone = _run(make(cls, [p], opt_kwargs, lr=start, **kw), [p], fn, 15)[:, 0]
        np.testing.assert_allclose(lrs[:, col], alone, rtol=1e-12)
        np.testing.assert_array_equal(x, p)
    assert opt.history(1)["lr"][-1] == lrs[-1, 1]


def test_add_param_group_mid_run(opt_kwargs):
    g = _constant()
    a, b, alone = np.zeros(6, np.float32), np.zeros(6, np.float32), np.zeros(6, np.float32)
    opt = make(AutoHypergradientAdamW, [a], opt_kwargs, warmup_steps=1, track_surprise=True)
    ref = make(AutoHypergradientAdamW, [alone], opt_kwargs, warmup_steps=1)
    for k in range(12):
        if k == 4:
            opt.add_param_group({"params": [b], "lr": 0.02})
        opt.step(gradients=[g, -g][: len(opt.param_groups)])
        ref.step(gradients=[g])
        np.testing.assert_array_equal(a, alone)   # the first group goes on as if alone
    assert opt.lr_history == ref.lr_history
    # 8 steps for the new group: its initial lr, then 7 adaptations (its first step has no direction)
    assert len(opt.history(1)["lr"]) == 8 and opt.param_groups[1]["lr"] > 0.02


def test_state_dict_round_trip_continues_identically(opt_kwargs):
    rng = np.random.default_rng(4)
    grads = [[rng.standard_normal((3, 4)).astype(np.float32), rng.standard_normal(5).astype(np.float32)]
             for _ in range(16)]
    kw = dict(lr=0.01, adapt_momentum=True, track_surprise=True, warmup_steps=2, hyper_lr_beta=0.1)
    ref = [np.ones((3, 4), np.float32), np.zeros(5, np.float32)]
    opt = make(AutoHypergradientAdamW, [{"params": [ref[0]]}, {"params": [ref[1]], "lr": 0.003}], opt_kwargs, **kw)
    for k in range(8):
        opt.step(gradients=grads[k])
    saved = pickle.loads(pickle.dumps(opt.state_dict()))
    resumed = [ref[0].copy(), ref[1].copy()]
    opt2 = make(AutoHypergradientAdamW, [{"params": [resumed[0]]}, {"params": [resumed[1]]}], opt_kwargs,
                **dict(kw, lr=0.5, adapt_momentum=False))
    opt2.load_state_dict(saved)
    for k in range(8, 16):
        opt.step(gradients=grads[k])
        opt2.step(gradients=grads[k])
        for x, y in zip(ref, resumed):
            np.testing.assert_array_equal(x, y)
        assert [g["lr"] for g in opt.param_groups] == [g["lr"] for g in opt2.param_groups]
        assert [g["betas"] for g in opt.param_groups] == [g["betas"] for g in opt2.param_groups]
        assert opt.current_surprise_gain == opt2.current_surprise_gain
    assert opt.lr_history == opt2.lr_history and opt.surprise_history == opt2.surprise_history
    assert opt.history(1) == opt2.history(1)


def test_schedule_writing_lr_rebases_the_adaptation(opt_kwargs):
    g = _constant()
    for cls, kw in [(HypergradientAdamW, dict(beta_hyper=1e-3)), (AutoHypergradientAdamW, dict(warmup_steps=1))]:
        p = np.zeros(6, np.float32)
        opt = make(cls, [p], opt_kwargs, lr=0.01, **kw)
        for _ in range(5):
            before = opt.current_lr
            opt.step(gradients=[g])
        opt.param_groups[0]["lr"] = 0.002          # what a scheduler does
        opt.step(gradients=[g])
        if cls is HypergradientAdamW:   # the same additive step as before, from the scheduled value
            assert opt.current_lr - 0.002 == pytest.approx(opt.lr_history[-2] - before, rel=1e-3)
        else:                           # at most 10% above the scheduled value
            assert 0.002 < opt.current_lr <= 0.0022 + 1e-12


@pytest.mark.parametrize("key, value, message", [("lr", -0.5, "Invalid learning rate: -0.5"),
                                                   ("betas", (0.9, 1.5), "Invalid beta parameter at index 1")])
def test_user_edits_after_adaptation_are_still_checked(key, value, message, opt_kwargs):
    """An adapting optimizer does not re-check the values it set itself, but a value the user
    writes between steps is still checked, and refused with nothing changed."""
    g = _constant()
    for cls, kw in [(HypergradientAdamW, dict(beta_hyper=1e-3)), (AutoHypergradientAdamW, dict(warmup_steps=0))]:
        p = np.zeros(6, np.float32)
        opt = make(cls, [p], opt_kwargs, lr=0.01, **kw)
        for _ in range(4):
            opt.step(gradients=[g])
        assert opt.current_lr != 0.01                     # it adapted
        before, state = p.copy(), opt.state_dict()
        opt.param_groups[0][key] = value
        with pytest.raises(ValueError, match=message):
            opt.step(gradients=[g])
        np.testing.assert_array_equal(p, before)
        assert opt.state_dict()["state"][0]["step"] == state["state"][0]["step"]


def test_histories_are_bounded(opt_kwargs):
    g = _constant()
    for size, expect in [(4, 4), (0, 0), (None, 20)]:
        p = np.zeros(6, np.float32)
        opt = make(AutoHypergradientAdamW, [p], opt_kwargs, warmup_steps=0, adapt_momentum=True, track_surprise=True,
                   history_size=size)
        for k in range(20):
            opt.step(gradients=[g * (1 + k % 2)])
        assert len(opt.lr_history) == len(opt.beta1_history) == len(opt.s_bar_history) == expect
        assert len(opt.surprise_history) == expect
    for bad in (-1, 2.5, True):
        with pytest.raises(ValueError, match="history_size"):
            HypergradientAdamW([np.zeros(2, np.float32)], use_gpu=False, history_size=bad)


def test_parameter_without_gradient_is_skipped(opt_kwargs):
    a, b = np.ones(4, np.float32), np.ones(3, np.float32)
    opt = make(AutoHypergradientAdamW, [a, b], opt_kwargs, warmup_steps=0, track_surprise=True)
    for k in range(5):
        opt.step(gradients={id(a): np.full(4, 0.5 + k, np.float32)})
    np.testing.assert_array_equal(b, 1.0)
    assert opt.state_of(b) == {}
    assert opt.current_lr > 1e-3


def test_maximize_mirrors_minimize(opt_kwargs):
    rng = np.random.default_rng(5)
    grads = [rng.standard_normal(7).astype(np.float32) + 0.3 for _ in range(12)]
    out = []
    for maximize, sign in [(False, 1), (True, -1)]:
        p = np.zeros(7, np.float32)
        opt = make(AutoHypergradientAdamW, [{"params": [p], "maximize": maximize}], opt_kwargs, warmup_steps=1)
        for g in grads:
            opt.step(gradients=[sign * g])
        out.append((p, opt.lr_history))
    np.testing.assert_array_equal(out[0][0], out[1][0])
    assert out[0][1] == out[1][1] and len(out[0][1]) > 5


def test_state_on_the_backend(opt_kwargs):
    rng = np.random.default_rng(6)
    p = np.zeros(300, np.float32)
    opt = make(AutoHypergradientAdamW, [p], opt_kwargs, warmup_steps=0, track_surprise=True)
    g1, g2 = rng.standard_normal(300).astype(np.float32), rng.standard_normal(300).astype(np.float32)
    opt.step(gradients=[g1])
    opt.step(gradients=[g2])
    st = opt.state_of(p)
    m_hat = st["exp_avg"] / (1 - 0.9 ** 2)
    v_hat = st["exp_avg_sq"] / (1 - 0.999 ** 2)
    np.testing.assert_allclose(st["direction"], m_hat / (np.sqrt(v_hat) + 1e-8), rtol=1e-5)
    assert st["direction_sq"] == pytest.approx(float(np.sum(st["direction"].astype(np.float64) ** 2)), rel=1e-5)
    np.testing.assert_allclose(st["grad_ema"], 0.9 * g1 + 0.1 * g2, rtol=1e-5, atol=1e-7)
    assert "grad_ema" not in make(AutoHypergradientAdamW, [p], opt_kwargs).state_buffers


@pytest.mark.parametrize("kw, message", [
    (dict(lr=-1.0), "Invalid learning rate: -1.0"),
    (dict(lr_min=-1e-6), "Invalid lr_min value: -1e-06"),
    (dict(lr_min=0.1, lr_max=0.01), "Invalid lr_max value: 0.01"),
    (dict(beta_hyper=-1.0), "Invalid beta_hyper value: -1.0"),
    (dict(log_scale=True, lr_min=0.0), "Invalid lr_min value"),
    (dict(betas=(1.0, 0.999)), "Invalid beta parameter at index 0: 1.0"),
])
def test_hypergradient_validation(kw, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        HypergradientAdamW([np.zeros(2, np.float32)], use_gpu=False, **kw)


@pytest.mark.parametrize("kw, message", [
    (dict(hyper_lr=-0.1), "Invalid hyper_lr value: -0.1"),
    (dict(hyper_lr_beta=-1.0), "Invalid hyper_lr_beta value: -1.0"),
    (dict(beta_min=0.9, beta_max=0.8), "Invalid beta_max value: 0.8"),
    (dict(beta_max=1.0), "Invalid beta_max value: 1.0"),
    (dict(warmup_steps=-1), "Invalid warmup_steps value: -1"),
    (dict(warmup_steps=1.5), "Invalid warmup_steps value: 1.5"),
    (dict(surprise_gamma=1.5), "Invalid surprise_gamma value: 1.5"),
    (dict(surprise_alpha=-0.1), "Invalid surprise_alpha value: -0.1"),
    (dict(trauma_threshold=0.0), "Invalid trauma_threshold value: 0.0"),
])
def test_auto_validation(kw, message):
    with pytest.raises(ValueError, match=message):
        AutoHypergradientAdamW([np.zeros(2, np.float32)], use_gpu=False, **kw)


def test_repr_and_properties():
    p = np.zeros(3, np.float32)
    opt = AutoHypergradientAdamW([p], lr=0.02, track_surprise=True, use_gpu=False)
    text = repr(opt)
    assert text.startswith("AutoHypergradientAdamW") and "track_surprise=True" in text and "lr: 0.02" in text
    assert opt.current_lr == 0.02 and opt.lr_history == [0.02] and opt.beta1_history == [0.9]
    assert (opt.current_surprise, opt.accumulated_surprise, opt.current_surprise_gain) == (0.0, 0.0, 0.0)
    assert opt.surprise_history == [] and opt.s_bar_history == []
    assert "beta_hyper: 1e-07" in repr(HypergradientAdamW([p], use_gpu=False))


# ============================================================================ real training
@pytest.mark.parametrize("cls, kw", [(HypergradientAdamW, dict(lr=0.01, beta_hyper=1e-4)),
                                     (AutoHypergradientAdamW, dict(lr=0.01, adapt_momentum=True, track_surprise=True))])
def test_trains_an_mlp_on_two_moons(cls, kw, opt_kwargs):
    Xtr, ytr, Xte, yte = tasks.two_moons()
    model = tasks.MLP([2, 16, 16, 2], seed=0)
    opt = make(cls, model.params, opt_kwargs, **kw)
    losses = tasks.train(model, opt, Xtr, ytr, epochs=10)
    assert np.mean(losses[-10:]) < 0.25 * np.mean(losses[:10])
    assert model.accuracy(Xte, yte) >= 0.97


@pytest.mark.parametrize("cls, kw", [(HypergradientAdamW, dict(lr=0.003, beta_hyper=1e-5)),
                                     (AutoHypergradientAdamW, dict(lr=0.003, adapt_momentum=True))])
def test_trains_an_mlp_on_digits(cls, kw, opt_kwargs):
    Xtr, ytr, Xte, yte = tasks.digits()
    model = tasks.MLP([64, 32, 10], seed=0)
    opt = make(cls, model.params, opt_kwargs, **kw)
    tasks.train(model, opt, Xtr, ytr, epochs=10)
    assert model.accuracy(Xte, yte) >= 0.94


@pytest.mark.parametrize("rows", [[3], [0], [2, 3, 4], [1, 3, 7], list(range(10)), [5], [4, 5, 6]])
def test_group_totals_are_numpys_sum_of_the_rows_bit_for_bit(rows):
    """A group's sums are totalled without gathering consecutive rows, with NumPy's additions:
    the bits of ``sums[rows].sum(axis=0)``, -0.0, infinities and NaN included."""
    from hyperopt.hypergradient import _rows_total
    sums = np.random.default_rng(2).standard_normal((10, 4))
    sums[3, 1], sums[4, 2], sums[5, 0] = -0.0, np.inf, np.nan
    want = sums[rows].sum(axis=0)
    assert (_rows_total(sums, rows).view(np.uint64) == want.view(np.uint64)).all()
