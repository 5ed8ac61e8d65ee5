"""A judge's output, checked: :func:`judge_matrices` (the loop's K x K matrix per prompt) and
:class:`CheckedJudge` (``prob`` during evaluation). A failure, a NaN, a value outside [0, 1] or a wrong shape
becomes one line naming the prompt, never a traceback or a silently wrong training signal.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from inpo.data import Prompt
from inpo.errors import InpoError
from inpo.judges.base import Judge, matrix_from_prob


def judge_matrices(judge: Judge, prompts: list[Prompt], texts: list[str], k: int,
                   progress: Callable[[int], None] | None = None) -> torch.Tensor:
    """[N, K, K] preference matrices; checks the judge's output (finite, in [0, 1], antisymmetric)."""
    out = []
    for i, p in enumerate(prompts):
        if progress is not None:
            progress(1)
        try:
            m = judge.matrix(p.text, texts[i * k : (i + 1) * k])
        except InpoError as e:
            raise InpoError(f"judge failed on prompt {i}: {e}") from None
        except Exception as e:  # noqa: BLE001 - a judge's failure is reported with the prompt row
            raise InpoError(f"judge failed on prompt {i}: {type(e).__name__}: {e}") from None
        m = torch.as_tensor(m, dtype=torch.float64)
        if m.shape != (k, k):
            raise InpoError(f"judge returned a matrix of shape {tuple(m.shape)} for prompt {i}; expected ({k}, {k})")
        bad = ~torch.isfinite(m) | (m < 0) | (m > 1)
        if bad.any():
            a, b = (int(x) for x in bad.nonzero()[0])
            raise InpoError(f"judge returned an invalid matrix for prompt {i}: entry [{a}, {b}] = {m[a, b].item()} "
                            "is not a probability in [0, 1]")
        out.append(m)
    return torch.stack(out)


class CheckedJudge:
    """A judge whose ``prob`` failures (an exception, NaN, a value outside [0, 1], a wrong shape) become one-line
    InpoErrors naming ``where`` and the prompt index."""

    def __init__(self, judge: Judge, where: str) -> None:
        self.judge, self.where = judge, where

    def prob(self, prompts: list[str], responses_a: list[str], responses_b: list[str]) -> torch.Tensor:
        return checked_prob(self.judge.prob, prompts, responses_a, responses_b, self.where)

    def matrix(self, prompt: str, responses: list[str]) -> torch.Tensor:
        return matrix_from_prob(self, prompt, responses)


def checked_prob(prob: Callable[[list[str], list[str], list[str]], Any], prompts: list[str], responses_a: list[str],
                 responses_b: list[str], where: str) -> torch.Tensor:
    """``prob(prompts, responses_a, responses_b)`` as float64, checked: an exception, a shape other than (N,), NaN
    or a value outside [0, 1] becomes a one-line InpoError naming ``where`` (and the prompt index)."""
    try:
        p = torch.as_tensor(prob(prompts, responses_a, responses_b), dtype=torch.float64)
    except Exception as e:  # noqa: BLE001 - a judge's failure is reported with where it happened
        kind = "" if isinstance(e, InpoError) else f"{type(e).__name__}: "
        raise InpoError(f"judge failed during {where}: {kind}{e}") from None
    if p.shape != (len(prompts),):
        raise InpoError(f"judge returned shape {tuple(p.shape)} during {where}; expected ({len(prompts)},)")
    bad = ~torch.isfinite(p) | (p < 0) | (p > 1)
    if bad.any():
        i = int(bad.nonzero()[0])
        raise InpoError(f"judge returned {p[i].item()} for prompt {i} during {where}; expected a probability in "
                        "[0, 1]")
    return p
