"""An iterate's outputs on the evaluation prompts, in the formats of AlpacaEval and Arena-Hard, and reading a
fixed reference model's outputs back.

``inpo eval RUN --outputs FILE.json`` writes

* ``FILE.json``: AlpacaEval's ``model_outputs`` format, a JSON list of ``{"instruction", "output", "generator",
  "dataset"}`` (``alpaca_eval --model_outputs FILE.json`` reads it as is);
* ``FILE_arena-hard/``: an Arena-Hard bench folder (``lmarena/arena-hard-auto``, the current
  ``data/<bench>/`` layout): ``question.jsonl`` rows ``{"uid", "category", "prompt"}`` and
  ``model_answer/<generator>.jsonl`` rows ``{"uid", "ans_id", "model", "messages": [{"role": "user", ...},
  {"role": "assistant", "content": {"answer": ...}}], "tstamp", "metadata"}``; copy it to
  ``arena-hard-auto/data/<bench>/``. ``metadata`` has Arena-Hard's style features (``token_len`` counted with the
  policy's tokenizer, not tiktoken's gpt-4o encoding, which needs a download; header / list / bold counts);
* ``FILE.config.json``: the sidecar: run, iteration, checkpoint, decoding, prompt set, package versions.

The generator name records the decoding: ``<run>-iter<t>-greedy`` or ``<run>-iter<t>-sample-T<temperature>-
p<top_p>-s<seed>`` (``pi_ref`` for iteration 0). Every file is written to a temp file and renamed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field

from inpo.errors import InpoError


class Decoding(BaseModel):
    """How the evaluated outputs are decoded: greedy, or sampled with the run's temperature / top-p."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    greedy: bool = False
    temperature: float = Field(default=1.0, gt=0)
    top_p: float = Field(default=1.0, gt=0, le=1)
    max_new_tokens: int = Field(default=8, gt=0)
    seed: int = 0

    def tag(self) -> str:
        return "greedy" if self.greedy else f"sample-T{self.temperature:g}-p{self.top_p:g}-s{self.seed}"


def generator_name(run_name: str, t: int, decoding: Decoding) -> str:
    """``<run>-iter<t>-<decoding>``; iteration 0 is the run's reference policy: ``<run>-pi_ref-<decoding>``."""
    return f"{run_name}-{f'iter{t}' if t else 'pi_ref'}-{decoding.tag()}"


@torch.no_grad()
def generate(model: torch.nn.Module, prompts: Sequence[Sequence[int]], decoding: Decoding, *, eos_id: int,
             pad_id: int, batch_size: int = 64) -> list[list[int]]:
    """One response (token ids, EOS kept) per prompt, greedy or sampled (seeded by ``decoding.seed``)."""
    from transformers import GenerationConfig

    from inpo.sampling import left_pad, strip_response

    kw: dict[str, Any] = {"do_sample": False} if decoding.greedy else {
        "do_sample": True, "temperature": decoding.temperature, "top_p": decoding.top_p, "top_k": 0}
    gen_cfg = GenerationConfig(max_new_tokens=decoding.max_new_tokens, eos_token_id=eos_id, pad_token_id=pad_id, **kw)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    torch.manual_seed(decoding.seed)
    out: list[list[int]] = []
    try:
        for s in range(0, len(prompts), batch_size):
            ids, mask = left_pad(prompts[s : s + batch_size], pad_id)
            seqs = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=gen_cfg)
            out += [strip_response(r, eos_id, pad_id) for r in seqs[:, ids.shape[1]:].cpu().tolist()]
    finally:
        model.train(was_training)
    return out


# ------------------------------------------------------------------------------------------------ formats


def alpaca_eval_records(instructions: Sequence[str], outputs: Sequence[str], *, generator: str,
                        dataset: str) -> list[dict[str, str]]:
    """AlpacaEval ``model_outputs`` rows."""
    return [{"instruction": x, "output": y, "generator": generator, "dataset": dataset}
            for x, y in zip(instructions, outputs, strict=True)]


def question_uid(instruction: str) -> str:
    """A stable Arena-Hard question uid for a prompt (32 hex digits, like arena-hard-v0.1's)."""
    return hashlib.sha256(instruction.encode()).hexdigest()[:32]


