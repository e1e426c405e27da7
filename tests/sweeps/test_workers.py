"""Several ``o2nc-sweep`` processes on one study, as on several machines sharing a database."""

from __future__ import annotations

import json
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

from lightning_o2nc.sweeps.config import load_sweep_config
from lightning_o2nc.sweeps.distinct import worker_seed
from lightning_o2nc.sweeps.run import run_sweep
from lightning_o2nc.sweeps.samplers import build_sampler
from lightning_o2nc.sweeps.storage import open_storage
from tests.sweeps.study_checks import counted_trials

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
    finished = counted_trials(study.trials, 6)
    assert sum(ran) == 6
    assert all(n >= 1 for n in ran), ran  # both workers took part
    runs = sorted(p.name for p in (tmp_path / "logs" / study_name).glob("trial_*"))
    assert runs == sorted(f"trial_{t.number}" for t in finished)
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


def _evaluated(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """Trials that trained: complete, pruned, or failed on their own."""
    return [
        t
        for t in study.trials
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED) or "fail_reason" in t.user_attrs
    ]


def _configuration(trial: optuna.trial.FrozenTrial) -> str:
    return json.dumps(trial.user_attrs["values"], sort_keys=True)


def test_parallel_workers_and_a_continuation_evaluate_every_configuration_once(
    tmp_path, write_yaml, tiny_train_config, default_sweep, worker
):
    train = write_yaml("train.yaml", tiny_train_config(max_epochs=1))
    url = f"sqlite:///{tmp_path / 'study.db'}"
    common = ["--storage", url, "--logdir", str(tmp_path / "logs")]
    # Every process reads the file's `seed: 0`; random start-up trials for all 8 trials.
    sampler = {"name": "tpe", "options": {"n_startup_trials": 8}}
    changes = dict(study_name="distinct", pruner="none", sampler=sampler)
    first = write_yaml("sweep.yaml", default_sweep(train, n_trials=4, **changes))
    logs = [tmp_path / "worker0.log", tmp_path / "worker1.log"]
    processes = [_start(worker, "--config", str(first), *common, log=log) for log in logs]
    for process, log in zip(processes, logs, strict=True):
        _wait(process, log)
    more = write_yaml("more.yaml", default_sweep(train, n_trials=6, **changes))
    more_log = tmp_path / "more.log"
    _wait(_start(worker, "--config", str(more), *common, log=more_log), more_log)

    study = optuna.load_study(study_name="distinct", storage=open_storage(url))
    evaluated = _evaluated(study)
    assert len(evaluated) == 6
    configurations = [_configuration(t) for t in evaluated]
    print(
        f"\n[distinct trials] {len(study.trials)} trials, {len(evaluated)} evaluated, "
        f"{len(set(configurations))} distinct configurations, states "
        f"{[t.state.name for t in study.trials]}"
    )
    assert len(set(configurations)) == len(configurations), configurations
    params = [json.dumps(t.params, sort_keys=True) for t in evaluated]
    assert len(set(params)) == len(params)
    # Three workers, three different sampler seeds, each recorded in the study.
    seeds = [v["seed"] for k, v in study.user_attrs.items() if k.startswith("o2nc_worker:")]
    assert len(seeds) == 3 and len(set(seeds)) == 3, seeds


def test_a_queued_configuration_the_study_already_holds_is_skipped_not_trained_and_not_counted(
    tmp_path, write_yaml, tiny_train_config, default_sweep
):
    train = write_yaml("train.yaml", tiny_train_config(max_epochs=1))
    sweep = load_sweep_config(write_yaml("s.yaml", default_sweep(train, n_trials=1, pruner="none")))
    url = f"sqlite:///{tmp_path / 'study.db'}"
    done = run_sweep(sweep, logdir=tmp_path / "logs", storage=url, progress=False, plots=False)
    (original,) = done.study.trials
    done.study.enqueue_trial(original.params)  # e.g. a user's enqueue, or a retried trial

    more = load_sweep_config(sweep.source, n_trials=2)
    outcome = run_sweep(more, logdir=tmp_path / "logs", storage=url, progress=False, plots=False)
    _, duplicate, new = outcome.study.trials
    assert duplicate.params == original.params
    assert duplicate.state == TrialState.FAIL
    assert duplicate.user_attrs["duplicate_of"] == original.number
    assert f"same configuration as trial {original.number}" in duplicate.system_attrs["fail_reason"]
    assert "tensorboard_run" not in duplicate.user_attrs  # never trained
    assert new.state == TrialState.COMPLETE and new.params != original.params
    assert outcome.trials_run == 1


