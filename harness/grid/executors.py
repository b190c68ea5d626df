"""Where cells run: ``local`` (one after another on this host) or ``slurm`` (one job per cell).

Both run the same function, :func:`harness.grid.stages.run_cell`, which starts ``harness train``
and ``harness eval`` as subprocesses. On SLURM a multi-node cell is one job of ``nodes`` tasks
(one per node): every task runs ``harness train``, which initialises ``jax.distributed`` from the
SLURM environment; only task 0 evaluates and writes the grid's records.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.errors import ConfigError
from harness.grid.rundir import update_grid_record
from harness.grid.spec import EvalSpec, SlurmSpec
from harness.grid.stages import CellOutcome, child_env, run_cell


@dataclass
class CellTask:
    """One cell to run: its run directory and the evaluations it needs."""

    cell_id: str
    run_dir: Path
    eval_spec: EvalSpec
    label_text: str = ""


Progress = Callable[[str], None]


def run_local(tasks: list[CellTask], progress: Progress = print) -> list[CellOutcome]:
    """Run cells one after another in this process's host; a failure does not stop the rest."""
    outcomes = []
    for index, task in enumerate(tasks, 1):
        progress(f"[{index}/{len(tasks)}] cell {task.cell_id} ({task.label_text})")
        try:
            outcome = run_cell(task.run_dir, task.cell_id, task.eval_spec, env=child_env(task.run_dir.parent))
        except OSError as exc:  # the run directory itself is unusable
            outcome = CellOutcome(task.cell_id, failed="prepare", message=str(exc))
        outcomes.append(outcome)
        progress(_describe(outcome))
    return outcomes


def _describe(outcome: CellOutcome) -> str:
    if not outcome.ok:
        return f"  FAILED at {outcome.failed}: see {outcome.log}"
    parts = [f"ran {', '.join(outcome.ran)}" if outcome.ran else "",
             f"skipped {', '.join(outcome.skipped)} (done)" if outcome.skipped else ""]
    return "  " + "; ".join(p for p in parts if p) if any(parts) else "  nothing to do"


def slurm_cell_job(run_dir: str, cell_id: str, eval_spec: dict[str, Any]) -> CellOutcome:
    """The function a SLURM job runs (pickled by submitit): the cell's stages on this task's rank."""
    import submitit

    job = submitit.JobEnvironment()
    node = os.environ.get("SLURMD_NODENAME", job.hostname)
    # in the task's own log: which node ran which rank (multi-node cells have one task per node)
    print(f"harness cell {cell_id}: task {job.global_rank} of {job.num_tasks} on node {node}", flush=True)
    return run_cell(Path(run_dir), cell_id, EvalSpec.model_validate(eval_spec), rank=job.global_rank,
                    env=child_env(Path(run_dir).parent))


@dataclass
class SlurmOptions:
    """Resources of every cell's job; unset fields fall back to the spec's ``slurm`` section."""

    partition: str | None = None
    time_min: int | None = None
    nodes: int | None = None
    gpus_per_node: int | None = None
    cpus_per_task: int | None = None
    folder: Path | None = None
    poll_s: float = 2.0
    extra: dict[str, Any] = field(default_factory=dict)

    def merged(self, spec: SlurmSpec) -> SlurmSpec:
        """The spec's slurm section with these flags applied on top."""
        updates = {k: v for k, v in {"partition": self.partition, "time_min": self.time_min, "nodes": self.nodes,
                                     "gpus_per_node": self.gpus_per_node,
                                     "cpus_per_task": self.cpus_per_task}.items() if v is not None}
        return spec.model_copy(update=updates)


