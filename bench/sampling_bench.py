"""Sampling throughput: ``inpo.sampling.sample_responses`` (batched, K return sequences per prompt, KV cache)
vs a naive loop of ``model.generate`` calls, one prompt and one sample at a time.

Model: the built-in task's SFT reference (``inpo.tasks.BuiltinTask`` + ``build_reference``, cached under
runs/.cache); sampling config: ``inpo.config.SamplingConfig()`` defaults (K=4, temperature 1, top_p 1,
max_new_tokens 8). Throughput = generated tokens (EOS included, padding excluded) per second. The naive loop
runs on the first ``--naive-prompts`` prompts only (a rate does not need all of them); implementations are
interleaved in each repeat; the ratio is of the medians.

    python bench/sampling_bench.py
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from common import ROOT, Clock, median, set_threads  # noqa: E402


def load_task_model():
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from inpo.tasks import BuiltinTask, build_reference

    hf_logging.disable_progress_bar()
    task = BuiltinTask()
    path = build_reference(task, ROOT / "runs" / ".cache", progress=False)
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    prompts = [tok(t).input_ids for t in task.train_prompts]
    return model, tok, prompts


def batched(model, prompts, cfg, eos: int, pad: int, seed: int) -> dict[str, float]:
    from inpo.sampling import sample_responses

    c = Clock()
    out = sample_responses(model, prompts, cfg, eos_id=eos, pad_id=pad, seed=seed)
    n = sum(len(r) for rs in out for r in rs)
    return {"cpu": n / c.cpu(), "wall": n / c.wall()}


@torch.no_grad()
def naive(model, prompts, cfg, eos: int, pad: int, seed: int) -> dict[str, float]:
    from transformers import GenerationConfig

    from inpo.sampling import strip_response

    gen = GenerationConfig(do_sample=True, temperature=cfg.temperature, top_p=cfg.top_p, top_k=0,
                           max_new_tokens=cfg.max_new_tokens, eos_token_id=eos, pad_token_id=pad)
    torch.manual_seed(seed)
    tokens = 0
    c = Clock()
    for p in prompts:
        ids = torch.tensor([p])
        for _ in range(cfg.num_samples):
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=gen)
            tokens += len(strip_response(out[0, ids.shape[1]:].tolist(), eos, pad))
    return {"cpu": tokens / c.cpu(), "wall": tokens / c.wall()}


def compare(repeats: int, naive_prompts: int) -> dict:
    from inpo.config import SamplingConfig

    model, tok, prompts = load_task_model()
    cfg = SamplingConfig()
    eos, pad = tok.eos_token_id, tok.pad_token_id
    batched(model, prompts[:8], cfg, eos, pad, 0)  # warm-up both paths
    naive(model, prompts[:1], cfg, eos, pad, 0)
    ours, peer = [], []
    for r in range(repeats):
        order = [0, 1] if r % 2 == 0 else [1, 0]
        for which in order:
            if which == 0:
                ours.append(batched(model, prompts, cfg, eos, pad, r))
            else:
                peer.append(naive(model, prompts[:naive_prompts], cfg, eos, pad, r))
    res = {"prompts": len(prompts), "k": cfg.num_samples, "max_new_tokens": cfg.max_new_tokens,
           "naive_prompts": naive_prompts, "params": sum(p.numel() for p in model.parameters()),
           "ours_runs": ours, "naive_runs": peer}
    for clock in ("cpu", "wall"):
        o, n = median([x[clock] for x in ours]), median([x[clock] for x in peer])
        res[clock] = {"ours_tokens_per_s": o, "naive_tokens_per_s": n, "ratio": o / n}
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--naive-prompts", type=int, default=24)
    a = p.parse_args()
    set_threads()
    res = compare(a.repeats, a.naive_prompts)
    for clock in ("cpu", "wall"):
        r = res[clock]
        print(f"sampling ({clock} time): batched {r['ours_tokens_per_s']:.0f} tok/s, naive "
              f"{r['naive_tokens_per_s']:.0f} tok/s, ratio {r['ratio']:.1f}", file=sys.stderr)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
