"""A changed search space on an existing study: refused before any trial if Optuna cannot continue.

Running a sweep again continues its study. If the sweep file's ``space`` changed meanwhile, Optuna
raises in the middle of the first trial (``ValueError: CategoricalDistribution does not support
dynamic value space``). This module finds that before any trial runs and says it in one line that
names the changed dimension.

What Optuna cannot continue is what :func:`optuna.distributions.check_distribution_compatibility`
refuses, and nothing else: a parameter whose kind changes (float to categorical), whose log scale
changes, or a categorical whose choices change. A float or int range that moves, a new dimension,
a dropped one, or a conditional branch (a schedule shape, an optimizer's own parameters) that
this run does not reach are all fine: the study continues.

The space is compared with the distributions that the study's trials recorded, and with the
space remembered in the study's user attribute :data:`SPACE_ATTR` (written on every run, so a
study whose first run was stopped before any trial still remembers it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
    check_distribution_compatibility,
    distribution_to_json,
    json_to_distribution,
)

from .errors import SweepConfigError
from .space import SearchSpace

__all__ = ["SPACE_ATTR", "check_space_unchanged", "space_distributions"]

#: Study user attribute: ``{param name: distribution JSON}`` of the space the last run searched.
SPACE_ATTR = "o2nc_search_space"


class _RecordingTrial:
    """Stands in for a trial to learn the distributions a space asks for, branch by branch.

    Optuna has no API that lists the distributions of a define-by-run space without running it,
    so :func:`space_distributions` runs the space's own ``suggest`` against this object: it
    records each ``suggest_*`` call's distribution and answers a categorical with its
    ``branch``-th choice (modulo its length), so that enough passes reach every conditional
    branch.
    """

    def __init__(self, branch: int) -> None:
        self.branch = branch
        self.distributions: dict[str, BaseDistribution] = {}

    def suggest_float(
        self, name: str, low: float, high: float, *, step: float | None = None, log: bool = False
    ) -> float:
        self.distributions[name] = FloatDistribution(low, high, log=log, step=step)
        return low

    def suggest_int(
        self, name: str, low: int, high: int, *, step: int = 1, log: bool = False
    ) -> int:
        self.distributions[name] = IntDistribution(low, high, log=log, step=step)
        return low

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any:
        self.distributions[name] = CategoricalDistribution(list(choices))
        return list(choices)[self.branch % len(choices)]


def space_distributions(space: SearchSpace, *, grid: bool = False) -> dict[str, tuple]:
    """``{param name: (distribution, config path)}`` over every branch of ``space``.

    Args:
        space: the sweep's search space.
        grid: the space as the grid sampler asks for it (one categorical per dimension).
    """
    found: dict[str, tuple] = {}
    for dim in space.dimensions:
        branch, branches = 0, 1
        while branch < branches:
            trial = _RecordingTrial(branch)
            dim.suggest_from_grid(trial) if grid else dim.suggest(trial)  # type: ignore[arg-type]
            for name, distribution in trial.distributions.items():
                found.setdefault(name, (distribution, dim.path))
                if isinstance(distribution, CategoricalDistribution):
                    branches = max(branches, len(distribution.choices))
            branch += 1
    return found


def _describe(old: BaseDistribution, new: BaseDistribution) -> str:
    if type(old) is not type(new):
        return f"its type changed from {_kind(old)} to {_kind(new)}"
    if isinstance(old, CategoricalDistribution) and isinstance(new, CategoricalDistribution):
        return f"its choices changed from {list(old.choices)} to {list(new.choices)}"
    return f"its log scale changed from {old.log} to {new.log}"  # type: ignore[attr-defined]


def _kind(distribution: BaseDistribution) -> str:
    return {
        FloatDistribution: "float",
        IntDistribution: "int",
        CategoricalDistribution: "categorical",
    }.get(type(distribution), type(distribution).__name__)


def check_space_unchanged(study: optuna.Study, space: SearchSpace, *, grid: bool = False) -> None:
    """Refuse a space that Optuna cannot continue ``study`` with; else remember it in the study.

    Raises:
        SweepConfigError: one line naming the changed dimension and suggesting a new study name.
    """
    known: dict[str, BaseDistribution] = {
        name: json_to_distribution(text)
        for name, text in study.user_attrs.get(SPACE_ATTR, {}).items()
    }
    for trial in study.get_trials(deepcopy=False):
        known.update(trial.distributions)
    new = space_distributions(space, grid=grid)
    for name, (distribution, path) in new.items():
        old = known.get(name)
        if old is None:
            continue
        try:
            check_distribution_compatibility(old, distribution)
        except ValueError:
            where = f"space.{path}" + (f" (parameter {name!r})" if name != path else "")
            raise SweepConfigError(
                f"{where}: study {study.study_name!r} already exists and {_describe(old, distribution)}, "
                "which Optuna cannot continue; name a new study (study_name in the sweep file, or "
                "--study-name NEW_NAME), or restore the old space"
            ) from None
    study.set_user_attr(SPACE_ATTR, {name: distribution_to_json(d) for name, (d, _) in new.items()})
