"""HL (Hamiltonian Learning): golden replays with the TinySSM, the update mechanics (damping, local
versus non-local order, costate resets), the refused configuration, state_dict, and a real run."""
import json
import pickle

import numpy as np
import pytest

from conftest import GOLDENS
from hyperopt.backends import select_backend
from hyperopt.hamiltonian import HL
from hyperopt.kernels.hamiltonian import hamiltonian_euler
from hyperopt.models import TinySSM


def _golden(name):
    path = GOLDENS / f"{name}.npz"
    if not path.exists():
        pytest.fail(f"reference trajectory {path} is missing")
    return np.load(path)


class Bare:
    """A minimal model: named weights, a state of ``h_dim`` elements, no dynamics of its own."""

    def __init__(self, weights, h_dim=3, delta=0.1):
        self.weights = weights
        self.h_init = np.zeros((1, h_dim), np.float32)
        self.h = self.h_init.copy()
        self.dh = np.zeros_like(self.h_init)
        self.delta = delta

    def named_parameters(self):
        return list(self.weights.items())


def signal(k):
    return np.array([np.sin(0.3 * k), np.cos(0.3 * k)], np.float32), np.float32(0.8 * np.sin(0.3 * k + 0.5))


def train(model, hl, steps, gamma=1.0):
    """The HL loop with the TinySSM's closed-form gradients; returns the per-step losses."""
    losses = []
    for k in range(steps):
        u, target = signal(k)
        model.forward(u)
        losses.append(model.loss(target))
        dh, dw = model.hamiltonian_grads(target, hl.neuron_costate(), gamma)
        hl.step(gradients=dw, h_grad=dh)
        hl.zero_grad()
    return np.array(losses)


# ---------------------------------------------------------------------------- golden replays
def _golden_setup(name, opt_kwargs):
    """The reference file, its TinySSM at the initial weights, and HL configured as it was."""
    d = _golden(name)
    kw = json.loads(str(d["config_json"]))["hl_kwargs"]
    model = TinySSM.from_arrays(d["A0"], d["B0"], d["C0"], d["h_init"], delta=0.1)
    return d, model, HL(model, **kw, **opt_kwargs)


