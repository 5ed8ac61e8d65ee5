"""SFT stage of the built-in task: train the random-init tiny LM on the SFT pairs, cache it on disk.

The result is pi_ref for the alignment loop: a ``save_pretrained`` directory (safetensors model +
tokenizer) that loads with ``AutoModelForCausalLM.from_pretrained`` / ``AutoTokenizer.from_pretrained``,
plus ``task.json`` (config, hash, SFT statistics). The directory name carries the config hash, so a
repeated call with the same config returns the cached directory without training.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerFast
from transformers.utils import logging as hf_logging

from inpo.errors import InpoError
from inpo.tasks.builtin import TASK_VERSION, BuiltinTask

IGNORE_INDEX = -100


def encode_sft(task: BuiltinTask, tokenizer: PreTrainedTokenizerFast) -> tuple[torch.Tensor, ...]:
    """Right-padded ``(input_ids, attention_mask, labels)`` of all SFT pairs; labels only on the response.

    Sequence = ``tok(prompt).input_ids + tok(response, add_special_tokens=False).input_ids + [eos]``.
    """
    rows, labels = [], []
    for prompt, response in task.sft_pairs():
        p = tokenizer(prompt).input_ids
        r = tokenizer(response, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
        rows.append(p + r)
        labels.append([IGNORE_INDEX] * len(p) + r)
    width = max(len(r) for r in rows)
    n = len(rows)
    ids = torch.full((n, width), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros((n, width), dtype=torch.long)
    lab = torch.full((n, width), IGNORE_INDEX, dtype=torch.long)
    for i, (r, la) in enumerate(zip(rows, labels, strict=True)):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
        lab[i, : len(r)] = torch.tensor(la)
    return ids, mask, lab


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Temporarily ``torch.set_num_threads(n)`` (``None``: leave as is).

    For this ~85k-parameter model one thread is much faster than two on a busy 2-core machine
    (measured: 100 SFT steps 3.2 s wall with 1 thread vs 44.8 s with 2, load average ~5).
    """
    prev = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(prev)


def train_sft(task: BuiltinTask, model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast,
              *, progress: bool = True, num_threads: int | None = 1) -> dict:
    """AdamW on the response-token cross-entropy for ``cfg.sft_steps`` minibatch steps (seeded).

    Learning rate: linear warm-up over the first 10% of steps, then cosine decay to 0 (the decay makes
    the first-token distribution settle at the data frequencies pi_sft). Returns statistics.
    """
    with torch_threads(num_threads):
        return _train_sft(task, model, tokenizer, progress)


