"""Step-time benchmark of every optimizer: NumPy twins, fused CPU kernels (numba), Vulkan.

    python -m benchmarks.run                    # all optimizers, standard sizes, results/ (a few minutes)
    python -m benchmarks.run --only AdamW --sizes 1e4 1e6 --device cpu

Each cell is the median time of ``opt.step(gradients=...)`` over repeated steps after warm-up,
Python included, on float32 parameters: one tensor of each size (1e4 ... 16e6 elements) and a mix of
200 tensors (~5M elements, shaped like a small CNN).  CPU rows: "numpy" (``HYPEROPT_CPU_KERNELS=numpy``)
and "numba" (the fused kernels, when numba is installed).  The Vulkan device is a hardware GPU when
there is one, else the CPU driver (lavapipe) so the shaders still run.  AdamW also gets torch CPU rows
(``foreach`` and ``fused``) when torch is installed.

Beside each time: the bandwidth the step achieves, counting the bytes it must move (parameter and
every state buffer read and written once, the gradient read once), against a STREAM-like triad
(``a = b + s*c``, float32, numba threads) measured in the same run.  The fused kernels' first-step
cost (compilation, cold and from the disk cache) is measured in fresh processes.
Writes results/benchmark.md, .csv and .png.
"""
from __future__ import annotations

import argparse
import csv
import importlib
import importlib.util
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import hyperopt
from hyperopt import AdamW

SIZES = [10_000, 100_000, 1_000_000, 4_000_000, 16_000_000]
MIX = "mix200"


def cnn_mix(n=200, seed=0):
    """200 tensor shapes, ~5M elements: conv kernels with their bias and norm vectors, a few dense."""
    rng = np.random.default_rng(seed)
    shapes = []
    while len(shapes) < n - 4:
        c_in, c_out = (int(c) for c in rng.choice([16, 32, 64, 128], 2))
        shapes += [(c_out, c_in, 3, 3), (c_out,), (c_out,), (c_out,)]
    shapes = shapes[: n - 4] + [(2048, 512), (512,), (512, 1000), (1000,)]
    return shapes


def cases() -> dict:
    """Optimizer name -> factory(params, use_gpu, device), from benchmarks/cases_*.py."""
    out = {"AdamW": lambda params, use_gpu, device: AdamW(params, lr=1e-3, use_gpu=use_gpu, device=device)}
    for path in sorted(Path(__file__).parent.glob("cases_*.py")):
        out.update(importlib.import_module(f"benchmarks.{path.stem}").CASES)
    return out


def vulkan_device(requested: str | None):
    """(selector, device name, driver) of the Vulkan device to benchmark, or None."""
    try:
        from hyperopt.backends import vulkan
    except OSError:
        return None
    for selector in ([requested] if requested else ["gpu", "cpu"]):
        try:
            ctx = vulkan.context(selector)
        except vulkan.VulkanUnavailable:
            continue
        api = ctx.props.apiVersion
        return selector, ctx.name, f"Vulkan {api >> 22}.{(api >> 12) & 0x3FF}, {ctx.driver}"
    return None


def shapes_for(size):
    return cnn_mix() if size == MIX else [(int(size),)]


def time_steps(step, budget_s, min_reps=3, max_reps=200, warmup=2):
    for _ in range(warmup):
        step()
    times = []
    start = time.perf_counter()
    while len(times) < min_reps or (len(times) < max_reps and time.perf_counter() - start < budget_s):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_optimizer(factory, shapes, use_gpu, device, budget_s, cpu_kernels="numpy"):
    """(median step seconds, backend name, bytes per element the step must move)."""
    rng = np.random.default_rng(0)
    params = [(0.1 * rng.standard_normal(s)).astype(np.float32) for s in shapes]
    grads = [(0.01 * rng.standard_normal(s)).astype(np.float32) for s in shapes]
    saved = os.environ.get("HYPEROPT_CPU_KERNELS")
    os.environ["HYPEROPT_CPU_KERNELS"] = cpu_kernels
    try:
        opt = factory(params, use_gpu, device)
    finally:
        os.environ.pop("HYPEROPT_CPU_KERNELS") if saved is None else os.environ.__setitem__("HYPEROPT_CPU_KERNELS", saved)
    try:
        seconds = time_steps(lambda: opt.step(gradients=grads), budget_s)
        kernel = kernel_seconds(opt, lambda: opt.step(gradients=grads))
        return seconds, opt.backend, 4 * (3 + 2 * len(opt._backend.buffers)), kernel
    finally:
        if hasattr(opt, "close"):
            opt.close()


