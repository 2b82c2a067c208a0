"""The benchmark scripts' command lines: --help writes nothing and exits 0; a bad value is a
one-line error (exit 2, no traceback) and writes nothing; names need no shell quoting."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ["benchmarks.run", "benchmarks.train", "benchmarks.snn", "benchmarks.hysterograd_moons",
           "benchmarks.autosgm_windows", "benchmarks.mechanisms"]
BAD = {
    "benchmarks.run": [["--sizes", "10k"], ["--sizes", "1.5"], ["--only", "Adam"], ["--budget", "0"],
                       ["--device", "cpu"], ["--device", "vulkan:"], ["--device", "vulkan:no-such-device"],
                       ["--skip", "gpu"]],
    "benchmarks.train": [["--only", "Adam"], ["--datasets", "mnist"], ["--bogus"]],
    "benchmarks.snn": [["--epochs", "10k"], ["--hidden", "0"], ["--lr", "-1"]],
    "benchmarks.hysterograd_moons": [["--epochs", "10k"], ["--stiffening", "nan?"], ["results.png"]],
    "benchmarks.autosgm_windows": [["--length", "10k"], ["--floor", "2"], ["--help.png"]],
    "benchmarks.mechanisms": [["--only", "natural_grad"], ["--scale", "0"]],
}


def _run(module, args, cwd):
    env = dict(os.environ, PYTHONPATH=str(ROOT), MPLBACKEND="Agg")
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=120)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("module", SCRIPTS)
def test_help_writes_nothing_and_exits_0(module, tmp_path):
    r = _run(module, ["--help"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert "usage:" in r.stdout and "--out" in r.stdout
    assert list(tmp_path.iterdir()) == []


@pytest.mark.timeout(300)
@pytest.mark.parametrize("module,args", [(m, a) for m, cases in BAD.items() for a in cases])
def test_bad_value_is_a_one_line_error(module, args, tmp_path):
    r = _run(module, args, tmp_path)
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "Traceback" not in r.stderr and lines[0].startswith(f"python -m {module}: error:")
    assert list(tmp_path.iterdir()) == []


def test_every_benchmark_name_needs_no_shell_quoting():
    import importlib
    import re

    from benchmarks.mechanisms import NAMES
    from benchmarks.train import CONFIGS
    names = list(CONFIGS) + list(NAMES)
    for path in sorted((ROOT / "benchmarks").glob("cases_*.py")):      # the benchmark harness's cases
        names += list(importlib.import_module(f"benchmarks.{path.stem}").CASES)
    assert "AutoSGM-lrc2" in names
    for name in names:
        assert re.fullmatch(r"[A-Za-z0-9_.,=+-]+", name), name


def test_ranges_and_one_line_parser():
    from benchmarks.cli import backend_label, float_range, int_range, make_parser
    ap = make_parser("doc", prog="prog")
    ap.add_argument("--n", type=int_range(1, 5))
    ap.add_argument("--x", type=float_range(0.0, 1.0))
    assert ap.parse_args(["--n", "5", "--x", "0.5"]).n == 5
    for bad in (["--n", "6"], ["--n", "1.5"], ["--x", "-0.1"]):
        with pytest.raises(SystemExit) as e:
            ap.parse_args(bad)
        assert e.value.code == 2
    assert backend_label("vulkan:llvmpipe (LLVM 15.0.6, 256 bits)") == "vulkan (lavapipe, CPU driver)"
    assert backend_label("vulkan:NVIDIA GeForce RTX 4090 Laptop GPU with a long name") == \
        "vulkan (NVIDIA GeForce RTX 4090 Laptop GPU with a long name)"
    assert backend_label("numpy") == "numpy"


def test_run_size_argument():
    import argparse

    from benchmarks.run import MIX, size_arg
    assert size_arg("1e4") == size_arg("10000") == 10_000
    assert size_arg("16e6") == 16_000_000 and size_arg("mix200") == MIX
    for bad in ("10k", "1.5", "0", "-1e4", "1e12", "mix"):
        with pytest.raises(argparse.ArgumentTypeError):
            size_arg(bad)


@pytest.mark.timeout(600)
def test_run_writes_one_valid_table_with_its_csv_and_plot(tmp_path):
    """A tiny benchmark run: benchmark.md is one Markdown table (markdown-it-py) recording how it
    was made, benchmark.csv has the same columns and rows, and the plot is written."""
    import csv

    from markdown_it import MarkdownIt

    from benchmarks.run import MIX, label
    out = tmp_path / "out"
    r = _run("benchmarks.run", ["--only", "AdamW", "HL", "--sizes", "1e3", "mix200", "--budget", "0.01",
                                "--skip", "first-step", "torch", "--out", str(out)], tmp_path)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in out.iterdir()) == ["benchmark.csv", "benchmark.md", "benchmark.png"]
    text = (out / "benchmark.md").read_text()
    for field in ("- command: `python -m benchmarks.run --only AdamW HL", "- date: ", "- sizes: 1e3, 200 tensors",
                  "- versions: "):
        assert field in text, field
    tokens = MarkdownIt("commonmark").enable("table").parse(text)
    assert [t.type for t in tokens].count("table_open") == 1
    head = [tokens[k + 1].content for k, t in enumerate(tokens) if t.type == "th_open"]
    rows = [t for t in tokens if t.type == "tr_open"][1:]
    assert head[:4] == ["optimizer", "size", "B/elt", "NumPy twins ms"]
    assert len(rows) == 4                       # 2 optimizers x 2 sizes (one tensor, the mix)
    mix = label(MIX)
    with open(out / "benchmark.csv", newline="") as fh:
        table = list(csv.reader(line for line in fh if not line.startswith("#")))
    assert table[0] == head and len(table) == 5
    assert [row[:2] for row in table[1:]] == [["AdamW", "1e3"], ["AdamW", mix], ["HL", "1e3"], ["HL", mix]]
    ms = table[0].index("NumPy twins ms")
    assert all(float(row[ms]) > 0 for row in table[1:])
    if "fused CPU ms" in head:          # AdamW rows also time the fused step without its gradient check
        unchecked = table[0].index("fused CPU without the gradient check ms")
        assert [bool(row[unchecked]) for row in table[1:]] == [True, True, False, False]
        assert all(float(row[unchecked]) > 0 for row in table[1:3])
        paired = table[0].index("fused CPU / AdamW's, paired")     # the other rows: a multiple of AdamW
        assert [row[paired] for row in table[1:3]] == ["", ""]
        assert all(row[paired].endswith("x") and float(row[paired][:-1]) > 0 for row in table[3:])


def test_paired_ratio_times_each_step_against_the_reference_run_just_before_it(monkeypatch):
    """``paired_ratio`` gives the median of step/reference over back-to-back pairs: on a clock that
    only the two steps move, a step taking 3 ticks (5 in one pair) after a reference of 1 is 3x."""
    import benchmarks.run as run
    clock = [0.0]
    monkeypatch.setattr(run.time, "perf_counter", lambda: clock[0])
    calls = []

    def reference():
        calls.append("reference")
        clock[0] += 1.0

    def step():
        calls.append("step")
        clock[0] += 5.0 if len(calls) == 8 else 3.0      # one slow pair (the second timed one)

    assert run.paired_ratio(step, reference, budget_s=0.0, min_pairs=5, warmup=2) == 3.0
    assert calls == ["reference", "step"] * 7            # 2 warm-up pairs, then 5 timed


def test_benchmark_step_without_gradient_check_is_the_same_update_unchecked(monkeypatch):
    """The benchmark's no-check column times the same update with the check stubbed out: the same
    bits for finite gradients, and a non-finite gradient goes through unlooked-at (a real step
    refuses it)."""
    pytest.importorskip("numba")
    monkeypatch.setenv("HYPEROPT_CPU_KERNELS", "numba")     # the benchmark's fused column
    from benchmarks.run import without_gradient_check
    from hyperopt import AdamW
    rng = np.random.default_rng(0)
    start = rng.standard_normal(1000).astype(np.float32)
    checked, unchecked = start.copy(), start.copy()
    opt = AdamW([checked], lr=1e-2, use_gpu=False)
    bare = without_gradient_check(AdamW([unchecked], lr=1e-2, use_gpu=False))
    assert opt.backend == bare.backend == "numba"
    for _ in range(3):
        g = rng.standard_normal(1000).astype(np.float32)
        opt.step(gradients=[g])
        bare.step(gradients=[g])
    assert (checked.view(np.uint32) == unchecked.view(np.uint32)).all()
    g[7] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        opt.step(gradients=[g])
    bare.step(gradients=[g])
    assert np.isnan(unchecked[7]) and not np.isnan(checked).any()
