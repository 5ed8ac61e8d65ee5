"""A user's Python function as a judge, symmetrized so that P(a > b) + P(b > a) = 1."""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable

import torch

from inpo.errors import InpoError
from inpo.judges.base import matrix_from_prob


def _check_prob(value: object, row: int, order: str) -> float:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise InpoError(f"callable judge returned a tensor of shape {tuple(value.shape)} on row {row} {order}")
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InpoError(
            f"callable judge returned {type(value).__name__} on row {row} {order}; expected a float in [0, 1]"
        )
    v = float(value)
    if math.isnan(v):
        raise InpoError(f"callable judge returned NaN on row {row} {order}")
    if not 0.0 <= v <= 1.0:
        raise InpoError(f"callable judge returned {v} on row {row} {order}; expected a probability in [0, 1]")
    return v


class CallableJudge:
    """Wrap ``fn(prompt, a, b) -> P(a > b)`` as a :class:`~inpo.judges.base.Judge`.

    The function need not be consistent under swapping; the judge returns the symmetrization
    ``P(a > b) = (f(a, b) + 1 - f(b, a)) / 2``, so ``P(a > b) + P(b > a) = 1`` exactly and a pure
    position bias ``f(a, b) = f(b, a) + c`` cancels. A return value that is not a real number, NaN,
    outside [0, 1], or an exception raised by ``fn`` becomes an :class:`InpoError` naming the row
    (0-based index into the batch) and the order.
    """

    def __init__(self, fn: Callable[[str, str, str], float]):
        self.fn = fn

    def _call(self, prompt: str, a: str, b: str, row: int, order: str) -> float:
        try:
            value = self.fn(prompt, a, b)
        except InpoError:
            raise
        except Exception as e:  # noqa: BLE001 - a user's function may raise anything
            raise InpoError(f"callable judge raised {type(e).__name__}({e}) on row {row} {order}") from e
        return _check_prob(value, row, order)

    def raw_prob(self, prompts: list[str], responses_a: list[str], responses_b: list[str]) -> torch.Tensor:
        """The unsymmetrized ``fn(prompt, a, b)`` per row (one presentation order; a position-bias diagnostic)."""
        if not len(prompts) == len(responses_a) == len(responses_b):
            raise InpoError(
                f"judge.prob: lengths differ (prompts {len(prompts)}, a {len(responses_a)}, b {len(responses_b)})"
            )
        return torch.tensor([self._call(x, a, b, i, "(a, b)")
                             for i, (x, a, b) in enumerate(zip(prompts, responses_a, responses_b, strict=True))],
                            dtype=torch.float64)

    def prob(self, prompts: list[str], responses_a: list[str], responses_b: list[str]) -> torch.Tensor:
        if not len(prompts) == len(responses_a) == len(responses_b):
            raise InpoError(
                f"judge.prob: lengths differ (prompts {len(prompts)}, a {len(responses_a)}, b {len(responses_b)})"
            )
        out = torch.empty(len(prompts), dtype=torch.float64)
        for i, (x, a, b) in enumerate(zip(prompts, responses_a, responses_b, strict=True)):
            f_ab = self._call(x, a, b, i, "(a, b)")
            f_ba = self._call(x, b, a, i, "(b, a)")
            out[i] = (f_ab + 1.0 - f_ba) / 2.0
        return out

    def matrix(self, prompt: str, responses: list[str]) -> torch.Tensor:
        return matrix_from_prob(self, prompt, responses)