@pytest.mark.parametrize("name", ["hl_default_local", "hl_nonlocal"])
def test_golden_replay_with_stored_gradients(name, opt_kwargs):
    d, model, hl = _golden_setup(name, opt_kwargs)
    for k in range(30):
        hl.step(gradients={n: d[f"traj_dH_d{n}"][k] for n in "ABC"}, h_grad=d["traj_dH_dh"][k])
        hl.zero_grad()
        for n in "ABC":
            np.testing.assert_allclose(getattr(model, n), d[f"traj_{n}"][k], rtol=1e-5, atol=1e-6,
                                       err_msg=f"{n} after step {k + 1}")
        costates = hl.weight_costates()
        for n in "ABC":
            np.testing.assert_allclose(costates[n], d[f"traj_p_{n}"][k], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(hl.neuron_costate(), d["traj_p_xi"][k], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["hl_default_local", "hl_nonlocal"])
def test_golden_replay_with_closed_form_tinyssm(name, opt_kwargs):
    d, model, hl = _golden_setup(name, opt_kwargs)
    for k in range(30):
        model.forward(d["inputs_u"][k])
        loss = model.loss(d["targets"][k])
        H = hl.compute_hamiltonian(loss)
        dh, dw = model.hamiltonian_grads(d["targets"][k], hl.neuron_costate(), hl.param_groups[0]["gamma"])
        np.testing.assert_allclose(model.h, d["traj_h"][k], rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(model.y, d["traj_y"][k], rtol=1e-4, atol=1e-6)
        assert loss == pytest.approx(d["traj_loss"][k], rel=1e-4, abs=1e-7)
        assert H == pytest.approx(d["traj_ham"][k], rel=1e-4, abs=1e-6)
        np.testing.assert_allclose(dh, d["traj_dH_dh"][k], rtol=1e-4, atol=1e-6)
        for n in "ABC":
            np.testing.assert_allclose(dw[n], d[f"traj_dH_d{n}"][k], rtol=1e-4, atol=1e-6)
        hl.step(gradients=dw, h_grad=dh)
        hl.zero_grad()
        for n in "ABC":
            np.testing.assert_allclose(getattr(model, n), d[f"traj_{n}"][k], rtol=1e-4, atol=1e-6)


def test_tinyssm_draws_the_golden_initialisation():
    d = _golden("hl_default_local")
    m = TinySSM(h_dim=4, u_dim=2, y_dim=1, delta=0.1, seed=7)
    for n, key in (("A", "A0"), ("B", "B0"), ("C", "C0"), ("h_init", "h_init")):
        np.testing.assert_array_equal(getattr(m, n), d[key])


# ---------------------------------------------------------------------------- mechanics
def test_costate_damping_and_the_weight_series(opt_kwargs):
    # one gradient, then none: p = s*g*(1-theta)^(k-1); local HL moves w by -delta*beta*p_old each step
    w = np.zeros(4, np.float32)
    model = Bare({"w": w}, delta=0.5)
    hl = HL(model, theta=0.25, beta=2.0, **opt_kwargs)
    g = np.array([1.0, -2.0, 0.5, 4.0], np.float32)
    hl.step(gradients={"w": g})
    np.testing.assert_array_equal(w, 0.0)                                   # old costate was zero
    np.testing.assert_allclose(hl.weight_costates()["w"], 0.5 * g, rtol=1e-6)
    expected_w, p = np.zeros(4), 0.5 * g.astype(float)
    for _ in range(6):
        hl.step(gradients={"w": np.zeros(4, np.float32)})
        expected_w -= 0.5 * 2.0 * p
        p *= 0.75
        np.testing.assert_allclose(hl.weight_costates()["w"], p, rtol=1e-6)
        np.testing.assert_allclose(w, expected_w, rtol=1e-6)
    # flip=+1 reverses the flow: s = -delta, and theta' = -theta makes the costate grow
    v = np.zeros(2, np.float32)
    hl = HL(Bare({"v": v}, delta=0.5), flip=1.0, theta=0.25, **opt_kwargs)
    hl.step(gradients={"v": np.ones(2, np.float32)})
    hl.step(gradients={"v": np.zeros(2, np.float32)})
    np.testing.assert_allclose(hl.weight_costates()["v"], -0.5 * 1.25, rtol=1e-6)


def test_for_params_is_a_damped_heavy_ball(opt_kwargs):
    w = np.array([1.0, -1.0, 2.0], np.float32)
    hl = HL.for_params([w], delta=0.3, theta=0.2, beta=0.5, local=False, **opt_kwargs)
    ref_w, p = w.astype(float), np.zeros(3)
    rng = np.random.default_rng(0)
    for _ in range(5):
        g = rng.standard_normal(3).astype(np.float32)
        hl.step(gradients=[g])
        p = 0.8 * p + 0.3 * g
        ref_w -= 0.3 * 0.5 * p
    np.testing.assert_allclose(w, ref_w, rtol=1e-5)


@pytest.mark.no_launch   # the neuron costate is host-side; no weight gradient, no kernel
def test_neuron_costate_decays_without_a_state_gradient(opt_kwargs):
    model = Bare({"w": np.zeros(2, np.float32)}, h_dim=3, delta=0.2)
    hl = HL(model, theta=0.5, **opt_kwargs)
    hl.step(h_grad=np.array([[1.0, 2.0, 3.0]], np.float32))
    np.testing.assert_allclose(hl.neuron_costate(), [[0.2, 0.4, 0.6]], rtol=1e-6)
    hl.step()                                       # no h_grad: zeros, as upstream for a missing .grad
    np.testing.assert_allclose(hl.neuron_costate(), [[0.1, 0.2, 0.3]], rtol=1e-6)


def test_local_moves_weights_with_the_old_costate_nonlocal_with_the_new(opt_kwargs):
    g1, g2 = np.float32(1.0), np.float32(3.0)
    delta, beta, theta = 0.1, 0.5, 0.2
    runs = {}
    for local in (True, False):
        w = np.ones(1, np.float32)
        hl = HL(Bare({"w": w}, delta=delta), theta=theta, beta=beta, local=local, **opt_kwargs)
        traj = []
        for g in (g1, g2):
            hl.step(gradients={"w": np.array([g])})
            traj.append(float(w[0]))
        runs[local] = traj
    p1 = delta * 1.0
    p2 = (1 - theta) * p1 + delta * 3.0
    assert runs[True] == pytest.approx([1.0, 1.0 - delta * beta * p1], rel=1e-6)
    assert runs[False] == pytest.approx([1.0 - delta * beta * p1, 1.0 - delta * beta * (p1 + p2)], rel=1e-6)


def test_weight_costate_reset_makes_nonlocal_hl_plain_gradient_descent(opt_kwargs):
    w = np.array([1.0, 2.0], np.float32)
    hl = HL(Bare({"w": w}), local=False, reset_weight_costate=True, beta=2.0, **opt_kwargs)
    for _ in range(3):
        hl.step(gradients={"w": np.array([1.0, -1.0], np.float32)})
        hl.zero_grad()
        np.testing.assert_array_equal(hl.weight_costates()["w"], 0.0)
    np.testing.assert_allclose(w, [1.0 - 3 * 0.1 * 2.0 * 0.1, 2.0 + 3 * 0.1 * 2.0 * 0.1], rtol=1e-6)


def test_neuron_costate_reset_cuts_the_recurrent_weights_off(opt_kwargs):
    # p_xi = 0 at every backward: A and B reach H only through <dh, p_xi>, so only C learns
    model = TinySSM(seed=7)
    A0, B0, C0 = model.A.copy(), model.B.copy(), model.C.copy()
    hl = HL(model, local=False, reset_neuron_costate=True, reset_weight_costate=True, **opt_kwargs)
    train(model, hl, 30)
    np.testing.assert_array_equal(hl.neuron_costate(), 0.0)
    np.testing.assert_array_equal(model.A, A0)
    np.testing.assert_array_equal(model.B, B0)
    assert np.abs(model.C - C0).max() > 1e-3


def test_local_with_weight_costate_reset_is_refused():
    model = Bare({"w": np.zeros(2, np.float32)})
    with pytest.raises(ValueError, match="can never move the weights"):
        HL(model, reset_weight_costate=True, use_gpu=False)
    with pytest.raises(ValueError, match="can never move the weights"):
        HL([{"params": model, "reset_weight_costate": True}], use_gpu=False)
    hl = HL(model, use_gpu=False)
    hl.param_groups[0]["reset_weight_costate"] = True      # set after construction: refused at step
    with pytest.raises(ValueError, match="can never move the weights"):
        hl.step(gradients={"w": np.ones(2, np.float32)})
    assert hl.state == {}


def test_weight_without_gradient_is_skipped(opt_kwargs):
    a, b = np.ones(2, np.float32), np.ones(3, np.float32)
    hl = HL(Bare({"a": a, "b": b}), local=False, **opt_kwargs)
    hl.step(gradients={"a": np.ones(2, np.float32)})
    assert not np.array_equal(a, 1.0)
    np.testing.assert_array_equal(b, 1.0)
    assert hl.state_of(b) == {} and hl.state_of(a)["step"] == 1


def test_groups_step_like_separate_optimizers(opt_kwargs):
    m1, m2 = TinySSM(seed=1), TinySSM(seed=2)
    r1, r2 = TinySSM(seed=1), TinySSM(seed=2)
    hl = HL([{"params": m1, "theta": 0.3}, {"params": m2, "beta": 0.5, "local": False}], **opt_kwargs)
    s1, s2 = HL(r1, theta=0.3, **opt_kwargs), HL(r2, beta=0.5, local=False, **opt_kwargs)
    for k in range(10):
        u, t = signal(k)
        grads = []
        for m in (m1, m2, r1, r2):
            m.forward(u)
        for m, p in ((m1, hl.neuron_costate(0)), (m2, hl.neuron_costate(1)), (r1, s1.neuron_costate()),
                     (r2, s2.neuron_costate())):
            grads.append(m.hamiltonian_grads(t, p))
        H = hl.compute_hamiltonian(m1.loss(t), m2.loss(t))
        assert H == pytest.approx(s1.compute_hamiltonian(r1.loss(t)) + s2.compute_hamiltonian(r2.loss(t)), rel=1e-6)
        hl.step(gradients=[grads[0][1], grads[1][1]], h_grad=[grads[0][0], grads[1][0]])
        s1.step(gradients=grads[2][1], h_grad=grads[2][0])
        s2.step(gradients=grads[3][1], h_grad=grads[3][0])
    for a, b in ((m1, r1), (m2, r2)):
        for n in "ABC":
            np.testing.assert_array_equal(getattr(a, n), getattr(b, n))
    with pytest.raises(ValueError, match="one potential per group"):
        hl.compute_hamiltonian(1.0)
    with pytest.raises(ValueError, match="ambiguous"):
        hl.step(gradients={"A": np.zeros((4, 4), np.float32)})


@pytest.mark.no_launch   # the neuron costate is host-side; no weight gradient, no kernel
def test_compute_hamiltonian_value(opt_kwargs):
    model = Bare({"w": np.zeros(1, np.float32)}, h_dim=3)
    hl = HL(model, gamma=2.0, **opt_kwargs)
    hl.step(h_grad=np.array([1.0, 2.0, 3.0], np.float32))        # p_xi = delta * g
    model.dh = np.array([[1.0, -1.0, 2.0]], np.float32)
    assert hl.compute_hamiltonian(0.5) == pytest.approx(2.0 * 0.5 + 0.1 * (1 - 2 + 6), rel=1e-6)


def test_state_dict_resumes_exactly(opt_kwargs):
    full = TinySSM(seed=3)
    train(full, HL(full, **opt_kwargs), 20)
    first = TinySSM(seed=3)
    hl = HL(first, **opt_kwargs)
    train(first, hl, 10)
    saved = pickle.loads(pickle.dumps(hl.state_dict()))
    assert "model" not in saved["param_groups"][0]
    second = TinySSM.from_arrays(first.A, first.B, first.C, first.h_init, first.delta)
    second._next = first._next                  # the model's own state carries on
    hl2 = HL(second, theta=0.9, **opt_kwargs)
    hl2.load_state_dict(saved)
    assert hl2.param_groups[0]["theta"] == 0.1
    np.testing.assert_array_equal(hl2.neuron_costate(), hl.neuron_costate())
    losses = []
    for k in range(10, 20):                      # the loop of train(), from step 10
        u, t = signal(k)
        second.forward(u)
        losses.append(second.loss(t))
        dh, dw = second.hamiltonian_grads(t, hl2.neuron_costate())
        hl2.step(gradients=dw, h_grad=dh)
        hl2.zero_grad()
    for n in "ABC":
        np.testing.assert_array_equal(getattr(second, n), getattr(full, n))
    other = HL(Bare({"x": np.zeros(2, np.float32)}), use_gpu=False)
    with pytest.raises(ValueError):
        other.load_state_dict(saved)


@pytest.mark.no_launch   # every step is refused before a kernel runs
def test_errors_are_clear_and_change_nothing(opt_kwargs):
    w = np.ones(2, np.float32)
    model = Bare({"w": w}, h_dim=3)
    hl = HL(model, **opt_kwargs)
    with pytest.raises(ValueError, match="h_grad of group 0 has shape"):
        hl.step(gradients={"w": np.ones(2, np.float32)}, h_grad=np.ones(4, np.float32))
    with pytest.raises(KeyError, match="no parameter named 'v'"):
        hl.step(gradients={"v": np.ones(2, np.float32)})
    with pytest.raises(ValueError, match="NaN"):
        hl.step(gradients={"w": np.ones(2, np.float32)}, h_grad=np.full(3, np.nan, np.float32))
    model.delta = 0.0
    with pytest.raises(ValueError, match="Invalid model.delta"):
        hl.step(gradients={"w": np.ones(2, np.float32)})
    np.testing.assert_array_equal(w, 1.0)
    np.testing.assert_array_equal(hl.neuron_costate(), 0.0)
    assert hl.state == {}
    with pytest.raises(TypeError, match="named_parameters"):
        HL(object(), use_gpu=False)
    with pytest.raises(ValueError, match="'params' key"):
        HL([{"model": model}], use_gpu=False)


@pytest.mark.parametrize("kw, message", [
    (dict(gamma=float("nan")), "Invalid gamma value: nan"),
    (dict(theta="0.1"), "Invalid theta value: 0.1"),
    (dict(beta=float("inf")), "Invalid beta value: inf"),
    (dict(local="yes"), "Invalid local: 'yes'"),
])
def test_invalid_hyperparameters(kw, message):
    with pytest.raises(ValueError, match=message):
        HL(Bare({"w": np.zeros(1, np.float32)}), use_gpu=False, **kw)


def test_euler_kernel_on_odd_sizes(opt_kwargs):
    rng = np.random.default_rng(0)
    sizes = (1, 255, 257, 70_001)
    params = [rng.standard_normal(n).astype(np.float32) for n in sizes]
    grads = {i: rng.standard_normal(n).astype(np.float32) for i, n in enumerate(sizes)}
    costs = [rng.standard_normal(n).astype(np.float32) for n in sizes]
    backend = select_backend(opt_kwargs["use_gpu"], opt_kwargs.get("device"))
    backend.bind(params, ("costate",))
    for i, c in enumerate(costs):
        backend.write("costate", i, c)
    prog = backend.program([(hamiltonian_euler, ("param", "grad", "costate"))])
    table = [(0.9, 0.1, -0.05, float(i % 2)) for i in range(len(sizes))]
    prog.tables[0][:] = table
    # The expectation from the docstring's formula, in float32 with each product rounded on its own
    # (not from the kernel's twin): costate' = keep*c + step*g; w' = w + neg_weight_step*(c' or c).
    expected = []
    for i, (p, c) in enumerate(zip(params, costs)):
        keep, step, nws, first = (np.float32(v) for v in table[i])
        c_new = (keep * c) + (step * grads[i])
        expected.append((p + nws * (c_new if first else c), c_new))
    backend.run(prog, grads)
    for i, (p, c) in enumerate(expected):
        np.testing.assert_array_equal(backend.read("costate", i), c)   # no fused multiply-add: same bits
        np.testing.assert_array_equal(params[i], p)
    backend.close()


# ---------------------------------------------------------------------------- a real run
@pytest.mark.parametrize("local", [True, False])
def test_hl_trains_the_tinyssm_to_track_its_target(local, opt_kwargs):
    model = TinySSM(seed=7)
    A0 = model.A.copy()
    frozen = TinySSM(seed=7)
    baseline = train(frozen, HL(frozen, beta=0.0, use_gpu=False), 1000)       # beta = 0: weights never move
    losses = train(model, HL(model, local=local, **opt_kwargs), 1000)
    assert baseline[-200:].mean() > 0.1
    assert losses[-200:].mean() < 2e-3, losses[-200:].mean()     # measured: 7.4e-4 (local), 8.0e-4 (non-local)
    assert np.abs(model.A - A0).max() > 1e-2                      # the costate coupling trains A too


def test_benchmark_case_builds_a_stepping_optimizer():
    from benchmarks.cases_hamiltonian import CASES
    params = [np.ones(1000, np.float32), np.ones((10, 10), np.float32)]
    opt = CASES["HL"](params, False, None)
    for _ in range(2):
        opt.step(gradients=[np.full(1000, 0.1, np.float32), np.full((10, 10), 0.1, np.float32)])
    assert not np.array_equal(params[0], 1.0)


def test_docstring_example_runs_and_matches_the_golden_loss():
    import textwrap
    doc = HL.__doc__
    code = textwrap.dedent(doc[doc.index("        import numpy as np"):doc.index("    The weight costates")])
    scope = {}
    exec(code, scope)
    assert scope["loss"] == pytest.approx(0.1705, abs=2e-4)      # hl_default_local: mse(step 30) = 0.1705
