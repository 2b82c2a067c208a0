"""Step-time benchmark of every optimizer: NumPy twins, fused CPU kernels, Vulkan, torch.

    python -m benchmarks.run                                  # everything, standard sizes, into results/
    python -m benchmarks.run --only AdamW HL --sizes 1e4 1e6 mix200 --device vulkan:cpu

Each cell is the median time of ``opt.step(gradients=...)`` over repeated steps after two warm-up
steps, Python included, the cells of a row taking turns (three rounds each, so that a drift in the
machine's speed hits them alike), on float32 parameters: one tensor of each size (1e4 ... 16e6 elements) and
a mix of 200 tensors (3.2M elements, shaped like a small CNN).  Side by side, per optimizer and size:

* NumPy twins   ``use_gpu=False`` with ``HYPEROPT_CPU_KERNELS=numpy``;
* fused CPU     ``use_gpu=False`` with the fused numba kernels (when numba is installed);
* Vulkan        ``use_gpu=True`` on the device ``--device`` names, by default a hardware GPU if
                there is one, else the CPU Vulkan driver (``vulkan:cpu``, labelled as a CPU driver);
* kernel-only   the same Vulkan steps' dispatches alone, from GPU timestamps (no copies, no Python);
* torch         ``torch.optim.AdamW`` on CPU tensors, ``foreach=True`` and ``fused=True`` (AdamW only);
* no check      fused AdamW's step with its all-or-nothing gradient check stubbed out (a pass
                that reads every gradient element before anything moves, which torch does not
                make): what the check costs inside the step, in the step's own cache state.

Achieved bandwidth: the bytes a step must move (parameter and every state buffer read and written
once, the gradient read once) over the step time, shown for the fused CPU kernels beside a
STREAM-like triad (``a = b + s*c``, float32, numba threads) measured in the same run.  Rows are
timed at different moments, and the machine's speed drifts over seconds, so a ratio between two rows
would mix them: every optimizer's row but AdamW's also gives its fused step as a multiple of fused
AdamW's on the same shapes, timed in pairs (an AdamW step, then the optimizer's, back to back; the
median of the pairs' ratios), so that both steps of a ratio share one moment.  (Torch's columns are
not paired: its OpenMP threads spin for a while after each step, by libgomp's default wait policy,
and slow whatever runs right after it.)  The fused
kernels' first-step cost (compiling into an empty cache, then loading from it) is measured in fresh
processes.  Writes <out>/benchmark.md (one Markdown table, with command, date, sizes and versions),
benchmark.csv and benchmark.png.

Device names: gpu, vulkan:cpu, vulkan:<index>, vulkan:<part of the device name>.
Sizes: element counts (1e4, 10000, 16e6) and/or mix200.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from hyperopt import AdamW

from benchmarks.cli import (OPTIMIZER_COLOURS, backend_label, backend_style, command_line, float_range, make_parser,
                            write_results)

SIZES = [10_000, 100_000, 1_000_000, 4_000_000, 16_000_000]
MIX = "mix200"
MAX_ELEMENTS = 2_000_000_000
PARTS = ("numpy", "numba", "vulkan", "torch", "triad", "first-step")
NO_CHECK = "numba, no check"      # fused AdamW without its gradient check (AdamW rows)


def cnn_mix(n=200, seed=0):
    """200 tensor shapes, 3.2M elements: conv kernels with their bias and norm vectors, a few dense."""
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


# ---------------------------------------------------------------- command-line types

def size_arg(text: str):
    """``mix200``, or an element count written 1e4, 10000 or 16e6."""
    if text == MIX:
        return MIX
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an element count such as 1e4 or 10000, or {MIX}, "
                                         f"got {text!r}") from None
    if not value.is_integer() or not 1 <= value <= MAX_ELEMENTS:
        raise argparse.ArgumentTypeError(f"{text} is not a whole number of elements from 1 to {MAX_ELEMENTS:.0e}")
    return int(value)


def device_arg(text: str) -> str:
    """A Vulkan device: ``gpu``, ``vulkan:cpu``, ``vulkan:<index>`` or ``vulkan:<name part>``."""
    text = text.strip()
    if text == "cpu":
        raise argparse.ArgumentTypeError("'cpu' is the CPU path (its rows always run); the Vulkan cell needs "
                                         "gpu, vulkan:cpu, vulkan:<index> or vulkan:<name>")
    if text != "gpu" and not (text.startswith("vulkan:") and len(text) > len("vulkan:")):
        raise argparse.ArgumentTypeError(f"expected gpu, vulkan:cpu, vulkan:<index> or vulkan:<name>, got {text!r}")
    return text


def label(size) -> str:
    """10_000 -> "1e4", 16_000_000 -> "16e6", the mix -> its description."""
    if size == MIX:
        return f"200 tensors ({elements(MIX) / 1e6:.1f}M)"
    for e in range(15, 0, -1):
        if size % 10 ** e == 0 and size // 10 ** e < 100:
            return f"{size // 10 ** e}e{e}"
    return str(size)


def shapes_for(size):
    return cnn_mix() if size == MIX else [(int(size),)]


def elements(size) -> int:
    return sum(int(np.prod(s)) for s in shapes_for(size))


# ---------------------------------------------------------------- the Vulkan device

def vulkan_device(requested: str | None):
    """({selector, name, label, cpu_driver, about}, None) for the device to benchmark, or (None, why not).

    ``requested`` None: a hardware GPU if there is one, else the CPU Vulkan driver."""
    try:
        from hyperopt.backends import VulkanUnavailable, vulkan
    except OSError as exc:      # the binding raises OSError when no Vulkan loader is installed
        return None, f"no Vulkan loader ({exc})"
    reasons = []
    for selector in [requested] if requested else ["gpu", "vulkan:cpu"]:
        try:
            ctx = vulkan.context(selector)
        except (VulkanUnavailable, ValueError) as exc:
            reasons.append(str(exc))
            continue
        cpu = ctx.props.deviceType == vulkan.vk.VK_PHYSICAL_DEVICE_TYPE_CPU
        name = f"vulkan:{ctx.name}"
        shown = backend_label(name)
        if cpu and "CPU driver" not in shown:
            shown = f"vulkan ({ctx.name.split(' (')[0]}, CPU driver)"
        api = ctx.props.apiVersion
        about = f"{ctx.name}, {ctx.driver}, Vulkan {api >> 22}.{(api >> 12) & 0x3FF}"
        about += ", a CPU driver" if cpu else ""
        return dict(selector=selector, name=name, label=shown, cpu_driver=cpu, about=about), None
    return None, "; ".join(reasons)


# ---------------------------------------------------------------- timing

def time_steps(steps: dict, budget_s, rounds=3, min_reps=3, max_reps=200, warmup=2) -> dict:
    """Median seconds of each ``steps[key]()``, timed in turns: ``rounds`` rounds in which every step
    runs for ``budget_s / rounds`` (at least ``min_reps`` times), after ``warmup`` calls each.  Turns
    give every column of a row the same machine: on a shared virtual machine speed drifts over
    seconds, which would otherwise favour whichever column ran in a fast moment."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    times: dict = {key: [] for key in steps}
    for _ in range(rounds):
        for key, step in steps.items():
            start, n = time.perf_counter(), 0
            while n < min_reps or (n < max_reps // rounds and time.perf_counter() - start < budget_s / rounds):
                t0 = time.perf_counter()
                step()
                times[key].append(time.perf_counter() - t0)
                n += 1
    return {key: statistics.median(t) for key, t in times.items()}


def paired_ratio(step, reference, budget_s, min_pairs=5, max_pairs=200, warmup=2) -> float:
    """Median over pairs of ``step()``'s time over ``reference()``'s, the two run back to back in
    each pair (reference first), for ``budget_s`` (at least ``min_pairs`` pairs) after ``warmup``
    pairs.  A pair takes milliseconds, so both of its steps see the machine at one speed, which
    steps timed seconds apart do not on a shared VM whose speed drifts."""
    for _ in range(warmup):
        reference()
        step()
    ratios, end = [], time.perf_counter() + budget_s
    while len(ratios) < min_pairs or (len(ratios) < max_pairs and time.perf_counter() < end):
        t0 = time.perf_counter()
        reference()
        t1 = time.perf_counter()
        step()
        ratios.append((time.perf_counter() - t1) / (t1 - t0))
    return statistics.median(ratios)


def optimizer_step(factory, shapes, use_gpu, device, cpu_kernels="numpy"):
    """(step, optimizer) of one optimizer on one set of float32 shapes, fixed gradients."""
    rng = np.random.default_rng(0)
    params = [(0.1 * rng.standard_normal(s)).astype(np.float32) for s in shapes]
    grads = [(0.01 * rng.standard_normal(s)).astype(np.float32) for s in shapes]
    saved = os.environ.get("HYPEROPT_CPU_KERNELS")
    os.environ["HYPEROPT_CPU_KERNELS"] = cpu_kernels
    try:
        opt = factory(params, use_gpu, device)
    finally:
        if saved is None:
            os.environ.pop("HYPEROPT_CPU_KERNELS")
        else:
            os.environ["HYPEROPT_CPU_KERNELS"] = saved
    return (lambda: opt.step(gradients=grads)), opt


def without_gradient_check(opt):
    """``opt`` (fused CPU) with its backend's gradient check stubbed out: every gradient passes
    unlooked-at.  For measuring what the check costs; an optimizer never runs so for a user."""
    opt._backend.check_gradients = lambda grads, limit, refuse=None, reading=None: None
    return opt


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


def triad_gbps(n=1 << 24, reps=10) -> float:
    """STREAM-like triad ``a = b + s*c`` on float32 (12 bytes per element), numba threads; best of ``reps``, GB/s."""
    from hyperopt.backends.numba_backend import load_numba
    numba = load_numba()

    @numba.njit(parallel=True)
    def triad(a, b, c, s):
        for i in numba.prange(a.size):
            a[i] = b[i] + s * c[i]
    a, b, c = (np.full(n, v, np.float32) for v in (0.0, 1.0, 2.0))
    triad(a, b, c, np.float32(3.0))
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        triad(a, b, c, np.float32(3.0))
        best = min(best, time.perf_counter() - t0)
    return 12 * n / best / 1e9


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
    """[(import+construct s, first step s) with an empty numba cache, (...) from that cache] for AdamW."""
    out = []
    with tempfile.TemporaryDirectory() as cache:
        root = str(Path(__file__).resolve().parent.parent)
        env = dict(os.environ, NUMBA_CACHE_DIR=cache, HYPEROPT_CPU_KERNELS="numba",
                   PYTHONPATH=os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p))
        for _ in ("cold", "cached"):
            r = subprocess.run([sys.executable, "-c", _FIRST_STEP], env=env, capture_output=True, text=True,
                               timeout=900)
            if r.returncode:
                raise RuntimeError(f"first-step measurement failed:\n{r.stderr}")
            out.append(tuple(float(x) for x in r.stdout.split()))
    return out


