"""Security: no API key in the run directory, YAML safe-loaded, no pickle executed (checkpoints are safetensors,
stage artifacts load with ``weights_only``), ``trust_remote_code`` off by default and remote code never run.

The API-key test trains with the OpenAI-compatible judge (``inpo.judges.api.OpenAIPairwiseJudge``) against a local fake
server that checks the ``Authorization`` header, so the key is really used during the run.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
import yaml
from tiny import TINY_TASK

import inpo
from inpo.cli import main
from inpo.config import ModelConfig, RunConfig
from inpo.errors import InpoError
from inpo.judges.api import OpenAIPairwiseJudge as APIJudge

pytestmark = pytest.mark.filterwarnings("ignore:sft.*:UserWarning")  # the tiny SFT is deliberately short

SECRETS = {"OPENAI_API_KEY": "sk-test-SECRET-4f9a", "HF_TOKEN": "hf_SECRET_b71c", "WANDB_API_KEY": "SECRET-wandb-0d2e"}
PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt"}




def cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    """``inpo <args>`` in-process through the real entry point; (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["inpo", *args])
    with pytest.raises(SystemExit) as exc:
        main()
    out = capsys.readouterr()
    return int(exc.value.code or 0), out.out, out.err


def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and "Traceback" not in err and len(lines) == 1 and lines[0].startswith("error: "), (code, err)
    for n in needles:
        assert n in lines[0], (n, lines[0])


