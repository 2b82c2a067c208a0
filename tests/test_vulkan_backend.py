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

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

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
def test_a_parameter_larger_than_the_binding_limit(monkeypatch):
    """One parameter bound as several windows.  The limit is forced (32 MiB, like the environment
    variable HYPEROPT_VULKAN_MAX_BINDING), so no driver's own limit is assumed."""
    ctx = vulkan.context(DEVICE)
    monkeypatch.setattr(ctx, "max_binding_bytes", min(ctx.max_binding_bytes, 32 << 20))
    n = 10_000_000        # 40 MB per buffer
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


def _optimizer_cases():
    from benchmarks.run import cases
    return cases()


@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", sorted(_optimizer_cases()))
def test_float64_on_vulkan_agrees_with_float64_numpy(name):
    """float64 parameters run the kernels' float64 builds (where the device has shaderFloat64)."""
    if not vulkan.context(DEVICE).float64:
        pytest.skip(f"{vulkan.context(DEVICE).name} has no shaderFloat64 (the CPU-path fallback is tested below)")
    factory = _optimizer_cases()[name]
    rng = np.random.default_rng(7)
    shapes = [(300, 7), (5,), (4100,)]
    start = [rng.standard_normal(s) for s in shapes]
    runs = {}
    for use_gpu, device in ((False, None), (True, DEVICE)):
        params = [p.copy() for p in start]
        opt = factory(params, use_gpu, device)
        assert opt.backend.startswith("vulkan:") == use_gpu
        grng = np.random.default_rng(8)
        for _ in range(4):
            opt.step(gradients=[grng.standard_normal(s) for s in shapes])
        runs[use_gpu] = params
    for a, b in zip(runs[False], runs[True]):
        assert a.dtype == b.dtype == np.float64
        # float32 would be ~1e-7 off; the control buffer (device-side scalars such as AutoSGM's alpha) is
        # float32 at either precision, which moves a few elements by ~1e-9
        np.testing.assert_allclose(b, a, rtol=1e-8, atol=1e-10)


@pytest.mark.no_launch
@pytest.mark.cpu_fallback   # float64 without shaderFloat64 moves to the CPU path, by design
def test_float64_without_shader_float64_runs_on_the_cpu_path(monkeypatch):
    import hyperopt.backends as backends
    ctx = vulkan.context(DEVICE)
    monkeypatch.setattr(ctx, "float64", False)
    monkeypatch.setattr(backends, "_told", set())
    p = np.ones(4)
    with pytest.warns(RuntimeWarning, match="no shaderFloat64.*CPU path") as caught:
        opt = AdamW([p], lr=0.1, use_gpu=True, device=DEVICE)
        AdamW([np.ones(4)], use_gpu=True, device=DEVICE)          # warned once
    assert len(caught) == 1 and caught[0].filename == __file__
    assert opt.backend in ("numpy", "numba")
    opt.step(gradients=[np.ones(4)])
    assert p[0] == pytest.approx((1 - 0.1 * 0.01) - 0.1 / (1 + 1e-8), rel=1e-14)   # double-precision scalars


def test_mixed_precisions_move_an_optimizer_to_the_cpu_path_with_its_state(monkeypatch):
    import hyperopt.backends as backends
    monkeypatch.setattr(backends, "_told", set())
    a, b = np.ones(6, np.float32), np.ones(3)
    ra, rb = a.copy(), b.copy()
    opt = AdamW([a], lr=0.1, use_gpu=True, device=DEVICE)
    ref = AdamW([ra], lr=0.1, use_gpu=False)
    for o, x in ((opt, a), (ref, ra)):
        o.step(gradients=[np.full(6, 0.5, np.float32)])
    with pytest.warns(RuntimeWarning, match="mix float32 and float64"):
        opt.add_param_group({"params": [b]})
    ref.add_param_group({"params": [rb]})
    assert opt.backend in ("numpy", "numba")
    for o, x, y in ((opt, a, b), (ref, ra, rb)):
        o.step(gradients=[np.full(6, 0.5, np.float32), np.full(3, 0.25)])
    np.testing.assert_array_equal(a, ra)        # the moments came along from the device
    np.testing.assert_array_equal(b, rb)
    assert a.dtype == np.float32 and b.dtype == np.float64


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
    assert words[0] in ("numpy", "numba") and words[1] == "1"   # the CPU path
    assert "Vulkan loader could not be loaded" in out.stdout
    assert float(words[-1]) < 0


def _cpu_only():
    types = [props.deviceType for _, props in _devices()]
    return all(t == vulkan.vk.VK_PHYSICAL_DEVICE_TYPE_CPU for t in types)


