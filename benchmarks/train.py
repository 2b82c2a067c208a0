"""Train a NumPy MLP with every optimizer; write a results table and the loss curves.

    python -m benchmarks.train --out results                      # moons and digits, every optimizer, CPU path
    python -m benchmarks.train --only AdamW HIOptimizer --datasets digits
    python -m benchmarks.train --device vulkan:cpu --out results  # also with use_gpu=True on that device
    python -m benchmarks.train --large                            # wider network, more epochs

For each dataset (two moons; scikit-learn's bundled 8x8 digits) and optimizer, the same network
(same seed, same batches) is trained on the CPU path (``use_gpu=False``) and, with ``--device``, on
that device too; the script reports test accuracy, wall time and the largest difference between
the loss curves of the two backends.  Writes training.md, training.csv and training_<dataset>.png
(colour = optimizer, line style = backend) under --out.  ``CONFIGS`` holds each optimizer's
settings for these tasks.  Two optimizers run here as what they reduce to on a plain MLP:
HCNaturalGrad gets branches (the hidden layer's mean activation under K = 8 noisy forward passes,
see benchmarks/mechanisms.py), HL runs as the damped heavy ball of ``HL.for_params`` (an MLP has no
state dynamics; benchmarks/mechanisms.py runs HL on a continuous-time model with its costates).
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from benchmarks.cli import (OPTIMIZER_COLOURS, backend_label, backend_style, command_line, make_parser,
                            write_results)
from benchmarks.tasks import MLP, digits, train, two_moons

DATASETS = {"moons": two_moons, "digits": digits}
# (epochs small, epochs large) and the hidden sizes for each dataset
SHAPES = {"moons": ([16, 16], [64, 64]), "digits": ([64], [256])}
EPOCHS = {"moons": (60, 200), "digits": (30, 80)}


def _adamw(params, use_gpu, device):
    from hyperopt import AdamW
    return AdamW(params, lr=1e-2, use_gpu=use_gpu, device=device)


def _hyper(params, use_gpu, device):
    from hyperopt.hypergradient import HypergradientAdamW
    return HypergradientAdamW(params, lr=1e-2, beta_hyper=1e-4, use_gpu=use_gpu, device=device)


def _auto_hyper(params, use_gpu, device):
    from hyperopt.hypergradient import AutoHypergradientAdamW
    return AutoHypergradientAdamW(params, lr=1e-2, use_gpu=use_gpu, device=device)


def _hysterograd(params, use_gpu, device):
    from hyperopt.hysterograd import HIOptimizer
    return HIOptimizer(params, lr=0.01, stiffening_factor=0.05, use_gpu=use_gpu, device=device)


def _autosgm(params, use_gpu, device):
    from hyperopt.autosgm import AutoSGM
    return AutoSGM(params, lr_cfg=(True, 1e-2, 0), beta_cfg=(0.9999, 0.999, 0.9, 0, 0, True),
                   rc_cfg=(0, 0, 0, 2, 1, 1000, 1, 1, 0), use_gpu=use_gpu, device=device)


def _natural_grad(params, use_gpu, device):
    from hyperopt.natural_grad import HCNaturalGrad
    return HCNaturalGrad(params, lr=0.02, fisher_damp=0.1, projection="hash", use_gpu=use_gpu, device=device)


def noisy_hidden_branches(model, X, rng, k=8, noise=0.1):
    """HCNaturalGrad's branches for an MLP: the first hidden layer's mean activation (D = its width)
    under ``k`` forward passes of the batch with Gaussian input noise ``noise``: a K x D matrix whose
    covariance says how the network's hidden state moves under input perturbation."""
    rows = [np.tanh((X + noise * rng.standard_normal(X.shape).astype(X.dtype)) @ model.params[0]
                    + model.params[1]).mean(axis=0) for _ in range(k)]
    return np.stack(rows)


def _hl(params, use_gpu, device):
    from hyperopt.hamiltonian import HL
    return HL.for_params(params, delta=0.3, theta=0.1, beta=0.5, use_gpu=use_gpu, device=device)


CONFIGS = {"AdamW": _adamw, "HypergradientAdamW": _hyper, "AutoHypergradientAdamW": _auto_hyper,
           "HIOptimizer": _hysterograd, "AutoSGM": _autosgm, "HCNaturalGrad": _natural_grad, "HL": _hl}


