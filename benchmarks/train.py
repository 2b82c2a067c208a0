"""Train a NumPy MLP with every optimizer on both backends; plot the loss curves.

    python -m benchmarks.train                   # small default: moons and digits, every optimizer
    python -m benchmarks.train --large           # wider network, more epochs
    python -m benchmarks.train --only AdamW HIOptimizer --datasets digits

For each dataset (two moons; scikit-learn's bundled 8x8 digits) and optimizer, the same network
(same seed, same batches) is trained with ``use_gpu=False`` and with ``use_gpu=True``; the script
reports test accuracy, wall time and the largest difference between the two loss curves, and writes
results/training_<dataset>.png.  ``CONFIGS`` holds each optimizer's settings for these tasks.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

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
    return HCNaturalGrad(params, lr=0.5, use_gpu=use_gpu, device=device)


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
    t0 = time.perf_counter()
    losses = train(model, opt, Xtr, ytr, epochs=EPOCHS[dataset][1 if large else 0], seed=seed)
    wall = time.perf_counter() - t0
    backend = opt.backend
    if hasattr(opt, "close"):
        opt.close()
    return np.array(losses), model.accuracy(Xte, yte), wall, backend


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="*", default=list(CONFIGS))
    ap.add_argument("--datasets", nargs="*", default=list(DATASETS))
    ap.add_argument("--large", action="store_true")
    ap.add_argument("--device", default=None, help="Vulkan device (default: gpu, else cpu)")
    ap.add_argument("--out", default="results")
    args = ap.parse_args(argv)
    from benchmarks.run import vulkan_device
    vk = vulkan_device(args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print("| dataset | optimizer | backend | test accuracy | wall s | max |loss numpy - loss vulkan| |")
    print("|---|---|---|---:|---:|---:|")
    for dataset in args.datasets:
        curves = {}
        for name in args.only:
            runs = [run_one(name, dataset, False, large=args.large)]
            if vk:
                runs.append(run_one(name, dataset, True, vk[0], large=args.large))
            diff = float(np.max(np.abs(runs[0][0] - runs[1][0]))) if len(runs) == 2 else float("nan")
            for losses, acc, wall, backend in runs:
                curves[(name, backend)] = losses
                print(f"| {dataset} | {name} | {backend[:30]} | {acc:.4f} | {wall:.2f} | {diff:.2e} |", flush=True)
        plot(curves, dataset, out / f"training_{dataset}.png")


def plot(curves, dataset, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(9, 5))
    for (name, backend), losses in curves.items():
        smooth = np.convolve(losses, np.ones(10) / 10, mode="valid")
        ax.plot(smooth, "-" if backend == "numpy" else "--", label=f"{name} ({backend.split(':')[0]})")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (10-step mean)")
    ax.set_title(f"{dataset}: NumPy (solid) and Vulkan (dashed), same seed and batches")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
