"""What the benchmark scripts share: argparse with one-line errors, typed ranges, backend labels,
plot styles, and results files (Markdown table + csv) that record how they were made.

* ``make_parser(doc)``: an ``ArgumentParser`` whose errors are one line (``prog: error: ...``), no
  usage block, no traceback; ``--help`` prints the module docstring and writes nothing.
* ``int_range(lo, hi)`` / ``float_range(lo, hi)``: argparse types that name the allowed range.
* ``backend_label(name)``: ``"numpy"``, ``"numba"``, ``"vulkan (<device>)"`` for a GPU,
  ``"vulkan (lavapipe, CPU driver)"`` for a CPU Vulkan driver; never cut.
* ``OPTIMIZER_COLOURS`` / ``backend_style(label)``: colour = optimizer, line style = backend.
* ``write_results(out_dir, stem, columns, rows, ...)``: ``<stem>.md`` (a header list with command,
  date, versions and sizes, then one Markdown table) and ``<stem>.csv`` (``#`` comment lines with
  the same header, then the table).
"""
from __future__ import annotations

import argparse
import csv
import datetime as _dt
import platform
import shlex
import sys
from pathlib import Path


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse, but a bad argument prints ``prog: error: message`` on one line and exits 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def make_parser(doc: str, prog: str | None = None) -> OneLineErrorParser:
    """A parser whose ``--help`` is the module docstring (verbatim) and whose errors are one line."""
    return OneLineErrorParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)


def _ranged(kind, lo, hi, name):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {name}, got {text!r}") from None
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            bounds = f"{lo if lo is not None else '-inf'} to {hi if hi is not None else 'inf'}"
            raise argparse.ArgumentTypeError(f"{text} is out of range ({bounds})")
        return value
    parse.__name__ = name
    return parse


def int_range(lo=None, hi=None):
    """An argparse type: an integer in [lo, hi]."""
    return _ranged(int, lo, hi, "an integer")


def float_range(lo=None, hi=None):
    """An argparse type: a float in [lo, hi]."""
    return _ranged(float, lo, hi, "a number")


CPU_DRIVERS = {"llvmpipe": "lavapipe", "lavapipe": "lavapipe", "swiftshader": "SwiftShader"}


def backend_label(name: str) -> str:
    """A reader's label for ``opt.backend``: CPU Vulkan drivers say so; nothing is cut."""
    if not name.startswith("vulkan"):
        return name
    device = name.split(":", 1)[1] if ":" in name else ""
    for key, label in CPU_DRIVERS.items():
        if key in device.lower():
            return f"vulkan ({label}, CPU driver)"
    return f"vulkan ({device})" if device else "vulkan"


def backend_kind(name: str) -> str:
    """``"numpy"``, ``"numba"``, ``"vulkan-cpu"`` or ``"vulkan-gpu"``: the part of a backend that sets a style."""
    if not name.startswith("vulkan"):
        return name
    return "vulkan-cpu" if "CPU driver" in backend_label(name) else "vulkan-gpu"


OPTIMIZER_COLOURS = {
    "AdamW": "#1f77b4", "HypergradientAdamW": "#ff7f0e", "AutoHypergradientAdamW": "#d62728",
    "HIOptimizer": "#2ca02c", "AutoSGM": "#9467bd", "HCNaturalGrad": "#8c564b", "HL": "#e377c2",
    "SGD": "#7f7f7f",
}
BACKEND_STYLES = {"numpy": "-", "numba": "-.", "vulkan-cpu": ":", "vulkan-gpu": "--"}


def backend_style(name: str) -> str:
    """The line style of a backend (``opt.backend``)."""
    return BACKEND_STYLES.get(backend_kind(name), "-")


def versions() -> dict:
    """Versions worth recording next to a result."""
    import numpy
    out = {"python": platform.python_version(), "numpy": numpy.__version__}
    try:
        import hyperopt
        out["hyperopt"] = hyperopt.__version__
    except Exception:          # noqa: BLE001 -- recording versions must not stop a benchmark
        pass
    for mod in ("numba", "vulkan", "sklearn", "matplotlib"):
        m = sys.modules.get(mod)
        if m is not None and hasattr(m, "__version__"):
            out[mod] = m.__version__
    out["machine"] = f"{platform.machine()}, {_cpu_count()} cores"
    return out


def _cpu_count():
    import os
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count()


def command_line(module: str, argv) -> str:
    """The command that reproduces a run: ``python -m <module> <args>`` (shell-quoted)."""
    args = sys.argv[1:] if argv is None else list(argv)
    return " ".join(["python", "-m", module] + [shlex.quote(a) for a in args])


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def write_results(out_dir, stem: str, columns: list[str], rows: list[dict], *, title: str, command: str,
                  sizes: str, notes: list[str] = ()) -> tuple[Path, Path]:
    """Write ``<stem>.md`` and ``<stem>.csv`` under ``out_dir``; returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = {"command": f"`{command}`", "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "sizes": sizes, "versions": ", ".join(f"{k} {v}" for k, v in versions().items())}
    md = [f"# {title}", ""]
    md += [f"- {k}: {v}" for k, v in meta.items()]
    md += [f"- {n}" for n in notes]
    md += ["", "| " + " | ".join(columns) + " |",
           "|" + "|".join("---:" if rows and isinstance(rows[0].get(c), (int, float)) else "---" for c in columns) + "|"]
    md += ["| " + " | ".join(_cell(r.get(c, "")) for c in columns) + " |" for r in rows]
    md_path = out_dir / f"{stem}.md"
    md_path.write_text("\n".join(md) + "\n")
    csv_path = out_dir / f"{stem}.csv"
    with open(csv_path, "w", newline="") as fh:
        for k, v in meta.items():
            fh.write(f"# {k}: {str(v).strip('`')}\n")
        w = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({c: (f"{r[c]:.6g}" if isinstance(r.get(c), float) else r.get(c, "")) for c in columns})
    return md_path, csv_path
