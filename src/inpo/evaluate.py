"""Evaluation of an LM policy: win rate vs a baseline under a judge, KL to reference, length, and, on
a task with a known game, the exact duality gap of the policy's action (style) distribution.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from inpo.judges.base import Judge


@dataclass(frozen=True)
class WinRate:
    mean: float
    ci_low: float
    ci_high: float
    n: int


def symmetric_win_scores(judge: Judge, prompts: list[str], a: list[str], b: list[str]) -> torch.Tensor:
    """Per-prompt score of a vs b with both orders queried to cancel position bias:
    s = (P(a > b) + 1 - P(b > a)) / 2; a tie (P = 1/2) counts as half a win."""
    p_ab = judge.prob(prompts, a, b).double()
    p_ba = judge.prob(prompts, b, a).double()
    return (p_ab + 1.0 - p_ba) / 2.0


def win_rate(scores: torch.Tensor, z: float = 1.96) -> WinRate:
    """Mean of per-prompt scores with a normal-approximation confidence interval (z=1.96: 95%)."""
    n = scores.numel()
    mean = scores.mean().item()
    se = scores.std(unbiased=True).item() / math.sqrt(n) if n > 1 else float("nan")
    return WinRate(mean, max(0.0, mean - z * se), min(1.0, mean + z * se), n)


def kl_estimate(policy_logps: torch.Tensor, ref_logps: torch.Tensor) -> float:
    """Monte-Carlo KL(pi || pi_ref) from responses sampled from pi: mean of log pi(y) - log pi_ref(y)."""
    return (policy_logps.double() - ref_logps.double()).mean().item()


def mean_length(responses: Sequence[Sequence[int]]) -> float:
    return sum(len(r) for r in responses) / max(1, len(responses))


def game_metrics(game: torch.Tensor, pi: torch.Tensor, pi_ref: torch.Tensor, *, tau: float | None = None
                 ) -> dict[str, float]:
    """Exact metrics of action distributions ``pi`` [N, A] on games ``game`` [N, A, A] (float64):
    mean duality gap, exact win rate against ``pi_ref`` (pi^T P pi_ref), action-level KL to pi_ref and,
    with ``tau``, the duality gap in the tau-KL-regularized game (zero exactly at the equilibrium that
    INPO / MNPO / EGPO / Nash-MD converge to)."""
    from inpo.games import duality_gap
    from inpo.games.metrics import regularized_duality_gap

    game, pi, pi_ref = game.double(), pi.double(), pi_ref.double()
    gaps = torch.as_tensor(duality_gap(game, pi), dtype=torch.float64)
    wr = torch.einsum("ni,nij,nj->n", pi, game, pi_ref)
    kl = (pi * (pi.clamp_min(1e-300).log() - pi_ref.clamp_min(1e-300).log())).sum(-1)
    out = {
        "game/duality_gap": gaps.mean().item(),
        "game/win_rate_vs_ref": wr.mean().item(),
        "game/kl_to_ref": kl.mean().item(),
    }
    if tau is not None and tau > 0:
        ref = pi_ref.clamp_min(1e-12)
        reg = regularized_duality_gap(game.numpy(), pi.numpy(), (ref / ref.sum(-1, keepdim=True)).numpy(), tau)
        out["game/reg_duality_gap"] = float(torch.as_tensor(reg).mean())
    return out
