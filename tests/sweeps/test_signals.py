"""``o2nc-sweep`` stops when asked: SIGINT/SIGTERM at several moments of a real sweep.

Each test starts a real worker process, sends a real signal at one moment, and checks the exit
status, that no trial is left RUNNING, that the interrupted trial is failed with the signal's name
and queued again, and that running the same command again completes the study with every earlier
COMPLETE trial intact. The time from the signal to the exit is printed (``pytest -s``), not
asserted: the wait below only guards against a hang.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from lightning_o2nc.sweeps.storage import open_storage

pytestmark = pytest.mark.slow

HANG_GUARD_S = 90  # far above the 15 s promised; a worker that hangs fails here


class Worker:
    """One ``o2nc-sweep`` process on a SQLite study in ``tmp_path``."""

    def __init__(self, worker, tmp_path: Path, sweep: Path, name: str) -> None:
        command, env = worker
        self.url = f"sqlite:///{tmp_path / 'study.db'}"
        self.log = tmp_path / f"{name}.log"
        args = ["--config", str(sweep), "--storage", self.url, "--logdir", str(tmp_path / "logs")]
        with self.log.open("w") as handle:
            self.process = subprocess.Popen(
                command(*args, "--no-progress", "--no-plots"),
                env=env(),
                stdout=handle,
                stderr=subprocess.STDOUT,
            )

    def output(self) -> str:
        return self.log.read_text()

    def wait_for(self, condition: Callable[[], bool], what: str, timeout: float = 240) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert self.process.poll() is None, f"exited before {what}:\n{self.output()[-3000:]}"
            assert time.monotonic() < deadline, f"never reached {what}"
            time.sleep(0.05)

    def signal_and_wait(self, signum: int, *, again_after: float | None = None) -> float:
        """Send ``signum`` (twice with ``again_after``); the seconds until the process exited."""
        start = time.monotonic()
        os.kill(self.process.pid, signum)
        if again_after is not None:
            time.sleep(again_after)
            if self.process.poll() is None:
                start = time.monotonic()
                os.kill(self.process.pid, signum)
        self.process.wait(timeout=HANG_GUARD_S)
        return time.monotonic() - start

    def finish(self) -> str:
        self.process.wait(timeout=300)
        assert self.process.returncode == 0, self.output()[-3000:]
        return self.output()


def trials(url: str, name: str = "tiny") -> list[optuna.trial.FrozenTrial]:
    try:
        return optuna.load_study(study_name=name, storage=open_storage(url)).trials
    except KeyError:  # the study was never created
        return []


def _trial_is_training(tmp_path: Path, number: int = 0) -> Callable[[], bool]:
    run = tmp_path / "logs" / "tiny" / f"trial_{number}"
    return lambda: any(run.glob("events.*"))


def _start_training(worker, tmp_path: Path, sweep: Path, what: str, timeout: float = 240) -> Worker:
    """A worker on ``sweep``, returned once its first trial trains and a signal can land in it."""
    running = Worker(worker, tmp_path, sweep, "first")
    running.wait_for(_trial_is_training(tmp_path), what, timeout=timeout)
    return running


def _sweeps(write_yaml, tiny_train_config, default_sweep, *, n_trials: int, **trainer):
    """A sweep whose trials train until interrupted, and the same sweep with 1-epoch trials."""
    changes = dict(n_trials=n_trials, pruner="none")
    long_train = write_yaml("long.yaml", tiny_train_config(max_epochs=100_000, **trainer))
    short_train = write_yaml("short.yaml", tiny_train_config(max_epochs=1, **trainer))
    return (
        write_yaml("long_sweep.yaml", default_sweep(long_train, **changes)),
        write_yaml("short_sweep.yaml", default_sweep(short_train, **changes)),
    )


def _report(moment: str, signum: int, worker: Worker, seconds: float) -> None:
    states = [(t.number, t.state.name) for t in trials(worker.url)]
    print(
        f"\n[signal test] {moment}: {signal.Signals(signum).name} -> exit status "
        f"{worker.process.returncode} after {seconds:.2f} s; trials {states}"
    )


def _assert_interrupted_trial(url: str, signum: int) -> optuna.trial.FrozenTrial:
    """The one interrupted trial: FAIL, named signal, not counted, queued again first (when it
    had drawn its values)."""
    name = signal.Signals(signum).name
    recorded = trials(url)
    assert not [t for t in recorded if t.state == TrialState.RUNNING]
    (failed,) = [t for t in recorded if t.state == TrialState.FAIL]
    assert failed.user_attrs["interrupted_by"] == name
    assert name in failed.system_attrs["fail_reason"]
    assert "fail_reason" not in failed.user_attrs  # so it does not count towards n_trials
    queued = [t for t in recorded if t.state == TrialState.WAITING]
    if not failed.params and "fixed_params" not in failed.system_attrs:
        # the signal came after Optuna created the trial and before it drew any value: nothing
        # to try again, and the sweep must not say otherwise
        assert not queued and "queued again" not in failed.system_attrs["fail_reason"]
        return failed
    (queued,) = queued
    assert queued.user_attrs["retry_of"] == failed.number
    assert queued.system_attrs["fixed_params"] == failed.params
    return failed


def _rerun_completes(worker_fixture, tmp_path, sweep, complete_before, n_trials) -> None:
    """Running the same command again completes the study; earlier COMPLETE trials intact."""
    again = Worker(worker_fixture, tmp_path, sweep, "rerun")
    again.finish()
    recorded = trials(again.url)
    assert not [t for t in recorded if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    complete = [t for t in recorded if t.state == TrialState.COMPLETE]
    assert len(complete) == n_trials
    for before in complete_before:
        after = recorded[before.number]
        assert (after.state, after.value, after.params) == (
            TrialState.COMPLETE,
            before.value,
            before.params,
        )


def test_a_signal_while_the_study_is_created_exits_before_any_trial(
    tmp_path, write_yaml, tiny_train_config, default_sweep, worker
):
    long_sweep, short_sweep = _sweeps(write_yaml, tiny_train_config, default_sweep, n_trials=2)
    running = Worker(worker, tmp_path, long_sweep, "first")
    database = tmp_path / "study.db"
    # The storage file appears when the worker opens it; the train config is checked and the
    # study created right after.
    running.wait_for(lambda: database.exists(), "opening the storage")
    seconds = running.signal_and_wait(signal.SIGTERM)
    _report("study creation", signal.SIGTERM, running, seconds)

    assert running.process.returncode == 143, running.output()[-3000:]
    assert all(t.state != TrialState.RUNNING for t in trials(running.url))
    _rerun_completes(worker, tmp_path, short_sweep, [], n_trials=2)


def test_a_signal_mid_trial_fails_that_trial_queues_it_again_and_the_rerun_runs_it_first(
    tmp_path, write_yaml, tiny_train_config, default_sweep, worker
):
    long_sweep, short_sweep = _sweeps(write_yaml, tiny_train_config, default_sweep, n_trials=2)
    running = _start_training(worker, tmp_path, long_sweep, "trial 0 training")
    time.sleep(1.0)
    seconds = running.signal_and_wait(signal.SIGINT)
    _report("mid-trial", signal.SIGINT, running, seconds)

    output = running.output()
    assert running.process.returncode == 130, output[-3000:]
    failed = _assert_interrupted_trial(running.url, signal.SIGINT)
    assert f"trial {failed.number} interrupted" in output and "queued again" in output
    assert "report:" in output  # the summary is still printed, the report still written
    assert (tmp_path / "logs" / "tiny" / "report" / "report.md").exists()

    _rerun_completes(worker, tmp_path, short_sweep, [], n_trials=2)
    retry = trials(running.url)[failed.number + 1]
    assert retry.user_attrs["retry_of"] == failed.number
    assert retry.state == TrialState.COMPLETE and retry.params == failed.params


def test_a_signal_between_trials_keeps_the_finished_ones_and_leaves_nothing_running(
    tmp_path, write_yaml, tiny_train_config, default_sweep, worker
):
    _, short_sweep = _sweeps(write_yaml, tiny_train_config, default_sweep, n_trials=4)
    running = Worker(worker, tmp_path, short_sweep, "first")
    running.wait_for(
        lambda: any(t.state == TrialState.COMPLETE for t in trials(running.url)),
        "the first trial to complete",
    )
    seconds = running.signal_and_wait(signal.SIGTERM)
    _report("between trials", signal.SIGTERM, running, seconds)

    assert running.process.returncode == 143, running.output()[-3000:]
    recorded = trials(running.url)
    complete = [t for t in recorded if t.state == TrialState.COMPLETE]
    assert complete and not [t for t in recorded if t.state == TrialState.RUNNING]
    if any(t.state == TrialState.FAIL for t in recorded):  # the signal caught the next trial
        _assert_interrupted_trial(running.url, signal.SIGTERM)
    _rerun_completes(worker, tmp_path, short_sweep, complete, n_trials=4)


def _rank_processes(pid: int) -> list[int]:
    """The worker's child processes that run a DDP rank (not multiprocessing's resource tracker)."""
    path = Path(f"/proc/{pid}/task/{pid}/children")
    children = [int(p) for p in path.read_text().split()] if path.exists() else []
    return [
        child
        for child in children
        if b"resource_tracker" not in Path(f"/proc/{child}/cmdline").read_bytes()
    ]


def _alive(pids: list[int]) -> list[int]:
    """Those of ``pids`` still running (a zombie has finished)."""
    alive = []
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except FileNotFoundError:
            continue
        if "State:\tZ" not in status:
            alive.append(pid)
    return alive


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_to_the_worker_alone_stops_a_ddp_trial_and_its_rank_processes(
    tmp_path, write_yaml, tiny_train_config, default_sweep, worker, signum
):
    ddp = dict(strategy="ddp", devices=2)
    long_sweep, short_sweep = _sweeps(
        write_yaml, tiny_train_config, default_sweep, n_trials=1, **ddp
    )
    running = _start_training(worker, tmp_path, long_sweep, "the DDP trial training", timeout=480)
    time.sleep(1.0)
    ranks = _rank_processes(running.process.pid)
    assert len(ranks) == 2, ranks
    # Sent to the worker only, as `timeout`, Kubernetes or `kill PID` do (a terminal's Ctrl-C
    # would reach the ranks too).
    seconds = running.signal_and_wait(signum)
    _report(f"inside a DDP trial (ranks {ranks})", signum, running, seconds)

    assert running.process.returncode == 128 + signum, running.output()[-3000:]
    _assert_interrupted_trial(running.url, signum)
    assert not _alive(ranks), "rank processes remain after the worker exited"
    if signum == signal.SIGTERM:  # one rerun of a DDP study is enough for the suite
        _rerun_completes(worker, tmp_path, short_sweep, [], n_trials=1)


def test_a_second_sigint_exits_at_once_and_says_truthfully_what_it_leaves(
    tmp_path, write_yaml, tiny_train_config, default_sweep, worker
):
    long_sweep, short_sweep = _sweeps(write_yaml, tiny_train_config, default_sweep, n_trials=2)
    running = _start_training(worker, tmp_path, long_sweep, "trial 0 training")
    seconds = running.signal_and_wait(signal.SIGINT, again_after=0.02)
    _report("second SIGINT", signal.SIGINT, running, seconds)

    output = running.output()
    assert running.process.returncode == 130, output[-3000:]
    recorded = trials(running.url)
    if any(t.state == TrialState.RUNNING for t in recorded):
        # Exited before the first signal's safe point: the message says what happens next, and
        # it does: after the grace period (2 s here) the rerun fails the trial and retries it.
        assert "is left RUNNING" in output and "queues its parameters again" in output
        time.sleep(2.5)
    else:
        _assert_interrupted_trial(running.url, signal.SIGINT)
    _rerun_completes(worker, tmp_path, short_sweep, [], n_trials=2)
    recorded = trials(running.url)
    assert not [t for t in recorded if t.state == TrialState.RUNNING]


def test_a_trial_stopped_before_it_draws_values_fails_and_queues_nothing(
    tmp_path, write_yaml, train_config, default_sweep
):
    """The window between Optuna creating a trial and the objective drawing its values: the trial
    is recorded as interrupted with nothing to try again, and the worker says so."""
    from lightning_o2nc.sweeps.config import load_sweep_config
    from lightning_o2nc.sweeps.objective import SweepObjective
    from lightning_o2nc.sweeps.run import _interruption_message
    from lightning_o2nc.sweeps.signals import StopRequest, TrialInterrupted

    sweep = load_sweep_config(write_yaml("sweep.yaml", default_sweep(train_config)))
    stop = StopRequest()
    objective = SweepObjective(sweep, tmp_path / "logs", None, stop=stop)
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'study.db'}")
    trial = study.ask()
    stop.signum = signal.SIGTERM  # arrives now, before the objective draws anything
    with pytest.raises(TrialInterrupted):
        objective(trial)
    study.tell(trial, state=TrialState.FAIL)
    (failed,) = study.trials
    assert failed.params == {} and failed.user_attrs["interrupted_by"] == "SIGTERM"
    assert failed.system_attrs["fail_reason"] == (
        "interrupted by SIGTERM; not counted towards n_trials"
    )
    assert not [t for t in study.trials if t.state == TrialState.WAITING]
    assert objective.interrupted == (failed.number, False)
    assert "nothing to queue again" in _interruption_message(stop, objective)
