"""The run directory: ``config.yaml``, ``state.json``, ``metrics.jsonl``, ``iter_<t>/`` checkpoints,
``stages/iter_<t>/*.pt`` artifacts, plots.

Every file is written atomically (temp file + rename), so a run killed anywhere leaves only whole files. A
stage (:func:`staged`, :func:`sharded_stage`) whose artifact exists is loaded instead of recomputed, and every
random phase is seeded by (seed, t, step, phase) (:func:`seed_for`): a killed run resumes from its last artifact
and ends bit-identical to an uninterrupted one on CPU.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator

from inpo.config import CONFIG_VERSION, RunConfig, check_run_version, dump_config
from inpo.errors import InpoError


@contextmanager
def writing(path: Path, what: str) -> Iterator[None]:
    """Turn an OSError while writing ``path`` (disk full, permission denied) into a one-line InpoError."""
    try:
        yield
    except OSError as e:
        raise InpoError(f"{path}: cannot write {what} ({e.strerror or e}); the previous files are kept") from None


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with writing(path, "file"):
        tmp.write_text(text)
        os.replace(tmp, path)


def atomic_torch_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with writing(path, "stage artifact"):
        torch.save(obj, tmp)
        os.replace(tmp, path)


def config_hash(cfg: RunConfig) -> str:
    """Hash of everything that defines the run except where it lives (a moved or copied run dir resumes) and how
    many iterations it runs (``--resume DIR --iterations T`` extends a run: nothing in iteration t depends on T)."""
    blank = cfg.model_copy(update={"output_dir": "", "iterations": 1})
    return hashlib.sha256(dump_config(blank).encode()).hexdigest()[:16]


class RunDir:
    """``config.yaml``, ``state.json``, ``metrics.jsonl``, ``iter_<t>/`` checkpoints, ``stages/``, plots."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def iter_dir(self, t: int) -> Path:
        return self.path / f"iter_{t}"

    def stage(self, t: int, name: str) -> Path:
        d = self.path / "stages" / f"iter_{t}"
        d.mkdir(parents=True, exist_ok=True)
        return d / f"{name}.pt"

    def read_state(self) -> dict[str, Any]:
        p = self.path / "state.json"
        try:
            return json.loads(p.read_text()) if p.exists() else {}
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise InpoError(f"{p}: corrupt state file ({e}); use --overwrite to start the run again") from None

    def write_state(self, state: dict[str, Any]) -> None:
        atomic_write_text(self.path / "state.json", json.dumps(state, indent=1))

    def read_metrics(self) -> list[dict[str, Any]]:
        p = self.path / "metrics.jsonl"
        if not p.exists():
            return []
        rows = []
        for n, line in enumerate(p.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise InpoError(f"{p}: line {n}: damaged metrics row ({e.msg})") from None
            if not isinstance(row, dict) or not isinstance(row.get("iteration"), int):
                raise InpoError(f"{p}: line {n}: damaged metrics row (no integer 'iteration')")
            rows.append(row)
        return rows

    def write_metrics(self, rows: list[dict[str, Any]]) -> None:
        atomic_write_text(self.path / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in rows))

    def save_checkpoint(self, t: int, model: torch.nn.Module, tokenizer: Any) -> None:
        """pi_{t+1}, the policy after iteration t, as ``iter_<t>/`` (see :func:`save_checkpoint`)."""
        save_checkpoint(model, tokenizer, self.iter_dir(t))

    def check(self, cfg: RunConfig, *, resume: bool, overwrite: bool, allow_change: bool = False) -> int | None:
        """Refuse a bad start before any work or write: the completed iterations to resume from, or None for a
        fresh run. A directory that is not an inpo run is never deleted, not even with ``overwrite``.
        ``allow_change`` resumes a run under a changed config (e.g. a lower learning rate after a NaN)."""
        h = config_hash(cfg)
        if self.path.exists() and not self.path.is_dir():
            raise InpoError(f"{self.path}: output_dir exists and is not a directory")
        if self.path.is_dir() and any(self.path.iterdir()):
            state = self.read_state()
            cfg_file = self.path / "config.yaml"
            if "config_hash" not in state and not cfg_file.is_file():
                raise InpoError(f"{self.path}: output_dir is not empty and holds no inpo run; refusing to use or "
                                "delete it (choose another --output-dir)")
            if overwrite:
                return None
            if not resume:
                raise InpoError(f"{self.path}: run directory already holds a run (use --resume to continue it "
                                "or --overwrite to replace it)")
            check_run_version(self.path)  # a run made under other field meanings (e.g. algo.eta) never resumes
            if "config_hash" not in state and cfg_file.read_text() == dump_config(cfg):
                return 0  # killed between writing config.yaml and state.json
            if state.get("config_hash") != h and not allow_change:
                raise InpoError(f"{self.path}: holds a run with a different config (config.yaml differs); "
                                "use --overwrite to replace it, or --allow-config-change to continue it under "
                                "the new config")
            return int(state.get("completed_iterations", 0))
        if resume:
            raise InpoError(f"{self.path}: nothing to resume (no run there)")
        return None

    def prepare(self, cfg: RunConfig, *, resume: bool, overwrite: bool, allow_change: bool = False) -> int:
        """Create or reopen the run directory; return the number of completed iterations.

        A run resumed under a changed config (``allow_change``) drops the stages of the iterations it has not
        finished (they were made under the old config) and records the change in ``state.json``."""
        done = self.check(cfg, resume=resume, overwrite=overwrite, allow_change=allow_change)
        state = self.read_state()
        if done is not None and "config_hash" in state:
            if state["config_hash"] != config_hash(cfg):
                for stage_dir in (self.path / "stages").glob("iter_*"):
                    if int(stage_dir.name.removeprefix("iter_")) > done:
                        shutil.rmtree(stage_dir)
                changes = [*state.get("config_changes", []), {"after_iteration": done, "from": state["config_hash"],
                                                               "to": config_hash(cfg)}]
                self.write_state({**state, "config_hash": config_hash(cfg), "config_changes": changes})
            if (self.path / "config.yaml").read_text() != dump_config(cfg):  # extended (T), moved or changed
                atomic_write_text(self.path / "config.yaml", dump_config(cfg))
            return done
        try:
            if done is None and self.path.exists():  # --overwrite: move aside first, so a kill mid-delete
                trash = self.path.with_name(f".{self.path.name}.old")  # leaves no half-deleted run behind
                shutil.rmtree(trash, ignore_errors=True)
                os.replace(self.path, trash)
                shutil.rmtree(trash)
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise InpoError(f"{self.path}: cannot create the run directory ({e.strerror or e})") from None
        atomic_write_text(self.path / "config.yaml", dump_config(cfg))
        self.write_state({"config_hash": config_hash(cfg), "config_version": CONFIG_VERSION, "completed_iterations": 0,
                          "versions": versions()})
        return 0




