"""Pairwise preference data for judge training: reading, validation, held-out split.

Accepted row shapes (JSONL / JSON list / CSV / parquet, or in-memory dicts):

* ``prompt, chosen, rejected`` with optional ``strength`` in 1..3 (default 1);
* HelpSteer2-Preference style ``prompt, response_1, response_2, preference_strength`` in -3..3:
  negative = response_1 better, positive = response_2 better, 0 = tie (dropped and counted).

An optional ``case`` column (string) names a subset for per-case evaluation. Bad rows raise
:class:`InpoError` naming the file, the row (1-based; JSONL: the line number) and the field.
"""

from __future__ import annotations

import csv
import io
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from inpo.errors import InpoError


@dataclass(frozen=True)
class PreferencePair:
    """One labelled comparison: ``chosen`` is preferred to ``rejected`` for ``prompt``."""

    prompt: str
    chosen: str
    rejected: str
    strength: int = 1
    case: str | None = None


@dataclass
class PreferenceData:
    pairs: list[PreferencePair]
    n_rows: int
    n_ties: int
    source: str = "<memory>"
    cases: list[str] = field(default_factory=list)


def _int_field(value: Any, where: str, name: str, lo: int, hi: int) -> int:
    if isinstance(value, bool):
        raise InpoError(f"{where}: field '{name}' must be an integer in {lo}..{hi}, got {value!r}")
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise InpoError(f"{where}: field '{name}' must be an integer in {lo}..{hi}, got {value!r}") from None
    if isinstance(value, float):
        if not value.is_integer():
            raise InpoError(f"{where}: field '{name}' must be an integer in {lo}..{hi}, got {value!r}")
        value = int(value)
    if not isinstance(value, int):
        raise InpoError(
            f"{where}: field '{name}' must be an integer in {lo}..{hi}, got {type(value).__name__}"
        )
    if not lo <= value <= hi:
        raise InpoError(f"{where}: field '{name}' = {value} is out of range {lo}..{hi}")
    return value


def _text_field(row: Mapping[str, Any], where: str, name: str, *, allow_empty: bool = False) -> str:
    if name not in row or row[name] is None:
        raise InpoError(f"{where}: missing field '{name}'")
    value = row[name]
    if not isinstance(value, str):
        raise InpoError(f"{where}: field '{name}' must be a string, got {type(value).__name__}")
    if not allow_empty and not value.strip():
        raise InpoError(f"{where}: field '{name}' is empty")
    return value


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def parse_row(row: Any, where: str) -> PreferencePair | None:
    """Validate one row; returns None for a HelpSteer2 tie (preference_strength == 0)."""
    if not isinstance(row, Mapping):
        raise InpoError(f"{where}: expected an object with fields, got {type(row).__name__}")
    prompt = _text_field(row, where, "prompt", allow_empty=True)
    case = row.get("case")
    if case is not None and not isinstance(case, str):
        case = str(case)
    # a column present but empty (CSV/parquet files mixing both row shapes) counts as absent
    if not (_missing(row.get("chosen")) and _missing(row.get("rejected"))):
        chosen = _text_field(row, where, "chosen")
        rejected = _text_field(row, where, "rejected")
        strength = 1 if _missing(row.get("strength")) else _int_field(row["strength"], where, "strength", 1, 3)
        return PreferencePair(prompt, chosen, rejected, strength, case or None)
    if not all(_missing(row.get(k)) for k in ("response_1", "response_2", "preference_strength")):
        r1 = _text_field(row, where, "response_1")
        r2 = _text_field(row, where, "response_2")
        if _missing(row.get("preference_strength")):
            raise InpoError(f"{where}: missing field 'preference_strength'")
        s = _int_field(row["preference_strength"], where, "preference_strength", -3, 3)
        if s == 0:
            return None
        chosen, rejected = (r1, r2) if s < 0 else (r2, r1)
        return PreferencePair(prompt, chosen, rejected, abs(s), case or None)
    raise InpoError(
        f"{where}: missing field 'chosen' (rows need prompt, chosen, rejected or "
        "prompt, response_1, response_2, preference_strength)"
    )


