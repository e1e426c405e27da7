"""Storages beyond one database: a journal file and Optuna's gRPC proxy, with real processes.

Each trial must be recorded exactly once whatever the number of workers, Optuna's own CLI must
read a journal study back, DDP trials must be refused before any trial runs on a storage that
optuna-integration's pruning callback refuses, and no message may show a password.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from sqlalchemy.engine import make_url

from lightning_o2nc.sweeps.cli import main
from lightning_o2nc.sweeps.grpc_proxy import open_grpc_proxy
from lightning_o2nc.sweeps.local_postgres import free_port
from lightning_o2nc.sweeps.storage import (
    JOURNAL_CLASS,
    STORAGE_CLASS_ENV,
    StorageError,
    open_storage,
    resolve_storage_url,
)
from tests.sweeps.study_checks import counted_trials

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
# Optuna's console script, run through its entry point: the script itself may live in another
# venv than this interpreter (``make test-min``'s venv reuses the main one's packages).
OPTUNA_CLI = [sys.executable, "-c", "import sys; from optuna.cli import main; sys.exit(main())"]
SERVE = [sys.executable, "-m", "lightning_o2nc.sweeps.cli", "serve"]
PIPED = {"stdout": subprocess.PIPE, "stderr": subprocess.STDOUT, "text": True}
#: Generous: each process imports torch and Lightning, on 2 cores shared by the whole suite.
PROCESS_TIMEOUT = 420

# A worker with a trivial objective, through the same storage-opening code as o2nc-sweep.
TRIVIAL_WORKER = """
import json, os, sys, warnings
import optuna
from lightning_o2nc.sweeps.storage import open_storage
warnings.simplefilter("ignore")
optuna.logging.set_verbosity(optuna.logging.WARNING)
url, study_name, n_trials = sys.argv[1], sys.argv[2], int(sys.argv[3])
study = optuna.create_study(storage=open_storage(url), study_name=study_name, load_if_exists=True)
ran = []
def objective(trial):
    x = trial.suggest_float("x", -1.0, 1.0)
    trial.set_user_attr("worker", os.getpid())
    ran.append(trial.number)
    return x * x
