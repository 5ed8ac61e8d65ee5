"""Unit tests of the judges: losses and GPM math (hand values, gradients), protocol properties of every
judge (antisymmetry, matrix = prob), the callable judge, data validation, save/load, CLI."""

from __future__ import annotations

import json
import math

import pytest
import torch

from inpo.errors import InpoError
from inpo.judges import (
    CallableJudge,
    GPMJudge,
    JudgeModel,
    PairJudge,
    RewardJudge,
    StyleJudge,
    bt_loss,
    gpm_loss,
    gpm_score,
    load_judge,
    load_preferences,
    pair_loss,
    save_judge,
    scaled_bt_loss,
    train_judge,
)
from inpo.judges.data import split_held_out
from inpo.judges.losses import gpm_score_matrix, skew_operator
from inpo.judges.synthetic import cyclic_matrix, cyclic_rows, style_words, transitive_matrix
from inpo.judges.tiny import build_tiny_backbone, build_word_tokenizer, save_tiny_base
from inpo.judges.train import JudgeTrainConfig, expected_calibration_error, pair_accuracy
from inpo.judges.triples import cyclic_triple_confusion

WORDS = "ask amber birch cedar dune ember fern grove heath s0 s1 s2 good bad".split()




def _model_judge(kind: str, *, prompt_head: bool = False, seed: int = 0):
    tok = build_word_tokenizer([" ".join(WORDS)])
    torch.manual_seed(seed)
    model = JudgeModel(build_tiny_backbone(len(tok), seed=seed), kind, dim=4, prompt_head=prompt_head)
    cls = {"bt": RewardJudge, "scaled-bt": RewardJudge, "pair": PairJudge, "gpm": GPMJudge}[kind]
    return cls(model, tok, temperature=0.1)


# ------------------------------------------------------------------------------------------ losses


def test_bt_and_scaled_bt_loss_hand_values():
    rc, rr = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0])
    want = torch.tensor([math.log1p(math.exp(-1.0)), math.log1p(math.exp(2.0))])
    torch.testing.assert_close(bt_loss(rc, rr), want)
    m = torch.tensor([3.0, 1.0])
    torch.testing.assert_close(scaled_bt_loss(rc, rr, strength=m), m * want)


def test_pair_loss_orders():
    s_cr, s_rc = torch.tensor([2.0]), torch.tensor([-1.0])
    torch.testing.assert_close(pair_loss(s_cr), torch.tensor([math.log1p(math.exp(-2.0))]))
    both = 0.5 * (math.log1p(math.exp(-2.0)) + math.log1p(math.exp(-1.0)))
    torch.testing.assert_close(pair_loss(s_cr, s_rc), torch.tensor([both]))


def test_gpm_score_sign_convention_and_operator():
    # One block: v_a = e1, v_b = e2. R e1 = (0, 1) (J rotates by +90 deg), so s(a > b) = <R v_a, v_b> = +1.
    va, vb = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    assert gpm_score(va, vb, torch.tensor([1.0])).item() == 1.0
    assert gpm_score(vb, va, torch.tensor([1.0])).item() == -1.0
    # the authors' 2-D formula: chosen[0] * rejected[1] - chosen[1] * rejected[0]
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(5, 6, generator=g), torch.randn(5, 6, generator=g)
    lam = torch.tensor([0.5, 2.0, 1.5])
    r = skew_operator(lam)
    assert torch.equal(r.T, -r)
    explicit = torch.zeros(6, 6)
    for blk, value in enumerate(lam):
        explicit[2 * blk : 2 * blk + 2, 2 * blk : 2 * blk + 2] = value * torch.tensor([[0.0, -1.0], [1.0, 0.0]])
    assert torch.equal(r, explicit)
    s = gpm_score(a, b, lam)
    torch.testing.assert_close(s, ((a @ r.T) * b).sum(-1))  # <R v_a, v_b>
    torch.testing.assert_close(s, -gpm_score(b, a, lam))
    assert torch.all(gpm_score(a, a, lam) == 0)
    torch.testing.assert_close(gpm_score_matrix(a, lam)[1, 3], gpm_score(a[1], a[3], lam))
    # batched (prompt-dependent) eigenvalues
    lam_b = torch.rand(5, 3, generator=g)
    torch.testing.assert_close(gpm_score(a, b, lam_b), torch.einsum("bi,bij,bj->b", b, skew_operator(lam_b), a))


