"""SIGKILL a real training process at many points, resume with ``--resume RUN_DIR``, and check that the final
weights (safetensors) and metrics.jsonl (without the wall-clock ``time/*``, ``perf/*``) equal an uninterrupted
run's bit for bit.

Exact kill points: each training process runs the real CLI entry point (``inpo.cli.main``) with one function of
the loop's machinery (``inpo.rundir``: atomic writes, checkpoints; ``inpo.train``: optimizer steps) wrapped so
that, right after the chosen event, it writes a marker file and sleeps; the test waits for the marker and
SIGKILLs the process, so the kill lands exactly there and never races a fast stage.
Speed: on a loaded 2-core machine importing torch + transformers costs ~5-15 s per process, so the processes are
forked from one "fork server" that imported everything once (no torch op runs before the fork). One more kill
comes at a random time, and the final resume is a plain ``python -m inpo train --resume RUN_DIR``.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

pytestmark = pytest.mark.filterwarnings("ignore:sft.*:UserWarning")  # the tiny SFT is deliberately short

TINY_TASK = {"n_train_prompts": 8, "n_eval_prompts": 4, "sft_steps": 40, "n_sft_prompts": 128}

# The fork server. Reads one JSON request per line: {"args": [...], "pause_at": str | null, "marker": path,
# "log": path}; forks a child that runs `inpo <args>`, prints "pid <pid>", then "status <code>" when the child
# ends (a SIGKILLed child: -9). pause_at (in the child, right after the event, write the marker and sleep):
#   write:<path suffix>   after an atomic write (stage artifact, config.yaml, state.json, metrics.jsonl) renamed it
#   checkpoint:iter_<t>   after iter_<t>/ was renamed into place (before metrics.jsonl / state.json are updated)
#   train_step:<n>        after the n-th optimizer step of this process (weights half-trained in memory)
SERVER = r"""
import json, os, sys, time
from pathlib import Path
import accelerate, matplotlib.pyplot, transformers
from transformers.models.llama import modeling_llama
import inpo.judges, inpo.loop, inpo.rundir as R, inpo.tasks, inpo.train as T
from inpo.cli import main

def child(req):
    fd = os.open(req["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    marker = Path(req["marker"])
    kind, _, what = (req.get("pause_at") or "").partition(":")

    def pause():
        marker.write_text(req["pause_at"])
        time.sleep(600)

    def after(fn, match):
        def wrapped(*args, **kwargs):
            out = fn(*args, **kwargs)
            if match(*args, **kwargs):
                pause()
            return out
        return wrapped

    if kind == "write":
        R.atomic_torch_save = after(R.atomic_torch_save, lambda obj, path: str(path).endswith(what))
        R.atomic_write_text = after(R.atomic_write_text, lambda path, text: str(path).endswith(what))
    elif kind == "checkpoint":
        R.save_checkpoint = after(R.save_checkpoint, lambda model, tok, path: Path(path).name == what)
    elif kind == "train_step":
        steps = [0]
        real_train = T.train_on_pairs

        def train_on_pairs(*args, on_step=None, **kwargs):
            def step():
                if on_step is not None:
                    on_step()
                steps[0] += 1
                if steps[0] == int(what):
                    pause()
            return real_train(*args, on_step=step, **kwargs)
        T.train_on_pairs = train_on_pairs
    sys.argv = ["inpo", *req["args"]]
    code = 1
    try:
        main()
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)

print("ready", flush=True)
for line in sys.stdin:
    req = json.loads(line)
    pid = os.fork()
    if pid == 0:
        child(req)
    print(f"pid {pid}", flush=True)
    _, status = os.waitpid(pid, 0)
    print(f"status {os.waitstatus_to_exitcode(status)}", flush=True)
"""

KILL_POINTS = [
    "write:config.yaml",  # fresh start, killed before state.json exists
    "write:stages/iter_1/s0_samples.pt",
    "write:stages/iter_1/s0_judgements.pt",
    "write:stages/iter_1/s0_logps.pt",
    "train_step:1",  # mid-training of iteration 1 (2 optimizer steps per iteration)
    "checkpoint:iter_1",  # iter_1/ renamed into place, metrics.jsonl and state.json not yet updated
    "write:state.json",  # iteration 1 recorded (the first state write of a resumed process)
    "write:stages/iter_2/s0_logps.pt",
]


def env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SFT cache shared by every module of the session (the reference is keyed by its config hash)."""
    return tmp_path_factory.getbasetemp() / "shared_sft_cache"


def tiny(cache: Path) -> dict:
    return {
        "output_dir": "unused",
        "iterations": 2,
        "task": {"sft_cache": str(cache), "options": TINY_TASK},
        "sampling": {"num_samples": 3, "max_new_tokens": 6},
        "train": {"epochs": 1, "batch_size": 4, "lr": 1e-3},
        "data": {"num_eval_prompts": 4},
        "algo": {"name": "inpo", "eta": 0.25, "tau": 0.05},
    }


class ForkServer:
    """Client of ``SERVER``: ``start`` forks an ``inpo`` child and returns its pid, ``wait`` its exit code."""

    def __init__(self, cwd: Path) -> None:
        self.cwd = cwd
        self.proc = subprocess.Popen([sys.executable, "-c", SERVER], cwd=cwd, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=env())
        assert self.readline() == "ready"

    def readline(self) -> str:
        line = self.proc.stdout.readline().strip()
        assert line, f"fork server died (code {self.proc.poll()})"
        return line

    def start(self, args: list[str], *, pause_at: str | None, marker: Path, log: Path) -> int:
        req = {"args": args, "pause_at": pause_at, "marker": str(marker), "log": str(log)}
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        kind, pid = self.readline().split()
        assert kind == "pid"
        return int(pid)

    def wait(self) -> int:
        kind, code = self.readline().split()
        assert kind == "status"
        return int(code)

    def run(self, args: list[str], log: Path) -> int:
        self.start(args, pause_at=None, marker=log.with_suffix(".marker"), log=log)
        return self.wait()

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)
        self.proc.stdout.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    srv = ForkServer(tmp_path_factory.mktemp("forkserver"))
    yield srv
    srv.close()


