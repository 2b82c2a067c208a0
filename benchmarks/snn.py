"""A leaky integrate-and-fire spiking network trained in NumPy with surrogate gradients.

    python -m benchmarks.snn                     # digits, small default (seconds)
    python -m benchmarks.snn --epochs 30 --hidden 256 --steps 16 --seeds 3 --out results
    python -m benchmarks.snn --device vulkan:cpu # also on a Vulkan device (use_gpu=True)

Network: the 64 pixels of scikit-learn's 8x8 digits drive, as a constant current for T time steps,
a layer of LIF neurons (v <- beta*v + I - thr*s_prev, spike s = [v > thr]), whose spikes feed a
non-spiking readout summed over time (the logits).  The spike's derivative is replaced by a fast
sigmoid surrogate 1/(1 + k|v - thr|)^2 in backpropagation through time (reset detached).

Compared: AdamW against AutoHypergradientAdamW, the latter with and without the surprise-gain
input modulation ``x * (1 + scale * opt.current_surprise_gain)``.  Reported: test accuracy, wall
time and APF, accuracy (%) per PFLOP of training compute, where the FLOPs are counted as:
forward 2*B*T*(n_in*H + H*n_out) multiply-adds for the two matrix products, backward twice that,
plus the optimizer's per-element work (~20 FLOPs per parameter per step) -- elementwise neuron
updates are ignored (they are O(B*T*H), small next to the products).

Writes snn.md and snn.csv under --out (one row per optimizer, backend and seed).
"""
from __future__ import annotations

import time

import numpy as np

from benchmarks.cli import backend_label, command_line, float_range, int_range, make_parser, write_results
from benchmarks.tasks import digits, softmax_cross_entropy


class LIFNet:
    def __init__(self, n_in, n_hidden, n_out, steps=8, beta=0.9, threshold=1.0, slope=5.0, seed=0):
        rng = np.random.default_rng(seed)
        self.W1 = (rng.standard_normal((n_in, n_hidden)) * (2.0 / np.sqrt(n_in))).astype(np.float32)
        self.b1 = np.zeros(n_hidden, np.float32)
        self.W2 = (rng.standard_normal((n_hidden, n_out)) / np.sqrt(n_hidden)).astype(np.float32)
        self.b2 = np.zeros(n_out, np.float32)
        self.params = [self.W1, self.b1, self.W2, self.b2]
        self.steps, self.beta, self.threshold, self.slope = steps, beta, threshold, slope
        self.spike_rate = 0.0

    def forward(self, X):
        B, H = len(X), self.W1.shape[1]
        current = X @ self.W1 + self.b1                 # constant input current over time
        v = np.zeros((B, H), np.float32)
        s = np.zeros((B, H), np.float32)
        vs, ss = [], []
        for _ in range(self.steps):
            v = self.beta * v + current - self.threshold * s
            s = (v > self.threshold).astype(np.float32)
            vs.append(v)
            ss.append(s)
        rate = np.mean(ss, axis=0)                      # spikes per step, (B, H)
        logits = rate @ self.W2 + self.b2
        return logits, (X, vs, rate)

    def loss_and_grads(self, X, y):
        logits, (X, vs, rate) = self.forward(X)
        loss, dlogits = softmax_cross_entropy(logits, y)
        dW2 = rate.T @ dlogits
        db2 = dlogits.sum(axis=0)
        ds = (dlogits @ self.W2.T) / self.steps          # same for every step: the readout averages spikes
        dcurrent = np.zeros_like(vs[0])
        dv_next = np.zeros_like(vs[0])
        for t in range(self.steps - 1, -1, -1):        # backpropagation through time
            surrogate = 1.0 / (1.0 + self.slope * np.abs(vs[t] - self.threshold)) ** 2
            dv = ds * surrogate + self.beta * dv_next
            dcurrent += dv
            dv_next = dv
        dW1 = X.T @ dcurrent
        db1 = dcurrent.sum(axis=0)
        self.spike_rate = float(rate.mean())
        return loss, [g.astype(np.float32) for g in (dW1, db1, dW2, db2)]

    def accuracy(self, X, y):
        return float((self.forward(X)[0].argmax(axis=1) == y).mean())

    def flops_per_example(self):
        n_in, H = self.W1.shape
        n_out = self.W2.shape[1]
        forward = 2 * n_in * H + 2 * self.steps * H + 2 * H * n_out   # current once, readout of the rate
        return 3 * forward

    def size(self):
        return sum(p.size for p in self.params)


