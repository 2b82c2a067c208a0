"""AutoSGM: golden replays, the seed's claims (PHB, NAG, SGD), the configuration surface, the matrix
path and a real training run, on both backends."""
import json
import math
import pickle

import numpy as np
import pytest

from benchmarks.tasks import MLP, train, two_moons   # on sys.path through conftest.py
from conftest import GOLDENS
from hyperopt.autosgm import AutoSGM, BetaCfg, LrCfg, MixCfg, RcCfg, WdCfg

GOLDEN_FILES = sorted(p.stem for p in GOLDENS.glob("autosgm_*.npz"))
assert GOLDEN_FILES, f"no AutoSGM reference trajectories in {GOLDENS}"
SHAPES = [(1,), (255,), (257,), (33, 129), (3, 5, 7)]


def _golden(name):
    d = np.load(GOLDENS / f"{name}.npz")
    return d, json.loads(str(d["config_json"]))["kwargs"]


# ---------------------------------------------------------------------------------------- goldens
@pytest.mark.parametrize("name", GOLDEN_FILES)
def test_golden_replay(name, backend, opt_kwargs):
    d, cfg = _golden(name)
    W, b = d["W0"].copy(), d["b0"].copy()
    opt = AutoSGM([W, b], **cfg, **opt_kwargs)
    assert opt.backend.startswith(("numpy", "numba") if backend == "numpy" else backend)
    for t in range(30):
        opt.step(gradients={id(W): d["grad_W"][t], id(b): d["grad_b"][t]})
        np.testing.assert_allclose(W, d["W_traj"][t + 1], rtol=1e-5, atol=1e-6, err_msg=f"W after step {t + 1}")
        np.testing.assert_allclose(b, d["b_traj"][t + 1], rtol=1e-5, atol=1e-6, err_msg=f"b after step {t + 1}")
        for p, key in ((W, "W"), (b, "b")):
            st = opt.state_of(p)
            assert st["step"] == t + 1
            assert st["window"] == pytest.approx(d[f"window_{key}"][t], rel=1e-12, abs=1e-15)
            np.testing.assert_allclose(st["lr_num"], d[f"lr_num_state_{key}"][t].ravel()[0], rtol=1e-4, atol=1e-18)


def test_zeros_are_nudged_to_eps_at_the_first_step(backend, opt_kwargs):
    d, cfg = _golden("autosgm_sgd_noaopt_betaexp_flattop")
    p = np.zeros(5, np.float32)
    opt = AutoSGM([p], **cfg, **opt_kwargs)
    opt.step(gradients=[np.zeros(5, np.float32)])
    lr0, wd = cfg["lr_cfg"][1], cfg["wd_cfg"][0]
    # the master weight starts at eps (the golden's master_b_init), then one SGD step on the decay alone
    eps = np.float32(cfg["eps_cfg"][0])
    np.testing.assert_array_equal(d["master_b_init"], np.full(5, eps))
    np.testing.assert_allclose(p, eps - lr0 * wd * eps, rtol=1e-6)


# ---------------------------------------------------------------------------------------- claims
def _quadratic(seed=0, n=12):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((n, n))
    A = (q @ q.T / n + 0.1 * np.eye(n)).astype(np.float32)
    c = rng.standard_normal(n).astype(np.float32)
    w0 = rng.standard_normal(n).astype(np.float32)
    return A, c, w0, (lambda w: A @ w - c)


def _run_autosgm(grad, w0, steps, opt_kwargs, **cfg):
    w = w0.copy()
    opt = AutoSGM([w], **cfg, **opt_kwargs)
    traj = []
    for _ in range(steps):
        opt.step(gradients=[grad(w)])
        traj.append(w.copy())
    return np.array(traj)


def test_zero_at_origin_is_polyak_heavy_ball(backend, opt_kwargs):
    A, c, w0, grad = _quadratic()
    beta, lr = 0.9, 0.02
    ours = _run_autosgm(grad, w0, 60, opt_kwargs, lr_cfg=(False, lr, 0),
                        beta_cfg=(0.9999, 0.999, beta, 0.0, 1.0, False))
    w, m, ref = w0.astype(np.float64), np.zeros_like(w0, np.float64), []
    for _ in range(60):                      # m <- beta m + g ;  w <- w - lr m
        m = beta * m + grad(w)
        w = w - lr * m
        ref.append(w)
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-5)
    # and the classical two-step form w+ = w - lr g + beta (w - w_prev) is the same sequence
    w, prev, ref2 = w0.astype(np.float64), w0.astype(np.float64), []
    for _ in range(60):
        w, prev = w - lr * grad(w) + beta * (w - prev), w
        ref2.append(w)
    np.testing.assert_allclose(ours, ref2, rtol=1e-4, atol=1e-5)


