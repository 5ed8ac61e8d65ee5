"""Hostile input across every command (issue 14): each case prepares files in a fresh directory, runs
``inpo ...`` in-process through :func:`inpo.cli.main` (typer parsing, the error printer, exit codes) and asserts

* the exit code (2 for bad input, 130 for Ctrl-C),
* stderr is exactly one line ``error: ...`` containing the case's words (no traceback, no markup eaten),
* every file that existed before is byte-identical after, and no file appeared outside ``logs/``.

Runs share one finished T=2 run of the tiny built-in task (``finished``), one tiny trained judge and the
session's SFT cache; cases that need a run work on a copy. A handful of cases run ``python -m inpo`` as a real
process (Ctrl-C during start-up, a second process on a locked run).
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from tiny import TINY_TASK

from inpo.cli import main

pytestmark = pytest.mark.filterwarnings("ignore:sft.*:UserWarning")

# --------------------------------------------------------------------------------------------------
# shared inputs
# --------------------------------------------------------------------------------------------------


def tiny(out: Path, cache: Path, iterations: int = 2) -> dict:
    return {"output_dir": str(out), "iterations": iterations,
            "task": {"sft_cache": str(cache), "options": dict(TINY_TASK)},
            "sampling": {"num_samples": 3, "max_new_tokens": 6}, "train": {"epochs": 1, "batch_size": 4},
            "data": {"num_eval_prompts": 4}, "algo": {"name": "inpo", "eta": 4.0, "tau": 0.05}}


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory, cache: Path) -> Path:
    """A complete T=2 run of the tiny built-in task (in-process)."""
    from inpo.config import build_config
    from inpo.loop import run

    out = tmp_path_factory.mktemp("hostile") / "run"
    run(build_config(tiny(out, cache)), quiet=True)
    return out


@pytest.fixture(scope="module")
def judge_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny GPM judge trained for one epoch on a synthetic dataset (in-process)."""
    from inpo.judges.synthetic import transitive_rows
    from inpo.judges.train import JudgeTrainConfig, train_judge

    d = tmp_path_factory.mktemp("judge")
    rows = transitive_rows(10, seed=0)
    (d / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    train_judge(d / "data.jsonl", "gpm", "builtin-tiny", d / "judge", JudgeTrainConfig(epochs=1))
    return d


@pytest.fixture(scope="module")
def ref_dir(finished: Path, cache: Path) -> Path:
    return next(p.parent for p in cache.rglob("task.json"))


def copy_run(src: Path, dst: Path) -> Path:
    """A copy of a run whose config.yaml names its new place (as if made there: resuming it rewrites nothing)."""
    shutil.copytree(src, dst)
    text = (dst / "config.yaml").read_text()
    (dst / "config.yaml").write_text(text.replace(f"output_dir: {src}\n", f"output_dir: {dst}\n"))
    return dst


class World:
    """A fresh directory for one case, with copies of the shared run / judge made on first use."""

    def __init__(self, tmp: Path, finished: Path, judge_dir: Path, ref_dir: Path, cache: Path,
                 monkeypatch: pytest.MonkeyPatch) -> None:
        self.tmp, self._finished, self._judge, self.ref, self.cache, self.mp = (tmp, finished, judge_dir, ref_dir,
                                                                                 cache, monkeypatch)
        self.out = tmp / "out"  # a fresh run's output dir: must not exist after a failed start

    @property
    def run(self) -> Path:
        d = self.tmp / "run"
        if not d.exists():
            copy_run(self._finished, d)
        return d

    @property
    def trunc(self) -> Path:
        """A copy of the run as if killed right after iteration 1 (iteration 2 recomputes on resume)."""
        d = self.tmp / "trunc"
        if not d.exists():
            copy_run(self._finished, d)
            shutil.rmtree(d / "iter_2")
            shutil.rmtree(d / "stages" / "iter_2")
            state = json.loads((d / "state.json").read_text())
            (d / "state.json").write_text(json.dumps({**state, "completed_iterations": 1}))
            rows = (d / "metrics.jsonl").read_text().split("\n")[:2]
            (d / "metrics.jsonl").write_text("\n".join(rows) + "\n")
        return d

    @property
    def killed(self) -> Path:
        """A copy of the run as if killed in iteration 2 after its stages were written (they are loaded)."""
        d = self.tmp / "killed"
        if not d.exists():
            copy_run(self._finished, d)
            shutil.rmtree(d / "iter_2")
            self.set_state(d, completed_iterations=1)
            rows = (d / "metrics.jsonl").read_text().split("\n")[:2]
            (d / "metrics.jsonl").write_text("\n".join(rows) + "\n")
        return d

    @property
    def judge(self) -> Path:
        d = self.tmp / "judge"
        if not d.exists():
            shutil.copytree(self._judge / "judge", d)
        return d

    @property
    def pref_data(self) -> Path:
        p = self.tmp / "pairs.jsonl"
        if not p.exists():
            shutil.copy(self._judge / "data.jsonl", p)
        return p

    def cfg(self, name: str = "cfg.yaml", text: str | None = None, **sections: object) -> str:
        """A tiny config (``sections`` merged into it), or ``text`` verbatim; returns its path."""
        data = tiny(self.out, self.cache)
        for k, v in sections.items():
            data[k] = {**data[k], **v} if isinstance(v, dict) and isinstance(data.get(k), dict) else v
        p = self.tmp / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text if text is not None else yaml.safe_dump(data))
        return str(p)

    def file(self, name: str, content: str | bytes) -> str:
        top = name.split("/")[0]
        if top in ("run", "trunc", "killed", "judge") and "/" in name:
            getattr(self, top)  # the copy first, then the file written into it
        p = self.tmp / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(content if isinstance(content, bytes) else content.encode())
        return str(p)

    def user_cfg(self, prompts: str) -> str:
        """A config training the user's own model (the SFT reference) on ``prompts``."""
        return self.cfg(model={"path": str(self.ref)}, judge={"path": str(self.tmp / "no_judge")},
                        data={"prompts": prompts, "num_eval_prompts": 4}, task={"options": {}})

    def set_state(self, run: Path, **fields: object) -> None:
        state = json.loads((run / "state.json").read_text())
        (run / "state.json").write_text(json.dumps({**state, **fields}))


