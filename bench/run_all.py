"""Run every benchmark and print one table: each figure as ours/peer or ours/limit, with its target.

    python bench/run_all.py              # ~10 min on an idle 2-core CPU; exits 1 if a target is missed
    python bench/run_all.py --json out.json

Parts (each also runnable alone): bench/train_vs_trl.py (throughput, peak memory, IPO loss agreement, FLOP
fraction vs the fp32 torch.mm limit), bench/sampling_bench.py, bench/iteration_bench.py, and
bench/games_bench.py if present (printed as is, no target). Every process runs with one intra-op thread
(bench/common.py: THREADS). Targets are judged on CPU time (this process's CPU seconds; on a shared machine
the wall time also counts the waits for a core another process holds); wall-time ratios are printed too.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import BENCH_DIR, ROOT, THREAD_ENV, THREADS, run_json  # noqa: E402


def fmt(x: float) -> str:
    return f"{x:.3g}" if abs(x) < 1000 else f"{x:,.0f}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", type=Path, help="also write all raw results here")
    p.add_argument("--repeats-small", type=int, default=3)
    p.add_argument("--repeats-large", type=int, default=2)
    p.add_argument("--iterations", type=int, default=None, help="inpo train -T (default: the default run)")
    p.add_argument("--quick", action="store_true", help="smoke test of this script: 32 pairs, 1 repeat, -T 1")
    p.add_argument("--from-json", type=Path, help="print the table of a previous run's --json file; run nothing")
    a = p.parse_args()
    extra = ["--pairs", "32"] if a.quick else []
    if a.quick:
        a.repeats_small = a.repeats_large = a.iterations = 1
    t_start = time.perf_counter()
    raw: dict = {"threads": THREADS}
    # (figure, ours, peer-or-limit, ratio, target text, met: True/False/None for info)
    rows: list[tuple[str, str, str, str, str, bool | None]] = []

    def timed(name: str, args: list[str]) -> dict:
        t0 = time.perf_counter()
        out = run_json(args, timeout=3600)
        print(f"[{name}: {time.perf_counter() - t0:.0f} s]", file=sys.stderr, flush=True)
        return out

    if a.from_json:
        raw = json.loads(a.from_json.read_text())
    else:
        it_args = ["bench/iteration_bench.py"] + (["-T", str(a.iterations)] if a.iterations else [])
        raw["train_3M"] = timed("train 3M", ["bench/train_vs_trl.py", "--sizes", "3M", "--repeats",
                                              str(a.repeats_small), *extra])
        raw["train_25M"] = timed("train 25M", ["bench/train_vs_trl.py", "--sizes", "25M", "--repeats",
                                                str(a.repeats_large), *extra])
        raw["ipo_loss"] = timed("IPO loss check", ["bench/train_vs_trl.py", "--check-loss", "--size", "3M"])
        raw["sampling"] = timed("sampling", ["bench/sampling_bench.py"] + (["--repeats", "1"] if a.quick else []))
        raw["iteration"] = timed("inpo train", it_args)
    small, large, loss = raw["train_3M"], raw["train_25M"], raw["ipo_loss"]
    sampling, iteration = raw["sampling"], raw["iteration"]
    limit = max(small["matmul_flops_per_s"]["cpu"], large["matmul_flops_per_s"]["cpu"])
    limit_wall = max(small["matmul_flops_per_s"]["wall"], large["matmul_flops_per_s"]["wall"])

    for size, res in (("3M", small), ("25M", large)):
        r = res[size]
        label = f"{size} ({r['params'] / 1e6:.1f}M params)"
        o, t = r["ours"]["cpu"]["pairs_per_s"], r["trl"]["cpu"]["pairs_per_s"]
        rows.append((f"train pairs/s, {label}, CPU time", fmt(o), fmt(t), f"{o / t:.2f}", ">= 1.5", o / t >= 1.5))
        o, t = r["ours"]["wall"]["pairs_per_s"], r["trl"]["wall"]["pairs_per_s"]
        rows.append((f"train pairs/s, {label}, wall time", fmt(o), fmt(t), f"{o / t:.2f}", "(info)", None))
        o, t = r["ours"]["cpu"]["train_s"], r["trl"]["cpu"]["train_s"]
        rows.append((f"training phase only (same work), {label}, CPU s", fmt(o), fmt(t), f"{t / o:.2f} (speed)",
                     "(info)", None))
        o, t = r["ours"]["cpu"]["precompute_s"], r["trl"]["cpu"]["precompute_s"]
        rows.append((f"log-prob precompute, {label}, CPU s (ours: pi_ref + pi_t; TRL: pi_ref)", fmt(o), fmt(t),
                     f"{t / o:.2f} (speed)", "(info)", None))
        o, t = r["ours"]["peak_rss_mb"], r["trl"]["peak_rss_mb"]
        rows.append((f"peak RSS MB, {label}", fmt(o), fmt(t), f"{o / t:.2f}", "<= 1.0", o / t <= 1.0))
        o, t = r["ours"]["peak_increase_mb"], r["trl"]["peak_increase_mb"]
        rows.append((f"peak RSS MB over pre-run RSS, {label}", fmt(o), fmt(t), f"{o / t:.2f}", "(info)", None))
    for size, res, target in (("3M", small, None), ("25M", large, 0.60)):
        r = res[size]
        for impl in ("ours", "trl"):
            f = r[impl]["cpu"]["train_flops_per_s"]
            met = (f / limit >= target) if (target is not None and impl == "ours") else None
            tgt = f">= {target:.2f}" if met is not None else "(info)"
            rows.append((f"train step GFLOP/s / fp32 mm, {size}, {'TRL' if impl == 'trl' else 'ours'}",
                         fmt(f / 1e9), fmt(limit / 1e9), f"{f / limit:.2f}", tgt, met))
    d = loss["abs_diff"]
    rows.append(("IPO loss, ours vs TRL, one batch (|diff|)", f"{loss['ours_loss']:.7g}", f"{loss['trl_loss']:.7g}",
                 f"{d:.1e}", "<= 1e-5", d <= 1e-5 and loss["same_tokens"]))
    for clock, tgt in (("cpu", 5.0), ("wall", None)):
        s = sampling[clock]
        rows.append((f"sampling tokens/s vs naive generate loop, {clock} time", fmt(s["ours_tokens_per_s"]),
                     fmt(s["naive_tokens_per_s"]), f"{s['ratio']:.1f}", f">= {tgt:.0f}" if tgt else "(info)",
                     (s["ratio"] >= tgt) if tgt else None))
    first = iteration["iterations"][0]
    phases = ", ".join(f"{k} {first[k]:.1f}" for k in ("sample", "judge", "logprobs", "train", "other_s"))
    rows.append((f"inpo train: iteration 1 wall s ({phases})", fmt(first["wall_s"]), "-", "-", "(info)", None))
    rows.append(("inpo train: median iteration wall s", fmt(iteration["median_iteration_s"]), "-", "-", "(info)",
                 None))
    rows.append((f"inpo train: whole run wall s ({len(iteration['iterations'])} iterations; CPU "
                 f"{iteration['total_cpu_s']:.0f} s)", fmt(iteration["total_s"]), "-", "-", "(info)", None))
    rows.append(("fp32 torch.mm limit GFLOP/s (CPU time; wall)", fmt(limit / 1e9), fmt(limit_wall / 1e9), "-",
                 "(info)", None))

    games = BENCH_DIR / "games_bench.py"
    games_out = raw.get("games", "")
    if games.exists() and not a.from_json:
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, str(games)], capture_output=True, text=True, cwd=ROOT,
                              env={**os.environ, **THREAD_ENV}, timeout=1800)
        games_out = proc.stdout.strip() if proc.returncode == 0 else f"games_bench failed: {proc.stderr[-500:]}"
        print(f"[games: {time.perf_counter() - t0:.0f} s]", file=sys.stderr, flush=True)
        raw["games"] = games_out

    head = ("figure", "ours", "peer / limit", "ratio", "target", "met")
    table = [head] + [(f, o, t, r, g, {True: "yes", False: "NO", None: ""}[m]) for f, o, t, r, g, m in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |" for row in table]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    print("\n".join(lines))
    if games_out:
        print("\ngames (bench/games_bench.py):\n" + games_out)
    missed = [r[0] for r in rows if r[5] is False]
    took = "" if a.from_json else f"; total {time.perf_counter() - t_start:.0f} s"
    print(f"\n{len(missed)} target(s) missed; threads={raw['threads']}{took}")
    if a.json:
        a.json.write_text(json.dumps({**raw, "rows": rows}, indent=1))
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
