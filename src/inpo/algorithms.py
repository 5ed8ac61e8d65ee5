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
from inpo.config import AlgoConfig, RunConfig
from inpo.losses import win_rates

__all__ = ["ALGORITHMS", "Algorithm", "LossInputs", "Pairs", "at_iteration", "build_pairs", "mixture_coefficient",
           "reduce_logps", "win_rates"]

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
    # per-token IPO (TRL's loss_type="ipo") is train.logprob_reduction=mean: the inputs arrive already reduced
    return losses.ipo_loss(b.policy_chosen, b.policy_rejected, b.ref_chosen, b.ref_rejected, beta=c.beta)


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
        # mixture pi_t^{1-tau/eta} pi_ref^{tau/eta} (Munos et al. 2023, their mixture coefficient eta_M tau with
        # eta_M = 1/eta; see mixture_coefficient and losses.nash_md_loss for the policy-gradient form).
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


def at_iteration(cfg: RunConfig, t: int) -> RunConfig:
    """The run config of iteration t: with ``algo.eta_schedule=theorem4``, ``algo.eta`` is INPO's Theorem 4 step
    ``eta_t = tau (t+2)/2`` (t = 1, 2, ...: iteration t updates pi_t, pi_1 = pi_ref); unchanged otherwise."""
    if cfg.algo.eta_schedule == "constant":
        return cfg
    return cfg.model_copy(update={"algo": cfg.algo.model_copy(update={"eta": cfg.algo.eta_at(t)})})


def mixture_coefficient(c: AlgoConfig) -> float:
    """Nash-MD's geometric-mixture weight on pi_ref, ``pi_t^{1-m} pi_ref^{m}``: ``m = tau/eta`` in INPO's symbols
    (Munos et al.'s ``eta_M tau`` with their learning rate ``eta_M = 1/eta``; TRL NashMD ``mixture_coef``)."""
    assert c.eta is not None and c.tau is not None
    return c.tau / c.eta


_LOGP_FIELDS = ("policy", "ref", "prev", "hist")


def reduce_logps(b: LossInputs, reduction: str | None) -> LossInputs:
    """The batch's log-probs as ``train.logprob_reduction`` asks: ``sum`` (or None) leaves the summed sequence
    log-probs; ``mean`` divides every one of them, policy and cached anchors (ref, prev, history) alike, by its
    response's token count, clamped at 1 as TRL does (an empty response, immediate EOS, has log-prob 0)."""
    if reduction in (None, "sum"):
        return b
    if reduction != "mean":
        raise ValueError(f"unknown logprob_reduction {reduction!r} (sum | mean)")
    if b.len_chosen is None or b.len_rejected is None:
        raise ValueError("logprob_reduction=mean needs the response lengths")
    lc = b.len_chosen.to(b.policy_chosen.dtype).clamp(min=1.0)
    lr = b.len_rejected.to(b.policy_chosen.dtype).clamp(min=1.0)
    out = dict(b.__dict__)
    for name in _LOGP_FIELDS:
        for side, n in (("chosen", lc), ("rejected", lr)):
            v = out[f"{name}_{side}"]
            if v is not None:
                out[f"{name}_{side}"] = v / (n.unsqueeze(-1) if v.ndim > n.ndim else n)
    return LossInputs(**out)


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
        s = win_rates(m, "leave_one_out")
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
