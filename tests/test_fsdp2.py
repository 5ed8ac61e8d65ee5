"""The loop under FSDP2 on two gloo processes (`accelerate launch --config_file
configs/accelerate/fsdp2_cpu_2proc.yaml`):
policy and pi_ref sharded per decoder layer (``inpo.sharding``).

1. Same weights as one process: single-process runs (in this process) write iteration 1's stages; their
   checkpoints are removed and two FSDP2 processes retrain iteration 1 on the same stages (INPO: all pairs;
   SPPO: best-vs-worst; EGPO: two steps, its step-1 log-prob cache deleted so that FSDP2 recomputes pi_t's
   log-probs through the frozen snapshot). 7 prompts in steps of 3 over 2 x 2 micro-batches: the last step's one
   prompt leaves three micro-batches empty, and the sampling / log-prob stages give one process a filler prompt.
2. A SIGKILL of the whole launch in the middle of an FSDP2 iteration, then `--resume`, ends bit-identical to
   the uninterrupted FSDP2 run (weights of iter_1 and iter_2, metrics.jsonl without wall-clock columns).

Three launches in all: one runs INPO (extended to a second, fully sharded iteration: sampling with `generate`
on the sharded policy, anchors, evaluation), SPPO and EGPO in the same two processes; one is killed; one resumes.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from rich.console import Console
from safetensors.torch import load_file

from inpo.config import build_config
from inpo.logprobs import batched_sequence_logprobs
from inpo.loop import run
from inpo.models import build_setup, load_causal_lm

pytestmark = pytest.mark.filterwarnings("ignore:sft.*:UserWarning")

ROOT = Path(__file__).resolve().parents[1]
FSDP2_CPU = ROOT / "configs" / "accelerate" / "fsdp2_cpu_2proc.yaml"

# Runs `inpo <args>` for each args list of argv[1] (JSON) in this process, one after the other (two under
# `accelerate launch`); with argv[2] = "<c>:<n>:<marker>" the main process writes the marker after the n-th
# optimizer step of its c-th training (train_on_pairs call) and sleeps until it is killed.
HELPER = r"""
import json, os, sys, time
from pathlib import Path
import inpo.train as T
from inpo.cli import app
if len(sys.argv) > 2:
    c, n, marker = sys.argv[2].split(":", 2)
    # torchrun starts each worker in a session of its own: the test kills them by these pids
    Path(f"{marker}.{os.getpid()}.pid").write_text(str(os.getpid()))
    calls = [0]
    real = T.train_on_pairs
    def train_on_pairs(*args, on_step=None, **kwargs):
        calls[0] += 1
        steps = [0]
        def step():
            if on_step is not None:
                on_step()
            steps[0] += 1
            if (calls[0], steps[0]) == (int(c), int(n)) and args[1].is_main_process:
                Path(marker).write_text("paused")
                time.sleep(600)
        return real(*args, on_step=step, **kwargs)
    T.train_on_pairs = train_on_pairs
for argv in json.loads(sys.argv[1]):
    app(argv, standalone_mode=False)
"""


def tiny(out: Path, cache: Path, algo: str) -> dict:
    lora = algo == "inpo-lora"
    algo = algo.removesuffix("-lora")
    return {
        "output_dir": str(out),
        "iterations": 1,
        "task": {"sft_cache": str(cache),
                 "options": {"n_train_prompts": 8, "n_eval_prompts": 4, "sft_steps": 40, "n_sft_prompts": 128}},
        "sampling": {"num_samples": 3, "max_new_tokens": 6},
        "train": {"epochs": 2, "batch_size": 3, "grad_accum": 2, "lr": 1e-3},
        "data": {"num_prompts": 7, "num_eval_prompts": 4},
        "algo": {"name": algo},
        # accelerate's end_training (trackers) destroys the process group: only the last run of a launch has them
        **({"log_with": []} if algo != "inpo" or lora else {}),
        **({"peft": {"r": 4}} if lora else {}),
    }


def env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}


def launch(tmp: Path, name: str, runs: list[list[str]], pause: str | None = None
           ) -> tuple[subprocess.Popen, Path]:
    """``accelerate launch`` of HELPER in its own session (so that one killpg reaches torchrun and workers)."""
    script, log = tmp / "helper.py", tmp / f"{name}.log"
    script.write_text(HELPER)
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(FSDP2_CPU), str(script),
           json.dumps(runs), *([pause] if pause else [])]
    with open(log, "w") as f:
        return subprocess.Popen(cmd, env=env(), stdout=f, stderr=subprocess.STDOUT, start_new_session=True), log


def restart_at_iteration_1(src: Path, dst: Path) -> None:
    """A copy of a finished 1-iteration run without its checkpoint: resuming it retrains iteration 1 on the
    stages the single process wrote."""
    shutil.copytree(src, dst)
    shutil.rmtree(dst / "iter_1")
    state = json.loads((dst / "state.json").read_text())
    (dst / "state.json").write_text(json.dumps({**state, "completed_iterations": 0}))
    rows = [line for line in (dst / "metrics.jsonl").read_text().splitlines() if json.loads(line)["iteration"] == 0]
    (dst / "metrics.jsonl").write_text("".join(r + "\n" for r in rows))


def alive(pid: int) -> bool:
    """The process exists and is not a zombie (a zombie holds no files, hence no lock)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def weights(run_dir: Path, t: int) -> dict[str, torch.Tensor]:
    return load_file(run_dir / f"iter_{t}" / "model.safetensors")


