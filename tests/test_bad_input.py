"""Bad user input through the real CLI: one-line message naming the file/field/row, exit code 2, no traceback,
and nothing of an existing run (or a fresh output dir) is written or lost.

Most cases call ``inpo.cli.main`` in-process (same code path as ``python -m inpo``: typer parsing, the
InpoError/OSError handlers, exit codes) so that ~40 cases stay fast; a few representative ones run
``python -m inpo`` in a subprocess to check the real process (stderr, exit status, ``--debug`` traceback).
Failures inside the loop (judge, NaN loss, full disk) are injected with monkeypatch into an in-process CLI run
that resumes a finished run truncated to its first iteration, so only the failing iteration is computed.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from tiny import TINY_TASK

from inpo.cli import main
from inpo.judges import CallableJudge

pytestmark = pytest.mark.filterwarnings("ignore:sft.*:UserWarning")  # the tiny SFT is deliberately short



# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------




def tiny(out: Path, cache: Path, iterations: int = 2) -> dict:
    return {
        "output_dir": str(out),
        "iterations": iterations,
        "task": {"sft_cache": str(cache), "options": TINY_TASK},
        "sampling": {"num_samples": 3, "max_new_tokens": 6},
        "train": {"epochs": 1, "batch_size": 4, "lr": 1e-3},
        "data": {"num_eval_prompts": 4},
        "algo": {"name": "inpo", "eta": 0.25, "tau": 0.05},
    }


def write_yaml(path: Path, data: object) -> Path:
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return path


def tree_digest(path: Path) -> dict[str, str]:
    """sha256 of every file under ``path`` (relative names): equal digests = the directory is untouched."""
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


def cli_full(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    """Run ``inpo <args>`` in-process through ``inpo.cli.main``; return (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["inpo", *args])
    with pytest.raises(SystemExit) as exc:
        main()
    code = exc.value.code
    captured = capsys.readouterr()
    return (0 if code is None else int(code)), captured.out, captured.err


def cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str]:
    code, _, err = cli_full(monkeypatch, capsys, *args)
    return code, err


def cli_subprocess(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200", **(env or {})}
    return subprocess.run([sys.executable, "-m", "inpo", *args], capture_output=True, text=True, cwd=cwd,
                          env=full_env, timeout=300)


def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, (code, err)
    assert "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for n in needles:
        assert n in lines[0], (n, lines[0])


def expect_error(monkeypatch, capsys, args: list[str], *needles: str, fresh_out: Path | None = None) -> str:
    """The CLI fails with one line containing ``needles``; ``fresh_out`` (an output dir that did not exist
    before) is still absent afterwards: a failed start leaves nothing behind."""
    code, err = cli(monkeypatch, capsys, *args)
    assert_one_line_error(code, err, *needles)
    if fresh_out is not None:
        assert not fresh_out.exists(), f"{fresh_out} was created by a failed start"
    return err


# --------------------------------------------------------------------------------------------------
# fixtures: a finished run, a user's own model directory (copied from the built-in SFT reference)
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory, cache: Path) -> Path:
    """A complete T=2 run of the built-in task (in-process)."""
    from inpo.config import build_config
    from inpo.loop import run

    out = tmp_path_factory.mktemp("finished") / "run"
    run(build_config(tiny(out, cache)), quiet=True)
    return out


def truncated_copy(finished: Path, dest: Path) -> Path:
    """A copy of ``finished`` as if killed right after iteration 1: iteration 2 recomputes on resume."""
    shutil.copytree(finished, dest)
    shutil.rmtree(dest / "iter_2")
    shutil.rmtree(dest / "stages" / "iter_2")
    state = json.loads((dest / "state.json").read_text())
    (dest / "state.json").write_text(json.dumps({**state, "completed_iterations": 1}))
    rows = [line for line in (dest / "metrics.jsonl").read_text().splitlines() if json.loads(line)["iteration"] <= 1]
    (dest / "metrics.jsonl").write_text("".join(r + "\n" for r in rows))
    return dest


