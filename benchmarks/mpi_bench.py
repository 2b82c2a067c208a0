"""Data-parallel optimizers over MPI: state memory per rank, step time, bytes communicated per step.

    python -m benchmarks.mpi_bench                         # launches mpiexec -n 1, 2, 4; one table
    python -m benchmarks.mpi_bench --ranks 1 2 --elements 1000000 --optimizer HIOptimizer
    python -m benchmarks.mpi_bench --device vulkan:cpu --out results/   # each rank on a Vulkan device
    mpiexec -n 4 python -m benchmarks.mpi_bench --worker   # one measurement (what the launcher runs)

Each rank steps the optimizer over the same parameter list (a few layers, ``--elements`` in all)
with its own gradients.  Reported per rank count: the optimizer state a rank holds (its shard of
the per-element buffers), the median wall time of a step (gradient mean, kernels, parameter gather;
the slowest rank), and the bytes one rank hands to MPI per step (``DistributedBackend.bytes_sent``:
gradient pieces, gathered sums and parameter pieces).  Ranks share the machine's cores: on one
machine the step time shows the cost of the exchange, not a speed-up.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np


def _shapes(elements):
    """Four layers of a deep MLP-like stack, scaled to about ``elements`` parameters in all."""
    width = max(8, int((elements / 4) ** 0.5))     # 4 w^2 + 3 w elements
    return [(width, width), (width,), (width, width), (width, 2 * width), (2 * width,)]


def worker(args):
    from mpi4py import MPI
    from benchmarks.train_mpi import make_optimizer
    comm = MPI.COMM_WORLD
    rng = np.random.default_rng(comm.rank)
    shapes = _shapes(args.elements)
    params = [np.random.default_rng(0).standard_normal(s).astype(np.float32) for s in shapes]
    opt = make_optimizer(args.optimizer, params, comm if comm.size > 1 or args.force_comm else None, args.device)
    grads = [[(0.01 * rng.standard_normal(s)).astype(np.float32) for s in shapes] for _ in range(2)]
    backend = opt._backend
    opt.step(gradients=grads[0])                      # first step: state appears
    times, sent = [], getattr(backend, "bytes_sent", 0)
    for t in range(args.steps):
        comm.Barrier()
        start = time.perf_counter()
        opt.step(gradients=grads[t % 2])
        times.append(time.perf_counter() - start)
    sent = (getattr(backend, "bytes_sent", 0) - sent) / args.steps
    # the per-element state this rank keeps: its pieces of every state buffer (on its device, or here)
    state = sum((b - a) * opt._arrays[i].itemsize for i, (a, b) in backend._mine.items()) * len(backend.buffers)
    rows = comm.gather({"state_bytes": state, "step_s": float(np.median(times)), "sent_per_step": sent}, root=0)
    if comm.rank == 0:
        print(json.dumps({"ranks": comm.size, "optimizer": args.optimizer, "kernels": opt.backend, "elements": sum(int(np.prod(s)) for s in shapes),
                          "state_bytes_max": max(r["state_bytes"] for r in rows),
                          "step_s": max(r["step_s"] for r in rows),
                          "sent_per_step": max(r["sent_per_step"] for r in rows)}))


def launch(args, argv=None):
    mpiexec = shutil.which("mpiexec", path=os.path.dirname(sys.executable)) or shutil.which("mpiexec")
    if mpiexec is None:
        sys.exit("mpi_bench: no mpiexec found (pip install -e '.[mpi]')")
    from benchmarks.cli import backend_label, command_line, write_results
    columns = ["ranks", "optimizer", "backend", "elements", "state/rank MiB", "step ms", "sent/step MiB"]
    print(" ".join(f"{h:>14}" for h in columns))
    rows = []
    for n in args.ranks:
        cmd = [mpiexec, "-n", str(n), sys.executable, "-m", "benchmarks.mpi_bench", "--worker",
               "--elements", str(args.elements), "--steps", str(args.steps), "--optimizer", args.optimizer]
        if args.device:
            cmd += ["--device", args.device]
        if n == 1:
            cmd.append("--force-comm")                # the distributed layer on one rank (not comm=None)
        env = dict(os.environ, HYPEROPT_NUMPY_THREADS=os.environ.get("HYPEROPT_NUMPY_THREADS", "1"))
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, env=env)
        if out.returncode:
            sys.exit(f"mpi_bench: {' '.join(cmd)} failed:\n{out.stderr[-2000:]}")
        r = json.loads(out.stdout.strip().splitlines()[-1])
        row = dict(zip(columns, [r["ranks"], r["optimizer"], backend_label(r["kernels"]), r["elements"],
                                 round(r["state_bytes_max"] / 2**20, 2), round(1e3 * r["step_s"], 2),
                                 round(r["sent_per_step"] / 2**20, 2)]))
        print(" ".join(f"{row[c]!s:>14}" for c in columns), flush=True)
        rows.append(row)
    if args.out:
        stem = f"mpi_bench_{args.device.replace(':', '-')}" if args.device else "mpi_bench"
        md, _ = write_results(
            args.out, stem, columns, rows, title="Data-parallel optimizers over MPI: state per rank, step time, "
            "bytes per step", command=command_line("benchmarks.mpi_bench", argv),
            sizes=f"{rows[0]['elements']} elements" if rows else "", notes=[
                "ranks share this machine's cores, so a step time shows the exchange's cost, not a speed-up",
                "state/rank: the largest per-element optimizer state one rank holds; step: median wall time "
                "of the slowest rank; sent/step: bytes one rank hands to MPI per step"])
        print(f"wrote {md}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ranks", type=int, nargs="*", default=[1, 2, 4])
    ap.add_argument("--elements", type=int, default=4_000_000)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--optimizer", default="AdamW")
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--device", default=None, help="each rank's device, e.g. vulkan:cpu (default: the CPU path)")
    ap.add_argument("--out", default=None, help="folder to write mpi_bench.md into")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--force-comm", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    worker(args) if args.worker else launch(args, argv)


if __name__ == "__main__":
    main()
