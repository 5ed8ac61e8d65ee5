"""Measured numbers for docs/judges.md: BT vs GPM vs pair on synthetic data with a known answer.

    python -m inpo.judges.report                 # seeds 0-3, prints markdown tables (a few minutes, CPU)
    python -m inpo.judges.report --kinds gpm pair --lr 3e-3 --datasets cyclic   # step-size sensitivity

Held-out accuracy (prompt-grouped 20% split) per dataset and judge, the largest error of the judge's
style matrix (averaged over held-out prompts) against the known population matrix, and ECE.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from inpo.judges.data import load_preferences, split_held_out
from inpo.judges.synthetic import (
    CONDORCET_RANKINGS,
    OPPOSITE_RANKINGS,
    annotator_rows,
    condorcet_rows,
    cyclic_matrix,
    cyclic_rows,
    mixture_matrix,
    style_words,
    transitive_matrix,
    transitive_rows,
)
from inpo.judges.train import JudgeTrainConfig, train_judge

DATASETS = {
    # name: (rows(seed), population matrix, epochs)
    "cyclic (3-cycle, 60 prompts)": (lambda s: cyclic_rows(60, seed=s), cyclic_matrix(3), 30),
    "transitive (4 styles, 40 prompts)": (lambda s: transitive_rows(40, seed=s), transitive_matrix(4), 15),
    "mixture (opposite groups 3:1, 30 prompts)": (
        lambda s: annotator_rows(OPPOSITE_RANKINGS, [3, 1], n_prompts=30, seed=s),
        mixture_matrix(OPPOSITE_RANKINGS, [0.75, 0.25]),
        15,
    ),
    "condorcet (3 rotated groups, 40 prompts)": (
        lambda s: condorcet_rows(40, seed=s),
        mixture_matrix(CONDORCET_RANKINGS, [1 / 3] * 3),
        30,
    ),
}


def style_matrix_error(judge, pairs, truth: torch.Tensor) -> float:
    """max |mean over prompts of judge.matrix(style responses) - truth|."""
    n = truth.shape[0]
    by_prompt: dict[str, dict[str, str]] = {}
    for p in pairs:
        for r in (p.chosen, p.rejected):
            by_prompt.setdefault(p.prompt, {})[r.split()[0]] = r
    mats = [judge.matrix(x, [resp[s] for s in style_words(n)]) for x, resp in by_prompt.items() if len(resp) == n]
    return float((torch.stack(mats).mean(0) - truth).abs().max())


def run(
    seeds: list[int], kinds: list[str], lr: float = 1e-3, datasets: list[str] | None = None, prompt_head: bool = False
) -> None:
    torch.set_num_threads(1)
    print(f"held-out accuracy / max style-matrix error / ECE; lr={lr}; prompt_head={prompt_head}; seeds {seeds}; "
          "builtin-tiny backbone (Llama, hidden 32, 1 layer)\n")
    print("| dataset | judge | accuracy per seed | mean acc | max matrix error (mean) | ECE (mean) |")
    print("|---|---|---|---|---|---|")
    for name, (make, truth, epochs) in DATASETS.items():
        if datasets and not any(name.startswith(d) for d in datasets):
            continue
        for kind in kinds:
            accs, errs, eces = [], [], []
            for seed in seeds:
                rows = make(seed)
                held = split_held_out(load_preferences(rows).pairs, fraction=0.2, seed=seed)[1]
                cfg = JudgeTrainConfig(epochs=epochs, seed=seed, lr=lr, prompt_head=prompt_head)
                res = train_judge(rows, kind, "builtin-tiny", None, cfg)
                accs.append(res.metrics["accuracy"])
                eces.append(res.metrics["ece"])
                errs.append(style_matrix_error(res.judge, held, truth))
            print(f"| {name} | {kind} | {' '.join(f'{a:.3f}' for a in accs)} | {statistics.mean(accs):.3f} "
                  f"| {statistics.mean(errs):.3f} | {statistics.mean(eces):.3f} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    ap.add_argument("--kinds", nargs="+", default=["bt", "gpm", "pair"])
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--datasets", nargs="+", default=None, help="name prefixes: cyclic transitive mixture condorcet")
    ap.add_argument("--prompt-head", action="store_true", help="GPM with prompt-dependent eigenvalues")
    args = ap.parse_args()
    t = time.time()
    run(args.seeds, args.kinds, args.lr, args.datasets, args.prompt_head)
    print(f"\n({time.time() - t:.0f} s)")


if __name__ == "__main__":
    main()