@pytest.mark.no_launch   # checks device selection or layout planning: no kernel runs
def test_gpu_request_without_hardware_gpu_warns_once_at_the_callers_line(monkeypatch):
    """use_gpu=True never takes a CPU driver: on a CPU-only machine it warns once, then runs the CPU path."""
    if not _cpu_only():
        pytest.skip("this machine has a hardware GPU")
    import hyperopt.backends as backends
    monkeypatch.delenv("HYPEROPT_REQUIRE_VULKAN", raising=False)
    monkeypatch.delenv("HYPEROPT_DEVICE", raising=False)
    monkeypatch.setattr(backends, "_told", set())
    with pytest.warns(RuntimeWarning, match="no hardware GPU is present") as caught:
        opt = AdamW([np.zeros(2, np.float32)], use_gpu=True)
        AdamW([np.zeros(2, np.float32)], use_gpu=True, device="gpu")     # once per process
    assert len(caught) == 1 and caught[0].filename == __file__
    assert opt.backend in ("numpy", "numba")
    monkeypatch.setenv("HYPEROPT_REQUIRE_VULKAN", "1")
    with pytest.raises(RuntimeError, match="HYPEROPT_REQUIRE_VULKAN=1"):
        AdamW([np.zeros(2, np.float32)], use_gpu=True)


@pytest.mark.no_launch   # checks device selection or layout planning: no kernel runs
def test_auto_on_a_cpu_only_machine_runs_the_cpu_path_without_a_warning(monkeypatch, caplog):
    if not _cpu_only():
        pytest.skip("this machine has a hardware GPU")
    import logging
    import warnings
    import hyperopt.backends as backends
    monkeypatch.delenv("HYPEROPT_DEVICE", raising=False)
    monkeypatch.setattr(backends, "_told", set())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with caplog.at_level(logging.INFO, logger="hyperopt"):
            opts = [AdamW([np.zeros(2, np.float32)], use_gpu="auto") for _ in range(2)]
    assert all(o.backend in ("numpy", "numba") for o in opts)     # a CPU driver is never taken implicitly
    notices = [r for r in caplog.records if r.name == "hyperopt"]
    assert len(notices) == 1 and "CPU path" in notices[0].getMessage()


@pytest.mark.parametrize("use_gpu, device", [(False, "gpu"), (False, "vulkan:cpu"), (False, "vulkan:0"),
                                             (True, "cpu")])
@pytest.mark.no_launch   # checks device selection or layout planning: no kernel runs
def test_contradictions_raise(use_gpu, device):
    with pytest.raises(ValueError, match="contradicts"):
        AdamW([np.zeros(2, np.float32)], use_gpu=use_gpu, device=device)


@pytest.mark.parametrize("use_gpu, device", [("False", None), (1, None), (None, None), (True, "lavapipe"),
                                             (True, "vulkan:"), (True, 0)])
@pytest.mark.no_launch   # checks device selection or layout planning: no kernel runs
def test_bad_device_arguments_raise(use_gpu, device):
    with pytest.raises((ValueError, TypeError), match="use_gpu|device"):
        AdamW([np.zeros(2, np.float32)], use_gpu=use_gpu, device=device)


@pytest.mark.no_launch   # checks device selection or layout planning: no kernel runs
@pytest.mark.parametrize("use_gpu", [True, "auto"])
@pytest.mark.parametrize("device", ["vulkan:no such device", "vulkan:99"])
def test_an_explicit_vulkan_device_that_matches_nothing_raises(monkeypatch, use_gpu, device):
    monkeypatch.delenv("HYPEROPT_REQUIRE_VULKAN", raising=False)
    with pytest.raises(RuntimeError, match="no Vulkan device matches device="):
        AdamW([np.zeros(2, np.float32)], use_gpu=use_gpu, device=device)


@pytest.mark.no_launch   # checks device selection or layout planning: no kernel runs
def test_device_names_pick_the_path(monkeypatch):
    monkeypatch.delenv("HYPEROPT_DEVICE", raising=False)
    assert AdamW([np.zeros(2, np.float32)], use_gpu="auto", device="cpu").backend in ("numpy", "numba")
    assert AdamW([np.zeros(2, np.float32)], use_gpu=False).backend in ("numpy", "numba")
    name = vulkan.context(DEVICE).name
    by_index = [k for k, (_, p) in enumerate(_devices()) if vulkan._text(p.deviceName) == name][0]
    for device in (DEVICE, f"vulkan:{by_index}", f"vulkan:{name[:5].upper()}"):
        assert AdamW([np.zeros(2, np.float32)], use_gpu=True, device=device).backend == f"vulkan:{name}"
    monkeypatch.setenv("HYPEROPT_DEVICE", DEVICE)      # the environment names the device when device=None
    assert AdamW([np.zeros(2, np.float32)]).backend == f"vulkan:{name}"
    monkeypatch.setenv("HYPEROPT_DEVICE", "cpu")
    assert AdamW([np.zeros(2, np.float32)], use_gpu=True).backend in ("numpy", "numba")
    monkeypatch.setenv("HYPEROPT_DEVICE", DEVICE)
    assert AdamW([np.zeros(2, np.float32)], use_gpu=False).backend in ("numpy", "numba")   # False is never overridden


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


PIPELINE_CACHE = textwrap.dedent("""
    import sys, numpy as np
    from hyperopt import AdamW
    from hyperopt.backends import vulkan
    opt = AdamW([np.zeros(10, np.float32)], use_gpu=True, device=sys.argv[1])
    opt.step(gradients=[np.ones(10, np.float32)])
    ctx = vulkan.context(sys.argv[1])
    print(ctx.cache_loaded, ctx.cache_path)
""")


