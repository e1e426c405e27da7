"""Samplers, pruners and the study itself: created on the first run, continued on every later one."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from .config import PrunerSpec, SamplerSpec, SweepConfig
from .errors import FAIL_REASON, SweepConfigError
from .paths import get_path
from .space import SearchSpace

__all__ = [
    "STUDY_ATTR",
    "StopWhenStudyIsComplete",
    "build_pruner",
    "build_sampler",
    "count_finished",
    "open_study",
]

#: Study user attribute recording what the sweep is (objective, config files, logdir).
STUDY_ATTR = "o2nc_sweep"


def _construct(factory: Any, options: Mapping[str, Any], key: str, **defaults: Any) -> Any:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return factory(**{**defaults, **options})
    except (TypeError, ValueError) as error:
        raise SweepConfigError(f"{key}: {error}") from None


def build_sampler(
    spec: SamplerSpec, space: SearchSpace, seed: int | None = None
) -> optuna.samplers.BaseSampler:
    """The Optuna sampler named by ``spec``, with defaults suited to parallel workers.

    - ``tpe``: multivariate TPE with ``group=True`` (the schedule arguments are conditional, and
      grouping lets the multivariate model handle each branch) and ``constant_liar=True`` (running
      trials of other workers count as bad, so parallel workers spread out).
    - ``cmaes``: CMA-ES on the continuous dimensions; categorical and conditional ones go to TPE.
    - ``gp``: Gaussian-process Bayesian optimisation.
    - ``random``, ``grid`` (every dimension a finite list; see :meth:`SearchSpace.grid_search_space`).

    Raises:
        SweepConfigError: for options the sampler does not accept.
    """
    samplers = optuna.samplers
    key = f"sampler.options (for {spec.name})"
    if spec.name == "tpe":
        return _construct(
            samplers.TPESampler,
            spec.options,
            key,
            multivariate=True,
            group=True,
            constant_liar=True,
            seed=seed,
        )
    if spec.name == "cmaes":
        try:
            import cmaes  # noqa: F401
        except ImportError:
            raise SweepConfigError(
                "sampler.name: `cmaes` needs the cmaes package (pip install cmaes)"
            ) from None
        return _construct(
            samplers.CmaEsSampler,
            spec.options,
            key,
            seed=seed,
            warn_independent_sampling=False,
            independent_sampler=samplers.TPESampler(seed=seed, multivariate=True),
        )
    if spec.name == "gp":
        return _construct(samplers.GPSampler, spec.options, key, seed=seed)
    if spec.name == "random":
        return _construct(samplers.RandomSampler, spec.options, key, seed=seed)
    if spec.name == "grid":
        return _construct(
            samplers.GridSampler,
            spec.options,
            key,
            search_space=space.grid_search_space(),
            seed=seed,
        )
    raise SweepConfigError(f"sampler.name: unknown sampler {spec.name!r}")


def build_pruner(spec: PrunerSpec, max_epochs: int | None = None) -> optuna.pruners.BasePruner:
    """The Optuna pruner named by ``spec``. Steps are epochs.

    - ``median``: stop a trial whose epoch-``k`` value is worse than the median of earlier
      trials at epoch ``k`` (after 4 finished trials and 1 warm-up epoch, by default).
    - ``hyperband``: successive halving brackets from 1 epoch up to ``max_epochs``.
    - ``none``: every trial runs to the end.

    Raises:
        SweepConfigError: for options the pruner does not accept.
    """
    pruners = optuna.pruners
    key = f"pruner.options (for {spec.name})"
    if spec.name == "median":
        return _construct(
            pruners.MedianPruner, spec.options, key, n_startup_trials=4, n_warmup_steps=1
        )
    if spec.name == "hyperband":
        return _construct(
            pruners.HyperbandPruner,
            spec.options,
            key,
            min_resource=1,
            max_resource=max_epochs or "auto",
            reduction_factor=3,
        )
    if spec.name == "none":
        return pruners.NopPruner()
    raise SweepConfigError(f"pruner.name: unknown pruner {spec.name!r}")


def study_metadata(sweep: SweepConfig, logdir: Path) -> dict[str, Any]:
    """What ``o2nc-sweep report`` needs to know about a sweep, stored with the study."""
    beta = sweep.space.find("beta")
    lr = sweep.space.find("lr")
    max_epochs = get_path(sweep.trial_config({}), "trainer.max_epochs", default=None)
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
        SweepConfigError: when an existing study optimises in the other direction.
    """
    max_epochs = get_path(sweep.trial_config({}), "trainer.max_epochs", default=None)
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


class StopWhenStudyIsComplete:
    """Optuna callback: stop this worker once finished plus running trials reach ``n_trials``.

    ``n_trials`` is the size of the study, shared by all workers: two workers on a 20-trial study
    run 20 trials between them, and re-running a finished sweep runs none.
    """

    def __init__(self, n_trials: int) -> None:
        self.n_trials = n_trials

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        trials = study.get_trials(deepcopy=False)
        finished = sum(is_finished_for_good(t) for t in trials)
        running = sum(t.state == TrialState.RUNNING for t in trials)
        if finished + running >= self.n_trials:
            study.stop()
