"""Preference training throughput and peak memory: inpo's loop vs TRL's ``DPOTrainer(loss_type="ipo")``.

Same tiny Llama (built in code), same 256 random-token pairs, same batch size (16 pairs = 32 sequences per
step), 1 epoch, fp32, no gradient checkpointing, both on the same CPU threads.

* ours: ``inpo.logprobs.cache_logprobs`` (pi_ref and pi_t: the two passes INPO needs; TRL's IPO needs one) then
  ``inpo.train.train_on_pairs`` with the INPO loss. Timed: both phases. ``--anchors reuse``: the loop with
  ``sampling.reuse_logprobs`` (pi_t's anchor from the sampler: pi_ref's pass + a check of 8 sequences).
* TRL: ``DPOTrainer(loss_type="ipo", precompute_ref_log_probs=True, bf16=False, gradient_checkpointing=False)``
  (TRL's defaults are bf16=True and gradient_checkpointing=True). Timed: its reference precompute
  (``_precompute_ref_logps``, run inside ``__init__``) plus ``trainer.train()``; its dataset tokenization is not
  timed.

Each (implementation, size, repeat) runs in a fresh subprocess so its peak RSS (``ru_maxrss``) is its own;
implementations are interleaved within each repeat. The ratio is ours/TRL of the medians.

    python bench/train_vs_trl.py                 # both sizes, 3 repeats, prints JSON + table
    python bench/train_vs_trl.py --check-loss    # TRL's IPO loss vs inpo.losses.ipo_loss on one batch
    python bench/train_vs_trl.py --sizes 25M --repeats 2 --anchors both,reuse   # after sampling.reuse_logprobs
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from common import (  # noqa: E402
    EOS,
    PAD,
    SIZES,
    Clock,
    PairData,
    current_rss_mb,
    make_model,
    make_pairs,
    make_tokenizer,
    matmul_flops_per_s,
    median,
    peak_rss_mb,
    run_json,
    set_threads,
    train_flops,
)

BATCH_PAIRS = 16
N_PAIRS = 256
EPOCHS = 1
BETA = 0.1
LR = 1e-5


def sequence_logprobs_response_only(model, input_ids, attention_mask, response_mask):
    """Proposed replacement of ``inpo.logprobs.sequence_logprobs``: the LM head (and log-softmax) only on the
    positions whose next token is a response token, instead of on every position of the padded batch.
    (Ignores logit scaling/soft-capping: the real fix must apply them as the model's own head does.)"""
    hidden = model.base_model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
    mask = response_mask[:, 1:]
    logits = model.get_output_embeddings()(hidden[:, :-1][mask]).float()
    targets = input_ids[:, 1:][mask]
    lp = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)
    rows = torch.arange(input_ids.shape[0], device=input_ids.device).unsqueeze(-1).expand_as(mask)[mask]
    return torch.zeros(input_ids.shape[0], dtype=lp.dtype, device=lp.device).index_add(0, rows, lp)


def bucketed_randperm(lengths: list[int], batch: int):
    """Proposed ordering for ``train_on_pairs``: prompts sorted by length, cut into steps of ``batch``, the steps
    shuffled (a "sortish" sampler), so each step's sequences have similar lengths and little padding."""
    original = torch.randperm

    def randperm(n: int, generator: torch.Generator | None = None, **kwargs):  # noqa: ANN202
        if n != len(lengths):
            return original(n, generator=generator, **kwargs)
        by_len = sorted(range(n), key=lambda i: lengths[i])
        steps = [by_len[s : s + batch] for s in range(0, n, batch)]
        return torch.tensor([i for j in original(len(steps), generator=generator).tolist() for i in steps[j]])

    return randperm


def apply_variant(variant: str, data: PairData) -> None:
    """Monkeypatch a proposed loop fix into this (worker) process only."""
    import inpo.logprobs
    import inpo.train

    for v in filter(None, variant.split("+")):
        if v == "bucketed":
            lengths = [len(p) + max(len(c), len(r)) for p, c, r in zip(data.prompts, data.chosen, data.rejected,
                                                                         strict=True)]
            torch.randperm = bucketed_randperm(lengths, BATCH_PAIRS)
            continue
        if v == "fused_adamw":
            torch.optim.AdamW = functools.partial(torch.optim.AdamW, fused=True)  # type: ignore[misc]
        elif v == "head_on_response":
            inpo.train.sequence_logprobs = sequence_logprobs_response_only
            inpo.logprobs.sequence_logprobs = sequence_logprobs_response_only
        else:
            raise SystemExit(f"unknown variant {v}")