@pytest.fixture(scope="module")
def ref_dir(finished_run: Path, cache: Path) -> Path:
    return next(p.parent for p in cache.rglob("task.json"))


@pytest.fixture
def user_model(ref_dir: Path, tmp_path: Path) -> Path:
    """The user's own model: a plain save_pretrained directory (tiny Llama + tokenizer)."""
    d = tmp_path / "my_model"
    shutil.copytree(ref_dir, d)
    (d / "task.json").unlink()
    return d


def user_cfg(tmp_path: Path, model: Path, prompts: Path, **extra: dict) -> Path:
    data = {"output_dir": str(tmp_path / "out"), "iterations": 1,
            "model": {"path": str(model)}, "judge": {"path": str(tmp_path / "my_judge")},
            "data": {"prompts": str(prompts), "num_eval_prompts": 4},
            "sampling": {"num_samples": 3, "max_new_tokens": 6},
            "train": {"epochs": 1, "batch_size": 4, "lr": 1e-3}}
    for k, v in extra.items():
        data[k] = {**data.get(k, {}), **v}
    return write_yaml(tmp_path / "cfg.yaml", data)


GOOD_PROMPTS = ["topic2 w26 w20 :", "topic1 w16 w19 w31 w23 :", "topic0 w17 w17 w29 :", "topic1 w3 w4 :"]


