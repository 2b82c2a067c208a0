"""Plot AutoSGM's seven window functions (half and full) as learning-rate schedules.

    python -m benchmarks.autosgm_windows [out.png]     # default results/autosgm_windows.png

Top row: half windows (flat top, then anneal, ``m=1``); bottom row: full windows (warm-up, flat top,
anneal, ``m=0``); each with the uniform input sequence (solid) and the Kronecker one (dotted), over
one window of 200 steps with a floor ``x=0.05`` and a flat top ``e=0.2``.
"""
from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from hyperopt.schedules import Window  # noqa: E402

LENGTH = 200
SHAPES = [  # (rcm, n, label)
    (0, 2, "0 flat"), (1, 2, "1 raised cosine, n=2"), (2, 1, "2 polynomial, n=1"),
    (3, 0.05, "3 exponential, n=0.05"), (4, 2, "4 simple polynomial, n=2"),
    (5, 4, "5 logistic (mid), n=4"), (6, 4, "6 logistic (late), n=4"),
]


def main(argv) -> int:
    out = Path(argv[0]) if argv else Path("results/autosgm_windows.png")
    out.parent.mkdir(parents=True, exist_ok=True)
    steps = np.arange(1, LENGTH + 1)
    fig, axes = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    for ax, m, title in ((axes[0], 1, "half windows (m=1)"), (axes[1], 0, "full windows (m=0)")):
        for k, (rcm, n, label) in enumerate(SHAPES):
            color = f"C{k}"
            for inseq, style in ((0, "-"), (1, ":")):
                w = Window(rcm, inseq=inseq, x=0.05, n=n, m=m, tau=1, spe=LENGTH, e=0.2)
                ax.plot(steps, w.values(steps), style, color=color, label=label if inseq == 0 else None)
        ax.set_title(f"{title}: x=0.05, e=0.2, length {LENGTH}; solid uniform, dotted Kronecker")
        ax.set_ylabel("W(t)")
        ax.grid(alpha=0.3)
    axes[1].set_xlabel("step t")
    axes[0].legend(fontsize=8, ncol=2, loc="lower left")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