def test_zero_at_beta_over_one_plus_beta_is_nesterov(backend, opt_kwargs):
    A, c, w0, grad = _quadratic(1)
    beta, lr = 0.9, 0.02
    gamma = beta / (1 + beta)
    ours = _run_autosgm(grad, w0, 60, opt_kwargs, lr_cfg=(False, lr, 0),
                        beta_cfg=(0.9999, 0.999, beta, gamma, 1.0, False))
    # Nesterov (torch's form): m <- beta m + g ;  w <- w - lr (g + beta m).  The filter's first output
    # is g itself (its zero's gain 1/(1-gamma) starts at step 2), so the first step is a plain one.
    w, m, ref = w0.astype(np.float64), np.zeros_like(w0, np.float64), []
    for t in range(1, 61):
        g = grad(w)
        m = beta * m + g
        w = w - lr * (g if t == 1 else g + beta * m)
        ref.append(w)
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-5)
    phb = _run_autosgm(grad, w0, 60, opt_kwargs, lr_cfg=(False, lr, 0),
                       beta_cfg=(0.9999, 0.999, beta, 0.0, 1.0, False))
    assert np.abs(phb - ours).max() > 1e-3          # a different point of the design space
    f = lambda w: 0.5 * w @ A @ w - c @ w
    assert f(ours[-1]) < f(w0)


def test_nag_filter_has_nesterovs_transfer_function():
    # F[beta, beta/(1+beta), 1] = (1+beta)(1 - gamma z^-1)/(1 - beta z^-1): g + beta m with m = g/(1 - beta z^-1)
    beta = 0.8
    gamma = beta / (1 + beta)
    p = np.zeros(1, np.float32)
    opt = AutoSGM([p], lr_cfg=(False, 1.0, 0), beta_cfg=(0.9999, 0.999, beta, gamma, 1.0, False), use_gpu=False)
    seq = [1.0] + [0.0] * 9
    outs = []
    for g in seq:
        before = p.copy()
        opt.step(gradients=[np.array([g], np.float32)])
        outs.append(float(before[0] - p[0]))
    # Nesterov's impulse response (d = g + beta m, m = beta m + g): 1+beta, then beta^(k+1)
    nesterov = [1 + beta] + [beta ** (k + 1) for k in range(1, 10)]
    np.testing.assert_allclose(outs[1:], nesterov[1:], rtol=1e-5)
    assert outs[0] == pytest.approx(1.0)              # the unscaled first sample


def test_no_aoptlr_no_smoothing_is_plain_sgd(backend, opt_kwargs):
    A, c, w0, grad = _quadratic(2)
    lr, wd = 0.05, 1e-2
    ours = _run_autosgm(grad, w0, 40, opt_kwargs, lr_cfg=(False, lr, 0),
                        beta_cfg=(0.9999, 0.999, 0.0, 0.0, 0.0, True), wd_cfg=(wd, 0))
    w, ref = w0.copy(), []
    for _ in range(40):
        w = w - np.float32(lr) * (grad(w) + np.float32(wd) * w)
        ref.append(w)
    np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-7)


