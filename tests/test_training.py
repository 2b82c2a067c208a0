"""Real training: every optimizer, both backends, on two moons and on the digits dataset; and the
spiking network with the surprise-gain input modulation."""
import numpy as np
import pytest

from benchmarks import snn
from benchmarks.train import CONFIGS, run_one

# Test accuracy of the committed runs (benchmarks/results/lavapipe-2core/training.md, both backends
# equal) minus a margin of 0.01 (3 of 300 moons test points, 4 of 360 digits ones).
COMMITTED = {"moons": dict.fromkeys(CONFIGS, 0.9967),
             "digits": {"AdamW": 0.9703, "HypergradientAdamW": 0.9703, "AutoHypergradientAdamW": 0.9740,
                        "HIOptimizer": 0.9666, "AutoSGM": 0.9703, "HCNaturalGrad": 0.9592, "HL": 0.9703}}
MARGIN = 0.01
# README: NumPy and Vulkan loss curves are bit-identical for the four optimizers whose step uses no
# sum of device reductions on the host; the others differ by rounding, which the model's matrix
# products carry on (measured on digits: 1.04e-7 for HypergradientAdamW and 2.98e-7 for HCNaturalGrad
# with OpenBLAS's AVX2 kernels, 1.34e-7 and 5.22e-7 with its AVX-512 ones); the limits are 1.5x the
# larger measurement.
BIT_IDENTICAL = ("AdamW", "HIOptimizer", "AutoSGM", "HL")
CURVE_ATOL = {"HypergradientAdamW": 2e-7, "AutoHypergradientAdamW": 2e-7, "HCNaturalGrad": 8e-7}


@pytest.mark.parametrize("dataset", ["moons", "digits"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_every_optimizer_learns(name, dataset, backend, opt_kwargs):
    losses, accuracy, _, used = run_one(name, dataset, opt_kwargs["use_gpu"], opt_kwargs.get("device"))
    assert used.startswith(("numpy", "numba") if backend == "numpy" else backend)
    want = COMMITTED[dataset][name] - MARGIN
    assert accuracy >= want, f"{name} on {dataset} ({used}): test accuracy {accuracy:.4f} < {want:.4f}"
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:10])


@pytest.mark.parametrize("dataset", ["moons", "digits"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_numpy_and_vulkan_curves_track_each_other(name, dataset, vulkan_device):
    a, _, _, used_a = run_one(name, dataset, False)
    b, _, _, used_b = run_one(name, dataset, True, vulkan_device)
    assert not used_a.startswith("vulkan") and used_b.startswith("vulkan:"), (used_a, used_b)
    assert len(a) == len(b)
    if name in BIT_IDENTICAL:
        np.testing.assert_array_equal(np.asarray(a, np.float64), np.asarray(b, np.float64))
    else:
        np.testing.assert_allclose(a, b, rtol=0, atol=CURVE_ATOL[name])


def test_spiking_network_beats_chance_and_modulation_is_measured(backend, opt_kwargs):
    kw = dict(epochs=4, hidden=64, steps=6, batch=64, seed=0, scale=0.5, lr=2e-3)
    base = snn.run("AdamW", False, opt_kwargs["use_gpu"], opt_kwargs.get("device"), **kw)
    auto = snn.run("AutoHypergradientAdamW", False, opt_kwargs["use_gpu"], opt_kwargs.get("device"), **kw)
    gain = snn.run("AutoHypergradientAdamW", True, opt_kwargs["use_gpu"], opt_kwargs.get("device"), **kw)
    for r in (base, auto, gain):
        assert r["accuracy"] > 0.6, r          # chance is 0.1
        assert r["apf"] > 0
    assert gain["mean_gain"] > 0               # the surprise signal was live and really scaled the inputs
    assert auto["mean_gain"] == 0


# ---------------------------------------------------------------------------------------------- mechanisms
@pytest.mark.timeout(600)
def test_natural_grad_branches_change_and_speed_up_the_step_at_the_same_lr(backend, opt_kwargs):
    from benchmarks.tasks import MLP
    from benchmarks.train import noisy_hidden_branches
    from benchmarks.mechanisms import _digits_loop
    from hyperopt import HCNaturalGrad
    finals = {}
    for use_branches in (False, True):
        model = MLP([64, 64, 10], seed=0)
        opt = HCNaturalGrad(model.params, lr=0.02, fisher_damp=0.1, projection="hash", **opt_kwargs)
        rng = np.random.default_rng(1)
        losses = _digits_loop(model, opt, 2, step_kwargs=(lambda m, X: {"branches": noisy_hidden_branches(m, X, rng)})
                              if use_branches else None)
        finals[use_branches] = np.mean(losses[-10:])
    # the branched step is P (C + damp I)^-1 P^T g: larger than lr * g along the random subspace
    assert finals[True] < 0.7 * finals[False], finals


@pytest.mark.timeout(300)
def test_hl_learns_a_sequence_online_with_its_costates(backend, opt_kwargs):
    from benchmarks.mechanisms import hl
    rows, out = hl(opt_kwargs, 1)
    trained, untrained = rows[0]["value"], rows[1]["value"]
    assert trained < 1e-3 < 0.1 < untrained, (trained, untrained)
    costates = np.array(out["HL, theta 0.1, beta 1.0"]["p_w"])
    assert costates.shape[1] == 3 and (costates[:100].max(axis=0) > 10 * costates[-100:].max(axis=0)).all()


@pytest.mark.timeout(300)
def test_hypergradient_lr_rises_from_a_too_small_start(backend, opt_kwargs):
    from benchmarks.mechanisms import hypergradient
    rows, out = hypergradient(opt_kwargs, 1)
    assert out["AdamW"]["lr"][-1] == 1e-4
    for name in ("HypergradientAdamW", "AutoHypergradientAdamW"):
        assert out[name]["lr"].max() > 20 * 1e-4, name
        assert out[name]["acc"] > out["AdamW"]["acc"] + 0.1
    assert out["AutoHypergradientAdamW"]["beta1"].min() < 0.9 == out["HypergradientAdamW"]["beta1"].min()


@pytest.mark.timeout(300)
def test_mechanisms_cli_writes_table_csv_and_figures(tmp_path):
    from benchmarks import mechanisms
    mechanisms.main(["--only", "hl", "windows", "--out", str(tmp_path)])
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["mechanism_hl.png", "mechanism_windows.png", "mechanisms.csv", "mechanisms.md"]
    text = (tmp_path / "mechanisms.md").read_text()
    assert "| mechanism | optimizer |" in text and "--only hl windows" in text
