"""What a step works on and what it leaves behind, for every optimizer on both backends.

* The caller's arrays are the truth: in-place edits, ``p.data`` rebinding, a replaced entry in
  ``param_groups`` and restores around ``load_state_dict`` are all seen by the next step.
* A step is all or nothing: bad input, overflow, read-only or aliased arrays leave parameters,
  state and counters byte-identical; Ctrl-C during stepping leaves them all at one step.
* No silent no-op, and a closed optimizer refuses to be used.
"""
import copy
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hyperopt import (AdamW, AutoHypergradientAdamW, AutoSGM, HCNaturalGrad, HIOptimizer, HL,
                      HypergradientAdamW)

ROOT = Path(__file__).resolve().parent.parent
SHAPES = [(6, 5), (5,), (3,)]
BRANCHES = np.random.default_rng(3).standard_normal((6, 3))


def _make(name, params, kw):
    """Each optimizer in a configuration whose every path (adaptation, surprise, projection) runs."""
    if name == "AdamW":
        return AdamW(params, lr=0.05, **kw)
    if name == "HypergradientAdamW":
        return HypergradientAdamW(params, lr=0.05, beta_hyper=1e-3, **kw)
    if name == "AutoHypergradientAdamW":
        return AutoHypergradientAdamW(params, lr=0.05, warmup_steps=1, adapt_momentum=True, track_surprise=True,
                                      surprise_gamma=0.9, **kw)
    if name == "HIOptimizer":
        return HIOptimizer(params, lr=0.05, stiffening_factor=1e-4, **kw)
    if name == "AutoSGM":
        return AutoSGM(params, lr_cfg=(True, 1e-2, 1), **kw)      # the estimator: a control kernel too
    if name == "HCNaturalGrad":
        return HCNaturalGrad(params, lr=0.05, fisher_damp=0.1, branches=BRANCHES, **kw)
    if name == "HCNaturalGrad-hash":
        return HCNaturalGrad(params, lr=0.05, fisher_damp=0.1, branches=BRANCHES, projection="hash", **kw)
    if name == "HL":
        return HL.for_params(params, **kw)
    raise AssertionError(name)


NAMES = ["AdamW", "HypergradientAdamW", "AutoHypergradientAdamW", "HIOptimizer", "AutoSGM", "HCNaturalGrad",
         "HCNaturalGrad-hash", "HL"]


def _start():
    rng = np.random.default_rng(1)
    return [rng.standard_normal(s).astype(np.float32) for s in SHAPES]


def _grad(k, shapes=SHAPES):
    rng = np.random.default_rng(100 + k)
    return [rng.standard_normal(s).astype(np.float32) for s in shapes]


def _stepped(name, kw, steps):
    """(optimizer, its parameters) after ``steps`` steps from ``_start()`` with ``_grad(0..steps-1)``."""
    arrays = _start()
    opt = _make(name, arrays, kw)
    for k in range(steps):
        opt.step(gradients=_grad(k))
    return opt, arrays