def write_prompts(path: Path, rows: list[object]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def length_judge(prompt: str, a: str, b: str) -> float:
    """A judge that prefers longer responses (bounded, in (0, 1))."""
    return 0.5 + 0.4 * math.tanh(len(a.split()) - len(b.split()))


def use_judge(monkeypatch: pytest.MonkeyPatch, judge: object) -> None:
    """``judge.path`` of the config loads ``judge`` (the CLI cannot take a Python object)."""
    import inpo.judges

    monkeypatch.setattr(inpo.judges, "load_judge", lambda path, **kw: judge)


# --------------------------------------------------------------------------------------------------
# 1. the config file (in-process CLI)
# --------------------------------------------------------------------------------------------------


CONFIG_CASES = {
    # name: (yaml text or data, CLI extra args, substrings of the one-line message)
    "unknown_top_level_field": ({"iterations": 1, "foo": 3}, [], ["field 'foo'", "Extra inputs"]),
    "unknown_nested_field": ({"algo": {"etaa": 1.0}}, [], ["field 'algo.etaa'"]),
    "wrong_type_int": ({"iterations": "many"}, [], ["field 'iterations'", "integer"]),
    "section_is_scalar": ({"train": 3}, [], ["field 'train'"]),
    "zero_iterations": ({"iterations": 0}, [], ["field 'iterations'"]),
    "unknown_algorithm": ({}, ["--algo", "foo"], ["field 'algo.name'", "'inpo'"]),
    "negative_eta": ({"algo": {"eta": -1.0}}, [], ["field 'algo.eta'", "eta must be a finite number > 0"]),
    "nan_eta": ("algo: {eta: .nan}\n", [], ["field 'algo.eta'", "nan"]),
    "negative_tau": ({"algo": {"tau": -0.1}}, [], ["field 'algo.tau'", "tau must be"]),
    "inf_tau": ("algo: {tau: .inf}\n", [], ["field 'algo.tau'"]),
    "nan_lr": ("train: {lr: .nan}\n", [], ["field 'train.lr'", "lr must be"]),
    "negative_lr_override": ({}, ["--set", "train.lr=-1"], ["field 'train.lr'"]),
    "tau_above_eta": ({"algo": {"eta": 0.1, "tau": 0.2}}, [], ["tau must be <= eta", "eta=0.1"]),
    "theorem4_for_sppo": ({"algo": {"name": "sppo", "eta_schedule": "theorem4"}}, [], ["theorem4", "sppo"]),
    "ipo_average_tokens_gone": ({"algo": {"ipo_average_tokens": True}}, [], ["train.logprob_reduction=mean"]),
    "bad_reduction": ({"train": {"logprob_reduction": "max"}}, [], ["field 'train.logprob_reduction'"]),
    "mnpo_weights_not_summing": ({"algo": {"mnpo_weights": [0.5, 0.6]}}, [], ["mnpo_weights"]),
    "temperature_zero": ({"sampling": {"temperature": 0}}, [], ["field 'sampling.temperature'"]),
    "num_samples_one": ({"sampling": {"num_samples": 1}}, [], ["field 'sampling.num_samples'"]),
    "too_long_policy_unknown": ({"data": {"too_long": "truncate"}}, [], ["field 'data.too_long'"]),
    "invalid_yaml": ("iterations: 2\nalgo: {eta: [1, 2\n", [], ["invalid YAML", "line "]),
    "top_level_list": ("- 1\n- 2\n", [], ["expected a mapping at the top level"]),
    "model_without_prompts": ({"model": {"path": "some/model"}, "judge": {"path": "j"}}, [],
                              ["data.prompts is required"]),
    "model_without_judge": ({"model": {"path": "m"}, "data": {"prompts": "p.jsonl"}}, [],
                            ["judge.path is required"]),
    "override_without_equals": ({}, ["--set", "algo.eta"], ["override 'algo.eta'", "key.sub=value"]),
    "override_into_scalar": ({}, ["--set", "iterations.x=1"], ["field 'iterations'"]),
    "unknown_task_option": ({"task": {"options": {"n_trian_prompts": 4}}}, [], ["task"]),
}


@pytest.mark.parametrize("name", sorted(CONFIG_CASES))
def test_bad_config(name: str, tmp_path: Path, cache: Path, monkeypatch, capsys) -> None:
    content, extra, needles = CONFIG_CASES[name]
    base = tiny(tmp_path / "out", cache)
    if isinstance(content, dict):
        for k, v in content.items():
            base[k] = {**base[k], **v} if isinstance(v, dict) and isinstance(base.get(k), dict) else v
        content = base
    cfg = write_yaml(tmp_path / "cfg.yaml", content)
    err = expect_error(monkeypatch, capsys, ["train", str(cfg), *extra], *needles, fresh_out=tmp_path / "out")
    if name not in {"override_without_equals", "unknown_task_option"}:
        assert str(cfg) in err  # the message names the file


def test_peft_target_modules_not_in_the_model(tmp_path: Path, cache: Path, monkeypatch, capsys) -> None:
    cfg = write_yaml(tmp_path / "cfg.yaml", {**tiny(tmp_path / "out", cache), "peft": {"target_modules": ["nope"]}})
    expect_error(monkeypatch, capsys, ["train", str(cfg), "-q"], "peft.target_modules", "nope",
                 fresh_out=tmp_path / "out")


def test_config_file_missing(tmp_path: Path, monkeypatch, capsys) -> None:
    expect_error(monkeypatch, capsys, ["train", str(tmp_path / "nope.yaml")], "nope.yaml", "config file not found")


def test_python_object_tag_is_rejected(tmp_path: Path, monkeypatch, capsys) -> None:
    marker = tmp_path / "pwned"
    cfg = write_yaml(tmp_path / "evil.yaml", f"iterations: !!python/object/apply:os.system ['touch {marker}']\n")
    expect_error(monkeypatch, capsys, ["train", str(cfg)], "evil.yaml", "line 1", "python/object")
    assert not marker.exists()


# --------------------------------------------------------------------------------------------------
# 2. run directories: refuse to clobber, resume only a run
# --------------------------------------------------------------------------------------------------


def test_run_dir_holding_a_different_run_is_refused_and_untouched(finished_run: Path, tmp_path: Path, cache: Path,
                                                                    monkeypatch, capsys) -> None:
    before = tree_digest(finished_run)
    other = tiny(finished_run, cache)
    other["algo"] = {"name": "inpo", "eta": 0.5, "tau": 0.05}
    cfg = write_yaml(tmp_path / "other.yaml", other)
    expect_error(monkeypatch, capsys, ["train", str(cfg)], str(finished_run), "already holds a run", "--overwrite")
    # resuming it with a different config is refused too
    expect_error(monkeypatch, capsys, ["train", "--resume", str(finished_run), "--set", "algo.eta=2"],
                 str(finished_run), "different config")
    assert tree_digest(finished_run) == before


def test_overwrite_keeps_the_old_run_when_the_new_inputs_are_bad(finished_run: Path, user_model: Path,
                                                                  tmp_path: Path, monkeypatch, capsys) -> None:
    old = tmp_path / "old_run"
    shutil.copytree(finished_run, old)
    before = tree_digest(old)
    prompts = write_prompts(tmp_path / "prompts.jsonl", [{"prompt": "a"}, {"prompt": ""}])
    cfg = user_cfg(tmp_path, user_model, prompts)
    expect_error(monkeypatch, capsys, ["train", str(cfg), "-o", str(old), "--overwrite"], "row 2", "is empty")
    assert tree_digest(old) == before


def test_overwrite_never_deletes_a_directory_that_is_not_a_run(tmp_path: Path, cache: Path, monkeypatch,
                                                              capsys) -> None:
    mine = tmp_path / "my_files"
    mine.mkdir()
    (mine / "thesis.tex").write_text("precious")
    cfg = write_yaml(tmp_path / "cfg.yaml", tiny(mine, cache))
    expect_error(monkeypatch, capsys, ["train", str(cfg), "--overwrite"], str(mine), "holds no inpo run")
    expect_error(monkeypatch, capsys, ["train", str(cfg)], str(mine), "holds no inpo run")
    assert (mine / "thesis.tex").read_text() == "precious"


def test_output_dir_is_a_file(tmp_path: Path, cache: Path, monkeypatch, capsys) -> None:
    f = tmp_path / "afile"
    f.write_text("x")
    cfg = write_yaml(tmp_path / "cfg.yaml", tiny(f, cache))
    expect_error(monkeypatch, capsys, ["train", str(cfg)], str(f), "not a directory")
    assert f.read_text() == "x"


def test_output_dir_cannot_be_created(cache: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    """/proc refuses new directories even for root (a read-only or full disk behaves the same way)."""
    cfg = write_yaml(tmp_path / "cfg.yaml", tiny(Path("/proc/inpo_run"), cache))
    expect_error(monkeypatch, capsys, ["train", str(cfg), "-q"], "/proc/inpo_run", "cannot create the run directory")


def test_resume_of_a_dir_without_a_run(tmp_path: Path, monkeypatch, capsys) -> None:
    expect_error(monkeypatch, capsys, ["train", "--resume", str(tmp_path / "nothing")], "nothing to resume")
    (tmp_path / "empty").mkdir()
    expect_error(monkeypatch, capsys, ["train", "--resume", str(tmp_path / "empty")], "empty", "nothing to resume")


def test_resume_together_with_a_config(tmp_path: Path, finished_run: Path, monkeypatch, capsys) -> None:
    cfg = write_yaml(tmp_path / "cfg.yaml", {})
    expect_error(monkeypatch, capsys, ["train", str(cfg), "--resume", str(finished_run)], "not both")


def test_damaged_metrics_file(finished_run: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write('{"iteration": 3, "loss/tr\n')
    expect_error(monkeypatch, capsys, ["train", "--resume", str(run_dir), "-q"], "metrics.jsonl", "line 4",
                 "damaged metrics row")


def test_keyboard_interrupt_is_one_line_with_exit_130(tmp_path: Path, cache: Path, monkeypatch, capsys) -> None:
    import inpo.loop

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(inpo.loop, "run", interrupted)
    cfg = write_yaml(tmp_path / "cfg.yaml", tiny(tmp_path / "out", cache))
    code, err = cli(monkeypatch, capsys, "train", str(cfg))
    assert code == 130 and "Traceback" not in err and not err.strip()  # typer: quiet exit 130 on Ctrl-C


def test_corrupt_state_file(finished_run: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    (run_dir / "state.json").write_text("{not json")
    expect_error(monkeypatch, capsys, ["train", "--resume", str(run_dir)], "state.json", "corrupt")


# --------------------------------------------------------------------------------------------------
# 3. the user's model and prompts
# --------------------------------------------------------------------------------------------------


def test_model_path_does_not_exist(tmp_path: Path, monkeypatch, capsys) -> None:
    prompts = write_prompts(tmp_path / "p.jsonl", [{"prompt": p} for p in GOOD_PROMPTS])
    cfg = user_cfg(tmp_path, tmp_path / "no_such_model", prompts)
    expect_error(monkeypatch, capsys, ["train", str(cfg)], "model.path", "no_such_model", "does not exist",
                 fresh_out=tmp_path / "out")


def test_model_path_is_not_a_model(tmp_path: Path, monkeypatch, capsys) -> None:
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("hello")
    prompts = write_prompts(tmp_path / "p.jsonl", [{"prompt": p} for p in GOOD_PROMPTS])
    cfg = user_cfg(tmp_path, tmp_path / "junk", prompts)
    expect_error(monkeypatch, capsys, ["train", str(cfg)], "model.path", "junk", fresh_out=tmp_path / "out")


def test_model_path_is_not_a_causal_lm(user_model: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    """A directory with a tokenizer and an encoder-decoder config (T5 has no causal-LM class)."""
    (user_model / "config.json").write_text(json.dumps({"model_type": "t5", "vocab_size": 43, "d_model": 16,
                                                        "num_layers": 1, "num_heads": 2, "d_kv": 8, "d_ff": 32}))
    prompts = write_prompts(tmp_path / "p.jsonl", [{"prompt": p} for p in GOOD_PROMPTS])
    cfg = user_cfg(tmp_path, user_model, prompts)
    expect_error(monkeypatch, capsys, ["train", str(cfg)], "model.path", "t5", "causal LM", fresh_out=tmp_path / "out")


def test_tokenizer_does_not_match_the_model(user_model: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    """A model with a 20-row embedding and the 43-token tokenizer: token ids >= 20 would crash generation."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(user_model)
    config.vocab_size = 20
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(user_model)
    prompts = write_prompts(tmp_path / "p.jsonl", [{"prompt": p} for p in GOOD_PROMPTS])
    cfg = user_cfg(tmp_path, user_model, prompts)
    expect_error(monkeypatch, capsys, ["train", str(cfg)], "model.path", "43 tokens", "only 20 rows",
                 fresh_out=tmp_path / "out")


PROMPT_CASES = {
    # name: (rows of the prompts file, extra config sections, substrings of the message)
    "invalid_json_line": ([{"prompt": "a"}, {"prompt": "b"}, '{"prompt": "c"', {"prompt": "d"}], {},
                          ["line 3", "invalid JSON"]),
    "row_not_an_object": ([{"prompt": "a"}, "[1, 2]"], {}, ["line 2", "expected a JSON object"]),
    "missing_prompt_field": ([{"prompt": "a"}, {"question": "b"}], {}, ["row 2", "missing field 'prompt'"]),
    "empty_prompt": ([{"prompt": "a"}, {"prompt": "   "}], {}, ["row 2", "field 'prompt' is empty"]),
    "prompt_and_messages": ([{"prompt": "a", "messages": [{"role": "user", "content": "b"}]}], {},
                            ["row 1", "either 'prompt' or 'messages'"]),
    "unknown_chat_role": ([{"prompt": "a"}, {"messages": [{"role": "user", "content": "hi"},
                                                          {"role": "wizard", "content": "x"}]}], {},
                          ["row 2", "messages'[1]", "unknown role 'wizard'"]),
    "message_without_content": ([{"messages": [{"role": "user"}]}], {}, ["row 1", "'role' and 'content'"]),
    "chat_without_template": ([{"messages": [{"role": "user", "content": "hi"}]}], {},
                              ["row 1", "no chat template"]),
    "too_long_error": ([{"prompt": "a"}, {"prompt": " ".join(["w1"] * 40)}],
                       {"data": {"max_prompt_length": 16, "too_long": "error"}},
                       ["row 2", "41 tokens > data.max_prompt_length=16"]),
    "all_too_long": ([{"prompt": " ".join(["w1"] * 40)}], {"data": {"max_prompt_length": 16}},
                     ["every prompt is longer than data.max_prompt_length=16"]),
    "no_rows": ([], {}, ["no rows"]),
    "prompt_not_a_string": ([{"prompt": "a"}, {"prompt": 5}], {}, ["row 2", "field 'prompt'"]),
}


@pytest.mark.parametrize("name", sorted(PROMPT_CASES))
def test_bad_prompts(name: str, user_model: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    rows, extra, needles = PROMPT_CASES[name]
    prompts = write_prompts(tmp_path / "prompts.jsonl", rows)
    cfg = user_cfg(tmp_path, user_model, prompts, **extra)
    expect_error(monkeypatch, capsys, ["train", str(cfg)], "prompts.jsonl", *needles, fresh_out=tmp_path / "out")


def test_prompts_file_missing(user_model: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    cfg = user_cfg(tmp_path, user_model, tmp_path / "nope.jsonl")
    expect_error(monkeypatch, capsys, ["train", str(cfg)], "nope.jsonl", "file not found", fresh_out=tmp_path / "out")


@pytest.mark.parametrize(("suffix", "content", "needles"), [
    (".jsonl", b'{"prompt": "a"}\n{"prompt": "caf\xe9"}\n', ["line 2", "not UTF-8"]),
    (".json", b"\xff\xfe[]", ["line 1", "not UTF-8"]),
    (".parquet", b"PAR1 this is not parquet", ["not a readable parquet file"]),
])
def test_unreadable_prompts_file(suffix: str, content: bytes, needles: list[str], user_model: Path, tmp_path: Path,
                                 monkeypatch, capsys) -> None:
    prompts = tmp_path / f"prompts{suffix}"
    prompts.write_bytes(content)
    cfg = user_cfg(tmp_path, user_model, prompts)
    expect_error(monkeypatch, capsys, ["train", str(cfg)], prompts.name, *needles, fresh_out=tmp_path / "out")


def test_judge_path_is_not_a_judge(user_model: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    prompts = write_prompts(tmp_path / "prompts.jsonl", [{"prompt": p} for p in GOOD_PROMPTS])
    cfg = user_cfg(tmp_path, user_model, prompts)  # judge.path = tmp_path/my_judge, which does not exist
    expect_error(monkeypatch, capsys, ["train", str(cfg)], "my_judge", "not a judge directory",
                 fresh_out=tmp_path / "out")


def test_no_pad_token_works_and_too_long_prompts_are_skipped_with_a_count(
    user_model: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    """A tokenizer without a pad token trains (pad = eos); a too-long prompt is skipped and counted."""
    from transformers import AutoTokenizer

    tc = json.loads((user_model / "tokenizer_config.json").read_text())
    tc.pop("pad_token")
    (user_model / "tokenizer_config.json").write_text(json.dumps(tc))
    assert AutoTokenizer.from_pretrained(user_model).pad_token is None  # the precondition of this test
    rows = [{"prompt": p} for p in GOOD_PROMPTS] + [{"prompt": " ".join(["w1"] * 40)}]
    prompts = write_prompts(tmp_path / "prompts.jsonl", rows)
    cfg = user_cfg(tmp_path, user_model, prompts, data={"max_prompt_length": 16})
    use_judge(monkeypatch, CallableJudge(length_judge))
    code, out, err = cli_full(monkeypatch, capsys, "train", str(cfg))
    assert code == 0, err
    assert "skipped 1 prompts longer than data.max_prompt_length" in out
    saved = AutoTokenizer.from_pretrained(tmp_path / "out" / "iter_1")
    assert saved.pad_token == saved.eos_token == "<eos>"
    rows_out = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows_out] == [0, 1]
    assert rows_out[1]["train/pairs"] == 4 * 3 * 2  # 4 prompts kept (1 skipped) x K(K-1) ordered pairs, K=3


@pytest.mark.parametrize("too_long", ["skip", "error"])
def test_prompt_plus_response_longer_than_the_model_context(too_long: str, ref_dir: Path, tmp_path: Path,
                                                            monkeypatch, capsys) -> None:
    """A GPT-2 (learned positions, n_positions=16) with max_new_tokens=6: a 12-token prompt does not fit."""
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    model = tmp_path / "gpt2"
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=43, n_positions=16, n_embd=32, n_layer=1, n_head=2, bos_token_id=1,
                               eos_token_id=2)).save_pretrained(model)
    AutoTokenizer.from_pretrained(ref_dir).save_pretrained(model)
    long = "topic1 w3 w4 w5 w6 w7 w8 w9 w10 w11 :"  # 12 tokens with <bos>: 12 + 6 > 16
    prompts = write_prompts(tmp_path / "prompts.jsonl", [{"prompt": p} for p in GOOD_PROMPTS] + [{"prompt": long}])
    cfg = user_cfg(tmp_path, model, prompts, data={"too_long": too_long})
    if too_long == "error":
        expect_error(monkeypatch, capsys, ["train", str(cfg)], "row 5", "12 tokens",
                     "model context 16 - sampling.max_new_tokens=10", fresh_out=tmp_path / "out")
        return
    use_judge(monkeypatch, CallableJudge(length_judge))
    code, out, err = cli_full(monkeypatch, capsys, "train", str(cfg))
    assert code == 0, err
    assert "skipped 1 prompts longer than model context 16 - sampling.max_new_tokens=10" in out
    assert (tmp_path / "out" / "iter_1" / "model.safetensors").is_file()


# --------------------------------------------------------------------------------------------------
# 4. failures inside the loop: judge, NaN loss, full disk (the previous checkpoint and metrics survive)
# --------------------------------------------------------------------------------------------------


class NaNJudge:
    """A raw judge object (not CallableJudge) whose probabilities are NaN."""

    def prob(self, prompts, a, b):
        return torch.full((len(prompts),), float("nan"))

    def matrix(self, prompt, responses):
        return torch.full((len(responses), len(responses)), float("nan"))


class BadMatrixJudge:
    """Valid ``prob`` (evaluation passes) but a ``matrix`` with a probability of 1.5 (training fails)."""

    def prob(self, prompts, a, b):
        return torch.full((len(prompts),), 0.5)

    def matrix(self, prompt, responses):
        m = torch.full((len(responses), len(responses)), 0.5)
        m[0, 1] = 1.5
        return m


def boom(prompt: str, a: str, b: str) -> float:
    raise RuntimeError("judge server down")


JUDGE_CASES = {
    "callable_raises": (CallableJudge(boom), ["judge failed during evaluation of iteration 0",
                                              "RuntimeError(judge server down)"]),
    "callable_returns_nan": (CallableJudge(lambda p, a, b: float("nan")), ["returned NaN on row 0"]),
    "callable_out_of_range": (CallableJudge(lambda p, a, b: 1.7), ["returned 1.7", "[0, 1]"]),
    "object_returns_nan": (NaNJudge(), ["judge returned nan for prompt 0", "evaluation of iteration 0"]),
    "object_matrix_out_of_range": (BadMatrixJudge(), ["invalid matrix for prompt 0", "entry [0, 1] = 1.5"]),
}


@pytest.mark.parametrize("name", sorted(JUDGE_CASES))
def test_bad_judge(name: str, user_model: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    judge, needles = JUDGE_CASES[name]
    prompts = write_prompts(tmp_path / "prompts.jsonl", [{"prompt": p} for p in GOOD_PROMPTS])
    cfg = user_cfg(tmp_path, user_model, prompts)
    use_judge(monkeypatch, judge)
    expect_error(monkeypatch, capsys, ["train", str(cfg)], *needles)
    assert not (tmp_path / "out" / "iter_1").exists()


def resume_failing(finished_run: Path, tmp_path: Path, monkeypatch, capsys, *needles: str) -> Path:
    """Resume a copy of the finished run truncated after iteration 1 (with a failure injected by the caller):
    the error is one line, and iter_1, metrics.jsonl and state.json are exactly as before."""
    run_dir = truncated_copy(finished_run, tmp_path / "run")
    keep = {name: digest for name, digest in tree_digest(run_dir).items()
            if name.startswith("iter_1/") or name in ("metrics.jsonl", "state.json")}  # config.yaml: new location
    expect_error(monkeypatch, capsys, ["train", "--resume", str(run_dir), "-q"], *needles)
    after = tree_digest(run_dir)
    assert {k: after.get(k) for k in keep} == keep
    assert not (run_dir / "iter_2").exists()
    return run_dir


def test_nan_loss_names_the_batch_and_keeps_the_last_checkpoint(finished_run: Path, tmp_path: Path, monkeypatch,
                                                               capsys) -> None:
    from inpo.algorithms import ALGORITHMS

    algo = ALGORITHMS["inpo"]
    nan_loss = type(algo)(**{**algo.__dict__, "loss": lambda inputs, cfg: inputs.policy_chosen * float("nan")})
    monkeypatch.setitem(ALGORITHMS, "inpo", nan_loss)
    resume_failing(finished_run, tmp_path, monkeypatch, capsys, "iteration 2: non-finite loss in epoch 1, step 1",
                   "last good checkpoint kept (iter_1)")


def enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_disk_full_while_saving_a_checkpoint(finished_run: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    from transformers import PreTrainedModel

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", enospc)
    run_dir = resume_failing(finished_run, tmp_path, monkeypatch, capsys, "iter_2", "cannot write checkpoint",
                             "No space left on device")
    assert not (run_dir / ".iter_2.tmp").exists()  # no half-written checkpoint left behind
    # after freeing space, --resume finishes the run
    monkeypatch.undo()
    code, err = cli(monkeypatch, capsys, "train", "--resume", str(run_dir), "-q")
    assert code == 0, err
    assert (run_dir / "iter_2" / "model.safetensors").is_file()


def test_disk_full_on_rename_of_metrics(finished_run: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    real_replace = os.replace

    def replace(src, dst, *a, **kw):
        if Path(dst).name == "metrics.jsonl":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))
        return real_replace(src, dst, *a, **kw)

    monkeypatch.setattr(os, "replace", replace)
    run_dir = truncated_copy(finished_run, tmp_path / "run")
    metrics_before = (run_dir / "metrics.jsonl").read_bytes()
    state_before = (run_dir / "state.json").read_bytes()
    expect_error(monkeypatch, capsys, ["train", "--resume", str(run_dir), "-q"], "metrics.jsonl",
                 "No space left on device")
    assert (run_dir / "metrics.jsonl").read_bytes() == metrics_before
    assert (run_dir / "state.json").read_bytes() == state_before
    assert (run_dir / "iter_1" / "model.safetensors").is_file()


def test_disk_full_while_writing_a_stage(finished_run: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    real_save = torch.save

    def save(obj, f, *a, **kw):
        if "samples" in str(f):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(f))
        return real_save(obj, f, *a, **kw)

    monkeypatch.setattr(torch, "save", save)
    resume_failing(finished_run, tmp_path, monkeypatch, capsys, "s0_samples.pt", "No space left on device")


# --------------------------------------------------------------------------------------------------
# 5. the real process (subprocess): stderr, exit status, --debug
# --------------------------------------------------------------------------------------------------


def test_real_process_one_line_errors_and_debug_traceback(tmp_path: Path, cache: Path) -> None:
    bad = write_yaml(tmp_path / "bad.yaml", {**tiny(tmp_path / "out", cache), "algo": {"eta": 0.1, "tau": 0.5}})
    r = cli_subprocess("train", str(bad), cwd=tmp_path)
    assert_one_line_error(r.returncode, r.stderr, "bad.yaml", "tau must be <= eta")
    assert r.stdout == ""
    r = cli_subprocess("train", str(bad), "--debug", cwd=tmp_path)
    assert r.returncode != 0 and "Traceback" in r.stderr and "InpoError" in r.stderr
    prompts = write_prompts(tmp_path / "prompts.jsonl", [{"prompt": "a"}, "{oops"])
    cfg = user_cfg(tmp_path, tmp_path / "m", prompts)
    r = cli_subprocess("train", str(cfg), cwd=tmp_path)
    assert_one_line_error(r.returncode, r.stderr, "model.path", "does not exist")
    assert not (tmp_path / "out").exists()
