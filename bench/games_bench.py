"""Benchmark of the exact game tools (run: ``python bench/games_bench.py``).

1. LP Nash equilibrium of a 1000x1000 random preference game (scipy HiGHS).
2. 1000 exact INPO iterations over 10,000 contexts x 10 responses (numpy, float64), gaps recorded
   every 100 iterations.
3. The KL-regularized equilibrium of the same 10,000 games by damped Newton.

Prints wall and CPU time, peak traced numpy/python memory (tracemalloc) and peak process RSS for each.
"""

from __future__ import annotations

import argparse
import resource
import time
import tracemalloc

import numpy as np

from inpo.games import DynamicsConfig, duality_gap, make_game, run_exact, solve_nash, solve_regularized


def _measure(label: str, fn):
    tracemalloc.start()
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB -> MiB
    print(f"{label}: {dt:.2f} s wall, {cpu:.2f} s CPU, peak traced memory {peak / 2**20:.1f} MiB, "
          f"process max RSS {rss:.0f} MiB")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--lp-actions", type=int, default=1000)
    ap.add_argument("--contexts", type=int, default=10_000)
    ap.add_argument("--actions", type=int, default=10)
    ap.add_argument("--iterations", type=int, default=1000)
    args = ap.parse_args()

    P = make_game("random", args.lp_actions, 1, seed=0)[0]
    pi, v = _measure(f"LP solve_nash {args.lp_actions}x{args.lp_actions}", lambda: solve_nash(P))
    print(f"  value {v:.12f}, duality gap {duality_gap(P, pi):.2e}, support {(pi > 1e-9).sum()} actions")

    G = make_game("cyclic", args.actions, args.contexts, seed=0)
    cfg = DynamicsConfig(eta=2.0, tau=0.05)
    tr = _measure(
        f"exact INPO {args.iterations} iterations x {args.contexts} contexts x {args.actions} actions",
        lambda: run_exact(G, "inpo", args.iterations, cfg, record_every=100),
    )
    print(f"  mean duality gap {tr.gap_mean[0]:.3f} -> {tr.gap_mean[-1]:.4f}; "
          f"max regularized gap {tr.reg_gap_max[-1]:.2e}")
    ref = np.full((args.contexts, args.actions), 1.0 / args.actions)
    q = _measure(f"solve_regularized {args.contexts} x {args.actions} (tau=0.05)",
                 lambda: solve_regularized(G, ref, 0.05))
    print(f"  max |INPO limit - Newton solution| = {np.abs(tr.pi - q).max():.2e}")


if __name__ == "__main__":
    main()
