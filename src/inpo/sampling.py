"""Response generation: K samples per prompt with transformers ``generate`` (batched, KV cache).

Prompts are token-id lists; they are left-padded into one batch per ``batch_size`` prompts and each
row is expanded to K return sequences, so one ``generate`` call samples K x batch_size responses.
A response keeps its EOS token (its log-prob is part of the sequence); a response that reaches
``max_new_tokens`` without EOS is kept as is (truncated). Besides EOS, sampling stops at the chat template's
end-of-turn tokens (:func:`end_of_turn_ids`, the loop's ``stop_ids``) and at the stop strings ``sampling.stop``
(the response keeps the tokens up to the one that completes the string; :func:`response_texts`, what the judge
reads, cuts the text before it). :func:`truncated` tells the responses that ended for none of these reasons.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList

from inpo.config import SamplingConfig
from inpo.errors import InpoError


@dataclass
class Samples:
    """K responses per prompt, flattened: sample i*K + k is response k of prompt i."""

    prompt_ids: list[list[int]]
    responses: list[list[int]]
    k: int
    logps: torch.Tensor | None = None  # [N*K] the sampler's own sequence log-probs (plain sampling), else None


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        if len(p):
            ids[i, width - len(p) :] = torch.as_tensor(list(p), dtype=torch.long)
            mask[i, width - len(p) :] = 1
    return ids, mask


END_OF_TURN_MARKERS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|eom_id|>", "</s>")


def end_of_turn_ids(tokenizer: Any, model: torch.nn.Module | None = None) -> list[int]:
    """Token ids that end an assistant turn: EOS, the model's ``generation_config.eos_token_id`` (one or several)
    and the known end-of-turn markers (``<|im_end|>``, ``<|eot_id|>``, ...) that the chat template writes."""
    ids = [int(tokenizer.eos_token_id)]
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for t in gen_eos if isinstance(gen_eos, list) else [gen_eos]:
        if isinstance(t, int) and t < len(tokenizer):
            ids.append(t)
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, str):
        vocab = tokenizer.get_vocab()
        ids += [vocab[m] for m in END_OF_TURN_MARKERS if m in template and m in vocab]
    return list(dict.fromkeys(ids))


def cut_at_stop_strings(tokens: Sequence[int], tokenizer: Any, stop: Sequence[str]) -> tuple[list[int], bool]:
    """The tokens up to (and with) the one whose decoding first contains a stop string, and whether one occurs."""
    toks = [int(t) for t in tokens]
    if not stop or not any(s in tokenizer.decode(toks) for s in stop):
        return toks, False
    for n in range(1, len(toks) + 1):
        if any(s in tokenizer.decode(toks[:n]) for s in stop):
            return toks[:n], True
    return toks, True


def response_texts(tokenizer: Any, responses: Sequence[Sequence[int]], stop: Sequence[str] = ()) -> list[str]:
    """What the judge reads: each response decoded without special tokens, cut before its first stop string."""
    texts = tokenizer.batch_decode([list(r) for r in responses], skip_special_tokens=True)
    out = []
    for t in texts:
        cut = min((t.index(s) for s in stop if s and s in t), default=len(t))
        out.append(t[:cut])
    return out


def truncated(responses: Sequence[Sequence[int]], stop_ids: Sequence[int], tokenizer: Any = None,
              stop: Sequence[str] = ()) -> list[bool]:
    """Per response: True if it ended at ``max_new_tokens`` (no end-of-turn token last, no stop string)."""
    ids = set(int(i) for i in stop_ids)
    out = []
    for r in responses:
        ended = bool(r) and int(r[-1]) in ids
        if not ended and stop and tokenizer is not None:
            ended = any(s in tokenizer.decode(list(r)) for s in stop)
        out.append(not ended)
    return out


def strip_response(tokens: Sequence[int], eos_id: int, pad_id: int, stop_ids: Sequence[int] = ()) -> list[int]:
    """Cut a generated continuation after its first EOS (or other stop token; kept); drop trailing padding."""
    out: list[int] = []
    for t in tokens:
        out.append(int(t))
        if t == eos_id or t in stop_ids:
            return out
    while out and out[-1] == pad_id and pad_id != eos_id:
        out.pop()
    return out


class GeometricMixture(LogitsProcessor):
    """Token-level geometric mixture for Nash-MD sampling (Munos et al. 2023; as in TRL's Nash-MD):
    log pi_mix(.|s) = (1 - w) log pi(.|s) + w log pi_ref(.|s) + const, with ``w`` the reference weight.

    The reference model is run on the whole prefix at every step (no KV cache): fine for the short
    responses of the built-in task, quadratic in length for long ones.
    """

    def __init__(self, ref: torch.nn.Module, weight: float, pad_id: int, prompt_mask: torch.Tensor) -> None:
        self.ref, self.weight, self.pad_id, self.prompt_mask = ref, weight, pad_id, prompt_mask

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        new = input_ids.shape[1] - self.prompt_mask.shape[1]
        mask = torch.cat([self.prompt_mask, self.prompt_mask.new_ones((input_ids.shape[0], new))], dim=1)
        pos = (mask.cumsum(-1) - 1).clamp_min(0)
        ref_logits = self.ref(input_ids=input_ids, attention_mask=mask, position_ids=pos).logits[:, -1]
        mix = (1 - self.weight) * torch.log_softmax(scores.float(), -1) + self.weight * torch.log_softmax(
            ref_logits.float(), -1)
        return mix.to(scores.dtype)


def is_plain(cfg: SamplingConfig) -> bool:
    """Sampling from pi itself: temperature 1, top-p 1, top-k off (no repetition penalty is applied here). Only
    then are the sampler's log-probs pi_t's own (the anchor INPO needs)."""
    return cfg.temperature == 1.0 and cfg.top_p == 1.0 and not cfg.top_k


class LogprobRecorder(LogitsProcessor):
    """Records log pi(token | prefix) of the sampled tokens while ``generate`` runs, without changing a score.

    At each step it keeps the log-softmax of the scores it is given (under plain sampling and as the first
    processor: the model's raw logits, in float32); the next call sees the token that was drawn from them in
    ``input_ids[:, -1]`` and keeps only that token's log-prob, so one [B, V] row set is held at a time (not the
    [steps, B, V] of ``output_logits``). :meth:`finish` adds the last step's token.
    """

    def __init__(self) -> None:
        self.prev: torch.Tensor | None = None
        self.steps: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.prev is not None:
            self.steps.append(self.prev.gather(-1, input_ids[:, -1:]).squeeze(-1))
        self.prev = torch.log_softmax(scores.float(), -1)
        return scores

    def finish(self, last_tokens: torch.Tensor) -> torch.Tensor:
        """[B, steps] float32 log-probs of the generated tokens (``last_tokens``: the final step's)."""
        if self.prev is not None:
            self.steps.append(self.prev.gather(-1, last_tokens[:, None].to(self.prev.device)).squeeze(-1))
        self.prev = None
        return torch.stack(self.steps, 1).cpu() if self.steps else torch.zeros((len(last_tokens), 0))


@torch.no_grad()
def sample_responses(
    model: torch.nn.Module,
    prompts: Sequence[Sequence[int]],
    cfg: SamplingConfig,
    *,
    eos_id: int,
    pad_id: int,
    seed: int,
    mixture: tuple[torch.nn.Module, float] | None = None,
    progress: Callable[[int], None] | None = None,
    logprobs: list[list[float]] | None = None,
    stop_ids: Sequence[int] = (),
    tokenizer: Any = None,
) -> list[list[list[int]]]:
    """``out[i][k]`` = the k-th sampled response (token ids) to prompt i; seeded (``seed``).

    ``mixture=(ref_model, w)`` samples from the geometric mixture pi^{1-w} pi_ref^w (Nash-MD).
    ``logprobs``: a list that receives, per response in the order of ``out`` flattened, its sum of token
    log-probs under the sampling distribution (:class:`LogprobRecorder`; the samples do not change).
    ``stop_ids``: more tokens that end a response like EOS (end-of-turn); ``cfg.stop`` strings need the
    ``tokenizer``."""
    device = next(model.parameters()).device
    stop_ids = [int(i) for i in stop_ids if int(i) != eos_id]
    if cfg.stop and tokenizer is None:
        raise ValueError("sampling.stop needs the tokenizer")
    gen_cfg = GenerationConfig(
        do_sample=True,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        top_k=cfg.top_k,
        max_new_tokens=cfg.max_new_tokens,
        num_return_sequences=cfg.num_samples,
        eos_token_id=[eos_id, *stop_ids] if stop_ids else eos_id,
        pad_token_id=pad_id,
        stop_strings=list(cfg.stop) or None,
    )
    extra = {"tokenizer": tokenizer} if cfg.stop else {}
    was_training = model.training
    model.eval()
    torch.manual_seed(seed)
    results: list[list[list[int]]] = []
    try:
        for s in range(0, len(prompts), cfg.batch_size):
            chunk = prompts[s : s + cfg.batch_size]
            ids, mask = left_pad(chunk, pad_id)
            processors = LogitsProcessorList()
            recorder = LogprobRecorder() if logprobs is not None else None
            if recorder is not None:
                processors.append(recorder)
            if mixture is not None:
                rep = mask.repeat_interleave(cfg.num_samples, dim=0).to(device)
                processors.append(GeometricMixture(mixture[0], mixture[1], pad_id, rep))
            out = model.generate(
                input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=gen_cfg,
                logits_processor=processors, **extra,
            )
            new = out[:, ids.shape[1] :].cpu().tolist()
            k = cfg.num_samples
            token_lps = recorder.finish(out[:, -1]) if recorder is not None else None
            for i in range(len(chunk)):
                rows = [strip_response(new[i * k + j], eos_id, pad_id, stop_ids) for j in range(k)]
                if cfg.stop:
                    rows = [cut_at_stop_strings(r, tokenizer, cfg.stop)[0] for r in rows]
                results.append(rows)
                if token_lps is not None and logprobs is not None:
                    logprobs.extend(token_lps[i * k + j, : len(r)].tolist() for j, r in enumerate(results[-1]))
            if progress is not None:
                progress(len(chunk))
    finally:
        model.train(was_training)
    return results


# --------------------------------------------------------------------------------------------------
# vLLM: a worker process under the interpreter that has vLLM (python -m inpo.vllm_env builds one)
# --------------------------------------------------------------------------------------------------

VLLM_CPU_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)  # vLLM 0.32's CPU attention kernels


def _llama_head_padded(model_dir: Path, out: Path, head_dim: int, new_dim: int) -> None:
    """Write ``model_dir`` (a Llama, default RoPE) with heads of ``new_dim`` dims computing the same function.

    RoPE rotates dim pairs (j, j + d/2) at frequency theta^(-2j/d). In a head of d' = m*d dims, dim j goes to
    m*j and dim j + d/2 to m*j + d'/2: the pair (m*j, m*j + d'/2) turns at theta^(-2mj/d') = theta^(-2j/d),
    the same; all other dims of q and k are 0, so q.k is unchanged; q is scaled by sqrt(d'/d) so that
    q.k / sqrt(d') = q.k / sqrt(d). v's dims go first, with zeros after, and o_proj reads only those.
    """
    import json
    import shutil

    from safetensors.torch import load_file, save_file

    cfg = json.loads((model_dir / "config.json").read_text())
    n_q, n_kv = cfg["num_attention_heads"], cfg.get("num_key_value_heads") or cfg["num_attention_heads"]
    m, half = new_dim // head_dim, head_dim // 2
    src = torch.arange(head_dim)
    dst = torch.cat([m * torch.arange(half), m * torch.arange(half) + new_dim // 2])

    def spread(w: torch.Tensor, heads: int, scale: float) -> torch.Tensor:  # [heads*d, ...] -> [heads*d', ...]
        w = w.reshape(heads, head_dim, *w.shape[1:])
        out_w = w.new_zeros(heads, new_dim, *w.shape[2:])
        out_w[:, dst] = w[:, src] * scale
        return out_w.reshape(heads * new_dim, *w.shape[2:])

    def first(w: torch.Tensor, heads: int) -> torch.Tensor:
        w = w.reshape(heads, head_dim, *w.shape[1:])
        out_w = w.new_zeros(heads, new_dim, *w.shape[2:])
        out_w[:, :head_dim] = w
        return out_w.reshape(heads * new_dim, *w.shape[2:])

    weights = {}
    for f in sorted(model_dir.glob("*.safetensors")):
        for name, w in load_file(str(f)).items():
            if ".q_proj." in name:
                w = spread(w, n_q, math.sqrt(m))
            elif ".k_proj." in name:
                w = spread(w, n_kv, 1.0)
            elif ".v_proj." in name:
                w = first(w, n_kv)
            elif ".o_proj.weight" in name:
                w = first(w.t(), n_q).t().contiguous()
            weights[name] = w.contiguous()
    out.mkdir(parents=True)
    save_file(weights, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps({**cfg, "head_dim": new_dim}, indent=1))
    if (model_dir / "generation_config.json").exists():
        shutil.copy(model_dir / "generation_config.json", out / "generation_config.json")


def vllm_servable(model_dir: str | Path) -> Path:
    """``model_dir``, or, for a Llama whose head size vLLM's CPU attention lacks (the built-in task's 16), an
    equivalent copy with 32-dim heads (:func:`_llama_head_padded`), cached under the system temp directory by
    the directory's path and weights' modification time. Anything else goes to vLLM as is."""
    import hashlib
    import json
    import os
    import tempfile

    model_dir = Path(model_dir)
    try:
        cfg = json.loads((model_dir / "config.json").read_text())
    except (OSError, ValueError):
        return model_dir
    heads = cfg.get("num_attention_heads") or 0
    head_dim = cfg.get("head_dim") or (cfg.get("hidden_size", 0) // heads if heads else 0)
    rope = (cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}).get("rope_type", "default")
    if cfg.get("model_type") != "llama" or rope != "default" or not head_dim or head_dim in VLLM_CPU_HEAD_SIZES \
            or 32 % head_dim or head_dim % 2:
        return model_dir
    stamp = [(f.name, f.stat().st_mtime_ns) for f in sorted(model_dir.iterdir())]
    key = hashlib.sha256(json.dumps([str(model_dir.resolve()), stamp]).encode()).hexdigest()[:16]
    out = Path(tempfile.gettempdir()) / "inpo-vllm" / key
    if not (out / "config.json").exists():
        tmp = out.with_name(f".{key}.{os.getpid()}")
        shutil_rm(tmp)
        _llama_head_padded(model_dir, tmp, head_dim, 32)
        try:
            tmp.rename(out)
        except OSError:  # another process made it first
            shutil_rm(tmp)
    return out


def shutil_rm(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


class VllmWorker:
    """One ``vllm_worker.py`` process under ``python`` (see that module for the protocol), started once and
    reused for every request of this process (:func:`vllm_worker`); it ends when this process does."""

    def __init__(self, python: str, threads: int | None) -> None:
        import os
        import subprocess
        import sys

        env = dict(os.environ)
        env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        env.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
        if threads is not None:  # no core binding on a shared machine: OpenMP threads as asked
            env["VLLM_CPU_OMP_THREADS_BIND"] = "nobind"
            env["OMP_NUM_THREADS"] = str(threads)
        if Path(python).resolve() != Path(sys.executable).resolve():
            env.pop("PYTHONPATH", None)  # the other environment's packages, not this one's
        self.python = python
        import tempfile

        # vLLM's warnings and load bars go to a log file, not the run's terminal; a crash names it
        self.log = Path(tempfile.gettempdir()) / f"inpo-vllm-worker-{os.getpid()}-{len(_WORKERS)}.log"
        try:
            with open(self.log, "w") as log:
                self.proc = subprocess.Popen([python, str(Path(__file__).with_name("vllm_worker.py"))], env=env,
                                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True)
        except OSError as e:
            raise InpoError(f"sampling.vllm_python: cannot run {python} ({e.strerror})") from None
        try:
            self._read()  # {"ready": true} once vLLM imported
        except InpoError as e:
            self.proc.wait()
            if "its log:" not in str(e):  # a one-line error reply says it all
                self.log.unlink(missing_ok=True)
            raise

    def _read(self) -> dict:
        import json

        line = self.proc.stdout.readline() if self.proc.stdout else ""
        if not line:
            code = self.proc.wait()
            try:
                last = [x for x in self.log.read_text(errors="replace").splitlines() if x.strip()][-1:]
            except OSError:
                last = []
            raise InpoError(f"vLLM worker ({self.python}) exited with code {code}"
                            + (f" ({last[0].strip()[:200]})" if last else "") + f"; its log: {self.log}")
        reply = json.loads(line)
        if "error" in reply:
            raise InpoError(f"vLLM worker ({self.python}): {reply['error']}")
        return reply

    def request(self, req: dict) -> dict:
        import json

        if self.proc.poll() is not None or self.proc.stdin is None:
            raise InpoError(f"vLLM worker ({self.python}) is not running")
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        if self.proc.poll() is None:
            if self.proc.stdin is not None:
                self.proc.stdin.close()
            try:
                self.proc.wait(timeout=30)
            except Exception:  # noqa: BLE001 - it did not stop on end of input
                self.proc.kill()
                self.proc.wait()
        self.log.unlink(missing_ok=True)


_WORKERS: dict[tuple[str, int | None], VllmWorker] = {}


def vllm_worker(python: str, threads: int | None) -> VllmWorker:
    """The process's worker for ``python`` (started on first use, closed at exit)."""
    key = (python, threads)
    w = _WORKERS.get(key)
    if w is None or w.proc.poll() is not None:
        import atexit

        w = _WORKERS[key] = VllmWorker(python, threads)
        atexit.register(w.close)
    return w


def request_seeds(seed: int, n: int, k: int) -> list[int]:
    """Per-prompt seeds for vLLM (sample k of prompt i uses ``seeds[i] + k``): prompt i's K samples depend on
    (seed, i) only, not on the batch; spaced K apart so no two samples share a stream."""
    import hashlib

    base = int.from_bytes(hashlib.sha256(f"vllm/{seed}".encode()).digest()[:4], "little")
    return [base * 1_000_003 + i * k for i in range(n)]


def sample_responses_vllm(
    model_dir: str | Path, prompts: Sequence[Sequence[int]], cfg: SamplingConfig, *, eos_id: int, seed: int,
    python: str, threads: int | None = None, logprobs: list[list[float]] | None = None,
    max_model_len: int | None = None, stop_ids: Sequence[int] = (), tokenizer: Any = None,
) -> list[list[list[int]]]:
    """The same sampling with vLLM, in a worker process under ``python`` (:func:`inpo.vllm_env.resolve_python`).

    The engine loads the iterate from its saved directory (``iter_<t>/``, or pi_ref's), which is how weights
    reach it after each iteration (:func:`vllm_servable` first); prompts go in as token ids, so their rendering
    is the transformers backend's. Same K, temperature, top-p, top-k, max new tokens, stop at ``eos_id`` and
    ``stop_ids`` (kept) and at ``cfg.stop`` strings (cut as the transformers backend does, with ``tokenizer``);
    float32. The random streams are vLLM's, so the samples differ from transformers' but follow the same
    distribution. ``logprobs`` receives each response's token log-probs (vLLM's raw log-probs: the model's)."""
    if not prompts:
        return []
    import json

    served = vllm_servable(model_dir)
    if max_model_len is None:  # prompt + response, rounded up to 64 (the engine is reused while this stays)
        longest = max(len(p) for p in prompts) + cfg.max_new_tokens
        max_model_len = -(-longest // 64) * 64
        try:
            limit = json.loads((Path(served) / "config.json").read_text()).get("max_position_embeddings")
        except (OSError, ValueError):
            limit = None
        max_model_len = max(min(max_model_len, limit), longest) if limit else max_model_len
    req = {"model": str(served), "prompts": [list(map(int, p)) for p in prompts],
           "seeds": request_seeds(seed, len(prompts), cfg.num_samples), "n": cfg.num_samples,
           "temperature": cfg.temperature, "top_p": cfg.top_p, "max_tokens": cfg.max_new_tokens,
           "stop_token_ids": list(dict.fromkeys([eos_id, *stop_ids])), "top_k": cfg.top_k,
           "max_model_len": max_model_len, "dtype": "float32",
           "kv_cache_bytes": cfg.vllm_kv_cache_mb << 20}
    reply = vllm_worker(python, threads).request(req)
    out: list[list[list[int]]] = []
    for toks, lps in zip(reply["tokens"], reply["logprobs"], strict=True):
        rs = [strip_response(t, eos_id, -1, stop_ids) for t in toks]
        if cfg.stop:
            rs = [cut_at_stop_strings(r, tokenizer, cfg.stop)[0] for r in rs]
        out.append(rs)
        if logprobs is not None:
            logprobs.extend(lp[: len(r)] for lp, r in zip(lps, rs, strict=True))
    return out
