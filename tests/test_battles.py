"""Battles vs fixed reference outputs: bootstrap CI, position-bias rate, AlpacaEval's LC win rate, output formats,
reference validation (library level; the CLI end to end is in test_eval_cli.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from inpo.battles import (
    LC_GLM,
    Battle,
    battle,
    bootstrap_ci,
    position_flip_rate,
    summarize,
    verdicts,
)
from inpo.errors import InpoError
from inpo.judges import CallableJudge
from inpo.outputs import (
    Decoding,
    generator_name,
    load_reference,
    markdown_counts,
    parse_iterations,
    question_uid,
    write_outputs,
)

DATA = Path(__file__).parent / "data"


# ------------------------------------------------------------------------------------------------ statistics


def test_bootstrap_ci_two_points_hand_computed():
    # resampled means of [0, 1] are 0, 1/2, 1 with probabilities 1/4, 1/2, 1/4: the 2.5% / 97.5% quantiles are 0, 1
    assert bootstrap_ci([0.0, 1.0], n_boot=4000, seed=0) == (0.0, 1.0)
    # a constant sample has a degenerate interval
    assert bootstrap_ci([0.3] * 7) == pytest.approx((0.3, 0.3))


def test_bootstrap_ci_matches_normal_theory_and_is_seeded():
    x = (np.random.default_rng(1).random(400) < 0.7).astype(float)
    lo, hi = bootstrap_ci(x, n_boot=4000, seed=3)
    se = x.std(ddof=0) / np.sqrt(x.size)
    assert lo == pytest.approx(x.mean() - 1.96 * se, abs=0.01) and hi == pytest.approx(x.mean() + 1.96 * se, abs=0.01)
    assert bootstrap_ci(x, n_boot=4000, seed=3) == (lo, hi)
    with pytest.raises(ValueError):
        bootstrap_ci([])


def test_verdicts_and_position_flip_rate_hand_computed():
    assert verdicts([0.9, 0.5, 0.1]).tolist() == [1, 0, -1]
    first = [0.9, 0.9, 0.5, 0.2, 0.6]
    second = [0.7, 0.1, 0.5, 0.5, 0.4]
    # prompt 0: win/win; 1: win/loss (flip); 2: tie/tie; 3: loss/tie (flip); 4: win/loss (flip)
    assert position_flip_rate(first, second) == pytest.approx(3 / 5)
    assert position_flip_rate(first, first) == 0.0


def test_battle_with_position_biased_and_unbiased_judges():
    xs, outs, refs = ["p1", "p2", "p3", "p4"], ["long answer", "b", "same", "xx"], ["short", "longer", "same", "yy"]
    # a judge that always prefers whatever is shown first: every verdict flips; scores are ties
    first_wins = CallableJudge(lambda x, a, b: 1.0)
    b = battle(first_wins, xs, outs, refs)
    assert b.model_first.tolist() == [1.0] * 4 and b.model_second.tolist() == [0.0] * 4
    assert b.scores.tolist() == [0.5] * 4
    assert position_flip_rate(b.model_first, b.model_second) == 1.0
    # prefers the strictly longer response, whichever position: consistent except when lengths tie
    # (then f(a, b) = f(b, a) = 0, i.e. "second is better" in both orders: a flip, score 1/2)
    longer = CallableJudge(lambda x, a, b: float(len(a) > len(b)))
    b = battle(longer, xs, outs, refs)
    assert b.scores.tolist() == [1.0, 0.0, 0.5, 0.5]
    assert position_flip_rate(b.model_first, b.model_second) == pytest.approx(2 / 4)
    row = summarize(b, generator="m", reference_generator="r", annotator="len", lc=False)
    assert row["win_rate"] == pytest.approx(0.5) and (row["wins"], row["ties"], row["losses"]) == (1, 2, 1)
    assert row["length"] == pytest.approx((11 + 1 + 4 + 2) / 4)
    assert row["reference_length"] == pytest.approx((5 + 6 + 4 + 2) / 4)


def test_battle_rejects_a_bad_judge_value():
    class NaNJudge:
        def prob(self, prompts, a, b):
            return torch.tensor([0.5, float("nan")])

    with pytest.raises(InpoError, match="returned nan for prompt 1 during the battles"):
        battle(NaNJudge(), ["a", "b"], ["x", "y"], ["u", "v"])


# ------------------------------------------------------------------------------------------------ LC (AlpacaEval)


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_lc_win_rate_is_alpaca_evals_own(monkeypatch, tmp_path):
    """Our battles -> annotations -> LC path gives exactly what alpaca_eval's own function gives on the fixed
    annotations file (AlpacaEval's format), and the length correction goes the right way on it."""
    pd = pytest.importorskip("pandas")
    pytest.importorskip("alpaca_eval")
    from alpaca_eval.metrics import glm_winrate

    rows = json.loads((DATA / "alpaca_annotations.json").read_text())
    # alpaca_eval directly, its hub download replaced by a local instruction-difficulty file (unused by this GLM)
    gamed = tmp_path / "df_gamed.csv"
    pd.DataFrame({"model": "-", "index": range(len(rows)), "instruction_difficulty": 0.0}).to_csv(gamed, index=False)
    monkeypatch.setattr(glm_winrate, "hf_hub_download", lambda **_: str(gamed))
    direct_df = pd.DataFrame([{**r, "index": i} for i, r in enumerate(rows)])
    direct = glm_winrate.get_length_controlled_winrate(direct_df, glm_name=LC_GLM, save_weights_dir=None,
                                                       is_warn_extreme_changes=False)
    monkeypatch.undo()

    s = np.array([r["preference"] - 1 for r in rows])
    b = Battle([r["instruction"] for r in rows], [r["output_2"] for r in rows], [r["output_1"] for r in rows], s, s)
    ours = summarize(b, generator="model", reference_generator="reference", annotator="fixed")
    assert ours["win_rate"] * 100 == pytest.approx(direct["win_rate"], abs=1e-9)
    assert ours["lc_win_rate"] * 100 == pytest.approx(direct["length_controlled_winrate"], abs=1e-9)
    # the model's outputs are longer and the annotator favours length: LC removes part of the advantage
    assert ours["length"] > ours["reference_length"]
    assert 0.5 < ours["lc_win_rate"] < ours["win_rate"]


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_lc_bootstrap_ci_is_seeded_and_brackets_the_estimate():
    pytest.importorskip("alpaca_eval")
    from inpo.battles import annotations, lc_bootstrap_ci, length_controlled_win_rate

    rows = json.loads((DATA / "alpaca_annotations.json").read_text())
    s = np.array([r["preference"] - 1 for r in rows])
    b = Battle([r["instruction"] for r in rows], [r["output_2"] for r in rows], [r["output_1"] for r in rows], s, s)
    ann = annotations(b, generator="model", reference_generator="reference", annotator="fixed")
    lo, hi = lc_bootstrap_ci(ann, n_boot=8, seed=1)  # 8 refits of the GLM: a few seconds
    assert lo < length_controlled_win_rate(ann) < hi and (lo, hi) == lc_bootstrap_ci(ann, n_boot=8, seed=1)


def test_lc_not_computable_is_reported_not_raised():
    pytest.importorskip("alpaca_eval")
    s = np.array([0.7, 0.2, 0.9, 0.5, 0.6, 0.4])
    same = ["abc"] * 6  # every length difference is 0
    row = summarize(Battle(list("abcdef"), same, same, s, s), generator="m", reference_generator="r", annotator="j")
    assert row["lc_win_rate"] is None and "length" in row["lc_note"]
    row = summarize(Battle(list("ab"), ["x", "yy"], ["z", "z"], s[:2], s[:2]), generator="m", reference_generator="r",
                    annotator="j")
    assert row["lc_win_rate"] is None and "at least 5 prompts" in row["lc_note"]


# ------------------------------------------------------------------------------------------------ output files


def test_outputs_load_with_alpaca_evals_reader_and_arena_hards_layout(tmp_path):
    dec = Decoding(greedy=False, temperature=0.7, top_p=0.9, max_new_tokens=8, seed=3)
    gen = generator_name("inpo-run", 2, dec)
    assert gen == "inpo-run-iter2-sample-T0.7-p0.9-s3"
    assert generator_name("r", 0, Decoding(greedy=True)) == "r-pi_ref-greedy"
    xs = ["topic0 w1 :", "Explain **this**", "q3"]
    ys = ["rock w2", "# Title\n1. one\n- two\n**bold**\n```\n# not a header\n```", ""]
    paths = write_outputs(tmp_path / "out.json", xs, ys, [2, 9, 0], generator=gen, dataset="inpo-builtin",
                          config={"decoding": dec.model_dump()})
    ae = pytest.importorskip("alpaca_eval.utils")
    df = ae.load_or_convert_to_dataframe(paths["alpaca_eval"])
    assert list(df.columns) == ["instruction", "output", "generator", "dataset"]
    assert df["instruction"].tolist() == xs and df["output"].tolist() == ys and set(df["generator"]) == {gen}
    # Arena-Hard: model name = the answer file's name; rows keyed by uid; answer at messages[-1].content.answer
    answer_file = paths["arena_hard_answers"]
    assert answer_file.name == f"{gen}.jsonl" and answer_file.parent.name == "model_answer"
    questions = [json.loads(line) for line in paths["arena_hard_questions"].read_text().splitlines()]
    answers = {a["uid"]: a for a in map(json.loads, answer_file.read_text().splitlines())}
    assert [q["prompt"] for q in questions] == xs and [q["uid"] for q in questions] == [question_uid(x) for x in xs]
    for q, y in zip(questions, ys, strict=True):
        a = answers[q["uid"]]
        assert a["model"] == gen and a["messages"][0] == {"role": "user", "content": q["prompt"]}
        assert a["messages"][-1]["content"]["answer"] == y
        for v in a["metadata"].values():  # what Arena-Hard's show_result.py sums for style control
            assert isinstance(v, int) or all(isinstance(c, int) for c in v.values())
    meta = answers[question_uid(xs[1])]["metadata"]
    assert meta["token_len"] == 9 and meta["header_count"]["h1"] == 1  # the '#' inside the code block is not counted
    assert meta["list_count"] == {"ordered": 1, "unordered": 1} and meta["bold_count"]["**"] == 1
    sidecar = json.loads(paths["config"].read_text())
    assert sidecar["generator"] == gen and sidecar["decoding"]["temperature"] == 0.7 and sidecar["n"] == 3
    with pytest.raises(InpoError, match="must end in .json"):
        write_outputs(tmp_path / "out.jsonl", xs, ys, [1, 1, 1], generator=gen, dataset="d", config={})


def test_markdown_counts_match_arena_hard_on_plain_text():
    c = markdown_counts("no markdown here")
    assert sum(c["header_count"].values()) == sum(c["list_count"].values()) == sum(c["bold_count"].values()) == 0


# ------------------------------------------------------------------------------------------------ reference file


def write(tmp_path: Path, rows: object) -> Path:
    p = tmp_path / "ref.json"
    p.write_text(json.dumps(rows))
    return p


EVAL = ["p one", "p two", "p three"]


def rows(*xs: str) -> list[dict[str, str]]:
    return [{"instruction": x, "output": f"answer to {x}", "generator": "ref-model"} for x in xs]


def test_reference_aligned_to_eval_prompts(tmp_path):
    ref = load_reference(write(tmp_path, rows("p three", "p one", "p two")), EVAL)
    assert ref.generator == "ref-model" and ref.outputs == [f"answer to {x}" for x in EVAL]


@pytest.mark.parametrize("content, message", [
    (rows("p one", "p two"), r"no reference output for eval prompt 3 of 3: 'p three'"),
    (rows("p one", "p two", "p one", "p three"), r"row 3: duplicate instruction \(also row 1\): 'p one'"),
    (rows("p one", "p four", "p two", "p three"), r"row 2: instruction 'p four' is not one of the 3 eval prompts"),
    ([{"instruction": "p one"}], r"row 1: missing field 'output'"),
    ([*rows("p one"), {"output": "x"}], r"row 2: missing field 'instruction'"),
    ([{"instruction": "p one", "output": 3}], r"row 1: field 'output' must be a string"),
    ({"instruction": "p one"}, r"expected a non-empty JSON list"),
    ([*rows("p one"), "p two"], r"row 2: expected an object, got str"),
])
def test_bad_reference_names_the_first_offending_row(tmp_path, content, message):
    with pytest.raises(InpoError, match=message) as e:
        load_reference(write(tmp_path, content), EVAL)
    assert "\n" not in str(e.value) and "ref.json" in str(e.value)


def test_bad_reference_file(tmp_path):
    p = tmp_path / "ref.json"
    p.write_text('[{"instruction": "p one",')
    with pytest.raises(InpoError, match="line 1: invalid JSON"):
        load_reference(p, EVAL)
    with pytest.raises(InpoError, match="not found"):
        load_reference(tmp_path / "missing.json", EVAL)


def test_parse_iterations():
    assert parse_iterations(None, 3) == [3] and parse_iterations("all", 2) == [0, 1, 2]
    assert parse_iterations("0,2", 3) == [0, 2]
    with pytest.raises(InpoError, match="--iteration 4: not between 0"):
        parse_iterations("1,4", 3)
    with pytest.raises(InpoError, match="expected an integer"):
        parse_iterations("x", 3)
