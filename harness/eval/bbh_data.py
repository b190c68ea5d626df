"""BIG-Bench Hard items and chain-of-thought prompts; the BBH3k multiple-choice subset.

Sources: the official repository layout (``<root>/bbh/<task>.json`` with
``{"examples": [{"input", "target"}]}`` and ``<root>/cot-prompts/<task>.txt``), or
``hf:lukaemon/bbh`` through ``datasets`` (one config a task, split ``test``) together with a
cot-prompts folder for the task descriptions and exemplars.

BBH3k: the survey scored a 3,328-item multiple-choice subset whose items were never published.
The harness's stand-in is deterministic and documented: from the 17 tasks whose answers are
lettered options, take every item whose target has the form ``(X)`` (4,071 items in the
official release), give each task a quota proportional to its eligible count (largest
remainder, summing to 3,328), and within a task keep the items with the smallest
``sha256("bbh3k/<task>/<index>")``, listed in their original order.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from harness.errors import EvalError

TASKS = (
    "boolean_expressions", "causal_judgement", "date_understanding", "disambiguation_qa",
    "dyck_languages", "formal_fallacies", "geometric_shapes", "hyperbaton",
    "logical_deduction_five_objects", "logical_deduction_seven_objects",
    "logical_deduction_three_objects", "movie_recommendation", "multistep_arithmetic_two",
    "navigate", "object_counting", "penguins_in_a_table", "reasoning_about_colored_objects",
    "ruin_names", "salient_translation_error_detection", "snarks", "sports_understanding",
    "temporal_sequences", "tracking_shuffled_objects_five_objects",
    "tracking_shuffled_objects_seven_objects", "tracking_shuffled_objects_three_objects",
    "web_of_lies", "word_sorting",
)

# Tasks whose gold answers are lettered options "(A)".."(R)".
MULTIPLE_CHOICE_TASKS = (
    "date_understanding", "disambiguation_qa", "geometric_shapes", "hyperbaton",
    "logical_deduction_five_objects", "logical_deduction_seven_objects",
    "logical_deduction_three_objects", "movie_recommendation", "penguins_in_a_table",
    "reasoning_about_colored_objects", "ruin_names", "salient_translation_error_detection",
    "snarks", "temporal_sequences", "tracking_shuffled_objects_five_objects",
    "tracking_shuffled_objects_seven_objects", "tracking_shuffled_objects_three_objects",
)

BBH3K_SIZE = 3328
SUBSETS = ("all", "bbh3k")
_LETTER_TARGET = re.compile(r"\([A-Z]\)")


@dataclass(frozen=True)
class BBHItem:
    """One BBH question with its gold answer."""

    task: str
    index: int
    input: str
    target: str

    @property
    def id(self) -> str:
        return f"{self.task}/{self.index}"


@dataclass(frozen=True)
class CotPrompt:
    """A task's official 3-shot CoT prompt: its one-line description and the full text."""

    task: str
    description: str
    text: str


def _parse_examples(examples, source: str, task: str) -> list[BBHItem]:
    if not isinstance(examples, list):
        raise EvalError(f"{source}: 'examples' must be a list")
    items = []
    for index, example in enumerate(examples):
        if not isinstance(example, dict):
            raise EvalError(f"{source}: examples[{index}] is not an object")
        for key in ("input", "target"):
            if not isinstance(example.get(key), str):
                raise EvalError(f"{source}: examples[{index}] is missing the string field {key!r}")
        items.append(BBHItem(task, index, example["input"], example["target"]))
    return items