def run_until_paused(server: ForkServer, args: list[str], at: str, marker: Path) -> None:
    """Start ``inpo <args>`` pausing right after ``at``; SIGKILL it as soon as it is there."""
    log = marker.with_suffix(".log")
    pid = server.start(args, pause_at=at, marker=marker, log=log)
    deadline = time.monotonic() + 240
    while not marker.exists():
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            server.wait()
            pytest.fail(f"no pause at {at} within 240 s: {log.read_text()}")
        time.sleep(0.02)
    os.kill(pid, signal.SIGKILL)
    code = server.wait()
    assert code == -signal.SIGKILL, (at, code, log.read_text())


def metrics_without_time(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [{k: v for k, v in r.items() if not k.startswith(("time/", "perf/"))} for r in rows]


def assert_same_run(got: Path, expected: Path) -> None:
    assert metrics_without_time(got) == metrics_without_time(expected)
    for t in (1, 2):
        a, b = load_file(got / f"iter_{t}" / "model.safetensors"), load_file(expected / f"iter_{t}" /
                                                                          "model.safetensors")
        assert a.keys() == b.keys()
        for name in a:
            assert torch.equal(a[name], b[name]), (t, name)
    assert json.loads((got / "state.json").read_text())["completed_iterations"] == 2


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, cache: Path, server: ForkServer) -> tuple[Path, Path]:
    """(config file, an uninterrupted run of it, forked from the same server as the killed runs)."""
    root = tmp_path_factory.mktemp("kill")
    cfg = root / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(tiny(cache)))
    out = root / "uninterrupted"
    start = time.monotonic()
    log = root / "uninterrupted.log"
    assert server.run(["train", str(cfg), "-o", str(out), "-q"], log) == 0, log.read_text()
    (root / "wall_s").write_text(str(time.monotonic() - start))
    return cfg, out


def test_killed_at_every_stage_then_resumed_equals_uninterrupted(reference: tuple[Path, Path], server: ForkServer,
                                                                 tmp_path: Path) -> None:
    cfg, expected = reference
    run_dir = tmp_path / "run"
    for i, at in enumerate(KILL_POINTS):
        args = ["train", str(cfg), "-o", str(run_dir), "-q"] if i == 0 else ["train", "--resume", str(run_dir), "-q"]
        run_until_paused(server, args, at, tmp_path / f"paused_{i}")
        state = json.loads((run_dir / "state.json").read_text()) if (run_dir / "state.json").exists() else {}
        if at == "write:config.yaml":
            assert not state, "the kill was meant to land between config.yaml and state.json"
        if at == "checkpoint:iter_1":
            assert (run_dir / "iter_1").is_dir() and state["completed_iterations"] == 0
    # one more kill at a random moment (set-up, iteration 2's training, checkpoint or evaluation)
    delay = random.Random().uniform(0.05, 0.5) * float((expected.parent / "wall_s").read_text())
    log = tmp_path / "random.log"
    pid = server.start(["train", "--resume", str(run_dir), "-q"], pause_at=None, marker=tmp_path / "none", log=log)
    time.sleep(delay)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass  # it had already finished
    assert server.wait() in (0, -signal.SIGKILL), log.read_text()
    # the final resume: the real `python -m inpo` process
    r = subprocess.run([sys.executable, "-m", "inpo", "train", "--resume", str(run_dir), "-q"], cwd=tmp_path,
                       capture_output=True, text=True, env=env(), timeout=600)
    assert r.returncode == 0, (delay, r.stderr)
    assert_same_run(run_dir, expected)
