"""``harness eval MODEL --tasks ...`` and ``harness eval winrate ...``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from typer.core import TyperGroup

WINRATE_HELP = """Win rate of a model's AlpacaFarm outputs against a baseline's, or from alpaca_eval annotations.

\b
harness eval winrate --annotations annotations.json
harness eval winrate --model-outputs A.json --baseline-outputs B.json --judge local
harness eval winrate runs/CELL --baseline runs/BASE --judge openai --judge-model gpt-4o-mini
harness eval winrate runs/A runs/B runs/C --baseline runs/BASE --judge local   (one judge load for all)
"""


class _DefaultToRun(TyperGroup):
    """``harness eval MODEL ...`` means ``harness eval run MODEL ...`` unless MODEL is a sub-command."""

    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["run", *args]
        return super().parse_args(ctx, args)


eval_app = typer.Typer(
    cls=_DefaultToRun, no_args_is_help=True, add_completion=False,
    help="Evaluate a model (MMLU, BBH, AlpacaFarm generation) or compute a win rate.",
)


def _csv(value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip())


@eval_app.command("run", help="Evaluate MODEL (run dir, checkpoint, hf:DIR, gguf:FILE or preset).")
def run_command(
    model: str = typer.Argument(..., help="run directory, checkpoint, hf:DIR, gguf:FILE or preset name"),
    tasks: str = typer.Option("mmlu,bbh,alpacafarm", "--tasks", help="comma-separated: mmlu, bbh, alpacafarm"),
    protocol: str = typer.Option("survey", "--protocol", help="survey (the paper's code, defects fixed) or standard"),
    limit: Optional[int] = typer.Option(None, "--limit", help="items per MMLU subject / BBH task; AlpacaFarm instructions"),
    out: Optional[Path] = typer.Option(None, "--out", help="output folder (default: <run>/eval)"),
    data: Optional[Path] = typer.Option(None, "--data", help="data root with mmlu/, bbh/, alpaca_farm/ (or $HARNESS_EVAL_DATA)"),
    mmlu_source: Optional[str] = typer.Option(None, "--mmlu-source", help="MMLU CSV folder or hf:NAME"),
    bbh_source: Optional[str] = typer.Option(None, "--bbh-source", help="BBH folder or hf:NAME"),
    bbh_prompts: Optional[str] = typer.Option(None, "--bbh-prompts", help="BBH cot-prompts folder"),
    bbh_subset: Optional[str] = typer.Option(None, "--bbh-subset", help="all or bbh3k (default: bbh3k for survey)"),
    bbh_tasks: Optional[str] = typer.Option(None, "--bbh-tasks", help="comma-separated BBH tasks (default: all of the subset)"),
    bbh_max_new_tokens: Optional[int] = typer.Option(None, "--bbh-max-new-tokens", help="default 128 survey / 256 standard"),
    alpacafarm_source: Optional[str] = typer.Option(None, "--alpacafarm-source", help="AlpacaFarm eval JSON or hf:NAME"),
    shots: Optional[int] = typer.Option(None, "--shots", help="MMLU exemplars (default 5 standard, 0 survey)"),
    template: Optional[str] = typer.Option(None, "--template", help="chat template (default: the run's / tokenizer's)"),
    replicate_defects: bool = typer.Option(False, "--replicate-survey-defects", help="reproduce the survey code's scoring defects"),
    temperature: float = typer.Option(0.1, "--temperature", help="AlpacaFarm sampling temperature"),
    top_p: float = typer.Option(0.75, "--top-p", help="AlpacaFarm nucleus threshold"),
    max_new_tokens: int = typer.Option(512, "--max-new-tokens", help="AlpacaFarm answer length limit"),
    seed: int = typer.Option(0, "--seed", help="AlpacaFarm sampling seed"),
    batch_size: int = typer.Option(8, "--batch-size", help="rows per forward pass / generation batch"),
    dtype: str = typer.Option("float32", "--dtype", help="float32 or bfloat16"),
) -> None:
    from harness.eval.alpacafarm import DecodingConfig
    from harness.eval.suite import SuiteConfig, run_suite

    sources = {k: v for k, v in (("mmlu", mmlu_source), ("bbh", bbh_source), ("alpacafarm", alpacafarm_source)) if v}
    config = SuiteConfig(
        model=model, tasks=_csv(tasks), protocol=protocol, limit=limit, out_dir=str(out) if out else None,
        data_dir=str(data) if data else None, sources=sources, bbh_prompts=bbh_prompts, bbh_subset=bbh_subset,
        bbh_tasks=_csv(bbh_tasks) if bbh_tasks else None, bbh_max_new_tokens=bbh_max_new_tokens,
        mmlu_shots=shots, template=template, replicate_defects=replicate_defects,
        decoding=DecodingConfig(temperature, top_p, max_new_tokens, seed), batch_size=batch_size, dtype=dtype,
    )
    run_suite(config)


@eval_app.command("winrate", help=WINRATE_HELP)
def winrate_command(
    runs: Optional[list[Path]] = typer.Argument(None, metavar="[RUN]...",
                                                help="run directories whose AlpacaFarm outputs are judged"),
    annotations: Optional[Path] = typer.Option(None, "--annotations", help="alpaca_eval annotations.json to recompute"),
    model_outputs: Optional[Path] = typer.Option(None, "--model-outputs", help="model_outputs.json of the model"),
    baseline_outputs: Optional[Path] = typer.Option(None, "--baseline-outputs", help="model_outputs.json of the baseline"),
    baseline: Optional[Path] = typer.Option(None, "--baseline", help="baseline run directory"),
    reference: Optional[Path] = typer.Option(None, "--reference", help="eval set both output files must answer"),
    judge: str = typer.Option("local", "--judge", help="local[:MODEL_SPEC] or openai[:MODEL]"),
    judge_model: Optional[str] = typer.Option(None, "--judge-model", help="API model name (openai judge)"),
    base_url: str = typer.Option("https://api.openai.com/v1", "--base-url", help="chat-completions base URL"),
    api_key_env: str = typer.Option("OPENAI_API_KEY", "--api-key-env", help="environment variable holding the API key"),
    prompt_file: Optional[Path] = typer.Option(None, "--prompt-file", help="judge prompt with {instruction} {output_1} {output_2}"),
    requests_per_minute: float = typer.Option(60.0, "--rpm", help="API request-rate limit"),
    max_retries: int = typer.Option(5, "--max-retries", help="API retries per request"),
    single_order: bool = typer.Option(False, "--single-order", help="judge each pair once (baseline first)"),
    cache: Optional[Path] = typer.Option(None, "--cache", help="verdict cache (default <out>/winrate_verdicts.jsonl)"),
    limit: Optional[int] = typer.Option(None, "--limit", help="judge only the first N pairs"),
    out: Optional[Path] = typer.Option(None, "--out", help="output folder (default <run>/eval)"),
    batch_size: int = typer.Option(8, "--batch-size", help="local judge batch size"),
) -> None:
    from harness.eval import winrate_cli

    runs = list(runs or [])
    args = winrate_cli.WinrateArgs(
        run=runs[0] if runs else None, annotations=annotations, model_outputs=model_outputs,
        baseline_outputs=baseline_outputs, baseline=baseline, reference=reference, judge=judge, judge_model=judge_model, base_url=base_url,
        api_key_env=api_key_env, prompt_file=prompt_file, requests_per_minute=requests_per_minute,
        max_retries=max_retries, both_orders=not single_order, cache=cache, limit=limit, out=out,
        batch_size=batch_size,
    )
    if len(runs) <= 1:
        winrate_cli.main(args)
        return
    _winrate_many(args, runs)


def _winrate_many(args, runs: list[Path]) -> None:
    """Judge several runs against one baseline with one judge (a local judge is loaded once).

    A run that fails is reported and the others are still judged; the command then fails naming
    every failed run, so a caller (``harness grid``) can tell which results exist.
    """
    import dataclasses
    import sys

    from harness.errors import EvalError, HarnessError
    from harness.eval import winrate_cli

    if any(value is not None for value in (args.out, args.model_outputs, args.cache, args.annotations)):
        raise EvalError("several RUNs: --out, --model-outputs, --cache and --annotations name one run's files; "
                        "give one RUN with them, or drop them (each run writes to <run>/eval)")
    judge = winrate_cli.build_judge(args)
    failed = []
    for run in runs:
        print(f"== {run}", flush=True)
        try:
            winrate_cli.main(dataclasses.replace(args, run=run), judge=judge)
        except HarnessError as exc:
            print(f"error: {run}: {exc}", file=sys.stderr, flush=True)
            failed.append(str(run))
    if failed:
        raise EvalError(f"winrate failed for {len(failed)} of {len(runs)} runs: {', '.join(failed)}")


def register(app: typer.Typer) -> None:
    """Add ``harness eval`` (and ``harness eval winrate``)."""
    app.add_typer(eval_app, name="eval")

