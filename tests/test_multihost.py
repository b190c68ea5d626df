"""Multi-host training on one machine: two processes on loopback with 2 CPU devices each (gloo
collectives, jax.distributed) give the losses of one process with 4 devices, each process
reading only its half of every global batch."""

import json
import socket
import subprocess
import sys

import numpy as np
import pytest

from test_train_resume import CONFIG, REPO, harness_env, metrics


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_processes_match_one_process(tmp_path, reference_run):
    root, cache = reference_run
    single = root / "reference"  # one process, 4 devices, the same config
    multi = tmp_path / "multi"
    port = free_port()
    procs = []
    for rank in range(2):
        command = [sys.executable, "-m", "harness.cli", "train", str(CONFIG), "--run-dir", str(multi),
                   "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", str(rank)]
        procs.append(subprocess.Popen(command, cwd=REPO, env=harness_env(cache, devices=2),
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=600))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    for proc, (_, err) in zip(procs, outputs):
        assert proc.returncode == 0, err[-3000:]

    record = json.loads((multi / "run.json").read_text())
    assert record["devices"]["processes"] == 2 and record["devices"]["count"] == 4
    assert record["mesh"] == json.loads((single / "run.json").read_text())["mesh"]
    one, two = metrics(single), metrics(multi)
    assert sorted(one) == sorted(two) == list(range(1, 13))
    for step in one:
        # same global batch on the same mesh; only the all-reduce implementation differs
        assert two[step]["loss_tokens"] == one[step]["loss_tokens"]
        np.testing.assert_allclose(two[step]["loss"], one[step]["loss"], rtol=1e-5)
        np.testing.assert_allclose(two[step]["grad_norm"], one[step]["grad_norm"], rtol=1e-4)
    assert (multi / "checkpoints" / "12").is_dir()


def test_cluster_detection_from_environment(monkeypatch):
    from harness.errors import ConfigError
    from harness.train import distributed

    for name in ("SLURM_JOB_ID", "SLURM_NTASKS", "SLURM_STEP_NUM_TASKS", "TPU_WORKER_HOSTNAMES",
                 "JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        monkeypatch.delenv(name, raising=False)
    assert distributed.cluster_detected() is None
    assert distributed.initialize() is False  # a plain single process starts nothing
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    monkeypatch.setenv("SLURM_NTASKS", "4")
    assert distributed.cluster_detected() == "slurm"
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "1")  # srun -n 1 inside a 4-task allocation
    assert distributed.cluster_detected() is None
    monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "t0,t1")
    assert distributed.cluster_detected() == "tpu"

    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "10.0.0.1:1234")
    monkeypatch.setenv("JAX_NUM_PROCESSES", "2")
    settings = distributed.settings_from_env(distributed.DistributedSettings(process_id=1))
    assert (settings.coordinator, settings.num_processes, settings.process_id) == ("10.0.0.1:1234", 2, 1)
    with pytest.raises(ConfigError, match="needs --process-id"):
        distributed.initialize(distributed.DistributedSettings())
    with pytest.raises(ConfigError, match="outside 0..1"):
        distributed.initialize(distributed.DistributedSettings(process_id=5))
