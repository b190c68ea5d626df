"""AlpacaFarm: generate answers to the 805 instructions, and judge two output sets pairwise.

Generation writes alpaca_eval's ``model_outputs.json`` (``[{"instruction", "output",
"generator", "dataset"}]``) plus ``eval/alpacafarm.json`` whose headline score is the share of
answers that ended on their own (before the token limit); the quality number is the win rate.

Comparison pairs every model output with the baseline output of the same instruction, asks the
judge about each pair in both orders by default (baseline first, then model first), caches every
verdict, and aggregates with ``harness.eval.winrate``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from harness.data.records import Message
from harness.errors import EvalError
from harness.eval.alpacafarm_data import align_outputs, read_eval_set, read_model_outputs
from harness.eval.judges import Judge, VerdictCache, judge_with_cache
from harness.eval.lm import EvalLM
from harness.eval.results import EvalResult, atomic_write_json
from harness.eval.winrate import JudgedPair, aggregate, annotations_from_pairs

MODEL_OUTPUTS = "alpacafarm_model_outputs.json"


@dataclass(frozen=True)
class DecodingConfig:
    """Sampling settings of the answers (defaults: the survey's)."""

    temperature: float = 0.1
    top_p: float = 0.75
    max_new_tokens: int = 512
    seed: int = 0


@dataclass(frozen=True)
class AlpacaFarmConfig:
    """Where the eval set is, which template wraps it, how answers are decoded."""

    source: str
    template: str | object = "survey"
    decoding: DecodingConfig = DecodingConfig()
    limit: int | None = None
    generator: str = "model"


def generate_outputs(lm: EvalLM, config: AlpacaFarmConfig) -> list[dict]:
    """alpaca_eval-format outputs of ``lm`` for the eval set (in its order)."""
    from harness.data.templates import render_prompt

    items = read_eval_set(config.source)[: config.limit]
    tok = lm.tokenizer
    prompts = [tok.encode(render_prompt(config.template, [Message("user", item.instruction)], tok))
               for item in items]
    d = config.decoding
    outputs = lm.generate(prompts, d.max_new_tokens, temperature=d.temperature, top_p=d.top_p,
                          seed=d.seed, desc="alpacafarm")
    return [
        {"instruction": item.instruction, "output": text.strip(), "generator": config.generator,
         "dataset": item.dataset, "finished": finished}
        for item, (text, finished) in zip(items, outputs)
    ]


def evaluate_alpacafarm(lm: EvalLM, config: AlpacaFarmConfig, out_dir: Path) -> EvalResult:
    """Generate, write ``<out_dir>/alpacafarm_model_outputs.json`` and return the summary."""
    rows = generate_outputs(lm, config)
    outputs = [{k: r[k] for k in ("instruction", "output", "generator", "dataset")} for r in rows]
    path = Path(out_dir) / MODEL_OUTPUTS
    atomic_write_json(path, outputs)
    finished = sum(r["finished"] for r in rows)
    lengths = [len(r["output"]) for r in rows]
    d = config.decoding
    template = config.template if isinstance(config.template, str) else getattr(config.template, "name", "custom")
    metrics = {
        "finished_rate": 100.0 * finished / len(rows) if rows else 0.0,
        "mean_length": sum(lengths) / len(lengths) if lengths else 0.0,
        "empty_outputs": sum(1 for n in lengths if n == 0),
        "model_outputs": str(path), "template": template,
        "temperature": d.temperature, "top_p": d.top_p, "max_new_tokens": d.max_new_tokens, "seed": d.seed,
    }
    records = [{"id": str(i), **r} for i, r in enumerate(rows)]
    return EvalResult("alpacafarm", "generate", metrics["finished_rate"], metrics, len(rows), records)


def compare_outputs(model_rows: list[dict], baseline_rows: list[dict], judge: Judge,
                    cache: VerdictCache | None, *, both_orders: bool = True, limit: int | None = None,
                    model_name: str = "model", baseline_name: str = "baseline",
                    progress=None) -> tuple[EvalResult, list[dict]]:
    """Judge model vs baseline outputs; returns the win-rate result and alpaca_eval annotations."""
    aligned = align_outputs(model_rows, baseline_rows, model_name=model_name, baseline_name=baseline_name)
    aligned = aligned[:limit]
    forward = [(m["instruction"], b["output"], m["output"]) for m, b in aligned]
    requests = forward + ([(i, mo, bo) for i, bo, mo in forward] if both_orders else [])
    verdicts = judge_with_cache(judge, requests, cache, progress=progress)
    n = len(forward)
    pairs = [
        JudgedPair(instruction, baseline_out, model_out, verdicts[k].preference,
                   verdicts[n + k].preference if both_orders else None, both_orders)
        for k, (instruction, baseline_out, model_out) in enumerate(forward)
    ]
    metrics = aggregate(pairs)
    identity = judge.identity
    records = []
    for k, pair in enumerate(pairs):
        record = {"id": str(k), "instruction": pair.instruction, "preference_forward": pair.forward,
                  "raw_forward": verdicts[k].raw}
        if both_orders:
            record.update({"preference_backward": pair.backward, "raw_backward": verdicts[n + k].raw})
        records.append(record)
    result = EvalResult(
        "winrate", "pairwise_both_orders" if both_orders else "pairwise", metrics["win_rate"], metrics,
        metrics["n"], records, extra={"model": model_name, "baseline": baseline_name, "judge": identity},
    )
    annotations = annotations_from_pairs(pairs, model=model_name, baseline=baseline_name, judge=identity["name"])
    return result, annotations


def load_outputs(path: str | Path) -> list[dict]:
    """Model outputs from a model_outputs.json file, or from a run directory's eval folder."""
    path = Path(path)
    if path.is_dir():
        for candidate in (path / "eval" / MODEL_OUTPUTS, path / MODEL_OUTPUTS, path / "model_outputs.json"):
            if candidate.is_file():
                return read_model_outputs(candidate)
        raise EvalError(f"{path}: no {MODEL_OUTPUTS} (run `harness eval {path} --tasks alpacafarm` first)")
    return read_model_outputs(path)
