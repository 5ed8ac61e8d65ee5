"""THE iterative loop, one file, top to bottom.

    for t = 1..T:
        for each step of the algorithm (1; EGPO: 2):
            sample K responses per prompt from the current policy (or, for Nash-MD, from the
                geometric mixture of pi_t and pi_ref)                              -> stages/iter_t/s*_samples.pt
            judge: the K x K preference matrix of each prompt                         -> s*_judgements.pt
            cache sequence log-probs of pi_ref, pi_t (and past iterates for MNPO)     -> s*_logps.pt
            build pairs (all with soft labels | best-vs-worst | random) and train the policy on the
                algorithm's loss for E epochs (AdamW, warm-up, clipping, accumulation)
        save pi_{t+1} as iter_t/ (save_pretrained, safetensors), evaluate, append metrics.jsonl

Each stage's artifact is written atomically (temp file + rename) and every random phase is seeded by
(seed, t, step, phase), so a run killed anywhere resumes (``resume=True``) from its last artifact and
ends bit-identical to an uninterrupted run on CPU.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from inpo.algorithms import ALGORITHMS, Algorithm, LossInputs, Pairs, build_pairs, win_rates
from inpo.config import RunConfig, dump_config
from inpo.data import Prompt, load_prompts
from inpo.errors import InpoError
from inpo.evaluate import game_metrics, kl_estimate, mean_length, symmetric_win_scores, win_rate
from inpo.judges.base import Judge
from inpo.logprobs import batched_sequence_logprobs, collate, sequence_logprobs
from inpo.losses import preference_metrics
from inpo.sampling import sample_responses


class NonFiniteError(InpoError):
    """A NaN/inf loss or gradient: the iteration stops, the last good checkpoint is kept."""


# --------------------------------------------------------------------------------------------------
# Set-up: models, tokenizer, prompts, judge
# --------------------------------------------------------------------------------------------------


@dataclass
class Setup:
    tokenizer: Any
    policy: torch.nn.Module
    ref: torch.nn.Module
    ref_path: Path
    train_prompts: list[Prompt]
    eval_prompts: list[Prompt]
    judge: Judge
    task: Any | None  # the built-in task (exact game metrics) or None
    pad_id: int
    eos_id: int


def load_causal_lm(path: str | Path, *, trust_remote_code: bool = False) -> torch.nn.Module:
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one line per load is noise in our own progress display

    p = Path(path)
    if not p.exists():
        raise InpoError(f"model.path: {path} does not exist")
    try:
        config = AutoConfig.from_pretrained(p, trust_remote_code=trust_remote_code)
    except Exception as e:  # noqa: BLE001
        raise InpoError(f"model.path: {path} is not a transformers model directory ({type(e).__name__})") from None
    try:
        model = AutoModelForCausalLM.from_pretrained(p, trust_remote_code=trust_remote_code, use_safetensors=True)
    except Exception as e:  # noqa: BLE001
        raise InpoError(
            f"model.path: {path} ({config.model_type}) could not be loaded as a causal LM with safetensors "
            f"weights ({type(e).__name__})"
        ) from None
    return model


def load_tokenizer(path: str | Path, *, trust_remote_code: bool = False) -> Any:
    from transformers import AutoTokenizer

    if not Path(path).exists():
        raise InpoError(f"model.path: {path} does not exist")
    try:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except Exception as e:  # noqa: BLE001
        raise InpoError(f"model.path: {path}: no loadable tokenizer ({type(e).__name__})") from None
    if tok.eos_token_id is None:
        raise InpoError(f"model.path: {path}: the tokenizer has no eos_token; responses could not end")
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token  # padding is masked everywhere; EOS as pad is safe
    return tok


class AdapterDisabled(torch.nn.Module):
    """pi_ref of a LoRA policy: the same peft model run with its adapter disabled (no weight copy)."""

    def __init__(self, peft_model: torch.nn.Module) -> None:
        super().__init__()
        self.peft_model = peft_model

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        with self.peft_model.disable_adapter(), torch.no_grad():
            return self.peft_model(*args, **kwargs)

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        with self.peft_model.disable_adapter():
            return self.peft_model.generate(*args, **kwargs)


def load_policy(path: str | Path, cfg: RunConfig, base_path: str | Path) -> torch.nn.Module:
    """A saved iterate: a full model, or (with ``peft``) the LoRA adapter in ``path`` on the base model."""
    if cfg.peft is None:
        return load_causal_lm(path, trust_remote_code=cfg.model.trust_remote_code)
    from peft import PeftModel

    base = load_causal_lm(base_path, trust_remote_code=cfg.model.trust_remote_code)
    return PeftModel.from_pretrained(base, str(path), is_trainable=True)


def build_setup(cfg: RunConfig, console: Console, *, progress: bool) -> Setup:
    task = None
    if cfg.model.path is None:
        from inpo.tasks import BuiltinTask, BuiltinTaskConfig, build_reference

        try:
            task_cfg = BuiltinTaskConfig(**{"seed": cfg.task.seed, **cfg.task.options})
        except TypeError as e:
            raise InpoError(f"task.options: {e}") from None
        task = BuiltinTask(task_cfg)
        ref_path = build_reference(task, cfg.task.sft_cache, progress=progress)
    else:
        ref_path = Path(cfg.model.path)
    trc = cfg.model.trust_remote_code
    tokenizer = load_tokenizer(ref_path, trust_remote_code=trc)
    policy = load_causal_lm(ref_path, trust_remote_code=trc)
    n_emb = policy.get_input_embeddings().num_embeddings
    if len(tokenizer) > n_emb:  # token ids past the embedding would crash generation with an IndexError
        raise InpoError(f"model.path: {ref_path}: the tokenizer has {len(tokenizer)} tokens but the model's embedding "
                        f"only {n_emb} rows (tokenizer and model do not match)")
    ref: torch.nn.Module
    if cfg.peft is not None:
        from peft import LoraConfig, get_peft_model

        p = cfg.peft
        try:
            policy = get_peft_model(policy, LoraConfig(r=p.r, lora_alpha=p.alpha, lora_dropout=p.dropout,
                                                       target_modules=p.target_modules, task_type="CAUSAL_LM"))
        except ValueError as e:  # e.g. target modules not in the model (peft's NoMatchingPeftModuleError)
            raise InpoError(f"peft.target_modules: {str(e).splitlines()[0]}") from None
        ref = AdapterDisabled(policy)
    else:
        ref = load_causal_lm(ref_path, trust_remote_code=trc)
        ref.requires_grad_(False).eval()

    d = cfg.data
    if task is not None:
        def as_prompts(texts: list[str]) -> list[Prompt]:
            return [Prompt(t, tokenizer(t).input_ids) for t in texts]

        train_p, eval_p = as_prompts(task.train_prompts), as_prompts(task.eval_prompts)
    else:
        assert d.prompts is not None
        # a prompt plus its response must fit the model's positions (learned position embeddings crash past them)
        max_len, name = d.max_prompt_length, "data.max_prompt_length"
        n_pos = getattr(policy.config, "max_position_embeddings", None) or getattr(policy.config, "n_positions", None)
        if isinstance(n_pos, int) and n_pos - cfg.sampling.max_new_tokens < max_len:
            max_len, name = n_pos - cfg.sampling.max_new_tokens, f"model context {n_pos} - sampling.max_new_tokens"
            if max_len < 1:
                raise InpoError(f"sampling.max_new_tokens={cfg.sampling.max_new_tokens} leaves no room for a prompt "
                                f"in the model's context of {n_pos} positions")
        kw: dict[str, Any] = {"max_length": max_len, "too_long": d.too_long, "max_length_name": name}
        train_p, skipped = load_prompts(d.prompts, tokenizer, split=d.split, limit=d.num_prompts, **kw)
        if skipped:
            console.print(f"[yellow]skipped {skipped} prompts longer than {name}={max_len}[/]")
        if d.eval_prompts is not None:
            eval_p, _ = load_prompts(d.eval_prompts, tokenizer, limit=d.num_eval_prompts, **kw)
        else:
            eval_p = train_p[: d.num_eval_prompts]
    if d.num_prompts is not None:
        train_p = train_p[: d.num_prompts]

    if cfg.judge.path == "builtin":
        assert task is not None
        judge: Judge = task.judge()
    else:
        from inpo.judges import load_judge

        judge = load_judge(cfg.judge.path)
    return Setup(tokenizer, policy, ref, Path(ref_path), train_p, eval_p, judge, task,
                 int(tokenizer.pad_token_id), int(tokenizer.eos_token_id))


# --------------------------------------------------------------------------------------------------
# Run directory: atomic writes, stages, resume
# --------------------------------------------------------------------------------------------------


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
        self.write_state({"config_hash": config_hash(cfg), "completed_iterations": 0, "versions": _versions()})
        return 0


def _versions() -> dict[str, str]:
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
    digest = hashlib.sha256(f"{cfg.seed}/{t}/{step}/{phase}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


# --------------------------------------------------------------------------------------------------
# Phases
# --------------------------------------------------------------------------------------------------


@dataclass
class Samples:
    """K responses per prompt, flattened: sample i*K + k is response k of prompt i."""

    prompt_ids: list[list[int]]
    responses: list[list[int]]
    k: int


def judge_matrices(judge: Judge, prompts: list[Prompt], texts: list[str], k: int,
                   progress: Callable[[int], None] | None = None) -> torch.Tensor:
    """[N, K, K] preference matrices; checks the judge's output (finite, in [0, 1], antisymmetric)."""
    out = []
    for i, p in enumerate(prompts):
        if progress is not None:
            progress(1)
        try:
            m = judge.matrix(p.text, texts[i * k : (i + 1) * k])
        except InpoError as e:
            raise InpoError(f"judge failed on prompt {i}: {e}") from None
        except Exception as e:  # noqa: BLE001 - a judge's failure is reported with the prompt row
            raise InpoError(f"judge failed on prompt {i}: {type(e).__name__}: {e}") from None
        m = torch.as_tensor(m, dtype=torch.float64)
        if m.shape != (k, k):
            raise InpoError(f"judge returned a matrix of shape {tuple(m.shape)} for prompt {i}; expected ({k}, {k})")
        bad = ~torch.isfinite(m) | (m < 0) | (m > 1)
        if bad.any():
            a, b = (int(x) for x in bad.nonzero()[0])
            raise InpoError(f"judge returned an invalid matrix for prompt {i}: entry [{a}, {b}] = {m[a, b].item()} "
                            "is not a probability in [0, 1]")
        out.append(m)
    return torch.stack(out)


