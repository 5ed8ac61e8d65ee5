"""Judges on the annotators task (SmolLM2-135M-Instruct): zero-shot and trained on oracle labels, each compared
with the exact oracle, and each used as INPO's oracle with the win rate measured under the exact oracle.

    python bench/annotators_judges.py                   # seed 0, writes runs/annotators-judges/, one thread
    python bench/annotators_judges.py --steps report    # print the tables again from the cached results

Steps (``--steps``, comma-separated, default all; every step caches its result in ``--out`` and is skipped when
the cache is there, so a rerun only prints; ``--redo`` recomputes the named steps):

``sample``   pi_ref (SmolLM2, the loop's own ``build_setup`` of the annotators config: chat-template prompt
             rendering, end-of-turn stops, ``sample_responses`` with the task's sampling settings: K=4, 48 new
             tokens, temperature 1, top_k 50) samples K responses per prompt for the first ``--train-prompts`` of
             the task's TRAIN_FILE and the first ``--eval-prompts`` of its held-out EVAL_FILE -> ``samples.json``
             (the decoded texts the judge reads, as ``response_texts`` gives them to the loop's judge).
``pairs``    every unordered pair of a prompt's K responses (identical texts dropped: they make no pair),
             ``P_oracle`` from :class:`~inpo.tasks.annotators.AnnotatorJudge` (``--mode sampled``: P in
             {0, 1/3, 1/2, 2/3, 1}). Train pairs get one label each drawn Bernoulli(P_oracle), like a human
             annotator (the trainers take hard labels: chosen/rejected); P = 1/2 is a coin flip ->
             ``train_prefs.jsonl``. Held-out pairs keep P_oracle, plus one Bernoulli label each (for accuracy on
             noisy labels, and its Bayes ceiling: the oracle scored on those labels, expected E[max(P, 1 - P)]).
``zeroshot`` SmolLM2 as an ``lm-pair`` judge (presets ``generic`` and ``rlhflow``) on the held-out pairs: the raw
             ``f(a, b)`` = P(first shown better) in both orders; ``P = (f(a,b) + 1 - f(b,a)) / 2`` as the judge
             serves it; metrics below, and the position bias of ``f``.
``bt``, ``gpm``, ``lm-pair``
             ``train_judge(train_prefs.jsonl, kind, SmolLM2, ...)`` with LoRA (r 16, alpha 32, merged on save),
             ``--epochs``, batch 8, the default LoRA lr (2e-4), one thread, no internal held-out split (the held-out
             pairs are the EVAL_FILE prompts') -> ``judge-<kind>/``, reloaded with ``load_judge`` (as the loop
             does) and scored on the held-out pairs.
``inpo``     ``inpo train configs/annotators_sampled.yaml -T 1 --seed 0 --set data.num_prompts=16
             --set data.num_eval_prompts=64 --set threads=1 --set train.batch_size=4 --set train.grad_accum=2
             --set train.logprob_batch_size=8``
             (that config's step of 8 prompts as 4 x 2 accumulated, for memory) with the exact oracle
             (``judge.path=builtin``) and with each trained judge
             (``--set judge.path=runs/annotators-judges/judge-<kind>``); for a learned judge the run's own
             evaluation is under that judge, so each is re-evaluated under the exact oracle with
             ``inpo eval RUN --judge builtin`` (the same cached pi_ref baseline samples and the same sampling seed
             as the run's evaluation). Also: the agreement with the exact oracle of the judgements the loop
             trained on (``stages/iter_1/s0_judgements.pt`` vs the oracle on the same ``s0_samples.pt``).
``loop-labels`` each trained judge on the exact run's iteration-1 samples (pi_1 = pi_ref with seed 0: the samples
             INPO trains on at iteration 1 whatever its oracle), against the exact oracle on the same pairs.
``report``   the tables (markdown).

Metrics against the exact oracle (:mod:`inpo.judges.agreement`): sign agreement on the pairs where P_oracle != 1/2,
mean |P_judge - P_oracle|, Pearson correlation, accuracy on the held-out Bernoulli labels, and on the held-out
prompts' cyclic triples (three responses the oracle ranks i > j > k > i) how many edges the judge keeps (a BT
judge, a scalar reward, keeps at most 2 of 3). Each step records its wall and CPU seconds and the process's peak
RSS (``ru_maxrss``; in-process steps report the peak of the process so far, the INPO runs their own).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from inpo.judges.agreement import (
    cycle_edges_kept,
    cyclic_triples,
    mean_abs_error,
    pearson,
    position_bias,
    sign_agreement,
)
from inpo.judges.train import pair_accuracy
from inpo.tasks.annotators import AnnotatorJudge, words

ROOT = Path(__file__).resolve().parent.parent
KINDS = ("bt", "gpm", "lm-pair")
# the annotators task as first shipped (sampled annotator, lr 5e-5, ...): what the cached results ran with
CONFIG = ROOT / "configs" / "annotators_sampled.yaml"
# that config's step (8 prompts x 12 pairs) as 4 x 2 accumulated, and log-probs 8 at a time: the peak RSS of
# those settings (10.3 GB, docs/results.md) was OOM-killed on the shared 24 GB machine
INPO_ARGS = ["-T", "1", "--seed", "0", "--set", "data.num_prompts=16", "--set", "data.num_eval_prompts=64",
             "--set", "threads=1", "--set", "train.batch_size=4", "--set", "train.grad_accum=2",
             "--set", "train.logprob_batch_size=8"]


def peak_rss_mb(who: int = resource.RUSAGE_SELF) -> float:
    return resource.getrusage(who).ru_maxrss / 1024


def timed_step(out: Path, name: str, key: dict, redo: bool, make: Callable[[], dict]) -> dict:
    """Run ``make`` unless ``out/<name>.json`` holds a result for the same ``key``; record wall / CPU / RSS."""
    path = out / f"{name}.json"
    if path.exists() and not redo:
        cached = json.loads(path.read_text())
        if cached.get("key") == key:
            return cached
    print(f"[{time.strftime('%H:%M:%S')}] step {name} ...", file=sys.stderr, flush=True)
    t0, c0 = time.perf_counter(), time.process_time()
    ch0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = make()
    ch1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    result.update(key=key, wall_s=time.perf_counter() - t0,
                  cpu_s=time.process_time() - c0 + (ch1.ru_utime + ch1.ru_stime) - (ch0.ru_utime + ch0.ru_stime),
                  peak_rss_mb=result.get("peak_rss_mb", peak_rss_mb()))
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result) + "\n")
    tmp.rename(path)
    print(f"[{time.strftime('%H:%M:%S')}] step {name}: {result['wall_s']:.0f} s wall, {result['cpu_s']:.0f} s CPU",
          file=sys.stderr, flush=True)
    return result


# ------------------------------------------------------------------------------------------------ sample


def run_config(args: argparse.Namespace, num_prompts: int, num_eval: int):
    from inpo.config import load_config
    return load_config(CONFIG, {"data": {"num_prompts": num_prompts, "num_eval_prompts": num_eval},
                                     "threads": 1, "seed": args.seed})


def sample_step(args: argparse.Namespace) -> dict:
    from rich.console import Console

    from inpo.models import build_setup
    from inpo.sampling import response_texts, sample_responses, truncated

    cfg = run_config(args, args.train_prompts, args.eval_prompts)
    setup = build_setup(cfg, Console(stderr=True), progress=False)
    out: dict[str, Any] = {"sampling": cfg.sampling.model_dump()}
    for split, prompts, seed in (("train", setup.train_prompts, 1000 * args.seed + 1),
                                 ("eval", setup.eval_prompts, 1000 * args.seed + 2)):
        t0 = time.perf_counter()
        resp = sample_responses(setup.ref, [p.ids for p in prompts], cfg.sampling, eos_id=setup.eos_id,
                                pad_id=setup.pad_id, seed=seed, stop_ids=setup.stop_ids, tokenizer=setup.tokenizer)
        rows = []
        for p, rs in zip(prompts, resp, strict=True):
            cut = truncated(rs, setup.stop_ids or [setup.eos_id], setup.tokenizer, cfg.sampling.stop)
            rows.append({"prompt": p.text, "responses": response_texts(setup.tokenizer, rs, cfg.sampling.stop),
                         "truncated": cut})
        out[split] = rows
        out[f"{split}_s"] = time.perf_counter() - t0
    return out


# ------------------------------------------------------------------------------------------------ pairs


def prompt_pairs(rows: list[dict], judge: AnnotatorJudge) -> list[dict]:
    """Every unordered pair (i < j) of each prompt's responses with distinct texts, with the oracle's P."""
    pairs = []
    for n, row in enumerate(rows):
        rs = row["responses"]
        for i in range(len(rs)):
            for j in range(i + 1, len(rs)):
                if rs[i] != rs[j]:
                    pairs.append({"row": n, "i": i, "j": j, "prompt": row["prompt"], "a": rs[i], "b": rs[j]})
    if pairs:
        p = judge.prob([q["prompt"] for q in pairs], [q["a"] for q in pairs], [q["b"] for q in pairs])
        for q, v in zip(pairs, p.tolist(), strict=True):
            q["p"] = v
    return pairs


def pairs_step(args: argparse.Namespace, samples: dict) -> dict:
    oracle = AnnotatorJudge(args.mode)
    train, held = prompt_pairs(samples["train"], oracle), prompt_pairs(samples["eval"], oracle)
    rng = np.random.default_rng([args.seed, 11])
    prefs = []
    for q in train:
        a_wins = bool(rng.random() < q["p"])
        prefs.append({"prompt": q["prompt"], "chosen": q["a"] if a_wins else q["b"],
                      "rejected": q["b"] if a_wins else q["a"]})
    (args.out / "train_prefs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in prefs), encoding="utf-8")
    rng = np.random.default_rng([args.seed, 12])
    for q in held:
        q["label_a"] = bool(rng.random() < q["p"])
    k = len(samples["train"][0]["responses"])
    n_all = lambda rows: len(rows) * k * (k - 1) // 2  # noqa: E731
    return {"held": held, "n_train": len(train), "n_train_dropped": n_all(samples["train"]) - len(train),
            "n_held_dropped": n_all(samples["eval"]) - len(held),
            "train_p_hist": {str(v): sum(q["p"] == v for q in train) for v in sorted({q["p"] for q in train})},
            "held_p_hist": {str(v): sum(q["p"] == v for q in held) for v in sorted({q["p"] for q in held})}}


# ------------------------------------------------------------------------------------------------ metrics


def held_matrices(held: list[dict], p: list[float], k: int) -> dict[int, torch.Tensor]:
    """Per held-out prompt, the [K, K] matrix of the given pair probabilities (identical responses: 1/2)."""
    mats: dict[int, torch.Tensor] = {}
    for q, v in zip(held, p, strict=True):
        m = mats.setdefault(q["row"], torch.full((k, k), 0.5, dtype=torch.float64))
        m[q["i"], q["j"]], m[q["j"], q["i"]] = v, 1.0 - v
    return mats


def agreement_metrics(held: list[dict], p_judge: list[float], k: int) -> dict[str, float]:
    pt = torch.tensor([q["p"] for q in held], dtype=torch.float64)
    pj = torch.tensor(p_judge, dtype=torch.float64)
    agree, n = sign_agreement(pj, pt)
    label_a = torch.tensor([q["label_a"] for q in held])
    p_chosen = torch.where(label_a, pj, 1 - pj)
    true_m, judge_m = held_matrices(held, pt.tolist(), k), held_matrices(held, pj.tolist(), k)
    kept = [cycle_edges_kept(judge_m[r], c) for r, m in true_m.items() for c in cyclic_triples(m)]
    return {"agree": agree, "n_decided": n, "mae": mean_abs_error(pj, pt), "corr": pearson(pj, pt),
            "acc_noisy": pair_accuracy(p_chosen), "n_cycles": len(kept),
            "cycle_edges": float(np.mean(kept)) / 3 if kept else float("nan"),
            "cycles_full": float(np.mean([e == 3 for e in kept])) if kept else float("nan")}


def lm_pair_probs(judge: Any, held: list[dict]) -> tuple[list[float], dict[str, float]]:
    """``P`` as the lm-pair judge serves it, from its raw ``f`` in both orders, and the position bias."""
    x, a, b = [q["prompt"] for q in held], [q["a"] for q in held], [q["b"] for q in held]
    f_ab, f_ba = judge.first_prob(x, a, b), judge.first_prob(x, b, a)
    p = (f_ab + 1.0 - f_ba) / 2.0
    check = judge.prob(x[:2], a[:2], b[:2])  # the served P is this formula
    assert torch.allclose(check, p[:2], atol=1e-5), (check, p[:2])
    bias, same = position_bias(f_ab, f_ba)
    return p.tolist(), {"position_bias": bias, "same_position": same,
                        "agree_raw_first": sign_agreement(f_ab, torch.tensor([q["p"] for q in held]))[0]}


def zeroshot_step(held: list[dict], k: int) -> dict:
    from inpo.judges import load_judge
    from inpo.models_real import smollm2_path

    out = {}
    for preset in ("generic", "rlhflow"):
        judge = load_judge(smollm2_path(), kind="lm-pair", preset=preset, batch_size=8)
        p, extra = lm_pair_probs(judge, held)
        out[preset] = {**agreement_metrics(held, p, k), **extra, "p": p}
        del judge
    return out


def judge_step(args: argparse.Namespace, kind: str, held: list[dict], k: int) -> dict:
    from inpo.judges import JudgeTrainConfig, load_judge, train_judge
    from inpo.judges.lm_pair import LMPairJudge
    from inpo.models_real import smollm2_path

    cfg = JudgeTrainConfig(epochs=args.epochs, batch_size=8, seed=args.seed, lora_r=16, lora_alpha=32, threads=1,
                           held_out=0.0, gradient_checkpointing=args.grad_ckpt)
    history: list[dict] = []
    t0 = time.perf_counter()
    res = train_judge(args.out / "train_prefs.jsonl", kind, smollm2_path(), args.out / f"judge-{kind}", cfg,
                      log=lambda r: (history.append(r), print(f"  {kind} {r}", file=sys.stderr, flush=True)))
    train_s = time.perf_counter() - t0
    rss = peak_rss_mb()
    judge = load_judge(res.out_dir)  # what the loop loads
    extra: dict[str, float] = {}
    if isinstance(judge, LMPairJudge):
        p, extra = lm_pair_probs(judge, held)
    else:
        p = judge.prob([q["prompt"] for q in held], [q["a"] for q in held], [q["b"] for q in held]).tolist()
    return {**agreement_metrics(held, p, k), **extra, "p": p, "train_s": train_s, "history": history,
            "train_accuracy": res.metrics["train_accuracy"], "lr": res.metrics["lr"], "dir": str(res.out_dir),
            "peak_rss_mb": rss}


# ------------------------------------------------------------------------------------------------ inpo


def inpo_cmd(out_dir: Path, judge_path: str) -> list[str]:
    return ["train", str(CONFIG), *INPO_ARGS, "--set", f"judge.path={judge_path}", "-o", str(out_dir),
            "--overwrite", "-q"]


def run_inpo(args: argparse.Namespace, name: str, judge_path: str, prompts: list[str]) -> dict:
    """The INPO run (reused if its iteration 1 is in metrics.jsonl) and, for a learned judge, its exact-oracle
    re-evaluation."""
    run_dir = args.out / f"inpo-{name}"
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}

    def metrics() -> list[dict]:
        p = run_dir / "metrics.jsonl"
        return [json.loads(line) for line in p.read_text().splitlines()] if p.exists() else []

    res: dict[str, Any] = {"name": name, "judge": judge_path}
    if not any(r["iteration"] == 1 for r in metrics()) or args.redo:
        cmd = inpo_cmd(run_dir, judge_path)
        print("$ inpo " + " ".join(cmd), file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "inpo", *cmd], check=True, cwd=ROOT, env=env)
        res["train_wall_s"] = time.perf_counter() - t0
    rows = metrics()
    res["rows"] = rows
    if judge_path != "builtin":
        cmd = ["eval", str(run_dir), "--judge", "builtin", "--json"]
        print("$ inpo " + " ".join(cmd), file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "inpo", *cmd], check=True, cwd=ROOT, env=env,
                              capture_output=True, text=True)
        res["exact_eval"] = json.loads(done.stdout.strip().splitlines()[-1])
        res["exact_eval_wall_s"] = time.perf_counter() - t0
    res["loop_agreement"] = loop_judgement_agreement(run_dir, args.mode, prompts)
    return res


def loop_samples(run_dir: Path, prompts: list[str]) -> list[tuple[str, list[str]]]:
    """The run's iteration-1 samples (pi_1 = pi_ref, the same for every run with this seed) as (prompt, K texts)."""
    from inpo.models import load_tokenizer
    from inpo.models_real import smollm2_path
    from inpo.rundir import RunDir
    from inpo.sampling import response_texts

    samples = torch.load(RunDir(run_dir).stage(1, "s0_samples"), weights_only=True)
    responses = samples["responses"] if isinstance(samples, dict) else samples
    texts = response_texts(load_tokenizer(smollm2_path()), responses)
    k = len(texts) // len(prompts)
    assert k * len(prompts) == len(texts), (len(texts), len(prompts))
    return [(x, texts[n * k:(n + 1) * k]) for n, x in enumerate(prompts)]


