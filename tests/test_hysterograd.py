"""HIOptimizer (HysteroGrad): golden replays, the freeze/thaw mechanics, and a real training run."""
import json
import pickle
import re
from pathlib import Path

import numpy as np
import pytest

from hyperopt.hysterograd import HIOptimizer
from hyperopt.kernels import hysterograd as hk
from conftest import GOLDENS

ROOT = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------------------- golden replays
def _golden(name):
    path = GOLDENS / f"{name}.npz"
    if not path.exists():
        pytest.fail(f"reference trajectory {path} is missing")
    return np.load(path)


@pytest.mark.parametrize("name", ["hysterograd_defaults", "hysterograd_two_groups_shock"])
def test_golden_replay(name, opt_kwargs):
    d = _golden(name)
    cfg = json.loads(str(d["config_json"]))
    W, b = d["W0"].copy(), d["b0"].copy()
    if cfg["groups"] == "single":
        opt = HIOptimizer([W, b], **opt_kwargs, **cfg["kwargs"])
    else:
        over = cfg["group_overrides"]
        opt = HIOptimizer([dict(params=[W], **over[0]), dict(params=[b], **over[1])], **opt_kwargs, **cfg["kwargs"])
    shock = cfg.get("shock") or {}
    status = []
    for t in range(30):
        s, norm, width = opt.step(gradients={id(W): d["grad_W"][t], id(b): d["grad_b"][t]})
        status.append(int(s == "Liquid"))
        np.testing.assert_allclose(W, d["W_traj"][t + 1], rtol=1e-5, atol=1e-6, err_msg=f"W after step {t + 1}")
        np.testing.assert_allclose(b, d["b_traj"][t + 1], rtol=1e-5, atol=1e-6, err_msg=f"b after step {t + 1}")
        diag = opt.diagnostics()
        for key, gold in (("tau", "group_tau"), ("temperature", "group_temp"), ("energy", "group_avg_energy")):
            np.testing.assert_allclose([g[key] for g in diag], d[gold][t], rtol=1e-5,
                                       err_msg=f"{key} after step {t + 1}")
        assert norm == pytest.approx(d["ret_grad_norm"][t], rel=1e-5)
        assert width == pytest.approx(d["ret_h_width"][t], rel=1e-5)
        if shock and t + 1 == shock["after_step"]:
            opt.shock(shock["factor"])
    assert status == d["status_liquid"].tolist()


# ---------------------------------------------------------------------------- mechanics
# A constant gradient on 100 elements: c = 1/sqrt(1 - beta^t) per element, so the norm falls towards
# 10 while the barrier kappa*sqrt(tau) rises (initial_temp=0, no adaptive factor): the group freezes
# at a predictable step (14 for kappa=2.5).
G0 = np.full(100, 0.1, np.float32)
MECH = dict(lr=0.1, beta=0.9, adaptive_threshold=False, initial_temp=0.0)


def trace(opt, p, grads):
    """Step through ``grads`` (one parameter ``p``); per step: (status, diagnostics, ``p`` after)."""
    out = []
    for g in grads:
        status = opt.step(gradients=[g])[0]
        out.append((status, opt.diagnostics(), p.copy()))
    return out


def first_frozen(statuses):
    return next((t + 1 for t, s in enumerate(statuses) if s == "Frozen"), None)


def test_freezes_when_barrier_passes_norm_and_parameters_stop(opt_kwargs):
    p = np.zeros(100, np.float32)
    opt = HIOptimizer([p], **opt_kwargs, stiffening_factor=2.5, **MECH)
    before = p.copy()
    metric_before = None
    frozen_at = None
    for t in range(20):
        tau_before = opt.diagnostics()[0]["tau"]
        status, _, _ = opt.step(gradients=[G0])
        d = opt.diagnostics()[0]
        assert d["status"] == status
        if status == "Liquid":
            assert d["norm"] > d["barrier"]
            assert not np.array_equal(p, before)
        else:
            frozen_at = frozen_at or t + 1
            assert d["barrier"] >= d["norm"]
            np.testing.assert_array_equal(p, before)          # frozen: the parameters do not move
            assert d["tau"] > tau_before                      # ... but internal time and the metric go on
            assert not np.array_equal(opt.state_of(p)["metric"], metric_before)
        before = p.copy()
        metric_before = opt.state_of(p)["metric"]
    assert frozen_at == 14
    # upstream's single threshold with tau still growing: once frozen, it stays frozen
    assert all(s == "Frozen" for s, _, _ in trace(opt, p, [G0] * 5))