class CheckedJudge:
    """A judge whose ``prob`` failures (an exception, NaN, a value outside [0, 1], a wrong shape) become one-line
    InpoErrors naming ``where`` and the prompt index."""

    def __init__(self, judge: Judge, where: str) -> None:
        self.judge, self.where = judge, where

    def prob(self, prompts: list[str], responses_a: list[str], responses_b: list[str]) -> torch.Tensor:
        try:
            p = torch.as_tensor(self.judge.prob(prompts, responses_a, responses_b), dtype=torch.float64)
        except Exception as e:  # noqa: BLE001 - a judge's failure is reported with where it happened
            kind = "" if isinstance(e, InpoError) else f"{type(e).__name__}: "
            raise InpoError(f"judge failed during {self.where}: {kind}{e}") from None
        if p.shape != (len(prompts),):
            raise InpoError(f"judge returned shape {tuple(p.shape)} during {self.where}; expected ({len(prompts)},)")
        bad = ~torch.isfinite(p) | (p < 0) | (p > 1)
        if bad.any():
            i = int(bad.nonzero()[0])
            raise InpoError(f"judge returned {p[i].item()} for prompt {i} during {self.where}; expected a "
                            "probability in [0, 1]")
        return p

    def matrix(self, prompt: str, responses: list[str]) -> torch.Tensor:
        from inpo.judges.base import matrix_from_prob

        return matrix_from_prob(self, prompt, responses)


