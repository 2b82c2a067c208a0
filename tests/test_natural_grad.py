"""HCNaturalGrad: bit-exact functional replays, the ordinary optimizer on both backends, its kernels,
the helpers (flatten, covariance, CG), the errors, and a real descent."""
import json
import os
import pickle
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import GOLDENS
from hyperopt.backends import select_backend
from hyperopt.kernels import natural_grad as nk
from hyperopt.natural_grad import (HCNaturalGrad, cg_solve, cov_empirical, deflatten_params, flatten_params)



def _golden(name):
    path = GOLDENS / f"{name}.npz"
    if not path.exists():
        pytest.fail(f"reference trajectory {path} is missing")
    return np.load(path)


def softmax_problem(seed=0):
    """The goldens' softmax regression: X, y, W0, b0 and loss_grad(W, b) -> (loss, dW, db)."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((64, 8)).astype(np.float32)
    y = rng.integers(0, 5, size=64)
    W0 = (0.1 * rng.standard_normal((8, 5))).astype(np.float32)
    b0 = np.zeros(5, np.float32)

    def loss_grad(W, b):
        z = X @ W + b
        z = z - z.max(axis=1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(axis=1, keepdims=True)
        loss = float(-np.log(p[np.arange(64), y]).mean())
        G = p
        G[np.arange(64), y] -= 1
        G /= 64
        return loss, (X.T @ G).astype(W.dtype), G.sum(axis=0).astype(W.dtype)

    return X, y, W0, b0, loss_grad


def reference_step(params, grads, B, rng, lr, damp, cg_iters, clip=None):
    """One float64 step of the algorithm block over a list of arrays (one group), drawing P from rng
    parameter by parameter."""
    g = np.concatenate([np.asarray(x, float).ravel() for x in grads])
    theta = np.concatenate([np.asarray(p, float).ravel() for p in params])
    C = cov_empirical(B)
    D = C.shape[0]
    P = np.concatenate([rng.normal(size=(np.size(p), D)) for p in params]) / np.sqrt(D)
    v = cg_solve(C + damp * np.eye(D), P.T @ g, iters=cg_iters, tol=1e-6)
    theta = theta - lr * (P @ v)
    if clip is not None:
        theta = np.clip(theta, -clip, clip)
    out, start = [], 0
    for p in params:
        out.append(theta[start:start + np.size(p)].reshape(np.shape(p)))
        start += np.size(p)
    return out


# ---------------------------------------------------------------------------- golden replays
def _replay(name, exact):
    """The functional form over a golden's 30 steps, against its trajectory: bit for bit (``exact``)
    or to float64 rounding."""
    d = _golden(name)
    cfg = json.loads(str(d["config_json"]))
    opt = HCNaturalGrad(**cfg["kwargs"])
    params = {"W": d["W_traj"][0], "b": d["b_traj"][0]}
    assert opt.initialize(params) == {"steps": 0}
    for t in range(30):
        info = {"branches": d["branches"][t]} if cfg["use_branches"] else {}
        grads = {"W": d["grad_W"][t], "b": d["grad_b"][t]}
        params, state = opt.step_params(None, params, {"grads": grads, "info": info})
        assert params["W"].dtype == np.float64
        for key in "Wb":
            want, what = d[f"{key}_traj"][t + 1], f"{key} after step {t + 1}"
            if exact:
                assert np.array_equal(params[key], want), what
            else:
                np.testing.assert_allclose(params[key], want, rtol=1e-9, atol=1e-15, err_msg=what)
        assert state["steps"] == d["steps"][t]
        if exact:
            assert state["precond_norm"] == d["precond_norm"][t]
        else:
            assert state["precond_norm"] == pytest.approx(d["precond_norm"][t], rel=1e-9)


GOLDEN_NAMES = ["hcnatgrad_branches_default", "hcnatgrad_no_branches_fallback"]


@pytest.mark.parametrize("name", GOLDEN_NAMES)
def test_functional_replay_to_rounding(name):
    _replay(name, exact=False)


def _openblas_on_x86():
    config = np.show_config(mode="dicts") if np.lib.NumpyVersion(np.__version__) >= "1.26.0" else {}
    blas = config.get("Build Dependencies", {}).get("blas", {}).get("name", "")
    return platform.machine().lower() in ("x86_64", "amd64") and "openblas" in blas


@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", GOLDEN_NAMES)
def test_functional_replay_is_bit_for_bit(name):
    """The goldens' matrix products were computed by OpenBLAS's Haswell (AVX2) kernels; its AVX-512
    kernels add a product's terms in another order, so on such a machine the same algorithm differs in
    the last bits.  Bit for bit, then, in a process whose OpenBLAS runs the Haswell kernels."""
    if not _openblas_on_x86():
        pytest.skip("NumPy's BLAS here is not OpenBLAS on x86-64: the goldens' kernels cannot be chosen")
    tests = Path(__file__).resolve().parent
    env = dict(os.environ, OPENBLAS_CORETYPE="Haswell",
               PYTHONPATH=os.pathsep.join([str(tests.parent), str(tests), os.environ.get("PYTHONPATH", "")]))
    code = f"import test_natural_grad as t; t._replay({name!r}, exact=True)"
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]


def test_functional_random_stream_is_upstreams():
    d = _golden("hcnatgrad_branches_default")
    rng = np.random.default_rng(12345)
    for t in range(30):
        assert np.array_equal(rng.normal(size=(45, 4)), d["rng_normal_draws"][t])
    # drawing parameter by parameter (the ordinary form) continues the same stream
    a, b = np.random.default_rng(5), np.random.default_rng(5)
    assert np.array_equal(a.normal(size=(45, 4)), np.concatenate([b.normal(size=(40, 4)), b.normal(size=(5, 4))]))


@pytest.mark.parametrize("name", ["hcnatgrad_branches_default", "hcnatgrad_no_branches_fallback"])
def test_ordinary_replay_float32(name, opt_kwargs):
    d = _golden(name)
    cfg = json.loads(str(d["config_json"]))
    W, b = d["W0"].copy(), d["b0"].copy()
    opt = HCNaturalGrad([W, b], **cfg["kwargs"], **opt_kwargs)
    for t in range(30):
        branches = d["branches"][t] if cfg["use_branches"] else None
        opt.step(gradients={id(W): d["grad_W"][t], id(b): d["grad_b"][t]}, branches=branches)
        np.testing.assert_allclose(W, d["W_traj"][t + 1], rtol=1e-5, atol=1e-6, err_msg=f"W after step {t + 1}")
        np.testing.assert_allclose(b, d["b_traj"][t + 1], rtol=1e-5, atol=1e-6, err_msg=f"b after step {t + 1}")
    assert opt.state_of(W)["step"] == 30


@pytest.mark.parametrize("D", [1, 6, 9])
def test_ordinary_follows_the_float64_algorithm_for_any_width(D, opt_kwargs):
    # D = 6, 9: several dispatches of four columns, the last one partly masked
    rng = np.random.default_rng(D)
    params = [rng.standard_normal((7, 3)).astype(np.float32), rng.standard_normal(300).astype(np.float32)]
    ref = [p.astype(float) for p in params]
    ref_rng = np.random.default_rng(99)
    opt = HCNaturalGrad(params, lr=0.1, fisher_damp=0.2, cg_iters=12, seed=99, **opt_kwargs)
    for _ in range(3):
        grads = [rng.standard_normal(p.shape) for p in params]
        B = rng.standard_normal((8, D))
        opt.step(gradients=[g.astype(np.float32) for g in grads], branches=B)
        ref = reference_step(ref, grads, B, ref_rng, 0.1, 0.2, 12)
        for p, r in zip(params, ref):
            np.testing.assert_allclose(p, r, rtol=1e-5, atol=1e-5)
    assert opt.state_buffers == tuple(f"proj{j}" for j in range(D))


# ---------------------------------------------------------------------------- behaviour
def test_width_can_grow_between_steps_and_groups_can_be_added(opt_kwargs):
    rng = np.random.default_rng(7)
    a = rng.standard_normal(10).astype(np.float32)
    ref, stream = [a.astype(float)], np.random.default_rng(1)
    opt = HCNaturalGrad([a], lr=0.1, fisher_damp=0.3, seed=1, **opt_kwargs)
    for D in (2, 5, 3):                       # 5 adds projection buffers; 3 reuses them
        g, B = rng.standard_normal(10), rng.standard_normal((6, D))
        opt.step(gradients=[g.astype(np.float32)], branches=B)
        ref = reference_step(ref, [g], B, stream, 0.1, 0.3, 8)
        np.testing.assert_allclose(a, ref[0], rtol=1e-5, atol=1e-6)
    b = np.ones(3, np.float32)
    opt.add_param_group({"params": [b], "lr": 0.0})
    opt.step(gradients=[np.zeros(10, np.float32), np.ones(3, np.float32)], branches=rng.standard_normal((4, 2)))
    np.testing.assert_array_equal(b, 1.0)     # lr 0 in its own group


def test_without_branches_is_plain_gradient_descent(opt_kwargs):
    opt = HCNaturalGrad(lr=0.1, grad_estimator=lambda model, params, ctx: np.array([0.5, -0.5, 1.0]))
    new, state = opt.step_params(None, {"w": np.array([1.0, -2.0, 0.5])}, {})
    np.testing.assert_allclose(new["w"], [0.95, -1.95, 0.4], rtol=0, atol=1e-15)
    assert state["precond_norm"] == pytest.approx(np.linalg.norm([0.5, -0.5, 1.0]))
    w = np.array([1.0, -2.0, 0.5], np.float32)
    HCNaturalGrad([w], lr=0.1, **opt_kwargs).step(gradients=[np.array([0.5, -0.5, 1.0], np.float32)])
    np.testing.assert_allclose(w, [0.95, -1.95, 0.4], rtol=1e-6)


def test_clip_is_a_box_on_parameter_values(opt_kwargs):
    # a zero gradient still clips: the box constrains values, not steps
    params = {"a": np.array([3.0, -0.2, -7.0]), "b": np.array(0.4)}
    new, _ = HCNaturalGrad(lr=0.1, clip=0.5).step_params(None, params, {"grads": {"a": np.zeros(3), "b": 0.0}})
    np.testing.assert_array_equal(new["a"], [0.5, -0.2, -0.5])
    assert new["b"].shape == () and new["b"] == 0.4
    a = np.array([3.0, -0.2, -7.0], np.float32)
    opt = HCNaturalGrad([a], lr=0.1, clip=0.5, **opt_kwargs)
    opt.step(gradients=[np.zeros(3, np.float32)])
    np.testing.assert_array_equal(a, np.array([0.5, -0.2, -0.5], np.float32))
    a = np.array([3.0, -0.2, -7.0], np.float32)
    opt = HCNaturalGrad([a], lr=0.1, clip=0.5, **opt_kwargs)
    opt.step(gradients=[np.full(3, 1e-3, np.float32)], branches=np.eye(3)[:, :2] * 10.0)   # with branches too
    assert np.abs(a).max() <= 0.5 and a[0] == np.float32(0.5) and a[2] == np.float32(-0.5)


def test_parameter_without_gradient_is_skipped_and_draws_nothing(opt_kwargs):
    rng = np.random.default_rng(1)
    a, b, c = (rng.standard_normal(n).astype(np.float32) for n in (5, 4, 3))
    c0 = c.copy()
    B = rng.standard_normal((5, 3))
    ga, gb = rng.standard_normal(5), rng.standard_normal(4)
    opt = HCNaturalGrad([a, b, c], lr=0.05, fisher_damp=0.3, seed=4, **opt_kwargs)
    ref = reference_step([a.astype(float), b.astype(float)], [ga, gb], B, np.random.default_rng(4), 0.05, 0.3, 8)
    opt.step(gradients=[ga, gb, None], branches=B)
    np.testing.assert_array_equal(c, c0)
    assert opt.state_of(c) == {}
    np.testing.assert_allclose(a, ref[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(b, ref[1], rtol=1e-5, atol=1e-6)


def test_groups_solve_separately_with_their_own_hyperparameters(opt_kwargs):
    rng = np.random.default_rng(2)
    a, b = rng.standard_normal(6).astype(np.float32), rng.standard_normal(5).astype(np.float32)
    ga, gb = rng.standard_normal(6), rng.standard_normal(5)
    B = rng.standard_normal((6, 4))
    opt = HCNaturalGrad([{"params": [a], "lr": 0.1}, {"params": [b], "fisher_damp": 0.5}], lr=0.02,
                        fisher_damp=0.1, seed=8, **opt_kwargs)
    stream = np.random.default_rng(8)            # rows of a first, then rows of b
    ref_a = reference_step([a.astype(float)], [ga], B, stream, 0.1, 0.1, 8)[0]
    ref_b = reference_step([b.astype(float)], [gb], B, stream, 0.02, 0.5, 8)[0]
    opt.step(gradients=[ga, gb], branches=B)
    np.testing.assert_allclose(a, ref_a, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(b, ref_b, rtol=1e-5, atol=1e-6)


def test_default_branches_and_closure(opt_kwargs):
    w = np.ones(4, np.float32)
    B = np.random.default_rng(0).standard_normal((5, 2))
    opt = HCNaturalGrad([w], lr=0.1, fisher_damp=0.1, branches=B, seed=3, **opt_kwargs)
    ref = reference_step([w.astype(float)], [np.ones(4)], B, np.random.default_rng(3), 0.1, 0.1, 8)[0]
    assert opt.step(lambda: 1.5, gradients=[np.ones(4, np.float32)]) == 1.5
    np.testing.assert_allclose(w, ref, rtol=1e-5)


def test_state_dict_resumes_the_same_trajectory(opt_kwargs):
    _, _, W0, b0, loss_grad = softmax_problem()
    B = np.random.default_rng(5).standard_normal((20, 6, 3))

    def run(steps, start=0, state=None, W=None, b=None):
        W = W0.copy() if W is None else W
        b = b0.copy() if b is None else b
        opt = HCNaturalGrad([W, b], lr=0.05, fisher_damp=0.1, **opt_kwargs)
        if state is not None:
            opt.load_state_dict(state)
        for t in range(start, steps):
            _, gW, gb = loss_grad(W, b)
            opt.step(gradients=[gW, gb], branches=B[t])
        return W, b, opt

    W_full, b_full, _ = run(20)
    W, b, opt = run(10)
    state = pickle.loads(pickle.dumps(opt.state_dict()))
    assert all(not any(k.startswith("proj") for k in s) for s in state["state"].values())
    W2, b2, _ = run(20, 10, state, W.copy(), b.copy())
    np.testing.assert_array_equal(W2, W_full)
    np.testing.assert_array_equal(b2, b_full)


def test_functional_state_dict_resumes_the_stream():
    """A state_dict round trip in the middle of a run (into an optimizer seeded otherwise) continues
    the random stream: the resumed steps are the uninterrupted run's, bit for bit, and the golden's
    to rounding (its bits: test_functional_replay_is_bit_for_bit)."""
    d = _golden("hcnatgrad_branches_default")
    ctx = lambda t: {"grads": {"W": d["grad_W"][t], "b": d["grad_b"][t]}, "info": {"branches": d["branches"][t]}}

    def run(resume_at=None):
        opt = HCNaturalGrad()
        params = {"W": d["W_traj"][0], "b": d["b_traj"][0]}
        opt.initialize(params)
        for t in range(10):
            if t == resume_at:
                saved = pickle.loads(pickle.dumps(opt.state_dict()))
                opt = HCNaturalGrad(seed=0)
                opt.load_state_dict(saved)
            params, state = opt.step_params(None, params, ctx(t))
        return params, state

    straight, _ = run()
    resumed, state = run(resume_at=5)
    assert state["steps"] == 10
    for key in "Wb":
        assert np.array_equal(resumed[key], straight[key]), key
    np.testing.assert_allclose(resumed["W"], d["W_traj"][10], rtol=1e-9, atol=1e-15)


# ---------------------------------------------------------------------------- helpers
def test_flatten_sorts_keys_and_deflatten_restores_shapes():
    params = {"b": np.arange(3.0), "W": np.ones((2, 2), np.float32), "a": 2.5, "Z": np.array([[7]])}
    theta, layout = flatten_params(params)
    assert layout == [("W", 4), ("Z", 1), ("a", 1), ("b", 3)]     # uppercase sorts first
    assert theta.dtype == np.float64
    np.testing.assert_array_equal(theta, [1, 1, 1, 1, 7, 2.5, 0, 1, 2])
    back = deflatten_params(theta, layout, params)
    assert back["W"].shape == (2, 2) and back["b"].shape == (3,)
    assert back["Z"].shape == () and back["a"].shape == ()       # one element: 0-d
    theta, layout = flatten_params({})
    assert theta.size == 0 and layout == []


def test_covariance_is_unbiased():
    X = np.random.default_rng(0).standard_normal((7, 3))
    np.testing.assert_allclose(cov_empirical(X), np.cov(X, rowvar=False), rtol=1e-12)
    np.testing.assert_array_equal(cov_empirical(X[:1]), np.zeros((3, 3)))


def test_cg_solves_an_spd_system():
    rng = np.random.default_rng(0)
    M = rng.standard_normal((6, 6))
    A = M @ M.T + 0.5 * np.eye(6)
    b = rng.standard_normal(6)
    exact = np.linalg.solve(A, b)
    np.testing.assert_allclose(cg_solve(A, b, iters=30, tol=1e-12), exact, rtol=1e-8)
    np.testing.assert_allclose(cg_solve(lambda v: A @ v, b, iters=30, tol=1e-12), exact, rtol=1e-8)
    np.testing.assert_allclose(cg_solve(2 * np.eye(3), np.array([2.0, 4.0, 6.0])), [1, 2, 3])
    one = cg_solve(A, b, iters=1)          # one iteration: the steepest-descent step
    np.testing.assert_allclose(one, (b @ b) / (b @ A @ b) * b)
    assert np.array_equal(cg_solve(A, np.zeros(6)), np.zeros(6))   # floored denominators: no NaN


# ---------------------------------------------------------------------------- errors
def test_functional_errors():
    opt = HCNaturalGrad()
    p = {"w": np.zeros(3)}
    with pytest.raises(ValueError, match="grad_estimator or context"):
        opt.step_params(None, p, {})
    with pytest.raises(ValueError, match="no gradient for parameter 'w'"):
        opt.step_params(None, p, {"grads": {"v": np.zeros(3)}})
    with pytest.raises(ValueError, match="size mismatch for key 'w'"):
        opt.step_params(None, p, {"grads": {"w": np.zeros(4)}})
    with pytest.raises(ValueError, match="returned 2 values for 3"):
        HCNaturalGrad(grad_estimator=lambda *a: np.zeros(2)).step_params(None, p, {})
    for bad, msg in ((np.zeros(4), "K x D"), (np.zeros((2, 2, 2)), "K x D"), (np.zeros((0, 3)), "at least one"),
                     (np.array([[np.nan, 1.0]]), "NaN")):
        with pytest.raises(ValueError, match=msg):
            opt.step_params(None, p, {"grads": {"w": np.zeros(3)}, "info": {"branches": bad}})
    with pytest.raises(TypeError, match="step_params"):
        opt.step(gradients=[np.zeros(3)])
    with pytest.raises(TypeError, match="use_gpu"):
        HCNaturalGrad(lr=0.1, use_gpu=True)
    with pytest.raises(TypeError, match="parameter list"):
        HCNaturalGrad(0.1)


@pytest.mark.no_launch   # every step is refused before a kernel runs
def test_ordinary_errors_leave_parameters_untouched(opt_kwargs):
    w = np.ones(3, np.float32)
    opt = HCNaturalGrad([w], **opt_kwargs)
    with pytest.raises(ValueError, match="K x D"):
        opt.step(gradients=[np.ones(3, np.float32)], branches=np.ones(5))
    with pytest.raises(ValueError, match="shape"):
        opt.step(gradients=[np.ones(4, np.float32)], branches=np.ones((3, 2)))
    with pytest.raises(ValueError, match="NaN"):
        opt.step(gradients=[np.array([1, np.nan, 1], np.float32)])
    np.testing.assert_array_equal(w, 1.0)
    assert opt.state == {}
    with pytest.raises(TypeError, match="functional interface"):
        opt.step_params(None, {"w": w}, {"grads": {"w": w}})
    with pytest.raises(TypeError, match="grad_estimator"):
        HCNaturalGrad([w], grad_estimator=lambda *a: 0, **opt_kwargs)


@pytest.mark.parametrize("kw, message", [
    (dict(lr=-1.0), "Invalid learning rate: -1.0"),
    (dict(fisher_damp=-0.1), "Invalid fisher_damp value: -0.1"),
    (dict(cg_iters=0), "Invalid cg_iters: 0"),
    (dict(clip=0.0), "Invalid clip value: 0.0"),
])
def test_invalid_hyperparameters(kw, message):
    with pytest.raises(ValueError, match=message):
        HCNaturalGrad(**kw)
    with pytest.raises(ValueError, match=message):
        HCNaturalGrad([np.zeros(2, np.float32)], use_gpu=False, **kw)
    with pytest.raises(ValueError, match="Invalid projection"):
        HCNaturalGrad([np.zeros(2, np.float32)], use_gpu=False, projection="gauss")


# ---------------------------------------------------------------------------- kernels
SIZES = (1, 255, 257, 70_001)


def _bound(opt_kwargs, arrays, names):
    backend = select_backend(opt_kwargs["use_gpu"], opt_kwargs.get("device"))
    backend.bind(arrays, names)
    return backend


def test_project_and_expand_kernels(opt_kwargs):
    rng = np.random.default_rng(0)
    params = [rng.standard_normal(n).astype(np.float32) for n in SIZES]
    grads = {i: rng.standard_normal(n).astype(np.float32) for i, n in enumerate(SIZES)}
    P = [rng.standard_normal((n, 5)).astype(np.float32) for n in SIZES]
    names = tuple(f"proj{j}" for j in range(5))
    backend = _bound(opt_kwargs, params, names)
    for i, Pi in enumerate(P):
        for j in range(5):
            backend.write(f"proj{j}", i, Pi[:, j])
    proj = backend.program([(nk.natural_grad_project, ("grad",) + names[:4]),
                            (nk.natural_grad_project, ("grad",) + names[4:] * 4)])
    proj.tables[0][:] = (0.5, 4)
    proj.tables[1][:] = (0.5, 1)
    s0, s1 = backend.run(proj, grads, download=False)
    for i in range(len(SIZES)):
        exact = 0.5 * P[i].astype(float).T @ grads[i].astype(float)
        np.testing.assert_allclose(np.r_[s0[i], s1[i, :1]], exact, rtol=2e-5, atol=2e-5 * np.sqrt(SIZES[i]))
        assert np.all(s1[i, 1:] == 0)                     # masked columns
    c = np.array([0.1, -0.2, 0.3, -0.4, 0.5])
    expand = backend.program([(nk.natural_grad_expand, ("param",) + names[:4]),
                              (nk.natural_grad_expand, ("param",) + names[4:] * 4)])
    expand.tables[0][:] = tuple(c[:4]) + (4, 0, 0)
    expand.tables[1][:] = (c[4], 0, 0, 0, 1, 1.5, 1)
    before = [p.astype(float) for p in params]
    backend.run(expand, None, download=True)
    for i in range(len(SIZES)):
        exact = np.clip(before[i] + P[i].astype(float) @ c, -1.5, 1.5)
        np.testing.assert_allclose(params[i], exact, rtol=1e-5, atol=1e-6)
    backend.close()


def test_store_kernel_takes_a_column_through_the_gradient_upload(opt_kwargs):
    params = [np.zeros((3, 5), np.float32), np.zeros(300, np.float32)]
    draws = {0: np.random.default_rng(0).normal(size=(15, 4)), 1: np.random.default_rng(1).normal(size=(300, 4))}
    backend = _bound(opt_kwargs, params, ("proj0",))
    prog = backend.program([(nk.natural_grad_store, ("grad", "proj0"))])
    prog.tables[0][:] = 0.5
    backend.run(prog, {i: d[:, 2].reshape(params[i].shape) for i, d in draws.items()}, download=False)
    for i, d in draws.items():
        np.testing.assert_allclose(backend.read("proj0", i), 0.5 * d[:, 2].reshape(params[i].shape), rtol=1e-7)
    backend.close()


def test_hash_signs_are_balanced_independent_and_reproducible():
    keys = nk.element_keys(1 << 16)
    s = nk.hash_signs(keys, nk.hash_stream(1, 1, 0, 0), 0, 4)
    assert set(np.unique(s)) == {-1.0, 1.0}
    assert np.abs(s.mean(axis=1)).max() < 0.02                        # mean 0
    assert np.abs(np.corrcoef(s)[np.triu_indices(4, 1)]).max() < 0.02   # columns uncorrelated
    other_step = nk.hash_signs(keys, nk.hash_stream(1, 2, 0, 0), 0, 4)
    assert abs(float((s * other_step).mean())) < 0.02
    assert np.array_equal(s, nk.hash_signs(keys, nk.hash_stream(1, 1, 0, 0), 0, 4))
    assert all(0 <= nk.hash_stream(7, t, i, b) < 1 << 24 for t in range(3) for i in range(3) for b in range(2))


def test_hash_kernels_match_their_twins(opt_kwargs):
    rng = np.random.default_rng(1)
    sizes = (1, 257, 4099)
    params = [rng.standard_normal(n).astype(np.float32) for n in sizes]
    grads = {i: rng.standard_normal(n).astype(np.float32) for i, n in enumerate(sizes)}
    # keys past 2**24 (large parameters) and ordinary indices
    keys = [nk.element_keys(n) if i else np.array([(1 << 24) + 3], np.uint32).view(np.float32)
            for i, n in enumerate(sizes)]
    keys[2] = (np.arange(sizes[2], dtype=np.uint32) + np.uint32(0xFF000000)).view(np.float32)
    backend = _bound(opt_kwargs, params, ("key",))
    for i, k in enumerate(keys):
        backend.write("key", i, k)
    prog = backend.program([(nk.natural_grad_hash_project, ("grad", "key"))])
    prog.tables[0][:] = (12345, 4, 3, 0.5)
    sums = backend.run(prog, grads, download=False)[0]
    for i in range(len(sizes)):
        signs = nk.hash_signs(keys[i], 12345, 4, 3)
        exact = 0.5 * signs.astype(float) @ grads[i].astype(float)
        np.testing.assert_allclose(sums[i, :3], exact, rtol=1e-5, atol=1e-4)
        assert sums[i, 3] == 0
    expand = backend.program([(nk.natural_grad_hash_expand, ("param", "key"))])
    expand.tables[0][:] = (12345, 4, 3, 0.25, -0.5, 0.125, 9.0, 2.0, 1)
    expected = [p.copy() for p in params]
    for e, k in zip(expected, keys):
        nk.natural_grad_hash_expand(e, k, **dict(zip(nk.natural_grad_hash_expand.scalars,
                                                        expand.tables[0][0])))
    backend.run(expand, None, download=True)
    for p, e in zip(params, expected):
        np.testing.assert_array_equal(p, e)                # +-c added: the shader rounds as the twin
    backend.close()


def test_hash_projection_optimizer_agrees_across_backends_and_descends(vulkan_device):
    _, _, W0, b0, loss_grad = softmax_problem()
    B = np.random.default_rng(3).standard_normal((40, 6, 5))
    runs = []
    for kw in ({"use_gpu": False}, {"use_gpu": True, "device": vulkan_device}):
        W, b = W0.copy(), b0.copy()
        opt = HCNaturalGrad([W, b], lr=0.05, fisher_damp=0.1, clip=1.0, projection="hash", seed=11, **kw)
        assert opt.backend.startswith("vulkan:") == (kw["use_gpu"] is True)
        assert opt.state_buffers == ("key",)
        losses = []
        for t in range(40):
            loss, gW, gb = loss_grad(W, b)
            losses.append(loss)
            opt.step(gradients=[gW, gb], branches=B[t])
        runs.append((W, b, losses))
    # per-parameter sums of P^T g differ in rounding between the backends (float64 on the host, float32
    # partials on the device): after 40 steps the parameters agree to a few float32 ulps
    np.testing.assert_allclose(runs[0][0], runs[1][0], rtol=2e-6, atol=1e-7)
    assert runs[1][2][-1] < runs[1][2][0] - 0.2


@pytest.mark.parametrize("staging", [False, True])
@pytest.mark.parametrize("projection", ["numpy", "hash"])
def test_arenas_bound_as_many_windows(vulkan_device, monkeypatch, staging, projection):
    """A tiny binding limit splits every dispatch into windows (and the staging path of discrete GPUs)."""
    from hyperopt.backends import vulkan
    DEVICE = vulkan_device
    ctx = vulkan.context(DEVICE)
    monkeypatch.setattr(ctx, "max_binding_bytes", getattr(ctx, "row_size", 4096) * 4 * 2)
    monkeypatch.setattr(ctx, "staging", staging)
    rng = np.random.default_rng(1)
    shapes = [(40000,), (3,), (70001,), (5, 7)]
    ours = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    ref = [p.copy() for p in ours]
    kw = dict(lr=1e-3, fisher_damp=0.1, clip=2.0, projection=projection)
    opt = HCNaturalGrad(ours, use_gpu=True, device=DEVICE, **kw)
    assert len(opt._backend._windows) > 3
    ref_opt = HCNaturalGrad(ref, use_gpu=False, **kw)
    for _ in range(3):
        grads = [rng.standard_normal(s).astype(np.float32) for s in shapes]
        B = rng.standard_normal((5, 6))
        opt.step(gradients=grads, branches=B)
        ref_opt.step(gradients=grads, branches=B)
    for a, b in zip(ours, ref):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6 * np.abs(b).max())


# ---------------------------------------------------------------------------- real runs
def test_softmax_loss_decreases_with_sensible_damping(opt_kwargs):
    _, _, W0, b0, loss_grad = softmax_problem()
    branches = np.random.default_rng(2024).standard_normal((100, 6, 4))
    W, b = W0.copy(), b0.copy()
    opt = HCNaturalGrad([W, b], lr=0.05, fisher_damp=0.1, clip=1.0, **opt_kwargs)
    first = loss_grad(W, b)[0]
    for t in range(100):
        _, gW, gb = loss_grad(W, b)
        opt.step(gradients=[gW, gb], branches=branches[t])
    last = loss_grad(W, b)[0]
    assert first == pytest.approx(1.6377, abs=1e-3)
    assert last < 1.35, (first, last)
    # the functional form on the same problem, float64
    fopt = HCNaturalGrad(lr=0.05, fisher_damp=0.1, clip=1.0)
    params = {"W": W0.astype(float), "b": b0.astype(float)}
    for t in range(100):
        _, gW, gb = loss_grad(params["W"], params["b"])
        params, _ = fopt.step_params(None, params, {"grads": {"W": gW, "b": gb}, "info": {"branches": branches[t]}})
    assert loss_grad(params["W"], params["b"])[0] < 1.35


def test_benchmark_case_builds_a_stepping_optimizer():
    from benchmarks.cases_natural_grad import CASES
    params = [np.ones(1000, np.float32), np.ones((10, 10), np.float32)]
    opt = CASES["HCNaturalGrad"](params, False, None)
    opt.step(gradients=[np.full(1000, 0.1, np.float32), np.full((10, 10), 0.1, np.float32)])
    assert not np.array_equal(params[0], 1.0)
