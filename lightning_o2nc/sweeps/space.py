"""Search spaces written in YAML, turned into Optuna ``suggest_*`` calls.

Each entry of a sweep's ``space`` maps a dotted config path to a dimension::

    space:
      model.lr: {type: float, low: 1.0e-3, high: 1.0, log: true}
      model.beta: {type: one_minus, low: 1.0e-3, high: 0.5}     # 1 - beta is log-uniform
      model.average_beta: {type: one_minus, low: 1.0e-4, high: 0.1}  # x_bar's own horizon
      model.mu: {type: zero_or_float, low: 1.0e-4, high: 1.0}   # 0, or log-uniform
      model.scaling: {type: categorical, choices: [exponential, uniform, none]}
      model.schedules.lr:
        type: schedule
        choices:
          constant: {}
          warmup_cosine: {warmup_fraction: {type: float, low: 0.0, high: 0.3}, min_factor: 0.0}
      trainer.max_epochs: {type: int, low: 5, high: 20}
      model.optimizer:                      # a categorical whose choices bring their own dimensions
        type: conditional
        choices:
          o2nc: {model.beta: {type: one_minus, low: 1.0e-3, high: 0.5}}
          o2nc_adamw: {model.beta2: {type: one_minus, low: 1.0e-3, high: 0.1}}

The dimension types live in :mod:`lightning_o2nc.sweeps.dimensions` and
:mod:`lightning_o2nc.sweeps.conditional`; a :class:`SearchSpace` is their ordered tuple, sampled in
the order the YAML lists them.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import optuna

from .checks import Scalar
from .conditional import ConditionalDimension
from .dimensions import Dimension, ScheduleDimension, parse_dimension
from .errors import SweepConfigError
from .paths import split_path

__all__ = ["ConditionalDimension", "SearchSpace", "parse_space"]


@dataclass(frozen=True)
class SearchSpace:
    """The parsed ``space`` section: an ordered mapping from config path to dimension."""

    dimensions: tuple[Dimension, ...]

    def __post_init__(self) -> None:
        seen: dict[str, str] = {}
        written: dict[str, str] = {}
        for dim in self.dimensions:
            for name in dim.param_names():
                if name in seen and seen[name] != dim.path:
                    raise SweepConfigError(
                        f"space.{dim.path}: parameter name {name!r} is also used by "
                        f"space.{seen[name]}"
                    )
                seen[name] = dim.path
            for path in dim.paths():
                if path in written:
                    raise SweepConfigError(
                        f"space.{dim.path}: writes {path!r}, which space.{written[path]} "
                        "searches too; a field is searched by one entry"
                    )
                written[path] = dim.path

    @property
    def paths(self) -> list[str]:
        """Every config path the space may write (a conditional dimension's branches too)."""
        return [path for dim in self.dimensions for path in dim.paths()]

    def suggest(self, trial: optuna.trial.BaseTrial, *, grid: bool = False) -> dict[str, Any]:
        """Sample every dimension: ``{config path: value}``, in the order the YAML lists them.

        A conditional dimension adds the paths of the branch it took, and only those.
        """
        assignment: dict[str, Any] = {}
        for dim in self.dimensions:
            assignment.update(dim.assign(trial, grid=grid))
        return assignment

    def branch_paths(self) -> list[str]:
        """The paths of the conditional dimensions (the choices that open branches)."""
        return [dim.path for dim in self.dimensions if isinstance(dim, ConditionalDimension)]

    def branch_probes(self, *, grid: bool = False) -> list[dict[str, Scalar]]:
        """Fixed Optuna parameters that make a sample take each branch of each conditional
        dimension once (``[{}]``, one free sample, for a space without one)."""
        probes = [
            {dim.path if grid else dim.name: choice}
            for dim in self.dimensions
            if isinstance(dim, ConditionalDimension)
            for choice in (dim.grid_values() if grid else dim.branches)
        ]
        return probes or [{}]

    def grid_search_space(self) -> dict[str, list[Scalar]]:
        """The ``search_space`` argument of :class:`optuna.samplers.GridSampler`."""
        return {dim.path: dim.grid_values() for dim in self.dimensions}

    def find(self, *suffixes: str) -> Dimension | None:
        """The first dimension whose path ends with one of ``suffixes`` (``"lr"``, ``"beta"``).

        Schedules are not searched (``model.schedules.lr`` is not the lr); a conditional
        dimension's branches are, in order (the report's beta-eta contour of a family sweep is
        then the first family's).
        """
        for dim in _leaves(self.dimensions):
            if split_path(dim.path)[-1] in suffixes and not isinstance(dim, ScheduleDimension):
                return dim
        return None


def _leaves(dimensions: Iterable[Dimension]) -> Iterator[Dimension]:
    """The dimensions, with each conditional one replaced by its branches' dimensions."""
    for dim in dimensions:
        if isinstance(dim, ConditionalDimension):
            for branch in dim.branches.values():
                yield from _leaves(v for v in branch.values() if isinstance(v, Dimension))
        else:
            yield dim


def parse_space(spec: Any) -> SearchSpace:
    """Parse and validate a sweep's ``space`` mapping.

    Raises:
        SweepConfigError: naming the key of the first malformed entry.
    """
    if not isinstance(spec, Mapping) or not spec:
        raise SweepConfigError(f"space must be a non-empty mapping of config paths, got {spec!r}")
    dimensions = []
    for path, dim_spec in spec.items():
        split_path(str(path))
        dimensions.append(parse_dimension(str(path), dim_spec, f"space.{path}"))
    return SearchSpace(tuple(dimensions))
