"""The annotators task's oracle (rules on response text; exact preferences; cyclic majority) and its prompts."""

from __future__ import annotations

import json
from itertools import combinations
from pathlib import Path

import pytest
import torch

from inpo.errors import InpoError
from inpo.tasks.annotators import (
    ANNOTATORS,
    CONFIG_FILE,
    EVAL_FILE,
    TRAIN_FILE,
    AnnotatorJudge,
    list_items,
    preference,
    vote,
    words,
)

SHORT = "Save a little every month."  # 5 words, no list
LIST = "Some tips:\n- Make a budget.\n- Cook at home.\n- Avoid impulse buys."  # 11 words, 3 items
LONG = ("Saving money starts with knowing where it goes. Track your spending for a month, then decide which "
        "costs you can cut, and move a fixed amount into savings as soon as you are paid.")  # 34 words, no list


def test_features_by_hand() -> None:
    assert (words(SHORT), list_items(SHORT)) == (5, 0)
    assert (words(LIST), list_items(LIST)) == (11, 3)
    assert (words(LONG), list_items(LONG)) == (34, 0)
    assert list_items("1. one\n2) two\n* three\n\u2022 four\n-no space\n 10. ten") == 5
    assert words("") == 0 and words("  \n") == 0


def test_each_annotator_ranks_the_three_responses_by_its_rule() -> None:
    def order(j: str) -> list[str]:  # by wins in the round robin
        r = {"x": SHORT, "y": LIST, "z": LONG}
        return sorted(r, key=lambda a: -sum(vote(j, r[a], r[b]) for b in r if b != a))

    assert order("concise") == ["x", "y", "z"]
    assert order("structured") == ["y", "z", "x"]
    assert order("prose") == ["z", "x", "y"]


def test_majority_preference_has_an_explicit_cycle() -> None:
    """x = short plain, y = list, z = long plain: majority x > y, y > z, z > x (2 of 3 annotators each)."""
    x, y, z = SHORT, LIST, LONG
    for mode, p in (("majority", 1.0), ("sampled", 2 / 3)):
        assert preference(x, y, mode=mode) == pytest.approx(p)
        assert preference(y, z, mode=mode) == pytest.approx(p)
        assert preference(z, x, mode=mode) == pytest.approx(p)
    judge = AnnotatorJudge("majority")
    m = judge.matrix("Give me some tips about saving money.", [x, y, z])
    assert torch.equal(m, torch.tensor([[0.5, 1, 0], [0, 0.5, 1], [1, 0, 0.5]], dtype=torch.float64))


def test_exact_preference_is_a_valid_non_bt_judge() -> None:
    texts = [SHORT, LIST, LONG, "", "Yes.", "- a\n- b", "Two words", "Two other"]
    for a, b in combinations(texts, 2):
        for mode in ("sampled", "majority"):
            assert preference(a, b, mode=mode) + preference(b, a, mode=mode) == pytest.approx(1.0)
        assert preference(a, b) == pytest.approx(sum(vote(j, a, b) for j in ANNOTATORS) / 3)
    assert preference("Two words", "Two other") == 0.5  # a tie under every rule
    assert all(preference(t, "") == 1.0 for t in texts if t)  # empty loses to every non-empty response
    j = AnnotatorJudge()
    p = j.prob(["q"] * 3, [SHORT, LIST, LONG], [LIST, LONG, SHORT])
    assert p.dtype == torch.float64 and torch.allclose(p, torch.full((3,), 2 / 3, dtype=torch.float64))
    with pytest.raises(InpoError, match="mode"):
        AnnotatorJudge("vote")
    with pytest.raises(InpoError, match="annotators"):
        AnnotatorJudge(annotators=["concise", "funny"])


def test_shipped_prompts_and_config() -> None:
    train = [json.loads(line)["prompt"] for line in TRAIN_FILE.read_text().splitlines()]
    held = [json.loads(line)["prompt"] for line in EVAL_FILE.read_text().splitlines()]
    assert len(train) >= 300 and len(held) >= 64
    assert len(set(train)) == len(train) and not set(train) & set(held)
    assert len({p.split()[0] for p in train}) >= 10  # varied instruction forms
    from inpo.config import load_config

    cfg = load_config(CONFIG_FILE)
    assert cfg.task.name == "annotators" and cfg.peft is not None and cfg.model.path is None
    assert cfg.judge.path == "builtin" and cfg.data.prompts is None
    # the shipped step is INPO's (eta 0.1, tau 0.04); `--algo sppo|dpo` over it take their own defaults
    from inpo.config import ALGO_DEFAULTS

    assert (cfg.algo.name, cfg.algo.eta, cfg.algo.tau, cfg.task.options["mode"]) == ("inpo", 0.1, 0.04, "majority")
    assert load_config(CONFIG_FILE, {"algo": {"name": "sppo"}}).algo.eta == ALGO_DEFAULTS["sppo"]["eta"]
    assert load_config(CONFIG_FILE, {"algo": {"name": "dpo"}}).algo.beta == ALGO_DEFAULTS["dpo"]["beta"]
    # the first shipped config, which docs/quickstart.md, docs/performance.md and docs/learned_oracle.md ran with
    first = load_config(Path(__file__).resolve().parents[1] / "configs" / "annotators_sampled.yaml")
    assert (first.task.name, first.task.options["mode"], first.algo.eta, first.train.lr) == \
        ("annotators", "sampled", 0.25, 5e-5)
