"""The pure helpers of bench/iteration_vs_trl.py: ours and TRL train on the same unordered pairs (fast, no model)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from iteration_vs_trl import (  # noqa: E402
    best_vs_worst,
    drop_ties,
    judged_winners,
    phase_rates,
    sequence_tokens,
    unordered_winners,
)

from inpo.algorithms import build_pairs  # noqa: E402

# two prompts, K = 3; P(a > b) for a < b (flat sample indices)
PROBS = {(0, 1): 2 / 3, (0, 2): 0.5, (1, 2): 0.0, (3, 4): 1 / 3, (3, 5): 1.0, (4, 5): 5 / 6}


def matrices(probs: dict[tuple[int, int], float], n: int, k: int) -> torch.Tensor:
    m = torch.full((n, k, k), 0.5, dtype=torch.float64)
    for (a, b), p in probs.items():
        i = a // k
        m[i, a % k, b % k], m[i, b % k, a % k] = p, 1 - p
    return m


def test_ours_all_pairing_without_ties_is_the_peers_pairs() -> None:
    p = build_pairs(matrices(PROBS, 2, 3), "all")
    c, r, w, pr = drop_ties(p.chosen, p.rejected, p.weight, p.prompt)
    assert len(p) == 10 and len(c) == 8  # 5 non-tie pairs, both directions unless a weight is 0 (two 0/1 pairs)
    assert (w != 0.5).all() and len(pr) == len(c)
    ours = unordered_winners(c.tolist(), r.tolist(), w.tolist())
    # by hand: 0 beats 1 (2/3); 2 beats 1 (P(1>2) = 0); 4 beats 3 (1/3); 3 beats 5; 4 beats 5; (0, 2) is a tie
    assert ours == judged_winners(PROBS) == [(0, 1), (2, 1), (3, 5), (4, 3), (4, 5)]


def test_a_tie_is_refused_and_ties_are_dropped() -> None:
    with pytest.raises(ValueError, match="tie"):
        unordered_winners([0], [1], [0.5])
    assert judged_winners({(0, 1): 0.5}) == []


def test_best_vs_worst_one_pair_per_prompt() -> None:
    # prompt 0: mean win-rates 0: (2/3 + 1/2)/2, 1: (1/3 + 0)/2, 2: (1/2 + 1)/2 -> best 2, worst 1
    # prompt 1: 3: (1/3 + 1)/2, 4: (2/3 + 5/6)/2, 5: (0 + 1/6)/2 -> best 4, worst 5
    assert best_vs_worst(PROBS, 2, 3) == [(2, 1), (4, 5)]
    assert best_vs_worst({(0, 1): 0.5}, 1, 2) == []  # all equal: no pair


def test_token_counts_and_rates() -> None:
    assert sequence_tokens([3, 5], [1, 2, 3, 4], 2, [0, 3]) == (3 + 1) + (5 + 4)
    assert phase_rates({"train": {"cpu": 2.0}, "judge": {"cpu": 0.0}}, {"train": 10, "judge": 4}) == {"train": 5.0}