def run_ours(size: str, data: PairData, variant: str = "", anchors: str = "both") -> dict:
    """``anchors="both"``: pi_ref and pi_t by ``cache_logprobs`` (the loop before ``sampling.reuse_logprobs``);
    ``"reuse"``: the loop now (``inpo.stages.logprob_stage``): pi_ref's pass, pi_t's anchor = the sampler's log-probs
    (here pi_t's log-probs computed untimed before, standing in for what sampling recorded), 8 sequences checked
    by a forward pass (``sampling.logprob_check``)."""
    from accelerate import Accelerator

    from inpo.algorithms import ALGORITHMS, Pairs
    from inpo.config import RunConfig, TrainConfig
    from inpo.logprobs import cache_logprobs
    from inpo.sampling import Samples
    from inpo.stages import logprob_stage
    from inpo.train import train_on_pairs

    apply_variant(variant, data)
    model = make_model(size)
    ref = copy.deepcopy(model).requires_grad_(False).eval()
    # group_by_length: our steps hold prompts of similar lengths (TRL's DPOTrainer pads random batches)
    cfg = RunConfig(train=TrainConfig(batch_size=BATCH_PAIRS, epochs=EPOCHS, lr=LR, warmup_ratio=0.0,
                                      group_by_length=not variant))
    accelerator = Accelerator(cpu=True)
    policy = accelerator.prepare(model)
    n = len(data.prompts)
    responses = [r for pair in zip(data.chosen, data.rejected, strict=True) for r in pair]
    samples = Samples(data.prompts, responses, k=2)
    idx = torch.arange(n)
    pairs = Pairs(chosen=2 * idx, rejected=2 * idx + 1, weight=torch.ones(n), prompt=idx)
    if anchors == "reuse":  # what the sampler recorded (untimed: sampling computed it)
        samples.logps = cache_logprobs({"m": policy}, samples, pad_id=PAD, batch_size=cfg.train.logprob_batch_size)["m"]
    rss_before = current_rss_mb()
    c = Clock()
    if anchors == "reuse":
        cache = logprob_stage(list(range(n)), {"ref": ref, "prev": policy}, samples, pad_id=PAD,
                              batch_size=cfg.train.logprob_batch_size, reuse=["prev"], check=cfg.sampling.logprob_check,
                              tolerance=cfg.sampling.logprob_tolerance)
        assert float(cache["from_sampler"].min()) == 1.0
    else:
        cache = cache_logprobs({"ref": ref, "prev": policy}, samples, pad_id=PAD,
                               batch_size=cfg.train.logprob_batch_size)
    pre = {"wall": c.wall(), "cpu": c.cpu()}
    c = Clock()
    train_on_pairs(policy, accelerator, ALGORITHMS["inpo"], cfg, samples, pairs, cache, None, pad_id=PAD, seed=0)
    train = {"wall": c.wall(), "cpu": c.cpu()}
    return {"precompute": pre, "train": train, "rss_before_mb": rss_before, "peak_rss_mb": peak_rss_mb()}


def trl_trainer(model, data: PairData, out_dir: str):
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    args = DPOConfig(
        output_dir=out_dir, loss_type=["ipo"], beta=BETA, learning_rate=LR, per_device_train_batch_size=BATCH_PAIRS,
        gradient_accumulation_steps=1, num_train_epochs=EPOCHS, precompute_ref_log_probs=True, bf16=False,
        fp16=False, gradient_checkpointing=False, report_to=[], save_strategy="no", eval_strategy="no",
        disable_tqdm=True, use_cpu=True, seed=0, lr_scheduler_type="linear", warmup_steps=0,
    )
    return DPOTrainer(model=model, args=args, train_dataset=Dataset.from_dict(data.texts()),
                      processing_class=make_tokenizer())


def run_trl(size: str, data: PairData) -> dict:
    from trl import DPOTrainer

    pre = {"wall": 0.0, "cpu": 0.0}
    original = DPOTrainer._precompute_ref_logps

    def timed(self, *args, **kwargs):  # noqa: ANN001
        c = Clock()
        out = original(self, *args, **kwargs)
        pre["wall"] += c.wall()
        pre["cpu"] += c.cpu()
        return out

    DPOTrainer._precompute_ref_logps = timed
    model = make_model(size)
    rss_before = current_rss_mb()
    with tempfile.TemporaryDirectory() as d:
        c = Clock()
        trainer = trl_trainer(model, data, d)
        init_other = {"wall": c.wall() - pre["wall"], "cpu": c.cpu() - pre["cpu"]}
        c = Clock()
        trainer.train()
        train = {"wall": c.wall(), "cpu": c.cpu()}
    return {"precompute": pre, "train": train, "init_other": init_other, "rss_before_mb": rss_before,
            "peak_rss_mb": peak_rss_mb()}