def torch_step(shapes, mode):
    """``step`` of torch.optim.AdamW (``foreach`` or ``fused``) on CPU tensors with fixed gradients."""
    import torch
    rng = np.random.default_rng(0)
    params = [torch.tensor((0.1 * rng.standard_normal(s)).astype(np.float32), requires_grad=True) for s in shapes]
    for p in params:
        p.grad = torch.tensor((0.01 * rng.standard_normal(p.shape)).astype(np.float32))
    return torch.optim.AdamW(params, lr=1e-3, **{mode: True}).step


# ---------------------------------------------------------------- results

def columns_for(vk):
    """Result columns, keyed by the part of the run that fills them: (key, header)."""
    return [("numpy", "NumPy twins ms"), ("numba", "fused CPU ms"), (NO_CHECK, "fused CPU without the gradient check ms"),
            ("vulkan", f"{vk['label']} ms" if vk else "Vulkan ms"), ("kernel", "kernel-only ms"),
            ("torch foreach", "torch foreach ms"), ("torch fused", "torch fused ms"),
            ("numba GB/s", "fused CPU GB/s"), ("of triad", "fused CPU / triad"),
            ("of AdamW", "fused CPU / AdamW's, paired"), ("kernel GB/s", "kernel-only GB/s")]


def main(argv=None):
    all_cases = cases()
    ap = make_parser(__doc__, prog="python -m benchmarks.run")
    ap.add_argument("--only", nargs="+", choices=list(all_cases), default=list(all_cases), metavar="OPTIMIZER",
                    help="optimizers to run (default: all): " + ", ".join(all_cases))
    ap.add_argument("--sizes", nargs="+", type=size_arg, default=SIZES + [MIX], metavar="SIZE",
                    help="element counts (1e4, 10000, 16e6) and/or mix200 (default: 1e4 1e5 1e6 4e6 16e6 mix200)")
    ap.add_argument("--device", type=device_arg, default=None,
                    help="Vulkan device: gpu, vulkan:cpu, vulkan:<index> or vulkan:<name> "
                         "(default: gpu if there is one, else vulkan:cpu)")
    ap.add_argument("--budget", type=float_range(0.01, 60.0), default=0.6,
                    help="seconds of timed steps per cell, 0.01 to 60 (default 0.6)")
    ap.add_argument("--skip", nargs="+", choices=PARTS, default=[], metavar="PART",
                    help="parts to leave out: " + ", ".join(PARTS))
    ap.add_argument("--out", default="results", help="output folder (default: results)")
    args = ap.parse_args(argv)
    skip = set(args.skip)
    sizes = list(dict.fromkeys(args.sizes))

    vk, why_not = (None, "skipped (--skip vulkan)") if "vulkan" in skip else vulkan_device(args.device)
    if vk is None and args.device:
        ap.error(f"--device {args.device}: {why_not}")
    numba = have_numba() and "numba" not in skip
    torch_version = None
    if "torch" not in skip and "AdamW" in args.only:
        try:
            import torch
            torch_version = torch.__version__
        except ImportError:
            pass
    notes = []
    first = first_step_cost() if numba and "first-step" not in skip else None
    if first:
        notes.append(f"fused kernels' first step (AdamW, 1M + 100 elements, fresh process): {first[0][1]:.2f} s "
                     f"compiling into an empty cache, {first[1][1]:.2f} s from the disk cache "
                     f"(import + construction {first[1][0]:.2f} s)")
        print(notes[-1], flush=True)
    triad = triad_gbps() if numba and "triad" not in skip else None
    if triad:
        notes.append(f"STREAM-like triad (a = b + s*c, float32, numba threads), same run: {triad:.1f} GB/s")
        print(notes[-1], flush=True)
    notes.append(f"Vulkan device: {vk['about']}" if vk else f"Vulkan: none ({why_not})")

    backends = ([("numpy", False, None, "numpy")] if "numpy" not in skip else []) \
        + ([("numba", False, None, "numba")] if numba else []) \
        + ([("vulkan", True, vk["selector"], "numpy")] if vk else [])
    torch_modes = ("foreach", "fused") if torch_version else ()
    unchecked = numba and "AdamW" in args.only     # the no-check column
    paired = len(args.only) - ("AdamW" in args.only) if numba else 0     # rows with a ratio to AdamW
    total = (len(args.only) * len(backends) + len(torch_modes) + unchecked + paired) * len(sizes)
    rows, k = [], 0
    for name in args.only:
        for size in sizes:
            n = elements(size)
            row = {"optimizer": name, "size": label(size), "elements": n}
            steps, opts = {}, {}
            for key, use_gpu, device, kernels in backends:
                steps[key], opts[key] = optimizer_step(all_cases[name], shapes_for(size), use_gpu, device, kernels)
                if key == "vulkan" and opts[key].backend != vk["name"]:     # say it; never file it as Vulkan
                    notes.append(f"{name} at {label(size)}: asked for {vk['name']} but ran on {opts[key].backend}; "
                                 "not recorded")
                    print(notes[-1], file=sys.stderr, flush=True)
                    opts.pop(key).close()
                    del steps[key]
            if name == "AdamW":
                if "numba" in steps:
                    steps[NO_CHECK], opts[NO_CHECK] = optimizer_step(
                        lambda *a: without_gradient_check(all_cases[name](*a)), shapes_for(size), False, None, "numba")
                for mode in torch_modes:
                    steps[f"torch {mode}"] = torch_step(shapes_for(size), mode)
            try:
                seconds = time_steps(steps, args.budget)
                for key, value in seconds.items():
                    k += 1
                    row[key] = value * 1e3
                    print(f"[{k:3d}/{total}] {name:24s} {label(size):>20s} {key:13s} {value * 1e3:10.3f} ms", flush=True)
                    if key in opts:
                        row["B/elt"] = 4 * (3 + 2 * len(opts[key]._backend.buffers))
                if name != "AdamW" and "numba" in steps:
                    adamw, opts["AdamW"] = optimizer_step(all_cases["AdamW"], shapes_for(size), False, None, "numba")
                    ratio = paired_ratio(steps["numba"], adamw, args.budget)
                    row["of AdamW"] = f"{ratio:.2f}x"
                    k += 1
                    print(f"[{k:3d}/{total}] {name:24s} {label(size):>20s} {'/ AdamW':13s} {ratio:10.2f}x", flush=True)
                if "numba" in row:
                    row["numba GB/s"] = row["B/elt"] * n / (row["numba"] / 1e3) / 1e9
                    if triad:
                        row["of triad"] = f"{row['numba GB/s'] / triad:.0%}"
                if "vulkan" in opts:
                    kernel = kernel_seconds(opts["vulkan"], steps["vulkan"])
                    if kernel:
                        row["kernel"] = kernel * 1e3
                        row["kernel GB/s"] = row["B/elt"] * n / kernel / 1e9
            finally:
                for opt in opts.values():
                    opt.close()
            rows.append(row)

    headers = dict(columns_for(vk))
    present = [key for key in headers if any(key in r for r in rows)]
    columns = ["optimizer", "size", "B/elt"] + [headers[key] for key in present]
    table = [{"optimizer": r["optimizer"], "size": r["size"], "B/elt": r.get("B/elt", ""),
              **{headers[key]: r.get(key, "") for key in present}} for r in rows]
    notes += ["ms: median milliseconds per `step(gradients=...)`, Python included, float32, after 2 warm-up steps; "
              "the columns of a row take turns (3 rounds each), so they share the machine's moments",
              "B/elt: bytes a step must move per element (parameter and each state buffer read and written, "
              "gradient read); GB/s = B/elt x elements / step time",
              "fused CPU / AdamW's, paired: the fused CPU step over fused AdamW's on the same shapes, the two "
              "timed back to back in pairs for the cell's budget (median of the pairs' ratios), so that each "
              "ratio's two steps share the machine's moment",
              "fused CPU without the gradient check: fused AdamW with its all-or-nothing gradient check stubbed out "
              "(a benchmark-only stub: the check reads every gradient element, 4 more bytes per element, before "
              "anything moves; torch has no such pass), timed in the same turns",
              "kernel-only: the Vulkan step's dispatches alone, from GPU timestamps (no copies, no Python)",
              "torch: torch.optim.AdamW(lr=1e-3) on CPU tensors, AdamW rows only"
              + (f" (torch {torch_version})" if torch_version else " (not run)")]
    sizes_text = ", ".join(label(s) for s in sizes)
    md, csv_path = write_results(args.out, "benchmark", columns, table, command=command_line("benchmarks.run", argv),
                                 title="Optimizer step time: NumPy twins, fused CPU, Vulkan, torch", sizes=sizes_text,
                                 notes=notes)
    print("\n" + md.read_text())
    print(f"wrote {md} and {csv_path}")
    try:
        path = plot(rows, sizes, vk, triad, Path(args.out) / "benchmark.png")
        print(f"wrote {path}")
    except ImportError:
        print("matplotlib not installed: no plot written", file=sys.stderr)