def test_shock_lowers_tau_and_thaws(opt_kwargs):
    p = np.zeros(100, np.float32)
    opt = HIOptimizer([p], **opt_kwargs, stiffening_factor=2.5, **MECH)
    assert [opt.step(gradients=[G0])[0] for _ in range(16)][-1] == "Frozen"
    d = opt.diagnostics()[0]
    opt.shock(0.1)
    shocked = opt.diagnostics()[0]
    assert shocked["tau"] == pytest.approx(0.1 * d["tau"], rel=1e-6)
    assert shocked["temperature"] == pytest.approx(0.2)      # T <- max(T, 0.2); it was 0
    frozen = p.copy()
    status, _, _ = opt.step(gradients=[G0])
    assert status == "Liquid"
    assert not np.array_equal(p, frozen)


def test_cooling_delays_freezing(opt_kwargs):
    steps = {}
    for cooling in (0.0, 0.8, 0.9, 0.95):    # 0: cold from the first step, like initial_temp=0 (step 14)
        p = np.zeros(100, np.float32)
        opt = HIOptimizer([p], **opt_kwargs, stiffening_factor=2.5, cooling_rate=cooling,
                          **dict(MECH, initial_temp=1.0))
        statuses = [opt.step(gradients=[G0])[0] for _ in range(60)]
        steps[cooling] = first_frozen(statuses)
        assert opt.diagnostics()[0]["temperature"] == pytest.approx(cooling ** 60, rel=1e-4, abs=1e-30)
    assert steps[0.0] == 14
    assert steps[0.0] < steps[0.8] < steps[0.9] < steps[0.95] <= 60, steps    # hot for longer: freezes later


def test_layer_specific_stiffening(opt_kwargs):
    a, b = np.zeros(100, np.float32), np.zeros(100, np.float32)
    opt = HIOptimizer([dict(params=[a], stiffening_factor=3.0), dict(params=[b], stiffening_factor=2.0)],
                      **opt_kwargs, **MECH)
    per_group = []
    for _ in range(25):
        opt.step(gradients=[G0, G0])
        per_group.append([g["status"] for g in opt.diagnostics()])
    freeze = [first_frozen([s[k] for s in per_group]) for k in range(2)]
    assert freeze == [10, 20]
    # the stiff group stopped, the soft one kept moving until its own freeze
    assert not np.array_equal(a, b)


def test_grad_clip_bounds_the_step(opt_kwargs):
    rng = np.random.default_rng(3)
    ps = [np.zeros((6, 7), np.float32), np.zeros(5, np.float32)]
    clip, lr = 1.5, 0.05
    opt = HIOptimizer(ps, **opt_kwargs, lr=lr, grad_clip=clip, stiffening_factor=0.0)
    clipped = 0
    for _ in range(10):
        before = [p.copy() for p in ps]
        grads = [rng.standard_normal(p.shape).astype(np.float32) for p in ps]
        status, norm, _ = opt.step(gradients=grads)
        d = opt.diagnostics()[0]
        moved = np.sqrt(sum(float(((p - q).astype(np.float64) ** 2).sum()) for p, q in zip(ps, before)))
        assert status == "Liquid"
        assert norm <= clip * (1 + 1e-6)
        assert moved <= lr * clip * (1 + 1e-5)
        assert moved == pytest.approx(lr * norm, rel=1e-4)     # the step is lr * k * c, |k c| = n_eff
        clipped += d["clip_factor"] < 1
    assert clipped >= 5     # sign-like early steps have n ~ 10*sqrt(47): clipping really happened


