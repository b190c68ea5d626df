"""MMLU under two protocols, reported per subject, per category and as the size-weighted average.

``standard`` (lm-evaluation-harness style): plain text, "The following are multiple choice
questions (with answers) about SUBJECT.\\n\\n", k exemplars from ``dev`` (k = 0 or 5) each as
"question\\nA. ..\\nB. ..\\nC. ..\\nD. ..\\nAnswer: X\\n\\n", then the question ending in "Answer:";
the prediction is the choice with the highest log-likelihood of " A" .. " D".

``survey`` (LLMSurvey ``mmlu.py``): zero-shot by default, the same header and question placed as
the user turn of the chat template; the prediction is the argmax of the next-token logits
restricted to the tokens "A" .. "D". ``replicate_defects`` restores the survey code's header with
a doubled space ("about  abstract algebra.", from its ``format_subject``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from harness.data.records import Message
from harness.errors import EvalError
from harness.eval.lm import EvalLM
from harness.eval.mmlu_data import CATEGORIES, LETTERS, MMLUItem, category_of, load_mmlu
from harness.eval.results import EvalResult

PROTOCOLS = ("standard", "survey")


@dataclass(frozen=True)
class MMLUConfig:
    """What to evaluate and how."""

    source: str
    protocol: str = "standard"
    shots: int | None = None  # None: 5 for standard, 0 for survey
    split: str = "test"
    subjects: tuple[str, ...] | None = None
    limit: int | None = None  # items per subject
    template: str | object = "survey"  # chat template of the survey protocol
    replicate_defects: bool = False

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise EvalError(f"unknown MMLU protocol {self.protocol!r}; expected one of {PROTOCOLS}")
        if self.shots is not None and not 0 <= self.shots <= 5:
            raise EvalError(f"MMLU shots must be between 0 and 5, got {self.shots}")

    @property
    def k(self) -> int:
        if self.shots is not None:
            return self.shots
        return 5 if self.protocol == "standard" else 0


def subject_words(subject: str, *, replicate_defects: bool = False) -> str:
    """``high_school_physics`` -> ``high school physics`` (the survey code prefixed a space)."""
    words = " ".join(subject.split("_"))
    return " " + words if replicate_defects else words


def header(subject: str, *, replicate_defects: bool = False) -> str:
    return (f"The following are multiple choice questions (with answers) about "
            f"{subject_words(subject, replicate_defects=replicate_defects)}.\n\n")


def format_item(item: MMLUItem, *, with_answer: bool) -> str:
    """``question\\nA. ..\\nB. ..\\nC. ..\\nD. ..\\nAnswer:`` (plus `` X\\n\\n`` for an exemplar)."""
    text = item.question.strip()
    for letter, choice in zip(LETTERS, item.choices):
        text += f"\n{letter}. {choice}"
    text += "\nAnswer:"
    if with_answer:
        text += f" {item.answer}\n\n"
    return text


def build_prompt(item: MMLUItem, shots: list[MMLUItem], *, replicate_defects: bool = False) -> str:
    """Header, exemplars and the question (the text both protocols start from)."""
    body = "".join(format_item(s, with_answer=True) for s in shots)
    return header(item.subject, replicate_defects=replicate_defects) + body + format_item(item, with_answer=False)


def letter_token_ids(tokenizer, prefix: str) -> list[int]:
    """Token ids of ``prefix + letter`` for A..D; each must be a single token."""
    ids = []
    for letter in LETTERS:
        encoded = tokenizer.encode(prefix + letter)
        if len(encoded) != 1:
            raise EvalError(f"MMLU: {prefix + letter!r} is {len(encoded)} tokens for this tokenizer, expected 1")
        ids.append(encoded[0])
    return ids


def _context_and_continuations(tokenizer, context: str) -> tuple[list[int], list[list[int]]]:
    """lm-eval's split: encode context+continuation whole, continuation = the tokens after the context."""
    context_ids = tokenizer.encode(context)
    continuations = []
    for letter in LETTERS:
        whole = tokenizer.encode(context + " " + letter)
        if whole[: len(context_ids)] != context_ids:
            raise EvalError("MMLU: the tokenizer merges the answer into the prompt's last token")
        continuations.append(whole[len(context_ids):])
    return context_ids, continuations


