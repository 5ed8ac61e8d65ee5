"""Can DeepSpeed ZeRO-3 run on CPU processes here? A probe, not a test: two gloo processes under
``accelerate launch`` with a ZeRO-3 config (``use_cpu: true``), a tiny Llama prepared with AdamW, one
optimizer step and a ``generate``. It prints what accelerate and DeepSpeed report on each process.

Needs ``pip install -e '.[deepspeed]'`` (its own venv; deepspeed 0.19.8 was used for docs/gpu.md):

    python bench/deepspeed_cpu_probe.py
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

CONFIG = """compute_environment: LOCAL_MACHINE
distributed_type: DEEPSPEED
deepspeed_config:
  zero_stage: 3
  offload_optimizer_device: none
  offload_param_device: none
  zero3_init_flag: false
  deepspeed_multinode_launcher: standard
num_machines: 1
num_processes: 2
machine_rank: 0
mixed_precision: 'no'
rdzv_backend: static
same_network: true
use_cpu: true
"""


def worker() -> None:
    import torch
    import torch.distributed as dist
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from transformers import LlamaConfig, LlamaForCausalLM

    def say(msg: str) -> None:  # one write per line: the two processes share the pipe
        sys.stdout.write(msg + "\n")
        sys.stdout.flush()

    torch.set_num_threads(1)
    acc = Accelerator()
    rank = dist.get_rank() if dist.is_initialized() else "-"
    say(f"[{rank}] accelerate: {acc.distributed_type}, num_processes={acc.num_processes}, "
        f"process_index={acc.process_index}, is_main_process={acc.is_main_process}; torch.distributed: "
        f"world={dist.get_world_size() if dist.is_initialized() else '-'}, "
        f"backend={dist.get_backend() if dist.is_initialized() else '-'}")
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                         num_key_value_heads=2, intermediate_size=64))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ds = AcceleratorState().deepspeed_plugin.deepspeed_config
    try:
        acc.prepare(model, opt)
    except Exception as e:  # noqa: BLE001 - the probe reports what happens
        say(f"[{rank}] prepare without a dataloader: {type(e).__name__}: {str(e)[:160]}")
    ds["train_micro_batch_size_per_gpu"] = 1
    try:
        acc.prepare(model, opt)
    except Exception as e:  # noqa: BLE001
        say(f"[{rank}] prepare with train_micro_batch_size_per_gpu=1: {type(e).__name__}: {str(e)[:160]}")
    ds["train_batch_size"] = dist.get_world_size()
    engine, opt = acc.prepare(model, opt)
    p = next(engine.module.parameters())
    say(f"[{rank}] prepared with train_batch_size=world: {type(engine).__name__}, {type(opt.optimizer).__name__}; "
        f"embedding {tuple(p.ds_shape)} holds {p.ds_tensor.numel()} of {p.ds_numel} values here")
    x = torch.randint(0, 64, (2, 5))
    acc.backward(engine(input_ids=x).logits.sum())
    opt.step()
    out = acc.unwrap_model(engine).generate(input_ids=x[:, :3], max_new_tokens=4, do_sample=True, pad_token_id=0)
    say(f"[{rank}] step and generate ran: {tuple(out.shape)}; torch optimizer state entries: "
        f"{len(opt.optimizer.state)}")


def main() -> None:
    with tempfile.TemporaryDirectory() as d:
        cfg = Path(d) / "zero3_cpu_2proc.yaml"
        cfg.write_text(CONFIG)
        proc = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(cfg),
                               __file__, "--worker"], capture_output=True, text=True, timeout=600,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
    print("\n".join(sorted((line for line in proc.stdout.splitlines() if line.startswith("[")), key=lambda s: s[:3])))
    print(f"exit code {proc.returncode}")


if __name__ == "__main__":
    worker() if sys.argv[1:] == ["--worker"] else main()
