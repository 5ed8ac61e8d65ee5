"""A causal LM as a pairwise preference model (``kind`` "lm-pair").

The prompt and two responses are rendered into a template; the model's next-token logits for the two answer
tokens (``A``, ``B``) give ``f(u, v) = P(first shown better) = sigmoid((logit_A - logit_B) / temperature)``
(softmax over the two tokens). Every pair is shown in both orders and averaged, as the RLHFlow
pair-preference model is served (Dong et al. 2024, "RLHF Workflow", arXiv 2405.07863) and as the INPO paper's
PM oracle was used::

    P(a > b | x) = (f(a, b) + 1 - f(b, a)) / 2

so ``P(a > b) + P(b > a) = 1`` exactly and a pure position bias cancels. Batched: one forward pass over ``2B``
rendered sequences (left padding, explicit position ids, logits of the last position only). ``matrix`` for K
responses asks the K(K-1)/2 unordered pairs in both orders: K(K-1) sequences.

Presets (``preset``):

* ``"rlhflow"``: the template of RLHFlow's pair-preference-model-LLaMA3-8B, copied from the "Service the RM"
  example of RLHFlow/RLHF-Reward-Modeling ``pair-pm/README.md``: the context is the prompt rendered with their
  ``tokenizer_plain`` chat template, which transformers' template engine (``trim_blocks``, no trailing newline)
  renders as ``"\\n\\n<turn> user\\n {prompt}\\n"`` (tested against their template; it is also the form of the
  example row in their README), the user message is
  ``"[CONTEXT] {context} [RESPONSE A] {response_a} [RESPONSE B] {response_b} \\n"``, rendered with the model's own
  chat template, BOS text removed (as their code does);
  answer tokens ``A`` / ``B``, temperature 1. Deviation: their example calls ``apply_chat_template`` without
  ``add_generation_prompt``; here it is on by default (``add_generation_prompt=True``) so that the next token is
  the assistant's first token, the position their training data (user message, assistant ``"A"``/``"B"``)
  puts the answer at; set it to False to reproduce their call exactly.
* ``"generic"``: LLM-as-a-judge for any instruct model: the user message is the API judge's
  :data:`inpo.judges.api.DEFAULT_TEMPLATE` ("... Answer with a single letter: A ... B ..."), rendered with the
  model's chat template and the generation prompt.

A tokenizer without a chat template gets the user message as plain text. Sequences longer than
``max_length`` keep their last ``max_length`` tokens (the answer position stays).

Training (``inpo judge train --kind lm-pair``): cross-entropy over the vocabulary at the answer position,
target ``A`` when the chosen response is shown first and ``B`` when second, both orders per pair (as RLHFlow
trains its PM: an SFT loss on the one answer token).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from inpo.errors import InpoError
from inpo.judges.api import DEFAULT_TEMPLATE
from inpo.judges.base import matrix_from_prob

RLHFLOW_TEMPLATE = "[CONTEXT] {context} [RESPONSE A] {response_a} [RESPONSE B] {response_b} \n"
RLHFLOW_CONTEXT = "\n\n<turn> user\n {prompt}\n"
PRESETS = ("generic", "rlhflow")


def render_user_message(preset: str, prompt: str, first: str, second: str, template: str | None = None) -> str:
    """The judge's user message for (prompt, first shown, second shown)."""
    if preset == "rlhflow":
        return (template or RLHFLOW_TEMPLATE).format(context=RLHFLOW_CONTEXT.format(prompt=prompt),
                                                     response_a=first, response_b=second)
    if preset == "generic":
        return (template or DEFAULT_TEMPLATE).format(prompt=prompt, response_a=first, response_b=second)
    raise InpoError(f"lm-pair judge: unknown preset {preset!r} (choose one of {', '.join(PRESETS)})")


def _single_token(tokenizer: Any, text: str) -> int:
    ids = tokenizer.encode(text, add_special_tokens=False)
    if len(ids) != 1:
        raise InpoError(f"lm-pair judge: answer token {text!r} is {len(ids)} tokens for this tokenizer; it must be 1")
    return int(ids[0])


