"""The dimension types of a search space, each built from its YAML mapping by ``type``.

:data:`DIMENSIONS` maps every ``type`` to its class; :func:`parse_dimension` checks the keys
common to all (``type``, ``name``, ``grid``) and those the class declares, then lets the class
build itself. A new dimension type is one class and one entry in :data:`DIMENSIONS` (the
conditional type, :mod:`sweeps.conditional`, parses dimensions itself and enters its own).

A dimension knows its Optuna parameter names, samples itself from a trial (conditional parameters
are only suggested when their branch is taken) and returns the value to write into the train
config. With the grid sampler every dimension is a fixed list of values instead. Schedule shapes,
their arguments and the schedulable fields come from ``lightning_o2nc.optim``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import optuna

from lightning_o2nc.optim.hyperparameters import INTERVALS, SCHEDULABLE
from lightning_o2nc.optim.schedules import SCHEDULE_ARGUMENTS, make_schedule

from .checks import Scalar, bounds, check_keys, grid_values, number, scalar_list
from .errors import SweepConfigError
from .paths import split_path

__all__ = [
    "DIMENSIONS",
    "CategoricalDimension",
    "Dimension",
    "FloatDimension",
    "IntDimension",
    "OneMinusDimension",
    "ScheduleDimension",
    "ZeroOrFloatDimension",
    "parse_dimension",
]


#: ``interval`` (when the schedule steps) is accepted by every schedule shape.
_SCHEDULE_COMMON = frozenset({"interval"})


@dataclass(frozen=True)
class Dimension:
    """One searched config field, written in YAML as ``{type: <type_name>, ...}``.

    Subclasses implement :meth:`parse` (the YAML keys of their type), :meth:`suggest` and, where
    the grid sampler can enumerate them without a ``grid`` list, :meth:`grid_values`.
    """

    path: str
    name: str
    grid: tuple[Scalar, ...] | None = None

    type_name: ClassVar[str] = ""
    #: The YAML keys of this type, besides ``type``, ``name`` and ``grid``.
    keys: ClassVar[frozenset[str]] = frozenset()
    #: Writes its own path only (a conditional dimension writes its branches' paths too).
    single_path: ClassVar[bool] = True

    @classmethod
    def default_name(cls, path: str) -> str:
        """The Optuna parameter name when the YAML gives no ``name``."""
        return path

    @classmethod
    def parse(
        cls,
        path: str,
        name: str,
        grid: tuple[Scalar, ...] | None,
        spec: Mapping[str, Any],
        key: str,
    ) -> Dimension:
        """Build the dimension from its YAML mapping, whose keys are already checked."""
        raise NotImplementedError

    def suggest(self, trial: optuna.trial.BaseTrial) -> Any:
        """Sample this dimension from ``trial`` and return the config value."""
        raise NotImplementedError

    def endpoint(self, end: str) -> Any:
        """The config value at the ``"low"`` or ``"high"`` end of the range."""
        return getattr(self, end)

    def param_names(self) -> tuple[str, ...]:
        """Every Optuna parameter name this dimension may suggest."""
        return (self.name,)

    def paths(self) -> tuple[str, ...]:
        """Every config path this dimension may write."""
        return (self.path,)

    def assign(self, trial: optuna.trial.BaseTrial, *, grid: bool = False) -> dict[str, Any]:
        """Sample from ``trial``: ``{config path: value}`` for every path this trial writes."""
        return {self.path: self.suggest_from_grid(trial) if grid else self.suggest(trial)}

    def grid_values(self) -> list[Scalar]:
        """The values the grid sampler enumerates (the config values themselves)."""
        if self.grid is None:
            raise SweepConfigError(
                f"space.{self.path}: the grid sampler needs a finite list of values; "
                f"add `grid: [...]` to this {self.type_name} dimension"
            )
        return list(self.grid)

    def suggest_from_grid(self, trial: optuna.trial.BaseTrial) -> Any:
        """Grid mode: a categorical over :meth:`grid_values` under the config path's name."""
        return trial.suggest_categorical(self.path, self.grid_values())


