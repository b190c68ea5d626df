"""Run the evaluation suite on one model and write ``eval/<task>.json`` files.

MODEL is a run directory (results go to ``<run>/eval/``), a checkpoint, ``hf:DIR``,
``gguf:FILE`` or a preset name (results go to ``--out``). Benchmark data comes from a data
root laid out like ../shared/data (``mmlu/``, ``bbh/``, ``alpaca_farm/``), from explicit
per-task sources, or from the hub datasets (``cais/mmlu``, ``lukaemon/bbh``,
``tatsu-lab/alpaca_farm``) when nothing local is given.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from harness.errors import EvalError
from harness.eval.alpacafarm import AlpacaFarmConfig, DecodingConfig, evaluate_alpacafarm
from harness.eval.bbh import BBHConfig, evaluate_bbh
from harness.eval.lm import EvalLM
from harness.eval.mmlu import MMLUConfig, evaluate_mmlu
from harness.eval.results import EvalResult, write_eval_result

TASKS = ("mmlu", "bbh", "alpacafarm")
PROTOCOLS = ("survey", "standard")
DATA_ENV = "HARNESS_EVAL_DATA"
HUB_SOURCES = {"mmlu": "hf:cais/mmlu", "bbh": "hf:lukaemon/bbh", "alpacafarm": "hf:tatsu-lab/alpaca_farm"}
LOCAL_FOLDERS = {"mmlu": "mmlu", "bbh": "bbh", "alpacafarm": "alpaca_farm"}


@dataclass(frozen=True)
class SuiteConfig:
    """Everything ``harness eval MODEL`` needs."""

    model: str
    tasks: tuple[str, ...] = TASKS
    protocol: str = "survey"
    limit: int | None = None
    out_dir: str | None = None
    data_dir: str | None = None
    sources: dict[str, str] = field(default_factory=dict)  # per-task overrides
    bbh_prompts: str | None = None
    bbh_subset: str | None = None  # None: bbh3k (survey) / all (standard)
    bbh_tasks: tuple[str, ...] | None = None  # None: every task of the subset
    bbh_max_new_tokens: int | None = None  # None: 128 (survey) / 256 (standard)
    mmlu_shots: int | None = None
    template: str | None = None
    replicate_defects: bool = False
    decoding: DecodingConfig = DecodingConfig()
    batch_size: int = 8
    dtype: str = "float32"

    def __post_init__(self) -> None:
        unknown = [t for t in self.tasks if t not in TASKS]
        if unknown:
            raise EvalError(f"unknown eval task {unknown[0]!r}; expected some of {', '.join(TASKS)}")
        if self.protocol not in PROTOCOLS:
            raise EvalError(f"unknown protocol {self.protocol!r}; expected survey or standard")
        if self.limit is not None and self.limit < 1:
            raise EvalError(f"--limit must be positive, got {self.limit}")


def is_run_dir(path: Path) -> bool:
    """A harness run directory (config.yaml or run.json inside)."""
    return path.is_dir() and ((path / "config.yaml").is_file() or (path / "run.json").is_file())


def output_dir(config: SuiteConfig) -> Path:
    """``--out``, else ``<run>/eval`` for a run directory, else ``eval-results/<model>``."""
    if config.out_dir:
        return Path(config.out_dir)
    model_path = Path(config.model.split(":", 1)[1] if config.model.startswith(("hf:", "gguf:")) else config.model)
    if is_run_dir(model_path):
        return model_path / "eval"
    return Path("eval-results") / re.sub(r"[^A-Za-z0-9._-]+", "_", config.model).strip("_")


def task_source(config: SuiteConfig, task: str) -> str:
    """Where a task's data is read from (explicit source, data root, env root, or the hub)."""
    if task in config.sources:
        return config.sources[task]
    root = config.data_dir or os.environ.get(DATA_ENV)
    if root:
        path = Path(root) / LOCAL_FOLDERS[task]
        if not path.exists():
            raise EvalError(f"data root {root} has no {LOCAL_FOLDERS[task]}/ folder for {task}")
        return str(path)
    return HUB_SOURCES[task]


