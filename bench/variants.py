"""Proposed loop fixes, measured: ``inpo`` training on the bench pairs with monkeypatched variants (see
``apply_variant`` in bench/train_vs_trl.py), each in a fresh process, CPU and wall seconds per phase.

    python bench/variants.py --size 25M --variants ,bucketed,head_on_response,bucketed+head_on_response

(the empty name is the loop as it is). Prints one JSON line per run.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import run_json  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="3M")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--variants", default=",head_on_response,bucketed,bucketed+head_on_response")
    a = p.parse_args()
    for _ in range(a.repeats):
        for v in a.variants.split(","):
            args = ["bench/train_vs_trl.py", "--worker", "ours", "--size", a.size] + (["--variant", v] if v else [])
            x = run_json(args)
            print(json.dumps({"size": a.size, "variant": v, "precompute_cpu_s": x["precompute"]["cpu"],
                              "train_cpu_s": x["train"]["cpu"], "precompute_wall_s": x["precompute"]["wall"],
                              "train_wall_s": x["train"]["wall"], "peak_rss_mb": x["peak_rss_mb"]}), flush=True)


if __name__ == "__main__":
    main()
