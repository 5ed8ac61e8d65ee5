"""The optimization of one iteration: minimize the algorithm's loss L_t over the iteration's pairs
(:func:`train_on_pairs`: AdamW reset per iteration, linear warm-up and decay, gradient clipping and
accumulation, NaN/inf guards, optional length-grouped batches). The anchors' log-probs (pi_ref, pi_t, past
iterates) come in precomputed (:func:`inpo.logprobs.cache_logprobs`); only the policy runs with gradients.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from accelerate import Accelerator

from inpo.algorithms import Algorithm, LossInputs, Pairs, reduce_logps
from inpo.config import RunConfig
from inpo.errors import InpoError
from inpo.logprobs import collate, sequence_logprobs
from inpo.losses import preference_metrics
from inpo.sampling import Samples


class NonFiniteError(InpoError):
    """A NaN/inf loss or gradient: the iteration stops, the last good checkpoint is kept."""


def train_on_pairs(
    policy: torch.nn.Module,
    accelerator: Accelerator,
    algo: Algorithm,
    cfg: RunConfig,
    samples: Samples,
    pairs: Pairs,
    cache: dict[str, torch.Tensor],
    winrates: torch.Tensor | None,
    *,
    pad_id: int,
    seed: int,
    on_step: Callable[[], None] | None = None,
    optimizer: torch.optim.Optimizer | None = None,
) -> dict[str, float]:
    """E epochs of AdamW on the algorithm's loss over the pairs. Returns mean metrics.

    ``optimizer``: the run's AdamW, prepared together with the policy (what DeepSpeed / FSDP require); its
    state is cleared so every iteration starts a fresh AdamW, as the papers do. Without it, one is made
    here. The learning-rate schedule is a plain ``LambdaLR`` stepped once per optimizer step (accelerate's
    scheduler wrapper would step it once per process).

    A step takes ``train.batch_size`` prompts with all their pairs, split into ``train.grad_accum``
    micro-batches; each micro-batch's weighted loss is divided by the step's total weight, so
    accumulation 1x8 == 8x1. Each distinct response of a micro-batch goes through the model once
    (chosen and rejected in one forward; with K samples and all pairs, K forwards serve K(K-1) pairs).
    """
    tc = cfg.train
    prompts = torch.unique(pairs.prompt)
    steps_per_epoch = math.ceil(len(prompts) / tc.batch_size)
    total = steps_per_epoch * tc.epochs
    warmup = int(tc.warmup_ratio * total)

    def lr_factor(s: int) -> float:  # linear warm-up, then linear decay
        return (s + 1) / (warmup + 1) if s < warmup else max(0.0, (total - s) / max(1, total - warmup))

    if optimizer is None:
        optimizer = accelerator.prepare(
            torch.optim.AdamW(policy.parameters(), lr=tc.lr, weight_decay=tc.weight_decay))
    inner = getattr(optimizer, "optimizer", optimizer)  # the torch optimizer inside accelerate's wrapper
    inner.state.clear()
    optimizer.zero_grad(set_to_none=True)
    scheduler = torch.optim.lr_scheduler.LambdaLR(inner, lr_factor)
    device = accelerator.device
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([len(r) for r in samples.responses], dtype=torch.float32)
    sums: dict[str, float] = {}
    weight_seen = 0.0
    policy.train()
    for epoch in range(tc.epochs):
        order = (length_grouped_order(prompts, samples, tc.batch_size, g) if tc.group_by_length
                 else prompts[torch.randperm(len(prompts), generator=g)])
        for s in range(steps_per_epoch):
            step_prompts = order[s * tc.batch_size : (s + 1) * tc.batch_size]
            step_weight = pairs.weight[torch.isin(pairs.prompt, step_prompts)].sum()
            world, rank = accelerator.num_processes, accelerator.process_index
            n_micro = min(tc.grad_accum, len(step_prompts)) if world == 1 else tc.grad_accum * world
            for micro in torch.tensor_split(step_prompts, n_micro)[rank::world]:
                idx = torch.nonzero(torch.isin(pairs.prompt, micro)).squeeze(-1)
                if len(idx) == 0:  # every process must join each forward and backward (DDP): a zero contribution
                    dummy = torch.full((1, 1), pad_id, dtype=torch.long, device=device)
                    accelerator.backward(policy(input_ids=dummy, use_cache=False).logits.sum() * 0.0)
                    continue
                c, r = pairs.chosen[idx], pairs.rejected[idx]
                uniq, inv = torch.unique(torch.cat([c, r]), return_inverse=True)
                u = uniq.tolist()
                ids, att, resp = collate([samples.prompt_ids[i // samples.k] for i in u],
                                         [samples.responses[i] for i in u], pad_id)
                lp = sequence_logprobs(policy, ids.to(device), att.to(device), resp.to(device),
                                       chunk=tc.logprob_chunk).float().cpu()[inv]
                b = len(idx)

                def get(name: str, c: torch.Tensor = c, r: torch.Tensor = r) -> tuple[Any, Any]:
                    return (cache[name][c], cache[name][r]) if name in cache else (None, None)

                hist, wr = cache.get("hist"), winrates
                inputs = reduce_logps(LossInputs(  # train.logprob_reduction: sums, or per-token means of all of them
                    lp[:b], lp[b:], *get("ref"), *get("prev"),
                    hist[c] if hist is not None else None, hist[r] if hist is not None else None,
                    wr[c] if wr is not None else None, wr[r] if wr is not None else None,
                    lengths[c], lengths[r],
                ), cfg.train.logprob_reduction)
                per_example = algo.loss(inputs, cfg.algo)
                w = pairs.weight[idx]
                loss = (per_example * w).sum() / step_weight * world  # DDP averages gradients over processes
                if not torch.isfinite(loss):
                    raise NonFiniteError(f"non-finite loss in epoch {epoch + 1}, step {s + 1}: iteration stopped, "
                                         "last good checkpoint kept")
                accelerator.backward(loss)
                anchor_c = inputs.ref_chosen if inputs.ref_chosen is not None else inputs.prev_chosen
                anchor_r = inputs.ref_rejected if inputs.ref_rejected is not None else inputs.prev_rejected
                metrics = preference_metrics(inputs.policy_chosen, inputs.policy_rejected, anchor_c, anchor_r,
                                             weights=w)
                metrics["loss/train"] = ((per_example * w).sum() / w.sum()).item()
                wsum = w.sum().item()
                for key, v in metrics.items():
                    sums[key] = sums.get(key, 0.0) + v * wsum
                weight_seen += wsum
            grad_norm = accelerator.clip_grad_norm_(policy.parameters(), tc.max_grad_norm)
            if not torch.isfinite(torch.as_tensor(grad_norm)):
                raise NonFiniteError(f"non-finite gradient in epoch {epoch + 1}, step {s + 1}: iteration stopped, "
                                     "last good checkpoint kept")
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            if on_step is not None:
                on_step()
    policy.eval()
    if accelerator.num_processes > 1:
        from accelerate.utils import gather_object

        parts = gather_object([(sums, weight_seen)])
        sums = {k: sum(p[0].get(k, 0.0) for p in parts) for k in parts[0][0]}
        weight_seen = sum(p[1] for p in parts)
    return {k: v / max(weight_seen, 1e-12) for k, v in sums.items()}


def length_grouped_order(prompts: torch.Tensor, samples: Samples, batch_size: int, g: torch.Generator
                         ) -> torch.Tensor:
    """Prompts sorted by their longest sequence (prompt + longest response), cut into steps of
    ``batch_size`` and the full steps shuffled (seeded), a shorter remainder step last (so that cutting the
    result every ``batch_size`` gives back the steps): batches of similar lengths waste less padding."""
    k = samples.k
    longest = torch.tensor([len(samples.prompt_ids[int(i)]) + max(len(samples.responses[int(i) * k + j])
                                                                  for j in range(k)) for i in prompts])
    by_length = prompts[torch.argsort(longest, stable=True)]
    steps = list(torch.split(by_length, batch_size))
    full = [st for st in steps if len(st) == batch_size]
    rest = [st for st in steps if len(st) < batch_size]
    return torch.cat([full[int(i)] for i in torch.randperm(len(full), generator=g)] + rest)
