"""Synthetic preference data with a known answer, for the judges' algorithmic unit tests.

Every response starts with a *style word* (``s0``, ``s1``, ...) followed by filler words; prompts are
filler words. The ground truth is a style matrix ``P[i, j] = P(style i > style j)``, with
``P + P^T = 1``. Generators return rows in the formats :func:`inpo.judges.data.load_preferences`
accepts, each with a ``case`` column.

* :func:`cyclic_matrix` - rock-paper-scissors: s0 > s1 > s2 > s0 deterministically. No scalar reward
  gets more than 2 of the 3 pairs of a prompt right, so a BT judge is capped at 2/3 accuracy on
  complete held-out triples; GPM and pair can reach 1.
* :func:`transitive_matrix` - a total order s0 > s1 > ... (BT's home ground).
* :func:`mixture_matrix` / :func:`annotator_rows` - a population of annotator groups, each with its
  own transitive ranking. Two opposite groups 3:1 give P = 3/4 on every pair, which no BT model fits
  (it would need P(s0 > s2) = 0.9); three groups with rotated rankings (Condorcet) give a 2/3-cycle.
* :func:`position_trap` - labels carry only position (response_1 always "wins").
* :func:`length_trap` - a quality word decides; length is spuriously correlated in training and
  anti-correlated in the test set.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence
from typing import Any

import torch

from inpo.errors import InpoError
from inpo.judges.base import matrix_from_prob

FILLERS = ("amber", "birch", "cedar", "dune", "ember", "fern", "grove", "heath")


def style_words(n: int) -> list[str]:
    return [f"s{i}" for i in range(n)]


def cyclic_matrix(n: int = 3) -> torch.Tensor:
    """Deterministic balanced tournament on odd ``n``: i beats i+1, ..., i+(n-1)/2 (mod n)."""
    if n < 3 or n % 2 == 0:
        raise InpoError(f"cyclic_matrix needs an odd n >= 3, got {n}")
    p = torch.full((n, n), 0.5, dtype=torch.float64)
    for i in range(n):
        for d in range(1, (n - 1) // 2 + 1):
            j = (i + d) % n
            p[i, j], p[j, i] = 1.0, 0.0
    return p


def transitive_matrix(n: int = 4) -> torch.Tensor:
    """Deterministic total order s0 > s1 > ... > s_{n-1}."""
    p = torch.full((n, n), 0.5, dtype=torch.float64)
    for i, j in itertools.combinations(range(n), 2):
        p[i, j], p[j, i] = 1.0, 0.0
    return p


def mixture_matrix(rankings: Sequence[Sequence[int]], weights: Sequence[float]) -> torch.Tensor:
    """Population preference of annotator groups: ``P[i, j] = sum_g w_g [i ranked above j by g]``."""
    if len(rankings) != len(weights) or abs(sum(weights) - 1) > 1e-9:
        raise InpoError("mixture_matrix: one weight per ranking, weights summing to 1")
    n = len(rankings[0])
    p = torch.full((n, n), 0.5, dtype=torch.float64)
    for i, j in itertools.permutations(range(n), 2):
        p[i, j] = sum(w for r, w in zip(rankings, weights, strict=True) if list(r).index(i) < list(r).index(j))
    return p


CONDORCET_RANKINGS = ((0, 1, 2), (1, 2, 0), (2, 0, 1))
OPPOSITE_RANKINGS = ((0, 1, 2), (2, 1, 0))


def _prompts(n: int, rng: random.Random, width: int = 3) -> list[str]:
    combos = list(itertools.product(FILLERS, repeat=width))
    if n > len(combos):
        raise InpoError(f"at most {len(combos)} distinct synthetic prompts, asked for {n}")
    return ["ask " + " ".join(c) for c in rng.sample(combos, n)]


def _response(style: str, rng: random.Random, n_fill: int) -> str:
    return " ".join([style, *rng.choices(FILLERS, k=n_fill)])


def style_game_rows(
    p: torch.Tensor,
    *,
    n_prompts: int,
    seed: int = 0,
    labels_per_pair: int = 1,
    sample_labels: bool = False,
    case: str = "game",
    n_fill: tuple[int, int] = (1, 2),
) -> list[dict[str, Any]]:
    """All style pairs for each prompt, labelled by the style matrix ``p``.

    Per prompt each style gets one response (style word + ``n_fill`` random fillers). Each unordered
    pair is labelled ``labels_per_pair`` times: deterministically (the style with ``p > 1/2`` wins; exact
    ties are skipped) or, with ``sample_labels``, by a Bernoulli(``p[i, j]``) draw. The listed order of
    chosen/rejected is irrelevant to every judge here (all are symmetrized or order-free).
    """
    rng = random.Random(seed)
    styles = style_words(p.shape[0])
    rows = []
    for prompt in _prompts(n_prompts, rng):
        resp = [_response(s, rng, rng.randint(*n_fill)) for s in styles]
        for i, j in itertools.combinations(range(len(styles)), 2):
            for _ in range(labels_per_pair):
                pij = float(p[i, j])
                if sample_labels:
                    i_wins = rng.random() < pij
                elif pij == 0.5:
                    continue
                else:
                    i_wins = pij > 0.5
                c, r = (i, j) if i_wins else (j, i)
                rows.append({"prompt": prompt, "chosen": resp[c], "rejected": resp[r], "case": case})
    rng.shuffle(rows)
    return rows


def cyclic_rows(n_prompts: int = 60, seed: int = 0) -> list[dict[str, Any]]:
    return style_game_rows(cyclic_matrix(3), n_prompts=n_prompts, seed=seed, case="cyclic")


def transitive_rows(n_prompts: int = 40, n_styles: int = 4, seed: int = 0) -> list[dict[str, Any]]:
    return style_game_rows(transitive_matrix(n_styles), n_prompts=n_prompts, seed=seed, case="transitive")


def annotator_rows(
    rankings: Sequence[Sequence[int]],
    labels_per_group: Sequence[int],
    *,
    n_prompts: int,
    seed: int = 0,
    case: str = "annotators",
) -> list[dict[str, Any]]:
    """Each prompt's style pairs labelled by every annotator group, ``labels_per_group[g]`` times each.

    Group g prefers styles in the order ``rankings[g]`` (best first). No sampling noise: the label
    frequencies of every prompt equal the population matrix
    ``mixture_matrix(rankings, labels_per_group / sum)``, so its maximum-likelihood judge is that matrix.
    """
    rng = random.Random(seed)
    n = len(rankings[0])
    styles = style_words(n)
    rows = []
    for prompt in _prompts(n_prompts, rng):
        resp = [_response(s, rng, rng.randint(1, 2)) for s in styles]
        for i, j in itertools.combinations(range(n), 2):
            for ranking, count in zip(rankings, labels_per_group, strict=True):
                r = list(ranking)
                c, rj = (i, j) if r.index(i) < r.index(j) else (j, i)
                rows += [{"prompt": prompt, "chosen": resp[c], "rejected": resp[rj], "case": case}] * count
    rng.shuffle(rows)
    return rows


def condorcet_rows(n_prompts: int = 40, seed: int = 0) -> list[dict[str, Any]]:
    """Three equal annotator groups with rotated rankings (0>1>2, 1>2>0, 2>0>1), one label each.

    Every group is transitive; the population is a 2/3-cycle: P(0>1) = P(1>2) = P(2>0) = 2/3. Any BT
    model has at least one of the three at <= 1/2, so its largest error is >= 1/6.
    """
    return annotator_rows(CONDORCET_RANKINGS, [1, 1, 1], n_prompts=n_prompts, seed=seed, case="condorcet")


def strength_conflict_rows(n_prompts: int = 30, seed: int = 0) -> list[dict[str, Any]]:
    """Per prompt, s0 vs s1 labelled both ways: s0 better with strength 3, s1 better with strength 1.

    The BT likelihood ``-log sigmoid(d) - log sigmoid(-d)`` is minimised at ``P(s0 > s1) = 1/2``; the
    Scaled-BT one ``-3 log sigmoid(d) - log sigmoid(-d)`` at ``P(s0 > s1) = 3/4``.
    """
    rng = random.Random(seed)
    rows = []
    for prompt in _prompts(n_prompts, rng):
        a, b = _response("s0", rng, rng.randint(1, 2)), _response("s1", rng, rng.randint(1, 2))
        rows.append({"prompt": prompt, "chosen": a, "rejected": b, "strength": 3, "case": "strength"})
        rows.append({"prompt": prompt, "chosen": b, "rejected": a, "strength": 1, "case": "strength"})
    rng.shuffle(rows)
    return rows


def position_trap(n_prompts: int = 200, seed: int = 0) -> list[dict[str, Any]]:
    """HelpSteer2-style rows whose label is the position only: response_1 always better (strength -2).

    Both responses are drawn from the same distribution (filler words, no style), so content carries no
    signal. A judge that exploits position scores 1.0 on held-out rows; an order-symmetric one cannot
    beat chance.
    """
    rng = random.Random(seed)
    rows = []
    for prompt in _prompts(n_prompts, rng):
        a, b = (" ".join(rng.choices(FILLERS, k=3)) for _ in range(2))
        while b == a:
            b = " ".join(rng.choices(FILLERS, k=3))
        rows.append({"prompt": prompt, "response_1": a, "response_2": b, "preference_strength": -2,
                     "case": "position"})
    return rows


def length_trap(
    n_prompts: int = 120, seed: int = 0, *, spurious: float = 0.8
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(train rows, test rows). The response with the word ``good`` beats the one with ``bad``.

    Train: the chosen response is the longer one with probability ``spurious`` (short = 1 filler,
    long = 4 fillers). Test: the chosen response is always the shorter one, so a judge that learned
    length instead of quality scores ~0 there, one that learned quality scores ~1.
    """
    rng = random.Random(seed)
    prompts = _prompts(2 * n_prompts, rng)

    def row(prompt: str, chosen_long: bool, case: str) -> dict[str, Any]:
        lc, lr = (4, 1) if chosen_long else (1, 4)
        return {"prompt": prompt, "chosen": _response("good", rng, lc), "rejected": _response("bad", rng, lr),
                "case": case}

    train = [row(x, rng.random() < spurious, "length-train") for x in prompts[:n_prompts]]
    test = [row(x, False, "length-test") for x in prompts[n_prompts:]]
    return train, test


class StyleJudge:
    """Ground-truth judge: ``P(a > b) = P[style(a), style(b)]``, style = the first word of a response."""

    def __init__(self, p: torch.Tensor, styles: Sequence[str] | None = None):
        self.p = p.to(torch.float64)
        self.styles = list(styles) if styles is not None else style_words(p.shape[0])
        self._index = {s: i for i, s in enumerate(self.styles)}

    def _style(self, response: str) -> int:
        word = response.split(maxsplit=1)[0] if response.strip() else ""
        if word not in self._index:
            raise InpoError(f"StyleJudge: response {response[:40]!r} does not start with a style word")
        return self._index[word]

    def prob(self, prompts: list[str], responses_a: list[str], responses_b: list[str]) -> torch.Tensor:
        ia = torch.tensor([self._style(a) for a in responses_a], dtype=torch.long)
        ib = torch.tensor([self._style(b) for b in responses_b], dtype=torch.long)
        return self.p[ia, ib]

    def matrix(self, prompt: str, responses: list[str]) -> torch.Tensor:
        return matrix_from_prob(self, prompt, responses)
