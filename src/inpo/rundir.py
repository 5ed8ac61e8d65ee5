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
from pydantic import BaseModel, ConfigDict, Field, ValidationError

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
        try:
            torch.save(obj, tmp)
        except RuntimeError as e:  # a full disk inside torch's C++ writer ("basic_ios::clear", "failed writing")
            tmp.unlink(missing_ok=True)
            raise OSError(f"torch.save failed: {str(e).splitlines()[0] if str(e) else 'write error'}") from None
        except OSError:
            tmp.unlink(missing_ok=True)
            raise
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
        self._lock_fd: int | None = None

    def iter_dir(self, t: int) -> Path:
        return self.path / f"iter_{t}"

    def stage(self, t: int, name: str) -> Path:
        d = self.path / "stages" / f"iter_{t}"
        d.mkdir(parents=True, exist_ok=True)
        return d / f"{name}.pt"

    def read_state(self) -> dict[str, Any]:
        """``state.json`` checked against its schema (:class:`State`); ``{}`` when there is none yet."""
        p = self.path / "state.json"
        if not p.exists():
            return {}
        return validate_state(read_run_json(p, "state file"), p)

    def write_state(self, state: dict[str, Any]) -> None:
        atomic_write_text(self.path / "state.json", json.dumps(state, indent=1))

    def read_metrics(self) -> list[dict[str, Any]]:
        p = self.path / "metrics.jsonl"
        if not p.exists():
            return []
        from inpo.inputs import jsonl_lines, read_text

        rows = []
        for n, line in jsonl_lines(read_text(p)):
            try:
                row = json.loads(line)
            except (ValueError, RecursionError) as e:
                msg = e.msg if isinstance(e, json.JSONDecodeError) else type(e).__name__
                raise InpoError(f"{p}: line {n}: damaged metrics row ({msg})") from None
            rows.append(validate_metrics_row(row, f"{p}: line {n}"))
        for i, row in enumerate(rows):
            if row["iteration"] != i:
                raise InpoError(f"{p}: row {i + 1} is iteration {row['iteration']}, expected {i} (rows are iterations "
                                "0, 1, 2, ... in order); the file was edited or damaged")
        return rows

    def write_metrics(self, rows: list[dict[str, Any]]) -> None:
        atomic_write_text(self.path / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in rows))

    def save_checkpoint(self, t: int, model: torch.nn.Module, tokenizer: Any,
                        state_dict: dict[str, torch.Tensor] | None = None) -> None:
        """pi_{t+1}, the policy after iteration t, as ``iter_<t>/`` (see :func:`save_checkpoint`)."""
        save_checkpoint(model, tokenizer, self.iter_dir(t), state_dict=state_dict)

    def verify(self, state: dict[str, Any]) -> int:
        """The run's files agree with each other: ``state.json``'s completed iterations n, ``metrics.jsonl``'s rows
        0..n (a row n+1 and ``iter_<n+1>/`` may exist: killed after writing them, before ``state.json``) and the
        checkpoints ``iter_1/ .. iter_<n>/``. Returns n; a mismatch is a one-line error naming the file."""
        done = int(state.get("completed_iterations", 0))
        state_file = self.path / "state.json"
        metrics_file = self.path / "metrics.jsonl"
        rows = self.read_metrics()
        if done > 0 and not metrics_file.exists():
            raise InpoError(f"{metrics_file}: missing, but {state_file} records {done} completed iterations; the "
                            "metrics would be lost (restore the file, or start again with --overwrite)")
        last = len(rows) - 1
        if rows and not done <= last <= done + 1:
            raise InpoError(f"{metrics_file}: has rows for iterations 0..{last} but {state_file} records {done} "
                            "completed iterations; the files do not belong together")
        if done > 0 and last < done:
            raise InpoError(f"{metrics_file}: has no row for iteration {done}, which {state_file} records as "
                            "completed; the files do not belong together")
        for t in range(1, done + 1):
            if not self.iter_dir(t).is_dir():
                raise InpoError(f"{self.iter_dir(t)}: checkpoint missing, but {state_file} records {done} completed "
                                "iterations")
        for d in self.path.glob("iter_*"):
            t_str = d.name.removeprefix("iter_")
            if t_str.isdigit() and int(t_str) > done + 1:
                raise InpoError(f"{d}: a checkpoint after iteration {done + 1}, but {state_file} records {done} "
                                "completed iterations; the files do not belong together")
        return done

    def lock(self) -> None:
        """Hold an exclusive lock on the run directory (``flock`` on the directory itself: no file is written)
        until :meth:`unlock` or the process ends; a second ``inpo train`` on the same run is refused."""
        if self._lock_fd is not None or not self.path.is_dir():
            return
        import fcntl

        fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise InpoError(f"{self.path}: another inpo process is using this run directory; wait for it to end "
                            "(two processes writing one run would mix their files)") from None
        self._lock_fd = fd

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor releases the flock
            self._lock_fd = None

    def clean_temp(self) -> list[Path]:
        """Remove what a run killed mid-write leaves: ``.iter_<t>.tmp/`` checkpoints, ``.<name>.tmp`` files (also
        in ``stages/iter_<t>/``) and the plot's temp file. Only inpo's own temp names are touched."""
        found = [*self.path.glob(".iter_*.tmp"), *self.path.glob(".*.tmp"), *self.path.glob(".metrics.png.tmp.png"),
                 *self.path.glob("stages/iter_*/.*.tmp")]
        for p in found:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
        return found

    def check(self, cfg: RunConfig, *, resume: bool, overwrite: bool, allow_change: bool = False) -> int | None:
        """Refuse a bad start before any work or write: the completed iterations to resume from, or None for a
        fresh run. A directory that is not an inpo run is never deleted, not even with ``overwrite``.
        ``allow_change`` resumes a run under a changed config (e.g. a lower learning rate after a NaN)."""
        h = config_hash(cfg)
        if self.path.exists() and not self.path.is_dir():
            raise InpoError(f"{self.path}: output_dir exists and is not a directory")
        if self.path.is_dir() and any(self.path.iterdir()):
            cfg_file = self.path / "config.yaml"
            try:
                state = self.read_state()
            except InpoError:
                if overwrite and cfg_file.is_file():  # a damaged run may be replaced, as its message says
                    return None
                raise
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
            done = self.verify(state)
            if cfg.iterations < done:
                raise InpoError(f"{self.path}: the run has completed {done} iterations; iterations={cfg.iterations} "
                                f"would shorten it (give -T {done} or more to resume it)")
            return done
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
            self.clean_temp()
            if state["config_hash"] != config_hash(cfg):
                for stage_dir in (self.path / "stages").glob("iter_*"):
                    if int(stage_dir.name.removeprefix("iter_")) > done:
                        shutil.rmtree(stage_dir)
                # the baseline's cached eval samples depend on the eval prompts and sampling: made afresh
                (self.path / "stages" / "iter_0" / "eval_ref_samples.pt").unlink(missing_ok=True)
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
                self.unlock()  # the lock was on the directory just removed
            self.path.mkdir(parents=True, exist_ok=True)
            self.lock()
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


