"""The SLURM executor against a real single-node SLURM started by the fixture.

The fixture runs Debian's ``slurm-wlm`` and ``munge`` (``apt-get install -y slurm-wlm munge``)
as this user: its own munge key and socket, a ``slurm.conf`` with ``ProctrackType=
proctrack/linuxproc`` and ``TaskPlugin=task/none``, state and spool directories under a temporary
folder, this host as the only node, no accounting (so no ``sacct``: the executor copes).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest

from test_grid_launch import SCRIPTED_CLI, SPEC

pytestmark = pytest.mark.slurm

DAEMONS = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "squeue", "sinfo")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _slurm_conf(root: Path, host: str, munge_socket: Path) -> str:
    return textwrap.dedent(f"""\
        ClusterName=harnesstest
        SlurmctldHost={host}
        SlurmUser={os.environ.get("USER") or "root"}
        AuthType=auth/munge
        AuthInfo=socket={munge_socket}
        CredType=cred/munge
        ProctrackType=proctrack/linuxproc
        TaskPlugin=task/none
        SelectType=select/cons_tres
        SelectTypeParameters=CR_Core
        SchedulerType=sched/builtin
        StateSaveLocation={root / "state"}
        SlurmdSpoolDir={root / "spool"}
        SlurmctldPidFile={root / "slurmctld.pid"}
        SlurmdPidFile={root / "slurmd.pid"}
        SlurmctldPort={_free_port()}
        SlurmdPort={_free_port()}
        SlurmctldLogFile={root / "log" / "slurmctld.log"}
        SlurmdLogFile={root / "log" / "slurmd.log"}
        MpiDefault=none
        ReturnToService=2
        JobAcctGatherType=jobacct_gather/none
        AccountingStorageType=accounting_storage/none
        JobCompType=jobcomp/none
        NodeName={host} CPUs={os.cpu_count() or 1} RealMemory=2000 State=UNKNOWN
        PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
        """)


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """A running slurmctld + slurmd (+ munged) for this session; yields the SLURM_CONF path."""
    missing = [d for d in DAEMONS if shutil.which(d) is None and not Path(f"/usr/sbin/{d}").exists()]
    if missing:
        pytest.skip(f"SLURM not installed ({', '.join(missing)} missing): apt-get install -y slurm-wlm munge")
    root = tmp_path_factory.mktemp("slurm")
    for name in ("munge", "state", "spool", "log"):
        (root / name).mkdir()
    os.chmod(root / "munge", 0o700)
    key, munge_socket = root / "munge" / "munge.key", root / "munge" / "munge.socket"
    subprocess.run(["mungekey", "--create", "--keyfile", str(key)], check=True, capture_output=True)
    munge_pid = root / "munge" / "munged.pid"
    subprocess.run(["munged", "--force", f"--socket={munge_socket}", f"--key-file={key}",
                    f"--pid-file={munge_pid}", f"--log-file={root / 'log' / 'munged.log'}",
                    f"--seed-file={root / 'munge' / 'seed'}"], check=True, capture_output=True)
    host = socket.gethostname().split(".")[0]
    conf = root / "slurm.conf"
    conf.write_text(_slurm_conf(root, host, munge_socket))
    env = {**os.environ, "SLURM_CONF": str(conf)}
    daemons = [subprocess.Popen([name, "-D", *extra], env=env, stdout=open(root / "log" / f"{name}.out", "w"),
                                stderr=subprocess.STDOUT) for name, extra in (("slurmctld", ["-i"]), ("slurmd", []))]
    try:
        deadline = time.time() + 60
        while True:
            state = subprocess.run(["sinfo", "-h", "-o", "%t"], env=env, capture_output=True, text=True).stdout.strip()
            if state == "idle":
                break
            if time.time() > deadline or any(d.poll() is not None for d in daemons):
                logs = "\n".join((root / "log" / f).read_text()[-2000:] for f in ("slurmctld.out", "slurmd.out"))
                raise RuntimeError(f"SLURM did not come up (sinfo: {state!r}):\n{logs}")
            time.sleep(0.5)
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("SLURM_CONF", str(conf))
            yield conf
    finally:
        for daemon in daemons:
            daemon.terminate()
        for daemon in daemons:
            try:
                daemon.wait(timeout=20)
            except subprocess.TimeoutExpired:
                daemon.kill()
        if munge_pid.exists():
            subprocess.run(["kill", munge_pid.read_text().strip()], check=False)


def test_submitit_trivial_job(slurm_cluster, tmp_path):
    import submitit

    executor = submitit.AutoExecutor(folder=str(tmp_path / "jobs"), cluster="slurm")
    executor.update_parameters(timeout_min=5, slurm_partition="debug", cpus_per_task=1)
    # a function the job can import by reference (test modules are not on the job's path)
    command = submitit.helpers.CommandFunction([sys.executable, "-c",
                                                "import os, sys; print(os.environ['SLURM_JOB_ID'], sys.executable)"])
    job = executor.submit(command)
    job_id, python = job.result().split()
    assert job_id == str(job.job_id) and python == sys.executable


def test_grid_cells_as_slurm_jobs(slurm_cluster, tmp_path, monkeypatch):
    """One job per cell; a crashing cell is reported with its log; the table names it."""
    from harness.grid.executors import SlurmOptions
    from harness.grid.launch import run_grid
    from harness.grid.rundir import read_grid_record
    from harness.grid.spec import expand, load_grid_spec

    script = tmp_path / "scripted_cli.py"
    script.write_text(SCRIPTED_CLI)
    monkeypatch.setenv("HARNESS_GRID_CLI", f"{sys.executable} {script}")
    monkeypatch.setenv("GRID_TEST_CALLS", str(tmp_path / "calls.jsonl"))
    monkeypatch.setenv("GRID_TEST_CRASH_LR", "0.003")
    spec = tmp_path / "grid.yaml"
    spec.write_text(textwrap.dedent(SPEC) + "slurm: {partition: debug, time_min: 5, cpus_per_task: 1}\n")
    loaded = load_grid_spec(spec)
    cells = expand(loaded)
    runs, out = tmp_path / "runs", tmp_path / "results"
    report = run_grid(loaded, cells, runs_dir=runs, out_dir=out, executor="slurm",
                      slurm=SlurmOptions(poll_s=0.5), progress=lambda m: None)
    assert [o.cell_id for o in report.failed] == [cells[1].id]
    assert report.failed[0].failed == "train" and "simulated crash" in Path(report.failed[0].log).read_text()
    jobs = {read_grid_record(runs / c.id)["slurm"]["job_id"] for c in cells}
    assert len(jobs) == 3
    table = pd.read_csv(out / "table.csv", dtype=str, keep_default_na=False).set_index("Mixture")
    assert table.loc["ShareGPT", "Status"] == "failed" and table.loc["FLAN-T5", "Status"] == "done"
    calls = [json.loads(line) for line in (tmp_path / "calls.jsonl").read_text().splitlines()]
    report = run_grid(loaded, cells, runs_dir=runs, out_dir=None, executor="slurm",
                      slurm=SlurmOptions(poll_s=0.5), progress=lambda m: None)
    assert len(report.skipped) == 2 and [o.cell_id for o in report.outcomes] == [cells[1].id]
    after = [json.loads(line) for line in (tmp_path / "calls.jsonl").read_text().splitlines()]
    assert [a[0] for a in after[len(calls):]] == ["train"]  # only the crashed cell was submitted again


def _train_and_eval_exist() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in ("harness.commands.train", "harness.eval.suite"))


@pytest.mark.slow
@pytest.mark.skipif(not _train_and_eval_exist(), reason="harness train / harness eval are not in this tree")
def test_real_tiny_cell_on_slurm(slurm_cluster, tmp_path):
    """The quickstart's smallest cell, submitted to SLURM: it trains, evaluates, and is in the table."""
    from harness.grid.executors import SlurmOptions
    from harness.grid.launch import run_grid
    from harness.grid.spec import ASSETS_DIR, expand, load_grid_spec, parse_only, select_cells

    quickstart = Path(__file__).resolve().parents[1] / "experiments" / "quickstart.yaml"
    spec = tmp_path / "grid.yaml"
    # one cell, 4 steps, MMLU only on 2 questions per subject, to keep the test short; everything
    # else is the shipped quickstart
    text = quickstart.read_text().replace("${assets}", str(ASSETS_DIR))
    for old, new in (("tasks: [mmlu, bbh, alpacafarm]", "tasks: [mmlu]"), ("limit: 16", "limit: 2"),
                     ("steps: 20", "steps: 4")):
        assert old in text, old
        text = text.replace(old, new)
    spec.write_text(text)
    loaded = load_grid_spec(spec)
    cells = expand(loaded)
    selected = select_cells(cells, parse_only(["data=self_instruct"], loaded))
    runs, out = tmp_path / "runs", tmp_path / "results"
    report = run_grid(loaded, selected, runs_dir=runs, out_dir=out, executor="slurm",
                      slurm=SlurmOptions(partition="debug", time_min=10, poll_s=1.0), progress=print)
    assert not report.failed, [(o.failed, o.log, o.message) for o in report.failed]
    run_dir = runs / selected[0].id
    assert json.loads((run_dir / "run.json").read_text())["status"] == "done"
    table = pd.read_csv(out / "table.csv", dtype=str, keep_default_na=False)
    row = table[table["Run"] == selected[0].id].iloc[0]
    assert row["Status"] == "done"
    mmlu = next(c for c in table.columns if c.startswith("MMLU") and "(published)" not in c)
    assert 0.0 <= float(row[mmlu]) <= 100.0