def test_adam_like_instance_is_adam_with_debias(backend, opt_kwargs):
    # num_lrc=0 with gamma=0 and debias: Adam's update (eps added to g before squaring, and after the root)
    rng = np.random.default_rng(3)
    w0 = rng.standard_normal(50).astype(np.float32)
    grads = rng.standard_normal((25, 50)).astype(np.float32)
    lr, b1, b2, eps = 1e-2, 0.9, 0.999, 1e-8
    w = w0.copy()
    opt = AutoSGM([w], lr_cfg=(True, lr, 0), beta_cfg=(0.9999, b2, b1, 0.0, 0, True), eps_cfg=(eps,), **opt_kwargs)
    ref, m, v = w0.astype(np.float64), 0.0, 0.0
    for t, g in enumerate(grads, 1):
        opt.step(gradients=[g])
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * (g + eps) ** 2
        ref = ref - lr * (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + eps)
    np.testing.assert_allclose(w, ref, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------- reference
def _window(rc, t):
    """The window value from the documented formula (test_windows_reference), not the package's
    Window; the Kronecker sequence (inseq=1) has no independent transcription yet."""
    rcm, inseq, x, n, m, tau, spe, cfact, e = rc
    if rcm == 0:
        return 1.0
    if inseq == 1:
        from hyperopt.schedules import Window
        return Window.from_rc_cfg(rc)(t)
    from test_windows_reference import ref_window
    return ref_window(t, rcm, x, n, m, tau, spe, cfact, e)


def _reference(ps, grads_seq, cfgs):
    """A float64 transcription of the docstring's algorithm (elementwise path), one config per tensor."""
    ps = [p.astype(np.float64) for p in ps]
    st = [dict(sm=0, var=0, mag=0, wsq=0, pc=0, pcx=0, lrn=0.0) for _ in ps]
    for t, grads in enumerate(grads_seq, 1):
        for j, (g, cfg) in enumerate(zip(grads, cfgs)):
            (aopt, lr0, nl), (bn, ba, bi, gi, ei, deb), (wd, lvl), eps, rc = (
                cfg["lr_cfg"], cfg["beta_cfg"], cfg["wd_cfg"], cfg["eps_cfg"][0], cfg["rc_cfg"])
            W = _window(rc, t)
            s, w = st[j], ps[j]
            nl = nl if aopt else 0
            g = g.astype(np.float64)
            if nl == 4:
                s["mag"] = s["mag"] + (1 - ba) * np.abs(g)
                mu = s["mag"] / (1 - ba ** t) if deb else s["mag"]
                s["mag"] = ba * s["mag"]
                g = np.sign(g) * np.minimum(np.abs(g), 4 * mu)
            if lvl == 0:
                g = g + wd * w
            eta = ei or 1 - bi
            a = eta * g
            y = (s["sm"] + a) / (1 if t == 1 else 1 - gi)
            s["sm"] = bi * (s["sm"] + a) - gi * a
            if deb:
                y = y * ((1 - bi) / eta) / (1 - bi ** t)
            d = 1.0
            if aopt:
                eta_a = ei or 1 - ba
                s["var"] = s["var"] + eta_a * (g + eps) ** 2
                m2 = s["var"] * (((1 - ba) / eta_a) / (1 - ba ** t) if deb else 1)
                s["var"] = ba * s["var"]
                d = np.sqrt(m2) + eps
            v = y / d
            if lvl == 1:
                v = v + (1 - bi) / (1 - gi) * wd * w
            if nl in (1, 2, 3):
                if nl in (1, 2):
                    c = s["wsq"] + (1 - bn) * w * w
                    s["wsq"] = bn * c
                if nl == 1:
                    r = s["pc"] + lr0 * w * v
                elif nl == 2:
                    x = w * v
                    mu = s["pcx"] + (1 - ba) * np.abs(x)
                    s["pcx"] = ba * mu
                    r = s["pc"] + lr0 * np.sign(x) * np.minimum(np.abs(x), 4 * mu) / (c + 1)
                else:
                    r = s["pc"] + (1 - bn) * lr0 * (g / d) ** 2
                s["pc"] = bn * r
                e = np.minimum(r, lr0) if nl == 3 else np.minimum(np.abs(r), lr0 * (c + 1))
                y = s["lrn"] + 0.9 * e.mean()
                s["lrn"] = 0.1 * y
                alpha = y * W
            else:
                alpha = lr0 * W
            ps[j] = w - alpha * v
    return ps


def _config(num_lrc, **over):
    """A configuration with every part switched on (smoothing with a zero, decay, a floored window)."""
    cfg = dict(lr_cfg=(True, 1e-2, num_lrc), beta_cfg=(0.999, 0.99, 0.9, 0.3, 0, True),
               rc_cfg=(1, 0, 0.1, 2, 1, 1, 40, 1, 0), wd_cfg=(1e-2, 1), eps_cfg=(1e-8,))
    cfg.update(over)
    return cfg


def test_every_numerator_matches_the_reference(backend, opt_kwargs):
    """num_lrc 0-4 (and aoptlr off, coupled decay, eta_i) in one optimizer, one group per setting, with
    an outlier gradient at step 8 (the Huber prefilters act on it)."""
    rng = np.random.default_rng(4)
    cfgs = [_config(0), _config(1), _config(2), _config(3), _config(4),
            _config(4, beta_cfg=(0.999, 0.99, 0.5, 0.0, 0.3, False), wd_cfg=(1e-2, 0)),
            _config(1, lr_cfg=(False, 0.05, 1))]
    ps = [rng.standard_normal(s).astype(np.float32) for s in [(6, 7)] * len(cfgs)]
    seq = []
    for t in range(20):
        grads = [rng.standard_normal(p.shape).astype(np.float32) for p in ps]
        if t == 7:
            grads = [g * 100 for g in grads]
        seq.append(grads)
    ref = _reference(ps, seq, cfgs)
    groups = [dict(params=[p], **cfg) for p, cfg in zip(ps, cfgs)]
    opt = AutoSGM(groups, **opt_kwargs)
    for grads in seq:
        opt.step(gradients=grads)
    for k, (p, r) in enumerate(zip(ps, ref)):
        np.testing.assert_allclose(p, r, rtol=2e-4, atol=2e-6, err_msg=f"group {k}: {cfgs[k]['lr_cfg']}")


def test_huber_prefilter_changes_the_outlier_step_only(backend, opt_kwargs):
    rng = np.random.default_rng(5)
    seq = [rng.standard_normal(40).astype(np.float32) for _ in range(12)]
    seq[9] = seq[9] * 1000
    out = {}
    for nl in (0, 4):
        p = np.ones(40, np.float32)
        opt = AutoSGM([p], **_config(nl), **opt_kwargs)
        traj = []
        for g in seq:
            opt.step(gradients=[g])
            traj.append(p.copy())
        out[nl] = np.array(traj)
    # identical first step (the debiased mean magnitude is |g| itself), different after the outlier
    np.testing.assert_allclose(out[0][0], out[4][0], rtol=1e-6)
    assert np.abs(out[0][9] - out[4][9]).max() > 1e-4


# ---------------------------------------------------------------------------------------- configuration
def _seed_instances(ps):
    """The eight instances of the seed's "Example Instances", as printed (plus the missing commas)."""
    num_epochs = 1
    iters_per_epoch = int(1E9)
    iters_epoch = iters_per_epoch          # the seed uses both names
    beta = 0
    mk = lambda **kw: AutoSGM(ps(), use_gpu=False, **kw)
    opts = [mk(lr_cfg=(False, 1e-3, 0), beta_cfg=(0.9999, 0.999, beta, 0.0, 0, True), wd_cfg=(1e-4, 0),
               eps_cfg=(1e-8, ))]
    opts.append(mk(lr_cfg=(True, 1e-3, 0), beta_cfg=(0.9999, 0.999, beta, 0.0, 0, True),
                   rc_cfg=(1, 0, 0, 2, 1, num_epochs, iters_epoch, 1, 0), wd_cfg=(1e-4, 0), eps_cfg=(1e-8, )))
    opts.append(mk(lr_cfg=(True, 1e-3, 0), beta_cfg=(0.9999, 0.999, beta, 0.0, 0, True),
                   rc_cfg=(1, 0, 0, 2, 1, num_epochs, iters_epoch, 1, 0), wd_cfg=(1e-4, 0), eps_cfg=(1e-8, )))
    beta = 0.9
    opts.append(mk(lr_cfg=(True, 1e-3, 0), beta_cfg=(0.9999, 0.999, beta, 0.0, 0, True),
                   rc_cfg=(1, 0, 0, 2, 1, num_epochs, iters_epoch, 1, 0), wd_cfg=(1e-2, 1), eps_cfg=(1e-8, )))
    gamma = beta / (1 + beta)
    opts.append(mk(lr_cfg=(True, 1e-3, 0), beta_cfg=(0.9999, 0.999, beta, gamma, 0, True),
                   rc_cfg=(1, 0, 0, 2, 1, num_epochs, iters_epoch, 1, 0), wd_cfg=(1e-2, 1), eps_cfg=(1e-8,)))
    opts.append(mk(lr_cfg=(True, 1e-3, 0), beta_cfg=(0.9999, 0.999, beta, gamma, 0, True),
                   rc_cfg=(2, 0, 0, 1, 1, num_epochs, iters_epoch, 1, 0), wd_cfg=(1e-2, 1), eps_cfg=(1e-8,)))
    gamma = 1 - math.sqrt(2 * (1 - beta))
    optnum = 1
    opts.append(mk(lr_cfg=(True, 1e-3, optnum), beta_cfg=(0.9999, 0.999, beta, gamma, 0, True),
                   rc_cfg=(2, 0, 0, 1, 1, num_epochs, iters_epoch, 1, 0), wd_cfg=(1e-2, 1), eps_cfg=(1e-8,)))
    optnum = 3
    opts.append(mk(lr_cfg=(True, 1e-2, optnum), beta_cfg=(0.9999, 0.999, beta, gamma, 0, True),
                   rc_cfg=(2, 0, 0, 1, 1, num_epochs, iters_epoch, 1, 0), wd_cfg=(1e-2, 1), eps_cfg=(1e-8,)))
    return opts


def test_seed_example_instances_construct_and_run():
    rng = np.random.default_rng(6)
    shapes = [(10, 50), (50,), (50, 1), (1,)]
    made = []
    ps = lambda: made.append([rng.standard_normal(s).astype(np.float32) for s in shapes]) or made[-1]
    opts = _seed_instances(ps)
    assert len(opts) == 8
    for opt, params in zip(opts, made):
        before = [p.copy() for p in params]
        for _ in range(3):
            opt.step(gradients=[rng.standard_normal(s).astype(np.float32) for s in shapes])
        for p, b in zip(params, before):
            assert np.isfinite(p).all()
            assert not np.array_equal(p, b)


def test_minimal_example_runs():
    p = [np.ones((10, 50), np.float32), np.zeros(50, np.float32)]
    opt = AutoSGM(p, lr_cfg=(True, 1e-2, 3), beta_cfg=(0.9999, 0.999, 0.9, 0.5528, 0, True),
                  rc_cfg=(1, 0, 0, 2, 1, 1, 100000, 1, 0), wd_cfg=(0.0, 0), eps_cfg=(1e-10,), use_gpu=False)
    opt.step(gradients=[np.ones((10, 50), np.float32), np.ones(50, np.float32)])
    assert (p[0] < 1).all()


def test_records_dicts_and_tuples_are_the_same_configuration():
    rng = np.random.default_rng(7)
    grads = [rng.standard_normal(20).astype(np.float32) for _ in range(10)]
    tuples = dict(lr_cfg=(True, 1e-2, 2), beta_cfg=(0.999, 0.99, 0.9, 0.3, 0, True),
                  rc_cfg=(5, 0, 0.1, 4, 0, 1, 10, 1, 0.2), wd_cfg=(1e-2, 1))
    records = dict(lr_cfg=LrCfg(lr_init=1e-2, num_lrc=2), beta_cfg=BetaCfg(beta_n=0.999, beta_a=0.99, gamma_i=0.3),
                   rc_cfg=RcCfg(rcm="sigmoid", x=0.1, n=4, m=0, tau=1, spe=10, e=0.2), wd_cfg=WdCfg(1e-2, wd_lvl=1))
    dicts = dict(lr_cfg=dict(num_lrc=2), beta_cfg=dict(beta_n=0.999, beta_a=0.99, gamma_i=0.3),
                 rc_cfg=dict(rcm=5, x=0.1, n=4, m=0, tau=1, spe=10, e=0.2), wd_cfg=dict(wd=1e-2, wd_lvl=1))
    results = []
    for cfg in (tuples, records, dicts):
        p = np.linspace(-1, 1, 20).astype(np.float32)
        opt = AutoSGM([p], use_gpu=False, **cfg)
        for g in grads:
            opt.step(gradients=[g])
        results.append(p)
        assert opt.param_groups[0]["rc_cfg"] == RcCfg(5, 0, 0.1, 4, 0, 1, 10, 1, 0.2)
    np.testing.assert_array_equal(results[0], results[1])
    np.testing.assert_array_equal(results[0], results[2])


@pytest.mark.parametrize("kwargs, message", [
    (dict(lr_cfg=(True, -1.0, 0)), "Invalid learning rate: -1.0"),
    (dict(lr_cfg=(True, 1e-2, 5)), "Invalid num_lrc value: 5"),
    (dict(beta_cfg=(0.9999, 0.999, 1.0, 0, 0, True)), "Invalid beta_i value: 1.0"),
    (dict(beta_cfg=(0.9999, 0.999, 0.5, 0.6, 0, True)), "Invalid gamma_i value: 0.6"),
    (dict(beta_cfg=(0.9999, 0.999, 0.5, 0.0, 2.0, True)), "Invalid eta_i value: 2.0"),
    (dict(rc_cfg=(7, 0, 0, 2, 1, 1, 100, 1, 0)), "Invalid window"),
    (dict(rc_cfg=(1, 0, 0, 2, 1, 1, 1, 1, 0)), "Invalid window length"),
    (dict(rc_cfg=(1, 0, 0, 2, 1, 1, 100, 0, 0)), "Invalid tau"),
    (dict(rc_cfg=(1, 0, 0, 2, 1, 1, 100, 1, 1.5)), "Invalid flat-top fraction e: 1.5"),
    (dict(wd_cfg=(-1e-2, 0)), "Invalid weight_decay value: -0.01"),
    (dict(wd_cfg=(1e-2, 2)), "Invalid wd_lvl value: 2"),
    (dict(eps_cfg=(-1.0,)), "Invalid epsilon value: -1.0"),
    (dict(lr_cfg=(True, 1e-2, 0, 4)), "Invalid lr_cfg"),
    (dict(lr_cfg=dict(lr=1e-2)), "unknown field"),
    (dict(mix_cfg=(True, False, 1e-2, 1.5, 0.0)), "Invalid mix beta value: 1.5"),
])
def test_bad_hyperparameters_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(".", r"\.")):
        AutoSGM([np.zeros(3, np.float32)], use_gpu=False, **kwargs)


