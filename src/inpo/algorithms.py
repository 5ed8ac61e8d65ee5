"""The algorithm registry: name -> loss, the log-probs it needs, how pairs are built, its step scheme.

Algorithms differ in four places only (DESIGN.md section 6): the loss (inpo/losses.py), the
anchor/opponents (ref, previous iterate, history), how targets are estimated (win-rates from the K
samples or not), and the step scheme (EGPO's extra step). Adding an algorithm = one loss + one entry.

Pair building works on the judge's K x K matrix ``M[i, j] = P(y_i > y_j)`` of each prompt:

* ``all``: every unordered pair {i, j}, in both orientations with weights M[i, j] and M[j, i]
  ("soft labels"): the exact expectation over the oracle's label, so the squared losses' population
  minimizer (the mirror-descent update) is targeted without label noise.
* ``best_vs_worst``: the response with the highest mean win-rate against the other samples vs the one
  with the lowest (Online-RLHF / iterative DPO practice); prompts where all are tied give no pair.
* ``random``: one random pair per prompt, the winner drawn from Bernoulli(M[i, j]).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from inpo import losses
from inpo.config import AlgoConfig

Tensor = torch.Tensor


@dataclass
class LossInputs:
    """Log-probs of one batch of pairs. Absent entries are None (the loop skips what is not needed)."""

    policy_chosen: Tensor
    policy_rejected: Tensor
    ref_chosen: Tensor | None = None
    ref_rejected: Tensor | None = None
    prev_chosen: Tensor | None = None
    prev_rejected: Tensor | None = None
    hist_chosen: Tensor | None = None  # [B, n]
    hist_rejected: Tensor | None = None
    winrate_chosen: Tensor | None = None
    winrate_rejected: Tensor | None = None
    len_chosen: Tensor | None = None
    len_rejected: Tensor | None = None


@dataclass(frozen=True)
class Algorithm:
    name: str
    loss: Callable[[LossInputs, AlgoConfig], Tensor]
    needs_ref: bool
    needs_prev: bool
    needs_history: bool
    needs_winrates: bool
    pairing: str
    steps_per_iteration: int = 1
    sample_from_mixture: bool = False


def _inpo(b: LossInputs, c: AlgoConfig) -> Tensor:
    return losses.inpo_loss(
        b.policy_chosen, b.policy_rejected, b.ref_chosen, b.ref_rejected, b.prev_chosen, b.prev_rejected,
        eta=c.eta, tau=c.tau,
    )


def _mnpo(b: LossInputs, c: AlgoConfig) -> Tensor:
    return losses.mnpo_loss(
        b.policy_chosen, b.policy_rejected, b.ref_chosen, b.ref_rejected, b.hist_chosen, b.hist_rejected,
        eta=c.eta, tau=c.tau, weights=list(c.mnpo_weights),
    )


def _egpo(b: LossInputs, c: AlgoConfig) -> Tensor:
    return losses.egpo_loss(
        b.policy_chosen, b.policy_rejected, b.ref_chosen, b.ref_rejected, b.prev_chosen, b.prev_rejected,
        eta=c.eta, tau=c.tau,
    )


def _ipo(b: LossInputs, c: AlgoConfig) -> Tensor:
    lengths = (b.len_chosen, b.len_rejected) if c.ipo_average_tokens else (None, None)
    return losses.ipo_loss(
        b.policy_chosen, b.policy_rejected, b.ref_chosen, b.ref_rejected, beta=c.beta,
        chosen_lengths=lengths[0], rejected_lengths=lengths[1],
    )


def _dpo(b: LossInputs, c: AlgoConfig) -> Tensor:
    return losses.dpo_loss(b.policy_chosen, b.policy_rejected, b.ref_chosen, b.ref_rejected, beta=c.beta)


def _sppo(b: LossInputs, c: AlgoConfig) -> Tensor:
    return losses.sppo_loss(
        b.policy_chosen, b.policy_rejected, b.prev_chosen, b.prev_rejected, b.winrate_chosen,
        b.winrate_rejected, eta=c.eta,
    )


ALGORITHMS: dict[str, Algorithm] = {
    a.name: a
    for a in [
        Algorithm("inpo", _inpo, needs_ref=True, needs_prev=True, needs_history=False, needs_winrates=False,
                  pairing="all"),
        Algorithm("mnpo", _mnpo, needs_ref=True, needs_prev=False, needs_history=True, needs_winrates=False,
                  pairing="all"),
        Algorithm("egpo", _egpo, needs_ref=True, needs_prev=True, needs_history=False, needs_winrates=False,
                  pairing="all", steps_per_iteration=2),
        # Nash-MD: the same regression target as INPO, but pairs sampled from the token-level geometric
        # mixture pi_t^{1-eta*tau} pi_ref^{eta*tau} (Munos et al. 2023; see losses.nash_md_loss for the
        # policy-gradient form used on the games).
        Algorithm("nash-md", _inpo, needs_ref=True, needs_prev=True, needs_history=False, needs_winrates=False,
                  pairing="all", sample_from_mixture=True),
        Algorithm("ipo", _ipo, needs_ref=True, needs_prev=False, needs_history=False, needs_winrates=False,
                  pairing="best_vs_worst"),
        Algorithm("dpo", _dpo, needs_ref=True, needs_prev=False, needs_history=False, needs_winrates=False,
                  pairing="best_vs_worst"),
        Algorithm("sppo", _sppo, needs_ref=False, needs_prev=True, needs_history=False, needs_winrates=True,
                  pairing="best_vs_worst"),
    ]
}


@dataclass(frozen=True)
class Pairs:
    """Pairs as indices into the flat list of samples (prompt i, sample k -> i*K + k)."""

    chosen: Tensor  # long [P]
    rejected: Tensor  # long [P]
    weight: Tensor  # float [P]
    prompt: Tensor  # long [P]

    def __len__(self) -> int:
        return int(self.chosen.numel())


def win_rates(m: Tensor) -> Tensor:
    """P^(y_i > pi_t) per sample: mean of M[i, j] over the other K-1 samples. ``m``: [N, K, K]."""
    k = m.shape[-1]
    return (m.sum(-1) - m.diagonal(dim1=-2, dim2=-1)) / (k - 1)


def build_pairs(m: Tensor, pairing: str, *, generator: torch.Generator | None = None) -> Pairs:
    """Pairs from the judge matrices ``m`` [N, K, K] (see the module docstring for the schemes)."""
    n, k, _ = m.shape
    base = torch.arange(n).unsqueeze(-1) * k
    if pairing == "all":
        ii, jj = torch.triu_indices(k, k, offset=1)
        w_ij = m[:, ii, jj]  # [N, k(k-1)/2]
        chosen = torch.cat([base + ii, base + jj], dim=1)
        rejected = torch.cat([base + jj, base + ii], dim=1)
        weight = torch.cat([w_ij, 1.0 - w_ij], dim=1)
        prompt = torch.arange(n).unsqueeze(-1).expand_as(chosen)
        keep = weight.flatten() > 0
        return Pairs(chosen.flatten()[keep], rejected.flatten()[keep], weight.flatten()[keep].float(),
                     prompt.flatten()[keep])
    if pairing == "best_vs_worst":
        s = win_rates(m)
        best, worst = s.argmax(-1), s.argmin(-1)
        keep = (s.max(-1).values - s.min(-1).values) > 1e-9
        idx = torch.arange(n)[keep]
        return Pairs(idx * k + best[keep], idx * k + worst[keep], torch.ones(len(idx)), idx)
    if pairing == "random":
        first = torch.randint(0, k, (n,), generator=generator)
        second = (first + torch.randint(1, k, (n,), generator=generator)) % k
        p = m[torch.arange(n), first, second]
        first_wins = torch.rand(n, generator=generator, dtype=p.dtype) < p
        chosen = torch.where(first_wins, first, second)
        rejected = torch.where(first_wins, second, first)
        idx = torch.arange(n)
        return Pairs(idx * k + chosen, idx * k + rejected, torch.ones(n), idx)
    raise ValueError(f"unknown pairing {pairing!r}")
