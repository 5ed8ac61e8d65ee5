"""The input boundary: every value that comes from outside (files, the command line, a run directory) is checked
here, once, so the code below can trust it. A bad value is an :class:`inpo.errors.InpoError` naming the file /
field / flag (the CLI prints one line and exits 2).

* text files: UTF-8 only, size-capped; JSONL split on ``"\\n"`` only (a raw U+2028 inside a JSON string is
  valid JSON, ``str.splitlines`` would cut it);
* YAML (configs, ``--set`` values): safe tags only, no aliases (an alias bomb expands a few hundred bytes into
  gigabytes), no duplicate keys (the last would silently win), nested at most ``MAX_DEPTH`` levels;
* JSON: nesting and huge integer literals (Python refuses > 4300 digits) are one-line errors;
* numbers: integers in range (seeds ``0 .. 2**63 - 1``, what numpy and torch accept), floats finite, sizes with
  upper bounds (``LIMITS``, ``TASK_LIMITS``) so an absurd size fails at once instead of after minutes of work;
* paths: no NUL byte; no output written inside a run directory unless it is that run's own artifact;
* optional extras (peft, vLLM, trackers) present before any work starts, naming the install command.
"""

from __future__ import annotations

import importlib.util
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from inpo.errors import InpoError

MAX_DEPTH = 64  # nesting of YAML / JSON documents we accept (configs are 3 levels deep)
MAX_SEED = 2**63 - 1  # torch.manual_seed and numpy accept 0 .. 2**64-1; int64 keeps every consumer happy
MAX_CONFIG_BYTES = 1 << 20  # a config / judge_config.json / state.json larger than 1 MiB is not one of ours

# Upper (and lower) bounds of the run config's sizes: (lo, hi) inclusive. pydantic checks types and the lower
# bounds the fields declare; these catch absurd values before any work (n_train_prompts: 1e8 ran for minutes).
LIMITS: dict[str, tuple[float, float]] = {
    "iterations": (1, 10_000),
    "seed": (0, MAX_SEED),
    "threads": (1, 1024),
    "peft.r": (1, 4096),
    "peft.alpha": (1, 1 << 20),
    "data.num_prompts": (1, 10_000_000),
    "data.num_eval_prompts": (1, 1_000_000),
    "data.max_prompt_length": (1, 1 << 20),
    "sampling.num_samples": (2, 1024),
    "sampling.temperature": (1e-3, 1e3),  # 1e-45 divides logits into inf/NaN; use a small value, not ~0
    "sampling.max_new_tokens": (1, 1 << 20),
    "sampling.batch_size": (1, 1 << 20),
    "train.epochs": (1, 10_000),
    "train.lr": (0.0, 100.0),
    "train.batch_size": (1, 1 << 20),
    "train.grad_accum": (1, 1 << 20),
    "train.max_grad_norm": (0.0, 1e12),
    "train.weight_decay": (0.0, 1e6),
    "train.logprob_batch_size": (1, 1 << 20),
    "train.logprob_chunk": (0, 1 << 30),
    "task.seed": (0, MAX_SEED),
}

# The built-in task's options (``task.options``, fields of inpo.tasks.BuiltinTaskConfig): numbers bounded here,
# the task's own rules (odd num_styles, heads dividing hidden_size, ...) checked by BuiltinTaskConfig.
TASK_LIMITS: dict[str, tuple[float, float]] = {
    "seed": (0, MAX_SEED), "num_styles": (3, 101), "num_topics": (1, 10_000), "num_fillers": (2, 100_000),
    "n_train_prompts": (1, 100_000), "n_eval_prompts": (1, 100_000), "n_sft_prompts": (1, 1_000_000),
    "nash_ratio": (1.0, 1e6), "max_margin": (0.0, 0.5), "sft_top_prob": (0.0, 1.0), "sft_none_prob": (0.0, 1.0),
    "sft_responses_per_prompt": (1, 1000), "sft_steps": (0, 1_000_000), "sft_batch_size": (1, 100_000),
    "sft_lr": (0.0, 100.0), "hidden_size": (1, 8192), "num_layers": (1, 128), "num_heads": (1, 128),
    "intermediate_size": (1, 65_536), "max_position_embeddings": (1, 65_536),
}
TASK_PAIRS = {"prompt_words": (0, 1000), "response_words": (0, 1000)}


# --------------------------------------------------------------------------------------------------
# text, JSON, JSONL
# --------------------------------------------------------------------------------------------------


