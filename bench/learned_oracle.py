"""INPO with a learned preference oracle on the built-in task: what does a GPM (or BT) judge cost?

    python bench/learned_oracle.py [--out runs/learned-oracle] [-T 6] [--prompts 400] [--epochs 20]

1. Preference data (``prefs.jsonl``, rows ``prompt, chosen, rejected``): prompts are a fresh seeded set from the
   task's prompt generator, disjoint from the train/eval/SFT prompts, so the judge never sees an eval prompt.
   Per prompt, ``--synth-pairs`` pairs are synthesized in the SFT data format (style word + 1-5 fillers) with
   the two actions drawn uniformly over the ordered pairs of distinct actions (styles, and "none" = a
   filler-first response, with weight ``--none-weight``), so every style pair of every topic is covered;
   ``--ref-pairs`` more pairs are two samples of pi_ref (the SFT model, temperature 1, as the loop samples).
   Labels are noisy like human annotators: ``a`` is chosen with probability ``P_true(a > b | x)``
   (Bernoulli), the ground-truth task judge. The Bayes accuracy on such labels is ``E[max(P, 1 - P)]``.
2. Judges: ``train_judge(prefs.jsonl, kind, "builtin-tiny", ...)`` for GPM and BT (random tiny Llama, word
   tokenizer over the data; the script checks that every task word is in its vocabulary; ``--base ref`` starts
   from the task's SFT model directory instead). Printed per
   judge: held-out accuracy (20% of the prompts), the realised Bayes accuracy on the same held-out rows
   (the ground-truth judge scored on the noisy labels), agreement with the noiseless preference, ECE, and on
   the eval prompts the largest error of the learned action game and the true duality gap of its Nash
   equilibrium (where a policy that solved the learned game exactly would land).
3. ``inpo train -T 6 --seed 0 --set judge.path=<judge dir>`` for each judge, and with ``judge.path=builtin``
   (the ground truth); the game metrics of every run are computed under the ground-truth game. The cost of
   the learned oracle is ``gap(learned judge) - gap(ground truth)`` at the last iteration.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from inpo.config import SamplingConfig
from inpo.games import duality_gap
from inpo.games.nash import solve_nash
from inpo.judges import JudgeTrainConfig, evaluate_pairs, load_judge, train_judge
from inpo.judges.base import Judge
from inpo.judges.data import load_preferences, split_held_out
from inpo.sampling import sample_responses
from inpo.tasks import BuiltinTask, BuiltinTaskConfig, build_reference, load_reference

ROOT = Path(__file__).resolve().parent.parent


def judge_prompts(task: BuiltinTask, n: int, seed: int) -> list[str]:
    """``n`` prompts from the task's generator, disjoint from its train, eval and SFT prompts (seeded)."""
    return task.fresh_prompts(n, np.random.default_rng([task.cfg.seed, 7, seed]))


def action_response(task: BuiltinTask, action: int, rng: np.random.Generator) -> str:
    """A response in the SFT data format: style word (none: a filler) followed by 1-5 random fillers."""
    lo, hi = task.cfg.response_words
    words = [task.fillers[j] for j in rng.integers(0, task.cfg.num_fillers, size=int(rng.integers(lo, hi + 1)))]
    if action < len(task.styles):
        return " ".join([task.styles[action], *words])
    return " ".join(words or [task.fillers[0]])


def action_pair_weights(num_actions: int, none_weight: float) -> np.ndarray:
    """Probabilities of the ordered pairs ``(i, j), i != j``: uniform over style pairs; a pair with "none" (the
    last action) gets ``none_weight`` times the weight of a style pair. Shape [A, A], zero diagonal, sums to 1."""
    w = np.ones((num_actions, num_actions))
    w[-1, :] *= none_weight
    w[:, -1] *= none_weight
    np.fill_diagonal(w, 0.0)
    return w / w.sum()


