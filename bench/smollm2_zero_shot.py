"""SmolLM2-135M-Instruct used zero-shot as an lm-pair judge on the two easy pairs of tests/test_real_model.py:
P(good > bad) after order-averaging, and the raw P(first shown better) in both orders (position bias).

    python bench/smollm2_zero_shot.py
"""

from __future__ import annotations

import torch

from inpo.judges import load_judge
from inpo.models_real import smollm2_path

PROMPTS = ["What is the capital of France?", "Name a fruit."]
GOOD = ["The capital of France is Paris.", "An apple is a fruit."]
BAD = ["I like turtles.", "Paris."]

if __name__ == "__main__":
    torch.set_num_threads(1)
    for preset in ("generic", "rlhflow"):
        judge = load_judge(smollm2_path(), kind="lm-pair", preset=preset, batch_size=4)
        p = judge.prob(PROMPTS, GOOD, BAD)
        f_gb, f_bg = judge.first_prob(PROMPTS, GOOD, BAD), judge.first_prob(PROMPTS, BAD, GOOD)
        print(f"{preset}: P(good > bad) {[round(x, 3) for x in p.tolist()]}; P(first better): good first "
              f"{[round(x, 3) for x in f_gb.tolist()]}, bad first {[round(x, 3) for x in f_bg.tolist()]}")