class ConfigChange(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)
    after_iteration: int = Field(ge=0)
    to: str


class State(BaseModel):
    """``state.json``. Unknown keys are kept (later versions may add some); the known ones are type-checked
    strictly (``"2"`` is not 2, ``true`` is not 1)."""

    model_config = ConfigDict(extra="allow", strict=True)
    config_hash: str = Field(pattern=r"^[0-9a-f]{16}$")
    completed_iterations: int = Field(ge=0, le=1_000_000)
    versions: dict[str, str] = Field(default_factory=dict)
    config_changes: list[ConfigChange] = Field(default_factory=list)


def read_run_json(path: Path, what: str) -> Any:
    """A JSON file of a run directory: UTF-8, size-capped, parsed; a damaged one is a one-line error."""
    from inpo.inputs import MAX_CONFIG_BYTES, decode_utf8

    try:
        data = path.read_bytes()
    except OSError as e:
        raise InpoError(f"{path}: cannot read the {what} ({e.strerror or e})") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise InpoError(f"{path}: corrupt {what} ({len(data)} bytes); use --overwrite to start the run again")
    try:
        return json.loads(decode_utf8(data, str(path)))
    except InpoError as e:
        raise InpoError(f"corrupt {what}: {e}; use --overwrite to start the run again") from None
    except (ValueError, RecursionError) as e:
        msg = e.msg if isinstance(e, json.JSONDecodeError) else type(e).__name__
        raise InpoError(f"{path}: corrupt {what} ({msg}); use --overwrite to start the run again") from None


def validate_state(raw: Any, path: Path) -> dict[str, Any]:
    """``raw`` (parsed ``state.json``) checked against :class:`State`; returned unchanged (unknown keys kept)."""
    if not isinstance(raw, dict):
        raise InpoError(f"{path}: corrupt state file (expected a JSON object, got {type(raw).__name__}); use "
                        "--overwrite to start the run again")
    try:
        State.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(x) for x in err["loc"]) or "(top level)"
        raise InpoError(f"{path}: corrupt state file: field '{loc}': {err['msg']} (got {err.get('input')!r:.60}); "
                        "use --overwrite to start the run again") from None
    return raw


def validate_metrics_row(row: Any, where: str) -> dict[str, Any]:
    """One ``metrics.jsonl`` row: an object with an integer ``iteration`` >= 0 and numeric (or null) values."""
    if not isinstance(row, dict):
        raise InpoError(f"{where}: damaged metrics row (expected a JSON object, got {type(row).__name__})")
    it = row.get("iteration")
    if isinstance(it, bool) or not isinstance(it, int) or it < 0:
        raise InpoError(f"{where}: damaged metrics row (no integer 'iteration' >= 0)")
    for k, v in row.items():
        if v is not None and (isinstance(v, bool) or not isinstance(v, int | float)):
            raise InpoError(f"{where}: not a metrics row (field '{k[:60]}' is a {type(v).__name__}, metrics are "
                            "numbers)")
    return row


