"""The conditional dimension: a categorical whose every choice brings its own dimensions.

Optuna's define-by-run spaces are conditional by nature: a parameter exists only in the trials
that take the branch suggesting it. In a sweep file this is one entry of ``space``::

    model.optimizer:
      type: conditional
      choices:
        o2nc:                                  # ExponentiatedO2NC: eta, beta, mu
          model.lr: {type: float, low: 1.0e-2, high: 1.0, log: true}
          model.beta: {type: one_minus, low: 1.0e-3, high: 0.5}
          model.mu: {type: zero_or_float, low: 1.0e-3, high: 1.0}
        o2nc_adamw:                            # AdamW with random scaling: lr, betas, decay
          model.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
          model.beta: {type: one_minus, low: 1.0e-2, high: 0.5}
          model.beta2: {type: one_minus, low: 1.0e-3, high: 0.1}
          model.weight_decay: {type: float, low: 1.0e-4, high: 0.3, log: true}

The choice is the categorical Optuna parameter ``<path>`` and the value written at ``<path>``.
Each branch maps config paths to a dimension (any type, a conditional one included) or to a fixed
value. A branch's dimension is named ``<its default name>[<choice>]`` (``model.lr[o2nc_adamw]``,
``1-model.beta[o2nc]``), so each family gets its own distribution and TPE models each apart; a
``name`` in its mapping replaces that. A path that a branch does not write keeps the train
config's value. With the grid sampler the branches must hold fixed values only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, ClassVar

import optuna

from .checks import Scalar
from .dimensions import DIMENSIONS, Dimension, parse_dimension
from .errors import SweepConfigError
from .paths import split_path

__all__ = ["ConditionalDimension"]


@dataclass(frozen=True)
class ConditionalDimension(Dimension):
    """``{type: conditional, choices: {choice: {config path: dimension | value}}}``."""

    branches: Mapping[Scalar, Mapping[str, Any]] = field(default_factory=dict)
    type_name: ClassVar[str] = "conditional"
    keys: ClassVar[frozenset[str]] = frozenset({"choices"})
    single_path: ClassVar[bool] = False

    @classmethod
    def parse(cls, path, name, grid, spec, key):
        choices = spec.get("choices")
        if not isinstance(choices, Mapping) or not choices:
            raise SweepConfigError(
                f"{key}.choices must map each value of {path!r} to the config paths it searches "
                f"or fixes (an empty mapping for none), got {choices!r}"
            )
        branches = {
            choice: _parse_branch(path, choice, entries, f"{key}.choices.{choice}")
            for choice, entries in choices.items()
        }
        return cls(path, name, grid, MappingProxyType(branches))

    def param_names(self) -> tuple[str, ...]:
        names = [self.name]
        for branch in self.branches.values():
            for value in branch.values():
                if isinstance(value, Dimension):
                    names.extend(n for n in value.param_names() if n not in names)
        return tuple(names)

    def paths(self) -> tuple[str, ...]:
        paths = [self.path]
        for branch in self.branches.values():
            for inner_path, value in branch.items():
                inner = value.paths() if isinstance(value, Dimension) else (inner_path,)
                paths.extend(p for p in inner if p not in paths)
        return tuple(paths)

    def suggest(self, trial: optuna.trial.BaseTrial) -> Scalar:
        """The choice alone; :meth:`assign` also samples the branch it opens."""
        return trial.suggest_categorical(self.name, list(self.branches))

    def assign(self, trial: optuna.trial.BaseTrial, *, grid: bool = False) -> dict[str, Any]:
        choice = self.suggest_from_grid(trial) if grid else self.suggest(trial)
        assignment: dict[str, Any] = {self.path: choice}
        for inner_path, value in self.branches[choice].items():
            if isinstance(value, Dimension):
                assignment.update(value.assign(trial, grid=grid))
            else:
                assignment[inner_path] = value
        return assignment

    def endpoint(self, end: str) -> Scalar:
        choices = list(self.branches)
        return choices[0 if end == "low" else -1]

    def grid_values(self) -> list[Scalar]:
        for choice, branch in self.branches.items():
            for inner_path, value in branch.items():
                if isinstance(value, Dimension):
                    raise SweepConfigError(
                        f"space.{self.path}.choices.{choice}.{inner_path}: the grid sampler needs "
                        "fixed values in a conditional dimension's branches, not a searched one"
                    )
        return list(self.grid) if self.grid is not None else list(self.branches)


def _parse_branch(path: str, choice: Any, entries: Any, key: str) -> dict[str, Any]:
    """One choice's ``{config path: dimension | fixed value}``."""
    if isinstance(choice, (list, dict)) or choice is None:
        raise SweepConfigError(f"{key}: a choice must be a string, number or boolean")
    entries = {} if entries is None else entries
    if not isinstance(entries, Mapping):
        raise SweepConfigError(
            f"{key} must map config paths to dimensions or fixed values, got {entries!r}"
        )
    branch: dict[str, Any] = {}
    for inner_path, value in entries.items():
        inner_path = str(inner_path)
        split_path(inner_path)
        where = f"{key}.{inner_path}"
        if inner_path == path:
            raise SweepConfigError(f"{where}: the branch cannot set {path!r}, its own choice")
        if isinstance(value, Mapping):
            inner_type = DIMENSIONS.get(value.get("type"))
            default = inner_type.default_name(inner_path) if inner_type else inner_path
            branch[inner_path] = parse_dimension(
                inner_path, {"name": f"{default}[{choice}]", **value}, where
            )
        else:
            branch[inner_path] = value
    return branch


DIMENSIONS[ConditionalDimension.type_name] = ConditionalDimension
