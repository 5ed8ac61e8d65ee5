"""Peak RSS of each phase of an annotators-task iteration on SmolLM2-135M-Instruct + LoRA, one phase per fresh
subprocess (``VmHWM`` is per process and never decreases): what the loop's ``perf/peak_rss_mb`` is made of.

    PYTHONPATH=src python bench/real_memory.py                     # every phase, both log-prob paths
    PYTHONPATH=src python bench/real_memory.py --phase train --chunk 0

Phases, on ``--prompts`` P of the shipped training prompts (chat template applied) x ``--k`` K responses of
``--new-tokens`` tokens (random token ids of the full length: memory depends on the shapes, not the text): ``load``
(model + LoRA r=16, nothing run), ``logprobs`` (no-grad sequence log-probs of the P*K sequences in one batch: the
anchor cache, evaluation's KL), ``train`` (one forward + backward of the policy's log-probs of P*K sequences, one
AdamW step: one micro-batch), ``sample`` (one ``generate`` call for P prompts x K responses, the sampler's
log-probs recorded). The shipped config (``src/inpo/tasks/data/annotators.yaml``) trains on micro-batches of
2 prompts x 4 (``train.batch_size`` 8 / ``train.grad_accum`` 4: ``--prompts 2``), samples 32 prompts x 4 per call
(``--prompts 32``) and evaluates 64 prompts x 2 responses in one log-prob batch (``--prompts 32``: 128 sequences).
``--chunk N`` sets ``train.logprob_chunk`` (0 = the model's full logits); ``--grad-ckpt``: gradient checkpointing
of the trunk. Printed per phase: RSS after loading, peak RSS (VmHWM), the difference, wall and CPU seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

PHASES = ("load", "logprobs", "train", "sample")


def status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def run_phase(phase: str, chunk: int, n_prompts: int, k: int, new_tokens: int, grad_ckpt: bool) -> dict:
    import torch

    torch.set_num_threads(1)
    torch.manual_seed(0)
    from peft import LoraConfig, get_peft_model

    from inpo.config import build_config
    from inpo.logprobs import batched_sequence_logprobs, collate, sequence_logprobs
    from inpo.models import AdapterDisabled, load_causal_lm, load_tokenizer
    from inpo.models_real import smollm2_path
    from inpo.sampling import sample_responses
    from inpo.tasks.annotators import TRAIN_FILE

    path = smollm2_path()
    tok = load_tokenizer(path)
    model = load_causal_lm(path)
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM"))
    texts = [json.loads(line)["prompt"] for line in Path(TRAIN_FILE).read_text().splitlines()[:n_prompts]]
    prompt_ids = [tok.apply_chat_template([{"role": "user", "content": t}], add_generation_prompt=True,
                                          tokenize=True, return_dict=True)["input_ids"] for t in texts]
    g = torch.Generator().manual_seed(0)
    responses = [torch.randint(100, tok.vocab_size, (new_tokens,), generator=g).tolist()
                 for _ in range(n_prompts * k)]
    prompts = [prompt_ids[i // k] for i in range(n_prompts * k)]
    base = status_mb("VmRSS")
    t0, c0 = time.perf_counter(), time.process_time()
    if grad_ckpt:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if phase == "logprobs":
        batched_sequence_logprobs(AdapterDisabled(model), prompts, responses, pad_id=tok.pad_token_id,
                                  batch_size=len(prompts), chunk=chunk)
    elif phase == "train":
        model.train()
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
        ids, att, resp = collate(prompts, responses, tok.pad_token_id)
        lp = sequence_logprobs(model, ids, att, resp, chunk=chunk)
        lp.sum().backward()
        opt.step()
    elif phase == "sample":
        cfg = build_config({"task": {"name": "annotators"}, "sampling": {"num_samples": k, "max_new_tokens": new_tokens,
                                                                          "top_k": 50, "batch_size": n_prompts * k}})
        lps: list[list[float]] = []
        sample_responses(model, prompt_ids, cfg.sampling, eos_id=tok.eos_token_id, pad_id=tok.pad_token_id, seed=0,
                         logprobs=lps)
    return {"phase": phase, "chunk": chunk, "grad_ckpt": grad_ckpt, "sequences": n_prompts * k,
            "rss_after_load_mb": round(base), "peak_mb": round(status_mb("VmHWM")),
            "phase_peak_over_load_mb": round(status_mb("VmHWM") - base), "seconds": round(time.perf_counter() - t0, 1),
            "cpu_seconds": round(time.process_time() - c0, 1),
            "longest_prompt": max(map(len, prompt_ids)), "shortest_prompt": min(map(len, prompt_ids))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--phase", choices=PHASES)
    ap.add_argument("--chunk", type=int, default=None, help="train.logprob_chunk (0 = full logits); default: 0 and 512")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--new-tokens", type=int, default=48)
    ap.add_argument("--grad-ckpt", action="store_true", help="gradient checkpointing of the trunk (train phase)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(run_phase(a.phase, a.chunk, a.prompts, a.k, a.new_tokens, a.grad_ckpt)))
        return
    chunks = [a.chunk] if a.chunk is not None else [0, 512]
    for phase in [a.phase] if a.phase else PHASES:
        for chunk in chunks if phase in ("logprobs", "train") else [0]:
            out = subprocess.run([sys.executable, __file__, "--child", "--phase", phase, "--chunk", str(chunk),
                                  "--prompts", str(a.prompts), "--k", str(a.k), "--new-tokens", str(a.new_tokens)]
                                 + (["--grad-ckpt"] if a.grad_ckpt else []),
                                 capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
            if out.returncode:
                sys.exit(out.stderr)
            print(out.stdout.strip().splitlines()[-1], flush=True)


if __name__ == "__main__":
    main()
