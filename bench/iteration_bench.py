"""Wall time of the default ``inpo train`` run and of its iterations, with the phase breakdown.

Runs ``inpo train -T <T> -o <dir> --overwrite -q`` (built-in task, INPO, default config; the SFT reference is
cached under runs/.cache, so it is not re-trained) in a subprocess and reads ``time/*`` of each iteration
from its ``metrics.jsonl``. An iteration's wall time is measured checkpoint to checkpoint (mtimes of
``iter_<t-1>/`` and ``iter_<t>/``), so it includes the previous iterate's evaluation; the first one starts
after the iteration-0 evaluation, at the mtime of ``stages/iter_0/eval_ref_samples.pt``.

    python bench/iteration_bench.py            # the default run (RunConfig.iterations iterations)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ROOT, THREAD_ENV, median  # noqa: E402

PHASES = ("time/sample", "time/judge", "time/logprobs", "time/train")


def run(iterations: int | None) -> dict:
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "run"
        cmd = [sys.executable, "-m", "inpo", "train", "-o", str(out), "--overwrite", "-q"]
        if iterations is not None:
            cmd += ["-T", str(iterations)]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, cwd=ROOT, env={**os.environ, **THREAD_ENV}, capture_output=True)
        total = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        total_cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
        rows = [r for r in rows if r["iteration"] > 0]
        start = (out / "stages" / "iter_0" / "eval_ref_samples.pt").stat().st_mtime
        marks = [start] + [(out / f"iter_{r['iteration']}").stat().st_mtime for r in rows]
    iters = []
    for r, a, b in zip(rows, marks[:-1], marks[1:], strict=True):
        phases = {k.removeprefix("time/"): r[k] for k in PHASES}
        iters.append({"iteration": r["iteration"], "wall_s": b - a, **phases,
                      "other_s": (b - a) - sum(phases.values()), "pairs": r.get("train/pairs")})
    return {"command": " ".join(["inpo", *cmd[3:]]), "total_s": total, "total_cpu_s": total_cpu, "iterations": iters,
            "median_iteration_s": median([i["wall_s"] for i in iters]),
            "pairs_per_s_train": median([i["pairs"] / i["train"] for i in iters if i["pairs"]])}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-T", "--iterations", type=int, default=None, help="default: the config's default (5)")
    a = p.parse_args()
    res = run(a.iterations)
    for it in res["iterations"]:
        print(" ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in it.items()),
              file=sys.stderr)
    print(f"total {res['total_s']:.1f} s wall, {res['total_cpu_s']:.1f} s CPU", file=sys.stderr)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