def _same(a, b, path="state"):
    """Recursive equality, arrays compared byte for byte."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        assert isinstance(a, np.ndarray) and isinstance(b, np.ndarray), path
        assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes(), path
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), path
        for k in a:
            _same(a[k], b[k], f"{path}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for k, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f"{path}[{k}]")
    else:
        assert a == b or (a != a and b != b), f"{path}: {a!r} != {b!r}"


def _snapshot(opt, arrays):
    return [a.copy() for a in arrays], copy.deepcopy(opt.state_dict())


class Param:
    """A parameter object as a model would hold one: ``.data`` and ``.grad``."""

    def __init__(self, data):
        self.data, self.grad = data, None


# ------------------------------------------------------------------ the caller's arrays are the truth
@pytest.mark.parametrize("name", NAMES)
def test_in_place_edits_are_honoured_and_backends_agree(name, backend, opt_kwargs):
    def edit(ps):
        ps[0][...] = 5.0                       # e.g. a clamp, a restore, a pruning mask
        ps[1][:2] = -3.0

    def run(kw):
        ps = _start()
        opt = _make(name, ps, kw)
        for k in range(3):
            opt.step(gradients=_grad(k))
        sd = copy.deepcopy(opt.state_dict())
        edit(ps)
        fresh = [p.copy() for p in ps]          # reference: a new optimizer built on the edited values
        opt.step(gradients=_grad(3))
        ref = _make(name, fresh, kw)
        ref.load_state_dict(sd)
        ref.step(gradients=_grad(3))
        for a, b in zip(ps, fresh):
            np.testing.assert_array_equal(a, b)
        return ps

    got = run(opt_kwargs)
    if backend == "vulkan":
        for a, b in zip(got, run({"use_gpu": False})):
            np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)   # float32 sums in another order


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("how", ["data", "param_groups"])
def test_rebinding_keeps_the_state(name, how, backend, opt_kwargs):
    """``p.data = new`` and a replaced entry in ``param_groups`` act exactly like an in-place copy."""
    def run(rebind):
        ps = [Param(a) for a in _start()] if how == "data" else _start()
        opt = _make(name, ps, opt_kwargs)
        for k in range(2):
            opt.step(gradients=_grad(k))
        new = np.full(SHAPES[0], 0.25, np.float32)
        old = ps[0].data if how == "data" else ps[0]
        kept = old.copy()
        if not rebind:
            old[...] = new
            target = old
        elif how == "data":
            ps[0].data = new
            target = new
        else:
            opt.param_groups[0]["params"][0] = new
            target = new
        opt.step(gradients=_grad(2))
        extra = [np.ones(2, np.float32)]         # a layout change after the rebinding keeps the state too
        if name == "HL":
            from hyperopt.hamiltonian import StatelessModel
            opt.add_param_group({"params": StatelessModel(extra)})
        else:
            opt.add_param_group({"params": extra})
        opt.step(gradients=_grad(3) + [np.ones(2, np.float32)])
        if rebind:
            np.testing.assert_array_equal(old, kept)          # the old array is left alone
        return [target] + [p.data if how == "data" else p for p in ps[1:]], opt.state_dict()

    rebound, state_rebound = run(True)
    edited, state_edited = run(False)
    for a, b in zip(rebound, edited):
        np.testing.assert_array_equal(a, b)
    _same(state_rebound, state_edited)


@pytest.mark.parametrize("how", ["data", "param_groups"])
def test_rebinding_to_another_shape_or_dtype_is_refused(how, backend, opt_kwargs):
    ps = [Param(a) for a in _start()]
    opt = AdamW(ps if how == "data" else [p.data for p in ps], **opt_kwargs)
    opt.step(gradients=_grad(0))
    arrays = [p.data for p in ps]
    before = _snapshot(opt, arrays)
    for bad in (np.zeros(7, np.float32), np.zeros(SHAPES[0], np.float64)):
        if how == "data":
            ps[0].data = bad
        else:
            opt.param_groups[0]["params"][0] = bad
        with pytest.raises(ValueError, match="rebound to an array of shape"):
            opt.step(gradients=_grad(1))
        _same(_snapshot(opt, arrays), before)
    if how == "data":
        ps[0].data = arrays[0]
    else:
        opt.param_groups[0]["params"][0] = arrays[0]
    opt.step(gradients=_grad(1))                 # back to a good array: steps again
    assert opt.state_of(0)["step"] == 2


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("when", ["restore-then-load", "load-then-restore", "same-optimizer"])
def test_resume_matches_an_uninterrupted_run(name, when, backend, opt_kwargs):
    """torch-style resume: weights into the arrays and load_state_dict, in either order, with no other call."""
    straight = _start()
    ref = _make(name, straight, opt_kwargs)
    for k in range(6):
        ref.step(gradients=_grad(k))

    ps = _start()
    opt = _make(name, ps, opt_kwargs)
    for k in range(3):
        opt.step(gradients=_grad(k))
    weights, sd = [p.copy() for p in ps], copy.deepcopy(opt.state_dict())
    for k in range(3, 5):                         # training goes on, then is rolled back
        opt.step(gradients=_grad(10 + k))
    if when == "same-optimizer":
        arrays, resumed = ps, opt
        for a, w in zip(arrays, weights):
            a[...] = w
        resumed.load_state_dict(sd)
    else:
        arrays = _start()
        arrays[0] += 1.0                         # a freshly built model: other weights
        resumed = _make(name, arrays, opt_kwargs)
        if when == "restore-then-load":
            for a, w in zip(arrays, weights):
                a[...] = w
            resumed.load_state_dict(sd)
        else:
            resumed.load_state_dict(sd)
            for a, w in zip(arrays, weights):
                a[...] = w
    for k in range(3, 6):
        resumed.step(gradients=_grad(k))
    for a, b in zip(arrays, straight):
        np.testing.assert_array_equal(a, b)


def test_reload_params_is_harmless(backend, opt_kwargs):
    a, b = _start(), _start()
    o1, o2 = AdamW(a, **opt_kwargs), AdamW(b, **opt_kwargs)
    for k in range(3):
        o1.step(gradients=_grad(k))
        o2.reload_params()
        o2.step(gradients=_grad(k))
        o2.reload_params()
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


# ------------------------------------------------------------------ all or nothing
def _bad_inputs():
    """(label, what to do to (opt, arrays) before the step, gradients, error, message)."""
    def grads_with(k, value, where=(0, 0)):
        g = _grad(9)
        g[k] = g[k].copy()
        g[k][where] = value
        return g

    masked = _grad(9)
    masked[1] = np.ma.masked_array(np.where(np.arange(5) == 2, np.nan, 1.0).astype(np.float32),
                                   mask=np.arange(5) == 2)
    return [
        ("nan", None, grads_with(1, np.nan, (2,)), ValueError, "NaN or infinity"),
        ("inf", None, grads_with(2, np.inf, (0,)), ValueError, "NaN or infinity"),
        ("overflow", None, grads_with(1, 1e21, (3,)), ValueError, "square overflows"),
        ("shape", None, _grad(9)[:2] + [np.ones(4, np.float32)], ValueError, "shape"),
        ("complex", None, _grad(9)[:2] + [np.ones(3, np.complex64)], TypeError, "complex64"),
        ("masked-nan", None, masked, ValueError, "NaN or infinity"),
        ("count", None, _grad(9)[:2], ValueError, "2 gradients for 3 parameters"),
        ("read-only", lambda arrays: arrays[1].setflags(write=False), _grad(9), ValueError, "read-only"),
    ]


@pytest.mark.parametrize("name", NAMES)
def test_bad_input_changes_nothing(name, backend, opt_kwargs):
    opt, arrays = _stepped(name, opt_kwargs, 3)
    for label, prepare, grads, error, message in _bad_inputs():
        before = _snapshot(opt, arrays)
        if prepare is not None:
            prepare(arrays)
        with pytest.raises(error, match=message):
            opt.step(gradients=grads)
        arrays[1].setflags(write=True)
        _same(_snapshot(opt, arrays), before, label)
    opt.step(gradients=_grad(3))                 # and it steps on as if nothing had happened
    _, ref_arrays = _stepped(name, opt_kwargs, 4)
    for a, b in zip(arrays, ref_arrays):
        np.testing.assert_array_equal(a, b)


def _step_failing_at_run(opt, gradients, failing=1):
    """One step whose ``failing``-th backend run raises "device lost" (the runs before it go through)."""
    real, runs = opt._backend.run, []

    def run(*args, **kwargs):
        runs.append(1)
        if len(runs) == failing:
            raise RuntimeError("device lost")
        return real(*args, **kwargs)
    opt._backend.run = run
    try:
        with pytest.raises(RuntimeError, match="device lost"):
            opt.step(gradients=gradients)
    finally:
        opt._backend.run = real


# Optimizers that run twice a step: the hypergradient reduction, then the update; HCNaturalGrad's
# projection, then its expansion.
TWO_RUNS = ["HypergradientAdamW", "AutoHypergradientAdamW", "HCNaturalGrad", "HCNaturalGrad-hash"]


@pytest.mark.parametrize("name, failing", [(n, 1) for n in NAMES] + [(n, 2) for n in TWO_RUNS])
def test_a_failing_run_changes_nothing(name, failing, backend, opt_kwargs):
    """Counters, histories and host-side state commit only once the backend's last run of the step
    has returned, and a step's first run writes nothing when a second follows, so a step that fails
    in either leaves parameters, state (the surprise signal's gradient EMA included) and counters as
    they were; the next step then gives the bits of never having tried."""
    opt, arrays = _stepped(name, opt_kwargs, 3)
    before = _snapshot(opt, arrays)
    _step_failing_at_run(opt, _grad(3), failing)
    _same(_snapshot(opt, arrays), before)
    opt.step(gradients=_grad(3))
    _, ref_arrays = _stepped(name, opt_kwargs, 4)
    for a, b in zip(arrays, ref_arrays):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", NAMES)
def test_a_failing_first_step_leaves_the_parameters_as_they_were(name, backend, opt_kwargs):
    """A parameter's first step may prepare it on the host (AutoSGM nudges values below eps away
    from zero); a run that fails undoes that, so the arrays hold what the caller gave, and the
    retried step gives the bits of a first step that never failed."""
    arrays = _start()
    for a in arrays:
        a.reshape(-1)[:2] = 0.0
    given = [a.copy() for a in arrays]
    opt = _make(name, arrays, opt_kwargs)
    _step_failing_at_run(opt, _grad(0))
    for a, b in zip(arrays, given):
        np.testing.assert_array_equal(a, b)
    assert not opt.state
    opt.step(gradients=_grad(0))
    ref = [a.copy() for a in given]
    ref_opt = _make(name, ref, opt_kwargs)
    ref_opt.step(gradients=_grad(0))
    for a, b in zip(arrays, ref):
        np.testing.assert_array_equal(a, b)


def test_adapted_step_refused_for_its_scalars_keeps_the_gradient_ema(backend, opt_kwargs):
    """AutoHypergradientAdamW with the surprise signal: a step refused when its update's scalars
    are made (eps beyond float32), after the reduction has run, leaves the EMA as it was."""
    arrays = _start()
    opt = _make("AutoHypergradientAdamW", arrays, opt_kwargs)
    for k in range(3):
        opt.step(gradients=_grad(k))
    before = _snapshot(opt, arrays)
    opt.param_groups[0]["eps"] = 1e300
    with pytest.raises(FloatingPointError, match="not finite"):
        opt.step(gradients=_grad(3))
    opt.param_groups[0]["eps"] = 1e-8
    _same(_snapshot(opt, arrays), before)


def test_hyperparameter_beyond_float32_is_refused(backend, opt_kwargs):
    arrays = _start()
    opt = AdamW(arrays, **opt_kwargs)
    opt.step(gradients=_grad(0))
    before = _snapshot(opt, arrays)
    opt.param_groups[0]["eps"] = 1e300          # a valid float, not a float32
    with pytest.raises(FloatingPointError, match="not finite"):
        opt.step(gradients=_grad(1))
    opt.param_groups[0]["eps"] = 1e-8
    _same(_snapshot(opt, arrays), before)


@pytest.mark.parametrize("name", NAMES)
def test_zero_dimensional_parameters_step(name, backend, opt_kwargs):
    ps = [np.ones(4, np.float32), np.array(1.0, np.float32)]
    opt = _make(name, ps, opt_kwargs)
    for k in range(3):
        opt.step(gradients=[np.full(4, 0.5, np.float32), np.array(0.5, np.float32)])
    assert ps[1].shape == () and np.isfinite(ps[1]) and ps[1] != 1.0
    if name not in ("HCNaturalGrad", "HCNaturalGrad-hash"):   # random projections differ per element
        assert np.all(ps[0] == ps[1])             # the same arithmetic as a 1-element slot of a vector


@pytest.mark.no_launch   # refused before any kernel runs
def test_read_only_parameters_are_refused_up_front(backend, opt_kwargs):
    a = np.zeros(3, np.float32)
    a.setflags(write=False)
    with pytest.raises(ValueError, match="read-only"):
        AdamW([a], **opt_kwargs)
    with pytest.raises(TypeError, match="floating-point"):
        AdamW([np.zeros(3, np.complex64)], **opt_kwargs)
    b = np.zeros(3, np.float32)
    opt = AdamW([b], **opt_kwargs)
    with pytest.raises(ValueError, match="read-only"):
        opt.add_param_group({"params": [a]})
    assert len(opt.param_groups) == 1


@pytest.mark.no_launch   # refused before any kernel runs
def test_aliased_parameters_are_refused(backend, opt_kwargs):
    W = np.zeros((4, 4), np.float32)
    with pytest.raises(ValueError, match="share memory"):
        AdamW([W, W.T], **opt_kwargs)
    with pytest.raises(ValueError, match="share memory"):
        AdamW([W[:2], W[1:3]], **opt_kwargs)
    AdamW([W[:2], W[2:]], **opt_kwargs)          # disjoint views are fine
    opt = AdamW([W], **opt_kwargs)
    with pytest.raises(ValueError, match="share memory"):
        opt.add_param_group({"params": [W[0]]})
    assert len(opt.param_groups) == 1
    X, Y = np.zeros(3, np.float32), np.zeros(3, np.float32)
    opt = AdamW([X, Y], **opt_kwargs)
    opt.param_groups[0]["params"][1] = X[::-1]   # rebinding onto another parameter's memory
    with pytest.raises(ValueError, match="share memory"):
        opt.step(gradients=[np.ones(3), np.ones(3)])


@pytest.mark.parametrize("name", NAMES)
def test_gradient_that_is_the_parameter_itself(name, backend, opt_kwargs):
    a, b = _start(), _start()
    o1, o2 = _make(name, a, opt_kwargs), _make(name, b, opt_kwargs)
    for _ in range(3):
        o1.step(gradients=[a[0], a[1][::-1], _grad(0)[2]])           # the arrays being updated
        o2.step(gradients=[b[0].copy(), b[1][::-1].copy(), _grad(0)[2]])
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


def test_hypergradient_log_scale_from_lr_zero(backend, opt_kwargs):
    ps = _start()
    opt = HypergradientAdamW(ps, lr=0.0, log_scale=True, lr_min=1e-4, **opt_kwargs)
    opt.add_param_group({"params": [np.zeros(2, np.float32)], "lr": 0.01})
    for k in range(4):
        opt.step(gradients=_grad(k) + [np.ones(2, np.float32)])
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-4)      # log 0 = -inf, clipped at lr_min
    assert np.all(np.isfinite(np.concatenate([p.ravel() for p in ps])))


# ------------------------------------------------------------------ no silent no-op
@pytest.mark.no_launch   # refused before any kernel runs
@pytest.mark.parametrize("name", NAMES)
def test_no_gradient_source_is_an_error(name, backend, opt_kwargs):
    arrays = _start()
    opt = _make(name, arrays, opt_kwargs)
    before = _snapshot(opt, arrays)
    with pytest.raises(TypeError, match=r"gradients=\["):
        opt.step(_grad(0))                          # a list where the closure goes
    if name != "HL":                                # HL's step always moves the neuron costates
        with pytest.raises(ValueError, match="gradients="):
            opt.step()
    _same(_snapshot(opt, arrays), before)


def test_parameter_objects_without_grad_are_a_no_op(backend, opt_kwargs):
    ps = [Param(a) for a in _start()]
    opt = AdamW(ps, **opt_kwargs)
    before = _snapshot(opt, [p.data for p in ps])
    assert opt.step() is None
    assert opt.step(lambda: 1.5) == 1.5
    _same(_snapshot(opt, [p.data for p in ps]), before)
    for p, g in zip(ps, _grad(0)):
        p.grad = g
    opt.step()
    assert opt.state_of(ps[0])["step"] == 1


# ------------------------------------------------------------------ after close()
@pytest.mark.parametrize("name", NAMES)
def test_use_after_close_raises(name, backend, opt_kwargs):
    arrays = _start()
    opt = _make(name, arrays, opt_kwargs)
    opt.step(gradients=_grad(0))
    sd = opt.state_dict()
    opt.close()
    opt.close()                                     # twice is fine
    calls = [lambda: opt.step(gradients=_grad(1)), opt.state_dict, lambda: opt.state_of(0),
             lambda: opt.load_state_dict(sd), lambda: opt.add_param_group({"params": [np.zeros(2, np.float32)]}),
             opt.reload_params]
    if name == "HIOptimizer":
        calls += [opt.diagnostics, opt.shock]
    if name == "HL":
        calls += [opt.weight_costates]
    for call in calls:
        with pytest.raises(RuntimeError, match="closed"):
            call()


# ------------------------------------------------------------------ Ctrl-C
_INTERRUPT_SCRIPT = r'''
import os, signal, sys, threading, time
import numpy as np
sys.path.insert(0, sys.argv[1]); sys.path.insert(0, os.path.join(sys.argv[1], "tests"))
from test_step_semantics import _make, _same, NAMES
kw = {"use_gpu": False} if sys.argv[2] == "numpy" else {"use_gpu": True, "device": sys.argv[3]}
n = int(sys.argv[4])
shapes = [(n,), (1000,)]
start = [np.random.default_rng(1).standard_normal(s).astype(np.float32) for s in shapes]
grads = [[np.random.default_rng(100 + k).standard_normal(s).astype(np.float32) for s in shapes] for k in range(4)]

def replay(name, steps):
    arrays = [a.copy() for a in start]
    opt = _make(name, arrays, kw)
    for k in range(steps):
        opt.step(gradients=grads[k % 4])
    return arrays, opt.state_dict()

rng = np.random.default_rng(7)
hits = {"inside": 0, "outside": 0}
for name in NAMES:
    for trial in range(int(sys.argv[5])):
        arrays = [a.copy() for a in start]
        opt = _make(name, arrays, kw)
        opt.step(gradients=grads[0])
        t0 = time.perf_counter(); opt.step(gradients=grads[1]); per_step = time.perf_counter() - t0
        done = 2
        timer = threading.Timer(per_step * rng.uniform(0.5, 6), os.kill, (os.getpid(), signal.SIGINT))
        try:
            timer.start()              # inside: a fast step's timer may fire before start() returns
            while done < 60:
                opt.step(gradients=grads[done % 4])
                done += 1
        except KeyboardInterrupt:
            pass
        timer.cancel()
        got = ([a.copy() for a in arrays], opt.state_dict())
        matches = []
        for steps in (done, done + 1):
            want = replay(name, steps)
            try:
                for a, b in zip(got[0], want[0]):
                    assert a.tobytes() == b.tobytes()
                _same(got[1], want[1])
                matches.append(steps)
            except AssertionError:
                pass
        assert matches, f"{name} trial {trial}: interrupted after {done} steps, matches neither {done} nor {done + 1}"
        hits["inside" if matches == [done + 1] else "outside"] += 1
        opt.close()
print("CONSISTENT", hits)
'''


@pytest.mark.no_launch   # its kernels run in a child process, which checks its own backend
@pytest.mark.timeout(600)
def test_ctrl_c_during_steps_leaves_everything_at_one_step(backend, opt_kwargs):
    """SIGINT from a timer thread at random times while every optimizer steps: parameters and the
    whole state_dict always equal an uninterrupted run's after either the completed steps or one more."""
    device = opt_kwargs.get("device", "")
    n = 600_000 if backend == "numpy" else 200_000      # NumPy: above the threaded-chunk threshold
    proc = subprocess.run([sys.executable, "-c", _INTERRUPT_SCRIPT, str(ROOT), backend, str(device), str(n), "3"],
                          capture_output=True, text=True, timeout=580,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert proc.returncode == 0 and "CONSISTENT" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-3000:]


@pytest.mark.parametrize("name", ["AdamW", "HIOptimizer", "AutoSGM", "HL"])
def test_rebinding_to_a_non_contiguous_array(name, backend, opt_kwargs):
    def run(rebind):
        ps = [Param(a) for a in _start()]
        opt = _make(name, ps, opt_kwargs)
        opt.step(gradients=_grad(0))
        values = np.arange(30, dtype=np.float32).reshape(5, 6).T / 30     # shape (6, 5), a transposed view
        if rebind:
            ps[0].data = np.ascontiguousarray(values.T).T
            assert not ps[0].data.flags.c_contiguous
        else:
            ps[0].data[...] = values
        for k in range(1, 3):
            opt.step(gradients=_grad(k))
        return [p.data for p in ps]

    for a, b in zip(run(True), run(False)):
        np.testing.assert_array_equal(a, b)