class _RangeDimension(Dimension):
    """Shared parsing of ``{low, high, log, step}`` for the float and int dimensions."""

    integer: ClassVar[bool] = False
    keys: ClassVar[frozenset[str]] = frozenset({"low", "high", "log", "step"})

    @classmethod
    def parse(cls, path, name, grid, spec, key):
        low, high, log = bounds(spec, key, integer=cls.integer)
        step = spec.get("step")
        if step is not None:
            step = number(step, f"{key}.step", integer=cls.integer)
            if step <= 0:
                raise SweepConfigError(f"{key}.step must be > 0, got {step}")
            if log:
                raise SweepConfigError(f"{key}: `step` cannot be combined with `log: true`")
        if log and low <= 0:
            raise SweepConfigError(f"{key}: log scale needs low > 0, got low={low}")
        if step is None:
            return cls(path, name, grid, low, high, log)
        return cls(path, name, grid, low, high, log, step)


@dataclass(frozen=True)
class FloatDimension(_RangeDimension):
    """``{type: float, low, high, log: false, step: null}``: ``trial.suggest_float``."""

    low: float = 0.0
    high: float = 1.0
    log: bool = False
    step: float | None = None
    type_name: ClassVar[str] = "float"

    def suggest(self, trial: optuna.trial.BaseTrial) -> float:
        return trial.suggest_float(self.name, self.low, self.high, log=self.log, step=self.step)


@dataclass(frozen=True)
class IntDimension(_RangeDimension):
    """``{type: int, low, high, log: false, step: 1}``: ``trial.suggest_int``."""

    low: int = 0
    high: int = 1
    log: bool = False
    step: int = 1
    type_name: ClassVar[str] = "int"
    integer: ClassVar[bool] = True

    def suggest(self, trial: optuna.trial.BaseTrial) -> int:
        return trial.suggest_int(self.name, self.low, self.high, log=self.log, step=self.step)

    def grid_values(self) -> list[Scalar]:
        if self.grid is None and not self.log:
            return list(range(self.low, self.high + 1, self.step))
        return super().grid_values()


@dataclass(frozen=True)
class CategoricalDimension(Dimension):
    """``{type: categorical, choices: [...]}``: ``trial.suggest_categorical``."""

    choices: tuple[Scalar, ...] = ()
    type_name: ClassVar[str] = "categorical"
    keys: ClassVar[frozenset[str]] = frozenset({"choices"})

    @classmethod
    def parse(cls, path, name, grid, spec, key):
        if "choices" not in spec:
            raise SweepConfigError(f"{key}: missing `choices`")
        return cls(path, name, grid, tuple(scalar_list(spec["choices"], f"{key}.choices")))

    def suggest(self, trial: optuna.trial.BaseTrial) -> Scalar:
        return trial.suggest_categorical(self.name, list(self.choices))

    def endpoint(self, end: str) -> Scalar:
        return self.choices[0 if end == "low" else -1]

    def grid_values(self) -> list[Scalar]:
        return list(self.grid) if self.grid is not None else list(self.choices)


@dataclass(frozen=True)
class _LogByDefaultDimension(Dimension):
    """Shared fields and parsing of ``{low, high, log: true}``; subclasses add their bound checks."""

    low: float = 0.0
    high: float = 1.0
    log: bool = True
    keys: ClassVar[frozenset[str]] = frozenset({"low", "high", "log"})

    @classmethod
    def check_bounds(cls, low: float, high: float, log: bool, key: str) -> None:
        """Refuse bounds this type cannot sample."""

    @classmethod
    def parse(cls, path, name, grid, spec, key):
        low, high, _ = bounds(spec, key)
        log = spec.get("log", True)
        cls.check_bounds(low, high, log, key)
        return cls(path, name, grid, low, high, log)


