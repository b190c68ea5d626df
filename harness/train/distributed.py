"""Multi-process start-up: ``jax.distributed.initialize`` from flags or the cluster environment.

Order of precedence: explicit flags (``--coordinator HOST:PORT --num-processes N
--process-id I``), then ``JAX_COORDINATOR_ADDRESS`` / ``JAX_NUM_PROCESSES`` / ``JAX_PROCESS_ID``,
then a SLURM job step with more than one task or a multi-host Cloud TPU slice, where JAX's own
cluster detection finds everything. A single plain process initialises nothing. It must run
before anything touches a jax backend; it switches CPU collectives to gloo so CPU processes
can all-reduce over loopback (how the multi-host behaviour is tested on one machine).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from harness.errors import ConfigError


@dataclass(frozen=True)
class DistributedSettings:
    """Where the coordinator is and which process this is (None = detect / single process)."""

    coordinator: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    local_device_ids: tuple[int, ...] | None = None


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value in (None, ""):
        return None
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"environment variable {name}={value!r} is not an integer") from None


def settings_from_env(flags: DistributedSettings) -> DistributedSettings:
    """Fill unset flags from ``JAX_COORDINATOR_ADDRESS`` / ``JAX_NUM_PROCESSES`` / ``JAX_PROCESS_ID``."""
    return DistributedSettings(
        coordinator=flags.coordinator or os.environ.get("JAX_COORDINATOR_ADDRESS") or None,
        num_processes=flags.num_processes if flags.num_processes is not None else _env_int("JAX_NUM_PROCESSES"),
        process_id=flags.process_id if flags.process_id is not None else _env_int("JAX_PROCESS_ID"),
        local_device_ids=flags.local_device_ids,
    )


def cluster_detected() -> str | None:
    """"slurm" / "tpu" when JAX's cluster auto-detection should run (a multi-process job)."""
    # an srun step's own task count first: a batch script's SLURM_NTASKS alone (no srun) is
    # one process, which must not wait for peers that were never started
    step_tasks = _env_int("SLURM_STEP_NUM_TASKS")
    tasks = step_tasks if step_tasks is not None else _env_int("SLURM_NTASKS")
    if os.environ.get("SLURM_JOB_ID") and tasks and tasks > 1:
        return "slurm"
    hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
    if hosts and len([h for h in hosts.split(",") if h]) > 1:
        return "tpu"
    return None


def initialize(flags: DistributedSettings | None = None) -> bool:
    """Start ``jax.distributed`` when this is a multi-process job; True if it was started."""
    import jax

    settings = settings_from_env(flags or DistributedSettings())
    explicit = settings.coordinator is not None or settings.num_processes is not None
    if explicit:
        missing = [name for name, value in (("--coordinator", settings.coordinator),
                                            ("--num-processes", settings.num_processes),
                                            ("--process-id", settings.process_id)) if value is None]
        if missing:
            raise ConfigError(f"multi-process training needs {', '.join(missing)} as well (or the JAX_* variables)")
        if not 0 <= settings.process_id < settings.num_processes:
            raise ConfigError(
                f"--process-id {settings.process_id} is outside 0..{settings.num_processes - 1}"
            )
        if settings.num_processes == 1:
            return False
    elif cluster_detected() is None:
        return False
    # Only the CPU client reads this; GPU/TPU collectives are unaffected.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if explicit:
        jax.distributed.initialize(
            coordinator_address=settings.coordinator,
            num_processes=settings.num_processes,
            process_id=settings.process_id,
            local_device_ids=list(settings.local_device_ids) if settings.local_device_ids else None,
        )
    else:
        jax.distributed.initialize()
    return True


def process_info() -> tuple[int, int]:
    """(process_index, process_count) of this process."""
    import jax

    return jax.process_index(), jax.process_count()