def run_one(name, dataset, use_gpu, device=None, *, large=False, seed=0):
    """Train; returns (losses, test accuracy, wall seconds, backend)."""
    Xtr, ytr, Xte, yte = DATASETS[dataset](seed=seed)
    hidden = SHAPES[dataset][1 if large else 0]
    model = MLP([Xtr.shape[1], *hidden, int(ytr.max()) + 1], seed=seed)
    opt = CONFIGS[name](model.params, use_gpu, device)
    step_kwargs = None
    if name == "HCNaturalGrad":
        rng = np.random.default_rng(seed + 1)
        step_kwargs = lambda X: {"branches": noisy_hidden_branches(model, X, rng)}   # noqa: E731
    t0 = time.perf_counter()
    losses = train(model, opt, Xtr, ytr, epochs=EPOCHS[dataset][1 if large else 0], seed=seed,
                   step_kwargs=step_kwargs)
    wall = time.perf_counter() - t0
    backend = opt.backend
    if hasattr(opt, "close"):
        opt.close()
    return np.array(losses), model.accuracy(Xte, yte), wall, backend


COLUMNS = ["dataset", "optimizer", "backend", "test accuracy", "final loss", "wall s", "max loss difference"]


def main(argv=None):
    ap = make_parser(__doc__, prog="python -m benchmarks.train")
    ap.add_argument("--only", nargs="+", choices=list(CONFIGS), default=list(CONFIGS), metavar="OPTIMIZER",
                    help=f"optimizers to train, from: {', '.join(CONFIGS)} (default: all)")
    ap.add_argument("--datasets", nargs="+", choices=list(DATASETS), default=list(DATASETS), metavar="DATASET",
                    help=f"datasets, from: {', '.join(DATASETS)} (default: both)")
    ap.add_argument("--large", action="store_true", help="wider network, more epochs")
    ap.add_argument("--device", default=None,
                    help="also train with use_gpu=True on this device (e.g. gpu, vulkan:cpu); default: CPU path only")
    ap.add_argument("--out", default="results", help="output folder (default: results)")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for dataset in args.datasets:
        curves = {}
        for name in args.only:
            runs = [run_one(name, dataset, False, large=args.large)]
            if args.device:
                runs.append(run_one(name, dataset, True, args.device, large=args.large))
            diff = float(np.max(np.abs(runs[0][0] - runs[1][0]))) if len(runs) == 2 else float("nan")
            for losses, acc, wall, backend in runs:
                curves[(name, backend)] = losses
                rows.append({"dataset": dataset, "optimizer": name, "backend": backend_label(backend),
                             "test accuracy": acc, "final loss": float(np.mean(losses[-10:])), "wall s": wall,
                             "max loss difference": diff if len(runs) == 2 else "n/a (one backend)"})
                print(" | ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in rows[-1].values()),
                      flush=True)
        plot(curves, dataset, out / f"training_{dataset}.png")
    hidden = {d: SHAPES[d][1 if args.large else 0] for d in args.datasets}
    epochs = {d: EPOCHS[d][1 if args.large else 0] for d in args.datasets}
    md, csv = write_results(out, "training", COLUMNS, rows, title="Training an MLP with every optimizer",
                            command=command_line("benchmarks.train", argv),
                            sizes="; ".join(f"{d}: hidden {hidden[d]}, {epochs[d]} epochs, batch 64"
                                            for d in args.datasets),
                            notes=["final loss: mean training loss of the last 10 steps",
                                   "max loss difference: largest |loss(CPU path) - loss(device)| over the run",
                                   "HCNaturalGrad with branches (noisy hidden states, K=8); HL as a heavy ball "
                                   "(HL.for_params)"])
    print(f"wrote {md} and {csv}")


def plot(curves, dataset, path):
    """Loss curves: colour = optimizer, line style = backend, legend outside the axes."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(10, 5))
    several = len({backend for _, backend in curves}) > 1
    for (name, backend), losses in curves.items():
        smooth = np.convolve(losses, np.ones(10) / 10, mode="valid")
        cpu = not backend.startswith("vulkan")
        # the CPU path wide and pale, a device's curve thin on top: where they agree both stay visible
        ax.plot(smooth, backend_style(backend), color=OPTIMIZER_COLOURS[name], lw=2.6 if cpu and several else 1.3,
                alpha=0.45 if cpu and several else 1.0, label=f"{name} ({backend_label(backend)})")
    ax.set_yscale("log")
    ax.set_xlabel("step (batch of 64)")
    ax.set_ylabel("training loss (10-step mean)")
    ax.set_title(f"{dataset}: every optimizer, same network, seed and batches"
                 + ("\ncolour = optimizer, line style = backend (a device's curve drawn over the CPU path's)"
                    if several else ""))
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
