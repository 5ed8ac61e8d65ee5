"""Any local reward model in the ecosystem's standard format as a judge (``kind`` "reward-model").

The standard format is what TRL's ``RewardTrainer`` writes and what BT oracles such as the INPO paper's
FsfairX-LLaMA3-RM are: an ``AutoModelForSequenceClassification`` directory with one label (``num_labels=1``),
its reward = the logit at the last non-pad token (transformers' own pooling, via ``config.pad_token_id``).

Input per (prompt, response), as TRL's ``RewardTrainer`` tokenizes its training data:

* tokenizer with a chat template ("chat"): ``apply_chat_template([{"role": "user", "content": prompt},
  {"role": "assistant", "content": response}])`` token ids;
* otherwise ("plain"): ``tokenizer(prompt + response + eos_token)`` (TRL's non-conversational format: the
  texts are concatenated as they are, so a prompt should end with a space or newline).

Sequences longer than ``max_length`` keep their last ``max_length`` tokens (the pooled end stays).
``P(a > b | x) = sigmoid(r(x, a) - r(x, b))``, batched over ``2B`` sequences; ``matrix`` costs K forward passes.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch

from inpo.errors import InpoError

Template = Literal["auto", "chat", "plain"]


def resolve_template(tokenizer: Any, template: str) -> Literal["chat", "plain"]:
    if template not in ("auto", "chat", "plain"):
        raise InpoError(f"reward-model judge: template must be auto, chat or plain, got {template!r}")
    if template == "auto":
        return "chat" if getattr(tokenizer, "chat_template", None) else "plain"
    if template == "chat" and not getattr(tokenizer, "chat_template", None):
        raise InpoError("reward-model judge: template 'chat' but the tokenizer has no chat template")
    return template  # type: ignore[return-value]


def reward_input_ids(tokenizer: Any, prompt: str, response: str, template: Literal["chat", "plain"]) -> list[int]:
    """The token ids TRL's RewardTrainer would train on for this (prompt, response)."""
    if template == "chat":
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
        out = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)
        return list(out["input_ids"])
    eos = tokenizer.eos_token or ""
    text = prompt + response
    if eos and not text.endswith(eos):
        text += eos
    return list(tokenizer(text)["input_ids"])


def pad_right(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    n = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), n), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), n), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(list(s), dtype=torch.long)
        mask[i, : len(s)] = 1
    return ids, mask


class RewardModelJudge:
    """A standard one-label ``AutoModelForSequenceClassification`` reward model: ``P = sigmoid(r_a - r_b)``."""

    kind = "reward-model"

    def __init__(self, model: torch.nn.Module, tokenizer: Any, *, template: Template = "auto",
                 max_length: int = 1024, batch_size: int = 16, device: str | torch.device = "cpu"):
        if getattr(model.config, "num_labels", None) != 1:
            raise InpoError(f"reward-model judge: the model has num_labels={getattr(model.config, 'num_labels', None)}"
                            ", a reward model has exactly one")
        self.model = model
        self.tokenizer = tokenizer
        self.template = resolve_template(tokenizer, template)
        self.max_length = int(max_length)
        self.batch_size = int(batch_size)
        self.device = torch.device(device)
        pad = model.config.pad_token_id
        if pad is None:
            pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
            if pad is None:
                raise InpoError("reward-model judge: neither the model config nor the tokenizer has a pad token")
            model.config.pad_token_id = int(pad)  # transformers pools the last non-pad token
        self.pad_id = int(pad)
        self.model.to(self.device)
        self._cache: dict[tuple[str, str], list[int]] = {}

    def _ids(self, prompt: str, response: str) -> list[int]:
        key = (prompt, response)
        ids = self._cache.get(key)
        if ids is None:
            ids = reward_input_ids(self.tokenizer, prompt, response, self.template)[-self.max_length:]
            if len(self._cache) < 100_000:
                self._cache[key] = ids
        return ids

    def rewards_t(self, prompts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
        """Rewards with gradients (one forward over the batch, right padding)."""
        ids, mask = pad_right([self._ids(x, y) for x, y in zip(prompts, responses, strict=True)], self.pad_id)
        out = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device))
        return out.logits[:, 0]

    @torch.no_grad()
    def rewards(self, prompts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
        self.model.eval()
        n = len(prompts)
        parts = [self.rewards_t(prompts[i : i + self.batch_size], responses[i : i + self.batch_size])
                 for i in range(0, n, self.batch_size)]
        return torch.cat(parts).double() if parts else torch.zeros(0, dtype=torch.float64)

    def prob(self, prompts: list[str], responses_a: list[str], responses_b: list[str]) -> torch.Tensor:
        if not len(prompts) == len(responses_a) == len(responses_b):
            raise InpoError(f"judge.prob: lengths differ (prompts {len(prompts)}, a {len(responses_a)}, "
                            f"b {len(responses_b)})")
        n = len(prompts)
        r = self.rewards(list(prompts) * 2, list(responses_a) + list(responses_b))
        return torch.sigmoid(r[:n] - r[n:])

    def matrix(self, prompt: str, responses: list[str]) -> torch.Tensor:
        r = self.rewards([prompt] * len(responses), responses)
        return torch.sigmoid(r[:, None] - r[None, :])


def is_reward_model_dir(path: str | Path) -> bool:
    """A directory whose config.json declares a one-label sequence-classification architecture."""
    import json

    p = Path(path) / "config.json"
    try:
        cfg = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    archs = cfg.get("architectures") or []
    n_labels = cfg.get("num_labels", len(cfg.get("id2label") or {}) or None)
    return any(str(a).endswith("ForSequenceClassification") for a in archs) and n_labels == 1


def load_reward_model(path: str | Path, *, template: Template = "auto", max_length: int = 1024,
                      batch_size: int = 16, device: str = "cpu") -> RewardModelJudge:
    """Load a standard reward-model directory (safetensors only, no remote code)."""
    from transformers import AutoModelForSequenceClassification

    from inpo.judges.base import load_hf_model

    model, tokenizer = load_hf_model(path, AutoModelForSequenceClassification, "a reward model")
    return RewardModelJudge(model, tokenizer, template=template, max_length=max_length,
                            batch_size=batch_size, device=device)