def kernel_seconds(opt, step, reps=3):
    """Median GPU time of a step's dispatches alone (Vulkan timestamps, every launch of the step), or None."""
    ctx = getattr(opt._backend, "ctx", None)
    if ctx is None or not getattr(ctx, "timestamp_bits", 0):
        return None
    ctx.timestamps, times = True, []
    try:
        for _ in range(reps):
            before = ctx.kernel_seconds_total
            step()
            times.append(ctx.kernel_seconds_total - before)
    finally:
        ctx.timestamps = False
    return statistics.median(times)


def have_numba() -> bool:
    return importlib.util.find_spec("numba") is not None


def triad_gbps(n=1 << 24, reps=10) -> float | None:
    """STREAM-like triad ``a = b + s*c`` on float32 (12 bytes per element), numba threads; GB/s."""
    if not have_numba():
        return None
    from hyperopt.backends.numba_backend import load_numba
    numba = load_numba()

    @numba.njit(parallel=True)
    def triad(a, b, c, s):
        for i in numba.prange(a.size):
            a[i] = b[i] + s * c[i]
    a, b, c = (np.full(n, v, np.float32) for v in (0.0, 1.0, 2.0))
    triad(a, b, c, np.float32(3.0))
    best = min(_timed(lambda: triad(a, b, c, np.float32(3.0))) for _ in range(reps))
    return 12 * n / best / 1e9


def _timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


_FIRST_STEP = """
import time, numpy as np
t0 = time.perf_counter()
from hyperopt import AdamW
p, q = np.zeros(1 << 20, np.float32), np.zeros(100, np.float32)
opt = AdamW([p, q], use_gpu=False)
t1 = time.perf_counter()
opt.step(gradients=[p + 1, q + 1])
t2 = time.perf_counter()
assert opt.backend == "numba", opt.backend
print(t1 - t0, t2 - t1)
"""


def first_step_cost():
    """(import+construct s, first step s) of AdamW on the fused kernels: with an empty cache, then from it."""
    if not have_numba():
        return None
    out = []
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache, HYPEROPT_CPU_KERNELS="numba",
                   PYTHONPATH=os.pathsep.join([str(Path(__file__).resolve().parent.parent), os.environ.get("PYTHONPATH", "")]))
        for _ in ("cold", "cached"):
            r = subprocess.run([sys.executable, "-c", _FIRST_STEP], env=env, capture_output=True, text=True, timeout=900)
            if r.returncode:
                raise RuntimeError(f"first-step measurement failed:\n{r.stderr}")
            out.append(tuple(float(x) for x in r.stdout.split()))
    return out


def bench_torch(shapes, mode, budget_s):
    import torch
    torch.set_num_threads(max(1, torch.get_num_threads()))
    rng = np.random.default_rng(0)
    params = [torch.tensor((0.1 * rng.standard_normal(s)).astype(np.float32), requires_grad=True) for s in shapes]
    for p in params:
        p.grad = torch.tensor((0.01 * rng.standard_normal(p.shape)).astype(np.float32))
    opt = torch.optim.AdamW(params, lr=1e-3, **{mode: True})
    return time_steps(opt.step, budget_s)