def label(p_a: float, rng: np.random.Generator) -> bool:
    """One noisy annotation: True (a is chosen) with probability ``P(a > b)``."""
    return bool(rng.random() < p_a)


def preference_rows(task: BuiltinTask, prompts: list[str], *, synth_pairs: int, ref_pairs: int, none_weight: float,
                    seed: int, ref_dir: Path | None = None) -> list[dict[str, str]]:
    """Rows ``prompt, chosen, rejected, case`` labelled by Bernoulli(P_true); see the module docstring."""
    rng = np.random.default_rng([seed, 11])
    truth = task.judge()
    weights = action_pair_weights(task.num_actions, none_weight).ravel()
    pairs: list[tuple[str, str, str, str]] = []
    for x in prompts:
        for i in rng.choice(weights.size, size=synth_pairs, p=weights):
            a, b = divmod(int(i), task.num_actions)
            pairs.append((x, action_response(task, a, rng), action_response(task, b, rng), "synth"))
    if ref_pairs:
        assert ref_dir is not None
        model, tok = load_reference(ref_dir)
        cfg = SamplingConfig(num_samples=2 * ref_pairs, max_new_tokens=task.max_new_tokens)
        ids = [tok(x).input_ids for x in prompts]
        out = sample_responses(model, ids, cfg, eos_id=tok.eos_token_id, pad_id=tok.pad_token_id, seed=seed)
        for x, rs in zip(prompts, out, strict=True):
            texts = tok.batch_decode(rs, skip_special_tokens=True)
            for k in range(ref_pairs):
                a, b = texts[2 * k], texts[2 * k + 1]
                if a.strip() and b.strip():  # an empty response cannot be a row
                    pairs.append((x, a, b, "pi_ref"))
    p = truth.prob([q[0] for q in pairs], [q[1] for q in pairs], [q[2] for q in pairs]).tolist()
    rows = []
    for (x, a, b, case), pa in zip(pairs, p, strict=True):
        chosen, rejected = (a, b) if label(pa, rng) else (b, a)
        rows.append({"prompt": x, "chosen": chosen, "rejected": rejected, "case": case})
    return rows


def canonical_responses(task: BuiltinTask) -> list[str]:
    """One response per action in the SFT format: each style word + two fillers, then the fillers alone ("none")."""
    tail = " ".join(task.fillers[1:3])
    return [*(f"{s} {tail}" for s in task.styles), f"{task.fillers[0]} {tail}"]


def learned_games(judge: Judge, task: BuiltinTask, prompts: list[str]) -> torch.Tensor:
    """``[N, A, A]``: the judge's matrix over the canonical action responses of each prompt."""
    resp = canonical_responses(task)
    return torch.stack([judge.matrix(x, resp).double() for x in prompts])


def oracle_quality(judge: Judge, task: BuiltinTask, held: list, prompts: list[str]) -> dict[str, float]:
    """How close the learned oracle is to the ground truth (beyond the accuracy on noisy labels).

    ``agree_true``: fraction of held-out pairs with ``P_true != 1/2`` on which ``P_judge > 1/2`` iff
    ``P_true > 1/2``. On ``prompts`` (the eval prompts), with the learned game = ``judge.matrix`` over one
    response per action: ``game_mae`` / ``game_max``: mean / max of ``|P_judge - P_true|`` over the
    off-diagonal entries; ``cycles``: fraction of prompts whose learned style block has every edge oriented as
    the true rock-paper-scissors cycle (0 for any BT judge: a scalar reward admits no cycle); ``nash_gap``: mean
    ground-truth duality gap of the Nash equilibrium of the learned game (where a policy that solved the learned
    game exactly would land; 0 = the true equilibrium).
    """
    xs, a, b = [q.prompt for q in held], [q.chosen for q in held], [q.rejected for q in held]
    p_true = task.judge().prob(xs, a, b)
    p_judge = judge.prob(xs, a, b).double()
    decided = p_true != 0.5
    agree = ((p_judge > 0.5) == (p_true > 0.5))[decided].double().mean().item()
    learned = learned_games(judge, task, prompts)
    true = task.game_for_prompts(prompts)
    off = ~torch.eye(task.num_actions, dtype=torch.bool)
    err = (learned - true).abs()[:, off]
    m = len(task.styles)
    same = ((learned[:, :m, :m] > 0.5) == (true[:, :m, :m] > 0.5)) | torch.eye(m, dtype=torch.bool)
    nash, _ = solve_nash(learned)
    return {"agree_true": agree, "game_mae": err.mean().item(), "game_max": err.max().item(),
            "cycles": same.flatten(1).all(1).double().mean().item(),
            "nash_gap": float(np.mean(duality_gap(true.numpy(), np.asarray(nash))))}


