"""A GPM trained on built-in task preferences is a working oracle for the loop (bench/learned_oracle.py, fast).

The judge is trained (``train_judge``, ``--base builtin-tiny``) on majority labels of the task's ground-truth game
over fresh prompts; it must reproduce the rock-paper-scissors orientation on the task's eval prompts (a BT judge
cannot: a scalar reward has no cycle), be exactly antisymmetric on task responses, load through ``load_judge``, and
be the judge whose matrices a T = 1 ``inpo`` run trains on.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny import TINY_TASK

from inpo.config import build_config
from inpo.judges import GPMJudge, JudgeTrainConfig, load_judge, train_judge
from inpo.loop import run
from inpo.rundir import load_stage
from inpo.tasks import BuiltinTask, BuiltinTaskConfig


def task_rows(task: BuiltinTask, n_prompts: int, seed: int = 0) -> list[dict[str, str]]:
    """Each unordered pair of distinct styles once per fresh prompt, chosen = the style with P_true > 1/2."""
    rng = np.random.default_rng(seed)
    prompts = task.fresh_prompts(n_prompts, rng)
    game = task.judge()
    rows = []
    for x in prompts:
        for i, j in itertools.combinations(range(len(task.styles)), 2):
            a, b = (f"{task.styles[s]} {' '.join(rng.choice(task.fillers, size=int(rng.integers(1, 4))))}"
                    for s in (i, j))
            p = game.prob([x], [a], [b]).item()
            rows.append({"prompt": x, "chosen": a if p > 0.5 else b, "rejected": b if p > 0.5 else a})
    return rows


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[BuiltinTask, Path, GPMJudge]:
    task = BuiltinTask(BuiltinTaskConfig(**TINY_TASK))
    out = tmp_path_factory.mktemp("oracle") / "judge-gpm"
    res = train_judge(task_rows(task, 30), "gpm", "builtin-tiny", out, JudgeTrainConfig(epochs=30, seed=0))
    assert res.metrics["accuracy"] >= 0.95, res.metrics  # deterministic labels: the cycle is learnable exactly
    assert isinstance(res.judge, GPMJudge)
    return task, out, res.judge


def test_loaded_gpm_is_antisymmetric_on_task_responses_and_reproduces_the_cycle(trained) -> None:
    task, out, in_memory = trained
    judge = load_judge(out)
    assert isinstance(judge, GPMJudge)
    x = task.eval_prompts
    rng = np.random.default_rng(1)
    a = [f"{rng.choice(task.styles)} w{rng.integers(32)}" for _ in x] + ["", "w3 w4", "rock", "paper w1 w2 w3"]
    b = [f"{rng.choice(task.styles)} w{rng.integers(32)} w{rng.integers(32)}" for _ in x] + ["rock", "w5",
                                                                                            "rock", "scissors"]
    xs = (x * 2)[: len(a)]
    p_ab, p_ba = judge.prob(xs, a, b), judge.prob(xs, b, a)
    assert torch.allclose(p_ab + p_ba, torch.ones_like(p_ab), atol=1e-12, rtol=0)
    assert torch.allclose(p_ab, in_memory.prob(xs, a, b), atol=1e-6)  # save/load round trip
    responses = [f"{s} w1 w2" for s in task.styles]
    for prompt in x:
        m = judge.matrix(prompt, responses)
        assert torch.allclose(m + m.T, torch.ones_like(m), atol=1e-12, rtol=0)
        truth = task.judge().matrix(prompt, responses)
        off = ~torch.eye(len(responses), dtype=torch.bool)
        # every edge oriented as the true cycle on held-out (eval) prompts; impossible for a scalar reward
        assert torch.equal((m > 0.5)[off], (truth > 0.5)[off]), (prompt, m, truth)


@pytest.mark.filterwarnings("ignore:sft. the reference")  # 40 SFT steps: a rough pi_ref is enough here
def test_gpm_is_the_loops_oracle_for_a_tiny_run(trained, tmp_path: Path) -> None:
    task, out, _ = trained
    cfg = build_config({
        "output_dir": str(tmp_path / "run"), "iterations": 1, "judge": {"path": str(out)},
        "task": {"sft_cache": str(tmp_path / "cache"), "options": TINY_TASK},
        "sampling": {"num_samples": 3, "max_new_tokens": 6},
        "train": {"epochs": 1, "batch_size": 4, "lr": 1e-3}, "data": {"num_eval_prompts": 4},
    })
    rows = run(cfg, quiet=True)
    assert [r["iteration"] for r in rows] == [0, 1]
    last = rows[-1]
    assert math.isfinite(last["game/duality_gap"]) and 0.0 <= last["pref/win_rate"] <= 1.0
    assert last["train/pairs"] > 0
    # the stored judgements are the GPM's matrices of the sampled responses, not the ground truth's
    stages = tmp_path / "run" / "stages" / "iter_1"
    samples, mats = load_stage(stages / "s0_samples.pt"), load_stage(stages / "s0_judgements.pt")
    tok = task.make_tokenizer()
    texts = tok.batch_decode(samples["responses"], skip_special_tokens=True)
    judge, truth = load_judge(out), task.judge()
    k = 3
    assert mats.shape == (len(task.train_prompts), k, k)
    differs = False
    for i, prompt in enumerate(task.train_prompts):
        expected = judge.matrix(prompt, texts[i * k:(i + 1) * k])
        assert torch.allclose(mats[i].double(), expected, atol=1e-6), (i, mats[i], expected)
        differs |= not torch.allclose(mats[i].double(), truth.matrix(prompt, texts[i * k:(i + 1) * k]), atol=1e-3)
    assert differs
