"""``harness plan``: per-device memory and FLOPs of a train step, compiled ahead of time.

On a machine with fewer devices than the mesh asks for, the command re-runs itself in a fresh
process with ``XLA_FLAGS=--xla_force_host_platform_device_count=N`` and ``JAX_PLATFORMS=cpu``
(both must be set before jax starts its backend), so ``harness plan --mesh fsdp=64`` works as
typed on a laptop.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import typer

from harness.errors import ConfigError

# Set in the re-executed child so it never re-executes again.
_CHILD_ENV = "HARNESS_PLAN_CHILD"


def parse_mesh(text: str) -> dict[str, int]:
    """``"fsdp=8"`` / ``"data=2,fsdp=4"`` -> {"fsdp": 8} / {"data": 2, "fsdp": 4}."""
    mesh: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--mesh {text!r}: expected axis=size items such as fsdp=8 or data=2,fsdp=4")
        name = name.strip()
        if name in mesh:
            raise ConfigError(f"--mesh {text!r}: axis {name!r} is given twice")
        try:
            mesh[name] = int(value)
        except ValueError:
            raise ConfigError(f"--mesh {text!r}: size of {name!r} is not an integer: {value!r}") from None
    if not mesh:
        raise ConfigError("--mesh is empty; give axis sizes such as fsdp=8")
    return mesh


def _child_argv(options: dict) -> list[str]:
    argv = [sys.executable, "-m", "harness.cli", "plan"]
    for key, value in options.items():
        if value is None or value is False:
            continue
        flag = "--" + key.replace("_", "-")
        argv += [flag] if value is True else [flag, str(value)]
    return argv


def _backend_devices() -> int | None:
    """Devices of the current backend, or None when the backend could not start."""
    import jax

    try:
        return len(jax.devices())
    except RuntimeError:
        return None


def register(app: typer.Typer) -> None:
    """Add ``harness plan``."""

    @app.command("plan")
    def plan(
        model: str = typer.Option("llama-7b", help="model preset (tiny, smollm2-135m, llama-7b, llama-13b, ...)"),
        mesh: str = typer.Option("fsdp=8", help="mesh axis sizes, e.g. fsdp=8 or data=2,fsdp=4,tensor=2"),
        batch: int = typer.Option(8, help="global batch (rows per optimizer step)"),
        seq_len: int = typer.Option(2048, help="tokens per row"),
        micro_batch: int = typer.Option(None, help="global rows per forward/backward (default: --batch)"),
        peft: str = typer.Option("none", help="none (full fine-tune) or lora"),
        lora_rank: int = typer.Option(16, help="LoRA rank"),
        lora_alpha: float = typer.Option(32.0, help="LoRA alpha (update scale alpha / rank)"),
        lora_targets: str = typer.Option("q,k,v,o,gate,up,down", help="comma-separated LoRA targets"),
        remat: str = typer.Option("full", help="gradient checkpointing: none, full, dots, dots_no_batch"),
        param_dtype: str = typer.Option("float32", help="parameter (master weight) dtype"),
        compute_dtype: str = typer.Option("bfloat16", help="matmul compute dtype"),
        attention_impl: str = typer.Option("xla", help="xla or cudnn"),
        json_output: bool = typer.Option(False, "--json", help="print one JSON object"),
    ) -> None:
        """Compile the train step ahead of time on abstract sharded arrays; report memory and FLOPs."""
        from harness.train.plan import PlanRequest

        request = PlanRequest(
            model=model, mesh=parse_mesh(mesh), batch=batch, seq_len=seq_len, micro_batch=micro_batch,
            peft=peft, lora_rank=lora_rank, lora_alpha=lora_alpha,
            lora_targets=tuple(t.strip() for t in lora_targets.split(",") if t.strip()),
            remat=remat, param_dtype=param_dtype, compute_dtype=compute_dtype, attention_impl=attention_impl,
        )
        available = _backend_devices()
        if (available is None or available < request.devices) and not os.environ.get(_CHILD_ENV):
            options = dict(
                model=model, mesh=mesh, batch=batch, seq_len=seq_len, micro_batch=micro_batch, peft=peft,
                lora_rank=lora_rank, lora_alpha=lora_alpha, lora_targets=lora_targets, remat=remat,
                param_dtype=param_dtype, compute_dtype=compute_dtype, attention_impl=attention_impl,
                json=json_output,
            )
            env = dict(os.environ)
            flags = [f for f in env.get("XLA_FLAGS", "").split() if not f.startswith("--xla_force_host_platform_device_count")]
            env["XLA_FLAGS"] = " ".join([*flags, f"--xla_force_host_platform_device_count={request.devices}"])
            env["JAX_PLATFORMS"] = "cpu"
            env[_CHILD_ENV] = "1"
            if not json_output:
                print(f"({available or 0} devices here; planning on {request.devices} CPU stand-in devices)", file=sys.stderr)
            result = subprocess.run(_child_argv(options), env=env, check=False)
            raise SystemExit(result.returncode)

        from harness.train.plan import format_report, plan_train_step

        report = plan_train_step(request)
        if json_output:
            print(json.dumps(report.to_json()))
        else:
            print(format_report(report))
