"""gpu_check's report: DIR/gpu_check.md, .csv and .png from the parts' records (DIR/parts/*.jsonl).

Fractions of the bounds use the bandwidths measured in the same run: the device fraction is
(bytes through device memory / device-copy bandwidth, the faster of the copy kernel and
vkCmdCopyBuffer) over the kernel-only time, the host<->device
fraction is (bytes up / host-to-device bandwidth + bytes down / device-to-host bandwidth) over the
end-to-end step time.  A fraction is left empty where its inputs were not measured.
"""
from __future__ import annotations

import csv
import math
import sys
from pathlib import Path

FIELDS = ["kind", "optimizer", "path", "size", "elements", "backend", "e2e_ms", "kernel_ms", "submit_ms",
          "upload_bytes", "download_bytes", "device_bytes", "pcie_fraction", "device_fraction", "status", "reason"]


def _num(x):
    return x is not None and isinstance(x, (int, float)) and math.isfinite(x)


def bounds(bandwidth_rows) -> dict:
    """GB/s of the copies the fractions are measured against (absent: not measured)."""
    out = {}
    for r in bandwidth_rows:
        what = r.get("what", "")
        key = ("h2d" if what.startswith("host-to-device") else "d2h" if what.startswith("device-to-host")
               else "device" if what.startswith(("copy kernel", "device-to-device")) else None)
        if key and _num(r.get("gbps")) and r["gbps"] > 0:
            out[key] = max(out.get(key, 0.0), r["gbps"] * 1e9)     # device: the faster of the two copies
    return out


def fractions(row, bw) -> tuple:
    pcie = device = None
    up, down = row.get("upload_bytes") or 0, row.get("download_bytes") or 0
    if (up or down) and _num(row.get("e2e_ms")) and "h2d" in bw and "d2h" in bw:
        pcie = (up / bw["h2d"] + down / bw["d2h"]) / (row["e2e_ms"] * 1e-3)
    if _num(row.get("device_bytes")) and _num(row.get("kernel_ms")) and row["kernel_ms"] > 0 and "device" in bw:
        device = row["device_bytes"] / bw["device"] / (row["kernel_ms"] * 1e-3)
    return pcie, device


def _f(x, spec=".3f"):
    return format(x, spec) if _num(x) else ""