def test_schmitt_trigger_thaws_above_upper_threshold(opt_kwargs):
    # Freeze at step 14, then a mild gradient spike at step 15 (n ~ 1.56 h) and a large one at step 19
    # (n ~ 2.3 h).  One threshold thaws on both; the band (1, 2) ignores the mild one.
    def grads():
        return [G0 * 2 if t == 14 else G0 * 30 if t == 18 else G0 for t in range(20)]

    runs = {}
    for schmitt in (None, (1.0, 2.0)):
        p = np.zeros(100, np.float32)
        opt = HIOptimizer([p], **opt_kwargs, stiffening_factor=2.5, schmitt=schmitt, **MECH)
        runs[schmitt] = trace(opt, p, grads())
    plain, band = runs[None], runs[(1.0, 2.0)]
    for t in range(14):    # identical up to the freeze: the band's lower threshold is the barrier
        assert plain[t][0] == band[t][0]
    assert plain[13][0] == band[13][0] == "Frozen"
    mild = band[14][1][0]
    assert mild["barrier"] < mild["norm"] <= 2 * mild["barrier"]
    assert plain[14][0] == "Liquid" and band[14][0] == "Frozen"
    np.testing.assert_array_equal(band[14][2], band[13][2])      # still frozen: nothing moved
    big = band[18][1][0]
    assert big["norm"] > 2 * big["barrier"]
    assert band[18][0] == "Liquid"
    assert not np.array_equal(band[18][2], band[17][2])


def test_schmitt_lower_threshold_keeps_a_liquid_group_liquid(opt_kwargs):
    statuses = {}
    for schmitt in (None, (0.9, 1.0)):
        p = np.zeros(100, np.float32)
        opt = HIOptimizer([p], **opt_kwargs, stiffening_factor=2.5, schmitt=schmitt, **MECH)
        statuses[schmitt] = [opt.step(gradients=[G0])[0] for _ in range(20)]
    assert first_frozen(statuses[None]) == 14                  # n = 0.97 h there
    assert first_frozen(statuses[(0.9, 1.0)]) > 14


def test_metric_power_one_is_the_diagonal_natural_gradient(opt_kwargs):
    rng = np.random.default_rng(1)
    p = rng.standard_normal(33).astype(np.float32)
    ref = p.astype(np.float64)
    G = np.zeros(33)
    opt = HIOptimizer([p], **opt_kwargs, lr=0.01, beta=0.9, epsilon=1e-3, metric_power=1.0, stiffening_factor=0.0)
    for _ in range(5):
        g = rng.standard_normal(33).astype(np.float32)
        opt.step(gradients=[g])
        G = 0.9 * G + 0.1 * g.astype(np.float64) ** 2
        ref -= 0.01 * g / (G + 1e-3)
    np.testing.assert_allclose(p, ref, rtol=1e-5, atol=1e-6)


def test_group_state_is_per_group_and_means_use_active_groups(opt_kwargs):
    a, b, c = (np.zeros(8, np.float32) for _ in range(3))
    opt = HIOptimizer([dict(params=[a, b]), dict(params=[c], lr=0.1)], **opt_kwargs)
    # only the second parameter of group 0 has a gradient: its group still steps (upstream kept the
    # group's state on the first parameter)
    status, norm, width = opt.step(gradients={id(b): np.ones(8, np.float32)})
    d0, d1 = opt.diagnostics()
    assert status == "Liquid" and d0["tau"] > 0
    assert d1["tau"] == 0 and d1["norm"] == 0 and d1["temperature"] == 1.0
    assert norm == pytest.approx(d0["norm"]) and width == pytest.approx(d0["barrier"])  # not halved
    assert np.all(a == 0) and np.all(b != 0) and np.all(c == 0)
    assert id(a) not in opt.state and id(b) in opt.state     # a parameter without a gradient gets no state
    opt.step(gradients={id(c): np.ones(8, np.float32)})
    assert opt.diagnostics()[0]["tau"] == d0["tau"]     # a group without gradients is skipped entirely
    assert opt.diagnostics()[1]["temperature"] == pytest.approx(0.99)


