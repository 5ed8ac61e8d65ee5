"""One whole iteration on SmolLM2-135M-Instruct, full fine-tuning and LoRA: inpo's loop functions vs the pipeline a
user assembles from TRL 1.16 pieces (the Online-RLHF recipe: generate, rank with a judge, ``DPOTrainer``).

Both sides: the first N prompts of the annotators task (``inpo.tasks.annotators.TRAIN_FILE``), rendered with the
tokenizer's chat template as the loop does; K=4 samples each, plain sampling (temperature 1, top-p 1, no top-k),
``max_new_tokens`` 128, the same seed, one ``generate`` call; the annotators task's exact oracle
(``AnnotatorJudge``, sampled annotator); fp32; one thread; a generic iteration t >= 2 (pi_t's samples, pi_ref's
anchor pass; the policy here starts as pi_ref, which changes no cost).

* ours (the loop's own functions): ``inpo.stages.sample_stage`` (transformers backend, the sampler's log-probs
  recorded), ``inpo.sampling.response_texts`` + ``inpo.stages.judge_stage``, ``inpo.algorithms.build_pairs``
  (INPO's ``all`` pairing, soft labels), ``inpo.stages.logprob_stage`` (pi_ref's pass by
  ``inpo.logprobs.cache_logprobs``; pi_t's anchor = the sampler's log-probs, 8 sequences checked by a forward
  pass), ``inpo.train.train_on_pairs`` (INPO loss, 1 epoch, ``--ours-batch`` prompts per step).
* peer: plain transformers ``model.generate`` (same settings, same left padding), the judge on every unordered
  pair of a prompt's K responses, winner = chosen, then ``DPOTrainer(loss_type="ipo",
  precompute_ref_log_probs=True, bf16=False, gradient_checkpointing=False, report_to=[], no eval / saving)``,
  ``--trl-batch`` pairs per step, 1 epoch; full fine-tuning: ``ref_model`` = pi_ref loaded from its directory (what
  an iteration t >= 2 passes; TRL frees it after its precompute); LoRA: ``peft_config`` (r 16, alpha 32, all
  linear layers; pi_ref = the adapter disabled, as ours).
* same pairs: ties (P = 1/2) are dropped on both sides, so ours trains on exactly the unordered pairs TRL gets
  (each as two soft-labelled directed pairs, as the loop does); the samples are bit-identical (same model, padding,
  seed), so the pairs are the same pairs; both are printed and compared. Info row: TRL on the Online-RLHF
  best-vs-worst single pair per prompt.

Each (impl, mode) runs in a fresh subprocess (its own peak RSS, ``ru_maxrss``), ours/peer interleaved. Per phase:
CPU time (``time.process_time``, what the code costs on the shared machine) and wall; tokens/s per CPU s
(generated tokens for sampling; non-padding sequence tokens processed for anchors and training); model loading is
outside the iteration (the loop keeps its models between iterations) and printed apart.

Sampling side by side: transformers ``generate`` (``inpo.sampling.sample_responses``) vs vLLM
(``inpo.sampling.sample_responses_vllm``, the environment of ``python -m inpo.vllm_env``), same prompts, K, new
tokens, each in its own subprocess; vLLM's CPU time is its worker's: the worker's ``generate`` CPU time, and its
whole life (``import vllm``, engine start, generate) from ``RUSAGE_CHILDREN`` after the worker exits.

    python bench/iteration_vs_trl.py                                  # N=8, 128 new tokens, 1 repeat
    python bench/iteration_vs_trl.py --prompts 16 --repeats 2 --json bench/results/iteration_vs_trl.json
    python bench/iteration_vs_trl.py --worker ours --mode full --profile train   # where one phase's time goes
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from common import THREADS, Clock, current_rss_mb, matmul_flops_per_s, median, peak_rss_mb, run_json  # noqa: E402

K = 4
SEED = 0
BETA = 0.1
PHASES = ("sample", "judge", "pairs", "anchors", "train")


# --------------------------------------------------------------------------------------------------
# Pure helpers (tests/test_iteration_vs_trl.py)
# --------------------------------------------------------------------------------------------------


def drop_ties(chosen: torch.Tensor, rejected: torch.Tensor, weight: torch.Tensor, prompt: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The directed pairs of INPO's ``all`` pairing without the ties (weight exactly 1/2, both directions)."""
    keep = weight != 0.5
    return chosen[keep], rejected[keep], weight[keep], prompt[keep]