def deep_json(n: int) -> str:
    return "[" * n + "]" * n


ALIAS_BOMB = "a: &a [x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a]\nc: [*b, *b, *b, *b, *b]\n"
BIG = "9" * 5000
GOOD_PROMPT = {"prompt": "topic1 w3 w4 :"}


def jsonl(*rows: object) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)


# --------------------------------------------------------------------------------------------------
# the cases: name -> (builder(world) -> argv, words of the one-line message[, exit code])
# --------------------------------------------------------------------------------------------------

Case = tuple[Callable[[World], list[str]], list[str]] | tuple[Callable[[World], list[str]], list[str], int]

CASES: dict[str, Case] = {
    # ---- inpo train: the config file (YAML at the boundary) ----
    "yaml_alias": (lambda w: ["train", w.cfg(text="seed: &s 1\niterations: *s\n")], ["line 2", "aliases (*s)"]),
    "yaml_alias_bomb": (lambda w: ["train", w.cfg(text=ALIAS_BOMB)], ["aliases (*a)", "not allowed"]),
    "yaml_duplicate_key": (lambda w: ["train", w.cfg(text="iterations: 1\nseed: 2\niterations: 3\n")],
                           ["line 3", "duplicate key 'iterations'"]),
    "yaml_duplicate_nested_key": (lambda w: ["train", w.cfg(text="algo:\n  eta: 1\n  eta: 2\n")],
                                  ["line 3", "duplicate key 'eta'"]),
    "yaml_nested_deep": (lambda w: ["train", w.cfg(text="task:\n  options:\n    x: " + deep_json(2000) + "\n")],
                         ["nested more than 64 levels"]),
    "yaml_not_utf8": (lambda w: ["train", w.file("c.yaml", b"seed: 1\noutput_dir: caf\xe9\n")],
                      ["c.yaml", "line 2", "not UTF-8"]),
    "yaml_utf16": (lambda w: ["train", w.file("c.yaml", "seed: 1\n".encode("utf-16"))], ["c.yaml", "not UTF-8"]),
    "yaml_is_a_directory": (lambda w: ["train", str(w.tmp)], ["config file not found"]),
    "yaml_too_large": (lambda w: ["train", w.file("big.yaml", "# " + "x" * (1 << 20) + "\n")],
                       ["big.yaml", "bytes", "larger than"]),
    "yaml_tab_indent": (lambda w: ["train", w.cfg(text="algo:\n\teta: 1\n")], ["invalid YAML"]),
    "yaml_top_level_string": (lambda w: ["train", w.cfg(text="just a string\n")], ["expected a mapping"]),
    "yaml_huge_int_literal": (lambda w: ["train", w.cfg(text=f"seed: {BIG}\n")], ["invalid YAML", "digits"]),
    "yaml_python_tag": (lambda w: ["train", w.cfg(text="seed: !!python/name:os.system\n")], ["python/name"]),
    "seed_2_pow_64": (lambda w: ["train", w.cfg(seed=2**64)], ["field 'seed'", "9223372036854775807"]),
    "seed_negative": (lambda w: ["train", w.cfg(seed=-1)], ["field 'seed'", "got -1"]),
    "task_seed_2_pow_63": (lambda w: ["train", w.cfg(task={"seed": 2**63})], ["field 'task.seed'"]),
    "temperature_1e-45": (lambda w: ["train", w.cfg(sampling={"temperature": 1e-45})],
                          ["field 'sampling.temperature'", "[0.001, 1000]"]),
    "temperature_huge": (lambda w: ["train", w.cfg(sampling={"temperature": 1e9})], ["sampling.temperature"]),
    "iterations_absurd": (lambda w: ["train", w.cfg(iterations=10**9)], ["field 'iterations'", "10000"]),
    "n_train_prompts_1e8": (lambda w: ["train", w.cfg(task={"options": {**TINY_TASK, "n_train_prompts": 10**8}})],
                            ["task.options.n_train_prompts", "100000"]),
    "task_option_inf": (lambda w: ["train", w.cfg(text="task:\n  options: {nash_ratio: .inf}\n")],
                        ["task.options.nash_ratio"]),
    "task_option_nan": (lambda w: ["train", w.cfg(text="task:\n  options: {max_margin: .nan}\n")],
                        ["task.options.max_margin"]),
    "task_option_pair_huge": (lambda w: ["train", w.cfg(task={"options": {"prompt_words": [1, 10**9]}})],
                              ["task.options.prompt_words"]),
    "num_prompts_absurd": (lambda w: ["train", w.cfg(data={"num_prompts": 10**12})], ["field 'data.num_prompts'"]),
    "num_samples_absurd": (lambda w: ["train", w.cfg(sampling={"num_samples": 10**6})],
                           ["field 'sampling.num_samples'"]),
    "max_new_tokens_absurd": (lambda w: ["train", w.cfg(sampling={"max_new_tokens": 10**9})],
                              ["sampling.max_new_tokens"]),
    "epochs_absurd": (lambda w: ["train", w.cfg(train={"epochs": 10**9})], ["field 'train.epochs'"]),
    "lr_absurd": (lambda w: ["train", w.cfg(train={"lr": 1e300})], ["field 'train.lr'"]),
    "threads_absurd": (lambda w: ["train", w.cfg(threads=10**6)], ["field 'threads'"]),
    "peft_rank_absurd": (lambda w: ["train", w.cfg(peft={"r": 10**9})], ["field 'peft.r'"]),
    "nul_in_output_dir": (lambda w: ["train", w.cfg(text='output_dir: "runs/a\\0b"\n')],
                          ["field 'output_dir'", "NUL byte"]),
    "nul_in_prompts_path": (lambda w: ["train", w.cfg(text='data: {prompts: "p\\0.jsonl"}\n')],
                            ["field 'data.prompts'", "NUL"]),
    "nul_in_key": (lambda w: ["train", w.cfg(text='"a\\0b": 1\n')], ["NUL"]),
    "set_alias": (lambda w: ["train", w.cfg(), "--set", "seed=*a"], ["override 'seed=*a'", "aliases"]),
    "set_deep_value": (lambda w: ["train", w.cfg(), "--set", "task.options.x=" + deep_json(2000)],
                       ["override", "nested more than 64"]),
    "set_deep_key": (lambda w: ["train", w.cfg(), "--set", ".".join(["a"] * 5000) + "=1"], ["more than 64 levels"]),
    "set_huge_int": (lambda w: ["train", w.cfg(), "--set", f"seed={BIG}"], ["override", "digits"]),
    "set_nul": (lambda w: ["train", w.cfg(), "--set", "output_dir=a\x00b"], ["NUL byte"]),
    "set_empty_key": (lambda w: ["train", w.cfg(), "--set", "=3"], ["Extra inputs"]),
    "flag_seed_negative": (lambda w: ["train", w.cfg(), "--seed", "-1"], ["field 'seed'"]),
    "flag_iterations_zero": (lambda w: ["train", w.cfg(), "-T", "0"], ["field 'iterations'"]),
    "flag_seed_not_int": (lambda w: ["train", w.cfg(), "--seed", "1.5"], ["inpo train", "--seed"]),
    "flag_unknown": (lambda w: ["train", w.cfg(), "--bogus"], ["inpo train", "No such option", "--bogus"]),
    "command_unknown": (lambda w: ["trian"], ["inpo", "No such command 'trian'"]),
    "markup_in_path": (lambda w: ["train", str(w.tmp / "my[run]" / "c[red].yaml")],
                       ["my[run]/c[red].yaml", "config file not found"]),
    "control_chars_in_path": (lambda w: ["train", str(w.tmp / "a\x1b[31mb\nc.yaml")],
                              ["a\\x1b[31mb\\nc.yaml", "not found"]),
    # ---- inpo train: the run directory (state.json, metrics.jsonl, checkpoints) ----
    "state_negative_iterations": (lambda w: (w.set_state(w.run, completed_iterations=-1),
                                             ["train", "--resume", str(w.run), "-T", "3"])[1],
                                  ["state.json", "completed_iterations", "greater than or equal to 0"]),
    "state_iterations_string": (lambda w: (w.set_state(w.run, completed_iterations="two"),
                                           ["train", "--resume", str(w.run)])[1], ["state.json", "completed_iter"]),
    "state_iterations_null": (lambda w: (w.set_state(w.run, completed_iterations=None),
                                         ["train", "--resume", str(w.run)])[1], ["state.json", "completed_iter"]),
    "state_iterations_bool": (lambda w: (w.set_state(w.run, completed_iterations=True),
                                         ["train", "--resume", str(w.run)])[1], ["state.json", "completed_iter"]),
    "state_iterations_float": (lambda w: (w.set_state(w.run, completed_iterations=2.0),
                                          ["train", "--resume", str(w.run)])[1], ["state.json", "completed_iter"]),
    "state_iterations_too_many": (lambda w: (w.set_state(w.run, completed_iterations=5),
                                             ["train", "--resume", str(w.run), "-T", "6"])[1],
                                  ["metrics.jsonl", "records 5 completed"]),
    "state_bare_number": (lambda w: (w.file("run/state.json", "42"), ["train", "--resume", str(w.run)])[1],
                          ["state.json", "expected a JSON object, got int"]),
    "state_null": (lambda w: (w.file("run/state.json", "null"), ["train", "--resume", str(w.run)])[1],
                   ["state.json", "got NoneType"]),
    "state_empty": (lambda w: (w.file("run/state.json", ""), ["train", "--resume", str(w.run)])[1],
                    ["state.json", "corrupt state file"]),
    "state_not_utf8": (lambda w: (w.file("run/state.json", b'{"a": "\xff"}'), ["train", "--resume", str(w.run)])[1],
                       ["state.json", "not UTF-8"]),
    "state_deep": (lambda w: (w.file("run/state.json", deep_json(50_000)), ["train", "--resume", str(w.run)])[1],
                   ["state.json", "corrupt state file"]),
    "state_huge_int": (lambda w: (w.file("run/state.json", (w.run / "state.json").read_text().replace(
        '"completed_iterations": 2', f'"completed_iterations": {BIG}')), ["train", "--resume", str(w.run)])[1],
        ["state.json", "corrupt"]),
    "state_hash_wrong_type": (lambda w: (w.set_state(w.run, config_hash=12), ["train", "--resume", str(w.run)])[1],
                              ["state.json", "config_hash"]),
    "state_versions_wrong_type": (lambda w: (w.set_state(w.run, versions=[1]), ["train", "--resume", str(w.run)])[1],
                                  ["state.json", "versions"]),
    "state_is_a_directory": (lambda w: ((w.run / "state.json").unlink(), (w.run / "state.json").mkdir(),
                                        ["train", "--resume", str(w.run)])[2], ["state.json", "cannot read"]),
    "metrics_deleted_finished_run": (lambda w: ((w.run / "metrics.jsonl").unlink(),
                                                ["train", "--resume", str(w.run), "-T", "3"])[1],
                                     ["metrics.jsonl", "missing", "records 2 completed"]),
    "metrics_replaced_by_pairs": (lambda w: (w.file("run/metrics.jsonl", jsonl(
        *[{"prompt": "p", "chosen": "a", "rejected": "b", "iteration": i} for i in range(3)])),
        ["train", "--resume", str(w.run), "-T", "3"])[1], ["metrics.jsonl", "line 1", "not a metrics row"]),
    "metrics_out_of_order": (lambda w: (w.file("run/metrics.jsonl", "\n".join(reversed(
        (w.run / "metrics.jsonl").read_text().strip().split("\n"))) + "\n"),
        ["train", "--resume", str(w.run), "-T", "3"])[1], ["metrics.jsonl", "row 1 is iteration 2"]),
    "metrics_duplicate_row": (lambda w: (w.file("run/metrics.jsonl", (w.run / "metrics.jsonl").read_text() + (
        w.run / "metrics.jsonl").read_text().split("\n")[2] + "\n"), ["train", "--resume", str(w.run), "-T", "3"])[1],
        ["metrics.jsonl", "row 4 is iteration 2, expected 3"]),
    "metrics_missing_row": (lambda w: (w.file("run/metrics.jsonl", "\n".join(
        (w.run / "metrics.jsonl").read_text().split("\n")[::2]) + "\n"), ["train", "--resume", str(w.run)])[1],
        ["metrics.jsonl", "row 2 is iteration 2, expected 1"]),
    "metrics_not_utf8": (lambda w: (w.file("run/metrics.jsonl", b'{"iteration": 0, "x": "\xfe"}\n'),
                                    ["train", "--resume", str(w.run)])[1], ["metrics.jsonl", "not UTF-8"]),
    "metrics_row_is_a_list": (lambda w: (w.file("run/metrics.jsonl", "[0, 1]\n"), ["train", "--resume", str(w.run)])[1],
                              ["metrics.jsonl", "line 1", "expected a JSON object"]),
    "metrics_negative_iteration": (lambda w: (w.file("run/metrics.jsonl", '{"iteration": -1}\n'),
                                              ["train", "--resume", str(w.run)])[1],
                                   ["metrics.jsonl", "line 1", "iteration"]),
    "metrics_deep_row": (lambda w: (w.file("run/metrics.jsonl", deep_json(50_000) + "\n"),
                                    ["train", "--resume", str(w.run)])[1], ["metrics.jsonl", "damaged metrics row"]),
    "metrics_truncated_line": (lambda w: (w.file("run/metrics.jsonl", (w.run / "metrics.jsonl").read_text()
                                                 + '{"iteration": 3, "lo'), ["train", "--resume", str(w.run)])[1],
                               ["metrics.jsonl", "line 4", "damaged"]),
    "checkpoint_deleted": (lambda w: (shutil.rmtree(w.run / "iter_1"), ["train", "--resume", str(w.run)])[1],
                           ["iter_1", "checkpoint missing"]),
    "checkpoint_from_the_future": (lambda w: ((w.run / "iter_5").mkdir(), ["train", "--resume", str(w.run)])[1],
                                   ["iter_5", "records 2 completed"]),
    "resume_shorter": (lambda w: ["train", "--resume", str(w.run), "-T", "1"], ["completed 2 iterations",
                                                                               "-T 2 or more"]),
    "resume_config_alias": (lambda w: (w.file("run/config.yaml", "seed: &a 0\ntask: {seed: *a}\n"),
                                       ["train", "--resume", str(w.run)])[1], ["config.yaml", "aliases"]),
    "resume_config_not_utf8": (lambda w: (w.file("run/config.yaml", b"seed: \xff\n"),
                                          ["train", "--resume", str(w.run)])[1], ["config.yaml", "not UTF-8"]),
    "resume_nul_path": (lambda w: ["train", "--resume", str(w.tmp) + "/r\x00n"], ["NUL byte"]),
    "resume_and_config": (lambda w: ["train", w.cfg(), "--resume", str(w.run)], ["not both"]),
    "resume_peft_added": (lambda w: ["train", "--resume", str(w.run), "-T", "3", "-q", "--allow-config-change",
                                     "--set", "peft.r=4"], ["iter_2", "full-model checkpoint", "peft"]),
    "resume_locked": (lambda w: (hold_lock(w), ["train", "--resume", str(w.run), "-T", "3"])[1],
                      ["another inpo process"]),
    "stage_judgements_wrong_shape": (lambda w: (torch.save(torch.zeros(3), stage(w.killed, "s0_judgements.pt")),
                                                ["train", "--resume", str(w.killed), "-q"])[1],
                                     ["s0_judgements.pt", "expected a float tensor [8, K, K]", "got (3,)"]),
    "stage_samples_wrong_type": (lambda w: (torch.save(torch.zeros(24), stage(w.killed, "s0_samples.pt")),
                                            ["train", "--resume", str(w.killed), "-q"])[1],
                                 ["s0_samples.pt", "token lists"]),
    "stage_garbage_bytes": (lambda w: (stage(w.killed, "s0_samples.pt").write_bytes(b"\x00garbage"),
                                       ["train", "--resume", str(w.killed), "-q"])[1],
                            ["s0_samples.pt", "not a readable stage artifact"]),
    # ---- inpo train: extras and the user's prompt files ----
    "peft_not_installed": (lambda w: (no_module(w, "peft"), ["train", w.cfg(peft={"r": 4})])[1],
                           ["peft", "pip install 'inpo[peft]'"]),
    "vllm_not_installed_markup": (lambda w: (no_module(w, "vllm"), w.mp.setenv("INPO_VLLM_ENV", str(w.tmp / "no")),
                                             ["train", w.cfg(sampling={"backend": "vllm"})])[2],
                                  ["pip install 'inpo[vllm]'", "python -m inpo.vllm_env"]),
    "wandb_not_installed": (lambda w: (no_module(w, "wandb"), ["train", w.cfg(log_with=["wandb"])])[1],
                            ["pip install wandb"]),
    "prompts_mixed_formats": (lambda w: ["train", "-q", w.user_cfg(w.file("p.jsonl", jsonl(
        GOOD_PROMPT, {"messages": [{"role": "user", "content": "hi"}]})))],
        ["p.jsonl: row 2", "language-modeling", "prompt-only", "one format"]),
    "prompts_mixed_styles": (lambda w: ["train", "-q", w.user_cfg(w.file("p.jsonl", jsonl(
        GOOD_PROMPT, {"prompt": "a", "chosen": "b", "rejected": "c"})))], ["row 2", "preference"]),
    "prompts_deep_json": (lambda w: ["train", "-q", w.user_cfg(w.file("p.jsonl", f'{{"prompt": {deep_json(9999)}}}'))],
                          ["p.jsonl: line 1", "nested too deeply"]),
    "prompts_huge_number": (lambda w: ["train", "-q", w.user_cfg(w.file("p.jsonl", f'{{"prompt": {BIG}}}\n'))],
                            ["p.jsonl: line 1", "digits"]),
    "prompts_json_deep": (lambda w: ["train", "-q", w.user_cfg(w.file("p.json", deep_json(50_000)))],
                          ["p.json", "nested too deeply"]),
    "prompts_not_utf8": (lambda w: ["train", "-q", w.user_cfg(w.file("p.jsonl", b'{"prompt": 1}\n{"prompt": "\xff"}'))],
                         ["p.jsonl", "line 2", "not UTF-8"]),
    # ---- inpo data ----
    "export_over_run_metrics": (lambda w: ["data", "export", str(w.run), str(w.run / "metrics.jsonl")],
                                ["metrics.jsonl", "inside the run directory"]),
    "export_into_checkpoint": (lambda w: ["data", "export", str(w.run), str(w.run / "iter_1" / "pairs.jsonl")],
                               ["inside the run directory"]),
    "export_onto_run_dir": (lambda w: ["data", "export", str(w.run), str(w.run)], ["inside the run directory"]),
    "export_into_other_run": (lambda w: ["data", "export", str(w.run), str(w.trunc / "x.jsonl")],
                              ["trunc", "inside the run directory"]),
    "export_not_a_run": (lambda w: ["data", "export", str(w.tmp), str(w.tmp / "x.jsonl")], ["not a run directory"]),
    "export_state_tampered": (lambda w: (w.set_state(w.run, completed_iterations=-3),
                                         ["data", "export", str(w.run), str(w.tmp / "x.jsonl")])[1],
                              ["state.json", "completed_iterations"]),
    "export_stage_wrong_shape": (lambda w: (torch.save(torch.zeros(2, 2), w.run / "stages/iter_1/s0_judgements.pt"),
                                            ["data", "export", str(w.run), str(w.tmp / "x.jsonl")])[1],
                                 ["s0_judgements.pt", "float tensor"]),
    "check_not_utf8": (lambda w: ["data", "check", w.file("d.jsonl", b'{"prompt": "\xe9"}\n')], ["line 1", "UTF-8"]),
    "check_deep_json": (lambda w: ["data", "check", w.file("d.jsonl", '{"prompt": ' + deep_json(50_000) + "}\n")],
                        ["d.jsonl: line 1", "nested too deeply"]),
    "check_huge_number": (lambda w: ["data", "check", w.file("d.jsonl", f'{{"prompt": {BIG}}}\n')], ["digits"]),
    "check_missing": (lambda w: ["data", "check", str(w.tmp / "nope.jsonl")], ["nope.jsonl", "file not found"]),
    "check_mixed": (lambda w: ["data", "check", w.file("d.jsonl", jsonl(GOOD_PROMPT, {"messages": [
        {"role": "user", "content": "x"}]}))], ["line 2", "language-modeling row in a prompt-only file"]),
    "check_extension": (lambda w: ["data", "check", w.file("d.txt", "hello\n")], ["unsupported file type"]),
    "check_row_list": (lambda w: ["data", "check", w.file("d.jsonl", "[1]\n")], ["line 1", "expected a JSON object"]),
    "check_no_args": (lambda w: ["data", "check"], ["inpo data check", "Missing argument"]),
    # ---- inpo game ----
    "game_seed_negative": (lambda w: ["game", "--seed", "-1"], ["--seed", "[0, 9223372036854775807]", "-1"]),
    "game_seed_2_pow_64": (lambda w: ["game", "--seed", str(2**64)], ["--seed"]),
    "game_tau_nan": (lambda w: ["game", "--tau", "nan"], ["--tau", "finite", "nan"]),
    "game_eta_nan": (lambda w: ["game", "--eta", "nan"], ["--eta", "finite"]),
    "game_beta_nan": (lambda w: ["game", "--beta", "nan"], ["--beta", "finite"]),
    "game_eta_inf": (lambda w: ["game", "--eta", "inf"], ["--eta", "finite"]),
    "game_lr_nan": (lambda w: ["game", "--lr", "nan", "--sampled"], ["--lr", "finite"]),
    "game_actions_huge": (lambda w: ["game", "--actions", "200000"], ["--actions", "[2, 4096]"]),
    "game_contexts_huge": (lambda w: ["game", "--contexts", "10000000", "--actions", "3"], ["--contexts"]),
    "game_entries_huge": (lambda w: ["game", "--contexts", "100000", "--actions", "100"],
                          ["--contexts x --actions^2"]),
    "game_iterations_huge": (lambda w: ["game", "--iterations", str(10**12)], ["--iterations"]),
    "game_actions_not_int": (lambda w: ["game", "--actions", "abc"], ["inpo game", "--actions"]),
    "game_pairs_zero": (lambda w: ["game", "--pairs", "0"], ["inpo game", "--pairs"]),
    "game_matrix_complex": (lambda w: ["game", "--matrix", npy(w, np.full((3, 3), 0.5 + 1j))],
                            ["m.npy", "complex array"]),
    "game_matrix_strings": (lambda w: ["game", "--matrix", npy(w, np.array([["a", "b"], ["c", "d"]]))],
                            ["m.npy", "string array"]),
    "game_matrix_object": (lambda w: ["game", "--matrix", npy(w, np.array([[None, 1], [1, None]], dtype=object))],
                           ["m.npy", "not a readable .npy"]),
    "game_matrix_garbage": (lambda w: ["game", "--matrix", w.file("m.npy", b"\x93NUMPY garbage")],
                            ["m.npy", "not a readable .npy"]),
    "game_matrix_shape": (lambda w: ["game", "--matrix", npy(w, np.full((2, 3, 4), 0.5))], ["m.npy", "shape"]),
    "game_matrix_nan": (lambda w: ["game", "--matrix", npy(w, np.full((3, 3), np.nan))], ["m.npy", "NaN"]),
    "game_matrix_npz": (lambda w: ["game", "--matrix", npz(w)], ["m.npy", "not a .npy array"]),
    "game_plot_in_run": (lambda w: ["game", "--plot", str(w.run / "gap.png")], ["--plot", "inside the run directory"]),
    "game_algo_unknown": (lambda w: ["game", "--algo", "inpo,nope"], ["--algo", "nope"]),
    # ---- inpo judge ----
    "judge_train_lr_nan": (lambda w: ["judge", "train", str(w.pref_data), "--lr", "nan"], ["--lr", "finite"]),
    "judge_train_max_length_zero": (lambda w: ["judge", "train", str(w.pref_data), "--max-length", "0"],
                                    ["--max-length"]),
    "judge_train_epochs_zero": (lambda w: ["judge", "train", str(w.pref_data), "--epochs", "0"], ["--epochs"]),
    "judge_train_temperature_zero": (lambda w: ["judge", "train", str(w.pref_data), "--temperature", "0"],
                                     ["--temperature"]),
    "judge_train_held_out_nan": (lambda w: ["judge", "train", str(w.pref_data), "--held-out", "nan"], ["--held-out"]),
    "judge_train_seed_negative": (lambda w: ["judge", "train", str(w.pref_data), "--seed", "-1"], ["--seed"]),
    "judge_train_out_in_run": (lambda w: ["judge", "train", str(w.pref_data), "--out", str(w.run / "judge")],
                               ["--out", "inside the run directory"]),
    "judge_train_data_not_utf8": (lambda w: ["judge", "train", w.file("d.jsonl", b'{"prompt": "\xff"}\n'),
                                             "--out", str(w.tmp / "j")], ["d.jsonl", "not UTF-8"]),
    "judge_train_data_deep": (lambda w: ["judge", "train", w.file("d.json", deep_json(50_000)), "--out",
                                         str(w.tmp / "j")], ["d.json", "nested too deeply"]),
    "judge_train_csv_not_utf8": (lambda w: ["judge", "train", w.file("d.csv", b"prompt,chosen\n\xff,b\n"), "--out",
                                            str(w.tmp / "j")], ["d.csv", "not UTF-8"]),
    "judge_synth_prompts_negative": (lambda w: ["judge", "synth", "cyclic", str(w.tmp / "s.jsonl"), "--prompts", "-5"],
                                     ["--prompts", "-5"]),
    "judge_synth_prompts_huge": (lambda w: ["judge", "synth", "cyclic", str(w.tmp / "s.jsonl"), "--prompts",
                                            str(10**9)], ["--prompts"]),
    "judge_synth_out_in_run": (lambda w: ["judge", "synth", "cyclic", str(w.run / "metrics.jsonl")],
                               ["inside the run directory"]),
    "judge_synth_unknown": (lambda w: ["judge", "synth", "nope", str(w.tmp / "s.jsonl")], ["unknown synthetic"]),
    "judge_eval_config_not_utf8": (lambda w: (w.file("judge/judge_config.json", b'{"kind": "\xff"}'),
                                              ["judge", "eval", str(w.judge), str(w.pref_data)])[1],
                                   ["judge_config.json", "not UTF-8"]),
    "judge_eval_temperature_zero": (lambda w: (edit_json(w.judge / "judge_config.json", temperature=0),
                                               ["judge", "eval", str(w.judge), str(w.pref_data)])[1],
                                    ["judge_config.json", "temperature", "got 0"]),
    "judge_eval_temperature_nan": (lambda w: (edit_json(w.judge / "judge_config.json", temperature=float("nan")),
                                              ["judge", "eval", str(w.judge), str(w.pref_data)])[1],
                                   ["judge_config.json", "temperature"]),
    "judge_eval_kind_unknown": (lambda w: (edit_json(w.judge / "judge_config.json", kind="oracle"),
                                           ["judge", "eval", str(w.judge), str(w.pref_data)])[1], ["field 'kind'"]),
    "judge_eval_head_truncated": (lambda w: ((w.judge / "judge_head.safetensors").write_bytes(
        (w.judge / "judge_head.safetensors").read_bytes()[:100]), ["judge", "eval", str(w.judge), str(w.pref_data)])[1],
        ["judge_head.safetensors", "unreadable"]),
    "judge_eval_head_wrong_shape": (lambda w: (wrong_head(w.judge), ["judge", "eval", str(w.judge),
                                                                      str(w.pref_data)])[1],
                                    ["judge_head.safetensors", "does not fit"]),
    "judge_eval_dir_missing": (lambda w: ["judge", "eval", str(w.tmp / "nope"), str(w.pref_data)], ["not found"]),
    "judge_eval_config_deep": (lambda w: (w.file("judge/judge_config.json", deep_json(50_000)),
                                          ["judge", "eval", str(w.judge), str(w.pref_data)])[1],
                               ["judge_config.json", "nested too deeply"]),
    "judge_lm_pair_out_in_run": (lambda w: ["judge", "lm-pair", str(w.ref), str(w.run / "j")],
                                 ["OUT", "inside the run directory"]),
    "judge_lm_pair_max_length_zero": (lambda w: ["judge", "lm-pair", str(w.ref), str(w.tmp / "j"), "--max-length",
                                                 "0"], ["--max-length"]),
    "judge_reward_model_out_in_run": (lambda w: ["judge", "reward-model", str(w.ref), str(w.run / "stages" / "j")],
                                      ["inside the run directory"]),
    "judge_api_timeout_nan": (lambda w: ["judge", "api", str(w.tmp / "j"), "--base-url", "http://x", "--model", "m",
                                         "--timeout", "nan"], ["--timeout", "finite"]),
    "judge_api_concurrency_zero": (lambda w: ["judge", "api", str(w.tmp / "j"), "--base-url", "http://x", "--model",
                                              "m", "--concurrency", "0"], ["--concurrency"]),
    "judge_api_out_in_run": (lambda w: ["judge", "api", str(w.run), "--base-url", "http://x", "--model", "m"],
                             ["inside the run directory"]),
    "model_import_into_run": (lambda w: ["model", "import", w.file("m.gguf", b"GGUF"), str(w.run / "m")],
                              ["OUT_DIR", "inside the run directory"]),
    # ---- inpo eval ----
    "eval_not_a_run": (lambda w: ["eval", str(w.tmp)], ["not a run directory"]),
    "eval_state_tampered": (lambda w: (w.set_state(w.run, completed_iterations="x"), ["eval", str(w.run)])[1],
                            ["state.json", "completed_iterations"]),
    "eval_iteration_missing": (lambda w: ["eval", str(w.run), "--iteration", "99"], ["no checkpoint iter_99"]),
    "eval_iteration_negative": (lambda w: ["eval", str(w.run), "--iteration", "-1"], ["--iteration '-1'"]),
    "eval_config_alias": (lambda w: (w.file("run/config.yaml", "seed: &a 0\ntask: {seed: *a}\n"),
                                     ["eval", str(w.run)])[1], ["config.yaml", "aliases"]),
    "eval_config_duplicate": (lambda w: (w.file("run/config.yaml", (w.run / "config.yaml").read_text()
                                                + "seed: 3\n"), ["eval", str(w.run)])[1], ["duplicate key 'seed'"]),
    "eval_judge_missing": (lambda w: ["eval", str(w.run), "--judge", str(w.tmp / "nojudge")], ["not a judge"]),
}


