"""Prompt datasets: JSONL / JSON / parquet files or `datasets.load_dataset` names.

A row holds either ``prompt`` (a string, or TRL's conversational form: a list of chat messages) or
``messages`` (chat messages ``{"role": ..., "content": ...}``), rendered with the tokenizer's chat
template and a generation prompt. A string prompt is rendered as one user turn when the tokenizer has a chat
template (``chat_template="auto"``, the default; ``always`` requires one, ``never`` feeds the text as is).
The judge sees the text as written (:attr:`Prompt.text`), never the rendered template: a string prompt's text,
a conversation of one user message its content, a longer conversation its rendered template. Every error
names the file, the row (1-based) and the field.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inpo.errors import InpoError

ROLES = {"system", "user", "assistant", "tool"}


@dataclass(frozen=True)
class Prompt:
    text: str  # what the judge sees: the prompt as written (see the module docstring)
    ids: list[int]  # what the model sees: the rendered prompt's tokens


def _read_utf8(path: Path, source: str) -> str:
    from inpo.inputs import read_text

    return read_text(path, source)


def read_rows(source: str, split: str = "train") -> list[dict[str, Any]]:
    path = Path(source)
    if path.suffix in {".jsonl", ".json", ".parquet"} and not path.exists():
        raise InpoError(f"{source}: file not found")
    if path.is_file():
        if path.suffix == ".jsonl":
            from inpo.inputs import json_loads, jsonl_lines

            rows = []
            for n, line in jsonl_lines(_read_utf8(path, source)):  # "\n" only: U+2028 may sit inside a string
                row = json_loads(line, f"{source}: line {n}")
                if not isinstance(row, dict):
                    raise InpoError(f"{source}: line {n}: expected a JSON object, got {type(row).__name__}")
                rows.append(row)
            return rows
        if path.suffix == ".json":
            try:
                data = json.loads(_read_utf8(path, source))
            except json.JSONDecodeError as e:
                raise InpoError(f"{source}: line {e.lineno}: invalid JSON ({e.msg})") from None
            except (ValueError, RecursionError):
                from inpo.inputs import json_loads

                data = json_loads(_read_utf8(path, source), source)  # raises the one-line error
            if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
                raise InpoError(f"{source}: expected a JSON list of objects")
            return data
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            try:
                return pq.read_table(path).to_pylist()
            except Exception as e:  # noqa: BLE001 - pyarrow raises several types for a damaged file
                raise InpoError(f"{source}: not a readable parquet file ({type(e).__name__})") from None
        raise InpoError(f"{source}: unsupported file type '{path.suffix}' (use .jsonl, .json or .parquet)")
    try:
        import datasets

        return list(datasets.load_dataset(source, split=split))
    except Exception as e:  # noqa: BLE001 - any failure of the hub/dataset loader is a user error here
        raise InpoError(f"{source}: not a file, and datasets.load_dataset failed ({type(e).__name__})") from None


def _check_messages(messages: Any, where: str) -> list[dict[str, str]]:
    if not isinstance(messages, list) or not messages:
        raise InpoError(f"{where}: expected a non-empty list of chat messages")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("content"), str) or not isinstance(m.get("role"), str):
            raise InpoError(f"{where}[{i}]: each message needs string 'role' and 'content'")
        if m["role"] not in ROLES:
            raise InpoError(f"{where}[{i}]: unknown role '{m['role']}' (expected one of {sorted(ROLES)})")
    return messages


def renders_chat(tokenizer: Any, chat_template: str = "auto", where: str = "data.chat_template") -> bool:
    """Whether string prompts are rendered with the tokenizer's chat template (``auto``: when it has one)."""
    has = getattr(tokenizer, "chat_template", None) is not None
    if chat_template == "always" and not has:
        raise InpoError(f"{where}=always but the tokenizer has no chat template")
    return has and chat_template != "never"


