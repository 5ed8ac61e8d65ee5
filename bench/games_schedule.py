"""INPO with a constant eta vs Theorem 4's schedule eta_t = tau (t+2)/2 on the games (the table and plot in
docs/games.md, section "INPO's Theorem 4 schedule").

    python bench/games_schedule.py [--iterations 3000] [--tau 0.05] [--eta 2.0] [--plot docs/img/games_schedule.png]

Exact INPO dynamics (full information), 8 contexts of 5 actions, pi_ref Dirichlet(2) (``--ref random``), seed 0.
Prints the mean plain and tau-regularized duality gaps at log-spaced iterations for both schedules, per game.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import numpy as np

from inpo.games import DynamicsConfig, make_game, run_exact
from inpo.games.cli import reference_policy


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--iterations", type=int, default=3000)
    ap.add_argument("--tau", type=float, default=0.05)
    ap.add_argument("--eta", type=float, default=2.0, help="the constant schedule's eta (INPO's; 1/eta is the step)")
    ap.add_argument("--games", default="cyclic,rps,random")
    ap.add_argument("--plot", type=Path, default=None)
    a = ap.parse_args()
    T = a.iterations
    marks = [t for t in (0, 1, 3, 10, 30, 100, 300, 1000, 3000, 10000) if t <= T]
    runs = {}
    for g in a.games.split(","):
        P = make_game(g, 5, 8, seed=0)
        ref = reference_policy("random", P.shape[0], P.shape[-1], 0)
        for sched in ("constant", "theorem4"):
            cfg = DynamicsConfig(eta=a.eta, tau=a.tau, eta_schedule=sched)
            runs[g, sched] = run_exact(P, "inpo", T, cfg, pi_ref=ref)
    print(f"exact INPO, A=5, X=8, T={T}, tau={a.tau}, pi_ref=random, seed=0; constant: eta={a.eta} (step "
          f"{1 / a.eta:g}); theorem4: eta_t = tau (t+2)/2 (step 2/(tau (t+2)))")
    print()
    print("plain duality gap / tau-regularized gap (mean over contexts) at iteration t")
    print()
    print("| game | schedule | " + " | ".join(f"t={t}" for t in marks) + " |")
    print("|---|---|" + "---|" * len(marks))
    for (g, sched), tr in runs.items():
        print(f"| {g} | {sched} | " + " | ".join(f"{tr.gap_mean[t]:.3g} / {tr.reg_gap_mean[t]:.2g}" for t in marks)
              + " |")
    if a.plot is not None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        games = a.games.split(",")
        fig, axes = plt.subplots(1, len(games), figsize=(4.2 * len(games), 3.6), squeeze=False)
        for ax, g in zip(axes[0], games, strict=True):
            for sched, color in (("constant", "C0"), ("theorem4", "C3")):
                tr = runs[g, sched]
                x = np.arange(1, T + 1)
                label = f"eta={a.eta}" if sched == "constant" else "eta_t=tau(t+2)/2"
                ax.loglog(x, np.maximum(tr.reg_gap_mean[1:], 1e-16), color=color, label=f"{label}: reg. gap")
                ax.loglog(x, tr.gap_mean[1:], color=color, ls="--", lw=0.9, label=f"{label}: plain gap")
            ax.set_title(f"{g} (tau={a.tau})", fontsize=9)
            ax.set_xlabel("iteration t")
            ax.grid(True, which="both", alpha=0.3)
        axes[0][0].legend(fontsize=7)
        fig.tight_layout()
        a.plot.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".png", dir=a.plot.parent)
        os.close(fd)
        fig.savefig(tmp, dpi=100)
        plt.close(fig)
        os.replace(tmp, a.plot)
        print(f"\nplot: {a.plot}")


if __name__ == "__main__":
    main()