@dataclass(frozen=True)
class OneMinusDimension(_LogByDefaultDimension):
    """``{type: one_minus, low, high, log: true}``: samples ``u = 1 - value`` in ``[low, high]``.

    The natural space for a momentum ``beta``: ``1 - beta`` log-uniform in ``[1e-3, 0.5]`` spreads
    trials evenly over 0.5, 0.9, 0.99, 0.999. The Optuna parameter is named ``1-<path>`` and holds
    ``u``; the config receives ``1 - u``. ``grid`` lists values of the field itself (beta).
    """

    type_name: ClassVar[str] = "one_minus"

    @classmethod
    def default_name(cls, path: str) -> str:
        return f"1-{path}"

    @classmethod
    def check_bounds(cls, low: float, high: float, log: bool, key: str) -> None:
        if low <= 0 or high > 1:
            raise SweepConfigError(
                f"{key}: 1 - value must lie in (0, 1], so 0 < low <= high <= 1; got [{low}, {high}]"
            )

    def suggest(self, trial: optuna.trial.BaseTrial) -> float:
        return 1.0 - trial.suggest_float(self.name, self.low, self.high, log=self.log)

    def endpoint(self, end: str) -> float:
        return 1.0 - (self.high if end == "low" else self.low)


@dataclass(frozen=True)
class ZeroOrFloatDimension(_LogByDefaultDimension):
    """``{type: zero_or_float, low, high, log: true}``: exactly 0, or a float in ``[low, high]``.

    Suggests a categorical ``<path>:zero`` (true/false); only when it is false, the float
    ``<path>`` (log-uniform by default). The natural space for ``mu``, whose off state is 0.
    """

    type_name: ClassVar[str] = "zero_or_float"

    @classmethod
    def check_bounds(cls, low: float, high: float, log: bool, key: str) -> None:
        if log and low <= 0:
            raise SweepConfigError(f"{key}: log scale needs low > 0, got low={low}")

    @property
    def switch_name(self) -> str:
        return f"{self.name}:zero"

    def param_names(self) -> tuple[str, ...]:
        return (self.switch_name, self.name)

    def suggest(self, trial: optuna.trial.BaseTrial) -> float:
        if trial.suggest_categorical(self.switch_name, [True, False]):
            return 0.0
        return trial.suggest_float(self.name, self.low, self.high, log=self.log)

    def endpoint(self, end: str) -> float:
        return 0.0 if end == "low" else self.high


@dataclass(frozen=True)
class ScheduleDimension(Dimension):
    """``{type: schedule, choices: {shape: {argument: value | dimension}}}`` at ``...schedules.<field>``.

    The shape is a categorical ``<path>.shape``; each shape's arguments that are dimensions are
    conditional parameters ``<path>.<shape>.<argument>``, suggested only when that shape is
    drawn. The config receives ``{"shape": shape, **arguments}``.
    """

    shapes: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    type_name: ClassVar[str] = "schedule"
    keys: ClassVar[frozenset[str]] = frozenset({"choices"})

    @classmethod
    def parse(cls, path, name, grid, spec, key):
        keys = split_path(path)
        if len(keys) < 2 or keys[-2] != "schedules" or keys[-1] not in SCHEDULABLE:
            raise SweepConfigError(
                f"{key}: a schedule dimension must sit at "
                f"`<...>.schedules.<{'|'.join(SCHEDULABLE)}>`, not {path!r}"
            )
        choices = spec.get("choices")
        if not isinstance(choices, Mapping) or not choices:
            raise SweepConfigError(
                f"{key}.choices must map schedule shapes {sorted(SCHEDULE_ARGUMENTS)} to their "
                f"arguments, got {choices!r}"
            )
        shapes = {
            shape: _parse_schedule_arguments(path, name, shape, arguments, f"{key}.choices.{shape}")
            for shape, arguments in choices.items()
        }
        for shape, arguments in shapes.items():
            _dry_run_schedule(shape, arguments, f"{key}.choices.{shape}")
        return cls(path, name, grid, shapes)

    @property
    def shape_name(self) -> str:
        return f"{self.name}.shape"

    def param_names(self) -> tuple[str, ...]:
        names = [self.shape_name]
        for arguments in self.shapes.values():
            for value in arguments.values():
                if isinstance(value, Dimension):
                    names.extend(value.param_names())
        return tuple(names)

    def suggest(self, trial: optuna.trial.BaseTrial) -> dict[str, Any]:
        shape = trial.suggest_categorical(self.shape_name, list(self.shapes))
        spec: dict[str, Any] = {"shape": shape}
        for argument, value in self.shapes[shape].items():
            spec[argument] = value.suggest(trial) if isinstance(value, Dimension) else value
        return spec

    def grid_values(self) -> list[Scalar]:
        for shape, arguments in self.shapes.items():
            for argument, value in arguments.items():
                if isinstance(value, Dimension):
                    raise SweepConfigError(
                        f"space.{self.path}.choices.{shape}.{argument}: the grid sampler needs "
                        "fixed schedule arguments, not a searched dimension"
                    )
        return list(self.shapes)

    def suggest_from_grid(self, trial: optuna.trial.BaseTrial) -> dict[str, Any]:
        shape = trial.suggest_categorical(self.path, self.grid_values())
        return {"shape": shape, **self.shapes[shape]}