def check_loss(size: str) -> dict:
    """TRL's IPO loss (``DPOTrainer.compute_loss`` on one collated batch) vs ``inpo.losses.ipo_loss`` with
    per-token averaging, on a policy perturbed away from the reference (so the margins are not zero)."""
    from inpo.logprobs import batched_sequence_logprobs
    from inpo.losses import ipo_loss

    data = make_pairs(BATCH_PAIRS, seed=1)
    model = make_model(size)
    ref = copy.deepcopy(model).eval()
    with tempfile.TemporaryDirectory() as d:
        trainer = trl_trainer(model, data, d)  # precomputes reference log-probs with the unperturbed model
    ds = trainer.train_dataset
    same_tokens = all(ds[i]["prompt_ids"] == data.prompts[i] and ds[i]["chosen_ids"] == data.chosen[i]
                      and ds[i]["rejected_ids"] == data.rejected[i] for i in range(len(ds)))
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    model.eval()
    batch = trainer.data_collator([ds[i] for i in range(len(ds))])
    with torch.no_grad():
        trl_loss = float(trainer.compute_loss(model, batch))
    seqs = data.chosen + data.rejected
    prompts = data.prompts + data.prompts
    pol = batched_sequence_logprobs(model, prompts, seqs, pad_id=PAD)
    refl = batched_sequence_logprobs(ref, prompts, seqs, pad_id=PAD)
    lengths = torch.tensor([len(s) for s in seqs], dtype=torch.float32)
    n = len(data.prompts)
    ours = ipo_loss(pol[:n], pol[n:], refl[:n], refl[n:], beta=BETA, chosen_lengths=lengths[:n],
                    rejected_lengths=lengths[n:]).mean()
    return {"size": size, "trl_loss": trl_loss, "ours_loss": float(ours), "abs_diff": abs(trl_loss - float(ours)),
            "same_tokens": same_tokens, "eos_id": EOS}


def padding_ratios(n_pairs: int = N_PAIRS) -> dict:
    """Padded tokens / real tokens of one epoch's training batches (16 pairs = 32 right-padded sequences):
    random steps (the loop and TRL) vs steps of similar lengths (``bucketed_randperm``)."""
    data = make_pairs(n_pairs)
    lengths = [len(p) + max(len(c), len(r)) for p, c, r in zip(data.prompts, data.chosen, data.rejected, strict=True)]
    g = torch.Generator().manual_seed(0)
    orders = {"random": torch.randperm(n_pairs, generator=g).tolist(),
              "bucketed": bucketed_randperm(lengths, BATCH_PAIRS)(n_pairs, generator=g).tolist()}
    out = {}
    for name, order in orders.items():
        padded = 0
        for s in range(0, n_pairs, BATCH_PAIRS):
            idx = order[s : s + BATCH_PAIRS]
            seqs = [len(data.prompts[i]) + len(x[i]) for x in (data.chosen, data.rejected) for i in idx]
            padded += max(seqs) * len(seqs)
        out[name] = padded / data.tokens()
    return out


