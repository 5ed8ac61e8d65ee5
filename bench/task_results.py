"""Every algorithm on the built-in task with the default budget and seed: the table of docs/results.md.

    python bench/task_results.py [--algos inpo,dpo,...] [--iterations 6] [--out runs/results]

Runs `inpo train --algo A -T T -q` for each algorithm (same seed, same SFT reference, same sampling and
training budget) and prints a markdown table of the final metrics plus pi_ref's row.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--algos", default="inpo,dpo,ipo,sppo,mnpo,egpo,nash-md")
    ap.add_argument("--iterations", type=int, default=6)
    ap.add_argument("--out", default="runs/results")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rows = []
    for algo in args.algos.split(","):
        out = Path(args.out) / algo
        t0 = time.perf_counter()
        cmd = [sys.executable, "-m", "inpo", "train", "--algo", algo, "-T", str(args.iterations), "--seed",
               str(args.seed), "-o", str(out), "--overwrite", "--quiet"]
        subprocess.run(cmd, check=True)
        wall = time.perf_counter() - t0
        metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        rows.append((algo, metrics, wall))
    print(f"| algorithm | duality gap (iter 0 -> {args.iterations}) | min gap over iters | win rate vs pi_ref "
          "(exact) | win rate vs pi_ref (judge, 95% CI) | KL(pi||pi_ref) | wall s |")
    print("|---|---|---|---|---|---|---|")
    for algo, m, wall in rows:
        first, last = m[0], m[-1]
        gaps = [r["game/duality_gap"] for r in m]
        print(f"| {algo} | {first['game/duality_gap']:.3f} -> {last['game/duality_gap']:.3f} | {min(gaps):.3f} | "
              f"{last['game/win_rate_vs_ref']:.3f} | {last['pref/win_rate']:.3f} "
              f"[{last['pref/win_rate_ci_low']:.3f}, {last['pref/win_rate_ci_high']:.3f}] | "
              f"{last['eval/kl_to_ref']:.3f} | {wall:.0f} |")
    print()
    print("duality gap per iteration:")
    for algo, m, _ in rows:
        print(f"- {algo}: " + " ".join(f"{r['game/duality_gap']:.3f}" for r in m))


if __name__ == "__main__":
    main()
