"""INPO / iterative DPO / SPPO per iteration against the same fixed reference outputs (pi_ref's), AlpacaEval 2 style:
the table of docs/results.md ("Win rate vs fixed reference outputs").

    python bench/reference_battles.py [--algos inpo,dpo,sppo] [--iterations 6] [--out runs/battles] [--lc-ci 200]

1. `inpo train --algo A -T T --seed 0` for each algorithm (the default built-in task and budget);
2. `inpo eval RUN --iteration 0 --seed 1 --outputs OUT/pi_ref.json`: pi_ref's sampled outputs, the reference;
3. `inpo eval RUN... --iteration all --reference OUT/pi_ref.json --judge builtin --lc-ci N --plot ... --json`;
then prints the markdown table. The LC column needs `pip install 'inpo[alpaca]'`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path


def inpo(*args: str) -> str:
    return subprocess.run([sys.executable, "-m", "inpo", *args], check=True, capture_output=True, text=True).stdout


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--algos", default="inpo,dpo,sppo")
    ap.add_argument("--iterations", type=int, default=6)
    ap.add_argument("--out", default="runs/battles")
    ap.add_argument("--lc-ci", type=int, default=200)
    ap.add_argument("--plot", default="docs/img/winrate_vs_reference.png")
    args = ap.parse_args()
    out = Path(args.out)
    t0 = time.perf_counter()
    runs = []
    for algo in args.algos.split(","):
        runs.append(str(out / algo))
        inpo("train", "--algo", algo, "-T", str(args.iterations), "--seed", "0", "-o", runs[-1], "--overwrite", "-q")
    ref = out / "pi_ref.json"
    inpo("eval", runs[0], "--iteration", "0", "--seed", "1", "--outputs", str(ref))
    lines = inpo("eval", *runs, "--iteration", "all", "--reference", str(ref), "--judge", "builtin",
                 "--lc-ci", str(args.lc_ci), "--plot", args.plot, "--json").splitlines()
    rows = [json.loads(line) for line in lines]
    (out / "battles.jsonl").write_text("".join(line + "\n" for line in lines))
    r0 = rows[0]
    print(f"reference: {r0['reference']} ({r0['n']} prompts, mean length {r0['reference_length']:.1f} chars); "
          f"judge: {r0['judge']}; {time.perf_counter() - t0:.0f} s")
    print()
    print("| algorithm | iter | win rate [95% CI] | LC win rate [95% CI] | length (chars) | W / T / L "
          "| position bias |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        if r["iteration"] == 0 and r is not r0:
            continue  # pi_ref: the same row for every run
        lc = "-" if r["lc_win_rate"] is None else f"{r['lc_win_rate']:.3f}"
        if r["lc_ci_low"] is not None:
            lc += f" [{r['lc_ci_low']:.3f}, {r['lc_ci_high']:.3f}]"
        name = "pi_ref" if r["iteration"] == 0 else r["algo"]
        print(f"| {name} | {r['iteration']} | {r['win_rate']:.3f} [{r['win_rate_ci_low']:.3f}, "
              f"{r['win_rate_ci_high']:.3f}] | {lc} | {r['length']:.1f} | {r['wins']} / {r['ties']} / {r['losses']} | "
              f"{r['position_bias']:.3f} |")


if __name__ == "__main__":
    main()