@pytest.mark.no_launch   # checks device selection or layout planning: no kernel runs
@pytest.mark.timeout(120)
def test_pipeline_cache_persists_across_processes(tmp_path):
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "xdg"), PYTHONPATH=ROOT)
    env.pop("HYPEROPT_CACHE_DIR", None)
    run = lambda e: subprocess.run([sys.executable, "-c", PIPELINE_CACHE, DEVICE], env=e, capture_output=True,
                                   text=True, check=True, timeout=100).stdout.split()
    loaded, path = run(env)
    assert loaded == "0" and path.startswith(str(tmp_path / "xdg" / "hyperopt"))
    written = os.path.getsize(path)
    assert written > 0                               # written at exit
    loaded, again = run(env)
    assert again == path and int(loaded) == written  # the next process starts from it
    blocked = tmp_path / "a-file"
    blocked.write_text("not a directory")
    loaded, path = run(dict(env, HYPEROPT_CACHE_DIR=str(blocked / "cache")))   # unwritable: still works
    assert loaded == "0" and not os.path.exists(path)


@pytest.mark.no_launch   # checks device selection or layout planning: no kernel runs
def test_layouts_past_2_to_the_32_elements_are_refused_before_allocating():
    """Work-table entries are 32-bit arena indices: a layout that would wrap them is refused."""
    with pytest.raises(ValueError, match="2\\^32"):
        vulkan.plan_layout([2**31, 2**31], row_size=16384)
    sizes = [2**31, 2**31 - 2**20, 3]          # just under the limit: planned without allocating anything
    offsets, rows, total = vulkan.plan_layout(sizes, row_size=1 << 24)
    assert total < 2**32 and rows.dtype == np.uint32
    for s, (off, n) in enumerate(zip(offsets, sizes)):
        mine = rows[rows[:, 0] == s]
        assert mine[0, 1] == off and mine[-1, 2] == off + n                # rows cover the segment exactly
        assert np.all(mine[1:, 1] == mine[:-1, 2])


@pytest.mark.no_launch   # layout planning: no kernel runs
def test_rows_never_cross_a_block_and_depend_on_the_block_length_only():
    """Per-segment sums are made of CHUNK-element blocks from each segment's start, and a block's
    partial must not depend on where its segment starts (a rank's shard holds a piece of a segment),
    so the rows of a block are planned from its length alone."""
    from hyperopt.backends.vulkan.layout import plan_blocks
    from hyperopt.kernels.core import CHUNK
    sizes = [3 * CHUNK + 4100, 10, 0, CHUNK, 2 * CHUNK + 4100]
    offsets, rows, blocks, segment_blocks, _ = plan_blocks(sizes, row_size=16384)
    shapes = {}
    for s, (n, off) in enumerate(zip(sizes, offsets)):
        first, count = segment_blocks[s]
        assert count == -(-n // CHUNK)
        for j in range(first, first + count):
            r0, nr = blocks[j]
            mine = rows[r0:r0 + nr].astype(np.int64)
            start = off + (j - first) * CHUNK
            assert (mine[:, 0] == s).all() and mine[0, 1] == start and mine[-1, 2] == start + min(CHUNK, n - (j - first) * CHUNK)
            assert np.all(mine[1:, 1] == mine[:-1, 2])
            shape = tuple(map(tuple, mine[:, 1:3] - start))
            assert shapes.setdefault(int(mine[-1, 2] - start), shape) == shape    # same length, same rows
    assert len(shapes) == 3            # CHUNK, 4100 and 10 elements


MAX_BINDING = textwrap.dedent("""
    import sys, numpy as np
    from hyperopt import AdamW
    rng = np.random.default_rng(0)
    p = rng.standard_normal(600_000).astype(np.float32)
    ref = p.copy()
    opt = AdamW([p], lr=1e-2, use_gpu=True, device=sys.argv[1])
    ref_opt = AdamW([ref], lr=1e-2, use_gpu=False)
    for _ in range(2):
        g = rng.standard_normal(600_000).astype(np.float32)
        opt.step(gradients=[g])
        ref_opt.step(gradients=[g])
    print(len(opt._backend._windows), float(np.max(np.abs(p - ref))))
""")


@pytest.mark.no_launch   # checks device selection or layout planning: no kernel runs
@pytest.mark.timeout(120)
def test_the_binding_limit_can_be_forced_from_the_environment():
    """HYPEROPT_VULKAN_MAX_BINDING: windows on any driver, whatever its own limit."""
    env = dict(os.environ, HYPEROPT_VULKAN_MAX_BINDING=str(1 << 20), PYTHONPATH=ROOT)
    out = subprocess.run([sys.executable, "-c", MAX_BINDING, DEVICE], env=env, capture_output=True, text=True,
                         check=True, timeout=100).stdout.split()
    assert int(out[0]) >= 3 and float(out[1]) < 1e-6