def test_group_settings_are_read_every_step_and_can_switch_estimators(backend, opt_kwargs):
    rng = np.random.default_rng(8)
    p, q = rng.standard_normal(30).astype(np.float32), rng.standard_normal(30).astype(np.float32)
    opt = AutoSGM([{"params": [p]}, {"params": [q], "lr_cfg": (True, 1e-3, 0)}], lr_cfg=(True, 1e-2, 0),
                  **opt_kwargs)
    for _ in range(3):
        opt.step(gradients=[rng.standard_normal(30).astype(np.float32) for _ in range(2)])
    opt.param_groups[1]["lr_cfg"] = (True, 1e-2, 2)       # now an estimator: new buffers, 3-pass program
    before = [p.copy(), q.copy()]
    for _ in range(3):
        opt.step(gradients=[rng.standard_normal(30).astype(np.float32) for _ in range(2)])
    assert opt.state_of(q)["lr_num"] > 0
    assert "pcx" in opt.state_of(q)
    assert opt.state_of(p)["step"] == 6
    assert not np.array_equal(before[0], p) and not np.array_equal(before[1], q)
    opt.param_groups[1]["lr_cfg"] = LrCfg(False, 0.0, 0)  # lr 0: frozen
    q_now = q.copy()
    opt.step(gradients=[rng.standard_normal(30).astype(np.float32) for _ in range(2)])
    np.testing.assert_array_equal(q, q_now)


