"""`inpo data check` on TRL-format files (good and bad rows) and `export_pairs_trl` on a real tiny run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from inpo.datacheck import check_dataset, data_app, export_pairs_trl
from inpo.errors import InpoError


def write_jsonl(path: Path, rows: list[object], blank_after: int | None = None) -> Path:
    lines = [json.dumps(r) for r in rows]
    if blank_after is not None:
        lines.insert(blank_after, "")
    path.write_text("\n".join(lines) + "\n")
    return path


def msgs(*pairs: tuple[str, str]) -> list[dict[str, str]]:
    return [{"role": r, "content": c} for r, c in pairs]


def test_preference_standard_counts(tmp_path: Path) -> None:
    rows = [
        {"prompt": "2+2?", "chosen": "4", "rejected": "5", "id": 1},
        {"prompt": "2+2?", "chosen": "4", "rejected": "5", "id": 2},  # duplicate (extra columns ignored)
        {"prompt": "hi", "chosen": " ", "rejected": "hello"},  # empty chosen
        {"prompt": "x", "chosen": "same", "rejected": "same"},
    ]
    r = check_dataset(write_jsonl(tmp_path / "p.jsonl", rows))
    assert (r.rows, r.format, r.style, r.implicit_prompt) == (4, "preference", "standard", False)
    assert r.empty == {"prompt": 0, "chosen": 1, "rejected": 0}
    assert (r.duplicates, r.chosen_equals_rejected, r.extra_columns) == (1, 1, ["id"])


def test_conversational_preference_json_prompt_only_parquet_and_messages(tmp_path: Path) -> None:
    conv = [{"prompt": msgs(("user", "hi")), "chosen": msgs(("assistant", "hello")),
             "rejected": msgs(("assistant", ""))}]
    p = tmp_path / "c.json"
    p.write_text(json.dumps(conv))
    r = check_dataset(p)
    assert (r.format, r.style, r.empty["rejected"]) == ("preference", "conversational", 1)

    implicit = [{"chosen": msgs(("user", "q"), ("assistant", "a")),
                 "rejected": msgs(("user", "q"), ("assistant", "b"))}]
    r = check_dataset(write_jsonl(tmp_path / "i.jsonl", implicit))
    assert (r.format, r.implicit_prompt) == ("preference", True)

    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist([{"prompt": "a"}, {"prompt": "b"}, {"prompt": "a"}]), tmp_path / "q.parquet")
    r = check_dataset(tmp_path / "q.parquet")
    assert (r.rows, r.format, r.style, r.duplicates) == (3, "prompt-only", "standard", 1)

    r = check_dataset(write_jsonl(tmp_path / "m.jsonl", [{"messages": msgs(("system", "s"), ("user", "u"))}]))
    assert (r.format, r.style) == ("language-modeling", "conversational")


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([{"prompt": "a", "chosen": "b", "rejected": "c"}, {"prompt": "a", "chosen": 3, "rejected": "c"}],
         "line 3: field 'chosen' must be a string or a list of chat messages, got int"),
        ([{"prompt": "a", "chosen": "b", "rejected": "c"}, {"prompt": "a", "chosen": "b"}],
         "line 3: missing field 'rejected'"),
        ([{"prompt": "a"}, {"prompt": "b", "chosen": "x", "rejected": "y"}],
         "line 3: preference row in a prompt-only file"),
        ([{"prompt": "a", "chosen": "b", "rejected": "c"}, {"prompt": msgs(("user", "a")), "chosen": "b",
                                                             "rejected": "c"}],
         "line 3: field 'prompt' is conversational but the file is standard"),
        ([{"messages": msgs(("user", "a"))}, {"messages": [{"role": "robot", "content": "x"}]}],
         "line 3: field 'messages'\\[0\\]: unknown role 'robot'"),
        ([{"messages": msgs(("user", "a")), "prompt": "b"}], "line 1: give either 'messages'"),
        ([{"prompt": None}], "line 1: field 'prompt' is null"),
        ([{"text": "a"}], "line 1: no known fields"),
    ],
)
def test_bad_rows_name_file_line_and_field(tmp_path: Path, rows: list[dict], message: str) -> None:
    path = write_jsonl(tmp_path / "bad.jsonl", rows, blank_after=1 if len(rows) > 1 else None)
    with pytest.raises(InpoError, match=f"bad.jsonl: {message}"):
        check_dataset(path)


def test_bad_json_and_missing_file(tmp_path: Path) -> None:
    (tmp_path / "b.jsonl").write_text('{"prompt": "a"}\n{"prompt": \n')
    with pytest.raises(InpoError, match="b.jsonl: line 2: invalid JSON"):
        check_dataset(tmp_path / "b.jsonl")
    (tmp_path / "l.json").write_text(json.dumps([{"prompt": "a"}, {"prompt": ["x"]}]))
    with pytest.raises(InpoError, match=r"l.json: row 2: field 'prompt'\[0\]: each message needs"):
        check_dataset(tmp_path / "l.json")
    with pytest.raises(InpoError, match="nope.jsonl: file not found"):
        check_dataset(tmp_path / "nope.jsonl")


def test_cli_check(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "a", "chosen": "b", "rejected": "c"}] * 2)
    res = CliRunner().invoke(data_app, ["check", str(path), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert (out["rows"], out["format"], out["duplicates"]) == (2, "preference", 1)
    res = CliRunner().invoke(data_app, ["check", str(path)])
    assert res.exit_code == 0 and "preference, standard" in res.output


# --------------------------------------------------------------------------------------------------
# export on a real tiny run (built-in task, 1 iteration, ~10-20 s on CPU)
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from inpo.config import build_config
    from inpo.loop import run

    root = tmp_path_factory.mktemp("run")
    cfg = build_config({
        "output_dir": str(root / "run"), "iterations": 1,
        "task": {"sft_cache": str(root / "cache"),
                 "options": {"n_train_prompts": 8, "n_eval_prompts": 4, "sft_steps": 40, "n_sft_prompts": 128}},
        "sampling": {"num_samples": 3, "max_new_tokens": 6},
        "train": {"epochs": 1, "batch_size": 4, "lr": 1e-3},
        "data": {"num_eval_prompts": 4},
    })
    run(cfg, quiet=True)
    return root / "run"


def test_export_pairs_trl_matches_the_run(tiny_run: Path, tmp_path: Path) -> None:
    from inpo.algorithms import build_pairs
    from inpo.models import load_tokenizer
    from inpo.tasks import BuiltinTask, BuiltinTaskConfig

    out = tmp_path / "pairs.jsonl"
    res = CliRunner().invoke(data_app, ["export", str(tiny_run), str(out)])
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]

    # ground truth straight from the stage files
    samples = torch.load(tiny_run / "stages/iter_1/s0_samples.pt", weights_only=True)["responses"]  # + "logps"
    m = torch.load(tiny_run / "stages/iter_1/s0_judgements.pt", weights_only=True)
    n, k, _ = m.shape
    pairs = build_pairs(m, "all")  # INPO's pairing
    assert len(rows) == len(pairs) > 0 and f"wrote {len(pairs)} pairs" in res.output
    tok = load_tokenizer(tiny_run / "iter_1")
    task = BuiltinTask(BuiltinTaskConfig(n_train_prompts=8, n_eval_prompts=4, sft_steps=40, n_sft_prompts=128))
    assert n == len(task.train_prompts) == 8
    for row, c, r, w in zip(rows, pairs.chosen.tolist(), pairs.rejected.tolist(), pairs.weight.tolist(),
                            strict=True):
        i = c // k
        assert row["prompt"] == task.train_prompts[i] and (row["iteration"], row["step"]) == (1, 0)
        assert row["weight"] == pytest.approx(float(m[i, c % k, r % k]), abs=1e-6) == pytest.approx(w)
        # prompt + completion re-tokenizes to exactly the sampled tokens (EOS is the end marker TRL appends)
        for text, idx in ((row["chosen"], c), (row["rejected"], r)):
            resp = samples[idx][:-1] if samples[idx][-1] == tok.eos_token_id else samples[idx]
            assert tok(row["prompt"] + text).input_ids == tok(row["prompt"]).input_ids + resp
    report = check_dataset(out)
    assert (report.format, report.style, report.extra_columns) == ("preference", "standard",
                                                                   ["iteration", "step", "weight"])


def test_export_errors(tmp_path: Path) -> None:
    with pytest.raises(InpoError, match="not a run directory"):
        export_pairs_trl(tmp_path, tmp_path / "o.jsonl")


def test_export_skips_identical_responses_and_duplicate_rows(tiny_run: Path, tmp_path: Path) -> None:
    """Prompt 0's samples made (A, A, B) with a judge matrix that prefers sample 0 to its identical twin 1: the
    pair (0, 1) has chosen == rejected (skipped) and (1 > 2) repeats the row (0 > 2) (skipped)."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    stored = torch.load(run / "stages/iter_1/s0_samples.pt", weights_only=True)
    samples = stored["responses"] if isinstance(stored, dict) else stored  # dict: saved with the sampler's log-probs
    m = torch.load(run / "stages/iter_1/s0_judgements.pt", weights_only=True)
    k = m.shape[1]
    assert k == 3
    other = next(s for s in samples if s != samples[0])
    samples[1], samples[2] = list(samples[0]), list(other)
    m[0] = torch.tensor([[0.5, 0.9, 0.8], [0.1, 0.5, 0.8], [0.2, 0.2, 0.5]], dtype=m.dtype)
    torch.save(stored, run / "stages/iter_1/s0_samples.pt")
    torch.save(m, run / "stages/iter_1/s0_judgements.pt")
    out = tmp_path / "pairs.jsonl"
    n = export_pairs_trl(run, out)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert n == len(rows)
    keys = [(r["prompt"], r["chosen"], r["rejected"]) for r in rows]
    assert len(set(keys)) == len(keys) and all(r["chosen"] != r["rejected"] for r in rows)
    from inpo.algorithms import build_pairs

    pairs = build_pairs(m, "all")  # every ordered pair, weighted by P(chosen > rejected)
    first = [(c, r) for c, r in zip(pairs.chosen.tolist(), pairs.rejected.tolist(), strict=True) if c < k]
    assert sorted(first) == [(0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1)]  # the loop's pairs of prompt 0 ...
    # ... exported: A > B and B > A once each ((0, 1), (1, 0): identical; (1, 2), (2, 1): repeats)
    assert sum(1 for r in rows if r["prompt"] == rows[0]["prompt"]) == 2
    assert len(rows) == len(pairs) - 4