def cache_logprobs(
    models: dict[str, torch.nn.Module], samples: Samples, *, pad_id: int, batch_size: int
) -> dict[str, torch.Tensor]:
    """No-grad sequence log-probs of every sample under each named model (one pass per model)."""
    prompts = [samples.prompt_ids[i // samples.k] for i in range(len(samples.responses))]
    return {
        name: batched_sequence_logprobs(m, prompts, samples.responses, pad_id=pad_id, batch_size=batch_size)
        for name, m in models.items()
    }


def train_on_pairs(
    policy: torch.nn.Module,
    accelerator: Accelerator,
    algo: Algorithm,
    cfg: RunConfig,
    samples: Samples,
    pairs: Pairs,
    cache: dict[str, torch.Tensor],
    winrates: torch.Tensor | None,
    *,
    pad_id: int,
    seed: int,
    on_step: Callable[[], None] | None = None,
    optimizer: torch.optim.Optimizer | None = None,
) -> dict[str, float]:
    """E epochs of AdamW on the algorithm's loss over the pairs. Returns mean metrics.

    ``optimizer``: the run's AdamW, prepared together with the policy (what DeepSpeed / FSDP require); its
    state is cleared so every iteration starts a fresh AdamW, as the papers do. Without it, one is made
    here. The learning-rate schedule is a plain ``LambdaLR`` stepped once per optimizer step (accelerate's
    scheduler wrapper would step it once per process).

    A step takes ``train.batch_size`` prompts with all their pairs, split into ``train.grad_accum``
    micro-batches; each micro-batch's weighted loss is divided by the step's total weight, so
    accumulation 1x8 == 8x1. Each distinct response of a micro-batch goes through the model once
    (chosen and rejected in one forward; with K samples and all pairs, K forwards serve K(K-1) pairs).
    """
    tc = cfg.train
    prompts = torch.unique(pairs.prompt)
    steps_per_epoch = math.ceil(len(prompts) / tc.batch_size)
    total = steps_per_epoch * tc.epochs
    warmup = int(tc.warmup_ratio * total)

    def lr_factor(s: int) -> float:  # linear warm-up, then linear decay
        return (s + 1) / (warmup + 1) if s < warmup else max(0.0, (total - s) / max(1, total - warmup))

    if optimizer is None:
        optimizer = accelerator.prepare(
            torch.optim.AdamW(policy.parameters(), lr=tc.lr, weight_decay=tc.weight_decay))
    inner = getattr(optimizer, "optimizer", optimizer)  # the torch optimizer inside accelerate's wrapper
    inner.state.clear()
    optimizer.zero_grad(set_to_none=True)
    scheduler = torch.optim.lr_scheduler.LambdaLR(inner, lr_factor)
    device = accelerator.device
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([len(r) for r in samples.responses], dtype=torch.float32)
    sums: dict[str, float] = {}
    weight_seen = 0.0
    policy.train()
    for epoch in range(tc.epochs):
        order = (length_grouped_order(prompts, samples, tc.batch_size, g) if tc.group_by_length
                 else prompts[torch.randperm(len(prompts), generator=g)])
        for s in range(steps_per_epoch):
            step_prompts = order[s * tc.batch_size : (s + 1) * tc.batch_size]
            step_weight = pairs.weight[torch.isin(pairs.prompt, step_prompts)].sum()
            world, rank = accelerator.num_processes, accelerator.process_index
            n_micro = min(tc.grad_accum, len(step_prompts)) if world == 1 else tc.grad_accum * world
            for micro in torch.tensor_split(step_prompts, n_micro)[rank::world]:
                idx = torch.nonzero(torch.isin(pairs.prompt, micro)).squeeze(-1)
                if len(idx) == 0:  # every process must join each forward and backward (DDP): a zero contribution
                    dummy = torch.full((1, 1), pad_id, dtype=torch.long, device=device)
                    accelerator.backward(policy(input_ids=dummy, use_cache=False).logits.sum() * 0.0)
                    continue
                c, r = pairs.chosen[idx], pairs.rejected[idx]
                uniq, inv = torch.unique(torch.cat([c, r]), return_inverse=True)
                u = uniq.tolist()
                ids, att, resp = collate([samples.prompt_ids[i // samples.k] for i in u],
                                         [samples.responses[i] for i in u], pad_id)
                lp = sequence_logprobs(policy, ids.to(device), att.to(device), resp.to(device)).float().cpu()[inv]
                b = len(idx)

                def get(name: str, c: torch.Tensor = c, r: torch.Tensor = r) -> tuple[Any, Any]:
                    return (cache[name][c], cache[name][r]) if name in cache else (None, None)

                hist, wr = cache.get("hist"), winrates
                inputs = LossInputs(
                    lp[:b], lp[b:], *get("ref"), *get("prev"),
                    hist[c] if hist is not None else None, hist[r] if hist is not None else None,
                    wr[c] if wr is not None else None, wr[r] if wr is not None else None,
                    lengths[c], lengths[r],
                )
                per_example = algo.loss(inputs, cfg.algo)
                w = pairs.weight[idx]
                loss = (per_example * w).sum() / step_weight * world  # DDP averages gradients over processes
                if not torch.isfinite(loss):
                    raise NonFiniteError(f"non-finite loss in epoch {epoch + 1}, step {s + 1}: iteration stopped, "
                                         "last good checkpoint kept")
                accelerator.backward(loss)
                anchor_c = inputs.ref_chosen if inputs.ref_chosen is not None else inputs.prev_chosen
                anchor_r = inputs.ref_rejected if inputs.ref_rejected is not None else inputs.prev_rejected
                metrics = preference_metrics(inputs.policy_chosen, inputs.policy_rejected, anchor_c, anchor_r,
                                             weights=w)
                metrics["loss/train"] = ((per_example * w).sum() / w.sum()).item()
                wsum = w.sum().item()
                for key, v in metrics.items():
                    sums[key] = sums.get(key, 0.0) + v * wsum
                weight_seen += wsum
            grad_norm = accelerator.clip_grad_norm_(policy.parameters(), tc.max_grad_norm)
            if not torch.isfinite(torch.as_tensor(grad_norm)):
                raise NonFiniteError(f"non-finite gradient in epoch {epoch + 1}, step {s + 1}: iteration stopped, "
                                     "last good checkpoint kept")
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            if on_step is not None:
                on_step()
    policy.eval()
    if accelerator.num_processes > 1:
        from accelerate.utils import gather_object

        parts = gather_object([(sums, weight_seen)])
        sums = {k: sum(p[0].get(k, 0.0) for p in parts) for k in parts[0][0]}
        weight_seen = sum(p[1] for p in parts)
    return {k: v / max(weight_seen, 1e-12) for k, v in sums.items()}


def length_grouped_order(prompts: torch.Tensor, samples: Samples, batch_size: int, g: torch.Generator
                         ) -> torch.Tensor:
    """Prompts sorted by their longest sequence (prompt + longest response), cut into steps of
    ``batch_size`` and the full steps shuffled (seeded), a shorter remainder step last (so that cutting the
    result every ``batch_size`` gives back the steps): batches of similar lengths waste less padding."""
    k = samples.k
    longest = torch.tensor([len(samples.prompt_ids[int(i)]) + max(len(samples.responses[int(i) * k + j])
                                                                  for j in range(k)) for i in prompts])
    by_length = prompts[torch.argsort(longest, stable=True)]
    steps = list(torch.split(by_length, batch_size))
    full = [st for st in steps if len(st) == batch_size]
    rest = [st for st in steps if len(st) < batch_size]
    return torch.cat([full[int(i)] for i in torch.randperm(len(full), generator=g)] + rest)


def evaluate_policy(setup: Setup, policy: torch.nn.Module, cfg: RunConfig, run: RunDir, t: int, *,
                    cache_baseline: bool = True) -> dict[str, float]:
    """Metrics of the policy on the eval prompts (no grad), against ``setup.ref`` as the baseline.

    The baseline's samples are cached in the run dir (``cache_baseline``) so every iteration is compared
    with the same reference responses; a different baseline (``inpo eval --baseline``) is sampled afresh."""
    from inpo.config import SamplingConfig

    prompts = [p.ids for p in setup.eval_prompts]
    one = SamplingConfig(**{**cfg.sampling.model_dump(), "num_samples": 2})
    resp = sample_responses(policy, prompts, one, eos_id=setup.eos_id, pad_id=setup.pad_id,
                            seed=seed_for(cfg, t, 0, "eval"))
    both = [r for rs in resp for r in rs]
    both_prompts = [p for p in prompts for _ in range(one.num_samples)]
    lp_pol = batched_sequence_logprobs(policy, both_prompts, both, pad_id=setup.pad_id)
    lp_ref = batched_sequence_logprobs(setup.ref, both_prompts, both, pad_id=setup.pad_id)
    out = {"eval/kl_to_ref": kl_estimate(lp_pol, lp_ref), "eval/mean_length": mean_length(both)}
    flat = [r[0] for r in resp]
    texts = [p.text for p in setup.eval_prompts]
    if setup.task is not None:
        game = setup.task.game_for_prompts(texts)
        pi = setup.task.style_distribution(policy, setup.tokenizer, texts)
        pi_ref = setup.task.style_distribution(setup.ref, setup.tokenizer, texts)
        out.update(game_metrics(game, pi, pi_ref, tau=cfg.algo.tau))
    # win rate against pi_ref under the run's judge (both orders), reference samples cached on disk
    def baseline_samples() -> list[list[int]]:
        return [r[0] for r in sample_responses(setup.ref, prompts, one, eos_id=setup.eos_id, pad_id=setup.pad_id,
                                                seed=seed_for(cfg, 0, 0, "eval_ref"))]

    ref_resp = staged(run.stage(0, "eval_ref_samples"), baseline_samples) if cache_baseline else baseline_samples()
    dec = setup.tokenizer.batch_decode
    scores = symmetric_win_scores(CheckedJudge(setup.judge, f"evaluation of iteration {t}"), texts,
                                  dec(flat, skip_special_tokens=True),
                                  dec(ref_resp, skip_special_tokens=True))
    wr = win_rate(scores)
    out.update({"pref/win_rate": wr.mean, "pref/win_rate_ci_low": wr.ci_low, "pref/win_rate_ci_high": wr.ci_high})
    return out


# --------------------------------------------------------------------------------------------------
# Progress and output
# --------------------------------------------------------------------------------------------------


COLUMNS = [("iter", "iteration", "{:d}"), ("win vs ref (judge)", "pref/win_rate", "{:.3f}"),
           ("win vs ref (exact)", "game/win_rate_vs_ref", "{:.3f}"), ("duality gap", "game/duality_gap", "{:.4f}"),
           ("reg. gap", "game/reg_duality_gap", "{:.4f}"),
           ("KL(pi||ref)", "eval/kl_to_ref", "{:.3f}"), ("len", "eval/mean_length", "{:.2f}"),
           ("loss", "loss/train", "{:.4f}"), ("pairs", "train/pairs", "{:d}"), ("sample s", "time/sample", "{:.1f}"),
           ("judge s", "time/judge", "{:.1f}"), ("logps s", "time/logprobs", "{:.1f}"),
           ("train s", "time/train", "{:.1f}")]


def metrics_table(rows: list[dict[str, Any]], title: str) -> Table:
    table = Table(title=title)
    present = [c for c in COLUMNS if any(c[1] in r for r in rows)]
    for name, _, _ in present:
        table.add_column(name, justify="right")
    for r in rows:
        table.add_row(*[fmt.format(r[key]) if key in r else "-" for _, key, fmt in present])
    return table


def write_plots(run: RunDir, rows: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    panels = [  # (title, [(metric, legend)]): a panel is drawn when one of its metrics was recorded
        ("win rate vs pi_ref", [("pref/win_rate", "judge, sampled (both orders)"),
                                ("game/win_rate_vs_ref", "exact (task game)")]),
        ("duality gap", [("game/duality_gap", "plain"), ("game/reg_duality_gap", "tau-regularized")]),
    ]
    panels = [(t, [c for c in curves if any(c[0] in r for r in rows)]) for t, curves in panels]
    panels = [(t, curves) for t, curves in panels if curves]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.5), squeeze=False)
    for ax, (title, curves) in zip(axes[0], panels, strict=True):
        for key, legend in curves:
            pts = [(r["iteration"], r[key]) for r in rows if key in r]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=legend)
        ax.set_xlabel("iteration")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = run.path / ".metrics.png.tmp.png"
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, run.path / "metrics.png")


@contextmanager
def progress_bars(enabled: bool) -> Iterator[Progress]:
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeRemainingColumn(), disable=not enabled, transient=True)
    with progress:
        yield progress