def vocab_coverage(judge_dir: Path, task: BuiltinTask) -> list[str]:
    """Task words (styles, topics, ':', fillers) the judge's tokenizer maps to its unknown token."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(judge_dir)
    words = [*task.styles, *task.topics, ":", *task.fillers]
    return [w for w in words if tok.convert_tokens_to_ids(w) == tok.unk_token_id]


def inpo_run(out: Path, judge_path: str, iterations: int, seed: int, cache: str) -> tuple[list[dict], float]:
    """``inpo train -T iterations --seed seed --set judge.path=...`` in a subprocess; (metrics rows, wall s)."""
    cmd = [sys.executable, "-m", "inpo", "train", "-T", str(iterations), "--seed", str(seed), "-o", str(out),
           "--overwrite", "-q", "--set", f"judge.path={judge_path}", "--set", f"task.sft_cache={cache}"]
    print("$ " + " ".join(["inpo", *cmd[3:]]), file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return rows, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("runs/learned-oracle"))
    ap.add_argument("-T", "--iterations", type=int, default=6)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--prompts", type=int, default=400, help="judge-training prompts (fresh, seeded)")
    ap.add_argument("--synth-pairs", type=int, default=3, help="synthesized pairs per prompt (uniform over styles)")
    ap.add_argument("--ref-pairs", type=int, default=1, help="pairs of pi_ref samples per prompt")
    ap.add_argument("--none-weight", type=float, default=0.25, help="weight of pairs with a 'none' response")
    ap.add_argument("--kinds", default="gpm,bt")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--lr", type=float, default=3e-4,
                    help="judge AdamW lr (1e-3, the judge default, stays at the collapsed s = 0 solution here)")
    ap.add_argument("--dim", type=int, default=4)
    ap.add_argument("--base", default="builtin-tiny", help="judge backbone: builtin-tiny, 'ref' (the task's SFT "
                    "model directory) or a model directory")
    ap.add_argument("--sft-cache", default="runs/.cache")
    ap.add_argument("--skip-inpo", action="store_true", help="judges only")
    args = ap.parse_args()
    torch.set_num_threads(1)
    t_start = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)

    task = BuiltinTask(BuiltinTaskConfig(seed=args.seed))
    ref_dir = build_reference(task, args.sft_cache, progress=False)
    prompts = judge_prompts(task, args.prompts, args.seed)
    rows = preference_rows(task, prompts, synth_pairs=args.synth_pairs, ref_pairs=args.ref_pairs,
                           none_weight=args.none_weight, seed=args.seed, ref_dir=ref_dir)
    data = args.out / "prefs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    cfg = JudgeTrainConfig(epochs=args.epochs, lr=args.lr, dim=args.dim, seed=args.seed)
    _, held = split_held_out(load_preferences(data).pairs, fraction=cfg.held_out, seed=cfg.seed)
    truth = task.judge()
    bayes = evaluate_pairs(truth, held)["accuracy"]
    p_held = truth.prob([q.prompt for q in held], [q.chosen for q in held], [q.rejected for q in held])
    bayes_expected = torch.maximum(p_held, 1 - p_held).mean().item()
    print(f"{len(rows)} pairs on {len(prompts)} prompts -> {data}; held-out {len(held)} pairs: Bayes accuracy "
          f"{bayes:.3f} realised (ground-truth judge on the noisy labels), {bayes_expected:.3f} expected",
          file=sys.stderr, flush=True)

    judges: dict[str, dict] = {}
    base = str(ref_dir) if args.base == "ref" else args.base
    for kind in args.kinds.split(","):
        t0 = time.perf_counter()
        res = train_judge(data, kind, base, args.out / f"judge-{kind}", cfg)
        assert res.out_dir is not None
        missing = vocab_coverage(res.out_dir, task)
        if missing:
            raise SystemExit(f"judge-{kind}: tokenizer lacks task words {missing}; add them to the data")
        judge = load_judge(res.out_dir)  # what the loop will use
        judges[kind] = {**res.metrics, **oracle_quality(judge, task, held, task.eval_prompts),
                        "train_s": time.perf_counter() - t0, "dir": str(res.out_dir)}
        print(f"judge {kind}: {json.dumps({k: v for k, v in judges[kind].items() if k != 'dir'})}",
              file=sys.stderr, flush=True)

    print(f"\n## Judges (held-out: {len(held)} pairs, {len({q.prompt for q in held})} prompts; Bayes accuracy of "
          f"the noisy labels {bayes:.3f} realised, {bayes_expected:.3f} expected)\n")
    print("| judge | held-out acc | train acc | ECE | agreement with sign(P_true - 1/2) | learned game: mean / max "
          "abs error | cycles reproduced | true gap of the learned game's Nash | train s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for kind, m in judges.items():
        print(f"| {kind} | {m['accuracy']:.3f} | {m['train_accuracy']:.3f} | {m['ece']:.3f} | {m['agree_true']:.3f} | "
              f"{m['game_mae']:.3f} / {m['game_max']:.3f} | {m['cycles']:.3f} | {m['nash_gap']:.4f} | "
              f"{m['train_s']:.0f} |")
    if args.skip_inpo:
        return

    runs = {"ground truth (builtin)": "builtin", **{f"learned {k}": m["dir"] for k, m in judges.items()}}
    results = {}
    for name, path in runs.items():
        tag = "builtin" if path == "builtin" else Path(path).name.removeprefix("judge-")
        results[name] = inpo_run(args.out / f"inpo-{tag}", path, args.iterations, args.seed, args.sft_cache)
    gap_true = results["ground truth (builtin)"][0][-1]["game/duality_gap"]
    print(f"\n## INPO, T = {args.iterations}, seed {args.seed}; game metrics under the ground-truth game "
          f"({len(task.eval_prompts)} eval prompts)\n")
    print("| oracle | duality gap (iter 0 -> T) | min gap | cost = gap - gap(true) | win rate vs pi_ref (exact) | "
          "win rate vs pi_ref (run's judge) | KL(pi||pi_ref) | wall s |")
    print("|---|---|---|---|---|---|---|---|")
    for name, (m, wall) in results.items():
        first, last = m[0], m[-1]
        gap = last["game/duality_gap"]
        cost = "-" if name.startswith("ground") else f"{gap - gap_true:+.4f}"
        print(f"| {name} | {first['game/duality_gap']:.4f} -> {gap:.4f} | "
              f"{min(r['game/duality_gap'] for r in m):.4f} | {cost} | {last['game/win_rate_vs_ref']:.3f} | "
              f"{last['pref/win_rate']:.3f} | {last['eval/kl_to_ref']:.3f} | {wall:.0f} |")
    print("\nduality gap per iteration (ground truth):")
    for name, (m, _) in results.items():
        print(f"- {name}: " + " ".join(f"{r['game/duality_gap']:.4f}" for r in m))
    print(f"\ntotal {time.perf_counter() - t_start:.0f} s", file=sys.stderr)
    assert math.isfinite(gap_true)


if __name__ == "__main__":
    main()