def run_template(model: str) -> str | None:
    """The template a run directory was trained with (``data.template`` in its config.yaml)."""
    path = Path(model)
    if not is_run_dir(path) or not (path / "config.yaml").is_file():
        return None
    import yaml

    data = yaml.safe_load((path / "config.yaml").read_text(encoding="utf-8")) or {}
    template = (data.get("data") or {}).get("template") if isinstance(data, dict) else None
    if isinstance(template, dict):
        template = template.get("name")
    return template if isinstance(template, str) else None


def choose_template(config: SuiteConfig, tokenizer) -> str:
    """Explicit --template, else the run's training template, else the tokenizer's, else survey."""
    if config.template:
        return config.template
    trained = run_template(config.model)
    if trained:
        return trained
    return "tokenizer" if getattr(tokenizer, "chat_template", None) else "survey"


def tqdm_progress(iterable, desc: str, total: int):
    """Progress bar on stderr."""
    from tqdm import tqdm

    return tqdm(iterable, desc=desc, total=total, file=sys.stderr, dynamic_ncols=True)


def load_eval_lm(spec: str, *, dtype: str = "float32", batch_size: int = 8, progress=tqdm_progress) -> EvalLM:
    """Load a model (``harness.model.loading.load_model``) and its tokenizer for evaluation."""
    from harness.model.loading import load_model
    from harness.model.tokenizer import load_tokenizer

    model, tokenizer = load_model(spec, dtype=dtype)
    if tokenizer is None:
        tokenizer = load_tokenizer(None)
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    if vocab is not None and tokenizer.vocab_size > vocab:
        raise EvalError(f"model {spec!r} has a vocabulary of {vocab} tokens but its tokenizer "
                        f"({tokenizer.name}) has {tokenizer.vocab_size}: evaluate a model that "
                        "comes with its tokenizer (a run, hf:DIR, gguf:FILE or smollm2-135m)")
    return EvalLM(model, tokenizer, batch_size=batch_size, progress=progress)


def run_suite(config: SuiteConfig, lm: EvalLM | None = None, log=print) -> dict[str, Path]:
    """Evaluate every task of ``config`` and write ``<out>/<task>.json``; returns the paths."""
    sources = {task: task_source(config, task) for task in config.tasks}
    if lm is None:
        lm = load_eval_lm(config.model, dtype=config.dtype, batch_size=config.batch_size)
    template = choose_template(config, lm.tokenizer)
    out = output_dir(config)
    written: dict[str, Path] = {}
    for task in config.tasks:
        result: EvalResult
        if task == "mmlu":
            result = evaluate_mmlu(lm, MMLUConfig(
                sources[task], protocol=config.protocol, shots=config.mmlu_shots, limit=config.limit,
                template=template, replicate_defects=config.replicate_defects))
        elif task == "bbh":
            subset = config.bbh_subset or ("bbh3k" if config.protocol == "survey" else "all")
            result = evaluate_bbh(lm, BBHConfig(
                sources[task], prompts_dir=config.bbh_prompts, protocol=config.protocol, subset=subset,
                tasks=config.bbh_tasks, limit=config.limit, template=template,
                max_new_tokens=config.bbh_max_new_tokens, replicate_defects=config.replicate_defects))
        else:
            result = evaluate_alpacafarm(lm, AlpacaFarmConfig(
                sources[task], template=template, decoding=config.decoding, limit=config.limit,
                generator=Path(config.model).name or config.model), out)
        result.extra.update({"model": config.model, "source": sources[task]})
        written[task] = write_eval_result(result, out)
        log(f"{task} ({result.protocol}): {result.score:.2f} on {result.n} items -> {written[task]}")
    return written
