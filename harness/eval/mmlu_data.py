"""MMLU items: the original CSV release or ``cais/mmlu`` through ``datasets``; subject categories.

CSV layout (hendrycks/test ``data/``): ``<root>/<split>/<subject>_<split>.csv`` for split in
``dev`` (5 exemplars a subject), ``val`` and ``test``; no header, six columns
``question, A, B, C, D, answer``. The subject -> category map is the standard one of the MMLU
paper's release (57 subjects; STEM, humanities, social sciences, other).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from harness.errors import EvalError

LETTERS = ("A", "B", "C", "D")
SPLITS = ("dev", "val", "test")
# cais/mmlu names its splits differently from the CSV release.
HF_SPLITS = {"dev": "dev", "val": "validation", "test": "test"}

# subject -> subcategory, as in the MMLU release's categories.py.
SUBCATEGORIES: dict[str, str] = {
    "abstract_algebra": "math", "anatomy": "health", "astronomy": "physics",
    "business_ethics": "business", "clinical_knowledge": "health", "college_biology": "biology",
    "college_chemistry": "chemistry", "college_computer_science": "computer science",
    "college_mathematics": "math", "college_medicine": "health", "college_physics": "physics",
    "computer_security": "computer science", "conceptual_physics": "physics",
    "econometrics": "economics", "electrical_engineering": "engineering",
    "elementary_mathematics": "math", "formal_logic": "philosophy", "global_facts": "other",
    "high_school_biology": "biology", "high_school_chemistry": "chemistry",
    "high_school_computer_science": "computer science", "high_school_european_history": "history",
    "high_school_geography": "geography", "high_school_government_and_politics": "politics",
    "high_school_macroeconomics": "economics", "high_school_mathematics": "math",
    "high_school_microeconomics": "economics", "high_school_physics": "physics",
    "high_school_psychology": "psychology", "high_school_statistics": "math",
    "high_school_us_history": "history", "high_school_world_history": "history",
    "human_aging": "health", "human_sexuality": "culture", "international_law": "law",
    "jurisprudence": "law", "logical_fallacies": "philosophy", "machine_learning": "computer science",
    "management": "business", "marketing": "business", "medical_genetics": "health",
    "miscellaneous": "other", "moral_disputes": "philosophy", "moral_scenarios": "philosophy",
    "nutrition": "health", "philosophy": "philosophy", "prehistory": "history",
    "professional_accounting": "other", "professional_law": "law",
    "professional_medicine": "health", "professional_psychology": "psychology",
    "public_relations": "politics", "security_studies": "politics", "sociology": "culture",
    "us_foreign_policy": "politics", "virology": "health", "world_religions": "philosophy",
}

CATEGORY_OF_SUBCATEGORY: dict[str, str] = {
    **dict.fromkeys(("physics", "chemistry", "biology", "computer science", "math", "engineering"), "STEM"),
    **dict.fromkeys(("history", "philosophy", "law"), "humanities"),
    **dict.fromkeys(("politics", "culture", "economics", "geography", "psychology"), "social sciences"),
    **dict.fromkeys(("other", "business", "health"), "other"),
}

CATEGORIES = ("STEM", "humanities", "social sciences", "other")
SUBJECTS = tuple(sorted(SUBCATEGORIES))


def category_of(subject: str) -> str:
    """The category (STEM, humanities, social sciences, other) of an MMLU subject."""
    if subject not in SUBCATEGORIES:
        raise EvalError(f"unknown MMLU subject {subject!r}")
    return CATEGORY_OF_SUBCATEGORY[SUBCATEGORIES[subject]]


@dataclass(frozen=True)
class MMLUItem:
    """One four-way multiple-choice question."""

    subject: str
    split: str
    index: int
    question: str
    choices: tuple[str, str, str, str]
    answer: str  # "A".."D"

    @property
    def id(self) -> str:
        return f"{self.subject}/{self.split}/{self.index}"


def read_mmlu_csv_file(path: Path, subject: str, split: str) -> list[MMLUItem]:
    """Items of one ``<subject>_<split>.csv``; a malformed row raises EvalError naming file and row."""
    items: list[MMLUItem] = []
    with open(path, newline="", encoding="utf-8") as handle:
        for row_number, row in enumerate(csv.reader(handle), start=1):
            if len(row) != 6:
                raise EvalError(f"{path}: row {row_number} has {len(row)} columns, expected 6 "
                                "(question, A, B, C, D, answer)")
            answer = row[5].strip()
            if answer not in LETTERS:
                raise EvalError(f"{path}: row {row_number}: answer {row[5]!r} is not one of A, B, C, D")
            items.append(MMLUItem(subject, split, row_number - 1, row[0], tuple(row[1:5]), answer))
    return items


def read_mmlu_csv(root: Path, split: str, subjects: list[str] | None = None) -> dict[str, list[MMLUItem]]:
    """All subjects (or the named ones) of one split of the CSV release under ``root``."""
    if split not in SPLITS:
        raise EvalError(f"unknown MMLU split {split!r}; expected one of {SPLITS}")
    folder = Path(root) / split
    if not folder.is_dir():
        raise EvalError(f"MMLU folder {folder} does not exist (expected {root}/dev, val, test)")
    found = sorted(p.name[: -len(f"_{split}.csv")] for p in folder.glob(f"*_{split}.csv"))
    wanted = subjects if subjects is not None else found
    out: dict[str, list[MMLUItem]] = {}
    for subject in wanted:
        category_of(subject)
        path = folder / f"{subject}_{split}.csv"
        if not path.is_file():
            raise EvalError(f"MMLU file {path} is missing")
        out[subject] = read_mmlu_csv_file(path, subject, split)
    if not out:
        raise EvalError(f"no MMLU files *_{split}.csv in {folder}")
    return out


def read_mmlu_hf(split: str, subjects: list[str] | None = None, name: str = "cais/mmlu") -> dict[str, list[MMLUItem]]:
    """The same items through ``datasets`` (config ``all``; fields question, subject, choices, answer)."""
    import datasets

    if split not in HF_SPLITS:
        raise EvalError(f"unknown MMLU split {split!r}; expected one of {SPLITS}")
    try:
        table = datasets.load_dataset(name, "all", split=HF_SPLITS[split])
    except Exception as exc:  # offline, not cached, or another dataset layout
        raise EvalError(f"cannot load MMLU dataset {name!r} split {HF_SPLITS[split]!r}: {exc}") from None
    out: dict[str, list[MMLUItem]] = {}
    for row_number, row in enumerate(table):
        for key in ("question", "subject", "choices", "answer"):
            if key not in row:
                raise EvalError(f"{name} {split} row {row_number}: missing field {key!r}")
        subject, choices, answer = row["subject"], row["choices"], row["answer"]
        if subjects is not None and subject not in subjects:
            continue
        if len(choices) != 4 or answer not in range(4):
            raise EvalError(f"{name} {split} row {row_number}: expected 4 choices and answer 0..3")
        bucket = out.setdefault(subject, [])
        bucket.append(MMLUItem(subject, split, len(bucket), row["question"], tuple(choices), LETTERS[answer]))
    return dict(sorted(out.items()))


def load_mmlu(source: str | Path, split: str, subjects: list[str] | None = None) -> dict[str, list[MMLUItem]]:
    """``source`` is a CSV-release directory, or ``hf:NAME`` (e.g. ``hf:cais/mmlu``)."""
    text = str(source)
    if text.startswith("hf:"):
        return read_mmlu_hf(split, subjects, name=text[3:])
    return read_mmlu_csv(Path(source), split, subjects)
