"""BBH answer extraction and the two scorers (pure functions over strings).

``survey``: the survey's released scorer (LLMSurvey ``BBH10KBenchmark.calc_acc``) looks only at
the first line of the output, lower-cases everything and, for a lettered gold answer "(b)", also
accepts the option's text: correct when the gold letter or the option text occurs in the first
line, or the first line occurs in the option text. Its defects, fixed unless
``replicate_defects=True``:

1. an empty first line is a substring of every option text, so it counted as correct;
2. the option text was cut at ``question.find("\\n", start)``, which is -1 for the last option,
   dropping that option's last character;
3. a gold letter absent from the question made ``find`` return -1 and the option text garbage.

``standard``: chain-of-thought output, the answer is what follows the first "the answer is"
(to the end of that line); exact match with the gold after lower-casing, collapsing whitespace
and stripping surrounding punctuation; a lettered gold "(B)" also matches "B", "B)" and
"(B) option text".
"""

from __future__ import annotations

import re

_SURROUNDING = " \t\n.,!?;:\"'`*"
_ANSWER_IS = re.compile(r"the answer is\s*:?\s*(.*)", re.IGNORECASE)
_LETTER_GOLD = re.compile(r"\(([a-z])\)")


def first_line(output: str) -> str:
    """The text before the first newline (the whole text if there is none)."""
    return output.split("\n", 1)[0]


def option_text(question: str, letter_gold: str, *, replicate_defects: bool = False) -> str | None:
    """The text after ``(x)`` on its option line of ``question`` (both lower-cased), or None."""
    start = question.find(letter_gold)
    if replicate_defects:
        end = question.find("\n", start)
        return question[start + len(letter_gold): end].lstrip()
    if start < 0:
        return None
    end = question.find("\n", start)
    if end < 0:
        end = len(question)
    return question[start + len(letter_gold): end].strip()


def survey_correct(question: str, gold: str, output: str, *, replicate_defects: bool = False) -> bool:
    """The survey's first-line substring match (see the module docstring for the fixed defects)."""
    question, gold = question.lower(), gold.lower()
    prediction = first_line(output).lower()
    if not replicate_defects:
        prediction = prediction.strip()
        if not prediction:
            return False
    if "(" in gold:
        text = option_text(question, gold, replicate_defects=replicate_defects)
        if gold in prediction:
            return True
        if text is None:
            return False
        if not replicate_defects and not text:
            return False
        return text in prediction or prediction in text
    return gold in prediction


def extract_cot_answer(output: str) -> str | None:
    """What follows the first "the answer is" up to the end of that line, or None if absent."""
    match = _ANSWER_IS.search(output)
    if match is None:
        return None
    return match.group(1).split("\n", 1)[0]


def normalize_answer(text: str) -> str:
    """Lower-case, collapse whitespace, strip surrounding punctuation/quotes/markdown."""
    collapsed = " ".join(text.lower().split())
    return collapsed.strip(_SURROUNDING)


def answers_match(prediction: str, gold: str) -> bool:
    """Exact match ignoring case and surrounding punctuation, lettered options leniently."""
    pred, ref = normalize_answer(prediction), normalize_answer(gold)
    if pred == ref:
        return True
    letter = _LETTER_GOLD.fullmatch(ref)
    if letter is None:
        return False
    x = letter.group(1)
    return pred in (x, f"{x})") or pred.startswith(f"({x}) ")


def standard_correct(gold: str, output: str) -> tuple[bool, str | None]:
    """(correct, extracted answer) for a CoT output under the standard protocol."""
    answer = extract_cot_answer(output)
    if answer is None:
        return False, None
    return answers_match(answer, gold), answer
