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
    print(f"| algorithm | duality gap (iter 0 -> {args.iterations}) | min gap over iters | regularized gap, tau=0.1 "
          "(iter 0 -> T) | win rate vs pi_ref (exact) | win rate vs pi_ref (judge, 95% CI) | KL(pi||pi_ref) | wall s |")
    print("|---|---|---|---|---|---|---|---|")
    for algo, m, wall in rows:
        first, last = m[0], m[-1]
        gaps = [r["game/duality_gap"] for r in m]
        reg = f"{first['game/reg_duality_gap']:.3f} -> {last['game/reg_duality_gap']:.3f}"
        gap = f"{first['game/duality_gap']:.3f} -> {last['game/duality_gap']:.3f}"
        print(f"| {algo} | {gap} | {min(gaps):.3f} | {reg} | "
              f"{last['game/win_rate_vs_ref']:.3f} | {last['pref/win_rate']:.3f} "
              f"[{last['pref/win_rate_ci_low']:.3f}, {last['pref/win_rate_ci_high']:.3f}] | "
              f"{last['eval/kl_to_ref']:.3f} | {wall:.0f} |")
    print()
    print("duality gap per iteration:")
    for algo, m, _ in rows:
        print(f"- {algo}: " + " ".join(f"{r['game/duality_gap']:.3f}" for r in m))
    print("- exact INPO update on the task's game from pi_ref's measured style distribution (no sampling, no "
          "SGD): " + " ".join(f"{g:.3f}" for g in exact_inpo_gaps(args.iterations)))
    print(f"- its limit, the tau-regularized equilibrium: {regularized_equilibrium_gap():.3f}")


def _task_game() -> tuple:
    """The eval prompts' games and pi_ref's exact style distribution on them."""
    import numpy as np
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from inpo.config import RunConfig
    from inpo.tasks import BuiltinTask, build_reference

    task = BuiltinTask()
    ref_dir = build_reference(task, RunConfig().task.sft_cache, progress=False)
    model, tok = AutoModelForCausalLM.from_pretrained(ref_dir), AutoTokenizer.from_pretrained(ref_dir)
    game = task.game_for_prompts(task.eval_prompts).numpy()
    pi_ref = task.style_distribution(model, tok, task.eval_prompts).double().numpy()
    return game, np.clip(pi_ref, 1e-12, None) / np.clip(pi_ref, 1e-12, None).sum(-1, keepdims=True)


def regularized_equilibrium_gap() -> float:
    import numpy as np

    from inpo.config import RunConfig
    from inpo.games import duality_gap
    from inpo.games.nash import solve_regularized

    game, pi_ref = _task_game()
    pi = solve_regularized(game, pi_ref, RunConfig().algo.tau)
    return float(np.mean(np.asarray(duality_gap(game, pi))))


def exact_inpo_gaps(iterations: int) -> list[float]:
    """What the LM run should track: pi_{t+1} ∝ pi_t^{1-tau/eta} pi_ref^{tau/eta} exp(P pi_t / eta) on the eval
    prompts' games, started at the SFT model's exact style distribution (default eta, tau)."""
    import numpy as np
    import torch

    from inpo.config import RunConfig
    from inpo.games import duality_gap
    from inpo.games.dynamics import inpo_update

    cfg = RunConfig()
    game, pi_ref = _task_game()
    logref = np.log(pi_ref)
    logpi, gaps = logref.copy(), [float(np.mean(duality_gap(game, pi_ref)))]
    for _ in range(iterations):
        logpi = inpo_update(game, logpi, logref, eta=cfg.algo.eta, tau=cfg.algo.tau)
        gaps.append(float(torch.as_tensor(duality_gap(game, np.exp(logpi))).mean()))
    return gaps


if __name__ == "__main__":
    main()
