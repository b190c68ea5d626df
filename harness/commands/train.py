"""``harness train CONFIG [key=value ...] [--run-dir DIR]``: run (or resume) one training run."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Optional

import typer


def default_run_dir(config) -> Path:
    """``runs/<hash of the resolved config>``, so rerunning the same command finds the same directory."""
    digest = hashlib.sha256(config.to_yaml().encode()).hexdigest()[:12]
    return Path("runs") / digest


def register(app: typer.Typer) -> None:
    """Add the ``train`` command."""

    @app.command("train", context_settings={"allow_extra_args": False})
    def train_command(
        config: Path = typer.Argument(..., help="run config YAML (e.g. experiments/train_tiny.yaml)"),
        overrides: Optional[list[str]] = typer.Argument(None, help="dotted overrides, e.g. train.lr=1e-4"),
        run_dir: Optional[Path] = typer.Option(None, "--run-dir", help="run directory (default runs/<config hash>)"),
        coordinator: Optional[str] = typer.Option(None, "--coordinator", help="multi-process: HOST:PORT of process 0"),
        num_processes: Optional[int] = typer.Option(None, "--num-processes", help="multi-process: number of processes"),
        process_id: Optional[int] = typer.Option(None, "--process-id", help="multi-process: this process's index"),
    ) -> None:
        """Train a model as CONFIG says; rerunning the same command resumes from the last checkpoint."""
        from harness.train.distributed import DistributedSettings, initialize

        # jax.distributed must start before anything touches a jax backend.
        initialize(DistributedSettings(coordinator=coordinator, num_processes=num_processes, process_id=process_id))

        import jax

        from harness.config import load_run_config
        from harness.train.loop import train

        run_config = load_run_config(config, list(overrides or []))
        directory = run_dir or default_run_dir(run_config)
        result = train(run_config, directory)
        if jax.process_index() == 0:
            loss = "n/a" if result.final_loss is None else f"{result.final_loss:.4f}"
            resumed = "" if result.resumed_from is None else f" (resumed from step {result.resumed_from})"
            typer.echo(f"trained {result.steps} steps{resumed}; final loss {loss}; run directory {directory}")