def assert_trains_like_one(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor],
                           ref: dict[str, torch.Tensor]) -> None:
    assert got.keys() == expected.keys()
    diff = torch.cat([(got[n] - expected[n]).abs().flatten() for n in expected])
    moved = torch.cat([(expected[n] - ref[n]).abs().flatten() for n in expected])
    # reduce-scatter sums in another order than one process's backward; Adam's normalized step amplifies that
    # rounding on near-zero gradients (as under DDP, tests/test_multiprocess.py): mean ~1e-8 vs update ~1e-3
    assert moved.mean() > 1e-4
    assert diff.mean() < 1e-6 and diff.max() < 2e-4, (diff.mean(), diff.max())


def metrics_without_time(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [{k: v for k, v in r.items() if not k.startswith(("time/", "perf/"))} for r in rows]


def test_fsdp2_trains_like_one_process_and_a_killed_run_resumes_bit_identical(tmp_path: Path, cache: Path) -> None:
    singles = {}
    for algo in ("inpo", "sppo", "egpo", "inpo-lora"):
        singles[algo] = tmp_path / f"single_{algo}"
        run(build_config(tiny(singles[algo], cache, algo)), quiet=True)
    ref = load_file(next(cache.rglob("model.safetensors")))

    a, b = tmp_path / "fsdp_a", tmp_path / "fsdp_b"
    restart_at_iteration_1(singles["inpo"], a)
    restart_at_iteration_1(singles["inpo"], b)
    sppo, egpo, lora = tmp_path / "fsdp_sppo", tmp_path / "fsdp_egpo", tmp_path / "fsdp_lora"
    restart_at_iteration_1(singles["sppo"], sppo)
    restart_at_iteration_1(singles["egpo"], egpo)
    restart_at_iteration_1(singles["inpo-lora"], lora)
    egpo_s1 = torch.load(egpo / "stages" / "iter_1" / "s1_logps.pt", weights_only=True)
    (egpo / "stages" / "iter_1" / "s1_logps.pt").unlink()  # recomputed under FSDP2: pi_t from the snapshot

    # launch 1: SPPO; EGPO; INPO with LoRA; INPO iteration 1 on the single process's stages, then a whole FSDP2
    # iteration 2
    proc, log = launch(tmp_path, "launch1", [["train", "--resume", str(sppo), "-q"],
                                             ["train", "--resume", str(egpo), "-q"],
                                             ["train", "--resume", str(lora), "-q"],
                                             ["train", "--resume", str(a), "--iterations", "2", "-q"]])
    assert proc.wait(timeout=900) == 0, log.read_text()[-3000:]
    state = json.loads((a / "state.json").read_text())
    assert state["launch"] == {"processes": 2, "sharding": "fsdp2"} and state["completed_iterations"] == 2
    for algo, out in (("inpo", a), ("sppo", sppo), ("egpo", egpo)):
        assert_trains_like_one(weights(out, 1), weights(singles[algo], 1), ref)
    # EGPO's step-1 anchor (pi_t, before step 0 trained the policy) recomputed on the shards: equal to the
    # single process's frozen deep copy up to rounding, and far from the trained policy's log-probs
    got_s1 = torch.load(egpo / "stages" / "iter_1" / "s1_logps.pt", weights_only=True)
    assert (got_s1["prev"] - egpo_s1["prev"]).abs().max() < 1e-4
    assert (got_s1["ref"] - egpo_s1["ref"]).abs().max() < 1e-4
    # ... and the tolerance separates pi_t from a trained policy (the anchor taken after training would fail)
    setup = build_setup(build_config(tiny(egpo, cache, "egpo")), Console(quiet=True), progress=False)
    responses = torch.load(egpo / "stages" / "iter_1" / "s1_samples.pt", weights_only=True)
    prompts = [p.ids for p in setup.train_prompts for _ in range(3)]  # K = 3
    lp = batched_sequence_logprobs(load_causal_lm(singles["egpo"] / "iter_1"), prompts, responses,
                                   pad_id=setup.pad_id)
    assert (lp - egpo_s1["prev"]).abs().max() > 1e-2
    # LoRA (pi_ref = the sharded policy with its adapter disabled): the adapter checkpoint equals one process's;
    # lora_B starts at zero, so its values are the update
    got = load_file(lora / "iter_1" / "adapter_model.safetensors")
    expected = load_file(singles["inpo-lora"] / "iter_1" / "adapter_model.safetensors")
    assert got.keys() == expected.keys()
    diff = torch.cat([(got[n] - expected[n]).abs().flatten() for n in expected])
    moved = torch.cat([expected[n].abs().flatten() for n in expected if "lora_B" in n])
    assert moved.mean() > 1e-4 and diff.mean() < 1e-6 and diff.max() < 2e-4, (moved.mean(), diff.mean(), diff.max())

    # launch 2: the same as INPO's first run, SIGKILLed (torchrun and both processes) in iteration 2's training;
    # (after the first optimizer step of the second training: iteration 2, stages written, weights half-trained)
    marker = tmp_path / "paused"
    proc, log = launch(tmp_path, "launch2", [["train", "--resume", str(b), "--iterations", "2", "-q"]],
                       pause=f"2:1:{marker}")
    deadline = time.monotonic() + 600
    while not marker.exists():
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # torchrun ...
    workers = [int(p.read_text()) for p in tmp_path.glob("paused.*.pid")]
    assert len(workers) == 2
    for pid in workers:  # ... and its two workers, each in a session of its own
        os.kill(pid, signal.SIGKILL)
    proc.wait(timeout=60)
    deadline = time.monotonic() + 60
    while any(alive(pid) for pid in workers):  # gone, and their lock on the run with them
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert json.loads((b / "state.json").read_text())["completed_iterations"] == 1
    assert (b / "stages" / "iter_2" / "s0_logps.pt").exists() and not (b / "iter_2").exists()

    # launch 3: a plain `accelerate launch -m inpo train --resume`
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(FSDP2_CPU), "-m", "inpo",
           "train", "--resume", str(b), "-q"]
    r = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert metrics_without_time(b) == metrics_without_time(a)
    for t in (1, 2):
        got, expected = weights(b, t), weights(a, t)
        assert got.keys() == expected.keys()
        for name in got:
            assert torch.equal(got[name], expected[name]), (t, name)


def test_fsdp_refusals_name_the_setting(tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """FSDP version 1, activation checkpointing (not implemented), and Nash-MD (its sampling runs pi_ref at every
    token, which sharded processes cannot keep in step), are refused before anything is written."""
    from inpo.errors import InpoError

    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_VERSION", "1")
    with pytest.raises(InpoError, match="fsdp_version: 2"):
        run(build_config(tiny(tmp_path / "v1", cache, "inpo")), quiet=True)
    monkeypatch.setenv("FSDP_VERSION", "2")
    monkeypatch.setenv("FSDP_ACTIVATION_CHECKPOINTING", "true")
    with pytest.raises(InpoError, match="fsdp_activation_checkpointing"):
        run(build_config(tiny(tmp_path / "ac", cache, "inpo")), quiet=True)
    monkeypatch.setenv("FSDP_ACTIVATION_CHECKPOINTING", "false")
    with pytest.raises(InpoError, match="algo.name=nash-md.*DDP"):
        run(build_config(tiny(tmp_path / "nash", cache, "nash-md")), quiet=True)
    assert not any((tmp_path / d).exists() for d in ("v1", "ac", "nash"))