class Evil:
    """Unpickling this runs ``open(marker, 'w')``: proof that a pickle was executed."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


# --------------------------------------------------------------------------------------------------
# a fake OpenAI-compatible judge server
# --------------------------------------------------------------------------------------------------


class FakeOpenAI(BaseHTTPRequestHandler):
    auth: list[str] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        FakeOpenAI.auth.append(self.headers.get("Authorization", ""))
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        text = body["messages"][-1]["content"]
        a = re.search(r"\[Response A\]\n(.*?)\n\n\[Response B\]", text, re.S)
        b = re.search(r"\[Response B\]\n(.*?)\n\n", text, re.S)
        verdict = "A" if a and b and len(a.group(1)) >= len(b.group(1)) else "B"  # prefers longer responses
        reply = json.dumps({"choices": [{"message": {"role": "assistant", "content": verdict}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def judge_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeOpenAI)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def use_api_judges(monkeypatch: pytest.MonkeyPatch) -> None:
    """``judge.path`` directories written by ``APIJudge.save`` load as APIJudge (kind "openai")."""
    import inpo.judges

    original = inpo.judges.load_judge

    def load(path, **kwargs):
        cfg = json.loads((Path(path) / "judge_config.json").read_text())
        if cfg.get("kind") == "openai":
            return APIJudge(**{k: v for k, v in cfg.items() if k != "kind"})
        return original(path, **kwargs)

    monkeypatch.setattr(inpo.judges, "load_judge", load)


def tiny_yaml(path: Path, out: Path, cache: Path, **sections: dict) -> Path:
    data = {"output_dir": str(out), "iterations": 1, "task": {"sft_cache": str(cache), "options": TINY_TASK},
            "sampling": {"num_samples": 3, "max_new_tokens": 6}, "train": {"epochs": 1, "batch_size": 4, "lr": 1e-3},
            "data": {"num_eval_prompts": 4}, **sections}
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="module")
def api_run(tmp_path_factory: pytest.TempPathFactory, cache: Path, judge_server: str) -> tuple[Path, Path, str]:
    """(run dir, judge dir, console output) of a run judged through the API with secrets in the environment."""
    root = tmp_path_factory.mktemp("api_run")
    judge_dir = APIJudge(judge_server, "fake-judge", max_retries=0, concurrency=2).save(root / "judge")
    cfg = tiny_yaml(root / "cfg.yaml", root / "run", cache, judge={"path": str(judge_dir)})
    with pytest.MonkeyPatch.context() as mp:
        for k, v in SECRETS.items():
            mp.setenv(k, v)
        use_api_judges(mp)
        FakeOpenAI.auth.clear()
        capture = _Capture()
        mp.setattr(sys, "argv", ["inpo", "train", str(cfg)])
        with capture, pytest.raises(SystemExit) as exc:
            main()
    assert exc.value.code in (0, None), capture.text
    assert FakeOpenAI.auth and set(FakeOpenAI.auth) == {f"Bearer {SECRETS['OPENAI_API_KEY']}"}
    return root / "run", judge_dir, capture.text


class _Capture:
    """stdout + stderr of a block (module fixtures cannot use capsys)."""

    def __enter__(self) -> _Capture:
        import io

        self._saved = sys.stdout, sys.stderr
        self._buf = io.StringIO()
        sys.stdout = sys.stderr = self._buf
        return self

    def __exit__(self, *exc: object) -> None:
        sys.stdout, sys.stderr = self._saved
        self.text = self._buf.getvalue()


# --------------------------------------------------------------------------------------------------
# tests
# --------------------------------------------------------------------------------------------------


def test_no_secret_from_the_environment_in_any_file_of_the_run(api_run: tuple[Path, Path, str]) -> None:
    run_dir, judge_dir, console = api_run
    files = [p for d in (run_dir, judge_dir) for p in d.rglob("*") if p.is_file()]
    assert any(p.name == "model.safetensors" for p in files) and any(p.suffix == ".pt" for p in files)
    for p in files:
        data = p.read_bytes()
        for name, secret in SECRETS.items():
            assert secret.encode() not in data, f"{name} leaked into {p}"
    for secret in SECRETS.values():
        assert secret not in console
    assert "api_key_env" in (judge_dir / "judge_config.json").read_text()  # the variable's name only


def test_checkpoints_are_safetensors_only(api_run: tuple[Path, Path, str]) -> None:
    run_dir = api_run[0]
    ckpt = sorted(p.name for p in (run_dir / "iter_1").iterdir())
    assert "model.safetensors" in ckpt
    assert not [n for n in ckpt if Path(n).suffix in PICKLE_SUFFIXES], ckpt


def test_a_pickle_planted_as_a_stage_artifact_is_not_executed(api_run: tuple[Path, Path, str], tmp_path: Path,
                                                              monkeypatch, capsys) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(api_run[0], run_dir)
    shutil.rmtree(run_dir / "iter_1")
    state = json.loads((run_dir / "state.json").read_text())
    (run_dir / "state.json").write_text(json.dumps({**state, "completed_iterations": 0}))
    marker = tmp_path / "pwned"
    torch.save({"x": Evil(marker)}, run_dir / "stages" / "iter_1" / "s0_samples.pt")  # torch.save pickles
    use_api_judges(monkeypatch)
    code, _, err = cli(monkeypatch, capsys, "train", "--resume", str(run_dir), "-q")
    assert_one_line_error(code, err, "s0_samples.pt", "not a readable stage artifact")
    assert not marker.exists()


def test_a_pickle_checkpoint_is_refused_and_not_executed(cache: Path, api_run, tmp_path: Path, monkeypatch,
                                                         capsys) -> None:
    ref = next(p.parent for p in cache.rglob("task.json"))
    model = tmp_path / "model"
    shutil.copytree(ref, model)
    (model / "model.safetensors").unlink()
    marker = tmp_path / "pwned"
    with open(model / "pytorch_model.bin", "wb") as f:
        pickle.dump({"weights": Evil(marker)}, f)
    (tmp_path / "p.jsonl").write_text('{"prompt": "topic1 w2 :"}\n')
    cfg = tiny_yaml(tmp_path / "cfg.yaml", tmp_path / "out", cache, model={"path": str(model)},
                    data={"prompts": str(tmp_path / "p.jsonl")}, judge={"path": "unused"})
    code, _, err = cli(monkeypatch, capsys, "train", str(cfg))
    assert_one_line_error(code, err, "model.path", "safetensors")
    assert not marker.exists()
    assert not (tmp_path / "out").exists()


def test_trust_remote_code_is_off_by_default_and_remote_code_never_runs(cache: Path, api_run, tmp_path: Path,
                                                                       monkeypatch, capsys) -> None:
    assert ModelConfig().trust_remote_code is False and RunConfig().model.trust_remote_code is False
    assert yaml.safe_load((api_run[0] / "config.yaml").read_text())["model"]["trust_remote_code"] is False
    src = Path(inpo.__file__).parent
    offenders = [str(p) for p in src.rglob("*.py") if re.search(r"trust_remote_code\s*=\s*True", p.read_text())]
    assert not offenders
    # a model directory asking for its own code (auto_map): the code is never imported
    ref = next(p.parent for p in cache.rglob("task.json"))
    model = tmp_path / "model"
    shutil.copytree(ref, model)
    marker = tmp_path / "pwned"
    (model / "evil.py").write_text(f"open({str(marker)!r}, 'w').close()\n"
                                   "from transformers import LlamaConfig, LlamaForCausalLM\n"
                                   "class EvilConfig(LlamaConfig):\n    pass\n"
                                   "class EvilModel(LlamaForCausalLM):\n    pass\n")
    config = json.loads((model / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel"}
    (model / "config.json").write_text(json.dumps(config))
    (tmp_path / "p.jsonl").write_text('{"prompt": "topic1 w2 :"}\n{"prompt": ""}\n')  # row 2 fails after loading
    cfg = tiny_yaml(tmp_path / "cfg.yaml", tmp_path / "out", cache, model={"path": str(model)},
                    data={"prompts": str(tmp_path / "p.jsonl")}, judge={"path": "unused"})
    code, _, err = cli(monkeypatch, capsys, "train", str(cfg))
    assert_one_line_error(code, err, "p.jsonl: row 2")  # the model loaded (as plain Llama) before the bad row
    assert not marker.exists()


def test_python_object_yaml_tag_is_rejected_by_the_real_process(tmp_path: Path, monkeypatch, capsys) -> None:
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.yaml"
    evil.write_text(f"iterations: !!python/object/apply:os.system ['touch {marker}']\n")
    r = subprocess.run([sys.executable, "-m", "inpo", "train", str(evil)], capture_output=True, text=True,
                       cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}, timeout=300)
    assert_one_line_error(r.returncode, r.stderr, "evil.yaml", "line 1", "python/object")
    code, _, err = cli(monkeypatch, capsys, "train", "--set", f"iterations=!!python/object/apply:os.system "
                       f"['touch {marker}']")
    assert_one_line_error(code, err, "override", "python/object")
    assert not marker.exists()


def test_judges_without_a_key_fail_with_one_line(api_run, judge_server: str, monkeypatch) -> None:
    """The key is read at request time; if it is missing, the error names the variable, not a value."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    judge = APIJudge(judge_server, "fake-judge", max_retries=0)
    with pytest.raises(InpoError, match="OPENAI_API_KEY is not set"):
        judge.prob(["p"], ["a"], ["b"])
