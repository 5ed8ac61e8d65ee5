"""Load a checkpoint saved by TRL (or any ``transformers.Trainer``) as pi_ref.

TRL's trainers save in ``save_pretrained`` format: ``trainer.save_model(dir)`` writes ``config.json``, the
weights (``model.safetensors``) and the tokenizer; periodic checkpoints go to ``<output_dir>/checkpoint-<step>/``
with the optimizer state next to them. Both load here; an output directory holding only ``checkpoint-*``
sub-directories resolves to the one with the highest step. A LoRA adapter directory (``adapter_config.json``)
must be merged first (the error message says how).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from inpo.errors import InpoError

_STEP_RE = re.compile(r"^checkpoint-(\d+)$")


def resolve_checkpoint(path: str | Path) -> Path:
    """The model directory for ``path``: itself if it holds ``config.json``, else its latest ``checkpoint-<N>/``."""
    p = Path(path)
    if not p.is_dir():
        raise InpoError(f"{path}: not a directory")
    if (p / "adapter_config.json").is_file() and not (p / "config.json").is_file():
        raise InpoError(
            f"{path}: a PEFT adapter, not a full model; merge it first: `AutoPeftModelForCausalLM.from_pretrained"
            f"('{path}').merge_and_unload().save_pretrained(OUT)` and save the tokenizer next to it"
        )
    if (p / "config.json").is_file():
        return p
    steps = sorted((int(m.group(1)), d) for d in p.iterdir() if d.is_dir() and (m := _STEP_RE.match(d.name)))
    if not steps:
        raise InpoError(f"{path}: no config.json and no checkpoint-<step>/ directory (not a saved model)")
    return resolve_checkpoint(steps[-1][1])


def load_trl_checkpoint(path: str | Path, *, trust_remote_code: bool = False) -> tuple[Any, Any]:
    """``(model, tokenizer)`` from a TRL-saved directory, the model frozen in eval mode (ready as pi_ref).

    The same directory (or :func:`resolve_checkpoint`'s result) can be given as ``model.path`` to ``inpo train``.
    """
    from inpo.models import load_causal_lm, load_tokenizer

    d = resolve_checkpoint(path)
    if not any(d.glob("*.safetensors")):
        raise InpoError(f"{d}: no safetensors weights (save with save_pretrained(..., safe_serialization=True))")
    model = load_causal_lm(d, trust_remote_code=trust_remote_code)
    tokenizer = load_tokenizer(d, trust_remote_code=trust_remote_code)
    model.requires_grad_(False).eval()
    return model, tokenizer
