"""The OpenAI-compatible judge against a scripted chat-completions server on loopback."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from harness.errors import EvalError
from harness.eval.judge_openai import OpenAIJudge, OpenAIJudgeConfig, RateLimiter
from harness.eval.judges import VerdictCache
from harness.eval.winrate_cli import WinrateArgs, main

KEY = "sk-test-SECRET-4f9c2e71"
KEY_ENV = "HARNESS_TEST_JUDGE_KEY"


class ScriptedServer:
    """Prefers the answer tagged [better]; fails the first request (HTTP 500), sends one malformed
    body, answers gibberish for instructions tagged [confusing], and 401 once ``deny_after`` is hit."""

    def __init__(self):
        self.requests: list[dict] = []
        self.auth: list[str] = []
        self.deny_after: int | None = None
        self.malformed_sent = False
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.auth.append(self.headers.get("Authorization", ""))
                server.requests.append(body)
                number = len(server.requests)
                if self.path != "/v1/chat/completions":
                    return self._send(404, b"{}")
                if server.deny_after is not None and number > server.deny_after:
                    return self._send(401, b'{"error": "denied"}')
                if number == 1:
                    return self._send(500, b'{"error": "overloaded"}')
                user = body["messages"][-1]["content"]
                if number == 3 and not server.malformed_sent:
                    server.malformed_sent = True
                    return self._send(200, b"this is not json")
                answer_a = user.split("### Answer (a)")[1].split("### Answer (b)")[0]
                if "[confusing]" in user:
                    content = "I cannot decide."
                else:
                    content = "a" if "[better]" in answer_a else "b"
                reply = {"choices": [{"message": {"role": "assistant", "content": content}}]}
                return self._send(200, json.dumps(reply).encode())

            def _send(self, code, payload):
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = ScriptedServer()
    yield s
    s.close()


def _outputs(tmp_path: Path) -> tuple[Path, Path]:
    """7 pairs: the model is better on 4, the baseline on 2, one pair the judge cannot parse."""
    model, baseline = [], []
    for i in range(7):
        instruction = f"Question {i}: explain topic {i}." + (" [confusing]" if i == 6 else "")
        model_better = i < 4
        model.append({"instruction": instruction, "output": f"model answer {i}" + (" [better]" if model_better else ""),
                      "generator": "m"})
        baseline.append({"instruction": instruction, "output": f"base answer {i}" + ("" if model_better else " [better]"),
                         "generator": "b"})
    baseline = baseline[::-1]  # the order of the files may differ; instructions line them up
    paths = tmp_path / "model_outputs.json", tmp_path / "baseline_outputs.json"
    paths[0].write_text(json.dumps(model))
    paths[1].write_text(json.dumps(baseline))
    return paths


def _judge(server, sleeps) -> OpenAIJudge:
    config = OpenAIJudgeConfig(base_url=server.base_url, model="judge-1", api_key_env=KEY_ENV,
                               requests_per_minute=None, backoff_s=0.5, max_retries=3, timeout_s=10)
    return OpenAIJudge(config, sleep=sleeps.append)


def test_openai_judge_win_rate_retries_resume_and_secrecy(server, tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    model_path, baseline_path = _outputs(tmp_path)
    out = tmp_path / "out"
    args = WinrateArgs(model_outputs=model_path, baseline_outputs=baseline_path, out=out,
                       api_key_env=KEY_ENV, judge="openai:judge-1")

    # First run is cut short: the server starts refusing (HTTP 401, not retryable) mid-way.
    server.deny_after = 8
    sleeps: list[float] = []
    with pytest.raises(EvalError, match="HTTP 401"):
        main(args, judge=_judge(server, sleeps), log=lambda *_: None)
    cached = VerdictCache(out / "winrate_verdicts.jsonl")
    judged_first = len(cached.entries)
    assert judged_first == 8 - 2  # 8 requests: one HTTP 500 and one malformed body were retried
    assert sleeps == [0.5, 0.5]  # one back-off per transient failure, restarted per request

    # The rerun judges only what is missing: 14 ordered pairs in all, none asked twice.
    server.deny_after = None
    before = len(server.requests)
    result = main(args, judge=_judge(server, []), log=lambda *_: None)
    assert len(server.requests) - before == 14 - judged_first
    # Requests 1 (HTTP 500), 3 (malformed) and 9 (401) failed; every other one is a distinct pair.
    answered = [r["messages"][-1]["content"] for number, r in enumerate(server.requests, start=1)
                if number not in (1, 3, 9)]
    assert len(answered) == len(set(answered)) == 14

    m = result.metrics
    assert result.score == pytest.approx(100 * 4 / 6)
    assert m["n"] == 6 and m["n_pairs"] == 7
    assert m["parse_failures"] == 2  # the [confusing] pair in both orders
    assert m["ties"] == 0 and m["wins"] == 4 and m["losses"] == 2
    assert m["position_bias"] == pytest.approx(0.0)  # a consistent judge picks first and second equally
    assert m["order_consistency"] == pytest.approx(1.0)
    assert result.extra["judge"]["name"] == "openai:judge-1"

    # A third run is answered entirely from the cache.
    before = len(server.requests)
    again = main(args, judge=_judge(server, []), log=lambda *_: None)
    assert len(server.requests) == before and again.score == result.score

    # The key went to the server and nowhere else.
    assert all(a == f"Bearer {KEY}" for a in server.auth)
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert {p.name for p in written} >= {"winrate.json", "winrate_annotations.json", "winrate_verdicts.jsonl"}
    for path in written:
        assert KEY not in path.read_text(encoding="utf-8"), path

    annotations = json.loads((out / "winrate_annotations.json").read_text())
    assert len(annotations) == 7 and {a["preference"] for a in annotations} == {1.0, 2.0, None}


def test_openai_judge_gives_up_after_retries_without_leaking_the_key(server, tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    server.deny_after = None
    config = OpenAIJudgeConfig(base_url=server.base_url.replace("/v1", "/wrong"), model="judge-1",
                               api_key_env=KEY_ENV, requests_per_minute=None)
    judge = OpenAIJudge(config, sleep=lambda s: None)
    with pytest.raises(EvalError) as info:
        judge.judge_pairs([("q", "x", "y")])
    assert "404" in str(info.value) and KEY not in str(info.value)

    dead = OpenAIJudgeConfig(base_url="http://127.0.0.1:9/v1", model="judge-1", api_key_env=KEY_ENV,
                             requests_per_minute=None, max_retries=2, timeout_s=2)
    sleeps: list[float] = []
    judge = OpenAIJudge(dead, sleep=sleeps.append)
    with pytest.raises(EvalError, match="failed 3 times") as info:
        judge.judge_pairs([("q", "x", "y")])
    assert sleeps == [1.0, 2.0] and judge.attempts == 3 and KEY not in str(info.value)


def test_missing_key_is_a_clear_error(server, monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    judge = OpenAIJudge(OpenAIJudgeConfig(base_url=server.base_url, model="m", api_key_env=KEY_ENV))
    with pytest.raises(EvalError, match=KEY_ENV):
        judge.judge_pairs([("q", "x", "y")])
    assert server.requests == []


def test_rate_limiter_spaces_requests():
    now = [100.0]
    slept: list[float] = []

    def sleep(seconds):
        slept.append(seconds)
        now[0] += seconds

    limiter = RateLimiter(120, clock=lambda: now[0], sleep=sleep)  # one request every 0.5 s
    for _ in range(4):
        limiter.wait()
    assert slept == pytest.approx([0.5, 0.5, 0.5])
    now[0] += 10
    limiter.wait()
    assert len(slept) == 3