def unordered_winners(chosen: list[int], rejected: list[int], weight: list[float]) -> list[tuple[int, int]]:
    """The unordered pairs of directed soft-labelled pairs, each as (winner, loser), winner = the side with weight
    > 1/2, sorted. Both directions of a pair count once; a pair seen in one direction only (its other weight 0)
    counts too. Ties (weight 1/2) must be dropped first."""
    out: dict[tuple[int, int], tuple[int, int]] = {}
    for c, r, w in zip(chosen, rejected, weight, strict=True):
        if w == 0.5:
            raise ValueError("a tie (weight 1/2): drop ties first")
        key = (min(c, r), max(c, r))
        win = (c, r) if w > 0.5 else (r, c)
        if out.setdefault(key, win) != win:
            raise ValueError(f"pair {key}: both directions win")
        out[key] = win
    return sorted(out.values())


def judged_winners(probs: dict[tuple[int, int], float]) -> list[tuple[int, int]]:
    """The peer's pairs: ``probs[(a, b)]`` = the judge's P(a > b) for flat sample indices a < b; (winner, loser)
    per pair, ties dropped, sorted."""
    return sorted((a, b) if p > 0.5 else (b, a) for (a, b), p in probs.items() if p != 0.5)


def best_vs_worst(probs: dict[tuple[int, int], float], n: int, k: int) -> list[tuple[int, int]]:
    """Online-RLHF's single pair per prompt: the sample with the highest mean win-rate against the other K-1 as
    chosen, the lowest as rejected (first index on ties); prompts whose samples all score the same give none."""
    out = []
    for i in range(n):
        idx = range(i * k, (i + 1) * k)
        score = {a: sum(probs[(a, b)] if a < b else 1 - probs[(b, a)] for b in idx if b != a) / (k - 1) for a in idx}
        best, worst = max(idx, key=lambda a: score[a]), min(idx, key=lambda a: score[a])
        if score[best] > score[worst]:
            out.append((best, worst))
    return out


