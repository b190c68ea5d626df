"""A local pairwise judge: a harness model compares the log-probabilities of two verdict tokens.

The judge prompt (the same messages the API judge gets) is rendered with the judge model's chat
template and the model's next-token log-probabilities of the verdict tokens ("a" and "b" by
default) decide: the likelier letter wins, equal values are a tie. Each answer is cut to
``max_output_tokens`` tokens first, which bounds the prompt length. By default the embedded
SmolLM2-135M-Instruct is the judge: a weak judge, useful for pipelines and smoke tests; use an
API judge or a stronger local model for numbers worth reporting.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from harness.data.records import Message
from harness.errors import EvalError
from harness.eval.judges import JudgePrompt, Verdict, default_prompt
from harness.eval.lm import EvalLM


@dataclass
class LocalJudge:
    """Judge with a loaded harness model (``EvalLM``); ``spec`` names it in caches and results."""

    lm: EvalLM
    spec: str = "smollm2-135m"
    prompt: JudgePrompt = field(default_factory=default_prompt)
    template: str | object | None = None  # None: the tokenizer's chat template, else "survey"
    verdict_tokens: tuple[str, str] = ("a", "b")
    max_output_tokens: int = 512

    @property
    def chunk(self) -> int:
        return self.lm.batch_size

    def __post_init__(self) -> None:
        tok = self.lm.tokenizer
        self.token_ids = []
        for text in self.verdict_tokens:
            ids = tok.encode(text)
            if len(ids) != 1:
                raise EvalError(f"local judge: verdict token {text!r} is {len(ids)} tokens, expected 1")
            self.token_ids.append(ids[0])
        if self.template is None:
            self.template = "tokenizer" if getattr(tok, "chat_template", None) else "survey"

    @property
    def identity(self) -> dict:
        template = self.template if isinstance(self.template, str) else getattr(self.template, "name", "custom")
        return {"name": f"local:{self.spec}", "kind": "local", "model": self.spec,
                "prompt": self.prompt.fingerprint, "template": template,
                "verdict_tokens": list(self.verdict_tokens), "max_output_tokens": self.max_output_tokens}

    def _clip(self, text: str) -> str:
        tok = self.lm.tokenizer
        ids = tok.encode(text)
        return text if len(ids) <= self.max_output_tokens else tok.decode(ids[: self.max_output_tokens])

    def render(self, instruction: str, output_1: str, output_2: str) -> str:
        """The text whose next token is the verdict."""
        from harness.data.templates import render_prompt

        messages = self.prompt.render(instruction, self._clip(output_1), self._clip(output_2))
        return render_prompt(self.template, [Message(m["role"], m["content"]) for m in messages], self.lm.tokenizer)

    def judge_pairs(self, pairs: list[tuple[str, str, str]]) -> list[Verdict]:
        """One batched forward pass per chunk of pairs; the likelier verdict token wins."""
        tok = self.lm.tokenizer
        prompts = [tok.encode(self.render(*p)) for p in pairs]
        logprobs = self.lm.next_token_logprobs(prompts, desc="judging")
        verdicts = []
        for row in logprobs:
            first, second = (float(row[i]) for i in self.token_ids)
            preference = 1.0 if first > second else 2.0 if second > first else 1.5
            verdicts.append(Verdict(preference, f"logp({self.verdict_tokens[0]})={first:.4f} "
                                                f"logp({self.verdict_tokens[1]})={second:.4f}"))
        return verdicts