def judge_text(row: dict[str, Any], where: str, tokenizer: Any) -> str:
    """The prompt as the judge sees it: a string prompt as written, a conversation of one user message its content,
    another conversation its rendered template (:func:`prompt_text`)."""
    value = row.get("prompt", row.get("messages"))
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], dict) and value[0].get("role") == "user":
        content = value[0].get("content")
        if isinstance(content, str):
            return content
    return prompt_text(row, where, tokenizer)[0]


def prompt_text(row: dict[str, Any], where: str, tokenizer: Any, chat_template: str = "never") -> tuple[str, bool]:
    """(text, is_chat) of one row: the text the model is fed and whether it is a rendered chat template (a string
    prompt is rendered as one user turn when :func:`renders_chat` says so)."""
    if "prompt" in row and "messages" in row:
        raise InpoError(f"{where}: give either 'prompt' or 'messages', not both")
    value = row.get("prompt", row.get("messages"))
    field = "prompt" if "prompt" in row else "messages"
    if value is None:
        raise InpoError(f"{where}: missing field 'prompt' (or 'messages')")
    if isinstance(value, str):
        if field == "messages":
            raise InpoError(f"{where}: field 'messages' must be a list of chat messages")
        if not value.strip():
            raise InpoError(f"{where}: field 'prompt' is empty")
        if renders_chat(tokenizer, chat_template):
            return tokenizer.apply_chat_template([{"role": "user", "content": value}], tokenize=False,
                                                 add_generation_prompt=True), True
        return value, False
    messages = _check_messages(value, f"{where}: field '{field}'")
    if getattr(tokenizer, "chat_template", None) is None:
        raise InpoError(f"{where}: chat messages given but the tokenizer has no chat template")
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True), True


def row_format(row: dict[str, Any]) -> str:
    """TRL's dataset format of a row, from its fields (the rules of ``inpo data check``)."""
    if "chosen" in row or "rejected" in row:
        return "preference"
    if "messages" in row:
        return "language-modeling"
    if "completion" in row:
        return "prompt-completion"
    return "prompt-only"


def load_prompts(
    source: str, tokenizer: Any, *, split: str = "train", max_length: int = 512, too_long: str = "skip",
    limit: int | None = None, max_length_name: str = "data.max_prompt_length", chat_template: str = "never",
) -> tuple[list[Prompt], int]:
    """Prompts tokenized for generation, and the number skipped for exceeding ``max_length`` tokens
    (``max_length_name``: what the limit is called in messages; ``chat_template``: see :func:`renders_chat`)."""
    rows = read_rows(source, split)
    if not rows:
        raise InpoError(f"{source}: no rows")
    out: list[Prompt] = []
    skipped = 0
    kind0 = None
    for n, row in enumerate(rows, start=1):
        where = f"{source}: row {n}"
        value = row.get("prompt", row.get("messages"))
        if isinstance(value, str | list):  # else prompt_text names what is wrong with the row
            kind = (row_format(row), "conversational" if isinstance(value, list) else "standard")
            kind0 = kind0 or kind
            if kind != kind0:  # as `inpo data check` (and TRL, which reads the format from row 1) refuses it
                if isinstance(value, list):  # a malformed row's own error first
                    _check_messages(value, f"{where}: field '{'prompt' if 'prompt' in row else 'messages'}'")
                raise InpoError(f"{where}: {kind[0]} {kind[1]} row in a {kind0[0]} {kind0[1]} file (row 1's format); "
                                "a file must use one format throughout (see `inpo data check`)")
        text, is_chat = prompt_text(row, where, tokenizer, chat_template)
        ids = tokenizer(text, add_special_tokens=not is_chat).input_ids
        if len(ids) > max_length:
            if too_long == "error":
                raise InpoError(f"{where}: prompt has {len(ids)} tokens > {max_length_name}={max_length}")
            skipped += 1
            continue
        out.append(Prompt(judge_text(row, where, tokenizer) if is_chat else text, list(ids)))
        if limit is not None and len(out) >= limit:
            break
    if not out:
        raise InpoError(f"{source}: every prompt is longer than {max_length_name}={max_length}")
    return out, skipped