def sequence_tokens(prompt_lens: list[int], response_lens: list[int], k: int, seqs: list[int]) -> int:
    """Non-padding tokens of prompt + response of the flat samples ``seqs`` (sample i*K + j has prompt i)."""
    return sum(prompt_lens[s // k] + response_lens[s] for s in seqs)


def phase_rates(phases: dict[str, dict[str, float]], tokens: dict[str, int]) -> dict[str, float]:
    """Tokens per CPU second of each phase that has a token count."""
    return {p: tokens[p] / phases[p]["cpu"] for p in tokens if phases.get(p, {}).get("cpu", 0) > 0}


# --------------------------------------------------------------------------------------------------
# Workers (one fresh process each)
# --------------------------------------------------------------------------------------------------


def run_config(n: int, mode: str, new_tokens: int, ours_batch: int):
    from inpo.config import build_config

    return build_config({
        "task": {"name": "annotators"}, "seed": SEED, "threads": THREADS,
        "peft": {"r": 16, "alpha": 32} if mode == "lora" else None,
        "data": {"num_prompts": n},
        "sampling": {"num_samples": K, "max_new_tokens": new_tokens, "temperature": 1.0, "top_p": 1.0, "top_k": 0,
                     "batch_size": n},
        "algo": {"name": "inpo"},
        "train": {"epochs": 1, "batch_size": ours_batch, "lr": 5e-5 if mode == "lora" else 1e-6, "warmup_ratio": 0.0,
                  "logprob_batch_size": 4 * ours_batch},
    })


class Phases:
    """CPU and wall seconds per named phase."""

    def __init__(self) -> None:
        self.t: dict[str, dict[str, float]] = {}

    def __call__(self, name: str):  # noqa: ANN204 - a context manager
        phases = self

        class _Timed:
            def __enter__(self):  # noqa: ANN204
                self.c = Clock()

            def __exit__(self, *exc):  # noqa: ANN002, ANN204
                d = phases.t.setdefault(name, {"cpu": 0.0, "wall": 0.0})
                d["cpu"] += self.c.cpu()
                d["wall"] += self.c.wall()
                d["peak_rss_mb_after"] = peak_rss_mb()  # the process's peak so far: which phase raised it

        return _Timed()


def profiled(phase: str, wanted: str | None):  # noqa: ANN201
    """torch.profiler around the phase named ``wanted`` (prints the top ops by self CPU time to stderr)."""
    import contextlib

    if phase != wanted:
        return contextlib.nullcontext()
    from torch.profiler import ProfilerActivity, profile

    class _P:
        def __enter__(self):  # noqa: ANN204
            self.p = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
            self.p.__enter__()
            return self

        def __exit__(self, *exc):  # noqa: ANN002, ANN204
            self.p.__exit__(*exc)
            print(self.p.key_averages().table(sort_by="self_cpu_time_total", row_limit=25), file=sys.stderr)
            print(self.p.key_averages().table(sort_by="self_cpu_memory_usage", row_limit=12), file=sys.stderr)

    return _P()


def run_ours(n: int, mode: str, new_tokens: int, ours_batch: int, profile: str | None) -> dict:
    from accelerate import Accelerator
    from rich.console import Console

    from inpo.algorithms import ALGORITHMS, Pairs, build_pairs
    from inpo.models import build_setup
    from inpo.sampling import Samples, response_texts
    from inpo.stages import judge_stage, logprob_stage, sample_stage
    from inpo.train import train_on_pairs

    torch.set_num_threads(THREADS)
    cfg = run_config(n, mode, new_tokens, ours_batch)
    c = Clock()
    setup = build_setup(cfg, Console(quiet=True), progress=False)
    accelerator = Accelerator(cpu=True)
    optimizer = torch.optim.AdamW(setup.policy.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    policy, optimizer = accelerator.prepare(setup.policy, optimizer)
    load = {"cpu": c.cpu(), "wall": c.wall()}
    rss_before = current_rss_mb()
    prompt_ids = [p.ids for p in setup.train_prompts]
    idx = list(range(len(prompt_ids)))
    ph = Phases()
    with ph("sample"), profiled("sample", profile):
        out = sample_stage(idx, accelerator.unwrap_model(policy), prompt_ids, cfg, setup, seed=SEED, mixture=None,
                           progress=None, record=True)
    assert isinstance(out, dict), "plain sampling must record the sampler's log-probs"
    samples = Samples(prompt_ids, out["responses"], K, out["logps"])
    with ph("judge"), profiled("judge", profile):
        texts = response_texts(setup.tokenizer, samples.responses, cfg.sampling.stop)
        matrices = judge_stage(idx, setup.judge, setup.train_prompts, texts, K)
    with ph("pairs"):
        p = build_pairs(matrices, "all")
        pairs = Pairs(*drop_ties(p.chosen, p.rejected, p.weight, p.prompt))
    with ph("anchors"), profiled("anchors", profile):
        cache = logprob_stage(idx, {"ref": setup.ref, "prev": accelerator.unwrap_model(policy)}, samples,
                              pad_id=setup.pad_id, batch_size=cfg.train.logprob_batch_size, reuse=["prev"],
                              check=cfg.sampling.logprob_check, tolerance=cfg.sampling.logprob_tolerance)
    with ph("train"), profiled("train", profile):
        metrics = train_on_pairs(policy, accelerator, ALGORITHMS["inpo"], cfg, samples, pairs, cache, None,
                                 pad_id=setup.pad_id, seed=SEED, optimizer=optimizer)
    plen = [len(x) for x in prompt_ids]
    rlen = [len(r) for r in samples.responses]
    used = sorted(set(pairs.chosen.tolist()) | set(pairs.rejected.tolist()))
    checked = int((~torch.isnan(cache["sampler_diff"])).sum())
    picked = [i for i in range(len(rlen)) if not math.isnan(float(cache["sampler_diff"][i]))]
    tokens = {"sample": sum(rlen),
              "anchors": sequence_tokens(plen, rlen, K, list(range(len(rlen)))) + sequence_tokens(plen, rlen, K,
                                                                                                     picked),
              "train": sequence_tokens(plen, rlen, K, used)}
    winners = unordered_winners(pairs.chosen.tolist(), pairs.rejected.tolist(), pairs.weight.tolist())
    return {
        "impl": "ours", "mode": mode, "load": load, "phases": ph.t, "tokens": tokens,
        "tok_per_cpu_s": phase_rates(ph.t, tokens), "rss_before_mb": rss_before, "peak_rss_mb": peak_rss_mb(),
        "prompt_ids": prompt_ids, "responses": samples.responses, "winners": winners,
        "directed_pairs": len(pairs), "unordered_pairs": len(winners), "ties_dropped": (len(p) - len(pairs)) // 2,
        "anchor_from_sampler": float(cache["from_sampler"].mean()), "anchor_checked": checked,
        "anchor_max_diff": float(cache["sampler_diff"][~torch.isnan(cache["sampler_diff"])].max()),
        "loss": metrics.get("loss/train"), "trainable": sum(q.numel() for q in policy.parameters() if q.requires_grad),
    }


def trl_args(out_dir: str, trl_batch: int, mode: str):
    from trl import DPOConfig

    return DPOConfig(
        output_dir=out_dir, loss_type=["ipo"], beta=BETA, learning_rate=5e-5 if mode == "lora" else 1e-6,
        per_device_train_batch_size=trl_batch, gradient_accumulation_steps=1, num_train_epochs=1,
        precompute_ref_log_probs=True, bf16=False, fp16=False, gradient_checkpointing=False, report_to=[],
        save_strategy="no", eval_strategy="no", disable_tqdm=True, use_cpu=True, seed=SEED,
        lr_scheduler_type="linear", warmup_steps=0, max_length=None, logging_strategy="no",
    )


def run_peer(n: int, mode: str, new_tokens: int, trl_batch: int, profile: str | None) -> dict:
    """The TRL user's iteration, written as plain HF / TRL code (only the task's prompts, model path and judge come
    from inpo)."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOTrainer

    from inpo.models_real import smollm2_path
    from inpo.tasks.annotators import TRAIN_FILE, AnnotatorJudge

    torch.set_num_threads(THREADS)
    pre = {"wall": 0.0, "cpu": 0.0}
    original = DPOTrainer._precompute_ref_logps

    def timed(self, *args, **kwargs):  # noqa: ANN001, ANN202
        c = Clock()
        try:
            with profiled("anchors", profile):
                return original(self, *args, **kwargs)
        finally:
            pre["wall"] += c.wall()
            pre["cpu"] += c.cpu()

    DPOTrainer._precompute_ref_logps = timed
    path = str(smollm2_path())
    c = Clock()
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    load = {"cpu": c.cpu(), "wall": c.wall()}
    rows = [json.loads(x) for x in TRAIN_FILE.read_text().splitlines() if x.strip()][:n]
    texts = [r["prompt"] for r in rows]
    rendered = [tok.apply_chat_template([{"role": "user", "content": t}], tokenize=False, add_generation_prompt=True)
                for t in texts]
    judge = AnnotatorJudge("sampled")
    rss_before = current_rss_mb()
    ph = Phases()
    with ph("sample"), profiled("sample", profile):
        enc = tok(rendered, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
        torch.manual_seed(SEED)
        with torch.no_grad():
            out = model.generate(**enc, do_sample=True, temperature=1.0, top_p=1.0, top_k=0,
                                 max_new_tokens=new_tokens, num_return_sequences=K, eos_token_id=tok.eos_token_id,
                                 pad_token_id=tok.pad_token_id)
        new = out[:, enc.input_ids.shape[1]:].tolist()
        responses = []
        for row in new:  # up to and with the first EOS
            cut = row.index(tok.eos_token_id) + 1 if tok.eos_token_id in row else len(row)
            responses.append(row[:cut])
        response_text = tok.batch_decode(responses, skip_special_tokens=True)
    with ph("judge"), profiled("judge", profile):
        probs: dict[tuple[int, int], float] = {}
        for i in range(n):
            ab = [(a, b) for a in range(i * K, (i + 1) * K) for b in range(a + 1, (i + 1) * K)]
            ps = judge.prob([texts[i]] * len(ab), [response_text[a] for a, _ in ab], [response_text[b] for _, b in ab])
            probs.update({pair: float(p) for pair, p in zip(ab, ps, strict=True)})
    with ph("pairs"):
        winners = judged_winners(probs)
        full_text = tok.batch_decode(responses, skip_special_tokens=False)  # EOS kept: TRL then adds none
        data = {"prompt": [rendered[w // K] for w, _ in winners], "chosen": [full_text[w] for w, _ in winners],
                "rejected": [full_text[r] for _, r in winners]}
    bvw = best_vs_worst(probs, n, K)
    from peft import LoraConfig

    peft_config = (LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear",
                              task_type="CAUSAL_LM") if mode == "lora" else None)
    with tempfile.TemporaryDirectory() as d:
        c = Clock()  # the trainer: its tokenization ("pairs" phase) and its pi_ref precompute ("anchors")
        ref = None if mode == "lora" else AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        ref_load = {"cpu": c.cpu(), "wall": c.wall()}
        c = Clock()
        trainer = DPOTrainer(model=model, ref_model=ref, args=trl_args(d, trl_batch, mode),
                             train_dataset=Dataset.from_dict(data), processing_class=tok, peft_config=peft_config)
        del ref
        init = {"cpu": c.cpu() - pre["cpu"], "wall": c.wall() - pre["wall"]}
        ph.t["pairs"] = {k: ph.t["pairs"][k] + init[k] for k in init}
        ph.t["anchors"] = dict(pre, peak_rss_mb_after=peak_rss_mb())  # precompute ran inside __init__
        ds = trainer.train_dataset
        trl_ids = [(ds[i]["prompt_ids"], ds[i]["chosen_ids"], ds[i]["rejected_ids"]) for i in range(len(ds))]
        with ph("train"), profiled("train", profile):
            trainer.train()
        peak = peak_rss_mb()
        trainable = sum(q.numel() for q in trainer.model.parameters() if q.requires_grad)
        trained = trainer.model  # LoRA: the peft model (wrapping it again would stack adapters)
        del trainer
        # info: the Online-RLHF single best-vs-worst pair per prompt (a fresh trainer; after the peak was read)
        bvw_data = {"prompt": [rendered[w // K] for w, _ in bvw], "chosen": [full_text[w] for w, _ in bvw],
                    "rejected": [full_text[r] for _, r in bvw]}
        pre.update(wall=0.0, cpu=0.0)
        c = Clock()
        t2 = DPOTrainer(model=trained, args=trl_args(d, trl_batch, mode), train_dataset=Dataset.from_dict(bvw_data),
                        processing_class=tok)
        t2.train()
        bvw_time = {"cpu": c.cpu(), "wall": c.wall(), "anchors_cpu": pre["cpu"]}
    plen = [len(p) for p, _, _ in trl_ids]
    tokens = {"sample": sum(map(len, responses)),
              "anchors": sum(2 * len(p) + len(c_) + len(r) for p, c_, r in trl_ids),
              "train": sum(2 * len(p) + len(c_) + len(r) for p, c_, r in trl_ids)}
    prompt_ids = [tok(x, add_special_tokens=False).input_ids for x in rendered]
    eos = [tok.eos_token_id]
    exact = sum(p == prompt_ids[w // K] and c_ == responses[w] and r == responses[lo]
                for (p, c_, r), (w, lo) in zip(trl_ids, winners, strict=True))
    # TRL appends EOS to a response that has none (cut at max_new_tokens): same ids otherwise
    exact_but_eos = sum(p == prompt_ids[w // K] and c_ in (responses[w], responses[w] + eos)
                        and r in (responses[lo], responses[lo] + eos)
                        for (p, c_, r), (w, lo) in zip(trl_ids, winners, strict=True))
    return {
        "impl": "trl", "mode": mode, "load": load, "ref_load": ref_load, "phases": ph.t, "tokens": tokens,
        "tok_per_cpu_s": phase_rates(ph.t, tokens), "rss_before_mb": rss_before, "peak_rss_mb": peak,
        "prompt_ids": prompt_ids, "responses": responses, "winners": winners, "unordered_pairs": len(winners),
        "ties_dropped": sum(p == 0.5 for p in probs.values()), "trl_rows": len(trl_ids),
        "trl_tokens_exact": exact, "trl_tokens_exact_but_eos": exact_but_eos,
        "mean_prompt_len": sum(plen) / max(1, len(plen)), "trainable": trainable,
        "bvw_pairs": len(bvw), "bvw": bvw_time,
    }


def matmul_share(prof) -> dict[str, float]:  # noqa: ANN001 - a torch.profiler.profile
    """Self CPU time of the GEMM ops (``aten::mm``, ``addmm``, ``bmm``, ``matmul``'s kernels) vs all ops."""
    ev = prof.key_averages()
    total_us = sum(e.self_cpu_time_total for e in ev)
    gemm_us = sum(e.self_cpu_time_total for e in ev if e.key in ("aten::mm", "aten::addmm", "aten::bmm",
                                                                 "aten::_scaled_dot_product_flash_attention_for_cpu"))
    return {"total_s": total_us / 1e6, "gemm_s": gemm_us / 1e6, "gemm_share": gemm_us / max(total_us, 1e-9)}


def decode_bound(rows: int, reps: int = 5) -> dict:
    """What bounds sampling on this core: the fp32 matmuls of ONE decode step of SmolLM2 for ``rows`` sequences
    (per layer q, k, v, o, gate, up, down; then the tied LM head), each ``F.linear`` on [rows, in] x [out, in], best
    of ``reps`` by CPU time. ``rows / step time`` is the rate no fp32 implementation that runs these GEMMs can beat
    at this batch (attention over the cache, sampling, bookkeeping come on top)."""
    from transformers import AutoConfig

    from inpo.models_real import smollm2_path

    torch.set_num_threads(THREADS)
    c = AutoConfig.from_pretrained(smollm2_path())
    d, hd = c.hidden_size, c.hidden_size // c.num_attention_heads
    shapes = [(d, d), (d, c.num_key_value_heads * hd), (d, c.num_key_value_heads * hd), (d, d),
              (d, c.intermediate_size), (d, c.intermediate_size), (c.intermediate_size, d)]
    weights = [torch.randn(o, i) for i, o in shapes]
    head = torch.randn(c.vocab_size, d)
    xs = {i: torch.randn(rows, i) for i in {i for i, _ in shapes}}

    def step() -> None:
        for _ in range(c.num_hidden_layers):
            for (i, _), w in zip(shapes, weights, strict=True):
                torch.nn.functional.linear(xs[i], w)
        torch.nn.functional.linear(xs[d], head)

    step()
    best = float("inf")
    for _ in range(reps):
        k = Clock()
        step()
        best = min(best, k.cpu())
    flops = 2 * rows * (c.num_hidden_layers * sum(i * o for i, o in shapes) + c.vocab_size * d)
    return {"rows": rows, "step_cpu_s": best, "tok_per_cpu_s": rows / best, "gflop_per_token": flops / rows / 1e9,
            "gemm_gflop_per_cpu_s": flops / best / 1e9}


def run_sampler(n: int, backend: str, new_tokens: int, profile: str | None = None) -> dict:
    """One backend's sampling of the same chat-rendered prompts (K, plain, ``new_tokens``), in this process."""
    from rich.console import Console

    from inpo.models import build_setup
    from inpo.sampling import sample_responses, sample_responses_vllm, vllm_worker
    from inpo.vllm_env import resolve_python

    torch.set_num_threads(THREADS)
    cfg = run_config(n, "full", new_tokens, 4)
    setup = build_setup(cfg, Console(quiet=True), progress=False)
    prompts = [p.ids for p in setup.train_prompts]
    if backend == "transformers":
        c = Clock()
        with profiled("sample", profile) as prof:
            out = sample_responses(setup.policy, prompts, cfg.sampling, eos_id=setup.eos_id, pad_id=setup.pad_id,
                                   seed=SEED, stop_ids=setup.stop_ids, logprobs=[])
        tokens = sum(len(r) for rs in out for r in rs)
        res = {"backend": backend, "tokens": tokens, "cpu": c.cpu(), "wall": c.wall(), "peak_rss_mb": peak_rss_mb()}
        if prof is not None:
            res["profile"] = matmul_share(prof.p)
        return res
    python = resolve_python(None)
    c = Clock()
    worker = vllm_worker(python, THREADS)
    start = {"wall": c.wall()}
    real, reply_t = worker.request, {}

    def timed(req: dict) -> dict:
        reply = real(req)
        reply_t.update(engine_s=reply["engine_s"], engine_cpu_s=reply["engine_cpu_s"], generate_s=reply["generate_s"],
                       generate_cpu_s=reply["generate_cpu_s"])
        return reply

    worker.request = timed
    c = Clock()
    out = sample_responses_vllm(setup.ref_path, prompts, cfg.sampling, eos_id=setup.eos_id, seed=SEED, python=python,
                                threads=THREADS, logprobs=[], stop_ids=setup.stop_ids, tokenizer=setup.tokenizer)
    call = {"wall": c.wall(), "cpu_here": c.cpu()}
    worker.close()  # the worker exits: its whole CPU time is in RUSAGE_CHILDREN now
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    tokens = sum(len(r) for rs in out for r in rs)
    return {"backend": backend, "tokens": tokens, "wall": reply_t["generate_s"], "cpu": reply_t["generate_cpu_s"],
            "engine_wall": reply_t["engine_s"], "engine_cpu": reply_t["engine_cpu_s"], "call": call,
            "worker_start_wall": start["wall"], "children_cpu": ru.ru_utime + ru.ru_stime,
            "children_peak_rss_mb": ru.ru_maxrss / 1024, "peak_rss_mb": peak_rss_mb()}


# --------------------------------------------------------------------------------------------------
# The comparison
# --------------------------------------------------------------------------------------------------


def compare(a: argparse.Namespace) -> dict:
    common = ["--prompts", str(a.prompts), "--max-new-tokens", str(a.max_new_tokens)]
    runs: dict[str, dict[str, list[dict]]] = {m: {"ours": [], "trl": []} for m in a.modes}
    samplers: dict[str, list[dict]] = {"transformers": [], "vllm": []}
    t0 = time.perf_counter()
    for rep in range(a.repeats):
        for mode in a.modes:
            order = ["ours", "trl"] if rep % 2 == 0 else ["trl", "ours"]
            for impl in order:
                args = ["bench/iteration_vs_trl.py", "--worker", impl, "--mode", mode, *common,
                        "--ours-batch", str(a.ours_batch), "--trl-batch", str(a.trl_batch)]
                r = run_json(args, timeout=3600)
                runs[mode][impl].append(r)
                print(f"[{time.perf_counter() - t0:.0f}s] {mode} {impl}: whole {total(r, 'cpu'):.1f} CPU s, "
                      f"peak RSS {r['peak_rss_mb']:.0f} MB, load {os.getloadavg()[0]:.1f}", file=sys.stderr, flush=True)
        if not a.no_vllm:
            order = ["transformers", "vllm"] if rep % 2 == 0 else ["vllm", "transformers"]
            for backend in order:
                r = run_json(["bench/iteration_vs_trl.py", "--worker", "sampler", "--backend", backend, *common],
                             timeout=3600)
                samplers[backend].append(r)
                print(f"[{time.perf_counter() - t0:.0f}s] sampler {backend}: {r['tokens'] / r['cpu']:.0f} tok per "
                      "CPU s", file=sys.stderr, flush=True)
    mm = matmul_flops_per_s()
    return {"args": vars(a), "runs": runs, "samplers": samplers, "torch_mm_gflop_per_cpu_s": mm["cpu"] / 1e9,
            "loadavg_end": os.getloadavg(), "total_wall_s": time.perf_counter() - t0, "threads": THREADS}


def total(r: dict, clock: str) -> float:
    return sum(r["phases"][p][clock] for p in PHASES if p in r["phases"])


def summarize(res: dict) -> tuple[list[list[str]], int]:
    """The table rows and the number of targets missed."""
    rows: list[list[str]] = []
    missed = 0

    def row(fig: str, ours: float | str, peer: float | str, ratio: str, target: str = "(info)", met: str = "") -> None:
        def f(x: float | str) -> str:
            return x if isinstance(x, str) else f"{x:,.1f}" if abs(x) < 1000 else f"{x:,.0f}"

        rows.append([fig, f(ours), f(peer), ratio, target, met])

    def judge(ok: bool) -> str:
        nonlocal missed
        missed += not ok
        return "yes" if ok else "NO"

    for mode, rs in res["runs"].items():
        o, t = rs["ours"], rs["trl"]
        if not o or not t:
            continue
        same = all(x["winners"] == y["winners"] and x["responses"] == y["responses"]
                   and x["prompt_ids"] == y["prompt_ids"] for x in o for y in t)
        row(f"{mode}: pairs trained (unordered; ties dropped {o[0]['ties_dropped']}/{t[0]['ties_dropped']}), "
            f"same samples and pairs: {same}", o[0]["unordered_pairs"], t[0]["trl_rows"], "",
            "equal", judge(same and o[0]["unordered_pairs"] == t[0]["trl_rows"]))
        for p in PHASES:
            oc, tc = median([x["phases"][p]["cpu"] for x in o]), median([x["phases"][p]["cpu"] for x in t])
            ratio = f"{tc / oc:.2f} (speed)" if oc > 0 else "-"
            extra = ""
            if p in o[0]["tokens"]:
                extra = (f"; tok/CPU s {median([x['tok_per_cpu_s'][p] for x in o]):,.0f} vs "
                         f"{median([x['tok_per_cpu_s'][p] for x in t]):,.0f} (tokens {o[0]['tokens'][p]:,} vs "
                         f"{t[0]['tokens'][p]:,})")
            row(f"{mode}: {p}, CPU s{extra}", oc, tc, ratio)
        for clock in ("cpu", "wall"):
            oc, tc = median([total(x, clock) for x in o]), median([total(x, clock) for x in t])
            target = clock == "cpu"
            row(f"{mode}: whole iteration, {clock.upper() if clock == 'cpu' else 'wall'} s", oc, tc,
                f"{tc / oc:.2f} (speed)", ">= 1.5" if target else "(info)", judge(tc / oc >= 1.5) if target else "")
        om, tm = median([x["peak_rss_mb"] for x in o]), median([x["peak_rss_mb"] for x in t])
        row(f"{mode}: peak RSS MB", om, tm, f"{om / tm:.2f}", "<= 1.0", judge(om <= tm))
        row(f"{mode}: peak RSS MB over pre-iteration RSS", median([x["peak_rss_mb"] - x["rss_before_mb"] for x in o]),
            median([x["peak_rss_mb"] - x["rss_before_mb"] for x in t]), "")
        row(f"{mode}: model load CPU s (outside the iteration; TRL full: + pi_ref load "
            f"{median([x['ref_load']['cpu'] for x in t]):.1f})", median([x["load"]["cpu"] for x in o]),
            median([x["load"]["cpu"] for x in t]), "")
        row(f"{mode}: ours anchor from sampler (fraction; checked seqs, max |diff| nats/seq); TRL tokens exact",
            f"{o[0]['anchor_from_sampler']:.0f} ({o[0]['anchor_checked']}, {o[0]['anchor_max_diff']:.1e})",
            f"{t[0]['trl_tokens_exact']}/{t[0]['trl_rows']} ({t[0]['trl_tokens_exact_but_eos']} but an added EOS)", "")
        row(f"{mode}: TRL best-vs-worst pair per prompt ({t[0]['bvw_pairs']} pairs), trainer + train CPU s", "-",
            median([x["bvw"]["cpu"] for x in t]), "")
    s = res["samplers"]
    if s["transformers"] and s["vllm"]:
        h, v = s["transformers"], s["vllm"]
        hr = median([x["tokens"] / x["cpu"] for x in h])
        vr = median([x["tokens"] / x["cpu"] for x in v])
        vlife = median([x["tokens"] / x["children_cpu"] for x in v])
        row(f"sampling tok per CPU s, K={K}, vLLM generate vs transformers generate", vr, hr, f"{vr / hr:.2f}",
            ">= 3", judge(vr / hr >= 3))
        row("sampling tok per wall s, vLLM generate vs transformers", median([x["tokens"] / x["wall"] for x in v]),
            median([x["tokens"] / x["wall"] for x in h]),
            f"{median([x['tokens'] / x['wall'] for x in v]) / median([x['tokens'] / x['wall'] for x in h]):.2f}")
        row("sampling tok per CPU s, vLLM worker's whole life (import, engine, generate) vs transformers", vlife, hr,
            f"{vlife / hr:.2f}")
        row("vLLM engine start CPU s; worker whole-life CPU s", median([x["engine_cpu"] for x in v]),
            median([x["children_cpu"] for x in v]), "")
    return rows, missed


def table(rows: list[list[str]]) -> str:
    head = ["figure", "ours", "peer", "ratio", "target", "met"]
    w = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    line = lambda r: "| " + " | ".join(c.ljust(w[i]) for i, c in enumerate(r)) + " |"  # noqa: E731
    return "\n".join([line(head), "|" + "|".join("-" * (x + 2) for x in w) + "|", *map(line, rows)])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--worker", choices=["ours", "trl", "sampler", "bound"])
    p.add_argument("--mode", choices=["full", "lora"], default="full")
    p.add_argument("--modes", default="full,lora")
    p.add_argument("--backend", choices=["transformers", "vllm"], default="transformers")
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--ours-batch", type=int, default=4, help="prompts per step (<= 4K sequences per forward)")
    p.add_argument("--trl-batch", type=int, default=8, help="pairs per step (2x sequences per forward)")
    p.add_argument("--no-vllm", action="store_true", help="skip the sampling side-by-side")
    p.add_argument("--profile", choices=list(PHASES), default=None, help="worker: torch.profiler on this phase")
    p.add_argument("--json", default=None)
    p.add_argument("--from-json", default=None, help="print the table of a saved run")
    a = p.parse_args()
    a.modes = a.modes.split(",")
    if a.worker == "ours":
        print(json.dumps(run_ours(a.prompts, a.mode, a.max_new_tokens, a.ours_batch, a.profile)))
        return
    if a.worker == "trl":
        print(json.dumps(run_peer(a.prompts, a.mode, a.max_new_tokens, a.trl_batch, a.profile)))
        return
    if a.worker == "sampler":
        print(json.dumps(run_sampler(a.prompts, a.backend, a.max_new_tokens, a.profile)))
        return
    if a.worker == "bound":
        print(json.dumps([decode_bound(m) for m in (a.prompts * K, 64, 128, 256)]))
        return
    if a.from_json:
        res = json.loads(Path(a.from_json).read_text())
    else:
        load0 = os.getloadavg()
        res = compare(a)
        res["loadavg_start"] = load0
    rows, missed = summarize(res)
    print(table(rows))
    print(f"{missed} target(s) missed; threads={res['threads']}; N={res['args']['prompts']} prompts x K={K}, "
          f"{res['args']['max_new_tokens']} new tokens, {res['args']['repeats']} repeat(s); load average "
          f"{res['loadavg_start'][0]:.1f} at start, {res['loadavg_end'][0]:.1f} at end; total "
          f"{res['total_wall_s']:.0f} s; torch.mm {res['torch_mm_gflop_per_cpu_s']:.0f} GFLOP per CPU s")
    if a.json and not a.from_json:
        Path(a.json).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