def _train_sft(task: BuiltinTask, model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast,
               progress: bool) -> dict:
    cfg = task.cfg
    ids, mask, labels = encode_sft(task, tokenizer)
    n = ids.shape[0]
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.sft_lr, betas=(0.9, 0.98), weight_decay=0.0)
    warm = max(1, cfg.sft_steps // 10)

    def lr_at(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1.0 + math.cos(math.pi * (step - warm) / max(1, cfg.sft_steps - warm)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    model.train()
    t0, c0 = time.perf_counter(), time.process_time()
    perm, cursor, loss_val = torch.randperm(n, generator=gen), 0, float("nan")
    bs = min(cfg.sft_batch_size, n)
    for step in range(cfg.sft_steps):
        if cursor + bs > n:
            perm, cursor = torch.randperm(n, generator=gen), 0
        idx = perm[cursor: cursor + bs]
        cursor += bs
        loss = model(input_ids=ids[idx], attention_mask=mask[idx], labels=labels[idx]).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        loss_val = float(loss.detach())
        if progress and (step + 1) % max(1, cfg.sft_steps // 5) == 0:
            print(f"sft step {step + 1}/{cfg.sft_steps} loss {loss_val:.4f}", file=sys.stderr, flush=True)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    model.eval()
    return {"steps": cfg.sft_steps, "final_loss": loss_val, "wall_time_s": round(wall, 2),
            "cpu_time_s": round(cpu, 2), "n_sequences": n, **style_fit(task, model, tokenizer)}


def style_fit(task: BuiltinTask, model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast) -> dict:
    """How well the model's exact action distribution matches pi_sft on the eval prompts.

    ``per_topic``: mean over the topic's eval prompts of the model distribution; ``max_abs_err``: max over
    eval prompts and actions of |pi_model - pi_sft|; ``mean_tv``: mean total-variation distance.
    """
    prompts = task.eval_prompts
    pi = task.style_distribution(model, tokenizer, prompts)
    target = task.sft_distribution(prompts)
    topics = torch.tensor([task.topic_of(p) for p in prompts])
    per_topic = [pi[topics == t].mean(0).tolist() for t in range(task.cfg.num_topics)]
    return {
        "max_abs_err": float((pi - target).abs().max()),
        "mean_tv": float(0.5 * (pi - target).abs().sum(-1).mean()),
        "per_topic": [[round(v, 4) for v in row] for row in per_topic],
        "pi_sft": task.sft_distributions.tolist(),
    }


def reference_dir(task: BuiltinTask, cache_dir: str | Path) -> Path:
    """``<cache_dir>/builtin-<config hash>``."""
    return Path(cache_dir) / f"builtin-{task.cfg.config_hash()}"


def build_reference(task: BuiltinTask, cache_dir: str | Path, *, force: bool = False,
                    progress: bool = True, num_threads: int | None = 1) -> Path:
    """Return a directory with the SFT'd model + tokenizer (safetensors); train only if not cached.

    The directory is ``reference_dir(task, cache_dir)``; it counts as cached when its ``task.json``
    holds the same config hash. Training writes to a temporary sibling first and renames it into
    place, so an interrupted run never leaves a half-written cache.
    """
    out = reference_dir(task, cache_dir)
    key = task.cfg.config_hash()
    meta_path = out / "task.json"
    if not force and meta_path.is_file() and (out / "model.safetensors").is_file():
        try:
            if json.loads(meta_path.read_text()).get("config_hash") == key:
                if progress:
                    print(f"sft: reusing cached reference {out}", file=sys.stderr, flush=True)
                return out
        except ValueError:  # corrupt metadata (bad JSON, not UTF-8): rebuild
            pass
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InpoError(f"cannot create cache directory {out.parent}: {e}") from e
    tokenizer = task.make_tokenizer()
    model = task.make_model(tokenizer, seed=task.cfg.seed)
    if progress:
        n_params = sum(p.numel() for p in model.parameters())
        print(f"sft: training tiny Llama ({n_params} params) for {task.cfg.sft_steps} steps",
              file=sys.stderr, flush=True)
    stats = train_sft(task, model, tokenizer, progress=progress, num_threads=num_threads)
    stats["n_params"] = sum(p.numel() for p in model.parameters())
    if progress:
        print(f"sft: done in {stats['wall_time_s']} s, max |pi - pi_sft| = {stats['max_abs_err']:.4f}",
              file=sys.stderr, flush=True)
    if stats["mean_tv"] > 0.05:
        warnings.warn(f"sft: the reference's style distribution is far from pi_sft (mean TV "
                      f"{stats['mean_tv']:.3f}); raise task.sft_steps", stacklevel=2)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}-tmp-"))
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        meta = {"task_version": TASK_VERSION, "config_hash": key, "config": asdict(task.cfg), "sft": stats}
        (tmp / "task.json").write_text(json.dumps(meta, indent=2))
        if out.exists():
            shutil.rmtree(out)
        try:
            os.replace(tmp, out)
        except OSError:  # another process finished the same build first: keep its result
            if not (out / "task.json").is_file():
                raise
    finally:
        if bars:
            hf_logging.enable_progress_bar()
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def load_reference(path: str | Path) -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    """``(AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path))``, model in eval mode."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise InpoError(f"{path}: not a saved model directory (no config.json)")
    model = AutoModelForCausalLM.from_pretrained(path)
    model.eval()
    return model, AutoTokenizer.from_pretrained(path)