def test_a_trial_started_once_the_study_is_full_steps_aside_untrained(
    tmp_path, write_yaml, tiny_train_config, default_sweep
):
    """Another worker's trial, started a moment earlier, already makes the study full: the trial
    this worker started is recorded as failed, not trained and not counted, and the worker stops."""
    train = write_yaml("train.yaml", tiny_train_config(max_epochs=1))
    sweep = load_sweep_config(write_yaml("s.yaml", default_sweep(train, n_trials=1, pruner="none")))
    url = f"sqlite:///{tmp_path / 'study.db'}"
    done = run_sweep(sweep, logdir=tmp_path / "logs", storage=url, progress=False, plots=False)
    other = done.study.ask()  # another worker's trial, running

    more = load_sweep_config(sweep.source, n_trials=2)
    outcome = run_sweep(more, logdir=tmp_path / "logs", storage=url, progress=False, plots=False)
    first, running, late = outcome.study.trials
    assert running.number == other.number and running.state == TrialState.RUNNING
    assert late.state == TrialState.FAIL
    assert late.system_attrs["fail_reason"] == (
        f"the study already had 2 trials finished or running before trial {late.number}: "
        "not trained; not counted"
    )
    assert "tensorboard_run" not in late.user_attrs  # never trained
    assert outcome.trials_run == 0
    assert first.state == TrialState.COMPLETE


def test_of_two_trials_started_together_the_earlier_one_trains(
    tmp_path, write_yaml, tiny_train_config, default_sweep
):
    from lightning_o2nc.sweeps.objective import SweepObjective
    from lightning_o2nc.sweeps.study import StudyFull

    train = write_yaml("train.yaml", tiny_train_config(max_epochs=1))
    sweep = load_sweep_config(write_yaml("s.yaml", default_sweep(train, n_trials=1, pruner="none")))
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'study.db'}", direction="maximize")
    objective = SweepObjective(sweep, tmp_path / "logs")
    earlier, later = study.ask(), study.ask()
    with pytest.raises(StudyFull):
        objective(later)  # checked before the earlier one even drew its values
    value = objective(earlier)
    assert 0.0 <= value <= 1.0 and objective.trials_run == 1


def test_worker_seeds_repeat_for_one_worker_at_a_time_and_differ_for_workers_started_together():
    def fresh() -> optuna.Study:
        return optuna.create_study()

    # Reproducible: the same file seed on the same study state gives the same seed...
    assert worker_seed(fresh(), 0) == worker_seed(fresh(), 0)
    study = fresh()
    first = worker_seed(study, 0)
    # ...but a second worker on that same state (started together) gets another one,
    together = worker_seed(study, 0)
    assert together != first
    # and a continuation after a trial was added another one again.
    study.enqueue_trial({})
    assert worker_seed(study, 0) not in (first, together)
    assert worker_seed(fresh(), 1) != first
    assert worker_seed(fresh(), None) is None


def test_a_worker_joining_a_study_of_n_trials_draws_from_its_own_seed_and_replays_exactly(
    write_yaml, train_config, default_sweep
):
    """The trial count enters the seed itself, not only the collision fallback.

    A worker that joins a study holding trials is seeded from the file's seed *and* that count.
    Were the count left out, it would draw the first worker's seed again: on the same study the
    collision token would rescue distinctness but at the price of a random, unreplayable seed; on
    a copy without the first worker's record it would repeat the first worker's trials.
    """
    sweep = load_sweep_config(write_yaml("s.yaml", default_sweep(train_config)))
    n = 3

    def join(study: optuna.Study) -> tuple[int, dict, dict]:
        """One worker starting on ``study``: its seed, its record, its first configuration."""
        seed = worker_seed(study, sweep.seed)
        (record,) = (v for k, v in study.user_attrs.items() if v.get("seed") == seed)
        study.sampler = build_sampler(sweep.sampler, sweep.space, seed)
        trial = study.ask()
        values = sweep.space.suggest(trial)
        study.tell(trial, 0.5)
        return seed, record, values

    def first_worker_then_a_continuation() -> tuple[tuple, tuple]:
        study = optuna.create_study(direction="maximize")
        first = join(study)
        for _ in range(n - 1):  # the first worker's other trials, from its own sampler
            trial = study.ask()
            sweep.space.suggest(trial)
            study.tell(trial, 0.5)
        return first, join(study)

    (first_seed, first_record, first_values), continuation = first_worker_then_a_continuation()
    _, replay = first_worker_then_a_continuation()
    seed, record, values = continuation
    assert record == {"seed": seed, "trials_at_start": n}  # no shared_start: no fallback used
    assert first_record == {"seed": first_seed, "trials_at_start": 0}
    assert seed != first_seed and values != first_values
    assert replay == continuation  # the continuation is reproducible, its first draw included

    # A study of n trials that no worker recorded (e.g. made by Optuna's CLI or enqueued): the
    # joining worker still differs from one joining an empty study, with no collision to find.
    held = optuna.create_study(direction="maximize")
    for _ in range(n):
        held.enqueue_trial({})
    held_seed, held_record, held_values = join(held)
    empty_seed, _, empty_values = join(optuna.create_study(direction="maximize"))
    assert held_record == {"seed": held_seed, "trials_at_start": n}
    assert held_seed != empty_seed and held_values != empty_values
