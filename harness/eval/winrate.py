"""Win-rate aggregation and alpaca_eval's annotation format.

Convention (alpaca_eval's): in a judged pair ``output_1`` is the baseline and ``output_2`` the
model; ``preference`` is 1 when output_1 is preferred, 2 when output_2 is, and 1.5 (or the
legacy 0) for a tie; soft preferences in [1, 2] are allowed; anything else (null, NaN) is a
parse failure and is left out of the rate but counted. The model's score on a pair is
``preference - 1`` (win 1, tie 0.5, loss 0); the win rate is the mean score in percent, and the
standard error is the sample standard deviation of the scores over sqrt(n), in percent (what
alpaca_eval's ``pairwise_to_winrate`` reports).

With both orders judged, the pair's score is the mean of its valid orders (the swapped order's
verdict is mirrored first); ``position_bias`` is, over the pairs with both orders parsed, the share of
decisive verdicts that picked the output shown first, minus 0.5 (0 = no bias, +0.5 = always the
first), and ``order_consistency`` the share of those pairs whose two orders agree.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.errors import EvalError
from harness.eval.results import EvalResult

ANNOTATION_FIELDS = ("instruction", "output_1", "output_2", "preference")


@dataclass(frozen=True)
class JudgedPair:
    """One (baseline, model) pair with the verdict of each judged order.

    ``forward``: preference with output_1 = baseline, output_2 = model; ``backward``: preference
    with the two swapped (output_1 = model); None where that order was not judged or not parsed.
    """

    instruction: str
    baseline_output: str
    model_output: str
    forward: float | None
    backward: float | None = None
    backward_judged: bool = False


def normalize_preference(value: Any) -> float | None:
    """alpaca_eval preference -> float in [1, 2], or None for a parse failure (null, NaN, out of range)."""
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    if math.isnan(value):
        return None
    if value == 0.0:  # the legacy encoding of a tie
        return 1.5
    if 1.0 <= value <= 2.0:
        return value
    return None


def pair_score(pair: JudgedPair) -> float | None:
    """The model's score on a pair (0 loss, 0.5 tie, 1 win) averaged over the valid orders."""
    scores = []
    if pair.forward is not None:
        scores.append(pair.forward - 1.0)
    if pair.backward is not None:
        scores.append(2.0 - pair.backward)
    return sum(scores) / len(scores) if scores else None


def aggregate(pairs: list[JudgedPair]) -> dict[str, Any]:
    """win_rate, standard_error, n, ties, parse_failures, position bias and mean lengths."""
    scores = [s for s in (pair_score(p) for p in pairs) if s is not None]
    n = len(scores)
    win_rate = 100.0 * sum(scores) / n if n else 0.0
    if n > 1:
        mean = sum(scores) / n
        variance = sum((s - mean) ** 2 for s in scores) / (n - 1)
        standard_error = 100.0 * math.sqrt(variance / n)
    else:
        standard_error = 0.0
    verdicts = [p.forward for p in pairs] + [p.backward for p in pairs if p.backward_judged]
    parse_failures = sum(1 for v in verdicts if v is None)
    # Position bias: over pairs with both orders parsed (each order shows the same two answers,
    # so an unbiased judge picks the first as often as the second), how often the first won.
    complete = [p for p in pairs if p.backward_judged and p.forward is not None and p.backward is not None]
    decisive = [v for p in complete for v in (p.forward, p.backward) if v != 1.5]
    position_bias = first_position_rate = order_consistency = None
    if decisive:
        first_position_rate = sum(1 for v in decisive if v < 1.5) / len(decisive)
        position_bias = first_position_rate - 0.5
    if complete:
        order_consistency = sum(
            1 for p in complete if math.isclose(p.forward - 1.0, 2.0 - p.backward)
        ) / len(complete)
    return {
        "win_rate": win_rate,
        "standard_error": standard_error,
        "n": n,
        "n_pairs": len(pairs),
        "wins": sum(1 for s in scores if s > 0.5),
        "losses": sum(1 for s in scores if s < 0.5),
        "ties": sum(1 for s in scores if s == 0.5),
        "parse_failures": parse_failures,
        "both_orders": any(p.backward_judged for p in pairs),
        "position_bias": position_bias,
        "first_position_rate": first_position_rate,
        "order_consistency": order_consistency,
        "mean_length_model": _mean_len(p.model_output for p in pairs),
        "mean_length_baseline": _mean_len(p.baseline_output for p in pairs),
    }


def _mean_len(texts) -> float:
    lengths = [len(t) for t in texts]
    return sum(lengths) / len(lengths) if lengths else 0.0


def read_annotations(path: Path) -> list[dict[str, Any]]:
    """An alpaca_eval ``annotations.json`` (list of objects); missing fields raise EvalError."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise EvalError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
    if not isinstance(data, list):
        raise EvalError(f"{path}: expected a JSON list of annotations")
    for index, row in enumerate(data):
        if not isinstance(row, dict):
            raise EvalError(f"{path}: annotation {index} is not an object")
        for key in ANNOTATION_FIELDS:
            if key not in row:
                raise EvalError(f"{path}: annotation {index} is missing field {key!r}")
        for key in ANNOTATION_FIELDS[:3]:
            if not isinstance(row[key], str):
                raise EvalError(f"{path}: annotation {index}: field {key!r} must be a string")
    return data


def pairs_from_annotations(rows: list[dict[str, Any]]) -> list[JudgedPair]:
    """One-order pairs (output_1 = baseline) from alpaca_eval annotations."""
    return [
        JudgedPair(r["instruction"], r["output_1"], r["output_2"], normalize_preference(r["preference"]))
        for r in rows
    ]


def winrate_from_annotations(path: Path) -> EvalResult:
    """Recompute the win rate of ``generator_2`` over ``generator_1`` from an annotations file."""
    rows = read_annotations(path)
    metrics = aggregate(pairs_from_annotations(rows))
    generators = {r.get("generator_2") for r in rows} - {None}
    baselines = {r.get("generator_1") for r in rows} - {None}
    annotators = {r.get("annotator") for r in rows} - {None}
    records = [
        {"instruction": r["instruction"], "preference": normalize_preference(r["preference"])} for r in rows
    ]
    return EvalResult(
        task="winrate", protocol="alpaca_eval_annotations", score=metrics["win_rate"],
        metrics=metrics, n=metrics["n"], records=records,
        extra={
            "model": ",".join(sorted(generators)) or None,
            "baseline": ",".join(sorted(baselines)) or str(path),
            "judge": {"name": ",".join(sorted(annotators)) or "unknown", "source": str(path)},
        },
    )


def annotations_from_pairs(pairs: list[JudgedPair], *, model: str, baseline: str, judge: str) -> list[dict]:
    """alpaca_eval annotations (output_1 = baseline) whose preference is the model's pair score + 1."""
    rows = []
    for pair in pairs:
        score = pair_score(pair)
        rows.append({
            "instruction": pair.instruction,
            "output_1": pair.baseline_output,
            "generator_1": baseline,
            "output_2": pair.model_output,
            "generator_2": model,
            "annotator": judge,
            "preference": None if score is None else 1.0 + score,
        })
    return rows