def label(size):
    """10_000 -> "1e4", 16_000_000 -> "16e6", the mix -> its description."""
    if size == MIX:
        return "200 tensors (5.4M)"
    for e in range(15, 0, -1):
        if size % 10 ** e == 0 and size // 10 ** e < 100:
            return f"{size // 10 ** e}e{e}"
    return str(size)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="*", help="optimizer names to run (default: all)")
    ap.add_argument("--sizes", nargs="*", help="element counts, e.g. 1e4 1e6, and/or mix200")
    ap.add_argument("--device", default=None, help="Vulkan device: gpu, cpu, any, index or name (default: gpu, else cpu)")
    ap.add_argument("--budget", type=float, default=0.6, help="seconds of timed steps per cell (default 0.6)")
    ap.add_argument("--out", default="results", help="output folder (default results/)")
    ap.add_argument("--no-torch", action="store_true")
    args = ap.parse_args(argv)

    sizes = [MIX if s == MIX else int(float(s)) for s in args.sizes] if args.sizes else SIZES + [MIX]
    all_cases = cases()
    names = args.only or list(all_cases)
    unknown = set(names) - set(all_cases)
    if unknown:
        ap.error(f"unknown optimizer(s) {sorted(unknown)}; known: {sorted(all_cases)}")
    vk = vulkan_device(args.device)
    torch_version = None
    if not args.no_torch:
        try:
            import torch
            torch_version = torch.__version__
        except ImportError:
            pass

    first = first_step_cost()
    if first:
        print(f"fused kernels, AdamW first step (1M + 100 elements): {first[0][1]:.2f} s compiling into an empty "
              f"cache, {first[1][1]:.2f} s from the disk cache (import + construction {first[1][0]:.2f} s)", flush=True)
    triad = triad_gbps()
    if triad:
        print(f"STREAM-like triad (float32, numba threads): {triad:.1f} GB/s", flush=True)

    backends = [("numpy", False, None, "numpy")] + ([("numba", False, None, "numba")] if have_numba() else []) \
        + ([("vulkan", True, vk[0], "numpy")] if vk else [])
    cells = [(n, b, s) for n in names for s in sizes for b in backends]
    torch_cells = [(m, s) for m in ("foreach", "fused") for s in sizes] if torch_version and "AdamW" in names else []
    total = len(cells) + len(torch_cells)
    rows = []

    def report(k, name, backend, size, seconds, nbytes):
        n = sum(int(np.prod(s)) for s in shapes_for(size))
        gbps = nbytes * n / seconds / 1e9
        rows.append(dict(optimizer=name, backend=backend, size=label(size), ms=seconds * 1e3, bytes_per_element=nbytes,
                         gbps=gbps))
        of_triad = f" {gbps / triad:6.0%} of triad" if triad else ""
        print(f"[{k:3d}/{total}] {name:24s} {backend[:40]:40s} {label(size):>20s} {seconds * 1e3:10.3f} ms "
              f"{gbps:7.1f} GB/s ({nbytes} B/elt){of_triad}", flush=True)

    for k, (name, (bname, use_gpu, device, kernels), size) in enumerate(cells, 1):
        seconds, actual, nbytes, kernel = bench_optimizer(all_cases[name], shapes_for(size), use_gpu, device,
                                                          args.budget, kernels)
        report(k, name, actual, size, seconds, nbytes)
        if kernel is not None:      # the same steps' GPU time, dispatches alone (timestamps)
            rows.append(dict(optimizer=name, backend="kernel-only (vulkan)", size=label(size), ms=kernel * 1e3,
                             bytes_per_element=nbytes, gbps=nbytes * sum(int(np.prod(s)) for s in shapes_for(size)) / kernel / 1e9))
            print(f"{'':6s}{name:24s} {'kernel-only (vulkan)':40s} {label(size):>20s} {kernel * 1e3:10.3f} ms", flush=True)
    for k, (mode, size) in enumerate(torch_cells, len(cells) + 1):
        seconds = bench_torch(shapes_for(size), mode, args.budget)
        report(k, "AdamW", f"torch-cpu {mode}", size, seconds, 28)

    from importlib.metadata import version
    stamp = [f"hyperopt {hyperopt.__version__}", f"numpy {np.__version__}", f"vulkan (binding) {version('vulkan')}",
             f"Python {platform.python_version()}",
             f"CPU: {platform.processor() or platform.machine()}, {_cores()} cores",
             f"Vulkan device: {vk[1]} ({vk[2]})" if vk else "Vulkan device: none"]
    if torch_version:
        stamp.append(f"torch {torch_version}")
    if have_numba():
        stamp.append(f"numba {version('numba')}")
    if triad:
        stamp.append(f"STREAM-like triad: {triad:.1f} GB/s")
    if first:
        stamp.append(f"fused kernels' first step (AdamW): {first[0][1]:.2f} s compiling, {first[1][1]:.2f} s from cache")
    write_results(rows, sizes, stamp, Path(args.out), triad)