def test_parameters_without_gradient_are_skipped(backend, opt_kwargs):
    rng = np.random.default_rng(9)
    p, q = rng.standard_normal(8).astype(np.float32), rng.standard_normal(8).astype(np.float32)
    opt = AutoSGM([p, q], **_config(2), **opt_kwargs)
    q0 = q.copy()
    for _ in range(4):
        opt.step(gradients={id(p): rng.standard_normal(8).astype(np.float32)})
    np.testing.assert_array_equal(q, q0)
    assert opt.state_of(q) == {}
    opt.step(gradients=[rng.standard_normal(8).astype(np.float32)] * 2)
    assert opt.state_of(q)["step"] == 1 and opt.state_of(p)["step"] == 5
    assert opt.state_of(q)["window"] == 1.0                # its own first step of the window


def test_edits_between_steps_are_respected():
    p = np.ones(4, np.float32)
    opt = AutoSGM([p], lr_cfg=(False, 0.1, 0), beta_cfg=(0.9999, 0.999, 0.0, 0.0, 0, True), use_gpu=False)
    opt.step(gradients=[np.ones(4, np.float32)])
    p[:] = 5.0                                               # upstream would overwrite this with its copy
    opt.step(gradients=[np.ones(4, np.float32)])
    np.testing.assert_allclose(p, 4.9, rtol=1e-6)