def versions() -> dict[str, str]:
    """Package versions and the git revision of the inpo checkout, recorded in ``state.json``."""
    import accelerate
    import transformers

    import inpo

    out = {"inpo": inpo.__version__, "torch": torch.__version__, "transformers": transformers.__version__,
           "accelerate": accelerate.__version__}
    try:  # the git revision of the inpo checkout, when it is one
        import subprocess

        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(inpo.__file__).parent, capture_output=True,
                             text=True, timeout=5)
        if rev.returncode == 0:
            out["inpo_git_revision"] = rev.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return out


def load_stage(path: Path) -> Any:
    """A stage artifact, read with ``weights_only=True`` (tensors and plain containers: no code runs)."""
    try:
        return torch.load(path, weights_only=True)
    except Exception as e:  # noqa: BLE001 - a foreign or damaged file: say which, do not show the unpickler's trace
        raise InpoError(f"{path}: not a readable stage artifact ({type(e).__name__}); delete it to recompute "
                        "the stage") from None


def staged(path: Path, make: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Load a stage's artifact if it exists, else compute ``make(*args, **kwargs)`` and save it atomically."""
    if path.exists():
        return load_stage(path)
    obj = make(*args, **kwargs)
    atomic_torch_save(obj, path)
    return obj


def _split(obj: Any, n: int) -> list[Any]:
    """Per-prompt chunks of a stage result (lists and tensors hold the same number of rows per prompt)."""
    if isinstance(obj, dict):
        per_key = {k: _split(v, n) for k, v in obj.items()}
        return [{k: per_key[k][i] for k in obj} for i in range(n)]
    if isinstance(obj, torch.Tensor):
        return list(obj.reshape(n, -1, *obj.shape[1:]).unbind(0))
    m = len(obj) // n
    return [obj[i * m : (i + 1) * m] for i in range(n)]


def _merge(chunks: list[Any]) -> Any:
    if isinstance(chunks[0], dict):
        return {k: _merge([c[k] for c in chunks]) for k in chunks[0]}
    if isinstance(chunks[0], torch.Tensor):
        return torch.cat(chunks, 0)
    return [x for c in chunks for x in c]


def sharded_stage(accelerator: Accelerator, path: Path, make: Callable[..., Any], n: int, *args: Any,
                  **kwargs: Any) -> Any:
    """A stage split by prompt across processes: process r computes ``make(prompt_indices[r::world], ...)``,
    the parts are gathered back into prompt order on every process and the main process writes the
    artifact (atomically). With one process this is ``staged(path, make, range(n), ...)``."""
    if path.exists():
        return load_stage(path)
    world, rank = accelerator.num_processes, accelerator.process_index
    if world == 1:
        obj = make(list(range(n)), *args, **kwargs)
    else:
        from accelerate.utils import gather_object

        mine = list(range(rank, n, world))
        local = make(mine, *args, **kwargs)
        chunks: list[Any] = [None] * n
        for r, part in gather_object([(rank, _split(local, len(mine)) if mine else [])]):
            chunks[r::world] = part
        obj = _merge(chunks)
    if accelerator.is_main_process:
        atomic_torch_save(obj, path)
    accelerator.wait_for_everyone()
    return obj


def seed_for(cfg: RunConfig, t: int, step: int, phase: str) -> int:
    """The seed of one random phase (sample, pairs, train, eval) of iteration t, step ``step``."""
    digest = hashlib.sha256(f"{cfg.seed}/{t}/{step}/{phase}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def save_checkpoint(model: torch.nn.Module, tokenizer: Any, path: Path) -> None:
    """``save_pretrained`` (safetensors) of model and tokenizer into a temp dir, then renamed to ``path``."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        if tmp.exists():
            shutil.rmtree(tmp)
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise InpoError(f"{path}: cannot write checkpoint ({e.strerror or e}); earlier checkpoints and "
                        "metrics.jsonl are kept, resume with --resume") from None

