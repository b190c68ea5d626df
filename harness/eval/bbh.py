"""BIG-Bench Hard under two protocols; per-task accuracy and the averages.

``survey`` (LLMSurvey ``BBH10KBenchmark``): zero-shot; the user turn of the chat template is
"For the following questions please return only one word as an answer.\\n" + task description +
"\\n\\nQ: " + question; greedy, 128 new tokens; the first line of the output is scored by
``bbh_scoring.survey_correct``. The survey code built the question as ``(... + "\\nA: ").rstrip("\\nA: ")``,
which strips any trailing run of the characters newline, "A", ":" and space (eating, e.g., a
question's final "A"); the harness removes exactly the "\\nA: " suffix unless
``replicate_defects`` is set, which also restores the scorer's defects.

``standard`` (Suzgun et al. 2022): the official 3-shot CoT prompt of the task, then
"\\n\\nQ: " + question + "\\nA: Let's think step by step.", plain text (no chat template unless
``chat=True``), greedy, stopping at a blank line (256 new tokens at most), answer after
"the answer is", exact match (``bbh_scoring.standard_correct``).

The headline score is the average over items (size-weighted); ``task_average`` is the mean of
the per-task accuracies.
"""

from __future__ import annotations

from dataclasses import dataclass

from harness.data.records import Message
from harness.errors import EvalError
from harness.eval.bbh_data import MULTIPLE_CHOICE_TASKS, TASKS, BBHItem, read_bbh, read_cot_prompts, select_subset
from harness.eval.bbh_scoring import first_line, standard_correct, survey_correct
from harness.eval.lm import EvalLM
from harness.eval.results import EvalResult

PROTOCOLS = ("standard", "survey")
SURVEY_INSTRUCTION = "For the following questions please return only one word as an answer.\n"


@dataclass(frozen=True)
class BBHConfig:
    """Which BBH items, how they are prompted and decoded."""

    source: str
    prompts_dir: str | None = None  # cot-prompts folder; default: <source>/cot-prompts
    protocol: str = "standard"
    subset: str = "all"  # "all" (6,511 items) or "bbh3k" (the documented 3,328-item MC subset)
    tasks: tuple[str, ...] | None = None
    limit: int | None = None  # items per task
    template: str | object = "survey"  # chat template (survey protocol, or standard with chat=True)
    chat: bool = False  # standard protocol inside the chat template
    max_new_tokens: int | None = None  # None: 128 (survey) / 256 (standard)
    replicate_defects: bool = False

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise EvalError(f"unknown BBH protocol {self.protocol!r}; expected one of {PROTOCOLS}")

    @property
    def new_tokens(self) -> int:
        if self.max_new_tokens is not None:
            return self.max_new_tokens
        return 128 if self.protocol == "survey" else 256


def survey_question(description: str, question: str, *, replicate_defects: bool = False) -> str:
    """The survey's question block: description, blank line, "Q: ..." (the "A: " cue removed)."""
    block = f"{description}\n\nQ: {question}\nA: "
    if replicate_defects:
        return block.rstrip("\nA: ")
    return block[: -len("\nA: ")]


def survey_prompt_text(description: str, question: str, *, replicate_defects: bool = False) -> str:
    """The whole user message of the survey protocol."""
    return SURVEY_INSTRUCTION + survey_question(description, question, replicate_defects=replicate_defects)


def standard_prompt_text(cot_prompt: str, question: str) -> str:
    """The official CoT prompt, then the question and the step-by-step cue."""
    return f"{cot_prompt}\n\nQ: {question}\nA: Let's think step by step."


def _load(config: BBHConfig) -> tuple[dict[str, list[BBHItem]], dict]:
    tasks = tuple(config.tasks) if config.tasks else (MULTIPLE_CHOICE_TASKS if config.subset == "bbh3k" else TASKS)
    items = select_subset(read_bbh(config.source, tasks), config.subset)
    prompts_dir = config.prompts_dir
    if prompts_dir is None:
        if str(config.source).startswith("hf:"):
            raise EvalError("BBH from a hub dataset needs --bbh-prompts DIR (the cot-prompts folder: "
                            "task descriptions and exemplars)")
        prompts_dir = config.source
    return items, read_cot_prompts(prompts_dir, tuple(items))


def evaluate_bbh(lm: EvalLM, config: BBHConfig) -> EvalResult:
    """Generate answers for the chosen BBH items and score them under ``config.protocol``."""
    from harness.data.templates import render_prompt

    items_by_task, cot = _load(config)
    items = [item for task in items_by_task for item in items_by_task[task][: config.limit]]
    tok = lm.tokenizer
    texts = []
    for item in items:
        if config.protocol == "survey":
            user = survey_prompt_text(cot[item.task].description, item.input,
                                      replicate_defects=config.replicate_defects)
            texts.append(render_prompt(config.template, [Message("user", user)], tok))
        else:
            text = standard_prompt_text(cot[item.task].text, item.input)
            texts.append(render_prompt(config.template, [Message("user", text)], tok) if config.chat else text)
    stop = () if config.protocol == "survey" else ("\n\n",)
    outputs = lm.generate([tok.encode(t) for t in texts], config.new_tokens, temperature=0.0,
                          stop_strings=stop, desc=f"bbh ({config.protocol})")

    records = []
    for item, (output, _) in zip(items, outputs):
        record = {"id": item.id, "task": item.task, "gold": item.target, "output": output}
        if config.protocol == "survey":
            record["prediction"] = first_line(output)
            record["correct"] = survey_correct(item.input, item.target, output,
                                               replicate_defects=config.replicate_defects)
        else:
            correct, answer = standard_correct(item.target, output)
            record["prediction"] = answer
            record["correct"] = correct
        records.append(record)
    metrics = summarize(records)
    metrics.update({"subset": config.subset, "max_new_tokens": config.new_tokens,
                    "replicate_defects": config.replicate_defects, "truncated_prompts": lm.truncated})
    if config.protocol == "standard":
        metrics["no_answer"] = sum(1 for r in records if r["prediction"] is None)
    else:
        metrics["empty_first_line"] = sum(1 for r in records if not r["prediction"].strip())
    return EvalResult("bbh", config.protocol, metrics["accuracy"], metrics, len(records), records)


def summarize(records: list[dict]) -> dict:
    """Accuracy (%) per task, over all items, and the mean of the per-task accuracies."""
    tasks = sorted({r["task"] for r in records})
    per_task = {t: 100.0 * sum(r["correct"] for r in records if r["task"] == t) /
                sum(1 for r in records if r["task"] == t) for t in tasks}
    accuracy = 100.0 * sum(r["correct"] for r in records) / len(records) if records else 0.0
    return {
        "accuracy": accuracy,
        "task_average": sum(per_task.values()) / len(per_task) if per_task else 0.0,
        "per_task": per_task,
        "n_per_task": {t: sum(1 for r in records if r["task"] == t) for t in tasks},
    }