def test_state_dict_round_trip_resumes_exactly(opt_kwargs):
    rng = np.random.default_rng(5)
    grads = [[G0 * rng.uniform(0.8, 1.2, 100).astype(np.float32) for _ in range(2)] for _ in range(20)]

    def fresh(values=(np.zeros(100, np.float32), np.zeros(100, np.float32))):
        ps = [v.copy() for v in values]
        return ps, HIOptimizer([dict(params=[ps[0]], stiffening_factor=3.0, grad_clip=12.0),
                                dict(params=[ps[1]], stiffening_factor=2.0, schmitt=(0.9, 1.1))], **opt_kwargs, **MECH)

    def steps(opt, grads):
        return [(opt.step(gradients=g), opt.diagnostics()) for g in grads]

    ps, opt = fresh()
    ref = steps(opt, grads)
    ref_params = [p.copy() for p in ps]
    assert sum(d["status"] == "Frozen" for _, diag in ref[10:] for d in diag) >= 3

    ps, opt = fresh()
    for g in grads[:10]:
        opt.step(gradients=g)
    saved = pickle.loads(pickle.dumps(opt.state_dict()))
    assert saved["extra"][0]["tau"] > 0 and "metric" in saved["state"][0]
    ps, opt = fresh(ps)
    opt.load_state_dict(saved)
    assert steps(opt, grads[10:]) == ref[10:]
    for p, q in zip(ps, ref_params):
        np.testing.assert_array_equal(p, q)


def test_closure_loss_is_kept(opt_kwargs):
    p = np.zeros(3, np.float32)
    opt = HIOptimizer([p], **opt_kwargs)
    out = opt.step(closure=lambda: 1.25, gradients=[np.ones(3, np.float32)])
    assert out[0] == "Liquid" and opt.last_loss == 1.25


def test_add_param_group_keeps_existing_group_state(opt_kwargs):
    a, b = np.zeros(4, np.float32), np.zeros(4, np.float32)
    opt = HIOptimizer([a], **opt_kwargs, lr=0.1)
    for _ in range(3):
        opt.step(gradients=[np.ones(4, np.float32)])
    before = opt.diagnostics()[0]
    opt.add_param_group({"params": [b], "stiffening_factor": 0.5})
    assert opt.diagnostics()[0] == before
    opt.step(gradients=[np.ones(4, np.float32), np.ones(4, np.float32)])
    d0, d1 = opt.diagnostics()
    assert d0["tau"] > before["tau"] and d1["temperature"] == pytest.approx(0.99) and np.all(b != 0)


