"""Plot AutoSGM's seven window functions (half and full) as learning-rate schedules.

    python -m benchmarks.autosgm_windows --out results      # results/autosgm_windows.png, .md, .csv
    python -m benchmarks.autosgm_windows --length 500 --floor 0.1 --flat-top 0.3 --out results

Top panel: half windows (flat top, then anneal, ``m=1``); bottom panel: full windows (warm-up,
flat top, anneal, ``m=0``); each with the uniform input sequence (solid) and the Kronecker one
(dotted), over one window of ``--length`` steps with floor ``x`` (``--floor``) and flat top ``e``
(``--flat-top``).  The table gives W(t) at five points of the window for each shape.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from benchmarks.cli import command_line, float_range, int_range, make_parser, write_results
from hyperopt.schedules import Window

SHAPES = [  # (rcm, n, label)
    (0, 2, "0 flat"), (1, 2, "1 raised cosine, n=2"), (2, 1, "2 polynomial, n=1"),
    (3, 0.05, "3 exponential, n=0.05"), (4, 2, "4 simple polynomial, n=2"),
    (5, 4, "5 logistic (mid), n=4"), (6, 4, "6 logistic (late), n=4"),
]


def main(argv=None) -> int:
    ap = make_parser(__doc__, prog="python -m benchmarks.autosgm_windows")
    ap.add_argument("--length", type=int_range(8, 1_000_000), default=200, help="window length in steps (default 200)")
    ap.add_argument("--floor", type=float_range(0.0, 1.0), default=0.05, help="floor x (default 0.05)")
    ap.add_argument("--flat-top", type=float_range(0.0, 0.99), default=0.2, help="flat-top fraction e (default 0.2)")
    ap.add_argument("--out", default="results", help="output folder (default: results)")
    args = ap.parse_args(argv)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    L = args.length
    steps = np.arange(1, L + 1)
    probes = [1, L // 4, L // 2, 3 * L // 4, L]
    rows = []
    fig, axes = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    for ax, m, title in ((axes[0], 1, "half windows (m=1)"), (axes[1], 0, "full windows (m=0)")):
        for k, (rcm, n, label) in enumerate(SHAPES):
            for inseq, style in ((0, "-"), (1, ":")):
                w = Window(rcm, inseq=inseq, x=args.floor, n=n, m=m, tau=1, spe=L, e=args.flat_top)
                values = w.values(steps)
                ax.plot(steps, values, style, color=f"C{k}", label=label if inseq == 0 else None)
                rows.append({"window": label, "m": m, "sequence": ("uniform", "Kronecker")[inseq],
                             **{f"W({t})": float(values[t - 1]) for t in probes}})
        ax.set_title(f"{title}: x={args.floor}, e={args.flat_top}, length {L}; solid uniform, dotted Kronecker")
        ax.set_ylabel("window factor W(t)")
        ax.grid(alpha=0.3)
    axes[1].set_xlabel("step t")
    axes[0].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.tight_layout()
    png = out / "autosgm_windows.png"
    fig.savefig(png, dpi=110, bbox_inches="tight")
    plt.close(fig)
    md, csv = write_results(out, "autosgm_windows", list(rows[0]), rows, title="AutoSGM's windows W(t)",
                            command=command_line("benchmarks.autosgm_windows", argv),
                            sizes=f"one window of {L} steps, floor x {args.floor}, flat top e {args.flat_top}",
                            notes=[f"figure: {png.name}"])
    print(f"wrote {png}, {md} and {csv}")
    return 0


if __name__ == "__main__":
    main()
