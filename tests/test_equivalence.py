"""Property-based equivalence: random sequences of user actions give the same training on every backend.

Hypothesis draws a sequence of actions (steps with random gradients, None gradients, in-place edits,
``.data`` rebinding, writes to ``group['lr']``, ``add_param_group``, ``state_dict``/``load_state_dict``,
``hyperopt.save``/``load``, a rejected bad step) and applies it to one optimizer on the CPU path and
one on Vulkan, for every optimizer class; after every action the parameters must agree (bit for bit
where the kernels are, else within 1.05e-7, README's bound; HCNaturalGrad's hash projection within
a few ulps) and, for AdamW, with torch.optim.AdamW.
Bounded for CI: ``derandomize=True`` (a fixed sequence of examples), few examples, no deadline;
a failing example is shrunk and printed by Hypothesis.

Actions that need other work of this round (``.data`` rebinding honoured, in-place edits honoured
on Vulkan: worker core; ``hyperopt.save``/``load``: worker state) are in the suite and fail until
that work is merged.
"""
import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import hyperopt  # noqa: E402
from hyperopt.hamiltonian import StatelessModel  # noqa: E402

from conftest import DEVICE  # noqa: E402

SHAPES = [(3, 4), (4,)]
NEW_SHAPE = (5,)
BIT_IDENTICAL = {"AdamW", "HIOptimizer", "AutoSGM", "HL"}
ATOL = 1.05e-7
# HCNaturalGrad runs here with the hash projection, whose per-parameter sums round differently on
# the two backends (a few float32 ulps, see test_natural_grad); the NumPy projection is bit-identical.
HASH_RTOL, HASH_ATOL = 2e-6, 1e-7

ACTIONS = st.one_of(
    st.tuples(st.just("step"), st.integers(0, 2**31 - 1)),
    st.tuples(st.just("step_with_none"), st.integers(0, 2**31 - 1)),
    st.tuples(st.just("edit_in_place"), st.floats(-2, 2, allow_nan=False).map(lambda v: float(np.float32(v)))),
    st.tuples(st.just("rebind_data"), st.integers(0, 2**31 - 1)),
    st.tuples(st.just("set_lr"), st.floats(0.0001, 0.05).map(lambda v: float(np.float32(v)))),
    st.tuples(st.just("add_param_group"), st.integers(0, 2**31 - 1)),
    st.tuples(st.just("state_dict_roundtrip"), st.just(0)),
    st.tuples(st.just("save_load"), st.just(0)),
    st.tuples(st.just("bad_step"), st.just(0)),
)


class Param:
    """A parameter object with ``.data`` and ``.grad`` (what ``.data`` rebinding needs)."""

    def __init__(self, data):
        self.data = data
        self.grad = None


def _build(name, params, **kw):
    if name == "HL":
        return hyperopt.HL(StatelessModel([p.data for p in params]), **kw)
    if name == "HCNaturalGrad":
        return hyperopt.HCNaturalGrad(params, lr=0.01, fisher_damp=0.1, projection="hash",
                                      branches=np.random.default_rng(1).standard_normal((5, 3)), **kw)
    return getattr(hyperopt, name)(params, **kw)


def _arrays(opt):
    return [p if isinstance(p, np.ndarray) else p.data for p in opt.params()]


class Run:
    """One optimizer and its parameters, driven by the actions."""

    def __init__(self, name, kw, init):
        self.name = name
        self.params = [Param(a.copy()) for a in init]
        self.opt = _build(name, self.params, **kw)
        self.hl = name == "HL"

    def grads(self, seed, none_mask=()):
        rng = np.random.default_rng(seed)
        return [None if k in none_mask else rng.standard_normal(a.shape).astype(np.float32)
                for k, a in enumerate(_arrays(self.opt))]

    def step(self, gs):
        if self.hl:
            self.opt.step(gradients=gs)
        else:
            self.opt.step(gradients=gs)


