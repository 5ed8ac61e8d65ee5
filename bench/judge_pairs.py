"""Rule-labelled real-text pairs for measuring judge training on a real model (docs/judges.md, "Training real
models"): 16 topics x 3 instructions, chosen = a concise answer, rejected = a padded, verbose one.

    python bench/judge_pairs.py pairs.jsonl     # 48 rows, seeded

The rule is trivial on purpose: the rows measure memory and time, not what a judge can learn.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

TOPICS = ["the moon", "coffee", "rivers", "bicycles", "tea", "volcanoes", "chess", "bread", "rain", "owls",
          "libraries", "glass", "trains", "honey", "maps", "snow"]
VERBS = ["Explain", "Describe", "Tell me about"]


def rows(seed: int = 0) -> list[dict[str, str]]:
    out = []
    for t in TOPICS:
        for v in VERBS:
            concise = f"{t.capitalize()} is a common topic. In short: it is interesting and useful to know about."
            verbose = (f"Well, {t} is something that many people have thought about for a very long time, and there "
                       f"is a great deal that could be said. First of all, {t} appears in many stories. Second, {t} "
                       f"has a history. Third, people have different opinions about {t}, and so on and so forth.")
            out.append({"prompt": f"{v} {t}.", "chosen": concise, "rejected": verbose})
    random.Random(seed).shuffle(out)
    return out


if __name__ == "__main__":
    path = Path(sys.argv[1] if len(sys.argv) > 1 else "pairs.jsonl")
    path.write_text("".join(json.dumps(r) + "\n" for r in rows()), encoding="utf-8")
    print(f"wrote {len(rows())} rows to {path}")
