"""Real training: every optimizer, both backends, on two moons and on the digits dataset; and the
spiking network with the surprise-gain input modulation."""
import numpy as np
import pytest

from benchmarks import snn
from benchmarks.train import CONFIGS, run_one

ACCURACY = {"moons": 0.95, "digits": 0.90}


@pytest.mark.parametrize("dataset", ["moons", "digits"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_every_optimizer_learns(name, dataset, backend, opt_kwargs):
    losses, accuracy, _, used = run_one(name, dataset, opt_kwargs["use_gpu"], opt_kwargs.get("device"))
    assert used.startswith(("numpy", "numba") if backend == "numpy" else backend)
    assert accuracy >= ACCURACY[dataset], f"{name} on {dataset} ({used}): test accuracy {accuracy:.3f}"
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:10])


@pytest.mark.parametrize("name", ["AdamW", "AutoHypergradientAdamW", "HIOptimizer"])
def test_numpy_and_vulkan_curves_track_each_other(name, vulkan_device):
    a = run_one(name, "digits", False)[0]
    b = run_one(name, "digits", True, vulkan_device)[0]
    assert len(a) == len(b)
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5)


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
