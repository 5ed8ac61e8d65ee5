"""OpenAIPairwiseJudge against a stub OpenAI-compatible server on 127.0.0.1 (http.server in a thread)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from inpo.errors import InpoError
from inpo.judges.api import OpenAIPairwiseJudge, combine_orders, parse_verdict

KEY = "sk-test-SECRET-0123456789"


class Stub:
    """Records every request; ``reply(prompt, first, second) -> str`` is the judge model's answer."""

    def __init__(self, reply: Callable[[str, str, str], str], delay: float = 0.0) -> None:
        self.reply, self.delay = reply, delay
        self.requests: list[dict] = []
        self.lock = threading.Lock()


@pytest.fixture
def server() -> Iterator[Callable[..., tuple[Stub, str]]]:
    servers: list[ThreadingHTTPServer] = []

    def start(reply: Callable[[str, str, str], str], delay: float = 0.0) -> tuple[Stub, str]:
        stub = Stub(reply, delay)

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server's API
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with stub.lock:
                    stub.requests.append({"path": self.path, "auth": self.headers.get("Authorization"),
                                          "body": body})
                if stub.delay:
                    time.sleep(stub.delay)
                text = body["messages"][-1]["content"]
                prompt = text.split("[Prompt]\n")[1].split("\n\n[Response A]")[0]
                first = text.split("[Response A]\n")[1].split("\n\n[Response B]")[0]
                second = text.split("[Response B]\n")[1].split("\n\nAnswer")[0]
                out = json.dumps({"choices": [{"message": {"role": "assistant",
                                                           "content": stub.reply(prompt, first, second)}}]}).encode()
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(out)))
                    self.end_headers()
                    self.wfile.write(out)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        srv.daemon_threads = True
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
        return stub, f"http://127.0.0.1:{srv.server_address[1]}/v1"

    yield start
    for srv in servers:
        srv.shutdown()
        srv.server_close()


def score(text: str) -> float:
    return float(text.split("q")[1]) if "q" in text else 0.0


def test_parse_verdict_and_combination() -> None:
    assert [parse_verdict(t) for t in ["A", "b", " [[A]] ", "(B).", "Response A", "**B**", "0.8", "1", ".25"]] == [
        1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.8, 1.0, 0.25]
    assert [parse_verdict(t) for t in ["A or B", "I think A", "1.5", "", "AB"]] == [None] * 5
    assert combine_orders(0.8, 0.3) == pytest.approx(0.75)
    assert combine_orders(0.8, 0.3) + combine_orders(0.3, 0.8) == pytest.approx(1.0)


def test_probabilities_both_orders_position_bias_and_key_header(server, monkeypatch) -> None:
    monkeypatch.setenv("INPO_TEST_KEY", KEY)
    # a judge model with quality scores "q<x>" and a position bias: it answers A unless B is better by > 0.25
    stub, url = server(lambda p, a, b: "B" if score(b) - score(a) > 0.25 else "A")
    judge = OpenAIPairwiseJudge(url, "judge-model", api_key_env="INPO_TEST_KEY", timeout=5, max_retries=0)
    a = ["q0.9", "q0.5", "q0.5", "q0.1"]
    b = ["q0.1", "q0.6", "q0.5", "q0.9"]
    p = judge.prob(["x1", "x2", "x3", "x4"], a, b)
    # by hand, P = (f(a, b) + 1 - f(b, a)) / 2: row 1: a first -> "A" (f=1); b first -> a is better by 0.8 > 0.25
    #   -> "B" (f=0); P = 1. Rows 2 and 3: "A" in both orders (bias) -> P = 0.5. Row 4: mirror of row 1 -> 0.
    assert torch.allclose(p, torch.tensor([1.0, 0.5, 0.5, 0.0], dtype=torch.float64))
    p_rev = judge.prob(["x1", "x2", "x3", "x4"], b, a)
    assert torch.allclose(p + p_rev, torch.ones(4, dtype=torch.float64))
    assert len(stub.requests) == 16 and judge.requests == 16 and judge.parse_failures == 0
    shown = [r["body"]["messages"][-1]["content"].split("[Response A]\n")[1].split("\n")[0] for r in stub.requests[:8]]
    assert sorted(shown) == sorted(a + b)  # every pair was shown in both orders
    assert all(r["path"] == "/v1/chat/completions" for r in stub.requests)
    assert all(r["auth"] == f"Bearer {KEY}" for r in stub.requests)
    assert all(r["body"]["model"] == "judge-model" for r in stub.requests)
    # the key is read at call time and never kept on the object
    for text in (repr(judge), str(judge), json.dumps(judge.config()), json.dumps(vars(judge), default=str)):
        assert KEY not in text
    assert judge.config()["api_key_env"] == "INPO_TEST_KEY"
    clone = OpenAIPairwiseJudge.from_config(judge.config())
    assert clone.config() == judge.config()


