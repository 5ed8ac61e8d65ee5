"""``inpo data check FILE`` (validate a dataset in TRL's formats) and ``inpo data export RUN_DIR OUT``
(a run's pairs as a TRL preference dataset).

Formats (TRL's dataset formats, https://huggingface.co/docs/trl/dataset_formats), each *standard* (strings)
or *conversational* (lists of chat messages ``{"role": ..., "content": ...}``):

=================  ==========================================  =========================================
format             fields                                      used by
=================  ==========================================  =========================================
prompt-only        ``prompt``                                  ``inpo train`` (data.prompts), TRL online
preference         ``prompt``, ``chosen``, ``rejected``        TRL DPOTrainer, ``inpo judge train``
                   (``prompt`` may be absent: implicit prompt)
prompt-completion  ``prompt``, ``completion``                  TRL SFTTrainer
language modeling  ``messages`` (conversational only)          ``inpo train``, TRL SFTTrainer
=================  ==========================================  =========================================

Other columns are allowed and ignored. A file must use one format and one style throughout (TRL decides
both from the first row). Type errors stop the check with an :class:`InpoError` naming the file, the line
(JSONL) or row (JSON list, parquet) and the field; empty fields, duplicate rows and pairs whose chosen equals
rejected are counted and reported.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import typer

from inpo.data import ROLES, read_rows
from inpo.errors import InpoError

FORMAT_FIELDS: dict[str, tuple[str, ...]] = {
    "preference": ("prompt", "chosen", "rejected"),
    "prompt-completion": ("prompt", "completion"),
    "language-modeling": ("messages",),
    "prompt-only": ("prompt",),
}


@dataclass
class DataReport:
    """What :func:`check_dataset` found. ``empty[field]`` counts rows whose field is blank."""

    path: str
    rows: int
    format: str
    style: str  # "standard" | "conversational"
    implicit_prompt: bool = False
    empty: dict[str, int] = field(default_factory=dict)
    duplicates: int = 0
    chosen_equals_rejected: int = 0
    extra_columns: list[str] = field(default_factory=list)
    prompt_rendering: str | None = None  # how `inpo train` feeds the prompts to the model (data.chat_template)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _row_format(row: dict[str, Any], where: str) -> str:
    if "messages" in row and any(k in row for k in ("prompt", "chosen", "rejected", "completion")):
        raise InpoError(f"{where}: give either 'messages' or prompt/chosen/rejected/completion fields, not both")
    if "chosen" in row or "rejected" in row:
        for name in ("chosen", "rejected"):
            if name not in row:
                raise InpoError(f"{where}: missing field '{name}' (a preference row needs chosen and rejected)")
        if "completion" in row:
            raise InpoError(f"{where}: a preference row has 'chosen'/'rejected', not 'completion'")
        return "preference"
    if "messages" in row:
        return "language-modeling"
    if "completion" in row:
        if "prompt" not in row:
            raise InpoError(f"{where}: missing field 'prompt' (a prompt-completion row needs both)")
        return "prompt-completion"
    if "prompt" in row:
        return "prompt-only"
    raise InpoError(f"{where}: no known fields (expected 'prompt', 'prompt'+'chosen'+'rejected', "
                    f"'prompt'+'completion' or 'messages'); got {sorted(row)}")


def _value_style(value: Any, where: str, name: str) -> tuple[str, bool]:
    """(style, is_empty) of one field; type errors raise InpoError."""
    if isinstance(value, str):
        return "standard", not value.strip()
    if isinstance(value, list):
        for i, m in enumerate(value):
            if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
                raise InpoError(f"{where}: field '{name}'[{i}]: each message needs string 'role' and 'content'")
            if m["role"] not in ROLES:
                raise InpoError(f"{where}: field '{name}'[{i}]: unknown role '{m['role']}' "
                                f"(expected one of {sorted(ROLES)})")
        return "conversational", not value or all(not m["content"].strip() for m in value)
    if value is None:
        raise InpoError(f"{where}: field '{name}' is null")
    raise InpoError(f"{where}: field '{name}' must be a string or a list of chat messages, "
                    f"got {type(value).__name__}")


def _locations(path: Path, n: int) -> list[str]:
    """'line N' for JSONL (blank lines skipped as read_rows does), 'row N' (1-based) otherwise."""
    if path.suffix == ".jsonl":
        from inpo.inputs import jsonl_lines, read_text

        lines = [i for i, _ in jsonl_lines(read_text(path))]  # the lines read_rows reads ("\n" only)
        return [f"line {i}" for i in lines[:n]]
    return [f"row {i}" for i in range(1, n + 1)]


def check_dataset(path: str | Path) -> DataReport:
    """Validate a JSONL / JSON / parquet file in one of TRL's formats (module docstring); see DataReport."""
    p = Path(path)
    if not p.is_file():
        raise InpoError(f"{path}: file not found")
    rows = read_rows(str(p))
    if not rows:
        raise InpoError(f"{path}: no rows")
    where = [f"{path}: {loc}" for loc in _locations(p, len(rows))]
    fmt0 = _row_format(rows[0], where[0])
    style0: str | None = None
    implicit = fmt0 == "preference" and "prompt" not in rows[0]
    empty: Counter[str] = Counter()
    seen: set[str] = set()
    dup = same = 0
    extra: set[str] = set()
    for n, row in enumerate(rows):
        fmt = _row_format(row, where[n])
        if fmt != fmt0:
            raise InpoError(f"{where[n]}: {fmt} row in a {fmt0} file (row 1's format); TRL expects one format "
                            "per dataset")
        if fmt == "preference" and ("prompt" not in row) != implicit:
            raise InpoError(f"{where[n]}: 'prompt' is {'present' if implicit else 'missing'} here but "
                            f"{'missing' if implicit else 'present'} in row 1")
        fields = [f for f in FORMAT_FIELDS[fmt] if f in row]
        extra.update(k for k in row if k not in FORMAT_FIELDS[fmt])
        for f in fields:
            style, is_empty = _value_style(row[f], where[n], f)
            if style0 is None:
                style0 = style
            elif style != style0:
                raise InpoError(f"{where[n]}: field '{f}' is {style} but the file is {style0} (strings and chat "
                                "message lists cannot be mixed)")
            empty[f] += is_empty
        if fmt == "language-modeling" and style0 == "standard":
            raise InpoError(f"{where[n]}: field 'messages' must be a list of chat messages")
        key = json.dumps([row[f] for f in fields], sort_keys=True)
        dup += key in seen
        seen.add(key)
        if fmt == "preference":
            same += row["chosen"] == row["rejected"]
    assert style0 is not None
    return DataReport(str(path), len(rows), fmt0, style0, implicit, dict(empty), dup, same, sorted(extra))


