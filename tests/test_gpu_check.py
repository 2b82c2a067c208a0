"""benchmarks/gpu_check.py, its pieces, the GPU timestamps it reads and benchmarks/h200/run.sh.

The whole --quick check (with its pytest part) runs in CI as .ci/gpu-check-quick; here the parts run
on the test device without the nested pytest, plus the failure paths.
"""
import csv
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from hyperopt import AdamW

ROOT = Path(__file__).resolve().parent.parent


def gpu_check(*args, timeout=300, env=None, cwd=ROOT):
    env = dict(os.environ if env is None else env, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.timeout(60)
def test_help_writes_nothing(tmp_path):
    r = gpu_check("--help", "--out", tmp_path / "out", cwd=tmp_path)
    assert r.returncode == 0 and "--quick" in r.stdout
    assert list(tmp_path.iterdir()) == []


@pytest.mark.timeout(60)
@pytest.mark.parametrize("args, named", [(["--time-limit", "5"], "--time-limit"), (["--time-limit", "soon"], "--time-limit"),
                                         (["--parts", "nope"], "--parts"), ([], "--out")])
def test_a_bad_value_is_a_one_line_error(tmp_path, args, named):
    out = ["--out", tmp_path / "out"] if named != "--out" else []
    r = gpu_check(*out, *args, cwd=tmp_path)
    assert r.returncode == 2
    assert r.stdout == "" and len(r.stderr.strip().splitlines()) == 1 and named in r.stderr
    assert list(tmp_path.iterdir()) == []


def test_timestamps_are_off_by_default_and_read_kernel_and_submit_time(vulkan_device, rng):
    params = [rng.standard_normal(300_000).astype(np.float32)]
    grads = [rng.standard_normal(300_000).astype(np.float32)]
    opt = AdamW(params, lr=1e-3, use_gpu=True, device=vulkan_device)
    backend = opt._backend
    opt.step(gradients=grads)
    assert backend.last_kernel_seconds is None and backend.last_submit_seconds is None
    backend.ctx.timestamps = True
    try:
        for _ in range(2):
            total = backend.ctx.kernel_seconds_total
            opt.step(gradients=grads)
        kernel, submit = backend.last_kernel_seconds, backend.last_submit_seconds
    finally:
        backend.ctx.timestamps = False
    assert 0 < kernel <= submit < 10
    assert backend.ctx.kernel_seconds_total - total == pytest.approx(kernel)    # one launch per AdamW step
    before = params[0].copy()
    opt.step(gradients=grads)              # timestamps off again: the untimed command buffer still steps
    assert not np.array_equal(before, params[0])
    opt.close()


@pytest.mark.no_launch   # reads shader declarations: no kernel runs
def test_device_bytes_model_counts_adamw_as_28_bytes_per_element(vulkan_device):
    from benchmarks.gpu_check import program_device_bytes
    opt = AdamW([np.ones(1000, np.float32)], lr=1e-3, use_gpu=True, device=vulkan_device)
    # param rw, grad r, exp_avg rw, exp_avg_sq rw (bound twice without amsgrad: counted once)
    assert program_device_bytes(opt._program, 1000) == 28 * 1000
    opt.close()


def test_fractions_of_the_bounds_use_the_measured_bandwidths():
    from benchmarks.gpu_report import bounds, fractions
    bw = bounds([dict(what="host-to-device (vkCmdCopyBuffer)", gbps=10.0), dict(what="device-to-host (vkCmdCopyBuffer)", gbps=20.0),
                 dict(what="copy kernel (copy-bandwidth.glsl)", gbps=100.0),
                 dict(what="device-to-device (vkCmdCopyBuffer)", gbps=50.0)])
    pcie, device = fractions(dict(upload_bytes=1e9, download_bytes=1e9, e2e_ms=300.0, device_bytes=4e9, kernel_ms=80.0), bw)
    assert pcie == pytest.approx((0.1 + 0.05) / 0.3)
    assert device == pytest.approx(0.04 / 0.08)
    assert fractions(dict(e2e_ms=1.0, kernel_ms=None, device_bytes=1e6), bw) == (None, None)


@pytest.mark.no_launch   # gpu_check runs its parts in child processes
@pytest.mark.timeout(600)
def test_quick_check_reports_every_part_in_md_csv_and_png(tmp_path, vulkan_device):
    out = tmp_path / "out"
    env = dict(os.environ, HYPEROPT_VULKAN_STAGING="1")
    r = gpu_check("--quick", "--out", out, "--device", vulkan_device, "--parts", "info", "bandwidth", "bench", "peers",
                  timeout=560, env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    md = (out / "gpu_check.md").read_text()
    for part in ("info", "bandwidth", "bench", "peers"):
        assert f"| {part} | ok |" in md
    assert "copy kernel (copy-bandwidth.glsl)" in md and "## AdamW peers on CUDA" in md
    rows = list(csv.DictReader(open(out / "gpu_check.csv")))
    from benchmarks.gpu_check import QUICK_SIZES, size_label
    from benchmarks.run import cases
    cells = {(r["optimizer"], r["size"], r["path"]) for r in rows if r["kind"] == "bench" and r["status"] == "ok"}
    assert cells == {(o, size_label(s), p) for o in cases() for s in QUICK_SIZES for p in ("cpu", "gpu")}
    gpu = [r for r in rows if r["kind"] == "bench" and r["path"] == "gpu"]
    assert all(float(r["kernel_ms"]) > 0 and float(r["upload_bytes"]) > 0 and float(r["device_bytes"]) > 0 for r in gpu)
    peers = [r for r in rows if r["kind"] == "peer"]
    assert {r["path"].split()[0] for r in peers} == {"torch-cuda", "cupy"}
    assert all(r["status"] == "ok" or r["reason"] for r in peers)     # a skip says why
    assert (out / "gpu_check.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.no_launch   # gpu_check runs its parts in child processes
@pytest.mark.timeout(120)
def test_a_part_out_of_time_is_reported_and_fails_the_check_in_time(tmp_path, vulkan_device):
    out = tmp_path / "out"
    t0 = time.monotonic()
    r = gpu_check("--quick", "--out", out, "--device", vulkan_device, "--parts", "tests", "--time-limit", "30", timeout=100)
    assert time.monotonic() - t0 < 60
    assert r.returncode == 1
    md = (out / "gpu_check.md").read_text()
    assert "| tests | failed |" in md or "| tests | timeout |" in md
    assert "FAILED parts: tests" in r.stdout


@pytest.mark.timeout(60)
def test_a_device_that_does_not_exist_fails_every_part_clearly(tmp_path):
    out = tmp_path / "out"
    r = gpu_check("--out", out, "--device", "vulkan:no-such-device", "--parts", "info", "bandwidth", timeout=50)
    assert r.returncode == 1
    md = (out / "gpu_check.md").read_text()
    assert "| info | failed |" in md and "| bandwidth | failed |" in md and "no Vulkan device" in md


CARRY = ROOT / "benchmarks" / "h200" / "carry"      # made by benchmarks/h200/prepare.sh (needs network)


@pytest.mark.no_launch   # the script runs gpu_check in child processes
@pytest.mark.timeout(200)
@pytest.mark.parametrize("carried", [False, True])
def test_h200_run_script_writes_at_most_eight_files_to_out(tmp_path, vulkan_device, carried):
    if carried and not list(CARRY.glob("debs/vulkan-validationlayers_*.deb")):
        pytest.skip("benchmarks/h200/prepare.sh has not been run here")
    out = tmp_path / "OUT"
    env = dict(os.environ, OUT=str(out), PYTHON=sys.executable, DEVICE=vulkan_device, GPU_CHECK_TIME_LIMIT="60",
               GPU_CHECK_ARGS="--quick --parts info bandwidth", CARRY=str(CARRY if carried else tmp_path / "no-carry"))
    r = subprocess.run(["bash", str(ROOT / "benchmarks" / "h200" / "run.sh")], env=env, capture_output=True, text=True,
                       timeout=180)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    files = sorted(p.name for p in out.iterdir())
    assert files == ["gpu_check.csv", "gpu_check.log", "gpu_check.md", "gpu_check.png", "parts.tar.gz", "run.log"]
    log = (out / "run.log").read_text()
    assert "Vulkan loader: already installed" in log and "run.sh: gpu_check exit status 0" in log
    if carried:     # the carried layer, unpacked under /tmp with an absolute library path, is the one listed
        assert "validation layer: /tmp/" in log and "VK_LAYER_KHRONOS_validation" in (out / "gpu_check.md").read_text()