class LMPairJudge:
    """Pairwise preference from a causal LM's next-token logits on two answer tokens (see the module doc)."""

    kind = "lm-pair"

    def __init__(self, model: torch.nn.Module, tokenizer: Any, *, preset: str = "generic",
                 template: str | None = None, system: str | None = None, answer_tokens: Sequence[str] = ("A", "B"),
                 add_generation_prompt: bool = True, temperature: float = 1.0, max_length: int = 1024,
                 batch_size: int = 8, device: str | torch.device = "cpu"):
        if preset not in PRESETS:
            raise InpoError(f"lm-pair judge: unknown preset {preset!r} (choose one of {', '.join(PRESETS)})")
        if len(answer_tokens) != 2 or answer_tokens[0] == answer_tokens[1]:
            raise InpoError(f"lm-pair judge: answer_tokens must be two different strings, got {list(answer_tokens)}")
        if not temperature > 0:
            raise InpoError(f"lm-pair judge: temperature must be > 0, got {temperature}")
        render_user_message(preset, "x", "a", "b", template)  # a template with wrong fields fails here
        self.model = model
        self.tokenizer = tokenizer
        self.preset = preset
        self.template = template
        self.system = system
        self.answer_tokens = (str(answer_tokens[0]), str(answer_tokens[1]))
        self.answer_ids = tuple(_single_token(tokenizer, t) for t in self.answer_tokens)
        self.add_generation_prompt = bool(add_generation_prompt)
        self.temperature = float(temperature)
        self.max_length = int(max_length)
        self.batch_size = int(batch_size)
        self.device = torch.device(device)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.pad_id = int(pad) if pad is not None else 0
        self.model.to(self.device)

    # ------------------------------------------------------------------ rendering
    def render(self, prompt: str, first: str, second: str) -> str:
        """The full text fed to the model (chat template applied when the tokenizer has one)."""
        content = render_user_message(self.preset, prompt, first, second, self.template)
        if not getattr(self.tokenizer, "chat_template", None):
            return content
        messages = [] if self.system is None else [{"role": "system", "content": self.system}]
        messages.append({"role": "user", "content": content})
        text = self.tokenizer.apply_chat_template(messages, tokenize=False,
                                                  add_generation_prompt=self.add_generation_prompt)
        bos = getattr(self.tokenizer, "bos_token", None)
        if self.preset == "rlhflow" and bos:
            text = text.replace(bos, "")
        return text

    def input_ids(self, prompt: str, first: str, second: str) -> list[int]:
        text = self.render(prompt, first, second)
        chat = bool(getattr(self.tokenizer, "chat_template", None))
        ids = self.tokenizer(text, add_special_tokens=not chat)["input_ids"]
        return list(ids)[-self.max_length:]

    # ------------------------------------------------------------------ model
    def answer_logits_t(self, prompts: Sequence[str], firsts: Sequence[str], seconds: Sequence[str]) -> torch.Tensor:
        """Next-token logits ``[N, vocab]`` after each rendered input (one forward pass, with gradients)."""
        seqs = [self.input_ids(x, u, v) for x, u, v in zip(prompts, firsts, seconds, strict=True)]
        n = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), n), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), n), dtype=torch.long)
        for i, s in enumerate(seqs):  # left padding: the last position is every row's answer position
            ids[i, n - len(s):] = torch.tensor(s, dtype=torch.long)
            mask[i, n - len(s):] = 1
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        out = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                         position_ids=pos.to(self.device), logits_to_keep=1, use_cache=False)
        return out.logits[:, -1, :]

    def first_prob_t(self, prompts: Sequence[str], firsts: Sequence[str], seconds: Sequence[str]) -> torch.Tensor:
        """``f(first, second)`` = P(first shown better) with gradients."""
        logits = self.answer_logits_t(prompts, firsts, seconds).float()
        a, b = self.answer_ids
        return torch.sigmoid((logits[:, a] - logits[:, b]) / self.temperature)

    @torch.no_grad()
    def first_prob(self, prompts: Sequence[str], firsts: Sequence[str], seconds: Sequence[str]) -> torch.Tensor:
        """Unsymmetrized ``f`` for each row (a diagnostic for position bias), batched."""
        self.model.eval()
        parts = [self.first_prob_t(prompts[i : i + self.batch_size], firsts[i : i + self.batch_size],
                                   seconds[i : i + self.batch_size]) for i in range(0, len(prompts), self.batch_size)]
        return torch.cat(parts).double() if parts else torch.zeros(0, dtype=torch.float64)

    def loss_t(self, prompts: Sequence[str], chosen: Sequence[str], rejected: Sequence[str]) -> torch.Tensor:
        """Per-pair cross-entropy on the answer token, averaged over both presentation orders."""
        n = len(prompts)
        logits = self.answer_logits_t(list(prompts) * 2, list(chosen) + list(rejected),
                                      list(rejected) + list(chosen)).float()
        a, b = self.answer_ids
        target = torch.tensor([a] * n + [b] * n, device=logits.device)
        ce = F.cross_entropy(logits, target, reduction="none")
        return (ce[:n] + ce[n:]) / 2

    # ------------------------------------------------------------------ Judge protocol
    def prob(self, prompts: list[str], responses_a: list[str], responses_b: list[str]) -> torch.Tensor:
        if not len(prompts) == len(responses_a) == len(responses_b):
            raise InpoError(f"judge.prob: lengths differ (prompts {len(prompts)}, a {len(responses_a)}, "
                            f"b {len(responses_b)})")
        n = len(prompts)
        f = self.first_prob(list(prompts) * 2, list(responses_a) + list(responses_b),
                            list(responses_b) + list(responses_a))
        return (f[:n] + 1.0 - f[n:]) / 2.0

    def matrix(self, prompt: str, responses: list[str]) -> torch.Tensor:
        return matrix_from_prob(self, prompt, responses)

    def config(self) -> dict[str, Any]:
        return {"kind": self.kind, "preset": self.preset, "template": self.template, "system": self.system,
                "answer_tokens": list(self.answer_tokens), "add_generation_prompt": self.add_generation_prompt,
                "temperature": self.temperature, "max_length": self.max_length}


def load_causal_lm_judge(path: str | Path, *, batch_size: int = 8, device: str = "cpu", **options: Any) -> LMPairJudge:
    """An :class:`LMPairJudge` on the causal LM in ``path`` (safetensors only, no remote code)."""
    from transformers import AutoModelForCausalLM

    from inpo.judges.base import load_hf_model

    model, tokenizer = load_hf_model(path, AutoModelForCausalLM, "a causal LM")
    return LMPairJudge(model, tokenizer, batch_size=batch_size, device=device, **options)