def read_bbh_task_file(path: Path, task: str) -> list[BBHItem]:
    """Items of one official ``<task>.json`` file."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise EvalError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
    if not isinstance(data, dict) or "examples" not in data:
        raise EvalError(f"{path}: missing field 'examples'")
    return _parse_examples(data["examples"], str(path), task)


def _task_folder(root: Path) -> Path:
    return root / "bbh" if (root / "bbh").is_dir() else root


def read_bbh(source: str | Path, tasks: tuple[str, ...] | list[str] = TASKS) -> dict[str, list[BBHItem]]:
    """Items of the named tasks from a directory (official layout) or ``hf:NAME``."""
    for task in tasks:
        if task not in TASKS:
            raise EvalError(f"unknown BBH task {task!r}")
    text = str(source)
    if text.startswith("hf:"):
        return {task: _read_bbh_hf(text[3:], task) for task in tasks}
    folder = _task_folder(Path(source))
    out = {}
    for task in tasks:
        path = folder / f"{task}.json"
        if not path.is_file():
            raise EvalError(f"BBH task file {path} is missing")
        out[task] = read_bbh_task_file(path, task)
    return out


def _read_bbh_hf(name: str, task: str) -> list[BBHItem]:
    import datasets

    try:
        table = datasets.load_dataset(name, task, split="test")
    except Exception as exc:  # offline or not cached
        raise EvalError(f"cannot load BBH dataset {name!r} task {task!r}: {exc}") from None
    return _parse_examples([dict(row) for row in table], f"{name}/{task}", task)


def read_cot_prompt(path: Path, task: str) -> CotPrompt:
    """Parse a cot-prompts file: drop the canary up to the ``-----`` line; first paragraph = description."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() == "-----") + 1
    except StopIteration:
        raise EvalError(f"{path}: no '-----' line separating the canary from the prompt") from None
    text = "\n".join(lines[start:]).strip()
    if "Q:" not in text:
        raise EvalError(f"{path}: the prompt has no 'Q:' exemplar")
    description = text.split("\n\n", 1)[0].strip()
    return CotPrompt(task, description, text)


def read_cot_prompts(folder: str | Path, tasks: tuple[str, ...] | list[str] = TASKS) -> dict[str, CotPrompt]:
    """The CoT prompts of the named tasks from ``folder`` (or ``folder/cot-prompts``)."""
    folder = Path(folder)
    if (folder / "cot-prompts").is_dir():
        folder = folder / "cot-prompts"
    out = {}
    for task in tasks:
        path = folder / f"{task}.txt"
        if not path.is_file():
            raise EvalError(f"BBH CoT prompt {path} is missing")
        out[task] = read_cot_prompt(path, task)
    return out


def _hash_key(task: str, index: int) -> str:
    return hashlib.sha256(f"bbh3k/{task}/{index}".encode()).hexdigest()


def bbh3k_subset(items: dict[str, list[BBHItem]], size: int = BBH3K_SIZE) -> dict[str, list[BBHItem]]:
    """The documented BBH3k stand-in (see the module docstring) drawn from ``items``."""
    eligible = {
        task: [item for item in items[task] if _LETTER_TARGET.fullmatch(item.target)]
        for task in MULTIPLE_CHOICE_TASKS if task in items
    }
    total = sum(len(v) for v in eligible.values())
    if total == 0:
        raise EvalError("BBH3k needs the multiple-choice tasks; none were loaded")
    size = min(size, total)
    exact = {task: size * len(v) / total for task, v in eligible.items()}
    quota = {task: int(x) for task, x in exact.items()}
    by_remainder = sorted(exact, key=lambda t: (-(exact[t] - quota[t]), t))
    for task in by_remainder[: size - sum(quota.values())]:
        quota[task] += 1
    out = {}
    for task, candidates in eligible.items():
        chosen = sorted(candidates, key=lambda item: _hash_key(task, item.index))[: quota[task]]
        out[task] = sorted(chosen, key=lambda item: item.index)
    return out


def select_subset(items: dict[str, list[BBHItem]], subset: str) -> dict[str, list[BBHItem]]:
    """``all`` (every loaded item) or ``bbh3k``."""
    if subset == "all":
        return items
    if subset == "bbh3k":
        return bbh3k_subset(items)
    raise EvalError(f"unknown BBH subset {subset!r}; expected one of {SUBSETS}")