def apply(run, action, tmp_path, ref=None):
    kind, arg = action
    opt = run.opt
    if kind == "step":
        run.step(run.grads(arg))
    elif kind == "step_with_none":
        run.step(run.grads(arg, none_mask=(0,)))
    elif kind == "edit_in_place":
        _arrays(opt)[0][...] = np.float32(arg)
    elif kind == "rebind_data":
        if run.hl:
            return                      # HL's parameters are a model's arrays, not objects with .data
        p = opt.param_groups[0]["params"][0]
        p.data = new = np.random.default_rng(arg).standard_normal(p.data.shape).astype(np.float32)
        if run.name != "HIOptimizer":         # (a Frozen HysteroGrad group legitimately stays put)
            before = new.copy()
            run.step(run.grads(arg))
            assert not np.array_equal(new, before), ".data rebinding: the next step did not update the new array"
    elif kind == "set_lr":
        for g in opt.param_groups:
            if "lr" in g:
                g["lr"] = float(arg)
    elif kind == "add_param_group":
        if run.hl or len(opt.param_groups) > 2:
            return
        new = Param(np.random.default_rng(arg).standard_normal(NEW_SHAPE).astype(np.float32))
        run.params.append(new)
        opt.add_param_group({"params": [new]})
    elif kind == "state_dict_roundtrip":
        opt.load_state_dict(opt.state_dict())
    elif kind == "save_load":
        path = tmp_path / f"{run.name}-{id(run)}.ckpt"
        hyperopt.save(opt, path)
        hyperopt.load(opt, path)
    elif kind == "bad_step":
        gs = run.grads(0)
        gs[-1] = np.full(gs[-1].shape, np.nan, np.float32)
        before = [a.copy() for a in _arrays(opt)]
        with pytest.raises(ValueError):
            run.step(gs)
        for a, b in zip(_arrays(opt), before):
            np.testing.assert_array_equal(a, b)


def _compare(name, cpu, gpu, where):
    for a, b in zip(_arrays(cpu.opt), _arrays(gpu.opt)):
        if name in BIT_IDENTICAL:
            np.testing.assert_array_equal(a, b, err_msg=where)
        elif name == "HCNaturalGrad":
            np.testing.assert_allclose(a, b, rtol=HASH_RTOL, atol=HASH_ATOL, err_msg=where)
        else:
            np.testing.assert_allclose(a, b, rtol=0, atol=ATOL, err_msg=where)


NAMES = ["AdamW", "HypergradientAdamW", "AutoHypergradientAdamW", "HIOptimizer", "AutoSGM", "HCNaturalGrad", "HL"]


@pytest.mark.timeout(600)
@pytest.mark.parametrize("name", NAMES)
def test_backends_agree_under_random_user_actions(name, vulkan_device, tmp_path_factory):
    init = [np.random.default_rng(k).standard_normal(s).astype(np.float32) for k, s in enumerate(SHAPES)]

    @settings(max_examples=8, deadline=None, derandomize=True, print_blob=True,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(st.lists(ACTIONS, min_size=1, max_size=8))
    def run(actions):
        tmp = tmp_path_factory.mktemp("equiv")
        cpu = Run(name, {"use_gpu": False}, init)
        gpu = Run(name, {"use_gpu": True, "device": vulkan_device}, init)
        assert gpu.opt.backend.startswith("vulkan:") and not cpu.opt.backend.startswith("vulkan")
        try:
            for k, action in enumerate(actions):
                apply(cpu, action, tmp)
                apply(gpu, action, tmp)
                _compare(name, cpu, gpu, f"after action {k} {action}")
        finally:
            cpu.opt.close()
            gpu.opt.close()

    run()


@pytest.mark.timeout(600)
def test_adamw_matches_torch_under_random_user_actions(backend, opt_kwargs):
    torch = pytest.importorskip("torch")
    kw = opt_kwargs
    init = [np.random.default_rng(k).standard_normal(s).astype(np.float32) for k, s in enumerate(SHAPES)]

    @settings(max_examples=8, deadline=None, derandomize=True, print_blob=True,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(st.lists(ACTIONS.filter(lambda a: a[0] not in ("rebind_data", "save_load")), min_size=1, max_size=8))
    def run(actions):
        ours = Run("AdamW", kw, init)
        tps = [torch.tensor(a.copy(), requires_grad=True) for a in init]
        ref = torch.optim.AdamW(tps, lr=1e-3)
        try:
            for k, (kind, arg) in enumerate(actions):
                apply(ours, (kind, arg), None)
                with torch.no_grad():
                    if kind in ("step", "step_with_none"):
                        gs = ours.grads(arg, none_mask=(0,) if kind == "step_with_none" else ())
                        for t, g in zip(tps, gs):
                            t.grad = None if g is None else torch.tensor(g)
                        ref.step()
                    elif kind == "edit_in_place":
                        tps[0][...] = float(np.float32(arg))
                    elif kind == "set_lr":
                        for g in ref.param_groups:
                            g["lr"] = float(arg)
                    elif kind == "add_param_group" and len(tps) < len(ours.params):
                        new = torch.tensor(ours.params[-1].data.copy(), requires_grad=True)
                        tps.append(new)
                        ref.add_param_group({"params": [new]})
                    elif kind == "state_dict_roundtrip":
                        ref.load_state_dict(ref.state_dict())
                for a, t in zip(_arrays(ours.opt), tps):
                    np.testing.assert_allclose(a, t.detach().numpy(), rtol=1e-5, atol=1e-7,
                                               err_msg=f"after action {k} {(kind, arg)}")
        finally:
            ours.opt.close()

    run()
