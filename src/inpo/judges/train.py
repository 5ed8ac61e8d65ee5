"""Training, evaluation, saving and loading of the learned judges (BT, Scaled-BT, pair, GPM).

``train_judge(data, kind, base, out_dir, cfg)`` reads pairwise data (see :mod:`inpo.judges.data`),
splits a seeded held-out set (grouped by prompt), fits the judge with AdamW, reports held-out accuracy
and calibration (ECE, 10 bins) and writes ``out_dir`` in ``save_pretrained`` format:

    out_dir/config.json, model.safetensors     the backbone (AutoModel.save_pretrained)
    out_dir/judge_head.safetensors             the linear head(s)
    out_dir/tokenizer.json, tokenizer_config.json
    out_dir/judge_config.json                  kind, dim, temperature, ..., held-out metrics

``load_judge(out_dir)`` reads it back (safetensors only, ``trust_remote_code=False``).
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from inpo.errors import InpoError
from inpo.judges.base import Judge
from inpo.judges.data import PreferencePair, load_preferences, split_held_out
from inpo.judges.losses import bt_loss, gpm_loss, pair_loss, scaled_bt_loss
from inpo.judges.models import KINDS, GPMJudge, JudgeModel, ModelJudge, PairJudge, RewardJudge, make_judge

BUILTIN_TINY = "builtin-tiny"
CONFIG_NAME = "judge_config.json"
HEAD_NAME = "judge_head.safetensors"


@dataclass(frozen=True)
class JudgeTrainConfig:
    """Hyperparameters of :func:`train_judge` (CLI flags in brackets)."""

    epochs: int = 3  # [--epochs]
    lr: float = 1e-3  # [--lr] AdamW learning rate
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

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise InpoError("judge training: epochs and batch_size must be >= 1 and lr > 0")
        if not 0 <= self.held_out < 1:
            raise InpoError(f"judge training: held_out must be in [0, 1), got {self.held_out}")
        if self.temperature <= 0:
            raise InpoError(f"judge training: temperature must be > 0, got {self.temperature}")


@dataclass
class TrainResult:
    judge: ModelJudge
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


def _load_backbone_and_tokenizer(base: str | Path, texts: Sequence[str], cfg: JudgeTrainConfig):
    if str(base) == BUILTIN_TINY:
        from inpo.judges.tiny import build_tiny_backbone, build_word_tokenizer

        tokenizer = build_word_tokenizer(texts)
        backbone = build_tiny_backbone(
            len(tokenizer), hidden_size=cfg.tiny_hidden, num_layers=cfg.tiny_layers,
            num_heads=max(1, cfg.tiny_hidden // 16), seed=cfg.seed,
        )
        return backbone, tokenizer
    from transformers import AutoModel, AutoTokenizer

    path = Path(base)
    if not path.is_dir():
        raise InpoError(f"--base {base}: not a local model directory (or use '{BUILTIN_TINY}')")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
        with _quiet_loading():
            backbone = AutoModel.from_pretrained(path, trust_remote_code=False, dtype=torch.float32)
    except (OSError, ValueError) as e:
        raise InpoError(f"--base {base}: cannot load model/tokenizer ({str(e).splitlines()[0]})") from None
    return backbone, tokenizer


def _loss(judge: ModelJudge, batch: Sequence[PreferencePair], cfg: JudgeTrainConfig) -> torch.Tensor:
    prompts = [q.prompt for q in batch]
    chosen = [q.chosen for q in batch]
    rejected = [q.rejected for q in batch]
    n = len(batch)
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
    judge: ModelJudge,
    train: Sequence[PreferencePair],
    cfg: JudgeTrainConfig,
    log: Callable[[dict[str, float]], None] | None = None,
) -> list[dict[str, float]]:
    """AdamW over ``cfg.epochs`` passes of seeded mini-batches; returns per-epoch mean loss."""
    params = [p for p in judge.model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    rng = random.Random(cfg.seed)
    order = list(range(len(train)))
    history = []
    step = 0
    for epoch in range(cfg.epochs):
        judge.model.train()
        rng.shuffle(order)
        total, count = 0.0, 0
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
        row = {"epoch": epoch + 1, "step": step, "loss": total / max(count, 1)}
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
    """Fit a judge of ``kind`` (bt | scaled-bt | pair | gpm) on ``data`` from backbone ``base``.

    ``base``: a local transformers model directory (``AutoModel`` + ``AutoTokenizer``, no remote code)
    or ``"builtin-tiny"`` (random tiny Llama + word tokenizer over the data, built in code).
    Metrics (held-out): ``accuracy``, ``ece``, ``p_chosen``; plus ``n_pairs``, ``n_train``,
    ``n_held_out``, ``n_ties_dropped``, ``train_accuracy``. Writes ``out_dir`` if given.
    """
    cfg = cfg or JudgeTrainConfig()
    if kind not in KINDS:
        raise InpoError(f"unknown judge kind '{kind}' (choose one of {', '.join(KINDS)})")
    prefs = load_preferences(data)
    train, held = split_held_out(prefs.pairs, fraction=cfg.held_out, seed=cfg.seed)
    if not train:
        raise InpoError(f"{prefs.source}: nothing left to train on after the held-out split")
    texts = [t for q in prefs.pairs for t in (q.prompt, q.chosen, q.rejected)]
    torch.manual_seed(cfg.seed)
    backbone, tokenizer = _load_backbone_and_tokenizer(base, texts, cfg)
    torch.manual_seed(cfg.seed)
    model = JudgeModel(backbone, kind, dim=cfg.dim, prompt_head=cfg.prompt_head).float()
    judge = make_judge(model, tokenizer, max_length=cfg.max_length, temperature=cfg.temperature)
    history = fit_judge(judge, train, cfg, log)
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
    }
    out = None
    if out_dir is not None:
        out = save_judge(judge, out_dir, cfg=cfg, metrics=metrics, base=str(base))
    return TrainResult(judge=judge, metrics=metrics, out_dir=out, history=history)


# ----------------------------------------------------------------------------------------- save / load


def save_judge(
    judge: ModelJudge,
    out_dir: str | Path,
    *,
    cfg: JudgeTrainConfig | None = None,
    metrics: Mapping[str, float] | None = None,
    base: str | None = None,
) -> Path:
    """Write backbone (save_pretrained, safetensors), heads, tokenizer and ``judge_config.json``."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = judge.model
    with _quiet_loading():
        model.backbone.save_pretrained(out, safe_serialization=True)
    heads = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if not k.startswith("backbone.")}
    save_file(heads, str(out / HEAD_NAME))
    judge.tokenizer.save_pretrained(out)
    config = {
        "format": "inpo-judge",
        "version": 1,
        "kind": judge.kind,
        "dim": model.dim,
        "prompt_head": model.prompt_head is not None,
        "temperature": judge.temperature,
        "max_length": judge.encoder.max_length,
        "base": base,
        "train_config": asdict(cfg) if cfg is not None else None,
        "metrics": dict(metrics) if metrics is not None else None,
    }
    (out / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return out


def read_judge_config(path: str | Path) -> dict[str, Any]:
    from inpo.inputs import MAX_CONFIG_BYTES, check_judge_config, json_loads, read_text

    p = Path(path) / CONFIG_NAME
    if not p.exists():
        raise InpoError(f"{path}: not a judge directory (no {CONFIG_NAME})")
    config = json_loads(read_text(p, max_bytes=MAX_CONFIG_BYTES), str(p))  # UTF-8, JSON: one-line errors
    if not isinstance(config, dict) or config.get("kind") not in KINDS:
        raise InpoError(f"{p}: field 'kind' must be one of {', '.join(KINDS)}")
    check_judge_config(config, p)
    return config


def _config_kind(path: Path) -> str | None:
    try:
        config = json.loads((path / CONFIG_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):  # UnicodeDecodeError too: read_judge_config reports it
        return None
    return config.get("kind") if isinstance(config, dict) else None


def load_judge(path: str | Path, *, device: str = "cpu", batch_size: int = 32) -> ModelJudge:
    """Load a judge written by :func:`save_judge` / :func:`train_judge` (safetensors only)."""
    from safetensors.torch import load_file
    from transformers import AutoModel, AutoTokenizer

    path = Path(path)
    if _config_kind(path) == "openai":  # an API judge written by OpenAIPairwiseJudge.save
        from inpo.judges.api import OpenAIPairwiseJudge

        return OpenAIPairwiseJudge.load(path)  # type: ignore[return-value]
    config = read_judge_config(path)
    has_backbone = (path / "model.safetensors").exists() or (path / "model.safetensors.index.json").exists()
    for name, present in (("model.safetensors", has_backbone), (HEAD_NAME, (path / HEAD_NAME).exists())):
        if not present:
            raise InpoError(f"{path}: missing {name} (judges are loaded from safetensors only)")
    try:
        with _quiet_loading():
            backbone = AutoModel.from_pretrained(path, trust_remote_code=False, use_safetensors=True,
                                                 dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    except (OSError, ValueError) as e:
        raise InpoError(f"{path}: cannot load judge backbone/tokenizer ({str(e).splitlines()[0]})") from None
    model = JudgeModel(backbone, config["kind"], dim=int(config.get("dim", 4)),
                       prompt_head=bool(config.get("prompt_head", False)))
    try:  # a truncated file or weights of the wrong shape: one line naming the file
        state = load_file(str(path / HEAD_NAME))
        result = model.load_state_dict(state, strict=False)
    except Exception as e:  # noqa: BLE001 - safetensors and torch raise several types
        raise InpoError(f"{path / HEAD_NAME}: unreadable or does not fit judge_config.json ({type(e).__name__}: "
                        f"{str(e).splitlines()[0][:200] if str(e) else ''})") from None
    missing = [k for k in result.missing_keys if not k.startswith("backbone.")]
    if missing or result.unexpected_keys:
        raise InpoError(
            f"{path / HEAD_NAME}: head weights do not match judge_config.json "
            f"(missing {missing}, unexpected {list(result.unexpected_keys)})"
        )
    model.float().eval()
    return make_judge(model, tokenizer, max_length=int(config.get("max_length", 512)), batch_size=batch_size,
                      temperature=float(config.get("temperature", 0.1)), device=device)
