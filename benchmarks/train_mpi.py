"""Data-parallel training of the NumPy MLP over MPI (``comm=``): each rank takes its part of every batch.

    mpiexec -n 2 python -m benchmarks.train_mpi                       # moons, AdamW
    mpiexec -n 4 python -m benchmarks.train_mpi --dataset digits --optimizer HIOptimizer
    python -m benchmarks.train_mpi --emulate 2     # one process computing both ranks' parts
    mpiexec -n 2 python -m benchmarks.train_mpi --device vulkan:cpu   # each rank on a Vulkan device

Every rank draws the same global batches (same seed), cuts each into equal contiguous parts and
computes the gradient of its part's mean loss; the optimizer averages the parts over the ranks (in a
fixed order), so all ranks hold the same parameters.  ``--emulate N`` computes the N parts in one
process and averages them with ``hyperopt.distributed.rank_mean``: its parameters are bit-identical
to an ``mpiexec -n N`` run, which the printed checksum shows.  Without either, one process trains
on whole batches (the same examples, a gradient rounded differently): the accuracy is the same.
A last partial batch is dropped, so the parts are always equal in size.
"""
from __future__ import annotations

import argparse
import hashlib
import time

import numpy as np

from benchmarks.tasks import MLP, digits, two_moons

DATASETS = {"moons": (two_moons, [16, 16], 60), "digits": (digits, [64], 30)}


def make_optimizer(name, params, comm, device=None):
    """The settings of benchmarks/train.py, on the CPU path (or on ``device``, e.g. ``"vulkan:cpu"``)."""
    import hyperopt
    kw = dict(use_gpu=device not in (None, "cpu"), device=device, comm=comm)
    if name == "AdamW":
        return hyperopt.AdamW(params, lr=1e-2, **kw)
    if name == "HypergradientAdamW":
        return hyperopt.HypergradientAdamW(params, lr=1e-2, beta_hyper=1e-4, **kw)
    if name == "AutoHypergradientAdamW":
        return hyperopt.AutoHypergradientAdamW(params, lr=1e-2, **kw)
    if name == "HIOptimizer":
        return hyperopt.HIOptimizer(params, lr=0.01, stiffening_factor=0.05, **kw)
    if name == "AutoSGM":
        return hyperopt.AutoSGM(params, lr_cfg=(True, 1e-2, 0), beta_cfg=(0.9999, 0.999, 0.9, 0, 0, True),
                                rc_cfg=(0, 0, 0, 2, 1, 1000, 1, 1, 0), **kw)
    if name == "HCNaturalGrad":
        return hyperopt.HCNaturalGrad(params, lr=0.5, **kw)
    if name == "HL":
        return hyperopt.HL.for_params(params, delta=0.3, theta=0.1, beta=0.5, **kw)
    raise ValueError(f"unknown optimizer {name!r}")


OPTIMIZERS = ["AdamW", "HypergradientAdamW", "AutoHypergradientAdamW", "HIOptimizer", "AutoSGM", "HCNaturalGrad", "HL"]


def run(dataset="moons", optimizer="AdamW", *, epochs=None, batch_size=64, comm=None, emulate=1, seed=0,
        device=None):
    """Train; returns (per-step mean losses, test accuracy, parameter checksum, seconds)."""
    load, hidden, default_epochs = DATASETS[dataset]
    Xtr, ytr, Xte, yte = load(seed=seed)
    model = MLP([Xtr.shape[1], *hidden, int(ytr.max()) + 1], seed=seed)
    ranks, rank = (comm.size, comm.rank) if comm is not None else (emulate, None)
    if batch_size % ranks:
        raise ValueError(f"batch size {batch_size} does not divide into {ranks} equal parts")
    opt = make_optimizer(optimizer, model.params, comm, device)
    rng = np.random.default_rng(seed)
    losses, start = [], time.perf_counter()
    for _ in range(epochs or default_epochs):
        order = rng.permutation(len(Xtr))
        for s in range(0, len(Xtr) - batch_size + 1, batch_size):
            parts = np.split(order[s:s + batch_size], ranks)
            if rank is not None:                  # this rank's part; the optimizer averages over ranks
                loss, grads = model.loss_and_grads(Xtr[parts[rank]], ytr[parts[rank]])
            else:                                 # every part here, averaged as the ranks would
                from hyperopt.distributed import rank_mean
                out = [model.loss_and_grads(Xtr[p], ytr[p]) for p in parts]
                loss = float(np.mean([o[0] for o in out]))
                grads = [rank_mean([o[1][k] for o in out]) for k in range(len(model.params))]
            opt.step(gradients=grads)
            losses.append(loss)
    seconds = time.perf_counter() - start
    checksum = hashlib.sha256(b"".join(p.tobytes() for p in model.params)).hexdigest()[:16]
    return losses, model.accuracy(Xte, yte), checksum, seconds


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", choices=sorted(DATASETS), default="moons")
    ap.add_argument("--optimizer", choices=OPTIMIZERS, default="AdamW")
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=64, help="global batch (all ranks together)")
    ap.add_argument("--emulate", type=int, default=1, help="one process computing this many ranks' parts")
    ap.add_argument("--device", default=None, help="each rank's device, e.g. vulkan:cpu (default: the CPU path)")
    args = ap.parse_args(argv)
    comm = None
    try:
        from mpi4py import MPI
        if MPI.COMM_WORLD.size > 1:
            comm = MPI.COMM_WORLD
    except ImportError:
        pass
    if comm is not None and args.emulate != 1:
        ap.error("--emulate is for one process; under mpiexec the ranks are real")
    losses, acc, checksum, seconds = run(args.dataset, args.optimizer, epochs=args.epochs,
                                         batch_size=args.batch_size, comm=comm, emulate=args.emulate,
                                         device=args.device)
    final = float(np.mean(losses[-10:]))
    if comm is not None:                          # the ranks' parts together (for the printout only)
        final = float(np.mean(comm.gather(final, root=0) or [0.0]))
    if comm is None or comm.rank == 0:
        how = f"{comm.size} ranks" if comm is not None else (f"1 process emulating {args.emulate} ranks"
                                                             if args.emulate > 1 else "1 process")
        where = f" ({args.device})" if args.device else ""
        print(f"{args.dataset} {args.optimizer} on {how}{where}: {len(losses)} steps, final loss "
              f"{final:.4f}, test accuracy {acc:.4f}, parameters sha256 {checksum}, {seconds:.2f} s")


if __name__ == "__main__":
    main()
