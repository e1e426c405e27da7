"""The study: created on the first run, continued on every later one, and when it is complete."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from .config import SweepConfig
from .errors import FAIL_REASON, SweepConfigError
from .paths import get_path
from .samplers import build_pruner, build_sampler
from .space_changes import check_space_unchanged

__all__ = [
    "STUDY_ATTR",
    "StopWhenStudyIsComplete",
    "StudyFull",
    "count_finished",
    "holds_a_place",
    "open_study",
    "trials_ahead",
]

#: Study user attribute recording what the sweep is (objective, config files, logdir).
STUDY_ATTR = "o2nc_sweep"


def study_metadata(sweep: SweepConfig, logdir: Path) -> dict[str, Any]:
    """What ``o2nc-sweep report`` needs to know about a sweep, stored with the study."""
    beta = sweep.space.find("beta")
    lr = sweep.space.find("lr")
    max_epochs = get_path(sweep.base_config, "trainer.max_epochs", default=None)
    return {
        "max_epochs": max_epochs if "trainer.max_epochs" not in sweep.space.paths else None,
        "sweep_config": str(sweep.source),
        "train_config": str(sweep.train_config_path),
        "metric": sweep.objective.monitor,
        "weights": sweep.objective.weights,
        "sampler": sweep.sampler.name,
        "pruner": sweep.pruner.name,
        "n_trials": sweep.n_trials,
        "logdir": str(logdir.resolve()),
        "lr_param": lr.name if lr is not None else None,
        "beta_param": beta.name if beta is not None else None,
    }


def open_study(
    sweep: SweepConfig, storage: optuna.storages.BaseStorage, logdir: Path
) -> optuna.Study:
    """Create the study, or continue it when one with this name already exists in ``storage``.

    Raises:
        SweepConfigError: when an existing study optimises in the other direction or another
            metric, or its search space changed in a way Optuna cannot continue
            (:func:`.space_changes.check_space_unchanged`).
    """
    max_epochs = get_path(sweep.base_config, "trainer.max_epochs", default=None)
    study = optuna.create_study(
        storage=storage,
        study_name=sweep.study_name,
        direction=sweep.objective.direction,
        sampler=build_sampler(sweep.sampler, sweep.space, sweep.seed),
        pruner=build_pruner(sweep.pruner, max_epochs if isinstance(max_epochs, int) else None),
        load_if_exists=True,
    )
    stored = study.direction.name.lower()
    if stored != sweep.objective.direction:
        raise SweepConfigError(
            f"objective.direction: study {sweep.study_name!r} already exists and {stored}s; "
            f"this sweep asks to {sweep.objective.direction} (choose another --study-name)"
        )
    previous = study.user_attrs.get(STUDY_ATTR, {})
    if previous and previous.get("metric") != sweep.objective.monitor:
        raise SweepConfigError(
            f"objective.metric: study {sweep.study_name!r} already optimises "
            f"{previous.get('metric')!r}, not {sweep.objective.monitor!r} "
            "(choose another --study-name)"
        )
    check_space_unchanged(study, sweep.space, grid=sweep.sampler.name == "grid")
    study.set_user_attr(STUDY_ATTR, study_metadata(sweep, logdir))
    return study


def is_finished_for_good(trial: FrozenTrial) -> bool:
    """Complete, pruned, or failed on its own (non-finite loss). Not a crashed or stale trial."""
    if trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return True
    return trial.state == TrialState.FAIL and FAIL_REASON in trial.user_attrs


def count_finished(study: optuna.Study) -> int:
    """Trials of the study that count towards its ``n_trials``, whoever ran them."""
    return sum(is_finished_for_good(t) for t in study.get_trials(deepcopy=False))


def holds_a_place(trial: FrozenTrial) -> bool:
    """Counts towards ``n_trials`` already, or is running and may."""
    return trial.state == TrialState.RUNNING or is_finished_for_good(trial)


def trials_ahead(trials: Iterable[FrozenTrial], number: int) -> int:
    """Trials numbered before ``number`` that hold a place in the study."""
    return sum(t.number < number and holds_a_place(t) for t in trials)


class StudyFull(Exception):
    """A trial started when the study already had ``n_trials`` trials finished or running.

    A worker decides between trials whether to start another (:class:`StopWhenStudyIsComplete`),
    and two workers that decide at the same moment both start one: a study of 6 trials got 7. So
    a trial, once created, also counts the trials numbered before it that count or run
    (:func:`trials_ahead`); when they reach ``n_trials`` it steps aside, not trained and not
    counted. The storage numbers trials in the order it creates them, so of two trials started
    together the later one steps aside. (A queued trial keeps the number it got when it was
    queued, so one that starts late may still make the study one trial longer; never shorter.)
    """

    def __init__(self, number: int, n_trials: int) -> None:
        super().__init__(
            f"the study already had {n_trials} trials finished or running before trial "
            f"{number}: not trained"
        )
        self.number = number
        self.n_trials = n_trials


class StopWhenStudyIsComplete:
    """Optuna callback: stop this worker once finished plus running trials reach ``n_trials``.

    ``n_trials`` is the size of the study, shared by all workers: two workers on a 20-trial study
    run 20 trials between them, and re-running a finished sweep runs none.
    """

    def __init__(self, n_trials: int) -> None:
        self.n_trials = n_trials

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if sum(holds_a_place(t) for t in study.get_trials(deepcopy=False)) >= self.n_trials:
            study.stop()