def test_raw_prob_one_order_and_position_bias_in_battles(server, monkeypatch) -> None:
    from inpo.battles import battle, position_flip_rate

    monkeypatch.setenv("INPO_TEST_KEY", KEY)
    stub, url = server(lambda p, a, b: "B" if score(b) - score(a) > 0.25 else "A")  # the biased judge above
    judge = OpenAIPairwiseJudge(url, "judge-model", api_key_env="INPO_TEST_KEY", timeout=5, max_retries=0)
    a, b = ["q0.9", "q0.5", "q0.5", "q0.1"], ["q0.1", "q0.6", "q0.5", "q0.9"]
    # one request per row, the first response shown as A: "A" unless B is better by > 0.25
    assert judge.raw_prob(["x"] * 4, a, b).tolist() == [1.0, 1.0, 1.0, 0.0] and len(stub.requests) == 4
    res = battle(judge, ["x"] * 4, a, b)  # a = the model, b = the reference; 8 requests
    # model first: f(a, b) = 1, 1, 1, 0; model second: 1 - f(b, a) = 1 - (0, 1, 1, 1) = 1, 0, 0, 0
    assert res.model_first.tolist() == [1.0, 1.0, 1.0, 0.0] and res.model_second.tolist() == [1.0, 0.0, 0.0, 0.0]
    assert res.scores.tolist() == judge.prob(["x"] * 4, a, b).tolist()  # the same as the symmetrized judge
    assert position_flip_rate(res.model_first, res.model_second) == 0.5  # rows 2 and 3 flip with the order


def test_saved_config_has_no_key(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("INPO_TEST_KEY", KEY)
    judge = OpenAIPairwiseJudge("http://127.0.0.1:1/v1", "m", api_key_env="INPO_TEST_KEY", system="be fair")
    judge.save(tmp_path / "j")
    saved = (tmp_path / "j" / "judge_config.json").read_text()
    assert KEY not in saved and json.loads(saved)["kind"] == "openai"
    assert OpenAIPairwiseJudge.load(tmp_path / "j").config() == judge.config()
    (tmp_path / "other.json").write_text('{"kind": "gpm"}')
    with pytest.raises(InpoError, match="not an API judge config"):
        OpenAIPairwiseJudge.load(tmp_path / "other.json")


def test_probability_replies_and_matrix(server, monkeypatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    # the judge replies a probability, P(first better) = 0.5 + (s_first - s_second) / 2
    stub, url = server(lambda p, a, b: f"{0.5 + (score(a) - score(b)) / 2:.4f}")
    judge = OpenAIPairwiseJudge(url, "m", timeout=5, max_retries=0, concurrency=3)
    m = judge.matrix("x", ["q0.2", "q0.6", "q1.0"])
    expected = torch.tensor([[0.5, 0.3, 0.1], [0.7, 0.5, 0.3], [0.9, 0.7, 0.5]], dtype=torch.float64)
    assert torch.allclose(m, expected, atol=1e-4)
    assert len(stub.requests) == 6  # K(K-1)/2 pairs x 2 orders


def test_parse_failure_counts_as_tie(server, monkeypatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    # prose when "bad" is shown first, a clean label otherwise
    stub, url = server(lambda p, a, b: "Both are fine, hard to say." if "bad" in a else "A")
    judge = OpenAIPairwiseJudge(url, "m", timeout=5, max_retries=0)
    p = judge.prob(["x"], ["bad q1"], ["good"])
    # f(bad, good) fails -> 0.5 ; f(good, bad) = 1 (A) -> P(bad > good) = (0.5 + 1 - 1) / 2 = 0.25
    assert p.tolist() == [0.25]
    assert judge.parse_failures == 1 and judge.requests == 2


def test_timeout_retried_then_error(server, monkeypatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    stub, url = server(lambda p, a, b: "A", delay=1.0)
    judge = OpenAIPairwiseJudge(url, "m", timeout=0.2, max_retries=2, backoff=0.01, concurrency=1)
    with pytest.raises(InpoError, match=r"failed after 3 attempts \(timeout\)") as err:
        judge.prob(["x"], ["a"], ["b"])
    assert KEY not in str(err.value)
    time.sleep(0.1)
    assert len(stub.requests) == 3 and judge.requests == 3


def test_missing_key_names_the_variable(server, monkeypatch) -> None:
    monkeypatch.delenv("MY_JUDGE_KEY", raising=False)
    stub, url = server(lambda p, a, b: "A")
    judge = OpenAIPairwiseJudge(url, "m", api_key_env="MY_JUDGE_KEY")
    with pytest.raises(InpoError, match="MY_JUDGE_KEY is not set"):
        judge.prob(["x"], ["a"], ["b"])
    assert stub.requests == []
    keyless = OpenAIPairwiseJudge(url, "m", api_key_env=None, max_retries=0)
    assert keyless.prob(["x"], ["a"], ["b"]).tolist() == [0.5]  # "A" both orders: position bias cancels
    assert all(r["auth"] is None for r in stub.requests)


def test_bad_template_and_url() -> None:
    with pytest.raises(InpoError, match="template"):
        OpenAIPairwiseJudge("http://127.0.0.1:1/v1", "m", template="Which is better? {response_a} {answer}")
    with pytest.raises(InpoError, match="base_url"):
        OpenAIPairwiseJudge("127.0.0.1:1/v1", "m")
