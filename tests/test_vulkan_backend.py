"""The Vulkan backend's mechanics: one submit per step, recorded once, windows, staging, leaks."""
import gc
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from hyperopt import AdamW
from hyperopt.kernels import KERNELS

from conftest import DEVICE, REQUIRE, vulkan_available

reason = vulkan_available()
if reason is not None:
    if REQUIRE:
        raise RuntimeError(f"HYPEROPT_REQUIRE_VULKAN=1 but {reason}")
    pytest.skip(reason, allow_module_level=True)

from hyperopt.backends import vulkan  # noqa: E402


def cnn_like_shapes(n=200, seed=0):
    """200 tensors, ~5M elements: conv kernels, biases, norms and a few dense layers."""
    rng = np.random.default_rng(seed)
    shapes = []
    while len(shapes) < n:
        c_in, c_out = rng.choice([16, 32, 64, 128], 2)
        shapes += [(int(c_out), int(c_in), 3, 3), (int(c_out),), (int(c_out),), (int(c_out),)]
    return shapes[:n]


def test_one_submit_per_step_for_200_tensors(monkeypatch):
    shapes = cnn_like_shapes()
    params = [np.zeros(s, np.float32) for s in shapes]
    opt = AdamW(params, use_gpu=True, device=DEVICE)
    assert opt.backend.startswith("vulkan:")
    submits, records = [], []
    ctx = opt._backend.ctx
    real_submit, real_record = ctx.submit, vulkan.VulkanProgram._record
    monkeypatch.setattr(ctx, "submit", lambda *a: (submits.append(1), real_submit(*a))[1])
    monkeypatch.setattr(vulkan.VulkanProgram, "_record", lambda *a: (records.append(1), real_record(*a))[1])
    grads = [np.ones(s, np.float32) for s in shapes]
    for _ in range(3):
        opt.step(gradients=grads)
    assert len(submits) == 3          # one per step, whatever the tensor count
    assert len(records) <= 1          # recorded once, then resubmitted
    assert all(np.all(p < 0) for p in params)


@pytest.mark.parametrize("staging", [False, True])
def test_windows_past_the_binding_limit(monkeypatch, staging):
    """Force a tiny binding limit so the arenas are bound as many windows (and the staging path)."""
    rng = np.random.default_rng(1)
    shapes = [(40000,), (3,), (70001,), (5, 7)]
    ctx = vulkan.context(DEVICE)
    monkeypatch.setattr(ctx, "max_binding_bytes", ctx.row_size * 4 * 2)
    monkeypatch.setattr(ctx, "staging", staging)
    ours = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    ref = [p.copy() for p in ours]
    opt = AdamW(ours, lr=0.05, use_gpu=True, device=DEVICE)
    assert len(opt._backend._windows) > 3
    ref_opt = AdamW(ref, lr=0.05, use_gpu=False)
    for _ in range(3):
        grads = [rng.standard_normal(s).astype(np.float32) for s in shapes]
        opt.step(gradients=grads)
        ref_opt.step(gradients=grads)
    for a, b in zip(ours, ref):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(opt.state_of(ours[2])["exp_avg"], ref_opt.state_of(ref[2])["exp_avg"], rtol=1e-6)