def decode_utf8(data: bytes, source: str) -> str:
    """``data`` as text; not UTF-8 is one line naming the line and byte. A UTF-8 BOM is dropped."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise InpoError(f"{source}: line {line}: not UTF-8 text (byte {e.start})") from None


def read_text(path: str | Path, source: str | None = None, *, max_bytes: int | None = None) -> str:
    """A UTF-8 text file (one-line errors: missing, unreadable, too large, not UTF-8)."""
    p = Path(path)
    source = source or str(p)
    try:
        if max_bytes is not None and p.stat().st_size > max_bytes:
            raise InpoError(f"{source}: {p.stat().st_size} bytes; larger than the {max_bytes} this file may have")
        data = p.read_bytes()
    except FileNotFoundError:
        raise InpoError(f"{source}: file not found") from None
    except IsADirectoryError:
        raise InpoError(f"{source}: is a directory, expected a file") from None
    except OSError as e:
        raise InpoError(f"{source}: cannot read ({e.strerror or e})") from None
    return decode_utf8(data, source)


def json_loads(text: str, where: str) -> Any:
    """``json.loads`` whose every failure is one line: syntax, nesting too deep, integer literals too long."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        at = f" at line {e.lineno}" if "\n" in text.strip() else ""
        raise InpoError(f"{where}: invalid JSON{at} ({e.msg})") from None
    except RecursionError:
        raise InpoError(f"{where}: JSON nested too deeply") from None
    except ValueError as e:  # e.g. an integer literal of more than 4300 digits
        raise InpoError(f"{where}: invalid JSON ({str(e).split(';')[0]})") from None


def jsonl_lines(text: str) -> Iterator[tuple[int, str]]:
    """(1-based line number, line) of the non-blank lines of a JSONL text. Lines end at ``\\n`` only: JSON
    strings may hold U+2028 / U+2029 / form feeds, which ``str.splitlines`` would treat as line breaks."""
    for n, line in enumerate(text.split("\n"), start=1):
        if line.strip():
            yield n, line


def depth(obj: Any, limit: int = MAX_DEPTH) -> int:
    """Nesting depth of lists / dicts (iterative; stops counting past ``limit``)."""
    best, stack = 0, [(obj, 1)]
    while stack:
        o, d = stack.pop()
        if isinstance(o, dict | list | tuple):
            best = max(best, d)
            if d > limit:
                return d
            stack.extend((v, d + 1) for v in (o.values() if isinstance(o, dict) else o))
    return best


# --------------------------------------------------------------------------------------------------
# YAML: safe, no aliases, no duplicate keys, bounded depth
# --------------------------------------------------------------------------------------------------


class _Refused(yaml.YAMLError):
    """A YAML document we do not accept (alias, duplicate key, depth); the message says which line."""


class StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` refusing aliases, duplicate keys and nesting deeper than ``MAX_DEPTH``."""

    _depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:  # type: ignore[override]
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise _Refused(f"line {event.start_mark.line + 1}: YAML aliases (*{event.anchor}) are not allowed")
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark
                raise _Refused(f"line {mark.line + 1}: nested more than {MAX_DEPTH} levels deep")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                dup = key in seen
                seen.add(key)
            except TypeError:  # unhashable key: SafeConstructor reports it
                continue
            if dup:
                raise _Refused(f"line {key_node.start_mark.line + 1}: duplicate key {key!r}")
        return super().construct_mapping(node, deep)


def yaml_loads(text: str, source: str) -> Any:
    """Parse YAML text with :class:`StrictLoader`; every failure is one line naming ``source`` and the line."""
    try:
        return yaml.load(text, Loader=StrictLoader)  # noqa: S506 - StrictLoader is a SafeLoader
    except _Refused as e:
        raise InpoError(f"{source}: {e}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None)  # e.g. "could not determine a constructor for the tag ..."
        raise InpoError(f"{source}:{where} invalid YAML" + (f" ({problem})" if problem else "")) from None
    except RecursionError:
        raise InpoError(f"{source}: YAML nested too deeply") from None
    except ValueError as e:  # an integer literal of more than 4300 digits
        raise InpoError(f"{source}: invalid YAML ({str(e).split(';')[0]})") from None


def load_yaml_file(path: str | Path) -> Any:
    return yaml_loads(read_text(path, max_bytes=MAX_CONFIG_BYTES), str(path))


# --------------------------------------------------------------------------------------------------
# strings, paths, numbers
# --------------------------------------------------------------------------------------------------


def check_path(value: str | Path | None, name: str) -> None:
    """A path from the user: no NUL byte (the OS cannot represent it)."""
    if value is not None and "\x00" in str(value):
        raise InpoError(f"{name}: the path contains a NUL byte ({str(value)!r})")


def check_strings(data: Any, source: str, where: str = "") -> None:
    """No NUL byte in any string (or key) of a config document; the field is named."""
    stack = [(data, where)]
    while stack:
        obj, at = stack.pop()
        if isinstance(obj, str) and "\x00" in obj:
            raise InpoError(f"{source}: field '{at or '(top level)'}': contains a NUL byte")
        if isinstance(obj, dict):
            for k, v in obj.items():
                name = f"{at}.{k}" if at else str(k)
                if isinstance(k, str) and "\x00" in k:
                    raise InpoError(f"{source}: field {name!r}: the key contains a NUL byte")
                stack.append((v, name))
        elif isinstance(obj, list | tuple):
            stack.extend((v, f"{at}[{i}]") for i, v in enumerate(obj))


def check_int(name: str, value: Any, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise InpoError(f"{name}: must be an integer in [{lo}, {hi}], got {value!r}")
    return value


def check_float(name: str, value: Any, lo: float = -math.inf, hi: float = math.inf, *, lo_open: bool = False
                ) -> float:
    """A finite number in [lo, hi] (``lo_open``: (lo, hi])."""
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > lo if lo_open else value >= lo) and value <= hi
    if not ok:
        bounds = f"{'(' if lo_open else '['}{_fmt(lo)}, {_fmt(hi)}]"
        raise InpoError(f"{name}: must be a finite number in {bounds}, got {value!r}")
    return float(value)


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e19 else f"{x:g}"


def _get(cfg: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if cfg is None:
            return None
        cfg = getattr(cfg, part)
    return cfg


def check_run_limits(cfg: Any, source: str) -> None:
    """The run config's sizes and numbers within ``LIMITS`` / ``TASK_LIMITS`` (after pydantic's type checks)."""
    for dotted, (lo, hi) in LIMITS.items():
        value = _get(cfg, dotted)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float) or not (math.isfinite(value)
                                                                                and lo <= value <= hi):
            raise InpoError(f"{source}: field '{dotted}': must be in [{_fmt(lo)}, {_fmt(hi)}], got {value!r}")
    check_task_options(cfg.task.options, source)


def check_task_options(options: dict[str, Any], source: str) -> None:
    for name, value in options.items():
        field = f"{source}: field 'task.options.{name}'"
        if name in TASK_LIMITS:
            lo, hi = TASK_LIMITS[name]
            if isinstance(value, bool) or not isinstance(value, int | float) or not (math.isfinite(value)
                                                                                    and lo <= value <= hi):
                raise InpoError(f"{field}: must be a finite number in [{_fmt(lo)}, {_fmt(hi)}], got {value!r}")
        elif name in TASK_PAIRS and isinstance(value, list | tuple):
            lo, hi = TASK_PAIRS[name]
            if not all(isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi for v in value):
                raise InpoError(f"{field}: must be integers in [{lo}, {hi}], got {value!r}")


# --------------------------------------------------------------------------------------------------
# optional extras, output paths
# --------------------------------------------------------------------------------------------------

EXTRAS = {"peft": "pip install 'inpo[peft]'", "vllm": "pip install 'inpo[vllm]'", "wandb": "pip install wandb",
          "mlflow": "pip install mlflow", "tensorboard": "pip install tensorboard"}


def check_extras(cfg: Any) -> None:
    """The optional packages the config needs are installed (checked before any model is loaded)."""
    needed = []
    if cfg.peft is not None:
        needed.append(("peft", "peft (LoRA adapters)"))
    if cfg.sampling.backend == "vllm":  # vLLM in this environment or in the one `python -m inpo.vllm_env` built
        from inpo.vllm_env import resolve_python

        resolve_python(cfg.sampling.vllm_python)
    if cfg.log_with != "auto":
        needed += [(name, f"log_with: {name}") for name in cfg.log_with]
    for module, what in needed:
        if importlib.util.find_spec(module) is None:
            raise InpoError(f"{what} needs the '{module}' package, which is not installed: {EXTRAS[module]}")


def is_run_dir(path: Path) -> bool:
    return (path / "state.json").is_file() and (path / "config.yaml").is_file()


def refuse_inside_run(out: str | Path, what: str, *, allow_self: bool = False) -> None:
    """Refuse to write ``out`` inside a run directory (it would shadow or replace the run's own files, which a
    later ``--resume`` trusts). ``allow_self``: ``out`` may itself be a run directory (``inpo train -o``)."""
    check_path(out, what)
    p = Path(out).absolute()
    candidates = list(p.parents) if allow_self else [p, *p.parents]
    for d in candidates:
        if is_run_dir(d):
            raise InpoError(f"{what} {out}: inside the run directory {d}, whose files only `inpo train` writes; "
                            "choose a path outside it")


def check_argv(argv: list[str]) -> None:
    for a in argv:
        if "\x00" in a:
            raise InpoError(f"command line: argument {a!r} contains a NUL byte")


# --------------------------------------------------------------------------------------------------
# command-line options of `inpo game`, `inpo judge *`
# --------------------------------------------------------------------------------------------------

MAX_ACTIONS = 4096
MAX_GAME_ENTRIES = 1 << 24  # X * A * A float64 entries of a game: 128 MiB


def check_game_args(*, actions: int, contexts: int, iterations: int, seed: int, eta: float, tau: float,
                    beta: float | None, pairs: int, steps: int, lr: float) -> None:
    """``inpo game``'s options: finite positive rates, seeds in range, sizes bounded before anything is built."""
    check_int("--actions", actions, 2, MAX_ACTIONS)
    check_int("--contexts", contexts, 1, MAX_GAME_ENTRIES // 4)
    if contexts * actions * actions > MAX_GAME_ENTRIES:
        raise InpoError(f"--contexts x --actions^2 = {contexts * actions * actions} entries; at most "
                        f"{MAX_GAME_ENTRIES} (use fewer contexts or actions)")
    check_int("--iterations", iterations, 1, 1_000_000)
    check_int("--seed", seed, 0, MAX_SEED)
    check_float("--eta", eta, 0.0, 1e6, lo_open=True)
    check_float("--tau", tau, 0.0, 1e6, lo_open=True)
    if beta is not None:
        check_float("--beta", beta, 0.0, 1e6, lo_open=True)
    check_int("--pairs", pairs, 1, 1_000_000)
    check_int("--steps", steps, 1, 100_000)
    check_float("--lr", lr, 0.0, 1e6, lo_open=True)


def check_game_file(path: Path, arr: Any, name: str) -> None:
    """A user game loaded from ``.npy``: a real numeric array (a complex one would lose its imaginary part)
    of at most ``MAX_GAME_ENTRIES`` entries."""
    kind = getattr(getattr(arr, "dtype", None), "kind", None)
    if kind not in ("f", "i", "u"):
        what = {"c": "complex", "b": "boolean", "O": "object", "U": "string", "S": "bytes"}.get(kind or "", str(kind))
        raise InpoError(f"{name}: a {what} array; a game is real numbers in [0, 1]")
    if arr.size > MAX_GAME_ENTRIES:
        raise InpoError(f"{name}: {arr.size} entries; at most {MAX_GAME_ENTRIES}")


def check_judge_train_args(*, epochs: int, lr: float | None, batch_size: int, seed: int, dim: int,
                           temperature: float, held_out: float, max_length: int, lora_r: int = 0,
                           lora_alpha: int = 16, threads: int | None = None) -> None:
    check_int("--epochs", epochs, 1, 100_000)
    if lr is not None:  # None: the size-dependent default
        check_float("--lr", lr, 0.0, 100.0, lo_open=True)
    check_int("--lora-r", lora_r, 0, 4096)
    check_int("--lora-alpha", lora_alpha, 1, 1 << 20)
    if threads is not None:
        check_int("--threads", threads, 1, 1024)
    check_int("--batch-size", batch_size, 1, 1 << 20)
    check_int("--seed", seed, 0, MAX_SEED)
    check_int("--dim", dim, 2, 4096)
    check_float("--temperature", temperature, 1e-3, 1e3)
    check_float("--held-out", held_out, 0.0, 0.95)
    check_int("--max-length", max_length, 2, 1 << 20)


def check_judge_config(config: dict[str, Any], path: Path) -> None:
    """``judge_config.json``'s numbers: temperature finite and >= 1e-3 (0 made every P = 1/2), sizes positive."""
    if "temperature" in config:
        check_float(f"{path}: field 'temperature'", config["temperature"], 1e-3, 1e3)
    if "max_length" in config:
        check_int(f"{path}: field 'max_length'", config["max_length"], 2, 1 << 20)
    if "dim" in config:
        check_int(f"{path}: field 'dim'", config["dim"], 2, 4096)
