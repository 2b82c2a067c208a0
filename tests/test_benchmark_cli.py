"""The benchmark scripts' command lines: --help writes nothing and exits 0; a bad value is a
one-line error (exit 2, no traceback) and writes nothing; names need no shell quoting."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ["benchmarks.train", "benchmarks.snn", "benchmarks.hysterograd_moons", "benchmarks.autosgm_windows",
           "benchmarks.mechanisms"]
BAD = {
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
