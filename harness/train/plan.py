"""Ahead-of-time plan: compile the real train step against abstract sharded arrays.

``plan_train_step(PlanRequest(model="llama-7b", mesh={"fsdp": 8}, batch=8, seq_len=2048))``
builds the model under ``jax.eval_shape`` (nothing is materialised), derives the sharded
``TrainState`` and batch as ``jax.ShapeDtypeStruct``s, lowers and compiles the same jitted step
``harness train`` runs (``harness.train.step.TrainStep``, with the run config's optimizer), and
reads XLA's per-device memory analysis of the compiled program. FLOPs come from the model's own
count (``LlamaConfig.flops_per_token``): XLA's ``cost_analysis()`` counts the body of the layer
scan once rather than once per layer, so it under-counts a scanned model by about the depth.

The figures are the compiler's: ``arguments`` are the resident bytes per device of the inputs
(parameters, optimizer state, batch), ``output`` those of the outputs, ``temp`` the scratch the
program needs at its peak, and ``total = arguments + output + temp - alias`` where ``alias`` is the
output bytes that reuse donated input buffers (the whole train state, since the step donates it).
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from harness.config import OptimizerSection, PeftSection, TrainSection
from harness.errors import ConfigError
from harness.model.llama import Llama, LlamaConfig, get_config
from harness.model.sharding import MESH_AXES
from harness.train import optim
from harness.train.step import TrainStep, abstract_batch, abstract_train_state

# XLA:CPU has no bfloat16 matmul: it widens bf16 dot operands to float32, and loop-invariant
# code motion then hoists that widening of the WHOLE stacked [layers, ...] bf16 weight out of the
# layer scan (a float32 copy of every frozen base weight, ~2x the bf16 model). GPUs and TPUs
# multiply bf16 natively and never make that copy, so the CPU stand-in compile disables the pass.
CPU_COMPILER_OPTIONS = {"xla_disable_hlo_passes": "while-loop-invariant-code-motion"}


@dataclass(frozen=True)
class PlanRequest:
    """What to plan: model preset, mesh, global batch and length, micro-batch, PEFT, numerics."""

    model: str = "llama-7b"
    mesh: dict[str, int] = field(default_factory=lambda: {"fsdp": 8})
    batch: int = 8  # global rows per optimizer step
    seq_len: int = 2048
    micro_batch: int | None = None  # global rows per forward/backward; None = batch
    peft: str = "none"  # "none" | "lora"
    lora_rank: int = 16
    lora_alpha: float = 32.0
    lora_targets: tuple[str, ...] = ("q", "k", "v", "o", "gate", "up", "down")
    remat: str = "full"
    param_dtype: str = "float32"
    compute_dtype: str = "bfloat16"
    attention_impl: str = "xla"

    def __post_init__(self) -> None:
        unknown = set(self.mesh) - set(MESH_AXES)
        if unknown:
            raise ConfigError(f"--mesh: unknown axis {sorted(unknown)[0]!r}; axes are {', '.join(MESH_AXES)}")
        for name, size in self.mesh.items():
            if size <= 0:
                raise ConfigError(f"--mesh {name}={size}: mesh sizes are positive integers")
        if self.batch <= 0 or self.seq_len <= 0:
            raise ConfigError(f"--batch {self.batch} --seq-len {self.seq_len}: both must be positive")
        micro = self.micro_batch or self.batch
        if self.batch % micro:
            raise ConfigError(f"--micro-batch {micro} does not divide --batch {self.batch}; choose a divisor")
        rows = self.mesh.get("data", 1) * self.mesh.get("fsdp", 1)
        if micro % rows:
            raise ConfigError(
                f"--micro-batch {micro} does not divide over the data x fsdp axes ({rows} devices); "
                f"use a micro-batch that is a multiple of {rows}"
            )
        if self.peft not in ("none", "lora"):
            raise ConfigError(f"--peft {self.peft!r}: expected none or lora")

    @property
    def devices(self) -> int:
        return math.prod(self.mesh.get(a, 1) for a in MESH_AXES)

    @property
    def accumulation_steps(self) -> int:
        return self.batch // (self.micro_batch or self.batch)

    def model_config(self) -> LlamaConfig:
        return get_config(
            self.model, remat=self.remat, param_dtype=self.param_dtype,
            compute_dtype=self.compute_dtype, attention_impl=self.attention_impl,
        )

    def peft_section(self) -> PeftSection:
        if self.peft == "none":
            return PeftSection()
        return PeftSection(method="lora", rank=self.lora_rank, alpha=self.lora_alpha, targets=list(self.lora_targets))


@dataclass
class PlanReport:
    """The compiled step's figures (bytes are per device)."""

    model: str
    mesh: dict[str, int]
    devices: int
    batch: int
    micro_batch: int
    seq_len: int
    peft: str
    params: int
    trainable_params: int
    state_bytes: int  # parameters + optimizer state of all devices together (unsharded)
    per_device_bytes: dict[str, int]
    flops_per_token: float
    flops_per_step: float
    compile_seconds: float
    request: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def plan_model_fn(request: PlanRequest):
    """A function building the request's model (LoRA adapters added for ``peft="lora"``)."""
    config = request.model_config()

    def build():
        model = Llama(config, rngs=nnx.Rngs(0))
        if request.peft == "lora":
            from harness.model.peft import LoraConfig, apply_lora

            lora = LoraConfig(rank=request.lora_rank, alpha=request.lora_alpha, targets=tuple(request.lora_targets))
            apply_lora(model, lora, nnx.Rngs(1))
        return model

    return build


