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

The dimension types live in :mod:`lightning_o2nc.sweeps.dimensions`; a :class:`SearchSpace` is their ordered
tuple, sampled in the order the YAML lists them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import optuna

from .checks import Scalar
from .dimensions import Dimension, parse_dimension
from .errors import SweepConfigError
from .paths import split_path

__all__ = ["SearchSpace", "parse_space"]


@dataclass(frozen=True)
class SearchSpace:
    """The parsed ``space`` section: an ordered mapping from config path to dimension."""

    dimensions: tuple[Dimension, ...]

    def __post_init__(self) -> None:
        seen: dict[str, str] = {}
        for dim in self.dimensions:
            for name in dim.param_names():
                if name in seen and seen[name] != dim.path:
                    raise SweepConfigError(
                        f"space.{dim.path}: parameter name {name!r} is also used by "
                        f"space.{seen[name]}"
                    )
                seen[name] = dim.path

    @property
    def paths(self) -> list[str]:
        return [dim.path for dim in self.dimensions]

    def suggest(self, trial: optuna.trial.BaseTrial, *, grid: bool = False) -> dict[str, Any]:
        """Sample every dimension: ``{config path: value}``, in the order the YAML lists them."""
        if grid:
            return {dim.path: dim.suggest_from_grid(trial) for dim in self.dimensions}
        return {dim.path: dim.suggest(trial) for dim in self.dimensions}

    def grid_search_space(self) -> dict[str, list[Scalar]]:
        """The ``search_space`` argument of :class:`optuna.samplers.GridSampler`."""
        return {dim.path: dim.grid_values() for dim in self.dimensions}

    def find(self, *suffixes: str) -> Dimension | None:
        """The first dimension whose path ends with one of ``suffixes`` (``"lr"``, ``"beta"``)."""
        for dim in self.dimensions:
            if split_path(dim.path)[-1] in suffixes:
                return dim
        return None


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
