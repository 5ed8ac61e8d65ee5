"""The judge protocol: a preference oracle P(a > b | prompt).

Every judge (synthetic ground truth, BT reward model, pairwise model, GPM, a user's callable) offers

* ``prob(prompts, responses_a, responses_b) -> Tensor[B]``: P(a > b) per row, with
  ``prob(p, a, b) + prob(p, b, a) == 1``;
* ``matrix(prompt, responses) -> Tensor[K, K]``: the K x K preference matrix for one prompt
  (embedding models compute it from K embeddings in one pass, O(K) forward passes not O(K^2)).

``matrix_from_prob`` gives any judge a correct (if O(K^2)) ``matrix``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch


@runtime_checkable
class Judge(Protocol):
    def prob(self, prompts: list[str], responses_a: list[str], responses_b: list[str]) -> torch.Tensor: ...

    def matrix(self, prompt: str, responses: list[str]) -> torch.Tensor: ...


def matrix_from_prob(judge: Judge, prompt: str, responses: list[str]) -> torch.Tensor:
    """K x K matrix M[i, j] = P(responses[i] > responses[j]) from pairwise ``prob`` calls (i < j only)."""
    k = len(responses)
    ii, jj = torch.triu_indices(k, k, offset=1)
    m = torch.full((k, k), 0.5, dtype=torch.float64)
    if len(ii):
        p = judge.prob([prompt] * len(ii), [responses[i] for i in ii], [responses[j] for j in jj])
        p = p.to(torch.float64)
        m[ii, jj] = p
        m[jj, ii] = 1.0 - p
    return m


def load_hf_model(path: str | Path, auto_class: Any, what: str) -> tuple[Any, Any]:
    """``(model, tokenizer)`` of a transformers directory through ``auto_class`` (e.g.
    ``AutoModelForSequenceClassification``), float32, eval mode, safetensors only, no remote code; a directory
    that is not one, or does not load, is a one-line InpoError naming it and ``what`` it was loaded as."""
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    from inpo.errors import InpoError

    path = Path(path)
    if not (path / "config.json").is_file():
        raise InpoError(f"{path}: not a transformers model directory (no config.json)")
    hf_logging.disable_progress_bar()
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
        model = auto_class.from_pretrained(path, trust_remote_code=False, use_safetensors=True, dtype=torch.float32)
    except (OSError, ValueError) as e:
        raise InpoError(f"{path}: cannot load as {what} ({str(e).splitlines()[0]})") from None
    return model.eval(), tokenizer
