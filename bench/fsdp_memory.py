"""Memory per process: one process vs DDP on 2 processes vs FSDP2 on 2 processes (CPU, gloo), 25M model.

Each process does what one INPO training step of the loop holds in memory: the policy and pi_ref (a frozen
copy), the anchors' log-probs (``inpo.logprobs.cache_logprobs``), then ``inpo.train.train_on_pairs`` (AdamW,
gradients) over 64 random pairs in steps of 16 (micro-batches of 4 pairs, log-probs in batches of 8 sequences:
small activations, so that the model state shows). DDP is ``accelerator.prepare(policy, optimizer)`` under
``configs/accelerate/cpu_2proc.yaml``; FSDP2 is ``inpo.sharding.shard_model`` of policy and pi_ref under
``configs/accelerate/fsdp2_cpu_2proc.yaml`` (what ``inpo.loop.start`` does).

Reported per process: the bytes this process holds of the policy's parameters, their gradients (same size,
every parameter trains), AdamW's state (exp_avg, exp_avg_sq: measured after the step), pi_ref's parameters;
and the process's RSS after imports, its peak RSS (``ru_maxrss``) after each phase and at the end. Both models
are built whole on every process before FSDP2 shards them, so the peak also holds that moment.

Each mode runs twice: with glibc's default malloc, and with ``MALLOC_MMAP_THRESHOLD_=131072`` (a fixed threshold:
large blocks are always mmap'ed and given back when freed). FSDP2 allocates and frees the all-gathered layers at
every forward; with the default (dynamic) threshold glibc keeps those blocks in its heap and RSS grows.

    python bench/fsdp_memory.py            # 2 x 3 launches (about 6 minutes), prints JSON + table
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from common import PAD, ROOT, THREAD_ENV, current_rss_mb, make_model, make_pairs, peak_rss_mb, set_threads  # noqa: E402

SIZE = "25M"
MODES = {"single": None, "ddp": "cpu_2proc.yaml", "fsdp2": "fsdp2_cpu_2proc.yaml"}


def local_mb(tensors) -> float:
    from inpo.sharding import _local

    return sum(_local(t).numel() * _local(t).element_size() for t in tensors) / 2**20


def worker(mode: str) -> None:
    set_threads()
    from accelerate import Accelerator

    from inpo import sharding
    from inpo.algorithms import ALGORITHMS, Pairs
    from inpo.config import build_config
    from inpo.logprobs import cache_logprobs
    from inpo.sampling import Samples
    from inpo.train import train_on_pairs

    accelerator = Accelerator(cpu=True)
    rss0 = current_rss_mb()
    policy, ref = make_model(SIZE), make_model(SIZE)
    ref.requires_grad_(False).eval()
    n_params = sum(p.numel() for p in policy.parameters())
    phases = {"built": peak_rss_mb()}
    if mode == "fsdp2":
        sharding.shard_model(ref, accelerator.device)
        sharding.shard_model(policy, accelerator.device)
        optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-5)
    else:
        optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-5)
        policy, optimizer = accelerator.prepare(policy, optimizer)
    phases["prepared"] = peak_rss_mb()
    data = make_pairs(64, seed=0)
    samples = Samples(data.prompts, [r for c, j in zip(data.chosen, data.rejected, strict=True) for r in (c, j)], 2)
    n = len(data.prompts)
    pairs = Pairs(torch.arange(n) * 2, torch.arange(n) * 2 + 1, torch.ones(n), torch.arange(n))
    unwrapped = accelerator.unwrap_model(policy)
    # every process computes all anchors (same inputs, same batches: sharded forwards stay in step)
    cache = cache_logprobs({"ref": ref, "prev": unwrapped}, samples, pad_id=PAD, batch_size=8)
    phases["anchors"] = peak_rss_mb()
    cfg = build_config({"train": {"batch_size": 16, "grad_accum": 4, "epochs": 1, "lr": 1e-5}})
    train_on_pairs(policy, accelerator, ALGORITHMS["inpo"], cfg, samples, pairs, cache, None, pad_id=PAD, seed=0,
                   optimizer=optimizer)
    trainable = [p for p in unwrapped.parameters() if p.requires_grad]
    state = [v for s in getattr(optimizer, "optimizer", optimizer).state.values() for v in s.values()
             if isinstance(v, torch.Tensor) and v.dim() > 0]
    row = {"mode": mode, "rank": accelerator.process_index, "processes": accelerator.num_processes,
           "params": n_params, "policy_mb": local_mb(unwrapped.parameters()), "grads_mb": local_mb(trainable),
           "adam_mb": local_mb(state), "ref_mb": local_mb(ref.parameters()), "rss_after_imports_mb": rss0,
           "peak_rss_mb": peak_rss_mb(), "peak_rss_after_phase_mb": phases}
    row["state_mb"] = row["policy_mb"] + row["grads_mb"] + row["adam_mb"] + row["ref_mb"]
    row["peak_minus_imports_mb"] = row["peak_rss_mb"] - rss0
    sys.stdout.write(json.dumps(row) + "\n")  # one write (< PIPE_BUF): the processes' lines do not interleave
    sys.stdout.flush()


MALLOC = {"default": {}, "mmap_threshold_128k": {"MALLOC_MMAP_THRESHOLD_": "131072"}}


def launch(mode: str, malloc: str) -> list[dict]:
    script = str(Path(__file__).resolve())
    config = MODES[mode]
    cmd = ([sys.executable, script, "--worker", mode] if config is None else
           [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
            str(ROOT / "configs" / "accelerate" / config), script, "--worker", mode])
    env = {**os.environ, **THREAD_ENV, **MALLOC[malloc], "PYTHONPATH": str(ROOT / "src"),
           "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, cwd=ROOT, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{mode} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    return sorted(({**r, "malloc": malloc} for r in rows), key=lambda r: r["rank"])


def main() -> None:
    rows = [r for malloc in MALLOC for mode in MODES for r in launch(mode, malloc)]
    print(json.dumps(rows))
    cols = ["policy_mb", "grads_mb", "adam_mb", "ref_mb", "state_mb", "rss_after_imports_mb", "peak_rss_mb",
            "peak_minus_imports_mb"]
    print(f"{rows[0]['params'] / 1e6:.1f}M parameters (fp32), MB per process")
    print("| malloc | mode | rank | " + " | ".join(cols) + " | peak after build / prepare / anchors |")
    print("|---|---|---|" + "---|" * len(cols) + "---|")
    for r in rows:
        ph = " / ".join(f"{v:.0f}" for v in r["peak_rss_after_phase_mb"].values())
        print(f"| {r['malloc']} | {r['mode']} ({r['processes']} proc) | {r['rank']} | "
              + " | ".join(f"{r[c]:.0f}" for c in cols) + f" | {ph} |")


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--worker":
        worker(sys.argv[2])
    else:
        main()
