"""Training, evaluation, saving and loading of the learned judges (BT, Scaled-BT, pair, GPM, lm-pair).

``train_judge(data, kind, base, out_dir, cfg)`` reads pairwise data (see :mod:`inpo.judges.data`),
splits a seeded held-out set (grouped by prompt), fits the judge with AdamW, reports held-out accuracy
and calibration (ECE, 10 bins) and writes ``out_dir`` in ``save_pretrained`` format:

    out_dir/config.json, model.safetensors     BT / Scaled-BT: a standard one-label
                                               ``AutoModelForSequenceClassification`` (backbone + ``score``
                                               head), loadable by plain transformers and TRL when the
                                               architecture has one (Llama, Mistral, Qwen2, GPT-2, ...);
                                               else, and for pair / GPM, the backbone (AutoModel)
                                               lm-pair: the causal LM (AutoModelForCausalLM)
    out_dir/judge_head.safetensors             the linear head(s) (not for lm-pair)
    out_dir/tokenizer.json, tokenizer_config.json
    out_dir/judge_config.json                  kind, dim, temperature, input, ..., held-out metrics

LoRA (``lora_r > 0``) adapters are merged into the weights before saving. ``load_judge(path)`` reads any judge
back (safetensors only, ``trust_remote_code=False``), and also a TRL / transformers reward-model directory
without ``judge_config.json`` (kind ``reward-model``) and, with ``kind="lm-pair"``, any causal LM directory.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from inpo.errors import InpoError
from inpo.judges.base import Judge
from inpo.judges.data import PreferencePair, load_preferences, split_held_out
from inpo.judges.lm_pair import PRESETS, LMPairJudge, load_causal_lm_judge
from inpo.judges.losses import bt_loss, gpm_loss, pair_loss, scaled_bt_loss
from inpo.judges.models import (
    KINDS,
    GPMJudge,
    JudgeModel,
    ModelJudge,
    PairJudge,
    RewardJudge,
    default_chat_input,
    make_judge,
)
from inpo.judges.reward_model import RewardModelJudge, is_reward_model_dir, load_reward_model

BUILTIN_TINY = "builtin-tiny"
TRAIN_KINDS = (*KINDS, "lm-pair")  # kinds `inpo judge train` fits
LOAD_KINDS = (*TRAIN_KINDS, "reward-model", "openai")  # kinds `load_judge` reads
SMALL_MODEL = 10_000_000  # parameters: below, the lr default of the tiny backbones (1e-3) applies
CONFIG_NAME = "judge_config.json"
HEAD_NAME = "judge_head.safetensors"


@dataclass(frozen=True)
class JudgeTrainConfig:
    """Hyperparameters of :func:`train_judge` (CLI flags in brackets)."""

    epochs: int = 3  # [--epochs]
    lr: float | None = None  # [--lr] AdamW learning rate; None: see default_lr
    batch_size: int = 16  # [--batch-size] pairs per step
    seed: int = 0  # [--seed] split, init, shuffling
    dim: int = 4  # [--dim] GPM embedding size 2k
    temperature: float = 0.1  # GPM: P = sigmoid(s / temperature) (the paper's beta)
    prompt_head: bool = False  # GPM: prompt-dependent eigenvalues lambda(x) = softplus(U h_x)
    held_out: float = 0.2  # fraction of prompts held out
    max_length: int = 512  # tokens per model input
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    pair_both_orders: bool = True  # pair: train on (c, r) and (r, c) (see pair_loss)
    tiny_hidden: int = 32  # builtin-tiny backbone width
    tiny_layers: int = 1  # builtin-tiny backbone depth
    lora_r: int = 0  # [--lora-r] LoRA rank on the backbone's linear layers (0: train all weights)
    lora_alpha: int = 16  # [--lora-alpha]
    lora_dropout: float = 0.0
    gradient_checkpointing: bool = False  # [--gradient-checkpointing] less activation memory, ~30% more compute
    threads: int | None = None  # [--threads] torch CPU threads during training (None: leave as is)
    progress: bool = False  # [--progress/--no-progress] a progress bar over the steps
    preset: str = "generic"  # [--preset] lm-pair: generic | rlhflow (see inpo.judges.lm_pair)

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or (self.lr is not None and not self.lr > 0):
            raise InpoError("judge training: epochs and batch_size must be >= 1 and lr > 0")
        if self.lora_r < 0 or self.lora_alpha < 1 or not 0 <= self.lora_dropout < 1:
            raise InpoError("judge training: lora_r must be >= 0, lora_alpha >= 1 and lora_dropout in [0, 1)")
        if self.threads is not None and self.threads < 1:
            raise InpoError(f"judge training: threads must be >= 1, got {self.threads}")
        if self.preset not in PRESETS:
            raise InpoError(f"judge training: preset must be one of {', '.join(PRESETS)}, got {self.preset!r}")
        if not 0 <= self.held_out < 1:
            raise InpoError(f"judge training: held_out must be in [0, 1), got {self.held_out}")
        if self.temperature <= 0:
            raise InpoError(f"judge training: temperature must be > 0, got {self.temperature}")


def default_lr(n_params: int, lora: bool) -> float:
    """The learning rate when none is given: 1e-3 for the tiny backbones (< 10M parameters, where it was tuned:
    docs/judges.md), else 2e-4 with LoRA and 1e-5 for full fine-tuning of a pretrained model."""
    if n_params < SMALL_MODEL:
        return 1e-3
    return 2e-4 if lora else 1e-5


@dataclass
class TrainResult:
    judge: ModelJudge | LMPairJudge
    metrics: dict[str, float]
    out_dir: Path | None
    history: list[dict[str, float]] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------- metrics


def pair_accuracy(p_chosen: torch.Tensor) -> float:
    """Fraction of pairs with ``P(chosen > rejected) > 1/2``; an exact tie counts 1/2."""
    p = p_chosen.double()
    return float(((p > 0.5).double() + 0.5 * (p == 0.5).double()).mean())


def expected_calibration_error(p_chosen: torch.Tensor, *, n_bins: int = 10) -> float:
    """ECE over 10 equal-width bins of the predicted probability.

    Each pair contributes both orientations, ``(P(c > r), outcome 1)`` and ``(1 - P(c > r), outcome 0)``,
    so the measure does not depend on which response is listed first:
    ``ECE = sum_b (n_b / N) |mean(p in b) - mean(outcome in b)|``.
    """
    p = p_chosen.double()
    probs = torch.cat([p, 1 - p])
    outcome = torch.cat([torch.ones_like(p), torch.zeros_like(p)])
    bins = torch.clamp((probs * n_bins).long(), max=n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        m = bins == b
        if m.any():
            ece += float(m.double().mean()) * abs(float(probs[m].mean()) - float(outcome[m].mean()))
    return ece


def evaluate_pairs(judge: Judge, pairs: Sequence[PreferencePair]) -> dict[str, float]:
    """Accuracy, ECE and mean P(chosen > rejected) of ``judge`` on labelled pairs."""
    if not pairs:
        return {"accuracy": float("nan"), "ece": float("nan"), "p_chosen": float("nan"), "n": 0}
    p = judge.prob([q.prompt for q in pairs], [q.chosen for q in pairs], [q.rejected for q in pairs])
    return {
        "accuracy": pair_accuracy(p),
        "ece": expected_calibration_error(p),
        "p_chosen": float(p.double().mean()),
        "n": len(pairs),
    }


# --------------------------------------------------------------------------------------------- building


@contextmanager
def _quiet_loading() -> Iterator[None]:
    """No "Loading weights" / "Writing model shards" progress bars (they break ``--json`` output)."""
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def _load_backbone_and_tokenizer(base: str | Path, texts: Sequence[str], cfg: JudgeTrainConfig, *,
                                 causal_lm: bool = False):
    """``(model, tokenizer)``: an ``AutoModel`` backbone, or with ``causal_lm`` an ``AutoModelForCausalLM``."""
    if str(base) == BUILTIN_TINY:
        from inpo.judges.tiny import build_tiny_backbone, build_tiny_causal_lm, build_word_tokenizer

        tokenizer = build_word_tokenizer(texts)
        build = build_tiny_causal_lm if causal_lm else build_tiny_backbone
        backbone = build(
            len(tokenizer), hidden_size=cfg.tiny_hidden, num_layers=cfg.tiny_layers,
            num_heads=max(1, cfg.tiny_hidden // 16), seed=cfg.seed,
        )
        return backbone, tokenizer
    from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

    path = Path(base)
    if not path.is_dir():
        raise InpoError(f"--base {base}: not a local model directory (or use '{BUILTIN_TINY}')")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
        with _quiet_loading():
            auto = AutoModelForCausalLM if causal_lm else AutoModel
            backbone = auto.from_pretrained(path, trust_remote_code=False, dtype=torch.float32)
    except (OSError, ValueError) as e:
        raise InpoError(f"--base {base}: cannot load model/tokenizer ({str(e).splitlines()[0]})") from None
    return backbone, tokenizer


def _add_lora(model: torch.nn.Module, cfg: JudgeTrainConfig, *, causal_lm: bool) -> torch.nn.Module:
    """LoRA adapters on every linear layer except the output layer (peft's "all-linear")."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise InpoError("--lora-r needs peft: pip install 'inpo[peft]'") from None
    lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules="all-linear", task_type="CAUSAL_LM" if causal_lm else None)
    return get_peft_model(model, lora)


