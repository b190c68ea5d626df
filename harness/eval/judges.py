"""Pairwise judges behind one interface, the judge prompt, verdict parsing and the verdict cache.

A judge sees an instruction and two outputs (``output_1`` shown first) and returns a
``Verdict`` whose ``preference`` follows alpaca_eval (1: output_1 better, 2: output_2 better,
1.5: tie, None: the reply could not be parsed). Implementations: ``OpenAIJudge``
(``harness.eval.judge_openai``, any chat-completions endpoint) and ``LocalJudge``
(``harness.eval.judge_local``, a harness model comparing the log-probabilities of the two
verdict tokens).

The default prompt is the harness's own. A user may pass a prompt file instead: placeholders
``{instruction}``, ``{output_1}``, ``{output_2}``; chat markup ``<|im_start|>ROLE ... <|im_end|>``
(alpaca_eval's annotator prompt files use it) splits it into messages; alpaca_eval's ranking
replies (``[{'model': 'model_1', 'rank': 1}, ...]``) are understood by the parser.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from harness.errors import EvalError

SYSTEM_PROMPT = (
    "You are an impartial judge of AI assistants. You compare two answers to the same request "
    "and decide which one a careful human reader would prefer."
)

USER_PROMPT = (
    "Compare two answers to the request below. Prefer the answer that follows the request more "
    "closely and is more helpful, correct, complete and clearly written. Length alone is not a "
    "merit, and the order in which the answers are shown must not influence you.\n\n"
    "### Request\n{instruction}\n\n"
    "### Answer (a)\n{output_1}\n\n"
    "### Answer (b)\n{output_2}\n\n"
    "Which answer is better? Reply with a single letter: a or b."
)

_CHAT_BLOCK = re.compile(r"<\|im_start\|>(system|user|assistant)\s*\n(.*?)<\|im_end\|>", re.DOTALL)
_RANKING = re.compile(r"""['"]model['"]\s*:\s*['"](model_[12])['"]\s*,\s*['"]rank['"]\s*:\s*(\d+)""")
_SHORT = re.compile(r"^\W*(?:answer|output|model)?[\s_]*\(?([ab12])\)?(?=\W|$)")


@dataclass(frozen=True)
class Verdict:
    """A judge's decision on one ordered pair and its raw reply (for the cache and debugging)."""

    preference: float | None
    raw: str = ""


@dataclass(frozen=True)
class JudgePrompt:
    """Message templates with ``{instruction}``, ``{output_1}``, ``{output_2}`` placeholders."""

    messages: tuple[tuple[str, str], ...]

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.messages).encode()).hexdigest()[:12]

    def render(self, instruction: str, output_1: str, output_2: str) -> list[dict[str, str]]:
        """Chat messages with the placeholders filled (other braces are left alone)."""
        values = {"instruction": instruction, "output_1": output_1, "output_2": output_2}

        def fill(template: str) -> str:
            return re.sub(r"\{(instruction|output_1|output_2)\}", lambda m: values[m.group(1)], template)

        return [{"role": role, "content": fill(text)} for role, text in self.messages]


def default_prompt() -> JudgePrompt:
    """The harness's own pairwise prompt (verdict: the single letter a or b)."""
    return JudgePrompt((("system", SYSTEM_PROMPT), ("user", USER_PROMPT)))


