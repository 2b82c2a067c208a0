"""HysteroGrad on two moons: train MLP([2, 16, 16, 2]) and draw the optimizer's diagnostics.

    python -m benchmarks.hysterograd_moons --out results            # CPU path, 100 epochs (seconds)
    python -m benchmarks.hysterograd_moons --epochs 50 --device vulkan:cpu --out results

Top panel: the training loss per step and the hysteresis barrier h.  Bottom panel: the
preconditioned gradient norm n against the barrier, with the steps where the optimizer was Liquid
(parameters moved) shaded green; where the norm falls under the barrier it is Frozen.
Hyperparameters are those of the HysteroGrad repository's Moons example (lr 0.01, stiffening 0.05,
100 epochs).  Writes hysterograd_moons.png, .md and .csv under --out.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

if __package__ in (None, ""):   # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.cli import (backend_label, command_line, float_range, int_range, make_parser,  # noqa: E402
                            write_results)
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


def plot(result, path, title=None):
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
    twin.set_yscale("log")
    top.legend(handles=top.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0],
               loc="upper left", bbox_to_anchor=(1.08, 1), fontsize=8)
    top.set_title(title or f"HysteroGrad on two moons, MLP [2, 16, 16, 2] ({backend_label(result['backend'])}): "
                           f"test accuracy {result['test_accuracy']:.1%}")

    bottom.fill_between(steps, 0, 1, where=result["liquid"], step="mid", color="tab:green", alpha=0.25,
                        transform=bottom.get_xaxis_transform(), label="Liquid")
    bottom.fill_between(steps, 0, 1, where=~result["liquid"], step="mid", color="tab:gray", alpha=0.2,
                        transform=bottom.get_xaxis_transform(), label="Frozen")
    bottom.plot(steps, result["norm"], color="black", lw=0.8, label="preconditioned gradient norm n")
    bottom.plot(steps, result["barrier"], color="tab:red", ls="--", lw=1.2, label="barrier h")
    bottom.set_yscale("log")
    bottom.set_xlabel("step")
    bottom.set_ylabel("norm / barrier")
    bottom.legend(loc="upper left", bbox_to_anchor=(1.08, 1), fontsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def main(argv=None):
    ap = make_parser(__doc__, prog="python -m benchmarks.hysterograd_moons")
    ap.add_argument("--epochs", type=int_range(1, 10000), default=100, help="epochs (default 100)")
    ap.add_argument("--lr", type=float_range(1e-8, 10.0), default=0.01, help="learning rate (default 0.01)")
    ap.add_argument("--stiffening", type=float_range(0.0, 100.0), default=0.05,
                    help="stiffening_factor (default 0.05)")
    ap.add_argument("--device", default=None, help="run with use_gpu=True on this device (e.g. gpu, vulkan:cpu)")
    ap.add_argument("--out", default="results", help="output folder (default: results)")
    args = ap.parse_args(argv)
    dev = {"use_gpu": False} if args.device is None else {"use_gpu": True, "device": args.device}
    result = run(epochs=args.epochs, lr=args.lr, stiffening_factor=args.stiffening, **dev)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    png = out / "hysterograd_moons.png"
    plot(result, png)
    first_frozen = np.flatnonzero(~result["liquid"])
    row = {"backend": backend_label(result["backend"]), "steps": len(result["loss"]),
           "final loss": float(result["loss"][-10:].mean()), "train accuracy": result["train_accuracy"],
           "test accuracy": result["test_accuracy"], "Liquid fraction": float(result["liquid"].mean()),
           "first Frozen step": int(first_frozen[0] + 1) if first_frozen.size else "none"}
    md, csv = write_results(out, "hysterograd_moons", list(row), [row], title="HysteroGrad on two moons",
                            command=command_line("benchmarks.hysterograd_moons", argv),
                            sizes=f"two moons (1000 points, 30% test), MLP [2, 16, 16, 2], batch 64, "
                                  f"{args.epochs} epochs, lr {args.lr}, stiffening {args.stiffening}",
                            notes=[f"figure: {png.name}"])
    print(", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()))
    print(f"wrote {png}, {md} and {csv}")


if __name__ == "__main__":
    main()