def _merge_lora(model: torch.nn.Module) -> torch.nn.Module:
    return model.merge_and_unload() if hasattr(model, "merge_and_unload") else model


def _loss(judge: ModelJudge | LMPairJudge, batch: Sequence[PreferencePair], cfg: JudgeTrainConfig) -> torch.Tensor:
    prompts = [q.prompt for q in batch]
    chosen = [q.chosen for q in batch]
    rejected = [q.rejected for q in batch]
    n = len(batch)
    if isinstance(judge, LMPairJudge):
        return judge.loss_t(prompts, chosen, rejected)
    if isinstance(judge, RewardJudge):
        r = judge.rewards_t(prompts * 2, chosen + rejected)
        if judge.kind == "scaled-bt":
            strength = torch.tensor([q.strength for q in batch], dtype=r.dtype, device=r.device)
            return scaled_bt_loss(r[:n], r[n:], strength=strength)
        return bt_loss(r[:n], r[n:])
    if isinstance(judge, PairJudge):
        if cfg.pair_both_orders:
            s = judge.logits_t(prompts * 2, chosen + rejected, rejected + chosen)
            return pair_loss(s[:n], s[n:])
        return pair_loss(judge.logits_t(prompts, chosen, rejected))
    if isinstance(judge, GPMJudge):
        return gpm_loss(judge.score_t(prompts, chosen, rejected), temperature=judge.temperature)
    raise InpoError(f"no loss for judge kind '{judge.kind}'")


