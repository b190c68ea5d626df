"""A judge behind any OpenAI-compatible chat-completions endpoint (standard library only).

``POST {base_url}/chat/completions`` with ``{"model", "messages", "temperature", "max_tokens"}``
and ``Authorization: Bearer <key>``; the key is read from the environment variable named by
``api_key_env`` at request time and is never logged, written, or put into an error message
(the judge's identity, which goes into caches and results, holds the variable's name only).
Transient failures (connection errors, timeouts, HTTP 408/409/429/5xx, a reply that is not the
expected JSON) are retried with exponential back-off; other HTTP errors fail at once. Requests
are spaced to at most ``requests_per_minute``.
"""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Callable

from harness.errors import EvalError
from harness.eval.judges import JudgePrompt, Verdict, default_prompt, parse_verdict

RETRYABLE_STATUS = {408, 409, 429, 500, 502, 503, 504}


@dataclass(frozen=True)
class OpenAIJudgeConfig:
    """Endpoint, model and pacing of an OpenAI-compatible judge."""

    base_url: str
    model: str
    api_key_env: str = "OPENAI_API_KEY"
    temperature: float = 0.0
    max_tokens: int = 16
    max_retries: int = 5
    backoff_s: float = 1.0
    max_backoff_s: float = 60.0
    timeout_s: float = 120.0
    requests_per_minute: float | None = 60.0


class RateLimiter:
    """Spaces calls so that at most ``per_minute`` start in any minute (None = no limit)."""

    def __init__(self, per_minute: float | None, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep):
        self.interval = 60.0 / per_minute if per_minute else 0.0
        self.clock, self.sleep = clock, sleep
        self.next_start = 0.0
        self.lock = threading.Lock()

    def wait(self) -> None:
        if not self.interval:
            return
        with self.lock:
            now = self.clock()
            if now < self.next_start:
                self.sleep(self.next_start - now)
                now = self.next_start
            self.next_start = now + self.interval


class _Transient(Exception):
    """A failure worth retrying (its message never contains the key)."""


@dataclass
class OpenAIJudge:
    """Pairwise judge over an OpenAI-compatible chat-completions endpoint."""

    config: OpenAIJudgeConfig
    prompt: JudgePrompt = field(default_factory=default_prompt)
    sleep: Callable[[float], None] = time.sleep
    attempts: int = 0  # HTTP requests sent (retries included), for reporting and tests
    chunk: int = 1  # one pair per call: each verdict is cached as soon as it arrives

    def __post_init__(self) -> None:
        self.limiter = RateLimiter(self.config.requests_per_minute, sleep=self.sleep)

    @property
    def identity(self) -> dict:
        c = self.config
        return {"name": f"openai:{c.model}", "kind": "openai", "model": c.model,
                "base_url": c.base_url, "prompt": self.prompt.fingerprint,
                "temperature": c.temperature, "max_tokens": c.max_tokens}

    def _api_key(self) -> str:
        key = os.environ.get(self.config.api_key_env)
        if not key:
            raise EvalError(f"the judge's API key is not set: export {self.config.api_key_env}=...")
        return key

    def _request(self, messages: list[dict[str, str]]) -> str:
        c = self.config
        body = json.dumps({"model": c.model, "messages": messages, "temperature": c.temperature,
                           "max_tokens": c.max_tokens}).encode("utf-8")
        request = urllib.request.Request(
            c.base_url.rstrip("/") + "/chat/completions", data=body, method="POST",
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {self._api_key()}"},
        )
        self.limiter.wait()
        self.attempts += 1
        try:
            with urllib.request.urlopen(request, timeout=c.timeout_s) as response:
                payload = response.read()
        except urllib.error.HTTPError as exc:
            if exc.code in RETRYABLE_STATUS:
                raise _Transient(f"HTTP {exc.code}") from None
            raise EvalError(f"judge endpoint {c.base_url} answered HTTP {exc.code} ({exc.reason})") from None
        except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
            reason = getattr(exc, "reason", exc)
            raise _Transient(f"connection failed: {type(reason).__name__}") from None
        try:
            content = json.loads(payload)["choices"][0]["message"]["content"]
        except (json.JSONDecodeError, KeyError, IndexError, TypeError, UnicodeDecodeError):
            raise _Transient("malformed reply (not a chat completion)") from None
        if not isinstance(content, str):
            raise _Transient("malformed reply (content is not a string)")
        return content

    def complete(self, messages: list[dict[str, str]]) -> str:
        """The reply text, retrying transient failures with exponential back-off."""
        delay = self.config.backoff_s
        for attempt in range(self.config.max_retries + 1):
            try:
                return self._request(messages)
            except _Transient as exc:
                if attempt == self.config.max_retries:
                    raise EvalError(f"judge endpoint {self.config.base_url} failed "
                                    f"{attempt + 1} times; last: {exc}") from None
                self.sleep(delay)
                delay = min(delay * 2, self.config.max_backoff_s)
        raise AssertionError("unreachable")

    def judge_pairs(self, pairs: list[tuple[str, str, str]]) -> list[Verdict]:
        """One request per ordered pair; an unparseable reply is a verdict with preference None."""
        verdicts = []
        for instruction, output_1, output_2 in pairs:
            reply = self.complete(self.prompt.render(instruction, output_1, output_2))
            verdicts.append(Verdict(parse_verdict(reply), reply))
        return verdicts
