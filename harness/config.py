"""Typed run configuration: one YAML file plus dotted command-line overrides.

``load_run_config("experiments/train_tiny.yaml", ["train.lr=1e-4"])`` reads the file, applies
the overrides and validates the result into a ``RunConfig``. Every section is a pydantic model
that forbids unknown keys and is strict about types (no silent ``"3"`` -> ``3``), and a key
given twice (twice in one YAML mapping, or twice on the command line) is an error, so a typo
never turns into a default. Every error is a ``ConfigError`` naming the file and the dotted key.
``RunConfig.to_yaml()`` writes the fully resolved configuration (defaults filled in), which
``load_run_config`` reads back to an equal object.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from harness.errors import ConfigError

from harness.data.mixture import MixtureConfig
from harness.data.options import DataConfig


class Section(BaseModel):
    """Base of every config section: unknown keys and loose types are errors."""

    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True, frozen=True)


class ModelSection(Section):
    """Which model to start from and its numerics."""

    # preset name (tiny, smollm2-135m, llama-7b, ...), "hf:DIR", "gguf:FILE", or a run directory /
    # checkpoint directory of an earlier run.
    init: str = "tiny"
    param_dtype: Literal["float32", "bfloat16"] = "float32"  # master weights (and Adam moments)
    compute_dtype: Literal["float32", "bfloat16"] = "bfloat16"
    remat: Literal["none", "full", "dots", "dots_no_batch"] = "none"  # gradient checkpointing
    attention_impl: Literal["xla", "cudnn"] = "xla"
    # tokenizer spec for harness.model.tokenizer.load_tokenizer; None = the init's own tokenizer
    # (GGUF / HF directory), or the embedded SmolLM2 tokenizer for random presets.
    tokenizer: str | None = None


class OptimizerSection(Section):
    """AdamW with global-norm clipping (optax)."""

    b1: float = Field(0.9, ge=0.0, lt=1.0)
    b2: float = Field(0.999, ge=0.0, lt=1.0)
    eps: float = Field(1e-8, gt=0.0)
    weight_decay: float = Field(0.0, ge=0.0)
    # Parameters whose path contains one of these names get no weight decay (norm scales, biases,
    # as in Hugging Face's Trainer).
    no_decay: list[str] = Field(default_factory=lambda: ["norm", "bias"])
    clip_norm: float | None = Field(1.0, gt=0.0)  # None = no clipping


class TrainSection(Section):
    """Learning rate, schedule, batch, length of the run."""

    lr: float = Field(2e-5, gt=0.0)
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_steps: int | None = Field(None, ge=0)
    warmup_ratio: float | None = Field(None, ge=0.0, lt=1.0)
    final_lr_ratio: float = Field(0.0, ge=0.0, le=1.0)  # lr at the end of the decay / peak lr
    global_batch: int = Field(8, gt=0)  # rows per optimizer step, over all devices and hosts
    micro_batch: int | None = Field(None, gt=0)  # rows per forward/backward; None = global_batch
    steps: int | None = Field(None, gt=0)
    epochs: float | None = Field(None, gt=0.0)

    @model_validator(mode="after")
    def _check(self) -> "TrainSection":
        if self.warmup_steps is not None and self.warmup_ratio is not None:
            raise ValueError("set train.warmup_steps or train.warmup_ratio, not both")
        if self.steps is not None and self.epochs is not None:
            raise ValueError("set train.steps or train.epochs, not both")
        if self.steps is None and self.epochs is None:
            raise ValueError("set the length of the run: train.steps=N or train.epochs=E")
        micro = self.micro_batch or self.global_batch
        if self.global_batch % micro:
            raise ValueError(
                f"train.micro_batch={micro} does not divide train.global_batch={self.global_batch}; "
                "choose a micro-batch that divides the global batch"
            )
        return self

    @property
    def accumulation_steps(self) -> int:
        """Micro-batches per optimizer step."""
        return self.global_batch // (self.micro_batch or self.global_batch)

    def warmup_for(self, total_steps: int) -> int:
        """Warm-up length in steps for a run of ``total_steps``."""
        if self.warmup_steps is not None:
            return self.warmup_steps
        if self.warmup_ratio is not None:  # rounded up, as Hugging Face's Trainer does
            return math.ceil(self.warmup_ratio * total_steps)
        return 0


class MeshSection(Section):
    """Sizes of the ``data x fsdp x tensor`` device mesh; at most one may be -1 (the rest)."""

    data: int = -1
    fsdp: int = 1
    tensor: int = 1

    @model_validator(mode="after")
    def _check(self) -> "MeshSection":
        sizes = {"data": self.data, "fsdp": self.fsdp, "tensor": self.tensor}
        if list(sizes.values()).count(-1) > 1:
            raise ValueError(f"mesh {sizes}: at most one axis may be -1 (the remaining devices)")
        for name, size in sizes.items():
            if size == 0 or size < -1:
                raise ValueError(f"mesh.{name}={size}: sizes are positive, or -1 for the rest")
        return self


LORA_TARGETS = Literal["q", "k", "v", "o", "gate", "up", "down"]


class PeftSection(Section):
    """Parameter-efficient fine-tuning: none (full fine-tune) or LoRA."""

    method: Literal["none", "lora"] = "none"
    rank: int = Field(8, gt=0)
    alpha: float = Field(16.0, gt=0.0)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    targets: list[LORA_TARGETS] = Field(default_factory=lambda: ["q", "v"])


class CheckpointSection(Section):
    """Orbax checkpoints: every N steps and at the end, the last K kept."""

    every: int = Field(500, ge=0)  # 0 = only at the end
    keep: int = Field(3, gt=0)
    async_save: bool = Field(True, alias="async")
    # Leave the frozen base out of checkpoints (only adapters, optimizer state, counters, data
    # state; the base is rebuilt from model.init and fingerprint-checked). None = on for LoRA.
    adapter_only: bool | None = None


class LoggingSection(Section):
    """What is logged, how often."""

    every: int = Field(10, gt=0)  # metrics.jsonl line (and the only host sync) every N steps
    progress: bool = True  # progress bar with ETA on stderr
    tensorboard: bool = False  # needs tensorboardX
    # Peak dense FLOP/s of one device for MFU; None = looked up from the device kind (GPUs/TPUs),
    # and no MFU on CPUs.
    peak_flops_per_device: float | None = Field(None, gt=0.0)


class EvalSection(Section):
    """Evaluation run after training by the grid."""

    tasks: list[str] = Field(default_factory=list)
    protocol: str | None = None
    limit: int | None = Field(None, gt=0)


class RunConfig(Section):
    """One training run, fully described (the grid hashes its ``to_dict()`` into the run id).

    ``data`` is ``harness.data.options.DataConfig`` and ``mixture`` is
    ``harness.data.mixture.MixtureConfig`` (see docs/data-templates.md, docs/data-sources.md).
    """

    seed: int = 0
    labels: dict[str, str] = Field(default_factory=dict)
    model: ModelSection = Field(default_factory=ModelSection)
    # the data engineers' sections, embedded unchanged: formatting/packing, and the sources mix
    data: DataConfig = Field(default_factory=DataConfig)
    mixture: MixtureConfig  # required: which examples to train on
    train: TrainSection  # required: a run has no sensible default length
    optimizer: OptimizerSection = Field(default_factory=OptimizerSection)
    mesh: MeshSection = Field(default_factory=MeshSection)
    peft: PeftSection = Field(default_factory=PeftSection)
    checkpoint: CheckpointSection = Field(default_factory=CheckpointSection)
    logging: LoggingSection = Field(default_factory=LoggingSection)
    eval: EvalSection = Field(default_factory=EvalSection)

    @model_validator(mode="after")
    def _check_adapter_only(self) -> "RunConfig":
        if self.checkpoint.adapter_only and self.peft.method != "lora":
            raise ValueError(
                "checkpoint.adapter_only=true needs peft.method=lora (a full fine-tune has no frozen "
                "base to leave out); remove the key or set it to false"
            )
        return self

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict of every key (defaults included), with YAML key names."""
        return self.model_dump(mode="json", by_alias=True)

    def to_yaml(self) -> str:
        """The fully resolved configuration as YAML (round-trips through ``load_run_config``)."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)


# --------------------------------------------------------------------------- YAML reading


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys and reads ``1e-4`` as a float (YAML 1.2)."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False):
    loader.flatten_mapping(node)
    mapping: dict[Any, Any] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in mapping:
            line = key_node.start_mark.line + 1
            raise ConfigError(f"{key_node.start_mark.name}:{line}: key {key!r} is set twice")
        mapping[key] = loader.construct_object(value_node, deep=deep)
    return mapping


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _parse_yaml(text: str, name: str) -> Any:
    import io

    stream = io.StringIO(text)
    stream.name = name  # yaml's marks (and so our messages) name the file
    try:
        return yaml.load(stream, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ConfigError(f"{name}: not valid YAML: {exc}") from None


def parse_override(item: str) -> tuple[list[str], Any]:
    """``"train.lr=1e-4"`` -> (["train", "lr"], 0.0001); the value is read as YAML."""
    if "=" not in item:
        raise ConfigError(f"override {item!r}: expected key=value, e.g. train.lr=1e-4")
    key, raw = item.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"override {item!r}: empty key component in {key!r}")
    return parts, _parse_yaml(raw, f"override {key}") if raw.strip() else None


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set every dotted ``key=value`` in a copy of ``data``; a key given twice is an error."""
    import copy

    out = copy.deepcopy(data)
    seen: set[str] = set()
    for item in overrides:
        parts, value = parse_override(item)
        dotted = ".".join(parts)
        if dotted in seen:
            raise ConfigError(f"override key {dotted!r} is set twice on the command line")
        seen.add(dotted)
        node = out
        for depth, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                where = ".".join(parts[: depth + 1])
                raise ConfigError(f"override {dotted!r}: {where!r} is a value, not a section")
            node = child
        node[parts[-1]] = value
    return out


