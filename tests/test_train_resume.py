"""Exact resumption: a run SIGKILLed after a checkpoint, rerun with the same command, matches a
run never interrupted - the same loss at every step and bitwise-equal final parameters (CPU)."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np

from harness.train.checkpoint import load_from_run

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "experiments" / "train_tiny.yaml"


def harness_env(tmp_cache: Path, devices: int = 4, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
        JAX_PLATFORMS="cpu",
        # the three runs compile the same programs: share them through jax's persistent cache
        JAX_COMPILATION_CACHE_DIR=str(tmp_cache),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
        HARNESS_CACHE=str(tmp_cache / "data"),
    )
    env.pop("HARNESS_FAULT_KILL_AFTER_STEP", None)
    env.update(extra)
    return env


def run_train(run_dir: Path, env: dict[str, str], *overrides: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "harness.cli", "train", str(CONFIG), *overrides, "--run-dir", str(run_dir)]
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def metrics(run_dir: Path) -> dict[int, dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return {r["step"]: r for r in map(json.loads, lines)}


def test_sigkill_then_resume_is_exact(reference_run):
    root, cache = reference_run
    reference = root / "reference"
    killed = root / "killed"
    # SIGKILL right after step 9 handed its state to orbax... step 8's checkpoint was complete.
    crash = run_train(killed, harness_env(cache, HARNESS_FAULT_KILL_AFTER_STEP="9"), "checkpoint.every=3")
    assert crash.returncode == -signal.SIGKILL, crash.stderr[-3000:]
    assert json.loads((killed / "run.json").read_text())["status"] == "running"  # nothing cleaned up

    # Same command again (the fault injection off): resumes from the newest complete checkpoint.
    resumed = run_train(killed, harness_env(cache), "checkpoint.every=3")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    record = json.loads((killed / "run.json").read_text())
    assert record["status"] == "done"
    assert record["resumed_from_step"] in (6, 9)
    assert "resumed from step" in resumed.stdout

    # The reference run was saved every 4 steps, the killed one every 3: checkpointing itself
    # must not change the numbers.
    ref, got = metrics(reference), metrics(killed)
    assert sorted(got) == sorted(ref) == list(range(1, 13))
    for step in ref:
        for key in ("loss", "grad_norm", "lr", "loss_tokens"):
            assert got[step][key] == ref[step][key], (step, key)

    model_a, _ = load_from_run(reference)
    model_b, tokenizer = load_from_run(killed)
    assert tokenizer is not None and tokenizer.vocab_size <= 512
    leaves_a = jax.tree_util.tree_leaves_with_path(_arrays(model_a))
    leaves_b = dict(jax.tree_util.tree_leaves_with_path(_arrays(model_b)))
    assert len(leaves_a) == len(leaves_b) > 0
    for path, value in leaves_a:
        np.testing.assert_array_equal(np.asarray(value), np.asarray(leaves_b[path]), err_msg=str(path))


def test_rerunning_a_finished_run_changes_nothing(reference_run):
    root, cache = reference_run
    before = (root / "reference" / "metrics.jsonl").read_text()
    again = run_train(root / "reference", harness_env(cache))
    assert again.returncode == 0, again.stderr[-3000:]
    assert (root / "reference" / "metrics.jsonl").read_text() == before
    assert "resumed from step 12" in again.stdout


def test_changed_config_in_same_run_dir_is_refused(reference_run):
    root, cache = reference_run
    result = run_train(root / "reference", harness_env(cache), "train.lr=0.5")
    assert result.returncode == 2
    assert "different config (changed: train.lr)" in result.stderr


def _arrays(model):
    from flax import nnx

    return nnx.to_pure_dict(nnx.state(model))