def _size(tree) -> int:
    return int(sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(tree)))


def _nbytes(tree) -> int:
    return int(sum(math.prod(x.shape) * np.dtype(x.dtype).itemsize for x in jax.tree_util.tree_leaves(tree)))


def plan_mesh(request: PlanRequest, devices=None) -> Mesh:
    """The request's mesh over the first ``request.devices`` devices."""
    devices = list(jax.devices() if devices is None else devices)
    need = request.devices
    if len(devices) < need:
        raise ConfigError(f"the mesh {request.mesh} needs {need} devices; this process has {len(devices)}")
    sizes = tuple(request.mesh.get(a, 1) for a in MESH_AXES)
    return Mesh(np.asarray(devices[:need], dtype=object).reshape(sizes), MESH_AXES)


def plan_optimizer(request: PlanRequest):
    """The run config's default optimizer (AdamW, clipping, warm-up + cosine) for the request."""
    train = TrainSection(lr=2e-5, warmup_ratio=0.03, steps=1000, global_batch=request.batch,
                         micro_batch=request.micro_batch)
    return optim.make_optimizer(OptimizerSection(), optim.make_schedule(train, 1000))


def lower_train_step(request: PlanRequest, mesh: Mesh):
    """(lowered step, abstract TrainState) for ``request`` on ``mesh``; nothing is allocated."""
    trainable = optim.trainable_filter(request.peft_section())
    tx = plan_optimizer(request)
    graphdef, abstract_state, shardings = abstract_train_state(plan_model_fn(request), tx, trainable, mesh)
    step = TrainStep(graphdef, tx, trainable, accumulation_steps=request.accumulation_steps,
                     mesh=mesh, state_shardings=shardings)
    batch = abstract_batch(mesh, request.batch, request.seq_len)
    return step.lower(abstract_state, batch), abstract_state


def plan_train_step(request: PlanRequest, devices=None) -> PlanReport:
    """Compile the train step for ``request`` ahead of time and report memory and FLOPs."""
    mesh = plan_mesh(request, devices)
    config = request.model_config()
    start = time.perf_counter()
    lowered, state = lower_train_step(request, mesh)
    options = CPU_COMPILER_OPTIONS if mesh.devices.flat[0].platform == "cpu" else None
    compiled = lowered.compile(compiler_options=options)
    seconds = time.perf_counter() - start
    memory = compiled.memory_analysis()
    arguments = int(memory.argument_size_in_bytes)
    output = int(memory.output_size_in_bytes)
    temp = int(memory.temp_size_in_bytes)
    alias = int(memory.alias_size_in_bytes)

    params = _size(nnx.state(state.params, nnx.Param)) + _size(nnx.state(state.rest, nnx.Param))
    state_bytes = _nbytes(state.params) + _nbytes(state.rest) + _nbytes(state.opt_state)
    flops_per_token = config.flops_per_token(request.seq_len)
    return PlanReport(
        model=request.model,
        mesh={a: request.mesh.get(a, 1) for a in MESH_AXES},
        devices=request.devices,
        batch=request.batch,
        micro_batch=request.micro_batch or request.batch,
        seq_len=request.seq_len,
        peft=request.peft,
        params=params,
        trainable_params=_size(state.params),
        state_bytes=state_bytes,
        per_device_bytes={
            "arguments": arguments,
            "temp": temp,
            "output": output,
            "alias": alias,
            "total": arguments + output + temp - alias,
        },
        flops_per_token=flops_per_token,
        flops_per_step=flops_per_token * request.batch * request.seq_len,
        compile_seconds=round(seconds, 2),
        request=dataclasses.asdict(request),
    )


def format_report(report: PlanReport) -> str:
    """Human-readable table of a plan."""

    def gib(n: int) -> str:
        return f"{n / 2**30:8.2f} GiB"

    mesh = " x ".join(f"{a}={n}" for a, n in report.mesh.items())
    b = report.per_device_bytes
    lines = [
        f"model            {report.model} ({report.peft if report.peft != 'none' else 'full fine-tune'})",
        f"mesh             {mesh} ({report.devices} devices)",
        f"batch            {report.batch} x {report.seq_len} (micro-batch {report.micro_batch}, "
        f"{report.batch // report.micro_batch} accumulation steps)",
        f"params           {report.params:,}",
        f"trainable params {report.trainable_params:,}",
        f"state            {gib(report.state_bytes)} total, {gib(report.state_bytes // report.devices)} / device",
        "per device:",
        f"  arguments      {gib(b['arguments'])}",
        f"  temp           {gib(b['temp'])}",
        f"  output         {gib(b['output'])}  ({gib(b['alias'])} aliased to donated arguments)",
        f"  total          {gib(b['total'])}",
        f"FLOPs / token    {report.flops_per_token:.4g}",
        f"FLOPs / step     {report.flops_per_step:.4g}",
        f"compile          {report.compile_seconds:.1f} s",
    ]
    return "\n".join(lines)
