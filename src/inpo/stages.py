"""The per-shard bodies of the loop's stages: each takes the prompt indices of one process (``idx``) and returns
that shard's part of the stage's artifact (:func:`inpo.rundir.sharded_stage` gathers the parts in prompt order).

``sample_stage`` (K responses per prompt, with the sampler's own log-probs when they can serve as pi_t's anchor),
``judge_stage`` (K x K preference matrices), ``logprob_stage`` (the anchors' sequence log-probs, reusing and
checking the sampler's), and ``reuse_metrics`` (how an anchor was made, for metrics.jsonl).
"""

from __future__ import annotations

import copy
import math
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from inpo.config import RunConfig
from inpo.data import Prompt
from inpo.errors import InpoError
from inpo.judges.base import Judge
from inpo.judges.checked import judge_matrices
from inpo.logprobs import LOGPROB_CHUNK, cache_logprobs
from inpo.models import Setup
from inpo.rundir import RunDir
from inpo.sampling import Samples, is_plain, sample_responses


def sample_stage(
    idx: list[int], model: torch.nn.Module, prompt_ids: list[list[int]], cfg: RunConfig, setup: Setup, *,
    seed: int, mixture: tuple[torch.nn.Module, float] | None, progress: Callable[[int], None] | None,
    checkpoint: Callable[[], tuple[Path, bool]] | None = None, record: bool = True,
) -> list[list[int]] | dict[str, Any]:
    """K responses per prompt of ``idx``, flattened (prompt i, sample k -> i*K + k). The vLLM backend
    samples from ``checkpoint()``, a saved directory of the same policy (and whether it is a temporary one).
    Plain sampling with ``sampling.reuse_logprobs`` and ``record`` (the samples of a step that can reuse them:
    step 0, not under FSDP2): ``{"responses": ..., "logps": [N*K] float32}``, the sampler's own sequence
    log-probs (sum over response tokens, EOS included)."""
    chosen = [prompt_ids[i] for i in idx]
    s = cfg.sampling
    lps: list[list[float]] | None = [] if record and s.reuse_logprobs and is_plain(s) and mixture is None else None
    if s.backend == "vllm":
        from inpo.sampling import sample_responses_vllm
        from inpo.vllm_env import resolve_python

        python = resolve_python(s.vllm_python)
        path, temporary = checkpoint() if checkpoint is not None else (setup.ref_path, False)
        try:
            nested = sample_responses_vllm(path, chosen, s, eos_id=setup.eos_id, seed=seed, python=python,
                                           threads=torch.get_num_threads(), logprobs=lps, stop_ids=setup.stop_ids,
                                           tokenizer=setup.tokenizer)
        finally:
            if temporary:
                shutil.rmtree(path, ignore_errors=True)
        if progress is not None:
            progress(len(chosen))
    else:
        nested = sample_responses(model, chosen, s, eos_id=setup.eos_id, pad_id=setup.pad_id, seed=seed,
                                  mixture=mixture, progress=progress, logprobs=lps, stop_ids=setup.stop_ids,
                                  tokenizer=setup.tokenizer)
    flat = [r for rs in nested for r in rs]
    if lps is None:
        return flat
    return {"responses": flat, "logps": torch.tensor([math.fsum(x) for x in lps], dtype=torch.float32)}


def judge_stage(idx: list[int], judge: Judge, prompts: list[Prompt], texts: list[str], k: int,
                progress: Callable[[int], None] | None = None) -> torch.Tensor:
    return judge_matrices(judge, [prompts[i] for i in idx], [texts[i * k + j] for i in idx for j in range(k)], k,
                          progress)