def _cores():
    import os
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def write_results(rows, sizes, stamp, out: Path, triad=None):
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "benchmark.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["optimizer", "backend", "size", "ms", "bytes_per_element", "gbps"])
        w.writeheader()
        w.writerows(rows)
    cols = [label(s) for s in sizes]
    lines = ["Step time in milliseconds (median, Python included).", "", "- " + "\n- ".join(stamp), "",
             "| optimizer | backend | " + " | ".join(cols) + " |", "|---|---|" + "---:|" * len(cols)]
    keyed = {}
    for r in rows:
        keyed.setdefault((r["optimizer"], r["backend"]), {})[r["size"]] = r["ms"]
    for (opt, backend), vals in keyed.items():
        lines.append(f"| {opt} | {backend} | " + " | ".join(f"{vals[c]:.3f}" if c in vals else "" for c in cols) + " |")
    lines += ["", "Achieved bandwidth in GB/s (bytes the step must move / step time)"
              + (f"; STREAM-like triad in the same run: {triad:.1f} GB/s." if triad else "."), "",
              "| optimizer | backend | " + " | ".join(cols) + " |", "|---|---|" + "---:|" * len(cols)]
    bw = {}
    for r in rows:
        bw.setdefault((r["optimizer"], r["backend"]), {})[r["size"]] = r["gbps"]
    for (opt, backend), vals in bw.items():
        lines.append(f"| {opt} | {backend} | " + " | ".join(f"{vals[c]:.1f}" if c in vals else "" for c in cols) + " |")
    text = "\n".join(lines) + "\n"
    (out / "benchmark.md").write_text(text)
    print("\n" + text)
    try:
        plot(keyed, cols, stamp, out / "benchmark.png")
    except ImportError:
        print("matplotlib not installed: no plot written", file=sys.stderr)


def plot(keyed, cols, stamp, path):
    """One panel per optimizer (NumPy and Vulkan side by side, torch for AdamW), then the speed-ups."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    optimizers = list(dict.fromkeys(o for o, _ in keyed))
    n = len(optimizers) + 1
    ncol = min(4, n)
    nrow = -(-n // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 3.4 * nrow), squeeze=False)
    axes = axes.ravel()
    x = np.arange(len(cols))
    colours = {"numpy": "tab:blue", "numba": "tab:green", "vulkan": "tab:orange", "torch-cpu foreach": "tab:grey",
               "torch-cpu fused": "k"}
    speedup = axes[len(optimizers)]
    for ax, opt in zip(axes, optimizers):
        for (o, backend), vals in keyed.items():
            if o == opt:
                kind = backend.split(":")[0]
                ax.plot(x, [vals.get(c, np.nan) for c in cols], marker="o", color=colours.get(kind),
                        ls="-" if kind in ("numpy", "numba", "vulkan") else ":", label=kind)
        ax.set_title(opt, fontsize=10)
        ax.set_yscale("log")
        ax.set_ylabel("ms per step", fontsize=8)
        ax.legend(fontsize=7)
        numpy_vals = keyed.get((opt, "numpy"), {})
        for (o, backend), vals in keyed.items():
            if o == opt and backend.startswith("vulkan"):
                speedup.plot(x, [numpy_vals.get(c, np.nan) / vals.get(c, np.nan) for c in cols], marker="o", label=opt)
    speedup.axhline(1.0, color="grey", lw=0.8)
    speedup.set_yscale("log")
    speedup.set_title("Vulkan speed-up over NumPy (>1: faster)", fontsize=10)
    speedup.legend(fontsize=6)
    for ax in axes[:n]:
        ax.set_xticks(x, cols, rotation=25, fontsize=7)
        ax.grid(alpha=0.3)
    for ax in axes[n:]:
        ax.axis("off")
    fig.suptitle("; ".join(stamp), fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


def replot(csv_path, out_png):
    """Redraw the plot from a benchmark.csv (and the stamp lines of the benchmark.md beside it)."""
    with open(csv_path) as f:
        rows = list(csv.DictReader(f))
    keyed = {}
    for r in rows:
        keyed.setdefault((r["optimizer"], r["backend"]), {})[r["size"]] = float(r["ms"])
    cols = list(dict.fromkeys(r["size"] for r in rows))
    md = Path(csv_path).with_suffix(".md")
    stamp = [line[2:] for line in md.read_text().splitlines() if line.startswith("- ")] if md.exists() else []
    plot(keyed, cols, stamp, out_png)


if __name__ == "__main__":
    main()
