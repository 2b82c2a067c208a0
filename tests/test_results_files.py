"""Every committed results file is a Markdown table a reader can use: parsed with markdown-it-py,
each .md holds a table with the expected columns, records how it was made (command, date, sizes,
versions), and has a .csv twin with the same columns and rows."""
import csv
from pathlib import Path

import pytest
from markdown_it import MarkdownIt

RESULTS = Path(__file__).resolve().parent.parent / "benchmarks" / "results"
MD_FILES = sorted(RESULTS.glob("*/*.md"))

#: columns each results table must have, by file name
EXPECTED = {
    "benchmark": ["optimizer", "size", "B/elt", "NumPy twins ms", "fused CPU ms", "kernel-only ms", "torch foreach ms",
                  "torch fused ms", "fused CPU GB/s", "fused CPU / triad"],
    "training": ["dataset", "optimizer", "backend", "test accuracy", "final loss", "wall s"],
    "snn": ["optimizer", "backend", "seed", "test accuracy", "APF (%/PFLOP)", "mean gain"],
    "mechanisms": ["mechanism", "optimizer", "setting", "backend", "steps", "final loss", "metric", "value"],
    "hysterograd_moons": ["backend", "steps", "test accuracy", "Liquid fraction"],
    "autosgm_windows": ["window", "m", "sequence"],
}
#: files written by benchmarks.cli.write_results: they record command, date, sizes and versions
#: and have a csv twin
RECORDED = ["benchmark", "training", "snn", "mechanisms", "hysterograd_moons", "autosgm_windows"]


def _tables(path):
    """[(header cells, [row cells, ...]), ...] of the Markdown tables in ``path``."""
    tokens = MarkdownIt("commonmark").enable("table").parse(path.read_text())
    tables, current, row, cell = [], None, None, None
    for tok in tokens:
        if tok.type == "table_open":
            current = {"head": [], "rows": []}
        elif tok.type == "tr_open":
            row = []
        elif tok.type in ("th_open", "td_open"):
            cell = ""
        elif tok.type == "inline" and cell is not None:
            cell = tok.content
        elif tok.type in ("th_close", "td_close"):
            row.append(cell)
            cell = None
        elif tok.type == "tr_close":
            if current["head"]:
                current["rows"].append(row)
            else:
                current["head"] = row
        elif tok.type == "table_close":
            tables.append((current["head"], current["rows"]))
            current = None
    return tables


def test_there_are_results_files():
    assert {p.stem for p in MD_FILES} >= set(RECORDED)


@pytest.mark.parametrize("path", MD_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_results_file_is_a_markdown_table_with_the_expected_columns(path):
    tables = _tables(path)
    assert len(tables) == 1, f"{path.name}: expected one table, found {len(tables)}"
    head, rows = tables[0]
    for column in EXPECTED.get(path.stem, []):
        assert column in head, f"{path.name}: no column {column!r} in {head}"
    assert rows, f"{path.name}: the table has no rows"
    assert all(len(r) == len(head) for r in rows), f"{path.name}: ragged rows"


@pytest.mark.parametrize("stem", RECORDED)
def test_results_record_how_they_were_made_and_have_a_csv_twin(stem):
    for md in RESULTS.glob(f"*/{stem}.md"):
        text = md.read_text()
        for field in ("- command: `python -m benchmarks.", "- date: ", "- sizes: ", "- versions: "):
            assert field in text, f"{md}: missing {field!r}"
        head, rows = _tables(md)[0]
        with open(md.with_suffix(".csv"), newline="") as fh:
            lines = [line for line in fh if not line.startswith("#")]
        table = list(csv.reader(lines))
        assert table[0] == [h.replace("\\|", "|") for h in head]
        assert len(table) - 1 == len(rows)


def test_backend_names_are_whole_and_cpu_drivers_say_so():
    for md in MD_FILES:
        head, rows = _tables(md)[0]
        for column in head:         # benchmark.md names its Vulkan device in a column header
            if "llvmpipe" in column or "lavapipe" in column:
                assert "CPU driver" in column, f"{md.name}: {column!r}"
        if "backend" not in head:
            continue
        k = head.index("backend")
        for r in rows:
            name = r[k]
            if "llvmpipe" in name or "lavapipe" in name:
                assert "CPU driver" in name, f"{md.name}: {name!r}"
            assert name.count("(") == name.count(")"), f"{md.name}: cut backend name {name!r}"
