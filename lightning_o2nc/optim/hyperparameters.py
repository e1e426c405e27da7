"""Every hyper-parameter fact of the optimizer, stated once: name, default, valid range, meaning.

The optimizer's checks (:func:`validate_hyperparameters`), the factory's signature, the scheduler's
range checks and, above this package, ``O2NCModule``'s signature, the monitor's tags and the sweep
space's checks all read this table. Adding a hyper-parameter means adding one entry here and using
it in the optimizer.

- :data:`HYPERPARAMETERS`: ``{name: Hyperparameter}`` in signature order.
- :data:`GROUP_HYPERPARAMETERS`: the names a param group may set for itself (``lr``, ``beta``,
  ``mu``, ``weight_decay``, ``beta2``, ``eps``, ``foreach``, ``maximize``, as in torch);
  :data:`OPTIMIZER_OPTIONS`: the names that apply to the whole optimizer (``scaling``, ``seed``,
  ``average``, ``average_beta``, ``skip_nonfinite``), refused inside a param group.
- :data:`SCHEDULABLE`: the names a schedule may drive (``lr``, ``beta``, ``mu``, ``weight_decay``,
  ``beta2``).
- :data:`GROUP_SLOTS`: where a name lives in a torch param group that has no key of its own for
  it: AdamW's ``beta`` is ``betas[0]`` and ``beta2`` is ``betas[1]``. :func:`holds`,
  :func:`group_value` and :func:`set_group_value` read and write a group through it, so the
  scheduler and the monitor speak the table's names to every optimizer.

The table names every knob once, whichever optimizer takes it: ``beta`` is the momentum of
Exponentiated O2NC and SGDM and AdamW's β1 (``betas[0]``); ``beta2`` and ``eps`` are AdamW's
(the ``adamw`` and ``o2nc_adamw`` factory names); ``mu`` and ``skip_nonfinite`` are O2NC's. Which
names each optimizer takes is the factory's registry (``factory.OPTIMIZERS``).
- :data:`SCHEDULE_ARGUMENT_ALIASES`: schedule arguments that stand for another one
  (``warmup_fraction`` of ``warmup_cosine``); the shapes' own arguments are the fields of their
  classes, listed with the aliases in ``schedules.SCHEDULE_ARGUMENTS``.
- :data:`INTERVALS`: when a schedule steps, ``"step"`` or ``"epoch"``.

Example:
    >>> HYPERPARAMETERS["beta"].check(1.5)
    Traceback (most recent call last):
    ...
    ValueError: Invalid beta: 1.5; expected 0 <= beta < 1
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .scaling import SCALINGS

__all__ = [
    "GROUP_HYPERPARAMETERS",
    "GROUP_SLOTS",
    "HYPERPARAMETERS",
    "INTERVALS",
    "OPTIMIZER_OPTIONS",
    "SCHEDULABLE",
    "SCHEDULE_ARGUMENT_ALIASES",
    "Hyperparameter",
    "group_value",
    "holds",
    "set_group_value",
    "validate_hyperparameters",
]


def _real(name: str, value: Any) -> float:
    """``value`` as a float; a real number (or a one-element tensor, read once at the edge)."""
    if hasattr(value, "numel") and hasattr(value, "item") and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"Invalid {name}: {value!r}; expected a real number")
    return float(value)


@dataclass(frozen=True)
class Hyperparameter:
    """One hyper-parameter of the optimizers the factory builds (ExponentiatedO2NC, AdamW, ...).

    Attributes:
        name: the keyword argument (and param-group key).
        default: the default of the factory and of ``O2NCModule`` (the optimizer itself requires
            ``lr``).
        doc: one line for docstrings, ``--help`` and reports.
        per_group: a param group may set its own value (torch's per-group keys).
        schedulable: a schedule may drive it (it is read from the param group at every step).
        valid: the predicate a given value must meet (numbers are already floats), or ``None``.
        expected: the rule in words, used in the error message ``Invalid <label>: <value>;
            expected <expected>``.
        label: the name in error messages (``"lr (eta)"``), the name itself by default.
        numeric: the value is a real number (checked as a float).
        scheduled_low: the smallest value a schedule may reach (``lr`` may decay to 0, where the
            constructor needs > 0); without it a scheduled value is checked with ``valid``.
        error: the exception raised for an invalid value (``TypeError`` for a wrongly typed one).
    """

    name: str
    default: Any
    doc: str
    per_group: bool = False
    schedulable: bool = False
    valid: Callable[[Any], bool] | None = None
    expected: str = ""
    label: str = ""
    numeric: bool = True
    scheduled_low: float | None = None
    error: type[Exception] = ValueError

    def check(self, value: Any) -> Any:
        """Return ``value`` (a float for numbers) or raise the error that names this parameter."""
        if value is None and self.default is None:
            return None
        if self.numeric:
            value = _real(self.name, value)
        if self.valid is not None and not self.valid(value):
            raise self.error(
                f"Invalid {self.label or self.name}: {value!r}; expected {self.expected}"
            )
        return value

    def check_scheduled(self, value: float, where: str) -> float:
        """Check a value a schedule produced; ``where`` says which schedule and step."""
        if self.scheduled_low is not None:
            ok = math.isfinite(value) and value >= self.scheduled_low
        else:
            ok = self.valid is None or self.valid(value)
        if not ok:
            rule = (
                f"{self.scheduled_low:g} <= {self.name}"
                if self.scheduled_low is not None
                else self.expected
            )
            raise ValueError(f"{where} drives {self.name} to {value!r}, outside {rule}")
        return value


def _finite_at_least_zero(v: float) -> bool:
    return math.isfinite(v) and v >= 0


def _unit_interval(v: float) -> bool:
    return 0.0 <= v < 1.0


def _is_seed(v: Any) -> bool:
    return v is None or (isinstance(v, int) and not isinstance(v, bool))


HYPERPARAMETERS: dict[str, Hyperparameter] = {
    h.name: h
    for h in (
        Hyperparameter(
            "lr",
            0.05,
            "eta > 0: the step size (O2NC: the online learner's, scaling each gradient as it "
            "enters Delta; AdamW: its lr)",
            per_group=True,
            schedulable=True,
            valid=lambda v: math.isfinite(v) and v > 0,
            expected="a finite number > 0",
            label="lr (eta)",
            scheduled_low=0.0,
        ),
        Hyperparameter(
            "beta",
            0.9,
            "0 <= beta < 1: the momentum (AdamW: beta1, betas[0]), and x_bar's discount unless "
            "average_beta is given",
            per_group=True,
            schedulable=True,
            valid=_unit_interval,
            expected="0 <= beta < 1",
        ),
        Hyperparameter(
            "mu",
            0.0,
            "mu >= 0: implicit decay of the update, zeta = beta / (1 + lr * mu) (O2NC and SGDM)",
            per_group=True,
            schedulable=True,
            valid=_finite_at_least_zero,
            expected="a finite number >= 0",
        ),
        Hyperparameter(
            "weight_decay",
            0.0,
            "weight decay >= 0: O2NC and SGDM add it to the gradient as L2 (torch SGD); AdamW "
            "decouples it (torch AdamW)",
            per_group=True,
            schedulable=True,
            valid=_finite_at_least_zero,
            expected="a finite number >= 0",
        ),
        Hyperparameter(
            "beta2",
            0.999,
            "0 <= beta2 < 1: AdamW's second-moment discount (betas[1])",
            per_group=True,
            schedulable=True,
            valid=_unit_interval,
            expected="0 <= beta2 < 1",
        ),
        Hyperparameter(
            "eps",
            1e-8,
            "eps >= 0: AdamW's term added to the denominator",
            per_group=True,
            valid=_finite_at_least_zero,
            expected="a finite number >= 0",
        ),
        Hyperparameter(
            "scaling",
            "exponential",
            "the random scalar s: exponential (Exp(1), the paper), uniform (U(0,2), the next "
            "gradient weighted by 2 - s) or none (s = 1)",
            valid=lambda v: v in SCALINGS,
            expected="one of " + ", ".join(SCALINGS),
            numeric=False,
        ),
        Hyperparameter(
            "seed",
            None,
            "seed of the scalar's own generator; None agrees on one across DDP ranks",
            valid=_is_seed,
            expected="an int or None",
            numeric=False,
            error=TypeError,
        ),
        Hyperparameter(
            "average",
            False,
            "keep x_bar, the bias-corrected EMA of the iterates (one more buffer per parameter)",
            numeric=False,
        ),
        Hyperparameter(
            "average_beta",
            None,
            "discount of x_bar and V (0 <= average_beta < 1); None: beta (AdamW: betas[0]). Never "
            "changes the trajectory",
            valid=_unit_interval,
            expected="None or 0 <= average_beta < 1",
        ),
        Hyperparameter(
            "skip_nonfinite",
            False,
            "a step whose gradients hold NaN/inf leaves weights and buffers untouched",
            numeric=False,
        ),
        Hyperparameter(
            "foreach",
            None,
            "multi-tensor kernels; None picks the fastest path for the device",
            per_group=True,
            numeric=False,
        ),
        Hyperparameter(
            "maximize",
            False,
            "ascend instead of descend",
            per_group=True,
            numeric=False,
        ),
    )
}

GROUP_HYPERPARAMETERS: tuple[str, ...] = tuple(n for n, h in HYPERPARAMETERS.items() if h.per_group)
OPTIMIZER_OPTIONS: tuple[str, ...] = tuple(n for n, h in HYPERPARAMETERS.items() if not h.per_group)
SCHEDULABLE: tuple[str, ...] = tuple(n for n, h in HYPERPARAMETERS.items() if h.schedulable)
INTERVALS: tuple[str, ...] = ("step", "epoch")

#: ``{name: (group key, index)}``: a name that a param group without a key of its own keeps in
#: a tuple, as torch's Adam family keeps ``betas = (beta1, beta2)``.
GROUP_SLOTS: dict[str, tuple[str, int]] = {"beta": ("betas", 0), "beta2": ("betas", 1)}


def holds(group: dict[str, Any], name: str) -> bool:
    """Whether the param group ``group`` has the hyper-parameter ``name`` (own key or slot)."""
    if name in group:
        return True
    slot = GROUP_SLOTS.get(name)
    return slot is not None and slot[0] in group


def group_value(group: dict[str, Any], name: str) -> Any:
    """The group's value of ``name``: its own key, else its slot (``beta`` -> ``betas[0]``).

    Raises:
        KeyError: the group has neither.
    """
    if name in group:
        return group[name]
    slot = GROUP_SLOTS.get(name)
    if slot is None or slot[0] not in group:
        raise KeyError(name)
    return group[slot[0]][slot[1]]


def set_group_value(group: dict[str, Any], name: str, value: Any) -> None:
    """Write ``value`` as the group's ``name``: into its own key, else into its slot.

    A slot's tuple is rebuilt with the same type (torch keeps ``betas`` a tuple of floats, and a
    tuple of tensors for ``capturable`` Adam: the slot then gets a tensor of the same kind).
    """
    if name in group or name not in GROUP_SLOTS or GROUP_SLOTS[name][0] not in group:
        group[name] = value
        return
    key, index = GROUP_SLOTS[name]
    values = list(group[key])
    old = values[index]
    if hasattr(old, "fill_"):  # a tensor: update in place, as capturable/compiled steps expect
        old.fill_(value)
        return
    values[index] = value
    group[key] = tuple(values)


#: ``{shape: {alias: (argument it sets, how)}}``: arguments a schedule accepts besides its fields.
SCHEDULE_ARGUMENT_ALIASES: dict[str, dict[str, tuple[str, str]]] = {
    "warmup_cosine": {"warmup_fraction": ("warmup_steps", "fraction of total_steps, in [0, 1]")},
}


def validate_hyperparameters(**values: Any) -> dict[str, Any]:
    """Check the given hyper-parameters against :data:`HYPERPARAMETERS`; ``None`` skips a check.

    Raises a ``ValueError`` (``TypeError`` for a non-number) naming the first one that is out of
    range, for example ``Invalid beta: 1.5; expected 0 <= beta < 1``. One-element tensors are read
    into floats here, at the edge. Returns the checked values (numbers as floats).
    """
    checked = {}
    for name, value in values.items():
        if name not in HYPERPARAMETERS:
            raise ValueError(
                f"Unknown hyper-parameter {name!r}; valid: {', '.join(HYPERPARAMETERS)}"
            )
        checked[name] = None if value is None else HYPERPARAMETERS[name].check(value)
    return checked
