"""Response generation: K samples per prompt with transformers ``generate`` (batched, KV cache).

Prompts are token-id lists; they are left-padded into one batch per ``batch_size`` prompts and each
row is expanded to K return sequences, so one ``generate`` call samples K x batch_size responses.
A response keeps its EOS token (its log-prob is part of the sequence); a response that reaches
``max_new_tokens`` without EOS is kept as is (truncated). Besides EOS, sampling stops at the chat template's
end-of-turn tokens (:func:`end_of_turn_ids`, the loop's ``stop_ids``) and at the stop strings ``sampling.stop``
(the response keeps the tokens up to the one that completes the string; :func:`response_texts`, what the judge
reads, cuts the text before it). :func:`truncated` tells the responses that ended for none of these reasons.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList

from inpo.config import SamplingConfig


@dataclass
class Samples:
    """K responses per prompt, flattened: sample i*K + k is response k of prompt i."""

    prompt_ids: list[list[int]]
    responses: list[list[int]]
    k: int


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        if len(p):
            ids[i, width - len(p) :] = torch.as_tensor(list(p), dtype=torch.long)
            mask[i, width - len(p) :] = 1
    return ids, mask


END_OF_TURN_MARKERS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|eom_id|>", "</s>")


def end_of_turn_ids(tokenizer: Any, model: torch.nn.Module | None = None) -> list[int]:
    """Token ids that end an assistant turn: EOS, the model's ``generation_config.eos_token_id`` (one or several)
    and the known end-of-turn markers (``<|im_end|>``, ``<|eot_id|>``, ...) that the chat template writes."""
    ids = [int(tokenizer.eos_token_id)]
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for t in gen_eos if isinstance(gen_eos, list) else [gen_eos]:
        if isinstance(t, int) and t < len(tokenizer):
            ids.append(t)
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, str):
        vocab = tokenizer.get_vocab()
        ids += [vocab[m] for m in END_OF_TURN_MARKERS if m in template and m in vocab]
    return list(dict.fromkeys(ids))


def cut_at_stop_strings(tokens: Sequence[int], tokenizer: Any, stop: Sequence[str]) -> tuple[list[int], bool]:
    """The tokens up to (and with) the one whose decoding first contains a stop string, and whether one occurs."""
    toks = [int(t) for t in tokens]
    if not stop or not any(s in tokenizer.decode(toks) for s in stop):
        return toks, False
    for n in range(1, len(toks) + 1):
        if any(s in tokenizer.decode(toks[:n]) for s in stop):
            return toks[:n], True
    return toks, True


def response_texts(tokenizer: Any, responses: Sequence[Sequence[int]], stop: Sequence[str] = ()) -> list[str]:
    """What the judge reads: each response decoded without special tokens, cut before its first stop string."""
    texts = tokenizer.batch_decode([list(r) for r in responses], skip_special_tokens=True)
    out = []
    for t in texts:
        cut = min((t.index(s) for s in stop if s and s in t), default=len(t))
        out.append(t[:cut])
    return out


def truncated(responses: Sequence[Sequence[int]], stop_ids: Sequence[int], tokenizer: Any = None,
              stop: Sequence[str] = ()) -> list[bool]:
    """Per response: True if it ended at ``max_new_tokens`` (no end-of-turn token last, no stop string)."""
    ids = set(int(i) for i in stop_ids)
    out = []
    for r in responses:
        ended = bool(r) and int(r[-1]) in ids
        if not ended and stop and tokenizer is not None:
            ended = any(s in tokenizer.decode(list(r)) for s in stop)
        out.append(not ended)
    return out


def strip_response(tokens: Sequence[int], eos_id: int, pad_id: int, stop_ids: Sequence[int] = ()) -> list[int]:
    """Cut a generated continuation after its first EOS (or other stop token; kept); drop trailing padding."""
    out: list[int] = []
    for t in tokens:
        out.append(int(t))
        if t == eos_id or t in stop_ids:
            return out
    while out and out[-1] == pad_id and pad_id != eos_id:
        out.pop()
    return out


class GeometricMixture(LogitsProcessor):
    """Token-level geometric mixture for Nash-MD sampling (Munos et al. 2023; as in TRL's Nash-MD):
    log pi_mix(.|s) = (1 - w) log pi(.|s) + w log pi_ref(.|s) + const, with ``w`` the reference weight.

    The reference model is run on the whole prefix at every step (no KV cache): fine for the short
    responses of the built-in task, quadratic in length for long ones.
    """

    def __init__(self, ref: torch.nn.Module, weight: float, pad_id: int, prompt_mask: torch.Tensor) -> None:
        self.ref, self.weight, self.pad_id, self.prompt_mask = ref, weight, pad_id, prompt_mask

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        new = input_ids.shape[1] - self.prompt_mask.shape[1]
        mask = torch.cat([self.prompt_mask, self.prompt_mask.new_ones((input_ids.shape[0], new))], dim=1)
        pos = (mask.cumsum(-1) - 1).clamp_min(0)
        ref_logits = self.ref(input_ids=input_ids, attention_mask=mask, position_ids=pos).logits[:, -1]
        mix = (1 - self.weight) * torch.log_softmax(scores.float(), -1) + self.weight * torch.log_softmax(
            ref_logits.float(), -1)
        return mix.to(scores.dtype)


@torch.no_grad()
def sample_responses(
    model: torch.nn.Module,
    prompts: Sequence[Sequence[int]],
    cfg: SamplingConfig,
    *,
    eos_id: int,
    pad_id: int,
    seed: int,
    mixture: tuple[torch.nn.Module, float] | None = None,
    progress: Callable[[int], None] | None = None,
    stop_ids: Sequence[int] = (),
    tokenizer: Any = None,
) -> list[list[list[int]]]:
    """``out[i][k]`` = the k-th sampled response (token ids) to prompt i; seeded (``seed``).

    ``mixture=(ref_model, w)`` samples from the geometric mixture pi^{1-w} pi_ref^w (Nash-MD). ``stop_ids``: more
    tokens that end a response like EOS (end-of-turn); ``cfg.stop`` strings need the ``tokenizer``."""
    device = next(model.parameters()).device
    stop_ids = [int(i) for i in stop_ids if int(i) != eos_id]
    if cfg.stop and tokenizer is None:
        raise ValueError("sampling.stop needs the tokenizer")
    gen_cfg = GenerationConfig(
        do_sample=True,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        top_k=cfg.top_k,
        max_new_tokens=cfg.max_new_tokens,
        num_return_sequences=cfg.num_samples,
        eos_token_id=[eos_id, *stop_ids] if stop_ids else eos_id,
        pad_token_id=pad_id,
        stop_strings=list(cfg.stop) or None,
    )
    extra = {"tokenizer": tokenizer} if cfg.stop else {}
    was_training = model.training
    model.eval()
    torch.manual_seed(seed)
    results: list[list[list[int]]] = []
    try:
        for s in range(0, len(prompts), cfg.batch_size):
            chunk = prompts[s : s + cfg.batch_size]
            ids, mask = left_pad(chunk, pad_id)
            processors = LogitsProcessorList()
            if mixture is not None:
                rep = mask.repeat_interleave(cfg.num_samples, dim=0).to(device)
                processors.append(GeometricMixture(mixture[0], mixture[1], pad_id, rep))
            out = model.generate(
                input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=gen_cfg,
                logits_processor=processors, **extra,
            )
            new = out[:, ids.shape[1] :].cpu().tolist()
            k = cfg.num_samples
            for i in range(len(chunk)):
                rows = [strip_response(new[i * k + j], eos_id, pad_id, stop_ids) for j in range(k)]
                if cfg.stop:
                    rows = [cut_at_stop_strings(r, tokenizer, cfg.stop)[0] for r in rows]
                results.append(rows)
            if progress is not None:
                progress(len(chunk))
    finally:
        model.train(was_training)
    return results


def sample_responses_vllm(
    model_dir: str, prompts: Sequence[Sequence[int]], cfg: SamplingConfig, *, eos_id: int, seed: int,
    trust_remote_code: bool = False, stop_ids: Sequence[int] = (),
) -> list[list[list[int]]]:
    """The same sampling with vLLM (optional extra ``inpo[vllm]``, imported here only).

    The engine loads the iterate from its saved checkpoint directory (``iter_<t>/``), which is how
    weights reach it after each iteration. Same K, temperature, top-p, max new tokens and EOS handling
    as :func:`sample_responses`; the random streams differ from transformers', so samples do too.
    """
    try:
        from vllm import LLM, SamplingParams
        from vllm.inputs import TokensPrompt
    except ImportError:
        from inpo.errors import InpoError

        raise InpoError("sampling.backend=vllm needs vLLM: pip install 'inpo[vllm]' (GPU machines)") from None
    llm = LLM(model=model_dir, seed=seed, trust_remote_code=trust_remote_code)
    params = SamplingParams(n=cfg.num_samples, temperature=cfg.temperature, top_p=cfg.top_p,
                            max_tokens=cfg.max_new_tokens, stop_token_ids=list(dict.fromkeys([eos_id, *stop_ids])),
                            seed=seed, top_k=cfg.top_k or -1, stop=list(cfg.stop) or None,
                            include_stop_str_in_output=True)
    outputs = llm.generate([TokensPrompt(prompt_token_ids=list(p)) for p in prompts], params)
    result = []
    for out in outputs:
        result.append([strip_response(list(o.token_ids), eos_id, -1, stop_ids) for o in out.outputs])
    del llm
    return result
