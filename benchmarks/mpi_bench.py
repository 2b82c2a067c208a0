"""Data-parallel optimizers over MPI: state memory per rank, step time, bytes communicated per step.

    python -m benchmarks.mpi_bench                         # launches mpiexec -n 1, 2, 4; one table
    python -m benchmarks.mpi_bench --ranks 1 2 --elements 1000000 --optimizer HIOptimizer
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
    opt = make_optimizer(args.optimizer, params, comm if comm.size > 1 or args.force_comm else None)
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
    state = sum(b.nbytes for bufs in backend._state.values() for b in bufs)
    rows = comm.gather({"state_bytes": state, "step_s": float(np.median(times)), "sent_per_step": sent}, root=0)
    if comm.rank == 0:
        print(json.dumps({"ranks": comm.size, "optimizer": args.optimizer, "kernels": opt.backend, "elements": sum(int(np.prod(s)) for s in shapes),
                          "state_bytes_max": max(r["state_bytes"] for r in rows),
                          "step_s": max(r["step_s"] for r in rows),
                          "sent_per_step": max(r["sent_per_step"] for r in rows)}))


def launch(args):
    mpiexec = shutil.which("mpiexec", path=os.path.dirname(sys.executable)) or shutil.which("mpiexec")
    if mpiexec is None:
        sys.exit("mpi_bench: no mpiexec found (pip install -e '.[mpi]')")
    print(f"{'ranks':>5} {'optimizer':>22} {'kernels':>7} {'elements':>10} {'state/rank MiB':>15} {'step ms':>9} {'sent/step MiB':>14}")
    for n in args.ranks:
        cmd = [mpiexec, "-n", str(n), sys.executable, "-m", "benchmarks.mpi_bench", "--worker",
               "--elements", str(args.elements), "--steps", str(args.steps), "--optimizer", args.optimizer]
        if n == 1:
            cmd.append("--force-comm")                # the distributed layer on one rank (not comm=None)
        env = dict(os.environ, HYPEROPT_NUMPY_THREADS=os.environ.get("HYPEROPT_NUMPY_THREADS", "1"))
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, env=env)
        if out.returncode:
            sys.exit(f"mpi_bench: {' '.join(cmd)} failed:\n{out.stderr[-2000:]}")
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{r['ranks']:>5} {r['optimizer']:>22} {r['kernels']:>7} {r['elements']:>10} {r['state_bytes_max'] / 2**20:>15.2f} "
              f"{1e3 * r['step_s']:>9.2f} {r['sent_per_step'] / 2**20:>14.2f}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ranks", type=int, nargs="*", default=[1, 2, 4])
    ap.add_argument("--elements", type=int, default=4_000_000)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--optimizer", default="AdamW")
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--force-comm", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    worker(args) if args.worker else launch(args)


if __name__ == "__main__":
    main()
