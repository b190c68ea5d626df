"""The figures ``harness grid SPEC --dry-run`` shows per cell: instances, steps, per-device memory.

Instances and steps come from the resolved run config where it states them (a per-source count,
``train.steps``; an epoch-based run shows ``N ep``). The per-device memory is ``harness plan``'s
(the ahead-of-time compile of the real train step), run once per distinct (model, mesh, batch,
length, PEFT) as a subprocess so that it can make its own CPU stand-in devices; when the plan
module is absent or fails, the column shows ``-``.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from typing import Any

from harness.grid.spec import Cell

PLAN_TIMEOUT_S = 600


def _get(config: dict[str, Any], dotted: str) -> Any:
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def cell_instances(config: dict[str, Any]) -> int | None:
    """The number of training examples when every mixture source states it (count or sample)."""
    sources = _get(config, "mixture.sources")
    if not isinstance(sources, list) or not sources:
        return None
    total = 0
    for source in sources:
        count = None
        if isinstance(source, dict):
            count = source.get("count") if source.get("count") is not None else source.get("sample")
        if not isinstance(count, int):
            return None
        total += count
    return total


def cell_steps(config: dict[str, Any]) -> str:
    """``train.steps``, or ``E ep`` for an epoch-based run."""
    steps = _get(config, "train.steps")
    if isinstance(steps, int):
        return str(steps)
    epochs = _get(config, "train.epochs")
    return f"{epochs:g} ep" if isinstance(epochs, (int, float)) else "-"


def plan_arguments(config: dict[str, Any], plan_model: str | None = None) -> list[str] | None:
    """The ``harness plan`` flags for a cell's model, mesh, batch, length and PEFT (None: unknown).

    ``plan_model`` names a preset with the architecture of an ``hf:`` / ``gguf:`` init.
    """
    model = plan_model or _get(config, "model.init")
    seq_len = _get(config, "data.max_length")
    batch = _get(config, "train.global_batch")
    if not isinstance(model, str) or ":" in model or not isinstance(seq_len, int) or not isinstance(batch, int):
        return None  # plan compiles presets; an hf:/gguf: init needs its weights' config
    mesh = _get(config, "mesh") or {}
    mesh_text = ",".join(f"{axis}={max(int(size), 1)}" for axis, size in mesh.items() if size not in (1,))
    args = ["--model", model, "--batch", str(batch), "--seq-len", str(seq_len), "--mesh", mesh_text or "data=1"]
    micro = _get(config, "train.micro_batch")
    if isinstance(micro, int):
        args += ["--micro-batch", str(micro)]
    if _get(config, "peft.method") == "lora":
        args += ["--peft", "lora", "--lora-rank", str(_get(config, "peft.rank"))]
    for key, flag in (("model.remat", "--remat"), ("model.param_dtype", "--param-dtype"),
                      ("model.compute_dtype", "--compute-dtype")):
        value = _get(config, key)
        if isinstance(value, str):
            args += [flag, value]
    return args


def plan_available() -> bool:
    """Whether the plan module and command exist in this install."""
    return (importlib.util.find_spec("harness.train.plan") is not None
            and importlib.util.find_spec("harness.commands.plan") is not None)


def plan_memory(cells: list[Cell], plan_model: str | None = None) -> dict[str, str]:
    """Cell id -> per-device total bytes from ``harness plan`` (GiB text, or '-')."""
    memory = {c.id: "-" for c in cells}
    if not plan_available():
        return memory
    cache: dict[tuple[str, ...], str] = {}
    for cell in cells:
        args = plan_arguments(cell.config, plan_model)
        if args is None:
            continue
        key = tuple(args)
        if key not in cache:
            cache[key] = _run_plan(args)
        memory[cell.id] = cache[key]
    return memory


def _run_plan(args: list[str]) -> str:
    command = [sys.executable, "-m", "harness.cli", "plan", *args, "--json"]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=PLAN_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "-"
    if result.returncode != 0:
        return "-"
    try:
        report = json.loads(result.stdout.strip().splitlines()[-1])
        total = report["per_device_bytes"]["total"]
    except (ValueError, KeyError, IndexError, TypeError):
        return "-"
    return f"{total / 2**30:.2f} GiB"
