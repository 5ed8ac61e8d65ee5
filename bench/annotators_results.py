"""The annotators task (SmolLM2-135M-Instruct + LoRA, rule-based annotator oracle): INPO vs iterative DPO vs SPPO at
the same budget; prints docs/results.md's table from the runs' metrics.jsonl.

    for a in inpo dpo sppo; do
      inpo train configs/annotators_sampled.yaml --algo $a -T 2 --seed 0 --set data.num_prompts=16 \\
        --set data.num_eval_prompts=64 --set threads=1 -o runs/annotators-$a
    done
    python bench/annotators_results.py runs/annotators-inpo runs/annotators-dpo runs/annotators-sppo

Win rate: the iterate vs pi_ref's cached samples on the held-out prompts under the exact oracle (both orders, ties
half; 95% normal CI over prompts); KL: Monte-Carlo KL(pi || pi_ref) on 2 samples per prompt; length in tokens.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml


def main(runs: list[str]) -> None:
    print("| algorithm | iter | win rate vs pi_ref [95% CI] | KL(pi‖ref) | mean length | truncated | "
          "sample / judge / log-probs / train (s) | peak RSS (GB) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for run in runs:
        algo = yaml.safe_load((Path(run) / "config.yaml").read_text())["algo"]
        for line in (Path(run) / "metrics.jsonl").read_text().splitlines():
            r = json.loads(line)
            times = " / ".join(f"{r[k]:.0f}" for k in ("time/sample", "time/judge", "time/logprobs", "time/train")
                               ) if "time/train" in r else "-"
            rss = f"{r['perf/peak_rss_mb'] / 1024:.1f}" if "perf/peak_rss_mb" in r else "-"
            print(f"| {algo['name']} | {r['iteration']} | {r['pref/win_rate']:.3f} [{r['pref/win_rate_ci_low']:.3f}, "
                  f"{r['pref/win_rate_ci_high']:.3f}] | {r['eval/kl_to_ref']:.3f} | {r['eval/mean_length']:.1f} | "
                  f"{r.get('eval/truncated', float('nan')):.2f} | {times} | {rss} |")


if __name__ == "__main__":
    main(sys.argv[1:])
