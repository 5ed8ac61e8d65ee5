"""The judge protocol: a preference oracle P(a > b | prompt).

Every judge (synthetic ground truth, BT reward model, pairwise model, GPM, a user's callable) offers

* ``prob(prompts, responses_a, responses_b) -> Tensor[B]``: P(a > b) per row, with
  ``prob(p, a, b) + prob(p, b, a) == 1``;
* ``matrix(prompt, responses) -> Tensor[K, K]``: the K x K preference matrix for one prompt
  (embedding models compute it from K embeddings in one pass, O(K) forward passes not O(K^2)).

``matrix_from_prob`` gives any judge a correct (if O(K^2)) ``matrix``.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

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