# --------------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------------


def run(cfg: RunConfig, *, resume: bool = False, overwrite: bool = False, quiet: bool = False,
        console: Console | None = None, allow_config_change: bool = False) -> list[dict[str, Any]]:
    """Run (or resume) the iterative loop described in the module docstring; return metrics rows."""
    from inpo.config import resolve_output_dir

    cfg = resolve_output_dir(cfg)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    if console is None:
        console = Console(quiet=quiet)
        if not console.is_terminal:
            console.width = 160
    threads = cfg.threads if cfg.threads is not None else (1 if cfg.model.path is None else None)
    if threads is not None:
        torch.set_num_threads(threads)
    torch.manual_seed(cfg.seed)
    trackers = resolve_trackers(cfg)
    accelerator = Accelerator(cpu=not torch.cuda.is_available(), log_with=trackers or None,
                              project_dir=str(Path(cfg.output_dir) / "logs"))
    algo = ALGORITHMS[cfg.algo.name]
    pairing = algo.pairing if cfg.algo.pairing == "default" else cfg.algo.pairing
    rundir = RunDir(cfg.output_dir)
    main = accelerator.is_main_process
    if main:
        # refuse early; write nothing until the inputs load
        rundir.check(cfg, resume=resume, overwrite=overwrite, allow_change=allow_config_change)
        setup = build_setup(cfg, console, progress=not quiet)  # builds (and caches) the SFT reference once
        done = rundir.prepare(cfg, resume=resume, overwrite=overwrite, allow_change=allow_config_change)
    accelerator.wait_for_everyone()
    if not main:
        console.quiet = quiet = True
        done = int(rundir.read_state().get("completed_iterations", 0))
        setup = build_setup(cfg, console, progress=False)
    policy = setup.policy
    if done > 0:  # resume from the last complete checkpoint
        policy = load_policy(rundir.iter_dir(done), cfg, setup.ref_path)
        if cfg.peft is not None:
            setup.ref = AdapterDisabled(policy)
    # one AdamW for the run, prepared with the policy in one call; train_on_pairs resets it every iteration
    optimizer = torch.optim.AdamW(policy.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    policy, optimizer = accelerator.prepare(policy, optimizer)
    if cfg.peft is None:
        setup.ref.to(accelerator.device)
    rows = [r for r in rundir.read_metrics() if r["iteration"] <= done]
    if not rows and main:
        rows = [{"iteration": 0, **evaluate_policy(setup, accelerator.unwrap_model(policy), cfg, rundir, 0)}]
        rundir.write_metrics(rows)
    accelerator.wait_for_everyone()
    console.print(f"[bold]inpo[/] {algo.name}: {len(setup.train_prompts)} prompts x K={cfg.sampling.num_samples}, "
                  f"{cfg.iterations} iterations, pairing={pairing} -> {rundir.path}")
    if done:
        console.print(f"resuming after iteration {done}")
    console.print(metrics_table(rows, "start"))

    if trackers:
        accelerator.init_trackers("inpo", config=flat_config(cfg))
    prompt_ids = [p.ids for p in setup.train_prompts]
    n_prompts = len(prompt_ids)
    for t in range(done + 1, cfg.iterations + 1):
        times = {"time/sample": 0.0, "time/judge": 0.0, "time/logprobs": 0.0, "time/train": 0.0}
        anchor = copy.deepcopy(accelerator.unwrap_model(policy)).eval() if algo.steps_per_iteration > 1 else None
        train_metrics: dict[str, float] = {}
        n_pairs = 0
        for step in range(algo.steps_per_iteration):
            with progress_bars(not quiet) as bars:
                # 1. sample K responses per prompt from pi_t (Nash-MD: from the geometric mixture)
                t0 = time.perf_counter()
                bar = bars.add_task(f"iter {t} sample", total=len(prompt_ids))
                mixture = (setup.ref, cfg.algo.eta * cfg.algo.tau) if algo.sample_from_mixture else None
                responses = sharded_stage(accelerator, rundir.stage(t, f"s{step}_samples"), sample_stage, n_prompts,
                                          accelerator.unwrap_model(policy), prompt_ids, cfg, setup,
                                          seed=seed_for(cfg, t, step, "sample") + accelerator.process_index,
                                          mixture=mixture, progress=partial(bars.advance, bar),
                                          checkpoint=rundir.iter_dir(t - 1) if t > 1 else setup.ref_path)
                samples = Samples(prompt_ids, responses, cfg.sampling.num_samples)
                times["time/sample"] += time.perf_counter() - t0

                # 2. judge every prompt's K x K matrix
                t0 = time.perf_counter()
                texts = setup.tokenizer.batch_decode(responses, skip_special_tokens=True)
                bar = bars.add_task(f"iter {t} judge", total=len(prompt_ids))
                matrices = sharded_stage(accelerator, rundir.stage(t, f"s{step}_judgements"), judge_stage, n_prompts,
                                         setup.judge, setup.train_prompts, texts, samples.k, partial(bars.advance, bar))
                times["time/judge"] += time.perf_counter() - t0

                # 3. cache log-probs of the anchors (no grad, length-sorted batches)
                t0 = time.perf_counter()
                models: dict[str, torch.nn.Module] = {}
                if algo.needs_ref:
                    models["ref"] = setup.ref
                if algo.needs_prev:
                    models["prev"] = anchor if anchor is not None else accelerator.unwrap_model(policy)
                if algo.needs_history:
                    models.update(history_models(rundir, setup, accelerator.unwrap_model(policy), t, cfg))
                same_as_ref = t == 1 and step == 0 and "ref" in models and "prev" in models
                if same_as_ref:  # pi_1 = pi_ref: one pass serves both anchors
                    del models["prev"]
                cache = sharded_stage(accelerator, rundir.stage(t, f"s{step}_logps"), logprob_stage, n_prompts,
                                      models, samples, pad_id=setup.pad_id, batch_size=cfg.train.logprob_batch_size)
                if same_as_ref:
                    cache["prev"] = cache["ref"]
                if algo.needs_history:
                    cache["hist"] = torch.stack([cache[f"hist{j}"] for j in range(len(cfg.algo.mnpo_weights))], -1)
                times["time/logprobs"] += time.perf_counter() - t0

                # 4. pairs and training of pi_{t+1}
                t0 = time.perf_counter()
                pairs = build_pairs(matrices, pairing,
                                    generator=torch.Generator().manual_seed(seed_for(cfg, t, step, "pairs")))
                if len(pairs) == 0:
                    console.print(f"[yellow]iteration {t}: the judge found no preference among the samples; "
                                  "no training this step[/]")
                    continue
                wr = win_rates(matrices).flatten().float() if algo.needs_winrates else None
                steps = math.ceil(len(torch.unique(pairs.prompt)) / cfg.train.batch_size) * cfg.train.epochs
                bar = bars.add_task(f"iter {t} train", total=steps)
                try:
                    train_metrics = train_on_pairs(policy, accelerator, algo, cfg, samples, pairs, cache, wr,
                                                   pad_id=setup.pad_id, seed=seed_for(cfg, t, step, "train"),
                                                   on_step=partial(bars.advance, bar), optimizer=optimizer)
                except NonFiniteError as e:
                    kept = rundir.iter_dir(t - 1).name if t > 1 else "pi_ref"
                    raise NonFiniteError(f"iteration {t}: {e} ({kept})") from None
                n_pairs += len(pairs)
                times["time/train"] += time.perf_counter() - t0

        # 5. checkpoint (atomic: written to a temp dir, then renamed), evaluate, record
        unwrapped = accelerator.unwrap_model(policy)
        if main:  # one writer: checkpoint, evaluation, metrics, state, plots
            save_checkpoint(unwrapped, setup.tokenizer, rundir.iter_dir(t))
            perf = {"perf/pairs_per_s": n_pairs * cfg.train.epochs / times["time/train"]} if times["time/train"] else {}
            row = {"iteration": t, **train_metrics, "train/pairs": n_pairs, **times, **perf,
                   **evaluate_policy(setup, unwrapped, cfg, rundir, t)}
            rows.append(row)
            rundir.write_metrics(rows)
            rundir.write_state({**rundir.read_state(), "completed_iterations": t})
            console.print(metrics_table(rows[-1:], f"iteration {t}"))
            write_plots(rundir, rows)
            if trackers:
                accelerator.log({k: v for k, v in row.items() if isinstance(v, int | float)}, step=t)
        accelerator.wait_for_everyone()
    console.print(metrics_table(rows, f"{algo.name}: summary ({rundir.path / 'metrics.jsonl'})"))
    if trackers:
        accelerator.end_training()
    return rows


def resolve_trackers(cfg: RunConfig) -> list[str]:
    """accelerate trackers: 'auto' = tensorboard when it is installed, else none (wandb/mlflow on request;
    their API keys are read by those libraries from the environment, never from the config)."""
    if cfg.log_with != "auto":
        return list(cfg.log_with)
    import importlib.util

    return ["tensorboard"] if importlib.util.find_spec("tensorboard") is not None else []


def flat_config(cfg: RunConfig) -> dict[str, Any]:
    """The config as flat scalar hyperparameters (what trackers accept)."""
    out: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else k, v)
        else:
            out[prefix] = value if isinstance(value, int | float | str | bool) else str(value)

    walk("", cfg.model_dump(mode="json"))
    return out


