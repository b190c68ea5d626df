"""The training loop: set up, resume, step, log, checkpoint, finish.

``train(config, run_dir)`` runs one run into ``run_dir`` (config.yaml, run.json, metrics.jsonl,
checkpoints/, tokenizer/). Re-running it on the same directory resumes from the newest readable
checkpoint. Inside the step loop the host never waits on the device except at logging steps
(``logging.every``), checkpoint steps and the last step: the device runs ahead while the host
fetches the next batch. A non-finite loss stops the run at the next such point with the step
where it happened; no checkpoint is written after it, so the last good one stays the newest.

Fault injection for tests: ``HARNESS_FAULT_KILL_AFTER_STEP=N`` makes the process SIGKILL itself
right after step N's checkpoint was handed to orbax (a crash at the worst moment).
"""

from __future__ import annotations

import dataclasses
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax

from harness.atomic import write_text_atomic
from harness.config import RunConfig, load_run_config
from harness.errors import ConfigError, HarnessError
from harness.train import optim, setup
from harness.train.checkpoint import CHECKPOINT_DIR, Checkpointer
from harness.train.metrics import MetricsLog, Progress, peak_flops, train_flops_per_token
from harness.train.record import RunRecord, git_commit, versions
from harness.train.step import LOSS_REDUCTION, TrainStep, place_train_state, with_shardings

CONFIG_FILE = "config.yaml"
FAULT_ENV = "HARNESS_FAULT_KILL_AFTER_STEP"


class TrainingDiverged(HarnessError):
    """The loss or gradient norm became NaN/inf."""


@dataclass
class TrainResult:
    """What a finished run reports back."""

    run_dir: Path
    steps: int
    final_loss: float | None
    resumed_from: int | None


def _check_run_dir_config(run_dir: Path, config: RunConfig) -> None:
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        return
    previous = load_run_config(path)
    if previous.to_dict() != config.to_dict():
        old, new = previous.to_dict(), config.to_dict()
        changed = sorted(_diff_keys(old, new))
        raise ConfigError(
            f"{run_dir} already holds a run with a different config (changed: {', '.join(changed)}); "
            "resuming it would mix two runs: use another --run-dir, or delete that directory"
        )


