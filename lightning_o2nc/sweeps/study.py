"""The study: created on the first run, continued on every later one, and when it is complete."""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from .config import SweepConfig
from .distinct import VALUES
from .errors import FAIL_REASON, SweepConfigError
from .paths import get_path
from .samplers import build_pruner, build_sampler
from .space_changes import check_space_unchanged

__all__ = [
    "STUDY_ATTR",
    "UNIFORM_WEIGHTED_SINCE",
    "OldUniformScalingWarning",
    "StopWhenStudyIsComplete",
    "StudyFull",
    "count_finished",
    "holds_a_place",
    "open_study",
    "trials_ahead",
]

#: Study user attribute recording what the sweep is (objective, config files, logdir).
STUDY_ATTR = "o2nc_sweep"
#: Study user attribute: the number of the first trial whose ``scaling: uniform`` is the authors'
#: (s ~ U(0, 2) with the importance weight 2 - s on the next gradient). Studies created before it
#: existed ran U(0, 2) alone; it is 0 for a study created since.
UNIFORM_WEIGHTED_SINCE = "o2nc_uniform_weighted_since"


class OldUniformScalingWarning(UserWarning):
    """A continued study holds trials whose ``uniform`` scaling lacked the importance weight."""


def _scaling_of(values: Mapping[str, Any], base_config: Mapping[str, Any]) -> Any:
    """The scaling a trial ran with: its own searched value, else the sweep's train config."""
    for path, value in values.items():
        if path.split(".")[-1] == "scaling":
            return value
        if path.split(".")[-1] == "optimizer" and str(value).endswith("_uniform"):
            return "uniform"
    return get_path(base_config, "model.scaling", default=None)


def warn_about_old_uniform(study: optuna.Study, sweep: SweepConfig) -> None:
    """Mark the study, and warn once when it holds trials run with the old uniform scaling.

    ``scaling: uniform`` used to draw s ~ U(0, 2) and nothing else; it now also weights the next
    gradient by 2 - s (the authors' method). A study created before the change does not carry
    :data:`UNIFORM_WEIGHTED_SINCE`: it gets the number of trials it holds, and every later
    continuation warns while trials numbered below it ran ``uniform``, since a sampler that mixes
    them with new trials compares two different methods under one name.
    """
    trials = study.get_trials(deepcopy=False)
    since = study.user_attrs.get(UNIFORM_WEIGHTED_SINCE)
    if since is None:
        since = len(trials)
        study.set_user_attr(UNIFORM_WEIGHTED_SINCE, since)
    old = [
        t.number
        for t in trials
        if t.number < since
        and _scaling_of(t.user_attrs.get(VALUES, {}), sweep.base_config) == "uniform"
    ]
    if old:
        shown = ", ".join(map(str, old[:5])) + (", ..." if len(old) > 5 else "")
        warnings.warn(
            f"study {study.study_name!r} holds {len(old)} trial(s) ({shown}) run with the old "
            "`scaling: uniform`, U(0, 2) without the importance weight; `uniform` now means the "
            "authors' U(0, 2) with the weight 2 - s on the next gradient, so those trials measured "
            "another method. Start a new study (--study-name) to compare like with like.",
            OldUniformScalingWarning,
            stacklevel=2,
        )


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
    warn_about_old_uniform(study, sweep)
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