def test_maximize_flips_the_first_step(backend, opt_kwargs):
    rng = np.random.default_rng(10)
    g = rng.standard_normal(16).astype(np.float32)
    w0 = rng.standard_normal(16).astype(np.float32)
    deltas = []
    for num_lrc in (0, 2):
        for maximize in (False, True):
            w = w0.copy()
            AutoSGM([w], **_config(num_lrc), maximize=maximize, **opt_kwargs).step(gradients=[g])
            deltas.append(w - w0)
    np.testing.assert_allclose(deltas[0], -deltas[1], rtol=1e-6)
    np.testing.assert_allclose(deltas[2], -deltas[3], rtol=1e-6)


def test_closure_loss_is_returned():
    p = np.ones(3, np.float32)
    opt = AutoSGM([p], use_gpu=False)
    assert opt.step(lambda: 1.25, gradients=[np.ones(3, np.float32)]) == 1.25


@pytest.mark.parametrize("num_lrc", [0, 2])
def test_state_dict_resume_matches_an_uninterrupted_run(backend, opt_kwargs, num_lrc):
    rng = np.random.default_rng(11)
    shapes = [(4, 5), (7,)]
    grads = [[rng.standard_normal(s).astype(np.float32) for s in shapes] for _ in range(12)]
    init = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    cfg = _config(num_lrc, mix_cfg=(True, True, 1e-2, 0.9, 0.0))
    full = [x.copy() for x in init]
    opt = AutoSGM(full, **cfg, **opt_kwargs)
    for g in grads:
        opt.step(gradients=g)
    half = [x.copy() for x in init]
    opt = AutoSGM(half, **cfg, **opt_kwargs)
    for g in grads[:6]:
        opt.step(gradients=g)
    blob = pickle.dumps(opt.state_dict())
    resumed = [x.copy() for x in half]
    opt2 = AutoSGM(resumed, **cfg, **opt_kwargs)
    opt2.load_state_dict(pickle.loads(blob))
    for g in grads[6:]:
        opt2.step(gradients=g)
    for a, b in zip(full, resumed):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------------------------------- backends