def _read_rows(path: Path) -> Iterable[tuple[str, Any]]:
    from inpo.inputs import decode_utf8, json_loads, jsonl_lines, read_text

    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        for n, line in jsonl_lines(read_text(path)):  # UTF-8 checked; lines end at "\n" only
            yield f"{path}: line {n}", json_loads(line, f"{path}: line {n}")
    elif suffix == ".json":
        obj = json_loads(read_text(path), str(path))
        if isinstance(obj, Mapping) and isinstance(obj.get("data"), list):
            obj = obj["data"]
        if not isinstance(obj, list):
            raise InpoError(f"{path}: expected a JSON list of rows (or {{\"data\": [...]}})")
        for n, row in enumerate(obj, start=1):
            yield f"{path}: row {n}", row
    elif suffix in (".csv", ".tsv"):
        text = decode_utf8(path.read_bytes(), str(path))
        reader = csv.DictReader(io.StringIO(text, newline=""), delimiter="\t" if suffix == ".tsv" else ",")
        try:
            rows = list(reader)
        except csv.Error as e:
            raise InpoError(f"{path}: line {reader.line_num}: invalid {suffix[1:].upper()} ({e})") from None
        for n, row in enumerate(rows, start=1):
            yield f"{path}: row {n}", row
    elif suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path).to_pylist()
        except Exception as e:  # noqa: BLE001 - pyarrow raises several types for a damaged file
            raise InpoError(f"{path}: not a readable parquet file ({type(e).__name__})") from None
        for n, row in enumerate(table, start=1):
            yield f"{path}: row {n}", row
    else:
        raise InpoError(f"{path}: unsupported data format '{suffix}' (use .jsonl, .json, .csv, .tsv or .parquet)")


def load_preferences(data: str | Path | Sequence[Mapping[str, Any]] | Sequence[PreferencePair]) -> PreferenceData:
    """Read and validate preference data from a file path or in-memory rows."""
    if isinstance(data, (str, Path)):
        path = Path(data)
        if not path.exists():
            raise InpoError(f"{path}: data file not found")
        rows: Iterable[tuple[str, Any]] = _read_rows(path)
        source = str(path)
    else:
        rows = ((f"row {n}", r) for n, r in enumerate(data, start=1))
        source = "<memory>"
    pairs: list[PreferencePair] = []
    n_rows = n_ties = 0
    for where, row in rows:
        n_rows += 1
        pair = row if isinstance(row, PreferencePair) else parse_row(row, where)
        if pair is None:
            n_ties += 1
        else:
            pairs.append(pair)
    if not pairs:
        raise InpoError(f"{source}: no usable preference pairs ({n_rows} rows, {n_ties} ties dropped)")
    cases = sorted({p.case for p in pairs if p.case is not None})
    return PreferenceData(pairs=pairs, n_rows=n_rows, n_ties=n_ties, source=source, cases=cases)


def split_held_out(
    pairs: Sequence[PreferencePair], *, fraction: float, seed: int
) -> tuple[list[PreferencePair], list[PreferencePair]]:
    """Seeded held-out split, grouped by prompt when there are >= 5 distinct prompts.

    Grouping keeps every comparison of a prompt on one side (no leakage of a prompt's other pairs), so
    e.g. a held-out 3-cycle is complete. With fewer prompts the split is by row.
    Returns ``(train, held_out)``; ``fraction <= 0`` gives an empty held-out set.
    """
    if fraction <= 0:
        return list(pairs), []
    rng = random.Random(seed)
    prompts = sorted({p.prompt for p in pairs})
    if len(prompts) >= 5:
        rng.shuffle(prompts)
        n_held = max(1, round(fraction * len(prompts)))
        held = set(prompts[:n_held])
        return [p for p in pairs if p.prompt not in held], [p for p in pairs if p.prompt in held]
    idx = list(range(len(pairs)))
    rng.shuffle(idx)
    n_held = max(1, round(fraction * len(pairs))) if len(pairs) > 1 else 0
    held_idx = set(idx[:n_held])
    return (
        [p for i, p in enumerate(pairs) if i not in held_idx],
        [p for i, p in enumerate(pairs) if i in held_idx],
    )