study.optimize(objective, n_trials=n_trials)
print(json.dumps({"pid": os.getpid(), "ran": ran}))
"""


@pytest.fixture
def env(worker) -> dict[str, str]:
    """The environment of a worker process (this checkout on its path, no storage set)."""
    return worker[1]()


@pytest.fixture
def spawn(env):
    """``spawn(command, **popen_kwargs)``: a process in its own session, with ``env`` by default.

    Whatever is still running at teardown (a failed test's workers, their children) is killed.
    """
    started: list[subprocess.Popen] = []

    def start(command: list[str], **kwargs) -> subprocess.Popen:
        kwargs.setdefault("env", env)
        process = subprocess.Popen(command, start_new_session=True, **kwargs)
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _sweep_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "lightning_o2nc.sweeps.cli", *args, "--no-progress", "--no-plots"]


def _outputs(processes: list[subprocess.Popen]) -> list[str]:
    """Wait for every process; their outputs (each must exit 0)."""
    outputs = [p.communicate(timeout=PROCESS_TIMEOUT)[0] for p in processes]
    for process, output in zip(processes, outputs):
        assert process.returncode == 0, output[-3000:]
    return outputs


def test_two_workers_on_one_journal_file_complete_each_trial_once_and_optuna_reads_it_back(
    tmp_path, write_yaml, train_config, default_sweep, env, spawn
):
    sweep = write_yaml("sweep.yaml", default_sweep(train_config, study_name="journal", n_trials=6))
    journal = tmp_path / "shared" / "study.log"
    common = ["--config", str(sweep), "--storage", str(journal), "--logdir", str(tmp_path / "l")]
    # One worker names the class on the command line, the other through the environment.
    by_env = {**env, STORAGE_CLASS_ENV: JOURNAL_CLASS}
    outputs = _outputs(
        [
            spawn(_sweep_command(*common, *extra), env=worker_env, **PIPED)
            for extra, worker_env in (((f"--storage-class={JOURNAL_CLASS}",), env), ((), by_env))
        ]
    )

    ran = [int(re.search(r"(\d+) trial\(s\) run here", out).group(1)) for out in outputs]
    storage = open_storage(str(journal), storage_class=JOURNAL_CLASS)
    trials = optuna.load_study(study_name="journal", storage=storage).trials
    finished = counted_trials(trials, 6)
    assert sum(ran) == 6 and min(ran) >= 1, ran
    assert sorted(t.number for t in trials) == list(range(len(trials)))
    runs = sorted(p.name for p in (tmp_path / "l" / "journal").glob("trial_*"))
    assert runs == sorted(f"trial_{t.number}" for t in finished)

    storage_args = ["--storage", str(journal), "--storage-class", JOURNAL_CLASS]
    listed = subprocess.run(
        [*OPTUNA_CLI, "trials", *storage_args, "--study-name", "journal", "--format", "json"],
        capture_output=True,
        text=True,
        timeout=PROCESS_TIMEOUT,
        check=True,
    )
    read_back = {row["number"]: row for row in json.loads(listed.stdout)}
    assert sorted(read_back) == [t.number for t in trials]
    for trial in trials:
        assert read_back[trial.number]["state"] == trial.state.name
        assert read_back[trial.number]["value"] == pytest.approx(trial.value)


def _ddp_sweep(write_yaml, tiny_train_config, default_sweep, study_name: str) -> Path:
    train = write_yaml("ddp.yaml", tiny_train_config(devices=2, strategy="ddp"))
    return write_yaml("ddp_sweep.yaml", default_sweep(train, study_name=study_name))


def test_ddp_trials_on_a_journal_file_are_refused_before_any_trial_naming_the_storage_to_use(
    tmp_path, write_yaml, tiny_train_config, default_sweep, capsys
):
    sweep = _ddp_sweep(write_yaml, tiny_train_config, default_sweep, "ddp")
    journal = tmp_path / "study.log"
    code = main(
        [
            "--config",
            str(sweep),
            "--storage",
            str(journal),
            "--storage-class",
            JOURNAL_CLASS,
            "--logdir",
            str(tmp_path / "l"),
            "--no-progress",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert "journal file" in err and "postgresql://" in err, err
    assert not list((tmp_path / "l").glob("*/trial_*"))
    assert optuna.get_all_study_names(open_storage(str(journal), storage_class=JOURNAL_CLASS)) == []


@pytest.fixture
def grpc_proxy(postgres_url, tmp_path, spawn):
    """``o2nc-sweep serve`` in front of the throw-away PostgreSQL: ``(grpc_url, output_file)``.

    At teardown it gets SIGTERM and must stop cleanly (exit status 0).
    """
    port = free_port()
    log = tmp_path / "serve.log"
    with log.open("w") as handle:
        command = [*SERVE, "--storage", postgres_url, "--port", str(port)]
        server = spawn(command, stdout=handle, stderr=subprocess.STDOUT)
    url = f"grpc://127.0.0.1:{port}"
    deadline = time.monotonic() + PROCESS_TIMEOUT
    while "listening" not in log.read_text():
        assert server.poll() is None, log.read_text()
        assert time.monotonic() < deadline, "the proxy never started"
        time.sleep(0.2)
    open_grpc_proxy(url, timeout=30).close()
    yield url, log
    server.send_signal(signal.SIGTERM)
    assert server.wait(timeout=PROCESS_TIMEOUT) == 0, log.read_text()
    output = log.read_text()
    assert "SIGTERM received" in output and "stopped" in output
    assert make_url(postgres_url).password not in output
    assert "listening on 127.0.0.1:" in output and "warning" not in output


@pytest.mark.postgres
def test_eight_workers_through_the_grpc_proxy_record_every_trial_exactly_once(
    grpc_proxy, postgres_url, study_name, spawn
):
    url, _ = grpc_proxy
    per_worker = 6
    command = [sys.executable, "-c", TRIVIAL_WORKER, url, study_name, str(per_worker)]
    outputs = _outputs([spawn(command, **PIPED) for _ in range(8)])
    reports = [json.loads(out.strip().splitlines()[-1]) for out in outputs]

    # Read back from the database itself, not through the proxy.
    trials = optuna.load_study(study_name=study_name, storage=open_storage(postgres_url)).trials
    assert len(trials) == 8 * per_worker
    assert sorted(t.number for t in trials) == list(range(8 * per_worker))
    assert all(t.state == TrialState.COMPLETE for t in trials)
    assert all(t.value == pytest.approx(t.params["x"] ** 2) for t in trials)
    by_number = {t.number: t for t in trials}
    claimed = [n for report in reports for n in report["ran"]]
    assert sorted(claimed) == list(range(8 * per_worker))  # none lost, none run twice
    for report in reports:
        assert len(report["ran"]) == per_worker
        assert {by_number[n].user_attrs["worker"] for n in report["ran"]} == {report["pid"]}


@pytest.mark.postgres
def test_a_sweep_runs_through_the_proxy(
    grpc_proxy, postgres_url, study_name, tmp_path, write_yaml, train_config, default_sweep
):
    url, _ = grpc_proxy
    sweep = write_yaml("sweep.yaml", default_sweep(train_config, study_name=study_name))
    argv = ["--config", str(sweep), "--storage", url, "--logdir", str(tmp_path / "l")]
    assert main([*argv, "--n-trials", "2", "--no-progress", "--no-plots"]) == 0
    trials = optuna.load_study(study_name=study_name, storage=open_storage(postgres_url)).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    assert (tmp_path / "l" / study_name / "report" / "report.md").is_file()


@pytest.mark.postgres
def test_ddp_trials_through_the_proxy_are_refused_before_any_trial(
    grpc_proxy,
    postgres_url,
    study_name,
    tmp_path,
    write_yaml,
    tiny_train_config,
    default_sweep,
    capsys,
):
    url, _ = grpc_proxy
    sweep = _ddp_sweep(write_yaml, tiny_train_config, default_sweep, study_name)
    code = main(["--config", str(sweep), "--storage", url, "--logdir", str(tmp_path / "l")])
    err = capsys.readouterr().err
    assert code == 2
    assert "gRPC storage proxy" in err and "postgresql://" in err, err
    assert study_name not in optuna.get_all_study_names(open_storage(postgres_url))


def test_serve_warns_when_bound_beyond_loopback_and_refuses_a_journal_file(tmp_path, env, spawn):
    port = free_port()
    database = f"sqlite:///{tmp_path / 'o.db'}"
    server = spawn(
        [*SERVE, "--storage", database, "--host", "0.0.0.0", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    open_grpc_proxy(f"grpc://127.0.0.1:{port}", timeout=PROCESS_TIMEOUT).close()
    server.send_signal(signal.SIGINT)
    out, err = server.communicate(timeout=PROCESS_TIMEOUT)
    assert server.returncode == 0, err
    assert "no authentication" in err and "SSH tunnel" in err
    assert f"listening on 0.0.0.0:{port}" in out and "stopped" in out

    refused = subprocess.run(
        [*SERVE, "--storage", str(tmp_path / "j.log")],
        env=env,
        capture_output=True,
        text=True,
        timeout=PROCESS_TIMEOUT,
    )
    assert refused.returncode == 2 and "does not serve journal storage" in refused.stderr


def test_no_proxy_at_a_grpc_url_is_a_clear_error_naming_serve():
    url = f"grpc://127.0.0.1:{free_port()}"
    with pytest.raises(StorageError, match="o2nc-sweep serve"):
        open_grpc_proxy(url, timeout=1)
    with pytest.raises(StorageError, match="malformed gRPC proxy URL"):
        open_storage("grpc://user:pw@host:12/x")
    assert resolve_storage_url(url, "/tmp") == url


def test_the_slurm_array_script_runs_its_worker_on_a_journal_file_outside_slurm(
    tmp_path, write_yaml, train_config, default_sweep, env, spawn
):
    sweep = write_yaml("sweep.yaml", default_sweep(train_config, study_name="slurm", n_trials=2))
    script = REPO / "examples" / "slurm" / "sweep_array.sbatch"
    task_env = {
        **env,
        "STORAGE": "journal",
        "SWEEP": str(sweep),
        "LOGDIR": str(tmp_path / "logs"),
        "SLURM_SUBMIT_DIR": str(tmp_path),
        "PATH": f"{Path(sys.executable).parent}:{env.get('PATH', '')}",  # o2nc-sweep
    }
    _outputs([spawn(["bash", str(script)], env=task_env, **PIPED)])
    journal = tmp_path / "logs" / "optuna-journal.log"
    storage = open_storage(str(journal), storage_class=JOURNAL_CLASS)
    trials = optuna.load_study(study_name="slurm", storage=storage).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2


def test_the_slurm_example_sweep_file_is_valid():
    from lightning_o2nc.sweeps import load_sweep_config

    sweep = load_sweep_config(REPO / "examples" / "slurm" / "cifar10_ddp.yaml")
    trainer = sweep.trial_config({})["trainer"]
    assert (trainer["devices"], trainer["strategy"]) == (-1, "auto")  # every GPU of the task
