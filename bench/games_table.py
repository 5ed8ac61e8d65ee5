"""Final duality gaps of every algorithm on every game generator (the table in docs/games.md).

Run: ``python bench/games_table.py`` (exact dynamics) and ``python bench/games_table.py --sampled``.
Prints markdown: one row per algorithm, one column per game, cells ``plain gap / tau-regularized gap``
(means over contexts of the final iterate), plus the initial gap and the plain gap of the exact
tau-regularized equilibrium (the floor a tau-regularized method converges to).
"""

from __future__ import annotations

import argparse

import numpy as np

from inpo.games import ALGORITHMS, GAMES, DynamicsConfig, duality_gap, make_game, run_exact, run_sampled
from inpo.games.cli import reference_policy
from inpo.games.nash import solve_regularized


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--actions", type=int, default=5)
    ap.add_argument("--contexts", type=int, default=8)
    ap.add_argument("--iterations", type=int, default=500)
    ap.add_argument("--eta", type=float, default=2.0, help="INPO's eta (1/eta is the step)")
    ap.add_argument("--tau", type=float, default=0.05)
    ap.add_argument("--ref", default="random")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sampled", action="store_true")
    ap.add_argument("--pairs", type=int, default=1024)
    ap.add_argument("--games", default=",".join(GAMES))
    ap.add_argument("--algos", default=",".join(ALGORITHMS))
    a = ap.parse_args()
    games, algos = a.games.split(","), a.algos.split(",")
    cfg = DynamicsConfig(eta=a.eta, tau=a.tau, pairs=a.pairs)
    cells: dict[tuple[str, str], str] = {}
    head: dict[str, tuple[float, float]] = {}
    samples: dict[str, int] = {}
    for g in games:
        P = make_game(g, a.actions, a.contexts, seed=a.seed)
        ref = reference_policy(a.ref, P.shape[0], P.shape[-1], a.seed)
        floor = float(np.mean(duality_gap(P, solve_regularized(P, ref, a.tau))))
        for al in algos:
            if a.sampled:
                tr = run_sampled(P, al, a.iterations, cfg, pi_ref=ref, seed=a.seed, record_every=a.iterations)
                samples[al] = tr.samples
            else:
                tr = run_exact(P, al, a.iterations, cfg, pi_ref=ref, record_every=a.iterations)
            cells[al, g] = f"{tr.gap_mean[-1]:.3g} / {tr.reg_gap_mean[-1]:.2g}"
            head[g] = (tr.gap_mean[0], floor)
    mode = "sampled" if a.sampled else "exact"
    print(f"{mode}: A={a.actions}, X={a.contexts}, T={a.iterations}, eta={a.eta}, tau={a.tau}, "
          f"pi_ref={a.ref}, seed={a.seed}" + (f", {a.pairs} pairs/context/iteration" if a.sampled else ""))
    print()
    print("| algorithm | " + " | ".join(games) + " |")
    print("|---|" + "---|" * len(games))
    print("| *initial gap* | " + " | ".join(f"{head[g][0]:.3g}" for g in games) + " |")
    print("| *tau-reg. NE gap* | " + " | ".join(f"{head[g][1]:.3g}" for g in games) + " |")
    for al in algos:
        print(f"| {al} | " + " | ".join(cells[al, g] for g in games) + " |")
    if a.sampled:
        print()
        print("responses sampled per game: " + ", ".join(f"{al} {samples[al]}" for al in algos))


if __name__ == "__main__":
    main()
