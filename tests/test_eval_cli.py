"""`inpo eval` end to end on a one-iteration tiny run: --outputs files, --reference battles, bad references."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from tiny import TINY_TASK

from inpo.cli import main
from inpo.config import build_config


def cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["inpo", *args])
    with pytest.raises(SystemExit) as exc:
        main()
    out = capsys.readouterr()
    return (0 if exc.value.code is None else int(exc.value.code)), out.out, out.err


@pytest.fixture(scope="module")
def run_dir(cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from inpo.loop import run

    out = tmp_path_factory.mktemp("evalrun") / "inpo"
    cfg = build_config({"output_dir": str(out), "iterations": 1, "log_with": [],
                        "task": {"sft_cache": str(cache), "options": TINY_TASK},
                        "sampling": {"num_samples": 3, "max_new_tokens": 6},
                        "train": {"epochs": 1, "batch_size": 4}, "data": {"num_eval_prompts": 4}})
    run(cfg, quiet=True)
    return out


@pytest.fixture(scope="module")
def task_judge(run_dir: Path):
    from inpo.tasks import BuiltinTask, BuiltinTaskConfig

    return BuiltinTask(BuiltinTaskConfig(**TINY_TASK)).judge()


def test_outputs_then_battles(monkeypatch, capsys, run_dir, tmp_path, task_judge):
    ref = tmp_path / "ref.json"
    code, out, err = cli(monkeypatch, capsys, "eval", str(run_dir), "--iteration", "0", "--seed", "1",
                         "--outputs", str(ref))
    assert code == 0, err
    rows = json.loads(ref.read_text())
    assert len(rows) == 4 and {r["generator"] for r in rows} == {"inpo-pi_ref-sample-T1-p1-s1"}
    assert {r["dataset"] for r in rows} == {"inpo-builtin"}
    sidecar = json.loads((tmp_path / "ref.config.json").read_text())
    assert sidecar["iteration"] == 0 and sidecar["decoding"] == {"greedy": False, "temperature": 1.0, "top_p": 1.0,
                                                                 "max_new_tokens": 6, "seed": 1}
    assert (tmp_path / "ref_arena-hard" / "model_answer" / "inpo-pi_ref-sample-T1-p1-s1.jsonl").is_file()
    it1 = tmp_path / "it1.json"
    assert cli(monkeypatch, capsys, "eval", str(run_dir), "--iteration", "1", "--outputs", str(it1))[0] == 0

    code, out, err = cli(monkeypatch, capsys, "eval", str(run_dir), "--iteration", "0,1", "--reference", str(ref),
                         "--judge", "builtin", "--seed", "1", "--json")
    assert code == 0, err
    r0, r1 = (json.loads(line) for line in out.splitlines())
    # pi_ref with the reference's own seed reproduces the reference outputs: every battle is a tie, no flip
    assert (r0["iteration"], r0["win_rate"], r0["ties"], r0["position_bias"]) == (0, 0.5, 4, 0.0)
    assert r0["length"] == r0["reference_length"] and r0["reference"] == "inpo-pi_ref-sample-T1-p1-s1"
    assert r1["generator"] == "inpo-iter1-sample-T1-p1-s1"
    assert r1["lc_win_rate"] is None and "at least 5 prompts" in r1["lc_note"]  # 4 eval prompts

    # iteration 1 with seed 0 = the outputs written above; its win rate is the ground-truth judge's, both orders
    code, out, _ = cli(monkeypatch, capsys, "eval", str(run_dir), "--iteration", "1", "--reference", str(ref),
                       "--json")
    row = json.loads(out)
    xs = [r["instruction"] for r in json.loads(it1.read_text())]
    mine = [r["output"] for r in json.loads(it1.read_text())]
    theirs = [r["output"] for r in rows]
    p = (task_judge.prob(xs, mine, theirs) + 1 - task_judge.prob(xs, theirs, mine)) / 2
    assert row["win_rate"] == pytest.approx(p.double().mean().item(), abs=1e-12)
    assert row["length"] == pytest.approx(sum(map(len, mine)) / 4)

    png = tmp_path / "wr.png"
    code, out, err = cli(monkeypatch, capsys, "eval", str(run_dir), str(run_dir), "--iteration", "all",
                         "--reference", str(ref), "--plot", str(png))
    assert code == 0, err
    assert png.stat().st_size > 0 and out.count("inpo") >= 4  # 2 runs x iterations 0, 1 in one table


def bad_rows(ref: list[dict], kind: str) -> tuple[list[dict], str]:
    if kind == "duplicate":
        return [ref[0], ref[1], ref[0], *ref[2:]], "row 3: duplicate instruction (also row 1)"
    if kind == "missing":
        return ref[:3], "no reference output for eval prompt 4 of 4"
    return [*ref[:2], {**ref[2], "instruction": "topic0 nope :"}, ref[3]], "row 3: instruction 'topic0 nope :' is not"


@pytest.mark.parametrize("kind", ["duplicate", "missing", "foreign"])
def test_bad_reference_one_line_exit_2(monkeypatch, capsys, run_dir, tmp_path, kind):
    ref = tmp_path / "ref.json"
    assert cli(monkeypatch, capsys, "eval", str(run_dir), "--iteration", "0", "--outputs", str(ref))[0] == 0
    rows, message = bad_rows(json.loads(ref.read_text()), kind)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(rows))
    code, out, err = cli(monkeypatch, capsys, "eval", str(run_dir), "--reference", str(bad))
    assert code == 2 and message in err and str(bad) in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_eval_usage_errors(monkeypatch, capsys, run_dir, tmp_path):
    code, _, err = cli(monkeypatch, capsys, "eval", str(run_dir), "--iteration", "0,1", "--outputs",
                       str(tmp_path / "o.json"))
    assert code == 2 and "one iterate" in err and not (tmp_path / "o.json").exists()
    code, _, err = cli(monkeypatch, capsys, "eval", str(run_dir), "--iteration", "5", "--outputs",
                       str(tmp_path / "o.json"))
    assert code == 2 and "--iteration 5: not between 0 (pi_ref) and 1" in err
    code, _, err = cli(monkeypatch, capsys, "eval", str(run_dir), "--plot", str(tmp_path / "p.png"))
    assert code == 2 and "--reference" in err


def test_eval_vs_pi_ref_samples_still_works(monkeypatch, capsys, run_dir):
    torch.manual_seed(0)
    code, out, err = cli(monkeypatch, capsys, "eval", str(run_dir), "--json")
    assert code == 0, err
    m = json.loads(out)
    assert m["iteration"] == 1 and 0 <= m["pref/win_rate"] <= 1 and "game/duality_gap" in m
