"""Evaluation of an LM policy: win rate vs a baseline under a judge, KL to reference, length, and, on
a task with a known game, the exact duality gap of the policy's action (style) distribution.
:func:`evaluate_policy` computes all of them for one iterate of a run (the loop's ``eval/*``, ``pref/*``,
``game/*`` metrics, and ``inpo eval``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

import torch

from inpo.config import RunConfig, SamplingConfig
from inpo.errors import InpoError
from inpo.judges.base import Judge
from inpo.judges.checked import CheckedJudge
from inpo.logprobs import batched_sequence_logprobs
from inpo.models import Setup
from inpo.rundir import RunDir, seed_for, staged
from inpo.sampling import response_texts, sample_responses, truncated


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


def evaluate_policy(setup: Setup, policy: torch.nn.Module, cfg: RunConfig, run: RunDir, t: int, *,
                    cache_baseline: bool = True, samples: int = 1, main: bool = True) -> dict[str, float]:
    """Metrics of the policy on the eval prompts (no grad), against ``setup.ref`` as the baseline.

    ``samples`` responses per prompt (at least 2 for KL and length) each battle one baseline response; a prompt's
    score is their mean and the 95% CI is over prompts. ``eval/truncated``: the fraction of the policy's responses
    that hit ``max_new_tokens`` without ending. The baseline's samples are cached in the run dir
    (``cache_baseline``) so every iteration is compared with the same reference responses; a different baseline
    (``inpo eval --baseline``) is sampled afresh. ``main=False``: another process of a sharded (FSDP2) run, which
    runs the same forwards as the main one (every sharded forward is collective) but neither writes the baseline's
    samples nor queries the judge."""
    prompts = [p.ids for p in setup.eval_prompts]
    one = SamplingConfig(**{**cfg.sampling.model_dump(), "num_samples": max(2, samples)})
    kw = {"stop_ids": setup.stop_ids, "tokenizer": setup.tokenizer}
    resp = sample_responses(policy, prompts, one, eos_id=setup.eos_id, pad_id=setup.pad_id,
                            seed=seed_for(cfg, t, 0, "eval"), **kw)
    both = [r for rs in resp for r in rs]
    both_prompts = [p for p in prompts for _ in range(one.num_samples)]
    lp_pol = batched_sequence_logprobs(policy, both_prompts, both, pad_id=setup.pad_id,
                                       chunk=cfg.train.logprob_chunk)
    lp_ref = batched_sequence_logprobs(setup.ref, both_prompts, both, pad_id=setup.pad_id,
                                       chunk=cfg.train.logprob_chunk)
    out = {"eval/kl_to_ref": kl_estimate(lp_pol, lp_ref), "eval/mean_length": mean_length(both)}
    if setup.task is None:  # real text (the built-in task's evaluation rows keep their keys)
        cut = truncated(both, setup.stop_ids or [setup.eos_id], setup.tokenizer, cfg.sampling.stop)
        out["eval/truncated"] = sum(cut) / max(1, len(cut))
    flat = [r[j] for r in resp for j in range(samples)]
    texts = [p.text for p in setup.eval_prompts]
    if setup.task is not None:
        game = setup.task.game_for_prompts(texts)
        pi = setup.task.style_distribution(policy, setup.tokenizer, texts)
        pi_ref = setup.task.style_distribution(setup.ref, setup.tokenizer, texts)
        out.update(game_metrics(game, pi, pi_ref, tau=cfg.algo.tau))
    # win rate against pi_ref under the run's judge (both orders), reference samples cached on disk
    def baseline_samples() -> list[list[int]]:
        return [r[j] for r in sample_responses(setup.ref, prompts, one, eos_id=setup.eos_id, pad_id=setup.pad_id,
                                                seed=seed_for(cfg, 0, 0, "eval_ref"), **kw) for j in range(samples)]

    name = "eval_ref_samples" if samples == 1 else f"eval_ref_samples_s{samples}"
    if not main:  # the file exists on every process or on none: the main one writes it after the forwards
        if not (cache_baseline and run.stage(0, name).exists()):
            baseline_samples()
        return out
    ref_resp = staged(run.stage(0, name), baseline_samples) if cache_baseline else baseline_samples()
    if not all(isinstance(r, list) for r in ref_resp):
        raise InpoError(f"{run.stage(0, name)}: damaged cached baseline samples; delete the file")
    if len(ref_resp) != len(flat):  # cached for another number of eval prompts (inpo eval --num-prompts)
        ref_resp = baseline_samples()
    dec = partial(response_texts, setup.tokenizer, stop=cfg.sampling.stop)
    scores = symmetric_win_scores(CheckedJudge(setup.judge, f"evaluation of iteration {t}"),
                                  [x for x in texts for _ in range(samples)], dec(flat), dec(ref_resp))
    wr = win_rate(scores.reshape(len(texts), samples).mean(1))
    out.update({"pref/win_rate": wr.mean, "pref/win_rate_ci_low": wr.ci_low, "pref/win_rate_ci_high": wr.ci_high})
    return out