def load_prompt(path: str | Path) -> JudgePrompt:
    """A user-supplied prompt file (chat markup optional); it must hold all three placeholders."""
    path = Path(path)
    if not path.is_file():
        raise EvalError(f"judge prompt file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    for name in ("instruction", "output_1", "output_2"):
        if "{" + name + "}" not in text:
            raise EvalError(f"judge prompt file {path}: placeholder {{{name}}} is missing")
    blocks = _CHAT_BLOCK.findall(text)
    messages = tuple((role, body.strip()) for role, body in blocks) if blocks else (("user", text.strip()),)
    return JudgePrompt(messages)


def parse_verdict(reply: str) -> float | None:
    """Preference from a judge's reply: 'a'/'b' (or 1/2, 'Answer (a)'), 'tie', or a ranking list."""
    ranks = _RANKING.findall(reply)
    if ranks:
        best = [model for model, rank in ranks if rank == "1"]
        if len(best) == 1:
            return 1.0 if best[0] == "model_1" else 2.0
        return None
    text = reply.strip().lower()
    if text.strip(" .!") == "tie":
        return 1.5
    match = _SHORT.match(text.split("\n", 1)[0]) if text else None
    if match is None:
        return None
    return 1.0 if match.group(1) in ("a", "1") else 2.0


class Judge(Protocol):
    """What every judge offers: a stable identity and verdicts on ordered pairs."""

    chunk: int  # pairs per judge_pairs call

    @property
    def identity(self) -> dict: ...

    def judge_pairs(self, pairs: list[tuple[str, str, str]]) -> list[Verdict]:
        """Verdicts for (instruction, output_1, output_2) triples, in order."""
        ...


def judge_key(identity: dict, instruction: str, output_1: str, output_2: str) -> str:
    """Cache key of one ordered pair under one judge."""
    blob = json.dumps([identity, instruction, output_1, output_2], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class VerdictCache:
    """Append-only JSONL of verdicts keyed by judge and ordered pair; survives crashes.

    Every verdict is written and fsynced as soon as it exists, so an interrupted run loses at most
    the line being written. On open, an unterminated last line (the crash case) is discarded and
    counted in ``discarded``; any other malformed line raises EvalError naming the line.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.entries: dict[str, Verdict] = {}
        self.discarded = 0
        if self.path.exists():
            self._load()

    def _load(self) -> None:
        raw = self.path.read_bytes()
        lines = raw.split(b"\n")
        tail = lines.pop()  # the part after the last newline: empty unless a write was cut short
        if tail.strip():
            self.discarded = 1
            with open(self.path, "r+b") as handle:  # drop the partial line so appends stay clean
                handle.truncate(len(raw) - len(tail))
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                self.entries[row["key"]] = Verdict(row["preference"], row.get("raw", ""))
            except (json.JSONDecodeError, KeyError, TypeError):
                raise EvalError(f"{self.path}: line {number} is not a verdict record") from None

    def get(self, key: str) -> Verdict | None:
        return self.entries.get(key)

    def put(self, key: str, verdict: Verdict, judge_name: str) -> None:
        """Record a verdict (appended and fsynced immediately)."""
        self.entries[key] = verdict
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps({"key": key, "judge": judge_name, "preference": verdict.preference,
                           "raw": verdict.raw}, ensure_ascii=False)
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(line + "\n")
            handle.flush()
            os.fsync(handle.fileno())


def judge_with_cache(judge: Judge, pairs: list[tuple[str, str, str]], cache: VerdictCache | None,
                     *, progress=None) -> list[Verdict]:
    """Verdicts for the pairs, taking cached ones and judging (then caching) only the rest.

    Pairs go to the judge ``judge.chunk`` at a time (1 for an API judge, so every answer is
    cached the moment it arrives; a batch for a local model) and each chunk is cached at once.
    """
    identity = judge.identity
    chunk = max(1, int(getattr(judge, "chunk", 1)))
    keys = [judge_key(identity, *p) for p in pairs]
    results: list[Verdict | None] = [cache.get(k) if cache else None for k in keys]
    todo = [i for i, v in enumerate(results) if v is None]
    if progress is not None:
        progress(len(pairs) - len(todo))
    for start in range(0, len(todo), chunk):
        batch = todo[start:start + chunk]
        verdicts = judge.judge_pairs([pairs[i] for i in batch])
        for i, verdict in zip(batch, verdicts):
            results[i] = verdict
            if cache is not None:
                cache.put(keys[i], verdict, identity["name"])
        if progress is not None:
            progress(len(batch))
    return results  # type: ignore[return-value]
