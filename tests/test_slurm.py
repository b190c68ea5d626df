"""The SLURM executor against a real single-node SLURM started by the fixture.

The fixture runs Debian's ``slurm-wlm`` and ``munge`` (``apt-get install -y slurm-wlm munge``)
as this user: its own munge key and socket, a ``slurm.conf`` with ``ProctrackType=
proctrack/linuxproc`` and ``TaskPlugin=task/none``, state and spool directories under a temporary
folder, no accounting (so no ``sacct``: the executor copes).

The cluster has two nodes, both this host: one ``slurmd -N NAME`` per node, each on its own
port, named after two host names that resolve to this machine (its hostname and another alias
from /etc/hosts; ``localhost`` will not do, SLURM replaces it by the hostname). That is enough
for a real two-node job: ``srun`` starts one task per node and JAX's SLURM cluster detection
finds its coordinator by the first node's name.
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
from dataclasses import dataclass
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


def _node_names(host: str) -> list[str]:
    """This host's name and, when /etc/hosts has one, a second name of this machine."""
    names = [host]
    try:
        lines = Path("/etc/hosts").read_text().splitlines()
    except OSError:
        return names
    for line in lines:
        fields = line.split("#")[0].split()
        if not fields or not fields[0].startswith("127."):
            continue
        for alias in fields[1:]:
            if alias not in names and alias != "localhost" and "." not in alias and len(names) < 2:
                names.append(alias)
    return names


def _slurm_conf(root: Path, host: str, nodes: list[str], munge_socket: Path) -> str:
    node_lines = "\n".join(f"NodeName={node} NodeAddr=127.0.0.1 NodeHostname={node} Port={_free_port()} "
                           f"CPUs={os.cpu_count() or 1} RealMemory=2000 State=UNKNOWN" for node in nodes)
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
        SlurmdSpoolDir={root / "spool"}/%n
        SlurmctldPidFile={root / "slurmctld.pid"}
        SlurmdPidFile={root / "slurmd"}.%n.pid
        SlurmctldPort={_free_port()}
        SlurmdPort={_free_port()}
        SlurmctldLogFile={root / "log" / "slurmctld.log"}
        SlurmdLogFile={root / "log" / "slurmd"}.%n.log
        MpiDefault=none
        ReturnToService=2
        JobAcctGatherType=jobacct_gather/none
        AccountingStorageType=accounting_storage/none
        JobCompType=jobcomp/none
        PartitionName=debug Nodes={",".join(nodes)} Default=YES MaxTime=INFINITE State=UP
        """) + node_lines + "\n"


@dataclass
class SlurmCluster:
    conf: Path
    nodes: list[str]


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """A running slurmctld + one slurmd per node (+ munged) for this session."""
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
    nodes = _node_names(host)
    for node in nodes:
        (root / "spool" / node).mkdir()
    conf = root / "slurm.conf"
    conf.write_text(_slurm_conf(root, host, nodes, munge_socket))
    env = {**os.environ, "SLURM_CONF": str(conf)}
    commands = [("slurmctld", ["slurmctld", "-D", "-i"])] + [(f"slurmd.{n}", ["slurmd", "-D", "-N", n]) for n in nodes]
    daemons = [subprocess.Popen(command, env=env, stdout=open(root / "log" / f"{name}.out", "w"),
                                stderr=subprocess.STDOUT) for name, command in commands]
    try:
        deadline = time.time() + 60
        while True:
            states = subprocess.run(["sinfo", "-h", "-N", "-o", "%t"], env=env, capture_output=True,
                                    text=True).stdout.split()
            if states == ["idle"] * len(nodes):
                break
            if time.time() > deadline or any(d.poll() is not None for d in daemons):
                logs = "\n".join((root / "log" / f"{name}.out").read_text()[-2000:] for name, _ in commands)
                raise RuntimeError(f"SLURM did not come up (sinfo: {states!r}):\n{logs}")
            time.sleep(0.5)
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("SLURM_CONF", str(conf))
            yield SlurmCluster(conf, nodes)
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


def _tiny_quickstart_cell(tmp_path: Path):
    """The quickstart spec cut to one cell (self_instruct), 4 steps, MMLU on 2 questions per subject."""
    from harness.grid.spec import ASSETS_DIR, expand, load_grid_spec, parse_only, select_cells

    quickstart = Path(__file__).resolve().parents[1] / "experiments" / "quickstart.yaml"
    spec = tmp_path / "grid.yaml"
    text = quickstart.read_text().replace("${assets}", str(ASSETS_DIR))
    for old, new in (("tasks: [mmlu, bbh, alpacafarm]", "tasks: [mmlu]"), ("limit: 16", "limit: 2"),
                     ("steps: 20", "steps: 4")):
        assert old in text, old
        text = text.replace(old, new)
    spec.write_text(text)
    loaded = load_grid_spec(spec)
    return loaded, select_cells(expand(loaded), parse_only(["data=self_instruct"], loaded))


def _assert_cell_in_table(out: Path, run_dir: Path) -> None:
    assert json.loads((run_dir / "run.json").read_text())["status"] == "done"
    table = pd.read_csv(out / "table.csv", dtype=str, keep_default_na=False)
    row = table[table["Run"] == run_dir.name].iloc[0]
    assert row["Status"] == "done"
    mmlu = next(c for c in table.columns if c.startswith("MMLU") and "(published)" not in c)
    assert 0.0 <= float(row[mmlu]) <= 100.0


@pytest.mark.slow
@pytest.mark.skipif(not _train_and_eval_exist(), reason="harness train / harness eval are not in this tree")
def test_real_tiny_cell_on_slurm(slurm_cluster, tmp_path):
    """The quickstart's smallest cell, submitted to SLURM: it trains, evaluates, and is in the table."""
    from harness.grid.executors import SlurmOptions
    from harness.grid.launch import run_grid

    loaded, selected = _tiny_quickstart_cell(tmp_path)
    runs, out = tmp_path / "runs", tmp_path / "results"
    report = run_grid(loaded, selected, runs_dir=runs, out_dir=out, executor="slurm",
                      slurm=SlurmOptions(partition="debug", time_min=10, poll_s=1.0), progress=print)
    assert not report.failed, [(o.failed, o.log, o.message) for o in report.failed]
    _assert_cell_in_table(out, runs / selected[0].id)


