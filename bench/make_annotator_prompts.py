"""Write the annotators task's prompts: src/inpo/tasks/data/annotators_{train,eval}.jsonl.

28 instruction templates x 15 topics = 420 single-turn prompts; a seeded 20% of the (template, topic) pairs
(84) is the held-out eval split, the other 336 the training prompts. Rerun: python bench/make_annotator_prompts.py
(deterministic: the files in the package are its output).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

TEMPLATES = [
    "Explain {t} in simple terms.",
    "Give me some tips about {t}.",
    "What are the pros and cons of {t}?",
    "Write a short paragraph about {t}.",
    "What should a beginner know about {t}?",
    "Describe {t} to a ten-year-old.",
    "Why do people care about {t}?",
    "What are common mistakes people make with {t}?",
    "Summarize the key facts about {t}.",
    "How would you introduce {t} to a friend?",
    "What is the most important thing about {t}?",
    "Give an example that involves {t}.",
    "What questions should I ask before getting into {t}?",
    "Compare {t} with something from everyday life.",
    "What are the main ideas behind {t}?",
    "Tell me something surprising about {t}.",
    "How has {t} changed over the years?",
    "What are the first steps to learn about {t}?",
    "Write a few sentences on why {t} matters.",
    "What would you recommend to someone curious about {t}?",
    "List some facts about {t}.",
    "What is a good way to think about {t}?",
    "Answer briefly: what is {t}?",
    "Give a detailed overview of {t}.",
    "What are the risks related to {t}?",
    "How can I explain {t} in one minute?",
    "What do experts say about {t}?",
    "Share some advice about {t}.",
]

TOPICS = [
    "saving money",
    "growing tomatoes",
    "public speaking",
    "recycling",
    "regular exercise",
    "a good night's sleep",
    "time management",
    "photosynthesis",
    "the water cycle",
    "electric cars",
    "volcanoes",
    "solar energy",
    "learning a second language",
    "drinking coffee",
    "playing chess",
]

EVAL_FRACTION = 0.2
SEED = 11


def main() -> None:
    prompts = [tpl.format(t=topic) for tpl in TEMPLATES for topic in TOPICS]
    assert len(set(prompts)) == len(prompts)
    rng = random.Random(SEED)
    order = list(range(len(prompts)))
    rng.shuffle(order)
    n_eval = round(EVAL_FRACTION * len(prompts))
    held = set(order[:n_eval])
    out = Path(__file__).resolve().parents[1] / "src" / "inpo" / "tasks" / "data"
    out.mkdir(parents=True, exist_ok=True)
    for name, keep in (("train", lambda i: i not in held), ("eval", lambda i: i in held)):
        rows = [{"prompt": p} for i, p in enumerate(prompts) if keep(i)]
        (out / f"annotators_{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        print(f"{name}: {len(rows)} prompts")


if __name__ == "__main__":
    main()