#: Every dimension type, by the ``type`` its YAML mapping names.
DIMENSIONS: dict[str, type[Dimension]] = {
    cls.type_name: cls
    for cls in (
        FloatDimension,
        IntDimension,
        CategoricalDimension,
        OneMinusDimension,
        ZeroOrFloatDimension,
        ScheduleDimension,
    )
}
_COMMON_KEYS = frozenset({"type", "name", "grid"})


def _parse_schedule_arguments(
    path: str, name: str, shape: str, arguments: Any, key: str
) -> dict[str, Any]:
    """One shape's arguments: fixed values as they are, mappings parsed as conditional dimensions."""
    if shape not in SCHEDULE_ARGUMENTS:
        raise SweepConfigError(
            f"{key}: unknown schedule shape; known: {sorted(SCHEDULE_ARGUMENTS)}"
        )
    arguments = {} if arguments is None else arguments
    if not isinstance(arguments, Mapping):
        raise SweepConfigError(f"{key} must be a mapping of arguments")
    check_keys(arguments, set(SCHEDULE_ARGUMENTS[shape] | _SCHEDULE_COMMON), key)
    parsed = {
        argument: (
            parse_dimension(
                f"{path}.{argument}",
                {"name": f"{name}.{shape}.{argument}", **value},
                f"{key}.{argument}",
            )
            if isinstance(value, Mapping)
            else value
        )
        for argument, value in arguments.items()
    }
    for argument, value in parsed.items():
        if isinstance(value, Dimension) and not value.single_path:
            raise SweepConfigError(
                f"{key}.{argument}: a {value.type_name} dimension writes several config paths; "
                "a schedule argument takes one value"
            )
    return parsed


def _dry_run_schedule(shape: str, arguments: Mapping[str, Any], key: str) -> None:
    """Build the schedule at both ends of every searched argument, so bad ranges fail now."""
    for end in ("low", "high"):
        spec: dict[str, Any] = {"shape": shape}
        for argument, value in arguments.items():
            if argument == "interval":
                if value not in INTERVALS:
                    raise SweepConfigError(
                        f"{key}.interval must be one of {INTERVALS}, got {value!r}"
                    )
                continue
            spec[argument] = value.endpoint(end) if isinstance(value, Dimension) else value
        try:
            make_schedule(spec, total_steps=1000)
        except (ValueError, TypeError) as error:
            raise SweepConfigError(f"{key}: {error}") from None


def parse_dimension(path: str, spec: Any, key: str) -> Dimension:
    """One entry of ``space``: the dimension class its ``type`` names, built from its mapping."""
    if not isinstance(spec, Mapping) or "type" not in spec:
        raise SweepConfigError(
            f"{key} must be a mapping with a `type` ({', '.join(DIMENSIONS)}); got {spec!r}. "
            "Fixed values belong in `overrides`."
        )
    cls = DIMENSIONS.get(spec["type"])
    name = spec.get("name", path if cls is None else cls.default_name(path))
    if not isinstance(name, str) or not name:
        raise SweepConfigError(f"{key}.name must be a non-empty string, got {name!r}")
    grid = grid_values(spec["grid"], f"{key}.grid") if "grid" in spec else None
    if cls is None:
        raise SweepConfigError(
            f"{key}.type: unknown dimension type {spec['type']!r}; known: {', '.join(DIMENSIONS)}"
        )
    check_keys(spec, set(_COMMON_KEYS | cls.keys), key)
    return cls.parse(path, name, grid, spec, key)