@pytest.mark.skipif(os.environ.get("HYPEROPT_SKIP_HUGE") == "1", reason="HYPEROPT_SKIP_HUGE=1")
def test_a_parameter_larger_than_128_mib():
    n = 40_000_000        # 160 MB per buffer: past lavapipe's 128 MiB binding limit
    p = np.zeros(n, np.float32)
    g = np.ones(n, np.float32)
    g[-1] = -1
    opt = AdamW([p], lr=0.1, weight_decay=0.0, use_gpu=True, device=DEVICE)
    assert len(opt._backend._windows) >= 2
    opt.step(gradients=[g])
    assert p[0] == pytest.approx(-0.1, rel=1e-5) and p[-1] == pytest.approx(0.1, rel=1e-5)
    assert p[n // 2] == pytest.approx(-0.1, rel=1e-5)
    del opt
    gc.collect()


def test_no_leak_over_many_optimizers():
    gc.collect()
    before = vulkan.Buffer.live
    for _ in range(30):
        opt = AdamW([np.zeros(1000, np.float32), np.zeros(10, np.float32)], use_gpu=True, device=DEVICE)
        opt.step(gradients=[np.ones(1000, np.float32), np.ones(10, np.float32)])
        del opt
    gc.collect()
    assert vulkan.Buffer.live == before
    opt = AdamW([np.zeros(10, np.float32)], use_gpu=True, device=DEVICE)
    opt.close()
    assert vulkan.Buffer.live == before


@pytest.mark.parametrize("kernel", ["reduce_dot", "reduce_sumsq"])
def test_reductions_are_deterministic_and_match_numpy(kernel):
    from hyperopt.backends.numpy_backend import NumpyBackend
    rng = np.random.default_rng(3)
    arrays = [rng.standard_normal(n).astype(np.float32) for n in (1, 255, 257, (1 << 20) + 3, 100_000)]
    others = [rng.standard_normal(a.shape).astype(np.float32) for a in arrays]
    k = KERNELS[kernel]
    names = ("param", "grad")[: len(k.buffers)]
    grads = dict(enumerate(others))
    results = []
    for backend in (vulkan.VulkanBackend(DEVICE), vulkan.VulkanBackend(DEVICE), NumpyBackend()):
        backend.bind(arrays, ())
        prog = backend.program([(k, names)])
        results.append(backend.run(prog, grads, download=False)[0][:, 0])
        results.append(backend.run(prog, None, download=False)[0][:, 0])
        backend.close()
    assert all(np.array_equal(results[0], r) for r in results[1:4])      # same bits, run to run
    np.testing.assert_allclose(results[0], results[4], rtol=1e-5, atol=1e-5)


@pytest.mark.no_launch   # construction is refused
def test_float64_parameters_are_refused_clearly():
    with pytest.raises(TypeError, match="float32 parameters; parameter 0 is float64"):
        AdamW([np.zeros(3)], use_gpu=True, device=DEVICE)


NO_LOADER = textwrap.dedent("""
    import warnings, numpy as np
    warnings.simplefilter("always")
    with warnings.catch_warnings(record=True) as caught:
        import hyperopt
        opt = hyperopt.AdamW([np.zeros(3, np.float32)], use_gpu=True)
    p = opt.params()[0]
    opt.step(gradients=[np.ones(3, np.float32)])
    print(opt.backend, len(caught), str(caught[0].message) if caught else "", float(p[0]))
""")


@pytest.mark.no_launch   # runs in a subprocess without a loader
def test_without_a_vulkan_loader_import_works_and_falls_back(tmp_path):
    fake = tmp_path / "vulkan"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise OSError(\"cannot load library 'libvulkan.so.1'\")\n")
    env = dict(os.environ, PYTHONPATH=f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    env.pop("HYPEROPT_REQUIRE_VULKAN", None)
    out = subprocess.run([sys.executable, "-c", NO_LOADER], env=env, capture_output=True, text=True, check=True)
    words = out.stdout.split()
    assert words[0] == "numpy" and words[1] == "1"
    assert "Vulkan loader could not be loaded" in out.stdout
    assert float(words[-1]) < 0


@pytest.mark.no_launch   # checks the fallback to the CPU path
def test_gpu_request_without_hardware_gpu_warns(monkeypatch):
    """device='gpu' never takes lavapipe: on a CPU-only machine it warns and runs NumPy."""
    names = [vulkan._text(vk_props.deviceName) for _, vk_props in _devices()]
    types = [vk_props.deviceType for _, vk_props in _devices()]
    if any(t != vulkan.vk.VK_PHYSICAL_DEVICE_TYPE_CPU for t in types):
        pytest.skip(f"this machine has a hardware GPU: {names}")
    monkeypatch.delenv("HYPEROPT_REQUIRE_VULKAN", raising=False)
    with pytest.warns(RuntimeWarning, match="no Vulkan device matches device='gpu'"):
        opt = AdamW([np.zeros(2, np.float32)], use_gpu=True, device="gpu")
    assert opt.backend == "numpy"


def _devices():
    ctx = vulkan.context(DEVICE)
    return [(d, vulkan.vk.vkGetPhysicalDeviceProperties(d)) for d in vulkan.vk.vkEnumeratePhysicalDevices(ctx.instance)]


@pytest.mark.no_launch   # provokes a validation message, no optimizer step
@pytest.mark.skipif(os.environ.get("HYPEROPT_VULKAN_VALIDATION") != "1", reason="validation layer not enabled")
def test_validation_layer_reports_invalid_usage():
    """The layer the suite relies on really speaks: an invalid call is reported."""
    ctx = vulkan.context(DEVICE)
    vk = vulkan.vk
    try:
        buffer = vk.vkCreateBuffer(ctx.device, vk.VkBufferCreateInfo(
            size=0, usage=vk.VK_BUFFER_USAGE_STORAGE_BUFFER_BIT, sharingMode=vk.VK_SHARING_MODE_EXCLUSIVE), None)
        vk.vkDestroyBuffer(ctx.device, buffer, None)     # lavapipe creates it anyway
    except Exception:
        pass
    assert any("VUID-VkBufferCreateInfo-size" in m for m in vulkan.validation_messages)
    vulkan.validation_messages.clear()
