"""Batched, padding-aware sequence log-probs.

A sequence is ``prompt_ids + response_ids``; its log-prob is the sum over *response* tokens of
log pi(token | previous tokens) (prompt tokens masked). Batches are right-padded, so position ids
are the plain 0..L-1 of each row and padding never changes a row's value.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch.utils.checkpoint import checkpoint

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


LOGPROB_CHUNK = 512  # = train.logprob_chunk's default (inpo.config.TrainConfig): response positions per LM-head chunk


def sequence_logprobs(
    model: torch.nn.Module, input_ids: Tensor, attention_mask: Tensor, response_mask: Tensor, *,
    chunk: int = LOGPROB_CHUNK,
) -> Tensor:
    """Summed response log-probs per row (differentiable; wrap in ``torch.no_grad`` to cache).

    ``chunk > 0`` (``train.logprob_chunk``): :func:`chunked_sequence_logprobs`, the LM head applied to the final
    hidden states of the response positions only, ``chunk`` positions at a time, so that one chunk's logits
    [chunk, V] exist at a time (also in backward), instead of the [B, L, V] logits of the model's forward.
    Models it cannot serve (see there) take the path below.

    ``chunk = 0``, or as the fallback: the model's own logits. The LM head (and its softmax over the vocabulary)
    runs only from the first position that predicts a response token in any row (``logits_to_keep``): prompt
    positions cost the trunk but not the head. Models whose forward does not take ``logits_to_keep`` get full
    logits.
    """
    if chunk > 0:
        out = chunked_sequence_logprobs(model, input_ids, attention_mask, response_mask, chunk=chunk)
        if out is not None:
            return out
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


def output_head(model: torch.nn.Module) -> torch.nn.Module | None:
    """The module mapping final hidden states to logits (``get_output_embeddings``), through wrappers that
    expose it (peft's ``PeftModel``; ``.module`` of DDP; ``.peft_model`` of :class:`inpo.models.AdapterDisabled`);
    None when there is none, or when the model's parameters are sharded (FSDP2's ``DTensor``) or partitioned
    (DeepSpeed ZeRO-3): the head cannot be called outside the model's own forward there."""
    from torch.distributed.tensor import DTensor

    if any(isinstance(p, DTensor) or hasattr(p, "ds_id") for p in model.parameters()):
        return None
    m: object = model
    for _ in range(4):
        get = getattr(m, "get_output_embeddings", None)
        if callable(get):
            head = get()
            return head if isinstance(head, torch.nn.Module) else None
        m = getattr(m, "module", None) or getattr(m, "peft_model", None)
        if m is None:
            return None
    return None


_DECLINED: weakref.WeakKeyDictionary[torch.nn.Module, bool] = weakref.WeakKeyDictionary()  # failed the check


