"""HysteroGrad on two moons: train MLP([2, 16, 16, 2]) and draw the optimizer's diagnostics.

    python benchmarks/hysterograd_moons.py [OUT.png] [--epochs 100] [--gpu] [--device cpu]

Top panel: the training loss per step and the hysteresis barrier h.  Bottom panel: the
preconditioned gradient norm n against the barrier, with the steps where the optimizer was Liquid
(parameters moved) shaded green; where the norm falls under the barrier it is Frozen.
Hyperparameters are those of the upstream Moons example (lr 0.01, stiffening 0.05, 100 epochs).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

if __package__ in (None, ""):   # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.tasks import MLP, train, two_moons  # noqa: E402
from hyperopt.hysterograd import HIOptimizer  # noqa: E402


def run(epochs=100, lr=0.01, stiffening_factor=0.05, use_gpu=False, device=None, seed=0, **kwargs):
    """Train on two moons; returns per-step losses, norms, barriers, Liquid flags and test accuracy."""
    X_train, y_train, X_test, y_test = two_moons(seed=seed)
    model = MLP([2, 16, 16, 2], seed=seed)
    opt = HIOptimizer(model.params, lr=lr, stiffening_factor=stiffening_factor, use_gpu=use_gpu,
                      device=device, **kwargs)
    norms, barriers, liquid = [], [], []

    def record(loss, out):
        status, norm, barrier = out
        norms.append(norm)
        barriers.append(barrier)
        liquid.append(status == "Liquid")

    losses = train(model, opt, X_train, y_train, epochs=epochs, seed=seed, on_step=record)
    return {
        "backend": opt.backend,
        "loss": np.array(losses),
        "norm": np.array(norms),
        "barrier": np.array(barriers),
        "liquid": np.array(liquid),
        "train_accuracy": model.accuracy(X_train, y_train),
        "test_accuracy": model.accuracy(X_test, y_test),
    }


def plot(result, path):
    """Write the two-panel diagnostics figure to ``path`` (PNG; matplotlib's Agg backend)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = np.arange(1, len(result["loss"]) + 1)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    top.plot(steps, result["loss"], color="tab:blue", lw=1, label="loss")
    top.set_yscale("log")
    top.set_ylabel("training loss")
    twin = top.twinx()
    twin.plot(steps, result["barrier"], color="tab:red", ls="--", lw=1.2, label="barrier h")
    twin.set_ylabel("hysteresis barrier h")
    top.legend(handles=top.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0], loc="upper right")
    top.set_title(f"HysteroGrad on two moons ({result['backend']}): test accuracy {result['test_accuracy']:.1%}")

    bottom.fill_between(steps, 0, 1, where=result["liquid"], step="mid", color="tab:green", alpha=0.25,
                        transform=bottom.get_xaxis_transform(), label="Liquid")
    bottom.fill_between(steps, 0, 1, where=~result["liquid"], step="mid", color="tab:gray", alpha=0.2,
                        transform=bottom.get_xaxis_transform(), label="Frozen")
    bottom.plot(steps, result["norm"], color="black", lw=0.8, label="preconditioned gradient norm n")
    bottom.plot(steps, result["barrier"], color="tab:red", ls="--", lw=1.2, label="barrier h")
    bottom.set_yscale("log")
    bottom.set_xlabel("step")
    bottom.set_ylabel("norm / barrier")
    bottom.legend(loc="upper right", framealpha=0.9)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", nargs="?", default="results/hysterograd_moons.png")
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--gpu", action="store_true", help="run the Vulkan kernels")
    ap.add_argument("--device", default=None, help="Vulkan device selector (e.g. cpu for lavapipe)")
    args = ap.parse_args(argv)
    result = run(epochs=args.epochs, use_gpu=args.gpu, device=args.device)
    plot(result, args.out)
    first_frozen = np.flatnonzero(~result["liquid"])
    print(f"backend {result['backend']}: {len(result['loss'])} steps, final loss {result['loss'][-10:].mean():.4g}, "
          f"train accuracy {result['train_accuracy']:.1%}, test accuracy {result['test_accuracy']:.1%}, "
          f"Liquid {result['liquid'].mean():.0%} of steps, first Frozen step "
          f"{first_frozen[0] + 1 if first_frozen.size else 'none'}; figure: {args.out}")


if __name__ == "__main__":
    main()
