"""Loading what a run trains: the policy, pi_ref (a frozen copy, or the LoRA policy with its adapter off), the
tokenizer, the prompts and the judge (:func:`build_setup`); saved iterates (:func:`load_policy`) and the past
iterates MNPO anchors on (:func:`history_models`). Safetensors only; ``trust_remote_code`` off unless the config
turns it on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from inpo.config import ModelConfig, RunConfig
from inpo.data import Prompt, load_prompts
from inpo.errors import InpoError
from inpo.judges.base import Judge
from inpo.rundir import RunDir


@dataclass
class Setup:
    """Everything :func:`build_setup` loads for a run (``ref`` is replaced for ``inpo eval --baseline``)."""

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
    stop_ids: list[int] = field(default_factory=list)  # end-of-turn tokens: EOS and the chat template's markers


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
    """A saved iterate: a full model, or (with ``peft``) the LoRA adapter in ``path`` on the base model. A
    checkpoint that does not fit the config (adapter vs full model, another LoRA rank) is a one-line error."""
    check_checkpoint_kind(Path(path), cfg)
    if cfg.peft is None:
        return load_causal_lm(path, trust_remote_code=cfg.model.trust_remote_code)
    from peft import PeftModel

    base = load_causal_lm(base_path, trust_remote_code=cfg.model.trust_remote_code)
    try:
        return PeftModel.from_pretrained(base, str(path), is_trainable=True)
    except Exception as e:  # noqa: BLE001 - a damaged adapter: name it, do not show peft's trace
        raise InpoError(f"{path}: cannot load the LoRA adapter ({type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else ''})") from None


def check_checkpoint_kind(path: Path, cfg: RunConfig) -> None:
    """``path`` is the kind of checkpoint ``cfg`` makes: a LoRA adapter of the same rank and alpha with ``peft``,
    a full model without (a run cannot switch between them, or change the adapter's shape, mid-way)."""
    import json

    adapter = path / "adapter_config.json"
    if cfg.peft is None and adapter.is_file():
        raise InpoError(f"{path}: a LoRA adapter checkpoint, but the config has no peft section (the run was "
                        "made with peft; keep its peft settings)")
    if cfg.peft is not None:
        if not adapter.is_file():
            raise InpoError(f"{path}: a full-model checkpoint (no adapter_config.json), but the config has a peft "
                            "section (the run was made without peft; remove it)")
        try:
            saved = json.loads(adapter.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise InpoError(f"{adapter}: unreadable ({type(e).__name__})") from None
        if not isinstance(saved, dict):
            raise InpoError(f"{adapter}: expected a JSON object")
        for ours, theirs in (("r", "r"), ("alpha", "lora_alpha")):
            if saved.get(theirs) != getattr(cfg.peft, ours):
                raise InpoError(f"{path}: the adapter has {theirs}={saved.get(theirs)!r} but the config peft.{ours}="
                                f"{getattr(cfg.peft, ours)}; a run's LoRA shape cannot change mid-way")


def load_baseline(path: str | Path, cfg: RunConfig, base_path: str | Path) -> torch.nn.Module:
    """A model to compare against (``inpo eval --baseline``): an iterate of the run (a full model or, with
    ``peft``, a LoRA adapter directory on the run's base model) or any causal LM directory; eval mode."""
    p = Path(path)
    if not p.is_dir():
        raise InpoError(f"--baseline: {path} is not a directory")
    if (p / "adapter_config.json").is_file():
        from peft import PeftModel

        base = load_causal_lm(base_path, trust_remote_code=cfg.model.trust_remote_code)
        try:
            return PeftModel.from_pretrained(base, str(p)).eval()
        except Exception as e:  # noqa: BLE001 - an adapter of another base model
            raise InpoError(f"--baseline: {path}: a LoRA adapter that does not load on the run's base model "
                            f"{base_path} ({type(e).__name__})") from None
    try:
        return load_causal_lm(p, trust_remote_code=cfg.model.trust_remote_code).eval()
    except InpoError as e:
        raise InpoError(f"--baseline: {str(e).removeprefix('model.path: ')}") from None


def run_model_dir(cfg: RunConfig) -> Path | None:
    """The model directory of a run: :func:`resolve_model_dir`, or SmolLM2 for the annotators task without
    ``model.path``; None for the built-in task."""
    if cfg.model.path is None and cfg.task.name == "annotators":
        from inpo.models_real import smollm2_path

        return smollm2_path()
    return resolve_model_dir(cfg.model)


def prompt_sources(cfg: RunConfig) -> tuple[str | None, str | None]:
    """``(data.prompts, data.eval_prompts)``, the annotators task's shipped files standing in for unset ones."""
    d = cfg.data
    if cfg.task.name == "annotators":
        from inpo.tasks.annotators import EVAL_FILE, TRAIN_FILE

        if d.prompts is None:
            return str(TRAIN_FILE), d.eval_prompts or str(EVAL_FILE)
    return d.prompts, d.eval_prompts


def resolve_model_dir(model: ModelConfig) -> Path | None:
    """The model directory a run loads: ``model.path``, or for a GGUF model (``path`` ending in ``.gguf``, or
    ``path`` + ``gguf_file``) its cached plain-safetensors import. None for the built-in task."""
    if model.path is None:
        return None
    p = Path(model.path).expanduser()
    if model.gguf_file is not None:
        p = p / model.gguf_file
    if p.suffix.lower() == ".gguf":
        from inpo.models_real import gguf_model_dir

        return gguf_model_dir(p)
    return p


def build_setup(cfg: RunConfig, console: Console, *, progress: bool) -> Setup:
    task = None
    if cfg.model.path is None and cfg.task.name == "builtin":
        from inpo.tasks import BuiltinTask, BuiltinTaskConfig, build_reference

        try:
            task_cfg = BuiltinTaskConfig(**{"seed": cfg.task.seed, **cfg.task.options})
        except TypeError as e:
            raise InpoError(f"task.options: {e}") from None
        task = BuiltinTask(task_cfg)
        ref_path = build_reference(task, cfg.task.sft_cache, progress=progress)
    else:
        ref_path = run_model_dir(cfg)
        assert ref_path is not None
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
        prompts_src, eval_src = prompt_sources(cfg)
        assert prompts_src is not None
        # a prompt plus its response must fit the model's positions (learned position embeddings crash past them)
        max_len, name = d.max_prompt_length, "data.max_prompt_length"
        n_pos = getattr(policy.config, "max_position_embeddings", None) or getattr(policy.config, "n_positions", None)
        if isinstance(n_pos, int) and n_pos - cfg.sampling.max_new_tokens < max_len:
            max_len, name = n_pos - cfg.sampling.max_new_tokens, f"model context {n_pos} - sampling.max_new_tokens"
            if max_len < 1:
                raise InpoError(f"sampling.max_new_tokens={cfg.sampling.max_new_tokens} leaves no room for a prompt "
                                f"in the model's context of {n_pos} positions")
        kw: dict[str, Any] = {"max_length": max_len, "too_long": d.too_long, "max_length_name": name,
                              "chat_template": d.chat_template}
        train_p, skipped = load_prompts(prompts_src, tokenizer, split=d.split, limit=d.num_prompts, **kw)
        if skipped:
            console.print(f"[yellow]skipped {skipped} prompts longer than {name}={max_len}[/]")
        if eval_src is not None:
            eval_p, eval_skipped = load_prompts(eval_src, tokenizer, limit=d.num_eval_prompts, **kw)
            if eval_skipped:
                console.print(f"[yellow]skipped {eval_skipped} eval prompts longer than {name}={max_len}[/]")
        else:
            eval_p = train_p[: d.num_eval_prompts]
    if d.num_prompts is not None:
        train_p = train_p[: d.num_prompts]

    if cfg.judge.path == "builtin" and cfg.task.name == "annotators":
        from inpo.tasks.annotators import annotator_judge

        judge: Judge = annotator_judge(cfg.task.options)
    elif cfg.judge.path == "builtin":
        assert task is not None
        judge = task.judge()
    else:
        from inpo.judges import load_judge

        judge = load_judge(cfg.judge.path)
    from inpo.sampling import end_of_turn_ids

    return Setup(tokenizer, policy, ref, Path(ref_path), train_p, eval_p, judge, task,
                 int(tokenizer.pad_token_id), int(tokenizer.eos_token_id), end_of_turn_ids(tokenizer, policy))


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
