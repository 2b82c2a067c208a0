"""Golden replays under comm=: every rank feeds the stored gradient (its rank mean is exact for
1, 2 and 4 ranks); the run equals the single-process replay bit for bit and the golden trajectory
within the tolerances of the ordinary tests."""
import json

import numpy as np
import pytest

from conftest import GOLDENS
from hyperopt import AutoHypergradientAdamW, AutoSGM, HCNaturalGrad, HIOptimizer, HL, HypergradientAdamW
from hyperopt.models import TinySSM


def _hysterograd(d, cfg, W, b, **k):
    if cfg["groups"] == "single":
        return HIOptimizer([W, b], **k, **cfg["kwargs"])
    over = cfg["group_overrides"]
    return HIOptimizer([dict(params=[W], **over[0]), dict(params=[b], **over[1])], **k, **cfg["kwargs"])


def _kwargs(cfg):
    return {k: v for k, v in cfg["kwargs"].items() if k != "use_gpu"}


MAKERS = {
    "autosgm": lambda d, cfg, W, b, **k: AutoSGM([W, b], **cfg["kwargs"], **k),
    "hysterograd": _hysterograd,
    "grilly_hyper": lambda d, cfg, W, b, **k: HypergradientAdamW([W, b], **_kwargs(cfg), **k),
    "grilly_auto": lambda d, cfg, W, b, **k: AutoHypergradientAdamW([W, b], **_kwargs(cfg), **k),
    "hcnatgrad": lambda d, cfg, W, b, **k: HCNaturalGrad([W, b], **cfg["kwargs"], **k),
}
NAMES = sorted(p.stem for p in GOLDENS.glob("*.npz") if not p.stem.startswith("hl_"))


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", NAMES)
def test_golden_replay(name, comm):
    d = np.load(GOLDENS / f"{name}.npz")
    cfg = json.loads(str(d["config_json"]))
    make = next(m for prefix, m in MAKERS.items() if name.startswith(prefix))
    W, b = d["W0"].copy(), d["b0"].copy()
    W1, b1 = d["W0"].copy(), d["b0"].copy()
    dist = make(d, cfg, W, b, use_gpu=False, comm=comm)
    single = make(d, cfg, W1, b1, use_gpu=False)
    branches = "branches" in d.files and cfg.get("use_branches", False)
    for t in range(30):
        extra = {"branches": d["branches"][t]} if branches else {}
        dist.step(gradients={id(W): d["grad_W"][t], id(b): d["grad_b"][t]}, **extra)
        single.step(gradients={id(W1): d["grad_W"][t], id(b1): d["grad_b"][t]}, **extra)
        assert np.array_equal(W, W1) and np.array_equal(b, b1), f"step {t + 1}"
        np.testing.assert_allclose(W, d["W_traj"][t + 1], rtol=1e-5, atol=1e-6, err_msg=f"W after step {t + 1}")
        np.testing.assert_allclose(b, d["b_traj"][t + 1], rtol=1e-5, atol=1e-6, err_msg=f"b after step {t + 1}")
        shock = cfg.get("shock") or {}
        if shock and t + 1 == shock["after_step"]:
            dist.shock(shock["factor"])
            single.shock(shock["factor"])


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", ["hl_default_local", "hl_nonlocal"])
def test_hl_golden_replay(name, comm):
    d = np.load(GOLDENS / f"{name}.npz")
    kw = json.loads(str(d["config_json"]))["hl_kwargs"]
    models = [TinySSM.from_arrays(d["A0"], d["B0"], d["C0"], d["h_init"], delta=0.1) for _ in range(2)]
    dist = HL(models[0], **kw, use_gpu=False, comm=comm)
    single = HL(models[1], **kw, use_gpu=False)
    for k in range(30):
        for opt in (dist, single):
            opt.step(gradients={n: d[f"traj_dH_d{n}"][k] for n in "ABC"}, h_grad=d["traj_dH_dh"][k])
            opt.zero_grad()
        for n in "ABC":
            assert np.array_equal(getattr(models[0], n), getattr(models[1], n)), f"{n} after step {k + 1}"
            np.testing.assert_allclose(getattr(models[0], n), d[f"traj_{n}"][k], rtol=1e-5, atol=1e-6)
        mine, ref = dist.weight_costates(), single.weight_costates()
        assert all(np.array_equal(mine[n], ref[n]) for n in "ABC")