def fit_judge(
    judge: ModelJudge | LMPairJudge,
    train: Sequence[PreferencePair],
    cfg: JudgeTrainConfig,
    log: Callable[[dict[str, float]], None] | None = None,
) -> list[dict[str, float]]:
    """AdamW over ``cfg.epochs`` passes of seeded mini-batches; returns per-epoch mean loss (and seconds).

    ``cfg.progress``: a progress bar over the steps (running mean loss), on stderr.
    """
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    if cfg.lr is None:
        raise InpoError("fit_judge: cfg.lr is None (train_judge resolves it; pass a learning rate)")
    params = [p for p in judge.model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    rng = random.Random(cfg.seed)
    order = list(range(len(train)))
    history = []
    step = 0
    steps_per_epoch = -(-len(order) // cfg.batch_size)
    progress = Progress(
        TextColumn("judge {task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"), TimeElapsedColumn(), TimeRemainingColumn(),
        console=Console(stderr=True), disable=not cfg.progress, transient=True,
    )
    with progress:
        task = progress.add_task(f"{getattr(judge, 'kind', '')} epoch 1/{cfg.epochs}",
                                 total=steps_per_epoch * cfg.epochs, loss="-")
        for epoch in range(cfg.epochs):
            t0 = time.perf_counter()
            judge.model.train()
            rng.shuffle(order)
            total, count = 0.0, 0
            progress.update(task, description=f"{getattr(judge, 'kind', '')} epoch {epoch + 1}/{cfg.epochs}")
            for i in range(0, len(order), cfg.batch_size):
                batch = [train[j] for j in order[i : i + cfg.batch_size]]
                loss = _loss(judge, batch, cfg).mean()
                if not torch.isfinite(loss):
                    raise InpoError(f"judge training diverged (loss {loss.item()}) at epoch {epoch + 1}; lower --lr")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                opt.step()
                step += 1
                total += loss.item() * len(batch)
                count += len(batch)
                progress.update(task, advance=1, loss=f"{total / count:.4f}")
            row = {"epoch": epoch + 1, "step": step, "loss": total / max(count, 1),
                   "seconds": time.perf_counter() - t0}
            history.append(row)
            if log is not None:
                log(row)
    judge.model.eval()
    return history


def train_judge(
    data: str | Path | Sequence[Mapping[str, Any]] | Sequence[PreferencePair],
    kind: str,
    base: str | Path = BUILTIN_TINY,
    out_dir: str | Path | None = None,
    cfg: JudgeTrainConfig | None = None,
    log: Callable[[dict[str, float]], None] | None = None,
) -> TrainResult:
    """Fit a judge of ``kind`` (bt | scaled-bt | pair | gpm | lm-pair) on ``data`` from backbone ``base``.

    ``base``: a local transformers model directory (``AutoModel`` + ``AutoTokenizer``, or for lm-pair
    ``AutoModelForCausalLM``; no remote code) or ``"builtin-tiny"`` (random tiny Llama + word tokenizer over the
    data, built in code). ``cfg.lr=None`` takes :func:`default_lr` (recorded in judge_config.json).
    Metrics (held-out): ``accuracy``, ``ece``, ``p_chosen``; plus ``n_pairs``, ``n_train``,
    ``n_held_out``, ``n_ties_dropped``, ``train_accuracy``, ``final_loss``, ``lr``. Writes ``out_dir`` if given.
    """
    cfg = cfg or JudgeTrainConfig()
    if kind not in TRAIN_KINDS:
        raise InpoError(f"unknown judge kind '{kind}' (choose one of {', '.join(TRAIN_KINDS)})")
    prefs = load_preferences(data)
    train, held = split_held_out(prefs.pairs, fraction=cfg.held_out, seed=cfg.seed)
    if not train:
        raise InpoError(f"{prefs.source}: nothing left to train on after the held-out split")
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    texts = [t for q in prefs.pairs for t in (q.prompt, q.chosen, q.rejected)]
    causal_lm = kind == "lm-pair"
    if causal_lm:
        from inpo.judges.lm_pair import render_user_message

        texts.append(render_user_message(cfg.preset, "", "", ""))  # the template's words (builtin-tiny vocab)
    torch.manual_seed(cfg.seed)
    backbone, tokenizer = _load_backbone_and_tokenizer(base, texts, cfg, causal_lm=causal_lm)
    n_params = sum(p.numel() for p in backbone.parameters())
    if cfg.lr is None:
        cfg = replace(cfg, lr=default_lr(n_params, cfg.lora_r > 0))
    if cfg.gradient_checkpointing:
        if not getattr(backbone, "supports_gradient_checkpointing", False):
            raise InpoError(f"--gradient-checkpointing: {type(backbone).__name__} does not support it")
        backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        backbone.config.use_cache = False
    torch.manual_seed(cfg.seed)
    if cfg.lora_r > 0:
        backbone = _add_lora(backbone, cfg, causal_lm=causal_lm)
    judge: ModelJudge | LMPairJudge
    if causal_lm:
        judge = LMPairJudge(backbone.float(), tokenizer, preset=cfg.preset, max_length=cfg.max_length,
                            batch_size=cfg.batch_size)
    else:
        model = JudgeModel(backbone, kind, dim=cfg.dim, prompt_head=cfg.prompt_head).float()
        judge = make_judge(model, tokenizer, max_length=cfg.max_length, temperature=cfg.temperature,
                           chat=default_chat_input(kind, tokenizer))
    history = fit_judge(judge, train, cfg, log)
    if cfg.lora_r > 0:  # merged: the saved judge is a plain model, and inference is as fast as without LoRA
        if causal_lm:
            judge.model = _merge_lora(judge.model)
        else:
            judge.model.backbone = _merge_lora(judge.model.backbone)
    held_metrics = evaluate_pairs(judge, held)
    train_metrics = evaluate_pairs(judge, train)
    metrics = {
        "accuracy": held_metrics["accuracy"],
        "ece": held_metrics["ece"],
        "p_chosen": held_metrics["p_chosen"],
        "train_accuracy": train_metrics["accuracy"],
        "n_pairs": len(prefs.pairs),
        "n_train": len(train),
        "n_held_out": len(held),
        "n_ties_dropped": prefs.n_ties,
        "final_loss": history[-1]["loss"],
        "lr": cfg.lr,
    }
    out = None
    if out_dir is not None:
        out = save_judge(judge, out_dir, cfg=cfg, metrics=metrics, base=str(base))
    return TrainResult(judge=judge, metrics=metrics, out_dir=out, history=history)


# ----------------------------------------------------------------------------------------- save / load


def _sequence_classifier(judge: RewardJudge) -> torch.nn.Module | None:
    """The BT judge as a one-label ``AutoModelForSequenceClassification`` (same weights), or None when the
    architecture has no such class with a bias-free linear ``score`` head on the final hidden state."""
    import copy

    from transformers import AutoModelForSequenceClassification

    backbone = judge.model.backbone
    config = copy.deepcopy(backbone.config)
    config.num_labels = 1
    config.id2label, config.label2id = {0: "LABEL_0"}, {"LABEL_0": 0}
    config.pad_token_id = judge.encoder.pad_id
    config.architectures = None
    try:
        with torch.random.fork_rng():
            cls = AutoModelForSequenceClassification.from_config(config, dtype=torch.float32)
    except (ValueError, KeyError):
        return None
    score = getattr(cls, "score", None)
    base = getattr(cls, cls.base_model_prefix, None)
    head = judge.model.head
    if not isinstance(score, torch.nn.Linear) or score.bias is not None or base is None \
            or score.weight.shape != head.weight.shape:
        return None
    result = base.load_state_dict(backbone.state_dict(), strict=False)
    if result.missing_keys or result.unexpected_keys:
        return None
    with torch.no_grad():
        score.weight.copy_(head.weight)
    return cls


def save_judge(
    judge: ModelJudge | LMPairJudge,
    out_dir: str | Path,
    *,
    cfg: JudgeTrainConfig | None = None,
    metrics: Mapping[str, float] | None = None,
    base: str | None = None,
) -> Path:
    """Write the weights (save_pretrained, safetensors), heads, tokenizer and ``judge_config.json``.

    BT / Scaled-BT: the standard reward-model layout (see the module doc) when the architecture allows it;
    ``judge_config.json`` says so in ``"standard": true``. The tokenizer is saved with the pad token the judge
    pads with (never the eos token: a sequence classifier pools the last non-pad token).
    """
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    common = {"format": "inpo-judge", "version": 1, "base": base,
              "train_config": asdict(cfg) if cfg is not None else None,
              "metrics": dict(metrics) if metrics is not None else None}
    if isinstance(judge, LMPairJudge):
        with _quiet_loading():
            judge.model.save_pretrained(out, safe_serialization=True)
        judge.tokenizer.save_pretrained(out)
        config = {**judge.config(), **common}
        (out / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        return out
    model = judge.model
    standard = _sequence_classifier(judge) if isinstance(judge, RewardJudge) else None
    with _quiet_loading():
        (standard if standard is not None else model.backbone).save_pretrained(out, safe_serialization=True)
    heads = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if not k.startswith("backbone.")}
    save_file(heads, str(out / HEAD_NAME))
    tokenizer = judge.tokenizer
    if tokenizer.pad_token_id != judge.encoder.pad_id:
        import copy

        tokenizer = copy.deepcopy(tokenizer)
        tokenizer.pad_token = tokenizer.convert_ids_to_tokens(judge.encoder.pad_id)
    tokenizer.save_pretrained(out)
    config = {
        "format": "inpo-judge",
        "version": 1,
        "kind": judge.kind,
        "dim": model.dim,
        "prompt_head": model.prompt_head is not None,
        "temperature": judge.temperature,
        "max_length": judge.encoder.max_length,
        "input": "chat" if judge.encoder.chat else "tokens",
        "standard": standard is not None,
        **common,
    }
    (out / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return out


def read_judge_config(path: str | Path) -> dict[str, Any]:
    p = Path(path) / CONFIG_NAME
    if not p.exists():
        raise InpoError(f"{path}: not a judge directory (no {CONFIG_NAME})")
    try:
        config = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise InpoError(f"{p}: invalid JSON ({e.msg})") from None
    if not isinstance(config, dict) or config.get("kind") not in LOAD_KINDS:
        raise InpoError(f"{p}: field 'kind' must be one of {', '.join(LOAD_KINDS)}")
    return config


def _config_kind(path: Path) -> str | None:
    try:
        config = json.loads((path / CONFIG_NAME).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return config.get("kind") if isinstance(config, dict) else None


LM_PAIR_OPTIONS = ("preset", "template", "system", "answer_tokens", "add_generation_prompt", "temperature",
                   "max_length")


def _model_path(path: Path, config: Mapping[str, Any]) -> Path:
    """A wrapper judge's model directory: ``config["model"]`` (relative to the judge directory), else the judge
    directory itself."""
    model = config.get("model")
    if model is None:
        return path
    if not isinstance(model, str) or not model:
        raise InpoError(f"{path / CONFIG_NAME}: field 'model' must be a directory path")
    p = Path(model).expanduser()
    return p if p.is_absolute() else path / p


def write_wrapper_judge(out_dir: str | Path, kind: str, model_dir: str | Path, **options: Any) -> Path:
    """A judge directory that only points at a model (``judge_config.json`` with ``"model": <absolute path>``):
    ``inpo judge lm-pair MODEL_DIR OUT_DIR`` and ``inpo judge reward-model MODEL_DIR OUT_DIR``. Loaded once to
    check it works."""
    if kind not in ("lm-pair", "reward-model"):
        raise InpoError(f"unknown wrapper judge kind '{kind}' (lm-pair or reward-model)")
    model_dir = Path(model_dir).expanduser().resolve()
    config = {"format": "inpo-judge", "version": 1, "kind": kind, "model": str(model_dir),
              **{k: v for k, v in options.items() if v is not None}}
    out = Path(out_dir)
    if (out / CONFIG_NAME).exists():
        raise InpoError(f"{out}: already holds a {CONFIG_NAME}")
    _load_wrapper(out, config)  # fails with a clear message before anything is written
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / (CONFIG_NAME + ".tmp")
    tmp.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    tmp.rename(out / CONFIG_NAME)
    return out


def _load_wrapper(path: Path, config: Mapping[str, Any], *, device: str = "cpu",
                  batch_size: int | None = None) -> RewardModelJudge | LMPairJudge:
    model_path = _model_path(path, config)
    if config["kind"] == "lm-pair":
        options = {k: config[k] for k in LM_PAIR_OPTIONS if config.get(k) is not None}
        return load_causal_lm_judge(model_path, device=device, batch_size=batch_size or 8, **options)
    options = {k: config[k] for k in ("template", "max_length") if config.get(k) is not None}
    return load_reward_model(model_path, device=device, batch_size=batch_size or 16, **options)


def load_judge(path: str | Path, *, device: str = "cpu", batch_size: int = 32, kind: str | None = None,
               **options: Any) -> Judge:
    """Load any judge directory (safetensors only, no remote code).

    * written by :func:`save_judge` / :func:`train_judge` / ``inpo judge lm-pair|reward-model|api``
      (``judge_config.json`` says the kind);
    * a standard reward model without ``judge_config.json`` (e.g. TRL's ``RewardTrainer`` output: a one-label
      ``...ForSequenceClassification``): loaded as ``reward-model``;
    * ``kind="reward-model"`` / ``kind="lm-pair"`` read ``path`` as that kind whatever it holds (``options``: the
      lm-pair judge's preset, template, ... or the reward model's template, max_length).
    """
    from safetensors.torch import load_file
    from transformers import AutoModel, AutoTokenizer

    path = Path(path)
    if kind is not None:
        if kind not in ("reward-model", "lm-pair"):
            raise InpoError(f"load_judge: kind must be reward-model or lm-pair, got {kind!r}")
        return _load_wrapper(path, {"kind": kind, **options}, device=device, batch_size=batch_size)
    config_kind = _config_kind(path)
    if config_kind == "openai":  # an API judge written by OpenAIPairwiseJudge.save
        from inpo.judges.api import OpenAIPairwiseJudge

        return OpenAIPairwiseJudge.load(path)
    if config_kind is None and not (path / CONFIG_NAME).exists() and is_reward_model_dir(path):
        return load_reward_model(path, device=device)
    config = read_judge_config(path)
    if config["kind"] in ("lm-pair", "reward-model"):
        return _load_wrapper(path, config, device=device)
    has_backbone = (path / "model.safetensors").exists() or (path / "model.safetensors.index.json").exists()
    for name, present in (("model.safetensors", has_backbone), (HEAD_NAME, (path / HEAD_NAME).exists())):
        if not present:
            raise InpoError(f"{path}: missing {name} (judges are loaded from safetensors only)")
    try:
        with _quiet_loading():
            if config.get("standard"):  # a sequence classifier: its base model is the backbone
                from transformers import AutoModelForSequenceClassification

                cls = AutoModelForSequenceClassification.from_pretrained(
                    path, trust_remote_code=False, use_safetensors=True, dtype=torch.float32)
                backbone = getattr(cls, cls.base_model_prefix)
            else:
                backbone = AutoModel.from_pretrained(path, trust_remote_code=False, use_safetensors=True,
                                                     dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    except (OSError, ValueError) as e:
        raise InpoError(f"{path}: cannot load judge backbone/tokenizer ({str(e).splitlines()[0]})") from None
    model = JudgeModel(backbone, config["kind"], dim=int(config.get("dim", 4)),
                       prompt_head=bool(config.get("prompt_head", False)))
    state = load_file(str(path / HEAD_NAME))
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith("backbone.")]
    if missing or result.unexpected_keys:
        raise InpoError(
            f"{path / HEAD_NAME}: head weights do not match judge_config.json "
            f"(missing {missing}, unexpected {list(result.unexpected_keys)})"
        )
    model.float().eval()
    return make_judge(model, tokenizer, max_length=int(config.get("max_length", 512)), batch_size=batch_size,
                      temperature=float(config.get("temperature", 0.1)), device=device,
                      chat=config.get("input") == "chat")
