"""The annotators task (SmolLM2-135M-Instruct + LoRA, rule-based annotator oracle): INPO vs iterative DPO vs SPPO at
the same budget; prints docs/results.md's table from the runs' metrics.jsonl.

    for a in inpo dpo sppo; do
      inpo train configs/annotators_sampled.yaml --algo $a -T 2 --seed 0 --set data.num_prompts=16 \\
        --set data.num_eval_prompts=64 --set threads=1 -o runs/annotators-$a
    done
    python bench/annotators_results.py runs/annotators-inpo runs/annotators-dpo runs/annotators-sppo

Win rate: the iterate vs pi_ref's cached samples on the held-out prompts under the exact oracle (both orders, ties
half; 95% normal CI over prompts); KL: Monte-Carlo KL(pi || pi_ref) on 2 samples per prompt; length in tokens.

``--styles`` adds a second table: what the oracle's rules read in each iteration's training samples
(``stages/iter_t/s0_samples.pt``, drawn from pi_{t-1} on the training prompts): the share of responses with list
items, the mean word count and the share cut at ``max_new_tokens``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml


def styles(runs: list[str]) -> None:
    import statistics

    import torch
    from transformers import AutoTokenizer

    from inpo.models_real import smollm2_path
    from inpo.tasks.annotators import list_items, words

    tok = AutoTokenizer.from_pretrained(smollm2_path())
    print("\n| algorithm | samples of | responses | with list items | mean words | cut at max_new_tokens |")
    print("|---|---|---:|---:|---:|---:|")
    for run in runs:
        algo = yaml.safe_load((Path(run) / "config.yaml").read_text())["algo"]["name"]
        for d in sorted((Path(run) / "stages").glob("iter_*"), key=lambda d: int(d.name.split("_")[1])):
            f = d / "s0_samples.pt"
            if not f.is_file():
                continue
            samples = torch.load(f, weights_only=True)
            texts = [tok.decode(x, skip_special_tokens=True) for x in samples]
            cut = sum(tok.eos_token_id not in x and len(x) > 0 for x in samples) / len(samples)
            t = int(d.name.split("_")[1])
            print(f"| {algo} | pi_{t - 1} | {len(texts)} | {sum(list_items(x) > 0 for x in texts) / len(texts):.3f} | "
                  f"{statistics.mean(words(x) for x in texts):.1f} | {cut:.2f} |")


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
    args = [a for a in sys.argv[1:] if a != "--styles"]
    main(args)
    if "--styles" in sys.argv[1:]:
        styles(args)
