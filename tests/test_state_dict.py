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
    with pytest.raises(TypeError, match="floating-point"):
        opt.add_param_group({"params": [np.zeros(2, np.int64)]})     # (float64 would move it to the CPU path)
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


# ---------------------------------------------------------------------------------------------- checks on load
import inspect  # noqa: E402

from hyperopt import AutoHypergradientAdamW, HCNaturalGrad, HypergradientAdamW  # noqa: E402

_MAKERS = {
    "AdamW": lambda ps, kw: AdamW(ps, lr=0.05, **kw),
    "HypergradientAdamW": lambda ps, kw: HypergradientAdamW(ps, lr=0.01, **kw),
    "AutoHypergradientAdamW": lambda ps, kw: AutoHypergradientAdamW(ps, lr=0.01, warmup_steps=1, **kw),
    "HIOptimizer": lambda ps, kw: HIOptimizer(ps, lr=0.01, **kw),
    "AutoSGM": lambda ps, kw: AutoSGM(ps, lr_cfg=(True, 1e-2, 1), **kw),
    "HCNaturalGrad": lambda ps, kw: HCNaturalGrad(ps, lr=0.05, fisher_damp=0.1, projection="hash", **kw),
    "HL": lambda ps, kw: HL.for_params(ps, **kw),
}


def _stepped(name, kw, rng, steps=3, shapes=((4, 3), (3,))):
    params = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    opt = _MAKERS[name](params, kw)
    for _ in range(steps):
        grads = [rng.standard_normal(s).astype(np.float32) for s in shapes]
        if name == "HCNaturalGrad":
            opt.step(gradients=grads, branches=rng.standard_normal((4, 2)))
        else:
            opt.step(gradients=grads)
    return opt, params


def _same(a, b):
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and np.array_equal(a, b)
    return a == b


@pytest.mark.parametrize("theirs", sorted(_MAKERS))
def test_another_class_state_dict_is_refused(theirs, rng):
    sd = _stepped(theirs, {"use_gpu": False}, rng)[0].state_dict()
    for mine in sorted(_MAKERS):
        if mine == theirs:
            continue
        opt, _ = _stepped(mine, {"use_gpu": False}, rng)
        before = opt.state_dict()
        with pytest.raises(ValueError, match=f"made by {theirs}, not {mine}"):
            opt.load_state_dict(sd)
        assert _same(opt.state_dict(), before)


def test_a_dict_without_its_class_is_refused(rng):
    opt, _ = _stepped("AdamW", {"use_gpu": False}, rng)
    sd = opt.state_dict()
    del sd["optimizer"]
    with pytest.raises(ValueError, match="unknown optimizer"):
        opt.load_state_dict(sd)


@pytest.mark.parametrize("name", sorted(_MAKERS))
def test_own_state_dict_always_loads_back(name, backend, opt_kwargs, rng):
    opt, params = _stepped(name, opt_kwargs, rng)
    sd = opt.state_dict()
    twin, twin_params = _stepped(name, opt_kwargs, np.random.default_rng(99))
    for p, q in zip(twin_params, params):
        p[...] = q
    twin.reload_params()
    twin.load_state_dict(sd)
    opt.load_state_dict(opt.state_dict())
    assert _same(twin.state_dict(), sd) and _same(opt.state_dict(), sd)
    g = [np.full(p.shape, 0.5, np.float32) for p in params]
    kw = {"branches": np.eye(4, 2)} if name == "HCNaturalGrad" else {}
    opt.step(gradients=g, **kw)
    twin.step(gradients=g, **kw)
    assert all(np.array_equal(a, b) for a, b in zip(params, twin_params))


def _corrupt(name, case, sd):
    """Apply ``case`` to optimizer ``name``'s state dict; returns the expected message."""
    entry = sd["state"][0]
    if case == "missing step":
        del entry["step"]
        return "lacks"
    if case.endswith(" step"):
        entry["step"] = {"string step": "3", "float step": 3.0, "negative step": -1, "bool step": True}[case]
        return "non-negative integer"
    if case == "NaN list":
        buf = next(k for k in sd["state"][0] if isinstance(entry[k], np.ndarray))
        entry[buf] = [float("nan")] + [0.0] * (entry[buf].size - 1)
        return "shape|NaN"
    if case == "inf array":
        buf = next(k for k in sd["state"][0] if isinstance(entry[k], np.ndarray))
        entry[buf] = np.full_like(entry[buf], np.inf)
        return "NaN or infinity"
    if case == "wrong shape":
        buf = next(k for k in sd["state"][0] if isinstance(entry[k], np.ndarray))
        entry[buf] = np.zeros(7, np.float32)
        return "shape"
    if case == "unknown entry":
        entry["momentum_buffer"] = np.zeros(3, np.float32)
        return "unknown entries"
    if case == "parameter out of range":
        sd["state"][5] = dict(entry)
        return "parameter 5"
    if case == "string key":
        sd["state"]["0"] = sd["state"].pop(0)
        return "parameter '0'"
    if case == "bad hyperparameter":
        key = {"AutoSGM": "maximize", "HL": "local", "HCNaturalGrad": "cg_iters"}.get(name, "lr")
        sd["param_groups"][0][key] = "0.1"
        return "Invalid"
    if case == "unknown group key":
        sd["param_groups"][0]["nesterov"] = True
        return "unknown entries"
    raise AssertionError(case)


