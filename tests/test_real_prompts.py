"""Prompts longer than ``data.max_prompt_length`` on SmolLM2-135M-Instruct, with its real tokenizer and chat
template: the length that counts is the rendered one (template, system prompt and generation prompt), ``too_long:
skip`` drops such prompts (train and eval files) and says how many, ``too_long: error`` is one line naming the file,
the row and the field, exit code 2, nothing written. No generation: the prompts are loaded by the loop's own
setup (:func:`inpo.models.build_setup`) and the ``inpo train`` command, which stop before sampling."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest
from rich.console import Console

from inpo.cli import main
from inpo.config import build_config

SHORT_A = "Say hi."
LONG = "Explain, in detail and with examples, how photosynthesis turns sunlight, water and carbon dioxide into sugar."
SHORT_B = "What is two plus two?"


def rendered_ids(tok, text: str) -> list[int]:
    """Independent of inpo's loader: the chat template tokenized by transformers itself."""
    return list(tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                        tokenize=True, return_dict=True)["input_ids"])


@pytest.fixture(scope="module")
def files(smollm2_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    root = tmp_path_factory.mktemp("long_prompts")
    for name, rows in (("train.jsonl", [SHORT_A, LONG, SHORT_B]), ("eval.jsonl", [LONG, SHORT_B])):
        (root / name).write_text("".join(json.dumps({"prompt": p}) + "\n" for p in rows))
    lengths = {p: len(rendered_ids(tok, p)) for p in (SHORT_A, LONG, SHORT_B)}
    limit = lengths[LONG] - 1  # the long prompt is 1 token over once rendered ...
    raw = len(tok(LONG).input_ids)
    assert raw <= limit < lengths[LONG]  # ... and within the limit as raw text: only the rendered length says skip
    assert max(lengths[SHORT_A], lengths[SHORT_B]) <= limit
    return {"root": root, "tok": tok, "limit": limit, "lengths": lengths}


def test_too_long_skip_counts_the_rendered_length_and_reports_it(files: dict) -> None:
    from inpo.data import load_prompts
    from inpo.models import build_setup

    root, limit, tok = files["root"], files["limit"], files["tok"]
    cfg = build_config({"output_dir": str(root / "run"), "task": {"name": "annotators"}, "threads": 1,
                        "data": {"prompts": str(root / "train.jsonl"), "eval_prompts": str(root / "eval.jsonl"),
                                 "max_prompt_length": limit, "too_long": "skip"},
                        "sampling": {"max_new_tokens": 8}})
    out = io.StringIO()
    setup = build_setup(cfg, Console(file=out, width=200), progress=False)
    assert [p.text for p in setup.train_prompts] == [SHORT_A, SHORT_B]  # the judge's text: as written
    assert [p.ids for p in setup.train_prompts] == [rendered_ids(tok, SHORT_A), rendered_ids(tok, SHORT_B)]
    assert [p.text for p in setup.eval_prompts] == [SHORT_B]
    report = out.getvalue()
    assert f"skipped 1 prompts longer than data.max_prompt_length={limit}" in report
    assert f"skipped 1 eval prompts longer than data.max_prompt_length={limit}" in report
    # the same file fed without the template (data.chat_template=never): the raw text fits, nothing is skipped
    raw, skipped = load_prompts(str(root / "train.jsonl"), tok, max_length=limit, chat_template="never")
    assert skipped == 0 and [p.text for p in raw] == [SHORT_A, LONG, SHORT_B]


def test_too_long_error_is_one_line_naming_file_row_and_field(files: dict, monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture) -> None:
    root, limit = files["root"], files["limit"]
    run = root / "error_run"
    src = root / "train.jsonl"
    monkeypatch.setattr(sys, "argv", ["inpo", "train", "--task", "annotators", "-o", str(run), "--set", "threads=1",
                                      "--set", f"data.prompts={src}", "--set", f"data.max_prompt_length={limit}",
                                      "--set", "data.too_long=error", "--set", "sampling.max_new_tokens=8"])
    with pytest.raises(SystemExit) as exc:
        main()
    err = capsys.readouterr().err
    assert exc.value.code == 2
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    n = files["lengths"][LONG]
    assert f"{src}: row 2: prompt has {n} tokens > data.max_prompt_length={limit}" in lines[0], lines[0]
    assert not run.exists() or not any(run.iterdir())  # refused before anything was written