def _diff_keys(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        keys = set(old) | set(new)
        return [k for key in keys for k in _diff_keys(old.get(key), new.get(key), f"{prefix}{key}.")]
    return [] if old == new else [prefix.rstrip(".")]


def train(config: RunConfig, run_dir: str | Path) -> TrainResult:
    """Run (or resume) one training run into ``run_dir``; returns when the last step is saved."""
    run_dir = Path(run_dir)
    main = jax.process_index() == 0
    run_dir.mkdir(parents=True, exist_ok=True)
    _check_run_dir_config(run_dir, config)
    if main:
        write_text_atomic(run_dir / CONFIG_FILE, config.to_yaml())
    record = RunRecord(run_dir, enabled=main)
    started = time.time()
    record.update(status="running", labels=config.labels, loss_reduction=LOSS_REDUCTION, versions=versions(),
                  git_commit=git_commit(), error=None, timings={"started_at": started})
    try:
        result = _run(config, run_dir, record)
    except BaseException as exc:
        message = str(exc) if isinstance(exc, HarnessError) else f"{type(exc).__name__}: {exc}"
        record.update(status="failed", error=message, timings={"failed_at": time.time()})
        raise
    record.update(status="done", final_step=result.steps, final_loss=result.final_loss,
                  timings={"finished_at": time.time(), "wall_s": time.time() - started})
    return result


def _run(config: RunConfig, run_dir: Path, record: RunRecord) -> TrainResult:
    main = jax.process_index() == 0
    setup_started = time.time()
    mesh = setup.build_mesh(config)
    known = setup.preset_config(config)
    if known is not None:  # cheap checks first when the architecture is known without weights
        setup.check_length(config, known)
        tokenizer = setup.build_tokenizer(config)
        setup.check_vocab(known, tokenizer)
        data = setup.build_data(config, tokenizer)
    model, loaded_tokenizer = setup.build_model(config, seed=config.seed, mesh=mesh)
    if known is None:
        setup.check_length(config, model.config)
        tokenizer = setup.build_tokenizer(config, loaded_tokenizer)
        setup.check_vocab(model.config, tokenizer)
        data = setup.build_data(config, tokenizer)
    if main and not (run_dir / "tokenizer").is_dir():
        tokenizer.save(run_dir / "tokenizer")
    steps_total = setup.total_steps(config, data)

    schedule = optim.make_schedule(config.train, steps_total)
    tx = optim.make_optimizer(config.optimizer, schedule)
    trainable = optim.trainable_filter(config.peft)
    model_config = model.config
    graphdef, state, shardings = place_train_state(model, tx, trainable, mesh)
    del model
    trainable_count = optim.count_params(state.params)
    meta = {
        "seed": config.seed,
        "model_config": dataclasses.asdict(model_config),
        "peft": config.peft.model_dump(mode="json"),
        "mesh": setup.mesh_description(mesh),
        "loss_reduction": LOSS_REDUCTION,
    }
    checkpointer = Checkpointer(run_dir / CHECKPOINT_DIR, keep=config.checkpoint.keep,
                                async_save=config.checkpoint.async_save, every=config.checkpoint.every,
                                run_config=config)
    abstract = with_shardings(jax.eval_shape(lambda: state), shardings)
    # The frozen base is already in memory: an adapter-only restore reuses it, not a second copy.
    restored = checkpointer.restore_latest(abstract, base=state.rest)
    if restored is not None:
        state = restored.state
        if restored.data_state:
            data.restore(restored.data_state)
        start = restored.step
    else:
        start = 0
    metrics_log = MetricsLog(run_dir / "metrics.jsonl", enabled=main,
                             tensorboard_dir=run_dir / "tensorboard" if config.logging.tensorboard else None)
    metrics_log.truncate_after(start)

    seq_len, rows = None, config.train.global_batch
    lora_count = trainable_count if config.peft.method == "lora" else 0
    peak = config.logging.peak_flops_per_device or peak_flops(jax.devices()[0].device_kind)
    step_fn = TrainStep(graphdef, tx, trainable, accumulation_steps=config.train.accumulation_steps,
                        mesh=mesh, state_shardings=shardings, schedule=schedule,
                        dropout_seed=config.seed)
    record.update(
        devices=setup.device_summary(), mesh=setup.mesh_description(mesh), total_steps=steps_total,
        params=optim.count_params(state.params) + optim.count_params(state.rest), trainable_params=trainable_count,
        resumed_from_step=start if restored is not None else None,
        timings={"setup_s": time.time() - setup_started},
    )

    progress = Progress(steps_total, start, enabled=main and config.logging.progress)
    fault_step = int(os.environ.get(FAULT_ENV, "0") or 0)
    last_loss = None
    interval_start, interval_steps = time.time(), 0
    try:
        for step in range(start, steps_total):
            local = data.next_batch()
            if step == start:
                setup.check_batch_keys(local)
            batch = setup.global_batch(local, mesh, rows)
            if step == start and restored is None:
                setup.check_trainable_tokens(batch)
            seq_len = batch["tokens"].shape[1]
            state, metrics = step_fn(state, batch)
            done = step + 1
            interval_steps += 1
            progress.advance()
            first = step == start
            save = checkpointer.due(done) or done == steps_total
            if first or save or done % config.logging.every == 0 or done == steps_total:
                metrics = jax.device_get(metrics)
                _raise_if_diverged(state, done, checkpointer)
                now = time.time()
                tokens_per_s = rows * seq_len * interval_steps / max(now - interval_start, 1e-9)
                flops = train_flops_per_token(model_config, seq_len, lora_params=lora_count)
                entry = {
                    "step": done,
                    "loss": float(metrics["loss"]),
                    "lr": float(metrics["lr"]),
                    "grad_norm": float(metrics["grad_norm"]),
                    "loss_tokens": int(metrics["loss_tokens"]),
                    "tokens_per_s": tokens_per_s,
                    "mfu": flops * tokens_per_s / (peak * jax.device_count()) if peak else None,
                    "time": now,
                }
                if first:
                    entry["includes_compile"] = True
                    record.update(timings={"first_step_s": now - interval_start})
                metrics_log.write(entry)
                progress.show(entry)
                last_loss = entry["loss"]
                interval_start, interval_steps = time.time(), 0
            if save:
                checkpointer.save(done, state, data.state(), meta)
            if fault_step and done == fault_step:
                os.kill(os.getpid(), signal.SIGKILL)
        checkpointer.wait()
    finally:
        progress.close()
        metrics_log.close()
        checkpointer.close()
    return TrainResult(run_dir=run_dir, steps=steps_total, final_loss=last_loss,
                       resumed_from=start if restored is not None else None)


def _raise_if_diverged(state, step: int, checkpointer: Checkpointer) -> None:
    bad = int(jax.device_get(state.nonfinite_step))
    if bad < 0:
        return
    saved = checkpointer.steps()
    last = f"the last good checkpoint is step {saved[-1]}" if saved else "no checkpoint was written yet"
    raise TrainingDiverged(
        f"the loss or gradient norm became NaN/inf at step {bad + 1} (detected at step {step}); "
        f"{last}, and nothing was saved after the failure. Lower train.lr, raise the warm-up, or "
        "set optimizer.clip_norm; rerunning the same command resumes from that checkpoint"
    )