_CASES = ["missing step", "string step", "float step", "negative step", "bool step", "NaN list", "inf array",
          "wrong shape", "unknown entry", "parameter out of range", "string key", "bad hyperparameter",
          "unknown group key"]


@pytest.mark.parametrize("name", sorted(_MAKERS))
def test_malformed_entries_are_refused_all_or_nothing(name, rng):
    opt, params = _stepped(name, {"use_gpu": False}, rng)
    before = opt.state_dict()
    for case in _CASES:
        if case.endswith("step") and "step" not in before["state"][0]:
            continue     # HIOptimizer keeps no step counter
        if case in ("NaN list", "inf array", "wrong shape") and not any(
                isinstance(v, np.ndarray) for v in before["state"][0].values()):
            continue     # HCNaturalGrad's state dict has no per-element arrays
        bad = opt.state_dict()
        match = _corrupt(name, case, bad)
        with pytest.raises((ValueError, TypeError), match=match):
            opt.load_state_dict(bad)
        assert _same(opt.state_dict(), before), case


@pytest.mark.parametrize("name, where, key", [
    ("AdamW", "state", "exp_avg_sq"),
    ("HIOptimizer", "state", "metric"),
    ("HIOptimizer", "extra", "tau"),
    ("HypergradientAdamW", "extra", "G_lr"),
    ("AutoHypergradientAdamW", "global", "var_ema"),
    ("AutoSGM", "state", "lr_num"),
    ("AutoSGM", "state", "g_var"),
    ("HL", "extra", "neuron_costate"),
])
@pytest.mark.parametrize("value", ["nan", "negative"])
def test_non_finite_or_negative_scalar_and_moment_state_is_refused(name, where, key, value, rng):
    opt, _ = _stepped(name, {"use_gpu": False}, rng)
    before = opt.state_dict()
    bad = opt.state_dict()
    holder = {"state": bad["state"][0], "extra": bad["extra"][0], "global": bad.get("hypergradient")}[where]
    old = holder[key]
    if value == "nan":
        holder[key] = np.full_like(old, np.nan) if isinstance(old, np.ndarray) else float("nan")
    else:
        if key in ("lr_num", "neuron_costate"):
            return                                   # signed quantities: negative is fine
        holder[key] = -np.abs(old) - 1 if isinstance(old, np.ndarray) else -1.0
    with pytest.raises(ValueError, match="NaN|finite|negative|>"):
        opt.load_state_dict(bad)
    assert _same(opt.state_dict(), before)


def test_hcnaturalgrad_rng_and_hash_position_are_checked(rng):
    opt, _ = _stepped("HCNaturalGrad", {"use_gpu": False}, rng)
    before = opt.state_dict()
    for key, value, match in [("hash_step", -2, "hash_step"), ("hash_step", "4", "hash_step"),
                              ("seed_word", 2 ** 40, "seed_word"), ("rng", {"bit_generator": "MT19937"}, "rng"),
                              ("rng", dict(before["rng"], state={"state": "x", "inc": 1}), "rng")]:
        bad = opt.state_dict()
        bad[key] = value
        with pytest.raises(ValueError, match=match):
            opt.load_state_dict(bad)
        assert _same(opt.state_dict(), before)


# ---------------------------------------------------------------------------------------------- hash projection keys
@pytest.mark.parametrize("how", ["load into a stepped optimizer", "after a failed load"])
def test_hash_projection_survives_loads(how, backend, opt_kwargs):
    def make(params):
        return HCNaturalGrad(params, lr=0.05, fisher_damp=0.1, clip=2.0, projection="hash", seed=5, **opt_kwargs)

    def step(opt, t):
        r = np.random.default_rng(t)
        opt.step(gradients=[r.standard_normal((6, 5)).astype(np.float32), r.standard_normal(5).astype(np.float32)],
                 branches=r.standard_normal((4, 3)))

    r = np.random.default_rng(1)
    start = [r.standard_normal((6, 5)).astype(np.float32), r.standard_normal(5).astype(np.float32)]
    straight = [p.copy() for p in start]
    ref = make(straight)
    for t in range(6):
        step(ref, t)

    params = [p.copy() for p in start]
    opt = make(params)
    for t in range(3):
        step(opt, t)
    if how == "load into a stepped optimizer":
        saved, at3 = opt.state_dict(), [p.copy() for p in params]
        step(opt, 3)
        step(opt, 4)                       # moves on, then goes back to step 3
        opt.load_state_dict(saved)
        for p, q in zip(params, at3):
            p[...] = q
        opt.reload_params()
    else:
        bad = opt.state_dict()
        bad["hash_step"] = -1
        with pytest.raises(ValueError):
            opt.load_state_dict(bad)       # refused by the checks: nothing touched
        calls = []

        def fails_once(extra):             # a failure inside the load, after the buffers were cleared
            calls.append(1)
            if len(calls) == 1:
                raise RuntimeError("failure inside the load")
        opt._load_group_extra = fails_once
        with pytest.raises(RuntimeError, match="inside the load"):
            opt.load_state_dict(opt.state_dict())
        del opt._load_group_extra
        assert len(calls) == 2             # the rollback ran: the keys must be rebuilt before the next step
    for t in range(3, 6):
        step(opt, t)
    for a, b in zip(params, straight):
        assert np.array_equal(a, b)