@pytest.mark.parametrize("program", ["estimators", "one-pass"])
def test_backends_agree_on_odd_sizes(rng, vulkan_device, program):
    """The shaders against their NumPy twins: odd sizes, values over many decades, one group per
    setting.  "estimators" runs stats/control/apply (num_lrc 0-4 together), "one-pass" the fused kernel."""
    sizes = [(1,), (255,), (257,), (4097,), ((1 << 16) + 3,)]
    if program == "estimators":
        cfgs = [_config(0), _config(1), _config(2), _config(3), _config(4, wd_cfg=(1e-2, 0))]
    else:
        cfgs = [_config(0), _config(4), _config(0, lr_cfg=(False, 1e-2, 0), wd_cfg=(1e-2, 0)),
                _config(4, beta_cfg=(0.999, 0.99, 0.5, 0.0, 0.3, False)), _config(0, maximize=True)]
    init = [(rng.standard_normal(s) * 10.0 ** rng.integers(-3, 3, s)).astype(np.float32) for s in sizes]
    seq = [[(rng.standard_normal(s) * 10.0 ** rng.integers(-6, 6, s)).astype(np.float32) for s in sizes]
           for _ in range(8)]
    out = []
    for kw in ({"use_gpu": False}, {"use_gpu": True, "device": vulkan_device}):
        ps = [x.copy() for x in init]
        opt = AutoSGM([dict(params=[p], **c) for p, c in zip(ps, cfgs)], **kw)
        assert opt._estimator == (program == "estimators")
        for grads in seq:
            opt.step(gradients=grads)
        out.append((ps, [opt.state_of(p)["lr_num"] for p in ps]))
    for a, b in zip(out[0][0], out[1][0]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out[0][1], out[1][1], rtol=1e-5)


