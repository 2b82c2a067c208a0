"""AdamW against torch.optim.AdamW, and the Optimizer conventions it inherits."""
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from hyperopt import AdamW

SHAPES = [(7, 3), (100,), (5, 4, 3), (1,), (3000,)]


def _pair(rng, opt_kwargs, amsgrad, maximize=False):
    torch = pytest.importorskip("torch")       # only the torch comparisons skip without torch
    ps = [rng.standard_normal(s).astype(np.float32) for s in SHAPES]
    tp = [torch.tensor(p.copy(), requires_grad=True) for p in ps]
    groups = lambda xs: [{"params": xs[:2]}, {"params": xs[2:], "lr": 3e-3, "weight_decay": 0.1}]
    ours = AdamW(groups(ps), lr=1e-2, amsgrad=amsgrad, maximize=maximize, **opt_kwargs)
    ref = torch.optim.AdamW(groups(tp), lr=1e-2, amsgrad=amsgrad, maximize=maximize)
    return ps, tp, ours, ref


def _step_both(rng, ps, tp, ours, ref, steps):
    """The same random gradients through both optimizers; then the parameters must agree."""
    import torch
    for _ in range(steps):
        grads = [rng.standard_normal(s).astype(np.float32) for s in SHAPES]
        ours.step(gradients=grads)
        for t, g in zip(tp, grads):
            t.grad = torch.tensor(g)
        ref.step()
    for p, t in zip(ps, tp):
        np.testing.assert_allclose(p, t.detach().numpy(), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("amsgrad", [False, True])
def test_matches_torch_over_200_steps(backend, opt_kwargs, rng, amsgrad):
    ps, tp, ours, ref = _pair(rng, opt_kwargs, amsgrad)
    assert ours.backend.startswith(("numpy", "numba") if backend == "numpy" else backend)
    _step_both(rng, ps, tp, ours, ref, 200)
    st = ours.state_of(ps[2])
    np.testing.assert_allclose(st["exp_avg_sq"], ref.state[tp[2]]["exp_avg_sq"].numpy(), rtol=1e-5, atol=1e-12)
    assert st["step"] == 200


def test_maximize_matches_torch(backend, opt_kwargs, rng):
    _step_both(rng, *_pair(rng, opt_kwargs, False, maximize=True), 20)


def test_backends_agree_on_odd_sizes_and_extreme_values(rng, vulkan_device):
    """NumPy twin against the shader (the Vulkan side only: NumPy against itself proves nothing)."""
    sizes = [1, 255, 257, (1 << 20) + 3]
    base = [(rng.standard_normal(n) * 10.0 ** rng.integers(-20, 20, n)).astype(np.float32) for n in sizes]
    grads = [(rng.standard_normal(n) * 10.0 ** rng.integers(-15, 15, n)).astype(np.float32) for n in sizes]
    ref = [b.copy() for b in base]
    ours = [b.copy() for b in base]
    AdamW(ref, lr=0.1, use_gpu=False).step(gradients=grads)
    opt = AdamW(ours, lr=0.1, use_gpu=True, device=vulkan_device)
    assert opt.backend.startswith("vulkan:")
    opt.step(gradients=grads)
    for a, b in zip(ours, ref):
        np.testing.assert_allclose(a, b, rtol=2e-6, atol=0)


def test_parameter_without_gradient_is_untouched(backend, opt_kwargs, rng):
    a, b = rng.standard_normal(5).astype(np.float32), rng.standard_normal(6).astype(np.float32)
    b0 = b.copy()
    opt = AdamW([a, b], **opt_kwargs)
    opt.step(gradients={id(a): np.ones(5, np.float32)})
    assert np.array_equal(b, b0)            # no weight decay either
    assert id(b) not in opt.state and id(a) in opt.state     # keyed by id(param)
    opt.step(gradients=[np.ones(5, np.float32), np.ones(6, np.float32)])
    assert opt.state[id(a)]["step"] == 2 and opt.state[id(b)]["step"] == 1
    np.testing.assert_array_equal(opt.state[id(b)]["exp_avg"], opt.state_of(b)["exp_avg"])   # per-element state too


class Param:
    def __init__(self, data):
        self.data, self.grad = data, None


def test_gradient_forms_and_closure(backend, opt_kwargs):
    p = Param(np.zeros(3, np.float32))
    opt = AdamW([p], lr=0.1, weight_decay=0.0, **opt_kwargs)
    p.grad = np.ones(3, np.float32)
    assert opt.step(lambda: 4.5) == 4.5
    np.testing.assert_allclose(p.data, -0.1, rtol=1e-6)
    opt.zero_grad()
    assert p.grad is None
    assert opt.step() is None and opt.state[id(p)]["step"] == 1     # nothing to do without a gradient
    opt.step(gradients={id(p): np.ones(3)})                      # float64 gradients are cast
    assert opt.state[id(p)]["step"] == 2


def test_schedule_writes_group_lr(backend, opt_kwargs):
    p = np.zeros(4, np.float32)
    opt = AdamW([p], lr=1.0, weight_decay=0.0, **opt_kwargs)
    opt.param_groups[0]["lr"] = 0.0
    opt.step(gradients=[np.ones(4, np.float32)])
    assert np.all(p == 0)
    opt.param_groups[0]["lr"] = 0.5
    opt.step(gradients=[np.ones(4, np.float32)])
    np.testing.assert_allclose(p, -0.5, rtol=1e-6)


@pytest.mark.parametrize("bad, message", [
    (dict(lr=-1.0), "Invalid learning rate: -1.0"),
    (dict(eps=-1e-8), "Invalid epsilon value"),
    (dict(betas=(1.0, 0.999)), "Invalid beta parameter at index 0"),
    (dict(betas=(0.9, -0.1)), "Invalid beta parameter at index 1"),
    (dict(weight_decay=-0.1), "Invalid weight_decay value"),
    (dict(lr=float("nan")), "Invalid learning rate"),
])
def test_bad_hyperparameters(bad, message):
    with pytest.raises(ValueError, match=message):
        AdamW([np.zeros(2, np.float32)], use_gpu=False, **bad)


def _snapshot(opt, params):
    return [p.copy() for p in params], pickle.dumps(opt.state_dict()["state"])


@pytest.mark.parametrize("case", ["shape", "nan", "inf", "unknown id", "count", "dtype", "group lr"])
def test_bad_input_leaves_everything_unchanged(backend, opt_kwargs, rng, case):
    params = [rng.standard_normal((3, 4)).astype(np.float32), rng.standard_normal(5).astype(np.float32)]
    opt = AdamW(params, **opt_kwargs)
    good = [rng.standard_normal(p.shape).astype(np.float32) for p in params]
    opt.step(gradients=good)
    before_p, before_state = _snapshot(opt, params)
    bad = [g.copy() for g in good]
    if case == "shape":
        bad[0] = np.zeros((4, 3), np.float32)
        err, match = ValueError, r"parameter 0 has shape \(4, 3\), expected \(3, 4\)"
    elif case == "nan":
        bad[1][2] = np.nan
        err, match = ValueError, "parameter 1 .* NaN or infinity"
    elif case == "inf":
        bad[0][1, 1] = -np.inf
        err, match = ValueError, "parameter 0 .* NaN or infinity"
    elif case == "unknown id":
        bad = {id(params[0]): good[0], 12345: good[1]}
        err, match = KeyError, "unknown parameter id 12345"
    elif case == "count":
        bad = good[:1]
        err, match = ValueError, "got 1 gradients for 2 parameters"
    elif case == "dtype":
        bad[0] = bad[0].astype(np.complex64)
        err, match = TypeError, "parameter 0 has dtype complex64"
    else:
        opt.param_groups[0]["lr"] = -0.5
        err, match = ValueError, "Invalid learning rate: -0.5"
    with pytest.raises(err, match=match):
        opt.step(gradients=bad)
    after_p, after_state = _snapshot(opt, params)
    assert all(np.array_equal(a, b) for a, b in zip(before_p, after_p))
    assert after_state == before_state


@pytest.mark.parametrize("n", [4, 100_000])      # the small check and the one-pass check for large arrays
def test_overflowing_sum_is_not_mistaken_for_nonfinite(backend, opt_kwargs, n):
    p = np.zeros(n, np.float32)
    opt = AdamW([p], **opt_kwargs)
    opt.step(gradients=[np.full(n, 1e19, np.float32)])  # the sum of squares overflows, each square does not
    assert np.all(np.isfinite(p)) and np.all(np.isfinite(opt.state_of(p)["exp_avg_sq"]))
    before = (p.copy(), opt.state_of(p))
    g = np.ones(n, np.float32)
    g[n // 2] = 3e38                                     # its square overflows: exp_avg_sq would be inf
    with pytest.raises(ValueError, match="square overflows"):
        opt.step(gradients=[g])
    np.testing.assert_array_equal(p, before[0])
    assert opt.state_of(p)["step"] == before[1]["step"] == 1
    np.testing.assert_array_equal(opt.state_of(p)["exp_avg_sq"], before[1]["exp_avg_sq"])
    g = np.ones(n, np.float32)
    g[n // 2] = np.nan
    with pytest.raises(ValueError, match="NaN or infinity"):
        opt.step(gradients=[g])


def test_state_dict_checks(backend, opt_kwargs):
    a, b = np.zeros(3, np.float32), np.zeros(4, np.float32)
    opt = AdamW([a, b], **opt_kwargs)
    opt.step(gradients=[np.ones(3), np.ones(4)])
    sd = opt.state_dict()
    with pytest.raises(ValueError, match="1 parameter groups, optimizer has 2"):
        AdamW([{"params": [a]}, {"params": [b]}], use_gpu=False).load_state_dict(sd)
    other = AdamW([np.zeros(3, np.float32), np.zeros(5, np.float32)], use_gpu=False)
    with pytest.raises(ValueError, match=r"state 'exp_avg' of parameter 1 has shape \(4,\), expected \(5,\)"):
        other.load_state_dict(sd)
    assert other.state == {}


RESUME = textwrap.dedent("""
    import pickle, sys, numpy as np
    from hyperopt import AdamW
    path, use_gpu, device = sys.argv[1], sys.argv[2] == "1", sys.argv[3]
    saved = pickle.load(open(path, "rb"))
    params = saved["params"]
    opt = AdamW([{"params": params[:1]}, {"params": params[1:], "lr": 5e-3}], lr=1e-2, amsgrad=True,
                use_gpu=use_gpu, device=device)
    opt.load_state_dict(saved["opt"])
    for g in saved["grads"]:
        opt.step(gradients=g)
    pickle.dump(params, open(path, "wb"))
""")


def test_state_dict_resumes_bit_for_bit_in_a_new_process(backend, opt_kwargs, rng, tmp_path):
    def make(params):
        return AdamW([{"params": params[:1]}, {"params": params[1:], "lr": 5e-3}], lr=1e-2, amsgrad=True,
                     **opt_kwargs)
    params = [rng.standard_normal(s).astype(np.float32) for s in [(6, 5), (17,)]]
    grads = [[rng.standard_normal(p.shape).astype(np.float32) for p in params] for _ in range(20)]
    straight = [p.copy() for p in params]
    opt = make(straight)
    for g in grads:
        opt.step(gradients=g)

    opt = make(params)
    for g in grads[:10]:
        opt.step(gradients=g)
    path = tmp_path / "ckpt.pkl"
    pickle.dump({"params": params, "opt": opt.state_dict(), "grads": grads[10:]}, open(path, "wb"))
    subprocess.run([sys.executable, "-c", RESUME, str(path), "1" if opt_kwargs["use_gpu"] else "0",
                    opt_kwargs.get("device", "")], check=True)
    resumed = pickle.load(open(path, "rb"))
    for a, b in zip(resumed, straight):
        assert np.array_equal(a, b)


def test_add_param_group_and_repr(backend, opt_kwargs):
    a, b = np.zeros(3, np.float32), np.zeros(2, np.float32)
    opt = AdamW([a], lr=0.1, weight_decay=0.0, **opt_kwargs)
    opt.step(gradients=[np.ones(3)])
    opt.add_param_group({"params": [b], "lr": 0.2, "amsgrad": True})
    opt.step(gradients=[np.ones(3), np.ones(2)])
    assert opt.state[id(a)]["step"] == 2 and opt.state[id(b)]["step"] == 1
    np.testing.assert_allclose(b, -0.2, rtol=1e-6)
    text = repr(opt)
    assert "Parameter Group 1" in text and "lr: 0.2" in text and opt.backend in text
    with pytest.raises(ValueError, match="more than one parameter group"):
        opt.add_param_group({"params": [a]})


def test_reload_params_after_editing_in_place(backend, opt_kwargs):
    p = np.zeros(5, np.float32)
    opt = AdamW([p], lr=0.1, weight_decay=0.0, **opt_kwargs)
    opt.step(gradients=[np.ones(5, np.float32)])
    p[...] = 10.0                       # e.g. re-initialised by the user between steps
    opt.reload_params()
    opt.step(gradients=[np.ones(5, np.float32)])
    assert np.all(np.abs(p - 9.9) < 1e-5)