# ---------------------------------------------------------------- plot

#: backend key -> (legend label, line style, marker); Vulkan's label and style come from its device
_STYLES = {"numpy": ("NumPy twins", backend_style("numpy"), "o"),
           "numba": ("fused CPU (numba)", backend_style("numba"), "s"),
           "kernel": ("Vulkan kernel-only (GPU timestamps)", (0, (3, 1)), "v"),
           "torch foreach": ("torch AdamW foreach", (0, (1, 2, 1, 2, 5, 2)), "x"),
           "torch fused": ("torch AdamW fused", (0, (10, 3)), "+")}


def _colour(name):
    return OPTIMIZER_COLOURS.get(name) or OPTIMIZER_COLOURS.get(name.split("-")[0], "black")


def plot(rows, sizes, vk, triad, path):
    """One panel per optimizer (colour = optimizer, line style = backend): ms per step against
    elements, and the 200-tensor mix in its own categorical panel beside it (not on the size axis)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    styles = dict(_STYLES)
    if vk:
        styles["vulkan"] = (vk["label"], backend_style(vk["name"]), "^")
    keys = [k for k in styles if any(k in r for r in rows)]
    optimizers = list(dict.fromkeys(r["optimizer"] for r in rows))
    numeric = [s for s in sizes if s != MIX]
    mix = MIX in sizes
    ncol = min(3, len(optimizers))
    nrow = -(-len(optimizers) // ncol)
    widths = ([4] if numeric else []) + ([1.3] if mix else [])
    panels = len(widths)
    widths.append(0.9)          # a gap between one optimizer's panels and the next one's
    fig = plt.figure(figsize=(max(7.0, sum(widths) * 1.1 * ncol + 0.5), 3.3 * nrow + 1.5))
    grid = fig.add_gridspec(nrow, ncol * len(widths), width_ratios=widths * ncol, wspace=0.08, hspace=0.55)
    for k, name in enumerate(optimizers):
        r, c = divmod(k, ncol)
        by_size = {row["size"]: row for row in rows if row["optimizer"] == name}
        colour = _colour(name)
        axes = []
        if numeric:
            ax = fig.add_subplot(grid[r, c * len(widths)])
            x = np.array([elements(s) for s in numeric], float)
            for key in keys:
                y = np.array([by_size.get(label(s), {}).get(key, np.nan) for s in numeric], float)
                if not np.all(np.isnan(y)):
                    text, ls, marker = styles[key]
                    ax.plot(x, y, ls=ls, marker=marker, color=colour, ms=4, lw=1.4)
            ax.set_xscale("log")
            ax.set_xlabel("elements (one tensor)", fontsize=8)
            ax.set_ylabel("ms per step", fontsize=8)
            ax.set_title(name, fontsize=10, color=colour, loc="left")
            axes.append(ax)
        if mix:
            ax = fig.add_subplot(grid[r, c * len(widths) + panels - 1], sharey=axes[0] if axes else None)
            mix_row = by_size.get(label(MIX), {})
            present = [key for key in keys if key in mix_row]
            for j, key in enumerate(present):
                ax.plot([j], [mix_row[key]], ls="none", marker=styles[key][2], color=colour, ms=6)
            ax.set_xlim(-0.7, max(len(present), 1) - 0.3)
            ax.set_xticks([])
            ax.set_xlabel(f"200 tensors\n({elements(MIX) / 1e6:.1f}M elements)", fontsize=8)
            if axes:
                ax.tick_params(labelleft=False)
            else:
                ax.set_ylabel("ms per step", fontsize=8)
                ax.set_title(name, fontsize=10, color=colour, loc="left")
            axes.append(ax)
        for ax in axes:
            ax.set_yscale("log")
            ax.grid(alpha=0.3, which="both", lw=0.5)
            ax.tick_params(which="both", labelsize=7)
    handles = [Line2D([], [], color="0.25", ls=styles[k][1], marker=styles[k][2], label=styles[k][0]) for k in keys]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 3), fontsize=9, frameon=False,
               title="line style and marker = backend; colour = optimizer", title_fontsize=9)
    subtitle = "median step time, Python included, float32" + (f"; STREAM-like triad {triad:.1f} GB/s" if triad else "")
    fig.suptitle(f"Optimizer step time by backend\n{subtitle}", fontsize=10)
    legend_rows = -(-len(handles) // 3)
    fig.subplots_adjust(left=0.05, right=1.0, top=1 - 0.75 / fig.get_figheight(),
                        bottom=(0.85 + 0.2 * legend_rows) / fig.get_figheight())
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


if __name__ == "__main__":
    main()
