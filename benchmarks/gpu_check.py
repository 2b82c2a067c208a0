"""One prepared check of a Vulkan device: description, tests, bandwidths, benchmarks, CUDA peers.

    python -m benchmarks.gpu_check --out DIR [--device NAME] [--quick] [--time-limit S] [--parts ...]

Parts, each run as its own subprocess under its own time budget (a share of --time-limit, time a
part leaves unused goes to the next), so the whole check ends in time whatever hangs or fails:

  info       device, driver, Vulkan versions, memory heaps and types, the limits the backend uses
  bandwidth  host->device and device->host transfers (the PCIe bound on a discrete GPU), a device
             copy and the copy kernel shaders/copy-bandwidth.glsl (the device-memory bound)
  tests      the Vulkan-backed tests on the device and every golden replay (pytest, with the
             validation layer when it is installed)
  bench      every optimizer, CPU path against the Vulkan path, at 1e4..16e6, 64e6, 256e6 elements
             and the 200-tensor mix (--quick: 1e4, 1e5 and a small 200-tensor mix): end-to-end step
             time, kernel-only and whole-submit GPU time (timestamps), bytes moved between host and
             device and through device memory per step
  peers      the same AdamW through torch CUDA (fused=True) and a CuPy elementwise kernel, resident
             on the GPU and fed from NumPy every step; skipped, with the reason, where not importable

Writes DIR/gpu_check.md, .csv, .png and .log (and DIR/parts/*.jsonl, the raw records).  Exit
status 0 when every part completed, 1 when one failed, timed out or could not finish its cells.
``--device`` takes what ``device=`` takes (default: $HYPEROPT_DEVICE, else "gpu").
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
PARTS = ("info", "bandwidth", "tests", "bench", "peers")
# shares of the time limit: on a GPU the benchmarks take the most; under --quick (a CPU driver) the tests do
PLAN_S = {"info": 20, "bandwidth": 30, "tests": 120, "bench": 210, "peers": 60}
QUICK_PLAN_S = {"info": 15, "bandwidth": 15, "tests": 420, "bench": 100, "peers": 30}
REPORT_RESERVE_S = 15
QUICK_SIZES = [10_000, 100_000, "mix200-small"]
BIG_SIZES = [64_000_000, 256_000_000]


class _Parser(argparse.ArgumentParser):
    def error(self, message):           # one line, no usage dump
        self.exit(2, f"{self.prog}: error: {message}\n")


def _seconds(lo, hi):
    def parse(text):
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"must be between {lo} and {hi} seconds, got {text}")
        return value
    return parse


def parse_args(argv=None):
    ap = _Parser(prog="python -m benchmarks.gpu_check", description=__doc__,
                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, type=Path, help="output folder (created)")
    ap.add_argument("--device", default=None, help='Vulkan device, as device= takes it (default: $HYPEROPT_DEVICE, else "gpu")')
    ap.add_argument("--quick", action="store_true", help="small sizes only: every part in a few minutes (CI)")
    ap.add_argument("--time-limit", type=_seconds(30, 3600), default=460.0,
                    help="seconds for the whole check, parts and report included (default 460)")
    ap.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS), help="parts to run (default: all)")
    ap.add_argument("--part", choices=PARTS, help=argparse.SUPPRESS)          # internal: run one part here
    ap.add_argument("--budget", type=_seconds(1, 3600), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if not str(args.out).strip():
        ap.error("--out must name a folder")
    args.device = args.device or os.environ.get("HYPEROPT_DEVICE") or "gpu"
    return args


# ============================================================================ orchestration
def main(argv=None) -> int:
    args = parse_args(argv)
    if args.part:
        return run_part(args)
    start = time.monotonic()
    deadline = start + args.time_limit
    out = args.out
    (out / "parts").mkdir(parents=True, exist_ok=True)
    for name in PARTS:
        (out / "parts" / f"{name}.jsonl").unlink(missing_ok=True)
    log = open(out / "gpu_check.log", "w")

    def say(line):
        print(line, flush=True)
        log.write(line + "\n")
        log.flush()

    say(f"gpu_check: device={args.device} quick={args.quick} time limit {args.time_limit:.0f} s, parts {' '.join(args.parts)}")
    statuses = {}
    todo = [p for p in PARTS if p in args.parts]
    plan = QUICK_PLAN_S if args.quick else PLAN_S
    for k, name in enumerate(todo):
        planned = sum(plan[p] for p in todo[k:])
        available = deadline - time.monotonic() - REPORT_RESERVE_S
        budget = max(5.0, available * plan[name] / planned)
        statuses[name] = run_part_process(args, name, budget, say)
        s = statuses[name]
        say(f"== {name}: {s['status']} in {s['seconds']:.1f} s (budget {budget:.0f} s){': ' + s['reason'] if s['reason'] else ''}")
    from benchmarks.gpu_report import write_report
    try:
        text = write_report(out, args, statuses, time.monotonic() - start)
        say(text)
    except Exception as exc:          # the parts' records stay in DIR/parts
        statuses["report"] = dict(status="failed", seconds=0.0, reason=f"{type(exc).__name__}: {exc}")
        say(f"== report: failed: {type(exc).__name__}: {exc}")
    bad = [n for n, s in statuses.items() if s["status"] not in ("ok",)]
    say(f"gpu_check: {'FAILED parts: ' + ', '.join(bad) if bad else 'every part completed'} "
        f"({time.monotonic() - start:.0f} s); results in {out}")
    log.close()
    return 1 if bad else 0


def run_part_process(args, name, budget, say) -> dict:
    """Run one part in a child process, killed (with its children) at the budget."""
    cmd = [sys.executable, "-m", "benchmarks.gpu_check", "--part", name, "--out", str(args.out),
           "--device", args.device, "--budget", f"{budget:.1f}"] + (["--quick"] if args.quick else [])
    env = dict(os.environ, PYTHONUNBUFFERED="1", HYPEROPT_REQUIRE_VULKAN="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, errors="replace", start_new_session=True)
    tail: list[str] = []

    def pump():
        for line in proc.stdout:
            line = line.rstrip("\n")
            tail.append(line)
            del tail[:-40]
            say(f"[{name}] {line}")

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    timed_out = False
    try:
        proc.wait(timeout=budget)
    except subprocess.TimeoutExpired:
        timed_out = True
        _kill_group(proc)
    except BaseException:          # e.g. Ctrl-C: the part runs in its own session, so end it too
        _kill_group(proc)
        raise
    reader.join(timeout=5)
    seconds = time.monotonic() - t0
    records = read_records(args.out, name)
    done = [r for r in records if r.get("type") == "done"]
    if timed_out:
        return dict(status="timeout", seconds=seconds, reason=f"killed after its {budget:.0f} s budget")
    if proc.returncode == 0 and done:
        return dict(status="ok", seconds=seconds, reason=done[-1].get("note", ""))
    reason = done[-1].get("reason") if done and done[-1].get("reason") else \
        f"exit status {proc.returncode}: " + " | ".join(l for l in tail[-3:] if l.strip())
    return dict(status="failed", seconds=seconds, reason=reason)


def _kill_group(proc):
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=3)
            return
        except subprocess.TimeoutExpired:
            continue


def read_records(out: Path, name: str) -> list[dict]:
    path = out / "parts" / f"{name}.jsonl"
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:       # a line cut by a kill
            pass
    return records


# ============================================================================ one part, in its own process
class Part:
    """Appends JSON records to DIR/parts/<name>.jsonl, flushed one by one (a kill keeps what was done)."""

    def __init__(self, args):
        self.args, self.name = args, args.part
        self.deadline = time.monotonic() + args.budget
        self._file = open(args.out / "parts" / f"{self.name}.jsonl", "a")

    def emit(self, **record):
        self._file.write(json.dumps(record, default=_jsonable) + "\n")
        self._file.flush()

    def left(self) -> float:
        return self.deadline - time.monotonic()


def _jsonable(x):
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating,)):
        return float(x)
    return str(x)


def run_part(args) -> int:
    part = Part(args)
    try:
        failure = PART_FUNCS[args.part](part)
    except Exception as exc:
        import traceback
        traceback.print_exc()
        part.emit(type="done", status="failed", reason=f"{type(exc).__name__}: {exc}")
        return 1
    vulkan = sys.modules.get("hyperopt.backends.vulkan")      # the layer must stay silent (HYPEROPT_VULKAN_VALIDATION=1)
    if not failure and vulkan is not None and vulkan.validation_messages:
        failure = (f"the validation layer reported {len(vulkan.validation_messages)} message(s), first: "
                   f"{vulkan.validation_messages[0][:300]}")
    if failure:
        part.emit(type="done", status="failed", reason=failure)
        print(f"part {args.part} failed: {failure}", flush=True)
        return 1
    part.emit(type="done", status="ok")
    return 0


def open_device(requested: str):
    """(device string, optimizer holding its backend): a tiny AdamW on the Vulkan device.

    ``vulkan:<x>`` names are also tried as ``<x>``, the selector form before the round-2 device API."""
    from hyperopt import AdamW
    candidates = [requested] + ([requested[len("vulkan:"):]] if requested.startswith("vulkan:") else [])
    errors = []
    for dev in candidates:
        try:
            opt = AdamW([np.ones(64, np.float32)], lr=1e-3, use_gpu=True, device=dev)
        except Exception as exc:
            errors.append(f"device={dev!r}: {type(exc).__name__}: {exc}")
            continue
        if opt.backend.startswith("vulkan:"):
            return dev, opt
        errors.append(f"device={dev!r} gave backend {opt.backend!r}")
    raise RuntimeError("no Vulkan device: " + "; ".join(errors))


# ---------------------------------------------------------------------------- info
def part_info(part: Part):
    import platform
    from benchmarks.gpu_probe import DEVICE_TYPES, describe
    from hyperopt.backends.vulkan import _text
    import vulkan as vk
    device, opt = open_device(part.args.device)
    ctx = opt._backend.ctx
    info = describe(ctx)
    info["requested"], info["device"], info["hyperopt_backend"] = part.args.device, device, opt.backend
    info["all_devices"] = [f"{_text(p.deviceName)} ({DEVICE_TYPES.get(p.deviceType, p.deviceType)})"
                           for p in (vk.vkGetPhysicalDeviceProperties(d) for d in vk.vkEnumeratePhysicalDevices(ctx.instance))]
    info["host"] = dict(python=platform.python_version(), machine=platform.machine(), cores=_cores(),
                        mem_available_bytes=_mem_available(), packages=_versions())
    if shutil.which("nvidia-smi"):
        q = "name,driver_version,memory.total,memory.used,pcie.link.gen.current,pcie.link.width.current,clocks.sm,clocks.mem"
        try:
            r = subprocess.run(["nvidia-smi", f"--query-gpu={q}", "--format=csv,noheader"], capture_output=True,
                               text=True, timeout=min(20, max(1, part.left() - 2)))
            info["nvidia_smi"] = f"{q}: {r.stdout.strip() or r.stderr.strip()}"
        except (subprocess.TimeoutExpired, OSError) as exc:
            info["nvidia_smi"] = f"failed: {exc}"
    part.emit(type="info", **info)
    print(f"device {info['name']} ({info['device_type']}), driver {info['driver']}, Vulkan {info['api_version']} "
          f"(loader {info['instance_version']})")
    for h in info["heaps"]:
        print(f"heap {h['index']}: {h['bytes'] / 2**30:.1f} GiB{' device-local' if h['device_local'] else ''}")
    print("limits:", json.dumps(info["limits"]))
    print("the backend's choices:", json.dumps(info["backend"]))
    if "nvidia_smi" in info:
        print("nvidia-smi:", info["nvidia_smi"])


def _cores():
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def _mem_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version
    out = {}
    for name in ("numpy", "numba", "vulkan", "cffi", "torch", "cupy-cuda13x", "cupy-cuda12x", "cupy", "pytest", "matplotlib"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


# ---------------------------------------------------------------------------- bandwidth
def part_bandwidth(part: Part):
    from benchmarks.gpu_probe import bandwidths
    _, opt = open_device(part.args.device)
    ctx = opt._backend.ctx
    nbytes = (16 << 20) if part.args.quick else (1 << 30)
    heap = max((h.size for h in (ctx.memory_types.memoryHeaps[k] for k in range(ctx.memory_types.memoryHeapCount))), default=0)
    nbytes = max(1 << 20, min(nbytes, heap // 8))
    for row in bandwidths(ctx, nbytes):
        part.emit(type="bandwidth", **row)
        print(f"{row['what']:42s} {row['bytes'] / 2**20:8.0f} MiB  {row['gpu_ms']:9.3f} ms GPU  "
              f"{row['wall_ms']:9.3f} ms wall  {row['gbps']:8.2f} GB/s")


# ---------------------------------------------------------------------------- tests
def part_tests(part: Part):
    device, _ = open_device(part.args.device)
    env = dict(os.environ, HYPEROPT_TEST_DEVICE=device, HYPEROPT_REQUIRE_VULKAN="1")
    from hyperopt.backends.vulkan import _text
    import vulkan as vk
    layers = {_text(p.layerName) for p in vk.vkEnumerateInstanceLayerProperties()}
    validation = "VK_LAYER_KHRONOS_validation" in layers
    if validation:
        env["HYPEROPT_VULKAN_VALIDATION"] = "1"
    import importlib.util
    per_test = ["--timeout=120"] if importlib.util.find_spec("pytest_timeout") else []    # a hung test: one failure
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "benchmarks.gpu_tests",
           "-o", "addopts=", *per_test, str(ROOT / "tests")]
    print(f"HYPEROPT_TEST_DEVICE={device} validation layer {'on' if validation else 'NOT installed: off'}")
    print(" ".join(cmd[2:]), flush=True)
    timeout = max(5.0, part.left() - 5)
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            errors="replace")
    lines: list[str] = []

    def pump():
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            print(line, end="", flush=True)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        proc.wait(timeout=timeout)
        timed_out = False
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        timed_out = True
    reader.join(timeout=5)
    summary = next((l for l in reversed(lines) if re.search(r"\b(passed|failed|error|no tests ran)\b", l) and " in " in l), "")
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected|xfailed|xpassed)", summary)}
    vulkan_passed = next((int(m.group(1)) for l in lines if (m := re.search(r"Vulkan-backed tests passed: (\d+)", l))), None)
    failures = [l for l in lines if l.startswith(("FAILED", "ERROR"))][:30]
    part.emit(type="tests", device=device, validation=validation, returncode=proc.returncode, timed_out=timed_out,
              summary=summary, counts=counts, vulkan_passed=vulkan_passed, failures=failures,
              tail=lines[-15:])
    if timed_out:
        return f"pytest did not finish in {timeout:.0f} s"
    if proc.returncode != 0:
        return f"pytest exit status {proc.returncode}: {summary}"
    if not vulkan_passed:
        return "no Vulkan-backed test passed"
    return None


# ---------------------------------------------------------------------------- bench
_BINDING = re.compile(r"layout\s*\(\s*set\s*=\s*0\s*,\s*binding\s*=\s*(\d+)[^)]*\)\s*(readonly\s+|writeonly\s+)?buffer")
_access_cache: dict[str, dict[int, str]] = {}


def shader_access(shader: str) -> dict[int, str]:
    """binding -> "r", "w" or "rw" from the GLSL qualifiers (no qualifier: read and written)."""
    if shader not in _access_cache:
        text = re.sub(r"//[^\n]*", "", (ROOT / "shaders" / f"{shader}.glsl").read_text())
        _access_cache[shader] = {int(b): {"readonly": "r", "writeonly": "w"}.get((q or "").strip(), "rw")
                                 for b, q in _BINDING.findall(text)}
    return _access_cache[shader]


def program_device_bytes(program, n_elements: int) -> int:
    """Bytes one launch moves through device memory, modelled: every element of each bound arena
    read once if the shader reads it and written once if it writes it (a name bound twice counts once)."""
    from hyperopt.kernels.core import CONTROL
    total = 0
    for kernel, names in program.dispatches:
        if kernel.kind == CONTROL:
            continue
        access = shader_access(kernel.shader)
        per_name: dict[str, set] = {}
        for k, name in enumerate(names):
            per_name.setdefault(name, set()).update(access.get(4 + k, "rw"))
        total += sum(len(a) for a in per_name.values()) * 4 * n_elements
    return total


class LaunchMeter:
    """Wraps VulkanProgram.launch in this process to add up, per launch: GPU kernel and submit
    seconds (when timestamps are on) and the bytes copied host<->device and through device memory."""

    def __init__(self):
        from hyperopt.backends.vulkan import VulkanProgram
        self.reset()
        original = VulkanProgram.launch
        meter = self

        def launch(program, upload, upload_params, download, **kwargs):
            original(program, upload, upload_params, download, **kwargs)
            if meter.active:      # off while end-to-end time is measured: the count costs Python time
                meter.record(program, upload, upload_params, download)

        VulkanProgram.launch = launch

    def reset(self):
        self.active = False
        self.launches, self.kernel_s, self.submit_s = 0, 0.0, 0.0
        self.upload_bytes = self.download_bytes = self.device_bytes = 0
        self.timed = True

    def record(self, program, upload, upload_params, download):
        self.launches += 1
        if program.ctx.timestamps and program.kernel_seconds is not None:
            self.kernel_s += program.kernel_seconds
            self.submit_s += program.submit_seconds
        else:
            self.timed = False
        staging = program._staging
        if staging:
            self.upload_bytes += (staging["grad"].nbytes if upload else 0) + (staging["param"].nbytes if upload_params else 0)
            self.download_bytes += staging["param"].nbytes if download else 0
        self.device_bytes += program_device_bytes(program, program._arenas["param"].nbytes // 4)


def bench_sizes(quick: bool) -> list:
    from benchmarks.run import MIX, SIZES
    return list(QUICK_SIZES) if quick else list(SIZES) + BIG_SIZES + [MIX]


def shapes_of(size):
    from benchmarks.run import MIX, cnn_mix
    if size == MIX:
        return cnn_mix()
    if size == "mix200-small":     # the mix's 200 tensors, each cut to a few hundred elements
        return [tuple(min(d, 8) for d in s) for s in cnn_mix()]
    return [(int(size),)]


def size_label(size) -> str:
    """10_000 -> "1e4", 256_000_000 -> "256e6"; the mixes by name."""
    from benchmarks.run import MIX
    if size == MIX:
        return "mix200"
    if isinstance(size, str):
        return size
    for e in range(12, 0, -1):
        if size % 10 ** e == 0 and size // 10 ** e < 1000:
            return f"{size // 10 ** e}e{e}"
    return str(size)


_data_cache: dict = {}


def cell_data(size):
    """(params, grads) for a size, made once (the optimizers get copies of the parameters)."""
    if size not in _data_cache:
        rng = np.random.default_rng(0)
        shapes = shapes_of(size)
        params = [(rng.random(s, dtype=np.float32) - 0.5) * np.float32(0.2) for s in shapes]
        grads = [(rng.random(s, dtype=np.float32) - 0.5) * np.float32(0.02) for s in shapes]
        _data_cache[size] = (params, grads)
    return _data_cache[size]


def part_bench(part: Part):
    from benchmarks.run import cases
    device, probe = open_device(part.args.device)
    ctx = probe._backend.ctx
    meter = LaunchMeter()
    quick = part.args.quick
    all_cases = cases()
    sizes = bench_sizes(quick)
    small = [s for s in sizes if s not in BIG_SIZES]
    # order: every optimizer at the standard sizes, then the large sizes on the GPU, then on the CPU,
    # so that a budget running out costs the least informative cells
    cells = [(o, s, p) for o in all_cases for s in small for p in ("cpu", "gpu")]
    cells += [(o, s, "gpu") for s in BIG_SIZES if s in sizes for o in all_cases]
    cells += [(o, s, "cpu") for s in BIG_SIZES if s in sizes for o in all_cases]
    cpu_big_only = "AdamW"      # the CPU path above 16e6 for one optimizer: the others' would not fit the 8 minutes
    heap = max((int(ctx.memory_types.memoryHeaps[k].size) for k in range(ctx.memory_types.memoryHeapCount)
                if ctx.memory_types.memoryHeaps[k].flags & 1), default=0)     # 1: VK_MEMORY_HEAP_DEVICE_LOCAL_BIT
    unified = not ctx.staging
    n_buffers: dict[str, int] = {}
    cell_budget = 0.15 if quick else 0.3
    failures, not_run = [], 0
    print(f"{len(cells)} cells on {probe.backend}; device-local heap {heap / 2**30:.1f} GiB")
    for k, (name, size, path) in enumerate(cells, 1):
        elements = sum(int(np.prod(s)) for s in shapes_of(size))
        base = dict(type="cell", optimizer=name, size=size_label(size), elements=elements, path=path)
        if path == "cpu" and size in BIG_SIZES and name != cpu_big_only:
            part.emit(**base, status="skipped", reason=f"the CPU path above 16e6 elements is timed for {cpu_big_only} only")
            continue
        if part.left() < 10:
            part.emit(**base, status="not run", reason="the part's time budget ran out")
            not_run += 1
            continue
        reason = memory_short(elements, n_buffers.get(name, 8), path, heap, unified)
        if reason:
            part.emit(**base, status="skipped", reason=reason)
            print(f"[{k}/{len(cells)}] {name} {size_label(size)} {path}: skipped: {reason}", flush=True)
            continue
        try:
            row = bench_cell(all_cases[name], size, path, device, meter, cell_budget)
        except Exception as exc:
            failures.append(f"{name} {size_label(size)} {path}: {type(exc).__name__}: {exc}")
            part.emit(**base, status="failed", reason=f"{type(exc).__name__}: {exc}")
            print(f"[{k}/{len(cells)}] {failures[-1]}", flush=True)
            continue
        n_buffers.setdefault(name, row.pop("n_buffers"))
        part.emit(**base, status="ok", **row)
        print(f"[{k}/{len(cells)}] {name:24s} {size_label(size):>12s} {path} {row['backend'][:28]:28s} "
              f"{row['e2e_ms']:10.3f} ms" + (f"  kernel {row['kernel_ms']:.3f} ms" if row.get("kernel_ms") is not None else ""),
              flush=True)
    if failures:
        return f"{len(failures)} failure(s), first: {failures[0]}"
    if not_run:
        return f"incomplete: {not_run} cell(s) not run in the time budget"
    return None


def memory_short(elements, n_buffers, path, heap, unified) -> str | None:
    """Why a cell does not fit (params, grads and state on the device; host copies and staging), or None."""
    bytes_ = 4 * elements
    host_need = bytes_ * (2 + 2)                     # the caller's params and grads, + the cell's copies
    device_need = 0
    if path == "cpu":
        host_need += bytes_ * n_buffers
    else:
        device_need = bytes_ * (2 + n_buffers)
        host_need += 0 if unified else 2 * bytes_   # staging buffers
        if unified:
            host_need += device_need
    available = _mem_available()
    if available is not None and host_need > 0.8 * available:
        return f"needs ~{host_need / 2**30:.1f} GiB of host memory, {available / 2**30:.1f} GiB available"
    if path == "gpu" and not unified and device_need > 0.85 * heap:
        return f"needs ~{device_need / 2**30:.1f} GiB of device memory, heap is {heap / 2**30:.1f} GiB"
    return None


def bench_cell(factory, size, path, device, meter, budget_s) -> dict:
    params0, grads = cell_data(size)
    params = [p.copy() for p in params0]
    gpu = path == "gpu"
    opt = factory(params, gpu, device if gpu else None)
    try:
        backend = opt._backend
        if gpu and not opt.backend.startswith("vulkan:"):
            raise RuntimeError(f"asked for the Vulkan path, got backend {opt.backend!r}")
        big = sum(p.size for p in params) >= 32_000_000
        step = lambda: opt.step(gradients=grads)
        for _ in range(1 if big else 2):
            step()
        times, t_start = [], time.perf_counter()
        while len(times) < 3 or (len(times) < 200 and time.perf_counter() - t_start < budget_s):
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
        row = dict(backend=opt.backend, e2e_ms=statistics.median(times) * 1e3, steps=len(times),
                   n_buffers=len(getattr(backend, "buffers", ())))
        if not all(np.isfinite(p).all() for p in params[:4]):
            raise RuntimeError("non-finite parameters after the timed steps")
        if gpu:
            ctx = backend.ctx
            ctx.timestamps = True
            try:
                kernel, submit, reps = [], [], 3
                meter.reset()
                meter.active = True
                for _ in range(reps):
                    before = (meter.kernel_s, meter.submit_s)
                    step()
                    kernel.append(meter.kernel_s - before[0])
                    submit.append(meter.submit_s - before[1])
            finally:
                ctx.timestamps = meter.active = False
            row.update(kernel_ms=statistics.median(kernel) * 1e3 if meter.timed else None,
                       submit_ms=statistics.median(submit) * 1e3 if meter.timed else None,
                       launches=meter.launches / reps, upload_bytes=meter.upload_bytes / reps,
                       download_bytes=meter.download_bytes / reps, device_bytes=meter.device_bytes / reps,
                       staging=bool(ctx.staging))
        return row
    finally:
        if hasattr(opt, "close"):
            opt.close()


# ---------------------------------------------------------------------------- peers
def part_peers(part: Part):
    from benchmarks.gpu_peers import PEERS, PeerUnavailable
    sizes = bench_sizes(part.args.quick)
    failures = []
    for peer, fn in PEERS.items():
        try:
            for mode in ("resident", "numpy"):
                for size in sizes:
                    failure = peer_cell(part, peer, fn, mode, size)
                    if failure:
                        failures.append(failure)
        except PeerUnavailable as exc:      # nothing of this peer can run here
            part.emit(type="peer", optimizer="AdamW", peer=peer, status="skipped", reason=str(exc))
            print(f"{peer}: skipped: {exc}", flush=True)
    if failures:
        return f"{len(failures)} peer cell(s) failed or not run, first: {failures[0]}"
    return None


def peer_cell(part, peer, fn, mode, size) -> str | None:
    elements = sum(int(np.prod(s)) for s in shapes_of(size))
    base = dict(type="peer", optimizer="AdamW", peer=peer, mode=mode, size=size_label(size), elements=elements)
    if part.left() < 5:
        part.emit(**base, status="not run", reason="the part's time budget ran out")
        return f"{peer} {mode} {size_label(size)}: not run in the time budget"
    try:
        row = fn(shapes_of(size), mode, 0.1 if part.args.quick else 0.3)
    except Exception as exc:
        if type(exc).__name__ == "PeerUnavailable":
            raise
        if "out of memory" in str(exc).lower():
            part.emit(**base, status="skipped", reason=f"out of device memory ({type(exc).__name__})")
            return None
        part.emit(**base, status="failed", reason=f"{type(exc).__name__}: {exc}")
        return f"{peer} {mode} {size_label(size)}: {type(exc).__name__}: {exc}"
    moved = 4 * elements if mode == "numpy" else 0      # gradients in, parameters out
    part.emit(**base, status="ok", upload_bytes=moved, download_bytes=moved, device_bytes=28 * elements, **row)
    print(f"{peer:18s} {mode:9s} {size_label(size):>12s} {row['e2e_ms']:10.3f} ms  kernel {row['kernel_ms']:.3f} ms", flush=True)
    return None


PART_FUNCS = {"info": part_info, "bandwidth": part_bandwidth, "tests": part_tests, "bench": part_bench, "peers": part_peers}


if __name__ == "__main__":
    sys.exit(main())
