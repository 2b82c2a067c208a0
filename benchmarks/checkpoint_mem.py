"""Peak memory per rank of hyperopt.save / hyperopt.load under MPI (tracemalloc: Python and NumPy
allocations made during the call, beyond what was held before it).

    mpiexec -n 4 python -m benchmarks.checkpoint_mem                      # consolidated file
    mpiexec -n 4 python -m benchmarks.checkpoint_mem --shards             # one file per rank
    mpiexec -n 4 python -m benchmarks.checkpoint_mem --elements 8000000   # per parameter (4 of them)

AdamW with amsgrad over four float32 parameters: 3 buffers of state, 12 * 4 * elements bytes in all.
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
import tracemalloc

import numpy as np


def _measure(comm, fn):
    comm.Barrier()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    t = time.perf_counter()
    fn()
    took = time.perf_counter() - t
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    return comm.gather((peak, took), root=0)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--elements", type=int, default=8_000_000, help="elements per parameter (4 parameters)")
    parser.add_argument("--shards", action="store_true", help="save a shard set instead of one file")
    parser.add_argument("--dir", default=None, help="a directory every rank sees (default: a new temporary one)")
    args = parser.parse_args(argv)
    from mpi4py import MPI
    import hyperopt
    from hyperopt import AdamW
    comm = MPI.COMM_WORLD
    n = args.elements
    params = [np.full(n, 0.5, np.float32) for _ in range(4)]
    opt = AdamW(params, lr=1e-3, amsgrad=True, use_gpu=False, comm=comm)
    opt.step(gradients=[np.full(n, 0.01 * (comm.rank + 1), np.float32) for _ in range(4)])
    made = args.dir is None and comm.rank == 0
    directory = comm.bcast((args.dir or tempfile.mkdtemp(prefix="checkpoint_mem.")) if comm.rank == 0 else None)
    path = os.path.join(directory, "run.ckpt")
    save = _measure(comm, lambda: hyperopt.save(opt, path, shards=args.shards))
    other = AdamW([np.zeros(n, np.float32) for _ in range(4)], lr=1e-3, amsgrad=True, use_gpu=False, comm=comm)
    load = _measure(comm, lambda: hyperopt.load(other, path))
    comm.Barrier()
    if comm.rank == 0:
        state = 12 * 4 * n
        kind = "shard set" if args.shards else "consolidated file"
        print(f"{kind}, {comm.size} ranks, {state / 2**20:.0f} MiB of state; peak MiB per rank:")
        for what, rows in (("save", save), ("load", load)):
            print(f"  {what}: " + ", ".join(f"r{r}={p / 2**20:.0f}" for r, (p, _) in enumerate(rows))
                  + f"  ({max(t for _, t in rows):.2f} s)")
        if made:
            shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
