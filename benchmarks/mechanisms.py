"""Each optimizer's own mechanism at work on a real task, with one figure per mechanism.

    python -m benchmarks.mechanisms --out benchmarks/results/lavapipe-2core      # all six, ~2 min on 2 cores
    python -m benchmarks.mechanisms --only hl hypergradient --out results
    python -m benchmarks.mechanisms --device vulkan:cpu                          # the same on a Vulkan device

Mechanisms (``--only`` names):

  natural-grad   HCNaturalGrad on the digits MLP [64, 64, 10].  Branches: the hidden layer's mean
                 activation (D = 64) under K = 8 forward passes with Gaussian input noise (sigma 0.1):
                 C is how the network's hidden state varies under input noise, and the step is
                 P (C + damp I)^-1 P^T g.  Compared with the same network without branches (plain
                 gradient descent, what HCNaturalGrad does when given none) at the same and at a tuned lr.
  hl             HL on a continuous-time model (TinySSM, 8 states, A scaled to spectral radius 0.8)
                 learning online to map u_k = (sin wk, cos wk) to 0.8 sin(wk + 0.5), one step per sample,
                 against the same model left untrained; the neuron and weight costates are drawn.
  hysterograd    HIOptimizer on the digits MLP: the preconditioned gradient norm against the
                 hysteresis barrier, with the Liquid (moving) and Frozen steps shaded.
  hypergradient  HypergradientAdamW and AutoHypergradientAdamW (beta1 adapted too) from a too-small
                 lr = 1e-4 on digits, against AdamW at that lr: the lr and beta1 traces.
  windows        AutoSGM's windows as schedules: WindowLR on AdamW on digits (cosine half window,
                 full window with warm-up, late sigmoid) against a constant lr; lr(t) and the loss.
  snn            The LIF spiking network on digits (benchmarks/snn.py): AdamW, AutoHypergradientAdamW,
                 and the latter with its surprise gain scaling the input current; the gain per step.

Writes mechanisms.md and mechanisms.csv (one row per run) and mechanism_<name>.png under --out.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from benchmarks.cli import (OPTIMIZER_COLOURS, backend_label, command_line, int_range, make_parser,
                            write_results)
from benchmarks.tasks import MLP, digits

NAMES = ("natural-grad", "hl", "hysterograd", "hypergradient", "windows", "snn")
COLUMNS = ["mechanism", "optimizer", "setting", "backend", "steps", "final loss", "metric", "value", "wall s"]


def _digits_loop(model, opt, epochs, seed=0, batch=64, step_kwargs=None, on_step=None):
    """Minibatch training on digits; ``step_kwargs(X)`` adds keyword arguments to ``opt.step``."""
    Xtr, ytr, _, _ = digits(seed=seed)
    rng = np.random.default_rng(seed)
    losses = []
    for _ in range(epochs):
        order = rng.permutation(len(Xtr))
        for s in range(0, len(Xtr), batch):
            idx = order[s:s + batch]
            loss, grads = model.loss_and_grads(Xtr[idx], ytr[idx])
            extra = step_kwargs(model, Xtr[idx]) if step_kwargs else {}
            out = opt.step(gradients=grads, **extra)
            losses.append(loss)
            if on_step is not None:
                on_step(loss, out)
    return np.array(losses)


def _test_accuracy(model, seed=0):
    _, _, Xte, yte = digits(seed=seed)
    return model.accuracy(Xte, yte)


def _row(mechanism, optimizer, setting, backend, losses, metric, value, wall):
    return {"mechanism": mechanism, "optimizer": optimizer, "setting": setting, "backend": backend_label(backend),
            "steps": len(losses), "final loss": float(np.mean(losses[-20:])), "metric": metric, "value": value,
            "wall s": wall}


def _smooth(x, k=10):
    x = np.asarray(x, float)
    return np.convolve(x, np.ones(k) / k, mode="valid") if len(x) > k else x


# ---------------------------------------------------------------------------------------------- natural-grad
def natural_grad(dev, scale):
    from hyperopt import HCNaturalGrad
    K, noise, epochs = 8, 0.1, max(2, int(10 * scale))

    def branches(model, X, rng):
        hidden = [np.tanh((X + noise * rng.standard_normal(X.shape).astype(np.float32)) @ model.params[0]
                          + model.params[1]).mean(axis=0) for _ in range(K)]
        return np.stack(hidden)                      # K x 64: the hidden state of K noisy passes

    settings = [("no branches, lr 0.5 (plain descent)", dict(lr=0.5), False),
                ("no branches, lr 0.02", dict(lr=0.02), False),
                ("branches, lr 0.02, damp 0.1", dict(lr=0.02, fisher_damp=0.1), True),
                ("branches, lr 0.1, damp 1.0", dict(lr=0.1, fisher_damp=1.0), True)]
    rows, curves = [], {}
    for label, kw, use_branches in settings:
        model = MLP([64, 64, 10], seed=0)
        opt = HCNaturalGrad(model.params, projection="hash", **kw, **dev)
        rng = np.random.default_rng(1)
        t0 = time.perf_counter()
        losses = _digits_loop(model, opt, epochs,
                              step_kwargs=(lambda m, X: {"branches": branches(m, X, rng)}) if use_branches else None)
        wall = time.perf_counter() - t0
        acc = _test_accuracy(model)
        curves[label] = (losses, acc)
        rows.append(_row("natural-grad", "HCNaturalGrad", label, opt.backend, losses, "test accuracy", acc, wall))
    return rows, curves


def plot_natural_grad(curves, path, backend):
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(9, 5))
    styles = ["-", "--", "-", "--"]
    colours = ["#7f7f7f", "#bcbd22", OPTIMIZER_COLOURS["HCNaturalGrad"], "#17becf"]
    for (label, (losses, acc)), ls, c in zip(curves.items(), styles, colours):
        ax.plot(_smooth(losses), ls, color=c, label=f"{label}: test acc {acc:.1%}")
    ax.set_yscale("log")
    ax.set_xlabel("step (batch of 64)")
    ax.set_ylabel("training loss (10-step mean)")
    ax.set_title(f"HCNaturalGrad on digits, MLP [64, 64, 10] ({backend})\n"
                 "branches = hidden state (D=64) of K=8 forward passes with input noise 0.1")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
    _save(fig, path)


# ---------------------------------------------------------------------------------------------- hl
def hl(dev, scale):
    from hyperopt.hamiltonian import HL
    from hyperopt.models import TinySSM
    steps, w = max(300, int(3000 * scale)), 0.3
    m0 = TinySSM(h_dim=8, u_dim=2, y_dim=1, delta=0.1, seed=7)
    A = m0.A * (0.8 / np.max(np.abs(np.linalg.eigvals(m0.A))))    # a stable state matrix to start from
    rows, out = [], {}
    for label, learn in (("HL, theta 0.1, beta 1.0", True), ("untrained (same model)", False)):
        model = TinySSM.from_arrays(A, m0.B, m0.C, m0.h_init, delta=0.1)
        opt = HL(model, gamma=1.0, theta=0.1, beta=1.0, **dev)
        rec = {"loss": [], "y": [], "target": [], "p_xi": [], "p_w": []}
        t0 = time.perf_counter()
        for k in range(steps):
            u, target = [np.sin(w * k), np.cos(w * k)], 0.8 * np.sin(w * k + 0.5)
            y = model.forward(u)
            rec["loss"].append(model.loss(target))
            rec["y"].append(float(y.ravel()[0]))
            rec["target"].append(target)
            if learn:
                dH_dh, dH_dw = model.hamiltonian_grads(target, opt.neuron_costate(), gamma=1.0)
                opt.step(gradients=dH_dw, h_grad=dH_dh)
                opt.zero_grad()
                rec["p_xi"].append(opt.neuron_costate().ravel())
                rec["p_w"].append([float(np.linalg.norm(c)) for c in opt.weight_costates().values()])
        wall = time.perf_counter() - t0
        losses = np.array(rec["loss"])
        out[label] = rec
        rows.append(_row("hl", "HL" if learn else "none", label, opt.backend, losses,
                         "mean squared error, last 200 steps", float(losses[-200:].mean()), wall))
    return rows, out


def plot_hl(out, path, backend):
    import matplotlib.pyplot as plt
    learned = out["HL, theta 0.1, beta 1.0"]
    frozen = out["untrained (same model)"]
    n = len(learned["loss"])
    fig, axes = plt.subplots(2, 2, figsize=(12, 7))
    for ax, lo, title in ((axes[0, 0], 0, "first 100 steps"), (axes[0, 1], n - 100, f"last 100 steps (of {n})")):
        k = np.arange(lo, lo + 100)
        ax.plot(k, np.array(learned["target"])[k], color="black", lw=2, label="target 0.8 sin(wk + 0.5)")
        ax.plot(k, np.array(learned["y"])[k], color=OPTIMIZER_COLOURS["HL"], label="model output, HL learning online")
        ax.plot(k, np.array(frozen["y"])[k], "--", color="#7f7f7f", label="same model, untrained")
        ax.set_xlabel("time step k")
        ax.set_ylabel("output y")
        ax.set_title(title)
    axes[0, 1].legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
    ax = axes[1, 0]
    ax.plot(_smooth(learned["loss"], 50), color=OPTIMIZER_COLOURS["HL"], label="HL")
    ax.plot(_smooth(frozen["loss"], 50), "--", color="#7f7f7f", label="untrained")
    ax.set_yscale("log")
    ax.set_xlabel("time step k")
    ax.set_ylabel("squared error (50-step mean)")
    ax.legend(loc="lower left", fontsize=8)
    ax = axes[1, 1]
    p_xi = np.linalg.norm(np.array(learned["p_xi"]), axis=1)
    p_w = np.array(learned["p_w"])
    ax.plot(_smooth(p_xi, 50), color="black", lw=1.5, label="|p_xi|, neuron costate (8 states)")
    for j, (name, c) in enumerate(zip("ABC", ("C0", "C1", "C2"))):
        ax.plot(_smooth(p_w[:, j], 50), color=c, label=f"|p_{name}|, costate of weight {name}")
    ax.set_yscale("log")
    ax.set_xlabel("time step k")
    ax.set_ylabel("costate norm (50-step mean)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
    fig.suptitle(f"HL on TinySSM (8 states), online sequence learning ({backend})")
    _save(fig, path)


# ---------------------------------------------------------------------------------------------- hysterograd
def hysterograd(dev, scale):
    from hyperopt.hysterograd import HIOptimizer
    epochs = max(3, int(30 * scale))
    model = MLP([64, 64, 10], seed=0)
    opt = HIOptimizer(model.params, lr=0.01, stiffening_factor=0.05, **dev)
    rec = {"norm": [], "barrier": [], "liquid": []}

    def record(loss, out):
        status, norm, barrier = out
        rec["norm"].append(norm)
        rec["barrier"].append(barrier)
        rec["liquid"].append(status == "Liquid")

    t0 = time.perf_counter()
    losses = _digits_loop(model, opt, epochs, on_step=record)
    wall = time.perf_counter() - t0
    acc = _test_accuracy(model)
    result = {"loss": losses, "backend": opt.backend, "test_accuracy": acc,
              **{k: np.array(v) for k, v in rec.items()}}
    liquid = float(np.mean(result["liquid"]))
    rows = [_row("hysterograd", "HIOptimizer", "lr 0.01, stiffening 0.05", opt.backend, losses, "test accuracy",
                 acc, wall),
            _row("hysterograd", "HIOptimizer", "lr 0.01, stiffening 0.05", opt.backend, losses,
                 "fraction of steps Liquid", liquid, wall)]
    return rows, result


def plot_hysterograd(result, path, backend):
    from benchmarks.hysterograd_moons import plot
    plot(result, path, title=f"HysteroGrad on digits, MLP [64, 64, 10] ({backend}): "
                             f"test accuracy {result['test_accuracy']:.1%}")


# ---------------------------------------------------------------------------------------------- hypergradient
def hypergradient(dev, scale):
    from hyperopt import AdamW
    from hyperopt.hypergradient import AutoHypergradientAdamW, HypergradientAdamW
    epochs, lr0 = max(2, int(15 * scale)), 1e-4
    makers = {
        "AdamW": ("fixed lr 1e-4", lambda p: AdamW(p, lr=lr0, **dev)),
        "HypergradientAdamW": ("lr from 1e-4, beta_hyper 1e-4",
                               lambda p: HypergradientAdamW(p, lr=lr0, beta_hyper=1e-4, **dev)),
        "AutoHypergradientAdamW": ("lr from 1e-4, hyper_lr 0.01, beta1 adapted",
                                   lambda p: AutoHypergradientAdamW(p, lr=lr0, adapt_momentum=True, **dev)),
    }
    rows, out = [], {}
    for name, (setting, make) in makers.items():
        model = MLP([64, 64, 10], seed=0)
        opt = make(model.params)
        lrs, betas = [], []

        def record(loss, _out, opt=opt, lrs=lrs, betas=betas):
            lrs.append(opt.param_groups[0]["lr"])
            betas.append(opt.param_groups[0]["betas"][0])

        t0 = time.perf_counter()
        losses = _digits_loop(model, opt, epochs, on_step=record)
        wall = time.perf_counter() - t0
        acc = _test_accuracy(model)
        out[name] = {"loss": losses, "lr": np.array(lrs), "beta1": np.array(betas), "acc": acc}
        rows.append(_row("hypergradient", name, setting, opt.backend, losses, "test accuracy", acc, wall))
        rows.append(_row("hypergradient", name, setting, opt.backend, losses, "final lr", lrs[-1], wall))
    return rows, out


def plot_hypergradient(out, path, backend):
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(3, 1, figsize=(10, 9), sharex=True)
    for name, r in out.items():
        c = OPTIMIZER_COLOURS[name]
        axes[0].plot(_smooth(r["loss"]), color=c, label=f"{name}: test acc {r['acc']:.1%}")
        axes[1].plot(r["lr"], color=c, label=name)
        axes[2].plot(r["beta1"], color=c, label=name)
    axes[0].set_yscale("log")
    axes[0].set_ylabel("training loss\n(10-step mean)")
    axes[1].set_yscale("log")
    axes[1].set_ylabel("learning rate\n(group 0)")
    axes[2].set_ylabel("beta1 (group 0)")
    axes[2].set_xlabel("step (batch of 64)")
    for ax in axes:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
        ax.grid(alpha=0.3)
    axes[0].set_title(f"Hypergradient optimizers from lr = 1e-4 on digits, MLP [64, 64, 10] ({backend})")
    _save(fig, path)


# ---------------------------------------------------------------------------------------------- windows
def windows(dev, scale):
    from hyperopt import AdamW, WindowLR
    epochs = max(2, int(20 * scale))
    spe = -(-len(digits()[0]) // 64)                      # steps per epoch
    settings = {
        "constant lr 1e-2": None,
        "cosine half window (rcm 1, m 1)": dict(window="cosine", m=1),
        "full window: warm-up, flat top e 0.2, anneal (rcm 1, m 0)": dict(window="cosine", m=0, e=0.2),
        "late sigmoid (rcm 6, n 4), floor x 0.05": dict(window="late-sigmoid", n=4, x=0.05),
    }
    rows, out = [], {}
    for label, cfg in settings.items():
        model = MLP([64, 64, 10], seed=0)
        opt = AdamW(model.params, lr=1e-2, **dev)
        sched = None if cfg is None else WindowLR(opt, cfg.pop("window"), tau=epochs, spe=spe, **cfg)
        lrs = []

        def record(loss, _out, opt=opt, sched=sched, lrs=lrs):
            lrs.append(opt.param_groups[0]["lr"])
            if sched is not None:
                sched.step()

        t0 = time.perf_counter()
        losses = _digits_loop(model, opt, epochs, on_step=record)
        wall = time.perf_counter() - t0
        acc = _test_accuracy(model)
        out[label] = {"loss": losses, "lr": np.array(lrs), "acc": acc}
        rows.append(_row("windows", "AdamW + WindowLR" if cfg is not None else "AdamW", label, opt.backend, losses,
                         "test accuracy", acc, wall))
    return rows, out


def plot_windows(out, path, backend):
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    for k, (label, r) in enumerate(out.items()):
        c = f"C{k}"
        axes[0].plot(r["lr"], color=c, label=label)
        axes[1].plot(_smooth(r["loss"]), color=c, label=f"{label.split(' (')[0].split(',')[0]}: test acc {r['acc']:.1%}")
    axes[0].set_ylabel("learning rate")
    axes[1].set_ylabel("training loss (10-step mean)")
    axes[1].set_yscale("log")
    axes[1].set_xlabel("step (batch of 64)")
    axes[0].legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
    axes[1].legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
    axes[0].set_title(f"AutoSGM's windows as schedules: WindowLR on AdamW, digits ({backend})")
    _save(fig, path)


# ---------------------------------------------------------------------------------------------- snn
def snn(dev, scale):
    from benchmarks import snn as snn_mod
    kw = dict(epochs=max(2, int(8 * scale)), hidden=128, steps=8, batch=64, seed=0, scale=0.5, lr=2e-3)
    rows, out = [], {}
    for optimizer, modulate in (("AdamW", False), ("AutoHypergradientAdamW", False), ("AutoHypergradientAdamW", True)):
        r = snn_mod.run(optimizer, modulate, dev["use_gpu"], dev.get("device"), **kw)
        out[r["optimizer"]] = r
        rows.append(_row("snn", optimizer, r["optimizer"], r["backend"], r["losses"], "test accuracy",
                         r["accuracy"], r["wall_s"]))
    return rows, out


def plot_snn(out, path, backend):
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    for label, r in out.items():
        c = OPTIMIZER_COLOURS["AdamW" if label == "AdamW" else "AutoHypergradientAdamW"]
        ls = "--" if "surprise" in label else "-"
        axes[0].plot(_smooth(r["losses"]), ls, color=c, label=f"{label}: test acc {r['accuracy']:.1%}")
        if "surprise" in label:
            axes[1].plot(r["gains"], ls, color=c, label="surprise gain g (input current x (1 + 0.5 g))")
    axes[0].set_yscale("log")
    axes[0].set_ylabel("training loss (10-step mean)")
    axes[1].set_ylabel("surprise gain")
    axes[1].set_xlabel("step (batch of 64)")
    for ax in axes:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
    axes[0].set_title(f"LIF spiking network on digits (128 neurons, 8 time steps) ({backend})")
    _save(fig, path)


def _save(fig, path):
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt
    plt.close(fig)


MECHANISMS = {"natural-grad": (natural_grad, plot_natural_grad), "hl": (hl, plot_hl),
              "hysterograd": (hysterograd, plot_hysterograd), "hypergradient": (hypergradient, plot_hypergradient),
              "windows": (windows, plot_windows), "snn": (snn, plot_snn)}


def main(argv=None):
    ap = make_parser(__doc__, prog="python -m benchmarks.mechanisms")
    ap.add_argument("--only", nargs="+", choices=NAMES, default=list(NAMES), metavar="NAME",
                    help=f"mechanisms to run, from: {', '.join(NAMES)} (default: all)")
    ap.add_argument("--device", default=None,
                    help="run on this device with use_gpu=True (e.g. gpu, vulkan:cpu); default: the CPU path")
    ap.add_argument("--scale", type=int_range(1, 10), default=1, help="multiply the run lengths (1-10, default 1)")
    ap.add_argument("--out", default="results", help="output folder (default: results)")
    args = ap.parse_args(argv)
    import matplotlib
    matplotlib.use("Agg")
    dev = {"use_gpu": False} if args.device is None else {"use_gpu": True, "device": args.device}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in args.only:
        run, plot = MECHANISMS[name]
        t0 = time.perf_counter()
        new_rows, data = run(dev, args.scale)
        rows += new_rows
        plot(data, out / f"mechanism_{name}.png", new_rows[0]["backend"])
        for r in new_rows:
            print(f"{r['mechanism']:14s} {r['optimizer']:24s} {r['setting']:58s} {r['metric']}: {r['value']:.4g}")
        print(f"-- {name}: {time.perf_counter() - t0:.1f} s, figure {out / f'mechanism_{name}.png'}", flush=True)
    md, csv = write_results(out, "mechanisms", COLUMNS, rows, title="Each optimizer's mechanism on a real task",
                            command=command_line("benchmarks.mechanisms", argv),
                            sizes="digits MLP [64, 64, 10], batch 64; TinySSM 8 states; LIF 128 neurons x 8 steps",
                            notes=["final loss: mean training loss of the last 20 steps",
                                   "figures: mechanism_<name>.png in this folder"])
    print(f"wrote {md} and {csv}")


if __name__ == "__main__":
    main()