def _executor(folder: Path, resources: SlurmSpec):
    import submitit

    executor = submitit.AutoExecutor(folder=str(folder), cluster="slurm")
    params: dict[str, Any] = {"timeout_min": resources.time_min, "nodes": resources.nodes, "tasks_per_node": 1}
    if resources.gpus_per_node:
        params["gpus_per_node"] = resources.gpus_per_node
    if resources.cpus_per_task:
        params["cpus_per_task"] = resources.cpus_per_task
    if resources.mem_gb:
        params["mem_gb"] = resources.mem_gb
    slurm_only = {"partition": resources.partition, "account": resources.account, "qos": resources.qos,
                  "constraint": resources.constraint}
    params.update({f"slurm_{k}": v for k, v in slurm_only.items() if v})
    params.update({f"slurm_{k}": v for k, v in resources.additional.items()})
    executor.update_parameters(**params)
    return executor


def _queued(job_ids: list[str]) -> set[str] | None:
    """Job ids squeue still lists (None when squeue cannot be asked)."""
    try:
        output = subprocess.run(["squeue", "-h", "-o", "%i", "-j", ",".join(job_ids)],
                                capture_output=True, text=True, check=False, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if output.returncode != 0 and "Invalid job id" not in output.stderr:
        return None
    return {line.strip().split("_")[0] for line in output.stdout.splitlines() if line.strip()}


def run_slurm(tasks: list[CellTask], spec: SlurmSpec, options: SlurmOptions, runs_dir: Path,
              progress: Progress = print) -> list[CellOutcome]:
    """Submit one job per cell through submitit, wait for all, and collect their outcomes.

    Completion is read from submitit's result file, with ``squeue`` as the fallback: a job that
    left the queue without a result (killed, out of time) is a failed cell whose log is the job's
    stderr. Clusters without accounting (no ``sacct``) work the same way.
    """
    if not tasks:
        return []
    resources = options.merged(spec)
    folder = options.folder or runs_dir / ".slurm"
    try:
        executor = _executor(folder, resources)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"slurm executor: {exc}") from None
    jobs = {}
    for task in tasks:
        executor.update_parameters(name=f"harness-{task.cell_id}")
        job = executor.submit(slurm_cell_job, str(task.run_dir), task.cell_id, task.eval_spec.model_dump())
        update_grid_record(task.run_dir, slurm={"job_id": job.job_id, "stdout": str(job.paths.stdout),
                                                "stderr": str(job.paths.stderr), "submitted": time.time()})
        progress(f"submitted cell {task.cell_id} ({task.label_text}) as SLURM job {job.job_id}")
        jobs[task.cell_id] = (task, job)
    outcomes: dict[str, CellOutcome] = {}
    gone_since: dict[str, float] = {}
    while len(outcomes) < len(jobs):
        waiting = [cid for cid in jobs if cid not in outcomes]
        queued = _queued([jobs[cid][1].job_id for cid in waiting])
        for cid in waiting:
            task, job = jobs[cid]
            if queued is not None and job.job_id in queued:
                continue  # still pending or running (asking job.done() now would ask sacct)
            if job.done():
                outcomes[cid] = _collect(task, job)
            elif queued is not None:
                # left the queue; give the result file a grace period to appear on shared disks
                first = gone_since.setdefault(cid, time.time())
                if time.time() - first > 10:
                    outcomes[cid] = CellOutcome(cid, failed="slurm", log=str(job.paths.stderr),
                                                message=f"job {job.job_id} ended without a result")
            if cid in outcomes:
                progress(f"cell {cid} ({task.label_text}): {_describe(outcomes[cid]).strip()}")
        if len(outcomes) < len(jobs):
            time.sleep(options.poll_s)
    return [outcomes[task.cell_id] for task in tasks]


def _collect(task: CellTask, job) -> CellOutcome:
    """The cell's outcome from a finished job: rank 0's, unless another rank failed."""
    import submitit

    try:
        per_task = job.results()  # one outcome per task (per node of a multi-node cell)
    except (submitit.core.utils.UncompletedJobError, submitit.core.utils.FailedJobError) as exc:
        return CellOutcome(task.cell_id, failed="slurm", log=str(job.paths.stderr), message=str(exc)[-500:])
    return next((outcome for outcome in per_task if not outcome.ok), per_task[0])