def test_float64_parameters_on_numpy():
    d, cfg = _golden("autosgm_parcor2_huber_logistic_full_flattop")
    W = d["W0"].astype(np.float64)
    b = d["b0"].astype(np.float64)
    opt = AutoSGM([W, b], **cfg, use_gpu=False)
    for t in range(30):
        opt.step(gradients=[d["grad_W"][t].astype(np.float64), d["grad_b"][t].astype(np.float64)])
    assert W.dtype == np.float64
    np.testing.assert_allclose(W, d["W_traj"][30], rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------------------------------- matrix path
def test_mix_path_orthogonalises_the_step_for_any_rank(backend, opt_kwargs):
    rng = np.random.default_rng(12)
    conv = rng.standard_normal((8, 4, 3, 3)).astype(np.float32)      # 2-D view 8 x 36
    tall = rng.standard_normal((40, 6)).astype(np.float32)           # transposed to 6 x 40
    bias = rng.standard_normal(8).astype(np.float32)                 # 1-D: element-wise path
    ps = [conv, tall, bias]
    before = [p.copy() for p in ps]
    lr = 1e-2
    opt = AutoSGM(ps, lr_cfg=(True, 1e-3, 0), beta_cfg=(0.9999, 0.999, 0.0, 0.0, 0, True),
                  mix_cfg=MixCfg(mix=True, lr_init=lr, beta=0.0), **opt_kwargs)
    grads = [rng.standard_normal(p.shape).astype(np.float32) for p in ps]
    opt.step(gradients=grads)
    for p, b, g in zip(ps[:2], before[:2], grads):
        step = (b - p).reshape(p.shape[0], -1) / lr
        sv = np.linalg.svd(step, compute_uv=False)
        np.testing.assert_allclose(sv, 1.0, atol=2e-2)                # (v v^T)^(-1/2) v: the polar factor
        # the direction is the gradient's polar factor
        u, _, vt = np.linalg.svd(g.reshape(step.shape), full_matrices=False)
        np.testing.assert_allclose(step, u @ vt, atol=2e-2)
    assert opt.state_of(bias)["g_var"].any()                          # the vector took the device path
    assert "mix_sm" in opt.state_of(conv)
    # the matrix path keeps going, and the numerator variant stays inside the trust region
    opt.param_groups[0]["lr_cfg"] = (True, 1e-3, 1)
    for _ in range(3):
        prev = conv.copy()
        opt.step(gradients=[rng.standard_normal(p.shape).astype(np.float32) for p in ps])
        step = (prev - conv).reshape(8, -1)
        assert np.linalg.svd(step, compute_uv=False).max() <= 1e-3 * 1.05


def test_mix_path_skips_small_and_huge_matrices():
    ps = [np.ones((3, 10), np.float32), np.ones((4, 3000), np.float32)]
    opt = AutoSGM(ps, mix_cfg=(True,), use_gpu=False)
    opt.step(gradients=[np.ones((3, 10), np.float32), np.ones((4, 3000), np.float32)])
    assert "mix_sm" not in opt.state_of(ps[0]) and "mix_sm" not in opt.state_of(ps[1])


# ---------------------------------------------------------------------------------------- training
MOONS_EPOCHS = 60


def _moons_instances(spe):
    window = (1, 0, 0, 2, 1, MOONS_EPOCHS, spe, 1, 0)          # cosine annealing over the whole run
    beta = 0.9
    return {
        "adam-like": dict(lr_cfg=(True, 1e-2, 0), beta_cfg=(0.9999, 0.999, beta, 0.0, 0, True), rc_cfg=window,
                          wd_cfg=(0.0, 1), eps_cfg=(1e-8,)),
        "nag-parcor": dict(lr_cfg=(True, 1e-1, 2), beta_cfg=(0.9999, 0.999, beta, beta / (1 + beta), 0, True),
                           rc_cfg=window, wd_cfg=(0.0, 1), eps_cfg=(1e-8,)),
        "sgd": dict(lr_cfg=(False, 0.5, 0), beta_cfg=(0.9999, 0.999, beta, 0.0, 0, True), rc_cfg=window,
                    eps_cfg=(1e-8,)),
    }


@pytest.mark.parametrize("instance", ["adam-like", "nag-parcor", "sgd"])
def test_mlp_on_two_moons_reaches_97_percent(backend, opt_kwargs, instance):
    X, y, Xt, yt = two_moons(n=600, noise=0.1, seed=0)
    spe = -(-len(X) // 64)
    model = MLP([2, 16, 16, 2], seed=0)
    opt = AutoSGM(model.params, **_moons_instances(spe)[instance], **opt_kwargs)
    losses = train(model, opt, X, y, epochs=MOONS_EPOCHS, batch_size=64)
    assert np.mean(losses[-spe:]) < 0.5 * np.mean(losses[:spe])
    assert model.accuracy(Xt, yt) >= 0.97


def test_benchmark_cases_and_window_plot(tmp_path):
    from benchmarks import autosgm_windows
    from benchmarks.cases_autosgm import CASES
    assert set(CASES) == {"AutoSGM-lrc0", "AutoSGM-lrc2"}
    for factory in CASES.values():
        p = np.ones((4, 4), np.float32)
        opt = factory([p], False, None)
        opt.step(gradients=[np.ones((4, 4), np.float32)])
        assert (p < 1).all()
    assert autosgm_windows.main(["--out", str(tmp_path)]) == 0
    assert (tmp_path / "autosgm_windows.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_edits_between_steps_are_respected_on_both_backends(backend, opt_kwargs):
    """No master copy (project decision 4): an edit to the array between steps is where the next step starts."""
    p = np.ones(6, np.float32)
    opt = AutoSGM([p], lr_cfg=(False, 0.1, 0), beta_cfg=(0.9999, 0.999, 0.0, 0.0, 1.0, False), **opt_kwargs)
    opt.step(gradients=[np.ones(6, np.float32)])
    np.testing.assert_allclose(p, 0.9, rtol=1e-6)
    p[...] = 5.0
    opt.step(gradients=[np.ones(6, np.float32)])
    np.testing.assert_allclose(p, 4.9, rtol=1e-6)