def stage(run: Path, name: str) -> Path:
    """A stage artifact of iteration 2 of ``run`` (loaded when the killed copy resumes)."""
    return run / "stages" / "iter_2" / name


def npy(w: World, arr: np.ndarray) -> str:
    np.save(w.tmp / "m.npy", arr, allow_pickle=arr.dtype == object)
    return str(w.tmp / "m.npy")


def npz(w: World) -> str:
    with open(w.tmp / "m.npy", "wb") as f:
        np.savez(f, a=np.full((3, 3), 0.5))
    return str(w.tmp / "m.npy")


def edit_json(path: Path, **fields: object) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **fields}))


def wrong_head(judge: Path) -> None:
    from safetensors.torch import load_file, save_file

    state = load_file(str(judge / "judge_head.safetensors"))
    save_file({k: torch.zeros(*(s + 1 for s in v.shape)) for k, v in state.items()},
              str(judge / "judge_head.safetensors"))


def no_module(w: World, name: str) -> None:
    """``name`` is not installed, as far as ``importlib.util.find_spec`` can tell."""
    import importlib.util

    real = importlib.util.find_spec
    w.mp.setattr(importlib.util, "find_spec", lambda n, *a: None if n == name else real(n, *a))


_held: list[int] = []


def hold_lock(w: World) -> None:
    """Another process holds the run's lock (an flock on the directory; a second open file description in this
    process conflicts like another process would)."""
    fd = os.open(w.run, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    _held.append(fd)


@pytest.fixture(autouse=True)
def _release_locks():
    yield
    while _held:
        os.close(_held.pop())


# --------------------------------------------------------------------------------------------------
# the runner
# --------------------------------------------------------------------------------------------------


def digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def run_cli(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    captured = capsys.readouterr()
    return int(exc.value.code or 0), captured.out, captured.err


def assert_one_line(code: int, err: str, expected_code: int, needles: list[str]) -> str:
    assert code == expected_code, (code, err)
    assert "Traceback" not in err, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


@pytest.fixture
def world(tmp_path: Path, finished: Path, judge_dir: Path, ref_dir: Path, cache: Path,
          monkeypatch: pytest.MonkeyPatch) -> World:
    monkeypatch.chdir(tmp_path)  # a default output (runs/...) would land here
    return World(tmp_path, finished, judge_dir, ref_dir, cache, monkeypatch)


def test_at_least_100_cases() -> None:
    assert len(CASES) >= 100, len(CASES)


@pytest.mark.parametrize("name", list(CASES))
def test_hostile(name: str, world: World, capsys: pytest.CaptureFixture) -> None:
    build, needles, *code = CASES[name]
    argv = build(world)
    before = digest(world.tmp)
    exit_code, _, err = run_cli(argv, capsys)
    assert_one_line(exit_code, err, code[0] if code else 2, needles)
    after = digest(world.tmp)
    changed = sorted(k for k in before if after.get(k) != before[k])
    assert not changed, f"files changed or lost: {changed}"
    new = sorted(k for k in set(after) - set(before) if not k.split("/")[-2:-1] == ["logs"] and "/logs/" not in k)
    assert not new, f"files left behind: {new}"
    assert not world.out.exists(), "a failed start created the output directory"


# --------------------------------------------------------------------------------------------------
# failures during a run: Ctrl-C, full disk (torch.save, tensorboard's writer thread)
# --------------------------------------------------------------------------------------------------


def resume_failing(world: World, capsys: pytest.CaptureFixture, needles: list[str], code: int = 2) -> None:
    """Resume the truncated copy with a failure injected by the caller: one line; iter_1, metrics.jsonl,
    state.json and config.yaml byte-identical; no temp file left behind."""
    run = world.trunc
    before = digest(run)
    exit_code, _, err = run_cli(["train", "--resume", str(run), "-q"], capsys)
    assert_one_line(exit_code, err, code, needles)
    after = digest(run)
    assert {k: after.get(k) for k in before} == before
    assert not list(run.rglob("*.tmp")) and not (run / "iter_2").exists()


def test_ctrl_c_inside_a_command(world: World, capsys) -> None:
    import inpo.models

    def interrupted(*a, **kw):
        raise KeyboardInterrupt

    world.mp.setattr(inpo.models, "build_setup", interrupted)
    world.mp.setattr("inpo.loop.build_setup", interrupted)
    resume_failing(world, capsys, ["interrupted (Ctrl-C)"], code=130)


def test_disk_full_inside_torch_save(world: World, capsys) -> None:
    """torch's C++ writer reports a full disk as a RuntimeError ('basic_ios::clear'), not an OSError."""
    real = torch.save

    def save(obj, f, *a, **kw):
        if "samples" in str(f):
            Path(f).write_bytes(b"partial")
            raise RuntimeError("basic_ios::clear: iostream error")
        return real(obj, f, *a, **kw)

    world.mp.setattr(torch, "save", save)
    resume_failing(world, capsys, ["s0_samples.pt", "cannot write stage artifact", "basic_ios::clear"])


def test_disk_full_in_tensorboards_writer_thread(world: World, capsys) -> None:
    """The event file is written by a background thread; its error surfaces as one line, no thread traceback."""
    from tensorboard.summary.writer import record_writer

    def full(self, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    world.mp.setattr(record_writer.RecordWriter, "write", full)
    run = world.trunc  # log_with: auto = tensorboard (installed with the test extra)
    assert "log_with: auto" in (run / "config.yaml").read_text()
    before = digest(run)
    exit_code, _, err = run_cli(["train", "--resume", str(run), "-q"], capsys)
    assert_one_line(exit_code, err, 2, ["No space left on device"])
    after = digest(run)
    assert {k: after.get(k) for k in before} == before


def test_leftover_temp_files_are_cleaned_on_the_next_start(world: World, capsys) -> None:
    run = world.trunc
    (run / ".iter_2.tmp").mkdir()
    (run / ".iter_2.tmp" / "model.safetensors").write_bytes(b"half")
    (run / ".metrics.jsonl.tmp").write_text("half")
    (run / "stages" / "iter_1" / ".s0_samples.pt.tmp").write_bytes(b"half")
    (run / "notes.tmp").write_text("mine")  # not an inpo temp name: kept
    exit_code, _, err = run_cli(["train", "--resume", str(run), "-q"], capsys)
    assert exit_code == 0, err
    assert not (run / ".iter_2.tmp").exists() and not (run / ".metrics.jsonl.tmp").exists()
    assert not (run / "stages" / "iter_1" / ".s0_samples.pt.tmp").exists()
    assert (run / "notes.tmp").read_text() == "mine"
    assert [json.loads(r)["iteration"] for r in (run / "metrics.jsonl").read_text().split("\n") if r] == [0, 1, 2]


def test_a_config_change_does_not_reuse_the_cached_baseline(world: World, capsys) -> None:
    """--allow-config-change --set sampling.max_new_tokens=3: the baseline's cached eval samples (made with 6 new
    tokens) are made afresh under the new config, not reused (a stale cache was reused and the judge blamed)."""
    run = world.run
    cache_file = run / "stages" / "iter_0" / "eval_ref_samples.pt"
    assert max(len(r) for r in torch.load(cache_file, weights_only=True)) > 3
    exit_code, _, err = run_cli(["train", "--resume", str(run), "-T", "3", "-q", "--allow-config-change",
                                 "--set", "sampling.max_new_tokens=3"], capsys)
    assert exit_code == 0, err
    assert max(len(r) for r in torch.load(cache_file, weights_only=True)) <= 3
    rows = [json.loads(r) for r in (run / "metrics.jsonl").read_text().split("\n") if r]
    assert [r["iteration"] for r in rows] == [0, 1, 2, 3]


def test_a_refused_config_change_writes_nothing(world: World, capsys) -> None:
    """The checkpoint is loaded under the new config before config.yaml / state.json are written, so a failed
    change leaves the run resumable as it was."""
    run = world.run
    before = digest(run)
    code, _, err = run_cli(["train", "--resume", str(run), "-T", "3", "-q", "--allow-config-change", "--set",
                            "peft.r=4"], capsys)
    assert_one_line(code, err, 2, ["full-model checkpoint"])
    assert digest(run) == before
    code, _, err = run_cli(["train", "--resume", str(run), "-T", "2", "-q"], capsys)
    assert code == 0, err


def test_a_damaged_run_can_be_replaced_with_overwrite(world: World) -> None:
    """The damaged-state message says "use --overwrite": the check lets --overwrite replace the run."""
    from inpo.config import load_config
    from inpo.errors import InpoError
    from inpo.rundir import RunDir

    run = world.run
    cfg = load_config(run / "config.yaml")
    (run / "state.json").write_text('{"completed_iterations": -1}')
    with pytest.raises(InpoError, match="use --overwrite"):
        RunDir(run).check(cfg, resume=True, overwrite=False)
    assert RunDir(run).check(cfg, resume=False, overwrite=True) is None


def test_jsonl_with_a_raw_line_separator_inside_a_string_is_valid(world: World, capsys) -> None:
    p = world.file("d.jsonl", '{"prompt": "a\u2028b"}\n{"prompt": "c\u2029d\x85e"}\n')
    code, out, err = run_cli(["data", "check", p, "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["rows"] == 2


def test_usage_and_markup_are_printed_verbatim(world: World, capsys) -> None:
    from inpo.cli import print_error

    print_error("pip install 'inpo[vllm]' for my[run]/c[red].yaml [bold]x[/bold]")
    assert capsys.readouterr().err == "error: pip install 'inpo[vllm]' for my[run]/c[red].yaml [bold]x[/bold]\n"


# --------------------------------------------------------------------------------------------------
# real processes
# --------------------------------------------------------------------------------------------------


def _env(extra_path: Path | None = None) -> dict[str, str]:
    src = str(Path(__file__).resolve().parents[1] / "src")
    path = os.pathsep.join([str(extra_path)] * (extra_path is not None) + [src])
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}


def test_real_process_ctrl_c_during_start_up_imports(tmp_path: Path) -> None:
    """A Ctrl-C while the libraries import (simulated: importing typer raises KeyboardInterrupt, as SIGINT would
    at that moment) is one line and exit 130; then a real SIGINT at a random early moment is too."""
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "typer.py").write_text("raise KeyboardInterrupt\n")
    r = subprocess.run([sys.executable, "-m", "inpo", "game"], capture_output=True, text=True, env=_env(fake),
                       timeout=120)
    assert r.returncode == 130 and r.stderr == "error: interrupted (Ctrl-C)\n", r.stderr
    proc = subprocess.Popen([sys.executable, "-m", "inpo", "game", "--iterations", "100000", "--sampled"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # not inherited SIG_IGN
    try:  # once numpy's C extension is mapped the process is importing inpo.cli's libraries (or past them):
        deadline = time.monotonic() + 60  # past the interpreter's own start-up, which runs no inpo code
        while "_multiarray_umath" not in Path(f"/proc/{proc.pid}/maps").read_text() and time.monotonic() < deadline:
            time.sleep(0.01)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert err.splitlines() == [err.strip()] and err.startswith("error: interrupted"), err


def test_real_process_second_resume_is_refused(world: World) -> None:
    """A real second process on a run whose lock another process holds: refused with one line, nothing written."""
    run = world.run
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, os, sys, time; fd = os.open(sys.argv[1], "
                               "os.O_RDONLY); fcntl.flock(fd, fcntl.LOCK_EX); print('locked', flush=True); "
                               "time.sleep(60)", str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = digest(run)
        r = subprocess.run([sys.executable, "-m", "inpo", "train", "--resume", str(run), "-T", "3", "-q"],
                           capture_output=True, text=True, env=_env(), timeout=300)
        assert_one_line(r.returncode, r.stderr, 2, ["another inpo process"])
        assert digest(run) == before
    finally:
        holder.kill()
        holder.wait()
