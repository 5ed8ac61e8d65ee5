"""Cyclic-triple diagnostics: does a judge reproduce the cycles (and only the cycles) in the data?

For every prompt and every triple of responses whose three pairs all carry a net label in the data
(majority over the rows of that pair), the data triple is *cyclic* (a > b > c > a) or *transitive*.
The judge's triple, from ``judge.matrix(prompt, [a, b, c])``, is classified the same way (an exact
P = 1/2 edge makes it a *tie*). The confusion table counts (data kind, judge kind); a BT judge can
never produce a cyclic triple.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Sequence

from inpo.judges.base import Judge
from inpo.judges.data import PreferencePair

KINDS = ("cyclic", "transitive", "tie")


def triple_kind(beats: dict[tuple[int, int], bool]) -> str:
    """``beats[(i, j)]`` for i < j over indices 0, 1, 2 (True: i beats j). Cyclic iff every node wins once."""
    wins = [0, 0, 0]
    for (i, j), i_wins in beats.items():
        wins[i if i_wins else j] += 1
    return "cyclic" if wins == [1, 1, 1] else "transitive"


def cyclic_triple_confusion(
    judge: Judge, pairs: Sequence[PreferencePair], *, max_responses: int = 12
) -> dict[str, dict[str, int]]:
    """``{data_kind: {judge_kind: count}}`` over fully-labelled triples (see module docstring).

    Prompts with more than ``max_responses`` distinct responses use only the first ``max_responses``.
    Also counts ``edges_agree`` (judge edges equal to the data's majority edges) under key ``"edges"``.
    """
    votes: dict[str, dict[tuple[str, str], int]] = defaultdict(lambda: defaultdict(int))
    order: dict[str, list[str]] = defaultdict(list)
    for p in pairs:
        for r in (p.chosen, p.rejected):
            if r not in order[p.prompt]:
                order[p.prompt].append(r)
        a, b = sorted((p.chosen, p.rejected))
        votes[p.prompt][(a, b)] += 1 if p.chosen == a else -1
    table = {k: {j: 0 for j in KINDS} for k in ("cyclic", "transitive")}
    edges = {"agree": 0, "total": 0}
    for prompt, responses in order.items():
        responses = responses[:max_responses]
        v = votes[prompt]
        for tri in itertools.combinations(responses, 3):
            data_beats: dict[tuple[int, int], bool] = {}
            for i, j in ((0, 1), (0, 2), (1, 2)):
                a, b = sorted((tri[i], tri[j]))
                net = v.get((a, b), 0)
                if net == 0:
                    break
                data_beats[(i, j)] = (net > 0) == (tri[i] == a)
            else:
                m = judge.matrix(prompt, list(tri))
                judge_beats = {(i, j): bool(m[i, j] > 0.5) for i, j in data_beats}
                tie = any(float(m[i, j]) == 0.5 for i, j in data_beats)
                jk = "tie" if tie else triple_kind(judge_beats)
                table[triple_kind(data_beats)][jk] += 1
                edges["agree"] += sum(judge_beats[e] == data_beats[e] for e in data_beats)
                edges["total"] += 3
    return {**table, "edges": edges}