def test_gpm_represents_rock_paper_scissors():
    angles = torch.tensor([0.0, 2 * math.pi / 3, 4 * math.pi / 3])
    v = torch.stack([torch.cos(angles), torch.sin(angles)], -1)
    p = torch.sigmoid(gpm_score_matrix(v, torch.tensor([1.0])) / 0.1)
    expected = torch.sigmoid(torch.tensor(math.sin(2 * math.pi / 3) / 0.1))
    # s0 > s1 > s2 > s0 with the same probability on each edge
    for i in range(3):
        torch.testing.assert_close(p[i, (i + 1) % 3], expected)


def test_gpm_score_gradient():
    g = torch.Generator().manual_seed(1)
    a = torch.randn(4, 6, dtype=torch.float64, generator=g, requires_grad=True)
    b = torch.randn(4, 6, dtype=torch.float64, generator=g, requires_grad=True)
    lam = torch.rand(4, 3, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(gpm_score, (a, b, lam))

    def through_normalize(x, y, lam_):
        return gpm_loss(gpm_score(torch.nn.functional.normalize(x, dim=-1),
                                  torch.nn.functional.normalize(y, dim=-1), lam_), temperature=0.1)

    assert torch.autograd.gradcheck(through_normalize, (a, b, lam))
    # analytic: ds/dv_a = R^T v_b, ds/dv_b = R v_a
    gpm_score(a, b, lam).sum().backward()
    r = skew_operator(lam.detach())
    torch.testing.assert_close(a.grad, torch.einsum("bji,bj->bi", r, b.detach()))
    torch.testing.assert_close(b.grad, torch.einsum("bij,bj->bi", r, a.detach()))


# ---------------------------------------------------------------------------------- protocol


def _all_judges():
    judges = {kind: _model_judge(kind) for kind in ("bt", "scaled-bt", "pair", "gpm")}
    judges["gpm-prompt-head"] = _model_judge("gpm", prompt_head=True)
    judges["callable"] = CallableJudge(lambda x, a, b: 0.9 if len(a) > len(b) else 0.3)
    judges["style"] = StyleJudge(cyclic_matrix(3))
    return judges


PROMPTS = ["ask amber birch", "ask fern", "ask dune dune ember"]
RESP_A = ["s0 amber", "s1 fern grove heath", "s2 good"]
RESP_B = ["s1 birch birch", "s2 cedar", "s0 bad ember"]


@pytest.mark.parametrize("name", ["bt", "scaled-bt", "pair", "gpm", "gpm-prompt-head", "callable", "style"])
def test_antisymmetry_and_matrix(name):
    judge = _all_judges()[name]
    p_ab = judge.prob(PROMPTS, RESP_A, RESP_B)
    p_ba = judge.prob(PROMPTS, RESP_B, RESP_A)
    assert p_ab.shape == (3,)
    assert torch.all((p_ab >= 0) & (p_ab <= 1))
    assert torch.max(torch.abs(p_ab + p_ba - 1)).item() <= 1e-6
    responses = ["s0 amber", "s1 fern grove", "s2 good bad", "s0 heath heath heath"]
    m = judge.matrix(PROMPTS[0], responses)
    assert m.shape == (4, 4)
    assert torch.max(torch.abs(m + m.T - 1)).item() <= 1e-6
    assert torch.max(torch.abs(torch.diagonal(m) - 0.5)).item() <= 1e-6
    ii, jj = torch.triu_indices(4, 4, offset=1)
    p = judge.prob([PROMPTS[0]] * len(ii), [responses[i] for i in ii], [responses[j] for j in jj])
    assert torch.max(torch.abs(m[ii, jj].double() - p.double())).item() <= 1e-6


def test_untrained_pair_is_position_biased_but_judge_is_not():
    judge = _model_judge("pair", seed=3)
    raw = judge.raw_prob(PROMPTS, RESP_A, RESP_A)  # identical responses: any deviation from 1/2 is position
    assert torch.max(torch.abs(raw - 0.5)).item() > 1e-4  # the raw classifier does see order ...
    assert torch.max(torch.abs(judge.prob(PROMPTS, RESP_A, RESP_A) - 0.5)).item() <= 1e-7  # ... P does not


@pytest.mark.parametrize("kind,expected_seqs", [("bt", 5), ("gpm", 5), ("pair", 20)])
def test_matrix_forward_passes(kind, expected_seqs):
    """K responses: K sequences for BT and GPM (embeddings), K(K-1) for the pairwise classifier."""
    judge = _model_judge(kind)
    seen = []
    handle = judge.model.backbone.register_forward_pre_hook(
        lambda mod, args, kwargs: seen.append(kwargs["input_ids"].shape[0]), with_kwargs=True
    )
    judge.matrix("ask amber", ["s0 a", "s1 b", "s2 c", "s0 d", "s1 e"])
    handle.remove()
    assert sum(seen) == expected_seqs


def test_callable_judge_symmetrizes_and_validates():
    biased = CallableJudge(lambda x, a, b: 0.9)  # always prefers the first position
    assert abs(biased.prob(["x"], ["a"], ["b"]).item() - 0.5) <= 1e-12
    j = CallableJudge(lambda x, a, b: {"ab": 0.8, "ba": 0.4}[a + b])
    torch.testing.assert_close(j.prob(["x"], ["a"], ["b"]), torch.tensor([0.7], dtype=torch.float64))
    for bad, msg in [(lambda x, a, b: float("nan"), "NaN on row 1"), (lambda x, a, b: 1.5, "1.5 on row 1"),
                     (lambda x, a, b: "0.5", "str on row 1")]:
        judge = CallableJudge(lambda x, a, b, bad=bad: 0.5 if a == "ok" else bad(x, a, b))
        with pytest.raises(InpoError, match=msg):
            judge.prob(["x", "y"], ["ok", "bad"], ["ok", "ok"])

    def boom(x, a, b):
        raise KeyError("no such response")

    with pytest.raises(InpoError, match=r"raised KeyError.*row 0"):
        CallableJudge(boom).prob(["x"], ["a"], ["b"])


# -------------------------------------------------------------------------------------- metrics


def test_accuracy_and_ece_hand_values():
    assert pair_accuracy(torch.tensor([0.9, 0.5, 0.2, 0.6])) == pytest.approx((1 + 0.5 + 0 + 1) / 4)
    # constant 0.8: both orientations -> bins 8 (p=.8, outcome 1) and 2 (p=.2, outcome 0): ECE = 0.2
    assert expected_calibration_error(torch.full((10,), 0.8)) == pytest.approx(0.2)
    # 0.75 on pairs of which 3/4 are right is calibrated only if outcomes agree: here all chosen -> 0.25
    assert expected_calibration_error(torch.full((4,), 0.75)) == pytest.approx(0.25)
    assert expected_calibration_error(torch.full((4,), 1.0)) == pytest.approx(0.0)


def test_triple_confusion_hand_data():
    rows = cyclic_rows(3, seed=0)
    pairs = load_preferences(rows).pairs
    conf = cyclic_triple_confusion(StyleJudge(cyclic_matrix(3)), pairs)
    assert conf["cyclic"] == {"cyclic": 3, "transitive": 0, "tie": 0}
    assert conf["edges"] == {"agree": 9, "total": 9}
    conf = cyclic_triple_confusion(StyleJudge(transitive_matrix(3)), pairs)
    assert conf["cyclic"] == {"cyclic": 0, "transitive": 3, "tie": 0}
    assert conf["edges"] == {"agree": 6, "total": 9}  # s0>s1, s1>s2 right; s2>s0 wrong


# ----------------------------------------------------------------------------------------- data


def _write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def test_formats_agree_and_helpsteer_conversion(tmp_path):
    rows = [
        {"prompt": "p1", "chosen": "a", "rejected": "b", "strength": 2, "case": "x"},
        {"prompt": "p2", "response_1": "c", "response_2": "d", "preference_strength": 3},
        {"prompt": "p3", "response_1": "e", "response_2": "f", "preference_strength": -1},
        {"prompt": "p4", "response_1": "g", "response_2": "h", "preference_strength": 0},
    ]
    jsonl = _write(tmp_path / "d.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    js = _write(tmp_path / "d.json", json.dumps(rows))
    cols = ["prompt", "chosen", "rejected", "strength", "case", "response_1", "response_2", "preference_strength"]
    lines = [",".join(cols)] + [",".join(str(r.get(c, "")) for c in cols) for r in rows]
    csv = _write(tmp_path / "d.csv", "\n".join(lines) + "\n")
    from datasets import Dataset

    Dataset.from_list([{c: r.get(c) for c in cols} for r in rows]).to_parquet(str(tmp_path / "d.parquet"))
    results = [load_preferences(p) for p in (jsonl, js, csv, tmp_path / "d.parquet")]
    for data in results:
        assert data.n_rows == 4 and data.n_ties == 1
        got = [(p.prompt, p.chosen, p.rejected, p.strength) for p in data.pairs]
        assert got == [("p1", "a", "b", 2), ("p2", "d", "c", 3), ("p3", "e", "f", 1)]
        assert data.pairs[0].case == "x" and data.pairs[1].case is None


@pytest.mark.parametrize(
    "line,match",
    [
        ('{"prompt": "p", "chosen": "a"}', r"line 2: missing field 'rejected'"),
        ('{"prompt": "p", "chosen": 3, "rejected": "b"}', r"line 2: field 'chosen' must be a string, got int"),
        ('{"prompt": "p", "chosen": "a", "rejected": "b", "strength": 4}', r"line 2: field 'strength' = 4 is out"),
        ('{"prompt": "p", "chosen": "a", "rejected": "  "}', r"line 2: field 'rejected' is empty"),
        ('{"prompt": "p", "chosen": "a", "rejected": "b"', r"line 2: invalid JSON"),
        ('{"prompt": "p", "response_1": "a", "response_2": "b", "preference_strength": -4}',
         r"line 2: field 'preference_strength' = -4 is out of range -3..3"),
        ('{"prompt": "p", "response_1": "a", "response_2": "b"}', r"line 2: missing field 'preference_strength'"),
        ('{"chosen": "a", "rejected": "b"}', r"line 2: missing field 'prompt'"),
        ('{"prompt": "p", "chosen": "a", "rejected": "b", "strength": 1.5}', r"line 2: field 'strength' must be"),
    ],
)
def test_bad_rows_name_file_row_field(tmp_path, line, match):
    path = _write(tmp_path / "bad.jsonl", '{"prompt": "p", "chosen": "a", "rejected": "b"}\n' + line + "\n")
    with pytest.raises(InpoError, match=match) as err:
        load_preferences(path)
    assert str(path) in str(err.value)


def test_bad_csv_row_number(tmp_path):
    path = _write(tmp_path / "bad.csv", "prompt,chosen,rejected,strength\np,a,b,1\np,a,b,x\n")
    with pytest.raises(InpoError, match=r"bad.csv: row 2: field 'strength' must be an integer"):
        load_preferences(path)


def test_split_is_grouped_and_seeded():
    pairs = load_preferences(cyclic_rows(20, seed=0)).pairs
    train, held = split_held_out(pairs, fraction=0.25, seed=3)
    assert {p.prompt for p in train}.isdisjoint({p.prompt for p in held})
    assert len(held) == 15 and len(train) == 45  # 5 of 20 prompts, 3 pairs each
    assert split_held_out(pairs, fraction=0.25, seed=3) == (train, held)


# --------------------------------------------------------------------------------- save / load


@pytest.mark.parametrize("kind,prompt_head", [("bt", False), ("pair", False), ("gpm", False), ("gpm", True)])
def test_save_load_roundtrip(tmp_path, kind, prompt_head):
    judge = _model_judge(kind, prompt_head=prompt_head, seed=5)
    out = save_judge(judge, tmp_path / "j")
    assert json.loads((out / "judge_config.json").read_text())["kind"] == kind
    assert (out / "model.safetensors").exists() and not list(out.glob("*.bin"))
    loaded = load_judge(out)
    assert type(loaded) is type(judge) and loaded.kind == kind
    torch.testing.assert_close(loaded.prob(PROMPTS, RESP_A, RESP_B), judge.prob(PROMPTS, RESP_A, RESP_B))


def test_load_errors(tmp_path):
    with pytest.raises(InpoError, match="no judge_config.json"):
        load_judge(tmp_path)
    out = save_judge(_model_judge("bt"), tmp_path / "j")
    (out / "judge_head.safetensors").unlink()
    with pytest.raises(InpoError, match="missing judge_head.safetensors"):
        load_judge(out)
    (out / "judge_config.json").write_text('{"kind": "svm"}')
    with pytest.raises(InpoError, match="field 'kind'"):
        load_judge(out)


def test_train_from_local_base_dir(tmp_path):
    """--base as a local transformers model dir (tiny Llama + WordLevel tokenizer saved in tmp_path)."""
    rows = cyclic_rows(10, seed=1)
    texts = [r[k] for r in rows for k in ("prompt", "chosen", "rejected")]
    base = save_tiny_base(texts, tmp_path / "base", hidden_size=32, num_layers=1)
    res = train_judge(rows, "scaled-bt", base, tmp_path / "out", JudgeTrainConfig(epochs=1))
    assert res.metrics["n_pairs"] == 30 and res.metrics["n_held_out"] == 6
    assert load_judge(tmp_path / "out").kind == "scaled-bt"
    with pytest.raises(InpoError, match="not a local model directory"):
        train_judge(rows, "bt", tmp_path / "nope", None, JudgeTrainConfig(epochs=1))
    with pytest.raises(InpoError, match="unknown judge kind 'svm'"):
        train_judge(rows, "svm", "builtin-tiny", None)


def test_style_judge_rejects_unknown_style():
    with pytest.raises(InpoError, match="does not start with a style word"):
        StyleJudge(cyclic_matrix(3)).prob(["x"], ["zz top"], ["s0"])
    assert style_words(3) == ["s0", "s1", "s2"]


# ------------------------------------------------------------------------------------------- CLI


def test_cli_synth_train_eval(tmp_path):
    from typer.testing import CliRunner

    from inpo.judges.cli import app

    runner = CliRunner()
    data = tmp_path / "cyc.jsonl"
    r = runner.invoke(app, ["synth", "cyclic", str(data), "--prompts", "12"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["train", str(data), "--kind", "bt", "--out", str(tmp_path / "j"), "--epochs", "6"])
    assert r.exit_code == 0, r.output
    assert "held-out acc" in r.output and "ECE" in r.output
    assert "~ log 2" in r.output  # BT cannot separate cyclic pairs: the CLI says so
    r = runner.invoke(app, ["eval", str(tmp_path / "j"), str(data), "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert out["cases"]["all"]["n"] == 36 and out["cases"]["cyclic"]["n"] == 36
    # 12 cyclic triples; a BT judge can never output a cyclic one
    assert out["triples"]["cyclic"]["cyclic"] == 0
    assert out["triples"]["cyclic"]["transitive"] + out["triples"]["cyclic"]["tie"] == 12
    r = runner.invoke(app, ["eval", str(tmp_path / "j"), str(data)])
    assert r.exit_code == 0 and "data \\ judge" in r.output
    bad = _write(tmp_path / "bad.jsonl", '{"prompt": "p", "chosen": "a"}\n')
    r = runner.invoke(app, ["train", str(bad), "--kind", "bt", "--out", str(tmp_path / "k")])
    assert isinstance(r.exception, InpoError) and "line 1: missing field 'rejected'" in str(r.exception)