def compare(sizes: list[str], repeats: int, variant: str = "", n_pairs: int = N_PAIRS,
            anchors: tuple[str, ...] = ("both",)) -> dict:
    """Interleaved fresh-process runs; medians per (size, impl); ratios ours/TRL; FLOP fraction vs torch.mm.
    ``anchors``: ours' variants (``ours`` = both passes, ``ours_reuse`` = pi_ref's pass + the sampler's pi_t)."""
    data = make_pairs(n_pairs)
    results: dict = {}
    peak_mm = {"wall": 0.0, "cpu": 0.0}
    names = {"both": "ours", "reuse": "ours_reuse"}
    for size in sizes:
        runs: dict[str, list[dict]] = {names[a]: [] for a in anchors} | {"trl": []}
        for r in range(repeats):
            order = [*[names[a] for a in anchors], "trl"]
            order = order if r % 2 == 0 else order[::-1]
            for impl in order:
                worker = "trl" if impl == "trl" else "ours"
                args = ["bench/train_vs_trl.py", "--worker", worker, "--size", size, "--pairs", str(n_pairs)]
                if impl == "ours" and variant:
                    args += ["--variant", variant]
                if impl == "ours_reuse":
                    args += ["--anchors", "reuse"]
                runs[impl].append(run_json(args))
            mm = matmul_flops_per_s()
            peak_mm = {k: max(peak_mm[k], mm[k]) for k in peak_mm}
        model = make_model(size)
        n_params = sum(p.numel() for p in model.parameters())
        tokens = data.tokens() * EPOCHS
        mean_len = tokens / (2 * n_pairs * EPOCHS)
        row: dict = {"params": n_params, "pairs": n_pairs * EPOCHS, "tokens": tokens}
        flops = train_flops(model, tokens, mean_len)
        for impl, rs in runs.items():
            row[impl] = {"peak_rss_mb": median([x["peak_rss_mb"] for x in rs]),
                         "peak_increase_mb": median([x["peak_rss_mb"] - x["rss_before_mb"] for x in rs]), "runs": rs}
            for clock in ("cpu", "wall"):
                total = median([x["precompute"][clock] + x["train"][clock] for x in rs])
                train_s = median([x["train"][clock] for x in rs])
                row[impl][clock] = {"pairs_per_s": n_pairs * EPOCHS / total, "train_s": train_s,
                                    "precompute_s": median([x["precompute"][clock] for x in rs]),
                                    "train_flops_per_s": flops / train_s,
                                    "train_flops_fraction": flops / train_s / peak_mm[clock]}
        for impl in (x for x in runs if x != "trl"):
            suffix = "" if impl == "ours" else impl.removeprefix("ours")
            for clock in ("cpu", "wall"):
                row[f"speed_ratio{suffix}_{clock}"] = (row[impl][clock]["pairs_per_s"]
                                                       / row["trl"][clock]["pairs_per_s"])
            row[f"memory_ratio{suffix}"] = row[impl]["peak_rss_mb"] / row["trl"]["peak_rss_mb"]
        results[size] = row
    results["matmul_flops_per_s"] = peak_mm
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--worker", choices=["ours", "trl"])
    p.add_argument("--size", choices=list(SIZES), default="3M")
    p.add_argument("--sizes", default="3M,25M")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--pairs", type=int, default=N_PAIRS)
    p.add_argument("--variant", default="",
                   help="ours with proposed fixes: fused_adamw, head_on_response, bucketed (a+b)")
    p.add_argument("--anchors", default="both",
                   help="ours' anchors: both (pi_ref + pi_t passes), reuse (pi_ref's pass, pi_t's from the sampler, "
                        "8 checked: the loop with sampling.reuse_logprobs); comparison: a list, e.g. both,reuse")
    p.add_argument("--check-loss", action="store_true")
    p.add_argument("--padding", action="store_true", help="padded/real tokens of random vs bucketed steps")
    a = p.parse_args()
    set_threads()
    if a.worker == "ours":
        print(json.dumps(run_ours(a.size, make_pairs(a.pairs), a.variant, a.anchors)))
    elif a.worker == "trl":
        print(json.dumps(run_trl(a.size, make_pairs(a.pairs))))
    elif a.padding:
        print(json.dumps(padding_ratios(a.pairs)))
    elif a.check_loss:
        print(json.dumps(check_loss(a.size)))
    else:
        anchors = tuple(a.anchors.split(","))
        res = compare(a.sizes.split(","), a.repeats, a.variant, a.pairs, anchors)
        for size in a.sizes.split(","):
            r = res[size]
            for impl in (x for x in r if x.startswith("ours")):
                suffix = "" if impl == "ours" else impl.removeprefix("ours")
                for clock in ("cpu", "wall"):
                    o, t = r[impl][clock], r["trl"][clock]
                    print(f"{size} ({r['params'] / 1e6:.1f}M params, {clock} time): {impl} {o['pairs_per_s']:.1f} "
                          f"pairs/s (precompute {o['precompute_s']:.1f} s, train {o['train_s']:.1f} s), TRL "
                          f"{t['pairs_per_s']:.1f} pairs/s (precompute {t['precompute_s']:.1f} s, train "
                          f"{t['train_s']:.1f} s), ratio {r[f'speed_ratio{suffix}_{clock}']:.2f}", file=sys.stderr)
                print(f"{size}: peak RSS {impl} {r[impl]['peak_rss_mb']:.0f} MB, TRL {r['trl']['peak_rss_mb']:.0f} MB",
                      file=sys.stderr)
        print(json.dumps(res))


if __name__ == "__main__":
    main()
