"""What ``harness eval winrate`` does, as a function of typed arguments (testable without the CLI).

Modes:

- ``--annotations FILE``: recompute the win rate of alpaca_eval annotations and print it
  (written to ``--out`` as winrate.json only when ``--out`` is given);
- outputs vs outputs: the model's outputs (``--model-outputs FILE`` or the run directory's
  ``eval/alpacafarm_model_outputs.json``) against the baseline's (``--baseline-outputs FILE`` or
  ``--baseline RUN``), judged by ``--judge``; writes ``winrate.json``, the alpaca_eval
  ``winrate_annotations.json`` and appends verdicts to the cache in the output folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from harness.errors import EvalError
from harness.eval.alpacafarm import compare_outputs, load_outputs
from harness.eval.alpacafarm_data import align_outputs, check_against_reference, read_eval_set
from harness.eval.judges import VerdictCache, default_prompt, load_prompt
from harness.eval.results import atomic_write_json, write_eval_result
from harness.eval.winrate import winrate_from_annotations

CACHE_NAME = "winrate_verdicts.jsonl"
ANNOTATIONS_NAME = "winrate_annotations.json"


@dataclass(frozen=True)
class WinrateArgs:
    """The options of ``harness eval winrate``."""

    run: Path | None = None
    annotations: Path | None = None
    model_outputs: Path | None = None
    baseline_outputs: Path | None = None
    baseline: Path | None = None
    reference: Path | None = None
    judge: str = "local"
    judge_model: str | None = None
    base_url: str = "https://api.openai.com/v1"
    api_key_env: str = "OPENAI_API_KEY"
    prompt_file: Path | None = None
    requests_per_minute: float | None = 60.0
    max_retries: int = 5
    both_orders: bool = True
    cache: Path | None = None
    limit: int | None = None
    out: Path | None = None
    batch_size: int = 8


def summary_line(result) -> str:
    """``win rate: 26.46 ± 1.54 (n=805, ...)``."""
    m = result.metrics
    line = (f"win rate: {result.score:.2f} ± {m['standard_error']:.2f} "
            f"(n={m['n']}, ties={m['ties']}, parse failures={m['parse_failures']}")
    if m.get("position_bias") is not None:
        line += f", position bias={m['position_bias']:+.3f}"
    return line + ")"


def build_judge(args: WinrateArgs):
    """The judge named by ``--judge`` (``local[:SPEC]`` or ``openai[:MODEL]``)."""
    kind, _, name = args.judge.partition(":")
    prompt = load_prompt(args.prompt_file) if args.prompt_file else default_prompt()
    if kind == "openai":
        from harness.eval.judge_openai import OpenAIJudge, OpenAIJudgeConfig

        model = args.judge_model or name
        if not model:
            raise EvalError("the openai judge needs a model: --judge openai:MODEL or --judge-model MODEL")
        config = OpenAIJudgeConfig(base_url=args.base_url, model=model, api_key_env=args.api_key_env,
                                   requests_per_minute=args.requests_per_minute, max_retries=args.max_retries)
        return OpenAIJudge(config, prompt)
    if kind == "local":
        from harness.eval.judge_local import LocalJudge
        from harness.eval.suite import load_eval_lm

        spec = name or args.judge_model or "smollm2-135m"
        return LocalJudge(load_eval_lm(spec, batch_size=args.batch_size), spec=spec, prompt=prompt)
    raise EvalError(f"unknown judge {args.judge!r}; expected local[:MODEL_SPEC] or openai[:MODEL]")


def _resolve_paths(args: WinrateArgs) -> tuple[Path, Path, Path]:
    model_src = args.model_outputs or args.run
    baseline_src = args.baseline_outputs or args.baseline
    if model_src is None or baseline_src is None:
        raise EvalError("winrate needs --annotations FILE, or the model's outputs (RUN or --model-outputs) "
                        "and the baseline's (--baseline RUN or --baseline-outputs)")
    if args.out is not None:
        out = args.out
    elif args.run is not None:
        out = args.run / "eval"
    else:
        out = Path(model_src).parent
    return Path(model_src), Path(baseline_src), out


def main(args: WinrateArgs, judge=None, log=print):
    """Run the command; ``judge`` overrides ``--judge`` (tests). Returns the EvalResult."""
    if args.annotations is not None:
        result = winrate_from_annotations(args.annotations)
        log(summary_line(result))
        if args.out is not None:
            log(f"-> {write_eval_result(result, args.out)}")
        return result
    model_src, baseline_src, out = _resolve_paths(args)
    model_rows, baseline_rows = load_outputs(model_src), load_outputs(baseline_src)
    if args.reference is not None:
        reference = read_eval_set(args.reference)
        check_against_reference(model_rows, reference, str(model_src))
        check_against_reference(baseline_rows, reference, str(baseline_src))
    align_outputs(model_rows, baseline_rows, model_name=str(model_src), baseline_name=str(baseline_src))
    judge = judge if judge is not None else build_judge(args)
    cache = VerdictCache(args.cache or out / CACHE_NAME)
    progress_bar = _progress_bar(len(model_rows) * (2 if args.both_orders else 1), args.limit, args.both_orders)
    try:
        result, annotations = compare_outputs(
            model_rows, baseline_rows, judge, cache, both_orders=args.both_orders, limit=args.limit,
            model_name=str(args.run or model_src), baseline_name=str(args.baseline or baseline_src),
            progress=progress_bar.update,
        )
    finally:
        progress_bar.close()
    result.metrics["cache"] = str(cache.path)
    path = write_eval_result(result, out)
    atomic_write_json(out / ANNOTATIONS_NAME, annotations)
    log(summary_line(result))
    log(f"-> {path}")
    return result


def _progress_bar(total: int, limit: int | None, both_orders: bool):
    import sys

    from tqdm import tqdm

    if limit is not None:
        total = min(total, limit * (2 if both_orders else 1))
    return tqdm(total=total, desc="judging", file=sys.stderr, dynamic_ncols=True)