@pytest.mark.parametrize("kw, message", [
    (dict(lr=-1.0), "Invalid learning rate: -1.0"),
    (dict(beta=1.0), "Invalid beta value: 1.0"),
    (dict(epsilon=-1e-8), "Invalid epsilon value"),
    (dict(epsilon=0.0), "Invalid epsilon value"),        # 0/0 on a zero gradient and metric
    (dict(stiffening_factor=-0.1), "Invalid stiffening factor"),
    (dict(metric_scale=0.0), "Invalid metric scale: 0.0"),
    (dict(grad_clip=-1.0), "Invalid grad_clip value"),
    (dict(metric_power=0.0), "Invalid metric power"),
    (dict(schmitt=(2.0, 1.0)), "Invalid schmitt high threshold: 1.0"),
    (dict(schmitt=0.5), "Invalid schmitt thresholds"),
])
def test_invalid_hyperparameters(kw, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        HIOptimizer([np.zeros(2, np.float32)], use_gpu=False, **kw)


def test_invalid_group_override_is_refused_before_the_step_changes_anything():
    p = np.zeros(2, np.float32)
    opt = HIOptimizer([p], use_gpu=False)
    opt.param_groups[0]["cooling_rate"] = -0.5
    with pytest.raises(ValueError, match="Invalid cooling rate"):
        opt.step(gradients=[np.ones(2, np.float32)])
    assert opt.diagnostics()[0]["status"] is None and np.all(p == 0)


# ---------------------------------------------------------------------------- kernels
def test_shaders_use_the_control_layout_of_the_twins():
    names = {k: v for k, v in vars(hk).items() if k.startswith("CTL_")}
    text = (ROOT / "shaders" / "hysterograd.glsli").read_text()
    defines = dict(re.findall(r"#define (CTL_\w+) (\d+)u", text))
    assert defines.keys() == names.keys()
    for name, value in defines.items():
        assert names[name] == int(value), name
    for shader in ("hysteresis-control", "hysteresis-gate"):
        assert '#include "hysterograd.glsli"' in (ROOT / "shaders" / f"{shader}.glsl").read_text()


def test_backends_agree_on_odd_sizes_and_extreme_values(vulkan_device):
    rng = np.random.default_rng(7)
    sizes = [1, 255, 257, 4099, (1 << 20) + 3]
    # gradients over 30 decades; shared hysteresis settings that give both Liquid and Frozen steps
    grads = [[(rng.standard_normal(n) * 10.0 ** rng.integers(-15, 15, n)).astype(np.float32) for n in sizes]
             for _ in range(6)]
    kw = dict(lr=0.01, stiffening_factor=0.7, grad_clip=50.0, hysteresis_scale=50.0, initial_temp=0.0,
              adaptive_threshold=False)
    runs = []
    for backend_kwargs in ({"use_gpu": False}, {"use_gpu": True, "device": vulkan_device}):
        ps = [np.linspace(-1, 1, n, dtype=np.float32) for n in sizes]
        opt = HIOptimizer([dict(params=ps[:3]), dict(params=ps[3:], schmitt=(0.5, 2.0))], **backend_kwargs, **kw)
        trace = [(opt.step(gradients=g), opt.diagnostics()) for g in grads]
        runs.append((ps, [opt.state_of(p)["metric"] for p in ps], trace))
    (p0, m0, t0), (p1, m1, t1) = runs
    for a, b in zip(m0, m1):
        np.testing.assert_array_equal(a, b)         # elementwise, no reduction: the same bits
    for a, b in zip(p0, p1):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert [r[0] for r, _ in t0] == [r[0] for r, _ in t1]
    assert {d["status"] for _, diag in t0 for d in diag} == {"Liquid", "Frozen"}
    for (_, d0), (_, d1) in zip(t0, t1):
        for g0, g1 in zip(d0, d1):
            assert g0["status"] == g1["status"]
            for key in ("tau", "energy", "norm", "barrier", "clip_factor"):
                assert g0[key] == pytest.approx(g1[key], rel=1e-5)


def test_one_submit_per_step_on_vulkan(vulkan_device, monkeypatch):
    opt_kwargs = {"use_gpu": True, "device": vulkan_device}
    ps = [np.zeros(n, np.float32) for n in (10, 300, 5000, 7)]
    grads = [np.ones(p.shape, np.float32) for p in ps]
    opt = HIOptimizer([dict(params=ps[:2]), dict(params=ps[2:], stiffening_factor=0.5)], **opt_kwargs)
    opt.step(gradients=grads)     # the first step also zeroes the new state (a copy each with staging)
    ctx = opt._backend.ctx
    submits = []
    real_submit = ctx.submit
    monkeypatch.setattr(ctx, "submit", lambda *a: (submits.append(1), real_submit(*a))[1])
    for t in range(4):
        opt.step(gradients=grads)
        opt.diagnostics()                      # read from the mapped control array, no round trip
        if t == 1:
            opt.shock(0.3)                     # written into it from the host, no submit either
    assert len(submits) == 4


# ---------------------------------------------------------------------------- a real run
def test_two_moons_reaches_95_percent_and_draws_the_diagnostics(opt_kwargs, tmp_path):
    from benchmarks.hysterograd_moons import plot, run
    result = run(epochs=30, **opt_kwargs)
    assert result["test_accuracy"] >= 0.95
    assert result["loss"][-10:].mean() < 0.1 * result["loss"][:10].mean()
    assert result["liquid"].any() and not result["liquid"].all()    # both phases happened
    out = tmp_path / "moons.png"
    plot(result, out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000


def test_benchmark_case_builds_an_optimizer():
    from benchmarks.cases_hysterograd import CASES
    p = np.zeros(3, np.float32)
    opt = CASES["HIOptimizer"]([p], False, None)
    assert isinstance(opt, HIOptimizer)
    assert opt.step(gradients=[np.ones(3, np.float32)])[0] == "Liquid"
