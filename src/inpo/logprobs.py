"""Batched, padding-aware sequence log-probs.

A sequence is ``prompt_ids + response_ids``; its log-prob is the sum over *response* tokens of
log pi(token | previous tokens) (prompt tokens masked). Batches are right-padded, so position ids
are the plain 0..L-1 of each row and padding never changes a row's value.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from inpo.sampling import Samples

Tensor = torch.Tensor


def collate(
    prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]], pad_id: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Right-padded ``input_ids``, ``attention_mask`` and ``response_mask`` (1 on response tokens)."""
    lengths = [len(p) + len(r) for p, r in zip(prompts, responses, strict=True)]
    n, width = len(lengths), max(lengths)
    input_ids = torch.full((n, width), pad_id, dtype=torch.long)
    attention = torch.zeros((n, width), dtype=torch.long)
    response = torch.zeros((n, width), dtype=torch.bool)
    for i, (p, r) in enumerate(zip(prompts, responses, strict=True)):
        lp, lr = len(p), len(r)
        input_ids[i, :lp] = torch.as_tensor(list(p), dtype=torch.long)
        input_ids[i, lp : lp + lr] = torch.as_tensor(list(r), dtype=torch.long)
        attention[i, : lp + lr] = 1
        response[i, lp : lp + lr] = True
    return input_ids, attention, response


def token_logprobs(logits: Tensor, input_ids: Tensor) -> Tensor:
    """log pi(input_ids[:, t+1] | ...) from ``logits[:, t]``: shape [B, L-1], float32 or wider."""
    logits = logits[:, :-1].float()
    targets = input_ids[:, 1:]
    picked = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def sequence_logprobs(
    model: torch.nn.Module, input_ids: Tensor, attention_mask: Tensor, response_mask: Tensor
) -> Tensor:
    """Summed response log-probs per row (differentiable; wrap in ``torch.no_grad`` to cache).

    The LM head (and its softmax over the vocabulary) runs only from the first position that predicts a
    response token in any row (``logits_to_keep``): prompt positions cost the trunk but not the head, the
    dominant cost of small models with large vocabularies and of long prompts. Models whose forward does
    not take ``logits_to_keep`` get full logits.
    """
    first = int(response_mask.float().argmax(-1).min())  # earliest response token over the batch
    keep = input_ids.shape[1] - max(first - 1, 0)  # positions first-1 .. L-1 predict tokens first .. L
    try:
        logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False,
                       logits_to_keep=keep).logits
    except TypeError:
        logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
    start = input_ids.shape[1] - logits.shape[1]
    lp = token_logprobs(logits, input_ids[:, start:])
    return (lp * response_mask[:, start + 1 :]).sum(-1)


@torch.no_grad()
def batched_sequence_logprobs(
    model: torch.nn.Module,
    prompts: Sequence[Sequence[int]],
    responses: Sequence[Sequence[int]],
    *,
    pad_id: int,
    batch_size: int = 256,
    device: torch.device | str | None = None,
) -> Tensor:
    """Sequence log-probs of many (prompt, response) pairs, no grad, in length-sorted batches.

    Sorting by length keeps padding waste low; results are returned in the input order.
    """
    device = device if device is not None else next(model.parameters()).device
    n = len(prompts)
    order = sorted(range(n), key=lambda i: len(prompts[i]) + len(responses[i]))
    out = torch.empty(n, dtype=torch.float32)
    was_training = model.training
    model.eval()
    try:
        for s in range(0, n, batch_size):
            idx = order[s : s + batch_size]
            ids, att, resp = collate([prompts[i] for i in idx], [responses[i] for i in idx], pad_id)
            lp = sequence_logprobs(model, ids.to(device), att.to(device), resp.to(device))
            out[torch.as_tensor(idx)] = lp.float().cpu()
    finally:
        model.train(was_training)
    return out


def cache_logprobs(
    models: dict[str, torch.nn.Module], samples: Samples, *, pad_id: int, batch_size: int
) -> dict[str, torch.Tensor]:
    """No-grad sequence log-probs of every sample under each named model (one pass per model)."""
    prompts = [samples.prompt_ids[i // samples.k] for i in range(len(samples.responses))]
    return {
        name: batched_sequence_logprobs(m, prompts, samples.responses, pad_id=pad_id, batch_size=batch_size)
        for name, m in models.items()
    }