# ---------------------------------------------------------------------------------------------- validation by type
@pytest.mark.parametrize("make, name", [
    (lambda ps: AdamW(ps, maximize="False"), "maximize"),
    (lambda ps: AdamW(ps, amsgrad=1), "amsgrad"),
    (lambda ps: AdamW(ps, lr="0.1"), "learning rate"),
    (lambda ps: AdamW(ps, betas=("0.9", 0.999)), "beta parameter at index 0"),
    (lambda ps: HypergradientAdamW(ps, log_scale="yes"), "log_scale"),
    (lambda ps: AutoHypergradientAdamW(ps, adapt_momentum=1), "adapt_momentum"),
    (lambda ps: AutoHypergradientAdamW(ps, track_surprise="no"), "track_surprise"),
    (lambda ps: AutoHypergradientAdamW(ps, warmup_steps=2.0), "warmup_steps"),
    (lambda ps: HIOptimizer(ps, adaptive_threshold="True"), "adaptive_threshold"),
    (lambda ps: HIOptimizer(ps, lr=None), "learning rate"),
    (lambda ps: AutoSGM(ps, maximize=0), "maximize"),
    (lambda ps: AutoSGM(ps, lr_cfg=(1, 1e-2, 0)), "aoptlr"),
    (lambda ps: HCNaturalGrad(ps, cg_iters=8.0), "cg_iters"),
    (lambda ps: HL.for_params(ps, local="yes"), "local"),
    (lambda ps: HL.for_params(ps, gamma="1"), "gamma"),
])
def test_flags_and_numbers_are_validated_by_type(make, name):
    with pytest.raises(ValueError, match=f"Invalid {name}"):
        make([np.zeros(3, np.float32)])


@pytest.mark.no_launch   # the step is refused before any kernel runs
def test_a_flag_written_into_a_group_is_refused_before_the_step(backend, opt_kwargs):
    p = np.ones(3, np.float32)
    opt = AdamW([p], lr=0.1, **opt_kwargs)
    opt.param_groups[0]["maximize"] = "False"
    with pytest.raises(ValueError, match="Invalid maximize"):
        opt.step(gradients=[np.ones(3, np.float32)])
    assert np.array_equal(p, np.ones(3)) and opt.state == {}


@pytest.mark.parametrize("name", ["AdamW", "HypergradientAdamW", "AutoHypergradientAdamW", "HIOptimizer", "AutoSGM",
                                  "HCNaturalGrad", "HL"])
def test_signatures_are_explicit_with_keyword_only_device_arguments(name):
    import hyperopt
    sig = inspect.signature(getattr(hyperopt, name))
    kinds = {p.kind for p in sig.parameters.values()}
    assert inspect.Parameter.VAR_POSITIONAL not in kinds and inspect.Parameter.VAR_KEYWORD not in kinds
    assert sig.parameters["use_gpu"].kind is inspect.Parameter.KEYWORD_ONLY
    assert sig.parameters["device"].kind is inspect.Parameter.KEYWORD_ONLY
    assert sig.parameters["use_gpu"].default == "auto" and sig.parameters["device"].default is None


def test_state_after_a_huge_gradient_still_loads_back(backend, opt_kwargs):
    """One finite 1e21 gradient element overflows g*g in float32.  The step must be refused (state
    kept) rather than store an infinite second moment; either way the optimizer's own state_dict
    loads back.  (The refusal is the step path's job; this checks the round trip.)"""
    p = np.ones(4, np.float32)
    opt = AdamW([p], lr=0.1, **opt_kwargs)
    opt.step(gradients=[np.ones(4, np.float32)])
    g = np.ones(4, np.float32)
    g[1] = 1e21
    try:
        opt.step(gradients=[g])
    except (ValueError, FloatingPointError, OverflowError):
        pass
    opt.load_state_dict(opt.state_dict())
    assert np.isfinite(opt.state_of(p)["exp_avg_sq"]).all()


def test_an_interrupt_inside_a_load_rolls_back(backend, opt_kwargs, rng):
    opt, params = _stepped("HIOptimizer", opt_kwargs, rng)
    before = opt.state_dict()
    other = _stepped("HIOptimizer", opt_kwargs, np.random.default_rng(5), steps=5)[0].state_dict()
    calls = []

    def interrupted(extra):            # as if Ctrl-C arrived after the buffers were written
        calls.append(1)
        if len(calls) == 1:
            raise KeyboardInterrupt
        type(opt)._load_group_extra(opt, extra)
    opt._load_group_extra = interrupted
    with pytest.raises(KeyboardInterrupt):
        opt.load_state_dict(other)
    del opt._load_group_extra
    assert _same(opt.state_dict(), before)
