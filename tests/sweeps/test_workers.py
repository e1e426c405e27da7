"""Several ``o2nc-sweep`` processes on one study, as on several machines sharing a database."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import optuna
import pytest
import sqlalchemy.engine
from optuna.trial import TrialState

from sweeps.storage import open_storage

pytestmark = pytest.mark.slow


def _start(worker, *args: str, log: Path) -> subprocess.Popen:
    command, env = worker
    handle = log.open("w")
    return subprocess.Popen(
        command(*args, "--no-progress", "--no-plots"),
        env=env(),
        stdout=handle,
        stderr=subprocess.STDOUT,
    )


def _wait(process: subprocess.Popen, log: Path, timeout: float = 240) -> str:
    process.wait(timeout=timeout)
    output = log.read_text()
    assert process.returncode == 0, output[-3000:]
    return output


def test_two_workers_on_one_study_run_every_trial_exactly_once(
    tmp_path, write_yaml, train_config, default_sweep, worker, storage_url, study_name
):
    sweep = write_yaml("sweep.yaml", default_sweep(train_config, study_name=study_name, n_trials=6))
    common = ["--config", str(sweep), "--storage", storage_url, "--logdir", str(tmp_path / "logs")]
    logs = [tmp_path / "worker0.log", tmp_path / "worker1.log"]
    processes = [_start(worker, *common, log=log) for log in logs]
    outputs = [_wait(p, log) for p, log in zip(processes, logs, strict=True)]

    ran = [int(re.search(r"(\d+) trial\(s\) run here", out).group(1)) for out in outputs]
    study = optuna.load_study(study_name=study_name, storage=open_storage(storage_url))
    finished = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert sum(ran) == len(study.trials) == len(finished) == 6
    assert all(n >= 1 for n in ran), ran  # both workers took part
    runs = sorted(p.name for p in (tmp_path / "logs" / study_name).glob("trial_*"))
    assert runs == sorted(f"trial_{t.number}" for t in study.trials)
    password = sqlalchemy.engine.make_url(storage_url).password
    if password:
        assert all(password not in text for text in outputs)


def test_a_worker_killed_mid_trial_has_its_trial_retried_after_the_grace_period(
    tmp_path, write_yaml, tiny_train_config, default_sweep, worker, storage_url, study_name
):
    # The first worker's trial is long; it is killed while training.
    long_train = write_yaml("long.yaml", tiny_train_config(max_epochs=500))
    changes = dict(study_name=study_name, n_trials=1, pruner="none")
    long_sweep = write_yaml("long_sweep.yaml", default_sweep(long_train, **changes))
    common = ["--storage", storage_url, "--logdir", str(tmp_path / "logs")]
    victim = _start(worker, "--config", str(long_sweep), *common, log=tmp_path / "victim.log")

    storage = open_storage(storage_url)
    deadline = time.monotonic() + 120
    while True:
        assert victim.poll() is None, (tmp_path / "victim.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "the first worker never started training"
        try:
            study = optuna.load_study(study_name=study_name, storage=storage)
            running = study.get_trials(states=(TrialState.RUNNING,))
        except KeyError:
            running = []
        if running and list((tmp_path / "logs" / study_name / "trial_0").glob("events.*")):
            break
        time.sleep(0.2)
    time.sleep(1.0)  # well inside the trial's 500 epochs
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait(timeout=30)
    killed = running[0]
    assert optuna.load_study(study_name=study_name, storage=storage).trials[0].state == (
        TrialState.RUNNING
    )  # nobody has noticed yet

    time.sleep(2.5)  # the sweep's grace period is 2 s
    # A second worker (same study, a short trial length) picks the trial up again.
    short_sweep = write_yaml(
        "short_sweep.yaml",
        default_sweep(write_yaml("short.yaml", tiny_train_config(max_epochs=1)), **changes),
    )
    rescuer = _start(worker, "--config", str(short_sweep), *common, log=tmp_path / "rescuer.log")
    _wait(rescuer, tmp_path / "rescuer.log")

    study = optuna.load_study(study_name=study_name, storage=storage)
    first, retry = study.trials
    assert first.number == killed.number and first.state == TrialState.FAIL
    assert retry.state == TrialState.COMPLETE
    assert retry.system_attrs["failed_trial"] == first.number
    assert retry.params == first.params