def markdown_counts(text: str) -> dict[str, dict[str, int]]:
    """Arena-Hard's style features of an answer (``utils/add_markdown_info.py: count_markdown_elements`` with
    code blocks removed first, as ``gen_answer.py`` does)."""
    for block in re.findall(r"```([^`]*)```", text):
        text = text.replace(block, "")
    return {
        "header_count": {f"h{k}": len(re.findall(rf"^#{{{k}}}\s", text, re.MULTILINE)) for k in range(1, 7)},
        "list_count": {"ordered": len(re.findall(r"^\s*\d+\.\s", text, re.MULTILINE)),
                       "unordered": len(re.findall(r"^\s*[-*+]\s", text, re.MULTILINE))},
        "bold_count": {"**": len(re.findall(r"\*\*[^*\n]+\*\*", text)),
                       "__": len(re.findall(r"__[^_\n]+__", text))},
    }


def arena_hard_records(instructions: Sequence[str], outputs: Sequence[str], token_lens: Sequence[int], *,
                       generator: str, category: str, tstamp: float | None = None
                       ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(questions, answers): Arena-Hard ``question.jsonl`` and ``model_answer/<generator>.jsonl`` rows."""
    now = time.time() if tstamp is None else tstamp
    questions, answers = [], []
    for x, y, n in zip(instructions, outputs, token_lens, strict=True):
        uid = question_uid(x)
        questions.append({"uid": uid, "category": category, "prompt": x})
        answers.append({
            "uid": uid, "ans_id": hashlib.sha256(f"{generator}\n{uid}".encode()).hexdigest()[:22], "model": generator,
            "messages": [{"role": "user", "content": x}, {"role": "assistant", "content": {"answer": y}}],
            "tstamp": now, "metadata": {"token_len": int(n), **markdown_counts(y)},
        })
    return questions, answers


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError as e:
        raise InpoError(f"{path}: cannot write ({e.strerror or e})") from None


def output_paths(path: Path, generator: str) -> dict[str, Path]:
    if path.suffix != ".json":
        raise InpoError(f"--outputs {path}: the AlpacaEval outputs file must end in .json")
    bench = path.with_name(f"{path.stem}_arena-hard")
    return {"alpaca_eval": path, "arena_hard_questions": bench / "question.jsonl",
            "arena_hard_answers": bench / "model_answer" / f"{generator}.jsonl",
            "config": path.with_name(f"{path.stem}.config.json")}


def write_outputs(path: str | Path, instructions: Sequence[str], outputs: Sequence[str], token_lens: Sequence[int],
                  *, generator: str, dataset: str, config: dict[str, Any]) -> dict[str, Path]:
    """Write the AlpacaEval file, the Arena-Hard folder and the sidecar config (see the module docstring)."""
    paths = output_paths(Path(path), generator)
    questions, answers = arena_hard_records(instructions, outputs, token_lens, generator=generator, category=dataset)

    def jsonl(rows: list[dict[str, Any]]) -> str:
        return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)

    _atomic_write(paths["alpaca_eval"], json.dumps(alpaca_eval_records(instructions, outputs, generator=generator,
                                                                       dataset=dataset), indent=1, ensure_ascii=False))
    _atomic_write(paths["arena_hard_questions"], jsonl(questions))
    _atomic_write(paths["arena_hard_answers"], jsonl(answers))
    sidecar = {"generator": generator, "dataset": dataset, "n": len(instructions), **config,
               "files": {k: str(v) for k, v in paths.items() if k != "config"}}
    _atomic_write(paths["config"], json.dumps(sidecar, indent=1) + "\n")
    return paths


# ------------------------------------------------------------------------------------------------ reference


@dataclass(frozen=True)
class Reference:
    generator: str
    outputs: list[str]  # aligned with the eval instructions


def _clip(text: str, n: int = 60) -> str:
    text = text.replace("\n", " ")
    return repr(text if len(text) <= n else text[: n - 3] + "...")


def load_reference(path: str | Path, instructions: Sequence[str]) -> Reference:
    """Read reference outputs (AlpacaEval ``model_outputs`` format: a JSON list of objects with string
    ``instruction`` and ``output``; ``generator`` optional) and align them with the eval ``instructions``.

    Rows are numbered from 1. The first offending row is named: not an object, a missing or non-string field, an
    instruction given twice, an instruction that is not an eval prompt; then the first eval prompt that has no
    reference output."""
    p = Path(path)
    try:
        data = json.loads(p.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise InpoError(f"{p}: reference outputs file not found") from None
    except UnicodeDecodeError as e:
        raise InpoError(f"{p}: not UTF-8 text (byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise InpoError(f"{p}: line {e.lineno}: invalid JSON ({e.msg})") from None
    if not isinstance(data, list) or not data:
        raise InpoError(f"{p}: expected a non-empty JSON list of {{\"instruction\", \"output\", ...}} objects "
                        "(AlpacaEval's model_outputs format)")
    wanted = {x: i for i, x in reversed(list(enumerate(instructions)))}
    seen: dict[str, int] = {}
    generator = None
    for n, row in enumerate(data, start=1):
        where = f"{p}: row {n}"
        if not isinstance(row, dict):
            raise InpoError(f"{where}: expected an object, got {type(row).__name__}")
        for field in ("instruction", "output"):
            if field not in row:
                raise InpoError(f"{where}: missing field '{field}'")
            if not isinstance(row[field], str):
                raise InpoError(f"{where}: field '{field}' must be a string, got {type(row[field]).__name__}")
        x = row["instruction"]
        if x in seen:
            raise InpoError(f"{where}: duplicate instruction (also row {seen[x]}): {_clip(x)}")
        seen[x] = n
        if x not in wanted:
            raise InpoError(f"{where}: instruction {_clip(x)} is not one of the {len(wanted)} eval prompts "
                            "(the reference must answer exactly the eval prompts)")
        if generator is None and isinstance(row.get("generator"), str):
            generator = row["generator"]
    for i, x in enumerate(instructions):
        if x not in seen:
            raise InpoError(f"{p}: no reference output for eval prompt {i + 1} of {len(instructions)}: {_clip(x)}")
    by_instruction = {row["instruction"]: row["output"] for row in data}
    return Reference(generator or p.stem, [by_instruction[x] for x in instructions])


def unique(texts: Sequence[str]) -> list[int]:
    """Indices of the first occurrence of each distinct text (evaluation prompts are matched by text)."""
    seen: set[str] = set()
    keep = []
    for i, x in enumerate(texts):
        if x not in seen:
            seen.add(x)
            keep.append(i)
    return keep


# ------------------------------------------------------------------------------------------------ runs


@dataclass
class RunOutputs:
    """A run opened for evaluation: its config, its set-up (tokenizer, pi_ref, eval prompts, judge) and name."""

    path: Path
    cfg: Any  # RunConfig
    setup: Any  # inpo.loop.Setup
    completed: int

    @property
    def name(self) -> str:
        return self.path.resolve().name

    @property
    def dataset(self) -> str:
        d = self.cfg.data
        return "inpo-builtin" if self.cfg.model.path is None else str(d.eval_prompts or d.prompts)

    def instructions(self) -> tuple[list[int], list[str]]:
        """(indices, texts) of the distinct eval prompts, in order."""
        texts = [p.text for p in self.setup.eval_prompts]
        keep = unique(texts)
        return keep, [texts[i] for i in keep]

    def decoding(self, *, greedy: bool, seed: int) -> Decoding:
        s = self.cfg.sampling
        return Decoding(greedy=greedy, temperature=s.temperature, top_p=s.top_p, max_new_tokens=s.max_new_tokens,
                        seed=seed)

    def model(self, t: int) -> torch.nn.Module:
        """pi_ref for ``t = 0``, else the iterate saved as ``iter_<t>/``."""
        from inpo.models import load_policy

        if t == 0:
            return self.setup.ref
        d = self.path / f"iter_{t}"
        if not d.is_dir():
            raise InpoError(f"{self.path}: no checkpoint iter_{t} (completed iterations: {self.completed})")
        return load_policy(d, self.cfg, self.setup.ref_path).eval()

    def outputs(self, t: int, decoding: Decoding) -> tuple[list[str], list[int]]:
        """(texts, token counts) of iterate ``t``'s response to each distinct eval prompt (EOS not counted)."""
        keep, _ = self.instructions()
        su = self.setup
        ids = generate(self.model(t), [su.eval_prompts[i].ids for i in keep], decoding, eos_id=su.eos_id,
                       pad_id=su.pad_id, batch_size=self.cfg.sampling.batch_size)
        lens = [len(r) - (1 if r and r[-1] == su.eos_id else 0) for r in ids]
        return su.tokenizer.batch_decode(ids, skip_special_tokens=True), lens

    def sidecar(self, t: int, decoding: Decoding) -> dict[str, Any]:
        import inpo

        return {"run_dir": str(self.path), "iteration": t, "algo": self.cfg.algo.name,
                "checkpoint": str(self.path / f"iter_{t}") if t else str(self.setup.ref_path),
                "decoding": decoding.model_dump(), "inpo_version": getattr(inpo, "__version__", None),
                "torch_version": torch.__version__}


def open_run(path: str | Path, *, judge: str | None = None) -> RunOutputs:
    """Open a run directory written by ``inpo train`` (``judge``: another judge than the run's, or 'builtin')."""
    from rich.console import Console

    from inpo.config import load_config
    from inpo.models import build_setup
    from inpo.rundir import RunDir

    p = Path(path)
    cfg_path = p / "config.yaml"
    if not cfg_path.is_file():
        raise InpoError(f"{p}: not a run directory (no config.yaml)")
    cfg = load_config(cfg_path, {"judge": {"path": judge}} if judge is not None else {})
    if cfg.judge.path == "builtin" and cfg.model.path is not None:
        raise InpoError(f"{p}: --judge builtin needs a run on the built-in task")
    completed = int(RunDir(p).read_state().get("completed_iterations", 0))
    setup = build_setup(cfg, Console(quiet=True), progress=False)
    return RunOutputs(p, cfg, setup, completed)


def parse_iterations(spec: str | None, completed: int) -> list[int]:
    """``None``/``last`` -> [completed]; ``all`` -> 0..completed; ``2`` or ``0,2,4`` -> those (0 = pi_ref)."""
    if spec is None or spec == "last":
        return [completed]
    if spec == "all":
        return list(range(completed + 1))
    try:
        ts = [int(x) for x in spec.split(",")]
    except ValueError:
        raise InpoError(f"--iteration {spec!r}: expected an integer, a comma list, 'last' or 'all'") from None
    bad = [t for t in ts if not 0 <= t <= completed]
    if bad:
        raise InpoError(f"--iteration {bad[0]}: not between 0 (pi_ref) and {completed} (completed iterations)")
    return ts


def evaluate_runs(runs: Sequence[str | Path], iterations: str | None, *, judge: str | None = None,
                  reference: str | Path | None = None, outputs: str | Path | None = None, greedy: bool = False,
                  seed: int = 0, lc_boot: int = 0, on_row: Any = None) -> list[dict[str, Any]]:
    """``inpo eval RUN... --reference/--outputs``: for each run and iterate, decode its outputs on the eval prompts,
    write them (``outputs``: one run and one iterate only) and battle them against the ``reference`` outputs under
    the judge (:func:`inpo.battles.summarize`). Returns one row per (run, iterate) (none without ``reference``);
    ``on_row(row)`` is called as each is done."""
    from inpo.battles import battle, summarize

    one = "--outputs writes one iterate's outputs: give one run and one --iteration"
    if outputs is not None and len(runs) != 1:
        raise InpoError(one)
    rows: list[dict[str, Any]] = []
    ref: Reference | None = None
    for r in runs:  # one run's models in memory at a time
        o = open_run(r, judge=judge)
        ts = parse_iterations(iterations, o.completed)
        if outputs is not None and len(ts) != 1:
            raise InpoError(one)
        _, instructions = o.instructions()
        if reference is not None:
            ref = load_reference(reference, instructions)
        for t in ts:
            dec = o.decoding(greedy=greedy, seed=seed)
            gen = generator_name(o.name, t, dec)
            texts, lens = o.outputs(t, dec)
            if outputs is not None:
                write_outputs(outputs, instructions, texts, lens, generator=gen, dataset=o.dataset,
                              config=o.sidecar(t, dec))
            if ref is None:
                continue
            b = battle(o.setup.judge, instructions, texts, ref.outputs)
            row = {"run": o.name, "algo": o.cfg.algo.name, "iteration": t, "judge": o.cfg.judge.path,
                   **summarize(b, generator=gen, reference_generator=ref.generator, annotator=o.cfg.judge.path,
                               lc_boot=lc_boot)}
            rows.append(row)
            if on_row is not None:
                on_row(row)
    return rows