def save_checkpoint(model: torch.nn.Module, tokenizer: Any, path: Path) -> None:
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


def history_models(
    rundir: RunDir, setup: Setup, current: torch.nn.Module, t: int, cfg: RunConfig
) -> dict[str, torch.nn.Module]:
    """The last n iterates pi_t, pi_{t-1}, ... as ``hist0, hist1, ...`` (MNPO). pi_t is saved as iter_{t-1}
    and iter_0 is pi_ref; iterates before pi_1 do not exist, so pi_ref stands in for them."""
    out: dict[str, torch.nn.Module] = {}
    for j in range(len(cfg.algo.mnpo_weights)):
        it = t - 1 - j
        if j == 0:
            out["hist0"] = current
        elif it <= 0:
            out[f"hist{j}"] = setup.ref
        else:
            out[f"hist{j}"] = load_policy(rundir.iter_dir(it), cfg, setup.ref_path)
    return out


def sample_stage(
    idx: list[int], model: torch.nn.Module, prompt_ids: list[list[int]], cfg: RunConfig, setup: Setup, *,
    seed: int, mixture: tuple[torch.nn.Module, float] | None, progress: Callable[[int], None] | None,
    checkpoint: Path | None = None,
) -> list[list[int]]:
    """K responses per prompt of ``idx``, flattened (prompt i, sample k -> i*K + k). The vLLM backend
    samples from ``checkpoint``, the saved directory of the same policy."""
    chosen = [prompt_ids[i] for i in idx]
    if cfg.sampling.backend == "vllm":
        from inpo.sampling import sample_responses_vllm

        nested = sample_responses_vllm(str(checkpoint), chosen, cfg.sampling, eos_id=setup.eos_id, seed=seed,
                                       trust_remote_code=cfg.model.trust_remote_code)
    else:
        nested = sample_responses(model, chosen, cfg.sampling, eos_id=setup.eos_id, pad_id=setup.pad_id, seed=seed,
                                  mixture=mixture, progress=progress)
    return [r for rs in nested for r in rs]


def judge_stage(idx: list[int], judge: Judge, prompts: list[Prompt], texts: list[str], k: int,
                progress: Callable[[int], None] | None = None) -> torch.Tensor:
    return judge_matrices(judge, [prompts[i] for i in idx], [texts[i * k + j] for i in idx for j in range(k)], k,
                          progress)


def logprob_stage(idx: list[int], models: dict[str, torch.nn.Module], samples: Samples, *, pad_id: int,
                  batch_size: int) -> dict[str, torch.Tensor]:
    k = samples.k
    responses = [samples.responses[i * k + j] for i in idx for j in range(k)]
    sub = Samples([samples.prompt_ids[i] for i in idx], responses, k)
    return cache_logprobs(models, sub, pad_id=pad_id, batch_size=batch_size)
