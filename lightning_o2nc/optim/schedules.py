"""Schedules for any param-group hyper-parameter: eta (``lr``), ``beta``, ``mu``, ``beta2``, ...

A schedule is a multiplier f(t) of each group's base value, t = 0, 1, 2, ... counting scheduler
steps (like :class:`torch.optim.lr_scheduler.LambdaLR`), so per-group values keep their ratios:

- ``constant``:       f(t) = 1
- ``linear``:         f goes from ``start_factor`` to ``end_factor`` over ``total_steps``
- ``cosine``:         f(t) = m + (1 - m) (1 + cos(pi t / T)) / 2, with m = ``min_factor``
- ``warmup_cosine``:  linear from ``warmup_start_factor`` up to 1 over the warmup
                      (reaching 1 at its last step), then cosine down to ``min_factor``
- ``step``:           f(t) = gamma ** (t // step_size)
- ``exponential``:    f(t) = gamma ** t

:class:`HyperparameterScheduler` applies one schedule per field and subclasses torch's
``LRScheduler``, so Lightning accepts it as an ``lr_scheduler``; torch's own LR schedulers keep
working for ``lr`` beside it. It speaks the hyper-parameter table's names to every optimizer: on
torch's Adam family, whose groups keep ``betas = (beta1, beta2)``, ``beta`` drives ``betas[0]``
and ``beta2`` drives ``betas[1]`` (:data:`~.hyperparameters.GROUP_SLOTS`), as torch's
``OneCycleLR`` cycles ``betas[0]`` for Adam. On a wrapper that shares its base's ``param_groups``
(``RandomScaling``, ``O2NCAdamW``) it drives the base.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from .hyperparameters import (
    HYPERPARAMETERS,
    SCHEDULE_ARGUMENT_ALIASES,
    group_value,
    holds,
    set_group_value,
)

__all__ = [
    "SCHEDULE_ARGUMENTS",
    "SCHEDULE_SHAPES",
    "Constant",
    "Cosine",
    "Exponential",
    "HyperparameterScheduler",
    "Linear",
    "Schedule",
    "Step",
    "WarmupCosine",
    "make_schedule",
]


class Schedule:
    """A multiplier ``f(t)`` of a hyper-parameter's base value at scheduler step ``t``."""

    shape: ClassVar[str]

    def __call__(self, t: int) -> float:
        raise NotImplementedError

    def to_config(self) -> dict[str, Any]:
        """The mapping that :func:`make_schedule` turns back into this schedule."""
        return {"shape": self.shape, **dataclasses.asdict(self)}


def _require(condition: bool, shape: str, message: str) -> None:
    if not condition:
        raise ValueError(f"Invalid {shape!r} schedule: {message}")


def _check_fraction(shape: str, name: str, value: Any) -> None:
    _require(0.0 <= value <= 1.0, shape, f"{name}={value!r} must be in [0, 1]")


def _half_cosine(min_factor: float, progress: float) -> float:
    """From 1 at ``progress`` 0 down to ``min_factor`` at ``progress`` 1, along half a cosine."""
    return min_factor + (1.0 - min_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))


@dataclass(frozen=True)
class Constant(Schedule):
    shape: ClassVar[str] = "constant"

    def __call__(self, t: int) -> float:
        return 1.0


@dataclass(frozen=True)
class _FiniteHorizon(Schedule):
    """A schedule over ``total_steps`` scheduler steps (checked to be an int >= 1)."""

    total_steps: int

    def __post_init__(self) -> None:
        _require(
            isinstance(self.total_steps, int)
            and not isinstance(self.total_steps, bool)
            and self.total_steps >= 1,
            self.shape,
            f"total_steps must be an int >= 1, got {self.total_steps!r}",
        )

    def _progress(self, t: int) -> float:
        """t / total_steps, held at 1 after the horizon."""
        return min(t, self.total_steps) / self.total_steps


@dataclass(frozen=True)
class Linear(_FiniteHorizon):
    start_factor: float = 1.0
    end_factor: float = 0.0
    shape: ClassVar[str] = "linear"

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("start_factor", "end_factor"):
            value = getattr(self, name)
            _require(
                math.isfinite(value) and value >= 0, self.shape, f"{name}={value!r} must be >= 0"
            )

    def __call__(self, t: int) -> float:
        return self.start_factor + (self.end_factor - self.start_factor) * self._progress(t)


@dataclass(frozen=True)
class Cosine(_FiniteHorizon):
    min_factor: float = 0.0
    shape: ClassVar[str] = "cosine"

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_fraction(self.shape, "min_factor", self.min_factor)

    def __call__(self, t: int) -> float:
        return _half_cosine(self.min_factor, self._progress(t))