def run(optimizer, modulate, use_gpu, device, *, epochs, hidden, steps, batch, seed, scale, lr):
    from hyperopt import AdamW
    from hyperopt.hypergradient import AutoHypergradientAdamW
    Xtr, ytr, Xte, yte = digits(seed=seed)
    net = LIFNet(Xtr.shape[1], hidden, 10, steps=steps, seed=seed)
    if optimizer == "AdamW":
        opt = AdamW(net.params, lr=lr, use_gpu=use_gpu, device=device)
    else:
        opt = AutoHypergradientAdamW(net.params, lr=lr, track_surprise=True, warmup_steps=10,
                                     use_gpu=use_gpu, device=device)
    rng = np.random.default_rng(seed)
    n_steps, t0, gains, losses = 0, time.perf_counter(), [], []
    for _ in range(epochs):
        order = rng.permutation(len(Xtr))
        for s in range(0, len(Xtr), batch):
            idx = order[s:s + batch]
            X = Xtr[idx]
            if modulate:
                gain = float(opt.current_surprise_gain)
                gains.append(gain)
                X = X * (1 + scale * gain)
            loss, grads = net.loss_and_grads(X, ytr[idx])
            opt.step(gradients=grads)
            losses.append(loss)
            n_steps += 1
    wall = time.perf_counter() - t0
    acc = net.accuracy(Xte, yte)
    flops = n_steps * batch * net.flops_per_example() + n_steps * 20 * net.size()
    return dict(optimizer=optimizer + (" + surprise input gain" if modulate else ""), backend=opt.backend,
                accuracy=acc, wall_s=wall, pflops=flops / 1e15, apf=100 * acc / (flops / 1e15),
                mean_gain=float(np.mean(gains)) if gains else 0.0, spike_rate=net.spike_rate,
                losses=np.array(losses), gains=np.array(gains))


COLUMNS = ["optimizer", "backend", "seed", "test accuracy", "wall s", "PFLOP", "APF (%/PFLOP)", "mean gain",
           "spike rate"]


def main(argv=None):
    ap = make_parser(__doc__, prog="python -m benchmarks.snn")
    ap.add_argument("--epochs", type=int_range(1, 1000), default=8, help="training epochs (default 8)")
    ap.add_argument("--hidden", type=int_range(1, 65536), default=128, help="LIF neurons (default 128)")
    ap.add_argument("--steps", type=int_range(1, 1000), default=8, help="simulation time steps T (default 8)")
    ap.add_argument("--batch", type=int_range(1, 1257), default=64, help="batch size (default 64)")
    ap.add_argument("--lr", type=float_range(1e-8, 10.0), default=2e-3, help="learning rate (default 2e-3)")
    ap.add_argument("--scale", type=float_range(0.0, 100.0), default=0.5,
                    help="surprise-gain input modulation scale (default 0.5)")
    ap.add_argument("--seeds", type=int_range(1, 100), default=1, help="number of seeds (default 1)")
    ap.add_argument("--device", default=None,
                    help="also run with use_gpu=True on this device (e.g. gpu, vulkan:cpu)")
    ap.add_argument("--out", default="results", help="output folder for snn.md and snn.csv (default: results)")
    args = ap.parse_args(argv)
    backends = [(False, None)] + ([(True, args.device)] if args.device else [])
    rows = []
    for use_gpu, device in backends:
        for seed in range(args.seeds):
            for optimizer, modulate in (("AdamW", False), ("AutoHypergradientAdamW", False),
                                        ("AutoHypergradientAdamW", True)):
                r = run(optimizer, modulate, use_gpu, device, epochs=args.epochs, hidden=args.hidden,
                        steps=args.steps, batch=args.batch, seed=seed, scale=args.scale, lr=args.lr)
                rows.append({"optimizer": r["optimizer"], "backend": backend_label(r["backend"]), "seed": seed,
                             "test accuracy": r["accuracy"], "wall s": r["wall_s"], "PFLOP": r["pflops"],
                             "APF (%/PFLOP)": r["apf"], "mean gain": r["mean_gain"], "spike rate": r["spike_rate"]})
                print(" | ".join(str(v) if not isinstance(v, float) else f"{v:.4g}" for v in rows[-1].values()),
                      flush=True)
    md, csv = write_results(args.out, "snn", COLUMNS, rows, title="LIF spiking network on digits",
                            command=command_line("benchmarks.snn", argv),
                            sizes=f"digits 8x8, {args.hidden} LIF neurons, T={args.steps}, batch {args.batch}, "
                                  f"{args.epochs} epochs, lr {args.lr}, gain scale {args.scale}")
    print(f"wrote {md} and {csv}")


if __name__ == "__main__":
    main()