def score_items(lm: EvalLM, items: list[MMLUItem], dev: dict[str, list[MMLUItem]],
                config: MMLUConfig) -> list[dict]:
    """Per-item records: prediction, gold, correct and the four choice log-probabilities."""
    tok = lm.tokenizer
    prompts = []
    for item in items:
        shots = dev.get(item.subject, [])[: config.k]
        if len(shots) < config.k:
            raise EvalError(f"MMLU: subject {item.subject} has {len(shots)} dev exemplars, {config.k} requested")
        prompts.append(build_prompt(item, shots, replicate_defects=config.replicate_defects))

    if config.protocol == "survey":
        from harness.data.templates import render_prompt

        texts = [render_prompt(config.template, [Message("user", p)], tok) for p in prompts]
        letter_ids = letter_token_ids(tok, "")
        logprobs = lm.next_token_logprobs([tok.encode(t) for t in texts], desc="mmlu (survey)")
        choice_logprobs = logprobs[:, letter_ids] if len(items) else np.zeros((0, 4))
    else:
        requests, single_token = [], True
        for prompt in prompts:
            context, continuations = _context_and_continuations(tok, prompt)
            single_token &= all(len(c) == 1 for c in continuations)
            requests.append((context, continuations))
        if single_token:  # one forward pass per item scores all four letters
            logprobs = lm.next_token_logprobs([c for c, _ in requests], desc="mmlu (standard)")
            choice_logprobs = np.stack([
                logprobs[i, [c[0] for c in conts]] for i, (_, conts) in enumerate(requests)
            ]) if len(items) else np.zeros((0, 4))
        else:
            flat = [(c, cont) for c, conts in requests for cont in conts]
            scores = lm.loglikelihood(flat, desc="mmlu (standard)")
            choice_logprobs = np.array([s for s, _ in scores], dtype=np.float64).reshape(len(items), 4)

    records = []
    for item, row in zip(items, choice_logprobs):
        prediction = LETTERS[int(np.argmax(row))]
        records.append({
            "id": item.id, "subject": item.subject, "category": category_of(item.subject),
            "gold": item.answer, "prediction": prediction, "correct": prediction == item.answer,
            "logprobs": {letter: float(v) for letter, v in zip(LETTERS, row)},
        })
    return records


def summarize(records: list[dict]) -> dict:
    """Accuracy (%) per subject and category, the size-weighted average and the subject macro-average."""
    def accuracy(rows):
        return 100.0 * sum(r["correct"] for r in rows) / len(rows) if rows else None

    subjects = sorted({r["subject"] for r in records})
    per_subject = {s: accuracy([r for r in records if r["subject"] == s]) for s in subjects}
    per_category = {c: accuracy([r for r in records if r["category"] == c]) for c in CATEGORIES}
    counts = {s: sum(1 for r in records if r["subject"] == s) for s in subjects}
    macro = sum(per_subject.values()) / len(per_subject) if per_subject else 0.0
    return {
        "accuracy": accuracy(records) or 0.0,
        "macro_accuracy": macro,
        "per_subject": per_subject,
        "per_category": {c: v for c, v in per_category.items() if v is not None},
        "n_per_subject": counts,
    }


def evaluate_mmlu(lm: EvalLM, config: MMLUConfig) -> EvalResult:
    """Run MMLU on ``lm`` and return the summary with per-item records."""
    subjects = list(config.subjects) if config.subjects else None
    test = load_mmlu(config.source, config.split, subjects)
    dev = load_mmlu(config.source, "dev", list(test)) if config.k else {}
    items = [item for rows in test.values() for item in rows[: config.limit]]
    lm.truncated = 0
    records = score_items(lm, items, dev, config)
    metrics = summarize(records)
    metrics.update({"shots": config.k, "split": config.split, "truncated_prompts": lm.truncated,
                    "replicate_defects": config.replicate_defects})
    template = config.template if isinstance(config.template, str) else getattr(config.template, "name", "custom")
    if config.protocol == "survey":
        metrics["template"] = template
    return EvalResult("mmlu", config.protocol, metrics["accuracy"], metrics, len(records), records)