@dataclass(frozen=True)
class WarmupCosine(_FiniteHorizon):
    warmup_steps: int
    min_factor: float = 0.0
    warmup_start_factor: float = 0.0
    shape: ClassVar[str] = "warmup_cosine"

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(
            isinstance(self.warmup_steps, int) and 0 <= self.warmup_steps <= self.total_steps,
            self.shape,
            f"warmup_steps={self.warmup_steps!r} must be an int in [0, total_steps={self.total_steps}]",
        )
        _check_fraction(self.shape, "min_factor", self.min_factor)
        _check_fraction(self.shape, "warmup_start_factor", self.warmup_start_factor)

    def __call__(self, t: int) -> float:
        if t < self.warmup_steps:
            progress = (t + 1) / self.warmup_steps
            return self.warmup_start_factor + (1.0 - self.warmup_start_factor) * progress
        decay_steps = max(self.total_steps - self.warmup_steps, 1)
        progress = min(t - self.warmup_steps, decay_steps) / decay_steps
        return _half_cosine(self.min_factor, progress)


@dataclass(frozen=True)
class Step(Schedule):
    step_size: int
    gamma: float = 0.1
    shape: ClassVar[str] = "step"

    def __post_init__(self) -> None:
        _require(
            isinstance(self.step_size, int) and self.step_size >= 1,
            self.shape,
            f"step_size={self.step_size!r} must be an int >= 1",
        )
        _require(
            math.isfinite(self.gamma) and self.gamma > 0,
            self.shape,
            f"gamma={self.gamma!r} must be > 0",
        )

    def __call__(self, t: int) -> float:
        return self.gamma ** (t // self.step_size)


@dataclass(frozen=True)
class Exponential(Schedule):
    gamma: float
    shape: ClassVar[str] = "exponential"

    def __post_init__(self) -> None:
        _require(
            math.isfinite(self.gamma) and self.gamma > 0,
            self.shape,
            f"gamma={self.gamma!r} must be > 0",
        )

    def __call__(self, t: int) -> float:
        return self.gamma**t


SCHEDULE_SHAPES: dict[str, type[Schedule]] = {
    cls.shape: cls for cls in (Constant, Linear, Cosine, WarmupCosine, Step, Exponential)
}

#: Each shape and the arguments it accepts: its fields and their aliases (``warmup_fraction``).
#: ``total_steps`` defaults to the horizon that the caller passes.
SCHEDULE_ARGUMENTS: dict[str, frozenset[str]] = {
    shape: frozenset(
        {f.name for f in dataclasses.fields(cls)} | set(SCHEDULE_ARGUMENT_ALIASES.get(shape, {}))
    )
    for shape, cls in SCHEDULE_SHAPES.items()
}


def _aliases_of(shape: str) -> dict[str, tuple[str, str]]:
    return SCHEDULE_ARGUMENT_ALIASES.get(shape, {})


def make_schedule(
    spec: Schedule | str | Mapping[str, Any], total_steps: int | None = None
) -> Schedule:
    """Build a schedule from a shape name or a mapping ``{"shape": ..., **parameters}``.

    Args:
        spec: a :class:`Schedule`, a shape name, or a mapping as found in YAML configs.
            ``warmup_cosine`` also takes ``warmup_fraction`` (of ``total_steps``) instead of
            ``warmup_steps``.
        total_steps: the horizon for shapes that need one, unless the spec gives its own.

    Raises:
        ValueError: unknown shape or parameter (the message lists the valid ones), or a bad value.
    """
    if isinstance(spec, Schedule):
        return spec
    if isinstance(spec, str):
        spec = {"shape": spec}
    if not isinstance(spec, Mapping) or "shape" not in spec:
        raise ValueError(f"Invalid schedule {spec!r}: expected a mapping with a 'shape' key")
    params = dict(spec)
    shape = params.pop("shape")
    if shape not in SCHEDULE_SHAPES:
        raise ValueError(
            f"Invalid schedule shape {shape!r}; expected one of {', '.join(SCHEDULE_SHAPES)}"
        )
    cls = SCHEDULE_SHAPES[shape]
    fields = {f.name for f in dataclasses.fields(cls)}
    if "total_steps" in fields:
        params.setdefault("total_steps", total_steps)
        if params["total_steps"] is None:
            raise ValueError(
                f"Invalid {shape!r} schedule: it needs total_steps (the horizon), and none was given"
            )
    for alias, (target, _) in SCHEDULE_ARGUMENT_ALIASES.get(shape, {}).items():
        if alias not in params:
            continue
        if target in params:
            raise ValueError(f"Invalid {shape!r} schedule: give {target} or {alias}, not both")
        fraction = params.pop(alias)
        _require(0.0 <= fraction <= 1.0, shape, f"{alias}={fraction!r} must be in [0, 1]")
        params[target] = round(fraction * params["total_steps"])
    unknown = sorted(set(params) - fields)
    if unknown:
        raise ValueError(
            f"Invalid {shape!r} schedule: unknown parameter(s) {', '.join(unknown)}; "
            f"valid: {', '.join(sorted(SCHEDULE_ARGUMENTS[shape]))}"
        )
    missing = [
        f.name
        for f in dataclasses.fields(cls)
        if f.name not in params
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        ways = [
            " or ".join([name] + [a for a, (t, _) in _aliases_of(shape).items() if t == name])
            for name in missing
        ]
        raise ValueError(f"Invalid {shape!r} schedule: it needs {', '.join(ways)}")
    try:
        return cls(**params)
    except TypeError as error:
        raise ValueError(f"Invalid {shape!r} schedule {dict(spec)!r}: {error}") from None


def _number(value: Any) -> Any:
    """A tensor group value (torch's capturable Adam keeps tensors) as a float, read once here."""
    return float(value) if hasattr(value, "item") else value


class HyperparameterScheduler(LRScheduler):
    """Drive param-group fields (``lr``, ``beta``, ``mu``, ...) by schedules, one step at a time.

    At scheduler step t every group gets ``group[field] = base[field] * schedule(t)``, where the base
    value is the group's value when the scheduler was created (kept as ``group["initial_<field>"]``).
    A field the group keeps in a tuple is written there: ``beta`` into ``betas[0]`` and ``beta2``
    into ``betas[1]`` of an AdamW group (``initial_beta`` is then AdamW's first ``betas[0]``).

    Args:
        optimizer: any torch optimizer whose groups hold the scheduled fields (a wrapper sharing
            its base's ``param_groups``, such as ``RandomScaling``, drives the base).
        schedules: ``{field: Schedule or spec}``; specs go through :func:`make_schedule`.
        total_steps: horizon passed to :func:`make_schedule` for specs that need one.
        last_epoch: torch's resume convention; leave at -1.

    Example:
        >>> sched = HyperparameterScheduler(opt, {"lr": "constant", "beta": {"shape": "linear",
        ...     "start_factor": 0.5, "end_factor": 1.0}}, total_steps=1000)  # doctest: +SKIP
    """

    def __init__(
        self,
        optimizer: Optimizer,
        schedules: Mapping[str, Schedule | str | Mapping[str, Any]],
        total_steps: int | None = None,
        last_epoch: int = -1,
    ) -> None:
        if not schedules:
            raise ValueError("Invalid schedules: expected at least one {field: schedule} entry")
        self.schedules = {
            field: make_schedule(spec, total_steps) for field, spec in schedules.items()
        }
        for index, group in enumerate(optimizer.param_groups):
            for field in self.schedules:
                if not holds(group, field):
                    raise ValueError(
                        f"Invalid schedule field {field!r}: param group {index} has no such key "
                        f"(it has {', '.join(k for k in group if k != 'params')})"
                    )
                group.setdefault(f"initial_{field}", _number(group_value(group, field)))
        self.base_values = {
            field: [group[f"initial_{field}"] for group in optimizer.param_groups]
            for field in self.schedules
        }
        super().__init__(optimizer, last_epoch)

    def step(self, epoch: int | None = None) -> None:
        """Advance one step and write every scheduled field of every group."""
        if epoch is not None:
            raise ValueError("HyperparameterScheduler.step() takes no epoch; call it once per step")
        self._step_count += 1
        self.last_epoch += 1
        for field, schedule in self.schedules.items():
            factor = schedule(self.last_epoch)
            where = f"Schedule {schedule!r} at step {self.last_epoch}"
            for group, base in zip(
                self.optimizer.param_groups, self.base_values[field], strict=True
            ):
                value = base * factor
                if field in HYPERPARAMETERS:
                    HYPERPARAMETERS[field].check_scheduled(value, where)
                set_group_value(group, field, value)
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    def get_lr(self) -> list[float]:
        return [group["lr"] for group in self.optimizer.param_groups]

    def state_dict(self) -> dict[str, Any]:
        """Plain data only (loadable with ``torch.load(weights_only=True)``)."""
        return {
            "last_epoch": self.last_epoch,
            "_step_count": self._step_count,
            "base_values": {f: list(v) for f, v in self.base_values.items()},
            "schedules": {f: s.to_config() for f, s in self.schedules.items()},
            "_last_lr": list(self._last_lr),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = state_dict.get("schedules")
        current = {f: s.to_config() for f, s in self.schedules.items()}
        if saved is not None and saved != current:
            warnings.warn(
                f"Scheduler checkpoint was saved with schedules {saved}; continuing from step "
                f"{state_dict['last_epoch']} with this scheduler's {current}",
                UserWarning,
                stacklevel=2,
            )
        self.last_epoch = int(state_dict["last_epoch"])
        self._step_count = int(state_dict["_step_count"])
        self.base_values = {f: list(v) for f, v in state_dict["base_values"].items()}
        self._last_lr = list(state_dict["_last_lr"])