def check_artifact(path: Path, obj: Any, n: int) -> Any:
    """A stage artifact loaded from disk has the shape the loop writes for ``n`` prompts (K responses each):
    ``*_samples.pt`` a list of n*K token lists (or ``{"responses": that list, "logps": [n*K]}``),
    ``*_judgements.pt`` a float tensor [n, K, K], ``*_logps.pt`` a dict of float tensors [n*K]. Anything else is
    a one-line error naming the file."""
    def bad(why: str) -> InpoError:
        return InpoError(f"{path}: not this run's stage artifact ({why}); delete it to recompute the stage")

    name = path.name
    if name.endswith("_samples.pt") and isinstance(obj, dict):  # with the sampler's log-probs (plain sampling)
        lp = obj.get("logps")
        if set(obj) != {"responses", "logps"} or not (isinstance(lp, torch.Tensor) and lp.is_floating_point()
                                                      and lp.dim() == 1 and isinstance(obj["responses"], list)
                                                      and lp.shape[0] == len(obj["responses"])):
            raise bad(f"expected {{'responses': {n} x K token lists, 'logps': a float tensor of as many}}")
        check_artifact(path, obj["responses"], n)
    elif name.endswith("_samples.pt"):
        if not isinstance(obj, list) or len(obj) % max(n, 1) or len(obj) < 2 * n:
            got = f"a list of {len(obj)}" if isinstance(obj, list) else f"a {type(obj).__name__}"
            raise bad(f"expected a list of {n} x K token lists, got {got}")
        if not all(isinstance(r, list) and all(isinstance(x, int) and x >= 0 for x in r) for r in obj):
            raise bad("expected lists of token ids")
    elif name.endswith("_judgements.pt"):
        if not (isinstance(obj, torch.Tensor) and obj.is_floating_point() and obj.dim() == 3 and obj.shape[0] == n
                and obj.shape[1] == obj.shape[2] >= 2):
            shape = tuple(obj.shape) if isinstance(obj, torch.Tensor) else type(obj).__name__
            raise bad(f"expected a float tensor [{n}, K, K], got {shape}")
    elif name.endswith("_logps.pt"):
        if not isinstance(obj, dict) or not obj or not all(
                isinstance(k, str) and isinstance(v, torch.Tensor) and v.is_floating_point() and v.dim() == 1
                and v.shape[0] % max(n, 1) == 0 and v.shape[0] >= 2 * n for k, v in obj.items()):
            raise bad(f"expected a dict of float tensors [{n} x K]")
        if len({v.shape[0] for v in obj.values()}) != 1:
            raise bad("its log-prob tensors differ in length")
    return obj


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
                  lockstep: bool = False, **kwargs: Any) -> Any:
    """A stage split by prompt across processes: process r computes ``make(prompt_indices[r::world], ...)``,
    the parts are gathered back into prompt order on every process and the main process writes the
    artifact (atomically). With one process this is ``staged(path, make, range(n), ...)``.

    ``lockstep`` (a sharded model, FSDP2: every process must run the same forwards): a process with one
    prompt fewer than the others also computes prompt 0 again, as its last, and drops that result."""
    if path.exists():
        return check_artifact(path, load_stage(path), n)
    world, rank = accelerator.num_processes, accelerator.process_index
    if world == 1:
        obj = make(list(range(n)), *args, **kwargs)
    else:
        from accelerate.utils import gather_object

        mine = list(range(rank, n, world))
        filler = lockstep and len(mine) < -(-n // world)
        local = make(mine + [0] if filler else mine, *args, **kwargs)
        chunks: list[Any] = [None] * n
        own = _split(local, len(mine) + filler)[: len(mine)] if mine else []
        for r, part in gather_object([(rank, own)]):
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


def save_checkpoint(model: torch.nn.Module, tokenizer: Any, path: Path,
                    state_dict: dict[str, torch.Tensor] | None = None) -> None:
    """``save_pretrained`` (safetensors) of model and tokenizer into a temp dir, then renamed to ``path``.
    ``state_dict``: the model's full weights when the model itself holds only shards (FSDP2)."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        if tmp.exists():
            shutil.rmtree(tmp)
        if state_dict is None:
            model.save_pretrained(tmp, safe_serialization=True)
        else:  # save_pretrained empties the dict it is given
            model.save_pretrained(tmp, state_dict=dict(state_dict), safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise InpoError(f"{path}: cannot write checkpoint ({e.strerror or e}); earlier checkpoints and "
                        "metrics.jsonl are kept, resume with --resume") from None

