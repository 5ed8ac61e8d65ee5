"""Shared helpers of the benchmarks: tiny Llama models and tokenizer built in code, random pairs, memory, FLOPs.

Everything is seeded and built in code (no model hub). Timings are wall-clock ``time.perf_counter``; each
configuration whose peak memory is reported runs in a fresh subprocess (``resource.getrusage`` max RSS is
per process and never decreases).
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent

# name -> (hidden, layers, heads, intermediate); vocab VOCAB. Parameter counts printed by the benchmarks.
SIZES: dict[str, tuple[int, int, int, int]] = {
    "3M": (192, 4, 4, 512),
    "25M": (512, 6, 8, 1408),
}
VOCAB = 4096
PAD, EOS = 0, 1  # token ids; random tokens are drawn from [3, VOCAB)
# One intra-op thread everywhere (workers, peers, the matmul limit): the 2-core machine is shared, and with
# oversubscribed cores torch's OpenMP threads spin-wait, which makes multi-threaded timings noise.
THREADS = int(os.environ.get("INPO_BENCH_THREADS", "1"))
THREAD_ENV = {"OMP_NUM_THREADS": str(THREADS), "MKL_NUM_THREADS": str(THREADS), "INPO_BENCH_THREADS": str(THREADS)}


def set_threads() -> None:
    torch.set_num_threads(THREADS)


def model_config(size: str):
    from transformers import LlamaConfig

    hidden, layers, heads, inter = SIZES[size]
    return LlamaConfig(vocab_size=VOCAB, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                       num_key_value_heads=heads, intermediate_size=inter, max_position_embeddings=256,
                       tie_word_embeddings=False, pad_token_id=PAD, eos_token_id=EOS, bos_token_id=2)


def make_model(size: str, seed: int = 0) -> torch.nn.Module:
    """Random-init fp32 LlamaForCausalLM of the named size (eager attention off: the default sdpa)."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(model_config(size)).float()
    model.generation_config.pad_token_id = PAD
    return model


def make_tokenizer():
    """Word-level tokenizer over ``t<i>`` words (id i) split on whitespace: text <-> ids is exact."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": PAD, "</s>": EOS, "<s>": 2, **{f"t{i}": i for i in range(3, VOCAB)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", bos_token="<s>")


@dataclass
class PairData:
    """``n`` pairs: prompt ids, chosen ids, rejected ids (each response ends with EOS)."""

    prompts: list[list[int]]
    chosen: list[list[int]]
    rejected: list[list[int]]

    def texts(self) -> dict[str, list[str]]:
        """TRL's text format: responses start with a space and end with the EOS token (TRL adds none then)."""
        def words(ids: list[int]) -> str:
            return " ".join("</s>" if i == EOS else f"t{i}" for i in ids)

        return {"prompt": [words(p) for p in self.prompts], "chosen": [" " + words(c) for c in self.chosen],
                "rejected": [" " + words(r) for r in self.rejected]}

    def tokens(self) -> int:
        """Non-padding tokens of one pass over all pairs (prompt + chosen and prompt + rejected)."""
        return sum(2 * len(p) + len(c) + len(r) for p, c, r in zip(self.prompts, self.chosen, self.rejected,
                                                                     strict=True))


def make_pairs(n: int = 256, prompt_len: tuple[int, int] = (8, 24), response_len: tuple[int, int] = (8, 24),
               seed: int = 0) -> PairData:
    g = torch.Generator().manual_seed(seed)

    def seq(lo: int, hi: int, eos: bool) -> list[int]:
        length = int(torch.randint(lo, hi + 1, (1,), generator=g))
        ids = torch.randint(3, VOCAB, (length - int(eos),), generator=g).tolist()
        return ids + [EOS] if eos else ids

    prompts = [seq(*prompt_len, eos=False) for _ in range(n)]
    chosen = [seq(*response_len, eos=True) for _ in range(n)]
    rejected = [seq(*response_len, eos=True) for _ in range(n)]
    return PairData(prompts, chosen, rejected)


def non_embedding_params(model: torch.nn.Module) -> int:
    """Parameters that take part in matmuls: all but the input embedding table (the LM head counts)."""
    emb = model.get_input_embeddings().weight
    return sum(p.numel() for p in model.parameters() if p is not emb)


def train_flops(model: torch.nn.Module, tokens: int, mean_seq_len: float) -> float:
    """Training FLOPs (forward + backward) of ``tokens`` tokens: ``6 N + 12 n_layer d L`` per token
    (Kaplan et al. 2020, Table 1: 2N + 2 n_layer n_ctx d_attn forward, x3 with the backward)."""
    c = model.config
    return tokens * (6 * non_embedding_params(model) + 12 * c.num_hidden_layers * c.hidden_size * mean_seq_len)


def forward_flops(model: torch.nn.Module, tokens: int, mean_seq_len: float) -> float:
    return train_flops(model, tokens, mean_seq_len) / 3


class Clock:
    """Wall time and this process's CPU time (all threads) since construction. On a shared machine the CPU
    time is what the code cost; the wall time also holds the waits for a core held by another process."""

    def __init__(self) -> None:
        self.wall0, self.cpu0 = time.perf_counter(), time.process_time()

    def wall(self) -> float:
        return time.perf_counter() - self.wall0

    def cpu(self) -> float:
        return time.process_time() - self.cpu0


def matmul_flops_per_s(n: int = 2048, repeats: int = 5) -> dict[str, float]:
    """fp32 ``torch.mm`` throughput on n x n matrices (2 n^3 FLOPs per product), best of ``repeats``, by wall
    and by CPU time."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)  # warm-up
    wall = cpu = float("inf")
    for _ in range(repeats):
        c = Clock()
        torch.mm(a, b)
        wall, cpu = min(wall, c.wall()), min(cpu, c.cpu())
    return {"wall": 2 * n**3 / wall, "cpu": 2 * n**3 / cpu}


def peak_rss_mb() -> float:
    """This process's peak resident set size in MB (Linux reports KB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def run_json(args: list[str], timeout: float = 600) -> dict:
    """Run ``python <args>`` in a fresh process; return the JSON object on its last stdout line."""
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          env={**os.environ, **THREAD_ENV, "TQDM_DISABLE": "1", "TOKENIZERS_PARALLELISM": "false"})
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def median(xs: list[float]) -> float:
    return statistics.median(xs)