def loop_labels_step(args: argparse.Namespace, judges: dict[str, dict], prompts: list[str]) -> dict:
    """Each trained judge on the exact run's iteration-1 samples (what INPO trains on at iteration 1 with any
    oracle: pi_1 = pi_ref, same seed): sign agreement and mean abs error against the exact oracle, over the
    K(K-1)/2 pairs of each prompt."""
    from inpo.judges import load_judge

    rows = loop_samples(args.out / "inpo-exact", prompts)
    oracle = AnnotatorJudge(args.mode)
    x, a, b = [], [], []
    for prompt, rs in rows:
        for i in range(len(rs)):
            for j in range(i + 1, len(rs)):
                x.append(prompt), a.append(rs[i]), b.append(rs[j])
    pt = oracle.prob(x, a, b)
    out: dict[str, Any] = {"n_pairs": len(x), "p_hist": {str(v): int((pt == v).sum()) for v in pt.unique().tolist()}}
    for kind, m in judges.items():
        pj = load_judge(m["dir"]).prob(x, a, b).double()
        agree, n = sign_agreement(pj, pt)
        out[kind] = {"agree": agree, "n_decided": n, "mae": mean_abs_error(pj, pt), "corr": pearson(pj, pt)}
    return out


def loop_judgement_agreement(run_dir: Path, mode: str, prompts: list[str]) -> dict[str, float]:
    """The judgements the loop trained on (iteration 1) vs the exact oracle on the same samples: sign agreement
    over the entries i < j with P_oracle != 1/2, and mean |P - P_oracle|."""
    from inpo.rundir import RunDir

    mats = torch.load(RunDir(run_dir).stage(1, "s0_judgements"), weights_only=True).double()
    oracle = AnnotatorJudge(mode)
    k = mats.shape[-1]
    iu = torch.triu_indices(k, k, 1)
    pj, pt = [], []
    for n, (_, rs) in enumerate(loop_samples(run_dir, prompts)):
        pt.append(oracle.matrix("", rs)[iu[0], iu[1]])
        pj.append(mats[n][iu[0], iu[1]])
    pj_t, pt_t = torch.cat(pj), torch.cat(pt)
    agree, n = sign_agreement(pj_t, pt_t)
    return {"agree": agree, "n_decided": n, "mae": mean_abs_error(pj_t, pt_t)}