def write_report(out: Path, args, statuses: dict, elapsed_s: float) -> str:
    from benchmarks.gpu_check import read_records
    rec = {name: read_records(out, name) for name in ("info", "bandwidth", "tests", "bench", "peers")}
    info = next((r for r in rec["info"] if r.get("type") == "info"), None)
    bw_rows = [r for r in rec["bandwidth"] if r.get("type") == "bandwidth"]
    bw = bounds(bw_rows)
    cells = [r for r in rec["bench"] if r.get("type") == "cell"]
    peers = [r for r in rec["peers"] if r.get("type") == "peer"]
    tests = next((r for r in rec["tests"] if r.get("type") == "tests"), None)

    rows = []
    for c in cells:
        pcie, dev = fractions(c, bw)
        rows.append(dict(kind="bench", optimizer=c["optimizer"], path=c["path"], size=c["size"], elements=c["elements"],
                         backend=c.get("backend", ""), e2e_ms=c.get("e2e_ms"), kernel_ms=c.get("kernel_ms"),
                         submit_ms=c.get("submit_ms"), upload_bytes=c.get("upload_bytes"),
                         download_bytes=c.get("download_bytes"), device_bytes=c.get("device_bytes"),
                         pcie_fraction=pcie, device_fraction=dev, status=c["status"], reason=c.get("reason", "")))
    for p in peers:
        pcie, dev = fractions(p, bw)
        rows.append(dict(kind="peer", optimizer="AdamW", path=f"{p['peer']} {p.get('mode', '')}".strip(),
                         size=p.get("size", ""), elements=p.get("elements", ""), backend=p.get("backend", ""),
                         e2e_ms=p.get("e2e_ms"), kernel_ms=p.get("kernel_ms"), submit_ms=None,
                         upload_bytes=p.get("upload_bytes"), download_bytes=p.get("download_bytes"),
                         device_bytes=p.get("device_bytes"), pcie_fraction=pcie, device_fraction=dev,
                         status=p["status"], reason=p.get("reason", "")))
    with open(out / "gpu_check.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else ("" if v is None else v)) for k, v in r.items()})

    L = [f"# gpu_check: {info['name'] if info else args.device}", "",
         f"`python -m benchmarks.gpu_check --out {args.out} --device {args.device}{' --quick' if args.quick else ''}` "
         f"took {elapsed_s:.0f} s (limit {args.time_limit:.0f} s).", "",
         "| part | status | seconds | note |", "|---|---|---:|---|"]
    for name, s in statuses.items():
        L.append(f"| {name} | {s['status']} | {s['seconds']:.1f} | {s['reason'].replace('|', '/')[:300]} |")
    L += ["", "## Device", ""]
    if info:
        L += [f"- {info['name']} ({info['device_type']}), driver {info['driver']}, Vulkan {info['api_version']}, "
              f"loader {info['instance_version']}; vendor {info['vendor_id']} device {info['device_id']}",
              f"- backend {info['hyperopt_backend']} (device={info['device']!r}); every device: {', '.join(info['all_devices'])}",
              "- memory heaps: " + "; ".join(f"{h['index']}: {h['bytes'] / 2**30:.1f} GiB{' device-local' if h['device_local'] else ''}"
                                             for h in info["heaps"]),
              "- memory types: " + "; ".join(f"{t['index']} (heap {t['heap']}): {'+'.join(t['flags']) or 'none'}"
                                             for t in info["memory_types"]),
              "- limits: " + ", ".join(f"{k} {v}" for k, v in info["limits"].items()),
              "- instance layers: " + (", ".join(info["layers"]) or "none"),
              "- the backend's choices: " + ", ".join(f"{k} {v}" for k, v in info["backend"].items()),
              f"- host: Python {info['host']['python']}, {info['host']['cores']} cores, "
              + ", ".join(f"{k} {v}" for k, v in info["host"]["packages"].items())]
        if info.get("nvidia_smi"):
            L.append(f"- nvidia-smi: {info['nvidia_smi']}")
    else:
        L.append(_missing("info", statuses))
    L += ["", "## Bandwidth (GPU timestamps, median of 5)", ""]
    if bw_rows:
        L += ["| transfer | MiB | GPU ms | wall ms | GB/s | |", "|---|---:|---:|---:|---:|---|"]
        L += [f"| {r['what']} | {r['bytes'] / 2**20:.0f} | {_f(r['gpu_ms'])} | {_f(r['wall_ms'])} | {_f(r['gbps'], '.2f')} | {r['note']} |"
              for r in bw_rows]
    else:
        L.append(_missing("bandwidth", statuses) + " No fractions of the bounds below.")
    L += ["", "## Tests on the device", ""]
    if tests:
        L.append(f"- `HYPEROPT_TEST_DEVICE={tests['device']}`, validation layer {'on' if tests['validation'] else 'not installed (off)'}: "
                 f"{tests['summary'] or 'no summary'}; Vulkan-backed tests passed: {tests['vulkan_passed']}")
        L += [f"- {line}" for line in tests["failures"]]
    else:
        L.append(_missing("tests", statuses))
    L += _bench_tables(rows, statuses)
    L += _peer_table([r for r in rows if r["kind"] == "peer"], statuses)
    text = "\n".join(L) + "\n"
    (out / "gpu_check.md").write_text(text)
    try:
        plot(rows, out / "gpu_check.png", info["name"] if info else args.device)
    except ImportError as exc:
        print(f"matplotlib not importable ({exc}): no plot written", file=sys.stderr)
    return text


def _missing(part, statuses) -> str:
    if part not in statuses:
        return "Not run (not among --parts)."
    return f"No result: the {part} part {statuses[part]['status']} ({statuses[part]['reason']})."


def _bench_tables(rows, statuses) -> list[str]:
    bench = [r for r in rows if r["kind"] == "bench"]
    L = ["", "## Optimizer steps: CPU path against the Vulkan path", "",
         "Per step: end-to-end ms (NumPy arrays in and out, median), kernel-only and whole-submit GPU ms "
         "(timestamps, median of 3), MB copied host<->device (up + down; 0 where the arenas are mapped, on unified memory) and through device memory (modelled from "
         "the shaders' read/write qualifiers), and the achieved fraction of each bound.", ""]
    if not bench:
        return L + [_missing("bench", statuses)]
    L += ["| optimizer | size | CPU path ms | GPU e2e ms | kernel ms | submit ms | MB up+down | MB device | "
          "host<->device bound | device bound | CPU/GPU |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    keyed = {}
    for r in bench:
        keyed.setdefault((r["optimizer"], r["size"]), {})[r["path"]] = r
    crossover = {}
    order = {o: k for k, o in enumerate(dict.fromkeys(r["optimizer"] for r in bench))}
    elements = {(r["optimizer"], r["size"]): r["elements"] for r in bench}
    for (opt, size), paths in sorted(keyed.items(), key=lambda kv: (order[kv[0][0]], kv[0][1].startswith("mix"),
                                                                      elements[kv[0]])):
        c, g = paths.get("cpu", {}), paths.get("gpu", {})
        ok_c, ok_g = c.get("status") == "ok", g.get("status") == "ok"
        cpu_ms = c.get("e2e_ms") if ok_c else None
        gpu_ms = g.get("e2e_ms") if ok_g else None
        mb = (g.get("upload_bytes") or 0) + (g.get("download_bytes") or 0) if ok_g else None
        ratio = cpu_ms / gpu_ms if _num(cpu_ms) and _num(gpu_ms) and gpu_ms > 0 else None
        cell = lambda r, v, spec=".3f": _f(v, spec) if r.get("status") == "ok" else f"{r.get('status', '')}".strip()
        L.append(f"| {opt} | {size} | {cell(c, cpu_ms)} | {cell(g, gpu_ms)} | {_f(g.get('kernel_ms'))} | {_f(g.get('submit_ms'))} | "
                 f"{_f(mb / 1e6 if mb is not None else None, '.1f')} | {_f((g.get('device_bytes') or 0) / 1e6 if ok_g else None, '.1f')} | "
                 f"{_f(g.get('pcie_fraction'), '.0%')} | {_f(g.get('device_fraction'), '.0%')} | {_f(ratio, '.2f')} |")
        if ratio is not None and size.startswith(tuple("0123456789")):
            crossover.setdefault(opt, []).append((elements[(opt, size)], size, ratio))
    L += ["", "Smallest single-tensor size from which the Vulkan path is faster end to end, among the sizes measured:", ""]
    for opt, pts in crossover.items():
        pts.sort()
        first = next((k for k in range(len(pts)) if all(r > 1 for _, _, r in pts[k:])), None)
        L.append(f"- {opt}: " + (f"{pts[first][1]}" if first is not None else "none"))
    notes = sorted({f"{r['optimizer']} {r['size']} {r['path']}: {r['status']}: {r['reason']}" for r in bench if r["status"] != "ok"})
    if notes:
        L += ["", "Cells without a time:", ""] + [f"- {n}" for n in notes]
    return L


def _peer_table(peers, statuses) -> list[str]:
    L = ["", "## AdamW peers on CUDA", ""]
    if not peers:
        return L + [_missing("peers", statuses)]
    ok = [p for p in peers if p["status"] == "ok"]
    if ok:
        L += ["| peer | size | e2e ms | kernel ms | host<->device bound | device bound |", "|---|---|---:|---:|---:|---:|"]
        L += [f"| {p['path']} | {p['size']} | {_f(p['e2e_ms'])} | {_f(p['kernel_ms'])} | {_f(p['pcie_fraction'], '.0%')} | "
              f"{_f(p['device_fraction'], '.0%')} |" for p in ok]
    L += [f"- {' '.join(filter(None, (p['path'], p['size'])))}: {p['status']}: {p['reason']}" for p in peers if p["status"] != "ok"]
    return L


def plot(rows, path, title):
    """One panel per optimizer: CPU path, Vulkan end to end and kernel-only (AdamW: the CUDA peers too)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    bench = [r for r in rows if r["kind"] == "bench" and r["status"] == "ok"]
    optimizers = list(dict.fromkeys(r["optimizer"] for r in rows if r["kind"] == "bench")) or ["AdamW"]
    ncol = min(3, len(optimizers))
    nrow = -(-len(optimizers) // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.6 * ncol, 3.5 * nrow), squeeze=False)
    for ax, opt in zip(axes.ravel(), optimizers):
        series = {}      # single tensors as lines; the 200-tensor mixes as separate markers

        def add(name, r, ms):
            mix = str(r["size"]).startswith("mix")
            series.setdefault((name + (" (200 tensors)" if mix else ""), mix), []).append((r["elements"], ms))

        for r in bench:
            if r["optimizer"] == opt:
                add(f"{r['path']} e2e", r, r["e2e_ms"])
                if r["path"] == "gpu" and _num(r["kernel_ms"]):
                    add("gpu kernel", r, r["kernel_ms"])
        if opt == "AdamW":
            for r in rows:
                if r["kind"] == "peer" and r["status"] == "ok":
                    add(f"{r['path']} e2e", r, r["e2e_ms"])
        for (name, mix), pts in series.items():
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="x" if mix else "o", ms=5 if mix else 3,
                    label=name, ls="none" if mix else (":" if "kernel" in name else "-"))
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(opt, fontsize=9)
        ax.set_xlabel("elements", fontsize=8)
        ax.set_ylabel("ms per step", fontsize=8)
        ax.grid(alpha=0.3)
        if series:
            ax.legend(fontsize=6)
    for ax in axes.ravel()[len(optimizers):]:
        ax.axis("off")
    fig.suptitle(f"gpu_check: {title}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