def _head_logprobs(head: torch.nn.Module, hidden: Tensor, targets: Tensor) -> Tensor:
    """log pi(targets[n] | hidden[n]) for hidden states [n, H]: one chunk's logits [n, V], in float32 or wider."""
    logits = head(hidden)
    logits = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    return logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def chunked_sequence_logprobs(
    model: torch.nn.Module, input_ids: Tensor, attention_mask: Tensor, response_mask: Tensor, *, chunk: int
) -> Tensor | None:
    """:func:`sequence_logprobs` without the [B, L, V] logits (what Liger's fused linear cross-entropy saves).

    The model runs with ``output_hidden_states=-1`` (the last only) and ``logits_to_keep=1`` (one position of
    logits); the final hidden states h of the N positions that predict a response token (``response_mask[:, 1:]``,
    every row; no padding, no prompt) go through the model's output head ``chunk`` positions at a time: log pi(y_n) =
    (W h_n)[y_n] - logsumexp(W h_n), summed per row. With gradients each chunk is a non-reentrant
    ``torch.utils.checkpoint``: its logits are recomputed in backward, so one chunk's logits and their gradient
    exist at a time. Memory of the head: O(chunk x V) instead of O(B x L x V); compute: the head once more in
    backward (on response positions only).

    Model-agnostic by a check, not by architecture: the head applied to the last position's hidden state must
    give the model's own last-position logits (rtol 1e-4); models whose logits are not ``head(hidden_states[-1])``
    (a final logit soft-cap or scale, hidden states before the final norm), that take no ``logits_to_keep`` /
    ``output_hidden_states``, or without a callable head (:func:`output_head`: e.g. FSDP2-sharded) give None, and
    :func:`sequence_logprobs` uses the model's logits instead (a model that failed the check is not tried again).
    """
    head = output_head(model)
    if head is None or model in _DECLINED:
        return None
    try:
        out = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, logits_to_keep=1,
                    output_hidden_states=-1)  # only the last (transformers 5 selects; older code keeps all)
    except TypeError:
        return None
    states = getattr(out, "hidden_states", None)
    hidden = states[-1] if states else None
    if hidden is None or hidden.shape[:2] != input_ids.shape:
        return None
    with torch.no_grad():
        last = head(hidden[:, -1:].detach()).float()
        own = out.logits[:, -1:].float()
        if last.shape != own.shape or not torch.allclose(last, own, rtol=1e-4, atol=1e-4 * own.abs().max().item()):
            _DECLINED[model] = True  # its trunk ran for nothing: not again for this model
            return None
    del out, states
    mask = response_mask[:, 1:].bool()
    rows = mask.nonzero()[:, 0]
    h = hidden[:, :-1][mask]  # [N, H]: the positions that predict response tokens
    targets = input_ids[:, 1:][mask]
    grad = torch.is_grad_enabled() and h.requires_grad
    parts = []
    for s in range(0, h.shape[0], chunk):
        hc, tc = h[s : s + chunk], targets[s : s + chunk]
        parts.append(checkpoint(_head_logprobs, head, hc, tc, use_reentrant=False, preserve_rng_state=False)
                     if grad else _head_logprobs(head, hc, tc))
    dtype = parts[0].dtype if parts else torch.float32
    total = torch.zeros(input_ids.shape[0], dtype=dtype, device=input_ids.device)
    if not parts:  # no response token: zeros, still joined to the graph (a backward through it is a zero step)
        return total + hidden.sum() * 0.0
    return total.index_add(0, rows, torch.cat(parts))


@torch.no_grad()
def batched_sequence_logprobs(
    model: torch.nn.Module,
    prompts: Sequence[Sequence[int]],
    responses: Sequence[Sequence[int]],
    *,
    pad_id: int,
    batch_size: int = 256,
    device: torch.device | str | None = None,
    chunk: int = LOGPROB_CHUNK,
) -> Tensor:
    """Sequence log-probs of many (prompt, response) pairs, no grad, in length-sorted batches.

    Sorting by length keeps padding waste low; results are returned in the input order. ``chunk``: LM-head
    positions at a time (:func:`sequence_logprobs`; 0 = the model's full logits).
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
            lp = sequence_logprobs(model, ids.to(device), att.to(device), resp.to(device), chunk=chunk)
            out[torch.as_tensor(idx)] = lp.float().cpu()
    finally:
        model.train(was_training)
    return out


def cache_logprobs(
    models: dict[str, torch.nn.Module], samples: Samples, *, pad_id: int, batch_size: int,
    chunk: int = LOGPROB_CHUNK,
) -> dict[str, torch.Tensor]:
    """No-grad sequence log-probs of every sample under each named model (one pass per model)."""
    prompts = [samples.prompt_ids[i // samples.k] for i in range(len(samples.responses))]
    return {
        name: batched_sequence_logprobs(m, prompts, samples.responses, pad_id=pad_id, batch_size=batch_size,
                                        chunk=chunk)
        for name, m in models.items()
    }