# ------------------------------------------------------------------------------------------------ report


def fmt(v: float, digits: int = 3) -> str:
    return "-" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.{digits}f}"


def report(args: argparse.Namespace, samples: dict, pairs: dict, judges: dict[str, dict], zeroshot: dict | None,
           inpo: dict[str, dict], loop: dict | None) -> None:
    held = pairs["held"]
    k = len(samples["eval"][0]["responses"])
    pt = torch.tensor([q["p"] for q in held], dtype=torch.float64)
    label_a = torch.tensor([q["label_a"] for q in held])
    bayes = pair_accuracy(torch.where(label_a, pt, 1 - pt))
    bayes_exp = float(torch.maximum(pt, 1 - pt).mean())
    trunc = [c for split in ("train", "eval") for r in samples[split] for c in r["truncated"]]
    print(f"\n## Data (seed {args.seed}, mode {args.mode})\n")
    print(f"pi_ref samples: {len(samples['train'])} train prompts + {len(samples['eval'])} held-out prompts x K={k}, "
          f"{fmt(float(np.mean(trunc)), 2)} truncated at max_new_tokens; sampling {fmt(samples['train_s'], 0)} + "
          f"{fmt(samples['eval_s'], 0)} s.")
    print(f"pairs: {pairs['n_train']} train ({pairs['n_train_dropped']} identical dropped), {len(held)} held-out "
          f"({pairs['n_held_dropped']} identical dropped); P_oracle counts train {pairs['train_p_hist']}, held-out "
          f"{pairs['held_p_hist']}.")
    print(f"held-out Bernoulli labels: Bayes accuracy {bayes:.3f} realised (the oracle scored on them), "
          f"{bayes_exp:.3f} expected (E[max(P, 1-P)]).")

    rule = [1.0 if words(q["a"]) > words(q["b"]) else 0.0 if words(q["a"]) < words(q["b"]) else 0.5 for q in held]
    rows = {"exact oracle (ceiling)": agreement_metrics(held, pt.tolist(), k),
            "rule: more words wins (reference)": agreement_metrics(held, rule, k)}
    if zeroshot is not None:
        rows.update({f"zero-shot lm-pair, {p}": m for p, m in zeroshot.items() if isinstance(m, dict) and "agree" in m})
    rows.update({f"trained {kind}": m for kind, m in judges.items()})
    m0 = next(iter(rows.values()))
    print(f"\n## Judges vs the exact oracle ({len(held)} held-out pairs on {len(samples['eval'])} EVAL_FILE prompts; "
          f"{m0['n_decided']} with P_oracle != 1/2; {m0['n_cycles']} cyclic triples)\n")
    print("| judge | sign agreement (P_oracle != 1/2) | mean abs(P - P_oracle) | corr | acc. on Bernoulli labels | "
          "cyclic triples: edges kept / full cycles | position bias / same position both orders | train s | "
          "peak RSS MB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, m in rows.items():
        pos = f"{m['position_bias']:+.3f} / {m['same_position']:.3f}" if "position_bias" in m else "-"
        train_s = fmt(m.get("train_s"), 0) if "train_s" in m else "-"
        rss = fmt(m.get("peak_rss_mb"), 0) if "train_s" in m else "-"
        print(f"| {name} | {fmt(m['agree'])} | {fmt(m['mae'])} | {fmt(m['corr'])} | {fmt(m['acc_noisy'])} | "
              f"{fmt(m['cycle_edges'])} / {fmt(m['cycles_full'])} | {pos} | {train_s} | {rss} |")
    if zeroshot is not None:
        print(f"\nzero-shot step: {fmt(zeroshot['wall_s'], 0)} s wall, {fmt(zeroshot['cpu_s'], 0)} s CPU")
    for kind, m in judges.items():
        losses = " ".join(f"{h['loss']:.4f}" for h in m["history"])
        print(f"trained {kind}: lr {m['lr']:g}, per-epoch loss {losses}, train acc {m['train_accuracy']:.3f}, "
              f"step {fmt(m['wall_s'], 0)} s wall / {fmt(m['cpu_s'], 0)} s CPU")

    if loop is not None:
        print(f"\n## Trained judges on INPO's iteration-1 samples ({loop['n_pairs']} pairs of the exact run's "
              f"16 prompts x K=4; P_oracle counts {loop['p_hist']})\n")
        print("| judge | sign agreement (P_oracle != 1/2) | mean abs(P - P_oracle) | corr |")
        print("|---|---|---|---|")
        for kind in judges:
            m = loop[kind]
            print(f"| trained {kind} | {fmt(m['agree'])} ({m['n_decided']} pairs) | {fmt(m['mae'])} | "
                  f"{fmt(m['corr'])} |")
        print(f"\nstep: {fmt(loop['wall_s'], 0)} s wall, {fmt(loop['cpu_s'], 0)} s CPU")
    if not inpo:
        return
    print("\n## INPO, one iteration (16 train prompts x K=4, 64 held-out eval prompts, seed 0), win rate vs pi_ref "
          "under the exact oracle\n")
    print("| oracle in the loop | loop judgements: sign agreement / mean abs err vs oracle | win rate vs pi_ref "
          "(exact oracle) [95% CI] | ground-truth cost (win rate - exact run's) | win rate under the run's own judge | "
          "KL(pi‖ref) | mean length | train / re-eval wall s | peak RSS MB |")
    print("|---|---|---|---|---|---|---|---|---|")
    base = inpo.get("exact")
    base_wr = base["rows"][-1]["pref/win_rate"] if base else None
    for name, r in inpo.items():
        last = r["rows"][-1]
        ev = r.get("exact_eval", last)
        wr = ev["pref/win_rate"]
        cost = "-" if name == "exact" or base_wr is None else f"{wr - base_wr:+.3f}"
        own = "-" if name == "exact" else fmt(last["pref/win_rate"])
        la = r["loop_agreement"]
        walls = f"{fmt(r.get('train_wall_s'), 0)} / {fmt(r.get('exact_eval_wall_s'), 0)}"
        print(f"| {name} | {fmt(la['agree'])} / {fmt(la['mae'])} | {wr:.3f} [{ev['pref/win_rate_ci_low']:.3f}, "
              f"{ev['pref/win_rate_ci_high']:.3f}] | {cost} | {own} | {ev['eval/kl_to_ref']:.3f} | "
              f"{ev['eval/mean_length']:.1f} | {walls} | {fmt(last.get('perf/peak_rss_mb'), 0)} |")
    print("\nper phase (s), iteration 1: " + "; ".join(
        f"{n}: " + " / ".join(f"{r['rows'][-1].get(f'time/{p}', float('nan')):.0f}"
                              for p in ("sample", "judge", "logprobs", "train")) for n, r in inpo.items())
          + " (sample / judge / log-probs / train)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("runs/annotators-judges"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--mode", default="sampled", choices=("sampled", "majority"))
    ap.add_argument("--train-prompts", type=int, default=48, help="TRAIN_FILE prompts whose pairs train the judges")
    ap.add_argument("--eval-prompts", type=int, default=32, help="EVAL_FILE prompts whose pairs are held out")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--grad-ckpt", action="store_true", help="gradient checkpointing in judge training")
    ap.add_argument("--kinds", default=",".join(KINDS))
    ap.add_argument("--steps", default="sample,pairs,zeroshot,judges,inpo,loop-labels,report",
                    help="sample, pairs, zeroshot, judges (or bt, gpm, lm-pair), inpo (or inpo-exact, inpo-<kind>), "
                    "loop-labels, report")
    ap.add_argument("--redo", action="store_true", help="recompute the named steps even if cached")
    args = ap.parse_args()
    torch.set_num_threads(1)
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    steps = set(args.steps.split(","))
    kinds = [k for k in args.kinds.split(",") if k]
    key = {"seed": args.seed, "train_prompts": args.train_prompts, "eval_prompts": args.eval_prompts}

    samples = timed_step(args.out, "samples", key, args.redo and "sample" in steps, lambda: sample_step(args))
    pkey = {**key, "mode": args.mode}
    pairs = timed_step(args.out, "pairs", pkey, args.redo and "pairs" in steps, lambda: pairs_step(args, samples))
    held, k = pairs["held"], len(samples["eval"][0]["responses"])
    zeroshot = None
    if "zeroshot" in steps or (args.out / "zeroshot.json").exists():
        zeroshot = timed_step(args.out, "zeroshot", pkey, args.redo and "zeroshot" in steps,
                              lambda: zeroshot_step(held, k))
    judges = {}
    for kind in kinds:
        jkey = {**pkey, "epochs": args.epochs, "grad_ckpt": args.grad_ckpt}
        if "judges" in steps or kind in steps or (args.out / f"judge-{kind}.json").exists():
            redo = args.redo and ("judges" in steps or kind in steps)
            judges[kind] = timed_step(args.out, f"judge-{kind}", jkey, redo,
                                      lambda kind=kind: judge_step(args, kind, held, k))
    inpo: dict[str, dict] = {}
    prompts = [r["prompt"] for r in samples["train"][:16]]  # INPO_ARGS: data.num_prompts=16 of the same file
    for name in ["exact", *judges]:
        wanted = "inpo" in steps or f"inpo-{name}" in steps
        path = args.out / f"inpo-{name}.json"
        if wanted or path.exists():
            judge_path = "builtin" if name == "exact" else judges[name]["dir"]
            ikey = {"judge": judge_path, "args": INPO_ARGS,
                    "judge_trained": judges[name]["wall_s"] if name in judges else None}
            inpo[name] = timed_step(args.out, f"inpo-{name}", ikey, args.redo and wanted,
                                    lambda name=name, judge_path=judge_path: run_inpo(args, name, judge_path, prompts))
    loop = None
    if judges and ("loop-labels" in steps or (args.out / "loop-labels.json").exists()):
        lkey = {**pkey, "judges": {kind: m["wall_s"] for kind, m in judges.items()}}
        loop = timed_step(args.out, "loop-labels", lkey, args.redo and "loop-labels" in steps,
                          lambda: loop_labels_step(args, judges, prompts))
    if "report" in steps:
        report(args, samples, pairs, judges, zeroshot, inpo, loop)


if __name__ == "__main__":
    main()