def _format_validation_error(exc: ValidationError, source: str) -> str:
    lines = []
    for error in exc.errors():
        key = ".".join(str(p) for p in error["loc"]) or "<top level>"
        if error["type"] == "extra_forbidden":
            lines.append(f"{source}: unknown key {key!r}")
        elif error["type"] == "value_error" and not error["loc"]:
            lines.append(f"{source}: {error['msg'].removeprefix('Value error, ')}")
        elif error["type"] == "value_error":
            lines.append(f"{source}: {key}: {error['msg'].removeprefix('Value error, ')}")
        else:
            lines.append(f"{source}: key {key!r}: {error['msg']} (got {error.get('input')!r})")
    return "; ".join(lines)


def run_config_from_dict(data: dict[str, Any], source: str = "config") -> RunConfig:
    """Validate a plain dict into a RunConfig, turning pydantic's errors into a ConfigError."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of sections, got {type(data).__name__}")
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, source)) from None


def load_run_config(path: str | Path | None, overrides: list[str] | None = None) -> RunConfig:
    """Read a run config from YAML (``None`` = all defaults) and apply dotted overrides."""
    if path is None:
        data: dict[str, Any] = {}
        source = "config"
    else:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        data = _parse_yaml(path.read_text(), str(path)) or {}
        source = str(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of sections")
    data = apply_overrides(data, list(overrides or []))
    return run_config_from_dict(data, source)