@pytest.mark.slow
@pytest.mark.skipif(not _train_and_eval_exist(), reason="harness train / harness eval are not in this tree")
def test_real_tiny_cell_on_two_slurm_nodes(slurm_cluster, tmp_path, monkeypatch):
    """``--nodes 2``: one job, one task per node, both train under jax.distributed (found from
    the SLURM environment), rank 0 alone evaluates; the cell is in the table."""
    from harness.grid.executors import SlurmOptions
    from harness.grid.launch import run_grid
    from harness.grid.rundir import read_grid_record

    if len(slurm_cluster.nodes) < 2:
        pytest.fail("a two-node test cluster needs a second name for this host in /etc/hosts "
                    "(besides localhost and the hostname)")
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=2")  # 2 per process
    loaded, selected = _tiny_quickstart_cell(tmp_path)
    runs, out = tmp_path / "runs", tmp_path / "results"
    report = run_grid(loaded, selected, runs_dir=runs, out_dir=out, executor="slurm",
                      slurm=SlurmOptions(partition="debug", time_min=10, nodes=2, cpus_per_task=1, poll_s=1.0),
                      progress=print)
    assert not report.failed, [(o.failed, o.log, o.message) for o in report.failed]
    run_dir = runs / selected[0].id
    devices = json.loads((run_dir / "run.json").read_text())["devices"]
    assert devices["processes"] == 2 and devices["count"] == 2 * devices["local_count"] == 4
    assert (run_dir / "logs" / "train.log").is_file() and (run_dir / "logs" / "train.rank1.log").is_file()
    job = read_grid_record(run_dir)["slurm"]
    # submitit's per-task logs: task 0 and task 1 ran on the two different nodes
    hosts = {line.rsplit(" on node ", 1)[-1].strip() for log in Path(job["stdout"]).parent.glob(f"{job['job_id']}_*_log.out")
             for line in log.read_text().splitlines() if " on node " in line}
    assert hosts == set(slurm_cluster.nodes), hosts
    _assert_cell_in_table(out, run_dir)