def prompt_rendering(style: str, chat_template: str = "auto", model: str | None = None) -> str:
    """One line: how ``inpo train`` feeds a file's prompts to the model under ``data.chat_template`` (and the
    tokenizer of ``model``, a model directory or ``.gguf`` file, when given)."""
    if style == "conversational":
        return "chat messages: rendered with the model's chat template (a generation prompt added)"
    if model is None:
        how = {"auto": "rendered as one user turn with the model's chat template when it has one, else as is",
               "always": "rendered as one user turn with the model's chat template (required)",
               "never": "fed as is (no chat template)"}[chat_template]
        return f"string prompts: {how} (data.chat_template={chat_template}; --model tells which)"
    from inpo.config import ModelConfig
    from inpo.data import renders_chat
    from inpo.models import load_tokenizer, resolve_model_dir

    tok = load_tokenizer(resolve_model_dir(ModelConfig(path=model)) or model)
    if renders_chat(tok, chat_template, where=f"--chat-template always: {model}"):
        return (f"string prompts: rendered as one user turn with {model}'s chat template "
                f"(data.chat_template={chat_template}); the judge sees the text as written")
    why = "the tokenizer has no chat template" if chat_template == "auto" else "data.chat_template=never"
    return f"string prompts: fed as is ({why})"