def logprob_stage(idx: list[int], models: dict[str, torch.nn.Module], samples: Samples, *, pad_id: int,
                  batch_size: int, reuse: list[str] | None = None, check: int = 0,
                  tolerance: float = 1e-3, chunk: int = LOGPROB_CHUNK) -> dict[str, torch.Tensor]:
    """The anchors' log-probs of the samples of prompts ``idx``. Anchors named in ``reuse`` (the sampling
    policy itself) take the sampler's log-probs, after ``check`` evenly spaced sequences are recomputed by a
    forward pass: if any differs by more than ``tolerance`` nats per token, a forward pass computes them all.
    With ``reuse``, also per sample: ``sampler_diff`` (|sampler - forward| per sequence, NaN if unchecked),
    ``sampler_diff_per_token`` and ``from_sampler`` (1: the sampler's values were used). ``chunk``:
    ``train.logprob_chunk`` (:func:`inpo.logprobs.sequence_logprobs`)."""
    k = samples.k
    rows = [i * k + j for i in idx for j in range(k)]
    responses = [samples.responses[r] for r in rows]
    sub = Samples([samples.prompt_ids[i] for i in idx], responses, k)
    reuse = [n for n in (reuse or []) if n in models]
    cache = cache_logprobs({n: m for n, m in models.items() if n not in reuse}, sub, pad_id=pad_id,
                           batch_size=batch_size, chunk=chunk)
    if not reuse or samples.logps is None:
        return cache
    sampler_lps = samples.logps[rows]
    n = len(rows)
    diff = torch.full((n,), math.nan)
    per_token = torch.full((n,), math.nan)
    picked = sorted({round(x) for x in torch.linspace(0, n - 1, min(check, n)).tolist()}) if n and check else []
    ok = True
    if picked:
        part = Samples([sub.prompt_ids[i // k] for i in picked], [responses[i] for i in picked], 1)
        fwd = cache_logprobs({"m": models[reuse[0]]}, part, pad_id=pad_id, batch_size=batch_size, chunk=chunk)["m"]
        d = (sampler_lps[picked] - fwd).abs()
        lengths = torch.tensor([max(len(responses[i]), 1) for i in picked], dtype=torch.float32)
        diff[picked], per_token[picked] = d, d / lengths
        ok = bool((d / lengths <= tolerance).all())
    if ok:
        values = sampler_lps.clone()
    else:  # the sampler's log-probs are not pi_t's here: one forward pass for all
        values = cache_logprobs({"m": models[reuse[0]]}, sub, pad_id=pad_id, batch_size=batch_size, chunk=chunk)["m"]
    for name in reuse:
        cache[name] = values
    cache["sampler_diff"], cache["sampler_diff_per_token"] = diff, per_token
    cache["from_sampler"] = torch.full((n,), float(ok))
    return cache


def reuse_metrics(cache: dict[str, torch.Tensor], step: int) -> dict[str, float]:
    """How step ``step``'s pi_t anchor was made: ``anchors/s<step>_from_sampler`` (fraction of samples whose
    log-probs are the sampler's, 0 = all by a forward pass) and, over the sequences checked against a forward
    pass, ``anchors/s<step>_max_abs_diff`` (nats per sequence) and ``..._max_abs_diff_per_token``."""
    if "sampler_diff" not in cache:
        return {}
    out = {f"anchors/s{step}_from_sampler": cache["from_sampler"].float().mean().item()}
    checked = ~torch.isnan(cache["sampler_diff"])
    if checked.any():
        out[f"anchors/s{step}_max_abs_diff"] = cache["sampler_diff"][checked].max().item()
        out[f"anchors/s{step}_max_abs_diff_per_token"] = cache["sampler_diff_per_token"][checked].max().item()
    return out


def vllm_checkpoint(cfg: RunConfig, rundir: RunDir, setup: Setup, t: int, step: int, policy: torch.nn.Module, *,
                    sharded: bool, rank: int) -> tuple[Path, bool]:
    """A directory vLLM loads pi (the policy sampled at step ``step`` of iteration t) from, and whether it is
    temporary: the saved pi_t (``iter_<t-1>/``, pi_ref's directory for t = 1) when that is a full model of the
    policy; otherwise (LoRA: merged into the base weights; EGPO's second step: the policy after the first) the
    policy written to ``stages/iter_t/s<step>_vllm_policy/``, removed after sampling."""
    if step == 0 and (t == 1 or cfg.peft is None):
        return (rundir.iter_dir(t - 1) if t > 1 else setup.ref_path), False
    if sharded:
        raise InpoError("sampling.backend=vllm under FSDP2 samples only saved full checkpoints (not EGPO's second "
                        "step or LoRA iterates); use backend=transformers")
    out = rundir.stage(t, f"s{step}_vllm_policy_{rank}").with_suffix("")
    shutil.rmtree(out, ignore_errors=True)
    full = copy.deepcopy(policy).merge_and_unload() if hasattr(policy, "merge_and_unload") else policy
    full.save_pretrained(out)
    return out, True


