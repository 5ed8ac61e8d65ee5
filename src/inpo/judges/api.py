"""A chat model behind an OpenAI-compatible ``/v1/chat/completions`` endpoint as a pairwise judge.

Works with any server speaking that protocol (OpenAI, vLLM's ``vllm serve``, llama.cpp's server, TGI's
Messages API, ...), using only the standard library (``urllib``): no SDK, no extra dependency.

Protocol (LLM-as-a-judge with position swapping, as in MT-Bench / AlpacaEval; Zheng et al. 2023,
arXiv 2306.05685): the model is shown the prompt and two responses labelled A and B and asked which is
better. Its reply is parsed as ``A`` / ``B`` (P(first better) = 1 / 0) or as a number in [0, 1]
(P(first better)). Every pair is asked in both orders and combined as

    P(a > b) = (f(a, b) + 1 - f(b, a)) / 2,

with f(u, v) = the parsed P(first better) when u is shown first. So ``P(a > b) + P(b > a) = 1`` exactly
and a pure position bias (a judge that favours whichever response comes first by a constant) cancels.
A reply that does not parse counts as a tie (f = 0.5) and is counted in :attr:`parse_failures`.

The API key is read from the environment variable named by ``api_key_env`` at each request; it is never
stored on the object, never part of ``repr``/``str``/:meth:`config`, and redacted from error messages.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import string
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from inpo.errors import InpoError
from inpo.judges.base import matrix_from_prob

DEFAULT_TEMPLATE = (
    "You are comparing two responses to the same prompt. Decide which response is better: more helpful, "
    "correct and clear.\n\n"
    "[Prompt]\n{prompt}\n\n"
    "[Response A]\n{response_a}\n\n"
    "[Response B]\n{response_b}\n\n"
    "Answer with a single letter: A if Response A is better, B if Response B is better."
)
TEMPLATE_FIELDS = {"prompt", "response_a", "response_b"}
CONFIG_NAME = "judge_config.json"

# "A", "b", "[[A]]", "(B).", "Response A", "**A**": one label and nothing else
_LABEL_RE = re.compile(r"^\W*(?:response\s+)?([AB])\W*$", re.IGNORECASE)
_NUMBER_RE = re.compile(r"^\s*([01](?:\.\d+)?|\.\d+)\s*$")
_RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


def parse_verdict(text: str) -> float | None:
    """P(the first-shown response is better) from a judge reply, or None if it does not parse.

    ``"A"`` -> 1.0, ``"B"`` -> 0.0 (case, brackets, ``Response`` prefix, punctuation tolerated), a number in
    [0, 1] -> that number (read as P(A better)). Anything else (prose, both letters, out-of-range) -> None.
    """
    m = _LABEL_RE.match(text.strip())
    if m:
        return 1.0 if m.group(1).upper() == "A" else 0.0
    m = _NUMBER_RE.match(text)
    if m:
        v = float(m.group(1))
        if 0.0 <= v <= 1.0:
            return v
    return None


def combine_orders(first_ab: float, first_ba: float) -> float:
    """P(a > b) from f(a, b) (a shown first) and f(b, a) (b shown first): ``(f(a, b) + 1 - f(b, a)) / 2``."""
    return 0.5 * (first_ab + 1.0 - first_ba)


def _check_template(template: str) -> None:
    try:
        fields = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    except ValueError as e:
        raise InpoError(f"API judge: template: {e} (write literal braces as {{{{ and }}}})") from None
    if fields != TEMPLATE_FIELDS:
        raise InpoError(f"API judge: template must use exactly the fields {{prompt}}, {{response_a}}, "
                        f"{{response_b}}; got {sorted(fields)}")


class OpenAIPairwiseJudge:
    """A :class:`~inpo.judges.base.Judge` backed by an OpenAI-compatible chat-completions endpoint.

    Args:
        base_url: the API root, e.g. ``https://api.openai.com/v1`` or ``http://127.0.0.1:8000/v1``;
            requests go to ``{base_url}/chat/completions``.
        model: the served model name.
        api_key_env: name of the environment variable holding the key, read at each request (``None``:
            send no ``Authorization`` header, for local servers without auth). Missing -> InpoError.
        timeout: seconds per HTTP request.
        max_retries: retries after the first attempt on timeouts, connection errors and HTTP 408/409/425/
            429/5xx, with exponential backoff ``backoff * 2**attempt`` (+-25% jitter); then InpoError.
            Other HTTP errors (401, 404, 400, ...) fail at once.
        template: the user message; must use ``{prompt}``, ``{response_a}``, ``{response_b}``.
        system: optional system message.
        max_tokens, temperature: sampling parameters of the request (greedy, short reply by default).
        extra_body: merged into the JSON request (e.g. ``{"max_completion_tokens": 4}``).
        concurrency: requests in flight at once (threads).

    Attributes ``requests``, ``parse_failures`` count HTTP requests made and replies that did not parse.
    """

    kind = "openai"

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key_env: str | None = "OPENAI_API_KEY",
        timeout: float = 30.0,
        max_retries: int = 3,
        backoff: float = 1.0,
        template: str = DEFAULT_TEMPLATE,
        system: str | None = None,
        max_tokens: int = 8,
        temperature: float = 0.0,
        extra_body: dict[str, Any] | None = None,
        concurrency: int = 4,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise InpoError(f"API judge: base_url must start with http:// or https://, got {base_url!r}")
        if not model:
            raise InpoError("API judge: model is empty")
        if not (timeout > 0 and math.isfinite(timeout)):
            raise InpoError(f"API judge: timeout must be a finite number > 0, got {timeout}")
        if max_retries < 0 or backoff < 0 or concurrency < 1:
            raise InpoError("API judge: max_retries and backoff must be >= 0 and concurrency >= 1")
        _check_template(template)
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api_key_env = api_key_env
        self.timeout = float(timeout)
        self.max_retries = int(max_retries)
        self.backoff = float(backoff)
        self.template = template
        self.system = system
        self.max_tokens = int(max_tokens)
        self.temperature = float(temperature)
        self.extra_body = dict(extra_body or {})
        self.concurrency = int(concurrency)
        self.requests = 0
        self.parse_failures = 0
        self._lock = threading.Lock()

    # ---------------------------------------------------------------- config (never holds the key)
    def config(self) -> dict[str, Any]:
        """Constructor arguments as a JSON-able dict (the key's variable *name* only, never its value)."""
        return {
            "kind": "openai", "base_url": self.base_url, "model": self.model, "api_key_env": self.api_key_env,
            "timeout": self.timeout, "max_retries": self.max_retries, "backoff": self.backoff,
            "template": self.template, "system": self.system, "max_tokens": self.max_tokens,
            "temperature": self.temperature, "extra_body": self.extra_body, "concurrency": self.concurrency,
        }

    def save(self, out_dir: str | Path) -> Path:
        """Write ``judge_config.json`` (:meth:`config`, ``kind: "openai"``; no key) into ``out_dir``."""
        d = Path(out_dir)
        d.mkdir(parents=True, exist_ok=True)
        (d / CONFIG_NAME).write_text(json.dumps(self.config(), indent=1) + "\n")
        return d

    @classmethod
    def load(cls, path: str | Path) -> OpenAIPairwiseJudge:
        """Read a directory written by :meth:`save` (or its ``judge_config.json``)."""
        p = Path(path)
        p = p / CONFIG_NAME if p.is_dir() else p
        try:
            cfg = json.loads(p.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise InpoError(f"{p}: cannot read the API judge config ({type(e).__name__})") from None
        if not isinstance(cfg, dict) or cfg.get("kind") != "openai":
            raise InpoError(f"{p}: not an API judge config (expected \"kind\": \"openai\")")
        return cls.from_config(cfg)

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> OpenAIPairwiseJudge:
        kwargs = {k: v for k, v in cfg.items() if k != "kind"}
        try:
            return cls(**kwargs)
        except TypeError as e:
            raise InpoError(f"API judge config: {e}") from None

    def __repr__(self) -> str:
        return (f"OpenAIPairwiseJudge(base_url={self.base_url!r}, model={self.model!r}, "
                f"api_key_env={self.api_key_env!r}, timeout={self.timeout}, max_retries={self.max_retries})")

    __str__ = __repr__

    # ---------------------------------------------------------------- HTTP
    def _key(self) -> str | None:
        if self.api_key_env is None:
            return None
        key = os.environ.get(self.api_key_env)
        if not key:
            raise InpoError(f"API judge: environment variable {self.api_key_env} is not set (it must hold the API "
                            "key; or pass api_key_env=None for a server without authentication)")
        return key

    def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        key = self._key()

        def redact(text: str) -> str:
            return text.replace(key, "***") if key else text

        headers = {"Content-Type": "application/json"}
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        url = f"{self.base_url}/chat/completions"
        data = json.dumps(body).encode()
        last = ""
        for attempt in range(self.max_retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1) * random.uniform(0.75, 1.25))
            with self._lock:
                self.requests += 1
            req = urllib.request.Request(url, data=data, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    payload = resp.read()
            except urllib.error.HTTPError as e:
                detail = redact(e.read(300).decode("utf-8", "replace").strip().replace("\n", " "))
                last = f"HTTP {e.code} {redact(str(e.reason))}: {detail}".rstrip(": ")
                if e.code not in _RETRY_STATUS:
                    raise InpoError(f"API judge: {url}: {last}") from None
                continue
            except (TimeoutError, urllib.error.URLError, ConnectionError, OSError) as e:
                reason = getattr(e, "reason", e)
                last = "timeout" if isinstance(reason, TimeoutError) else redact(f"{type(reason).__name__}: {reason}")
                continue
            try:
                return json.loads(payload)
            except json.JSONDecodeError:
                raise InpoError(f"API judge: {url}: the reply is not JSON") from None
        raise InpoError(f"API judge: {url}: request failed after {self.max_retries + 1} attempts ({last})")

    def _ask(self, prompt: str, first: str, second: str) -> float:
        """P(first better) from one request; a reply that does not parse counts as a tie (0.5)."""
        messages = [] if self.system is None else [{"role": "system", "content": self.system}]
        content = self.template.format(prompt=prompt, response_a=first, response_b=second)
        messages.append({"role": "user", "content": content})
        body = {"model": self.model, "messages": messages, "max_tokens": self.max_tokens,
                "temperature": self.temperature, **self.extra_body}
        reply = self._post(body)
        try:
            text = reply["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            text = None
        verdict = parse_verdict(text) if isinstance(text, str) else None
        if verdict is None:
            with self._lock:
                self.parse_failures += 1
            return 0.5
        return verdict

    # ---------------------------------------------------------------- Judge protocol
    def prob(self, prompts: list[str], responses_a: list[str], responses_b: list[str]) -> torch.Tensor:
        """P(a > b) per row: both orders asked, combined by :func:`combine_orders`."""
        if not len(prompts) == len(responses_a) == len(responses_b):
            raise InpoError(
                f"judge.prob: lengths differ (prompts {len(prompts)}, a {len(responses_a)}, b {len(responses_b)})"
            )
        jobs = [(x, a, b) for x, a, b in zip(prompts, responses_a, responses_b, strict=True)]
        jobs += [(x, b, a) for x, a, b in zip(prompts, responses_a, responses_b, strict=True)]
        if self.concurrency == 1 or len(jobs) == 1:
            f = [self._ask(*j) for j in jobs]
        else:
            with ThreadPoolExecutor(max_workers=min(self.concurrency, len(jobs))) as pool:
                f = list(pool.map(lambda j: self._ask(*j), jobs))
        n = len(prompts)
        return torch.tensor([combine_orders(f[i], f[n + i]) for i in range(n)], dtype=torch.float64)

    def raw_prob(self, prompts: list[str], responses_a: list[str], responses_b: list[str]) -> torch.Tensor:
        """f(a, b) per row: P(first better) with ``a`` shown first, one order only (one request per row; the
        position-bias diagnostic of ``inpo eval --reference``)."""
        if not len(prompts) == len(responses_a) == len(responses_b):
            raise InpoError(
                f"judge.prob: lengths differ (prompts {len(prompts)}, a {len(responses_a)}, b {len(responses_b)})"
            )
        jobs = list(zip(prompts, responses_a, responses_b, strict=True))
        if self.concurrency == 1 or len(jobs) <= 1:
            f = [self._ask(*j) for j in jobs]
        else:
            with ThreadPoolExecutor(max_workers=min(self.concurrency, len(jobs))) as pool:
                f = list(pool.map(lambda j: self._ask(*j), jobs))
        return torch.tensor(f, dtype=torch.float64)

    def matrix(self, prompt: str, responses: list[str]) -> torch.Tensor:
        """K x K matrix from K(K-1)/2 pairs, each asked in both orders: K(K-1) requests."""
        return matrix_from_prob(self, prompt, responses)