def data_check(
    path: Path = typer.Argument(..., help="A .jsonl, .json or .parquet file."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object."),
    model: str | None = typer.Option(None, "--model", help="Model directory or .gguf file whose tokenizer (chat "
                                     "template) the prompts are for."),
    chat_template: str = typer.Option("auto", "--chat-template", help="data.chat_template: auto|always|never."),
) -> None:
    """Validate a dataset in TRL's formats (prompt-only, preference, prompt-completion, messages) and say how
    `inpo train` feeds its prompts to the model (chat template or not)."""
    from rich.console import Console
    from rich.table import Table

    if chat_template not in ("auto", "always", "never"):
        raise InpoError(f"--chat-template {chat_template!r}: expected auto, always or never")
    report = check_dataset(path)
    if "prompt" in FORMAT_FIELDS[report.format] or report.format == "language-modeling":
        report.prompt_rendering = prompt_rendering(report.style, chat_template, model)
    if json_out:
        print(json.dumps(report.as_dict()))
        return
    table = Table(title=f"{path}")
    table.add_column("check")
    table.add_column("value", justify="right")
    fmt = report.format + (" (implicit prompt)" if report.implicit_prompt else "")
    table.add_row("rows", str(report.rows))
    table.add_row("format", f"{fmt}, {report.style}")
    for f, n in report.empty.items():
        table.add_row(f"empty '{f}'", str(n))
    table.add_row("duplicate rows", str(report.duplicates))
    if report.format == "preference":
        table.add_row("chosen == rejected", str(report.chosen_equals_rejected))
    if report.extra_columns:
        table.add_row("other columns (ignored)", ", ".join(report.extra_columns))
    if report.prompt_rendering:
        table.add_row("prompts", report.prompt_rendering)
    Console().print(table)


# --------------------------------------------------------------------------------------------------
# Export: a run's pairs as a TRL preference dataset
# --------------------------------------------------------------------------------------------------


def _run_prompts(cfg: Any, tokenizer: Any) -> list[Any]:
    """The run's training prompts, rebuilt as ``inpo.models.build_setup`` builds them (without loading models)."""
    from inpo.data import Prompt, load_prompts
    from inpo.models import prompt_sources

    d = cfg.data
    if cfg.model.path is None and cfg.task.name == "builtin":
        from inpo.tasks import BuiltinTask, BuiltinTaskConfig

        task = BuiltinTask(BuiltinTaskConfig(**{"seed": cfg.task.seed, **cfg.task.options}))
        prompts = [Prompt(t, tokenizer(t).input_ids) for t in task.train_prompts]
    else:
        prompts, _ = load_prompts(prompt_sources(cfg)[0], tokenizer, split=d.split, max_length=d.max_prompt_length,
                                  too_long=d.too_long, limit=d.num_prompts, chat_template=d.chat_template)
    return prompts[: d.num_prompts] if d.num_prompts is not None else prompts


def _completion_text(tokenizer: Any, prompt_ids: list[int], response: list[int], stop: tuple[str, ...] = ()) -> str:
    """The response as the text that continues the prompt: decode(prompt + response) minus decode(prompt), so
    ``prompt + completion`` re-tokenizes to the sampled tokens (spacing at the boundary kept); falls back to
    decoding the response alone when the prompt's text is not a prefix. Cut before a stop string (what the judge
    read)."""
    head = tokenizer.decode(prompt_ids, skip_special_tokens=True)
    full = tokenizer.decode(list(prompt_ids) + list(response), skip_special_tokens=True)
    text = full[len(head):] if full.startswith(head) else tokenizer.decode(response, skip_special_tokens=True)
    return text[: min((text.index(s) for s in stop if s and s in text), default=len(text))]


def export_pairs_trl(run_dir: str | Path, out_path: str | Path) -> int:
    """Write every iteration's pairs of a run as a TRL preference dataset (JSONL); return the row count.

    Rows: ``prompt`` (the text the judge saw), ``chosen``, ``rejected`` (standard format: completion texts
    that continue the prompt), ``iteration`` t (the pairs were sampled from pi_t, the policy at the start of
    iteration t, saved as ``iter_<t-1>``; ``iter_0`` is pi_ref), ``step`` (EGPO has two per iteration) and
    ``weight`` (the loop's pair weight: the judge's P(chosen > rejected) for ``all`` pairing, 1 otherwise).
    Identical responses make no pair: rows whose chosen equals rejected (two identical samples) and repeats of
    a row already written (same prompt, chosen, rejected, iteration and step) are skipped. The pairs are rebuilt
    from ``stages/iter_<t>/s<step>_{samples,judgements}.pt`` with
    :func:`inpo.algorithms.build_pairs`, the run's pairing and its pairing seed, so they are the pairs the
    loop trained on.
    """

    from inpo.algorithms import ALGORITHMS
    from inpo.config import load_config
    from inpo.inputs import check_path, refuse_inside_run
    from inpo.models import load_tokenizer, run_model_dir
    from inpo.rundir import RunDir, check_artifact, load_stage

    check_path(run_dir, "RUN_DIR")
    refuse_inside_run(out_path, "output")  # e.g. RUN/metrics.jsonl would replace the run's own metrics
    run = RunDir(run_dir)
    if not (run.path / "config.yaml").is_file():
        raise InpoError(f"{run_dir}: not a run directory (no config.yaml)")
    cfg = load_config(run.path / "config.yaml")
    run.read_state()  # schema-checked
    pairing = ALGORITHMS[cfg.algo.name].pairing if cfg.algo.pairing == "default" else cfg.algo.pairing
    stages = sorted((int(d.name.removeprefix("iter_")), d) for d in (run.path / "stages").glob("iter_*")
                    if d.name.removeprefix("iter_").isdigit() and int(d.name.removeprefix("iter_")) >= 1)
    if not stages:
        raise InpoError(f"{run_dir}: no sampled iterations (stages/iter_<t>/ missing)")
    ckpts = sorted(run.path.glob("iter_*/tokenizer_config.json"))
    tok_dir = ckpts[0].parent if ckpts else run_model_dir(cfg)
    if tok_dir is None:
        raise InpoError(f"{run_dir}: no checkpoint with a tokenizer (iter_<t>/) yet")
    tokenizer = load_tokenizer(tok_dir, trust_remote_code=cfg.model.trust_remote_code)
    prompts = _run_prompts(cfg, tokenizer)
    out = Path(out_path)
    if out.is_dir():
        raise InpoError(f"output {out}: is a directory, expected a .jsonl file path")
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = 0
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        rows = _write_pairs(tmp, stages, prompts, tokenizer, cfg, pairing, check_artifact, load_stage)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(out)
    return rows


def _write_pairs(tmp: Path, stages: list[tuple[int, Path]], prompts: list[Any], tokenizer: Any, cfg: Any,
                 pairing: str, check_artifact: Any, load_stage: Any) -> int:
    import torch

    from inpo.algorithms import build_pairs
    from inpo.rundir import seed_for

    rows = 0
    seen: set[str] = set()  # identical rows are written once; identical responses make no pair
    with tmp.open("w", encoding="utf-8") as fh:
        for t, stage_dir in stages:
            for samples_file in sorted(stage_dir.glob("s*_samples.pt")):
                step = int(samples_file.name.split("_")[0][1:])
                judged = stage_dir / f"s{step}_judgements.pt"
                if not judged.is_file():
                    continue  # iteration interrupted before judging: nothing was trained on
                matrices = check_artifact(judged, load_stage(judged), len(prompts))
                responses = check_artifact(samples_file, load_stage(samples_file), len(prompts))
                if isinstance(responses, dict):  # saved with the sampler's log-probs
                    responses = responses["responses"]
                n, k, _ = matrices.shape
                if n != len(prompts) or len(responses) != n * k:
                    raise InpoError(f"{samples_file}: {len(responses)} samples / {n} prompts do not match the "
                                    f"run's {len(prompts)} prompts x K={k} (config or data changed?)")
                pairs = build_pairs(matrices, pairing,
                                    generator=torch.Generator().manual_seed(seed_for(cfg, t, step, "pairs")))
                texts = [_completion_text(tokenizer, prompts[i // k].ids, resp, cfg.sampling.stop)
                         for i, resp in enumerate(responses)]
                for c, r, w, pr in zip(pairs.chosen.tolist(), pairs.rejected.tolist(), pairs.weight.tolist(),
                                       pairs.prompt.tolist(), strict=True):
                    row = {"prompt": prompts[pr].text, "chosen": texts[c], "rejected": texts[r], "iteration": t,
                           "step": step, "weight": w}
                    key = json.dumps([row["prompt"], row["chosen"], row["rejected"], t, step])
                    if texts[c] == texts[r] or key in seen:
                        continue
                    seen.add(key)
                    fh.write(json.dumps(row) + "\n")
                    rows += 1
    return rows


def data_export(
    run_dir: Path = typer.Argument(..., help="A run directory written by `inpo train`."),
    out: Path = typer.Argument(..., help="Output .jsonl (TRL preference format)."),
) -> None:
    """Export every iteration's pairs of a run as a TRL preference dataset (prompt, chosen, rejected, ...)."""
    n = export_pairs_trl(run_dir, out)
    print(f"wrote {n} pairs to {out}")


data_app = typer.Typer(help="Check datasets and export a run's pairs (TRL formats).", no_args_is_help=True)
data_app.command("check")(data_check)
data_app.command("export")(data_export)
